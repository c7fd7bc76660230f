/* Helpers shared by the benchmark programs (bench/) and the CLI's benchmark module
 * (moebench.c): wall clock, the memory-read roof and the fp32 FMA roof, measured in the same run
 * as the figures they bound. Header-only. In tools/ because bench/ includes tools/, never the
 * reverse. */
#ifndef MXM_BENCH_COMMON_H
#define MXM_BENCH_COMMON_H

#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* n bytes, 64-byte aligned, for a benchmark program named prog: exits with a message when out of
 * memory. */
static inline void *bench_alloc(const char *prog, size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64)) {
        fprintf(stderr, "%s: out of memory (%zu bytes)\n", prog, n);
        exit(1);
    }
    return p;
}

/* GB/s of reading a large buffer (sum of floats) with nthreads, best of reps. */
__attribute__((target("avx2"), unused)) static double bench_read_roof(int nthreads, int64_t bytes, int reps) {
    const int64_t n = bytes / 4;
    float *buf = aligned_alloc(64, (size_t)bytes);
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t i = 0; i < n; i++) buf[i] = (float)(i & 7);
    double best = 0;
    volatile float sink = 0;
    for (int r = 0; r < reps; r++) {
        const double t0 = bench_now();
        float total = 0;
#pragma omp parallel for num_threads(nthreads) schedule(static) reduction(+ : total)
        for (int64_t c = 0; c < n; c += 64) {
            __m256 a0 = _mm256_load_ps(buf + c), a1 = _mm256_load_ps(buf + c + 8);
            __m256 a2 = _mm256_load_ps(buf + c + 16), a3 = _mm256_load_ps(buf + c + 24);
            a0 = _mm256_add_ps(a0, _mm256_load_ps(buf + c + 32));
            a1 = _mm256_add_ps(a1, _mm256_load_ps(buf + c + 40));
            a2 = _mm256_add_ps(a2, _mm256_load_ps(buf + c + 48));
            a3 = _mm256_add_ps(a3, _mm256_load_ps(buf + c + 56));
            __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
            float t[8];
            _mm256_storeu_ps(t, s);
            total += t[0] + t[7];
        }
        const double dt = bench_now() - t0;
        sink += total;
        if (bytes / dt / 1e9 > best) best = bytes / dt / 1e9;
    }
    (void)sink;
    free(buf);
    return best;
}

/* GFLOP/s of independent fp32 FMAs in registers (AVX2: 12 chains of 8 lanes) with nthreads. */
__attribute__((target("avx2,fma"), unused)) static double bench_fma_roof(int nthreads) {
    const int64_t iters = 20000000;
    double best = 0;
    for (int r = 0; r < 3; r++) {
        const double t0 = bench_now();
        float sink = 0;
#pragma omp parallel num_threads(nthreads) reduction(+ : sink)
        {
            __m256 a[12];
            const __m256 m = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
            for (int j = 0; j < 12; j++) a[j] = _mm256_set1_ps((float)j);
            for (int64_t i = 0; i < iters; i++)
                for (int j = 0; j < 12; j++) a[j] = _mm256_fmadd_ps(a[j], m, b);
            for (int j = 1; j < 12; j++) a[0] = _mm256_add_ps(a[0], a[j]);
            float t[8];
            _mm256_storeu_ps(t, a[0]);
            sink += t[0];
        }
        const double dt = bench_now() - t0;
        const double gf = (double)nthreads * iters * 12 * 8 * 2 / dt / 1e9;
        if (gf > best && sink != 12345.f) best = gf;
    }
    return best;
}

/* The same with 16-lane AVX-512 FMAs (12 chains), on CPUs with AVX-512F; 0 elsewhere. */
__attribute__((target("avx512f"), unused)) static double bench_fma_roof512_run(int nthreads) {
    const int64_t iters = 20000000;
    double best = 0;
    for (int r = 0; r < 3; r++) {
        const double t0 = bench_now();
        float sink = 0;
#pragma omp parallel num_threads(nthreads) reduction(+ : sink)
        {
            __m512 a[12];
            const __m512 m = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
            for (int j = 0; j < 12; j++) a[j] = _mm512_set1_ps((float)j);
            for (int64_t i = 0; i < iters; i++)
                for (int j = 0; j < 12; j++) a[j] = _mm512_fmadd_ps(a[j], m, b);
            for (int j = 1; j < 12; j++) a[0] = _mm512_add_ps(a[0], a[j]);
            sink += _mm512_reduce_add_ps(a[0]);
        }
        const double dt = bench_now() - t0;
        const double gf = (double)nthreads * iters * 12 * 16 * 2 / dt / 1e9;
        if (gf > best && sink != 12345.f) best = gf;
    }
    return best;
}

__attribute__((unused)) static double bench_fma_roof512(int nthreads) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? bench_fma_roof512_run(nthreads) : 0.0;
}

#endif
