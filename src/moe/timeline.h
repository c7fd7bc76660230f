/* Diagnostics of the CUDA backend for the benchmark. Timeline probe (MXM_CUDA_TIMELINE=1, read
 * at every forward):
 * per kernel site, the earliest block start, the earliest return from the programmatic
 * dependent-launch wait, and the latest warp end of the forwards since the last reset, from
 * the GPU's %globaltimer (ns). Kernels of one site share its slots (GEMM1's gated and plain
 * launches, for one). The benchmark prints it beside the layer time (tools/moebench.c). */
#ifndef MXM_MOE_TIMELINE_H
#define MXM_MOE_TIMELINE_H

#include <stdint.h>

#include "mxmoe.h"

/* X(ID, name): the kernel sites, in launch order. */
#define MXM_TIMELINE_SITES(X)                                                                       \
    X(PROLOGUE, "prologue")                                                                          \
    X(PREPARE_X, "prepare_x")                                                                        \
    X(COUNT, "count")                                                                                \
    X(OFFSETS, "offsets")                                                                            \
    X(SCATTER, "scatter")                                                                            \
    X(SKINNY1, "skinny1")                                                                            \
    X(MMA1, "mma1")                                                                                  \
    X(WGMMA1, "wgmma1")                                                                              \
    X(REQUANT, "requant")                                                                            \
    X(SKINNY2, "skinny2")                                                                            \
    X(MMA2, "mma2")                                                                                  \
    X(WGMMA2, "wgmma2")                                                                              \
    X(COMBINE, "combine")

#define MXM_TIMELINE_ENUM_(id, name) MXM_SITE_##id,
enum { MXM_TIMELINE_SITES(MXM_TIMELINE_ENUM_) MXM_SITES };
#undef MXM_TIMELINE_ENUM_

#ifdef __cplusplus
extern "C" {
#endif
/* Site names (MXM_SITES entries). */
extern const char *const mxm_timeline_site_names[MXM_SITES];
/* Zeroes the probe's slots (allocating them on first use); MXM_ERR_NO_DEVICE without CUDA. */
mxm_status mxm_cuda_timeline_reset(void);
/* Copies the slots out: t[3 s + 0..2] = start, ready, end of site s in ns, 0 where the site did
 * not run. */
mxm_status mxm_cuda_timeline_read(uint64_t t[3 * MXM_SITES]);

typedef struct mxm_cuda_graph mxm_cuda_graph;
/* The median GPU time of one replay, as the peers' harness measures it
 * (../shared/peers/vllm_triton: torch.cuda.Event around each replay): each graph replayed once,
 * a spin kernel long enough for the host to enqueue all `iters` replays of graphs[i % n], each
 * between two events on the graphs' stream; the median of the event intervals in us. */
mxm_status mxm_cuda_graph_median_us(mxm_cuda_graph *const *graphs, int n, int iters, double *us);
#ifdef __cplusplus
}
#endif

#endif
