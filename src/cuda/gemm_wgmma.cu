// Prefill path on Hopper (sm_90a): grouped GEMMs on wgmma, for the groups with more than
// MXM_CUDA_SKINNY_MAX rows. Same results as gemm.cu's mma1_kernel / mma2_kernel: MXFP8 weights
// are decoded exactly to bf16 (E4M3 value x 2^scale is a bf16 number); DeepSeek FP8 weights go in
// as their codes' values and each 128-block of K is summed on its own, then added times its
// activation and weight scales; the activations are exact bf16 values, fp32 accumulation, then
// GEMM1's activation + TRT-LLM bf16 rounding + requantization (MXFP8 in the epilogue; DeepSeek
// FP8 W8A8 writes fp32 for requant_fp8block), and GEMM2's rows (rounded per profile) into a.y.
//
// Design (docs/wgmma.md: the prototype this comes from, its measurements, the production notes):
//  - C^T is computed: the decoded weights are wgmma's A operand, in registers; the activations
//    are the B operand, read from shared memory (K-major, 128-byte swizzle).
//  - CTA tile shapes (wg_shape<MB, BT, BLK>): MXFP8 picks one of three per forward by a.wg_bt
//    (moe_cuda.cu): MB = 2 is 256 weight rows x 128 or 64 tokens, each consumer warpgroup two m64
//    blocks (two m64n128k16 or m64n64k16 per k16 step on two decoded fragments); MB = 1 is 128
//    weight rows x 256 tokens, each consumer one m64 block and two m64n128k16 on one fragment
//    (token halves), half the decode per FLOP. DeepSeek FP8 runs 128 x 128 (its partial sums take
//    the registers of a second accumulator block). 64 K per stage, 384 threads. Warpgroup 0 is the
//    producer (setmaxnreg.dec): cp.async 16-byte copies of the gathered activation rows and of the
//    raw E4M3 codes into a 4-stage ring (6 for 64-token tiles, and for DeepSeek FP8, whose stages
//    also carry the tile's activation scales), completion on mbarriers. Warpgroups 1 and 2 are the
//    consumers (setmaxnreg.inc); each decodes its own A fragments one k16 step ahead of the wgmmas
//    in flight.
//  - GEMM1 gated: gate and up of one (column, token) sit in one thread: MB = 2, a consumer's m64
//    block 0 is 64 gate rows and block 1 the matching up rows (128 columns per tile); MB = 1,
//    fragment rows g and g + 8 (64 columns per tile). Non-gated GEMM1 and GEMM2: consecutive
//    weight rows.
//  - Persistent grid (one CTA per SM): tiles t = blockIdx.x, += gridDim.x over
//    (group m-tile of a.wg_bt tokens, weight n-tile), the weight tile fastest. A group's m-tiles
//    start at mxm_cuda_group.tile0_wg (permute.cu); a.counts[2] is their total. Producer and
//    consumers walk the same sequence; the ring carries over tiles.
//  - GEMM1 epilogue through a per-consumer shared buffer (not the ring, so the producer keeps
//    prefetching), in passes (gemm1_epilogue): fragments -> [token][columns] fp32, then one
//    thread per (token, 32-column block): activation, rounding, MXFP8 requantization in-thread
//    (mxm_gemm1_store32). GEMM2 stores its fragments straight to a.y (full 32-byte sectors).
#include "cuda/kernels.cuh"
#include "cuda/mx_device.cuh"

