/* safetensors reader/writer: valid files, writer round trip and exact bytes, model folders,
 * and one test per malformation (exact status, and the message names path, tensor, problem).
 * Fixtures are built here, in a fresh mkdtemp directory. */
#include <dirent.h>
#include <fcntl.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "mxmoe.h"
#include "testutil.h"

/* ------------------------------------------------------------------------------------------ */
/* fixture helpers */

static char g_dir[256];


static int setup_dir(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/mxm_st_test_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown_dir(void **state) {
    (void)state;
    tu_rm_tree(g_dir);
    return 0;
}

/* Path under the temp dir (rotating static buffers). */
static const char *tpath(const char *name) {
    static char bufs[8][512];
    static int k;
    char *b = bufs[k++ % 8];
    snprintf(b, 512, "%s/%s", g_dir, name);
    return b;
}

static void make_dir(const char *name) {
    assert_int_equal(mkdir(tpath(name), 0755), 0);
}

static void write_file(const char *path, const void *bytes, size_t len) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    if (len) assert_int_equal(fwrite(bytes, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    const long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = tu_alloc((size_t)n);
    if (n) assert_int_equal(fread(b, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return b;
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

static uint8_t pattern(size_t i) {
    return (uint8_t)(i * 131u + 7u);
}

/* 8-byte length n, the header bytes, then dlen pattern bytes. Caller frees. */
static uint8_t *build_raw(uint64_t n, const char *hdr, size_t hlen, size_t dlen, size_t *len) {
    *len = 8 + hlen + dlen;
    uint8_t *b = tu_alloc(*len);
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(n >> (8 * i));
    memcpy(b + 8, hdr, hlen);
    for (size_t i = 0; i < dlen; i++)
        b[8 + hlen + i] = pattern(i);
    return b;
}

/* Writes a file with header hdr (its exact length as N) and dlen pattern bytes of data. */
static const char *write_st(const char *name, const char *hdr, size_t dlen) {
    size_t len;
    uint8_t *b = build_raw(strlen(hdr), hdr, strlen(hdr), dlen, &len);
    const char *p = tpath(name);
    write_file(p, b, len);
    free(b);
    return p;
}

static void assert_contains(const char *hay, const char *needle) {
    if (!strstr(hay, needle)) {
        print_error("expected \"%s\" in message \"%s\"\n", needle, hay);
        fail();
    }
}

/* Both mxm_st_open (file) and mxm_st_open_memory (same bytes) must fail with want, and the
 * message must name the path/label and contain s1 and s2 (when non-NULL). */
static void expect_fail_bytes(const char *name, const uint8_t *bytes, size_t len, mxm_status want,
                              const char *s1, const char *s2) {
    const char *p = tpath(name);
    write_file(p, bytes, len);
    mxm_st_file *f = (mxm_st_file *)(uintptr_t)1;
    mxm_status st = mxm_st_open(p, &f);
    if (st != want) print_error("status %d, message: %s\n", st, mxm_last_error());
    assert_int_equal(st, want);
    assert_null(f);
    assert_contains(mxm_last_error(), p);
    if (s1) assert_contains(mxm_last_error(), s1);
    if (s2) assert_contains(mxm_last_error(), s2);

    f = (mxm_st_file *)(uintptr_t)1;
    st = mxm_st_open_memory(bytes, (int64_t)len, "memlabel", &f);
    assert_int_equal(st, want);
    assert_null(f);
    assert_contains(mxm_last_error(), "memlabel");
    if (s1) assert_contains(mxm_last_error(), s1);
    if (s2) assert_contains(mxm_last_error(), s2);
}

static void expect_fail_hdr(const char *name, const char *hdr, size_t dlen, mxm_status want,
                            const char *s1, const char *s2) {
    size_t len;
    uint8_t *b = build_raw(strlen(hdr), hdr, strlen(hdr), dlen, &len);
    expect_fail_bytes(name, b, len, want, s1, s2);
    free(b);
}

/* ------------------------------------------------------------------------------------------ */
/* valid files */

static void test_dtype_helpers(void **state) {
    (void)state;
    int32_t es = -5;
    assert_int_equal(mxm_st_dtype_from_str("F8_E4M3", &es), MXM_DT_E4M3);
    assert_int_equal(es, 1);
    assert_int_equal(mxm_st_dtype_from_str("F8_E8M0", &es), MXM_DT_E8M0);
    assert_int_equal(mxm_st_dtype_from_str("BF16", &es), MXM_DT_BF16);
    assert_int_equal(es, 2);
    assert_int_equal(mxm_st_dtype_from_str("I64", &es), MXM_DT_I64);
    assert_int_equal(es, 8);
    const char *noenum[] = {"BOOL", "I16", "U16", "U32", "U64"};
    const int32_t sizes[] = {1, 2, 2, 4, 8};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(mxm_st_dtype_from_str(noenum[i], &es), -1);
        assert_int_equal(es, sizes[i]);
    }
    assert_int_equal(mxm_st_dtype_from_str("F8_E4M3FNUZ", &es), -2);
    assert_int_equal(es, 0);
    assert_int_equal(mxm_st_dtype_from_str("f32", NULL), -2);
    assert_int_equal(mxm_st_dtype_from_str(NULL, &es), -2);
    for (int32_t d = 0; d < MXM_DT_COUNT_; d++) {
        const char *s = mxm_st_dtype_to_str(d);
        assert_non_null(s);
        assert_string_equal(s, mxm_dtype_name(d));
        assert_int_equal(mxm_st_dtype_from_str(s, &es), d);
        assert_int_equal(es, mxm_dtype_size(d));
    }
    assert_null(mxm_st_dtype_to_str(-1));
    assert_null(mxm_st_dtype_to_str(MXM_DT_COUNT_));
}

static void test_utf8_validator(void **state) {
    (void)state;
    const struct {
        const char *s;
        int64_t bad;
    } cases[] = {
        {"plain ascii", -1},
        {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf", -1},
        {"\xed\x9f\xbf", -1},      /* U+D7FF */
        {"\xee\x80\x80", -1},      /* U+E000 */
        {"a\xc0\xaf", 1},          /* overlong '/' */
        {"\xc1\xbf", 0},           /* overlong */
        {"\xe0\x80\xaf", 1},       /* overlong 3-byte */
        {"\xf0\x80\x80\xaf", 1},   /* overlong 4-byte */
        {"\xed\xa0\x80", 1},       /* surrogate U+D800 */
        {"\xed\xbf\xbf", 1},       /* surrogate U+DFFF */
        {"\xf4\x90\x80\x80", 1},   /* U+110000 */
        {"ab\xf5\x80\x80\x80", 2}, /* byte > 0xF4 */
        {"\xff", 0},
        {"\x80", 0},         /* lone continuation */
        {"ab\xe2\x82", 2},   /* truncated */
        {"\xe2\x28\xa1", 1}, /* bad continuation */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const int64_t got =
            mxm_st_utf8_invalid_at((const uint8_t *)cases[i].s, (int64_t)strlen(cases[i].s));
        if (got != cases[i].bad) print_error("case %zu: got %lld\n", i, (long long)got);
        assert_int_equal(got, cases[i].bad);
    }
}

/* Hand-written header: keys not in offset order, whitespace, no padding, several dtypes and
 * ranks, a scalar, zero-size tensors (two at the same offset, one at the very end), a
 * non-ASCII name, metadata, and an unknown extra field (ignored). */
static const char *VALID_HDR =
    "{ \"b.bias\": {\"dtype\": \"BF16\", \"shape\": [4], \"data_offsets\": [24, 32]},\n"
    "  \"__metadata__\": {\"format\": \"pt\", \"quant\": \"MXFP8\"},\n"
    "  \"a.weight\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 24]},\n"
    "  \"experts.0.w\": {\"data_offsets\": [32, 96], \"shape\": [2, 32], \"dtype\": \"F8_E4M3\"},\n"
    "  \"experts.0.w_scale\": {\"dtype\": \"U8\", \"shape\": [2, 1], \"data_offsets\": [96, 98]},\n"
    "  \"zero.b\": {\"dtype\": \"F16\", \"shape\": [0, 5], \"data_offsets\": [98, 98]},\n"
    "  \"zero.a\": {\"dtype\": \"I64\", \"shape\": [3, 0], \"data_offsets\": [98, 98]},\n"
    "  \"mask\": {\"dtype\": \"BOOL\", \"shape\": [1, 1, 1, 1, 1, 1, 1, 2], \"data_offsets\": [98, "
    "100], \"extra\": 1},\n"
    "  \"scalar\": {\"dtype\": \"I64\", \"shape\": [], \"data_offsets\": [100, 108]},\n"
    "  \"\xc3\xa9t\xc3\xa9\": {\"dtype\": \"U16\", \"shape\": [1], \"data_offsets\": [108, 110]},\n"
    "  \"end.zero\": {\"dtype\": \"F8_E8M0\", \"shape\": [0], \"data_offsets\": [110, 110]}\n"
    "}";
enum { VALID_DATA = 110 };

static void check_valid(const mxm_st_file *f, const uint8_t *data_start) {
    static const struct {
        const char *name, *dtype;
        int32_t dt, es, rank;
        int64_t shape[8], numel, off, nbytes;
    } want[] = {
        /* data-offset order; zero-size tensors at the same offset ordered by name */
        {"a.weight", "F32", MXM_DT_F32, 4, 2, {2, 3}, 6, 0, 24},
        {"b.bias", "BF16", MXM_DT_BF16, 2, 1, {4}, 4, 24, 8},
        {"experts.0.w", "F8_E4M3", MXM_DT_E4M3, 1, 2, {2, 32}, 64, 32, 64},
        {"experts.0.w_scale", "U8", MXM_DT_U8, 1, 2, {2, 1}, 2, 96, 2},
        {"zero.a", "I64", MXM_DT_I64, 8, 2, {3, 0}, 0, 98, 0},
        {"zero.b", "F16", MXM_DT_F16, 2, 2, {0, 5}, 0, 98, 0},
        {"mask", "BOOL", -1, 1, 8, {1, 1, 1, 1, 1, 1, 1, 2}, 2, 98, 2},
        {"scalar", "I64", MXM_DT_I64, 8, 0, {0}, 1, 100, 8},
        {"\xc3\xa9t\xc3\xa9", "U16", -1, 2, 1, {1}, 1, 108, 2},
        {"end.zero", "F8_E8M0", MXM_DT_E8M0, 1, 1, {0}, 0, 110, 0},
    };
    const int64_t n = (int64_t)(sizeof want / sizeof want[0]);
    assert_int_equal(mxm_st_count(f), n);
    assert_int_equal(mxm_st_data_size(f), VALID_DATA);
    assert_int_equal(mxm_st_header_size(f), (int64_t)strlen(VALID_HDR));
    for (int64_t i = 0; i < n; i++) {
        const mxm_st_tensor *t = mxm_st_at(f, i);
        assert_non_null(t);
        assert_string_equal(t->name, want[i].name);
        assert_string_equal(t->dtype_str, want[i].dtype);
        assert_int_equal(t->dtype, want[i].dt);
        assert_int_equal(t->elem_size, want[i].es);
        assert_int_equal(t->rank, want[i].rank);
        for (int k = 0; k < t->rank; k++)
            assert_int_equal(t->shape[k], want[i].shape[k]);
        assert_int_equal(t->numel, want[i].numel);
        assert_int_equal(t->offset, want[i].off);
        assert_int_equal(t->nbytes, want[i].nbytes);
        assert_ptr_equal(t->data, data_start + want[i].off);
        for (int64_t b = 0; b < t->nbytes; b++)
            assert_int_equal(((const uint8_t *)t->data)[b], pattern((size_t)(t->offset + b)));
        assert_ptr_equal(mxm_st_find(f, want[i].name), t);
    }
    assert_null(mxm_st_at(f, n));
    assert_null(mxm_st_at(f, -1));
    assert_null(mxm_st_find(f, "missing"));
    assert_null(mxm_st_find(f, "a.weigh"));
    assert_null(mxm_st_find(f, ""));
    assert_null(mxm_st_find(f, "__metadata__"));
    assert_string_equal(mxm_st_metadata(f, "format"), "pt");
    assert_string_equal(mxm_st_metadata(f, "quant"), "MXFP8");
    assert_null(mxm_st_metadata(f, "missing"));
    assert_int_equal(mxm_st_metadata_count(f), 2);
    const char *k, *v;
    assert_int_equal(mxm_st_metadata_at(f, 0, &k, &v), 0);
    assert_string_equal(k, "format");
    assert_int_equal(mxm_st_metadata_at(f, 1, &k, &v), 0);
    assert_string_equal(k, "quant");
    assert_string_equal(v, "MXFP8");
    assert_int_equal(mxm_st_metadata_at(f, 2, &k, &v), -1);
}

static void test_valid_file(void **state) {
    (void)state;
    const char *p = write_st("valid.safetensors", VALID_HDR, VALID_DATA);
    mxm_st_file *f;
    assert_int_equal(mxm_st_open(p, &f), MXM_OK);
    assert_string_equal(mxm_st_path(f), p);
    const mxm_st_tensor *first = mxm_st_at(f, 0);
    check_valid(f, (const uint8_t *)first->data);
    mxm_st_close(f);

    size_t len;
    uint8_t *b = read_file(p, &len);
    assert_int_equal(mxm_st_open_memory(b, (int64_t)len, NULL, &f), MXM_OK);
    assert_string_equal(mxm_st_path(f), "<memory>");
    check_valid(f, b + 8 + strlen(VALID_HDR));
    mxm_st_close(f);
    free(b);
}

static void test_empty_and_zero_size(void **state) {
    (void)state;
    mxm_st_file *f;
    /* No tensors, empty data buffer, padded like the Python writer. */
    assert_int_equal(mxm_st_open(write_st("e1.safetensors", "{}      ", 0), &f), MXM_OK);
    assert_int_equal(mxm_st_count(f), 0);
    assert_null(mxm_st_at(f, 0));
    assert_null(mxm_st_find(f, "x"));
    assert_null(mxm_st_metadata(f, "x"));
    mxm_st_close(f);
    /* Only zero-size tensors and an empty metadata object. */
    const char *h = "{\"__metadata__\":{},\"z\":{\"dtype\":\"F32\",\"shape\":[0],"
                    "\"data_offsets\":[0,0]},\"y\":{\"dtype\":\"U8\",\"shape\":[4,0,2],"
                    "\"data_offsets\":[0,0]}}";
    assert_int_equal(mxm_st_open(write_st("e2.safetensors", h, 0), &f), MXM_OK);
    assert_int_equal(mxm_st_count(f), 2);
    assert_string_equal(mxm_st_at(f, 0)->name, "y");
    assert_int_equal(mxm_st_find(f, "z")->nbytes, 0);
    assert_int_equal(mxm_st_metadata_count(f), 0);
    mxm_st_close(f);
    mxm_st_close(NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* writer */

static void test_writer_roundtrip(void **state) {
    (void)state;
    tu_rng rng = tu_rng_fresh();
    enum { NT = 12 };
    const char *dtypes[NT] = {"F32", "BF16", "F8_E4M3", "U8",   "F8_E8M0", "I64",
                              "F16", "I32",  "F64",     "BOOL", "U16",     "F8_E5M2"};
    const int32_t ranks[NT] = {2, 1, 2, 2, 0, 3, 1, 1, 4, 1, 1, 8};
    int64_t shapes[NT][8];
    uint8_t *bufs[NT];
    int64_t nbytes[NT];
    char names[NT][32];
    const char *p = tpath("rt.safetensors");
    mxm_st_writer *w;
    assert_int_equal(mxm_st_writer_create(p, &w), MXM_OK);
    for (int i = 0; i < NT; i++) {
        int32_t es;
        mxm_st_dtype_from_str(dtypes[i], &es);
        int64_t numel = 1;
        for (int k = 0; k < ranks[i]; k++) {
            shapes[i][k] = tu_randint(&rng, i == 11 ? 1 : 0, i == 11 ? 2 : 7);
            numel *= shapes[i][k];
        }
        nbytes[i] = numel * es;
        bufs[i] = tu_alloc((size_t)nbytes[i]);
        for (int64_t b = 0; b < nbytes[i]; b++)
            bufs[i][b] = (uint8_t)tu_next(&rng);
        snprintf(names[i], sizeof names[i], "model.layers.%d.t%d", NT - i, i);
        assert_int_equal(mxm_st_writer_add(w, names[i], dtypes[i], ranks[i], shapes[i],
                                           nbytes[i] ? bufs[i] : NULL, nbytes[i]),
                         MXM_OK);
    }
    assert_int_equal(mxm_st_writer_set_metadata(w, "format", "pt"), MXM_OK);
    assert_int_equal(mxm_st_writer_set_metadata(w, "odd \"key\"\n", "v\\al\x01ue \xc3\xa9"),
                     MXM_OK);
    assert_int_equal(mxm_st_writer_set_metadata(w, "format", "mxmoe"), MXM_OK); /* replaces */
    assert_int_equal(mxm_st_writer_finish(w), MXM_OK);
    assert_false(file_exists(tpath("rt.safetensors.tmp")));

    mxm_st_file *f;
    assert_int_equal(mxm_st_open(p, &f), MXM_OK);
    assert_int_equal(mxm_st_count(f), NT);
    assert_int_equal(mxm_st_header_size(f) % 8, 0);
    assert_string_equal(mxm_st_metadata(f, "format"), "mxmoe");
    assert_string_equal(mxm_st_metadata(f, "odd \"key\"\n"), "v\\al\x01ue \xc3\xa9");
    int32_t prev_es = 8;
    for (int i = 0; i < NT; i++) {
        const mxm_st_tensor *t = mxm_st_find(f, names[i]);
        assert_non_null(t);
        assert_string_equal(t->dtype_str, dtypes[i]);
        assert_int_equal(t->rank, ranks[i]);
        for (int k = 0; k < ranks[i]; k++)
            assert_int_equal(t->shape[k], shapes[i][k]);
        assert_int_equal(t->nbytes, nbytes[i]);
        if (nbytes[i]) assert_memory_equal(t->data, bufs[i], (size_t)nbytes[i]);
        /* Python writer layout: every tensor aligned to its element size in the mapping. */
        assert_int_equal((uintptr_t)t->data % (uintptr_t)t->elem_size, 0);
        /* data order: element size never increases (zero-size tensors at one offset are
         * listed by name, so they are left out) */
        const mxm_st_tensor *a = mxm_st_at(f, i);
        if (a->nbytes > 0) {
            assert_true(a->elem_size <= prev_es);
            prev_es = a->elem_size;
        }
        free(bufs[i]);
    }
    mxm_st_close(f);
}

/* The reference writer's own test vectors (safetensors tensor.rs) plus an ordering case. */
static void check_bytes(const char *path, const char *hdr, const uint8_t *data, size_t dlen) {
    size_t len;
    uint8_t *got = read_file(path, &len);
    const size_t hl = strlen(hdr);
    assert_int_equal(len, 8 + hl + dlen);
    uint8_t n8[8];
    for (int i = 0; i < 8; i++)
        n8[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    assert_memory_equal(got, n8, 8);
    if (memcmp(got + 8, hdr, hl) != 0) {
        print_error("header:   %.*s|\nexpected: %s|\n", (int)hl, (const char *)got + 8, hdr);
        fail();
    }
    if (dlen) assert_memory_equal(got + 8 + hl, data, dlen);
    free(got);
}

static void test_writer_exact_bytes(void **state) {
    (void)state;
    mxm_st_writer *w;
    const char *p = tpath("exact.safetensors");

    assert_int_equal(mxm_st_writer_create(p, &w), MXM_OK);
    assert_int_equal(mxm_st_writer_finish(w), MXM_OK);
    check_bytes(p, "{}      ", NULL, 0);

    assert_int_equal(mxm_st_writer_create(p, &w), MXM_OK);
    assert_int_equal(mxm_st_writer_set_metadata(w, "framework", "pt"), MXM_OK);
    assert_int_equal(mxm_st_writer_finish(w), MXM_OK);
    check_bytes(p, "{\"__metadata__\":{\"framework\":\"pt\"}}     ", NULL, 0); /* N = 40 */

    const float vals[6] = {0, 1, 2, 3, 4, 5};
    const int64_t s3[3] = {1, 2, 3}, s4[4] = {1, 1, 2, 3};
    assert_int_equal(mxm_st_writer_create(p, &w), MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "attn.0", "F32", 3, s3, vals, 24), MXM_OK);
    assert_int_equal(mxm_st_writer_finish(w), MXM_OK);
    check_bytes(p, "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}",
                (const uint8_t *)vals, 24); /* N = 64, no padding */

    assert_int_equal(mxm_st_writer_create(p, &w), MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "attn0", "F32", 4, s4, vals, 24), MXM_OK);
    assert_int_equal(mxm_st_writer_finish(w), MXM_OK);
    check_bytes(p,
                "{\"attn0\":{\"dtype\":\"F32\",\"shape\":[1,1,2,3],\"data_offsets\":[0,24]}}"
                "       ",
                (const uint8_t *)vals, 24); /* N = 72 */

    /* Order: descending dtype, then name; metadata first, keys sorted, serde_json escapes. */
    const uint8_t d[20] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20};
    const int64_t one = 1, two = 2, three = 3;
    assert_int_equal(mxm_st_writer_create(p, &w), MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "b", "U8", 1, &three, d + 17, 3), MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "a", "U8", 1, &one, d + 16, 1), MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "s", "BF16", 1, &two, d + 12, 4), MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "m", "I64", 0, NULL, d, 8), MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "c\"\t", "F32", 1, &one, d + 8, 4), MXM_OK);
    assert_int_equal(mxm_st_writer_set_metadata(w, "z", "q\"\\\n\x01/\x7f"), MXM_OK);
    assert_int_equal(mxm_st_writer_set_metadata(w, "a", "1"), MXM_OK);
    assert_int_equal(mxm_st_writer_finish(w), MXM_OK);
    check_bytes(p,
                "{\"__metadata__\":{\"a\":\"1\",\"z\":\"q\\\"\\\\\\n\\u0001/\x7f\"},"
                "\"m\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]},"
                "\"c\\\"\\t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
                "\"s\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[12,16]},"
                "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[16,17]},"
                "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[17,20]}}"
                "      ", /* N = 322 + 6 */
                d, 20);
    mxm_st_file *f;
    assert_int_equal(mxm_st_open(p, &f), MXM_OK);
    assert_non_null(mxm_st_find(f, "c\"\t"));
    assert_string_equal(mxm_st_metadata(f, "z"), "q\"\\\n\x01/\x7f");
    mxm_st_close(f);
}

