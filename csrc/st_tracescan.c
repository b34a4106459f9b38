/* st_tracescan: the streaming trace reader (see st_tracescan.h) and the span
 * arithmetic the summary needs over millions of intervals. */
#include "st_tracescan.h"

#include "st_text.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// --- Growable byte buffers --------------------------------------------------------

typedef struct bytes {
    char *p;
    size_t len, cap;
} bytes;

static int bytes_reserve(bytes *b, size_t extra)
{
    return st_text_grow(&b->p, &b->cap, b->len + extra);
}

static int bytes_put(bytes *b, const char *p, size_t n)
{
    if (bytes_reserve(b, n + 1) < 0) {
        return -1;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* Grow the array whose pointer is at slot (elem bytes an element, *cap of
 * them) to twice *cap, or to first. 0, or -1 out of memory (then unchanged). */
static int grow_array(void *slot, size_t *cap, size_t first, size_t elem)
{
    void *p;
    memcpy(&p, slot, sizeof p);
    size_t n = *cap ? *cap * 2 : first;
    void *q = realloc(p, n * elem);
    if (!q) {
        return -1;
    }
    memcpy(slot, &q, sizeof q);
    *cap = n;
    return 0;
}

/* A NUL-terminated copy of the n bytes at p, or NULL out of memory. */
static char *copy_text(const char *p, size_t n)
{
    char *q = malloc(n + 1);
    if (q) {
        memcpy(q, p, n);
        q[n] = '\0';
    }
    return q;
}

// --- The chunked input ------------------------------------------------------------

typedef enum lex { L_OK = 0, L_END, L_BAD, L_DEEP } lex;

typedef struct reader {
    int fd;
    char *buf;
    size_t cap, len; /* bytes [0, len) of the file from base are in memory */
    size_t valid;    /* [0, valid) is checked UTF-8: the lexers read no further */
    size_t pos;      /* the start of the next unit */
    uint64_t base;
    int eof;
    size_t max_value, chunk;
    size_t err; /* offset in buf of a lexing failure */
    const char *err_text;
    bytes dec; /* a decoded string */
} reader;

/* Check [valid, len) as strict UTF-8 (no overlongs, surrogates or code points
 * past U+10FFFF); a sequence cut by the end of what was read waits for more.
 * 0, or -1 with r->err at the first byte of the bad sequence. */
static int utf8_check(reader *r)
{
    const unsigned char *p = (const unsigned char *)r->buf;
    size_t i = r->valid, n = r->len;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (!(w & 0x8080808080808080u)) {
                i += 8;
                continue;
            }
        }
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            lo = c == 0xE0 ? 0xA0 : 0x80;
            hi = c == 0xED ? 0x9F : 0xBF;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            lo = c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xF4 ? 0x8F : 0xBF;
        } else {
            r->err = i;
            return -1;
        }
        for (size_t k = 1; k <= need; k++) {
            if (i + k >= n) {
                if (r->eof) {
                    r->err = i;
                    return -1;
                }
                r->valid = i; /* the rest of this sequence is still to come */
                return 0;
            }
            unsigned char b = p[i + k];
            if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) {
                r->err = i;
                return -1;
            }
        }
        i += need + 1;
    }
    r->valid = i;
    return 0;
}

/* Drop [0, pos), make room and read once more. ST_TSCAN_OK (r->eof set at the
 * end of the file), or the failure. */
static st_tscan_status fill(reader *r)
{
    if (r->pos > 0) {
        memmove(r->buf, r->buf + r->pos, r->len - r->pos);
        r->base += r->pos;
        r->len -= r->pos;
        r->valid -= r->pos;
        r->pos = 0;
    }
    if (r->cap - r->len < r->chunk) {
        if (r->len >= r->max_value) {
            return ST_TSCAN_TOO_BIG;
        }
        size_t cap = r->cap ? r->cap : r->chunk;
        while (cap - r->len < r->chunk) {
            cap *= 2;
        }
        char *p = realloc(r->buf, cap);
        if (!p) {
            return ST_TSCAN_NO_MEMORY;
        }
        r->buf = p;
        r->cap = cap;
    }
    ssize_t got;
    do {
        got = read(r->fd, r->buf + r->len, r->cap - r->len);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
        return ST_TSCAN_IO;
    }
    if (got == 0) {
        r->eof = 1;
    }
    r->len += (size_t)got;
    return utf8_check(r) < 0 ? ST_TSCAN_NOT_UTF8 : ST_TSCAN_OK;
}

// --- Lexing (over buf[0, valid)) --------------------------------------------------

static inline void skip_ws(const reader *r, size_t *i)
{
    while (*i < r->valid) {
        char c = r->buf[*i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            return;
        }
        (*i)++;
    }
}

static lex bad(reader *r, size_t at, const char *text)
{
    r->err = at;
    r->err_text = text;
    return L_BAD;
}

/* Skip whitespace at *i and stop before the next byte: L_OK when one is there,
 * else L_END (more to read) or, at the end of the file, L_BAD. */
