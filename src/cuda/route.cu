// Routing on the device: one thread per token runs the same per-token code as the host
// (src/route/route_core.h), with its scratch in the workspace.
#include "cuda/kernels.cuh"
#include "route/route_core.h"

__global__ void route_kernel(int32_t T, mxm_route_params rp, const void *logits, int32_t logits_dtype,
                             const void *bias, int32_t bias_dtype, int32_t *ids, float *wts, char *scratch,
                             int64_t stride) {
    mxm_griddep_wait();
    mxm_griddep_launch();
    const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (t >= T) return;
    mxm_route_token(&rp, logits, logits_dtype, bias, bias_dtype, t, ids, wts, scratch + t * stride);
}

extern "C" int64_t mxm_route_device_scratch_bytes(const mxm_route_params *p) {
    int64_t off[5];
    return mxm_route_layout(p, off);
}

mxm_status mxm_cuda_route(const mxm_cuda_args &a, const mxm_route_params &rp, const void *logits,
                          int32_t logits_dtype, const void *bias, int32_t bias_dtype, void *scratch,
                          cudaStream_t s) {
    const int64_t stride = mxm_route_device_scratch_bytes(&rp);
    return mxm_cuda_launch(route_kernel, (a.T + 127) / 128, 128, 0, s, a.T, rp, logits, logits_dtype, bias, bias_dtype,
                           a.ids, a.wts, (char *)scratch, stride);
}
