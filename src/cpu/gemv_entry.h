/* The GEMV entry points of a CPU kernel set, shared by every SIMD set: they resolve the nr weight
 * rows r0, r0 + rstep, ... and their scale rows (MXFP8: one E8M0 byte per 32 weights; DeepSeek
 * FP8: one float per 128x128 block) and hand them to the set's own gemv_rows_mx / gemv_rows_fb,
 * which must be defined before MXM_DEFINE_GEMV_ENTRY_POINTS(suffix) is used. */
#ifndef MXM_CPU_GEMV_ENTRY_H
#define MXM_CPU_GEMV_ENTRY_H

#include <stdint.h>

#include "formats/formats.h"

/* The nr (<= 4) MXFP8 weight rows r0, r0 + rstep, ... of w [rows, k] and their scale rows. */
static inline void mxm_gemv_mx_rows(const void *wv, const void *sv, int64_t k, int64_t r0,
                                    int64_t rstep, int nr, const uint8_t **wr, const void **sr) {
    const uint8_t *w = wv, *ws = sv;
    const int64_t kb = k / MXM_MX_BLOCK;
    for (int j = 0; j < nr; j++) {
        wr[j] = w + (r0 + j * rstep) * k;
        sr[j] = ws + (r0 + j * rstep) * kb;
    }
}

/* The nr (<= 4) DeepSeek FP8 weight rows r0, r0 + rstep, ... of w [rows, k] and the rows of their
 * 128-row blocks in the f32 scale grid ws [ceil(rows/128), ceil(k/128)]. */
static inline void mxm_gemv_fb_rows(const void *wv, const void *sv, int64_t k, int64_t r0,
                                    int64_t rstep, int nr, const uint8_t **wr, const void **sr) {
    const uint8_t *w = wv;
    const float *ws = sv;
    const int64_t kb = (k + MXM_FP8_BLOCK - 1) / MXM_FP8_BLOCK;
    for (int j = 0; j < nr; j++) {
        const int64_t r = r0 + j * rstep;
        wr[j] = w + r * k;
        sr[j] = ws + (r / MXM_FP8_BLOCK) * kb;
    }
}

#define MXM_DEFINE_GEMV_ENTRY_POINTS(SUFFIX)                                                       \
    static void gemv_mxfp8_##SUFFIX(const void *wv, const void *sv, int64_t k, int64_t r0,         \
                                    int64_t rstep, int nr, const float *const *x, int nt,          \
                                    float *out, int64_t ldo) {                                     \
        const uint8_t *wr[4];                                                                      \
        const void *sr[4];                                                                         \
        mxm_gemv_mx_rows(wv, sv, k, r0, rstep, nr, wr, sr);                                        \
        gemv_rows_mx(wr, sr, nr, k, x, nt, out, ldo);                                              \
    }                                                                                              \
    static void gemv_fp8block_##SUFFIX(const void *wv, const void *sv, int64_t k, int64_t r0,      \
                                       int64_t rstep, int nr, const float *const *x, int nt,       \
                                       float *out, int64_t ldo) {                                  \
        const uint8_t *wr[4];                                                                      \
        const void *sr[4];                                                                         \
        mxm_gemv_fb_rows(wv, sv, k, r0, rstep, nr, wr, sr);                                        \
        gemv_rows_fb(wr, sr, nr, k, x, nt, out, ldo);                                              \
    }

/* The signature of a set's GEMV kernel gemv_FMT_<NT>_<NR>: NR weight rows w[j] (scale rows s[j])
 * of k codes, NT tokens x[t], out[t * ldo + j]. */
#define MXM_GEMV_KERNEL(FMT, NT, NR)                                                               \
    __attribute__((noinline)) static void gemv_##FMT##_##NT##_##NR(                                \
        const uint8_t *const *w, const void *const *s, int64_t k, const float *const *x,           \
        float *out, int64_t ldo)

/* Every 64 columns c: the same columns of the nr rows pf bytes further on (the next call's rows:
 * rows are short streams that the hardware prefetcher barely ramps up on). */
