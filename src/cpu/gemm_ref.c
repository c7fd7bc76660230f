/* Scalar reference expert-GEMM kernels: every weight format's row of the reference set, and the
 * twins of the bf16 tile kernels (which no reference row holds). The optimized twins
 * (gemm_avx2.c, gemm_avx512.c, gemm_amx.c) must agree with these up to fp32 summation order. */
#include <math.h>
#include <string.h>

#include "cpu/cpu_kernels.h"
#include "formats/formats.h"

void mxm_pack_mxfp8_panel_ref(const void *wv, const void *sv, int64_t k, int64_t r0, int64_t rstep,
                              int nr, float *panel) {
    const uint8_t *w = wv, *ws = sv;
    const int64_t kb = k / MXM_MX_BLOCK;
    for (int j = 0; j < 16; j++) {
        for (int64_t i = 0; i < k; i++) {
            float v = 0.0f;
            if (j < nr) {
                const int64_t r = r0 + j * rstep;
                v = mxm_e4m3_decode(w[r * k + i]) * mxm_e8m0_decode(ws[r * kb + i / MXM_MX_BLOCK]);
            }
            panel[j * k + i] = v;
        }
    }
}

void mxm_gemm_panel16_ref(const float *const *a, int mr, const float *panel, int64_t k, float *c,
                          int64_t ldc) {
    for (int m = 0; m < mr; m++) {
        for (int j = 0; j < 16; j++) {
            float acc = 0.0f;
            for (int64_t i = 0; i < k; i++) acc += a[m][i] * panel[j * k + i];
            c[m * ldc + j] = acc;
        }
    }
}

void mxm_gemv_mxfp8_ref(const void *wv, const void *sv, int64_t k, int64_t r0, int64_t rstep,
                        int nr, const float *const *x, int nt, float *out, int64_t ldo) {
    const uint8_t *w = wv, *ws = sv;
    const int64_t kb = k / MXM_MX_BLOCK;
    for (int t = 0; t < nt; t++) {
        for (int j = 0; j < nr; j++) {
            const int64_t r = r0 + j * rstep;
            float acc = 0.0f;
            for (int64_t i = 0; i < k; i++)
                acc += x[t][i] *
                       (mxm_e4m3_decode(w[r * k + i]) * mxm_e8m0_decode(ws[r * kb + i / MXM_MX_BLOCK]));
            out[t * ldo + j] = acc;
        }
    }
}

/* The DeepSeek FP8 value of w[r][i] (scale grid ws of a weight with k columns). */
static inline float fp8block_value(const void *w, const void *ws, int64_t k, int64_t r, int64_t i) {
    const int64_t kb = (k + MXM_FP8_BLOCK - 1) / MXM_FP8_BLOCK;
    return mxm_e4m3_decode(((const uint8_t *)w)[r * k + i]) *
           ((const float *)ws)[(r / MXM_FP8_BLOCK) * kb + i / MXM_FP8_BLOCK];
}

void mxm_pack_fp8block_panel_ref(const void *w, const void *ws, int64_t k, int64_t r0,
                                 int64_t rstep, int nr, float *panel) {
    for (int j = 0; j < 16; j++)
        for (int64_t i = 0; i < k; i++) panel[j * k + i] = j < nr ? fp8block_value(w, ws, k, r0 + j * rstep, i) : 0.0f;
}

void mxm_gemv_fp8block_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                           int nr, const float *const *x, int nt, float *out, int64_t ldo) {
    for (int t = 0; t < nt; t++) {
        for (int j = 0; j < nr; j++) {
            float acc = 0.0f;
            for (int64_t i = 0; i < k; i++) acc += x[t][i] * fp8block_value(w, ws, k, r0 + j * rstep, i);
            out[t * ldo + j] = acc;
        }
    }
}

