/* safetensors: the strict streaming JSON parser of headers and index files. */
#include "io/safetensors_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- header parser ----------------------------------------------------------------------
 * A strict, streaming JSON parser for exactly the safetensors header grammar (also used for
 * model.safetensors.index.json). A DOM parser is a memory amplifier on hostile headers:
 * jansson took 2 GB and 17 s to reject a 100 MB header holding "shape": [0,0,0,...]; this
 * parser rejects it in about 1 s, and in general allocates one string arena of the header's
 * size plus the tensor table (about 2.5x the header at most). It accepts RFC 8259 JSON only
 * (no comments, trailing commas, NaN or raw control characters), decodes \u escapes
 * (surrogate pairs; lone surrogates and \u0000 are rejected), rejects duplicate keys at every
 * level, and validates skipped values (unknown fields) as JSON too. */

enum { ST_MAX_SKIP_DEPTH = 64 };

mxm_status st_jerr(const st_lex *L, const char *what) {
    return mxm_fail(MXM_ERR_FORMAT, PT ": %s is not valid JSON: %s at %s offset %lld", L->path,
                    L->doc, what, L->doc, (long long)L->i);
}

static void st_ws(st_lex *L) {
    while (L->i < L->n) {
        const uint8_t c = L->p[L->i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        L->i++;
    }
}

/* The next byte after whitespace, or -1 at the end. */
int st_peek(st_lex *L) {
    st_ws(L);
    return L->i < L->n ? L->p[L->i] : -1;
}

/* After a member or an element: consumes ',' (1: another one follows) or the closing bracket
 * (0: the object or array ends); -1 for anything else (st_sep_error gives the message). */
int st_separator(st_lex *L, int close) {
    const int d = st_peek(L);
    if (d == ',' || d == close) {
        L->i++;
        return d == ',';
    }
    return -1;
}

mxm_status st_sep_error(st_lex *L, int close) {
    return st_jerr(L, close == ']' ? "expected ',' or ']'" : "expected ',' or '}'");
}

static int st_hex4(const uint8_t *s, uint32_t *out) {
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        const uint8_t c = s[k];
        uint32_t d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return 0;
        v = v * 16 + d;
    }
    *out = v;
    return 1;
}

/* Decodes the string at L->i (which is '"') onto the arena, NUL-terminated; *out points to it.
 * The caller pops it by restoring L->alen when it does not keep it. The header was checked to
 * be valid UTF-8, so raw bytes are copied as they are. */
