/* safetensors reader (memory-mapped, every byte of the file treated as hostile) and writer.
 *
 * Format (SPEC section 6): an 8-byte little-endian unsigned header length N, N bytes of UTF-8
 * JSON, then the data buffer. The JSON is an object; "__metadata__" maps to an object of
 * string -> string; every other key is a tensor name mapping to
 *   {"dtype": "F8_E4M3", "shape": [N, K], "data_offsets": [begin, end]}
 * with offsets relative to the data start. The reader accepts a file only when it is fully
 * consistent: header length in (0, 100000000] and inside the file, strict UTF-8, valid JSON
 * without duplicate keys, known dtypes, rank <= 8, non-negative integer dims, no int64 overflow,
 * end - begin == numel * elem_size, and the tensors tile the data buffer exactly (no holes, no
 * overlaps, nothing after the last tensor). Unknown fields inside a tensor entry are ignored,
 * like the reference implementation does. Failures: MXM_ERR_FORMAT (malformed),
 * MXM_ERR_OVERFLOW (sizes overflowing int64), MXM_ERR_IO (open/stat/mmap/read/write), each with
 * the file path and, where there is one, the tensor name in mxm_last_error().
 *
 * Data pointers point into the read-only mapping and are NOT guaranteed to be aligned to the
 * element size (files from the Python writer, and from mxm_st_writer, are aligned; other files
 * need not be): read multi-byte elements with memcpy or check the alignment first. If another
 * process truncates a mapped file, touching the lost pages raises SIGBUS (inherent to mmap).
 *
 * Not thread-safe for mutation; a file or model that is open may be read from many threads.
 */
#ifndef MXM_IO_SAFETENSORS_H
#define MXM_IO_SAFETENSORS_H

#include <stdint.h>

#include "mxmoe.h"

#define MXM_ST_MAX_RANK 8
#define MXM_ST_MAX_HEADER 100000000 /* bytes, as in the reference implementation */

typedef struct mxm_st_tensor {
    const char *name;               /* NUL-terminated, non-empty, valid UTF-8 */
    const char *dtype_str;          /* as in the file: "F8_E4M3", "BF16", ... (static storage) */
    int32_t dtype;                  /* mxm_dtype, or -1 for BOOL, I16, U16, U32, U64 */
    int32_t elem_size;              /* bytes */
    int32_t rank;                   /* 0..8 */
    int64_t shape[MXM_ST_MAX_RANK]; /* unused dims are 0 */
    int64_t numel;                  /* product of shape (1 for rank 0) */
    const void *data;               /* points into the mapping (may be unaligned, see above) */
    int64_t nbytes;                 /* numel * elem_size */
    int64_t offset;                 /* begin of data_offsets: byte offset from the data start */
} mxm_st_tensor;

typedef struct mxm_st_file mxm_st_file;

/* Maps path read-only and validates everything. On failure *out is NULL. */
mxm_status mxm_st_open(const char *path, mxm_st_file **out);
/* Same checks on a caller buffer (fuzzing, tests); the buffer must outlive the file. label
 * (may be NULL) names the buffer in messages and in mxm_st_path(). */
mxm_status mxm_st_open_memory(const void *buf, int64_t len, const char *label, mxm_st_file **out);
void mxm_st_close(mxm_st_file *f); /* NULL is fine */

int64_t mxm_st_count(const mxm_st_file *f);
/* i-th tensor in data-offset order (zero-size tensors at the same offset ordered by name);
 * NULL when i is out of range. */
const mxm_st_tensor *mxm_st_at(const mxm_st_file *f, int64_t i);
/* Binary search by name; NULL if absent. */
const mxm_st_tensor *mxm_st_find(const mxm_st_file *f, const char *name);
/* __metadata__ string value, NULL if absent. */
const char *mxm_st_metadata(const mxm_st_file *f, const char *key);
int64_t mxm_st_metadata_count(const mxm_st_file *f);
/* i-th metadata entry in key order; returns 0 and fills key/value, or -1 when out of range. */
int mxm_st_metadata_at(const mxm_st_file *f, int64_t i, const char **key, const char **value);
const char *mxm_st_path(const mxm_st_file *f);
/* Size of the data buffer (file size - 8 - header length) and the header length N. */
int64_t mxm_st_data_size(const mxm_st_file *f);
int64_t mxm_st_header_size(const mxm_st_file *f);

/* A model folder, first match wins:
 *   1. model.safetensors.index.json: "weight_map" maps tensor -> shard file (relative to dir;
 *      absolute names and ".." components are rejected). Every shard is opened once; every
 *      mapped tensor must exist in its shard (else MXM_ERR_FORMAT). The model's tensors are
 *      exactly the weight_map entries (tensors a shard holds but the map does not list are
 *      not visible).
 *   2. model.safetensors: a single file.
 *   3. every *.safetensors file in dir (hidden files skipped, opened in name order); a tensor
 *      name in two files is MXM_ERR_FORMAT.
 * dir may also be the path of a single .safetensors file. Nothing found: MXM_ERR_NOT_FOUND. */
