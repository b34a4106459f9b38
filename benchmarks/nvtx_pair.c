/* Times st_nvtx_push/st_nvtx_pop pairs with no NVTX tool attached.
 * Usage: nvtx_pair PAIRS  -> prints "ns_per_pair_on ns_per_pair_off". */

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "st_intern.h"
#include "st_nvtx.h"

static double ns_per_pair(long pairs, uint32_t name)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < pairs; i++) {
        st_nvtx_push(1, name, (uint64_t)i);
        st_nvtx_pop();
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / (double)pairs;
}

int main(int argc, char **argv)
{
    long pairs = argc > 1 ? atol(argv[1]) : 10000000;
    uint32_t name = 0;
    st_intern("bench", 5, &name);
    st_nvtx_init();
    st_nvtx_register_name(name, "bench");
    ns_per_pair(pairs / 10, name); /* warm up: NVTX initialises on first use */
    double on = ns_per_pair(pairs, name);
    st_nvtx_set_enabled(0);
    double off = ns_per_pair(pairs, name);
    printf("%.3f %.3f\n", on, off);
    return 0;
}
