#include "moebench.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "moe/timeline.h"

const mb_shape mb_shapes[3] = {
    {"nano", "Nemotron-3-Nano", 2688, 1856, 128, 128, 6, MXM_ACT_RELU2_NO_MUL, MXM_ROUTE_DEEPSEEK_V3, 1, 1, 3712},
    {"qwen3", "Qwen3-30B-A3B", 2048, 768, 128, 128, 8, MXM_ACT_SILU, MXM_ROUTE_RENORMALIZE, 0, 0, 0},
    {"dsv3", "DeepSeek-V3 EP slice", 7168, 2048, 256, 32, 8, MXM_ACT_SILU, MXM_ROUTE_DEEPSEEK_V3, 8, 4, 0},
};

const mb_shape *mb_shape_find(const char *name) {
    for (int i = 0; i < 3; i++)
        if (strcmp(mb_shapes[i].name, name) == 0) return &mb_shapes[i];
    return NULL;
}

static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* E4M3 codes shaped like quantized normal weights: magnitudes mostly in the top exponents of the
 * block (block max near 448), random signs; never the NaN codes. */
static void fill_codes(uint8_t *q, int64_t n, uint64_t seed, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t c = 0; c < n; c += 8) {
        uint64_t r = mix(seed + (uint64_t)c);
        for (int i = 0; i < 8 && c + i < n; i++, r >>= 8) {
            const uint8_t b = (uint8_t)r;
            /* exponent field 8..14 with mantissa from the low bits: values 1..448 */
            q[c + i] = (uint8_t)((b & 0x80) | ((8 + (b >> 4 & 7) % 7) << 3) | (b & 7));
        }
    }
}

/* MXFP8: E8M0 scale bytes near 2^-12 (weights of magnitude ~0.1 from codes up to 448). DeepSeek
 * FP8: f32 block scales of the same magnitude, not powers of two. */
static void fill_scales(uint8_t *s, int64_t bytes, int32_t fmt, uint64_t seed, int threads) {
    if (fmt == MXM_WFMT_FP8_BLOCK) {
        float *f = (float *)(void *)s;
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < bytes / 4; i++) f[i] = (float)(0x1p-12 * (1.0 + (mix(seed ^ (uint64_t)i) % 1000) / 1000.0));
        return;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i = 0; i < bytes; i++) s[i] = (uint8_t)(114 + mix(seed ^ (uint64_t)i * 7919u) % 4);
}

/* Byte sizes of one routed and the shared expert's four arrays (w13, s13, w2, s2). */
static void expert_sizes(const mb_layer *L, int64_t routed[4], int64_t shared[4]) {
    const int gated = mxm_activation_is_gated(L->shape.act) == 1, f = L->cfg.weight_format;
    const int64_t H = L->shape.H, I = L->shape.I, Is = L->shape.shared_I;
    const int64_t M1 = gated ? 2 * I : I, M1s = gated ? 2 * Is : Is;
    routed[0] = mxm_weight_data_bytes(f, M1, H), routed[1] = mxm_weight_scale_bytes(f, M1, H);
    routed[2] = mxm_weight_data_bytes(f, H, I), routed[3] = mxm_weight_scale_bytes(f, H, I);
    shared[0] = mxm_weight_data_bytes(f, M1s, H), shared[1] = mxm_weight_scale_bytes(f, M1s, H);
    shared[2] = mxm_weight_data_bytes(f, H, Is), shared[3] = mxm_weight_scale_bytes(f, H, Is);
}

/* Points the experts (and the shared one, last) into the four arrays at base[]. */
static void point_experts(mb_layer *L, uint8_t *const base[4]) {
    int64_t r[4], sh[4];
    expert_sizes(L, r, sh);
    for (int e = 0; e <= L->shape.E_loc; e++)
        L->experts[e] = (mxm_expert_weights){base[0] + e * r[0], base[1] + e * r[1], base[2] + e * r[2], base[3] + e * r[3]};
}

