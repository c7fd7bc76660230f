/* mxm_checkpoint_quantize: by default, the three BF16 fixtures give NVIDIA ModelOpt 0.47's own
 * MXFP8 exports (*_modelopt: every tensor's name, dtype, shape and bytes, the data order, the
 * exclude list and the other quantization fields); ModelOpt's selection and exclude-list rules
 * on a synthetic hybrid Nemotron-H (Mamba, attention, MoE, dense MLP); with MXM_QUANTIZE_EXPERTS
 * byte-identical copies of the *_mxfp8 fixtures (model.safetensors byte for byte, JSON files
 * equal when parsed but for the producer, other files copied); FLOOR; sharded inputs; F16/F32
 * inputs and other model types; errors and cancellation leave nothing behind. Outputs go to a
 * fresh mkdtemp directory, removed at the end. */
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "mxmoe.h"
#include "testutil.h"

/* ------------------------------------------------------------------------------------------ */
/* helpers */

static char g_dir[256];


static int setup_dir(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/mxm_cq_test_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown_dir(void **state) {
    (void)state;
    tu_rm_tree(g_dir);
    return 0;
}

/* Joined path in a rotating static buffer. */
static const char *pj(const char *a, const char *b) {
    static char bufs[16][1024];
    static int k;
    char tmp[1024];
    /* a or b may be an earlier result */
    if (snprintf(tmp, sizeof tmp, "%s/%s", a, b) >= (int)sizeof tmp) fail_msg("path too long");
    char *p = bufs[k++ % 16];
    memcpy(p, tmp, sizeof tmp);
    return p;
}

/* Fixture folder path (own copy: tu_src_path has a single static buffer). */
static const char *data_dir(const char *name) {
    static char bufs[8][1024];
    static int k;
    char rel[256];
    snprintf(rel, sizeof rel, "tests/data/%s", name);
    char *p = bufs[k++ % 8];
    snprintf(p, 1024, "%s", tu_src_path(rel));
    return p;
}

static uint8_t *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        print_error("cannot open %s\n", path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = tu_alloc((size_t)n + 1);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    b[n] = 0;
    *len = (size_t)n;
    return b;
}

static void write_all(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static void copy_file(const char *src, const char *dst) {
    size_t n;
    uint8_t *b = read_all(src, &n);
    assert_non_null(b);
    write_all(dst, b, n);
    free(b);
}

static int exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Byte equality of two files; on a difference prints where. */
static int files_equal(const char *a, const char *b) {
    size_t na, nb;
    uint8_t *x = read_all(a, &na), *y = read_all(b, &nb);
    int eq = x && y && na == nb && memcmp(x, y, na) == 0;
    if (!eq && x && y) {
        size_t i = 0;
        while (i < na && i < nb && x[i] == y[i])
            i++;
        print_error("%s (%zu bytes) and %s (%zu bytes) differ first at byte %zu\n", a, na, b, nb,
                    i);
    }
    free(x);
    free(y);
    return eq;
}

/* Where a quantized checkpoint's JSON holds "producer": hf_quant_config.json's root, config.json's
 * quantization_config (NULL for other files). */
static json_t *producer_holder(json_t *root) {
    return json_object_get(root, "quantization") ? root
                                                 : json_object_get(root, "quantization_config");
}

/* mxmoe's output must name mxmoe as its producer; the entry is then removed. */
static void check_and_drop_producer(json_t *root) {
    json_t *h = producer_holder(root);
    if (!h) return;
    json_t *p = json_object_get(h, "producer");
    assert_non_null(p);
    assert_string_equal(json_string_value(json_object_get(p, "name")), "mxmoe");
    assert_string_equal(json_string_value(json_object_get(p, "version")), mxm_version());
    assert_int_equal(json_object_del(h, "producer"), 0);
}

/* Equal when parsed, with the producer of a (twin, output) pair set aside: the *_mxfp8 twins name
 * ModelOpt 0.42 (their README says why), mxmoe's output names mxmoe. */
static int json_files_equal(const char *a, const char *b) {
    json_error_t e;
    json_t *x = json_load_file(a, JSON_REJECT_DUPLICATES, &e);
    if (!x) print_error("%s: %s\n", a, e.text);
    json_t *y = json_load_file(b, JSON_REJECT_DUPLICATES, &e);
    if (!y) print_error("%s: %s\n", b, e.text);
    if (x && y && producer_holder(y)) {
        check_and_drop_producer(x); /* a: mxmoe's output */
        json_object_del(producer_holder(y), "producer");
    }
    const int eq = x && y && json_equal(x, y);
    if (!eq && x && y) {
        char *sx = json_dumps(x, JSON_COMPACT), *sy = json_dumps(y, JSON_COMPACT);
        print_error("JSON differs:\n%s\n%s\n", sx, sy);
        free(sx);
        free(sy);
    }
    json_decref(x);
    json_decref(y);
    return eq;
}

/* Number of entries of dir whose name ends with suffix ("" = all), "." and ".." excluded. */
static int count_files(const char *dir, const char *suffix) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    const struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const size_t l = strlen(de->d_name), s = strlen(suffix);
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
        if (l >= s && strcmp(de->d_name + l - s, suffix) == 0) n++;
    }
    closedir(d);
    return n;
}

static int count_containing(const char *dir, const char *part) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    const struct dirent *de;
    while ((de = readdir(d)) != NULL) n += strstr(de->d_name, part) != NULL;
    closedir(d);
    return n;
}

typedef struct prog {
    int64_t calls, last_done, total;
    int monotone, null_what;
    int64_t cancel_at; /* return 1 at this call (1-based); 0 = never */
} prog;

static int32_t prog_cb(int64_t done, int64_t total, const char *what, void *user) {
    prog *p = user;
    p->calls++;
    if (done < p->last_done || done > total || (p->total && total != p->total)) p->monotone = 0;
    if (!what) p->null_what = 1;
    p->last_done = done;
    p->total = total;
    return (p->cancel_at && p->calls >= p->cancel_at) ? 1 : 0;
}

static prog prog_new(void) {
    prog p;
    memset(&p, 0, sizeof p);
    p.monotone = 1;
    return p;
}

static mxm_status quantize_experts(const char *in, const char *out, int32_t rule, int32_t threads,
                                   mxm_progress_fn progress, void *user) {
    mxm_quantize_options o;
    mxm_quantize_options_default(&o);
    o.scale_rule = rule, o.num_threads = threads, o.scope = MXM_QUANTIZE_EXPERTS;
    return mxm_checkpoint_quantize_ex(in, out, &o, progress, user);
}

/* ------------------------------------------------------------------------------------------ */
/* the fixtures, byte for byte (experts only: the *_mxfp8 twins) */