/* Every dtype at once, against the output of the reference library itself: safetensors 0.8.0,
 * safetensors.numpy.save_file(tensors, metadata={"format": "pt"}) wrote this header for these
 * tensors (1056 bytes, a multiple of 8, so no padding). */
static void test_writer_matches_python(void **state) {
    (void)state;
    static const char *want =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"u64\":{\"dtype\":\"U64\",\"shape\":[1],\"data_offsets\":[0,8]},"
        "\"m\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[8,16]},"
        "\"d\":{\"dtype\":\"F64\",\"shape\":[1,1,1],\"data_offsets\":[16,24]},"
        "\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[24,28]},"
        "\"empty\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[28,28]},"
        "\"u32\":{\"dtype\":\"U32\",\"shape\":[1],\"data_offsets\":[28,32]},"
        "\"i32\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[32,36]},"
        "\"s\":{\"dtype\":\"BF16\",\"shape\":[2,1],\"data_offsets\":[36,40]},"
        "\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[40,44]},"
        "\"u16\":{\"dtype\":\"U16\",\"shape\":[2],\"data_offsets\":[44,48]},"
        "\"i16\":{\"dtype\":\"I16\",\"shape\":[2],\"data_offsets\":[48,52]},"
        "\"z8\":{\"dtype\":\"F8_E8M0\",\"shape\":[2],\"data_offsets\":[52,54]},"
        "\"f8\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[54,58]},"
        "\"e5\":{\"dtype\":\"F8_E5M2\",\"shape\":[2],\"data_offsets\":[58,60]},"
        "\"i8\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[60,62]},"
        "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[62,63]},"
        "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[63,66]},"
        "\"bo\":{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[66,68]}}";
    static const struct {
        const char *name, *dtype;
        int32_t rank;
        int64_t shape[3];
    } t[] = {
        {"b", "U8", 1, {3}},        {"a", "U8", 1, {1}},       {"f8", "F8_E4M3", 1, {4}},
        {"z8", "F8_E8M0", 1, {2}},  {"e5", "F8_E5M2", 1, {2}}, {"i8", "I8", 1, {2}},
        {"bo", "BOOL", 1, {2}},     {"s", "BF16", 2, {2, 1}},  {"h", "F16", 1, {2}},
        {"i16", "I16", 1, {2}},     {"u16", "U16", 1, {2}},    {"c", "F32", 1, {1}},
        {"i32", "I32", 1, {1}},     {"u32", "U32", 1, {1}},    {"m", "I64", 0, {0}},
        {"d", "F64", 3, {1, 1, 1}}, {"u64", "U64", 1, {1}},    {"empty", "F32", 2, {0, 3}},
    };
    uint8_t data[64];
    for (int i = 0; i < 64; i++)
        data[i] = pattern((size_t)i);
    const char *p = tpath("py.safetensors");
    mxm_st_writer *w;
    assert_int_equal(mxm_st_writer_create(p, &w), MXM_OK);
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        int32_t es;
        mxm_st_dtype_from_str(t[i].dtype, &es);
        int64_t nb = es;
        for (int k = 0; k < t[i].rank; k++)
            nb *= t[i].shape[k];
        assert_int_equal(
            mxm_st_writer_add(w, t[i].name, t[i].dtype, t[i].rank, t[i].shape, data, nb), MXM_OK);
    }
    assert_int_equal(mxm_st_writer_set_metadata(w, "format", "pt"), MXM_OK);
    mxm_st_writer_set_order(w, MXM_ST_ORDER_DTYPE);
    assert_int_equal(mxm_st_writer_finish(w), MXM_OK);
    size_t len;
    uint8_t *got = read_file(p, &len);
    assert_int_equal(len, 8 + 1056 + 68);
    assert_int_equal(got[0] | (got[1] << 8), 1056);
    assert_int_equal(strlen(want), 1056);
    if (memcmp(got + 8, want, 1056) != 0) {
        print_error("header:   %.*s\nexpected: %s\n", 1056, (const char *)got + 8, want);
        fail();
    }
    free(got);
}

