/* st_gpu: windows and their GPU aggregates.
 *
 * The per-call side (window open and close, on every wrapped call) takes no
 * lock. Windows live in slots (id = slot + 1) in chunks that are allocated
 * once, published with a compare-and-swap and kept for the process, so a
 * slot's memory never goes away under a thread. `opens` packs the round (high
 * 32 bits) and the slots handed out in it (low 32); an open claims the next
 * slot with a compare-and-swap under the round's capacity, takes the slot
 * (its tag: the round that owns it; WRITING while a thread fills or closes
 * it), fills it and publishes it by storing the round in the tag (release).
 * A thread still in an older round (it read `opens` before a reset) cannot
 * take a slot a newer round owns, and a close changes only a slot its own
 * thread opened in the current round.
 *
 * The consumer side (records, reports, reset) holds g.lock: it indexes the
 * published windows by start time (a record goes to the last window starting
 * at or before it, or the nearest ancestor of that window that contains it;
 * records mostly arrive in time order, so the window found last is tried
 * first) and keeps the aggregates. Lock order: g.lock only (taken by
 * st_cupti's buffer_completed under its decode_lock). */
#include "st_gpu.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define OPEN_END UINT64_MAX
#define WRITING UINT32_MAX /* a slot's tag while a thread fills or closes it */
#define CHUNK_BITS 10u
#define CHUNK_SIZE (1u << CHUNK_BITS)
#define MAX_WINDOWS (1u << 22) /* the ceiling of a round's capacity */
#define CHUNK_COUNT (MAX_WINDOWS / CHUNK_SIZE)

typedef struct window {
    _Atomic uint32_t tag;    /* round owning the slot; 0 never used; WRITING */
    _Atomic uint32_t owner;  /* the opening thread's serial */
    _Atomic uint32_t parent; /* read by the owner's close, racing nothing it must see */
    uint32_t name_id;
    uint64_t t0;
    _Atomic uint64_t t1; /* OPEN_END while open */
    uint8_t stage;
} window;

typedef struct aggregate {
    uint64_t n;           /* records folded in */
    st_gpu_totals t;      /* busy_ns holds the committed part; top filled at report */
    uint64_t iv_start[ST_GPU_INTERVALS], iv_end[ST_GPU_INTERVALS]; /* disjoint, by start */
    unsigned n_iv;
    uint32_t slot_name[ST_GPU_KERNEL_SLOTS]; /* 0 = empty */
    uint64_t slot_count[ST_GPU_KERNEL_SLOTS], slot_ns[ST_GPU_KERNEL_SLOTS];
} aggregate;

/* The per-call side's shared state: atomics only. */
static window *_Atomic chunks[CHUNK_COUNT];
static _Atomic uint64_t opens = (uint64_t)1 << 32; /* round 1, no window yet */
static _Atomic uint32_t round_limit = 8192;        /* this round's capacity */
static _Atomic uint32_t next_limit = 8192;         /* the next round's */
static _Atomic uint64_t dropped_windows;           /* this round's refused opens */
static _Atomic uint32_t next_serial = 1;

/* The consumer side, under g.lock. */
static struct {
    pthread_mutex_t lock;
    uint32_t round;      /* the round the tables below are for */
    aggregate **aggs;    /* [id], [0] = outside every window; NULL until GPU work */
    size_t aggs_cap;     /* entries in aggs */
    uint32_t *by_start;  /* ids of indexed windows sorted by t0 */
    size_t n;            /* windows indexed: ids 1..n, all published */
    size_t by_start_cap;
    size_t last_pos;     /* position in by_start of the window found last */
    st_gpu_counters counters; /* records, dropped_records, unattributed */
    st_gpu_record *detail; /* every record, when asked for; this round's capacity */
    size_t detail_n, detail_read, detail_cap, next_detail_cap;
    uint64_t detail_dropped;
} g = {.lock = PTHREAD_MUTEX_INITIALIZER, .round = 1};