static void check_fixture(const char *name) {
    char fxname[128], in[1024], fx[1024], out[1024];
    snprintf(fxname, sizeof fxname, "%s_mxfp8", name);
    snprintf(in, sizeof in, "%s", data_dir(name));
    snprintf(fx, sizeof fx, "%s", data_dir(fxname));
    snprintf(out, sizeof out, "%s/%s/out", g_dir, name); /* parent created too */

    prog p = prog_new();
    const mxm_status st = quantize_experts(in, out, MXM_SCALE_RCEIL, 2, prog_cb, &p);
    if (st != MXM_OK) print_error("%s: %s\n", name, mxm_last_error());
    assert_int_equal(st, MXM_OK);

    /* model.safetensors: byte for byte the fixture (tensors, metadata, header, layout) */
    assert_true(files_equal(pj(out, "model.safetensors"), pj(fx, "model.safetensors")));
    print_message("%s: model.safetensors is byte-identical to the fixture\n", name);
    assert_true(json_files_equal(pj(out, "config.json"), pj(fx, "config.json")));
    assert_true(json_files_equal(pj(out, "hf_quant_config.json"), pj(fx, "hf_quant_config.json")));
    assert_true(files_equal(pj(out, "generation_config.json"), pj(in, "generation_config.json")));
    assert_true(files_equal(pj(out, "generation_config.json"), pj(fx, "generation_config.json")));
    /* other files are the input's (the fixture's own README/reference differ by design) */
    assert_true(files_equal(pj(out, "README.md"), pj(in, "README.md")));
    assert_true(files_equal(pj(out, "reference.safetensors"), pj(in, "reference.safetensors")));
    assert_int_equal(count_files(out, ""), count_files(in, "") + 1);
    assert_int_equal(count_files(out, ".tmp"), 0);

    /* progress: in bytes of input tensors, monotone, at least once per tensor, ends at total */
    mxm_st_file *f;
    assert_int_equal(mxm_st_open(pj(in, "model.safetensors"), &f), MXM_OK);
    assert_true(p.calls >= mxm_st_count(f));
    assert_int_equal(p.total, mxm_st_data_size(f));
    assert_int_equal(p.last_done, p.total);
    assert_true(p.monotone);
    assert_false(p.null_what);
    mxm_st_close(f);

    /* the output opens as a model folder */
    mxm_st_model *m;
    assert_int_equal(mxm_st_model_open(out, &m), MXM_OK);
    mxm_st_model_close(m);
}

static void test_nemotron_h(void **state) {
    (void)state;
    check_fixture("nemotron_h_tiny");
}
static void test_qwen3_moe(void **state) {
    (void)state;
    check_fixture("qwen3_moe_tiny");
}
static void test_deepseek_v3(void **state) {
    (void)state;
    check_fixture("deepseek_v3_tiny");
}

/* ------------------------------------------------------------------------------------------ */
/* the default: NVIDIA ModelOpt 0.47's own exports of the same BF16 fixtures (tests/data/
 * *_modelopt, unedited), tensor by tensor and in data order, and their JSON fields */

static json_t *load_json_nul(const char *path) {
    json_error_t e;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
    if (!j) print_error("%s: %s\n", path, e.text);
    assert_non_null(j);
    return j;
}

/* ModelOpt's exclude entries as module names: its Nemotron-H entries end in
 * ".\u0000backbone.pt_name_sentinel" (its own bug, MODELOPT.md), cut there. */
static json_t *modelopt_clean_list(const json_t *l) {
    json_t *o = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(l, i, e) {
        const char *v = json_string_value(e);
        size_t n = strlen(v);
        if (n < json_string_length(e)) {
            assert_true(n > 0 && v[n - 1] == '.');
            assert_string_equal(v + n + 1, strncmp(v, "backbone.", 9) && strcmp(v, "lm_head.")
                                               ? ""
                                               : "backbone.pt_name_sentinel");
            n--;
        }
        json_array_append_new(o, json_stringn(v, n));
    }
    return o;
}

/* The keys of two objects, in order, are the same. */
static void assert_same_keys(const json_t *x, const json_t *y) {
    assert_int_equal(json_object_size(x), json_object_size(y));
    void *ix = json_object_iter((json_t *)x), *iy = json_object_iter((json_t *)y);
    while (ix && iy) {
        assert_string_equal(json_object_iter_key(ix), json_object_iter_key(iy));
        ix = json_object_iter_next((json_t *)x, ix), iy = json_object_iter_next((json_t *)y, iy);
    }
}

static void assert_json_equal(const json_t *x, const json_t *y, const char *what) {
    if (!json_equal(x, y)) {
        char *a = json_dumps(x, JSON_COMPACT | JSON_ENCODE_ANY),
             *b = json_dumps(y, JSON_COMPACT | JSON_ENCODE_ANY);
        print_error("%s differs:\n  mxmoe:    %s\n  ModelOpt: %s\n", what, a, b);
        free(a);
        free(b);
    }
    assert_true(json_equal(x, y));
}

static void check_modelopt_export(const char *name) {
    char exname[128], in[1024], ex[1024], out[1024];
    snprintf(exname, sizeof exname, "%s_modelopt", name);
    snprintf(in, sizeof in, "%s", data_dir(name));
    snprintf(ex, sizeof ex, "%s", data_dir(exname));
    snprintf(out, sizeof out, "%s/%s_default", g_dir, name);
    prog p = prog_new();
    const mxm_status st = mxm_checkpoint_quantize(in, out, MXM_SCALE_RCEIL, 2, prog_cb, &p);
    if (st != MXM_OK) print_error("%s: %s\n", name, mxm_last_error());
    assert_int_equal(st, MXM_OK);
    assert_true(p.monotone);
    assert_int_equal(p.last_done, p.total);

    /* tensors, in data order: names, dtypes, shapes, offsets and bytes */
    mxm_st_file *fo, *fe;
    assert_int_equal(mxm_st_open(pj(out, "model.safetensors"), &fo), MXM_OK);
    assert_int_equal(mxm_st_open(pj(ex, "model.safetensors"), &fe), MXM_OK);
    assert_int_equal(mxm_st_count(fo), mxm_st_count(fe));
    int64_t nq = 0;
    for (int64_t i = 0; i < mxm_st_count(fe); i++) {
        const mxm_st_tensor *a = mxm_st_at(fo, i), *b = mxm_st_at(fe, i);
        if (strcmp(a->name, b->name) != 0)
            print_error("data order: #%lld is %s, ModelOpt has %s\n", (long long)i, a->name,
                        b->name);
        assert_string_equal(a->name, b->name);
        assert_string_equal(a->dtype_str, b->dtype_str);
        assert_int_equal(a->rank, b->rank);
        assert_memory_equal(a->shape, b->shape, sizeof a->shape);
        assert_int_equal(a->nbytes, b->nbytes);
        if (memcmp(a->data, b->data, (size_t)a->nbytes) != 0)
            print_error("%s: bytes differ\n", a->name);
        assert_memory_equal(a->data, b->data, (size_t)a->nbytes);
        assert_int_equal(a->offset, b->offset);
        nq += b->dtype == MXM_DT_E4M3;
    }
    assert_string_equal(mxm_st_metadata(fo, "format"), mxm_st_metadata(fe, "format"));
    assert_int_equal(mxm_st_metadata_count(fo), mxm_st_metadata_count(fe));
    assert_int_equal(mxm_st_header_size(fo), mxm_st_header_size(fe));
    print_message("%s: %lld tensors (%lld quantized) equal ModelOpt's export in data order; "
                  "the whole model.safetensors is %s\n",
                  name, (long long)mxm_st_count(fe), (long long)nq,
                  files_equal(pj(out, "model.safetensors"), pj(ex, "model.safetensors"))
                      ? "byte-identical"
                      : "NOT identical");
    assert_true(files_equal(pj(out, "model.safetensors"), pj(ex, "model.safetensors")));
    mxm_st_close(fo);
    mxm_st_close(fe);

    /* hf_quant_config.json: the same keys in the same order, the same values but the producer */
    json_t *x = load_json_nul(pj(out, "hf_quant_config.json")),
           *y = load_json_nul(pj(ex, "hf_quant_config.json"));
    assert_same_keys(x, y);
    json_t *qx = json_object_get(x, "quantization"), *qy = json_object_get(y, "quantization");
    assert_same_keys(qx, qy);
    json_t *clean = modelopt_clean_list(json_object_get(qy, "exclude_modules"));
    assert_json_equal(json_object_get(qx, "exclude_modules"), clean, "exclude_modules");
    json_object_set(qy, "exclude_modules", clean);
    assert_string_equal(json_string_value(json_object_get(json_object_get(y, "producer"), "name")),
                        "modelopt");
    check_and_drop_producer(x);
    json_object_del(y, "producer");
    assert_json_equal(x, y, "hf_quant_config.json");
    json_decref(x);
    json_decref(y);

    /* config.json: the source's with quantization_config last (keys and values as ModelOpt's but
     * the producer); ModelOpt's also differs in transformers_version (its transformers, 5.14.1) */
    x = load_json_nul(pj(out, "config.json"));
    y = load_json_nul(pj(ex, "config.json"));
    qx = json_object_get(x, "quantization_config"), qy = json_object_get(y, "quantization_config");
    assert_same_keys(qx, qy);
    void *last = json_object_iter(x);
    while (json_object_iter_next(x, last))
        last = json_object_iter_next(x, last);
    assert_string_equal(json_object_iter_key(last), "quantization_config");
    assert_json_equal(json_object_get(qx, "ignore"), clean, "quantization_config.ignore");
    json_object_set(qy, "ignore", clean);
    check_and_drop_producer(x);
    json_object_del(qy, "producer");
    assert_json_equal(qx, qy, "quantization_config");
    json_object_del(x, "transformers_version");
    json_object_del(y, "transformers_version");
    assert_json_equal(x, y, "config.json");
    json_decref(x);
    json_decref(y);
    json_decref(clean);
    assert_true(files_equal(pj(out, "generation_config.json"), pj(in, "generation_config.json")));

    /* the output loads, and its exclude list names exactly its unquantized Linears */
    mxm_model *m;
    assert_int_equal(mxm_model_open(out, &m), MXM_OK);
    assert_int_equal(mxm_model_weight_format(m), MXM_WFMT_MXFP8);
    for (int64_t i = 0; i < mxm_model_tensor_count(m); i++) {
        const char *tn, *dt;
        int32_t rank;
        mxm_model_tensor_info(m, i, &tn, &dt, &rank, NULL);
        const size_t l = strlen(tn);
        if (rank != 2 || l < 8 || strcmp(tn + l - 7, ".weight") != 0) continue;
        char module[512];
        snprintf(module, sizeof module, "%.*s", (int)(l - 7), tn);
        assert_int_equal(mxm_model_module_excluded(m, module), strcmp(dt, "F8_E4M3") != 0);
    }
    mxm_model_close(m);
}

