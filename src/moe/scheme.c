/* The weight formats' traits: one row per weight format (its name, code and scale block sizes and
 * bytes, the W8A8 activation rule that goes with it). The forward path is the same for every row;
 * only the row's sizes and its kernels differ (the CPU's: the kernel set's wfmt[] row, chosen at
 * plan time, src/cpu/cpu_kernels.h). A new format is a row here plus its kernels. */
#include <stdio.h>

#include "core/core.h"
#include "formats/formats.h"
#include "moe/plan.h"

static const mxm_scheme schemes[MXM_WFMT_COUNT_] = {
    [MXM_WFMT_MXFP8] = {.weight_format = MXM_WFMT_MXFP8,
                        .name = "mxfp8",
                        .code_bytes = 1,
                        .scale_rows = 1,
                        .scale_cols = MXM_MX_BLOCK,
                        .scale_bytes = 1,
                        .act_block = MXM_MX_BLOCK,
                        .act_scale_e8m0 = true},
    [MXM_WFMT_FP8_BLOCK] = {.weight_format = MXM_WFMT_FP8_BLOCK,
                            .name = "fp8_block",
                            .code_bytes = 1,
                            .scale_rows = MXM_FP8_BLOCK,
                            .scale_cols = MXM_FP8_BLOCK,
                            .scale_bytes = 4,
                            .act_block = MXM_FP8_BLOCK,
                            .act_scale_e8m0 = false},
    [MXM_WFMT_BF16] = {.weight_format = MXM_WFMT_BF16,
                       .name = "bf16",
                       .code_bytes = 2,
                       .act_block = MXM_MX_BLOCK,
                       .act_scale_e8m0 = true},
    [MXM_WFMT_F32] = {.weight_format = MXM_WFMT_F32,
                      .name = "f32",
                      .code_bytes = 4,
                      .act_block = MXM_MX_BLOCK,
                      .act_scale_e8m0 = true},
};

const mxm_scheme *mxm_scheme_get(int32_t weight_format) {
    return (weight_format >= 0 && weight_format < MXM_WFMT_COUNT_) ? &schemes[weight_format] : 0;
}

const char *mxm_scheme_names(char *buf, size_t n) {
    size_t len = 0;
    buf[0] = 0;
    for (int32_t f = 0; f < MXM_WFMT_COUNT_ && len < n; f++)
        len += (size_t)snprintf(buf + len, n - len, "%s%s (%d)", f ? ", " : "", schemes[f].name, f);
    return buf;
}

const char *mxm_weight_format_name(int32_t fmt) {
    const mxm_scheme *sc = mxm_scheme_get(fmt);
    return sc ? sc->name : NULL;
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
                        sc->scale_bytes);
}
