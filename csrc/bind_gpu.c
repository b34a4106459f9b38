/* bind_gpu.c: GPU activity, exposed to Python: the CUPTI collector
 * (cupti_*) and the stage windows its records are attributed to (gpu_*). */
#include "bind.h"

#include "st_cupti.h"
#include "st_gpu.h"
#include "st_intern.h"
#include "st_stage.h"

atomic_int bind_gpu_windows_enabled = 0;

// --- GPU: CUPTI collection and stage windows ----------------------------------

static PyObject *mod_cupti_start(PyObject *m, PyObject *args, PyObject *kwargs)
{
    (void)m;
    static char *kwlist[] = {"paths", "buffer_bytes", "max_buffers", NULL};
    PyObject *paths_arg;
    Py_ssize_t buffer_bytes = 0, max_buffers = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|nn", kwlist, &paths_arg, &buffer_bytes, &max_buffers)) {
        return NULL;
    }
    if (buffer_bytes < 0 || max_buffers < 0) {
        PyErr_SetString(PyExc_ValueError, "buffer_bytes and max_buffers must be >= 0");
        return NULL;
    }
    PyObject *paths = PySequence_Tuple(paths_arg);
    if (!paths) {
        return NULL;
    }
    Py_ssize_t n = PyTuple_Size(paths);
    const char **cpaths = PyMem_Calloc(n ? (size_t)n : 1, sizeof *cpaths);
    if (!cpaths) {
        Py_DECREF(paths);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!(cpaths[i] = PyUnicode_AsUTF8AndSize(PyTuple_GetItem(paths, i), NULL))) {
            PyMem_Free(cpaths);
            Py_DECREF(paths);
            return NULL;
        }
    }
    st_cupti_config config = {.buffer_bytes = (size_t)buffer_bytes, .max_buffers = (size_t)max_buffers};
    char why[600] = "";
    st_cupti_status status;
    Py_BEGIN_ALLOW_THREADS
    status = st_cupti_start(cpaths, (size_t)n, &config, why, sizeof why);
    Py_END_ALLOW_THREADS
    PyMem_Free(cpaths);
    Py_DECREF(paths);
    return Py_BuildValue("(Nss)", PyBool_FromLong(status == ST_CUPTI_OK), st_cupti_status_text(status),
                         status == ST_CUPTI_OK ? "" : why);
}