static void test_modelopt_nemotron_h(void **state) {
    (void)state;
    check_modelopt_export("nemotron_h_tiny");
}
static void test_modelopt_qwen3_moe(void **state) {
    (void)state;
    check_modelopt_export("qwen3_moe_tiny");
}
static void test_modelopt_deepseek_v3(void **state) {
    (void)state;
    check_modelopt_export("deepseek_v3_tiny");
}

/* ModelOpt's rules beyond the fixtures, on a synthetic hybrid Nemotron-H: Mamba layers (in_proj,
 * out_proj quantized; conv1d excluded), attention, MoE (router excluded), a dense MLP, a vision
 * branch (disabled by name), a layer holding only a conv1d next to layer 10 (the "<p>.*" form),
 * F32 and BF16 inputs. The expected exclude list was worked out by hand from ModelOpt 0.47's
 * export code (quant_utils.py: prefix wildcards at dots that match no quantized module, sorted
 * by transformers' in-memory names, "model." for "backbone."). */
static void test_modelopt_hybrid(void **state) {
    (void)state;
    char in[1024], out[1024];
    snprintf(in, sizeof in, "%s/hybrid_in", g_dir);
    snprintf(out, sizeof out, "%s/hybrid_out", g_dir);
    assert_int_equal(mkdir(in, 0755), 0);
    static const char cfg[] = "{\"model_type\": \"nemotron_h\", \"hidden_size\": 64}\n";
    write_all(pj(in, "config.json"), cfg, sizeof cfg - 1);
    enum { H = 64 };
    static const struct {
        const char *name;
        int32_t rank;
        int64_t n, k, c; /* shape [n, k] or [n, k, c] or [n] */
        int f32, quantized;
    } T[] = {
        {"backbone.embeddings.weight", 2, 128, H, 0, 0, 0},
        {"backbone.layers.0.mixer.in_proj.weight", 2, 160, H, 0, 0, 1},
        {"backbone.layers.0.mixer.conv1d.weight", 3, 96, 1, 4, 0, 0},
        {"backbone.layers.0.mixer.conv1d.bias", 1, 96, 0, 0, 0, 0},
        {"backbone.layers.0.mixer.A_log", 1, 4, 0, 0, 1, 0},
        {"backbone.layers.0.mixer.D", 1, 4, 0, 0, 1, 0},
        {"backbone.layers.0.mixer.dt_bias", 1, 4, 0, 0, 0, 0},
        {"backbone.layers.0.mixer.norm.weight", 1, 64, 0, 0, 0, 0},
        {"backbone.layers.0.mixer.out_proj.weight", 2, H, 64, 0, 0, 1},
        {"backbone.layers.0.norm.weight", 1, H, 0, 0, 0, 0},
        {"backbone.layers.1.mixer.conv1d.weight", 3, 96, 1, 4, 0, 0},
        {"backbone.layers.1.norm.weight", 1, H, 0, 0, 0, 0},
        {"backbone.layers.2.mixer.gate.weight", 2, 4, H, 0, 1, 0},
        {"backbone.layers.2.mixer.gate.e_score_correction_bias", 1, 4, 0, 0, 1, 0},
        {"backbone.layers.2.mixer.experts.0.up_proj.weight", 2, 32, H, 0, 0, 1},
        {"backbone.layers.2.mixer.experts.0.down_proj.weight", 2, H, 32, 0, 1, 1},
        {"backbone.layers.2.mixer.experts.1.up_proj.weight", 2, 32, H, 0, 0, 1},
        {"backbone.layers.2.mixer.experts.1.down_proj.weight", 2, H, 32, 0, 0, 1},
        {"backbone.layers.2.mixer.shared_experts.up_proj.weight", 2, 64, H, 0, 0, 1},
        {"backbone.layers.2.mixer.shared_experts.down_proj.weight", 2, H, 64, 0, 0, 1},
        {"backbone.layers.3.mixer.q_proj.weight", 2, 64, H, 0, 0, 1},
        {"backbone.layers.3.mixer.k_proj.weight", 2, 32, H, 0, 0, 1},
        {"backbone.layers.3.mixer.v_proj.weight", 2, 32, H, 0, 0, 1},
        {"backbone.layers.3.mixer.o_proj.weight", 2, H, 64, 0, 0, 1},
        {"backbone.layers.4.mixer.up_proj.weight", 2, 96, H, 0, 0, 1},
        {"backbone.layers.4.mixer.down_proj.weight", 2, H, 96, 0, 0, 1},
        {"backbone.layers.10.mixer.in_proj.weight", 2, 160, H, 0, 0, 1},
        {"backbone.layers.10.mixer.conv1d.weight", 3, 96, 1, 4, 0, 0},
        {"backbone.layers.10.mixer.out_proj.weight", 2, H, 64, 0, 1, 1},
        {"backbone.vision_tower.blocks.0.proj.weight", 2, 32, H, 0, 0, 0},
        {"backbone.vision_tower.blocks.1.proj.weight", 2, 32, H, 0, 0, 0},
        {"backbone.norm_f.weight", 1, H, 0, 0, 0, 0},
        {"lm_head.weight", 2, 128, H, 0, 0, 0},
    };
    enum { NT = sizeof T / sizeof T[0] };
    tu_rng r = tu_rng_fresh();
    void *data[NT];
    mxm_st_writer *w;
    assert_int_equal(mxm_st_writer_create(pj(in, "model.safetensors"), &w), MXM_OK);
    assert_int_equal(mxm_st_writer_set_metadata(w, "format", "pt"), MXM_OK);
    for (int i = 0; i < NT; i++) {
        const int64_t numel = T[i].n * (T[i].rank > 1 ? T[i].k : 1) * (T[i].rank > 2 ? T[i].c : 1);
        const int64_t shape[3] = {T[i].n, T[i].k, T[i].c};
        float *f = tu_alloc((size_t)numel * 4);
        tu_fill_blockscaled_f32(&r, f, numel, 8, 8);
        if (T[i].f32) {
            data[i] = f;
        } else {
            uint16_t *b = tu_alloc((size_t)numel * 2);
            for (int64_t k = 0; k < numel; k++)
                b[k] = mxm_bf16_from_f32(f[k]);
            free(f);
            data[i] = b;
        }
        assert_int_equal(mxm_st_writer_add(w, T[i].name, T[i].f32 ? "F32" : "BF16", T[i].rank,
                                           shape, data[i], numel * (T[i].f32 ? 4 : 2)),
                         MXM_OK);
    }
    assert_int_equal(mxm_st_writer_finish(w), MXM_OK);
    const mxm_status st = mxm_checkpoint_quantize(in, out, MXM_SCALE_RCEIL, 1, NULL, NULL);
    if (st != MXM_OK) print_error("%s\n", mxm_last_error());
    assert_int_equal(st, MXM_OK);

    mxm_st_file *f;
    assert_int_equal(mxm_st_open(pj(out, "model.safetensors"), &f), MXM_OK);
    int nquant = 0;
    for (int i = 0; i < NT; i++) {
        const mxm_st_tensor *t = mxm_st_find(f, T[i].name);
        assert_non_null(t);
        char sname[256];
        snprintf(sname, sizeof sname, "%s_scale", T[i].name);
        const mxm_st_tensor *ts = mxm_st_find(f, sname);
        if (!T[i].quantized) {
            if (ts || strcmp(t->dtype_str, T[i].f32 ? "F32" : "BF16"))
                print_error("%s was quantized\n", T[i].name);
            assert_null(ts);
            assert_string_equal(t->dtype_str, T[i].f32 ? "F32" : "BF16");
            assert_memory_equal(t->data, data[i], (size_t)t->nbytes);
            continue;
        }
        nquant++;
        if (!ts) print_error("%s was not quantized\n", T[i].name);
        assert_non_null(ts);
        assert_string_equal(t->dtype_str, "F8_E4M3");
        assert_string_equal(ts->dtype_str, "U8");
        const int64_t n = T[i].n, k = T[i].k;
        uint8_t *q = tu_alloc((size_t)(n * k)), *sc = tu_alloc((size_t)(n * k / 32));
        assert_int_equal(mxm_mxfp8_quantize(data[i], T[i].f32 ? MXM_DT_F32 : MXM_DT_BF16, n, k, 0,
                                            q, sc, MXM_SCALE_RCEIL, 1),
                         MXM_OK);
        assert_memory_equal(q, t->data, (size_t)(n * k));
        assert_memory_equal(sc, ts->data, (size_t)(n * k / 32));
        free(q);
        free(sc);
    }
    assert_int_equal(mxm_st_count(f), NT + nquant);
    /* data order: the safetensors library's (F32, then BF16, F8_E4M3, U8; by name in each) */
    static const char *const order[] = {"F32", "BF16", "F8_E4M3", "U8"};
    int group = 0;
    const char *prev = "";
    for (int64_t i = 0; i < mxm_st_count(f); i++) {
        const mxm_st_tensor *t = mxm_st_at(f, i);
        int g = group;
        while (g < 4 && strcmp(order[g], t->dtype_str))
            g++;
        assert_true(g < 4); /* same group or a later one */
        if (g != group) prev = "";
        assert_true(strcmp(prev, t->name) < 0);
        group = g, prev = t->name;
    }
    mxm_st_close(f);
    json_t *h = load_json_nul(pj(out, "hf_quant_config.json"));
    json_t *want = json_pack("[s, s, s, s, s, s, s]", "lm_head", "backbone.embeddings",
                             "backbone.layers.0.mixer.conv1d", "backbone.layers.1.*",
                             "backbone.layers.10.mixer.conv1d", "backbone.layers.2.mixer.gate",
                             "backbone.vision_tower*");
    assert_json_equal(json_object_get(json_object_get(h, "quantization"), "exclude_modules"), want,
                      "exclude_modules");
    json_decref(want);
    json_decref(h);
    for (int i = 0; i < NT; i++)
        free(data[i]);
}