int mb_layer_create(const mb_shape *s, int32_t weight_format, uint64_t seed, int32_t threads, mb_layer *L) {
    memset(L, 0, sizeof *L);
    if (weight_format != MXM_WFMT_MXFP8 && weight_format != MXM_WFMT_FP8_BLOCK) return MXM_ERR_INVALID_ARG;
    L->shape = *s;
    mxm_moe_config *c = &L->cfg;
    mxm_moe_config_default(c);
    c->hidden_size = s->H, c->intermediate_size = s->I, c->num_experts = s->E;
    c->local_num_experts = s->E_loc, c->top_k = s->K, c->activation = s->act;
    c->routing_method = s->method, c->n_group = s->n_group, c->topk_group = s->topk_group;
    c->routed_scaling_factor = s->method == MXM_ROUTE_DEEPSEEK_V3 ? 2.5f : 1.0f;
    c->shared_intermediate_size = s->shared_I;
    c->num_threads = threads;
    c->weight_format = weight_format;
    int64_t r[4], sh[4];
    expert_sizes(L, r, sh);
    for (int i = 0; i < 4; i++) L->bytes[i] = s->E_loc * r[i] + sh[i];
    L->w13 = malloc((size_t)L->bytes[0]), L->s13 = malloc((size_t)L->bytes[1]);
    L->w2 = malloc((size_t)L->bytes[2]), L->s2 = malloc((size_t)L->bytes[3]);
    L->experts = calloc((size_t)s->E_loc + 1, sizeof *L->experts);
    if (!L->w13 || !L->s13 || !L->w2 || !L->s2 || !L->experts) {
        mb_layer_destroy(L);
        return MXM_ERR_NOMEM;
    }
    fill_codes(L->w13, L->bytes[0], seed, threads);
    fill_codes(L->w2, L->bytes[2], seed * 3 + 1, threads);
    fill_scales(L->s13, L->bytes[1], weight_format, seed * 5 + 2, threads);
    fill_scales(L->s2, L->bytes[3], weight_format, seed * 7 + 3, threads);
    uint8_t *const base[4] = {L->w13, L->s13, L->w2, L->s2};
    point_experts(L, base);
    L->expert_bytes = r[0] + r[1] + r[2] + r[3];
    L->shared_bytes = sh[0] + sh[1] + sh[2] + sh[3];
    return MXM_OK;
}

int mb_layer_to_device(mb_layer *L) {
    const void *host[4] = {L->w13, L->s13, L->w2, L->s2};
    for (int i = 0; i < 4; i++) {
        int st = mxm_device_alloc(L->bytes[i], &L->dev[i]);
        if (!st) st = mxm_copy_to_device(L->dev[i], host[i], L->bytes[i]);
        if (st) return st;
    }
    uint8_t *const base[4] = {L->dev[0], L->dev[1], L->dev[2], L->dev[3]};
    point_experts(L, base);
    L->cfg.backend = MXM_BACKEND_CUDA;
    return MXM_OK;
}

void mb_layer_destroy(mb_layer *L) {
    for (int i = 0; i < 4; i++) mxm_device_free(L->dev[i]);
    free(L->w13), free(L->s13), free(L->w2), free(L->s2), free(L->experts);
    memset(L, 0, sizeof *L);
}

mxm_moe_weights mb_layer_weights(const mb_layer *L) {
    mxm_moe_weights w = {L->experts, L->shape.shared_I ? &L->experts[L->shape.E_loc] : NULL, NULL, NULL, NULL};
    return w;
}

static uint16_t bf16_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static double gauss(uint64_t *s) {
    const double u1 = ((mix(++*s) >> 11) + 1) * 0x1.0p-53, u2 = (mix(++*s) >> 11) * 0x1.0p-53;
    return sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
}

