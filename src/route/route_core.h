/* The per-token routing computation (SPEC section 3), shared by the host (route.c) and the
 * CUDA backend (src/cuda/route.cu, permute.cu): every function is MXM_HD, with no libc calls but
 * math, and every name starts with mxm_route_ (this header is included into other files).
 * See route.h for the numeric decisions. */
#ifndef MXM_ROUTE_CORE_H
#define MXM_ROUTE_CORE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "formats/formats.h"
#include "route/route.h"

/* True when p uses DeepSeekV3 grouped selection (method 2 with n_group > 1). */
MXM_HD int mxm_route_grouped(const mxm_route_params *p) {
    return p->method == MXM_ROUTE_DEEPSEEK_V3 && p->n_group > 1;
}

/* ---- scratch layout ------------------------------------------------------------------------ */

typedef struct mxm_route_scratch {
    uint64_t *heap; /* [max(K, G)] order keys */
    float *key;     /* [E] selection keys */
    float *val;     /* [E] unbiased sigmoid (methods 2, 7) */
    float *gscore;  /* [G] group scores (grouped DeepSeekV3) */
    uint8_t *gkeep; /* [G] kept-group flags */
} mxm_route_scratch;

MXM_HD int64_t mxm_route_a64(int64_t n) {
    return (n + 63) & ~(int64_t)63;
}

/* Byte offsets of the scratch pieces (each 64-byte aligned); returns the total. */
MXM_HD int64_t mxm_route_layout(const mxm_route_params *p, int64_t off[5]) {
    const int64_t E = p->num_experts, G = mxm_route_grouped(p) ? p->n_group : 0;
    const int64_t nheap = p->top_k > G ? p->top_k : G;
    const int64_t bytes[5] = {nheap * 8, E * 4, E * 4, G * 4, G};
    int64_t cur = 0;
    for (int i = 0; i < 5; i++) {
        off[i] = cur;
        cur += mxm_route_a64(bytes[i]);
    }
    return cur;
}


/* ---- ordering and top-k -------------------------------------------------------------------- */

/* Unsigned image of v that orders like the float; NaN -> 0 (below -inf), -0 -> +0. Branchless:
 * the signs of router logits are random, a branch on them would mispredict half the time. */
MXM_HD uint32_t mxm_route_order_bits(float v) {
    uint32_t u = mxm_f32_bits(v);
    const uint32_t a = u & 0x7FFFFFFFu;
    u = a ? u : 0u;
    const uint32_t m = u ^ ((uint32_t)((int32_t)u >> 31) | 0x80000000u);
    return a > 0x7F800000u ? 0u : m;
}

MXM_HD uint64_t mxm_route_order_key(float v, int32_t idx) {
    return ((uint64_t)mxm_route_order_bits(v) << 32) | (uint64_t)(uint32_t) ~(uint32_t)idx;
}

MXM_HD int32_t mxm_route_order_index(uint64_t k) {
    return (int32_t) ~(uint32_t)k;
}

