/* mxmoe: the command-line tool.
 *
 *   mxmoe demo      run a synthetic Nemotron-3-Nano-shaped MXFP8 layer and report on it
 *   mxmoe inspect   list a checkpoint's family, quantization, MoE layers and tensors
 *   mxmoe run       run a checkpoint's MoE layer on inputs from a safetensors file
 *   mxmoe verify    compare a checkpoint's layer against a reference.safetensors fixture
 *   mxmoe quantize  BF16 Hugging Face checkpoint -> ModelOpt MXFP8 checkpoint
 *   mxmoe bench     the layer benchmark (same as bench/bench_moe)
 *
 * Errors are one line on stderr and a non-zero exit. Progress goes to stderr. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "moebench.h"
#include "mxmoe.h"

static int die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "mxmoe: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return 1;
}

static int die_status(int st, const char *what) {
    return die("%s: %s: %s", what, mxm_status_str(st), mxm_last_error());
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Every numeric option goes through these two: the whole string must be the number (no leading
 * blanks or signs strtoll would skip, no trailing text), within lo..hi. */
static int parse_int(const char *s, const char *opt, int64_t lo, int64_t hi, int64_t *out) {
    const int digits = (s[0] >= '0' && s[0] <= '9') || (s[0] == '-' && s[1] >= '0' && s[1] <= '9');
    char *end = (char *)s;
    errno = 0;
    const long long v = digits ? strtoll(s, &end, 10) : 0;
    if (!digits || errno || *end || v < lo || v > hi)
        return die("%s: '%s' is not an integer in %lld..%lld", opt, s, (long long)lo, (long long)hi);
    *out = v;
    return 0;
}

static int parse_num(const char *s, const char *opt, double lo, double hi, double *out) {
    const int digits = (s[0] >= '0' && s[0] <= '9') || s[0] == '.' || s[0] == '-';
    char *end = (char *)s;
    errno = 0;
    const double v = digits ? strtod(s, &end) : NAN;
    if (!digits || isnan(v) || errno || *end || !(v >= lo && v <= hi)) return die("%s: '%s' is not a number in %g..%g", opt, s, lo, hi);
    *out = v;
    return 0;
}

/* Positional arguments are not options' values: a command that takes none rejects them. */
static int no_positional(int argc, char **argv, const char *cmd) {
    return optind < argc ? die("%s: unexpected argument '%s' (see --help)", cmd, argv[optind]) : 0;
}

/* SIGINT/SIGTERM during run, verify and quantize: finish the step at hand, remove what is
 * half-written, exit 128 + signal. A second signal kills at once (SA_RESETHAND). */
static volatile sig_atomic_t g_signal;
static void on_signal(int sig) { g_signal = sig; }
static void catch_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}
static int interrupted(void) {
    return g_signal ? (fprintf(stderr, "mxmoe: interrupted (signal %d); nothing written\n", (int)g_signal), 128 + g_signal)
                    : 0;
}

/* Options shared by run/verify/demo/bench. */
typedef struct common_opts {
    int32_t act_quant, profile, threads, backend, quantize;
    const char *model; /* --model (run, verify) */
    int64_t layer;     /* --layer, -1: the first MoE layer */
} common_opts;

static const struct option common_long[] = {
    {"act-quant", required_argument, 0, 'a'}, {"profile", required_argument, 0, 'p'},
    {"threads", required_argument, 0, 't'},   {"backend", required_argument, 0, 'b'},
    {"quantize", no_argument, 0, 'q'}, /* last: only run and verify load checkpoints */
};
#define N_COMMON_SYNTHETIC 4 /* the entries of common_long that demo and bench take */

/* Handles one of the common options; returns 1 when handled, -1 on a bad value, 0 otherwise. */
static int common_opt(int c, common_opts *o) {
    int64_t v = 0;
    switch (c) {
    case 'a':
        if (!strcmp(optarg, "mxfp8")) o->act_quant = MXM_ACT_QUANT_MXFP8;
        else if (!strcmp(optarg, "none")) o->act_quant = MXM_ACT_QUANT_NONE;
        else return die("--act-quant: '%s'; supported: mxfp8, none", optarg), -1;
        return 1;
    case 'p':
        if (!strcmp(optarg, "trtllm")) o->profile = MXM_PROFILE_TRTLLM;
        else if (!strcmp(optarg, "exact")) o->profile = MXM_PROFILE_EXACT;
        else return die("--profile: '%s'; supported: trtllm, exact", optarg), -1;
        return 1;
    case 't':
        if (parse_int(optarg, "--threads", 1, 4096, &v)) return -1;
        o->threads = (int32_t)v;
        return 1;
    case 'b':
        if (!strcmp(optarg, "cpu")) o->backend = MXM_BACKEND_CPU;
        else if (!strcmp(optarg, "cuda")) o->backend = MXM_BACKEND_CUDA;
        else return die("--backend: '%s'; supported: cpu, cuda", optarg), -1;
        if (o->backend == MXM_BACKEND_CUDA && !mxm_cuda_available())
            return die("--backend cuda: no CUDA device is present (or the CUDA backend was not built)"), -1;
        return 1;
    case 'q': o->quantize = 1; return 1;
    case 'm': o->model = optarg; return 1;
    case 'l': return parse_int(optarg, "--layer", 0, 1 << 20, &o->layer) ? -1 : 1;
    }
    return 0;
}

static void common_defaults(common_opts *o) {
    o->act_quant = -1 /* by weight format */, o->profile = MXM_PROFILE_TRTLLM, o->threads = 0;
    o->backend = MXM_BACKEND_CPU, o->quantize = 0, o->model = NULL, o->layer = -1;
}

static const char common_help[] =
    "  --act-quant mxfp8|none   W8A8 (activations quantized) or weight-only; default: mxfp8 for\n"
    "                           MXFP8/FP8 weights, none for BF16/F32 weights (the reference mode)\n"
    "  --profile trtllm|exact   bf16 rounding points of the TRT-LLM kernel (default) or fp32\n"
    "  --threads N              CPU threads (default: all)\n"
    "  --backend cpu|cuda       where to run (default cpu)\n";

/* ---- a loaded layer, ready to run ------------------------------------------------------------ */

typedef struct runner {
    mxm_model *model;
    mxm_layer *layer;
    mxm_moe_config cfg;
    int32_t layer_index;
    /* CUDA backend: the layer's expert weights copied to the device */
    mxm_expert_weights *dev_experts; /* [E + 1] */
    mxm_moe_weights dev_weights;
    void *dev_bias;
    void **dev_bufs;
    int32_t ndev;
} runner;

static void *dev_copy(runner *r, const void *src, int64_t bytes) {
    void *d = NULL;
    if (mxm_device_alloc(bytes, &d) || mxm_copy_to_device(d, src, bytes)) {
        mxm_device_free(d);
        return NULL;
    }
    r->dev_bufs[r->ndev++] = d;
    return d;
}

