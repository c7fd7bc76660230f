/* Expert parallelism on 2 GPUs: mxm_ep_forward (two ranks, one thread per GPU, NCCL) against
 * the single-GPU layer (mxm_moe_forward, all experts on GPU 0) on the same inputs. Exits 77
 * (skipped) without NCCL in the library or without a GPU. With one GPU it runs the same
 * comparison on a group of one rank (every row through NCCL to itself: the whole EP path but the
 * transport between GPUs) and then exits 77 if that passed: the 2-GPU part did not run.
 *
 * Checked per token split (uneven, a rank without tokens, decode and prefill sizes):
 *  - routing: ids and weights bit-identical to the single-GPU layer's;
 *  - output: no NaN (outputs are poisoned with NaN before every run), relative L2 against the
 *    single-GPU output below the W8A8 bound of test_cuda.c (max(3e-3, 2.5e-5 sqrt(max(H, I)))).
 *    The routed part is expected bit-identical (each expert gets the same rows in the same
 *    order; the combine is the same expression), and the count of differing elements is
 *    printed for both; the shared expert runs on a rank's own tokens, so its GEMM may take a
 *    different kernel (skinny vs. tiles) than on all tokens, which moves fp32 sums by ulps and,
 *    rarely, an E4M3 requantization step. */
#include <cuda_runtime.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mxmoe.h"
#include "testutil.h"

#define NR 2   /* ranks at most */
static int nr; /* ranks of this run: 2, or 1 with one GPU */

typedef struct layer {
    mxm_moe_config cfg;
    int64_t m1, w13b, s13b, w2b, s2b; /* bytes per expert */
    uint8_t *w13, *s13, *w2, *s2;     /* host [E + 1] experts, the shared one last */
} layer;

typedef struct split {
    int64_t t[NR];
} split;

static const split splits[] = {{{5, 3}}, {{64, 0}}, {{0, 1}}, {{300, 257}}, {{1, 1}}};
#define NSPLIT (int)(sizeof splits / sizeof splits[0])

typedef struct inputs {
    int64_t T;
    uint16_t *x;   /* [T, H] bf16 */
    float *logits; /* [T, E] */
    float *bias;   /* [E] */
} inputs;

static layer L;
static inputs in_of[NSPLIT];
static float *ep_out[NSPLIT], *ep_routed[NSPLIT], *ep_w[NSPLIT];
static int32_t *ep_ids[NSPLIT];
static const char *id_file;

static void quantize_rows(tu_rng *r, int64_t rows, int64_t cols, uint8_t *q, uint8_t *s) {
    float *v = tu_alloc(4 * (size_t)(rows * cols));
    tu_fill_blockscaled_f32(r, v, rows * cols, 2, 2);
    for (int64_t i = 0; i < rows * cols; i++)
        v[i] *= 0.05f;
    assert_int_equal(mxm_mxfp8_quantize(v, MXM_DT_F32, rows, cols, 0, q, s, MXM_SCALE_RCEIL, 0),
                     MXM_OK);
    free(v);
}

static void layer_init(tu_rng *r) {
    mxm_moe_config *c = &L.cfg;
    mxm_moe_config_default(c);
    c->hidden_size = 512, c->intermediate_size = 256, c->num_experts = 16, c->top_k = 4;
    c->routing_method = MXM_ROUTE_DEEPSEEK_V3, c->n_group = 4, c->topk_group = 2,
    c->routed_scaling_factor = 2.5f;
    c->shared_intermediate_size = 256;
    c->backend = MXM_BACKEND_CUDA;
    const int64_t H = c->hidden_size, I = c->intermediate_size, E = c->num_experts;
    L.m1 = 2 * I; /* silu, gated; the shared expert has the same sizes */
    L.w13b = L.m1 * H, L.s13b = L.m1 * H / 32, L.w2b = H * I, L.s2b = H * I / 32;
    L.w13 = tu_alloc((size_t)((E + 1) * L.w13b)), L.s13 = tu_alloc((size_t)((E + 1) * L.s13b));
    L.w2 = tu_alloc((size_t)((E + 1) * L.w2b)), L.s2 = tu_alloc((size_t)((E + 1) * L.s2b));
    quantize_rows(r, (E + 1) * L.m1, H, L.w13, L.s13);
    quantize_rows(r, (E + 1) * H, I, L.w2, L.s2);
}

/* Device helpers return NULL on failure instead of asserting: the rank threads use them too,
 * and a cmocka assertion may only fail on the main thread. */
static void *dev_copy(const void *src, int64_t n) {
    void *d = NULL;
    if (mxm_device_alloc(n, &d) != MXM_OK) return NULL;
    if (mxm_copy_to_device(d, src, n) != MXM_OK) {
        mxm_device_free(d);
        return NULL;
    }
    return d;
}

