// Prefill path: grouped GEMMs on the tensor cores. MXFP8 weights are decoded exactly to bf16
// (an E4M3 value times a power of two is a bf16 value) as they are staged into shared memory;
// activations are already bf16 values (exact after MXFP8 quantization); bf16 mma.sync
// accumulates in fp32. DeepSeek FP8 (BLK): the E4M3 codes' values go to the tensor cores as
// they are (exact in bf16), each 128-block of K accumulates on its own and is added to the
// result times its activation scale and weight scale (fp32), as DeepSeek's own kernels do. GEMM1 fuses the activation and the MXFP8 requantization into its
// epilogue; GEMM2 writes the expert outputs. Tiles: 64 rows x 128 weight rows x 64 (two MX
// blocks) per step, 8 warps of 32 x 32, double-buffered shared memory with the next step's tiles
// prefetched into registers while the tensor cores work on the current one.
#include "cuda/kernels.cuh"
#include "cuda/mx_device.cuh"

#define BM MXM_CUDA_BM
#define BN 128
#define BK 64
#define SROW 72 // shared row stride in bf16 (144 bytes: ldmatrix rows hit distinct banks)
#define THREADS 256

struct smem_tiles {
    __nv_bfloat16 a[2][BM][SROW];
    __nv_bfloat16 b[2][BN][SROW];
};
#define C_STRIDE (BN + 4)
union __align__(16) smem_all {
    smem_tiles t;
    float c[BM][C_STRIDE];
};

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// Which MMA m-tile this block works on: the group and the tile's first row in the group.
__device__ __forceinline__ bool find_tile(const mxm_cuda_args &a, int *g_out, int *m0_out) {
    __shared__ int sg;
    const int idx = blockIdx.x;
    if (idx >= a.counts[0]) return false;
    if (threadIdx.x == 0) {
        int lo = 0, hi = a.groups - 1;
        while (lo < hi) { // the last group whose first tile is <= idx
            const int mid = (lo + hi + 1) / 2;
            if (a.group[mid].tile0 <= idx) lo = mid;
            else hi = mid - 1;
        }
        sg = lo;
    }
    __syncthreads();
    *g_out = sg;
    *m0_out = (idx - a.group[sg].tile0) * BM;
    return true;
}

// Per-thread staging of one K step: two 16-byte pieces of A (8 bf16 each) and two of B (16
// E4M3 codes each, with their scales). Thread t stages A rows t/8 and t/8 + 32 (columns
// (t%8)*8) and B rows t/4 and t/4 + 64 (columns (t%4)*16).
struct stage {
    uint4 a[2];
    uint4 b[2];
    uint8_t s[2];
};

struct operand_rows {
    const __nv_bfloat16 *a[2]; // A rows of this thread (nullptr: past the group's rows)
    const uint8_t *b[2];       // B code rows (nullptr: past N)
    const uint8_t *bs[2];      // their scale rows
};

// K is a multiple of 32, not always of BK: pieces past K load zeros. BLK: no MX scales (1.0).
template <int WF>
__device__ __forceinline__ void load_stage(stage &st, const operand_rows &r, int64_t k0,
                                           int64_t K) {
    const int ac = (threadIdx.x % 8) * 8, bc = (threadIdx.x % 4) * 16;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        st.a[i] = r.a[i] && k0 + ac < K ? *reinterpret_cast<const uint4 *>(r.a[i] + k0 + ac) : make_uint4(0, 0, 0, 0);
        if (r.b[i] && k0 + bc < K) {
            st.b[i] = __ldg(reinterpret_cast<const uint4 *>(r.b[i] + k0 + bc));
            st.s[i] = mxm_cuda_fmt<WF>::block128 ? 127 : __ldg(r.bs[i] + (k0 + bc) / 32);
        } else {
            st.b[i] = make_uint4(0, 0, 0, 0);
            st.s[i] = 127;
        }
    }
}

