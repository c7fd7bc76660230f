// Decode and middle range: expert groups with 1..MXM_CUDA_SKINNY_MAX rows (tokens). These layers
// are bound by streaming the FP8 weights once, so the kernel is built around bytes in flight:
//  - a block owns 64 weight rows of one group and all of the group's tokens (up to 32: n8 tiles
//    of mma.m16n8k16), and walks K in stages of 128 through a 6-deep cp.async ring (8 KB of codes
//    per stage, 40 KB in flight per block). Its 8 warps split each stage: warp w takes the 16
//    rows 16 (w % 4).. and the 64-wide half w / 4 of the stage (twice the warps of one warp per
//    16 rows: a decode-bound warp stalls on its own dependent instructions, so more warps per SM
//    issue more); the two halves' sums meet through shared memory at the end;
//  - the weights are the MMA's A operand, decoded exactly to bf16 in registers (E4M3 value times
//    the E8M0 scale is a bf16 value) right before the MMA; the tokens are the B operand;
//  - K is permuted inside each 64-wide step, identically for both operands (a dot product does
//    not care about the order of its terms): lane c of a quad holds the 16 consecutive codes
//    16c..16c+15 of its rows, which serve the four k16 MMAs of the step as the logical columns
//    {2c, 2c+1, 2c+8, 2c+9}. So one 16-byte shared load gives a row's codes for four MMAs, and
//    one 32-byte load gives a token's matching activations;
//  - shared memory rows are XOR-swizzled by 16-byte chunk so a quarter-warp's loads hit eight
//    different bank groups.
// GEMM1 fuses the activation and the requantization of the intermediate (one MX block of 32
// columns per warp and token); GEMM2 writes the expert outputs. DeepSeek FP8 (WF =
// MXM_WFMT_FP8_BLOCK): codes enter unscaled, each stage (one 128-block of K) accumulates on its own
// and is added times its weight and activation scales. Numerics are those of the prefill kernels
// (gemm.cu): exact operands, fp32 accumulation.
#include "cuda/kernels.cuh"
#include "cuda/mx_device.cuh"

#define SK_THREADS 256
#define SK_ROW_WARPS 4         // warps along the rows; SK_THREADS / 32 / SK_ROW_WARPS halves of K
#define SK_ROWS 64             // weight rows per block
#define SK_KC 128              // K per stage
#define SK_STAGES 6
#define SK_A_BYTES (SK_ROWS * SK_KC)
#define SK_B_ROW (SK_KC * 2)   // bytes of one token row per stage
#define SK_NT_MAX (MXM_CUDA_SKINNY_MAX / 8)
// After the main loop the ring holds GEMM1's epilogue buffer (tokens x 65 floats) and, past it,
// the second K half's sums (128 threads x SK_NT_MAX x 4 floats).
#define SK_RED_OFFSET (MXM_CUDA_SKINNY_MAX * 65 * 4)
static_assert(SK_THREADS / 32 == 2 * SK_ROW_WARPS, "two K halves");
static_assert(SK_ROWS == 16 * SK_ROW_WARPS, "16 rows per warp");
static_assert(SK_RED_OFFSET + 32 * SK_ROW_WARPS * SK_NT_MAX * 16 <= SK_STAGES * SK_A_BYTES,
              "the ring holds both");

enum { SK_GEMM1_GATED = 0, SK_GEMM1_PLAIN = 1, SK_GEMM2 = 2 };

static __host__ __device__ int sk_stage_bytes(int nt_max) { return SK_A_BYTES + nt_max * 8 * SK_B_ROW; }

