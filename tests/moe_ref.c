#include "moe_ref.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

double ref_e4m3(uint8_t c) {
    const int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
    if (e == 15 && m == 7) return NAN;
    const double v = e == 0 ? ldexp(m, -9) : ldexp(8 + m, e - 10);
    return s ? -v : v;
}

static double ref_e8m0(uint8_t b) { return b == 255 ? NAN : ldexp(1.0, b - 127); }

/* Round a double to fp32 then to bf16 (nearest even), returned as double. */
double ref_bf16_round(double v) {
    float f = (float)v;
    if (isnan(f)) return NAN;
    uint32_t u;
    memcpy(&u, &f, 4);
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t to_bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* Quantizes values [rows, cols] (f32) into the layer's weight format; fills the decoded doubles. */
static void make_weight(const mxm_moe_config *cfg, const float *v, int64_t rows, int64_t cols, void **w,
                        void **s, double **d) {
    *d = tu_alloc(sizeof(double) * rows * cols);
    *s = NULL;
    switch (cfg->weight_format) {
    case MXM_WFMT_MXFP8: {
        uint8_t *q = tu_alloc(rows * cols), *sc = tu_alloc(rows * cols / 32);
        assert_int_equal(
            mxm_mxfp8_quantize(v, MXM_DT_F32, rows, cols, 0, q, sc, MXM_SCALE_RCEIL, 0), MXM_OK);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < rows * cols; i++) (*d)[i] = ref_e4m3(q[i]) * ref_e8m0(sc[i / 32]);
        *w = q, *s = sc;
        break;
    }
    case MXM_WFMT_FP8_BLOCK: {
        const int64_t rb = (rows + 127) / 128, cb = (cols + 127) / 128;
        uint8_t *q = tu_alloc(rows * cols);
        float *sc = tu_alloc(sizeof(float) * rb * cb);
        assert_int_equal(mxm_fp8block_quantize_weight(v, MXM_DT_F32, rows, cols, q, sc, 0), MXM_OK);
#pragma omp parallel for schedule(static)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++)
                (*d)[r * cols + c] = ref_e4m3(q[r * cols + c]) * (double)sc[(r / 128) * cb + c / 128];
        *w = q, *s = sc;
        break;
    }
    case MXM_WFMT_BF16: {
        uint16_t *b = tu_alloc(2 * rows * cols);
        for (int64_t i = 0; i < rows * cols; i++) {
            b[i] = to_bf16_bits(v[i]);
            (*d)[i] = ref_bf16_round(v[i]);
        }
        *w = b;
        break;
    }
    default: {
        float *f = tu_alloc(4 * rows * cols);
        for (int64_t i = 0; i < rows * cols; i++) (*d)[i] = f[i] = v[i];
        *w = f;
        break;
    }
    }
}

