/* The quantization schemes: one row per weight format. The forward path is the same for every
 * row; only the row's block shapes and its kernels (looked up by weight_format) differ. */
#include "moe/plan.h"

static const mxm_scheme schemes[MXM_WFMT_COUNT_] = {
    [MXM_WFMT_MXFP8] = {MXM_WFMT_MXFP8, "mxfp8", 1, 1, 32, 32, true},
    [MXM_WFMT_FP8_BLOCK] = {MXM_WFMT_FP8_BLOCK, "fp8_block", 1, 128, 128, 128, false},
    [MXM_WFMT_BF16] = {MXM_WFMT_BF16, "bf16", 2, 0, 0, 32, true},
    [MXM_WFMT_F32] = {MXM_WFMT_F32, "f32", 4, 0, 0, 32, true},
};

const mxm_scheme *mxm_scheme_get(int32_t weight_format) {
    return (weight_format >= 0 && weight_format < MXM_WFMT_COUNT_) ? &schemes[weight_format] : 0;
}
