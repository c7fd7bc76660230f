/* AVX-512 (F + BW + VL) expert-GEMM kernels (twins of gemm_ref.c), for MXFP8 and DeepSeek FP8
 * weights: the avx512 set of cpu_isa.def, over the avx2 set.
 *
 * E4M3 -> fp32 through fp16, exactly, for 32 codes at a time: sign-extend the bytes to 16 bits
 * (vpmovsxbw from memory), shift left by 7 and clear bit 14 (mask 0xBF80). That is the fp16
 * pattern of the E4M3 value times 2^-8 (sign, the 4 exponent bits under fp16's bias 15, the 3
 * mantissa bits on top of fp16's 10; E4M3 subnormals become fp16 subnormals), and vcvtph2ps
 * widens it exactly. One multiply by the block's scale times 2^8 then gives e4m3 * scale rounded
 * once, as the reference does (both factors are exact, so the product is the same real number).
 * Why not gemm_avx2.c's shift into the fp32 exponent field: that makes an E4M3 subnormal code an
 * fp32 subnormal before the multiply, and a multiply with a subnormal input takes a microcode
 * assist on Intel cores (measured on this branch's Xeon: 35x the time of a normal vmulps; a
 * weight row with subnormal codes in every block decoded 10x slower); the fp16 widening has no
 * such assist. Blocks whose factor is not finite (MXFP8 byte > 246 or the NaN byte; FP8 scale
 * |s| >= 2^120 or NaN) or that hold NaN codes (0x7F/0xFF, one byte compare into a mask register)
 * take the scalar path, so special values decode exactly as in the reference. Panels are
 * bit-identical to the reference's; dot products equal it up to fp32 summation order (16 lanes
 * per accumulator, then a tree sum of the lanes). */
#include <immintrin.h>

#include "cpu/avx512_util.h"
#include "cpu/cpu_kernels.h"
#include "cpu/gemv_entry.h"
#include "formats/formats.h"

/* The 32 codes at q times the factor f (scale * 2^8) -> two vectors of 16 values. */
MXM_AINLINE void dec32(const uint8_t *q, __m512 f, __m512 *w0, __m512 *w1) {
    __m512i h = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)q));
    h = _mm512_and_si512(_mm512_slli_epi16(h, 7), _mm512_set1_epi16((short)0xBF80));
    *w0 = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(h)), f);
    *w1 = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)), f);
}

/* True when no code of the 32-block at q is a NaN code (0x7F / 0xFF). */
MXM_AINLINE int codes_ok(const uint8_t *q) {
    const __m256i m = _mm256_set1_epi8(0x7F);
    return _mm256_cmpeq_epi8_mask(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)q), m), m) == 0;
}

/* A 32-block's scale factor (fast: f finite, see above); the scale itself, which only the scalar
 * path needs, from the format's *_value function on that path alone (as gemm_avx2.c: computed
 * with the factor, mxm_e8m0_decode's special cases cost the fast path per block and row). */
typedef struct blk_scale {
    int fast;
    __m512 f;
} blk_scale;

/* MXFP8: E8M0 byte b, 2^(b-127); f = 2^(b-119), fast for b <= 246 (not the NaN byte). */
MXM_AINLINE blk_scale scale_mx(const void *s, int64_t c) {
    const uint8_t b = ((const uint8_t *)s)[c / MXM_MX_BLOCK];
    return (blk_scale){b <= 246, _mm512_castsi512_ps(_mm512_set1_epi32((int)((b + 8u) << 23)))};
}
MXM_AINLINE float scale_mx_value(const void *s, int64_t c) {
    return mxm_e8m0_decode(((const uint8_t *)s)[c / MXM_MX_BLOCK]);
}

/* DeepSeek FP8: the f32 scale of the 128-block holding column c; f = s * 2^8 (exact), fast for
 * |s| < 2^120 (not NaN). */
MXM_AINLINE blk_scale scale_fp8block(const void *s, int64_t c) {
    const float v = ((const float *)s)[c / MXM_FP8_BLOCK];
    return (blk_scale){fabsf(v) < 0x1p120f, _mm512_set1_ps(v * 256.0f)};
}
MXM_AINLINE float scale_fp8block_value(const void *s, int64_t c) {
    return ((const float *)s)[c / MXM_FP8_BLOCK];
}

typedef blk_scale (*scale_at_fn)(const void *s, int64_t c);
typedef float (*scale_value_fn)(const void *s, int64_t c);

