// Decode path: groups with 1..MXM_CUDA_GEMV_MAX rows stream their FP8 weights once with 16-byte
// loads (one warp per weight row at a time, each lane 16 codes per step), decode them exactly
// through the hardware E4M3 converter and dot them with the group's activation rows.
#include "cuda/kernels.cuh"
#include "cuda/mx_device.cuh"

#define GEMV_THREADS 256
#define GEMV_COLS 32 // intermediate columns (GEMM1) or rows of H (GEMM2) per block: one MX block
#define WARP_COLS (GEMV_COLS / (GEMV_THREADS / 32)) // 4 per warp

// acc[r][t] = dot(weight row r, activation row t) for the warp's R rows and n (<= GEMV_MAX)
// activation rows x[t] (bf16), over k elements. Each lane loads 16 codes of every row per
// step (R independent 16-byte loads in flight), decodes each row once and reuses it for all
// activation rows (read from L1/L2). MXFP8: s[r] are the rows' E8M0 scales. DeepSeek FP8
// (BLK): b[r] the rows' 128x128 block scales along k, xs[t] the activation rows' 1x128 scales
// (nullptr: 1); each lane's 16 products lie in one 128-block and are scaled together.
template <int R, bool BLK>
__device__ __forceinline__ void warp_rows(const uint8_t *const (&w)[R], const uint8_t *const (&s)[R],
                                          const float *const (&b)[R], int64_t k, const __nv_bfloat16 *const *x,
                                          const float *const *xs, int n, float (&acc)[R][MXM_CUDA_GEMV_MAX]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < MXM_CUDA_GEMV_MAX; t++) acc[r][t] = 0.0f;
    for (int64_t c = (int64_t)lane * 16; c < k; c += 32 * 16) {
        uint4 q[R];
        float sc[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            q[r] = w[r] ? __ldg(reinterpret_cast<const uint4 *>(w[r] + c)) : make_uint4(0, 0, 0, 0);
            if (BLK) sc[r] = w[r] ? __ldg(b[r] + c / 128) : 0.0f;
            else sc[r] = w[r] ? mxm_e8m0_decode(__ldg(s[r] + c / 32)) : 0.0f;
        }
#pragma unroll
        for (int r = 0; r < R; r++) {
            float wf[16];
            const uint16_t *q16 = reinterpret_cast<const uint16_t *>(&q[r]);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const float2 f = mxm_e4m3x2_to_float2(q16[i]);
                wf[2 * i] = BLK ? f.x : f.x * sc[r], wf[2 * i + 1] = BLK ? f.y : f.y * sc[r];
            }
#pragma unroll
            for (int t = 0; t < MXM_CUDA_GEMV_MAX; t++) {
                if (t >= n) break;
                const uint4 xa = *reinterpret_cast<const uint4 *>(x[t] + c);
                const uint4 xb = *reinterpret_cast<const uint4 *>(x[t] + c + 8);
                const __nv_bfloat162 *h0 = reinterpret_cast<const __nv_bfloat162 *>(&xa);
                const __nv_bfloat162 *h1 = reinterpret_cast<const __nv_bfloat162 *>(&xb);
                float d = 0.0f;
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const float2 a0 = __bfloat1622float2(h0[i]), a1 = __bfloat1622float2(h1[i]);
                    d = fmaf(a0.x, wf[2 * i], d);
                    d = fmaf(a0.y, wf[2 * i + 1], d);
                    d = fmaf(a1.x, wf[8 + 2 * i], d);
                    d = fmaf(a1.y, wf[8 + 2 * i + 1], d);
                }
                if (BLK) acc[r][t] = fmaf(d, sc[r] * (xs[t] ? xs[t][c / 128] : 1.0f), acc[r][t]);
                else acc[r][t] += d;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int t = 0; t < MXM_CUDA_GEMV_MAX; t++) {
            if (t >= n) break;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc[r][t] += __shfl_xor_sync(0xFFFFFFFFu, acc[r][t], o);
        }
}

