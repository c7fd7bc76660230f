/* Scalar reference MXFP8 row kernels (SPEC 2.2). The SIMD twins must match them bit for bit. */
#include "cpu/cpu_kernels.h"
#include "formats/formats.h"

/* One 32-block of fp32 values -> scale byte and 32 codes. */
static void mx_quantize_block(const float *x, uint8_t *q, uint8_t *s, int rule) {
    float amax = 0.0f;
    int special = 0;
    for (int i = 0; i < MXM_MX_BLOCK; i++) {
        const uint32_t a = mxm_f32_bits(x[i]) & 0x7FFFFFFFu;
        if (a >= 0x7F800000u) special = 1;
        const float v = mxm_bits_f32(a);
        if (v > amax) amax = v;
    }
    if (special) {
        *s = MXM_E8M0_NAN;
        for (int i = 0; i < MXM_MX_BLOCK; i++) q[i] = MXM_E4M3_NAN;
        return;
    }
    const uint8_t b = mxm_mx_scale_byte(amax, rule);
    *s = b;
    if (b == 0) { /* flushed to +-0 */
        for (int i = 0; i < MXM_MX_BLOCK; i++) q[i] = (uint8_t)((mxm_f32_bits(x[i]) >> 24) & 0x80);
        return;
    }
    const float inv = mxm_e8m0_inverse(b);
    for (int i = 0; i < MXM_MX_BLOCK; i++) q[i] = mxm_e4m3_rne_sat(x[i] * inv);
}

void mxm_mx_quantize_f32_ref(const float *x, int64_t n, uint8_t *q, uint8_t *s, int rule) {
    for (int64_t b = 0; b < n / MXM_MX_BLOCK; b++)
        mx_quantize_block(x + b * MXM_MX_BLOCK, q + b * MXM_MX_BLOCK, s + b, rule);
}

void mxm_mx_quantize_bf16_ref(const uint16_t *x, int64_t n, uint8_t *q, uint8_t *s, int rule) {
    float tmp[MXM_MX_BLOCK];
    for (int64_t b = 0; b < n / MXM_MX_BLOCK; b++) {
        for (int i = 0; i < MXM_MX_BLOCK; i++) tmp[i] = mxm_bf16_decode(x[b * MXM_MX_BLOCK + i]);
        mx_quantize_block(tmp, q + b * MXM_MX_BLOCK, s + b, rule);
    }
}

void mxm_mx_dequantize_f32_ref(const uint8_t *q, const uint8_t *s, int64_t n, float *out) {
    for (int64_t i = 0; i < n; i++)
        out[i] = mxm_e4m3_decode(q[i]) * mxm_e8m0_decode(s[i / MXM_MX_BLOCK]);
}

void mxm_mx_fakequant_f32_ref(const float *x, int64_t n, float *out, int rule) {
    uint8_t q[MXM_MX_BLOCK], s;
    for (int64_t b = 0; b < n / MXM_MX_BLOCK; b++) {
        mx_quantize_block(x + b * MXM_MX_BLOCK, q, &s, rule);
        mxm_mx_dequantize_f32_ref(q, &s, MXM_MX_BLOCK, out + b * MXM_MX_BLOCK);
    }
}
