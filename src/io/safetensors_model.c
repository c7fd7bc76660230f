/* safetensors: model folders (one file, shards named by an index, or a listing). */
#include "io/safetensors_impl.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
