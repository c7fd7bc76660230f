/* Hugging Face MoE checkpoints (SPEC section 6): family and MoE parameters from config.json,
 * weight format from the quantization config and the tensors, MoE layers found by their router
 * tensors, and layers loaded as mxm_moe_weights (mmap views where possible). Everything read
 * from the files is checked (names, dtypes, shapes) before it is used. */
#include <fnmatch.h>
#include <jansson.h>
#include <omp.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/core.h"
#include "formats/formats.h"
#include "io/ckpt_family.h"
#include "io/json_text.h"
#include "io/safetensors.h"
#include "moe/activation.h"
#include "moe/plan.h"

struct mxm_model {
    char *path;
    mxm_st_model *st;
    json_t *config;
    const mxm_ckpt_family *family; /* NULL: not a known family */
    int32_t wfmt;
    mxm_moe_config base; /* MoE parameters from config.json */
    int32_t n_layers;
    int32_t *layers;
    char **exclude; /* ModelOpt exclude list, each entry cut at "\u0000" (modelopt_entry) */
    int32_t n_exclude;
};

/* ---- config.json ------------------------------------------------------------------------------ */

/* A ModelOpt exclude entry as a module pattern: cut at the first U+0000 and drop the '.' before
 * it ("lm_head.\u0000backbone.pt_name_sentinel" -> "lm_head"). Entries without U+0000 are
 * returned as they are. NULL when out of memory. */
static char *modelopt_entry(const json_t *s) {
    const char *v = json_string_value(s);
    size_t n = strlen(v);
    if (n < json_string_length(s) && n > 0 && v[n - 1] == '.') n--;
    char *e = malloc(n + 1);
    if (e) memcpy(e, v, n), e[n] = 0;
    return e;
}

/* Reads the exclude list (hf_quant_config.json's, else config.json's) into m->exclude. */
static mxm_status load_exclude(mxm_model *m, json_t *hq) {
    json_t *l = hq ? mxm_json_modelopt_exclude(hq) : NULL;
    const char *where = "hf_quant_config.json: quantization.exclude_modules";
    if (!l) {
        l = mxm_json_modelopt_exclude(m->config);
        where = "config.json: quantization_config.ignore";
    }
    if (!l || json_is_null(l)) return MXM_OK;
    if (!json_is_array(l)) return mxm_fail(MXM_ERR_FORMAT, "%s/%s is not a list", m->path, where);
    m->exclude = calloc(json_array_size(l) + 1, sizeof *m->exclude);
    if (!m->exclude) return mxm_fail(MXM_ERR_NOMEM, "out of memory");
    size_t i;
    json_t *e;
    json_array_foreach(l, i, e) {
        if (!json_is_string(e))
            return mxm_fail(MXM_ERR_FORMAT, "%s/%s[%zu] is not a string", m->path, where, i);
        if (!(m->exclude[m->n_exclude] = modelopt_entry(e))) return mxm_fail(MXM_ERR_NOMEM, "out of memory");
        m->n_exclude++;
    }
    return MXM_OK;
}

/* Integer field; def when absent or null; error when present but not an integer in range (a
 * boolean is not an integer: num_experts_per_tok: true is an error, not 1). */
static mxm_status cfg_int(const mxm_model *m, const char *key, int64_t def, int64_t lo, int64_t hi, int32_t *out) {
    json_t *v = json_object_get(m->config, key);
    int64_t x = def;
    if (v && !json_is_null(v)) {
        if (json_is_integer(v)) x = json_integer_value(v);
        else return mxm_fail(MXM_ERR_FORMAT, "%s/config.json: %s is not an integer", m->path, key);
    }
    if (x < lo || x > hi)
        return mxm_fail(MXM_ERR_FORMAT, "%s/config.json: %s=%lld is outside %lld..%lld", m->path, key, (long long)x,
                        (long long)lo, (long long)hi);
    *out = (int32_t)x;
    return MXM_OK;
}

/* Boolean field (true/false, or the integers 0/1 older configs write). */
static mxm_status cfg_bool(const mxm_model *m, const char *key, int32_t def, int32_t *out) {
    json_t *v = json_object_get(m->config, key);
    *out = def;
    if (!v || json_is_null(v)) return MXM_OK;
    if (json_is_boolean(v)) *out = json_is_true(v);
    else if (json_is_integer(v) && (json_integer_value(v) == 0 || json_integer_value(v) == 1))
        *out = (int32_t)json_integer_value(v);
    else return mxm_fail(MXM_ERR_FORMAT, "%s/config.json: %s is not a boolean", m->path, key);
    return MXM_OK;
}

/* String field: NULL when absent or null; error when present with another type. */
static mxm_status cfg_str_checked(const mxm_model *m, const char *key, const char **out) {
    json_t *v = json_object_get(m->config, key);
    *out = json_is_string(v) ? json_string_value(v) : NULL;
    if (v && !json_is_null(v) && !json_is_string(v))
        return mxm_fail(MXM_ERR_FORMAT, "%s/config.json: %s is not a string", m->path, key);
    return MXM_OK;
}

