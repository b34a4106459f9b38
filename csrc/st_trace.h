/* st_trace: streaming Chrome Trace Event JSON writer, whole file or nothing. */
#ifndef ST_TRACE_H
#define ST_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "st_events.h"
#include "st_sink.h"

/* Version of the layout of StageTrace trace files (top-level "stagetraceFormat"). */
#define ST_TRACE_FORMAT_VERSION 1

typedef enum st_trace_status {
    ST_TRACE_OK = 0,
    ST_TRACE_OPEN_FAILED,   /* the temporary file could not be created; see err */
    ST_TRACE_WRITE_FAILED,  /* write, flush or fsync failed; see err */
    ST_TRACE_EXISTS,        /* the final path exists: never overwritten */
    ST_TRACE_RENAME_FAILED, /* publishing the temporary file failed; see err */
    ST_TRACE_BAD_STATE,     /* the writer is already committed or aborted */
    ST_TRACE_NO_MEMORY,
} st_trace_status;

/* A name's JSON string literal (quotes included) in a writer's name cache. */
typedef struct st_trace_name {
    uint32_t off; /* in the writer's names pool */
    uint32_t len; /* 0: not escaped yet */
} st_trace_name;

typedef struct st_trace_writer {
    st_sink sink;
    int fd;
    int open;
    int err; /* errno of the failure behind the last non-OK status */
    int need_comma;
    char *final_path;
    char *tmp_path;
    uint64_t events;
    /* Each interned name escaped once per writer: names[id] locates its JSON
     * literal in pool (a memory sink). Names never change once interned. */
    st_trace_name *names;
    uint32_t names_cap;
    st_sink pool;
    /* the last tid written, in decimal */
    uint32_t last_tid;
    uint8_t last_tid_len;
    char last_tid_text[32]; /* room for whole-block copies */
    uint64_t writeback_from; /* file offset up to which writeback was started */
} st_trace_writer;

/* Create "<path>.tmp.<pid>.<n>" exclusively and write the file's opening.
 * The final path is only created by st_trace_commit. Needs no GIL. On
 * failure nothing is left on disk and the writer needs no abort. */
st_trace_status st_trace_open(st_trace_writer *w, const char *path);

/* Append one event as a Chrome trace object, by kind:
 *   span      {"ph":"X","cat","name","ts","dur","pid","tid","args"}
 *   instant   {"ph":"i","s":"t","cat","name","ts","pid","tid","args"}
 *   counter   {"ph":"C","cat","name","ts","pid","tid","args"}
 *   metadata  {"ph":"M","name","pid","tid","args"}
 * ts/dur in microseconds (three decimals, exact) relative to epoch_ns; names
 * and categories looked up in the intern table (cat_id 0: the stage's name).
 * A span's or instant's args are {"outcome", then the stage's detail key when
 * it has a detail, then the members of its recorded args}; a counter's and a
 * metadata record's are the recorded args alone. args points to the event's
 * ev->args_len bytes of args (a JSON object), or is NULL for none. Write
 * errors are sticky and reported by st_trace_commit. */
void st_trace_event(st_trace_writer *w, const st_event *ev, const char *args, uint32_t pid,
                    uint64_t epoch_ns);

/* st_trace_event for n drained events whose args live in the batch's args
 * bytes (each at its event's args_off). Same output, same error policy. */
void st_trace_events(st_trace_writer *w, const st_event *events, size_t n, const char *args,
                     uint32_t pid, uint64_t epoch_ns);

/* Append one pre-serialized JSON object (the caller vouches for its
 * validity). Same error policy as st_trace_event. */
void st_trace_raw(st_trace_writer *w, const char *json, size_t len);

/* Close the event array, write "otherData" (a JSON object, or "{}" when
 * other_json is NULL) and the format version, flush, fsync and
 * publish under the final path without replacing an existing file. On any
 * failure the temporary file is removed. The writer is closed either way. */
st_trace_status st_trace_commit(st_trace_writer *w, const char *other_json, size_t len);

/* Drop the temporary file and free the writer. Safe after commit (no-op). */
void st_trace_abort(st_trace_writer *w);

#endif
