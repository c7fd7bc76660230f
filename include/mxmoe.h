/*
 * mxmoe.h - the public API of mxmoe, an MXFP8 mixture-of-experts layer executor.
 *
 * OVERVIEW
 *
 * mxmoe runs the routed-expert block of an MoE transformer layer (router, top-k selection,
 * per-expert GEMM1 -> activation -> GEMM2, weighted combine, optional shared expert) on weights
 * stored as MXFP8 (FP8 E4M3 codes with one power-of-two E8M0 scale per 32 weights, the layout
 * NVIDIA ModelOpt exports), DeepSeek FP8 (E4M3 with one fp32 scale per 128x128 block), or plain
 * bf16/fp32 (a reference mode). It computes what FlashInfer's trtllm_fp8_block_scale_moe computes
 * on Blackwell GPUs, on any x86-64 CPU and (when built with CUDA) on Hopper GPUs.
 *
 * The numbers are defined bit by bit in the project SPEC (docs/spec.md in this repository; number
 * formats in detail: docs/formats.md):
 * E4M3 encoding is round-to-nearest-even, saturating to +-448; the MXFP8 scale rule defaults to
 * RCEIL (NVIDIA's rule), FLOOR (OCP MX v1.0) is selectable.
 *
 * USAGE (see README.md for a complete example)
 *
 *   mxm_moe_config cfg;  mxm_moe_config_default(&cfg);
 *   cfg.hidden_size = 2688; cfg.intermediate_size = 1856; cfg.num_experts = 128; cfg.top_k = 6;
 *   cfg.activation = MXM_ACT_RELU2_NO_MUL; ...
 *   mxm_moe_plan *plan;  mxm_moe_plan_create(&cfg, max_tokens, &plan);
 *   int64_t ws = mxm_moe_plan_workspace_size(plan);   // bytes, caller allocates once
 *   mxm_moe_forward(plan, &weights, &inputs, &outputs, workspace, ws, NULL);  // many times
 *   mxm_moe_plan_destroy(plan);
 *
 * CONVENTIONS
 *
 * - Every function that can fail returns an mxm_status (0 = MXM_OK, failures are negative and
 *   stable). mxm_last_error() then holds a message that says what was wrong and where.
 * - Memory is owned by the caller. The library never allocates during a forward; it never prints
 *   (logging goes through mxm_set_log_callback).
 * - Tensors are row-major and contiguous unless a stride is given. Shapes are written on every
 *   pointer: T tokens, H hidden size, I expert intermediate size, E global experts, E_loc local
 *   experts, K top_k, M1 = 2I for gated activations and I for non-gated ones.
 * - Enum-typed fields are int32_t so that ctypes and other FFIs can fill the structs directly.
 */
#ifndef MXMOE_H
#define MXMOE_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define MXM_API __declspec(dllexport)
#else
#define MXM_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define MXM_VERSION_MAJOR 0
#define MXM_VERSION_MINOR 1
#define MXM_VERSION_PATCH 0

/* "0.1.0" */
MXM_API const char *mxm_version(void);

/* ------------------------------------------------------------------------------------------ */
/* Status codes. One list generates the enum and the message table, so they cannot drift.     */

#define MXM_STATUS_LIST(X)                                                                     \
    X(MXM_OK, 0, "success")                                                                    \
    X(MXM_ERR_INVALID_ARG, -1, "invalid argument")                                             \
    X(MXM_ERR_NULL, -2, "required pointer is NULL")                                            \
    X(MXM_ERR_SHAPE, -3, "invalid or mismatched shape")                                        \
    X(MXM_ERR_DTYPE, -4, "unsupported data type")                                              \
    X(MXM_ERR_UNSUPPORTED, -5, "unsupported combination of options")                           \
    X(MXM_ERR_OVERFLOW, -6, "size overflows 64-bit arithmetic")                                \
    X(MXM_ERR_NOMEM, -7, "out of memory")                                                      \
    X(MXM_ERR_IO, -8, "I/O error")                                                             \
    X(MXM_ERR_FORMAT, -9, "malformed file")                                                    \
    X(MXM_ERR_NOT_FOUND, -10, "not found")                                                     \
    X(MXM_ERR_WORKSPACE, -11, "workspace too small")                                           \
    X(MXM_ERR_NO_DEVICE, -12, "no CUDA device or CUDA backend not built")                      \
    X(MXM_ERR_CUDA, -13, "CUDA runtime error")                                                 \
    X(MXM_ERR_INTERNAL, -14, "internal error")

typedef enum mxm_status {
#define MXM_STATUS_ENUM_(name, value, msg) name = value,
    MXM_STATUS_LIST(MXM_STATUS_ENUM_)
#undef MXM_STATUS_ENUM_
} mxm_status;

/* Static text of a status ("invalid argument"); "unknown status" for other values. */
MXM_API const char *mxm_status_str(int32_t status);

/* Detailed message of the last failure on the calling thread ("" if none yet). The pointer
 * stays valid until the next failing call on that thread. */
MXM_API const char *mxm_last_error(void);

/* ------------------------------------------------------------------------------------------ */
/* Logging. The library never writes to stdout/stderr; it calls this callback (NULL = silent). */

enum { MXM_LOG_ERROR = 0, MXM_LOG_WARN = 1, MXM_LOG_INFO = 2, MXM_LOG_DEBUG = 3 };
typedef void (*mxm_log_fn)(int32_t level, const char *message, void *user);
MXM_API void mxm_set_log_callback(mxm_log_fn fn, void *user, int32_t max_level);

/* ------------------------------------------------------------------------------------------ */
/* Data types                                                                                 */