// The block's group among the GEMV groups (list built by the permutation), or -1.
__device__ __forceinline__ int gemv_group(const mxm_cuda_args &a, int chunks, int *chunk) {
    const int i = blockIdx.x / chunks;
    *chunk = blockIdx.x % chunks;
    return i < a.counts[1] ? a.gemv_list[i] : -1;
}

template <bool GATED, bool BLK>
__global__ void __launch_bounds__(GEMV_THREADS) gemv1_kernel(mxm_cuda_args a) {
    const int chunks = (a.I_max + GEMV_COLS - 1) / GEMV_COLS;
    int chunk;
    const int g = gemv_group(a, chunks, &chunk);
    if (g < 0) return;
    const mxm_cuda_group G = a.group[g];
    const int j0 = chunk * GEMV_COLS;
    if (j0 >= G.I || mxm_act_is_gated(G.act) != GATED) return;
    __shared__ float a_s[MXM_CUDA_GEMV_MAX][GEMV_COLS];
    __shared__ const __nv_bfloat16 *xrow[MXM_CUDA_GEMV_MAX];
    __shared__ const float *xsrow[MXM_CUDA_GEMV_MAX];
    const int n = G.rows, warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    if (threadIdx.x < n) {
        const int64_t tok = a.row_token[G.row0 + threadIdx.x];
        xrow[threadIdx.x] = a.xq + tok * a.H;
        xsrow[threadIdx.x] = mxm_cuda_blk_w8a8(a) ? a.xs + tok * a.HB : nullptr;
    }
    __syncthreads();
    constexpr int R = GATED ? 2 * WARP_COLS : WARP_COLS;
    const int64_t kb = a.H / 32;
    const uint8_t *w[R], *s[R];
    const float *b[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int j = j0 + warp * WARP_COLS + r % WARP_COLS;
        const int64_t row = mxm_cuda_w13_row(a.layout, GATED, G.I, j, r / WARP_COLS);
        w[r] = j < G.I ? G.w13 + row * a.H : nullptr;
        s[r] = j < G.I && !BLK ? G.s13 + row * kb : nullptr;
        b[r] = j < G.I && BLK ? G.b13 + (row / 128) * a.HB : nullptr;
    }
    float acc[R][MXM_CUDA_GEMV_MAX];
    warp_rows<R, BLK>(w, s, b, a.H, xrow, xsrow, n, acc);
    const mxm_act_params ap = {G.alpha, G.beta, G.limit};
    if (lane < WARP_COLS) {
#pragma unroll
        for (int c = 0; c < WARP_COLS; c++) {
            if (c != lane) continue;
#pragma unroll
            for (int t = 0; t < MXM_CUDA_GEMV_MAX; t++) {
                if (t >= n) break;
                a_s[t][warp * WARP_COLS + c] = GATED ? mxm_act_gated(G.act, acc[c][t], acc[WARP_COLS + c][t], ap)
                                                     : mxm_act_plain(G.act, acc[c][t]);
            }
        }
    }
    __syncthreads();
    // Requantize: warp t takes activation row t (one 32-block), one value per lane.
    if (warp < n && j0 + lane < G.I) {
        float v = a_s[warp][lane];
        if (a.profile == MXM_PROFILE_TRTLLM) v = mxm_round_bf16(v);
        const int64_t o = (int64_t)(G.row0 + warp) * a.I_max + j0 + lane;
        if (BLK && mxm_cuda_blk_w8a8(a)) { // requantized per 128-block by mxm_cuda_requant_fp8block
            a.actf[o] = v;
            return;
        }
        if (!BLK && a.act_quant == MXM_ACT_QUANT_MXFP8) v = mxm_warp_mx_fakequant(v, a.rule);
        a.act[o] = __float2bfloat16_rn(v);
    }
}

