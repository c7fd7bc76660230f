/* safetensors reader (mmap, hostile-input checks) and writer. See safetensors.h. */
#include "io/safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"

/* Hostile names and paths are cut in messages so that the rest of the message survives. */
#define NM "%.200s"
#define PT "%.400s"

/* ------------------------------------------------------------------------------------------ */
/* dtypes: in the safetensors library's enum order (MXM_ST_ORDER_DTYPE sorts by it, descending) */

static const struct st_dtype {
    const char *name;
    int32_t dtype;
    int32_t size;
} st_dtypes[] = {
    {"BOOL", -1, 1},
    {"U8", MXM_DT_U8, 1},
    {"I8", MXM_DT_I8, 1},
    {"F8_E5M2", MXM_DT_E5M2, 1},
    {"F8_E4M3", MXM_DT_E4M3, 1},
    {"F8_E8M0", MXM_DT_E8M0, 1},
    {"I16", -1, 2},
    {"U16", -1, 2},
    {"F16", MXM_DT_F16, 2},
    {"BF16", MXM_DT_BF16, 2},
    {"I32", MXM_DT_I32, 4},
    {"U32", -1, 4},
    {"F32", MXM_DT_F32, 4},
    {"F64", MXM_DT_F64, 8},
    {"I64", MXM_DT_I64, 8},
    {"U64", -1, 8},
};
enum { ST_NDTYPES = (int)(sizeof st_dtypes / sizeof st_dtypes[0]) };

/* Index into st_dtypes, or -1. */
static int st_dtype_index(const char *s) {
    if (!s) return -1;
    for (int i = 0; i < ST_NDTYPES; i++)
        if (strcmp(s, st_dtypes[i].name) == 0) return i;
    return -1;
}

int32_t mxm_st_dtype_from_str(const char *s, int32_t *elem_size) {
    const int i = st_dtype_index(s);
    if (elem_size) *elem_size = i < 0 ? 0 : st_dtypes[i].size;
    return i < 0 ? -2 : st_dtypes[i].dtype;
}

const char *mxm_st_dtype_to_str(int32_t dtype) {
    if (dtype < 0) return NULL;
    for (int i = 0; i < ST_NDTYPES; i++)
        if (st_dtypes[i].dtype == dtype) return st_dtypes[i].name;
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* small helpers */

int64_t mxm_st_utf8_invalid_at(const uint8_t *s, int64_t n) {
    int64_t i = 0;
    while (i < n) {
        const uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int len;
        uint8_t lo = 0x80, hi = 0xBF; /* range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c == 0xE0) { /* no overlongs */
            len = 3;
            lo = 0xA0;
        } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
            len = 3;
        } else if (c == 0xED) { /* no surrogates U+D800..U+DFFF */
            len = 3;
            hi = 0x9F;
        } else if (c == 0xF0) { /* no overlongs */
            len = 4;
            lo = 0x90;
        } else if (c >= 0xF1 && c <= 0xF3) {
            len = 4;
        } else if (c == 0xF4) { /* nothing above U+10FFFF */
            len = 4;
            hi = 0x8F;
        } else { /* continuation byte, overlong lead C0/C1, or F5..FF */
            return i;
        }
        if (n - i < len) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i + 1;
        for (int k = 2; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80) return i + k;
        i += len;
    }
    return -1;
}

static const char *st_strerror(int e, char *buf, size_t n) {
    if (strerror_r(e, buf, n) != 0) snprintf(buf, n, "errno %d", e);
    return buf;
}