/* A window's id: the low 8 bits of its round, then its slot + 1 (never 0),
 * so an id from before a reset names no window of the new round (until the
 * round number comes round again, 256 resets later). */
#define ID_SLOT_BITS 24
#define ID_SLOT_MASK ((1u << ID_SLOT_BITS) - 1)
_Static_assert(MAX_WINDOWS < ID_SLOT_MASK, "a slot + 1 fits in an id");

static inline uint32_t id_of(uint32_t round, uint32_t slot)
{
    return (round & 0xFFu) << ID_SLOT_BITS | (slot + 1);
}

/* The consumer's index of an id (slot + 1; 0 stays 0). */
static inline uint32_t index_of(uint32_t id)
{
    return id & ID_SLOT_MASK;
}

/* The window the calling thread has open in a round (an id), and its serial. */
static __thread struct {
    uint32_t round, id, serial;
} current;

void st_gpu_set_window_capacity(size_t capacity)
{
    capacity = capacity ? capacity : 1;
    atomic_store(&next_limit, capacity > MAX_WINDOWS ? MAX_WINDOWS : (uint32_t)capacity);
}

// --- Windows ------------------------------------------------------------------

/* The slot of index i; its chunk is made on first use when create. NULL:
 * out of memory, or (not create) never made. Lock-free. */
static inline window *window_slot(uint32_t i, int create)
{
    window *_Atomic *at = &chunks[i >> CHUNK_BITS];
    window *chunk = atomic_load_explicit(at, memory_order_acquire);
    if (!chunk && create) {
        window *fresh = calloc(CHUNK_SIZE, sizeof *fresh);
        if (!fresh) {
            return NULL;
        }
        if (atomic_compare_exchange_strong_explicit(at, &chunk, fresh, memory_order_acq_rel,
                                                    memory_order_acquire)) {
            chunk = fresh;
        } else {
            free(fresh); /* another thread made it first: chunk is theirs */
        }
    }
    return chunk ? &chunk[i & (CHUNK_SIZE - 1)] : NULL;
}

uint32_t st_gpu_window_open(uint8_t stage, uint32_t name_id, uint64_t t0)
{
    uint64_t s = atomic_load_explicit(&opens, memory_order_acquire);
    do {
        if ((uint32_t)s >= atomic_load_explicit(&round_limit, memory_order_relaxed)) {
            goto dropped;
        }
    } while (!atomic_compare_exchange_weak_explicit(&opens, &s, s + 1, memory_order_acq_rel,
                                                    memory_order_acquire));
    uint32_t round = (uint32_t)(s >> 32), slot = (uint32_t)s;
    window *w = window_slot(slot, 1);
    if (!w) {
        goto dropped;
    }
    uint32_t tag = atomic_load_explicit(&w->tag, memory_order_acquire);
    for (;;) { /* take the slot from the round that had it */
        if (tag == WRITING) { /* a thread of an older round finishing with it: rare, brief */
            sched_yield();
            tag = atomic_load_explicit(&w->tag, memory_order_acquire);
            continue;
        }
        if (tag >= round) { /* a newer round owns it: this thread's round is over */
            goto dropped;
        }
        if (atomic_compare_exchange_weak_explicit(&w->tag, &tag, WRITING, memory_order_acquire,
                                                  memory_order_acquire)) {
            break;
        }
    }
    while (current.serial == 0) {
        current.serial = atomic_fetch_add_explicit(&next_serial, 1, memory_order_relaxed);
    }
    w->t0 = t0;
    w->stage = stage;
    w->name_id = name_id;
    atomic_store_explicit(&w->owner, current.serial, memory_order_relaxed);
    atomic_store_explicit(&w->parent, current.round == round ? current.id : 0, memory_order_relaxed);
    atomic_store_explicit(&w->t1, OPEN_END, memory_order_relaxed);
    atomic_store_explicit(&w->tag, round, memory_order_release);
    current.round = round;
    current.id = id_of(round, slot);
    return current.id;
dropped:
    atomic_fetch_add_explicit(&dropped_windows, 1, memory_order_relaxed);
    return 0;
}