__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid) {
    const uint32_t d = (uint32_t)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ uint4 lds128(const void *p) {
    return *reinterpret_cast<const uint4 *>(p);
}

// Two E4M3 codes (low byte first) times a power-of-two scale, as bf16x2 (exact).
__device__ __forceinline__ uint32_t sk_decode2(uint32_t two, float sc) {
    const float2 f = mxm_e4m3x2_to_float2((uint16_t)two);
    __nv_bfloat162 r = __floats2bfloat162_rn(f.x * sc, f.y * sc);
    return *reinterpret_cast<uint32_t *>(&r);
}

// The weight row behind block row br (0..63) of chunk `chunk`, or -1 past the group's rows.
// GEMM1 gated: warp w's rows 0..7 are the gate rows of columns j0 + 8w + 0..7 and rows 8..15
// their up rows, so one thread's accumulators hold gate and up of the same (column, token).
template <int KIND>
__device__ __forceinline__ int64_t sk_weight_row(const mxm_cuda_args &a, const mxm_cuda_group &G, int chunk, int br) {
    if (KIND == SK_GEMM1_GATED) {
        const int j = chunk * 32 + 8 * (br / 16) + (br % 8);
        return j < G.I ? mxm_cuda_w13_row(a.layout, true, G.I, j, (br % 16) / 8) : -1;
    }
    if (KIND == SK_GEMM1_PLAIN) {
        const int j = chunk * SK_ROWS + br;
        return j < G.I ? j : -1;
    }
    const int h = chunk * SK_ROWS + br;
    return h < a.H ? h : -1;
}

// Per-thread copy sources: 2 weight rows (block rows t/8 + 32 i, 16-byte chunk t % 8 of each
// stage) and up to 2 token rows (rows t/16 + 16 i, chunk t % 16).
#define SK_W_COPIES (SK_ROWS * SK_KC / 16 / SK_THREADS)
#define SK_X_COPIES ((MXM_CUDA_SKINNY_MAX * SK_B_ROW / 16 + SK_THREADS - 1) / SK_THREADS)
static_assert(SK_W_COPIES * SK_THREADS * 16 == SK_ROWS * SK_KC, "weight copies cover a stage");
struct sk_sources {
    const uint8_t *w[SK_W_COPIES];
    const __nv_bfloat16 *x[SK_X_COPIES];
};

// Issues the copies of stage k0 into ring slot `slot`. Pieces past K, past the group's weight
// rows or past its tokens (null sources) are zero-filled; their copies name a valid dummy address.
// do_w / do_x: the weight and the token pieces (GEMM2 copies its first weights before it waits
// for GEMM1's output).
__device__ __forceinline__ void sk_issue(unsigned char *ring, int stage_bytes, int slot, const sk_sources &src,
                                         const void *dummy, int64_t k0, int64_t K, int brows, bool do_w = true,
                                         bool do_x = true) {
    unsigned char *A = ring + (size_t)slot * stage_bytes, *B = A + SK_A_BYTES;
    const int t = threadIdx.x, ca = t % 8, cb = t % 16;
#pragma unroll
    for (int i = 0; i < SK_W_COPIES; i++) {
        if (!do_w) break;
        const int row = t / 8 + (SK_THREADS / 8) * i;
        const bool ok = src.w[i] && k0 + 16 * ca < K;
        cp_async16(A + row * SK_KC + ((ca ^ ((row & 1) * 4)) * 16), ok ? (const void *)(src.w[i] + k0 + 16 * ca) : dummy,
                   ok);
    }
#pragma unroll
    for (int i = 0; i < SK_X_COPIES; i++) {
        const int row = t / 16 + (SK_THREADS / 16) * i;
        if (row >= brows || !do_x) break;
        const bool ok = src.x[i] && k0 + 8 * cb < K;
        cp_async16(B + row * SK_B_ROW + ((cb ^ (row & 1)) * 16), ok ? (const void *)(src.x[i] + k0 + 8 * cb) : dummy,
                   ok);
    }
}

// The MX scale bytes of this thread's two rows for its warp's 64-wide half of stage k0.
struct sk_scales {
    uint8_t s[2]; // [row R0/R1]
};

__device__ __forceinline__ int sk_half() {
    return threadIdx.x / 32 / SK_ROW_WARPS;
}

__device__ __forceinline__ void sk_load_scales(sk_scales &sc, const uint8_t *const (&srow)[2], int64_t k0, int64_t K) {
    const int c = (threadIdx.x & 31) % 4;
    const int64_t k = k0 + 64 * sk_half() + 16 * c;
#pragma unroll
    for (int r = 0; r < 2; r++)
        sc.s[r] = srow[r] && k < K ? __ldg(srow[r] + k / 32) : (uint8_t)127;
}

// acc += the products of this warp's half of the stage for its 16 rows and NT n8 token tiles.
template <int NT, int WF>
__device__ __forceinline__ void sk_compute(const unsigned char *A, const unsigned char *B,
                                           const sk_scales &sc, float (&acc)[NT][4]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, g = lane / 4, c = lane % 4;
    const int r0 = 16 * (warp % SK_ROW_WARPS) + g; // r1 = r0 + 8 has the same parity
    {
        const int h = sk_half();
        const int ach = ((4 * h + c) ^ ((r0 & 1) * 4)) * 16;
        const uint4 q0 = lds128(A + r0 * SK_KC + ach), q1 = lds128(A + (r0 + 8) * SK_KC + ach);
        constexpr bool BLK = mxm_cuda_fmt<WF>::block128; // DeepSeek FP8: scales applied per stage
        const float s0 = BLK ? 1.0f : mxm_e8m0_decode(sc.s[0]),
                    s1 = BLK ? 1.0f : mxm_e8m0_decode(sc.s[1]);
        uint4 xb[NT][2];
#pragma unroll
        for (int ni = 0; ni < NT; ni++) {
            const int tr = 8 * ni + g;
            const unsigned char *row = B + tr * SK_B_ROW;
            xb[ni][0] = lds128(row + (((8 * h + 2 * c) ^ (tr & 1)) * 16));
            xb[ni][1] = lds128(row + (((8 * h + 2 * c + 1) ^ (tr & 1)) * 16));
        }
        const uint32_t w0[4] = {q0.x, q0.y, q0.z, q0.w}, w1[4] = {q1.x, q1.y, q1.z, q1.w};
#pragma unroll
        for (int s = 0; s < 4; s++) {
            const uint32_t af[4] = {sk_decode2(w0[s] & 0xFFFFu, s0), sk_decode2(w1[s] & 0xFFFFu, s1),
                                    sk_decode2(w0[s] >> 16, s0), sk_decode2(w1[s] >> 16, s1)};
#pragma unroll
            for (int ni = 0; ni < NT; ni++) {
                const uint4 &x = xb[ni][s / 2];
                const uint32_t b0 = (s % 2) ? x.z : x.x, b1 = (s % 2) ? x.w : x.y;
                mxm_mma_bf16_16816(acc[ni], af, b0, b1);
            }
        }
    }
}

// The block's group among the skinny groups (list built by the permutation), or -1.
__device__ __forceinline__ int sk_group(const mxm_cuda_args &a) {
    return (int)blockIdx.x < a.counts[1] ? a.skinny_list[blockIdx.x] : -1;
}

template <int KIND, int WF, int NT>
__device__ __forceinline__ void sk_body(const mxm_cuda_args &a, const mxm_cuda_group &G, int chunk,
                                        int nt_max, unsigned char *ring) {
    const int t = threadIdx.x, lane = t & 31, warp = t / 32, g = lane / 4, c = lane % 4;
    constexpr bool BLK = mxm_cuda_fmt<WF>::block128;
    const int rw = warp % SK_ROW_WARPS; // the warp's 16 rows: 16 rw..
    const int n = G.rows, stage_bytes = sk_stage_bytes(nt_max);
    const bool gemm1 = KIND != SK_GEMM2;
    const int64_t K = gemm1 ? a.H : G.I;
    const uint8_t *wbase = gemm1 ? G.w13 : G.w2;
    const void *sbase = gemm1 ? G.sc13 : G.sc2;
    const int64_t kb32 = K / 32;
    sk_sources src;
#pragma unroll
    for (int i = 0; i < SK_W_COPIES; i++) {
        const int64_t r = sk_weight_row<KIND>(a, G, chunk, t / 8 + (SK_THREADS / 8) * i);
        src.w[i] = r >= 0 ? wbase + r * K : nullptr;
    }
#pragma unroll
    for (int i = 0; i < SK_X_COPIES; i++) {
        const int tok = t / 16 + (SK_THREADS / 16) * i;
        src.x[i] = nullptr;
        if (tok < n)
            src.x[i] = gemm1 ? a.xq + (int64_t)a.row_token[G.row0 + tok] * a.H
                             : a.act + (int64_t)(G.row0 + tok) * a.I_max;
    }
    const int brows = NT * 8;

    const uint8_t *srow[2];
    const float *brow[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int64_t wr = sk_weight_row<KIND>(a, G, chunk, 16 * rw + g + 8 * r);
        srow[r] =
            !BLK && wr >= 0 ? mxm_cuda_fmt<MXM_WFMT_MXFP8>::scales(sbase) + wr * kb32 : nullptr;
        const int64_t kbl = (K + 127) / 128;
        brow[r] = BLK && wr >= 0
                      ? mxm_cuda_fmt<MXM_WFMT_FP8_BLOCK>::scales(sbase) + (wr / 128) * kbl
                      : nullptr;
    }
    // DeepSeek FP8 W8A8: the activation rows' 1x128 scales of this thread's accumulator columns.
    const float *xsrow[NT][2];
    const bool w8a8 = BLK && mxm_cuda_blk_w8a8(a);
#pragma unroll
    for (int ni = 0; ni < NT; ni++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int tok = 8 * ni + 2 * c + e;
            xsrow[ni][e] = nullptr;
            if (w8a8 && tok < n)
                xsrow[ni][e] = gemm1 ? a.xs + (int64_t)a.row_token[G.row0 + tok] * a.HB
                                     : a.acts + (int64_t)(G.row0 + tok) * a.IB;
        }

    float acc[NT][4], part[NT][4];
#pragma unroll
    for (int ni = 0; ni < NT; ni++)
#pragma unroll
        for (int q = 0; q < 4; q++) acc[ni][q] = 0.0f, part[ni][q] = 0.0f;

    const int nst = (int)((K + SK_KC - 1) / SK_KC);
    // Ring prologue. GEMM1 has waited for its inputs already. GEMM2 streams its first weight
    // stages while GEMM1 still runs, then waits for the intermediate (programmatic launch; the
    // group table it read came from the prologue, which finished before GEMM1 let it start).
    const bool early_w = KIND == SK_GEMM2;
#pragma unroll
    for (int s = 0; s < SK_STAGES - 1; s++) {
        if (s < nst) sk_issue(ring, stage_bytes, s, src, wbase, (int64_t)s * SK_KC, K, brows, true, !early_w);
        cp_async_commit();
    }
    if (early_w) {
        mxm_griddep_wait();
        mxm_griddep_launch();
#pragma unroll
        for (int s = 0; s < SK_STAGES - 1; s++)
            if (s < nst) sk_issue(ring, stage_bytes, s, src, wbase, (int64_t)s * SK_KC, K, brows, false, true);
        cp_async_commit();
    }
    sk_scales cur = {}, nxt = {};
    if (!BLK) sk_load_scales(cur, srow, 0, K);
    for (int it = 0; it < nst; it++) {
        if (early_w && it == 0) cp_async_wait<0>(); // the token pieces of the first stages came last
        else cp_async_wait<SK_STAGES - 2>();
        __syncthreads();
        const int ns = it + SK_STAGES - 1;
        if (ns < nst) sk_issue(ring, stage_bytes, ns % SK_STAGES, src, wbase, (int64_t)ns * SK_KC, K, brows);
        cp_async_commit();
        if (!BLK && it + 1 < nst) sk_load_scales(nxt, srow, (int64_t)(it + 1) * SK_KC, K);
        const unsigned char *A = ring + (size_t)(it % SK_STAGES) * stage_bytes;
        if (BLK) {
            float sb[2], sa[NT][2];
#pragma unroll
            for (int r = 0; r < 2; r++) sb[r] = brow[r] ? __ldg(brow[r] + it) : 0.0f;
#pragma unroll
            for (int ni = 0; ni < NT; ni++)
#pragma unroll
                for (int e = 0; e < 2; e++) sa[ni][e] = xsrow[ni][e] ? __ldg(xsrow[ni][e] + it) : 1.0f;
            sk_compute<NT, WF>(A, A + SK_A_BYTES, cur, part);
#pragma unroll
            for (int ni = 0; ni < NT; ni++)
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    acc[ni][q] = fmaf(part[ni][q], sb[q / 2] * sa[ni][q % 2], acc[ni][q]);
                    part[ni][q] = 0.0f;
                }
        } else {
            sk_compute<NT, WF>(A, A + SK_A_BYTES, cur, acc);
            cur = nxt;
        }
    }
    cp_async_wait<0>();
    __syncthreads(); // the ring becomes the epilogue buffer
    // The second half's warps hand their sums to the first half's (past the GEMM1 buffer ep).
    {
        float *red =
            reinterpret_cast<float *>(ring + SK_RED_OFFSET) + (t % (32 * SK_ROW_WARPS)) * (NT * 4);
        if (sk_half() == 1)
#pragma unroll
            for (int ni = 0; ni < NT; ni++)
#pragma unroll
                for (int q = 0; q < 4; q++)
                    red[4 * ni + q] = acc[ni][q];
        __syncthreads();
        if (sk_half() == 0)
#pragma unroll
            for (int ni = 0; ni < NT; ni++)
#pragma unroll
                for (int q = 0; q < 4; q++)
                    acc[ni][q] += red[4 * ni + q];
    }
    const bool first_half = sk_half() == 0;

    const bool trt = a.profile == MXM_PROFILE_TRTLLM;
    if (KIND == SK_GEMM2) {
        if (!first_half) return;
        const int h0 = chunk * SK_ROWS + 16 * rw + g;
#pragma unroll
        for (int ni = 0; ni < NT; ni++)
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const int tok = 8 * ni + 2 * c + (q % 2), h = h0 + 8 * (q / 2);
                if (tok < n && h < a.H) {
                    const float v = acc[ni][q];
                    a.y[(int64_t)(G.row0 + tok) * a.H + h] = trt ? mxm_round_bf16(v) : v;
                }
            }
        return;
    }
    // GEMM1: activation into ep[token][column], then one warp per (token, 32-column block).
    constexpr int COLS = KIND == SK_GEMM1_GATED ? 32 : 64, EP = COLS + 1;
    float *ep = reinterpret_cast<float *>(ring);
    const mxm_act_params ap = {G.alpha, G.beta, G.limit};
    if (first_half)
