/* st_trace: Chrome Trace Event JSON, streamed through an st_sink into a
 * temporary file that is published with link(2) (never replacing anything)
 * only once it is complete and synced.
 *
 * The event path is built for throughput (over 5 M events/s): each event is
 * formatted straight into the sink's buffer after one room check, from
 * fragments prepared once (per stage, outcome and kind; pid per call; the
 * last tid) and names escaped once per writer; numbers with a digit-pair
 * table. An event larger than the sink's buffer is formatted into a
 * temporary buffer instead: one formatting code path either way. */
#include "st_trace.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "st_intern.h"
#include "st_json.h"
#include "st_stage.h"

#define SINK_BYTES (1u << 20)

static atomic_uint tmp_counter;

static void writer_close(st_trace_writer *w, int unlink_tmp)
{
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    if (unlink_tmp && w->tmp_path) {
        unlink(w->tmp_path);
    }
    st_sink_free(&w->sink);
    st_sink_free(&w->pool);
    free(w->names);
    w->names = NULL;
    w->names_cap = 0;
    free(w->tmp_path);
    free(w->final_path);
    w->tmp_path = w->final_path = NULL;
    w->open = 0;
}

st_trace_status st_trace_open(st_trace_writer *w, const char *path)
{
    memset(w, 0, sizeof *w);
    w->fd = -1;
    size_t n = strlen(path) + 64;
    w->final_path = strdup(path);
    w->tmp_path = malloc(n);
    if (!w->final_path || !w->tmp_path) {
        writer_close(w, 0);
        return ST_TRACE_NO_MEMORY;
    }
    snprintf(w->tmp_path, n, "%s.tmp.%ld.%u", path, (long)getpid(),
             atomic_fetch_add(&tmp_counter, 1));
    w->fd = open(w->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        w->err = errno;
        free(w->tmp_path); /* nothing was created: don't unlink someone else's file */
        w->tmp_path = NULL;
        writer_close(w, 0);
        return ST_TRACE_OPEN_FAILED;
    }
    if (st_sink_init(&w->sink, w->fd, SINK_BYTES) != 0 || st_sink_init(&w->pool, -1, 4096) != 0) {
        writer_close(w, 1);
        return ST_TRACE_NO_MEMORY;
    }
    st_sink_write(&w->pool, "\"?\"", 3); /* offset 0: the literal for unknown ids */
    w->open = 1;
    st_sink_puts(&w->sink, "{\"traceEvents\":[\n");
    return ST_TRACE_OK;
}

static void separator(st_trace_writer *w)
{
    if (w->need_comma) {
        st_sink_write(&w->sink, ",\n", 2);
    }
    w->need_comma = 1;
}

// --- Fragments prepared once ---------------------------------------------------

/* Copies of up to SLACK bytes move whole SLACK-byte blocks (two or four
 * vector moves, no call): every source keeps SLACK readable bytes and every
 * destination SLACK bytes of room past what it needs. */
#define SLACK 64

/* The text every event of a kind, stage, outcome... starts or ends with. */
typedef struct fragment {
    char text[SLACK];
    size_t len;
} fragment;

static struct {
    /* {"ph":"X","cat":"node","name":  by kind and stage (cat_id 0) */
    fragment head[ST_EVENT_KIND_COUNT][ST_STAGE_COUNT];
    /* {"ph":"X","cat":  by kind (a cat_id of its own follows) */
    fragment head_open[ST_EVENT_KIND_COUNT];
    /* ,"args":{"outcome":"ok"  then ,"node_id": when the event has a detail */
    fragment args[ST_STAGE_COUNT][ST_OUTCOME_COUNT][2];
} fragments;
static pthread_once_t fragments_once = PTHREAD_ONCE_INIT;

static void fragment_set(fragment *f, const char *a, const char *b, const char *c, const char *d)
{
    int n = snprintf(f->text, sizeof f->text, "%s%s%s%s", a, b, c, d);
    f->len = n > 0 && (size_t)n < sizeof f->text ? (size_t)n : 0; /* all are far shorter */
}

