/* st_fork: one place that orders every unit's locks around fork(). prepare
 * takes them in the lock order below (a thread holding one only ever takes
 * those after it), parent and child release them in reverse:
 *
 *   st_gpu    g.lock        (CUPTI's buffer_completed takes it, and...)
 *   st_intern table_lock    (...st_intern's, for kernel names)
 *   st_events registry_lock
 *
 * st_cupti's locks are not held across fork (a thread may wait inside CUPTI
 * while holding them): its child handler starts them afresh, and the child
 * never calls CUPTI.
 *
 * st_nvtx has no lock (names are registered by compare-and-swap), so no
 * NVTX tool's locks, nor its own fork handlers, order against these.
 *
 * st_nvml keeps its own handlers (its sampler thread does not exist in a
 * child). The per-call paths take none of these locks, so prepare waits only
 * for drains, flushes and first-time registrations in progress. */
#include "st_fork.h"

#include <pthread.h>

#include "st_cupti.h"
#include "st_events.h"
#include "st_gpu.h"
#include "st_intern.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static int install_status;

static void prepare(void)
{
    st_cupti_fork_prepare();
    st_gpu_fork_prepare();
    st_intern_fork_prepare();
    st_events_fork_prepare();
}

static void parent(void)
{
    st_events_fork_parent();
    st_intern_fork_parent();
    st_gpu_fork_parent();
    st_cupti_fork_parent();
}

static void child(void)
{
    st_events_fork_child();
    st_intern_fork_child();
    st_gpu_fork_child();
    st_cupti_fork_child();
}

static void install(void)
{
    install_status = pthread_atfork(prepare, parent, child);
}

int st_fork_install(void)
{
    pthread_once(&once, install);
    return install_status;
}