#pragma unroll
        for (int ni = 0; ni < NT; ni++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int tok = 8 * ni + 2 * c + e;
                if (KIND == SK_GEMM1_GATED) {
                    ep[tok * EP + 8 * rw + g] =
                        mxm_act_gated(G.act, acc[ni][e], acc[ni][2 + e], ap);
                } else {
                    ep[tok * EP + 16 * rw + g] = mxm_act_plain(G.act, acc[ni][e]);
                    ep[tok * EP + 16 * rw + g + 8] = mxm_act_plain(G.act, acc[ni][2 + e]);
                }
            }
    __syncthreads();
    const int j0 = chunk * COLS, nb = COLS / 32;
    for (int u = warp; u < n * nb; u += SK_THREADS / 32) {
        const int tok = u / nb, b = u % nb;
        if (j0 + 32 * b >= G.I) continue; // I is a multiple of 32: whole blocks are in or out
        float v[1] = {ep[tok * EP + 32 * b + lane]};
        const int64_t o[1] = {(int64_t)(G.row0 + tok) * a.I_max + j0 + 32 * b + lane};
        const bool keep[1] = {true};
        mxm_gemm1_store<WF>(a, v, o, keep);
    }
}

template <int KIND, int WF>
__global__ void __launch_bounds__(SK_THREADS) skinny_kernel(mxm_cuda_args a, int nt_max) {
    extern __shared__ __align__(128) unsigned char sk_ring[];
    if (KIND != SK_GEMM2) { // GEMM2 waits inside, after its first weight copies
        mxm_griddep_wait();
        mxm_griddep_launch();
    }
    const int g = sk_group(a);
    if (g < 0) return;
    const mxm_cuda_group G = a.group[g];
    if (KIND != SK_GEMM2 && mxm_act_is_gated(G.act) != (KIND == SK_GEMM1_GATED)) return;
    const int chunk = blockIdx.y;
    if (KIND == SK_GEMM1_GATED ? chunk * 32 >= G.I : KIND == SK_GEMM1_PLAIN ? chunk * SK_ROWS >= G.I
                                                                             : chunk * SK_ROWS >= a.H)
        return;
    switch ((G.rows + 7) / 8) { // the group's n8 tiles (rows <= MXM_CUDA_SKINNY_MAX <= 8 nt_max)
    case 1:
        sk_body<KIND, WF, 1>(a, G, chunk, nt_max, sk_ring);
        break;
    case 2:
        sk_body<KIND, WF, 2>(a, G, chunk, nt_max, sk_ring);
        break;
    case 3:
        sk_body<KIND, WF, 3>(a, G, chunk, nt_max, sk_ring);
        break;
    default:
        sk_body<KIND, WF, 4>(a, G, chunk, nt_max, sk_ring);
        break;
    }
}

