/* st_safetensors: the safetensors header format: 8-byte little-endian length
 * N, N bytes of JSON ({name: {dtype, shape, data_offsets}, "__metadata__":
 * {str: str}}), then the data section the offsets point into. Only the
 * first 8 + N bytes are ever read.
 *
 * What is valid is what the safetensors library (0.8: safetensors/src/
 * tensor.rs, read_metadata and Metadata::validate, through serde_json)
 * accepts, since that is what ComfyUI loads with: the tensors, sorted by
 * (begin, end), must tile the data section from byte 0 to the end of the
 * file; serde's quirks are mirrored too (a duplicate tensor name keeps the
 * last entry, an entry may be a 3-element array, a dtype may be
 * {"F16": null}, serde_json stops nesting at 128). tests/
 * test_safetensors_reader.py checks the verdict against the library. */
#include "st_safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "st_jsonscan.h"

static const struct {
    const char *name;
    unsigned bits;
} dtypes[] = {
    {"BOOL", 8},         {"U8", 8},           {"I8", 8},       {"F8_E5M2", 8},
    {"F8_E4M3", 8},      {"F8_E4M3FNUZ", 8},  {"F8_E5M2FNUZ", 8}, {"F8_E8M0", 8},
    {"I16", 16},         {"U16", 16},         {"F16", 16},     {"BF16", 16},
    {"I32", 32},         {"U32", 32},         {"F32", 32},     {"F64", 64},
    {"I64", 64},         {"U64", 64},         {"C64", 64},     {"F4", 4},
    {"F6_E2M3", 6},      {"F6_E3M2", 6},
};
#define DTYPE_COUNT (sizeof dtypes / sizeof dtypes[0])

const char *st_sf_dtype_name(unsigned dtype)
{
    return dtype < DTYPE_COUNT ? dtypes[dtype].name : NULL;
}

unsigned st_sf_dtype_bits(unsigned dtype)
{
    return dtype < DTYPE_COUNT ? dtypes[dtype].bits : 0;
}

// --- Parser state -------------------------------------------------------------

typedef struct parser {
    st_json_cursor c;
    st_sf_header *h;
    uint64_t base; /* file offset of the JSON's first byte */
    size_t tensors_cap, meta_cap, strings_cap, dims_cap;
} parser;

/* serde_json's recursion limit: 128 levels, of which the header object and
 * a tensor entry take two; an entry's unknown fields may nest 125 more. */
#define ENTRY_FIELD_DEPTH 125

static st_sf_status fail_at(parser *ps, st_sf_status status, uint64_t file_offset, const char *detail)
{
    ps->h->err_offset = file_offset;
    if (detail) {
        snprintf(ps->h->err_detail, sizeof ps->h->err_detail, "%s", detail);
    }
    return status;
}

static st_sf_status fail_json(parser *ps, st_json_status js, const char *detail)
{
    if (js == ST_JSON_NO_MEMORY) {
        return ST_SF_NO_MEMORY;
    }
    ps->h->json_status = (int)js;
    return fail_at(ps, ST_SF_BAD_JSON, ps->base + ps->c.err_pos, detail);
}

static int grow(void **p, size_t *cap, size_t need, size_t item)
{
    if (need <= *cap) {
        return 0;
    }
    size_t n = *cap ? *cap * 2 : 64;
    while (n < need) {
        n *= 2;
    }
    void *q = realloc(*p, n * item);
    if (!q) {
        return -1;
    }
    *p = q;
    *cap = n;
    return 0;
}

/* Copy a string into the arena; its offset in *off. */
static int save_string(parser *ps, const char *s, size_t len, uint32_t *off)
{
    st_sf_header *h = ps->h;
    if (h->strings_len + len + 1 > UINT32_MAX ||
        grow((void **)&h->strings, &ps->strings_cap, h->strings_len + len + 1, 1) != 0) {
        return -1;
    }
    memcpy(h->strings + h->strings_len, s, len);
    h->strings[h->strings_len + len] = '\0';
    *off = (uint32_t)h->strings_len;
    h->strings_len += len + 1;
    return 0;
}

static const char *name_of(parser *ps, const st_sf_tensor *t)
{
    return ps->h->strings + t->name_off;
}

// --- Entries ------------------------------------------------------------------

enum { FIELD_DTYPE = 1, FIELD_SHAPE = 2, FIELD_OFFSETS = 4 };

/* File offset of the next value (whitespace skipped). */
static uint64_t value_offset(parser *ps)
{
    st_json_peek(&ps->c);
    return ps->base + ps->c.pos;
}