/* (The quantizers' results do not depend on their thread count: all threads, as the decodes.) */
void ref_layer_init(ref_layer *L, const mxm_moe_config *cfg, uint64_t seed, int integer_data) {
    memset(L, 0, sizeof *L);
    L->cfg = *cfg;
    L->e_loc = cfg->local_num_experts ? cfg->local_num_experts : cfg->num_experts;
    const int64_t H = cfg->hidden_size, I = cfg->intermediate_size;
    const int n = L->e_loc + 1;
    L->w13 = calloc(n, sizeof(void *)), L->s13 = calloc(n, sizeof(void *));
    L->w2 = calloc(n, sizeof(void *)), L->s2 = calloc(n, sizeof(void *));
    L->w13d = calloc(n, sizeof(double *)), L->w2d = calloc(n, sizeof(double *));
    L->experts = calloc(n, sizeof(mxm_expert_weights));
    L->exact_sums = integer_data;
    tu_rng r = {seed};
    for (int e = 0; e < n; e++) {
        const int shared = e == L->e_loc;
        if (shared && !cfg->shared_intermediate_size) break;
        const int act = shared && cfg->shared_activation >= 0 ? cfg->shared_activation : cfg->activation;
        const int64_t Ie = shared ? cfg->shared_intermediate_size : I;
        const int64_t M1 = mxm_activation_is_gated(act) == 1 ? 2 * Ie : Ie;
        float *v1 = tu_alloc(4 * M1 * H), *v2 = tu_alloc(4 * H * Ie);
        if (integer_data) {
            for (int64_t i = 0; i < M1 * H; i++) v1[i] = (float)tu_randint(&r, -8, 8) / 8;
            for (int64_t i = 0; i < H * Ie; i++) v2[i] = (float)tu_randint(&r, -8, 8) / 8;
        } else {
            tu_fill_blockscaled_f32(&r, v1, M1 * H, 2, 2);
            tu_fill_blockscaled_f32(&r, v2, H * Ie, 2, 2);
            for (int64_t i = 0; i < M1 * H; i++) v1[i] *= (float)(1.0 / sqrt((double)H));
            for (int64_t i = 0; i < H * Ie; i++) v2[i] *= (float)(1.0 / sqrt((double)Ie));
        }
        make_weight(cfg, v1, M1, H, &L->w13[e], &L->s13[e], &L->w13d[e]);
        make_weight(cfg, v2, H, Ie, &L->w2[e], &L->s2[e], &L->w2d[e]);
        free(v1), free(v2);
        L->experts[e] = (mxm_expert_weights){L->w13[e], L->s13[e], L->w2[e], L->s2[e]};
    }
}

void ref_layer_free(ref_layer *L) {
    for (int e = 0; e <= L->e_loc; e++) {
        free(L->w13[e]), free(L->s13[e]), free(L->w2[e]), free(L->s2[e]);
        free(L->w13d[e]), free(L->w2d[e]);
    }
    free(L->w13), free(L->s13), free(L->w2), free(L->s2), free(L->w13d), free(L->w2d);
    free(L->experts), free(L->alpha), free(L->beta), free(L->limit);
}

mxm_moe_weights ref_layer_weights(const ref_layer *L) {
    mxm_moe_weights w = {L->experts, L->cfg.shared_intermediate_size ? &L->experts[L->e_loc] : NULL,
                         L->alpha, L->beta, L->limit};
    return w;
}

static double sigm(double v) { return 1.0 / (1.0 + exp(-v)); }

static double act_ref(int act, double g, double u, double al, double be, double lim) {
    switch (act) {
    case MXM_ACT_SILU: return g * sigm(g) * u;
    case MXM_ACT_GELU: return 0.5 * g * (1 + erf(g / sqrt(2.0))) * u;
    case MXM_ACT_GELU_TANH: return 0.5 * g * (1 + tanh(sqrt(2 / M_PI) * (g + 0.044715 * g * g * g))) * u;
    case MXM_ACT_SWIGLUOAI: {
        const double gc = g > lim ? lim : g, uc = u > lim ? lim : (u < -lim ? -lim : u);
        return (uc + be) * gc * sigm(al * gc);
    }
    case MXM_ACT_SILU_NO_MUL: return g * sigm(g);
    case MXM_ACT_GELU_NO_MUL: return 0.5 * g * (1 + erf(g / sqrt(2.0)));
    case MXM_ACT_RELU2_NO_MUL: return g < 0 ? 0 : g * g;
    default: return g;
    }
}

/* ---- the reference's own MX arithmetic (double) ---------------------------------------------- */

/* E4M3 round-to-nearest-even with saturation to +-448, on doubles. */
static double ref_e4m3_round(double v) {
    const double a = fabs(v);
    double r;
    if (a >= 448.0) {
        r = 448.0;
    } else {
        int e;
        (void)frexp(a, &e); /* a = f * 2^e, f in [0.5, 1): leading bit 2^(e-1) */
        const double step = e - 1 < -6 ? ldexp(1.0, -9) : ldexp(1.0, e - 1 - 3);
        r = nearbyint(a / step) * step;
        if (r > 448.0) r = 448.0;
    }
    return copysign(r, v);
}

