// Activation quantization: the input rows as the GEMMs see them (bodies in prepare.cuh), and the
// DeepSeek FP8 requantization of the intermediate.
#include "cuda/kernels.cuh"
#include "cuda/prepare.cuh"

__global__ void prepare_x_kernel(mxm_cuda_args a, const void *x, int32_t x_dtype, const uint8_t *x_scale) {
    MXM_KERNEL_ENTRY(a, MXM_SITE_PREPARE_X);
    mxm_prepare_x_part(a, blockIdx.x, x, x_dtype, x_scale);
}

__global__ void prepare_x_fp8block_kernel(mxm_cuda_args a, const void *x, int32_t x_dtype, const float *x_scale,
                                          int32_t transposed) {
    MXM_KERNEL_ENTRY(a, MXM_SITE_PREPARE_X);
    mxm_prepare_x_fp8block(a, (int64_t)blockIdx.x * MXM_PREP_WARPS + threadIdx.x / 32, x, x_dtype, x_scale, transposed);
}

mxm_status mxm_cuda_prepare_x(const mxm_cuda_args &a, const void *x, int32_t x_dtype, const void *x_scale,
                              int32_t x_scale_transposed, cudaStream_t s) {
    if (a.blk) {
        const int64_t warps = (int64_t)a.T * a.HB;
        return mxm_cuda_launch(prepare_x_fp8block_kernel, (unsigned)((warps + MXM_PREP_WARPS - 1) / MXM_PREP_WARPS),
                               32 * MXM_PREP_WARPS, 0, s, a, x, x_dtype, (const float *)x_scale, x_scale_transposed);
    }
    return mxm_cuda_launch(prepare_x_kernel, (unsigned)mxm_prepare_x_blocks(a), MXM_PREP_THREADS, 0,
                           s, a, x, x_dtype, (const uint8_t *)x_scale);
}

// a.actf -> a.act (codes' values) and a.acts, per (row, 128-block) of every group; grid.y = group.
__global__ void requant_fp8block_kernel(mxm_cuda_args a) {
    MXM_KERNEL_ENTRY_LAUNCH_FIRST(a, MXM_SITE_REQUANT);
    const mxm_cuda_group G = a.group[blockIdx.y];
    const int ib = (G.I + 127) / 128, lane = threadIdx.x & 31;
    for (int64_t u = (int64_t)blockIdx.x * MXM_PREP_WARPS + threadIdx.x / 32; u < (int64_t)G.rows * ib;
         u += (int64_t)gridDim.x * MXM_PREP_WARPS) {
        const int64_t row = G.row0 + u / ib, b = u % ib, c0 = b * 128;
        const int n = G.I - c0 < 128 ? (int)(G.I - c0) : 128;
        const float *src = a.actf + row * a.I_max + c0;
        float v[4];
#pragma unroll
        for (int i = 0; i < 4; i++) v[i] = 32 * i + lane < n ? src[32 * i + lane] : 0.0f;
        const float s = mxm_warp_fp8block_quant(v, n, a.act + row * a.I_max + c0);
        if (lane == 0) a.acts[row * a.IB + b] = s;
    }
}

mxm_status mxm_cuda_requant_fp8block(const mxm_cuda_args &a, cudaStream_t s) {
    if (!mxm_cuda_blk_w8a8(a) || a.groups == 0) return MXM_OK;
    return mxm_cuda_launch(requant_fp8block_kernel, dim3(64, a.groups), 32 * MXM_PREP_WARPS, 0, s, a);
}
