/* Expert activations (SPEC section 4) on fp32, shared by the CPU and CUDA backends. NaN inputs
 * propagate (comparisons are written so that NaN falls through to the input). */
#ifndef MXM_ACTIVATION_H
#define MXM_ACTIVATION_H

#include <math.h>

#include "formats/formats.h"
#include "mxmoe.h"

typedef struct mxm_act_params {
    float alpha, beta, limit; /* SWIGLUOAI */
} mxm_act_params;

MXM_HD float mxm_siluf(float v) { return v / (1.0f + expf(-v)); }
MXM_HD float mxm_gelu_erff(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }
MXM_HD float mxm_gelu_tanhf(float v) {
    return 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
}

/* The activations, one row each: enum value, name (vLLM's MoEActivation), gated (W13 holds gate
 * and up, 2 I rows; GEMM1's output is reduced by mxm_act_gated) or not (I rows, mxm_act_plain),
 * and other names that checkpoint configs use, space separated. Every question "is it gated?" and
 * every activation name is answered from this list (config.c builds the name table from it), so a
 * new activation is one row here plus its case in mxm_act_gated or mxm_act_plain. */
#define MXM_ACTIVATIONS(X)                                                                         \
    X(MXM_ACT_SILU, "silu", 1, "swiglu")                                                           \
    X(MXM_ACT_GELU, "gelu", 1, "")                                                                 \
    X(MXM_ACT_GELU_TANH, "gelu_tanh", 1, "")                                                       \
    X(MXM_ACT_SWIGLUOAI, "swigluoai", 1, "")                                                       \
    X(MXM_ACT_SILU_NO_MUL, "silu_no_mul", 0, "")                                                   \
    X(MXM_ACT_GELU_NO_MUL, "gelu_no_mul", 0, "")                                                   \
    X(MXM_ACT_RELU2_NO_MUL, "relu2_no_mul", 0, "relu2")                                            \
    X(MXM_ACT_IDENTITY, "identity", 0, "")

/* 1 for a gated activation, 0 otherwise (unknown values included: the config was validated). */
MXM_HD int mxm_act_is_gated(int act) {
    switch (act) {
#define MXM_ACT_GATED_CASE_(e, name, gated, aliases)                                               \
    case e:                                                                                        \
        return gated;
        MXM_ACTIVATIONS(MXM_ACT_GATED_CASE_)
#undef MXM_ACT_GATED_CASE_
    default:
        return 0;
    }
}

/* Gated activations: gate g and up u. */
MXM_HD float mxm_act_gated(int act, float g, float u, mxm_act_params p) {
    switch (act) {
    case MXM_ACT_SILU: return mxm_siluf(g) * u;
    case MXM_ACT_GELU: return mxm_gelu_erff(g) * u;
    case MXM_ACT_GELU_TANH: return mxm_gelu_tanhf(g) * u;
    default: { /* MXM_ACT_SWIGLUOAI */
        const float gc = g > p.limit ? p.limit : g;
        const float uc = u > p.limit ? p.limit : (u < -p.limit ? -p.limit : u);
        return (uc + p.beta) * gc * mxm_sigmoidf(p.alpha * gc);
    }
    }
}

/* Non-gated activations of h. */
MXM_HD float mxm_act_plain(int act, float h) {
    switch (act) {
    case MXM_ACT_SILU_NO_MUL: return mxm_siluf(h);
    case MXM_ACT_GELU_NO_MUL: return mxm_gelu_erff(h);
    case MXM_ACT_RELU2_NO_MUL: {
        const float r = h < 0.0f ? 0.0f : h;
        return r * r;
    }
    default: return h; /* MXM_ACT_IDENTITY */
    }
}

#endif
