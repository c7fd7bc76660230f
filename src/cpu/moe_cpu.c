/* The MoE forward on the CPU (SPEC section 5), in passes over batches of tokens:
 *   1. prepare: x -> fp32 values the GEMMs see (dynamic W8A8 quantization), routing
 *   2. permute: rows grouped by local expert, in token order (deterministic)
 *   3. GEMM1 + activation + requantization, work items (expert, 128 columns of I)
 *   4. GEMM2, work items (expert, 64 rows of H)
 *   (256 and 256 in passes that use a set's bf16 tiles)
 *   5. combine: out[t] = sum_k w[t,k] y[t,k] in k order, + shared expert
 * Work items are handed out through an atomic counter, largest experts first, so skewed routing
 * keeps every thread busy. Weights are never copied: GEMM panels are decoded on the fly. Kernel
 * sets with a bf16 tile GEMM (amx) run a work item's panels through it, for the weight formats
 * whose row has a tile product (MXFP8, BF16, DeepSeek FP8: with W8A8, its activation codes and
 * 1x128 scales kept beside their values), when the item's token rows
 * and the panel have exact bf16 copies (cpu_kernels.h), and the fp32 panels otherwise. */
#define _GNU_SOURCE /* qsort_r */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "cpu/cpu_kernels.h"
#include "formats/formats.h"
#include "moe/activation.h"
#include "moe/plan.h"

#ifdef _OPENMP
#include <omp.h>
#define THREAD_ID() omp_get_thread_num()
#else
#define THREAD_ID() 0
#endif

#define CPU_BATCH 1024   /* tokens per pass: bounds the workspace; weights re-read per pass */
#define GEMM1_COLS 128   /* I columns per GEMM1 work item (a multiple of every act block) */
#define GEMM2_ROWS 64    /* H rows per GEMM2 work item */
#define MR 6             /* tokens per micro-kernel call */
#define TILE_TOKENS 256  /* token rows per bf16 tile pass (a work item's larger groups: several) */
/* I columns / H rows per work item in passes that use the tiles (10% faster than 128 / 64 on the
 * 2-vCPU Xeon of docs/BENCHMARKS.md; 512: a few % more) */
#define TILE_ITEM 256

/* The CPU workspace: regions as byte offsets from its 64-byte aligned start. B is the batch (tokens
 * per pass), E_loc the local experts. */
typedef struct cpu_layout {
    int64_t xf;            /* f32 [B, H] activations as the GEMMs see them */
    int64_t ids;           /* i32 [B, K] */
    int64_t wts;           /* f32 [B, K] */
    int64_t pos;           /* i32 [B, K] permuted row of (t, k), -1 when not local */
    int64_t rows;          /* i32 [B*K + B] token of each permuted row, grouped by expert */
    int64_t counts;        /* i64 [3 (E_loc + 1)] rows per expert, offsets, the scatter's cursors */
    int64_t fwd_rows;      /* i64 [E_loc + 1] rows per expert in the whole forward */
    int64_t items;         /* i64 [max items] work items */
    int64_t order;         /* i32 [E_loc + 1] experts by descending rows */
    int64_t act;           /* f32 [B*K, I] intermediate activations (routed) */
    int64_t act_sh;        /* f32 [B, I_s] (shared expert) */
    int64_t y;             /* f32 [B*K, H] expert outputs */
    int64_t y_sh;          /* f32 [B, H] shared expert output */
    /* DeepSeek FP8 W8A8 on the tiles (cpu_state.codes; else empty): the activations' E4M3 codes
     * (as f32) and their 1x128 scales, beside the values xf, act, act_sh */
    int64_t xc, xcs;           /* f32 [B, H], [B, ceil(H/128)] */
    int64_t actc, actcs;       /* f32 [B*K, I], [B*K, ceil(I/128)] */
    int64_t act_shc, act_shcs; /* f32 [B, I_s], [B, ceil(I_s/128)] */
    /* The bf16 GEMV (cpu_state.dot; else empty): dot rows of xf, act, act_sh (MXM_DOT_COLS of
     * H, I, I_s bf16 values each) and whether each row is tile-exact (one byte per row) */
    int64_t xd, xd_ok, actd, actd_ok, act_shd, act_shd_ok;
    int64_t route_scratch; /* per-thread routing scratch */
    int64_t route_scratch_bytes;
    int64_t thread; /* per-thread GEMM scratch (thread_scratch) */
    int64_t thread_bytes;
    int64_t total;
} cpu_layout;

/* The CPU backend's part of a plan (plan->backend_state). */
typedef struct cpu_state {
    const mxm_cpu_kernels *k;
    const mxm_cpu_wfmt_kernels *wk; /* the weight format's row of k */
    bool tiles;                     /* the tile path may run (plan_tiles) */
    bool codes; /* DeepSeek FP8 W8A8 with tiles: the tiles take activation codes + 1x128 scales */
    bool dot;   /* the set has a bf16 GEMV for the format: token rows get dot rows */
    int64_t batch;                  /* tokens per pass (the workspace is sized for this many) */
    int64_t max_items;              /* work items per GEMM stage */
    cpu_layout ws;
} cpu_state;

/* Everything one pass needs, shared by the worker threads. */
typedef struct pass {
    const mxm_moe_plan *p;
    const cpu_state *cs;
    const mxm_cpu_kernels *k;
    const mxm_cpu_wfmt_kernels *wk;
    const mxm_moe_weights *w;
    int64_t nt;         /* tokens in this pass */
    float *xf;          /* [nt, H] */
    int32_t *ids;       /* [nt, K] */
    float *wts;         /* [nt, K] */
    int32_t *pos;       /* [nt, K] */
    int32_t *rows;      /* [rows] token of each permuted row */
    int64_t *count;     /* [E_loc + 1] (last: shared) */
    int64_t *offset;    /* [E_loc + 1] */
    int64_t *fwd_rows;  /* [E_loc + 1] rows per expert in the whole forward (all passes) */
    int32_t *shared_rows; /* identity map 0..nt-1 for the shared expert */
    int64_t *items;
    int32_t *order;     /* [E_loc + 1] scratch for make_items */
    int64_t nitems;
    int64_t cols1, rows2; /* I columns per GEMM1 item, H rows per GEMM2 item */
    float *act, *act_sh, *y, *y_sh;
    float *xc, *xcs, *actc, *actcs, *act_shc, *act_shcs; /* cpu_layout; NULL without codes */
    uint16_t *xd, *actd, *act_shd; /* cpu_layout; NULL without the bf16 GEMV */
    uint8_t *xd_ok, *actd_ok, *act_shd_ok;
    int64_t ldxd, ldactd, ldact_shd; /* values per dot row */
    char *thread_ws;
    int64_t thread_bytes;
} pass;

