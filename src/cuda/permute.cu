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

// Prefix sums over groups (E_loc + 1 of them): counts are staged in shared memory, one thread
// scans there (no dependent global loads), then the whole block writes the results.
__global__ void offsets_kernel(mxm_cuda_args a, int32_t *cursor) {
    extern __shared__ int32_t sh[]; // n, row0, tile0, skinny list: 4 x groups
    int32_t *n = sh, *row0 = sh + a.groups, *tile0 = sh + 2 * a.groups, *list = sh + 3 * a.groups;
    __shared__ int32_t totals[2];
    for (int g = threadIdx.x; g < a.groups; g += blockDim.x) n[g] = g == a.e_loc ? a.T : cursor[g];
    __syncthreads();
    if (threadIdx.x == 0) {
        int32_t row = 0, tile = 0, nskinny = 0;
        for (int g = 0; g < a.groups; g++) {
            const bool shared = g == a.e_loc;
            row0[g] = shared ? a.T * a.K : row;
            tile0[g] = tile;
            if (n[g] > MXM_CUDA_SKINNY_MAX) tile += (n[g] + MXM_CUDA_BM - 1) / MXM_CUDA_BM;
            else if (n[g] > 0) list[nskinny++] = g;
            if (!shared) row += n[g];
        }
        totals[0] = tile, totals[1] = nskinny;
    }
    __syncthreads();
    for (int g = threadIdx.x; g < a.groups; g += blockDim.x) {
        mxm_cuda_group &G = a.group[g];
        G.rows = n[g], G.row0 = row0[g], G.tile0 = tile0[g];
        cursor[g] = row0[g];
    }
    for (int i = threadIdx.x; i < totals[1]; i += blockDim.x) a.skinny_list[i] = list[i];
    if (threadIdx.x == 0) a.counts[0] = totals[0], a.counts[1] = totals[1]; // MMA tiles, skinny groups
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
    const size_t smem = sizeof(int32_t) * 4 * (size_t)a.groups;
    if (smem > 48 * 1024) {
        static size_t raised = 0;
        if (smem > raised) {
            MXM_CUDA_TRY(cudaFuncSetAttribute(offsets_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
            raised = smem;
        }
    }
    offsets_kernel<<<1, 1024, smem, s>>>(a, cursor);
    MXM_CUDA_LAUNCHED();
    scatter_kernel<<<blocks, 256, 0, s>>>(a, cursor);
    MXM_CUDA_LAUNCHED();
    return MXM_OK;
}
