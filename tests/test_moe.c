/* The MoE forward against the independent float64 reference (tests/moe_ref.c), on fresh random
 * inputs, outputs poisoned before every run. One line per case: op fmt shape err width PASS|FAIL.
 *
 * The check is elementwise: every output element must lie inside the interval the reference
 * derives for it (fp32 accumulation in any order, and both sides of every bf16/E4M3 rounding
 * point or block scale that a value straddles). So a random W8A8 case cannot fail by chance on
 * a legitimate requantization flip, and a wrong scale, block, row or rounding mode still fails:
 * it moves elements by 1e-2 to 1 of themselves while the bounds are ~1e-5 wide except at the
 * rare straddling elements. With integer-valued data the sums are exact in any order and the
 * bounds shrink to the combine's rounding: the whole W8A8 pipeline (quantize, GEMM1,
 * activation, requantize, GEMM2) is checked exactly. err (relative L2 to the nominal float64
 * output) and width (relative L2 half-width of the bounds, which must stay small for the test to
 * mean anything) are printed for each case; where no rounding point can flip, err must also meet
 * SPEC 7's bound (l2_limit below). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_kernels.h"
#include "formats/formats.h"
#include "moe/activation.h"
#include "moe_ref.h"
#include "mxmoe.h"
#include "testutil.h"

typedef enum { ROUTE_UNIFORM, ROUTE_SKEWED } route_kind;

static void random_routing(tu_rng *r, int64_t T, int K, int E, route_kind kind, int32_t *ids, float *w) {
    for (int64_t t = 0; t < T; t++) {
        for (int k = 0; k < K; k++) {
            int32_t e;
            int dup;
            do {
                e = (kind == ROUTE_SKEWED && k == 0) ? 0 : (int32_t)tu_randint(r, 0, E - 1);
                if (kind == ROUTE_SKEWED && k == 1 && tu_uniform(r) < 0.8) e = 1 % E;
                dup = 0;
                for (int j = 0; j < k; j++) dup |= ids[t * K + j] == e;
            } while (dup);
            ids[t * K + k] = e;
            w[t * K + k] = (float)(0.1 + tu_uniform(r));
        }
    }
}

/* The bounds must stay narrower than a bug's error for the check to mean something. They are
 * ~1e-5 wide except where an intermediate element straddles an E4M3 rounding boundary: that
 * element may take either code, a 6-12% step of itself, and the bounds of its token row widen
 * by its whole contribution through GEMM2 (up to ~15% of the output in the smallest cases).
 * MAX_WIDTH only rejects vacuous bounds; the real guard is the mutant count below: over all
 * cases, at least MIN_MUTANT_CAUGHT of the output elements must fall outside their bounds when
 * the library's output is scaled by 1 + 2^-6 (a smaller error than a wrong scale, block, row or
 * E4M3 rounding). */
#define MAX_WIDTH 0.5

/* On top of the bounds, SPEC 7's relative L2 criterion where no rounding point can flip: 1e-5
 * without requantization or bf16 rounding (exact profile, weight-only), 1e-6 for integer data
 * (exact sums). With rounding points the bounds alone decide (see above). */
static double l2_limit(const mxm_moe_config *c, int integer_data) {
    if (integer_data) return 1e-6;
    if (c->act_quant == MXM_ACT_QUANT_NONE && c->profile == MXM_PROFILE_EXACT) return 1e-5;
    return INFINITY;
}
#define MIN_MUTANT_CAUGHT 0.9
static int64_t g_elements, g_mutants_caught;

/* Counts the elements of got * (1 + 2^-6) outside their bounds, into the global tally. */
static void count_mutants(const float *got, const ref_output *ref, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const double m = got[i] * (1 + 0x1p-6);
        g_mutants_caught += !(m >= ref->lo[i] && m <= ref->hi[i]) && ref->out[i] != 0;
    }
    g_elements += n;
}

/* The tests that pick kernel sets through MXM_KERNELS put the caller's value back after. */
static char *kernels_env_save(void) {
    const char *v = getenv("MXM_KERNELS");
    return v ? strdup(v) : NULL;
}
static void kernels_env_restore(char *saved) {
    if (saved)
        setenv("MXM_KERNELS", saved, 1);
    else
        unsetenv("MXM_KERNELS");
    free(saved);
}

