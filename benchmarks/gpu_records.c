/* gpu_records: what attributing GPU activity records costs (csrc/st_gpu.c).
 *
 * A run shaped like sampling: one prompt window, STEPS step windows nested in
 * a node window, and RECORDS records spread over the steps (kernels on two
 * streams with overlaps, a copy every 16th record, a memset every 64th),
 * delivered in buffers of 512 records as CUPTI's buffer-completed callback
 * hands them over, and in shuffled order once to show the out-of-order path.
 * Then the report that a flush at the prompt's end reads.
 *
 * Built and run by bench_gpu.py with csrc/st_gpu.c. Usage:
 *   gpu_records RECORDS STEPS
 * Prints: ns_per_record_in_order ns_per_record_shuffled report_us windows_reported
 *         rss_growth_kb_for_RECORDS rss_growth_kb_for_10x_RECORDS (records streamed, not kept) */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include "st_gpu.h"

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Records first..first+count of a run of n, into r[0..count). */
static void make_records(st_gpu_record *r, long first, long count, long n, long steps, uint64_t t0,
                         uint64_t step_ns)
{
    long per_step = n / steps;
    for (long k = 0; k < count; k++) {
        long i = first + k;
        long step = i / per_step < steps ? i / per_step : steps - 1;
        uint64_t base = t0 + (uint64_t)step * step_ns + 1000;
        uint64_t offset = (uint64_t)(i % per_step) * (step_ns - 2000) / (uint64_t)per_step;
        st_gpu_record *x = &r[k];
        x->start = base + offset;
        x->end = x->start + 700 + (uint64_t)(i % 7) * 100; /* overlaps its neighbours now and then */
        x->stream = 7 + (uint32_t)(i % 2);
        x->device = 0;
        x->name_id = 100 + (uint32_t)(i % 40);
        x->kind = i % 64 == 0 ? ST_GPU_MEMSET : i % 16 == 0 ? ST_GPU_MEMCPY : ST_GPU_KERNEL;
        x->copy = (uint8_t)(i % 3);
        x->bytes = 1 << 20;
    }
}

static void open_windows(long steps, uint64_t t0, uint64_t step_ns, uint32_t *prompt)
{
    *prompt = st_gpu_window_open(0, 1, t0 - 10);
    uint32_t node = st_gpu_window_open(1, 2, t0 - 5);
    for (long s = 0; s < steps; s++) {
        uint32_t w = st_gpu_window_open(8, 3, t0 + (uint64_t)s * step_ns);
        st_gpu_window_close(w, t0 + (uint64_t)(s + 1) * step_ns - 1);
    }
    st_gpu_window_close(node, t0 + (uint64_t)steps * step_ns + 5);
}

static double consume_all(const st_gpu_record *r, long n)
{
    double begin = now_ns();
    for (long i = 0; i < n; i += 512) {
        st_gpu_consume(&r[i], (size_t)(n - i < 512 ? n - i : 512));
    }
    return (now_ns() - begin) / (double)n;
}

static long max_rss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/* Stream n records through in buffers, never holding them all: what the
 * aggregates alone cost in memory. Returns the RSS growth in kB. */
static long stream(long n, long steps, uint64_t t0, uint64_t step_ns)
{
    st_gpu_record chunk[512];
    uint32_t prompt;
    st_gpu_reset();
    long before = max_rss_kb();
    open_windows(steps, t0, step_ns, &prompt);
    for (long i = 0; i < n; i += 512) {
        long count = n - i < 512 ? n - i : 512;
        make_records(chunk, i, count, n, steps, t0, step_ns);
        st_gpu_consume(chunk, (size_t)count);
    }
    st_gpu_window_close(prompt, t0 + (uint64_t)steps * step_ns + 10);
    return max_rss_kb() - before;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    long steps = argc > 2 ? atol(argv[2]) : 100;
    uint64_t t0 = 1000000000ull, step_ns = 50000000ull; /* 50 ms steps */
    if (n < steps || steps < 1) {
        return 1;
    }
    /* memory first, while the heap is small: 1x and 10x the records */
    long grow_1 = stream(n, steps, t0, step_ns);
    long grow_10 = stream(10 * n, steps, t0, step_ns);

    st_gpu_record *r = malloc((size_t)n * sizeof *r);
    if (!r) {
        return 1;
    }
    make_records(r, 0, n, n, steps, t0, step_ns);
    uint32_t prompt;
    st_gpu_reset();
    open_windows(steps, t0, step_ns, &prompt);
    double in_order = consume_all(r, n);
    st_gpu_window_close(prompt, t0 + (uint64_t)steps * step_ns + 10);
    double begin = now_ns();
    size_t windows = st_gpu_report(NULL, 0);
    st_gpu_window_report *reports = malloc(windows * sizeof *reports);
    st_gpu_report(reports, windows);
    double report_us = (now_ns() - begin) / 1e3;

    srand(1);
    for (long i = n - 1; i > 0; i--) { /* Fisher-Yates: the worst order there is */
        long j = rand() % (i + 1);
        st_gpu_record tmp = r[i];
        r[i] = r[j];
        r[j] = tmp;
    }
    st_gpu_reset();
    open_windows(steps, t0, step_ns, &prompt);
    double shuffled = consume_all(r, n);

    st_gpu_counters c;
    st_gpu_counters_get(&c);
    if (c.records != (uint64_t)n) {
        fprintf(stderr, "folded %llu of %ld records\n", (unsigned long long)c.records, n);
        return 1;
    }
    printf("%.2f %.2f %.1f %zu %ld %ld\n", in_order, shuffled, report_us, windows, grow_1, grow_10);
    free(reports);
    free(r);
    st_gpu_reset();
    return 0;
}