int mb_inputs_create(const mb_layer *L, int64_t T, mb_routing r, uint64_t seed, mb_inputs *in) {
    const int64_t H = L->shape.H, E = L->shape.E, K = L->shape.K;
    memset(in, 0, sizeof *in);
    in->T = T;
    in->x = malloc((size_t)(T * H * 2));
    in->logits = malloc((size_t)(T * E * 4));
    in->bias = malloc((size_t)E * 4);
    in->ids = malloc((size_t)(T * K * 4));
    in->w = malloc((size_t)(T * K * 4));
    if (!in->x || !in->logits || !in->bias || !in->ids || !in->w) {
        mb_inputs_destroy(in);
        return MXM_ERR_NOMEM;
    }
    uint64_t s = seed;
    for (int64_t i = 0; i < T * H; i++) in->x[i] = bf16_of((float)gauss(&s));
    for (int64_t e = 0; e < E; e++) in->bias[e] = (float)(0.01 * gauss(&s));
    for (int64_t t = 0; t < T; t++)
        for (int64_t e = 0; e < E; e++) {
            /* Skewed: a few hot experts (a Zipf-like tilt toward low ids) take most tokens. */
            const double tilt = r == MB_SKEWED ? 4.0 * exp(-(double)e / 6.0) : 0.0;
            in->logits[t * E + e] = (float)(gauss(&s) + tilt);
        }
    in->use_ids = 0;
    mxm_moe_config c = L->cfg;
    c.backend = MXM_BACKEND_CPU;
    if (mxm_route(&c, T, in->logits, MXM_DT_F32, in->bias, MXM_DT_F32, in->ids, in->w))
        memset(in->ids, 0, (size_t)(T * K * 4)); /* cannot happen for the built-in shapes */
    return MXM_OK;
}

void mb_inputs_destroy(mb_inputs *in) {
    free(in->x), free(in->logits), free(in->bias), free(in->ids), free(in->w);
    memset(in, 0, sizeof *in);
}

/* Routing sets the CUDA benchmark rotates through (see mb_run). */
#define MB_SETS 8

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Inputs and outputs where the backend wants them: host pointers, or device copies. */
typedef struct run_bufs {
    const void *x, *logits, *bias, *ids_in, *w_in;
    void *out, *ws;
    int32_t *ids;
    int dev;
} run_bufs;

static int bufs_create(const mb_layer *L, const mb_inputs *in, int64_t wsb, run_bufs *b) {
    const int64_t T = in->T, H = L->shape.H, K = L->shape.K, E = L->shape.E;
    memset(b, 0, sizeof *b);
    b->dev = L->cfg.backend == MXM_BACKEND_CUDA;
    if (!b->dev) {
        b->x = in->x, b->logits = in->logits, b->bias = in->bias, b->ids_in = in->ids, b->w_in = in->w;
        b->out = malloc((size_t)(T * H * 2));
        b->ids = malloc((size_t)(T * K * 4));
        b->ws = aligned_alloc(64, (size_t)wsb);
        return b->out && b->ids && b->ws ? MXM_OK : MXM_ERR_NOMEM;
    }
    void *p[8] = {0};
    const int64_t bytes[8] = {T * H * 2, T * E * 4, E * 4, T * H * 2, T * K * 4, wsb, T * K * 4, T * K * 4};
    for (int i = 0; i < 8; i++) {
        int st = mxm_device_alloc(bytes[i], &p[i]);
        if (st) return st;
    }
    int st = mxm_copy_to_device(p[0], in->x, bytes[0]);
    if (!st) st = mxm_copy_to_device(p[1], in->logits, bytes[1]);
    if (!st) st = mxm_copy_to_device(p[2], in->bias, bytes[2]);
    if (!st) st = mxm_copy_to_device(p[6], in->ids, bytes[6]);
    if (!st) st = mxm_copy_to_device(p[7], in->w, bytes[7]);
    b->x = p[0], b->logits = p[1], b->bias = p[2], b->out = p[3], b->ids = p[4], b->ws = p[5];
    b->ids_in = p[6], b->w_in = p[7];
    return st;
}

static void bufs_destroy(run_bufs *b) {
    if (b->dev) {
        mxm_device_free((void *)b->x), mxm_device_free((void *)b->logits), mxm_device_free((void *)b->bias);
        mxm_device_free(b->out), mxm_device_free(b->ids), mxm_device_free(b->ws);
        mxm_device_free((void *)b->ids_in), mxm_device_free((void *)b->w_in);
    } else {
        free(b->out), free(b->ids), free(b->ws);
    }
}

/* The kernel set a plan of this config runs ("ref", "avx2", "avx512", ...: MXM_KERNELS may pick
 * one), or "auto" where no plan can be made. */
