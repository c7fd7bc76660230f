/* The CPU decode GEMV alone: every kernel set's wfmt[format].gemv (src/cpu/cpu_kernels.h) on one
 * thread, called as the MoE layer calls it (4 weight rows per call, 1-4 tokens sharing the call),
 * with its ceilings measured in the same run.
 *
 *   bench_gemv [--k K] [--tokens 1,2,3,4] [--format mxfp8|fp8_block] [--rounds N] [--memory-mib M]
 *
 * Two placements of the weights: "L2" (about 256 KiB of codes, called over and over: what the
 * kernel's instructions allow) and "memory" (M MiB, default 256: above the L3 of the CPUs here,
 * streamed once per sweep: what a decode step sees). Figures are GB/s of weight bytes (codes +
 * scales) read: the best sweep of each round, median over the rounds; the sets and token counts
 * take turns within a round, so a noisy neighbour slows all of them alike. Ceilings of one thread,
 * same run: the memory-read roof (memory placement) and the fp32 FMA roof over 2 * tokens flops per
 * weight. The weights are Gaussian rows quantized by the library (MXFP8: RCEIL; DeepSeek FP8:
 * 128x128 blocks, amax / 448), so subnormal codes and special blocks occur as often as in real
 * checkpoints. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "cpu/cpu_kernels.h"
#include "formats/formats.h"
#include "mxmoe.h"

#define MAX_SETS 8
#define ROUNDS_MAX 64

typedef struct weights {
    int fmt;
    int64_t rows, k;
    uint8_t *q;
    void *s;
    double bytes; /* codes + scales */
} weights;

static void *xalloc(size_t n) {
    return bench_alloc("bench_gemv", n);
}

