// Prefill path: grouped GEMMs on the tensor cores. Activations are bf16 values (exact after
// MXFP8 quantization); MXFP8 weight codes are staged raw into shared memory by cp.async (a
// 4-stage ring) and decoded exactly to bf16 (an E4M3 value times a power of two is a bf16
// value) as each warp builds its mma fragments; bf16 mma.sync accumulates in fp32. A CTA
// computes 64 rows x 128 weight rows; its 8 warps each own 16 weight rows across all 64 rows,
// so every weight code is decoded once per CTA. The scales of the CTA's 128 weight rows sit in
// shared memory for the whole K loop. GEMM1 fuses the activation and the MXFP8 requantization
// into its epilogue; GEMM2 writes the expert outputs.
#include "cuda/kernels.cuh"
#include "cuda/mx_device.cuh"

#define BM MXM_CUDA_BM
#define BN 128
#define BK 64
#define STAGES 4
#define A_STRIDE 72 // bf16 per shared A row (144 bytes: ldmatrix rows hit distinct banks)
#define B_STRIDE 80 // bytes per shared B row (fragment loads of 8 rows hit distinct banks)
#define THREADS 256
#define A_STAGE_BYTES (BM * A_STRIDE * 2)
#define B_STAGE_BYTES (BN * B_STRIDE)
#define STAGE_BYTES (A_STAGE_BYTES + B_STAGE_BYTES)
#define C_STRIDE (BN + 4)

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes global -> shared, asynchronously; zero-filled when !valid (nothing is read then).
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool valid) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Two E4M3 codes times a power-of-two scale, as a bf16 pair (exact).
__device__ __forceinline__ uint32_t e4m3x2_to_bf16x2(uint16_t two, float scale) {
    const float2 f = mxm_e4m3x2_to_float2(two);
    const __nv_bfloat162 h = __floats2bfloat162_rn(f.x * scale, f.y * scale);
    return *reinterpret_cast<const uint32_t *>(&h);
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

// The operand rows of one CTA: this thread's two A rows (t/8 and t/8 + 32) and two B rows
// (t/4 and t/4 + 64); nullptr past the group's rows or past N.
struct operand_rows {
    const __nv_bfloat16 *a[2];
    const uint8_t *b[2];
    const void *any; // a valid global address, the source of zero-filled (skipped) copies
};

// Bytes of dynamic shared memory for a K of k: the stage ring and the CTA's scales.
static inline size_t smem_bytes(int64_t k) {
    const size_t ring = (size_t)STAGES * STAGE_BYTES, c = (size_t)BM * C_STRIDE * 4;
    return (ring > c ? ring : c) + (size_t)BN * (size_t)(k / 32);
}

__device__ __forceinline__ void load_stage(unsigned char *stage, const operand_rows &r, int64_t k0, int64_t K) {
    const int t = threadIdx.x;
    __nv_bfloat16 *as = reinterpret_cast<__nv_bfloat16 *>(stage);
    uint8_t *bs = stage + A_STAGE_BYTES;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int ar = t / 8 + 32 * i, ac = (t % 8) * 8;
        const bool av = r.a[i] && k0 + ac < K;
        cp_async16(as + ar * A_STRIDE + ac, av ? (const void *)(r.a[i] + k0 + ac) : r.any, av);
        const int br = t / 4 + 64 * i, bc = (t % 4) * 16;
        const bool bv = r.b[i] && k0 + bc < K;
        cp_async16(bs + br * B_STRIDE + bc, bv ? (const void *)(r.b[i] + k0 + bc) : r.any, bv);
    }
}