/* The first key present (not null), whatever its type: a mistyped one is reported by name. */
static int64_t first_present(const mxm_model *m, const char *const *keys) {
    for (int i = 0; keys[i]; i++) {
        json_t *v = json_object_get(m->config, keys[i]);
        if (v && !json_is_null(v)) return i;
    }
    return -1;
}

static mxm_status parse_moe_params(mxm_model *m) {
    mxm_moe_config *c = &m->base;
    mxm_moe_config_default(c);
    mxm_status st;
    const int32_t BIG = 1 << 24;
    if ((st = cfg_int(m, "hidden_size", 0, 1, 1 << 17, &c->hidden_size))) return st;
    if ((st = cfg_int(m, "moe_intermediate_size", 0, 1, BIG, &c->intermediate_size))) return st;
    static const char *const ekeys[] = {"n_routed_experts", "num_experts", "num_local_experts", NULL};
    const int64_t ek = first_present(m, ekeys);
    if (ek < 0) return mxm_fail(MXM_ERR_FORMAT, "%s/config.json: no n_routed_experts, num_experts or num_local_experts", m->path);
    if ((st = cfg_int(m, ekeys[ek], 0, 1, BIG, &c->num_experts))) return st;
    if ((st = cfg_int(m, "num_experts_per_tok", 0, 1, c->num_experts, &c->top_k))) return st;
    int32_t ng = 1, tg = 1, norm = 1;
    if ((st = cfg_int(m, "n_group", 1, 0, c->num_experts, &ng))) return st;
    if ((st = cfg_int(m, "topk_group", 1, 0, c->num_experts, &tg))) return st;
    if ((st = cfg_bool(m, "norm_topk_prob", 1, &norm))) return st;
    json_t *rs = json_object_get(m->config, "routed_scaling_factor");
    c->routed_scaling_factor = 1.0f;
    if (rs && !json_is_null(rs)) {
        const double v = json_is_number(rs) ? json_number_value(rs) : NAN;
        if (!(v > 0 && v <= 1000))
            return mxm_fail(MXM_ERR_FORMAT, "%s/config.json: routed_scaling_factor must be a number in (0, 1000]",
                            m->path);
        c->routed_scaling_factor = (float)v;
    }
    c->norm_topk_prob = norm;
    const mxm_ckpt_family *f = m->family;
    c->activation = f->act_default;
    if (f->act_key) {
        const char *act;
        if ((st = cfg_str_checked(m, f->act_key, &act))) return st;
        if (act) c->activation = mxm_activation_from_name(act);
        if (c->activation < 0)
            return mxm_fail(MXM_ERR_UNSUPPORTED, "%s/config.json: %s '%s' is not supported",
                            m->path, f->act_key, act);
        if (f->plain_mlp && c->activation == MXM_ACT_SILU) c->activation = MXM_ACT_SILU_NO_MUL;
    }
    c->routing_method = f->routing;
    if (f->routing < 0) c->routing_method = norm ? MXM_ROUTE_RENORMALIZE : MXM_ROUTE_DEFAULT;
    if (f->grouped) c->n_group = ng, c->topk_group = tg;
    int32_t nsh = 1;
    if (f->shared_count_key &&
        (st = cfg_int(m, f->shared_count_key, f->shared_count_default, 0, 64, &nsh)))
        return st;
    if (!f->shared_size_key)
        c->shared_intermediate_size = nsh * c->intermediate_size;
    else if (nsh && (st = cfg_int(m, f->shared_size_key, 0, 0, BIG, &c->shared_intermediate_size)))
        return st;
    if (f->shared_gated && c->shared_intermediate_size)
        return mxm_fail(MXM_ERR_UNSUPPORTED,
                        "%s/config.json: %s=%d: a %s shared expert (with its sigmoid gate, as in "
                        "Qwen2-MoE/Qwen3-Next) is not supported",
                        m->path, f->shared_size_key, c->shared_intermediate_size, f->name);
    /* What run would reject, rejected here already, so that inspect and run agree. */
    if ((st = mxm_moe_config_validate(c))) return mxm_fail_context(st, "%s/config.json", m->path);
    return MXM_OK;
}

/* MXFP8 when hf_quant_config.json or config.json's quantization_config says so; DeepSeek FP8
 * when quant_method is fp8; else the expert weights' own dtype. */
