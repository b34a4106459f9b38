/* TEST DOUBLE at the hardware boundary: a stand-in for libcupti, for tests
 * on machines without a GPU. It exports the CUPTI functions StageTrace
 * resolves, with the prototypes from NVIDIA's real cupti.h, and fills
 * activity buffers with the real record structs (CUpti_ActivityKernel9 or
 * Kernel10, Memcpy5 or Memcpy6, Memset4), so StageTrace's buffer-completed
 * path, record decoding and attribution run exactly as with CUPTI. The test
 * scripts it through the fake_cupti_* functions (ctypes).
 *
 * Like the real CUPTI, it can run StageTrace's buffer callbacks from inside
 * the control calls (fake_cupti_set_reentry): on the calling thread, or on a
 * thread of its own that the call waits for (CUPTI's worker thread), so a
 * lock StageTrace held across such a call deadlocks here as on a GPU.
 *
 * Built by tests/test_gpu.py; -DFAKE_NO_TIMESTAMP_CALLBACK leaves out
 * cuptiActivityRegisterTimestampCallback (CUPTI before 12.x), so records
 * carry the fake GPU clock and StageTrace must convert them. */
#include <cupti.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FAKE_GPU_CLOCK_OFFSET 1000000000000ull /* the fake GPU clock runs 1000 s ahead */
#define MAX_RECORDS 4096

static CUpti_BuffersCallbackRequestFunc requested;
static CUpti_BuffersCallbackCompleteFunc completed;
static CUptiResult subscribe_result = CUPTI_SUCCESS;
static CUptiResult enable_result = CUPTI_SUCCESS;
static int subscribed, own_clock, enabled_kinds;
static size_t dropped_next; /* reported by cuptiActivityGetNumDroppedRecords once */
static CUptiResult flush_result = CUPTI_SUCCESS;
/* 0: callbacks only when records need a buffer or a flush delivers; 1: also
 * from inside every control call, on the calling thread; 2: the same on a
 * thread of the fake's own, which the control call waits for */
static int reentry;
static unsigned long long reentries; /* callback round trips made from inside control calls */

static uint8_t *buffer;
static size_t buffer_size, used;
static size_t offsets[MAX_RECORDS], n_records;

/* hold mode: full buffers wait here instead of going back at once, so
 * StageTrace's cap on outstanding buffers is reached */
#define MAX_HELD 16
static int hold;
static struct {
    uint8_t *buffer;
    size_t size, used, n_records;
    size_t offsets[MAX_RECORDS];
} held[MAX_HELD];
static size_t n_held;
static unsigned long long refused_records; /* records with no buffer to go to */

static uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A time given on the trace clock, as this fake CUPTI would stamp it. */
static uint64_t stamp(uint64_t trace_ns)
{
    return own_clock ? trace_ns : trace_ns + FAKE_GPU_CLOCK_OFFSET;
}

/* One buffer round trip, as CUPTI makes from inside a control call: ask
 * StageTrace for a buffer and hand it straight back, empty. */
static void *round_trip(void *unused)
{
    (void)unused;
    uint8_t *b = NULL;
    size_t size = 0, max_records = 0;
    if (requested && completed) {
        requested(&b, &size, &max_records);
        completed(NULL, 0, b, size, 0);
        reentries++;
    }
    return NULL;
}

/* Run StageTrace's callbacks from inside the control call in progress, the
 * way reentry says. */
static void reenter(void)
{
    if (reentry == 1) {
        round_trip(NULL);
    } else if (reentry == 2) {
        pthread_t worker;
        if (pthread_create(&worker, NULL, round_trip, NULL) == 0) {
            pthread_join(worker, NULL); /* the control call waits for its worker */
        }
    }
}

// --- The CUPTI API ------------------------------------------------------------

CUptiResult CUPTIAPI cuptiGetVersion(uint32_t *version)
{
    *version = CUPTI_API_VERSION;
    return CUPTI_SUCCESS;
}

CUptiResult CUPTIAPI cuptiGetResultString(CUptiResult result, const char **str)
{
    switch (result) {
    case CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED:
        *str = "CUPTI_ERROR_MULTIPLE_SUBSCRIBERS_NOT_SUPPORTED";
        break;
    case CUPTI_ERROR_INSUFFICIENT_PRIVILEGES:
        *str = "CUPTI_ERROR_INSUFFICIENT_PRIVILEGES";
        break;
    case CUPTI_ERROR_NOT_READY:
        *str = "CUPTI_ERROR_NOT_READY";
        break;
    default:
        *str = result == CUPTI_SUCCESS ? "CUPTI_SUCCESS" : "CUPTI_ERROR_UNKNOWN";
    }
    return CUPTI_SUCCESS;
}

CUptiResult CUPTIAPI cuptiSubscribe(CUpti_SubscriberHandle *subscriber, CUpti_CallbackFunc callback, void *userdata)
{
    (void)callback;
    (void)userdata;
    if (subscribe_result != CUPTI_SUCCESS) {
        return subscribe_result;
    }
    *subscriber = (CUpti_SubscriberHandle)&subscribed;
    subscribed = 1;
    reenter();
    return CUPTI_SUCCESS;
}

