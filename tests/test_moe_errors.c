/* Bad input to the MoE API: every case returns the right status and a message, never a crash.
 * Also: NaN inputs propagate as NaN; pre-quantized and bf16 inputs/outputs; the router path. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_ref.h"
#include "mxmoe.h"
#include "testutil.h"

static mxm_moe_config small_cfg(void) {
    mxm_moe_config c;
    mxm_moe_config_default(&c);
    c.hidden_size = 64, c.intermediate_size = 96, c.num_experts = 8, c.top_k = 2;
    c.activation = MXM_ACT_SILU, c.num_threads = 2;
    return c;
}

static void expect_plan_error(mxm_moe_config c, mxm_status want, const char *needle) {
    mxm_moe_plan *p = (mxm_moe_plan *)0x1;
    const mxm_status st = mxm_moe_plan_create(&c, 16, &p);
    if (st != want) fprintf(stderr, "got %d (%s), want %d\n", st, mxm_last_error(), want);
    assert_int_equal(st, want);
    assert_null(p);
    assert_true(strlen(mxm_last_error()) > 0);
    if (needle && !strstr(mxm_last_error(), needle)) fprintf(stderr, "message '%s' lacks '%s'\n", mxm_last_error(), needle);
    if (needle) assert_non_null(strstr(mxm_last_error(), needle));
}

static void test_config_errors(void **state) {
    (void)state;
    mxm_moe_config c = small_cfg();
    c.hidden_size = 48;
    expect_plan_error(c, MXM_ERR_SHAPE, "hidden_size=48");
    c = small_cfg(), c.hidden_size = (1 << 24) + 32;
    expect_plan_error(c, MXM_ERR_SHAPE, "hidden_size");
    c = small_cfg(), c.intermediate_size = 100;
    expect_plan_error(c, MXM_ERR_SHAPE, "intermediate_size=100");
    c = small_cfg(), c.top_k = 9;
    expect_plan_error(c, MXM_ERR_SHAPE, NULL);
    c = small_cfg(), c.top_k = 0;
    expect_plan_error(c, MXM_ERR_SHAPE, NULL);
    c = small_cfg(), c.routing_method = MXM_ROUTE_DEEPSEEK_V3, c.n_group = 3, c.topk_group = 2;
    expect_plan_error(c, MXM_ERR_SHAPE, NULL);
    c = small_cfg(), c.routing_method = MXM_ROUTE_DEEPSEEK_V3, c.n_group = 4, c.topk_group = 5;
    expect_plan_error(c, MXM_ERR_INVALID_ARG, "topk_group=5");
    c = small_cfg(), c.activation = 42;
    expect_plan_error(c, MXM_ERR_INVALID_ARG, "relu2_no_mul");
    c = small_cfg(), c.routing_method = 10;
    expect_plan_error(c, MXM_ERR_INVALID_ARG, NULL);
    c = small_cfg(), c.weight_format = -1;
    expect_plan_error(c, MXM_ERR_INVALID_ARG, "fp8_block");
    c = small_cfg(), c.act_quant = 2;
    expect_plan_error(c, MXM_ERR_INVALID_ARG, NULL);
    c = small_cfg(), c.profile = 7;
    expect_plan_error(c, MXM_ERR_INVALID_ARG, NULL);
    c = small_cfg(), c.local_expert_offset = 6, c.local_num_experts = 3;
    expect_plan_error(c, MXM_ERR_SHAPE, NULL);
    c = small_cfg(), c.routing_method = MXM_ROUTE_LLAMA4;
    expect_plan_error(c, MXM_ERR_UNSUPPORTED, "llama4");
    c = small_cfg();
    mxm_moe_plan *p;
    assert_int_equal(mxm_moe_plan_create(&c, 0, &p), MXM_ERR_SHAPE);
    assert_int_equal(mxm_moe_plan_create(NULL, 4, &p), MXM_ERR_NULL);
    assert_int_equal(mxm_moe_plan_create(&c, 4, NULL), MXM_ERR_NULL);
    /* a workspace whose byte count overflows int64 */
    c.hidden_size = 1 << 24, c.intermediate_size = 1 << 24, c.num_experts = c.top_k = 1 << 30;
    assert_int_equal(mxm_moe_plan_create(&c, (int64_t)1 << 40, &p), MXM_ERR_OVERFLOW);
    assert_null(p);
}

