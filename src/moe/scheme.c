/* The quantization schemes: one row per weight format. The forward path is the same for every
 * row; only the row's block shapes and its kernels (looked up by weight_format) differ. */
#include "core/core.h"
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

int64_t mxm_weight_data_bytes(int32_t fmt, int64_t rows, int64_t cols) {
    const mxm_scheme *sc = mxm_scheme_get(fmt);
    return sc && rows >= 0 && cols >= 0 ? mxm_mul3_i64(rows, cols, sc->code_bytes) : -1;
}

int64_t mxm_weight_scale_bytes(int32_t fmt, int64_t rows, int64_t cols) {
    const mxm_scheme *sc = mxm_scheme_get(fmt);
    if (!sc || rows < 0 || cols < 0) return -1;
    if (!sc->scale_rows) return 0;
    return mxm_mul3_i64(mxm_ceil_div(rows, sc->scale_rows), mxm_ceil_div(cols, sc->scale_cols),
                        sc->act_scale_e8m0 ? 1 : 4);
}
