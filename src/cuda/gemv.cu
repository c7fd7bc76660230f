// Decode path: groups with 1..MXM_CUDA_GEMV_MAX rows stream their FP8 weights once with 16-byte
// loads (one warp per weight row at a time, each lane 16 codes per step), decode them exactly
// through the hardware E4M3 converter and dot them with the group's activation rows.
#include "cuda/kernels.cuh"
#include "cuda/mx_device.cuh"

#define GEMV_THREADS 256
#define GEMV1_COLS 128 // intermediate columns per block (a multiple of every act block)
#define GEMV2_ROWS 128 // rows of H per block

// acc[t] += sum over this lane's 16 elements of w * x_t, for the weight row `w` (codes, scales)
// and activation rows x_t (bf16) at element offset c.
template <int R>
__device__ __forceinline__ void dot16(const uint8_t *w, const uint8_t *s, int64_t c, const __nv_bfloat16 *const *x,
                                      int n, float (&acc)[R]) {
    const uint4 q = *reinterpret_cast<const uint4 *>(w + c);
    const float sc = mxm_e8m0_decode(s[c / 32]);
    float wf[16];
    const uint16_t *q16 = reinterpret_cast<const uint16_t *>(&q);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const float2 f = mxm_e4m3x2_to_float2(q16[i]);
        wf[2 * i] = f.x * sc, wf[2 * i + 1] = f.y * sc;
    }
#pragma unroll
    for (int t = 0; t < R; t++) {
        if (t >= n) break;
        const uint4 xa = *reinterpret_cast<const uint4 *>(x[t] + c);
        const uint4 xb = *reinterpret_cast<const uint4 *>(x[t] + c + 8);
        const __nv_bfloat162 *h0 = reinterpret_cast<const __nv_bfloat162 *>(&xa);
        const __nv_bfloat162 *h1 = reinterpret_cast<const __nv_bfloat162 *>(&xb);
        float s_ = 0.0f;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float2 a0 = __bfloat1622float2(h0[i]), a1 = __bfloat1622float2(h1[i]);
            s_ = fmaf(a0.x, wf[2 * i], s_);
            s_ = fmaf(a0.y, wf[2 * i + 1], s_);
            s_ = fmaf(a1.x, wf[8 + 2 * i], s_);
            s_ = fmaf(a1.y, wf[8 + 2 * i + 1], s_);
        }
        acc[t] += s_;
    }
}

template <int R>
__device__ __forceinline__ void warp_dot(const uint8_t *w, const uint8_t *s, int64_t k, const __nv_bfloat16 *const *x,
                                         int n, float (&acc)[R]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int t = 0; t < R; t++) acc[t] = 0.0f;
    for (int64_t c = (int64_t)lane * 16; c < k; c += 32 * 16) dot16<R>(w, s, c, x, n, acc);
#pragma unroll
    for (int t = 0; t < R; t++)
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc[t] += __shfl_xor_sync(0xFFFFFFFFu, acc[t], o);
}

// Row of W13 holding gate (half 0) or up (half 1) of intermediate column j.
__device__ __forceinline__ int64_t w13_row(int layout, int gated, int64_t I, int64_t j, int half) {
    if (!gated) return j;
    if (layout == MXM_W13_INTERLEAVED) return 2 * j + half;
    const int first = layout == MXM_W13_UP_GATE ? 1 : 0; // which half comes first
    return (half == first ? 0 : I) + j;
}

