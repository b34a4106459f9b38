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

static struct {
    pthread_mutex_t lock;
    int tried;              /* loading was attempted (once per process) */
    void *handle;           /* the library, kept loaded for the process */
    st_cupti_status load_status;
    char load_why[512];
    char library[512];
    uint32_t version;
    int active;
    CUpti_SubscriberHandle subscriber;
    int own_clock;
    int64_t clock_offset;
    size_t buffer_bytes, max_buffers, outstanding; /* outstanding: buffers CUPTI holds */
    uint64_t buffers_completed, buffers_refused, records;
    pthread_mutex_t decode_lock; /* kernel-name cache, for buffers completed concurrently */
} cupti = {.lock = PTHREAD_MUTEX_INITIALIZER, .decode_lock = PTHREAD_MUTEX_INITIALIZER};

static const char *result_text(CUptiResult r)
{
    const char *s = NULL;
    if (api.cuptiGetResultString && api.cuptiGetResultString(r, &s) == CUPTI_SUCCESS && s) {
        return s;
    }
    return "unknown CUPTI error";
}

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
        if (api.cuptiGetVersion(&cupti.version) != CUPTI_SUCCESS) {
            cupti.version = 0;
        }
        return ST_CUPTI_OK;
    }
    say(cupti.load_why, sizeof cupti.load_why, "libcupti not found (tried %s): %s", tried[0] ? tried : "nothing",
        last_error ? last_error : "?");
    return ST_CUPTI_NOT_FOUND;
}

// --- Buffers ------------------------------------------------------------------

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records)
{
    *buffer = NULL;
    *size = 0;
    *max_records = 0; /* as many as fit */
    pthread_mutex_lock(&cupti.lock);
    int room = cupti.outstanding < cupti.max_buffers;
    if (room) {
        cupti.outstanding++;
    } else {
        cupti.buffers_refused++; /* CUPTI drops records and counts them */
    }
    pthread_mutex_unlock(&cupti.lock);
    if (!room) {
        return;
    }
    void *p = NULL;
    if (posix_memalign(&p, 8, cupti.buffer_bytes) != 0) {
        pthread_mutex_lock(&cupti.lock);
        cupti.outstanding--;
        cupti.buffers_refused++;
        pthread_mutex_unlock(&cupti.lock);
        return;
    }
    *buffer = p;
    *size = cupti.buffer_bytes;
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
    return (uint64_t)((int64_t)t + cupti.clock_offset);
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

static void CUPTIAPI buffer_completed(CUcontext context, uint32_t stream, uint8_t *buffer, size_t size,
                                      size_t valid)
{
    (void)size;
    st_gpu_record batch[BATCH];
    size_t n = 0, total = 0;
    CUpti_Activity *record = NULL;
    pthread_mutex_lock(&cupti.decode_lock);
    while (buffer && api.cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
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
    if (api.cuptiActivityGetNumDroppedRecords(context, stream, &dropped) == CUPTI_SUCCESS && dropped) {
        st_gpu_add_dropped(dropped);
    }
    free(buffer);
    pthread_mutex_lock(&cupti.lock);
    if (buffer && cupti.outstanding) {
        cupti.outstanding--;
    }
    cupti.buffers_completed++;
    cupti.records += total;
    pthread_mutex_unlock(&cupti.lock);
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
        if (api.cuptiGetTimestamp(&gpu) != CUPTI_SUCCESS) {
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

static const CUpti_ActivityKind kinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                           CUPTI_ACTIVITY_KIND_MEMSET};
static const char *const kind_names[] = {"CONCURRENT_KERNEL", "MEMCPY", "MEMSET"};

st_cupti_status st_cupti_start(const char *const *paths, size_t n_paths, const st_cupti_config *config,
                               char *why, size_t why_len)
{
    st_cupti_status status = ST_CUPTI_OK;
    size_t enabled = 0;
    int subscribed = 0;
    pthread_mutex_lock(&cupti.lock);
    if (cupti.active) {
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
    cupti.buffer_bytes = config && config->buffer_bytes ? config->buffer_bytes : (size_t)2 << 20;
    cupti.max_buffers = config && config->max_buffers ? config->max_buffers : 32;
    CUptiResult r = api.cuptiSubscribe(&cupti.subscriber, no_callback, NULL);
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
                      api.cuptiActivityRegisterTimestampCallback(trace_clock) == CUPTI_SUCCESS;
    if ((r = api.cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed)) != CUPTI_SUCCESS) {
        say(why, why_len, "cuptiActivityRegisterCallbacks failed: %s", result_text(r));
        status = ST_CUPTI_CALL_FAILED;
        goto error;
    }
    for (; enabled < sizeof kinds / sizeof kinds[0]; enabled++) {
        if ((r = api.cuptiActivityEnable(kinds[enabled])) != CUPTI_SUCCESS) {
            say(why, why_len, "cuptiActivityEnable(%s) failed: %s", kind_names[enabled], result_text(r));
            status = r == CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED ? ST_CUPTI_OTHER_SUBSCRIBER
                                                                         : ST_CUPTI_CALL_FAILED;
            goto error;
        }
    }
    cupti.clock_offset = cupti.own_clock ? 0 : measure_offset();
    cupti.active = 1;
    goto done;
error:
    while (enabled > 0) {
        api.cuptiActivityDisable(kinds[--enabled]);
    }
    if (subscribed) {
        api.cuptiUnsubscribe(cupti.subscriber);
    }
done:
    pthread_mutex_unlock(&cupti.lock);
    return status;
}

void st_cupti_flush(int forced)
{
    pthread_mutex_lock(&cupti.lock);
    int active = cupti.active;
    pthread_mutex_unlock(&cupti.lock);
    if (active) { /* buffer_completed takes the lock: flush without it */
        api.cuptiActivityFlushAll(forced ? CUPTI_ACTIVITY_FLAG_FLUSH_FORCED : 0);
    }
}

void st_cupti_stop(void)
{
    pthread_mutex_lock(&cupti.lock);
    int active = cupti.active;
    cupti.active = 0;
    if (active) {
        for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
            api.cuptiActivityDisable(kinds[i]);
        }
    }
    pthread_mutex_unlock(&cupti.lock);
    if (active) {
        api.cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
        api.cuptiUnsubscribe(cupti.subscriber);
    }
}

int st_cupti_active(void)
{
    pthread_mutex_lock(&cupti.lock);
    int active = cupti.active;
    pthread_mutex_unlock(&cupti.lock);
    return active;
}

void st_cupti_get_info(st_cupti_info *out)
{
    pthread_mutex_lock(&cupti.lock);
    out->library = cupti.handle ? cupti.library : NULL;
    out->version = cupti.version;
    out->own_clock = cupti.own_clock;
    out->clock_offset = cupti.clock_offset;
    out->buffers_completed = cupti.buffers_completed;
    out->buffers_refused = cupti.buffers_refused;
    out->records = cupti.records;
    pthread_mutex_unlock(&cupti.lock);
}

#endif /* ST_HAVE_CUPTI */