/* ------------------------------------------------------------------------------------------ */
/* FLOOR: a valid file whose scales differ from RCEIL's somewhere, by at most one, and whose
 * quantized tensors equal mxm_mxfp8_quantize(FLOOR) of the input */

static void test_floor(void **state) {
    (void)state;
    char in[1024], fx[1024], out[1024];
    snprintf(in, sizeof in, "%s", data_dir("nemotron_h_tiny"));
    snprintf(fx, sizeof fx, "%s", data_dir("nemotron_h_tiny_mxfp8"));
    snprintf(out, sizeof out, "%s/floor", g_dir);
    assert_int_equal(quantize_experts(in, out, MXM_SCALE_FLOOR, 0, NULL, NULL), MXM_OK);
    assert_true(json_files_equal(pj(out, "hf_quant_config.json"), pj(fx, "hf_quant_config.json")));

    /* against the RCEIL fixture: same layout, different scale bytes */
    mxm_st_file *fo, *fr, *fi;
    assert_int_equal(mxm_st_open(pj(out, "model.safetensors"), &fo), MXM_OK);
    assert_int_equal(mxm_st_open(pj(fx, "model.safetensors"), &fr), MXM_OK);
    assert_int_equal(mxm_st_header_size(fo), mxm_st_header_size(fr));
    assert_int_equal(mxm_st_open(pj(in, "model.safetensors"), &fi), MXM_OK);
    assert_int_equal(mxm_st_count(fo), mxm_st_count(fr));
    int64_t diff = 0, nscales = 0;
    for (int64_t i = 0; i < mxm_st_count(fr); i++) {
        const mxm_st_tensor *r = mxm_st_at(fr, i);
        const mxm_st_tensor *o = mxm_st_find(fo, r->name);
        assert_non_null(o);
        assert_string_equal(o->dtype_str, r->dtype_str);
        assert_int_equal(o->rank, r->rank);
        assert_memory_equal(o->shape, r->shape, sizeof o->shape);
        assert_int_equal(o->offset, r->offset); /* same layout */
        const size_t l = strlen(r->name);
        if (l > 13 && strcmp(r->name + l - 13, ".weight_scale") == 0) {
            const uint8_t *a = o->data, *b = r->data;
            for (int64_t k = 0; k < r->nbytes; k++) {
                diff += a[k] != b[k];
                assert_true(a[k] == b[k] || a[k] + 1 == b[k]); /* FLOOR <= RCEIL, by <= 1 */
            }
            nscales += r->nbytes;
        } else if (r->dtype == MXM_DT_E4M3) {
            /* recompute from the BF16 input */
            const mxm_st_tensor *src = mxm_st_find(fi, r->name);
            assert_non_null(src);
            char sname[512];
            snprintf(sname, sizeof sname, "%s_scale", r->name);
            const mxm_st_tensor *os = mxm_st_find(fo, sname);
            assert_non_null(os);
            const int64_t n = src->shape[0], k = src->shape[1];
            uint8_t *q = tu_alloc((size_t)(n * k)), *s = tu_alloc((size_t)(n * k / 32));
            assert_int_equal(
                mxm_mxfp8_quantize(src->data, MXM_DT_BF16, n, k, 0, q, s, MXM_SCALE_FLOOR, 1),
                MXM_OK);
            assert_memory_equal(q, o->data, (size_t)(n * k));
            assert_memory_equal(s, os->data, (size_t)(n * k / 32));
            free(q);
            free(s);
        } else {
            assert_int_equal(o->nbytes, r->nbytes);
            assert_memory_equal(o->data, r->data, (size_t)r->nbytes);
        }
    }
    assert_true(nscales > 0);
    assert_true(diff > 0);
    print_message("FLOOR vs RCEIL: %lld of %lld scale bytes differ\n", (long long)diff,
                  (long long)nscales);
    mxm_st_close(fo);
    mxm_st_close(fr);
    mxm_st_close(fi);
}

