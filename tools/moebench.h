/* Synthetic MoE layers with real models' shapes, and the layer benchmark. Used by the CLI
 * (`mxmoe demo`, `mxmoe bench`) and by bench/bench_moe. Sees only the public API. */
#ifndef MXM_MOEBENCH_H
#define MXM_MOEBENCH_H

#include <stdint.h>
#include <stdio.h>

#include "mxmoe.h"

typedef struct mb_shape {
    const char *name;
    const char *model;
    int32_t H, I, E, E_loc, K, act, method, n_group, topk_group, shared_I;
} mb_shape;

/* "nano" (Nemotron-3-Nano), "qwen3" (Qwen3-30B-A3B), "dsv3" (a DeepSeek-V3 EP slice). */
const mb_shape *mb_shape_find(const char *name);
extern const mb_shape mb_shapes[3];

/* A layer of deterministic pseudo-random MXFP8 or DeepSeek FP8 weights (all experts contiguous). */
typedef struct mb_layer {
    mb_shape shape;
    mxm_moe_config cfg;
    uint8_t *w13, *s13, *w2, *s2;       /* [E_loc (+1 shared), ...] */
    int64_t bytes[4];                   /* sizes of w13, s13, w2, s2 */
    mxm_expert_weights *experts;        /* [E_loc + 1]; the last is the shared expert */
    int64_t expert_bytes, shared_bytes; /* weight + scale bytes of one routed / the shared expert */
    void *dev[4];                       /* device copies of w13, s13, w2, s2 (CUDA backend) */
} mb_layer;

/* weight_format: MXM_WFMT_MXFP8 or MXM_WFMT_FP8_BLOCK. */
int mb_layer_create(const mb_shape *s, int32_t weight_format, uint64_t seed, int32_t threads, mb_layer *L);
/* Copies the weights to the CUDA device and points the experts there (cfg.backend = CUDA). */
int mb_layer_to_device(mb_layer *L);
void mb_layer_destroy(mb_layer *L);
mxm_moe_weights mb_layer_weights(const mb_layer *L);

typedef enum { MB_UNIFORM = 0, MB_SKEWED = 1 } mb_routing;

/* Random inputs for T tokens: x bf16 [T, H], logits f32 [T, E], bias f32 [E]. */
typedef struct mb_inputs {
    int64_t T;
    uint16_t *x;
    float *logits, *bias;
    int32_t *ids; /* [T, K] the routing of logits, computed once on the host */
    float *w;     /* [T, K] */
    int use_ids;  /* run from ids/w (as the PyTorch peers do) instead of logits */
} mb_inputs;
/* Returns an mxm_status (MXM_ERR_NOMEM; in is then empty but safe to destroy). */
int mb_inputs_create(const mb_layer *L, int64_t T, mb_routing r, uint64_t seed, mb_inputs *in);
void mb_inputs_destroy(mb_inputs *in);

typedef struct mb_result {
    double us;           /* median time of one forward */
    double tokens_per_s;
    double weight_gb;    /* weight + scale bytes of the experts touched, GB */
    double gbs;          /* weight_gb / time */
    double gflop, gflops;
    int32_t experts_touched;
} mb_result;

/* Times reps forwards (after one warm-up) of L on `in`; cfg overrides (threads, kernels, ...)
 * come from L->cfg. Returns an mxm_status. */
int mb_run(const mb_layer *L, const mb_inputs *in, int reps, mb_result *res, uint16_t *out_bf16);

/* Read roof (GB/s) and fp32 FMA roof (GFLOP/s: the widest vector FMA this CPU has, AVX2 or
 * AVX-512) of this machine with `threads` threads. */
double mb_read_roof(int threads);
double mb_fma_roof(int threads);

/* The benchmark table of `mxmoe bench` / bench_moe: shapes x T x routing, with roofs measured
 * in the same run; JSON to json_path when not NULL. */
typedef struct mb_options {
    const char *shapes;  /* comma list, e.g. "nano,qwen3,dsv3" */
    const char *tokens;  /* comma list, e.g. "1,4,16,64,256,1024,4096" */
    const char *routing; /* "uniform", "skewed" or "both" */
    int32_t threads, reps, kernels, backend;
    const char *json_path;
    int32_t use_ids; /* time the layer from precomputed top-k ids/weights */
    int32_t weight_format; /* MXM_WFMT_MXFP8 (default) or MXM_WFMT_FP8_BLOCK */
    int32_t act_quant;     /* MXM_ACT_QUANT_MXFP8 (default, W8A8) or MXM_ACT_QUANT_NONE */
    int32_t profile;       /* MXM_PROFILE_TRTLLM (default) or MXM_PROFILE_EXACT */
    int32_t no_shared; /* leave out the shape's shared expert (the peers time the routed experts) */
} mb_options;
/* Every field of mb_options takes effect; the table's "mode:" line and the JSON say what ran,
 * read back from the layer's config. Malformed lists (shapes, tokens) are errors. */
int mb_bench(const mb_options *o, FILE *table);

#endif
