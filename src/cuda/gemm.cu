// Prefill path: grouped GEMMs on the tensor cores. MXFP8 weights are decoded exactly to bf16
// (an E4M3 value times a power of two is a bf16 value) as they are staged into shared memory;
// activations are already bf16 values (exact after MXFP8 quantization); bf16 mma.sync
// accumulates in fp32. GEMM1 fuses the activation and the MXFP8 requantization into its
// epilogue; GEMM2 writes the expert outputs. Tiles: 64 rows x 128 weight rows x 64 (two MX
// blocks) per step, 8 warps of 32 x 32. A 3-stage cp.async ring brings the activations (bf16)
// and the raw weight codes into shared memory ahead of use; each step the CTA decodes the
// step's 128 x 64 codes once into a bf16 tile (scales of its 128 rows stay in shared memory for
// the whole K loop), then the warps run ldmatrix + mma on it.
#include "cuda/kernels.cuh"
#include "cuda/mx_device.cuh"

#define BM MXM_CUDA_BM
#define BN 128
#define BK 64
#define SROW 72 // shared row stride in bf16 (144 bytes: ldmatrix rows hit distinct banks)
#define RAW_STRIDE 80 // bytes per raw code row in the ring
#define THREADS 256
#define STAGES 3
#define A_BYTES (BM * SROW * 2)
#define RAW_BYTES (BN * RAW_STRIDE)
#define STAGE_BYTES (A_BYTES + RAW_BYTES)
#define BTILE_BYTES (BN * SROW * 2)
#define C_STRIDE (BN + 4)
#define C_BYTES (BM * C_STRIDE * 4)
// Shared memory: [ring: STAGES x (A bf16 | raw codes)] [decoded B tile bf16] [scales BN x K/32];
// the epilogue's C tile reuses the ring.
#define RING_BYTES (STAGES * STAGE_BYTES > C_BYTES ? STAGES * STAGE_BYTES : C_BYTES)

static inline size_t smem_bytes(int64_t k) { return (size_t)RING_BYTES + BTILE_BYTES + (size_t)BN * (size_t)(k / 32); }

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool valid) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

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
    const void *any; // a valid global address: the source of zero-filled (skipped) copies
};

// K is a multiple of 32, not always of BK: pieces past K are zero-filled.
__device__ __forceinline__ void load_stage(unsigned char *stage, const operand_rows &r, int64_t k0, int64_t K) {
    const int t = threadIdx.x;
    __nv_bfloat16 *as = reinterpret_cast<__nv_bfloat16 *>(stage);
    uint8_t *raw = stage + A_BYTES;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int ar = t / 8 + 32 * i, ac = (t % 8) * 8;
        const bool av = r.a[i] && k0 + ac < K;
        cp_async16(as + ar * SROW + ac, av ? (const void *)(r.a[i] + k0 + ac) : r.any, av);
        const int br = t / 4 + 64 * i, bc = (t % 4) * 16;
        const bool bv = r.b[i] && k0 + bc < K;
        cp_async16(raw + br * RAW_STRIDE + bc, bv ? (const void *)(r.b[i] + k0 + bc) : r.any, bv);
    }
}

// Decodes this thread's 2 x 16 codes of the stage into the bf16 B tile (exact).
__device__ __forceinline__ void decode_stage(const unsigned char *stage, __nv_bfloat16 (*btile)[SROW],
                                             const uint8_t *scales, int kb, int64_t k0) {
    const int t = threadIdx.x;
    const uint8_t *raw = stage + A_BYTES;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int br = t / 4 + 64 * i, bc = (t % 4) * 16;
        const float sc = mxm_e8m0_decode(scales[br * kb + (int)((k0 + bc) / 32) % kb]);
        const uint4 q4 = *reinterpret_cast<const uint4 *>(raw + br * RAW_STRIDE + bc);
        const uint16_t *q = reinterpret_cast<const uint16_t *>(&q4);
        __align__(16) __nv_bfloat162 out[8];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const float2 f = mxm_e4m3x2_to_float2(q[j]);
            out[j] = __floats2bfloat162_rn(f.x * sc, f.y * sc); // exact: E4M3 value times 2^k
        }
        *reinterpret_cast<uint4 *>(&btile[br][bc]) = *reinterpret_cast<uint4 *>(&out[0]);
        *reinterpret_cast<uint4 *>(&btile[br][bc + 8]) = *reinterpret_cast<uint4 *>(&out[4]);
    }
}