/* ---- the expert GEMMs ------------------------------------------------------------------------ */

/* A thread's bf16 tiles of one work item: the token rows' tiles (when tiles_ready) and a weight
 * tile panel. */
typedef struct tiles {
    uint16_t *xt; /* [TILE_TOKENS, k] token tiles */
    uint16_t *wp; /* [16, k] weight tile panel */
    bool gemv;    /* the expert takes the GEMV (expert_view.gemv): no tiles, no panels */
    bool ready;   /* xt holds exact tiles of this product's tokens */
    const float *const *xs; /* the tokens' 1x128 scales where xt and the dot rows hold codes */
    /* A group whose tokens are not all tile-exact: the exact ones go on the tiles, the others on
     * the fp32 panels, so that no token's path depends on its neighbours. In that order: */
    int64_t n_exact;   /* tokens on the tiles (the group's n when all are) */
    int32_t *order;    /* [TILE_TOKENS] the group row of each token */
    const float **xso; /* [TILE_TOKENS] their 1x128 scales (with codes) */
    float *ho;         /* [TILE_TOKENS * 16] their products */
} tiles;

/* Whether the tile path may run: for the plan's weight format (its row has a tile product: the
 * set has tiles and the format's values can be bf16-exact), then for a group of rows of an
 * expert that does not take the GEMV: at most TILE_TOKENS. */
static bool tiles_for_format(const pass *ps) {
    return ps->cs->tiles;
}
static bool tiles_apply(const pass *ps, int64_t n) {
    return tiles_for_format(ps) && n <= TILE_TOKENS;
}

/* Rows per group of an expert's n rows: all of them, or where the tile path may take them, equal
 * groups of at most TILE_TOKENS (none small enough for the GEMV, whose sums differ in order). */
static int64_t group_rows(const pass *ps, int64_t n) {
    if (!tiles_for_format(ps) || n <= TILE_TOKENS) return n;
    return mxm_ceil_div(n, mxm_ceil_div(n, TILE_TOKENS));
}

/* Makes the token tiles of x[0..n) (k columns; with xs, rows of codes and xs their 1x128
 * scales) when the tile path applies and they are exact (k < 2^20 keeps the exactness argument's
 * sums below 2^120). */
static void tiles_prepare(const pass *ps, tiles *tl, const float *const *x, const float *const *xs,
                          int64_t n, int64_t k) {
    tl->xs = xs, tl->n_exact = n;
    tl->ready = !tl->gemv && tiles_apply(ps, n) && k < (1 << 20);
    if (!tl->ready || ps->k->pack_x_tiles(x, (int)n, k, tl->xt)) return;
    /* not every token is tile-exact: each one's verdict alone, the exact ones first */
    int64_t ne = 0, ni = n;
    for (int64_t i = 0; i < n; i++)
        tl->order[ps->k->pack_x_tiles(x + i, 1, k, tl->xt) ? ne++ : --ni] = (int32_t)i;
    tl->n_exact = ne, tl->ready = ne > 0;
    const float **xo = (const float **)tl->ho; /* the exact rows in order, until packed */
    for (int64_t q = 0; q < ne; q++) {
        xo[q] = x[tl->order[q]];
        tl->xso[q] = xs ? xs[tl->order[q]] : NULL;
    }
    if (ne) ps->k->pack_x_tiles(xo, (int)ne, k, tl->xt);
}

/* How many of the n tokens have exact dot rows (xd[i] NULL where not; xd NULL: none). */
static int64_t dot_rows_exact(const uint16_t *const *xd, int64_t n) {
    int64_t c = 0;
    for (int64_t i = 0; xd && i < n; i++)
        c += xd[i] != NULL;
    return c;
}

/* h[i * 16 + j] = x_i . row(r0 + j*rstep) for the n tokens x[0..n) and j < nr (<= 16), through
 * the weight format's kernels: for an expert that takes the GEMV (tl->gemv: n is at most
 * MXM_GEMV_MAX_TOKENS), the bf16 GEMV for each token with an exact dot row (xd[i]) and the fp32
 * GEMV for the others; else the bf16 tiles where they apply and are exact, else its panel and the
 * panel GEMM. Each token's sums are the same whatever tokens share the call (the GEMVs, tiles and
 * panels keep tokens apart), so a token's result depends only on its expert's path. */
static void panel_product(const pass *ps, const void *w, const void *s, int64_t k, int64_t r0,
                          int64_t rstep, int nr, const float *const *x, const uint16_t *const *xd,
                          int64_t n, float *h, float *panel, const tiles *tl) {
    if (tl->gemv) {
        const int64_t exact = ps->cs->dot ? dot_rows_exact(xd, n) : 0;
        for (int j = 0; j < nr; j += 4) {
            const int nr4 = nr - j < 4 ? nr - j : 4;
            if (exact == n)
                ps->wk->gemv_dot(w, s, k, r0 + j * rstep, rstep, nr4, xd, tl->xs, (int)n, h + j,
                                 16);
            else if (exact == 0)
                ps->wk->gemv(w, s, k, r0 + j * rstep, rstep, nr4, x, (int)n, h + j, 16);
            else /* mixed: one token at a time, each on its own path */
                for (int64_t i = 0; i < n; i++) {
                    if (xd[i])
                        ps->wk->gemv_dot(w, s, k, r0 + j * rstep, rstep, nr4, xd + i,
                                         tl->xs ? tl->xs + i : NULL, 1, h + i * 16 + j, 16);
                    else
                        ps->wk->gemv(w, s, k, r0 + j * rstep, rstep, nr4, x + i, 1, h + i * 16 + j,
                                     16);
                }
        }
        return;
    }
    if (tl->ready && tl->n_exact == n &&
        ps->wk->gemm_tiles16(w, s, k, r0, rstep, nr, tl->xt, tl->xs, (int)n, h, 16, tl->wp))
        return;
    if (tl->ready && tl->n_exact < n &&
        ps->wk->gemm_tiles16(w, s, k, r0, rstep, nr, tl->xt, tl->xs ? tl->xso : NULL,
                             (int)tl->n_exact, tl->ho, 16, tl->wp)) {
        /* the tokens that are not tile-exact on the panel, then every row back in place */
        ps->wk->pack_panel(w, s, k, r0, rstep, nr, panel);
        for (int64_t q = tl->n_exact; q < n; q += MR) {
            const int mr = n - q < MR ? (int)(n - q) : MR;
            const float *xi[MR];
            for (int m = 0; m < mr; m++)
                xi[m] = x[tl->order[q + m]];
            ps->k->gemm_panel16(xi, mr, panel, k, tl->ho + q * 16, 16);
        }
        for (int64_t q = 0; q < n; q++)
            memcpy(h + tl->order[q] * 16, tl->ho + q * 16, sizeof(float) * 16);
        return;
    }
    ps->wk->pack_panel(w, s, k, r0, rstep, nr, panel);
    for (int64_t i = 0; i < n; i += MR) {
        const int mr = n - i < MR ? (int)(n - i) : MR;
        ps->k->gemm_panel16(x + i, mr, panel, k, h + i * 16, 16);
    }
}

