/* AVX2+FMA+F16C MXFP8 row kernels (SPEC 2.2). Bit-exact twins of src/cpu/quant_ref.c.
 *
 * Quantize, one 32-block = four ymm registers, in two stages:
 *   1. a_i = |x_i| as int32 bits (and-mask). Non-negative fp32 bit patterns order like their
 *      values, so amax = max_epi32 over the block; NaN/Inf exist iff amax_bits >= 0x7F800000
 *      (for RCEIL, iff d below is). The horizontal max is done for two blocks at once. The scale
 *      byte comes from amax's bits exactly as in mxm_mx_scale_byte: RCEIL from
 *      d = fp32(amax * fp32(1/448)), b = D <= 0x400000 ? 0 : (D + 0x7FFFFF) >> 23 (the same as
 *      E + (m != 0 && (E != 0 || m > 2^22))), FLOOR = exponent(amax) - 8; both clamped to
 *      [0, 254]. 2^(127-b) comes from a 256-entry table of fp32 bits: (254-b) << 23, the
 *      subnormal 2^-127 for b = 254, and 0 for b = 0 so that a flushed block needs no branch
 *      (0 * |x| = +0; the sign is added back below).
 *   2. y = |x| * 2^(127-b) (exact unless it underflows, exactly like the scalar product); E4M3
 *      RNE with one fp32 add per element (see e4m3_code8: a magic number whose ulp is y's E4M3
 *      quantum, with the exponent code pre-loaded into its mantissa; subnormal codes included);
 *      codes packed 32 -> 16 -> 8 bits (packus), then min(code, 0x7E) saturates at 448. The
 *      signs come from packing the raw input bits the same way with signed saturation: every
 *      negative fp32 pattern (-0 included) packs to the byte 0x80, every non-negative one to
 *      0x00..0x7F; and 0x80, or into the codes. One cross-lane permute restores element order.
 *   Rows are software-pipelined by pairs of blocks (stage 1 of pair j+1 before stage 2 of pair
 *   j) so the conversions never wait for the amax -> scale chain. Blocks with NaN/Inf take a
 *   (rare) branch: scale 0xFF, 32 codes 0x7F.
 *
 * Dequantize: E4M3 -> fp16 is exact, so a code c becomes the fp16 pattern
 * sign | (c & 0x7F) << 7 (one unpack into the high byte, an arithmetic shift and a mask), F16C
 * widens it to fp32 (fp16 subnormals included), * 256 restores the exponent bias (exact), and one
 * multiply by the E8M0 scale gives the same single rounding as the scalar e4m3 * 2^(b-127).
 * Blocks with a NaN code go through the scalar reference (same NaN payloads); a NaN scale
 * (0xFF) needs no care, the multiply returns that NaN exactly like the scalar code.
 *
 * Like the reference, the results assume the default MXCSR (round to nearest, no FTZ/DAZ). */
#include <immintrin.h>
#include <stdint.h>

#include "cpu/cpu_kernels.h"
#include "formats/formats.h"
#include "mxmoe.h"

#define MXM_AINLINE static inline __attribute__((always_inline))

/* Same literal as mxm_mx_scale_byte: fp32(1/448). */
#define MXM_INV448 0.002232142857142857f

/* 2^(127-b) as fp32 bits, indexed by the scale byte b; 0 for b == 0 (the flushed block: the
 * product is +0 and the sign is added back from the input) and for b == 255 (unused). */
#define INV1(b) ((b) == 0 || (b) == 255 ? 0u : (b) == 254 ? 0x00400000u : (uint32_t)(254 - (b)) << 23)
#define INV4(b) INV1(b), INV1((b) + 1), INV1((b) + 2), INV1((b) + 3)
#define INV16(b) INV4(b), INV4((b) + 4), INV4((b) + 8), INV4((b) + 12)
#define INV64(b) INV16(b), INV16((b) + 16), INV16((b) + 32), INV16((b) + 48)
static const uint32_t inv_table[256] = {INV64(0), INV64(64), INV64(128), INV64(192)};

/* E4M3 codes of 8 non-negative finite fp32 values y, before saturation (0..0x88 for y < 2^9;
 * the caller clamps the packed bytes to 0x7E). One fp32 add does the RNE: with E' the fp32
 * exponent of y raised to at least 121 (2^-6, the E4M3 subnormal quantum 2^-9 below it),
 * c = 2^(E'-107) * (1 + (E'-121) * 8 * 2^-23) has ulp 2^(E'-130), the E4M3 quantum of y's binade,
 * and y < 2^(E'-126) is far below c, so y + c rounds y to that quantum (ties to even) and its
 * mantissa bits are (E'-121) * 8 + round(y / quantum): the E4M3 code, including the carry into
 * the next binade and the subnormal codes 0..8. */