static inline lex next_byte(reader *r, size_t *i)
{
    skip_ws(r, i);
    if (*i >= r->valid) {
        return r->eof ? bad(r, *i, "an unexpected end") : L_END;
    }
    return L_OK;
}

static int put_code_point(bytes *out, unsigned long cp)
{
    char u[4];
    return bytes_put(out, u, st_text_put_utf8(u, cp));
}

/* The length of the run of bytes at p (up to len) that need no attention in
 * a string: not '"', '\\' or a control character (bytes >= 0x80 were checked
 * as UTF-8 already). Eight bytes at a time while a word holds none. */
static size_t plain_run(const char *p, size_t len)
{
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (st_text_special_bytes(w)) {
            break;
        }
    }
    for (; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x20 || c == '"' || c == '\\') {
            break;
        }
    }
    return i;
}

/* The string at *i (its opening quote); decoded into out when out is not
 * NULL. Escapes as Python's json reads them: a surrogate pair is one code
 * point, a lone surrogate is kept. */
static lex lex_string(reader *r, size_t *i, bytes *out)
{
    const char *p = r->buf;
    size_t j = *i + 1, n = r->valid;
    if (out) {
        out->len = 0;
        if (bytes_reserve(out, 1) < 0) {
            return bad(r, *i, "out of memory");
        }
        out->p[0] = '\0';
    }
    for (;;) {
        size_t run = j + plain_run(p + j, n - j);
        if (out && run > j && bytes_put(out, p + j, run - j) < 0) {
            return bad(r, j, "out of memory");
        }
        j = run;
        if (j >= n) {
            return L_END;
        }
        unsigned char c = (unsigned char)p[j];
        if (c == '"') {
            *i = j + 1;
            return L_OK;
        }
        if (c < 0x20) {
            return bad(r, j, "a control character in a string");
        }
        if (j + 1 >= n) {
            return L_END;
        }
        char e = p[j + 1];
        const char *plain = strchr("\"\\/bfnrt", e);
        if (e && plain) {
            static const char map[] = "\"\\/\b\f\n\r\t";
            if (out && bytes_put(out, &map[plain - "\"\\/bfnrt"], 1) < 0) {
                return bad(r, j, "out of memory");
            }
            j += 2;
            continue;
        }
        if (e != 'u') {
            return bad(r, j, "an invalid escape in a string");
        }
        if (j + 6 > n) {
            return L_END;
        }
        long cp = st_text_hex4(p + j + 2);
        if (cp < 0) {
            return bad(r, j, "an invalid \\u escape in a string");
        }
        j += 6;
        if (cp >= 0xD800 && cp <= 0xDBFF) { /* a low surrogate escape may follow */
            if (j + 6 > n && !r->eof) {
                return L_END;
            }
            if (j + 6 <= n && p[j] == '\\' && p[j + 1] == 'u') {
                long low = st_text_hex4(p + j + 2);
                if (low >= 0xDC00 && low <= 0xDFFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    j += 6;
                }
            }
        }
        if (out && put_code_point(out, (unsigned long)cp) < 0) {
            return bad(r, j, "out of memory");
        }
    }
}

/* The literal word at *i, or L_BAD / L_END. */
static lex lex_word(reader *r, size_t *i, const char *word)
{
    size_t len = strlen(word);
    for (size_t k = 0; k < len; k++) {
        if (*i + k >= r->valid) {
            return r->eof ? bad(r, *i, "an unexpected end") : L_END;
        }
        if (r->buf[*i + k] != word[k]) {
            return bad(r, *i, "an unexpected character");
        }
    }
    *i += len;
    return L_OK;
}

static locale_t c_numeric;
static pthread_once_t c_numeric_once = PTHREAD_ONCE_INIT;

static void c_numeric_init(void)
{
    c_numeric = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
}

