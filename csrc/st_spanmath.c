/* st_spanmath: the span arithmetic of the stage summary over millions of
 * intervals (see st_tracescan.h for the contracts). */
#include "st_tracescan.h"

#include <math.h>
#include <stdlib.h>

// --- Span arithmetic --------------------------------------------------------------

typedef struct interval {
    double begin, end;
} interval;

static int by_begin_end(const void *a, const void *b)
{
    const interval *x = a, *y = b;
    if (x->begin != y->begin) {
        return x->begin < y->begin ? -1 : 1;
    }
    return x->end < y->end ? -1 : x->end > y->end;
}

double st_spans_union(const double *begins, const double *ends, size_t n)
{
    interval *v = malloc((n ? n : 1) * sizeof *v);
    if (!v) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        v[i].begin = begins[i];
        v[i].end = ends[i];
    }
    qsort(v, n, sizeof *v, by_begin_end);
    double total = 0.0, end = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        if (v[i].end <= end) {
            continue;
        }
        total += v[i].end - (v[i].begin > end ? v[i].begin : end);
        end = v[i].end;
    }
    free(v);
    return total;
}

double st_spans_first_begin(const double *begins, const double *ends, size_t n)
{
    double first = INFINITY;
    for (size_t i = 0; i < n; i++) {
        if (ends[i] > begins[i] && begins[i] < first) {
            first = begins[i];
        }
    }
    return first;
}

typedef struct edge {
    double t;
    int32_t delta, cat;
} edge;

static int by_time(const void *a, const void *b)
{
    const edge *x = a, *y = b;
    return x->t < y->t ? -1 : x->t > y->t;
}

int st_spans_exclusive(const double *const *begins, const double *const *ends, const size_t *counts,
                       const int *rank, size_t k, double *owned, double *first)
{
    size_t n = 0;
    for (size_t c = 0; c < k; c++) {
        owned[c] = 0.0;
        first[c] = INFINITY;
        for (size_t i = 0; i < counts[c]; i++) {
            n += ends[c][i] > begins[c][i];
        }
    }
    /* by_rank[r]: the category of rank r; tree: the running count over rank
     * ranges, a segment tree, so the highest running rank is found in log k */
    size_t size = 1;
    while (size < k) {
        size *= 2;
    }
    edge *edges = malloc((2 * n + 1) * sizeof *edges);
    int *by_rank = malloc((k + 1) * sizeof *by_rank);
    long *tree = calloc(2 * size, sizeof *tree);
    if (!edges || !by_rank || !tree) {
        free(edges);
        free(by_rank);
        free(tree);
        return -1;
    }
    size_t m = 0;
    for (size_t c = 0; c < k; c++) {
        by_rank[rank[c]] = (int)c;
        for (size_t i = 0; i < counts[c]; i++) {
            if (ends[c][i] > begins[c][i]) {
                edges[m++] = (edge){begins[c][i], 1, (int32_t)c};
                edges[m++] = (edge){ends[c][i], -1, (int32_t)c};
            }
        }
    }
    qsort(edges, m, sizeof *edges, by_time);
    double last = 0.0;
    int have_last = 0;
    for (size_t i = 0; i < m; i++) {
        if (have_last && edges[i].t > last && tree[1] > 0) {
            size_t node = 1; /* descend to the highest rank with a running span */
            while (node < size) {
                node = tree[2 * node + 1] > 0 ? 2 * node + 1 : 2 * node;
            }
            int owner = by_rank[node - size];
            if (isinf(first[owner])) {
                first[owner] = last;
            }
            owned[owner] += edges[i].t - last;
        }
        for (size_t node = size + (size_t)rank[edges[i].cat]; node >= 1; node /= 2) {
            tree[node] += edges[i].delta;
        }
        last = edges[i].t;
        have_last = 1;
    }
    free(edges);
    free(by_rank);
    free(tree);
    return 0;
}

void st_spans_bins(const double *begins, const double *ends, size_t n, double lo, double hi,
                   size_t nbins, uint64_t *count, double *first, double *last, double *covered)
{
    for (size_t b = 0; b < nbins; b++) {
        count[b] = 0;
        first[b] = INFINITY;
        last[b] = -INFINITY;
        covered[b] = 0.0;
    }
    double width = hi > lo ? (hi - lo) / (double)nbins : 1.0;
    for (size_t i = 0; i < n; i++) {
        double at = (begins[i] - lo) / width;
        size_t b = at <= 0 ? 0 : at >= (double)(nbins - 1) ? nbins - 1 : (size_t)at;
        count[b]++;
        first[b] = begins[i] < first[b] ? begins[i] : first[b];
        last[b] = ends[i] > last[b] ? ends[i] : last[b];
        covered[b] += ends[i] - begins[i];
    }
}