// acc[mi][ni][4] += A[BM x K] . B[BN x K]^T for this warp's 32 x 32 piece. scale_rows[n]: the
// scale row of weight row n (nullptr: no row).
__device__ __forceinline__ void mainloop(unsigned char *smem, const operand_rows &rows,
                                         const uint8_t *const *scale_rows, int64_t K, float (&acc)[2][4][4]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    const int wm = warp / 4, wn = warp % 4;
    const int kb = (int)(K / 32);
    __nv_bfloat16(*btile)[SROW] = reinterpret_cast<__nv_bfloat16(*)[SROW]>(smem + RING_BYTES);
    uint8_t *scales = smem + RING_BYTES + BTILE_BYTES; // [BN][kb]
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
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
        __syncthreads(); // this step's stage has landed; the previous MMA is done with the B tile
        const int pf = step + STAGES - 1;
        if (pf < nsteps) load_stage(smem + (pf % STAGES) * STAGE_BYTES, rows, (int64_t)pf * BK, K);
        cp_async_commit();
        const unsigned char *stage = smem + (step % STAGES) * STAGE_BYTES;
        decode_stage(stage, btile, scales, kb, (int64_t)step * BK);
        __syncthreads();
        const __nv_bfloat16(*as)[SROW] = reinterpret_cast<const __nv_bfloat16(*)[SROW]>(stage);
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            uint32_t af[2][4], bf[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
                ldmatrix_x4(af[mi], &as[wm * 32 + mi * 16 + (lane % 8) + ((lane / 8) % 2) * 8][kk + (lane / 16) * 8]);
#pragma unroll
            for (int np = 0; np < 2; np++) {
                uint32_t r[4];
                ldmatrix_x4(r, &btile[wn * 32 + np * 16 + (lane % 8) + (lane / 16) * 8][kk + ((lane / 8) % 2) * 8]);
                bf[2 * np][0] = r[0], bf[2 * np][1] = r[1], bf[2 * np + 1][0] = r[2], bf[2 * np + 1][1] = r[3];
            }
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++) mma_bf16(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
        }
    }
    cp_async_wait<0>();
    __syncthreads(); // the ring may be reused by the epilogue
}

// Writes the accumulators into the block's C tile in shared memory.
__device__ __forceinline__ void acc_to_smem(float (*c)[C_STRIDE], const float (&acc)[2][4][4]) {
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
    float acc[2][4][4];
    mainloop(smem, rows, scale_rows, a.H, acc);
    float(*c)[C_STRIDE] = reinterpret_cast<float(*)[C_STRIDE]>(smem);
    acc_to_smem(c, acc);
    __syncthreads();
    const mxm_act_params ap = {G.alpha, G.beta, G.limit};
    for (int i = tid; i < BM * JT; i += THREADS) {
        const int r = i / JT, j = i % JT;
        c[r][j] = GATED ? mxm_act_gated(G.act, c[r][j], c[r][JT + j], ap) : mxm_act_plain(G.act, c[r][j]);
    }
    __syncthreads();
    const int lane = tid & 31, warp = tid / 32, nb = JT / 32;
    for (int u = warp; u < BM * nb; u += THREADS / 32) {
        const int r = u / nb, b = u % nb;
        const int j = j0 + b * 32 + lane;
        float v = c[r][b * 32 + lane];
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
    float acc[2][4][4];
    mainloop(smem, rows, scale_rows, G.I, acc);
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
