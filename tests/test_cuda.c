/* Backend comparison: the CUDA backend against the CPU backend (and the float64 reference on
 * integer data), on every shape class, activation, layout, profile and mode, with skewed
 * routing and EP slices. One line per case: op fmt shape err PASS|FAIL. Exits 77 (skipped)
 * where no GPU is present. MXM_TEST_QUICK=1 runs a reduced set (for compute-sanitizer).
 *
 * W8A8 cases small enough for the float64 reference are also checked element by element
 * against its bounds (tests/moe_ref.h: fp32 sums in any order, both sides of any straddled
 * E4M3/bf16 rounding boundary): "outside" must be 0.
 *
 * Tolerances against the CPU backend (relative L2):
 *  - W8A8: both backends quantize the same values; fp32 sums in different orders flip an E4M3
 *    rounding now and then (see test_moe.c: one flip can cost 1e-3 in small cases). The flip
 *    rate grows with the fp32 rounding error of a dot product, ~sqrt(length):
 *    max(3e-3, 2.5e-5 sqrt(max(H, I))) (5.2e-4 was seen at H = 2688).
 *  - weight-only: the CUDA backend keeps the intermediate in bf16 (like every GPU MoE kernel),
 *    the CPU backend in fp32 in the exact profile: 4e-3.
 *  - integer data (exact in any order, exact in bf16): 1e-6 against the float64 reference. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_ref.h"
#include "mxmoe.h"
#include "testutil.h"

static int quick;

/* When set, compare() replaces the routing by given ids that send exactly forced_counts[e]
 * (t, k) pairs to expert e (each count <= T, so no token picks an expert twice). */
static const int *forced_counts;

static void force_ids(const mxm_moe_config *c, int64_t T, int32_t *ids, float *w) {
    const int64_t K = c->top_k;
    int64_t i = 0;
    for (int e = 0; e < c->num_experts; e++)
        for (int n = 0; n < forced_counts[e]; n++, i++) {
            assert_true(forced_counts[e] <= T && i < T * K);
            ids[(i % T) * K + i / T] = e, w[(i % T) * K + i / T] = 0.25f + 0.5f * (float)((i * 7) % 11) / 11.0f;
        }
    assert_int_equal(i, T * K);
}

static void *to_dev(const void *h, size_t n) {
    void *d = NULL;
    assert_int_equal(cudaMalloc(&d, n ? n : 1), cudaSuccess);
    if (n) assert_int_equal(cudaMemcpy(d, h, n, cudaMemcpyHostToDevice), cudaSuccess);
    return d;
}

/* Device copies of a ref_layer's weights (MXFP8 or DeepSeek FP8). */
typedef struct dev_layer {
    mxm_expert_weights *ex;
    void **ptrs;
    int n;
} dev_layer;

static dev_layer layer_to_dev(const ref_layer *L) {
    const mxm_moe_config *c = &L->cfg;
    dev_layer d = {tu_alloc(sizeof(mxm_expert_weights) * (L->e_loc + 1)), tu_alloc(sizeof(void *) * 4 * (L->e_loc + 1)), 0};
    const int64_t H = c->hidden_size;
    for (int e = 0; e <= L->e_loc; e++) {
        const int shared = e == L->e_loc;
        if (shared && !c->shared_intermediate_size) break;
        const int act = shared && c->shared_activation >= 0 ? c->shared_activation : c->activation;
        const int64_t I = shared ? c->shared_intermediate_size : c->intermediate_size;
        const int64_t M1 = mxm_activation_is_gated(act) == 1 ? 2 * I : I;
        const int32_t f = c->weight_format;
        void *w13 = to_dev(L->w13[e], mxm_weight_data_bytes(f, M1, H));
        void *s13 = to_dev(L->s13[e], mxm_weight_scale_bytes(f, M1, H));
        void *w2 = to_dev(L->w2[e], mxm_weight_data_bytes(f, H, I)), *s2 = to_dev(L->s2[e], mxm_weight_scale_bytes(f, H, I));
        d.ex[e] = (mxm_expert_weights){w13, s13, w2, s2};
        d.ptrs[d.n++] = w13, d.ptrs[d.n++] = s13, d.ptrs[d.n++] = w2, d.ptrs[d.n++] = s2;
    }
    return d;
}

static void dev_layer_free(dev_layer *d) {
    for (int i = 0; i < d->n; i++) cudaFree(d->ptrs[i]);
    free(d->ex), free(d->ptrs);
}

/* Runs cfg on the given backend; inputs are host arrays; returns out/ids/w on the host. */
static void run_backend(mxm_moe_config cfg, int backend, const ref_layer *L, const dev_layer *D, int64_t T,
                        const uint16_t *x, const float *logits, const float *bias, const int32_t *ids_in,
                        const float *w_in, float *out, int32_t *ids_out, float *w_out) {
    cfg.backend = backend;
    const int64_t H = cfg.hidden_size, K = cfg.top_k, E = cfg.num_experts;
    mxm_moe_plan *plan;
    const mxm_status st = mxm_moe_plan_create(&cfg, T, &plan);
    if (st) fprintf(stderr, "plan: %s\n", mxm_last_error());
    assert_int_equal(st, MXM_OK);
    const int64_t wsb = mxm_moe_plan_workspace_size(plan);
    mxm_moe_weights mw = ref_layer_weights(L);
    const int dev = backend == MXM_BACKEND_CUDA;
    void *ws, *dx = (void *)x, *dl = (void *)logits, *db = (void *)bias, *di = (void *)ids_in, *dw = (void *)w_in;
    float *dout = out;
    int32_t *dids = ids_out;
    float *dwo = w_out;
    if (dev) {
        mw.experts = D->ex, mw.shared = cfg.shared_intermediate_size ? &D->ex[L->e_loc] : NULL;
        assert_int_equal(cudaMalloc(&ws, wsb), cudaSuccess);
        assert_int_equal(cudaMemset(ws, 0xCD, wsb), cudaSuccess);
        dx = to_dev(x, 2 * T * H);
        dl = logits ? to_dev(logits, 4 * T * E) : NULL;
        db = bias ? to_dev(bias, 4 * E) : NULL;
        di = ids_in ? to_dev(ids_in, 4 * T * K) : NULL;
        dw = w_in ? to_dev(w_in, 4 * T * K) : NULL;
        assert_int_equal(cudaMalloc((void **)&dout, 4 * T * H), cudaSuccess);
        assert_int_equal(cudaMemset(dout, 0xFF, 4 * T * H), cudaSuccess); /* NaN poison */
        assert_int_equal(cudaMalloc((void **)&dids, 4 * T * K), cudaSuccess);
        assert_int_equal(cudaMalloc((void **)&dwo, 4 * T * K), cudaSuccess);
    } else {
        ws = aligned_alloc(64, wsb);
        tu_poison_f32(out, T * H);
    }
    mxm_moe_inputs in = {.num_tokens = T, .x = dx, .x_dtype = MXM_DT_BF16, .router_logits = dl,
                         .logits_dtype = MXM_DT_F32, .routing_bias = db, .bias_dtype = MXM_DT_F32,
                         .topk_ids = di, .topk_weights = dw};
    mxm_moe_outputs o = {.out = dout, .out_dtype = MXM_DT_F32, .topk_ids = dids, .topk_weights = dwo};
    const mxm_status fs = mxm_moe_forward(plan, &mw, &in, &o, ws, wsb, NULL);
    if (fs) fprintf(stderr, "forward: %s\n", mxm_last_error());
    assert_int_equal(fs, MXM_OK);
    if (dev) {
        assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
        assert_int_equal(cudaMemcpy(out, dout, 4 * T * H, cudaMemcpyDeviceToHost), cudaSuccess);
        assert_int_equal(cudaMemcpy(ids_out, dids, 4 * T * K, cudaMemcpyDeviceToHost), cudaSuccess);
        assert_int_equal(cudaMemcpy(w_out, dwo, 4 * T * K, cudaMemcpyDeviceToHost), cudaSuccess);
        cudaFree(ws), cudaFree(dx), cudaFree(dl), cudaFree(db), cudaFree(di), cudaFree(dw), cudaFree(dout);
        cudaFree(dids), cudaFree(dwo);
    } else {
        free(ws);
    }
    mxm_moe_plan_destroy(plan);
}

