/* st_cupti: the CUPTI activity collector. Every CUPTI function is called
 * through the table `api`, filled by dlsym from the library that loaded, so
 * nothing links CUDA at build time and the extension imports on machines
 * without it. Record fields are read through the oldest record struct of
 * each kind that has them; the static asserts below check that newer
 * versions keep those fields at the same offsets (CUPTI 12 and 13 only
 * append fields at the end), and records are walked with the library's own
 * cuptiActivityGetNextRecord, never with compile-time sizes. */
#include "st_cupti.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "st_clock.h"
#include "st_gpu.h"
#include "st_intern.h"

static const char *const status_texts[ST_CUPTI_STATUS_COUNT] = {
    "ok",
    "built without the CUPTI headers",
    "CUPTI library not found",
    "CUPTI library lacks a function",
    "another CUPTI client is active",
    "a CUPTI call failed",
    "out of memory",
};

const char *st_cupti_status_text(st_cupti_status status)
{
    return (unsigned)status < ST_CUPTI_STATUS_COUNT ? status_texts[status] : "unknown status";
}

static void say(char *why, size_t why_len, const char *fmt, ...)
{
    if (why && why_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_len, fmt, ap);
        va_end(ap);
    }
}

#ifndef ST_HAVE_CUPTI

st_cupti_status st_cupti_start(const char *const *paths, size_t n_paths, const st_cupti_config *config,
                               char *why, size_t why_len)
{
    (void)paths;
    (void)n_paths;
    (void)config;
    say(why, why_len,
        "StageTrace was built without the CUPTI headers (pip install nvidia-cuda-cupti nvidia-cuda-runtime "
        "nvidia-cuda-crt, then rebuild: python install.py)");
    return ST_CUPTI_NO_HEADERS;
}

void st_cupti_flush(int forced)
{
    (void)forced;
}

void st_cupti_stop(void) {}

int st_cupti_active(void)
{
    return 0;
}

void st_cupti_get_info(st_cupti_info *out)
{
    memset(out, 0, sizeof *out);
}

void st_cupti_fork_prepare(void) {}
void st_cupti_fork_parent(void) {}
void st_cupti_fork_child(void) {}

#else

#include <cupti.h>

// --- Record layouts -----------------------------------------------------------

