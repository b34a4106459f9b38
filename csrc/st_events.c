/* st_events: one single-producer ring per thread, and beside it, once the
 * thread records args, one single-producer byte arena for them. The owning
 * thread is the only writer of `head` and `arena_head`; the drainer (under
 * registry_lock) is the only writer of `tail` and `arena_tail`. Positions grow
 * without bound and are masked into the ring (arena), so a full ring is
 * head - tail == capacity. An event's args are contiguous in the arena (a
 * record that would straddle its end starts again at its beginning) and the
 * event keeps the low 32 bits of their position: the arena is smaller than
 * 4 GiB, so the drainer recovers the position from its own tail.
 *
 * A buffer outlives its thread until drained: at thread exit (a pthread key
 * destructor, on the exiting thread) the thread first forgets its buffer
 * (its thread-local pointer is cleared and the thread marked exited, so
 * anything it records later, from a later destructor, is counted as dropped
 * instead of touching the buffer), and only then marks the buffer dead
 * (release). The drainer frees a dead buffer once empty: by then no pointer
 * but the registry's reaches it.
 *
 * fork(): st_events_fork_* (registered by st_fork) take registry_lock around
 * the fork; the child keeps only the forking thread's buffer, emptied (the
 * parent keeps those events), and frees the others: their threads do not
 * exist in the child, and a thread of the parent may have been half way
 * through an append. */
#include "st_events.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct st_buffer {
    st_event *ring;
    uint32_t mask;
    uint32_t tid;
    _Atomic uint64_t head;
    _Atomic uint64_t tail;
    _Atomic uint64_t dropped;
    atomic_int thread_alive;
    char *arena;          /* args bytes; NULL until the thread's first args */
    uint32_t arena_mask;  /* arena bytes - 1, fixed when the buffer is made */
    int arena_failed;     /* its allocation failed: args are dropped, events kept */
    uint64_t arena_head;  /* owning thread only */
    _Atomic uint64_t arena_tail;
    _Atomic uint64_t args_dropped;
    uint64_t drain_head;    /* guarded by registry_lock: what the drain in progress takes */
    struct st_buffer *next; /* registry list; guarded by registry_lock */
} st_buffer;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static st_buffer *registry;
static uint32_t registry_size;
static _Atomic uint32_t new_capacity = ST_EVENTS_DEFAULT_CAPACITY;
/* Drops that happened before a thread had a buffer, or from freed buffers. */
static _Atomic uint64_t orphan_dropped;
static _Atomic uint64_t orphan_args_dropped;

/* initial-exec: a plain %fs-relative load on the hot path instead of a
 * __tls_get_addr call; two words fit glibc's surplus static TLS for dlopen. */
#define ST_FAST_TLS __attribute__((tls_model("initial-exec")))
static _Thread_local st_buffer *thread_buffer ST_FAST_TLS;
/* 1: the buffer could not be made; 2: the thread is exiting. Either way its
 * events are counted as dropped. */
static _Thread_local int thread_buffer_failed ST_FAST_TLS;
static pthread_key_t exit_key;
static pthread_once_t exit_key_once = PTHREAD_ONCE_INIT;

static void on_thread_exit(void *arg)
{
    st_buffer *buf = arg;
    thread_buffer = NULL; /* first: nothing on this thread reaches buf from now on */
    thread_buffer_failed = 2;
    atomic_store_explicit(&buf->thread_alive, 0, memory_order_release);
}

static void exit_key_create(void)
{
    pthread_key_create(&exit_key, on_thread_exit);
}

static uint32_t round_pow2(uint32_t v)
{
    uint32_t p = 1;
    while (p < v) {
        p <<= 1;
    }
    return p;
}

st_events_status st_events_set_capacity(uint32_t capacity)
{
    if (capacity == 0 || capacity > ST_EVENTS_MAX_CAPACITY) {
        return ST_EVENTS_BAD_CAPACITY;
    }
    atomic_store(&new_capacity, round_pow2(capacity));
    return ST_EVENTS_OK;
}

static st_buffer *buffer_create(void)
{
    uint32_t cap = atomic_load(&new_capacity);
    st_buffer *buf = calloc(1, sizeof *buf);
    st_event *ring = malloc((size_t)cap * sizeof *ring);
    if (!buf || !ring) {
        goto error;
    }
    buf->ring = ring;
    buf->mask = cap - 1;
    uint64_t arena_bytes = (uint64_t)cap * ST_EVENTS_ARGS_BYTES_PER_EVENT;
    arena_bytes = arena_bytes < ST_EVENTS_ARGS_MIN_BYTES   ? ST_EVENTS_ARGS_MIN_BYTES
                  : arena_bytes > ST_EVENTS_ARGS_MAX_BYTES ? ST_EVENTS_ARGS_MAX_BYTES
                                                           : arena_bytes;
    buf->arena_mask = (uint32_t)(arena_bytes - 1); /* every bound is a power of two */
    buf->tid = (uint32_t)syscall(SYS_gettid);
    atomic_init(&buf->thread_alive, 1);
    pthread_once(&exit_key_once, exit_key_create);
    if (pthread_setspecific(exit_key, buf) != 0) {
        goto error;
    }
    /* lock order: registry_lock only */
    pthread_mutex_lock(&registry_lock);
    buf->next = registry;
    registry = buf;
    registry_size++;
    pthread_mutex_unlock(&registry_lock);
    return buf;
error:
    free(ring);
    free(buf);
    return NULL;
}

