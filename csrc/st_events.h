/* st_events: per-thread bounded event buffers with drop counters. */
#ifndef ST_EVENTS_H
#define ST_EVENTS_H

#include <stddef.h>
#include <stdint.h>

/* One finished span (t_end >= t_begin) or instant (t_end == t_begin). 32 bytes. */
typedef struct st_event {
    uint64_t t_begin_ns;
    uint64_t t_end_ns;
    uint32_t name_id;   /* interned: node class, function label */
    uint32_t detail_id; /* interned: node id, path; ST_INTERN_NONE if none */
    uint32_t tid;       /* kernel thread id of the recording thread */
    uint16_t stage;     /* st_stage */
    uint8_t outcome;    /* st_outcome */
    uint8_t kind;       /* st_event_kind */
} st_event;

typedef enum st_event_kind {
    ST_EVENT_SPAN = 0,
    ST_EVENT_INSTANT = 1,
} st_event_kind;

typedef enum st_events_status {
    ST_EVENTS_OK = 0,
    ST_EVENTS_NO_MEMORY,
    ST_EVENTS_BAD_CAPACITY,
} st_events_status;

#define ST_EVENTS_DEFAULT_CAPACITY 65536u
#define ST_EVENTS_MAX_CAPACITY (1u << 24)

/* Capacity (events, rounded up to a power of two) of buffers created from now
 * on; existing buffers keep theirs. BAD_CAPACITY for 0 or above the maximum. */
st_events_status st_events_set_capacity(uint32_t capacity);

/* Append ev to the calling thread's buffer, filling ev->tid. Lock-free once the
 * thread has its buffer; the first call per thread allocates it and registers
 * it under the registry lock. Returns 1 when stored, 0 when the buffer was full
 * or could not be allocated (the event is counted as dropped). No GIL needed. */
int st_events_append(st_event *ev);

/* Move every buffered event of every thread into a new malloc'd array, oldest
 * first per thread; the caller frees *out. *n may be 0 (then *out is NULL).
 * Takes the registry lock (lock order: registry lock only; never held while a
 * producer waits). Buffers of threads that have exited are freed once empty.
 * Fails with NO_MEMORY and leaves every event in place. */
st_events_status st_events_drain(st_event **out, size_t *n);

/* Events dropped since the process started, all threads. Can't fail. */
uint64_t st_events_dropped(void);

/* Number of live buffers and the capacity new buffers get. Can't fail. */
void st_events_stats(uint32_t *buffers, uint32_t *capacity);

#endif