static void fragments_build(void)
{
    static const char *const open[ST_EVENT_KIND_COUNT] = {
        [ST_EVENT_SPAN] = "{\"ph\":\"X\",\"cat\":",
        [ST_EVENT_INSTANT] = "{\"ph\":\"i\",\"s\":\"t\",\"cat\":",
        [ST_EVENT_COUNTER] = "{\"ph\":\"C\",\"cat\":",
        [ST_EVENT_METADATA] = "{\"ph\":\"M\"",
    };
    for (unsigned k = 0; k < ST_EVENT_KIND_COUNT; k++) {
        fragment_set(&fragments.head_open[k], open[k], "", "", "");
        for (unsigned i = 0; i < ST_STAGE_COUNT; i++) {
            if (k == ST_EVENT_METADATA) {
                fragment_set(&fragments.head[k][i], open[k], ",\"name\":", "", "");
            } else {
                fragment_set(&fragments.head[k][i], open[k], "\"", st_stage_name(i), "\",\"name\":");
            }
        }
    }
    for (unsigned i = 0; i < ST_STAGE_COUNT; i++) {
        for (unsigned o = 0; o < ST_OUTCOME_COUNT; o++) {
            char detail_key[48];
            snprintf(detail_key, sizeof detail_key, ",\"%s\":", st_stage_detail_key(i));
            fragment_set(&fragments.args[i][o][0], ",\"args\":{\"outcome\":\"", st_outcome_name(o),
                         "\"", "");
            fragment_set(&fragments.args[i][o][1], ",\"args\":{\"outcome\":\"", st_outcome_name(o),
                         "\"", detail_key);
        }
    }
}

/* n bytes from src (with SLACK readable bytes) at p (with n + SLACK bytes of room). */
static inline char *put_short(char *p, const char *src, size_t n)
{
    if (n <= SLACK) {
        memcpy(p, src, SLACK);
    } else {
        memcpy(p, src, n);
    }
    return p + n;
}

static inline char *put_fragment(char *p, const fragment *f)
{
    memcpy(p, f->text, SLACK);
    return p + f->len;
}

#define PUT_LITERAL(p, lit) (memcpy((p), (lit), sizeof(lit) - 1), (p) += sizeof(lit) - 1)

static const char digit_pairs[] = "00010203040506070809101112131415161718192021222324252627282930"
                                  "31323334353637383940414243444546474849505152535455565758596061"
                                  "62636465666768697071727374757677787980818283848586878889909192"
                                  "93949596979899";

static const uint64_t powers_of_ten[20] = {
    1ull,
    10ull,
    100ull,
    1000ull,
    10000ull,
    100000ull,
    1000000ull,
    10000000ull,
    100000000ull,
    1000000000ull,
    10000000000ull,
    100000000000ull,
    1000000000000ull,
    10000000000000ull,
    100000000000000ull,
    1000000000000000ull,
    10000000000000000ull,
    100000000000000000ull,
    1000000000000000000ull,
    10000000000000000000ull,
};

/* v in decimal at p, written from its last digit back; returns the end. */
static inline char *put_u64(char *p, uint64_t v)
{
    /* digits: from the bit length (log10(2) ~ 1233 / 4096), then one correction */
    unsigned n = ((64u - (unsigned)__builtin_clzll(v | 1)) * 1233u) >> 12;
    n += n < 20 && v >= powers_of_ten[n];
    n += n == 0;
    char *end = p + n, *t = end;
    while (v >= 100) {
        unsigned r = (unsigned)(v % 100);
        v /= 100;
        t -= 2;
        memcpy(t, digit_pairs + 2 * r, 2);
    }
    if (v >= 10) {
        memcpy(t - 2, digit_pairs + 2 * v, 2);
    } else {
        t[-1] = (char)('0' + v);
    }
    return end;
}