static const char *kernels_of(const mxm_moe_config *cfg, char *buf, size_t n) {
    mxm_moe_plan *plan;
    snprintf(buf, n, "auto");
    if (mxm_moe_plan_create(cfg, 1, &plan) == MXM_OK) {
        snprintf(buf, n, "%s", mxm_moe_plan_kernels(plan));
        mxm_moe_plan_destroy(plan);
    }
    return buf;
}

/* The timeline probe (moe/timeline.h) over three replays after the timed ones (set 0, 1, 2 in
 * turn, as timed), each on its own: per kernel site, start / wait returned / end in us from the
 * replay's first block start, on stderr. */
static mxm_status print_timeline(mxm_cuda_graph *const graph[MB_SETS], int64_t T) {
    mxm_status st = MXM_OK;
    for (int r = 0; r < 3 && !st; r++) {
        uint64_t v[3 * MXM_SITES], t0 = UINT64_MAX, t1 = 0;
        if ((st = mxm_cuda_timeline_reset()) || (st = mxm_cuda_graph_launch(graph[r % MB_SETS])) ||
            (st = mxm_device_synchronize()) || (st = mxm_cuda_timeline_read(v)))
            break;
        for (int i = 0; i < MXM_SITES; i++)
            if (v[3 * i])
                t0 = v[3 * i] < t0 ? v[3 * i] : t0, t1 = v[3 * i + 2] > t1 ? v[3 * i + 2] : t1;
        fprintf(
            stderr,
            "timeline T=%lld replay %d: %.2f us from the first block start to the last warp end\n",
            (long long)T, r, (double)(t1 - t0) / 1e3);
        for (int i = 0; i < MXM_SITES; i++)
            if (v[3 * i])
                fprintf(stderr, "timeline   %-10s start %8.2f  waited %8.2f  end %8.2f us\n",
                        mxm_timeline_site_names[i], (double)(v[3 * i] - t0) / 1e3,
                        v[3 * i + 1] ? (double)(v[3 * i + 1] - t0) / 1e3 : -1.0,
                        (double)(v[3 * i + 2] - t0) / 1e3);
    }
    return st;
}