// acc[mi][ni][4] += A[BM x K] . B[BN x K]^T for this warp's 64 x 16 piece. scale_rows[n] is
// weight row n's scale row (nullptr: no row). smem: the dynamic shared memory.
__device__ __forceinline__ void mainloop(unsigned char *smem, const operand_rows &rows,
                                         const uint8_t *const *scale_rows, int64_t K, float (&acc)[4][2][4]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    const int kb = (int)(K / 32);
    size_t ring = (size_t)STAGES * STAGE_BYTES;
    if (ring < (size_t)BM * C_STRIDE * 4) ring = (size_t)BM * C_STRIDE * 4;
    uint8_t *scales = smem + ring; // [BN][kb]
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 2; ni++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[mi][ni][q] = 0.0f;
    const int nsteps = (int)((K + BK - 1) / BK);
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < nsteps) load_stage(smem + s * STAGE_BYTES, rows, (int64_t)s * BK, K);
        cp_async_commit();
    }
    for (int i = threadIdx.x; i < BN * kb; i += THREADS) {
        const uint8_t *sr = scale_rows[i / kb];
        scales[i] = sr ? __ldg(sr + i % kb) : (uint8_t)127;
    }
    for (int step = 0; step < nsteps; step++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int pf = step + STAGES - 1;
        if (pf < nsteps) load_stage(smem + (pf % STAGES) * STAGE_BYTES, rows, (int64_t)pf * BK, K);
        cp_async_commit();
        const unsigned char *stage = smem + (step % STAGES) * STAGE_BYTES;
        const __nv_bfloat16 *as = reinterpret_cast<const __nv_bfloat16 *>(stage);
        const uint8_t *bs = stage + A_STAGE_BYTES;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            if ((int64_t)step * BK + kk >= K) break; // K is a multiple of 32, not of BK
            uint32_t af[4][4], bf[2][2];
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
                ldmatrix_x4(af[mi], as + (mi * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * A_STRIDE + kk + (lane / 16) * 8);
            const int kblk = (step * BK + kk) / 32;
#pragma unroll
            for (int ni = 0; ni < 2; ni++) {
                const int n = warp * 16 + ni * 8 + lane / 4;
                const float sc = mxm_e8m0_decode(scales[n * kb + kblk]);
                const uint8_t *q = bs + n * B_STRIDE + kk + 2 * (lane % 4);
                bf[ni][0] = e4m3x2_to_bf16x2(*reinterpret_cast<const uint16_t *>(q), sc);
                bf[ni][1] = e4m3x2_to_bf16x2(*reinterpret_cast<const uint16_t *>(q + 8), sc);
            }
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
#pragma unroll
                for (int ni = 0; ni < 2; ni++) mma_bf16(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
        }
    }
    cp_async_wait<0>();
    __syncthreads(); // the ring may be reused by the epilogue
}

// Writes the accumulators into the block's C tile (row-major [BM][C_STRIDE] fp32 in smem).
__device__ __forceinline__ void acc_to_smem(float *c, const float (&acc)[4][2][4]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 2; ni++) {
            const int r = mi * 16 + lane / 4, col = warp * 16 + ni * 8 + (lane % 4) * 2;
            c[r * C_STRIDE + col] = acc[mi][ni][0], c[r * C_STRIDE + col + 1] = acc[mi][ni][1];
            c[(r + 8) * C_STRIDE + col] = acc[mi][ni][2], c[(r + 8) * C_STRIDE + col + 1] = acc[mi][ni][3];
        }
}

__device__ __forceinline__ int64_t w13_row_of(int layout, bool gated, int64_t I, int64_t j, int half) {
    if (!gated) return j;
    if (layout == MXM_W13_INTERLEAVED) return 2 * j + half;
    const int first = layout == MXM_W13_UP_GATE ? 1 : 0;
    return (half == first ? 0 : I) + j;
}

// GEMM1: gated tiles cover 64 intermediate columns (64 gate + 64 up weight rows), non-gated
// tiles 128 columns.
template <bool GATED>
__global__ void __launch_bounds__(THREADS) mma1_kernel(mxm_cuda_args a) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ const uint8_t *scale_rows[BN];
    int g, m0;
    if (!find_tile(a, &g, &m0)) return;
    const mxm_cuda_group G = a.group[g];
    if (mxm_act_is_gated(G.act) != GATED) return;
    const int JT = GATED ? BN / 2 : BN;
    const int j0 = blockIdx.y * JT;
    if (j0 >= G.I) return;
    const int tid = threadIdx.x;
    const int64_t kb = a.H / 32;
    if (tid < BN) {
        const int jb = GATED ? j0 + (tid % 64) : j0 + tid;
        scale_rows[tid] = jb < G.I ? G.s13 + w13_row_of(a.layout, GATED, G.I, jb, GATED ? tid / 64 : 0) * kb : nullptr;
    }
    operand_rows rows;
    rows.any = G.w13;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int ar = tid / 8 + 32 * i, br = tid / 4 + 64 * i;
        rows.a[i] = m0 + ar < G.rows ? a.xq + (int64_t)a.row_token[G.row0 + m0 + ar] * a.H : nullptr;
        const int jb = GATED ? j0 + (br % 64) : j0 + br;
        rows.b[i] = jb < G.I ? G.w13 + w13_row_of(a.layout, GATED, G.I, jb, GATED ? br / 64 : 0) * a.H : nullptr;
    }
    __syncthreads();
    float acc[4][2][4];
    mainloop(smem, rows, scale_rows, a.H, acc);
    float *c = reinterpret_cast<float *>(smem);
    acc_to_smem(c, acc);
    __syncthreads();
    const mxm_act_params ap = {G.alpha, G.beta, G.limit};
    for (int i = tid; i < BM * JT; i += THREADS) {
        const int r = i / JT, j = i % JT;
        c[r * C_STRIDE + j] = GATED ? mxm_act_gated(G.act, c[r * C_STRIDE + j], c[r * C_STRIDE + JT + j], ap)
                                    : mxm_act_plain(G.act, c[r * C_STRIDE + j]);
    }
    __syncthreads();
    const int lane = tid & 31, warp = tid / 32, nb = JT / 32;
    for (int u = warp; u < BM * nb; u += THREADS / 32) {
        const int r = u / nb, b = u % nb;
        const int j = j0 + b * 32 + lane;
        float v = c[r * C_STRIDE + b * 32 + lane];
        if (a.profile == MXM_PROFILE_TRTLLM) v = mxm_round_bf16(v);
        if (a.act_quant == MXM_ACT_QUANT_MXFP8) v = mxm_warp_mx_fakequant(v, a.rule);
        if (m0 + r < G.rows && j0 + b * 32 < G.I) a.act[(int64_t)(G.row0 + m0 + r) * a.I_max + j] = __float2bfloat16_rn(v);
    }
}

