/* The C side of python/bench/call_overhead.py, built against the installed package's libmxmoe.so
 * and mxmoe.h in two forms:
 * - a shared library (-DCO_LIB) with co_time_forward(): the baseline, loaded into the Python
 *   process and run on the very plan, weights, structs and workspace of the Python calls, in rounds
 *   interleaved with theirs, so that both see the same machine state;
 * - a program: its own copy of the same small MXFP8 layer, mxm_moe_forward called back to back
 *   through the public API, per-call wall time (a second reference, in a process of its own).
 *   Usage: call_overhead H I E K T iters threads seed; prints "median_ns min_ns". */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "mxmoe.h"

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* n calls of mxm_moe_forward with the caller's arguments, each timed alone into t_ns[i]: returns 0
 * or the first failing status. */
int co_time_forward(mxm_moe_plan *plan, const mxm_moe_weights *w, const mxm_moe_inputs *in,
                    const mxm_moe_outputs *o, void *ws, int64_t wsb, int n, double *t_ns) {
    for (int i = 0; i < n; i++) {
        const double t0 = now_ns();
        const mxm_status st = mxm_moe_forward(plan, w, in, o, ws, wsb, NULL);
        t_ns[i] = now_ns() - t0;
        if (st != MXM_OK) return st;
    }
    return 0;
}

/* mxm_moe_forward's type, doing nothing: the benchmark's "Python side alone" rows hand its address
 * to the extension module in place of the library's forward. */
int co_noop_forward(mxm_moe_plan *plan, const mxm_moe_weights *w, const mxm_moe_inputs *in,
                    const mxm_moe_outputs *o, void *ws, int64_t wsb, void *stream) {
    (void)plan, (void)w, (void)in, (void)o, (void)ws, (void)wsb, (void)stream;
    return MXM_OK;
}

#ifndef CO_LIB
static int cmp(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static float rnd(uint64_t *s) { /* uniform in [-1, 1) */
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*s >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: call_overhead H I E K T iters threads seed\n");
        return 2;
    }
    const int H = atoi(argv[1]), I = atoi(argv[2]), E = atoi(argv[3]), K = atoi(argv[4]), T = atoi(argv[5]);
    const int iters = atoi(argv[6]), threads = atoi(argv[7]);
    uint64_t seed = strtoull(argv[8], NULL, 10);
    mxm_moe_config cfg;
    mxm_moe_config_default(&cfg);
    cfg.hidden_size = H, cfg.intermediate_size = I, cfg.num_experts = E, cfg.top_k = K;
    cfg.w13_layout = MXM_W13_UP_GATE, cfg.weight_format = MXM_WFMT_MXFP8, cfg.num_threads = threads;
    const int64_t M1 = 2 * (int64_t)I;
    float *w = malloc(sizeof(float) * (size_t)(M1 * H > (int64_t)H * I ? M1 * H : (int64_t)H * I));
    uint8_t *q1 = malloc((size_t)(E * M1 * H)), *s1 = malloc((size_t)(E * M1 * H / 32));
    uint8_t *q2 = malloc((size_t)E * H * I), *s2 = malloc((size_t)E * H * I / 32);
    mxm_expert_weights *ex = malloc(sizeof(*ex) * (size_t)E);
    for (int e = 0; e < E; e++) {
        for (int64_t i = 0; i < M1 * H; i++) w[i] = rnd(&seed) * 0.1f;
        mxm_mxfp8_quantize(w, MXM_DT_F32, M1, H, 0, q1 + e * M1 * H, s1 + e * M1 * H / 32, MXM_SCALE_RCEIL, 1);
        for (int64_t i = 0; i < (int64_t)H * I; i++) w[i] = rnd(&seed) * 0.1f;
        mxm_mxfp8_quantize(w, MXM_DT_F32, H, I, 0, q2 + (int64_t)e * H * I, s2 + (int64_t)e * H * I / 32,
                           MXM_SCALE_RCEIL, 1);
        ex[e] = (mxm_expert_weights){q1 + e * M1 * H, s1 + e * M1 * H / 32, q2 + (int64_t)e * H * I,
                                     s2 + (int64_t)e * H * I / 32};
    }
    float *x = malloc(sizeof(float) * (size_t)T * H), *lg = malloc(sizeof(float) * (size_t)T * E);
    for (int64_t i = 0; i < (int64_t)T * H; i++) x[i] = rnd(&seed);
    for (int64_t i = 0; i < (int64_t)T * E; i++) lg[i] = rnd(&seed) * 2;
    uint16_t *out = malloc(2 * (size_t)T * H);
    mxm_moe_plan *plan;
    if (mxm_moe_plan_create(&cfg, T, &plan) != MXM_OK) {
        fprintf(stderr, "plan: %s\n", mxm_last_error());
        return 1;
    }
    const int64_t wsb = mxm_moe_plan_workspace_size(plan);
    void *ws = aligned_alloc(64, (size_t)(wsb + 63) / 64 * 64);
    const mxm_moe_weights mw = {.experts = ex};
    const mxm_moe_inputs in = {.num_tokens = T, .x = x, .x_dtype = MXM_DT_F32, .router_logits = lg,
                               .logits_dtype = MXM_DT_F32};
    const mxm_moe_outputs o = {.out = out, .out_dtype = MXM_DT_BF16};
    double *t = malloc(sizeof(double) * (size_t)iters);
    for (int i = 0; i < iters + 50; i++) {
        const double t0 = now_ns();
        if (mxm_moe_forward(plan, &mw, &in, &o, ws, wsb, NULL) != MXM_OK) {
            fprintf(stderr, "forward: %s\n", mxm_last_error());
            return 1;
        }
        if (i >= 50) t[i - 50] = now_ns() - t0;
    }
    qsort(t, (size_t)iters, sizeof(double), cmp);
    printf("%.0f %.0f\n", t[iters / 2], t[0]);
    mxm_moe_plan_destroy(plan);
    return 0;
}
#endif
