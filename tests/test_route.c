/* Routing (SPEC section 3) against an independent reference: keys per the method table, a full
 * sort of all E experts by (key desc, NaN last, index asc), weights in double from the fp32
 * sigmoid/exp values the spec defines, then rounded to fp32 (and bf16 in the trtllm profile).
 * Fresh random logits every run; outputs are poisoned before every call. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mxmoe.h"
#include "route/route.h"
#include "route/route_core.h"
#include "testutil.h"

/* ---- helpers -------------------------------------------------------------------------------- */

#define POISON_ID ((int32_t)0x7EADBEEF)

static float bf16r(float x) {
    return mxm_bf16_to_f32(mxm_bf16_from_f32(x));
}

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Signed position of f on the float line (adjacent floats differ by 1; -0 == +0). */
static int64_t ford(float f) {
    const uint32_t u = fbits(f);
    return (u & 0x80000000u) ? -(int64_t)(u & 0x7FFFFFFFu) : (int64_t)u;
}

static void cfg_init(mxm_moe_config *c, int32_t method, int32_t E, int32_t K) {
    memset(c, 0, sizeof *c);
    c->hidden_size = 64;
    c->intermediate_size = 64;
    c->num_experts = E;
    c->top_k = K;
    c->routing_method = method;
    c->routed_scaling_factor = 1.0f;
    c->norm_topk_prob = 1;
    c->profile = MXM_PROFILE_EXACT;
    c->shared_activation = -1;
    c->num_threads = 0;
}

/* ---- the reference -------------------------------------------------------------------------- */

typedef struct kv {
    float k;
    int32_t i;
} kv;

/* key descending, NaN after every number, then index ascending. */
static int kv_cmp(const void *pa, const void *pb) {
    const kv *a = pa, *b = pb;
    const int na = isnan(a->k), nb = isnan(b->k);
    if (na != nb) return na ? 1 : -1;
    if (!na && a->k != b->k) return a->k > b->k ? -1 : 1;
    return (a->i > b->i) - (a->i < b->i);
}

static float ref_sigmoid(float x) {
    return 1.0f / (1.0f + expf(-x));
}

typedef struct ref_ws {
    float *key, *sg;
    kv *items;
    uint8_t *allowed;
} ref_ws;

static ref_ws ref_ws_new(int32_t E) {
    ref_ws w;
    w.key = tu_alloc((size_t)E * 4);
    w.sg = tu_alloc((size_t)E * 4);
    w.items = tu_alloc((size_t)E * sizeof(kv));
    w.allowed = tu_alloc((size_t)E);
    return w;
}

static void ref_ws_free(ref_ws *w) {
    free(w->key);
    free(w->sg);
    free(w->items);
    free(w->allowed);
}

/* One token: z [E] decoded logits, bias [E] decoded or NULL. Writes ids [K] and w [K]. */
static void ref_row(const mxm_moe_config *c, const float *z, const float *bias, ref_ws *ws,
                    int32_t *ids, float *w) {
    const int32_t E = c->num_experts, K = c->top_k, m = c->routing_method;
    float *key = ws->key, *sg = ws->sg;
    const int grouped = m == MXM_ROUTE_DEEPSEEK_V3 && c->n_group > 1;
    const int trt = c->profile == MXM_PROFILE_TRTLLM;
    if (m == MXM_ROUTE_DEFAULT || m == MXM_ROUTE_RENORMALIZE_NAIVE) {
        float mx = -INFINITY;
        for (int32_t i = 0; i < E; i++)
            if (z[i] > mx) mx = z[i];
        double sum = 0;
        for (int32_t i = 0; i < E; i++)
            sum += (double)expf(z[i] - mx);
        for (int32_t i = 0; i < E; i++)
            key[i] = (float)((double)expf(z[i] - mx) / sum);
    } else if (m == MXM_ROUTE_SIGMOID || m == MXM_ROUTE_SIGMOID_RENORM) {
        for (int32_t i = 0; i < E; i++)
            key[i] = ref_sigmoid(z[i]);
    } else if (m == MXM_ROUTE_DEEPSEEK_V3 || m == MXM_ROUTE_MINIMAX2) {
        for (int32_t i = 0; i < E; i++) {
            sg[i] = ref_sigmoid(z[i]);
            const float b = bias ? (grouped && trt ? bf16r(bias[i]) : bias[i]) : 0.0f;
            key[i] = bias ? sg[i] + b : sg[i];
        }
    } else {
        for (int32_t i = 0; i < E; i++)
            key[i] = z[i];
    }
    for (int32_t i = 0; i < E; i++)
        ws->allowed[i] = 1;
    if (grouped) {
        const int32_t G = c->n_group, gs = E / G;
        kv gk[64];
        assert_true(G <= 64);
        for (int32_t g = 0; g < G; g++) {
            for (int32_t i = 0; i < gs; i++)
                ws->items[i] = (kv){key[g * gs + i], g * gs + i};
            qsort(ws->items, (size_t)gs, sizeof(kv), kv_cmp);
            gk[g].k = gs == 1 ? ws->items[0].k : ws->items[0].k + ws->items[1].k;
            gk[g].i = g;
        }
        qsort(gk, (size_t)G, sizeof(kv), kv_cmp);
        memset(ws->allowed, 0, (size_t)E);
        for (int32_t j = 0; j < c->topk_group; j++)
            for (int32_t i = 0; i < gs; i++)
                ws->allowed[gk[j].i * gs + i] = 1;
    }
    int32_t n = 0;
    for (int32_t i = 0; i < E; i++)
        if (ws->allowed[i]) ws->items[n++] = (kv){key[i], i};
    assert_true(n >= K);
    qsort(ws->items, (size_t)n, sizeof(kv), kv_cmp);
    for (int32_t j = 0; j < K; j++)
        ids[j] = ws->items[j].i;

    double wd[4096];
    assert_true(K <= 4096);
    double sum = 0;
    switch (m) {
    case MXM_ROUTE_DEFAULT:
    case MXM_ROUTE_TOPK:
    case MXM_ROUTE_SIGMOID:
        for (int32_t j = 0; j < K; j++)
            wd[j] = key[ids[j]];
        break;
    case MXM_ROUTE_RENORMALIZE:
        for (int32_t j = 0; j < K; j++)
            sum += (double)expf(z[ids[j]] - z[ids[0]]);
        for (int32_t j = 0; j < K; j++)
            wd[j] = (double)expf(z[ids[j]] - z[ids[0]]) / sum;
        break;
    case MXM_ROUTE_RENORMALIZE_NAIVE:
        for (int32_t j = 0; j < K; j++)
            sum += key[ids[j]];
        for (int32_t j = 0; j < K; j++)
            wd[j] = key[ids[j]] / sum;
        break;
    case MXM_ROUTE_SIGMOID_RENORM:
        for (int32_t j = 0; j < K; j++)
            sum += key[ids[j]];
        if (sum < 1e-20) sum = 1e-20;
        for (int32_t j = 0; j < K; j++)
            wd[j] = c->norm_topk_prob ? key[ids[j]] / sum : key[ids[j]];
        break;
    case MXM_ROUTE_DEEPSEEK_V3:
    case MXM_ROUTE_MINIMAX2:
        for (int32_t j = 0; j < K; j++)
            sum += sg[ids[j]];
        for (int32_t j = 0; j < K; j++)
            wd[j] = (double)c->routed_scaling_factor * sg[ids[j]] / (sum + 1e-20);
        break;
    case MXM_ROUTE_LLAMA4:
    case MXM_ROUTE_TOPK_SIGMOID:
        for (int32_t j = 0; j < K; j++)
            wd[j] = ref_sigmoid(z[ids[j]]);
        break;
    default:
        fail_msg("bad method %d", m);
    }
    for (int32_t j = 0; j < K; j++)
        w[j] = trt ? bf16r((float)wd[j]) : (float)wd[j];
}

