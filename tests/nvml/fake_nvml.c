/* fake_nvml.c: a test double of libnvidia-ml.so.1 for the NVML sampler
 * (csrc/st_nvml.c). It exports the NVML functions the sampler resolves, with
 * the prototypes of NVIDIA's real nvml.h (so a signature mismatch fails the
 * build), answering scripted values; tests script it through the extra
 * fake_nvml_* functions, loading this same file with ctypes before the
 * sampler dlopens it (same path, so one copy and one state). Like real NVML,
 * device queries outside an nvmlInit/nvmlShutdown pair fail with
 * Uninitialized. Built with -DFAKE_NVML_OMIT_POWER it lacks
 * nvmlDeviceGetPowerUsage, like a driver too old for the sampler. A child
 * process (stagetrace doctor's probe) cannot be scripted through ctypes, so
 * when the library loads, $FAKE_NVML_DEVICES scripts the devices instead (see
 * script_from_environment). Built by tests/test_nvml.py and tests/conftest.py;
 * no part of StageTrace links it. */
#include <nvml.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FAKE_MAX_DEVICES 64

/* The queries a test can script to fail, and count. */
typedef enum fake_query {
    Q_HANDLE,
    Q_NAME,
    Q_UTILIZATION,
    Q_MEMORY,
    Q_TEMPERATURE,
    Q_POWER,
    Q_COUNT
} fake_query;

static const char *const query_names[Q_COUNT] = {
    "handle", "name", "utilization", "memory", "temperature", "power",
};

struct nvmlDevice_st {
    char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    nvmlUtilization_t utilization;
    nvmlMemory_t memory;
    unsigned temperature_c;
    unsigned power_mw;
    int cc_major, cc_minor; /* 0.0: the process-wide value (fake_nvml_set_compute_capability) */
    nvmlReturn_t fail[Q_COUNT];
    unsigned long calls[Q_COUNT];
};

/* Everything below is guarded by lock: the sampler thread and the test's
 * thread both get here. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct nvmlDevice_st devices[FAKE_MAX_DEVICES];
static nvmlReturn_t init_result = NVML_SUCCESS;
static nvmlReturn_t count_result = NVML_SUCCESS;
static unsigned device_count = 1;
static unsigned init_depth; /* nvmlInit_v2 successes minus nvmlShutdown calls */
static unsigned long init_calls, shutdown_calls;
static unsigned query_delay_us;

static int query_index(const char *name)
{
    for (int q = 0; q < Q_COUNT; q++) {
        if (strcmp(name, query_names[q]) == 0) {
            return q;
        }
    }
    return -1;
}

/* Count the call, sleep the scripted delay, and give the scripted failure
 * (or Uninitialized outside init). Takes and releases lock. */
static nvmlReturn_t enter(struct nvmlDevice_st *d, fake_query q)
{
    pthread_mutex_lock(&lock);
    unsigned delay = query_delay_us;
    pthread_mutex_unlock(&lock);
    if (delay) {
        struct timespec ts = {delay / 1000000u, (long)(delay % 1000000u) * 1000L};
        nanosleep(&ts, NULL);
    }
    pthread_mutex_lock(&lock);
    nvmlReturn_t ret = NVML_SUCCESS;
    if (d) {
        d->calls[q]++;
        ret = d->fail[q];
    }
    if (init_depth == 0) {
        ret = NVML_ERROR_UNINITIALIZED;
    }
    pthread_mutex_unlock(&lock);
    return ret;
}

static struct nvmlDevice_st *device_of(nvmlDevice_t device)
{
    if (device < devices || device >= devices + FAKE_MAX_DEVICES) {
        return NULL;
    }
    return device;
}

// --- Scripting (called by the tests through ctypes) ---

/* Back to one healthy device and no failures; counters to 0. */
void fake_nvml_reset(void)
{
    pthread_mutex_lock(&lock);
    memset(devices, 0, sizeof devices);
    init_result = count_result = NVML_SUCCESS;
    device_count = 1;
    init_calls = shutdown_calls = 0;
    query_delay_us = 0;
    pthread_mutex_unlock(&lock);
}

void fake_nvml_set_init_result(int ret)
{
    pthread_mutex_lock(&lock);
    init_result = (nvmlReturn_t)ret;
    pthread_mutex_unlock(&lock);
}

/* nvmlDeviceGetCount_v2 answers ret and, on success, count. */
void fake_nvml_set_count(int ret, unsigned count)
{
    pthread_mutex_lock(&lock);
    count_result = (nvmlReturn_t)ret;
    device_count = count < FAKE_MAX_DEVICES ? count : FAKE_MAX_DEVICES;
    pthread_mutex_unlock(&lock);
}

