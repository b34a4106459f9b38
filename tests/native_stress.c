/* native_stress.c: the C core under threads, without Python. Built from the
 * csrc/ units that need no Python (tests/test_native_stress.py, `make
 * sanitize`, `make tsan`) and run under ASan+UBSan and under TSan.
 *
 *   native_stress SECONDS [FAKE_CUPTI_LIB]
 *
 * 1. A dead thread's buffer: a thread records, exits; a pthread key
 *    destructor that runs after StageTrace's waits until a drain has freed
 *    the thread's buffer, then records again. The event must be counted as
 *    dropped, never written into the freed buffer (ASan would see it).
 * 2. For SECONDS: 8 threads record stage spans with args, wrapper-like spans
 *    (GPU window, NVTX push/pop, interned names registered with NVTX) and
 *    plain events, while a drainer drains and resets the GPU round, a toggler
 *    switches NVTX on and off, a churner starts short-lived threads (their
 *    buffers freed by the drains), and, given the CUPTI test double, a GPU
 *    thread feeds kernel records and flushes. Half way, the main thread
 *    forks three times; each child (under alarm) records, drains and checks
 *    that it holds only its own events, then exits. The parent fails a child
 *    that does not exit within 20 s.
 * 3. Every event an append stored is drained exactly once: stored ==
 *    drained at the end.
 *
 * Exit 0 and a summary line on success; 1 and the reason otherwise. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "st_clock.h"
#include "st_cupti.h"
#include "st_events.h"
#include "st_fork.h"
#include "st_gpu.h"
#include "st_intern.h"
#include "st_nvtx.h"
#include "st_stage.h"
#include "st_stagespan.h"

#define WORKERS 8

static atomic_int stop;
static _Atomic uint64_t stored;  /* events appends stored (with or without args) */
static _Atomic uint64_t drained; /* events drains took */
static _Atomic uint64_t spans, forks_ok;

static void fail(const char *what)
{
    fprintf(stderr, "native_stress: FAIL: %s\n", what);
    exit(1);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void count_stored(int ok)
{
    if (ok) {
        atomic_fetch_add_explicit(&stored, 1, memory_order_relaxed);
    }
}

static uint32_t intern_text(const char *text)
{
    uint32_t id = 0;
    if (st_intern(text, strlen(text), &id) != ST_INTERN_OK) {
        fail("st_intern");
    }
    st_nvtx_register_name(id, text);
    return id;
}

static size_t drain_once(void)
{
    st_events_batch batch;
    if (st_events_drain(&batch) != ST_EVENTS_OK) {
        fail("st_events_drain: no memory");
    }
    size_t n = batch.n;
    st_events_batch_free(&batch);
    atomic_fetch_add_explicit(&drained, n, memory_order_relaxed);
    return n;
}

// --- 1. A dead thread's buffer ---------------------------------------------------------

static pthread_key_t late_key;
static pthread_mutex_t dead_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t dead_cond = PTHREAD_COND_INITIALIZER;
static int dead_phase; /* 1: StageTrace's destructor has run; 2: drained */

static void late_destructor(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&dead_lock);
    dead_phase = 1;
    pthread_cond_broadcast(&dead_cond);
    while (dead_phase != 2) {
        pthread_cond_wait(&dead_cond, &dead_lock);
    }
    pthread_mutex_unlock(&dead_lock);
    st_event ev = {.t_begin_ns = 1, .t_end_ns = 2, .kind = ST_EVENT_INSTANT};
    if (st_events_append(&ev)) { /* the buffer was freed: this must be a drop */
        fail("an exited thread appended to its freed buffer");
    }
}

static void *dead_thread(void *arg)
{
    (void)arg;
    st_event ev = {.t_begin_ns = 1, .t_end_ns = 2, .kind = ST_EVENT_INSTANT};
    count_stored(st_events_append(&ev)); /* makes the buffer, and StageTrace's exit key */
    /* a key made after StageTrace's: glibc runs its destructor after StageTrace's */
    if (pthread_key_create(&late_key, late_destructor) != 0 || pthread_setspecific(late_key, &late_key) != 0) {
        fail("pthread_key_create");
    }
    return NULL;
}

static void check_dead_thread_buffer(void)
{
    uint32_t before_buffers, after_buffers, cap;
    drain_once();
    st_events_stats(&before_buffers, &cap);
    uint64_t dropped = st_events_dropped();
    pthread_t t;
    if (pthread_create(&t, NULL, dead_thread, NULL) != 0) {
        fail("pthread_create");
    }
    pthread_mutex_lock(&dead_lock);
    while (dead_phase != 1) {
        pthread_cond_wait(&dead_cond, &dead_lock);
    }
    pthread_mutex_unlock(&dead_lock);
    if (drain_once() != 1) { /* the thread's event; its buffer is dead and empty: freed */
        fail("the exited thread's event was not drained");
    }
    st_events_stats(&after_buffers, &cap);
    if (after_buffers != before_buffers) {
        fail("the exited thread's buffer was not freed");
    }
    pthread_mutex_lock(&dead_lock);
    dead_phase = 2;
    pthread_cond_broadcast(&dead_cond);
    pthread_mutex_unlock(&dead_lock);
    pthread_join(t, NULL);
    if (st_events_dropped() != dropped + 1) {
        fail("the event recorded after the thread's exit was not counted as dropped");
    }
    pthread_key_delete(late_key);
}

