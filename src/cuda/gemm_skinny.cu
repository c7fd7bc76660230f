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
// MXFP8 W8A8 layers (CODES, mxm_cuda_codes; the default, MXM_CUDA_CODES=0 turns it off) take the
// tokens as raw E4M3 codes with their block scales beside them, and the MMAs run in f16 on raw
// codes of both operands (exact: E4M3 is a subset of f16, products are exact in fp32): the weight
// decode is one conversion per pair of codes instead of seven instructions, and each 32-block's sum
// is scaled once by the weight row's and the token's block scales (K is permuted so that each k16
// MMA stays inside one block: lane c holds codes 8c..8c+7 of a block, two MMAs per block). The
// bf16 path serves weight-only layers, DeepSeek FP8 and MXFP8 W8A8 plans made with
// MXM_CUDA_CODES=0.
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
#ifndef SK_STAGES // ring depth (a build-time A/B knob: VARIANTS="st8=-DSK_STAGES=8")
#define SK_STAGES 6
#endif
#define SK_SC_AHEAD 4 // stages between loading a weight scale byte and its use
#ifndef SK_MIN_BLOCKS // blocks per SM the registers are budgeted for (a build-time A/B knob)
#define SK_MIN_BLOCKS 2
#endif
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

// CODES: a token row of a stage is 128 code bytes, plus 16 bytes of its 4 block scales (fp32)
// in a region after the code rows.
#define SK_BC_ROW SK_KC
#define SK_BS_ROW 16
static __host__ __device__ int sk_b_row(bool codes) {
    return codes ? SK_BC_ROW + SK_BS_ROW : SK_B_ROW;
}
static __host__ __device__ int sk_stage_bytes(int nt_max, bool codes) {
    return SK_A_BYTES + nt_max * 8 * sk_b_row(codes);
}

// Shared-memory 16-byte chunk of chunk `ch` of a 128-byte code row (A rows; CODES B rows): the
// bf16 path's 16-byte loads take chunks c and 4 + c, so rows alternate the halves; the CODES
// path's 8-byte loads take chunks 2 b + c / 2 of rows g = 0..3 in a half-warp, spread over the
// eight chunks by XOR with 2 (row & 3).
template <bool CODES> __device__ __forceinline__ int sk_chunk(int row, int ch) {
    return CODES ? ch ^ ((row & 3) << 1) : ch ^ ((row & 1) * 4);
}

