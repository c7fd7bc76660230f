/* The CPU expert-GEMM kernels of every kernel set this CPU can run (cpu_isa.def: AVX2, AVX-512,
 * AMX) against their scalar _ref twins, for MXFP8 and DeepSeek FP8 weights: the weight panels must
 * be bit-identical (the decode is exact in both; a NaN may differ in sign and payload), the GEMV
 * dot products and the packed micro-kernel's (1-6 tokens x 16 panel rows) equal up to fp32
 * summation order (1e-5 of sum |x w| beyond k * 2^-149 of subnormal rounding; sums near the fp32
 * range only checked for NaN/Inf), and a token's GEMV sums bit-identical alone and beside 1-3 other
 * tokens. Fresh random codes (NaN codes included), scales that take the
 * fast paths and scales that must not (MXFP8 bytes around 134 and 246, tiny ones, 0xFF; FP8 scales
 * around 2^8 and 2^120, infinite, NaN, subnormal, negative), k a multiple of 32 but not always of
 * 128, odd row offsets and strides.
 *
 * The bf16 tile kernels (sets with tiles: amx; pack_x_tiles and the MXFP8, BF16 and DeepSeek FP8
 * rows' gemm_tiles16) against their _ref twins: tile panels and token tiles bit-identical, the
 * exactness verdicts equal (values just outside the tile-exact range, inexact and NaN values
 * planted on purpose), the tile product within the same 1e-5 of sum |x w| as the fp32 kernels,
 * for 1-70 tokens (partial token blocks, several passes), and a token's sums bit-identical
 * whether it runs alone or with others; the formats without a tile product in every set.
 *
 * The bf16 GEMV (sets with one: avx512bf16, amx; pack_x_dot and MXFP8's gemv_dot) against its
 * twins: dot rows bit-identical, the same verdicts (a planted value that is not tile-exact), the
 * dot products within the same bound and a token's bits the same alone as beside others, for k up
 * to 1280 (odd numbers of 32-column blocks, several groups of 16 scale bytes) and the weights'
 * special scales and codes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_kernels.h"
#include "formats/formats.h"
#include "mxmoe.h"
#include "testutil.h"

typedef struct weight {
    int fmt; /* MXM_WFMT_MXFP8 or MXM_WFMT_FP8_BLOCK */
    int64_t rows, k;
    uint8_t *q;
    void *s; /* uint8_t [rows, k/32] or float [ceil(rows/128), ceil(k/128)] */
} weight;

static float odd_scale(tu_rng *r) {
    switch (tu_randint(r, 0, 8)) {
    case 6: return 0x1p119f;  /* just under 2^120: avx512 fast path, products near the fp32 top */
    case 7: return -0x1p120f; /* 2^120: avx512 scalar path */
    case 8: return 0x1p-140f; /* subnormal, tiny products */
    case 0: return 300.0f;    /* >= 2^8: avx2 scalar path */
    case 1: return INFINITY;
    case 2: return NAN;
    case 3: return 1e-40f;    /* subnormal */
    case 4: return -0.015625f;
    default: return 255.9f;   /* just under 2^8: fast path */
    }
}

static weight make_weight(tu_rng *r, int fmt, int64_t rows, int64_t k) {
    weight w = {fmt, rows, k, tu_alloc((size_t)(rows * k)), NULL};
    for (int64_t i = 0; i < rows * k; i++) w.q[i] = (uint8_t)tu_randint(r, 0, 255);
    /* most blocks without NaN codes (the fast path), a few with */
    for (int64_t b = 0; b < rows * k / 32; b++)
        if (tu_uniform(r) < 0.97)
            for (int i = 0; i < 32; i++)
                if ((w.q[b * 32 + i] & 0x7F) == 0x7F) w.q[b * 32 + i] ^= 1;
    if (fmt == MXM_WFMT_MXFP8) {
        uint8_t *s = tu_alloc((size_t)(rows * k / 32));
        for (int64_t i = 0; i < rows * k / 32; i++) {
            const double u = tu_uniform(r);
            /* NaN; the edges of the sets' fast paths (avx2 <= 134, avx512 <= 246); tiny scales
             * (subnormal values); the usual range */
            s[i] = (uint8_t)(u < 0.02   ? 255
                             : u < 0.04 ? tu_randint(r, 135, 160)
                             : u < 0.06 ? tu_randint(r, 240, 254)
                             : u < 0.07 ? tu_randint(r, 0, 12)
                                        : tu_randint(r, 100, 134));
        }
        w.s = s;
    } else {
        const int64_t n = ((rows + 127) / 128) * ((k + 127) / 128);
        float *s = tu_alloc(sizeof(float) * (size_t)n);
        for (int64_t i = 0; i < n; i++)
            s[i] = tu_uniform(r) < 0.1 ? odd_scale(r) : (float)ldexp(1.0 + tu_uniform(r), (int)tu_randint(r, -20, 4));
        w.s = s;
    }
    return w;
}

static void pack(const mxm_cpu_kernels *kk, const weight *w, int64_t r0, int64_t rstep, int nr, float *panel) {
    kk->wfmt[w->fmt].pack_panel(w->q, w->s, w->k, r0, rstep, nr, panel);
}

static void gemv(const mxm_cpu_kernels *kk, const weight *w, int64_t r0, int64_t rstep, int nr,
                 const float *const *x, int nt, float *out) {
    kk->wfmt[w->fmt].gemv(w->q, w->s, w->k, r0, rstep, nr, x, nt, out, 4);
}

/* |o - exact| relative to sum |t|, less the absolute rounding of fp32 subnormals: k products
 * and k sums, each within half of 2^-149 (tiny scales put whole sums there). */
static double err_of(float o, double exact, double mag, int64_t k) {
    const double e = fabs(o - exact) - (double)k * 0x1p-149;
    return (e > 0 ? e : 0) / (mag > 0 ? mag : 1);
}