CUptiResult CUPTIAPI cuptiUnsubscribe(CUpti_SubscriberHandle subscriber)
{
    (void)subscriber;
    reenter();
    subscribed = 0;
    return CUPTI_SUCCESS;
}

CUptiResult CUPTIAPI cuptiActivityRegisterCallbacks(CUpti_BuffersCallbackRequestFunc request,
                                                    CUpti_BuffersCallbackCompleteFunc complete)
{
    requested = request;
    completed = complete;
    reenter();
    return CUPTI_SUCCESS;
}

#ifndef FAKE_NO_TIMESTAMP_CALLBACK
CUptiResult CUPTIAPI cuptiActivityRegisterTimestampCallback(CUpti_TimestampCallbackFunc func)
{
    own_clock = func != NULL;
    return CUPTI_SUCCESS;
}
#endif

CUptiResult CUPTIAPI cuptiActivityEnable(CUpti_ActivityKind kind)
{
    if (enable_result != CUPTI_SUCCESS) {
        return enable_result;
    }
    enabled_kinds |= 1 << (kind & 31);
    reenter();
    return CUPTI_SUCCESS;
}

CUptiResult CUPTIAPI cuptiActivityDisable(CUpti_ActivityKind kind)
{
    enabled_kinds &= ~(1 << (kind & 31));
    reenter();
    return CUPTI_SUCCESS;
}

CUptiResult CUPTIAPI cuptiGetTimestamp(uint64_t *timestamp)
{
    *timestamp = monotonic_ns() + FAKE_GPU_CLOCK_OFFSET;
    return CUPTI_SUCCESS;
}

/* The library's own iterator: this fake knows where it put each record. */
CUptiResult CUPTIAPI cuptiActivityGetNextRecord(uint8_t *buf, size_t valid, CUpti_Activity **record)
{
    size_t next = 0;
    if (*record) {
        size_t at = (size_t)((uint8_t *)*record - buf);
        while (next < n_records && offsets[next] <= at) {
            next++;
        }
    }
    if (next >= n_records || offsets[next] >= valid) {
        return CUPTI_ERROR_MAX_LIMIT_REACHED;
    }
    *record = (CUpti_Activity *)(buf + offsets[next]);
    return CUPTI_SUCCESS;
}

CUptiResult CUPTIAPI cuptiActivityGetNumDroppedRecords(CUcontext context, uint32_t stream, size_t *dropped)
{
    (void)context;
    (void)stream;
    *dropped = dropped_next;
    dropped_next = 0;
    return CUPTI_SUCCESS;
}

static void deliver_current(void);

/* Hand the filled buffers back, as CUPTI does on a flush. */
static void deliver(void)
{
    for (size_t i = 0; i < n_held; i++) { /* the iterator reads the current buffer's offsets */
        uint8_t *cur = buffer;
        size_t cur_size = buffer_size, cur_used = used, cur_n = n_records;
        size_t cur_offsets[MAX_RECORDS];
        memcpy(cur_offsets, offsets, cur_n * sizeof offsets[0]);
        buffer = held[i].buffer;
        buffer_size = held[i].size;
        used = held[i].used;
        n_records = held[i].n_records;
        memcpy(offsets, held[i].offsets, n_records * sizeof offsets[0]);
        deliver_current();
        buffer = cur;
        buffer_size = cur_size;
        used = cur_used;
        n_records = cur_n;
        memcpy(offsets, cur_offsets, cur_n * sizeof offsets[0]);
    }
    n_held = 0;
    deliver_current();
}

static void deliver_current(void)
{
    if (buffer && completed) {
        uint8_t *b = buffer;
        size_t size = buffer_size, valid = used;
        completed(NULL, 0, b, size, valid); /* frees b; offsets stay valid during the call */
    }
    buffer = NULL;
    buffer_size = used = n_records = 0;
}

static void *deliver_on_worker(void *unused)
{
    (void)unused;
    deliver();
    return NULL;
}

CUptiResult CUPTIAPI cuptiActivityFlushAll(uint32_t flag)
{
    (void)flag;
    if (flush_result != CUPTI_SUCCESS) {
        return flush_result;
    }
    pthread_t worker;
    if (reentry == 2 && pthread_create(&worker, NULL, deliver_on_worker, NULL) == 0) {
        pthread_join(worker, NULL); /* CUPTI's worker delivers; the flush waits for it */
    } else {
        deliver();
    }
    reenter();
    return CUPTI_SUCCESS;
}

// --- Scripting, for the tests (ctypes) -------------------------------------------

void fake_cupti_set_subscribe_result(int result)
{
    subscribe_result = (CUptiResult)result;
}

void fake_cupti_set_flush_result(int result)
{
    flush_result = (CUptiResult)result;
}

void fake_cupti_set_reentry(int mode)
{
    reentry = mode;
}

unsigned long long fake_cupti_reentries(void)
{
    return reentries;
}