namespace {

// Tile shapes: MB m64 weight blocks per consumer warpgroup, BT tokens, as NH blocks of WN tokens
// (the wgmma's N). MXFP8 runs three, picked per forward by a.wg_bt (moe_cuda.cu): MB = 2, BT = 128
// is 256 weight rows x 128 tokens (two m64n128k16 per k16 step on two fragments); MB = 1,
// BT = 256 is 128 weight rows x 256 tokens (two m64n128k16 on one fragment: half the decode per
// FLOP, for groups of many rows); MB = 2, BT = 64 is 256 weight rows x 64 tokens (two m64n64k16:
// half the tensor work and B-operand traffic of BT = 128 where groups hold 33..64 rows, which a
// 128-token tile half wastes; 6 stages of 24 KB). DeepSeek FP8 (BLK) runs MB = 1, BT = 128: its
// per-128-block partial sums take another 64 registers beside the accumulators, and each stage
// carries the tile's 128 activation scales of its 128-block of K.
// Tokens per wgmma (its N) of a tile of bt tokens.
constexpr int wn_of(int bt) {
    return bt < 128 ? bt : 128;
}
template <int MB, int BT_, bool BLK> struct wg_shape {
    static constexpr int BT = BT_;       // tokens per tile
    static constexpr int WN = wn_of(BT); // tokens per wgmma
    static constexpr int NH = BT / WN;   // token blocks of WN (acc[NH mb + nh])
    static constexpr int NACC = WN / 2;  // accumulators per thread of one m64 x WN block
    static_assert(MB * NH <= 2 && (MB == 1 || MB == 2), "up to two 64 x 128 accumulator blocks");
    static_assert(WN == 64 || WN == 128, "m64n64k16 or m64n128k16");
    static_assert(!BLK || (MB == 1 && BT == 128), "BLK: the 128 producer threads copy 128 scales");
    static constexpr int BW = 128 * MB;          // weight rows per tile (two consumers)
    static constexpr int BK = 64;                // K per stage
    static constexpr int SLOT_ACT = BT * BK * 2; // activations: BT rows x 128 B, 128B-swizzled
    static constexpr int SLOT_W = BW * BK; // E4M3 codes: BW rows x 64 B, 16 B chunks xor-swizzled
    static constexpr int SLOT_XS = BLK ? 1024 : 0; // BLK: BT fp32 activation scales (+ padding)
    static constexpr int SLOT = SLOT_ACT + SLOT_W + SLOT_XS; // a multiple of 1024 (swizzle atoms)
    static constexpr int STAGES = BLK || BT == 64 ? 6 : 4;   // BT = 64: 24 KB stages
    // GEMM1 epilogue buffer per consumer: MB = 2 as [128][68] fp32 (gated: gate and up rows of
    // 64 tokens; plain: one m64 block for BT tokens); MB = 1 as gated [128 tokens][36] (32
    // activated columns) or plain [64 tokens][68] (64 columns).
    static constexpr int EPI_BYTES = MB == 2 ? 128 * 68 * 4 : 128 * 36 * 4;
    static constexpr int OFF_EPI = STAGES * SLOT;
    static constexpr int OFF_BAR = OFF_EPI + 2 * EPI_BYTES;
    static constexpr int OFF_TAB = OFF_BAR + 16 * STAGES;
    static_assert(SLOT % 1024 == 0, "stages start on swizzle atoms");
};
constexpr int TAB_MAX = 512; // groups whose tile0_wg is mirrored in shared memory
template <int MB, int BT, bool BLK> constexpr int smem_bytes() {
    return wg_shape<MB, BT, BLK>::OFF_TAB + 4 * TAB_MAX + 1024; // + alignment of the base to 1024
}
static_assert(smem_bytes<1, 256, false>() <= 227 * 1024 &&
                  smem_bytes<2, 128, false>() <= 227 * 1024 &&
                  smem_bytes<2, 64, false>() <= 227 * 1024 &&
                  smem_bytes<1, 128, true>() <= 227 * 1024,
              "shared memory");
static_assert(64 * 68 * 4 <= wg_shape<1, 128, true>::EPI_BYTES, "plain MB = 1 epilogue pass");
#ifndef MXM_WG_SC_AHEAD // stages between a consumer's scale-byte loads and their use (a build knob)
#define MXM_WG_SC_AHEAD 2
#endif
constexpr int WG_SC_AHEAD = MXM_WG_SC_AHEAD;
// Benchmark-only knock-outs, to see where a tile's time goes (wrong results: never a default;
// built as gpu-check.sh VARIANTS, e.g. "noepi=-DMXM_WG_ABLATE=1"): bit 0 drops the epilogues
// (GEMM1's activation, requantization and stores; GEMM2's stores), bit 1 the weight decode (the
// code bytes go to the wgmma as they are), bit 2 the consumers' code loads too.
#ifndef MXM_WG_ABLATE
#define MXM_WG_ABLATE 0
#endif
constexpr int THREADS = 384;
// Register split (setmaxnreg; the entry cap 168 x 384 = 64512 per CTA must hold 128 producer +
// 256 consumer threads). ptxas 13.0, no spills anywhere: GEMM1 96/200; GEMM2 72/216 (its
// consumers need more for the fragment stores to a.y; its producer keeps no row tables). Stop 23
// (ncu): GEMM2's producer at 64 registers spilled its row tables and reloaded them every stage,
// which left the consumers waiting on full slots.
// MB = 1 (256-token tiles): GEMM1's producer holds 16 token rows and spilled at 96: 104/200.
template <int MODE, int MB> constexpr uint32_t producer_regs() {
    return MODE == 2 ? 72 : MB == 1 ? 104 : 96;
}
template <int MODE, int MB> constexpr uint32_t consumer_regs() {
    return MODE == 2 ? 216 : 200;
}
static_assert(128 * 104 + 256 * 200 <= 168 * 384 && 128 * 72 + 256 * 216 <= 168 * 384,
              "register pool");

enum { MODE_GATED = 0, MODE_PLAIN = 1, MODE_GEMM2 = 2 };

// Columns (GEMM1: intermediate, GEMM2: h) covered by one n-tile.
template <int MODE, int MB> constexpr int tile_cols() {
    return MODE == MODE_GATED ? 64 * MB : 128 * MB;
}
// n-tiles per m-tile (kernel and launch bound): H (GEMM2) or the widest group's I, in tile_cols.
template <int MODE, int MB> __host__ __device__ int n_tiles(const mxm_cuda_args &a) {
    constexpr int TC = tile_cols<MODE, MB>();
    return ((MODE == MODE_GEMM2 ? a.H : a.I_max) + TC - 1) / TC;
}

// ---- PTX wrappers -------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ bool mbar_try_wait(uint32_t bar, uint32_t parity) {
    uint32_t ok;
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], "
                 "%2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(ok)
                 : "r"(bar), "r"(parity)
                 : "memory");
    return ok != 0;
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    while (!mbar_try_wait(bar, parity)) {
    }
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar)
                 : "memory");
}
// Arrives on the barrier once all of this thread's earlier cp.async copies have landed.
__device__ __forceinline__ void cp_async_arrive_noinc(uint32_t bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// 16-byte copy global -> shared; bytes = 0 writes 16 zero bytes (reads nothing).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, uint32_t bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ uint32_t lds_u16(uint32_t addr) {
    uint16_t v;
    asm volatile("ld.shared.u16 %0, [%1];\n" : "=h"(v) : "r"(addr) : "memory");
    return v;
}
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wg_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wg_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void fence_acc(float &x) {
    asm volatile("" : "+f"(x)::"memory");
}
template <uint32_t R> __device__ __forceinline__ void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R));
}
template <uint32_t R> __device__ __forceinline__ void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R));
}
// Barrier of one consumer warpgroup (ids 1 and 2; 0 is __syncthreads).
[[maybe_unused]] __device__ __forceinline__ void wg_bar(int wgi) {
    if (wgi)
        asm volatile("bar.sync 2, 128;\n" ::: "memory");
    else
        asm volatile("bar.sync 1, 128;\n" ::: "memory");
}

