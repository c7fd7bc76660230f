/* Independent float64 reference of the MoE layer (SPEC section 5) for the tests. It shares no
 * code with the library: its own E4M3/E8M0 decoding, activations, bf16 rounding and combine.
 * Quantized operands (weights, the MXFP8 input and intermediate) come from the library's public
 * quantizers, which test_formats checks bit for bit. */
#ifndef MXM_MOE_REF_H
#define MXM_MOE_REF_H

#include <stdint.h>

#include "mxmoe.h"

/* A layer's weights in every representation the tests need. */
typedef struct ref_layer {
    mxm_moe_config cfg;
    int32_t e_loc, m1;
    /* Library-format storage, per local expert (+1 for the shared expert at index e_loc). */
    void **w13, **s13, **w2, **s2;
    mxm_expert_weights *experts; /* [e_loc + 1] */
    /* Decoded values in double: w13d[e] [M1, H], w2d[e] [H, I] */
    double **w13d, **w2d;
    float *alpha, *beta, *limit; /* per local expert SWIGLUOAI params, or NULL */
} ref_layer;

/* Builds random weights (block-scaled normal values with row/block scale spread) in cfg's weight
 * format. integer_data: values are k/8 with small integers k (exact sums, see test_moe.c). */
void ref_layer_init(ref_layer *L, const mxm_moe_config *cfg, uint64_t seed, int integer_data);
void ref_layer_free(ref_layer *L);
mxm_moe_weights ref_layer_weights(const ref_layer *L);

/* Reference forward: x [T, H] f32 values, ids/w [T, K]; writes out [T, H] and routed [T, H]
 * (double). */
void ref_forward(const ref_layer *L, int64_t T, const float *x, const int32_t *ids, const float *w,
                 double *out, double *routed);

double ref_e4m3(uint8_t c);
double ref_bf16_round(double v);

#endif