/* Read an object member's key and the ':' after it; *at gets the key's offset. */
static st_sf_status read_key(parser *ps, const char **key, size_t *len, uint64_t *at, const char *context)
{
    *at = value_offset(ps);
    st_json_status js = st_json_string(&ps->c, key, len);
    if (js == ST_JSON_OK) {
        js = st_json_expect(&ps->c, ':');
    }
    return js == ST_JSON_OK ? ST_SF_OK : fail_json(ps, js, context);
}

/* A dtype: "F16", or (serde's external enum form) {"F16": null}. */
static st_sf_status read_dtype(parser *ps, st_sf_tensor *t, const char *name)
{
    uint64_t at = value_offset(ps);
    const char *s;
    size_t n;
    int as_map = st_json_peek(&ps->c) == '{';
    if (as_map) {
        ps->c.pos++;
        if (st_json_peek(&ps->c) != '"') {
            return fail_at(ps, ST_SF_BAD_DTYPE, at, name);
        }
    }
    st_json_status js = st_json_string(&ps->c, &s, &n);
    if (js != ST_JSON_OK) {
        return js == ST_JSON_UNEXPECTED_CHAR ? fail_at(ps, ST_SF_BAD_DTYPE, at, name) : fail_json(ps, js, name);
    }
    unsigned found = DTYPE_COUNT;
    for (unsigned i = 0; i < DTYPE_COUNT && found == DTYPE_COUNT; i++) {
        if (n && dtypes[i].name[0] == s[0] && strlen(dtypes[i].name) == n && memcmp(dtypes[i].name, s, n) == 0) {
            found = i;
        }
    }
    if (found == DTYPE_COUNT) {
        return fail_at(ps, ST_SF_BAD_DTYPE, at, name);
    }
    t->dtype = (uint8_t)found;
    if (as_map) { /* then ': null }' and nothing else */
        int more = 1;
        if ((js = st_json_expect(&ps->c, ':')) != ST_JSON_OK) {
            return fail_json(ps, js, name);
        }
        if (st_json_peek(&ps->c) != 'n') {
            return fail_at(ps, ST_SF_BAD_DTYPE, at, name);
        }
        if ((js = st_json_skip(&ps->c, 0)) != ST_JSON_OK || (js = st_json_next(&ps->c, '}', &more)) != ST_JSON_OK) {
            return fail_json(ps, js, name);
        }
        if (more) {
            return fail_at(ps, ST_SF_BAD_DTYPE, at, name);
        }
    }
    return ST_SF_OK;
}

/* Whether the JSON number text (len bytes, already validated) is beyond
 * the range of a double, as serde_json refuses it ("number out of range"):
 * its decimal exponent, counted from the first significant digit, above
 * 309, or 309 with digits above DBL_MAX's (1.7976931348623158e308, to the
 * 17 digits that decide a double; serde_json rounds the last digit its own
 * way, so only a number at the boundary itself may be judged otherwise).
 * Locale-free. Can't fail. */
static int number_overflows(const char *s, size_t len)
{
    size_t i = 0;
    if (i < len && s[i] == '-') {
        i++;
    }
    char digits[18];
    size_t n_digits = 0;
    long long exponent = 0; /* of the first significant digit, counting "0.d" as 10^0 */
    int seen_point = 0, significant = 0;
    for (; i < len && s[i] != 'e' && s[i] != 'E'; i++) {
        if (s[i] == '.') {
            seen_point = 1;
            continue;
        }
        if (!significant && s[i] == '0') {
            if (seen_point) {
                exponent--; /* 0.00d: the first digit sits lower */
            }
            continue;
        }
        if (!significant) {
            significant = 1;
        }
        if (!seen_point) {
            exponent++;
        }
        if (n_digits < 17) {
            digits[n_digits++] = s[i];
        }
    }
    if (!significant) {
        return 0; /* zero */
    }
    if (i < len) { /* the exponent part, saturated */
        i++;
        int negative = i < len && s[i] == '-';
        if (i < len && (s[i] == '-' || s[i] == '+')) {
            i++;
        }
        long long e = 0;
        for (; i < len; i++) {
            if (e < 100000000) {
                e = e * 10 + (s[i] - '0');
            }
        }
        exponent += negative ? -e : e;
    }
    if (exponent != 309) {
        return exponent > 309;
    }
    digits[n_digits] = '\0';
    return strcmp(digits, "17976931348623158") > 0;
}

/* Skip an entry's unknown field: any JSON value nested at most max_depth,
 * as st_json_skip, except that a number a double cannot hold fails as it
 * does in serde_json. */