void st_gpu_window_close(uint32_t id, uint64_t t1)
{
    uint32_t round = (uint32_t)(atomic_load_explicit(&opens, memory_order_acquire) >> 32);
    if (!id || index_of(id) == 0 || current.round != round || id >> ID_SLOT_BITS != (round & 0xFFu)) {
        return; /* none, or opened before the round was reset: ignored */
    }
    window *w = window_slot(index_of(id) - 1, 0);
    uint32_t tag = round;
    if (!w || !atomic_compare_exchange_strong_explicit(&w->tag, &tag, WRITING, memory_order_acquire,
                                                       memory_order_relaxed)) {
        return;
    }
    if (atomic_load_explicit(&w->owner, memory_order_relaxed) == current.serial) {
        atomic_store_explicit(&w->t1, t1 < w->t0 ? w->t0 : t1, memory_order_relaxed);
        if (current.id == id) {
            current.id = atomic_load_explicit(&w->parent, memory_order_relaxed);
        }
    }
    atomic_store_explicit(&w->tag, round, memory_order_release);
}

/* Start the consumer's tables over when the round moved on. g.lock held. */
static void tables_reset(void)
{
    for (size_t id = 0; g.aggs && id < g.aggs_cap; id++) {
        free(g.aggs[id]);
    }
    free(g.aggs);
    free(g.by_start);
    g.aggs = NULL;
    g.by_start = NULL;
    g.aggs_cap = g.by_start_cap = g.n = g.last_pos = 0;
}

/* Index the windows published since the last call, in slot order, stopping
 * at the first still being filled (the next call takes it). g.lock held.
 * Returns -1 when out of memory (the windows stay unindexed). */
static int index_windows(void)
{
    uint64_t s = atomic_load_explicit(&opens, memory_order_acquire);
    uint32_t round = (uint32_t)(s >> 32);
    if (round != g.round) {
        return 0; /* reset is under g.lock too: cannot happen */
    }
    size_t handed = (uint32_t)s;
    if (handed + 1 > g.aggs_cap) {
        size_t cap = g.aggs_cap ? g.aggs_cap : 256;
        while (cap < handed + 1) {
            cap *= 2;
        }
        aggregate **aggs = realloc(g.aggs, cap * sizeof *aggs);
        if (!aggs) {
            return -1;
        }
        memset(aggs + g.aggs_cap, 0, (cap - g.aggs_cap) * sizeof *aggs);
        g.aggs = aggs;
        g.aggs_cap = cap;
    }
    if (handed > g.by_start_cap) {
        size_t cap = g.by_start_cap ? g.by_start_cap : 256;
        while (cap < handed) {
            cap *= 2;
        }
        uint32_t *order = realloc(g.by_start, cap * sizeof *order);
        if (!order) {
            return -1;
        }
        g.by_start = order;
        g.by_start_cap = cap;
    }
    while (g.n < handed) {
        window *w = window_slot((uint32_t)g.n, 0);
        if (!w) { /* its opener ran out of memory: an empty slot */
            break;
        }
        uint32_t tag = atomic_load_explicit(&w->tag, memory_order_acquire);
        while (tag == WRITING) { /* an open finishing, or a close: brief */
            sched_yield();
            tag = atomic_load_explicit(&w->tag, memory_order_acquire);
        }
        if (tag != round) {
            break; /* claimed, not yet filled */
        }
        /* keep by_start sorted; opens come in time order but for other threads */
        uint64_t t0 = w->t0;
        size_t pos = g.n;
        while (pos > 0 && window_slot(g.by_start[pos - 1] - 1, 0)->t0 > t0) {
            g.by_start[pos] = g.by_start[pos - 1];
            pos--;
        }
        g.by_start[pos] = (uint32_t)(g.n + 1);
        g.n++;
    }
    return 0;
}

/* The window of an indexed id (valid under g.lock). */
static window *indexed(uint32_t id)
{
    return window_slot(id - 1, 0);
}