// wgmma m64n128k16, A (bf16) from registers, B (bf16) from shared memory through a descriptor,
// fp32 accumulators d[64]: d += A B, or d = A B where acc_in is 0 (scale-d).
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[64], const uint32_t (&a)[4],
                                                    uint64_t desc, int acc_in = 1) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, "
                 "%18, %19, %20, %21, %22, "
                 "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, "
                 "%39, %40, %41, %42, %43, "
                 "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, "
                 "%60, %61, %62, %63}, "
                 "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                   "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                   "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
                   "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
                   "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
                   "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
                   "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
                   "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
                   "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
                   "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(acc_in));
}

// The same with N = 64 (d[32]).
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[32], const uint32_t (&a)[4],
                                                   uint64_t desc, int acc_in = 1) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, "
                 "%18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                 "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
                   "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
                   "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
                   "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
                   "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(acc_in));
}
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t desc,
                                         int acc_in = 1) {
    wgmma_m64n128k16_rs(d, a, desc, acc_in);
}
__device__ __forceinline__ void wgmma_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t desc,
                                         int acc_in = 1) {
    wgmma_m64n64k16_rs(d, a, desc, acc_in);
}

// Descriptor of a K-major bf16 operand with the 128-byte swizzle: rows of 128 bytes, 8-row atoms
// of 1024 bytes (stride byte offset 1024), leading byte offset unused (1).
__device__ __forceinline__ uint64_t desc_sw128(uint32_t saddr) {
    return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) |
           ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

// Two E4M3 codes (low byte = lower k) times the block scale sc, to a bf16x2 word: exact (the
// product is a bf16 number; NaN codes and scale byte 255 give NaN), as gemm.cu's staging.
__device__ __forceinline__ uint32_t dec_exact(uint32_t x, float sc) {
    const float2 f = mxm_e4m3x2_to_float2((uint16_t)x);
    const __nv_bfloat162 b = __floats2bfloat162_rn(f.x * sc, f.y * sc);
    return *reinterpret_cast<const uint32_t *>(&b);
}

// ---- tile schedule ------------------------------------------------------------------------------

// tile0_wg of group g, from the shared-memory mirror when the groups fit in it.
__device__ __forceinline__ int tab_at(const mxm_cuda_args &a, const int *stab, int g) {
    return a.groups <= TAB_MAX ? stab[g] : a.group[g].tile0_wg;
}

// Tile t -> group g, first token m0 of the m-tile in the group, first column n0 of the n-tile.
// False for tiles this kernel skips: groups of the other gating (GEMM1), n-tiles past the group's
// I.
template <int MODE, int MB, int BT>
__device__ __forceinline__ bool map_tile(const mxm_cuda_args &a, const int *stab, int t, int ntn,
                                         int &g, int &m0, int &n0) {
    const int mt = t / ntn, nt = t - mt * ntn;
    // The last group whose first m-tile is <= mt (groups without m-tiles share it).
    int lo = 0, hi = a.groups - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (tab_at(a, stab, mid) <= mt)
            lo = mid;
        else
            hi = mid - 1;
    }
    g = lo, m0 = (mt - tab_at(a, stab, lo)) * BT, n0 = nt * tile_cols<MODE, MB>();
    if (MODE == MODE_GEMM2) return true;
    const mxm_cuda_group &G = a.group[g];
    return (mxm_act_is_gated(G.act) != 0) == (MODE == MODE_GATED) && n0 < G.I;
}

// The weight row (W13 for GEMM1, W2 for GEMM2) behind row rl (0..BW-1) of a tile starting at
// column n0, or -1 past the end (I for GEMM1, H for GEMM2). Gated, MB = 2: rows 128c..128c+63
// are the gate rows of columns n0 + 64c + (0..63), rows 128c+64..128c+127 their up rows (block
// 0 and block 1 of consumer c). Gated, MB = 1: in consumer c's m64 block, row 16w + r (r < 8) is
// the gate row of column n0 + 32c + 8w + r and row 16w + 8 + r its up row, so a thread's two
// fragment rows (g, g + 8) are gate and up of one column.
template <int MODE, int MB>
__device__ __forceinline__ int weight_row(int layout, int I, int H, int n0, int rl) {
    if (MODE == MODE_GATED) {
        const int j = MB == 2 ? n0 + 64 * (rl >> 7) + (rl & 63)
                              : n0 + 32 * (rl >> 6) + 8 * ((rl >> 4) & 3) + (rl & 7);
        const int half = MB == 2 ? (rl >> 6) & 1 : (rl >> 3) & 1;
        return j < I ? (int)mxm_cuda_w13_row(layout, true, I, j, half) : -1;
    }
    const int n = n0 + rl;
    return n < (MODE == MODE_GEMM2 ? H : I) ? n : -1;
}

