/* st_gpu: GPU activity (kernels, copies, memsets) attributed to stage
 * windows. A window is a CPU span (prompt, node, stage, denoising step) on
 * the trace clock; each GPU record goes to the innermost window whose time
 * range contains the whole record, and is folded into that window's
 * aggregates: busy time (the union of kernel intervals), kernel count and
 * time, the kernels that took longest, bytes and time per copy direction,
 * memsets. Memory is bounded whatever the run length: windows have a cap per
 * collection round, aggregates exist only for windows that saw GPU work,
 * and every cap has a drop counter.
 *
 * Independent of CUPTI: st_cupti feeds records in; tests and the benchmark
 * can feed them directly. Thread-safe: opening and closing a window (the
 * per-call path) is lock-free; one mutex is taken once per batch of records
 * (never per record), per report and per reset. */
#ifndef ST_GPU_H
#define ST_GPU_H

#include <stddef.h>
#include <stdint.h>

typedef enum st_gpu_kind { ST_GPU_KERNEL = 0, ST_GPU_MEMCPY, ST_GPU_MEMSET, ST_GPU_KIND_COUNT } st_gpu_kind;

/* Copy directions, in the order the trace reports them. */
typedef enum st_gpu_copy {
    ST_GPU_HTOD = 0,
    ST_GPU_DTOH,
    ST_GPU_DTOD,
    ST_GPU_HTOH,
    ST_GPU_PTOP,
    ST_GPU_COPY_OTHER, /* array copies and unknown kinds */
    ST_GPU_COPY_COUNT
} st_gpu_copy;

/* One GPU activity, already on the trace clock. */
typedef struct st_gpu_record {
    uint64_t start, end; /* ns */
    uint64_t bytes;      /* copies and memsets */
    uint32_t name_id;    /* interned kernel name, 0 for none */
    uint32_t device;
    uint32_t stream;
    uint8_t kind;        /* st_gpu_kind */
    uint8_t copy;        /* st_gpu_copy, for memcpy */
} st_gpu_record;

#define ST_GPU_TOP_KERNELS 8   /* kernels reported per window */
#define ST_GPU_INTERVALS 32    /* disjoint busy intervals kept open per window */
#define ST_GPU_KERNEL_SLOTS 64 /* distinct kernel names tracked per window */

typedef struct st_gpu_kernel_total {
    uint32_t name_id;
    uint64_t count, ns;
} st_gpu_kernel_total;

/* What one window's GPU work adds up to. */
typedef struct st_gpu_totals {
    uint64_t kernels, kernel_ns, busy_ns;
    uint64_t first_ns, last_ns; /* earliest start, latest end of any record */
    uint64_t copies[ST_GPU_COPY_COUNT], copy_bytes[ST_GPU_COPY_COUNT], copy_ns[ST_GPU_COPY_COUNT];
    uint64_t memsets, memset_bytes, memset_ns;
    st_gpu_kernel_total top[ST_GPU_TOP_KERNELS]; /* longest total time first */
    unsigned n_top;
    uint64_t other_kernel_ns; /* kernels beyond ST_GPU_KERNEL_SLOTS names */
} st_gpu_totals;

/* One window as reported: id 0 is "outside every window". */
typedef struct st_gpu_window_report {
    uint32_t id, parent;
    uint8_t stage;
    uint32_t name_id;
    uint64_t t0, t1; /* t1 = 0 while open */
    st_gpu_totals totals;
} st_gpu_window_report;

/* Window table capacity for the next collection round (the current round
 * keeps its capacity), at most 4 Mi windows. Default 8192. Can't fail. */
void st_gpu_set_window_capacity(size_t capacity);

/* Open a window at t0 on the calling thread; its parent is the window the
 * thread has open. Returns its id (> 0: the round's low 8 bits, then the
 * window's slot + 1 in 24 bits, so an id from before st_gpu_reset names no
 * window of the new round), or 0 when the table is full (counted
 * in dropped windows) or out of memory. Lock-free. */
uint32_t st_gpu_window_open(uint8_t stage, uint32_t name_id, uint64_t t0);

/* Close window id at t1 (ids of 0 are ignored) and make its parent the
 * calling thread's open window again. Only the thread that opened the window
 * closes it; a window opened before the last reset is ignored. Lock-free;
 * can't fail. */
void st_gpu_window_close(uint32_t id, uint64_t t1);

/* Attribute n records (any order) to their windows and fold them in. Takes
 * the lock once. Returns the number folded in; the rest (out of memory for
 * an aggregate) are counted as dropped. */
size_t st_gpu_consume(const st_gpu_record *records, size_t n);

/* Records lost upstream (CUPTI's own drop count, refused buffers): added to
 * the dropped-records counter. Can't fail. */
void st_gpu_add_dropped(uint64_t records);

/* Counters since the last st_gpu_reset. */
typedef struct st_gpu_counters {
    uint64_t records;         /* folded in */
    uint64_t dropped_records; /* lost upstream or here */
    uint64_t dropped_windows; /* opens refused: table full */
    uint64_t unattributed;    /* records outside every window (window 0) */
    uint64_t windows;         /* windows opened this round */
} st_gpu_counters;

void st_gpu_counters_get(st_gpu_counters *out);

/* Copy out every window that saw GPU work, plus window 0 when records fell
 * outside every window: up to max reports, in window id order. Returns the
 * number of such windows (which may exceed max). Takes the lock. */
size_t st_gpu_report(st_gpu_window_report *out, size_t max);

/* Keep every record as well, up to capacity per round (0: aggregates only,
 * the default): the per-kernel events a trace shows when asked. Records past
 * the capacity are counted in detail_dropped. Takes effect at the next
 * reset. Can't fail. */
void st_gpu_set_detail_capacity(size_t capacity);

/* Move up to max kept records (in arrival order) into out; returns how many.
 * Takes the lock. */
size_t st_gpu_drain_detail(st_gpu_record *out, size_t max);

/* Records not kept because the detail buffer was full, this round. */
uint64_t st_gpu_detail_dropped(void);

/* End a collection round: forget the windows, aggregates and counters (the
 * caller has flushed and reported). Windows still open on other threads
 * become unknown ids and are ignored when closed. Takes the lock. */
void st_gpu_reset(void);

/* pthread_atfork handlers, registered by st_fork: prepare takes the lock,
 * parent and child release it. */
void st_gpu_fork_prepare(void);
void st_gpu_fork_parent(void);
void st_gpu_fork_child(void);

#endif