// dst: a shared-memory address (cvta'd once per block); the bytes past `bytes` (of 16) are
// zero-filled.
__device__ __forceinline__ void cp_async16_part(uint32_t dst, const void *src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(bytes));
}
__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, bool valid) {
    cp_async16_part(dst, src, valid ? 16 : 0);
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

// A thread's share of every stage's copies, fixed for the whole K loop: 2 weight pieces (block
// rows t/8 + 32 i, 16-byte chunk t % 8 of each stage) and up to 2 token pieces: bf16 path, rows
// t/16 + 16 i, chunk t % 16; CODES, code row t/8 chunk t % 8 and, for t < 32, the 16-byte scale
// piece of token row t. Per piece: its offset inside a ring slot, its global source at k = 0, and
// `lim`: the piece exists in the stage at k0 iff k0 < lim (0 past the group's rows or tokens; K
// is a multiple of 32, so a 16-byte code piece is wholly inside K or wholly past it; a scale
// piece copies the (lim - k0) / 8 bytes of the blocks inside K). Set up once so that a stage's
// copies cost an add, a compare and a select each.
#define SK_W_COPIES (SK_ROWS * SK_KC / 16 / SK_THREADS)
#define SK_X_COPIES ((MXM_CUDA_SKINNY_MAX * SK_B_ROW / 16 + SK_THREADS - 1) / SK_THREADS)
static_assert(SK_W_COPIES * SK_THREADS * 16 == SK_ROWS * SK_KC, "weight copies cover a stage");
static_assert(MXM_CUDA_SKINNY_MAX * SK_BC_ROW / 16 == SK_THREADS && MXM_CUDA_SKINNY_MAX <= 32 &&
                  SK_X_COPIES >= 2,
              "CODES: one code piece per thread, the scale pieces in warp 0");
struct sk_copies {
    const uint8_t *w[SK_W_COPIES];
    const uint8_t *x[SK_X_COPIES];
    int w_dst[SK_W_COPIES], x_dst[SK_X_COPIES];
    int w_lim[SK_W_COPIES], x_lim[SK_X_COPIES];
    bool x_on[SK_X_COPIES]; // the token row lies inside the block's NT n8 tiles (its slot space)
};

// Issues the copies of the stage at k0 into the ring slot at shared address `slot`. Pieces that do
// not exist are zero-filled; their copies name a valid dummy address. do_w / do_x: the weight and
// the token pieces (GEMM2 copies its first weights before it waits for GEMM1's output).
template <bool CODES>
__device__ __forceinline__ void sk_issue(uint32_t slot, const sk_copies &cp, const void *dummy,
                                         int k0, bool do_w = true, bool do_x = true) {
#pragma unroll
    for (int i = 0; i < SK_W_COPIES; i++) {
        if (!do_w) break;
        const bool ok = k0 < cp.w_lim[i];
        cp_async16(slot + cp.w_dst[i], ok ? (const void *)(cp.w[i] + k0) : dummy, ok);
    }
    if (!do_x) return;
    if constexpr (CODES) {
        if (cp.x_on[0]) {
            const bool ok = k0 < cp.x_lim[0];
            cp_async16(slot + SK_A_BYTES + cp.x_dst[0], ok ? (const void *)(cp.x[0] + k0) : dummy,
                       ok);
        }
        if (cp.x_on[1]) {
            const int left = cp.x_lim[1] - k0; // scale bytes of the blocks inside K: left / 8
            const int bytes = left >= 8 * SK_BS_ROW ? SK_BS_ROW : (left > 0 ? left >> 3 : 0);
            cp_async16_part(slot + SK_A_BYTES + cp.x_dst[1],
                            bytes ? (const void *)(cp.x[1] + k0 / 8) : dummy, bytes);
        }
    } else {
#pragma unroll
        for (int i = 0; i < SK_X_COPIES; i++) {
            if (!cp.x_on[i]) break;
            const bool ok = k0 < cp.x_lim[i];
            cp_async16(slot + SK_A_BYTES + cp.x_dst[i],
                       ok ? (const void *)(cp.x[i] + 2 * k0) : dummy, ok);
        }
    }
}

// Zeroes a thread's NT x 4 accumulators.
template <int NT> __device__ __forceinline__ void sk_zero(float (&v)[NT][4]) {
#pragma unroll
    for (int ni = 0; ni < NT; ni++)
#pragma unroll
        for (int q = 0; q < 4; q++)
            v[ni][q] = 0.0f;
}

// The MX scale bytes of this thread's two rows for its warp's 64-wide half of a stage: the byte
// of its 16 codes' 32-block (bf16 path: [r][0]); CODES: [0][0] only, the byte of (row c / 2,
// block c % 2) of the quad's rows and blocks (sk_load_scales).
struct sk_scales {
    uint32_t s[2][2]; // [row R0/R1][block]
};

__device__ __forceinline__ int sk_half() {
    return threadIdx.x / 32 / SK_ROW_WARPS;
}

// Where a thread's scale bytes come from: per row, its first byte in stage 0 (block (64 half +
// 16 c) / 32, or 2 half for CODES) and `lim` as for the copies (0 for rows past the group's).
struct sk_scale_src {
    const uint8_t *p[2];
    int lim[2];
};

// CODES: the four (row, block) bytes a quad of lanes needs are the same for its four lanes, so
// lane c loads only (row c / 2, block c % 2) into s[0][0] (ss narrowed to it by sk_scale_lane) and
// sk_compute_codes decodes it once and shares it by shuffles.
template <bool CODES>
__device__ __forceinline__ void sk_load_scales(sk_scales &sc, const sk_scale_src &ss, int k0) {
#pragma unroll
    for (int r = 0; r < (CODES ? 1 : 2); r++)
        sc.s[r][0] = k0 < ss.lim[r] ? __ldg(ss.p[r] + k0 / 32) : 127u;
}
__device__ __forceinline__ void sk_scale_lane(sk_scale_src &ss, int c) {
    const int r = c >> 1, j = c & 1;
    const uint8_t *p = r ? ss.p[1] : ss.p[0];
    ss.p[0] = p ? p + j : nullptr;
    ss.lim[0] = (r ? ss.lim[1] : ss.lim[0]) - 32 * j;
}

// CODES: acc += the products of this warp's half of the stage (blocks 2 half + j, j = 0, 1) for
// its 16 rows and NT n8 token tiles. Per block, two f16 MMAs on raw codes (lane c's 8-byte loads
// hold codes 8c..8c+7 of a row: MMA m takes 8c + 4m + {0, 1} as its k pair 2c, 2c+1 and
// 8c + 4m + {2, 3} as 2c+8, 2c+9, identically for both operands) give the block's sums, which
// enter acc times the row's and the token's block scales. BS: the tokens' scales of the stage.
template <int NT>
__device__ __forceinline__ void sk_compute_codes(const unsigned char *A, const unsigned char *B,
                                                 const unsigned char *BS, const sk_scales &sc,
                                                 float (&acc)[NT][4]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, g = lane / 4, c = lane % 4;
    const int r0 = 16 * (warp % SK_ROW_WARPS) + g, h = sk_half();
    float ws[2][2], xs[NT][2][2]; // [row][block], [tile][token 2c + e][block]
    const float mine = mxm_e8m0_decode(sc.s[0][0]); // (row c / 2, block c % 2): sk_load_scales
#pragma unroll
    for (int r = 0; r < 2; r++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            ws[r][j] = __shfl_sync(0xFFFFFFFFu, mine, (lane & ~3) | (2 * r + j));
#pragma unroll
    for (int ni = 0; ni < NT; ni++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const float2 v =
                *reinterpret_cast<const float2 *>(BS + (8 * ni + 2 * c + e) * SK_BS_ROW + 8 * h);
            xs[ni][e][0] = v.x, xs[ni][e][1] = v.y;
        }
#pragma unroll
    for (int j = 0; j < 2; j++) {
        const int ch = 2 * (2 * h + j) + c / 2,
                  off = (c % 2) * 8; // r0 + 8 and 8 ni + g share r0's swizzle
        const int sw = sk_chunk<true>(g, ch) * 16 + off;
        const uint2 qa0 = *reinterpret_cast<const uint2 *>(A + r0 * SK_KC + sw),
                    qa1 = *reinterpret_cast<const uint2 *>(A + (r0 + 8) * SK_KC + sw);
        uint2 qb[NT];
#pragma unroll
        for (int ni = 0; ni < NT; ni++)
            qb[ni] = *reinterpret_cast<const uint2 *>(B + (8 * ni + g) * SK_BC_ROW + sw);
        float part[NT][4];
        sk_zero(part);
#pragma unroll
        for (int m = 0; m < 2; m++) {
            uint32_t af[4], b0, b1; // a0a1 row g, a2a3 row g+8, a4a5 / a6a7 the same rows at k + 8
            mxm_e4m3x4_to_f16x2(m ? qa0.y : qa0.x, af[0], af[2]);
            mxm_e4m3x4_to_f16x2(m ? qa1.y : qa1.x, af[1], af[3]);
#pragma unroll
            for (int ni = 0; ni < NT; ni++) {
                mxm_e4m3x4_to_f16x2(m ? qb[ni].y : qb[ni].x, b0, b1);
                mxm_mma_16816<true>(part[ni], af, b0, b1);
            }
        }
#pragma unroll
        for (int ni = 0; ni < NT; ni++)
#pragma unroll
            for (int q = 0; q < 4; q++)
                acc[ni][q] = fmaf(part[ni][q], ws[q / 2][j] * xs[ni][q % 2][j], acc[ni][q]);
    }
}

// acc += the products of this warp's half of the stage for its 16 rows and NT n8 token tiles.
template <int NT, int WF>
__device__ __forceinline__ void sk_compute(const unsigned char *A, const unsigned char *B,
                                           const sk_scales &sc, float (&acc)[NT][4]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, g = lane / 4, c = lane % 4;
    const int r0 = 16 * (warp % SK_ROW_WARPS) + g; // r1 = r0 + 8 has the same parity
    {
        const int h = sk_half();
        const int ach = sk_chunk<false>(r0, 4 * h + c) * 16;
        const uint4 q0 = lds128(A + r0 * SK_KC + ach), q1 = lds128(A + (r0 + 8) * SK_KC + ach);
        constexpr bool BLK = mxm_cuda_fmt<WF>::block128; // DeepSeek FP8: scales applied per stage
        const float s0 = BLK ? 1.0f : mxm_e8m0_decode(sc.s[0][0]),
                    s1 = BLK ? 1.0f : mxm_e8m0_decode(sc.s[1][0]);
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
                mxm_mma_16816(acc[ni], af, b0, b1);
            }
        }
    }
}