/* Copies the loaded layer's weights and bias to the GPU (MXFP8 and DeepSeek FP8 on the CUDA
 * backend). */
static int runner_to_device(runner *r) {
    const mxm_moe_config *c = &r->cfg;
    const int32_t f = c->weight_format;
    if (f != MXM_WFMT_MXFP8 && f != MXM_WFMT_FP8_BLOCK)
        return die("--backend cuda runs MXFP8 and DeepSeek FP8 weights; this layer is %s (add --quantize for "
                   "BF16/F32 checkpoints)",
                   mxm_weight_format_name(f));
    const mxm_moe_weights *w = mxm_layer_weights(r->layer);
    const int64_t E = c->num_experts, H = c->hidden_size;
    r->dev_experts = calloc((size_t)E + 1, sizeof *r->dev_experts);
    r->dev_bufs = calloc((size_t)(4 * (E + 1) + 1), sizeof(void *));
    if (!r->dev_experts || !r->dev_bufs) return die("out of memory");
    fprintf(stderr, "copying %.1f MB of expert weights to %s...\n", mxm_layer_weight_bytes(r->layer) / 1e6,
            mxm_device_name());
    for (int64_t e = 0; e <= E; e++) {
        const int shared = e == E;
        if (shared && !w->shared) break;
        const mxm_expert_weights *src = shared ? w->shared : &w->experts[e];
        const int act = shared && c->shared_activation >= 0 ? c->shared_activation : c->activation;
        const int64_t I = shared ? c->shared_intermediate_size : c->intermediate_size;
        const int gated = mxm_activation_is_gated(act) == 1;
        const int64_t M1 = (gated ? 2 : 1) * I;
        mxm_expert_weights *d = &r->dev_experts[e];
        if (!(d->w13 = dev_copy(r, src->w13, mxm_weight_data_bytes(f, M1, H))) ||
            !(d->w13_scale = dev_copy(r, src->w13_scale, mxm_weight_scale_bytes(f, M1, H))) ||
            !(d->w2 = dev_copy(r, src->w2, mxm_weight_data_bytes(f, H, I))) ||
            !(d->w2_scale = dev_copy(r, src->w2_scale, mxm_weight_scale_bytes(f, H, I))))
            return die_status(MXM_ERR_CUDA, "copying weights to the GPU");
    }
    r->dev_weights = (mxm_moe_weights){r->dev_experts, w->shared ? &r->dev_experts[E] : NULL, NULL, NULL, NULL};
    const float *bias = mxm_layer_routing_bias(r->layer);
    if (bias && !(r->dev_bias = dev_copy(r, bias, E * 4))) return die_status(MXM_ERR_CUDA, "copying the bias");
    return 0;
}

static int runner_open_(runner *r, const char *dir, int32_t layer_index, const common_opts *o) {
    int st = mxm_model_open(dir, &r->model);
    if (st) return die_status(st, dir);
    if (mxm_model_moe_layer_count(r->model) == 0)
        return die("%s: no MoE layers found (family '%s')", dir, mxm_model_family(r->model));
    r->layer_index = layer_index >= 0 ? layer_index : mxm_model_moe_layer(r->model, 0);
    mxm_layer_options lo;
    mxm_layer_options_default(&lo);
    lo.num_threads = o->threads;
    lo.profile = o->profile;
    if (o->quantize) lo.weight_format = MXM_WFMT_MXFP8;
    fprintf(stderr, "loading layer %d of %s...\n", r->layer_index, dir);
    if ((st = mxm_layer_load(r->model, r->layer_index, &lo, &r->layer))) return die_status(st, "loading layer");
    r->cfg = *mxm_layer_config(r->layer);
    const int fp8 = r->cfg.weight_format == MXM_WFMT_MXFP8 || r->cfg.weight_format == MXM_WFMT_FP8_BLOCK;
    r->cfg.act_quant = o->act_quant >= 0 ? o->act_quant : fp8 ? MXM_ACT_QUANT_MXFP8 : MXM_ACT_QUANT_NONE;
    r->cfg.profile = o->profile;
    r->cfg.num_threads = o->threads, r->cfg.backend = o->backend;
    return o->backend == MXM_BACKEND_CUDA ? runner_to_device(r) : 0;
}

static void runner_close(runner *r) {
    for (int32_t i = 0; i < r->ndev; i++) mxm_device_free(r->dev_bufs[i]);
    free(r->dev_bufs), free(r->dev_experts);
    mxm_layer_free(r->layer);
    mxm_model_close(r->model);
    memset(r, 0, sizeof *r);
}

/* Opens the model and loads the layer; on failure nothing stays open. */
static int runner_open(runner *r, const char *dir, int32_t layer_index, const common_opts *o) {
    memset(r, 0, sizeof *r);
    const int rc = runner_open_(r, dir, layer_index, o);
    if (rc) runner_close(r);
    return rc;
}

/* Runs T tokens of x (bf16 or f32): y, yr bf16 [T, H], ids [T, K], w [T, K]. */
/* Device copies of one forward's inputs and outputs (CUDA backend). */
typedef struct dev_io {
    void *p[7]; /* x, logits, y, yr, ids, w, workspace */
} dev_io;

static int dev_io_alloc(dev_io *d, const int64_t bytes[7]) {
    memset(d, 0, sizeof *d);
    for (int i = 0; i < 7; i++)
        if (mxm_device_alloc(bytes[i], &d->p[i])) return 1;
    return 0;
}

static void dev_io_free(dev_io *d) {
    for (int i = 0; i < 7; i++) mxm_device_free(d->p[i]);
}

