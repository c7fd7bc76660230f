/* CPU kernel table. Filled with the scalar *_ref kernels first, then overridden by the kernel sets
 * of src/cpu/cpu_isa.def (AVX2+FMA+F16C, AVX-512, AVX-512 VBMI+BF16, AMX) that this CPU can run.
 * Dispatch happens once, at plan time (or on first use for the standalone format functions). The
 * environment variable MXM_KERNELS=ref forces *_ref; MXM_KERNELS=<set> picks that set when this CPU
 * can run it (the best one otherwise), so that one binary can time each set. */
#ifndef MXM_CPU_KERNELS_H
#define MXM_CPU_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

#include "mxmoe.h"

/* Largest token count per expert for which the streaming GEMV beats pack + GEMM. */
#define MXM_GEMV_MAX_TOKENS 4

/* One weight format's expert-GEMM kernels: a row of a kernel set's wfmt[] table (indexed by
 * mxm_weight_format; src/moe/scheme.c has the format's sizes), taken once at plan time. w is a
 * weight [rows, k] of codes, ws its scales as the format lays them out (MXFP8: E8M0 bytes
 * [rows, k/32]; DeepSeek FP8: the whole weight's f32 grid [ceil(rows/128), ceil(k/128)],
 * deq(w[r][i]) = e4m3(w[r][i]) * ws[r/128][i/128]; BF16, F32: none). See src/cpu/gemm_ref.c for
 * the exact contracts. */
typedef struct mxm_cpu_wfmt_kernels {
    /* Decode rows r0 + j*rstep (j < nr <= 16) into a packed fp32 panel [16][k] (row j of the
     * panel = weight row r0 + j*rstep; rows past nr are zero). */
    void (*pack_panel)(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep, int nr,
                       float *panel);
    /* Dot products of nt (<= MXM_GEMV_MAX_TOKENS) fp32 vectors x[t][0..k) with the rows
     * r0 + j*rstep (j < nr <= 4) of w: out[t * ldo + j] = sum_i x[t][i] * deq(w[row][i]).
     * Streams each weight row once (decode: few tokens per expert). NULL: pack_panel and
     * gemm_panel16 at every token count. */
    void (*gemv)(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep, int nr,
                 const float *const *x, int nt, float *out, int64_t ldo);
    /* The GEMV on bf16 tokens (sets with one, below: NULL elsewhere and for formats other than
     * MXFP8 and DeepSeek FP8): the same products as gemv, the nt tokens given as their dot rows
     * xd[t] (pack_x_dot, every value tile-exact), the products of the unscaled E4M3 codes with
     * them exact (zero or in [2^-59, 2^59)) and summed in fp32 in the kernel's order:
     *   MXFP8  out[t * ldo + j] = the fp32 sum over the row's 32-column blocks b of
     *          P_b * 2^(s_b - 127), P_b an fp32 sum of the block's products and s_b the row's
     *          scale byte (the multiply exact but where it leaves fp32's normal range; byte 255
     *          is NaN); xs unused
     *   DeepSeek FP8  per 128-column block b (the last may be shorter) a fresh fp32 sum P_b,
     *          then acc = fma(xs ? P_b * xs[t][b] : P_b, ws[row/128][b], acc), blocks in order:
     *          the tile product's rule with W8A8 (dot rows of the activations' codes, xs[t]
     *          token t's 1x128 scales), or weight-only (dot rows of the values, xs NULL)
     * The twins mxm_gemv_mxfp8_dot_ref and mxm_gemv_fp8block_dot_ref add in column order. */
    void (*gemv_dot)(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep, int nr,
                     const uint16_t *const *xd, const float *const *xs, int nt, float *out,
                     int64_t ldo);
    /* The same rows' products on bf16 tiles (sets with a tile GEMM, below: the layouts and the
     * tile-exact rule): c[t * ldc + j] = x_t . row(r0 + j*rstep) for t < n, j < 16 (zero past
     * nr), the n token rows given as their tiles xt (pack_x_tiles), the rows' weight tile panel
     * written to wp on the way; xs NULL but for DeepSeek FP8 W8A8, where the token tiles hold
     * the activations' E4M3 codes and xs[t] token t's 1x128 block scales ([ceil(k/128)] f32).
     * False, c and wp unspecified, unless every value of the nr rows is tile-exact (the caller then
     * uses pack_panel and gemm_panel16). DeepSeek FP8 puts its codes, not its values, on the tiles
     * and applies the scales to 128-column partial sums (the per-format list below). NULL in sets
     * without tiles and for formats whose values are not bf16-exact in general (F32): the plan
     * never takes the tile path for them, nor the tile passes' larger work items and row groups
     * (moe_cpu.c). */
    bool (*gemm_tiles16)(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                         int nr, const uint16_t *xt, const float *const *xs, int n, float *c,
                         int64_t ldc, uint16_t *wp);
} mxm_cpu_wfmt_kernels;