typedef struct fixture {
    ref_layer L;
    mxm_moe_plan *plan;
    void *ws;
    int64_t wsb;
    float *x, *w, *out;
    int32_t *ids;
    mxm_moe_inputs in;
    mxm_moe_outputs o;
    mxm_moe_weights mw;
} fixture;

static void fx_init(fixture *f, int64_t T) {
    tu_rng r = tu_rng_fresh();
    mxm_moe_config c = small_cfg();
    ref_layer_init(&f->L, &c, tu_next(&r), 0);
    assert_int_equal(mxm_moe_plan_create(&c, T, &f->plan), MXM_OK);
    f->wsb = mxm_moe_plan_workspace_size(f->plan);
    f->ws = aligned_alloc(64, f->wsb);
    f->x = tu_alloc(4 * T * 64), f->out = tu_alloc(4 * T * 64), f->w = tu_alloc(4 * T * 2);
    f->ids = tu_alloc(4 * T * 2);
    tu_fill_normal_f32(&r, f->x, T * 64, 1);
    for (int64_t i = 0; i < T * 2; i++) f->ids[i] = (int32_t)((i * 3 + i / 2) % 8), f->w[i] = 0.5f;
    f->in = (mxm_moe_inputs){.num_tokens = T, .x = f->x, .x_dtype = MXM_DT_F32, .topk_ids = f->ids, .topk_weights = f->w};
    f->o = (mxm_moe_outputs){.out = f->out, .out_dtype = MXM_DT_F32};
    f->mw = ref_layer_weights(&f->L);
}

static void fx_free(fixture *f) {
    free(f->ws), free(f->x), free(f->out), free(f->w), free(f->ids);
    mxm_moe_plan_destroy(f->plan);
    ref_layer_free(&f->L);
}

static mxm_status fwd(fixture *f) { return mxm_moe_forward(f->plan, &f->mw, &f->in, &f->o, f->ws, f->wsb, NULL); }

static void test_forward_errors(void **state) {
    (void)state;
    fixture f;
    fx_init(&f, 8);
    assert_int_equal(fwd(&f), MXM_OK);
    assert_int_equal(mxm_moe_forward(f.plan, &f.mw, &f.in, &f.o, f.ws, f.wsb - 64, NULL), MXM_ERR_WORKSPACE);
    assert_int_equal(mxm_moe_forward(f.plan, &f.mw, &f.in, &f.o, (char *)f.ws + 8, f.wsb, NULL), MXM_ERR_INVALID_ARG);
    assert_int_equal(mxm_moe_forward(NULL, &f.mw, &f.in, &f.o, f.ws, f.wsb, NULL), MXM_ERR_NULL);
    assert_int_equal(mxm_moe_forward(f.plan, NULL, &f.in, &f.o, f.ws, f.wsb, NULL), MXM_ERR_NULL);
    f.in.num_tokens = 9;
    assert_int_equal(fwd(&f), MXM_ERR_SHAPE);
    f.in.num_tokens = 8;
    f.in.x_dtype = MXM_DT_I32;
    assert_int_equal(fwd(&f), MXM_ERR_DTYPE);
    f.in.x_dtype = MXM_DT_F32;
    f.in.x = NULL;
    assert_int_equal(fwd(&f), MXM_ERR_NULL);
    f.in.x = f.x;
    f.in.topk_ids = NULL;
    assert_int_equal(fwd(&f), MXM_ERR_NULL);
    f.in.topk_ids = f.ids;
    f.ids[5] = 8; /* out of range */
    assert_int_equal(fwd(&f), MXM_ERR_INVALID_ARG);
    assert_non_null(strstr(mxm_last_error(), "topk_ids[5]"));
    f.ids[5] = -1;
    assert_int_equal(fwd(&f), MXM_ERR_INVALID_ARG);
    f.ids[5] = 1;
    f.o.out_dtype = MXM_DT_E4M3;
    assert_int_equal(fwd(&f), MXM_ERR_DTYPE);
    f.o.out_dtype = MXM_DT_F32;
    mxm_expert_weights bad = f.L.experts[3];
    f.L.experts[3].w2_scale = NULL;
    assert_int_equal(fwd(&f), MXM_ERR_NULL);
    assert_non_null(strstr(mxm_last_error(), "local expert 3"));
    f.L.experts[3] = bad;
    f.in.num_tokens = 0;
    assert_int_equal(fwd(&f), MXM_OK);
    fx_free(&f);
}