static PyObject *mod_cupti_flush(PyObject *m, PyObject *args)
{
    (void)m;
    int forced = 1;
    if (!PyArg_ParseTuple(args, "|p", &forced)) {
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    st_cupti_flush(forced);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *mod_cupti_stop(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    Py_BEGIN_ALLOW_THREADS
    st_cupti_stop();
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *mod_cupti_info(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    st_cupti_info info;
    st_cupti_get_info(&info);
    return Py_BuildValue("{sNszsIsNsLsKsKsKsKss}", "active", PyBool_FromLong(st_cupti_active()), "library",
                         info.library, "version", (unsigned)info.version, "own_clock",
                         PyBool_FromLong(info.own_clock), "clock_offset_ns", (long long)info.clock_offset,
                         "buffers_completed", (unsigned long long)info.buffers_completed, "buffers_refused",
                         (unsigned long long)info.buffers_refused, "records", (unsigned long long)info.records,
                         "errors", (unsigned long long)info.errors, "last_error", info.last_error);
}

static PyObject *mod_gpu_set_windows(PyObject *m, PyObject *arg)
{
    (void)m;
    return bind_store_flag(&bind_gpu_windows_enabled, arg);
}

static PyObject *mod_gpu_window_open(PyObject *m, PyObject *args)
{
    (void)m;
    unsigned stage;
    unsigned long name_id;
    unsigned long long t0;
    if (!PyArg_ParseTuple(args, "IkK", &stage, &name_id, &t0)) {
        return NULL;
    }
    if (stage >= ST_STAGE_COUNT) {
        return PyErr_Format(PyExc_ValueError, "stage %u is out of range", stage);
    }
    return PyLong_FromUnsignedLong(st_gpu_window_open((uint8_t)stage, (uint32_t)name_id, t0));
}

static PyObject *mod_gpu_window_close(PyObject *m, PyObject *args)
{
    (void)m;
    unsigned long id;
    unsigned long long t1;
    if (!PyArg_ParseTuple(args, "kK", &id, &t1)) {
        return NULL;
    }
    st_gpu_window_close((uint32_t)id, t1);
    Py_RETURN_NONE;
}

static const char *const copy_names[ST_GPU_COPY_COUNT] = {"htod", "dtoh", "dtod", "htoh", "ptop", "other"};

static PyObject *interned_str(uint32_t id)
{
    size_t len = 0;
    const char *s = id ? st_intern_lookup(id, &len) : NULL;
    return s ? PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "replace") : PyUnicode_FromString("(unnamed)");
}

static PyObject *window_report_dict(const st_gpu_window_report *w)
{
    const st_gpu_totals *t = &w->totals;
    PyObject *copies = PyDict_New();
    for (unsigned d = 0; copies && d < ST_GPU_COPY_COUNT; d++) {
        if (!t->copies[d]) {
            continue;
        }
        PyObject *v = Py_BuildValue("{sKsKsK}", "count", (unsigned long long)t->copies[d], "bytes",
                                    (unsigned long long)t->copy_bytes[d], "ns", (unsigned long long)t->copy_ns[d]);
        if (!v || PyDict_SetItemString(copies, copy_names[d], v) < 0) {
            Py_XDECREF(v);
            Py_CLEAR(copies);
            break;
        }
        Py_DECREF(v);
    }
    PyObject *top = PyList_New((Py_ssize_t)t->n_top);
    for (unsigned k = 0; top && k < t->n_top; k++) {
        PyObject *item = Py_BuildValue("(NKK)", interned_str(t->top[k].name_id), (unsigned long long)t->top[k].count,
                                       (unsigned long long)t->top[k].ns);
        if (!item) {
            Py_CLEAR(top);
            break;
        }
        PyList_SetItem(top, (Py_ssize_t)k, item);
    }
    if (!copies || !top) {
        Py_XDECREF(copies);
        Py_XDECREF(top);
        return NULL;
    }
    return Py_BuildValue(
        "{sIsIsIsIsKsKsKsKsKsKsKsNsKsKsKsNsK}", "window", (unsigned)w->id, "parent", (unsigned)w->parent, "stage",
        (unsigned)w->stage, "name_id", (unsigned)w->name_id, "t0", (unsigned long long)w->t0, "t1",
        (unsigned long long)w->t1, "kernels", (unsigned long long)t->kernels, "kernel_ns",
        (unsigned long long)t->kernel_ns, "busy_ns", (unsigned long long)t->busy_ns, "first_ns",
        (unsigned long long)t->first_ns, "last_ns", (unsigned long long)t->last_ns, "copies", copies, "memsets",
        (unsigned long long)t->memsets, "memset_bytes", (unsigned long long)t->memset_bytes, "memset_ns",
        (unsigned long long)t->memset_ns, "top_kernels", top, "other_kernel_ns",
        (unsigned long long)t->other_kernel_ns);
}

static PyObject *mod_gpu_report(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    size_t n = st_gpu_report(NULL, 0);
    st_gpu_window_report *reports = PyMem_Malloc((n ? n : 1) * sizeof *reports);
    if (!reports) {
        return PyErr_NoMemory();
    }
    n = st_gpu_report(reports, n); /* windows only gain work between the calls: never more than room */
    PyObject *list = PyList_New(0);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *d = window_report_dict(&reports[i]);
        if (!d || PyList_Append(list, d) < 0) {
            Py_XDECREF(d);
            Py_CLEAR(list);
            break;
        }
        Py_DECREF(d);
    }
    PyMem_Free(reports);
    return list;
}

static PyObject *mod_gpu_counters(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    st_gpu_counters c;
    st_gpu_counters_get(&c);
    return Py_BuildValue("{sKsKsKsKsKsK}", "records", (unsigned long long)c.records, "dropped_records",
                         (unsigned long long)c.dropped_records, "dropped_windows",
                         (unsigned long long)c.dropped_windows, "unattributed", (unsigned long long)c.unattributed,
                         "windows", (unsigned long long)c.windows, "detail_dropped",
                         (unsigned long long)st_gpu_detail_dropped());
}

static PyObject *mod_gpu_reset(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    st_gpu_reset();
    Py_RETURN_NONE;
}

static PyObject *mod_gpu_set_window_capacity(PyObject *m, PyObject *arg)
{
    (void)m;
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 1) {
        return n == -1 && PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "capacity must be >= 1");
    }
    st_gpu_set_window_capacity((size_t)n);
    Py_RETURN_NONE;
}

