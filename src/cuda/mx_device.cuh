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

// The values this lane's v[q] become after MXFP8 quantization of the warp's 32 values v[q] of
// every lane (N independent blocks, one value per lane each) and decoding: scale rule `rule`,
// blocks with NaN/Inf give NaN, scale byte 0 flushes to signed zero. The N shuffle trees
// interleave so their latency chains overlap; the two special cases are selects (the discarded
// value is computed from finite or wrapped inputs only).
template <int N> __device__ __forceinline__ void mxm_warp_mx_fakequant(float (&v)[N], int rule) {
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
        const float r =
            mxm_e4m3_decode(mxm_e4m3_rne_sat(v[q] * mxm_e8m0_inverse(b))) * mxm_e8m0_decode(b);
        const float z = mxm_bits_f32(mxm_f32_bits(v[q]) & 0x80000000u);
        v[q] = special[q] ? __int_as_float(0x7FC00000) : (b == 0 ? z : r);
    }
}

// GEMM1's epilogue after the activation, for N 32-column blocks of the intermediate held one
// value per lane (warp-uniform call; block q goes to element o[q] of the [rows, I_max]
// intermediate, stored when keep[q]): the TRT-LLM profile's bf16 rounding, then either the fp32
// store that mxm_cuda_requant_fp8block requantizes per 128-block (DeepSeek FP8 W8A8) or the MXFP8
// quantize-dequantize (W8A8) and the bf16 store. One definition for every GEMM1 kernel.
template <int WF, int N>
__device__ __forceinline__ void mxm_gemm1_store(const mxm_cuda_args &a, float (&v)[N],
                                                const int64_t (&o)[N], const bool (&keep)[N]) {
    constexpr bool BLK = mxm_cuda_fmt<WF>::block128;
    if (a.profile == MXM_PROFILE_TRTLLM)
#pragma unroll
        for (int q = 0; q < N; q++)
            v[q] = mxm_round_bf16(v[q]);
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

// acc += A . B for one mma.m16n8k16 with bf16 operands and fp32 accumulators (PTX fragment
// layouts); shared by the tile kernels of gemm.cu and gemm_skinny.cu.
__device__ __forceinline__ void mxm_mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4],
                                                   uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

#endif
