/* Planning: validate once, derive sizes, let the backend pick kernels and lay out its workspace. */
#include <stdlib.h>

#include "core/core.h"
#include "moe/activation.h"
#include "moe/plan.h"

static const mxm_backend_ops *const backends[] = {
    [MXM_BACKEND_CPU] = &mxm_cpu_backend,
    [MXM_BACKEND_CUDA] = &mxm_cuda_backend,
};

mxm_status mxm_moe_plan_create(const mxm_moe_config *cfg, int64_t max_tokens, mxm_moe_plan **out) {
    if (!out) return mxm_fail(MXM_ERR_NULL, "mxm_moe_plan_create: plan output pointer is NULL");
    *out = NULL;
    mxm_status st = mxm_moe_config_validate(cfg);
    if (st) return st;
    if (max_tokens < 1 || max_tokens > ((int64_t)1 << 40))
        return mxm_fail(MXM_ERR_SHAPE, "max_tokens=%lld must be in 1..2^40", (long long)max_tokens);
    mxm_moe_plan *p = calloc(1, sizeof *p);
    if (!p) return mxm_fail(MXM_ERR_NOMEM, "mxm_moe_plan_create: out of memory");
    p->cfg = *cfg;
    p->max_tokens = max_tokens;
    p->e_loc = cfg->local_num_experts ? cfg->local_num_experts : cfg->num_experts;
    p->gated = mxm_act_is_gated(cfg->activation);
    p->m1 = p->gated ? 2 * cfg->intermediate_size : cfg->intermediate_size;
    p->shared_act = cfg->shared_activation >= 0 ? cfg->shared_activation : cfg->activation;
    p->scheme = mxm_scheme_get(cfg->weight_format);
    mxm_route_params_from_config(cfg, &p->route);
    p->nthreads = mxm_threads(cfg->num_threads);
    p->backend = backends[cfg->backend]; /* mxm_moe_config_validate checked the value */
    st = p->backend->plan(p);
    if (st) {
        mxm_moe_plan_destroy(p);
        return st;
    }
    *out = p;
    return MXM_OK;
}

void mxm_moe_plan_destroy(mxm_moe_plan *p) {
    if (!p) return;
    if (p->backend->destroy) p->backend->destroy(p);
    free(p->backend_state);
    free(p);
}

int64_t mxm_moe_plan_workspace_size(const mxm_moe_plan *p) {
    if (!p) return mxm_fail(MXM_ERR_NULL, "mxm_moe_plan_workspace_size: plan is NULL");
    return p->ws_bytes;
}

const char *mxm_moe_plan_kernels(const mxm_moe_plan *p) { return p ? p->kernels_name : "?"; }