/* ns / 1000 with three decimals ("1234.567"), exact. */
static inline char *put_us(char *p, uint64_t ns)
{
    unsigned frac = (unsigned)(ns % 1000);
    p = put_u64(p, ns / 1000);
    p[0] = '.';
    p[1] = (char)('0' + frac / 100);
    memcpy(p + 2, digit_pairs + 2 * (frac % 100), 2);
    return p + 4;
}

// --- Names, escaped once per writer ---------------------------------------------

/* Where the JSON literal of an interned name lies in w->pool (the pool
 * starts with "?", written for unknown ids), escaped the first time this
 * writer meets it. 0, or -1 when out of memory. The pool may move when it
 * grows: turn offsets into pointers only once every name of an event is in. */
static __attribute__((noinline)) int name_escape(st_trace_writer *w, uint32_t id, uint32_t *off,
                                                  uint32_t *len)
{
    size_t raw_len;
    const char *raw = st_intern_lookup(id, &raw_len);
    if (!raw) { /* not cached: the id may be interned later */
        *off = 0;
        *len = 3;
        return 0;
    }
    if (id >= w->names_cap) {
        uint32_t cap = w->names_cap ? w->names_cap : 256;
        while (cap <= id) {
            cap *= 2;
        }
        st_trace_name *names = realloc(w->names, (size_t)cap * sizeof *names);
        if (!names) {
            return -1;
        }
        memset(names + w->names_cap, 0, (size_t)(cap - w->names_cap) * sizeof *names);
        w->names = names;
        w->names_cap = cap;
    }
    size_t start = w->pool.len;
    st_json_write_string(&w->pool, raw, raw_len);
    if (w->pool.failed || w->pool.len > UINT32_MAX) {
        return -1;
    }
    *off = w->names[id].off = (uint32_t)start;
    *len = w->names[id].len = (uint32_t)(w->pool.len - start);
    /* keep SLACK readable bytes past the last literal, for put_short's whole-block copies */
    char zeros[SLACK] = {0};
    st_sink_write(&w->pool, zeros, SLACK);
    w->pool.len -= SLACK;
    return w->pool.failed ? -1 : 0;
}

static inline int name_at(st_trace_writer *w, uint32_t id, uint32_t *off, uint32_t *len)
{
    if (id < w->names_cap && w->names[id].len) {
        *off = w->names[id].off;
        *len = w->names[id].len;
        return 0;
    }
    return name_escape(w, id, off, len);
}

// --- Events ---------------------------------------------------------------------

/* What one call writes every event with: ,"pid":N,"tid": and the epoch. */
typedef struct call_context {
    fragment pid;
    uint64_t epoch_ns;
} call_context;

/* An event's strings, resolved before its room is reserved. */
typedef struct resolved {
    const fragment *head; /* NULL: head_open, the cat literal, then ,"name": */
    const char *cat, *name, *detail;
    size_t cat_len, name_len, detail_len;
    const char *args; /* the recorded args object, or NULL */
    size_t args_len;
} resolved;

/* The bytes format_event writes at most (SLACK for its whole-block copies). */
static size_t event_bound(const resolved *r)
{
    /* fragments and literals under 4 * SLACK; ts, dur, tid under 24 each */
    return 6 * SLACK + 3 * 24 + r->cat_len + r->name_len + r->detail_len + r->args_len;
}

