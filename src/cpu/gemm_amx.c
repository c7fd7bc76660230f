/* AMX-BF16 expert-GEMM kernels: the amx set of cpu_isa.def, over the avx512 set (twins of the
 * tile functions of gemm_ref.c; layouts and the tile-exact rule in cpu_kernels.h).
 *
 * The prefill product of an expert is one tile instruction per 16 weight rows x 32 columns x 16
 * tokens: TDPBF16PS multiplies bf16 pairs and adds in fp32. Its inputs are bf16 copies made only
 * where they are exact (an MXFP8 weight is an E4M3 value times a power of two, 4 significant
 * bits; W8A8 MXFP8 activations are too; weight-only bf16 inputs and BF16 weights are bf16
 * already; DeepSeek FP8 puts its codes on the tiles and applies its scales to 128-column partial
 * sums), so the only differences from the fp32 kernels are the order of the fp32 sums (for
 * DeepSeek FP8 also where the scales round, docs/formats.md) and the unit's flushing of
 * subnormal inputs and results, which the tile-exact range rules out (cpu_kernels.h). Weights
 * are the A operand (16 rows x 32 columns, plain row order: the decode writes 64 bytes per row
 * and block, no transposition), tokens the B operand (VNNI pairs, transposed once per work item
 * from the fp32 rows); the 16 x 16 result tile is weight rows x tokens and is transposed on the
 * way out.
 *
 * MXFP8 -> bf16, 32 codes at a time in 16-bit lanes, exactly: a normal E4M3 code 0 eeee mmm
 * shifted left by 4 is the bf16 pattern of its value times 2^-120, so adding (b - 7) << 7 to the
 * exponent field gives e4m3 * 2^(b-127) (b in 86..168 keeps the field in 79..176: no carry into
 * the sign, no subnormal, no overflow); the sign is the code's bit 7. Codes with exponent 0 (zero,
 * and subnormal m * 2^-9) do not fit that rule: a 16 x 32 tile that holds one is decoded again
 * with masks (zero stays +-0, subnormals from an 8-entry vpermw table with the same offset);
 * quantized weights almost never have them. A scale byte outside 86..168 or a NaN code makes
 * the panel fail its exactness check (the caller uses the fp32 panels). The tile unit multiplies
 * one 32-column block while the next one decodes. */
#include <immintrin.h>
#include <string.h>

#include "cpu/bf16_exact_avx512.h"
#include "cpu/cpu_kernels.h"
#include "formats/formats.h"

/* Tile instructions as inline asm with memory clobbers: GCC 12's intrinsics declare neither the
 * memory tileloadd reads nor all 64 bytes ldtilecfg reads, so stores just before them could be
 * moved or dropped. */
#define TILE_LOAD(t, base)                                                                         \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"(base), "r"(64L) : "memory")
#define TILE_STORE(t, base)                                                                        \
    __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"(base), "r"(64L) : "memory")
#define TILE_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::)
#define TILE_DP(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)

/* Every tile 16 rows x 64 bytes (palette 1): A 16 weight rows x 32 bf16, B 16 column pairs x
 * 16 tokens, C 16 x 16 fp32. Loaded per GEMM call and released after it, so a thread leaves no
 * tile state behind (other code on the thread may configure tiles its own way). */
static void tiles_configure(void) {
    _Alignas(64) uint8_t cfg[64];
    memset(cfg, 0, sizeof cfg);
    cfg[0] = 1;
    for (int t = 0; t < 8; t++) {
        cfg[16 + 2 * t] = 64; /* colsb, little-endian uint16 */
        cfg[48 + t] = 16;     /* rows */
    }
    __asm__ volatile("ldtilecfg %0" ::"m"(*(const uint8_t(*)[64])cfg) : "memory");
}

MXM_AINLINE void tiles_release(void) {
    __asm__ volatile("tilerelease" ::: "memory");
}

/* ---- 16 x 16 transposition of 32-bit elements (r[i] holds row i; afterwards column i) -------- */

MXM_AINLINE void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    /* each 128-bit lane L of r[4g + c] now holds rows 4g..4g+3 of column 4L + c */
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xDD);
    }
}