/* NaN in one token's input poisons that token's output (its blocks quantize to NaN), and only
 * that token; Inf too. Nothing crashes or hangs. */
static void test_nan_inputs(void **state) {
    (void)state;
    fixture f;
    fx_init(&f, 6);
    f.x[2 * 64 + 17] = NAN;
    f.x[4 * 64 + 3] = INFINITY;
    tu_poison_f32(f.out, 6 * 64);
    for (int aq = 0; aq < 2; aq++) {
        mxm_moe_config c = small_cfg();
        c.act_quant = aq;
        mxm_moe_plan *p;
        assert_int_equal(mxm_moe_plan_create(&c, 6, &p), MXM_OK);
        for (int i = 0; i < 6 * 64; i++) f.out[i] = 12345.0f;
        assert_int_equal(mxm_moe_forward(p, &f.mw, &f.in, &f.o, f.ws, f.wsb, NULL), MXM_OK);
        for (int t = 0; t < 6; t++) {
            int nans = 0;
            for (int i = 0; i < 64; i++) nans += isnan(f.out[t * 64 + i]);
            if (t == 2 || t == 4) assert_true(nans > 0);
            else assert_int_equal(nans, 0);
        }
        mxm_moe_plan_destroy(p);
    }
    fx_free(&f);
}

/* A NaN weight code (E4M3 0x7F) in one expert poisons the outputs of exactly the tokens routed
 * to it, on the decode (GEMV) and the prefill (GEMM) kernels, W8A8 and weight-only, with every
 * kernel set (MXM_KERNELS; a set the CPU cannot run falls back to the best one). */
static void test_nan_weights(void **state) {
    (void)state;
    static const char *const sets[] = {"ref", "avx2", "avx512", "amx"};
    for (int k = 0; k < 4; k++)
        for (int64_t T = 1; T <= 64; T += 63) {
            setenv("MXM_KERNELS", sets[k], 1);
            fixture f;
            fx_init(&f, T);
            /* token 0's first expert: W13 row 2 (a gate row), column 9 */
            const int32_t e = f.ids[0];
            ((uint8_t *)f.L.w13[e])[2 * 64 + 9] = 0x7F;
            for (int aq = 0; aq < 2; aq++) {
                mxm_moe_config c = small_cfg();
                c.act_quant = aq;
                mxm_moe_plan *p;
                assert_int_equal(mxm_moe_plan_create(&c, T, &p), MXM_OK);
                tu_poison_f32(f.out, T * 64);
                assert_int_equal(mxm_moe_forward(p, &f.mw, &f.in, &f.o, f.ws, f.wsb, NULL), MXM_OK);
                int poisoned = 0;
                for (int64_t t = 0; t < T; t++) {
                    const int hit = f.ids[2 * t] == e || f.ids[2 * t + 1] == e;
                    int nans = 0;
                    for (int i = 0; i < 64; i++)
                        nans += isnan(f.out[t * 64 + i]);
                    assert_int_equal(nans, hit ? 64 : 0);
                    poisoned += hit;
                }
                assert_true(poisoned > 0);
                mxm_moe_plan_destroy(p);
            }
            fx_free(&f);
            unsetenv("MXM_KERNELS");
        }
}

