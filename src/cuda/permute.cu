// Token permutation: rows grouped by local expert (plus the shared expert as the last group).
// Counts use atomics; the order of rows inside a group may vary between runs, but every row's
// result depends only on its own token, and the combine sums in (t, k) order, so outputs are
// bit-identical run to run.
//
// Two ways there:
//  - decode (T <= MXM_CUDA_PROLOGUE_MAX_T): one launch. Block 0 routes (a warp per token),
//    counts, scans and scatters in shared memory; the next blocks quantize the activations, and
//    the last ones ask the L2 for the touched experts' weights (l2_prefetch.h).
//  - prefill: prepare_x, route and three kernels here (count, offsets, scatter), each wide.
#include "cuda/kernels.cuh"
#include "cuda/l2_prefetch.h"
#include "cuda/prepare.cuh"
#include "cuda/route_warp.cuh"

#define PROLOGUE_THREADS 256

// Exclusive prefix sums over the groups by one block, of four counters at once: routed rows
// (first permuted row), MMA tiles (groups over MXM_CUDA_SKINNY_MAX rows), skinny groups (list
// slots), and the a.wg_bt-row m-tiles of gemm_wgmma.cu (same groups). Writes the group table's
// rows/row0/tile0/tile0_wg, the skinny list, a.counts, and cursor[g] = first row of g for the
// scatter. n: rows per group (shared or global memory).
__device__ void group_offsets_block(const mxm_cuda_args &a, const int32_t *n, int32_t *cursor) {
    __shared__ int4 warp_tot[32];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid / 32, nwarps = (blockDim.x + 31) / 32;
    const int per = (a.groups + blockDim.x - 1) / blockDim.x;
    const int g0 = min(tid * per, a.groups), g1 = min(g0 + per, a.groups);
    int4 loc = make_int4(0, 0, 0, 0);
    for (int g = g0; g < g1; g++) {
        const int ng = n[g];
        loc.x += g == a.e_loc ? 0 : ng;
        loc.y += ng > MXM_CUDA_SKINNY_MAX ? (ng + MXM_CUDA_BM - 1) / MXM_CUDA_BM : 0;
        loc.z += ng > 0 && ng <= MXM_CUDA_SKINNY_MAX;
        loc.w += ng > MXM_CUDA_SKINNY_MAX ? (ng + a.wg_bt - 1) / a.wg_bt : 0;
    }
    int4 inc = loc;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int x = __shfl_up_sync(0xFFFFFFFFu, inc.x, o), y = __shfl_up_sync(0xFFFFFFFFu, inc.y, o),
                  z = __shfl_up_sync(0xFFFFFFFFu, inc.z, o), q = __shfl_up_sync(0xFFFFFFFFu, inc.w, o);
        if (lane >= o) inc.x += x, inc.y += y, inc.z += z, inc.w += q;
    }
    if (lane == 31) warp_tot[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        int4 v = lane < nwarps ? warp_tot[lane] : make_int4(0, 0, 0, 0), w = v;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int x = __shfl_up_sync(0xFFFFFFFFu, w.x, o), y = __shfl_up_sync(0xFFFFFFFFu, w.y, o),
                      z = __shfl_up_sync(0xFFFFFFFFu, w.z, o), q = __shfl_up_sync(0xFFFFFFFFu, w.w, o);
            if (lane >= o) w.x += x, w.y += y, w.z += z, w.w += q;
        }
        if (lane < nwarps) warp_tot[lane] = make_int4(w.x - v.x, w.y - v.y, w.z - v.z, w.w - v.w); // exclusive
    }
    __syncthreads();
    int4 pre = warp_tot[warp];
    pre.x += inc.x - loc.x, pre.y += inc.y - loc.y, pre.z += inc.z - loc.z, pre.w += inc.w - loc.w;
    for (int g = g0; g < g1; g++) {
        const int ng = n[g];
        const bool shared = g == a.e_loc;
        mxm_cuda_group &G = a.group[g];
        G.rows = ng, G.row0 = shared ? a.T * a.K : pre.x, G.tile0 = pre.y, G.tile0_wg = pre.w;
        cursor[g] = G.row0;
        if (!shared) pre.x += ng;
        if (ng > MXM_CUDA_SKINNY_MAX) {
            pre.y += (ng + MXM_CUDA_BM - 1) / MXM_CUDA_BM;
            pre.w += (ng + a.wg_bt - 1) / a.wg_bt;
        } else if (ng > 0) {
            a.skinny_list[pre.z++] = g;
        }
    }
    if (g1 == a.groups && g0 < g1) a.counts[0] = pre.y, a.counts[1] = pre.z, a.counts[2] = pre.w; // + wgmma m-tiles
}

