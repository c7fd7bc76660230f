/* The MoE plan: a validated config, derived sizes, the backend (which keeps its kernels and its
 * workspace layout in backend_state) and the workspace size. Shared by the backend-independent
 * forward (src/moe) and the backends (src/cpu, src/cuda). */
#ifndef MXM_PLAN_H
#define MXM_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "mxmoe.h"
#include "route/route.h"

/* A weight format's traits (its quantization scheme): one row of the table in scheme.c. */
typedef struct mxm_scheme {
    int32_t weight_format; /* mxm_weight_format */
    const char *name;      /* "mxfp8", "fp8_block", "bf16", "f32" (mxm_weight_format_name) */
    int32_t code_bytes;    /* bytes per weight element */
    int32_t scale_rows;    /* weight scale block: rows x cols (0 = no scales) */
    int32_t scale_cols;
    int32_t scale_bytes; /* bytes per weight scale (1: E8M0, 4: f32) */
    int32_t act_block;   /* W8A8 activation quantization block along the row (32 or 128) */
    bool act_scale_e8m0; /* activation scales: E8M0 (MXFP8) or f32 (DeepSeek FP8) */
} mxm_scheme;

/* The row of weight_format, or NULL when it is not one. */
const mxm_scheme *mxm_scheme_get(int32_t weight_format);
/* "mxfp8 (0), fp8_block (1), ..." into buf (for messages); returns buf. */
const char *mxm_scheme_names(char *buf, size_t n);

/* Appends a region of n bytes, aligned to align, to a workspace of *cursor bytes and returns its
 * offset; -1 (and *cursor -1) on overflow or after an earlier one. Each backend lays out its own
 * workspace with it (src/cpu/moe_cpu.c, src/cuda/moe_cuda.cu). */
static inline int64_t mxm_ws_take(int64_t *cursor, int64_t n, int64_t align) {
    if (*cursor < 0 || n < 0) return *cursor = -1;
    const int64_t off = mxm_align_up(*cursor, align);
    if (!mxm_add_i64(off, n, cursor)) return *cursor = -1;
    return off;
}

struct mxm_moe_plan {
    mxm_moe_config cfg;
    int64_t max_tokens;
    int32_t e_loc;         /* local experts */
    int32_t m1;            /* rows of W13 */
    bool gated;
    int32_t shared_act;    /* activation of the shared expert */
    int32_t nthreads;
    mxm_route_params route;
    const mxm_scheme *scheme;
    const char *kernels_name;
    int64_t ws_bytes;    /* the workspace the backend laid out */
    void *backend_state; /* owned by the backend (its kernels, workspace layout), freed with the
                            plan */
    const struct mxm_backend_ops *backend; /* chosen from cfg.backend at plan creation */
};

/* One expert as every backend runs it, from the plan and the caller's weights: a local routed
 * expert e (0 <= e < e_loc) or the shared expert (e == e_loc). */
typedef struct mxm_expert_desc {
    /* [m1, H] in the plan's weight format: gated: gate and up rows (cfg.w13_layout), else I */
    const void *w13, *w13_scale;
    const void *w2, *w2_scale; /* [H, I] */
    int32_t I;                 /* intermediate size */
    int32_t act;               /* mxm_activation (the shared expert: shared_act) */
    bool gated;
    float alpha, beta, limit; /* SWIGLUOAI: the config's, or the expert's own gemm1_* entries */
} mxm_expert_desc;

mxm_expert_desc mxm_expert_describe(const mxm_moe_plan *p, const mxm_moe_weights *w, int32_t e);

/* The backend boundary: one table per backend (src/cpu/moe_cpu.c, src/cuda/moe_cuda.cu, or
 * src/moe/cuda_stub.c when CUDA is not built), chosen once in mxm_moe_plan_create. */
typedef struct mxm_backend_ops {
    const char *name;
    /* Picks kernels and sizes, lays out its workspace (ws_bytes), may set backend_state. */
    mxm_status (*plan)(mxm_moe_plan *plan);
    /* Inputs were validated by mxm_moe_forward; stream: the caller's (the CPU ignores it). */
    mxm_status (*forward)(const mxm_moe_plan *plan, const mxm_moe_weights *w,
                          const mxm_moe_inputs *in, const mxm_moe_outputs *out, void *ws,
                          void *stream);
    /* Frees what plan acquired besides backend_state (freed with the plan); may be NULL. */
    void (*destroy)(mxm_moe_plan *plan);
} mxm_backend_ops;

extern const mxm_backend_ops mxm_cpu_backend;
extern const mxm_backend_ops mxm_cuda_backend;

#endif
