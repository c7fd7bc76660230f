// Device-side MXFP8 helpers: E4M3 pairs to half through the hardware converter, the warp
// quantize-dequantize of 32-blocks (one value per lane) with the library's exact rules, GEMM1's
// shared epilogue, and the bf16 mma wrapper.
#ifndef MXM_CUDA_MX_DEVICE_CUH
#define MXM_CUDA_MX_DEVICE_CUH

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "cuda/common.cuh"

// Two E4M3 codes (low byte first) to two floats, exactly (0x7F/0xFF give NaN).
__device__ __forceinline__ float2 mxm_e4m3x2_to_float2(uint16_t two) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)two, __NV_E4M3);
    return __half22float2(*reinterpret_cast<const __half2 *>(&h));
}

// Two finite values to E4M3 codes in one conversion (lo in the low byte; round to nearest even,
// finite saturation, as mxm_e4m3_rne_sat; NaN inputs are the caller's to handle).
__device__ __forceinline__ uint16_t mxm_float2_to_e4m3x2(float lo, float hi) {
    return __nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3);
}

// MXFP8 quantization of the warp's 32 values v[q] of every lane (N independent blocks, one value
// per lane each) with the library's exact rules: this lane's E4M3 code and its block's scale byte.
// Blocks with NaN/Inf take scale 0xFF and code 0x7F (both decode to NaN); scale byte 0 (an
// all-zero block, or the FLOOR rule's smallest) gives signed-zero codes. The N shuffle trees
// interleave so their latency chains overlap; the special cases are selects (the discarded code
// is computed from finite or wrapped inputs only).
template <int N>
__device__ __forceinline__ void mxm_warp_mx_quant(const float (&v)[N], int rule, uint8_t (&code)[N],
                                                  uint8_t (&sb)[N]) {
    float amax[N];
    bool special[N];
#pragma unroll
    for (int q = 0; q < N; q++) {
        const uint32_t a = mxm_f32_bits(v[q]) & 0x7FFFFFFFu;
        special[q] = __any_sync(0xFFFFFFFFu, a >= 0x7F800000u);
        amax[q] = mxm_bits_f32(a);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int q = 0; q < N; q++)
            amax[q] = fmaxf(amax[q], __shfl_xor_sync(0xFFFFFFFFu, amax[q], o));
#pragma unroll
    for (int q = 0; q < N; q++) {
        const uint8_t b = mxm_mx_scale_byte(amax[q], rule);
        const uint8_t c = mxm_e4m3_rne_sat(v[q] * mxm_e8m0_inverse(b));
        const uint8_t z = (uint8_t)((mxm_f32_bits(v[q]) >> 24) & 0x80u);
        code[q] = special[q] ? (uint8_t)0x7F : (b == 0 ? z : c);
        sb[q] = special[q] ? (uint8_t)MXM_E8M0_NAN : b;
    }
}

// The values this lane's v[q] become after MXFP8 quantization (mxm_warp_mx_quant) and decoding:
// NaN for blocks with NaN/Inf, signed zero for scale byte 0.
template <int N> __device__ __forceinline__ void mxm_warp_mx_fakequant(float (&v)[N], int rule) {
    uint8_t code[N], sb[N];
    mxm_warp_mx_quant(v, rule, code, sb);
#pragma unroll
    for (int q = 0; q < N; q++)
        v[q] =
            mxm_e4m3_decode(code[q]) * mxm_e8m0_decode(sb[q]); // scale byte 0: the codes are zeros
}

// GEMM1's epilogue after the activation, for N 32-column blocks of the intermediate held one
// value per lane (warp-uniform call; block q goes to element o[q] of the [rows, I_max]
// intermediate, stored when keep[q]): the TRT-LLM profile's bf16 rounding, then either the fp32
// store that mxm_cuda_requant_fp8block requantizes per 128-block (DeepSeek FP8 W8A8) or the MXFP8
// quantize-dequantize (W8A8) and the bf16 store. One definition for every GEMM1 kernel.
template <int N>
__device__ __forceinline__ void mxm_gemm1_round(const mxm_cuda_args &a, float (&v)[N]) {
    if (a.profile == MXM_PROFILE_TRTLLM)
#pragma unroll
        for (int q = 0; q < N; q++)
            v[q] = mxm_round_bf16(v[q]);
}
template <int WF, int N>
__device__ __forceinline__ void mxm_gemm1_store(const mxm_cuda_args &a, float (&v)[N],
                                                const int64_t (&o)[N], const bool (&keep)[N]) {
    constexpr bool BLK = mxm_cuda_fmt<WF>::block128;
    mxm_gemm1_round(a, v);
    if (BLK && mxm_cuda_blk_w8a8(a)) {
#pragma unroll
        for (int q = 0; q < N; q++)
            if (keep[q]) a.actf[o[q]] = v[q];
        return;
    }
    if (!BLK && a.act_quant == MXM_ACT_QUANT_MXFP8) mxm_warp_mx_fakequant(v, a.rule);
#pragma unroll
    for (int q = 0; q < N; q++)
        if (keep[q]) a.act[o[q]] = __float2bfloat16_rn(v[q]);
}