static st_json_status skip_ignored(st_json_cursor *c, int max_depth)
{
    int next = st_json_peek(c), more;
    st_json_status js;
    if (next == '[' || next == '{') {
        if (max_depth <= 0) {
            return st_json_skip(c, 0); /* fails TOO_DEEP at this byte */
        }
        c->pos++;
        int close = next == '[' ? ']' : '}';
        if (st_json_peek(c) == close) {
            c->pos++;
            return ST_JSON_OK;
        }
        do {
            const char *key;
            size_t key_len;
            if (next == '{' && ((js = st_json_string(c, &key, &key_len)) != ST_JSON_OK ||
                                (js = st_json_expect(c, ':')) != ST_JSON_OK)) {
                return js;
            }
            if ((js = skip_ignored(c, max_depth - 1)) != ST_JSON_OK ||
                (js = st_json_next(c, (char)close, &more)) != ST_JSON_OK) {
                return js;
            }
        } while (more);
        return ST_JSON_OK;
    }
    size_t start = c->pos;
    if ((js = st_json_skip(c, 0)) != ST_JSON_OK) {
        return js;
    }
    if ((next == '-' || (next >= '0' && next <= '9')) && number_overflows(c->p + start, c->pos - start)) {
        c->err_pos = start;
        return ST_JSON_BAD_NUMBER;
    }
    return ST_JSON_OK;
}

/* Read '[' uint (',' uint)* ']' into out (at most max values). */
static st_sf_status read_uint_list(parser *ps, uint64_t *out, unsigned max, unsigned *count,
                                   st_sf_status bad, const char *name)
{
    uint64_t at = value_offset(ps);
    st_json_status js = st_json_expect(&ps->c, '[');
    if (js != ST_JSON_OK) {
        return js == ST_JSON_UNEXPECTED_CHAR ? fail_at(ps, bad, at, name) : fail_json(ps, js, name);
    }
    *count = 0;
    if (st_json_peek(&ps->c) == ']') {
        ps->c.pos++;
        return ST_SF_OK;
    }
    int more = 1;
    while (more) {
        uint64_t item_at = value_offset(ps);
        if (*count >= max) {
            return fail_at(ps, bad, item_at, name);
        }
        js = st_json_uint(&ps->c, &out[*count]);
        if (js == ST_JSON_NOT_UINT || js == ST_JSON_UNEXPECTED_CHAR) {
            return fail_at(ps, bad, ps->base + ps->c.err_pos, name);
        }
        if (js != ST_JSON_OK || (js = st_json_next(&ps->c, ']', &more)) != ST_JSON_OK) {
            return fail_json(ps, js, name);
        }
        (*count)++;
    }
    return ST_SF_OK;
}

/* Read a shape: '[' uint (',' uint)* ']', any number of dims, appended to
 * the header's dims arena. */
static st_sf_status read_shape(parser *ps, st_sf_tensor *t, const char *name)
{
    st_sf_header *h = ps->h;
    uint64_t at = value_offset(ps);
    st_json_status js = st_json_expect(&ps->c, '[');
    if (js != ST_JSON_OK) {
        return js == ST_JSON_UNEXPECTED_CHAR ? fail_at(ps, ST_SF_BAD_SHAPE, at, name) : fail_json(ps, js, name);
    }
    if (h->n_dims > UINT32_MAX) {
        return ST_SF_NO_MEMORY;
    }
    t->dims_off = (uint32_t)h->n_dims;
    t->ndim = 0;
    if (st_json_peek(&ps->c) == ']') {
        ps->c.pos++;
        return ST_SF_OK;
    }
    int more = 1;
    while (more) {
        if (grow((void **)&h->dims, &ps->dims_cap, h->n_dims + 1, sizeof *h->dims) != 0) {
            return ST_SF_NO_MEMORY;
        }
        js = st_json_uint(&ps->c, &h->dims[h->n_dims]);
        if (js == ST_JSON_NOT_UINT || js == ST_JSON_UNEXPECTED_CHAR) {
            return fail_at(ps, ST_SF_BAD_SHAPE, ps->base + ps->c.err_pos, name);
        }
        if (js != ST_JSON_OK || (js = st_json_next(&ps->c, ']', &more)) != ST_JSON_OK) {
            return fail_json(ps, js, name);
        }
        h->n_dims++;
        t->ndim++;
    }
    return ST_SF_OK;
}

/* After dtype, shape and data_offsets are read: order and size checks. */
static st_sf_status check_entry(parser *ps, st_sf_tensor *t, const char *name, const uint64_t offsets[2],
                                uint64_t offsets_at)
{
    if (offsets[0] > offsets[1]) {
        return fail_at(ps, ST_SF_BAD_OFFSETS, offsets_at, name);
    }
    t->begin = offsets[0];
    t->end = offsets[1];
    /* bytes = bits(dtype) x prod(shape) / 8, failing on overflow as the
     * library's checked multiplications do (in the same order) */
    const uint64_t *shape = ps->h->dims + t->dims_off;
    uint64_t elements = 1;
    for (unsigned i = 0; i < t->ndim; i++) {
        if (shape[i] && elements > UINT64_MAX / shape[i]) {
            return fail_at(ps, ST_SF_SIZE_MISMATCH, offsets_at, name);
        }
        elements *= shape[i];
    }
    uint64_t bits = dtypes[t->dtype].bits;
    if (elements > UINT64_MAX / bits || (elements * bits) % 8 != 0 ||
        elements * bits / 8 != t->end - t->begin) {
        return fail_at(ps, ST_SF_SIZE_MISMATCH, offsets_at, name);
    }
    return ST_SF_OK;
}