static int runner_forward(const runner *r, const void *x, int32_t x_dtype, int64_t T, uint16_t *y, uint16_t *yr,
                          int32_t *ids, float *w, double *seconds) {
    const int64_t E = r->cfg.num_experts, H = r->cfg.hidden_size, K = r->cfg.top_k;
    const int cuda = r->cfg.backend == MXM_BACKEND_CUDA;
    float *logits = malloc((size_t)(T * E * 4 + 4));
    mxm_moe_plan *plan = NULL;
    void *ws = NULL;
    dev_io d = {{0}};
    int st = logits ? mxm_layer_router_logits(r->layer, x, x_dtype, T, logits, r->cfg.num_threads) : MXM_ERR_NOMEM;
    if (!st) st = mxm_moe_plan_create(&r->cfg, T > 0 ? T : 1, &plan);
    if (!st) {
        const int64_t wsb = mxm_moe_plan_workspace_size(plan), xb = T * H * mxm_dtype_size(x_dtype);
        mxm_moe_inputs in = {.num_tokens = T, .x = x, .x_dtype = x_dtype, .router_logits = logits,
                             .logits_dtype = MXM_DT_F32, .routing_bias = mxm_layer_routing_bias(r->layer),
                             .bias_dtype = MXM_DT_F32};
        mxm_moe_outputs out = {y, MXM_DT_BF16, yr, ids, w};
        const mxm_moe_weights *mw = mxm_layer_weights(r->layer);
        if (cuda) {
            const int64_t bytes[7] = {xb, T * E * 4, T * H * 2, T * H * 2, T * K * 4, T * K * 4, wsb};
            st = dev_io_alloc(&d, bytes) ? MXM_ERR_CUDA : MXM_OK;
            if (!st) st = mxm_copy_to_device(d.p[0], x, xb);
            if (!st) st = mxm_copy_to_device(d.p[1], logits, T * E * 4);
            in.x = d.p[0], in.router_logits = d.p[1], in.routing_bias = r->dev_bias;
            out = (mxm_moe_outputs){d.p[2], MXM_DT_BF16, d.p[3], d.p[4], d.p[5]};
            ws = d.p[6];
            mw = &r->dev_weights;
        } else {
            ws = aligned_alloc(64, (size_t)wsb);
            if (!ws) st = MXM_ERR_NOMEM;
        }
        const double t0 = now_s();
        if (!st) st = mxm_moe_forward(plan, mw, &in, &out, ws, wsb, NULL);
        if (!st && cuda) st = mxm_device_synchronize();
        if (seconds) *seconds = now_s() - t0;
        if (!st && cuda) {
            st = mxm_copy_to_host(y, d.p[2], T * H * 2);
            if (!st) st = mxm_copy_to_host(yr, d.p[3], T * H * 2);
            if (!st) st = mxm_copy_to_host(ids, d.p[4], T * K * 4);
            if (!st) st = mxm_copy_to_host(w, d.p[5], T * K * 4);
        }
    }
    if (cuda) dev_io_free(&d);
    else free(ws);
    free(logits);
    mxm_moe_plan_destroy(plan);
    return st ? die_status(st, "forward") : 0;
}

/* x tensor from a safetensors file as a malloc'd copy (aligned), bf16 or f32 [T, H]. */
static void *load_x(mxm_model *f, int64_t i, int64_t H, int32_t *dtype, int64_t *T, const char *path) {
    const char *name, *dt;
    int32_t rank;
    int64_t shape[8];
    const void *data;
    int64_t nbytes;
    mxm_model_tensor_info(f, i, &name, &dt, &rank, shape);
    if (strcmp(dt, "BF16") && strcmp(dt, "F32")) return die("%s: '%s' is %s; supported: BF16, F32", path, name, dt), NULL;
    if (rank != 2 || shape[1] != H)
        return die("%s: '%s' must be [T, %lld]; it is rank %d [%lld, ...]", path, name, (long long)H, rank,
                   (long long)shape[0]),
               NULL;
    mxm_model_tensor_data(f, i, &data, &nbytes);
    void *x = malloc((size_t)nbytes + 1);
    if (!x) return die("out of memory"), NULL;
    memcpy(x, data, (size_t)nbytes);
    *dtype = strcmp(dt, "BF16") ? MXM_DT_F32 : MXM_DT_BF16;
    *T = shape[0];
    return x;
}

/* The layer's results for one x tensor of a safetensors file. */
typedef struct x_result {
    void *x;
    uint16_t *y, *yr; /* bf16 [T, H] */
    int32_t *ids;     /* [T, K] */
    float *w;         /* [T, K] */
    int64_t T;
    double seconds;
} x_result;

static void x_result_free(x_result *r) {
    free(r->x), free(r->y), free(r->yr), free(r->ids), free(r->w);
    memset(r, 0, sizeof *r);
}

/* One naming rule for run and verify: the inputs are the tensors named x or x_<suffix>; each
 * result carries the same suffix (y_<suffix>, ...). */
static int is_input_name(const char *name) { return name[0] == 'x' && (name[1] == '\0' || name[1] == '_'); }

/* Tokens per forward call: bounds the temporary memory (logits, workspace) and gives long runs
 * their progress line. */
#define RUN_CHUNK 8192

/* Loads tensor i of f as x and runs the layer on it. Returns 0, or the exit code (error printed;
 * 128 + signal when interrupted). */
static int forward_tensor(const runner *r, mxm_model *f, int64_t i, const char *path, x_result *res) {
    const int64_t H = r->cfg.hidden_size, K = r->cfg.top_k;
    int32_t dt;
    const char *name;
    memset(res, 0, sizeof *res);
    mxm_model_tensor_info(f, i, &name, NULL, NULL, NULL);
    if (!(res->x = load_x(f, i, H, &dt, &res->T, path))) return 1;
    const int64_t T = res->T, xsize = dt == MXM_DT_BF16 ? 2 : 4;
    res->y = malloc((size_t)(T * H * 2 + 2)), res->yr = malloc((size_t)(T * H * 2 + 2));
    res->ids = malloc((size_t)(T * K * 4 + 4)), res->w = malloc((size_t)(T * K * 4 + 4));
    if (!res->y || !res->yr || !res->ids || !res->w) return die("out of memory");
    const double t0 = now_s();
    for (int64_t a = 0; a < T; a += RUN_CHUNK) {
        const int64_t n = T - a < RUN_CHUNK ? T - a : RUN_CHUNK;
        double sec = 0;
        if (runner_forward(r, (const char *)res->x + a * H * xsize, dt, n, res->y + a * H, res->yr + a * H,
                           res->ids + a * K, res->w + a * K, &sec))
            return 1;
        res->seconds += sec;
        if (T > RUN_CHUNK)
            fprintf(stderr, "\r%s: %lld of %lld tokens, %.0f s", name, (long long)(a + n), (long long)T, now_s() - t0);
        if (g_signal) return fprintf(stderr, "\n"), interrupted();
    }
    if (T > RUN_CHUNK) fprintf(stderr, "\n");
    return 0;
}

/* The output file's folder must exist and be writable, and the path must not be a folder:
 * checked before any computing. */
static int check_output_path(const char *path) {
    struct stat sb;
    if (!*path) return die("--output: empty path");
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) return die("%s: exists and is not a regular file", path);
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) return die("%s: folder '%s' does not exist", path, dir);
    if (access(dir, W_OK | X_OK) != 0) return die("%s: folder '%s' is not writable", path, dir);
    return 0;
}

/* ---- run --------------------------------------------------------------------------------------- */

