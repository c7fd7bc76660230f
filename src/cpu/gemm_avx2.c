/* AVX2+FMA expert-GEMM kernels (twins of gemm_ref.c), for MXFP8 and DeepSeek FP8 weights.
 *
 * E4M3 -> fp32 in four instructions: sign-extend the byte to 32 bits, shift left by 20 and keep
 * the sign bit and the 7 magnitude bits (mask 0x87F00000). Read as fp32 that is exactly the E4M3
 * value times 2^-120 (E4M3 subnormals become fp32 subnormals, also exact), so one multiply by
 * scale * 2^120 applies the block's scale: for MXFP8 2^(b-7) (exact value), for DeepSeek FP8 the
 * f32 block scale times 2^120 (the same single rounding as e4m3 * scale in the reference). Blocks
 * where that factor is not a normal fp32 (MXFP8 b > 134 or the NaN byte; FP8 |s| >= 2^8 or NaN)
 * or that hold NaN codes (0x7F/0xFF) take the scalar path, so special values decode exactly as
 * in the reference.
 *
 * Cost on Intel cores: an E4M3 subnormal code (magnitude 1..7) becomes an fp32 subnormal, and a
 * multiply with a subnormal input takes a microcode assist there (about 35x a normal vmulps on
 * the Xeon this was measured on); ModelOpt-style MXFP8 weights have such a code in about 0.3% of
 * their blocks. gemm_avx512.c decodes through fp16 instead (no assist); here that route measured
 * 5-7% slower on blocks without subnormal codes (and slower on Zen 3 earlier), so AVX2, the
 * fallback for CPUs without AVX-512, keeps this decode. */
#include <immintrin.h>

#include "cpu/cpu_kernels.h"
#include "cpu/gemv_entry.h"
#include "formats/formats.h"

static inline __m256 dec8(const uint8_t *q, __m256 f) {
    __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q));
    v = _mm256_and_si256(_mm256_slli_epi32(v, 20), _mm256_set1_epi32((int)0x87F00000u));
    return _mm256_mul_ps(_mm256_castsi256_ps(v), f);
}

/* The NaN codes (0x7F / 0xFF) of the 32-block at q: 0xFF bytes where they are. */
static inline __m256i nan_codes(const uint8_t *q) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)q);
    const __m256i m = _mm256_set1_epi8(0x7F);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, m), m);
}

/* True when no code of the 32-block at q is a NaN code. */
static inline int codes_ok(const uint8_t *q) {
    return _mm256_movemask_epi8(nan_codes(q)) == 0;
}

/* A 32-block's scale factor: `fast` when f = scale * 2^120 is a normal fp32, so that dec8(q, f)
 * is exactly e4m3(q) * scale rounded once (the exact product is the same real number). The scale
 * itself, which only the scalar path needs, comes from the format's *_value function, called on
 * that path alone: computed with the factor, its special cases cost the fast path a few branches
 * and instructions per block and row (docs/BENCHMARKS.md, session 28). */
typedef struct blk_scale {
    int fast;
    __m256 f;
} blk_scale;

/* MXFP8: E8M0 byte b, 2^(b-127); fast for b <= 134 (not the NaN byte). */
static inline __attribute__((always_inline)) blk_scale scale_mx(const void *s, int64_t c) {
    const uint8_t b = ((const uint8_t *)s)[c / MXM_MX_BLOCK];
    return (blk_scale){b <= 134, _mm256_castsi256_ps(_mm256_set1_epi32((int)((b + 120u) << 23)))};
}
static inline __attribute__((always_inline)) float scale_mx_value(const void *s, int64_t c) {
    return mxm_e8m0_decode(((const uint8_t *)s)[c / MXM_MX_BLOCK]);
}

/* DeepSeek FP8: the f32 scale of the 128-block holding column c; fast for |s| < 2^8 (not NaN). */
static inline __attribute__((always_inline)) blk_scale scale_fp8block(const void *s, int64_t c) {
    const float v = ((const float *)s)[c / MXM_FP8_BLOCK];
    return (blk_scale){fabsf(v) < 256.0f, _mm256_set1_ps(v * 0x1p120f)};
}
static inline __attribute__((always_inline)) float scale_fp8block_value(const void *s, int64_t c) {
    return ((const float *)s)[c / MXM_FP8_BLOCK];
}

typedef blk_scale (*scale_at_fn)(const void *s, int64_t c);
typedef float (*scale_value_fn)(const void *s, int64_t c);

/* The scalar path (blocks with a NaN code or a scale outside the fast range: rare), out of line. */
__attribute__((noinline, cold)) static void decode_block_slow(const uint8_t *q, float s,
                                                              float *out) {
    for (int i = 0; i < MXM_MX_BLOCK; i++) out[i] = mxm_e4m3_decode(q[i]) * s;
}

