/* Number formats and quantizers (SPEC sections 2 and 7), checked against independent code in
 * this file: values from field formulas in double (ldexp/frexp), encoders by searching the
 * nearest of the finite code values in double with ties to the even mantissa, the MXFP8 block
 * quantizer from ceil/floor(log2) computed with frexp. Nothing here calls formats.h to compute
 * an expected value.
 *
 * Exhaustive where the domain allows: all 256 E4M3/E5M2/E8M0 codes, all 65,536 f16 patterns
 * (decoded), all 65,536 bf16 patterns (through the encoders, the bf16 round trip, and the MXFP8
 * quantizer in blocks of 32 with both scale rules, for the reference kernels, the SIMD kernels
 * and the public API). Random inputs are fresh each run (the seed is printed; MXM_TEST_SEED
 * replays it). */
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_kernels.h"
#include "formats/formats.h"
#include "mxmoe.h"
#include "testutil.h"

/* ---- bit helpers (test-local) ------------------------------------------------------------- */

static uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static bool same_f32(float a, float b) { /* bitwise, any NaN equals any NaN */
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    return f2u(a) == f2u(b);
}

/* ---- independent format model ------------------------------------------------------------- */

/* E4M3 ("fn") value of a code from its fields, in double; NaN for s.1111.111. */
static double e4m3_value(int c) {
    const int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
    double v;
    if (e == 15 && m == 7) return NAN;
    if (e == 0)
        v = ldexp((double)m, -9);
    else
        v = ldexp(1.0 + m / 8.0, e - 7);
    return s ? -v : v;
}

static double e5m2_value(int c) {
    const int s = c >> 7, e = (c >> 2) & 31, m = c & 3;
    double v;
    if (e == 31) {
        if (m) return NAN;
        v = INFINITY;
    } else if (e == 0) {
        v = ldexp((double)m, -16);
    } else {
        v = ldexp(1.0 + m / 4.0, e - 15);
    }
    return s ? -v : v;
}

static double e8m0_value(int b) { return b == 255 ? NAN : ldexp(1.0, b - 127); }

static double bf16_value(uint16_t h) {
    const int s = h >> 15, e = (h >> 7) & 255, m = h & 127;
    double v;
    if (e == 255) {
        if (m) return NAN;
        v = INFINITY;
    } else if (e == 0) {
        v = ldexp((double)m, -133);
    } else {
        v = ldexp(1.0 + m / 128.0, e - 127);
    }
    return s ? -v : v;
}

/* Sorted non-negative finite magnitudes of E4M3 (codes 0..0x7E) and E5M2 (codes 0..0x7B). */
static double g_e4m3_mag[127], g_e5m2_mag[124];

static void init_tables(void) {
    static int done;
    if (done) return;
    for (int c = 0; c < 127; c++) g_e4m3_mag[c] = e4m3_value(c);
    for (int c = 0; c < 124; c++) g_e5m2_mag[c] = e5m2_value(c);
    done = 1;
}

/* Nearest of mags[0..n) to v >= 0 (saturating at the top), ties to the even code (= even
 * mantissa: the code's lowest bit is the mantissa's lowest bit). */
static int nearest_code(const double *mags, int n, double v) {
    if (v >= mags[n - 1]) return n - 1;
    int lo = 0, hi = n - 1; /* first index with mags[i] >= v */
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (mags[mid] >= v)
            hi = mid;
        else
            lo = mid + 1;
    }
    if (mags[lo] == v || lo == 0) return lo;
    const double dlo = v - mags[lo - 1], dhi = mags[lo] - v;
    if (dlo < dhi) return lo - 1;
    if (dhi < dlo) return lo;
    return (lo & 1) ? lo - 1 : lo;
}

/* fp32 value (given exactly as a double) -> E4M3, RNE, saturating, NaN -> 0x7F | sign. */
static uint8_t e4m3_encode_model(double v, bool neg) {
    init_tables();
    const uint8_t s = neg ? 0x80 : 0;
    if (isnan(v)) return (uint8_t)(0x7F | s);
    return (uint8_t)(nearest_code(g_e4m3_mag, 127, fabs(v)) | s);
}
static uint8_t e4m3_model_f(float x) { return e4m3_encode_model((double)x, signbit(x) != 0); }

static uint8_t e5m2_model_f(float x) {
    init_tables();
    const uint8_t s = signbit(x) ? 0x80 : 0;
    if (isnan(x)) return (uint8_t)(0x7F | s);
    return (uint8_t)(nearest_code(g_e5m2_mag, 124, fabs((double)x)) | s);
}

/* fp32 -> bf16 RNE (overflow to Inf like IEEE), by comparing the two neighbours in double. */
static uint16_t bf16_model(float x) {
    const uint32_t u = f2u(x);
    if (isnan(x)) return 0; /* not used for NaN */
    const uint32_t t = u & 0xFFFF0000u, sign = u & 0x80000000u;
    if (t == u) return (uint16_t)(t >> 16);
    const uint32_t mag = t & 0x7FFFFFFFu;
    const double lo = fabs((double)u2f(mag)), v = fabs((double)x);
    const double hi = (mag + 0x10000u == 0x7F800000u) ? ldexp(1.0, 128) : (double)u2f(mag + 0x10000u);
    uint32_t r;
    if (v - lo < hi - v)
        r = mag;
    else if (hi - v < v - lo)
        r = mag + 0x10000u;
    else
        r = (mag & 0x10000u) ? mag + 0x10000u : mag;
    return (uint16_t)((r | sign) >> 16);
}

/* MXFP8 scale byte of a finite amax >= 0 (SPEC 2.2), from frexp. */
static int scale_model(float amax, int rule) {
    if (amax == 0.0f) return 0;
    int e, b;
    if (rule == MXM_SCALE_FLOOR) {
        (void)frexp((double)amax, &e); /* amax = f * 2^e, f in [0.5, 1): floor(log2) = e - 1 */
        b = e - 1 - 8 + 127;
    } else {
        const float inv448 = (float)(1.0 / 448.0);
        const float d = (float)((double)amax * (double)inv448); /* exact product, one rounding */
        if (d == 0.0f) return 0;
        const double f = frexp((double)d, &e);
        b = (f == 0.5 ? e - 1 : e) + 127; /* ceil(log2(d)) + 127 */
    }
    return b < 0 ? 0 : (b > 254 ? 254 : b);
}

/* One 32-block, the SPEC 2.2 way, in double. */
static void block_model(const float *x, uint8_t *q, uint8_t *s, int rule) {
    double amax = 0;
    bool special = false;
    for (int i = 0; i < 32; i++) {
        if (isnan(x[i]) || isinf(x[i])) special = true;
        if (fabs((double)x[i]) > amax) amax = fabs((double)x[i]);
    }
    if (special) {
        *s = 0xFF;
        memset(q, 0x7F, 32);
        return;
    }
    const int b = scale_model((float)amax, rule);
    *s = (uint8_t)b;
    for (int i = 0; i < 32; i++) {
        const bool neg = signbit(x[i]) != 0;
        if (b == 0)
            q[i] = neg ? 0x80 : 0x00;
        else
            q[i] = e4m3_encode_model(ldexp((double)x[i], 127 - b), neg);
    }
}

static void quantize_model(const float *x, int64_t n, uint8_t *q, uint8_t *s, int rule) {
    for (int64_t b = 0; b < n / 32; b++) block_model(x + b * 32, q + b * 32, s + b, rule);
}

/* fp32(e4m3(q) * 2^(b-127)): the product is exact in double, one rounding to fp32. */
static float dequant_model(uint8_t q, uint8_t s) { return (float)(e4m3_value(q) * e8m0_value(s)); }

/* ---- checking helpers ---------------------------------------------------------------------- */

