/* st_nvml: NVML sampling thread and its bounded ring. NVML's types come from
 * NVIDIA's nvml.h at build time (setup.py finds it in the nvidia-nvml-dev
 * pip wheel or the CUDA toolkit; none is copied into this repository); the
 * library itself is dlopen'ed on first start, never linked.
 *
 * Lock order: lifecycle_lock, then ring_lock. start/stop/device_name take
 * lifecycle_lock; the sampler thread, drain and the counters take ring_lock
 * only, and the sampler never holds it across an NVML call. */
#include "st_nvml.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "st_clock.h"

// --- Ring, counters, device names (built with or without NVML) ---

_Static_assert(sizeof(st_nvml_sample) == 40, "st_nvml_sample is 40 bytes, as documented");

/* Oldest sample at slots[head], len samples in all, wrapping at cap. */
typedef struct ring_state {
    st_nvml_sample *slots;
    size_t cap;
    size_t head;
    size_t len;
    uint64_t dropped;
} ring_state;

static pthread_mutex_t lifecycle_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t ring_lock = PTHREAD_MUTEX_INITIALIZER;
static ring_state ring;       /* guarded by ring_lock */
static st_nvml_sample latest[ST_NVML_MAX_DEVICES]; /* ring_lock: each device's newest sample */
static uint8_t has_latest[ST_NVML_MAX_DEVICES];    /* ring_lock: 1 once latest[i] holds one */
static uint64_t error_count;  /* guarded by ring_lock */
static char last_error[192];  /* guarded by ring_lock */
static unsigned device_count; /* lifecycle_lock; fixed while the sampler runs */
static char device_names[ST_NVML_MAX_DEVICES][ST_NVML_NAME_MAX]; /* lifecycle_lock */
static st_nvml_device_facts device_facts[ST_NVML_MAX_DEVICES];   /* lifecycle_lock */
static char driver_version[80];                                    /* lifecycle_lock */
static int cuda_driver_version;                                    /* lifecycle_lock */
static atomic_int running;

