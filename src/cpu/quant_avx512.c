/* AVX-512 (F + BW + VL) MXFP8 row kernels: bit-exact twins of src/cpu/quant_ref.c, installed
 * over the AVX2 ones on CPUs that have AVX-512. Same arithmetic as quant_avx2.c (read its header
 * for why each step is exact), on 16 lanes: a 32-block is two zmm registers; the E4M3 rounding is
 * the same one fp32 add with a magic addend; codes narrow with vpmovusdb (no pack/permute
 * sequence), signs come from the input's sign bits through a byte mask; the decode goes through
 * fp16 (exact) and F16C-style vcvtph2ps on 16 lanes. */
#include <immintrin.h>
#include <stdint.h>

#include "cpu/cpu_kernels.h"
#include "formats/formats.h"
#include "mxmoe.h"

#define MXM_AINLINE static inline __attribute__((always_inline))
#define MXM_INV448 0.002232142857142857f

/* 2^(127-b) as fp32 bits; 0 for b == 0 (flushed block) and 255 (unused). */
MXM_AINLINE uint32_t inv_bits(uint32_t b) {
    return b == 0 || b == 255 ? 0u : b == 254 ? 0x00400000u : (254u - b) << 23;
}

/* E4M3 codes (before saturation) of 16 non-negative finite fp32 values (see quant_avx2.c). */
MXM_AINLINE __m512i e4m3_code16(__m512 y) {
    const __m512i yi = _mm512_castps_si512(y);
    const __m512i em = _mm512_max_epi32(_mm512_and_si512(yi, _mm512_set1_epi32(0x7F800000)),
                                        _mm512_set1_epi32(0x3C800000));
    const __m512i c = _mm512_add_epi32(_mm512_add_epi32(em, _mm512_srli_epi32(em, 20)),
                                       _mm512_set1_epi32(0x0A000000 - 968));
    const __m512 s = _mm512_add_ps(y, _mm512_castsi512_ps(c));
    return _mm512_and_si512(_mm512_castps_si512(s), _mm512_set1_epi32(0x7FFFFF));
}

/* Scale byte from the block's amax bits (0xFF for NaN/Inf), as mxm_mx_scale_byte. */
MXM_AINLINE uint32_t scale_from_amax(uint32_t abits, int rule) {
    if (abits >= 0x7F800000u) return MXM_E8M0_NAN;
    if (rule == MXM_SCALE_FLOOR) {
        const int e = (int)(abits >> 23) - 8;
        return (uint32_t)(e < 0 ? 0 : e);
    }
    const uint32_t D = (uint32_t)_mm_cvtsi128_si32(
        _mm_castps_si128(_mm_mul_ss(_mm_castsi128_ps(_mm_cvtsi32_si128((int)abits)), _mm_set_ss(MXM_INV448))));
    if (D >= 0x7F800000u) return MXM_E8M0_NAN;
    const uint32_t b = D > 0x400000u ? (D + 0x7FFFFFu) >> 23 : 0u;
    return b > 254u ? 254u : b;
}

/* One block given as fp32 bit patterns v0 (elements 0-15) and v1 (16-31). */
MXM_AINLINE void quantize_block(__m512i v0, __m512i v1, uint8_t *q, uint8_t *s, int rule) {
    const __m512i absmask = _mm512_set1_epi32(0x7FFFFFFF);
    const __m512i a0 = _mm512_and_si512(v0, absmask), a1 = _mm512_and_si512(v1, absmask);
    const uint32_t b = scale_from_amax((uint32_t)_mm512_reduce_max_epu32(_mm512_max_epu32(a0, a1)), rule);
    *s = (uint8_t)b;
    if (__builtin_expect(b == MXM_E8M0_NAN, 0)) {
        _mm256_storeu_si256((__m256i *)q, _mm256_set1_epi8(MXM_E4M3_NAN));
        return;
    }
    const __m512 inv = _mm512_castsi512_ps(_mm512_set1_epi32((int)inv_bits(b)));
    const __m512i c0 = e4m3_code16(_mm512_mul_ps(_mm512_castsi512_ps(a0), inv));
    const __m512i c1 = e4m3_code16(_mm512_mul_ps(_mm512_castsi512_ps(a1), inv));
    const __m128i k7e = _mm_set1_epi8(0x7E), k80 = _mm_set1_epi8((char)0x80);
    /* codes are <= 0x88 here: saturate at 448 (0x7E), then set the sign of negative inputs */
    __m128i q0 = _mm_min_epu8(_mm512_cvtusepi32_epi8(c0), k7e);
    __m128i q1 = _mm_min_epu8(_mm512_cvtusepi32_epi8(c1), k7e);
    const __m512i z = _mm512_setzero_si512();
    q0 = _mm_mask_mov_epi8(q0, _mm512_cmplt_epi32_mask(v0, z), _mm_or_si128(q0, k80)); /* -0 too */
    q1 = _mm_mask_mov_epi8(q1, _mm512_cmplt_epi32_mask(v1, z), _mm_or_si128(q1, k80));
    _mm_storeu_si128((__m128i *)q, q0);
    _mm_storeu_si128((__m128i *)(q + 16), q1);
}