// Pair i of the (t, k) list to its permuted row (cursor: next free row of each group).
__device__ __forceinline__ void scatter_pair(const mxm_cuda_args &a, int64_t i, int32_t *cursor) {
    const int32_t t = (int32_t)(i / a.K), e = a.ids[i] - a.off;
    if (e >= 0 && e < a.e_loc) {
        const int32_t r = atomicAdd(&cursor[e], 1);
        a.row_token[r] = t;
        a.pos[i] = r;
    } else {
        a.pos[i] = -1;
    }
    if (a.groups > a.e_loc && i % a.K == 0) a.row_token[a.T * a.K + t] = t;
}

__global__ void count_kernel(mxm_cuda_args a, int32_t *cursor) {
    MXM_KERNEL_ENTRY(a, MXM_SITE_COUNT);
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= (int64_t)a.T * a.K) return;
    const int32_t e = a.ids[i] - a.off;
    if (e >= 0 && e < a.e_loc) atomicAdd(&cursor[e], 1);
}

__global__ void offsets_kernel(mxm_cuda_args a, int32_t *cursor) {
    extern __shared__ int32_t n[]; // [groups]
    MXM_KERNEL_ENTRY(a, MXM_SITE_OFFSETS);
    for (int g = threadIdx.x; g < a.groups; g += blockDim.x) n[g] = g == a.e_loc ? a.T : cursor[g];
    __syncthreads();
    group_offsets_block(a, n, cursor);
}

__global__ void scatter_kernel(mxm_cuda_args a, int32_t *cursor) {
    MXM_KERNEL_ENTRY(a, MXM_SITE_SCATTER);
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < (int64_t)a.T * a.K) scatter_pair(a, i, cursor);
}

mxm_status mxm_cuda_permute(const mxm_cuda_args &a, int32_t *cursor, cudaStream_t s) {
    const int64_t n = (int64_t)a.T * a.K;
    const int blocks = (int)((n + 255) / 256);
    MXM_CUDA_TRY(cudaMemsetAsync(cursor, 0, sizeof(int32_t) * (a.groups + 1), s));
    mxm_status st = mxm_cuda_launch(count_kernel, blocks, 256, 0, s, a, cursor);
    if (st) return st;
    const size_t smem = sizeof(int32_t) * (size_t)a.groups;
    if ((st = mxm_cuda_launch(offsets_kernel, 1, 1024, smem, s, a, cursor))) return st;
    return mxm_cuda_launch(scatter_kernel, blocks, 256, 0, s, a, cursor);
}

// ---- the decode prologue ---------------------------------------------------------------------------

// Where the routing scratch starts in the prologue's shared memory (after 2 x groups counters).
static __host__ __device__ int64_t prologue_scratch_offset(int groups) { return (2 * 4 * (int64_t)groups + 15) / 16 * 16; }
#define PROLOGUE_SCRATCH_SMEM (32 * 1024) // routing scratch kept in shared memory up to this size
// Routing from logits, the prefetch blocks route the step's tokens themselves (a warp per token,
// the same bits as block 0) up to this many tokens; past it they are left out.
#define PF_ROUTE_MAX_T 8

__device__ __forceinline__ void l2_prefetch_bulk(const void *p, uint32_t bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
}

