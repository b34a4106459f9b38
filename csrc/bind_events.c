/* bind_events.c: the clock and the per-thread event buffers, exposed to
 * Python: now_ns, the fake clock, record, drain and the EventBatch it returns,
 * capacities and drop counters. */
#include "bind.h"

#include "st_clock.h"
#include "st_events.h"
#include "st_intern.h"
#include "st_nvtx.h"
#include "st_stage.h"

// --- EventBatch: drained events, owned by C --------------------------------------

static PyObject *event_tuple(const st_event *e)
{
    return Py_BuildValue("(KKIIIIII)", (unsigned long long)e->t_begin_ns,
                         (unsigned long long)e->t_end_ns, e->name_id, e->detail_id, e->tid,
                         (unsigned)e->stage, (unsigned)e->outcome, (unsigned)e->kind);
}

static Py_ssize_t batch_len(PyObject *op)
{
    return (Py_ssize_t)((EventBatchObject *)op)->n;
}

static PyObject *batch_item(PyObject *op, Py_ssize_t i)
{
    EventBatchObject *self = (EventBatchObject *)op;
    if (i < 0 || (size_t)i >= self->n) {
        PyErr_SetString(PyExc_IndexError, "event index out of range");
        return NULL;
    }
    return event_tuple(&self->events[i]);
}

static PyObject *batch_tolist(PyObject *op, PyObject *unused)
{
    (void)unused;
    EventBatchObject *self = (EventBatchObject *)op;
    PyObject *list = PyList_New((Py_ssize_t)self->n);
    if (!list) {
        return NULL;
    }
    for (size_t i = 0; i < self->n; i++) {
        PyObject *t = event_tuple(&self->events[i]);
        if (!t) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SetItem(list, (Py_ssize_t)i, t);
    }
    return list;
}

static void batch_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    free(((EventBatchObject *)op)->events);
    freefunc free_fn = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    free_fn(op);
    Py_DECREF(tp);
}

static PyMethodDef batch_methods[] = {
    {"tolist", batch_tolist, METH_NOARGS,
     "Events as tuples (t_begin_ns, t_end_ns, name_id, detail_id, tid, stage, outcome, kind)."},
    {NULL},
};

static PyType_Slot batch_slots[] = {
    {Py_tp_doc, "Events moved out of the buffers by drain(); read-only."},
    {Py_sq_length, batch_len},
    {Py_sq_item, batch_item},
    {Py_tp_methods, batch_methods},
    {Py_tp_dealloc, batch_dealloc},
    {0, NULL},
};

static PyType_Spec batch_spec = {
    .name = "stagetrace._native.EventBatch",
    .basicsize = sizeof(EventBatchObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = batch_slots,
};

// --- Module functions -------------------------------------------------------------

static PyObject *mod_now_ns(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return PyLong_FromUnsignedLongLong(st_clock_now_ns());
}

static PyObject *mod_record(PyObject *m, PyObject *args, PyObject *kwargs)
{
    (void)m;
    static char *kwlist[] = {"stage", "name_id", "detail_id", "t_begin_ns", "t_end_ns",
                             "outcome", "instant", NULL};
    long stage, outcome = ST_OUTCOME_OK;
    unsigned int name_id, detail_id;
    unsigned long long t0, t1;
    int instant = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "lIIKK|lp", kwlist, &stage, &name_id,
                                     &detail_id, &t0, &t1, &outcome, &instant) ||
        bind_check_stage(stage) < 0 || bind_check_outcome(outcome) < 0) {
        return NULL;
    }
    if (t1 < t0) {
        PyErr_Format(PyExc_ValueError, "t_end_ns (%llu) is before t_begin_ns (%llu)", t1, t0);
        return NULL;
    }
    st_event ev = {.t_begin_ns = t0, .t_end_ns = instant ? t0 : t1, .name_id = name_id,
                   .detail_id = detail_id, .stage = (uint16_t)stage,
                   .outcome = (uint8_t)outcome,
                   .kind = instant ? ST_EVENT_INSTANT : ST_EVENT_SPAN};
    if (instant) {
        st_nvtx_mark((unsigned)stage, name_id, bind_detail_payload(detail_id));
    }
    return PyBool_FromLong(st_events_append(&ev));
}