static inline __attribute__((always_inline)) void mxm_gemv_prefetch(const uint8_t *const *w, int nr,
                                                                    int64_t c, int64_t pf) {
    if ((c & 63) == 0)
        for (int j = 0; j < nr; j++)
            __builtin_prefetch(w[j] + c + pf, 0, 3);
}

/* A set's GEMV kernels of one format, one row per token count t = 1..4: the set's own macro D_t
 * defines gemv_FMT_<t>_<R_t>, which takes R_t (> 1) weight rows at a time (what the set's
 * registers hold for t tokens), and gemv_FMT_<t>_1 for the rows left over; then gemv_rows_FMT(wr,
 * sr, nr, k, x, nt, out, ldo) runs rows wr[0..nr) (scales sr) for nt tokens through them. Every
 * D_t must add the same products into a token's sums in the same order, so that a token's result
 * does not depend on how many tokens share the call (test_cpu_kernels checks it). */
#define MXM_DEFINE_GEMV_SET(FMT, SCALE_AT, D1, R1, D2, R2, D3, R3, D4, R4)                         \
    D1(FMT, SCALE_AT, 1, R1)                                                                       \
    D1(FMT, SCALE_AT, 1, 1)                                                                        \
    D2(FMT, SCALE_AT, 2, R2)                                                                       \
    D2(FMT, SCALE_AT, 2, 1)                                                                        \
    D3(FMT, SCALE_AT, 3, R3)                                                                       \
    D3(FMT, SCALE_AT, 3, 1)                                                                        \
    D4(FMT, SCALE_AT, 4, R4)                                                                       \
    D4(FMT, SCALE_AT, 4, 1)                                                                        \
    static void gemv_rows_##FMT(const uint8_t *const *wr, const void *const *sr, int nr,           \
                                int64_t k, const float *const *x, int nt, float *out,              \
                                int64_t ldo) {                                                     \
        typedef void (*kernel)(const uint8_t *const *, const void *const *, int64_t,               \
                               const float *const *, float *, int64_t);                            \
        static const kernel step[4] = {gemv_##FMT##_1_##R1, gemv_##FMT##_2_##R2,                   \
                                       gemv_##FMT##_3_##R3, gemv_##FMT##_4_##R4};                  \
        static const kernel one[4] = {gemv_##FMT##_1_1, gemv_##FMT##_2_1, gemv_##FMT##_3_1,        \
                                      gemv_##FMT##_4_1};                                           \
        static const int rows[4] = {R1, R2, R3, R4};                                               \
        const int t = nt - 1;                                                                      \
        int j = 0;                                                                                 \
        for (; j + rows[t] <= nr; j += rows[t])                                                    \
            step[t](wr + j, sr + j, k, x, out + j, ldo);                                           \
        for (; j < nr; j++)                                                                        \
            one[t](wr + j, sr + j, k, x, out + j, ldo);                                            \
    }

/* mxm_cpu_gemm_init_SUFFIX: the set's panel GEMM and its MXFP8 and DeepSeek FP8 rows (panel
 * packing and GEMV), which the file defines as pack_mxfp8_panel_SUFFIX, ... */
#define MXM_DEFINE_GEMM_INIT(SUFFIX)                                                               \
    void mxm_cpu_gemm_init_##SUFFIX(mxm_cpu_kernels *k) {                                          \
        k->gemm_panel16 = gemm_panel16_##SUFFIX;                                                   \
        k->wfmt[MXM_WFMT_MXFP8].pack_panel = pack_mxfp8_panel_##SUFFIX;                            \
        k->wfmt[MXM_WFMT_MXFP8].gemv = gemv_mxfp8_##SUFFIX;                                        \
        k->wfmt[MXM_WFMT_FP8_BLOCK].pack_panel = pack_fp8block_panel_##SUFFIX;                     \
        k->wfmt[MXM_WFMT_FP8_BLOCK].gemv = gemv_fp8block_##SUFFIX;                                 \
    }

#endif