/* Deterministic normal values (Box-Muller on a 64-bit LCG). */
static float normal(uint64_t *st) {
    *st = *st * 6364136223846793005ull + 1442695040888963407ull;
    const double u1 = ((*st >> 11) + 1.0) / 9007199254740993.0;
    *st = *st * 6364136223846793005ull + 1442695040888963407ull;
    const double u2 = (*st >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static weights make_weights(const mxm_cpu_kernels *ref, int fmt, int64_t rows, int64_t k) {
    weights w = {fmt, rows, k, xalloc((size_t)(rows * k)), NULL, 0};
    uint64_t st = 42;
    float *row = xalloc(sizeof(float) * (size_t)k * MXM_FP8_BLOCK);
    if (fmt == MXM_WFMT_MXFP8) {
        uint8_t *s = xalloc((size_t)(rows * k / MXM_MX_BLOCK));
        for (int64_t r = 0; r < rows; r++) {
            for (int64_t i = 0; i < k; i++)
                row[i] = 0.02f * normal(&st);
            ref->mx_quantize_f32(row, k, w.q + r * k, s + r * (k / MXM_MX_BLOCK), MXM_SCALE_RCEIL);
        }
        w.s = s;
        w.bytes = (double)rows * k * (1.0 + 1.0 / MXM_MX_BLOCK);
    } else {
        const int64_t kb = (k + MXM_FP8_BLOCK - 1) / MXM_FP8_BLOCK,
                      rb = (rows + MXM_FP8_BLOCK - 1) / MXM_FP8_BLOCK;
        float *s = xalloc(sizeof(float) * (size_t)(rb * kb));
        for (int64_t b = 0; b < rb; b++) {
            const int64_t r0 = b * MXM_FP8_BLOCK,
                          nr = rows - r0 < MXM_FP8_BLOCK ? rows - r0 : MXM_FP8_BLOCK;
            for (int64_t i = 0; i < nr * k; i++)
                row[i] = 0.02f * normal(&st);
            for (int64_t c = 0; c < kb; c++) {
                const int64_t c0 = c * MXM_FP8_BLOCK,
                              nc = k - c0 < MXM_FP8_BLOCK ? k - c0 : MXM_FP8_BLOCK;
                float amax = 0;
                for (int64_t r = 0; r < nr; r++)
                    for (int64_t i = 0; i < nc; i++)
                        amax = fmaxf(amax, fabsf(row[r * k + c0 + i]));
                const float sc = amax > 0 ? amax / MXM_E4M3_MAX : 1.0f;
                s[b * kb + c] = sc;
                for (int64_t r = 0; r < nr; r++)
                    for (int64_t i = 0; i < nc; i++)
                        w.q[(r0 + r) * k + c0 + i] = mxm_e4m3_rne_sat(row[r * k + c0 + i] / sc);
            }
        }
        w.s = s;
        w.bytes = (double)rows * k + sizeof(float) * (double)(rb * kb);
    }
    free(row);
    return w;
}

/* One sweep: every 4 rows of w with nt tokens, as the layer's GEMV experts call it. */
static void sweep(const mxm_cpu_kernels *ks, const weights *w, const float *const *x, int nt,
                  float *out) {
    for (int64_t r = 0; r < w->rows; r += 4) {
        const int nr = w->rows - r < 4 ? (int)(w->rows - r) : 4;
        ks->wfmt[w->fmt].gemv(w->q, w->s, w->k, r, 1, nr, x, nt, out + (r / 4) * 16, 4);
    }
}

/* A whole decimal integer in [lo, hi], or exits with a usage error naming the option. */
static int64_t parse_int(const char *opt, const char *s, int64_t lo, int64_t hi) {
    char *end = NULL;
    const long long v = strtoll(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) {
        fprintf(stderr, "bench_gemv: %s takes an integer in %lld..%lld, not '%s'\n", opt,
                (long long)lo, (long long)hi, s);
        exit(2);
    }
    return v;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int64_t k = 2048, memory_mib = 256;
    int rounds = 7, fmt = MXM_WFMT_MXFP8;
    char tokens_arg[64] = "1,2,3,4";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--k") && i + 1 < argc)
            k = parse_int("--k", argv[++i], MXM_MX_BLOCK, 1 << 20);
        else if (!strcmp(argv[i], "--memory-mib") && i + 1 < argc)
            memory_mib = parse_int("--memory-mib", argv[++i], 1, 4096);
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc)
            snprintf(tokens_arg, sizeof tokens_arg, "%s", argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = (int)parse_int("--rounds", argv[++i], 1, ROUNDS_MAX);
        else if (!strcmp(argv[i], "--format") && i + 1 < argc) {
            const char *f = argv[++i];
            if (!strcmp(f, "mxfp8"))
                fmt = MXM_WFMT_MXFP8;
            else if (!strcmp(f, "fp8_block"))
                fmt = MXM_WFMT_FP8_BLOCK;
            else {
                fprintf(stderr, "bench_gemv: unknown --format '%s' (supported: mxfp8, fp8_block)\n",
                        f);
                return 2;
            }
        } else {
            fprintf(stderr,
                    "usage: %s [--k K] [--tokens 1,2,3,4] [--format mxfp8|fp8_block] [--rounds N] "
                    "[--memory-mib M]\n",
                    argv[0]);
            return 2;
        }
    }
    int tokens[MXM_GEMV_MAX_TOKENS], ntok = 0;
    for (char *p = strtok(tokens_arg, ","); p; p = strtok(NULL, ",")) {
        const int t = (int)parse_int("--tokens", p, 1, MXM_GEMV_MAX_TOKENS);
        if (ntok == MXM_GEMV_MAX_TOKENS) {
            fprintf(stderr, "bench_gemv: --tokens takes up to %d counts\n", MXM_GEMV_MAX_TOKENS);
            return 2;
        }
        tokens[ntok++] = t;
    }
    if (!ntok) {
        fprintf(stderr, "bench_gemv: --tokens names no token count\n");
        return 2;
    }
    if (k % MXM_MX_BLOCK) {
        fprintf(stderr, "bench_gemv: --k must be a multiple of 32\n");
        return 2;
    }

    const mxm_cpu_kernels *sets[MAX_SETS];
    const int nsets = mxm_cpu_kernel_sets(sets, MAX_SETS); /* the reference first */
    const mxm_cpu_kernels *ref = sets[0];
    /* whole 4-row calls, at least one */
    const int64_t rows_l2 = ((256 << 10) / k + 3) / 4 * 4 + 4 * ((256 << 10) / k < 1),
                  rows_mem =
                      ((memory_mib << 20) / k + 3) / 4 * 4 + 4 * ((memory_mib << 20) / k < 1);
    const weights wl = make_weights(ref, fmt, rows_l2, k), wm = make_weights(ref, fmt, rows_mem, k);
    float *x[MXM_GEMV_MAX_TOKENS];
    uint64_t st = 7;
    for (int t = 0; t < MXM_GEMV_MAX_TOKENS; t++) {
        x[t] = xalloc(sizeof(float) * (size_t)k);
        for (int64_t i = 0; i < k; i++)
            x[t][i] = normal(&st);
    }
    float *out = xalloc(sizeof(float) * (size_t)(rows_mem / 4 + 1) * 16);

    const double roof = bench_read_roof(1, 512ll << 20, 5), fma = bench_fma_roof(1);
    printf("bench_gemv: %s weights, k %lld, one thread; ceilings (same run): read %.1f GB/s, fp32 "
           "FMA %.1f GFLOP/s\n",
           fmt == MXM_WFMT_MXFP8 ? "mxfp8" : "fp8_block", (long long)k, roof, fma);
    printf("L2: %lld rows (%.0f KiB), memory: %lld rows (%.0f MiB); GB/s of weight bytes, median "
           "of %d rounds' best\n",
           (long long)rows_l2, wl.bytes / 1024, (long long)rows_mem, wm.bytes / (1 << 20), rounds);

    /* [placement][set][tokens][round] */
    static double gbs[2][MAX_SETS][MXM_GEMV_MAX_TOKENS][ROUNDS_MAX];
    for (int rd = 0; rd < rounds; rd++)
        for (int pl = 0; pl < 2; pl++) {
            const weights *w = pl ? &wm : &wl;
            const int sweeps = pl ? 1 : (int)(32e6 / w->bytes) + 1; /* L2: about 32 MB a turn */
            for (int ti = 0; ti < ntok; ti++)
                for (int si = 1; si < nsets; si++) { /* the reference is far slower: left out */
                    double best = 1e30;
                    for (int rep = 0; rep < sweeps; rep++) {
                        const double t0 = bench_now();
                        sweep(sets[si], w, (const float *const *)x, tokens[ti], out);
                        const double dt = bench_now() - t0;
                        if (dt < best) best = dt;
                    }
                    gbs[pl][si][ti][rd] = w->bytes / best / 1e9;
                }
        }

    printf("%-10s %-7s %6s %10s %10s %14s\n", "set", "where", "tokens", "GB/s", "min GB/s",
           "ceiling GB/s");
    for (int pl = 0; pl < 2; pl++)
        for (int ti = 0; ti < ntok; ti++)
            for (int si = 1; si < nsets; si++) {
                double v[ROUNDS_MAX];
                memcpy(v, gbs[pl][si][ti], sizeof(double) * (size_t)rounds);
                qsort(v, (size_t)rounds, sizeof(double), cmp_double);
                /* FMA ceiling: 2 * tokens flops per weight, weight bytes per weight */
                const double per_weight =
                    (pl ? wm.bytes : wl.bytes) / ((double)(pl ? wm.rows : wl.rows) * k);
                const double fma_ceiling = fma / (2.0 * tokens[ti]) * per_weight;
                const double ceiling = pl && roof < fma_ceiling ? roof : fma_ceiling;
                printf("%-10s %-7s %6d %10.2f %10.2f %9.1f (%s)\n", sets[si]->name,
                       pl ? "memory" : "L2", tokens[ti], v[rounds / 2], v[0], ceiling,
                       pl && roof < fma_ceiling ? "read" : "FMA");
            }
    return 0;
}
