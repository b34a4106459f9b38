/* st_jsonw: numbers and literals for JSON output, allocation-free except for
 * integers beyond 64 bits (base-2^32 limbs divided down by 10^9). */
#include "st_jsonw.h"

#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void st_jsonw_null(st_sink *s)
{
    st_sink_write(s, "null", 4);
}

void st_jsonw_bool(st_sink *s, int value)
{
    if (value) {
        st_sink_write(s, "true", 4);
    } else {
        st_sink_write(s, "false", 5);
    }
}

void st_jsonw_i64(st_sink *s, int64_t v)
{
    if (v < 0) {
        st_sink_putc(s, '-');
        st_sink_u64(s, (uint64_t)0 - (uint64_t)v); /* INT64_MIN included */
    } else {
        st_sink_u64(s, (uint64_t)v);
    }
}

/* "C" numeric conventions for snprintf/strtod whatever setlocale() the host
 * made: a decimal comma would make invalid JSON. NULL if it cannot be made
 * (then the global locale is used). */
static locale_t c_numeric;
static pthread_once_t c_numeric_once = PTHREAD_ONCE_INIT;

static void c_numeric_create(void)
{
    c_numeric = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
}

void st_jsonw_double(st_sink *s, double v)
{
    if (!isfinite(v)) {
        st_jsonw_null(s);
        return;
    }
    pthread_once(&c_numeric_once, c_numeric_create);
    locale_t previous = c_numeric ? uselocale(c_numeric) : (locale_t)0;
    char text[40];
    int n = 0;
    for (int digits = 15; digits <= 17; digits++) {
        n = snprintf(text, sizeof text, "%.*g", digits, v);
        if (digits == 17 || strtod(text, NULL) == v) {
            break;
        }
    }
    if (previous) {
        uselocale(previous);
    }
    if (n <= 0 || (size_t)n >= sizeof text) { /* cannot happen for a finite double */
        st_jsonw_null(s);
        return;
    }
    st_sink_write(s, text, (size_t)n);
    if (!strpbrk(text, ".e")) {
        st_sink_write(s, ".0", 2); /* "1" would read back as an integer */
    }
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

st_jsonw_status st_jsonw_hex_integer(st_sink *s, const char *text, size_t len)
{
    size_t i = 0;
    int negative = 0;
    if (i < len && text[i] == '-') {
        negative = 1;
        i++;
    }
    if (len - i >= 2 && text[i] == '0' && (text[i + 1] == 'x' || text[i + 1] == 'X')) {
        i += 2;
    }
    size_t digits = len - i;
    if (digits == 0) {
        return ST_JSONW_BAD_NUMBER;
    }
    while (digits > 1 && text[i] == '0') { /* leading zeros */
        i++;
        digits--;
    }
    if (digits > ST_JSONW_MAX_DIGITS) { /* 16^d > 10^d: more decimal digits than that */
        return ST_JSONW_TOO_BIG;
    }
    /* little-endian base-2^32 limbs; then base-10^9 chunks, least significant first
     * (a chunk holds at least 29 bits of the value) */
    size_t n_limbs = (digits + 7) / 8, max_chunks = digits * 4 / 29 + 2;
    uint32_t *limbs = calloc(n_limbs, sizeof *limbs);
    uint32_t *chunks = malloc(max_chunks * sizeof *chunks);
    st_jsonw_status status = ST_JSONW_OK;
    if (!limbs || !chunks) {
        status = ST_JSONW_NO_MEMORY;
        goto error;
    }
    for (size_t k = 0; k < digits; k++) {
        int d = hex_value(text[len - 1 - k]);
        if (d < 0) {
            status = ST_JSONW_BAD_NUMBER;
            goto error;
        }
        limbs[k / 8] |= (uint32_t)d << (4 * (k % 8));
    }
    size_t top = n_limbs, n_chunks = 0;
    while (top && !limbs[top - 1]) {
        top--;
    }
    while (top) {
        uint64_t rem = 0;
        for (size_t j = top; j-- > 0;) {
            uint64_t cur = (rem << 32) | limbs[j];
            limbs[j] = (uint32_t)(cur / 1000000000u);
            rem = cur % 1000000000u;
        }
        chunks[n_chunks++] = (uint32_t)rem;
        while (top && !limbs[top - 1]) {
            top--;
        }
    }
    size_t n_decimal = n_chunks ? 9 * (n_chunks - 1) : 1;
    for (uint32_t top_chunk = n_chunks ? chunks[n_chunks - 1] : 0; top_chunk; top_chunk /= 10) {
        n_decimal++;
    }
    if (n_decimal > ST_JSONW_MAX_DIGITS) {
        status = ST_JSONW_TOO_BIG;
    } else if (n_chunks == 0) {
        st_sink_putc(s, '0');
    } else {
        if (negative) {
            st_sink_putc(s, '-');
        }
        st_sink_u64(s, chunks[n_chunks - 1]);
        for (size_t c = n_chunks - 1; c-- > 0;) {
            char nine[9];
            uint32_t v = chunks[c];
            for (int d = 8; d >= 0; d--) {
                nine[d] = (char)('0' + v % 10);
                v /= 10;
            }
            st_sink_write(s, nine, 9);
        }
    }
error:
    free(limbs);
    free(chunks);
    return status;
}