// The block's group among the skinny groups (list built by the permutation), or -1.
// Both loads are issued at once (the grid's x extent is at most a.groups, the list's length; an
// entry past the count is read but not used), which saves a round trip before the first copy.
__device__ __forceinline__ int sk_group(const mxm_cuda_args &a) {
    const int n = __ldcg(a.counts + 1), g = __ldcg(a.skinny_list + blockIdx.x);
    return (int)blockIdx.x < n ? g : -1;
}

// A block's copy pieces and MX scale-byte sources for (group G, chunk), fixed for the item's K loop
// (sk_copies, sk_scale_src; the scale sources are null for DeepSeek FP8, whose 128x128 scales
// sk_body reads itself). brows: the token rows of the group's n8 tiles (8 NT).
template <int KIND, bool BLK, bool CODES>
__device__ __forceinline__ void sk_setup(const mxm_cuda_args &a, const mxm_cuda_group &G, int chunk,
                                         int nt_max, int brows, sk_copies &cp, sk_scale_src &ss) {
    const int t = threadIdx.x, lane = t & 31, warp = t / 32, g = lane / 4, c = lane % 4;
    const int rw = warp % SK_ROW_WARPS;
    const int n = G.rows;
    const bool gemm1 = KIND != SK_GEMM2;
    const int K = gemm1 ? a.H : G.I;
    const uint8_t *wbase = gemm1 ? G.w13 : G.w2;
    const void *sbase = gemm1 ? G.sc13 : G.sc2;
    const int64_t kb32 = K / 32;
    const int ca = t % 8, cb = t % 16; // the thread's 16-byte chunk of a weight / token row
#pragma unroll
    for (int i = 0; i < SK_W_COPIES; i++) {
        const int row = t / 8 + (SK_THREADS / 8) * i;
        const int64_t r = sk_weight_row<KIND>(a, G, chunk, row);
        cp.w[i] = r >= 0 ? wbase + r * K + 16 * ca : wbase;
        cp.w_lim[i] = r >= 0 ? K - 16 * ca : 0;
        cp.w_dst[i] = row * SK_KC + sk_chunk<CODES>(row, ca) * 16;
    }
    if (CODES) { // code row t / 8, chunk ca; scale row t (warp 0)
        const int tok = t / 8, stok = t;
        const int64_t prow = tok < n ? (int64_t)G.row0 + tok : -1,
                      srow = stok < n ? (int64_t)G.row0 + stok : -1;
        const uint8_t *xc = nullptr, *xsc = nullptr;
        if (prow >= 0)
            xc = gemm1 ? a.xc + (int64_t)a.row_token[prow] * a.H : mxm_cuda_act_codes(a, prow);
        if (srow >= 0 && stok < 32)
            xsc = gemm1 ? (const uint8_t *)(a.xsf + (int64_t)a.row_token[srow] * a.xsf_stride)
                        : (const uint8_t *)mxm_cuda_act_scales(a, srow);
        cp.x[0] = xc ? xc + 16 * ca : wbase;
        cp.x_lim[0] = xc ? K - 16 * ca : 0;
        cp.x_dst[0] = tok * SK_BC_ROW + sk_chunk<true>(tok, ca) * 16;
        cp.x_on[0] = tok < brows;
        cp.x[1] = xsc ? xsc : wbase;
        cp.x_lim[1] = xsc ? K : 0;
        cp.x_dst[1] = nt_max * 8 * SK_BC_ROW + stok * SK_BS_ROW;
        cp.x_on[1] = stok < brows;
    } else {
#pragma unroll
        for (int i = 0; i < SK_X_COPIES; i++) {
            const int tok = t / 16 + (SK_THREADS / 16) * i;
            const __nv_bfloat16 *x = nullptr;
            if (tok < n)
                x = gemm1 ? a.xq + (int64_t)a.row_token[G.row0 + tok] * a.H
                          : a.act + (int64_t)(G.row0 + tok) * a.I_max;
            cp.x[i] = x ? (const uint8_t *)(x + 8 * cb) : wbase;
            cp.x_lim[i] = x ? K - 8 * cb : 0;
            cp.x_dst[i] = tok * SK_B_ROW + ((cb ^ (tok & 1)) * 16);
            cp.x_on[i] = tok < brows;
        }
    }

#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int64_t wr = sk_weight_row<KIND>(a, G, chunk, 16 * rw + g + 8 * r);
        const int koff = 64 * sk_half() + (CODES ? 0 : 16 * c);
        ss.p[r] = !BLK && wr >= 0
                      ? mxm_cuda_fmt<MXM_WFMT_MXFP8>::scales(sbase) + wr * kb32 + koff / 32
                      : nullptr;
        ss.lim[r] = !BLK && wr >= 0 ? K - koff : 0;
    }
    if (CODES) sk_scale_lane(ss, c);
}