/* An entry in serde's sequence form: [dtype, shape, data_offsets], exactly. */
static st_sf_status read_entry_array(parser *ps, st_sf_tensor *t, const char *name, uint64_t entry_at)
{
    st_json_status js;
    unsigned count;
    uint64_t offsets[2] = {0, 0}, offsets_at;
    ps->c.pos++; /* '[' */
    st_sf_status status = read_dtype(ps, t, name);
    if (status == ST_SF_OK && (js = st_json_expect(&ps->c, ',')) != ST_JSON_OK) {
        status = js == ST_JSON_UNEXPECTED_CHAR ? fail_at(ps, ST_SF_BAD_ENTRY, entry_at, name) : fail_json(ps, js, name);
    }
    if (status == ST_SF_OK) {
        status = read_shape(ps, t, name);
    }
    if (status == ST_SF_OK && (js = st_json_expect(&ps->c, ',')) != ST_JSON_OK) {
        status = js == ST_JSON_UNEXPECTED_CHAR ? fail_at(ps, ST_SF_BAD_ENTRY, entry_at, name) : fail_json(ps, js, name);
    }
    if (status != ST_SF_OK) {
        return status;
    }
    offsets_at = value_offset(ps);
    status = read_uint_list(ps, offsets, 2, &count, ST_SF_BAD_OFFSETS, name);
    if (status == ST_SF_OK && count != 2) {
        status = fail_at(ps, ST_SF_BAD_OFFSETS, offsets_at, name);
    }
    if (status == ST_SF_OK && (js = st_json_expect(&ps->c, ']')) != ST_JSON_OK) {
        status = js == ST_JSON_UNEXPECTED_CHAR ? fail_at(ps, ST_SF_BAD_ENTRY, entry_at, name) : fail_json(ps, js, name);
    }
    return status != ST_SF_OK ? status : check_entry(ps, t, name, offsets, offsets_at);
}

static st_sf_status read_entry(parser *ps, st_sf_tensor *t, const char *name, uint64_t entry_at)
{
    if (st_json_peek(&ps->c) == '[') {
        return read_entry_array(ps, t, name, entry_at);
    }
    st_json_status js = st_json_expect(&ps->c, '{');
    if (js != ST_JSON_OK) {
        return js == ST_JSON_UNEXPECTED_CHAR ? fail_at(ps, ST_SF_BAD_ENTRY, entry_at, name)
                                             : fail_json(ps, js, name);
    }
    unsigned seen = 0, count;
    uint64_t offsets[2] = {0, 0}, offsets_at = entry_at;
    int more = st_json_peek(&ps->c) != '}';
    if (!more) {
        ps->c.pos++;
    }
    while (more) {
        uint64_t key_at;
        const char *key;
        size_t key_len;
        st_sf_status key_status = read_key(ps, &key, &key_len, &key_at, name);
        if (key_status != ST_SF_OK) {
            return key_status;
        }
        unsigned field = key_len == 5 && memcmp(key, "dtype", 5) == 0          ? FIELD_DTYPE
                         : key_len == 5 && memcmp(key, "shape", 5) == 0        ? FIELD_SHAPE
                         : key_len == 12 && memcmp(key, "data_offsets", 12) == 0 ? FIELD_OFFSETS
                                                                                 : 0;
        if (field & seen) {
            return fail_at(ps, ST_SF_DUPLICATE_KEY, key_at, name);
        }
        seen |= field;
        st_sf_status status = ST_SF_OK;
        if (field == FIELD_DTYPE) {
            status = read_dtype(ps, t, name);
        } else if (field == FIELD_SHAPE) {
            status = read_shape(ps, t, name);
        } else if (field == FIELD_OFFSETS) {
            offsets_at = value_offset(ps);
            status = read_uint_list(ps, offsets, 2, &count, ST_SF_BAD_OFFSETS, name);
            if (status == ST_SF_OK && count != 2) {
                status = fail_at(ps, ST_SF_BAD_OFFSETS, offsets_at, name);
            }
        } else if ((js = skip_ignored(&ps->c, ENTRY_FIELD_DEPTH)) != ST_JSON_OK) {
            status = fail_json(ps, js, name);
        }
        if (status != ST_SF_OK) {
            return status;
        }
        if ((js = st_json_next(&ps->c, '}', &more)) != ST_JSON_OK) {
            return fail_json(ps, js, name);
        }
    }
    if (seen != (FIELD_DTYPE | FIELD_SHAPE | FIELD_OFFSETS)) {
        return fail_at(ps, ST_SF_BAD_ENTRY, entry_at, name);
    }
    return check_entry(ps, t, name, offsets, offsets_at);
}

