/* harness.c: what the NVML sampler tests need beyond the st_nvml API itself,
 * which they call directly through ctypes. tests/test_nvml.py builds it with
 * csrc/st_nvml.c and csrc/st_clock.c into libstnvml_test.so:
 *
 *   - harness_sample_layout / harness_status_count let the test check that
 *     its ctypes mirror of st_nvml_sample and st_nvml_status matches C.
 *
 * Built with -DHARNESS_MAIN it is instead a program (run under ASan/UBSan and
 * TSan) that hammers the sampler: start/stop cycles at 1 ms with a tiny ring
 * while other threads drain, read the counters and the device names, plus a
 * failing start between runs. It scripts the fake NVML named by
 * $STAGETRACE_NVML_LIB through the fake's own fake_nvml_* functions and exits
 * non-zero, saying why, when an invariant breaks. */
#include <stddef.h>
#include <stdint.h>

#include "st_nvml.h"

/* sizeof(st_nvml_sample); offsets[] gets each field's offset in declaration
 * order (up to n of them). */
size_t harness_sample_layout(size_t *offsets, size_t n)
{
    const size_t all[] = {
        offsetof(st_nvml_sample, t_ns),
        offsetof(st_nvml_sample, mem_used_bytes),
        offsetof(st_nvml_sample, mem_total_bytes),
        offsetof(st_nvml_sample, power_mw),
        offsetof(st_nvml_sample, device),
        offsetof(st_nvml_sample, temperature_c),
        offsetof(st_nvml_sample, gpu_util_pct),
        offsetof(st_nvml_sample, mem_util_pct),
        offsetof(st_nvml_sample, valid),
        offsetof(st_nvml_sample, reserved),
    };
    for (size_t i = 0; i < n && i < sizeof all / sizeof all[0]; i++) {
        offsets[i] = all[i];
    }
    return sizeof(st_nvml_sample);
}

/* How many st_nvml_status values there are. */
int harness_status_count(void)
{
    return ST_NVML_THREAD_FAILED + 1;
}

#ifdef HARNESS_MAIN

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RING 8
#define DEVICES 3

typedef int (*set_device_fn)(unsigned, const char *, unsigned, unsigned, unsigned long long,
                             unsigned long long, unsigned, unsigned);
typedef int (*set_failure_fn)(unsigned, const char *, int);
typedef void (*set_int_fn)(int);
typedef void (*set_count_fn)(int, unsigned);

static atomic_int stopping;
static atomic_int failed;
static atomic_ulong drained;

static void fail(const char *what)
{
    fprintf(stderr, "harness: %s\n", what);
    atomic_store(&failed, 1);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000u, (long)(ms % 1000u) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Drain while the sampler runs: never more than the ring holds, timestamps
 * increasing per device, readings as scripted where valid. */
static void *drainer(void *arg)
{
    (void)arg;
    st_nvml_sample out[RING * 2];
    uint64_t last[DEVICES] = {0};
    char text[160];
    while (!atomic_load(&stopping)) {
        size_t n = st_nvml_drain(out, sizeof out / sizeof out[0]);
        if (n > RING) {
            fail("drained more than the ring holds");
        }
        for (size_t i = 0; i < n; i++) {
            const st_nvml_sample *s = &out[i];
            if (s->device >= DEVICES || s->t_ns <= last[s->device]) {
                fail("bad device or timestamps not increasing");
                continue;
            }
            last[s->device] = s->t_ns;
            if ((s->valid & ST_NVML_HAS_POWER) && s->power_mw != 100000u + s->device) {
                fail("power not as scripted");
            }
            if ((s->valid & ST_NVML_HAS_MEMORY) && s->mem_total_bytes != 1ull << 34) {
                fail("memory not as scripted");
            }
        }
        atomic_fetch_add(&drained, n);
        (void)st_nvml_dropped();
        (void)st_nvml_pending();
        (void)st_nvml_errors(text, sizeof text);
        (void)st_nvml_device_name(1, text, sizeof text);
        (void)st_nvml_running();
    }
    return NULL;
}

int main(void)
{
    const char *path = getenv(ST_NVML_ENV_LIB);
    void *fake = path ? dlopen(path, RTLD_NOW) : NULL;
    if (!fake) {
        fprintf(stderr, "harness: set %s to the fake NVML\n", ST_NVML_ENV_LIB);
        return 2;
    }
    set_device_fn set_device = (set_device_fn)dlsym(fake, "fake_nvml_set_device");
    set_failure_fn set_failure = (set_failure_fn)dlsym(fake, "fake_nvml_set_failure");
    set_int_fn set_init = (set_int_fn)dlsym(fake, "fake_nvml_set_init_result");
    set_count_fn set_count = (set_count_fn)dlsym(fake, "fake_nvml_set_count");
    if (!set_device || !set_failure || !set_init || !set_count) {
        fprintf(stderr, "harness: %s is not the fake NVML\n", path);
        return 2;
    }
    set_count(0, DEVICES);
    for (unsigned i = 0; i < DEVICES; i++) {
        set_device(i, "Fake GPU", 50, 25, 1ull << 30, 1ull << 34, 60, 100000u + i);
    }
    set_failure(1, "temperature", 999); /* transient: asked every round */
    set_failure(2, "power", 3);         /* Not Supported: asked once */
    char why[256];
    for (int cycle = 0; cycle < 20 && !atomic_load(&failed); cycle++) {
        if (cycle % 5 == 4) { /* a failing start in between leaves nothing behind */
            set_init(9);
            if (st_nvml_start(1, RING, why, sizeof why) != ST_NVML_INIT_FAILED ||
                st_nvml_running()) {
                fail("a failed init still started");
            }
            set_init(0);
        }
        if (st_nvml_start(1, RING, why, sizeof why) != ST_NVML_OK) {
            fprintf(stderr, "harness: start: %s\n", why);
            return 1;
        }
        atomic_store(&stopping, 0);
        pthread_t readers[2];
        for (int r = 0; r < 2; r++) {
            pthread_create(&readers[r], NULL, drainer, NULL);
        }
        sleep_ms(15);
        st_nvml_stop();
        st_nvml_stop(); /* twice is harmless */
        atomic_store(&stopping, 1);
        for (int r = 0; r < 2; r++) {
            pthread_join(readers[r], NULL);
        }
        st_nvml_sample rest[RING + 1];
        if (st_nvml_drain(rest, RING + 1) > RING) {
            fail("ring held more than its capacity");
        }
    }
    if (atomic_load(&drained) == 0) {
        fail("no samples at all");
    }
    printf("harness: %lu samples drained, dropped %llu in the last run\n",
           (unsigned long)atomic_load(&drained), (unsigned long long)st_nvml_dropped());
    dlclose(fake);
    return atomic_load(&failed);
}

#endif
