/* AVX-512 VBMI + BF16 GEMV (decode) kernels: the avx512bf16 set of cpu_isa.def, over the avx512
 * set (twins: mxm_pack_x_dot_ref, mxm_gemv_mxfp8_dot_ref; contract in cpu_kernels.h).
 *
 * At decode every weight byte is used once per token, so the decode of a code must cost less
 * than its share of memory bandwidth; the fp32 kernels spend about ten vector instructions per
 * 32 codes on it. Here 64 codes take five: two 128-entry byte-table lookups (vpermt2b, VBMI)
 * give the high and low byte of each code's unscaled bf16 value (the 7-bit magnitude indexes the
 * tables, so E4M3 subnormals come out as normal bf16 values and the NaN code as NaN), one
 * ternary-logic op ORs in the sign, and two byte unpacks interleave them into 2 x 32 bf16 values.
 * The unpacks work inside 128-bit lanes: the first vector holds columns 16L + 0..7 of lane L,
 * the second 16L + 8..15, which is why the tokens come as dot rows in that order (pack_x_dot,
 * once per token and pass). vdpbf16ps then multiplies 32 pairs and adds them in fp32: every
 * product is exact (an E4M3 value times a tile-exact token value), and its 16 lanes split by
 * block (lanes 0-7: the chunk's first 32 columns, 8-15: the second), so one FMA per token applies
 * the two blocks' power-of-two scales to the partial sums. */
#include <immintrin.h>

#include "cpu/bf16_exact_avx512.h"
#include "cpu/cpu_kernels.h"
#include "cpu/gemv_entry.h"
#include "formats/formats.h"

/* The bf16 pattern of each E4M3 magnitude 0..127 (unscaled), split into its high and low bytes
 * (filled by mxm_cpu_init_avx512bf16; read-only afterwards). */
static _Alignas(64) uint8_t dec_hi[128], dec_lo[128];

typedef struct dot_tables {
    __m512i h0, h1, l0, l1;
} dot_tables;

MXM_AINLINE dot_tables tables_load(void) {
    return (dot_tables){_mm512_load_si512(dec_hi), _mm512_load_si512(dec_hi + 64),
                        _mm512_load_si512(dec_lo), _mm512_load_si512(dec_lo + 64)};
}

/* 64 codes -> their bf16 values in dot-row order: *wa columns 16L + 0..7, *wb 16L + 8..15 of
 * each 128-bit lane L. */
MXM_AINLINE void dec64(__m512i q, const dot_tables *t, __m512i *wa, __m512i *wb) {
    __m512i hi = _mm512_permutex2var_epi8(t->h0, q, t->h1);
    hi = _mm512_ternarylogic_epi32(hi, q, _mm512_set1_epi8((char)0x80), 0xF8); /* hi | (q & 0x80) */
    const __m512i lo = _mm512_permutex2var_epi8(t->l0, q, t->l1);
    *wa = _mm512_unpacklo_epi8(lo, hi);
    *wb = _mm512_unpackhi_epi8(lo, hi);
}

/* Scale bytes s[0..n) (n <= 16) -> 2^(s - 127) as fp32, exactly: byte 0 is the subnormal 2^-127,
 * 255 NaN; lanes past n hold 2^-127 (finite: they meet zero partial sums). */
MXM_AINLINE __m512 scales16(const uint8_t *s, int64_t n) {
    const __mmask16 in = n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
    __m512i e = _mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(in, s)), 23);
    e = _mm512_mask_mov_epi32(e, _mm512_cmpeq_epi32_mask(e, _mm512_setzero_si512()),
                              _mm512_set1_epi32(0x00400000));
    e = _mm512_mask_mov_epi32(e, _mm512_cmpeq_epi32_mask(e, _mm512_set1_epi32(0x7F800000)),
                              _mm512_set1_epi32(0x7FC00000));
    return _mm512_castsi512_ps(e);
}