static int cmd_run(int argc, char **argv) {
    static const char help[] =
        "usage: mxmoe run --model DIR --input IN.safetensors --output OUT.safetensors [options]\n"
        "For every tensor named x or x_<suffix> in IN (bf16/f32 [T, H], the hidden states entering the\n"
        "MoE block; verify uses the same rule) writes y<suffix> (bf16, routed + shared experts),\n"
        "yr<suffix> (bf16, routed only), ids<suffix> (int32 [T, K]) and w<suffix> (f32 [T, K], final\n"
        "routing weights) to OUT, atomically (a unique temporary renamed over OUT at the end).\n"
        "Progress on stderr for inputs above 8192 tokens; SIGINT/SIGTERM stop without writing.\n"
        "  --layer L                MoE layer index (default: the first MoE layer)\n"
        "  --quantize               quantize BF16/F32 expert weights to MXFP8 at load\n";
    const char *input = NULL, *output = NULL;
    common_opts o;
    common_defaults(&o);
    struct option lo[16] = {{"model", required_argument, 0, 'm'}, {"input", required_argument, 0, 'i'},
                            {"output", required_argument, 0, 'o'}, {"layer", required_argument, 0, 'l'},
                            {"help", no_argument, 0, 'h'}};
    memcpy(lo + 5, common_long, sizeof common_long);
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        const int r = common_opt(c, &o);
        if (r < 0) return 1;
        if (r) continue;
        switch (c) {
        case 'i': input = optarg; break;
        case 'o': output = optarg; break;
        case 'h': printf("%s%s", help, common_help); return 0;
        default: fprintf(stderr, "%s%s", help, common_help); return 1;
        }
    }
    const char *model = o.model;
    if (no_positional(argc, argv, "run")) return 1;
    if (!model || !input || !output) return die("run: --model, --input and --output are required (see --help)");
    if (check_output_path(output)) return 1;
    catch_signals();
    runner r;
    if (runner_open(&r, model, (int32_t)o.layer, &o)) return 1;
    mxm_model *in;
    int st = mxm_model_open(input, &in);
    if (st) {
        runner_close(&r);
        return die_status(st, input);
    }
    const int64_t H = r.cfg.hidden_size, K = r.cfg.top_k, n = mxm_model_tensor_count(in);
    mxm_tensor_out *outs = calloc((size_t)(4 * n + 1), sizeof *outs);
    x_result *res = calloc((size_t)(n + 1), sizeof *res);
    char **names = calloc((size_t)(4 * n + 1), sizeof *names);
    int64_t no = 0, ran = 0;
    int rc = 0;
    for (int64_t i = 0; i < n && !rc; i++) {
        const char *name;
        mxm_model_tensor_info(in, i, &name, NULL, NULL, NULL);
        if (!is_input_name(name)) continue;
        x_result *xr = &res[ran++];
        if ((rc = forward_tensor(&r, in, i, input, xr))) break;
        fprintf(stderr, "%s: %lld tokens in %.1f ms\n", name, (long long)xr->T, xr->seconds * 1e3);
        const char *pre[4] = {"y", "yr", "ids", "w"};
        const char *dts[4] = {"BF16", "BF16", "I32", "F32"};
        const void *data[4] = {xr->y, xr->yr, xr->ids, xr->w};
        for (int k = 0; k < 4; k++) {
            names[no] = malloc(strlen(name) + 8);
            sprintf(names[no], "%s%s", pre[k], name + 1);
            outs[no] = (mxm_tensor_out){names[no], dts[k], 2, {xr->T, k < 2 ? H : K}, data[k]};
            no++;
        }
    }
    if (!rc && !ran) rc = die("%s: no tensor named x or x_<suffix> found", input);
    if (!rc) rc = interrupted();
    if (!rc && (st = mxm_safetensors_write(output, outs, no))) rc = die_status(st, output);
    if (!rc) fprintf(stderr, "wrote %lld tensors to %s\n", (long long)no, output);
    for (int64_t i = 0; i < ran; i++) x_result_free(&res[i]);
    for (int64_t i = 0; i < no; i++) free(names[i]);
    free(res), free(names), free(outs);
    mxm_model_close(in);
    runner_close(&r);
    return rc;
}

/* ---- verify ----------------------------------------------------------------------------------- */

static float bf16f(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Value i of a reference tensor (BF16, F32, I32 or I64; the dtype was checked). */
static double ref_value(const char *dt, const void *data, int64_t i) {
    if (!strcmp(dt, "F32") || !strcmp(dt, "I32")) {
        uint32_t u;
        memcpy(&u, (const char *)data + 4 * i, 4);
        float f;
        memcpy(&f, &u, 4);
        return !strcmp(dt, "F32") ? (double)f : (double)(int32_t)u;
    }
    if (!strcmp(dt, "I64")) {
        int64_t v;
        memcpy(&v, (const char *)data + 8 * i, 8);
        return (double)v;
    }
    uint16_t h;
    memcpy(&h, (const char *)data + 2 * i, 2);
    return bf16f(h);
}

/* A reference tensor named prefix+suffix: -1 when absent; its index when it is [T, cols] of one
 * of the dtypes (comma list) and, for float dtypes, holds only finite values; else -2 with the
 * error printed. A reference that cannot be used is an error, never a pass. */
static int64_t ref_tensor(mxm_model *m, const char *path, const char *prefix, const char *suffix, int64_t T,
                          int64_t cols, const char *dtypes) {
    char name[256];
    snprintf(name, sizeof name, "%s%s", prefix, suffix);
    const int64_t i = mxm_model_tensor_find(m, name);
    if (i < 0) return -1;
    const char *dt;
    int32_t rank;
    int64_t shape[8];
    const void *data;
    mxm_model_tensor_info(m, i, NULL, &dt, &rank, shape);
    char want[32];
    snprintf(want, sizeof want, ",%s,", dtypes);
    char have[32];
    snprintf(have, sizeof have, ",%s,", dt);
    if (!strstr(want, have)) return die("%s: '%s' is %s; supported: %s", path, name, dt, dtypes), -2;
    if (rank != 2 || shape[0] != T || shape[1] != cols)
        return die("%s: '%s' must be [%lld, %lld] like its x; it has rank %d", path, name, (long long)T,
                   (long long)cols, rank),
               -2;
    mxm_model_tensor_data(m, i, &data, NULL);
    for (int64_t k = 0; k < T * cols; k++) {
        const double v = ref_value(dt, data, k);
        if (!isfinite(v))
            return die("%s: '%s' holds %g at [%lld, %lld]; a reference must be finite", path, name, v,
                       (long long)(k / cols), (long long)(k % cols)),
                   -2;
    }
    return i;
}

/* Relative L2 error of bf16 y against a checked reference tensor of the same shape. A zero
 * reference with a non-zero y is an infinite error; our own NaN gives NaN (a failure). */
static double rel_err(const uint16_t *y, mxm_model *ref, int64_t idx, int64_t n) {
    const char *dt;
    const void *data;
    mxm_model_tensor_info(ref, idx, NULL, &dt, NULL, NULL);
    mxm_model_tensor_data(ref, idx, &data, NULL);
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        const double rv = ref_value(dt, data, i), d = bf16f(y[i]) - rv;
        num += d * d, den += rv * rv;
    }
    return den > 0 ? sqrt(num / den) : (num > 0 || isnan(num) ? (isnan(num) ? NAN : INFINITY) : 0);
}

/* Whether REF was computed from the weights the layer runs (1) or from the original model the
 * checkpoint was quantized from (0). auto: the fixtures' references of quantized checkpoints say
 * "dequantized ..." in their "weights" metadata; a layer on unquantized weights is the original. */