/* Runs the library on (x, ids, w) and checks out and out_routed against the reference. */
static ref_check run_lib(const mxm_moe_config *cfg, const ref_layer *L, int64_t T, const float *x,
                         const int32_t *ids, const float *w, const ref_output *ref) {
    mxm_moe_plan *plan = NULL;
    assert_int_equal(mxm_moe_plan_create(cfg, T, &plan), MXM_OK);
    const int64_t ws_bytes = mxm_moe_plan_workspace_size(plan);
    assert_true(ws_bytes > 0);
    void *ws = aligned_alloc(64, (size_t)ws_bytes);
    memset(ws, 0xCD, (size_t)ws_bytes); /* garbage, not zeros */
    const int64_t H = cfg->hidden_size;
    float *out = tu_alloc(4 * T * H), *routed = tu_alloc(4 * T * H);
    tu_poison_f32(out, T * H);
    tu_poison_f32(routed, T * H);
    mxm_moe_inputs in = {.num_tokens = T, .x = x, .x_dtype = MXM_DT_F32, .topk_ids = ids, .topk_weights = w};
    mxm_moe_outputs o = {.out = out, .out_dtype = MXM_DT_F32, .out_routed = routed};
    mxm_moe_weights mw = ref_layer_weights(L);
    const mxm_status st = mxm_moe_forward(plan, &mw, &in, &o, ws, ws_bytes, NULL);
    if (st) fprintf(stderr, "forward failed: %s\n", mxm_last_error());
    assert_int_equal(st, MXM_OK);
    ref_check k = ref_check_f32(out, ref->out, ref->lo, ref->hi, T * H);
    const ref_check kr = ref_check_f32(routed, ref->routed, ref->routed_lo, ref->routed_hi, T * H);
    k.outside += kr.outside, k.nan_count += kr.nan_count;
    k.err = fmax(k.err, kr.err), k.width = fmax(k.width, kr.width);
    count_mutants(out, ref, T * H);
    free(out), free(routed), free(ws);
    mxm_moe_plan_destroy(plan);
    return k;
}

/* When set, run_case rounds its random inputs to bf16 values (as a bf16 model's hidden states). */
static int g_x_bf16;

/* One full case: fresh weights and inputs, reference, then the library with every kernel set this
 * CPU runs (the reference kernels, and each set picked by name through MXM_KERNELS), each checked.
 */
static void run_case(const char *op, mxm_moe_config cfg, int64_t T, route_kind rk, int integer_data) {
    tu_rng r = tu_rng_fresh();
    ref_layer L;
    ref_layer_init(&L, &cfg, tu_next(&r), integer_data);
    if (cfg.activation == MXM_ACT_SWIGLUOAI) {
        L.alpha = tu_alloc(4 * L.e_loc), L.beta = tu_alloc(4 * L.e_loc), L.limit = tu_alloc(4 * L.e_loc);
        for (int e = 0; e < L.e_loc; e++) {
            L.alpha[e] = (float)(1.0 + tu_uniform(&r));
            L.beta[e] = (float)tu_uniform(&r);
            L.limit[e] = (float)(0.5 + 2 * tu_uniform(&r)); /* small: the clamp is exercised */
        }
    }
    const int64_t H = cfg.hidden_size, K = cfg.top_k;
    float *x = tu_alloc(4 * T * H), *w = tu_alloc(4 * T * K);
    int32_t *ids = tu_alloc(4 * T * K);
    if (integer_data)
        for (int64_t i = 0; i < T * H; i++) x[i] = (float)tu_randint(&r, -8, 8);
    else
        tu_fill_blockscaled_f32(&r, x, T * H, 3, 3);
    if (g_x_bf16)
        for (int64_t i = 0; i < T * H; i++)
            x[i] = mxm_round_bf16(x[i]);
    random_routing(&r, T, (int)K, cfg.num_experts, rk, ids, w);
    ref_output ref = ref_output_alloc(T * H);
    ref_forward(&L, T, x, ids, w, &ref);
    const mxm_cpu_kernels *sets[16];
    const int nsets = mxm_cpu_kernel_sets(sets, 16);
    char *saved = kernels_env_save();
    for (int si = 0; si < nsets; si++) {
        const int kern = si == 0; /* sets[0] is the reference */
        cfg.kernels = kern ? MXM_KERNELS_REF : MXM_KERNELS_AUTO;
        if (!kern) setenv("MXM_KERNELS", sets[si]->name, 1);
        const ref_check k = run_lib(&cfg, &L, T, x, ids, w, &ref);
        const int pass = k.outside == 0 && k.nan_count == 0 && k.width <= MAX_WIDTH && k.err <= l2_limit(&cfg, integer_data);
        printf("%-10s %-9s %-12s %-4s %-5s H=%-4d I=%-4d E=%-3d K=%-2d T=%-5lld %-6s err=%.2e "
               "width=%.1e "
               "outside=%lld %s\n",
               op, mxm_weight_format_name(cfg.weight_format), mxm_activation_name(cfg.activation),
               cfg.act_quant ? "w8" : "w8a8", cfg.profile ? "exact" : "trt", cfg.hidden_size,
               cfg.intermediate_size, cfg.num_experts, cfg.top_k, (long long)T, sets[si]->name,
               k.err, k.width, (long long)k.outside, pass ? "PASS" : "FAIL");
        assert_true(pass);
    }
    kernels_env_restore(saved);
    free(x), free(w), free(ids);
    ref_output_free(&ref);
    ref_layer_free(&L);
}