/* The calling thread's buffer, created on its first event; NULL when that
 * failed (now or before). */
static inline st_buffer *thread_buffer_get(void)
{
    st_buffer *buf = thread_buffer;
    if (__builtin_expect(buf == NULL, 0)) {
        if (thread_buffer_failed || !(buf = buffer_create())) {
            thread_buffer_failed = 1;
            return NULL;
        }
        thread_buffer = buf;
    }
    return buf;
}

/* Room for len contiguous args bytes in buf's arena (allocated here the first
 * time): 1 and their position in *pos, or 0. Owning thread only. */
static int arena_reserve(st_buffer *buf, size_t len, uint64_t *pos)
{
    size_t size = (size_t)buf->arena_mask + 1;
    if (!buf->arena) {
        if (buf->arena_failed || !(buf->arena = malloc(size))) {
            buf->arena_failed = 1;
            return 0;
        }
    }
    if (len > size) {
        return 0;
    }
    uint64_t start = buf->arena_head;
    size_t off = (size_t)(start & buf->arena_mask);
    if (off + len > size) {
        start += size - off; /* would straddle the end: start again at the beginning */
    }
    uint64_t tail = atomic_load_explicit(&buf->arena_tail, memory_order_acquire);
    if (start + len - tail > size) {
        return 0;
    }
    *pos = start;
    return 1;
}

static inline int ring_full(st_buffer *buf, uint64_t head)
{
    uint64_t tail = atomic_load_explicit(&buf->tail, memory_order_acquire);
    return head - tail > buf->mask;
}

int st_events_append(st_event *ev)
{
    st_buffer *buf = thread_buffer_get();
    if (!buf) {
        atomic_fetch_add_explicit(&orphan_dropped, 1, memory_order_relaxed);
        return 0;
    }
    uint64_t head = atomic_load_explicit(&buf->head, memory_order_relaxed);
    if (ring_full(buf, head)) {
        atomic_fetch_add_explicit(&buf->dropped, 1, memory_order_relaxed);
        return 0;
    }
    if (!ev->tid) {
        ev->tid = buf->tid;
    }
    ev->args_len = 0;
    buf->ring[head & buf->mask] = *ev;
    atomic_store_explicit(&buf->head, head + 1, memory_order_release);
    return 1;
}

st_events_stored st_events_append_args(st_event *ev, const char *args, size_t len)
{
    st_buffer *buf = thread_buffer_get();
    if (!buf) {
        atomic_fetch_add_explicit(&orphan_dropped, 1, memory_order_relaxed);
        return ST_EVENTS_DROPPED;
    }
    uint64_t head = atomic_load_explicit(&buf->head, memory_order_relaxed);
    if (ring_full(buf, head)) { /* checked first: a dropped event takes no arena room */
        atomic_fetch_add_explicit(&buf->dropped, 1, memory_order_relaxed);
        return ST_EVENTS_DROPPED;
    }
    st_events_stored stored = ST_EVENTS_STORED;
    uint64_t pos;
    ev->args_off = 0;
    ev->args_len = 0;
    if (len) {
        if (args && arena_reserve(buf, len, &pos)) {
            memcpy(buf->arena + (pos & buf->arena_mask), args, len);
            buf->arena_head = pos + len;
            ev->args_off = (uint32_t)pos; /* low 32 bits; see the top of this file */
            ev->args_len = (uint32_t)len;
        } else {
            atomic_fetch_add_explicit(&buf->args_dropped, 1, memory_order_relaxed);
            stored = ST_EVENTS_STORED_BARE;
        }
    }
    if (!ev->tid) {
        ev->tid = buf->tid;
    }
    buf->ring[head & buf->mask] = *ev;
    atomic_store_explicit(&buf->head, head + 1, memory_order_release);
    return stored;
}

static void buffer_free(st_buffer *b)
{
    atomic_fetch_add_explicit(&orphan_dropped, atomic_load(&b->dropped), memory_order_relaxed);
    atomic_fetch_add_explicit(&orphan_args_dropped, atomic_load(&b->args_dropped),
                              memory_order_relaxed);
    free(b->arena);
    free(b->ring);
    free(b);
}

