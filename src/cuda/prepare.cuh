// Activation quantization bodies shared by the prepare_x kernels (quantize.cu) and the fused
// decode prologue (permute.cu): the input rows as the GEMMs see them.
//  - MXFP8 (and weight-only): bf16 values (exact for MXFP8: an E4M3 value times a power of two).
//  - DeepSeek FP8 W8A8: 1x128 blocks, s = max(amax / 448, FLT_MIN), code = E4M3(v / s); the
//    GEMMs see the codes' values (exact in bf16) and apply s per 128-block of K.
#ifndef MXM_CUDA_PREPARE_CUH
#define MXM_CUDA_PREPARE_CUH

#include "cuda/mx_device.cuh"

#define MXM_PREP_WARPS 8 // warps per block of the DeepSeek FP8 preparation
#define MXM_PREP_THREADS 256                 // threads per block of the MXFP8 preparation
#define MXM_PREP_COLS (4 * MXM_PREP_THREADS) // columns of x per block: 4 per thread
// Blocks that prepare x (MXFP8 and weight-only): one per (token, MXM_PREP_COLS columns).
__host__ __device__ inline int64_t mxm_prepare_x_blocks(const mxm_cuda_args &a) {
    return (int64_t)a.T * ((a.H + MXM_PREP_COLS - 1) / MXM_PREP_COLS);
}

// Unit u of x = (token, MXM_PREP_COLS columns), by a block of MXM_PREP_THREADS threads: each
// thread takes 4 columns MXM_PREP_THREADS apart, so a warp holds one MX block of 32 columns per
// value (H is a multiple of 32).
__device__ __forceinline__ void mxm_prepare_x_part(const mxm_cuda_args &a, int64_t u, const void *x,
                                                   int32_t x_dtype, const uint8_t *x_scale) {
    const int64_t parts = (a.H + MXM_PREP_COLS - 1) / MXM_PREP_COLS, t = u / parts;
    const int64_t c0 = (u % parts) * MXM_PREP_COLS + threadIdx.x;
    float v[4];
    bool in[4];
    uint8_t code[4], sb[4]; // MXFP8 W8A8: the codes and block scale bytes behind v
#pragma unroll
    for (int q = 0; q < 4; q++) { // all loads first: one memory latency per unit, not four
        const int64_t c = c0 + q * (MXM_PREP_COLS / 4), i = t * a.H + c;
        in[q] = c < a.H; // warp-uniform: H is a multiple of 32
        v[q] = 0.0f, code[q] = 0, sb[q] = 0;
        if (!in[q]) continue;
        if (x_dtype == MXM_DT_F32)
            v[q] = ((const float *)x)[i];
        else if (x_dtype == MXM_DT_BF16)
            v[q] = __bfloat162float(((const __nv_bfloat16 *)x)[i]);
        else
            code[q] = ((const uint8_t *)x)[i], sb[q] = x_scale[i / 32];
    }
    const bool w8a8 = a.act_quant == MXM_ACT_QUANT_MXFP8;
    if (x_dtype != MXM_DT_E4M3 && w8a8) mxm_warp_mx_quant(v, a.rule, code, sb);
#pragma unroll
    for (int q = 0; q < 4; q++) {
        if (x_dtype == MXM_DT_E4M3 || w8a8)
            v[q] = mxm_e4m3_decode(code[q]) * mxm_e8m0_decode(sb[q]);
        if (!in[q]) continue;
        const int64_t c = c0 + q * (MXM_PREP_COLS / 4);
        a.xq[t * a.H + c] = __float2bfloat16_rn(v[q]);
        if (mxm_cuda_codes(a)) {
            a.xc[t * a.H + c] = code[q];
            if ((threadIdx.x & 31) == 0) a.xsf[t * a.xsf_stride + c / 32] = mxm_e8m0_decode(sb[q]);
        }
    }
}

// One warp quantizes one 1x128 block of n (<= 128) values, v[i] at column 32 i + lane: stores
// the codes' values (bf16) at dst[32 i + lane] and returns the scale.
__device__ __forceinline__ float mxm_warp_fp8block_quant(const float (&v)[4], int n, __nv_bfloat16 *dst) {
    const int lane = threadIdx.x & 31;
    float amax = 0.0f;
    bool nan = false;
#pragma unroll
    for (int i = 0; i < 4; i++)
        if (32 * i + lane < n) nan |= v[i] != v[i], amax = fmaxf(amax, fabsf(v[i]));
    nan = __any_sync(0xFFFFFFFFu, nan);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, o));
    const float s = mxm_fp8block_scale(nan ? __int_as_float(0x7FC00000) : amax);
#pragma unroll
    for (int i = 0; i < 4; i++)
        if (32 * i + lane < n) dst[32 * i + lane] = __float2bfloat16_rn(mxm_e4m3_decode(mxm_e4m3_rne_sat(v[i] / s)));
    return s;
}

// DeepSeek FP8 inputs: warp unit u = (token, 128-block).
__device__ __forceinline__ void mxm_prepare_x_fp8block(const mxm_cuda_args &a, int64_t u, const void *x,
                                                       int32_t x_dtype, const float *x_scale, int32_t transposed) {
    if (u >= (int64_t)a.T * a.HB) return;
    const int lane = threadIdx.x & 31;
    const int64_t t = u / a.HB, b = u % a.HB, c0 = b * 128;
    const int n = a.H - c0 < 128 ? (int)(a.H - c0) : 128;
    float v[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int64_t idx = t * a.H + c0 + 32 * i + lane;
        v[i] = 0.0f;
        if (32 * i + lane >= n) continue;
        if (x_dtype == MXM_DT_F32) v[i] = ((const float *)x)[idx];
        else if (x_dtype == MXM_DT_BF16) v[i] = __bfloat162float(((const __nv_bfloat16 *)x)[idx]);
        else v[i] = mxm_e4m3_decode(((const uint8_t *)x)[idx]); // pre-quantized: the code's value
    }
    __nv_bfloat16 *dst = a.xq + t * a.H + c0;
    if (x_dtype == MXM_DT_E4M3) {
        // W8A8: the codes' values, scale aside; weight-only: the dequantized values (in bf16).
        const float s = transposed ? x_scale[b * a.T + t] : x_scale[t * a.HB + b];
        const bool w8a8 = a.act_quant == MXM_ACT_QUANT_MXFP8;
#pragma unroll
        for (int i = 0; i < 4; i++)
            if (32 * i + lane < n) dst[32 * i + lane] = __float2bfloat16_rn(w8a8 ? v[i] : v[i] * s);
        if (lane == 0 && w8a8) a.xs[t * a.HB + b] = s;
    } else if (a.act_quant == MXM_ACT_QUANT_MXFP8) {
        const float s = mxm_warp_fp8block_quant(v, n, dst);
        if (lane == 0) a.xs[t * a.HB + b] = s;
    } else {
#pragma unroll
        for (int i = 0; i < 4; i++)
            if (32 * i + lane < n) dst[32 * i + lane] = __float2bfloat16_rn(v[i]);
    }
}

#endif