/* ---- activation quantization ------------------------------------------------------------------ */

/* DeepSeek FP8 1x128 quantize-dequantize of a row segment, in place; with xc, the codes' values
 * into xc [n] and the blocks' scales into xs [ceil(n/128)] too. */
static void fp8block_fakequant(float *x, int64_t n, float *xc, float *xs) {
    uint8_t q[MXM_FP8_BLOCK];
    for (int64_t c0 = 0; c0 < n; c0 += MXM_FP8_BLOCK) {
        const int m = n - c0 < MXM_FP8_BLOCK ? (int)(n - c0) : MXM_FP8_BLOCK;
        const float s = mxm_fp8block_quantize_seg(x + c0, m, q);
        for (int i = 0; i < m; i++) x[c0 + i] = mxm_e4m3_decode(q[i]) * s;
        if (xc) {
            for (int i = 0; i < m; i++)
                xc[c0 + i] = mxm_e4m3_decode(q[i]);
            xs[c0 / MXM_FP8_BLOCK] = s;
        }
    }
}

/* The W8A8 activation rule of the plan's scheme, applied in place to a row segment that starts
 * on a block boundary (xc, xs: fp8block_fakequant's, NULL without codes). */
static void act_fakequant(const pass *ps, float *x, int64_t n, float *xc, float *xs) {
    if (ps->p->cfg.act_quant == MXM_ACT_QUANT_NONE) return;
    if (ps->p->scheme->act_block == MXM_FP8_BLOCK)
        fp8block_fakequant(x, n, xc, xs);
    else
        ps->k->mx_fakequant_f32(x, n, x, ps->p->cfg.scale_rule);
}

/* ---- pass stages ---------------------------------------------------------------------------------- */

static void prepare_values(const pass *ps, const mxm_moe_inputs *in, int64_t t_global, int64_t t) {
    const mxm_moe_plan *p = ps->p;
    const int64_t H = p->cfg.hidden_size;
    float *row = ps->xf + t * H;
    if (in->x_dtype == MXM_DT_E4M3) {
        const uint8_t *q = (const uint8_t *)in->x + t_global * H;
        if (p->scheme->act_scale_e8m0) {
            ps->k->mx_dequantize_f32(q, (const uint8_t *)in->x_scale + t_global * (H / 32), H, row);
        } else {
            const int64_t nb = mxm_ceil_div(H, MXM_FP8_BLOCK);
            const float *s = in->x_scale;
            for (int64_t i = 0; i < H; i++) {
                const int64_t b = i / MXM_FP8_BLOCK;
                const float sc = in->x_scale_transposed ? s[b * in->num_tokens + t_global] : s[t_global * nb + b];
                row[i] = mxm_e4m3_decode(q[i]) * sc;
                if (ps->xc) ps->xc[t * H + i] = mxm_e4m3_decode(q[i]), ps->xcs[t * nb + b] = sc;
            }
        }
        return;
    }
    /* x may be at any address: byte copies, no typed loads */
    if (in->x_dtype == MXM_DT_F32)
        memcpy(row, (const char *)in->x + t_global * H * 4, (size_t)H * 4);
    else
        for (int64_t i = 0; i < H; i++) {
            uint16_t h;
            memcpy(&h, (const char *)in->x + (t_global * H + i) * 2, 2);
            row[i] = mxm_bf16_decode(h);
        }
    act_fakequant(ps, row, H, ps->xc ? ps->xc + t * H : NULL,
                  ps->xc ? ps->xcs + t * mxm_ceil_div(H, MXM_FP8_BLOCK) : NULL);
}

/* Token t's row of xf (and its codes, and its dot row where the set has a bf16 GEMV). */
static void prepare_row(const pass *ps, const mxm_moe_inputs *in, int64_t t_global, int64_t t) {
    prepare_values(ps, in, t_global, t);
    if (ps->xd) {
        const int64_t H = ps->p->cfg.hidden_size;
        const float *row = ps->xc ? ps->xc + t * H : ps->xf + t * H; /* W8A8 FP8: the codes */
        ps->xd_ok[t] = ps->k->pack_x_dot(row, H, ps->xd + t * ps->ldxd);
    }
}

/* Groups the (t, k) pairs by local expert, in token order. Returns an error for ids outside
 * [0, E) (only possible with caller-given ids). */
static mxm_status permute(pass *ps) {
    const mxm_moe_plan *p = ps->p;
    const int64_t K = p->cfg.top_k, off = p->cfg.local_expert_offset;
    int64_t *count = ps->count, *offset = ps->offset;
    memset(count, 0, sizeof(int64_t) * (size_t)(p->e_loc + 1));
    for (int64_t i = 0; i < ps->nt * K; i++) {
        const int32_t g = ps->ids[i];
        if (g < 0 || g >= p->cfg.num_experts)
            return mxm_fail(MXM_ERR_INVALID_ARG, "topk_ids[%lld] = %d is outside 0..%d", (long long)i, g,
                            p->cfg.num_experts - 1);
        const int64_t e = g - off;
        if (e >= 0 && e < p->e_loc) count[e]++;
    }
    int64_t acc = 0;
    for (int32_t e = 0; e < p->e_loc; e++) {
        offset[e] = acc;
        acc += count[e];
    }
    int64_t *cursor = offset + p->e_loc + 1; /* the third part of the counts region */
    memcpy(cursor, offset, sizeof(int64_t) * (size_t)p->e_loc);
    for (int64_t t = 0; t < ps->nt; t++) {
        for (int64_t k = 0; k < K; k++) {
            const int64_t e = ps->ids[t * K + k] - off;
            if (e >= 0 && e < p->e_loc) {
                const int64_t r = cursor[e]++;
                ps->rows[r] = (int32_t)t;
                ps->pos[t * K + k] = (int32_t)r;
            } else {
                ps->pos[t * K + k] = -1;
            }
        }
    }
    count[p->e_loc] = p->cfg.shared_intermediate_size ? ps->nt : 0;
    offset[p->e_loc] = 0;
    return MXM_OK;
}

