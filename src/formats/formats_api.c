/* Public scalar format functions and dtype names: thin wrappers over formats.h. */
#include "formats/formats.h"
#include "mxmoe.h"

uint8_t mxm_e4m3_from_f32(float x) { return mxm_e4m3_rne_sat(x); }
float mxm_e4m3_to_f32(uint8_t code) { return mxm_e4m3_decode(code); }
uint8_t mxm_e5m2_from_f32(float x) { return mxm_e5m2_rne_sat(x); }
float mxm_e5m2_to_f32(uint8_t code) { return mxm_e5m2_decode(code); }
float mxm_e8m0_to_f32(uint8_t code) { return mxm_e8m0_decode(code); }
uint16_t mxm_bf16_from_f32(float x) { return mxm_bf16_rne(x); }
float mxm_bf16_to_f32(uint16_t bits) { return mxm_bf16_decode(bits); }
uint8_t mxm_mxfp8_scale_for_amax(float amax, int32_t rule) { return mxm_mx_scale_byte(amax, rule); }

static const struct {
    const char *name;
    int32_t size;
} dtype_info[MXM_DT_COUNT_] = {
    [MXM_DT_F32] = {"F32", 4},     [MXM_DT_BF16] = {"BF16", 2},    [MXM_DT_F16] = {"F16", 2},
    [MXM_DT_F64] = {"F64", 8},     [MXM_DT_E4M3] = {"F8_E4M3", 1}, [MXM_DT_E5M2] = {"F8_E5M2", 1},
    [MXM_DT_E8M0] = {"F8_E8M0", 1}, [MXM_DT_U8] = {"U8", 1},       [MXM_DT_I8] = {"I8", 1},
    [MXM_DT_I32] = {"I32", 4},     [MXM_DT_I64] = {"I64", 8},
};

int32_t mxm_dtype_size(int32_t dtype) {
    return (dtype >= 0 && dtype < MXM_DT_COUNT_) ? dtype_info[dtype].size : 0;
}

const char *mxm_dtype_name(int32_t dtype) {
    return (dtype >= 0 && dtype < MXM_DT_COUNT_) ? dtype_info[dtype].name : "?";
}
