// out[t] = sum_k w[t,k] * y[pos[t,k]] in k order (+ the shared expert), fp32, stored bf16 or f32.
// Each thread owns 4 consecutive columns of one token (16-byte loads of y; H is a multiple of
// 32), so a decode step spreads over H/512 blocks per token instead of one serial block.
#include "cuda/kernels.cuh"

#define COMBINE_THREADS 128
#define COMBINE_COLS (COMBINE_THREADS * 4)
#define COMBINE_BATCH 8

__device__ __forceinline__ void store4(void *base, int64_t i, int32_t dtype, const float4 &v) {
    if (dtype == MXM_DT_F32) {
        *reinterpret_cast<float4 *>((float *)base + i) = v;
    } else {
        __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
        uint2 u;
        u.x = *reinterpret_cast<uint32_t *>(&lo), u.y = *reinterpret_cast<uint32_t *>(&hi);
        *reinterpret_cast<uint2 *>((__nv_bfloat16 *)base + i) = u;
    }
}

__global__ void __launch_bounds__(COMBINE_THREADS) combine_kernel(mxm_cuda_args a, void *out, void *out_routed,
                                                                    int32_t out_dtype) {
    MXM_KERNEL_ENTRY(a, MXM_SITE_COMBINE);
    const int64_t t = blockIdx.x, h = (int64_t)blockIdx.y * COMBINE_COLS + 4 * threadIdx.x;
    if (h >= a.H) return;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    // COMBINE_BATCH experts at a time, every load of a batch issued before the first use: two
    // memory latencies per batch (positions, then rows) instead of two per expert.
    for (int k0 = 0; k0 < a.K; k0 += COMBINE_BATCH) {
        int32_t r[COMBINE_BATCH];
        float w[COMBINE_BATCH];
        float4 y[COMBINE_BATCH];
#pragma unroll
        for (int j = 0; j < COMBINE_BATCH; j++) {
            const bool in = k0 + j < a.K;
            r[j] = in ? a.pos[t * a.K + k0 + j] : -1;
            w[j] = in ? a.wts[t * a.K + k0 + j] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < COMBINE_BATCH; j++)
            y[j] = r[j] >= 0 ? *reinterpret_cast<const float4 *>(a.y + (int64_t)r[j] * a.H + h)
                             : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
        for (int j = 0; j < COMBINE_BATCH; j++) // k order: the same sum as the CPU backend's
            if (r[j] >= 0)
                acc.x += w[j] * y[j].x, acc.y += w[j] * y[j].y, acc.z += w[j] * y[j].z,
                    acc.w += w[j] * y[j].w;
    }
    const int64_t i = t * a.H + h;
    if (out_routed) store4(out_routed, i, out_dtype, acc);
    if (a.groups > a.e_loc) {
        const float4 y = *reinterpret_cast<const float4 *>(a.y + ((int64_t)a.T * a.K + t) * a.H + h);
        acc.x += y.x, acc.y += y.y, acc.z += y.z, acc.w += y.w;
    }
    store4(out, i, out_dtype, acc);
}

mxm_status mxm_cuda_combine(const mxm_cuda_args &a, void *out, void *out_routed, int32_t out_dtype,
                            cudaStream_t s) {
    return mxm_cuda_launch(combine_kernel, dim3(a.T, (a.H + COMBINE_COLS - 1) / COMBINE_COLS), COMBINE_THREADS, 0, s,
                           a, out, out_routed, out_dtype);
}
