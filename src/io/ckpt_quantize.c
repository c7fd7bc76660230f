/* mxm_checkpoint_quantize: a BF16/F16/F32 Hugging Face checkpoint folder -> a ModelOpt MXFP8
 * ("unified HF" export) folder (SPEC section 6).
 *
 * What is quantized (mxm_quantize_options.scope):
 *  - MXM_QUANTIZE_MODELOPT (default): what NVIDIA ModelOpt's mtq.MXFP8_DEFAULT_CFG quantizes
 *    (cq_modelopt_quantizes): every Linear-shaped weight ("<module>.weight" of rank 2) except
 *    the embeddings (last name component holds "embed"), the MoE routers ("<block>.gate",
 *    ".router", ".shared_expert_gate" next to "<block>.experts.") and the modules ModelOpt's
 *    default disables by name (cq_modelopt_disabled: lm_head, Mamba's conv1d, ...). Its exclude
 *    list (cq_modelopt_exclude) and its file order: by dtype, then by name (MXM_ST_ORDER_DTYPE,
 *    the safetensors library's writer, which ModelOpt's export goes through). On the three
 *    tests/data fixtures the output model.safetensors is byte for byte ModelOpt 0.47's export.
 *  - MXM_QUANTIZE_EXPERTS: every routed- or shared-expert Linear weight, recognized by its name
 *    (the module path holds ".experts.", ".shared_experts." or ".shared_expert.", and the name
 *    ends in "_proj.weight", or ".w1/.w2/.w3.weight" under experts for Mixtral-style names). The
 *    file order is by element size, then name (each F8_E4M3 weight next to its U8 scale), the
 *    layout of the tests/data *_mxfp8 fixtures, which the output reproduces byte for byte. Its
 *    exclude list is: "lm_head"; then, layer by layer (numeric order), the router modules
 *    ("...gate", "...router"), then for each sub-module directly under a layer that holds a
 *    rank-2 ".weight" that is not quantized: "<prefix>.layers.L.<sub>*" when nothing under <sub>
 *    is quantized (e.g. "model.layers.0.self_attn*"), else the module itself; then such modules
 *    outside the layers (embeddings excepted).
 * A selected weight [N, K] of dtype BF16, F16 or F32 (K % 32 == 0, else MXM_ERR_SHAPE naming it)
 * becomes "<prefix>.weight" F8_E4M3 [N, K] + "<prefix>.weight_scale" U8 [N, K/32] from
 * mxm_mxfp8_quantize (F16 is widened to f32 first, exactly). The rules are the same for every
 * model_type (a family's row in ckpt_family.h gives only its file_root); nemotron_h, qwen3_moe and
 * deepseek_v3 are the families tested.
 *
 * Everything else keeps its bytes and dtype. Each input shard gives one output shard of the same
 * file name, with the input file's __metadata__. A sharded input also gets a rewritten
 * model.safetensors.index.json (".weight_scale" entries added in the shard of their weight,
 * metadata.total_size updated). Loaders (vLLM's ModelOpt config) treat every Linear that is not
 * excluded as quantized, so every unquantized Linear is in the exclude list ("ignore" in
 * config.json's quantization_config, "exclude_modules" in hf_quant_config.json). The producer is
 * {"name": "mxmoe", "version": mxm_version()}.
 *
 * config.json keeps the input's text (quantization_config appended), with the bare Infinity,
 * -Infinity and NaN tokens Python's json writes turned into valid JSON (1e999, -1e999, null).
 *
 * All-or-nothing, one run per folder: out_dir must not exist or be an empty folder (else
 * MXM_ERR_INVALID_ARG before any work: files of an earlier checkpoint, e.g. a stale index and its
 * shards, would be loaded in preference to the new ones). Every output file is written into a
 * fresh staging folder ".<out_dir name>.tmp.XXXXXX" (mkdtemp) next to out_dir, which is renamed
 * to out_dir when all are complete: the rename fails (nothing replaced) when another writer
 * filled out_dir meanwhile, so out_dir holds exactly one run's files. Any failure (or a cancel
 * from the progress callback) removes the staging folder.
 *
 * Memory: inputs are memory-mapped; the quantized output of one shard is held in the heap until
 * that shard is written (about half of the shard's size for BF16 input).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"
#include "formats/formats.h"
#include "io/ckpt_family.h"
#include "io/json_text.h"
#include "io/safetensors.h"
#include "io/safetensors_impl.h"

#define CQ_CONFIG "config.json"
#define CQ_HFQ "hf_quant_config.json"
#define CQ_SINGLE "model.safetensors"
#define CQ_INDEX "model.safetensors.index.json"
#define CQ_MAX_JSON (64LL << 20)  /* config.json / index size limit */
#define CQ_CHUNK_BYTES (16 << 20) /* input bytes per quantization chunk (progress, scratch) */

/* ------------------------------------------------------------------------------------------ */
/* small helpers */

static char *cq_concat(const char *a, const char *b) {
    const size_t x = strlen(a), y = strlen(b);
    char *p = malloc(x + y + 1);
    if (!p) return NULL;
    memcpy(p, a, x);
    memcpy(p + x, b, y + 1);
    return p;
}

static int cq_ends_with(const char *s, const char *suffix) {
    const size_t a = strlen(s), b = strlen(suffix);
    return a >= b && memcmp(s + a - b, suffix, b) == 0;
}

static int cq_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Reads a whole small file (at most CQ_MAX_JSON bytes) into a NUL-terminated heap buffer. */
static mxm_status cq_read_file(const char *path, char **out, size_t *len) {
    uint8_t *buf;
    int64_t n;
    const mxm_status st = mxm_st_read_small_file(path, CQ_MAX_JSON, &buf, &n);
    *out = (char *)buf;
    *len = st ? 0 : (size_t)n;
    return st;
}

/* Creates path (and, like mkdir -p, missing parents). */
static mxm_status cq_mkdirs(const char *path) {
    char *p = strdup(path);
    if (!p) return mxm_fail(MXM_ERR_NOMEM, "out of memory");
    mxm_status st = MXM_OK;
    const size_t n = strlen(p);
    for (size_t i = 1; i <= n && st == MXM_OK; i++) {
        if (p[i] != '/' && p[i] != '\0') continue;
        const char c = p[i];
        p[i] = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            st = mxm_fail(MXM_ERR_IO, PT ": cannot create folder: %s", p, strerror(errno));
        p[i] = c;
    }
    free(p);
    if (st != MXM_OK) return st;
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return mxm_fail(MXM_ERR_IO, PT ": not a folder", path);
    return MXM_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* which tensors are quantized, and the exclude list */

static int cq_expert_name(const char *name) {
    if (!strstr(name, ".experts.") && !strstr(name, ".shared_experts.") &&
        !strstr(name, ".shared_expert.") && strncmp(name, "experts.", 8) != 0)
        return 0;
    return cq_ends_with(name, "_proj.weight") || cq_ends_with(name, ".w1.weight") ||
           cq_ends_with(name, ".w2.weight") || cq_ends_with(name, ".w3.weight");
}

/* Router modules: "...gate.weight" / "...router.weight" of rank 2 (not gate_proj). */
static int cq_router_name(const char *name) {
    return cq_ends_with(name, ".gate.weight") || cq_ends_with(name, ".router.weight") ||
           strcmp(name, "gate.weight") == 0 || strcmp(name, "router.weight") == 0;
}

/* Splits "<prefix>.layers.<L>.<sub>...": returns 1 with prefix_len (bytes of "<prefix>.layers"),
 * layer L and the end of "<sub>" (offset just past it), else 0. */
static int cq_layer_of(const char *name, size_t *prefix_len, long *layer, size_t *sub_end) {
    const char *p = name;
    for (;;) {
        const char *h = strstr(p, "layers.");
        if (!h) return 0;
        if (h == name || h[-1] == '.') {
            const char *d = h + 7;
            const char *e = d;
            while (*e >= '0' && *e <= '9')
                e++;
            if (e > d && e - d < 10 && *e == '.') {
                const char *s = e + 1;
                const char *t = strchr(s, '.');
                if (t && t > s) {
                    *prefix_len = (size_t)(h + 6 - name);
                    *layer = strtol(d, NULL, 10);
                    *sub_end = (size_t)(t - name);
                    return 1;
                }
            }
        }
        p = h + 7;
    }
}

typedef struct cq_excl {
    char *s;
    char *prefix; /* "<prefix>.layers" or "" outside layers */
    long layer;   /* LONG_MAX outside layers */
    int kind;     /* 0 router, 1 other */
} cq_excl;

typedef struct cq_excl_list {
    cq_excl *v;
    size_t n, cap;
} cq_excl_list;

static int cq_excl_cmp(const void *a, const void *b) {
    const cq_excl *x = a, *y = b;
    const int xo = x->layer == LONG_MAX, yo = y->layer == LONG_MAX;
    if (xo != yo) return xo - yo;
    int c = strcmp(x->prefix, y->prefix);
    if (c) return c;
    if (x->layer != y->layer) return x->layer < y->layer ? -1 : 1;
    if (x->kind != y->kind) return x->kind - y->kind;
    return strcmp(x->s, y->s);
}

static void cq_excl_free(cq_excl_list *l) {
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].s);
        free(l->v[i].prefix);
    }
    free(l->v);
    memset(l, 0, sizeof *l);
}