/* BF16 and F32 weights (the reference mode): their values as they are; no scales. */
void mxm_pack_bf16_panel_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                             int nr, float *panel) {
    (void)ws;
    for (int j = 0; j < 16; j++)
        for (int64_t i = 0; i < k; i++)
            panel[j * k + i] =
                j < nr ? mxm_bf16_decode(((const uint16_t *)w)[(r0 + j * rstep) * k + i]) : 0.0f;
}

void mxm_pack_f32_panel_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                            int nr, float *panel) {
    (void)ws;
    for (int j = 0; j < 16; j++)
        for (int64_t i = 0; i < k; i++)
            panel[j * k + i] = j < nr ? ((const float *)w)[(r0 + j * rstep) * k + i] : 0.0f;
}

/* ---- bf16 tile twins (layouts and the tile-exact rule: cpu_kernels.h) -------------------------
 */

/* Tile-exact: the fp32 value has a bf16 copy and is zero or in [2^-50, 2^50) in magnitude. */
static bool tile_exact(float v) {
    const uint32_t u = mxm_f32_bits(v), a = u & 0x7FFFFFFFu;
    return a == 0 || ((u & 0xFFFFu) == 0 && a >= 0x26800000u && a < 0x58800000u);
}

bool mxm_pack_mxfp8_tiles_ref(const void *wv, const void *sv, int64_t k, int64_t r0, int64_t rstep,
                              int nr, uint16_t *wp) {
    const uint8_t *w = wv, *ws = sv;
    const int64_t kb = k / MXM_MX_BLOCK;
    bool ok = true;
    for (int j = 0; j < 16; j++) {
        for (int64_t i = 0; i < k; i++) {
            uint16_t v = 0;
            if (j < nr) {
                const int64_t r = r0 + j * rstep;
                const uint8_t s = ws[r * kb + i / MXM_MX_BLOCK], q = w[r * k + i];
                /* scale 2^-41..2^41: |e4m3| in [2^-9, 448] lands in [2^-50, 2^50) */
                ok = ok && s >= 86 && s <= 168 && (q & 0x7F) != 0x7F;
                v = mxm_bf16_rne(mxm_e4m3_decode(q) * mxm_e8m0_decode(s));
            }
            wp[(i / 32 * 16 + j) * 32 + i % 32] = v;
        }
    }
    return ok;
}

/* BF16 weights: their values as they are (tile-exact when zero or in [2^-50, 2^50)). */
bool mxm_pack_bf16_tiles_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                             int nr, uint16_t *wp) {
    (void)ws;
    bool ok = true;
    for (int j = 0; j < 16; j++)
        for (int64_t i = 0; i < k; i++) {
            const uint16_t v = j < nr ? ((const uint16_t *)w)[(r0 + j * rstep) * k + i] : 0;
            ok = ok && tile_exact(mxm_bf16_decode(v));
            wp[(i / 32 * 16 + j) * 32 + i % 32] = v;
        }
    return ok;
}

/* DeepSeek FP8 weights: the codes alone (every finite E4M3 value is tile-exact); the scales are
 * applied to the tile product's 128-column partial sums. Tile-exact unless a code of the rows is
 * NaN or a scale of their blocks is not finite. */
bool mxm_pack_fp8block_tiles_ref(const void *wv, const void *sv, int64_t k, int64_t r0,
                                 int64_t rstep, int nr, uint16_t *wp) {
    const uint8_t *w = wv;
    const int64_t nsb = (k + MXM_FP8_BLOCK - 1) / MXM_FP8_BLOCK;
    bool ok = true;
    for (int j = 0; j < 16; j++) {
        const int64_t r = r0 + j * rstep;
        for (int64_t b = 0; j < nr && b < nsb; b++)
            ok = ok && (mxm_f32_bits(((const float *)sv)[r / MXM_FP8_BLOCK * nsb + b]) &
                        0x7F800000u) != 0x7F800000u;
        for (int64_t i = 0; i < k; i++) {
            uint16_t v = 0;
            if (j < nr) {
                ok = ok && (w[r * k + i] & 0x7F) != 0x7F;
                v = mxm_bf16_rne(mxm_e4m3_decode(w[r * k + i]));
            }
            wp[(i / 32 * 16 + j) * 32 + i % 32] = v;
        }
    }
    return ok;
}