/* ---- weights ------------------------------------------------------------------------------- */

/* bf16 patterns of the subnormal E4M3 magnitudes m * 2^-9 (m = 1..7) less 120 << 7, indexed by
 * the code's low 5 bits (its exponent bits are zero there); entry 0 unused (zero codes are
 * masked out). Added to off_tbl[b] they give m * 2^-9 * 2^(b-127). */
static const int16_t sub_tbl[32] = {0, -0x0100, -0x0080, -0x0040, 0x0000, 0x0020, 0x0040, 0x0060};

/* (b - 7) << 7 in all 32 lanes: the exponent offset of scale byte b (filled by mxm_cpu_init_amx;
 * only the lines of the bytes in use are ever read). */
static _Alignas(64) int16_t off_tbl[256][32];

/* The 32 codes at q with a normal exponent (1..15) -> 32 bf16 patterns, off_tbl[b] the block's
 * offset; *e0 gets the lanes whose exponent is 0 (zero and subnormal codes, wrong here: the
 * caller redoes the block with dec32_exact), *magmax the largest magnitude << 4 (0x7F0: a NaN
 * code). Five vector instructions and a store per 32 weights. */
MXM_AINLINE __m512i dec32_normal(const uint8_t *q, const int16_t *off, __mmask32 *e0,
                                 __m512i *magmax) {
    const __m512i v = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)q));
    const __m512i mag = _mm512_and_si512(_mm512_slli_epi16(v, 4), _mm512_set1_epi16(0x07F0));
    *e0 = _kor_mask32(*e0, _mm512_testn_epi16_mask(mag, _mm512_set1_epi16(0x0780)));
    *magmax = _mm512_max_epu16(*magmax, mag);
    const __m512i r = _mm512_add_epi16(mag, _mm512_load_si512(off));
    /* r | (v & 0x8000): the sign (v is the sign-extended code) */
    return _mm512_ternarylogic_epi32(r, v, _mm512_set1_epi16((short)0x8000), 0xF8);
}

/* Every code, zero and subnormal ones included (the rare blocks that hold them). */
MXM_AINLINE __m512i dec32_exact(const uint8_t *q, const int16_t *off, __m512i tbl) {
    const __m512i v = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)q));
    const __m512i mag = _mm512_and_si512(_mm512_slli_epi16(v, 4), _mm512_set1_epi16(0x07F0));
    const __mmask32 nz = _mm512_test_epi16_mask(v, _mm512_set1_epi16(0x7F));
    const __mmask32 sub = _mm512_mask_testn_epi16_mask(nz, v, _mm512_set1_epi16(0x78));
    __m512i r = _mm512_mask_permutexvar_epi16(mag, sub, v, tbl);
    r = _mm512_mask_add_epi16(r, nz, r, _mm512_load_si512(off));
    return _mm512_ternarylogic_epi32(r, v, _mm512_set1_epi16((short)0x8000), 0xF8);
}

/* The 16 rows of an MXFP8 tile panel, decoded one 32-column block at a time (so the tile unit
 * can multiply block kb while the next one decodes). Rows past nr are zero. */
typedef struct mx_rows {
    const uint8_t *q, *s; /* row r0's codes and scale bytes */
    int64_t qstep, sstep; /* from one panel row to the next */
    int64_t skb;          /* from one 32-column block to the next: 1, or 0 (one byte for all) */
    int nr;
    bool bad;       /* a scale byte outside 86..168 */
    __m512i magmax; /* see dec32_normal */
} mx_rows;

static mx_rows mx_rows_of(const uint8_t *w, const uint8_t *ws, int64_t k, int64_t r0, int64_t rstep,
                          int nr) {
    const int64_t nkb = k / MXM_MX_BLOCK;
    mx_rows m = {w + r0 * k, ws + r0 * nkb,         rstep * k, rstep * nkb, 1, nr,
                 false,      _mm512_setzero_si512()};
    __mmask64 bad = 0;
    for (int j = 0; j < nr; j++)
        for (int64_t c = 0; c < nkb; c += 64) { /* the row's scale bytes, 64 at a time */
            const __mmask64 in = nkb - c >= 64 ? ~0ull : (1ull << (nkb - c)) - 1;
            const __m512i b = _mm512_maskz_loadu_epi8(in, m.s + j * m.sstep + c);
            bad |= _mm512_mask_cmpgt_epu8_mask(in, _mm512_sub_epi8(b, _mm512_set1_epi8(86)),
                                               _mm512_set1_epi8(168 - 86));
        }
    m.bad = bad != 0;
    return m;
}

