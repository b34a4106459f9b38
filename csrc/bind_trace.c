/* bind_trace.c: the trace writer, exposed to Python: TraceWriter (a Chrome
 * Trace Event JSON file streamed into a temporary name and published whole)
 * and json_escape, the writer's one string escaper. */
#include "bind.h"

#include "st_json.h"
#include "st_sink.h"
#include "st_trace.h"

// --- TraceWriter ------------------------------------------------------------

typedef struct {
    PyObject_HEAD
    st_trace_writer w;
    PyObject *path;
    int busy; /* a call is writing with the GIL released */
} TraceWriterObject;

static int writer_ready(TraceWriterObject *self)
{
    if (!self->w.open) {
        PyErr_Format(PyExc_ValueError, "trace writer for %R is closed", self->path);
        return 0;
    }
    if (self->busy) {
        PyErr_Format(PyExc_RuntimeError, "trace writer for %R is in use by another thread",
                     self->path);
        return 0;
    }
    return 1;
}

static PyObject *writer_error(TraceWriterObject *self, st_trace_status status, int err)
{
    switch (status) {
    case ST_TRACE_EXISTS:
        PyErr_Format(PyExc_FileExistsError, "trace %R already exists; not overwritten",
                     self->path);
        break;
    case ST_TRACE_NO_MEMORY:
        PyErr_NoMemory();
        break;
    case ST_TRACE_BAD_STATE:
        PyErr_Format(PyExc_ValueError, "trace writer for %R is closed", self->path);
        break;
    default: {
        const char *what = status == ST_TRACE_OPEN_FAILED    ? "creating the temporary file for"
                           : status == ST_TRACE_RENAME_FAILED ? "publishing"
                                                              : "writing";
        PyErr_Format(PyExc_OSError, "%s trace %R failed: %s", what, self->path,
                     strerror(err));
    }
    }
    return NULL;
}

static PyObject *writer_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"path", NULL};
    PyObject *path;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&", kwlist, PyUnicode_FSConverter, &path)) {
        return NULL;
    }
    allocfunc alloc = (allocfunc)PyType_GetSlot(tp, Py_tp_alloc);
    TraceWriterObject *self = (TraceWriterObject *)alloc(tp, 0);
    if (!self) {
        Py_DECREF(path);
        return NULL;
    }
    self->path = PyUnicode_DecodeFSDefault(PyBytes_AsString(path));
    self->w.fd = -1;
    st_trace_status status;
    Py_BEGIN_ALLOW_THREADS
    status = st_trace_open(&self->w, PyBytes_AsString(path));
    Py_END_ALLOW_THREADS
    Py_DECREF(path);
    if (!self->path || status != ST_TRACE_OK) {
        if (self->path) {
            writer_error(self, status, self->w.err);
        }
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *writer_write_batch(PyObject *op, PyObject *args)
{
    TraceWriterObject *self = (TraceWriterObject *)op;
    PyObject *batch;
    unsigned long pid = 0;
    unsigned long long epoch = 0;
    module_state *st = bind_state_of_type(Py_TYPE(op));
    if (!PyArg_ParseTuple(args, "O!|kK", st->event_batch_type, &batch, &pid, &epoch) ||
        !writer_ready(self)) {
        return NULL;
    }
    EventBatchObject *b = (EventBatchObject *)batch;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    st_trace_events(&self->w, b->batch.events, b->batch.n, b->batch.args, (uint32_t)pid, epoch);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    Py_RETURN_NONE;
}

static PyObject *writer_write_raw(PyObject *op, PyObject *arg)
{
    TraceWriterObject *self = (TraceWriterObject *)op;
    Py_ssize_t len;
    const char *s = PyUnicode_Check(arg) ? PyUnicode_AsUTF8AndSize(arg, &len) : NULL;
    if (!s) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "write_raw() takes one JSON object as str");
        }
        return NULL;
    }
    if (!writer_ready(self)) {
        return NULL;
    }
    if (len < 2 || s[0] != '{' || s[len - 1] != '}') {
        PyErr_SetString(PyExc_ValueError, "write_raw() takes one JSON object ('{...}')");
        return NULL;
    }
    st_trace_raw(&self->w, s, (size_t)len);
    Py_RETURN_NONE;
}

static PyObject *writer_commit(PyObject *op, PyObject *args)
{
    TraceWriterObject *self = (TraceWriterObject *)op;
    PyObject *other = Py_None;
    if (!PyArg_ParseTuple(args, "|O", &other) || !writer_ready(self)) {
        return NULL;
    }
    const char *s = NULL;
    Py_ssize_t len = 0;
    if (other != Py_None) {
        s = PyUnicode_Check(other) ? PyUnicode_AsUTF8AndSize(other, &len) : NULL;
        if (!s) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "commit() takes a JSON object as str");
            }
            return NULL;
        }
    }
    st_trace_status status;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    status = st_trace_commit(&self->w, s, (size_t)len);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (status != ST_TRACE_OK) {
        return writer_error(self, status, self->w.err);
    }
    Py_RETURN_NONE;
}