__device__ __forceinline__ void store_stage(const stage &st, smem_tiles &t, int buf) {
    const int ar = threadIdx.x / 8, ac = (threadIdx.x % 8) * 8, br = threadIdx.x / 4, bc = (threadIdx.x % 4) * 16;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        *reinterpret_cast<uint4 *>(&t.a[buf][ar + 32 * i][ac]) = st.a[i];
        const float sc = mxm_e8m0_decode(st.s[i]);
        const uint16_t *q = reinterpret_cast<const uint16_t *>(&st.b[i]);
        __align__(16) __nv_bfloat162 out[8];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const float2 f = mxm_e4m3x2_to_float2(q[j]);
            out[j] = __floats2bfloat162_rn(f.x * sc, f.y * sc); // exact: E4M3 value times 2^k
        }
        *reinterpret_cast<uint4 *>(&t.b[buf][br + 64 * i][bc]) = *reinterpret_cast<uint4 *>(&out[0]);
        *reinterpret_cast<uint4 *>(&t.b[buf][br + 64 * i][bc + 8]) = *reinterpret_cast<uint4 *>(&out[4]);
    }
}

// DeepSeek FP8: the per-128-block scales of this thread's accumulator rows and columns. Row
// (mi, h) of the fragments is a[2 mi + h], column (ni, c) is b[2 ni + c]; each points at the
// row's scales over the 128-blocks of K (nullptr: 1.0 for a, 0 for b).
struct blk_scales {
    const float *a[4];
    const float *b[8];
};

__device__ __forceinline__ void zero_acc(float (&acc)[2][4][4]) {
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[mi][ni][q] = 0.0f;
}

// acc += A . B^T over one staged BK step, for this warp's 32 x 32 piece.
__device__ __forceinline__ void mma_step(const smem_tiles &t, int buf, float (&acc)[2][4][4]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    const int wm = warp / 4, wn = warp % 4;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
        uint32_t af[2][4], bf[4][2];
#pragma unroll
        for (int mi = 0; mi < 2; mi++)
            ldmatrix_x4(af[mi], &t.a[buf][wm * 32 + mi * 16 + (lane % 8) + ((lane / 8) % 2) * 8][kk + (lane / 16) * 8]);
#pragma unroll
        for (int np = 0; np < 2; np++) {
            uint32_t r[4];
            ldmatrix_x4(r, &t.b[buf][wn * 32 + np * 16 + (lane % 8) + (lane / 16) * 8][kk + ((lane / 8) % 2) * 8]);
            bf[2 * np][0] = r[0], bf[2 * np][1] = r[1], bf[2 * np + 1][0] = r[2], bf[2 * np + 1][1] = r[3];
        }
#pragma unroll
        for (int mi = 0; mi < 2; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++)
                mxm_mma_16816(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
    }
}

// acc += part * (activation scale x weight scale) of 128-block kb, then part = 0.
__device__ __forceinline__ void promote(float (&acc)[2][4][4], float (&part)[2][4][4], const blk_scales &bs,
                                        int64_t kb) {
    float sa[4], sb[8];
#pragma unroll
    for (int i = 0; i < 4; i++) sa[i] = bs.a[i] ? bs.a[i][kb] : 1.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) sb[i] = bs.b[i] ? bs.b[i][kb] : 0.0f;
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int q = 0; q < 4; q++) {
                acc[mi][ni][q] = fmaf(part[mi][ni][q], sa[2 * mi + q / 2] * sb[2 * ni + q % 2], acc[mi][ni][q]);
                part[mi][ni][q] = 0.0f;
            }
}

// acc[mi][ni][4] = A[BM x K] . B[BN x K]^T for this warp's 32 x 32 piece (BLK: scaled per
// 128-block of K with bs).
template <int WF>
__device__ __forceinline__ void mainloop(smem_tiles &t, const operand_rows &rows, int64_t K,
                                         float (&acc)[2][4][4], const blk_scales *bs) {
    constexpr bool BLK = mxm_cuda_fmt<WF>::block128;
    zero_acc(acc);
    float part[2][4][4];
    if (BLK) zero_acc(part);
    stage st;
    load_stage<WF>(st, rows, 0, K);
    store_stage(st, t, 0);
    __syncthreads();
    int buf = 0;
    for (int64_t k0 = 0; k0 < K; k0 += BK) {
        const bool more = k0 + BK < K;
        if (more) load_stage<WF>(st, rows, k0 + BK, K);
        if (BLK) {
            mma_step(t, buf, part);
            if ((k0 + BK) % 128 == 0 || !more) promote(acc, part, *bs, k0 / 128);
        } else {
            mma_step(t, buf, acc);
        }
        if (more) store_stage(st, t, buf ^ 1);
        __syncthreads();
        buf ^= 1;
    }
}

// The row of the block's B tile that fragment column (ni, c) of this thread reads.
__device__ __forceinline__ int frag_col(int ni, int c) {
    const int lane = threadIdx.x & 31, wn = (threadIdx.x / 32) % 4;
    return wn * 32 + ni * 8 + (lane % 4) * 2 + c;
}