static void check_codes(const uint8_t *got, const uint8_t *exp, int64_t n, const float *x,
                        const char *what) {
    for (int64_t i = 0; i < n; i++)
        if (got[i] != exp[i])
            fail_msg("%s: element %lld: x=%a code 0x%02x, expected 0x%02x", what, (long long)i,
                     x ? (double)x[i] : 0.0, got[i], exp[i]);
}

static void check_scales(const uint8_t *got, const uint8_t *exp, int64_t nb, const float *x,
                         const char *what) {
    for (int64_t b = 0; b < nb; b++)
        if (got[b] != exp[b]) {
            double amax = 0;
            if (x)
                for (int i = 0; i < 32; i++) amax = fmax(amax, fabs((double)x[b * 32 + i]));
            fail_msg("%s: block %lld: amax=%a scale %u, expected %u", what, (long long)b, amax,
                     got[b], exp[b]);
        }
}

static void check_f32(const float *got, const float *exp, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++)
        if (!same_f32(got[i], exp[i]))
            fail_msg("%s: element %lld: %a (0x%08x), expected %a (0x%08x)", what, (long long)i,
                     (double)got[i], f2u(got[i]), (double)exp[i], f2u(exp[i]));
}

/* Bit for bit, NaN payloads included (SIMD kernels vs the reference kernels). */
static void check_f32_bits(const float *got, const float *exp, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++)
        if (f2u(got[i]) != f2u(exp[i]))
            fail_msg("%s: element %lld: %a (0x%08x), expected %a (0x%08x)", what, (long long)i,
                     (double)got[i], f2u(got[i]), (double)exp[i], f2u(exp[i]));
}

/* ---- scalar formats: every code ------------------------------------------------------------ */

static void test_e4m3_all_codes(void **state) {
    (void)state;
    for (int c = 0; c < 256; c++) {
        const double v = e4m3_value(c);
        const float d = mxm_e4m3_to_f32((uint8_t)c);
        if (isnan(v)) {
            assert_true(isnan(d));
            assert_int_equal(mxm_e4m3_from_f32(d), c); /* NaN keeps its sign: 0x7F / 0xFF */
            continue;
        }
        if (f2u(d) != f2u((float)v)) fail_msg("E4M3 0x%02x decodes to %a, expected %a", c, (double)d, v);
        assert_int_equal(mxm_e4m3_from_f32(d), c); /* encode(decode(c)) == c, -0 included */
        assert_int_equal(e4m3_model_f(d), c);      /* the model agrees with itself */
    }
    /* the table itself: 448 max, 2^-6 min normal, 2^-9 subnormal step */
    assert_true(e4m3_value(0x7E) == 448.0 && e4m3_value(0x08) == ldexp(1, -6));
    assert_true(e4m3_value(0x01) == ldexp(1, -9) && e4m3_value(0xFE) == -448.0);
    assert_true(isnan(mxm_e4m3_to_f32(0x7F)) && isnan(mxm_e4m3_to_f32(0xFF)));
    /* saturation and specials of the encoder */
    assert_int_equal(mxm_e4m3_from_f32(INFINITY), 0x7E);
    assert_int_equal(mxm_e4m3_from_f32(-INFINITY), 0xFE);
    assert_int_equal(mxm_e4m3_from_f32(FLT_MAX), 0x7E);
    assert_int_equal(mxm_e4m3_from_f32(464.0f), 0x7E);  /* would round to 480: saturates */
    assert_int_equal(mxm_e4m3_from_f32(1e30f), 0x7E);
    assert_int_equal(mxm_e4m3_from_f32(NAN), 0x7F);
    assert_int_equal(mxm_e4m3_from_f32(-NAN), 0xFF);
    assert_int_equal(mxm_e4m3_from_f32(-0.0f), 0x80);
    assert_int_equal(mxm_e4m3_from_f32(-1e-30f), 0x80); /* underflow keeps the sign */
}

static void test_e5m2_all_codes(void **state) {
    (void)state;
    for (int c = 0; c < 256; c++) {
        const double v = e5m2_value(c);
        const float d = mxm_e5m2_to_f32((uint8_t)c);
        if (isnan(v)) {
            assert_true(isnan(d));
            assert_int_equal(mxm_e5m2_from_f32(d), 0x7F | (c & 0x80));
            continue;
        }
        if (f2u(d) != f2u((float)v)) fail_msg("E5M2 0x%02x decodes to %a, expected %a", c, (double)d, v);
        if (isinf(v)) { /* +-Inf saturate to the largest finite value */
            assert_int_equal(mxm_e5m2_from_f32(d), (c & 0x80) | 0x7B);
            continue;
        }
        assert_int_equal(mxm_e5m2_from_f32(d), c);
        assert_int_equal(e5m2_model_f(d), c);
    }
    assert_true(e5m2_value(0x7B) == 57344.0 && e5m2_value(0x01) == ldexp(1, -16));
    assert_int_equal(mxm_e5m2_from_f32(61440.0f), 0x7B); /* would round to Inf: saturates */
    assert_int_equal(mxm_e5m2_from_f32(-1e30f), 0xFB);
}

static void test_e8m0_all_codes(void **state) {
    (void)state;
    for (int b = 0; b < 256; b++) {
        const float d = mxm_e8m0_to_f32((uint8_t)b);
        if (b == 255) {
            assert_true(isnan(d));
            continue;
        }
        if ((double)d != e8m0_value(b) || f2u(d) != f2u((float)e8m0_value(b)))
            fail_msg("E8M0 %d decodes to %a, expected 2^%d", b, (double)d, b - 127);
    }
    assert_true(mxm_e8m0_to_f32(0) == ldexpf(1.0f, -127)); /* an fp32 subnormal, not 0 */
}

/* ---- every bf16 pattern -------------------------------------------------------------------- */

static void test_all_bf16_patterns(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        const float x = mxm_bf16_to_f32((uint16_t)h);
        const double v = bf16_value((uint16_t)h);
        if (isnan(v)) {
            assert_true(isnan(x));
            assert_true(isnan(mxm_bf16_to_f32(mxm_bf16_from_f32(x)))); /* NaN stays NaN */
        } else {
            if (f2u(x) != f2u((float)v)) fail_msg("bf16 0x%04x -> %a, expected %a", h, (double)x, v);
            assert_int_equal(mxm_bf16_from_f32(x), h); /* exact round trip */
        }
        const uint8_t e4 = mxm_e4m3_from_f32(x), e4m = e4m3_model_f(x);
        if (e4 != e4m) fail_msg("E4M3(bf16 0x%04x = %a) = 0x%02x, expected 0x%02x", h, (double)x, e4, e4m);
        const uint8_t e5 = mxm_e5m2_from_f32(x), e5m = e5m2_model_f(x);
        if (e5 != e5m) fail_msg("E5M2(bf16 0x%04x = %a) = 0x%02x, expected 0x%02x", h, (double)x, e5, e5m);
    }
}

/* ---- every f16 pattern (checkpoint loading and quantization widen F16 with mxm_f16_decode) -- */

static void test_all_f16_patterns(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        const float x = mxm_f16_decode((uint16_t)h);
        const int e = (int)(h >> 10) & 31, m = (int)h & 1023;
        const double sign = (h & 0x8000u) ? -1.0 : 1.0;
        if (e == 31) { /* Inf (m == 0) or NaN with its payload in the top mantissa bits */
            const uint32_t want = ((h & 0x8000u) << 16) | 0x7F800000u | ((uint32_t)m << 13);
            if (f2u(x) != want) fail_msg("f16 0x%04x -> 0x%08x, expected 0x%08x", h, f2u(x), want);
            continue;
        }
        const double v = sign * (e ? ldexp(1024 + m, e - 25) : ldexp(m, -24));
        if (f2u(x) != f2u((float)v)) fail_msg("f16 0x%04x -> %a, expected %a", h, (double)x, v);
    }
}