// --- 2. Threads -------------------------------------------------------------------------

static void *worker(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    char name[64];
    uint64_t i = 0;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        snprintf(name, sizeof name, "node %u", rand_r(&seed) % 200);
        uint32_t name_id = intern_text(name);
        /* a wrapper-like span: window, NVTX push/pop, event */
        uint64_t t0 = st_clock_now_ns();
        uint32_t w = st_gpu_window_open(ST_STAGE_NODE, name_id, t0);
        st_nvtx_push(ST_STAGE_NODE, name_id, i);
        /* a stage span inside, with args */
        uint64_t token;
        if (st_stagespan_begin(ST_STAGE_SAMPLE_STEP, name_id, 0, i, 1, &token) == ST_STAGESPAN_OK) {
            char args[64];
            int len = snprintf(args, sizeof args, "{\"step\":%llu}", (unsigned long long)i);
            st_events_stored s;
            st_stagespan_end(token, args, (size_t)len, ST_OUTCOME_OK, &s);
            count_stored(s != ST_EVENTS_DROPPED);
        }
        st_nvtx_pop();
        uint64_t t1 = st_clock_now_ns();
        st_gpu_window_close(w, t1);
        st_event ev = {.t_begin_ns = t0, .t_end_ns = t1, .name_id = name_id, .kind = ST_EVENT_SPAN};
        count_stored(st_events_append(&ev));
        atomic_fetch_add_explicit(&spans, 1, memory_order_relaxed);
        i++;
    }
    return NULL;
}

static void *short_lived(void *arg)
{
    (void)arg;
    for (int k = 0; k < 20; k++) {
        st_event ev = {.t_begin_ns = 1, .t_end_ns = 2, .name_id = intern_text("short"), .kind = ST_EVENT_SPAN};
        count_stored(st_events_append(&ev));
    }
    return NULL;
}

static void *churner(void *arg)
{
    (void)arg;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        pthread_t t;
        if (pthread_create(&t, NULL, short_lived, NULL) == 0) {
            pthread_join(t, NULL);
        }
    }
    return NULL;
}

static void *drainer(void *arg)
{
    (void)arg;
    st_gpu_window_report reports[64];
    for (unsigned k = 0; !atomic_load_explicit(&stop, memory_order_relaxed); k++) {
        drain_once();
        st_gpu_report(reports, 64);
        if (k % 16 == 15) {
            st_gpu_reset(); /* a new round while windows are open on every worker */
        }
        usleep(200);
    }
    return NULL;
}

static void *toggler(void *arg)
{
    (void)arg;
    for (int on = 0; !atomic_load_explicit(&stop, memory_order_relaxed); on ^= 1) {
        st_nvtx_set_enabled(on);
        usleep(100);
    }
    st_nvtx_set_enabled(1);
    return NULL;
}

/* The CUPTI test double's scripting functions, when it is given. */
static int (*fake_kernel)(int, unsigned long long, unsigned long long, unsigned, unsigned, const char *);
static void (*fake_set_reentry)(int);

static void *gpu_feeder(void *arg)
{
    (void)arg;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        uint64_t t = st_clock_now_ns();
        for (int k = 0; k < 16; k++) {
            fake_kernel(10, t + 10u * k, t + 10u * k + 5, 0, 7, "gemm");
        }
        st_cupti_flush(1);
        usleep(100);
    }
    return NULL;
}

// --- fork() -------------------------------------------------------------------------------

static void child_body(void)
{
    alarm(10); /* a deadlock in the child ends it by SIGALRM: the parent reports it */
    drain_once();
    uint32_t buffers, cap;
    st_events_stats(&buffers, &cap);
    if (buffers > 1) {
        fprintf(stderr, "child: %u buffers: other threads' buffers survived the fork\n", buffers);
        _exit(3);
    }
    if (st_cupti_active()) {
        fprintf(stderr, "child: CUPTI still active after fork\n");
        _exit(4);
    }
    uint32_t mine = intern_text("child span");
    uint32_t tid = (uint32_t)syscall(SYS_gettid);
    for (int k = 0; k < 100; k++) {
        uint64_t token;
        st_events_stored s = ST_EVENTS_DROPPED;
        uint32_t w = st_gpu_window_open(ST_STAGE_NODE, mine, st_clock_now_ns());
        if (st_stagespan_begin(ST_STAGE_SAVE, mine, 0, 0, 0, &token) == ST_STAGESPAN_OK) {
            st_stagespan_end(token, "{}", 2, ST_OUTCOME_OK, &s);
        }
        st_gpu_window_close(w, st_clock_now_ns());
        if (s == ST_EVENTS_DROPPED) {
            _exit(5);
        }
    }
    st_events_batch batch;
    if (st_events_drain(&batch) != ST_EVENTS_OK || batch.n != 100) {
        fprintf(stderr, "child: drained %zu events, expected its own 100\n", batch.n);
        _exit(6);
    }
    for (size_t k = 0; k < batch.n; k++) {
        if (batch.events[k].name_id != mine || batch.events[k].tid != tid) {
            _exit(7);
        }
    }
    st_events_batch_free(&batch);
    _exit(0);
}