/* One weight row of k codes (scales of the row: s, read through scale_at / scale_value) -> fp32. */
static inline __attribute__((always_inline)) void decode_row(const uint8_t *q, const void *s,
                                                             int64_t k, float *out,
                                                             scale_at_fn scale_at,
                                                             scale_value_fn scale_value) {
    for (int64_t c = 0; c < k; c += MXM_MX_BLOCK) {
        const blk_scale b = scale_at(s, c);
        if (b.fast && codes_ok(q + c)) {
            for (int i = 0; i < MXM_MX_BLOCK; i += 8) _mm256_storeu_ps(out + c + i, dec8(q + c + i, b.f));
        } else {
            decode_block_slow(q + c, scale_value(s, c), out + c);
        }
    }
}

static void zero_row(float *dst, int64_t k) {
    for (int64_t i = 0; i < k; i += 8) _mm256_storeu_ps(dst + i, _mm256_setzero_ps());
}

static void pack_mxfp8_panel_avx2(const void *wv, const void *sv, int64_t k, int64_t r0,
                                  int64_t rstep, int nr, float *panel) {
    const uint8_t *w = wv, *ws = sv;
    const int64_t kb = k / MXM_MX_BLOCK;
    for (int j = 0; j < 16; j++) {
        const int64_t r = r0 + j * rstep;
        if (j < nr)
            decode_row(w + r * k, ws + r * kb, k, panel + j * k, scale_mx, scale_mx_value);
        else zero_row(panel + j * k, k);
    }
}