/* fp32 -> bf16 RNE and fp32 -> E4M3 on random fp32 patterns and on exact ties. */
static void test_random_f32_encoders(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    for (int i = 0; i < 400000; i++) {
        uint32_t u = (uint32_t)tu_next(&r);
        if (i & 1) u = (u & 0x80000000u) | (((u >> 23) % 40 + 100) << 23) | (u & 0x7FFFFF); /* E4M3 range */
        if (i % 7 == 0) u &= 0xFFF00000u | 0x00080000u;  /* E4M3 ties: mantissa ...1000.. */
        if (i % 11 == 0) u = (u & 0xFFFF0000u) | 0x8000u; /* bf16 ties */
        const float x = u2f(u);
        if (isnan(x)) continue;
        const uint16_t hb = mxm_bf16_from_f32(x), hm = bf16_model(x);
        if (hb != hm) fail_msg("bf16(%a) = 0x%04x, expected 0x%04x", (double)x, hb, hm);
        const uint8_t e4 = mxm_e4m3_from_f32(x), e4m = e4m3_model_f(x);
        if (e4 != e4m) fail_msg("E4M3(%a) = 0x%02x, expected 0x%02x", (double)x, e4, e4m);
        const uint8_t e5 = mxm_e5m2_from_f32(x), e5m = e5m2_model_f(x);
        if (e5 != e5m) fail_msg("E5M2(%a) = 0x%02x, expected 0x%02x", (double)x, e5, e5m);
    }
    /* bf16 overflow and ties */
    assert_int_equal(mxm_bf16_from_f32(FLT_MAX), 0x7F80);           /* rounds to Inf */
    assert_int_equal(mxm_bf16_from_f32(u2f(0x3F808000u)), 0x3F80);  /* tie, even stays */
    assert_int_equal(mxm_bf16_from_f32(u2f(0x3F818000u)), 0x3F82);  /* tie, odd goes up */
    /* E4M3 ties to even: 17/16 -> 1, 19/16 -> 1.25, 7.5 * 2^-9 -> 2^-6 (code 8) */
    assert_int_equal(mxm_e4m3_from_f32(17.0f / 16), 0x38);
    assert_int_equal(mxm_e4m3_from_f32(19.0f / 16), 0x3A);
    assert_int_equal(mxm_e4m3_from_f32(ldexpf(7.5f, -9)), 0x08);
    assert_int_equal(mxm_e4m3_from_f32(ldexpf(0.5f, -9)), 0x00);
    assert_int_equal(mxm_e4m3_from_f32(ldexpf(1.5f, -9)), 0x02);
    assert_int_equal(mxm_e4m3_from_f32(ldexpf(2.5f, -9)), 0x02);
    assert_int_equal(mxm_e4m3_from_f32(nextafterf(ldexpf(0.5f, -9), 1)), 0x01);
}

/* ---- MXFP8 scale rule ---------------------------------------------------------------------- */

static void test_scale_rule(void **state) {
    (void)state;
    /* the literal used by the library equals fp32(1/448) */
    assert_true(0.002232142857142857f == (float)(1.0 / 448.0));
    tu_rng r = tu_rng_fresh();
    for (int i = 0; i < 300000; i++) {
        uint32_t u = (uint32_t)tu_next(&r) & 0x7FFFFFFFu;
        if (i % 3 == 0) u &= 0xFFFF0000u;           /* bf16-like */
        if (i % 5 == 0) u = (u & 0x7F800000u) | 0x600000u; /* significand 1.75 exactly */
        if (u >= 0x7F800000u) continue;
        const float a = u2f(u);
        for (int rule = 0; rule < 2; rule++)
            if (mxm_mxfp8_scale_for_amax(a, rule) != scale_model(a, rule))
                fail_msg("scale(%a, rule %d) = %u, expected %d", (double)a, rule,
                         mxm_mxfp8_scale_for_amax(a, rule), scale_model(a, rule));
    }
    /* amax a power of two, 448 * 2^k, and their neighbours, over the whole exponent range */
    for (int k = -149; k <= 127; k++) {
        const float p = ldexpf(1.0f, k);
        const float cands[] = {p, nextafterf(p, 0), nextafterf(p, INFINITY), 448.0f * p,
                               nextafterf(448.0f * p, 0), nextafterf(448.0f * p, INFINITY),
                               1.75f * p, nextafterf(1.75f * p, INFINITY), 1.8f * p, 1.99f * p};
        for (size_t j = 0; j < sizeof cands / sizeof cands[0]; j++) {
            const float a = cands[j];
            if (!(a <= FLT_MAX) || a == 0.0f) continue;
            for (int rule = 0; rule < 2; rule++)
                if (mxm_mxfp8_scale_for_amax(a, rule) != scale_model(a, rule))
                    fail_msg("scale(%a, rule %d) = %u, expected %d", (double)a, rule,
                             mxm_mxfp8_scale_for_amax(a, rule), scale_model(a, rule));
        }
    }
    /* fixed points: 448 -> 2^0 (b 127) in both rules; 449 needs 2^1 with RCEIL */
    assert_int_equal(mxm_mxfp8_scale_for_amax(448.0f, MXM_SCALE_RCEIL), 127);
    assert_int_equal(mxm_mxfp8_scale_for_amax(448.0f, MXM_SCALE_FLOOR), 127);
    assert_int_equal(mxm_mxfp8_scale_for_amax(449.0f, MXM_SCALE_RCEIL), 128);
    assert_int_equal(mxm_mxfp8_scale_for_amax(480.0f, MXM_SCALE_FLOOR), 127); /* saturates */
    assert_int_equal(mxm_mxfp8_scale_for_amax(1.0f, MXM_SCALE_RCEIL), 119);   /* 2^-8 * 448 >= 1 */
    assert_int_equal(mxm_mxfp8_scale_for_amax(1.0f, MXM_SCALE_FLOOR), 119);
    assert_int_equal(mxm_mxfp8_scale_for_amax(FLT_MAX, MXM_SCALE_RCEIL), 247);
    assert_int_equal(mxm_mxfp8_scale_for_amax(FLT_MAX, MXM_SCALE_FLOOR), 246);
    assert_int_equal(mxm_mxfp8_scale_for_amax(0.0f, MXM_SCALE_RCEIL), 0);
    assert_int_equal(mxm_mxfp8_scale_for_amax(0.0f, MXM_SCALE_FLOOR), 0);
    assert_int_equal(mxm_mxfp8_scale_for_amax(NAN, MXM_SCALE_RCEIL), 255);
    assert_int_equal(mxm_mxfp8_scale_for_amax(INFINITY, MXM_SCALE_FLOOR), 255);
    /* RCEIL and FLOOR differ exactly when amax's significand is above 1.75 (normal amax, no
     * clamping): checked on every positive finite bf16 pattern */
    for (uint32_t h = 0x0080; h < 0x7F80; h++) {
        const float a = u2f(h << 16);
        const int fl = scale_model(a, MXM_SCALE_FLOOR), rc = scale_model(a, MXM_SCALE_RCEIL);
        if (fl == 0 || rc == 0) continue;
        const bool above = (h & 0x7F) > 0x60; /* significand 1.m > 1.75 */
        if ((fl != rc) != above || (above && rc != fl + 1))
            fail_msg("amax %a: FLOOR %d, RCEIL %d", (double)a, fl, rc);
    }
}

/* ---- MXFP8 quantizer: exhaustive over bf16, edges, SIMD vs reference ----------------------- */

/* Runs every implementation (reference kernels, dispatched kernels, public API f32 and bf16
 * when the input is bf16-exact) on x [n] and compares with the model. */