/* The E8M0 scale exponent (biased) of a block with this amax, SPEC 2.2 via frexp. */
static int ref_mx_scale_bits(double amax, int rule) {
    if (amax == 0) return 0;
    int e, b;
    if (rule == MXM_SCALE_FLOOR) {
        (void)frexp((double)(float)amax, &e);
        b = e - 1 + 127 - 8;
    } else {
        const double d = (double)((float)amax * (float)(1.0 / 448.0));
        const double f = frexp(d, &e);
        b = (f == 0.5 ? e - 1 : e) + 127; /* ceil(log2(d)) + 127 */
    }
    return b < 0 ? 0 : (b > 254 ? 254 : b);
}

static double ref_mx_quant(double v, int b) {
    return b == 0 ? copysign(0.0, v) : ldexp(ref_e4m3_round(ldexp(v, 127 - b)), b - 127);
}

static double ref_fp8block_scale(double amax) {
    const float s = (float)amax / 448.0f;
    return s < FLT_MIN ? FLT_MIN : s;
}

/* x / s rounded to fp32 as the library divides (double rounding is exact for division). */
static double ref_fp8block_quant(double v, double s) { return ref_e4m3_round((float)(v / s)) * s; }

/* Bounds of one W8A8-requantized block [lo, hi] (n values): every value an implementation may
 * store when each element lies anywhere in its interval and the block amax follows. nom: the
 * nominal values in, their quantized values out. */
static void requant_block(const mxm_moe_config *c, double *nom, double *lo, double *hi, int64_t n) {
    double am = 0, am_lo = 0, am_hi = 0;
    for (int64_t i = 0; i < n; i++) {
        const double l = fabs(lo[i]), h = fabs(hi[i]);
        am = fmax(am, fabs(nom[i]));
        am_hi = fmax(am_hi, fmax(l, h));
        if (lo[i] > 0 || hi[i] < 0) am_lo = fmax(am_lo, fmin(l, h));
    }
    if (c->weight_format == MXM_WFMT_FP8_BLOCK) {
        const double s = ref_fp8block_scale(am), s_lo = ref_fp8block_scale(am_lo), s_hi = ref_fp8block_scale(am_hi);
        for (int64_t i = 0; i < n; i++) {
            const double a = ref_fp8block_quant(lo[i], s_lo), b = ref_fp8block_quant(lo[i], s_hi);
            const double d = ref_fp8block_quant(hi[i], s_lo), e = ref_fp8block_quant(hi[i], s_hi);
            const double wob = (s_hi - s_lo) * 448; /* the scale moves continuously between its ends */
            nom[i] = (float)ref_fp8block_quant(nom[i], s); /* dequantized in fp32 by the library */
            lo[i] = fmin(fmin(a, b), fmin(d, e)) - wob - fabs(nom[i]) * 0x1p-23;
            hi[i] = fmax(fmax(a, b), fmax(d, e)) + wob + fabs(nom[i]) * 0x1p-23;
        }
        return;
    }
    const int b = ref_mx_scale_bits(am, c->scale_rule);
    const int b_lo = ref_mx_scale_bits(am_lo, c->scale_rule), b_hi = ref_mx_scale_bits(am_hi, c->scale_rule);
    for (int64_t i = 0; i < n; i++) {
        nom[i] = ref_mx_quant(nom[i], b);
        double l = INFINITY, h = -INFINITY;
        for (int s = b_lo; s <= b_hi; s++) { /* q is monotone in the value for a fixed scale */
            l = fmin(l, ref_mx_quant(lo[i], s));
            h = fmax(h, ref_mx_quant(hi[i], s));
        }
        lo[i] = l, hi[i] = h;
    }
}

/* W8A8 requantization of a row of n values in blocks of the layer's activation format. */
static void requant_row(const mxm_moe_config *c, double *nom, double *lo, double *hi, int64_t n) {
    const int64_t blk = c->weight_format == MXM_WFMT_FP8_BLOCK ? 128 : 32;
    for (int64_t i = 0; i < n; i += blk) requant_block(c, nom + i, lo + i, hi + i, n - i < blk ? n - i : blk);
}

/* Rounds an interval to bf16 (rounding is monotone). */
static void bf16_interval(double *nom, double *lo, double *hi) {
    *nom = ref_bf16_round(*nom), *lo = ref_bf16_round(*lo), *hi = ref_bf16_round(*hi);
}