static st_sf_status read_metadata(parser *ps, uint64_t at)
{
    st_sf_header *h = ps->h;
    if (st_json_peek(&ps->c) == 'n') { /* "__metadata__": null is allowed */
        st_json_status js = st_json_skip(&ps->c, 1);
        return js == ST_JSON_OK ? ST_SF_OK : fail_json(ps, js, "__metadata__");
    }
    h->has_metadata = 1;
    st_json_status js = st_json_expect(&ps->c, '{');
    if (js != ST_JSON_OK) {
        return js == ST_JSON_UNEXPECTED_CHAR ? fail_at(ps, ST_SF_BAD_METADATA, at, "__metadata__")
                                             : fail_json(ps, js, "__metadata__");
    }
    int more = st_json_peek(&ps->c) != '}';
    if (!more) {
        ps->c.pos++;
    }
    while (more) {
        const char *s;
        size_t n;
        st_sf_meta m;
        if ((js = st_json_string(&ps->c, &s, &n)) != ST_JSON_OK) {
            return fail_json(ps, js, "__metadata__");
        }
        if (save_string(ps, s, n, &m.key_off) != 0) {
            return ST_SF_NO_MEMORY;
        }
        m.key_len = (uint32_t)n;
        if ((js = st_json_expect(&ps->c, ':')) != ST_JSON_OK) {
            return fail_json(ps, js, "__metadata__");
        }
        uint64_t value_at = value_offset(ps);
        if (st_json_peek(&ps->c) != '"') {
            return fail_at(ps, ST_SF_BAD_METADATA, value_at, h->strings + m.key_off);
        }
        if ((js = st_json_string(&ps->c, &s, &n)) != ST_JSON_OK) {
            return fail_json(ps, js, "__metadata__");
        }
        if (save_string(ps, s, n, &m.value_off) != 0 ||
            grow((void **)&h->meta, &ps->meta_cap, h->n_meta + 1, sizeof *h->meta) != 0) {
            return ST_SF_NO_MEMORY;
        }
        m.value_len = (uint32_t)n;
        h->meta[h->n_meta++] = m;
        if ((js = st_json_next(&ps->c, '}', &more)) != ST_JSON_OK) {
            return fail_json(ps, js, "__metadata__");
        }
    }
    return ST_SF_OK;
}

// --- Whole-header checks ------------------------------------------------------

static int by_begin(const void *a, const void *b)
{
    const st_sf_tensor *x = a, *y = b;
    if (x->begin != y->begin) {
        return x->begin < y->begin ? -1 : 1;
    }
    return x->end < y->end ? -1 : x->end > y->end;
}

uint64_t st_sf_name_hash(const char *s, size_t len)
{
    uint64_t h = 0x9E3779B97F4A7C15u ^ len;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDu;
        h ^= h >> 32;
    }
    uint64_t tail = 0;
    memcpy(&tail, s + i, len - i);
    h = (h ^ tail) * 0xC4CEB9FE1A85EC53u;
    return h ^ (h >> 29);
}

/* The name index: an open-addressing table of tensor indices, a slot per
 * name at most half full, kept for st_sf_find. With drop_duplicates, a name
 * that comes again replaces its earlier entry, which is removed from the
 * tensors (the library reads the header into a map: the last entry wins,
 * and the earlier one's bytes then belong to no tensor); *dropped counts
 * them. Rebuilt when check_layout reorders the tensors. */
static st_sf_status index_names(parser *ps, int drop_duplicates, size_t *dropped)
{
    st_sf_header *h = ps->h;
    size_t n = h->n_tensors, cap = 4;
    while (cap < 2 * n) {
        cap *= 2;
    }
    free(h->name_slots);
    h->name_slots = calloc(cap, sizeof *h->name_slots);
    h->name_slots_cap = h->name_slots ? cap : 0;
    if (!h->name_slots) {
        return ST_SF_NO_MEMORY;
    }
    uint8_t *gone = NULL; /* gone[i]: entry i was named again later */
    for (size_t i = 0; i < n; i++) {
        const st_sf_tensor *t = &h->tensors[i];
        size_t at = (size_t)st_sf_name_hash(name_of(ps, t), t->name_len) & (cap - 1);
        for (; h->name_slots[at]; at = (at + 1) & (cap - 1)) {
            uint32_t other = h->name_slots[at] - 1;
            if (drop_duplicates && h->tensors[other].name_len == t->name_len &&
                memcmp(name_of(ps, &h->tensors[other]), name_of(ps, t), t->name_len) == 0) {
                if (!gone && !(gone = calloc(n, 1))) {
                    return ST_SF_NO_MEMORY;
                }
                gone[other] = 1;
                break; /* this slot now holds the later entry */
            }
        }
        h->name_slots[at] = (uint32_t)(i + 1);
    }
    if (!gone) {
        return ST_SF_OK;
    }
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        if (!gone[i]) {
            h->tensors[kept++] = h->tensors[i];
        }
    }
    free(gone);
    *dropped = n - kept;
    h->n_tensors = kept;
    return index_names(ps, 0, dropped);
}