/* bf16 x and bf16 out, and pre-quantized MXFP8 x, against the f32 path. */
static void test_input_output_dtypes(void **state) {
    (void)state;
    fixture f;
    const int64_t T = 5, H = 64;
    fx_init(&f, T);
    for (int64_t i = 0; i < T * H; i++) f.x[i] = mxm_bf16_to_f32(mxm_bf16_from_f32(f.x[i])); /* bf16-exact */
    assert_int_equal(fwd(&f), MXM_OK);
    float *ref = tu_alloc(4 * T * H);
    memcpy(ref, f.out, 4 * T * H);
    uint16_t *xb = tu_alloc(2 * T * H), *ob = tu_alloc(2 * T * H);
    for (int64_t i = 0; i < T * H; i++) xb[i] = mxm_bf16_from_f32(f.x[i]);
    f.in.x = xb, f.in.x_dtype = MXM_DT_BF16;
    f.o.out = ob, f.o.out_dtype = MXM_DT_BF16;
    assert_int_equal(fwd(&f), MXM_OK);
    for (int64_t i = 0; i < T * H; i++) assert_true(ob[i] == mxm_bf16_from_f32(ref[i]));
    uint8_t *q = tu_alloc(T * H), *s = tu_alloc(T * H / 32);
    assert_int_equal(mxm_mxfp8_quantize(f.x, MXM_DT_F32, T, H, 0, q, s, MXM_SCALE_RCEIL, 1), MXM_OK);
    f.in.x = q, f.in.x_dtype = MXM_DT_E4M3, f.in.x_scale = s;
    f.o.out = f.out, f.o.out_dtype = MXM_DT_F32;
    assert_int_equal(fwd(&f), MXM_OK);
    for (int64_t i = 0; i < T * H; i++) assert_true(f.out[i] == ref[i]);
    /* Weight-only: the codes are dequantized; the same as passing the decoded values as f32. */
    mxm_moe_config cw = small_cfg();
    cw.act_quant = MXM_ACT_QUANT_NONE;
    mxm_moe_plan *pw;
    assert_int_equal(mxm_moe_plan_create(&cw, T, &pw), MXM_OK);
    const int64_t wsw = mxm_moe_plan_workspace_size(pw);
    void *ws2 = aligned_alloc(64, wsw);
    float *xd = tu_alloc(4 * T * H), *o_dq = tu_alloc(4 * T * H);
    assert_int_equal(mxm_mxfp8_dequantize(q, s, T, H, xd, MXM_DT_F32, 1), MXM_OK);
    f.o.out = o_dq;
    assert_int_equal(mxm_moe_forward(pw, &f.mw, &f.in, &f.o, ws2, wsw, NULL), MXM_OK);
    mxm_moe_inputs in_f = f.in;
    in_f.x = xd, in_f.x_dtype = MXM_DT_F32, in_f.x_scale = NULL;
    f.o.out = f.out;
    tu_poison_f32(f.out, T * H);
    assert_int_equal(mxm_moe_forward(pw, &f.mw, &in_f, &f.o, ws2, wsw, NULL), MXM_OK);
    for (int64_t i = 0; i < T * H; i++) assert_true(f.out[i] == o_dq[i]);
    free(ws2), free(xd), free(o_dq);
    mxm_moe_plan_destroy(pw);
    f.in.x_scale = NULL;
    assert_int_equal(fwd(&f), MXM_ERR_NULL);
    free(ref), free(xb), free(ob), free(q), free(s);
    fx_free(&f);
}