// A group's four segments (l2_prefetch.h): GEMM1's codes [M1, H] (one byte each) and scales,
// GEMM2's codes [H, I] and scales (their sizes from the host's format table, in the group).
__device__ void l2_prefetch_segments(const mxm_cuda_args &a, const mxm_cuda_group &G,
                                     const uint8_t *p[MXM_PF_SEGS], int64_t len[MXM_PF_SEGS]) {
    const int64_t I = G.I, M1 = (mxm_act_is_gated(G.act) ? 2 : 1) * I, H = a.H;
    p[0] = G.w13, p[1] = (const uint8_t *)G.sc13, p[2] = G.w2, p[3] = (const uint8_t *)G.sc2;
    len[0] = M1 * H, len[1] = G.sc13_bytes, len[2] = H * I, len[3] = G.sc2_bytes;
}

// Prefetch block `part` of in.pf_blocks: marks the step's touched groups (the given ids, or its
// own routing of the tokens into shared memory; the shared expert always), gives each the same
// share of in.pf_bytes, and takes every in.pf_blocks-th (piece, group) item, pieces of all groups
// interleaved so that each block's bulk prefetches spread over the groups.
__device__ void l2_prefetch_part(const mxm_cuda_args &a, const mxm_cuda_prologue_in &in, int part) {
    extern __shared__ __align__(16) int32_t sh[];
    int32_t *touched = sh; // [groups]
    for (int g = threadIdx.x; g < a.groups; g += blockDim.x)
        touched[g] = g == a.e_loc; // the shared expert takes every token
    const int32_t *ids = a.ids;
    if (in.logits) {
        int32_t *rid = (int32_t *)((char *)sh + in.pf_ids_offset);
        float *rw = (float *)(rid + (int64_t)a.T * a.K);
        char *scratch = (char *)sh + prologue_scratch_offset(a.groups);
        for (int64_t t = threadIdx.x / 32; t < a.T; t += blockDim.x / 32)
            mxm_route_token_warp(&in.rp, in.logits, in.logits_dtype, in.bias, in.bias_dtype, t, rid,
                                 rw, scratch + t * in.route_stride);
        ids = rid;
    }
    __syncthreads(); // the flags (and the ids routed here)
    for (int64_t i = threadIdx.x; i < (int64_t)a.T * a.K; i += blockDim.x) {
        const int32_t e = ids[i] - a.off;
        if (e >= 0 && e < a.e_loc) atomicOr(&touched[e], 1);
    }
    __syncthreads();
    int nt = 0;
    for (int g0 = 0; g0 < a.groups; g0 += blockDim.x)
        nt += __syncthreads_count(g0 + (int)threadIdx.x < a.groups && touched[g0 + threadIdx.x]);
    if (nt == 0) return; // no local expert in the step
    const int64_t share = in.pf_bytes / nt, items = mxm_pf_pieces_bound(share) * a.groups;
    for (int64_t it = (int64_t)part * blockDim.x + threadIdx.x; it < items;
         it += (int64_t)in.pf_blocks * blockDim.x) {
        const int g = (int)(it % a.groups);
        if (!touched[g]) continue;
        const uint8_t *p[MXM_PF_SEGS];
        int64_t len[MXM_PF_SEGS], off, n;
        l2_prefetch_segments(a, a.group[g], p, len);
        const int s = mxm_pf_piece(len, share, it / a.groups, &off, &n);
        uintptr_t at;
        const uint32_t bytes = s >= 0 && p[s] ? mxm_pf_aligned((uintptr_t)p[s], off, n, &at) : 0;
        if (bytes) l2_prefetch_bulk((const void *)at, bytes);
    }
}