long st_sf_find(const st_sf_header *h, const char *name, size_t len)
{
    if (!h->name_slots_cap) {
        return -1;
    }
    size_t mask = h->name_slots_cap - 1;
    for (size_t at = (size_t)st_sf_name_hash(name, len) & mask; h->name_slots[at]; at = (at + 1) & mask) {
        const st_sf_tensor *t = &h->tensors[h->name_slots[at] - 1];
        if (t->name_len == len && memcmp(h->strings + t->name_off, name, len) == 0) {
            return (long)(h->name_slots[at] - 1);
        }
    }
    return -1;
}

/* The data section's layout, as the library's Metadata::validate and the
 * length check after it: sorted by (begin, end), each tensor must begin
 * where the one before ended (the first at 0), and the last must end at
 * the end of the file. The failure named is the most telling: data past
 * the end of the file first (a truncated download), then gaps and
 * overlaps in file order, then bytes after the last tensor. */
static st_sf_status check_layout(parser *ps)
{
    st_sf_header *h = ps->h;
    /* writers put entries in offset order, so sort only when they are not
     * (qsort's pointer must not be NULL, even for 0 items) */
    int sorted = 1;
    for (size_t i = 1; i < h->n_tensors && sorted; i++) {
        sorted = by_begin(&h->tensors[i - 1], &h->tensors[i]) <= 0;
    }
    if (!sorted) {
        qsort(h->tensors, h->n_tensors, sizeof *h->tensors, by_begin);
        size_t unused = 0;
        st_sf_status status = index_names(ps, 0, &unused); /* the index held pre-sort positions */
        if (status != ST_SF_OK) {
            return status;
        }
    }
    /* first: does the file hold all the data the header declares? (a
     * truncated download), so later offsets always point inside the file */
    uint64_t data_len = h->file_size - 8 - h->header_len;
    const st_sf_tensor *last = NULL;
    for (size_t i = 0; i < h->n_tensors; i++) {
        if (!last || h->tensors[i].end > last->end) {
            last = &h->tensors[i];
        }
    }
    h->data_end = last ? last->end : 0;
    if (h->data_end > data_len) {
        char detail[sizeof h->err_detail];
        snprintf(detail, sizeof detail, "%.80s ends at data byte %llu; the file holds %llu", name_of(ps, last),
                 (unsigned long long)h->data_end, (unsigned long long)data_len);
        return fail_at(ps, ST_SF_OUT_OF_RANGE, h->file_size, detail);
    }
    uint64_t reach = 0; /* end of the bytes claimed so far */
    const st_sf_tensor *owner = NULL;
    char detail[sizeof h->err_detail];
    for (size_t i = 0; i < h->n_tensors; i++) {
        const st_sf_tensor *t = &h->tensors[i];
        if (t->begin < reach) {
            snprintf(detail, sizeof detail, "%.70s overlaps %.70s", name_of(ps, t), name_of(ps, owner));
            return fail_at(ps, ST_SF_OVERLAP, 8 + h->header_len + t->begin, detail);
        }
        if (t->begin > reach) {
            if (owner) {
                snprintf(detail, sizeof detail, "%llu bytes no tensor covers between %.50s and %.50s",
                         (unsigned long long)(t->begin - reach), name_of(ps, owner), name_of(ps, t));
            } else {
                snprintf(detail, sizeof detail, "%llu bytes no tensor covers before %.100s",
                         (unsigned long long)t->begin, name_of(ps, t));
            }
            return fail_at(ps, ST_SF_GAP, 8 + h->header_len + reach, detail);
        }
        reach = t->end;
        owner = t;
    }
    if (reach < data_len) {
        snprintf(detail, sizeof detail, "%llu bytes after the last tensor's data",
                 (unsigned long long)(data_len - reach));
        return fail_at(ps, ST_SF_TRAILING_DATA, 8 + h->header_len + reach, detail);
    }
    return ST_SF_OK;
}

