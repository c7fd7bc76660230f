/* Planning: validate once, derive sizes, let the backend pick kernels, lay out the workspace. */
#include <stdlib.h>

#include "core/core.h"
#include "moe/activation.h"
#include "moe/plan.h"

/* Appends a region of n bytes (64-byte aligned) and returns its offset; -1 on overflow. */
static int64_t ws_take(int64_t *cursor, int64_t n) {
    if (*cursor < 0 || n < 0) return *cursor = -1;
    const int64_t off = mxm_align_up(*cursor, 64);
    if (!mxm_add_i64(off, n, cursor)) return *cursor = -1;
    return off;
}

static mxm_status layout_workspace(mxm_moe_plan *p) {
    const mxm_moe_config *c = &p->cfg;
    const int64_t B = p->batch, K = c->top_k, H = c->hidden_size, I = c->intermediate_size;
    const int64_t Is = c->shared_intermediate_size;
    mxm_ws_layout *w = &p->ws;
    int64_t cur = 0;
    w->xf = ws_take(&cur, mxm_mul3_i64(B, H, 4));
    w->ids = ws_take(&cur, mxm_mul3_i64(B, K, 4));
    w->wts = ws_take(&cur, mxm_mul3_i64(B, K, 4));
    w->pos = ws_take(&cur, mxm_mul3_i64(B, K, 4));
    w->rows = ws_take(&cur, mxm_mul3_i64(B, K + 1, 4));
    w->counts = ws_take(&cur, mxm_mul3_i64((int64_t)p->e_loc + 2, 2, 8));
    w->items = ws_take(&cur, mxm_mul3_i64(p->max_items, 1, 8));
    w->order = ws_take(&cur, mxm_mul3_i64((int64_t)p->e_loc + 1, 1, 4));
    w->act = ws_take(&cur, mxm_mul3_i64(B * K, I, 4));
    w->act_sh = ws_take(&cur, mxm_mul3_i64(B, Is, 4));
    w->y = ws_take(&cur, mxm_mul3_i64(B * K, H, 4));
    w->y_sh = ws_take(&cur, Is ? mxm_mul3_i64(B, H, 4) : 0);
    w->route_scratch_bytes = mxm_route_scratch_bytes(&p->route);
    w->route_scratch = ws_take(&cur, mxm_mul3_i64(p->nthreads, w->route_scratch_bytes, 1));
    w->thread = ws_take(&cur, mxm_mul3_i64(p->nthreads, w->thread_bytes, 1));
    if (cur < 0) return mxm_fail(MXM_ERR_OVERFLOW, "workspace size for %lld tokens overflows int64",
                                 (long long)p->max_tokens);
    w->total = mxm_align_up(cur, 64);
    return MXM_OK;
}

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
    p->batch = max_tokens;
    p->backend = backends[cfg->backend]; /* mxm_moe_config_validate checked the value */
    st = p->backend->plan(p);
    if (!st && p->ws.total == 0) st = layout_workspace(p); /* CUDA lays out its own */
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
    return p->ws.total;
}

const char *mxm_moe_plan_kernels(const mxm_moe_plan *p) { return p ? p->kernels_name : "?"; }