// DeepSeek FP8 (BLK): the thread's two rows' 128x128 weight scales (brow, by 128-block of K) and,
// W8A8, the activation rows' 1x128 scales of its accumulator columns (xsrow); null otherwise.
template <int KIND, bool BLK, int NT>
__device__ __forceinline__ void sk_blk_sources(const mxm_cuda_args &a, const mxm_cuda_group &G,
                                               int chunk, const float *(&brow)[2],
                                               const float *(&xsrow)[NT][2]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, g = lane / 4, c = lane % 4;
    const bool gemm1 = KIND != SK_GEMM2;
    const int K = gemm1 ? a.H : G.I;
    const void *sbase = gemm1 ? G.sc13 : G.sc2;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int64_t wr = sk_weight_row<KIND>(a, G, chunk, 16 * (warp % SK_ROW_WARPS) + g + 8 * r);
        const int64_t kbl = (K + 127) / 128;
        brow[r] = BLK && wr >= 0
                      ? mxm_cuda_fmt<MXM_WFMT_FP8_BLOCK>::scales(sbase) + (wr / 128) * kbl
                      : nullptr;
    }
    const bool w8a8 = BLK && mxm_cuda_blk_w8a8(a);
#pragma unroll
    for (int ni = 0; ni < NT; ni++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int tok = 8 * ni + 2 * c + e;
            xsrow[ni][e] = nullptr;
            if (w8a8 && tok < G.rows)
                xsrow[ni][e] = gemm1 ? a.xs + (int64_t)a.row_token[G.row0 + tok] * a.HB
                                     : a.acts + (int64_t)(G.row0 + tok) * a.IB;
        }
}

// One stage (ring slot A) into acc: MXFP8 by sk_compute_codes (CODES) or sk_compute with the
// stage's scale bytes sc; DeepSeek FP8 sums the stage (one 128-block of K) into part on its own
// and adds it to acc times its weight and activation scales.
template <int WF, bool CODES, int NT>
__device__ __forceinline__ void
sk_stage(const unsigned char *A, int nt_max, int it, const sk_scales &sc, const float *(&brow)[2],
         const float *(&xsrow)[NT][2], float (&part)[NT][4], float (&acc)[NT][4]) {
    if constexpr (mxm_cuda_fmt<WF>::block128) {
        float sb[2], sa[NT][2];
#pragma unroll
        for (int r = 0; r < 2; r++)
            sb[r] = brow[r] ? __ldg(brow[r] + it) : 0.0f;
#pragma unroll
        for (int ni = 0; ni < NT; ni++)
#pragma unroll
            for (int e = 0; e < 2; e++)
                sa[ni][e] = xsrow[ni][e] ? __ldg(xsrow[ni][e] + it) : 1.0f;
        sk_compute<NT, WF>(A, A + SK_A_BYTES, sc, part);
#pragma unroll
        for (int ni = 0; ni < NT; ni++)
#pragma unroll
            for (int q = 0; q < 4; q++) {
                acc[ni][q] = fmaf(part[ni][q], sb[q / 2] * sa[ni][q % 2], acc[ni][q]);
                part[ni][q] = 0.0f;
            }
    } else if (CODES) {
        sk_compute_codes<NT>(A, A + SK_A_BYTES, A + SK_A_BYTES + nt_max * 8 * SK_BC_ROW, sc, acc);
    } else {
        sk_compute<NT, WF>(A, A + SK_A_BYTES, sc, acc);
    }
}

