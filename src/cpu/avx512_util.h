/* Small AVX-512 helpers shared by the sets compiled with AVX512F (gemm_avx512.c and the sets
 * above it). */
#ifndef MXM_CPU_AVX512_UTIL_H
#define MXM_CPU_AVX512_UTIL_H

#include <immintrin.h>

#define MXM_AINLINE static inline __attribute__((always_inline))

/* The lane sums of four vectors, {sum a0, sum a1, sum a2, sum a3}: one shuffle tree for the
 * four (13 instructions instead of four separate reductions). */
MXM_AINLINE __m128 reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 v =
        _mm256_add_ps(_mm512_castps512_ps256(u),
                      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(u), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
}

#endif