static void say(char *out, size_t out_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* vsnprintf into out when there is one: always NUL-terminated, truncated. */
static void say(char *out, size_t out_len, const char *fmt, ...)
{
    if (!out || out_len == 0) {
        return;
    }
    va_list args;
    va_start(args, fmt);
    vsnprintf(out, out_len, fmt, args);
    va_end(args);
}

size_t st_nvml_drain(st_nvml_sample *out, size_t max)
{
    /* lock order: ring_lock only */
    pthread_mutex_lock(&ring_lock);
    size_t n = ring.len < max ? ring.len : max;
    size_t first = ring.cap - ring.head < n ? ring.cap - ring.head : n;
    if (n) {
        memcpy(out, ring.slots + ring.head, first * sizeof *out);
        memcpy(out + first, ring.slots, (n - first) * sizeof *out);
        ring.head = (ring.head + n) % ring.cap;
        ring.len -= n;
    }
    pthread_mutex_unlock(&ring_lock);
    return n;
}

size_t st_nvml_latest(st_nvml_sample *out, size_t max)
{
    /* lock order: ring_lock only */
    pthread_mutex_lock(&ring_lock);
    size_t n = 0;
    for (size_t i = 0; i < ST_NVML_MAX_DEVICES && n < max; i++) {
        if (has_latest[i]) {
            out[n++] = latest[i];
        }
    }
    pthread_mutex_unlock(&ring_lock);
    return n;
}

size_t st_nvml_pending(void)
{
    pthread_mutex_lock(&ring_lock);
    size_t n = ring.len;
    pthread_mutex_unlock(&ring_lock);
    return n;
}

uint64_t st_nvml_dropped(void)
{
    pthread_mutex_lock(&ring_lock);
    uint64_t n = ring.dropped;
    pthread_mutex_unlock(&ring_lock);
    return n;
}

uint64_t st_nvml_errors(char *last, size_t last_len)
{
    pthread_mutex_lock(&ring_lock);
    uint64_t n = error_count;
    say(last, last_len, "%s", last_error);
    pthread_mutex_unlock(&ring_lock);
    return n;
}

int st_nvml_running(void)
{
    return atomic_load(&running);
}

unsigned st_nvml_device_count(void)
{
    pthread_mutex_lock(&lifecycle_lock);
    unsigned n = device_count;
    pthread_mutex_unlock(&lifecycle_lock);
    return n;
}

int st_nvml_device_info(unsigned index, st_nvml_device_facts *out)
{
    pthread_mutex_lock(&lifecycle_lock);
    int found = index < device_count;
    if (found) {
        *out = device_facts[index];
    }
    pthread_mutex_unlock(&lifecycle_lock);
    return found;
}

void st_nvml_system(char *driver, size_t driver_len, int *cuda_driver)
{
    pthread_mutex_lock(&lifecycle_lock);
    say(driver, driver_len, "%s", driver_version);
    *cuda_driver = cuda_driver_version;
    pthread_mutex_unlock(&lifecycle_lock);
}

int st_nvml_device_name(unsigned index, char *out, size_t out_len)
{
    /* lock order: lifecycle_lock only */
    pthread_mutex_lock(&lifecycle_lock);
    int found = index < device_count;
    if (found) {
        say(out, out_len, "%s", device_names[index]);
    }
    pthread_mutex_unlock(&lifecycle_lock);
    return found;
}

#ifdef ST_HAVE_NVML

#include <dlfcn.h>
#include <nvml.h>
#include <signal.h>
#include <time.h>

_Static_assert(ST_NVML_NAME_MAX >= NVML_DEVICE_NAME_V2_BUFFER_SIZE, "device name buffer");

// --- Loading NVML ---

/* The NVML functions the sampler calls, typed from nvml.h's own declarations. */
#define NVML_FUNCTIONS(X)                                                                          \
    X(nvmlInit_v2)                                                                                 \
    X(nvmlShutdown)                                                                                \
    X(nvmlErrorString)                                                                             \
    X(nvmlDeviceGetCount_v2)                                                                       \
    X(nvmlDeviceGetHandleByIndex_v2)                                                               \
    X(nvmlDeviceGetName)                                                                           \
    X(nvmlDeviceGetUtilizationRates)                                                               \
    X(nvmlDeviceGetMemoryInfo)                                                                     \
    X(nvmlDeviceGetTemperature)                                                                    \
    X(nvmlDeviceGetPowerUsage)

/* All set by nvml_load, or all NULL. CUDA 13's nvml.h deprecates
 * nvmlDeviceGetTemperature for nvmlDeviceGetTemperatureV, which older drivers
 * lack; every driver still exports the old one, so take its type quietly. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static struct nvml_api {
#define NVML_FIELD(name) __typeof__(&name) name;
    NVML_FUNCTIONS(NVML_FIELD)
#undef NVML_FIELD
} nvml;
#pragma GCC diagnostic pop

/* Facts some drivers lack: looked up, never required. */
static struct nvml_optional {
    __typeof__(&nvmlSystemGetDriverVersion) nvmlSystemGetDriverVersion;
    __typeof__(&nvmlSystemGetCudaDriverVersion_v2) nvmlSystemGetCudaDriverVersion_v2;
    __typeof__(&nvmlDeviceGetCudaComputeCapability) nvmlDeviceGetCudaComputeCapability;
} nvml_opt;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static st_nvml_status load_status; /* written once under load_once */
static char load_why[320];

/* dlopen NVML and resolve every function, or nothing. Search: the path in
 * $STAGETRACE_NVML_LIB when set and non-empty, else "libnvidia-ml.so.1" through
 * the dynamic loader's usual search (LD_LIBRARY_PATH, ld.so.cache, where the
 * driver installs it). Runs once per process; the outcome is final. */
static void nvml_load(void)
{
    const char *path = getenv(ST_NVML_ENV_LIB);
    if (!path || !*path) {
        path = ST_NVML_DEFAULT_LIB;
    }
    struct nvml_api api;
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *err = dlerror();
        load_status = ST_NVML_NOT_FOUND;
        say(load_why, sizeof load_why, "%s not found: %s", path, err ? err : "dlopen failed");
        goto error;
    }
#define NVML_RESOLVE(name)                                                                         \
    api.name = (__typeof__(api.name))dlsym(lib, #name);                                            \
    if (!api.name) {                                                                               \
        load_status = ST_NVML_MISSING_SYMBOL;                                                      \
        say(load_why, sizeof load_why, "%s has no %s (NVIDIA driver too old?)", path, #name);      \
        goto error;                                                                                \
    }
    NVML_FUNCTIONS(NVML_RESOLVE)
#undef NVML_RESOLVE
    nvml = api;
    *(void **)&nvml_opt.nvmlSystemGetDriverVersion = dlsym(lib, "nvmlSystemGetDriverVersion");
    *(void **)&nvml_opt.nvmlSystemGetCudaDriverVersion_v2 = dlsym(lib, "nvmlSystemGetCudaDriverVersion_v2");
    *(void **)&nvml_opt.nvmlDeviceGetCudaComputeCapability = dlsym(lib, "nvmlDeviceGetCudaComputeCapability");
    load_status = ST_NVML_OK;
    return;
error:
    if (lib) {
        dlclose(lib);
    }
}

// --- Checked calls ---

/* NVML's text for ret, with the number: "Driver Not Loaded (NVML error 9)". */
static void describe(char *out, size_t out_len, nvmlReturn_t ret)
{
    const char *text = nvml.nvmlErrorString(ret);
    say(out, out_len, "%s (NVML error %d)", text ? text : "unknown error", (int)ret);
}

/* Count a failed call and keep "fn(device i): error" as the last error. Takes
 * ring_lock. Returns ret. */
static nvmlReturn_t nvml_check(nvmlReturn_t ret, const char *fn, int device)
{
    if (ret == NVML_SUCCESS) {
        return ret;
    }
    char error[128];
    describe(error, sizeof error, ret);
    /* lock order: ring_lock (lifecycle_lock may be held by start/stop) */
    pthread_mutex_lock(&ring_lock);
    error_count++;
    if (device >= 0) {
        say(last_error, sizeof last_error, "%s(device %d): %s", fn, device, error);
    } else {
        say(last_error, sizeof last_error, "%s: %s", fn, error);
    }
    pthread_mutex_unlock(&ring_lock);
    return ret;
}

/* Every NVML call goes through this: evaluates to the nvmlReturn_t, failures
 * counted and kept as the last error (device -1 for calls about no device). */
#define NVML_CALL(device, fn, ...) nvml_check(nvml.fn(__VA_ARGS__), #fn, (device))

// --- Sampler thread ---

/* What the sampler knows of each device; written by start before the thread
 * exists, then the thread's alone until stop has joined it. */
typedef struct nvml_device {
    nvmlDevice_t handle;
    unsigned queries; /* ST_NVML_HAS_* bits still worth asking for */
} nvml_device;

static nvml_device devices[ST_NVML_MAX_DEVICES];
static pthread_t sampler;
static unsigned sampler_period_ms;
static pthread_cond_t wake; /* CLOCK_MONOTONIC; signalled by stop */
static int process_ready;   /* written once under process_once */
static pthread_once_t process_once = PTHREAD_ONCE_INIT;
static int stop_requested; /* guarded by ring_lock */

/* wake on the monotonic clock. Returns 0 or an errno value. */
static int wake_create(void)
{
    pthread_condattr_t attr;
    int rc = pthread_condattr_init(&attr);
    if (rc != 0) {
        return rc;
    }
    rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (rc == 0) {
        rc = pthread_cond_init(&wake, &attr);
    }
    pthread_condattr_destroy(&attr);
    return rc;
}

/* fork() copies no sampler thread: hold both locks across it (lock order:
 * lifecycle_lock, then ring_lock), so the child gets them in a sane state,
 * and there start over, not running, with an empty ring and a fresh
 * condition variable. The child does not shut NVML down: NVML is not usable
 * across fork, it starts it again if it calls st_nvml_start. */
static void fork_prepare(void)
{
    pthread_mutex_lock(&lifecycle_lock);
    pthread_mutex_lock(&ring_lock);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&ring_lock);
    pthread_mutex_unlock(&lifecycle_lock);
}

static void fork_child(void)
{
    if (atomic_load(&running)) {
        atomic_store(&running, 0);
        wake_create(); /* no thread waits on it in the child */
    }
    ring.head = ring.len = 0;
    ring.dropped = 0;
    pthread_mutex_unlock(&ring_lock);
    pthread_mutex_unlock(&lifecycle_lock);
}

/* What lives for the process, set up by the first start: the condition
 * variable (never destroyed, so a timed wait and a stop never race its
 * destruction) and the fork handlers. */
static void process_init(void)
{
    if (wake_create() == 0 && pthread_atfork(fork_prepare, fork_parent, fork_child) == 0) {
        process_ready = 1;
    }
}

/* A query failed: Not Supported means never ask this device again, a lost GPU
 * means stop asking it anything; anything else may pass, ask next time. */
static void forget_if_final(nvml_device *d, nvmlReturn_t ret, unsigned bit)
{
    if (ret == NVML_ERROR_NOT_SUPPORTED) {
        d->queries &= ~bit;
    } else if (ret == NVML_ERROR_GPU_IS_LOST) {
        d->queries = 0;
    }
}

static uint8_t percent(unsigned v)
{
    return (uint8_t)(v > 100 ? 100 : v);
}

/* One sample of device i: every field it still answers, the rest invalid. */
static void sample_device(unsigned i, st_nvml_sample *s)
{
    nvml_device *d = &devices[i];
    memset(s, 0, sizeof *s);
    s->device = (uint16_t)i;
    uint64_t t0 = st_clock_now_ns();
    nvmlReturn_t ret;
    if (d->queries & ST_NVML_HAS_UTILIZATION) {
        nvmlUtilization_t u;
        ret = NVML_CALL((int)i, nvmlDeviceGetUtilizationRates, d->handle, &u);
        if (ret == NVML_SUCCESS) {
            s->gpu_util_pct = percent(u.gpu);
            s->mem_util_pct = percent(u.memory);
            s->valid |= ST_NVML_HAS_UTILIZATION;
        } else {
            forget_if_final(d, ret, ST_NVML_HAS_UTILIZATION);
        }
    }
    if (d->queries & ST_NVML_HAS_MEMORY) {
        nvmlMemory_t m;
        ret = NVML_CALL((int)i, nvmlDeviceGetMemoryInfo, d->handle, &m);
        if (ret == NVML_SUCCESS) {
            s->mem_used_bytes = m.used;
            s->mem_total_bytes = m.total;
            s->valid |= ST_NVML_HAS_MEMORY;
        } else {
            forget_if_final(d, ret, ST_NVML_HAS_MEMORY);
        }
    }
    if (d->queries & ST_NVML_HAS_TEMPERATURE) {
        unsigned temp;
        ret = NVML_CALL((int)i, nvmlDeviceGetTemperature, d->handle, NVML_TEMPERATURE_GPU, &temp);
        if (ret == NVML_SUCCESS) {
            s->temperature_c = (uint16_t)(temp > UINT16_MAX ? UINT16_MAX : temp);
            s->valid |= ST_NVML_HAS_TEMPERATURE;
        } else {
            forget_if_final(d, ret, ST_NVML_HAS_TEMPERATURE);
        }
    }
    if (d->queries & ST_NVML_HAS_POWER) {
        unsigned mw;
        ret = NVML_CALL((int)i, nvmlDeviceGetPowerUsage, d->handle, &mw);
        if (ret == NVML_SUCCESS) {
            s->power_mw = mw;
            s->valid |= ST_NVML_HAS_POWER;
        } else {
            forget_if_final(d, ret, ST_NVML_HAS_POWER);
        }
    }
    uint64_t t1 = st_clock_now_ns();
    s->t_ns = t0 + (t1 - t0) / 2;
}

/* next += period; a deadline already past (a slow round) moves to now +
 * period, so a late sampler skips rounds instead of bursting. */
static void next_deadline(struct timespec *next, unsigned period_ms)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    next->tv_sec += period_ms / 1000;
    next->tv_nsec += (long)(period_ms % 1000) * 1000000L;
    if (next->tv_nsec >= 1000000000L) {
        next->tv_sec++;
        next->tv_nsec -= 1000000000L;
    }
    if (next->tv_sec < now.tv_sec || (next->tv_sec == now.tv_sec && next->tv_nsec <= now.tv_nsec)) {
        *next = now;
        next_deadline(next, period_ms);
    }
}

