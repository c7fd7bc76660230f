/* Expert parallelism, the host pieces (always built): expert slices, the dispatch plan, the
 * combine, and the configs of the two local forwards a rank runs. The NCCL driver
 * (ep_nccl.cu) and the tests' simulated ranks both build the layer from these. */
#include <string.h>

#include "core/core.h"
#include "formats/formats.h"

mxm_status mxm_ep_expert_slice(int32_t E, int32_t N, int32_t rank, int32_t *offset,
                               int32_t *count) {
    if (!offset || !count)
        return mxm_fail(MXM_ERR_NULL, "mxm_ep_expert_slice: offset or count is NULL");
    if (E < 1 || N < 1 || rank < 0 || rank >= N)
        return mxm_fail(MXM_ERR_INVALID_ARG,
                        "mxm_ep_expert_slice: E=%d, world_size=%d, rank=%d (need E >= 1, "
                        "world_size >= 1, 0 <= rank < world_size)",
                        E, N, rank);
    const int32_t base = E / N, extra = E % N;
    *count = base + (rank < extra);
    *offset = rank * base + (rank < extra ? rank : extra);
    return MXM_OK;
}

/* Rank holding global expert e: the last r with rank_offsets[r] <= e and a non-empty slice. */
static int32_t rank_of(const int32_t *ro, int32_t N, int32_t e) {
    int32_t lo = 0, hi = N - 1; /* invariant: ro[lo] <= e < ro[hi + 1] */
    while (lo < hi) {
        const int32_t mid = (lo + hi + 1) / 2;
        if (ro[mid] <= e)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

mxm_status mxm_ep_dispatch_plan(const int32_t *ids, int64_t T, int32_t K, int32_t N,
                                const int32_t *ro, int64_t *send_counts, int64_t *send_offsets,
                                int32_t *send_src, int32_t *pos) {
    if (!ro || !send_counts || !send_offsets || (T > 0 && (!ids || !send_src || !pos)))
        return mxm_fail(MXM_ERR_NULL, "mxm_ep_dispatch_plan: a required pointer is NULL");
    if (T < 0 || K < 1 || N < 1)
        return mxm_fail(MXM_ERR_SHAPE,
                        "mxm_ep_dispatch_plan: num_tokens=%lld, top_k=%d, world_size=%d",
                        (long long)T, K, N);
    if (T * K > INT32_MAX)
        return mxm_fail(MXM_ERR_OVERFLOW,
                        "mxm_ep_dispatch_plan: num_tokens*top_k = %lld exceeds int32",
                        (long long)T * K);
    if (ro[0] != 0)
        return mxm_fail(MXM_ERR_INVALID_ARG, "mxm_ep_dispatch_plan: rank_offsets[0] = %d, not 0",
                        ro[0]);
    for (int32_t r = 0; r < N; r++)
        if (ro[r + 1] < ro[r])
            return mxm_fail(MXM_ERR_INVALID_ARG,
                            "mxm_ep_dispatch_plan: rank_offsets decrease at rank %d (%d > %d)", r,
                            ro[r], ro[r + 1]);
    const int32_t E = ro[N];
    if (E < 1)
        return mxm_fail(MXM_ERR_INVALID_ARG, "mxm_ep_dispatch_plan: the slices hold no experts");
    const int64_t n = T * K;
    for (int32_t r = 0; r < N; r++)
        send_counts[r] = 0;
    /* pos first holds each row's destination rank, then its send row. */
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= E)
            return mxm_fail(MXM_ERR_INVALID_ARG,
                            "mxm_ep_dispatch_plan: ids[%lld] = %d is outside 0..%d", (long long)i,
                            ids[i], E - 1);
        const int32_t r = rank_of(ro, N, ids[i]);
        pos[i] = r;
        send_counts[r]++;
    }
    send_offsets[0] = 0;
    for (int32_t r = 0; r < N; r++)
        send_offsets[r + 1] = send_offsets[r] + send_counts[r];
    /* Stable counting sort by destination: within a rank, (t, k) order. The cursor of rank r
     * is send_offsets[r] + (rows of r placed so far); send_offsets is restored at the end. */
    for (int64_t i = 0; i < n; i++) {
        const int32_t r = pos[i];
        const int64_t j = send_offsets[r]++;
        send_src[j] = (int32_t)i;
        pos[i] = (int32_t)j;
    }
    for (int32_t r = N; r > 0; r--)
        send_offsets[r] = send_offsets[r - 1];
    send_offsets[0] = 0;
    return MXM_OK;
}

static float load_f(const void *p, int32_t dtype, int64_t i) {
    return dtype == MXM_DT_F32 ? ((const float *)p)[i] : mxm_bf16_decode(((const uint16_t *)p)[i]);
}

/* n values of v to dst[i0..i0+n) in dtype (bf16: round to nearest even). */
static void store_chunk(void *dst, int32_t dtype, int64_t i0, const float *v, int64_t n) {
    if (dtype == MXM_DT_F32) {
        memcpy((float *)dst + i0, v, (size_t)n * 4);
    } else {
        uint16_t *o = (uint16_t *)dst + i0;
        for (int64_t i = 0; i < n; i++)
            o[i] = mxm_bf16_rne(v[i]);
    }
}

