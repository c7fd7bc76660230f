// Token permutation: rows grouped by local expert (plus the shared expert as the last group).
// Counts use atomics; the order of rows inside a group may vary between runs, but every row's
// result depends only on its own token, and the combine sums in (t, k) order, so outputs are
// bit-identical run to run.
#include "cuda/kernels.cuh"

__global__ void count_kernel(mxm_cuda_args a, int32_t *cursor) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= (int64_t)a.T * a.K) return;
    const int32_t e = a.ids[i] - a.off;
    if (e >= 0 && e < a.e_loc) atomicAdd(&cursor[e], 1);
}

// One thread: prefix sums over groups (E_loc + 1 entries at most a few thousand).
__global__ void offsets_kernel(mxm_cuda_args a, int32_t *cursor) {
    int32_t row = 0, tile = 0, ngemv = 0;
    for (int g = 0; g < a.groups; g++) {
        const bool shared = g == a.e_loc;
        const int32_t n = shared ? a.T : cursor[g];
        mxm_cuda_group &G = a.group[g];
        G.rows = n;
        G.row0 = shared ? a.T * a.K : row;
        G.tile0 = tile;
        if (n > MXM_CUDA_GEMV_MAX) tile += (n + MXM_CUDA_BM - 1) / MXM_CUDA_BM;
        else if (n > 0) a.gemv_list[ngemv++] = g;
        cursor[g] = G.row0;
        if (!shared) row += n;
    }
    a.counts[0] = tile; // MMA tiles in use
    a.counts[1] = ngemv;
}

__global__ void scatter_kernel(mxm_cuda_args a, int32_t *cursor) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= (int64_t)a.T * a.K) return;
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

mxm_status mxm_cuda_permute(const mxm_cuda_args &a, int32_t *cursor, cudaStream_t s) {
    const int64_t n = (int64_t)a.T * a.K;
    const int blocks = (int)((n + 255) / 256);
    MXM_CUDA_TRY(cudaMemsetAsync(cursor, 0, sizeof(int32_t) * (a.groups + 1), s));
    count_kernel<<<blocks, 256, 0, s>>>(a, cursor);
    MXM_CUDA_LAUNCHED();
    offsets_kernel<<<1, 1, 0, s>>>(a, cursor);
    MXM_CUDA_LAUNCHED();
    scatter_kernel<<<blocks, 256, 0, s>>>(a, cursor);
    MXM_CUDA_LAUNCHED();
    return MXM_OK;
}