static void mx_quantize_f32_avx512(const float *x, int64_t n, uint8_t *q, uint8_t *s, int rule) {
    for (int64_t b = 0; b < n / MXM_MX_BLOCK; b++) {
        const float *xb = x + b * MXM_MX_BLOCK;
        quantize_block(_mm512_loadu_si512(xb), _mm512_loadu_si512(xb + 16), q + b * MXM_MX_BLOCK, s + b, rule);
    }
}

static void mx_quantize_bf16_avx512(const uint16_t *x, int64_t n, uint8_t *q, uint8_t *s, int rule) {
    for (int64_t b = 0; b < n / MXM_MX_BLOCK; b++) {
        const uint16_t *xb = x + b * MXM_MX_BLOCK;
        const __m512i v0 = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)xb)), 16);
        const __m512i v1 = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(xb + 16))), 16);
        quantize_block(v0, v1, q + b * MXM_MX_BLOCK, s + b, rule);
    }
}

static void mx_dequantize_f32_avx512(const uint8_t *q, const uint8_t *s, int64_t n, float *out) {
    const int64_t nb = n / MXM_MX_BLOCK;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *qb = q + b * MXM_MX_BLOCK;
        float *ob = out + b * MXM_MX_BLOCK;
        const __m256i v = _mm256_loadu_si256((const __m256i *)qb);
        const __m256i k7f = _mm256_set1_epi8(0x7F);
        if (__builtin_expect(_mm256_cmpeq_epi8_mask(_mm256_and_si256(v, k7f), k7f) != 0, 0)) {
            mxm_mx_dequantize_f32_ref(qb, s + b, MXM_MX_BLOCK, ob); /* NaN codes: exact payloads */
            continue;
        }
        /* c << 8, arithmetic >> 1, clear bit 14: the fp16 pattern of the E4M3 value * 2^-8 */
        __m512i h = _mm512_slli_epi16(_mm512_cvtepu8_epi16(v), 8);
        h = _mm512_and_si512(_mm512_srai_epi16(h, 1), _mm512_set1_epi16((short)0xBFFF));
        const __m512 scale = _mm512_set1_ps(256.0f); /* restores the exponent bias, exactly */
        const __m512 sc = _mm512_set1_ps(mxm_e8m0_decode(s[b]));
        const __m512 lo = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(h)), scale); /* exact */
        const __m512 hi = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)), scale);
        _mm512_storeu_ps(ob, _mm512_mul_ps(lo, sc));
        _mm512_storeu_ps(ob + 16, _mm512_mul_ps(hi, sc));
    }
    if (n > nb * MXM_MX_BLOCK)
        mxm_mx_dequantize_f32_ref(q + nb * MXM_MX_BLOCK, s + nb, n - nb * MXM_MX_BLOCK, out + nb * MXM_MX_BLOCK);
}

void mxm_cpu_quant_init_avx512(mxm_cpu_kernels *k) {
    k->mx_quantize_f32 = mx_quantize_f32_avx512;
    k->mx_quantize_bf16 = mx_quantize_bf16_avx512;
    k->mx_dequantize_f32 = mx_dequantize_f32_avx512;
}