/* The products of NT tokens x NR rows out of their 16-lane accumulators: one lane tree for every
 * row count, so a token's sums do not depend on how many tokens (and so rows per call) share the
 * call. */
#define dot_store(acc, NT, NR, out, ldo)                                                           \
    _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) {                                         \
        float r[4];                                                                                \
        _mm_storeu_ps(r, reduce4(acc[t][0], acc[t][1 % NR], acc[t][2 % NR], acc[t][3 % NR]));      \
        _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) out[t * ldo + j] = r[j];              \
    }

/* Columns c .. c + 64 (in: the columns that exist) of NT tokens x NR rows: per row one decode,
 * then per token two vdpbf16ps into p[t][j]; prefetches the same columns pf bytes on. */
#define dot_chunk(NT, NR, c, in, pf, p)                                                            \
    do {                                                                                           \
        __m512i xa[NT], xb[NT];                                                                    \
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) {                                     \
            xa[t] = _mm512_loadu_si512(x[t] + (c));                                                \
            xb[t] = _mm512_loadu_si512(x[t] + (c) + 32);                                           \
        }                                                                                          \
        _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) {                                     \
            _mm_prefetch((const char *)(w[j] + (c) + (pf)), _MM_HINT_T0);                          \
            __m512i wa, wb;                                                                        \
            dec64(_mm512_maskz_loadu_epi8(in, w[j] + (c)), &tb, &wa, &wb);                         \
            _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) {                                 \
                p[t][j] = _mm512_dpbf16_ps(p[t][j], (__m512bh)wa, (__m512bh)xa[t]);                \
                p[t][j] = _mm512_dpbf16_ps(p[t][j], (__m512bh)wb, (__m512bh)xb[t]);                \
            }                                                                                      \
        }                                                                                          \
    } while (0)

/* MXFP8, NT tokens x NR rows: per 64 columns the chunk's products, then per token and row one FMA
 * with the chunk's two block scales (lanes 0-7, 8-15 of sv[j] permuted by idx). */
#define DEFINE_DOT(NT, NR)                                                                         \
    __attribute__((noinline)) static void gemv_dot_##NT##_##NR(                                    \
        const uint8_t *const *w, const void *const *s, int64_t k, const uint16_t *const *x,        \
        const float *const *xs, float *out, int64_t ldo) {                                         \
        (void)xs;                                                                                  \
        const dot_tables tb = tables_load();                                                       \
        __m512 acc[NT][NR], sv[NR];                                                                \
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++)                                       \
            _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) acc[t][j] = _mm512_setzero_ps();  \
        _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) sv[j] =                               \
            _mm512_setzero_ps(); /* set at column 0 */                                             \
        const int64_t nkb = k / MXM_MX_BLOCK;                                                      \
        /* the same columns NR rows further on: the next call's rows */                            \
        const int64_t pf = NR > 1 ? (w[1] - w[0]) * NR : k;                                        \
        const __m512i idx0 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);     \
        __m512i idx = idx0;                                                                        \
        for (int64_t c = 0; c < k; c += 64) {                                                      \
            const int64_t kb = c / MXM_MX_BLOCK;                                                   \
            if ((kb & 15) == 0) {                                                                  \
                _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) sv[j] =                       \
                    scales16((const uint8_t *)s[j] + kb, nkb - kb);                                \
                idx = idx0;                                                                        \
            }                                                                                      \
            const __mmask64 in = k - c >= 64 ? ~0ull : 0xFFFFFFFFull;                              \
            __m512 p[NT][NR];                                                                      \
            _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++)                                   \
                _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) p[t][j] =                     \
                    _mm512_setzero_ps();                                                           \
            dot_chunk(NT, NR, c, in, pf, p);                                                       \
            _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) {                                 \
                const __m512 sc = _mm512_permutexvar_ps(idx, sv[j]);                               \
                _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) acc[t][j] =                   \
                    _mm512_fmadd_ps(p[t][j], sc, acc[t][j]);                                       \
            }                                                                                      \
            idx = _mm512_add_epi32(idx, _mm512_set1_epi32(2));                                     \
        }                                                                                          \
        dot_store(acc, NT, NR, out, ldo);                                                          \
    }