/* Script device i's readings. Returns 0 for an index out of range. */
int fake_nvml_set_device(unsigned i, const char *name, unsigned gpu_pct, unsigned mem_pct,
                         unsigned long long used, unsigned long long total, unsigned temperature_c,
                         unsigned power_mw)
{
    if (i >= FAKE_MAX_DEVICES) {
        return 0;
    }
    pthread_mutex_lock(&lock);
    struct nvmlDevice_st *d = &devices[i];
    snprintf(d->name, sizeof d->name, "%s", name);
    d->utilization.gpu = gpu_pct;
    d->utilization.memory = mem_pct;
    d->memory.used = used;
    d->memory.total = total;
    d->memory.free = total > used ? total - used : 0;
    d->temperature_c = temperature_c;
    d->power_mw = power_mw;
    pthread_mutex_unlock(&lock);
    return 1;
}

/* Make query ("handle", "name", "utilization", "memory", "temperature",
 * "power") on device i answer ret from now on (NVML_SUCCESS: work again).
 * Returns 0 for an unknown query or index. */
int fake_nvml_set_failure(unsigned i, const char *query, int ret)
{
    int q = query_index(query);
    if (q < 0 || i >= FAKE_MAX_DEVICES) {
        return 0;
    }
    pthread_mutex_lock(&lock);
    devices[i].fail[q] = (nvmlReturn_t)ret;
    pthread_mutex_unlock(&lock);
    return 1;
}

/* Every query waits this long first (a slow driver). */
void fake_nvml_set_delay_us(unsigned us)
{
    pthread_mutex_lock(&lock);
    query_delay_us = us;
    pthread_mutex_unlock(&lock);
}

/* Calls so far of query on device i, or of "init" / "shutdown" (i ignored);
 * -1 for an unknown query. */
long fake_nvml_calls(unsigned i, const char *query)
{
    long n = -1;
    int q = query_index(query);
    pthread_mutex_lock(&lock);
    if (strcmp(query, "init") == 0) {
        n = (long)init_calls;
    } else if (strcmp(query, "shutdown") == 0) {
        n = (long)shutdown_calls;
    } else if (q >= 0 && i < FAKE_MAX_DEVICES) {
        n = (long)devices[i].calls[q];
    }
    pthread_mutex_unlock(&lock);
    return n;
}

/* Successful inits not yet shut down. */
unsigned fake_nvml_init_depth(void)
{
    pthread_mutex_lock(&lock);
    unsigned depth = init_depth;
    pthread_mutex_unlock(&lock);
    return depth;
}

/* The sampler thread may be inside a query when a test forks: hold lock
 * across fork so the child does not inherit it locked. */
static void fork_prepare(void)
{
    pthread_mutex_lock(&lock);
}

static void fork_release(void)
{
    pthread_mutex_unlock(&lock);
}

static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

static void fork_handlers(void)
{
    pthread_atfork(fork_prepare, fork_release, fork_release);
}

// --- The NVML functions ---

nvmlReturn_t nvmlInit_v2(void)
{
    pthread_once(&fork_once, fork_handlers);
    pthread_mutex_lock(&lock);
    init_calls++;
    nvmlReturn_t ret = init_result;
    if (ret == NVML_SUCCESS) {
        init_depth++;
    }
    pthread_mutex_unlock(&lock);
    return ret;
}

nvmlReturn_t nvmlShutdown(void)
{
    pthread_mutex_lock(&lock);
    shutdown_calls++;
    nvmlReturn_t ret = NVML_ERROR_UNINITIALIZED;
    if (init_depth) {
        init_depth--;
        ret = NVML_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return ret;
}

/* The texts real NVML gives for the codes the tests use. */
const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS:
        return "Success";
    case NVML_ERROR_UNINITIALIZED:
        return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT:
        return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED:
        return "Not Supported";
    case NVML_ERROR_NO_PERMISSION:
        return "Insufficient Permissions";
    case NVML_ERROR_DRIVER_NOT_LOADED:
        return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST:
        return "GPU is lost";
    default:
        return "Unknown Error";
    }
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    pthread_mutex_lock(&lock);
    nvmlReturn_t ret = init_depth ? count_result : NVML_ERROR_UNINITIALIZED;
    if (ret == NVML_SUCCESS) {
        *deviceCount = device_count;
    }
    pthread_mutex_unlock(&lock);
    return ret;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    pthread_mutex_lock(&lock);
    unsigned count = device_count;
    pthread_mutex_unlock(&lock);
    if (index >= count) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    nvmlReturn_t ret = enter(&devices[index], Q_HANDLE);
    if (ret == NVML_SUCCESS) {
        *device = &devices[index];
    }
    return ret;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    struct nvmlDevice_st *d = device_of(device);
    if (!d || !name) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    nvmlReturn_t ret = enter(d, Q_NAME);
    if (ret == NVML_SUCCESS) {
        pthread_mutex_lock(&lock);
        if (strlen(d->name) >= length) {
            ret = NVML_ERROR_INSUFFICIENT_SIZE;
        } else {
            memcpy(name, d->name, strlen(d->name) + 1);
        }
        pthread_mutex_unlock(&lock);
    }
    return ret;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization)
{
    struct nvmlDevice_st *d = device_of(device);
    if (!d || !utilization) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    nvmlReturn_t ret = enter(d, Q_UTILIZATION);
    if (ret == NVML_SUCCESS) {
        pthread_mutex_lock(&lock);
        *utilization = d->utilization;
        pthread_mutex_unlock(&lock);
    }
    return ret;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    struct nvmlDevice_st *d = device_of(device);
    if (!d || !memory) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    nvmlReturn_t ret = enter(d, Q_MEMORY);
    if (ret == NVML_SUCCESS) {
        pthread_mutex_lock(&lock);
        *memory = d->memory;
        pthread_mutex_unlock(&lock);
    }
    return ret;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, nvmlTemperatureSensors_t sensorType,
                                      unsigned int *temp)
{
    struct nvmlDevice_st *d = device_of(device);
    if (!d || !temp || sensorType != NVML_TEMPERATURE_GPU) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    nvmlReturn_t ret = enter(d, Q_TEMPERATURE);
    if (ret == NVML_SUCCESS) {
        pthread_mutex_lock(&lock);
        *temp = d->temperature_c;
        pthread_mutex_unlock(&lock);
    }
    return ret;
}