#define SAME_OFFSET(A, B, field)                                                                     \
    _Static_assert(offsetof(A, field) == offsetof(B, field), #field " moved between " #A " and " #B)

typedef CUpti_ActivityKernel4 kernel_record; /* start, end, deviceId, streamId, name since Kernel4 */
typedef CUpti_ActivityMemcpy5 memcpy_record;
typedef CUpti_ActivityMemset4 memset_record;

/* the fields read, in each record version this header knows */
#define KERNEL_FIELDS(NEWER)                                                                         \
    SAME_OFFSET(CUpti_ActivityKernel4, NEWER, start);                                                \
    SAME_OFFSET(CUpti_ActivityKernel4, NEWER, end);                                                  \
    SAME_OFFSET(CUpti_ActivityKernel4, NEWER, deviceId);                                             \
    SAME_OFFSET(CUpti_ActivityKernel4, NEWER, streamId);                                             \
    SAME_OFFSET(CUpti_ActivityKernel4, NEWER, name)
KERNEL_FIELDS(CUpti_ActivityKernel9);
#if CUPTI_API_VERSION >= 130000
KERNEL_FIELDS(CUpti_ActivityKernel10);
#endif
#if CUPTI_API_VERSION >= 28
SAME_OFFSET(CUpti_ActivityMemcpy5, CUpti_ActivityMemcpy6, copyKind);
SAME_OFFSET(CUpti_ActivityMemcpy5, CUpti_ActivityMemcpy6, bytes);
SAME_OFFSET(CUpti_ActivityMemcpy5, CUpti_ActivityMemcpy6, start);
SAME_OFFSET(CUpti_ActivityMemcpy5, CUpti_ActivityMemcpy6, end);
SAME_OFFSET(CUpti_ActivityMemcpy5, CUpti_ActivityMemcpy6, deviceId);
SAME_OFFSET(CUpti_ActivityMemcpy5, CUpti_ActivityMemcpy6, streamId);
#endif

// --- The loaded library ---------------------------------------------------------

/* Every function used, with the prototype from cupti.h (so the pointers
 * have the real types). */
#define CUPTI_FUNCTIONS(X)                                                                           \
    X(cuptiGetVersion)                                                                               \
    X(cuptiGetResultString)                                                                          \
    X(cuptiSubscribe)                                                                                \
    X(cuptiUnsubscribe)                                                                              \
    X(cuptiActivityRegisterCallbacks)                                                                \
    X(cuptiActivityEnable)                                                                           \
    X(cuptiActivityDisable)                                                                          \
    X(cuptiActivityFlushAll)                                                                         \
    X(cuptiActivityGetNextRecord)                                                                    \
    X(cuptiActivityGetNumDroppedRecords)                                                             \
    X(cuptiGetTimestamp)

#define DECLARE(name) __typeof__(name) *name;
static struct {
    CUPTI_FUNCTIONS(DECLARE)
    /* optional: CUPTI stamps records with our clock when the library has it */
    __typeof__(cuptiActivityRegisterTimestampCallback) *cuptiActivityRegisterTimestampCallback;
} api;
#undef DECLARE

/* Locks, in the order they may be taken (a thread holding one takes only
 * those after it):
 *   ctl_lock     start, stop and flush; held ACROSS CUPTI control calls
 *                (Subscribe, RegisterCallbacks, Enable/Disable, FlushAll,
 *                Unsubscribe), which may call buffer_requested and
 *                buffer_completed synchronously, on this thread or on a CUPTI
 *                thread this one waits for. So the callbacks never take it:
 *                what they share with the control side is atomics.
 *   decode_lock  buffer_completed only: the kernel-name cache, for buffers
 *                completed concurrently; under it st_gpu's and st_intern's
 *                own locks.
 *   error_lock   a leaf: the last failed call's text.
 * fork(): a child starts these afresh (st_cupti_fork_child says why they
 * are not held across the fork). */
static struct {
    pthread_mutex_t ctl_lock;
    int tried;              /* loading was attempted (once per process); ctl_lock */
    void *handle;           /* the library, kept loaded for the process */
    st_cupti_status load_status;
    char load_why[512];
    char library[512];
    uint32_t version;
    atomic_int active;      /* written under ctl_lock, read anywhere */
    CUpti_SubscriberHandle subscriber;
    int own_clock;
    _Atomic int64_t clock_offset;
    /* set by start before callbacks are registered, read by the callbacks */
    _Atomic size_t buffer_bytes, max_buffers;
    _Atomic size_t outstanding; /* buffers CUPTI holds */
    _Atomic uint64_t buffers_completed, buffers_refused, records;
    pthread_mutex_t decode_lock;
    pthread_mutex_t error_lock;
    uint64_t errors;        /* failed CUPTI calls; error_lock */
    char last_error[256];   /* the last one, "call: CUPTI's error string"; error_lock */
} cupti = {.ctl_lock = PTHREAD_MUTEX_INITIALIZER,
           .decode_lock = PTHREAD_MUTEX_INITIALIZER,
           .error_lock = PTHREAD_MUTEX_INITIALIZER};

/* CUPTI's name for r (cuptiGetResultString, resolved like every other entry
 * point; the checker's own helper, so not itself checked). */
static const char *result_text(CUptiResult r)
{
    const char *s = NULL;
    if (api.cuptiGetResultString && api.cuptiGetResultString(r, &s) == CUPTI_SUCCESS && s) {
        return s;
    }
    return "unknown CUPTI error";
}

/* The checking behind CUPTI_CALL: r unless it failed (anything but success
 * and also_ok); a failure is counted, kept as the last error "call: CUPTI's
 * error string", and logged as one line on stderr the first time this call
 * site fails (*logged). Takes error_lock, a leaf. Returns r. */
static CUptiResult cupti_check(CUptiResult r, CUptiResult also_ok, const char *fn, const char *what,
                               atomic_int *logged)
{
    if (r == CUPTI_SUCCESS || r == also_ok) {
        return r;
    }
    const char *text = result_text(r);
    pthread_mutex_lock(&cupti.error_lock);
    cupti.errors++;
    snprintf(cupti.last_error, sizeof cupti.last_error, "%s(%s): %s", fn, what, text);
    pthread_mutex_unlock(&cupti.error_lock);
    if (!atomic_exchange_explicit(logged, 1, memory_order_relaxed)) {
        fprintf(stderr, "stagetrace: CUPTI call %s(%s) failed: %s\n", fn, what, text);
    }
    return r;
}

/* Every CUPTI call goes through this: evaluates to the CUptiResult of
 * api.fn(...), a failure counted, kept and logged by cupti_check as
 * "fn(what): CUPTI's error string"; what names the arguments ("MEMCPY") or is
 * "". */
#define CUPTI_CALL(what, fn, ...) CUPTI_CALL_ALLOWING(CUPTI_SUCCESS, what, fn, __VA_ARGS__)
/* The same, for a call where also_ok is an answer, not a failure (the record
 * iterator's CUPTI_ERROR_MAX_LIMIT_REACHED at the end of a buffer). */
#define CUPTI_CALL_ALLOWING(also_ok, what, fn, ...)                                                  \
    __extension__({                                                                                  \
        static atomic_int logged_;                                                                   \
        cupti_check(api.fn(__VA_ARGS__), (also_ok), #fn, (what), &logged_);                          \
    })

/* Load the first library of paths that opens and has every function. The
 * lock is held. */
static st_cupti_status load(const char *const *paths, size_t n_paths)
{
    char tried[256] = "";
    const char *last_error = "no candidate paths";
    for (size_t i = 0; i < n_paths && !cupti.handle; i++) {
        void *h = dlopen(paths[i], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            last_error = dlerror();
            size_t used = strlen(tried);
            snprintf(tried + used, sizeof tried - used, "%s%s", used ? ", " : "", paths[i]);
            continue;
        }
#define RESOLVE(name)                                                                                \
    if (!(*(void **)&api.name = dlsym(h, #name))) {                                                  \
        say(cupti.load_why, sizeof cupti.load_why, "%s lacks %s (CUPTI too old?)", paths[i], #name); \
        memset(&api, 0, sizeof api);                                                                 \
        dlclose(h);                                                                                  \
        return ST_CUPTI_MISSING_SYMBOL;                                                              \
    }
        CUPTI_FUNCTIONS(RESOLVE)
#undef RESOLVE
        *(void **)&api.cuptiActivityRegisterTimestampCallback = dlsym(h, "cuptiActivityRegisterTimestampCallback");
        cupti.handle = h;
        snprintf(cupti.library, sizeof cupti.library, "%s", paths[i]);
        if (CUPTI_CALL("", cuptiGetVersion, &cupti.version) != CUPTI_SUCCESS) {
            cupti.version = 0;
        }
        return ST_CUPTI_OK;
    }
    say(cupti.load_why, sizeof cupti.load_why, "libcupti not found (tried %s): %s", tried[0] ? tried : "nothing",
        last_error ? last_error : "?");
    return ST_CUPTI_NOT_FOUND;
}

static const CUpti_ActivityKind kinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                           CUPTI_ACTIVITY_KIND_MEMSET};
static const char *const kind_names[] = {"CONCURRENT_KERNEL", "MEMCPY", "MEMSET"};

// --- Buffers ------------------------------------------------------------------

/* CUPTI asks for a buffer: from a CUPTI thread, or synchronously from inside
 * a control call on a thread that holds ctl_lock. Takes no lock: the cap on
 * outstanding buffers is claimed with a compare-and-swap. */
static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records)
{
    *buffer = NULL;
    *size = 0;
    *max_records = 0; /* as many as fit */
    size_t max = atomic_load_explicit(&cupti.max_buffers, memory_order_relaxed);
    size_t held = atomic_load_explicit(&cupti.outstanding, memory_order_relaxed);
    do {
        if (held >= max) {
            atomic_fetch_add_explicit(&cupti.buffers_refused, 1, memory_order_relaxed); /* CUPTI drops
                                                                                      and counts */
            return;
        }
    } while (!atomic_compare_exchange_weak_explicit(&cupti.outstanding, &held, held + 1, memory_order_relaxed,
                                                    memory_order_relaxed));
    size_t bytes = atomic_load_explicit(&cupti.buffer_bytes, memory_order_relaxed);
    void *p = NULL;
    if (posix_memalign(&p, 8, bytes) != 0) {
        atomic_fetch_sub_explicit(&cupti.outstanding, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&cupti.buffers_refused, 1, memory_order_relaxed);
        return;
    }
    *buffer = p;
    *size = bytes;
}

/* Kernel names: CUPTI shares one name string among all records of a kernel,
 * so a pointer-keyed cache interns each name once. */
#define NAME_CACHE 4096
static struct {
    const char *ptr[NAME_CACHE];
    uint32_t id[NAME_CACHE];
} names;

static uint32_t kernel_name_id(const char *name)
{
    if (!name) {
        return 0;
    }
    size_t h = ((uintptr_t)name >> 3) * 0x9E3779B97F4A7C15u >> 52; /* 12 bits */
    for (size_t probe = 0; probe < 8; probe++) {
        size_t i = (h + probe) & (NAME_CACHE - 1);
        if (names.ptr[i] == name) {
            return names.id[i];
        }
        if (!names.ptr[i]) {
            uint32_t id = 0;
            if (st_intern(name, strlen(name), &id) == ST_INTERN_OK) {
                names.ptr[i] = name;
                names.id[i] = id;
            }
            return id;
        }
    }
    uint32_t id = 0; /* cache crowded here: intern directly */
    st_intern(name, strlen(name), &id);
    return id;
}

static uint8_t copy_direction(uint8_t kind)
{
    switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD:
        return ST_GPU_HTOD;
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH:
        return ST_GPU_DTOH;
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD:
        return ST_GPU_DTOD;
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOH:
        return ST_GPU_HTOH;
    case CUPTI_ACTIVITY_MEMCPY_KIND_PTOP:
        return ST_GPU_PTOP;
    default:
        return ST_GPU_COPY_OTHER;
    }
}

static uint64_t on_trace_clock(uint64_t t)
{
    return (uint64_t)((int64_t)t + atomic_load_explicit(&cupti.clock_offset, memory_order_relaxed));
}

#define BATCH 512

/* The fields every record kind has, under the same names: times on the trace
 * clock, device and stream. */
#define WHEN_AND_WHERE(r, rec)                                                                       \
    do {                                                                                             \
        (r)->start = on_trace_clock((rec)->start);                                                   \
        (r)->end = on_trace_clock((rec)->end);                                                       \
        (r)->device = (rec)->deviceId;                                                               \
        (r)->stream = (rec)->streamId;                                                               \
    } while (0)

/* CUPTI hands a buffer back: from a CUPTI thread, or synchronously from
 * inside a control call (FlushAll, Disable...) whose caller holds ctl_lock.
 * Takes decode_lock (then st_gpu's and st_intern's locks), never ctl_lock. */
static void CUPTIAPI buffer_completed(CUcontext context, uint32_t stream, uint8_t *buffer, size_t size,
                                      size_t valid)
{
    (void)size;
    st_gpu_record batch[BATCH];
    size_t n = 0, total = 0;
    CUpti_Activity *record = NULL;
    pthread_mutex_lock(&cupti.decode_lock);
    while (buffer && CUPTI_CALL_ALLOWING(CUPTI_ERROR_MAX_LIMIT_REACHED, "", cuptiActivityGetNextRecord, buffer,
                                         valid, &record) == CUPTI_SUCCESS) {
        st_gpu_record *r = &batch[n];
        memset(r, 0, sizeof *r);
        switch (record->kind) {
        case CUPTI_ACTIVITY_KIND_KERNEL:
        case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
            const kernel_record *k = (const kernel_record *)record;
            r->kind = ST_GPU_KERNEL;
            WHEN_AND_WHERE(r, k);
            r->name_id = kernel_name_id(k->name);
            break;
        }
        case CUPTI_ACTIVITY_KIND_MEMCPY: {
            const memcpy_record *m = (const memcpy_record *)record;
            r->kind = ST_GPU_MEMCPY;
            r->copy = copy_direction(m->copyKind);
            r->bytes = m->bytes;
            WHEN_AND_WHERE(r, m);
            break;
        }
        case CUPTI_ACTIVITY_KIND_MEMSET: {
            const memset_record *m = (const memset_record *)record;
            r->kind = ST_GPU_MEMSET;
            r->bytes = m->bytes;
            WHEN_AND_WHERE(r, m);
            break;
        }
        default:
            continue; /* a kind StageTrace did not enable */
        }
        if (++n == BATCH) {
            total += st_gpu_consume(batch, n);
            n = 0;
        }
    }
    pthread_mutex_unlock(&cupti.decode_lock);
    total += st_gpu_consume(batch, n);
    size_t dropped = 0;
    if (CUPTI_CALL("", cuptiActivityGetNumDroppedRecords, context, stream, &dropped) == CUPTI_SUCCESS && dropped) {
        st_gpu_add_dropped(dropped);
    }
    free(buffer);
    if (buffer) {
        atomic_fetch_sub_explicit(&cupti.outstanding, 1, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&cupti.buffers_completed, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&cupti.records, total, memory_order_relaxed);
}

// --- Clock --------------------------------------------------------------------

static uint64_t CUPTIAPI trace_clock(void)
{
    return st_clock_now_ns();
}

/* Offset from CUPTI's clock to the trace clock, from the closest of three
 * paired readings. */
static int64_t measure_offset(void)
{
    int64_t best = 0;
    uint64_t best_gap = UINT64_MAX;
    for (int i = 0; i < 3; i++) {
        uint64_t before = st_clock_now_ns(), gpu = 0;
        if (CUPTI_CALL("", cuptiGetTimestamp, &gpu) != CUPTI_SUCCESS) {
            return 0;
        }
        uint64_t after = st_clock_now_ns();
        if (after - before < best_gap) {
            best_gap = after - before;
            best = (int64_t)(before + (after - before) / 2) - (int64_t)gpu;
        }
    }
    return best;
}

// --- Start and stop -----------------------------------------------------------

static void CUPTIAPI no_callback(void *userdata, CUpti_CallbackDomain domain, CUpti_CallbackId id, const void *data)
{
    (void)userdata;
    (void)domain;
    (void)id;
    (void)data;
}


st_cupti_status st_cupti_start(const char *const *paths, size_t n_paths, const st_cupti_config *config,
                               char *why, size_t why_len)
{
    st_cupti_status status = ST_CUPTI_OK;
    size_t enabled = 0;
    int subscribed = 0;
    /* lock order: ctl_lock, held across the CUPTI calls below (the callbacks
     * they may run take no lock of this side) */
    pthread_mutex_lock(&cupti.ctl_lock);
    if (atomic_load(&cupti.active)) {
        goto done;
    }
    if (!cupti.tried) {
        cupti.tried = 1;
        cupti.load_status = load(paths, n_paths);
    }
    if ((status = cupti.load_status) != ST_CUPTI_OK) {
        say(why, why_len, "%s", cupti.load_why);
        goto done;
    }
    atomic_store(&cupti.buffer_bytes, config && config->buffer_bytes ? config->buffer_bytes : (size_t)2 << 20);
    atomic_store(&cupti.max_buffers, config && config->max_buffers ? config->max_buffers : 32);
    CUptiResult r = CUPTI_CALL("", cuptiSubscribe, &cupti.subscriber, no_callback, NULL);
    if (r == CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED) {
        say(why, why_len,
            "another CUPTI client holds the GPU (Nsight Systems, torch.profiler or another profiler): "
            "StageTrace backs off, NVTX ranges still work (%s)",
            result_text(r));
        status = ST_CUPTI_OTHER_SUBSCRIBER;
        goto error;
    }
    if (r != CUPTI_SUCCESS) {
        say(why, why_len, "cuptiSubscribe failed: %s", result_text(r));
        status = ST_CUPTI_CALL_FAILED;
        goto error;
    }
    subscribed = 1;
    cupti.own_clock = api.cuptiActivityRegisterTimestampCallback &&
                      CUPTI_CALL("", cuptiActivityRegisterTimestampCallback, trace_clock) == CUPTI_SUCCESS;
    if ((r = CUPTI_CALL("", cuptiActivityRegisterCallbacks, buffer_requested, buffer_completed)) !=
        CUPTI_SUCCESS) {
        say(why, why_len, "cuptiActivityRegisterCallbacks failed: %s", result_text(r));
        status = ST_CUPTI_CALL_FAILED;
        goto error;
    }
    for (; enabled < sizeof kinds / sizeof kinds[0]; enabled++) {
        if ((r = CUPTI_CALL(kind_names[enabled], cuptiActivityEnable, kinds[enabled])) != CUPTI_SUCCESS) {
            say(why, why_len, "cuptiActivityEnable(%s) failed: %s", kind_names[enabled], result_text(r));
            status = r == CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED ? ST_CUPTI_OTHER_SUBSCRIBER
                                                                         : ST_CUPTI_CALL_FAILED;
            goto error;
        }
    }
    atomic_store(&cupti.clock_offset, cupti.own_clock ? 0 : measure_offset());
    atomic_store(&cupti.active, 1);
    goto done;
error:
    while (enabled > 0) {
        enabled--;
        CUPTI_CALL(kind_names[enabled], cuptiActivityDisable, kinds[enabled]);
    }
    if (subscribed) {
        CUPTI_CALL("", cuptiUnsubscribe, cupti.subscriber);
    }
done:
    pthread_mutex_unlock(&cupti.ctl_lock);
    return status;
}

void st_cupti_flush(int forced)
{
    /* lock order: ctl_lock, held across FlushAll (buffer_completed, which it
     * runs here or on a CUPTI thread it waits for, takes no lock of this side) */
    pthread_mutex_lock(&cupti.ctl_lock);
    if (atomic_load(&cupti.active)) {
        CUPTI_CALL(forced ? "FLUSH_FORCED" : "0", cuptiActivityFlushAll,
                   forced ? CUPTI_ACTIVITY_FLAG_FLUSH_FORCED : 0);
    }
    pthread_mutex_unlock(&cupti.ctl_lock);
}

void st_cupti_stop(void)
{
    /* lock order: ctl_lock, held across Disable, FlushAll and Unsubscribe */
    pthread_mutex_lock(&cupti.ctl_lock);
    if (atomic_exchange(&cupti.active, 0)) {
        for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
            CUPTI_CALL(kind_names[i], cuptiActivityDisable, kinds[i]);
        }
        CUPTI_CALL("FLUSH_FORCED", cuptiActivityFlushAll, CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
        CUPTI_CALL("", cuptiUnsubscribe, cupti.subscriber);
    }
    pthread_mutex_unlock(&cupti.ctl_lock);
}

int st_cupti_active(void)
{
    return atomic_load(&cupti.active);
}

void st_cupti_get_info(st_cupti_info *out)
{
    memset(out, 0, sizeof *out);
    /* lock order: ctl_lock, then error_lock */
    pthread_mutex_lock(&cupti.ctl_lock);
    out->library = cupti.handle ? cupti.library : NULL;
    out->version = cupti.version;
    out->own_clock = cupti.own_clock;
    pthread_mutex_unlock(&cupti.ctl_lock);
    out->clock_offset = atomic_load(&cupti.clock_offset);
    out->buffers_completed = atomic_load(&cupti.buffers_completed);
    out->buffers_refused = atomic_load(&cupti.buffers_refused);
    out->records = atomic_load(&cupti.records);
    pthread_mutex_lock(&cupti.error_lock);
    out->errors = cupti.errors;
    snprintf(out->last_error, sizeof out->last_error, "%s", cupti.last_error);
    pthread_mutex_unlock(&cupti.error_lock);
}

// --- fork() -------------------------------------------------------------------

/* CUPTI's locks are not taken around fork(): a thread may hold ctl_lock or
 * decode_lock while inside CUPTI, waiting for CUPTI's own locks, which
 * CUPTI's fork handlers (registered after StageTrace's, so run before them)
 * may hold in the forking thread. Taking them here could deadlock the
 * parent. The child instead starts them afresh: no thread holds them there,
 * and the child never calls CUPTI. */
void st_cupti_fork_prepare(void) {}

void st_cupti_fork_parent(void) {}

void st_cupti_fork_child(void)
{
    /* CUDA (and so CUPTI) does not carry over into a child: it collects
     * nothing, and never calls into the parent's subscription. */
    pthread_mutex_init(&cupti.ctl_lock, NULL);
    pthread_mutex_init(&cupti.decode_lock, NULL);
    pthread_mutex_init(&cupti.error_lock, NULL);
    atomic_store(&cupti.active, 0);
    atomic_store(&cupti.outstanding, 0);
}

#endif /* ST_HAVE_CUPTI */