static int cmp_desc_count(const void *a, const void *b, void *ctx) {
    const int64_t *count = ctx;
    const int64_t ea = *(const int32_t *)a, eb = *(const int32_t *)b;
    if (count[ea] != count[eb]) return count[ea] > count[eb] ? -1 : 1;
    return ea < eb ? -1 : 1;
}

/* Work items (expert << 32 | chunk), experts with most rows first. The shared expert is
 * expert index E_loc. */
static void make_items(pass *ps, int64_t dim_routed, int64_t dim_shared, int64_t chunk) {
    const mxm_moe_plan *p = ps->p;
    int32_t *order = ps->order, n = 0;
    for (int32_t e = 0; e <= p->e_loc; e++)
        if (ps->count[e] > 0) order[n++] = e;
    qsort_r(order, (size_t)n, sizeof *order, cmp_desc_count, ps->count);
    ps->nitems = 0;
    for (int32_t i = 0; i < n; i++) {
        const int64_t dim = order[i] == p->e_loc ? dim_shared : dim_routed;
        for (int64_t c = 0; c < mxm_ceil_div(dim, chunk); c++)
            ps->items[ps->nitems++] = ((int64_t)order[i] << 32) | c;
    }
}

/* Per-thread scratch: a decoded weight panel [max(H, I, I_s)][16], two result tiles for up to
 * max_rows rows, and 4 x max_rows row pointers (values, codes, scales, dot rows); where the set's
 * tiles apply to the weight format, the token tiles and a weight tile panel. An expert holds at
 * most batch*K rows (caller-given ids may repeat an expert within a token). The combine reuses the
 * start as an [H] accumulator. */
typedef struct thread_scratch {
    float *panel, *h0, *h1;
    const float **x;
    const float **xc, **xs; /* with codes: the rows' codes and 1x128 scales */
    const uint16_t **xd;    /* with the bf16 GEMV: the rows' dot rows (NULL: not exact) */
    tiles tl;
} thread_scratch;

/* The token tiles of rows [i0, i0 + n) of x: from the activation codes and their 1x128 scales
 * where the pass keeps them (DeepSeek FP8 W8A8 on the tiles), else from the values. */
static void group_tiles(const pass *ps, thread_scratch *sc, const float **x, int64_t i0, int64_t n,
                        int64_t k, bool gemv) {
    sc->tl.gemv = gemv;
    if (ps->xc)
        tiles_prepare(ps, &sc->tl, sc->xc + i0, sc->xs + i0, n, k);
    else
        tiles_prepare(ps, &sc->tl, x + i0, NULL, n, k);
}

static int64_t panel_floats_of(const mxm_moe_plan *p) {
    int64_t d = p->cfg.hidden_size;
    if (p->cfg.intermediate_size > d) d = p->cfg.intermediate_size;
    if (p->cfg.shared_intermediate_size > d) d = p->cfg.shared_intermediate_size;
    return 16 * d;
}

static int64_t max_rows_of(const mxm_moe_plan *p, int64_t batch) {
    return batch * p->cfg.top_k;
}

/* Bytes of the scratch before the tiles, and of the tiles (64-byte multiples). */
static int64_t scratch_base_bytes(const mxm_moe_plan *p, int64_t batch) {
    const int64_t max_rows = max_rows_of(p, batch);
    return mxm_align_up((panel_floats_of(p) + 2 * 16 * max_rows) * 4 + 4 * max_rows * 8, 64);
}
static int64_t scratch_tile_bytes(const mxm_moe_plan *p) {
    return (TILE_TOKENS + 16) * (panel_floats_of(p) / 16) * 2 +
           TILE_TOKENS * (4 + 8 + 16 * 4); /* order, xso, ho */
}

static thread_scratch scratch_of(const pass *ps, char *base) {
    const int64_t max_rows = max_rows_of(ps->p, ps->cs->batch);
    thread_scratch s;
    s.panel = (float *)base;
    s.h0 = s.panel + panel_floats_of(ps->p);
    s.h1 = s.h0 + max_rows * 16;
    s.x = (const float **)(s.h1 + max_rows * 16);
    s.xc = s.x + max_rows, s.xs = s.xc + max_rows;
    s.xd = (const uint16_t **)(s.xs + max_rows);
    const bool has_tiles = tiles_for_format(ps);
    s.tl.xt = has_tiles ? (uint16_t *)(base + scratch_base_bytes(ps->p, ps->cs->batch)) : NULL;
    s.tl.wp = has_tiles ? s.tl.xt + TILE_TOKENS * (panel_floats_of(ps->p) / 16) : NULL;
    /* after the weight tile panel (16 rows): the mixed groups' order, scales and products */
    char *mixed = has_tiles ? (char *)(s.tl.wp + 16 * (panel_floats_of(ps->p) / 16)) : NULL;
    s.tl.ho = (float *)mixed;
    s.tl.xso = has_tiles ? (const float **)(mixed + TILE_TOKENS * 16 * 4) : NULL;
    s.tl.order = has_tiles ? (int32_t *)(mixed + TILE_TOKENS * (16 * 4 + 8)) : NULL;
    s.tl.ready = false;
    return s;
}

/* Expert e of this pass: its description (src/moe) and its rows. */
typedef struct expert_view {
    mxm_expert_desc d;
    int64_t n;          /* rows (tokens) */
    const int32_t *tok; /* token of each row */
    bool gemv; /* at most MXM_GEMV_MAX_TOKENS rows in the whole forward (pass.fwd_rows): the GEMV */
    int64_t row0; /* first permuted row (routed) */
    bool shared;
} expert_view;