static PyObject *mod_gpu_set_detail(PyObject *m, PyObject *arg)
{
    (void)m;
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n < 0) {
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_ValueError, "capacity must be >= 0");
    }
    st_gpu_set_detail_capacity((size_t)n);
    Py_RETURN_NONE;
}

static const char *const kind_names[ST_GPU_KIND_COUNT] = {"kernel", "memcpy", "memset"};

static PyObject *mod_gpu_detail(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    PyObject *list = PyList_New(0);
    st_gpu_record chunk[256];
    size_t n;
    while (list && (n = st_gpu_drain_detail(chunk, 256)) > 0) {
        for (size_t i = 0; i < n; i++) {
            const st_gpu_record *r = &chunk[i];
            PyObject *item = Py_BuildValue(
                "(sKKIINKs)", kind_names[r->kind < ST_GPU_KIND_COUNT ? r->kind : 0], (unsigned long long)r->start,
                (unsigned long long)r->end, (unsigned)r->device, (unsigned)r->stream,
                r->kind == ST_GPU_KERNEL ? interned_str(r->name_id) : Py_NewRef(Py_None),
                (unsigned long long)r->bytes, r->kind == ST_GPU_MEMCPY ? copy_names[r->copy % ST_GPU_COPY_COUNT] : "");
            if (!item || PyList_Append(list, item) < 0) {
                Py_XDECREF(item);
                Py_CLEAR(list);
                break;
            }
            Py_DECREF(item);
        }
    }
    return list;
}

PyMethodDef bind_gpu_methods[] = {
    {"cupti_start", (PyCFunction)(void (*)(void))mod_cupti_start, METH_VARARGS | METH_KEYWORDS,
     "cupti_start(paths, buffer_bytes=0, max_buffers=0) -> (ok, status, reason): load CUPTI from the\n"
     "first path that opens (once per process) and start kernel/memcpy/memset collection."},
    {"cupti_flush", mod_cupti_flush, METH_VARARGS, "cupti_flush(forced=True): deliver buffered records."},
    {"cupti_stop", mod_cupti_stop, METH_NOARGS, "Stop CUPTI collection (flushes first)."},
    {"cupti_info", mod_cupti_info, METH_NOARGS, "The collector's library, version, clock and counters, and its failed CUPTI calls\n"
     "(errors, last_error: 'call(args): CUPTI's error string')."},
    {"gpu_set_windows", mod_gpu_set_windows, METH_O, "Whether Wrapper spans open GPU attribution windows."},
    {"gpu_window_open", mod_gpu_window_open, METH_VARARGS,
     "gpu_window_open(stage, name_id, t0_ns) -> window id (0 when the table is full)."},
    {"gpu_window_close", mod_gpu_window_close, METH_VARARGS, "gpu_window_close(id, t1_ns)."},
    {"gpu_report", mod_gpu_report, METH_NOARGS,
     "Per window with GPU work (window 0: outside every window): busy/kernel time, top kernels,\n"
     "copies per direction, memsets."},
    {"gpu_counters", mod_gpu_counters, METH_NOARGS, "Records folded in, dropped, unattributed; windows."},
    {"gpu_reset", mod_gpu_reset, METH_NOARGS, "End a collection round: forget windows and aggregates."},
    {"gpu_set_detail", mod_gpu_set_detail, METH_O,
     "Keep up to n records a round for per-kernel trace events (0: aggregates only)."},
    {"gpu_detail", mod_gpu_detail, METH_NOARGS,
     "Drain kept records: [(kind, start_ns, end_ns, device, stream, kernel name or None, bytes, copy)]\n"
     "plus gpu_counters()['detail_dropped']."},
    {"gpu_set_window_capacity", mod_gpu_set_window_capacity, METH_O,
     "Window table capacity for the next collection round."},
    {NULL},
};