static mxm_status detect_format(mxm_model *m) {
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/hf_quant_config.json", m->path);
    mxm_status st;
    json_t *hq = mxm_hf_config_load(p, &st);
    if (!hq && st != MXM_ERR_NOT_FOUND) return st;
    st = MXM_OK;
    const char *algo = NULL, *method = NULL;
    if (hq) {
        json_t *q = json_object_get(hq, "quantization");
        json_t *a = q ? json_object_get(q, "quant_algo") : NULL;
        if (json_is_string(a)) algo = json_string_value(a);
    }
    json_t *qc = json_object_get(m->config, "quantization_config");
    if (json_is_object(qc)) {
        json_t *a = json_object_get(qc, "quant_algo"), *mt = json_object_get(qc, "quant_method");
        if (!algo && json_is_string(a)) algo = json_string_value(a);
        if (json_is_string(mt)) method = json_string_value(mt);
    }
    m->wfmt = -1;
    if (algo && strcmp(algo, "MXFP8") == 0) m->wfmt = MXM_WFMT_MXFP8;
    else if (algo && (!method || strncmp(method, "modelopt", 8) == 0))
        st = mxm_fail(MXM_ERR_UNSUPPORTED, "%s: quantization '%s' is not supported; supported: MXFP8, DeepSeek fp8 block, bf16/f32", m->path, algo);
    else if (method && strcmp(method, "fp8") == 0) m->wfmt = MXM_WFMT_FP8_BLOCK;
    if (!st) st = load_exclude(m, hq);
    json_decref(hq);
    return st;
}

static int cmp_i32(const void *a, const void *b) { return *(const int32_t *)a - *(const int32_t *)b; }

/* MoE layers are those with a router tensor of the family's name pattern. */
static mxm_status find_layers(mxm_model *m) {
    const mxm_ckpt_family *fd = m->family;
    const int64_t n = mxm_st_model_count(m->st);
    m->layers = calloc((size_t)(n > 0 ? n : 1), sizeof(int32_t));
    if (!m->layers) return mxm_fail(MXM_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++) {
        const char *name = mxm_st_model_at(m->st, i)->name;
        int layer = -1, used = 0;
        char fmt[160];
        snprintf(fmt, sizeof fmt, "%s%%n", fd->router);
        if (sscanf(name, fmt, &layer, &used) == 1 && used == (int)strlen(name) && layer >= 0) {
            char canon[256];
            snprintf(canon, sizeof canon, fd->router, layer);
            if (strcmp(canon, name) == 0) m->layers[m->n_layers++] = layer;
        }
    }
    qsort(m->layers, (size_t)m->n_layers, sizeof(int32_t), cmp_i32);
    return MXM_OK;
}

mxm_status mxm_model_open(const char *path, mxm_model **out) {
    if (!path || !out) return mxm_fail(MXM_ERR_NULL, "mxm_model_open: NULL argument");
    *out = NULL;
    mxm_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        return mxm_fail(MXM_ERR_NOMEM, "out of memory");
    }
    mxm_status st = mxm_st_model_open(path, &m->st);
    struct stat sb;
    if (!st && stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/config.json", path);
        m->config = mxm_hf_config_load(p, &st);
        if (st == MXM_ERR_NOT_FOUND) st = MXM_OK; /* tensors only */
        if (m->config) {
            const char *mt = NULL;
            st = cfg_str_checked(m, "model_type", &mt);
            m->family = mxm_ckpt_family_find(mt);
            if (m->family) {
                if (!st) st = parse_moe_params(m);
                if (!st) st = detect_format(m);
                if (!st) st = find_layers(m);
            }
        }
    }
    if (st) {
        mxm_model_close(m);
        return st;
    }
    *out = m;
    return MXM_OK;
}

void mxm_model_close(mxm_model *m) {
    if (!m) return;
    mxm_st_model_close(m->st);
    json_decref(m->config);
    for (int32_t i = 0; i < m->n_exclude; i++) free(m->exclude[i]);
    free(m->exclude);
    free(m->layers);
    free(m->path);
    free(m);
}

const char *mxm_model_family(const mxm_model *m) {
    return m && m->family ? m->family->name : "";
}

int32_t mxm_model_moe_layer_count(const mxm_model *m) { return m ? m->n_layers : 0; }
int32_t mxm_model_moe_layer(const mxm_model *m, int32_t i) {
    return (m && i >= 0 && i < m->n_layers) ? m->layers[i] : -1;
}

int32_t mxm_model_exclude_count(const mxm_model *m) { return m ? m->n_exclude : 0; }

const char *mxm_model_exclude(const mxm_model *m, int32_t i) {
    return (m && i >= 0 && i < m->n_exclude) ? m->exclude[i] : NULL;
}

/* fnmatch as Python's fnmatch.fnmatch (ModelOpt, vLLM): '*' also crosses dots. */
int32_t mxm_model_module_excluded(const mxm_model *m, const char *module) {
    if (!m || !module) return 0;
    for (int32_t i = 0; i < m->n_exclude; i++)
        if (strcmp(m->exclude[i], module) == 0 || fnmatch(m->exclude[i], module, 0) == 0) return 1;
    return 0;
}

