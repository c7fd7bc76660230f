/* Expert parallelism on the CPU: the layer split over N simulated ranks in one process, built
 * only from the public EP pieces (slices, dispatch plan, the two local forwards' configs, the
 * combine) and mxm_moe_forward, against the single-device layer on the same inputs.
 *
 * Each rank routes its own tokens (mxm_route), quantizes them to MXFP8 codes + E8M0 scales,
 * plans the dispatch; the rows each rank receives (grouped by source rank, as NCCL delivers
 * them) run through that rank's expert slice (caller ids, top_k 1, weight 1); the expert rows go
 * back to their senders, which combine them with their routing weights and add the shared
 * expert run on their own tokens. Every output is poisoned (NaN) before it is written, inputs
 * are fresh random each run (MXM_TEST_SEED replays).
 *
 * Expected: identical routing (ids and weight bits) and an output bit-identical to the
 * single-device layer, element for element. That holds because every sum is the same sum in
 * the same order: an expert receives the same rows in the same order as on one device (source
 * ranks hold consecutive token ranges, rows of a source arrive in token order), so it runs the
 * same kernels on the same row counts; the dispatched codes + scales are what the single-device
 * layer's quantizer produces; 0 + 1.0 * y returns y unchanged (bf16 return loses nothing in the
 * trtllm profile, where y is already rounded to bf16); and the combine adds w * y in k order
 * from 0, then the shared expert, as the layer does. One exception, checked separately: the
 * shared expert runs on a rank's own T_r tokens instead of all T, and the CPU GEMM takes its
 * GEMV kernel for <= 4 rows and the panel kernel above: these sum a dot product in different
 * orders, so where one side has <= 4 rows and the other more, the shared expert's rows may
 * differ in the last bits (the test then checks them against a tight relative bound and reports
 * how many elements differ). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_ref.h"
#include "mxmoe.h"
#include "testutil.h"

#define GEMV_MAX_ROWS 4 /* MXM_GEMV_MAX_TOKENS of src/cpu/cpu_kernels.h */

typedef struct ep_case {
    const char *name;
    int H, I, Is, E, K;
    int method, n_group, topk_group;
    int profile;
    int N;
    const int32_t *slices; /* [N + 1] rank offsets, or NULL: mxm_ep_expert_slice */
    const int64_t *tokens; /* [N] tokens per rank */
    int skewed;            /* logits pushed towards experts 0 and 1 */
} ep_case;

static void *xalloc(size_t n) {
    return tu_alloc(n > 0 ? n : 1);
}

/* 64-byte aligned workspace (aligned_alloc needs a size that is a multiple of the alignment). */
static void *ws_alloc(int64_t n) {
    void *p = aligned_alloc(64, (size_t)(((n > 0 ? n : 1) + 63) / 64 * 64));
    assert_non_null(p);
    return p;
}

static int64_t run_forward(const mxm_moe_config *cfg, const mxm_moe_weights *w,
                           const mxm_moe_inputs *in, const mxm_moe_outputs *out) {
    mxm_moe_plan *plan = NULL;
    assert_int_equal(mxm_moe_plan_create(cfg, in->num_tokens > 0 ? in->num_tokens : 1, &plan),
                     MXM_OK);
    const int64_t wsb = mxm_moe_plan_workspace_size(plan);
    void *ws = ws_alloc(wsb);
    const mxm_status st = mxm_moe_forward(plan, w, in, out, ws, wsb, NULL);
    if (st) fprintf(stderr, "forward: %s\n", mxm_last_error());
    assert_int_equal(st, MXM_OK);
    free(ws);
    mxm_moe_plan_destroy(plan);
    return 0;
}

static int64_t bits_differ(const float *a, const float *b, int64_t n) {
    int64_t d = 0;
    for (int64_t i = 0; i < n; i++)
        d += memcmp(&a[i], &b[i], 4) != 0;
    return d;
}

static double max_rel(const float *a, const float *b, int64_t n) {
    double m = 0, bmax = 0;
    for (int64_t i = 0; i < n; i++)
        bmax = fmax(bmax, fabs(b[i]));
    for (int64_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - b[i]);
        if (isnan(a[i]) != isnan(b[i])) return INFINITY;
        m = fmax(m, d / (bmax > 0 ? bmax : 1));
    }
    return m;
}