static double rel_f32(const float *a, const float *b, int64_t n, int *nan) {
    double num = 0, den = 0;
    *nan = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(a[i]) || isnan(b[i])) {
            (*nan)++;
            continue;
        }
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static mxm_moe_config cfg_of(int H, int I, int E, int K, int act) {
    mxm_moe_config c;
    mxm_moe_config_default(&c);
    c.hidden_size = H, c.intermediate_size = I, c.num_experts = E, c.top_k = K, c.activation = act;
    return c;
}

/* MXFP8 W8A8 layers have two skinny-kernel paths: f16 MMAs on raw codes (the default) and the
 * exact bf16 decode (MXM_CUDA_CODES=0 at plan creation). The paths a case runs, the switch, and
 * the log tag. */
static int skinny_paths(const mxm_moe_config *c) {
    return c->weight_format == MXM_WFMT_MXFP8 && c->act_quant == MXM_ACT_QUANT_MXFP8 ? 2 : 1;
}
static void use_codes(int on) {
    setenv("MXM_CUDA_CODES", on ? "1" : "0", 1);
}
static void default_paths(void) {
    unsetenv("MXM_CUDA_CODES");
}
static const char *path_tag(int paths, int codes) {
    return paths == 1 ? "" : codes ? "/codes" : "/bf16";
}

/* CUDA vs CPU on one case; with_logits: route on the device from logits, else given ids. */
static void compare(const char *op, mxm_moe_config c, int64_t T, int skewed, int with_logits, int integer) {
    tu_rng r = tu_rng_fresh();
    ref_layer L;
    ref_layer_init(&L, &c, tu_next(&r), integer);
    if (c.activation == MXM_ACT_SWIGLUOAI) {
        L.alpha = tu_alloc(4 * L.e_loc), L.beta = tu_alloc(4 * L.e_loc), L.limit = tu_alloc(4 * L.e_loc);
        for (int e = 0; e < L.e_loc; e++)
            L.alpha[e] = 1.5f + e * 0.01f, L.beta[e] = 0.5f, L.limit[e] = 1.0f + 0.1f * (e % 7);
    }
    dev_layer D = layer_to_dev(&L);
    const int64_t H = c.hidden_size, K = c.top_k, E = c.num_experts;
    uint16_t *x = tu_alloc(2 * T * H);
    float *xf = tu_alloc(4 * T * H), *lg = tu_alloc(4 * T * E), *bias = tu_alloc(4 * E), *w = tu_alloc(4 * T * K);
    int32_t *ids = tu_alloc(4 * T * K);
    for (int64_t i = 0; i < T * H; i++) {
        const float v = integer ? (float)tu_randint(&r, -8, 8) : (float)tu_normal(&r);
        x[i] = mxm_bf16_from_f32(v), xf[i] = mxm_bf16_to_f32(x[i]);
    }
    for (int64_t t = 0; t < T; t++)
        for (int64_t e = 0; e < E; e++) lg[t * E + e] = (float)(tu_normal(&r) + (skewed ? 3.0 * exp(-e / 3.0) : 0));
    for (int64_t e = 0; e < E; e++) bias[e] = (float)(0.1 * tu_normal(&r));
    /* routing from the CPU for the given-ids runs */
    assert_int_equal(mxm_route(&c, T, lg, MXM_DT_F32, bias, MXM_DT_F32, ids, w), MXM_OK);
    if (forced_counts) force_ids(&c, T, ids, w);
    float *o_cpu = tu_alloc(4 * T * H), *o_gpu = tu_alloc(4 * T * H), *o_gpu2 = tu_alloc(4 * T * H);
    float *w_cpu = tu_alloc(4 * T * K), *w_gpu = tu_alloc(4 * T * K);
    int32_t *i_cpu = tu_alloc(4 * T * K), *i_gpu = tu_alloc(4 * T * K);
    const float *lgp = with_logits ? lg : NULL, *bp = with_logits ? bias : NULL;
    const int32_t *idp = with_logits ? NULL : ids;
    const float *wp = with_logits ? NULL : w;
    run_backend(c, MXM_BACKEND_CPU, &L, &D, T, x, lgp, bp, idp, wp, o_cpu, i_cpu, w_cpu);
    /* both skinny paths where skinny groups are the rule (<= 32 rows per expert on average) */
    const int variants = T * K <= 32 * E ? skinny_paths(&c) : 1;
    const double work = (double)T * (K + 1) * H * (c.intermediate_size + c.shared_intermediate_size);
    const int with_ref = integer || (c.act_quant == MXM_ACT_QUANT_MXFP8 && work < 2e9);
    ref_output ref = ref_output_alloc(with_ref ? T * H : 1);
    if (with_ref) ref_forward(&L, T, xf, i_cpu, w_cpu, &ref);
    for (int variant = 0; variant < variants; variant++) {
        use_codes(variant);
        run_backend(c, MXM_BACKEND_CUDA, &L, &D, T, x, lgp, bp, idp, wp, o_gpu, i_gpu, w_gpu);
        run_backend(c, MXM_BACKEND_CUDA, &L, &D, T, x, lgp, bp, idp, wp, o_gpu2, i_gpu, w_gpu);
        int nan_gpu, nan_cpu;
        double err = rel_f32(o_gpu, o_cpu, T * H, &nan_gpu);
        (void)rel_f32(o_cpu, o_cpu, T * H, &nan_cpu);
        const int same_runs = memcmp(o_gpu, o_gpu2, 4 * T * H) == 0;
        int64_t id_match = 0;
        double wmax = 0;
        for (int64_t i = 0; i < T * K; i++) {
            id_match += i_gpu[i] == i_cpu[i];
            const double d = fabs((double)w_gpu[i] - w_cpu[i]) / (fabs(w_cpu[i]) + 1e-30);
            if (i_gpu[i] == i_cpu[i] && d > wmax) wmax = d;
        }
        const double len =
            c.hidden_size > c.intermediate_size ? c.hidden_size : c.intermediate_size;
        const double w8a8_tol = 2.5e-5 * sqrt(len) > 3e-3 ? 2.5e-5 * sqrt(len) : 3e-3;
        double tol = c.act_quant == MXM_ACT_QUANT_MXFP8 ? w8a8_tol : 4e-3;
        int64_t outside = -1; /* W8A8 (small cases): GPU elements outside the reference's bounds */
        /* Routing from logits: the routing is checked above (same ids, weights within wmax's
         * bound), and the layer against a reference on the device's own routing weights (an
         * ulp of difference in one token's weight moves its whole output row). */
        if (with_ref && with_logits && id_match == T * K && memcmp(w_gpu, w_cpu, 4 * T * K) != 0) {
            ref_output_free(&ref);
            ref = ref_output_alloc(T * H);
            ref_forward(&L, T, xf, i_gpu, w_gpu, &ref);
        }
        if (with_ref) {
            if (integer) { /* against the float64 reference */
                err = tu_rel_l2_f32(o_gpu, ref.out, T * H);
                tol = 1e-6;
            } else {
                outside = ref_check_f32(o_gpu, ref.out, ref.lo, ref.hi, T * H).outside;
            }
        }
        const int pass = err <= tol && nan_gpu == 0 && same_runs && id_match == T * K &&
                         wmax <= 8e-3 && outside <= 0;
        char bounds[48] = "";
        if (outside >= 0) snprintf(bounds, sizeof bounds, " outside=%lld", (long long)outside);
        if (with_logits && wmax > 0) /* routing weights unlike the CPU's (by at most 8e-3) */
            snprintf(bounds + strlen(bounds), sizeof bounds - strlen(bounds), " wdiff=%.0e", wmax);
        char tag[24]; /* the op, and which skinny path a W8A8 MXFP8 case ran */
        snprintf(tag, sizeof tag, "%s%s", op, path_tag(variants, variant));
        printf("%-14s %-9s %-12s %-4s %-5s %s H=%-4d I=%-4d E=%-3d K=%-2d T=%-5lld%s err=%.2e "
               "tol=%.0e%s ids=%s det=%s %s\n",
               tag, mxm_weight_format_name(c.weight_format), mxm_activation_name(c.activation),
               c.act_quant ? "w8" : "w8a8", c.profile ? "exact" : "trt",
               c.w13_layout == 1   ? "ug"
               : c.w13_layout == 2 ? "il"
                                   : "gu",
               c.hidden_size, c.intermediate_size, c.num_experts, c.top_k, (long long)T,
               c.shared_intermediate_size ? " +shared" : "", err, tol, bounds,
               id_match == T * K ? "same" : "DIFF", same_runs ? "yes" : "NO",
               pass ? "PASS" : "FAIL");
        fflush(stdout);
        default_paths();
        assert_true(pass);
    }
    ref_output_free(&ref);
    free(x), free(xf), free(lg), free(bias), free(w), free(ids), free(o_cpu), free(o_gpu), free(o_gpu2);
    free(w_cpu), free(w_gpu), free(i_cpu), free(i_gpu);
    dev_layer_free(&D);
    ref_layer_free(&L);
}