int mb_run(const mb_layer *L, const mb_inputs *in, int reps, mb_result *res, uint16_t *out_bf16) {
    const int64_t T = in->T, H = L->shape.H, K = L->shape.K;
    mxm_moe_plan *plan;
    int st = mxm_moe_plan_create(&L->cfg, T, &plan);
    if (st) return st;
    const int64_t wsb = mxm_moe_plan_workspace_size(plan);
    run_bufs b = {0};
    int32_t *ids = malloc((size_t)(T * K * 4));
    double *times = malloc(sizeof(double) * (size_t)(reps > 0 ? reps : 1));
    if (!ids || !times) st = MXM_ERR_NOMEM;
    if (!st) st = bufs_create(L, in, wsb, &b);
    if (st) goto done;
    mxm_moe_weights w = mb_layer_weights(L);
    mxm_moe_inputs mi = {.num_tokens = T, .x = b.x, .x_dtype = MXM_DT_BF16, .router_logits = b.logits,
                         .logits_dtype = MXM_DT_F32, .routing_bias = b.bias, .bias_dtype = MXM_DT_F32};
    if (in->use_ids) mi.router_logits = NULL, mi.topk_ids = b.ids_in, mi.topk_weights = b.w_in;
    /* The routing's ids come back only when the layer routes (a caller that gives ids does not
     * ask for them: on the GPU that would be a copy between the routing and the GEMMs). */
    mxm_moe_outputs mo = {
        .out = b.out, .out_dtype = MXM_DT_BF16, .topk_ids = in->use_ids ? NULL : b.ids};
    /* MXM_CUDA_TIMELINE=1: the probe's slots must exist before the graphs are captured. */
    const int timeline =
        b.dev && getenv("MXM_CUDA_TIMELINE") && getenv("MXM_CUDA_TIMELINE")[0] == '1';
    if (timeline && (st = mxm_cuda_timeline_reset())) goto done;
    if ((st = mxm_moe_forward(plan, &w, &mi, &mo, b.ws, wsb, NULL))) goto done; /* warm-up */
    if (b.dev && (st = mxm_device_synchronize())) goto done;
    double t;
    if (b.dev) { /* the forward in CUDA graphs: the median GPU time of a replay */
        /* MB_SETS routings, set s being set 0 with every local expert id rotated by s E_loc /
         * MB_SETS inside the local slice (same load per expert, other experts; other ranks'
         * experts stay): replayed in turn, consecutive forwards read other weights, which come
         * from HBM and not from the L2 cache, as in the peers' method. */
        mxm_cuda_graph *graph[MB_SETS] = {0};
        void *rot[MB_SETS][4] = {{0}}; /* ids, w or logits, bias of sets 1.. */
        const int64_t E = L->shape.E;
        int32_t *ids_s = malloc((size_t)(T * K * 4));
        float *lg_s = malloc((size_t)(T * E * 4)), *bias_s = malloc((size_t)(E * 4));
        if (!ids_s || !lg_s || !bias_s) st = MXM_ERR_NOMEM;
        for (int set = 0; set < MB_SETS && !st; set++) {
            mxm_moe_inputs ms = mi;
            if (set > 0) {
                const int64_t off = L->cfg.local_expert_offset, nl = L->shape.E_loc, shift = set * nl / MB_SETS;
#define MB_ROT(e) ((e) >= off && (e) < off + nl ? off + ((e) - off + shift) % nl : (e))
                for (int64_t i = 0; i < T * K; i++) ids_s[i] = (int32_t)MB_ROT((int64_t)in->ids[i]);
                for (int64_t t2 = 0; t2 < T; t2++)
                    for (int64_t e = 0; e < E; e++) lg_s[t2 * E + MB_ROT(e)] = in->logits[t2 * E + e];
                for (int64_t e = 0; e < E; e++) bias_s[MB_ROT(e)] = in->bias[e];
#undef MB_ROT
                const void *src[4] = {ids_s, in->w, lg_s, bias_s};
                const int64_t nb[4] = {T * K * 4, T * K * 4, T * E * 4, E * 4};
                for (int i = 0; i < 4 && !st; i++)
                    if (!(st = mxm_device_alloc(nb[i], &rot[set][i]))) st = mxm_copy_to_device(rot[set][i], src[i], nb[i]);
                if (st) break;
                if (in->use_ids) ms.topk_ids = rot[set][0], ms.topk_weights = rot[set][1];
                else ms.router_logits = rot[set][2], ms.routing_bias = rot[set][3];
            }
            st = mxm_cuda_graph_capture(plan, &w, &ms, &mo, b.ws, wsb, NULL, &graph[set]);
        }
        free(ids_s), free(lg_s), free(bias_s);
        for (int set = 0; set < MB_SETS && !st; set++) st = mxm_cuda_graph_launch(graph[set]); /* warm-up */
        if (!st) st = mxm_device_synchronize();
        /* The peers' method (median of per-replay GPU event intervals, replays enqueued ahead). */
        double med_us = 0;
        if (!st) st = mxm_cuda_graph_median_us(graph, MB_SETS, reps * 4 * MB_SETS, &med_us);
        t = med_us * 1e-6;
        if (timeline && !st) st = print_timeline(graph, T);
        if (!st) st = mxm_cuda_graph_launch(graph[0]); /* leave set 0's result for the caller */
        if (!st) st = mxm_device_synchronize();
        for (int set = 0; set < MB_SETS; set++) {
            mxm_cuda_graph_destroy(graph[set]);
            for (int i = 0; i < 4; i++) mxm_device_free(rot[set][i]);
        }
        if (st) goto done;
        if (in->use_ids)
            memcpy(ids, in->ids, (size_t)(T * K * 4));
        else if ((st = mxm_copy_to_host(ids, b.ids, T * K * 4)))
            goto done;
        if (out_bf16 && (st = mxm_copy_to_host(out_bf16, b.out, T * H * 2))) goto done;
    } else {
        for (int r = 0; r < reps; r++) {
            const double t0 = bench_now();
            if ((st = mxm_moe_forward(plan, &w, &mi, &mo, b.ws, wsb, NULL))) goto done;
            times[r] = bench_now() - t0;
        }
        qsort(times, (size_t)reps, sizeof *times, cmp_double);
        t = times[reps / 2];
        memcpy(ids, in->use_ids ? in->ids : b.ids, (size_t)(T * K * 4));
        if (out_bf16) memcpy(out_bf16, b.out, (size_t)(T * H * 2));
    }
    /* Experts touched and FLOPs from the routing actually taken. */
    const int32_t off = L->cfg.local_expert_offset, E_loc = L->shape.E_loc;
    char *touched = calloc((size_t)E_loc, 1);
    int64_t pairs = 0;
    for (int64_t i = 0; i < T * K; i++) {
        const int32_t e = ids[i] - off;
        if (e >= 0 && e < E_loc) touched[e] = 1, pairs++;
    }
    int32_t nt = 0;
    for (int e = 0; e < E_loc; e++) nt += touched[e];
    free(touched);
    const int gated = mxm_activation_is_gated(L->shape.act) == 1;
    const double I = L->shape.I, Is = L->shape.shared_I;
    const double per_pair = 2.0 * ((gated ? 2 : 1) * I * H + H * I);
    const double shared = 2.0 * T * ((gated ? 2 : 1) * Is * H + H * Is);
    res->us = t * 1e6;
    res->tokens_per_s = T / t;
    res->experts_touched = nt;
    res->weight_gb = ((double)nt * L->expert_bytes + (double)L->shared_bytes) / 1e9;
    res->gbs = res->weight_gb / t;
    res->gflop = (pairs * per_pair + shared) / 1e9;
    res->gflops = res->gflop / t;
done:
    bufs_destroy(&b);
    free(ids), free(times);
    mxm_moe_plan_destroy(plan);
    return st;
}

