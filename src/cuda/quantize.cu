// Activation preparation: the input rows as the GEMMs see them (bf16 values; exact for MXFP8).
#include "cuda/kernels.cuh"
#include "cuda/mx_device.cuh"

__global__ void prepare_x_kernel(mxm_cuda_args a, const void *x, int32_t x_dtype, const uint8_t *x_scale) {
    const int64_t t = blockIdx.x;
    const int lane = threadIdx.x & 31;
    for (int64_t c = threadIdx.x; c < a.H; c += blockDim.x) {
        const int64_t i = t * a.H + c;
        float v;
        if (x_dtype == MXM_DT_F32) v = ((const float *)x)[i];
        else if (x_dtype == MXM_DT_BF16) v = __bfloat162float(((const __nv_bfloat16 *)x)[i]);
        else v = mxm_e4m3_decode(((const uint8_t *)x)[i]) * mxm_e8m0_decode(x_scale[i / 32]);
        // blockDim is a multiple of 32 and H of 32: a warp holds exactly one 32-block.
        if (x_dtype != MXM_DT_E4M3 && a.act_quant == MXM_ACT_QUANT_MXFP8) v = mxm_warp_mx_fakequant(v, a.rule);
        (void)lane;
        a.xq[i] = __float2bfloat16_rn(v);
    }
}

mxm_status mxm_cuda_prepare_x(const mxm_cuda_args &a, const void *x, int32_t x_dtype, const void *x_scale,
                              cudaStream_t s) {
    prepare_x_kernel<<<a.T, 256, 0, s>>>(a, x, x_dtype, (const uint8_t *)x_scale);
    MXM_CUDA_LAUNCHED();
    return MXM_OK;
}
