/* hotpath.c: the C core's per-call path on 1..N threads at once, no Python,
 * no GIL: what a wrapped call and a stage span do in C (intern the call's
 * name, register it with NVTX, open a GPU window, push an NVTX range, open
 * and close a stage span with its own window, pop, close the window, append
 * the event). benchmarks/bench_core.py links it with the csrc/ of this tree
 * and with that of a baseline revision, and compares them in one run.
 *
 *   hotpath OPS THREADS...
 *
 * For each thread count, THREADS threads each make OPS calls once to warm up
 * (their buffers and the window table touched, so page faults stay out of
 * the figure), the events are drained and the GPU round reset, then they
 * make OPS calls again, started together; prints one line "threads wall cpu"
 * per count: the wall time of that second pass divided by OPS (the time one
 * call takes while the other threads make theirs), and the CPU time the
 * process spent in it divided by all the calls (what one call costs in CPU,
 * whatever else the machine runs). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "st_clock.h"
#include "st_events.h"
#include "st_gpu.h"
#include "st_intern.h"
#include "st_nvtx.h"
#include "st_stage.h"
#include "st_stagespan.h"

#define NAMES 64

static char names[NAMES][32];
static long ops;
static pthread_barrier_t start;

static uint64_t clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void make_calls(void)
{
    for (long i = 0; i < ops; i++) {
        const char *name = names[i & (NAMES - 1)];
        uint32_t name_id = 0;
        st_intern(name, strlen(name), &name_id);
        st_nvtx_register_name(name_id, name);
        uint64_t t0 = st_clock_now_ns();
        uint32_t w = st_gpu_window_open(ST_STAGE_NODE, name_id, t0);
        st_nvtx_push(ST_STAGE_NODE, name_id, 0);
        uint64_t token;
        st_events_stored stored;
        if (st_stagespan_begin(ST_STAGE_SAMPLE_STEP, name_id, 0, 0, 1, &token) == ST_STAGESPAN_OK) {
            st_stagespan_end(token, NULL, 0, ST_OUTCOME_OK, &stored);
        }
        st_nvtx_pop();
        uint64_t t1 = st_clock_now_ns();
        st_gpu_window_close(w, t1);
        st_event ev = {.t_begin_ns = t0, .t_end_ns = t1, .name_id = name_id, .kind = ST_EVENT_SPAN};
        st_events_append(&ev);
    }
}

static void *calls(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&start); /* warm-up pass */
    make_calls();
    pthread_barrier_wait(&start); /* main drains and resets */
    pthread_barrier_wait(&start); /* the timed pass */
    make_calls();
    pthread_barrier_wait(&start);
    return NULL;
}

static void drain_all(void)
{
    st_events_batch batch;
    if (st_events_drain(&batch) == ST_EVENTS_OK) {
        st_events_batch_free(&batch);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: hotpath OPS THREADS...\n");
        return 2;
    }
    ops = atol(argv[1]);
    for (int k = 0; k < NAMES; k++) {
        snprintf(names[k], sizeof names[k], "node %d", k);
    }
    st_nvtx_init();
    st_events_set_capacity(1u << 17);
    st_gpu_set_window_capacity(1u << 22);
    for (int a = 2; a < argc; a++) {
        int threads = atoi(argv[a]);
        st_gpu_reset(); /* a round with room for every window */
        pthread_t *t = calloc((size_t)threads, sizeof *t);
        pthread_barrier_init(&start, NULL, (unsigned)threads + 1);
        for (int k = 0; k < threads; k++) {
            pthread_create(&t[k], NULL, calls, NULL);
        }
        pthread_barrier_wait(&start);
        pthread_barrier_wait(&start); /* warmed up */
        drain_all();
        st_gpu_reset();
        uint64_t t0 = clock_ns(CLOCK_MONOTONIC), cpu0 = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
        pthread_barrier_wait(&start);
        pthread_barrier_wait(&start);
        uint64_t wall = clock_ns(CLOCK_MONOTONIC) - t0, cpu = clock_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
        for (int k = 0; k < threads; k++) {
            pthread_join(t[k], NULL);
        }
        printf("%d %.1f %.1f\n", threads, (double)wall / (double)ops, (double)cpu / ((double)ops * threads));
        pthread_barrier_destroy(&start);
        free(t);
        drain_all();
    }
    return 0;
}