bool mxm_pack_x_tiles_ref(const float *const *x, int n, int64_t k, uint16_t *xt) {
    const int64_t nkb = k / 32;
    bool ok = true;
    for (int t = 0; t < (n + 15) / 16 * 16; t++)
        for (int64_t i = 0; i < k; i++) {
            const float v = t < n ? x[t][i] : 0.0f;
            ok = ok && tile_exact(v);
            xt[(((t / 16) * nkb + i / 32) * 16 + i % 32 / 2) * 32 + 2 * (t % 16) + i % 2] =
                mxm_bf16_rne(v);
        }
    return ok;
}

/* ---- bf16 GEMV twins (the dot row's layout: cpu_kernels.h) ----------------------------------- */

/* Where column i of a row sits in its dot row. */
static int64_t dot_index(int64_t i) {
    const int64_t o = i & 63;
    return (i - o) + ((o >> 3) & 1) * 32 + (o >> 4) * 8 + (o & 7);
}

bool mxm_pack_x_dot_ref(const float *x, int64_t k, uint16_t *xd) {
    bool ok = true;
    for (int64_t i = k; i < MXM_DOT_COLS(k); i++)
        xd[dot_index(i)] = 0;
    for (int64_t i = 0; i < k; i++) {
        ok = ok && tile_exact(x[i]);
        xd[dot_index(i)] = mxm_bf16_rne(x[i]);
    }
    return ok;
}

/* Columns i0 .. i1 of a token's dot row times a weight row's codes (unscaled), in column order. */
static float dot_block_ref(const uint16_t *xd, const uint8_t *wrow, int64_t i0, int64_t i1) {
    float p = 0.0f;
    for (int64_t i = i0; i < i1; i++)
        p += mxm_bf16_decode(xd[dot_index(i)]) * mxm_e4m3_decode(wrow[i]);
    return p;
}

void mxm_gemv_mxfp8_dot_ref(const void *wv, const void *sv, int64_t k, int64_t r0, int64_t rstep,
                            int nr, const uint16_t *const *xd, const float *const *xs, int nt,
                            float *out, int64_t ldo) {
    (void)xs;
    const uint8_t *w = wv, *ws = sv;
    const int64_t kb = k / MXM_MX_BLOCK;
    for (int t = 0; t < nt; t++)
        for (int j = 0; j < nr; j++) {
            const int64_t r = r0 + j * rstep;
            float acc = 0.0f;
            for (int64_t b = 0; b < kb; b++)
                acc += dot_block_ref(xd[t], w + r * k, b * MXM_MX_BLOCK, (b + 1) * MXM_MX_BLOCK) *
                       mxm_e8m0_decode(ws[r * kb + b]);
            out[t * ldo + j] = acc;
        }
}

void mxm_gemv_fp8block_dot_ref(const void *wv, const void *sv, int64_t k, int64_t r0, int64_t rstep,
                               int nr, const uint16_t *const *xd, const float *const *xs, int nt,
                               float *out, int64_t ldo) {
    const uint8_t *w = wv;
    const int64_t nsb = (k + MXM_FP8_BLOCK - 1) / MXM_FP8_BLOCK;
    for (int t = 0; t < nt; t++)
        for (int j = 0; j < nr; j++) {
            const int64_t r = r0 + j * rstep;
            float acc = 0.0f;
            for (int64_t b = 0; b < nsb; b++) {
                const int64_t i1 = (b + 1) * MXM_FP8_BLOCK < k ? (b + 1) * MXM_FP8_BLOCK : k;
                const float p = dot_block_ref(xd[t], w + r * k, b * MXM_FP8_BLOCK, i1);
                acc = fmaf(xs ? p * xs[t][b] : p, ((const float *)sv)[r / MXM_FP8_BLOCK * nsb + b],
                           acc);
            }
            out[t * ldo + j] = acc;
        }
}