/* The scalar path (blocks with a NaN code or a scale outside the fast range: rare), out of line. */
__attribute__((noinline, cold)) static void decode_block_slow(const uint8_t *q, float s,
                                                              float *out) {
    for (int i = 0; i < MXM_MX_BLOCK; i++) out[i] = mxm_e4m3_decode(q[i]) * s;
}

/* The 32 values of row block (s, c) at q as two vectors: decoded in registers, or through the
 * scalar path for the rare special blocks. */
MXM_AINLINE void load_block(const uint8_t *q, const void *s, int64_t c, scale_at_fn scale_at,
                            scale_value_fn scale_value, __m512 *w0, __m512 *w1) {
    const blk_scale b = scale_at(s, c);
    if (__builtin_expect(b.fast && codes_ok(q), 1)) {
        dec32(q, b.f, w0, w1);
    } else {
        float tmp[MXM_MX_BLOCK];
        decode_block_slow(q, scale_value(s, c), tmp);
        *w0 = _mm512_loadu_ps(tmp), *w1 = _mm512_loadu_ps(tmp + 16);
    }
}

/* One weight row of k codes -> fp32; prefetches the row pf bytes further on (the panel's rows
 * are short streams). */
MXM_AINLINE void decode_row(const uint8_t *q, const void *s, int64_t k, float *out,
                            scale_at_fn scale_at, scale_value_fn scale_value, int64_t pf) {
    for (int64_t c = 0; c < k; c += MXM_MX_BLOCK) {
        if ((c & 63) == 0) _mm_prefetch((const char *)(q + c + pf), _MM_HINT_T0);
        __m512 w0, w1;
        load_block(q + c, s, c, scale_at, scale_value, &w0, &w1);
        _mm512_storeu_ps(out + c, w0);
        _mm512_storeu_ps(out + c + 16, w1);
    }
}

static void zero_row(float *dst, int64_t k) {
    for (int64_t i = 0; i < k; i += 16) _mm512_storeu_ps(dst + i, _mm512_setzero_ps());
}

static void pack_mxfp8_panel_avx512(const void *wv, const void *sv, int64_t k, int64_t r0,
                                    int64_t rstep, int nr, float *panel) {
    const uint8_t *w = wv, *ws = sv;
    const int64_t kb = k / MXM_MX_BLOCK;
    for (int j = 0; j < 16; j++) {
        const int64_t r = r0 + j * rstep;
        if (j < nr)
            decode_row(w + r * k, ws + r * kb, k, panel + j * k, scale_mx, scale_mx_value,
                       2 * rstep * k);
        else zero_row(panel + j * k, k);
    }
}

static void pack_fp8block_panel_avx512(const void *wv, const void *sv, int64_t k, int64_t r0,
                                       int64_t rstep, int nr, float *panel) {
    const uint8_t *w = wv;
    const float *ws = sv;
    const int64_t kb = (k + MXM_FP8_BLOCK - 1) / MXM_FP8_BLOCK;
    for (int j = 0; j < 16; j++) {
        const int64_t r = r0 + j * rstep;
        if (j < nr)
            decode_row(w + r * k, ws + (r / MXM_FP8_BLOCK) * kb, k, panel + j * k, scale_fp8block,
                       scale_fp8block_value, 2 * rstep * k);
        else zero_row(panel + j * k, k);
    }
}

/* MT tokens x 4 panel rows, dot-product form: 4*MT independent 16-lane accumulators (24 of the
 * 32 registers for MT = 6), one tree sum each at the end. k is a multiple of 32. */
#define DEFINE_MICRO(MT)                                                                            \
    static void micro_##MT(const float *const *a, const float *p, int64_t k, float *c, int64_t ldc) { \
        __m512 acc[MT][4];                                                                          \
        for (int m = 0; m < MT; m++)                                                                \
            for (int j = 0; j < 4; j++) acc[m][j] = _mm512_setzero_ps();                            \
        for (int64_t i = 0; i < k; i += 16) {                                                       \
            const __m512 w0 = _mm512_loadu_ps(p + i), w1 = _mm512_loadu_ps(p + k + i);              \
            const __m512 w2 = _mm512_loadu_ps(p + 2 * k + i), w3 = _mm512_loadu_ps(p + 3 * k + i);  \
            for (int m = 0; m < MT; m++) {                                                          \
                const __m512 x = _mm512_loadu_ps(a[m] + i);                                         \
                acc[m][0] = _mm512_fmadd_ps(x, w0, acc[m][0]);                                      \
                acc[m][1] = _mm512_fmadd_ps(x, w1, acc[m][1]);                                      \
                acc[m][2] = _mm512_fmadd_ps(x, w2, acc[m][2]);                                      \
                acc[m][3] = _mm512_fmadd_ps(x, w3, acc[m][3]);                                      \
            }                                                                                       \
        }                                                                                           \
        for (int m = 0; m < MT; m++)                                                                \
            _mm_storeu_ps(c + m * ldc, reduce4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]));         \
    }
