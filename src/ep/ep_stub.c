/* The NCCL entry points when the library is built without CUDA + NCCL (CMake MXM_NCCL). */
#ifndef MXM_WITH_NCCL
#include "core/core.h"

#define NO_NCCL                                                                                    \
    "expert parallelism over NCCL is not built into this library (needs CUDA and NCCL at build "   \
    "time)"

mxm_status mxm_ep_group_create(void *comm, mxm_ep_group **g) {
    (void)comm;
    if (g) *g = NULL;
    return mxm_fail(MXM_ERR_NO_DEVICE, NO_NCCL);
}
mxm_status mxm_ep_group_create_local(int32_t world_size, int32_t rank, const char *id_file,
                                     mxm_ep_group **g) {
    (void)world_size, (void)rank, (void)id_file;
    if (g) *g = NULL;
    return mxm_fail(MXM_ERR_NO_DEVICE, NO_NCCL);
}
void mxm_ep_group_destroy(mxm_ep_group *g) {
    (void)g;
}
int32_t mxm_ep_group_rank(const mxm_ep_group *g) {
    return (void)g, -1;
}
int32_t mxm_ep_group_size(const mxm_ep_group *g) {
    return (void)g, 0;
}
mxm_status mxm_ep_plan_create(mxm_ep_group *g, const mxm_moe_config *cfg, int64_t max_tokens,
                              mxm_ep_plan **p) {
    (void)g, (void)cfg, (void)max_tokens;
    if (p) *p = NULL;
    return mxm_fail(MXM_ERR_NO_DEVICE, NO_NCCL);
}
void mxm_ep_plan_destroy(mxm_ep_plan *p) {
    (void)p;
}
int64_t mxm_ep_plan_device_bytes(const mxm_ep_plan *p) {
    return (void)p, 0;
}
mxm_status mxm_ep_forward(mxm_ep_plan *p, const mxm_moe_weights *w, const mxm_moe_inputs *in,
                          const mxm_moe_outputs *out, void *stream) {
    (void)p, (void)w, (void)in, (void)out, (void)stream;
    return mxm_fail(MXM_ERR_NO_DEVICE, NO_NCCL);
}
mxm_status mxm_ep_plan_last_rows(const mxm_ep_plan *p, int64_t *sent, int64_t *received) {
    (void)p;
    if (sent) *sent = 0;
    if (received) *received = 0;
    return mxm_fail(MXM_ERR_NO_DEVICE, NO_NCCL);
}
#else
typedef int mxm_ep_stub_unused;
#endif