static void fork_and_check(void)
{
    pid_t pid = fork();
    if (pid < 0) {
        fail("fork");
    }
    if (pid == 0) {
        child_body();
    }
    double deadline = now_s() + 20;
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (now_s() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fail("a child forked while threads recorded did not exit within 20 s (deadlock)");
        }
        usleep(1000);
    }
    if (WIFSIGNALED(status)) {
        fprintf(stderr, "native_stress: child killed by signal %d%s\n", WTERMSIG(status),
                WTERMSIG(status) == SIGALRM ? " (alarm: it deadlocked)" : "");
        fail("forked child");
    }
    if (WEXITSTATUS(status) != 0) {
        fprintf(stderr, "native_stress: child exited with %d\n", WEXITSTATUS(status));
        fail("forked child");
    }
    atomic_fetch_add(&forks_ok, 1);
}

// --- Main --------------------------------------------------------------------------------

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 2.0;
    const char *fake = argc > 2 ? argv[2] : NULL;
    if (st_fork_install() != 0) {
        fail("st_fork_install");
    }
    st_nvtx_init();
    st_events_set_capacity(4096);
    st_gpu_set_detail_capacity(0);
    int gpu = 0;
    if (fake) {
        void *h = dlopen(fake, RTLD_NOW | RTLD_LOCAL);
        *(void **)&fake_kernel = h ? dlsym(h, "fake_cupti_kernel") : NULL;
        *(void **)&fake_set_reentry = h ? dlsym(h, "fake_cupti_set_reentry") : NULL;
        if (!fake_kernel || !fake_set_reentry) {
            fail("the CUPTI test double lacks its scripting functions");
        }
        fake_set_reentry(2); /* callbacks from inside every control call, on a worker */
        char why[512] = "";
        st_cupti_config config = {.buffer_bytes = 4096, .max_buffers = 8};
        if (st_cupti_start(&fake, 1, &config, why, sizeof why) != ST_CUPTI_OK) {
            fprintf(stderr, "native_stress: cupti: %s\n", why);
            fail("st_cupti_start with the test double");
        }
        gpu = 1;
    }

    check_dead_thread_buffer();

    pthread_t workers[WORKERS], drain_t, toggle_t, churn_t, gpu_t;
    for (int k = 0; k < WORKERS; k++) {
        if (pthread_create(&workers[k], NULL, worker, (void *)(uintptr_t)(k + 1)) != 0) {
            fail("pthread_create");
        }
    }
    pthread_create(&drain_t, NULL, drainer, NULL);
    pthread_create(&toggle_t, NULL, toggler, NULL);
    pthread_create(&churn_t, NULL, churner, NULL);
    if (gpu) {
        pthread_create(&gpu_t, NULL, gpu_feeder, NULL);
    }
    double start = now_s();
    usleep((useconds_t)(seconds * 0.5e6));
    for (int k = 0; k < 3; k++) {
        fork_and_check();
        usleep(20000);
    }
    while (now_s() - start < seconds) {
        usleep(10000);
    }
    atomic_store(&stop, 1);
    for (int k = 0; k < WORKERS; k++) {
        pthread_join(workers[k], NULL);
    }
    pthread_join(drain_t, NULL);
    pthread_join(toggle_t, NULL);
    pthread_join(churn_t, NULL);
    if (gpu) {
        pthread_join(gpu_t, NULL);
        st_cupti_stop();
    }
    drain_once();
    uint64_t s = atomic_load(&stored), d = atomic_load(&drained);
    st_gpu_counters counters;
    st_gpu_counters_get(&counters);
    printf("native_stress: %llu spans on %d threads, %llu events stored, %llu drained, %llu dropped, "
           "%llu forks, gpu records %llu\n",
           (unsigned long long)atomic_load(&spans), WORKERS, (unsigned long long)s, (unsigned long long)d,
           (unsigned long long)st_events_dropped(), (unsigned long long)atomic_load(&forks_ok),
           (unsigned long long)counters.records);
    if (s != d) {
        fail("events stored and drained differ");
    }
    if (atomic_load(&forks_ok) != 3 || atomic_load(&spans) == 0) {
        fail("the run did not do its work");
    }
    return 0;
}
