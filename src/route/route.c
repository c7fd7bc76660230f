/* Routing (SPEC section 3). See route.h for the numeric decisions.
 *
 * Selection works on 64-bit order keys: the high half maps the fp32 key to an unsigned integer
 * that orders like the float (NaN lowest, -0 == +0), the low half is ~index, so a plain integer
 * comparison gives "higher key first, ties to the lower index". Top-K is a size-K min-heap over
 * those keys (O(E log K)) followed by an in-place heap sort of the K survivors. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/core.h"
#include "formats/formats.h"
#include "route/route.h"
#include "route/route_core.h"

/* Below this many logits in total a single thread routes everything. */
#define MXM_ROUTE_PARALLEL_MIN_ELEMS (1 << 15)

/* ---- names --------------------------------------------------------------------------------- */

static const char *const method_names[MXM_ROUTE_COUNT_] = {
    "default", "renormalize",    "deepseek_v3", "llama4",  "renormalize_naive",
    "topk",    "sigmoid_renorm", "minimax2",    "sigmoid", "topk_sigmoid",
};

#define MXM_ROUTE_NAMES_LIST                                                                       \
    "default (0), renormalize (1), deepseek_v3 (2), llama4 (3), renormalize_naive (4), "           \
    "topk (5), sigmoid_renorm (6), minimax2 (7), sigmoid (8), topk_sigmoid (9)"

const char *mxm_routing_method_name(int32_t method) {
    return (method >= 0 && method < MXM_ROUTE_COUNT_) ? method_names[method] : NULL;
}

int32_t mxm_routing_method_from_name(const char *name) {
    if (!name) return -1;
    for (int32_t i = 0; i < MXM_ROUTE_COUNT_; i++)
        if (strcmp(name, method_names[i]) == 0) return i;
    return -1;
}

/* ---- parameters ---------------------------------------------------------------------------- */

void mxm_route_params_from_config(const mxm_moe_config *cfg, mxm_route_params *p) {
    p->num_experts = cfg->num_experts;
    p->top_k = cfg->top_k;
    p->n_group = cfg->n_group;
    p->topk_group = cfg->topk_group;
    p->method = cfg->routing_method;
    p->routed_scaling_factor = cfg->routed_scaling_factor;
    p->norm_topk_prob = cfg->norm_topk_prob;
    p->profile = cfg->profile;
}

mxm_status mxm_route_check(const mxm_route_params *p) {
    if (!p) return mxm_fail(MXM_ERR_NULL, "routing parameters are NULL");
    const int32_t E = p->num_experts, K = p->top_k, G = p->n_group, TG = p->topk_group;
    if (p->method < 0 || p->method >= MXM_ROUTE_COUNT_)
        return mxm_fail(MXM_ERR_INVALID_ARG,
                        "routing_method=%d is unknown; supported: " MXM_ROUTE_NAMES_LIST,
                        p->method);
    if (E < 1) return mxm_fail(MXM_ERR_SHAPE, "num_experts=%d must be >= 1", E);
    if (K < 1) return mxm_fail(MXM_ERR_SHAPE, "top_k=%d must be >= 1", K);
    if (K > E) return mxm_fail(MXM_ERR_SHAPE, "top_k=%d > num_experts=%d", K, E);
    if (p->method == MXM_ROUTE_LLAMA4 && K != 1)
        return mxm_fail(MXM_ERR_UNSUPPORTED, "routing_method=llama4 requires top_k=1, got top_k=%d",
                        K);
    if (p->profile != MXM_PROFILE_TRTLLM && p->profile != MXM_PROFILE_EXACT)
        return mxm_fail(MXM_ERR_INVALID_ARG,
                        "profile=%d is unknown; supported: trtllm (0), exact (1)", p->profile);
    /* negative or zero would flip or erase the routed sum: no model does that */
    if (!isfinite(p->routed_scaling_factor) || !(p->routed_scaling_factor > 0))
        return mxm_fail(MXM_ERR_INVALID_ARG, "routed_scaling_factor=%g must be finite and > 0",
                        (double)p->routed_scaling_factor);
    if (G < 0)
        return mxm_fail(MXM_ERR_INVALID_ARG, "n_group=%d must be >= 0 (0 or 1: no grouping)", G);
    if (TG < 0)
        return mxm_fail(MXM_ERR_INVALID_ARG, "topk_group=%d must be >= 0 (0 or 1: no grouping)",
                        TG);
    if (G <= 1) {
        if (TG > 1)
            return mxm_fail(
                MXM_ERR_INVALID_ARG,
                "topk_group=%d > n_group=%d; without grouping topk_group must be 0 or 1", TG, G);
        return MXM_OK;
    }
    if (p->method != MXM_ROUTE_DEEPSEEK_V3)
        return mxm_fail(MXM_ERR_UNSUPPORTED,
                        "n_group=%d: grouped top-k is only defined for routing_method=deepseek_v3 "
                        "(got %s); use n_group 0 or 1",
                        G, method_names[p->method]);
    if (E % G != 0)
        return mxm_fail(MXM_ERR_SHAPE, "num_experts=%d is not a multiple of n_group=%d", E, G);
    if (TG < 1)
        return mxm_fail(MXM_ERR_INVALID_ARG,
                        "topk_group=%d must be in 1..n_group=%d when n_group > 1", TG, G);
    if (TG > G) return mxm_fail(MXM_ERR_INVALID_ARG, "topk_group=%d > n_group=%d", TG, G);
    const int64_t kept = (int64_t)TG * (E / G);
    if (K > kept)
        return mxm_fail(
            MXM_ERR_SHAPE,
            "top_k=%d > topk_group=%d * (num_experts=%d / n_group=%d) = %lld experts in "
            "the kept groups",
            K, TG, E, G, (long long)kept);
    return MXM_OK;
}