/* Device copies of experts [e0, e0 + n) (index E: the shared expert) on the current device. */
static mxm_expert_weights *experts_to_device(int32_t e0, int32_t n) {
    mxm_expert_weights *ex = calloc((size_t)(n > 0 ? n : 1), sizeof *ex);
    int ok = ex != NULL;
    for (int32_t i = 0; ok && i < n; i++) {
        const int64_t e = e0 + i;
        ex[i].w13 = dev_copy(L.w13 + e * L.w13b, L.w13b),
        ex[i].w13_scale = dev_copy(L.s13 + e * L.s13b, L.s13b);
        ex[i].w2 = dev_copy(L.w2 + e * L.w2b, L.w2b),
        ex[i].w2_scale = dev_copy(L.s2 + e * L.s2b, L.s2b);
        ok = ex[i].w13 && ex[i].w13_scale && ex[i].w2 && ex[i].w2_scale;
    }
    return ok ? ex : NULL; /* a failed copy leaks its siblings: the test fails anyway */
}

static void experts_free(mxm_expert_weights *ex, int32_t n) {
    for (int32_t i = 0; i < n; i++) {
        mxm_device_free((void *)ex[i].w13), mxm_device_free((void *)ex[i].w13_scale);
        mxm_device_free((void *)ex[i].w2), mxm_device_free((void *)ex[i].w2_scale);
    }
    free(ex);
}

static void *poisoned(int64_t bytes) {
    void *d = NULL;
    if (mxm_device_alloc(bytes, &d) != MXM_OK) return NULL;
    if (cudaMemset(d, 0xFF, (size_t)bytes) != cudaSuccess) return NULL; /* f32 NaN */
    return d;
}

/* Tokens of rank q in split s (one rank takes both halves). */
static int64_t tokens_of(int s, int q) {
    return nr == 1 ? splits[s].t[0] + splits[s].t[1] : splits[s].t[q];
}

typedef struct rank_arg {
    int rank;
    mxm_status st;
    char msg[512];
} rank_arg;