/* Every activation x mode x profile; T = 300 takes the MMA path, T = 13 the skinny one. */
static void run_modes(const char *op, int with_skinny) {
    for (int act = 0; act < MXM_ACT_COUNT_; act++)
        for (int aq = 0; aq < 2; aq++)
            for (int prof = 0; prof < 2; prof++) {
                if (quick && (aq || prof)) continue;
                mxm_moe_config c = cfg_of(96, 160, 8, 3, act);
                c.act_quant = aq, c.profile = prof;
                if (with_skinny) compare(op, c, 13, 0, 0, 0);
                compare(op, c, 300, 0, 0, 0);
            }
}

static void test_modes(void **state) {
    (void)state;
    run_modes("mode", 1);
}

static void test_layouts_and_shared(void **state) {
    (void)state;
    for (int lay = 0; lay < 3; lay++) {
        mxm_moe_config c = cfg_of(128, 96, 6, 2, MXM_ACT_SWIGLUOAI);
        c.w13_layout = lay;
        compare("layout", c, 5, 0, 0, 0);
        compare("layout", c, 200, 0, 0, 0);
    }
    mxm_moe_config c = cfg_of(96, 64, 8, 2, MXM_ACT_RELU2_NO_MUL);
    c.shared_intermediate_size = 192;
    compare("shared", c, 3, 0, 0, 0);
    compare("shared", c, 150, 0, 0, 0);
    c.shared_activation = MXM_ACT_SILU;
    compare("shared", c, 150, 0, 0, 0);
}

static int64_t shapes_min_T; /* test_wgmma: only the cases with at least this many tokens */

static void test_shapes_routing(void **state) {
    (void)state;
    struct { int H, I, E, K; int64_t T; int skew, logits, method, ng, tg; } s[] = {
        {32, 32, 4, 1, 1, 0, 1, MXM_ROUTE_RENORMALIZE, 0, 0},
        {224, 96, 16, 10, 7, 0, 1, MXM_ROUTE_DEFAULT, 0, 0},
        {2688, 1856, 16, 6, 1, 0, 1, MXM_ROUTE_DEEPSEEK_V3, 1, 1},
        {2688, 1856, 16, 6, 100, 1, 1, MXM_ROUTE_DEEPSEEK_V3, 1, 1},
        {256, 128, 64, 8, 2048, 0, 1, MXM_ROUTE_DEEPSEEK_V3, 8, 4},
        {160, 96, 32, 4, 1000, 1, 0, MXM_ROUTE_SIGMOID_RENORM, 0, 0},
        {128, 64, 16, 4, 16384, 0, 1, MXM_ROUTE_TOPK_SIGMOID, 0, 0},
    };
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) {
        if ((quick && s[i].T > 2048) || s[i].T < shapes_min_T) continue;
        mxm_moe_config c = cfg_of(s[i].H, s[i].I, s[i].E, s[i].K, MXM_ACT_SILU);
        c.routing_method = s[i].method, c.n_group = s[i].ng, c.topk_group = s[i].tg;
        c.routed_scaling_factor = 2.5f;
        compare("shape", c, s[i].T, s[i].skew, s[i].logits, 0);
    }
}

/* DeepSeek FP8 weights (128x128 block scales, 1x128 activation scales) on both paths; H and I
 * not multiples of 128 (partial blocks, gate and up rows sharing a block row). */
