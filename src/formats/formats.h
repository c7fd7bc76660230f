/* Scalar number formats (SPEC section 2): the bit-exact reference, shared by the C sources and
 * the CUDA kernels (every function is `static inline` and MXM_HD). Depends on nothing. */
#ifndef MXM_FORMATS_H
#define MXM_FORMATS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define MXM_HD __host__ __device__ __forceinline__
#else
#define MXM_HD static inline
#endif

#define MXM_E4M3_MAX 448.0f
#define MXM_E4M3_NAN 0x7F
#define MXM_E8M0_NAN 0xFF
#define MXM_MX_BLOCK 32
#define MXM_FP8_BLOCK 128

MXM_HD uint32_t mxm_f32_bits(float f) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
#endif
}

MXM_HD float mxm_bits_f32(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}

/* Round |v| (0 <= v < 2^22) to the nearest integer, ties to even, with fp32 arithmetic only
 * (the 2^23 trick relies on the default round-to-nearest-even mode). */
MXM_HD float mxm_rne_small(float v) {
#ifdef __CUDA_ARCH__
    return rintf(v); /* round to nearest even on the device */
#else
    volatile float big = 8388608.0f; /* keeps the compiler from folding (v + big) - big */
    return (v + big) - big;
#endif
}

/* ---- E4M3 ("fn"): s.eeee.mmm, bias 7, max 448, no inf, 0x7F/0xFF NaN ------------------- */

/* The rule in integer arithmetic (the host's conversion, and the twin the device's converter
 * path is checked against over every fp32 bit pattern: tests/cuda_checks.cu). */
MXM_HD uint8_t mxm_e4m3_rne_sat_ref(float x) {
    const uint32_t u = mxm_f32_bits(x);
    const uint8_t sign = (uint8_t)((u >> 24) & 0x80);
    const uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint8_t)(MXM_E4M3_NAN | sign); /* NaN */
    if (a >= 0x43E00000u) return (uint8_t)(0x7E | sign);        /* >= 448 (and Inf): saturate */
    if (a < 0x3C800000u) {                                       /* < 2^-6: subnormal quantum 2^-9 */
        const float q = mxm_rne_small(mxm_bits_f32(a) * 512.0f); /* exact scaling, 0..8 */
        return (uint8_t)((uint8_t)q | sign);                     /* 8 -> 0x08 = 2^-6, correct */
    }
    /* Normal: round the 23-bit mantissa to 3 bits (RNE); a carry moves into the exponent. */
    const uint32_t r = a + 0x7FFFFu + ((a >> 20) & 1u);
    const uint32_t e = (r >> 23) - 120u; /* E4M3 exponent field, 1..15 */
    return (uint8_t)(sign | (e << 3) | ((r >> 20) & 7u));
}

MXM_HD float mxm_e4m3_decode_ref(uint8_t c) {
    const uint32_t sign = (uint32_t)(c & 0x80) << 24;
    const uint32_t e = (c >> 3) & 15u, m = c & 7u;
    if (e == 15 && m == 7) return mxm_bits_f32(sign | 0x7FC00000u);
    if (e == 0) return mxm_bits_f32(mxm_f32_bits((float)m * 0.001953125f) | sign); /* m * 2^-9 */
    return mxm_bits_f32(sign | ((e + 120u) << 23) | (m << 20));
}

/* On sm_89+ devices both directions take the hardware converter (round to nearest even, finite
 * saturation: one instruction where the rule costs a dozen); NaN inputs keep the rule's signed
 * 0x7F code, NaN codes decode to a NaN (its payload may differ from the twin's). Elsewhere the
 * twins. */
MXM_HD uint8_t mxm_e4m3_rne_sat(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    unsigned short r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %1;" : "=h"(r) : "f"(x));
    const uint32_t u = mxm_f32_bits(x);
    return (u & 0x7FFFFFFFu) > 0x7F800000u ? (uint8_t)(MXM_E4M3_NAN | ((u >> 24) & 0x80u))
                                           : (uint8_t)r;
#else
    return mxm_e4m3_rne_sat_ref(x);
#endif
}

MXM_HD float mxm_e4m3_decode(uint8_t c) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    unsigned int h2;
    asm("{\n .reg .b16 c;\n cvt.u16.u32 c, %1;\n cvt.rn.f16x2.e4m3x2 %0, c;\n}"
        : "=r"(h2)
        : "r"((unsigned int)c));
    float f;
    asm("{\n .reg .b16 lo, hi;\n mov.b32 {lo, hi}, %1;\n cvt.f32.f16 %0, lo;\n}"
        : "=f"(f)
        : "r"(h2));
    return f;
#else
    return mxm_e4m3_decode_ref(c);
#endif
}

/* ---- E5M2: s.eeeee.mm, bias 15, max 57344, inf 0x7C, NaN 0x7D..0x7F ----------------------- */

