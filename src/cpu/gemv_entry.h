/* The GEMV entry points of a CPU kernel set, shared by every SIMD set: they resolve the nr weight
 * rows r0, r0 + rstep, ... and their scale rows (MXFP8: one E8M0 byte per 32 weights; DeepSeek
 * FP8: one float per 128x128 block) and hand them to the set's own gemv_rows_mx / gemv_rows_fb,
 * which must be defined before MXM_DEFINE_GEMV_ENTRY_POINTS(suffix) is used. */
#ifndef MXM_CPU_GEMV_ENTRY_H
#define MXM_CPU_GEMV_ENTRY_H

#define MXM_DEFINE_GEMV_ENTRY_POINTS(SUFFIX)                                                       \
    static void gemv_mxfp8_##SUFFIX(const uint8_t *w, const uint8_t *ws, int64_t k, int64_t r0,    \
                                    int64_t rstep, int nr, const float *const *x, int nt,          \
                                    float *out, int64_t ldo) {                                     \
        const int64_t kb = k / MXM_MX_BLOCK;                                                       \
        const uint8_t *wr[4];                                                                      \
        const void *sr[4];                                                                         \
        for (int j = 0; j < nr; j++) {                                                             \
            wr[j] = w + (r0 + j * rstep) * k;                                                      \
            sr[j] = ws + (r0 + j * rstep) * kb;                                                    \
        }                                                                                          \
        gemv_rows_mx(wr, sr, nr, k, x, nt, out, ldo);                                              \
    }                                                                                              \
    static void gemv_fp8block_##SUFFIX(const uint8_t *w, const float *ws, int64_t k, int64_t r0,   \
                                       int64_t rstep, int nr, const float *const *x, int nt,       \
                                       float *out, int64_t ldo) {                                  \
        const int64_t kb = (k + MXM_FP8_BLOCK - 1) / MXM_FP8_BLOCK;                                \
        const uint8_t *wr[4];                                                                      \
        const void *sr[4];                                                                         \
        for (int j = 0; j < nr; j++) {                                                             \
            const int64_t r = r0 + j * rstep;                                                      \
            wr[j] = w + r * k;                                                                     \
            sr[j] = ws + (r / MXM_FP8_BLOCK) * kb;                                                 \
        }                                                                                          \
        gemv_rows_fb(wr, sr, nr, k, x, nt, out, ldo);                                              \
    }

#endif