static void check_format(int fmt, const mxm_cpu_kernels *opt) {
    tu_rng r = tu_rng_fresh();
    const mxm_cpu_kernels *ref = mxm_cpu_kernels_get(true);
    int64_t packs = 0, dots = 0, nan_dots = 0, gemms = 0;
    double worst = 0;
    for (int trial = 0; trial < 40; trial++) {
        const int64_t k = 32 * tu_randint(&r, 1, 24), rows = tu_randint(&r, 1, 300);
        weight w = make_weight(&r, fmt, rows, k);
        float *pa = tu_alloc(sizeof(float) * 16 * (size_t)k), *pb = tu_alloc(sizeof(float) * 16 * (size_t)k);
        for (int rep = 0; rep < 4; rep++) {
            const int64_t rstep = tu_randint(&r, 1, 3);
            const int nr = (int)tu_randint(&r, 1, 16);
            const int64_t span = (nr - 1) * rstep;
            if (span >= rows) continue;
            const int64_t r0 = tu_randint(&r, 0, rows - 1 - span);
            tu_poison_f32(pa, 16 * k);
            tu_poison_f32(pb, 16 * k);
            pack(opt, &w, r0, rstep, nr, pa);
            pack(ref, &w, r0, rstep, nr, pb);
            for (int64_t i = 0; i < 16 * k; i++) {
                uint32_t ua, ub;
                memcpy(&ua, &pa[i], 4), memcpy(&ub, &pb[i], 4);
                if (ua != ub && !(isnan(pa[i]) && isnan(pb[i]))) { /* NaN: any sign or payload */
                    const int64_t j = i / k, c = i % k, row = r0 + j * rstep;
                    const float sc = w.fmt == MXM_WFMT_MXFP8 ? mxm_e8m0_decode(((uint8_t *)w.s)[row * (k / 32) + c / 32])
                                                           : ((float *)w.s)[(row / 128) * ((k + 127) / 128) + c / 128];
                    print_error("panel [%lld][%lld]: %08x vs ref %08x (code 0x%02x, scale %g)\n", (long long)j,
                                (long long)c, ua, ub, w.q[row * k + c], sc);
                    fail();
                }
            }
            packs++;

            /* GEMV on up to 4 rows of the panel's range, 1-4 tokens */
            const int nt = (int)tu_randint(&r, 1, 4), ng = nr < 4 ? nr : 4;
            float *xs[4], out_o[16], out_r[16];
            for (int t = 0; t < nt; t++) {
                xs[t] = tu_alloc(sizeof(float) * (size_t)k);
                tu_fill_normal_f32(&r, xs[t], k, 1.0f);
            }
            tu_poison_f32(out_o, 16), tu_poison_f32(out_r, 16);
            gemv(opt, &w, r0, rstep, ng, (const float *const *)xs, nt, out_o);
            gemv(ref, &w, r0, rstep, ng, (const float *const *)xs, nt, out_r);
            for (int t = 0; t < nt; t++)
                for (int j = 0; j < ng; j++) {
                    double exact = 0, mag = 0;
                    for (int64_t i = 0; i < k; i++) {
                        exact += (double)xs[t][i] * pb[j * k + i];
                        mag += fabs((double)xs[t][i] * pb[j * k + i]);
                    }
                    const float o = out_o[t * 4 + j], f = out_r[t * 4 + j];
                    dots++;
                    if (isnan(exact) || !(mag < 1e37)) { /* NaN/Inf weights or fp32 overflow: both non-finite or equal */
                        nan_dots++;
                        assert_true((isnan(o) && isnan(f)) || o == f || (!isfinite(o) && !isfinite(f)) || !(mag < 1e37));
                        continue;
                    }
                    const double e = err_of(o, exact, mag, k);
                    if (e > worst) worst = e;
                    assert_true(e <= 1e-5);
                    assert_true(err_of(f, exact, mag, k) <= 1e-5);
                }
            /* a token's sums, bit for bit, the same alone as beside the others (the layer runs an
             * expert's 1-4 tokens in one call: a token's result must not depend on them) */
            for (int t = 0; t < nt && nt > 1; t++) {
                float alone[16];
                tu_poison_f32(alone, 16);
                gemv(opt, &w, r0, rstep, ng, (const float *const *)xs + t, 1, alone);
                for (int j = 0; j < ng; j++)
                    if (memcmp(&alone[j], &out_o[t * 4 + j], 4) &&
                        !(isnan(alone[j]) && isnan(out_o[t * 4 + j]))) {
                        print_error(
                            "set %s: gemv token %d of %d, row %d: alone %a, beside others %a\n",
                            opt->name, t, nt, j, alone[j], out_o[t * 4 + j]);
                        fail();
                    }
            }
            for (int t = 0; t < nt; t++) free(xs[t]);

            /* the packed micro-kernel on the reference panel, 1-6 tokens (every micro-tile height) */
            const int mr = (int)tu_randint(&r, 1, 6);
            float *xm[6], c_o[6 * 16];
            for (int m = 0; m < mr; m++) {
                xm[m] = tu_alloc(sizeof(float) * (size_t)k);
                tu_fill_normal_f32(&r, xm[m], k, 1.0f);
            }
            tu_poison_f32(c_o, 6 * 16);
            opt->gemm_panel16((const float *const *)xm, mr, pb, k, c_o, 16);
            for (int m = 0; m < mr; m++)
                for (int j = 0; j < 16; j++) {
                    double exact = 0, mag = 0;
                    for (int64_t i = 0; i < k; i++) {
                        exact += (double)xm[m][i] * pb[j * k + i];
                        mag += fabs((double)xm[m][i] * pb[j * k + i]);
                    }
                    const float o = c_o[m * 16 + j];
                    gemms++;
                    if (isnan(exact) || !(mag < 1e37)) {
                        assert_true(isnan(o) || !isfinite(o) || !(mag < 1e37));
                        continue;
                    }
                    const double e = err_of(o, exact, mag, k);
                    if (e > worst) worst = e;
                    if (!(e <= 1e-5)) {
                        print_error("gemm_panel16 mr %d [%d][%d]: %g vs %g\n", mr, m, j, o, exact);
                        fail();
                    }
                }
            for (int m = 0; m < mr; m++) free(xm[m]);
        }
        free(pa), free(pb), free(w.q), free(w.s);
    }
    printf("%-9s %s vs ref: %lld panels bit-identical, %lld dot products (%lld non-finite) within %.1e of "
           "sum|t|, %lld panel products (worst %.1e) PASS\n",
           fmt == MXM_WFMT_MXFP8 ? "mxfp8" : "fp8_block", opt->name, (long long)packs, (long long)dots,
           (long long)nan_dots, 1e-5, (long long)gemms, worst);
}

/* ---- the bf16 tile kernels ------------------------------------------------------------------ */

