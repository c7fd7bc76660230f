/* mxm_moe_forward: checks every caller input once, then hands over to the plan's backend; the
 * per-expert description every backend reads the weights through. */
#include <math.h>

#include "core/core.h"
#include "moe/activation.h"
#include "moe/plan.h"

mxm_expert_desc mxm_expert_describe(const mxm_moe_plan *p, const mxm_moe_weights *w, int32_t e) {
    const mxm_moe_config *c = &p->cfg;
    const bool shared = e == p->e_loc;
    const mxm_expert_weights *x = shared ? w->shared : &w->experts[e];
    mxm_expert_desc d;
    d.w13 = x->w13, d.w13_scale = x->w13_scale, d.w2 = x->w2, d.w2_scale = x->w2_scale;
    d.I = shared ? c->shared_intermediate_size : c->intermediate_size;
    d.act = shared ? p->shared_act : c->activation;
    d.gated = mxm_act_is_gated(d.act);
    d.alpha = c->swiglu_alpha, d.beta = c->swiglu_beta, d.limit = c->swiglu_limit;
    if (!shared && w->gemm1_alpha) d.alpha = w->gemm1_alpha[e];
    if (!shared && w->gemm1_beta) d.beta = w->gemm1_beta[e];
    if (!shared && w->gemm1_clamp_limit) d.limit = w->gemm1_clamp_limit[e];
    return d;
}

static mxm_status check_expert(const mxm_moe_plan *p, const mxm_expert_weights *e, const char *what,
                               int32_t idx) {
    if (!e->w13 || !e->w2)
        return mxm_fail(MXM_ERR_NULL, "weights: %s %d has a NULL w13 or w2", what, idx);
    if (p->scheme->scale_rows && (!e->w13_scale || !e->w2_scale))
        return mxm_fail(MXM_ERR_NULL, "weights: %s %d has a NULL w13_scale or w2_scale (format %s needs scales)",
                        what, idx, p->scheme->name);
    return MXM_OK;
}

