/* libFuzzer target for the safetensors reader. Every input is parsed as a whole file with
 * mxm_st_open_memory. On success every tensor's name, shape and bytes are touched (so ASan
 * sees any pointer that leaves the buffer) and the lookups and the tiling are cross-checked.
 * The same bytes are also checked as a model.safetensors.index.json.
 * Differential oracle: the header (and the index) is also parsed by jansson (a DOM JSON parser,
 * with JSON_REJECT_DUPLICATES), and the two must agree:
 *   - accepted by mxmoe  => jansson parses it too (except integers/reals jansson cannot hold,
 *     which mxmoe only ever skips in unknown fields) and sees the same tensors and metadata;
 *   - rejected by mxmoe as "not valid JSON" => jansson rejects it too (except nesting deeper
 *     than mxmoe's limit for ignored fields, and raw NUL bytes, which jansson's byte stream
 *     mishandles: it accepts "[2<NUL>,3]"; mxmoe rejects every NUL byte).
 *
 * Build: CC=clang cmake -S . -B build-fuzz -DMXM_FUZZ=ON -DMXM_CUDA=OFF -DMXM_WERROR=OFF
 *        cmake --build build-fuzz --target fuzz_safetensors       (see docs/fuzzing.md)
 * Run:   build-fuzz/fuzz_safetensors -max_total_time=600 -rss_limit_mb=2048 \
 *            -dict=tests/fuzz/fuzz_safetensors.dict NEW_CORPUS tests/fuzz/corpus_safetensors */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_safetensors: check failed: %s (line %d); last error: %s\n", #c,  \
                    __LINE__, mxm_last_error());                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A JSON syntax error (the message starts with prefix; names in messages are hostile text)
 * other than mxmoe's nesting limit for ignored values, which jansson does not share. */
static int is_json_syntax_error(const char *msg, const char *prefix) {
    const size_t l = strlen(prefix);
    return strncmp(msg, prefix, l) == 0 && strncmp(msg + l, "values nested too deeply", 24) != 0;
}

static void compare_with_jansson(const mxm_st_file *f, mxm_status st, const uint8_t *data,
                                 size_t size) {
    if (size < 8) return;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | data[i];
    if (n == 0 || n > MXM_ST_MAX_HEADER || n > size - 8) return;
    if (mxm_st_utf8_invalid_at(data + 8, (int64_t)n) >= 0) return;
    /* jansson's byte stream mishandles raw NUL bytes (it can skip them); mxmoe rejects them. */
    if (memchr(data + 8, 0, (size_t)n)) {
        CHECK(st != MXM_OK);
        return;
    }
    char err_copy[256];
    snprintf(err_copy, sizeof err_copy, "%s", st == MXM_OK ? "" : mxm_last_error());

    json_error_t e;
    json_t *root = json_loadb((const char *)data + 8, (size_t)n, JSON_REJECT_DUPLICATES, &e);
    if (st != MXM_OK) {
        if (is_json_syntax_error(err_copy, "fuzz: header is not valid JSON: ")) {
            if (root) fprintf(stderr, "mxmoe rejected valid JSON: %s\n", err_copy);
            CHECK(root == NULL);
        }
        json_decref(root);
        return;
    }
    if (!root) {
        /* jansson cannot hold every valid JSON number; mxmoe skips them in ignored fields. */
        CHECK(strstr(e.text, "too big") || strstr(e.text, "overflow"));
        return;
    }
    CHECK(json_is_object(root));
    json_t *meta = json_object_get(root, "__metadata__");
    CHECK((int64_t)json_object_size(root) - (meta ? 1 : 0) == mxm_st_count(f));
    for (int64_t i = 0; i < mxm_st_count(f); i++) {
        const mxm_st_tensor *t = mxm_st_at(f, i);
        json_t *v = json_object_get(root, t->name);
        CHECK(json_is_object(v));
        CHECK(strcmp(json_string_value(json_object_get(v, "dtype")), t->dtype_str) == 0);
        json_t *sh = json_object_get(v, "shape");
        CHECK((int64_t)json_array_size(sh) == t->rank);
        for (int32_t k = 0; k < t->rank; k++)
            CHECK(json_integer_value(json_array_get(sh, (size_t)k)) == t->shape[k]);
        json_t *off = json_object_get(v, "data_offsets");
        CHECK(json_integer_value(json_array_get(off, 0)) == t->offset);
        CHECK(json_integer_value(json_array_get(off, 1)) == t->offset + t->nbytes);
    }
    CHECK((int64_t)json_object_size(meta) == mxm_st_metadata_count(f));
    for (int64_t i = 0; i < mxm_st_metadata_count(f); i++) {
        const char *k, *v;
        CHECK(mxm_st_metadata_at(f, i, &k, &v) == 0);
        CHECK(strcmp(json_string_value(json_object_get(meta, k)), v) == 0);
    }
    json_decref(root);
}

