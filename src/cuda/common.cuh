// Shared by the CUDA sources: error checks that return an mxm_status, and device views of the
// plan. The scalar number formats and activations come from the same headers as the CPU code.
#ifndef MXM_CUDA_COMMON_CUH
#define MXM_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "core/core.h"
#include "moe/plan.h"
}
#include "formats/formats.h"
#include "moe/activation.h"

#define MXM_CUDA_TRY(call)                                                                    \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess)                                                                \
            return mxm_fail(MXM_ERR_CUDA, "%s:%d: %s: %s", __FILE__, __LINE__, #call,         \
                            cudaGetErrorString(e_));                                          \
    } while (0)

#define MXM_CUDA_LAUNCHED() MXM_CUDA_TRY(cudaGetLastError())

// Rows of one expert group per MMA tile, and the GEMV threshold (rows per group). The GEMV
// reads each weight once but does n FMAs per weight per row: past 2 rows the tensor-core tiles
// win (H200: 8 rows took 2x the time of 16 rows in tiles).
#define MXM_CUDA_BM 64
#define MXM_CUDA_GEMV_MAX 2
// GEMM1 covers 64 intermediate columns per tile (gate and up: 128 weight rows); GEMM2 128 rows of H.
#define MXM_CUDA_J_TILE 64
#define MXM_CUDA_H_TILE 128

// Per-group (local expert, then the shared expert) description on the device.
struct mxm_cuda_group {
    const uint8_t *w13, *s13, *w2, *s2; // MXFP8 codes and scales (bf16 weights: w only)
    int32_t rows;                       // tokens routed to this group
    int32_t row0;                       // first permuted row
    int32_t tile0;                      // first MMA m-tile (prefix over groups with rows > GEMV_MAX)
    int32_t I;                          // intermediate size of this group
    int32_t act;                        // activation
    float alpha, beta, limit;           // SWIGLUOAI
};

// The device views a forward needs, built from the plan and the workspace.
struct mxm_cuda_args {
    int32_t T, H, K, E, e_loc, off, groups; // groups = e_loc + (shared ? 1 : 0)
    int32_t wfmt, layout, act_quant, profile, rule, gated_routed, gated_shared; // gated_shared -1: none
    int32_t I_max;
    mxm_cuda_group *group;   // [groups]
    int32_t *ids;            // [T, K]
    float *wts;              // [T, K]
    int32_t *pos;            // [T, K] permuted row or -1
    int32_t *row_token;      // [rows_total] token of each permuted row
    int32_t *counts;         // [2]: MMA tiles in use, GEMV groups in use
    int32_t *gemv_list;      // [groups] the groups with 1..GEMV_MAX rows
    __nv_bfloat16 *xq;       // [T, H] the activations the GEMMs see
    __nv_bfloat16 *act;      // [rows_total, I_max] intermediate
    float *y;                // [rows_total, H]
};

#endif