static void test_writer_errors(void **state) {
    (void)state;
    mxm_st_writer *w;
    const char *p = tpath("werr.safetensors");
    const uint8_t buf[64] = {0};
    const int64_t s2[2] = {2, 3}, neg[1] = {-1}, big[2] = {INT64_MAX / 2, 3}, nine[9] = {1};
    assert_int_equal(mxm_st_writer_create(NULL, &w), MXM_ERR_NULL);
    assert_int_equal(mxm_st_writer_create("", &w), MXM_ERR_INVALID_ARG);
    assert_int_equal(mxm_st_writer_create(p, &w), MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "t", "F32", 2, s2, buf, 24), MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "t", "F32", 2, s2, buf, 24), MXM_ERR_INVALID_ARG);
    assert_contains(mxm_last_error(), "'t'");
    assert_contains(mxm_last_error(), "twice");
    assert_int_equal(mxm_st_writer_add(w, "u", "F32", 2, s2, buf, 23), MXM_ERR_SHAPE);
    assert_contains(mxm_last_error(), "needs 24");
    assert_int_equal(mxm_st_writer_add(w, "u", "F8_E4M3FNUZ", 2, s2, buf, 6), MXM_ERR_DTYPE);
    assert_contains(mxm_last_error(), "unknown dtype");
    assert_int_equal(mxm_st_writer_add(w, "u", "U8", 9, nine, buf, 0), MXM_ERR_SHAPE);
    assert_contains(mxm_last_error(), "rank 9");
    assert_int_equal(mxm_st_writer_add(w, "u", "U8", -1, s2, buf, 0), MXM_ERR_SHAPE);
    assert_int_equal(mxm_st_writer_add(w, "u", "U8", 1, neg, buf, 0), MXM_ERR_SHAPE);
    assert_contains(mxm_last_error(), "negative");
    assert_int_equal(mxm_st_writer_add(w, "u", "F32", 2, big, buf, 0), MXM_ERR_OVERFLOW);
    assert_int_equal(mxm_st_writer_add(w, "u", "F32", 2, s2, NULL, 24), MXM_ERR_NULL);
    assert_int_equal(mxm_st_writer_add(w, "u", "F32", 2, NULL, buf, 24), MXM_ERR_NULL);
    assert_int_equal(mxm_st_writer_add(w, "", "U8", 0, NULL, buf, 1), MXM_ERR_INVALID_ARG);
    assert_int_equal(mxm_st_writer_add(w, "__metadata__", "U8", 0, NULL, buf, 1),
                     MXM_ERR_INVALID_ARG);
    assert_int_equal(mxm_st_writer_add(w, "bad\xff", "U8", 0, NULL, buf, 1), MXM_ERR_INVALID_ARG);
    assert_int_equal(mxm_st_writer_add(w, NULL, "U8", 0, NULL, buf, 1), MXM_ERR_NULL);
    assert_int_equal(mxm_st_writer_set_metadata(w, "k", "\xc0\xaf"), MXM_ERR_INVALID_ARG);
    assert_int_equal(mxm_st_writer_set_metadata(w, NULL, "v"), MXM_ERR_NULL);
    /* Many names: the duplicate check is hashed (and still exact). */
    char nm[32];
    for (int i = 0; i < 3000; i++) {
        snprintf(nm, sizeof nm, "x.%d", i);
        assert_int_equal(mxm_st_writer_add(w, nm, "U8", 0, NULL, buf, 1), MXM_OK);
    }
    assert_int_equal(mxm_st_writer_add(w, "x.1234", "U8", 0, NULL, buf, 1), MXM_ERR_INVALID_ARG);
    /* The failed adds left the writer usable. */
    assert_int_equal(mxm_st_writer_finish(w), MXM_OK);
    mxm_st_file *f;
    assert_int_equal(mxm_st_open(p, &f), MXM_OK);
    assert_int_equal(mxm_st_count(f), 3001);
    assert_non_null(mxm_st_find(f, "x.2999"));
    mxm_st_close(f);

    /* A failing finish (folder missing) leaves nothing behind and frees the writer. */
    const char *bad = tpath("no/such/dir/out.safetensors");
    assert_int_equal(mxm_st_writer_create(bad, &w), MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "t", "F32", 2, s2, buf, 24), MXM_OK);
    assert_int_equal(mxm_st_writer_finish(w), MXM_ERR_IO);
    assert_contains(mxm_last_error(), "out.safetensors.tmp");
    assert_false(file_exists(bad));
    /* A failing rename (target is a non-empty folder) removes the temp file. */
    make_dir("target.safetensors");
    make_dir("target.safetensors/x");
    assert_int_equal(mxm_st_writer_create(tpath("target.safetensors"), &w), MXM_OK);
    assert_int_equal(mxm_st_writer_finish(w), MXM_ERR_IO);
    assert_contains(mxm_last_error(), "rename");
    assert_false(file_exists(tpath("target.safetensors.tmp")));
    /* abort writes nothing. */
    assert_int_equal(mxm_st_writer_create(tpath("aborted.safetensors"), &w), MXM_OK);
    assert_int_equal(mxm_st_writer_add(w, "t", "F32", 2, s2, buf, 24), MXM_OK);
    mxm_st_writer_abort(w);
    mxm_st_writer_abort(NULL);
    assert_false(file_exists(tpath("aborted.safetensors")));
    assert_false(file_exists(tpath("aborted.safetensors.tmp")));
}