MXM_HD void mxm_route_heap_sift_down(uint64_t *h, int32_t n, int32_t i) {
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

MXM_HD void mxm_route_heap_sift_up(uint64_t *h, int32_t i) {
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
typedef struct mxm_route_topk_heap {
    uint64_t *h;
    int32_t n, cap;
} mxm_route_topk_heap;

MXM_HD void mxm_route_topk_push(mxm_route_topk_heap *t, uint64_t v) {
    if (t->n < t->cap) {
        t->h[t->n] = v;
        mxm_route_heap_sift_up(t->h, t->n++);
    } else if (v > t->h[0]) {
        t->h[0] = v;
        mxm_route_heap_sift_down(t->h, t->cap, 0);
    }
}

/* Heap sort of a min-heap: leaves h[0..n) in descending order. */
MXM_HD void mxm_route_topk_sort_desc(uint64_t *h, int32_t n) {
    for (int32_t m = n - 1; m > 0; m--) {
        const uint64_t top = h[0];
        h[0] = h[m];
        h[m] = top;
        mxm_route_heap_sift_down(h, m, 0);
    }
}

/* Top-K of key[0..E) into heap[0..K), sorted descending. */
MXM_HD void mxm_route_select_plain(const float *key, int32_t E, int32_t K, uint64_t *heap) {
    mxm_route_topk_heap t = {heap, 0, K};
    for (int32_t i = 0; i < E; i++)
        mxm_route_topk_push(&t, mxm_route_order_key(key[i], i));
    mxm_route_topk_sort_desc(heap, K);
}

/* One lane's share of a warp-wide pick (the device's route_warp.cuh): the largest order key below
 * `below` among keys[i] for i = lane, lane + nlanes, ... < n (where keep is given, only those with
 * keep[i / per]), or 0 when there is none (every order key of an index below 2^32 - 1 is above 0).
 * The pick is the maximum over the lanes; K picks, each below the last, select what
 * mxm_route_select_plain's heap does, in the same order, because the order is total. */
MXM_HD uint64_t mxm_route_lane_pick(const float *keys, int32_t n, uint64_t below,
                                    const uint8_t *keep, int32_t per, int32_t lane,
                                    int32_t nlanes) {
    uint64_t best = 0;
    for (int32_t i = lane; i < n; i += nlanes) {
        if (keep && !keep[i / per]) continue;
        const uint64_t k = mxm_route_order_key(keys[i], i);
        if (k < below && k > best) best = k;
    }
    return best;
}

/* DeepSeekV3 group score of the gs keys key[b..b+gs): the fp32 sum of the two largest (the key
 * itself when gs is 1). */
MXM_HD float mxm_route_group_score(const float *key, int32_t b, int32_t gs) {
    if (gs == 1) return key[b];
    uint64_t k1 = mxm_route_order_key(key[b], b), k2 = mxm_route_order_key(key[b + 1], b + 1);
    if (k2 > k1) {
        const uint64_t t = k1;
        k1 = k2;
        k2 = t;
    }
    for (int32_t i = b + 2; i < b + gs; i++) {
        const uint64_t k = mxm_route_order_key(key[i], i);
        if (k > k2) {
            if (k > k1) {
                k2 = k1;
                k1 = k;
            } else {
                k2 = k;
            }
        }
    }
    return key[mxm_route_order_index(k1)] + key[mxm_route_order_index(k2)];
}

/* DeepSeekV3 grouped top-K of u = key[0..E) into heap[0..K), sorted descending. */
MXM_HD void mxm_route_select_grouped(const mxm_route_params *p, const float *key, uint64_t *heap,
                                     float *gscore, uint8_t *gkeep) {
    const int32_t E = p->num_experts, G = p->n_group, gs = E / G;
    for (int32_t g = 0; g < G; g++)
        gscore[g] = mxm_route_group_score(key, g * gs, gs);
    mxm_route_topk_heap tg = {heap, 0, p->topk_group};
    for (int32_t g = 0; g < G; g++)
        mxm_route_topk_push(&tg, mxm_route_order_key(gscore[g], g));
    for (int32_t g = 0; g < G; g++) gkeep[g] = 0;
    for (int32_t j = 0; j < p->topk_group; j++)
        gkeep[mxm_route_order_index(heap[j])] = 1;
    mxm_route_topk_heap t = {heap, 0, p->top_k};
    for (int32_t g = 0; g < G; g++) {
        if (!gkeep[g]) continue;
        for (int32_t i = g * gs; i < (g + 1) * gs; i++)
            mxm_route_topk_push(&t, mxm_route_order_key(key[i], i));
    }
    mxm_route_topk_sort_desc(heap, p->top_k);
}

/* ---- per-row math -------------------------------------------------------------------------- */

/* Logits and bias from the caller: on the host at any address (memcpy loads: a misaligned
 * pointer is valid input there); device buffers come from cudaMalloc, aligned. */
MXM_HD float mxm_route_load_f(const void *src, int32_t dtype, int64_t i) {
#ifdef __CUDA_ARCH__
    return dtype == MXM_DT_F32 ? ((const float *)src)[i]
                               : mxm_bf16_decode(((const uint16_t *)src)[i]);
#else
    if (dtype == MXM_DT_F32) {
        float f;
        memcpy(&f, (const char *)src + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, (const char *)src + 2 * i, 2);
    return mxm_bf16_decode(h);
#endif
}

/* p[i] = softmax(z)[i] in place (see route.h for the exact formula). */
MXM_HD void mxm_route_softmax_inplace(float *z, int32_t E) {
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

/* True when p's selection keys are the softmax of the logits (methods 0 and 3). */
MXM_HD int mxm_route_softmax_keys(const mxm_route_params *p) {
    return p->method == MXM_ROUTE_DEFAULT || p->method == MXM_ROUTE_RENORMALIZE_NAIVE;
}

/* The selection key of logit z of expert i before any softmax (softmax methods: z itself); *val
 * gets the unbiased sigmoid for methods 2 and 7 (untouched otherwise). */
MXM_HD float mxm_route_prekey(const mxm_route_params *p, const void *bias, int32_t bias_dtype,
                              int32_t i, float z, float *val) {
    switch (p->method) {
    case MXM_ROUTE_SIGMOID_RENORM:
    case MXM_ROUTE_SIGMOID:
        return mxm_sigmoidf(z);
    case MXM_ROUTE_DEEPSEEK_V3:
    case MXM_ROUTE_MINIMAX2: {
        const float sg = mxm_sigmoidf(z);
        *val = sg;
        if (!bias) return sg;
        float b = mxm_route_load_f(bias, bias_dtype, i);
        if (mxm_route_grouped(p) && p->profile == MXM_PROFILE_TRTLLM) b = mxm_round_bf16(b);
        return sg + b;
    }
    default: /* softmax methods (applied after), renormalize, llama4, topk, topk_sigmoid */
        return z;
    }
}

/* ids and weights of one token from its selection (heap[0..K), descending order keys), its keys
 * and (methods 2, 7) unbiased sigmoids. */
MXM_HD void mxm_route_weights(const mxm_route_params *p, const float *key, const float *val,
                              const uint64_t *heap, int32_t *id, float *w) {
    const int32_t K = p->top_k;
    for (int32_t j = 0; j < K; j++)
        id[j] = mxm_route_order_index(heap[j]);
    switch (p->method) {
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
            w[j] = mxm_sigmoidf(key[id[j]]);
        break;
    default: /* unreachable: p was checked */
        break;
    }
    if (p->profile == MXM_PROFILE_TRTLLM)
        for (int32_t j = 0; j < K; j++)
            w[j] = mxm_round_bf16(w[j]);
}

/* The scratch pieces of one token (mxm_route_layout). */
MXM_HD mxm_route_scratch mxm_route_scratch_at(const mxm_route_params *p, void *scratch) {
    int64_t off[5];
    mxm_route_layout(p, off);
    char *base = (char *)scratch;
    const mxm_route_scratch s = {(uint64_t *)(void *)(base + off[0]),
                                 (float *)(void *)(base + off[1]), (float *)(void *)(base + off[2]),
                                 (float *)(void *)(base + off[3]), (uint8_t *)(base + off[4])};
    return s;
}

/* Routes token t of logits [T, E]: ids/weights rows t. scratch: mxm_route_layout(p) bytes. The
 * reference of the device's warp-per-token twin (src/cuda/route_warp.cuh). */
MXM_HD void mxm_route_token(const mxm_route_params *p, const void *logits, int32_t logits_dtype,
                            const void *bias, int32_t bias_dtype, int64_t t, int32_t *ids,
                            float *weights, void *scratch) {
    const mxm_route_scratch s = mxm_route_scratch_at(p, scratch);
    const int32_t E = p->num_experts, K = p->top_k;
    const int use_bias = p->method == MXM_ROUTE_DEEPSEEK_V3 || p->method == MXM_ROUTE_MINIMAX2;
    const int64_t row = t * (int64_t)E;
    for (int32_t i = 0; i < E; i++)
        s.key[i] = mxm_route_prekey(p, use_bias ? bias : NULL, bias_dtype, i,
                                    mxm_route_load_f(logits, logits_dtype, row + i), &s.val[i]);
    if (mxm_route_softmax_keys(p)) mxm_route_softmax_inplace(s.key, E);
    if (mxm_route_grouped(p))
        mxm_route_select_grouped(p, s.key, s.heap, s.gscore, s.gkeep);
    else
        mxm_route_select_plain(s.key, E, K, s.heap);
    mxm_route_weights(p, s.key, s.val, s.heap, ids + t * (int64_t)K, weights + t * (int64_t)K);
}

#endif