/* strtod in the C locale, whatever locale the host set. */
static double c_strtod(const char *text)
{
    pthread_once(&c_numeric_once, c_numeric_init);
    return c_numeric ? strtod_l(text, NULL, c_numeric) : strtod(text, NULL);
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* The value of the RFC 8259 number text p[0, len) when it is exact in one
 * IEEE operation (Clinger's fast path: at most 15 significant digits, so the
 * digits are an exact double, and a power of ten up to 1e22, also exact; one
 * correctly rounded multiply or divide gives strtod's result). 0 otherwise. */
static int fast_decimal(const char *p, size_t len, double *value)
{
    static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                   1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                   1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    size_t k = 0;
    int negative = 0, digits = 0, scale = 0;
    uint64_t m = 0;
    if (k < len && p[k] == '-') {
        negative = 1;
        k++;
    }
    for (; k < len && is_digit(p[k]); k++) {
        if (m || p[k] != '0') {
            if (++digits > 15) {
                return 0;
            }
        }
        m = m * 10 + (uint64_t)(p[k] - '0');
    }
    if (k < len && p[k] == '.') {
        for (k++; k < len && is_digit(p[k]); k++) {
            if (m || p[k] != '0') {
                if (++digits > 15) {
                    return 0;
                }
            }
            m = m * 10 + (uint64_t)(p[k] - '0');
            scale--;
        }
    }
    if (k < len) { /* an exponent */
        k++;
        int sign = 1, e = 0;
        if (k < len && (p[k] == '+' || p[k] == '-')) {
            sign = p[k] == '-' ? -1 : 1;
            k++;
        }
        for (; k < len; k++) {
            if (e > 1000) {
                return 0;
            }
            e = e * 10 + (p[k] - '0');
        }
        scale += sign * e;
    }
    if (scale < -22 || scale > 22) {
        return 0;
    }
    double v = (double)m;
    v = scale >= 0 ? v * pow10[scale] : v / pow10[-scale];
    *value = negative ? -v : v;
    return 1;
}

/* A number (RFC 8259, or NaN, Infinity, -Infinity) at *i; its value in *value
 * when value is not NULL. A number that reaches the end of what was read is
 * complete only at the end of the file. */
static lex lex_number(reader *r, size_t *i, double *value)
{
    const char *p = r->buf;
    size_t j = *i, n = r->valid;
#define NEED_MORE()                                                                                \
    do {                                                                                           \
        if (j >= n && !r->eof) {                                                                   \
            return L_END;                                                                          \
        }                                                                                          \
    } while (0)
#define DIGITS() /* one digit or more, then NEED_MORE */                                         \
    do {                                                                                           \
        if (j >= n || !is_digit(p[j])) {                                                           \
            return bad(r, j, "an invalid number");                                                 \
        }                                                                                          \
        while (j < n && is_digit(p[j])) {                                                          \
            j++;                                                                                   \
        }                                                                                          \
        NEED_MORE();                                                                               \
    } while (0)
    NEED_MORE();
    if (j < n && p[j] == 'N') {
        lex l = lex_word(r, &j, "NaN");
        if (l == L_OK && value) {
            *value = NAN;
        }
        *i = j;
        return l;
    }
    int negative = 0;
    if (j < n && p[j] == '-') {
        negative = 1;
        j++;
        NEED_MORE();
    }
    if (j < n && p[j] == 'I') {
        lex l = lex_word(r, &j, "Infinity");
        if (l == L_OK && value) {
            *value = negative ? -INFINITY : INFINITY;
        }
        *i = j;
        return l;
    }
    if (j >= n || !is_digit(p[j])) {
        return j >= n ? bad(r, j, "an unexpected end") : bad(r, j, "an invalid number");
    }
    if (p[j] == '0') {
        j++;
    } else {
        while (j < n && is_digit(p[j])) {
            j++;
        }
    }
    NEED_MORE();
    if (j < n && p[j] == '.') {
        j++;
        NEED_MORE();
        DIGITS();
    }
    if (j < n && (p[j] == 'e' || p[j] == 'E')) {
        j++;
        NEED_MORE();
        if (j < n && (p[j] == '+' || p[j] == '-')) {
            j++;
            NEED_MORE();
        }
        DIGITS();
    }
#undef DIGITS
#undef NEED_MORE
    if (value && fast_decimal(p + *i, j - *i, value)) {
        *i = j;
        return L_OK;
    }
    if (value) {
        char small[64];
        size_t len = j - *i;
        char *text = len < sizeof small ? small : malloc(len + 1);
        if (!text) {
            return bad(r, *i, "out of memory");
        }
        memcpy(text, p + *i, len);
        text[len] = '\0';
        *value = c_strtod(text);
        if (text != small) {
            free(text);
        }
    }
    *i = j;
    return L_OK;
}

/* Skip one value at *i, nesting at most max_depth containers. */
static lex skip_value(reader *r, size_t *i, int max_depth)
{
    char stack[ST_TSCAN_MAX_DEPTH];
    int depth = 0;
    size_t j = *i;
    lex l;
    if (max_depth > ST_TSCAN_MAX_DEPTH) {
        max_depth = ST_TSCAN_MAX_DEPTH;
    }
value:
    if ((l = next_byte(r, &j)) != L_OK) {
        return l;
    }
    switch (r->buf[j]) {
    case '{':
    case '[':
        if (depth >= max_depth) {
            r->err = j;
            return L_DEEP;
        }
        stack[depth++] = r->buf[j] == '{' ? '}' : ']';
        j++;
        if ((l = next_byte(r, &j)) != L_OK) {
            return l;
        }
        if (r->buf[j] == stack[depth - 1]) {
            j++;
            depth--;
            goto after;
        }
        if (stack[depth - 1] == '}') {
            goto key;
        }
        goto value;
    case '"':
        l = lex_string(r, &j, NULL);
        break;
    case 't':
        l = lex_word(r, &j, "true");
        break;
    case 'f':
        l = lex_word(r, &j, "false");
        break;
    case 'n':
        l = lex_word(r, &j, "null");
        break;
    default:
        if (r->buf[j] == '-' || r->buf[j] == 'N' || r->buf[j] == 'I' || is_digit(r->buf[j])) {
            l = lex_number(r, &j, NULL);
            break;
        }
        return bad(r, j, "an unexpected character");
    }
    if (l != L_OK) {
        return l;
    }
after:
    if (depth == 0) {
        *i = j;
        return L_OK;
    }
    if ((l = next_byte(r, &j)) != L_OK) {
        return l;
    }
    if (r->buf[j] == ',') {
        j++;
        if (stack[depth - 1] == ']') {
            goto value;
        }
        goto key;
    }
    if (r->buf[j] == stack[depth - 1]) {
        j++;
        depth--;
        goto after;
    }
    return bad(r, j, "an unexpected character (a ',' or the end of a container expected)");
key:
    if ((l = next_byte(r, &j)) != L_OK) {
        return l;
    }
    if (r->buf[j] != '"') {
        return bad(r, j, "an unexpected character (a key expected)");
    }
    if ((l = lex_string(r, &j, NULL)) != L_OK) {
        return l;
    }
    if ((l = next_byte(r, &j)) != L_OK) {
        return l;
    }
    if (r->buf[j] != ':') {
        return bad(r, j, "an unexpected character (':' expected)");
    }
    j++;
    goto value;
}

/* The byte c after whitespace at *i (consumed), L_BAD when another comes. */
static lex expect(reader *r, size_t *i, char c, const char *text)
{
    lex l = next_byte(r, i);
    if (l != L_OK) {
        return l;
    }
    if (r->buf[*i] != c) {
        return bad(r, *i, text);
    }
    (*i)++;
    return L_OK;
}

// --- One event --------------------------------------------------------------------

enum { FLD_ABSENT = 0, FLD_OK, FLD_WRONG, FLD_NULL };

typedef struct event {
    int ph, cat, name, ts, dur, args, outcome;
    double ts_v, dur_v;
    bytes ph_s, cat_s, name_s;
} event;

static int key_is(const bytes *k, const char *word)
{
    return k->len == strlen(word) && memcmp(k->p, word, k->len) == 0;
}

static lex string_field(reader *r, size_t *j, int *state, bytes *out)
{
    if (r->buf[*j] == '"') {
        *state = FLD_OK;
        return lex_string(r, j, out);
    }
    *state = FLD_WRONG;
    return skip_value(r, j, ST_TSCAN_MAX_DEPTH - 1);
}

static lex number_field(reader *r, size_t *j, int *state, double *value)
{
    char c = r->buf[*j];
    if (c == '-' || c == 'N' || c == 'I' || is_digit(c)) {
        *state = FLD_OK;
        return lex_number(r, j, value);
    }
    *state = FLD_WRONG;
    return skip_value(r, j, ST_TSCAN_MAX_DEPTH - 1);
}

/* One member's value at *j (its first byte is there), its key in key. */
typedef lex (*member_fn)(reader *r, size_t *j, bytes *key, event *ev);

/* The members of the object whose '{' is at *j, each key decoded into key and
 * each value read by on_member. Always inlined, so that each caller's
 * on_member is a direct call. */
static inline __attribute__((always_inline)) lex walk_object(reader *r, size_t *j, bytes *key,
                                                             event *ev, member_fn on_member)
{
    (*j)++;
    lex l;
    if ((l = next_byte(r, j)) != L_OK) {
        return l;
    }
    if (r->buf[*j] == '}') {
        (*j)++;
        return L_OK;
    }
    for (;;) {
        if ((l = next_byte(r, j)) != L_OK) {
            return l;
        }
        if (r->buf[*j] != '"') {
            return bad(r, *j, "an unexpected character (a key expected)");
        }
        if ((l = lex_string(r, j, key)) != L_OK ||
            (l = expect(r, j, ':', "an unexpected character (':' expected)")) ||
            (l = next_byte(r, j)) != L_OK || (l = on_member(r, j, key, ev)) != L_OK ||
            (l = next_byte(r, j)) != L_OK) {
            return l;
        }
        if (r->buf[*j] == '}') {
            (*j)++;
            return L_OK;
        }
        if (r->buf[*j] != ',') {
            return bad(r, *j, "an unexpected character (',' or '}' expected)");
        }
        (*j)++;
    }
}

static lex args_member(reader *r, size_t *j, bytes *key, event *ev)
{
    if (key_is(key, "outcome")) {
        return string_field(r, j, &ev->outcome, NULL);
    }
    return skip_value(r, j, ST_TSCAN_MAX_DEPTH - 2);
}

/* The args object at *j: only whether its "outcome" is a string matters. */
static lex args_field(reader *r, size_t *j, event *ev, bytes *key)
{
    char c = r->buf[*j];
    if (c == 'n') {
        ev->args = FLD_NULL;
        ev->outcome = FLD_ABSENT;
        return lex_word(r, j, "null");
    }
    if (c != '{') {
        ev->args = FLD_WRONG;
        ev->outcome = FLD_ABSENT;
        return skip_value(r, j, ST_TSCAN_MAX_DEPTH - 1);
    }
    ev->args = FLD_OK;
    ev->outcome = FLD_ABSENT;
    return walk_object(r, j, key, ev, args_member);
}

static lex event_member(reader *r, size_t *j, bytes *key, event *ev)
{
    if (key_is(key, "ph")) {
        return string_field(r, j, &ev->ph, &ev->ph_s);
    }
    if (key_is(key, "cat")) {
        return string_field(r, j, &ev->cat, &ev->cat_s);
    }
    if (key_is(key, "name")) {
        return string_field(r, j, &ev->name, &ev->name_s);
    }
    if (key_is(key, "ts")) {
        return number_field(r, j, &ev->ts, &ev->ts_v);
    }
    if (key_is(key, "dur")) {
        return number_field(r, j, &ev->dur, &ev->dur_v);
    }
    if (key_is(key, "args")) {
        return args_field(r, j, ev, key);
    }
    return skip_value(r, j, ST_TSCAN_MAX_DEPTH - 1);
}

/* The event object at *j into ev (L_OK and ev->ph == -1 when the event is not
 * an object: it was skipped). */
static lex read_event(reader *r, size_t *j, event *ev, bytes *key)
{
    ev->ph = ev->cat = ev->name = ev->ts = ev->dur = ev->args = ev->outcome = FLD_ABSENT;
    lex l = next_byte(r, j);
    if (l != L_OK) {
        return l;
    }
    if (r->buf[*j] != '{') {
        ev->ph = -1;
        return skip_value(r, j, ST_TSCAN_MAX_DEPTH - 1);
    }
    return walk_object(r, j, key, ev, event_member);
}

/* The first failed check of a read event, in tracefile.load's order: the
 * field (after "traceEvents[i]") and the words, or NULL when it passes. */
static const char *event_problem(const event *ev, const char **text)
{
    if (ev->ph == -1) {
        *text = "not an object";
        return "";
    }
    *text = "not a string";
    if (ev->name == FLD_WRONG) {
        return ".name";
    }
    if (ev->cat == FLD_WRONG) {
        return ".cat";
    }
    if (ev->ph == FLD_WRONG) {
        return ".ph";
    }
    if (ev->args == FLD_WRONG) {
        *text = "not an object";
        return ".args";
    }
    if (ev->outcome == FLD_WRONG) {
        return ".args.outcome";
    }
    int timed =
        ev->ph == FLD_OK && ev->ph_s.len == 1 && ev->ph_s.p[0] && strchr("XiIBEC", ev->ph_s.p[0]);
    if (timed && !(ev->ts == FLD_OK && isfinite(ev->ts_v))) {
        *text = "missing or not a finite number";
        return ".ts";
    }
    if (ev->ph == FLD_OK && key_is(&ev->ph_s, "X") &&
        !(ev->dur == FLD_OK && isfinite(ev->dur_v) && ev->dur_v >= 0)) {
        *text = "missing, negative or not a finite number";
        return ".dur";
    }
    return NULL;
}

// --- Categories -------------------------------------------------------------------

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603u;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (unsigned char)p[i]) * 1099511628211u;
    }
    return h;
}