const char *mxm_model_metadata(const mxm_model *m, const char *key) {
    if (!m || !key) return NULL;
    for (int64_t i = 0; i < mxm_st_model_file_count(m->st); i++) {
        const char *v = mxm_st_metadata(mxm_st_model_file(m->st, i), key);
        if (v) return v;
    }
    return NULL;
}

int64_t mxm_model_tensor_find(const mxm_model *m, const char *name) {
    if (!m || !name) return -1;
    const int64_t n = mxm_st_model_count(m->st);
    int64_t lo = 0, hi = n - 1; /* _at() is sorted by name */
    while (lo <= hi) {
        const int64_t mid = (lo + hi) / 2;
        const int c = strcmp(mxm_st_model_at(m->st, mid)->name, name);
        if (c == 0) return mid;
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

mxm_status mxm_model_tensor_data(const mxm_model *m, int64_t i, const void **data, int64_t *nbytes) {
    const mxm_st_tensor *t = m ? mxm_st_model_at(m->st, i) : NULL;
    if (!t) return mxm_fail(MXM_ERR_INVALID_ARG, "tensor index %lld out of range", (long long)i);
    if (data) *data = t->data;
    if (nbytes) *nbytes = t->nbytes;
    return MXM_OK;
}

mxm_status mxm_safetensors_write(const char *path, const mxm_tensor_out *t, int64_t n) {
    if (!path || (n > 0 && !t)) return mxm_fail(MXM_ERR_NULL, "mxm_safetensors_write: NULL argument");
    if (n < 0) return mxm_fail(MXM_ERR_INVALID_ARG, "mxm_safetensors_write: n=%lld tensors", (long long)n);
    mxm_st_writer *w;
    mxm_status st = mxm_st_writer_create(path, &w);
    if (st) return st;
    for (int64_t i = 0; i < n; i++) {
        int32_t esz = 0;
        if (mxm_st_dtype_from_str(t[i].dtype, &esz) == -2) {
            mxm_st_writer_abort(w);
            return mxm_fail(MXM_ERR_DTYPE, "%s: tensor '%s': unknown dtype '%s'", path, t[i].name, t[i].dtype);
        }
        int64_t numel = 1;
        for (int r = 0; r < t[i].rank && r < 8; r++) numel = mxm_mul3_i64(numel, t[i].shape[r], 1);
        const int64_t nbytes = mxm_mul3_i64(numel, esz, 1);
        if ((st = mxm_st_writer_add(w, t[i].name, t[i].dtype, t[i].rank, t[i].shape, t[i].data, nbytes))) {
            mxm_st_writer_abort(w);
            return st;
        }
    }
    return mxm_st_writer_finish(w);
}

int64_t mxm_model_tensor_count(const mxm_model *m) { return m ? mxm_st_model_count(m->st) : 0; }

mxm_status mxm_model_tensor_info(const mxm_model *m, int64_t i, const char **name, const char **dtype,
                                 int32_t *rank, int64_t shape[8]) {
    if (!m) return mxm_fail(MXM_ERR_NULL, "mxm_model_tensor_info: model is NULL");
    const mxm_st_tensor *t = mxm_st_model_at(m->st, i);
    if (!t) return mxm_fail(MXM_ERR_INVALID_ARG, "tensor index %lld out of range", (long long)i);
    if (name) *name = t->name;
    if (dtype) *dtype = t->dtype_str;
    if (rank) *rank = t->rank;
    if (shape) memcpy(shape, t->shape, sizeof t->shape);
    return MXM_OK;
}

/* ---- layers --------------------------------------------------------------------------------------- */

struct mxm_layer {
    mxm_moe_config cfg;
    mxm_moe_weights weights;
    mxm_expert_weights *experts; /* [E + 1]: routed, then shared */
    float *router;               /* [E, H] */
    float *bias;                 /* [E] or NULL */
    int router_bf16;
    int64_t weight_bytes;
    void **owned;                /* buffers to free */
    int64_t n_owned, cap_owned;
};

void mxm_layer_options_default(mxm_layer_options *o) {
    if (!o) return;
    o->weight_format = -1;
    o->scale_rule = MXM_SCALE_RCEIL;
    o->num_threads = 0;
    o->profile = MXM_PROFILE_TRTLLM;
}

static void *layer_alloc(mxm_layer *l, int64_t bytes) {
    if (l->n_owned == l->cap_owned) {
        const int64_t cap = l->cap_owned ? 2 * l->cap_owned : 64;
        void **o = realloc(l->owned, sizeof(void *) * (size_t)cap);
        if (!o) return NULL;
        l->owned = o, l->cap_owned = cap;
    }
    void *p = aligned_alloc(64, (size_t)mxm_align_up(bytes > 0 ? bytes : 1, 64));
    if (p) l->owned[l->n_owned++] = p;
    return p;
}

void mxm_layer_free(mxm_layer *l) {
    if (!l) return;
    for (int64_t i = 0; i < l->n_owned; i++) free(l->owned[i]);
    free(l->owned);
    free(l->experts);
    free(l);
}

/* A Linear weight as found in the checkpoint: values, optional scales, [n, k]. */
typedef struct linear {
    const mxm_st_tensor *w, *s;
    int32_t fmt; /* storage format */
    int64_t n, k;
} linear;

static mxm_status find_linear(const mxm_model *m, const char *prefix, int expect_n, int expect_k, linear *L) {
    char name[320];
    snprintf(name, sizeof name, "%s.weight", prefix);
    L->w = mxm_st_model_find(m->st, name, NULL);
    if (!L->w) return mxm_fail(MXM_ERR_NOT_FOUND, "%s: tensor '%s' is missing", m->path, name);
    if (L->w->rank != 2 || L->w->shape[0] != expect_n || L->w->shape[1] != expect_k)
        return mxm_fail(MXM_ERR_SHAPE, "%s: tensor '%s' has shape [%lld, %lld] (rank %d); expected [%d, %d]", m->path,
                        name, (long long)L->w->shape[0], (long long)L->w->shape[1], L->w->rank, expect_n, expect_k);
    L->n = expect_n, L->k = expect_k, L->s = NULL;
    switch (L->w->dtype) {
    case MXM_DT_E4M3: {
        snprintf(name, sizeof name, "%s.weight_scale", prefix);
        if ((L->s = mxm_st_model_find(m->st, name, NULL))) {
            if ((L->s->dtype != MXM_DT_U8 && L->s->dtype != MXM_DT_E8M0) || L->s->rank != 2 ||
                L->s->shape[0] != expect_n || L->s->shape[1] != expect_k / 32)
                return mxm_fail(MXM_ERR_SHAPE, "%s: '%s' must be U8 [%d, %d] (MXFP8 scales)", m->path, name, expect_n,
                                expect_k / 32);
            L->fmt = MXM_WFMT_MXFP8;
            return MXM_OK;
        }
        snprintf(name, sizeof name, "%s.weight_scale_inv", prefix);
        if ((L->s = mxm_st_model_find(m->st, name, NULL))) {
            if (L->s->dtype != MXM_DT_F32 || L->s->rank != 2 || L->s->shape[0] != mxm_ceil_div(expect_n, 128) ||
                L->s->shape[1] != mxm_ceil_div(expect_k, 128))
                return mxm_fail(MXM_ERR_SHAPE, "%s: '%s' must be F32 [%lld, %lld] (128x128 block scales)", m->path,
                                name, (long long)mxm_ceil_div(expect_n, 128), (long long)mxm_ceil_div(expect_k, 128));
            L->fmt = MXM_WFMT_FP8_BLOCK;
            return MXM_OK;
        }
        return mxm_fail(MXM_ERR_NOT_FOUND, "%s: F8_E4M3 tensor '%s.weight' has neither weight_scale nor weight_scale_inv",
                        m->path, prefix);
    }
    case MXM_DT_BF16: L->fmt = MXM_WFMT_BF16; return MXM_OK;
    case MXM_DT_F32:
    case MXM_DT_F16: L->fmt = MXM_WFMT_F32; return MXM_OK;
    default:
        return mxm_fail(MXM_ERR_DTYPE, "%s: tensor '%s.weight' has dtype %s; supported: F8_E4M3, BF16, F16, F32",
                        m->path, prefix, L->w->dtype_str);
    }
}

/* Formats with scales: FP8 codes, which cannot be converted to another format at load. */
static bool quantized(int32_t fmt) {
    return mxm_weight_scale_bytes(fmt, 1, 1) > 0;
}

static float load_value(const mxm_st_tensor *t, int64_t i) {
    const uint8_t *p = (const uint8_t *)t->data;
    if (t->dtype == MXM_DT_BF16) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        return mxm_bf16_decode(h);
    }
    if (t->dtype == MXM_DT_F16) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        return mxm_f16_decode(h);
    }
    float f;
    memcpy(&f, p + 4 * i, 4);
    return f;
}