/* Routing inside the forward equals mxm_route + precomputed ids. */
static void test_router_path(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    mxm_moe_config c = small_cfg();
    c.num_experts = 16, c.top_k = 4, c.routing_method = MXM_ROUTE_DEEPSEEK_V3, c.n_group = 4, c.topk_group = 2;
    c.routed_scaling_factor = 2.5f;
    ref_layer L;
    ref_layer_init(&L, &c, tu_next(&r), 0);
    const int64_t T = 33, H = 64, E = 16, K = 4;
    float *x = tu_alloc(4 * T * H), *lg = tu_alloc(4 * T * E), *bias = tu_alloc(4 * E), *o1 = tu_alloc(4 * T * H),
          *o2 = tu_alloc(4 * T * H), *w = tu_alloc(4 * T * K), *w2 = tu_alloc(4 * T * K);
    int32_t *ids = tu_alloc(4 * T * K), *ids2 = tu_alloc(4 * T * K);
    tu_fill_normal_f32(&r, x, T * H, 1);
    tu_fill_normal_f32(&r, lg, T * E, 2);
    tu_fill_normal_f32(&r, bias, E, 0.1f);
    assert_int_equal(mxm_route(&c, T, lg, MXM_DT_F32, bias, MXM_DT_F32, ids, w), MXM_OK);
    mxm_moe_plan *p;
    assert_int_equal(mxm_moe_plan_create(&c, T, &p), MXM_OK);
    const int64_t wsb = mxm_moe_plan_workspace_size(p);
    void *ws = aligned_alloc(64, wsb);
    mxm_moe_weights mw = ref_layer_weights(&L);
    mxm_moe_inputs in = {.num_tokens = T, .x = x, .x_dtype = MXM_DT_F32, .router_logits = lg,
                         .logits_dtype = MXM_DT_F32, .routing_bias = bias, .bias_dtype = MXM_DT_F32};
    mxm_moe_outputs o = {.out = o1, .out_dtype = MXM_DT_F32, .topk_ids = ids2, .topk_weights = w2};
    assert_int_equal(mxm_moe_forward(p, &mw, &in, &o, ws, wsb, NULL), MXM_OK);
    assert_memory_equal(ids, ids2, 4 * T * K);
    assert_memory_equal(w, w2, 4 * T * K);
    mxm_moe_inputs in2 = {.num_tokens = T, .x = x, .x_dtype = MXM_DT_F32, .topk_ids = ids, .topk_weights = w};
    mxm_moe_outputs oo = {.out = o2, .out_dtype = MXM_DT_F32};
    assert_int_equal(mxm_moe_forward(p, &mw, &in2, &oo, ws, wsb, NULL), MXM_OK);
    assert_memory_equal(o1, o2, 4 * T * H);
    free(x), free(lg), free(bias), free(o1), free(o2), free(w), free(w2), free(ids), free(ids2), free(ws);
    mxm_moe_plan_destroy(p);
    ref_layer_free(&L);
}

/* The weight size helpers agree with what the reference layer allocates per format. */
static void test_weight_bytes(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    for (int k = 0; k < 20; k++) {
        const int64_t rows = 32 * tu_randint(&r, 1, 80), cols = 32 * tu_randint(&r, 1, 80);
        assert_int_equal(mxm_weight_data_bytes(MXM_WFMT_MXFP8, rows, cols), rows * cols);
        assert_int_equal(mxm_weight_scale_bytes(MXM_WFMT_MXFP8, rows, cols), rows * cols / 32);
        assert_int_equal(mxm_weight_data_bytes(MXM_WFMT_FP8_BLOCK, rows, cols), rows * cols);
        int64_t blocks = 0; /* counted, not computed: started 128x128 blocks */
        for (int64_t r0 = 0; r0 < rows; r0 += 128)
            for (int64_t c0 = 0; c0 < cols; c0 += 128) blocks++;
        assert_int_equal(mxm_weight_scale_bytes(MXM_WFMT_FP8_BLOCK, rows, cols), 4 * blocks);
        assert_int_equal(mxm_weight_data_bytes(MXM_WFMT_BF16, rows, cols), 2 * rows * cols);
        assert_int_equal(mxm_weight_data_bytes(MXM_WFMT_F32, rows, cols), 4 * rows * cols);
        assert_int_equal(mxm_weight_scale_bytes(MXM_WFMT_BF16, rows, cols), 0);
    }
    assert_int_equal(mxm_weight_data_bytes(7, 32, 32), -1);
    assert_int_equal(mxm_weight_scale_bytes(-1, 32, 32), -1);
    assert_int_equal(mxm_weight_scale_bytes(MXM_WFMT_MXFP8, -32, 32), -1);
    assert_int_equal(mxm_weight_data_bytes(MXM_WFMT_F32, INT64_MAX / 2, 4), -1); /* overflow */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_errors),       cmocka_unit_test(test_forward_errors),
        cmocka_unit_test(test_nan_inputs),          cmocka_unit_test(test_nan_weights),
        cmocka_unit_test(test_input_output_dtypes), cmocka_unit_test(test_router_path),
        cmocka_unit_test(test_weight_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