__global__ void __launch_bounds__(PROLOGUE_THREADS) prologue_kernel(mxm_cuda_args a, mxm_cuda_prologue_in in) {
    MXM_KERNEL_ENTRY(a, MXM_SITE_PROLOGUE);
    if ((int)blockIdx.x > in.x_blocks) { // L2 prefetch
        l2_prefetch_part(a, in, (int)blockIdx.x - 1 - in.x_blocks);
        return;
    }
    if (blockIdx.x > 0) { // activations
        if (a.blk)
            mxm_prepare_x_fp8block(a, (int64_t)(blockIdx.x - 1) * (PROLOGUE_THREADS / 32) + threadIdx.x / 32, in.x,
                                   in.x_dtype, (const float *)in.x_scale, in.x_scale_transposed);
        else
            mxm_prepare_x_part(a, blockIdx.x - 1, in.x, in.x_dtype, (const uint8_t *)in.x_scale);
        return;
    }
    extern __shared__ __align__(16) int32_t sh[]; // n, cursor: 2 x groups; then routing scratch
    int32_t *n = sh, *cursor = sh + a.groups;
    // One warp per token (route_warp.cuh; a.route_warp), else one thread per token; the scratch
    // sits in shared memory when it fits (in.route_smem), which shortens the serial parts' loads.
    char *scratch = in.route_smem ? (char *)sh + prologue_scratch_offset(a.groups) : in.route_scratch;
    if (in.logits && a.route_warp)
        for (int64_t t = threadIdx.x / 32; t < a.T; t += blockDim.x / 32)
            mxm_route_token_warp(&in.rp, in.logits, in.logits_dtype, in.bias, in.bias_dtype, t,
                                 a.ids, a.wts, scratch + t * in.route_stride);
    else if (in.logits)
        for (int64_t t = threadIdx.x; t < a.T; t += blockDim.x)
            mxm_route_token(&in.rp, in.logits, in.logits_dtype, in.bias, in.bias_dtype, t, a.ids,
                            a.wts, scratch + t * in.route_stride);
    for (int g = threadIdx.x; g < a.groups; g += blockDim.x)
        n[g] = g == a.e_loc ? a.T : 0;
    __syncthreads(); // the routing's ids (global, this block) and the zeroed counts
    for (int64_t i = threadIdx.x; i < (int64_t)a.T * a.K; i += blockDim.x) {
        const int32_t e = a.ids[i] - a.off;
        if (e >= 0 && e < a.e_loc) atomicAdd(&n[e], 1);
    }
    __syncthreads();
    group_offsets_block(a, n, cursor);
    __syncthreads();
    for (int64_t i = threadIdx.x; i < (int64_t)a.T * a.K; i += blockDim.x) scatter_pair(a, i, cursor);
}

extern "C" int64_t mxm_route_device_scratch_bytes(const mxm_route_params *p);

mxm_status mxm_cuda_prologue(const mxm_cuda_args &a, const mxm_cuda_prologue_in &in, cudaStream_t s) {
    static_assert(PROLOGUE_THREADS == MXM_PREP_THREADS, "the prologue's blocks prepare x");
    const int64_t xblocks =
        a.blk ? ((int64_t)a.T * a.HB + PROLOGUE_THREADS / 32 - 1) / (PROLOGUE_THREADS / 32)
              : mxm_prepare_x_blocks(a);
    mxm_cuda_prologue_in pin = in;
    const int64_t scratch = in.logits ? (int64_t)a.T * in.route_stride : 0;
    pin.route_smem = scratch > 0 && scratch <= PROLOGUE_SCRATCH_SMEM && in.route_stride % 16 == 0;
    size_t smem = pin.route_smem ? (size_t)(prologue_scratch_offset(a.groups) + scratch)
                                 : 2 * sizeof(int32_t) * (size_t)a.groups;
    // The prefetch blocks: half the SMs, no more than the items need. From logits they route the
    // tokens themselves (scratch in shared memory, ids and weights past it), up to PF_ROUTE_MAX_T.
    pin.x_blocks = (int32_t)xblocks, pin.pf_blocks = 0, pin.pf_ids_offset = (int32_t)smem;
    if (in.pf_bytes > 0 && (!in.logits || (pin.route_smem && a.T <= PF_ROUTE_MAX_T))) {
        const int64_t items = mxm_pf_pieces_bound(in.pf_bytes) * a.groups;
        const int64_t need = (items + PROLOGUE_THREADS - 1) / PROLOGUE_THREADS,
                      half = mxm_cuda_attr(MXM_ATTR_SMS) / 2;
        pin.pf_blocks = (int32_t)(need < half ? need : half);
        if (in.logits) smem += 8 * (size_t)a.T * a.K;
    }
    return mxm_cuda_launch(prologue_kernel, (unsigned)(1 + xblocks + pin.pf_blocks),
                           PROLOGUE_THREADS, smem, s, a, pin);
}