static mxm_moe_config base_cfg(int H, int I, int E, int K, int act) {
    mxm_moe_config c;
    mxm_moe_config_default(&c);
    c.hidden_size = H, c.intermediate_size = I, c.num_experts = E, c.top_k = K, c.activation = act;
    c.num_threads = 2;
    return c;
}

static void test_integer_exact_w8a8(void **state) {
    (void)state;
    const int acts[] = {MXM_ACT_RELU2_NO_MUL, MXM_ACT_IDENTITY};
    const int fmts[] = {MXM_WFMT_MXFP8, MXM_WFMT_BF16, MXM_WFMT_F32};
    for (int a = 0; a < 2; a++)
        for (int f = 0; f < 3; f++) {
            mxm_moe_config c = base_cfg(96, 160, 8, 3, acts[a]);
            c.weight_format = fmts[f];
            c.profile = MXM_PROFILE_EXACT;
            run_case("int-exact", c, 37, ROUTE_UNIFORM, 1);
            c.act_quant = MXM_ACT_QUANT_NONE;
            run_case("int-exact", c, 5, ROUTE_UNIFORM, 1);
        }
}

static void test_every_mode(void **state) {
    (void)state;
    for (int act = 0; act < MXM_ACT_COUNT_; act++)
        for (int fmt = 0; fmt < MXM_WFMT_COUNT_; fmt++)
            for (int aq = 0; aq < 2; aq++)
                for (int prof = 0; prof < 2; prof++) {
                    mxm_moe_config c = base_cfg(96, 160, 6, 2, act);
                    c.weight_format = fmt, c.act_quant = aq, c.profile = prof;
                    run_case("mode", c, 9, ROUTE_UNIFORM, 0);
                }
}

/* Gatedness comes from one table (MXM_ACTIVATIONS): the public query (which the reference and the
 * tools size W13 with) and the kernels' switch must agree for every activation, and the table
 * must agree with vLLM's naming (a gated activation has no "_no_mul" form; identity is the one
 * plain exception), so a gated activation added anywhere in the enum cannot run as a plain one.
 * test_every_mode then runs every activation against the reference. */
static void test_activation_table(void **state) {
    (void)state;
    const int gated_set[] = {MXM_ACT_SILU, MXM_ACT_GELU, MXM_ACT_GELU_TANH, MXM_ACT_SWIGLUOAI};
    for (int a = 0; a < MXM_ACT_COUNT_; a++) {
        const char *name = mxm_activation_name(a);
        assert_non_null(name);
        assert_int_equal(mxm_activation_from_name(name), a);
        const int g = mxm_activation_is_gated(a);
        assert_true(g == 0 || g == 1);
        assert_int_equal(mxm_act_is_gated(a), g);
        assert_int_equal(g, a != MXM_ACT_IDENTITY && !strstr(name, "_no_mul"));
        int listed = 0;
        for (size_t i = 0; i < sizeof gated_set / sizeof gated_set[0]; i++)
            listed |= gated_set[i] == a;
        assert_int_equal(g, listed);
    }
    assert_int_equal(mxm_activation_is_gated(-1), -1);
    assert_int_equal(mxm_activation_is_gated(MXM_ACT_COUNT_), -1);
    assert_int_equal(mxm_activation_from_name("swiglu"), MXM_ACT_SILU);
    assert_int_equal(mxm_activation_from_name("relu2"), MXM_ACT_RELU2_NO_MUL);
    assert_int_equal(mxm_activation_from_name("relu"), -1);
}

static void test_w13_layouts(void **state) {
    (void)state;
    const int acts[] = {MXM_ACT_SILU, MXM_ACT_SWIGLUOAI, MXM_ACT_GELU};
    for (int a = 0; a < 3; a++)
        for (int lay = 0; lay < 3; lay++) {
            mxm_moe_config c = base_cfg(64, 96, 5, 2, acts[a]);
            c.w13_layout = lay;
            c.profile = MXM_PROFILE_EXACT, c.act_quant = MXM_ACT_QUANT_NONE;
            run_case("layout", c, 11, ROUTE_UNIFORM, 0);
            c.profile = MXM_PROFILE_TRTLLM, c.act_quant = MXM_ACT_QUANT_MXFP8;
            run_case("layout", c, 11, ROUTE_UNIFORM, 0);
        }
}

