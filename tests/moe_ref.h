/* Independent float64 reference of the MoE layer (SPEC section 5) for the tests. It shares no
 * code with the library: its own E4M3/E8M0 arithmetic, scale rules, activations, bf16 rounding,
 * requantization and combine. The weights are quantized by the library's public quantizers,
 * which test_formats checks bit for bit.
 *
 * Besides the nominal output (every step in float64) it returns, per output element, the
 * interval [lo, hi] that holds every result an fp32 implementation may legitimately produce:
 *  - each fp32 dot product of n terms t may differ from float64 by REF_ACC_SLACK: 4 ulps of
 *    sum |t| (a rounding per product, as without FMA or with fp32 scale products) plus
 *    8 sqrt(n) ulps of ||t||_2, 40 times the standard deviation of the rounding walk of any
 *    summation order over random-sign terms (0.2 sqrt(n) ulp ||t||_2); each fp32 activation
 *    by REF_EPS_FN x (|a| + |g u|); the fp32 combine by REF_EPS_COMBINE x the sum of |w y|;
 *  - a rounding point (bf16 in the trtllm profile, the W8A8 requantization with its block scale)
 *    maps an interval to the interval of its possible results: when a value straddles a rounding
 *    boundary both codes are allowed, when a block amax straddles a scale boundary both scales.
 * The intervals propagate through GEMM2 and the combine. A library result outside its interval
 * is a bug, not noise; with exact_sums (integer data: exact sums in any order) the first two
 * epsilons are 0 and the whole W8A8 pipeline must match exactly up to the combine. */
#ifndef MXM_MOE_REF_H
#define MXM_MOE_REF_H

#include <math.h>
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
    int exact_sums;              /* integer data: fp32 sums are exact */
} ref_layer;

#define REF_ACC_SLACK(n, l1, l2) (0x1p-24 * (4 * (l1) + 8 * sqrt((double)(n)) * (l2)))
#define REF_EPS_FN 0x1p-18
#define REF_EPS_COMBINE 0x1p-20

/* Nominal output [T, H] with its bounds, for the whole layer and for the routed experts only. */
typedef struct ref_output {
    double *out, *lo, *hi, *routed, *routed_lo, *routed_hi;
} ref_output;

ref_output ref_output_alloc(int64_t n);
void ref_output_free(ref_output *o);

/* A library result against a reference: how many elements lie outside their bounds, NaNs, the
 * relative L2 error against the nominal output and the relative L2 half-width of the bounds. */
typedef struct ref_check {
    int64_t outside, nan_count;
    double err, width;
} ref_check;

ref_check ref_check_f32(const float *got, const double *nom, const double *lo, const double *hi, int64_t n);

/* Builds random weights (block-scaled normal values with row/block scale spread) in cfg's weight
 * format. integer_data: values are k/8 with small integers k (exact sums, see test_moe.c). */
void ref_layer_init(ref_layer *L, const mxm_moe_config *cfg, uint64_t seed, int integer_data);
void ref_layer_free(ref_layer *L);
mxm_moe_weights ref_layer_weights(const ref_layer *L);

/* Reference forward: x [T, H] f32 values, ids/w [T, K]; fills r (from ref_output_alloc(T * H)). */
void ref_forward(const ref_layer *L, int64_t T, const float *x, const int32_t *ids, const float *w,
                 ref_output *r);

double ref_e4m3(uint8_t c);
double ref_bf16_round(double v);

#endif