static PyObject *mod_drain(PyObject *m, PyObject *unused)
{
    (void)unused;
    module_state *st = PyModule_GetState(m);
    st_event *events;
    size_t n;
    st_events_status status;
    Py_BEGIN_ALLOW_THREADS
    status = st_events_drain(&events, &n);
    Py_END_ALLOW_THREADS
    if (status != ST_EVENTS_OK) {
        return PyErr_NoMemory();
    }
    allocfunc alloc = (allocfunc)PyType_GetSlot(st->event_batch_type, Py_tp_alloc);
    EventBatchObject *b = (EventBatchObject *)alloc(st->event_batch_type, 0);
    if (!b) {
        free(events);
        return NULL;
    }
    b->events = events;
    b->n = n;
    return (PyObject *)b;
}

static PyObject *mod_dropped(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return PyLong_FromUnsignedLongLong(st_events_dropped());
}

static PyObject *mod_stats(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    uint32_t buffers, capacity;
    st_events_stats(&buffers, &capacity);
    return Py_BuildValue("{sIsIsKsIsK}", "buffers", buffers, "capacity", capacity, "dropped",
                         (unsigned long long)st_events_dropped(), "names", st_intern_count(),
                         "hook_errors", (unsigned long long)bind_hook_error_count());
}

static PyObject *mod_set_buffer_capacity(PyObject *m, PyObject *arg)
{
    (void)m;
    int overflow;
    long long cap = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (cap == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (overflow || cap <= 0 || cap > ST_EVENTS_MAX_CAPACITY ||
        st_events_set_capacity((uint32_t)cap) != ST_EVENTS_OK) {
        PyErr_Format(PyExc_ValueError, "buffer capacity %R is not within 1..%u", arg,
                     ST_EVENTS_MAX_CAPACITY);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *mod_set_fake_clock(PyObject *m, PyObject *args)
{
    (void)m;
    PyObject *start = Py_None;
    unsigned long long step = 1000;
    if (!PyArg_ParseTuple(args, "O|K", &start, &step)) {
        return NULL;
    }
    if (start == Py_None) {
        st_clock_set_real();
        Py_RETURN_NONE;
    }
    unsigned long long s = PyLong_AsUnsignedLongLong(start);
    if (PyErr_Occurred()) {
        return NULL;
    }
    st_clock_set_fake(s, step);
    Py_RETURN_NONE;
}

/* Store the truth of arg into flag: None, or NULL with an exception set. */
PyMethodDef bind_events_methods[] = {
    {"now_ns", mod_now_ns, METH_NOARGS, "Monotonic clock in nanoseconds (the trace clock)."},
    {"record", (PyCFunction)(void (*)(void))mod_record, METH_VARARGS | METH_KEYWORDS,
     "record(stage, name_id, detail_id, t_begin_ns, t_end_ns, outcome=0, instant=False)\n"
     "-> True if stored, False if dropped."},
    {"drain", mod_drain, METH_NOARGS, "Move all buffered events into an EventBatch."},
    {"dropped", mod_dropped, METH_NOARGS, "Events dropped so far (all threads)."},
    {"stats", mod_stats, METH_NOARGS, "Buffer, name and hook-error counters."},
    {"set_buffer_capacity", mod_set_buffer_capacity, METH_O,
     "Capacity of buffers created from now on (rounded up to a power of two)."},
    {"set_fake_clock", mod_set_fake_clock, METH_VARARGS,
     "set_fake_clock(start_ns, step_ns=1000) for tests; set_fake_clock(None) restores."},
    {NULL},
};

int bind_events_init(PyObject *m, module_state *st)
{
    return bind_add_type(m, &batch_spec, &st->event_batch_type);
}