/* Compares one run with the reference; returns the number of mismatching rows (prints the
 * first few). Weights: within 1 ulp of fp32, or 1 ulp of bf16 (and bf16-exact) for trtllm. */
static int compare_with_ref(const mxm_moe_config *c, int64_t T, const float *z, const float *bias,
                            const int32_t *ids, const float *w) {
    const int32_t E = c->num_experts, K = c->top_k;
    ref_ws ws = ref_ws_new(E);
    int32_t *rid = tu_alloc((size_t)K * 4);
    float *rw = tu_alloc((size_t)K * 4);
    int bad = 0;
    const int trt = c->profile == MXM_PROFILE_TRTLLM;
    for (int64_t t = 0; t < T; t++) {
        ref_row(c, z + t * E, bias, &ws, rid, rw);
        for (int32_t j = 0; j < K; j++) {
            const int32_t gi = ids[t * K + j];
            const float gw = w[t * K + j];
            int ok = gi == rid[j];
            if (isnan(gw) || isnan(rw[j])) {
                ok = ok && isnan(gw) && isnan(rw[j]);
            } else if (trt) {
                ok = ok && (fbits(gw) & 0xFFFFu) == 0 && llabs(ford(gw) - ford(rw[j])) <= 0x10000;
            } else {
                ok = ok && llabs(ford(gw) - ford(rw[j])) <= 1;
            }
            if (!ok) {
                if (bad < 5)
                    print_error("mismatch %s E=%d K=%d G=%d/%d prof=%d T=%lld: row %lld slot %d: "
                                "got id %d w %.9g, want id %d w %.9g\n",
                                mxm_routing_method_name(c->routing_method), E, K, c->n_group,
                                c->topk_group, c->profile, (long long)T, (long long)t, j, gi,
                                (double)gw, rid[j], (double)rw[j]);
                bad++;
                break;
            }
        }
    }
    ref_ws_free(&ws);
    free(rid);
    free(rw);
    return bad;
}

/* Inputs of one case: logits in their dtype plus the decoded fp32 copy the reference uses. */
typedef struct case_in {
    int64_t T;
    int32_t E;
    float *z;     /* decoded [T, E] */
    void *logits; /* [T, E] in ldt */
    int32_t ldt;
    float *bias; /* decoded [E] or NULL */
    void *bias_raw;
    int32_t bdt;
} case_in;

/* Normal logits (scale varies per row), some exact duplicates inside a row (ties). */
static case_in make_case(tu_rng *r, int64_t T, int32_t E, int32_t ldt, int bias_mode) {
    case_in ci;
    memset(&ci, 0, sizeof ci);
    ci.T = T;
    ci.E = E;
    ci.ldt = ldt;
    ci.z = tu_alloc((size_t)(T * E) * 4);
    for (int64_t t = 0; t < T; t++) {
        const float scale = (float)ldexp(1.0, (int)tu_randint(r, -2, 3));
        float *row = ci.z + t * E;
        tu_fill_normal_f32(r, row, E, scale);
        for (int32_t i = 1; i < E; i++)
            if (tu_randint(r, 0, 7) == 0) row[i] = row[tu_randint(r, 0, i - 1)];
    }
    if (ldt == MXM_DT_BF16) {
        uint16_t *l = tu_alloc((size_t)(T * E) * 2);
        for (int64_t i = 0; i < T * E; i++) {
            l[i] = mxm_bf16_from_f32(ci.z[i]);
            ci.z[i] = mxm_bf16_to_f32(l[i]);
        }
        ci.logits = l;
    } else {
        ci.logits = tu_alloc((size_t)(T * E) * 4);
        memcpy(ci.logits, ci.z, (size_t)(T * E) * 4);
    }
    if (bias_mode) {
        ci.bias = tu_alloc((size_t)E * 4);
        tu_fill_normal_f32(r, ci.bias, E, 0.25f);
        if (bias_mode == 2) {
            uint16_t *b = tu_alloc((size_t)E * 2);
            for (int32_t i = 0; i < E; i++) {
                b[i] = mxm_bf16_from_f32(ci.bias[i]);
                ci.bias[i] = mxm_bf16_to_f32(b[i]);
            }
            ci.bias_raw = b;
            ci.bdt = MXM_DT_BF16;
        } else {
            ci.bias_raw = tu_alloc((size_t)E * 4);
            memcpy(ci.bias_raw, ci.bias, (size_t)E * 4);
            ci.bdt = MXM_DT_F32;
        }
    }
    return ci;
}

