/* Private to src/io: the safetensors files (safetensors.c, safetensors_json.c,
 * safetensors_model.c, safetensors_write.c, safetensors_fs.c) share its tables, the reader's file
 * struct and the JSON lexer; the checkpoint quantizer (ckpt_quantize.c) its message formats and
 * file-system helpers. */
#ifndef MXM_SAFETENSORS_IMPL_H
#define MXM_SAFETENSORS_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "io/safetensors.h"

/* Hostile names and paths are cut in messages so that the rest of the message survives. */
#define NM "%.200s"
#define PT "%.400s"

/* ---- dtypes (safetensors.c) ---- */

struct st_dtype {
    const char *name;
    int32_t dtype;
    int32_t size;
};
/* In the safetensors library's enum order (MXM_ST_ORDER_DTYPE sorts by it, descending). */
extern const struct st_dtype st_dtypes[];
/* Index into st_dtypes, or -1. */
int st_dtype_index(const char *s);

/* ---- reader (safetensors.c) ---- */

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

int st_cmp_meta(const void *a, const void *b);
/* Formats "[2, 3]" into buf for messages. */
const char *st_shape_str(const int64_t *shape, int32_t rank, char *buf, size_t n);

/* ---- file-system helpers (safetensors_fs.c) ---- */

const char *st_strerror(int e, char *buf, size_t n);
int st_is_regular(const char *path);
/* "./a/./b" and "a/b" name the same shard: the leading "./" components skipped. */
const char *st_skip_dot(const char *s);
/* Writes all n bytes to fd (retrying short writes and EINTR); path names the file in messages. */
mxm_status st_write_all(int fd, const void *p, int64_t n, const char *path);

/* ---- the JSON lexer and header parser (safetensors_json.c) ---- */

typedef struct st_lex {
    const uint8_t *p; /* header */
    int64_t n;
    int64_t i;
    const char *path;
    const char *doc; /* "header" or "index", for messages */
    char *arena;     /* decoded strings; capacity n + 1, never reallocated */
    int64_t alen;
} st_lex;

/* A list of keys of one object (pointers onto the arena), checked for duplicates at the end by
 * sorting, so that an object with many keys costs O(k log k). */
typedef struct st_keys {
    const char **k;
    int64_t n, cap;
} st_keys;

mxm_status st_jerr(const st_lex *L, const char *what);
int st_peek(st_lex *L);
int st_separator(st_lex *L, int close);
mxm_status st_sep_error(st_lex *L, int close);
mxm_status st_lex_string(st_lex *L, const char **out);
mxm_status st_keys_add(st_lex *L, st_keys *ks, const char *key);
mxm_status st_keys_finish(st_lex *L, st_keys *ks, const char *where);
int st_cmp_str(const void *a, const void *b);
mxm_status st_skip_value(st_lex *L, int depth);
mxm_status st_parse_entry(st_lex *L, const char *name, int64_t data_len, mxm_st_tensor *t);
mxm_status st_parse_metadata(st_lex *L, st_meta **meta, int64_t *nmeta);

#endif