static int reference_same_weights(const mxm_model *ref, const runner *r, const char *refw) {
    if (!strcmp(refw, "same")) return 1;
    if (!strcmp(refw, "original")) return 0;
    const char *w = mxm_model_metadata(ref, "weights");
    const int32_t f = r->cfg.weight_format;
    return (w && strstr(w, "dequantized")) || (f != MXM_WFMT_MXFP8 && f != MXM_WFMT_FP8_BLOCK);
}

static int cmd_verify(int argc, char **argv) {
    static const char help[] =
        "usage: mxmoe verify --model DIR --reference REF.safetensors [options]\n"
        "Runs every tensor named x or x_<suffix> of REF (the rule run uses) through the model's MoE\n"
        "layer and prints, per input, the relative L2 error of y against y<suffix> (bf16 reference)\n"
        "and y32<suffix> (fp32 reference), and the fraction of routing choices that match\n"
        "topk_ids<suffix>. Exits 1 when an error exceeds the tolerance, 2 when a reference cannot be\n"
        "used (wrong dtype or shape, a NaN or infinity, neither y nor y32 present).\n"
        "  --layer L                MoE layer index (default: the first MoE layer)\n"
        "  --reference-weights same|original|auto\n"
        "                           what the reference was computed from: this checkpoint's own weights\n"
        "                           (same; e.g. the dequantized MXFP8 weights) or the original unquantized\n"
        "                           model the checkpoint was quantized from (original: weight quantization\n"
        "                           error included). auto (default): same when REF's metadata 'weights' says\n"
        "                           'dequantized' or the layer runs unquantized weights, else original\n"
        "  --tolerance X            bound on the error against y32 (default, see docs/checkpoints.md:\n"
        "                           same weights 0.02, W8A8 MXFP8 0.08; original weights 0.08, W8A8 0.12)\n"
        "  --quantize               quantize BF16/F32 expert weights to MXFP8 at load\n";
    const char *refp = NULL, *refw = "auto";
    double tol = -1;
    common_opts o;
    common_defaults(&o);
    struct option lo[16] = {{"model", required_argument, 0, 'm'}, {"reference", required_argument, 0, 'r'},
                            {"layer", required_argument, 0, 'l'}, {"tolerance", required_argument, 0, 'T'},
                            {"help", no_argument, 0, 'h'}, {"reference-weights", required_argument, 0, 'W'}};
    memcpy(lo + 6, common_long, sizeof common_long);
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        const int r = common_opt(c, &o);
        if (r < 0) return 1;
        if (r) continue;
        switch (c) {
        case 'r': refp = optarg; break;
        case 'W':
            if (strcmp(optarg, "same") && strcmp(optarg, "original") && strcmp(optarg, "auto"))
                return die("--reference-weights: '%s'; supported: same, original, auto", optarg);
            refw = optarg;
            break;
        case 'T':
            if (parse_num(optarg, "--tolerance", 1e-12, 1e6, &tol)) return 1;
            break;
        case 'h': printf("%s%s", help, common_help); return 0;
        default: fprintf(stderr, "%s%s", help, common_help); return 1;
        }
    }
    if (no_positional(argc, argv, "verify")) return 1;
    const char *model = o.model;
    if (!model || !refp) return die("verify: --model and --reference are required (see --help)");
    catch_signals();
    runner r;
    if (runner_open(&r, model, (int32_t)o.layer, &o)) return 1;
    const int w8a8 = r.cfg.act_quant == MXM_ACT_QUANT_MXFP8 &&
                     (r.cfg.weight_format == MXM_WFMT_MXFP8 || r.cfg.weight_format == MXM_WFMT_FP8_BLOCK);
    mxm_model *ref;
    int st = mxm_model_open(refp, &ref);
    if (st) {
        runner_close(&r);
        return die_status(st, refp);
    }
    const int same = reference_same_weights(ref, &r, refw);
    if (tol < 0) tol = same ? (w8a8 ? 0.08 : 0.02) : (w8a8 ? 0.12 : 0.08);
    printf("model %s layer %d: %s, weights %s, act-quant %s, profile %s\n", model, r.layer_index,
           mxm_model_family(r.model), mxm_weight_format_name(r.cfg.weight_format),
           r.cfg.act_quant ? "none" : "mxfp8", r.cfg.profile ? "exact" : "trtllm");
    printf("reference %s: computed from %s (%s)\n", refp,
           same ? "this checkpoint's own weights" : "the original unquantized weights (weight quantization error included)",
           strcmp(refw, "auto") ? "--reference-weights" : "auto: its metadata 'weights' and the layer's format");
    printf("%6s %12s %12s %12s %10s  %s\n", "T", "err(y_T)", "err(y32_T)", "err(yr32_T)", "ids match", "verdict");
    const int64_t H = r.cfg.hidden_size, K = r.cfg.top_k, n = mxm_model_tensor_count(ref);
    int rc = 0, checked = 0, failed = 0; /* rc: an error (2, or 128 + signal) that stops the loop */
    for (int64_t i = 0; i < n && !rc; i++) {
        const char *name;
        mxm_model_tensor_info(ref, i, &name, NULL, NULL, NULL);
        if (!is_input_name(name)) continue;
        const char *suffix = name + 1;
        x_result xr;
        const int frc = forward_tensor(&r, ref, i, refp, &xr);
        if (frc) {
            rc = frc == 1 ? 2 : frc;
        } else {
            const int64_t T = xr.T;
            const int64_t iy = ref_tensor(ref, refp, "y", suffix, T, H, "BF16,F32");
            const int64_t iy32 = iy == -2 ? -2 : ref_tensor(ref, refp, "y32", suffix, T, H, "F32,BF16");
            const int64_t iyr32 = iy32 == -2 ? -2 : ref_tensor(ref, refp, "yr32", suffix, T, H, "F32,BF16");
            const int64_t iid = iyr32 == -2 ? -2 : ref_tensor(ref, refp, "topk_ids", suffix, T, K, "I32,I64");
            if (iy == -2 || iy32 == -2 || iyr32 == -2 || iid == -2) {
                rc = 2;
            } else if (iy < 0 && iy32 < 0) {
                rc = 2, die("%s: '%s' has neither y%s nor y32%s to compare with", refp, name, suffix, suffix);
            } else {
                const double ey = iy >= 0 ? rel_err(xr.y, ref, iy, T * H) : NAN;
                const double ey32 = iy32 >= 0 ? rel_err(xr.y, ref, iy32, T * H) : NAN;
                const double eyr32 = iyr32 >= 0 ? rel_err(xr.yr, ref, iyr32, T * H) : NAN;
                double match = NAN;
                if (iid >= 0) {
                    const char *dt;
                    const void *d;
                    mxm_model_tensor_info(ref, iid, NULL, &dt, NULL, NULL);
                    mxm_model_tensor_data(ref, iid, &d, NULL);
                    int64_t hit = 0;
                    for (int64_t t = 0; t < T; t++)
                        for (int64_t a = 0; a < K; a++) {
                            const double rid = ref_value(dt, d, t * K + a);
                            for (int64_t b = 0; b < K; b++) hit += xr.ids[t * K + b] == rid;
                        }
                    match = T ? (double)hit / (double)(T * K) : 1.0;
                }
                const double e = iy32 >= 0 ? ey32 : ey;
                const int ok = !isnan(e) && e <= tol;
                printf("%6lld %12.3e %12.3e %12.3e %9.1f%%  %s\n", (long long)T, ey, ey32, eyr32, 100 * match,
                       ok ? "ok" : "FAIL");
                failed |= !ok;
                checked++;
            }
        }
        x_result_free(&xr);
    }
    if (!checked && !rc) rc = 2, die("%s: no tensor named x or x_<suffix> found", refp);
    if (!rc) rc = failed;
    if (rc <= 1) printf("tolerance (error against y32, or y): %.3g -> %s\n", tol, rc ? "FAILED" : "passed");
    mxm_model_close(ref);
    runner_close(&r);
    return rc;
}

