/* st_events: one single-producer ring per thread. The owning thread is the
 * only writer of `head`; the drainer (under registry_lock) is the only writer
 * of `tail`. Positions grow without bound and are masked into the ring, so a
 * full ring is head - tail == capacity. */
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
    struct st_buffer *next; /* registry list; guarded by registry_lock */
} st_buffer;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static st_buffer *registry;
static uint32_t registry_size;
static _Atomic uint32_t new_capacity = ST_EVENTS_DEFAULT_CAPACITY;
/* Drops that happened before a thread had a buffer, or from freed buffers. */
static _Atomic uint64_t orphan_dropped;

/* initial-exec: a plain %fs-relative load on the hot path instead of a
 * __tls_get_addr call; two words fit glibc's surplus static TLS for dlopen. */
#define ST_FAST_TLS __attribute__((tls_model("initial-exec")))
static _Thread_local st_buffer *thread_buffer ST_FAST_TLS;
static _Thread_local int thread_buffer_failed ST_FAST_TLS;
static pthread_key_t exit_key;
static pthread_once_t exit_key_once = PTHREAD_ONCE_INIT;

static void on_thread_exit(void *arg)
{
    st_buffer *buf = arg;
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

int st_events_append(st_event *ev)
{
    st_buffer *buf = thread_buffer;
    if (__builtin_expect(buf == NULL, 0)) {
        if (thread_buffer_failed || !(buf = buffer_create())) {
            thread_buffer_failed = 1;
            atomic_fetch_add_explicit(&orphan_dropped, 1, memory_order_relaxed);
            return 0;
        }
        thread_buffer = buf;
    }
    uint64_t head = atomic_load_explicit(&buf->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&buf->tail, memory_order_acquire);
    if (head - tail > buf->mask) {
        atomic_fetch_add_explicit(&buf->dropped, 1, memory_order_relaxed);
        return 0;
    }
    ev->tid = buf->tid;
    buf->ring[head & buf->mask] = *ev;
    atomic_store_explicit(&buf->head, head + 1, memory_order_release);
    return 1;
}

st_events_status st_events_drain(st_event **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    /* lock order: registry_lock only */
    pthread_mutex_lock(&registry_lock);
    size_t total = 0;
    for (st_buffer *b = registry; b; b = b->next) {
        total += atomic_load_explicit(&b->head, memory_order_acquire) -
                 atomic_load_explicit(&b->tail, memory_order_relaxed);
    }
    st_event *events = NULL;
    if (total) {
        events = malloc(total * sizeof *events);
        if (!events) {
            pthread_mutex_unlock(&registry_lock);
            return ST_EVENTS_NO_MEMORY;
        }
    }
    size_t filled = 0;
    st_buffer **link = &registry;
    while (*link) {
        st_buffer *b = *link;
        uint64_t tail = atomic_load_explicit(&b->tail, memory_order_relaxed);
        uint64_t head = atomic_load_explicit(&b->head, memory_order_acquire);
        /* a producer may have appended since the count: take only what fits */
        if (head - tail > total - filled) {
            head = tail + (total - filled);
        }
        for (uint64_t pos = tail; pos < head; pos++) {
            events[filled++] = b->ring[pos & b->mask];
        }
        atomic_store_explicit(&b->tail, head, memory_order_release);
        int alive = atomic_load_explicit(&b->thread_alive, memory_order_acquire);
        if (!alive && head == atomic_load_explicit(&b->head, memory_order_acquire)) {
            *link = b->next;
            registry_size--;
            atomic_fetch_add_explicit(&orphan_dropped, atomic_load(&b->dropped),
                                      memory_order_relaxed);
            free(b->ring);
            free(b);
            continue;
        }
        link = &b->next;
    }
    pthread_mutex_unlock(&registry_lock);
    *out = events;
    *n = filled;
    return ST_EVENTS_OK;
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

void st_events_stats(uint32_t *buffers, uint32_t *capacity)
{
    pthread_mutex_lock(&registry_lock);
    *buffers = registry_size;
    pthread_mutex_unlock(&registry_lock);
    *capacity = atomic_load(&new_capacity);
}
