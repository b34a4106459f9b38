/* bind_tracescan.c: the streaming trace reader and the span arithmetic, for
 * comfy_nodes/record/tracefile.py and comfy_nodes/analysis/summary.py. */
#include "bind.h"

#include "st_tracescan.h"

#include <stdlib.h>

// --- scan_trace ---------------------------------------------------------------

static const char *const STATUS_NAMES[] = {
    [ST_TSCAN_OK] = "ok",         [ST_TSCAN_IO] = "io",         [ST_TSCAN_NOT_UTF8] = "utf8",
    [ST_TSCAN_BAD_JSON] = "json", [ST_TSCAN_TOO_DEEP] = "deep", [ST_TSCAN_TOO_BIG] = "big",
    [ST_TSCAN_SHAPE] = "shape",   [ST_TSCAN_FIELD] = "field",   [ST_TSCAN_NO_MEMORY] = "memory",
};

/* A NULL-terminated array of UTF-8 copies of the str items of seq, or NULL
 * with an exception set. Free with free_strings. */
static char **strings_of(PyObject *seq, size_t *n)
{
    PyObject *fast = PySequence_Tuple(seq);
    if (!fast) {
        return NULL;
    }
    Py_ssize_t len = PyTuple_Size(fast);
    char **out = calloc((size_t)len + 1, sizeof *out);
    if (!out) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        Py_ssize_t size;
        const char *s = PyUnicode_AsUTF8AndSize(PyTuple_GetItem(fast, i), &size);
        if (!s || !(out[i] = malloc((size_t)size + 1))) {
            if (s) {
                PyErr_NoMemory();
            }
            for (Py_ssize_t k = 0; k < i; k++) {
                free(out[k]);
            }
            free(out);
            Py_DECREF(fast);
            return NULL;
        }
        memcpy(out[i], s, (size_t)size + 1);
    }
    *n = (size_t)len;
    Py_DECREF(fast);
    return out;
}

static void free_strings(char **s)
{
    for (size_t i = 0; s && s[i]; i++) {
        free(s[i]);
    }
    free(s);
}

static PyObject *bytes_or_none(const char *p, size_t n)
{
    if (!p) {
        Py_RETURN_NONE;
    }
    return PyBytes_FromStringAndSize(p, (Py_ssize_t)n);
}

/* The result dict of a finished scan; NULL with an exception set. */
static PyObject *scan_result(const st_tscan *t)
{
    PyObject *cats = PyList_New(0), *out = NULL;
    if (!cats) {
        return NULL;
    }
    for (size_t k = 0; k < t->n_cats; k++) {
        const st_tscan_cat *c = &t->cats[k];
        PyObject *item = Py_BuildValue(
            "(NNNddnKd)", PyUnicode_DecodeUTF8(c->name, (Py_ssize_t)c->name_len, "surrogatepass"),
            PyBytes_FromStringAndSize((const char *)c->begins, (Py_ssize_t)(c->n * sizeof(double))),
            PyBytes_FromStringAndSize((const char *)c->ends, (Py_ssize_t)(c->n * sizeof(double))),
            c->min_begin, c->max_end, (Py_ssize_t)c->omitted, (unsigned long long)c->other_names,
            c->other_names_us);
        if (!item || PyList_Append(cats, item) < 0) {
            Py_XDECREF(item);
            goto done;
        }
        Py_DECREF(item);
    }
    PyObject *names = PyList_New(0);
    if (!names) {
        goto done;
    }
    for (size_t k = 0; k < t->n_names; k++) {
        const st_tscan_name *e = &t->names[k];
        PyObject *item =
            Py_BuildValue("(INKd)", e->cat,
                          PyUnicode_DecodeUTF8(e->name, (Py_ssize_t)e->name_len, "surrogatepass"),
                          (unsigned long long)e->count, e->total_us);
        if (!item || PyList_Append(names, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(names);
            goto done;
        }
        Py_DECREF(item);
    }
    out = Py_BuildValue(
        "{s:N,s:s,s:K,s:K,s:s,s:s,s:s,s:i,s:K,s:N,s:N,s:N,s:N,s:K,s:K}", "names", names, "status",
        STATUS_NAMES[t->status], "offset", (unsigned long long)t->err_offset, "index",
        (unsigned long long)t->err_index, "field", t->err_field ? t->err_field : "", "text",
        t->err_text ? t->err_text : "", "errno_text", t->err_errno ? strerror(t->err_errno) : "",
        "errno", t->err_errno, "events", (unsigned long long)t->events, "kept",
        bytes_or_none(t->kept, t->kept_len), "kept_index",
        bytes_or_none((const char *)t->kept_index, t->n_kept * sizeof(uint64_t)), "other",
        bytes_or_none(t->other, t->other_len), "cats", cats, "omitted_priority",
        (unsigned long long)t->omitted_priority, "omitted_other",
        (unsigned long long)t->omitted_other);
    return out;
done:
    Py_DECREF(cats);
    return NULL;
}

static PyObject *scan_trace(PyObject *self, PyObject *args)
{
    (void)self;
    int fd;
    PyObject *keep_cats, *keep_names, *no_span;
    Py_ssize_t priority_limit, other_limit, max_value, chunk;
    if (!PyArg_ParseTuple(args, "iOOOnnnn:scan_trace", &fd, &keep_cats, &keep_names, &no_span,
                          &priority_limit, &other_limit, &max_value, &chunk)) {
        return NULL;
    }
    if (priority_limit < 0 || other_limit < 0 || max_value <= 0 || chunk <= 0) {
        PyErr_SetString(PyExc_ValueError, "scan_trace: limits must be positive");
        return NULL;
    }
    st_tscan_opts o = {.priority_limit = (size_t)priority_limit,
                       .other_limit = (size_t)other_limit,
                       .max_value = (size_t)max_value,
                       .chunk = (size_t)chunk};
    char **cats = strings_of(keep_cats, &o.n_keep_cats);
    char **names = cats ? strings_of(keep_names, &o.n_keep_names) : NULL;
    char **skips = names ? strings_of(no_span, &o.n_no_span) : NULL;
    PyObject *out = NULL;
    if (skips) {
        o.keep_cats = (const char *const *)cats;
        o.keep_names = (const char *const *)names;
        o.no_span = (const char *const *)skips;
        st_tscan t;
        Py_BEGIN_ALLOW_THREADS st_tscan_read(fd, &o, &t);
        Py_END_ALLOW_THREADS out = scan_result(&t);
        st_tscan_free(&t);
    }
    free_strings(cats);
    free_strings(names);
    free_strings(skips);
    return out;
}

// --- Span arithmetic ------------------------------------------------------------

/* The doubles of a bytes object; NULL with TypeError/ValueError set. */
static const double *doubles_of(PyObject *b, size_t *n)
{
    char *p;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(b, &p, &len) < 0) {
        return NULL;
    }
    if (len % (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_ValueError, "not a whole number of doubles");
        return NULL;
    }
    *n = (size_t)len / sizeof(double);
    return (const double *)p;
}

