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

/* gemv_rows_FMT: rows wr[0..nr) (scales sr) for nt (1..4) tokens, 4 rows at a time for 1-2 tokens
 * and R34 rows at a time for 3-4 (the set's register budget), then one at a time. It calls the
 * set's gemv_FMT_<nt>_<rows> kernels, which must be defined before it. */
#define MXM_DEFINE_GEMV_ROWS(FMT, R34)                                                             \
    static void gemv_rows_##FMT(const uint8_t *const *wr, const void *const *sr, int nr,           \
                                int64_t k, const float *const *x, int nt, float *out,              \
                                int64_t ldo) {                                                     \
        int j = 0;                                                                                 \
        const int step = nt <= 2 ? 4 : R34;                                                        \
        for (; j + step <= nr; j += step) {                                                        \
            switch (nt) {                                                                          \
            case 1:                                                                                \
                gemv_##FMT##_1_4(wr + j, sr + j, k, x, out + j, ldo);                              \
                break;                                                                             \
            case 2:                                                                                \
                gemv_##FMT##_2_4(wr + j, sr + j, k, x, out + j, ldo);                              \
                break;                                                                             \
            case 3:                                                                                \
                gemv_##FMT##_3_##R34(wr + j, sr + j, k, x, out + j, ldo);                          \
                break;                                                                             \
            default:                                                                               \
                gemv_##FMT##_4_##R34(wr + j, sr + j, k, x, out + j, ldo);                          \
                break;                                                                             \
            }                                                                                      \
        }                                                                                          \
        for (; j < nr; j++) {                                                                      \
            switch (nt) {                                                                          \
            case 1:                                                                                \
                gemv_##FMT##_1_1(wr + j, sr + j, k, x, out + j, ldo);                              \
                break;                                                                             \
            case 2:                                                                                \
                gemv_##FMT##_2_1(wr + j, sr + j, k, x, out + j, ldo);                              \
                break;                                                                             \
            case 3:                                                                                \
                gemv_##FMT##_3_1(wr + j, sr + j, k, x, out + j, ldo);                              \
                break;                                                                             \
            default:                                                                               \
                gemv_##FMT##_4_1(wr + j, sr + j, k, x, out + j, ldo);                              \
                break;                                                                             \
            }                                                                                      \
        }                                                                                          \
    }

/* A set's GEMV kernels of one format: gemv_FMT_<tokens>_<rows> for 1-4 tokens by 4 rows (1-2
 * tokens) or R34 rows (3-4 tokens) and by 1 row, through the set's own DEFINE12(FMT, SCALE_AT, NT,
 * NR) for 1-2 tokens and DEFINE34 for 3-4 (a set whose registers hold both the same way passes
 * one macro twice), then gemv_rows_FMT over them. */
#define MXM_DEFINE_GEMV_SET(DEFINE12, DEFINE34, FMT, SCALE_AT, R34)                                \
    DEFINE12(FMT, SCALE_AT, 1, 4)                                                                  \
    DEFINE12(FMT, SCALE_AT, 2, 4)                                                                  \
    DEFINE34(FMT, SCALE_AT, 3, R34)                                                                \
    DEFINE34(FMT, SCALE_AT, 4, R34)                                                                \
    DEFINE12(FMT, SCALE_AT, 1, 1)                                                                  \
    DEFINE12(FMT, SCALE_AT, 2, 1)                                                                  \
    DEFINE34(FMT, SCALE_AT, 3, 1)                                                                  \
    DEFINE34(FMT, SCALE_AT, 4, 1)                                                                  \
    MXM_DEFINE_GEMV_ROWS(FMT, R34)

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
