#include <cpuid.h>
#include <stddef.h>

#include "core/core.h"
#include "cpu/cpu_kernels.h"
#include "formats/formats.h"

void mxm_cpu_kernels_init_ref(mxm_cpu_kernels *k) {
    k->name = "ref";
    k->mx_quantize_f32 = mxm_mx_quantize_f32_ref;
    k->mx_quantize_bf16 = mxm_mx_quantize_bf16_ref;
    k->mx_dequantize_f32 = mxm_mx_dequantize_f32_ref;
    k->mx_fakequant_f32 = mxm_mx_fakequant_f32_ref;
    k->pack_mxfp8_panel = mxm_pack_mxfp8_panel_ref;
    k->gemm_panel16 = mxm_gemm_panel16_ref;
    k->gemv_mxfp8 = mxm_gemv_mxfp8_ref;
    k->pack_fp8block_panel = mxm_pack_fp8block_panel_ref;
    k->gemv_fp8block = mxm_gemv_fp8block_ref;
}

/* F16C through cpuid: clang 14's __builtin_cpu_supports does not know "f16c". */
static bool cpu_has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

static mxm_cpu_kernels ref_set, best_set;
static int initialized;

/* Quantize-then-decode through the best set's own row kernels, one block at a time (the SIMD
 * sets provide quantize and dequantize; this composes them). */
static void fakequant_best(const float *x, int64_t n, float *out, int rule) {
    uint8_t q[MXM_MX_BLOCK], s;
    for (int64_t b = 0; b < n / MXM_MX_BLOCK; b++) {
        best_set.mx_quantize_f32(x + b * MXM_MX_BLOCK, MXM_MX_BLOCK, q, &s, rule);
        best_set.mx_dequantize_f32(q, &s, MXM_MX_BLOCK, out + b * MXM_MX_BLOCK);
    }
}

static void init_sets(void) {
    mxm_cpu_kernels_init_ref(&ref_set);
    best_set = ref_set;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c()) {
        mxm_cpu_quant_init_avx2(&best_set);
        mxm_cpu_gemm_init_avx2(&best_set);
        best_set.name = "avx2";
        /* AVX-512 replaces the format kernels; the GEMM kernels stay AVX2 for now. */
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl")) {
            mxm_cpu_quant_init_avx512(&best_set);
            best_set.name = "avx512";
        }
        best_set.mx_fakequant_f32 = fakequant_best;
    }
}

const mxm_cpu_kernels *mxm_cpu_kernels_get(bool force_ref) {
    if (!__atomic_load_n(&initialized, __ATOMIC_ACQUIRE)) {
#pragma omp critical(mxm_cpu_kernels_init)
        if (!initialized) {
            init_sets();
            __atomic_store_n(&initialized, 1, __ATOMIC_RELEASE);
        }
    }
    return (force_ref || mxm_env_forces_ref()) ? &ref_set : &best_set;
}