/* spans_union and spans_first_begin: (begins, ends) of one column. */
static PyObject *one_column(PyObject *args, const char *format, int first)
{
    PyObject *b, *e;
    if (!PyArg_ParseTuple(args, format, &b, &e)) {
        return NULL;
    }
    size_t nb, ne;
    const double *begins = doubles_of(b, &nb), *ends = begins ? doubles_of(e, &ne) : NULL;
    if (!ends) {
        return NULL;
    }
    if (nb != ne) {
        PyErr_SetString(PyExc_ValueError, "spans_union: begins and ends differ in length");
        return NULL;
    }
    double total;
    Py_BEGIN_ALLOW_THREADS total =
        first ? st_spans_first_begin(begins, ends, nb) : st_spans_union(begins, ends, nb);
    Py_END_ALLOW_THREADS if (!first && total < 0)
    {
        return PyErr_NoMemory();
    }
    return PyFloat_FromDouble(total);
}

static PyObject *spans_union(PyObject *self, PyObject *args)
{
    (void)self;
    return one_column(args, "SS:spans_union", 0);
}

static PyObject *spans_first_begin(PyObject *self, PyObject *args)
{
    (void)self;
    return one_column(args, "SS:spans_first_begin", 1);
}

static PyObject *spans_bins(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *b, *e;
    double lo, hi;
    Py_ssize_t nbins;
    if (!PyArg_ParseTuple(args, "SSddn:spans_bins", &b, &e, &lo, &hi, &nbins)) {
        return NULL;
    }
    size_t nb, ne;
    const double *begins = doubles_of(b, &nb), *ends = begins ? doubles_of(e, &ne) : NULL;
    if (!ends) {
        return NULL;
    }
    if (nb != ne || nbins <= 0 || nbins > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError,
                        "spans_bins: begins and ends of one length, 1..2**20 bins");
        return NULL;
    }
    uint64_t *count = malloc((size_t)nbins * sizeof *count);
    double *first = malloc((size_t)nbins * sizeof *first),
           *last = malloc((size_t)nbins * sizeof *last);
    double *covered = malloc((size_t)nbins * sizeof *covered);
    PyObject *out = NULL;
    if (!count || !first || !last || !covered) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS st_spans_bins(begins, ends, nb, lo, hi, (size_t)nbins, count, first,
                                         last, covered);
    Py_END_ALLOW_THREADS out = PyList_New(0);
    for (Py_ssize_t k = 0; out && k < nbins; k++) {
        if (!count[k]) {
            continue;
        }
        PyObject *item =
            Py_BuildValue("(Kddd)", (unsigned long long)count[k], first[k], last[k], covered[k]);
        if (!item || PyList_Append(out, item) < 0) {
            Py_CLEAR(out);
        }
        Py_XDECREF(item);
    }
