/* Entry points of the CUDA backend when it is not built (no nvcc at configure time). */
#ifndef MXM_WITH_CUDA
#include "core/core.h"
#include "moe/plan.h"
#include "moe/timeline.h"

int32_t mxm_cuda_available(void) { return 0; }

static mxm_status stub_plan(mxm_moe_plan *p) {
    (void)p;
    return mxm_fail(MXM_ERR_NO_DEVICE, "the CUDA backend is not built into this library (no nvcc at build time)");
}

static mxm_status stub_forward(const mxm_moe_plan *p, const mxm_moe_weights *w,
                               const mxm_moe_inputs *in, const mxm_moe_outputs *out, void *ws,
                               void *stream) {
    (void)p, (void)w, (void)in, (void)out, (void)ws, (void)stream;
    return mxm_fail(MXM_ERR_NO_DEVICE, "the CUDA backend is not built into this library");
}

const mxm_backend_ops mxm_cuda_backend = {
    .name = "cuda", .plan = stub_plan, .forward = stub_forward, .destroy = NULL};

mxm_status mxm_device_alloc(int64_t bytes, void **ptr) {
    (void)bytes;
    if (ptr) *ptr = NULL;
    return mxm_fail(MXM_ERR_NO_DEVICE, "the CUDA backend is not built into this library");
}
void mxm_device_free(void *ptr) { (void)ptr; }
mxm_status mxm_copy_to_device(void *dst, const void *src, int64_t bytes) {
    (void)dst, (void)src, (void)bytes;
    return mxm_fail(MXM_ERR_NO_DEVICE, "the CUDA backend is not built into this library");
}
mxm_status mxm_copy_to_host(void *dst, const void *src, int64_t bytes) {
    (void)dst, (void)src, (void)bytes;
    return mxm_fail(MXM_ERR_NO_DEVICE, "the CUDA backend is not built into this library");
}
mxm_status mxm_device_synchronize(void) {
    return mxm_fail(MXM_ERR_NO_DEVICE, "the CUDA backend is not built into this library");
}
const char *mxm_device_name(void) { return ""; }
mxm_status mxm_cuda_timeline_reset(void) {
    return mxm_fail(MXM_ERR_NO_DEVICE, "the CUDA backend is not built into this library");
}
mxm_status mxm_cuda_timeline_read(uint64_t t[3 * MXM_SITES]) {
    (void)t;
    return mxm_fail(MXM_ERR_NO_DEVICE, "the CUDA backend is not built into this library");
}
mxm_status mxm_cuda_graph_median_us(mxm_cuda_graph *const *graphs, int n, int iters, double *us) {
    (void)graphs, (void)n, (void)iters, (void)us;
    return mxm_fail(MXM_ERR_NO_DEVICE, "the CUDA backend is not built into this library");
}
mxm_status mxm_cuda_graph_capture(mxm_moe_plan *p, const mxm_moe_weights *w, const mxm_moe_inputs *in,
                                  const mxm_moe_outputs *out, void *ws, int64_t wsb, void *stream,
                                  mxm_cuda_graph **g) {
    (void)p, (void)w, (void)in, (void)out, (void)ws, (void)wsb, (void)stream;
    if (g) *g = NULL;
    return mxm_fail(MXM_ERR_NO_DEVICE, "the CUDA backend is not built into this library");
}
mxm_status mxm_cuda_graph_launch(mxm_cuda_graph *g) {
    (void)g;
    return mxm_fail(MXM_ERR_NO_DEVICE, "the CUDA backend is not built into this library");
}
void mxm_cuda_graph_destroy(mxm_cuda_graph *g) { (void)g; }
#else
typedef int mxm_cuda_stub_unused;
#endif