/* The index of the category named (p, n), added when new; -1 out of memory. */
static long cat_index(st_tscan *t, const char *p, size_t n)
{
    if (t->n_cats * 2 >= t->slot_mask) { /* grow the slots (and start them) */
        size_t size = t->slot_mask ? (t->slot_mask + 1) * 2 : 64;
        uint32_t *slots = malloc(size * sizeof *slots);
        if (!slots) {
            return -1;
        }
        memset(slots, 0xFF, size * sizeof *slots);
        for (size_t k = 0; k < t->n_cats; k++) {
            size_t s = fnv1a(t->cats[k].name, t->cats[k].name_len) & (size - 1);
            while (slots[s] != UINT32_MAX) {
                s = (s + 1) & (size - 1);
            }
            slots[s] = (uint32_t)k;
        }
        free(t->cat_slots);
        t->cat_slots = slots;
        t->slot_mask = size - 1;
    }
    size_t s = fnv1a(p, n) & t->slot_mask;
    while (t->cat_slots[s] != UINT32_MAX) {
        st_tscan_cat *c = &t->cats[t->cat_slots[s]];
        if (c->name_len == n && memcmp(c->name, p, n) == 0) {
            return (long)t->cat_slots[s];
        }
        s = (s + 1) & t->slot_mask;
    }
    if (t->n_cats == t->cats_cap && grow_array(&t->cats, &t->cats_cap, 16, sizeof *t->cats) < 0) {
        return -1;
    }
    st_tscan_cat *c = &t->cats[t->n_cats];
    memset(c, 0, sizeof *c);
    if (!(c->name = copy_text(p, n))) {
        return -1;
    }
    c->name_len = n;
    c->min_begin = INFINITY;
    c->max_end = -INFINITY;
    t->cat_slots[s] = (uint32_t)t->n_cats;
    return (long)t->n_cats++;
}