static expert_view view_of(const pass *ps, int32_t e) {
    expert_view v;
    v.d = mxm_expert_describe(ps->p, ps->w, e);
    v.shared = e == ps->p->e_loc;
    v.n = ps->count[e];
    v.row0 = v.shared ? 0 : ps->offset[e];
    v.tok = v.shared ? ps->shared_rows : ps->rows + v.row0;
    v.gemv = ps->wk->gemv && ps->fwd_rows[e] <= MXM_GEMV_MAX_TOKENS;
    return v;
}

static void gemm1_item(const pass *ps, int64_t item, char *scratch) {
    const mxm_moe_plan *p = ps->p;
    const int32_t e = (int32_t)(item >> 32);
    const expert_view v = view_of(ps, e);
    const int64_t H = p->cfg.hidden_size, I = v.d.I;
    const int64_t j0 = (item & 0xFFFFFFFF) * ps->cols1;
    const int64_t j1 = j0 + ps->cols1 < I ? j0 + ps->cols1 : I;
    const bool gated = v.d.gated;
    const mxm_act_params ap = {v.d.alpha, v.d.beta, v.d.limit};
    const bool round_bf16 = p->cfg.profile == MXM_PROFILE_TRTLLM;

    thread_scratch sc = scratch_of(ps, scratch);
    float *panel = sc.panel, *hg = sc.h0, *hu = sc.h1;
    const float **x = sc.x;
    for (int64_t i = 0; i < v.n; i++) x[i] = ps->xf + (int64_t)v.tok[i] * H;
    const int64_t nsbH = mxm_ceil_div(H, MXM_FP8_BLOCK), nsbI = mxm_ceil_div(I, MXM_FP8_BLOCK);
    for (int64_t i = 0; ps->xd && v.gemv && i < v.n; i++)
        sc.xd[i] = ps->xd_ok[v.tok[i]] ? ps->xd + (int64_t)v.tok[i] * ps->ldxd : NULL;
    for (int64_t i = 0; ps->xc && i < v.n; i++) {
        sc.xc[i] = ps->xc + (int64_t)v.tok[i] * H;
        sc.xs[i] = ps->xcs + (int64_t)v.tok[i] * nsbH;
    }

    float *act = v.shared ? ps->act_sh : ps->act + v.row0 * I;
    float *actc = !ps->xc ? NULL : v.shared ? ps->act_shc : ps->actc + v.row0 * I;
    float *acts = !ps->xc ? NULL : v.shared ? ps->act_shcs : ps->actcs + v.row0 * nsbI;
    const int64_t ld = I;
    int64_t gate_r0, up_r0, rstep = 1;
    switch (gated ? p->cfg.w13_layout : MXM_W13_GATE_UP) {
    case MXM_W13_UP_GATE: gate_r0 = I, up_r0 = 0; break;
    case MXM_W13_INTERLEAVED: gate_r0 = 0, up_r0 = 1, rstep = 2; break;
    default: gate_r0 = 0, up_r0 = I; break;
    }
    const void *w13 = v.d.w13, *s13 = v.d.w13_scale;
    const int64_t group = group_rows(ps, v.n);
    for (int64_t i0 = 0; i0 < v.n; i0 += group) {
        const int64_t n = v.n - i0 < group ? v.n - i0 : group;
        group_tiles(ps, &sc, x, i0, n, H, v.gemv);
        for (int64_t jp = j0; jp < j1; jp += 16) {
            const int nr = j1 - jp < 16 ? (int)(j1 - jp) : 16;
            const int64_t gr = gated ? gate_r0 + jp * rstep : jp;
            const uint16_t *const *xd = ps->xd && v.gemv ? sc.xd + i0 : NULL;
            panel_product(ps, w13, s13, H, gr, rstep, nr, x + i0, xd, n, hg, panel, &sc.tl);
            if (gated)
                panel_product(ps, w13, s13, H, up_r0 + jp * rstep, rstep, nr, x + i0, xd, n, hu,
                              panel, &sc.tl);
            for (int64_t i = 0; i < n; i++) {
                float *dst = act + (i0 + i) * ld + jp;
                for (int j = 0; j < nr; j++) {
                    const float a = gated
                                        ? mxm_act_gated(v.d.act, hg[i * 16 + j], hu[i * 16 + j], ap)
                                        : mxm_act_plain(v.d.act, hg[i * 16 + j]);
                    dst[j] = round_bf16 ? mxm_round_bf16(a) : a;
                }
            }
        }
    }
    for (int64_t i = 0; i < v.n; i++)
        act_fakequant(ps, act + i * ld + j0, j1 - j0, actc ? actc + i * ld + j0 : NULL,
                      actc ? acts + i * nsbI + j0 / MXM_FP8_BLOCK : NULL);
    /* the segment's dot rows for GEMM2's GEMV (experts on the GEMV only; j0 is a multiple of
     * 64); a row is exact when every segment is, so each segment only ever clears its flag (set
     * before the stage) */
    uint16_t *actd = !ps->xd || !v.gemv ? NULL
                     : v.shared         ? ps->act_shd
                                        : ps->actd + v.row0 * ps->ldactd;
    uint8_t *actd_ok = !ps->xd ? NULL : v.shared ? ps->act_shd_ok : ps->actd_ok + v.row0;
    const int64_t ldd = v.shared ? ps->ldact_shd : ps->ldactd;
    for (int64_t i = 0; actd && i < v.n; i++)
        if (!ps->k->pack_x_dot((actc ? actc : act) + i * ld + j0, j1 - j0, actd + i * ldd + j0))
            __atomic_store_n(&actd_ok[i], 0, __ATOMIC_RELAXED);
}

