/* st_jsonscan: strict JSON lexing. Strings are validated as UTF-8 (the same
 * well-formedness table as st_json.c) and their escapes decoded; numbers follow
 * the RFC 8259 grammar; nesting is bounded so hostile input cannot exhaust
 * the stack. */
#include "st_jsonscan.h"

#include "st_json.h"
#include "st_text.h"

#include <stdlib.h>
#include <string.h>

static st_json_status fail(st_json_cursor *c, st_json_status status, size_t pos)
{
    c->err_pos = pos;
    return status;
}

void st_json_cursor_init(st_json_cursor *c, const char *p, size_t len)
{
    memset(c, 0, sizeof *c);
    c->p = p;
    c->len = len;
}

void st_json_cursor_free(st_json_cursor *c)
{
    free(c->buf);
    c->buf = NULL;
    c->buf_cap = 0;
}

static int reserve(st_json_cursor *c, size_t need)
{
    return st_text_grow(&c->buf, &c->buf_cap, need);
}

/* Four hex digits at pos, or -1. */
static long hex4(const st_json_cursor *c, size_t pos)
{
    if (c->len - pos < 4) {
        return -1;
    }
    return st_text_hex4(c->p + pos);
}

/* Length of the run of plain bytes (printable ASCII other than '"' and '\\')
 * at p, up to len: eight bytes at a time while the word holds none of the
 * special bytes; the first special byte of a word is the lowest flag of the
 * word test on little-endian machines (byte by byte elsewhere, and for the
 * last few bytes of the input). */
static size_t plain_run(const char *p, size_t len)
{
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        uint64_t special = (w & 0x8080808080808080u) | st_text_special_bytes(w);
        if (special) {
#if defined(__GNUC__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            /* the lowest flagged byte is exact (borrows only run upwards
             * from a special byte), and it is the first in memory */
            return i + (size_t)__builtin_ctzll(special) / 8;
#else
            break;
#endif
        }
    }
    for (; i < len; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch < 0x20 || ch >= 0x80 || ch == '"' || ch == '\\') {
            break;
        }
    }
    return i;
}

st_json_status st_json_string(st_json_cursor *c, const char **out, size_t *out_len)
{
    st_json_status status = st_json_expect(c, '"');
    if (status != ST_JSON_OK) {
        return status;
    }
    /* most strings are one plain run up to the closing quote: no escapes,
     * no multi-byte characters, one copy */
    size_t first = plain_run(c->p + c->pos, c->len - c->pos);
    if (c->pos + first < c->len && c->p[c->pos + first] == '"') {
        if (reserve(c, first + 1) != 0) {
            return fail(c, ST_JSON_NO_MEMORY, c->pos);
        }
        memcpy(c->buf, c->p + c->pos, first);
        c->buf[first] = '\0';
        c->pos += first + 1;
        *out = c->buf;
        *out_len = first;
        return ST_JSON_OK;
    }
    /* decoded output is never longer than the source */
    size_t n = 0;
    while (1) {
        if (c->pos >= c->len) {
            return fail(c, ST_JSON_UNEXPECTED_END, c->pos);
        }
        size_t run = plain_run(c->p + c->pos, c->len - c->pos);
        if (reserve(c, n + run + 4) != 0) {
            return fail(c, ST_JSON_NO_MEMORY, c->pos);
        }
        memcpy(c->buf + n, c->p + c->pos, run);
        n += run;
        c->pos += run;
        if (c->pos >= c->len) {
            return fail(c, ST_JSON_UNEXPECTED_END, c->pos);
        }
        unsigned char ch = (unsigned char)c->p[c->pos];
        if (ch == '"') {
            c->pos++;
            break;
        }
        if (ch < 0x20) {
            return fail(c, ST_JSON_BAD_STRING, c->pos);
        }
        if (ch >= 0x80) {
            size_t bad, k = st_utf8_sequence((const unsigned char *)c->p + c->pos, c->len - c->pos, &bad);
            if (!k) {
                return fail(c, ST_JSON_BAD_STRING, c->pos);
            }
            memcpy(c->buf + n, c->p + c->pos, k);
            n += k;
            c->pos += k;
            continue;
        }
        if (ch != '\\') {
            c->buf[n++] = (char)ch;
            c->pos++;
            continue;
        }
        size_t esc = c->pos;
        if (c->pos + 1 >= c->len) {
            return fail(c, ST_JSON_UNEXPECTED_END, c->len);
        }
        char e = c->p[c->pos + 1];
        c->pos += 2;
        switch (e) {
        case '"': c->buf[n++] = '"'; break;
        case '\\': c->buf[n++] = '\\'; break;
        case '/': c->buf[n++] = '/'; break;
        case 'b': c->buf[n++] = '\b'; break;
        case 'f': c->buf[n++] = '\f'; break;
        case 'n': c->buf[n++] = '\n'; break;
        case 'r': c->buf[n++] = '\r'; break;
        case 't': c->buf[n++] = '\t'; break;
        case 'u': {
            long cp = hex4(c, c->pos);
            if (cp < 0) {
                return fail(c, ST_JSON_BAD_STRING, esc);
            }
            c->pos += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF) {
                return fail(c, ST_JSON_BAD_STRING, esc); /* lone low surrogate */
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) { /* needs a low surrogate next */
                long lo = c->len - c->pos >= 6 && c->p[c->pos] == '\\' && c->p[c->pos + 1] == 'u'
                              ? hex4(c, c->pos + 2)
                              : -1;
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    return fail(c, ST_JSON_BAD_STRING, esc);
                }
                c->pos += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            n += st_text_put_utf8(c->buf + n, (unsigned long)cp);
            break;
        }
        default:
            return fail(c, ST_JSON_BAD_STRING, esc);
        }
    }
    if (reserve(c, n + 1) != 0) {
        return fail(c, ST_JSON_NO_MEMORY, c->pos);
    }
    c->buf[n] = '\0';
    *out = c->buf;
    *out_len = n;
    return ST_JSON_OK;
}