typedef enum mxm_dtype {
    MXM_DT_F32 = 0,
    MXM_DT_BF16 = 1,
    MXM_DT_F16 = 2,
    MXM_DT_F64 = 3,
    MXM_DT_E4M3 = 4, /* OCP FP8 E4M3 "fn": max 448, no inf, 0x7F/0xFF NaN */
    MXM_DT_E5M2 = 5, /* OCP FP8 E5M2: IEEE-like, max 57344, has inf */
    MXM_DT_E8M0 = 6, /* power-of-two scale 2^(b-127), 0xFF NaN */
    MXM_DT_U8 = 7,
    MXM_DT_I8 = 8,
    MXM_DT_I32 = 9,
    MXM_DT_I64 = 10,
    MXM_DT_COUNT_ = 11
} mxm_dtype;

/* Bytes per element (0 for unknown values). */
MXM_API int32_t mxm_dtype_size(int32_t dtype);
/* Safetensors-style name ("F32", "BF16", "F8_E4M3", ...) or "?" for unknown values. */
MXM_API const char *mxm_dtype_name(int32_t dtype);

/* ------------------------------------------------------------------------------------------ */
/* Scalar number formats (SPEC section 2). Exact; usable as test oracles.                     */

/* fp32 -> E4M3: round to nearest even, saturating to +-448; NaN -> 0x7F (0xFF if negative);
 * +-Inf saturate to +-448 (cvt.rn.satfinite semantics). */
MXM_API uint8_t mxm_e4m3_from_f32(float x);
MXM_API float mxm_e4m3_to_f32(uint8_t code); /* 0x7F/0xFF -> NaN */
/* fp32 -> E5M2: round to nearest even, saturating to +-57344 (Inf -> max finite); NaN -> 0x7F|sign. */
MXM_API uint8_t mxm_e5m2_from_f32(float x);
MXM_API float mxm_e5m2_to_f32(uint8_t code);
MXM_API float mxm_e8m0_to_f32(uint8_t code); /* 2^(b-127); 0xFF -> NaN; 0 -> 2^-127 */
MXM_API uint16_t mxm_bf16_from_f32(float x); /* RNE; NaN stays NaN (quiet) */
MXM_API float mxm_bf16_to_f32(uint16_t bits);

/* ------------------------------------------------------------------------------------------ */
/* MXFP8 quantizer (SPEC section 2.2) and DeepSeek FP8 block scale (section 2.3)              */

typedef enum mxm_scale_rule {
    MXM_SCALE_RCEIL = 0, /* NVIDIA (cuBLAS/TE/TRT-LLM/FlashInfer/ModelOpt): ceil(log2(amax/448)) */
    MXM_SCALE_FLOOR = 1  /* OCP MX v1.0: floor(log2(amax)) - 8 */
} mxm_scale_rule;

/* E8M0 scale byte of a 32-block whose largest magnitude is amax (finite, >= 0). amax == 0
 * gives 0. Special values: NaN or Inf amax gives 0xFF. */
MXM_API uint8_t mxm_mxfp8_scale_for_amax(float amax, int32_t rule);

/* Quantize x [rows, cols] (f32 or bf16, row stride x_stride elements; 0 means cols) to MXFP8:
 * q [rows, cols] E4M3 codes and scales [rows, cols/32] E8M0. cols % 32 == 0 is required.
 * Blocks whose scale byte is 0 are flushed to +-0 (FlashInfer). A block holding NaN or +-Inf
 * gets scale 0xFF and all 32 codes 0x7F (visibly poisoned). -0 keeps its sign.
 * num_threads: 0 = all available. */
MXM_API mxm_status mxm_mxfp8_quantize(const void *x, int32_t x_dtype, int64_t rows, int64_t cols,
                                      int64_t x_stride, uint8_t *q, uint8_t *scales, int32_t rule,
                                      int32_t num_threads);

/* Decode MXFP8 q [rows, cols] + scales [rows, cols/32] into out [rows, cols] (f32 or bf16). */
MXM_API mxm_status mxm_mxfp8_dequantize(const uint8_t *q, const uint8_t *scales, int64_t rows,
                                        int64_t cols, void *out, int32_t out_dtype,
                                        int32_t num_threads);

/* DeepSeek FP8 activation quantizer: per row, per 128 columns (the last block may be shorter),
 * s = max(amax / 448, FLT_MIN), q = e4m3(x / s). scales are f32 [rows, ceil(cols/128)], or
 * [ceil(cols/128), rows] when scales_transposed != 0 (FlashInfer's layout). */
MXM_API mxm_status mxm_fp8block_quantize_act(const void *x, int32_t x_dtype, int64_t rows,
                                             int64_t cols, uint8_t *q, float *scales,
                                             int32_t scales_transposed, int32_t num_threads);

/* DeepSeek FP8 weight quantizer: one f32 scale per 128x128 block (edge blocks may be smaller),
 * s = max(amax / 448, FLT_MIN), q = e4m3(w / s); scales [ceil(rows/128), ceil(cols/128)]. */
MXM_API mxm_status mxm_fp8block_quantize_weight(const void *w, int32_t w_dtype, int64_t rows,
                                                int64_t cols, uint8_t *q, float *scales,
                                                int32_t num_threads);

/* Decode DeepSeek FP8 q [rows, cols] with block_rows x 128 blocks (block_rows 1: activations,
 * 128: weights) into out (f32 or bf16): out = e4m3_to_f32(q) * s. scales_transposed as above
 * (only for block_rows == 1). */
MXM_API mxm_status mxm_fp8block_dequantize(const uint8_t *q, const float *scales, int64_t rows,
                                           int64_t cols, int32_t block_rows,
                                           int32_t scales_transposed, void *out,
                                           int32_t out_dtype, int32_t num_threads);

/* ------------------------------------------------------------------------------------------ */
/* MoE layer                                                                                  */