static void test_shapes(void **state) {
    (void)state;
    struct { int H, I, E, K; int64_t T; route_kind rk; } s[] = {
        {32, 32, 4, 1, 1, ROUTE_UNIFORM},      {224, 96, 16, 10, 3, ROUTE_UNIFORM},
        {96, 288, 12, 4, 1, ROUTE_UNIFORM},    {64, 96, 8, 2, 2500, ROUTE_UNIFORM},
        {160, 64, 16, 4, 700, ROUTE_SKEWED},   {96, 1856, 4, 2, 3, ROUTE_UNIFORM},
        {2688, 64, 4, 2, 2, ROUTE_UNIFORM},    {128, 256, 32, 8, 64, ROUTE_SKEWED},
    };
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) {
        mxm_moe_config c = base_cfg(s[i].H, s[i].I, s[i].E, s[i].K, MXM_ACT_RELU2_NO_MUL);
        c.profile = MXM_PROFILE_EXACT, c.act_quant = MXM_ACT_QUANT_NONE;
        run_case("shape", c, s[i].T, s[i].rk, 0);
        c.activation = MXM_ACT_SILU;
        run_case("shape", c, s[i].T, s[i].rk, 0);
        c.profile = MXM_PROFILE_TRTLLM, c.act_quant = MXM_ACT_QUANT_MXFP8;
        run_case("shape", c, s[i].T, s[i].rk, 0);
    }
}

/* Groups large enough for the bf16 tile path of sets that have one (more than 4 rows per expert;
 * W8A8 inputs, and the bf16-rounded intermediate of weight-only trtllm runs, are tile-exact):
 * partial token blocks, more than four blocks, more than 256 rows (several tile passes), skewed
 * routing, sizes that are multiples of 32 but not of 128, MXFP8, BF16 and DeepSeek FP8 weights
 * (DeepSeek FP8 on the tiles weight-only: its W8A8 runs take the fp32 kernels); weight-only runs
 * with fp32 inputs take the fp32 kernels for GEMM1 (not tile-exact), with bf16 inputs the tiles. */
static void test_tile_groups(void **state) {
    (void)state;
    struct {
        int H, I, E, K;
        int64_t T;
        route_kind rk;
    } s[] = {
        {96, 160, 4, 2, 37, ROUTE_UNIFORM},
        {224, 96, 3, 1, 70, ROUTE_SKEWED},
        {32, 32, 2, 2, 300, ROUTE_UNIFORM},
        {160, 288, 8, 3, 90, ROUTE_SKEWED},
    };
    const int fmts[] = {MXM_WFMT_MXFP8, MXM_WFMT_BF16, MXM_WFMT_FP8_BLOCK};
    for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
        for (int f = 0; f < 3; f++) {
            mxm_moe_config c = base_cfg(s[i].H, s[i].I, s[i].E, s[i].K,
                                        i % 2 ? MXM_ACT_RELU2_NO_MUL : MXM_ACT_SILU);
            c.weight_format = fmts[f];
            c.act_quant = MXM_ACT_QUANT_MXFP8;
            run_case("tiles", c, s[i].T, s[i].rk, 0);
            c.act_quant = MXM_ACT_QUANT_NONE;
            run_case("tiles", c, s[i].T, s[i].rk, 0);
            g_x_bf16 = 1; /* weight-only with bf16 inputs: GEMM1 on tiles too */
            run_case("tiles-bf16", c, s[i].T, s[i].rk, 0);
            g_x_bf16 = 0;
        }
}

static void test_shared_expert(void **state) {
    (void)state;
    mxm_moe_config c = base_cfg(96, 64, 8, 2, MXM_ACT_RELU2_NO_MUL);
    c.shared_intermediate_size = 192;
    c.profile = MXM_PROFILE_EXACT, c.act_quant = MXM_ACT_QUANT_NONE;
    run_case("shared", c, 13, ROUTE_UNIFORM, 0);
    c.shared_activation = MXM_ACT_SILU;
    run_case("shared", c, 13, ROUTE_UNIFORM, 0);
    c.profile = MXM_PROFILE_TRTLLM, c.act_quant = MXM_ACT_QUANT_MXFP8;
    run_case("shared", c, 1, ROUTE_UNIFORM, 0);
}