mxm_status st_lex_string(st_lex *L, const char **out) {
    MXM_ASSERT(L->i < L->n && L->p[L->i] == '"');
    L->i++;
    char *d = L->arena + L->alen;
    char *const start = d;
    for (;;) {
        if (L->i >= L->n) return st_jerr(L, "unterminated string");
        const uint8_t c = L->p[L->i];
        if (c == '"') {
            L->i++;
            break;
        }
        if (c < 0x20) return st_jerr(L, "control character in a string");
        if (c != '\\') {
            *d++ = (char)c;
            L->i++;
            continue;
        }
        if (L->n - L->i < 2) return st_jerr(L, "unterminated string");
        const uint8_t e = L->p[L->i + 1];
        L->i += 2;
        switch (e) {
        case '"':
        case '\\':
        case '/':
            *d++ = (char)e;
            break;
        case 'b':
            *d++ = '\b';
            break;
        case 'f':
            *d++ = '\f';
            break;
        case 'n':
            *d++ = '\n';
            break;
        case 'r':
            *d++ = '\r';
            break;
        case 't':
            *d++ = '\t';
            break;
        case 'u': {
            uint32_t cp, lo;
            if (L->n - L->i < 4 || !st_hex4(L->p + L->i, &cp))
                return st_jerr(L, "invalid \\u escape");
            L->i += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return st_jerr(L, "lone low surrogate escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (L->n - L->i < 6 || L->p[L->i] != '\\' || L->p[L->i + 1] != 'u' ||
                    !st_hex4(L->p + L->i + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                    return st_jerr(L, "high surrogate escape without a low surrogate");
                L->i += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (cp == 0) return st_jerr(L, "\\u0000 in a string");
            if (cp < 0x80) {
                *d++ = (char)cp;
            } else if (cp < 0x800) {
                *d++ = (char)(0xC0 | (cp >> 6));
                *d++ = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                *d++ = (char)(0xE0 | (cp >> 12));
                *d++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *d++ = (char)(0x80 | (cp & 0x3F));
            } else {
                *d++ = (char)(0xF0 | (cp >> 18));
                *d++ = (char)(0x80 | ((cp >> 12) & 0x3F));
                *d++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *d++ = (char)(0x80 | (cp & 0x3F));
            }
            break;
        }
        default:
            return st_jerr(L, "invalid escape in a string");
        }
    }
    *d++ = '\0';
    /* Decoding never grows a string and the NUL takes a quote's place: the arena (header size
     * + 1) cannot overflow. */
    MXM_ASSERT(d - L->arena <= L->n + 1);
    L->alen = d - L->arena;
    *out = start;
    return MXM_OK;
}

typedef struct st_num {
    int is_int; /* no fraction, no exponent */
    int neg;
    int big;   /* integer outside int64 */
    int64_t v; /* when is_int && !big */
} st_num;

/* Scans a JSON number at L->i; returns 0 when the bytes there are not one. */
static int st_lex_number(st_lex *L, st_num *num) {
    const uint8_t *p = L->p;
    int64_t i = L->i;
    const int64_t n = L->n;
    memset(num, 0, sizeof *num);
    num->is_int = 1;
    if (i < n && p[i] == '-') {
        num->neg = 1;
        i++;
    }
    if (i >= n || p[i] < '0' || p[i] > '9') return 0;
    uint64_t mag = 0;
    if (p[i] == '0') {
        i++;
    } else {
        while (i < n && p[i] >= '0' && p[i] <= '9') {
            const uint64_t dgt = p[i] - '0';
            if (mag > (UINT64_MAX - dgt) / 10)
                num->big = 1;
            else
                mag = mag * 10 + dgt;
            i++;
        }
    }
    if (i < n && p[i] == '.') {
        i++;
        if (i >= n || p[i] < '0' || p[i] > '9') return 0;
        while (i < n && p[i] >= '0' && p[i] <= '9')
            i++;
        num->is_int = 0;
    }
    if (i < n && (p[i] == 'e' || p[i] == 'E')) {
        i++;
        if (i < n && (p[i] == '+' || p[i] == '-')) i++;
        if (i >= n || p[i] < '0' || p[i] > '9') return 0;
        while (i < n && p[i] >= '0' && p[i] <= '9')
            i++;
        num->is_int = 0;
    }
    if (num->is_int && !num->big) {
        if (!num->neg && mag > (uint64_t)INT64_MAX) num->big = 1;
        if (num->neg && mag > (uint64_t)INT64_MAX + 1) num->big = 1;
        if (!num->big)
            num->v = num->neg ? (mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag)
                              : (int64_t)mag;
    }
    L->i = i;
    return 1;
}

static int st_lex_literal(st_lex *L, const char *lit) {
    const int64_t l = (int64_t)strlen(lit);
    if (L->n - L->i < l || memcmp(L->p + L->i, lit, (size_t)l) != 0) return 0;
    L->i += l;
    return 1;
}

mxm_status st_keys_add(st_lex *L, st_keys *ks, const char *key) {
    if (ks->n == ks->cap) {
        const int64_t nc = ks->cap ? 2 * ks->cap : 8;
        const char **nk = realloc(ks->k, (size_t)nc * sizeof *nk);
        if (!nk) return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory parsing the header", L->path);
        ks->k = nk;
        ks->cap = nc;
    }
    ks->k[ks->n++] = key;
    return MXM_OK;
}

int st_cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Checks for a duplicate and frees the list. */
mxm_status st_keys_finish(st_lex *L, st_keys *ks, const char *where) {
    mxm_status st = MXM_OK;
    if (ks->n > 1) qsort(ks->k, (size_t)ks->n, sizeof *ks->k, st_cmp_str);
    for (int64_t i = 1; i < ks->n && st == MXM_OK; i++)
        if (strcmp(ks->k[i - 1], ks->k[i]) == 0)
            st = mxm_fail(MXM_ERR_FORMAT, PT ": %s%s%s has a duplicate key \"" NM "\"", L->path,
                          where ? "tensor '" : L->doc, where ? where : "", where ? "'" : "",
                          ks->k[i]);
    free(ks->k);
    ks->k = NULL;
    ks->n = ks->cap = 0;
    return st;
}

/* Validates and skips any JSON value (unknown fields). Objects inside must not repeat keys. */
mxm_status st_skip_value(st_lex *L, int depth) {
    const int c = st_peek(L);
    if (c < 0) return st_jerr(L, "unexpected end of input");
    if (c == '"') {
        const int64_t mark = L->alen;
        const char *s;
        const mxm_status st = st_lex_string(L, &s);
        L->alen = mark;
        return st;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        st_num num;
        return st_lex_number(L, &num) ? MXM_OK : st_jerr(L, "invalid number");
    }
    if (c == 't' || c == 'f' || c == 'n') {
        if (st_lex_literal(L, "true") || st_lex_literal(L, "false") || st_lex_literal(L, "null"))
            return MXM_OK;
        return st_jerr(L, "invalid literal");
    }
    if (c != '[' && c != '{') return st_jerr(L, "unexpected character");
    if (depth >= ST_MAX_SKIP_DEPTH) return st_jerr(L, "values nested too deeply");
    const int close = c == '[' ? ']' : '}';
    L->i++;
    if (st_peek(L) == close) {
        L->i++;
        return MXM_OK;
    }
    const int64_t mark = L->alen; /* keys stay on the arena until the object ends */
    st_keys keys = {0};
    mxm_status st = MXM_OK;
    for (;;) {
        if (close == '}') {
            if (st_peek(L) != '"') {
                st = st_jerr(L, "expected a string key");
                break;
            }
            const char *k;
            st = st_lex_string(L, &k);
            if (st == MXM_OK) st = st_keys_add(L, &keys, k);
            if (st != MXM_OK) break;
            if (st_peek(L) != ':') {
                st = st_jerr(L, "expected ':'");
                break;
            }
            L->i++;
        }
        st = st_skip_value(L, depth + 1);
        if (st != MXM_OK) break;
        const int more = st_separator(L, close);
        if (more > 0) continue;
        if (more == 0) break;
        st = st_sep_error(L, close);
        break;
    }
    if (st == MXM_OK)
        st = st_keys_finish(L, &keys, NULL);
    else
        free(keys.k);
    L->alen = mark;
    return st;
}

/* Parses an array of integers (shape or data_offsets) into out[0, max); *count gets the
 * number of elements (also when more than max, then the rest is only validated). */
static mxm_status st_parse_int_array(st_lex *L, const char *name, const char *field, int64_t *out,
                                     int max, int *count) {
    if (st_peek(L) != '[')
        return mxm_fail(MXM_ERR_FORMAT, PT ": tensor '" NM "': \"%s\" is not an array%s", L->path,
                        name, field, max == 2 ? " of two integers" : "");
    L->i++;
    int k = 0;
    if (st_peek(L) == ']') {
        L->i++;
        *count = 0;
        return MXM_OK;
    }
    for (;;) {
        if (k >= max) {
            /* Too many elements: validate the rest without storing. */
            const mxm_status st = st_skip_value(L, 1);
            if (st != MXM_OK) return st;
        } else {
            const int c = st_peek(L);
            st_num num;
            if (c != '-' && (c < '0' || c > '9')) {
                if (c <= 0 || !strchr("\"[{tfn", c)) return st_jerr(L, "expected a value");
                return mxm_fail(MXM_ERR_FORMAT, PT ": tensor '" NM "': %s[%d] is not an integer",
                                L->path, name, field, k);
            }
            if (!st_lex_number(L, &num)) return st_jerr(L, "invalid number");
            if (!num.is_int)
                return mxm_fail(MXM_ERR_FORMAT, PT ": tensor '" NM "': %s[%d] is not an integer",
                                L->path, name, field, k);
            if (num.neg && num.big)
                return mxm_fail(MXM_ERR_FORMAT, PT ": tensor '" NM "': %s[%d] is negative", L->path,
                                name, field, k);
            if (num.neg && num.v < 0)
                return mxm_fail(MXM_ERR_FORMAT, PT ": tensor '" NM "': %s[%d] = %lld is negative",
                                L->path, name, field, k, (long long)num.v);
            if (num.big)
                return mxm_fail(MXM_ERR_OVERFLOW,
                                PT ": tensor '" NM "': %s[%d] does not fit in int64", L->path, name,
                                field, k);
            out[k] = num.v;
        }
        k++;
        const int more = st_separator(L, ']');
        if (more > 0) continue;
        if (more == 0) break;
        return st_sep_error(L, ']');
    }
    *count = k;
    return MXM_OK;
}

/* What an entry's fields said. */
typedef struct st_fields {
    int have_dtype, have_shape, have_off, rank, noff;
    int64_t be[2];
} st_fields;

/* The members of an entry object (L->i after its '{'). Unknown keys go to *unknown. */
static mxm_status st_parse_entry_fields(st_lex *L, const char *name, mxm_st_tensor *t,
                                        st_fields *fl, st_keys *unknown) {
    const char *path = L->path;
    if (st_peek(L) == '}') {
        L->i++;
        return MXM_OK;
    }
    for (;;) {
        if (st_peek(L) != '"') return st_jerr(L, "expected a string key");
        const int64_t mark = L->alen;
        const char *key;
        mxm_status st = st_lex_string(L, &key);
        if (st != MXM_OK) return st;
        if (st_peek(L) != ':') return st_jerr(L, "expected ':'");
        L->i++;
        int *seen = strcmp(key, "dtype") == 0          ? &fl->have_dtype
                    : strcmp(key, "shape") == 0        ? &fl->have_shape
                    : strcmp(key, "data_offsets") == 0 ? &fl->have_off
                                                       : NULL;
        if (seen && *seen)
            return mxm_fail(MXM_ERR_FORMAT, PT ": tensor '" NM "' has a duplicate key \"%s\"", path,
                            name, key);
        if (seen) *seen = 1;
        if (seen == &fl->have_dtype) {
            if (st_peek(L) != '"')
                return mxm_fail(MXM_ERR_FORMAT, PT ": tensor '" NM "': \"dtype\" is not a string",
                                path, name);
            const char *ds;
            st = st_lex_string(L, &ds);
            if (st != MXM_OK) return st;
            const int di = st_dtype_index(ds);
            if (di < 0)
                return mxm_fail(MXM_ERR_FORMAT, PT ": tensor '" NM "': unknown dtype '%.40s'", path,
                                name, ds);
            t->dtype_str = st_dtypes[di].name;
            t->dtype = st_dtypes[di].dtype;
            t->elem_size = st_dtypes[di].size;
        } else if (seen == &fl->have_shape) {
            st = st_parse_int_array(L, name, "shape", t->shape, MXM_ST_MAX_RANK, &fl->rank);
            if (st != MXM_OK) return st;
            if (fl->rank > MXM_ST_MAX_RANK)
                return mxm_fail(MXM_ERR_FORMAT, PT ": tensor '" NM "': rank %d exceeds %d", path,
                                name, fl->rank, MXM_ST_MAX_RANK);
        } else if (seen == &fl->have_off) {
            st = st_parse_int_array(L, name, "data_offsets", fl->be, 2, &fl->noff);
            if (st != MXM_OK) return st;
            if (fl->noff != 2)
                return mxm_fail(MXM_ERR_FORMAT,
                                PT ": tensor '" NM "': \"data_offsets\" is not an array of two "
                                   "integers (it has %d)",
                                path, name, fl->noff);
        } else {
            /* An unknown field: ignored, like the reference implementation does. */
            st = st_keys_add(L, unknown, key);
            if (st == MXM_OK) st = st_skip_value(L, 1);
            if (st != MXM_OK) return st;
        }
        if (seen) L->alen = mark; /* known keys and the dtype string are not kept */
        const int more = st_separator(L, '}');
        if (more > 0) continue;
        if (more == 0) return MXM_OK;
        return st_sep_error(L, '}');
    }
}

/* Parses one tensor entry (L->i at its value) into t; name is on the arena. */
mxm_status st_parse_entry(st_lex *L, const char *name, int64_t data_len, mxm_st_tensor *t) {
    const char *path = L->path;
    if (name[0] == '\0') return mxm_fail(MXM_ERR_FORMAT, PT ": tensor with an empty name", path);
    if (st_peek(L) != '{')
        return mxm_fail(MXM_ERR_FORMAT, PT ": tensor '" NM "': entry is not a JSON object", path,
                        name);
    L->i++;
    memset(t, 0, sizeof *t);
    t->name = name;
    st_fields fl = {0};
    const int64_t mark = L->alen; /* unknown keys stay on the arena until the entry ends */
    st_keys unknown = {0};
    mxm_status st = st_parse_entry_fields(L, name, t, &fl, &unknown);
    if (st == MXM_OK)
        st = st_keys_finish(L, &unknown, name);
    else
        free(unknown.k);
    L->alen = mark;
    if (st != MXM_OK) return st;
    const int have_dtype = fl.have_dtype, have_shape = fl.have_shape, have_off = fl.have_off;
    const int rank = fl.rank;
    const int64_t *be = fl.be;
    if (!have_dtype)
        return mxm_fail(MXM_ERR_FORMAT, PT ": tensor '" NM "': missing \"dtype\"", path, name);
    if (!have_shape)
        return mxm_fail(MXM_ERR_FORMAT, PT ": tensor '" NM "': missing \"shape\"", path, name);
    if (!have_off)
        return mxm_fail(MXM_ERR_FORMAT, PT ": tensor '" NM "': missing \"data_offsets\"", path,
                        name);
    t->rank = rank;
    int64_t numel = 1;
    for (int i = 0; i < rank; i++)
        if (!mxm_mul_i64(numel, t->shape[i], &numel))
            return mxm_fail(MXM_ERR_OVERFLOW,
                            PT ": tensor '" NM "': shape product overflows int64 at shape[%d]",
                            path, name, i);
    t->numel = numel;
    int64_t nbytes;
    if (!mxm_mul_i64(numel, t->elem_size, &nbytes))
        return mxm_fail(MXM_ERR_OVERFLOW,
                        PT ": tensor '" NM "': %lld elements of %s overflow int64 bytes", path,
                        name, (long long)numel, t->dtype_str);
    t->nbytes = nbytes;
    if (be[0] > be[1])
        return mxm_fail(MXM_ERR_FORMAT,
                        PT ": tensor '" NM "': data_offsets begin %lld is after end %lld", path,
                        name, (long long)be[0], (long long)be[1]);
    if (be[1] - be[0] != nbytes) {
        char sb[200];
        return mxm_fail(MXM_ERR_FORMAT,
                        PT ": tensor '" NM "': data_offsets [%lld, %lld] hold %lld bytes, but "
                           "%s %s needs %lld",
                        path, name, (long long)be[0], (long long)be[1], (long long)(be[1] - be[0]),
                        t->dtype_str, st_shape_str(t->shape, t->rank, sb, sizeof sb),
                        (long long)nbytes);
    }
    if (be[1] > data_len)
        return mxm_fail(MXM_ERR_FORMAT,
                        PT ": tensor '" NM "': data_offsets [%lld, %lld] extend past the end of "
                           "the %lld-byte data buffer (file truncated?)",
                        path, name, (long long)be[0], (long long)be[1], (long long)data_len);
    t->offset = be[0];
    return MXM_OK;
}

mxm_status st_parse_metadata(st_lex *L, st_meta **meta, int64_t *nmeta) {
    if (st_peek(L) != '{')
        return mxm_fail(MXM_ERR_FORMAT, PT ": __metadata__ is not a JSON object", L->path);
    L->i++;
    if (st_peek(L) == '}') {
        L->i++;
        return MXM_OK;
    }
    int64_t cap = 0;
    for (;;) {
        if (st_peek(L) != '"') return st_jerr(L, "expected a string key");
        const char *k, *v;
        mxm_status st = st_lex_string(L, &k);
        if (st != MXM_OK) return st;
        if (st_peek(L) != ':') return st_jerr(L, "expected ':'");
        L->i++;
        if (st_peek(L) != '"')
            return mxm_fail(MXM_ERR_FORMAT,
                            PT ": __metadata__ value of key '" NM "' is not a string", L->path, k);
        st = st_lex_string(L, &v);
        if (st != MXM_OK) return st;
        if (*nmeta == cap) {
            cap = cap ? 2 * cap : 16;
            st_meta *nm = realloc(*meta, (size_t)cap * sizeof *nm);
            if (!nm) return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory for metadata", L->path);
            *meta = nm;
        }
        (*meta)[(*nmeta)++] = (st_meta){k, v};
        const int more = st_separator(L, '}');
        if (more > 0) continue;
        if (more == 0) break;
        return st_sep_error(L, '}');
    }
    if (*nmeta > 1) qsort(*meta, (size_t)*nmeta, sizeof **meta, st_cmp_meta);
    for (int64_t i = 1; i < *nmeta; i++)
        if (strcmp((*meta)[i - 1].key, (*meta)[i].key) == 0)
            return mxm_fail(MXM_ERR_FORMAT, PT ": __metadata__ has a duplicate key \"" NM "\"",
                            L->path, (*meta)[i].key);
    return MXM_OK;
}