// ---- GEMM1 epilogue --------------------------------------------------------------------------

// GEMM1's tile through the consumer's shared buffer epi, in passes: the fragments go to
// [token][column] fp32 rows, then one thread per (token, 32-column block) takes the block's 32
// values (eight 16-byte loads; the threads of a warp take consecutive tokens, whole-bank steps
// apart: no conflicts), applies the activation and stores the whole MXFP8 block in-thread
// (mxm_gemm1_store32). Passes:
//  - MB = 2, gated: pass p takes tokens 64p..64p+63 (BT / 64 passes), gate at buffer rows
//    0..63, up at rows 64..127 (stride 68); columns n0 + 64 wgi + (0..63).
//  - MB = 2, plain: pass p takes m64 block p (columns n0 + 128 wgi + 64 p + c) for BT tokens.
//  - MB = 1, gated: pass p takes token half p; a thread holds gate and up of one (column, token)
//    in fragment rows g and g + 8, so it stores the activated value (stride 36; columns
//    n0 + 32 wgi + (0..31)).
//  - MB = 1, plain: pass p takes tokens 64p..64p+63 of the tile's 128 NH (stride 68; columns
//    n0 + 64 wgi + (0..63)).
template <int MODE, int MB, int BT, int WF>
__device__ __forceinline__ void gemm1_epilogue(const mxm_cuda_args &a, const mxm_cuda_group &G,
                                               float (&acc)[MB * (BT / wn_of(BT))][wn_of(BT) / 2],
                                               float *epi, int m0, int n0, int wgi, int w, int gq,
                                               int tq, int ct) {
    constexpr int NH = BT / wn_of(BT), NACC = wn_of(BT) / 2;
    constexpr bool GATED = MODE == MODE_GATED;
    constexpr bool PRE = GATED && MB == 1; // the buffer holds activated values
    constexpr int STR = PRE ? 36 : 68;     // floats per buffer row (+4: no bank conflicts)
    constexpr int PT = MB == 2 ? (GATED ? 64 : BT) : (GATED ? 128 : 64); // tokens per pass
    constexpr int NBLK = PRE ? 1 : 2; // 32-column blocks per token and pass
    constexpr int PASSES = MB == 2 ? (GATED ? BT / 64 : 2) : GATED ? NH : 2 * NH;
    const mxm_act_params ap = {G.alpha, G.beta, G.limit};
    const int act = G.act, rows = G.rows, row0 = G.row0, I = G.I;
#pragma unroll
    for (int p = 0; p < PASSES; p++) {
        wg_bar(wgi); // the previous pass's readers are done with the buffer
#pragma unroll
        for (int i = 0; i < NACC; i++) {
            const int rr = (i >> 1) & 1, c = 16 * w + gq + 8 * rr,
                      tok = 8 * (i >> 2) + 2 * tq + (i & 1); // token within the WN-token block
            if (MB == 2 && GATED) {
                if ((i >> 5) == p) {
                    epi[(tok - 64 * p) * STR + c] = acc[0][i];
                    epi[(tok - 64 * p + 64) * STR + c] = acc[1][i];
                }
            } else if (MB == 2) {
                epi[tok * STR + c] = acc[p][i];
            } else if (GATED) {
                if (rr == 0)
                    epi[tok * STR + 8 * w + gq] = mxm_act_gated(act, acc[p][i], acc[p][i + 2], ap);
            } else if ((i >> 5) == (p & 1)) {
                epi[(tok - 64 * (p & 1)) * STR + c] = acc[p >> 1][i];
            }
        }
        wg_bar(wgi);
        const int jb = MB == 2 ? (GATED ? n0 + 64 * wgi : n0 + 128 * wgi + 64 * p)
                               : (GATED ? n0 + 32 * wgi : n0 + 64 * wgi);
        const int tok0 = MB == 2 && !GATED ? 0 : PT * p; // first token of the pass in the tile
        for (int u = ct & 127; u < NBLK * PT; u += 128) {
            const int r = u % PT, b = u / PT;
            if (m0 + tok0 + r >= rows || jb + 32 * b >= I) continue;
            const float *e = epi + r * STR + 32 * b;
            float v[32];
#pragma unroll
            for (int j = 0; j < 32; j += 4) {
                const float4 x = *reinterpret_cast<const float4 *>(e + j);
                if (PRE) {
                    v[j] = x.x, v[j + 1] = x.y, v[j + 2] = x.z, v[j + 3] = x.w;
                } else if (GATED) {
                    const float4 y = *reinterpret_cast<const float4 *>(e + 64 * STR + j);
                    v[j] = mxm_act_gated(act, x.x, y.x, ap);
                    v[j + 1] = mxm_act_gated(act, x.y, y.y, ap);
                    v[j + 2] = mxm_act_gated(act, x.z, y.z, ap);
                    v[j + 3] = mxm_act_gated(act, x.w, y.w, ap);
                } else {
                    v[j] = mxm_act_plain(act, x.x), v[j + 1] = mxm_act_plain(act, x.y);
                    v[j + 2] = mxm_act_plain(act, x.z), v[j + 3] = mxm_act_plain(act, x.w);
                }
            }
            mxm_gemm1_store32<WF>(a, v, (int64_t)(row0 + m0 + tok0 + r) * a.I_max + jb + 32 * b);
        }
    }
}