static void gemm2_item(const pass *ps, int64_t item, char *scratch) {
    const mxm_moe_plan *p = ps->p;
    const int32_t e = (int32_t)(item >> 32);
    const expert_view v = view_of(ps, e);
    const int64_t H = p->cfg.hidden_size, I = v.d.I;
    const int64_t h0 = (item & 0xFFFFFFFF) * ps->rows2;
    const int64_t h1 = h0 + ps->rows2 < H ? h0 + ps->rows2 : H;
    const bool round_bf16 = p->cfg.profile == MXM_PROFILE_TRTLLM;

    thread_scratch sc = scratch_of(ps, scratch);
    float *panel = sc.panel, *hy = sc.h0;
    const float **x = sc.x;
    const float *act = v.shared ? ps->act_sh : ps->act + v.row0 * I;
    for (int64_t i = 0; i < v.n; i++) x[i] = act + i * I;
    const int64_t nsbI = mxm_ceil_div(I, MXM_FP8_BLOCK);
    if (ps->xd && v.gemv) {
        const uint16_t *actd = v.shared ? ps->act_shd : ps->actd + v.row0 * ps->ldactd;
        const uint8_t *ok = v.shared ? ps->act_shd_ok : ps->actd_ok + v.row0;
        const int64_t ldd = v.shared ? ps->ldact_shd : ps->ldactd;
        for (int64_t i = 0; i < v.n; i++)
            sc.xd[i] = ok[i] ? actd + i * ldd : NULL;
    }
    if (ps->xc) {
        const float *actc = v.shared ? ps->act_shc : ps->actc + v.row0 * I;
        const float *acts = v.shared ? ps->act_shcs : ps->actcs + v.row0 * nsbI;
        for (int64_t i = 0; i < v.n; i++)
            sc.xc[i] = actc + i * I, sc.xs[i] = acts + i * nsbI;
    }
    float *y = v.shared ? ps->y_sh : ps->y + v.row0 * H;

    const int64_t group = group_rows(ps, v.n);
    for (int64_t i0 = 0; i0 < v.n; i0 += group) {
        const int64_t n = v.n - i0 < group ? v.n - i0 : group;
        group_tiles(ps, &sc, x, i0, n, I, v.gemv);
        for (int64_t hp = h0; hp < h1; hp += 16) {
            const int nr = h1 - hp < 16 ? (int)(h1 - hp) : 16;
            panel_product(ps, v.d.w2, v.d.w2_scale, I, hp, 1, nr, x + i0,
                          ps->xd && v.gemv ? sc.xd + i0 : NULL, n, hy, panel, &sc.tl);
            for (int64_t i = 0; i < n; i++) {
                float *dst = y + (i0 + i) * H + hp;
                for (int j = 0; j < nr; j++)
                    dst[j] = round_bf16 ? mxm_round_bf16(hy[i * 16 + j]) : hy[i * 16 + j];
            }
        }
    }
}

static void run_items(pass *ps, void (*fn)(const pass *, int64_t, char *)) {
    int64_t next = 0;
    const int nt = ps->nitems < ps->p->nthreads ? (int)ps->nitems : ps->p->nthreads;
#pragma omp parallel num_threads(nt > 0 ? nt : 1)
    {
        char *scratch = ps->thread_ws + (int64_t)THREAD_ID() * ps->thread_bytes;
        for (;;) {
            const int64_t i = __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED);
            if (i >= ps->nitems) break;
            fn(ps, ps->items[i], scratch);
        }
    }
}

static void store_row(void *dst, int32_t dtype, int64_t t, const float *v, int64_t H) {
    if (dtype == MXM_DT_F32) {
        memcpy((float *)dst + t * H, v, (size_t)H * 4);
    } else {
        uint16_t *o = (uint16_t *)dst + t * H;
        for (int64_t i = 0; i < H; i++) o[i] = mxm_bf16_rne(v[i]);
    }
}

static void combine(const pass *ps, const mxm_moe_outputs *out, int64_t b0) {
    const mxm_moe_plan *p = ps->p;
    const int64_t H = p->cfg.hidden_size, K = p->cfg.top_k;
    const bool has_shared = p->cfg.shared_intermediate_size > 0;
#pragma omp parallel for num_threads(ps->nt < p->nthreads ? (int)ps->nt : p->nthreads) schedule(static)
    for (int64_t t = 0; t < ps->nt; t++) {
        float *acc = (float *)(ps->thread_ws + (int64_t)THREAD_ID() * ps->thread_bytes);
        for (int64_t i = 0; i < H; i++) acc[i] = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            const int32_t r = ps->pos[t * K + k];
            if (r < 0) continue;
            const float w = ps->wts[t * K + k];
            const float *y = ps->y + (int64_t)r * H;
            for (int64_t i = 0; i < H; i++) acc[i] += w * y[i];
        }
        if (out->out_routed) store_row(out->out_routed, out->out_dtype, b0 + t, acc, H);
        if (has_shared)
            for (int64_t i = 0; i < H; i++) acc[i] += ps->y_sh[t * H + i];
        store_row(out->out, out->out_dtype, b0 + t, acc, H);
    }
}

/* ---- plan and forward -------------------------------------------------------------------------------- */

