/* AVX-512 BF16 kernels: the avx512bf16 set of cpu_isa.def (over the avx512 set). The packed GEMM
 * of prefill for MXFP8 weights times activations that are exactly bf16 (W8A8 MXFP8: every value
 * is an E4M3 code times a power of two), with vdpbf16ps: 32 multiply-adds per instruction, twice
 * the fp32 FMA's 16, and half the panel bytes.
 *
 * Exactness (the contract in cpu_kernels.h): the weights decode as in gemm_avx512.c (E4M3 through
 * fp16, times 2^(b-119) exactly for the admitted scale bytes 76..240) and narrow to bf16 with
 * vcvtne2ps2bf16, exact for values of at most 4 significant bits; the activations narrow the same
 * way, exact because the caller checked them (mxm_rows_bf16_ok). Products of two such bf16 are
 * exact in fp32 and, with both factors zero or >= 2^-60 in magnitude, never subnormal, so the
 * instruction's DAZ/FTZ never changes a value: each lane adds exact products in fp32, rounded to
 * nearest even, an fp32 summation in another order, within the same bounds as gemm_panel16. */
#include <immintrin.h>
#include <string.h>

#include "cpu/cpu_kernels.h"
#include "formats/formats.h"

#define MXM_AINLINE static inline __attribute__((always_inline))

/* 32 codes at q times 2^(b-127) (76 <= b <= 240), as 32 bf16. */
MXM_AINLINE __m512bh dec32_bf16(const uint8_t *q, __m512 f) {
    __m512i h = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)q));
    h = _mm512_and_si512(_mm512_slli_epi16(h, 7), _mm512_set1_epi16((short)0xBF80));
    const __m512 lo = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(h)), f);
    const __m512 hi = _mm512_mul_ps(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)), f);
    return _mm512_cvtne2ps_pbh(hi, lo);
}

/* False when a block of the row has a scale byte outside 76..240 or a NaN code. */
static bool row_ok(const uint8_t *q, const uint8_t *s, int64_t k) {
    const __m256i m = _mm256_set1_epi8(0x7F);
    for (int64_t c = 0; c < k; c += MXM_MX_BLOCK) {
        const uint8_t b = s[c / MXM_MX_BLOCK];
        if (b < 76 || b > 240) return false;
        if (_mm256_cmpeq_epi8_mask(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)(q + c)), m), m)) return false;
    }
    return true;
}

static bool pack_mxfp8_panel_bf16_avx512bf16(const uint8_t *w, const uint8_t *ws, int64_t k, int64_t r0,
                                             int64_t rstep, int nr, uint16_t *panel) {
    const int64_t kb = k / MXM_MX_BLOCK;
    for (int j = 0; j < nr; j++)
        if (!row_ok(w + (r0 + j * rstep) * k, ws + (r0 + j * rstep) * kb, k)) return false;
    for (int j = 0; j < 16; j++) {
        uint16_t *out = panel + j * k;
        if (j >= nr) {
            memset(out, 0, (size_t)k * 2);
            continue;
        }
        const int64_t r = r0 + j * rstep;
        const uint8_t *q = w + r * k, *s = ws + r * kb;
        for (int64_t c = 0; c < k; c += MXM_MX_BLOCK) {
            if ((c & 63) == 0) _mm_prefetch((const char *)(q + c + 2 * rstep * k), _MM_HINT_T0);
            const __m512 f = _mm512_castsi512_ps(_mm512_set1_epi32((int)((s[c / MXM_MX_BLOCK] + 8u) << 23)));
            _mm512_storeu_si512(out + c, (__m512i)dec32_bf16(q + c, f));
        }
    }
    return true;
}

/* {sum a0, sum a1, sum a2, sum a3} (as gemm_avx512.c). */
MXM_AINLINE __m128 reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
    const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
    const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
    const __m512 u = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m256 v = _mm256_add_ps(_mm512_castps512_ps256(u), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(u), 1)));
    return _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
}

/* MT tokens (pre-narrowed bf16 rows xb[m], stride KC) x 4 panel rows over columns [k0, k1):
 * per 32 columns four panel loads, MT activation loads and 4*MT vdpbf16ps into 4*MT
 * accumulators; the sums are stored (k0 == 0) or added to c. */