/* A dot product of n terms in double: the value, and the bounds of its fp32 evaluation in any
 * order (REF_ACC_SLACK, scaled by ulps: 0 for exact sums). x: nominal values with bounds
 * [xl, xh] (may be equal), w: exact. */
static void dot_interval(const double *x, const double *xl, const double *xh, const double *w, int64_t n,
                         double ulps, double *nom, double *lo, double *hi) {
    double s = 0, l = 0, h = 0, l1 = 0, l2 = 0;
    for (int64_t i = 0; i < n; i++) {
        s += x[i] * w[i];
        const double p = xl[i] * w[i], q = xh[i] * w[i], m = fmax(fabs(p), fabs(q));
        l += fmin(p, q), h += fmax(p, q);
        l1 += m, l2 += m * m;
    }
    const double slack = ulps * REF_ACC_SLACK(n, l1, sqrt(l2));
    *nom = s, *lo = l - slack, *hi = h + slack;
}

/* One expert (index e, or the shared one) on one token. x: nominal input with bounds; y [H]
 * nominal with bounds [yl, yh]. */
static void expert_ref(const ref_layer *L, int e, const double *x, const double *xl, const double *xh, double *y,
                       double *yl, double *yh) {
    const mxm_moe_config *c = &L->cfg;
    const int shared = e == L->e_loc;
    const int act = shared && c->shared_activation >= 0 ? c->shared_activation : c->activation;
    const int64_t H = c->hidden_size, I = shared ? c->shared_intermediate_size : c->intermediate_size;
    const int gated = mxm_activation_is_gated(act) == 1;
    const int trt = c->profile == MXM_PROFILE_TRTLLM, w8a8 = c->act_quant == MXM_ACT_QUANT_MXFP8;
    const double acc = L->exact_sums ? 0 : 1, eps_fn = L->exact_sums ? 0 : REF_EPS_FN;
    double al = c->swiglu_alpha, be = c->swiglu_beta, lim = c->swiglu_limit;
    if (!shared && L->alpha) al = L->alpha[e], be = L->beta[e], lim = L->limit[e];
    double *a = tu_alloc(sizeof(double) * 3 * I), *al_ = a + I, *ah = a + 2 * I;
    const double *W1 = L->w13d[e], *W2 = L->w2d[e];
    for (int64_t j = 0; j < I; j++) {
        int64_t rg = j, ru = I + j;
        if (gated && c->w13_layout == MXM_W13_UP_GATE) rg = I + j, ru = j;
        if (gated && c->w13_layout == MXM_W13_INTERLEAVED) rg = 2 * j, ru = 2 * j + 1;
        double g[3], u[3] = {1, 1, 1}; /* nominal, lo, hi */
        dot_interval(x, xl, xh, W1 + rg * H, H, acc, &g[0], &g[1], &g[2]);
        if (gated) dot_interval(x, xl, xh, W1 + ru * H, H, acc, &u[0], &u[1], &u[2]);
        a[j] = act_ref(act, g[0], u[0], al, be, lim);
        double lo = a[j], hi = a[j];
        for (int gi = 1; gi < 3; gi++) /* corners: each activation is monotone over a tiny box */
            for (int ui = 1; ui < 3; ui++) {
                const double v = act_ref(act, g[gi], u[ui], al, be, lim);
                lo = fmin(lo, v), hi = fmax(hi, v);
            }
        const double fn = eps_fn * (fabs(a[j]) + fabs(g[0] * u[0]));
        al_[j] = lo - fn, ah[j] = hi + fn;
        if (trt) bf16_interval(&a[j], &al_[j], &ah[j]);
    }
    if (w8a8) requant_row(c, a, al_, ah, I);
    for (int64_t h = 0; h < H; h++) {
        dot_interval(a, al_, ah, W2 + h * I, I, acc, &y[h], &yl[h], &yh[h]);
        if (trt) bf16_interval(&y[h], &yl[h], &yh[h]);
    }
    free(a);
}