/* Tile-exact MXFP8 weights: no NaN codes, scale bytes in 86..168, the edges often. Codes of
 * three kinds (the decode has a path for blocks without zero or subnormal codes, as quantized
 * weights almost always are, and one for the others): any (0), normal exponents only (1),
 * normal but one code in about 2000 zero or subnormal (2). */
static weight make_tile_weight(tu_rng *r, int64_t rows, int64_t k, int codes) {
    weight w = {MXM_WFMT_MXFP8, rows, k, tu_alloc((size_t)(rows * k)),
                tu_alloc((size_t)(rows * k / 32))};
    for (int64_t i = 0; i < rows * k; i++) {
        w.q[i] = (uint8_t)tu_randint(r, 0, 255);
        if (codes && (w.q[i] & 0x78) == 0 && !(codes == 2 && tu_uniform(r) < 1.0 / 128))
            w.q[i] |= 0x08;
        if ((w.q[i] & 0x7F) == 0x7F) w.q[i] ^= 1;
    }
    uint8_t *s = w.s;
    for (int64_t i = 0; i < rows * k / 32; i++) {
        const double u = tu_uniform(r);
        s[i] = (uint8_t)(u < 0.05  ? 86
                         : u < 0.1 ? 168
                         : u < 0.2 ? tu_randint(r, 86, 168)
                                   : tu_randint(r, 110, 130));
    }
    return w;
}

/* A value that is not tile-exact: inexact in bf16, just outside [2^-50, 2^50), or NaN/Inf. */
static float non_tile_value(tu_rng *r) {
    switch (tu_randint(r, 0, 5)) {
    case 0:
        return 1.0f + 0x1p-9f; /* one bit below bf16's mantissa */
    case 1:
        return -0x1p-51f; /* exact in bf16, below the range */
    case 2:
        return 0x1p50f; /* the first value above it */
    case 3:
        return INFINITY;
    case 4:
        return NAN;
    default:
        return 0x1.FEp-51f; /* exact in bf16, just below 2^-50 */
    }
}

/* A bf16 value that is not tile-exact: one of non_tile_value's that has a bf16 copy. */
static uint16_t non_tile_bf16(tu_rng *r) {
    for (;;) {
        const float v = non_tile_value(r);
        if (isnan(v) || mxm_bf16_decode(mxm_bf16_rne(v)) == v) return mxm_bf16_rne(v);
    }
}

/* One entry of a tile product and of its _ref twin against the float64 sum exact (magnitude mag):
 * both within the fp32 kernels' bound; worst tracks the kernel's error. */
static void check_entry(const char *what, int n, int64_t k, int t, int j, float c, float cref,
                        double exact, double mag, double *worst) {
    const double e = err_of(c, exact, mag, k);
    if (e > *worst) *worst = e;
    if (!(e <= 1e-5) || !(err_of(cref, exact, mag, k) <= 1e-5)) {
        print_error("%s n %d k %lld [%d][%d]: %g (ref %g) vs %g\n", what, n, (long long)k, t, j, c,
                    cref, exact);
        fail();
    }
}
/* c (n tokens x 16) against the float64 products of the rows xs with the fp32 panel pf, within
 * the fp32 kernels' bound; counts the results bit-identical to cref. */
static void check_product(const char *what, const float *c, const float *cref, float *const *xs,
                          int n, const float *pf, int64_t k, double *worst, int64_t *count,
                          int64_t *same) {
    for (int t = 0; t < n; t++)
        for (int j = 0; j < 16; j++) {
            double exact = 0, mag = 0;
            for (int64_t i = 0; i < k; i++) {
                exact += (double)xs[t][i] * pf[j * k + i];
                mag += fabs((double)xs[t][i] * pf[j * k + i]);
            }
            check_entry(what, n, k, t, j, c[t * 16 + j], cref[t * 16 + j], exact, mag, worst);
            *same += memcmp(&c[t * 16 + j], &cref[t * 16 + j], 4) == 0;
            (*count)++;
        }
}

/* Tile-exact DeepSeek FP8 weights: no NaN codes, finite scales of every kind (the usual range,
 * subnormal, negative, 300, 2^100); codes as make_tile_weight's kinds. */
static weight make_tile_fp8block(tu_rng *r, int64_t rows, int64_t k, int codes) {
    weight w = make_tile_weight(r, rows, k, codes);
    free(w.s);
    w.fmt = MXM_WFMT_FP8_BLOCK;
    const int64_t n = ((rows + 127) / 128) * ((k + 127) / 128);
    float *s = tu_alloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        const double u = tu_uniform(r);
        s[i] = u < 0.03   ? 1e-40f
               : u < 0.06 ? -0.015625f
               : u < 0.09 ? 300.0f
               : u < 0.12 ? 0x1p100f
                          : (float)ldexp(1.0 + tu_uniform(r), (int)tu_randint(r, -20, 4));
    }
    w.s = s;
    return w;
}

/* c (n tokens x 16) of DeepSeek FP8 rows against the float64 sums of x (with xsc: the codes xs
 * times their 1x128 scales xsc) times the values e4m3(q) * scale, within the fp32 kernels' bound
 * (sums near the fp32 range: skipped). */
static void check_fp8block_product(const char *what, const float *c, const float *cref,
                                   float *const *xs, float *const *xsc, int n, const weight *w,
                                   int64_t r0, int64_t rstep, int nr, double *worst,
                                   int64_t *count) {
    const int64_t k = w->k, nsb = (k + 127) / 128;
    for (int t = 0; t < n; t++)
        for (int j = 0; j < 16; j++) {
            double exact = 0, mag = 0;
            for (int64_t i = 0; j < nr && i < k; i++) {
                const int64_t row = r0 + j * rstep;
                const double v = (double)mxm_e4m3_decode(w->q[row * k + i]) *
                                 ((const float *)w->s)[row / 128 * nsb + i / 128];
                const double x = xsc ? (double)xs[t][i] * xsc[t][i / 128] : xs[t][i];
                exact += x * v;
                mag += fabs(x * v);
            }
            if (mag > 0x1p100) continue;
            check_entry(what, n, k, t, j, c[t * 16 + j], cref[t * 16 + j], exact, mag, worst);
            (*count)++;
        }
}