/* Block kb of the 16 rows -> the tile at dst (16 x 32 bf16). Prefetches the same columns of the
 * next panel (16 rows on: the next call's rows in a work item) into L2. */
MXM_AINLINE void mx_rows_decode(mx_rows *m, int64_t kb, uint16_t *dst) {
    __mmask32 e0 = 0;
    __m512i magmax = m->magmax;
    const uint8_t *q = m->q + kb * 32, *s = m->s + kb * m->skb;
    const int64_t pf = 16 * m->qstep;
    if (m->nr == 16) {
        for (int j = 0; j < 16; j++, q += m->qstep, s += m->sstep) {
            if ((kb & 1) == 0) _mm_prefetch((const char *)(q + pf), _MM_HINT_T1);
            _mm512_storeu_si512(dst + j * 32, dec32_normal(q, off_tbl[*s], &e0, &magmax));
        }
    } else {
        for (int j = 0; j < 16; j++, q += m->qstep, s += m->sstep)
            _mm512_storeu_si512(dst + j * 32, j < m->nr ? dec32_normal(q, off_tbl[*s], &e0, &magmax)
                                                        : _mm512_setzero_si512());
    }
    m->magmax = magmax;
    if (__builtin_expect(e0 != 0, 0)) {
        const __m512i tbl = _mm512_loadu_si512(sub_tbl);
        q = m->q + kb * 32, s = m->s + kb * m->skb;
        for (int j = 0; j < m->nr; j++, q += m->qstep, s += m->sstep)
            _mm512_storeu_si512(dst + j * 32, dec32_exact(q, off_tbl[*s], tbl));
    }
}

MXM_AINLINE bool mx_rows_exact(const mx_rows *m) {
    return !m->bad && !_mm512_cmpeq_epi16_mask(m->magmax, _mm512_set1_epi16(0x07F0));
}

/* ---- tokens -------------------------------------------------------------------------------- */

static bool pack_x_tiles_amx(const float *const *x, int n, int64_t k, uint16_t *xt) {
    const int64_t nkb = k / 32;
    __mmask16 bad = 0;
    for (int tb = 0; tb < (n + 15) / 16; tb++) {
        const int nt = n - 16 * tb < 16 ? n - 16 * tb : 16;
        const float *const *xr = x + 16 * tb;
        for (int64_t kb = 0; kb < nkb; kb++) {
            __m512i r[16];
            for (int t = 0; t < 16; t++) {
                if (t < nt) {
                    const __m512 lo = _mm512_loadu_ps(xr[t] + kb * 32),
                                 hi = _mm512_loadu_ps(xr[t] + kb * 32 + 16);
                    bad |= inexact16(lo) | inexact16(hi);
                    r[t] = to_bf16x32(lo, hi); /* dword p: columns 2p, 2p + 1 */
                } else {
                    r[t] = _mm512_setzero_si512();
                }
            }
            transpose16(r); /* r[p] dword t: token t's pair p */
            uint16_t *dst = xt + (tb * nkb + kb) * 512;
            for (int p = 0; p < 16; p++)
                _mm512_storeu_si512(dst + p * 32, r[p]);
        }
    }
    return !bad;
}

/* ---- the tile product ---------------------------------------------------------------------- */

/* One or two token blocks (NB) against one weight panel, 32-column blocks kb0..kb1 of nkb: C tile
 * b at cbuf + 256 b ([weight row][token]); with dec, each weight tile is decoded into wp one block
 * before it is used (a tile load waits until the stores it reads have reached the cache). Tile
 * registers are not renamed: a load into a tile waits until the instruction reading its old
 * contents is done, and an accumulation waits for the previous one into the same tile, so the even
 * and odd k blocks use their own A, B and C tiles (A 0/1, B 2/3, C 4-5 even and 6-7 odd for NB 2; C
 * 4 even and 5 odd for NB 1) and the two partial sums are added at the end. Every token's sum is
 * formed the same way whatever the number of tokens (so a token's result does not depend on the
 * others routed with it: the expert-parallel split relies on that). */
