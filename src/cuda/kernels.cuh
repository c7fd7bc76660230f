// Launchers of the CUDA MoE kernels, one .cu per op. Each returns an mxm_status and checks
// its launch.
#ifndef MXM_CUDA_KERNELS_CUH
#define MXM_CUDA_KERNELS_CUH

#include "cuda/common.cuh"

// x [T, H] (f32 / bf16 / E4M3 + E8M0 or fp32 1x128 scales) -> a.xq bf16 values the GEMMs see
// (and a.xs for DeepSeek FP8 W8A8).
mxm_status mxm_cuda_prepare_x(const mxm_cuda_args &a, const void *x, int32_t x_dtype, const void *x_scale,
                              int32_t x_scale_transposed, cudaStream_t s);
// DeepSeek FP8 W8A8: requantizes the fp32 intermediate a.actf into a.act and a.acts.
mxm_status mxm_cuda_requant_fp8block(const mxm_cuda_args &a, cudaStream_t s);
extern "C" int64_t mxm_route_device_scratch_bytes(const mxm_route_params *p);
// Routing on the device: logits [T, E] (f32/bf16), bias [E] or NULL -> a.ids, a.wts.
mxm_status mxm_cuda_route(const mxm_cuda_args &a, const mxm_route_params &rp, const void *logits,
                          int32_t logits_dtype, const void *bias, int32_t bias_dtype, void *scratch,
                          cudaStream_t s);
// a.ids -> counts, group rows/offsets/tiles, a.pos, a.row_token.
mxm_status mxm_cuda_permute(const mxm_cuda_args &a, int32_t *cursor, cudaStream_t s);

// Decode steps (T <= MXM_CUDA_PROLOGUE_MAX_T): activation quantization, routing (logits != NULL;
// else a.ids / a.wts are given) and the permutation in one launch.
#define MXM_CUDA_PROLOGUE_MAX_T 256
struct mxm_cuda_prologue_in {
    const void *x;
    int32_t x_dtype;
    const void *x_scale;
    int32_t x_scale_transposed;
    const void *logits; // [T, E] or NULL
    int32_t logits_dtype;
    const void *bias;
    int32_t bias_dtype;
    mxm_route_params rp;
    char *route_scratch; // [T, route_stride]
    int64_t route_stride;
    int32_t route_smem;  // set by mxm_cuda_prologue: the scratch lives in shared memory
    int64_t pf_bytes;    // L2 prefetch budget of the step (l2_prefetch.h; 0: none)
    // Set by mxm_cuda_prologue: the activation blocks after block 0, the prefetch blocks after
    // them, and where a prefetch block keeps the ids it routes itself (from logits).
    int32_t x_blocks, pf_blocks, pf_ids_offset;
};
mxm_status mxm_cuda_prologue(const mxm_cuda_args &a, const mxm_cuda_prologue_in &in, cudaStream_t s);
// Groups with 1..MXM_CUDA_SKINNY_MAX rows: GEMM1 + activation + requantization, then GEMM2.
mxm_status mxm_cuda_skinny1(const mxm_cuda_args &a, cudaStream_t s);
mxm_status mxm_cuda_skinny2(const mxm_cuda_args &a, cudaStream_t s);
// Groups with more rows: tensor-core tiles (bf16 mma with exact MXFP8 dequantization, or with
// the DeepSeek FP8 scales applied per 128-block of K).
mxm_status mxm_cuda_mma1(const mxm_cuda_args &a, int32_t max_tiles, cudaStream_t s);
mxm_status mxm_cuda_mma2(const mxm_cuda_args &a, int32_t max_tiles, cudaStream_t s);
// The same on Hopper wgmma (gemm_wgmma.cu; MXFP8 weights only, not a.blk): m-tiles of a.wg_bt
// rows (group[].tile0_wg, a.counts[2]), persistent grid.
mxm_status mxm_cuda_wgmma1(const mxm_cuda_args &a, cudaStream_t s);
mxm_status mxm_cuda_wgmma2(const mxm_cuda_args &a, cudaStream_t s);
// out[t] = sum_k w y + shared.
mxm_status mxm_cuda_combine(const mxm_cuda_args &a, void *out, void *out_routed, int32_t out_dtype,
                            cudaStream_t s);

#endif