void fake_cupti_set_enable_result(int result)
{
    enable_result = (CUptiResult)result;
}

int fake_cupti_enabled_kinds(void)
{
    return enabled_kinds;
}

int fake_cupti_subscribed(void)
{
    return subscribed;
}

void fake_cupti_set_hold(int on)
{
    hold = on;
}

void fake_cupti_set_dropped(unsigned long long n)
{
    dropped_next = (size_t)n;
}

unsigned long long fake_cupti_refused(void)
{
    return refused_records;
}

/* Room for a record of size bytes in the current buffer, asking StageTrace
 * for a buffer when there is none; NULL (record dropped) when it gives none. */
static void *room(size_t size)
{
    if (buffer && (used + size > buffer_size || n_records == MAX_RECORDS)) {
        if (hold && n_held < MAX_HELD) {
            held[n_held].buffer = buffer;
            held[n_held].size = buffer_size;
            held[n_held].used = used;
            held[n_held].n_records = n_records;
            memcpy(held[n_held].offsets, offsets, n_records * sizeof offsets[0]);
            n_held++;
            buffer = NULL;
        } else {
            deliver();
        }
    }
    if (!buffer) {
        size_t max_records = 0;
        requested(&buffer, &buffer_size, &max_records);
        if (!buffer || buffer_size < size) {
            buffer = NULL;
            refused_records++;
            dropped_next++; /* CUPTI counts what it could not store */
            return NULL;
        }
        used = n_records = 0;
    }
    void *p = buffer + used;
    memset(p, 0, size);
    offsets[n_records++] = used;
    used += (size + 7) & ~(size_t)7;
    return p;
}

static const char *kept_name(const char *name)
{
    /* one stable pointer per distinct name, as CUPTI shares them */
    static char *names[256];
    static size_t n;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(names[i], name) == 0) {
            return names[i];
        }
    }
    if (n == 256) {
        return "overflow";
    }
    names[n] = strdup(name);
    return names[n++];
}

#define FILL_KERNEL(T)                                                                               \
    do {                                                                                             \
        T *k = room(sizeof(T));                                                                      \
        if (!k) {                                                                                    \
            return 0;                                                                                \
        }                                                                                            \
        k->kind = CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL;                                             \
        k->start = stamp(start);                                                                     \
        k->end = stamp(end);                                                                         \
        k->deviceId = device;                                                                        \
        k->streamId = stream;                                                                        \
        k->name = kept_name(name);                                                                   \
        k->correlationId = ++correlation;                                                            \
    } while (0)

static uint32_t correlation;

/* A kernel record of struct version 9 or 10 (times on the trace clock). */
int fake_cupti_kernel(int version, unsigned long long start, unsigned long long end, unsigned device,
                      unsigned stream, const char *name)
{
#if CUPTI_API_VERSION >= 130000
    if (version == 10) {
        FILL_KERNEL(CUpti_ActivityKernel10);
        return 1;
    }
#endif
    if (version != 9) {
        return -1;
    }
    FILL_KERNEL(CUpti_ActivityKernel9);
    return 1;
}

/* A memcpy record of struct version 5 or 6. */
int fake_cupti_memcpy(int version, int copy_kind, unsigned long long bytes, unsigned long long start,
                      unsigned long long end, unsigned stream)
{
#define FILL_COPY(T)                                                                                 \
    do {                                                                                             \
        T *m = room(sizeof(T));                                                                      \
        if (!m) {                                                                                    \
            return 0;                                                                                \
        }                                                                                            \
        m->kind = CUPTI_ACTIVITY_KIND_MEMCPY;                                                        \
        m->copyKind = (uint8_t)copy_kind;                                                            \
        m->bytes = bytes;                                                                            \
        m->start = stamp(start);                                                                     \
        m->end = stamp(end);                                                                         \
        m->streamId = stream;                                                                        \
    } while (0)
    if (version == 6) {
        FILL_COPY(CUpti_ActivityMemcpy6);
        return 1;
    }
    if (version != 5) {
        return -1;
    }
    FILL_COPY(CUpti_ActivityMemcpy5);
    return 1;
}

int fake_cupti_memset(unsigned long long bytes, unsigned long long start, unsigned long long end, unsigned stream)
{
    CUpti_ActivityMemset4 *m = room(sizeof *m);
    if (!m) {
        return 0;
    }
    m->kind = CUPTI_ACTIVITY_KIND_MEMSET;
    m->bytes = bytes;
    m->start = stamp(start);
    m->end = stamp(end);
    m->streamId = stream;
    return 1;
}

/* A record of a kind StageTrace did not ask for: it must be skipped. */
int fake_cupti_other_record(void)
{
    CUpti_ActivityOverhead3 *o = room(sizeof *o);
    if (!o) {
        return 0;
    }
    o->kind = CUPTI_ACTIVITY_KIND_OVERHEAD;
    return 1;
}

/* Deliver what is buffered now (what a flush does). */
void fake_cupti_complete(void)
{
    deliver();
}