static void check_quantizer_all(const float *x, int64_t n, int rule, bool bf16_exact,
                                const char *what) {
    uint8_t *qe = tu_alloc((size_t)n), *se = tu_alloc((size_t)n / 32);
    uint8_t *q = tu_alloc((size_t)n), *s = tu_alloc((size_t)n / 32);
    uint16_t *xb = tu_alloc((size_t)n * 2);
    char msg[256];
    quantize_model(x, n, qe, se, rule);
    const mxm_cpu_kernels *ks[16];
    const int nks = mxm_cpu_kernel_sets(ks, 16); /* every set this CPU runs, ref first */
    for (int64_t i = 0; i < n; i++) xb[i] = (uint16_t)(f2u(x[i]) >> 16);
    for (int k = 0; k < nks; k++) {
        tu_poison_u8(q, n);
        tu_poison_u8(s, n / 32);
        ks[k]->mx_quantize_f32(x, n, q, s, rule);
        snprintf(msg, sizeof msg, "%s: %s mx_quantize_f32 rule %d", what, ks[k]->name, rule);
        check_scales(s, se, n / 32, x, msg);
        check_codes(q, qe, n, x, msg);
        if (bf16_exact) {
            tu_poison_u8(q, n);
            tu_poison_u8(s, n / 32);
            ks[k]->mx_quantize_bf16(xb, n, q, s, rule);
            snprintf(msg, sizeof msg, "%s: %s mx_quantize_bf16 rule %d", what, ks[k]->name, rule);
            check_scales(s, se, n / 32, x, msg);
            check_codes(q, qe, n, x, msg);
        }
    }
    for (int dt = 0; dt < (bf16_exact ? 2 : 1); dt++) {
        tu_poison_u8(q, n);
        tu_poison_u8(s, n / 32);
        assert_int_equal(mxm_mxfp8_quantize(dt ? (const void *)xb : (const void *)x,
                                            dt ? MXM_DT_BF16 : MXM_DT_F32, 1, n, 0, q, s, rule, 1),
                         MXM_OK);
        snprintf(msg, sizeof msg, "%s: mxm_mxfp8_quantize %s rule %d", what, dt ? "bf16" : "f32", rule);
        check_scales(s, se, n / 32, x, msg);
        check_codes(q, qe, n, x, msg);
    }
    /* dequantize and fake-quantize against the model */
    float *de = tu_alloc((size_t)n * 4), *d = tu_alloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) de[i] = dequant_model(qe[i], se[i / 32]);
    for (int k = 0; k < nks; k++) {
        tu_poison_f32(d, n);
        ks[k]->mx_dequantize_f32(qe, se, n, d);
        snprintf(msg, sizeof msg, "%s: %s mx_dequantize_f32", what, ks[k]->name);
        check_f32(d, de, n, msg);
        tu_poison_f32(d, n);
        ks[k]->mx_fakequant_f32(x, n, d, rule);
        snprintf(msg, sizeof msg, "%s: %s mx_fakequant_f32 rule %d", what, ks[k]->name, rule);
        check_f32(d, de, n, msg);
    }
    free(qe), free(se), free(q), free(s), free(xb), free(de), free(d);
}

static void test_quantizer_all_bf16(void **state) {
    (void)state;
    const int64_t n = 65536;
    float *x = tu_alloc(n * 4);
    /* natural order: blocks of neighbouring patterns */
    for (int64_t i = 0; i < n; i++) x[i] = mxm_bf16_to_f32((uint16_t)i);
    for (int rule = 0; rule < 2; rule++) check_quantizer_all(x, n, rule, true, "all bf16, in order");
    /* every finite pattern, shuffled twice: blocks mixing magnitudes */
    tu_rng r = tu_rng_fresh();
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++)
        if ((i & 0x7F80) != 0x7F80) x[m++] = mxm_bf16_to_f32((uint16_t)i);
    for (int pass = 0; pass < 2; pass++) {
        for (int64_t i = m - 1; i > 0; i--) {
            const int64_t j = tu_randint(&r, 0, i);
            const float t = x[i];
            x[i] = x[j];
            x[j] = t;
        }
        const int64_t mm = m & ~(int64_t)31;
        for (int rule = 0; rule < 2; rule++) check_quantizer_all(x, mm, rule, true, "all finite bf16, shuffled");
    }
    free(x);
}

/* A block: amax a (at element 0, sign s0), the rest filled by fill(i). */
static void make_block(float *b, float amax, float (*fill)(int, float), float arg) {
    for (int i = 0; i < 32; i++) b[i] = fill ? fill(i, arg) : 0.0f;
    b[0] = amax;
}
static float fill_fraction(int i, float amax) { /* amax * (i/37) with alternating signs */
    return (i & 1 ? -1.0f : 1.0f) * amax * (float)i / 37.0f;
}
static float fill_tiny(int i, float unit) { return (float)(i - 16) * unit; }