char *mxm_st_path_join(const char *dir, const char *name) {
    const size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (a > 0 && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

static int st_is_regular(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* ------------------------------------------------------------------------------------------ */
/* reader */

typedef struct st_meta {
    const char *key;
    const char *value;
} st_meta;

struct mxm_st_file {
    char *path;
    void *map; /* NULL for open_memory */
    size_t map_len;
    const uint8_t *base;
    int64_t len;
    int64_t header_len;
    const uint8_t *data;
    int64_t data_len;
    mxm_st_tensor *tensors; /* data-offset order */
    const mxm_st_tensor **by_name;
    int64_t n;
    st_meta *meta; /* key order */
    int64_t nmeta;
    char *strings; /* names, metadata keys and values */
};

void mxm_st_close(mxm_st_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_len);
    free(f->tensors);
    free(f->by_name);
    free(f->meta);
    free(f->strings);
    free(f->path);
    free(f);
}

static int st_cmp_offset(const void *a, const void *b) {
    const mxm_st_tensor *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int st_cmp_name_ptr(const void *a, const void *b) {
    const mxm_st_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static int st_cmp_meta(const void *a, const void *b) {
    return strcmp(((const st_meta *)a)->key, ((const st_meta *)b)->key);
}

/* Formats "[2, 3]" into buf for messages. */
static const char *st_shape_str(const int64_t *shape, int32_t rank, char *buf, size_t n) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int32_t i = 0; i < rank && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}

/* ---- header parser ----------------------------------------------------------------------
 * A strict, streaming JSON parser for exactly the safetensors header grammar (also used for
 * model.safetensors.index.json). A DOM parser is a memory amplifier on hostile headers:
 * jansson took 2 GB and 17 s to reject a 100 MB header holding "shape": [0,0,0,...]; this
 * parser rejects it in about 1 s, and in general allocates one string arena of the header's
 * size plus the tensor table (about 2.5x the header at most). It accepts RFC 8259 JSON only
 * (no comments, trailing commas, NaN or raw control characters), decodes \u escapes
 * (surrogate pairs; lone surrogates and \u0000 are rejected), rejects duplicate keys at every
 * level, and validates skipped values (unknown fields) as JSON too. */

typedef struct st_lex {
    const uint8_t *p; /* header */
    int64_t n;
    int64_t i;
    const char *path;
    const char *doc; /* "header" or "index", for messages */
    char *arena;     /* decoded strings; capacity n + 1, never reallocated */
    int64_t alen;
} st_lex;

enum { ST_MAX_SKIP_DEPTH = 64 };

static mxm_status st_jerr(const st_lex *L, const char *what) {
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
static int st_peek(st_lex *L) {
    st_ws(L);
    return L->i < L->n ? L->p[L->i] : -1;
}

/* After a member or an element: consumes ',' (1: another one follows) or the closing bracket
 * (0: the object or array ends); -1 for anything else (st_sep_error gives the message). */
static int st_separator(st_lex *L, int close) {
    const int d = st_peek(L);
    if (d == ',' || d == close) {
        L->i++;
        return d == ',';
    }
    return -1;
}

static mxm_status st_sep_error(st_lex *L, int close) {
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
static mxm_status st_lex_string(st_lex *L, const char **out) {
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

/* A list of keys of one object (pointers onto the arena), checked for duplicates at the end by
 * sorting, so that an object with many keys costs O(k log k). */
typedef struct st_keys {
    const char **k;
    int64_t n, cap;
} st_keys;

static mxm_status st_keys_add(st_lex *L, st_keys *ks, const char *key) {
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

static int st_cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Checks for a duplicate and frees the list. */
static mxm_status st_keys_finish(st_lex *L, st_keys *ks, const char *where) {
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
static mxm_status st_skip_value(st_lex *L, int depth) {
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
static mxm_status st_parse_entry(st_lex *L, const char *name, int64_t data_len, mxm_st_tensor *t) {
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

static mxm_status st_parse_metadata(st_lex *L, st_meta **meta, int64_t *nmeta) {
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

static int st_cmp_name(const void *a, const void *b) {
    return strcmp(((const mxm_st_tensor *)a)->name, ((const mxm_st_tensor *)b)->name);
}

/* Parses and validates f->base[0, f->len); fills the tables of f. */
static mxm_status st_parse(mxm_st_file *f) {
    const char *path = f->path;
    if (f->len < 8)
        return mxm_fail(MXM_ERR_FORMAT,
                        PT ": file is %lld bytes, shorter than the 8-byte header length field",
                        path, (long long)f->len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | f->base[i];
    if (n == 0) return mxm_fail(MXM_ERR_FORMAT, PT ": header length is 0", path);
    if (n > MXM_ST_MAX_HEADER)
        return mxm_fail(MXM_ERR_FORMAT, PT ": header length %llu exceeds the limit of %d bytes",
                        path, (unsigned long long)n, MXM_ST_MAX_HEADER);
    if ((int64_t)n > f->len - 8)
        return mxm_fail(MXM_ERR_FORMAT,
                        PT ": header length %llu exceeds the %lld bytes after the length field "
                           "(file truncated?)",
                        path, (unsigned long long)n, (long long)(f->len - 8));
    f->header_len = (int64_t)n;
    f->data = f->base + 8 + n;
    f->data_len = f->len - 8 - (int64_t)n;

    const uint8_t *hdr = f->base + 8;
    const int64_t bad = mxm_st_utf8_invalid_at(hdr, (int64_t)n);
    if (bad >= 0)
        return mxm_fail(MXM_ERR_FORMAT,
                        PT ": header is not valid UTF-8 (byte 0x%02x at header offset %lld)", path,
                        hdr[bad], (long long)bad);

    f->strings = malloc((size_t)n + 1);
    if (!f->strings)
        return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory for a %llu-byte header", path,
                        (unsigned long long)n);
    st_lex L = {hdr, (int64_t)n, 0, path, "header", f->strings, 0};
    int64_t cap = 0, count = 0;
    int have_meta = 0;
    mxm_status st = MXM_OK;

    const int c0 = st_peek(&L);
    if (c0 != '{') {
        if (c0 > 0 && (strchr("\"[-tfn", c0) || (c0 >= '0' && c0 <= '9')))
            return mxm_fail(MXM_ERR_FORMAT, PT ": header is not a JSON object", path);
        return st_jerr(&L, "expected '{'");
    }
    L.i++;
    if (st_peek(&L) == '}') {
        L.i++;
    } else {
        for (;;) {
            if (st_peek(&L) != '"') return st_jerr(&L, "expected a string key");
            const char *key;
            st = st_lex_string(&L, &key);
            if (st != MXM_OK) return st;
            if (st_peek(&L) != ':') return st_jerr(&L, "expected ':'");
            L.i++;
            if (strcmp(key, "__metadata__") == 0) {
                if (have_meta)
                    return mxm_fail(MXM_ERR_FORMAT,
                                    PT ": header has a duplicate key "
                                       "\"__metadata__\"",
                                    path);
                have_meta = 1;
                st = st_parse_metadata(&L, &f->meta, &f->nmeta);
                if (st != MXM_OK) return st;
            } else {
                if (count == cap) {
                    cap = cap ? 2 * cap : 64;
                    mxm_st_tensor *nt = realloc(f->tensors, (size_t)cap * sizeof *nt);
                    if (!nt)
                        return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory for %lld tensors", path,
                                        (long long)cap);
                    f->tensors = nt;
                }
                st = st_parse_entry(&L, key, f->data_len, &f->tensors[count]);
                if (st != MXM_OK) return st;
                count++;
                f->n = count;
            }
            const int more = st_separator(&L, '}');
            if (more > 0) continue;
            if (more == 0) break;
            return st_sep_error(&L, '}');
        }
    }
    if (st_peek(&L) >= 0) return st_jerr(&L, "trailing characters after the header object");

    /* Names are unique. */
    if (count > 1) qsort(f->tensors, (size_t)count, sizeof *f->tensors, st_cmp_name);
    for (int64_t i = 1; i < count; i++)
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0)
            return mxm_fail(MXM_ERR_FORMAT, PT ": header has a duplicate tensor name '" NM "'",
                            path, f->tensors[i].name);

    /* The tensors tile [0, data_len) exactly. */
    if (count > 1) qsort(f->tensors, (size_t)count, sizeof *f->tensors, st_cmp_offset);
    int64_t expect = 0;
    const char *prev = NULL;
    for (int64_t i = 0; i < count; i++) {
        const mxm_st_tensor *t = &f->tensors[i];
        if (t->offset > expect)
            return mxm_fail(MXM_ERR_FORMAT,
                            PT ": tensor '" NM "': data_offsets begin %lld leaves a hole of "
                               "%lld bytes after %s%s%.200s%s",
                            path, t->name, (long long)t->offset, (long long)(t->offset - expect),
                            prev ? "tensor '" : "", prev ? "" : "the data start", prev ? prev : "",
                            prev ? "'" : "");
        if (t->offset < expect)
            return mxm_fail(MXM_ERR_FORMAT,
                            PT ": tensor '" NM "': data_offsets begin %lld overlaps tensor '" NM
                               "', which ends at %lld",
                            path, t->name, (long long)t->offset, prev ? prev : "?",
                            (long long)expect);
        expect = t->offset + t->nbytes;
        prev = t->name;
    }
    if (expect != f->data_len)
        return mxm_fail(MXM_ERR_FORMAT,
                        PT ": tensors cover %lld bytes of the %lld-byte data buffer; %lld "
                           "trailing bytes are not covered by any tensor",
                        path, (long long)expect, (long long)f->data_len,
                        (long long)(f->data_len - expect));

    f->by_name = malloc(((size_t)count + 1) * sizeof *f->by_name);
    if (!f->by_name) return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", path);
    for (int64_t i = 0; i < count; i++) {
        f->tensors[i].data = f->data + f->tensors[i].offset;
        f->by_name[i] = &f->tensors[i];
    }
    if (count > 1) qsort(f->by_name, (size_t)count, sizeof *f->by_name, st_cmp_name_ptr);
    return MXM_OK;
}

static mxm_status st_new(const char *label, mxm_st_file **out) {
    mxm_st_file *f = calloc(1, sizeof *f);
    if (!f) return mxm_fail(MXM_ERR_NOMEM, "out of memory opening " PT, label);
    f->path = strdup(label);
    if (!f->path) {
        free(f);
        return mxm_fail(MXM_ERR_NOMEM, "out of memory opening " PT, label);
    }
    *out = f;
    return MXM_OK;
}

mxm_status mxm_st_open_memory(const void *buf, int64_t len, const char *label, mxm_st_file **out) {
    if (!out) return mxm_fail(MXM_ERR_NULL, "mxm_st_open_memory: out is NULL");
    *out = NULL;
    if (!label) label = "<memory>";
    if (len < 0)
        return mxm_fail(MXM_ERR_INVALID_ARG, PT ": negative length %lld", label, (long long)len);
    if (!buf && len > 0) return mxm_fail(MXM_ERR_NULL, PT ": buffer is NULL", label);
    mxm_st_file *f = NULL;
    mxm_status st = st_new(label, &f);
    if (st != MXM_OK) return st;
    f->base = buf;
    f->len = len;
    st = st_parse(f);
    if (st != MXM_OK) {
        mxm_st_close(f);
        return st;
    }
    *out = f;
    return MXM_OK;
}

mxm_status mxm_st_open(const char *path, mxm_st_file **out) {
    if (!out) return mxm_fail(MXM_ERR_NULL, "mxm_st_open: out is NULL");
    *out = NULL;
    if (!path) return mxm_fail(MXM_ERR_NULL, "mxm_st_open: path is NULL");
    char eb[128];
    /* O_NONBLOCK: a FIFO must not block the open; it is then rejected as not a regular file. */
    const int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return mxm_fail(MXM_ERR_IO, PT ": cannot open: %s", path,
                        st_strerror(errno, eb, sizeof eb));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        const int e = errno;
        close(fd);
        return mxm_fail(MXM_ERR_IO, PT ": cannot stat: %s", path, st_strerror(e, eb, sizeof eb));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return mxm_fail(MXM_ERR_IO, PT ": not a regular file", path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return mxm_fail(MXM_ERR_FORMAT,
                        PT ": file is %lld bytes, shorter than the 8-byte header length field",
                        path, (long long)sb.st_size);
    }
    void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    const int e = errno;
    close(fd);
    if (map == MAP_FAILED)
        return mxm_fail(MXM_ERR_IO, PT ": mmap of %lld bytes failed: %s", path,
                        (long long)sb.st_size, st_strerror(e, eb, sizeof eb));
    mxm_st_file *f = NULL;
    mxm_status st = st_new(path, &f);
    if (st != MXM_OK) {
        munmap(map, (size_t)sb.st_size);
        return st;
    }
    f->map = map;
    f->map_len = (size_t)sb.st_size;
    f->base = map;
    f->len = (int64_t)sb.st_size;
    st = st_parse(f);
    if (st != MXM_OK) {
        mxm_st_close(f);
        return st;
    }
    *out = f;
    return MXM_OK;
}

int64_t mxm_st_count(const mxm_st_file *f) {
    return f ? f->n : 0;
}

const mxm_st_tensor *mxm_st_at(const mxm_st_file *f, int64_t i) {
    return (f && i >= 0 && i < f->n) ? &f->tensors[i] : NULL;
}

const mxm_st_tensor *mxm_st_find(const mxm_st_file *f, const char *name) {
    if (!f || !name || f->n == 0) return NULL;
    mxm_st_tensor key;
    key.name = name;
    const mxm_st_tensor *kp = &key;
    const mxm_st_tensor *const *r =
        bsearch(&kp, f->by_name, (size_t)f->n, sizeof *f->by_name, st_cmp_name_ptr);
    return r ? *r : NULL;
}

const char *mxm_st_metadata(const mxm_st_file *f, const char *key) {
    if (!f || !key || f->nmeta == 0) return NULL;
    const st_meta k = {key, NULL};
    const st_meta *r = bsearch(&k, f->meta, (size_t)f->nmeta, sizeof *f->meta, st_cmp_meta);
    return r ? r->value : NULL;
}

int64_t mxm_st_metadata_count(const mxm_st_file *f) {
    return f ? f->nmeta : 0;
}

int mxm_st_metadata_at(const mxm_st_file *f, int64_t i, const char **key, const char **value) {
    if (!f || i < 0 || i >= f->nmeta) return -1;
    if (key) *key = f->meta[i].key;
    if (value) *value = f->meta[i].value;
    return 0;
}

const char *mxm_st_path(const mxm_st_file *f) {
    return f ? f->path : NULL;
}
int64_t mxm_st_data_size(const mxm_st_file *f) {
    return f ? f->data_len : 0;
}
int64_t mxm_st_header_size(const mxm_st_file *f) {
    return f ? f->header_len : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* model folders */

typedef struct st_entry {
    const mxm_st_tensor *t;
    int64_t file;
} st_entry;

struct mxm_st_model {
    mxm_st_file **files;
    int64_t nfiles;
    st_entry *entries; /* name order */
    int64_t n;
};

void mxm_st_model_close(mxm_st_model *m) {
    if (!m) return;
    for (int64_t i = 0; i < m->nfiles; i++)
        mxm_st_close(m->files[i]);
    free(m->files);
    free(m->entries);
    free(m);
}

static int st_cmp_entry(const void *a, const void *b) {
    return strcmp(((const st_entry *)a)->t->name, ((const st_entry *)b)->t->name);
}

/* Opens the files dir/names[i] into m (m->files must hold n slots). */
static mxm_status st_model_open_files(mxm_st_model *m, const char *dir, const char *const *names,
                                      int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        char *p = mxm_st_path_join(dir, names[i]);
        if (!p) return mxm_fail(MXM_ERR_NOMEM, "out of memory opening model " PT, dir);
        mxm_status st = mxm_st_open(p, &m->files[m->nfiles]);
        free(p);
        if (st != MXM_OK) return st;
        m->nfiles++;
    }
    return MXM_OK;
}

/* All tensors of all files, sorted by name; a name in two files is an error. */
static mxm_status st_model_collect_all(mxm_st_model *m, const char *dir) {
    int64_t total = 0;
    for (int64_t i = 0; i < m->nfiles; i++)
        total += mxm_st_count(m->files[i]);
    m->entries = calloc((size_t)total + 1, sizeof *m->entries);
    if (!m->entries) return mxm_fail(MXM_ERR_NOMEM, "out of memory opening model " PT, dir);
    for (int64_t i = 0; i < m->nfiles; i++)
        for (int64_t j = 0; j < mxm_st_count(m->files[i]); j++)
            m->entries[m->n++] = (st_entry){mxm_st_at(m->files[i], j), i};
    if (m->n > 1) qsort(m->entries, (size_t)m->n, sizeof *m->entries, st_cmp_entry);
    for (int64_t i = 1; i < m->n; i++)
        if (strcmp(m->entries[i - 1].t->name, m->entries[i].t->name) == 0)
            return mxm_fail(MXM_ERR_FORMAT, PT ": tensor '" NM "' is in both " PT " and " PT, dir,
                            m->entries[i].t->name, m->files[m->entries[i - 1].file]->path,
                            m->files[m->entries[i].file]->path);
    return MXM_OK;
}

/* Shard names from an index must stay inside the model folder. */
static int st_safe_relative(const char *s) {
    if (s[0] == '\0' || s[0] == '/') return 0;
    const char *p = s;
    while (*p) {
        const char *e = strchr(p, '/');
        const size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == 2 && p[0] == '.' && p[1] == '.') return 0;
        if (!e) break;
        p = e + 1;
    }
    return 1;
}

/* "./a/./b" and "a/b" name the same shard. */
static const char *st_skip_dot(const char *s) {
    while (s[0] == '.' && s[1] == '/')
        s += 2;
    return s;
}

mxm_status mxm_st_read_small_file(const char *path, int64_t max_bytes, uint8_t **out, int64_t *out_len) {
    char eb[128];
    *out = NULL;
    *out_len = 0;
    const int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        const int e = errno;
        return mxm_fail(e == ENOENT ? MXM_ERR_NOT_FOUND : MXM_ERR_IO, PT ": cannot open: %s", path,
                        st_strerror(e, eb, sizeof eb));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return mxm_fail(MXM_ERR_IO, PT ": not a readable regular file", path);
    }
    if (sb.st_size > max_bytes) {
        close(fd);
        return mxm_fail(MXM_ERR_FORMAT, PT ": %lld bytes is over the %lld-byte limit", path,
                        (long long)sb.st_size, (long long)max_bytes);
    }
    const size_t len = (size_t)sb.st_size;
    uint8_t *buf = malloc(len + 1);
    if (!buf) {
        close(fd);
        return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", path);
    }
    size_t got = 0;
    while (got < len) {
        const ssize_t r = read(fd, buf + got, len - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            const int e = r < 0 ? errno : 0;
            close(fd);
            free(buf);
            return mxm_fail(MXM_ERR_IO, PT ": read failed: %s", path,
                            r < 0 ? st_strerror(e, eb, sizeof eb) : "file shrank while reading");
        }
        got += (size_t)r;
    }
    close(fd);
    buf[len] = 0;
    *out = buf;
    *out_len = (int64_t)len;
    return MXM_OK;
}

typedef struct st_wm_pair {
    const char *tensor;
    const char *shard; /* normalized (no leading "./") */
} st_wm_pair;

static int st_cmp_wm_pair(const void *a, const void *b) {
    return strcmp(((const st_wm_pair *)a)->tensor, ((const st_wm_pair *)b)->tensor);
}

/* Parses the index JSON: {"weight_map": {tensor: shard, ...}, anything else ignored}. Strings
 * live on L->arena. */
static mxm_status st_parse_index(st_lex *L, st_wm_pair **pairs, int64_t *npairs) {
    const char *path = L->path;
    const int c0 = st_peek(L);
    if (c0 != '{') {
        if (c0 > 0 && (strchr("\"[-tfn", c0) || (c0 >= '0' && c0 <= '9')))
            return mxm_fail(MXM_ERR_FORMAT, PT ": not a JSON object", path);
        return st_jerr(L, "expected '{'");
    }
    L->i++;
    int have_wm = 0;
    int64_t cap = 0;
    st_keys other = {0};
    mxm_status st = MXM_OK;
    if (st_peek(L) == '}') {
        L->i++;
    } else {
        for (;;) {
            if (st_peek(L) != '"') {
                st = st_jerr(L, "expected a string key");
                break;
            }
            const char *key;
            st = st_lex_string(L, &key);
            if (st != MXM_OK) break;
            if (st_peek(L) != ':') {
                st = st_jerr(L, "expected ':'");
                break;
            }
            L->i++;
            if (strcmp(key, "weight_map") != 0) {
                st = st_keys_add(L, &other, key);
                if (st == MXM_OK) st = st_skip_value(L, 1);
                if (st != MXM_OK) break;
            } else {
                if (have_wm) {
                    st = mxm_fail(MXM_ERR_FORMAT, PT ": duplicate key \"weight_map\"", path);
                    break;
                }
                have_wm = 1;
                if (st_peek(L) != '{') {
                    st = mxm_fail(MXM_ERR_FORMAT, PT ": \"weight_map\" is not a JSON object", path);
                    break;
                }
                L->i++;
                if (st_peek(L) == '}') {
                    L->i++;
                } else {
                    for (;;) {
                        const char *t, *s;
                        if (st_peek(L) != '"') {
                            st = st_jerr(L, "expected a string key");
                            break;
                        }
                        st = st_lex_string(L, &t);
                        if (st != MXM_OK) break;
                        if (st_peek(L) != ':') {
                            st = st_jerr(L, "expected ':'");
                            break;
                        }
                        L->i++;
                        if (st_peek(L) != '"') {
                            st = mxm_fail(MXM_ERR_FORMAT,
                                          PT ": tensor '" NM "': shard name is not a string", path,
                                          t);
                            break;
                        }
                        st = st_lex_string(L, &s);
                        if (st != MXM_OK) break;
                        if (!st_safe_relative(st_skip_dot(s))) {
                            st = mxm_fail(MXM_ERR_FORMAT,
                                          PT ": tensor '" NM "': shard name '" NM
                                             "' is empty, absolute or leaves the model folder",
                                          path, t, s);
                            break;
                        }
                        if (*npairs == cap) {
                            cap = cap ? 2 * cap : 64;
                            st_wm_pair *np = realloc(*pairs, (size_t)cap * sizeof *np);
                            if (!np) {
                                st = mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", path);
                                break;
                            }
                            *pairs = np;
                        }
                        (*pairs)[(*npairs)++] = (st_wm_pair){t, st_skip_dot(s)};
                        const int more = st_separator(L, '}');
                        if (more > 0) continue;
                        if (more == 0) break;
                        st = st_sep_error(L, '}');
                        break;
                    }
                    if (st != MXM_OK) break;
                }
            }
            const int more = st_separator(L, '}');
            if (more > 0) continue;
            if (more == 0) break;
            st = st_sep_error(L, '}');
            break;
        }
    }
    if (st == MXM_OK)
        st = st_keys_finish(L, &other, NULL);
    else
        free(other.k);
    if (st != MXM_OK) return st;
    if (st_peek(L) >= 0) return st_jerr(L, "trailing characters after the top-level object");
    if (!have_wm) return mxm_fail(MXM_ERR_FORMAT, PT ": missing \"weight_map\"", path);
    if (*npairs > 1) qsort(*pairs, (size_t)*npairs, sizeof **pairs, st_cmp_wm_pair);
    for (int64_t i = 1; i < *npairs; i++)
        if (strcmp((*pairs)[i - 1].tensor, (*pairs)[i].tensor) == 0)
            return mxm_fail(MXM_ERR_FORMAT, PT ": weight_map has a duplicate key \"" NM "\"", path,
                            (*pairs)[i].tensor);
    return MXM_OK;
}

/* Parses an index held in buf: *arena holds the strings, *pairs the weight_map in tensor name
 * order, *shards the unique shard names in order. The caller frees the three arrays (also on
 * failure). */
static mxm_status st_index_parse_buf(const uint8_t *buf, int64_t len, const char *label,
                                     char **arena, st_wm_pair **pairs, int64_t *np,
                                     const char ***shards, int64_t *ns) {
    *arena = NULL;
    *pairs = NULL;
    *shards = NULL;
    *np = *ns = 0;
    const int64_t bad = mxm_st_utf8_invalid_at(buf, len);
    if (bad >= 0)
        return mxm_fail(MXM_ERR_FORMAT, PT ": not valid UTF-8 (byte 0x%02x at offset %lld)", label,
                        buf[bad], (long long)bad);
    *arena = malloc((size_t)len + 1);
    if (!*arena) return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", label);
    st_lex L = {buf, len, 0, label, "index", *arena, 0};
    mxm_status st = st_parse_index(&L, pairs, np);
    if (st != MXM_OK) return st;
    *shards = malloc(((size_t)*np + 1) * sizeof **shards);
    if (!*shards) return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", label);
    for (int64_t i = 0; i < *np; i++)
        (*shards)[i] = (*pairs)[i].shard;
    if (*np > 1) qsort(*shards, (size_t)*np, sizeof **shards, st_cmp_str);
    for (int64_t i = 0; i < *np; i++)
        if (*ns == 0 || strcmp((*shards)[*ns - 1], (*shards)[i]) != 0)
            (*shards)[(*ns)++] = (*shards)[i];
    return MXM_OK;
}

mxm_status mxm_st_index_check_memory(const void *buf, int64_t len, const char *label,
                                     int64_t *num_tensors, int64_t *num_shards) {
    if (!label) label = "<memory>";
    if (len < 0) return mxm_fail(MXM_ERR_INVALID_ARG, PT ": negative length", label);
    if (!buf && len > 0) return mxm_fail(MXM_ERR_NULL, PT ": buffer is NULL", label);
    char *arena;
    st_wm_pair *pairs;
    const char **shards;
    int64_t np, ns;
    const mxm_status st = st_index_parse_buf(buf, len, label, &arena, &pairs, &np, &shards, &ns);
    if (st == MXM_OK) {
        if (num_tensors) *num_tensors = np;
        if (num_shards) *num_shards = ns;
    }
    free(shards);
    free(pairs);
    free(arena);
    return st;
}

static mxm_status st_model_from_index(mxm_st_model *m, const char *dir, const char *ipath) {
    uint8_t *buf = NULL;
    int64_t len = 0;
    mxm_status st = mxm_st_read_small_file(ipath, MXM_ST_MAX_HEADER, &buf, &len);
    if (st != MXM_OK) return st;
    char *arena;
    st_wm_pair *pairs;
    const char **shards;
    int64_t np, ns;
    st = st_index_parse_buf(buf, len, ipath, &arena, &pairs, &np, &shards, &ns);
    if (st != MXM_OK) goto done;
    m->entries = calloc((size_t)np + 1, sizeof *m->entries);
    m->files = calloc((size_t)ns + 1, sizeof *m->files);
    if (!m->entries || !m->files) {
        st = mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", ipath);
        goto done;
    }
    st = st_model_open_files(m, dir, shards, ns);
    if (st != MXM_OK) {
        st = mxm_fail_context(st, PT ": weight_map shard", ipath);
        goto done;
    }
    for (int64_t i = 0; i < np; i++) { /* pairs are in name order: entries come out sorted */
        const char **hit = bsearch(&pairs[i].shard, shards, (size_t)ns, sizeof *shards, st_cmp_str);
        MXM_ASSERT(hit != NULL);
        const int64_t fi = hit - shards;
        const mxm_st_tensor *t = mxm_st_find(m->files[fi], pairs[i].tensor);
        if (!t) {
            st = mxm_fail(MXM_ERR_FORMAT,
                          PT ": tensor '" NM "': listed in weight_map for " PT
                             ", but that file does not hold it",
                          ipath, pairs[i].tensor, m->files[fi]->path);
            goto done;
        }
        m->entries[m->n++] = (st_entry){t, fi};
    }
done:
    free(shards);
    free(pairs);
    free(arena);
    free(buf);
    return st;
}

static mxm_status st_model_from_listing(mxm_st_model *m, const char *dir) {
    char eb[128];
    DIR *d = opendir(dir);
    if (!d)
        return mxm_fail(MXM_ERR_IO, PT ": cannot open folder: %s", dir,
                        st_strerror(errno, eb, sizeof eb));
    char **names = NULL;
    int64_t n = 0, cap = 0;
    mxm_status st = MXM_OK;
    const struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *s = de->d_name;
        const size_t l = strlen(s), sl = strlen(".safetensors");
        if (s[0] == '.' || l <= sl || strcmp(s + l - sl, ".safetensors") != 0) continue;
        char *p = mxm_st_path_join(dir, s);
        const int reg = p && st_is_regular(p);
        free(p);
        if (!reg) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            char **nn = realloc(names, (size_t)cap * sizeof *names);
            if (!nn) {
                st = mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", dir);
                break;
            }
            names = nn;
        }
        names[n] = strdup(s);
        if (!names[n]) {
            st = mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", dir);
            break;
        }
        n++;
    }
    closedir(d);
    if (st == MXM_OK && n == 0)
        st = mxm_fail(MXM_ERR_NOT_FOUND,
                      PT ": no model.safetensors.index.json, model.safetensors or *.safetensors",
                      dir);
    if (st == MXM_OK) {
        if (n > 1) qsort(names, (size_t)n, sizeof *names, st_cmp_str);
        m->files = calloc((size_t)n, sizeof *m->files);
        if (!m->files) st = mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", dir);
    }
    if (st == MXM_OK) st = st_model_open_files(m, dir, (const char *const *)names, n);
    if (st == MXM_OK) st = st_model_collect_all(m, dir);
    for (int64_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return st;
}

static mxm_status st_model_single(mxm_st_model *m, const char *path) {
    m->files = calloc(1, sizeof *m->files);
    if (!m->files) return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", path);
    mxm_status st = mxm_st_open(path, &m->files[0]);
    if (st != MXM_OK) return st;
    m->nfiles = 1;
    return st_model_collect_all(m, path);
}

mxm_status mxm_st_model_open(const char *dir, mxm_st_model **out) {
    if (!out) return mxm_fail(MXM_ERR_NULL, "mxm_st_model_open: out is NULL");
    *out = NULL;
    if (!dir) return mxm_fail(MXM_ERR_NULL, "mxm_st_model_open: dir is NULL");
    mxm_st_model *m = calloc(1, sizeof *m);
    if (!m) return mxm_fail(MXM_ERR_NOMEM, "out of memory opening model " PT, dir);
    mxm_status st;
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        char eb[128];
        const int e = errno;
        st = mxm_fail(e == ENOENT ? MXM_ERR_NOT_FOUND : MXM_ERR_IO, PT ": %s", dir,
                      st_strerror(e, eb, sizeof eb));
    } else if (S_ISREG(sb.st_mode)) {
        st = st_model_single(m, dir);
    } else {
        char *ipath = mxm_st_path_join(dir, "model.safetensors.index.json");
        char *spath = mxm_st_path_join(dir, "model.safetensors");
        if (!ipath || !spath)
            st = mxm_fail(MXM_ERR_NOMEM, "out of memory opening model " PT, dir);
        else if (st_is_regular(ipath))
            st = st_model_from_index(m, dir, ipath);
        else if (st_is_regular(spath))
            st = st_model_single(m, spath);
        else
            st = st_model_from_listing(m, dir);
        free(ipath);
        free(spath);
    }
    if (st != MXM_OK) {
        mxm_st_model_close(m);
        return st;
    }
    *out = m;
    return MXM_OK;
}

static const st_entry *st_model_lookup(const mxm_st_model *m, const char *name) {
    if (!m || !name || m->n == 0) return NULL;
    mxm_st_tensor kt;
    kt.name = name;
    const st_entry key = {&kt, 0};
    return bsearch(&key, m->entries, (size_t)m->n, sizeof *m->entries, st_cmp_entry);
}

const mxm_st_tensor *mxm_st_model_find(const mxm_st_model *m, const char *name,
                                       const mxm_st_file **file) {
    const st_entry *e = st_model_lookup(m, name);
    if (file) *file = e ? m->files[e->file] : NULL;
    return e ? e->t : NULL;
}

int64_t mxm_st_model_count(const mxm_st_model *m) {
    return m ? m->n : 0;
}

const mxm_st_tensor *mxm_st_model_at(const mxm_st_model *m, int64_t i) {
    return (m && i >= 0 && i < m->n) ? m->entries[i].t : NULL;
}

const mxm_st_file *mxm_st_model_file_of(const mxm_st_model *m, int64_t i) {
    return (m && i >= 0 && i < m->n) ? m->files[m->entries[i].file] : NULL;
}

int64_t mxm_st_model_file_count(const mxm_st_model *m) {
    return m ? m->nfiles : 0;
}

const mxm_st_file *mxm_st_model_file(const mxm_st_model *m, int64_t i) {
    return (m && i >= 0 && i < m->nfiles) ? m->files[i] : NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* writer */

typedef struct st_wtensor {
    char *name;
    int dt; /* index into st_dtypes */
    int32_t rank;
    int64_t shape[MXM_ST_MAX_RANK];
    const void *data;
    int64_t nbytes;
} st_wtensor;

struct mxm_st_writer {
    char *path;
    st_wtensor *t;
    int64_t n, cap;
    int64_t *hash; /* open addressing: index into t, or -1 */
    int64_t hcap;  /* power of two */
    char **mkey, **mval;
    int64_t nmeta, mcap;
    mxm_st_order order;
};

static uint64_t st_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* Slot of name in the hash table: its index if present, else the empty slot to use. */
static int64_t st_hash_slot(const mxm_st_writer *w, const char *name) {
    int64_t i = (int64_t)(st_hash(name) & (uint64_t)(w->hcap - 1));
    while (w->hash[i] >= 0 && strcmp(w->t[w->hash[i]].name, name) != 0)
        i = (i + 1) & (w->hcap - 1);
    return i;
}

static int st_hash_grow(mxm_st_writer *w) {
    const int64_t ncap = w->hcap ? 2 * w->hcap : 64;
    int64_t *nh = malloc((size_t)ncap * sizeof *nh);
    if (!nh) return -1;
    for (int64_t i = 0; i < ncap; i++)
        nh[i] = -1;
    free(w->hash);
    w->hash = nh;
    w->hcap = ncap;
    for (int64_t k = 0; k < w->n; k++)
        w->hash[st_hash_slot(w, w->t[k].name)] = k;
    return 0;
}

void mxm_st_writer_abort(mxm_st_writer *w) {
    if (!w) return;
    for (int64_t i = 0; i < w->n; i++)
        free(w->t[i].name);
    for (int64_t i = 0; i < w->nmeta; i++) {
        free(w->mkey[i]);
        free(w->mval[i]);
    }
    free(w->t);
    free(w->hash);
    free(w->mkey);
    free(w->mval);
    free(w->path);
    free(w);
}

mxm_status mxm_st_writer_create(const char *path, mxm_st_writer **out) {
    if (!out) return mxm_fail(MXM_ERR_NULL, "mxm_st_writer_create: out is NULL");
    *out = NULL;
    if (!path) return mxm_fail(MXM_ERR_NULL, "mxm_st_writer_create: path is NULL");
    if (path[0] == '\0') return mxm_fail(MXM_ERR_INVALID_ARG, "mxm_st_writer_create: empty path");
    mxm_st_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(path))) {
        free(w);
        return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory creating writer", path);
    }
    *out = w;
    return MXM_OK;
}

static int st_valid_utf8_str(const char *s) {
    return mxm_st_utf8_invalid_at((const uint8_t *)s, (int64_t)strlen(s)) < 0;
}

mxm_status mxm_st_writer_add(mxm_st_writer *w, const char *name, const char *dtype_str,
                             int32_t rank, const int64_t *shape, const void *data, int64_t nbytes) {
    if (!w) return mxm_fail(MXM_ERR_NULL, "mxm_st_writer_add: writer is NULL");
    if (!name) return mxm_fail(MXM_ERR_NULL, PT ": tensor name is NULL", w->path);
    if (name[0] == '\0') return mxm_fail(MXM_ERR_INVALID_ARG, PT ": tensor name is empty", w->path);
    if (strcmp(name, "__metadata__") == 0 || !st_valid_utf8_str(name))
        return mxm_fail(MXM_ERR_INVALID_ARG,
                        PT ": tensor '" NM "': name is reserved or not valid UTF-8", w->path, name);
    const int di = st_dtype_index(dtype_str);
    if (di < 0)
        return mxm_fail(MXM_ERR_DTYPE, PT ": tensor '" NM "': unknown dtype '%.40s'", w->path, name,
                        dtype_str ? dtype_str : "(null)");
    if (rank < 0 || rank > MXM_ST_MAX_RANK)
        return mxm_fail(MXM_ERR_SHAPE, PT ": tensor '" NM "': rank %d is not in 0..%d", w->path,
                        name, rank, MXM_ST_MAX_RANK);
    if (rank > 0 && !shape)
        return mxm_fail(MXM_ERR_NULL, PT ": tensor '" NM "': shape is NULL", w->path, name);
    int64_t numel = 1;
    for (int32_t i = 0; i < rank; i++) {
        if (shape[i] < 0)
            return mxm_fail(MXM_ERR_SHAPE, PT ": tensor '" NM "': shape[%d] = %lld is negative",
                            w->path, name, i, (long long)shape[i]);
        if (!mxm_mul_i64(numel, shape[i], &numel))
            return mxm_fail(MXM_ERR_OVERFLOW, PT ": tensor '" NM "': shape product overflows",
                            w->path, name);
    }
    int64_t want;
    if (!mxm_mul_i64(numel, st_dtypes[di].size, &want))
        return mxm_fail(MXM_ERR_OVERFLOW, PT ": tensor '" NM "': byte size overflows", w->path,
                        name);
    if (nbytes != want)
        return mxm_fail(MXM_ERR_SHAPE,
                        PT ": tensor '" NM "': %lld bytes given, %s of %lld elements needs %lld",
                        w->path, name, (long long)nbytes, st_dtypes[di].name, (long long)numel,
                        (long long)want);
    if (nbytes > 0 && !data)
        return mxm_fail(MXM_ERR_NULL, PT ": tensor '" NM "': data is NULL", w->path, name);

    if (2 * (w->n + 1) > w->hcap && st_hash_grow(w) != 0)
        return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", w->path);
    const int64_t slot = st_hash_slot(w, name);
    if (w->hash[slot] >= 0)
        return mxm_fail(MXM_ERR_INVALID_ARG, PT ": tensor '" NM "': added twice", w->path, name);
    if (w->n == w->cap) {
        const int64_t ncap = w->cap ? 2 * w->cap : 16;
        st_wtensor *nt = realloc(w->t, (size_t)ncap * sizeof *nt);
        if (!nt) return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", w->path);
        w->t = nt;
        w->cap = ncap;
    }
    st_wtensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", w->path);
    t->dt = di;
    t->rank = rank;
    for (int32_t i = 0; i < rank; i++)
        t->shape[i] = shape[i];
    t->data = data;
    t->nbytes = nbytes;
    w->hash[slot] = w->n;
    w->n++;
    return MXM_OK;
}

mxm_status mxm_st_writer_set_metadata(mxm_st_writer *w, const char *key, const char *value) {
    if (!w) return mxm_fail(MXM_ERR_NULL, "mxm_st_writer_set_metadata: writer is NULL");
    if (!key || !value)
        return mxm_fail(MXM_ERR_NULL, PT ": metadata key or value is NULL", w->path);
    if (!st_valid_utf8_str(key) || !st_valid_utf8_str(value))
        return mxm_fail(MXM_ERR_INVALID_ARG, PT ": metadata '" NM "': not valid UTF-8", w->path,
                        key);
    char *v = strdup(value);
    if (!v) return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", w->path);
    for (int64_t i = 0; i < w->nmeta; i++) {
        if (strcmp(w->mkey[i], key) == 0) {
            free(w->mval[i]);
            w->mval[i] = v;
            return MXM_OK;
        }
    }
    if (w->nmeta == w->mcap) {
        const int64_t ncap = w->mcap ? 2 * w->mcap : 8;
        char **nk = realloc(w->mkey, (size_t)ncap * sizeof *nk);
        if (nk) w->mkey = nk;
        char **nv = nk ? realloc(w->mval, (size_t)ncap * sizeof *nv) : NULL;
        if (nv) w->mval = nv;
        if (!nk || !nv) {
            free(v);
            return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", w->path);
        }
        w->mcap = ncap;
    }
    char *k = strdup(key);
    if (!k) {
        free(v);
        return mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", w->path);
    }
    w->mkey[w->nmeta] = k;
    w->mval[w->nmeta] = v;
    w->nmeta++;
    return MXM_OK;
}

/* Growable byte buffer for the header. */
typedef struct st_buf {
    char *p;
    size_t n, cap;
    int oom;
} st_buf;

static void st_put(st_buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + n)
            nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void st_puts(st_buf *b, const char *s) {
    st_put(b, s, strlen(s));
}

static void st_put_i64(st_buf *b, int64_t x) {
    char tmp[32];
    const int l = snprintf(tmp, sizeof tmp, "%lld", (long long)x);
    st_put(b, tmp, (size_t)l);
}

/* A JSON string the way serde_json writes it. */
static void st_put_json_str(st_buf *b, const char *s) {
    st_put(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        const unsigned char c = (unsigned char)*p;
        const char *esc = NULL;
        char u[8];
        switch (c) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '\b':
            esc = "\\b";
            break;
        case '\f':
            esc = "\\f";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        default:
            if (c < 0x20) {
                snprintf(u, sizeof u, "\\u%04x", c);
                esc = u;
            }
        }
        if (esc)
            st_puts(b, esc);
        else
            st_put(b, p, 1);
    }
    st_put(b, "\"", 1);
}

/* MXM_ST_ORDER_SIZE: larger elements first, then name (dtypes of one size interleave). */
static int st_cmp_wtensor_size(const void *a, const void *b) {
    const st_wtensor *x = a, *y = b;
    const int32_t sx = st_dtypes[x->dt].size, sy = st_dtypes[y->dt].size;
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* MXM_ST_ORDER_DTYPE: descending dtype enum, then name. */
static int st_cmp_wtensor_dtype(const void *a, const void *b) {
    const st_wtensor *x = a, *y = b;
    if (x->dt != y->dt) return x->dt > y->dt ? -1 : 1;
    return strcmp(x->name, y->name);
}

void mxm_st_writer_set_order(mxm_st_writer *w, mxm_st_order order) {
    if (w) w->order = order;
}

static mxm_status st_write_all(int fd, const void *p, int64_t n, const char *tmp) {
    const uint8_t *q = p;
    while (n > 0) {
        const size_t chunk = n > (1 << 30) ? (size_t)1 << 30 : (size_t)n;
        const ssize_t r = write(fd, q, chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            char eb[128];
            return mxm_fail(MXM_ERR_IO, PT ": write failed: %s", tmp,
                            r < 0 ? st_strerror(errno, eb, sizeof eb) : "no progress");
        }
        q += r;
        n -= r;
    }
    return MXM_OK;
}

mxm_status mxm_st_writer_finish(mxm_st_writer *w) {
    if (!w) return mxm_fail(MXM_ERR_NULL, "mxm_st_writer_finish: writer is NULL");
    mxm_status st = MXM_OK;
    st_buf b = {0};
    char *tmp = NULL;
    st_meta *meta = NULL;
    int fd = -1;

    if (w->n > 1)
        qsort(w->t, (size_t)w->n, sizeof *w->t,
              w->order == MXM_ST_ORDER_DTYPE ? st_cmp_wtensor_dtype : st_cmp_wtensor_size);
    meta = malloc(((size_t)w->nmeta + 1) * sizeof *meta);
    if (!meta) {
        st = mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", w->path);
        goto done;
    }
    for (int64_t i = 0; i < w->nmeta; i++)
        meta[i] = (st_meta){w->mkey[i], w->mval[i]};
    if (w->nmeta > 1) qsort(meta, (size_t)w->nmeta, sizeof *meta, st_cmp_meta);

    st_put(&b, "{", 1);
    int first = 1;
    if (w->nmeta > 0) {
        st_puts(&b, "\"__metadata__\":{");
        for (int64_t i = 0; i < w->nmeta; i++) {
            if (i) st_put(&b, ",", 1);
            st_put_json_str(&b, meta[i].key);
            st_put(&b, ":", 1);
            st_put_json_str(&b, meta[i].value);
        }
        st_put(&b, "}", 1);
        first = 0;
    }
    int64_t offset = 0;
    for (int64_t i = 0; i < w->n; i++) {
        const st_wtensor *t = &w->t[i];
        int64_t end;
        if (!mxm_add_i64(offset, t->nbytes, &end)) {
            st = mxm_fail(MXM_ERR_OVERFLOW, PT ": total data size overflows int64", w->path);
            goto done;
        }
        if (!first) st_put(&b, ",", 1);
        first = 0;
        st_put_json_str(&b, t->name);
        st_puts(&b, ":{\"dtype\":\"");
        st_puts(&b, st_dtypes[t->dt].name);
        st_puts(&b, "\",\"shape\":[");
        for (int32_t k = 0; k < t->rank; k++) {
            if (k) st_put(&b, ",", 1);
            st_put_i64(&b, t->shape[k]);
        }
        st_puts(&b, "],\"data_offsets\":[");
        st_put_i64(&b, offset);
        st_put(&b, ",", 1);
        st_put_i64(&b, end);
        st_puts(&b, "]}");
        offset = end;
    }
    st_put(&b, "}", 1);
    while (b.n % 8 != 0)
        st_put(&b, " ", 1);
    if (b.oom) {
        st = mxm_fail(MXM_ERR_NOMEM, PT ": out of memory building the header", w->path);
        goto done;
    }
    if (b.n > MXM_ST_MAX_HEADER) {
        st = mxm_fail(MXM_ERR_INVALID_ARG, PT ": header of %zu bytes exceeds the %d-byte limit",
                      w->path, b.n, MXM_ST_MAX_HEADER);
        goto done;
    }

    /* A temporary of a unique name in the target's folder (mkstemp), renamed over the target:
     * writers racing on one path each write their own file, and the path ends up holding one
     * complete file, that of the last rename. */
    const size_t plen = strlen(w->path);
    tmp = malloc(plen + 12);
    if (tmp) {
        memcpy(tmp, w->path, plen);
        memcpy(tmp + plen, ".tmp.XXXXXX", 12);
    } else {
        st = mxm_fail(MXM_ERR_NOMEM, PT ": out of memory", w->path);
        goto done;
    }
    char eb[128];
    fd = mkstemp(tmp);
    if (fd >= 0) (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
    if (fd < 0) {
        st = mxm_fail(MXM_ERR_IO, PT ": cannot create: %s", tmp, st_strerror(errno, eb, sizeof eb));
        free(tmp);
        tmp = NULL; /* nothing to remove */
        goto done;
    }
    (void)fchmod(fd, 0644); /* mkstemp makes 0600; the file is as readable as a plain write's */
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)b.n >> (8 * i));
    st = st_write_all(fd, len8, 8, tmp);
    if (st == MXM_OK) st = st_write_all(fd, b.p, (int64_t)b.n, tmp);
    for (int64_t i = 0; i < w->n && st == MXM_OK; i++)
        st = st_write_all(fd, w->t[i].data, w->t[i].nbytes, tmp);
    if (st == MXM_OK && fsync(fd) != 0)
        st = mxm_fail(MXM_ERR_IO, PT ": fsync failed: %s", tmp, st_strerror(errno, eb, sizeof eb));
    const int cr = close(fd);
    fd = -1;
    if (st == MXM_OK && cr != 0)
        st = mxm_fail(MXM_ERR_IO, PT ": close failed: %s", tmp, st_strerror(errno, eb, sizeof eb));
    if (st == MXM_OK && rename(tmp, w->path) != 0)
        st = mxm_fail(MXM_ERR_IO, PT ": cannot rename " PT " to it: %s", w->path, tmp,
                      st_strerror(errno, eb, sizeof eb));
    if (st != MXM_OK) unlink(tmp);

done:
    if (fd >= 0) close(fd);
    free(tmp);
    free(meta);
    free(b.p);
    mxm_st_writer_abort(w);
    return st;
}
