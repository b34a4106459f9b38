/* st_intern: append-only name table. Lookups by id are lock-free (chunks never
 * move); interning takes one mutex, which is never held while calling out. */
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

/* Open-addressing index from hash to id+1 (0 = empty); guarded by table_lock. */
static uint32_t *index_slots;
static size_t index_cap;

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

/* Rebuild the index at twice the size. Caller holds table_lock. */
static int index_grow(void)
{
    size_t new_cap = index_cap ? index_cap * 2 : 1024;
    uint32_t *slots = calloc(new_cap, sizeof *slots);
    if (!slots) {
        return -1;
    }
    uint32_t n = atomic_load_explicit(&count, memory_order_relaxed);
    for (uint32_t id = 1; id < n; id++) {
        size_t i = entry_at(id)->hash & (new_cap - 1);
        while (slots[i]) {
            i = (i + 1) & (new_cap - 1);
        }
        slots[i] = id + 1;
    }
    free(index_slots);
    index_slots = slots;
    index_cap = new_cap;
    return 0;
}

static st_intern_status intern_locked(const char *s, size_t len, uint32_t *id)
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
    if (len == 0) {
        *id = ST_INTERN_NONE;
        return ST_INTERN_OK;
    }
    if ((size_t)n * 2 >= index_cap && index_grow() != 0) {
        return ST_INTERN_NO_MEMORY;
    }
    uint64_t h = hash_bytes(s, len);
    size_t i = h & (index_cap - 1);
    while (index_slots[i]) {
        entry *e = entry_at(index_slots[i] - 1);
        if (e->hash == h && e->len == len && memcmp(e->bytes, s, len) == 0) {
            *id = index_slots[i] - 1;
            return ST_INTERN_OK;
        }
        i = (i + 1) & (index_cap - 1);
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
    index_slots[i] = n + 1;
    atomic_store_explicit(&count, n + 1, memory_order_release);
    *id = n;
    return ST_INTERN_OK;
}

st_intern_status st_intern(const char *s, size_t len, uint32_t *id)
{
    pthread_mutex_lock(&table_lock);
    st_intern_status status = intern_locked(s, len, id);
    pthread_mutex_unlock(&table_lock);
    return status;
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