static void test_fp8_block(void **state) {
    (void)state;
    const int acts[] = {MXM_ACT_SILU, MXM_ACT_RELU2_NO_MUL, MXM_ACT_SWIGLUOAI};
    for (int ai = 0; ai < 3; ai++)
        for (int aq = 0; aq < 2; aq++)
            for (int prof = 0; prof < 2; prof++) {
                if (quick && (aq || prof)) continue;
                mxm_moe_config c = cfg_of(224, 160, 8, 3, acts[ai]);
                c.weight_format = MXM_WFMT_FP8_BLOCK, c.act_quant = aq, c.profile = prof;
                compare("fp8block", c, 13, 0, 0, 0); /* skinny path */
                compare("fp8block", c, 300, 0, 0, 0); /* MMA path */
            }
    mxm_moe_config c = cfg_of(256, 96, 8, 2, MXM_ACT_SILU);
    c.weight_format = MXM_WFMT_FP8_BLOCK, c.w13_layout = MXM_W13_INTERLEAVED, c.shared_intermediate_size = 160;
    compare("fp8block", c, 2, 0, 1, 0);
    compare("fp8block", c, 700, 1, 1, 0);
    c = cfg_of(7168 / 4, 512, 32, 8, MXM_ACT_SILU); /* DeepSeek-like blocks */
    c.weight_format = MXM_WFMT_FP8_BLOCK, c.routing_method = MXM_ROUTE_DEEPSEEK_V3, c.n_group = 8, c.topk_group = 4;
    compare("fp8block", c, 1, 0, 1, 0);
    if (!quick) compare("fp8block", c, 4096, 0, 1, 0);
}

/* NaN inputs propagate as NaN (SPEC 5): a NaN in one token's activations and a NaN weight code
 * (E4M3 0x7F) in one expert give NaN in exactly the outputs where the CPU backend has NaN; the
 * other outputs agree as in compare(). Token 0 is steered to the poisoned expert, token 2 carries
 * the NaN activation; T = 5 runs the skinny kernels (both ways for W8A8), T = 300 the tiles. */
static void nan_case(mxm_moe_config c, int64_t T) {
    tu_rng r = tu_rng_fresh();
    ref_layer L;
    ref_layer_init(&L, &c, tu_next(&r), 0);
    const int64_t H = c.hidden_size, K = c.top_k, E = c.num_experts;
    ((uint8_t *)L.w13[1])[3 * H + 7] = 0x7F; /* W13 row 3, column 7 of expert 1 */
    dev_layer D = layer_to_dev(&L);
    uint16_t *x = tu_alloc(2 * T * H);
    float *lg = tu_alloc(4 * T * E), *w = tu_alloc(4 * T * K);
    int32_t *ids = tu_alloc(4 * T * K);
    for (int64_t i = 0; i < T * H; i++)
        x[i] = mxm_bf16_from_f32((float)tu_normal(&r));
    x[2 * H + 5] = 0x7FC0; /* bf16 NaN */
    for (int64_t i = 0; i < T * E; i++)
        lg[i] = (float)tu_normal(&r);
    lg[1] = 10.0f; /* token 0 picks expert 1 */
    assert_int_equal(mxm_route(&c, T, lg, MXM_DT_F32, NULL, MXM_DT_F32, ids, w), MXM_OK);
    float *o_cpu = tu_alloc(4 * T * H), *o_gpu = tu_alloc(4 * T * H), *w_o = tu_alloc(4 * T * K);
    int32_t *i_o = tu_alloc(4 * T * K);
    run_backend(c, MXM_BACKEND_CPU, &L, &D, T, x, NULL, NULL, ids, w, o_cpu, i_o, w_o);
    const int variants = skinny_paths(&c);
    for (int variant = 0; variant < variants; variant++) {
        use_codes(variant);
        run_backend(c, MXM_BACKEND_CUDA, &L, &D, T, x, NULL, NULL, ids, w, o_gpu, i_o, w_o);
        default_paths();
        int64_t nan_cpu = 0, mismatched = 0;
        for (int64_t i = 0; i < T * H; i++) {
            nan_cpu += isnan(o_cpu[i]);
            mismatched += !isnan(o_cpu[i]) != !isnan(o_gpu[i]);
        }
        int nan_gpu;
        const double err = rel_f32(o_gpu, o_cpu, T * H, &nan_gpu);
        const int pass = mismatched == 0 && nan_cpu >= 2 * H && err <= 4e-3;
        printf(
            "nan%-11s %-9s %-4s T=%-4lld NaN outputs cpu=%lld gpu=%d mismatched=%lld err=%.2e %s\n",
            path_tag(variants, variant), mxm_weight_format_name(c.weight_format),
            c.act_quant ? "w8" : "w8a8", (long long)T, (long long)nan_cpu, nan_gpu,
            (long long)mismatched, err, pass ? "PASS" : "FAIL");
        fflush(stdout);
        assert_true(pass);
    }
    free(x), free(lg), free(w), free(ids), free(o_cpu), free(o_gpu), free(w_o), free(i_o);
    dev_layer_free(&D);
    ref_layer_free(&L);
}

static void test_nan_propagation(void **state) {
    (void)state;
    for (int aq = 0; aq < 2; aq++)
        for (int i = 0; i < 2; i++) {
            mxm_moe_config c = cfg_of(96, 64, 8, 2, MXM_ACT_SILU);
            c.act_quant = aq;
            nan_case(c, i ? 300 : 5);
        }
}

/* Pre-quantized E4M3 inputs (MXFP8 with E8M0 scales; DeepSeek FP8 with f32 1x128 scales in
 * both layouts), W8A8 and weight-only: the CUDA backend against the CPU backend on the same
 * codes and scales. */
