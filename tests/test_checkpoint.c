/* Checkpoint families against the fixtures (tests/data, real transformers outputs): routing ids
 * equal, outputs within measured bounds; and broken checkpoints give clean errors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mxmoe.h"
#include "testutil.h"

typedef struct fixture_case {
    const char *dir;
    int32_t act_quant, profile, quantize;
    double tol_y32;    /* bound on rel. L2 error against the fp32 transformers output */
    double min_match;  /* fraction of routing choices equal to the reference */
    const char *ref_dir; /* reference.safetensors from this folder instead (NULL: dir) */
} fixture_case;

static const void *tensor(mxm_model *m, const char *name, int64_t *nbytes) {
    const int64_t i = mxm_model_tensor_find(m, name);
    assert_true(i >= 0);
    const void *d;
    assert_int_equal(mxm_model_tensor_data(m, i, &d, nbytes), MXM_OK);
    return d;
}

/* Runs one fixture folder over T in {1, 7, 64}; returns the worst error against y32. */
static double run_fixture(const fixture_case *fc) {
    char path[4096], refp[4200];
    snprintf(path, sizeof path, "%s", tu_src_path(fc->dir));
    snprintf(refp, sizeof refp, "%s/reference.safetensors", fc->ref_dir ? tu_src_path(fc->ref_dir) : path);
    mxm_model *m, *ref;
    assert_int_equal(mxm_model_open(path, &m), MXM_OK);
    assert_int_equal(mxm_model_open(refp, &ref), MXM_OK);
    assert_true(mxm_model_moe_layer_count(m) == 1);
    mxm_layer_options lo;
    mxm_layer_options_default(&lo);
    if (fc->quantize) lo.weight_format = MXM_WFMT_MXFP8;
    lo.profile = fc->profile;
    mxm_layer *l;
    const mxm_status st = mxm_layer_load(m, mxm_model_moe_layer(m, 0), &lo, &l);
    if (st) fprintf(stderr, "%s\n", mxm_last_error());
    assert_int_equal(st, MXM_OK);
    mxm_moe_config cfg = *mxm_layer_config(l);
    cfg.act_quant = fc->act_quant, cfg.profile = fc->profile;
    const int64_t H = cfg.hidden_size, K = cfg.top_k, E = cfg.num_experts;
    double worst = 0;
    const int Ts[] = {1, 7, 64};
    for (int ti = 0; ti < 3; ti++) {
        const int64_t T = Ts[ti];
        char nm[64];
        int64_t nb;
        snprintf(nm, sizeof nm, "x_%lld", (long long)T);
        const void *xraw = tensor(ref, nm, &nb);
        assert_int_equal(nb, T * H * 2);
        uint16_t *x = tu_alloc(nb);
        memcpy(x, xraw, nb);
        float *logits = tu_alloc(4 * T * E), *out = tu_alloc(4 * T * H), *w = tu_alloc(4 * T * K);
        int32_t *ids = tu_alloc(4 * T * K);
        tu_poison_f32(out, T * H);
        assert_int_equal(mxm_layer_router_logits(l, x, MXM_DT_BF16, T, logits, 0), MXM_OK);
        mxm_moe_plan *plan;
        assert_int_equal(mxm_moe_plan_create(&cfg, T, &plan), MXM_OK);
        const int64_t wsb = mxm_moe_plan_workspace_size(plan);
        void *ws = aligned_alloc(64, wsb);
        mxm_moe_inputs in = {.num_tokens = T, .x = x, .x_dtype = MXM_DT_BF16, .router_logits = logits,
                             .logits_dtype = MXM_DT_F32, .routing_bias = mxm_layer_routing_bias(l),
                             .bias_dtype = MXM_DT_F32};
        mxm_moe_outputs o = {.out = out, .out_dtype = MXM_DT_F32, .topk_ids = ids, .topk_weights = w};
        assert_int_equal(mxm_moe_forward(plan, mxm_layer_weights(l), &in, &o, ws, wsb, NULL), MXM_OK);
        /* routing: the same experts per token (as sets) */
        snprintf(nm, sizeof nm, "topk_ids_%lld", (long long)T);
        const void *rid = tensor(ref, nm, &nb);
        int64_t hit = 0;
        for (int64_t t = 0; t < T; t++)
            for (int64_t a = 0; a < K; a++) {
                int32_t r;
                memcpy(&r, (const char *)rid + 4 * (t * K + a), 4);
                for (int64_t b = 0; b < K; b++) hit += ids[t * K + b] == r;
            }
        const double match = (double)hit / (T * K);
        /* output against the fp32 transformers run */
        snprintf(nm, sizeof nm, "y32_%lld", (long long)T);
        const void *y32 = tensor(ref, nm, &nb);
        double *yd = tu_alloc(8 * T * H);
        for (int64_t i = 0; i < T * H; i++) {
            float f;
            memcpy(&f, (const char *)y32 + 4 * i, 4);
            yd[i] = f;
        }
        const double err = tu_rel_l2_f32(out, yd, T * H);
        printf("fixture %-24s %-5s %-6s%s T=%-3lld ids %5.1f%% err(y32) %.3e (bound %.0e) %s\n", fc->dir,
               fc->act_quant ? "w8" : "w8a8", fc->profile ? "exact" : "trt", fc->quantize ? " quantized" : "",
               (long long)T, 100 * match, err, fc->tol_y32,
               err <= fc->tol_y32 && match >= fc->min_match ? "PASS" : "FAIL");
        assert_true(match >= fc->min_match);
        assert_true(err <= fc->tol_y32);
        if (err > worst) worst = err;
        free(x), free(logits), free(out), free(w), free(ids), free(yd), free(ws);
        mxm_moe_plan_destroy(plan);
    }
    mxm_layer_free(l);
    mxm_model_close(m);
    mxm_model_close(ref);
    return worst;
}