/* FlashInfer's RoutingMethodType numbers (SPEC section 3). */
typedef enum mxm_routing_method {
    MXM_ROUTE_DEFAULT = 0,           /* softmax over E, top-k of the probabilities */
    MXM_ROUTE_RENORMALIZE = 1,       /* top-k of logits, softmax over the k */
    MXM_ROUTE_DEEPSEEK_V3 = 2,       /* sigmoid + bias, grouped top-k, renormalized, scaled */
    MXM_ROUTE_LLAMA4 = 3,            /* top-1 of logits, weight sigmoid(z) */
    MXM_ROUTE_RENORMALIZE_NAIVE = 4, /* softmax, top-k, renormalized */
    MXM_ROUTE_TOPK = 5,              /* top-k of logits, weight = logit */
    MXM_ROUTE_SIGMOID_RENORM = 6,    /* sigmoid, top-k, renormalized if norm_topk_prob */
    MXM_ROUTE_MINIMAX2 = 7,          /* sigmoid + bias, top-k, renormalized, scaled */
    MXM_ROUTE_SIGMOID = 8,           /* sigmoid, top-k */
    MXM_ROUTE_TOPK_SIGMOID = 9,      /* top-k of logits, weight sigmoid(z) */
    MXM_ROUTE_COUNT_ = 10
} mxm_routing_method;

/* vLLM's MoEActivation names (SPEC section 4). */
typedef enum mxm_activation {
    MXM_ACT_SILU = 0,         /* gated: silu(gate) * up */
    MXM_ACT_GELU = 1,         /* gated: gelu_erf(gate) * up */
    MXM_ACT_GELU_TANH = 2,    /* gated: gelu_tanh(gate) * up */
    MXM_ACT_SWIGLUOAI = 3,    /* gated: (clamp(up,-L,L) + beta) * g * sigmoid(alpha g), g = min(gate, L) */
    MXM_ACT_SILU_NO_MUL = 4,  /* silu(h) */
    MXM_ACT_GELU_NO_MUL = 5,  /* gelu_erf(h) */
    MXM_ACT_RELU2_NO_MUL = 6, /* max(h, 0)^2 (Nemotron) */
    MXM_ACT_IDENTITY = 7,     /* h */
    MXM_ACT_COUNT_ = 8
} mxm_activation;

/* Row order of W13 for gated activations. */
typedef enum mxm_w13_layout {
    MXM_W13_GATE_UP = 0,    /* [gate ; up]: checkpoints, vLLM (default) */
    MXM_W13_UP_GATE = 1,    /* [up ; gate]: FlashInfer's kernel layout */
    MXM_W13_INTERLEAVED = 2 /* gate = row 2i, up = row 2i+1 (gpt-oss) */
} mxm_w13_layout;

typedef enum mxm_weight_format {
    MXM_WFMT_MXFP8 = 0,    /* E4M3 codes + E8M0 scale per 1x32 (along the contraction) */
    MXM_WFMT_FP8_BLOCK = 1, /* E4M3 codes + f32 scale per 128x128 block (DeepSeek FP8) */
    MXM_WFMT_BF16 = 2,     /* plain bf16 (reference mode) */
    MXM_WFMT_F32 = 3,      /* plain f32 (reference mode) */
    MXM_WFMT_COUNT_ = 4
} mxm_weight_format;

typedef enum mxm_act_quant {
    /* W8A8: activations (the input x and the intermediate between the GEMMs) are quantized
     * dynamically with the weight format's FP8 activation rule: MXFP8 1x32 E8M0 blocks for
     * MXFP8, bf16 and f32 weights; 1x128 f32 scales for DeepSeek FP8 weights. */
    MXM_ACT_QUANT_MXFP8 = 0,
    /* Weight-only (W8A16): activations stay bf16/fp32 (vLLM's Marlin path on Hopper). */
    MXM_ACT_QUANT_NONE = 1
} mxm_act_quant;

typedef enum mxm_profile {
    /* Rounding points of the TRT-LLM/FlashInfer kernel: routing weights rounded to bf16,
     * grouped-DeepSeek bias rounded to bf16, the activation output rounded to bf16 before
     * requantization, each expert's GEMM2 output rounded to bf16. (default) */
    MXM_PROFILE_TRTLLM = 0,
    MXM_PROFILE_EXACT = 1 /* fp32 everywhere until the output */
} mxm_profile;

typedef enum mxm_backend { MXM_BACKEND_CPU = 0, MXM_BACKEND_CUDA = 1 } mxm_backend;

typedef enum mxm_kernels {
    MXM_KERNELS_AUTO = 0, /* fastest for this machine (environment MXM_KERNELS=ref overrides) */
    MXM_KERNELS_REF = 1   /* scalar reference kernels only */
} mxm_kernels;

typedef struct mxm_moe_config {
    int32_t hidden_size;       /* H, a multiple of 32 */
    int32_t intermediate_size; /* I, a multiple of 32 */
    int32_t num_experts;       /* E, global routed experts (router width) */
    int32_t top_k;             /* K, 1..E */
    int32_t n_group;           /* DeepSeekV3 groups; 0 or 1 = no grouping */
    int32_t topk_group;        /* groups kept; 0 or 1 with n_group <= 1 */
    int32_t routing_method;    /* mxm_routing_method */
    float routed_scaling_factor; /* S (DeepSeekV3, MiniMax2), default 1; finite and > 0 */
    int32_t norm_topk_prob;    /* SigmoidRenorm: renormalize the k weights (default 1) */
    int32_t local_expert_offset; /* first global expert held by this rank (default 0) */
    int32_t local_num_experts; /* E_loc; 0 = all E (default 0) */
    int32_t activation;        /* mxm_activation */
    int32_t w13_layout;        /* mxm_w13_layout (gated activations only) */
    int32_t weight_format;     /* mxm_weight_format */
    int32_t act_quant;         /* mxm_act_quant */
    int32_t profile;           /* mxm_profile */
    int32_t scale_rule;        /* mxm_scale_rule for dynamic MXFP8 activation quantization */
    int32_t shared_intermediate_size; /* shared expert I_s (multiple of 32); 0 = none */
    int32_t shared_activation; /* activation of the shared expert; -1 = same as routed */
    float swiglu_alpha;        /* SWIGLUOAI alpha (default 1.702) */
    float swiglu_beta;         /* SWIGLUOAI beta (default 1) */
    float swiglu_limit;        /* SWIGLUOAI clamp limit L (default 7) */
    int32_t backend;           /* mxm_backend */
    int32_t device;            /* CUDA device ordinal (CUDA backend) */
    int32_t num_threads;       /* CPU threads; 0 = all available */
    int32_t kernels;           /* mxm_kernels */
} mxm_moe_config;