/* Format one event at p (room for event_bound bytes); returns the end. */
static char *format_event(st_trace_writer *w, char *p, const st_event *ev, unsigned kind,
                          const resolved *r, const call_context *c)
{
    if (w->need_comma) {
        PUT_LITERAL(p, ",\n");
    }
    w->need_comma = 1;
    if (r->head) {
        p = put_fragment(p, r->head);
    } else {
        p = put_fragment(p, &fragments.head_open[kind]);
        p = put_short(p, r->cat, r->cat_len);
        PUT_LITERAL(p, ",\"name\":");
    }
    p = put_short(p, r->name, r->name_len);
    if (kind != ST_EVENT_METADATA) {
        PUT_LITERAL(p, ",\"ts\":");
        p = put_us(p, ev->t_begin_ns > c->epoch_ns ? ev->t_begin_ns - c->epoch_ns : 0);
    }
    if (kind == ST_EVENT_SPAN) {
        PUT_LITERAL(p, ",\"dur\":");
        p = put_us(p, ev->t_end_ns >= ev->t_begin_ns ? ev->t_end_ns - ev->t_begin_ns : 0);
    }
    p = put_fragment(p, &c->pid);
    if (ev->tid != w->last_tid || !w->last_tid_len) {
        w->last_tid = ev->tid;
        w->last_tid_len = (uint8_t)(put_u64(w->last_tid_text, ev->tid) - w->last_tid_text);
    }
    memcpy(p, w->last_tid_text, sizeof w->last_tid_text);
    p += w->last_tid_len;
    int members = 0;
    if (kind == ST_EVENT_SPAN || kind == ST_EVENT_INSTANT) {
        unsigned stage = ev->stage < ST_STAGE_COUNT ? ev->stage : ST_STAGE_OTHER;
        unsigned outcome = ev->outcome < ST_OUTCOME_COUNT ? ev->outcome : ST_OUTCOME_OK;
        p = put_fragment(p, &fragments.args[stage][outcome][r->detail != NULL]);
        if (r->detail) {
            p = put_short(p, r->detail, r->detail_len);
        }
        members = 1;
    } else {
        PUT_LITERAL(p, ",\"args\":{");
    }
    if (r->args_len > 2) { /* the recorded members, without their braces */
        if (members) {
            *p++ = ',';
        }
        memcpy(p, r->args + 1, r->args_len - 2);
        p += r->args_len - 2;
    }
    PUT_LITERAL(p, "}}");
    return p;
}

/* Start writing back what was flushed since the last call, every
 * WRITEBACK_BYTES, without waiting for it: the disk works while the events
 * are formatted, and commit's fsync has little left to wait for. A hint only
 * (errors are ignored here: fsync reports them). */
#define WRITEBACK_BYTES (8u << 20)

static void writeback_start(st_trace_writer *w)
{
    uint64_t written = w->sink.written;
    if (written - w->writeback_from >= WRITEBACK_BYTES) {
        sync_file_range(w->fd, (off_t)w->writeback_from, (off_t)(written - w->writeback_from),
                        SYNC_FILE_RANGE_WRITE);
        w->writeback_from = written;
    }
}

static void write_event(st_trace_writer *w, const st_event *ev, const char *args,
                        const call_context *c)
{
    st_sink *s = &w->sink;
    unsigned kind = ev->kind < ST_EVENT_KIND_COUNT ? ev->kind : ST_EVENT_SPAN;
    unsigned stage = ev->stage < ST_STAGE_COUNT ? ev->stage : ST_STAGE_OTHER;
    int with_cat = kind != ST_EVENT_METADATA && ev->cat_id != ST_INTERN_NONE;
    int with_detail = (kind == ST_EVENT_SPAN || kind == ST_EVENT_INSTANT) &&
                      ev->detail_id != ST_INTERN_NONE;
    uint32_t cat_off = 0, cat_len = 0, name_off, name_len, detail_off = 0, detail_len = 0;
    w->events++;
    if ((with_cat && name_at(w, ev->cat_id, &cat_off, &cat_len) < 0) ||
        name_at(w, ev->name_id, &name_off, &name_len) < 0 ||
        (with_detail && name_at(w, ev->detail_id, &detail_off, &detail_len) < 0)) {
        goto no_memory;
    }
    /* every name is in the pool now: it stays put until the next event */
    resolved r = {
        .head = with_cat ? NULL : &fragments.head[kind][stage],
        .cat = w->pool.buf + cat_off,
        .cat_len = cat_len,
        .name = w->pool.buf + name_off,
        .name_len = name_len,
        .detail = with_detail ? w->pool.buf + detail_off : NULL,
        .detail_len = detail_len,
        .args = args,
        .args_len = args ? ev->args_len : 0,
    };
    size_t bound = event_bound(&r);
    if (s->cap - s->len < bound && s->fd >= 0) {
        st_sink_flush(s); /* a failure is sticky */
        writeback_start(w);
    }
    if (s->failed) {
        return;
    }
    if (s->cap - s->len >= bound) {
        s->len = (size_t)(format_event(w, s->buf + s->len, ev, kind, &r, c) - s->buf);
        return;
    }
    char *aside = malloc(bound); /* larger than the buffer: format aside, then stream it */
    if (!aside) {
        goto no_memory;
    }
    char *end = format_event(w, aside, ev, kind, &r, c);
    st_sink_write(s, aside, (size_t)(end - aside));
    free(aside);
    return;
no_memory:
    if (!s->failed) {
        s->failed = ENOMEM;
    }
}