/* ------------------------------------------------------------------------------------------ */
/* model folders */

static void write_tensors(const char *path, const char *const *names, int n, float base) {
    mxm_st_writer *w;
    static float vals[64][4];
    const int64_t four = 4;
    assert_int_equal(mxm_st_writer_create(path, &w), MXM_OK);
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < 4; k++)
            vals[i][k] = base + (float)(i * 4 + k);
        assert_int_equal(mxm_st_writer_add(w, names[i], "F32", 1, &four, vals[i], 16), MXM_OK);
    }
    assert_int_equal(mxm_st_writer_finish(w), MXM_OK);
}

static void write_text(const char *path, const char *text) {
    write_file(path, text, strlen(text));
}

static void test_model_sharded(void **state) {
    (void)state;
    make_dir("sharded");
    const char *s1[] = {"model.layers.1.mlp.gate.weight", "lm_head.weight", "extra.unlisted"};
    const char *s2[] = {"model.layers.0.mlp.gate.weight", "model.embed.weight"};
    write_tensors(tpath("sharded/model-00001-of-00002.safetensors"), s1, 3, 100);
    write_tensors(tpath("sharded/model-00002-of-00002.safetensors"), s2, 2, 200);
    write_text(tpath("sharded/model.safetensors.index.json"),
               "{\"metadata\": {\"total_size\": 80},\n \"weight_map\": {\n"
               "  \"model.layers.1.mlp.gate.weight\": \"model-00001-of-00002.safetensors\",\n"
               "  \"model.layers.0.mlp.gate.weight\": \"model-00002-of-00002.safetensors\",\n"
               "  \"lm_head.weight\": \"model-00001-of-00002.safetensors\",\n"
               "  \"model.embed.weight\": \"model-00002-of-00002.safetensors\"}}");
    mxm_st_model *m;
    assert_int_equal(mxm_st_model_open(tpath("sharded"), &m), MXM_OK);
    assert_int_equal(mxm_st_model_file_count(m), 2); /* each shard opened once */
    assert_int_equal(mxm_st_model_count(m), 4);      /* the weight_map entries */
    const char *sorted[] = {"lm_head.weight", "model.embed.weight",
                            "model.layers.0.mlp.gate.weight", "model.layers.1.mlp.gate.weight"};
    for (int i = 0; i < 4; i++) {
        const mxm_st_tensor *t = mxm_st_model_at(m, i);
        assert_string_equal(t->name, sorted[i]);
        const mxm_st_file *sf;
        assert_ptr_equal(mxm_st_model_find(m, sorted[i], &sf), t);
        assert_ptr_equal(sf, mxm_st_model_file_of(m, i));
        assert_ptr_equal(mxm_st_find(sf, sorted[i]), t);
    }
    const mxm_st_file *sf = NULL;
    const mxm_st_tensor *t = mxm_st_model_find(m, "model.embed.weight", &sf);
    assert_non_null(strstr(mxm_st_path(sf), "model-00002-of-00002.safetensors"));
    float v;
    memcpy(&v, (const uint8_t *)t->data + 4, 4);
    assert_true(v == 205.0f);
    assert_null(mxm_st_model_find(m, "extra.unlisted", &sf)); /* not in the weight_map */
    assert_null(sf);
    assert_null(mxm_st_model_find(m, "nope", NULL));
    assert_null(mxm_st_model_at(m, 4));
    mxm_st_model_close(m);
    mxm_st_model_close(NULL);
}