/* In i order, one exact product at a time (the order of the tile instruction's definition). */
void mxm_gemm_tiles16_ref(const uint16_t *wp, const uint16_t *xt, int n, int64_t k, float *c,
                          int64_t ldc) {
    const int64_t nkb = k / 32;
    for (int t = 0; t < n; t++)
        for (int j = 0; j < 16; j++) {
            float acc = 0.0f;
            for (int64_t i = 0; i < k; i++) {
                const float xv = mxm_bf16_decode(
                    xt[(((t / 16) * nkb + i / 32) * 16 + i % 32 / 2) * 32 + 2 * (t % 16) + i % 2]);
                acc += xv * mxm_bf16_decode(wp[(i / 32 * 16 + j) * 32 + i % 32]);
            }
            c[t * ldc + j] = acc;
        }
}

bool mxm_gemm_mxfp8_tiles16_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                                int nr, const uint16_t *xt, const float *const *xs, int n, float *c,
                                int64_t ldc, uint16_t *wp) {
    (void)xs;
    if (!mxm_pack_mxfp8_tiles_ref(w, ws, k, r0, rstep, nr, wp)) return false;
    mxm_gemm_tiles16_ref(wp, xt, n, k, c, ldc);
    return true;
}

bool mxm_gemm_bf16_tiles16_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                               int nr, const uint16_t *xt, const float *const *xs, int n, float *c,
                               int64_t ldc, uint16_t *wp) {
    (void)xs;
    if (!mxm_pack_bf16_tiles_ref(w, ws, k, r0, rstep, nr, wp)) return false;
    mxm_gemm_tiles16_ref(wp, xt, n, k, c, ldc);
    return true;
}

/* Per 128-column block, in i order, one exact product of a token value (W8A8: its code) and a
 * weight code at a time into a fresh fp32 sum; the sum times the row's block scale (W8A8: times
 * the token's block scale) added to the fp32 result, blocks in order. */
bool mxm_gemm_fp8block_tiles16_ref(const void *w, const void *ws, int64_t k, int64_t r0,
                                   int64_t rstep, int nr, const uint16_t *xt,
                                   const float *const *xs, int n, float *c, int64_t ldc,
                                   uint16_t *wp) {
    const int64_t nkb = k / 32, nsb = (k + MXM_FP8_BLOCK - 1) / MXM_FP8_BLOCK;
    bool ok = mxm_pack_fp8block_tiles_ref(w, ws, k, r0, rstep, nr, wp);
    for (int t = 0; xs && t < n; t++)
        for (int64_t b = 0; b < nsb; b++)
            ok = ok && (mxm_f32_bits(xs[t][b]) & 0x7F800000u) != 0x7F800000u;
    if (!ok) return false;
    for (int t = 0; t < n; t++)
        for (int j = 0; j < 16; j++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nsb; b++) {
                float p = 0.0f;
                for (int64_t i = b * MXM_FP8_BLOCK; i < k && i < (b + 1) * MXM_FP8_BLOCK; i++) {
                    const float xv =
                        mxm_bf16_decode(xt[(((t / 16) * nkb + i / 32) * 16 + i % 32 / 2) * 32 +
                                           2 * (t % 16) + i % 2]);
                    p += xv * mxm_bf16_decode(wp[(i / 32 * 16 + j) * 32 + i % 32]);
                }
                const float sw =
                    j < nr ? ((const float *)ws)[(r0 + j * rstep) / MXM_FP8_BLOCK * nsb + b] : 0.0f;
                acc += (xs ? p * xs[t][b] : p) * sw;
            }
            c[t * ldc + j] = acc;
        }
    return true;
}
