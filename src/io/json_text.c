#include "io/json_text.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "io/safetensors.h"

static int ident_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* Length of the bare token tok at text + i (not followed by an identifier character), or 0. */
static size_t bare(const char *text, size_t len, size_t i, const char *tok) {
    const size_t n = strlen(tok);
    if (len - i < n || memcmp(text + i, tok, n) != 0) return 0;
    return i + n < len && ident_char(text[i + n]) ? 0 : n;
}

/* Length of the JSON number at text + i, or 0. */
static size_t number(const char *text, size_t len, size_t i) {
    size_t k = i;
    if (k < len && text[k] == '-') k++;
    const size_t d0 = k;
    while (k < len && text[k] >= '0' && text[k] <= '9') k++;
    if (k == d0) return 0;
    if (k < len && text[k] == '.')
        for (k++; k < len && text[k] >= '0' && text[k] <= '9';) k++;
    if (k < len && (text[k] == 'e' || text[k] == 'E')) {
        k++;
        if (k < len && (text[k] == '+' || text[k] == '-')) k++;
        while (k < len && text[k] >= '0' && text[k] <= '9') k++;
    }
    return k - i;
}

/* Copies text to a new buffer, replacing the non-finite tokens outside strings: for_load picks
 * the strings of mxm_json_loadb_hf, else the valid JSON of mxm_json_text_valid. */
static char *rewrite(const char *text, size_t len, int for_load, size_t *out_len) {
    char *out = malloc(4 * len + 16); /* "NaN" (3) -> "\"NaN\"" (5); "1e9" (3) -> "\"Infinity\"" (10) */
    if (!out) return NULL;
    size_t o = 0;
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        const char c = text[i];
        if (in_str) {
            out[o++] = c;
            if (c == '\\' && i + 1 < len) out[o++] = text[++i];
            else if (c == '"') in_str = 0;
            continue;
        }
        if (c == '"') {
            in_str = 1;
            out[o++] = c;
            continue;
        }
        static const char *const toks[3] = {"-Infinity", "Infinity", "NaN"};
        static const char *const load_as[3] = {"\"-Infinity\"", "\"Infinity\"", "\"NaN\""};
        static const char *const write_as[3] = {"-1e999", "1e999", "null"};
        size_t n = 0;
        int k = 0;
        for (; k < 3 && !n; k++) n = bare(text, len, i, toks[k]);
        if (n) {
            const char *r = for_load ? load_as[k - 1] : write_as[k - 1];
            memcpy(out + o, r, strlen(r));
            o += strlen(r), i += n - 1;
            continue;
        }
        if (for_load && (n = number(text, len, i)) > 0) {
            char buf[64];
            double v = 0;
            if (n < sizeof buf) {
                memcpy(buf, text + i, n);
                buf[n] = '\0';
                v = strtod(buf, NULL);
            } else { /* a number too long for buf: its digits decide; only inf matters here */
                size_t e = 0;
                while (e < n && text[i + e] != 'e' && text[i + e] != 'E') e++;
                v = e < n && text[i + e + 1] != '-' ? INFINITY : 0;
            }
            if (isinf(v)) {
                const char *r = v < 0 ? load_as[0] : load_as[1];
                memcpy(out + o, r, strlen(r));
                o += strlen(r);
            } else {
                memcpy(out + o, text + i, n);
                o += n;
            }
            i += n - 1;
            continue;
        }
        out[o++] = c;
    }
    out[o] = '\0';
    *out_len = o;
    return out;
}

json_t *mxm_json_loadb_hf(const char *text, size_t len, size_t flags, json_error_t *err) {
    size_t n;
    char *s = rewrite(text, len, 1, &n);
    if (!s) {
        if (err) snprintf(err->text, sizeof err->text, "out of memory"), err->line = 0;
        return NULL;
    }
    json_t *j = json_loadb(s, n, JSON_REJECT_DUPLICATES | flags, err);
    free(s);
    return j;
}

char *mxm_json_text_valid(const char *text, size_t len, size_t *out_len) { return rewrite(text, len, 0, out_len); }

/* ---- config files ------------------------------------------------------------------------- */

/* The one place where "\u0000" may occur: the entries of ModelOpt's exclude list (ModelOpt 0.47
 * appends ".\u0000<prefix>.pt_name_sentinel" to every entry of Nemotron-H exports, its own bug;
 * docs/checkpoints.md). Any other string holding U+0000 makes the file malformed, so that no
 * value is silently read short (a model_type "nemotron_h\u0000x" would read "nemotron_h").
 * Returns the key of the innermost member that holds the first such string ("[]" for a bare
 * array element), NULL if none. */
static const char *json_nul_outside(json_t *v, const json_t *allowed) {
    if (v == allowed) return NULL;
    if (json_is_string(v)) return json_string_length(v) != strlen(json_string_value(v)) ? "" : NULL;
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            const char *bad = json_nul_outside(e, allowed);
            if (bad) return *bad ? bad : "[]";
        }
        return NULL;
    }
    const char *key;
    json_t *e;
    json_object_foreach(v, key, e) {
        const char *bad = json_nul_outside(e, allowed);
        if (bad) return *bad && strcmp(bad, "[]") ? bad : key;
    }
    return NULL;
}

json_t *mxm_json_modelopt_exclude(json_t *root) {
    json_t *q = json_object_get(root, "quantization");
    json_t *l = json_is_object(q) ? json_object_get(q, "exclude_modules") : NULL;
    if (l) return l;
    q = json_object_get(root, "quantization_config");
    return json_is_object(q) ? json_object_get(q, "ignore") : NULL;
}

json_t *mxm_hf_config_parse(const char *path, const char *text, size_t len, mxm_status *st) {
    json_error_t err;
    json_t *j = mxm_json_loadb_hf(text, len, JSON_ALLOW_NUL, &err);
    if (!j) {
        *st = mxm_fail(MXM_ERR_FORMAT, "%s: line %d: %s", path, err.line, err.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        *st = mxm_fail(MXM_ERR_FORMAT, "%s: not a JSON object", path);
        return NULL;
    }
    const json_t *excl = mxm_json_modelopt_exclude(j);
    const char *bad = json_nul_outside(j, json_is_array(excl) ? excl : NULL);
    if (bad) {
        *st = mxm_fail(MXM_ERR_FORMAT,
                       "%s: '%.200s' holds a string with \\u0000 (allowed only in a ModelOpt "
                       "exclude_modules / ignore entry)",
                       path, bad);
        json_decref(j);
        return NULL;
    }
    *st = MXM_OK;
    return j;
}

json_t *mxm_hf_config_load(const char *path, mxm_status *st) {
    uint8_t *text;
    int64_t len;
    if ((*st = mxm_st_read_small_file(path, MXM_HF_CONFIG_MAX_BYTES, &text, &len))) return NULL;
    json_t *j = mxm_hf_config_parse(path, (const char *)text, (size_t)len, st);
    free(text);
    return j;
}