#define RANK_TRY(call)                                                                             \
    do {                                                                                           \
        const mxm_status s_ = (call);                                                              \
        if (s_) {                                                                                  \
            a->st = s_;                                                                            \
            snprintf(a->msg, sizeof a->msg, "%s: %s", #call, mxm_last_error());                    \
            return NULL;                                                                           \
        }                                                                                          \
    } while (0)

static void *rank_main(void *argp) {
    rank_arg *a = argp;
    const int q = a->rank;
    mxm_ep_group *g = NULL;
    RANK_TRY(mxm_ep_group_create_local(nr, q, id_file, &g));
    mxm_moe_config cfg = L.cfg;
    int32_t off, cnt;
    RANK_TRY(mxm_ep_expert_slice(cfg.num_experts, nr, q, &off, &cnt));
    cfg.local_expert_offset = off, cfg.local_num_experts = cnt;
    int dev = 0;
    cudaGetDevice(&dev);
    cfg.device = dev;
    mxm_expert_weights *ex = experts_to_device(off, cnt),
                       *sh = experts_to_device(cfg.num_experts, 1);
    if (!ex || !sh) {
        a->st = MXM_ERR_NOMEM;
        snprintf(a->msg, sizeof a->msg, "copying the experts to the device failed");
        return NULL;
    }
    int64_t tmax = 1;
    for (int s = 0; s < NSPLIT; s++)
        tmax = tokens_of(s, q) > tmax ? tokens_of(s, q) : tmax;
    mxm_ep_plan *plan = NULL;
    RANK_TRY(mxm_ep_plan_create(g, &cfg, tmax, &plan));
    const mxm_moe_weights w = {ex, sh, NULL, NULL, NULL};
    const int64_t H = cfg.hidden_size, E = cfg.num_experts, K = cfg.top_k;
    for (int s = 0; s < NSPLIT; s++) {
        const int64_t t0 = q == 0 ? 0 : splits[s].t[0], T = tokens_of(s, q);
        const inputs *in = &in_of[s];
        void *x = dev_copy(in->x + t0 * H, 2 * T * H + 2),
             *lg = dev_copy(in->logits + t0 * E, 4 * T * E + 4);
        void *bias = dev_copy(in->bias, 4 * E);
        void *out = poisoned(4 * T * H + 4), *routed = poisoned(4 * T * H + 4),
             *ids = poisoned(4 * T * K + 4), *wts = poisoned(4 * T * K + 4);
        if (!x || !lg || !bias || !out || !routed || !ids || !wts) {
            a->st = MXM_ERR_NOMEM;
            snprintf(a->msg, sizeof a->msg, "device buffers of split %d: %s", s, mxm_last_error());
            return NULL;
        }
        const mxm_moe_inputs mi = {.num_tokens = T,
                                   .x = x,
                                   .x_dtype = MXM_DT_BF16,
                                   .router_logits = lg,
                                   .logits_dtype = MXM_DT_F32,
                                   .routing_bias = bias,
                                   .bias_dtype = MXM_DT_F32};
        const mxm_moe_outputs mo = {.out = out,
                                    .out_dtype = MXM_DT_F32,
                                    .out_routed = routed,
                                    .topk_ids = ids,
                                    .topk_weights = wts};
        RANK_TRY(mxm_ep_forward(plan, &w, &mi, &mo, NULL));
        RANK_TRY(mxm_device_synchronize());
        RANK_TRY(mxm_copy_to_host(ep_out[s] + t0 * H, out, 4 * T * H));
        RANK_TRY(mxm_copy_to_host(ep_routed[s] + t0 * H, routed, 4 * T * H));
        RANK_TRY(mxm_copy_to_host(ep_ids[s] + t0 * K, ids, 4 * T * K));
        RANK_TRY(mxm_copy_to_host(ep_w[s] + t0 * K, wts, 4 * T * K));
        mxm_device_free(x), mxm_device_free(lg), mxm_device_free(bias), mxm_device_free(out);
        mxm_device_free(routed), mxm_device_free(ids), mxm_device_free(wts);
    }
    mxm_ep_plan_destroy(plan);
    experts_free(ex, cnt), experts_free(sh, 1);
    mxm_ep_group_destroy(g);
    return NULL;
}

static double rel_l2(const float *a, const float *b, int64_t n, int64_t *nan, int64_t *differ) {
    double num = 0, den = 0;
    *nan = 0, *differ = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(a[i])) (*nan)++;
        *differ += memcmp(&a[i], &b[i], 4) != 0;
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void test_ep_two_gpus(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    layer_init(&r);
    const mxm_moe_config *c = &L.cfg;
    const int64_t H = c->hidden_size, E = c->num_experts, K = c->top_k;
    for (int s = 0; s < NSPLIT; s++) {
        inputs *in = &in_of[s];
        in->T = splits[s].t[0] + splits[s].t[1];
        float *xf = tu_alloc(4 * (size_t)(in->T * H + 1));
        tu_fill_blockscaled_f32(&r, xf, in->T * H, 3, 3);
        in->x = tu_alloc(2 * (size_t)(in->T * H + 1));
        for (int64_t i = 0; i < in->T * H; i++)
            in->x[i] = mxm_bf16_from_f32(xf[i]);
        free(xf);
        in->logits = tu_alloc(4 * (size_t)(in->T * E + 1)), in->bias = tu_alloc(4 * (size_t)E);
        tu_fill_normal_f32(&r, in->logits, in->T * E, 2.0f),
            tu_fill_normal_f32(&r, in->bias, E, 0.5f);
        ep_out[s] = tu_alloc(4 * (size_t)(in->T * H + 1)),
        ep_routed[s] = tu_alloc(4 * (size_t)(in->T * H + 1));
        ep_ids[s] = tu_alloc(4 * (size_t)(in->T * K + 1)),
        ep_w[s] = tu_alloc(4 * (size_t)(in->T * K + 1));
    }

    /* EP on two GPUs, one thread per rank */
    char path[256];
    snprintf(path, sizeof path, "/tmp/mxm_test_cuda_ep_%ld.id", (long)getpid());
    remove(path);
    id_file = path;
    pthread_t th[NR];
    rank_arg args[NR];
    for (int q = 0; q < nr; q++) {
        memset(&args[q], 0, sizeof args[q]);
        args[q].rank = q;
        assert_int_equal(pthread_create(&th[q], NULL, rank_main, &args[q]), 0);
    }
    for (int q = 0; q < nr; q++)
        pthread_join(th[q], NULL);
    remove(path);
    for (int q = 0; q < nr; q++)
        if (args[q].st) fprintf(stderr, "rank %d: %s\n", q, args[q].msg);
    for (int q = 0; q < nr; q++)
        assert_int_equal(args[q].st, MXM_OK);

    /* the single-GPU layer on GPU 0 */
    assert_int_equal(cudaSetDevice(0), cudaSuccess);
    mxm_moe_config one = *c;
    one.device = 0;
    mxm_expert_weights *ex = experts_to_device(0, (int32_t)E),
                       *sh = experts_to_device((int32_t)E, 1);
    assert_non_null(ex), assert_non_null(sh);
    const mxm_moe_weights w = {ex, sh, NULL, NULL, NULL};
    const double bound =
        fmax(3e-3, 2.5e-5 * sqrt((double)(H > c->intermediate_size ? H : c->intermediate_size)));
    int fails = 0;
    for (int s = 0; s < NSPLIT; s++) {
        const inputs *in = &in_of[s];
        const int64_t T = in->T;
        mxm_moe_plan *plan = NULL;
        assert_int_equal(mxm_moe_plan_create(&one, T, &plan), MXM_OK);
        const int64_t wsb = mxm_moe_plan_workspace_size(plan);
        void *ws = NULL;
        assert_int_equal(mxm_device_alloc(wsb, &ws), MXM_OK);
        void *x = dev_copy(in->x, 2 * T * H), *lg = dev_copy(in->logits, 4 * T * E),
             *bias = dev_copy(in->bias, 4 * E);
        void *out = poisoned(4 * T * H), *routed = poisoned(4 * T * H), *ids = poisoned(4 * T * K),
             *wts = poisoned(4 * T * K);
        assert_true(x && lg && bias && out && routed && ids && wts);
        const mxm_moe_inputs mi = {.num_tokens = T,
                                   .x = x,
                                   .x_dtype = MXM_DT_BF16,
                                   .router_logits = lg,
                                   .logits_dtype = MXM_DT_F32,
                                   .routing_bias = bias,
                                   .bias_dtype = MXM_DT_F32};
        const mxm_moe_outputs mo = {.out = out,
                                    .out_dtype = MXM_DT_F32,
                                    .out_routed = routed,
                                    .topk_ids = ids,
                                    .topk_weights = wts};
        assert_int_equal(mxm_moe_forward(plan, &w, &mi, &mo, ws, wsb, NULL), MXM_OK);
        float *ref = tu_alloc(4 * (size_t)(T * H)), *ref_r = tu_alloc(4 * (size_t)(T * H));
        float *ref_w = tu_alloc(4 * (size_t)(T * K));
        int32_t *ref_ids = tu_alloc(4 * (size_t)(T * K));
        assert_int_equal(mxm_copy_to_host(ref, out, 4 * T * H), MXM_OK);
        assert_int_equal(mxm_copy_to_host(ref_r, routed, 4 * T * H), MXM_OK);
        assert_int_equal(mxm_copy_to_host(ref_ids, ids, 4 * T * K), MXM_OK);
        assert_int_equal(mxm_copy_to_host(ref_w, wts, 4 * T * K), MXM_OK);
        const int route_ok = memcmp(ref_ids, ep_ids[s], 4 * (size_t)(T * K)) == 0 &&
                             memcmp(ref_w, ep_w[s], 4 * (size_t)(T * K)) == 0;
        int64_t nan, differ, nan_r, differ_r;
        const double err = rel_l2(ep_out[s], ref, T * H, &nan, &differ);
        const double err_r = rel_l2(ep_routed[s], ref_r, T * H, &nan_r, &differ_r);
        const int pass = route_ok && nan == 0 && nan_r == 0 && err <= bound && err_r <= bound;
        printf("ep ranks=%d T=%lld+%lld routing %s out err %.2e (%lld elements differ) "
               "routed err %.2e (%lld differ) bound %.1e %s\n",
               nr, (long long)splits[s].t[0], (long long)splits[s].t[1],
               route_ok ? "identical" : "DIFFERS", err, (long long)differ, err_r,
               (long long)differ_r, bound, pass ? "PASS" : "FAIL");
        fails += !pass;
        mxm_device_free(x), mxm_device_free(lg), mxm_device_free(bias), mxm_device_free(out);
        mxm_device_free(routed), mxm_device_free(ids), mxm_device_free(wts), mxm_device_free(ws);
        mxm_moe_plan_destroy(plan);
        free(ref), free(ref_r), free(ref_w), free(ref_ids);
    }
    experts_free(ex, (int32_t)E), experts_free(sh, 1);
    assert_int_equal(fails, 0);
}

int main(void) {
    int n = 0;
    if (!mxm_cuda_available() || cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        printf("test_cuda_ep: needs 2 GPUs (found none): skipped\n");
        return 77;
    }
    nr = n >= NR ? NR : 1;
    mxm_ep_group *g = NULL;
    if (mxm_ep_group_create(NULL, &g) == MXM_ERR_NO_DEVICE) {
        printf("test_cuda_ep: %s: skipped\n", mxm_last_error());
        return 77;
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_ep_two_gpus)};
    const int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (rc == 0 && nr == 1) {
        printf("test_cuda_ep: one GPU: the 1-rank group passed; the 2-GPU part is skipped\n");
        return 77;
    }
    return rc;
}