static void check_tiles(const mxm_cpu_kernels *opt) {
    tu_rng r = tu_rng_fresh();
    const mxm_cpu_wfmt_kernels *mx = &opt->wfmt[MXM_WFMT_MXFP8], *bf = &opt->wfmt[MXM_WFMT_BF16];
    const mxm_cpu_wfmt_kernels *fb = &opt->wfmt[MXM_WFMT_FP8_BLOCK];
    int64_t panels = 0, refused = 0, bf_panels = 0, bf_refused = 0, xtiles = 0, products = 0,
            same_bits = 0, fb_panels = 0, fb_refused = 0, fb_products = 0, fb_w8a8 = 0;
    double fb_worst = 0;
    double worst = 0;
    for (int trial = 0; trial < 60; trial++) {
        const int64_t k = 32 * tu_randint(&r, 1, 24), rows = tu_randint(&r, 1, 120);
        const bool general = trial % 4 == 3; /* make_weight's odd scales and NaN codes */
        weight w = general ? make_weight(&r, MXM_WFMT_MXFP8, rows, k)
                           : make_tile_weight(&r, rows, k, trial % 3);
        const int64_t rstep = tu_randint(&r, 1, 3);
        const int nr = trial % 3 ? 16 : (int)tu_randint(&r, 1, 16);
        const int64_t span = (nr - 1) * rstep;
        if (span >= rows) {
            free(w.q), free(w.s);
            continue;
        }
        const int64_t r0 = tu_randint(&r, 0, rows - 1 - span);
        if (!general &&
            trial % 4 == 1) { /* one block just outside the scale range, or a NaN code */
            const int64_t row = r0 + tu_randint(&r, 0, nr - 1) * rstep,
                          c = tu_randint(&r, 0, k - 1);
            const int64_t kind = tu_randint(&r, 0, 2);
            if (kind == 2)
                w.q[row * k + c] |= 0x7F;
            else
                ((uint8_t *)w.s)[row * (k / 32) + c / 32] = kind ? 169 : 85;
        }
        const size_t wp_bytes = 2 * 16 * (size_t)k;
        uint16_t *wo = tu_alloc(wp_bytes), *wr = tu_alloc(wp_bytes);
        float *pf = tu_alloc(sizeof(float) * 16 * (size_t)k);
        const bool er = mxm_pack_mxfp8_tiles_ref(w.q, w.s, k, r0, rstep, nr, wr);
        assert_true(general || trial % 4 == 1 || er);
        mxm_pack_mxfp8_panel_ref(w.q, w.s, k, r0, rstep, nr, pf);
        if (er) /* the bf16 copy is the fp32 panel's value */
            for (int j = 0; j < 16; j++)
                for (int64_t i = 0; i < k; i++)
                    assert_true(mxm_bf16_decode(wr[(i / 32 * 16 + j) * 32 + i % 32]) ==
                                pf[j * k + i]);

        /* token tiles: W8A8-like rows (MXFP8 values), 1-70 tokens */
        const int n = trial % 5 == 0   ? 1
                      : trial % 5 == 1 ? 16 * (int)tu_randint(&r, 1, 4) + 1
                                       : (int)tu_randint(&r, 2, 70);
        const int ntb = (n + 15) / 16;
        float **xs = tu_alloc(sizeof(float *) * (size_t)n);
        for (int t = 0; t < n; t++) {
            xs[t] = tu_alloc(sizeof(float) * (size_t)k);
            tu_fill_blockscaled_f32(&r, xs[t], k, 3, 3);
            mxm_mx_fakequant_f32_ref(xs[t], k, xs[t], 0);
        }
        const size_t xt_bytes = 2 * (size_t)(ntb * 16 * k);
        uint16_t *xo = tu_alloc(xt_bytes), *xr = tu_alloc(xt_bytes);
        memset(xo, 0xA5, xt_bytes), memset(xr, 0x5A, xt_bytes);
        assert_true(opt->pack_x_tiles((const float *const *)xs, n, k, xo));
        assert_true(mxm_pack_x_tiles_ref((const float *const *)xs, n, k, xr));
        assert_memory_equal(xo, xr, xt_bytes);
        xtiles++;

        /* the MXFP8 product: same verdict, same panel, tokens past n untouched */
        float *co = tu_alloc(sizeof(float) * (size_t)(n + 1) * 16),
              *cr = tu_alloc(sizeof(float) * (size_t)n * 16);
        tu_poison_f32(co, (n + 1) * 16);
        memset(wo, 0xA5, wp_bytes);
        const bool eo = mx->gemm_tiles16(w.q, w.s, k, r0, rstep, nr, xr, NULL, n, co, 16, wo);
        assert_int_equal(eo, er);
        if (er) {
            panels++;
            assert_memory_equal(wo, wr, wp_bytes);
            assert_true(
                mxm_gemm_mxfp8_tiles16_ref(w.q, w.s, k, r0, rstep, nr, xr, NULL, n, cr, 16, wo));
            for (int j = 0; j < 16; j++)
                assert_true(isnan(co[n * 16 + j]));
            check_product("mxfp8 gemm_tiles16", co, cr, xs, n, pf, k, &worst, &products,
                          &same_bits);
            { /* a token's sums do not depend on the tokens beside it (expert parallelism's split)
               */
                const int t = (int)tu_randint(&r, 0, n - 1);
                uint16_t *x1 = tu_alloc(2 * 16 * (size_t)k), *w1 = tu_alloc(wp_bytes);
                float c1[16];
                assert_true(opt->pack_x_tiles((const float *const *)&xs[t], 1, k, x1));
                assert_true(mx->gemm_tiles16(w.q, w.s, k, r0, rstep, nr, x1, NULL, 1, c1, 16, w1));
                assert_memory_equal(c1, co + t * 16, sizeof c1);
                free(x1), free(w1);
            }
        } else {
            refused++;
        }
        { /* the same rows as BF16 weights (the MXFP8 values rounded to bf16, exact where er)
           * through the BF16 row: the ref's verdict and tile panel (the MXFP8 one where that is
           * exact), tokens past n untouched, the product within the bound */
            uint16_t *wb = tu_alloc(2 * (size_t)(rows * k)), *wbr = tu_alloc(wp_bytes);
            for (int64_t i = 0; i < rows * k; i++)
                wb[i] = mxm_bf16_rne(mxm_e4m3_decode(w.q[i]) *
                                     mxm_e8m0_decode(((const uint8_t *)w.s)[i / 32]));
            float *pb = tu_alloc(sizeof(float) * 16 * (size_t)k);
            mxm_pack_bf16_panel_ref(wb, NULL, k, r0, rstep, nr, pb);
            const bool ebr = mxm_pack_bf16_tiles_ref(wb, NULL, k, r0, rstep, nr, wbr);
            if (er) {
                assert_true(ebr);
                assert_memory_equal(wbr, wr, wp_bytes);
            }
            tu_poison_f32(co, (n + 1) * 16);
            memset(wo, 0xA5, wp_bytes);
            const bool ebo = bf->gemm_tiles16(wb, NULL, k, r0, rstep, nr, xr, NULL, n, co, 16, wo);
            assert_int_equal(ebo, ebr);
            if (ebr) {
                bf_panels++;
                assert_memory_equal(wo, wbr, wp_bytes);
                assert_true(
                    mxm_gemm_bf16_tiles16_ref(wb, NULL, k, r0, rstep, nr, xr, NULL, n, cr, 16, wo));
                for (int j = 0; j < 16; j++)
                    assert_true(isnan(co[n * 16 + j]));
                check_product("bf16 gemm_tiles16", co, cr, xs, n, pb, k, &worst, &products,
                              &same_bits);
            } else {
                bf_refused++;
            }
            /* a planted non-tile value in one of the rows */
            wb[(r0 + tu_randint(&r, 0, nr - 1) * rstep) * k + tu_randint(&r, 0, k - 1)] =
                non_tile_bf16(&r);
            assert_false(bf->gemm_tiles16(wb, NULL, k, r0, rstep, nr, xr, NULL, n, co, 16, wo));
            assert_false(
                mxm_gemm_bf16_tiles16_ref(wb, NULL, k, r0, rstep, nr, xr, NULL, n, cr, 16, wbr));
            free(wb), free(wbr), free(pb);
        }
        { /* DeepSeek FP8 weights, 1-300 rows (the 16 rows may straddle a 128-row scale block),
           * the same tokens: the ref's verdict (a NaN code or a non-finite scale planted in some
           * trials, make_weight's odd scales and NaN codes in the general ones) and code panel,
           * tokens past n untouched, the product within the bound, a token's sums alone the
           * same as beside the others */
            const int64_t rows_f = tu_randint(&r, span + 1, 300);
            const int64_t r0f = tu_randint(&r, 0, rows_f - 1 - span);
            weight f = general ? make_weight(&r, MXM_WFMT_FP8_BLOCK, rows_f, k)
                               : make_tile_fp8block(&r, rows_f, k, trial % 3);
            const int64_t nsb = (k + 127) / 128;
            if (!general && trial % 4 == 1) {
                const int64_t row = r0f + tu_randint(&r, 0, nr - 1) * rstep,
                              c = tu_randint(&r, 0, k - 1);
                const int64_t kind = tu_randint(&r, 0, 2);
                if (kind == 2)
                    f.q[row * k + c] |= 0x7F;
                else
                    ((float *)f.s)[row / 128 * nsb + c / 128] = kind ? INFINITY : NAN;
            }
            uint16_t *wfr = tu_alloc(wp_bytes);
            const bool efr = mxm_pack_fp8block_tiles_ref(f.q, f.s, k, r0f, rstep, nr, wfr);
            assert_true(general || trial % 4 == 1 || efr);
            tu_poison_f32(co, (n + 1) * 16);
            memset(wo, 0xA5, wp_bytes);
            const bool efo = fb->gemm_tiles16(f.q, f.s, k, r0f, rstep, nr, xr, NULL, n, co, 16, wo);
            assert_int_equal(efo, efr);
            if (efr) {
                fb_panels++;
                assert_memory_equal(wo, wfr, wp_bytes);
                assert_true(mxm_gemm_fp8block_tiles16_ref(f.q, f.s, k, r0f, rstep, nr, xr, NULL, n,
                                                          cr, 16, wo));
                for (int j = 0; j < 16; j++)
                    assert_true(isnan(co[n * 16 + j]));
                check_fp8block_product("fp8_block gemm_tiles16", co, cr, xs, NULL, n, &f, r0f,
                                       rstep, nr, &fb_worst, &fb_products);
                {
                    const int t = (int)tu_randint(&r, 0, n - 1);
                    uint16_t *x1 = tu_alloc(2 * 16 * (size_t)k), *w1 = tu_alloc(wp_bytes);
                    float c1[16];
                    assert_true(opt->pack_x_tiles((const float *const *)&xs[t], 1, k, x1));
                    assert_true(
                        fb->gemm_tiles16(f.q, f.s, k, r0f, rstep, nr, x1, NULL, 1, c1, 16, w1));
                    assert_memory_equal(c1, co + t * 16, sizeof c1);
                    free(x1), free(w1);
                }
                /* W8A8: the tokens as E4M3 codes (no NaN) with 1x128 scales of every finite kind;
                 * then one scale made infinite or NaN: refused, as the ref */
                float **xq = tu_alloc(sizeof(float *) * (size_t)n),
                      **xsc = tu_alloc(sizeof(float *) * (size_t)n);
                for (int t = 0; t < n; t++) {
                    xq[t] = tu_alloc(sizeof(float) * (size_t)k);
                    xsc[t] = tu_alloc(sizeof(float) * (size_t)nsb);
                    for (int64_t i = 0; i < k; i++) {
                        uint8_t q = (uint8_t)tu_randint(&r, 0, 255);
                        if ((q & 0x7F) == 0x7F) q ^= 1;
                        xq[t][i] = mxm_e4m3_decode(q);
                    }
                    for (int64_t b = 0; b < nsb; b++) {
                        const double u = tu_uniform(&r);
                        xsc[t][b] = u < 0.05   ? 1e-40f
                                    : u < 0.1  ? -0.25f
                                    : u < 0.15 ? 0.0f
                                               : (float)ldexp(1.0 + tu_uniform(&r),
                                                              (int)tu_randint(&r, -12, 4));
                    }
                }
                uint16_t *xqt = tu_alloc(xt_bytes);
                assert_true(opt->pack_x_tiles((const float *const *)xq, n, k, xqt));
                const float *const *xscc = (const float *const *)xsc;
                tu_poison_f32(co, (n + 1) * 16);
                assert_true(
                    fb->gemm_tiles16(f.q, f.s, k, r0f, rstep, nr, xqt, xscc, n, co, 16, wo));
                assert_true(mxm_gemm_fp8block_tiles16_ref(f.q, f.s, k, r0f, rstep, nr, xqt, xscc, n,
                                                          cr, 16, wfr));
                assert_memory_equal(wo, wfr, wp_bytes);
                for (int j = 0; j < 16; j++)
                    assert_true(isnan(co[n * 16 + j]));
                check_fp8block_product("fp8_block w8a8 gemm_tiles16", co, cr, xq, xsc, n, &f, r0f,
                                       rstep, nr, &fb_worst, &fb_w8a8);
                xsc[tu_randint(&r, 0, n - 1)][tu_randint(&r, 0, nsb - 1)] =
                    tu_randint(&r, 0, 1) ? -INFINITY : NAN;
                assert_false(
                    fb->gemm_tiles16(f.q, f.s, k, r0f, rstep, nr, xqt, xscc, n, co, 16, wo));
                assert_false(mxm_gemm_fp8block_tiles16_ref(f.q, f.s, k, r0f, rstep, nr, xqt, xscc,
                                                           n, cr, 16, wfr));
                for (int t = 0; t < n; t++)
                    free(xq[t]), free(xsc[t]);
                free(xq), free(xsc), free(xqt);
            } else {
                fb_refused++;
                assert_false(mxm_gemm_fp8block_tiles16_ref(f.q, f.s, k, r0f, rstep, nr, xr, NULL, n,
                                                           cr, 16, wfr));
            }
            free(wfr), free(f.q), free(f.s);
        }
        free(co), free(cr);
        /* a planted non-tile value anywhere in the rows */
        xs[tu_randint(&r, 0, n - 1)][tu_randint(&r, 0, k - 1)] = non_tile_value(&r);
        assert_false(opt->pack_x_tiles((const float *const *)xs, n, k, xo));
        assert_false(mxm_pack_x_tiles_ref((const float *const *)xs, n, k, xr));

        for (int t = 0; t < n; t++)
            free(xs[t]);
        free(xs), free(xo), free(xr), free(wo), free(wr), free(pf), free(w.q), free(w.s);
    }
    printf("tiles     %s vs ref: %lld MXFP8 and %lld BF16 tile panels bit-identical (%lld and %lld "
           "refused as not tile-exact, as the ref), %lld token tiles bit-identical, %lld products "
           "within 1e-5 of sum|t| (worst %.1e; %lld bit-identical to the ref's sequential fp32 "
           "sum) PASS\n",
           opt->name, (long long)panels, (long long)bf_panels, (long long)refused,
           (long long)bf_refused, (long long)xtiles, (long long)products, worst,
           (long long)same_bits);
    printf("tiles     %s vs ref: %lld DeepSeek FP8 code panels bit-identical (%lld refused as the "
           "ref: NaN code or non-finite scale), %lld weight-only and %lld W8A8 (token codes + "
           "1x128 scales) products with 128-block scales within 1e-5 of sum|t| (worst %.1e) "
           "PASS\n",
           opt->name, (long long)fb_panels, (long long)fb_refused, (long long)fb_products,
           (long long)fb_w8a8, fb_worst);
}