MXM_AINLINE void add_tile(float *dst, const float *src) {
    for (int i = 0; i < 256; i += 16)
        _mm512_store_ps(dst + i, _mm512_add_ps(_mm512_load_ps(dst + i), _mm512_load_ps(src + i)));
}

#define DEFINE_TILES(NB)                                                                           \
    static void tiles_##NB(uint16_t *wp, const uint16_t *xt, int64_t kb0, int64_t kb1,             \
                           int64_t nkb, float *cbuf, mx_rows *dec) {                               \
        const int64_t xs = nkb * 512; /* bf16 elements from one token block to the next */         \
        (void)xs;                                                                                  \
        TILE_ZERO(4);                                                                              \
        TILE_ZERO(5);                                                                              \
        if (NB == 2) TILE_ZERO(6);                                                                 \
        if (NB == 2) TILE_ZERO(7);                                                                 \
        if (dec && kb0 == 0) mx_rows_decode(dec, 0, wp);                                           \
        for (int64_t kb = kb0; kb < kb1; kb++) {                                                   \
            const uint16_t *a = wp + kb * 512, *x = xt + kb * 512;                                 \
            if (dec && kb + 1 < nkb) mx_rows_decode(dec, kb + 1, wp + kb * 512 + 512);             \
            if ((kb & 1) == 0) {                                                                   \
                TILE_LOAD(0, a);                                                                   \
                TILE_LOAD(2, x);                                                                   \
                TILE_DP(4, 0, 2);                                                                  \
                if (NB == 2) {                                                                     \
                    TILE_LOAD(3, x + xs);                                                          \
                    TILE_DP(5, 0, 3);                                                              \
                }                                                                                  \
            } else if (NB == 1) {                                                                  \
                TILE_LOAD(1, a);                                                                   \
                TILE_LOAD(3, x);                                                                   \
                TILE_DP(5, 1, 3);                                                                  \
            } else {                                                                               \
                TILE_LOAD(1, a);                                                                   \
                TILE_LOAD(2, x);                                                                   \
                TILE_DP(6, 1, 2);                                                                  \
                TILE_LOAD(3, x + xs);                                                              \
                TILE_DP(7, 1, 3);                                                                  \
            }                                                                                      \
        }                                                                                          \
        _Alignas(64) float odd[512];                                                               \
        TILE_STORE(4, cbuf);                                                                       \
        TILE_STORE(5, NB == 1 ? odd : cbuf + 256);                                                 \
        if (NB == 2) TILE_STORE(6, odd);                                                           \
        if (NB == 2) TILE_STORE(7, odd + 256);                                                     \
        add_tile(cbuf, odd);                                                                       \
        if (NB == 2) add_tile(cbuf + 256, odd + 256);                                              \
    }
DEFINE_TILES(1)
DEFINE_TILES(2)

/* The nb C tiles at cbuf ([weight row][token], token blocks tb0, tb0 + 1) -> c (token-major). */
static void store_tokens(const float *cbuf, int nb, int tb0, int n, float *c, int64_t ldc) {
    for (int b = 0; b < nb; b++) {
        __m512i r[16];
        for (int j = 0; j < 16; j++)
            r[j] = _mm512_load_si512(cbuf + b * 256 + j * 16);
        transpose16(r); /* r[t]: token t's 16 row sums */
        const int t0 = 16 * (tb0 + b), nt = n - t0 < 16 ? n - t0 : 16;
        for (int t = 0; t < nt; t++)
            _mm512_storeu_si512(c + (t0 + t) * ldc, r[t]);
    }
}

/* c (token-major) from the product of wp with the token tiles, two token blocks at a time; with
 * dec, the first pass decodes the panel into wp as it goes. */