#ifndef FAKE_NVML_OMIT_POWER
nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power)
{
    struct nvmlDevice_st *d = device_of(device);
    if (!d || !power) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    nvmlReturn_t ret = enter(d, Q_POWER);
    if (ret == NVML_SUCCESS) {
        pthread_mutex_lock(&lock);
        *power = d->power_mw;
        pthread_mutex_unlock(&lock);
    }
    return ret;
}
#endif

// --- Device facts (optional functions: StageTrace looks them up, never requires them) ---

static int cc_major = 8, cc_minor = 6; /* an RTX 3090: no FP8 compute */
static int cuda_driver_version = 13000; /* $FAKE_NVML_CUDA_DRIVER changes it (12040: CUDA 12.4) */

void fake_nvml_set_compute_capability(int major, int minor)
{
    cc_major = major;
    cc_minor = minor;
}

/* Device i's own compute capability (0, 0: the process-wide one again).
 * Returns 0 for an index out of range. */
int fake_nvml_set_device_compute_capability(unsigned i, int major, int minor)
{
    if (i >= FAKE_MAX_DEVICES) {
        return 0;
    }
    pthread_mutex_lock(&lock);
    devices[i].cc_major = major;
    devices[i].cc_minor = minor;
    pthread_mutex_unlock(&lock);
    return 1;
}

/* $FAKE_NVML_CUDA_DRIVER (the CUDA version the driver supports, as NVML
 * gives it: 12040 for 12.4) and $FAKE_NVML_DEVICES, read once when the
 * library loads. $FAKE_NVML_DEVICES: devices separated by
 * ';', each "name|major.minor|total bytes|used bytes|gpu %", e.g.
 * "NVIDIA GeForce RTX 4080|8.9|16000000000|400000000|0;NVIDIA GeForce RTX
 * 3090|8.6|24000000000|300000000|0". The device count becomes the number of
 * devices given; a malformed device ends the list there. */
__attribute__((constructor)) static void script_from_environment(void)
{
    const char *cuda = getenv("FAKE_NVML_CUDA_DRIVER");
    if (cuda && *cuda) {
        cuda_driver_version = atoi(cuda);
    }
    const char *spec = getenv("FAKE_NVML_DEVICES");
    if (!spec || !*spec) {
        return;
    }
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", spec);
    unsigned count = 0;
    char *save = NULL;
    for (char *dev = strtok_r(copy, ";", &save); dev && count < FAKE_MAX_DEVICES;
         dev = strtok_r(NULL, ";", &save)) {
        char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
        int major, minor;
        unsigned long long total, used;
        unsigned gpu_pct;
        if (sscanf(dev, "%95[^|]|%d.%d|%llu|%llu|%u", name, &major, &minor, &total, &used, &gpu_pct) != 6) {
            break;
        }
        fake_nvml_set_device(count, name, gpu_pct, gpu_pct ? 10 : 0, used, total, 40, 30000);
        fake_nvml_set_device_compute_capability(count, major, minor);
        count++;
    }
    fake_nvml_set_count(NVML_SUCCESS, count);
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    if (!version || length < 10) {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    snprintf(version, length, "%s", "580.95.05");
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version)
{
    *version = cuda_driver_version;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor)
{
    struct nvmlDevice_st *d = device_of(device);
    if (!d) {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    pthread_mutex_lock(&lock);
    *major = d->cc_major ? d->cc_major : cc_major;
    *minor = d->cc_major ? d->cc_minor : cc_minor;
    pthread_mutex_unlock(&lock);
    return NVML_SUCCESS;
}