static mxm_status cq_excl_add(cq_excl_list *l, const char *s, size_t slen, const char *prefix,
                              size_t plen, long layer, int kind) {
    for (size_t i = 0; i < l->n; i++)
        if (strlen(l->v[i].s) == slen && memcmp(l->v[i].s, s, slen) == 0) return MXM_OK;
    if (l->n == l->cap) {
        const size_t cap = l->cap ? 2 * l->cap : 16;
        cq_excl *v = realloc(l->v, cap * sizeof *v);
        if (!v) return mxm_fail(MXM_ERR_NOMEM, "out of memory building the exclude list");
        l->v = v;
        l->cap = cap;
    }
    cq_excl *e = &l->v[l->n];
    e->s = malloc(slen + 1);
    e->prefix = malloc(plen + 1);
    if (!e->s || !e->prefix) {
        free(e->s);
        free(e->prefix);
        return mxm_fail(MXM_ERR_NOMEM, "out of memory building the exclude list");
    }
    memcpy(e->s, s, slen);
    e->s[slen] = '\0';
    memcpy(e->prefix, prefix, plen);
    e->prefix[plen] = '\0';
    e->layer = layer;
    e->kind = kind;
    l->n++;
    return MXM_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* the job */

typedef struct cq_shard {
    char *name;        /* file name inside the folder */
    mxm_st_file *file; /* input */
} cq_shard;

typedef struct cq_tensor {
    const mxm_st_tensor *t;
    int quantize;
} cq_tensor;

typedef struct cq_job {
    const char *in_dir, *out_dir;
    int32_t rule, threads;
    mxm_progress_fn progress;
    void *user;
    int64_t done, total;

    char *config_text; /* config.json as read */
    size_t config_len;
    json_t *config; /* parsed by mxm_hf_config_parse */
    json_t *index;  /* model.safetensors.index.json, or NULL for a single file */

    cq_shard *shards;
    size_t nshards;
    cq_excl_list excl;
    int64_t nquant;
    int32_t scope;      /* MXM_QUANTIZE_MODELOPT or MXM_QUANTIZE_EXPERTS */
    const char *file_root; /* its family's file_root (exclude-list order, see cq_modelopt_key) */
    const char **names; /* every tensor name, sorted (router detection) */
    size_t nnames;
    const char **qnames; /* the names of the tensors to quantize, sorted */
    size_t nqnames;

    /* files written so far, in the staging folder (tmp[i]; fin[i] is where it ends up) */
    char **tmp, **fin;
    size_t ntmp, captmp;
    char *stage; /* the staging folder, renamed to out_dir at the end */

    /* quantized buffers of the shard being written */
    void **bufs;
    size_t nbufs, capbufs;
} cq_job;

static void cq_free_bufs(cq_job *j) {
    for (size_t i = 0; i < j->nbufs; i++)
        free(j->bufs[i]);
    j->nbufs = 0;
}

static mxm_status cq_keep_buf(cq_job *j, void *p) {
    if (j->nbufs == j->capbufs) {
        const size_t cap = j->capbufs ? 2 * j->capbufs : 64;
        void **b = realloc(j->bufs, cap * sizeof *b);
        if (!b) {
            free(p);
            return mxm_fail(MXM_ERR_NOMEM, "out of memory");
        }
        j->bufs = b;
        j->capbufs = cap;
    }
    j->bufs[j->nbufs++] = p;
    return MXM_OK;
}

/* Registers stage/name (to become out_dir/name); *tmp_path receives the path to write. */
static mxm_status cq_add_tmp(cq_job *j, const char *name, const char **tmp_path) {
    if (j->ntmp == j->captmp) {
        const size_t cap = j->captmp ? 2 * j->captmp : 16;
        char **t = realloc(j->tmp, cap * sizeof *t);
        if (!t) return mxm_fail(MXM_ERR_NOMEM, "out of memory");
        j->tmp = t;
        char **f = realloc(j->fin, cap * sizeof *f);
        if (!f) return mxm_fail(MXM_ERR_NOMEM, "out of memory");
        j->fin = f;
        j->captmp = cap;
    }
    char *fin = mxm_st_path_join(j->out_dir, name);
    char *tmp = fin ? mxm_st_path_join(j->stage, name) : NULL;
    if (!tmp) {
        free(fin);
        return mxm_fail(MXM_ERR_NOMEM, "out of memory");
    }
    j->fin[j->ntmp] = fin;
    j->tmp[j->ntmp] = tmp;
    j->ntmp++;
    *tmp_path = tmp;
    return MXM_OK;
}

/* Removes the staging folder and whatever is in it (files only: it never holds folders). */
static void cq_remove_stage(const char *stage) {
    DIR *d = opendir(stage);
    if (d) {
        const struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
            char *p = mxm_st_path_join(stage, de->d_name);
            if (p) unlink(p);
            free(p);
        }
        closedir(d);
    }
    rmdir(stage);
}

static void cq_job_free(cq_job *j, int remove_tmp) {
    for (size_t i = 0; i < j->ntmp; i++) {
        free(j->tmp[i]);
        free(j->fin[i]);
    }
    if (j->stage && remove_tmp) cq_remove_stage(j->stage);
    free(j->stage);
    free(j->tmp);
    free(j->fin);
    cq_free_bufs(j);
    free(j->bufs);
    for (size_t i = 0; i < j->nshards; i++) {
        free(j->shards[i].name);
        mxm_st_close(j->shards[i].file);
    }
    free(j->shards);
    cq_excl_free(&j->excl);
    free(j->names);
    free(j->qnames);
    json_decref(j->config);
    json_decref(j->index);
    free(j->config_text);
}

static mxm_status cq_report(cq_job *j, const char *what) {
    if (!j->progress) return MXM_OK;
    if (j->progress(j->done, j->total, what, j->user) != 0)
        return mxm_fail(MXM_ERR_INVALID_ARG,
                        "mxm_checkpoint_quantize: cancelled by the progress "
                        "callback at " NM,
                        what);
    return MXM_OK;
}

/* config.json, read and parsed as the checkpoint loader reads it (mxm_hf_config_parse), so that
 * the two accept the same configs; the text is kept for cq_write_config. */
