/* Scalar reference expert-GEMM kernels: every weight format's row of the reference set. The
 * optimized twins (gemm_avx2.c, gemm_avx512.c) must agree with these up to fp32 summation order. */
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