// ---- the kernel ---------------------------------------------------------------------------------

// 4-byte copy global -> shared (cache-all; the activation scales of a stage); bytes = 0 writes
// zeros.
__device__ __forceinline__ void cp_async4(uint32_t dst, const void *src, uint32_t bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(bytes)
                 : "memory");
}

template <int MODE, int MB, int BT, int WF>
__global__ void __launch_bounds__(THREADS, 1) wgmma_kernel(mxm_cuda_args a) {
    constexpr bool BLK = mxm_cuda_fmt<WF>::block128;
    using S_ = wg_shape<MB, BT, BLK>;
    constexpr int BW = S_::BW, BK = S_::BK, STAGES = S_::STAGES;
    constexpr int NH = S_::NH, WN = S_::WN, NACC = S_::NACC;
    constexpr int SLOT = S_::SLOT, SLOT_ACT = S_::SLOT_ACT, OFF_XS = S_::SLOT_ACT + S_::SLOT_W;
    extern __shared__ __align__(16) uint8_t smem_raw[];
    MXM_KERNEL_ENTRY_LAUNCH_FIRST(a, MODE == MODE_GEMM2 ? MXM_SITE_WGMMA2 : MXM_SITE_WGMMA1);
    const uint32_t sraw = smem_u32(smem_raw);
    const uint32_t sbase = (sraw + 1023) & ~1023u; // 1024-aligned (128B-swizzle atoms)
    uint8_t *gbase = smem_raw + (sbase - sraw);
    const uint32_t bar_full = sbase + S_::OFF_BAR, bar_empty = bar_full + 8 * STAGES;
    int *stab = reinterpret_cast<int *>(gbase + S_::OFF_TAB);
    const int tid = threadIdx.x;
    if (tid == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(bar_full + 8 * s, 128);  // one cp.async arrival per producer thread
            mbar_init(bar_empty + 8 * s, 256); // one arrival per consumer thread
        }
    }
    if (a.groups <= TAB_MAX)
        for (int g = tid; g < a.groups; g += THREADS)
            stab[g] = a.group[g].tile0_wg;
    __syncthreads();
    const int ntn = n_tiles<MODE, MB>(a);
    const int ntiles = a.counts[2] * ntn;
    // DeepSeek FP8 W8A8: the tokens' 1x128 activation scales (GEMM1: a.xs by token; GEMM2: a.acts
    // by permuted row); weight-only layers scale the activations by 1.
    const bool xs_on = BLK && mxm_cuda_blk_w8a8(a);

    if (tid < 128) {
        // ---------------- producer warpgroup ----------------
        setmaxnreg_dec<producer_regs<MODE, MB>()>();
        constexpr int NA = BT / 16, NW = BW / 32; // 16-byte copies per thread and stage
        const int ac = tid & 7, ar = tid >> 3; // activation chunk (8 bf16) and first row (+16 i)
        const int wc = tid & 3, wr = tid >> 2; // weight chunk (16 codes) and first row (+32 i)
        const uint32_t a_sw = (uint32_t)((ac ^ (ar & 7)) << 4);
        const uint32_t w_sw = (uint32_t)((wc ^ ((wr >> 1) & 3)) << 4);
        const __nv_bfloat16 *A = MODE == MODE_GEMM2 ? a.act : a.xq;
        const int64_t lda = MODE == MODE_GEMM2 ? a.I_max : a.H;
        uint32_t it = 0;
        for (int t = blockIdx.x; t < ntiles; t += gridDim.x) {
            int g, m0, n0;
            if (!map_tile<MODE, MB, BT>(a, stab, t, ntn, g, m0, n0)) continue;
            const mxm_cuda_group &G = a.group[g];
            const int rows = G.rows, row0 = G.row0, I = G.I;
            const int K = MODE == MODE_GEMM2 ? I : a.H;
            const uint8_t *W = MODE == MODE_GEMM2 ? G.w2 : G.w13;
            // Row tables (GEMM1: gathered tokens, gate/up weight rows). GEMM2's rows are affine
            // in i, a base and a count each (its tables spilled at GEMM2's register split).
            constexpr bool AFFINE = MODE == MODE_GEMM2;
            int arow[AFFINE ? 1 : NA], wrow[AFFINE ? 1 : NW], na = 0, nw = 0;
            int64_t a0 = 0, w0 = 0;
            if constexpr (AFFINE) {
                na = min(max((rows - m0 - ar + 15) / 16, 0), NA);
                nw = min(max((a.H - n0 - wr + 31) / 32, 0), NW);
                a0 = (int64_t)(row0 + m0 + ar) * lda, w0 = (int64_t)(n0 + wr) * K;
            } else {
#pragma unroll
                for (int i = 0; i < NA; i++) {
                    const int m = m0 + ar + 16 * i;
                    arow[i] = m < rows ? __ldg(a.row_token + row0 + m) : -1;
                }
#pragma unroll
                for (int i = 0; i < NW; i++)
                    wrow[i] = weight_row<MODE, MB>(a.layout, I, a.H, n0, wr + 32 * i);
            }
            // BLK: thread tid copies token row tid's activation scale of each stage's 128-block.
            const float *xs_row = nullptr;
            int xs_stride = 0;
            if (BLK && xs_on && m0 + tid < rows && tid < BT) {
                xs_row = MODE == MODE_GEMM2
                             ? a.acts + (int64_t)(row0 + m0 + tid) * a.IB
                             : a.xs + (int64_t)__ldg(a.row_token + row0 + m0 + tid) * a.HB;
                xs_stride = 1;
            }
            const int nk = (K + BK - 1) / BK;
            for (int kt = 0; kt < nk; kt++, it++) {
                const uint32_t s = it % STAGES, ph = (it / STAGES) & 1;
                if (it >= STAGES) mbar_wait(bar_empty + 8 * s, ph ^ 1);
                const int k0 = kt * BK;
                const uint32_t slot = sbase + s * SLOT;
                const bool ka = k0 + 8 * ac < K;
#pragma unroll
                for (int i = 0; i < NA; i++) {
                    const bool v = ka && (AFFINE ? i < na : arow[i] >= 0);
                    const int64_t r = AFFINE ? a0 + 16 * i * lda : arow[i] * lda;
                    cp_async16(slot + (ar + 16 * i) * 128 + a_sw, v ? A + r + k0 + 8 * ac : A,
                               v ? 16 : 0);
                }
                const bool kw = k0 + 16 * wc < K;
#pragma unroll
                for (int i = 0; i < NW; i++) {
                    const bool v = kw && (AFFINE ? i < nw : wrow[i] >= 0);
                    const int64_t r = AFFINE ? w0 + (int64_t)32 * i * K : (int64_t)wrow[i] * K;
                    cp_async16(slot + SLOT_ACT + (wr + 32 * i) * 64 + w_sw,
                               v ? W + r + k0 + 16 * wc : W, v ? 16 : 0);
                }
                if (BLK && xs_on && tid < BT)
                    cp_async4(slot + OFF_XS + 4 * tid,
                              xs_row ? xs_row + xs_stride * (k0 / 128) : a.xs, xs_row ? 4 : 0);
                cp_async_arrive_noinc(bar_full + 8 * s);
            }
        }
    } else {
        // ---------------- consumer warpgroups ----------------
        setmaxnreg_inc<consumer_regs<MODE, MB>()>();
        const int ct = tid - 128, wgi = ct >> 7, w = (ct >> 5) & 3, lane = ct & 31, gq = lane >> 2,
                  tq = lane & 3;
        const int rl = 64 * MB * wgi + 16 * w + gq; // tile row of fragment rows (mb = 0, rr = 0)
        const int sw = (gq >> 1) & 3;               // chunk swizzle of this thread's code rows
        const uint32_t a_thr = SLOT_ACT + rl * 64 + 2 * tq;
        const uint64_t desc0 = desc_sw128(sbase);
        float *epi = reinterpret_cast<float *>(gbase + S_::OFF_EPI + wgi * S_::EPI_BYTES);
        uint32_t it = 0;
        for (int t = blockIdx.x; t < ntiles; t += gridDim.x) {
            int g, m0, n0;
            if (!map_tile<MODE, MB, BT>(a, stab, t, ntn, g, m0, n0)) continue;
            const mxm_cuda_group &G = a.group[g];
            const int I = G.I;
            const int K = MODE == MODE_GEMM2 ? I : a.H, KB = K / 32, KB128 = (K + 127) / 128;
            const void *scales = MODE == MODE_GEMM2 ? G.sc2 : G.sc13;
            // MXFP8: the E8M0 bytes of rows (mb, rr); BLK: the rows' fp32 128-block scales.
            const uint8_t *sp[MB][2];
            const float *wsp[MB][2];
#pragma unroll
            for (int mb = 0; mb < MB; mb++)
#pragma unroll
                for (int rr = 0; rr < 2; rr++) {
                    const int r = weight_row<MODE, MB>(a.layout, I, a.H, n0, rl + 64 * mb + 8 * rr);
                    sp[mb][rr] = r >= 0 && !BLK ? mxm_cuda_fmt<MXM_WFMT_MXFP8>::scales(scales) +
                                                      (int64_t)r * KB
                                                : nullptr;
                    wsp[mb][rr] = r >= 0 && BLK ? mxm_cuda_fmt<MXM_WFMT_FP8_BLOCK>::scales(scales) +
                                                      (int64_t)(r / 128) * KB128
                                                : nullptr;
                }
            // Scale bytes of a stage (two 32-blocks, [b]) for the 2 MB rows (kt < nk), kept as
            // the loads' own registers: combining them at load time made the warp wait there.
            const int nk = (K + BK - 1) / BK;
            auto load_sc = [&](int kt, uint32_t(&o)[MB][2][2]) {
#pragma unroll
                for (int mb = 0; mb < MB; mb++)
#pragma unroll
                    for (int rr = 0; rr < 2; rr++) {
                        o[mb][rr][0] = o[mb][rr][1] = 127;
                        if (sp[mb][rr]) {
                            o[mb][rr][0] = __ldg(sp[mb][rr] + 2 * kt);
                            if (2 * kt + 1 < KB) o[mb][rr][1] = __ldg(sp[mb][rr] + 2 * kt + 1);
                        }
                    }
            };
            // WG_SC_AHEAD stages of scale bytes in flight (global loads; one stage ahead left the
            // consumers waiting on them: ncu, stop 22).
            uint32_t scur[MB][2][2], sq[WG_SC_AHEAD][MB][2][2] = {};
            if (!BLK) {
                load_sc(0, scur);
#pragma unroll
                for (int i = 0; i < WG_SC_AHEAD; i++)
                    if (i + 1 < nk) load_sc(i + 1, sq[i]);
            }
            // acc[MB * NH]: block mb's rows times token half nh at [NH mb + nh]. BLK: part holds
            // the current 128-block's sums, added to acc times the activation and weight scales.
            float acc[MB * NH][NACC], part[BLK ? MB * NH : 1][NACC];
#pragma unroll
            for (int f = 0; f < MB * NH; f++)
#pragma unroll
                for (int i = 0; i < NACC; i++)
                    acc[f][i] = 0.0f;
            float wsc[MB][2] = {}; // BLK: this 128-block's weight scales (rows (mb, rr))
#pragma unroll
            for (int f = 0; f < (BLK ? MB * NH : 1); f++)
#pragma unroll
                for (int i = 0; i < NACC; i++)
                    part[f][i] = 0.0f;

            for (int kt = 0; kt < nk; kt++, it++) {
                const uint32_t s = it % STAGES, ph = (it / STAGES) & 1;
                const bool blk_first = BLK && kt % 2 == 0,
                           blk_last = BLK && (kt % 2 == 1 || kt + 1 == nk);
                float scf[MB][2][2];
#pragma unroll
                for (int mb = 0; mb < MB; mb++)
#pragma unroll
                    for (int rr = 0; rr < 2; rr++) {
#pragma unroll
                        for (int b = 0; b < 2; b++)
                            scf[mb][rr][b] = BLK ? 1.0f : mxm_e8m0_decode(scur[mb][rr][b]);
                        if (blk_first)
                            wsc[mb][rr] = wsp[mb][rr] ? __ldg(wsp[mb][rr] + kt / 2) : 0.0f;
                    }
                mbar_wait(bar_full + 8 * s, ph);
                fence_proxy_async(); // cp.async wrote the activations through the generic proxy
                const uint32_t codes = sbase + s * SLOT + a_thr;
                uint32_t fr[4][MB][4];
#pragma unroll
                for (int ks = 0; ks < 4; ks++) {
                    const int koff = ((ks ^ sw) << 4);
#pragma unroll
                    for (int mb = 0; mb < MB; mb++) {
                        if constexpr ((MXM_WG_ABLATE & 4) != 0) {
                            fr[ks][mb][0] = fr[ks][mb][1] = fr[ks][mb][2] = fr[ks][mb][3] =
                                0x3C003C00u + (uint32_t)(ks + mb);
                            continue;
                        }
                        const uint32_t p = codes + mb * 64 * 64 + koff;
                        const uint32_t x00 = lds_u16(p);              // row g,   k 2t
                        const uint32_t x01 = lds_u16(p + 8);          // row g,   k 8+2t
                        const uint32_t x10 = lds_u16(p + 8 * 64);     // row g+8, k 2t
                        const uint32_t x11 = lds_u16(p + 8 * 64 + 8); // row g+8, k 8+2t
                        if constexpr ((MXM_WG_ABLATE & 2) != 0) {
                            fr[ks][mb][0] = x00 * 0x10001u, fr[ks][mb][1] = x10 * 0x10001u;
                            fr[ks][mb][2] = x01 * 0x10001u, fr[ks][mb][3] = x11 * 0x10001u;
                            continue;
                        }
                        const int b = ks >> 1;
                        fr[ks][mb][0] = dec_exact(x00, scf[mb][0][b]);
                        fr[ks][mb][1] = dec_exact(x10, scf[mb][1][b]);
                        fr[ks][mb][2] = dec_exact(x01, scf[mb][0][b]);
                        fr[ks][mb][3] = dec_exact(x11, scf[mb][1][b]);
                    }
                    wg_fence();
                    // Token block nh: B rows WN nh.. of the slot (WN rows x 128 B on).
                    const uint64_t desc = desc0 + ((s * SLOT + ks * 32) >> 4);
#pragma unroll
                    for (int mb = 0; mb < MB; mb++)
#pragma unroll
                        for (int nh = 0; nh < NH; nh++) {
                            const uint64_t d = desc + (uint64_t)((nh * WN * 128) >> 4);
                            if (BLK)
                                wgmma_rs(part[BLK ? NH * mb + nh : 0], fr[ks][mb], d,
                                         !(blk_first && ks == 0));
                            else
                                wgmma_rs(acc[NH * mb + nh], fr[ks][mb], d);
                        }
                    wg_commit();
                    // k-step j-1 done; j runs while j+1 is decoded (deeper queues: C7513).
                    wg_wait<1>();
                    // The previous stage is complete once k-step 0 of this one is (released at
                    // k-step 1: at k-step 0, C7513 comes back with nvcc 13.0).
                    if (ks == 1 && kt > 0) mbar_arrive(bar_empty + 8 * ((it - 1) % STAGES));
                }
                if (BLK && blk_last) {
                    // The 128-block is summed: acc += part x (activation scale x weight scale),
                    // as gemm.cu's promote (the token's scale from this stage's slot).
                    wg_wait<0>();
                    const float *xs = reinterpret_cast<const float *>(gbase + s * SLOT + OFF_XS);
#pragma unroll
                    for (int f = 0; f < MB * NH; f++)
#pragma unroll
                        for (int i = 0; i < NACC; i++) {
                            fence_acc(part[BLK ? f : 0][i]);
                            const int tok = WN * (f % NH) + 8 * (i >> 2) + 2 * tq + (i & 1);
                            const float sa = xs_on ? xs[tok] : 1.0f;
                            acc[f][i] = fmaf(part[BLK ? f : 0][i], sa * wsc[f / NH][(i >> 1) & 1],
                                             acc[f][i]);
                        }
                }
                if (!BLK) {
#pragma unroll
                    for (int mb = 0; mb < MB; mb++)
#pragma unroll
                        for (int rr = 0; rr < 2; rr++)
#pragma unroll
                            for (int b = 0; b < 2; b++) {
                                scur[mb][rr][b] = sq[0][mb][rr][b];
#pragma unroll
                                for (int i = 0; i + 1 < WG_SC_AHEAD; i++)
                                    sq[i][mb][rr][b] = sq[i + 1][mb][rr][b];
                            }
                    if (kt + 1 + WG_SC_AHEAD < nk)
                        load_sc(kt + 1 + WG_SC_AHEAD, sq[WG_SC_AHEAD - 1]);
                }
            }
            wg_wait<0>();
            mbar_arrive(bar_empty + 8 * ((it - 1) % STAGES));
#pragma unroll
            for (int f = 0; f < MB * NH; f++)
#pragma unroll
                for (int i = 0; i < NACC; i++)
                    fence_acc(acc[f][i]);

            // Fragment (mb, nh, i) of this thread: tile row rl + 64 mb + 8 ((i >> 1) & 1),
            // token m0 + WN nh + 8 (i >> 2) + 2 tq + (i & 1).
            const int rows = G.rows, row0 = G.row0;
            if constexpr ((MXM_WG_ABLATE & 1) !=
                          0) { // keeps the sums alive, stores (almost) nothing
                if (acc[0][0] == 1.25e-38f) a.y[row0] = acc[0][1];
            } else if (MODE == MODE_GEMM2) {
                const bool trt = a.profile == MXM_PROFILE_TRTLLM;
#pragma unroll
                for (int mb = 0; mb < MB; mb++) {
                    const int h = n0 + rl + 64 * mb;
#pragma unroll
                    for (int nh = 0; nh < NH; nh++)
#pragma unroll
                        for (int i = 0; i < NACC / 4; i++) {
                            const int m = m0 + WN * nh + 8 * i + 2 * tq;
                            float *y = a.y + (int64_t)(row0 + m) * a.H + h;
#pragma unroll
                            for (int q = 0; q < 4; q++) {
                                const int dm = q & 1, dh = 8 * (q >> 1);
                                const float v = acc[NH * mb + nh][4 * i + q];
                                if (m + dm < rows && h + dh < a.H)
                                    y[dm * a.H + dh] = trt ? mxm_round_bf16(v) : v;
                            }
                        }
                }
            } else {
                gemm1_epilogue<MODE, MB, BT, WF>(a, G, acc, epi, m0, n0, wgi, w, gq, tq, ct);
            }
        }
    }
}