typedef struct mxm_st_model mxm_st_model;
mxm_status mxm_st_model_open(const char *dir, mxm_st_model **out);
void mxm_st_model_close(mxm_st_model *m); /* NULL is fine */
/* NULL if absent; *file (optional) receives the shard that holds it. */
const mxm_st_tensor *mxm_st_model_find(const mxm_st_model *m, const char *name,
                                       const mxm_st_file **file);
int64_t mxm_st_model_count(const mxm_st_model *m); /* all tensors over all shards */
const mxm_st_tensor *mxm_st_model_at(const mxm_st_model *m, int64_t i);    /* sorted by name */
const mxm_st_file *mxm_st_model_file_of(const mxm_st_model *m, int64_t i); /* shard of _at(i) */
int64_t mxm_st_model_file_count(const mxm_st_model *m);
const mxm_st_file *mxm_st_model_file(const mxm_st_model *m, int64_t i);

/* Validates a model.safetensors.index.json held in memory (fuzzing, tests) with the checks
 * mxm_st_model_open applies before opening shards; fills the weight_map size and the number of
 * distinct shards (each may be NULL). */
mxm_status mxm_st_index_check_memory(const void *buf, int64_t len, const char *label,
                                     int64_t *num_tensors, int64_t *num_shards);

/* Writer. Collects tensors (pointers, not copies: data must stay valid until finish/abort),
 * then writes header + data to a unique temporary "<path>.tmp.XXXXXX" (mkstemp) and renames it
 * to path on success, so a failure never leaves a half-written file at path and concurrent
 * writers of one path never mix their data. Compact JSON with "__metadata__" first (keys
 * sorted), header keys in data order, header padded with spaces to a multiple of 8, every
 * tensor's data aligned to its element size in an 8-aligned mapping. The data order is one of:
 *  - MXM_ST_ORDER_SIZE (default): by element size, descending, then by name (bytewise); dtypes
 *    of one size interleave, so each F8_E4M3 weight sits next to its U8 scale. The layout of
 *    ModelOpt-rule MXFP8 checkpoints such as the tests/data *_mxfp8 fixtures, which mxmoe
 *    quantize reproduces byte for byte.
 *  - MXM_ST_ORDER_DTYPE: the safetensors library's own writer (checked byte for byte against
 *    safetensors 0.8.0): by descending dtype (U64, I64, F64, F32, U32, I32, BF16, F16, U16,
 *    I16, F8_E8M0, F8_E4M3, F8_E5M2, I8, U8, BOOL), then by name.
 * A failing add/set_metadata leaves the writer as it was (it can still be finished). */
typedef enum mxm_st_order { MXM_ST_ORDER_SIZE = 0, MXM_ST_ORDER_DTYPE = 1 } mxm_st_order;
typedef struct mxm_st_writer mxm_st_writer;
mxm_status mxm_st_writer_create(const char *path, mxm_st_writer **out);
void mxm_st_writer_set_order(mxm_st_writer *w, mxm_st_order order);
/* Checks: name non-empty valid UTF-8 and not "__metadata__" nor a duplicate
 * (MXM_ERR_INVALID_ARG), known dtype (MXM_ERR_DTYPE), rank 0..8 and dims >= 0
 * (MXM_ERR_SHAPE), numel*elem fits int64 (MXM_ERR_OVERFLOW), nbytes == numel*elem
 * (MXM_ERR_SHAPE), data non-NULL when nbytes > 0 (MXM_ERR_NULL). */
mxm_status mxm_st_writer_add(mxm_st_writer *w, const char *name, const char *dtype_str,
                             int32_t rank, const int64_t *shape, const void *data, int64_t nbytes);
/* Sets (or replaces) a __metadata__ entry; key and value must be valid UTF-8. */
mxm_status mxm_st_writer_set_metadata(mxm_st_writer *w, const char *key, const char *value);
/* Writes the file and frees the writer, also on failure. */
mxm_status mxm_st_writer_finish(mxm_st_writer *w);
void mxm_st_writer_abort(mxm_st_writer *w); /* frees without writing; NULL is fine */

/* dtype helpers. mxm_st_dtype_from_str returns the mxm_dtype and sets *elem_size (may be
 * NULL); returns -1 with *elem_size > 0 for BOOL/I16/U16/U32/U64, and -2 (elem_size 0) for
 * unknown strings. mxm_st_dtype_to_str: "F32", "F8_E4M3", ... or NULL for unknown values. */
int32_t mxm_st_dtype_from_str(const char *s, int32_t *elem_size);
const char *mxm_st_dtype_to_str(int32_t mxm_dtype);

/* "dir/name" in a new heap string (free()); no doubled '/'. NULL when out of memory. */
char *mxm_st_path_join(const char *dir, const char *name);

/* Reads a whole regular file of at most max_bytes into a NUL-terminated heap buffer (free()).
 * Missing file: MXM_ERR_NOT_FOUND; larger: MXM_ERR_FORMAT; other failures: MXM_ERR_IO. */
mxm_status mxm_st_read_small_file(const char *path, int64_t max_bytes, uint8_t **out,
                                  int64_t *out_len);

/* Strict UTF-8 check (RFC 3629: no overlongs, surrogates or code points > U+10FFFF). Returns
 * -1 when valid, else the offset of the first bad byte. */
int64_t mxm_st_utf8_invalid_at(const uint8_t *s, int64_t n);

#endif