static void test_fixtures(void **state) {
    (void)state;
    /* Bounds: measured errors times ~3 (see docs/checkpoints.md for the table). */
    const fixture_case cases[] = {
        /* BF16 checkpoints in the reference mode: only fp32-vs-bf16 weights' rounding differences. */
        {"tests/data/nemotron_h_tiny", MXM_ACT_QUANT_NONE, MXM_PROFILE_EXACT, 0, 1e-5, 1.0, NULL},
        {"tests/data/qwen3_moe_tiny", MXM_ACT_QUANT_NONE, MXM_PROFILE_EXACT, 0, 1e-5, 1.0, NULL},
        {"tests/data/deepseek_v3_tiny", MXM_ACT_QUANT_NONE, MXM_PROFILE_EXACT, 0, 1e-5, 1.0, NULL},
        /* MXFP8 checkpoints, weight-only: y32 of the *_mxfp8 fixture used the same dequantized weights. */
        {"tests/data/nemotron_h_tiny_mxfp8", MXM_ACT_QUANT_NONE, MXM_PROFILE_EXACT, 0, 1e-5, 1.0, NULL},
        {"tests/data/qwen3_moe_tiny_mxfp8", MXM_ACT_QUANT_NONE, MXM_PROFILE_EXACT, 0, 1e-5, 1.0, NULL},
        {"tests/data/deepseek_v3_tiny_mxfp8", MXM_ACT_QUANT_NONE, MXM_PROFILE_EXACT, 0, 1e-5, 1.0, NULL},
        /* MXFP8 W8A8 in the trtllm profile: activation quantization error on top. */
        {"tests/data/nemotron_h_tiny_mxfp8", MXM_ACT_QUANT_MXFP8, MXM_PROFILE_TRTLLM, 0, 0.08, 1.0, NULL},
        {"tests/data/qwen3_moe_tiny_mxfp8", MXM_ACT_QUANT_MXFP8, MXM_PROFILE_TRTLLM, 0, 0.08, 1.0, NULL},
        {"tests/data/deepseek_v3_tiny_mxfp8", MXM_ACT_QUANT_MXFP8, MXM_PROFILE_TRTLLM, 0, 0.08, 1.0, NULL},
        /* BF16 quantized at load gives the MXFP8 checkpoint's weights: its reference holds. */
        {"tests/data/nemotron_h_tiny", MXM_ACT_QUANT_NONE, MXM_PROFILE_EXACT, 1, 1e-5, 1.0,
         "tests/data/nemotron_h_tiny_mxfp8"},
        {"tests/data/deepseek_v3_tiny", MXM_ACT_QUANT_NONE, MXM_PROFILE_EXACT, 1, 1e-5, 1.0,
         "tests/data/deepseek_v3_tiny_mxfp8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_fixture(&cases[i]);
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A copy of the nemotron BF16 fixture with one change, for the error tests. */
static void make_broken(char *dir, const char *config_text, int drop_tensor, int bad_shape) {
    strcpy(dir, "/tmp/mxm_ckptXXXXXX");
    assert_non_null(mkdtemp(dir));
    char p[4200];
    mxm_model *m;
    assert_int_equal(mxm_model_open(tu_src_path("tests/data/nemotron_h_tiny"), &m), MXM_OK);
    const int64_t n = mxm_model_tensor_count(m);
    mxm_tensor_out *t = tu_alloc(sizeof *t * n);
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        const char *name, *dt;
        int32_t rank;
        int64_t shape[8];
        mxm_model_tensor_info(m, i, &name, &dt, &rank, shape);
        if (drop_tensor && strcmp(name, "backbone.layers.0.mixer.experts.3.down_proj.weight") == 0) continue;
        const void *d;
        mxm_model_tensor_data(m, i, &d, NULL);
        t[k] = (mxm_tensor_out){name, dt, rank, {0}, d};
        memcpy(t[k].shape, shape, sizeof shape);
        if (bad_shape && strcmp(name, "backbone.layers.0.mixer.experts.5.up_proj.weight") == 0) {
            t[k].shape[0] = shape[1], t[k].shape[1] = shape[0]; /* transposed: same bytes */
        }
        k++;
    }
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    assert_int_equal(mxm_safetensors_write(p, t, k), MXM_OK);
    free(t);
    mxm_model_close(m);
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (config_text) {
        write_file(p, config_text);
    } else {
        char src[4200], cmd[9000];
        snprintf(src, sizeof src, "%s/config.json", tu_src_path("tests/data/nemotron_h_tiny"));
        snprintf(cmd, sizeof cmd, "cp '%s' '%s'", src, p);
        assert_int_equal(system(cmd), 0);
    }
}

static void remove_dir(const char *dir) { tu_rm_tree(dir); }

static mxm_status load_first_layer(const char *dir) {
    mxm_model *m;
    mxm_status st = mxm_model_open(dir, &m);
    if (st) return st;
    mxm_layer *l = NULL;
    st = mxm_model_moe_layer_count(m) ? mxm_layer_load(m, mxm_model_moe_layer(m, 0), NULL, &l) : MXM_ERR_NOT_FOUND;
    mxm_layer_free(l);
    mxm_model_close(m);
    return st;
}

static void test_broken_checkpoints(void **state) {
    (void)state;
    char dir[64];
    make_broken(dir, NULL, 1, 0);
    assert_int_equal(load_first_layer(dir), MXM_ERR_NOT_FOUND);
    assert_non_null(strstr(mxm_last_error(), "experts.3.down_proj.weight"));
    remove_dir(dir);

    make_broken(dir, NULL, 0, 1);
    assert_int_equal(load_first_layer(dir), MXM_ERR_SHAPE);
    assert_non_null(strstr(mxm_last_error(), "experts.5.up_proj.weight"));
    remove_dir(dir);

    make_broken(dir, "{\"model_type\": \"nemotron_h\", \"hidden_size\": 256", 0, 0);
    assert_int_equal(load_first_layer(dir), MXM_ERR_FORMAT);
    remove_dir(dir);

    make_broken(dir, "{\"model_type\": \"nemotron_h\", \"hidden_size\": \"big\"}", 0, 0);
    assert_int_equal(load_first_layer(dir), MXM_ERR_FORMAT);
    assert_non_null(strstr(mxm_last_error(), "hidden_size"));
    remove_dir(dir);

    /* top-k larger than the experts */
    make_broken(dir,
                "{\"model_type\": \"nemotron_h\", \"hidden_size\": 256, \"moe_intermediate_size\": 128, "
                "\"n_routed_experts\": 16, \"num_experts_per_tok\": 17}",
                0, 0);
    assert_int_equal(load_first_layer(dir), MXM_ERR_FORMAT);
    remove_dir(dir);

    /* hidden size that disagrees with the tensors */
    make_broken(dir,
                "{\"model_type\": \"nemotron_h\", \"hidden_size\": 512, \"moe_intermediate_size\": 128, "
                "\"n_routed_experts\": 16, \"num_experts_per_tok\": 4, \"moe_shared_expert_intermediate_size\": 256}",
                0, 0);
    assert_int_equal(load_first_layer(dir), MXM_ERR_SHAPE);
    remove_dir(dir);

    assert_int_equal(load_first_layer("/nonexistent/model"), MXM_ERR_NOT_FOUND);
}

/* DeepSeek FP8 checkpoints: the deepseek_v3 BF16 fixture with every expert Linear quantized to
 * F8_E4M3 + F32 weight_scale_inv (128x128 blocks) by the library, and a twin with the same
 * weights dequantized to F32. The FP8 checkpoint must load (gate/up scale grids merged into W13)
 * and give the F32 twin's output in the exact weight-only mode. */
static int is_expert_linear(const char *name) {
    return (strstr(name, ".experts.") || strstr(name, ".shared_experts.")) && strstr(name, "_proj.weight");
}

static void make_fp8_twins(char *dir_fp8, char *dir_f32) {
    strcpy(dir_fp8, "/tmp/mxm_fp8XXXXXX");
    strcpy(dir_f32, "/tmp/mxm_f32XXXXXX");
    assert_non_null(mkdtemp(dir_fp8));
    assert_non_null(mkdtemp(dir_f32));
    mxm_model *m;
    assert_int_equal(mxm_model_open(tu_src_path("tests/data/deepseek_v3_tiny"), &m), MXM_OK);
    const int64_t n = mxm_model_tensor_count(m);
    mxm_tensor_out *t8 = tu_alloc(sizeof *t8 * 2 * n), *t32 = tu_alloc(sizeof *t32 * n);
    void **bufs = tu_alloc(sizeof(void *) * 4 * n);
    char **names = tu_alloc(sizeof(char *) * n);
    int64_t k8 = 0, k32 = 0, nb = 0, nn = 0;
    for (int64_t i = 0; i < n; i++) {
        const char *name, *dt;
        int32_t rank;
        int64_t shape[8];
        const void *d;
        int64_t bytes;
        mxm_model_tensor_info(m, i, &name, &dt, &rank, shape);
        mxm_model_tensor_data(m, i, &d, &bytes);
        if (!is_expert_linear(name)) {
            t8[k8] = (mxm_tensor_out){name, dt, rank, {0}, d};
            memcpy(t8[k8++].shape, shape, sizeof shape);
            t32[k32] = (mxm_tensor_out){name, dt, rank, {0}, d};
            memcpy(t32[k32++].shape, shape, sizeof shape);
            continue;
        }
        assert_string_equal(dt, "BF16");
        const int64_t rows = shape[0], cols = shape[1];
        uint16_t *w = tu_alloc(bytes);
        memcpy(w, d, bytes);
        uint8_t *q = tu_alloc(rows * cols);
        const int64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
        float *scale = tu_alloc(4 * sr * sc), *deq = tu_alloc(4 * rows * cols);
        assert_int_equal(mxm_fp8block_quantize_weight(w, MXM_DT_BF16, rows, cols, q, scale, 1), MXM_OK);
        assert_int_equal(mxm_fp8block_dequantize(q, scale, rows, cols, 128, 0, deq, MXM_DT_F32, 1), MXM_OK);
        bufs[nb++] = w, bufs[nb++] = q, bufs[nb++] = scale, bufs[nb++] = deq;
        t8[k8++] = (mxm_tensor_out){name, "F8_E4M3", 2, {rows, cols}, q};
        char *sn = tu_alloc(strlen(name) + 16);
        sprintf(sn, "%s_scale_inv", name);
        names[nn++] = sn;
        t8[k8++] = (mxm_tensor_out){sn, "F32", 2, {sr, sc}, scale};
        t32[k32++] = (mxm_tensor_out){name, "F32", 2, {rows, cols}, deq};
    }
    char p[4200], src[4200], text[16384];
    snprintf(p, sizeof p, "%s/model.safetensors", dir_fp8);
    assert_int_equal(mxm_safetensors_write(p, t8, k8), MXM_OK);
    snprintf(p, sizeof p, "%s/model.safetensors", dir_f32);
    assert_int_equal(mxm_safetensors_write(p, t32, k32), MXM_OK);
    /* config.json: the fixture's, plus DeepSeek's fp8 quantization_config for the FP8 twin */
    snprintf(src, sizeof src, "%s/config.json", tu_src_path("tests/data/deepseek_v3_tiny"));
    FILE *f = fopen(src, "r");
    assert_non_null(f);
    const size_t len = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[len] = 0;
    snprintf(p, sizeof p, "%s/config.json", dir_f32);
    write_file(p, text);
    char *end = strrchr(text, '}');
    assert_non_null(end);
    strcpy(end, ", \"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", "
                "\"activation_scheme\": \"dynamic\", \"weight_block_size\": [128, 128]}}\n");
    snprintf(p, sizeof p, "%s/config.json", dir_fp8);
    write_file(p, text);
    for (int64_t i = 0; i < nb; i++) free(bufs[i]);
    for (int64_t i = 0; i < nn; i++) free(names[i]);
    free(bufs), free(names), free(t8), free(t32);
    mxm_model_close(m);
}

/* Layer 0 of dir on x (bf16 [T, H]) into out (f32), exact weight-only mode; returns the format. */
static int32_t run_layer0(const char *dir, const uint16_t *x, int64_t T, float *out) {
    mxm_model *m;
    assert_int_equal(mxm_model_open(dir, &m), MXM_OK);
    mxm_layer_options lo;
    mxm_layer_options_default(&lo);
    lo.profile = MXM_PROFILE_EXACT;
    mxm_layer *l;
    const mxm_status st = mxm_layer_load(m, mxm_model_moe_layer(m, 0), &lo, &l);
    if (st) fprintf(stderr, "%s\n", mxm_last_error());
    assert_int_equal(st, MXM_OK);
    mxm_moe_config c = *mxm_layer_config(l);
    c.act_quant = MXM_ACT_QUANT_NONE;
    const int64_t E = c.num_experts;
    float *logits = tu_alloc(4 * T * E);
    assert_int_equal(mxm_layer_router_logits(l, x, MXM_DT_BF16, T, logits, 0), MXM_OK);
    mxm_moe_plan *plan;
    assert_int_equal(mxm_moe_plan_create(&c, T, &plan), MXM_OK);
    const int64_t wsb = mxm_moe_plan_workspace_size(plan);
    void *ws = aligned_alloc(64, wsb);
    mxm_moe_inputs in = {.num_tokens = T, .x = x, .x_dtype = MXM_DT_BF16, .router_logits = logits,
                         .logits_dtype = MXM_DT_F32, .routing_bias = mxm_layer_routing_bias(l), .bias_dtype = MXM_DT_F32};
    mxm_moe_outputs o = {.out = out, .out_dtype = MXM_DT_F32};
    tu_poison_f32(out, T * c.hidden_size);
    assert_int_equal(mxm_moe_forward(plan, mxm_layer_weights(l), &in, &o, ws, wsb, NULL), MXM_OK);
    const int32_t fmt = c.weight_format;
    free(ws), free(logits);
    mxm_moe_plan_destroy(plan);
    mxm_layer_free(l);
    mxm_model_close(m);
    return fmt;
}

static void test_deepseek_fp8_checkpoint(void **state) {
    (void)state;
    char d8[64], d32[64];
    make_fp8_twins(d8, d32);
    tu_rng r = tu_rng_fresh();
    const int64_t T = 33, H = 256;
    uint16_t *x = tu_alloc(2 * T * H);
    for (int64_t i = 0; i < T * H; i++) x[i] = mxm_bf16_from_f32((float)tu_normal(&r));
    float *o8 = tu_alloc(4 * T * H), *o32 = tu_alloc(4 * T * H);
    assert_int_equal(run_layer0(d8, x, T, o8), MXM_WFMT_FP8_BLOCK);
    assert_int_equal(run_layer0(d32, x, T, o32), MXM_WFMT_F32);
    double *ref = tu_alloc(8 * T * H);
    for (int64_t i = 0; i < T * H; i++) ref[i] = o32[i];
    const double err = tu_rel_l2_f32(o8, ref, T * H);
    printf("fixture deepseek_v3 as DeepSeek FP8 vs its dequantized F32 twin: err %.3e (bound 1e-5) %s\n", err,
           err <= 1e-5 ? "PASS" : "FAIL");
    assert_true(err <= 1e-5);
    free(x), free(o8), free(o32), free(ref);
    tu_rm_tree(d8);
    tu_rm_tree(d32);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_fixtures), cmocka_unit_test(test_broken_checkpoints),
                                       cmocka_unit_test(test_deepseek_fp8_checkpoint)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