static void test_model_single_and_folder(void **state) {
    (void)state;
    mxm_st_model *m;
    /* model.safetensors wins over other files */
    make_dir("single");
    const char *a[] = {"w2", "w1"};
    const char *b[] = {"other"};
    write_tensors(tpath("single/model.safetensors"), a, 2, 0);
    write_tensors(tpath("single/consolidated.safetensors"), b, 1, 0);
    assert_int_equal(mxm_st_model_open(tpath("single"), &m), MXM_OK);
    assert_int_equal(mxm_st_model_count(m), 2);
    assert_string_equal(mxm_st_model_at(m, 0)->name, "w1");
    assert_null(mxm_st_model_find(m, "other", NULL));
    mxm_st_model_close(m);
    /* a path to one file */
    assert_int_equal(mxm_st_model_open(tpath("single/consolidated.safetensors"), &m), MXM_OK);
    assert_int_equal(mxm_st_model_count(m), 1);
    mxm_st_model_close(m);
    /* a folder of *.safetensors (hidden and non-.safetensors files skipped) */
    make_dir("folder");
    const char *c[] = {"c.1", "a.1"};
    const char *d[] = {"b.1"};
    write_tensors(tpath("folder/part-b.safetensors"), c, 2, 0);
    write_tensors(tpath("folder/part-a.safetensors"), d, 1, 0);
    write_text(tpath("folder/._part-a.safetensors"), "garbage");
    write_text(tpath("folder/notes.txt"), "hello");
    make_dir("folder/dir.safetensors");
    assert_int_equal(mxm_st_model_open(tpath("folder"), &m), MXM_OK);
    assert_int_equal(mxm_st_model_file_count(m), 2);
    assert_int_equal(mxm_st_model_count(m), 3);
    assert_string_equal(mxm_st_model_at(m, 0)->name, "a.1");
    assert_string_equal(mxm_st_model_at(m, 1)->name, "b.1");
    assert_string_equal(mxm_st_model_at(m, 2)->name, "c.1");
    assert_non_null(strstr(mxm_st_path(mxm_st_model_file(m, 0)), "part-a"));
    mxm_st_model_close(m);
    /* the same tensor in two files */
    const char *e[] = {"b.1"};
    write_tensors(tpath("folder/part-c.safetensors"), e, 1, 0);
    assert_int_equal(mxm_st_model_open(tpath("folder"), &m), MXM_ERR_FORMAT);
    assert_null(m);
    assert_contains(mxm_last_error(), "'b.1'");
    assert_contains(mxm_last_error(), "part-a.safetensors");
    assert_contains(mxm_last_error(), "part-c.safetensors");
    /* a broken file in the folder */
    unlink(tpath("folder/part-c.safetensors"));
    write_file(tpath("folder/part-d.safetensors"), "\x05\0\0\0\0\0\0\0{}  ", 12);
    assert_int_equal(mxm_st_model_open(tpath("folder"), &m), MXM_ERR_FORMAT);
    assert_contains(mxm_last_error(), "part-d.safetensors");
    /* nothing there */
    make_dir("emptydir");
    assert_int_equal(mxm_st_model_open(tpath("emptydir"), &m), MXM_ERR_NOT_FOUND);
    assert_contains(mxm_last_error(), "emptydir");
    assert_int_equal(mxm_st_model_open(tpath("does-not-exist"), &m), MXM_ERR_NOT_FOUND);
    assert_int_equal(mxm_st_model_open(NULL, &m), MXM_ERR_NULL);
}

static void broken_index(const char *dir, const char *index, mxm_status want, const char *s1,
                         const char *s2) {
    char rel[256];
    snprintf(rel, sizeof rel, "%s/model.safetensors.index.json", dir);
    write_text(tpath(rel), index);
    mxm_st_model *m = (mxm_st_model *)(uintptr_t)1;
    const mxm_status st = mxm_st_model_open(tpath(dir), &m);
    if (st != want) print_error("status %d: %s\n", st, mxm_last_error());
    assert_int_equal(st, want);
    assert_null(m);
    assert_contains(mxm_last_error(), "model.safetensors.index.json");
    if (s1) assert_contains(mxm_last_error(), s1);
    if (s2) assert_contains(mxm_last_error(), s2);
}

static void test_model_broken_index(void **state) {
    (void)state;
    make_dir("bi");
    const char *s1[] = {"a", "b"};
    write_tensors(tpath("bi/shard1.safetensors"), s1, 2, 0);
    /* missing shard */
    broken_index("bi",
                 "{\"weight_map\":{\"a\":\"shard1.safetensors\",\"b\":\"shard2.safetensors\"}}",
                 MXM_ERR_IO, "shard2.safetensors", "No such file");
    /* tensor listed but absent from its shard */
    broken_index("bi",
                 "{\"weight_map\":{\"a\":\"shard1.safetensors\",\"zz\":\"shard1.safetensors\"}}",
                 MXM_ERR_FORMAT, "'zz'", "shard1.safetensors");
    /* invalid JSON, not an object, weight_map missing or of the wrong types */
    broken_index("bi", "{\"weight_map\":{\"a\":\"shard1.safetensors\",}", MXM_ERR_FORMAT,
                 "not valid JSON", NULL);
    broken_index("bi", "[]", MXM_ERR_FORMAT, "not a JSON object", NULL);
    broken_index("bi", "{\"metadata\":{}}", MXM_ERR_FORMAT, "weight_map", NULL);
    broken_index("bi", "{\"weight_map\":[]}", MXM_ERR_FORMAT, "weight_map", NULL);
    broken_index("bi", "{\"weight_map\":{\"a\":1}}", MXM_ERR_FORMAT, "'a'", "not a string");
    broken_index("bi", "{\"weight_map\":{\"a\":\"s\",\"a\":\"s\"}}", MXM_ERR_FORMAT, "duplicate",
                 NULL);
    broken_index("bi", "{\"weight_map\":{\"a\":\"s\xff\"}}", MXM_ERR_FORMAT, "UTF-8", NULL);
    /* shard names must stay inside the folder */
    broken_index("bi", "{\"weight_map\":{\"a\":\"../bi/shard1.safetensors\"}}", MXM_ERR_FORMAT,
                 "leaves the model folder", NULL);
    broken_index("bi", "{\"weight_map\":{\"a\":\"/etc/passwd\"}}", MXM_ERR_FORMAT, "absolute",
                 NULL);
    broken_index("bi", "{\"weight_map\":{\"a\":\"\"}}", MXM_ERR_FORMAT, "'a'", NULL);
    /* a broken shard */
    write_file(tpath("bi/shard3.safetensors"), "\x02\0\0\0\0\0\0\0{", 9);
    broken_index("bi", "{\"weight_map\":{\"a\":\"shard3.safetensors\"}}", MXM_ERR_FORMAT,
                 "shard3.safetensors", "header length");
    /* the same checks on a buffer */
    int64_t nt = -1, ns = -1;
    const char *idx =
        "{\"metadata\":{\"total_size\":1},\"weight_map\":{\"b\":\"s1\",\"a\":\"./s1\","
        "\"c\":\"s2\"}}";
    assert_int_equal(mxm_st_index_check_memory(idx, (int64_t)strlen(idx), "idx", &nt, &ns), MXM_OK);
    assert_int_equal(nt, 3);
    assert_int_equal(ns, 2);
    idx = "{\"weight_map\":{\"b\":\"s1\"},\"weight_map\":{}}";
    assert_int_equal(mxm_st_index_check_memory(idx, (int64_t)strlen(idx), "idx", &nt, &ns),
                     MXM_ERR_FORMAT);
    assert_contains(mxm_last_error(), "idx: duplicate key \"weight_map\"");
    idx = "{\"x\":1,\"weight_map\":{},\"x\":2}";
    assert_int_equal(mxm_st_index_check_memory(idx, (int64_t)strlen(idx), "idx", NULL, NULL),
                     MXM_ERR_FORMAT);
    assert_contains(mxm_last_error(), "index has a duplicate key \"x\"");
    idx = "{\"weight_map\":{}} x";
    assert_int_equal(mxm_st_index_check_memory(idx, (int64_t)strlen(idx), "idx", NULL, NULL),
                     MXM_ERR_FORMAT);
    assert_contains(mxm_last_error(), "index is not valid JSON");
    /* and a good one again, with a subfolder shard */
    make_dir("bi/sub");
    const char *s4[] = {"c"};
    write_tensors(tpath("bi/sub/s4.safetensors"), s4, 1, 0);
    write_text(tpath("bi/model.safetensors.index.json"),
               "{\"weight_map\":{\"a\":\"shard1.safetensors\",\"c\":\"sub/s4.safetensors\","
               "\"b\":\"./shard1.safetensors\"}}");
    mxm_st_model *m;
    assert_int_equal(mxm_st_model_open(tpath("bi"), &m), MXM_OK);
    assert_int_equal(mxm_st_model_count(m), 3);
    assert_int_equal(mxm_st_model_file_count(m), 2); /* "./shard1" is "shard1" */
    mxm_st_model_close(m);
}

/* ------------------------------------------------------------------------------------------ */
/* malformed files: one test each */

static void test_bad_truncated_file(void **state) {
    (void)state;
    const uint8_t b[5] = {8, 0, 0, 0, 0};
    expect_fail_bytes("trunc5.safetensors", b, 5, MXM_ERR_FORMAT, "5 bytes", "shorter than");
    expect_fail_bytes("trunc0.safetensors", b, 0, MXM_ERR_FORMAT, "0 bytes", "shorter than");
}

static void test_bad_truncated_header(void **state) {
    (void)state;
    const char *h = "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}";
    size_t len;
    uint8_t *b = build_raw(strlen(h), h, strlen(h), 1, &len);
    /* cut inside the header */
    expect_fail_bytes("trunchdr.safetensors", b, 8 + 20, MXM_ERR_FORMAT, "header length 53",
                      "truncated");
    /* cut the data: the tensor extends past the end */
    expect_fail_bytes("truncdata.safetensors", b, len - 1, MXM_ERR_FORMAT, "'a'", "past the end");
    free(b);
}

