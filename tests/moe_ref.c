#include "moe_ref.h"

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
        assert_int_equal(mxm_mxfp8_quantize(v, MXM_DT_F32, rows, cols, 0, q, sc, MXM_SCALE_RCEIL, 1), MXM_OK);
        for (int64_t i = 0; i < rows * cols; i++) (*d)[i] = ref_e4m3(q[i]) * ref_e8m0(sc[i / 32]);
        *w = q, *s = sc;
        break;
    }
    case MXM_WFMT_FP8_BLOCK: {
        const int64_t rb = (rows + 127) / 128, cb = (cols + 127) / 128;
        uint8_t *q = tu_alloc(rows * cols);
        float *sc = tu_alloc(sizeof(float) * rb * cb);
        assert_int_equal(mxm_fp8block_quantize_weight(v, MXM_DT_F32, rows, cols, q, sc, 1), MXM_OK);
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

static int gated_act(int a) { return a <= MXM_ACT_SWIGLUOAI; }

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
    tu_rng r = {seed};
    for (int e = 0; e < n; e++) {
        const int shared = e == L->e_loc;
        if (shared && !cfg->shared_intermediate_size) break;
        const int act = shared && cfg->shared_activation >= 0 ? cfg->shared_activation : cfg->activation;
        const int64_t Ie = shared ? cfg->shared_intermediate_size : I;
        const int64_t M1 = gated_act(act) ? 2 * Ie : Ie;
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

/* The values of a W8A8-quantized row, as the library's quantizer would store them. */
static void quant_row(const mxm_moe_config *cfg, const double *a, int64_t n, double *out) {
    float *f = tu_alloc(4 * n);
    for (int64_t i = 0; i < n; i++) f[i] = (float)a[i];
    uint8_t *q = tu_alloc(n);
    if (cfg->weight_format == MXM_WFMT_FP8_BLOCK) {
        const int64_t nb = (n + 127) / 128;
        float *s = tu_alloc(4 * nb);
        assert_int_equal(mxm_fp8block_quantize_act(f, MXM_DT_F32, 1, n, q, s, 0, 1), MXM_OK);
        for (int64_t i = 0; i < n; i++) out[i] = ref_e4m3(q[i]) * (double)s[i / 128];
        free(s);
    } else {
        uint8_t *s = tu_alloc(n / 32);
        assert_int_equal(mxm_mxfp8_quantize(f, MXM_DT_F32, 1, n, 0, q, s, cfg->scale_rule, 1), MXM_OK);
        for (int64_t i = 0; i < n; i++) out[i] = ref_e4m3(q[i]) * ref_e8m0(s[i / 32]);
        free(s);
    }
    free(f), free(q);
}

/* One expert (index e, or the shared one) on one token: y [H]. */
static void expert_ref(const ref_layer *L, int e, const double *x, double *y) {
    const mxm_moe_config *c = &L->cfg;
    const int shared = e == L->e_loc;
    const int act = shared && c->shared_activation >= 0 ? c->shared_activation : c->activation;
    const int64_t H = c->hidden_size, I = shared ? c->shared_intermediate_size : c->intermediate_size;
    const int gated = gated_act(act);
    const int trt = c->profile == MXM_PROFILE_TRTLLM, w8a8 = c->act_quant == MXM_ACT_QUANT_MXFP8;
    double al = c->swiglu_alpha, be = c->swiglu_beta, lim = c->swiglu_limit;
    if (!shared && L->alpha) al = L->alpha[e], be = L->beta[e], lim = L->limit[e];
    double *a = tu_alloc(sizeof(double) * I);
    const double *W1 = L->w13d[e], *W2 = L->w2d[e];
    for (int64_t j = 0; j < I; j++) {
        int64_t rg = j, ru = I + j;
        if (gated && c->w13_layout == MXM_W13_UP_GATE) rg = I + j, ru = j;
        if (gated && c->w13_layout == MXM_W13_INTERLEAVED) rg = 2 * j, ru = 2 * j + 1;
        double g = 0, u = 0;
        for (int64_t i = 0; i < H; i++) g += x[i] * W1[rg * H + i];
        if (gated)
            for (int64_t i = 0; i < H; i++) u += x[i] * W1[ru * H + i];
        a[j] = act_ref(act, g, u, al, be, lim);
        if (trt) a[j] = ref_bf16_round(a[j]);
    }
    if (w8a8) quant_row(c, a, I, a);
    for (int64_t h = 0; h < H; h++) {
        double s = 0;
        for (int64_t i = 0; i < I; i++) s += a[i] * W2[h * I + i];
        y[h] = trt ? ref_bf16_round(s) : s;
    }
    free(a);
}

void ref_forward(const ref_layer *L, int64_t T, const float *x, const int32_t *ids, const float *w,
                 double *out, double *routed) {
    const mxm_moe_config *c = &L->cfg;
    const int64_t H = c->hidden_size, K = c->top_k;
    double *xq = tu_alloc(sizeof(double) * H), *y = tu_alloc(sizeof(double) * H);
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < H; i++) xq[i] = x[t * H + i];
        if (c->act_quant == MXM_ACT_QUANT_MXFP8) quant_row(c, xq, H, xq);
        double *o = out + t * H, *ro = routed + t * H;
        for (int64_t i = 0; i < H; i++) o[i] = 0;
        for (int64_t k = 0; k < K; k++) {
            const int e = ids[t * K + k] - c->local_expert_offset;
            if (e < 0 || e >= L->e_loc) continue;
            expert_ref(L, e, xq, y);
            for (int64_t i = 0; i < H; i++) o[i] += (double)w[t * K + k] * y[i];
        }
        for (int64_t i = 0; i < H; i++) ro[i] = o[i];
        if (c->shared_intermediate_size) {
            expert_ref(L, L->e_loc, xq, y);
            for (int64_t i = 0; i < H; i++) o[i] += y[i];
        }
    }
    free(xq), free(y);
}
