/* st_clock: CLOCK_MONOTONIC in nanoseconds, with a fake clock hook for tests. */
#include "st_clock.h"

#include <stdatomic.h>
#include <time.h>

static atomic_int fake_enabled;
static atomic_uint_fast64_t fake_next;
static uint64_t fake_step;

uint64_t st_clock_now_ns(void)
{
    if (atomic_load_explicit(&fake_enabled, memory_order_relaxed)) {
        return (uint64_t)atomic_fetch_add(&fake_next, fake_step);
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void st_clock_set_fake(uint64_t start_ns, uint64_t step_ns)
{
    fake_step = step_ns;
    atomic_store(&fake_next, start_ns);
    atomic_store(&fake_enabled, 1);
}

void st_clock_set_real(void)
{
    atomic_store(&fake_enabled, 0);
}