/* ---- inspect ---------------------------------------------------------------------------------- */

static int cmd_inspect(int argc, char **argv) {
    static const char help[] = "usage: mxmoe inspect [--tensors] PATH\n"
                               "PATH: a model folder or a .safetensors file. Prints the family, quantization,\n"
                               "MoE parameters and MoE layers; --tensors also lists every tensor.\n";
    int tensors = 0, c;
    struct option lo[] = {{"tensors", no_argument, 0, 't'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        if (c == 't') tensors = 1;
        else if (c == 'h') return printf("%s", help), 0;
        else return fprintf(stderr, "%s", help), 1;
    }
    if (optind != argc - 1) return die("inspect: give exactly one PATH (see --help)");
    const char *path = argv[optind];
    mxm_model *m;
    int st = mxm_model_open(path, &m);
    if (st) return die_status(st, path);
    const int64_t n = mxm_model_tensor_count(m);
    printf("%s: %lld tensors\n", path, (long long)n);
    const int32_t nl = mxm_model_moe_layer_count(m);
    if (*mxm_model_family(m)) {
        printf("family: %s\nexpert weights: %s\nMoE layers: %d", mxm_model_family(m),
               mxm_weight_format_name(mxm_model_weight_format(m)) ? mxm_weight_format_name(mxm_model_weight_format(m)) : "?",
               nl);
        for (int32_t i = 0; i < nl && i < 64; i++) printf("%s%d", i ? "," : " (", mxm_model_moe_layer(m, i));
        printf("%s\n", nl ? (nl > 64 ? ", ...)" : ")") : "");
    } else {
        printf("family: unknown (no config.json or a model type mxmoe does not know)\n");
    }
    for (int32_t i = 0; i < mxm_model_exclude_count(m); i++)
        printf("%s%s", i ? ", " : "not quantized (exclude_modules): ", mxm_model_exclude(m, i));
    if (mxm_model_exclude_count(m)) printf("\n");
    if (nl > 0) {
        mxm_layer *l;
        if ((st = mxm_layer_load(m, mxm_model_moe_layer(m, 0), NULL, &l))) {
            mxm_model_close(m);
            return die_status(st, "loading the first MoE layer");
        }
        const mxm_moe_config *c2 = mxm_layer_config(l);
        printf("MoE: hidden %d, intermediate %d, experts %d, top-k %d, activation %s, routing %s",
               c2->hidden_size, c2->intermediate_size, c2->num_experts, c2->top_k, mxm_activation_name(c2->activation),
               mxm_routing_method_name(c2->routing_method));
        if (c2->n_group > 1) printf(" (groups %d, keep %d)", c2->n_group, c2->topk_group);
        printf(", scaling %g, bias %s, shared expert %d\n", (double)c2->routed_scaling_factor,
               mxm_layer_routing_bias(l) ? "yes" : "no", c2->shared_intermediate_size);
        printf("expert weight bytes per layer: %.1f MB\n", mxm_layer_weight_bytes(l) / 1e6);
        mxm_layer_free(l);
    }
    if (tensors) {
        for (int64_t i = 0; i < n; i++) {
            const char *name, *dt;
            int32_t rank;
            int64_t shape[8];
            mxm_model_tensor_info(m, i, &name, &dt, &rank, shape);
            printf("  %-64s %-8s [", name, dt);
            for (int r = 0; r < rank; r++) printf("%s%lld", r ? ", " : "", (long long)shape[r]);
            printf("]\n");
        }
    }
    mxm_model_close(m);
    return 0;
}

/* ---- quantize --------------------------------------------------------------------------------- */

/* Also the cancel point of an interrupted quantize: a non-zero return makes the library stop
 * and remove its temporaries. */
static int32_t progress_bar(int64_t done, int64_t total, const char *what, void *user) {
    (void)user;
    if (g_signal) return 1;
    if (!isatty(2) && done != total) return 0;
    const int width = 40, fill = total > 0 ? (int)(width * done / total) : width;
    fprintf(stderr, "\r[%.*s%*s] %5.1f%% %-40.40s", fill, "########################################", width - fill, "",
            total > 0 ? 100.0 * done / total : 100.0, what ? what : "");
    if (done == total) fprintf(stderr, "\n");
    return 0;
}

static int cmd_quantize(int argc, char **argv) {
    static const char help[] =
        "usage: mxmoe quantize IN_DIR OUT_DIR [--experts-only] [--scale-rule rceil|floor] [--threads N]\n"
        "Quantizes a BF16 Hugging Face checkpoint into the ModelOpt MXFP8 layout. By default the same\n"
        "Linears as ModelOpt's MXFP8 default (all but lm_head, embeddings, routers and Mamba's conv1d), with\n"
        "ModelOpt's exclude list and tensor order: on the tests/data fixtures, byte for byte ModelOpt 0.47's export.\n"
        "OUT_DIR must not exist or be empty: the checkpoint is written into a fresh temporary folder next to\n"
        "it, renamed to OUT_DIR at the end, so OUT_DIR never mixes two runs. SIGINT/SIGTERM remove the\n"
        "temporary folder.\n"
        "  --experts-only           quantize only the routed and shared experts (the tests/data *_mxfp8 layout)\n";
    mxm_quantize_options qo;
    mxm_quantize_options_default(&qo);
    int64_t threads = 0;
    struct option lo[] = {{"scale-rule", required_argument, 0, 's'}, {"threads", required_argument, 0, 't'},
                          {"experts-only", no_argument, 0, 'e'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        if (c == 's') {
            if (!strcmp(optarg, "rceil")) qo.scale_rule = MXM_SCALE_RCEIL;
            else if (!strcmp(optarg, "floor")) qo.scale_rule = MXM_SCALE_FLOOR;
            else return die("--scale-rule: '%s'; supported: rceil, floor", optarg);
        } else if (c == 't') {
            if (parse_int(optarg, "--threads", 1, 4096, &threads)) return 1;
        } else if (c == 'e') {
            qo.scope = MXM_QUANTIZE_EXPERTS;
        } else if (c == 'h') {
            return printf("%s", help), 0;
        } else {
            return fprintf(stderr, "%s", help), 1;
        }
    }
    if (optind != argc - 2) return die("quantize: give IN_DIR and OUT_DIR (see --help)");
    qo.num_threads = (int32_t)threads;
    catch_signals();
    const int st = mxm_checkpoint_quantize_ex(argv[optind], argv[optind + 1], &qo, progress_bar, NULL);
    if (st && g_signal) return fprintf(stderr, "\n"), interrupted(); /* cancelled: the library removed its files */
    if (st) return die_status(st, "quantize");
    fprintf(stderr, "wrote %s\n", argv[optind + 1]);
    return 0;
}

/* ---- demo and bench ----------------------------------------------------------------------------- */

static int cmd_demo(int argc, char **argv) {
    static const char help[] =
        "usage: mxmoe demo [--tokens N] [--act-quant mxfp8|none] [--profile trtllm|exact] [--threads N]\n"
        "                  [--backend cpu|cuda]\n"
        "Builds a deterministic synthetic MXFP8 layer with Nemotron-3-Nano's shapes (H 2688, I 1856,\n"
        "128 experts, top-6, relu2, shared expert 3712), runs a batch of tokens through it and reports\n"
        "the routing, the speed, and the error against the reference mode (same weights, fp32\n"
        "activations, exact profile).\n"
        "  --tokens N               tokens in the batch, 1..65536 (default 64)\n";
    int64_t T = 64;
    common_opts o;
    common_defaults(&o);
    struct option lo[16] = {{"tokens", required_argument, 0, 'n'}, {"help", no_argument, 0, 'h'}};
    memcpy(lo + 2, common_long, N_COMMON_SYNTHETIC * sizeof *common_long);
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        const int r = common_opt(c, &o);
        if (r < 0) return 1;
        if (r) continue;
        if (c == 'n') {
            if (parse_int(optarg, "--tokens", 1, 1 << 16, &T)) return 1;
        } else if (c == 'h') {
            return printf("%s%s", help, common_help), 0;
        } else {
            return fprintf(stderr, "%s%s", help, common_help), 1;
        }
    }
    if (no_positional(argc, argv, "demo")) return 1;
    if (o.act_quant < 0) o.act_quant = MXM_ACT_QUANT_MXFP8; /* the layer is MXFP8 */
    const mb_shape *s = mb_shape_find("nano");
    mb_layer L;
    mb_inputs in = {0};
    uint16_t *out = NULL, *ref = NULL;
    int32_t *ids = NULL;
    float *w = NULL;
    int64_t *hist = NULL;
    int rc = 1;
    fprintf(stderr, "building the synthetic %s layer...\n", s->model);
    int st = mb_layer_create(s, MXM_WFMT_MXFP8, 42, o.threads, &L);
    if (st) return die_status(st, "building the layer");
    fprintf(stderr, "%.2f GB of MXFP8 expert weights and scales\n",
            ((double)L.expert_bytes * s->E_loc + (double)L.shared_bytes) / 1e9);
    L.cfg.act_quant = o.act_quant, L.cfg.profile = o.profile;
    if (o.backend == MXM_BACKEND_CUDA && (st = mb_layer_to_device(&L))) {
        die_status(st, "copying the layer to the GPU");
        goto done;
    }
    const int64_t H = s->H, E = s->E, K = s->K;
    out = malloc((size_t)(T * H * 2)), ref = malloc((size_t)(T * H * 2));
    ids = malloc((size_t)(T * K * 4)), w = malloc((size_t)(T * K * 4));
    hist = calloc((size_t)E, sizeof *hist);
    if (!out || !ref || !ids || !w || !hist || mb_inputs_create(&L, T, MB_UNIFORM, 7, &in)) {
        die("out of memory");
        goto done;
    }
    mb_result res;
    if ((st = mb_run(&L, &in, 5, &res, out))) {
        die_status(st, "forward");
        goto done;
    }
    /* Routing histogram (the router is part of the forward: run it alone for the picture). */
    if ((st = mxm_route(&L.cfg, T, in.logits, MXM_DT_F32, in.bias, MXM_DT_F32, ids, w))) {
        die_status(st, "route");
        goto done;
    }
    for (int64_t i = 0; i < T * K; i++) hist[ids[i]]++;
    int64_t maxh = 1, used = 0;
    for (int64_t e = 0; e < E; e++) maxh = hist[e] > maxh ? hist[e] : maxh, used += hist[e] > 0;
    printf("mxmoe demo: synthetic %s MoE layer, %lld tokens, MXFP8 weights, %s activations, profile %s, %s kernels\n",
           s->model, (long long)T, o.act_quant ? "bf16" : "MXFP8", o.profile ? "exact" : "trtllm",
           o.backend ? "cuda" : "cpu");
    printf("  H %d, I %d, %d experts, top-%d, relu2, shared expert %d\n", s->H, s->I, s->E, s->K, s->shared_I);
    printf("routing: %lld of %lld experts used; tokens per expert as ' ' (0) '.' ':' '-' '=' '+' '*' '#' '%%' '@' (%lld)\n",
           (long long)used, (long long)E, (long long)maxh);
    for (int64_t e0 = 0; e0 < E; e0 += 32) {
        printf("  %3lld-%3lld |", (long long)e0, (long long)(e0 + 31));
        for (int64_t e = e0; e < e0 + 32; e++) printf("%c", " .:-=+*#%@"[hist[e] ? 1 + 8 * hist[e] / (maxh + 1) : 0]);
        printf("|\n");
    }
    printf("speed: %.1f us per forward (median of 5), %.0f tokens/s, %.1f GB/s of expert weights, %.1f GFLOP/s\n",
           res.us, res.tokens_per_s, res.gbs, res.gflops);
    /* Reference mode: same weights, fp32 activations, exact profile. */
    L.cfg.act_quant = MXM_ACT_QUANT_NONE, L.cfg.profile = MXM_PROFILE_EXACT;
    mb_result rres;
    if ((st = mb_run(&L, &in, 1, &rres, ref))) {
        die_status(st, "reference forward");
        goto done;
    }
    double num = 0, den = 0;
    for (int64_t i = 0; i < T * H; i++) {
        const double d = (double)bf16f(out[i]) - bf16f(ref[i]);
        num += d * d, den += (double)bf16f(ref[i]) * bf16f(ref[i]);
    }
    printf("error against the reference mode (fp32 activations, exact): relative L2 %.3e\n", sqrt(num / den));
    printf("(this is the cost of quantizing activations to MXFP8 and of the bf16 rounding points)\n");
    rc = 0;
done:
    free(out), free(ref), free(ids), free(w), free(hist);
    mb_inputs_destroy(&in);
    mb_layer_destroy(&L);
    return rc;
}

/* A comma list of integers in lo..hi, every item through parse_int. */
static int check_int_list(const char *list, const char *opt, int64_t lo, int64_t hi) {
    char buf[256];
    if (!*list || strlen(list) >= sizeof buf) return die("%s: '%s' is not a comma list of integers", opt, list);
    snprintf(buf, sizeof buf, "%s", list);
    for (char *p = buf;;) {
        char *comma = strchr(p, ',');
        if (comma) *comma = '\0';
        int64_t v;
        if (parse_int(p, opt, lo, hi, &v)) return 1;
        if (!comma) return 0;
        p = comma + 1;
    }
}

/* A comma list of the built-in shapes. */
static int check_shape_list(const char *list) {
    char buf[256];
    if (!*list || strlen(list) >= sizeof buf) return die("--shapes: '%s'; supported: nano, qwen3, dsv3", list);
    snprintf(buf, sizeof buf, "%s", list);
    for (char *p = buf;;) {
        char *comma = strchr(p, ',');
        if (comma) *comma = '\0';
        if (!mb_shape_find(p)) return die("--shapes: '%s' is not a shape; supported: nano, qwen3, dsv3", p);
        if (!comma) return 0;
        p = comma + 1;
    }
}

static int cmd_bench(int argc, char **argv) {
    static const char help[] =
        "usage: mxmoe bench [--shapes nano,qwen3,dsv3] [--tokens 1,4,16,...] [--routing "
        "uniform|skewed|both]\n"
        "                   [--reps N] [--json PATH] [--threads N] [--backend cpu|cuda] "
        "[--ref-kernels]\n"
        "                   [--act-quant mxfp8|none] [--profile trtllm|exact]\n"
        "                   [--given-ids]   (route once on the host; time the layer from top-k "
        "ids, like the peers)\n"
        "                   [--format mxfp8|fp8_block]   (weights: MXFP8, or DeepSeek FP8 128x128 "
        "blocks)\n"
        "                   [--no-shared]   (leave out the shape's shared expert, as the peers' "
        "layers do)\n"
        "Times the MoE layer on synthetic MXFP8 (or DeepSeek FP8) layers with real models' shapes "
        "and reports each figure\n"
        "against the memory-read and FMA roofs measured in the same run. The 'mode:' line (and the "
        "JSON)\n"
        "says what ran: weights, activations (W8A8 or weight-only), profile, kernels, routing "
        "input.\n"
        "--tokens takes integers in 1..1048576, --reps 1..1000.\n";
    mb_options mo = {"nano,qwen3,dsv3",   "1,4,16,64,256,1024,4096", "both", 0, 5,
                     MXM_KERNELS_AUTO,    MXM_BACKEND_CPU,           NULL,   0, MXM_WFMT_MXFP8,
                     MXM_ACT_QUANT_MXFP8, MXM_PROFILE_TRTLLM,        0};
    common_opts o;
    common_defaults(&o);
    struct option lo[20] = {
        {"shapes", required_argument, 0, 's'},  {"tokens", required_argument, 0, 'n'},
        {"routing", required_argument, 0, 'r'}, {"reps", required_argument, 0, 'R'},
        {"json", required_argument, 0, 'j'},    {"ref-kernels", no_argument, 0, 'k'},
        {"help", no_argument, 0, 'h'},          {"given-ids", no_argument, 0, 'g'},
        {"format", required_argument, 0, 'f'},  {"no-shared", no_argument, 0, 'S'}};
    memcpy(lo + 10, common_long, N_COMMON_SYNTHETIC * sizeof *common_long);
    int c;
    int64_t v = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        const int r = common_opt(c, &o);
        if (r < 0) return 1;
        if (r) continue;
        switch (c) {
        case 's':
            if (check_shape_list(optarg)) return 1;
            mo.shapes = optarg;
            break;
        case 'n':
            if (check_int_list(optarg, "--tokens", 1, 1 << 20)) return 1;
            mo.tokens = optarg;
            break;
        case 'r':
            if (strcmp(optarg, "uniform") && strcmp(optarg, "skewed") && strcmp(optarg, "both"))
                return die("--routing: '%s'; supported: uniform, skewed, both", optarg);
            mo.routing = optarg;
            break;
        case 'R': if (parse_int(optarg, "--reps", 1, 1000, &v)) return 1; mo.reps = (int32_t)v; break;
        case 'j': mo.json_path = optarg; break;
        case 'k': mo.kernels = MXM_KERNELS_REF; break;
        case 'g': mo.use_ids = 1; break;
        case 'S':
            mo.no_shared = 1;
            break;
        case 'f':
            if (strcmp(optarg, "mxfp8") && strcmp(optarg, "fp8_block"))
                return die("--format: '%s'; supported: mxfp8, fp8_block", optarg);
            mo.weight_format = strcmp(optarg, "mxfp8") ? MXM_WFMT_FP8_BLOCK : MXM_WFMT_MXFP8;
            break;
        case 'h': return printf("%s", help), 0;
        default: return fprintf(stderr, "%s", help), 1;
        }
    }
    if (no_positional(argc, argv, "bench")) return 1;
    /* every option parsed above lands in mo: mb_bench applies it to the layer and prints it */
    mo.threads = o.threads, mo.backend = o.backend, mo.profile = o.profile;
    mo.act_quant = o.act_quant >= 0 ? o.act_quant : MXM_ACT_QUANT_MXFP8;
    return mb_bench(&mo, stdout) ? 1 : 0;
}