static void test_prequantized_x(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const int64_t T = 37, H = 384, K = 2;
    for (int fmt = 0; fmt < 2; fmt++)
        for (int aq = 0; aq < 2; aq++)
            for (int tr = 0; tr < (fmt == MXM_WFMT_FP8_BLOCK ? 2 : 1); tr++) {
                mxm_moe_config c = cfg_of((int)H, 160, 8, (int)K, MXM_ACT_SILU);
                c.weight_format = fmt, c.act_quant = aq, c.profile = MXM_PROFILE_EXACT;
                ref_layer L;
                ref_layer_init(&L, &c, tu_next(&r), 0);
                dev_layer D = layer_to_dev(&L);
                float *xf = tu_alloc(4 * T * H), *w = tu_alloc(4 * T * K);
                int32_t *ids = tu_alloc(4 * T * K);
                uint8_t *q = tu_alloc(T * H);
                const int64_t HB = (H + 127) / 128;
                const size_t sbytes = fmt == MXM_WFMT_MXFP8 ? (size_t)(T * H / 32) : (size_t)(4 * T * HB);
                void *sc = tu_alloc(sbytes);
                tu_fill_blockscaled_f32(&r, xf, T * H, 3, 3);
                for (int64_t t = 0; t < T; t++)
                    for (int64_t k = 0; k < K; k++) ids[t * K + k] = (int32_t)((t + 3 * k) % 8), w[t * K + k] = 0.5f + 0.1f * k;
                if (fmt == MXM_WFMT_MXFP8)
                    assert_int_equal(mxm_mxfp8_quantize(xf, MXM_DT_F32, T, H, 0, q, sc, MXM_SCALE_RCEIL, 1), MXM_OK);
                else
                    assert_int_equal(mxm_fp8block_quantize_act(xf, MXM_DT_F32, T, H, q, sc, tr, 1), MXM_OK);
                float *out[2];
                for (int b = 0; b < 2; b++) { /* 0: CPU, 1: CUDA */
                    mxm_moe_config cb = c;
                    cb.backend = b ? MXM_BACKEND_CUDA : MXM_BACKEND_CPU;
                    mxm_moe_plan *plan;
                    assert_int_equal(mxm_moe_plan_create(&cb, T, &plan), MXM_OK);
                    const int64_t wsb = mxm_moe_plan_workspace_size(plan);
                    out[b] = tu_alloc(4 * T * H);
                    tu_poison_f32(out[b], T * H);
                    mxm_moe_weights mw = ref_layer_weights(&L);
                    void *ws, *dq = q, *ds = sc, *di = ids, *dw = w, *dout = out[b];
                    if (b) {
                        mw.experts = D.ex;
                        dq = to_dev(q, T * H), ds = to_dev(sc, sbytes), di = to_dev(ids, 4 * T * K), dw = to_dev(w, 4 * T * K);
                        assert_int_equal(cudaMalloc(&ws, wsb), cudaSuccess);
                        assert_int_equal(cudaMalloc(&dout, 4 * T * H), cudaSuccess);
                        assert_int_equal(cudaMemset(dout, 0xFF, 4 * T * H), cudaSuccess);
                    } else {
                        ws = aligned_alloc(64, wsb);
                    }
                    mxm_moe_inputs in = {.num_tokens = T, .x = dq, .x_dtype = MXM_DT_E4M3, .x_scale = ds,
                                         .x_scale_transposed = tr, .topk_ids = di, .topk_weights = dw};
                    mxm_moe_outputs o = {.out = dout, .out_dtype = MXM_DT_F32};
                    const mxm_status st = mxm_moe_forward(plan, &mw, &in, &o, ws, wsb, NULL);
                    if (st) fprintf(stderr, "forward: %s\n", mxm_last_error());
                    assert_int_equal(st, MXM_OK);
                    if (b) {
                        assert_int_equal(cudaMemcpy(out[b], dout, 4 * T * H, cudaMemcpyDeviceToHost), cudaSuccess);
                        cudaFree(dq), cudaFree(ds), cudaFree(di), cudaFree(dw), cudaFree(ws), cudaFree(dout);
                    } else {
                        free(ws);
                    }
                    mxm_moe_plan_destroy(plan);
                }
                int nan;
                const double err = rel_f32(out[1], out[0], T * H, &nan);
                const double tol = aq == MXM_ACT_QUANT_MXFP8 ? 3e-3 : 4e-3;
                const int pass = err <= tol && nan == 0;
                printf("prequant  %-9s %-4s scales%s err=%.2e tol=%.0e %s\n", mxm_weight_format_name(fmt),
                       aq ? "w8" : "w8a8", tr ? " transposed" : "", err, tol, pass ? "PASS" : "FAIL");
                assert_true(pass);
                free(out[0]), free(out[1]), free(xf), free(w), free(ids), free(q), free(sc);
                dev_layer_free(&D);
                ref_layer_free(&L);
            }
}

/* compare() with the routing forced to counts[e] rows per expert (16 experts, K = 2): both
 * weight formats, a gated and a plain activation (the plain one with a shared expert). */
static void compare_group_counts(const char *name, const int counts[16]) {
    int total = 0;
    for (int e = 0; e < 16; e++) total += counts[e];
    forced_counts = counts;
    const int acts[] = {MXM_ACT_SILU, MXM_ACT_RELU2_NO_MUL};
    for (int fmt = 0; fmt < 2; fmt++)
        for (int ai = 0; ai < 2; ai++)
            for (int aq = 0; aq < 2; aq++) {
                if (quick && aq) continue;
                mxm_moe_config c = cfg_of(160, 96, 16, 2, acts[ai]);
                c.weight_format = fmt, c.act_quant = aq;
                c.shared_intermediate_size = ai ? 224 : 0; /* shared: T rows, the MMA path */
                compare(name, c, total / 2, 0, 0, 0);
            }
    forced_counts = NULL;
}

/* Groups of exactly 0, 1, 7, 8, 9, ... rows: both sides of the skinny kernel's n8 tiles and of its
 * 32-row limit, and of the 64-row MMA tiles; H and I multiples of 32 but not of the 128-wide
 * K stages or the 64-row weight chunks. Given ids (K = 2), every format, gated and not. */
static void test_group_sizes(void **state) {
    (void)state;
    static const int counts[16] = {0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 128, 129};
    compare_group_counts("groups", counts);
    /* One expert takes every token (K = 1), at the skinny limit and past it. */
    static const int one_32[4] = {32, 0, 0, 0}, one_33[4] = {0, 0, 33, 0};
    mxm_moe_config c = cfg_of(288, 224, 4, 1, MXM_ACT_SILU);
    forced_counts = one_32;
    compare("one-exp", c, 32, 0, 0, 0);
    forced_counts = one_33;
    compare("one-exp", c, 33, 0, 0, 0);
    forced_counts = NULL;
}

/* Decode: every routing method on the device (the fused prologue routes one token per thread)
 * at T = 1, 3, 64 and 256, and past the prologue at T = 257 (separate kernels). */
static void test_decode_routing(void **state) {
    (void)state;
    const int64_t Ts[] = {1, 3, 64, 256, 257};
    for (int m = 0; m < MXM_ROUTE_COUNT_; m++)
        for (size_t i = 0; i < sizeof Ts / sizeof Ts[0]; i++) {
            if (quick && i % 2) continue;
            mxm_moe_config c = cfg_of(160, 96, 32, m == MXM_ROUTE_LLAMA4 ? 1 : 4, MXM_ACT_SILU);
            c.routing_method = m, c.routed_scaling_factor = 1.5f;
            if (m == MXM_ROUTE_DEEPSEEK_V3) c.n_group = 4, c.topk_group = 2;
            compare("decode", c, Ts[i], (int)(i % 2), 1, 0);
        }
    /* The device routes a token per warp (route_warp.cuh): 72 experts give lanes 2 or 3 of them
     * (and DeepSeekV3 8 groups of 9, 3 kept); T = 1 keeps the scratch in shared memory, T = 64
     * in global memory, T = 300 takes the routing kernel after the prologue's range. Then the
     * same with MXM_CUDA_ROUTE_WARP=0 (a thread per token, read at every forward). */
    const int64_t Tw[] = {1, 64, 300};
    for (int warp = 1; warp >= 0; warp--) {
        setenv("MXM_CUDA_ROUTE_WARP", warp ? "1" : "0", 1);
        for (int m = 0; m < MXM_ROUTE_COUNT_; m++)
            for (size_t i = 0; i < sizeof Tw / sizeof Tw[0]; i++) {
                mxm_moe_config c = cfg_of(160, 96, 72, m == MXM_ROUTE_LLAMA4 ? 1 : 6, MXM_ACT_SILU);
                c.routing_method = m, c.routed_scaling_factor = 2.5f;
                if (m == MXM_ROUTE_DEEPSEEK_V3) c.n_group = 8, c.topk_group = 3;
                compare(warp ? "decode-e72" : "decode-e72-thr", c, Tw[i], (int)(i % 2), 1, 0);
            }
    }
    unsetenv("MXM_CUDA_ROUTE_WARP");
}