// The row of the block's A tile that fragment row (mi, h) of this thread holds.
__device__ __forceinline__ int frag_row(int mi, int h) {
    const int lane = threadIdx.x & 31, wm = (threadIdx.x / 32) / 4;
    return wm * 32 + mi * 16 + lane / 4 + h * 8;
}

// Writes the accumulators into the block's C tile in shared memory.
__device__ __forceinline__ void acc_to_smem(float (&c)[BM][C_STRIDE], const float (&acc)[2][4][4]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, wm = warp / 4, wn = warp % 4;
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++) {
            const int r = wm * 32 + mi * 16 + lane / 4, col = wn * 32 + ni * 8 + (lane % 4) * 2;
            c[r][col] = acc[mi][ni][0], c[r][col + 1] = acc[mi][ni][1];
            c[r + 8][col] = acc[mi][ni][2], c[r + 8][col + 1] = acc[mi][ni][3];
        }
}

// GEMM1: gated tiles cover 64 intermediate columns (64 gate + 64 up weight rows), non-gated
// tiles 128 columns.
// The W13 row behind row br of a GEMM1 B tile starting at intermediate column j0, or -1 past I.
template <bool GATED>
__device__ __forceinline__ int64_t gemm1_b_row(const mxm_cuda_args &a, const mxm_cuda_group &G, int j0, int br) {
    const int jb = GATED ? j0 + (br % 64) : j0 + br;
    return jb < G.I ? mxm_cuda_w13_row(a.layout, GATED, G.I, jb, GATED ? br / 64 : 0) : -1;
}

template <bool GATED, int WF>
__global__ void __launch_bounds__(THREADS) mma1_kernel(mxm_cuda_args a) {
    constexpr bool BLK = mxm_cuda_fmt<WF>::block128;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    smem_all &sm = *reinterpret_cast<smem_all *>(smem_raw);
    MXM_KERNEL_ENTRY_LAUNCH_FIRST(a, MXM_SITE_MMA1);
    int g, m0;
    if (!find_tile(a, &g, &m0)) return;
    const mxm_cuda_group G = a.group[g];
    if (mxm_act_is_gated(G.act) != GATED) return;
    const int JT = GATED ? BN / 2 : BN;
    const int j0 = blockIdx.y * JT;
    if (j0 >= G.I) return;
    const int tid = threadIdx.x;
    operand_rows rows;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int ar = tid / 8 + 32 * i, br = tid / 4 + 64 * i;
        rows.a[i] = m0 + ar < G.rows ? a.xq + (int64_t)a.row_token[G.row0 + m0 + ar] * a.H : nullptr;
        const int64_t r = gemm1_b_row<GATED>(a, G, j0, br);
        rows.b[i] = r >= 0 ? G.w13 + r * a.H : nullptr;
        rows.bs[i] = r >= 0 && !BLK ? mxm_cuda_fmt<MXM_WFMT_MXFP8>::scales(G.sc13) + r * (a.H / 32)
                                    : nullptr;
    }
    blk_scales bs;
    if (BLK) {
        const bool w8a8 = mxm_cuda_blk_w8a8(a);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = frag_row(i / 2, i % 2);
            bs.a[i] = w8a8 && m0 + r < G.rows ? a.xs + (int64_t)a.row_token[G.row0 + m0 + r] * a.HB : nullptr;
        }
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int64_t r = gemm1_b_row<GATED>(a, G, j0, frag_col(i / 2, i % 2));
            bs.b[i] = r >= 0 ? mxm_cuda_fmt<MXM_WFMT_FP8_BLOCK>::scales(G.sc13) + (r / 128) * a.HB
                             : nullptr;
        }
    }
    float acc[2][4][4];
    mainloop<WF>(sm.t, rows, a.H, acc, &bs);
    acc_to_smem(sm.c, acc);
    __syncthreads();
    const mxm_act_params ap = {G.alpha, G.beta, G.limit};
    for (int i = tid; i < BM * JT; i += THREADS) {
        const int r = i / JT, j = i % JT;
        sm.c[r][j] = GATED ? mxm_act_gated(G.act, sm.c[r][j], sm.c[r][JT + j], ap) : mxm_act_plain(G.act, sm.c[r][j]);
    }
    __syncthreads();
    const int lane = tid & 31, warp = tid / 32, nb = JT / 32;
    for (int u = warp; u < BM * nb; u += THREADS / 32) {
        const int r = u / nb, b = u % nb;
        const int j = j0 + b * 32 + lane;
        float v[1] = {sm.c[r][b * 32 + lane]};
        const int64_t o[1] = {(int64_t)(G.row0 + m0 + r) * a.I_max + j};
        const bool keep[1] = {m0 + r < G.rows && j0 + b * 32 < G.I};
        mxm_gemm1_store<WF>(a, v, o, keep);
    }
}

