// out[t] = sum_k w[t,k] * y[pos[t,k]] in k order (+ the shared expert), fp32, stored bf16 or f32.
#include "cuda/kernels.cuh"

__global__ void combine_kernel(mxm_cuda_args a, void *out, void *out_routed, int32_t out_dtype) {
    const int64_t t = blockIdx.x;
    const bool shared = a.groups > a.e_loc;
    for (int64_t h = threadIdx.x; h < a.H; h += blockDim.x) {
        float acc = 0.0f;
        for (int k = 0; k < a.K; k++) {
            const int32_t r = a.pos[t * a.K + k];
            if (r >= 0) acc += a.wts[t * a.K + k] * a.y[(int64_t)r * a.H + h];
        }
        const int64_t i = t * a.H + h;
        if (out_routed) {
            if (out_dtype == MXM_DT_F32) ((float *)out_routed)[i] = acc;
            else ((__nv_bfloat16 *)out_routed)[i] = __float2bfloat16_rn(acc);
        }
        if (shared) acc += a.y[((int64_t)a.T * a.K + t) * a.H + h];
        if (out_dtype == MXM_DT_F32) ((float *)out)[i] = acc;
        else ((__nv_bfloat16 *)out)[i] = __float2bfloat16_rn(acc);
    }
}

mxm_status mxm_cuda_combine(const mxm_cuda_args &a, void *out, void *out_routed, int32_t out_dtype,
                            cudaStream_t s) {
    combine_kernel<<<a.T, 256, 0, s>>>(a, out, out_routed, out_dtype);
    MXM_CUDA_LAUNCHED();
    return MXM_OK;
}
