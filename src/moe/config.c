/* MoE config: defaults, validation (every message names the field and the allowed values), and
 * the enum <-> name tables used by the CLI and messages. */
#include <string.h>

#include "core/core.h"
#include "moe/activation.h"
#include "moe/plan.h"

/* The activation table, from MXM_ACTIVATIONS (moe/activation.h), indexed by enum value. */
typedef struct mxm_activation_row {
    const char *name;
    int gated;
    const char *aliases; /* space separated */
} mxm_activation_row;
static const mxm_activation_row activations[MXM_ACT_COUNT_] = {
#define MXM_ACT_ROW_(e, name, gated, aliases) [e] = {name, gated, aliases},
    MXM_ACTIVATIONS(MXM_ACT_ROW_)
#undef MXM_ACT_ROW_
};

const char *mxm_activation_name(int32_t a) {
    return (a >= 0 && a < MXM_ACT_COUNT_) ? activations[a].name : NULL;
}

int32_t mxm_activation_is_gated(int32_t a) {
    return (a >= 0 && a < MXM_ACT_COUNT_) ? activations[a].gated : -1;
}

/* Does the space-separated list have the word? */
static int has_word(const char *list, const char *w) {
    const size_t n = strlen(w);
    for (const char *p = list; *p;) {
        const size_t len = strcspn(p, " ");
        if (len == n && n && strncmp(p, w, n) == 0) return 1;
        p += len;
        p += strspn(p, " ");
    }
    return 0;
}

int32_t mxm_activation_from_name(const char *name) {
    for (int32_t i = 0; name && i < MXM_ACT_COUNT_; i++)
        if (strcmp(name, activations[i].name) == 0) return i;
    /* Common aliases of checkpoint configs (mlp_hidden_act / hidden_act). */
    for (int32_t i = 0; name && i < MXM_ACT_COUNT_; i++)
        if (has_word(activations[i].aliases, name)) return i;
    return -1;
}

void mxm_moe_config_default(mxm_moe_config *c) {
    if (!c) return;
    memset(c, 0, sizeof *c);
    c->routing_method = MXM_ROUTE_RENORMALIZE;
    c->routed_scaling_factor = 1.0f;
    c->norm_topk_prob = 1;
    c->activation = MXM_ACT_SILU;
    c->w13_layout = MXM_W13_GATE_UP;
    c->weight_format = MXM_WFMT_MXFP8;
    c->act_quant = MXM_ACT_QUANT_MXFP8;
    c->profile = MXM_PROFILE_TRTLLM;
    c->scale_rule = MXM_SCALE_RCEIL;
    c->shared_activation = -1;
    c->swiglu_alpha = 1.702f;
    c->swiglu_beta = 1.0f;
    c->swiglu_limit = 7.0f;
    c->backend = MXM_BACKEND_CPU;
}

static void list_activations(char *buf, size_t n) {
    buf[0] = 0;
    for (int i = 0; i < MXM_ACT_COUNT_; i++) {
        strncat(buf, activations[i].name, n - strlen(buf) - 1);
        if (i + 1 < MXM_ACT_COUNT_) strncat(buf, ", ", n - strlen(buf) - 1);
    }
}

