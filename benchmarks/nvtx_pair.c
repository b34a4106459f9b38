/* nvtx_pair: the cost of one st_nvtx_push/st_nvtx_pop pair in C, with no NVTX
 * tool attached (NVTX_INJECTION64_PATH unset), against the same pair with
 * emission turned off (the enabled check and two calls into st_nvtx.c).
 *
 * Built and run by bench_core.py, linked with csrc/st_nvtx.c, st_stage.c and
 * st_intern.c and the NVTX headers setup.py finds.
 * Usage: nvtx_pair PAIRS REPEATS
 * Prints one line per repeat: "ns_per_pair_on ns_per_pair_off". */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "st_intern.h"
#include "st_nvtx.h"
#include "st_stage.h"

static double ns_per_pair(long pairs, uint32_t name_id)
{
    struct timespec begin, end;
    clock_gettime(CLOCK_MONOTONIC, &begin);
    for (long i = 0; i < pairs; i++) {
        st_nvtx_push(ST_STAGE_NODE, name_id, (uint64_t)i);
        st_nvtx_pop();
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    double ns = (double)(end.tv_sec - begin.tv_sec) * 1e9 + (double)(end.tv_nsec - begin.tv_nsec);
    return ns / (double)pairs;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s PAIRS REPEATS\n", argv[0]);
        return 2;
    }
    long pairs = atol(argv[1]);
    int repeats = atoi(argv[2]);
    uint32_t name_id;
    if (pairs <= 0 || repeats <= 0 || st_intern("bench", 5, &name_id) != ST_INTERN_OK) {
        fprintf(stderr, "%s: bad arguments or out of memory\n", argv[0]);
        return 2;
    }
    st_nvtx_init();
    st_nvtx_register_name(name_id, "bench");
    ns_per_pair(pairs / 10 + 1, name_id); /* warm up: NVTX looks for a tool on first use */
    for (int r = 0; r < repeats; r++) {
        st_nvtx_set_enabled(1);
        double on = ns_per_pair(pairs, name_id);
        st_nvtx_set_enabled(0);
        double off = ns_per_pair(pairs, name_id);
        printf("%.3f %.3f\n", on, off);
    }
    return 0;
}