/* Row range [r0, r0 + rows) of a linear's values as f32 into dst [rows, k]. */
static void linear_to_f32(const linear *L, float *dst) {
    for (int64_t i = 0; i < L->n * L->k; i++) dst[i] = load_value(L->w, i);
}

/* Places the linears (one, or gate then up) as the rows of one weight in format fmt.
 * Where a single linear's storage already is the target, its mmap view is used as is. */
static mxm_status place(mxm_layer *l, const linear *parts, int nparts, int32_t fmt, int32_t rule, int32_t threads,
                        const void **w, const void **s) {
    const int64_t k = parts[0].k;
    int64_t n = 0;
    for (int i = 0; i < nparts; i++) n += parts[i].n;
    const int same_fmt = parts[0].fmt == fmt && (nparts == 1 || parts[1].fmt == fmt);
    const int aligned = ((uintptr_t)parts[0].w->data % 4) == 0;
    if (same_fmt && nparts == 1 && (quantized(fmt) || aligned) && parts[0].w->dtype != MXM_DT_F16) {
        *w = parts[0].w->data;
        *s = parts[0].s ? parts[0].s->data : NULL;
        if (*s && (uintptr_t)*s % mxm_scheme_get(fmt)->scale_bytes)
            goto copy; /* scales used in place: aligned */
        return MXM_OK;
    }
copy:
    if (same_fmt &&
        fmt != MXM_WFMT_F32) { /* concatenate codes (and scales), per the format's row */
        const mxm_scheme *sc = mxm_scheme_get(fmt);
        const int64_t eb = sc->code_bytes;
        uint8_t *wd = layer_alloc(l, n * k * eb);
        if (!wd) return mxm_fail(MXM_ERR_NOMEM, "out of memory assembling W13");
        int64_t off = 0;
        for (int i = 0; i < nparts; i++) {
            memcpy(wd + off * k * eb, parts[i].w->data, (size_t)(parts[i].n * k * eb));
            off += parts[i].n;
        }
        *w = wd, *s = NULL;
        if (sc->scale_rows) { /* scale grids stack row block by row block: every part but the last
                                 whole blocks */
            for (int i = 0; i + 1 < nparts; i++)
                if (parts[i].n % sc->scale_rows)
                    return mxm_fail(MXM_ERR_UNSUPPORTED,
                                    "%s gate/up halves of %lld rows (not a multiple of %d) cannot "
                                    "share one %dx%d scale grid",
                                    sc->name, (long long)parts[i].n, sc->scale_rows, sc->scale_rows,
                                    sc->scale_cols);
            const int64_t grid_row =
                mxm_ceil_div(k, sc->scale_cols) * sc->scale_bytes; /* bytes per block row */
            uint8_t *sd = layer_alloc(l, mxm_ceil_div(n, sc->scale_rows) * grid_row);
            if (!sd) return mxm_fail(MXM_ERR_NOMEM, "out of memory assembling W13");
            int64_t ro = 0;
            for (int i = 0; i < nparts; i++) {
                const int64_t rows = mxm_ceil_div(parts[i].n, sc->scale_rows);
                memcpy(sd + ro * grid_row, parts[i].s->data, (size_t)(rows * grid_row));
                ro += rows;
            }
            *s = sd;
        }
        return MXM_OK;
    }
    /* Convert through f32: BF16/F16/F32 storage to F32 or MXFP8 (quantize at load). */
    for (int i = 0; i < nparts; i++)
        if (quantized(parts[i].fmt))
            return mxm_fail(MXM_ERR_UNSUPPORTED, "weights stored as %s cannot be converted to %s",
                            mxm_weight_format_name(parts[i].fmt), mxm_weight_format_name(fmt));
    float *f = layer_alloc(l, n * k * 4);
    if (!f) return mxm_fail(MXM_ERR_NOMEM, "out of memory converting weights");
    for (int i = 0, o = 0; i < nparts; o += (int)parts[i].n, i++) linear_to_f32(&parts[i], f + (int64_t)o * k);
    if (fmt == MXM_WFMT_F32) {
        *w = f, *s = NULL;
        return MXM_OK;
    }
    if (fmt != MXM_WFMT_MXFP8)
        return mxm_fail(MXM_ERR_UNSUPPORTED, "quantizing at load supports mxfp8 only, not %s", mxm_weight_format_name(fmt));
    uint8_t *q = layer_alloc(l, n * k), *sc = layer_alloc(l, n * k / 32);
    if (!q || !sc) return mxm_fail(MXM_ERR_NOMEM, "out of memory quantizing weights");
    mxm_status st = mxm_mxfp8_quantize(f, MXM_DT_F32, n, k, 0, q, sc, rule, threads);
    *w = q, *s = sc;
    return st;
}