st_events_status st_events_drain(st_events_batch *out)
{
    memset(out, 0, sizeof *out);
    /* lock order: registry_lock only */
    pthread_mutex_lock(&registry_lock);
    /* 1. what to take: each ring up to its head now (producers may go on appending) */
    size_t total = 0;
    for (st_buffer *b = registry; b; b = b->next) {
        b->drain_head = atomic_load_explicit(&b->head, memory_order_acquire);
        total += b->drain_head - atomic_load_explicit(&b->tail, memory_order_relaxed);
    }
    /* 2. copy the events; nothing is consumed until everything is allocated */
    st_event *events = total ? malloc(total * sizeof *events) : NULL;
    char *args = NULL;
    size_t filled = 0, args_bytes = 0;
    if (total && !events) {
        goto error;
    }
    for (st_buffer *b = registry; b; b = b->next) {
        for (uint64_t pos = atomic_load_explicit(&b->tail, memory_order_relaxed);
             pos < b->drain_head; pos++) {
            events[filled] = b->ring[pos & b->mask];
            args_bytes += events[filled++].args_len;
        }
    }
    if (args_bytes && !(args = malloc(args_bytes))) {
        goto error;
    }
    /* 3. copy the args, consume, and free the buffers of exited threads once empty */
    size_t k = 0, args_at = 0;
    st_buffer **link = &registry;
    while (*link) {
        st_buffer *b = *link;
        uint64_t arena_pos = atomic_load_explicit(&b->arena_tail, memory_order_relaxed);
        uint64_t taken = b->drain_head - atomic_load_explicit(&b->tail, memory_order_relaxed);
        for (uint64_t j = 0; j < taken; j++) {
            st_event *e = &events[k++];
            if (!e->args_len) {
                continue;
            }
            uint64_t p = arena_pos + (uint32_t)(e->args_off - (uint32_t)arena_pos);
            memcpy(args + args_at, b->arena + (p & b->arena_mask), e->args_len);
            e->args_off = (uint32_t)args_at;
            args_at += e->args_len;
            arena_pos = p + e->args_len;
        }
        atomic_store_explicit(&b->arena_tail, arena_pos, memory_order_release);
        atomic_store_explicit(&b->tail, b->drain_head, memory_order_release);
        int alive = atomic_load_explicit(&b->thread_alive, memory_order_acquire);
        if (!alive && b->drain_head == atomic_load_explicit(&b->head, memory_order_acquire)) {
            *link = b->next;
            registry_size--;
            buffer_free(b);
            continue;
        }
        link = &b->next;
    }
    pthread_mutex_unlock(&registry_lock);
    out->events = events;
    out->n = filled;
    out->args = args;
    out->args_bytes = args_bytes;
    return ST_EVENTS_OK;
error:
    pthread_mutex_unlock(&registry_lock);
    free(events);
    free(args);
    return ST_EVENTS_NO_MEMORY;
}

void st_events_batch_free(st_events_batch *batch)
{
    free(batch->events);
    free(batch->args);
    memset(batch, 0, sizeof *batch);
}

uint64_t st_events_dropped(void)
{
    pthread_mutex_lock(&registry_lock);
    uint64_t total = atomic_load(&orphan_dropped);
    for (st_buffer *b = registry; b; b = b->next) {
        total += atomic_load_explicit(&b->dropped, memory_order_relaxed);
    }
    pthread_mutex_unlock(&registry_lock);
    return total;
}

uint64_t st_events_args_dropped(void)
{
    pthread_mutex_lock(&registry_lock);
    uint64_t total = atomic_load(&orphan_args_dropped);
    for (st_buffer *b = registry; b; b = b->next) {
        total += atomic_load_explicit(&b->args_dropped, memory_order_relaxed);
    }
    pthread_mutex_unlock(&registry_lock);
    return total;
}

void st_events_fork_prepare(void)
{
    pthread_mutex_lock(&registry_lock);
}

void st_events_fork_parent(void)
{
    pthread_mutex_unlock(&registry_lock);
}

void st_events_fork_child(void)
{
    st_buffer *own = thread_buffer, **link = &registry;
    while (*link) {
        st_buffer *b = *link;
        if (b == own) {
            uint64_t head = atomic_load_explicit(&b->head, memory_order_relaxed);
            atomic_store_explicit(&b->tail, head, memory_order_relaxed);
            atomic_store_explicit(&b->arena_tail, b->arena_head, memory_order_relaxed);
            atomic_store_explicit(&b->dropped, 0, memory_order_relaxed);
            atomic_store_explicit(&b->args_dropped, 0, memory_order_relaxed);
            link = &b->next;
            continue;
        }
        *link = b->next; /* another thread's: gone in the child */
        registry_size--;
        free(b->arena);
        free(b->ring);
        free(b);
    }
    atomic_store(&orphan_dropped, 0);
    atomic_store(&orphan_args_dropped, 0);
    pthread_mutex_unlock(&registry_lock);
}

void st_events_stats(uint32_t *buffers, uint32_t *capacity)
{
    pthread_mutex_lock(&registry_lock);
    *buffers = registry_size;
    pthread_mutex_unlock(&registry_lock);
    *capacity = atomic_load(&new_capacity);
}