MXM_AINLINE __m256i e4m3_code8(__m256 y) {
    const __m256i yi = _mm256_castps_si256(y);
    const __m256i em = _mm256_max_epi32(_mm256_and_si256(yi, _mm256_set1_epi32(0x7F800000)),
                                        _mm256_set1_epi32(0x3C800000));
    const __m256i c = _mm256_add_epi32(_mm256_add_epi32(em, _mm256_srli_epi32(em, 20)),
                                       _mm256_set1_epi32(0x0A000000 - 968));
    const __m256 s = _mm256_add_ps(y, _mm256_castsi256_ps(c));
    return _mm256_and_si256(_mm256_castps_si256(s), _mm256_set1_epi32(0x7FFFFF));
}

/* A block between the stages: |x| bits and sign bytes. The four vectors hold the block's
 * elements 0-7, 8-15, 16-23, 24-31 for fp32 input, and [0-3,8-11], [4-7,12-15], [16-19,24-27],
 * [20-23,28-31] for bf16 input (the unpacklo/hi order); the packing in stage 2 undoes either. */
typedef struct {
    __m256i a0, a1, a2, a3, sg;
} blk_t;

/* |x| bits of a block (v[0..3]) and its sign bytes (v[4]) into k; returns the lane-wise max of
 * the |x| bits. */
MXM_AINLINE __m256i block_abs(const __m256i v[5], blk_t *k) {
    const __m256i absmask = _mm256_set1_epi32(0x7FFFFFFF);
    k->sg = v[4];
    k->a0 = _mm256_and_si256(v[0], absmask);
    k->a1 = _mm256_and_si256(v[1], absmask);
    k->a2 = _mm256_and_si256(v[2], absmask);
    k->a3 = _mm256_and_si256(v[3], absmask);
    return _mm256_max_epi32(_mm256_max_epi32(k->a0, k->a1), _mm256_max_epi32(k->a2, k->a3));
}

/* Scale byte from amax (bits in lane 0 of m): 0xFF for NaN/Inf. */
MXM_AINLINE uint32_t scale_from_amax(__m128i m, int rule) {
    if (rule == MXM_SCALE_FLOOR) {
        const uint32_t abits = (uint32_t)_mm_cvtsi128_si32(m);
        if (__builtin_expect(abits >= 0x7F800000u, 0)) return MXM_E8M0_NAN;
        const int e = (int)(abits >> 23) - 8;
        return (uint32_t)(e < 0 ? 0 : e); /* <= 246 for finite amax */
    }
    /* d = fp32(amax * fp32(1/448)); NaN/Inf amax give d >= 0x7F800000, finite ones less */
    const uint32_t D = (uint32_t)_mm_cvtsi128_si32(
        _mm_castps_si128(_mm_mul_ss(_mm_castsi128_ps(m), _mm_set_ss(MXM_INV448))));
    if (__builtin_expect(D >= 0x7F800000u, 0)) return MXM_E8M0_NAN;
    const uint32_t b = D > 0x400000u ? (D + 0x7FFFFFu) >> 23 : 0u;
    return b > 254u ? 254u : b;
}

/* Stage 1 of one block: returns its scale byte. */
MXM_AINLINE uint32_t block_stage1(const __m256i v[5], blk_t *k, int rule) {
    const __m256i m8 = block_abs(v, k);
    __m128i m4 = _mm_max_epi32(_mm256_castsi256_si128(m8), _mm256_extracti128_si256(m8, 1));
    m4 = _mm_max_epi32(m4, _mm_shuffle_epi32(m4, 0x4E));
    m4 = _mm_max_epi32(m4, _mm_shuffle_epi32(m4, 0xB1));
    return scale_from_amax(m4, rule);
}

/* Stage 1 of two blocks: the horizontal max of both in one pass (lanes 0-3: A, 4-7: B). */
MXM_AINLINE void pair_stage1(const __m256i *xa, const __m256i *xb, blk_t *ka, blk_t *kb,
                             uint32_t *ba, uint32_t *bb, int rule) {
    const __m256i ma = block_abs(xa, ka);
    const __m256i mb = block_abs(xb, kb);
    __m256i m = _mm256_max_epi32(_mm256_permute2x128_si256(ma, mb, 0x20),
                                 _mm256_permute2x128_si256(ma, mb, 0x31));
    m = _mm256_max_epi32(m, _mm256_shuffle_epi32(m, 0x4E));
    m = _mm256_max_epi32(m, _mm256_shuffle_epi32(m, 0xB1));
    *ba = scale_from_amax(_mm256_castsi256_si128(m), rule);
    *bb = scale_from_amax(_mm256_extracti128_si256(m, 1), rule);
}