/* Expert parallelism: the partial outputs of all slices sum to the whole layer. */
static void test_expert_parallel_slices(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    mxm_moe_config whole = base_cfg(96, 64, 12, 3, MXM_ACT_SILU);
    whole.profile = MXM_PROFILE_EXACT, whole.act_quant = MXM_ACT_QUANT_NONE;
    const int64_t T = 40, H = whole.hidden_size, K = whole.top_k;
    ref_layer L;
    ref_layer_init(&L, &whole, tu_next(&r), 0);
    float *x = tu_alloc(4 * T * H), *w = tu_alloc(4 * T * K), *part = tu_alloc(4 * T * H);
    int32_t *ids = tu_alloc(4 * T * K);
    tu_fill_normal_f32(&r, x, T * H, 1);
    random_routing(&r, T, (int)K, whole.num_experts, ROUTE_UNIFORM, ids, w);
    double *sum = calloc(T * H, 8);
    ref_output ref = ref_output_alloc(T * H);
    ref_forward(&L, T, x, ids, w, &ref);
    const int offs[] = {0, 5, 7, 12};
    for (int s = 0; s < 3; s++) {
        mxm_moe_config c = whole;
        c.local_expert_offset = offs[s], c.local_num_experts = offs[s + 1] - offs[s];
        /* The slice holds the whole layer's experts from its offset on. */
        mxm_expert_weights *ex = tu_alloc(sizeof *ex * c.local_num_experts);
        memcpy(ex, L.experts + offs[s], sizeof *ex * c.local_num_experts);
        {
            mxm_moe_plan *plan;
            assert_int_equal(mxm_moe_plan_create(&c, T, &plan), MXM_OK);
            int64_t wsb = mxm_moe_plan_workspace_size(plan);
            void *ws = aligned_alloc(64, (size_t)wsb);
            tu_poison_f32(part, T * H);
            mxm_moe_inputs in = {.num_tokens = T, .x = x, .x_dtype = MXM_DT_F32, .topk_ids = ids, .topk_weights = w};
            mxm_moe_outputs o = {.out = part, .out_dtype = MXM_DT_F32};
            mxm_moe_weights mw = {ex, NULL, NULL, NULL, NULL};
            assert_int_equal(mxm_moe_forward(plan, &mw, &in, &o, ws, wsb, NULL), MXM_OK);
            free(ws);
            mxm_moe_plan_destroy(plan);
            for (int64_t i = 0; i < T * H; i++) sum[i] += part[i];
        }
        free(ex);
    }
    float *sumf = tu_alloc(4 * T * H);
    for (int64_t i = 0; i < T * H; i++) sumf[i] = (float)sum[i];
    const ref_check k = ref_check_f32(sumf, ref.out, ref.lo, ref.hi, T * H);
    const int pass = k.outside == 0 && k.nan_count == 0 && k.width <= MAX_WIDTH && k.err <= l2_limit(&whole, 0);
    printf("ep-slices  3 slices of E=12 sum to the layer: err=%.2e width=%.1e outside=%lld %s\n", k.err, k.width,
           (long long)k.outside, pass ? "PASS" : "FAIL");
    assert_true(pass);
    free(x), free(w), free(part), free(ids), free(sum), free(sumf);
    ref_output_free(&ref);
    ref_layer_free(&L);
}

/* A token's output does not depend on its neighbours' values: with bf16-exact weight-only inputs,
 * every token routed to one expert (T = 3: the GEMV, T = 10 and 40: tiles or panels), making one
 * token's input inexact in bf16 (so it leaves the bf16 kernels) leaves every other token's output
 * bit for bit, in every kernel set this CPU runs. */