/* The decode prologue's L2 prefetch (src/cuda/l2_prefetch.h) changes no result: budgets of none,
 * 3 KB (each touched group's share ends inside its GEMM1 codes, pieces of a few hundred bytes)
 * and 3/5 of the L2 ("l2"); from given ids and from logits (the prefetch blocks route T <= 8 tokens
 * themselves, T = 9 leaves them out), a shared expert, DeepSeek FP8 weights, an expert-parallel
 * slice. Each case against the CPU backend, twice (bit-identical runs), as everywhere. */
static void test_l2_prefetch(void **state) {
    (void)state;
    static const char *budgets[] = {"0", "3", "l2"};
    for (size_t b = 0; b < sizeof budgets / sizeof budgets[0]; b++) {
        setenv("MXM_CUDA_L2_PREFETCH_KB", budgets[b], 1);
        mxm_moe_config c = cfg_of(256, 96, 32, 4, MXM_ACT_SILU);
        compare("l2pf", c, 1, 0, 1, 0);
        compare("l2pf", c, 8, 1, 1, 0);
        compare("l2pf", c, 9, 0, 1, 0);
        compare("l2pf", c, 64, 1, 0, 0);
        c.shared_intermediate_size = 160;
        compare("l2pf-shared", c, 1, 0, 1, 0);
        c = cfg_of(256, 128, 16, 3, MXM_ACT_SILU);
        c.weight_format = MXM_WFMT_FP8_BLOCK;
        compare("l2pf-fp8b", c, 2, 0, 0, 0);
        c = cfg_of(160, 96, 32, 2, MXM_ACT_RELU2_NO_MUL);
        c.local_num_experts = 8, c.local_expert_offset = 8;
        compare("l2pf-ep", c, 3, 0, 1, 0);
    }
    unsetenv("MXM_CUDA_L2_PREFETCH_KB");
}

/* The skinny kernels' persistent variant (MXM_CUDA_SKINNY_PERSIST=1, MXFP8): H = 768 and I = 640
 * give every item at least SKP_XITEM_STAGES stages of the default build (5), so the ring runs on
 * from item to item (GEMM1 gated: E = 32 groups x 20 chunks at T = 64, more items than 2 blocks
 * per SM take at once); H = 1024 / I = 896 (7 stages) do so in the 8-stage build too;
 * H = 288 / I = 96 do not (each item primes its own stages); a shared expert of another gating
 * (two GEMM1 launches skipping each other's items), skewed routing, an EP slice, both skinny
 * paths where W8A8 (the compare's variants), DeepSeek FP8 weights. Against the CPU backend, twice.
 */
static void test_skinny_persistent(void **state) {
    (void)state;
    setenv("MXM_CUDA_SKINNY_PERSIST", "1", 1);
    mxm_moe_config c = cfg_of(768, 640, 32, 4, MXM_ACT_SILU);
    compare("sk-persist", c, 1, 0, 0, 0);
    compare("sk-persist", c, 64, 0, 0, 0);
    compare("sk-persist", c, 200, 1, 1, 0);
    c.shared_intermediate_size = 704, c.shared_activation = MXM_ACT_RELU2_NO_MUL;
    compare("sk-persist-sh", c, 48, 0, 1, 0);
    c = cfg_of(288, 96, 32, 6, MXM_ACT_RELU2_NO_MUL);
    compare("sk-persist-k", c, 64, 1, 0, 0);
    c.act_quant = MXM_ACT_QUANT_NONE;
    compare("sk-persist-k", c, 16, 0, 1, 0);
    c = cfg_of(768, 640, 32, 2, MXM_ACT_SILU);
    c.local_num_experts = 8, c.local_expert_offset = 24;
    compare("sk-persist-ep", c, 40, 1, 1, 0);
    c = cfg_of(768, 640, 32, 4, MXM_ACT_SILU); /* DeepSeek FP8: per-stage 128-block scales */
    c.weight_format = MXM_WFMT_FP8_BLOCK;
    compare("sk-persist-fp8b", c, 64, 0, 0, 0);
    c.act_quant = MXM_ACT_QUANT_NONE;
    compare("sk-persist-fp8b", c, 5, 1, 1, 0);
    c = cfg_of(1024, 896, 16, 2, MXM_ACT_SILU);
    compare("sk-persist-k7", c, 24, 1, 1, 0);
    unsetenv("MXM_CUDA_SKINNY_PERSIST");
}

/* The tile kernels on the plan's side stream (MXM_CUDA_TILE_STREAM=1): steps where skewed routing
 * gives both skinny and tile groups (mma.sync and wgmma tiles), a shared expert of another
 * gating, an EP slice, DeepSeek FP8 weight-only (W8A8 keeps one stream), and two graphs replayed
 * in turn with the fork and join captured. */
static void test_graph_replay(void **state);
static void test_tile_stream(void **state) {
    setenv("MXM_CUDA_TILE_STREAM", "1", 1);
    mxm_moe_config c = cfg_of(256, 192, 16, 4, MXM_ACT_SILU);
    compare("tile-stream", c, 40, 1, 1, 0);
    compare("tile-stream", c, 300, 1, 0, 0);
    setenv("MXM_CUDA_WGMMA", "1", 1);
    compare("tile-stream-wg", c, 300, 1, 1, 0);
    setenv("MXM_CUDA_WGMMA", "0", 1); /* main's setting for the groups before test_wgmma */
    c.shared_intermediate_size = 128, c.shared_activation = MXM_ACT_RELU2_NO_MUL;
    compare("tile-stream-sh", c, 120, 1, 1, 0);
    c = cfg_of(96, 64, 12, 3, MXM_ACT_SILU);
    c.local_expert_offset = 5, c.local_num_experts = 4;
    compare("tile-stream-ep", c, 200, 1, 1, 0);
    c = cfg_of(256, 128, 16, 3, MXM_ACT_SILU);
    c.weight_format = MXM_WFMT_FP8_BLOCK, c.act_quant = MXM_ACT_QUANT_NONE;
    compare("tile-stream-fp8b", c, 160, 1, 0, 0);
    test_graph_replay(state);
    unsetenv("MXM_CUDA_TILE_STREAM");
}

long long mxm_test_e4m3_device_mismatches(unsigned int first[2]); /* tests/cuda_checks.cu */

/* The device's E4M3 conversions (the hardware converter) equal their integer twins: every fp32
 * input of the encoder, every code of the decoder. */
static void test_e4m3_device(void **state) {
    (void)state;
    unsigned int first[2];
    const long long bad = mxm_test_e4m3_device_mismatches(first);
    printf("e4m3 device conversions: %lld mismatches (first encoder input 0x%08x, first code "
           "0x%02x)\n",
           bad, first[0], first[1] & 0xFF);
    assert_int_equal(bad, 0);
}