static uint64_t end_of(const window *w)
{
    return atomic_load_explicit(&((window *)w)->t1, memory_order_relaxed);
}

static int contains(const window *w, const st_gpu_record *r)
{
    return w->t0 <= r->start && r->end <= end_of(w);
}

/* The innermost window containing r, or 0. */
static uint32_t find_window(const st_gpu_record *r)
{
    if (g.n == 0) {
        return 0;
    }
    size_t pos = g.last_pos < g.n ? g.last_pos : g.n - 1;
    const window *w = indexed(g.by_start[pos]);
    int next_later = pos + 1 == g.n || indexed(g.by_start[pos + 1])->t0 > r->start;
    if (!(w->t0 <= r->start && next_later)) { /* not the last window starting before r */
        size_t lo = 0, hi = g.n;                /* first position starting after r */
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (indexed(g.by_start[mid])->t0 <= r->start) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if (lo == 0) {
            return 0;
        }
        pos = lo - 1;
    }
    g.last_pos = pos;
    for (uint32_t id = g.by_start[pos]; id;
         id = index_of(atomic_load_explicit(&indexed(id)->parent, memory_order_relaxed))) {
        if (contains(indexed(id), r)) {
            return id;
        }
    }
    return 0;
}

// --- Aggregates ---------------------------------------------------------------

/* Add [s, e) to the disjoint interval set; when it outgrows its room, the
 * earliest interval is committed to busy_ns (records that old no longer
 * arrive: CUPTI delivers each stream's records in order). */
static void add_busy(aggregate *a, uint64_t s, uint64_t e)
{
    if (e <= s) {
        return;
    }
    unsigned n = a->n_iv;
    if (n && s >= a->iv_start[n - 1]) { /* in order: merge with or append after the last */
        if (s <= a->iv_end[n - 1]) {
            if (e > a->iv_end[n - 1]) {
                a->iv_end[n - 1] = e;
            }
            return;
        }
    } else if (n) { /* out of order: merge every interval it touches */
        unsigned i = 0;
        while (i < n && a->iv_end[i] < s) {
            i++;
        }
        unsigned j = i;
        while (j < n && a->iv_start[j] <= e) {
            if (a->iv_start[j] < s) {
                s = a->iv_start[j];
            }
            if (a->iv_end[j] > e) {
                e = a->iv_end[j];
            }
            j++;
        }
        /* intervals i..j-1 become [s, e) */
        if (j > i) {
            a->iv_start[i] = s;
            a->iv_end[i] = e;
            memmove(&a->iv_start[i + 1], &a->iv_start[j], (n - j) * sizeof a->iv_start[0]);
            memmove(&a->iv_end[i + 1], &a->iv_end[j], (n - j) * sizeof a->iv_end[0]);
            a->n_iv = n - (j - i) + 1;
            return;
        }
        if (n == ST_GPU_INTERVALS) { /* make room: commit the earliest */
            a->t.busy_ns += a->iv_end[0] - a->iv_start[0];
            memmove(&a->iv_start[0], &a->iv_start[1], (n - 1) * sizeof a->iv_start[0]);
            memmove(&a->iv_end[0], &a->iv_end[1], (n - 1) * sizeof a->iv_end[0]);
            n--;
            i = i ? i - 1 : 0;
        }
        memmove(&a->iv_start[i + 1], &a->iv_start[i], (n - i) * sizeof a->iv_start[0]);
        memmove(&a->iv_end[i + 1], &a->iv_end[i], (n - i) * sizeof a->iv_end[0]);
        a->iv_start[i] = s;
        a->iv_end[i] = e;
        a->n_iv = n + 1;
        return;
    }
    if (n == ST_GPU_INTERVALS) {
        a->t.busy_ns += a->iv_end[0] - a->iv_start[0];
        memmove(&a->iv_start[0], &a->iv_start[1], (n - 1) * sizeof a->iv_start[0]);
        memmove(&a->iv_end[0], &a->iv_end[1], (n - 1) * sizeof a->iv_end[0]);
        n--;
    }
    a->iv_start[n] = s;
    a->iv_end[n] = e;
    a->n_iv = n + 1;
}