static void free_case(case_in *ci) {
    free(ci->z);
    free(ci->logits);
    free(ci->bias);
    free(ci->bias_raw);
}

/* Routes ci with cfg through mxm_route (outputs poisoned first) and checks it against the
 * reference. Returns the number of bad rows. */
static int run_and_check(const mxm_moe_config *cfg, const case_in *ci) {
    const int64_t n = ci->T * cfg->top_k;
    int32_t *ids = tu_alloc((size_t)n * 4);
    float *w = tu_alloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++)
        ids[i] = POISON_ID;
    tu_poison_f32(w, n);
    const mxm_status st = mxm_route(cfg, ci->T, ci->logits, ci->ldt, ci->bias_raw, ci->bdt, ids, w);
    if (st != MXM_OK) fail_msg("mxm_route failed: %d %s", st, mxm_last_error());
    /* The reference sees the bias only where the method uses it. */
    const int uses_bias =
        cfg->routing_method == MXM_ROUTE_DEEPSEEK_V3 || cfg->routing_method == MXM_ROUTE_MINIMAX2;
    const int bad = compare_with_ref(cfg, ci->T, ci->z, uses_bias ? ci->bias : NULL, ids, w);
    free(ids);
    free(w);
    return bad;
}

/* ---- tests ---------------------------------------------------------------------------------- */

/* Every method x E x K x profile x logits dtype, bias and T cycling. */
static void test_all_methods_random(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const int32_t Es[] = {8, 64, 128, 256, 2048};
    const int32_t Ks[] = {1, 2, 8, 22, -1 /* E */};
    const int64_t Ts[] = {1, 7, 1000};
    int counter = 0, cases = 0, bad = 0;
    for (int32_t m = 0; m < MXM_ROUTE_COUNT_; m++)
        for (size_t ei = 0; ei < sizeof Es / sizeof Es[0]; ei++)
            for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++)
                for (int32_t prof = 0; prof < 2; prof++)
                    for (int32_t ldt = 0; ldt < 2; ldt++) {
                        const int32_t E = Es[ei], K = Ks[ki] < 0 ? E : Ks[ki];
                        if (Ks[ki] >= 0 && K >= E && K != 1)
                            continue; /* K > E is invalid; K == E is the last entry */
                        if (m == MXM_ROUTE_LLAMA4 && K != 1) continue;
                        counter++;
                        int64_t T = Ts[counter % 3];
                        /* the reference sorts all E per token: keep the big ones shorter */
                        if (T == 1000 && E >= 128) T = E == 128 ? 250 : E == 256 ? 100 : 24;
                        mxm_moe_config cfg;
                        cfg_init(&cfg, m, E, K);
                        cfg.profile = prof;
                        cfg.routed_scaling_factor = (counter & 1) ? 2.5f : 1.0f;
                        cfg.norm_topk_prob = (counter >> 1) & 1;
                        /* the parallel path in a quarter of the cases (idle OpenMP workers spin
                         * while the reference runs) */
                        cfg.num_threads = counter % 4 == 0 ? 0 : 1;
                        if (m == MXM_ROUTE_DEEPSEEK_V3 && (counter & 2) && E % 8 == 0) {
                            cfg.n_group = 8;
                            cfg.topk_group = K <= 4 * (E / 8) ? 4 : 8;
                        }
                        case_in ci = make_case(&r, T, E, ldt, (counter / 3) % 3);
                        bad += run_and_check(&cfg, &ci) != 0;
                        free_case(&ci);
                        cases++;
                    }
    print_message("[route] %d random cases, %d bad\n", cases, bad);
    assert_true(cases > 300);
    assert_int_equal(bad, 0);
}

/* Large E with many tokens (parallel path), a few methods. */
static void test_large_e_many_tokens(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const int32_t ms[] = {MXM_ROUTE_DEFAULT, MXM_ROUTE_MINIMAX2, MXM_ROUTE_RENORMALIZE};
    const int32_t ks[] = {22, 8, 2048};
    for (int i = 0; i < 3; i++) {
        mxm_moe_config cfg;
        cfg_init(&cfg, ms[i], 2048, ks[i]);
        cfg.profile = i & 1;
        case_in ci = make_case(&r, i == 0 ? 1000 : 150, 2048, (i & 1) ? MXM_DT_BF16 : MXM_DT_F32,
                               1 + (i & 1));
        assert_int_equal(run_and_check(&cfg, &ci), 0);
        free_case(&ci);
    }
}