/* Fills defaults: routing RENORMALIZE, S 1, norm_topk_prob 1, activation SILU, GATE_UP, MXFP8
 * weights, MXFP8 act quant, TRTLLM profile, RCEIL, no shared expert, CPU, all threads. The
 * shape fields (H, I, E, K) are set to 0 and must be filled in. NULL: does nothing. */
MXM_API void mxm_moe_config_default(mxm_moe_config *cfg);

/* Checks a config; returns MXM_OK or the first problem found (see mxm_last_error()). */
MXM_API mxm_status mxm_moe_config_validate(const mxm_moe_config *cfg);

/* One expert's weights. Codes/values are row-major [out, in] (PyTorch Linear layout).
 *   MXFP8:     w13 uint8 E4M3 [M1, H], w13_scale uint8 E8M0 [M1, H/32];
 *              w2  uint8 E4M3 [H, I],  w2_scale  uint8 E8M0 [H, I/32]
 *   FP8_BLOCK: w13 uint8 E4M3 [M1, H], w13_scale float [ceil(M1/128), ceil(H/128)];
 *              w2  uint8 E4M3 [H, I],  w2_scale  float [ceil(H/128), ceil(I/128)]
 *   BF16/F32:  w13 [M1, H] and w2 [H, I] values; scales NULL.
 * For a shared expert, I is shared_intermediate_size. Pointers are host memory for the CPU
 * backend and device memory for the CUDA backend. */
typedef struct mxm_expert_weights {
    const void *w13;
    const void *w13_scale;
    const void *w2;
    const void *w2_scale;
} mxm_expert_weights;

typedef struct mxm_moe_weights {
    const mxm_expert_weights *experts; /* [E_loc] local experts, in global order from offset */
    const mxm_expert_weights *shared;  /* one shared expert, or NULL */
    /* Optional per-local-expert SWIGLUOAI parameters (FlashInfer gemm1_alpha/beta/clamp_limit),
     * each [E_loc] f32 host memory or NULL (then the config's values are used). Checked by
     * mxm_moe_forward: limits > 0 (NaN rejected), alpha and beta finite. */
    const float *gemm1_alpha;
    const float *gemm1_beta;
    const float *gemm1_clamp_limit;
} mxm_moe_weights;

/* Alignment: on the CPU backend x, router_logits and routing_bias may be at any address (they are
 * read with byte copies); the other arrays need their element's alignment. On CUDA, pointers
 * from cudaMalloc (or mxm_device_alloc). */
typedef struct mxm_moe_inputs {
    int64_t num_tokens;   /* T, 0..max_tokens of the plan */
    const void *x;        /* [T, H]: f32, bf16, or E4M3 codes (pre-quantized, with x_scale) */
    int32_t x_dtype;      /* MXM_DT_F32, MXM_DT_BF16 or MXM_DT_E4M3 */
    /* Pre-quantized x only: MXFP8 weights: uint8 E8M0 [T, H/32]; FP8_BLOCK weights: f32
     * [T, ceil(H/128)] or [ceil(H/128), T] when x_scale_transposed != 0. With act_quant
     * MXM_ACT_QUANT_NONE (weight-only) the codes are dequantized (code value x scale) and run as
     * unquantized activations. */
    const void *x_scale;
    int32_t x_scale_transposed;
    const void *router_logits; /* [T, E] f32 or bf16; NULL = use topk_ids/topk_weights */
    int32_t logits_dtype;
    const void *routing_bias;  /* [E] f32 or bf16, or NULL (DeepSeekV3, MiniMax2) */
    int32_t bias_dtype;
    /* [T, K] global expert ids (only when router_logits == NULL). On the CPU backend each row
     * is checked: ids in 0..E-1 and no expert twice (MXM_ERR_INVALID_ARG). */
    const int32_t *topk_ids;
    const float *topk_weights; /* [T, K] combine weights (only when router_logits == NULL) */
} mxm_moe_inputs;

typedef struct mxm_moe_outputs {
    void *out;              /* [T, H] f32 or bf16: routed + shared experts (required) */
    int32_t out_dtype;
    void *out_routed;       /* [T, H] in out_dtype, routed experts only, or NULL */
    int32_t *topk_ids;      /* [T, K] selected global experts, or NULL */
    float *topk_weights;    /* [T, K] their final combine weights, or NULL */
} mxm_moe_outputs;

typedef struct mxm_moe_plan mxm_moe_plan;

/* Validates cfg and plans a layer for up to max_tokens tokens per forward. Kernels are chosen
 * here (once). On failure *plan is NULL. */
MXM_API mxm_status mxm_moe_plan_create(const mxm_moe_config *cfg, int64_t max_tokens,
                                       mxm_moe_plan **plan);
MXM_API void mxm_moe_plan_destroy(mxm_moe_plan *plan);

