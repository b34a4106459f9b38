/* st_gpu: windows and their GPU aggregates. Windows live in open order (id =
 * index + 1) with a second array of ids sorted by start time; a record goes
 * to the last window starting at or before it, or the nearest ancestor of
 * that window that contains it. Records mostly arrive in time order, so the
 * window found last is tried first. */
#include "st_gpu.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define OPEN_END UINT64_MAX

typedef struct window {
    uint64_t t0, t1;
    uint32_t parent;
    uint32_t name_id;
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

static struct {
    pthread_mutex_t lock;
    window *windows;     /* [id - 1] */
    aggregate **aggs;    /* [id], [0] = outside every window; NULL until GPU work */
    uint32_t *by_start;  /* ids sorted by t0 */
    size_t n, cap, limit;
    size_t next_limit;
    size_t last_pos;     /* position in by_start of the window found last */
    uint32_t round;      /* bumped by reset, so stale thread state is ignored */
    st_gpu_counters counters;
    st_gpu_record *detail; /* every record, when asked for; this round's capacity */
    size_t detail_n, detail_read, detail_cap, next_detail_cap;
    uint64_t detail_dropped;
} g = {.lock = PTHREAD_MUTEX_INITIALIZER, .next_limit = 8192, .round = 1};

/* The window the calling thread has open, valid for one round. */
static __thread struct {
    uint32_t round, id;
} current;

void st_gpu_set_window_capacity(size_t capacity)
{
    pthread_mutex_lock(&g.lock);
    g.next_limit = capacity ? capacity : 1;
    pthread_mutex_unlock(&g.lock);
}

// --- Windows ------------------------------------------------------------------

/* Room for one more window (and window 0's aggregate slot), within the
 * round's limit. The lock is held. */
static int reserve_windows(void)
{
    if (!g.windows && !g.aggs) { /* a new round takes the capacity set for it */
        g.limit = g.next_limit;
    }
    if (g.aggs && g.n < g.cap) {
        return 0;
    }
    size_t cap = g.cap ? g.cap * 2 : 256;
    if (cap > g.limit) {
        cap = g.limit;
    }
    if (cap <= g.cap && g.aggs) {
        return -1;
    }
    window *w = realloc(g.windows, cap * sizeof *w);
    if (w) {
        g.windows = w;
    }
    uint32_t *order = w ? realloc(g.by_start, cap * sizeof *order) : NULL;
    if (order) {
        g.by_start = order;
    }
    aggregate **aggs = order ? realloc(g.aggs, (cap + 1) * sizeof *aggs) : NULL;
    if (!aggs) {
        return -1;
    }
    memset(aggs + g.cap + (g.cap ? 1 : 0), 0, (cap + 1 - g.cap - (g.cap ? 1 : 0)) * sizeof *aggs);
    g.aggs = aggs;
    g.cap = cap;
    return 0;
}

uint32_t st_gpu_window_open(uint8_t stage, uint32_t name_id, uint64_t t0)
{
    uint32_t id = 0;
    pthread_mutex_lock(&g.lock);
    if (reserve_windows() != 0 || g.n >= g.limit) {
        g.counters.dropped_windows++;
        goto done;
    }
    id = (uint32_t)(g.n + 1);
    window *w = &g.windows[g.n];
    w->t0 = t0;
    w->t1 = OPEN_END;
    w->stage = stage;
    w->name_id = name_id;
    w->parent = current.round == g.round ? current.id : 0;
    /* keep by_start sorted; opens come in time order but for other threads */
    size_t pos = g.n;
    while (pos > 0 && g.windows[g.by_start[pos - 1] - 1].t0 > t0) {
        g.by_start[pos] = g.by_start[pos - 1];
        pos--;
    }
    g.by_start[pos] = id;
    g.n++;
    g.counters.windows++;
    current.round = g.round;
    current.id = id;
done:
    pthread_mutex_unlock(&g.lock);
    return id;
}

void st_gpu_window_close(uint32_t id, uint64_t t1)
{
    pthread_mutex_lock(&g.lock);
    if (id && current.round == g.round && id <= g.n) {
        window *w = &g.windows[id - 1];
        w->t1 = t1 < w->t0 ? w->t0 : t1;
        if (current.id == id) {
            current.id = w->parent;
        }
    }
    pthread_mutex_unlock(&g.lock);
}

static int contains(const window *w, const st_gpu_record *r)
{
    return w->t0 <= r->start && r->end <= w->t1;
}

/* The innermost window containing r, or 0. */
static uint32_t find_window(const st_gpu_record *r)
{
    if (g.n == 0) {
        return 0;
    }
    size_t pos = g.last_pos < g.n ? g.last_pos : g.n - 1;
    const window *w = &g.windows[g.by_start[pos] - 1];
    int next_later = pos + 1 == g.n || g.windows[g.by_start[pos + 1] - 1].t0 > r->start;
    if (!(w->t0 <= r->start && next_later)) { /* not the last window starting before r */
        size_t lo = 0, hi = g.n;                /* first position starting after r */
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (g.windows[g.by_start[mid] - 1].t0 <= r->start) {
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
    for (uint32_t id = g.by_start[pos]; id; id = g.windows[id - 1].parent) {
        if (contains(&g.windows[id - 1], r)) {
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
    if (!g.aggs && reserve_windows() != 0) { /* no window yet: room for window 0 */
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
    for (size_t id = 0; g.aggs && id <= g.n; id++) {
        const aggregate *a = g.aggs[id];
        if (!a) {
            continue;
        }
        if (count < max) {
            st_gpu_window_report *rep = &out[count];
            memset(rep, 0, sizeof *rep);
            rep->id = (uint32_t)id;
            if (id) {
                const window *w = &g.windows[id - 1];
                rep->parent = w->parent;
                rep->stage = w->stage;
                rep->name_id = w->name_id;
                rep->t0 = w->t0;
                rep->t1 = w->t1 == OPEN_END ? 0 : w->t1;
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
    for (size_t id = 0; g.aggs && id <= g.n; id++) {
        free(g.aggs[id]);
    }
    free(g.aggs);
    free(g.windows);
    free(g.by_start);
    g.aggs = NULL;
    g.windows = NULL;
    g.by_start = NULL;
    g.n = g.cap = g.last_pos = 0;
    g.limit = g.next_limit;
    g.round++;
    memset(&g.counters, 0, sizeof g.counters);
    pthread_mutex_unlock(&g.lock);
}