static void test_bad_header_length(void **state) {
    (void)state;
    size_t len;
    uint8_t *b = build_raw(200000000ull, "{}", 2, 0, &len);
    expect_fail_bytes("huge.safetensors", b, len, MXM_ERR_FORMAT, "200000000", "limit");
    free(b);
    b = build_raw(UINT64_MAX, "{}", 2, 0, &len);
    expect_fail_bytes("max.safetensors", b, len, MXM_ERR_FORMAT, "18446744073709551615", "limit");
    free(b);
    b = build_raw(100000000ull, "{}", 2, 0, &len); /* at the limit, but past the file */
    expect_fail_bytes("past.safetensors", b, len, MXM_ERR_FORMAT, "100000000", "exceeds the 2");
    free(b);
    b = build_raw(3, "{}", 2, 0, &len);
    expect_fail_bytes("past1.safetensors", b, len, MXM_ERR_FORMAT, "header length 3", "exceeds");
    free(b);
    b = build_raw(0, "{}", 2, 0, &len);
    expect_fail_bytes("zero.safetensors", b, len, MXM_ERR_FORMAT, "header length is 0", NULL);
    free(b);
}

static void test_bad_utf8(void **state) {
    (void)state;
    const char *bad[] = {
        "{\"a\xc0\xaf\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", /* overlong */
        "{\"a\xed\xa0\x80\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", /* surrogate
                                                                                        */
        "{\"a\xf5\x80\x80\x80\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", /* > F4
                                                                                            */
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}\xe2\x82", /* truncated */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_fail_hdr("utf8.safetensors", bad[i], 1, MXM_ERR_FORMAT, "not valid UTF-8",
                        "header offset");
}

static void test_bad_json(void **state) {
    (void)state;
    expect_fail_hdr("json1.safetensors", "{\"a\":{\"dtype\":\"U8\",", 0, MXM_ERR_FORMAT,
                    "not valid JSON", NULL);
    expect_fail_hdr("json2.safetensors", "{} x", 0, MXM_ERR_FORMAT, "not valid JSON", NULL);
    size_t len;
    uint8_t *b = build_raw(4, "{}\0\0", 4, 0, &len); /* NUL padding is not whitespace */
    expect_fail_bytes("json3.safetensors", b, len, MXM_ERR_FORMAT, "not valid JSON", NULL);
    free(b);
    expect_fail_hdr("json4.safetensors", "[1, 2]  ", 0, MXM_ERR_FORMAT, "not a JSON object", NULL);
    expect_fail_hdr("json5.safetensors", "{\"a\\u0000b\":1}", 0, MXM_ERR_FORMAT, "not valid JSON",
                    NULL);
    /* a size too big for int64 */
    expect_fail_hdr("json6.safetensors",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[99999999999999999999],"
                    "\"data_offsets\":[0,1]}}",
                    0, MXM_ERR_OVERFLOW, "'a'", "shape[0] does not fit in int64");
    expect_fail_hdr("json7.safetensors",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],"
                    "\"data_offsets\":[0,18446744073709551617]}}",
                    0, MXM_ERR_OVERFLOW, "'a'", "data_offsets[1] does not fit in int64");
    /* strict RFC 8259 */
    const char *bad[] = {
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],}}", /* trailing , */
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,],\"data_offsets\":[0,1]}}",
        "{,}",
        "{\"a\" {}}",
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[01],\"data_offsets\":[0,1]}}", /* leading 0 */
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[-],\"data_offsets\":[0,1]}}",
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[1.],\"data_offsets\":[0,1]}}",
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"x\":1e,\"data_offsets\":[0,1]}}",
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"x\":tru,\"data_offsets\":[0,1]}}",
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"x\":NaN,\"data_offsets\":[0,1]}}",
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"x\":'s',\"data_offsets\":[0,1]}}",
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}} /* c */",
        "{\"a\\ud800\":{}}",        /* lone high surrogate */
        "{\"a\\udc00\":{}}",        /* lone low surrogate */
        "{\"a\\ud800\\u0041\":{}}", /* high surrogate + non-surrogate */
        "{\"a\\u12\":{}}",          /* short \u */
        "{\"a\\x41\":{}}",          /* invalid escape */
        "{\"a\tb\":{}}",            /* raw control character */
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}",
        "{\"a",
        " ",
        "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        expect_fail_hdr("jsonx.safetensors", bad[i], 1, MXM_ERR_FORMAT, "not valid JSON", NULL);
    }
    expect_fail_hdr("json8.safetensors", "\"str\"", 0, MXM_ERR_FORMAT, "not a JSON object", NULL);
    expect_fail_hdr("json9.safetensors", "12", 0, MXM_ERR_FORMAT, "not a JSON object", NULL);
}

/* What the header parser accepts: escapes, any whitespace, unknown fields of any JSON type
 * (ignored), -0, and large headers rejected in linear time and constant extra memory. */
static void test_json_accepted(void **state) {
    (void)state;
    const char *h =
        "\r\n\t {\"\\u0061\\u00e9\\ud83d\\ude00\\/\\\"\\n\" : {\"\\u0064type\":\"U\\u0038\","
        "\"extra\":{\"k\":[1,-2.5e+3,0.0,true,false,null,\"s\",{},[]],\"k2\":{\"k\":1}},"
        "\"shape\":[ -0 , 2 ],\"data_offsets\":[0,0],\"more\":\"\"} } \t\r\n";
    const char *p = write_st("json_ok.safetensors", h, 0);
    mxm_st_file *f;
    const mxm_status st = mxm_st_open(p, &f);
    if (st != MXM_OK) print_error("%s\n", mxm_last_error());
    assert_int_equal(st, MXM_OK);
    const mxm_st_tensor *t = mxm_st_at(f, 0);
    assert_string_equal(t->name, "a\xc3\xa9\xf0\x9f\x98\x80/\"\n");
    assert_string_equal(t->dtype_str, "U8");
    assert_int_equal(t->rank, 2);
    assert_int_equal(t->shape[0], 0);
    assert_int_equal(t->shape[1], 2);
    mxm_st_close(f);

    /* Duplicate keys anywhere, also inside ignored fields. */
    expect_fail_hdr("dupx.safetensors",
                    "{\"a\":{\"dtype\":\"U8\",\"x\":1,\"shape\":[0],\"x\":2,"
                    "\"data_offsets\":[0,0]}}",
                    0, MXM_ERR_FORMAT, "tensor 'a' has a duplicate key \"x\"", NULL);
    expect_fail_hdr("dupy.safetensors",
                    "{\"a\":{\"dtype\":\"U8\",\"x\":{\"y\":1,\"z\":2,\"y\":3},\"shape\":[0],"
                    "\"data_offsets\":[0,0]}}",
                    0, MXM_ERR_FORMAT, "duplicate key \"y\"", NULL);
    expect_fail_hdr("dupz.safetensors",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},"
                    "\"\\u0061\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}",
                    0, MXM_ERR_FORMAT, "duplicate tensor name 'a'", NULL);
    expect_fail_hdr("dupm.safetensors", "{\"__metadata__\":{},\"__metadata__\":{}}", 0,
                    MXM_ERR_FORMAT, "duplicate key \"__metadata__\"", NULL);
    expect_fail_hdr("dupn.safetensors", "{\"__metadata__\":{\"k\":\"1\",\"j\":\"2\",\"k\":\"3\"}}",
                    0, MXM_ERR_FORMAT, "__metadata__ has a duplicate key \"k\"", NULL);
    /* Deep nesting in an ignored field. */
    char deep[400];
    int k = snprintf(deep, sizeof deep, "{\"a\":{\"x\":");
    for (int i = 0; i < 100; i++)
        deep[k++] = '[';
    for (int i = 0; i < 100; i++)
        deep[k++] = ']';
    snprintf(deep + k, sizeof deep - (size_t)k, "}}");
    expect_fail_hdr("deep.safetensors", deep, 0, MXM_ERR_FORMAT, "nested too deeply", NULL);

    /* A 20 MB header of "[0,0,0,...]" (a DOM parser needs ~400 MB for it). */
    const size_t nz = 10u << 20;
    const char *pre = "{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,0],\"shape\":[";
    const size_t hl = strlen(pre) + 2 * nz + 2;
    char *big = tu_alloc(hl + 1);
    memcpy(big, pre, strlen(pre));
    char *q = big + strlen(pre);
    for (size_t i = 0; i < nz; i++) {
        *q++ = '0';
        *q++ = ',';
    }
    q[-1] = ']';
    *q++ = '}';
    *q++ = '}';
    *q = '\0';
    assert_int_equal((size_t)(q - big), hl);
    char want[64];
    snprintf(want, sizeof want, "rank %zu exceeds 8", nz);
    expect_fail_hdr("bighdr.safetensors", big, 0, MXM_ERR_FORMAT, "'a'", want);
    free(big);
}

static void test_bad_duplicate_key(void **state) {
    (void)state;
    expect_fail_hdr("dup.safetensors",
                    "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                    "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
                    2, MXM_ERR_FORMAT, "duplicate tensor name", "'a'");
    expect_fail_hdr("dup2.safetensors",
                    "{\"a\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,"
                    "1]}}",
                    1, MXM_ERR_FORMAT, "tensor 'a' has a duplicate key", "dtype");
}

