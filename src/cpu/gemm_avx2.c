/* AVX2+FMA expert-GEMM kernels (twins of gemm_ref.c).
 *
 * E4M3 -> fp32 in four instructions: sign-extend the byte to 32 bits, shift left by 20 and keep
 * the sign bit and the 7 magnitude bits (mask 0x87F00000). Read as fp32 that is exactly the E4M3
 * value times 2^-120 (E4M3 subnormals become fp32 subnormals, also exact), so one multiply by
 * 2^(b-7) = 2^120 * 2^(b-127) applies the block's E8M0 scale b and gives the exact value. Blocks
 * where that factor is not a normal fp32 (b > 134, the NaN scale 0xFF) or that hold NaN codes
 * (0x7F/0xFF) take the scalar path, so special values decode exactly as in the reference. */
#include <immintrin.h>

#include "cpu/cpu_kernels.h"
#include "formats/formats.h"

static inline __m256 dec8(const uint8_t *q, __m256 f) {
    __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q));
    v = _mm256_and_si256(_mm256_slli_epi32(v, 20), _mm256_set1_epi32((int)0x87F00000u));
    return _mm256_mul_ps(_mm256_castsi256_ps(v), f);
}

/* True when the 32-block at q with scale byte b decodes exactly through dec8 and 2^(b-7). */
static inline int block_fast(const uint8_t *q, uint8_t b) {
    if (b > 134) return 0;
    const __m256i v = _mm256_loadu_si256((const __m256i *)q);
    const __m256i m = _mm256_set1_epi8(0x7F);
    return _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_and_si256(v, m), m)) == 0;
}

static inline __m256 block_factor(uint8_t b) { return _mm256_castsi256_ps(_mm256_set1_epi32((int)((b + 120u) << 23))); }

static void decode_block_slow(const uint8_t *q, uint8_t b, float *out) {
    const float s = mxm_e8m0_decode(b);
    for (int i = 0; i < MXM_MX_BLOCK; i++) out[i] = mxm_e4m3_decode(q[i]) * s;
}

static void decode_row(const uint8_t *q, const uint8_t *s, int64_t k, float *out) {
    for (int64_t c = 0; c < k; c += MXM_MX_BLOCK) {
        const uint8_t b = s[c / MXM_MX_BLOCK];
        if (block_fast(q + c, b)) {
            const __m256 f = block_factor(b);
            for (int i = 0; i < MXM_MX_BLOCK; i += 8) _mm256_storeu_ps(out + c + i, dec8(q + c + i, f));
        } else {
            decode_block_slow(q + c, b, out + c);
        }
    }
}

static void pack_mxfp8_panel_avx2(const uint8_t *w, const uint8_t *ws, int64_t k, int64_t r0,
                                  int64_t rstep, int nr, float *panel) {
    const int64_t kb = k / MXM_MX_BLOCK;
    for (int j = 0; j < 16; j++) {
        float *dst = panel + j * k;
        if (j < nr) {
            const int64_t r = r0 + j * rstep;
            decode_row(w + r * k, ws + r * kb, k, dst);
        } else {
            for (int64_t i = 0; i < k; i += 8) _mm256_storeu_ps(dst + i, _mm256_setzero_ps());
        }
    }
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* MT tokens x 4 panel rows, dot-product form: 4*MT independent accumulators, horizontal sums
 * at the end. k is a multiple of 32. */
#define DEFINE_MICRO(MT)                                                                            \
    static void micro_##MT(const float *const *a, const float *p, int64_t k, float *c, int64_t ldc) { \
        __m256 acc[MT][4];                                                                          \
        for (int m = 0; m < MT; m++)                                                                \
            for (int j = 0; j < 4; j++) acc[m][j] = _mm256_setzero_ps();                            \
        for (int64_t i = 0; i < k; i += 8) {                                                        \
            const __m256 w0 = _mm256_loadu_ps(p + i), w1 = _mm256_loadu_ps(p + k + i);              \
            const __m256 w2 = _mm256_loadu_ps(p + 2 * k + i), w3 = _mm256_loadu_ps(p + 3 * k + i);  \
            for (int m = 0; m < MT; m++) {                                                          \
                const __m256 x = _mm256_loadu_ps(a[m] + i);                                         \
                acc[m][0] = _mm256_fmadd_ps(x, w0, acc[m][0]);                                      \
                acc[m][1] = _mm256_fmadd_ps(x, w1, acc[m][1]);                                      \
                acc[m][2] = _mm256_fmadd_ps(x, w2, acc[m][2]);                                      \
                acc[m][3] = _mm256_fmadd_ps(x, w3, acc[m][3]);                                      \
            }                                                                                       \
        }                                                                                           \
        for (int m = 0; m < MT; m++)                                                                \
            for (int j = 0; j < 4; j++) c[m * ldc + j] = hsum(acc[m][j]);                           \
    }
DEFINE_MICRO(1)
DEFINE_MICRO(2)
DEFINE_MICRO(3)

static void gemm_panel16_avx2(const float *const *a, int mr, const float *panel, int64_t k,
                              float *c, int64_t ldc) {
    for (int m0 = 0; m0 < mr; m0 += 3) {
        const int mt = mr - m0 < 3 ? mr - m0 : 3;
        for (int j = 0; j < 16; j += 4) {
            const float *p = panel + j * k;
            float *cc = c + m0 * ldc + j;
            if (mt == 3) micro_3(a + m0, p, k, cc, ldc);
            else if (mt == 2) micro_2(a + m0, p, k, cc, ldc);
            else micro_1(a + m0, p, k, cc, ldc);
        }
    }
}

