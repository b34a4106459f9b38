/* st_jsonscan: a strict, bounded JSON cursor (RFC 8259) for reading headers
 * without building a document tree. Every failure carries the byte offset. */
#ifndef ST_JSONSCAN_H
#define ST_JSONSCAN_H

#include <stddef.h>
#include <stdint.h>

typedef enum st_json_status {
    ST_JSON_OK = 0,
    ST_JSON_UNEXPECTED_END, /* input ended inside a value */
    ST_JSON_UNEXPECTED_CHAR,
    ST_JSON_BAD_STRING,  /* control character, bad escape, bad \u, invalid UTF-8 */
    ST_JSON_BAD_NUMBER,  /* not an RFC 8259 number */
    ST_JSON_NOT_UINT,    /* a number where a non-negative integer < 2^64 is needed */
    ST_JSON_TOO_DEEP,    /* nesting beyond ST_JSON_MAX_DEPTH */
    ST_JSON_NO_MEMORY,
} st_json_status;

#define ST_JSON_MAX_DEPTH 64

typedef struct st_json_cursor {
    const char *p;   /* start of input */
    size_t len;
    size_t pos;      /* next byte to read */
    size_t err_pos;  /* offset of the first failure */
    /* scratch for decoded strings; grows, freed by st_json_cursor_free */
    char *buf;
    size_t buf_cap;
} st_json_cursor;

/* A cursor over len bytes at p (not copied; must outlive the cursor). */
void st_json_cursor_init(st_json_cursor *c, const char *p, size_t len);

/* Free the string scratch buffer. Can't fail. */
void st_json_cursor_free(st_json_cursor *c);



/* Read a string; *out points into the cursor's scratch buffer (valid until
 * the next string is read) holding the decoded UTF-8, *out_len its length. */
st_json_status st_json_string(st_json_cursor *c, const char **out, size_t *out_len);

/* Read a non-negative integer that fits in uint64 (no sign, fraction or
 * exponent; NOT_UINT otherwise, BAD_NUMBER for malformed numbers). */
st_json_status st_json_uint(st_json_cursor *c, uint64_t *out);

/* Skip any one value, validating it, nesting at most max_depth levels. */
st_json_status st_json_skip(st_json_cursor *c, int max_depth);


// --- Cursor steps (inline: they run several times per header entry) ---

/* Skip whitespace; return the next byte or -1 at the end. Can't fail. */
static inline int st_json_peek(st_json_cursor *c)
{
    while (c->pos < c->len) {
        char ch = c->p[c->pos];
        if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r') {
            return (unsigned char)ch;
        }
        c->pos++;
    }
    return -1;
}

/* Consume the byte ch (after whitespace) or fail with UNEXPECTED_CHAR/END. */
static inline st_json_status st_json_expect(st_json_cursor *c, char ch)
{
    int next = st_json_peek(c);
    if (next == (unsigned char)ch) {
        c->pos++;
        return ST_JSON_OK;
    }
    c->err_pos = c->pos;
    return next < 0 ? ST_JSON_UNEXPECTED_END : ST_JSON_UNEXPECTED_CHAR;
}

/* After an element of an object or array: consume ',' (returns 1 in *more)
 * or the closing `close` byte (*more = 0). */
static inline st_json_status st_json_next(st_json_cursor *c, char close, int *more)
{
    int next = st_json_peek(c);
    if (next == ',' || next == (unsigned char)close) {
        c->pos++;
        *more = next == ',';
        return ST_JSON_OK;
    }
    c->err_pos = c->pos;
    return next < 0 ? ST_JSON_UNEXPECTED_END : ST_JSON_UNEXPECTED_CHAR;
}

/* A short English name for a status ("invalid string"). Static storage. */
const char *st_json_status_text(st_json_status status);

#endif
