/* Hugging Face checkpoint families, one row each (ckpt_family.c): the model_type values that name
 * the family, where its MoE tensors are, which config.json keys give its MoE parameters beyond
 * the ones every family shares (checkpoint.c: hidden_size, moe_intermediate_size, the expert
 * count, num_experts_per_tok, n_group, topk_group, norm_topk_prob, routed_scaling_factor) and
 * what they default to, and how its router computes. The loader (checkpoint.c) reads a
 * checkpoint through its row only and the quantizer (ckpt_quantize.c) takes the rows' names, so a
 * new family of this shape is one row. */
#ifndef MXM_IO_CKPT_FAMILY_H
#define MXM_IO_CKPT_FAMILY_H

#include <stdbool.h>
#include <stdint.h>

#define MXM_CKPT_ALIASES 4

typedef struct mxm_ckpt_family {
    const char *name; /* config.json model_type; what mxm_model_family reports */
    const char *aliases[MXM_CKPT_ALIASES]; /* other model_type values read as this family */

    /* Tensor names: %d is the layer, then the expert. An expert is the Linears <prefix>.<gate>
     * (gated activations only), <prefix>.<up> and <prefix>.<down>, each "<name>.weight" with its
     * scale tensors beside it. */
    const char *router; /* router weight [E, H]; a layer that has one is an MoE layer */
    const char *bias;   /* routing bias [E] (e_score_correction_bias), or NULL */
    const char *expert; /* routed expert e's prefix */
    const char *shared; /* the shared expert's prefix, or NULL */
    const char *gate, *up, *down;
    /* The files' top module where transformers names it "model" in memory (ModelOpt orders its
     * exclude list by the in-memory names), or NULL. */
    const char *file_root;

    /* config.json */
    const char *act_key; /* the experts' activation by name, or NULL: act_default always */
    int32_t act_default; /* mxm_activation */
    bool plain_mlp;      /* non-gated experts: "silu" in act_key means silu_no_mul */
    int32_t routing;     /* mxm_routing_method; -1: renormalize when norm_topk_prob, else default */
    bool grouped;        /* n_group and topk_group apply (grouped top-k) */
    const char *shared_count_key; /* number of shared experts (0..64), or NULL: one */
    int32_t shared_count_default;
    /* The shared expert's intermediate size, read when the count is not 0; NULL: count x
     * moe_intermediate_size. */
    const char *shared_size_key;
    /* A shared expert (shared_size_key not 0) is rejected: in this family it has its own sigmoid
     * gate, which the forward does not have. */
    bool shared_gated;

    /* The dtype the router Linear computes in: MXM_DT_F32, or MXM_DT_BF16 (a Linear in the model
     * dtype, whose logits are bf16: rounded so in the trtllm profile). */
    int32_t router_dtype;
} mxm_ckpt_family;

/* The family that model_type names (its name or an alias), or NULL. */
const mxm_ckpt_family *mxm_ckpt_family_find(const char *model_type);

#endif