static int64_t storage_bytes(int32_t fmt, int64_t n, int64_t k) {
    return mxm_weight_data_bytes(fmt, n, k) + mxm_weight_scale_bytes(fmt, n, k);
}

/* Loads one expert (routed e >= 0, or the shared one with prefix given) into ex. */
static mxm_status load_expert(const mxm_model *m, mxm_layer *l, const char *prefix, int64_t I, int gated, int32_t *fmt,
                              int32_t rule, int32_t threads, mxm_expert_weights *ex) {
    const int64_t H = l->cfg.hidden_size;
    const mxm_ckpt_family *f = m->family;
    char p[300];
    linear parts[2], down;
    mxm_status st;
    if (gated) {
        snprintf(p, sizeof p, "%s.%s", prefix, f->gate);
        if ((st = find_linear(m, p, (int)I, (int)H, &parts[0]))) return st;
    }
    snprintf(p, sizeof p, "%s.%s", prefix, f->up);
    if ((st = find_linear(m, p, (int)I, (int)H, &parts[gated]))) return st;
    snprintf(p, sizeof p, "%s.%s", prefix, f->down);
    if ((st = find_linear(m, p, (int)H, (int)I, &down))) return st;
    if (*fmt < 0) *fmt = parts[0].fmt;
    for (int i = 0; i < 1 + gated; i++)
        if (parts[i].fmt != down.fmt && (quantized(parts[i].fmt) || quantized(down.fmt)))
            return mxm_fail(MXM_ERR_FORMAT, "%s: %s mixes weight formats %s and %s", m->path, prefix,
                            mxm_weight_format_name(parts[i].fmt), mxm_weight_format_name(down.fmt));
    if ((st = place(l, parts, 1 + gated, *fmt, rule, threads, &ex->w13, &ex->w13_scale)) ||
        (st = place(l, &down, 1, *fmt, rule, threads, &ex->w2, &ex->w2_scale)))
        return mxm_fail_context(st, "%s: %s", m->path, prefix);
    l->weight_bytes += storage_bytes(*fmt, (1 + gated) * I, H) + storage_bytes(*fmt, H, I);
    return MXM_OK;
}

