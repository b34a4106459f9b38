/* st_json: the one JSON string escaper every StageTrace writer uses. */
#ifndef ST_JSON_H
#define ST_JSON_H

#include <stddef.h>

#include "st_sink.h"

/* Append the len bytes at s to the sink as a JSON string literal, quotes
 * included. Output is always valid JSON and valid UTF-8: '"' and '\\' are
 * escaped, control characters (U+0000..U+001F, U+007F) become \n, \t, ... or
 * \u00XX, and every maximal ill-formed UTF-8 subsequence (stray continuation
 * bytes, truncated sequences, overlongs, surrogates, > U+10FFFF) becomes one
 * U+FFFD. Returns the number of replacements made. Sink errors are sticky. */
size_t st_json_write_string(st_sink *out, const char *s, size_t len);

/* Length of the well-formed UTF-8 sequence at p (1..4; avail >= 1 bytes
 * there), or 0 when ill-formed; *bad_len is then the length of the maximal
 * ill-formed subpart (>= 1). Can't fail. */
size_t st_utf8_sequence(const unsigned char *p, size_t avail, size_t *bad_len);

#endif