/* Bytes of workspace a forward needs (host memory for CPU, device memory for CUDA), for up to
 * max_tokens tokens. Negative mxm_status on overflow. */
MXM_API int64_t mxm_moe_plan_workspace_size(const mxm_moe_plan *plan);

/* Name of the kernel set the plan picked ("ref", "avx2", "avx512", "cuda-sm90"). */
MXM_API const char *mxm_moe_plan_kernels(const mxm_moe_plan *plan);

/* Runs the layer (SPEC section 5). workspace must hold mxm_moe_plan_workspace_size() bytes,
 * 64-byte aligned. stream: a cudaStream_t for the CUDA backend (NULL = default stream), ignored
 * on the CPU. Tokens routed to no local expert get zeros (expert parallelism: the output is this
 * rank's partial sum). NaN/Inf inputs propagate as NaN; they never crash. CUDA backend: every
 * pointer is device memory, and out / out_routed must be 16-byte aligned (MXM_ERR_INVALID_ARG
 * otherwise). One forward of a plan at a time: the plan holds per-forward state (the CUDA
 * backend's group table, side stream and events), so forwards that may overlap (other threads,
 * other streams, concurrent graph captures) each need their own plan and workspace. */
MXM_API mxm_status mxm_moe_forward(mxm_moe_plan *plan, const mxm_moe_weights *weights,
                                   const mxm_moe_inputs *inputs, const mxm_moe_outputs *outputs,
                                   void *workspace, int64_t workspace_bytes, void *stream);

/* Routing alone (SPEC section 3), on the host: logits [T, E] (f32/bf16), bias [E] or NULL,
 * writes ids [T, K] (global expert ids, sorted by descending selection key, ties toward the
 * lower id) and weights [T, K]. Uses cfg's routing fields and profile. */
MXM_API mxm_status mxm_route(const mxm_moe_config *cfg, int64_t num_tokens, const void *logits,
                             int32_t logits_dtype, const void *bias, int32_t bias_dtype,
                             int32_t *ids, float *weights);

/* Names for enums (for CLIs and messages): "silu", "relu2_no_mul", "deepseek_v3", ... NULL for
 * unknown values. The *_from_name functions return -1 for unknown names. */
MXM_API const char *mxm_activation_name(int32_t activation);
MXM_API int32_t mxm_activation_from_name(const char *name);
/* 1 if the activation is gated (W13 has 2 I rows: gate and up), 0 if not (I rows), -1 for an
 * unknown value. */
MXM_API int32_t mxm_activation_is_gated(int32_t activation);
MXM_API const char *mxm_routing_method_name(int32_t method);
MXM_API int32_t mxm_routing_method_from_name(const char *name);
MXM_API const char *mxm_weight_format_name(int32_t fmt);

/* Bytes of one [rows, cols] weight matrix in a weight format: its data (codes or values) and its
 * scales (MXFP8: one byte per 1x32; DeepSeek FP8: one f32 per started 128x128 block; 0 for
 * bf16/f32). Returns -1 for an unknown format or negative sizes. For copying experts to a GPU. */
MXM_API int64_t mxm_weight_data_bytes(int32_t fmt, int64_t rows, int64_t cols);
MXM_API int64_t mxm_weight_scale_bytes(int32_t fmt, int64_t rows, int64_t cols);


/* ------------------------------------------------------------------------------------------ */
/* Checkpoints (SPEC section 6): Hugging Face folders in ModelOpt MXFP8, DeepSeek FP8 or        */
/* BF16/F32, families nemotron_h, qwen3_moe and deepseek_v3. Files are memory-mapped; hostile   */
/* files give errors, never crashes.                                                          */

typedef struct mxm_model mxm_model;

/* Opens a model folder (config.json + model.safetensors or a sharded index) or a single
 * .safetensors file (then no MoE layers are known, but the tensors can be listed).
 * config.json and hf_quant_config.json must be regular files of at most 8 MiB (a FIFO is an
 * error, never a wait); Python's bare NaN/Infinity tokens are accepted. The MoE parameters are
 * validated here, once, with the key named: a value of the wrong type (a string scaling factor,
 * a boolean expert count), a routed_scaling_factor outside (0, 1000], or a config that
 * mxm_moe_config_validate rejects (n_group not dividing the experts, ...) fails the open, as
 * does a qwen3_moe shared expert (MXM_ERR_UNSUPPORTED: its sigmoid gate is not implemented). */
MXM_API mxm_status mxm_model_open(const char *path, mxm_model **out);
MXM_API void mxm_model_close(mxm_model *m);

/* "nemotron_h", "qwen3_moe", "deepseek_v3", or "" when unknown / no config. */
MXM_API const char *mxm_model_family(const mxm_model *m);
/* Storage of the expert weights as the tensors hold them (a quantization config claiming
 * otherwise does not count): MXM_WFMT_MXFP8, MXM_WFMT_FP8_BLOCK, MXM_WFMT_BF16 or MXM_WFMT_F32;
 * -1 when there are no MoE layers. */
MXM_API int32_t mxm_model_weight_format(const mxm_model *m);
/* MoE layers, in order: count, and the i-th one's layer index. */
MXM_API int32_t mxm_model_moe_layer_count(const mxm_model *m);
MXM_API int32_t mxm_model_moe_layer(const mxm_model *m, int32_t i);

/* Every tensor of the model (sorted by name): name, safetensors dtype string, rank, shape. */
MXM_API int64_t mxm_model_tensor_count(const mxm_model *m);
MXM_API mxm_status mxm_model_tensor_info(const mxm_model *m, int64_t i, const char **name,
                                         const char **dtype, int32_t *rank, int64_t shape[8]);