static void tile_product(uint16_t *wp, const uint16_t *xt, int n, int64_t k, float *c, int64_t ldc,
                         mx_rows *dec) {
    const int64_t nkb = k / 32;
    const int ntb = (n + 15) / 16;
    _Alignas(64) float cbuf[2 * 256];
    tiles_configure();
    for (int tb0 = 0; tb0 < ntb; tb0 += 2) {
        const int nb = ntb - tb0 < 2 ? ntb - tb0 : 2;
        const uint16_t *x = xt + tb0 * nkb * 512;
        if (nb == 2)
            tiles_2(wp, x, 0, nkb, nkb, cbuf, tb0 == 0 ? dec : NULL);
        else
            tiles_1(wp, x, 0, nkb, nkb, cbuf, tb0 == 0 ? dec : NULL);
        store_tokens(cbuf, nb, tb0, n, c, ldc);
    }
    tiles_release();
}

/* The MXFP8 row's tile product: the panel decoded one block ahead of the tile unit. */
static bool gemm_mxfp8_tiles16_amx(const void *w, const void *ws, int64_t k, int64_t r0,
                                   int64_t rstep, int nr, const uint16_t *xt,
                                   const float *const *xs, int n, float *c, int64_t ldc,
                                   uint16_t *wp) {
    (void)xs;
    mx_rows dec = mx_rows_of(w, ws, k, r0, rstep, nr);
    tile_product(wp, xt, n, k, c, ldc, &dec);
    return mx_rows_exact(&dec);
}

/* The BF16 row's: the rows are bf16 already, copied 32 columns at a time into the tile panel and
 * checked for the range before the tile unit runs (no product when a value is not tile-exact). */
static bool gemm_bf16_tiles16_amx(const void *w, const void *ws, int64_t k, int64_t r0,
                                  int64_t rstep, int nr, const uint16_t *xt, const float *const *xs,
                                  int n, float *c, int64_t ldc, uint16_t *wp) {
    (void)ws, (void)xs;
    const int64_t nkb = k / 32;
    __mmask32 bad = 0;
    for (int j = 0; j < 16; j++) {
        if (j >= nr) {
            for (int64_t kb = 0; kb < nkb; kb++)
                _mm512_storeu_si512(wp + (kb * 16 + j) * 32, _mm512_setzero_si512());
            continue;
        }
        const uint16_t *row = (const uint16_t *)w + (r0 + j * rstep) * k;
        for (int64_t kb = 0; kb < nkb; kb++) {
            const __m512i v = _mm512_loadu_si512(row + kb * 32);
            bad |= inexact_bf16x32(v);
            _mm512_storeu_si512(wp + (kb * 16 + j) * 32, v);
        }
    }
    if (bad) return false;
    tile_product(wp, xt, n, k, c, ldc, NULL); /* without a decoder wp is only read */
    return true;
}

/* The DeepSeek FP8 row's. The E4M3 codes are tile-exact by themselves (zero or 2^-9..448 in
 * magnitude), so the panel holds the codes, decoded as MXFP8 codes of scale 2^0 one block ahead of
 * the tile unit, and the scales are applied afterwards, as the format defines them: per 128-column
 * block the tile unit sums the exact products of token values (W8A8: the activations' codes) and
 * codes into fresh C tiles, and fp32 accumulators add that partial sum times the row's block
 * scale (W8A8: times the token's 1x128 scale; the 16 rows may straddle a 128-row block). False,
 * no product, when a scale of the rows or tokens is not finite; false after the product when a
 * code is NaN (the fp32 panels take both, the values of the format's definition). */
static const uint8_t scale_one = 127; /* E8M0 2^0 */

