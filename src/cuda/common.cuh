// Shared by the CUDA sources: error checks that return an mxm_status, and device views of the
// plan. The scalar number formats and activations come from the same headers as the CPU code.
#ifndef MXM_CUDA_COMMON_CUH
#define MXM_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <utility>

extern "C" {
#include "core/core.h"
#include "moe/plan.h"
}
#include "formats/formats.h"
#include "moe/activation.h"
#include "moe/timeline.h"

#define MXM_CUDA_TRY(call)                                                                    \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess)                                                                \
            return mxm_fail(MXM_ERR_CUDA, "%s:%d: %s: %s", __FILE__, __LINE__, #call,         \
                            cudaGetErrorString(e_));                                          \
    } while (0)

#define MXM_CUDA_LAUNCHED() MXM_CUDA_TRY(cudaGetLastError())

// Programmatic dependent launch: every kernel of a forward is launched with programmatic stream
// serialization, so it is scheduled while its predecessor drains instead of after it. Each
// kernel calls mxm_griddep_wait() before it touches anything an earlier kernel writes or reads
// (the predecessor's completion and memory are then visible; that covers every kernel before
// it, since each waited on its own predecessor), then mxm_griddep_launch() to let its successor
// be scheduled. Both are no-ops in a plain launch. MXM_CUDA_PDL=0 turns the attribute off.
__device__ __forceinline__ void mxm_griddep_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void mxm_griddep_launch() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }

int mxm_cuda_pdl_enabled();

// Timeline probe (src/moe/timeline.h; a.probe is null unless MXM_CUDA_TIMELINE=1): a kernel
// opens with MXM_KERNEL_ENTRY(a, MXM_SITE_...), which records its blocks' start, waits on its
// predecessor, records the wait's return, and lets its successor launch; the scope's end records
// each warp's end. A kernel that waits later (the skinny GEMM2) opens with MXM_PROBE_SCOPE and
// marks the wait with mxm_probe_ready.
__device__ __forceinline__ unsigned long long mxm_globaltimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
    return t;
}
__device__ __forceinline__ void mxm_probe_ready(unsigned long long *probe, int site) {
    if (probe && threadIdx.x == 0) atomicMin(probe + 3 * site + 1, mxm_globaltimer());
}
struct mxm_probe_scope {
    unsigned long long *slot;
    __device__ mxm_probe_scope(unsigned long long *probe, int site)
        : slot(probe ? probe + 3 * site : nullptr) {
        if (slot && threadIdx.x == 0) atomicMin(slot, mxm_globaltimer());
    }
    __device__ ~mxm_probe_scope() {
        if (slot && (threadIdx.x & 31) == 0) atomicMax(slot + 2, mxm_globaltimer());
    }
};
#define MXM_PROBE_SCOPE(a, site) mxm_probe_scope mxm_probe_(a.probe, site)
// The tile kernels (and DeepSeek FP8's requantization) let their successor launch before they
// wait: they sit between a skinny kernel that waited for the prologue before it let them launch
// and the skinny GEMM2, which reads the prologue's group table before its own wait, so the
// successor can start prefetching weights while the skinny GEMM1 drains (an empty tile launch
// otherwise held GEMM2 back by about 3 us at T = 64: docs/BENCHMARKS.md, session 25).
#define MXM_KERNEL_ENTRY_LAUNCH_FIRST(a, site)                                                     \
    MXM_PROBE_SCOPE(a, site);                                                                      \
    mxm_griddep_launch();                                                                          \
    mxm_griddep_wait();                                                                            \
    mxm_probe_ready(a.probe, site)
#define MXM_KERNEL_ENTRY(a, site)                                                                  \
    MXM_PROBE_SCOPE(a, site);                                                                      \
    mxm_griddep_wait();                                                                            \
    mxm_probe_ready(a.probe, site);                                                                \
    mxm_griddep_launch()

// Raises the kernel's dynamic shared memory limit on the current device to at least bytes
// (a function attribute belongs to one device's context); remembers what each (kernel, device)
// was granted, so the attribute is set once per size. mxm_cuda_launch calls it past 48 KB.
mxm_status mxm_cuda_smem_limit(const void *kernel, size_t bytes);

