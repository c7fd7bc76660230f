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
        /* Real ModelOpt 0.47 exports: their experts are the *_mxfp8 twins' bytes, so the twins'
         * weight-only references hold to the same bound; W8A8 against them as for the twins. */
        {"tests/data/nemotron_h_tiny_modelopt", MXM_ACT_QUANT_NONE, MXM_PROFILE_EXACT, 0, 1e-5, 1.0,
         "tests/data/nemotron_h_tiny_mxfp8"},
        {"tests/data/qwen3_moe_tiny_modelopt", MXM_ACT_QUANT_NONE, MXM_PROFILE_EXACT, 0, 1e-5, 1.0,
         "tests/data/qwen3_moe_tiny_mxfp8"},
        {"tests/data/deepseek_v3_tiny_modelopt", MXM_ACT_QUANT_NONE, MXM_PROFILE_EXACT, 0, 1e-5, 1.0,
         "tests/data/deepseek_v3_tiny_mxfp8"},
        {"tests/data/nemotron_h_tiny_modelopt", MXM_ACT_QUANT_MXFP8, MXM_PROFILE_TRTLLM, 0, 0.08, 1.0,
         "tests/data/nemotron_h_tiny_mxfp8"},
        {"tests/data/qwen3_moe_tiny_modelopt", MXM_ACT_QUANT_MXFP8, MXM_PROFILE_TRTLLM, 0, 0.08, 1.0,
         "tests/data/qwen3_moe_tiny_mxfp8"},
        {"tests/data/deepseek_v3_tiny_modelopt", MXM_ACT_QUANT_MXFP8, MXM_PROFILE_TRTLLM, 0, 0.08, 1.0,
         "tests/data/deepseek_v3_tiny_mxfp8"},
        /* ... and against the original BF16 model's outputs (what the export's own folder would
         * ship): weight quantization's own error, measured 4-5%; docs/checkpoints.md. */
        {"tests/data/nemotron_h_tiny_modelopt", MXM_ACT_QUANT_NONE, MXM_PROFILE_EXACT, 0, 0.08, 1.0,
         "tests/data/nemotron_h_tiny"},
        {"tests/data/qwen3_moe_tiny_modelopt", MXM_ACT_QUANT_NONE, MXM_PROFILE_EXACT, 0, 0.08, 1.0,
         "tests/data/qwen3_moe_tiny"},
        {"tests/data/deepseek_v3_tiny_modelopt", MXM_ACT_QUANT_NONE, MXM_PROFILE_EXACT, 0, 0.08, 1.0,
         "tests/data/deepseek_v3_tiny"},
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

/* ModelOpt exports: the exclude list, with Nemotron-H's "\u0000" entries cut, names exactly the
 * Linear-shaped (rank-2 ".weight") tensors that are not F8_E4M3, in all three real exports. */
static void test_modelopt_exclude(void **state) {
    (void)state;
    static const char *const dirs[] = {"tests/data/nemotron_h_tiny_modelopt", "tests/data/qwen3_moe_tiny_modelopt",
                                       "tests/data/deepseek_v3_tiny_modelopt"};
    static const char *const first[] = {"lm_head", "lm_head", "lm_head"};
    static const char *const embed[] = {"backbone.embeddings", "model.embed_tokens", "model.embed_tokens"};
    for (int d = 0; d < 3; d++) {
        mxm_model *m;
        assert_int_equal(mxm_model_open(tu_src_path(dirs[d]), &m), MXM_OK);
        assert_int_equal(mxm_model_weight_format(m), MXM_WFMT_MXFP8);
        assert_int_equal(mxm_model_exclude_count(m), 3);
        assert_string_equal(mxm_model_exclude(m, 0), first[d]);
        assert_string_equal(mxm_model_exclude(m, 1), embed[d]);
        assert_null(mxm_model_exclude(m, 3));
        int64_t n_excl = 0, n_quant = 0;
        for (int64_t i = 0; i < mxm_model_tensor_count(m); i++) {
            const char *name, *dt;
            int32_t rank;
            mxm_model_tensor_info(m, i, &name, &dt, &rank, NULL);
            const size_t l = strlen(name);
            if (rank != 2 || l < 8 || strcmp(name + l - 7, ".weight") != 0) continue;
            char module[256];
            snprintf(module, sizeof module, "%.*s", (int)(l - 7), name);
            const int excluded = mxm_model_module_excluded(m, module);
            if (excluded == !strcmp(dt, "F8_E4M3")) fprintf(stderr, "%s: %s %s excluded=%d\n", dirs[d], name, dt, excluded);
            assert_int_equal(excluded, strcmp(dt, "F8_E4M3") != 0);
            n_excl += excluded, n_quant += !excluded;
        }
        printf("%s: %lld Linear weights quantized, %lld excluded\n", dirs[d], (long long)n_quant, (long long)n_excl);
        assert_int_equal(n_excl, 3);
        mxm_model_close(m);
    }
}