/* ------------------------------------------------------------------------------------------ */
/* sharded input -> sharded output with the same tensors as the single-file output */

static void test_sharded(void **state) {
    (void)state;
    char src[1024], fx[1024], in[1024], out[1024];
    snprintf(src, sizeof src, "%s", data_dir("nemotron_h_tiny"));
    snprintf(fx, sizeof fx, "%s", data_dir("nemotron_h_tiny_mxfp8"));
    snprintf(in, sizeof in, "%s/sharded_in", g_dir);
    snprintf(out, sizeof out, "%s/sharded_out", g_dir);
    assert_int_equal(mkdir(in, 0755), 0);
    static const char *const shard[2] = {"model-00001-of-00002.safetensors",
                                         "model-00002-of-00002.safetensors"};
    mxm_st_file *f;
    assert_int_equal(mxm_st_open(pj(src, "model.safetensors"), &f), MXM_OK);
    mxm_st_writer *w[2];
    json_t *wm = json_object();
    for (int s = 0; s < 2; s++) {
        assert_int_equal(mxm_st_writer_create(pj(in, shard[s]), &w[s]), MXM_OK);
        assert_int_equal(mxm_st_writer_set_metadata(w[s], "format", "pt"), MXM_OK);
    }
    int64_t total = 0;
    for (int64_t i = 0; i < mxm_st_count(f); i++) {
        const mxm_st_tensor *t = mxm_st_at(f, i);
        const int s = (int)(i % 2);
        assert_int_equal(
            mxm_st_writer_add(w[s], t->name, t->dtype_str, t->rank, t->shape, t->data, t->nbytes),
            MXM_OK);
        json_object_set_new(wm, t->name, json_string(shard[s]));
        total += t->nbytes;
    }
    for (int s = 0; s < 2; s++)
        assert_int_equal(mxm_st_writer_finish(w[s]), MXM_OK);
    json_t *idx =
        json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total, "weight_map", wm);
    assert_int_equal(json_dump_file(idx, pj(in, "model.safetensors.index.json"), JSON_INDENT(2)),
                     0);
    json_decref(idx);
    mxm_st_close(f);
    copy_file(pj(src, "config.json"), pj(in, "config.json"));
    copy_file(pj(src, "generation_config.json"), pj(in, "generation_config.json"));

    prog p = prog_new();
    const mxm_status st = quantize_experts(in, out, MXM_SCALE_RCEIL, 2, prog_cb, &p);
    if (st != MXM_OK) print_error("%s\n", mxm_last_error());
    assert_int_equal(st, MXM_OK);
    assert_int_equal(p.last_done, total);
    assert_true(p.monotone);
    assert_false(exists(pj(out, "model.safetensors")));
    assert_true(exists(pj(out, shard[0])));
    assert_true(exists(pj(out, shard[1])));
    assert_int_equal(count_files(out, ""), 6); /* 2 shards, index, config, hf_quant, generation */
    assert_true(json_files_equal(pj(out, "config.json"), pj(fx, "config.json")));
    assert_true(json_files_equal(pj(out, "hf_quant_config.json"), pj(fx, "hf_quant_config.json")));
    assert_true(files_equal(pj(out, "generation_config.json"), pj(src, "generation_config.json")));

    /* same tensors as the single-file output (the fixture) */
    mxm_st_model *m;
    assert_int_equal(mxm_st_model_open(out, &m), MXM_OK);
    mxm_st_file *ref;
    assert_int_equal(mxm_st_open(pj(fx, "model.safetensors"), &ref), MXM_OK);
    assert_int_equal(mxm_st_model_count(m), mxm_st_count(ref));
    assert_int_equal(mxm_st_model_file_count(m), 2);
    int64_t out_total = 0;
    for (int64_t i = 0; i < mxm_st_count(ref); i++) {
        const mxm_st_tensor *r = mxm_st_at(ref, i);
        const mxm_st_file *sf;
        const mxm_st_tensor *o = mxm_st_model_find(m, r->name, &sf);
        assert_non_null(o);
        assert_string_equal(o->dtype_str, r->dtype_str);
        assert_int_equal(o->rank, r->rank);
        assert_memory_equal(o->shape, r->shape, sizeof o->shape);
        assert_int_equal(o->nbytes, r->nbytes);
        assert_memory_equal(o->data, r->data, (size_t)r->nbytes);
        out_total += o->nbytes;
        /* a scale lives in its weight's shard */
        const size_t l = strlen(r->name);
        if (l > 6 && strcmp(r->name + l - 6, "_scale") == 0) {
            char wname[512];
            snprintf(wname, sizeof wname, "%.*s", (int)(l - 6), r->name);
            const mxm_st_file *wf;
            assert_non_null(mxm_st_model_find(m, wname, &wf));
            assert_ptr_equal(wf, sf);
        }
    }
    /* index: total_size updated, every tensor listed */
    json_error_t je;
    json_t *oi = json_load_file(pj(out, "model.safetensors.index.json"), 0, &je);
    assert_non_null(oi);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(oi, "metadata"), "total_size")),
        out_total);
    assert_int_equal(json_object_size(json_object_get(oi, "weight_map")), mxm_st_count(ref));
    json_decref(oi);
    mxm_st_close(ref);
    mxm_st_model_close(m);
}

/* ------------------------------------------------------------------------------------------ */
/* F16 and F32 experts, another model_type, bare Infinity in config.json, the exclude list */

static uint16_t bf16_of(float x) {
    return mxm_bf16_from_f32(x);
}

