/* Routing (SPEC section 3): router logits -> top-k expert ids and combine weights, for the ten
 * FlashInfer RoutingMethodType methods. Host code, no allocation in mxm_route_rows; the MoE
 * forward calls it on its own workspace, the public mxm_route wraps it.
 *
 * Numerics (decisions where SPEC section 3 is silent; the tests' reference follows them):
 * - sigmoid(x) = 1.0f / (1.0f + expf(-x)) in fp32; softmax over E: m = max of the non-NaN
 *   logits, e_i = expf(z_i - m) (fp32), the sum of the e_i accumulated in double in index
 *   order, p_i = (float)(e_i / sum). These fp32 values are the selection keys.
 * - Renormalizations (methods 1, 2, 4, 6, 7) sum the selected fp32 values in double and divide
 *   in double; the weight is rounded to fp32 once (then to bf16 in the trtllm profile).
 * - Order: descending key; NaN keys are below every number (-inf included) and equal to each
 *   other; -0 == +0; ties go to the lower expert index. The order is total, so the result does
 *   not depend on how the selection is implemented.
 * - Grouping (DeepSeekV3, n_group > 1): group score = fp32 sum of the two largest u in the
 *   group (the single u when the group has one expert); best topk_group groups by the same
 *   order (ties to the lower group). Grouping fields with n_group > 1 on any other method are
 *   rejected (FlashInfer: "Routing kernel with groups implies DeepSeekV3 routing method").
 * - Bias is used by DeepSeekV3 and MiniMax2 only; the trtllm profile rounds it to bf16 in the
 *   grouped DeepSeekV3 path only. */
#ifndef MXM_ROUTE_H
#define MXM_ROUTE_H

#include <stdint.h>

#include "mxmoe.h"

typedef struct mxm_route_params {
    int32_t num_experts, top_k, n_group, topk_group, method; /* method: mxm_routing_method */
    float routed_scaling_factor;
    int32_t norm_topk_prob;
    int32_t profile; /* mxm_profile */
} mxm_route_params;

void mxm_route_params_from_config(const mxm_moe_config *cfg, mxm_route_params *p);

/* Validates the routing fields; MXM_OK or a status with a message that names the field and the
 * allowed values. */
mxm_status mxm_route_check(const mxm_route_params *p);

/* Bytes of scratch one thread needs for mxm_route_rows (a multiple of 64). p already checked. */
int64_t mxm_route_scratch_bytes(const mxm_route_params *p);

/* Routes tokens [t0, t1): logits [T, E] (MXM_DT_F32 or MXM_DT_BF16), bias [E] or NULL (f32/bf16),
 * writes ids [T, K] (global ids) and weights [T, K] (rows t0..t1-1 only). No allocation; p
 * already checked. scratch: mxm_route_scratch_bytes(p) bytes, 8-byte aligned, one per thread. */
void mxm_route_rows(const mxm_route_params *p, const void *logits, int32_t logits_dtype,
                    const void *bias, int32_t bias_dtype, int64_t t0, int64_t t1, int32_t *ids,
                    float *weights, void *scratch);

#endif