/* Equal logits: every method picks experts 0..K-1 in order. */
static void test_ties_lower_index_wins(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const int32_t E = 64;
    float z[3 * 64];
    for (int32_t m = 0; m < MXM_ROUTE_COUNT_; m++) {
        const int32_t Ks[] = {1, 3, E};
        for (int ki = 0; ki < 3; ki++) {
            const int32_t K = Ks[ki];
            if (m == MXM_ROUTE_LLAMA4 && K != 1) continue;
            for (int t = 0; t < 3; t++) {
                const float v = bf16r((float)tu_normal(&r));
                for (int32_t i = 0; i < E; i++)
                    z[t * E + i] = v;
            }
            mxm_moe_config cfg;
            cfg_init(&cfg, m, E, K);
            int32_t ids[3 * 64];
            float w[3 * 64];
            for (int i = 0; i < 3 * 64; i++)
                ids[i] = POISON_ID;
            tu_poison_f32(w, 3 * 64);
            assert_int_equal(mxm_route(&cfg, 3, z, MXM_DT_F32, NULL, 0, ids, w), MXM_OK);
            for (int t = 0; t < 3; t++)
                for (int32_t j = 0; j < K; j++) {
                    assert_int_equal(ids[t * K + j], j);
                    assert_false(isnan(w[t * K + j]));
                }
            assert_int_equal(compare_with_ref(&cfg, 3, z, NULL, ids, w), 0);
        }
    }
    /* Two equal maxima at random positions a < b: a first, then b. */
    for (int32_t m = 0; m < MXM_ROUTE_COUNT_; m++) {
        const int32_t K = m == MXM_ROUTE_LLAMA4 ? 1 : 2;
        tu_fill_normal_f32(&r, z, E, 1.0f);
        const int32_t a = (int32_t)tu_randint(&r, 0, E - 2),
                      b = (int32_t)tu_randint(&r, a + 1, E - 1);
        z[a] = z[b] = 6.0f;
        mxm_moe_config cfg;
        cfg_init(&cfg, m, E, K);
        int32_t ids[2] = {POISON_ID, POISON_ID};
        float w[2];
        tu_poison_f32(w, 2);
        assert_int_equal(mxm_route(&cfg, 1, z, MXM_DT_F32, NULL, 0, ids, w), MXM_OK);
        assert_int_equal(ids[0], a);
        if (K == 2) {
            assert_int_equal(ids[1], b);
            assert_true(w[0] == w[1]);
        }
    }
    /* -0 and +0 are equal keys: the lower index wins whatever the sign. */
    {
        const float zz[6] = {-3.0f, 0.0f, -1.0f, -0.0f, -2.0f, -0.0f};
        int32_t id3[3];
        float w3[3];
        mxm_moe_config c0;
        cfg_init(&c0, MXM_ROUTE_TOPK, 6, 3);
        assert_int_equal(mxm_route(&c0, 1, zz, MXM_DT_F32, NULL, 0, id3, w3), MXM_OK);
        assert_int_equal(id3[0], 1);
        assert_int_equal(id3[1], 3);
        assert_int_equal(id3[2], 5);
        const float zn[6] = {-0.0f, -1.0f, 0.0f, -0.0f, -2.0f, 0.0f};
        assert_int_equal(mxm_route(&c0, 1, zn, MXM_DT_F32, NULL, 0, id3, w3), MXM_OK);
        assert_int_equal(id3[0], 0);
        assert_int_equal(id3[1], 2);
        assert_int_equal(id3[2], 3);
    }
    /* fp32 sigmoid saturates to 1.0f above ~17: the sigmoid keys tie, the logit keys do not. */
    const float zs[8] = {-1.0f, 20.0f, 30.0f, 25.0f, 0.0f, 1.0f, 2.0f, 3.0f};
    int32_t ids[3];
    float w[3];
    mxm_moe_config cfg;
    cfg_init(&cfg, MXM_ROUTE_SIGMOID, 8, 3);
    assert_int_equal(mxm_route(&cfg, 1, zs, MXM_DT_F32, NULL, 0, ids, w), MXM_OK);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 2);
    assert_int_equal(ids[2], 3);
    cfg.routing_method = MXM_ROUTE_TOPK_SIGMOID;
    assert_int_equal(mxm_route(&cfg, 1, zs, MXM_DT_F32, NULL, 0, ids, w), MXM_OK);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 3);
    assert_int_equal(ids[2], 1);
}

/* Grouped DeepSeek-V3 (n_group 8, topk_group 4, E 256, K 8) against the reference. */
static void test_grouped_deepseek_random(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    int n = 0;
    for (int32_t prof = 0; prof < 2; prof++)
        for (int32_t ldt = 0; ldt < 2; ldt++)
            for (int bm = 0; bm < 3; bm++) {
                mxm_moe_config cfg;
                cfg_init(&cfg, MXM_ROUTE_DEEPSEEK_V3, 256, 8);
                cfg.n_group = 8;
                cfg.topk_group = 4;
                cfg.profile = prof;
                cfg.routed_scaling_factor = 2.5f;
                case_in ci = make_case(&r, (n++ % 2) ? 1000 : 7, 256, ldt, bm);
                assert_int_equal(run_and_check(&cfg, &ci), 0);
                free_case(&ci);
            }
}

/* Constructed: the single best expert sits in a group whose second-best is poor, so grouping
 * drops it; ungrouped top-k keeps it. Also the trtllm bias rounding of the grouped path. */