/* Store n samples; those that do not fit are counted as dropped. Caller holds
 * ring_lock. */
static void ring_append(const st_nvml_sample *samples, size_t n)
{
    for (size_t i = 0; i < n; i++) { /* the newest of each device, kept whether the ring has room or not */
        if (samples[i].device < ST_NVML_MAX_DEVICES) {
            latest[samples[i].device] = samples[i];
            has_latest[samples[i].device] = 1;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (ring.len == ring.cap) {
            ring.dropped += n - i;
            return;
        }
        ring.slots[(ring.head + ring.len) % ring.cap] = samples[i];
        ring.len++;
    }
}

/* One round of every device now, then one each period until stop. */
static void *sampler_main(void *arg)
{
    (void)arg;
    st_nvml_sample round[ST_NVML_MAX_DEVICES];
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    /* lock order: ring_lock only; released for the NVML calls */
    pthread_mutex_lock(&ring_lock);
    while (!stop_requested) {
        pthread_mutex_unlock(&ring_lock);
        size_t n = 0;
        for (unsigned i = 0; i < device_count; i++) {
            if (devices[i].queries) {
                sample_device(i, &round[n++]);
            }
        }
        next_deadline(&next, sampler_period_ms);
        pthread_mutex_lock(&ring_lock);
        ring_append(round, n);
        while (!stop_requested && pthread_cond_timedwait(&wake, &ring_lock, &next) == 0) {
            /* a spurious wake-up: wait on for the deadline or a stop */
        }
    }
    pthread_mutex_unlock(&ring_lock);
    return NULL;
}

// --- Start and stop ---

/* Ask NVML for the devices: handle and name of each, all queries wanted. A
 * device whose handle NVML refuses stays in the list, named "", unsampled.
 * Caller holds lifecycle_lock. */
static void devices_open(unsigned count)
{
    device_count = count;
    for (unsigned i = 0; i < count; i++) {
        nvml_device *d = &devices[i];
        d->queries = 0;
        device_names[i][0] = '\0';
        memset(&device_facts[i], 0, sizeof device_facts[i]);
        if (NVML_CALL((int)i, nvmlDeviceGetHandleByIndex_v2, i, &d->handle) != NVML_SUCCESS) {
            continue;
        }
        d->queries = ST_NVML_HAS_UTILIZATION | ST_NVML_HAS_MEMORY | ST_NVML_HAS_TEMPERATURE |
                     ST_NVML_HAS_POWER;
        if (NVML_CALL((int)i, nvmlDeviceGetName, d->handle, device_names[i],
                      NVML_DEVICE_NAME_V2_BUFFER_SIZE) != NVML_SUCCESS) {
            device_names[i][0] = '\0';
        }
        device_names[i][ST_NVML_NAME_MAX - 1] = '\0';
        st_nvml_device_facts *f = &device_facts[i];
        int major = 0, minor = 0;
        if (nvml_opt.nvmlDeviceGetCudaComputeCapability &&
            nvml_opt.nvmlDeviceGetCudaComputeCapability(d->handle, &major, &minor) == NVML_SUCCESS) {
            f->cc_major = major;
            f->cc_minor = minor;
        }
        nvmlMemory_t memory;
        if (nvml.nvmlDeviceGetMemoryInfo(d->handle, &memory) == NVML_SUCCESS) {
            f->total_memory_bytes = memory.total;
        }
    }
    driver_version[0] = '\0';
    cuda_driver_version = 0;
    if (nvml_opt.nvmlSystemGetDriverVersion &&
        nvml_opt.nvmlSystemGetDriverVersion(driver_version, sizeof driver_version) != NVML_SUCCESS) {
        driver_version[0] = '\0';
    }
    if (nvml_opt.nvmlSystemGetCudaDriverVersion_v2 &&
        nvml_opt.nvmlSystemGetCudaDriverVersion_v2(&cuda_driver_version) != NVML_SUCCESS) {
        cuda_driver_version = 0;
    }
}

/* pthread_create with every signal blocked in the new thread, so the
 * interpreter's handlers keep running on the threads that expect them. */
static int sampler_spawn(void)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&sampler, NULL, sampler_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == 0) {
        pthread_setname_np(sampler, "st-nvml");
    }
    return rc;
}