/* The same bytes as a model.safetensors.index.json, also checked against jansson. */
static void check_index(const uint8_t *data, size_t size) {
    int64_t nt = -1, ns = -1;
    const mxm_status st = mxm_st_index_check_memory(data, (int64_t)size, "fuzzidx", &nt, &ns);
    if (mxm_st_utf8_invalid_at(data, (int64_t)size) >= 0 || memchr(data, 0, size)) {
        CHECK(st == MXM_ERR_FORMAT);
        return;
    }
    char err_copy[256];
    snprintf(err_copy, sizeof err_copy, "%s", st == MXM_OK ? "" : mxm_last_error());
    json_error_t e;
    json_t *root = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &e);
    if (st != MXM_OK) {
        CHECK(strncmp(err_copy, "fuzzidx: ", 9) == 0);
        if (is_json_syntax_error(err_copy, "fuzzidx: index is not valid JSON: "))
            CHECK(root == NULL);
    } else if (!root) {
        CHECK(strstr(e.text, "too big") || strstr(e.text, "overflow"));
    } else {
        json_t *wm = json_object_get(root, "weight_map");
        CHECK(json_is_object(wm) && (int64_t)json_object_size(wm) == nt);
        CHECK(ns >= (nt > 0) && ns <= nt);
    }
    json_decref(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check_index(data, size);
    mxm_st_file *f = NULL;
    const mxm_status st = mxm_st_open_memory(data, (int64_t)size, "fuzz", &f);
    if (st != MXM_OK) {
        CHECK(f == NULL);
        CHECK(strncmp(mxm_last_error(), "fuzz: ", 6) == 0);
        CHECK(st == MXM_ERR_FORMAT || st == MXM_ERR_OVERFLOW);
        compare_with_jansson(NULL, st, data, size);
        return 0;
    }
    const int64_t n = mxm_st_count(f);
    const int64_t data_len = mxm_st_data_size(f);
    CHECK(8 + mxm_st_header_size(f) + data_len == (int64_t)size);
    volatile uint8_t sink = 0;
    int64_t covered = 0;
    for (int64_t i = 0; i < n; i++) {
        const mxm_st_tensor *t = mxm_st_at(f, i);
        CHECK(t != NULL && t->name[0] != '\0');
        CHECK(t->rank >= 0 && t->rank <= MXM_ST_MAX_RANK);
        CHECK(t->offset == covered);
        covered += t->nbytes;
        int32_t es = 0;
        CHECK(mxm_st_dtype_from_str(t->dtype_str, &es) == t->dtype && es == t->elem_size);
        int64_t numel = 1;
        for (int32_t k = 0; k < t->rank; k++)
            numel *= t->shape[k];
        CHECK(numel == t->numel && t->numel * t->elem_size == t->nbytes);
        CHECK((const uint8_t *)t->data == data + 8 + mxm_st_header_size(f) + t->offset);
        const uint8_t *p = t->data;
        for (int64_t b = 0; b < t->nbytes; b++)
            sink ^= p[b];
        const size_t len = strlen(t->name);
        CHECK(mxm_st_utf8_invalid_at((const uint8_t *)t->name, (int64_t)len) < 0);
        CHECK(mxm_st_find(f, t->name) == t);
    }
    CHECK(covered == data_len);
    for (int64_t i = 0; i < mxm_st_metadata_count(f); i++) {
        const char *k, *v;
        CHECK(mxm_st_metadata_at(f, i, &k, &v) == 0);
        CHECK(mxm_st_metadata(f, k) == v);
        sink ^= (uint8_t)strlen(v);
    }
    CHECK(mxm_st_find(f, "") == NULL);
    (void)sink;
    compare_with_jansson(f, st, data, size);
    mxm_st_close(f);
    return 0;
}