static void test_quantizer_edges(void **state) {
    (void)state;
    enum { NB = 4096 };
    float *x = tu_alloc(NB * 32 * sizeof(float));
    int nb = 0;
    float *b;
#define NEXT() (assert_true(nb < NB), b = x + 32 * nb++)
    for (int k = -149; k <= 127; k++) {
        const float p = ldexpf(1.0f, k);
        const float amaxes[] = {p, nextafterf(p, 0), nextafterf(p, INFINITY), 448.0f * p,
                                nextafterf(448.0f * p, 0), nextafterf(448.0f * p, INFINITY),
                                1.75f * p, nextafterf(1.75f * p, INFINITY), 1.8f * p,
                                nextafterf(2.0f * p, 0)};
        for (size_t j = 0; j < sizeof amaxes / sizeof amaxes[0]; j++) {
            if (!(amaxes[j] <= FLT_MAX) || amaxes[j] == 0.0f) continue;
            NEXT();
            make_block(b, amaxes[j], fill_fraction, amaxes[j]);
            if (k & 1) b[0] = -b[0];
        }
    }
    /* all zero, all -0, -0 among values */
    NEXT();
    make_block(b, 0.0f, NULL, 0);
    NEXT();
    for (int i = 0; i < 32; i++) b[i] = -0.0f;
    NEXT();
    make_block(b, 3.0f, fill_fraction, 3.0f);
    b[5] = -0.0f;
    b[6] = 0.0f;
    /* NaN, +Inf, -Inf (first, middle, last position) */
    const float specials[] = {NAN, -NAN, INFINITY, -INFINITY};
    for (int j = 0; j < 4; j++)
        for (int pos = 0; pos < 32; pos += 15) {
            NEXT();
            make_block(b, 1.0f, fill_fraction, 1.0f);
            b[pos] = specials[j];
        }
    /* underflow after scaling: amax 448 (scale 2^0 .. 2^1) with elements around 2^-10 */
    NEXT();
    make_block(b, 256.0f, fill_tiny, ldexpf(1.0f, -12));
    NEXT();
    make_block(b, 448.0f, fill_tiny, ldexpf(1.0f, -11));
    NEXT();
    make_block(b, 256.0f, NULL, 0); /* exact ties at scale 2^0 */
    const float ties[] = {ldexpf(0.5f, -9), ldexpf(1.5f, -9), ldexpf(2.5f, -9), ldexpf(7.5f, -9),
                          17.0f / 16, 19.0f / 16, 17.0f / 8, 232.0f, 240.0f, 248.0f,
                          nextafterf(ldexpf(0.5f, -9), 1), nextafterf(ldexpf(0.5f, -9), 0),
                          ldexpf(1.0f, -10), ldexpf(3.0f, -11), ldexpf(1.0f, -30), 1e-40f};
    for (size_t j = 0; j < sizeof ties / sizeof ties[0]; j++) {
        b[1 + j] = ties[j];
        b[17 + (j % 15)] = -ties[j];
    }
    NEXT(); /* the same ties at a large scale: amax 2^100, ties scaled by 2^(100-8) */
    for (int i = 0; i < 32; i++) b[i] = ldexpf(x[32 * (nb - 2) + i], 92);
    /* amax at FLT_MAX, and near it */
    NEXT();
    make_block(b, FLT_MAX, fill_fraction, FLT_MAX);
    NEXT();
    make_block(b, -FLT_MAX, fill_tiny, ldexpf(1.0f, 100));
    NEXT();
    make_block(b, nextafterf(FLT_MAX, 0), fill_fraction, 1e38f);
    /* subnormal inputs: all subnormal (flushed), and subnormals under the smallest scales */
    NEXT();
    make_block(b, ldexpf(1.0f, -130), fill_tiny, ldexpf(1.0f, -149));
    NEXT();
    make_block(b, ldexpf(1.75f, -118), fill_tiny, ldexpf(1.0f, -131)); /* b = 1 with RCEIL */
    NEXT();
    make_block(b, nextafterf(ldexpf(1.75f, -119), INFINITY), fill_tiny, ldexpf(1.0f, -140));
    NEXT();
    make_block(b, ldexpf(1.75f, -119), fill_tiny, ldexpf(1.0f, -140)); /* d = 2^-127: flushed */
    NEXT();
    make_block(b, ldexpf(1.0f, -117), fill_tiny, ldexpf(0.9f, -130)); /* FLOOR b = 2 */
    NEXT();
    make_block(b, FLT_MIN, fill_tiny, ldexpf(1.0f, -145));
    NEXT();
    make_block(b, ldexpf(1.0f, -118), fill_tiny, ldexpf(1.0f, -133)); /* FLOOR: first non-flushed */
    /* significand above 1.75: FLOOR saturates, RCEIL goes one scale up */
    NEXT();
    for (int i = 0; i < 32; i++) b[i] = (i & 1 ? -1 : 1) * ldexpf(1.75f + i / 128.0f, i - 16);
    NEXT();
    for (int i = 0; i < 32; i++) b[i] = ldexpf(1.999f, 3) - (float)i;
#undef NEXT
    for (int rule = 0; rule < 2; rule++) check_quantizer_all(x, (int64_t)nb * 32, rule, false, "edges");

    /* spot checks that do not rely on the model */
    uint8_t q[32], s;
    const mxm_cpu_kernels *ks[16];
    const int nks = mxm_cpu_kernel_sets(ks, 16);
    for (int k = 0; k < nks; k++) {
        float blk[32];
        make_block(blk, 256.0f, NULL, 0);
        blk[1] = 17.0f / 16;
        blk[2] = -19.0f / 16;
        blk[3] = ldexpf(7.5f, -9);
        blk[4] = -0.0f;
        blk[5] = ldexpf(0.5f, -9);
        ks[k]->mx_quantize_f32(blk, 32, q, &s, MXM_SCALE_RCEIL);
        assert_int_equal(s, 127);
        assert_int_equal(q[0], 0x78); /* 256 = 2^8: e 15, m 0 */
        assert_int_equal(q[1], 0x38);
        assert_int_equal(q[2], 0xBA);
        assert_int_equal(q[3], 0x08);
        assert_int_equal(q[4], 0x80);
        assert_int_equal(q[5], 0x00);
        blk[7] = NAN;
        ks[k]->mx_quantize_f32(blk, 32, q, &s, MXM_SCALE_FLOOR);
        assert_int_equal(s, 0xFF);
        for (int i = 0; i < 32; i++) assert_int_equal(q[i], 0x7F);
        for (int i = 0; i < 32; i++) blk[i] = i & 1 ? -1e-40f : 1e-40f;
        ks[k]->mx_quantize_f32(blk, 32, q, &s, MXM_SCALE_RCEIL);
        assert_int_equal(s, 0);
        for (int i = 0; i < 32; i++) assert_int_equal(q[i], i & 1 ? 0x80 : 0x00);
    }
    free(x);
}

/* SIMD vs reference on random block-scaled data with odd lengths and sprinkled specials. */
static void sprinkle(tu_rng *r, float *x, int64_t n) {
    const float sp[] = {NAN, INFINITY, -INFINITY, -0.0f, 0.0f, FLT_MAX, -FLT_MAX, 1e-40f,
                        -1e-45f, FLT_MIN, 448.0f, 464.0f};
    const int64_t count = n / 97 + 1;
    for (int64_t i = 0; i < count; i++) x[tu_randint(r, 0, n - 1)] = sp[tu_randint(r, 0, 11)];
    /* a few whole blocks: zero, tiny, huge */
    for (int j = 0; j < 3 && n >= 32; j++) {
        const int64_t b = tu_randint(r, 0, n / 32 - 1) * 32;
        const float f = j == 0 ? 0.0f : (j == 1 ? 1e-42f : 3e38f);
        for (int i = 0; i < 32; i++) x[b + i] = f * (float)tu_normal(r);
    }
}

static void simd_vs_ref(const mxm_cpu_kernels *opt) {
    const mxm_cpu_kernels *ref = mxm_cpu_kernels_get(true);
    tu_rng r = tu_rng_fresh();
    const int64_t max_n = 32 * 1031 + 1;
    float *xa = tu_alloc((size_t)(max_n + 8) * 4), *d1 = tu_alloc((size_t)max_n * 4),
          *d2 = tu_alloc((size_t)max_n * 4);
    uint16_t *xba = tu_alloc((size_t)(max_n + 8) * 2);
    uint8_t *q1 = tu_alloc((size_t)max_n), *q2 = tu_alloc((size_t)max_n);
    uint8_t *s1 = tu_alloc((size_t)max_n / 32 + 1), *s2 = tu_alloc((size_t)max_n / 32 + 1);
    for (int iter = 0; iter < 160; iter++) {
        const int64_t nb = iter < 80 ? iter + 1 : tu_randint(&r, 1, 1031);
        const int64_t n = nb * 32;
        const int off = (int)tu_randint(&r, 0, 7); /* unaligned starts */
        float *x = xa + off;
        uint16_t *xb = xba + off;
        tu_fill_blockscaled_f32(&r, x, n, 20, 20);
        if (iter % 4 == 1) /* extreme scales too */
            for (int64_t b = 0; b < n; b += 32) {
                const int e = (int)tu_randint(&r, -140, 120);
                for (int i = 0; i < 32; i++) x[b + i] = ldexpf(x[b + i], e);
            }
        if (iter % 2 == 0) sprinkle(&r, x, n);
        for (int64_t i = 0; i < n; i++) xb[i] = (uint16_t)tu_next(&r); /* any pattern */
        for (int rule = 0; rule < 2; rule++) {
            char msg[128];
            tu_poison_u8(q1, n), tu_poison_u8(q2, n), tu_poison_u8(s1, nb), tu_poison_u8(s2, nb);
            ref->mx_quantize_f32(x, n, q1, s1, rule);
            opt->mx_quantize_f32(x, n, q2, s2, rule);
            snprintf(msg, sizeof msg, "%s vs ref quantize_f32 n=%lld rule %d", opt->name, (long long)n, rule);
            check_scales(s2, s1, nb, x, msg);
            check_codes(q2, q1, n, x, msg);
            ref->mx_quantize_bf16(xb, n, q1, s1, rule);
            opt->mx_quantize_bf16(xb, n, q2, s2, rule);
            snprintf(msg, sizeof msg, "%s vs ref quantize_bf16 n=%lld rule %d", opt->name, (long long)n, rule);
            check_scales(s2, s1, nb, NULL, msg);
            check_codes(q2, q1, n, NULL, msg);
            tu_poison_f32(d1, n), tu_poison_f32(d2, n);
            ref->mx_fakequant_f32(x, n, d1, rule);
            memcpy(d2, x, (size_t)n * 4); /* in place */
            opt->mx_fakequant_f32(d2, n, d2, rule);
            snprintf(msg, sizeof msg, "%s vs ref fakequant n=%lld rule %d", opt->name, (long long)n, rule);
            check_f32_bits(d2, d1, n, msg);
        }
        /* dequantize random codes and scales (all 256 of each, NaN ones included), odd n */
        const int64_t dn = n - (iter % 3 == 2 ? tu_randint(&r, 1, 31) : 0);
        for (int64_t i = 0; i < n; i++) q1[i] = (uint8_t)tu_next(&r);
        for (int64_t b = 0; b < nb; b++) {
            const int64_t t = tu_randint(&r, 0, 9);
            s1[b] = (uint8_t)(t == 0 ? 0 : t == 1 ? 254 : t == 2 ? 255 : t == 3 ? 1 : tu_next(&r));
        }
        if (iter % 5 == 0) /* blocks without NaN codes (the fast path) */
            for (int64_t i = 0; i < n; i++)
                if ((q1[i] & 0x7F) == 0x7F) q1[i] ^= 1;
        tu_poison_f32(d1, n), tu_poison_f32(d2, n);
        ref->mx_dequantize_f32(q1, s1, dn, d1);
        opt->mx_dequantize_f32(q1, s1, dn, d2);
        check_f32_bits(d2, d1, n, "simd vs ref dequantize");
        for (int64_t i = 0; i < dn; i++) d1[i] = dequant_model(q1[i], s1[i / 32]);
        check_f32(d2, d1, dn, "simd dequantize vs model");
    }
    free(xa), free(d1), free(d2), free(xba), free(q1), free(q2), free(s1), free(s2);
}