static void test_grouped_deepseek_constructed(void **state) {
    (void)state;
    const int32_t E = 256, G = 8, gs = 32;
    float z[256];
    for (int32_t i = 0; i < E; i++)
        z[i] = -6.0f - 0.01f * (float)(i % 7);
    /* groups 0..3: two good experts each (score ~ 2 * 0.95) */
    for (int32_t g = 0; g < 4; g++) {
        z[g * gs + 5] = 3.0f - 0.25f * (float)g;
        z[g * gs + 9] = 2.9f - 0.25f * (float)g;
    }
    /* group 7: one excellent expert, the rest poor (score ~ 1.0) */
    const int32_t star = 7 * gs + 3;
    z[star] = 10.0f;
    mxm_moe_config cfg;
    cfg_init(&cfg, MXM_ROUTE_DEEPSEEK_V3, E, 8);
    int32_t ids[8], ids_flat[8];
    float w[8], w_flat[8];
    for (int32_t prof = 0; prof < 2; prof++) {
        cfg.profile = prof;
        cfg.n_group = G;
        cfg.topk_group = 4;
        assert_int_equal(mxm_route(&cfg, 1, z, MXM_DT_F32, NULL, 0, ids, w), MXM_OK);
        cfg.n_group = 1;
        cfg.topk_group = 1;
        assert_int_equal(mxm_route(&cfg, 1, z, MXM_DT_F32, NULL, 0, ids_flat, w_flat), MXM_OK);
        assert_int_equal(ids_flat[0], star);
        for (int j = 0; j < 8; j++) {
            assert_int_not_equal(ids[j], star);
            assert_true(ids[j] / gs < 4);
        }
        /* The eight good experts of groups 0..3, best first. */
        const int32_t want[8] = {5, 9, 32 + 5, 32 + 9, 64 + 5, 64 + 9, 96 + 5, 96 + 9};
        for (int j = 0; j < 8; j++)
            assert_int_equal(ids[j], want[j]);
        cfg.n_group = G;
        cfg.topk_group = 4;
        assert_int_equal(compare_with_ref(&cfg, 1, z, NULL, ids, w), 0);
        cfg.n_group = 1;
        assert_int_equal(compare_with_ref(&cfg, 1, z, NULL, ids_flat, w_flat), 0);
    }
    /* Bias rounding: experts 0 and 1 have equal sigmoid; f32 bias 0.25 vs 0.25*(1+2^-20). The
     * trtllm grouped path rounds both to bf16 0.25 (tie -> expert 0); exact and ungrouped paths
     * see expert 1 ahead. */
    float zb[256], bias[256];
    for (int32_t i = 0; i < E; i++) {
        zb[i] = -5.0f;
        bias[i] = 0.0f;
    }
    zb[0] = zb[1] = 1.0f;
    bias[0] = 0.25f;
    bias[1] = 0.25f + 0x1p-22f;
    struct {
        int32_t prof, n_group, topk_group, first;
    } bc[] = {{MXM_PROFILE_TRTLLM, 8, 4, 0},
              {MXM_PROFILE_EXACT, 8, 4, 1},
              {MXM_PROFILE_TRTLLM, 1, 1, 1},
              {MXM_PROFILE_TRTLLM, 0, 0, 1}};
    for (size_t i = 0; i < sizeof bc / sizeof bc[0]; i++) {
        cfg.profile = bc[i].prof;
        cfg.n_group = bc[i].n_group;
        cfg.topk_group = bc[i].topk_group;
        assert_int_equal(mxm_route(&cfg, 1, zb, MXM_DT_F32, bias, MXM_DT_F32, ids, w), MXM_OK);
        assert_int_equal(ids[0], bc[i].first);
        assert_int_equal(ids[1], 1 - bc[i].first);
        assert_int_equal(compare_with_ref(&cfg, 1, zb, bias, ids, w), 0);
    }
    /* MiniMax2 never rounds its bias. */
    cfg.routing_method = MXM_ROUTE_MINIMAX2;
    cfg.profile = MXM_PROFILE_TRTLLM;
    cfg.n_group = 0;
    cfg.topk_group = 0;
    assert_int_equal(mxm_route(&cfg, 1, zb, MXM_DT_F32, bias, MXM_DT_F32, ids, w), MXM_OK);
    assert_int_equal(ids[0], 1);
}

/* n_group/topk_group 0 and 1 mean the same; all groups kept equals no grouping (exact). */
static void test_ngroup_zero_one_equivalent(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const int32_t E = 128, K = 8;
    const int64_t T = 57;
    case_in ci = make_case(&r, T, E, MXM_DT_BF16, 1);
    int32_t *ids[5];
    float *w[5];
    const int32_t gcfg[5][2] = {{0, 0}, {0, 1}, {1, 0}, {1, 1}, {8, 8}};
    for (int v = 0; v < 5; v++) {
        mxm_moe_config cfg;
        cfg_init(&cfg, MXM_ROUTE_DEEPSEEK_V3, E, K);
        cfg.n_group = gcfg[v][0];
        cfg.topk_group = gcfg[v][1];
        ids[v] = tu_alloc((size_t)(T * K) * 4);
        w[v] = tu_alloc((size_t)(T * K) * 4);
        for (int64_t i = 0; i < T * K; i++)
            ids[v][i] = POISON_ID;
        tu_poison_f32(w[v], T * K);
        assert_int_equal(mxm_route(&cfg, T, ci.logits, ci.ldt, ci.bias_raw, ci.bdt, ids[v], w[v]),
                         MXM_OK);
        assert_int_equal(compare_with_ref(&cfg, T, ci.z, ci.bias, ids[v], w[v]), 0);
        if (v > 0) {
            assert_memory_equal(ids[v], ids[0], (size_t)(T * K) * 4);
            assert_memory_equal(w[v], w[0], (size_t)(T * K) * 4);
        }
    }
    for (int v = 0; v < 5; v++) {
        free(ids[v]);
        free(w[v]);
    }
    free_case(&ci);
}

/* Same result for 1, 2 and all threads; the internal row API writes only its rows. */
static void test_threads_and_row_ranges(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const int32_t E = 96, K = 6;
    const int64_t T = 1000;
    case_in ci = make_case(&r, T, E, MXM_DT_F32, 0);
    int32_t *ids[3];
    float *w[3];
    const int32_t nts[3] = {1, 2, 0};
    for (int v = 0; v < 3; v++) {
        mxm_moe_config cfg;
        cfg_init(&cfg, MXM_ROUTE_RENORMALIZE, E, K);
        cfg.num_threads = nts[v];
        ids[v] = tu_alloc((size_t)(T * K) * 4);
        w[v] = tu_alloc((size_t)(T * K) * 4);
        for (int64_t i = 0; i < T * K; i++)
            ids[v][i] = POISON_ID;
        tu_poison_f32(w[v], T * K);
        assert_int_equal(mxm_route(&cfg, T, ci.logits, ci.ldt, NULL, 0, ids[v], w[v]), MXM_OK);
        if (v == 0)
            assert_int_equal(compare_with_ref(&cfg, T, ci.z, NULL, ids[v], w[v]), 0);
        else {
            assert_memory_equal(ids[v], ids[0], (size_t)(T * K) * 4);
            assert_memory_equal(w[v], w[0], (size_t)(T * K) * 4);
        }
    }
    /* mxm_route_rows on [3, 5) with exactly mxm_route_scratch_bytes of scratch */
    mxm_moe_config cfg;
    cfg_init(&cfg, MXM_ROUTE_RENORMALIZE, E, K);
    mxm_route_params p;
    mxm_route_params_from_config(&cfg, &p);
    assert_int_equal(mxm_route_check(&p), MXM_OK);
    const int64_t sb = mxm_route_scratch_bytes(&p);
    assert_true(sb >= E * 4);
    void *scratch = tu_alloc((size_t)sb);
    for (int64_t i = 0; i < T * K; i++)
        ids[1][i] = POISON_ID;
    tu_poison_f32(w[1], T * K);
    mxm_route_rows(&p, ci.logits, ci.ldt, NULL, 0, 3, 5, ids[1], w[1], scratch);
    for (int64_t t = 0; t < 8; t++)
        for (int32_t j = 0; j < K; j++) {
            if (t >= 3 && t < 5) {
                assert_int_equal(ids[1][t * K + j], ids[0][t * K + j]);
                assert_true(w[1][t * K + j] == w[0][t * K + j]);
            } else {
                assert_int_equal(ids[1][t * K + j], POISON_ID);
                assert_true(isnan(w[1][t * K + j]));
            }
        }
    free(scratch);
    for (int v = 0; v < 3; v++) {
        free(ids[v]);
        free(w[v]);
    }
    free_case(&ci);
}