__global__ void __launch_bounds__(THREADS) mma2_kernel(mxm_cuda_args a) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ const uint8_t *scale_rows[BN];
    int g, m0;
    if (!find_tile(a, &g, &m0)) return;
    const mxm_cuda_group G = a.group[g];
    const int h0 = blockIdx.y * BN;
    const int tid = threadIdx.x;
    if (tid < BN) scale_rows[tid] = h0 + tid < a.H ? G.s2 + (int64_t)(h0 + tid) * (G.I / 32) : nullptr;
    operand_rows rows;
    rows.any = G.w2;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int ar = tid / 8 + 32 * i, br = tid / 4 + 64 * i;
        rows.a[i] = m0 + ar < G.rows ? a.act + (int64_t)(G.row0 + m0 + ar) * a.I_max : nullptr;
        rows.b[i] = h0 + br < a.H ? G.w2 + (int64_t)(h0 + br) * G.I : nullptr;
    }
    __syncthreads();
    float acc[4][2][4];
    mainloop(smem, rows, scale_rows, G.I, acc);
    const int lane = tid & 31, warp = tid / 32;
    const bool trt = a.profile == MXM_PROFILE_TRTLLM;
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 2; ni++)
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const int r = mi * 16 + lane / 4 + (q / 2) * 8;
                const int h = h0 + warp * 16 + ni * 8 + (lane % 4) * 2 + (q % 2);
                if (m0 + r < G.rows && h < a.H) {
                    const float v = acc[mi][ni][q];
                    a.y[(int64_t)(G.row0 + m0 + r) * a.H + h] = trt ? mxm_round_bf16(v) : v;
                }
            }
}

// Raises a kernel's dynamic shared memory limit when a launch needs more than it has.
template <typename K> static mxm_status ensure_smem(K kernel, size_t bytes, size_t *raised) {
    if (bytes > 48 * 1024 && bytes > *raised) {
        MXM_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
        *raised = bytes;
    }
    return MXM_OK;
}

mxm_status mxm_cuda_mma1(const mxm_cuda_args &a, int32_t max_tiles, cudaStream_t s) {
    if (max_tiles <= 0) return MXM_OK;
    static size_t raised_g, raised_p;
    const size_t smem = smem_bytes(a.H);
    mxm_status st;
    // Routed and shared experts may differ in gating; each kernel skips the groups of the other.
    if (a.gated_routed || a.gated_shared == 1) {
        if ((st = ensure_smem(mma1_kernel<true>, smem, &raised_g))) return st;
        mma1_kernel<true><<<dim3(max_tiles, (a.I_max + BN / 2 - 1) / (BN / 2)), THREADS, smem, s>>>(a);
        MXM_CUDA_LAUNCHED();
    }
    if (!a.gated_routed || a.gated_shared == 0) {
        if ((st = ensure_smem(mma1_kernel<false>, smem, &raised_p))) return st;
        mma1_kernel<false><<<dim3(max_tiles, (a.I_max + BN - 1) / BN), THREADS, smem, s>>>(a);
        MXM_CUDA_LAUNCHED();
    }
    return MXM_OK;
}

mxm_status mxm_cuda_mma2(const mxm_cuda_args &a, int32_t max_tiles, cudaStream_t s) {
    if (max_tiles <= 0) return MXM_OK;
    static size_t raised;
    const size_t smem = smem_bytes(a.I_max);
    mxm_status st = ensure_smem(mma2_kernel, smem, &raised);
    if (st) return st;
    mma2_kernel<<<dim3(max_tiles, (a.H + BN - 1) / BN), THREADS, smem, s>>>(a);
    MXM_CUDA_LAUNCHED();
    return MXM_OK;
}