/* ModelOpt's exclude list (hf_quant_config.json `exclude_modules`, else config.json
 * `quantization_config.ignore`): the modules left unquantized, as fnmatch patterns. An entry
 * holding "\u0000" (ModelOpt 0.47 writes ".\u0000backbone.pt_name_sentinel" after every entry
 * of Nemotron-H exports) is cut at the "." before it. \u0000 anywhere else in a config file is
 * MXM_ERR_FORMAT from mxm_model_open. Count (0 without a list), the i-th entry (NULL out of
 * range), and whether a module name ("lm_head", "model.layers.0.mlp.gate") matches an entry
 * (1) or not (0), as vLLM and ModelOpt match them (exact name or fnmatch, '*' crossing dots). */
MXM_API int32_t mxm_model_exclude_count(const mxm_model *m);
MXM_API const char *mxm_model_exclude(const mxm_model *m, int32_t i);
MXM_API int32_t mxm_model_module_excluded(const mxm_model *m, const char *module);
/* A safetensors __metadata__ value of the model's files (the first file that has key), or NULL. */
MXM_API const char *mxm_model_metadata(const mxm_model *m, const char *key);

/* Index of the tensor called name, or -1. */
MXM_API int64_t mxm_model_tensor_find(const mxm_model *m, const char *name);
/* The i-th tensor's bytes (read-only mapping; may be unaligned: copy with memcpy). */
MXM_API mxm_status mxm_model_tensor_data(const mxm_model *m, int64_t i, const void **data,
                                         int64_t *nbytes);

/* A tensor to write with mxm_safetensors_write. dtype is a safetensors string ("BF16", ...). */
typedef struct mxm_tensor_out {
    const char *name;
    const char *dtype;
    int32_t rank;
    int64_t shape[8];
    const void *data;
} mxm_tensor_out;
/* Writes n tensors (n >= 0) to a safetensors file: into a temporary of a unique name in the
 * same folder (mkstemp), renamed over path on success, so that concurrent writers of one path
 * never mix their data and a failure leaves no partial file. */
MXM_API mxm_status mxm_safetensors_write(const char *path, const mxm_tensor_out *tensors,
                                         int64_t n);

typedef struct mxm_layer_options {
    /* Weight format to run in: -1 = as stored (BF16/F32 checkpoints run in the reference
     * mode), MXM_WFMT_MXFP8 = quantize BF16/F32 experts to MXFP8 at load (with scale_rule). */
    int32_t weight_format;
    int32_t scale_rule;
    int32_t num_threads; /* 0 = all */
    /* Numerics profile of the loaded config, and of the router: with MXM_PROFILE_TRTLLM a
     * router that runs in the model dtype (qwen3_moe's bf16 gate) rounds its logits to bf16;
     * with MXM_PROFILE_EXACT all routers are fp32. */
    int32_t profile;
} mxm_layer_options;
MXM_API void mxm_layer_options_default(mxm_layer_options *o); /* NULL: does nothing */

/* One loaded MoE layer: its config (mxm_moe_config with the routing method chosen as vLLM
 * does for the family), its expert weights (mmap views where the layout allows, W13 assembled
 * as [gate ; up] for gated experts), its router and bias. */
typedef struct mxm_layer mxm_layer;
MXM_API mxm_status mxm_layer_load(const mxm_model *m, int32_t layer_index,
                                  const mxm_layer_options *opts, mxm_layer **out);
MXM_API void mxm_layer_free(mxm_layer *l);
MXM_API const mxm_moe_config *mxm_layer_config(const mxm_layer *l);
MXM_API const mxm_moe_weights *mxm_layer_weights(const mxm_layer *l);
MXM_API const float *mxm_layer_routing_bias(const mxm_layer *l); /* [E] or NULL */
/* Router logits [T, E] f32 for x [T, H] (f32 or bf16): fp32 x . Wg^T, rounded to bf16 for
 * families whose router runs in the model dtype (qwen3_moe) in the trtllm profile. x may be at
 * any address (byte copies); logits need 4-byte alignment. */
MXM_API mxm_status mxm_layer_router_logits(const mxm_layer *l, const void *x, int32_t x_dtype,
                                           int64_t num_tokens, float *logits,
                                           int32_t num_threads);
/* Bytes of expert weights + scales of the layer (routed + shared). */
MXM_API int64_t mxm_layer_weight_bytes(const mxm_layer *l);

/* Progress callback for long work: done of total units; return non-zero to cancel. */
typedef int32_t (*mxm_progress_fn)(int64_t done, int64_t total, const char *what, void *user);

/* What mxm_checkpoint_quantize quantizes. */
typedef enum mxm_quantize_scope {
    /* ModelOpt's MXFP8 default (mtq.MXFP8_DEFAULT_CFG, nvidia-modelopt 0.47): every Linear
     * weight except lm_head, the embeddings and the MoE routers (and the other modules its
     * default disables by name, e.g. Mamba's conv1d); attention/MLA projections, Mamba
     * in_proj/out_proj, dense MLPs and experts included. ModelOpt's exclude list and file order
     * (by dtype, then by name). On the tests/data fixtures the tensors equal ModelOpt's own
     * export byte for byte, in the same data order. */
    MXM_QUANTIZE_MODELOPT = 0,
    /* Routed- and shared-expert Linear weights only (names with ".experts.", ".shared_experts."
     * or ".shared_expert." ending in "_proj.weight", or Mixtral's ".w1/.w2/.w3.weight"); the
     * exclude list lists every other Linear; data by element size, then by name: the layout of
     * the tests/data *_mxfp8 fixtures. */
    MXM_QUANTIZE_EXPERTS = 1,
} mxm_quantize_scope;