static void test_neighbour_independence(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const int64_t Ts[] = {3, 10, 40};
    const int fmts[] = {MXM_WFMT_MXFP8, MXM_WFMT_FP8_BLOCK};
    const mxm_cpu_kernels *sets[16];
    const int nsets = mxm_cpu_kernel_sets(sets, 16);
    char *saved = kernels_env_save();
    for (int f = 0; f < 2; f++)
        for (size_t ti = 0; ti < sizeof Ts / sizeof Ts[0]; ti++) {
            const int64_t T = Ts[ti];
            mxm_moe_config c = base_cfg(96, 64, 2, 1, MXM_ACT_SILU);
            c.weight_format = fmts[f], c.act_quant = MXM_ACT_QUANT_NONE;
            c.profile = MXM_PROFILE_EXACT; /* no bf16 rounding of the intermediate to hide a sum's
                                              last bits */
            ref_layer L;
            ref_layer_init(&L, &c, tu_next(&r), 0);
            const int64_t H = c.hidden_size;
            float *x = tu_alloc(4 * T * H), *w = tu_alloc(4 * T), *oa = tu_alloc(4 * T * H),
                  *ob = tu_alloc(4 * T * H);
            int32_t *ids = tu_alloc(4 * T);
            tu_fill_normal_f32(&r, x, T * H, 1);
            for (int64_t i = 0; i < T * H; i++)
                x[i] = mxm_round_bf16(x[i]);
            for (int64_t t = 0; t < T; t++)
                ids[t] = 0, w[t] = 1.0f;
            const int64_t odd = tu_randint(&r, 0, T - 1); /* the token made inexact */
            for (int si = 0; si < nsets; si++) {
                c.kernels = si == 0 ? MXM_KERNELS_REF : MXM_KERNELS_AUTO;
                if (si) setenv("MXM_KERNELS", sets[si]->name, 1);
                for (int pass = 0; pass < 2; pass++) {
                    if (pass) x[odd * H + 7] += x[odd * H + 7] * 0x1p-12f; /* not a bf16 value */
                    mxm_moe_plan *plan = NULL;
                    assert_int_equal(mxm_moe_plan_create(&c, T, &plan), MXM_OK);
                    const int64_t wsb = mxm_moe_plan_workspace_size(plan);
                    void *ws = aligned_alloc(64, (size_t)wsb);
                    float *o = pass ? ob : oa;
                    tu_poison_f32(o, T * H);
                    mxm_moe_inputs in = {.num_tokens = T,
                                         .x = x,
                                         .x_dtype = MXM_DT_F32,
                                         .topk_ids = ids,
                                         .topk_weights = w};
                    mxm_moe_outputs out = {.out = o, .out_dtype = MXM_DT_F32};
                    mxm_moe_weights mw = ref_layer_weights(&L);
                    assert_int_equal(mxm_moe_forward(plan, &mw, &in, &out, ws, wsb, NULL), MXM_OK);
                    free(ws);
                    mxm_moe_plan_destroy(plan);
                    if (pass) x[odd * H + 7] = mxm_round_bf16(x[odd * H + 7]);
                }
                int64_t differ = 0;
                for (int64_t t = 0; t < T; t++)
                    if (t != odd) differ += memcmp(oa + t * H, ob + t * H, 4 * (size_t)H) != 0;
                printf("neighbours %-9s T=%-3lld %-10s other tokens' outputs differing: %lld %s\n",
                       mxm_weight_format_name(c.weight_format), (long long)T, sets[si]->name,
                       (long long)differ, differ ? "FAIL" : "PASS");
                assert_int_equal(differ, 0);
            }
            free(x), free(w), free(oa), free(ob), free(ids);
            ref_layer_free(&L);
        }
    kernels_env_restore(saved);
}

/* A token's result does not depend on the thread count (README: threads take whole work items):
 * 1, 2 and 5 threads give the same bits, for both quantized weight formats, W8A8 and weight-only,
 * skewed routing from router logits (experts on the GEMV and on the tiles), a shared expert, every
 * kernel set this CPU runs. */
static void test_thread_count_independence(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const mxm_cpu_kernels *sets[16];
    const int nsets = mxm_cpu_kernel_sets(sets, 16);
    char *saved = kernels_env_save();
    const int fmts[] = {MXM_WFMT_MXFP8, MXM_WFMT_FP8_BLOCK}, threads[] = {1, 2, 5};
    const int64_t T = 70;
    for (int f = 0; f < 2; f++)
        for (int aq = 0; aq < 2; aq++) {
            mxm_moe_config c = base_cfg(160, 96, 8, 2, MXM_ACT_SILU);
            c.weight_format = fmts[f], c.act_quant = aq, c.shared_intermediate_size = 64;
            ref_layer L;
            ref_layer_init(&L, &c, tu_next(&r), 0);
            const int64_t H = c.hidden_size, E = c.num_experts;
            float *x = tu_alloc(4 * T * H), *lg = tu_alloc(4 * T * E), *o[3];
            tu_fill_normal_f32(&r, x, T * H, 1);
            tu_fill_normal_f32(&r, lg, T * E, 1);
            for (int64_t t = 0; t < T; t++)
                lg[t * E] += 3.0f; /* expert 0 takes most tokens */
            for (int i = 0; i < 3; i++)
                o[i] = tu_alloc(4 * T * H);
            for (int si = 0; si < nsets; si++) {
                c.kernels = si == 0 ? MXM_KERNELS_REF : MXM_KERNELS_AUTO;
                if (si) setenv("MXM_KERNELS", sets[si]->name, 1);
                for (int i = 0; i < 3; i++) {
                    c.num_threads = threads[i];
                    mxm_moe_plan *plan = NULL;
                    assert_int_equal(mxm_moe_plan_create(&c, T, &plan), MXM_OK);
                    const int64_t wsb = mxm_moe_plan_workspace_size(plan);
                    void *ws = aligned_alloc(64, (size_t)wsb);
                    tu_poison_f32(o[i], T * H);
                    mxm_moe_inputs in = {.num_tokens = T,
                                         .x = x,
                                         .x_dtype = MXM_DT_F32,
                                         .router_logits = lg,
                                         .logits_dtype = MXM_DT_F32};
                    mxm_moe_outputs out = {.out = o[i], .out_dtype = MXM_DT_F32};
                    mxm_moe_weights mw = ref_layer_weights(&L);
                    assert_int_equal(mxm_moe_forward(plan, &mw, &in, &out, ws, wsb, NULL), MXM_OK);
                    free(ws);
                    mxm_moe_plan_destroy(plan);
                }
                const int same = !memcmp(o[0], o[1], 4 * (size_t)(T * H)) &&
                                 !memcmp(o[0], o[2], 4 * (size_t)(T * H));
                printf("threads   %-9s %-4s %-10s 1/2/5 threads bit-identical: %s\n",
                       mxm_weight_format_name(c.weight_format), aq ? "w8" : "w8a8", sets[si]->name,
                       same ? "PASS" : "FAIL");
                assert_true(same);
            }
            for (int i = 0; i < 3; i++)
                free(o[i]);
            free(x), free(lg);
            ref_layer_free(&L);
        }
    kernels_env_restore(saved);
}

