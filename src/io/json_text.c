#include "io/json_text.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