// After an item's K loop: the two K halves' sums meet (through red), then GEMM2 stores its rows
// of y, GEMM1 activates into ep[token][column] and requantizes one (token, 32-column block) per
// warp. ep: MXM_CUDA_SKINNY_MAX x 65 floats; red: 128 threads x SK_NT_MAX x 4 floats.
template <int KIND, int WF, bool CODES, int NT>
__device__ __forceinline__ void sk_epilogue(const mxm_cuda_args &a, const mxm_cuda_group &G,
                                            int chunk, float (&acc)[NT][4], float *ep,
                                            float *red_base) {
    const int t = threadIdx.x, lane = t & 31, warp = t / 32, g = lane / 4, c = lane % 4;
    const int rw = warp % SK_ROW_WARPS;
    const int n = G.rows;
    // The second half's warps hand their sums to the first half's (past the GEMM1 buffer ep).
    {
        float *red = red_base + (t % (32 * SK_ROW_WARPS)) * (NT * 4);
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
        if (CODES) {
            mxm_gemm1_store_codes(a, v[0], (int64_t)G.row0 + tok, j0 + 32 * b);
            continue;
        }
        const int64_t o[1] = {(int64_t)(G.row0 + tok) * a.I_max + j0 + 32 * b + lane};
        const bool keep[1] = {true};
        mxm_gemm1_store<WF>(a, v, o, keep);
    }
}

template <int KIND, int WF, bool CODES, int NT>
__device__ __forceinline__ void sk_body(const mxm_cuda_args &a, const mxm_cuda_group &G, int chunk,
                                        int nt_max, unsigned char *ring) {
    constexpr bool BLK = mxm_cuda_fmt<WF>::block128;
    const int stage_bytes = sk_stage_bytes(nt_max, CODES);
    const bool gemm1 = KIND != SK_GEMM2;
    const int K = gemm1 ? a.H : G.I;
    const uint8_t *wbase = gemm1 ? G.w13 : G.w2;
    sk_copies cp;
    sk_scale_src ss;
    sk_setup<KIND, BLK, CODES>(a, G, chunk, nt_max, 8 * NT, cp, ss);
    const float *brow[2], *xsrow[NT][2];
    sk_blk_sources<KIND, BLK, NT>(a, G, chunk, brow, xsrow);

    float acc[NT][4], part[NT][4];
    sk_zero(acc), sk_zero(part);

    const int nst = (K + SK_KC - 1) / SK_KC;
    const uint32_t ring_s = (uint32_t)__cvta_generic_to_shared(ring);
    // Ring prologue. GEMM1 has waited for its inputs already. GEMM2 streams its first weight
    // stages while GEMM1 still runs, then waits for the intermediate (programmatic launch; the
    // group table it read came from the prologue, which finished before GEMM1 let it start).
    const bool early_w = KIND == SK_GEMM2;
#pragma unroll
    for (int s = 0; s < SK_STAGES - 1; s++) {
        if (s < nst)
            sk_issue<CODES>(ring_s + s * stage_bytes, cp, wbase, s * SK_KC, true, !early_w);
        cp_async_commit();
    }
    if (early_w) {
        mxm_griddep_wait();
        mxm_probe_ready(a.probe, MXM_SITE_SKINNY2);
        mxm_griddep_launch();
#pragma unroll
        for (int s = 0; s < SK_STAGES - 1; s++)
            if (s < nst)
                sk_issue<CODES>(ring_s + s * stage_bytes, cp, wbase, s * SK_KC, false, true);
        cp_async_commit();
    }
    // The MX scale bytes of the next SK_SC_AHEAD stages, loaded that many stages ahead of their
    // use (global loads: one stage ahead left the warps waiting on them at T = 1); past K they are
    // 127 (sk_load_scales).
    sk_scales cur = {}, ahead[SK_SC_AHEAD] = {};
    if (!BLK) {
        sk_load_scales<CODES>(cur, ss, 0);
#pragma unroll
        for (int i = 0; i < SK_SC_AHEAD; i++)
            sk_load_scales<CODES>(ahead[i], ss, (i + 1) * SK_KC);
    }
    int use = 0, fill = SK_STAGES - 1; // the ring slots of the stage computed and the stage copied
    if (early_w) cp_async_wait<0>(); // the token pieces of the first stages came last
    for (int it = 0; it < nst; it++) {
        cp_async_wait<SK_STAGES - 2>();
        __syncthreads();
        const int ns = it + SK_STAGES - 1;
        if (ns < nst) sk_issue<CODES>(ring_s + fill * stage_bytes, cp, wbase, ns * SK_KC);
        cp_async_commit();
        fill = fill + 1 == SK_STAGES ? 0 : fill + 1;
        const unsigned char *A = ring + use * stage_bytes;
        use = use + 1 == SK_STAGES ? 0 : use + 1;
        sk_stage<WF, CODES, NT>(A, nt_max, it, cur, brow, xsrow, part, acc);
        if (!BLK) {
            cur = ahead[0];
#pragma unroll
            for (int i = 0; i + 1 < SK_SC_AHEAD; i++)
                ahead[i] = ahead[i + 1];
            sk_load_scales<CODES>(ahead[SK_SC_AHEAD - 1], ss, (it + 1 + SK_SC_AHEAD) * SK_KC);
        }
    }
    cp_async_wait<0>();
    __syncthreads(); // the ring becomes the epilogue buffer
    sk_epilogue<KIND, WF, CODES, NT>(a, G, chunk, acc, reinterpret_cast<float *>(ring),
                                     reinterpret_cast<float *>(ring + SK_RED_OFFSET));
}