DEFINE_MICRO(1)
DEFINE_MICRO(2)
DEFINE_MICRO(3)
DEFINE_MICRO(4)
DEFINE_MICRO(5)
DEFINE_MICRO(6)

static void gemm_panel16_avx512(const float *const *a, int mr, const float *panel, int64_t k,
                                float *c, int64_t ldc) {
    for (int m0 = 0; m0 < mr; m0 += 6) {
        const int mt = mr - m0 < 6 ? mr - m0 : 6;
        for (int j = 0; j < 16; j += 4) {
            const float *p = panel + j * k;
            float *cc = c + m0 * ldc + j;
            switch (mt) {
            case 6: micro_6(a + m0, p, k, cc, ldc); break;
            case 5: micro_5(a + m0, p, k, cc, ldc); break;
            case 4: micro_4(a + m0, p, k, cc, ldc); break;
            case 3: micro_3(a + m0, p, k, cc, ldc); break;
            case 2: micro_2(a + m0, p, k, cc, ldc); break;
            default: micro_1(a + m0, p, k, cc, ldc); break;
            }
        }
    }
}

/* NT tokens x NR rows straight from the FP8 codes: each weight byte is read and decoded once.
 * Per 32-block and row: two decoded vectors, then 2*NT FMAs with x (from L1). */
#define DEFINE_GEMV(FMT, SCALE_AT, NT, NR)                                                         \
    MXM_GEMV_KERNEL(FMT, NT, NR) {                                                                 \
        __m512 acc[NT][NR];                                                                        \
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++)                                       \
            _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) acc[t][j] = _mm512_setzero_ps();  \
        const int64_t pf = NR > 1 ? (w[1] - w[0]) * NR : k;                                        \
        for (int64_t c = 0; c < k; c += MXM_MX_BLOCK) {                                            \
            mxm_gemv_prefetch(w, NR, c, pf);                                                       \
            _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) {                                 \
                __m512 w0, w1;                                                                     \
                load_block(w[j] + c, s[j], c, SCALE_AT, SCALE_AT##_value, &w0, &w1);               \
                _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) {                             \
                    acc[t][j] = _mm512_fmadd_ps(_mm512_loadu_ps(x[t] + c), w0, acc[t][j]);         \
                    acc[t][j] = _mm512_fmadd_ps(_mm512_loadu_ps(x[t] + c + 16), w1, acc[t][j]);    \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) {                                     \
            if (NR == 4) {                                                                         \
                _mm_storeu_ps(out + t * ldo,                                                       \
                              reduce4(acc[t][0], acc[t][1 % NR], acc[t][2 % NR], acc[t][3 % NR])); \
            } else {                                                                               \
                _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) out[t * ldo + j] =            \
                    _mm512_reduce_add_ps(acc[t][j]);                                               \
            }                                                                                      \
        }                                                                                          \
    }
MXM_DEFINE_GEMV_SET(mx, scale_mx, DEFINE_GEMV, 4, DEFINE_GEMV, 4, DEFINE_GEMV, 4, DEFINE_GEMV, 4)
MXM_DEFINE_GEMV_SET(fb, scale_fp8block, DEFINE_GEMV, 4, DEFINE_GEMV, 4, DEFINE_GEMV, 4, DEFINE_GEMV,
                    4)

MXM_DEFINE_GEMV_ENTRY_POINTS(avx512)

MXM_DEFINE_GEMM_INIT(avx512)

/* The avx512 set of cpu_isa.def (on top of the avx2 set). */
void mxm_cpu_init_avx512(mxm_cpu_kernels *k) {
    mxm_cpu_quant_init_avx512(k);
    mxm_cpu_gemm_init_avx512(k);
}