typedef struct mxm_quantize_options {
    int32_t scale_rule;  /* MXM_SCALE_RCEIL (default; ModelOpt's rule) or MXM_SCALE_FLOOR */
    int32_t num_threads; /* 0 = all */
    int32_t scope;       /* mxm_quantize_scope; default MXM_QUANTIZE_MODELOPT */
} mxm_quantize_options;
MXM_API void mxm_quantize_options_default(mxm_quantize_options *o);

/* Quantizes a BF16/F16/F32 Hugging Face checkpoint folder into a ModelOpt MXFP8 checkpoint in
 * out_dir (created if missing): each selected Linear weight [N, K] (opts->scope) becomes
 * F8_E4M3 `.weight` + U8 `.weight_scale` [N, K/32] (K % 32 != 0 is MXM_ERR_SHAPE naming the
 * tensor); everything else is copied unchanged; hf_quant_config.json and config.json's
 * quantization_config are written with the exclude list and producer {"name": "mxmoe",
 * "version": mxm_version()}; other files are copied (config.json keeps the input's text, bare
 * Infinity/-Infinity/NaN written as 1e999/-1e999/null). out_dir must not exist or be an empty
 * folder (else MXM_ERR_INVALID_ARG): the files are written into a fresh staging folder next to
 * it (".<name>.tmp.XXXXXX") that is renamed to out_dir at the end, so out_dir holds one complete
 * run or nothing; a failure, or a cancel from progress (non-zero return), removes the staging
 * folder. opts NULL: defaults. */
MXM_API mxm_status mxm_checkpoint_quantize_ex(const char *in_dir, const char *out_dir,
                                              const mxm_quantize_options *opts,
                                              mxm_progress_fn progress, void *user);
/* mxm_checkpoint_quantize_ex with scope MXM_QUANTIZE_MODELOPT. */
MXM_API mxm_status mxm_checkpoint_quantize(const char *in_dir, const char *out_dir,
                                           int32_t scale_rule, int32_t num_threads,
                                           mxm_progress_fn progress, void *user);

/* 1 if the CUDA backend was built and a device is present, else 0. */
MXM_API int32_t mxm_cuda_available(void);

/* Device memory helpers for callers without their own CUDA runtime (ctypes, the CLI): plain
 * cudaMalloc/cudaFree/cudaMemcpy on the current device. MXM_ERR_NO_DEVICE without CUDA. */
MXM_API mxm_status mxm_device_alloc(int64_t bytes, void **ptr);
MXM_API void mxm_device_free(void *ptr);
MXM_API mxm_status mxm_copy_to_device(void *dst, const void *src, int64_t bytes);
MXM_API mxm_status mxm_copy_to_host(void *dst, const void *src, int64_t bytes);
MXM_API mxm_status mxm_device_synchronize(void);
/* CUDA graphs: records one mxm_moe_forward (same arguments) into a graph that replays the whole
 * layer in one launch, without per-kernel launch costs. Run one ordinary forward with the same
 * weights first (it uploads the plan's expert table; an upload cannot be recorded). The graph is
 * recorded on a private stream and replayed on `stream` (NULL: the legacy default stream, which
 * orders replays of every graph and other default-stream work, so graphs sharing a workspace
 * never overlap). Replays use the pointers given here. */
typedef struct mxm_cuda_graph mxm_cuda_graph;
MXM_API mxm_status mxm_cuda_graph_capture(mxm_moe_plan *plan, const mxm_moe_weights *weights,
                                          const mxm_moe_inputs *inputs,
                                          const mxm_moe_outputs *outputs, void *workspace,
                                          int64_t workspace_bytes, void *stream,
                                          mxm_cuda_graph **graph);
MXM_API mxm_status mxm_cuda_graph_launch(mxm_cuda_graph *graph);
MXM_API void mxm_cuda_graph_destroy(mxm_cuda_graph *graph);

/* Name of the current device ("NVIDIA H200"), or "" without CUDA. */
MXM_API const char *mxm_device_name(void);

/* ------------------------------------------------------------------------------------------ */
/* Expert parallelism (EP): the layer across GPUs over NCCL (docs/ep.md).                     */
/*                                                                                            */
/* Rank r of N holds the global experts [off_r, off_r + E_r) (the config's local_expert_offset */
/* and local_num_experts; the slices are contiguous, in rank order, and cover all E). Each    */
/* rank routes its own tokens, sends every (t, k) row, as W8A8 activation codes + scales, to  */
/* the rank holding expert ids[t, k], runs the rows it receives through its local experts,    */
/* sends each expert output row back, and sums them in (t, k) order exactly as              */
/* mxm_moe_forward's combine does, plus the shared expert on its own tokens.                   */
/*                                                                                            */
/* The pieces below (slices, dispatch plan, combine, the configs of the two local forwards)   */
/* are plain host functions, always built: a caller with its own transport can use them, and  */
/* the tests run the whole layer over N simulated ranks on the CPU with them. The NCCL group  */
/* (mxm_ep_group_*, mxm_ep_plan_*, mxm_ep_forward) exists when the library was built with     */
/* CUDA and NCCL (CMake MXM_NCCL); otherwise those return MXM_ERR_NO_DEVICE.                   */

/* The default slice of rank of world_size ranks: the first E % N ranks hold ceil(E/N)
 * experts, the others floor(E/N) (a rank may hold none when N > E). */
MXM_API mxm_status mxm_ep_expert_slice(int32_t num_experts, int32_t world_size, int32_t rank,
                                       int32_t *offset, int32_t *count);

/* Dispatch plan of one rank's tokens. rank_offsets [N + 1]: rank r holds global experts
 * [rank_offsets[r], rank_offsets[r + 1]); 0 = rank_offsets[0] <= ... <= rank_offsets[N] = E.
 * ids [T, K] global expert ids. Every (t, k) becomes one send row; send rows are ordered by
 * destination rank, then t, then k (so a receiver gets its rows grouped by source rank, each
 * source's in token order). Writes send_counts [N] and send_offsets [N + 1] (rows), send_src
 * [T*K] int32 (the permutation: send row j carries (t, k) = (send_src[j] / K, send_src[j] % K))
 * and pos [T*K] int32 (its inverse: the send row of (t, k)). An id outside 0..E-1 is
 * MXM_ERR_INVALID_ARG; T*K must fit int32. */