double mb_read_roof(int threads) { return bench_read_roof(threads, (int64_t)1 << 30, 5); }
/* The widest fp32 FMA this CPU has: AVX2 (8 lanes) or AVX-512 (16). */
double mb_fma_roof(int threads) {
    const double a = bench_fma_roof(threads), b = bench_fma_roof512(threads);
    return a > b ? a : b;
}

/* "model name (flags that matter here)" of this CPU from /proc/cpuinfo, for the machine line:
 * a table is reproducible only with the CPU it ran on. */
static void cpu_line(char *buf, size_t n) {
    snprintf(buf, n, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[4096], model[256] = "", flags[512] = "";
    while (fgets(line, sizeof line, f) && (!model[0] || !flags[0])) {
        char *colon = strchr(line, ':');
        if (!colon) continue;
        char *v = colon + 1 + (colon[1] == ' ');
        v[strcspn(v, "\n")] = '\0';
        if (!model[0] && !strncmp(line, "model name", 10)) snprintf(model, sizeof model, "%s", v);
        if (!flags[0] && !strncmp(line, "flags", 5)) {
            static const char *const want[] = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
                                               "avx512_bf16", "avx512_fp16", "amx_tile"};
            for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
                char pat[32];
                snprintf(pat, sizeof pat, " %s ", want[i]);
                char padded[4096];
                snprintf(padded, sizeof padded, " %s ", v);
                if (strstr(padded, pat)) snprintf(flags + strlen(flags), sizeof flags - strlen(flags), "%s%s", flags[0] ? " " : "", want[i]);
            }
            if (!flags[0]) snprintf(flags, sizeof flags, "none of avx2/avx512");
        }
    }
    fclose(f);
    snprintf(buf, n, "%s (%s)", model[0] ? model : "unknown CPU", flags);
}

/* Every item of a comma list of token counts: 1..2^20, the whole item a number. */
static int tokens_ok(const char *list) {
    char buf[256];
    if (!*list || strlen(list) >= sizeof buf) return 0;
    snprintf(buf, sizeof buf, "%s", list);
    for (char *sv = NULL, *tn = strtok_r(buf, ",", &sv); tn; tn = strtok_r(NULL, ",", &sv)) {
        char *end;
        const long long T = strtoll(tn, &end, 10);
        if (*tn < '0' || *tn > '9' || *end || T < 1 || T > (1 << 20)) return 0;
    }
    return list[strlen(list) - 1] != ',' && !strstr(list, ",,");
}