/* A forward of more tokens than one CPU pass holds (1024): an expert's path (the GEMV for at most
 * 4 rows in the whole forward) is counted over all passes before the first (the logits routed once
 * for that, caller-given ids read where they are). The logits send 3 tokens of each of experts
 * 0 and 8..14 to each pass (6 rows in all, 3 per pass), none to 1..7, the rest to 15. Checked:
 * routed from logits, the same bits as from the top-k ids and weights it returned; and the 48
 * tokens of the small experts the same bits as a forward of those tokens alone (one pass, 6 rows
 * per expert: not the GEMV). (The permutation's cursors once ran past their workspace region
 * into these counts; expert 0 then read 3.) Every kernel set this CPU runs; where the GEMV's sums
 * differ from the panels' (the bf16 sets), a miscount changes bits. */
static void test_passes_from_logits(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const int64_t T = 1100, H = 64, E = 16;
    mxm_moe_config c = base_cfg((int)H, 64, (int)E, 1, MXM_ACT_SILU);
    c.act_quant = MXM_ACT_QUANT_NONE, c.profile = MXM_PROFILE_EXACT;
    ref_layer L;
    ref_layer_init(&L, &c, tu_next(&r), 0);
    float *x = tu_alloc(4 * T * H), *lg = tu_alloc(4 * T * E), *w = tu_alloc(4 * T),
          *oa = tu_alloc(4 * T * H), *ob = tu_alloc(4 * T * H), *xs = tu_alloc(4 * T * H),
          *os = tu_alloc(4 * T * H), *w_s = tu_alloc(4 * T);
    int32_t *ids = tu_alloc(4 * T), *ids_s = tu_alloc(4 * T);
    int64_t *tok_s = tu_alloc(8 * T);
    tu_fill_normal_f32(&r, x, T * H, 1);
    for (int64_t i = 0; i < T * H; i++)
        x[i] = mxm_round_bf16(x[i]); /* bf16-exact: the bf16 GEMV takes them */
    tu_fill_normal_f32(&r, lg, T * E, 0.1f);
    for (int64_t t = 0; t < T; t++) {
        const int64_t pass_t = t % 1024; /* 3 tokens per expert 1..8 in each pass's first 72 */
        static const int small[8] = {0, 8, 9, 10, 11, 12, 13, 14}; /* 1..7 get no token */
        const int e = pass_t % 3 == 0 && pass_t < 72 ? small[(pass_t / 3) % 8] : 15;
        lg[t * E + e] = 10.0f;
    }
    const mxm_cpu_kernels *sets[16];
    const int nsets = mxm_cpu_kernel_sets(sets, 16);
    char *saved = kernels_env_save();
    for (int si = 0; si < nsets; si++) {
        c.kernels = si == 0 ? MXM_KERNELS_REF : MXM_KERNELS_AUTO;
        if (si) setenv("MXM_KERNELS", sets[si]->name, 1);
        mxm_moe_plan *plan = NULL;
        assert_int_equal(mxm_moe_plan_create(&c, T, &plan), MXM_OK);
        const int64_t wsb = mxm_moe_plan_workspace_size(plan);
        void *ws = aligned_alloc(64, (size_t)wsb);
        memset(ws, 0xCD, (size_t)wsb);
        mxm_moe_weights mw = ref_layer_weights(&L);
        tu_poison_f32(oa, T * H), tu_poison_f32(ob, T * H);
        const mxm_moe_inputs ia = {.num_tokens = T,
                                   .x = x,
                                   .x_dtype = MXM_DT_F32,
                                   .router_logits = lg,
                                   .logits_dtype = MXM_DT_F32};
        const mxm_moe_outputs outa = {
            .out = oa, .out_dtype = MXM_DT_F32, .topk_ids = ids, .topk_weights = w};
        assert_int_equal(mxm_moe_forward(plan, &mw, &ia, &outa, ws, wsb, NULL), MXM_OK);
        int64_t rows1 = 0, ns = 0;
        for (int64_t t = 0; t < T; t++)
            rows1 += ids[t] == 8;
        assert_int_equal(rows1, 6); /* the logits did what the test meant */
        /* the small experts' tokens alone (one pass) */
        for (int64_t t = 0; t < T; t++)
            if (ids[t] != 15) {
                memcpy(xs + ns * H, x + t * H, 4 * (size_t)H);
                ids_s[ns] = ids[t], w_s[ns] = w[t], tok_s[ns++] = t;
            }
        assert_int_equal(ns, 48);
        {
            mxm_moe_plan *ps = NULL;
            assert_int_equal(mxm_moe_plan_create(&c, ns, &ps), MXM_OK);
            const int64_t wss = mxm_moe_plan_workspace_size(ps);
            void *ws2 = aligned_alloc(64, (size_t)wss);
            tu_poison_f32(os, ns * H);
            const mxm_moe_inputs is = {.num_tokens = ns,
                                       .x = xs,
                                       .x_dtype = MXM_DT_F32,
                                       .topk_ids = ids_s,
                                       .topk_weights = w_s};
            const mxm_moe_outputs outs = {.out = os, .out_dtype = MXM_DT_F32};
            assert_int_equal(mxm_moe_forward(ps, &mw, &is, &outs, ws2, wss, NULL), MXM_OK);
            free(ws2);
            mxm_moe_plan_destroy(ps);
        }
        int64_t differ_alone = 0;
        for (int64_t i = 0; i < ns; i++)
            differ_alone += memcmp(os + i * H, oa + tok_s[i] * H, 4 * (size_t)H) != 0;
        memset(ws, 0xCD, (size_t)wsb);
        const mxm_moe_inputs ib = {
            .num_tokens = T, .x = x, .x_dtype = MXM_DT_F32, .topk_ids = ids, .topk_weights = w};
        const mxm_moe_outputs outb = {.out = ob, .out_dtype = MXM_DT_F32};
        assert_int_equal(mxm_moe_forward(plan, &mw, &ib, &outb, ws, wsb, NULL), MXM_OK);
        int64_t differ = 0;
        for (int64_t i = 0; i < T * H; i++)
            differ += memcmp(&oa[i], &ob[i], 4) != 0;
        printf("passes     T=%lld (2 passes) %-10s logits vs their ids: %lld elements differ; "
               "small experts' tokens vs alone: %lld differ %s\n",
               (long long)T, sets[si]->name, (long long)differ, (long long)differ_alone,
               differ || differ_alone ? "FAIL" : "PASS");
        assert_int_equal(differ, 0);
        assert_int_equal(differ_alone, 0);
        free(ws);
        mxm_moe_plan_destroy(plan);
    }
    kernels_env_restore(saved);
    free(x), free(lg), free(w), free(oa), free(ob), free(ids), free(xs), free(os), free(w_s),
        free(ids_s), free(tok_s);
    ref_layer_free(&L);
}

/* Runs last: the bounds of all the cases above were tight enough to catch a 1.6% error. */
static void test_bounds_catch_mutants(void **state) {
    (void)state;
    const double caught = g_elements ? (double)g_mutants_caught / (double)g_elements : 0;
    printf("mutants    %lld of %lld output elements scaled by 1+2^-6 fall outside their bounds (%.1f%%)\n",
           (long long)g_mutants_caught, (long long)g_elements, 100 * caught);
    assert_true(caught >= MIN_MUTANT_CAUGHT);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_integer_exact_w8a8),
        cmocka_unit_test(test_every_mode),
        cmocka_unit_test(test_activation_table),
        cmocka_unit_test(test_w13_layouts),
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_tile_groups),
        cmocka_unit_test(test_shared_expert),
        cmocka_unit_test(test_expert_parallel_slices),
        cmocka_unit_test(test_neighbour_independence),
        cmocka_unit_test(test_thread_count_independence),
        cmocka_unit_test(test_passes_from_logits),
        cmocka_unit_test(test_bounds_catch_mutants),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