/* Stage 2: the 32 codes of a block whose scale byte is b. */
MXM_AINLINE void block_stage2(const blk_t *k, uint32_t b, uint8_t *q, int bf16) {
    if (__builtin_expect(b == MXM_E8M0_NAN, 0)) {
        _mm256_storeu_si256((__m256i *)q, _mm256_set1_epi8(MXM_E4M3_NAN));
        return;
    }
    const __m256 inv = _mm256_broadcast_ss((const float *)&inv_table[b]);
    const __m256i c0 = e4m3_code8(_mm256_mul_ps(_mm256_castsi256_ps(k->a0), inv));
    const __m256i c1 = e4m3_code8(_mm256_mul_ps(_mm256_castsi256_ps(k->a1), inv));
    const __m256i c2 = e4m3_code8(_mm256_mul_ps(_mm256_castsi256_ps(k->a2), inv));
    const __m256i c3 = e4m3_code8(_mm256_mul_ps(_mm256_castsi256_ps(k->a3), inv));
    __m256i p = _mm256_packus_epi16(_mm256_packus_epi32(c0, c1), _mm256_packus_epi32(c2, c3));
    p = _mm256_or_si256(_mm256_min_epu8(p, _mm256_set1_epi8(0x7E)), k->sg); /* saturate: 448 */
    if (bf16)
        p = _mm256_permute4x64_epi64(p, 0xD8);
    else
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)q, p);
}

/* Loaders: the block as fp32 bits in v[0..3] and its sign bytes in v[4]. Signed saturating
 * packs turn every negative pattern (-0 included) into the byte 0x80 and every non-negative
 * one into 0x00..0x7F; the and keeps the sign. For bf16 one pack of the raw halves does it. */
MXM_AINLINE void load_f32(const float *x, __m256i v[5]) {
    const __m256i *p = (const __m256i *)x;
    v[0] = _mm256_loadu_si256(p);
    v[1] = _mm256_loadu_si256(p + 1);
    v[2] = _mm256_loadu_si256(p + 2);
    v[3] = _mm256_loadu_si256(p + 3);
    v[4] = _mm256_and_si256(
        _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3])),
        _mm256_set1_epi8((char)0x80));
}

MXM_AINLINE void load_bf16(const uint16_t *x, __m256i v[5]) {
    const __m256i *p = (const __m256i *)x;
    const __m256i v0 = _mm256_loadu_si256(p), v1 = _mm256_loadu_si256(p + 1);
    const __m256i z = _mm256_setzero_si256();
    v[0] = _mm256_unpacklo_epi16(z, v0);
    v[1] = _mm256_unpackhi_epi16(z, v0);
    v[2] = _mm256_unpacklo_epi16(z, v1);
    v[3] = _mm256_unpackhi_epi16(z, v1);
    /* bytes in 8-byte groups 0-7, 16-23, 8-15, 24-31: the same order as the packed codes */
    v[4] = _mm256_and_si256(_mm256_packs_epi16(v0, v1), _mm256_set1_epi8((char)0x80));
}

/* A row, software-pipelined by pairs of blocks: the scales of pair j+1 are computed before the
 * codes of pair j, so the codes never wait on the amax -> scale -> 2^(127-b) chain. */
MXM_AINLINE void quantize_row(const void *x, int64_t n, uint8_t *q, uint8_t *s, int rule,
                              int bf16) {
    const int64_t nb = n / MXM_MX_BLOCK, np = nb / 2;
#define MXM_LOAD(i, v)                                                                          \
    (bf16 ? load_bf16((const uint16_t *)x + (i) * MXM_MX_BLOCK, v)                              \
          : load_f32((const float *)x + (i) * MXM_MX_BLOCK, v))
    if (np > 0) {
        blk_t c0, c1, n0, n1;
        uint32_t b0, b1, bn0, bn1;
        __m256i va[5], vb[5];
        MXM_LOAD(0, va);
        MXM_LOAD(1, vb);
        pair_stage1(va, vb, &c0, &c1, &b0, &b1, rule);
        for (int64_t j = 0; j + 1 < np; j++) {
            MXM_LOAD(2 * j + 2, va);
            MXM_LOAD(2 * j + 3, vb);
            pair_stage1(va, vb, &n0, &n1, &bn0, &bn1, rule);
            s[2 * j] = (uint8_t)b0;
            s[2 * j + 1] = (uint8_t)b1;
            block_stage2(&c0, b0, q + 2 * j * MXM_MX_BLOCK, bf16);
            block_stage2(&c1, b1, q + (2 * j + 1) * MXM_MX_BLOCK, bf16);
            c0 = n0, c1 = n1, b0 = bn0, b1 = bn1;
        }
        s[2 * np - 2] = (uint8_t)b0;
        s[2 * np - 1] = (uint8_t)b1;
        block_stage2(&c0, b0, q + (2 * np - 2) * MXM_MX_BLOCK, bf16);
        block_stage2(&c1, b1, q + (2 * np - 1) * MXM_MX_BLOCK, bf16);
    }
    if (nb & 1) { /* the odd last block */
        blk_t c;
        __m256i v[5];
        MXM_LOAD(nb - 1, v);
        const uint32_t b = block_stage1(v, &c, rule);
        s[nb - 1] = (uint8_t)b;
        block_stage2(&c, b, q + (nb - 1) * MXM_MX_BLOCK, bf16);
    }
#undef MXM_LOAD
}