static mxm_status layout_workspace(const mxm_moe_plan *p, cpu_state *cs) {
    const mxm_moe_config *c = &p->cfg;
    const int64_t B = cs->batch, K = c->top_k, H = c->hidden_size, I = c->intermediate_size;
    const int64_t Is = c->shared_intermediate_size;
    cpu_layout *w = &cs->ws;
    int64_t cur = 0;
    w->xf = mxm_ws_take(&cur, mxm_mul3_i64(B, H, 4), 64);
    w->ids = mxm_ws_take(&cur, mxm_mul3_i64(B, K, 4), 64);
    w->wts = mxm_ws_take(&cur, mxm_mul3_i64(B, K, 4), 64);
    w->pos = mxm_ws_take(&cur, mxm_mul3_i64(B, K, 4), 64);
    w->rows = mxm_ws_take(&cur, mxm_mul3_i64(B, K + 1, 4), 64);
    w->counts = mxm_ws_take(&cur, mxm_mul3_i64((int64_t)p->e_loc + 1, 3, 8), 64);
    w->fwd_rows = mxm_ws_take(&cur, mxm_mul3_i64((int64_t)p->e_loc + 1, 1, 8), 64);
    w->items = mxm_ws_take(&cur, mxm_mul3_i64(cs->max_items, 1, 8), 64);
    w->order = mxm_ws_take(&cur, mxm_mul3_i64((int64_t)p->e_loc + 1, 1, 4), 64);
    w->act = mxm_ws_take(&cur, mxm_mul3_i64(B * K, I, 4), 64);
    w->act_sh = mxm_ws_take(&cur, mxm_mul3_i64(B, Is, 4), 64);
    w->y = mxm_ws_take(&cur, mxm_mul3_i64(B * K, H, 4), 64);
    w->y_sh = mxm_ws_take(&cur, Is ? mxm_mul3_i64(B, H, 4) : 0, 64);
    const int64_t cd = cs->codes ? 4 : 0; /* bytes per code and scale */
    w->xc = mxm_ws_take(&cur, mxm_mul3_i64(B, H, cd), 64);
    w->xcs = mxm_ws_take(&cur, mxm_mul3_i64(B, mxm_ceil_div(H, MXM_FP8_BLOCK), cd), 64);
    w->actc = mxm_ws_take(&cur, mxm_mul3_i64(B * K, I, cd), 64);
    w->actcs = mxm_ws_take(&cur, mxm_mul3_i64(B * K, mxm_ceil_div(I, MXM_FP8_BLOCK), cd), 64);
    w->act_shc = mxm_ws_take(&cur, mxm_mul3_i64(B, Is, cd), 64);
    w->act_shcs = mxm_ws_take(&cur, mxm_mul3_i64(B, mxm_ceil_div(Is, MXM_FP8_BLOCK), cd), 64);
    const int64_t dd = cs->dot ? 2 : 0, dok = cs->dot ? 1 : 0; /* bytes per dot value, per flag */
    w->xd = mxm_ws_take(&cur, mxm_mul3_i64(B, MXM_DOT_COLS(H), dd), 64);
    w->xd_ok = mxm_ws_take(&cur, mxm_mul3_i64(B, dok, 1), 64);
    w->actd = mxm_ws_take(&cur, mxm_mul3_i64(B * K, MXM_DOT_COLS(I), dd), 64);
    w->actd_ok = mxm_ws_take(&cur, mxm_mul3_i64(B * K, dok, 1), 64);
    w->act_shd = mxm_ws_take(&cur, mxm_mul3_i64(B, MXM_DOT_COLS(Is), dd), 64);
    w->act_shd_ok = mxm_ws_take(&cur, mxm_mul3_i64(B, dok, 1), 64);
    w->route_scratch_bytes = mxm_route_scratch_bytes(&p->route);
    w->route_scratch = mxm_ws_take(&cur, mxm_mul3_i64(p->nthreads, w->route_scratch_bytes, 1), 64);
    w->thread = mxm_ws_take(&cur, mxm_mul3_i64(p->nthreads, w->thread_bytes, 1), 64);
    if (cur < 0)
        return mxm_fail(MXM_ERR_OVERFLOW, "workspace size for %lld tokens overflows int64",
                        (long long)p->max_tokens);
    w->total = mxm_align_up(cur, 64);
    return MXM_OK;
}

static mxm_status cpu_plan(mxm_moe_plan *p) {
    cpu_state *cs = calloc(1, sizeof *cs);
    if (!cs) return mxm_fail(MXM_ERR_NOMEM, "mxm_moe_plan_create: out of memory");
    p->backend_state = cs;
    const mxm_cpu_kernels *k = mxm_cpu_kernels_get(p->cfg.kernels == MXM_KERNELS_REF);
    cs->k = k;
    cs->wk = &k->wfmt[p->cfg.weight_format];
    cs->tiles = cs->wk->gemm_tiles16 != NULL;
    cs->dot = k->pack_x_dot && cs->wk->gemv_dot;
    /* DeepSeek FP8 W8A8 activations are E4M3 codes times f32 scales, mostly not bf16-exact: its
     * tiles and bf16 GEMV take the codes, with the 1x128 scales beside them */
    cs->codes = (cs->tiles || cs->dot) && p->cfg.weight_format == MXM_WFMT_FP8_BLOCK &&
                p->cfg.act_quant != MXM_ACT_QUANT_NONE;
    p->kernels_name = k->name;
    cs->batch = p->max_tokens < CPU_BATCH ? p->max_tokens : CPU_BATCH;
    const int64_t H = p->cfg.hidden_size, max_rows = max_rows_of(p, cs->batch);
    int64_t I = p->cfg.intermediate_size;
    if (p->cfg.shared_intermediate_size > I) I = p->cfg.shared_intermediate_size;
    const int64_t bytes = mxm_mul3_i64(panel_floats_of(p) + 2 * 16 * max_rows, 4, 1);
    if (bytes < 0) return mxm_fail(MXM_ERR_OVERFLOW, "per-thread scratch overflows");
    cs->ws.thread_bytes =
        scratch_base_bytes(p, cs->batch) + (cs->tiles ? scratch_tile_bytes(p) : 0);
    const int64_t chunks1 = mxm_ceil_div(I, GEMM1_COLS), chunks2 = mxm_ceil_div(H, GEMM2_ROWS);
    cs->max_items = ((int64_t)p->e_loc + 1) * (chunks1 > chunks2 ? chunks1 : chunks2);
    const mxm_status st = layout_workspace(p, cs);
    p->ws_bytes = cs->ws.total;
    return st;
}

/* The top-k ids and weights of tokens b0 .. b0 + ps->nt into ps->ids / ps->wts: routed from the
 * logits in parallel (scratch: route_bytes per thread), or the caller's. */
static void route_batch(pass *ps, const mxm_moe_inputs *in, int64_t b0, char *scratch,
                        int64_t route_bytes) {
    const mxm_moe_plan *p = ps->p;
    const int64_t K = p->cfg.top_k, E = p->cfg.num_experts;
    if (!in->router_logits) {
        memcpy(ps->ids, in->topk_ids + b0 * K, (size_t)(ps->nt * K) * 4);
        memcpy(ps->wts, in->topk_weights + b0 * K, (size_t)(ps->nt * K) * 4);
        return;
    }
    const int64_t ldt = in->logits_dtype == MXM_DT_BF16 ? 2 : 4;
    const char *lg = (const char *)in->router_logits + b0 * E * ldt;
    const int nthr = ps->nt < p->nthreads ? (int)ps->nt : p->nthreads;
#pragma omp parallel num_threads(nthr)
    {
        char *rs = scratch + (int64_t)THREAD_ID() * route_bytes;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < ps->nt; t++)
            mxm_route_rows(&p->route, lg, in->logits_dtype, in->routing_bias, in->bias_dtype, t,
                           t + 1, ps->ids, ps->wts, rs);
    }
}

/* ps->fwd_rows: rows per local expert over all T tokens (ids outside [0, E) are left to the
 * passes' permute to report), the shared expert's T. Caller-given ids are counted where they
 * are; logits are routed batch by batch into ps->ids. */