static st_sf_status parse_json(parser *ps)
{
    st_sf_header *h = ps->h;
    st_json_status js;
    if (st_json_peek(&ps->c) != '{') {
        return st_json_peek(&ps->c) < 0 ? fail_json(ps, ST_JSON_UNEXPECTED_END, NULL)
                                        : fail_at(ps, ST_SF_NOT_AN_OBJECT, ps->base + ps->c.pos, NULL);
    }
    ps->c.pos++;
    int more = st_json_peek(&ps->c) != '}';
    if (!more) {
        ps->c.pos++;
    }
    int seen_metadata = 0;
    while (more) {
        uint64_t key_at;
        const char *key;
        size_t key_len;
        st_sf_status status = read_key(ps, &key, &key_len, &key_at, NULL);
        if (status != ST_SF_OK) {
            return status;
        }
        if (key_len == 12 && memcmp(key, "__metadata__", 12) == 0) {
            if (seen_metadata++) {
                return fail_at(ps, ST_SF_DUPLICATE_KEY, key_at, "__metadata__");
            }
            status = read_metadata(ps, value_offset(ps));
        } else {
            if (grow((void **)&h->tensors, &ps->tensors_cap, h->n_tensors + 1, sizeof *h->tensors) != 0) {
                return ST_SF_NO_MEMORY;
            }
            st_sf_tensor *t = &h->tensors[h->n_tensors];
            memset(t, 0, sizeof *t);
            if (save_string(ps, key, key_len, &t->name_off) != 0) {
                return ST_SF_NO_MEMORY;
            }
            t->name_len = (uint32_t)key_len;
            h->n_tensors++;
            status = read_entry(ps, t, h->strings + t->name_off, value_offset(ps));
        }
        if (status != ST_SF_OK) {
            return status;
        }
        if ((js = st_json_next(&ps->c, '}', &more)) != ST_JSON_OK) {
            return fail_json(ps, js, NULL);
        }
    }
    if (st_json_peek(&ps->c) >= 0) { /* only whitespace padding may follow */
        ps->c.err_pos = ps->c.pos;
        return fail_json(ps, ST_JSON_UNEXPECTED_CHAR, "after the header object");
    }
    size_t dropped = 0;
    st_sf_status status = index_names(ps, 1, &dropped);
    return status != ST_SF_OK ? status : check_layout(ps);
}

// --- Entry points -------------------------------------------------------------

static uint64_t le64(const unsigned char *b)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | b[i];
    }
    return v;
}

/* Checks on the length prefix shared by both entry points. */
static st_sf_status check_prefix(st_sf_header *h, const unsigned char *prefix, uint64_t header_cap)
{
    h->header_len = le64(prefix);
    if (h->header_len > header_cap) {
        snprintf(h->err_detail, sizeof h->err_detail, "header length %llu, cap %llu",
                 (unsigned long long)h->header_len, (unsigned long long)header_cap);
        return ST_SF_HEADER_TOO_LARGE;
    }
    if (h->header_len > h->file_size - 8) {
        snprintf(h->err_detail, sizeof h->err_detail, "header length %llu, file holds %llu after the prefix",
                 (unsigned long long)h->header_len, (unsigned long long)(h->file_size - 8));
        return ST_SF_HEADER_BEYOND_EOF;
    }
    return ST_SF_OK;
}

static st_sf_status parse_header_json(const char *json, st_sf_header *h)
{
    parser ps;
    memset(&ps, 0, sizeof ps);
    ps.h = h;
    ps.base = 8;
    st_json_cursor_init(&ps.c, json, (size_t)h->header_len);
    /* room up front for what a header of this length likely holds (an
     * entry takes 60 bytes and more; the strings never exceed the header),
     * so the arrays are not copied over and over as they grow. Malloc and
     * page faults were a quarter of the read time without it. */
    size_t entries = h->header_len / 96 < 65536 ? (size_t)(h->header_len / 96) + 1 : 65536;
    if (grow((void **)&h->tensors, &ps.tensors_cap, entries, sizeof *h->tensors) != 0 ||
        grow((void **)&h->dims, &ps.dims_cap, 2 * entries, sizeof *h->dims) != 0 ||
        grow((void **)&h->strings, &ps.strings_cap, (size_t)h->header_len + 1, 1) != 0) {
        st_json_cursor_free(&ps.c);
        return ST_SF_NO_MEMORY;
    }
    st_sf_status status = parse_json(&ps);
    st_json_cursor_free(&ps.c);
    return status;
}

static void reset(st_sf_header *h)
{
    memset(h, 0, sizeof *h);
}

/* Free the results but keep the error fields. */
static st_sf_status finish(st_sf_header *h, st_sf_status status)
{
    if (status != ST_SF_OK) {
        free(h->tensors);
        free(h->meta);
        free(h->strings);
        free(h->name_slots);
        free(h->dims);
        h->tensors = NULL;
        h->meta = NULL;
        h->strings = NULL;
        h->name_slots = NULL;
        h->dims = NULL;
        h->name_slots_cap = 0;
        h->n_tensors = h->n_meta = h->strings_len = h->n_dims = 0;
    }
    return status;
}

