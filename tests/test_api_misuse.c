/* Misuse of the public API: every function of include/mxmoe.h with NULL where it takes a
 * pointer (an error status, or a harmless no-op for void functions and getters; never a crash),
 * misaligned x / router_logits / routing_bias (valid on the CPU backend: same output as aligned),
 * and the values the forward rejects (duplicate given ids, scaling <= 0, NaN SwiGLU limits,
 * negative thread counts). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_ref.h"
#include "mxmoe.h"
#include "testutil.h"

static void test_null_pointers(void **state) {
    (void)state;
    mxm_moe_config_default(NULL);
    mxm_layer_options_default(NULL);
    assert_int_equal(mxm_moe_config_validate(NULL), MXM_ERR_NULL);
    mxm_moe_config c;
    mxm_moe_config_default(&c);
    c.hidden_size = 64, c.intermediate_size = 64, c.num_experts = 4, c.top_k = 2;
    mxm_moe_plan *plan = NULL;
    assert_int_equal(mxm_moe_plan_create(NULL, 4, &plan), MXM_ERR_NULL);
    assert_int_equal(mxm_moe_plan_create(&c, 4, NULL), MXM_ERR_NULL);
    mxm_moe_plan_destroy(NULL);
    assert_true(mxm_moe_plan_workspace_size(NULL) <= 0);
    assert_non_null(mxm_moe_plan_kernels(NULL));
    assert_int_equal(mxm_moe_forward(NULL, NULL, NULL, NULL, NULL, 0, NULL), MXM_ERR_NULL);
    assert_int_equal(mxm_moe_plan_create(&c, 4, &plan), MXM_OK);
    assert_int_equal(mxm_moe_forward(plan, NULL, NULL, NULL, NULL, 0, NULL), MXM_ERR_NULL);
    mxm_moe_plan_destroy(plan);
    float f[64] = {0};
    int32_t ids[8];
    assert_int_equal(mxm_route(NULL, 1, f, MXM_DT_F32, NULL, MXM_DT_F32, ids, f), MXM_ERR_NULL);
    assert_int_equal(mxm_route(&c, 1, NULL, MXM_DT_F32, NULL, MXM_DT_F32, ids, f), MXM_ERR_NULL);
    assert_int_equal(mxm_route(&c, 1, f, MXM_DT_F32, NULL, MXM_DT_F32, NULL, f), MXM_ERR_NULL);
    assert_int_equal(mxm_route(&c, 1, f, MXM_DT_F32, NULL, MXM_DT_F32, ids, NULL), MXM_ERR_NULL);
    uint8_t q[64], s[8];
    float fs[8];
    assert_int_equal(mxm_mxfp8_quantize(NULL, MXM_DT_F32, 1, 32, 0, q, s, 0, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_mxfp8_quantize(f, MXM_DT_F32, 1, 32, 0, NULL, s, 0, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_mxfp8_quantize(f, MXM_DT_F32, 1, 32, 0, q, NULL, 0, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_mxfp8_dequantize(NULL, s, 1, 32, f, MXM_DT_F32, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_mxfp8_dequantize(q, NULL, 1, 32, f, MXM_DT_F32, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_mxfp8_dequantize(q, s, 1, 32, NULL, MXM_DT_F32, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_fp8block_quantize_act(NULL, MXM_DT_F32, 1, 128, q, fs, 0, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_fp8block_quantize_weight(NULL, MXM_DT_F32, 1, 128, q, fs, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_fp8block_dequantize(NULL, fs, 1, 128, 128, 0, f, MXM_DT_F32, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_activation_from_name(NULL), -1);
    assert_int_equal(mxm_routing_method_from_name(NULL), -1);
    assert_non_null(mxm_status_str(12345));
    mxm_model *m = (mxm_model *)0x1;
    assert_int_equal(mxm_model_open(NULL, &m), MXM_ERR_NULL);
    assert_int_equal(mxm_model_open("/nonexistent", NULL), MXM_ERR_NULL);
    mxm_model_close(NULL);
    assert_non_null(mxm_model_family(NULL));
    assert_int_equal(mxm_model_weight_format(NULL), -1);
    assert_int_equal(mxm_model_moe_layer_count(NULL), 0);
    assert_int_equal(mxm_model_moe_layer(NULL, 0), -1);
    assert_int_equal(mxm_model_tensor_count(NULL), 0);
    assert_int_equal(mxm_model_tensor_info(NULL, 0, NULL, NULL, NULL, NULL), MXM_ERR_NULL);
    assert_int_equal(mxm_model_tensor_find(NULL, "x"), -1);
    assert_true(mxm_model_tensor_data(NULL, 0, NULL, NULL) != MXM_OK);
    assert_int_equal(mxm_safetensors_write(NULL, NULL, 0), MXM_ERR_NULL);
    assert_int_equal(mxm_safetensors_write("/tmp/mxm_never_written.safetensors", NULL, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_safetensors_write("/tmp/mxm_never_written.safetensors", NULL, -1), MXM_ERR_INVALID_ARG);
    mxm_tensor_out t = {NULL, "F32", 1, {1}, f};
    assert_int_equal(mxm_safetensors_write("/tmp/mxm_never_written.safetensors", &t, 1), MXM_ERR_NULL);
    t = (mxm_tensor_out){"a", NULL, 1, {1}, f};
    assert_true(mxm_safetensors_write("/tmp/mxm_never_written.safetensors", &t, 1) != MXM_OK);
    t = (mxm_tensor_out){"a", "F32", 1, {1}, NULL};
    assert_int_equal(mxm_safetensors_write("/tmp/mxm_never_written.safetensors", &t, 1), MXM_ERR_NULL);
    mxm_layer *l = (mxm_layer *)0x1;
    assert_int_equal(mxm_layer_load(NULL, 0, NULL, &l), MXM_ERR_NULL);
    mxm_layer_free(NULL);
    assert_null(mxm_layer_config(NULL));
    assert_null(mxm_layer_weights(NULL));
    assert_null(mxm_layer_routing_bias(NULL));
    assert_int_equal(mxm_layer_weight_bytes(NULL), 0);
    assert_int_equal(mxm_layer_router_logits(NULL, f, MXM_DT_F32, 1, f, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_checkpoint_quantize(NULL, "/tmp/x", 0, 0, NULL, NULL), MXM_ERR_NULL);
    assert_true(mxm_device_alloc(16, NULL) != MXM_OK);
    mxm_device_free(NULL);
    assert_true(mxm_copy_to_device(NULL, f, 4) != MXM_OK);
    assert_true(mxm_copy_to_host(f, NULL, 4) != MXM_OK);
    assert_true(mxm_cuda_graph_capture(NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL) != MXM_OK);
    assert_true(mxm_cuda_graph_launch(NULL) != MXM_OK);
    mxm_cuda_graph_destroy(NULL);
    assert_non_null(mxm_device_name());
    mxm_set_log_callback(NULL, NULL, 0);
}

static mxm_moe_config cfg_small(void) {
    mxm_moe_config c;
    mxm_moe_config_default(&c);
    c.hidden_size = 64, c.intermediate_size = 96, c.num_experts = 8, c.top_k = 2, c.num_threads = 2;
    c.routing_method = MXM_ROUTE_DEEPSEEK_V3, c.routed_scaling_factor = 2.5f;
    return c;
}

/* x bf16 at an odd address, logits and bias f32 at addresses that are 2 mod 4: the output is
 * the aligned run's, bit for bit (UBSan in the sanitizer build checks the loads). */