template <int WF> __global__ void __launch_bounds__(THREADS) mma2_kernel(mxm_cuda_args a) {
    constexpr bool BLK = mxm_cuda_fmt<WF>::block128;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    smem_all &sm = *reinterpret_cast<smem_all *>(smem_raw);
    MXM_KERNEL_ENTRY_LAUNCH_FIRST(a, MXM_SITE_MMA2);
    int g, m0;
    if (!find_tile(a, &g, &m0)) return;
    const mxm_cuda_group G = a.group[g];
    const int h0 = blockIdx.y * BN;
    const int tid = threadIdx.x;
    operand_rows rows;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int ar = tid / 8 + 32 * i, br = tid / 4 + 64 * i;
        rows.a[i] = m0 + ar < G.rows ? a.act + (int64_t)(G.row0 + m0 + ar) * a.I_max : nullptr;
        rows.b[i] = nullptr, rows.bs[i] = nullptr;
        if (h0 + br < a.H) rows.b[i] = G.w2 + (int64_t)(h0 + br) * G.I;
        if (h0 + br < a.H && !BLK)
            rows.bs[i] =
                mxm_cuda_fmt<MXM_WFMT_MXFP8>::scales(G.sc2) + (int64_t)(h0 + br) * (G.I / 32);
    }
    blk_scales bs;
    if (BLK) {
        const bool w8a8 = mxm_cuda_blk_w8a8(a);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = frag_row(i / 2, i % 2);
            bs.a[i] = w8a8 && m0 + r < G.rows ? a.acts + (int64_t)(G.row0 + m0 + r) * a.IB : nullptr;
        }
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int h = h0 + frag_col(i / 2, i % 2);
            bs.b[i] = h < a.H ? mxm_cuda_fmt<MXM_WFMT_FP8_BLOCK>::scales(G.sc2) +
                                    (int64_t)(h / 128) * ((G.I + 127) / 128)
                              : nullptr;
        }
    }
    float acc[2][4][4];
    mainloop<WF>(sm.t, rows, G.I, acc, &bs);
    const int lane = tid & 31, warp = tid / 32, wm = warp / 4, wn = warp % 4;
    const bool trt = a.profile == MXM_PROFILE_TRTLLM;
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const int r = wm * 32 + mi * 16 + lane / 4 + (q / 2) * 8;
                const int h = h0 + wn * 32 + ni * 8 + (lane % 4) * 2 + (q % 2);
                if (m0 + r < G.rows && h < a.H) {
                    const float v = acc[mi][ni][q];
                    a.y[(int64_t)(G.row0 + m0 + r) * a.H + h] = trt ? mxm_round_bf16(v) : v;
                }
            }
}

mxm_status mxm_cuda_mma1(const mxm_cuda_args &a, int32_t max_tiles, cudaStream_t s) {
    if (max_tiles <= 0) return MXM_OK;
    return mxm_cuda_by_gating(a.gated_routed, a.gated_shared, [&](auto gated) {
        const dim3 grid(max_tiles, (a.I_max + (gated ? BN / 2 : BN) - 1) / (gated ? BN / 2 : BN));
        return mxm_cuda_by_format(a.wfmt, [&](auto f) {
            return mxm_cuda_launch(mma1_kernel<decltype(gated)::value, decltype(f)::value>, grid,
                                   THREADS, sizeof(smem_all), s, a);
        });
    });
}

mxm_status mxm_cuda_mma2(const mxm_cuda_args &a, int32_t max_tiles, cudaStream_t s) {
    if (max_tiles <= 0) return MXM_OK;
    const dim3 grid(max_tiles, (a.H + BN - 1) / BN);
    return mxm_cuda_by_format(a.wfmt, [&](auto f) {
        return mxm_cuda_launch(mma2_kernel<decltype(f)::value>, grid, THREADS, sizeof(smem_all), s,
                               a);
    });
}