/* A kernel set's per-format entry (fn, named what) is present exactly where expected (its
 * packing function pack, named pname, decides whether the set has that path at all). */
static void expect_entry(const mxm_cpu_kernels *k, int f, const char *what, void *fn,
                         const char *pname, void *pack, bool expected) {
    if ((fn != NULL) == expected) return;
    print_error("set %s, format %s: %s %p, %s %p\n", k->name, mxm_weight_format_name(f), what, fn,
                pname, pack);
    fail();
}

static void test_tiles(void **state) {
    (void)state;
    const mxm_cpu_kernels *sets[16];
    const int n = mxm_cpu_kernel_sets(sets, 16);
    int tested = 0;
    for (int i = 0; i < n; i++) {
        /* a set with tiles has the tile products of exactly the formats whose values (MXFP8,
         * BF16) or codes (DeepSeek FP8) can be bf16-exact (the plan's tile passes follow the
         * row), a set without none */
        const mxm_cpu_kernels *k = sets[i];
        const bool have = k->pack_x_tiles != NULL;
        for (int f = 0; f < MXM_WFMT_COUNT_; f++)
            expect_entry(k, f, "gemm_tiles16", (void *)k->wfmt[f].gemm_tiles16, "pack_x_tiles",
                         (void *)k->pack_x_tiles, have && f != MXM_WFMT_F32);
        if (have) check_tiles(k), tested++;
    }
    assert_null(sets[0]->pack_x_tiles); /* the reference path is the fp32 one */
    if (!tested) printf("[note] no kernel set with bf16 tiles runs on this CPU\n");
}