/* The 32 values of one block as four vectors: decoded in registers, or through the scalar
 * path for the rare special blocks. */
static inline void load_block(const uint8_t *q, uint8_t b, __m256 *w0, __m256 *w1, __m256 *w2, __m256 *w3) {
    if (__builtin_expect(block_fast(q, b), 1)) {
        const __m256 f = block_factor(b);
        *w0 = dec8(q, f), *w1 = dec8(q + 8, f), *w2 = dec8(q + 16, f), *w3 = dec8(q + 24, f);
    } else {
        float tmp[MXM_MX_BLOCK];
        decode_block_slow(q, b, tmp);
        *w0 = _mm256_loadu_ps(tmp), *w1 = _mm256_loadu_ps(tmp + 8);
        *w2 = _mm256_loadu_ps(tmp + 16), *w3 = _mm256_loadu_ps(tmp + 24);
    }
}

/* NT tokens x NR rows straight from the FP8 codes: each weight byte is read and decoded once.
 * Per 32-block and row: four decoded vectors, then 4*NT FMAs with x (from L1). NT*NR + 4
 * vector registers live: nothing spills. */
#define DEFINE_GEMV(NT, NR)                                                                         \
    __attribute__((noinline)) static void gemv_##NT##_##NR(const uint8_t *const *w, const uint8_t *const *s, \
                                                           int64_t k, const float *const *x, float *out, int64_t ldo) { \
        __m256 acc[NT][NR];                                                                         \
        for (int t = 0; t < NT; t++)                                                                \
            for (int j = 0; j < NR; j++) acc[t][j] = _mm256_setzero_ps();                           \
        for (int64_t c = 0; c < k; c += MXM_MX_BLOCK) {                                             \
            for (int j = 0; j < NR; j++) {                                                          \
                __m256 w0, w1, w2, w3;                                                              \
                load_block(w[j] + c, s[j][c / MXM_MX_BLOCK], &w0, &w1, &w2, &w3);                   \
                for (int t = 0; t < NT; t++) {                                                      \
                    const float *xt = x[t] + c;                                                     \
                    acc[t][j] = _mm256_fmadd_ps(_mm256_loadu_ps(xt), w0, acc[t][j]);                \
                    acc[t][j] = _mm256_fmadd_ps(_mm256_loadu_ps(xt + 8), w1, acc[t][j]);            \
                    acc[t][j] = _mm256_fmadd_ps(_mm256_loadu_ps(xt + 16), w2, acc[t][j]);           \
                    acc[t][j] = _mm256_fmadd_ps(_mm256_loadu_ps(xt + 24), w3, acc[t][j]);           \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        for (int t = 0; t < NT; t++)                                                                \
            for (int j = 0; j < NR; j++) out[t * ldo + j] = hsum(acc[t][j]);                        \
    }
DEFINE_GEMV(1, 4)
DEFINE_GEMV(2, 4)
DEFINE_GEMV(3, 2)
DEFINE_GEMV(4, 2)
DEFINE_GEMV(1, 1)
DEFINE_GEMV(2, 1)
DEFINE_GEMV(3, 1)
DEFINE_GEMV(4, 1)

static void gemv_mxfp8_avx2(const uint8_t *w, const uint8_t *ws, int64_t k, int64_t r0, int64_t rstep,
                            int nr, const float *const *x, int nt, float *out, int64_t ldo) {
    const int64_t kb = k / MXM_MX_BLOCK;
    const uint8_t *wr[4], *sr[4];
    for (int j = 0; j < nr; j++) {
        wr[j] = w + (r0 + j * rstep) * k;
        sr[j] = ws + (r0 + j * rstep) * kb;
    }
    int j = 0;
    /* Four rows at a time for one or two tokens, two rows for three or four tokens (registers). */
    const int step = nt <= 2 ? 4 : 2;
    for (; j + step <= nr; j += step) {
        switch (nt) {
        case 1: gemv_1_4(wr + j, sr + j, k, x, out + j, ldo); break;
        case 2: gemv_2_4(wr + j, sr + j, k, x, out + j, ldo); break;
        case 3: gemv_3_2(wr + j, sr + j, k, x, out + j, ldo); break;
        default: gemv_4_2(wr + j, sr + j, k, x, out + j, ldo); break;
        }
    }
    for (; j < nr; j++) {
        switch (nt) {
        case 1: gemv_1_1(wr + j, sr + j, k, x, out + j, ldo); break;
        case 2: gemv_2_1(wr + j, sr + j, k, x, out + j, ldo); break;
        case 3: gemv_3_1(wr + j, sr + j, k, x, out + j, ldo); break;
        default: gemv_4_1(wr + j, sr + j, k, x, out + j, ldo); break;
        }
    }
}

void mxm_cpu_gemm_init_avx2(mxm_cpu_kernels *k) {
    k->pack_mxfp8_panel = pack_mxfp8_panel_avx2;
    k->gemm_panel16 = gemm_panel16_avx2;
    k->gemv_mxfp8 = gemv_mxfp8_avx2;
}