mxm_status mxm_moe_config_validate(const mxm_moe_config *c) {
    if (!c) return mxm_fail(MXM_ERR_NULL, "config is NULL");
    /* Sizes are bounded so that every per-row product (2 I, H * 16, ...) fits int32. */
    const int32_t max_dim = 1 << 24;
    if (c->hidden_size <= 0 || c->hidden_size % 32 || c->hidden_size > max_dim)
        return mxm_fail(MXM_ERR_SHAPE, "hidden_size=%d must be a positive multiple of 32 up to 2^24", c->hidden_size);
    if (c->intermediate_size <= 0 || c->intermediate_size % 32 || c->intermediate_size > max_dim)
        return mxm_fail(MXM_ERR_SHAPE, "intermediate_size=%d must be a positive multiple of 32 up to 2^24",
                        c->intermediate_size);
    if (c->shared_intermediate_size < 0 || c->shared_intermediate_size % 32 || c->shared_intermediate_size > max_dim)
        return mxm_fail(MXM_ERR_SHAPE, "shared_intermediate_size=%d must be 0 or a positive multiple of 32 up to 2^24",
                        c->shared_intermediate_size);
    char names[256];
    list_activations(names, sizeof names);
    if (c->activation < 0 || c->activation >= MXM_ACT_COUNT_)
        return mxm_fail(MXM_ERR_INVALID_ARG, "activation %d is unknown; supported: %s", c->activation, names);
    if (c->shared_activation < -1 || c->shared_activation >= MXM_ACT_COUNT_)
        return mxm_fail(MXM_ERR_INVALID_ARG, "shared_activation %d is unknown; supported: -1 (same), %s",
                        c->shared_activation, names);
    if (c->w13_layout < 0 || c->w13_layout > MXM_W13_INTERLEAVED)
        return mxm_fail(MXM_ERR_INVALID_ARG,
                        "w13_layout %d is unknown; supported: gate_up (0), up_gate (1), interleaved (2)",
                        c->w13_layout);
    if (!mxm_scheme_get(c->weight_format))
        return mxm_fail(MXM_ERR_INVALID_ARG, "weight_format %d is unknown; supported: %s",
                        c->weight_format, mxm_scheme_names(names, sizeof names));
    if (c->act_quant != MXM_ACT_QUANT_MXFP8 && c->act_quant != MXM_ACT_QUANT_NONE)
        return mxm_fail(MXM_ERR_INVALID_ARG, "act_quant %d is unknown; supported: mxfp8 (0), none (1)",
                        c->act_quant);
    if (c->profile != MXM_PROFILE_TRTLLM && c->profile != MXM_PROFILE_EXACT)
        return mxm_fail(MXM_ERR_INVALID_ARG, "profile %d is unknown; supported: trtllm (0), exact (1)",
                        c->profile);
    if (c->scale_rule != MXM_SCALE_RCEIL && c->scale_rule != MXM_SCALE_FLOOR)
        return mxm_fail(MXM_ERR_INVALID_ARG, "scale_rule %d is unknown; supported: rceil (0), floor (1)",
                        c->scale_rule);
    if (c->backend != MXM_BACKEND_CPU && c->backend != MXM_BACKEND_CUDA)
        return mxm_fail(MXM_ERR_INVALID_ARG, "backend %d is unknown; supported: cpu (0), cuda (1)", c->backend);
    if (c->kernels != MXM_KERNELS_AUTO && c->kernels != MXM_KERNELS_REF)
        return mxm_fail(MXM_ERR_INVALID_ARG, "kernels %d is unknown; supported: auto (0), ref (1)", c->kernels);
    if (c->num_threads < 0 || c->num_threads > 4096)
        return mxm_fail(MXM_ERR_INVALID_ARG, "num_threads=%d must be in 0..4096", c->num_threads);
    const int32_t e_loc = c->local_num_experts ? c->local_num_experts : c->num_experts;
    if (c->local_num_experts < 0 || c->local_expert_offset < 0 ||
        (int64_t)c->local_expert_offset + e_loc > c->num_experts)
        return mxm_fail(MXM_ERR_SHAPE,
                        "local experts [%d, %d + %d) do not lie within the %d global experts",
                        c->local_expert_offset, c->local_expert_offset, e_loc, c->num_experts);
    if (c->activation == MXM_ACT_SWIGLUOAI && !(c->swiglu_limit > 0))
        return mxm_fail(MXM_ERR_INVALID_ARG, "swiglu_limit=%g must be > 0", (double)c->swiglu_limit);
    mxm_route_params rp;
    mxm_route_params_from_config(c, &rp);
    return mxm_route_check(&rp);
}