static void pack_fp8block_panel_avx2(const void *wv, const void *sv, int64_t k, int64_t r0,
                                     int64_t rstep, int nr, float *panel) {
    const uint8_t *w = wv;
    const float *ws = sv;
    const int64_t kb = (k + MXM_FP8_BLOCK - 1) / MXM_FP8_BLOCK;
    for (int j = 0; j < 16; j++) {
        const int64_t r = r0 + j * rstep;
        if (j < nr)
            decode_row(w + r * k, ws + (r / MXM_FP8_BLOCK) * kb, k, panel + j * k, scale_fp8block,
                       scale_fp8block_value);
        else zero_row(panel + j * k, k);
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
static inline __attribute__((always_inline)) void load_block(const uint8_t *q, const void *s,
                                                             int64_t c, scale_at_fn scale_at,
                                                             scale_value_fn scale_value, __m256 *w0,
                                                             __m256 *w1, __m256 *w2, __m256 *w3) {
    const blk_scale b = scale_at(s, c);
    if (__builtin_expect(b.fast && codes_ok(q), 1)) {
        *w0 = dec8(q, b.f), *w1 = dec8(q + 8, b.f), *w2 = dec8(q + 16, b.f), *w3 = dec8(q + 24, b.f);
    } else {
        float tmp[MXM_MX_BLOCK];
        decode_block_slow(q, scale_value(s, c), tmp);
        *w0 = _mm256_loadu_ps(tmp), *w1 = _mm256_loadu_ps(tmp + 8);
        *w2 = _mm256_loadu_ps(tmp + 16), *w3 = _mm256_loadu_ps(tmp + 24);
    }
}

/* NT tokens x NR rows straight from the FP8 codes: each weight byte is read and decoded once.
 * Per 32-block: one test for all NR rows (scales in the fast range, no NaN code), then per row
 * four decoded vectors and 4*NT FMAs with x (from L1); a block that fails the test takes
 * load_block row by row. The one-token kernels (4 rows per step); FMT: mx (E8M0 per 32) or fb
 * (f32 per 128x128). GEMV_FMAS: row j's block into its NT accumulators (the kernel's x, c, acc). */
#define GEMV_FMAS(NT, j, w0, w1, w2, w3)                                                           \
    for (int t = 0; t < NT; t++) {                                                                 \
        const float *xt = x[t] + c;                                                                \
        __asm__("" : "+r"(xt)); /* x from L1 for every row: no x vector kept */                    \
        acc[t][j] = _mm256_fmadd_ps(_mm256_loadu_ps(xt), w0, acc[t][j]);                           \
        acc[t][j] = _mm256_fmadd_ps(_mm256_loadu_ps(xt + 8), w1, acc[t][j]);                       \
        acc[t][j] = _mm256_fmadd_ps(_mm256_loadu_ps(xt + 16), w2, acc[t][j]);                      \
        acc[t][j] = _mm256_fmadd_ps(_mm256_loadu_ps(xt + 24), w3, acc[t][j]);                      \
    }
#define DEFINE_GEMV(FMT, SCALE_AT, NT, NR)                                                         \
    MXM_GEMV_KERNEL(FMT, NT, NR) {                                                                 \
        __m256 acc[NT][NR];                                                                        \
        for (int t = 0; t < NT; t++)                                                               \
            for (int j = 0; j < NR; j++)                                                           \
                acc[t][j] = _mm256_setzero_ps();                                                   \
        const int64_t pf = NR > 1 ? (w[1] - w[0]) * NR : k;                                        \
        for (int64_t c = 0; c < k; c += MXM_MX_BLOCK) {                                            \
            mxm_gemv_prefetch(w, NR, c, pf);                                                       \
            int fast = 1;                                                                          \
            __m256i nan = _mm256_setzero_si256();                                                  \
            _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) {                                 \
                fast &= SCALE_AT(s[j], c).fast;                                                    \
                nan = _mm256_or_si256(nan, nan_codes(w[j] + c));                                   \
            }                                                                                      \
            if (__builtin_expect(fast && !_mm256_movemask_epi8(nan), 1)) {                         \
                _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) {                             \
                    const uint8_t *q = w[j] + c;                                                   \
                    const __m256 f = SCALE_AT(s[j], c).f;                                          \
                    const __m256 w0 = dec8(q, f), w1 = dec8(q + 8, f);                             \
                    const __m256 w2 = dec8(q + 16, f), w3 = dec8(q + 24, f);                       \
                    GEMV_FMAS(NT, j, w0, w1, w2, w3)                                               \
                }                                                                                  \
            } else {                                                                               \
                for (int j = 0; j < NR; j++) {                                                     \
                    __m256 w0, w1, w2, w3;                                                         \
                    load_block(w[j] + c, s[j], c, SCALE_AT, SCALE_AT##_value, &w0, &w1, &w2, &w3); \
                    GEMV_FMAS(NT, j, w0, w1, w2, w3)                                               \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        for (int t = 0; t < NT; t++)                                                               \
            for (int j = 0; j < NR; j++)                                                           \
                out[t * ldo + j] = hsum(acc[t][j]);                                                \
    }

/* The 2-4 token kernels (2 rows per step): the same FMAs into each accumulator in the same order
 * as DEFINE_GEMV (so a token's sums do not depend on how many tokens share the call), but one
 * decoded vector at a time and x reloaded from L1 for every row. DEFINE_GEMV's form keeps x and
 * four decoded vectors live, which with 8 accumulators is more than AVX2's 16 vector registers:
 * GCC kept the accumulators on the stack (a store and a reload per block and row). bench_gemv's
 * weights, one thread, alternating with the previous build (docs/BENCHMARKS.md): 1.15-1.26x at
 * 3-4 tokens and 1.0-1.06x at 2 tokens (which took 4 rows per step in DEFINE_GEMV's form), in L2
 * and from memory; at one token DEFINE_GEMV's form keeps everything in registers and is 7%
 * faster than this one. */
#define DEFINE_GEMV_ROWX(FMT, SCALE_AT, NT, NR)                                                    \
    MXM_GEMV_KERNEL(FMT, NT, NR) {                                                                 \
        __m256 acc[NT][NR];                                                                        \
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++)                                       \
            _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) acc[t][j] = _mm256_setzero_ps();  \
        const int64_t pf = NR > 1 ? (w[1] - w[0]) * NR : k;                                        \
        for (int64_t c = 0; c < k; c += MXM_MX_BLOCK) {                                            \
            mxm_gemv_prefetch(w, NR, c, pf);                                                       \
            _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) {                                 \
                const uint8_t *q = w[j] + c;                                                       \
                const blk_scale b = SCALE_AT(s[j], c);                                             \
                if (__builtin_expect(b.fast && codes_ok(q), 1)) {                                  \
                    const float *xb[NT];                                                           \
                    _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) {                         \
                        xb[t] = x[t] + c;                                                          \
                        __asm__("" : "+r"(xb[t])); /* no x vector kept across rows */              \
                    }                                                                              \
                    _Pragma("GCC unroll 4") for (int i = 0; i < MXM_MX_BLOCK; i += 8) {            \
                        const __m256 wv = dec8(q + i, b.f);                                        \
                        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) acc[t][j] =           \
                            _mm256_fmadd_ps(_mm256_loadu_ps(xb[t] + i), wv, acc[t][j]);            \
                    }                                                                              \
                } else {                                                                           \
                    float tmp[MXM_MX_BLOCK];                                                       \
                    decode_block_slow(q, SCALE_AT##_value(s[j], c), tmp);                          \
                    _Pragma("GCC unroll 4") for (int i = 0; i < MXM_MX_BLOCK; i += 8)              \
                        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) acc[t][j] =           \
                            _mm256_fmadd_ps(_mm256_loadu_ps(x[t] + c + i),                         \
                                            _mm256_loadu_ps(tmp + i), acc[t][j]);                  \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++)                                       \
            _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) out[t * ldo + j] =                \
                hsum(acc[t][j]);                                                                   \
    }
/* Rows per call step: 4 at one token, 2 at 2-4 tokens (DEFINE_GEMV_ROWX). */
MXM_DEFINE_GEMV_SET(mx, scale_mx, DEFINE_GEMV, 4, DEFINE_GEMV_ROWX, 2, DEFINE_GEMV_ROWX, 2,
                    DEFINE_GEMV_ROWX, 2)
MXM_DEFINE_GEMV_SET(fb, scale_fp8block, DEFINE_GEMV, 4, DEFINE_GEMV_ROWX, 2, DEFINE_GEMV_ROWX, 2,
                    DEFINE_GEMV_ROWX, 2)

MXM_DEFINE_GEMV_ENTRY_POINTS(avx2)

MXM_DEFINE_GEMM_INIT(avx2)

/* The avx2 set of cpu_isa.def. */
void mxm_cpu_init_avx2(mxm_cpu_kernels *k) {
    mxm_cpu_quant_init_avx2(k);
    mxm_cpu_gemm_init_avx2(k);
}