/* NaN / Inf logits: no crash or hang, deterministic ids (NaN ranks last), NaN weights as the
 * math gives them; matches the reference. */
static void test_nan_and_inf_logits(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const int32_t E = 64;
    const int64_t T = 8;
    float z[8 * 64];
    tu_fill_normal_f32(&r, z, T * E, 1.0f);
    for (int32_t i = 0; i < E; i++)
        z[0 * E + i] = NAN;                             /* all NaN */
    z[1 * E + (int32_t)tu_randint(&r, 0, E - 1)] = NAN; /* one NaN */
    z[2 * E + 3] = NAN;                                 /* NaN and +inf */
    z[2 * E + 10] = INFINITY;
    for (int32_t i = 0; i < E; i++)
        z[3 * E + i] = -INFINITY; /* all -inf */
    for (int32_t i = 0; i < E; i += 2)
        z[4 * E + i] = NAN;  /* half NaN */
    z[5 * E + 7] = INFINITY; /* +inf */
    z[5 * E + 9] = -INFINITY;
    for (int32_t i = 0; i < E; i++)
        z[6 * E + i] = i % 3 ? NAN : -INFINITY;
    z[7 * E + 0] = -NAN; /* negative NaN */
    float bias[64];
    tu_fill_normal_f32(&r, bias, E, 0.25f);
    bias[5] = NAN;
    const int32_t Ks[] = {1, 8, 40, 64};
    int checked = 0;
    for (int32_t m = 0; m < MXM_ROUTE_COUNT_; m++)
        for (int ki = 0; ki < 4; ki++)
            for (int32_t prof = 0; prof < 2; prof++)
                for (int grouped = 0; grouped < 2; grouped++) {
                    const int32_t K = Ks[ki];
                    if (m == MXM_ROUTE_LLAMA4 && K != 1) continue;
                    if (grouped && (m != MXM_ROUTE_DEEPSEEK_V3 || K > 32)) continue;
                    mxm_moe_config cfg;
                    cfg_init(&cfg, m, E, K);
                    cfg.profile = prof;
                    if (grouped) {
                        cfg.n_group = 4;
                        cfg.topk_group = 2;
                    }
                    int32_t ids[8 * 64];
                    float w[8 * 64];
                    for (int i = 0; i < 8 * 64; i++)
                        ids[i] = POISON_ID;
                    tu_poison_f32(w, 8 * 64);
                    const float *b = (m == 2 || m == 7) && (ki & 1) ? bias : NULL;
                    assert_int_equal(mxm_route(&cfg, T, z, MXM_DT_F32, b, MXM_DT_F32, ids, w),
                                     MXM_OK);
                    for (int64_t t = 0; t < T; t++) {
                        uint8_t seen[64] = {0};
                        for (int32_t j = 0; j < K; j++) {
                            const int32_t id = ids[t * K + j];
                            assert_true(id >= 0 && id < E);
                            assert_false(seen[id]);
                            seen[id] = 1;
                        }
                    }
                    /* the all-NaN row picks 0..K-1 (grouping: the first groups) */
                    for (int32_t j = 0; j < K; j++)
                        assert_int_equal(ids[j], j);
                    assert_int_equal(compare_with_ref(&cfg, T, z, b, ids, w), 0);
                    checked++;
                }
    assert_true(checked > 70);
}