// Whether (group G, chunk) is work for a KIND launch: the group's gating matches KIND (gated and
// plain GEMM1 groups take launches of their own) and the chunk lies inside its output rows.
template <int KIND>
__device__ __forceinline__ bool sk_has_work(const mxm_cuda_args &a, const mxm_cuda_group &G,
                                            int chunk) {
    if (KIND != SK_GEMM2 && mxm_act_is_gated(G.act) != (KIND == SK_GEMM1_GATED)) return false;
    return KIND == SK_GEMM1_GATED   ? chunk * 32 < G.I
           : KIND == SK_GEMM1_PLAIN ? chunk * SK_ROWS < G.I
                                    : chunk * SK_ROWS < a.H;
}

template <int KIND, int WF, bool CODES>
__global__ void __launch_bounds__(SK_THREADS, SK_MIN_BLOCKS)
    skinny_kernel(mxm_cuda_args a, int nt_max) {
    extern __shared__ __align__(128) unsigned char sk_ring[];
    MXM_PROBE_SCOPE(a, KIND == SK_GEMM2 ? MXM_SITE_SKINNY2 : MXM_SITE_SKINNY1);
    if (KIND != SK_GEMM2) { // GEMM2 waits inside, after its first weight copies
        mxm_griddep_wait();
        mxm_probe_ready(a.probe, MXM_SITE_SKINNY1);
        mxm_griddep_launch();
    }
    const int g = sk_group(a);
    if (g < 0) return;
    const mxm_cuda_group G = a.group[g];
    const int chunk = blockIdx.y;
    if (!sk_has_work<KIND>(a, G, chunk)) return;
    switch ((G.rows + 7) / 8) { // the group's n8 tiles (rows <= MXM_CUDA_SKINNY_MAX <= 8 nt_max)
    case 1:
        sk_body<KIND, WF, CODES, 1>(a, G, chunk, nt_max, sk_ring);
        break;
    case 2:
        sk_body<KIND, WF, CODES, 2>(a, G, chunk, nt_max, sk_ring);
        break;
    case 3:
        sk_body<KIND, WF, CODES, 3>(a, G, chunk, nt_max, sk_ring);
        break;
    default:
        sk_body<KIND, WF, CODES, 4>(a, G, chunk, nt_max, sk_ring);
        break;
    }
}

// ---- the persistent variant (a.sk_persist) -----------------------------------------------------
// Work item i = (slot i % n of the skinny list, chunk i / n), n = a.counts[1]: the order of the
// grid above. Block b takes items b, b + gridDim.x, ... (SK_MIN_BLOCKS per SM, or fewer where the
// shared memory holds fewer: sk_launch_as). When every item has at least SKP_XITEM_STAGES stages
// (xitem: K >= SKP_XITEM_STAGES * SK_KC for every group, host), the ring and the scale-byte queue
// run on across items: the iterations that would issue past an item's last stage
// issue its successor's first ones, so an item starts with SK_STAGES - 1 stages in flight instead
// of a memory latency and a dependent setup chain. Slot of a stream stage: the issue of stage P at
// iteration P - (SK_STAGES - 1) goes to slot `fill` = use + SK_STAGES - 1 of that iteration, which
// is the slot `use` of iteration P (mod SK_STAGES), within and across items. Without xitem each
// item primes its own first stages (slots use.., as the grid kernel does). The epilogue buffers
// sit past the ring, which holds the next item's stages meanwhile.
#define SKP_EPI_BYTES (SK_RED_OFFSET + 32 * SK_ROW_WARPS * SK_NT_MAX * 16)
// The fewest stages per item for xitem: the ring's SK_STAGES - 1 stages ahead, and the scale
// queue's SK_SC_AHEAD + 1 (an item's successor's first scale byte is loaded at its iteration
// nst - 1 - SK_SC_AHEAD; with fewer stages it would load a placeholder: builds with SK_STAGES <= 5,
// tests/oracle/test_skinny_layout.py).
#define SKP_XITEM_STAGES (SK_STAGES - 1 > SK_SC_AHEAD + 1 ? SK_STAGES - 1 : SK_SC_AHEAD + 1)

struct skp_item {
    int i; // item index (>= nitems: none)
    int g, chunk;
};

// From item i on, the block's first item with work (sk_has_work).
template <int KIND> __device__ skp_item skp_find(const mxm_cuda_args &a, int i, int n, int nitems) {
    for (; i < nitems; i += gridDim.x) {
        const int g = __ldcg(a.skinny_list + i % n), chunk = i / n;
        if (sk_has_work<KIND>(a, a.group[g], chunk)) return {i, g, chunk};
    }
    return {nitems, -1, 0};
}

// The stream state a block carries from item to item.
struct skp_stream {
    int use, fill; // ring slots of the stage computed next and of the next issue
    sk_scales cur, ahead[SK_SC_AHEAD];
};