/* ---- the bf16 GEMV ------------------------------------------------------------------------- */

/* A token row as W8A8 MXFP8 leaves it (per 32-block E4M3 values times 2^e, e in -40..10: all
 * tile-exact, zeros and subnormal codes included); with plant, one value that is not. */
static void make_dot_token(tu_rng *r, float *x, int64_t k, bool plant) {
    for (int64_t b = 0; b < k / 32; b++) {
        const int e = (int)tu_randint(r, -40, 10);
        for (int i = 0; i < 32; i++) {
            uint8_t q = (uint8_t)tu_randint(r, 0, 255);
            if ((q & 0x7F) == 0x7F) q ^= 1;
            x[b * 32 + i] = (float)ldexp(mxm_e4m3_decode(q), e);
        }
    }
    if (plant) x[tu_randint(r, 0, k - 1)] = non_tile_value(r);
}

/* pack_x_dot and the MXFP8 row's gemv_dot against their twins: dot rows bit-identical (padding
 * included, nothing written past it), verdicts equal, and both GEMVs within the fp32 kernels'
 * bound of the float64 products; NaN codes and scale byte 255 give NaN in both. */
static void check_dot(const mxm_cpu_kernels *opt, int fmt) {
    tu_rng r = tu_rng_fresh();
    int64_t rows = 0, refused = 0, dots = 0, nan_dots = 0, w8a8 = 0;
    double worst = 0;
    for (int trial = 0; trial < 80; trial++) {
        const int64_t k = 32 * tu_randint(&r, 1, 40), nrows = tu_randint(&r, 1, 200);
        const int64_t cols = MXM_DOT_COLS(k), nsb = (k + 127) / 128;
        weight w = make_weight(&r, fmt, nrows, k);
        const int nt = (int)tu_randint(&r, 1, 4);
        /* DeepSeek FP8 W8A8 in half the trials: the dot rows hold the activations' codes (here
         * any tile-exact values) and xsc their 1x128 scales */
        const bool codes = fmt == MXM_WFMT_FP8_BLOCK && tu_uniform(&r) < 0.5;
        w8a8 += codes;
        float *xs[4], *xsc[4] = {NULL, NULL, NULL, NULL};
        uint16_t *xo[4], *xr[4];
        for (int t = 0; t < nt; t++) {
            xs[t] = tu_alloc(sizeof(float) * (size_t)k);
            if (codes) {
                xsc[t] = tu_alloc(sizeof(float) * (size_t)nsb);
                /* the usual range, and now and then a non-finite, tiny, negative or large one
                 * (not near 2^120: the product times a tiny weight scale would leave fp32 first) */
                static const float odd[5] = {INFINITY, NAN, 1e-30f, -0.015625f, 300.0f};
                for (int64_t b = 0; b < nsb; b++)
                    xsc[t][b] = tu_uniform(&r) < 0.1 ? odd[tu_randint(&r, 0, 4)]
                                                     : (float)ldexp(1.0 + tu_uniform(&r),
                                                                    (int)tu_randint(&r, -12, 2));
            }
            xo[t] = tu_alloc(2 * (size_t)(cols + 64)), xr[t] = tu_alloc(2 * (size_t)(cols + 64));
            for (int plant = tu_uniform(&r) < 0.15;; plant = 0) {
                make_dot_token(&r, xs[t], k, plant);
                memset(xo[t], 0xA5, 2 * (size_t)(cols + 64)),
                    memset(xr[t], 0x5A, 2 * (size_t)(cols + 64));
                const bool vo = opt->pack_x_dot(xs[t], k, xo[t]),
                           vr = mxm_pack_x_dot_ref(xs[t], k, xr[t]);
                assert_int_equal(vo, vr);
                assert_int_equal(vr, !plant); /* the planted value alone is not tile-exact */
                rows++;
                for (int64_t i = cols; i < cols + 64; i++)
                    assert_int_equal(xo[t][i], 0xA5A5);
                if (!vr) {
                    refused++;
                    continue;
                }
                if (memcmp(xo[t], xr[t], 2 * (size_t)cols) != 0) {
                    print_error("set %s: dot row of k %lld differs from the twin's\n", opt->name,
                                (long long)k);
                    fail();
                }
                break;
            }
        }
        const int64_t rstep = tu_randint(&r, 1, 3);
        const int ng = (int)tu_randint(&r, 1, 4);
        if ((ng - 1) * rstep < nrows) {
            const int64_t r0 = tu_randint(&r, 0, nrows - 1 - (ng - 1) * rstep);
            float out_o[16], out_r[16];
            tu_poison_f32(out_o, 16), tu_poison_f32(out_r, 16);
            const float *const *sc = codes ? (const float *const *)xsc : NULL;
            opt->wfmt[fmt].gemv_dot(w.q, w.s, k, r0, rstep, ng, (const uint16_t *const *)xo, sc, nt,
                                    out_o, 4);
            (fmt == MXM_WFMT_MXFP8 ? mxm_gemv_mxfp8_dot_ref : mxm_gemv_fp8block_dot_ref)(
                w.q, w.s, k, r0, rstep, ng, (const uint16_t *const *)xr, sc, nt, out_r, 4);
            /* each token alone: the same bits (a token's sums do not depend on its neighbours;
             * a NaN may differ in sign and payload) */
            for (int t = 0; t < nt; t++) {
                float alone[4];
                opt->wfmt[fmt].gemv_dot(w.q, w.s, k, r0, rstep, ng, (const uint16_t *const *)xo + t,
                                        sc ? sc + t : NULL, 1, alone, 4);
                for (int j = 0; j < ng; j++)
                    if (memcmp(&alone[j], &out_o[t * 4 + j], 4) != 0 &&
                        !(isnan(alone[j]) && isnan(out_o[t * 4 + j]))) {
                        print_error(
                            "set %s: gemv_dot token %d of %d alone: %a, beside others: %a\n",
                            opt->name, t, nt, (double)alone[j], (double)out_o[t * 4 + j]);
                        fail();
                    }
            }
            for (int t = 0; t < nt; t++)
                for (int j = 0; j < ng; j++) {
                    const int64_t row = r0 + j * rstep;
                    double exact = 0, mag = 0;
                    for (int64_t i = 0; i < k; i++) {
                        double v = mxm_e4m3_decode(w.q[row * k + i]), x = xs[t][i];
                        if (fmt == MXM_WFMT_MXFP8) {
                            const uint8_t sb = ((uint8_t *)w.s)[row * (k / 32) + i / 32];
                            v = sb == 255 ? NAN : ldexp(v, sb - 127);
                        } else {
                            v *= ((const float *)w.s)[row / 128 * nsb + i / 128];
                            if (codes) x *= xsc[t][i / 128];
                        }
                        exact += x * v;
                        mag += fabs(x * v);
                    }
                    const float o = out_o[t * 4 + j], f = out_r[t * 4 + j];
                    /* sums near the fp32 range only checked for NaN (DeepSeek FP8: scaled partial
                     * sums can overflow where the whole sum does not, as on the tiles) */
                    const double big = fmt == MXM_WFMT_FP8_BLOCK ? 0x1p100 : 1e37;
                    dots++;
                    if (isnan(exact) || !(mag < big)) {
                        nan_dots++;
                        assert_true((isnan(o) && isnan(f)) || !(mag < big));
                        continue;
                    }
                    check_entry("gemv_dot", nt, k, t, j, o, f, exact, mag, &worst);
                }
        }
        for (int t = 0; t < nt; t++)
            free(xs[t]), free(xsc[t]), free(xo[t]), free(xr[t]);
        free(w.q), free(w.s);
    }
    printf("%-9s %s bf16 GEMV vs ref: %lld dot rows bit-identical (%lld refused, as the twin), "
           "%lld dot products (%lld non-finite; %lld trials W8A8 codes + 1x128 scales), worst "
           "%.1e of sum|t| PASS\n",
           fmt == MXM_WFMT_MXFP8 ? "mxfp8" : "fp8_block", opt->name, (long long)rows,
           (long long)refused, (long long)dots, (long long)nan_dots, (long long)w8a8, worst);
}