/* Every documented error: the right status, a message naming the problem, outputs untouched. */
static void test_errors(void **state) {
    (void)state;
    float z[8 * 16] = {0};
    int32_t ids[8 * 16];
    float w[8 * 16];
    typedef struct ec {
        int32_t method, E, K, n_group, topk_group, profile, num_threads;
        float S;
        int64_t T;
        int32_t ldt, bdt, null_what; /* 1 cfg, 2 logits, 3 ids, 4 weights; 5 = pass a bias */
        mxm_status want;
        const char *msg;
    } ec;
    const ec cases[] = {
        {1, 8, 0, 0, 0, 1, 0, 1.0f, 1, 0, 0, 0, MXM_ERR_SHAPE, "top_k=0"},
        {1, 8, -3, 0, 0, 1, 0, 1.0f, 1, 0, 0, 0, MXM_ERR_SHAPE, "top_k=-3"},
        {1, 8, 9, 0, 0, 1, 0, 1.0f, 1, 0, 0, 0, MXM_ERR_SHAPE, "top_k=9 > num_experts=8"},
        {1, 0, 1, 0, 0, 1, 0, 1.0f, 1, 0, 0, 0, MXM_ERR_SHAPE, "num_experts=0"},
        {2, 10, 2, 4, 2, 1, 0, 1.0f, 1, 0, 0, 0, MXM_ERR_SHAPE, "not a multiple of n_group=4"},
        {2, 16, 2, 4, 5, 1, 0, 1.0f, 1, 0, 0, 0, MXM_ERR_INVALID_ARG, "topk_group=5 > n_group=4"},
        {2, 16, 2, 4, 0, 1, 0, 1.0f, 1, 0, 0, 0, MXM_ERR_INVALID_ARG, "topk_group=0"},
        {2, 16, 5, 4, 1, 1, 0, 1.0f, 1, 0, 0, 0, MXM_ERR_SHAPE, "top_k=5 > topk_group=1"},
        {2, 16, 2, 0, 2, 1, 0, 1.0f, 1, 0, 0, 0, MXM_ERR_INVALID_ARG, "topk_group=2"},
        {2, 16, 2, -1, 0, 1, 0, 1.0f, 1, 0, 0, 0, MXM_ERR_INVALID_ARG, "n_group=-1"},
        {1, 16, 2, 4, 2, 1, 0, 1.0f, 1, 0, 0, 0, MXM_ERR_UNSUPPORTED, "deepseek_v3"},
        {10, 8, 1, 0, 0, 1, 0, 1.0f, 1, 0, 0, 0, MXM_ERR_INVALID_ARG, "sigmoid_renorm"},
        {-1, 8, 1, 0, 0, 1, 0, 1.0f, 1, 0, 0, 0, MXM_ERR_INVALID_ARG, "routing_method=-1"},
        {3, 8, 2, 0, 0, 1, 0, 1.0f, 1, 0, 0, 0, MXM_ERR_UNSUPPORTED, "llama4"},
        {1, 8, 2, 0, 0, 5, 0, 1.0f, 1, 0, 0, 0, MXM_ERR_INVALID_ARG, "profile=5"},
        {2, 8, 2, 0, 0, 1, 0, NAN, 1, 0, 0, 0, MXM_ERR_INVALID_ARG, "routed_scaling_factor"},
        {1, 8, 2, 0, 0, 1, -2, 1.0f, 1, 0, 0, 0, MXM_ERR_INVALID_ARG, "num_threads=-2"},
        {1, 8, 2, 0, 0, 1, 0, 1.0f, 1, MXM_DT_F16, 0, 0, MXM_ERR_DTYPE, "logits dtype"},
        {1, 8, 2, 0, 0, 1, 0, 1.0f, 1, 99, 0, 0, MXM_ERR_DTYPE, "logits dtype 99"},
        {2, 8, 2, 0, 0, 1, 0, 1.0f, 1, 0, MXM_DT_E4M3, 5, MXM_ERR_DTYPE, "bias dtype"},
        {1, 8, 2, 0, 0, 1, 0, 1.0f, 1, 0, 0, 1, MXM_ERR_NULL, "cfg"},
        {1, 8, 2, 0, 0, 1, 0, 1.0f, 1, 0, 0, 2, MXM_ERR_NULL, "logits"},
        {1, 8, 2, 0, 0, 1, 0, 1.0f, 1, 0, 0, 3, MXM_ERR_NULL, "ids"},
        {1, 8, 2, 0, 0, 1, 0, 1.0f, 1, 0, 0, 4, MXM_ERR_NULL, "weights"},
        {1, 8, 2, 0, 0, 1, 0, 1.0f, -1, 0, 0, 0, MXM_ERR_SHAPE, "num_tokens=-1"},
        {1, 8, 2, 0, 0, 1, 0, 1.0f, INT64_MAX / 16, 0, 0, 0, MXM_ERR_OVERFLOW, "overflow"},
        {1, 2048, 2, 0, 0, 1, 0, 1.0f, INT64_MAX / 4096, 0, 0, 0, MXM_ERR_OVERFLOW, "overflow"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const ec *c = &cases[i];
        mxm_moe_config cfg;
        cfg_init(&cfg, c->method, c->E, c->K);
        cfg.n_group = c->n_group;
        cfg.topk_group = c->topk_group;
        cfg.profile = c->profile;
        cfg.num_threads = c->num_threads;
        cfg.routed_scaling_factor = c->S;
        for (int j = 0; j < 8 * 16; j++)
            ids[j] = POISON_ID;
        tu_poison_f32(w, 8 * 16);
        const mxm_status st =
            mxm_route(c->null_what == 1 ? NULL : &cfg, c->T, c->null_what == 2 ? NULL : z, c->ldt,
                      c->null_what == 5 ? z : NULL, c->bdt, c->null_what == 3 ? NULL : ids,
                      c->null_what == 4 ? NULL : w);
        const char *msg = mxm_last_error();
        if (st != c->want || !strstr(msg, c->msg))
            fail_msg("error case %zu: status %d (want %d), message \"%s\" (want \"%s\")", i, st,
                     c->want, msg, c->msg);
        assert_true(strlen(msg) > 0);
        for (int j = 0; j < 8 * 16; j++)
            assert_int_equal(ids[j], POISON_ID);
        /* the internal check agrees with the public entry for config errors */
        if (c->null_what == 0 && c->ldt == 0 && c->T >= 0 && c->num_threads >= 0 && c->T < 1000) {
            mxm_route_params p;
            mxm_route_params_from_config(&cfg, &p);
            assert_int_equal(mxm_route_check(&p), c->want);
        }
    }
    /* The unknown-method message lists every supported name. */
    mxm_moe_config cfg;
    cfg_init(&cfg, 42, 8, 1);
    assert_int_equal(mxm_route(&cfg, 1, z, MXM_DT_F32, NULL, 0, ids, w), MXM_ERR_INVALID_ARG);
    for (int32_t m = 0; m < MXM_ROUTE_COUNT_; m++)
        assert_non_null(strstr(mxm_last_error(), mxm_routing_method_name(m)));
    /* Valid edge cases: zero tokens, K == E == 1, a bias on a method that ignores it. */
    cfg_init(&cfg, MXM_ROUTE_DEFAULT, 8, 2);
    assert_int_equal(mxm_route(&cfg, 0, z, MXM_DT_F32, NULL, 0, ids, w), MXM_OK);
    assert_int_equal(ids[0], POISON_ID);
    cfg_init(&cfg, MXM_ROUTE_RENORMALIZE, 1, 1);
    assert_int_equal(mxm_route(&cfg, 3, z, MXM_DT_F32, NULL, 0, ids, w), MXM_OK);
    assert_int_equal(ids[0], 0);
    assert_true(w[0] == 1.0f);
    cfg_init(&cfg, MXM_ROUTE_TOPK, 8, 2);
    float zz[8] = {0, 1, 2, 3, 4, 5, 6, 7}, bb[8] = {100, 100, 100, 100, 100, 100, 100, 100};
    bb[0] = 1000;
    assert_int_equal(mxm_route(&cfg, 1, zz, MXM_DT_F32, bb, MXM_DT_F32, ids, w), MXM_OK);
    assert_int_equal(ids[0], 7);
    assert_true(w[0] == 7.0f);
}

static void test_method_names(void **state) {
    (void)state;
    const char *names[10] = {"default",           "renormalize", "deepseek_v3",    "llama4",
                             "renormalize_naive", "topk",        "sigmoid_renorm", "minimax2",
                             "sigmoid",           "topk_sigmoid"};
    for (int32_t m = 0; m < 10; m++) {
        assert_string_equal(mxm_routing_method_name(m), names[m]);
        assert_int_equal(mxm_routing_method_from_name(names[m]), m);
    }
    assert_null(mxm_routing_method_name(-1));
    assert_null(mxm_routing_method_name(10));
    assert_int_equal(mxm_routing_method_from_name("deepseek"), -1);
    assert_int_equal(mxm_routing_method_from_name(""), -1);
    assert_int_equal(mxm_routing_method_from_name(NULL), -1);
}

/* The device's warp-per-token selection (src/cuda/route_warp.cuh), its lanes run here one after
 * another: each pick is the maximum of mxm_route_lane_pick over 32 lanes, each below the last;
 * grouped, a group score per lane (mxm_route_group_score) and topk_group picks over the scores
 * decide the kept groups. Its order keys must equal the host heap's (mxm_route_select_plain /
 * _grouped) on keys with NaNs, infinities, signed zeros and ties, for E from 1 to 300. */
static uint64_t warp_pick(const float *keys, int32_t n, uint64_t below, const uint8_t *keep,
                          int32_t per) {
    uint64_t best = 0;
    for (int32_t lane = 0; lane < 32; lane++) {
        const uint64_t k = mxm_route_lane_pick(keys, n, below, keep, per, lane, 32);
        best = k > best ? k : best;
    }
    return best;
}

static void test_warp_selection_matches_heap(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const float special[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1.0f, 0.5f};
    float *key = malloc(4 * 300), *gscore = malloc(4 * 300);
    uint64_t *heap = malloc(8 * 300), *warp = malloc(8 * 300);
    uint8_t *gkeep = malloc(300), *wkeep = malloc(300);
    int cases = 0, grouped_cases = 0;
    for (int it = 0; it < 4000; it++) {
        const int32_t E = (int32_t)tu_randint(&r, 1, 300);
        const int mode =
            it %
            4; /* 0: normal, 1: ties (few distinct values), 2: specials mixed in, 3: all equal */
        for (int32_t i = 0; i < E; i++) {
            float v = (float)tu_normal(&r);
            if (mode == 1) v = (float)tu_randint(&r, -2, 2) * 0.25f;
            if (mode == 2 && tu_randint(&r, 0, 3) == 0) v = special[tu_randint(&r, 0, 6)];
            if (mode == 3) v = 0.125f;
            key[i] = v;
        }
        /* K up to 16, and every tenth case any K up to E (SPEC: 1..E) */
        const int32_t K = (int32_t)tu_randint(&r, 1, it % 10 == 9 ? E : (E < 16 ? E : 16));
        mxm_route_select_plain(key, E, K, heap);
        uint64_t below = ~0ull;
        for (int32_t j = 0; j < K; j++)
            warp[j] = below = warp_pick(key, E, below, NULL, 1);
        assert_memory_equal(warp, heap, 8 * (size_t)K);
        cases++;
        /* grouped: G divides E, the kept groups hold at least K experts */
        int32_t G = (int32_t)tu_randint(&r, 1, E < 40 ? E : 40);
        while (E % G)
            G--;
        const int32_t gs = E / G, tg = (int32_t)tu_randint(&r, 1, G);
        if (G < 2 || tg * gs < K) continue;
        mxm_route_params p;
        memset(&p, 0, sizeof p);
        p.num_experts = E, p.top_k = K, p.n_group = G, p.topk_group = tg;
        p.method = MXM_ROUTE_DEEPSEEK_V3;
        mxm_route_select_grouped(&p, key, heap, gscore, gkeep);
        for (int32_t g = 0; g < G; g++) {
            assert_true(fbits(mxm_route_group_score(key, g * gs, gs)) == fbits(gscore[g]) ||
                        (isnan(gscore[g]) && isnan(mxm_route_group_score(key, g * gs, gs))));
            wkeep[g] = 0;
        }
        below = ~0ull;
        for (int32_t j = 0; j < tg; j++) {
            below = warp_pick(gscore, G, below, NULL, 1);
            wkeep[mxm_route_order_index(below)] = 1;
        }
        assert_memory_equal(wkeep, gkeep, (size_t)G);
        below = ~0ull;
        for (int32_t j = 0; j < K; j++)
            warp[j] = below = warp_pick(key, E, below, wkeep, gs);
        assert_memory_equal(warp, heap, 8 * (size_t)K);
        grouped_cases++;
    }
    printf("warp selection: %d plain and %d grouped cases equal the heap's\n", cases,
           grouped_cases);
    assert_true(grouped_cases > 500);
    free(key), free(gscore), free(heap), free(warp), free(gkeep), free(wkeep);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_method_names),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_all_methods_random),
        cmocka_unit_test(test_large_e_many_tokens),
        cmocka_unit_test(test_ties_lower_index_wins),
        cmocka_unit_test(test_grouped_deepseek_random),
        cmocka_unit_test(test_grouped_deepseek_constructed),
        cmocka_unit_test(test_ngroup_zero_one_equivalent),
        cmocka_unit_test(test_threads_and_row_ranges),
        cmocka_unit_test(test_nan_and_inf_logits),
        cmocka_unit_test(test_warp_selection_matches_heap),
    };
    const char *filter = getenv("MXM_TEST_FILTER"); /* e.g. MXM_TEST_FILTER='test_err*' */
    if (filter) cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
