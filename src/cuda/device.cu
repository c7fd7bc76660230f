// CUDA device discovery for the backend (compiled only when nvcc is present).
#include <cuda_runtime.h>

extern "C" {
#include "core/core.h"
#include "moe/plan.h"
}

extern "C" int32_t mxm_cuda_available(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n > 0;
}

extern "C" mxm_status mxm_cuda_moe_plan(mxm_moe_plan *p) {
    (void)p;
    if (!mxm_cuda_available())
        return mxm_fail(MXM_ERR_NO_DEVICE, "backend cuda: no CUDA device is present");
    return mxm_fail(MXM_ERR_UNSUPPORTED, "backend cuda: the MoE forward is not implemented on CUDA yet; supported: cpu");
}

extern "C" mxm_status mxm_cuda_moe_forward(const mxm_moe_plan *p, const mxm_moe_weights *w,
                                           const mxm_moe_inputs *in, const mxm_moe_outputs *out,
                                           void *ws, void *stream) {
    (void)p, (void)w, (void)in, (void)out, (void)ws, (void)stream;
    return mxm_fail(MXM_ERR_UNSUPPORTED, "backend cuda: not implemented yet");
}