static bool float_dtype(int32_t dt) {
    return dt == MXM_DT_F32 || dt == MXM_DT_BF16;
}

mxm_status mxm_ep_combine(int64_t T, int32_t K, int32_t H, const float *weights, const int32_t *pos,
                          const void *y, int32_t y_dtype, const void *shared, int32_t shared_dtype,
                          void *out, void *out_routed, int32_t out_dtype) {
    if (T < 0 || K < 1 || H < 1)
        return mxm_fail(MXM_ERR_SHAPE, "mxm_ep_combine: num_tokens=%lld, top_k=%d, hidden_size=%d",
                        (long long)T, K, H);
    if (T == 0) return MXM_OK;
    if (!weights || !pos || !y || !out)
        return mxm_fail(MXM_ERR_NULL, "mxm_ep_combine: a required pointer is NULL");
    if (!float_dtype(y_dtype) || !float_dtype(out_dtype) || (shared && !float_dtype(shared_dtype)))
        return mxm_fail(MXM_ERR_DTYPE,
                        "mxm_ep_combine: y, shared and out dtypes must be F32 or BF16");
    const int64_t n = T * K;
    for (int64_t i = 0; i < n; i++)
        if (pos[i] < 0 || pos[i] >= n)
            return mxm_fail(MXM_ERR_INVALID_ARG,
                            "mxm_ep_combine: pos[%lld] = %d is outside 0..%lld", (long long)i,
                            pos[i], (long long)n - 1);
    const int nthr = mxm_threads(0);
#pragma omp parallel num_threads(T < nthr ? (int)T : nthr)
    {
        float acc[256];
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) {
            /* Columns in chunks of 256; every column's sum runs k in order, as the layer's. */
            for (int64_t c0 = 0; c0 < H; c0 += 256) {
                const int64_t nc = H - c0 < 256 ? H - c0 : 256;
                for (int64_t i = 0; i < nc; i++)
                    acc[i] = 0.0f;
                for (int64_t k = 0; k < K; k++) {
                    const float w = weights[t * K + k];
                    const int64_t row = (int64_t)pos[t * K + k] * H + c0;
                    for (int64_t i = 0; i < nc; i++)
                        acc[i] += w * load_f(y, y_dtype, row + i);
                }
                const int64_t i0 = t * H + c0;
                if (out_routed) store_chunk(out_routed, out_dtype, i0, acc, nc);
                if (shared)
                    for (int64_t i = 0; i < nc; i++)
                        acc[i] += load_f(shared, shared_dtype, i0 + i);
                store_chunk(out, out_dtype, i0, acc, nc);
            }
        }
    }
    return MXM_OK;
}

/* The fields a derived config shares with the global one: shapes, formats, numerics, backend. */
static mxm_status check_global(const mxm_moe_config *g, const mxm_moe_config *out, const char *fn) {
    if (!g || !out) return mxm_fail(MXM_ERR_NULL, "%s: config is NULL", fn);
    return mxm_moe_config_validate(g);
}

/* Routing fields that a caller-ids forward with top_k 1 accepts whatever the global method. */
static void no_routing(mxm_moe_config *c) {
    c->top_k = 1;
    c->routing_method = MXM_ROUTE_RENORMALIZE;
    c->n_group = 0, c->topk_group = 0;
    c->routed_scaling_factor = 1.0f;
    c->norm_topk_prob = 1;
}

mxm_status mxm_ep_expert_config(const mxm_moe_config *g, int32_t offset, int32_t count,
                                mxm_moe_config *out) {
    mxm_status st = check_global(g, out, "mxm_ep_expert_config");
    if (st) return st;
    if (count < 1 || offset < 0 || (int64_t)offset + count > g->num_experts)
        return mxm_fail(
            MXM_ERR_SHAPE,
            "mxm_ep_expert_config: slice [%d, %d + %d) is empty or outside the %d experts", offset,
            offset, count, g->num_experts);
    *out = *g;
    no_routing(out);
    out->local_expert_offset = offset, out->local_num_experts = count;
    out->shared_intermediate_size = 0, out->shared_activation = -1;
    return MXM_OK;
}

mxm_status mxm_ep_shared_config(const mxm_moe_config *g, mxm_moe_config *out) {
    mxm_status st = check_global(g, out, "mxm_ep_shared_config");
    if (st) return st;
    if (g->shared_intermediate_size == 0)
        return mxm_fail(MXM_ERR_INVALID_ARG,
                        "mxm_ep_shared_config: the config has no shared expert");
    *out = *g;
    no_routing(out);
    out->num_experts = 1;
    out->local_expert_offset = 0, out->local_num_experts = 0;
    out->intermediate_size = g->shared_intermediate_size;
    out->activation = g->shared_activation >= 0 ? g->shared_activation : g->activation;
    out->shared_intermediate_size = 0, out->shared_activation = -1;
    return MXM_OK;
}

int32_t mxm_ep_return_dtype(const mxm_moe_config *g) {
    return g && g->profile == MXM_PROFILE_EXACT ? MXM_DT_F32 : MXM_DT_BF16;
}