static void add_kernel_name(aggregate *a, uint32_t name_id, uint64_t ns)
{
    unsigned h = (name_id * 2654435761u) >> 26; /* 6 bits: ST_GPU_KERNEL_SLOTS */
    for (unsigned probe = 0; probe < ST_GPU_KERNEL_SLOTS; probe++) {
        unsigned i = (h + probe) & (ST_GPU_KERNEL_SLOTS - 1);
        if (a->slot_name[i] == name_id || a->slot_name[i] == 0) {
            a->slot_name[i] = name_id;
            a->slot_count[i]++;
            a->slot_ns[i] += ns;
            return;
        }
    }
    a->t.other_kernel_ns += ns;
}

static void fold(aggregate *a, const st_gpu_record *r)
{
    uint64_t ns = r->end > r->start ? r->end - r->start : 0;
    st_gpu_totals *t = &a->t;
    if (a->n++ == 0 || r->start < t->first_ns) {
        t->first_ns = r->start;
    }
    if (r->end > t->last_ns) {
        t->last_ns = r->end;
    }
    switch (r->kind) {
    case ST_GPU_KERNEL:
        t->kernels++;
        t->kernel_ns += ns;
        add_busy(a, r->start, r->end);
        add_kernel_name(a, r->name_id ? r->name_id : UINT32_MAX, ns);
        break;
    case ST_GPU_MEMCPY: {
        unsigned d = r->copy < ST_GPU_COPY_COUNT ? r->copy : ST_GPU_COPY_OTHER;
        t->copies[d]++;
        t->copy_bytes[d] += r->bytes;
        t->copy_ns[d] += ns;
        break;
    }
    default:
        t->memsets++;
        t->memset_bytes += r->bytes;
        t->memset_ns += ns;
        break;
    }
}

size_t st_gpu_consume(const st_gpu_record *records, size_t n)
{
    size_t folded = 0;
    pthread_mutex_lock(&g.lock);
    if (index_windows() != 0 && !g.aggs) { /* not even room for window 0 */
        g.counters.dropped_records += n;
        pthread_mutex_unlock(&g.lock);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t id = find_window(&records[i]);
        aggregate *a = g.aggs[id];
        if (!a && !(a = g.aggs[id] = calloc(1, sizeof *a))) {
            g.counters.dropped_records++;
            continue;
        }
        fold(a, &records[i]);
        g.counters.unattributed += id == 0;
        folded++;
        if (g.detail_cap) {
            if (!g.detail && !(g.detail = malloc(g.detail_cap * sizeof *g.detail))) {
                g.detail_cap = 0;
            } else if (g.detail_n < g.detail_cap) {
                g.detail[g.detail_n++] = records[i];
            } else {
                g.detail_dropped++;
            }
        }
    }
    g.counters.records += folded;
    pthread_mutex_unlock(&g.lock);
    return folded;
}

void st_gpu_add_dropped(uint64_t records)
{
    pthread_mutex_lock(&g.lock);
    g.counters.dropped_records += records;
    pthread_mutex_unlock(&g.lock);
}

void st_gpu_counters_get(st_gpu_counters *out)
{
    pthread_mutex_lock(&g.lock);
    *out = g.counters;
    pthread_mutex_unlock(&g.lock);
    uint64_t s = atomic_load(&opens);
    uint32_t limit = atomic_load(&round_limit);
    out->windows = (uint32_t)s < limit ? (uint32_t)s : limit;
    out->dropped_windows = atomic_load(&dropped_windows);
}

// --- Reports ------------------------------------------------------------------

