/* MXFP8 quantizer benchmark: throughput of the row kernels (reference and the dispatched SIMD set)
 * against the machine's memory-read roof measured in the same run.
 *
 *   bench_quant [--rows R] [--cols C] [--reps N] [--json PATH]
 *
 * Roof: sum of a 512 MiB fp32 buffer (AVX2 when available, 4 accumulators), best of several
 * runs, with 1 and 2 threads (and all threads if more). Kernels: MXFP8 quantize from f32 and
 * from bf16 (RCEIL), dequantize to f32, on an R x C tensor (default 8192 x 8192) of block-scaled
 * data, rows split over threads like mxm_mxfp8_quantize. Throughput counts bytes read + bytes
 * written; "%roof" divides it by the read roof at the same thread count. Prints a table and
 * writes JSON (default: bench/results/quant.json next to this source file). */
#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "bench_common.h"
#include "cpu/cpu_kernels.h"
#include "formats/formats.h"
#include "mxmoe.h"

static void *xalloc(size_t n) {
    return bench_alloc("bench_quant", n);
}

/* ---- kernels ------------------------------------------------------------------------------- */

enum { OP_Q_F32, OP_Q_BF16, OP_DEQ, OP_COUNT };
static const char *op_names[OP_COUNT] = {"quantize_f32", "quantize_bf16", "dequantize_f32"};

typedef struct {
    const float *x;
    const uint16_t *xb;
    uint8_t *q, *s;
    float *out;
    int64_t rows, cols;
} tensors;

static double run_op(const mxm_cpu_kernels *k, int op, const tensors *t, int threads, int reps) {
    double best = 1e30;
    const int64_t rows = t->rows, cols = t->cols, sb = cols / MXM_MX_BLOCK;
    for (int r = 0; r < reps; r++) {
        const double t0 = bench_now();
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < rows; i++) {
            if (op == OP_Q_F32)
                k->mx_quantize_f32(t->x + i * cols, cols, t->q + i * cols, t->s + i * sb,
                                   MXM_SCALE_RCEIL);
            else if (op == OP_Q_BF16)
                k->mx_quantize_bf16(t->xb + i * cols, cols, t->q + i * cols, t->s + i * sb,
                                    MXM_SCALE_RCEIL);
            else
                k->mx_dequantize_f32(t->q + i * cols, t->s + i * sb, cols, t->out + i * cols);
        }
        const double dt = bench_now() - t0;
        if (dt < best) best = dt;
    }
    return best;
}

static double op_bytes(int op, int64_t n) {
    const double scales = (double)n / MXM_MX_BLOCK;
    switch (op) {
    case OP_Q_F32: return 4.0 * n + n + scales;
    case OP_Q_BF16: return 2.0 * n + n + scales;
    default: return n + scales + 4.0 * n;
    }
}

static void cpu_model(char *buf, size_t len) {
    snprintf(buf, len, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            char *p = strchr(line, ':');
            if (p) {
                p++;
                while (*p == ' ') p++;
                p[strcspn(p, "\n")] = 0;
                snprintf(buf, len, "%s", p);
            }
            break;
        }
    }
    fclose(f);
}

static void default_json_path(char *buf, size_t len) {
    const char *src = __FILE__; /* absolute under CMake: <root>/bench/bench_quant.c */
    const char *slash = strrchr(src, '/');
    if (slash)
        snprintf(buf, len, "%.*s/results/quant.json", (int)(slash - src), src);
    else
        snprintf(buf, len, "bench/results/quant.json");
}

static int mkdir_for(const char *path) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) return 0;
    *slash = 0;
    if (mkdir(dir, 0775) && errno != EEXIST) return -1;
    return 0;
}

int main(int argc, char **argv) {
    int64_t rows = 8192, cols = 8192;
    int reps = 5;
    char json_path[4096];
    default_json_path(json_path, sizeof json_path);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rows") && i + 1 < argc)
            rows = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--cols") && i + 1 < argc)
            cols = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json") && i + 1 < argc)
            snprintf(json_path, sizeof json_path, "%s", argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--rows R] [--cols C] [--reps N] [--json PATH]\n", argv[0]);
            return 2;
        }
    }
    if (rows <= 0 || cols <= 0 || cols % MXM_MX_BLOCK || reps <= 0) {
        fprintf(stderr, "bench_quant: need rows > 0, cols > 0 and a multiple of 32, reps > 0\n");
        return 2;
    }

    const int maxt = omp_get_max_threads();
    int thread_counts[3] = {1, 2, maxt}, ntc = maxt > 2 ? 3 : (maxt >= 2 ? 2 : 1);
    __builtin_cpu_init();
    const int have_avx2 = __builtin_cpu_supports("avx2");
    char model[256];
    cpu_model(model, sizeof model);

    /* Roof: the same read roof as the layer benchmark (bench_common.h), 512 MiB, best of 7. */
    double roof[3];
    for (int t = 0; t < ntc; t++) roof[t] = bench_read_roof(thread_counts[t], (int64_t)512 << 20, 7);
    (void)have_avx2;

    /* Data: normal-ish values with a random power-of-two factor per 32-block (2^-20..2^20). */
    const int64_t n = rows * cols;
    tensors T = {0};
    float *x = xalloc((size_t)n * 4);
    uint16_t *xb = xalloc((size_t)n * 2);
    T.q = xalloc((size_t)n);
    T.s = xalloc((size_t)(n / MXM_MX_BLOCK));
    T.out = xalloc((size_t)n * 4);
    T.rows = rows;
    T.cols = cols;
