/* st_intern: append-only name table. Lookups by id are lock-free (chunks never
 * move). Interning a name the table has is lock-free too: the hash index is
 * read-mostly and published whole (RCU-like): a reader loads the live index
 * and probes it; a slot is stored (release) only after its entry is filled,
 * and a grown index replaces the live one with one pointer store. Replaced
 * indexes are retired, not freed (a reader may still be probing one); they
 * add up to less than the live index. Only a name not found takes the mutex
 * (the slow path: probe again, insert), which is never held while calling
 * out. */
#include "st_intern.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_BITS 10u
#define CHUNK_SIZE (1u << CHUNK_BITS)
#define CHUNK_COUNT (ST_INTERN_MAX / CHUNK_SIZE)

typedef struct entry {
    char *bytes; /* NUL-terminated copy */
    size_t len;
    uint64_t hash;
} entry;

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static entry *_Atomic chunks[CHUNK_COUNT];
static atomic_uint count; /* ids below count are published */

/* Open-addressing index from hash to id+1 (0 = empty). Written under
 * table_lock; read by anyone. */
typedef struct hash_index {
    size_t cap; /* a power of two */
    struct hash_index *retired; /* the index this one replaced */
    _Atomic uint32_t slots[];
} hash_index;

static hash_index *_Atomic live_index;

static uint64_t hash_bytes(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    }
    return h;
}

static entry *entry_at(uint32_t id)
{
    entry *chunk = atomic_load_explicit(&chunks[id >> CHUNK_BITS], memory_order_acquire);
    return chunk ? &chunk[id & (CHUNK_SIZE - 1)] : NULL;
}

/* Publish an index twice the size of the live one, the live one retired.
 * Caller holds table_lock. */
static int index_grow(void)
{
    hash_index *old = atomic_load_explicit(&live_index, memory_order_relaxed);
    size_t new_cap = old ? old->cap * 2 : 1024;
    hash_index *idx = calloc(1, sizeof *idx + new_cap * sizeof idx->slots[0]);
    if (!idx) {
        return -1;
    }
    idx->cap = new_cap;
    idx->retired = old;
    uint32_t n = atomic_load_explicit(&count, memory_order_relaxed);
    for (uint32_t id = 1; id < n; id++) {
        size_t i = entry_at(id)->hash & (new_cap - 1);
        while (atomic_load_explicit(&idx->slots[i], memory_order_relaxed)) {
            i = (i + 1) & (new_cap - 1);
        }
        atomic_store_explicit(&idx->slots[i], id + 1, memory_order_relaxed);
    }
    atomic_store_explicit(&live_index, idx, memory_order_release);
    return 0;
}

/* Probe idx for the len bytes at s (hash h): the id and 1, or 0 with the
 * first empty slot in *empty. Lock-free. */
static int index_find(const hash_index *idx, const char *s, size_t len, uint64_t h, uint32_t *id,
                      size_t *empty)
{
    size_t i = h & (idx->cap - 1);
    uint32_t v;
    while ((v = atomic_load_explicit(&((hash_index *)idx)->slots[i], memory_order_acquire)) != 0) {
        entry *e = entry_at(v - 1);
        if (e->hash == h && e->len == len && memcmp(e->bytes, s, len) == 0) {
            *id = v - 1;
            return 1;
        }
        i = (i + 1) & (idx->cap - 1);
    }
    *empty = i;
    return 0;
}

static st_intern_status intern_locked(const char *s, size_t len, uint64_t h, uint32_t *id)
{
    uint32_t n = atomic_load_explicit(&count, memory_order_relaxed);
    if (n == 0) { /* reserve id 0 for the empty name */
        entry *chunk = calloc(CHUNK_SIZE, sizeof *chunk);
        if (!chunk) {
            return ST_INTERN_NO_MEMORY;
        }
        chunk[0].bytes = "";
        atomic_store_explicit(&chunks[0], chunk, memory_order_release);
        atomic_store_explicit(&count, 1, memory_order_release);
        n = 1;
    }
    hash_index *idx = atomic_load_explicit(&live_index, memory_order_relaxed);
    if ((!idx || (size_t)n * 2 >= idx->cap) && index_grow() != 0) {
        return ST_INTERN_NO_MEMORY;
    }
    idx = atomic_load_explicit(&live_index, memory_order_relaxed);
    size_t i;
    if (index_find(idx, s, len, h, id, &i)) {
        return ST_INTERN_OK;
    }
    if (n >= ST_INTERN_MAX) {
        return ST_INTERN_FULL;
    }
    entry *chunk = atomic_load_explicit(&chunks[n >> CHUNK_BITS], memory_order_relaxed);
    if (!chunk) {
        chunk = calloc(CHUNK_SIZE, sizeof *chunk);
        if (!chunk) {
            return ST_INTERN_NO_MEMORY;
        }
        atomic_store_explicit(&chunks[n >> CHUNK_BITS], chunk, memory_order_release);
    }
    char *copy = malloc(len + 1);
    if (!copy) {
        return ST_INTERN_NO_MEMORY;
    }
    memcpy(copy, s, len);
    copy[len] = '\0';
    entry *e = &chunk[n & (CHUNK_SIZE - 1)];
    e->bytes = copy;
    e->len = len;
    e->hash = h;
    atomic_store_explicit(&count, n + 1, memory_order_release);
    atomic_store_explicit(&idx->slots[i], n + 1, memory_order_release); /* the entry is filled */
    *id = n;
    return ST_INTERN_OK;
}

st_intern_status st_intern(const char *s, size_t len, uint32_t *id)
{
    if (len == 0) {
        *id = ST_INTERN_NONE;
        return ST_INTERN_OK;
    }
    uint64_t h = hash_bytes(s, len);
    hash_index *idx = atomic_load_explicit(&live_index, memory_order_acquire);
    size_t empty;
    if (idx && index_find(idx, s, len, h, id, &empty)) {
        return ST_INTERN_OK; /* the hot path: a name seen before, no lock */
    }
    /* lock order: table_lock only */
    pthread_mutex_lock(&table_lock);
    st_intern_status status = intern_locked(s, len, h, id);
    pthread_mutex_unlock(&table_lock);
    return status;
}

void st_intern_fork_prepare(void)
{
    pthread_mutex_lock(&table_lock);
}

void st_intern_fork_parent(void)
{
    pthread_mutex_unlock(&table_lock);
}

void st_intern_fork_child(void)
{
    pthread_mutex_unlock(&table_lock);
}

const char *st_intern_lookup(uint32_t id, size_t *len)
{
    if (id == ST_INTERN_NONE) {
        *len = 0;
        return "";
    }
    if (id >= atomic_load_explicit(&count, memory_order_acquire)) {
        return NULL;
    }
    entry *e = entry_at(id);
    *len = e->len;
    return e->bytes;
}

uint32_t st_intern_count(void)
{
    uint32_t n = atomic_load_explicit(&count, memory_order_acquire);
    return n ? n : 1;
}
