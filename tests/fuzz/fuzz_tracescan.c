/* libFuzzer target: the streaming trace reader (st_tracescan) and the span
 * arithmetic on arbitrary bytes. The input is read through a memfd in chunks
 * of 1 to 64 bytes (the first byte picks the size), so every unit is cut at
 * every place a chunk can end. Built and run (bounded) by tests/test_fuzz.py
 * under ASan/UBSan; `make fuzz` runs it longer. Any crash, leak, hang or
 * sanitizer report fails the run, and so does a broken invariant. */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "st_tracescan.h"

static const char *const keep_cats[] = {"prompt", "node", "sample.step", "gpu", "comfyui_log"};
static const char *const keep_names[] = {"execution_error"};
static const char *const no_span[] = {"gpu", "prompt\x1fqueue_wait"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    size_t chunk = (size_t)(data[0] % 64) + 1;
    data++, size--;
    int fd = memfd_create("trace", 0);
    if (fd < 0) {
        return 0;
    }
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    lseek(fd, 0, SEEK_SET);
    st_tscan_opts o = {keep_cats, 5, keep_names, 1, no_span, 2, 3, 2, 4096, chunk};
    st_tscan t;
    st_tscan_status s = st_tscan_read(fd, &o, &t);
    close(fd);
    if (s != t.status || t.err_offset > size) {
        abort();
    }
    if (s == ST_TSCAN_OK) {
        /* what was kept is at most the limits, and a JSON array's text */
        if (t.n_kept > o.priority_limit + o.other_limit ||
            (t.n_kept && (t.kept[0] != '[' || t.kept[t.kept_len - 1] != ']'))) {
            abort();
        }
        const double *begins[64], *ends[64];
        size_t counts[64];
        int rank[64];
        double owned[64], first[64];
        size_t k = t.n_cats < 64 ? t.n_cats : 64;
        double union_sum = 0.0;
        for (size_t c = 0; c < k; c++) {
            begins[c] = t.cats[c].begins, ends[c] = t.cats[c].ends, counts[c] = t.cats[c].n;
            rank[c] = (int)(k - 1 - c);
            double u = st_spans_union(begins[c], ends[c], counts[c]);
            if (!(u >= 0) && !isnan(u)) {
                abort();
            }
            union_sum += u;
            uint64_t count[4];
            double lo[4], hi[4], cov[4];
            st_spans_bins(begins[c], ends[c], counts[c], t.cats[c].min_begin, t.cats[c].max_end, 4,
                          count, lo, hi, cov);
            if (count[0] + count[1] + count[2] + count[3] != counts[c]) {
                abort();
            }
            (void)st_spans_first_begin(begins[c], ends[c], counts[c]);
        }
        if (st_spans_exclusive(begins, ends, counts, rank, k, owned, first) == 0) {
            for (size_t c = 0; c < k; c++) {
                if (owned[c] < 0 || isnan(owned[c])) {
                    abort();
                }
            }
        }
        (void)union_sum;
    }
    st_tscan_free(&t);
    return 0;
}