static void test_bad_hole(void **state) {
    (void)state;
    expect_fail_hdr("hole.safetensors",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                    12, MXM_ERR_FORMAT, "'b'", "hole of 4 bytes after tensor 'a'");
    expect_fail_hdr("hole0.safetensors",
                    "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
                    MXM_ERR_FORMAT, "'b'", "hole of 4 bytes after the data start");
}

static void test_bad_overlap(void **state) {
    (void)state;
    expect_fail_hdr("overlap.safetensors",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                    12, MXM_ERR_FORMAT, "'b'", "overlaps tensor 'a'");
    /* the same range twice */
    expect_fail_hdr("overlap2.safetensors",
                    "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"a\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                    8, MXM_ERR_FORMAT, "'b'", "overlaps tensor 'a'");
    /* a zero-size tensor inside another one */
    expect_fail_hdr("overlap3.safetensors",
                    "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
                    8, MXM_ERR_FORMAT, "'z'", "overlaps tensor 'a'");
}

static void test_bad_not_covering_end(void **state) {
    (void)state;
    expect_fail_hdr(
        "short.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}",
        16, MXM_ERR_FORMAT, "cover 12 bytes of the 16-byte data buffer", "4 trailing bytes");
    expect_fail_hdr("short2.safetensors", "{}", 1, MXM_ERR_FORMAT, "cover 0 bytes", "trailing");
}

