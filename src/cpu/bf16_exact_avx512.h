/* The tile-exact rule (cpu_kernels.h) on AVX-512 vectors, and the bf16 copies it allows: shared
 * by the sets that multiply bf16 copies of fp32 values (avx512bf16's GEMV, amx's tiles). Include
 * only from files compiled with AVX512F, AVX512BW and AVX512BF16. */
#ifndef MXM_CPU_BF16_EXACT_AVX512_H
#define MXM_CPU_BF16_EXACT_AVX512_H

#include "cpu/avx512_util.h"

/* Lanes of 16 fp32 values that are not tile-exact: nonzero and not bf16-exact or outside
 * [2^-50, 2^50) in magnitude (Inf and NaN included). */
MXM_AINLINE __mmask16 inexact16(__m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF));
    const __mmask16 nz = _mm512_test_epi32_mask(a, a);
    const __mmask16 low = _mm512_test_epi32_mask(u, _mm512_set1_epi32(0xFFFF));
    const __mmask16 out =
        _mm512_cmpge_epu32_mask(_mm512_sub_epi32(a, _mm512_set1_epi32(0x26800000)),
                                _mm512_set1_epi32(0x58800000 - 0x26800000));
    return nz & (low | out);
}

/* 32 fp32 values -> 32 bf16 (exact where inexact16 is clear, so rounding = truncation). */
MXM_AINLINE __m512i to_bf16x32(__m512 lo, __m512 hi) {
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
}

/* Lanes of 32 bf16 values that are not tile-exact: nonzero and outside [2^-50, 2^50) in
 * magnitude (Inf and NaN included). */
MXM_AINLINE __mmask32 inexact_bf16x32(__m512i v) {
    const __m512i a = _mm512_and_si512(v, _mm512_set1_epi16(0x7FFF));
    const __mmask32 nz = _mm512_test_epi16_mask(a, a);
    const __mmask32 out = _mm512_cmpge_epu16_mask(_mm512_sub_epi16(a, _mm512_set1_epi16(0x2680)),
                                                  _mm512_set1_epi16(0x5880 - 0x2680));
    return nz & out;
}

#endif
