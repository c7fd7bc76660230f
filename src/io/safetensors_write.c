/* safetensors writer. See safetensors.h. */
#include "io/safetensors_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