static void test_other_dtypes_and_names(void **state) {
    (void)state;
    char in[1024], out[1024];
    snprintf(in, sizeof in, "%s/gen_in", g_dir);
    snprintf(out, sizeof out, "%s/gen_out", g_dir);
    assert_int_equal(mkdir(in, 0755), 0);
    static const char cfg[] =
        "{\n    \"model_type\": \"my_moe\",\n    \"limits\": [0.0, Infinity, -Infinity, NaN],\n"
        "    \"note\": \"NaN and Infinity in a string\"\n}\n";
    write_all(pj(in, "config.json"), cfg, sizeof cfg - 1);
    write_all(pj(in, "tokenizer.json"), "{\"x\": 1}", 8);

    tu_rng r = tu_rng_fresh();
    enum { H = 64, I = 32 };
    float *up = tu_alloc(8 * H * sizeof(float));
    tu_fill_blockscaled_f32(&r, up, 8 * H, 20, 20);
    up[5] = 0x1p-140f; /* a subnormal-range value in a block of its own scale */
    /* F16 codes (finite, subnormals included) and their values, decoded independently */
    uint16_t *down16 = tu_alloc(H * I * 2);
    float *down32 = tu_alloc(H * I * sizeof(float));
    for (int i = 0; i < H * I; i++) {
        const uint16_t e = (uint16_t)tu_randint(&r, 0, 30), m = (uint16_t)tu_randint(&r, 0, 1023);
        const uint16_t s = (uint16_t)(tu_randint(&r, 0, 1) << 15);
        down16[i] = (uint16_t)(s | (e << 10) | m);
        const double v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
        down32[i] = (float)(s ? -v : v);
    }
    uint16_t *sh = tu_alloc(16 * H * 2), *attn = tu_alloc(32 * H * 2), *sg = tu_alloc(H * 2);
    uint16_t *norm = tu_alloc(H * 2), *lm = tu_alloc(16 * H * 2);
    float *router = tu_alloc(2 * H * sizeof(float));
    for (int i = 0; i < 16 * H; i++)
        sh[i] = bf16_of((float)tu_normal(&r));
    for (int i = 0; i < 32 * H; i++)
        attn[i] = bf16_of((float)tu_normal(&r));
    for (int i = 0; i < H; i++)
        sg[i] = norm[i] = bf16_of((float)tu_normal(&r));
    for (int i = 0; i < 16 * H; i++)
        lm[i] = bf16_of((float)tu_normal(&r));
    for (int i = 0; i < 2 * H; i++)
        router[i] = (float)tu_normal(&r);

    mxm_st_writer *w;
    assert_int_equal(mxm_st_writer_create(pj(in, "model.safetensors"), &w), MXM_OK);
    const int64_t s_up[2] = {8, H}, s_down[2] = {H, I}, s_sh[2] = {16, H}, s_attn[2] = {32, H};
    const int64_t s_sg[2] = {1, H}, s_norm[1] = {H}, s_lm[2] = {16, H}, s_router[2] = {2, H};
    assert_int_equal(mxm_st_writer_add(w, "model.layers.0.block.experts.0.up_proj.weight", "F32", 2,
                                       s_up, up, 8 * H * 4),
                     MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "model.layers.0.block.experts.0.down_proj.weight", "F16",
                                       2, s_down, down16, H * I * 2),
                     MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "model.layers.0.block.shared_expert.gate_proj.weight",
                                       "BF16", 2, s_sh, sh, 16 * H * 2),
                     MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "model.layers.0.block.shared_expert_gate.weight", "BF16",
                                       2, s_sg, sg, H * 2),
                     MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "model.layers.0.block.gate.weight", "F32", 2, s_router,
                                       router, 2 * H * 4),
                     MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "model.layers.0.attn.qkv_proj.weight", "BF16", 2, s_attn,
                                       attn, 32 * H * 2),
                     MXM_OK);
    assert_int_equal(
        mxm_st_writer_add(w, "model.layers.0.norm.weight", "BF16", 1, s_norm, norm, H * 2), MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "lm_head.weight", "BF16", 2, s_lm, lm, 16 * H * 2),
                     MXM_OK);
    assert_int_equal(mxm_st_writer_finish(w), MXM_OK);

    const mxm_status st = quantize_experts(in, out, MXM_SCALE_RCEIL, 1, NULL, NULL);
    if (st != MXM_OK) print_error("%s\n", mxm_last_error());
    assert_int_equal(st, MXM_OK);

    mxm_st_file *f;
    assert_int_equal(mxm_st_open(pj(out, "model.safetensors"), &f), MXM_OK);
    assert_int_equal(mxm_st_count(f), 11);
    struct {
        const char *name;
        const float *x32;
        int64_t n, k;
    } q[] = {{"model.layers.0.block.experts.0.up_proj.weight", up, 8, H},
             {"model.layers.0.block.experts.0.down_proj.weight", down32, H, I},
             {"model.layers.0.block.shared_expert.gate_proj.weight", NULL, 16, H}};
    float *sh32 = tu_alloc(16 * H * sizeof(float));
    for (int i = 0; i < 16 * H; i++)
        sh32[i] = mxm_bf16_to_f32(sh[i]);
    q[2].x32 = sh32;
    for (int i = 0; i < 3; i++) {
        char sname[256];
        snprintf(sname, sizeof sname, "%s_scale", q[i].name);
        const mxm_st_tensor *tq = mxm_st_find(f, q[i].name), *ts = mxm_st_find(f, sname);
        assert_non_null(tq);
        assert_non_null(ts);
        assert_string_equal(tq->dtype_str, "F8_E4M3");
        assert_string_equal(ts->dtype_str, "U8");
        assert_int_equal(ts->shape[0], q[i].n);
        assert_int_equal(ts->shape[1], q[i].k / 32);
        uint8_t *eq = tu_alloc((size_t)(q[i].n * q[i].k)),
                *es = tu_alloc((size_t)(q[i].n * q[i].k / 32));
        assert_int_equal(
            mxm_mxfp8_quantize(q[i].x32, MXM_DT_F32, q[i].n, q[i].k, 0, eq, es, MXM_SCALE_RCEIL, 1),
            MXM_OK);
        assert_memory_equal(eq, tq->data, (size_t)(q[i].n * q[i].k));
        assert_memory_equal(es, ts->data, (size_t)(q[i].n * q[i].k / 32));
        free(eq);
        free(es);
    }
    /* unquantized: same dtype and bytes */
    const mxm_st_tensor *t = mxm_st_find(f, "model.layers.0.block.gate.weight");
    assert_non_null(t);
    assert_string_equal(t->dtype_str, "F32");
    assert_memory_equal(t->data, router, 2 * H * 4);
    t = mxm_st_find(f, "model.layers.0.block.shared_expert_gate.weight");
    assert_non_null(t);
    assert_string_equal(t->dtype_str, "BF16");
    assert_memory_equal(t->data, sg, H * 2);
    t = mxm_st_find(f, "model.layers.0.attn.qkv_proj.weight");
    assert_non_null(t);
    assert_memory_equal(t->data, attn, 32 * H * 2);
    mxm_st_close(f);

    /* config.json: the input text kept, quantization_config added, the bare Infinity/NaN
     * written as valid JSON (strings untouched) */
    size_t n;
    char *c = (char *)read_all(pj(out, "config.json"), &n);
    assert_non_null(strstr(c, "[0.0, 1e999, -1e999, null]"));
    assert_non_null(strstr(c, "\"NaN and Infinity in a string\""));
    assert_non_null(strstr(c, "\"quantization_config\""));
    free(c);
    json_error_t je;
    json_t *h = json_load_file(pj(out, "hf_quant_config.json"), 0, &je);
    assert_non_null(h);
    json_t *want = json_pack("[s, s, s, s]", "lm_head", "model.layers.0.block.gate",
                             "model.layers.0.attn*", "model.layers.0.block.shared_expert_gate");
    json_t *got = json_object_get(json_object_get(h, "quantization"), "exclude_modules");
    if (!json_equal(want, got)) {
        char *s = json_dumps(got, 0);
        print_error("exclude_modules %s\n", s);
        free(s);
    }
    assert_true(json_equal(want, got));
    json_decref(want);
    json_decref(h);
    assert_true(files_equal(pj(out, "tokenizer.json"), pj(in, "tokenizer.json")));

    free(up);
    free(down16);
    free(down32);
    free(sh);
    free(sh32);
    free(attn);
    free(sg);
    free(norm);
    free(lm);
    free(router);
}

