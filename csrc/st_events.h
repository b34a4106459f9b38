/* st_events: per-thread bounded event buffers with drop counters. */
#ifndef ST_EVENTS_H
#define ST_EVENTS_H

#include <stddef.h>
#include <stdint.h>

/* One event: a finished span (t_end >= t_begin), an instant, a counter sample
 * or a metadata record (both stamped at t_begin). 48 bytes. */
typedef struct st_event {
    uint64_t t_begin_ns;
    uint64_t t_end_ns;
    uint32_t name_id;   /* interned: node class, function label, counter or metadata name */
    uint32_t detail_id; /* interned: node id, path; ST_INTERN_NONE if none */
    uint32_t tid;       /* the track: a kernel thread id, or a virtual track (0x7fff0000 + n);
                           0 when appended means the recording thread's kernel tid */
    uint32_t cat_id;    /* interned category; ST_INTERN_NONE means the stage's name */
    uint32_t args_off;  /* drained: offset of the args JSON object in the batch's args bytes */
    uint32_t args_len;  /* bytes of the args JSON object; 0: no args */
    uint16_t stage;     /* st_stage */
    uint8_t outcome;    /* st_outcome */
    uint8_t kind;       /* st_event_kind */
    uint32_t reserved;  /* zero */
} st_event;

/* What an event is, as written to a Chrome trace ("ph"). Part of the trace
 * format: append, never renumber. */
typedef enum st_event_kind {
    ST_EVENT_SPAN = 0,     /* "X": complete event with a duration */
    ST_EVENT_INSTANT = 1,  /* "i": thread-scoped instant */
    ST_EVENT_COUNTER = 2,  /* "C": the args are the counter series */
    ST_EVENT_METADATA = 3, /* "M": name is "thread_name", "process_name", ...; args {"name": ...} */
    ST_EVENT_KIND_COUNT
} st_event_kind;

/* What st_events_append_args did with an event. */
typedef enum st_events_stored {
    ST_EVENTS_DROPPED = 0,      /* the ring was full (or had no memory): counted in dropped */
    ST_EVENTS_STORED = 1,       /* stored with its args */
    ST_EVENTS_STORED_BARE = 2,  /* stored without its args (arena full): counted in args_dropped */
} st_events_stored;

typedef enum st_events_status {
    ST_EVENTS_OK = 0,
    ST_EVENTS_NO_MEMORY,
    ST_EVENTS_BAD_CAPACITY,
} st_events_status;

/* Events moved out of the buffers by st_events_drain, with their args. */
typedef struct st_events_batch {
    st_event *events; /* oldest first per thread */
    size_t n;
    char *args; /* the args JSON objects, each at its event's args_off */
    size_t args_bytes;
} st_events_batch;

#define ST_EVENTS_DEFAULT_CAPACITY 65536u
#define ST_EVENTS_MAX_CAPACITY (1u << 24)
/* A thread's args arena holds this many bytes per ring slot, within the bounds. */
#define ST_EVENTS_ARGS_BYTES_PER_EVENT 64u
#define ST_EVENTS_ARGS_MIN_BYTES 1024u
#define ST_EVENTS_ARGS_MAX_BYTES (64u << 20)

/* Capacity (events, rounded up to a power of two) of buffers created from now
 * on; existing buffers keep theirs. BAD_CAPACITY for 0 or above the maximum. */
st_events_status st_events_set_capacity(uint32_t capacity);

/* Append ev (args_len 0) to the calling thread's buffer; ev->tid 0 becomes the
 * thread's kernel tid. Lock-free once the thread has its buffer; the first
 * call per thread allocates it and registers it under the registry lock.
 * Returns 1 when stored, 0 when the buffer was full or could not be allocated
 * (the event is counted as dropped). No GIL needed. */
int st_events_append(st_event *ev);

/* Append ev with args: the len bytes at args (a JSON object; NULL or len 0 for
 * none) are copied into the thread's args arena, which is allocated the first
 * time the thread records args (ST_EVENTS_ARGS_BYTES_PER_EVENT per ring slot,
 * within the bounds above) and is single-producer like the ring. A full ring
 * drops the event (counted in dropped); a full or unallocatable arena keeps
 * the event without its args (counted in args_dropped), and so does args NULL
 * with len > 0 (the caller could not make them). Sets ev->tid and
 * ev->args_off/args_len. Lock-free; no GIL needed. */
st_events_stored st_events_append_args(st_event *ev, const char *args, size_t len);

/* Move every buffered event of every thread, with its args, into a new batch,
 * oldest first per thread; free it with st_events_batch_free. out->n may be 0.
 * Takes the registry lock (lock order: registry lock only; never held while a
 * producer waits). Buffers of threads that have exited are freed once empty:
 * an exiting thread clears its own pointer to its buffer first.
 * Fails with NO_MEMORY and leaves every event in place. */
st_events_status st_events_drain(st_events_batch *out);

/* Free a drained batch's memory (not the struct). Can't fail. */
void st_events_batch_free(st_events_batch *batch);

/* Events dropped since the process started, all threads. Can't fail. */
uint64_t st_events_dropped(void);

/* Events stored without their args since the process started. Can't fail. */
uint64_t st_events_args_dropped(void);

/* pthread_atfork handlers, registered by st_fork: prepare takes the registry
 * lock, parent releases it; child keeps only the calling thread's buffer,
 * emptied, frees the other threads' buffers (those threads do not exist in
 * the child), zeroes the drop counters and releases the lock. */
void st_events_fork_prepare(void);
void st_events_fork_parent(void);
void st_events_fork_child(void);

/* Number of live buffers and the capacity new buffers get. Can't fail. */
void st_events_stats(uint32_t *buffers, uint32_t *capacity);

#endif