MXM_AINLINE void quantize_f32_row(const float *x, int64_t n, uint8_t *q, uint8_t *s, int rule) {
    quantize_row(x, n, q, s, rule, 0);
}

MXM_AINLINE void quantize_bf16_row(const uint16_t *x, int64_t n, uint8_t *q, uint8_t *s,
                                   int rule) {
    quantize_row(x, n, q, s, rule, 1);
}

static void mx_quantize_f32_avx2(const float *x, int64_t n, uint8_t *q, uint8_t *s, int rule) {
    if (rule == MXM_SCALE_FLOOR)
        quantize_f32_row(x, n, q, s, MXM_SCALE_FLOOR);
    else
        quantize_f32_row(x, n, q, s, MXM_SCALE_RCEIL);
}

static void mx_quantize_bf16_avx2(const uint16_t *x, int64_t n, uint8_t *q, uint8_t *s, int rule) {
    if (rule == MXM_SCALE_FLOOR)
        quantize_bf16_row(x, n, q, s, MXM_SCALE_FLOOR);
    else
        quantize_bf16_row(x, n, q, s, MXM_SCALE_RCEIL);
}

/* 8 codes (low 8 bytes of c as 16-bit lanes shifted into the high byte) -> 8 fp32 values. */
MXM_AINLINE __m256 e4m3_decode8_hi(__m128i c_hi8, __m256 scale) {
    /* s eeee mmm 00000000 -> s s eeee mmm 0000000 -> s 0 eeee mmm 0000000 (an fp16 pattern) */
    const __m128i h = _mm_and_si128(_mm_srai_epi16(c_hi8, 1), _mm_set1_epi16((short)0xBFFF));
    const __m256 v = _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0f)); /* exact */
    return _mm256_mul_ps(v, scale);
}

static void mx_dequantize_f32_avx2(const uint8_t *q, const uint8_t *s, int64_t n, float *out) {
    const int64_t nb = n / MXM_MX_BLOCK;
    const __m128i z = _mm_setzero_si128();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *qb = q + b * MXM_MX_BLOCK;
        float *ob = out + b * MXM_MX_BLOCK;
        const __m256i v = _mm256_loadu_si256((const __m256i *)qb);
        const __m256i k7f = _mm256_set1_epi8(0x7F);
        const int nan_codes =
            _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_and_si256(v, k7f), k7f));
        if (__builtin_expect(nan_codes != 0, 0)) { /* a NaN scale needs no care: x * NaN = NaN */
            mxm_mx_dequantize_f32_ref(qb, s + b, MXM_MX_BLOCK, ob);
            continue;
        }
        const __m256 scale = _mm256_set1_ps(mxm_e8m0_decode(s[b]));
        const __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
        _mm256_storeu_ps(ob, e4m3_decode8_hi(_mm_unpacklo_epi8(z, lo), scale));
        _mm256_storeu_ps(ob + 8, e4m3_decode8_hi(_mm_unpackhi_epi8(z, lo), scale));
        _mm256_storeu_ps(ob + 16, e4m3_decode8_hi(_mm_unpacklo_epi8(z, hi), scale));
        _mm256_storeu_ps(ob + 24, e4m3_decode8_hi(_mm_unpackhi_epi8(z, hi), scale));
    }
    if (n > nb * MXM_MX_BLOCK) /* a partial last block, as the reference indexes it */
        mxm_mx_dequantize_f32_ref(q + nb * MXM_MX_BLOCK, s + nb, n - nb * MXM_MX_BLOCK,
                                  out + nb * MXM_MX_BLOCK);
}

void mxm_cpu_quant_init_avx2(mxm_cpu_kernels *k) {
    k->mx_quantize_f32 = mx_quantize_f32_avx2;
    k->mx_quantize_bf16 = mx_quantize_bf16_avx2;
    k->mx_dequantize_f32 = mx_dequantize_f32_avx2;
}