/* ------------------------------------------------------------------------------------------ */
/* a file whose data start is not aligned (header length not a multiple of 8): BF16 and F32
 * weights read through a copy, same result as from aligned memory */

static void test_unaligned_input(void **state) {
    (void)state;
    char in[1024], out[1024];
    snprintf(in, sizeof in, "%s/unaligned_in", g_dir);
    snprintf(out, sizeof out, "%s/unaligned_out", g_dir);
    assert_int_equal(mkdir(in, 0755), 0);
    write_all(pj(in, "config.json"), "{\"model_type\": \"qwen3_moe\"}", 27);
    tu_rng r = tu_rng_fresh();
    enum { N1 = 4, K1 = 64, N2 = 64, K2 = 32 };
    uint16_t *a = tu_alloc(N1 * K1 * 2);
    float *b = tu_alloc(N2 * K2 * 4);
    for (int i = 0; i < N1 * K1; i++)
        a[i] = bf16_of((float)tu_normal(&r));
    tu_fill_blockscaled_f32(&r, b, N2 * K2, 10, 10);
    char hdr[512];
    int h =
        snprintf(hdr, sizeof hdr,
                 "{\"model.layers.0.mlp.experts.0.up_proj.weight\":{\"dtype\":\"BF16\",\"shape\":"
                 "[%d,%d],\"data_offsets\":[0,%d]},\"model.layers.0.mlp.experts.0.down_proj."
                 "weight\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[%d,%d]}}",
                 N1, K1, N1 * K1 * 2, N2, K2, N1 * K1 * 2, N1 * K1 * 2 + N2 * K2 * 4);
    while ((8 + h) % 4 != 1)
        hdr[h++] = ' '; /* data start = 1 mod 4 */
    const size_t total = 8 + (size_t)h + N1 * K1 * 2 + N2 * K2 * 4;
    uint8_t *file = tu_alloc(total);
    for (int i = 0; i < 8; i++)
        file[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(file + 8, hdr, (size_t)h);
    memcpy(file + 8 + h, a, N1 * K1 * 2);
    memcpy(file + 8 + h + N1 * K1 * 2, b, N2 * K2 * 4);
    write_all(pj(in, "model.safetensors"), file, total);
    free(file);

    const mxm_status st = mxm_checkpoint_quantize(in, out, MXM_SCALE_RCEIL, 2, NULL, NULL);
    if (st != MXM_OK) print_error("%s\n", mxm_last_error());
    assert_int_equal(st, MXM_OK);
    mxm_st_file *f;
    assert_int_equal(mxm_st_open(pj(out, "model.safetensors"), &f), MXM_OK);
    uint8_t q[N2 * K2], s[N2 * K2 / 32];
    assert_int_equal(mxm_mxfp8_quantize(a, MXM_DT_BF16, N1, K1, 0, q, s, MXM_SCALE_RCEIL, 1),
                     MXM_OK);
    const mxm_st_tensor *t = mxm_st_find(f, "model.layers.0.mlp.experts.0.up_proj.weight");
    assert_non_null(t);
    assert_memory_equal(t->data, q, N1 * K1);
    t = mxm_st_find(f, "model.layers.0.mlp.experts.0.up_proj.weight_scale");
    assert_non_null(t);
    assert_memory_equal(t->data, s, N1 * K1 / 32);
    assert_int_equal(mxm_mxfp8_quantize(b, MXM_DT_F32, N2, K2, 0, q, s, MXM_SCALE_RCEIL, 1),
                     MXM_OK);
    t = mxm_st_find(f, "model.layers.0.mlp.experts.0.down_proj.weight");
    assert_non_null(t);
    assert_memory_equal(t->data, q, N2 * K2);
    t = mxm_st_find(f, "model.layers.0.mlp.experts.0.down_proj.weight_scale");
    assert_non_null(t);
    assert_memory_equal(t->data, s, N2 * K2 / 32);
    mxm_st_close(f);
    free(a);
    free(b);
}

/* ------------------------------------------------------------------------------------------ */
/* errors */

static void test_errors(void **state) {
    (void)state;
    char src[1024], out[1024], same[1024], bad[1024], bout[1024], nocfg[1024];
    snprintf(src, sizeof src, "%s", data_dir("nemotron_h_tiny"));
    snprintf(out, sizeof out, "%s/err_out", g_dir);
    snprintf(same, sizeof same, "%s/same", g_dir);
    snprintf(bad, sizeof bad, "%s/badk", g_dir);
    snprintf(bout, sizeof bout, "%s/badk_out", g_dir);
    snprintf(nocfg, sizeof nocfg, "%s/nocfg", g_dir);

    assert_int_equal(mxm_checkpoint_quantize(NULL, out, 0, 0, NULL, NULL), MXM_ERR_NULL);
    assert_int_equal(mxm_checkpoint_quantize(src, NULL, 0, 0, NULL, NULL), MXM_ERR_NULL);
    assert_int_equal(mxm_checkpoint_quantize(src, out, 7, 0, NULL, NULL), MXM_ERR_INVALID_ARG);
    assert_int_equal(mxm_checkpoint_quantize(src, out, 0, -1, NULL, NULL), MXM_ERR_INVALID_ARG);
    mxm_quantize_options qo;
    mxm_quantize_options_default(&qo);
    assert_int_equal(qo.scope, MXM_QUANTIZE_MODELOPT);
    assert_int_equal(qo.scale_rule, MXM_SCALE_RCEIL);
    qo.scope = 2;
    assert_int_equal(mxm_checkpoint_quantize_ex(src, out, &qo, NULL, NULL), MXM_ERR_INVALID_ARG);
    assert_non_null(strstr(mxm_last_error(), "supported: modelopt (0), experts (1)"));

    /* missing input */
    mxm_status st = mxm_checkpoint_quantize(pj(g_dir, "no_such_dir"), out, 0, 0, NULL, NULL);
    assert_true(st == MXM_ERR_NOT_FOUND || st == MXM_ERR_IO);
    assert_non_null(strstr(mxm_last_error(), "no_such_dir"));
    assert_false(exists(out));

    /* already quantized */
    st = mxm_checkpoint_quantize(data_dir("nemotron_h_tiny_mxfp8"), out, 0, 0, NULL, NULL);
    assert_int_equal(st, MXM_ERR_UNSUPPORTED);
    assert_false(exists(out));

    /* out_dir == in_dir (a copy of the fixture, so that a bug cannot touch the repository) */
    assert_int_equal(mkdir(same, 0755), 0);
    copy_file(pj(src, "config.json"), pj(same, "config.json"));
    copy_file(pj(src, "model.safetensors"), pj(same, "model.safetensors"));
    assert_int_equal(mxm_checkpoint_quantize(same, same, 0, 0, NULL, NULL), MXM_ERR_INVALID_ARG);
    assert_int_equal(mxm_checkpoint_quantize(same, pj(same, "."), 0, 0, NULL, NULL),
                     MXM_ERR_INVALID_ARG);
    assert_int_equal(count_files(same, ""), 2);
    assert_true(files_equal(pj(same, "model.safetensors"), pj(src, "model.safetensors")));

    /* cancel from the progress callback: error, and nothing left in out_dir */
    for (int64_t at = 1; at <= 20; at += 19) {
        prog p = prog_new();
        p.cancel_at = at;
        st = mxm_checkpoint_quantize(src, out, 0, 2, prog_cb, &p);
        assert_int_equal(st, MXM_ERR_INVALID_ARG);
        assert_non_null(strstr(mxm_last_error(), "cancelled"));
        assert_int_equal(p.calls, at);
        assert_false(exists(pj(out, "model.safetensors")));
        assert_false(exists(out)); /* out_dir appears only with the final rename */
        assert_int_equal(count_containing(g_dir, ".tmp."), 0); /* nor the staging folder */
    }

    /* out_dir not empty: refused before any work, its files untouched; an empty one is used */
    assert_int_equal(mkdir(out, 0755), 0);
    write_all(pj(out, "model.safetensors.index.json"), "{}", 2);
    st = mxm_checkpoint_quantize(src, out, 0, 0, NULL, NULL);
    assert_int_equal(st, MXM_ERR_INVALID_ARG);
    assert_non_null(strstr(mxm_last_error(), "not empty"));
    assert_int_equal(count_files(out, ""), 1);
    assert_int_equal(unlink(pj(out, "model.safetensors.index.json")), 0);
    assert_int_equal(mxm_checkpoint_quantize(src, out, 0, 0, NULL, NULL), MXM_OK);
    assert_true(exists(pj(out, "config.json")));
    assert_int_equal(mxm_checkpoint_quantize(src, out, 0, 0, NULL, NULL), MXM_ERR_INVALID_ARG);

    /* K not a multiple of 32 */
    assert_int_equal(mkdir(bad, 0755), 0);
    write_all(pj(bad, "config.json"), "{\"model_type\": \"qwen3_moe\"}", 27);
    uint16_t *wbuf = tu_alloc(64 * 64 * 2);
    for (int i = 0; i < 64 * 64; i++)
        wbuf[i] = bf16_of((float)(i % 7) - 3.0f);
    mxm_st_writer *w;
    assert_int_equal(mxm_st_writer_create(pj(bad, "model.safetensors"), &w), MXM_OK);
    const int64_t good[2] = {64, 64}, badk[2] = {64, 48};
    assert_int_equal(mxm_st_writer_add(w, "model.layers.0.mlp.experts.0.up_proj.weight", "BF16", 2,
                                       good, wbuf, 64 * 64 * 2),
                     MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "model.layers.0.mlp.experts.0.down_proj.weight", "BF16",
                                       2, badk, wbuf, 64 * 48 * 2),
                     MXM_OK);
    assert_int_equal(mxm_st_writer_finish(w), MXM_OK);
    st = mxm_checkpoint_quantize(bad, bout, 0, 0, NULL, NULL);
    assert_int_equal(st, MXM_ERR_SHAPE);
    assert_non_null(strstr(mxm_last_error(), "model.layers.0.mlp.experts.0.down_proj.weight"));
    assert_false(exists(pj(bout, "model.safetensors")));
    free(wbuf);

    /* no config.json */
    assert_int_equal(mkdir(nocfg, 0755), 0);
    copy_file(pj(src, "model.safetensors"), pj(nocfg, "model.safetensors"));
    st = mxm_checkpoint_quantize(nocfg, pj(g_dir, "nocfg_out"), 0, 0, NULL, NULL);
    assert_int_equal(st, MXM_ERR_NOT_FOUND);
    assert_non_null(strstr(mxm_last_error(), "config.json"));
}

