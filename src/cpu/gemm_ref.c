/* Scalar reference expert-GEMM kernels. The optimized twins (gemm_avx2.c) must agree with these
 * up to fp32 summation order. */
#include <string.h>

#include "cpu/cpu_kernels.h"
#include "formats/formats.h"

void mxm_pack_mxfp8_panel_ref(const uint8_t *w, const uint8_t *ws, int64_t k, int64_t r0,
                              int64_t rstep, int nr, float *panel) {
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

void mxm_gemv_mxfp8_ref(const uint8_t *w, const uint8_t *ws, int64_t k, int64_t r0, int64_t rstep,
                        int nr, const float *const *x, int nt, float *out, int64_t ldo) {
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
static inline float fp8block_value(const uint8_t *w, const float *ws, int64_t k, int64_t r, int64_t i) {
    const int64_t kb = (k + MXM_FP8_BLOCK - 1) / MXM_FP8_BLOCK;
    return mxm_e4m3_decode(w[r * k + i]) * ws[(r / MXM_FP8_BLOCK) * kb + i / MXM_FP8_BLOCK];
}

void mxm_pack_fp8block_panel_ref(const uint8_t *w, const float *ws, int64_t k, int64_t r0,
                                 int64_t rstep, int nr, float *panel) {
    for (int j = 0; j < 16; j++)
        for (int64_t i = 0; i < k; i++) panel[j * k + i] = j < nr ? fp8block_value(w, ws, k, r0 + j * rstep, i) : 0.0f;
}

void mxm_gemv_fp8block_ref(const uint8_t *w, const float *ws, int64_t k, int64_t r0, int64_t rstep,
                           int nr, const float *const *x, int nt, float *out, int64_t ldo) {
    for (int t = 0; t < nt; t++) {
        for (int j = 0; j < nr; j++) {
            float acc = 0.0f;
            for (int64_t i = 0; i < k; i++) acc += x[t][i] * fp8block_value(w, ws, k, r0 + j * rstep, i);
            out[t * ldo + j] = acc;
        }
    }
}

/* ---- the BF16 dot-product path ---------------------------------------------------------------------- */

/* Lowest scale byte whose block values are all "zero or >= 2^-60": the smallest non-zero E4M3
 * value is 2^-9, times 2^(b-127) >= 2^-60 for b >= 76; the highest keeps 448 * 2^(b-127) far
 * from the fp32 range. */
#define BF16_MIN_SCALE 76
#define BF16_MAX_SCALE 240

bool mxm_pack_mxfp8_panel_bf16_ref(const uint8_t *w, const uint8_t *ws, int64_t k, int64_t r0,
                                   int64_t rstep, int nr, uint16_t *panel) {
    const int64_t kb = k / MXM_MX_BLOCK;
    for (int j = 0; j < nr; j++) {
        const int64_t r = r0 + j * rstep;
        for (int64_t i = 0; i < k; i++) {
            const uint8_t b = ws[r * kb + i / MXM_MX_BLOCK];
            if (b < BF16_MIN_SCALE || b > BF16_MAX_SCALE || (w[r * k + i] & 0x7F) == 0x7F) return false;
        }
    }
    for (int j = 0; j < 16; j++) {
        for (int64_t i = 0; i < k; i++) {
            uint16_t v = 0;
            if (j < nr) {
                const int64_t r = r0 + j * rstep;
                const float f = mxm_e4m3_decode(w[r * k + i]) * mxm_e8m0_decode(ws[r * kb + i / MXM_MX_BLOCK]);
                uint32_t u;
                memcpy(&u, &f, 4);
                v = (uint16_t)(u >> 16); /* exact: at most 4 significant bits */
            }
            panel[j * k + i] = v;
        }
    }
    return true;
}

void mxm_gemm_panel16_bf16_ref(const float *const *a, int mr, const uint16_t *panel, int64_t k, float *c,
                               int64_t ldc) {
    for (int m = 0; m < mr; m++) {
        for (int j = 0; j < 16; j++) {
            float acc = 0.0f;
            for (int64_t i = 0; i < k; i++) acc += a[m][i] * mxm_bf16_decode(panel[j * k + i]);
            c[m * ldc + j] = acc;
        }
    }
}

bool mxm_rows_bf16_ok(const float *const *x, int64_t n, int64_t k) {
    uint32_t bad = 0;
    for (int64_t t = 0; t < n; t++) {
        for (int64_t i = 0; i < k; i++) {
            uint32_t u;
            memcpy(&u, &x[t][i], 4);
            const uint32_t a = u & 0x7FFFFFFFu;
            /* low half set, or non-zero below 2^-60 (exponent field 67), or NaN */
            bad |= (u & 0xFFFFu) | (uint32_t)(a != 0 && a < (67u << 23)) | (uint32_t)(a > 0x7F800000u);
        }
        if (bad) return false;
    }
    return true;
}