// One item's K loop and epilogue; nx: the next item's copies and scale sources (nx_on: it exists
// and xitem holds), whose first stages and scale bytes the loop's last iterations issue.
template <int KIND, int WF, bool CODES, int NT>
__device__ __forceinline__ void
skp_item_body(const mxm_cuda_args &a, const mxm_cuda_group &G, int chunk, int nt_max,
              unsigned char *ring, skp_stream &st, const sk_copies &cp, const sk_scale_src &ss,
              bool nx_on, const sk_copies &ncp, const sk_scale_src &nss, int nnst,
              const void *ndummy) {
    const int stage_bytes = sk_stage_bytes(nt_max, CODES);
    const int K = KIND != SK_GEMM2 ? a.H : G.I, nst = (K + SK_KC - 1) / SK_KC;
    const void *dummy = KIND != SK_GEMM2 ? (const void *)G.w13 : (const void *)G.w2;
    const uint32_t ring_s = (uint32_t)__cvta_generic_to_shared(ring);
    constexpr bool BLK = mxm_cuda_fmt<WF>::block128;
    const float *brow[2], *xsrow[NT][2];
    sk_blk_sources<KIND, BLK, NT>(a, G, chunk, brow, xsrow);
    float acc[NT][4], part[NT][4];
    sk_zero(acc), sk_zero(part);
    for (int it = 0; it < nst; it++) {
        cp_async_wait<SK_STAGES - 2>();
        __syncthreads();
        const int ns = it + SK_STAGES - 1;
        const uint32_t slot = ring_s + st.fill * stage_bytes;
        if (ns < nst)
            sk_issue<CODES>(slot, cp, dummy, ns * SK_KC);
        else if (nx_on && ns - nst < nnst)
            sk_issue<CODES>(slot, ncp, ndummy, (ns - nst) * SK_KC);
        cp_async_commit();
        st.fill = st.fill + 1 == SK_STAGES ? 0 : st.fill + 1;
        const unsigned char *A = ring + st.use * stage_bytes;
        st.use = st.use + 1 == SK_STAGES ? 0 : st.use + 1;
        sk_stage<WF, CODES, NT>(A, nt_max, it, st.cur, brow, xsrow, part, acc);
        st.cur = st.ahead[0];
#pragma unroll
        for (int i = 0; i + 1 < SK_SC_AHEAD; i++)
            st.ahead[i] = st.ahead[i + 1];
        const int sa = it + 1 + SK_SC_AHEAD;
        if (sa < nst || !nx_on)
            sk_load_scales<CODES>(st.ahead[SK_SC_AHEAD - 1], ss, sa * SK_KC);
        else
            sk_load_scales<CODES>(st.ahead[SK_SC_AHEAD - 1], nss, (sa - nst) * SK_KC);
    }
    __syncthreads(); // every warp's last stage read; the epilogue buffers' previous use is over
    float *ep = reinterpret_cast<float *>(ring + SK_STAGES * stage_bytes);
    sk_epilogue<KIND, WF, CODES, NT>(
        a, G, chunk, acc, ep,
        reinterpret_cast<float *>(reinterpret_cast<unsigned char *>(ep) + SK_RED_OFFSET));
}

// Issues an item's first SK_STAGES - 1 stages into the slots from st.use on and loads its first
// scale bytes (an item that starts the stream, or any item without xitem). do_w / do_x as sk_issue.
template <bool CODES>
__device__ __forceinline__ void
skp_prime(uint32_t ring_s, int stage_bytes, skp_stream &st, const sk_copies &cp,
          const sk_scale_src &ss, const void *dummy, int nst, bool do_w, bool do_x, bool scales) {
#pragma unroll
    for (int s = 0; s < SK_STAGES - 1; s++) {
        const int slot = (st.use + s) % SK_STAGES;
        if (s < nst) sk_issue<CODES>(ring_s + slot * stage_bytes, cp, dummy, s * SK_KC, do_w, do_x);
        cp_async_commit();
    }
    st.fill = (st.use + SK_STAGES - 1) % SK_STAGES;
    if (!scales) return;
    sk_load_scales<CODES>(st.cur, ss, 0);
#pragma unroll
    for (int i = 0; i < SK_SC_AHEAD; i++)
        sk_load_scales<CODES>(st.ahead[i], ss, (i + 1) * SK_KC);
}

