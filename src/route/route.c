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
    if (!isfinite(p->routed_scaling_factor))
        return mxm_fail(MXM_ERR_INVALID_ARG, "routed_scaling_factor=%g must be finite",
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

/* ---- scratch layout ------------------------------------------------------------------------ */

typedef struct route_scratch {
    uint64_t *heap; /* [max(K, G)] order keys */
    float *key;     /* [E] selection keys */
    float *val;     /* [E] unbiased sigmoid (methods 2, 7) */
    float *gscore;  /* [G] group scores (grouped DeepSeekV3) */
    uint8_t *gkeep; /* [G] kept-group flags */
} route_scratch;

static int64_t a64(int64_t n) {
    return (n + 63) & ~(int64_t)63;
}

/* Byte offsets of the scratch pieces (each 64-byte aligned); returns the total. */
static int64_t route_layout(const mxm_route_params *p, int64_t off[5]) {
    const int64_t E = p->num_experts, G = mxm_route_is_grouped(p) ? p->n_group : 0;
    const int64_t nheap = p->top_k > G ? p->top_k : G;
    const int64_t bytes[5] = {nheap * 8, E * 4, E * 4, G * 4, G};
    int64_t cur = 0;
    for (int i = 0; i < 5; i++) {
        off[i] = cur;
        cur += a64(bytes[i]);
    }
    return cur;
}

int64_t mxm_route_scratch_bytes(const mxm_route_params *p) {
    int64_t off[5];
    return route_layout(p, off);
}

/* ---- ordering and top-k -------------------------------------------------------------------- */

/* Unsigned image of v that orders like the float; NaN -> 0 (below -inf), -0 -> +0. Branchless:
 * the signs of router logits are random, a branch on them would mispredict half the time. */
static inline uint32_t order_bits(float v) {
    uint32_t u = mxm_f32_bits(v);
    const uint32_t a = u & 0x7FFFFFFFu;
    u = a ? u : 0u;
    const uint32_t m = u ^ ((uint32_t)((int32_t)u >> 31) | 0x80000000u);
    return a > 0x7F800000u ? 0u : m;
}

static inline uint64_t order_key(float v, int32_t idx) {
    return ((uint64_t)order_bits(v) << 32) | (uint64_t)(uint32_t) ~(uint32_t)idx;
}

static inline int32_t order_index(uint64_t k) {
    return (int32_t) ~(uint32_t)k;
}

static inline void heap_sift_down(uint64_t *h, int32_t n, int32_t i) {
    const uint64_t v = h[i];
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = v;
}

static inline void heap_sift_up(uint64_t *h, int32_t i) {
    const uint64_t v = h[i];
    while (i > 0) {
        const int32_t parent = (i - 1) / 2;
        if (h[parent] <= v) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = v;
}

/* Min-heap of the best `cap` order keys seen so far. */
typedef struct topk_heap {
    uint64_t *h;
    int32_t n, cap;
} topk_heap;

static inline void topk_push(topk_heap *t, uint64_t v) {
    if (t->n < t->cap) {
        t->h[t->n] = v;
        heap_sift_up(t->h, t->n++);
    } else if (v > t->h[0]) {
        t->h[0] = v;
        heap_sift_down(t->h, t->cap, 0);
    }
}

/* Heap sort of a min-heap: leaves h[0..n) in descending order. */
static void topk_sort_desc(uint64_t *h, int32_t n) {
    for (int32_t m = n - 1; m > 0; m--) {
        const uint64_t top = h[0];
        h[0] = h[m];
        h[m] = top;
        heap_sift_down(h, m, 0);
    }
}

/* Top-K of key[0..E) into heap[0..K), sorted descending. */
static void select_plain(const float *key, int32_t E, int32_t K, uint64_t *heap) {
    topk_heap t = {heap, 0, K};
    for (int32_t i = 0; i < E; i++)
        topk_push(&t, order_key(key[i], i));
    topk_sort_desc(heap, K);
}

/* DeepSeekV3 grouped top-K of u = key[0..E) into heap[0..K), sorted descending. */
static void select_grouped(const mxm_route_params *p, const float *key, uint64_t *heap,
                           float *gscore, uint8_t *gkeep) {
    const int32_t E = p->num_experts, G = p->n_group, gs = E / G;
    for (int32_t g = 0; g < G; g++) {
        const int32_t b = g * gs;
        if (gs == 1) {
            gscore[g] = key[b];
            continue;
        }
        uint64_t k1 = order_key(key[b], b), k2 = order_key(key[b + 1], b + 1);
        if (k2 > k1) {
            const uint64_t t = k1;
            k1 = k2;
            k2 = t;
        }
        for (int32_t i = b + 2; i < b + gs; i++) {
            const uint64_t k = order_key(key[i], i);
            if (k > k2) {
                if (k > k1) {
                    k2 = k1;
                    k1 = k;
                } else {
                    k2 = k;
                }
            }
        }
        gscore[g] = key[order_index(k1)] + key[order_index(k2)];
    }
    topk_heap tg = {heap, 0, p->topk_group};
    for (int32_t g = 0; g < G; g++)
        topk_push(&tg, order_key(gscore[g], g));
    memset(gkeep, 0, (size_t)G);
    for (int32_t j = 0; j < p->topk_group; j++)
        gkeep[order_index(heap[j])] = 1;
    topk_heap t = {heap, 0, p->top_k};
    for (int32_t g = 0; g < G; g++) {
        if (!gkeep[g]) continue;
        for (int32_t i = g * gs; i < (g + 1) * gs; i++)
            topk_push(&t, order_key(key[i], i));
    }
    topk_sort_desc(heap, p->top_k);
}

/* ---- per-row math -------------------------------------------------------------------------- */

static inline float sigmoid_f32(float x) {
    return 1.0f / (1.0f + expf(-x));
}

static inline float load_f(const void *src, int32_t dtype, int64_t i) {
    return dtype == MXM_DT_F32 ? ((const float *)src)[i]
                               : mxm_bf16_decode(((const uint16_t *)src)[i]);
}

/* p[i] = softmax(z)[i] in place (see route.h for the exact formula). */
static void softmax_inplace(float *z, int32_t E) {
    float m = -INFINITY;
    for (int32_t i = 0; i < E; i++)
        if (z[i] > m) m = z[i];
    double sum = 0.0;
    for (int32_t i = 0; i < E; i++) {
        const float e = expf(z[i] - m);
        z[i] = e;
        sum += (double)e;
    }
    for (int32_t i = 0; i < E; i++)
        z[i] = (float)((double)z[i] / sum);
}

void mxm_route_rows(const mxm_route_params *p, const void *logits, int32_t logits_dtype,
                    const void *bias, int32_t bias_dtype, int64_t t0, int64_t t1, int32_t *ids,
                    float *weights, void *scratch) {
    MXM_ASSERT(p && logits && ids && weights && scratch);
    MXM_ASSERT(((uintptr_t)scratch & 7u) == 0);
    MXM_ASSERT(logits_dtype == MXM_DT_F32 || logits_dtype == MXM_DT_BF16);
    MXM_ASSERT(!bias || bias_dtype == MXM_DT_F32 || bias_dtype == MXM_DT_BF16);
    int64_t off[5];
    route_layout(p, off);
    char *base = (char *)scratch;
    const route_scratch s = {(uint64_t *)(void *)(base + off[0]), (float *)(void *)(base + off[1]),
                             (float *)(void *)(base + off[2]), (float *)(void *)(base + off[3]),
                             (uint8_t *)(base + off[4])};
    const int32_t E = p->num_experts, K = p->top_k, method = p->method;
    const int grouped = mxm_route_is_grouped(p);
    const int round_bias = grouped && p->profile == MXM_PROFILE_TRTLLM;
    const int round_weights = p->profile == MXM_PROFILE_TRTLLM;
    const int use_bias = bias && (method == MXM_ROUTE_DEEPSEEK_V3 || method == MXM_ROUTE_MINIMAX2);
    float *key = s.key, *val = s.val;
    uint64_t *heap = s.heap;

    for (int64_t t = t0; t < t1; t++) {
        const int64_t row = t * (int64_t)E;
        if (logits_dtype == MXM_DT_F32) {
            memcpy(key, (const float *)logits + row, (size_t)E * sizeof(float));
        } else {
            const uint16_t *lb = (const uint16_t *)logits + row;
            for (int32_t i = 0; i < E; i++)
                key[i] = mxm_bf16_decode(lb[i]);
        }

        /* selection keys */
        switch (method) {
        case MXM_ROUTE_DEFAULT:
        case MXM_ROUTE_RENORMALIZE_NAIVE:
            softmax_inplace(key, E);
            break;
        case MXM_ROUTE_SIGMOID_RENORM:
        case MXM_ROUTE_SIGMOID:
            for (int32_t i = 0; i < E; i++)
                key[i] = sigmoid_f32(key[i]);
            break;
        case MXM_ROUTE_DEEPSEEK_V3:
        case MXM_ROUTE_MINIMAX2:
            for (int32_t i = 0; i < E; i++) {
                const float sg = sigmoid_f32(key[i]);
                val[i] = sg;
                float b = 0.0f;
                if (use_bias) {
                    b = load_f(bias, bias_dtype, i);
                    if (round_bias) b = mxm_round_bf16(b);
                }
                key[i] = use_bias ? sg + b : sg;
            }
            break;
        default: /* renormalize, llama4, topk, topk_sigmoid: the logits themselves */
            break;
        }

        if (grouped)
            select_grouped(p, key, heap, s.gscore, s.gkeep);
        else
            select_plain(key, E, K, heap);

        int32_t *id = ids + t * (int64_t)K;
        float *w = weights + t * (int64_t)K;
        for (int32_t j = 0; j < K; j++)
            id[j] = order_index(heap[j]);

        /* weights */
        switch (method) {
        case MXM_ROUTE_DEFAULT:
        case MXM_ROUTE_TOPK:
        case MXM_ROUTE_SIGMOID:
            for (int32_t j = 0; j < K; j++)
                w[j] = key[id[j]];
            break;
        case MXM_ROUTE_SIGMOID_RENORM:
            if (p->norm_topk_prob) {
                double sum = 0.0;
                for (int32_t j = 0; j < K; j++)
                    sum += (double)key[id[j]];
                const double den = sum < 1e-20 ? 1e-20 : sum; /* NaN stays NaN */
                for (int32_t j = 0; j < K; j++)
                    w[j] = (float)((double)key[id[j]] / den);
            } else {
                for (int32_t j = 0; j < K; j++)
                    w[j] = key[id[j]];
            }
            break;
        case MXM_ROUTE_RENORMALIZE: {
            const float m = key[id[0]]; /* the largest selected logit (NaN only if all are) */
            double sum = 0.0;
            for (int32_t j = 0; j < K; j++) {
                w[j] = expf(key[id[j]] - m);
                sum += (double)w[j];
            }
            for (int32_t j = 0; j < K; j++)
                w[j] = (float)((double)w[j] / sum);
            break;
        }
        case MXM_ROUTE_RENORMALIZE_NAIVE: {
            double sum = 0.0;
            for (int32_t j = 0; j < K; j++)
                sum += (double)key[id[j]];
            for (int32_t j = 0; j < K; j++)
                w[j] = (float)((double)key[id[j]] / sum);
            break;
        }
        case MXM_ROUTE_DEEPSEEK_V3:
        case MXM_ROUTE_MINIMAX2: {
            double sum = 0.0;
            for (int32_t j = 0; j < K; j++)
                sum += (double)val[id[j]];
            const double den = sum + 1e-20, S = (double)p->routed_scaling_factor;
            for (int32_t j = 0; j < K; j++)
                w[j] = (float)(S * (double)val[id[j]] / den);
            break;
        }
        case MXM_ROUTE_LLAMA4:
        case MXM_ROUTE_TOPK_SIGMOID:
            for (int32_t j = 0; j < K; j++)
                w[j] = sigmoid_f32(key[id[j]]);
            break;
        default:
            MXM_ASSERT(0);
        }
        if (round_weights)
            for (int32_t j = 0; j < K; j++)
                w[j] = mxm_round_bf16(w[j]);
    }
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