// The launch's n8 tiles per block: no group holds more rows than T x K (or T, the shared expert).
static int sk_nt_max(const mxm_cuda_args &a) {
    const int64_t rows = (int64_t)a.T * a.K < MXM_CUDA_SKINNY_MAX ? (int64_t)a.T * a.K : MXM_CUDA_SKINNY_MAX;
    return (int)((rows + 7) / 8);
}

// Blocks along x: the groups that can be skinny groups; a list built on the device maps them.
static int sk_group_bound(const mxm_cuda_args &a) {
    const int64_t pairs = (int64_t)a.T * a.K + (a.groups > a.e_loc ? 1 : 0);
    return (int)(pairs < a.groups ? pairs : a.groups);
}

template <int KIND, int WF>
static mxm_status sk_launch(const mxm_cuda_args &a, int chunks, cudaStream_t s) {
    const int nt_max = sk_nt_max(a), smem = SK_STAGES * sk_stage_bytes(nt_max);
    static int raised = 0; // per instantiation: the largest dynamic shared memory granted so far
    if (smem > raised) {
        MXM_CUDA_TRY(cudaFuncSetAttribute(skinny_kernel<KIND, WF>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          SK_STAGES * sk_stage_bytes(SK_NT_MAX)));
        raised = SK_STAGES * sk_stage_bytes(SK_NT_MAX);
    }
    return mxm_cuda_launch(skinny_kernel<KIND, WF>, dim3(sk_group_bound(a), chunks), SK_THREADS,
                           (size_t)smem, s, a, nt_max);
}

mxm_status mxm_cuda_skinny1(const mxm_cuda_args &a, cudaStream_t s) {
    return mxm_cuda_by_gating(a.gated_routed, a.gated_shared, [&](auto gated) {
        constexpr int kind = decltype(gated)::value ? SK_GEMM1_GATED : SK_GEMM1_PLAIN;
        const int cols = kind == SK_GEMM1_GATED ? 32 : SK_ROWS; // intermediate columns per block
        const int chunks = (a.I_max + cols - 1) / cols;
        return mxm_cuda_by_format(
            a.wfmt, [&](auto f) { return sk_launch<kind, decltype(f)::value>(a, chunks, s); });
    });
}

mxm_status mxm_cuda_skinny2(const mxm_cuda_args &a, cudaStream_t s) {
    const int chunks = (a.H + SK_ROWS - 1) / SK_ROWS;
    return mxm_cuda_by_format(
        a.wfmt, [&](auto f) { return sk_launch<SK_GEMM2, decltype(f)::value>(a, chunks, s); });
}
