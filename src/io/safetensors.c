/* safetensors reader (mmap, hostile-input checks): dtypes, open, lookups. See safetensors.h. */
#include "io/safetensors_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------ */
/* dtypes: in the safetensors library's enum order (MXM_ST_ORDER_DTYPE sorts by it, descending) */

const struct st_dtype st_dtypes[] = {
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
int st_dtype_index(const char *s) {
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
/* reader */

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

int st_cmp_meta(const void *a, const void *b) {
    return strcmp(((const st_meta *)a)->key, ((const st_meta *)b)->key);
}

/* Formats "[2, 3]" into buf for messages. */
const char *st_shape_str(const int64_t *shape, int32_t rank, char *buf, size_t n) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int32_t i = 0; i < rank && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
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