static mxm_status check_inputs(const mxm_moe_plan *p, const mxm_moe_weights *w,
                               const mxm_moe_inputs *in, const mxm_moe_outputs *out) {
    const mxm_moe_config *c = &p->cfg;
    if (!w || !in || !out) return mxm_fail(MXM_ERR_NULL, "mxm_moe_forward: weights, inputs or outputs is NULL");
    if (in->num_tokens < 0 || in->num_tokens > p->max_tokens)
        return mxm_fail(MXM_ERR_SHAPE, "num_tokens=%lld is outside 0..%lld (the plan's max_tokens)",
                        (long long)in->num_tokens, (long long)p->max_tokens);
    if (!in->x) return mxm_fail(MXM_ERR_NULL, "inputs: x is NULL");
    if (in->x_dtype != MXM_DT_F32 && in->x_dtype != MXM_DT_BF16 && in->x_dtype != MXM_DT_E4M3)
        return mxm_fail(MXM_ERR_DTYPE, "inputs: x dtype %s is not supported; supported: F32, BF16, F8_E4M3",
                        mxm_dtype_name(in->x_dtype));
    if (in->x_dtype == MXM_DT_E4M3) {
        if (!in->x_scale) return mxm_fail(MXM_ERR_NULL, "inputs: pre-quantized x needs x_scale");
        if (c->weight_format == MXM_WFMT_FP8_BLOCK ? 0 : in->x_scale_transposed)
            return mxm_fail(MXM_ERR_UNSUPPORTED, "inputs: transposed x scales exist only for fp8_block");
    }
    if (in->router_logits) {
        if (in->logits_dtype != MXM_DT_F32 && in->logits_dtype != MXM_DT_BF16)
            return mxm_fail(MXM_ERR_DTYPE, "inputs: router_logits dtype %s; supported: F32, BF16",
                            mxm_dtype_name(in->logits_dtype));
        if (in->routing_bias && in->bias_dtype != MXM_DT_F32 && in->bias_dtype != MXM_DT_BF16)
            return mxm_fail(MXM_ERR_DTYPE, "inputs: routing_bias dtype %s; supported: F32, BF16",
                            mxm_dtype_name(in->bias_dtype));
    } else if (!in->topk_ids || !in->topk_weights) {
        return mxm_fail(MXM_ERR_NULL, "inputs: give router_logits, or both topk_ids and topk_weights");
    }
    if (!out->out) return mxm_fail(MXM_ERR_NULL, "outputs: out is NULL");
    if (out->out_dtype != MXM_DT_F32 && out->out_dtype != MXM_DT_BF16)
        return mxm_fail(MXM_ERR_DTYPE, "outputs: out dtype %s; supported: F32, BF16", mxm_dtype_name(out->out_dtype));
    if (!w->experts) return mxm_fail(MXM_ERR_NULL, "weights: experts array is NULL");
    for (int32_t e = 0; e < p->e_loc; e++) {
        mxm_status st = check_expert(p, &w->experts[e], "local expert", e);
        if (st) return st;
    }
    /* Per-expert SWIGLUOAI parameters are host memory: checked like the config's (a NaN limit
     * would let every value through the clamp). */
    for (int32_t e = 0; c->activation == MXM_ACT_SWIGLUOAI && e < p->e_loc; e++) {
        if (w->gemm1_clamp_limit && !(w->gemm1_clamp_limit[e] > 0))
            return mxm_fail(MXM_ERR_INVALID_ARG, "weights: gemm1_clamp_limit[%d]=%g must be > 0", e,
                            (double)w->gemm1_clamp_limit[e]);
        if ((w->gemm1_alpha && !isfinite(w->gemm1_alpha[e])) || (w->gemm1_beta && !isfinite(w->gemm1_beta[e])))
            return mxm_fail(MXM_ERR_INVALID_ARG, "weights: gemm1_alpha/beta[%d] must be finite", e);
    }
    /* Caller-given ids in host memory (CPU backend): each token's K experts distinct and in
     * range; a repeated expert would be counted twice. */
    if (!in->router_logits && c->backend == MXM_BACKEND_CPU) {
        const int64_t K = c->top_k;
        for (int64_t t = 0; t < in->num_tokens; t++) {
            const int32_t *row = in->topk_ids + t * K;
            for (int64_t a = 0; a < K; a++) {
                if (row[a] < 0 || row[a] >= c->num_experts)
                    return mxm_fail(MXM_ERR_INVALID_ARG, "inputs: topk_ids[%lld] = %d is outside 0..%d",
                                    (long long)(t * K + a), row[a], c->num_experts - 1);
                for (int64_t b = 0; b < a; b++)
                    if (row[a] == row[b])
                        return mxm_fail(MXM_ERR_INVALID_ARG, "inputs: topk_ids row %lld names expert %d twice",
                                        (long long)t, row[a]);
            }
        }
    }
    if (c->shared_intermediate_size) {
        if (!w->shared)
            return mxm_fail(MXM_ERR_NULL, "weights: shared_intermediate_size=%d but no shared expert weights",
                            c->shared_intermediate_size);
        mxm_status st = check_expert(p, w->shared, "shared expert", 0);
        if (st) return st;
    }
    return MXM_OK;
}

mxm_status mxm_moe_forward(mxm_moe_plan *p, const mxm_moe_weights *w, const mxm_moe_inputs *in,
                           const mxm_moe_outputs *out, void *workspace, int64_t workspace_bytes,
                           void *stream) {
    if (!p) return mxm_fail(MXM_ERR_NULL, "mxm_moe_forward: plan is NULL");
    mxm_status st = check_inputs(p, w, in, out);
    if (st) return st;
    if (!workspace && p->ws_bytes > 0)
        return mxm_fail(MXM_ERR_NULL, "mxm_moe_forward: workspace is NULL");
    if (workspace_bytes < p->ws_bytes)
        return mxm_fail(MXM_ERR_WORKSPACE, "workspace has %lld bytes; the plan needs %lld",
                        (long long)workspace_bytes, (long long)p->ws_bytes);
    if ((uintptr_t)workspace % 64)
        return mxm_fail(MXM_ERR_INVALID_ARG, "workspace must be 64-byte aligned");
    if (in->num_tokens == 0) return MXM_OK;
    return p->backend->forward(p, w, in, out, workspace, stream);
}