// The same epilogue with one thread holding a whole 32-block (32 consecutive intermediate
// columns of one row, after the activation): the same values as mxm_gemm1_store<WF> (the
// rounding, then for MXFP8 W8A8 the block's scale from its amax and each value through the E4M3
// converter two at a time: NaN/Inf blocks give NaN, scale byte 0 signed zeros), without
// shuffles; 64 bytes of bf16 stored at a.act + o (16-byte aligned), or for DeepSeek FP8 W8A8
// the 32 fp32 values at a.actf + o (requantized per 128 columns later).
template <int WF>
__device__ __forceinline__ void mxm_gemm1_store32(const mxm_cuda_args &a, float (&v)[32],
                                                  int64_t o) {
    mxm_gemm1_round(a, v);
    if (mxm_cuda_fmt<WF>::block128 && mxm_cuda_blk_w8a8(a)) {
        float4 *dst = reinterpret_cast<float4 *>(a.actf + o);
#pragma unroll
        for (int i = 0; i < 8; i++)
            dst[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
        return;
    }
    uint32_t w[16];
    if (!mxm_cuda_fmt<WF>::block128 && a.act_quant == MXM_ACT_QUANT_MXFP8) {
        float amax = 0.0f;
        bool special = false;
#pragma unroll
        for (int j = 0; j < 32; j++) {
            const uint32_t m = mxm_f32_bits(v[j]) & 0x7FFFFFFFu;
            special |= m >= 0x7F800000u;
            amax = fmaxf(amax, mxm_bits_f32(m));
        }
        const uint8_t sb = mxm_mx_scale_byte(amax, a.rule);
        const float inv = mxm_e8m0_inverse(sb), sc = mxm_e8m0_decode(sb);
#pragma unroll
        for (int j = 0; j < 32; j += 2) {
            float lo, hi;
            if (special) {
                lo = hi = __int_as_float(0x7FC00000);
            } else if (sb == 0) {
                lo = copysignf(0.0f, v[j]), hi = copysignf(0.0f, v[j + 1]);
            } else {
                const float2 f =
                    mxm_e4m3x2_to_float2(mxm_float2_to_e4m3x2(v[j] * inv, v[j + 1] * inv));
                lo = f.x * sc, hi = f.y * sc;
            }
            const __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
            w[j / 2] = *reinterpret_cast<const uint32_t *>(&p);
        }
    } else {
#pragma unroll
        for (int j = 0; j < 32; j += 2) {
            const __nv_bfloat162 p = __floats2bfloat162_rn(v[j], v[j + 1]);
            w[j / 2] = *reinterpret_cast<const uint32_t *>(&p);
        }
    }
    uint4 *dst = reinterpret_cast<uint4 *>(a.act + o);
#pragma unroll
    for (int i = 0; i < 4; i++)
        dst[i] = make_uint4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
}

// The same epilogue for a skinny group of an MXFP8 W8A8 layer (mxm_cuda_codes): the 32 values
// of columns col0 + lane of intermediate row `row` as E4M3 codes and their block's decoded scale.
__device__ __forceinline__ void mxm_gemm1_store_codes(const mxm_cuda_args &a, float v, int64_t row,
                                                      int col0) {
    float w[1] = {v};
    mxm_gemm1_round(a, w);
    uint8_t code[1], sb[1];
    mxm_warp_mx_quant(w, a.rule, code, sb);
    mxm_cuda_act_codes(a, row)[col0 + (threadIdx.x & 31)] = code[0];
    if ((threadIdx.x & 31) == 0) mxm_cuda_act_scales(a, row)[col0 / 32] = mxm_e8m0_decode(sb[0]);
}

// Four E4M3 codes (low byte first) as two f16x2 registers, codes 0-1 and 2-3 (exact). The
// 16-bit halves go to the converter directly (its .H1 operand), not through a shift.
__device__ __forceinline__ void mxm_e4m3x4_to_f16x2(uint32_t four, uint32_t &lo, uint32_t &hi) {
    asm("{\n .reg .b16 l, h;\n mov.b32 {l, h}, %2;\n cvt.rn.f16x2.e4m3x2 %0, l;\n"
        " cvt.rn.f16x2.e4m3x2 %1, h;\n}"
        : "=r"(lo), "=r"(hi)
        : "r"(four));
}

// acc += A . B for one mma.m16n8k16 with fp32 accumulators (PTX fragment layouts) and bf16
// operands (the tile kernels and the skinny kernels' exact decode) or, F16, f16 operands (the
// skinny kernels' raw E4M3 codes: exact in f16, products exact in fp32).
#define MXM_MMA_16816(T)                                                                           \
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." T "." T ".f32 {%0,%1,%2,%3}, "           \
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                                        \
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])                                  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))
template <bool F16 = false>
__device__ __forceinline__ void mxm_mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                              uint32_t b1) {
    if constexpr (F16)
        MXM_MMA_16816("f16");
    else
        MXM_MMA_16816("bf16");
}
#undef MXM_MMA_16816

#endif