int mb_bench(const mb_options *o, FILE *tf) {
    const int threads = o->threads > 0 ? o->threads : omp_get_max_threads();
    double roof_read = NAN, roof_fma = NAN;
    if (!tokens_ok(o->tokens) || (o->act_quant != MXM_ACT_QUANT_MXFP8 && o->act_quant != MXM_ACT_QUANT_NONE) ||
        (o->profile != MXM_PROFILE_TRTLLM && o->profile != MXM_PROFILE_EXACT) || o->reps < 1 || o->threads < 0) {
        fprintf(stderr, "bench: bad options (tokens '%s': integers 1..1048576; act_quant %d, profile %d, reps %d, "
                        "threads %d)\n", o->tokens, o->act_quant, o->profile, o->reps, o->threads);
        return MXM_ERR_INVALID_ARG;
    }
    char cpu[800];
    cpu_line(cpu, sizeof cpu);
    fprintf(tf, "machine: %s, %d threads\n", cpu, threads);
    fprintf(tf, "weights: %s\n", mxm_weight_format_name(o->weight_format));
    if (o->backend == MXM_BACKEND_CUDA) {
        fprintf(tf, "device %s (ceilings: bench/peers.py in the same run; %%read and %%fma are blank)\n",
                mxm_device_name());
    } else {
        fprintf(stderr, "measuring roofs (%d threads)...\n", threads);
        roof_read = mb_read_roof(threads), roof_fma = mb_fma_roof(threads);
        fprintf(tf, "roofs (same run, %d threads): memory read %.1f GB/s, fp32 FMA %.1f GFLOP/s\n", threads,
                roof_read, roof_fma);
    }
    fprintf(tf, "%-6s %-8s %6s %11s %11s %9s %7s %9s %7s %5s\n", "shape", "routing", "T", "us", "tokens/s",
            "GB/s", "%read", "GFLOP/s", "%fma", "exp");
    FILE *js = o->json_path ? fopen(o->json_path, "w") : NULL;
    if (js)
        fprintf(js, "{\"cpu\": \"%s\", \"backend\": \"%s\", \"device\": \"%s\", \"weights\": \"%s\", \"threads\": %d, "
                    "\"read_roof_gbs\": %.2f, \"fma_roof_gflops\": %.2f, \"results\": [\n",
                cpu, o->backend == MXM_BACKEND_CUDA ? "cuda" : "cpu", o->backend == MXM_BACKEND_CUDA ? mxm_device_name() : "cpu",
                mxm_weight_format_name(o->weight_format),
                threads, isnan(roof_read) ? 0.0 : roof_read, isnan(roof_fma) ? 0.0 : roof_fma);
    int first = 1, st = MXM_OK;
    char shapes[256];
    snprintf(shapes, sizeof shapes, "%s", o->shapes);
    for (char *sv = NULL, *sn = strtok_r(shapes, ",", &sv); sn; sn = strtok_r(NULL, ",", &sv)) {
        const mb_shape *s = mb_shape_find(sn);
        if (!s) {
            fprintf(stderr, "unknown shape '%s'; known: nano, qwen3, dsv3\n", sn);
            st = MXM_ERR_INVALID_ARG;
            break;
        }
        mb_layer L;
        mb_shape shape = *s;
        if (o->no_shared) shape.shared_I = 0;
        fprintf(stderr, "building %s layer (%s)...\n", s->name, s->model);
        if ((st = mb_layer_create(&shape, o->weight_format, 42, threads, &L))) break;
        L.cfg.kernels = o->kernels, L.cfg.act_quant = o->act_quant, L.cfg.profile = o->profile;
        if (o->backend == MXM_BACKEND_CUDA && (st = mb_layer_to_device(&L))) {
            mb_layer_destroy(&L);
            break;
        }
        /* What runs, read back from the config the plans are made from. */
        char kbuf[32];
        char shbuf[32] = "none";
        if (L.cfg.shared_intermediate_size)
            snprintf(shbuf, sizeof shbuf, "I=%d", L.cfg.shared_intermediate_size);
        fprintf(tf,
                "mode: %s %s: weights %s, activations %s, profile %s, kernels %s, %d threads, "
                "routing %s, shared expert %s\n",
                s->name, L.cfg.backend == MXM_BACKEND_CUDA ? "cuda" : "cpu",
                mxm_weight_format_name(L.cfg.weight_format),
                L.cfg.act_quant == MXM_ACT_QUANT_NONE       ? "none (weight-only)"
                : L.cfg.weight_format == MXM_WFMT_FP8_BLOCK ? "fp8 1x128 (W8A8)"
                                                            : "mxfp8 (W8A8)",
                L.cfg.profile == MXM_PROFILE_EXACT ? "exact" : "trtllm",
                kernels_of(&L.cfg, kbuf, sizeof kbuf),
                L.cfg.num_threads > 0 ? L.cfg.num_threads : threads,
                o->use_ids ? "given ids" : "from logits", shbuf);
        char toks[256];
        snprintf(toks, sizeof toks, "%s", o->tokens);
        for (char *tv = NULL, *tn = strtok_r(toks, ",", &tv); tn && !st; tn = strtok_r(NULL, ",", &tv)) {
            const int64_t T = strtoll(tn, NULL, 10); /* checked by tokens_ok */
            for (int r = 0; r < 2 && !st; r++) {
                if ((r == 0 && strcmp(o->routing, "skewed") == 0) || (r == 1 && strcmp(o->routing, "uniform") == 0))
                    continue;
                mb_inputs in;
                if ((st = mb_inputs_create(&L, T, (mb_routing)r, 1000 + (uint64_t)T, &in))) break;
                in.use_ids = o->use_ids;
                /* An EP slice timed from given ids takes every pick into its experts (global id
                 * mod E_loc), as the vLLM peer's dsv3s does: the same work as the peer's layer.
                 * From logits, only the picks that fall into the slice are local. */
                if (o->use_ids && L.shape.E_loc < L.shape.E)
                    for (int64_t i = 0; i < T * L.shape.K; i++)
                        in.ids[i] = L.cfg.local_expert_offset + in.ids[i] % L.shape.E_loc;
                mb_result res = {0};
                const int reps = T >= 1024 ? (o->reps < 3 ? o->reps : 3) : o->reps;
                st = mb_run(&L, &in, reps, &res, NULL);
                mb_inputs_destroy(&in);
                if (st) break;
                fprintf(tf, "%-6s %-8s %6lld %11.1f %11.1f %9.1f %6.0f%% %9.1f %6.0f%% %5d\n", s->name,
                        r ? "skewed" : "uniform", (long long)T, res.us, res.tokens_per_s, res.gbs,
                        100 * res.gbs / roof_read, res.gflops, 100 * res.gflops / roof_fma, res.experts_touched);
                fflush(tf);
                if (js)
                    fprintf(js,
                            "%s  {\"shape\": \"%s\", \"routing\": \"%s\", \"act_quant\": \"%s\", \"profile\": \"%s\", "
                            "\"T\": %lld, \"us\": %.2f, \"tokens_per_s\": %.2f, "
                            "\"weight_gb\": %.5f, \"gbs\": %.2f, \"gflops\": %.2f, \"experts_touched\": %d}",
                            first ? "" : ",\n", s->name, r ? "skewed" : "uniform",
                            L.cfg.act_quant == MXM_ACT_QUANT_NONE ? "none" : "mxfp8",
                            L.cfg.profile == MXM_PROFILE_EXACT ? "exact" : "trtllm", (long long)T, res.us,
                            res.tokens_per_s, res.weight_gb, res.gbs, res.gflops, res.experts_touched);
                first = 0;
            }
        }
        mb_layer_destroy(&L);
    }
    if (js) {
        fprintf(js, "\n]}\n");
        fclose(js);
    }
    if (st) fprintf(stderr, "bench failed: %s: %s\n", mxm_status_str(st), mxm_last_error());
    return st;
}
