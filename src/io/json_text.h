/* JSON text as Hugging Face configs hold it. Python's json module writes the bare tokens NaN,
 * Infinity and -Infinity (Nemotron-H's time_step_limit, for one), which are not JSON; these
 * helpers let the loader and the quantizer read such files (one reader, mxm_hf_config_load /
 * mxm_hf_config_parse, so the two accept and reject the same configs) and the quantizer write
 * valid ones. */
#ifndef MXM_JSON_TEXT_H
#define MXM_JSON_TEXT_H

#include <jansson.h>
#include <stddef.h>

#include "mxmoe.h"

/* Parses text (len bytes) with duplicate keys rejected; flags are more jansson decoding flags
 * (JSON_ALLOW_NUL for ModelOpt configs, whose exclude lists may hold "\u0000"; 0 for none).
 * Outside strings, the bare tokens NaN, Infinity, -Infinity and numbers beyond the double range
 * (1e999, as mxm_json_text_valid writes) are read as the strings "NaN", "Infinity",
 * "-Infinity": jansson holds no non-finite number, and a key the loader needs as a number then
 * fails its type check by name. */
json_t *mxm_json_loadb_hf(const char *text, size_t len, size_t flags, json_error_t *err);

/* Valid JSON for text: outside strings, Infinity -> 1e999, -Infinity -> -1e999 (Python's json
 * and transformers read both back as +-inf), NaN -> null. A new heap string (free()) with its
 * length in *out_len, or NULL when out of memory. */
char *mxm_json_text_valid(const char *text, size_t len, size_t *out_len);

/* Config files (config.json, hf_quant_config.json) hold at most this many bytes: real ones are a
 * few kB; the limit keeps a hostile one from costing seconds and GBs. */
#define MXM_HF_CONFIG_MAX_BYTES (8 << 20)

/* A config file's text (len bytes; path names it in messages), parsed as every config is read:
 * Python's bare NaN/Infinity accepted as mxm_json_loadb_hf reads them, duplicate keys rejected,
 * "\u0000" parsed (JSON_ALLOW_NUL) but accepted only inside a ModelOpt exclude list, a JSON
 * object. The object (json_decref), or NULL with *st set (MXM_ERR_FORMAT, a message naming the
 * file and the place). Callers read the text with the MXM_HF_CONFIG_MAX_BYTES limit. */
json_t *mxm_hf_config_parse(const char *path, const char *text, size_t len, mxm_status *st);

/* Reads the config file at path as the safetensors reader reads headers (a regular file, so a FIFO
 * or a device never blocks the open) and parses it with mxm_hf_config_parse. MXM_ERR_NOT_FOUND
 * when missing. */
json_t *mxm_hf_config_load(const char *path, mxm_status *st);

/* The exclude list of a ModelOpt config: hf_quant_config.json's quantization.exclude_modules, or
 * config.json's quantization_config.ignore (NULL when absent). */
json_t *mxm_json_modelopt_exclude(json_t *root);

#endif