static mxm_status load_vector_f32(const mxm_model *m, const char *name, int64_t n, int64_t k, float *dst) {
    const mxm_st_tensor *t = mxm_st_model_find(m->st, name, NULL);
    if (!t) return mxm_fail(MXM_ERR_NOT_FOUND, "%s: tensor '%s' is missing", m->path, name);
    const int64_t want = n * (k ? k : 1);
    if (t->numel != want || t->rank != (k ? 2 : 1) || (k && (t->shape[0] != n || t->shape[1] != k)))
        return mxm_fail(MXM_ERR_SHAPE, "%s: tensor '%s' must have shape [%lld%s%lld]", m->path, name, (long long)n,
                        k ? ", " : "", (long long)(k ? k : 0));
    if (t->dtype != MXM_DT_F32 && t->dtype != MXM_DT_BF16 && t->dtype != MXM_DT_F16)
        return mxm_fail(MXM_ERR_DTYPE, "%s: tensor '%s' has dtype %s; supported: F32, BF16, F16", m->path, name,
                        t->dtype_str);
    for (int64_t i = 0; i < want; i++) dst[i] = load_value(t, i);
    return MXM_OK;
}

mxm_status mxm_layer_load(const mxm_model *m, int32_t layer_index, const mxm_layer_options *opts, mxm_layer **out) {
    if (!m || !out) return mxm_fail(MXM_ERR_NULL, "mxm_layer_load: NULL argument");
    *out = NULL;
    mxm_layer_options o;
    mxm_layer_options_default(&o);
    if (opts) o = *opts;
    int found = 0;
    for (int32_t i = 0; i < m->n_layers; i++) found |= m->layers[i] == layer_index;
    if (!found) {
        char list[128] = "";
        for (int32_t i = 0; i < m->n_layers && i < 8; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d", i ? ", " : "", m->layers[i]);
        return mxm_fail(MXM_ERR_NOT_FOUND, "%s: layer %d is not an MoE layer; MoE layers: %s%s", m->path,
                        layer_index, m->n_layers ? list : "none", m->n_layers > 8 ? ", ..." : "");
    }
    if (o.num_threads < 0 || o.num_threads > 4096)
        return mxm_fail(MXM_ERR_INVALID_ARG, "layer options: num_threads=%d must be in 0..4096", o.num_threads);
    if (o.weight_format != -1 && o.weight_format != MXM_WFMT_MXFP8)
        return mxm_fail(MXM_ERR_UNSUPPORTED, "layer options: weight_format %d; supported: -1 (as stored), 0 (mxfp8)",
                        o.weight_format);
    mxm_layer *l = calloc(1, sizeof *l);
    if (!l) return mxm_fail(MXM_ERR_NOMEM, "out of memory");
    l->cfg = m->base;
    l->cfg.num_threads = o.num_threads;
    if (o.profile != MXM_PROFILE_TRTLLM && o.profile != MXM_PROFILE_EXACT)
        o.profile = MXM_PROFILE_TRTLLM;
    l->cfg.profile = o.profile;
    const mxm_ckpt_family *fd = m->family;
    const int64_t E = l->cfg.num_experts, H = l->cfg.hidden_size, I = l->cfg.intermediate_size;
    const int gated = mxm_act_is_gated(l->cfg.activation);
    mxm_status st = MXM_OK;
    l->experts = calloc((size_t)E + 1, sizeof *l->experts);
    l->router = layer_alloc(l, E * H * 4);
    if (!l->experts || !l->router) st = mxm_fail(MXM_ERR_NOMEM, "out of memory");
    char name[300];
    int32_t fmt = o.weight_format;
    for (int64_t e = 0; e < E && !st; e++) {
        snprintf(name, sizeof name, fd->expert, layer_index, (int)e);
        st = load_expert(m, l, name, I, gated, &fmt, o.scale_rule, o.num_threads, &l->experts[e]);
    }
    if (!st && l->cfg.shared_intermediate_size && fd->shared) {
        snprintf(name, sizeof name, fd->shared, layer_index);
        st = load_expert(m, l, name, l->cfg.shared_intermediate_size, gated, &fmt, o.scale_rule, o.num_threads,
                         &l->experts[E]);
    }
    if (!st) {
        snprintf(name, sizeof name, fd->router, layer_index);
        st = load_vector_f32(m, name, E, H, l->router);
    }
    if (!st && fd->bias) {
        snprintf(name, sizeof name, fd->bias, layer_index);
        if (mxm_st_model_find(m->st, name, NULL)) {
            l->bias = layer_alloc(l, E * 4);
            st = l->bias ? load_vector_f32(m, name, E, 0, l->bias) : mxm_fail(MXM_ERR_NOMEM, "out of memory");
        }
    }
    if (st) {
        mxm_layer_free(l);
        return st;
    }
    l->cfg.weight_format = fmt;
    /* A router Linear in the model dtype (Qwen3's) gives bf16 logits. */
    l->router_bf16 = m->family->router_dtype == MXM_DT_BF16 && o.profile == MXM_PROFILE_TRTLLM;
    l->weights = (mxm_moe_weights){l->experts, l->cfg.shared_intermediate_size ? &l->experts[E] : NULL, NULL, NULL, NULL};
    *out = l;
    return MXM_OK;
}

const mxm_moe_config *mxm_layer_config(const mxm_layer *l) { return l ? &l->cfg : NULL; }
const mxm_moe_weights *mxm_layer_weights(const mxm_layer *l) { return l ? &l->weights : NULL; }
const float *mxm_layer_routing_bias(const mxm_layer *l) { return l ? l->bias : NULL; }
int64_t mxm_layer_weight_bytes(const mxm_layer *l) { return l ? l->weight_bytes : 0; }

int32_t mxm_model_weight_format(const mxm_model *m) {
    if (!m || !m->n_layers) return -1;
    /* What the tensors are (whatever a quantization config says): the first expert's down
     * projection, its dtype and its scale tensor. */
    char name[300];
    snprintf(name, sizeof name, m->family->expert, m->layers[0], 0);
    snprintf(name + strlen(name), sizeof name - strlen(name), ".%s.weight", m->family->down);
    const mxm_st_tensor *t = mxm_st_model_find(m->st, name, NULL);
    if (!t) return m->wfmt;
    if (t->dtype == MXM_DT_E4M3) {
        strncat(name, "_scale_inv", sizeof name - strlen(name) - 1);
        return mxm_st_model_find(m->st, name, NULL) ? MXM_WFMT_FP8_BLOCK : MXM_WFMT_MXFP8;
    }
    return t->dtype == MXM_DT_BF16 ? MXM_WFMT_BF16 : MXM_WFMT_F32;
}

mxm_status mxm_layer_router_logits(const mxm_layer *l, const void *x, int32_t x_dtype, int64_t T, float *logits,
                                   int32_t num_threads) {
    if (!l || !x || !logits) return mxm_fail(MXM_ERR_NULL, "mxm_layer_router_logits: NULL argument");
    if (x_dtype != MXM_DT_F32 && x_dtype != MXM_DT_BF16)
        return mxm_fail(MXM_ERR_DTYPE, "router: x dtype %s; supported: F32, BF16", mxm_dtype_name(x_dtype));
    if (T < 0) return mxm_fail(MXM_ERR_SHAPE, "router: num_tokens=%lld", (long long)T);
    const int64_t H = l->cfg.hidden_size, E = l->cfg.num_experts;
    const int nt = mxm_threads(num_threads);
    float *xbuf = malloc(sizeof(float) * (size_t)(H * nt));
    if (!xbuf) return mxm_fail(MXM_ERR_NOMEM, "router: out of memory");
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t t = 0; t < T; t++) {
        float *xr = xbuf + (int64_t)omp_get_thread_num() * H;
        if (x_dtype == MXM_DT_F32) /* x at any address, as in mxm_moe_forward */
            memcpy(xr, (const char *)x + t * H * 4, (size_t)H * 4);
        else
            for (int64_t i = 0; i < H; i++) {
                uint16_t h;
                memcpy(&h, (const char *)x + (t * H + i) * 2, 2);
                xr[i] = mxm_bf16_decode(h);
            }
        for (int64_t e = 0; e < E; e++) {
            float acc = 0;
            const float *w = l->router + e * H;
            for (int64_t i = 0; i < H; i++) acc += xr[i] * w[i];
            logits[t * E + e] = l->router_bf16 ? mxm_round_bf16(acc) : acc;
        }
    }
    free(xbuf);
    return MXM_OK;
}