/* Count a span of (cat, name) in the names table (or under its category when
 * the table is full). 0, or -1 out of memory. */
static int name_count(st_tscan *t, uint32_t cat, const char *p, size_t n, double dur)
{
    if (!t->name_slots) {
        size_t size = 2 * ST_TSCAN_MAX_NAMES; /* never more than half full */
        t->name_slots = malloc(size * sizeof *t->name_slots);
        if (!t->name_slots) {
            return -1;
        }
        memset(t->name_slots, 0xFF, size * sizeof *t->name_slots);
        t->name_mask = size - 1;
    }
    size_t s = (fnv1a(p, n) ^ (cat * 0x9E3779B97F4A7C15u)) & t->name_mask;
    while (t->name_slots[s] != UINT32_MAX) {
        st_tscan_name *e = &t->names[t->name_slots[s]];
        if (e->cat == cat && e->name_len == n && memcmp(e->name, p, n) == 0) {
            e->count++;
            e->total_us += dur;
            return 0;
        }
        s = (s + 1) & t->name_mask;
    }
    if (t->n_names >= ST_TSCAN_MAX_NAMES) {
        t->cats[cat].other_names++;
        t->cats[cat].other_names_us += dur;
        return 0;
    }
    if (t->n_names == t->names_cap &&
        grow_array(&t->names, &t->names_cap, 64, sizeof *t->names) < 0) {
        return -1;
    }
    st_tscan_name *e = &t->names[t->n_names];
    if (!(e->name = copy_text(p, n))) {
        return -1;
    }
    e->name_len = n;
    e->cat = cat;
    e->count = 1;
    e->total_us = dur;
    t->name_slots[s] = (uint32_t)t->n_names++;
    return 0;
}