st_nvml_status st_nvml_start(unsigned period_ms, size_t capacity, char *why, size_t why_len)
{
    say(why, why_len, "%s", "");
    if (period_ms == 0 || period_ms > ST_NVML_MAX_PERIOD_MS || capacity == 0 ||
        capacity > ST_NVML_MAX_CAPACITY) {
        say(why, why_len, "period must be 1..%u ms and capacity 1..%u samples (got %u ms, %zu)",
            ST_NVML_MAX_PERIOD_MS, ST_NVML_MAX_CAPACITY, period_ms, capacity);
        return ST_NVML_BAD_ARGUMENT;
    }
    st_nvml_status status;
    int nvml_up = 0;
    st_nvml_sample *slots = NULL;
    ring_state old = {0};
    char error[128];
    /* lock order: lifecycle_lock, then ring_lock (inside NVML_CALL and the swap) */
    pthread_mutex_lock(&lifecycle_lock);
    if (atomic_load(&running)) {
        status = ST_NVML_ALREADY_RUNNING;
        say(why, why_len, "the NVML sampler is already running");
        goto error;
    }
    pthread_once(&load_once, nvml_load);
    if (load_status != ST_NVML_OK) {
        status = load_status;
        say(why, why_len, "%s", load_why);
        goto error;
    }
    pthread_once(&process_once, process_init);
    if (!process_ready) {
        status = ST_NVML_THREAD_FAILED;
        say(why, why_len, "could not create the sampler's condition variable or fork handlers");
        goto error;
    }
    slots = malloc(capacity * sizeof *slots);
    if (!slots) {
        status = ST_NVML_NO_MEMORY;
        say(why, why_len, "no memory for %zu NVML samples", capacity);
        goto error;
    }
    pthread_mutex_lock(&ring_lock);
    error_count = 0;
    last_error[0] = '\0';
    pthread_mutex_unlock(&ring_lock);

    nvmlReturn_t ret = NVML_CALL(-1, nvmlInit_v2);
    if (ret != NVML_SUCCESS) {
        status = ST_NVML_INIT_FAILED;
        describe(error, sizeof error, ret);
        say(why, why_len, "nvmlInit_v2 failed: %s", error);
        goto error;
    }
    nvml_up = 1;
    unsigned count = 0;
    ret = NVML_CALL(-1, nvmlDeviceGetCount_v2, &count);
    if (ret != NVML_SUCCESS) {
        status = ST_NVML_COUNT_FAILED;
        describe(error, sizeof error, ret);
        say(why, why_len, "nvmlDeviceGetCount_v2 failed: %s", error);
        goto error;
    }
    if (count == 0) {
        status = ST_NVML_NO_DEVICES;
        say(why, why_len, "NVML sees no GPU (nvmlDeviceGetCount_v2 gave 0)");
        goto error;
    }
    devices_open(count < ST_NVML_MAX_DEVICES ? count : ST_NVML_MAX_DEVICES);
    sampler_period_ms = period_ms;

    pthread_mutex_lock(&ring_lock);
    old = ring;
    ring = (ring_state){.slots = slots, .cap = capacity};
    stop_requested = 0;
    pthread_mutex_unlock(&ring_lock);
    int rc = sampler_spawn();
    if (rc != 0) {
        pthread_mutex_lock(&ring_lock);
        ring = old; /* as it was: the new ring is freed below */
        pthread_mutex_unlock(&ring_lock);
        old.slots = NULL;
        status = ST_NVML_THREAD_FAILED;
        say(why, why_len, "could not start the NVML sampler thread: %s", strerror(rc));
        goto error;
    }
    atomic_store(&running, 1);
    pthread_mutex_unlock(&lifecycle_lock);
    free(old.slots);
    return ST_NVML_OK;
error:
    if (nvml_up) {
        NVML_CALL(-1, nvmlShutdown);
    }
    free(slots);
    pthread_mutex_unlock(&lifecycle_lock);
    return status;
}

void st_nvml_stop(void)
{
    /* lock order: lifecycle_lock, then ring_lock */
    pthread_mutex_lock(&lifecycle_lock);
    if (atomic_load(&running)) {
        pthread_mutex_lock(&ring_lock);
        stop_requested = 1;
        pthread_cond_signal(&wake);
        pthread_mutex_unlock(&ring_lock);
        pthread_join(sampler, NULL);
        NVML_CALL(-1, nvmlShutdown);
        atomic_store(&running, 0);
    }
    pthread_mutex_unlock(&lifecycle_lock);
}

#else /* built without nvml.h */

st_nvml_status st_nvml_start(unsigned period_ms, size_t capacity, char *why, size_t why_len)
{
    (void)period_ms;
    (void)capacity;
    say(why, why_len, "unavailable: built without NVML headers");
    return ST_NVML_NO_HEADERS;
}

void st_nvml_stop(void) {}

#endif