static void test_misaligned_inputs(void **state) {
    (void)state;
    const int64_t T = 5, H = 64, E = 8;
    tu_rng r = tu_rng_fresh();
    mxm_moe_config c = cfg_small();
    ref_layer L;
    ref_layer_init(&L, &c, tu_next(&r), 0);
    mxm_moe_weights mw = ref_layer_weights(&L);
    mxm_moe_plan *plan;
    assert_int_equal(mxm_moe_plan_create(&c, T, &plan), MXM_OK);
    const int64_t wsb = mxm_moe_plan_workspace_size(plan);
    void *ws = aligned_alloc(64, (size_t)wsb);
    float *xf = tu_alloc(4 * T * H), *lg = tu_alloc(4 * T * E), *bias = tu_alloc(4 * E);
    tu_fill_normal_f32(&r, xf, T * H, 1);
    tu_fill_normal_f32(&r, lg, T * E, 1);
    tu_fill_normal_f32(&r, bias, E, 0.1f);
    uint16_t *xb = tu_alloc(2 * T * H);
    for (int64_t i = 0; i < T * H; i++) xb[i] = mxm_bf16_from_f32(xf[i]);
    char *raw = malloc((size_t)(2 * T * H + 4 * T * E + 4 * E + 64));
    char *xm = raw + 1, *lm = raw + 2 * T * H + 8 + 2, *bm = lm + 4 * T * E + 4;
    memcpy(xm, xb, (size_t)(2 * T * H)), memcpy(lm, lg, (size_t)(4 * T * E)), memcpy(bm, bias, (size_t)(4 * E));
    float *out_a = tu_alloc(4 * T * H), *out_m = tu_alloc(4 * T * H);
    mxm_moe_inputs in = {.num_tokens = T, .x = xb, .x_dtype = MXM_DT_BF16, .router_logits = lg,
                         .logits_dtype = MXM_DT_F32, .routing_bias = bias, .bias_dtype = MXM_DT_F32};
    mxm_moe_outputs o = {.out = out_a, .out_dtype = MXM_DT_F32};
    assert_int_equal(mxm_moe_forward(plan, &mw, &in, &o, ws, wsb, NULL), MXM_OK);
    in.x = xm, in.router_logits = lm, in.routing_bias = bm, o.out = out_m;
    assert_int_equal(mxm_moe_forward(plan, &mw, &in, &o, ws, wsb, NULL), MXM_OK);
    assert_memory_equal(out_a, out_m, (size_t)(4 * T * H));
    /* the router alone, too */
    int32_t ids_a[10], ids_m[10];
    float w_a[10], w_m[10];
    assert_int_equal(mxm_route(&c, T, lg, MXM_DT_F32, bias, MXM_DT_F32, ids_a, w_a), MXM_OK);
    assert_int_equal(mxm_route(&c, T, lm, MXM_DT_F32, bm, MXM_DT_F32, ids_m, w_m), MXM_OK);
    assert_memory_equal(ids_a, ids_m, sizeof ids_a);
    assert_memory_equal(w_a, w_m, sizeof w_a);
    free(raw), free(xf), free(lg), free(bias), free(xb), free(out_a), free(out_m), free(ws);
    mxm_moe_plan_destroy(plan);
    ref_layer_free(&L);
}