st_sf_status st_sf_parse(const char *bytes, size_t len, uint64_t file_size, uint64_t header_cap,
                         st_sf_header *h)
{
    reset(h);
    h->file_size = file_size;
    if (len < 8 || file_size < 8) {
        return ST_SF_TOO_SHORT;
    }
    st_sf_status status = check_prefix(h, (const unsigned char *)bytes, header_cap);
    if (status != ST_SF_OK) {
        return status;
    }
    if (h->header_len > len - 8) { /* the caller gave less than the header */
        h->err_offset = len;
        return ST_SF_HEADER_BEYOND_EOF;
    }
    return finish(h, parse_header_json(bytes + 8, h));
}

st_sf_status st_sf_read(const char *path, uint64_t header_cap, st_sf_header *h)
{
    reset(h);
    char *json = NULL;
    st_sf_status status = ST_SF_OK;
    /* O_NONBLOCK: a named pipe would block in open() until a writer came */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        h->err_errno = errno;
        return ST_SF_OPEN_FAILED;
    }
    struct stat st;
    unsigned char prefix[8];
    if (fstat(fd, &st) != 0) {
        h->err_errno = errno;
        status = ST_SF_READ_FAILED;
        goto error;
    }
    if (!S_ISREG(st.st_mode)) { /* a folder, a FIFO, a device: only regular files are read */
        h->err_errno = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
        status = ST_SF_READ_FAILED;
        goto error;
    }
    h->file_size = (uint64_t)st.st_size;
    if (h->file_size < 8) {
        status = ST_SF_TOO_SHORT;
        goto error;
    }
    ssize_t got = pread(fd, prefix, 8, 0);
    if (got != 8) {
        h->err_errno = got < 0 ? errno : EIO;
        status = ST_SF_READ_FAILED;
        goto error;
    }
    if ((status = check_prefix(h, prefix, header_cap)) != ST_SF_OK) {
        goto error;
    }
    json = malloc(h->header_len ? (size_t)h->header_len : 1);
    if (!json) {
        status = ST_SF_NO_MEMORY;
        goto error;
    }
    for (uint64_t off = 0; off < h->header_len;) {
        ssize_t r = pread(fd, json + off, (size_t)(h->header_len - off), (off_t)(8 + off));
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) { /* the file shrank under us */
            h->err_errno = r < 0 ? errno : EIO;
            h->err_offset = 8 + off;
            status = ST_SF_READ_FAILED;
            goto error;
        }
        off += (uint64_t)r;
    }
    status = parse_header_json(json, h);
error:
    free(json);
    close(fd);
    return finish(h, status);
}

void st_sf_header_free(st_sf_header *h)
{
    free(h->tensors);
    free(h->meta);
    free(h->strings);
    free(h->name_slots);
    free(h->dims);
    reset(h);
}

static const char *const status_names[ST_SF_STATUS_COUNT] = {
    "OK", "OPEN_FAILED", "READ_FAILED", "TOO_SHORT", "HEADER_TOO_LARGE", "HEADER_BEYOND_EOF",
    "BAD_JSON", "NOT_AN_OBJECT", "BAD_ENTRY", "DUPLICATE_KEY", "BAD_DTYPE", "BAD_SHAPE",
    "BAD_OFFSETS", "SIZE_MISMATCH", "OVERLAP", "OUT_OF_RANGE", "BAD_METADATA", "GAP", "TRAILING_DATA",
    "NO_MEMORY",
};

static const char *const status_texts[ST_SF_STATUS_COUNT] = {
    "ok",
    "cannot open the file",
    "cannot read the file",
    "file shorter than the 8-byte header length",
    "header length above the cap (not a safetensors file?)",
    "header length runs past the end of the file",
    "header is not valid JSON",
    "header is not a JSON object",
    "tensor entry is not an object with dtype, shape and data_offsets",
    "duplicate key",
    "unknown dtype",
    "shape is not a list of non-negative integers",
    "data_offsets is not [begin, end] with begin <= end",
    "byte size differs from dtype x shape",
    "tensors overlap",
    "tensor data beyond the end of the file (truncated or partial download)",
    "__metadata__ is not an object of strings",
    "gap in the data section: bytes no tensor covers (the safetensors library refuses the file)",
    "trailing bytes after the last tensor (the safetensors library refuses the file)",
    "out of memory",
};

const char *st_sf_status_text(st_sf_status status)
{
    return (unsigned)status < ST_SF_STATUS_COUNT ? status_texts[status] : "unknown status";
}

const char *st_sf_status_name(st_sf_status status)
{
    return (unsigned)status < ST_SF_STATUS_COUNT ? status_names[status] : "UNKNOWN";
}