ref_output ref_output_alloc(int64_t n) {
    ref_output o;
    o.out = tu_alloc(8 * n * 6);
    o.lo = o.out + n, o.hi = o.out + 2 * n, o.routed = o.out + 3 * n, o.routed_lo = o.out + 4 * n;
    o.routed_hi = o.out + 5 * n;
    return o;
}

void ref_output_free(ref_output *o) { free(o->out); }

/* Adds w * [y, yl, yh] to an output interval; the fp32 combine's rounding is in REF_EPS_COMBINE. */
static void combine(double w, const double *y, const double *yl, const double *yh, int64_t n, double *o,
                    double *lo, double *hi, double *mag) {
    for (int64_t i = 0; i < n; i++) {
        o[i] += w * y[i];
        lo[i] += fmin(w * yl[i], w * yh[i]), hi[i] += fmax(w * yl[i], w * yh[i]);
        mag[i] += fmax(fabs(w * yl[i]), fabs(w * yh[i]));
    }
}

void ref_forward(const ref_layer *L, int64_t T, const float *x, const int32_t *ids, const float *w,
                 ref_output *r) {
    const mxm_moe_config *c = &L->cfg;
    const int64_t H = c->hidden_size, K = c->top_k;
    /* Tokens are independent: spread over the machine's threads, each with its own buffers
     * (test_moe: 7.8 s on one thread, 5.5 s on two; test_cuda's large cases gain more on the GPU
     * host's 16 cores). Same results: no sum crosses tokens. */
#pragma omp parallel
    {
        double *buf = tu_alloc(sizeof(double) * 7 * H);
        double *xq = buf, *y = buf + H, *yl = buf + 2 * H, *yh = buf + 3 * H, *mag = buf + 4 * H;
        double *xl = buf + 5 * H, *xh = buf + 6 * H;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < T; t++) {
            for (int64_t i = 0; i < H; i++)
                xq[i] = xl[i] = xh[i] = x[t * H + i];
            if (c->act_quant == MXM_ACT_QUANT_MXFP8)
                requant_row(c, xq, xl, xh, H); /* exact inputs: lo = hi */
            double *o = r->out + t * H, *lo = r->lo + t * H, *hi = r->hi + t * H;
            for (int64_t i = 0; i < H; i++)
                o[i] = lo[i] = hi[i] = mag[i] = 0;
            for (int64_t k = 0; k < K; k++) {
                const int e = ids[t * K + k] - c->local_expert_offset;
                if (e < 0 || e >= L->e_loc) continue;
                expert_ref(L, e, xq, xl, xh, y, yl, yh);
                combine(w[t * K + k], y, yl, yh, H, o, lo, hi, mag);
            }
            for (int64_t i = 0; i < H; i++) {
                r->routed[t * H + i] = o[i];
                r->routed_lo[t * H + i] = lo[i] - REF_EPS_COMBINE * mag[i];
                r->routed_hi[t * H + i] = hi[i] + REF_EPS_COMBINE * mag[i];
            }
            if (c->shared_intermediate_size) {
                expert_ref(L, L->e_loc, xq, xl, xh, y, yl, yh);
                combine(1.0, y, yl, yh, H, o, lo, hi, mag);
            }
            for (int64_t i = 0; i < H; i++)
                lo[i] -= REF_EPS_COMBINE * mag[i], hi[i] += REF_EPS_COMBINE * mag[i];
        }
        free(buf);
    }
}

ref_check ref_check_f32(const float *got, const double *nom, const double *lo, const double *hi, int64_t n) {
    ref_check k = {0, 0, 0, 0};
    double num = 0, den = 0, wid = 0;
    for (int64_t i = 0; i < n; i++) {
        const double g = got[i];
        if (isnan(g)) k.nan_count++;
        if (!(g >= lo[i] && g <= hi[i])) k.outside++;
        num += (g - nom[i]) * (g - nom[i]), den += nom[i] * nom[i];
        wid += (hi[i] - lo[i]) * (hi[i] - lo[i]) / 4;
    }
    k.err = den > 0 ? sqrt(num / den) : sqrt(num);
    k.width = den > 0 ? sqrt(wid / den) : sqrt(wid);
    return k;
}