// Device attributes the launches size themselves by (moe_cuda.cu; cached per device).
enum mxm_cuda_attr_id { MXM_ATTR_SMS, MXM_ATTR_L2_BYTES, MXM_ATTR_SMEM_PER_SM, MXM_ATTR_COUNT_ };
int mxm_cuda_attr(mxm_cuda_attr_id id);

template <typename... Params, typename... Args>
static mxm_status mxm_cuda_launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                                  Args &&...args) {
    if (smem > 48 * 1024) {
        const mxm_status st = mxm_cuda_smem_limit((const void *)kernel, smem);
        if (st) return st;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = s;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr, cfg.numAttrs = mxm_cuda_pdl_enabled() ? 1 : 0;
    MXM_CUDA_TRY(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
    return MXM_OK;
}

// Rows of one expert group per MMA tile, and the skinny-kernel threshold (rows per group): groups
// with up to MXM_CUDA_SKINNY_MAX rows stream their weights through gemm_skinny.cu (one block
// holds all of the group's tokens), larger ones take the 64-row tiles of gemm.cu.
#define MXM_CUDA_BM 64
#define MXM_CUDA_SKINNY_MAX 32
// GEMM1 covers 64 intermediate columns per tile (gate and up: 128 weight rows); GEMM2 128 rows of H.
#define MXM_CUDA_J_TILE 64
#define MXM_CUDA_H_TILE 128

// The weight formats the GEMM kernels take, one row each; a kernel's format template parameter
// WF is the mxm_weight_format value, and mxm_cuda_by_format is the one place where the layer's
// run-time format becomes it. A row gives the scale element and how a weight row finds its
// scales (scales(p) + (row / scale_rows) x scales per row).
template <int WF> struct mxm_cuda_fmt;
template <> struct mxm_cuda_fmt<MXM_WFMT_MXFP8> { // one E8M0 byte per 1x32 block of a row
    typedef uint8_t scale_t;
    static constexpr bool block128 = false;
    static constexpr int scale_rows = 1;
    __host__ __device__ static const scale_t *scales(const void *p) { return (const scale_t *)p; }
};
template <> struct mxm_cuda_fmt<MXM_WFMT_FP8_BLOCK> { // DeepSeek FP8: one f32 per 128x128 block
    typedef float scale_t;
    static constexpr bool block128 = true;
    static constexpr int scale_rows = 128;
    __host__ __device__ static const scale_t *scales(const void *p) { return (const scale_t *)p; }
};
// f(std::integral_constant<int, WF>()) for the layer's weight format (the CUDA backend takes
// MXFP8 and DeepSeek FP8 weights; the plan refuses the others).
template <typename F> inline auto mxm_cuda_by_format(int32_t wfmt, F &&f) {
    return wfmt == MXM_WFMT_FP8_BLOCK ? f(std::integral_constant<int, MXM_WFMT_FP8_BLOCK>())
                                      : f(std::integral_constant<int, MXM_WFMT_MXFP8>());
}

// GEMM1 kernels come gated and plain; routed and shared experts may differ in gating, so a layer
// runs f(std::true_type()) and/or f(std::false_type()) for the gatings it has (each kernel skips
// the groups of the other). Stops at the first error.
template <typename F>
inline mxm_status mxm_cuda_by_gating(bool gated_routed, int32_t gated_shared, F &&f) {
    mxm_status st = MXM_OK;
    if (gated_routed || gated_shared == 1) st = f(std::true_type());
    if (st == MXM_OK && (!gated_routed || gated_shared == 0)) st = f(std::false_type());
    return st;
}

// Per-group (local expert, then the shared expert) description on the device.
struct mxm_cuda_group {
    const uint8_t *w13, *w2;            // E4M3 codes
    const void *sc13, *sc2;             // their scales, in the layer's format (mxm_cuda_fmt)
    int64_t sc13_bytes, sc2_bytes;      // their sizes (mxm_weight_scale_bytes), for the L2 prefetch
    int32_t rows;                       // tokens routed to this group
    int32_t row0;                       // first permuted row
    int32_t tile0;                      // first MMA m-tile (prefix over groups with rows > SKINNY_MAX)
    int32_t tile0_wg;                   // first m-tile of gemm_wgmma.cu (a.wg_bt rows; same groups)
    int32_t I;                          // intermediate size of this group
    int32_t act;                        // activation
    float alpha, beta, limit;           // SWIGLUOAI
};

// The device views a forward needs, built from the plan and the workspace.
struct mxm_cuda_args {
    int32_t T, H, K, E, e_loc, off, groups; // groups = e_loc + (shared ? 1 : 0)
    int32_t wfmt, layout, act_quant, profile, rule, gated_routed, gated_shared; // gated_shared -1: none
    int32_t I_max;
    int32_t I_min;           // the narrowest group's I (routed or shared)
    int32_t sk_persist;      // gemm_skinny.cu's persistent variant (moe_cuda.cu)
    int32_t blk;             // DeepSeek FP8 weights (128x128 block scales, 1x128 activation scales)
    int32_t HB, IB;          // 128-blocks along H and along I_max
    mxm_cuda_group *group;   // [groups]
    int32_t *ids;            // [T, K]
    float *wts;              // [T, K]
    int32_t *pos;            // [T, K] permuted row or -1
    int32_t *row_token;      // [rows_total] token of each permuted row
    int32_t *counts;         // [3]: MMA tiles in use, skinny groups in use, wgmma m-tiles in use
    int32_t wg_bt;      // rows (tokens) per m-tile of gemm_wgmma.cu: 64, 128 or 256 (moe_cuda.cu)
    int32_t route_warp; // routing from logits: a warp per token (route_warp.cuh), else a thread
    unsigned long long *probe; // timeline slots (src/moe/timeline.h) or null
    int32_t *skinny_list;    // [groups] the groups with 1..SKINNY_MAX rows
    __nv_bfloat16 *xq;       // [T, H] the activations the GEMMs see (DeepSeek FP8 W8A8: the E4M3 codes' values)
    __nv_bfloat16 *act;      // [rows_total, I_max] intermediate (same rule)
    float *y;                // [rows_total, H]
    // DeepSeek FP8 W8A8 only: the 1x128 activation scales of xq and act, and the fp32
    // intermediate before its requantization (a 128-block spans several GEMM1 tiles).
    float *xs;               // [T, HB]
    float *acts;             // [rows_total, IB]
    float *actf;             // [rows_total, I_max]
    // MXFP8 W8A8 only (null otherwise): the activations as E4M3 codes and decoded block scales,
    // for the skinny kernels' f16 MMA on raw codes (mxm_cuda_codes).
    uint8_t *xc;        // [T, H]
    float *xsf;         // [T, xsf_stride]
    int32_t xsf_stride; // H / 32 rounded up to a multiple of 4 (whole 16-byte pieces)
};

// MXFP8 W8A8 runs the skinny kernels on raw E4M3 codes (exact in f16) with the block scales
// applied per 32-block of K. The prepare step writes x's codes and scales (a.xc, a.xsf) beside
// a.xq; the skinny GEMM1 writes a skinny group's intermediate row in place of its bf16 row of
// a.act: I_max codes, then I_max / 32 decoded scales (fp32), 1.125 of the row's 2 I_max bytes.
// Only the skinny GEMM2 reads those rows (the tile kernels take the other groups).
__host__ __device__ inline bool mxm_cuda_codes(const mxm_cuda_args &a) {
    return a.xc != nullptr;
}
__host__ __device__ inline uint8_t *mxm_cuda_act_codes(const mxm_cuda_args &a, int64_t row) {
    return reinterpret_cast<uint8_t *>(a.act + row * a.I_max);
}
__host__ __device__ inline float *mxm_cuda_act_scales(const mxm_cuda_args &a, int64_t row) {
    return reinterpret_cast<float *>(mxm_cuda_act_codes(a, row) + a.I_max);
}

// Row of W13 holding gate (half 0) or up (half 1) of intermediate column j (SPEC 4 layouts).
__device__ __forceinline__ int64_t mxm_cuda_w13_row(int layout, bool gated, int64_t I, int64_t j, int half) {
    if (!gated) return j;
    if (layout == MXM_W13_INTERLEAVED) return 2 * j + half;
    const int first = layout == MXM_W13_UP_GATE ? 1 : 0; // which half comes first
    return (half == first ? 0 : I) + j;
}

// A DeepSeek FP8 W8A8 path (scales applied per 128-block of K after the block's dot product).
__host__ __device__ inline bool mxm_cuda_blk_w8a8(const mxm_cuda_args &a) {
    return a.blk && a.act_quant == MXM_ACT_QUANT_MXFP8;
}

#endif