#define KC 512
#define DEFINE_MICRO(MT)                                                                            \
    static void micro_##MT(const uint16_t *xb, const uint16_t *p, int64_t k, int64_t k0, int64_t k1, \
                           float *c, int64_t ldc) {                                                 \
        __m512 acc[MT][4];                                                                          \
        for (int m = 0; m < MT; m++)                                                                \
            for (int j = 0; j < 4; j++) acc[m][j] = _mm512_setzero_ps();                            \
        for (int64_t i = k0; i < k1; i += 32) {                                                     \
            const __m512bh w0 = (__m512bh)_mm512_loadu_si512(p + i);                                \
            const __m512bh w1 = (__m512bh)_mm512_loadu_si512(p + k + i);                            \
            const __m512bh w2 = (__m512bh)_mm512_loadu_si512(p + 2 * k + i);                        \
            const __m512bh w3 = (__m512bh)_mm512_loadu_si512(p + 3 * k + i);                        \
            for (int m = 0; m < MT; m++) {                                                          \
                const __m512bh x = (__m512bh)_mm512_loadu_si512(xb + m * KC + (i - k0));            \
                acc[m][0] = _mm512_dpbf16_ps(acc[m][0], x, w0);                                     \
                acc[m][1] = _mm512_dpbf16_ps(acc[m][1], x, w1);                                     \
                acc[m][2] = _mm512_dpbf16_ps(acc[m][2], x, w2);                                     \
                acc[m][3] = _mm512_dpbf16_ps(acc[m][3], x, w3);                                     \
            }                                                                                       \
        }                                                                                           \
        for (int m = 0; m < MT; m++) {                                                              \
            __m128 v = reduce4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);                         \
            if (k0) v = _mm_add_ps(v, _mm_loadu_ps(c + m * ldc));                                   \
            _mm_storeu_ps(c + m * ldc, v);                                                          \
        }                                                                                           \
    }
DEFINE_MICRO(1)
DEFINE_MICRO(2)
DEFINE_MICRO(3)
DEFINE_MICRO(4)
DEFINE_MICRO(5)
DEFINE_MICRO(6)

static void gemm_panel16_bf16_avx512bf16(const float *const *a, int mr, const uint16_t *panel, int64_t k,
                                         float *c, int64_t ldc) {
    uint16_t xb[6 * KC] __attribute__((aligned(64))); /* the tokens' columns [k0, k1) as bf16 */
    for (int m0 = 0; m0 < mr; m0 += 6) {
        const int mt = mr - m0 < 6 ? mr - m0 : 6;
        for (int64_t k0 = 0; k0 < k; k0 += KC) {
            const int64_t k1 = k - k0 < KC ? k : k0 + KC;
            for (int m = 0; m < mt; m++)
                for (int64_t i = k0; i < k1; i += 32)
                    _mm512_store_si512(xb + m * KC + (i - k0),
                                       (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(a[m0 + m] + i + 16),
                                                                    _mm512_loadu_ps(a[m0 + m] + i)));
            for (int j = 0; j < 16; j += 4) {
                const uint16_t *p = panel + j * k;
                float *cc = c + m0 * ldc + j;
                switch (mt) {
                case 6: micro_6(xb, p, k, k0, k1, cc, ldc); break;
                case 5: micro_5(xb, p, k, k0, k1, cc, ldc); break;
                case 4: micro_4(xb, p, k, k0, k1, cc, ldc); break;
                case 3: micro_3(xb, p, k, k0, k1, cc, ldc); break;
                case 2: micro_2(xb, p, k, k0, k1, cc, ldc); break;
                default: micro_1(xb, p, k, k0, k1, cc, ldc); break;
                }
            }
        }
    }
}

/* The avx512bf16 set of cpu_isa.def (on top of the avx512 set). */
void mxm_cpu_init_avx512bf16(mxm_cpu_kernels *k) {
    k->pack_mxfp8_panel_bf16 = pack_mxfp8_panel_bf16_avx512bf16;
    k->gemm_panel16_bf16 = gemm_panel16_bf16_avx512bf16;
}