static void run_case(tu_rng *r, const ep_case *tc) {
    mxm_moe_config cfg;
    mxm_moe_config_default(&cfg);
    cfg.hidden_size = tc->H, cfg.intermediate_size = tc->I, cfg.num_experts = tc->E,
    cfg.top_k = tc->K;
    cfg.routing_method = tc->method, cfg.n_group = tc->n_group, cfg.topk_group = tc->topk_group;
    cfg.routed_scaling_factor = tc->method == MXM_ROUTE_DEEPSEEK_V3 ? 2.5f : 1.0f;
    cfg.activation = tc->Is ? MXM_ACT_SILU : MXM_ACT_RELU2_NO_MUL;
    cfg.shared_intermediate_size = tc->Is;
    cfg.profile = tc->profile;
    cfg.num_threads = 2;
    const int N = tc->N, H = tc->H, E = tc->E, K = tc->K;

    int32_t ro[65];
    if (tc->slices) {
        memcpy(ro, tc->slices, sizeof(int32_t) * (size_t)(N + 1));
    } else {
        ro[0] = 0;
        for (int q = 0; q < N; q++) {
            int32_t off, cnt;
            assert_int_equal(mxm_ep_expert_slice(E, N, q, &off, &cnt), MXM_OK);
            assert_int_equal(off, ro[q]);
            ro[q + 1] = off + cnt;
        }
        assert_int_equal(ro[N], E);
    }
    int64_t t0[65];
    t0[0] = 0;
    for (int q = 0; q < N; q++)
        t0[q + 1] = t0[q] + tc->tokens[q];
    const int64_t T = t0[N];

    ref_layer L;
    ref_layer_init(&L, &cfg, tu_next(r), 0);
    const mxm_moe_weights w_all = ref_layer_weights(&L);

    float *x = xalloc(4 * (size_t)(T * H)), *logits = xalloc(4 * (size_t)(T * E)),
          *bias = xalloc(4 * (size_t)E);
    tu_fill_blockscaled_f32(r, x, T * H, 3, 3);
    tu_fill_normal_f32(r, logits, T * E, 2.0f);
    tu_fill_normal_f32(r, bias, E, 0.5f);
    if (tc->skewed)
        for (int64_t t = 0; t < T; t++)
            logits[t * E] += 6.0f, logits[t * E + 1 % E] += 4.0f;

    /* ---- the single-device layer ---- */
    float *ref = xalloc(4 * (size_t)(T * H)), *ref_routed = xalloc(4 * (size_t)(T * H));
    float *ref_w = xalloc(4 * (size_t)(T * K));
    int32_t *ref_ids = xalloc(4 * (size_t)(T * K));
    tu_poison_f32(ref, T * H), tu_poison_f32(ref_routed, T * H), tu_poison_f32(ref_w, T * K);
    memset(ref_ids, 0xA5, 4 * (size_t)(T * K));
    {
        const mxm_moe_inputs in = {.num_tokens = T,
                                   .x = x,
                                   .x_dtype = MXM_DT_F32,
                                   .router_logits = logits,
                                   .logits_dtype = MXM_DT_F32,
                                   .routing_bias = bias,
                                   .bias_dtype = MXM_DT_F32};
        const mxm_moe_outputs out = {.out = ref,
                                     .out_dtype = MXM_DT_F32,
                                     .out_routed = ref_routed,
                                     .topk_ids = ref_ids,
                                     .topk_weights = ref_w};
        if (T > 0) run_forward(&cfg, &w_all, &in, &out);
    }

    /* ---- N ranks: route, quantize, plan ---- */
    const int32_t ret_dt = mxm_ep_return_dtype(&cfg);
    const int64_t ret_sz = mxm_dtype_size(ret_dt);
    int32_t *ids[64], *send_src[64], *pos[64];
    float *wts[64];
    uint8_t *xq[64], *xs[64];
    int64_t send_counts[64][64], send_off[64][65];
    void *yhome[64];
    int64_t route_diff = 0;
    for (int q = 0; q < N; q++) {
        const int64_t Tq = tc->tokens[q];
        ids[q] = xalloc(4 * (size_t)(Tq * K)), wts[q] = xalloc(4 * (size_t)(Tq * K));
        send_src[q] = xalloc(4 * (size_t)(Tq * K)), pos[q] = xalloc(4 * (size_t)(Tq * K));
        xq[q] = xalloc((size_t)(Tq * H)), xs[q] = xalloc((size_t)(Tq * H / 32));
        yhome[q] = xalloc((size_t)(Tq * K * H * ret_sz));
        tu_poison_u8(yhome[q], Tq * K * H * ret_sz);
        if (Tq) {
            assert_int_equal(mxm_route(&cfg, Tq, logits + t0[q] * E, MXM_DT_F32, bias, MXM_DT_F32,
                                       ids[q], wts[q]),
                             MXM_OK);
            assert_int_equal(mxm_mxfp8_quantize(x + t0[q] * H, MXM_DT_F32, Tq, H, 0, xq[q], xs[q],
                                                cfg.scale_rule, 1),
                             MXM_OK);
        }
        route_diff +=
            Tq ? bits_differ((const float *)ids[q], (const float *)(ref_ids + t0[q] * K), Tq * K) +
                     bits_differ(wts[q], ref_w + t0[q] * K, Tq * K)
               : 0;
        assert_int_equal(mxm_ep_dispatch_plan(ids[q], Tq, K, N, ro, send_counts[q], send_off[q],
                                              send_src[q], pos[q]),
                         MXM_OK);
    }
    assert_int_equal(route_diff, 0);

    /* ---- each rank: receive, run its experts, send back ---- */
    const float one = 1.0f;
    int64_t max_recv = 0;
    for (int d = 0; d < N; d++) {
        int64_t R = 0, roff[65];
        for (int s = 0; s < N; s++)
            roff[s] = R, R += send_counts[s][d];
        if (R > max_recv) max_recv = R;
        const int32_t cnt = ro[d + 1] - ro[d];
        if (R == 0) continue;
        assert_true(cnt > 0); /* rows only go to ranks that hold experts */
        uint8_t *rq = xalloc((size_t)(R * H)), *rs = xalloc((size_t)(R * H / 32));
        int32_t *rid = xalloc(4 * (size_t)R);
        float *ones = xalloc(4 * (size_t)R);
        void *y = xalloc((size_t)(R * H * ret_sz));
        tu_poison_u8(rq, R * H), tu_poison_u8(y, R * H * ret_sz);
        for (int64_t i = 0; i < R; i++)
            ones[i] = one;
        for (int s = 0; s < N; s++) /* the "NCCL" transfer: rows of s for d, in s's send order */
            for (int64_t i = 0; i < send_counts[s][d]; i++) {
                const int64_t j = send_off[s][d] + i, dst = roff[s] + i;
                const int32_t src = send_src[s][j];
                memcpy(rq + dst * H, xq[s] + (int64_t)(src / K) * H, (size_t)H);
                memcpy(rs + dst * (H / 32), xs[s] + (int64_t)(src / K) * (H / 32), (size_t)H / 32);
                rid[dst] = ids[s][src];
            }
        mxm_moe_config ec;
        assert_int_equal(mxm_ep_expert_config(&cfg, ro[d], cnt, &ec), MXM_OK);
        const mxm_moe_weights we = {.experts = L.experts + ro[d]};
        const mxm_moe_inputs in = {.num_tokens = R,
                                   .x = rq,
                                   .x_dtype = MXM_DT_E4M3,
                                   .x_scale = rs,
                                   .topk_ids = rid,
                                   .topk_weights = ones};
        const mxm_moe_outputs out = {.out = y, .out_dtype = ret_dt};
        run_forward(&ec, &we, &in, &out);
        for (int s = 0; s < N; s++) /* back to the senders, at their send rows */
            memcpy((char *)yhome[s] + send_off[s][d] * H * ret_sz, (char *)y + roff[s] * H * ret_sz,
                   (size_t)(send_counts[s][d] * H * ret_sz));
        free(rq), free(rs), free(rid), free(ones), free(y);
    }

    /* ---- each rank: shared expert on its own tokens, combine ---- */
    float *got = xalloc(4 * (size_t)(T * H)), *got_routed = xalloc(4 * (size_t)(T * H));
    tu_poison_f32(got, T * H), tu_poison_f32(got_routed, T * H);
    int64_t shared_gemv_switch = 0; /* shared rows whose GEMM kernel differs from the layer's */
    for (int q = 0; q < N; q++) {
        const int64_t Tq = tc->tokens[q];
        if (Tq == 0) continue;
        float *ysh = NULL;
        if (tc->Is) {
            ysh = xalloc(4 * (size_t)(Tq * H));
            tu_poison_f32(ysh, Tq * H);
            int32_t *zeros = calloc((size_t)Tq, 4);
            float *ones = xalloc(4 * (size_t)Tq);
            for (int64_t i = 0; i < Tq; i++)
                ones[i] = one;
            mxm_moe_config sc;
            assert_int_equal(mxm_ep_shared_config(&cfg, &sc), MXM_OK);
            const mxm_moe_weights ws = {.experts = w_all.shared};
            const mxm_moe_inputs in = {.num_tokens = Tq,
                                       .x = xq[q],
                                       .x_dtype = MXM_DT_E4M3,
                                       .x_scale = xs[q],
                                       .topk_ids = zeros,
                                       .topk_weights = ones};
            const mxm_moe_outputs out = {.out = ysh, .out_dtype = MXM_DT_F32};
            run_forward(&sc, &ws, &in, &out);
            if ((Tq <= GEMV_MAX_ROWS) != (T <= GEMV_MAX_ROWS)) shared_gemv_switch += Tq * H;
            free(zeros), free(ones);
        }
        assert_int_equal(mxm_ep_combine(Tq, K, H, wts[q], pos[q], yhome[q], ret_dt, ysh, MXM_DT_F32,
                                        got + t0[q] * H, got_routed + t0[q] * H, MXM_DT_F32),
                         MXM_OK);
        free(ysh);
    }

    const int64_t n = T * H;
    const int64_t diff_routed = bits_differ(got_routed, ref_routed, n),
                  diff = bits_differ(got, ref, n);
    const double rel = max_rel(got, ref, n);
    /* Routed part: always bit-identical. Whole output: bit-identical unless the shared expert
     * changed GEMM kernel (the rank runs it on its own Tq tokens: the GEMV at <= 4 rows, tiles or
     * panels above). Then the shared term's sums run in another order, and a W8A8 layer may
     * requantize an intermediate value one E4M3 step (up to an eighth of it) the other way: within
     * 1e-2 of the output's largest magnitude. */
    const int pass = diff_routed == 0 && (shared_gemv_switch ? rel < 1e-2 : diff == 0);
    printf("ep %-12s N=%d E=%-3d K=%d H=%-3d T=%-4lld slices=[", tc->name, N, E, K, H,
           (long long)T);
    for (int q = 0; q <= N; q++)
        printf("%d%s", ro[q], q < N ? "," : "]");
    printf(" max_recv=%lld routed_bits_differ=%lld out_bits_differ=%lld%s max_rel=%.2e %s\n",
           (long long)max_recv, (long long)diff_routed, (long long)diff,
           shared_gemv_switch ? " (shared gemv/panel switch)" : "", rel, pass ? "PASS" : "FAIL");
    assert_true(pass);

    for (int q = 0; q < N; q++)
        free(ids[q]), free(wts[q]), free(send_src[q]), free(pos[q]), free(xq[q]), free(xs[q]),
            free(yhome[q]);
    free(got), free(got_routed), free(ref), free(ref_routed), free(ref_w), free(ref_ids);
    free(x), free(logits), free(bias);
    ref_layer_free(&L);
}