typedef struct mxm_cpu_kernels {
    const char
        *name; /* "ref" or a set name of cpu_isa.def: "avx2", "avx512", "avx512bf16", "amx" */

    /* ---- formats (one row; n % 32 == 0 for MXFP8) ------------------------------------------ */
    /* MXFP8 quantize n values: q [n] E4M3, s [n/32] E8M0 (SPEC 2.2, incl. specials). */
    void (*mx_quantize_f32)(const float *x, int64_t n, uint8_t *q, uint8_t *s, int rule);
    void (*mx_quantize_bf16)(const uint16_t *x, int64_t n, uint8_t *q, uint8_t *s, int rule);
    /* Decode MXFP8 to f32: out[i] = e4m3(q[i]) * 2^(s[i/32]-127). */
    void (*mx_dequantize_f32)(const uint8_t *q, const uint8_t *s, int64_t n, float *out);
    /* Quantize then decode (the values the W8A8 math sees), in place allowed (x == out). */
    void (*mx_fakequant_f32)(const float *x, int64_t n, float *out, int rule);

    /* ---- expert GEMM pieces (see src/cpu/gemm_ref.c for the exact contracts) ------------------
     */
    /* c[m * ldc + j] = sum_i a[m][i] * panel[j][i] for m < mr (mr <= 6), j < 16; a given as
     * row pointers. */
    void (*gemm_panel16)(const float *const *a, int mr, const float *panel, int64_t k, float *c,
                         int64_t ldc);
    /* Each weight format's kernels, indexed by mxm_weight_format. */
    mxm_cpu_wfmt_kernels wfmt[MXM_WFMT_COUNT_];

    /* ---- bf16 tile GEMM (AMX): NULL in sets without one, which use the fp32 panels above ----- */
    /* The same products as gemm_panel16, on bf16 copies of both operands, where those copies are
     * exact: the weight formats' rows give the weight side (wfmt[f].gemm_tiles16, which returns
     * false when a value is not exact), pack_x_tiles the token side; the caller falls back to the
     * fp32 panels when either refuses. Layouts (k % 32 == 0; KB = k/32, kb a 32-column block, p a
     * column pair):
     *   weight tile panel, 16 rows:  wp[(kb * 16 + j) * 32 + c] = w[row j][kb * 32 + c]
     *   token tiles, n rows:         xt[((tb * KB + kb) * 16 + p) * 32 + 2 * t + e]
     *                                  = x[16 * tb + t][kb * 32 + 2 * p + e]   (e = 0, 1)
     * (rows past nr or n are zero). A value is tile-exact when its bf16 copy equals it and it
     * is zero or 2^-50 <= |v| < 2^50: then every product is exact in fp32 and every fp32 sum
     * of them is zero or >= 2^-114 in magnitude (the products are multiples of 2^-114) and
     * below 2^120 (k < 2^20), so the tile unit's flushing of subnormals never applies
     * (docs/formats.md, the AMX tile GEMM). The products add exact products in fp32 in the tile
     * unit's order, the same for a token whatever the tokens beside it. Per format:
     *   MXFP8  tile-exact unless a 32-block of the nr rows has its scale byte outside 86..168
     *          (inside, the values are zero or in [2^-50, 2^50)) or a NaN code; the decode
     *          runs one 32-column block ahead of the tile unit
     *   BF16   the values as they are, tile-exact when zero or in [2^-50, 2^50)
     *   DeepSeek FP8  the E4M3 codes (tile-exact: zero or 2^-9..448), tile-exact unless a code
     *          is NaN or a block scale of the nr rows (or, with xs, of the n tokens) is not
     *          finite; per 128-column block b the tile unit's fp32 sum P_b of the exact products
     *          x[i] * e4m3(w[i]) goes into fresh C tiles, and c = sum over b in order of
     *          P_b * ws[row/128][b] in fp32 (a multiply, then an add), with xs
     *          (P_b * xs[t][b]) * ws[row/128][b] (W8A8: x[i] the activation's code); the panel
     *          decoded one 32-column block ahead of the tile unit */
    /* The token tiles of rows x[0..n) (n >= 1); false, contents unspecified, unless every value
     * is tile-exact. */
    bool (*pack_x_tiles)(const float *const *x, int n, int64_t k, uint16_t *xt);

    /* ---- bf16 GEMV (wfmt[f].gemv_dot): NULL in sets without one --------------------------------
     */
    /* The dot row of one token x[0..k) (k % 32 == 0), MXM_DOT_COLS(k) bf16 values: the columns in
     * the order the set's GEMV decodes a weight row, per 64 columns c
     *   xd[c + 32 h + 8 L + j] = x[c + 16 L + 8 h + j]   (h 0..1, L 0..3, j 0..7),
     * zero past k. False, contents unspecified, unless every value is tile-exact. */
    bool (*pack_x_dot)(const float *x, int64_t k, uint16_t *xd);
} mxm_cpu_kernels;

/* Values in a dot row of k columns (k rounded up to whole 64-column chunks). */
#define MXM_DOT_COLS(k) (((k) + 63) / 64 * 64)

/* The kernel set for this process: reference kernels when force_ref or MXM_KERNELS=ref, the set
 * that MXM_KERNELS names when this CPU can run it, else the best set this CPU can run. */