template <bool BLK>
__global__ void __launch_bounds__(GEMV_THREADS) gemv2_kernel(mxm_cuda_args a) {
    const int chunks = (a.H + GEMV_COLS - 1) / GEMV_COLS;
    int chunk;
    const int g = gemv_group(a, chunks, &chunk);
    if (g < 0) return;
    const mxm_cuda_group G = a.group[g];
    __shared__ const __nv_bfloat16 *xrow[MXM_CUDA_GEMV_MAX];
    __shared__ const float *xsrow[MXM_CUDA_GEMV_MAX];
    const int n = G.rows, warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    if (threadIdx.x < n) {
        xrow[threadIdx.x] = a.act + (int64_t)(G.row0 + threadIdx.x) * a.I_max;
        xsrow[threadIdx.x] = mxm_cuda_blk_w8a8(a) ? a.acts + (int64_t)(G.row0 + threadIdx.x) * a.IB : nullptr;
    }
    __syncthreads();
    const int64_t kb = G.I / 32, ib = (G.I + 127) / 128;
    const int h0 = chunk * GEMV_COLS + warp * WARP_COLS;
    const uint8_t *w[WARP_COLS], *s[WARP_COLS];
    const float *b[WARP_COLS];
#pragma unroll
    for (int r = 0; r < WARP_COLS; r++) {
        const int h = h0 + r;
        w[r] = h < a.H ? G.w2 + (int64_t)h * G.I : nullptr;
        s[r] = h < a.H && !BLK ? G.s2 + (int64_t)h * kb : nullptr;
        b[r] = h < a.H && BLK ? G.b2 + (int64_t)(h / 128) * ib : nullptr;
    }
    float acc[WARP_COLS][MXM_CUDA_GEMV_MAX];
    warp_rows<WARP_COLS, BLK>(w, s, b, G.I, xrow, xsrow, n, acc);
    // lane = t * WARP_COLS + r writes row r of token t
    const int t = lane / WARP_COLS, r = lane % WARP_COLS;
    if (t < n && h0 + r < a.H) {
        float v = 0.0f;
#pragma unroll
        for (int rr = 0; rr < WARP_COLS; rr++)
#pragma unroll
            for (int tt = 0; tt < MXM_CUDA_GEMV_MAX; tt++)
                if (rr == r && tt == t) v = acc[rr][tt];
        a.y[(int64_t)(G.row0 + t) * a.H + h0 + r] = a.profile == MXM_PROFILE_TRTLLM ? mxm_round_bf16(v) : v;
    }
}

// Blocks: (groups that can be GEMV groups) x chunks; a group list built on the device maps them.
static int gemv_group_bound(const mxm_cuda_args &a) {
    const int64_t pairs = (int64_t)a.T * a.K + (a.groups > a.e_loc ? 1 : 0);
    return (int)(pairs < a.groups ? pairs : a.groups);
}

mxm_status mxm_cuda_gemv1(const mxm_cuda_args &a, cudaStream_t s) {
    const int chunks = (a.I_max + GEMV_COLS - 1) / GEMV_COLS;
    const int blocks = gemv_group_bound(a) * chunks;
    if (a.gated_routed || a.gated_shared == 1) {
        if (a.blk) gemv1_kernel<true, true><<<blocks, GEMV_THREADS, 0, s>>>(a);
        else gemv1_kernel<true, false><<<blocks, GEMV_THREADS, 0, s>>>(a);
        MXM_CUDA_LAUNCHED();
    }
    if (!a.gated_routed || a.gated_shared == 0) {
        if (a.blk) gemv1_kernel<false, true><<<blocks, GEMV_THREADS, 0, s>>>(a);
        else gemv1_kernel<false, false><<<blocks, GEMV_THREADS, 0, s>>>(a);
        MXM_CUDA_LAUNCHED();
    }
    return MXM_OK;
}

mxm_status mxm_cuda_gemv2(const mxm_cuda_args &a, cudaStream_t s) {
    const int chunks = (a.H + GEMV_COLS - 1) / GEMV_COLS;
    if (a.blk) gemv2_kernel<true><<<gemv_group_bound(a) * chunks, GEMV_THREADS, 0, s>>>(a);
    else gemv2_kernel<false><<<gemv_group_bound(a) * chunks, GEMV_THREADS, 0, s>>>(a);
    MXM_CUDA_LAUNCHED();
    return MXM_OK;
}