static void test_dot(void **state) {
    (void)state;
    const mxm_cpu_kernels *sets[16];
    const int n = mxm_cpu_kernel_sets(sets, 16);
    int tested = 0;
    for (int i = 0; i < n; i++) {
        /* a set with dot rows has the bf16 GEMV of the formats whose codes are bf16-exact (MXFP8,
         * DeepSeek FP8) and of no other format, a set without none */
        const mxm_cpu_kernels *k = sets[i];
        const bool have = k->pack_x_dot != NULL;
        for (int f = 0; f < MXM_WFMT_COUNT_; f++)
            expect_entry(k, f, "gemv_dot", (void *)k->wfmt[f].gemv_dot, "pack_x_dot",
                         (void *)k->pack_x_dot,
                         have && (f == MXM_WFMT_MXFP8 || f == MXM_WFMT_FP8_BLOCK));
        if (have) check_dot(k, MXM_WFMT_MXFP8), check_dot(k, MXM_WFMT_FP8_BLOCK), tested++;
    }
    assert_null(sets[0]->pack_x_dot); /* the reference path is the fp32 one */
    if (!tested) printf("[note] no kernel set with a bf16 GEMV runs on this CPU\n");
}

/* Every set this CPU can run but the reference (which the loop compares against). */
static void check_all_sets(int fmt) {
    const mxm_cpu_kernels *sets[16];
    const int n = mxm_cpu_kernel_sets(sets, 16);
    if (n == 1) printf("[note] this CPU runs only the reference kernels\n");
    for (int i = 1; i < n; i++) check_format(fmt, sets[i]);
}