/* ---- the layer over simulated ranks ---- */

static void test_layer_split(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const int64_t tok1[] = {37};
    const int64_t tok2[] = {20, 17};
    const int32_t sl3[] = {0, 3, 11, 16};
    const int64_t tok3[] = {0, 25, 9}; /* rank 0 has no tokens */
    const int64_t tok8[] = {5, 0, 13, 1, 0, 7, 30, 2};
    const int32_t sl8[] = {0, 0, 1, 1, 6, 6, 7, 9, 16}; /* ranks 0, 2, 4 hold no experts */
    const int64_t tok8b[] = {3, 3, 3, 3, 3, 3, 3, 3};
    /* 258 rows of the shared expert on one device, 200 + 58 on two ranks: a kernel set with bf16
     * tiles takes more than 256 rows in equal groups (129 + 129), none left to the GEMV */
    const int64_t tok2b[] = {200, 58};
    const ep_case cases[] = {
        {"n1", 96, 64, 0, 8, 2, MXM_ROUTE_RENORMALIZE, 0, 0, MXM_PROFILE_TRTLLM, 1, NULL, tok1, 0},
        {"n2", 160, 96, 0, 12, 4, MXM_ROUTE_RENORMALIZE, 0, 0, MXM_PROFILE_TRTLLM, 2, NULL, tok2,
         0},
        {"n2-exact", 160, 96, 0, 12, 4, MXM_ROUTE_RENORMALIZE, 0, 0, MXM_PROFILE_EXACT, 2, NULL,
         tok2, 0},
        {"n3-uneven", 96, 64, 0, 16, 3, MXM_ROUTE_SIGMOID, 0, 0, MXM_PROFILE_TRTLLM, 3, sl3, tok3,
         0},
        {"n8-skewed", 64, 96, 0, 16, 4, MXM_ROUTE_RENORMALIZE, 0, 0, MXM_PROFILE_TRTLLM, 8, NULL,
         tok8, 1},
        {"n8-empty", 128, 64, 0, 16, 6, MXM_ROUTE_DEFAULT, 0, 0, MXM_PROFILE_TRTLLM, 8, sl8, tok8,
         1},
        {"n8-E<N", 96, 64, 0, 6, 2, MXM_ROUTE_RENORMALIZE, 0, 0, MXM_PROFILE_TRTLLM, 8, NULL, tok8,
         0},
        {"dsv3-shared", 224, 64, 96, 16, 4, MXM_ROUTE_DEEPSEEK_V3, 4, 2, MXM_PROFILE_TRTLLM, 3, sl3,
         tok3, 0},
        {"dsv3-shared8", 96, 64, 64, 32, 8, MXM_ROUTE_DEEPSEEK_V3, 8, 4, MXM_PROFILE_TRTLLM, 8,
         NULL, tok8b, 1},
        {"shared-exact", 96, 64, 64, 16, 4, MXM_ROUTE_DEEPSEEK_V3, 4, 2, MXM_PROFILE_EXACT, 2, NULL,
         tok2, 0},
        {"shared-groups", 96, 64, 64, 16, 4, MXM_ROUTE_DEEPSEEK_V3, 4, 2, MXM_PROFILE_EXACT, 2,
         NULL, tok2b, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(&r, &cases[i]);
}

/* Many random splits: N, slices, tokens per rank and routing drawn at random. */
static void test_random_splits(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const int Ns[] = {1, 2, 3, 8};
    for (int it = 0; it < 12; it++) {
        const int N = Ns[it % 4];
        const int E = (int)tu_randint(&r, 4, 24), K = (int)tu_randint(&r, 1, E < 6 ? E : 6);
        int32_t sl[9];
        int64_t tok[8];
        sl[0] = 0, sl[N] = E;
        for (int q = 1; q < N; q++)
            sl[q] = (int32_t)tu_randint(&r, 0, E);
        for (int q = 1; q < N; q++) /* sort the cut points */
            for (int j = q; j > 1 && sl[j - 1] > sl[j]; j--) {
                const int32_t t = sl[j];
                sl[j] = sl[j - 1], sl[j - 1] = t;
            }
        for (int q = 0; q < N; q++)
            tok[q] = tu_uniform(&r) < 0.2 ? 0 : tu_randint(&r, 1, 40);
        const ep_case c = {"random",
                           32 * (int)tu_randint(&r, 1, 5),
                           32 * (int)tu_randint(&r, 1, 3),
                           tu_uniform(&r) < 0.5 ? 32 : 0,
                           E,
                           K,
                           MXM_ROUTE_RENORMALIZE,
                           0,
                           0,
                           tu_uniform(&r) < 0.5 ? MXM_PROFILE_TRTLLM : MXM_PROFILE_EXACT,
                           N,
                           sl,
                           tok,
                           tu_uniform(&r) < 0.5};
        run_case(&r, &c);
    }
}

/* ---- the dispatch plan alone ---- */

static void test_dispatch_plan(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    for (int it = 0; it < 200; it++) {
        const int N = (int)tu_randint(&r, 1, 9), E = (int)tu_randint(&r, 1, 40),
                  K = (int)tu_randint(&r, 1, 8);
        const int64_t T = tu_randint(&r, 0, 50);
        int32_t ro[10];
        ro[0] = 0, ro[N] = E;
        for (int q = 1; q < N; q++)
            ro[q] = (int32_t)(E * (int64_t)q / N + (tu_uniform(&r) < 0.3 ? 1 : 0));
        for (int q = 1; q < N; q++)
            if (ro[q] > E) ro[q] = E;
        for (int q = 1; q <= N; q++)
            if (ro[q] < ro[q - 1]) ro[q] = ro[q - 1];
        int32_t *ids = xalloc(4 * (size_t)(T * K)), *src = xalloc(4 * (size_t)(T * K)),
                *pos = xalloc(4 * (size_t)(T * K));
        for (int64_t i = 0; i < T * K; i++)
            ids[i] = (int32_t)(tu_uniform(&r) < 0.5 ? 0 : tu_randint(&r, 0, E - 1));
        memset(src, 0xA5, 4 * (size_t)(T * K)), memset(pos, 0xA5, 4 * (size_t)(T * K));
        int64_t cnt[9], off[10];
        assert_int_equal(mxm_ep_dispatch_plan(ids, T, K, N, ro, cnt, off, src, pos), MXM_OK);
        assert_int_equal(off[0], 0);
        assert_int_equal(off[N], T * K);
        for (int q = 0; q < N; q++) {
            assert_int_equal(off[q + 1] - off[q], cnt[q]);
            int64_t expect = 0;
            for (int64_t i = 0; i < T * K; i++)
                expect += ids[i] >= ro[q] && ids[i] < ro[q + 1];
            assert_int_equal(cnt[q], expect);
            for (int64_t j = off[q]; j < off[q + 1]; j++) {
                const int32_t e = ids[src[j]];
                assert_true(e >= ro[q] && e < ro[q + 1]);         /* the right destination */
                if (j > off[q]) assert_true(src[j] > src[j - 1]); /* (t, k) order within it */
            }
        }
        for (int64_t i = 0; i < T * K; i++)
            assert_int_equal(src[pos[i]], i); /* inverse */
        free(ids), free(src), free(pos);
    }
    /* errors */
    const int32_t ro[] = {0, 2, 4}, bad[] = {0, 3, 2, 4}, ids[] = {0, 4};
    int64_t cnt[3], off[4];
    int32_t src[2], pos[2];
    assert_int_equal(mxm_ep_dispatch_plan(ids, 1, 2, 2, ro, cnt, off, src, pos),
                     MXM_ERR_INVALID_ARG);
    assert_non_null(strstr(mxm_last_error(), "outside 0..3"));
    assert_int_equal(mxm_ep_dispatch_plan(ids, 1, 1, 3, bad, cnt, off, src, pos),
                     MXM_ERR_INVALID_ARG);
    assert_int_equal(mxm_ep_dispatch_plan(NULL, 1, 1, 2, ro, cnt, off, src, pos), MXM_ERR_NULL);
    assert_int_equal(mxm_ep_dispatch_plan(ids, 1, 0, 2, ro, cnt, off, src, pos), MXM_ERR_SHAPE);
    assert_int_equal(mxm_ep_dispatch_plan(ids, 0, 1, 2, ro, cnt, off, src, pos), MXM_OK);
    assert_int_equal(off[2], 0);
}

/* ---- slices, the combine against a direct sum, the derived configs ---- */

static void test_slices_and_configs(void **state) {
    (void)state;
    int32_t off, cnt;
    const int32_t E[] = {256, 16, 6, 1, 7}, N[] = {8, 3, 8, 1, 7};
    for (int c = 0; c < 5; c++) {
        int32_t next = 0, lo = E[c], hi = 0;
        for (int q = 0; q < N[c]; q++) {
            assert_int_equal(mxm_ep_expert_slice(E[c], N[c], q, &off, &cnt), MXM_OK);
            assert_int_equal(off, next);
            next += cnt, lo = cnt < lo ? cnt : lo, hi = cnt > hi ? cnt : hi;
        }
        assert_int_equal(next, E[c]);
        assert_true(hi - lo <= 1);
    }
    assert_int_equal(mxm_ep_expert_slice(8, 2, 2, &off, &cnt), MXM_ERR_INVALID_ARG);
    assert_int_equal(mxm_ep_expert_slice(8, 0, 0, &off, &cnt), MXM_ERR_INVALID_ARG);

    mxm_moe_config g, e;
    mxm_moe_config_default(&g);
    g.hidden_size = 7168, g.intermediate_size = 2048, g.num_experts = 256, g.top_k = 8;
    g.routing_method = MXM_ROUTE_DEEPSEEK_V3, g.n_group = 8, g.topk_group = 4,
    g.routed_scaling_factor = 2.5f;
    g.shared_intermediate_size = 2048;
    assert_int_equal(mxm_ep_expert_config(&g, 32, 32, &e), MXM_OK);
    assert_int_equal(e.top_k, 1);
    assert_int_equal(e.local_expert_offset, 32);
    assert_int_equal(e.local_num_experts, 32);
    assert_int_equal(e.shared_intermediate_size, 0);
    assert_int_equal(e.num_experts, 256);
    assert_int_equal(mxm_moe_config_validate(&e), MXM_OK);
    assert_int_equal(mxm_ep_expert_config(&g, 250, 8, &e), MXM_ERR_SHAPE);
    assert_int_equal(mxm_ep_expert_config(&g, 0, 0, &e), MXM_ERR_SHAPE);
    assert_int_equal(mxm_ep_shared_config(&g, &e), MXM_OK);
    assert_int_equal(e.num_experts, 1);
    assert_int_equal(e.intermediate_size, 2048);
    assert_int_equal(mxm_moe_config_validate(&e), MXM_OK);
    assert_int_equal(mxm_ep_return_dtype(&g), MXM_DT_BF16);
    g.profile = MXM_PROFILE_EXACT;
    assert_int_equal(mxm_ep_return_dtype(&g), MXM_DT_F32);
    g.shared_intermediate_size = 0;
    assert_int_equal(mxm_ep_shared_config(&g, &e), MXM_ERR_INVALID_ARG);

    /* The NCCL entry points either exist or say why not; never crash on NULL. */
    mxm_ep_group *grp = (mxm_ep_group *)1;
    const mxm_status st = mxm_ep_group_create(NULL, &grp);
    assert_true(st == MXM_ERR_NO_DEVICE || st == MXM_ERR_NULL);
    assert_null(grp);
}

static void test_combine(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const int64_t T = 9;
    const int K = 3, H = 300; /* H above the 256-column chunk, not a multiple of it */
    float *w = xalloc(4 * T * K), *y = xalloc(4 * T * K * H), *sh = xalloc(4 * T * H);
    float *out = xalloc(4 * T * H), *routed = xalloc(4 * T * H);
    uint16_t *yb = xalloc(2 * T * K * H), *outb = xalloc(2 * T * H);
    int32_t pos[27];
    tu_fill_normal_f32(&r, w, T * K, 1.0f), tu_fill_normal_f32(&r, y, T * K * H, 3.0f);
    tu_fill_normal_f32(&r, sh, T * H, 1.0f);
    for (int i = 0; i < T * K; i++)
        pos[i] = i;
    for (int i = T * K - 1; i > 0; i--) { /* a random permutation */
        const int j = (int)tu_randint(&r, 0, i), t = pos[i];
        pos[i] = pos[j], pos[j] = t;
    }
    for (int64_t i = 0; i < T * K * H; i++)
        yb[i] = mxm_bf16_from_f32(y[i]);
    tu_poison_f32(out, T * H), tu_poison_f32(routed, T * H);
    assert_int_equal(
        mxm_ep_combine(T, K, H, w, pos, y, MXM_DT_F32, sh, MXM_DT_F32, out, routed, MXM_DT_F32),
        MXM_OK);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++)
                acc += w[t * K + k] * y[(int64_t)pos[t * K + k] * H + h];
            assert_memory_equal(&routed[t * H + h], &acc, 4);
            acc += sh[t * H + h];
            assert_memory_equal(&out[t * H + h], &acc, 4);
        }
    memset(outb, 0xFF, 2 * T * H);
    assert_int_equal(
        mxm_ep_combine(T, K, H, w, pos, yb, MXM_DT_BF16, NULL, 0, outb, NULL, MXM_DT_BF16), MXM_OK);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            float acc = 0.0f;
            for (int k = 0; k < K; k++)
                acc += w[t * K + k] * mxm_bf16_to_f32(yb[(int64_t)pos[t * K + k] * H + h]);
            assert_int_equal(outb[t * H + h], mxm_bf16_from_f32(acc));
        }
    pos[4] = 27;
    assert_int_equal(mxm_ep_combine(T, K, H, w, pos, y, MXM_DT_F32, NULL, 0, out, NULL, MXM_DT_F32),
                     MXM_ERR_INVALID_ARG);
    assert_int_equal(
        mxm_ep_combine(T, K, H, w, pos, y, MXM_DT_E4M3, NULL, 0, out, NULL, MXM_DT_F32),
        MXM_ERR_DTYPE);
    free(w), free(y), free(sh), free(out), free(routed), free(yb), free(outb);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slices_and_configs),
        cmocka_unit_test(test_dispatch_plan),
        cmocka_unit_test(test_combine),
        cmocka_unit_test(test_layer_split),
        cmocka_unit_test(test_random_splits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