MXM_API mxm_status mxm_ep_dispatch_plan(const int32_t *ids, int64_t num_tokens, int32_t top_k,
                                        int32_t world_size, const int32_t *rank_offsets,
                                        int64_t *send_counts, int64_t *send_offsets,
                                        int32_t *send_src, int32_t *pos);

/* Combine on the host: out[t] = sum over k in order of weights[t, k] * y[pos[t, k]] in fp32
 * (from 0), stored to out_routed if given, then + shared[t] (if given), stored to out: the
 * arithmetic of mxm_moe_forward's CPU combine, so with the same expert rows the result is
 * bit-identical. y [T*K, H] expert output rows in send order (f32 or bf16), shared [T, H]
 * f32 or bf16 or NULL, out / out_routed [T, H] f32 or bf16 (out_routed may be NULL). */
MXM_API mxm_status mxm_ep_combine(int64_t num_tokens, int32_t top_k, int32_t hidden_size,
                                  const float *weights, const int32_t *pos, const void *y,
                                  int32_t y_dtype, const void *shared, int32_t shared_dtype,
                                  void *out, void *out_routed, int32_t out_dtype);

/* Config of the expert forward on the rows a rank receives: global's experts, formats and
 * profile with top_k 1, caller-given ids (the row's global expert) and weight 1.0, no routing
 * fields, no shared expert, local slice [offset, offset + count) (count >= 1). Its output row
 * is the expert's y exactly (0 + 1.0 * y). */
MXM_API mxm_status mxm_ep_expert_config(const mxm_moe_config *global, int32_t offset,
                                        int32_t count, mxm_moe_config *out);
/* Config of the shared expert alone, run as a one-expert layer (E 1, top_k 1, intermediate
 * size shared_intermediate_size, the shared activation) on a rank's own tokens with ids 0 and
 * weights 1.0: its output is the shared expert's y exactly. MXM_ERR_INVALID_ARG when global has
 * no shared expert. */
MXM_API mxm_status mxm_ep_shared_config(const mxm_moe_config *global, mxm_moe_config *out);
/* dtype of the returned expert rows: MXM_DT_BF16 in the trtllm profile (y is rounded to bf16
 * there, so nothing is lost), MXM_DT_F32 in the exact profile. */
MXM_API int32_t mxm_ep_return_dtype(const mxm_moe_config *global);

/* An EP group: a communicator of N ranks, one GPU each. */
typedef struct mxm_ep_group mxm_ep_group;

/* A group over an ncclComm_t the caller made (passed as void *; the group does not own it and
 * the caller destroys it after the group). The current CUDA device must be the comm's. */
MXM_API mxm_status mxm_ep_group_create(void *nccl_comm, mxm_ep_group **group);
/* One process per GPU on one host: selects device (rank % device count), rank 0 makes the
 * NCCL unique id and writes it to id_file (temporary + rename), the others wait for the file
 * (up to 120 s), then every rank initializes the communicator, which the group owns. Remove
 * id_file before a new launch. */
MXM_API mxm_status mxm_ep_group_create_local(int32_t world_size, int32_t rank, const char *id_file,
                                             mxm_ep_group **group);
MXM_API void mxm_ep_group_destroy(mxm_ep_group *group);
MXM_API int32_t mxm_ep_group_rank(const mxm_ep_group *group);
MXM_API int32_t mxm_ep_group_size(const mxm_ep_group *group);

typedef struct mxm_ep_plan mxm_ep_plan;

/* Collective: every rank calls it with the same global config (backend CUDA, MXFP8 weights,
 * W8A8) and its own slice in local_expert_offset / local_num_experts (local_num_experts 0 here
 * means "no experts", not "all E"); the slices are exchanged and checked. max_tokens: most
 * tokens one rank passes to a forward. The plan allocates its device buffers here (sized for
 * the worst case: N * max_tokens * K received rows) and never during a forward. */
MXM_API mxm_status mxm_ep_plan_create(mxm_ep_group *group, const mxm_moe_config *cfg,
                                      int64_t max_tokens, mxm_ep_plan **plan);
MXM_API void mxm_ep_plan_destroy(mxm_ep_plan *plan);
/* Device bytes the plan holds. */
MXM_API int64_t mxm_ep_plan_device_bytes(const mxm_ep_plan *plan);

/* Collective: every rank calls it the same number of times, each with its own tokens (T may
 * differ per rank, 0 included). weights: this rank's local experts (+ the shared expert);
 * inputs/outputs as for mxm_moe_forward (device memory; x bf16/f32 or MXFP8 codes + scales;
 * logits or caller ids); out [T, H] is the full layer output of these tokens. Runs on stream
 * (a cudaStream_t; NULL = default). Two host synchronizations per call: the routed ids are
 * copied to the host for the dispatch plan, and the received row counts after their exchange
 * (NCCL needs host-side counts). */
MXM_API mxm_status mxm_ep_forward(mxm_ep_plan *plan, const mxm_moe_weights *weights,
                                  const mxm_moe_inputs *inputs, const mxm_moe_outputs *outputs,
                                  void *stream);

/* Last forward's row counts of this rank: rows sent (T*K) and rows received. */
MXM_API mxm_status mxm_ep_plan_last_rows(const mxm_ep_plan *plan, int64_t *sent, int64_t *received);

#ifdef __cplusplus
}
#endif
#endif /* MXMOE_H */
