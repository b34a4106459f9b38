/* st_trace: Chrome Trace Event JSON, streamed through an st_sink into a
 * temporary file that is published with link(2) (never replacing anything)
 * only once it is complete and synced. */
#include "st_trace.h"

#include <errno.h>
#include <fcntl.h>
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
    if (st_sink_init(&w->sink, w->fd, SINK_BYTES) != 0) {
        writer_close(w, 1);
        return ST_TRACE_NO_MEMORY;
    }
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

static void write_interned(st_sink *s, uint32_t id)
{
    size_t len = 0;
    const char *str = st_intern_lookup(id, &len);
    if (!str) {
        st_sink_puts(s, "\"?\"");
        return;
    }
    st_json_write_string(s, str, len);
}

/* The members of the args object at args (its len bytes, "{...}"), without
 * the braces; appended after a comma when some were written before. */
static void write_args_members(st_sink *s, const char *args, size_t len, int after_others)
{
    if (!args || len <= 2) { /* none, or "{}" */
        return;
    }
    if (after_others) {
        st_sink_putc(s, ',');
    }
    st_sink_write(s, args + 1, len - 2);
}

void st_trace_event(st_trace_writer *w, const st_event *ev, const char *args, uint32_t pid,
                    uint64_t epoch_ns)
{
    if (!w->open) {
        return;
    }
    st_sink *s = &w->sink;
    const char *stage = st_stage_name(ev->stage);
    uint64_t t0 = ev->t_begin_ns > epoch_ns ? ev->t_begin_ns - epoch_ns : 0;
    size_t args_len = args ? ev->args_len : 0;
    separator(w);
    switch (ev->kind) {
    case ST_EVENT_INSTANT: st_sink_puts(s, "{\"ph\":\"i\",\"s\":\"t\""); break;
    case ST_EVENT_COUNTER: st_sink_puts(s, "{\"ph\":\"C\""); break;
    case ST_EVENT_METADATA: st_sink_puts(s, "{\"ph\":\"M\""); break;
    default: st_sink_puts(s, "{\"ph\":\"X\""); break;
    }
    if (ev->kind != ST_EVENT_METADATA) {
        st_sink_puts(s, ",\"cat\":");
        if (ev->cat_id != ST_INTERN_NONE) {
            write_interned(s, ev->cat_id);
        } else {
            st_sink_putc(s, '"');
            st_sink_puts(s, stage ? stage : "other");
            st_sink_putc(s, '"');
        }
    }
    st_sink_puts(s, ",\"name\":");
    write_interned(s, ev->name_id);
    if (ev->kind != ST_EVENT_METADATA) {
        st_sink_puts(s, ",\"ts\":");
        st_sink_us_from_ns(s, t0);
    }
    if (ev->kind == ST_EVENT_SPAN) {
        st_sink_puts(s, ",\"dur\":");
        st_sink_us_from_ns(s, ev->t_end_ns >= ev->t_begin_ns ? ev->t_end_ns - ev->t_begin_ns : 0);
    }
    st_sink_puts(s, ",\"pid\":");
    st_sink_u64(s, pid);
    st_sink_puts(s, ",\"tid\":");
    st_sink_u64(s, ev->tid);
    st_sink_puts(s, ",\"args\":{");
    if (ev->kind == ST_EVENT_SPAN || ev->kind == ST_EVENT_INSTANT) {
        const char *outcome = st_outcome_name(ev->outcome);
        st_sink_puts(s, "\"outcome\":\"");
        st_sink_puts(s, outcome ? outcome : "ok");
        st_sink_putc(s, '"');
        if (ev->detail_id != ST_INTERN_NONE) {
            st_sink_puts(s, ",\"");
            st_sink_puts(s, st_stage_detail_key(ev->stage));
            st_sink_puts(s, "\":");
            write_interned(s, ev->detail_id);
        }
        write_args_members(s, args, args_len, 1);
    } else {
        write_args_members(s, args, args_len, 0);
    }
    st_sink_write(s, "}}", 2);
    w->events++;
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