// One persistent CTA per SM, fewer when an upper bound of the tiles is smaller: every group's
// rows rounded up to whole m-tiles (a tiled group has more than SKINNY_MAX rows).
template <int MODE, int MB, int BT, int WF>
mxm_status launch(const mxm_cuda_args &a, cudaStream_t s) {
    const int ntn = n_tiles<MODE, MB>(a);
    const int64_t rows = (int64_t)a.T * a.K + (a.groups > a.e_loc ? a.T : 0);
    const int64_t tg =
        rows / (MXM_CUDA_SKINNY_MAX + 1) < a.groups ? rows / (MXM_CUDA_SKINNY_MAX + 1) : a.groups;
    const int64_t bound = (rows / BT + tg + 1) * ntn;
    const int sms = mxm_cuda_attr(MXM_ATTR_SMS), grid = (int)(bound < sms ? bound : sms);
    if (grid <= 0) return MXM_OK;
    return mxm_cuda_launch(wgmma_kernel<MODE, MB, BT, WF>, grid, THREADS,
                           smem_bytes<MB, BT, mxm_cuda_fmt<WF>::block128>(), s, a);
}

// The tile shape of the layer: DeepSeek FP8 128 x 128 (its m-tiles are 128 tokens: a.wg_bt is
// 128); MXFP8 by a.wg_bt, 256 tokens -> MB = 1, 128 or 64 -> MB = 2.
template <int MODE> mxm_status launch_shape(const mxm_cuda_args &a, cudaStream_t s) {
    if (a.blk) return launch<MODE, 1, 128, MXM_WFMT_FP8_BLOCK>(a, s);
    if (a.wg_bt == 256) return launch<MODE, 1, 256, MXM_WFMT_MXFP8>(a, s);
    if (a.wg_bt == 64) return launch<MODE, 2, 64, MXM_WFMT_MXFP8>(a, s);
    return launch<MODE, 2, 128, MXM_WFMT_MXFP8>(a, s);
}

} // namespace

mxm_status mxm_cuda_wgmma1(const mxm_cuda_args &a, cudaStream_t s) {
    return mxm_cuda_by_gating(a.gated_routed, a.gated_shared, [&](auto gated) {
        return launch_shape < decltype(gated)::value ? MODE_GATED : MODE_PLAIN > (a, s);
    });
}

mxm_status mxm_cuda_wgmma2(const mxm_cuda_args &a, cudaStream_t s) {
    return launch_shape<MODE_GEMM2>(a, s);
}
