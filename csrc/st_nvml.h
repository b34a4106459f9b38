/* st_nvml: an in-process NVML sampler. One background thread polls every GPU
 * at a fixed period (GPU and memory utilisation, memory used/total,
 * temperature, power) and stores timestamped samples in a bounded ring that
 * the writer drains; timestamps come from st_clock, so samples line up with
 * the CPU spans. NVML is dlopen'ed on first start, never linked. Built without
 * NVIDIA's nvml.h (ST_HAVE_NVML undefined), start reports it and the rest
 * does nothing. Pure C: no Python C API. Every function is thread-safe. A
 * child forked while the sampler runs starts with it stopped and an empty
 * ring (no thread crosses fork). */
#ifndef ST_NVML_H
#define ST_NVML_H

#include <stddef.h>
#include <stdint.h>

typedef enum st_nvml_status {
    ST_NVML_OK = 0,
    ST_NVML_NO_HEADERS,      /* built without nvml.h */
    ST_NVML_BAD_ARGUMENT,    /* period or capacity 0 or above the maximum */
    ST_NVML_ALREADY_RUNNING, /* start while the sampler runs */
    ST_NVML_NOT_FOUND,       /* dlopen of the library failed */
    ST_NVML_MISSING_SYMBOL,  /* the library lacks a function the sampler needs */
    ST_NVML_INIT_FAILED,     /* nvmlInit_v2 returned an error */
    ST_NVML_COUNT_FAILED,    /* nvmlDeviceGetCount_v2 returned an error */
    ST_NVML_NO_DEVICES,      /* NVML initialised but sees no GPU */
    ST_NVML_NO_MEMORY,       /* the ring could not be allocated */
    ST_NVML_THREAD_FAILED,   /* pthread_create, its condvar or fork handlers failed */
} st_nvml_status;

/* Bits of st_nvml_sample.valid: which fields this sample has. A field whose
 * query failed (or that the GPU does not support) is 0 with its bit clear. */
enum {
    ST_NVML_HAS_UTILIZATION = 1u << 0, /* gpu_util_pct and mem_util_pct */
    ST_NVML_HAS_MEMORY = 1u << 1,      /* mem_used_bytes and mem_total_bytes */
    ST_NVML_HAS_TEMPERATURE = 1u << 2, /* temperature_c */
    ST_NVML_HAS_POWER = 1u << 3,       /* power_mw */
};

/* One device at one instant. 40 bytes. */
typedef struct st_nvml_sample {
    uint64_t t_ns; /* st_clock_now_ns(), midway through this device's queries */
    uint64_t mem_used_bytes;
    uint64_t mem_total_bytes;
    uint32_t power_mw;
    uint16_t device; /* NVML index */
    uint16_t temperature_c;
    uint8_t gpu_util_pct; /* % of the last sample period a kernel ran */
    uint8_t mem_util_pct; /* % of it device memory was read or written */
    uint8_t valid;        /* ST_NVML_HAS_* bits */
    uint8_t reserved;
} st_nvml_sample;

#define ST_NVML_DEFAULT_PERIOD_MS 100u  /* 10 Hz */
#define ST_NVML_MAX_PERIOD_MS 3600000u  /* one hour */
#define ST_NVML_DEFAULT_CAPACITY 65536u /* samples: ~13 min of 8 GPUs at 10 Hz */
#define ST_NVML_MAX_CAPACITY (1u << 24)
#define ST_NVML_MAX_DEVICES 64u /* devices past this are not sampled */
#define ST_NVML_NAME_MAX 96u    /* NVML_DEVICE_NAME_V2_BUFFER_SIZE */
#define ST_NVML_ENV_LIB "STAGETRACE_NVML_LIB"
#define ST_NVML_DEFAULT_LIB "libnvidia-ml.so.1"

/* Start sampling every device each period_ms into a new ring of `capacity`
 * samples; on success what an earlier run left undrained is discarded and the
 * drop counter restarts at 0. The first call loads NVML, once per process:
 * the library named by $STAGETRACE_NVML_LIB, else libnvidia-ml.so.1 on the
 * loader's search path; all its functions or none; a failed load is final.
 * Then nvmlInit_v2, the device list, the sampler thread. On failure returns
 * the status, writes a one-line English reason into why (NUL-terminated,
 * truncated to why_len; why may be NULL) and leaves nothing running and NVML
 * shut down again. Serialised with stop by a lifecycle mutex; no GIL needed. */
st_nvml_status st_nvml_start(unsigned period_ms, size_t capacity, char *why, size_t why_len);

/* Wake the sampler thread, join it (returns within one round of queries, not
 * a period) and shut NVML down, balancing start's nvmlInit_v2 (NVML counts
 * them, so another NVML user in the process is unaffected). Buffered samples
 * and the device list stay for drain and st_nvml_device_name. Safe when not
 * running. Can't fail. */
void st_nvml_stop(void);

/* 1 while the sampler thread runs. Can't fail. */
int st_nvml_running(void);

/* Copy up to max of the oldest buffered samples into out, remove them from
 * the ring, and return how many. Takes the ring mutex (lock order: ring mutex
 * only; the sampler holds it only to append). Works while running and after
 * stop. Can't fail. */
size_t st_nvml_drain(st_nvml_sample *out, size_t max);

/* Copy the newest sample of each device sampled since the process began (at
 * most max, by device index) into out, without draining the ring: what a
 * metrics scrape shows between prompts. Samples from before a stop stay until
 * a newer one replaces them. Takes the ring mutex (lock order: ring mutex
 * only). Can't fail. */
size_t st_nvml_latest(st_nvml_sample *out, size_t max);

/* Samples buffered now (what drain would return with no limit). Can't fail. */
size_t st_nvml_pending(void);

/* Samples dropped because the ring was full, since the last start. Can't fail. */
uint64_t st_nvml_dropped(void);

/* NVML calls that failed since the last start began (its own included), and
 * the last one, e.g. "nvmlDeviceGetPowerUsage(device 1): Not Supported (NVML
 * error 3)", into last (may be NULL; "" when none). A query answered Not
 * Supported (a device answering GPU Is Lost: every query) is not asked again
 * until the next start. Can't fail. */
uint64_t st_nvml_errors(char *last, size_t last_len);

/* Devices in the device list, made by the last start that found GPUs (up to
 * ST_NVML_MAX_DEVICES; 0 before any). Can't fail. */
unsigned st_nvml_device_count(void);

/* What NVML told the last successful start about a device; 0 where it could
 * not say (drivers without the query). */
typedef struct st_nvml_device_facts {
    int cc_major, cc_minor;      /* CUDA compute capability */
    uint64_t total_memory_bytes;
} st_nvml_device_facts;

/* The facts of device `index` into *out: 1, or 0 when index is out of range.
 * Can't fail. */
int st_nvml_device_info(unsigned index, st_nvml_device_facts *out);

/* The NVIDIA driver version ("580.95.05", "" when unknown) into driver, and
 * the CUDA version the driver supports (13000 for 13.0, 0 when unknown), as
 * the last successful start read them. Can't fail. */
void st_nvml_system(char *driver, size_t driver_len, int *cuda_driver);

/* The NVML name of device `index` ("" when NVML could not give the device or
 * its name) into out, NUL-terminated and truncated to out_len. Returns 1, or
 * 0 when index is out of range. Can't fail. */
int st_nvml_device_name(unsigned index, char *out, size_t out_len);

#endif
