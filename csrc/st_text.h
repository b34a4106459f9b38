/* st_text: the small text helpers the two JSON readers (st_jsonscan and
 * st_tracescan) share: buffer growth, hex digits and UTF-8 encoding. */
#ifndef ST_TEXT_H
#define ST_TEXT_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* Grow the buffer *p of *cap bytes to hold at least need bytes, doubling from
 * 64. 0, or -1 out of memory (the buffer is then unchanged). */
static inline int st_text_grow(char **p, size_t *cap, size_t need)
{
    if (need <= *cap) {
        return 0;
    }
    size_t size = *cap ? *cap : 64;
    while (size < need) {
        size *= 2;
    }
    char *q = realloc(*p, size);
    if (!q) {
        return -1;
    }
    *p = q;
    *cap = size;
    return 0;
}

/* The value of the hex digit c, or -1. */
static inline int st_text_hex_digit(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* The four hex digits at p (all readable), or -1. */
static inline long st_text_hex4(const char *p)
{
    long v = 0;
    for (int k = 0; k < 4; k++) {
        int h = st_text_hex_digit(p[k]);
        if (h < 0) {
            return -1;
        }
        v = v * 16 + h;
    }
    return v;
}

/* The code point cp (a lone surrogate too, as its three bytes) as UTF-8 at
 * out (room for 4); the number of bytes written. */
static inline size_t st_text_put_utf8(char *out, unsigned long cp)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* In the eight bytes of w: the high bit of each byte below 0x20, '"' or '\\'
 * (the lowest one set is exact: borrows only run upwards from such a byte);
 * bytes >= 0x80 never set theirs. 0 when w holds none. */
static inline uint64_t st_text_special_bytes(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    uint64_t quote = w ^ (ones * '"'), backslash = w ^ (ones * '\\');
    return (((w - ones * 0x20) & ~w) | ((quote - ones) & ~quote) | ((backslash - ones) & ~backslash)) &
           highs;
}

#endif