DEFINE_DOT(1, 4)
DEFINE_DOT(2, 4)
DEFINE_DOT(3, 2)
DEFINE_DOT(4, 2)
DEFINE_DOT(1, 1)
DEFINE_DOT(2, 1)
DEFINE_DOT(3, 1)
DEFINE_DOT(4, 1)

/* DeepSeek FP8, NT tokens x NR rows: per 128-column block a fresh 16-lane partial sum of the
 * exact products (the dot rows hold values, or with xs W8A8 codes), then times the token's block
 * scale (xs) and, fused with the add, the row's block scale. */
#define DEFINE_FBDOT(NT, NR)                                                                       \
    __attribute__((noinline)) static void fbdot_##NT##_##NR(                                       \
        const uint8_t *const *w, const void *const *s, int64_t k, const uint16_t *const *x,        \
        const float *const *xs, float *out, int64_t ldo) {                                         \
        const dot_tables tb = tables_load();                                                       \
        __m512 acc[NT][NR];                                                                        \
        _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++)                                       \
            _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) acc[t][j] = _mm512_setzero_ps();  \
        const int64_t pf = NR > 1 ? (w[1] - w[0]) * NR : k;                                        \
        for (int64_t c0 = 0; c0 < k; c0 += MXM_FP8_BLOCK) {                                        \
            const int64_t b = c0 / MXM_FP8_BLOCK;                                                  \
            const int64_t c1 = k - c0 < MXM_FP8_BLOCK ? k : c0 + MXM_FP8_BLOCK;                    \
            __m512 p[NT][NR];                                                                      \
            _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++)                                   \
                _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) p[t][j] =                     \
                    _mm512_setzero_ps();                                                           \
            for (int64_t c = c0; c < c1; c += 64) {                                                \
                const __mmask64 in = c1 - c >= 64 ? ~0ull : 0xFFFFFFFFull;                         \
                dot_chunk(NT, NR, c, in, pf, p);                                                   \
            }                                                                                      \
            _Pragma("GCC unroll 4") for (int j = 0; j < NR; j++) {                                 \
                const __m512 sw = _mm512_set1_ps(((const float *)s[j])[b]);                        \
                _Pragma("GCC unroll 4") for (int t = 0; t < NT; t++) {                             \
                    const __m512 q =                                                               \
                        xs ? _mm512_mul_ps(p[t][j], _mm512_set1_ps(xs[t][b])) : p[t][j];           \
                    acc[t][j] = _mm512_fmadd_ps(q, sw, acc[t][j]);                                 \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        dot_store(acc, NT, NR, out, ldo);                                                          \
    }
DEFINE_FBDOT(1, 4)
DEFINE_FBDOT(2, 4)
DEFINE_FBDOT(3, 2)
DEFINE_FBDOT(4, 2)
DEFINE_FBDOT(1, 1)
DEFINE_FBDOT(2, 1)
DEFINE_FBDOT(3, 1)
DEFINE_FBDOT(4, 1)

typedef void (*dot_kernel)(const uint8_t *const *w, const void *const *s, int64_t k,
                           const uint16_t *const *x, const float *const *xs, float *out,
                           int64_t ldo);
/* A format's kernels by token count: [nt - 1][0] takes 4 rows (1-2 tokens) or 2 (3-4), [1] one. */
static const dot_kernel mx_kernels[4][2] = {{gemv_dot_1_4, gemv_dot_1_1},
                                            {gemv_dot_2_4, gemv_dot_2_1},
                                            {gemv_dot_3_2, gemv_dot_3_1},
                                            {gemv_dot_4_2, gemv_dot_4_1}};
static const dot_kernel fb_kernels[4][2] = {
    {fbdot_1_4, fbdot_1_1}, {fbdot_2_4, fbdot_2_1}, {fbdot_3_2, fbdot_3_1}, {fbdot_4_2, fbdot_4_1}};

/* Rows wr[0..nr) (scale rows sr) for nt (1..4) tokens through a format's kernels. */
static void dot_rows(const dot_kernel kern[4][2], const uint8_t *const *wr, const void *const *sr,
                     int nr, int64_t k, const uint16_t *const *xd, const float *const *xs, int nt,
                     float *out, int64_t ldo) {
    const int step = nt <= 2 ? 4 : 2;
    int j = 0;
    for (; j + step <= nr; j += step)
        kern[nt - 1][0](wr + j, sr + j, k, xd, xs, out + j, ldo);
    for (; j < nr; j++)
        kern[nt - 1][1](wr + j, sr + j, k, xd, xs, out + j, ldo);
}

static void gemv_mxfp8_dot_avx512bf16(const void *wv, const void *sv, int64_t k, int64_t r0,
                                      int64_t rstep, int nr, const uint16_t *const *xd,
                                      const float *const *xs, int nt, float *out, int64_t ldo) {
    const uint8_t *wr[4];
    const void *sr[4];
    mxm_gemv_mx_rows(wv, sv, k, r0, rstep, nr, wr, sr);
    dot_rows(mx_kernels, wr, sr, nr, k, xd, xs, nt, out, ldo);
}

static void gemv_fp8block_dot_avx512bf16(const void *wv, const void *sv, int64_t k, int64_t r0,
                                         int64_t rstep, int nr, const uint16_t *const *xd,
                                         const float *const *xs, int nt, float *out, int64_t ldo) {
    const uint8_t *wr[4];
    const void *sr[4];
    mxm_gemv_fb_rows(wv, sv, k, r0, rstep, nr, wr, sr);
    dot_rows(fb_kernels, wr, sr, nr, k, xd, xs, nt, out, ldo);
}

/* Per 64 columns: four vectors of 16 values, converted in pairs (columns 16L + 0..15 of lanes
 * L = 0, 1 and 2, 3), then the lanes' low and high halves gathered (128-bit lanes 0, 2 of both
 * pairs, then 1, 3). */
static bool pack_x_dot_avx512bf16(const float *x, int64_t k, uint16_t *xd) {
    __mmask16 bad = 0;
    for (int64_t c = 0; c < k; c += 64) {
        __m512 v[4];
        for (int L = 0; L < 4; L++) {
            v[L] = c + 16 * L < k ? _mm512_loadu_ps(x + c + 16 * L) : _mm512_setzero_ps();
            bad |= inexact16(v[L]);
        }
        const __m512i u01 = to_bf16x32(v[0], v[1]), u23 = to_bf16x32(v[2], v[3]);
        _mm512_storeu_si512(xd + c, _mm512_shuffle_i64x2(u01, u23, 0x88));
        _mm512_storeu_si512(xd + c + 32, _mm512_shuffle_i64x2(u01, u23, 0xDD));
    }
    return !bad;
}

/* The avx512bf16 set of cpu_isa.def (on top of the avx512 set). */
void mxm_cpu_init_avx512bf16(mxm_cpu_kernels *k) {
    for (int m = 0; m < 128; m++) {
        const uint16_t b =
            mxm_bf16_rne(mxm_e4m3_decode((uint8_t)m)); /* exact: 4 significant bits */
        dec_hi[m] = (uint8_t)(b >> 8), dec_lo[m] = (uint8_t)b;
    }
    k->wfmt[MXM_WFMT_MXFP8].gemv_dot = gemv_mxfp8_dot_avx512bf16;
    k->wfmt[MXM_WFMT_FP8_BLOCK].gemv_dot = gemv_fp8block_dot_avx512bf16;
    k->pack_x_dot = pack_x_dot_avx512bf16;
}