static bool gemm_fp8block_tiles16_amx(const void *w, const void *ws, int64_t k, int64_t r0,
                                      int64_t rstep, int nr, const uint16_t *xt,
                                      const float *const *xs, int n, float *c, int64_t ldc,
                                      uint16_t *wp) {
    const int64_t nkb = k / 32, nsb = (k + MXM_FP8_BLOCK - 1) / MXM_FP8_BLOCK;
    const int64_t bkb = MXM_FP8_BLOCK / 32; /* 32-column blocks per scale block */
    _Alignas(64) float sc[16][16];          /* sc[j][lane]: row j's scale of the block at hand */
    const float *srow[16];
    uint32_t nonfinite = 0;
    for (int j = 0; j < nr; j++) {
        srow[j] = (const float *)ws + (r0 + j * rstep) / MXM_FP8_BLOCK * nsb;
        for (int64_t b = 0; b < nsb; b++)
            nonfinite |= (mxm_f32_bits(srow[j][b]) & 0x7F800000u) == 0x7F800000u;
    }
    for (int t = 0; xs && t < n; t++)
        for (int64_t b = 0; b < nsb; b++)
            nonfinite |= (mxm_f32_bits(xs[t][b]) & 0x7F800000u) == 0x7F800000u;
    if (nonfinite) return false;
    memset(sc, 0, sizeof sc); /* rows past nr: zero rows in the panel, zero scale */
    mx_rows dec = {(const uint8_t *)w + r0 * k, &scale_one, rstep * k, 0, 0, nr, false,
                   _mm512_setzero_si512()};
    const int ntb = (n + 15) / 16;
    _Alignas(64) float cbuf[2 * 256], acc[2 * 256];
    tiles_configure();
    for (int tb0 = 0; tb0 < ntb; tb0 += 2) {
        const int nb = ntb - tb0 < 2 ? ntb - tb0 : 2;
        const uint16_t *x = xt + tb0 * nkb * 512;
        memset(acc, 0, sizeof acc);
        for (int64_t sb = 0; sb < nsb; sb++) {
            const int64_t kb0 = sb * bkb, kb1 = kb0 + bkb < nkb ? kb0 + bkb : nkb;
            if (nb == 2)
                tiles_2(wp, x, kb0, kb1, nkb, cbuf, tb0 == 0 ? &dec : NULL);
            else
                tiles_1(wp, x, kb0, kb1, nkb, cbuf, tb0 == 0 ? &dec : NULL);
            for (int j = 0; j < nr; j++)
                _mm512_store_ps(sc[j], _mm512_set1_ps(srow[j][sb]));
            for (int b = 0; b < nb; b++) {
                /* the tokens' block scales (W8A8), lanes = tokens: (P * sx) * sw, so that two
                 * tiny scales do not round in their own product first */
                _Alignas(64) float sx[16];
                const int t0 = 16 * (tb0 + b);
                for (int t = 0; xs && t < 16; t++)
                    sx[t] = t0 + t < n ? xs[t0 + t][sb] : 0.0f;
                for (int j = 0; j < 16; j++) {
                    float *a = acc + b * 256 + j * 16;
                    __m512 p = _mm512_load_ps(cbuf + b * 256 + j * 16);
                    if (xs) p = _mm512_mul_ps(p, _mm512_load_ps(sx));
                    p = _mm512_mul_ps(p, _mm512_load_ps(sc[j]));
                    _mm512_store_ps(a, _mm512_add_ps(_mm512_load_ps(a), p));
                }
            }
        }
        store_tokens(acc, nb, tb0, n, c, ldc);
    }
    tiles_release();
    return mx_rows_exact(&dec);
}

/* The amx set of cpu_isa.def (on top of the avx512 set): only the tile path is its own, the
 * token tiles and the tile products of the MXFP8, BF16 and DeepSeek FP8 rows (F32's row has
 * none: its values are not bf16-exact in general). */
void mxm_cpu_init_amx(mxm_cpu_kernels *k) {
    for (int b = 0; b < 256; b++)
        for (int i = 0; i < 32; i++)
            off_tbl[b][i] = (int16_t)((b - 7) * 128);
    k->wfmt[MXM_WFMT_MXFP8].gemm_tiles16 = gemm_mxfp8_tiles16_amx;
    k->wfmt[MXM_WFMT_BF16].gemm_tiles16 = gemm_bf16_tiles16_amx;
    k->wfmt[MXM_WFMT_FP8_BLOCK].gemm_tiles16 = gemm_fp8block_tiles16_amx;
    k->pack_x_tiles = pack_x_tiles_amx;
}
