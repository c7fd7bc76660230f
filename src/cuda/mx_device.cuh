// Device-side MXFP8 helpers: E4M3 pairs to half through the hardware converter, and the warp
// quantize-dequantize of one 32-block (one value per lane) with the library's exact rules.
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

// The value this lane's v becomes after MXFP8 quantization of the warp's 32 values (one
// block) and decoding: scale rule `rule`, blocks with NaN/Inf give NaN, scale byte 0 flushes.
__device__ __forceinline__ float mxm_warp_mx_fakequant(float v, int rule) {
    const uint32_t a = mxm_f32_bits(v) & 0x7FFFFFFFu;
    const int special = __any_sync(0xFFFFFFFFu, a >= 0x7F800000u);
    float amax = mxm_bits_f32(a);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, o));
    if (special) return __int_as_float(0x7FC00000);
    const uint8_t b = mxm_mx_scale_byte(amax, rule);
    if (b == 0) return mxm_bits_f32(mxm_f32_bits(v) & 0x80000000u);
    return mxm_e4m3_decode(mxm_e4m3_rne_sat(v * mxm_e8m0_inverse(b))) * mxm_e8m0_decode(b);
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