static int cat_push(st_tscan_cat *c, double begin, double end)
{
    if (c->n == c->cap) { /* the two arrays share cap: it moves when both have grown */
        size_t cap = c->cap, cap_ends = c->cap;
        if (grow_array(&c->begins, &cap, 256, sizeof *c->begins) < 0 ||
            grow_array(&c->ends, &cap_ends, 256, sizeof *c->ends) < 0) {
            return -1;
        }
        c->cap = cap;
    }
    c->begins[c->n] = begin;
    c->ends[c->n] = end;
    c->n++;
    if (begin < c->min_begin) {
        c->min_begin = begin;
    }
    if (end > c->max_end) {
        c->max_end = end;
    }
    return 0;
}

static int in_list(const char *const *list, size_t n, const bytes *s)
{
    for (size_t k = 0; k < n; k++) {
        if (key_is(s, list[k])) {
            return 1;
        }
    }
    return 0;
}

static int no_span(const st_tscan_opts *o, const event *ev)
{
    for (size_t k = 0; k < o->n_no_span; k++) {
        const char *rule = o->no_span[k], *sep = strchr(rule, '\x1f');
        size_t cat_len = sep ? (size_t)(sep - rule) : strlen(rule);
        if (ev->cat != FLD_OK || ev->cat_s.len != cat_len ||
            memcmp(ev->cat_s.p, rule, cat_len) != 0) {
            continue;
        }
        if (!sep || (ev->name == FLD_OK && key_is(&ev->name_s, sep + 1))) {
            return 1;
        }
    }
    return 0;
}

/* File a checked event: its interval, and its text when it is kept. 0, or -1
 * out of memory. */
static int take_event(st_tscan *t, const st_tscan_opts *o, const event *ev, const char *text,
                      size_t len, size_t *n_priority, size_t *n_other)
{
    int complete = ev->ph == FLD_OK && key_is(&ev->ph_s, "X");
    int instant = ev->ph == FLD_OK && (key_is(&ev->ph_s, "i") || key_is(&ev->ph_s, "I"));
    /* events come in runs of one category: the last one's index and kept flag are looked up once */
    const char *cat = ev->cat == FLD_OK ? ev->cat_s.p : "\x1e";
    size_t cat_len = ev->cat == FLD_OK ? ev->cat_s.len : 1;
    long k = t->last_cat;
    if (!(complete || instant)) {
        k = -1;
    } else if (k < 0 || t->cats[k].name_len != cat_len ||
               memcmp(t->cats[k].name, cat, cat_len) != 0) {
        if ((k = cat_index(t, cat, cat_len)) < 0) {
            return -1;
        }
        t->last_cat = k;
        t->last_cat_kept = ev->cat == FLD_OK && in_list(o->keep_cats, o->n_keep_cats, &ev->cat_s);
    }
    int priority = (complete || instant) && t->last_cat_kept;
    priority = priority || (instant && ev->name == FLD_OK &&
                            in_list(o->keep_names, o->n_keep_names, &ev->name_s));
    int keep = 0;
    if (priority) {
        keep = *n_priority < o->priority_limit;
        *n_priority += keep;
        t->omitted_priority += !keep;
    } else if (complete) {
        keep = *n_other < o->other_limit;
        *n_other += keep;
        t->omitted_other += !keep;
    }
    if (complete && !no_span(o, ev)) { /* a missing category is "\x1e", apart from the empty one */
        if (cat_push(&t->cats[k], ev->ts_v, ev->ts_v + ev->dur_v) < 0) {
            return -1;
        }
        t->cats[k].omitted += !keep;
        if (!priority && name_count(t, (uint32_t)k, ev->name == FLD_OK ? ev->name_s.p : "",
                                    ev->name == FLD_OK ? ev->name_s.len : 0, ev->dur_v) < 0) {
            return -1;
        }
    }
    if (keep) {
        if (t->n_kept == t->kept_index_cap &&
            grow_array(&t->kept_index, &t->kept_index_cap, 256, sizeof *t->kept_index) < 0) {
            return -1;
        }
        t->kept_index[t->n_kept++] = t->events;
        bytes b = {t->kept, t->kept_len, t->kept_cap};
        int fail = bytes_put(&b, t->n_kept == 1 ? "[" : ",", 1) < 0 || bytes_put(&b, text, len) < 0;
        t->kept = b.p, t->kept_len = b.len, t->kept_cap = b.cap;
        if (fail) {
            return -1;
        }
    }
    return 0;
}

