/* JSON text as Hugging Face configs hold it. Python's json module writes the bare tokens NaN,
 * Infinity and -Infinity (Nemotron-H's time_step_limit, for one), which are not JSON; these two
 * helpers let the loader read such files and the quantizer write valid ones. */
#ifndef MXM_JSON_TEXT_H
#define MXM_JSON_TEXT_H

#include <jansson.h>
#include <stddef.h>

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

#endif