static void test_mxfp8(void **state) {
    (void)state;
    check_all_sets(MXM_WFMT_MXFP8);
}

static void test_fp8_block(void **state) {
    (void)state;
    check_all_sets(MXM_WFMT_FP8_BLOCK);
}

/* cpu_isa.def: each set is compiled for and checked on at least its parent's features (a set
 * installs its parent's kernels too), and set names are unique. */
#define F(X) " " #X " "
static const struct {
    const char *name, *parent, *feats;
} isa_rows[] = {
#define MXM_ISA(set, parent, feats) {#set, #parent, feats},
#include "cpu/cpu_isa.def"
#undef MXM_ISA
};
#undef F

static void test_isa_rows(void **state) {
    (void)state;
    const int n = (int)(sizeof isa_rows / sizeof isa_rows[0]);
    for (int i = 0; i < n; i++) {
        int parent = -1;
        for (int j = 0; j < i; j++) {
            assert_string_not_equal(isa_rows[i].name, isa_rows[j].name);
            if (!strcmp(isa_rows[j].name, isa_rows[i].parent)) parent = j;
        }
        if (strcmp(isa_rows[i].parent, "ref")) {
            assert_true(parent >= 0); /* parents come first */
            char f[64];
            for (const char *p = isa_rows[parent].feats; sscanf(p, " %63s", f) == 1; p = strstr(p, f) + strlen(f)) {
                char key[72];
                snprintf(key, sizeof key, " %s ", f);
                if (!strstr(isa_rows[i].feats, key)) {
                    print_error("set %s lacks its parent %s's feature %s\n", isa_rows[i].name, isa_rows[i].parent, f);
                    fail();
                }
            }
        }
    }
}

/* Every set has a panel kernel for every weight format (the plan takes the format's row without
 * a check), and a GEMV exactly where the reference set has one (a set never drops a row's GEMV,
 * which would move decode to the panel path). */
static void test_wfmt_rows(void **state) {
    (void)state;
    const mxm_cpu_kernels *sets[16];
    const int n = mxm_cpu_kernel_sets(sets, 16);
    for (int i = 0; i < n; i++)
        for (int f = 0; f < MXM_WFMT_COUNT_; f++) {
            if (!sets[i]->wfmt[f].pack_panel || !sets[i]->wfmt[f].gemv != !sets[0]->wfmt[f].gemv) {
                print_error("set %s, format %s: pack_panel %p, gemv %p (ref's gemv %p)\n",
                            sets[i]->name, mxm_weight_format_name(f),
                            (void *)sets[i]->wfmt[f].pack_panel, (void *)sets[i]->wfmt[f].gemv,
                            (void *)sets[0]->wfmt[f].gemv);
                fail();
            }
        }
    assert_non_null(sets[0]->wfmt[MXM_WFMT_MXFP8].gemv);
    assert_non_null(sets[0]->wfmt[MXM_WFMT_FP8_BLOCK].gemv);
}

/* MXM_KERNELS picks any set this CPU runs by name; "ref" forces the reference; an unknown or
 * unrunnable name gives the best set. */
static void test_selection(void **state) {
    (void)state;
    const mxm_cpu_kernels *sets[16];
    const int n = mxm_cpu_kernel_sets(sets, 16);
    assert_string_equal(sets[0]->name, "ref");
    const char *old = getenv("MXM_KERNELS");
    char *saved = old ? strdup(old) : NULL;
    for (int i = 0; i < n; i++) {
        setenv("MXM_KERNELS", sets[i]->name, 1);
        assert_ptr_equal(mxm_cpu_kernels_get(false), sets[i]);
        assert_ptr_equal(mxm_cpu_kernels_get(true), sets[0]);
    }
    setenv("MXM_KERNELS", "no-such-set", 1);
    assert_ptr_equal(mxm_cpu_kernels_get(false), sets[n - 1]);
    unsetenv("MXM_KERNELS");
    assert_ptr_equal(mxm_cpu_kernels_get(false), sets[n - 1]);
    if (saved) setenv("MXM_KERNELS", saved, 1);
    free(saved);
    printf("kernel sets this CPU runs:");
    for (int i = 0; i < n; i++) printf(" %s", sets[i]->name);
    printf("\n");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_isa_rows),  cmocka_unit_test(test_selection),
        cmocka_unit_test(test_wfmt_rows), cmocka_unit_test(test_mxfp8),
        cmocka_unit_test(test_fp8_block), cmocka_unit_test(test_tiles),
        cmocka_unit_test(test_dot)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