template <int KIND, int WF, bool CODES>
__global__ void __launch_bounds__(SK_THREADS, SK_MIN_BLOCKS)
    skinny_persist_kernel(mxm_cuda_args a, int nt_max, int chunks, int xitem) {
    extern __shared__ __align__(128) unsigned char sk_ring[];
    MXM_PROBE_SCOPE(a, KIND == SK_GEMM2 ? MXM_SITE_SKINNY2 : MXM_SITE_SKINNY1);
    constexpr bool GEMM2 = KIND == SK_GEMM2;
    if (!GEMM2) { // GEMM2 waits after its first weight copies
        mxm_griddep_wait();
        mxm_probe_ready(a.probe, MXM_SITE_SKINNY1);
        mxm_griddep_launch();
    }
    const int n = __ldcg(a.counts + 1), nitems = n * chunks;
    skp_item cur = skp_find<KIND>(a, blockIdx.x, n, nitems);
    if (cur.g < 0) {
        if (GEMM2) { // the chain goes on (GEMM2 has not waited yet)
            mxm_griddep_wait();
            mxm_probe_ready(a.probe, MXM_SITE_SKINNY2);
            mxm_griddep_launch();
        }
        return;
    }
    const int stage_bytes = sk_stage_bytes(nt_max, CODES);
    const uint32_t ring_s = (uint32_t)__cvta_generic_to_shared(sk_ring);
    skp_stream st;
    st.use = 0;
    sk_copies cp, ncp;
    sk_scale_src ss, nss;
    mxm_cuda_group G = a.group[cur.g];
    sk_setup<KIND, mxm_cuda_fmt<WF>::block128, CODES>(a, G, cur.chunk, nt_max,
                                                      8 * ((G.rows + 7) / 8), cp, ss);
    const int K0 = GEMM2 ? G.I : a.H;
    const void *dummy = GEMM2 ? (const void *)G.w2 : (const void *)G.w13;
    // The first item: GEMM2 streams its weight stages while GEMM1 still runs, then waits for the
    // intermediate and copies the token pieces (as the grid kernel).
    skp_prime<CODES>(ring_s, stage_bytes, st, cp, ss, dummy, (K0 + SK_KC - 1) / SK_KC, true, !GEMM2,
                     true);
    if (GEMM2) {
        mxm_griddep_wait();
        mxm_probe_ready(a.probe, MXM_SITE_SKINNY2);
        mxm_griddep_launch();
        skp_prime<CODES>(ring_s, stage_bytes, st, cp, ss, dummy, (K0 + SK_KC - 1) / SK_KC, false,
                         true, false);
        cp_async_wait<0>(); // the token pieces of the first stages came last
        // the second prime committed SK_STAGES - 1 more (now complete) groups: the loop's waits
        // count from the latest, so they only wait longer than needed, never too little
    }
    for (;;) {
        const skp_item nxt = skp_find<KIND>(a, cur.i + gridDim.x, n, nitems);
        mxm_cuda_group nG = G;
        int nnst = 0;
        const void *ndummy = dummy;
        if (nxt.g >= 0) {
            nG = a.group[nxt.g];
            nnst = ((GEMM2 ? nG.I : a.H) + SK_KC - 1) / SK_KC;
            ndummy = GEMM2 ? (const void *)nG.w2 : (const void *)nG.w13;
            if (xitem)
                sk_setup<KIND, mxm_cuda_fmt<WF>::block128, CODES>(
                    a, nG, nxt.chunk, nt_max, 8 * ((nG.rows + 7) / 8), ncp, nss);
        }
        const bool nx_on = xitem && nxt.g >= 0;
        switch ((G.rows + 7) / 8) {
        case 1:
            skp_item_body<KIND, WF, CODES, 1>(a, G, cur.chunk, nt_max, sk_ring, st, cp, ss, nx_on,
                                              ncp, nss, nnst, ndummy);
            break;
        case 2:
            skp_item_body<KIND, WF, CODES, 2>(a, G, cur.chunk, nt_max, sk_ring, st, cp, ss, nx_on,
                                              ncp, nss, nnst, ndummy);
            break;
        case 3:
            skp_item_body<KIND, WF, CODES, 3>(a, G, cur.chunk, nt_max, sk_ring, st, cp, ss, nx_on,
                                              ncp, nss, nnst, ndummy);
            break;
        default:
            skp_item_body<KIND, WF, CODES, 4>(a, G, cur.chunk, nt_max, sk_ring, st, cp, ss, nx_on,
                                              ncp, nss, nnst, ndummy);
            break;
        }
        if (nxt.g < 0) break;
        cur = nxt, G = nG, dummy = ndummy;
        if (xitem) {
            cp = ncp, ss = nss; // its first stages and scale bytes are in flight
        } else {
            sk_setup<KIND, mxm_cuda_fmt<WF>::block128, CODES>(a, G, cur.chunk, nt_max,
                                                              8 * ((G.rows + 7) / 8), cp, ss);
            skp_prime<CODES>(ring_s, stage_bytes, st, cp, ss, dummy, nnst, true, true, true);
        }
    }
    cp_async_wait<0>(); // nothing in flight when the block leaves
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

template <int KIND, int WF, bool CODES>
static mxm_status sk_launch_as(const mxm_cuda_args &a, int chunks, cudaStream_t s) {
    const int nt_max = sk_nt_max(a), smem = SK_STAGES * sk_stage_bytes(nt_max, CODES);
    if (a.sk_persist) { // SK_MIN_BLOCKS per SM where the shared memory holds them, <= the items
        const int per_sm = mxm_cuda_attr(MXM_ATTR_SMEM_PER_SM) / (smem + SKP_EPI_BYTES + 1024);
        const int blocks = per_sm < 1 ? 1 : per_sm < SK_MIN_BLOCKS ? per_sm : SK_MIN_BLOCKS;
        const int64_t items = (int64_t)sk_group_bound(a) * chunks,
                      slots = (int64_t)mxm_cuda_attr(MXM_ATTR_SMS) * blocks;
        const int K_min = KIND == SK_GEMM2 ? a.I_min : a.H;
        const int xitem = K_min >= SKP_XITEM_STAGES * SK_KC;
        return mxm_cuda_launch(skinny_persist_kernel<KIND, WF, CODES>,
                               dim3((unsigned)(items < slots ? items : slots)), SK_THREADS,
                               (size_t)(smem + SKP_EPI_BYTES), s, a, nt_max, chunks, xitem);
    }
    return mxm_cuda_launch(skinny_kernel<KIND, WF, CODES>, dim3(sk_group_bound(a), chunks),
                           SK_THREADS, (size_t)smem, s, a, nt_max);
}

// The kernel for the layer's format and activation form (CODES: MXFP8 W8A8, mxm_cuda_codes).
template <int KIND, int WF>
static mxm_status sk_launch(const mxm_cuda_args &a, int chunks, cudaStream_t s) {
    if constexpr (WF == MXM_WFMT_MXFP8)
        if (mxm_cuda_codes(a)) return sk_launch_as<KIND, WF, true>(a, chunks, s);
    return sk_launch_as<KIND, WF, false>(a, chunks, s);
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