static void test_bad_byte_count(void **state) {
    (void)state;
    expect_fail_hdr("count.safetensors",
                    "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                    MXM_ERR_FORMAT, "'w'", "hold 8 bytes, but F32 [3] needs 12");
    expect_fail_hdr("count2.safetensors",
                    "{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,4]}}", 4,
                    MXM_ERR_FORMAT, "'w'", "BF16 [2, 2] needs 8");
}

static void test_bad_overflowing_shape(void **state) {
    (void)state;
    expect_fail_hdr("ovf.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,4],"
                    "\"data_offsets\":[0,0]}}",
                    0, MXM_ERR_OVERFLOW, "'w'", "shape product overflows");
    expect_fail_hdr("ovf2.safetensors",
                    "{\"w\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],"
                    "\"data_offsets\":[0,0]}}",
                    0, MXM_ERR_OVERFLOW, "'w'", "overflow int64 bytes");
    expect_fail_hdr("ovf3.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[9223372036854775807],"
                    "\"data_offsets\":[0,9223372036854775807]}}",
                    0, MXM_ERR_FORMAT, "'w'", "past the end");
}

static void test_bad_rank(void **state) {
    (void)state;
    expect_fail_hdr("rank9.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                    "\"data_offsets\":[0,1]}}",
                    1, MXM_ERR_FORMAT, "'w'", "rank 9 exceeds 8");
}

static void test_bad_dtype(void **state) {
    (void)state;
    expect_fail_hdr("dtype.safetensors",
                    "{\"w\":{\"dtype\":\"F8_E4M3FNUZ\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                    MXM_ERR_FORMAT, "'w'", "unknown dtype 'F8_E4M3FNUZ'");
    expect_fail_hdr("dtype2.safetensors",
                    "{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                    MXM_ERR_FORMAT, "'w'", "unknown dtype 'f32'");
    expect_fail_hdr("dtype3.safetensors",
                    "{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, MXM_ERR_FORMAT,
                    "'w'", "\"dtype\" is not a string");
}

static void test_bad_offsets(void **state) {
    (void)state;
    expect_fail_hdr("neg.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[-1,-1]}}", 0,
                    MXM_ERR_FORMAT, "'w'", "data_offsets[0] = -1 is negative");
    expect_fail_hdr("neg2.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,-4]}}", 4,
                    MXM_ERR_FORMAT, "'w'", "data_offsets[1] = -4 is negative");
    expect_fail_hdr("rev.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,2]}}", 4,
                    MXM_ERR_FORMAT, "'w'", "begin 4 is after end 2");
    expect_fail_hdr("three.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2,4]}}", 2,
                    MXM_ERR_FORMAT, "'w'", "two integers");
    expect_fail_hdr("realoff.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2.0]}}", 2,
                    MXM_ERR_FORMAT, "'w'", "data_offsets[1] is not an integer");
    expect_fail_hdr("stroff.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":\"0,2\"}}", 2,
                    MXM_ERR_FORMAT, "'w'", "two integers");
}

static void test_bad_dims(void **state) {
    (void)state;
    expect_fail_hdr("negdim.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[2,-3],\"data_offsets\":[0,0]}}", 0,
                    MXM_ERR_FORMAT, "'w'", "shape[1] = -3 is negative");
    expect_fail_hdr("realdim.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[2.0],\"data_offsets\":[0,2]}}", 2,
                    MXM_ERR_FORMAT, "'w'", "shape[0] is not an integer");
    expect_fail_hdr("strdim.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[\"2\"],\"data_offsets\":[0,2]}}", 2,
                    MXM_ERR_FORMAT, "'w'", "shape[0] is not an integer");
    expect_fail_hdr("nulldim.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":[null],\"data_offsets\":[0,2]}}", 2,
                    MXM_ERR_FORMAT, "'w'", "shape[0] is not an integer");
    expect_fail_hdr("objshape.safetensors",
                    "{\"w\":{\"dtype\":\"U8\",\"shape\":{},\"data_offsets\":[0,2]}}", 2,
                    MXM_ERR_FORMAT, "'w'", "\"shape\" is not an array");
}

static void test_bad_entries(void **state) {
    (void)state;
    expect_fail_hdr("nodtype.safetensors", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                    MXM_ERR_FORMAT, "'w'", "missing \"dtype\"");
    expect_fail_hdr("noshape.safetensors", "{\"w\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", 1,
                    MXM_ERR_FORMAT, "'w'", "missing \"shape\"");
    expect_fail_hdr("nooff.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", 1,
                    MXM_ERR_FORMAT, "'w'", "missing \"data_offsets\"");
    expect_fail_hdr("notobj.safetensors", "{\"w\":[1]}", 0, MXM_ERR_FORMAT, "'w'",
                    "not a JSON object");
    expect_fail_hdr("emptyname.safetensors",
                    "{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
                    MXM_ERR_FORMAT, "empty name", NULL);
}

static void test_bad_metadata(void **state) {
    (void)state;
    expect_fail_hdr("meta.safetensors", "{\"__metadata__\":{\"format\":\"pt\",\"n\":3}}", 0,
                    MXM_ERR_FORMAT, "__metadata__ value of key 'n'", "not a string");
    expect_fail_hdr("meta2.safetensors", "{\"__metadata__\":{\"x\":null}}", 0, MXM_ERR_FORMAT,
                    "key 'x'", "not a string");
    expect_fail_hdr("meta3.safetensors", "{\"__metadata__\":[\"pt\"]}", 0, MXM_ERR_FORMAT,
                    "__metadata__ is not a JSON object", NULL);
    expect_fail_hdr("meta4.safetensors", "{\"__metadata__\":\"pt\"}", 0, MXM_ERR_FORMAT,
                    "__metadata__ is not a JSON object", NULL);
}

static void test_bad_paths(void **state) {
    (void)state;
    mxm_st_file *f;
    assert_int_equal(mxm_st_open(tpath("missing.safetensors"), &f), MXM_ERR_IO);
    assert_null(f);
    assert_contains(mxm_last_error(), "missing.safetensors");
    assert_contains(mxm_last_error(), "No such file");
    make_dir("adir.safetensors");
    assert_int_equal(mxm_st_open(tpath("adir.safetensors"), &f), MXM_ERR_IO);
    assert_contains(mxm_last_error(), "not a regular file");
    /* a FIFO neither blocks nor passes */
    assert_int_equal(mkfifo(tpath("fifo.safetensors"), 0644), 0);
    assert_int_equal(mxm_st_open(tpath("fifo.safetensors"), &f), MXM_ERR_IO);
    assert_contains(mxm_last_error(), "not a regular file");
    assert_int_equal(mxm_st_open(NULL, &f), MXM_ERR_NULL);
    assert_int_equal(mxm_st_open_memory(NULL, 8, "x", &f), MXM_ERR_NULL);
    assert_int_equal(mxm_st_open_memory("", -1, "x", &f), MXM_ERR_INVALID_ARG);
}

/* Every single-byte truncation and a sweep of single-byte corruptions of a valid file: each
 * either opens consistently or fails with a message; never crashes (ASan build). */
static void test_corruption_sweep(void **state) {
    (void)state;
    size_t len;
    uint8_t *good = build_raw(strlen(VALID_HDR), VALID_HDR, strlen(VALID_HDR), VALID_DATA, &len);
    uint8_t *b = tu_alloc(len);
    int ok = 0, failed = 0;
    for (size_t cut = 0; cut < len; cut++) {
        memcpy(b, good, cut);
        mxm_st_file *f;
        const mxm_status st = mxm_st_open_memory(b, (int64_t)cut, "cut", &f);
        assert_int_not_equal(st, MXM_OK);
        assert_true(st == MXM_ERR_FORMAT);
    }
    const uint8_t repl[] = {0x00, 0x22, 0x2c, 0x2d, 0x39, 0x5b, 0x7d, 0xff};
    for (size_t pos = 0; pos < 8 + strlen(VALID_HDR); pos++) {
        for (size_t r = 0; r < sizeof repl; r++) {
            memcpy(b, good, len);
            b[pos] = repl[r];
            mxm_st_file *f;
            const mxm_status st = mxm_st_open_memory(b, (int64_t)len, "sweep", &f);
            if (st == MXM_OK) {
                ok++;
                for (int64_t i = 0; i < mxm_st_count(f); i++)
                    assert_true(mxm_st_at(f, i)->offset + mxm_st_at(f, i)->nbytes <= VALID_DATA);
                mxm_st_close(f);
            } else {
                failed++;
                assert_true(st == MXM_ERR_FORMAT || st == MXM_ERR_OVERFLOW);
                assert_contains(mxm_last_error(), "sweep");
            }
        }
    }
    assert_true(failed > 0);
    (void)ok;
    free(b);
    free(good);
}

/* Rank of a dtype in the reference writer's order (it writes descending ranks first). */
static int ref_rank(const char *dtype) {
    static const char *order[] = {"BOOL", "U8",  "I8",  "F8_E5M2", "F8_E4M3", "F8_E8M0",
                                  "I16",  "U16", "F16", "BF16",    "I32",     "U32",
                                  "F32",  "F64", "I64", "U64"};
    for (int i = 0; i < 16; i++)
        if (strcmp(order[i], dtype) == 0) return i;
    return -1;
}

static int cmp_dtype_order(const void *a, const void *b) {
    const mxm_st_tensor *x = *(const mxm_st_tensor *const *)a,
                        *y = *(const mxm_st_tensor *const *)b;
    const int rx = ref_rank(x->dtype_str), ry = ref_rank(y->dtype_str);
    if (rx != ry) return ry - rx;
    return strcmp(x->name, y->name);
}

static int cmp_size_order(const void *a, const void *b) {
    const mxm_st_tensor *x = *(const mxm_st_tensor *const *)a,
                        *y = *(const mxm_st_tensor *const *)b;
    int32_t sx, sy;
    mxm_st_dtype_from_str(x->dtype_str, &sx);
    mxm_st_dtype_from_str(y->dtype_str, &sy);
    if (sx != sy) return sy - sx;
    return strcmp(x->name, y->name);
}

/* 1 if f has the layout the writer gives its tensors in this order. */
static int in_layout(const mxm_st_file *f, mxm_st_order order) {
    const int64_t n = mxm_st_count(f);
    const mxm_st_tensor **v = tu_alloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++)
        v[i] = mxm_st_at(f, i);
    qsort(v, (size_t)n, sizeof *v, order == MXM_ST_ORDER_DTYPE ? cmp_dtype_order : cmp_size_order);
    int64_t off = 0;
    int ok = 1;
    for (int64_t i = 0; i < n; i++) {
        ok &= v[i]->offset == off;
        off += v[i]->nbytes;
    }
    free(v);
    return ok;
}

/* Real files (tests/data), when present: they open, tile exactly, open as model folders, and
 * our writer reproduces them in whichever of its two orders they are laid out (the BF16
 * fixtures fit both, the *_mxfp8 fixtures interleave F8_E4M3 and U8 by name): the data buffer
 * byte for byte, and the whole file when __metadata__ has at most one key (the safetensors
 * library emits several keys in hash order). Every file is also rewritten tensor for tensor. */
static void test_data_files(void **state) {
    (void)state;
    glob_t g;
    int r = glob(tu_src_path("tests/data/*.safetensors"), 0, NULL, &g);
    r = glob(tu_src_path("tests/data/*/*.safetensors"), r == 0 ? GLOB_APPEND : 0, NULL, &g);
    if (g.gl_pathc == 0) {
        globfree(&g);
        skip();
        return;
    }
    int exact = 0;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        const char *path = g.gl_pathv[i];
        mxm_st_file *f;
        const mxm_status st = mxm_st_open(path, &f);
        if (st != MXM_OK) print_error("%s\n", mxm_last_error());
        assert_int_equal(st, MXM_OK);
        assert_true(mxm_st_count(f) > 0);
        int64_t covered = 0;
        for (int64_t k = 0; k < mxm_st_count(f); k++) {
            const mxm_st_tensor *t = mxm_st_at(f, k);
            assert_int_equal(t->offset, covered);
            covered += t->nbytes;
            assert_ptr_equal(mxm_st_find(f, t->name), t);
        }
        assert_int_equal(covered, mxm_st_data_size(f));

        /* Rewrite it (tensors added in reverse data order) and compare. */
        const int by_size = in_layout(f, MXM_ST_ORDER_SIZE), by_dtype = in_layout(f, MXM_ST_ORDER_DTYPE);
        const char *out = tpath("rewrite.safetensors");
        mxm_st_writer *w;
        assert_int_equal(mxm_st_writer_create(out, &w), MXM_OK);
        mxm_st_writer_set_order(w, by_size ? MXM_ST_ORDER_SIZE : MXM_ST_ORDER_DTYPE);
        for (int64_t k = mxm_st_count(f) - 1; k >= 0; k--) {
            const mxm_st_tensor *t = mxm_st_at(f, k);
            assert_int_equal(
                mxm_st_writer_add(w, t->name, t->dtype_str, t->rank, t->shape, t->data, t->nbytes),
                MXM_OK);
        }
        for (int64_t k = 0; k < mxm_st_metadata_count(f); k++) {
            const char *key, *value;
            mxm_st_metadata_at(f, k, &key, &value);
            assert_int_equal(mxm_st_writer_set_metadata(w, key, value), MXM_OK);
        }
        assert_int_equal(mxm_st_writer_finish(w), MXM_OK);
        mxm_st_file *g2;
        assert_int_equal(mxm_st_open(out, &g2), MXM_OK);
        assert_int_equal(mxm_st_count(g2), mxm_st_count(f));
        assert_int_equal(mxm_st_data_size(g2), mxm_st_data_size(f));
        for (int64_t k = 0; k < mxm_st_count(f); k++) {
            const mxm_st_tensor *t = mxm_st_at(f, k), *u = mxm_st_find(g2, t->name);
            assert_non_null(u);
            assert_string_equal(u->dtype_str, t->dtype_str);
            assert_int_equal(u->rank, t->rank);
            assert_memory_equal(u->shape, t->shape, sizeof t->shape);
            if (t->nbytes) assert_memory_equal(u->data, t->data, (size_t)t->nbytes);
        }
        if (by_size || by_dtype) {
            size_t la, lb;
            uint8_t *a = read_file(path, &la);
            uint8_t *b = read_file(out, &lb);
            const size_t data = (size_t)mxm_st_data_size(f);
            assert_memory_equal(a + la - data, b + lb - data, data);
            if (mxm_st_metadata_count(f) <= 1) {
                assert_int_equal(la, lb);
                assert_memory_equal(a, b, la);
                exact++;
            }
            free(a);
            free(b);
        }
        mxm_st_close(g2);
        mxm_st_close(f);

        /* Its folder opens as a model. */
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        assert_non_null(slash);
        *slash = '\0';
        mxm_st_model *m;
        const mxm_status ms = mxm_st_model_open(dir, &m);
        if (ms != MXM_OK) print_error("%s\n", mxm_last_error());
        assert_int_equal(ms, MXM_OK);
        assert_true(mxm_st_model_count(m) > 0);
        mxm_st_model_close(m);
    }
    print_message("[ info ] %zu files from tests/data, %d reproduced byte for byte\n", g.gl_pathc,
                  exact);
    globfree(&g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_helpers),
        cmocka_unit_test(test_utf8_validator),
        cmocka_unit_test(test_valid_file),
        cmocka_unit_test(test_empty_and_zero_size),
        cmocka_unit_test(test_writer_roundtrip),
        cmocka_unit_test(test_writer_exact_bytes),
        cmocka_unit_test(test_writer_matches_python),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_model_sharded),
        cmocka_unit_test(test_model_single_and_folder),
        cmocka_unit_test(test_model_broken_index),
        cmocka_unit_test(test_bad_truncated_file),
        cmocka_unit_test(test_bad_truncated_header),
        cmocka_unit_test(test_bad_header_length),
        cmocka_unit_test(test_bad_utf8),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_json_accepted),
        cmocka_unit_test(test_bad_duplicate_key),
        cmocka_unit_test(test_bad_hole),
        cmocka_unit_test(test_bad_overlap),
        cmocka_unit_test(test_bad_not_covering_end),
        cmocka_unit_test(test_bad_byte_count),
        cmocka_unit_test(test_bad_overflowing_shape),
        cmocka_unit_test(test_bad_rank),
        cmocka_unit_test(test_bad_dtype),
        cmocka_unit_test(test_bad_offsets),
        cmocka_unit_test(test_bad_dims),
        cmocka_unit_test(test_bad_entries),
        cmocka_unit_test(test_bad_metadata),
        cmocka_unit_test(test_bad_paths),
        cmocka_unit_test(test_corruption_sweep),
        cmocka_unit_test(test_data_files),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
