/* The checkpoint families (ckpt_family.h says what each field means). */
#include "io/ckpt_family.h"

#include <stddef.h>
#include <string.h>

#include "mxmoe.h"

/* The expert Linears' names of transformers' MoE blocks (Mixtral's would be w1, w3, w2). */
#define HF_PROJECTIONS .gate = "gate_proj", .up = "up_proj", .down = "down_proj"

static const mxm_ckpt_family families[] = {
    {
        .name = "nemotron_h",
        .router = "backbone.layers.%d.mixer.gate.weight",
        .bias = "backbone.layers.%d.mixer.gate.e_score_correction_bias",
        .expert = "backbone.layers.%d.mixer.experts.%d",
        .shared = "backbone.layers.%d.mixer.shared_experts",
        HF_PROJECTIONS,
        .file_root = "backbone",
        .act_key = "mlp_hidden_act",
        .act_default = MXM_ACT_RELU2_NO_MUL,
        .plain_mlp = true,
        .routing = MXM_ROUTE_DEEPSEEK_V3,
        .grouped = true,
        .shared_count_key = "n_shared_experts",
        .shared_count_default = 1,
        .shared_size_key = "moe_shared_expert_intermediate_size",
        .router_dtype = MXM_DT_F32,
    },
    {
        .name = "qwen3_moe",
        .router = "model.layers.%d.mlp.gate.weight",
        .expert = "model.layers.%d.mlp.experts.%d",
        HF_PROJECTIONS,
        .act_default = MXM_ACT_SILU,
        .routing = -1, /* softmax top-k, renormalized when norm_topk_prob */
        .shared_size_key = "shared_expert_intermediate_size",
        .shared_gated = true, /* Qwen2-MoE / Qwen3-Next style (mlp.shared_expert_gate) */
        .router_dtype = MXM_DT_BF16,
    },
    {
        .name = "deepseek_v3",
        .aliases = {"kimi_k2"},
        .router = "model.layers.%d.mlp.gate.weight",
        .bias = "model.layers.%d.mlp.gate.e_score_correction_bias",
        .expert = "model.layers.%d.mlp.experts.%d",
        .shared = "model.layers.%d.mlp.shared_experts",
        HF_PROJECTIONS,
        .act_default = MXM_ACT_SILU,
        .routing = MXM_ROUTE_DEEPSEEK_V3,
        .grouped = true,
        .shared_count_key = "n_shared_experts",
        .shared_count_default = 0,
        .router_dtype = MXM_DT_F32,
    },
};

const mxm_ckpt_family *mxm_ckpt_family_find(const char *model_type) {
    if (!model_type) return NULL;
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        const mxm_ckpt_family *r = &families[f];
        if (strcmp(model_type, r->name) == 0) return r;
        for (int a = 0; a < MXM_CKPT_ALIASES && r->aliases[a]; a++)
            if (strcmp(model_type, r->aliases[a]) == 0) return r;
    }
    return NULL;
}