/* Every SIMD set this CPU runs (cpu_isa.def), each against the reference. */
static void test_simd_vs_ref(void **state) {
    (void)state;
    const mxm_cpu_kernels *ks[16];
    const int nks = mxm_cpu_kernel_sets(ks, 16);
    if (nks == 1) fprintf(stderr, "[note] this CPU runs only the reference kernels\n");
    for (int k = 1; k < nks; k++) {
        simd_vs_ref(ks[k]);
        printf("%s quantize/dequantize/fakequant vs ref: PASS\n", ks[k]->name);
    }
}

/* ---- public tensor API --------------------------------------------------------------------- */

static void test_mxfp8_api(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const int64_t shapes[][3] = {{1, 32, 0}, {3, 96, 100}, {17, 2080, 2081}, {129, 544, 544},
                                 {300, 256, 300}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int64_t rows = shapes[si][0], cols = shapes[si][1], stride = shapes[si][2];
        const int64_t ld = stride ? stride : cols, n = rows * cols, nb = n / 32;
        float *x = tu_alloc((size_t)(rows * ld) * 4);
        uint16_t *xb = tu_alloc((size_t)(rows * ld) * 2);
        tu_fill_blockscaled_f32(&r, x, rows * ld, 20, 20);
        sprinkle(&r, x, rows * ld);
        for (int64_t i = 0; i < rows * ld; i++) xb[i] = (uint16_t)(f2u(x[i]) >> 16);
        float *xd = tu_alloc((size_t)n * 4), *xbd = tu_alloc((size_t)n * 4);
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++) {
                xd[i * cols + j] = x[i * ld + j];
                xbd[i * cols + j] = mxm_bf16_to_f32(xb[i * ld + j]);
            }
        uint8_t *qe = tu_alloc((size_t)n), *se = tu_alloc((size_t)nb), *q = tu_alloc((size_t)n),
                *s = tu_alloc((size_t)nb);
        float *out = tu_alloc((size_t)n * 4), *oute = tu_alloc((size_t)n * 4);
        uint16_t *outb = tu_alloc((size_t)n * 2);
        for (int dt = 0; dt < 2; dt++)
            for (int rule = 0; rule < 2; rule++)
                for (int threads = 1; threads <= 2; threads++) {
                    char msg[160];
                    snprintf(msg, sizeof msg, "mxm_mxfp8_quantize [%lld,%lld] stride %lld %s rule %d %d thr",
                             (long long)rows, (long long)cols, (long long)stride, dt ? "bf16" : "f32",
                             rule, threads);
                    quantize_model(dt ? xbd : xd, n, qe, se, rule);
                    tu_poison_u8(q, n), tu_poison_u8(s, nb);
                    assert_int_equal(mxm_mxfp8_quantize(dt ? (const void *)xb : (const void *)x,
                                                        dt ? MXM_DT_BF16 : MXM_DT_F32, rows, cols,
                                                        stride, q, s, rule, threads),
                                     MXM_OK);
                    check_scales(s, se, nb, dt ? xbd : xd, msg);
                    check_codes(q, qe, n, dt ? xbd : xd, msg);
                    /* dequantize, f32 and bf16 out */
                    for (int64_t i = 0; i < n; i++) oute[i] = dequant_model(qe[i], se[i / 32]);
                    tu_poison_f32(out, n);
                    assert_int_equal(mxm_mxfp8_dequantize(q, s, rows, cols, out, MXM_DT_F32, threads),
                                     MXM_OK);
                    check_f32(out, oute, n, "mxm_mxfp8_dequantize f32");
                    memset(outb, 0xA5, (size_t)n * 2);
                    assert_int_equal(mxm_mxfp8_dequantize(q, s, rows, cols, outb, MXM_DT_BF16, threads),
                                     MXM_OK);
                    for (int64_t i = 0; i < n; i++) {
                        const float got = mxm_bf16_to_f32(outb[i]);
                        const float exp = isnan(oute[i]) ? NAN : mxm_bf16_to_f32(bf16_model(oute[i]));
                        if (!same_f32(got, exp))
                            fail_msg("mxm_mxfp8_dequantize bf16: element %lld: 0x%04x, expected %a",
                                     (long long)i, outb[i], (double)exp);
                    }
                }
        free(x), free(xb), free(xd), free(xbd), free(qe), free(se), free(q), free(s), free(out),
            free(oute), free(outb);
    }

    /* dequantize arbitrary codes and scales (all 256 of each; small scales give fp32 and bf16
     * subnormals, where the bf16 rounding matters), 1 and 2 threads */
    {
        const int64_t rows = 300, cols = 320, n = rows * cols, nb = n / 32;
        uint8_t *q = tu_alloc((size_t)n), *s = tu_alloc((size_t)nb);
        float *out = tu_alloc((size_t)n * 4);
        uint16_t *outb = tu_alloc((size_t)n * 2);
        for (int64_t i = 0; i < n; i++) q[i] = (uint8_t)tu_next(&r);
        for (int64_t b = 0; b < nb; b++)
            s[b] = (uint8_t)(b % 3 == 0   ? tu_randint(&r, 0, 3)
                             : b % 3 == 1 ? (int64_t)(tu_next(&r) & 255)
                                          : tu_randint(&r, 250, 255));
        for (int threads = 1; threads <= 2; threads++) {
            tu_poison_f32(out, n);
            memset(outb, 0xA5, (size_t)n * 2);
            assert_int_equal(mxm_mxfp8_dequantize(q, s, rows, cols, out, MXM_DT_F32, threads), MXM_OK);
            assert_int_equal(mxm_mxfp8_dequantize(q, s, rows, cols, outb, MXM_DT_BF16, threads), MXM_OK);
            for (int64_t i = 0; i < n; i++) {
                const float e = dequant_model(q[i], s[i / 32]);
                const float eb = isnan(e) ? NAN : mxm_bf16_to_f32(bf16_model(e));
                if (!same_f32(out[i], e) || !same_f32(mxm_bf16_to_f32(outb[i]), eb))
                    fail_msg("mxm_mxfp8_dequantize q 0x%02x s %u: %a / bf16 0x%04x, expected %a / %a",
                             q[i], s[i / 32], (double)out[i], outb[i], (double)e, (double)eb);
            }
        }
        free(q), free(s), free(out), free(outb);
    }

    /* errors */
    float x[64] = {0};
    uint8_t q[64], s[2];
    float out[64];
    assert_int_equal(mxm_mxfp8_quantize(x, MXM_DT_F32, 2, 31, 0, q, s, 0, 1), MXM_ERR_SHAPE);
    assert_true(strlen(mxm_last_error()) > 0);
    assert_int_equal(mxm_mxfp8_quantize(x, MXM_DT_F32, 1, 48, 0, q, s, 0, 1), MXM_ERR_SHAPE);
    assert_int_equal(mxm_mxfp8_quantize(NULL, MXM_DT_F32, 1, 32, 0, q, s, 0, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_mxfp8_quantize(x, MXM_DT_F32, 1, 32, 0, NULL, s, 0, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_mxfp8_quantize(x, MXM_DT_F32, 1, 32, 0, q, NULL, 0, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_mxfp8_quantize(x, MXM_DT_F16, 1, 32, 0, q, s, 0, 1), MXM_ERR_DTYPE);
    assert_int_equal(mxm_mxfp8_quantize(x, 99, 1, 32, 0, q, s, 0, 1), MXM_ERR_DTYPE);
    assert_int_equal(mxm_mxfp8_quantize(x, MXM_DT_F32, 1, 32, 0, q, s, 2, 1), MXM_ERR_INVALID_ARG);
    assert_int_equal(mxm_mxfp8_quantize(x, MXM_DT_F32, 1, 32, 0, q, s, -1, 1), MXM_ERR_INVALID_ARG);
    assert_int_equal(mxm_mxfp8_quantize(x, MXM_DT_F32, 1, 64, 32, q, s, 0, 1), MXM_ERR_SHAPE);
    assert_int_equal(mxm_mxfp8_quantize(x, MXM_DT_F32, -1, 32, 0, q, s, 0, 1), MXM_ERR_SHAPE);
    assert_int_equal(mxm_mxfp8_quantize(x, MXM_DT_F32, 0, 32, 0, q, s, 0, 1), MXM_OK); /* empty */
    assert_int_equal(mxm_mxfp8_dequantize(q, s, 1, 33, out, MXM_DT_F32, 1), MXM_ERR_SHAPE);
    assert_int_equal(mxm_mxfp8_dequantize(NULL, s, 1, 32, out, MXM_DT_F32, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_mxfp8_dequantize(q, NULL, 1, 32, out, MXM_DT_F32, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_mxfp8_dequantize(q, s, 1, 32, NULL, MXM_DT_F32, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_mxfp8_dequantize(q, s, 1, 32, out, MXM_DT_E4M3, 1), MXM_ERR_DTYPE);
}

/* ---- DeepSeek FP8 block scale (SPEC 2.3) --------------------------------------------------- */

/* s = max(fp32(amax / 448), FLT_MIN); the double quotient rounded to fp32 is the correctly
 * rounded fp32 quotient (53 >= 2 * 24 + 2). NaN amax gives NaN. */
static float fp8block_scale_model(double amax) {
    if (isnan(amax)) return NAN;
    const float s = (float)(amax / 448.0);
    return s < FLT_MIN ? FLT_MIN : s;
}
static uint8_t fp8block_code_model(float x, float s) {
    const float v = (float)((double)x / (double)s); /* correctly rounded fp32 quotient */
    return e4m3_encode_model((double)v, signbit(v) != 0);
}
/* NaN codes compare modulo sign (the sign of a NaN quotient is the hardware's choice). */
static void check_fp8_codes(const uint8_t *got, const uint8_t *exp, int64_t n, const char *what) {
    for (int64_t i = 0; i < n; i++) {
        const bool nan_e = (exp[i] & 0x7F) == 0x7F, nan_g = (got[i] & 0x7F) == 0x7F;
        if (nan_e ? !nan_g : got[i] != exp[i])
            fail_msg("%s: element %lld: code 0x%02x, expected 0x%02x", what, (long long)i, got[i], exp[i]);
    }
}

static void fill_fp8_input(tu_rng *r, float *x, int64_t rows, int64_t cols, bool specials) {
    for (int64_t i = 0; i < rows; i++) {
        const float rs = ldexpf(1.0f, (int)tu_randint(r, -30, 30));
        for (int64_t j = 0; j < cols; j++) x[i * cols + j] = (float)tu_normal(r) * rs;
    }
    if (rows * cols > 300) {
        /* a zero segment, a tiny segment, a subnormal value */
        for (int64_t j = 0; j < cols && j < 128; j++) x[j] = 0.0f;
        if (rows > 1)
            for (int64_t j = 0; j < cols && j < 128; j++) x[cols + j] = (float)tu_normal(r) * 1e-41f;
        x[rows * cols - 1] = -1e-44f;
    }
    if (specials) {
        x[tu_randint(r, 0, rows * cols - 1)] = NAN;
        x[tu_randint(r, 0, rows * cols - 1)] = -INFINITY;
    }
}

static void test_fp8block_act(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const int64_t shapes[][2] = {{1, 1}, {1, 127}, {3, 128}, {5, 129}, {7, 300}, {64, 1000}, {130, 700}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int64_t rows = shapes[si][0], cols = shapes[si][1], n = rows * cols;
        const int64_t nb = (cols + 127) / 128;
        for (int variant = 0; variant < 2; variant++) { /* variant 1: NaN and -Inf sprinkled */
            float *x = tu_alloc((size_t)n * 4), *xd = tu_alloc((size_t)n * 4);
            uint16_t *xb = tu_alloc((size_t)n * 2);
            fill_fp8_input(&r, x, rows, cols, variant == 1);
            for (int64_t i = 0; i < n; i++) {
                xb[i] = (uint16_t)(f2u(x[i]) >> 16);
                xd[i] = mxm_bf16_to_f32(xb[i]);
            }
            uint8_t *q = tu_alloc((size_t)n), *qe = tu_alloc((size_t)n);
            float *s = tu_alloc((size_t)(rows * nb) * 4), *se = tu_alloc((size_t)(rows * nb) * 4);
            float *out = tu_alloc((size_t)n * 4);
            uint16_t *outb = tu_alloc((size_t)n * 2);
            for (int dt = 0; dt < 2; dt++) {
                const float *src = dt ? xd : x;
                for (int64_t i = 0; i < rows; i++)
                    for (int64_t b = 0; b < nb; b++) {
                        double amax = 0;
                        const int64_t c1 = (b + 1) * 128 < cols ? (b + 1) * 128 : cols;
                        for (int64_t j = b * 128; j < c1; j++) {
                            const double a = fabs((double)src[i * cols + j]);
                            if (isnan(a) || a > amax) amax = a;
                            if (isnan(a)) break;
                        }
                        const float sc = fp8block_scale_model(amax);
                        se[i * nb + b] = sc;
                        for (int64_t j = b * 128; j < c1; j++)
                            qe[i * cols + j] = fp8block_code_model(src[i * cols + j], sc);
                    }
                for (int tr = 0; tr < 2; tr++)
                    for (int threads = 1; threads <= 2; threads++) {
                        char msg[160];
                        snprintf(msg, sizeof msg, "mxm_fp8block_quantize_act [%lld,%lld] %s %s %d thr",
                                 (long long)rows, (long long)cols, dt ? "bf16" : "f32",
                                 tr ? "transposed" : "row-major", threads);
                        tu_poison_u8(q, n);
                        tu_poison_f32(s, rows * nb);
                        assert_int_equal(mxm_fp8block_quantize_act(dt ? (const void *)xb : (const void *)x,
                                                                   dt ? MXM_DT_BF16 : MXM_DT_F32, rows,
                                                                   cols, q, s, tr, threads),
                                         MXM_OK);
                        for (int64_t i = 0; i < rows; i++)
                            for (int64_t b = 0; b < nb; b++) {
                                const float got = s[tr ? b * rows + i : i * nb + b];
                                if (!same_f32(got, se[i * nb + b]))
                                    fail_msg("%s: scale [%lld,%lld] %a, expected %a", msg, (long long)i,
                                             (long long)b, (double)got, (double)se[i * nb + b]);
                            }
                        check_fp8_codes(q, qe, n, msg);
                        /* dequantize with the same layout, f32 and bf16 */
                        tu_poison_f32(out, n);
                        assert_int_equal(mxm_fp8block_dequantize(q, s, rows, cols, 1, tr, out, MXM_DT_F32,
                                                                 threads),
                                         MXM_OK);
                        assert_int_equal(mxm_fp8block_dequantize(q, s, rows, cols, 1, tr, outb,
                                                                 MXM_DT_BF16, threads),
                                         MXM_OK);
                        for (int64_t i = 0; i < rows; i++)
                            for (int64_t j = 0; j < cols; j++) {
                                const float e = (float)(e4m3_value(q[i * cols + j]) * (double)se[i * nb + j / 128]);
                                const float g = out[i * cols + j];
                                const float gb = mxm_bf16_to_f32(outb[i * cols + j]);
                                const float eb = isnan(e) ? NAN : mxm_bf16_to_f32(bf16_model(e));
                                if (!same_f32(g, e) || !same_f32(gb, eb))
                                    fail_msg("%s: dequant [%lld,%lld] %a / bf16 %a, expected %a", msg,
                                             (long long)i, (long long)j, (double)g, (double)gb, (double)e);
                            }
                    }
            }
            free(x), free(xd), free(xb), free(q), free(qe), free(s), free(se), free(out), free(outb);
        }
    }
    float x[4] = {1, 2, 3, 4}, s[1];
    uint8_t q[4];
    assert_int_equal(mxm_fp8block_quantize_act(NULL, MXM_DT_F32, 1, 4, q, s, 0, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_fp8block_quantize_act(x, MXM_DT_F32, 1, 4, q, NULL, 0, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_fp8block_quantize_act(x, MXM_DT_E4M3, 1, 4, q, s, 0, 1), MXM_ERR_DTYPE);
    assert_int_equal(mxm_fp8block_quantize_act(x, MXM_DT_F32, -1, 4, q, s, 0, 1), MXM_ERR_SHAPE);
}

static void test_fp8block_weight(void **state) {
    (void)state;
    tu_rng r = tu_rng_fresh();
    const int64_t shapes[][2] = {{1, 1}, {127, 129}, {128, 128}, {200, 300}, {257, 130}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int64_t rows = shapes[si][0], cols = shapes[si][1], n = rows * cols;
        const int64_t rb = (rows + 127) / 128, cb = (cols + 127) / 128;
        float *x = tu_alloc((size_t)n * 4), *xd = tu_alloc((size_t)n * 4);
        uint16_t *xb = tu_alloc((size_t)n * 2);
        fill_fp8_input(&r, x, rows, cols, false);
        /* per-tile magnitudes differ: scale each 128x128 tile */
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++)
                x[i * cols + j] = ldexpf(x[i * cols + j], (int)((i / 128 * 7 + j / 128 * 13) % 41) - 20);
        if (rows > 128 && cols > 128) { /* a NaN in one tile, an Inf in another */
            x[130 * cols + 5] = NAN;
            x[3 * cols + 129] = INFINITY;
        }
        for (int64_t i = 0; i < n; i++) {
            xb[i] = (uint16_t)(f2u(x[i]) >> 16);
            xd[i] = mxm_bf16_to_f32(xb[i]);
        }
        uint8_t *q = tu_alloc((size_t)n), *qe = tu_alloc((size_t)n);
        float *s = tu_alloc((size_t)(rb * cb) * 4), *se = tu_alloc((size_t)(rb * cb) * 4);
        float *out = tu_alloc((size_t)n * 4);
        for (int dt = 0; dt < 2; dt++) {
            const float *src = dt ? xd : x;
            for (int64_t bi = 0; bi < rb; bi++)
                for (int64_t bj = 0; bj < cb; bj++) {
                    double amax = 0;
                    for (int64_t i = bi * 128; i < rows && i < (bi + 1) * 128; i++)
                        for (int64_t j = bj * 128; j < cols && j < (bj + 1) * 128; j++) {
                            const double a = fabs((double)src[i * cols + j]);
                            if (isnan(a) || a > amax) amax = isnan(amax) ? amax : a;
                        }
                    se[bi * cb + bj] = fp8block_scale_model(amax);
                    for (int64_t i = bi * 128; i < rows && i < (bi + 1) * 128; i++)
                        for (int64_t j = bj * 128; j < cols && j < (bj + 1) * 128; j++)
                            qe[i * cols + j] = fp8block_code_model(src[i * cols + j], se[bi * cb + bj]);
                }
            for (int threads = 1; threads <= 2; threads++) {
                char msg[128];
                snprintf(msg, sizeof msg, "mxm_fp8block_quantize_weight [%lld,%lld] %s %d thr",
                         (long long)rows, (long long)cols, dt ? "bf16" : "f32", threads);
                tu_poison_u8(q, n);
                tu_poison_f32(s, rb * cb);
                assert_int_equal(mxm_fp8block_quantize_weight(dt ? (const void *)xb : (const void *)x,
                                                              dt ? MXM_DT_BF16 : MXM_DT_F32, rows, cols,
                                                              q, s, threads),
                                 MXM_OK);
                check_f32(s, se, rb * cb, msg);
                if (rows > 128 && cols > 128) assert_true(isnan(s[cb]) && isinf(s[1]));
                check_fp8_codes(q, qe, n, msg);
                tu_poison_f32(out, n);
                assert_int_equal(mxm_fp8block_dequantize(q, s, rows, cols, 128, 0, out, MXM_DT_F32, threads),
                                 MXM_OK);
                for (int64_t i = 0; i < rows; i++)
                    for (int64_t j = 0; j < cols; j++) {
                        const float e = (float)(e4m3_value(q[i * cols + j]) * (double)se[(i / 128) * cb + j / 128]);
                        if (!same_f32(out[i * cols + j], e))
                            fail_msg("%s: dequant [%lld,%lld] %a, expected %a", msg, (long long)i,
                                     (long long)j, (double)out[i * cols + j], (double)e);
                    }
            }
        }
        free(x), free(xd), free(xb), free(q), free(qe), free(s), free(se), free(out);
    }
    float x[4] = {1, 2, 3, 4}, s[1], out[4];
    uint8_t q[4] = {0};
    assert_int_equal(mxm_fp8block_quantize_weight(x, MXM_DT_F32, 2, 2, NULL, s, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_fp8block_quantize_weight(x, MXM_DT_I32, 2, 2, q, s, 1), MXM_ERR_DTYPE);
    assert_int_equal(mxm_fp8block_dequantize(q, s, 2, 2, 64, 0, out, MXM_DT_F32, 1), MXM_ERR_INVALID_ARG);
    assert_int_equal(mxm_fp8block_dequantize(q, s, 2, 2, 128, 1, out, MXM_DT_F32, 1), MXM_ERR_INVALID_ARG);
    assert_int_equal(mxm_fp8block_dequantize(q, s, 2, 2, 1, 0, out, MXM_DT_F16, 1), MXM_ERR_DTYPE);
    assert_int_equal(mxm_fp8block_dequantize(q, NULL, 2, 2, 1, 0, out, MXM_DT_F32, 1), MXM_ERR_NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e4m3_all_codes),   cmocka_unit_test(test_e5m2_all_codes),
        cmocka_unit_test(test_e8m0_all_codes),   cmocka_unit_test(test_all_bf16_patterns),
        cmocka_unit_test(test_all_f16_patterns), cmocka_unit_test(test_random_f32_encoders),
        cmocka_unit_test(test_scale_rule),       cmocka_unit_test(test_quantizer_all_bf16),
        cmocka_unit_test(test_quantizer_edges),  cmocka_unit_test(test_simd_vs_ref),
        cmocka_unit_test(test_mxfp8_api),        cmocka_unit_test(test_fp8block_act),
        cmocka_unit_test(test_fp8block_weight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