int main(int argc, char **argv) {
    static const char usage[] =
        "usage: mxmoe COMMAND [options]   (mxmoe COMMAND --help for each)\n"
        "  demo      run a synthetic Nemotron-3-Nano-shaped MXFP8 MoE layer and report on it\n"
        "  inspect   show a checkpoint's family, quantization, MoE layers and tensors\n"
        "  run       run a checkpoint's MoE layer on inputs from a safetensors file\n"
        "  verify    check a checkpoint's MoE layer against a reference.safetensors\n"
        "  quantize  BF16 Hugging Face checkpoint -> ModelOpt MXFP8 checkpoint\n"
        "  bench     benchmark the MoE layer\n"
        "  version   print the version\n";
    if (argc < 2) return fprintf(stderr, "%s", usage), 1;
    const char *cmd = argv[1];
    argc--, argv++;
    if (!strcmp(cmd, "demo")) return cmd_demo(argc, argv);
    if (!strcmp(cmd, "inspect")) return cmd_inspect(argc, argv);
    if (!strcmp(cmd, "run")) return cmd_run(argc, argv);
    if (!strcmp(cmd, "verify")) return cmd_verify(argc, argv);
    if (!strcmp(cmd, "quantize")) return cmd_quantize(argc, argv);
    if (!strcmp(cmd, "bench")) return cmd_bench(argc, argv);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) return printf("mxmoe %s\n", mxm_version()), 0;
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) return printf("%s", usage), 0;
    return die("unknown command '%s'\n%s", cmd, usage);
}
