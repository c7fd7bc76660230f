// Routing of one token by one warp: the device twin of mxm_route_token (src/route/route_core.h,
// its reference, which the host runs and test_cuda compares against, ids exactly). One thread per
// token left a decode step's routing serial: at T = 1 one thread walked E logits, E divisions and
// a heap (Qwen3 on an H100: the layer 55 us from logits against 30 us from given ids).
//  - keys: lane l takes experts l, l + 32, ... (mxm_route_prekey, the same per-element code);
//  - softmax: the maximum of the non-NaN logits by a warp reduction (a maximum is exact in any
//    order), expf per element, the double sum in index order by lane 0 (the host's order, so the
//    same bits), the divisions per element;
//  - selection: the order of route.h is total (ties go to the lower index), so K rounds of a
//    warp-wide maximum over the order keys below the previous round's pick select the same
//    experts in the same order as the host's heap; grouped DeepSeekV3 scores a group per lane
//    (mxm_route_group_score) and picks its topk_group groups the same way;
//  - weights: lane 0 runs mxm_route_weights on the selection.
// Every lane of the warp must call it for the same token.
#ifndef MXM_CUDA_ROUTE_WARP_CUH
#define MXM_CUDA_ROUTE_WARP_CUH

#include "route/route_core.h"

__device__ __forceinline__ uint64_t mxm_route_warp_max_key(uint64_t v) {
#pragma unroll
    for (int o = 16; o; o >>= 1) {
        const uint64_t w = __shfl_xor_sync(0xFFFFFFFFu, (unsigned long long)v, o);
        v = w > v ? w : v;
    }
    return v;
}

// The warp-wide pick (mxm_route_lane_pick, then the maximum over the lanes).
__device__ __forceinline__ uint64_t mxm_route_warp_pick(const float *keys, int32_t n,
                                                        uint64_t below, const uint8_t *keep,
                                                        int32_t per) {
    return mxm_route_warp_max_key(
        mxm_route_lane_pick(keys, n, below, keep, per, (int32_t)(threadIdx.x & 31), 32));
}

static __device__ void mxm_route_token_warp(const mxm_route_params *p, const void *logits,
                                     int32_t logits_dtype, const void *bias, int32_t bias_dtype,
                                     int64_t t, int32_t *ids, float *weights, void *scratch) {
    const int lane = threadIdx.x & 31;
    const mxm_route_scratch s = mxm_route_scratch_at(p, scratch);
    const int32_t E = p->num_experts, K = p->top_k;
    const int use_bias = p->method == MXM_ROUTE_DEEPSEEK_V3 || p->method == MXM_ROUTE_MINIMAX2;
    const int64_t row = t * (int64_t)E;
    for (int32_t i = lane; i < E; i += 32)
        s.key[i] = mxm_route_prekey(p, use_bias ? bias : nullptr, bias_dtype, i,
                                    mxm_route_load_f(logits, logits_dtype, row + i), &s.val[i]);
    if (mxm_route_softmax_keys(p)) {
        float m = -INFINITY; // partial maxima are never NaN: combining them is the serial maximum
        for (int32_t i = lane; i < E; i += 32)
            if (s.key[i] > m) m = s.key[i];
#pragma unroll
        for (int o = 16; o; o >>= 1) {
            const float w = __shfl_xor_sync(0xFFFFFFFFu, m, o);
            m = w > m ? w : m;
        }
        for (int32_t i = lane; i < E; i += 32)
            s.key[i] = expf(s.key[i] - m);
        __syncwarp();
        double sum = 0.0;
        if (lane == 0)
            for (int32_t i = 0; i < E; i++)
                sum += (double)s.key[i];
        sum = __shfl_sync(0xFFFFFFFFu, sum, 0);
        for (int32_t i = lane; i < E; i += 32)
            s.key[i] = (float)((double)s.key[i] / sum);
    }
    __syncwarp();
    const uint8_t *keep = nullptr;
    int32_t gs = 1;
    if (mxm_route_grouped(p)) {
        const int32_t G = p->n_group;
        gs = E / G;
        for (int32_t g = lane; g < G; g += 32) {
            s.gscore[g] = mxm_route_group_score(s.key, g * gs, gs);
            s.gkeep[g] = 0;
        }
        __syncwarp();
        uint64_t below = ~0ull;
        for (int32_t j = 0; j < p->topk_group; j++) {
            below = mxm_route_warp_pick(s.gscore, G, below, nullptr, 1);
            if (lane == 0) s.gkeep[mxm_route_order_index(below)] = 1;
        }
        __syncwarp();
        keep = s.gkeep;
    }
    uint64_t below = ~0ull;
    for (int32_t j = 0; j < K; j++) {
        below = mxm_route_warp_pick(s.key, E, below, keep, gs);
        if (lane == 0) s.heap[j] = below;
    }
    __syncwarp();
    if (lane == 0)
        mxm_route_weights(p, s.key, s.val, s.heap, ids + t * (int64_t)K, weights + t * (int64_t)K);
}

#endif