static mxm_status cq_load_config(cq_job *j, const char *path) {
    uint8_t *text;
    int64_t len;
    mxm_status st = mxm_st_read_small_file(path, MXM_HF_CONFIG_MAX_BYTES, &text, &len);
    if (st != MXM_OK) return st;
    j->config_text = (char *)text, j->config_len = (size_t)len;
    const int64_t bad =
        mxm_st_utf8_invalid_at((const uint8_t *)j->config_text, (int64_t)j->config_len);
    if (bad >= 0)
        return mxm_fail(MXM_ERR_FORMAT, PT ": not valid UTF-8 (offset %lld)", path, (long long)bad);
    if (!(j->config = mxm_hf_config_parse(path, j->config_text, j->config_len, &st))) return st;
    if (json_object_get(j->config, "quantization_config"))
        return mxm_fail(MXM_ERR_UNSUPPORTED,
                        PT ": already has a quantization_config; the input must be a BF16/F16/F32 "
                           "checkpoint",
                        path);
    return MXM_OK;
}

static int cq_cmp_shard(const void *a, const void *b) {
    return strcmp(((const cq_shard *)a)->name, ((const cq_shard *)b)->name);
}

/* Finds and opens the input shards (index or single file). */
static mxm_status cq_open_inputs(cq_job *j) {
    mxm_status st;
    char *ipath = mxm_st_path_join(j->in_dir, CQ_INDEX), *spath = mxm_st_path_join(j->in_dir, CQ_SINGLE);
    if (!ipath || !spath) {
        st = mxm_fail(MXM_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (st_is_regular(ipath)) {
        char *text;
        size_t len;
        if ((st = cq_read_file(ipath, &text, &len)) != MXM_OK) goto done;
        json_error_t jerr;
        j->index = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
        free(text);
        if (!j->index) {
            st = mxm_fail(MXM_ERR_FORMAT, PT ": not valid JSON: %s (line %d, column %d)", ipath,
                          jerr.text, jerr.line, jerr.column);
            goto done;
        }
        json_t *wm = json_is_object(j->index) ? json_object_get(j->index, "weight_map") : NULL;
        json_t *meta = json_is_object(j->index) ? json_object_get(j->index, "metadata") : NULL;
        if (!json_is_object(wm) || (meta && !json_is_object(meta))) {
            st = mxm_fail(MXM_ERR_FORMAT,
                          PT ": needs an object \"weight_map\" (and \"metadata\", "
                             "if present, must be an object)",
                          ipath);
            goto done;
        }
        const size_t n = json_object_size(wm);
        j->shards = calloc(n + 1, sizeof *j->shards);
        if (!j->shards) {
            st = mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", ipath);
            goto done;
        }
        const char *key;
        json_t *v;
        json_object_foreach(wm, key, v) {
            const char *s = json_is_string(v) ? st_skip_dot(json_string_value(v)) : NULL;
            if (!s || !s[0] || strchr(s, '/') || strcmp(s, "..") == 0 || strcmp(s, ".") == 0) {
                st = mxm_fail(s ? MXM_ERR_UNSUPPORTED : MXM_ERR_FORMAT,
                              PT ": tensor '" NM "': shard name must be a file name in the folder",
                              ipath, key);
                goto done;
            }
            size_t k = 0;
            while (k < j->nshards && strcmp(j->shards[k].name, s) != 0)
                k++;
            if (k == j->nshards) {
                j->shards[k].name = strdup(s);
                if (!j->shards[k].name) {
                    st = mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", ipath);
                    goto done;
                }
                j->nshards++;
            }
        }
        if (j->nshards == 0) {
            st = mxm_fail(MXM_ERR_FORMAT, PT ": empty weight_map", ipath);
            goto done;
        }
        qsort(j->shards, j->nshards, sizeof *j->shards, cq_cmp_shard);
        for (size_t k = 0; k < j->nshards; k++) {
            if (strcmp(j->shards[k].name, CQ_CONFIG) == 0 ||
                strcmp(j->shards[k].name, CQ_INDEX) == 0 ||
                strcmp(j->shards[k].name, CQ_HFQ) == 0) {
                st = mxm_fail(MXM_ERR_FORMAT, PT ": '" NM "' cannot be a shard", ipath,
                              j->shards[k].name);
                goto done;
            }
            char *p = mxm_st_path_join(j->in_dir, j->shards[k].name);
            if (!p) {
                st = mxm_fail(MXM_ERR_NOMEM, "out of memory");
                goto done;
            }
            st = mxm_st_open(p, &j->shards[k].file);
            free(p);
            if (st != MXM_OK) {
                st = mxm_fail_context(st, PT ": weight_map shard", ipath);
                goto done;
            }
        }
        json_object_foreach(wm, key, v) {
            const char *s = st_skip_dot(json_string_value(v));
            cq_shard ks = {(char *)s, NULL};
            const cq_shard *sh =
                bsearch(&ks, j->shards, j->nshards, sizeof *j->shards, cq_cmp_shard);
            MXM_ASSERT(sh != NULL);
            if (!mxm_st_find(sh->file, key)) {
                st = mxm_fail(MXM_ERR_FORMAT,
                              PT ": tensor '" NM "' is listed for " NM ", but that file lacks it",
                              ipath, key, s);
                goto done;
            }
        }
    } else if (st_is_regular(spath)) {
        j->shards = calloc(1, sizeof *j->shards);
        if (!j->shards || !(j->shards[0].name = strdup(CQ_SINGLE))) {
            st = mxm_fail(MXM_ERR_NOMEM, "out of memory");
            goto done;
        }
        j->nshards = 1;
        st = mxm_st_open(spath, &j->shards[0].file);
    } else {
        st = mxm_fail(MXM_ERR_NOT_FOUND, PT ": no " CQ_INDEX " or " CQ_SINGLE, j->in_dir);
    }
done:
    free(ipath);
    free(spath);
    return st;
}

static int cq_cmp_cstr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Decided by cq_plan: one of the tensors to quantize (dtype and K checked there). */
static int cq_should_quantize(const cq_job *j, const mxm_st_tensor *t) {
    return j->nqnames &&
           bsearch(&t->name, j->qnames, j->nqnames, sizeof *j->qnames, cq_cmp_cstr) != NULL;
}

/* ModelOpt's MXFP8_DEFAULT_CFG (nvidia-modelopt 0.47: configs/ptq/presets/model/mxfp8.yaml)
 * enables the MXFP8 weight quantizer of every quantizable module, then disables it again where
 * "<module>.weight_quantizer" matches one of these fnmatch patterns
 * (configs/ptq/units/default_disabled_quantizers.yaml), and for every nn.Embedding. */
static const char *const cq_modelopt_disabled[] = {"*block_sparse_moe.gate*",
                                                   "*linear_attn.conv1d*",
                                                   "*linear_attn.in_proj_a*",
                                                   "*linear_attn.in_proj_b*",
                                                   "*lm_head*",
                                                   "*mixer.conv1d*",
                                                   "*mlp.gate.*",
                                                   "*mlp.shared_expert_gate.*",
                                                   "*output_layer*",
                                                   "*proj_out.*",
                                                   "*router*",
                                                   "output.*",
                                                   "*embed_vision*",
                                                   "*vision_tower*",
                                                   "*visual*",
                                                   "*vision_model*",
                                                   "*multi_modal_projector*",
                                                   NULL};

/* 1 if some name in sorted[0..n) starts with prefix (plen bytes). */
static int cq_any_with_prefix(const char *const *sorted, size_t n, const char *prefix, size_t plen);

/* The module of a ".weight" tensor that ModelOpt gives a weight quantizer (a Linear when rank 2,
 * a convolution when rank 3 or more; rank-1 weights are norms): 1 and its length in *mlen. */
static int cq_module_of(const mxm_st_tensor *t, size_t *mlen) {
    if (t->rank < 2 || !cq_ends_with(t->name, ".weight")) return 0;
    *mlen = strlen(t->name) - strlen(".weight");
    return *mlen > 0;
}

/* The module's last name component holds "embed": an nn.Embedding (embed_tokens, embeddings). */
static int cq_is_embedding(const char *name, size_t mlen) {
    size_t b = mlen;
    while (b > 0 && name[b - 1] != '.')
        b--;
    for (size_t i = b; i + 5 <= mlen; i++)
        if (memcmp(name + i, "embed", 5) == 0) return 1;
    return 0;
}

/* An MoE router: "<block>.gate", "<block>.router" or "<block>.shared_expert_gate" where
 * "<block>.experts." tensors exist (transformers 5 routers are no nn.Linear; ModelOpt's export
 * lists them as unquantized all the same). */
static int cq_is_router(const cq_job *j, const char *name, size_t mlen) {
    static const char *const leaf[] = {"gate", "router", "shared_expert_gate"};
    for (int i = 0; i < 3; i++) {
        const size_t l = strlen(leaf[i]);
        if (mlen < l + 1 || memcmp(name + mlen - l, leaf[i], l) != 0 || name[mlen - l - 1] != '.')
            continue;
        char *p = malloc(mlen - l + 16);
        if (!p) return 1; /* unquantized on the safe side; the plan fails later anyway */
        memcpy(p, name, mlen - l);
        memcpy(p + mlen - l, "experts.", 9);
        const int r = cq_any_with_prefix(j->names, j->nnames, p, strlen(p));
        free(p);
        if (r) return 1;
    }
    return 0;
}

/* Whether ModelOpt's MXFP8 default quantizes this module's weight (mlen bytes of name). */
static int cq_modelopt_quantizes(const cq_job *j, const mxm_st_tensor *t, size_t mlen) {
    if (t->rank != 2 || cq_is_embedding(t->name, mlen) || cq_is_router(j, t->name, mlen)) return 0;
    char q[1024];
    if (mlen + sizeof ".weight_quantizer" > sizeof q) return 0;
    memcpy(q, t->name, mlen);
    memcpy(q + mlen, ".weight_quantizer", sizeof ".weight_quantizer");
    for (int i = 0; cq_modelopt_disabled[i]; i++)
        if (fnmatch(cq_modelopt_disabled[i], q, 0) == 0) return 0;
    return 1;
}

static int cq_select(const cq_job *j, const mxm_st_tensor *t) {
    size_t mlen;
    if (j->scope == MXM_QUANTIZE_EXPERTS) return t->rank == 2 && cq_expert_name(t->name);
    return cq_module_of(t, &mlen) && cq_modelopt_quantizes(j, t, mlen);
}

/* 1 if some name in sorted[0..n) starts with prefix (plen bytes). */
static int cq_any_with_prefix(const char *const *sorted, size_t n, const char *prefix,
                              size_t plen) {
    size_t lo = 0, hi = n;
    while (lo < hi) { /* first name >= prefix (compared on plen bytes) */
        const size_t mid = lo + (hi - lo) / 2;
        if (strncmp(sorted[mid], prefix, plen) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && strncmp(sorted[lo], prefix, plen) == 0;
}

/* The project's own exclude list (MXM_QUANTIZE_EXPERTS, the *_mxfp8 fixtures' rule; see the top
 * of this file). qn: the sorted names of the quantized tensors. */
static mxm_status cq_experts_exclude(cq_job *j, const char *const *qn, size_t k) {
    mxm_status st = MXM_OK;
    for (size_t s = 0; s < j->nshards && st == MXM_OK; s++) {
        for (int64_t i = 0; i < mxm_st_count(j->shards[s].file) && st == MXM_OK; i++) {
            const mxm_st_tensor *t = mxm_st_at(j->shards[s].file, i);
            if (t->rank != 2 || cq_should_quantize(j, t) || !cq_ends_with(t->name, ".weight"))
                continue;
            const size_t mlen = strlen(t->name) - strlen(".weight");        /* module name */
            if (mlen == 7 && strncmp(t->name, "lm_head", 7) == 0) continue; /* listed first */
            size_t plen = 0, sub_end = 0;
            long layer = LONG_MAX;
            const int in_layer = cq_layer_of(t->name, &plen, &layer, &sub_end);
            if (!in_layer) {
                plen = 0;
                layer = LONG_MAX;
            }
            if (cq_router_name(t->name)) {
                st = cq_excl_add(&j->excl, t->name, mlen, t->name, plen, layer, 0);
            } else if (in_layer) {
                /* "<prefix>.layers.L.<sub>*" unless something under <sub> is quantized */
                char *sub = malloc(sub_end + 2);
                if (!sub) {
                    st = mxm_fail(MXM_ERR_NOMEM, "out of memory");
                    break;
                }
                memcpy(sub, t->name, sub_end);
                sub[sub_end] = '.';
                sub[sub_end + 1] = '\0';
                if (cq_any_with_prefix(qn, k, sub, sub_end + 1)) {
                    st = cq_excl_add(&j->excl, t->name, mlen, t->name, plen, layer, 1);
                } else {
                    sub[sub_end] = '*';
                    st = cq_excl_add(&j->excl, sub, sub_end + 1, t->name, plen, layer, 1);
                }
                free(sub);
            } else if (!strstr(t->name, "embed")) {
                st = cq_excl_add(&j->excl, t->name, mlen, "", 0, LONG_MAX, 1);
            }
        }
    }
    if (st == MXM_OK && j->excl.n > 1) qsort(j->excl.v, j->excl.n, sizeof *j->excl.v, cq_excl_cmp);
    return st;
}

/* ModelOpt sorts its exclude list by the module names transformers uses in memory; for a family
 * with a file_root (nemotron_h: "backbone") those start with "model" where the checkpoint has the
 * root (transformers 5 renames them at load and back at save), so "lm_head" sorts before
 * "backbone.embeddings". */
static void cq_modelopt_key(const cq_job *j, const char *s, char *key, size_t cap) {
    const size_t n = j->file_root ? strlen(j->file_root) : 0;
    if (n && strncmp(s, j->file_root, n) == 0 && (s[n] == '.' || s[n] == '*' || !s[n]))
        snprintf(key, cap, "model%s", s + n);
    else
        snprintf(key, cap, "%s", s);
}

/* 1 if name is in sorted[0..n). */
static int cq_contains(const char *const *sorted, size_t n, const char *name) {
    return n && bsearch(&name, sorted, n, sizeof *sorted, cq_cmp_cstr) != NULL;
}

/* ModelOpt's exclude list (export/quant_utils.py, process_layer_quant_config with
 * _prefix_wildcard_summarize_exclude_modules): every module that carries a weight quantizer but
 * is not quantized (here: Linear- and convolution-shaped ".weight" tensors that are not, which
 * covers lm_head, the embeddings, the routers and Mamba's conv1d), plus "lm_head" (the module
 * exists even when tied), each written as the shortest prefix wildcard cut at a dot that matches
 * no quantized module: "<p>*", else "<p>.*", else the name itself; deduplicated, sorted.
 * qm: the sorted module names of the quantized tensors. */
static mxm_status cq_modelopt_exclude(cq_job *j, const char *const *qm, size_t nq) {
    mxm_status st = cq_excl_add(&j->excl, "lm_head", 7, "lm_head", 7, LONG_MAX, 1);
    for (size_t s = 0; s < j->nshards && st == MXM_OK; s++) {
        for (int64_t i = 0; i < mxm_st_count(j->shards[s].file) && st == MXM_OK; i++) {
            const mxm_st_tensor *t = mxm_st_at(j->shards[s].file, i);
            size_t mlen;
            if (!cq_module_of(t, &mlen) || cq_should_quantize(j, t)) continue;
            char *p = malloc(mlen + 2), *key = malloc(mlen + 8);
            if (!p || !key) {
                free(p);
                free(key);
                return mxm_fail(MXM_ERR_NOMEM, "out of memory building the exclude list");
            }
            size_t out = mlen; /* the module itself unless a wildcard fits */
            int star = 0;
            for (size_t c = 0; c < mlen && !star; c++) {
                if (t->name[c] != '.') continue;
                memcpy(p, t->name, c);
                p[c] = '\0';
                if (!cq_any_with_prefix(qm, nq, t->name, c)) /* "<p>*" */
                    out = c, star = 1;
                else if (!cq_contains(qm, nq, p) && !cq_any_with_prefix(qm, nq, t->name, c + 1))
                    out = c + 1, star = 1; /* "<p>.*" */
            }
            memcpy(p, t->name, out);
            if (star) p[out++] = '*';
            p[out] = '\0';
            cq_modelopt_key(j, p, key, mlen + 8);
            st = cq_excl_add(&j->excl, p, out, key, strlen(key), LONG_MAX, 1);
            free(p);
            free(key);
        }
    }
    /* cq_excl_cmp: by the sort key (held in .prefix), then by name */
    if (st == MXM_OK && j->excl.n > 1) qsort(j->excl.v, j->excl.n, sizeof *j->excl.v, cq_excl_cmp);
    return st;
}

/* Decides what is quantized, checks shapes and dtypes, sums the work and builds the exclude
 * list. Nothing is written before this has passed. */
static mxm_status cq_plan(cq_job *j) {
    int64_t total = 0, nq = 0, ntensors = 0;
    for (size_t s = 0; s < j->nshards; s++)
        ntensors += mxm_st_count(j->shards[s].file);
    j->names = malloc((size_t)(ntensors + 1) * sizeof *j->names);
    j->qnames = malloc((size_t)(ntensors + 1) * sizeof *j->qnames);
    if (!j->names || !j->qnames) return mxm_fail(MXM_ERR_NOMEM, "out of memory");
    for (size_t s = 0; s < j->nshards; s++)
        for (int64_t i = 0; i < mxm_st_count(j->shards[s].file); i++)
            j->names[j->nnames++] = mxm_st_at(j->shards[s].file, i)->name;
    qsort(j->names, j->nnames, sizeof *j->names, cq_cmp_cstr);
    size_t nsel = 0;
    for (size_t s = 0; s < j->nshards; s++) {
        const mxm_st_file *f = j->shards[s].file;
        for (int64_t i = 0; i < mxm_st_count(f); i++) {
            const mxm_st_tensor *t = mxm_st_at(f, i);
            if (t->dtype == MXM_DT_E4M3 || t->dtype == MXM_DT_E5M2 || t->dtype == MXM_DT_E8M0 ||
                cq_ends_with(t->name, ".weight_scale") ||
                cq_ends_with(t->name, ".weight_scale_inv") || cq_ends_with(t->name, ".input_scale"))
                return mxm_fail(MXM_ERR_UNSUPPORTED,
                                PT ": tensor '" NM "' (%s) is already quantized; the input must be "
                                   "a BF16/F16/F32 checkpoint",
                                mxm_st_path(f), t->name, t->dtype_str);
            if (!mxm_add_i64(total, t->nbytes, &total))
                return mxm_fail(MXM_ERR_OVERFLOW, PT ": total size overflows int64", j->in_dir);
            if (!cq_select(j, t)) continue;
            if (t->dtype != MXM_DT_BF16 && t->dtype != MXM_DT_F16 && t->dtype != MXM_DT_F32)
                return mxm_fail(MXM_ERR_DTYPE,
                                PT ": tensor '" NM "': Linear weight of dtype %s; supported: BF16, "
                                   "F16, F32",
                                mxm_st_path(f), t->name, t->dtype_str);
            if (t->shape[1] % MXM_MX_BLOCK != 0)
                return mxm_fail(MXM_ERR_SHAPE,
                                PT ": tensor '" NM "' [%lld, %lld]: K = %lld is not a multiple of "
                                   "32, so it cannot be stored as MXFP8%s",
                                mxm_st_path(f), t->name, (long long)t->shape[0],
                                (long long)t->shape[1], (long long)t->shape[1],
                                j->scope == MXM_QUANTIZE_EXPERTS
                                    ? ""
                                    : " (experts only: MXM_QUANTIZE_EXPERTS, --experts-only)");
            j->qnames[nsel++] = t->name;
            nq++;
        }
    }
    if (nq == 0)
        return mxm_fail(
            MXM_ERR_NOT_FOUND, PT ": no %s to quantize", j->in_dir,
            j->scope == MXM_QUANTIZE_EXPERTS
                ? "routed- or shared-expert Linear weights (names with .experts., .shared_experts. "
                  "or .shared_expert., ending in _proj.weight)"
                : "Linear weights (rank-2 \".weight\" tensors other than lm_head, embeddings and "
                  "routers)");
    qsort(j->qnames, nsel, sizeof *j->qnames, cq_cmp_cstr);
    j->nqnames = nsel;
    j->total = total;
    j->nquant = nq;

    mxm_status st;
    if (j->scope == MXM_QUANTIZE_EXPERTS) {
        st = cq_experts_exclude(j, j->qnames, j->nqnames);
    } else { /* the quantized tensors' module names, sorted (as the names: ".weight" sorts alike) */
        char **qm = calloc(nsel + 1, sizeof *qm);
        st = qm ? MXM_OK : mxm_fail(MXM_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < nsel && st == MXM_OK; i++) {
            const size_t l = strlen(j->qnames[i]) - strlen(".weight");
            if (!(qm[i] = malloc(l + 1)))
                st = mxm_fail(MXM_ERR_NOMEM, "out of memory");
            else
                memcpy(qm[i], j->qnames[i], l), qm[i][l] = '\0';
        }
        if (st == MXM_OK) qsort(qm, nsel, sizeof *qm, cq_cmp_cstr);
        if (st == MXM_OK) st = cq_modelopt_exclude(j, (const char *const *)qm, nsel);
        for (size_t i = 0; qm && i < nsel; i++)
            free(qm[i]);
        free(qm);
    }
    if (st != MXM_OK) return st;
    mxm_log(MXM_LOG_INFO, "checkpoint_quantize: " PT ": %lld tensors, %lld to quantize, %lld bytes",
            j->in_dir, (long long)ntensors, (long long)nq, (long long)total);
    return MXM_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* writing */

/* Quantizes one weight [N, K] and adds "<name>" (F8_E4M3) and "<name>_scale" (U8) to w. */
static mxm_status cq_quantize_tensor(cq_job *j, mxm_st_writer *w, const mxm_st_tensor *t,
                                     const char *path) {
    const int64_t n = t->shape[0], kk = t->shape[1], esize = t->elem_size;
    const int64_t nq = t->numel, ns = n * (kk / MXM_MX_BLOCK);
    uint8_t *q = malloc(nq > 0 ? (size_t)nq : 1);
    if (!q) return mxm_fail(MXM_ERR_NOMEM, PT ": tensor '" NM "': out of memory", path, t->name);
    mxm_status st = cq_keep_buf(j, q); /* frees q on failure */
    if (st != MXM_OK) return st;
    uint8_t *sc = malloc(ns > 0 ? (size_t)ns : 1);
    if (!sc) return mxm_fail(MXM_ERR_NOMEM, PT ": tensor '" NM "': out of memory", path, t->name);
    if ((st = cq_keep_buf(j, sc)) != MXM_OK) return st;

    const int64_t row_bytes = kk * esize;
    int64_t rows_per = row_bytes > 0 ? CQ_CHUNK_BYTES / row_bytes : n;
    if (rows_per < 1) rows_per = 1;
    if (rows_per > n) rows_per = n;
    const int unaligned = ((uintptr_t)t->data % (uintptr_t)esize) != 0;
    float *scratch = NULL;
    if ((t->dtype == MXM_DT_F16 || unaligned) && rows_per * kk > 0) {
        scratch = malloc((size_t)(rows_per * kk) * sizeof(float));
        if (!scratch)
            return mxm_fail(MXM_ERR_NOMEM, PT ": tensor '" NM "': out of memory", path, t->name);
    }
    const int64_t done0 = j->done;
    for (int64_t r0 = 0; r0 < n && st == MXM_OK; r0 += rows_per) {
        const int64_t r1 = r0 + rows_per < n ? r0 + rows_per : n;
        const uint8_t *src = (const uint8_t *)t->data + r0 * row_bytes;
        const void *x = src;
        int32_t dt = t->dtype;
        if (t->dtype == MXM_DT_F16) {
            for (int64_t i = 0; i < (r1 - r0) * kk; i++) {
                uint16_t h;
                memcpy(&h, src + 2 * i, 2);
                scratch[i] = mxm_f16_decode(h);
            }
            x = scratch;
            dt = MXM_DT_F32;
        } else if (unaligned) {
            memcpy(scratch, src, (size_t)((r1 - r0) * row_bytes));
            x = scratch;
        }
        st = mxm_mxfp8_quantize(x, dt, r1 - r0, kk, 0, q + r0 * kk, sc + r0 * (kk / MXM_MX_BLOCK),
                                j->rule, j->threads);
        if (st != MXM_OK) {
            st = mxm_fail_context(st, PT ": tensor '" NM "'", path, t->name);
            break;
        }
        j->done = done0 + r1 * row_bytes;
        if (r1 < n) st = cq_report(j, t->name);
    }
    free(scratch);
    if (st != MXM_OK) return st;
    char *sname = cq_concat(t->name, "_scale");
    if (!sname) return mxm_fail(MXM_ERR_NOMEM, "out of memory");
    const int64_t sshape[2] = {n, kk / MXM_MX_BLOCK};
    st = mxm_st_writer_add(w, t->name, "F8_E4M3", 2, t->shape, q, nq);
    if (st == MXM_OK) st = mxm_st_writer_add(w, sname, "U8", 2, sshape, sc, ns);
    free(sname);
    j->done = done0 + t->nbytes;
    return st;
}

static mxm_status cq_write_shard(cq_job *j, const cq_shard *sh) {
    const char *tmp;
    mxm_status st = cq_add_tmp(j, sh->name, &tmp);
    if (st != MXM_OK) return st;
    mxm_st_writer *w;
    if ((st = mxm_st_writer_create(tmp, &w)) != MXM_OK) return st;
    /* ModelOpt's export is written by the safetensors library: by dtype, then by name */
    if (j->scope == MXM_QUANTIZE_MODELOPT) mxm_st_writer_set_order(w, MXM_ST_ORDER_DTYPE);
    const char *path = mxm_st_path(sh->file);
    for (int64_t i = 0; i < mxm_st_metadata_count(sh->file) && st == MXM_OK; i++) {
        const char *key, *value;
        mxm_st_metadata_at(sh->file, i, &key, &value);
        st = mxm_st_writer_set_metadata(w, key, value);
    }
    for (int64_t i = 0; i < mxm_st_count(sh->file) && st == MXM_OK; i++) {
        const mxm_st_tensor *t = mxm_st_at(sh->file, i);
        if (cq_should_quantize(j, t)) {
            st = cq_quantize_tensor(j, w, t, path);
        } else {
            st = mxm_st_writer_add(w, t->name, t->dtype_str, t->rank, t->shape, t->data, t->nbytes);
            j->done += t->nbytes;
        }
        if (st == MXM_OK) st = cq_report(j, t->name);
    }
    if (st != MXM_OK) {
        mxm_st_writer_abort(w);
    } else {
        st = mxm_st_writer_finish(w);
    }
    cq_free_bufs(j);
    return st;
}

/* Writes text to the staging folder's name (registered for the final rename). */
static mxm_status cq_write_text(cq_job *j, const char *name, const char *text, size_t len) {
    const char *tmp = NULL; /* set by cq_add_tmp on success */
    mxm_status st = cq_add_tmp(j, name, &tmp);
    if (st != MXM_OK) return st;
    const int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return mxm_fail(MXM_ERR_IO, PT ": cannot create: %s", tmp, strerror(errno));
    st = st_write_all(fd, text, (int64_t)len, tmp);
    if (st == MXM_OK && fsync(fd) != 0)
        st = mxm_fail(MXM_ERR_IO, PT ": fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && st == MXM_OK)
        st = mxm_fail(MXM_ERR_IO, PT ": close failed: %s", tmp, strerror(errno));
    return st;
}

static mxm_status cq_write_json(cq_job *j, const char *name, const json_t *v, size_t flags) {
    char *s = json_dumps(v, flags);
    if (!s) return mxm_fail(MXM_ERR_NOMEM, "out of memory writing " NM, name);
    const size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (!t) {
        free(s);
        return mxm_fail(MXM_ERR_NOMEM, "out of memory writing " NM, name);
    }
    t[n] = '\n';
    t[n + 1] = '\0';
    const mxm_status st = cq_write_text(j, name, t, n + 1);
    free(t);
    return st;
}

static mxm_status cq_write_index(cq_job *j) {
    json_t *out = json_deep_copy(j->index);
    json_t *wm_in = json_object_get(j->index, "weight_map");
    json_t *wm = json_object();
    json_t *meta = out ? json_object_get(out, "metadata") : NULL;
    int bad = !out || !wm;
    if (!bad && !meta) {
        meta = json_object();
        bad = json_object_set_new(out, "metadata", meta) != 0;
    }
    int64_t total = 0;
    for (size_t s = 0; s < j->nshards && !bad; s++)
        for (int64_t i = 0; i < mxm_st_count(j->shards[s].file); i++) {
            const mxm_st_tensor *t = mxm_st_at(j->shards[s].file, i);
            total += cq_should_quantize(j, t) ? t->numel + t->numel / MXM_MX_BLOCK : t->nbytes;
        }
    const char *key;
    json_t *v;
    json_object_foreach(wm_in, key, v) {
        if (bad) break;
        const char *sname = st_skip_dot(json_string_value(v));
        bad |= json_object_set_new(wm, key, json_string(sname)) != 0;
        cq_shard ks = {(char *)sname, NULL};
        const cq_shard *sh = bsearch(&ks, j->shards, j->nshards, sizeof *j->shards, cq_cmp_shard);
        const mxm_st_tensor *t = sh ? mxm_st_find(sh->file, key) : NULL;
        if (t && cq_should_quantize(j, t)) {
            char *scale = cq_concat(key, "_scale");
            bad |= !scale || json_object_set_new(wm, scale, json_string(sname)) != 0;
            free(scale);
        }
    }
    if (!bad) bad |= json_object_set_new(meta, "total_size", json_integer(total)) != 0;
    if (!bad) {
        bad |= json_object_set(out, "weight_map", wm) != 0;
    }
    json_decref(wm);
    mxm_status st = bad ? mxm_fail(MXM_ERR_NOMEM, "out of memory building " CQ_INDEX) : MXM_OK;
    if (st == MXM_OK) st = cq_write_json(j, CQ_INDEX, out, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(out);
    return st;
}

/* What wrote the checkpoint. Loaders do not read it (vLLM recognises the format by
 * quantization_config.quant_method "modelopt" and quant_algo "MXFP8"; docs/checkpoints.md). */
static json_t *cq_producer(void) {
    return json_pack("{s:s, s:s}", "name", "mxmoe", "version", mxm_version());
}

static json_t *cq_ignore_list(const cq_job *j) {
    json_t *a = json_array();
    if (!a) return NULL;
    /* MXM_QUANTIZE_MODELOPT's list holds "lm_head" in its sorted place already */
    int bad =
        j->scope == MXM_QUANTIZE_EXPERTS && json_array_append_new(a, json_string("lm_head")) != 0;
    for (size_t i = 0; i < j->excl.n; i++)
        bad |= json_array_append_new(a, json_string(j->excl.v[i].s)) != 0;
    if (bad) {
        json_decref(a);
        return NULL;
    }
    return a;
}

static mxm_status cq_write_hf_quant_config(cq_job *j) {
    json_t *ign = cq_ignore_list(j);
    json_t *v = ign ? json_pack("{s:o, s:{s:s, s:n, s:i, s:o}}", "producer", cq_producer(),
                                "quantization", "quant_algo", "MXFP8", "kv_cache_quant_algo",
                                "group_size", MXM_MX_BLOCK, "exclude_modules", ign)
                    : NULL;
    if (!v) return mxm_fail(MXM_ERR_NOMEM, "out of memory building " CQ_HFQ);
    const mxm_status st = cq_write_json(j, CQ_HFQ, v, JSON_INDENT(4) | JSON_PRESERVE_ORDER);
    json_decref(v);
    return st;
}

static int cq_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* config.json: the input's text with "quantization_config" appended as the last member, so
 * that everything else (formatting, {"__float__": ...} objects) stays as it was; only the bare
 * Infinity/-Infinity/NaN tokens become valid JSON (1e999, -1e999, null). */
static mxm_status cq_write_config(cq_job *j, const char *cpath) {
    const char *text = j->config_text;
    size_t end = j->config_len;
    while (end > 0 && cq_space(text[end - 1]))
        end--;
    if (end == 0 || text[end - 1] != '}')
        return mxm_fail(MXM_ERR_FORMAT, PT ": does not end with '}'", cpath);
    const size_t close_at = end - 1;
    size_t k = close_at;
    while (k > 0 && cq_space(text[k - 1]))
        k--;
    const int empty = k > 0 && text[k - 1] == '{';
    /* indentation of the first member */
    int indent = 0;
    const char *open_brace = strchr(text, '{');
    const char *p = open_brace ? open_brace + 1 : text;
    while (*p == ' ' || *p == '\t' || *p == '\r')
        p++;
    if (*p == '\n') {
        p++;
        while (p[indent] == ' ')
            indent++;
        if (indent == 0 && p[0] == '\t') indent = 2;
    }
    if (indent > 31) indent = 2;

    json_t *ign = cq_ignore_list(j);
    json_t *qc = ign ? json_pack("{s:o, s:s, s:o, s:s}", "ignore", ign, "quant_algo", "MXFP8",
                                 "producer", cq_producer(), "quant_method", "modelopt")
                     : NULL;
    char *dump =
        qc ? json_dumps(qc, (indent ? JSON_INDENT(indent) : JSON_COMPACT) | JSON_PRESERVE_ORDER)
           : NULL;
    json_decref(qc);
    if (!dump) return mxm_fail(MXM_ERR_NOMEM, "out of memory building " CQ_CONFIG);
    /* the dump's lines after the first get one more level of indentation */
    size_t nl = 0;
    for (const char *c = dump; *c; c++)
        nl += *c == '\n';
    const size_t dlen = strlen(dump);
    const size_t cap =
        k + 8 + (size_t)indent + 24 + dlen + nl * (size_t)indent + (j->config_len - close_at) + 1;
    char *out = malloc(cap);
    if (!out) {
        free(dump);
        return mxm_fail(MXM_ERR_NOMEM, "out of memory building " CQ_CONFIG);
    }
    size_t o = 0;
    memcpy(out, text, k);
    o = k;
    if (!empty) out[o++] = ',';
    if (indent) {
        out[o++] = '\n';
        memset(out + o, ' ', (size_t)indent);
        o += (size_t)indent;
    } else if (!empty) {
        out[o++] = ' ';
    }
    static const char key[] = "\"quantization_config\": ";
    memcpy(out + o, key, sizeof key - 1);
    o += sizeof key - 1;
    for (const char *c = dump; *c; c++) {
        out[o++] = *c;
        if (*c == '\n') {
            memset(out + o, ' ', (size_t)indent);
            o += (size_t)indent;
        }
    }
    free(dump);
    if (indent) out[o++] = '\n';
    memcpy(out + o, text + close_at, j->config_len - close_at);
    o += j->config_len - close_at;
    MXM_ASSERT(o < cap);
    out[o] = '\0';
    /* the input's bare Infinity/NaN (Python's json) written as valid JSON (see json_text.h) */
    size_t vlen;
    char *valid = mxm_json_text_valid(out, o, &vlen);
    free(out);
    if (!valid) return mxm_fail(MXM_ERR_NOMEM, "out of memory building " CQ_CONFIG);
    const mxm_status st = cq_write_text(j, CQ_CONFIG, valid, vlen);
    free(valid);
    return st;
}

static mxm_status cq_copy_file(cq_job *j, const char *name, const char *src) {
    const char *tmp = NULL; /* set by cq_add_tmp on success */
    mxm_status st = cq_add_tmp(j, name, &tmp);
    if (st != MXM_OK) return st;
    const int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) return mxm_fail(MXM_ERR_IO, PT ": cannot open: %s", src, strerror(errno));
    const int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        st = mxm_fail(MXM_ERR_IO, PT ": cannot create: %s", tmp, strerror(errno));
        close(in);
        return st;
    }
    enum { BUF = 1 << 20 };
    char *buf = malloc(BUF);
    if (!buf) st = mxm_fail(MXM_ERR_NOMEM, "out of memory copying " PT, src);
    while (st == MXM_OK) {
        const ssize_t r = read(in, buf, BUF);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) st = mxm_fail(MXM_ERR_IO, PT ": read failed: %s", src, strerror(errno));
        if (r <= 0) break;
        st = st_write_all(out, buf, r, tmp);
    }
    free(buf);
    close(in);
    if (st == MXM_OK && fsync(out) != 0)
        st = mxm_fail(MXM_ERR_IO, PT ": fsync failed: %s", tmp, strerror(errno));
    if (close(out) != 0 && st == MXM_OK)
        st = mxm_fail(MXM_ERR_IO, PT ": close failed: %s", tmp, strerror(errno));
    return st;
}

static int cq_is_shard(const cq_job *j, const char *name) {
    for (size_t i = 0; i < j->nshards; i++)
        if (strcmp(j->shards[i].name, name) == 0) return 1;
    return 0;
}

/* Every other regular file of in_dir (symlinks followed), byte for byte; folders are skipped. */
static mxm_status cq_copy_others(cq_job *j) {
    DIR *d = opendir(j->in_dir);
    if (!d) return mxm_fail(MXM_ERR_IO, PT ": cannot list folder: %s", j->in_dir, strerror(errno));
    mxm_status st = MXM_OK;
    const struct dirent *de;
    while (st == MXM_OK && (de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        if (strcmp(nm, ".") == 0 || strcmp(nm, "..") == 0) continue;
        if (strcmp(nm, CQ_CONFIG) == 0 || strcmp(nm, CQ_HFQ) == 0 || strcmp(nm, CQ_INDEX) == 0)
            continue;
        if (cq_is_shard(j, nm)) continue;
        if (strcmp(nm, CQ_SINGLE) == 0) { /* next to an index that does not use it */
            mxm_log(MXM_LOG_WARN,
                    "checkpoint_quantize: " PT "/" CQ_SINGLE " is not in " CQ_INDEX
                    "; not copied (loaders could take it for the model)",
                    j->in_dir);
            continue;
        }
        char *src = mxm_st_path_join(j->in_dir, nm);
        if (!src) {
            st = mxm_fail(MXM_ERR_NOMEM, "out of memory");
            break;
        }
        struct stat sb;
        if (stat(src, &sb) == 0 && S_ISREG(sb.st_mode))
            st = cq_copy_file(j, nm, src);
        else if (nm[0] != '.')
            mxm_log(MXM_LOG_WARN, "checkpoint_quantize: " PT " is not a regular file; not copied",
                    src);
        free(src);
    }
    closedir(d);
    return st;
}

static int cq_same_file(const char *a, const char *b) {
    struct stat x, y;
    return stat(a, &x) == 0 && stat(b, &y) == 0 && x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

/* 1 when path is a folder with nothing in it. */
static int cq_dir_empty(const char *path) {
    DIR *d = opendir(path);
    if (!d) return 0;
    const struct dirent *de;
    int empty = 1;
    while (empty && (de = readdir(d)) != NULL)
        empty = strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0;
    closedir(d);
    return empty;
}

/* Checks that out_dir is new or empty, creates its parent folders and the staging folder. */
static mxm_status cq_make_stage(cq_job *j) {
    struct stat sb;
    if (stat(j->out_dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) return mxm_fail(MXM_ERR_IO, PT ": exists and is not a folder", j->out_dir);
        if (!cq_dir_empty(j->out_dir))
            return mxm_fail(MXM_ERR_INVALID_ARG,
                            PT ": not empty; the checkpoint is written only into a new or empty folder "
                               "(remove it, or choose another)",
                            j->out_dir);
    }
    char *parent = strdup(j->out_dir);
    if (!parent) return mxm_fail(MXM_ERR_NOMEM, "out of memory");
    size_t n = strlen(parent);
    while (n > 1 && parent[n - 1] == '/')
        parent[--n] = '\0';
    char *slash = strrchr(parent, '/');
    const char *base = slash ? slash + 1 : parent;
    const char *pdir = slash ? (slash == parent ? "/" : parent) : ".";
    if (slash && slash != parent) *slash = '\0';
    char *name = malloc(strlen(base) + 16);
    mxm_status st = name ? MXM_OK : mxm_fail(MXM_ERR_NOMEM, "out of memory");
    if (name) snprintf(name, strlen(base) + 16, ".%s.tmp.XXXXXX", base);
    if (st == MXM_OK) st = cq_mkdirs(pdir);
    if (st == MXM_OK && !(j->stage = mxm_st_path_join(pdir, name))) st = mxm_fail(MXM_ERR_NOMEM, "out of memory");
    if (st == MXM_OK && !mkdtemp(j->stage)) {
        st = mxm_fail(MXM_ERR_IO, PT ": cannot create a staging folder: %s", j->stage, strerror(errno));
        free(j->stage);
        j->stage = NULL;
    }
    free(name);
    free(parent);
    return st;
}

static mxm_status cq_run(cq_job *j) {
    mxm_status st;
    struct stat sb;
    if (stat(j->in_dir, &sb) != 0) {
        const int e = errno;
        return mxm_fail(e == ENOENT ? MXM_ERR_NOT_FOUND : MXM_ERR_IO, PT ": %s", j->in_dir,
                        strerror(e));
    }
    if (!S_ISDIR(sb.st_mode)) return mxm_fail(MXM_ERR_IO, PT ": not a folder", j->in_dir);
    if (cq_same_file(j->in_dir, j->out_dir))
        return mxm_fail(MXM_ERR_INVALID_ARG,
                        "mxm_checkpoint_quantize: out_dir " PT " is the input folder; write to a "
                        "new folder",
                        j->out_dir);

    char *cpath = mxm_st_path_join(j->in_dir, CQ_CONFIG), *hpath = mxm_st_path_join(j->in_dir, CQ_HFQ);
    if (!cpath || !hpath) {
        free(cpath);
        free(hpath);
        return mxm_fail(MXM_ERR_NOMEM, "out of memory");
    }
    if (cq_exists(hpath))
        st = mxm_fail(MXM_ERR_UNSUPPORTED, PT ": present, so the checkpoint is already quantized",
                      hpath);
    else
        st = cq_load_config(j, cpath);
    if (st == MXM_OK) {
        const json_t *mt = json_object_get(j->config, "model_type");
        const char *family = json_is_string(mt) ? json_string_value(mt) : "";
        const mxm_ckpt_family *f = mxm_ckpt_family_find(family);
        const int known = f && strcmp(f->name, family) == 0; /* the fixtures: no alias */
        j->file_root = f ? f->file_root : NULL;
        mxm_log(MXM_LOG_INFO, "checkpoint_quantize: " PT ": model_type '" NM "'%s", j->in_dir,
                family, known ? "" : " (not a tested family; expert weights found by name)");
        st = cq_open_inputs(j);
    }
    if (st == MXM_OK) st = cq_plan(j);
    if (st == MXM_OK) st = cq_make_stage(j);
    for (size_t s = 0; s < j->nshards && st == MXM_OK; s++)
        st = cq_write_shard(j, &j->shards[s]);
    if (st == MXM_OK && j->index) st = cq_write_index(j);
    if (st == MXM_OK) st = cq_copy_others(j);
    if (st == MXM_OK) st = cq_write_hf_quant_config(j);
    if (st == MXM_OK) st = cq_write_config(j, cpath);
    free(cpath);
    free(hpath);
    if (st != MXM_OK) return st;

    /* rename(2) replaces a missing or empty out_dir, never a non-empty one */
    if (rename(j->stage, j->out_dir) != 0) {
        const int e = errno;
        return mxm_fail(MXM_ERR_IO, PT ": cannot move the finished checkpoint there: %s%s", j->out_dir,
                        strerror(e),
                        e == ENOTEMPTY || e == EEXIST ? " (another writer filled the folder meanwhile)" : "");
    }
    free(j->stage);
    j->stage = NULL;
    const int dfd = open(j->out_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return MXM_OK;
}

void mxm_quantize_options_default(mxm_quantize_options *o) {
    if (!o) return;
    o->scale_rule = MXM_SCALE_RCEIL;
    o->num_threads = 0;
    o->scope = MXM_QUANTIZE_MODELOPT;
}

mxm_status mxm_checkpoint_quantize_ex(const char *in_dir, const char *out_dir,
                                      const mxm_quantize_options *opts, mxm_progress_fn progress,
                                      void *user) {
    mxm_quantize_options o;
    mxm_quantize_options_default(&o);
    if (opts) o = *opts;
    if (!in_dir || !out_dir)
        return mxm_fail(MXM_ERR_NULL, "mxm_checkpoint_quantize: in_dir or out_dir is NULL");
    if (!in_dir[0] || !out_dir[0])
        return mxm_fail(MXM_ERR_INVALID_ARG, "mxm_checkpoint_quantize: empty folder name");
    if (o.scale_rule != MXM_SCALE_RCEIL && o.scale_rule != MXM_SCALE_FLOOR)
        return mxm_fail(MXM_ERR_INVALID_ARG,
                        "mxm_checkpoint_quantize: scale rule %d unknown; supported: rceil (0), "
                        "floor (1)",
                        o.scale_rule);
    if (o.num_threads < 0)
        return mxm_fail(MXM_ERR_INVALID_ARG, "mxm_checkpoint_quantize: num_threads %d < 0",
                        o.num_threads);
    if (o.scope != MXM_QUANTIZE_MODELOPT && o.scope != MXM_QUANTIZE_EXPERTS)
        return mxm_fail(
            MXM_ERR_INVALID_ARG,
            "mxm_checkpoint_quantize: scope %d unknown; supported: modelopt (0), experts (1)",
            o.scope);
    cq_job j;
    memset(&j, 0, sizeof j);
    j.in_dir = in_dir;
    j.out_dir = out_dir;
    j.rule = o.scale_rule;
    j.threads = o.num_threads;
    j.scope = o.scope;
    j.progress = progress;
    j.user = user;
    const mxm_status st = cq_run(&j);
    /* On failure every temporary goes; after success none is left (all renamed). */
    cq_job_free(&j, st != MXM_OK);
    return st;
}

mxm_status mxm_checkpoint_quantize(const char *in_dir, const char *out_dir, int32_t scale_rule,
                                   int32_t num_threads, mxm_progress_fn progress, void *user) {
    mxm_quantize_options o;
    mxm_quantize_options_default(&o);
    o.scale_rule = scale_rule;
    o.num_threads = num_threads;
    return mxm_checkpoint_quantize_ex(in_dir, out_dir, &o, progress, user);
}