/* ---- rows ------------------------------------------------------------------------------------ */

int64_t mxm_route_scratch_bytes(const mxm_route_params *p) {
    int64_t off[5];
    return mxm_route_layout(p, off);
}

void mxm_route_rows(const mxm_route_params *p, const void *logits, int32_t logits_dtype,
                    const void *bias, int32_t bias_dtype, int64_t t0, int64_t t1, int32_t *ids,
                    float *weights, void *scratch) {
    MXM_ASSERT(p && logits && ids && weights && scratch);
    MXM_ASSERT(((uintptr_t)scratch & 7u) == 0);
    MXM_ASSERT(logits_dtype == MXM_DT_F32 || logits_dtype == MXM_DT_BF16);
    MXM_ASSERT(!bias || bias_dtype == MXM_DT_F32 || bias_dtype == MXM_DT_BF16);
    for (int64_t t = t0; t < t1; t++)
        mxm_route_token(p, logits, logits_dtype, bias, bias_dtype, t, ids, weights, scratch);
}

/* ---- public entry point -------------------------------------------------------------------- */

static mxm_status check_dtype(int32_t dt, const char *what) {
    if (dt != MXM_DT_F32 && dt != MXM_DT_BF16)
        return mxm_fail(
            MXM_ERR_DTYPE,
            "mxm_route: %s dtype %d (%s) is not supported; supported: F32 (0), BF16 (1)", what, dt,
            mxm_dtype_name(dt));
    return MXM_OK;
}

mxm_status mxm_route(const mxm_moe_config *cfg, int64_t num_tokens, const void *logits,
                     int32_t logits_dtype, const void *bias, int32_t bias_dtype, int32_t *ids,
                     float *weights) {
    if (!cfg) return mxm_fail(MXM_ERR_NULL, "mxm_route: cfg is NULL");
    if (!logits) return mxm_fail(MXM_ERR_NULL, "mxm_route: logits is NULL");
    if (!ids) return mxm_fail(MXM_ERR_NULL, "mxm_route: ids is NULL");
    if (!weights) return mxm_fail(MXM_ERR_NULL, "mxm_route: weights is NULL");
    mxm_route_params p;
    mxm_route_params_from_config(cfg, &p);
    mxm_status st = mxm_route_check(&p);
    if (st) return mxm_fail_context(st, "mxm_route");
    if ((st = check_dtype(logits_dtype, "logits"))) return st;
    if (bias && (st = check_dtype(bias_dtype, "bias"))) return st;
    if (num_tokens < 0)
        return mxm_fail(MXM_ERR_SHAPE, "mxm_route: num_tokens=%lld must be >= 0",
                        (long long)num_tokens);
    if (cfg->num_threads < 0)
        return mxm_fail(MXM_ERR_INVALID_ARG, "mxm_route: num_threads=%d must be >= 0 (0 = all)",
                        cfg->num_threads);
    if (mxm_mul3_i64(num_tokens, p.num_experts, 4) < 0 || mxm_mul3_i64(num_tokens, p.top_k, 4) < 0)
        return mxm_fail(MXM_ERR_OVERFLOW,
                        "mxm_route: num_tokens=%lld x num_experts=%d overflows the byte count",
                        (long long)num_tokens, p.num_experts);
    if (num_tokens == 0) return MXM_OK;

    int64_t nt = mxm_threads(cfg->num_threads);
    if (nt > num_tokens) nt = num_tokens;
    if (num_tokens * p.num_experts < MXM_ROUTE_PARALLEL_MIN_ELEMS) nt = 1;
    const int64_t stride = mxm_route_scratch_bytes(&p);
    int64_t total;
    if (!mxm_mul_i64(stride, nt, &total))
        return mxm_fail(MXM_ERR_OVERFLOW, "mxm_route: scratch %lld x %lld threads overflows",
                        (long long)stride, (long long)nt);
    char *scratch = malloc((size_t)total);
    if (!scratch)
        return mxm_fail(MXM_ERR_NOMEM, "mxm_route: cannot allocate %lld bytes of scratch",
                        (long long)total);
    if (nt == 1) {
        mxm_route_rows(&p, logits, logits_dtype, bias, bias_dtype, 0, num_tokens, ids, weights,
                       scratch);
    } else {
#pragma omp parallel num_threads((int)nt)
        {
#ifdef _OPENMP
            const int64_t tid = omp_get_thread_num(), team = omp_get_num_threads();
#else
            const int64_t tid = 0, team = 1;
#endif
            const int64_t chunk = (num_tokens + team - 1) / team;
            const int64_t a = tid * chunk;
            const int64_t b = a + chunk < num_tokens ? a + chunk : num_tokens;
            if (a < b)
                mxm_route_rows(&p, logits, logits_dtype, bias, bias_dtype, a, b, ids, weights,
                               scratch + tid * stride);
        }
    }
    free(scratch);
    return MXM_OK;
}