MXM_HD uint8_t mxm_e5m2_rne_sat(float x) {
    const uint32_t u = mxm_f32_bits(x);
    const uint8_t sign = (uint8_t)((u >> 24) & 0x80);
    const uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint8_t)(0x7F | sign);
    if (a >= 0x47600000u) return (uint8_t)(0x7B | sign); /* >= 57344 (and Inf): saturate */
    if (a < 0x38800000u) {                               /* < 2^-14: quantum 2^-16 */
        const float q = mxm_rne_small(mxm_bits_f32(a) * 65536.0f);
        return (uint8_t)((uint8_t)q | sign);
    }
    const uint32_t r = a + 0xFFFFFu + ((a >> 21) & 1u);
    const uint32_t e = (r >> 23) - 112u;
    return (uint8_t)(sign | (e << 2) | ((r >> 21) & 3u));
}

MXM_HD float mxm_e5m2_decode(uint8_t c) {
    const uint32_t sign = (uint32_t)(c & 0x80) << 24;
    const uint32_t e = (c >> 2) & 31u, m = c & 3u;
    if (e == 31) return mxm_bits_f32(sign | (m ? 0x7FC00000u : 0x7F800000u));
    if (e == 0) return mxm_bits_f32(mxm_f32_bits((float)m * 1.52587890625e-05f) | sign); /* m*2^-16 */
    return mxm_bits_f32(sign | ((e + 112u) << 23) | (m << 21));
}

/* ---- E8M0: 2^(b-127), 0xFF NaN ------------------------------------------------------------ */

MXM_HD float mxm_e8m0_decode(uint8_t b) {
    /* selects, not branches (GPU inner loops decode several per trip); 0 -> 2^-127, an fp32
     * subnormal */
    const uint32_t bits = b == 0xFF ? 0x7FC00000u : (b == 0 ? 0x00400000u : (uint32_t)b << 23);
    return mxm_bits_f32(bits);
}

/* 2^(127-b) for b in 1..254: the factor that maps a block into the E4M3 range. */
MXM_HD float mxm_e8m0_inverse(uint8_t b) {
    const uint32_t e = 254u - b;
    return e ? mxm_bits_f32(e << 23) : mxm_bits_f32(0x00400000u);
}

/* ---- BF16 --------------------------------------------------------------------------------- */

MXM_HD uint16_t mxm_bf16_rne(float x) {
    const uint32_t u = mxm_f32_bits(x);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

MXM_HD float mxm_bf16_decode(uint16_t h) { return mxm_bits_f32((uint32_t)h << 16); }

/* fp32 -> bf16 -> fp32: the bf16 rounding points of the 'trtllm' profile. */
MXM_HD float mxm_round_bf16(float x) { return mxm_bf16_decode(mxm_bf16_rne(x)); }

/* ---- F16 (IEEE binary16): s.eeeee.mmmmmmmmmm, bias 15; every value is exact in fp32 --------- */

MXM_HD float mxm_f16_decode(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    /* Inf and NaN (payload kept); zero and subnormals: m * 2^-24 */
    if (e == 0x1F) return mxm_bits_f32(sign | 0x7F800000u | (m << 13));
    if (e == 0) return mxm_bits_f32(mxm_f32_bits((float)m * 5.9604644775390625e-08f) | sign);
    return mxm_bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

/* ---- MXFP8 scale rule (SPEC 2.2) ------------------------------------------------------------ */

/* amax: finite, >= 0. rule 0 = RCEIL, 1 = FLOOR. */
MXM_HD uint8_t mxm_mx_scale_byte(float amax, int rule) {
    if (!(amax <= 3.402823466e38f)) return MXM_E8M0_NAN; /* NaN or Inf */
    if (amax == 0.0f) return 0;
    if (rule == 1) {
        const int e = (int)((mxm_f32_bits(amax) >> 23) & 0xFF) - 8;
        return (uint8_t)(e < 0 ? 0 : (e > 254 ? 254 : e));
    }
    const float d = amax * 0.002232142857142857f; /* fp32(amax * fp32(1/448)) */
    const uint32_t bits = mxm_f32_bits(d);
    const uint32_t e = (bits >> 23) & 0xFF, m = bits & 0x7FFFFF;
    uint32_t b = e + ((m != 0 && (e != 0 || m > 0x400000u)) ? 1u : 0u);
    return (uint8_t)(b > 254 ? 254 : b);
}

/* ---- DeepSeek FP8 scale (SPEC 2.3) --------------------------------------------------------- */

MXM_HD float mxm_fp8block_scale(float amax) {
    const float s = amax / 448.0f;
    return s < 1.17549435e-38f ? 1.17549435e-38f : s; /* max(amax/448, FLT_MIN); NaN stays NaN */
}

/* One 1x128 activation segment (n <= 128 values): codes q[i] = E4M3(x[i] / s), returns s. A NaN
 * anywhere makes the scale NaN (and so every code). */
MXM_HD float mxm_fp8block_quantize_seg(const float *x, int n, uint8_t *q) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) {
        const float a = x[i] < 0 ? -x[i] : x[i];
        if (a != a) {
            amax = a;
            break;
        }
        if (a > amax) amax = a;
    }
    const float s = mxm_fp8block_scale(amax);
    for (int i = 0; i < n; i++) q[i] = mxm_e4m3_rne_sat(x[i] / s);
    return s;
}

/* The one fp32 sigmoid, shared by routing (route/route_core.h) and the activations
 * (moe/activation.h): the two must compute it alike on the host and the device. */
MXM_HD float mxm_sigmoidf(float v) {
    return 1.0f / (1.0f + expf(-v));
}

#endif