/* Scan a number per RFC 8259 from c->pos; sets *is_uint when it is a plain
 * run of digits. Leaves pos after it. */
static st_json_status scan_number(st_json_cursor *c, int *is_uint)
{
    size_t start = c->pos, i = c->pos;
    const char *p = c->p;
    *is_uint = 1;
    if (i < c->len && p[i] == '-') {
        *is_uint = 0;
        i++;
    }
    if (i >= c->len) {
        return fail(c, ST_JSON_UNEXPECTED_END, i);
    }
    if (p[i] == '0') {
        i++;
    } else if (p[i] >= '1' && p[i] <= '9') {
        while (i < c->len && p[i] >= '0' && p[i] <= '9') {
            i++;
        }
    } else {
        return fail(c, ST_JSON_BAD_NUMBER, start);
    }
    if (i < c->len && p[i] == '.') {
        *is_uint = 0;
        i++;
        if (i >= c->len || p[i] < '0' || p[i] > '9') {
            return fail(c, ST_JSON_BAD_NUMBER, start);
        }
        while (i < c->len && p[i] >= '0' && p[i] <= '9') {
            i++;
        }
    }
    if (i < c->len && (p[i] == 'e' || p[i] == 'E')) {
        *is_uint = 0;
        i++;
        if (i < c->len && (p[i] == '+' || p[i] == '-')) {
            i++;
        }
        if (i >= c->len || p[i] < '0' || p[i] > '9') {
            return fail(c, ST_JSON_BAD_NUMBER, start);
        }
        while (i < c->len && p[i] >= '0' && p[i] <= '9') {
            i++;
        }
    }
    c->pos = i;
    return ST_JSON_OK;
}

st_json_status st_json_uint(st_json_cursor *c, uint64_t *out)
{
    int next = st_json_peek(c);
    if (next < 0) {
        return fail(c, ST_JSON_UNEXPECTED_END, c->pos);
    }
    if (next != '-' && (next < '0' || next > '9')) {
        return fail(c, ST_JSON_UNEXPECTED_CHAR, c->pos);
    }
    size_t start = c->pos;
    int is_uint;
    st_json_status status = scan_number(c, &is_uint);
    if (status != ST_JSON_OK) {
        return status;
    }
    if (!is_uint) {
        return fail(c, ST_JSON_NOT_UINT, start);
    }
    uint64_t v = 0;
    for (size_t i = start; i < c->pos; i++) {
        uint64_t d = (uint64_t)(c->p[i] - '0');
        if (v > (UINT64_MAX - d) / 10) {
            return fail(c, ST_JSON_NOT_UINT, start);
        }
        v = v * 10 + d;
    }
    *out = v;
    return ST_JSON_OK;
}

static st_json_status literal(st_json_cursor *c, const char *word)
{
    size_t n = strlen(word);
    if (c->len - c->pos < n) {
        return fail(c, ST_JSON_UNEXPECTED_END, c->pos);
    }
    if (memcmp(c->p + c->pos, word, n) != 0) {
        return fail(c, ST_JSON_UNEXPECTED_CHAR, c->pos);
    }
    c->pos += n;
    return ST_JSON_OK;
}

st_json_status st_json_skip(st_json_cursor *c, int max_depth)
{
    int next = st_json_peek(c);
    if (next < 0) {
        return fail(c, ST_JSON_UNEXPECTED_END, c->pos);
    }
    const char *s;
    size_t n;
    int more, is_uint;
    st_json_status status;
    switch (next) {
    case '"':
        return st_json_string(c, &s, &n);
    case 't':
        return literal(c, "true");
    case 'f':
        return literal(c, "false");
    case 'n':
        return literal(c, "null");
    case '[':
    case '{':
        if (max_depth <= 0) {
            return fail(c, ST_JSON_TOO_DEEP, c->pos);
        }
        c->pos++;
        if (st_json_peek(c) == (next == '[' ? ']' : '}')) {
            c->pos++;
            return ST_JSON_OK;
        }
        do {
            if (next == '{') {
                if ((status = st_json_string(c, &s, &n)) != ST_JSON_OK ||
                    (status = st_json_expect(c, ':')) != ST_JSON_OK) {
                    return status;
                }
            }
            if ((status = st_json_skip(c, max_depth - 1)) != ST_JSON_OK ||
                (status = st_json_next(c, next == '[' ? ']' : '}', &more)) != ST_JSON_OK) {
                return status;
            }
        } while (more);
        return ST_JSON_OK;
    default:
        if (next == '-' || (next >= '0' && next <= '9')) {
            return scan_number(c, &is_uint);
        }
        return fail(c, ST_JSON_UNEXPECTED_CHAR, c->pos);
    }
}

const char *st_json_status_text(st_json_status status)
{
    switch (status) {
    case ST_JSON_OK: return "ok";
    case ST_JSON_UNEXPECTED_END: return "JSON ends too early";
    case ST_JSON_UNEXPECTED_CHAR: return "unexpected character in JSON";
    case ST_JSON_BAD_STRING: return "invalid JSON string (control character, escape or UTF-8)";
    case ST_JSON_BAD_NUMBER: return "invalid JSON number";
    case ST_JSON_NOT_UINT: return "expected a non-negative integer below 2^64";
    case ST_JSON_TOO_DEEP: return "JSON nested too deeply";
    case ST_JSON_NO_MEMORY: return "out of memory";
    }
    return "unknown JSON error";
}