static void finish_totals(const aggregate *a, st_gpu_totals *t)
{
    *t = a->t;
    for (unsigned i = 0; i < a->n_iv; i++) {
        t->busy_ns += a->iv_end[i] - a->iv_start[i];
    }
    /* top kernels: a partial selection sort over the slots */
    unsigned taken[ST_GPU_KERNEL_SLOTS] = {0};
    t->n_top = 0;
    for (unsigned k = 0; k < ST_GPU_TOP_KERNELS; k++) {
        int best = -1;
        for (unsigned i = 0; i < ST_GPU_KERNEL_SLOTS; i++) {
            if (a->slot_name[i] && !taken[i] && (best < 0 || a->slot_ns[i] > a->slot_ns[best])) {
                best = (int)i;
            }
        }
        if (best < 0) {
            break;
        }
        taken[best] = 1;
        t->top[k].name_id = a->slot_name[best] == UINT32_MAX ? 0 : a->slot_name[best];
        t->top[k].count = a->slot_count[best];
        t->top[k].ns = a->slot_ns[best];
        t->n_top++;
    }
}

size_t st_gpu_report(st_gpu_window_report *out, size_t max)
{
    size_t count = 0;
    pthread_mutex_lock(&g.lock);
    index_windows();
    for (size_t id = 0; g.aggs && id <= g.n; id++) {
        const aggregate *a = g.aggs[id];
        if (!a) {
            continue;
        }
        if (count < max) {
            st_gpu_window_report *rep = &out[count];
            memset(rep, 0, sizeof *rep);
            rep->id = id ? id_of(g.round, (uint32_t)id - 1) : 0;
            if (id) {
                window *w = indexed((uint32_t)id);
                rep->parent = atomic_load_explicit(&w->parent, memory_order_relaxed);
                rep->stage = w->stage;
                rep->name_id = w->name_id;
                rep->t0 = w->t0;
                rep->t1 = end_of(w) == OPEN_END ? 0 : end_of(w);
            }
            finish_totals(a, &rep->totals);
        }
        count++;
    }
    pthread_mutex_unlock(&g.lock);
    return count;
}

void st_gpu_set_detail_capacity(size_t capacity)
{
    pthread_mutex_lock(&g.lock);
    g.next_detail_cap = capacity;
    pthread_mutex_unlock(&g.lock);
}

size_t st_gpu_drain_detail(st_gpu_record *out, size_t max)
{
    pthread_mutex_lock(&g.lock);
    size_t n = g.detail_n - g.detail_read < max ? g.detail_n - g.detail_read : max;
    if (n) {
        memcpy(out, g.detail + g.detail_read, n * sizeof *out);
        g.detail_read += n;
    }
    pthread_mutex_unlock(&g.lock);
    return n;
}

uint64_t st_gpu_detail_dropped(void)
{
    pthread_mutex_lock(&g.lock);
    uint64_t n = g.detail_dropped;
    pthread_mutex_unlock(&g.lock);
    return n;
}

void st_gpu_reset(void)
{
    pthread_mutex_lock(&g.lock);
    free(g.detail);
    g.detail = NULL;
    g.detail_n = g.detail_read = 0;
    g.detail_cap = g.next_detail_cap;
    g.detail_dropped = 0;
    tables_reset();
    memset(&g.counters, 0, sizeof g.counters);
    g.round++;
    /* the capacity first, then the round (release): an open that sees the
     * new round sees its capacity */
    atomic_store_explicit(&round_limit, atomic_load(&next_limit), memory_order_relaxed);
    atomic_store_explicit(&dropped_windows, 0, memory_order_relaxed);
    atomic_store_explicit(&opens, (uint64_t)g.round << 32, memory_order_release);
    pthread_mutex_unlock(&g.lock);
}

void st_gpu_fork_prepare(void)
{
    pthread_mutex_lock(&g.lock);
}

void st_gpu_fork_parent(void)
{
    pthread_mutex_unlock(&g.lock);
}

void st_gpu_fork_child(void)
{
    /* the tables were consistent when fork took the lock; windows other
     * threads held open stay open (their threads are gone): the next reset
     * forgets them */
    pthread_mutex_unlock(&g.lock);
}
