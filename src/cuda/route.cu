// Routing on the device: one warp per token (route_warp.cuh, the twin of the host's per-token
// code in src/route/route_core.h), or with a.route_warp = 0 one thread per token running that
// code itself; the scratch in the workspace.
#include "cuda/kernels.cuh"
#include "cuda/route_warp.cuh"

#define ROUTE_THREADS 128

__global__ void __launch_bounds__(ROUTE_THREADS)
    route_kernel(int32_t T, mxm_route_params rp, const void *logits, int32_t logits_dtype,
                 const void *bias, int32_t bias_dtype, int32_t *ids, float *wts, char *scratch,
                 int64_t stride, int32_t warp) {
    mxm_griddep_wait();
    mxm_griddep_launch();
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x, t = warp ? i / 32 : i;
    if (t >= T) return; // a warp per token: whole warps
    if (warp)
        mxm_route_token_warp(&rp, logits, logits_dtype, bias, bias_dtype, t, ids, wts,
                             scratch + t * stride);
    else
        mxm_route_token(&rp, logits, logits_dtype, bias, bias_dtype, t, ids, wts,
                        scratch + t * stride);
}

extern "C" int64_t mxm_route_device_scratch_bytes(const mxm_route_params *p) {
    int64_t off[5];
    return mxm_route_layout(p, off);
}

mxm_status mxm_cuda_route(const mxm_cuda_args &a, const mxm_route_params &rp, const void *logits,
                          int32_t logits_dtype, const void *bias, int32_t bias_dtype, void *scratch,
                          cudaStream_t s) {
    const int64_t stride = mxm_route_device_scratch_bytes(&rp);
    const int per_block = a.route_warp ? ROUTE_THREADS / 32 : ROUTE_THREADS;
    return mxm_cuda_launch(route_kernel, (a.T + per_block - 1) / per_block, ROUTE_THREADS, 0, s,
                           a.T, rp, logits, logits_dtype, bias, bias_dtype, a.ids, a.wts,
                           (char *)scratch, stride, a.route_warp);
}