/* The quantizer reads config.json with the checkpoint loader's reader (json_text.h): for every
 * text below, both accept it (Python's bare NaN/Infinity and the 1e999 the quantizer itself
 * writes), or both reject it with the same message (NUL outside an exclude list, duplicate keys,
 * not an object, over the size limit). The quantizer used to read NaN as 0 and refuse 1e999. */
static void test_config_reader_agrees(void **state) {
    (void)state;
    const char *src = data_dir("qwen3_moe_tiny");
    size_t n;
    char *orig = (char *)read_all(pj(src, "config.json"), &n);
    assert_non_null(orig);
    assert_true(orig[0] == '{');
    static const struct {
        const char *insert; /* after the opening '{'; NULL: the whole file is `whole` */
        const char *whole;
        int pad_mb;        /* that many MiB of spaces after the insert */
        const char *error; /* NULL: accepted */
    } cases[] = {
        {"\"py\": [NaN, Infinity, -Infinity], \"big\": [1e999, -1e999],", NULL, 0, NULL},
        {"\"note\": \"NaN in a string\", \"limit\": NaN,", NULL, 0, NULL},
        {"\"bad\": \"x\\u0000y\",", NULL, 0, "'bad' holds a string with \\u0000"},
        {"\"model_type\": \"qwen3_moe\",", NULL, 0, "duplicate"},
        {NULL, "[1, NaN]", 0, "not a JSON object"},
        {"", NULL, 9, "config.json"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char in[1024], out[1024];
        snprintf(in, sizeof in, "%s/cfg_agree_%zu", g_dir, i);
        snprintf(out, sizeof out, "%s/cfg_agree_%zu_out", g_dir, i);
        assert_int_equal(mkdir(in, 0755), 0);
        copy_file(pj(src, "model.safetensors"), pj(in, "model.safetensors"));
        if (cases[i].whole) {
            write_all(pj(in, "config.json"), cases[i].whole, strlen(cases[i].whole));
        } else {
            const size_t ni = strlen(cases[i].insert), pad = (size_t)cases[i].pad_mb << 20;
            char *c = tu_alloc(n + ni + pad + 1);
            c[0] = '{';
            memcpy(c + 1, cases[i].insert, ni);
            memset(c + 1 + ni, ' ', pad);
            memcpy(c + 1 + ni + pad, orig + 1, n - 1);
            write_all(pj(in, "config.json"), c, n + ni + pad);
            free(c);
        }
        const mxm_status sq = mxm_checkpoint_quantize(in, out, MXM_SCALE_RCEIL, 2, NULL, NULL);
        char eq[1024];
        snprintf(eq, sizeof eq, "%s", sq ? mxm_last_error() : "");
        mxm_model *m = NULL;
        const mxm_status sl = mxm_model_open(in, &m);
        printf("config %zu: quantize %s %s | load %s %s\n", i, mxm_status_str(sq), eq,
               mxm_status_str(sl), sl ? mxm_last_error() : "");
        if (!cases[i].error) {
            assert_int_equal(sq, MXM_OK);
            assert_int_equal(sl, MXM_OK);
            mxm_model_close(m);
            mxm_model *q = NULL; /* and the quantized checkpoint loads */
            assert_int_equal(mxm_model_open(out, &q), MXM_OK);
            mxm_model_close(q);
            continue;
        }
        assert_int_equal(sq, MXM_ERR_FORMAT);
        assert_int_equal(sl, MXM_ERR_FORMAT);
        assert_null(m);
        assert_string_equal(eq, mxm_last_error());
        assert_non_null(strstr(eq, cases[i].error));
        assert_false(exists(out));
    }
    free(orig);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_modelopt_nemotron_h),
        cmocka_unit_test(test_modelopt_qwen3_moe),
        cmocka_unit_test(test_modelopt_deepseek_v3),
        cmocka_unit_test(test_modelopt_hybrid),
        cmocka_unit_test(test_nemotron_h),
        cmocka_unit_test(test_qwen3_moe),
        cmocka_unit_test(test_deepseek_v3),
        cmocka_unit_test(test_floor),
        cmocka_unit_test(test_sharded),
        cmocka_unit_test(test_other_dtypes_and_names),
        cmocka_unit_test(test_unaligned_input),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_config_reader_agrees),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