const mxm_cpu_kernels *mxm_cpu_kernels_get(bool force_ref);

/* Every kernel set this CPU can run, the reference first and the best last, into sets[0..n)
 * (n <= max); returns n. For tests and benchmarks that compare the sets. */
int mxm_cpu_kernel_sets(const mxm_cpu_kernels **sets, int max);

/* Reference and per-set initializers (each overrides only what its set implements, on top of
 * its parent set's kernels). */
void mxm_cpu_kernels_init_ref(mxm_cpu_kernels *k);
#define MXM_ISA(name, parent, features) void mxm_cpu_init_##name(mxm_cpu_kernels *k);
#include "cpu/cpu_isa.def"
#undef MXM_ISA
void mxm_cpu_quant_init_avx2(mxm_cpu_kernels *k);
void mxm_cpu_gemm_init_avx2(mxm_cpu_kernels *k);
void mxm_cpu_quant_init_avx512(mxm_cpu_kernels *k);
void mxm_cpu_gemm_init_avx512(mxm_cpu_kernels *k);

/* Scalar reference kernels, also called directly by tests. */
void mxm_mx_quantize_f32_ref(const float *x, int64_t n, uint8_t *q, uint8_t *s, int rule);
void mxm_mx_quantize_bf16_ref(const uint16_t *x, int64_t n, uint8_t *q, uint8_t *s, int rule);
void mxm_mx_dequantize_f32_ref(const uint8_t *q, const uint8_t *s, int64_t n, float *out);
void mxm_mx_fakequant_f32_ref(const float *x, int64_t n, float *out, int rule);
void mxm_gemm_panel16_ref(const float *const *a, int mr, const float *panel, int64_t k, float *c,
                          int64_t ldc);
void mxm_pack_mxfp8_panel_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                              int nr, float *panel);
void mxm_gemv_mxfp8_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep, int nr,
                        const float *const *x, int nt, float *out, int64_t ldo);
void mxm_pack_fp8block_panel_ref(const void *w, const void *ws, int64_t k, int64_t r0,
                                 int64_t rstep, int nr, float *panel);
void mxm_gemv_fp8block_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                           int nr, const float *const *x, int nt, float *out, int64_t ldo);
void mxm_pack_bf16_panel_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                             int nr, float *panel);
void mxm_pack_f32_panel_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                            int nr, float *panel);
/* The bf16 tile twins: no set's table holds them (the ref set has no tile path); tests compare
 * the tile kernels of every set that has them against these. A format's gemm_tiles16 twin is its
 * pack_*_tiles_ref (the tile panel and verdict) then mxm_gemm_tiles16_ref. */
bool mxm_pack_mxfp8_tiles_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                              int nr, uint16_t *wp);
bool mxm_gemm_mxfp8_tiles16_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                                int nr, const uint16_t *xt, const float *const *xs, int n, float *c,
                                int64_t ldc, uint16_t *wp);
bool mxm_pack_bf16_tiles_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                             int nr, uint16_t *wp);
bool mxm_gemm_bf16_tiles16_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                               int nr, const uint16_t *xt, const float *const *xs, int n, float *c,
                               int64_t ldc, uint16_t *wp);
bool mxm_pack_fp8block_tiles_ref(const void *w, const void *ws, int64_t k, int64_t r0,
                                 int64_t rstep, int nr, uint16_t *wp);
/* DeepSeek FP8's twin is its own (the scales apply to 128-column partial sums, not in the panel):
 * mxm_pack_fp8block_tiles_ref, then per 128-column block a fresh fp32 sum of the exact products
 * in i order, times the row's block scale, added to the fp32 result in block order. */
bool mxm_gemm_fp8block_tiles16_ref(const void *w, const void *ws, int64_t k, int64_t r0,
                                   int64_t rstep, int nr, const uint16_t *xt,
                                   const float *const *xs, int n, float *c, int64_t ldc,
                                   uint16_t *wp);
bool mxm_pack_x_tiles_ref(const float *const *x, int n, int64_t k, uint16_t *xt);
/* The bf16 GEMV twins (no set's table holds them either; sets with gemv_dot are tested against
 * them): the dot row, and per 32-column block an fp32 sum of the exact products in column order,
 * times the block's scale, added to the fp32 result in block order. */
bool mxm_pack_x_dot_ref(const float *x, int64_t k, uint16_t *xd);
void mxm_gemv_mxfp8_dot_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                            int nr, const uint16_t *const *xd, const float *const *xs, int nt,
                            float *out, int64_t ldo);
void mxm_gemv_fp8block_dot_ref(const void *w, const void *ws, int64_t k, int64_t r0, int64_t rstep,
                               int nr, const uint16_t *const *xd, const float *const *xs, int nt,
                               float *out, int64_t ldo);
/* c[t * ldc + j] = sum_i x[t][i] * w[j][i] for t < n, j < 16, from a weight tile panel and token
 * tiles: in i order, one exact product at a time. */
void mxm_gemm_tiles16_ref(const uint16_t *wp, const uint16_t *xt, int n, int64_t k, float *c,
                          int64_t ldc);

#endif