/* T = 1 (every group one token: the skinny kernels at their smallest): stage counts that are not
 * multiples of the 6-deep ring or of the 4-stage scale prefetch (H = 864: 7 stages; I = 352: 3),
 * gated and plain experts, a shared expert, DeepSeek FP8 weights, weight-only, ids from logits
 * and from the caller; integer data checks the sums exactly. */
static void test_one_token(void **state) {
    (void)state;
    const int acts[] = {MXM_ACT_SILU, MXM_ACT_RELU2_NO_MUL};
    for (int ai = 0; ai < 2; ai++)
        for (int fmt = 0; fmt < 2; fmt++)
            for (int aq = 0; aq < 2; aq++) {
                if (quick && aq) continue;
                mxm_moe_config c = cfg_of(864, 352, 16, 8, acts[ai]);
                c.weight_format = fmt ? MXM_WFMT_FP8_BLOCK : MXM_WFMT_MXFP8, c.act_quant = aq;
                if (ai) c.shared_intermediate_size = 224, c.shared_activation = MXM_ACT_SILU;
                compare("one-token", c, 1, 0, ai == 0, 0);
            }
    mxm_moe_config c = cfg_of(864, 352, 16, 6, MXM_ACT_RELU2_NO_MUL);
    c.profile = MXM_PROFILE_EXACT;
    compare("one-token", c, 1, 0, 0, 1);
}

static void test_integer_exact(void **state) {
    (void)state;
    const int acts[] = {MXM_ACT_RELU2_NO_MUL, MXM_ACT_IDENTITY};
    for (int a = 0; a < 2; a++) {
        mxm_moe_config c = cfg_of(96, 160, 8, 3, acts[a]);
        c.profile = MXM_PROFILE_EXACT;
        compare("int-exact", c, 6, 0, 0, 1);
        compare("int-exact", c, 400, 0, 0, 1);
    }
}

static void test_expert_parallel(void **state) {
    (void)state;
    mxm_moe_config c = cfg_of(96, 64, 12, 3, MXM_ACT_SILU);
    c.local_expert_offset = 5, c.local_num_experts = 4;
    compare("ep-slice", c, 9, 0, 1, 0);
    compare("ep-slice", c, 500, 1, 1, 0);
}

/* A forward recorded into a CUDA graph replays to the same bytes as the plain forward. */
static void test_graph_replay(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    mxm_moe_config c = cfg_of(256, 192, 16, 4, MXM_ACT_SILU);
    c.backend = MXM_BACKEND_CUDA, c.shared_intermediate_size = 128;
    ref_layer L;
    ref_layer_init(&L, &c, tu_next(&r), 0);
    dev_layer D = layer_to_dev(&L);
    const int64_t T = 200, H = 256, E = 16;
    uint16_t *x = tu_alloc(2 * T * H);
    float *lg = tu_alloc(4 * T * E), *o1 = tu_alloc(4 * T * H), *o2 = tu_alloc(4 * T * H);
    for (int64_t i = 0; i < T * H; i++) x[i] = mxm_bf16_from_f32((float)tu_normal(&r));
    for (int64_t i = 0; i < T * E; i++) lg[i] = (float)tu_normal(&r);
    mxm_moe_plan *plan;
    assert_int_equal(mxm_moe_plan_create(&c, T, &plan), MXM_OK);
    const int64_t wsb = mxm_moe_plan_workspace_size(plan);
    void *ws, *dx = to_dev(x, 2 * T * H), *dl = to_dev(lg, 4 * T * E), *dout;
    assert_int_equal(cudaMalloc(&ws, wsb), cudaSuccess);
    assert_int_equal(cudaMalloc(&dout, 4 * T * H), cudaSuccess);
    mxm_moe_weights mw = {D.ex, &D.ex[L.e_loc], NULL, NULL, NULL};
    mxm_moe_inputs in = {.num_tokens = T, .x = dx, .x_dtype = MXM_DT_BF16, .router_logits = dl, .logits_dtype = MXM_DT_F32};
    mxm_moe_outputs o = {.out = dout, .out_dtype = MXM_DT_F32};
    assert_int_equal(mxm_moe_forward(plan, &mw, &in, &o, ws, wsb, NULL), MXM_OK);
    assert_int_equal(cudaMemcpy(o1, dout, 4 * T * H, cudaMemcpyDeviceToHost), cudaSuccess);
    mxm_cuda_graph *g;
    const mxm_status st = mxm_cuda_graph_capture(plan, &mw, &in, &o, ws, wsb, NULL, &g);
    if (st) fprintf(stderr, "capture: %s\n", mxm_last_error());
    assert_int_equal(st, MXM_OK);
    assert_int_equal(cudaMemset(dout, 0xFF, 4 * T * H), cudaSuccess);
    assert_int_equal(mxm_cuda_graph_launch(g), MXM_OK);
    assert_int_equal(mxm_cuda_graph_launch(g), MXM_OK);
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
    assert_int_equal(cudaMemcpy(o2, dout, 4 * T * H, cudaMemcpyDeviceToHost), cudaSuccess);
    const int same = memcmp(o1, o2, 4 * T * H) == 0;
    printf("graph     replay equals the plain forward: %s\n", same ? "PASS" : "FAIL");
    assert_true(same);
    /* A second graph on the same workspace (other inputs), replayed alternately with the first
     * on the default stream: replays must not overlap (each graph would otherwise run on a
     * stream of its own and the two would race on the workspace). */
    for (int64_t i = 0; i < T * H; i++) x[i] = mxm_bf16_from_f32((float)tu_normal(&r));
    void *dx2 = to_dev(x, 2 * T * H), *dout2;
    float *o3 = tu_alloc(4 * T * H), *o4 = tu_alloc(4 * T * H);
    assert_int_equal(cudaMalloc(&dout2, 4 * T * H), cudaSuccess);
    mxm_moe_inputs in2 = in;
    in2.x = dx2;
    mxm_moe_outputs oo2 = {.out = dout2, .out_dtype = MXM_DT_F32};
    assert_int_equal(mxm_moe_forward(plan, &mw, &in2, &oo2, ws, wsb, NULL), MXM_OK);
    assert_int_equal(cudaMemcpy(o3, dout2, 4 * T * H, cudaMemcpyDeviceToHost), cudaSuccess);
    mxm_cuda_graph *g2;
    assert_int_equal(mxm_cuda_graph_capture(plan, &mw, &in2, &oo2, ws, wsb, NULL, &g2), MXM_OK);
    assert_int_equal(cudaMemset(dout, 0xFF, 4 * T * H), cudaSuccess);
    assert_int_equal(cudaMemset(dout2, 0xFF, 4 * T * H), cudaSuccess);
    for (int rep = 0; rep < 20; rep++) {
        assert_int_equal(mxm_cuda_graph_launch(g), MXM_OK);
        assert_int_equal(mxm_cuda_graph_launch(g2), MXM_OK);
    }
    assert_int_equal(cudaDeviceSynchronize(), cudaSuccess);
    assert_int_equal(cudaMemcpy(o2, dout, 4 * T * H, cudaMemcpyDeviceToHost), cudaSuccess);
    assert_int_equal(cudaMemcpy(o4, dout2, 4 * T * H, cudaMemcpyDeviceToHost), cudaSuccess);
    const int same2 = memcmp(o1, o2, 4 * T * H) == 0 && memcmp(o3, o4, 4 * T * H) == 0;
    printf("graph     two graphs on one workspace, alternated: %s\n", same2 ? "PASS" : "FAIL");
    assert_true(same2);
    mxm_cuda_graph_destroy(g2);
    cudaFree(dx2), cudaFree(dout2);
    free(o3), free(o4);
    mxm_cuda_graph_destroy(g);
    mxm_moe_plan_destroy(plan);
    cudaFree(ws), cudaFree(dx), cudaFree(dl), cudaFree(dout);
    free(x), free(lg), free(o1), free(o2);
    dev_layer_free(&D);
    ref_layer_free(&L);
}

