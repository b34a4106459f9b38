/* st_jsonw: JSON values other than strings (st_json escapes those), written
 * into an st_sink: what the args of an event are made of. */
#ifndef ST_JSONW_H
#define ST_JSONW_H

#include <stddef.h>
#include <stdint.h>

#include "st_sink.h"

typedef enum st_jsonw_status {
    ST_JSONW_OK = 0,
    ST_JSONW_BAD_NUMBER, /* not [-][0x]hexdigits */
    ST_JSONW_TOO_BIG,    /* more than ST_JSONW_MAX_DIGITS decimal digits */
    ST_JSONW_NO_MEMORY,
} st_jsonw_status;

/* The longest integer st_jsonw_hex_integer writes, in decimal digits: Python's
 * default int_max_str_digits, so that json.loads reads every trace back. */
#define ST_JSONW_MAX_DIGITS 4300u

/* Append null, true or false. Sink errors are sticky (as for every function
 * here). Can't fail otherwise. */
void st_jsonw_null(st_sink *s);
void st_jsonw_bool(st_sink *s, int value);

/* Append v in decimal. Can't fail otherwise. */
void st_jsonw_i64(st_sink *s, int64_t v);

/* Append v so that parsing it gives v back exactly: the shortest of 15, 16 or
 * 17 significant digits that round-trips, always with a '.' or an exponent so
 * that it reads back as a float ("1.0", "-0.0", "1e+22"); NaN and infinities
 * (not JSON) as null. Independent of the process's locale. Can't fail otherwise. */
void st_jsonw_double(st_sink *s, double v);

/* Append the integer written in hexadecimal at text (len bytes: an optional
 * '-', an optional "0x"/"0X", then at least one hex digit; what Python's
 * hex() gives) in decimal: integers of any size up to ST_JSONW_MAX_DIGITS
 * decimal digits.
 * Returns OK, or BAD_NUMBER, TOO_BIG or NO_MEMORY having appended nothing. */
st_jsonw_status st_jsonw_hex_integer(st_sink *s, const char *text, size_t len);

#endif