static void count_forward_rows(pass *ps, const mxm_moe_inputs *in, int64_t T, char *scratch,
                               int64_t route_bytes) {
    const mxm_moe_plan *p = ps->p;
    const int64_t K = p->cfg.top_k, off = p->cfg.local_expert_offset, B = ps->cs->batch;
    memset(ps->fwd_rows, 0, sizeof(int64_t) * (size_t)(p->e_loc + 1));
    for (int64_t b0 = 0; b0 < T; b0 += B) {
        ps->nt = T - b0 < B ? T - b0 : B;
        if (in->router_logits) route_batch(ps, in, b0, scratch, route_bytes);
        const int32_t *ids = in->router_logits ? ps->ids : in->topk_ids + b0 * K;
        for (int64_t i = 0; i < ps->nt * K; i++) {
            const int64_t e = (int64_t)ids[i] - off;
            if (e >= 0 && e < p->e_loc) ps->fwd_rows[e]++;
        }
    }
    ps->fwd_rows[p->e_loc] = p->cfg.shared_intermediate_size ? T : 0;
}

static mxm_status cpu_forward(const mxm_moe_plan *p, const mxm_moe_weights *w,
                              const mxm_moe_inputs *in, const mxm_moe_outputs *out, void *wsv,
                              void *stream) {
    (void)stream;
    char *ws = wsv;
    const mxm_moe_config *c = &p->cfg;
    const int64_t T = in->num_tokens, K = c->top_k;
    const cpu_state *cs = p->backend_state;
    const cpu_layout *l = &cs->ws;
    const int64_t B = cs->batch;
    pass ps = {.p = p, .cs = cs, .k = cs->k, .wk = cs->wk, .w = w};
    ps.xf = (float *)(ws + l->xf);
    ps.ids = (int32_t *)(ws + l->ids);
    ps.wts = (float *)(ws + l->wts);
    ps.pos = (int32_t *)(ws + l->pos);
    ps.rows = (int32_t *)(ws + l->rows);
    ps.shared_rows = ps.rows + B * K;
    ps.count = (int64_t *)(ws + l->counts);
    ps.offset = ps.count + p->e_loc + 1;
    ps.items = (int64_t *)(ws + l->items);
    ps.order = (int32_t *)(ws + l->order);
    ps.act = (float *)(ws + l->act);
    ps.act_sh = (float *)(ws + l->act_sh);
    ps.y = (float *)(ws + l->y);
    ps.y_sh = (float *)(ws + l->y_sh);
    if (cs->codes) {
        ps.xc = (float *)(ws + l->xc), ps.xcs = (float *)(ws + l->xcs);
        ps.actc = (float *)(ws + l->actc), ps.actcs = (float *)(ws + l->actcs);
        ps.act_shc = (float *)(ws + l->act_shc), ps.act_shcs = (float *)(ws + l->act_shcs);
    }
    if (cs->dot) {
        ps.xd = (uint16_t *)(ws + l->xd), ps.xd_ok = (uint8_t *)(ws + l->xd_ok);
        ps.actd = (uint16_t *)(ws + l->actd), ps.actd_ok = (uint8_t *)(ws + l->actd_ok);
        ps.act_shd = (uint16_t *)(ws + l->act_shd), ps.act_shd_ok = (uint8_t *)(ws + l->act_shd_ok);
        ps.ldxd = MXM_DOT_COLS(c->hidden_size), ps.ldactd = MXM_DOT_COLS(c->intermediate_size);
        ps.ldact_shd = MXM_DOT_COLS(c->shared_intermediate_size);
    }
    ps.thread_ws = ws + l->thread;
    ps.thread_bytes = l->thread_bytes;
    for (int64_t t = 0; t < B; t++)
        ps.shared_rows[t] = (int32_t)t;

    /* An expert's path (GEMV or not) follows its rows in the whole forward, not in a pass, so
     * that a token's result does not depend on how passes split the tokens (an expert-parallel
     * rank's passes split them differently from the single-device layer's): with several
     * passes, the whole forward's top-k ids are counted first (routing twice). */
    ps.fwd_rows = (int64_t *)(ws + l->fwd_rows);
    if (T > B) count_forward_rows(&ps, in, T, ws + l->route_scratch, l->route_scratch_bytes);
    for (int64_t b0 = 0; b0 < T; b0 += B) {
        ps.nt = T - b0 < B ? T - b0 : B;
        const int nthr = ps.nt < p->nthreads ? (int)ps.nt : p->nthreads;
        /* 1. prepare activations and route */
#pragma omp parallel for num_threads(nthr) schedule(static)
        for (int64_t t = 0; t < ps.nt; t++)
            prepare_row(&ps, in, b0 + t, t);
        route_batch(&ps, in, b0, ws + l->route_scratch, l->route_scratch_bytes);
        if (out->topk_ids) memcpy(out->topk_ids + b0 * K, ps.ids, (size_t)(ps.nt * K) * 4);
        if (out->topk_weights) memcpy(out->topk_weights + b0 * K, ps.wts, (size_t)(ps.nt * K) * 4);
        /* 2. permute */
        mxm_status st = permute(&ps);
        if (st) return st;
        if (T <= B) memcpy(ps.fwd_rows, ps.count, sizeof(int64_t) * (size_t)(p->e_loc + 1));
        /* 3. GEMM1 + activation + requantization */
        /* With the format's tile product and more than MXM_GEMV_MAX_TOKENS rows per local expert
         * on average, larger items: each converts its token rows to tiles once for more weight
         * rows. */
        const bool big =
            tiles_for_format(&ps) && ps.nt * K > MXM_GEMV_MAX_TOKENS * (int64_t)p->e_loc;
        ps.cols1 = big ? TILE_ITEM : GEMM1_COLS, ps.rows2 = big ? TILE_ITEM : GEMM2_ROWS;
        make_items(&ps, c->intermediate_size, c->shared_intermediate_size, ps.cols1);
        if (ps.xd) { /* every intermediate row exact until a segment says otherwise */
            memset(ps.actd_ok, 1, (size_t)(ps.nt * K));
            memset(ps.act_shd_ok, 1, (size_t)ps.nt);
        }
        run_items(&ps, gemm1_item);
        /* 4. GEMM2 */
        make_items(&ps, c->hidden_size, c->hidden_size, ps.rows2);
        run_items(&ps, gemm2_item);
        /* 5. combine */
        combine(&ps, out, b0);
    }
    return MXM_OK;
}

const mxm_backend_ops mxm_cpu_backend = {
    .name = "cpu", .plan = cpu_plan, .forward = cpu_forward, .destroy = NULL};