/* mxm_layer_router_logits on a fixture layer: bf16 x at an odd address gives the aligned
 * logits; a negative thread count in the layer options is rejected. */
static void test_router_logits_misaligned(void **state) {
    (void)state;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/tests/data/qwen3_moe_tiny", MXM_SOURCE_DIR);
    mxm_model *m;
    assert_int_equal(mxm_model_open(dir, &m), MXM_OK);
    mxm_layer_options lo;
    mxm_layer_options_default(&lo);
    mxm_layer *l = NULL;
    lo.num_threads = -1;
    assert_int_equal(mxm_layer_load(m, mxm_model_moe_layer(m, 0), &lo, &l), MXM_ERR_INVALID_ARG);
    lo.num_threads = 1;
    assert_int_equal(mxm_layer_load(m, mxm_model_moe_layer(m, 0), &lo, &l), MXM_OK);
    const mxm_moe_config *c = mxm_layer_config(l);
    const int64_t T = 3, H = c->hidden_size, E = c->num_experts;
    tu_rng r = tu_rng_fresh();
    float *xf = tu_alloc(4 * T * H), *la = tu_alloc(4 * T * E), *lm = tu_alloc(4 * T * E);
    tu_fill_normal_f32(&r, xf, T * H, 1);
    uint16_t *xb = tu_alloc(2 * T * H);
    for (int64_t i = 0; i < T * H; i++) xb[i] = mxm_bf16_from_f32(xf[i]);
    char *raw = malloc((size_t)(2 * T * H + 2));
    memcpy(raw + 1, xb, (size_t)(2 * T * H));
    assert_int_equal(mxm_layer_router_logits(l, xb, MXM_DT_BF16, T, la, 1), MXM_OK);
    assert_int_equal(mxm_layer_router_logits(l, raw + 1, MXM_DT_BF16, T, lm, 1), MXM_OK);
    assert_memory_equal(la, lm, (size_t)(4 * T * E));
    free(raw), free(xf), free(xb), free(la), free(lm);
    mxm_layer_free(l);
    mxm_model_close(m);
}