done:
    free(count);
    free(first);
    free(last);
    free(covered);
    return out;
}

static PyObject *spans_exclusive(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *columns, *ranks, *out = NULL;
    if (!PyArg_ParseTuple(args, "OO:spans_exclusive", &columns, &ranks)) {
        return NULL;
    }
    PyObject *cols = PySequence_Tuple(columns), *rk = cols ? PySequence_Tuple(ranks) : NULL;
    if (!rk) {
        Py_XDECREF(cols);
        return NULL;
    }
    size_t k = (size_t)PyTuple_Size(cols);
    const double **begins = calloc(k + 1, sizeof *begins), **ends = calloc(k + 1, sizeof *ends);
    size_t *counts = calloc(k + 1, sizeof *counts);
    int *rank = calloc(k + 1, sizeof *rank), *seen = calloc(k + 1, sizeof *seen);
    double *owned = calloc(k + 1, sizeof *owned), *first = calloc(k + 1, sizeof *first);
    if (!begins || !ends || !counts || !rank || !seen || !owned || !first) {
        PyErr_NoMemory();
        goto done;
    }
    if ((size_t)PyTuple_Size(rk) != k) {
        PyErr_SetString(PyExc_ValueError, "spans_exclusive: one rank per column");
        goto done;
    }
    for (size_t c = 0; c < k; c++) {
        PyObject *pair = PyTuple_GetItem(cols, (Py_ssize_t)c);
        long r = PyLong_AsLong(PyTuple_GetItem(rk, (Py_ssize_t)c));
        if (r == -1 && PyErr_Occurred()) {
            goto done;
        }
        if (r < 0 || (size_t)r >= k || seen[r]) {
            PyErr_SetString(PyExc_ValueError, "spans_exclusive: ranks must be 0..k-1, each once");
            goto done;
        }
        seen[r] = 1;
        rank[c] = (int)r;
        size_t nb, ne;
        if (!PyTuple_Check(pair) || PyTuple_Size(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "spans_exclusive: each column is (begins, ends)");
            goto done;
        }
        if (!(begins[c] = doubles_of(PyTuple_GetItem(pair, 0), &nb)) ||
            !(ends[c] = doubles_of(PyTuple_GetItem(pair, 1), &ne))) {
            goto done;
        }
        if (nb != ne) {
            PyErr_SetString(PyExc_ValueError, "spans_exclusive: begins and ends differ in length");
            goto done;
        }
        counts[c] = nb;
    }
    int failed;
    Py_BEGIN_ALLOW_THREADS failed = st_spans_exclusive(begins, ends, counts, rank, k, owned, first);
    Py_END_ALLOW_THREADS if (failed)
    {
        PyErr_NoMemory();
        goto done;
    }
    out = PyList_New((Py_ssize_t)k);
    for (size_t c = 0; out && c < k; c++) {
        PyObject *v = Py_BuildValue("(dd)", owned[c], first[c]);
        if (!v) {
            Py_CLEAR(out);
            break;
        }
        PyList_SetItem(out, (Py_ssize_t)c, v);
    }
done:
    free(begins);
    free(ends);
    free(counts);
    free(rank);
    free(seen);
    free(owned);
    free(first);
    Py_DECREF(cols);
    Py_DECREF(rk);
    return out;
}

PyMethodDef bind_tracescan_methods[] = {
    {"scan_trace", scan_trace, METH_VARARGS,
     "scan_trace(fd, keep_cats, keep_names, no_span, priority_limit, other_limit, max_value, "
     "chunk) -> dict\n"
     "Read a Chrome Trace Event JSON file from fd to its end in chunks (see st_tracescan.h)."},
    {"spans_union", spans_union, METH_VARARGS,
     "spans_union(begins: bytes, ends: bytes) -> float: the length of the union of the intervals "
     "(doubles)."},
    {"spans_first_begin", spans_first_begin, METH_VARARGS,
     "spans_first_begin(begins: bytes, ends: bytes) -> float: the smallest begin of an interval of "
     "positive\n"
     "length (inf when none)."},
    {"spans_bins", spans_bins, METH_VARARGS,
     "spans_bins(begins, ends, lo, hi, nbins) -> [(count, first begin, last end, summed "
     "duration)]: the\n"
     "non-empty bins of nbins equal bins of [lo, hi), the intervals put in by their begin."},
    {"spans_exclusive", spans_exclusive, METH_VARARGS,
     "spans_exclusive(columns: [(begins, ends)], ranks: [int]) -> [(float, float)]: each column's "
     "own time and\nthe start of its first owned stretch."},
    {NULL, NULL, 0, NULL},
};