// --- The document -----------------------------------------------------------------

enum { S_TOP, S_OBJ_FIRST, S_OBJ_KEY, S_OBJ_AFTER, S_EV_FIRST, S_EV, S_EV_AFTER, S_END, S_DONE };

static st_tscan_status fail_at(st_tscan *t, const reader *r, st_tscan_status status, size_t at,
                               const char *text)
{
    t->status = status;
    t->err_offset = r->base + at;
    t->err_text = text;
    return status;
}

/* After a failure that ends the reading: read on to the end of the file only
 * to find bytes that are not UTF-8 (tracefile.load decodes the whole file
 * first, so that failure comes first). */
static void utf8_to_end(st_tscan *t, reader *r)
{
    r->pos = r->valid; /* [0, valid) was checked already */
    while (!r->eof) {
        st_tscan_status s = fill(r);
        if (s == ST_TSCAN_NOT_UTF8) {
            fail_at(t, r, s, r->err, "not UTF-8");
            return;
        }
        if (s != ST_TSCAN_OK) {
            return;
        }
        r->pos = r->valid;
    }
}

st_tscan_status st_tscan_read(int fd, const st_tscan_opts *o, st_tscan *t)
{
    memset(t, 0, sizeof *t);
    t->last_cat = -1;
    reader r = {.fd = fd, .max_value = o->max_value, .chunk = o->chunk ? o->chunk : (1u << 20)};
    event ev;
    memset(&ev, 0, sizeof ev);
    bytes key = {0};
    int state = S_TOP, in_object = 0, events_seen = 0, shape_bad = 0, field_failed = 0;
    size_t n_priority = 0, n_other = 0;
    st_tscan_status s = fill(&r);
    while (s == ST_TSCAN_OK && state != S_DONE) {
        size_t j = r.pos, start;
        lex l = L_OK;
        skip_ws(&r, &j);
        start = j;
        if (j >= r.valid && !(state == S_END && r.eof)) {
            l = r.eof ? bad(&r, j, "an unexpected end") : L_END;
        } else {
            switch (state) {
            case S_TOP:
                if (r.buf[j] == '{' || r.buf[j] == '[') {
                    in_object = r.buf[j] == '{';
                    events_seen = !in_object;
                    state = in_object ? S_OBJ_FIRST : S_EV_FIRST;
                    j++;
                } else if ((l = skip_value(&r, &j, ST_TSCAN_MAX_DEPTH)) == L_OK) {
                    shape_bad = 1;
                    state = S_END;
                }
                break;
            case S_OBJ_FIRST:
                if (r.buf[j] == '}') {
                    j++;
                    state = S_END;
                    break;
                }
                /* fall through */
            case S_OBJ_KEY:
                if (r.buf[j] != '"') {
                    l = bad(&r, j, "an unexpected character (a key expected)");
                    break;
                }
                if ((l = lex_string(&r, &j, &key)) != L_OK ||
                    (l = expect(&r, &j, ':', "an unexpected character (':' expected)")) != L_OK) {
                    break;
                }
                if ((l = next_byte(&r, &j)) != L_OK) {
                    break;
                }
                if (key_is(&key, "traceEvents") && r.buf[j] == '[' && !events_seen) {
                    events_seen = 1;
                    state = S_EV_FIRST;
                    j++;
                } else if (key_is(&key, "otherData")) {
                    size_t value = j;
                    if ((l = skip_value(&r, &j, ST_TSCAN_MAX_DEPTH - 1)) == L_OK) {
                        free(t->other);
                        t->other = malloc(j - value + 1);
                        if (!t->other) {
                            s = ST_TSCAN_NO_MEMORY;
                            break;
                        }
                        memcpy(t->other, r.buf + value, j - value);
                        t->other_len = j - value;
                        state = S_OBJ_AFTER;
                    }
                } else if ((l = skip_value(&r, &j, ST_TSCAN_MAX_DEPTH - 1)) == L_OK) {
                    shape_bad |= key_is(&key, "traceEvents"); /* not a list, or a second one */
                    state = S_OBJ_AFTER;
                }
                break;
            case S_OBJ_AFTER:
                if (r.buf[j] == ',' || r.buf[j] == '}') {
                    state = r.buf[j] == ',' ? S_OBJ_KEY : S_END;
                    j++;
                } else {
                    l = bad(&r, j, "an unexpected character (',' or '}' expected)");
                }
                break;
            case S_EV_FIRST:
                if (r.buf[j] == ']') {
                    j++;
                    state = in_object ? S_OBJ_AFTER : S_END;
                    break;
                }
                /* fall through */
            case S_EV:
                if ((l = read_event(&r, &j, &ev, &key)) != L_OK) {
                    break;
                }
                if (!field_failed) {
                    const char *text, *field = event_problem(&ev, &text);
                    if (field) {
                        field_failed = 1;
                        t->err_index = t->events;
                        t->err_field = field;
                        t->err_text = text;
                    } else if (take_event(t, o, &ev, r.buf + start, j - start, &n_priority,
                                          &n_other) < 0) {
                        s = ST_TSCAN_NO_MEMORY;
                        break;
                    }
                }
                t->events++;
                state = S_EV_AFTER;
                break;
            case S_EV_AFTER:
                if (r.buf[j] == ',') {
                    state = S_EV;
                    j++;
                } else if (r.buf[j] == ']') {
                    state = in_object ? S_OBJ_AFTER : S_END;
                    j++;
                } else {
                    l = bad(&r, j, "an unexpected character (',' or ']' expected)");
                }
                break;
            case S_END:
                if (j < r.valid) {
                    l = bad(&r, j, "extra data after the JSON document");
                } else if (r.eof && r.valid == r.len) {
                    state = S_DONE;
                } else {
                    l = L_END;
                }
                break;
            }
        }
        if (s != ST_TSCAN_OK) {
            break;
        }
        if (l == L_OK) {
            r.pos = j;
        } else if (l == L_END && r.eof) {
            s = fail_at(t, &r, ST_TSCAN_BAD_JSON, r.valid, "an unexpected end");
        } else if (l == L_END) {
            if (r.len - r.pos >= r.max_value) {
                fail_at(t, &r, ST_TSCAN_TOO_BIG, r.pos,
                        "one value is larger than the reader's limit");
                s = t->status;
                break;
            }
            s = fill(&r);
            if (s == ST_TSCAN_NOT_UTF8) {
                fail_at(t, &r, s, r.err, "not UTF-8");
            } else if (s == ST_TSCAN_TOO_BIG) {
                fail_at(t, &r, s, r.pos, "one value is larger than the reader's limit");
            } else if (s == ST_TSCAN_IO) {
                t->err_errno = errno;
            }
        } else {
            s = fail_at(t, &r, l == L_DEEP ? ST_TSCAN_TOO_DEEP : ST_TSCAN_BAD_JSON, r.err,
                        l == L_DEEP ? "nested too deeply" : r.err_text);
            utf8_to_end(t, &r);
            s = t->status;
        }
    }
    if (s == ST_TSCAN_NOT_UTF8 && t->status != ST_TSCAN_NOT_UTF8) {
        fail_at(t, &r, s, r.err, "not UTF-8");
    }
    if (s == ST_TSCAN_OK && (shape_bad || !events_seen)) {
        t->status = s = ST_TSCAN_SHAPE;
        t->err_field = "traceEvents";
        t->err_text = "missing or not a list";
    } else if (s == ST_TSCAN_OK && field_failed) {
        t->status = s = ST_TSCAN_FIELD;
    } else if (s == ST_TSCAN_NO_MEMORY || s == ST_TSCAN_IO) {
        t->status = s;
    }
    if (t->kept) {
        bytes b = {t->kept, t->kept_len, t->kept_cap};
        if (bytes_put(&b, "]", 1) < 0 && t->status == ST_TSCAN_OK) {
            t->status = s = ST_TSCAN_NO_MEMORY;
        }
        t->kept = b.p, t->kept_len = b.len, t->kept_cap = b.cap;
    }
    free(r.buf);
    free(r.dec.p);
    free(key.p);
    free(ev.ph_s.p);
    free(ev.cat_s.p);
    free(ev.name_s.p);
    return t->status;
}

void st_tscan_free(st_tscan *t)
{
    free(t->kept);
    free(t->kept_index);
    for (size_t k = 0; k < t->n_cats; k++) {
        free(t->cats[k].name);
        free(t->cats[k].begins);
        free(t->cats[k].ends);
    }
    free(t->cats);
    for (size_t k = 0; k < t->n_names; k++) {
        free(t->names[k].name);
    }
    free(t->names);
    free(t->name_slots);
    free(t->other);
    free(t->cat_slots);
    memset(t, 0, sizeof *t);
}