/* The MMA-path cases again with MXM_CUDA_WGMMA=1 (read at every forward): the prefill GEMMs on
 * gemm_wgmma.cu (Hopper wgmma; DeepSeek FP8 too), plus shapes aimed at its tiles; m-tiles of bt
 * tokens (MXM_CUDA_WG_BT, also read at every forward: 128 = 256 weight rows per tile, 256 = 128
 * rows with two token halves per fragment, 64 = 256 rows on m64n64k16). */
static void wgmma_cases(void **state, const char *bt) {
    setenv("MXM_CUDA_WGMMA", "1", 1);
    setenv("MXM_CUDA_WG_BT", bt, 1);
    printf("wgmma, m-tiles of %s tokens\n", bt);
    run_modes("wg-mode", 0);
    for (int lay = 0; lay < 3; lay++) {
        mxm_moe_config c = cfg_of(128, 96, 6, 2, MXM_ACT_SWIGLUOAI);
        c.w13_layout = lay;
        compare("wg-layout", c, 200, 0, 0, 0);
    }
    mxm_moe_config c = cfg_of(96, 64, 8, 2, MXM_ACT_RELU2_NO_MUL);
    c.shared_intermediate_size = 192;
    compare("wg-shared", c, 150, 0, 0, 0);
    c.shared_activation = MXM_ACT_SILU;
    compare("wg-shared", c, 150, 0, 0, 0);
    /* Several n-tiles with partial last ones (gated I = 320: 128-column tiles; H = 416:
     * 256-row GEMM2 tiles), groups over several 128-row m-tiles, a shared expert of another
     * gating and I (both GEMM1 kernels), every layout; then a production-like shape. */
    for (int lay = 0; lay < 3; lay++) {
        mxm_moe_config d = cfg_of(416, 320, 8, 2, MXM_ACT_SILU);
        d.w13_layout = lay, d.shared_intermediate_size = 192, d.shared_activation = MXM_ACT_RELU2_NO_MUL;
        compare("wg-tiles", d, 1200, 1, 0, 0);
    }
    if (!quick) {
        mxm_moe_config d = cfg_of(2688, 1856, 16, 6, MXM_ACT_SILU);
        compare("wg-big", d, 400, 1, 1, 0);
    }
    shapes_min_T = 1000;
    test_shapes_routing(state);
    shapes_min_T = 0;
    test_group_sizes(state);
    test_integer_exact(state); /* T = 400: exact against the float64 reference */
    test_nan_propagation(state); /* T = 300: the epilogue's NaN blocks on wgmma */
    test_expert_parallel(state);
    test_graph_replay(state);
}

static void test_wgmma(void **state) {
    wgmma_cases(state, "128");
    test_fp8_block(state); /* DeepSeek FP8 on its own wgmma tiles (128 x 128, any MXM_CUDA_WG_BT) */
    setenv("MXM_CUDA_WGMMA", "0", 1);
    unsetenv("MXM_CUDA_WG_BT");
}

/* wgmma_cases on m-tiles of bt tokens, then groups of counts[e] rows (16 experts) and one expert
 * taking each of one[0..2] tokens (the first two gated, I = 224; the third plain, I = 96). */
static void wgmma_tile_cases(void **state, const char *bt, const int counts[16], const int one[3]) {
    wgmma_cases(state, bt);
    compare_group_counts("wg-groups", counts);
    mxm_moe_config c = cfg_of(288, 224, 4, 1, MXM_ACT_SILU);
    for (int i = 0; i < 3; i++) {
        static int forced[4]; /* static: a failed compare leaves forced_counts set */
        memset(forced, 0, sizeof forced);
        forced[(i + 1) % 4] = one[i];
        if (i == 2) c.intermediate_size = 96, c.activation = MXM_ACT_RELU2_NO_MUL;
        forced_counts = forced;
        compare("wg-one-exp", c, one[i], 0, 0, 0);
    }
    forced_counts = NULL;
    setenv("MXM_CUDA_WGMMA", "0", 1);
    unsetenv("MXM_CUDA_WG_BT");
}

/* The 256-token m-tiles: groups on both sides of 128, 256 and 512 rows. */
static void test_wgmma256(void **state) {
    static const int counts[16] = {0,   1,   33,  64,  127, 128, 129, 200,
                                   255, 256, 257, 301, 383, 384, 511, 513};
    static const int one[3] = {256, 257, 513};
    wgmma_tile_cases(state, "256", counts, one);
}

/* The 64-token m-tiles (m64n64k16; wgmma_cases' test_group_sizes has groups of 33, 63, 64, 65,
 * 128 and 129 rows): groups up to several 64-row tiles. */
static void test_wgmma64(void **state) {
    static const int counts[16] = {0,  1,  34,  48,  62,  63,  64,  65,
                                   66, 96, 127, 128, 130, 191, 192, 193};
    static const int one[3] = {64, 65, 191};
    wgmma_tile_cases(state, "64", counts, one);
}

int main(void) {
    if (!mxm_cuda_available()) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    quick = getenv("MXM_TEST_QUICK") != NULL;
    printf("device: %s\n", mxm_device_name());
    /* The cases before test_wgmma run the prefill GEMMs on the mma.sync tiles; test_wgmma runs
     * them again on wgmma. The default picks one of the two by rows per expert. */
    setenv("MXM_CUDA_WGMMA", "0", 1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e4m3_device),
        cmocka_unit_test(test_modes),
        cmocka_unit_test(test_layouts_and_shared),
        cmocka_unit_test(test_shapes_routing),
        cmocka_unit_test(test_fp8_block),
        cmocka_unit_test(test_prequantized_x),
        cmocka_unit_test(test_nan_propagation),
        cmocka_unit_test(test_group_sizes),
        cmocka_unit_test(test_decode_routing),
        cmocka_unit_test(test_one_token),
        cmocka_unit_test(test_l2_prefetch),
        cmocka_unit_test(test_skinny_persistent),
        cmocka_unit_test(test_tile_stream),
        cmocka_unit_test(test_integer_exact),
        cmocka_unit_test(test_expert_parallel),
        cmocka_unit_test(test_graph_replay),
        cmocka_unit_test(test_wgmma),
        cmocka_unit_test(test_wgmma256),
        cmocka_unit_test(test_wgmma64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