static PyObject *writer_abort(PyObject *op, PyObject *unused)
{
    (void)unused;
    TraceWriterObject *self = (TraceWriterObject *)op;
    if (!self->busy) {
        st_trace_abort(&self->w);
    }
    Py_RETURN_NONE;
}

static PyObject *writer_enter(PyObject *op, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(op);
}

static PyObject *writer_exit(PyObject *op, PyObject *args)
{
    (void)args;
    /* leaving the block without commit() means the trace is incomplete */
    return writer_abort(op, NULL);
}

static PyObject *writer_get_events(PyObject *op, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(((TraceWriterObject *)op)->w.events);
}

static PyObject *writer_get_closed(PyObject *op, void *closure)
{
    (void)closure;
    return PyBool_FromLong(!((TraceWriterObject *)op)->w.open);
}

static void writer_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    TraceWriterObject *self = (TraceWriterObject *)op;
    st_trace_abort(&self->w);
    Py_XDECREF(self->path);
    freefunc free_fn = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    free_fn(op);
    Py_DECREF(tp);
}

static PyMethodDef writer_methods[] = {
    {"write_batch", writer_write_batch, METH_VARARGS,
     "write_batch(batch, pid=0, epoch_ns=0): append drained events."},
    {"write_raw", writer_write_raw, METH_O,
     "write_raw(json_object_str): append one pre-serialized event."},
    {"commit", writer_commit, METH_VARARGS,
     "commit(other_data_json=None): finish, sync and publish the trace; never overwrites."},
    {"abort", writer_abort, METH_NOARGS, "Discard the trace; nothing is left on disk."},
    {"__enter__", writer_enter, METH_NOARGS, NULL},
    {"__exit__", writer_exit, METH_VARARGS, NULL},
    {NULL},
};

static PyGetSetDef writer_getset[] = {
    {"events", writer_get_events, NULL, "events written so far", NULL},
    {"closed", writer_get_closed, NULL, "True after commit() or abort()", NULL},
    {NULL},
};

static PyType_Slot writer_slots[] = {
    {Py_tp_doc, "TraceWriter(path): stream a Chrome Trace Event JSON file into a temporary\n"
                "file; commit() publishes it whole under path, abort() leaves nothing."},
    {Py_tp_new, writer_new},
    {Py_tp_methods, writer_methods},
    {Py_tp_getset, writer_getset},
    {Py_tp_dealloc, writer_dealloc},
    {0, NULL},
};

static PyType_Spec writer_spec = {
    .name = "stagetrace._native.TraceWriter",
    .basicsize = sizeof(TraceWriterObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = writer_slots,
};

// --- Module functions -------------------------------------------------------------

static PyObject *mod_json_escape(PyObject *m, PyObject *arg)
{
    (void)m;
    PyObject *bytes;
    if (PyUnicode_Check(arg)) {
        bytes = PyUnicode_AsEncodedString(arg, "utf-8", "surrogatepass");
    } else if (PyBytes_Check(arg)) {
        bytes = Py_NewRef(arg);
    } else {
        PyErr_SetString(PyExc_TypeError, "json_escape() takes str or bytes");
        return NULL;
    }
    if (!bytes) {
        return NULL;
    }
    st_sink sink;
    if (st_sink_init(&sink, -1, (size_t)PyBytes_Size(bytes) + 16) != 0) {
        Py_DECREF(bytes);
        return PyErr_NoMemory();
    }
    st_json_write_string(&sink, PyBytes_AsString(bytes), (size_t)PyBytes_Size(bytes));
    Py_DECREF(bytes);
    PyObject *r = sink.failed ? PyErr_NoMemory()
                              : PyUnicode_DecodeUTF8(sink.buf, (Py_ssize_t)sink.len, "strict");
    st_sink_free(&sink);
    return r;
}

PyMethodDef bind_trace_methods[] = {
    {"json_escape", mod_json_escape, METH_O,
     "The JSON string literal (quoted) for str or bytes, as the trace writer writes it."},
    {NULL},
};

int bind_trace_init(PyObject *m, module_state *st)
{
    if (bind_add_type(m, &writer_spec, &st->trace_writer_type) < 0 ||
        PyModule_AddIntConstant(m, "TRACE_FORMAT_VERSION", ST_TRACE_FORMAT_VERSION) < 0) {
        return -1;
    }
    return 0;
}