__global__ void __launch_bounds__(GEMV_THREADS) gemv1_kernel(mxm_cuda_args a) {
    const int chunks = (a.I_max + GEMV1_COLS - 1) / GEMV1_COLS;
    const int g = blockIdx.x / chunks, j0 = (blockIdx.x % chunks) * GEMV1_COLS;
    const mxm_cuda_group G = a.group[g];
    if (G.rows < 1 || G.rows > MXM_CUDA_GEMV_MAX || j0 >= G.I) return;
    __shared__ float a_s[MXM_CUDA_GEMV_MAX][GEMV1_COLS];
    __shared__ const __nv_bfloat16 *xrow[MXM_CUDA_GEMV_MAX];
    const int n = G.rows, warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    if (threadIdx.x < n) xrow[threadIdx.x] = a.xq + (int64_t)a.row_token[G.row0 + threadIdx.x] * a.H;
    __syncthreads();
    const int gated = mxm_act_is_gated(G.act);
    const int64_t kb = a.H / 32;
    const mxm_act_params ap = {G.alpha, G.beta, G.limit};
    const int j1 = min(j0 + GEMV1_COLS, G.I);
    for (int j = j0 + warp; j < j1; j += GEMV_THREADS / 32) {
        float hg[MXM_CUDA_GEMV_MAX], hu[MXM_CUDA_GEMV_MAX];
        const int64_t rg = w13_row(a.layout, gated, G.I, j, 0);
        warp_dot<MXM_CUDA_GEMV_MAX>(G.w13 + rg * a.H, G.s13 + rg * kb, a.H, xrow, n, hg);
        if (gated) {
            const int64_t ru = w13_row(a.layout, gated, G.I, j, 1);
            warp_dot<MXM_CUDA_GEMV_MAX>(G.w13 + ru * a.H, G.s13 + ru * kb, a.H, xrow, n, hu);
        }
        if (lane == 0)
#pragma unroll
            for (int t = 0; t < MXM_CUDA_GEMV_MAX; t++)
                if (t < n) a_s[t][j - j0] = gated ? mxm_act_gated(G.act, hg[t], hu[t], ap) : mxm_act_plain(G.act, hg[t]);
    }
    __syncthreads();
    // Requantize each (row, 32-block): one warp per unit, one value per lane.
    const int blocks = (j1 - j0) / 32;
    for (int u = warp; u < n * blocks; u += GEMV_THREADS / 32) {
        const int t = u / blocks, b = u % blocks;
        float v = a_s[t][b * 32 + lane];
        if (a.profile == MXM_PROFILE_TRTLLM) v = mxm_round_bf16(v);
        if (a.act_quant == MXM_ACT_QUANT_MXFP8) v = mxm_warp_mx_fakequant(v, a.rule);
        a.act[(int64_t)(G.row0 + t) * a.I_max + j0 + b * 32 + lane] = __float2bfloat16_rn(v);
    }
}

__global__ void __launch_bounds__(GEMV_THREADS) gemv2_kernel(mxm_cuda_args a) {
    const int chunks = (a.H + GEMV2_ROWS - 1) / GEMV2_ROWS;
    const int g = blockIdx.x / chunks, h0 = (blockIdx.x % chunks) * GEMV2_ROWS;
    const mxm_cuda_group G = a.group[g];
    if (G.rows < 1 || G.rows > MXM_CUDA_GEMV_MAX) return;
    __shared__ const __nv_bfloat16 *xrow[MXM_CUDA_GEMV_MAX];
    const int n = G.rows, warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    if (threadIdx.x < n) xrow[threadIdx.x] = a.act + (int64_t)(G.row0 + threadIdx.x) * a.I_max;
    __syncthreads();
    const int64_t kb = G.I / 32;
    const int h1 = min(h0 + GEMV2_ROWS, a.H);
    for (int h = h0 + warp; h < h1; h += GEMV_THREADS / 32) {
        float acc[MXM_CUDA_GEMV_MAX];
        warp_dot<MXM_CUDA_GEMV_MAX>(G.w2 + (int64_t)h * G.I, G.s2 + (int64_t)h * kb, G.I, xrow, n, acc);
        if (lane < n) {
            float v = 0.0f;
#pragma unroll
            for (int t = 0; t < MXM_CUDA_GEMV_MAX; t++)
                if (t == lane) v = acc[t];
            a.y[(int64_t)(G.row0 + lane) * a.H + h] = a.profile == MXM_PROFILE_TRTLLM ? mxm_round_bf16(v) : v;
        }
    }
}

mxm_status mxm_cuda_gemv1(const mxm_cuda_args &a, cudaStream_t s) {
    const int chunks = (a.I_max + GEMV1_COLS - 1) / GEMV1_COLS;
    gemv1_kernel<<<a.groups * chunks, GEMV_THREADS, 0, s>>>(a);
    MXM_CUDA_LAUNCHED();
    return MXM_OK;
}

mxm_status mxm_cuda_gemv2(const mxm_cuda_args &a, cudaStream_t s) {
    const int chunks = (a.H + GEMV2_ROWS - 1) / GEMV2_ROWS;
    gemv2_kernel<<<a.groups * chunks, GEMV_THREADS, 0, s>>>(a);
    MXM_CUDA_LAUNCHED();
    return MXM_OK;
}