static void write_bytes(const char *path, const char *p, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

/* Opens the nemotron BF16 fixture's tensors with the given config.json text (length n, raw NUL
 * bytes allowed) and hf_quant_config.json (NULL: none); returns mxm_model_open's status. */
static mxm_status open_with_configs(const char *config, size_t n, const char *hfq, mxm_model **out) {
    char dir[64], p[4200];
    make_broken(dir, "{}", 0, 0);
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_bytes(p, config, n);
    if (hfq) {
        snprintf(p, sizeof p, "%s/hf_quant_config.json", dir);
        write_file(p, hfq);
    }
    *out = NULL;
    const mxm_status st = mxm_model_open(dir, out);
    remove_dir(dir);
    return st;
}

/* \u0000 is accepted in ModelOpt exclude entries only; everything else malformed stays an error. */
static void test_json_nul(void **state) {
    (void)state;
#define CFG_HEAD "{\"model_type\": \"nemotron_h\", \"hidden_size\": 256, \"moe_intermediate_size\": 128, " \
                 "\"n_routed_experts\": 16, \"num_experts_per_tok\": 4"
#define HFQ(list) "{\"producer\": {\"name\": \"modelopt\", \"version\": \"0.47.0\"}, \"quantization\": " \
                  "{\"quant_algo\": \"MXFP8\", \"kv_cache_quant_algo\": null, \"group_size\": 32, " \
                  "\"exclude_modules\": " list "}}"
    mxm_model *m;
    /* in config.json's quantization_config.ignore (no hf_quant_config.json) */
    const char *cfg = CFG_HEAD ", \"quantization_config\": {\"ignore\": [\"lm_head.\\u0000backbone.pt_name_sentinel\", "
                      "\"a\\u0000b\"], \"quant_algo\": \"MXFP8\", \"quant_method\": \"modelopt\"}}";
    assert_int_equal(open_with_configs(cfg, strlen(cfg), NULL, &m), MXM_OK);
    assert_int_equal(mxm_model_exclude_count(m), 2);
    assert_string_equal(mxm_model_exclude(m, 0), "lm_head");
    assert_string_equal(mxm_model_exclude(m, 1), "a"); /* cut at the NUL; no dot to drop */
    assert_true(mxm_model_module_excluded(m, "lm_head"));
    assert_false(mxm_model_module_excluded(m, "lm_head.x"));
    assert_false(mxm_model_module_excluded(m, "ab"));
    mxm_model_close(m);
    /* in hf_quant_config.json's exclude_modules, patterns included */
    const char *plain = CFG_HEAD "}";
    assert_int_equal(open_with_configs(plain, strlen(plain), HFQ("[\"lm_head.\\u0000backbone.pt_name_sentinel\", "
                     "\"x.\\u0000\", \"\\u0000\", \"backbone.layers.*.mixer.gate.\\u0000backbone.pt_name_sentinel\"]"), &m),
                     MXM_OK);
    assert_int_equal(mxm_model_exclude_count(m), 4);
    assert_string_equal(mxm_model_exclude(m, 1), "x");
    assert_string_equal(mxm_model_exclude(m, 2), "");
    assert_true(mxm_model_module_excluded(m, "backbone.layers.12.mixer.gate"));
    assert_false(mxm_model_module_excluded(m, "backbone.layers.12.mixer.gate_proj"));
    assert_false(mxm_model_module_excluded(m, "backbone.embeddings"));
    mxm_model_close(m);

    /* NULs anywhere else: clean errors naming the place */
    static const struct {
        const char *cfg, *hfq, *where;
    } bad[] = {
        {"{\"model_type\": \"nemotron_h\\u0000x\", \"hidden_size\": 256}", NULL, "model_type"},
        {CFG_HEAD ", \"mlp_hidden_act\": \"relu2\\u0000\"}", NULL, "mlp_hidden_act"},
        {CFG_HEAD ", \"layers_block_type\": [\"moe\", \"m\\u0000\"]}", NULL, "layers_block_type"},
        {CFG_HEAD ", \"quantization_config\": {\"ignore\": [], \"quant_algo\": \"MXFP8\\u0000\", "
         "\"quant_method\": \"modelopt\"}}", NULL, "quant_algo"},
        {CFG_HEAD ", \"quantization_config\": {\"ignore\": [], \"producer\": {\"name\": \"m\\u0000\"}, "
         "\"quant_algo\": \"MXFP8\", \"quant_method\": \"modelopt\"}}", NULL, "name"},
        {CFG_HEAD "}", HFQ("[\"lm_head\"]") , NULL}, /* control: fine */
        {CFG_HEAD "}", "{\"producer\": {\"name\": \"modelopt\\u0000\"}, \"quantization\": {\"quant_algo\": \"MXFP8\"}}",
         "name"},
        {CFG_HEAD "}", "{\"quantization\": {\"quant_algo\": \"MXFP8\", \"exclude_modules\": \"lm_\\u0000\"}}",
         "exclude_modules"},
        /* NUL in a key, truncated escapes, a raw NUL byte: the JSON parser's errors */
        {"{\"model_type\\u0000\": \"nemotron_h\"}", NULL, "key"},
        {CFG_HEAD ", \"x\": \"\\u00\"}", NULL, "escape"},
        {CFG_HEAD ", \"x\": \"\\u0000", NULL, "end of input"},
        {CFG_HEAD "}", HFQ("[\"lm_head.\\u000\"]"), "escape"},
        {CFG_HEAD "}", "{\"quantization\": {\"quant_algo\": \"MXFP8\", \"exclude_modules\": [1]}}", "[0]"},
        {CFG_HEAD "}", "{\"quantization\": {\"quant_algo\": \"MXFP8\", \"exclude_modules\": {\"a\": 1}}}",
         "not a list"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const mxm_status st = open_with_configs(bad[i].cfg, strlen(bad[i].cfg), bad[i].hfq, &m);
        printf("hostile JSON %zu: %s: %s\n", i, mxm_status_str(st), st ? mxm_last_error() : "");
        if (!bad[i].where) {
            assert_int_equal(st, MXM_OK);
            mxm_model_close(m);
            continue;
        }
        assert_int_equal(st, MXM_ERR_FORMAT);
        assert_null(m);
        assert_non_null(strstr(mxm_last_error(), bad[i].where));
    }
    static const char raw[] = "{\"model_type\": \"nemotron_h\", \"x\": \"a\0b\"}";
    assert_int_equal(open_with_configs(raw, sizeof raw - 1, NULL, &m), MXM_ERR_FORMAT);
    assert_non_null(strstr(mxm_last_error(), "control character"));
    /* Python's bare NaN/Infinity (the config reader's json_text.h) beside NUL-holding exclude
     * entries: both accepted; a NUL elsewhere is still an error */
    const char *py = CFG_HEAD ", \"python_limits\": [0.0, Infinity, -Infinity, NaN], \"quantization_config\": "
                     "{\"ignore\": [\"lm_head.\\u0000backbone.pt_name_sentinel\"], \"quant_algo\": \"MXFP8\", "
                     "\"quant_method\": \"modelopt\"}}";
    assert_int_equal(open_with_configs(py, strlen(py), NULL, &m), MXM_OK);
    assert_int_equal(mxm_model_exclude_count(m), 1);
    assert_string_equal(mxm_model_exclude(m, 0), "lm_head");
    mxm_model_close(m);
    const char *py_bad = CFG_HEAD ", \"x\": NaN, \"mlp_hidden_act\": \"relu2\\u0000\"}";
    assert_int_equal(open_with_configs(py_bad, strlen(py_bad), NULL, &m), MXM_ERR_FORMAT);
    assert_null(m);
    assert_non_null(strstr(mxm_last_error(), "mlp_hidden_act"));
#undef CFG_HEAD
#undef HFQ
}

/* DeepSeek FP8 checkpoints: the deepseek_v3 BF16 fixture with every expert Linear quantized to
 * F8_E4M3 + F32 weight_scale_inv (128x128 blocks) by the library, and a twin with the same
 * weights dequantized to F32. The FP8 checkpoint must load (gate/up scale grids merged into W13)
 * and give the F32 twin's output in the exact weight-only mode. With i_keep < 128 every expert
 * keeps only its first i_keep intermediate rows (gate/up rows, down columns; config to match). */
static int is_expert_linear(const char *name) {
    return (strstr(name, ".experts.") || strstr(name, ".shared_experts.")) && strstr(name, "_proj.weight");
}

static void make_fp8_twins(char *dir_fp8, char *dir_f32, int64_t i_keep) {
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
        const int down = strstr(name, "down_proj") != NULL;
        const int64_t rows = down || shape[0] <= i_keep ? shape[0] : i_keep;
        const int64_t cols = !down || shape[1] <= i_keep ? shape[1] : i_keep;
        uint16_t *w = tu_alloc(2 * rows * cols);
        assert_int_equal(bytes, 2 * shape[0] * shape[1]);
        for (int64_t r = 0; r < rows; r++)
            memcpy(w + r * cols, (const uint16_t *)d + r * shape[1], 2 * cols);
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
    char *mi = strstr(text, "\"moe_intermediate_size\": 128");
    assert_non_null(mi);
    if (i_keep < 128) { /* the same three characters, space-padded: " 96" */
        char tmp[32];
        snprintf(tmp, sizeof tmp, "%3d", (int)i_keep);
        memcpy(mi + strlen("\"moe_intermediate_size\": "), tmp, 3);
    }
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
    make_fp8_twins(d8, d32, 128);
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

    /* Gate/up halves of 96 rows cannot share one 128x128 scale grid: the FP8 twin is refused with
     * that reason, its F32 twin (the same truncated weights) loads and runs. */
    make_fp8_twins(d8, d32, 96);
    x = tu_alloc(2 * T * H);
    for (int64_t i = 0; i < T * H; i++)
        x[i] = mxm_bf16_from_f32((float)tu_normal(&r));
    o32 = tu_alloc(4 * T * H);
    assert_int_equal(run_layer0(d32, x, T, o32), MXM_WFMT_F32);
    mxm_model *m;
    assert_int_equal(mxm_model_open(d8, &m), MXM_OK);
    mxm_layer_options lo;
    mxm_layer_options_default(&lo);
    mxm_layer *l = NULL;
    assert_int_equal(mxm_layer_load(m, mxm_model_moe_layer(m, 0), &lo, &l), MXM_ERR_UNSUPPORTED);
    assert_null(l);
    printf("DeepSeek FP8 with I = 96: %s\n", mxm_last_error());
    assert_non_null(strstr(mxm_last_error(), "96 rows (not a multiple of 128)"));
    mxm_model_close(m);
    free(x), free(o32);
    tu_rm_tree(d8);
    tu_rm_tree(d32);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_fixtures), cmocka_unit_test(test_broken_checkpoints),
                                       cmocka_unit_test(test_modelopt_exclude), cmocka_unit_test(test_json_nul),
                                       cmocka_unit_test(test_deepseek_fp8_checkpoint)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