static void call_context_init(call_context *c, uint32_t pid, uint64_t epoch_ns)
{
    char *p = c->pid.text;
    memset(c->pid.text, 0, sizeof c->pid.text);
    PUT_LITERAL(p, ",\"pid\":");
    p = put_u64(p, pid);
    PUT_LITERAL(p, ",\"tid\":");
    c->pid.len = (size_t)(p - c->pid.text);
    c->epoch_ns = epoch_ns;
}

void st_trace_event(st_trace_writer *w, const st_event *ev, const char *args, uint32_t pid,
                    uint64_t epoch_ns)
{
    if (!w->open) {
        return;
    }
    pthread_once(&fragments_once, fragments_build);
    call_context c;
    call_context_init(&c, pid, epoch_ns);
    write_event(w, ev, args, &c);
}

void st_trace_events(st_trace_writer *w, const st_event *events, size_t n, const char *args,
                     uint32_t pid, uint64_t epoch_ns)
{
    if (!w->open) {
        return;
    }
    pthread_once(&fragments_once, fragments_build);
    call_context c;
    call_context_init(&c, pid, epoch_ns);
    for (size_t i = 0; i < n; i++) {
        const st_event *ev = &events[i];
        write_event(w, ev, ev->args_len && args ? args + ev->args_off : NULL, &c);
    }
}

void st_trace_raw(st_trace_writer *w, const char *json, size_t len)
{
    if (!w->open) {
        return;
    }
    separator(w);
    st_sink_write(&w->sink, json, len);
    w->events++;
}

st_trace_status st_trace_commit(st_trace_writer *w, const char *other_json, size_t len)
{
    if (!w->open) {
        return ST_TRACE_BAD_STATE;
    }
    st_sink *s = &w->sink;
    st_sink_puts(s, "\n],\"displayTimeUnit\":\"ms\",\"stagetraceFormat\":");
    st_sink_u64(s, ST_TRACE_FORMAT_VERSION);
    st_sink_puts(s, ",\"otherData\":");
    if (other_json) {
        st_sink_write(s, other_json, len);
    } else {
        st_sink_puts(s, "{}");
    }
    st_sink_puts(s, "}\n");
    int err = st_sink_flush(s);
    if (!err && fsync(w->fd) != 0) {
        err = errno;
    }
    if (err) {
        w->err = err;
        writer_close(w, 1);
        return ST_TRACE_WRITE_FAILED;
    }
    if (link(w->tmp_path, w->final_path) != 0) {
        int link_err = errno;
        if (link_err == EEXIST) {
            writer_close(w, 1);
            return ST_TRACE_EXISTS;
        }
        /* filesystems without hard links: rename, after checking no file is there */
        struct stat st;
        if (lstat(w->final_path, &st) == 0) {
            writer_close(w, 1);
            return ST_TRACE_EXISTS;
        }
        if (rename(w->tmp_path, w->final_path) != 0) {
            w->err = errno;
            writer_close(w, 1);
            return ST_TRACE_RENAME_FAILED;
        }
        writer_close(w, 0);
        return ST_TRACE_OK;
    }
    writer_close(w, 1); /* the final name holds the data now; drop the temporary one */
    return ST_TRACE_OK;
}

void st_trace_abort(st_trace_writer *w)
{
    if (w->open) {
        writer_close(w, 1);
    }
}
