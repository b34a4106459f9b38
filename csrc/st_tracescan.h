/* st_tracescan: a streaming, bounded reader of Chrome Trace Event JSON.
 *
 * The file is read in chunks from a descriptor, never whole: one event (or one
 * top-level value other than traceEvents) at a time must fit in max_value
 * bytes. Every event is checked the way the analysis needs it (the same checks
 * and the same order as comfy_nodes/record/tracefile.py), every complete event
 * ('X') gives its interval to its category's columns, and only the events the
 * analysis reads whole are kept, as JSON text, up to the limits. The input is
 * strict UTF-8 and RFC 8259 JSON plus the NaN/Infinity/-Infinity literals that
 * Python's json module reads; every failure carries its byte offset. */
#ifndef ST_TRACESCAN_H
#define ST_TRACESCAN_H

#include <stddef.h>
#include <stdint.h>

typedef enum st_tscan_status {
    ST_TSCAN_OK = 0,
    ST_TSCAN_IO,       /* read() failed; errno in err_errno */
    ST_TSCAN_NOT_UTF8, /* err_offset: the first byte that is not UTF-8 */
    ST_TSCAN_BAD_JSON, /* err_offset, err_text */
    ST_TSCAN_TOO_DEEP, /* nesting beyond ST_TSCAN_MAX_DEPTH at err_offset */
    ST_TSCAN_TOO_BIG,  /* one value over max_value bytes, starting at err_offset */
    ST_TSCAN_SHAPE,    /* not a list nor an object with a traceEvents list */
    ST_TSCAN_FIELD,    /* event err_index, field err_field: err_text */
    ST_TSCAN_NO_MEMORY,
} st_tscan_status;

#define ST_TSCAN_MAX_DEPTH 256

/* What to keep whole and what to leave out of the span columns. Strings are
 * UTF-8, NUL-terminated. */
typedef struct st_tscan_opts {
    const char *const *keep_cats; /* X, i and I events of these categories: kept (priority) */
    size_t n_keep_cats;
    const char *const *keep_names; /* i and I events of these names: kept (priority) */
    size_t n_keep_names;
    const char *const *no_span; /* "cat" or "cat\x1fname": X events given no interval */
    size_t n_no_span;
    size_t priority_limit; /* the most priority events kept */
    size_t other_limit;    /* the most other X events kept */
    size_t max_value;      /* the most bytes of one event or one top-level value */
    size_t chunk;          /* bytes per read() */
} st_tscan_opts;

/* The intervals of one category (µs), in file order. */
typedef struct st_tscan_cat {
    char *name; /* decoded; "" for a missing cat */
    size_t name_len;
    double *begins, *ends;
    size_t n, cap;
    size_t omitted; /* X events of this category not kept whole */
    double min_begin, max_end;
    uint64_t other_names;  /* spans whose name found no room in the names table */
    double other_names_us; /* and their summed duration */
} st_tscan_cat;

/* The spans of one name in one category (categories not kept whole only). */
typedef struct st_tscan_name {
    uint32_t cat;
    char *name; /* decoded; "" for a missing name */
    size_t name_len;
    uint64_t count;
    double total_us; /* summed durations */
} st_tscan_name;

#define ST_TSCAN_MAX_NAMES 8192 /* names kept per trace; the rest count under their category */

typedef struct st_tscan {
    /* results */
    uint64_t events; /* elements of traceEvents */
    char *kept;      /* "[ev,ev,...]": the kept events' JSON text */
    size_t kept_len, kept_cap;
    uint64_t *kept_index; /* each kept event's index in traceEvents */
    size_t n_kept, kept_index_cap;
    uint64_t omitted_priority, omitted_other;
    st_tscan_cat *cats;
    size_t n_cats, cats_cap;
    st_tscan_name *names; /* X events of categories not in keep_cats, by category and name */
    size_t n_names, names_cap;
    char *other; /* the otherData value's JSON text, or NULL */
    size_t other_len;
    /* failure */
    st_tscan_status status;
    uint64_t err_offset, err_index;
    const char *err_field; /* ".ts", "" (the event itself), "traceEvents" */
    const char *err_text;
    int err_errno;
    /* private */
    uint32_t *cat_slots;
    size_t slot_mask;
    uint32_t *name_slots;
    size_t name_mask;
    long last_cat;     /* the category of the last complete event (-1: none yet) */
    int last_cat_kept; /* whether it is in keep_cats */
} st_tscan;

/* Read the trace at descriptor fd to its end with opts into *out (zeroed
 * first). Returns out->status; whatever the status, free out with
 * st_tscan_free. Needs no GIL. */
st_tscan_status st_tscan_read(int fd, const st_tscan_opts *opts, st_tscan *out);

/* Free what st_tscan_read allocated. Can't fail. */
void st_tscan_free(st_tscan *t);

/* The length of the union of n intervals [begins[i], ends[i]), summed in
 * (begin, end) order the way comfy_nodes/analysis/summary.py's _union_us does
 * (so the sum is the same to the last bit). -1 when out of memory. */
double st_spans_union(const double *begins, const double *ends, size_t n);

/* The smallest begin of the intervals of positive length (infinity when
 * none): where a category first runs in st_spans_exclusive's sweep. Can't
 * fail. */
double st_spans_first_begin(const double *begins, const double *ends, size_t n);

/* Each category's own time: a sweep over every interval boundary (intervals
 * of zero or negative length left out), each stretch between boundaries given
 * to the running category of the highest rank (rank[k], distinct). cats[k]
 * has counts[k] intervals; owned[k] receives the sum and first[k] the start
 * of its first owned stretch (infinity when none). 0, or -1 when out of
 * memory. */
int st_spans_exclusive(const double *const *begins, const double *const *ends, const size_t *counts,
                       const int *rank, size_t k, double *owned, double *first);

/* The n intervals put in nbins (> 0) equal bins of [lo, hi) by their begin
 * (those outside go to the first or last bin): each bin's count, smallest
 * begin (infinity when empty), largest end and summed duration, in arrays of
 * nbins. Can't fail. */
void st_spans_bins(const double *begins, const double *ends, size_t n, double lo, double hi,
                   size_t nbins, uint64_t *count, double *first, double *last, double *covered);

#endif