#pragma omp parallel for num_threads(maxt) schedule(static)
    for (int64_t b = 0; b < n / MXM_MX_BLOCK; b++) {
        uint64_t st = (uint64_t)b * 0x9E3779B97F4A7C15ull + 12345;
        st ^= st >> 29;
        const float f = ldexpf(1.0f, (int)(st % 41) - 20);
        for (int i = 0; i < MXM_MX_BLOCK; i++) {
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            /* sum of two uniforms: a cheap bell shape in (-2, 2) */
            const double u = (double)(st >> 40) * 0x1.0p-24 + (double)((st >> 16) & 0xFFFFFF) * 0x1.0p-24;
            x[b * MXM_MX_BLOCK + i] = (float)((u - 1.0) * 2.0) * f;
            xb[b * MXM_MX_BLOCK + i] = mxm_bf16_rne(x[b * MXM_MX_BLOCK + i]);
        }
        T.s[b] = 0;
    }
    memset(T.q, 0, (size_t)n);
    memset(T.out, 0, (size_t)n * 4);
    T.x = x;
    T.xb = xb;

    const mxm_cpu_kernels *ks[2] = {mxm_cpu_kernels_get(true), mxm_cpu_kernels_get(false)};
    const int nks = strcmp(ks[0]->name, ks[1]->name) ? 2 : 1;

    printf("bench_quant: %s, %d threads available, tensor %lld x %lld, best of %d\n", model, maxt,
           (long long)rows, (long long)cols, reps);
    printf("read roof (sum of 512 MiB fp32):");
    for (int t = 0; t < ntc; t++) printf("  %d thr %.2f GB/s", thread_counts[t], roof[t]);
    printf("\n\n%-16s %-6s %4s %10s %10s %8s\n", "op", "kernel", "thr", "ms", "GB/s", "%roof");

    typedef struct {
        int op, kset, tidx;
        double ms, gbs, pct;
    } row_t;
    row_t res[2 * 3 * OP_COUNT];
    int nres = 0;
    for (int op = 0; op < OP_COUNT; op++) {
        for (int kk = 0; kk < nks; kk++) {
            for (int t = 0; t < ntc; t++) {
                /* dequantize needs valid codes: quantize once with the reference first */
                if (op == OP_DEQ && kk == 0 && t == 0) run_op(ks[0], OP_Q_F32, &T, maxt, 1);
                const int r = kk == 0 ? (reps < 2 ? reps : 2) : reps; /* ref is slow */
                const double dt = run_op(ks[kk], op, &T, thread_counts[t], r);
                row_t *e = &res[nres++];
                e->op = op;
                e->kset = kk;
                e->tidx = t;
                e->ms = dt * 1e3;
                e->gbs = op_bytes(op, n) / dt / 1e9;
                e->pct = 100.0 * e->gbs / roof[t];
                printf("%-16s %-6s %4d %10.1f %10.2f %7.1f%%\n", op_names[op], ks[kk]->name,
                       thread_counts[t], e->ms, e->gbs, e->pct);
            }
        }
    }

    if (mkdir_for(json_path)) {
        fprintf(stderr, "bench_quant: cannot create the directory of %s: %s\n", json_path,
                strerror(errno));
        return 1;
    }
    FILE *f = fopen(json_path, "w");
    if (!f) {
        fprintf(stderr, "bench_quant: cannot write %s: %s\n", json_path, strerror(errno));
        return 1;
    }
    fprintf(f, "{\n  \"benchmark\": \"mxfp8_quant\",\n  \"cpu\": \"%s\",\n  \"threads_available\": %d,\n",
            model, maxt);
    fprintf(f, "  \"rows\": %lld,\n  \"cols\": %lld,\n  \"reps\": %d,\n  \"scale_rule\": \"rceil\",\n",
            (long long)rows, (long long)cols, reps);
    fprintf(f, "  \"bytes_counted\": \"read + written\",\n  \"read_roof_gbs\": {");
    for (int t = 0; t < ntc; t++)
        fprintf(f, "%s\"%d\": %.3f", t ? ", " : "", thread_counts[t], roof[t]);
    fprintf(f, "},\n  \"results\": [\n");
    for (int i = 0; i < nres; i++)
        fprintf(f,
                "    {\"op\": \"%s\", \"kernels\": \"%s\", \"threads\": %d, \"ms\": %.3f, "
                "\"gbs\": %.3f, \"pct_read_roof\": %.1f}%s\n",
                op_names[res[i].op], ks[res[i].kset]->name, thread_counts[res[i].tidx], res[i].ms,
                res[i].gbs, res[i].pct, i + 1 < nres ? "," : "");
    fprintf(f, "  ]\n}\n");
    fclose(f);
    printf("\nwrote %s\n", json_path);
    free(x);
    free(xb);
    free(T.q);
    free(T.s);
    free(T.out);
    return 0;
}