static void test_rejected_values(void **state) {
    (void)state;
    const int64_t T = 4, H = 64;
    tu_rng r = tu_rng_fresh();
    mxm_moe_config c = cfg_small();
    mxm_moe_plan *plan = NULL;
    /* scaling factor: negative, zero, NaN; thread counts below 0 */
    const float bad_scale[3] = {-2.5f, 0.0f, NAN};
    for (int i = 0; i < 3; i++) {
        c.routed_scaling_factor = bad_scale[i];
        assert_int_equal(mxm_moe_plan_create(&c, T, &plan), MXM_ERR_INVALID_ARG);
        assert_non_null(strstr(mxm_last_error(), "routed_scaling_factor"));
    }
    c = cfg_small(), c.num_threads = -3;
    assert_int_equal(mxm_moe_plan_create(&c, T, &plan), MXM_ERR_INVALID_ARG);
    c = cfg_small(), c.activation = MXM_ACT_SWIGLUOAI, c.swiglu_limit = NAN;
    assert_int_equal(mxm_moe_plan_create(&c, T, &plan), MXM_ERR_INVALID_ARG);
    /* duplicate expert ids in caller-given ids; per-expert NaN clamp limit */
    c = cfg_small(), c.activation = MXM_ACT_SWIGLUOAI;
    ref_layer L;
    ref_layer_init(&L, &c, tu_next(&r), 0);
    mxm_moe_weights mw = ref_layer_weights(&L);
    assert_int_equal(mxm_moe_plan_create(&c, T, &plan), MXM_OK);
    const int64_t wsb = mxm_moe_plan_workspace_size(plan);
    void *ws = aligned_alloc(64, (size_t)wsb);
    float *x = tu_alloc(4 * T * H), *out = tu_alloc(4 * T * H), w[8] = {.5f, .5f, .5f, .5f, .5f, .5f, .5f, .5f};
    tu_fill_normal_f32(&r, x, T * H, 1);
    int32_t ids[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    mxm_moe_inputs in = {.num_tokens = T, .x = x, .x_dtype = MXM_DT_F32, .topk_ids = ids, .topk_weights = w};
    mxm_moe_outputs o = {.out = out, .out_dtype = MXM_DT_F32};
    assert_int_equal(mxm_moe_forward(plan, &mw, &in, &o, ws, wsb, NULL), MXM_OK);
    ids[5] = 4;
    assert_int_equal(mxm_moe_forward(plan, &mw, &in, &o, ws, wsb, NULL), MXM_ERR_INVALID_ARG);
    assert_non_null(strstr(mxm_last_error(), "twice"));
    ids[5] = 5;
    float lim[8] = {7, 7, 7, 7, 7, 7, 7, 7};
    lim[3] = NAN;
    mw.gemm1_clamp_limit = lim;
    assert_int_equal(mxm_moe_forward(plan, &mw, &in, &o, ws, wsb, NULL), MXM_ERR_INVALID_ARG);
    assert_non_null(strstr(mxm_last_error(), "gemm1_clamp_limit[3]"));
    lim[3] = 7;
    assert_int_equal(mxm_moe_forward(plan, &mw, &in, &o, ws, wsb, NULL), MXM_OK);
    free(x), free(out), free(ws);
    mxm_moe_plan_destroy(plan);
    ref_layer_free(&L);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_null_pointers), cmocka_unit_test(test_misaligned_inputs),
                                       cmocka_unit_test(test_rejected_values),
                                       cmocka_unit_test(test_router_logits_misaligned)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
