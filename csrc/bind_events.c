/* bind_events.c: the clock and the per-thread event buffers, exposed to
 * Python: now_ns, the fake clock, record (every kind of event, with args),
 * drain and the EventBatch it returns, capacities and drop counters. */
#include "bind.h"

#include "st_clock.h"
#include "st_events.h"
#include "st_intern.h"
#include "st_nvtx.h"
#include "st_stage.h"
#include "st_stagespan.h"

#include <stdio.h>
#include <stdlib.h>

// --- EventBatch: drained events, owned by C --------------------------------------

/* An event's args JSON text as str, or None. */
static PyObject *args_text(const EventBatchObject *self, const st_event *e)
{
    if (!e->args_len) {
        Py_RETURN_NONE;
    }
    return PyUnicode_DecodeUTF8(self->batch.args + e->args_off, (Py_ssize_t)e->args_len,
                                "replace");
}

static PyObject *event_tuple(const EventBatchObject *self, const st_event *e)
{
    return Py_BuildValue("(KKIIIIIINI)", (unsigned long long)e->t_begin_ns,
                         (unsigned long long)e->t_end_ns, e->name_id, e->detail_id, e->tid,
                         (unsigned)e->stage, (unsigned)e->outcome, (unsigned)e->kind,
                         args_text(self, e), e->cat_id);
}

static Py_ssize_t batch_len(PyObject *op)
{
    return (Py_ssize_t)((EventBatchObject *)op)->batch.n;
}

static PyObject *batch_item(PyObject *op, Py_ssize_t i)
{
    EventBatchObject *self = (EventBatchObject *)op;
    if (i < 0 || (size_t)i >= self->batch.n) {
        PyErr_SetString(PyExc_IndexError, "event index out of range");
        return NULL;
    }
    return event_tuple(self, &self->batch.events[i]);
}

static PyObject *batch_tolist(PyObject *op, PyObject *unused)
{
    (void)unused;
    EventBatchObject *self = (EventBatchObject *)op;
    PyObject *list = PyList_New((Py_ssize_t)self->batch.n);
    if (!list) {
        return NULL;
    }
    for (size_t i = 0; i < self->batch.n; i++) {
        PyObject *t = event_tuple(self, &self->batch.events[i]);
        if (!t) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SetItem(list, (Py_ssize_t)i, t);
    }
    return list;
}

static int compare_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static PyObject *batch_tids(PyObject *op, PyObject *unused)
{
    (void)unused;
    EventBatchObject *self = (EventBatchObject *)op;
    size_t n = self->batch.n;
    uint32_t *tids = PyMem_Malloc((n ? n : 1) * sizeof *tids);
    if (!tids) {
        return PyErr_NoMemory();
    }
    for (size_t i = 0; i < n; i++) {
        tids[i] = self->batch.events[i].tid;
    }
    qsort(tids, n, sizeof *tids, compare_u32);
    PyObject *list = PyList_New(0);
    for (size_t i = 0; list && i < n; i++) {
        if (i && tids[i] == tids[i - 1]) {
            continue;
        }
        PyObject *v = PyLong_FromUnsignedLong(tids[i]);
        if (!v || PyList_Append(list, v) < 0) {
            Py_CLEAR(list);
        }
        Py_XDECREF(v);
    }
    PyMem_Free(tids);
    return list;
}

/* ns / 1000 as the float json.loads gives for the writer's "<us>.<3 digits>":
 * both are the double nearest the exact quotient (IEEE division of exact
 * operands rounds correctly; beyond 2^53 ns the text itself is parsed). */
static PyObject *us_float(uint64_t ns)
{
    if (ns < (1ull << 53)) {
        return PyFloat_FromDouble((double)ns / 1000.0);
    }
    char text[32];
    snprintf(text, sizeof text, "%llu.%03u", (unsigned long long)(ns / 1000),
             (unsigned)(ns % 1000));
    double v = PyOS_string_to_double(text, NULL, NULL);
    return v == -1.0 && PyErr_Occurred() ? NULL : PyFloat_FromDouble(v);
}

/* What events() builds with, made once per call. */
typedef struct {
    PyObject *keys[11]; /* ph s cat name ts dur pid tid args outcome + spare */
    PyObject *ph[ST_EVENT_KIND_COUNT];
    PyObject *thread_scope; /* "t" */
    PyObject *stages[ST_STAGE_COUNT];
    PyObject *detail_keys[ST_STAGE_COUNT];
    PyObject *outcomes[ST_OUTCOME_COUNT];
    PyObject **names; /* by intern id, decoded on first use */
    uint32_t n_names;
    PyObject *unknown; /* "?" */
    PyObject *loads;   /* json.loads */
    PyObject *pid;
} event_dicts;

enum { K_PH, K_S, K_CAT, K_NAME, K_TS, K_DUR, K_PID, K_TID, K_ARGS, K_OUTCOME };

static void event_dicts_free(event_dicts *d)
{
    for (size_t i = 0; i < sizeof d->keys / sizeof d->keys[0]; i++) {
        Py_XDECREF(d->keys[i]);
    }
    for (int i = 0; i < ST_EVENT_KIND_COUNT; i++) {
        Py_XDECREF(d->ph[i]);
    }
    for (int i = 0; i < ST_STAGE_COUNT; i++) {
        Py_XDECREF(d->stages[i]);
        Py_XDECREF(d->detail_keys[i]);
    }
    for (int i = 0; i < ST_OUTCOME_COUNT; i++) {
        Py_XDECREF(d->outcomes[i]);
    }
    for (uint32_t i = 0; d->names && i < d->n_names; i++) {
        Py_XDECREF(d->names[i]);
    }
    PyMem_Free(d->names);
    Py_XDECREF(d->thread_scope);
    Py_XDECREF(d->unknown);
    Py_XDECREF(d->loads);
    Py_XDECREF(d->pid);
}

static int event_dicts_init(event_dicts *d, module_state *st, unsigned long pid)
{
    static const char *const keys[] = {"ph", "s", "cat", "name", "ts", "dur",
                                       "pid", "tid", "args", "outcome"};
    static const char *const ph[ST_EVENT_KIND_COUNT] = {"X", "i", "C", "M"};
    memset(d, 0, sizeof *d);
    int bad = 0;
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        bad |= !(d->keys[i] = PyUnicode_InternFromString(keys[i]));
    }
    for (int i = 0; i < ST_EVENT_KIND_COUNT; i++) {
        bad |= !(d->ph[i] = PyUnicode_InternFromString(ph[i]));
    }
    for (int i = 0; i < ST_STAGE_COUNT; i++) {
        bad |= !(d->stages[i] = PyUnicode_FromString(st_stage_name((unsigned)i)));
        bad |= !(d->detail_keys[i] = PyUnicode_FromString(st_stage_detail_key((unsigned)i)));
    }
    for (int i = 0; i < ST_OUTCOME_COUNT; i++) {
        bad |= !(d->outcomes[i] = PyUnicode_FromString(st_outcome_name((unsigned)i)));
    }
    d->n_names = st_intern_count();
    d->names = PyMem_Calloc(d->n_names, sizeof *d->names);
    bad |= !(d->thread_scope = PyUnicode_InternFromString("t"));
    bad |= !(d->unknown = PyUnicode_InternFromString("?"));
    bad |= !(d->pid = PyLong_FromUnsignedLong(pid));
    d->loads = Py_NewRef(st->json_loads);
    if (!d->names && !bad) {
        PyErr_NoMemory();
        bad = 1;
    }
    return bad ? -1 : 0;
}

/* A borrowed str for an intern id as the writer writes it ("?" when unknown);
 * NULL with an exception set. */
static PyObject *name_str(event_dicts *d, uint32_t id)
{
    if (id >= d->n_names) {
        size_t len;
        if (!st_intern_lookup(id, &len)) {
            return d->unknown;
        }
        /* interned after events() began: not cached */
        PyErr_SetString(PyExc_RuntimeError, "intern table changed while building events");
        return NULL;
    }
    if (!d->names[id]) {
        size_t len;
        const char *s = st_intern_lookup(id, &len);
        d->names[id] = PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "replace");
    }
    return d->names[id];
}

/* Set key (an index into d->keys) to value in dict, stealing value. */
static int set_stolen(PyObject *dict, event_dicts *d, int key, PyObject *value)
{
    if (!value) {
        return -1;
    }
    int r = PyDict_SetItem(dict, d->keys[key], value);
    Py_DECREF(value);
    return r;
}

static PyObject *event_dict(const EventBatchObject *self, event_dicts *d, const st_event *e,
                            uint64_t epoch_ns)
{
    unsigned kind = e->kind < ST_EVENT_KIND_COUNT ? e->kind : ST_EVENT_SPAN;
    unsigned stage = e->stage < ST_STAGE_COUNT ? e->stage : ST_STAGE_OTHER;
    PyObject *event = PyDict_New(), *args = NULL;
    if (!event || PyDict_SetItem(event, d->keys[K_PH], d->ph[kind]) < 0) {
        goto error;
    }
    if (kind == ST_EVENT_INSTANT && PyDict_SetItem(event, d->keys[K_S], d->thread_scope) < 0) {
        goto error;
    }
    if (kind != ST_EVENT_METADATA) {
        PyObject *cat = e->cat_id ? name_str(d, e->cat_id) : d->stages[stage];
        if (!cat || PyDict_SetItem(event, d->keys[K_CAT], cat) < 0) {
            goto error;
        }
    }
    PyObject *name = name_str(d, e->name_id);
    if (!name || PyDict_SetItem(event, d->keys[K_NAME], name) < 0) {
        goto error;
    }
    uint64_t t0 = e->t_begin_ns > epoch_ns ? e->t_begin_ns - epoch_ns : 0;
    if (kind != ST_EVENT_METADATA && set_stolen(event, d, K_TS, us_float(t0)) < 0) {
        goto error;
    }
    if (kind == ST_EVENT_SPAN &&
        set_stolen(event, d, K_DUR,
                   us_float(e->t_end_ns >= e->t_begin_ns ? e->t_end_ns - e->t_begin_ns : 0)) < 0) {
        goto error;
    }
    if (PyDict_SetItem(event, d->keys[K_PID], d->pid) < 0 ||
        set_stolen(event, d, K_TID, PyLong_FromUnsignedLong(e->tid)) < 0) {
        goto error;
    }
    PyObject *recorded = NULL;
    if (e->args_len) {
        PyObject *text = args_text(self, e);
        recorded = text ? PyObject_CallFunctionObjArgs(d->loads, text, NULL) : NULL;
        Py_XDECREF(text);
        if (!recorded) {
            goto error;
        }
    }
    if (kind == ST_EVENT_SPAN || kind == ST_EVENT_INSTANT) {
        args = PyDict_New();
        PyObject *outcome = e->outcome < ST_OUTCOME_COUNT ? d->outcomes[e->outcome] : d->outcomes[0];
        PyObject *detail = e->detail_id ? name_str(d, e->detail_id) : NULL;
        if (!args || PyDict_SetItem(args, d->keys[K_OUTCOME], outcome) < 0 ||
            (e->detail_id && (!detail || PyDict_SetItem(args, d->detail_keys[stage], detail) < 0)) ||
            (recorded && PyDict_Update(args, recorded) < 0)) {
            Py_XDECREF(recorded);
            goto error;
        }
        Py_XDECREF(recorded);
    } else {
        args = recorded ? recorded : PyDict_New();
    }
    if (set_stolen(event, d, K_ARGS, args) < 0) {
        args = NULL; /* stolen */
        goto error;
    }
    return event;
error:
    Py_XDECREF(event);
    return NULL;
}

static PyObject *batch_events(PyObject *op, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"pid", "epoch_ns", NULL};
    EventBatchObject *self = (EventBatchObject *)op;
    unsigned long pid = 0;
    unsigned long long epoch = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|kK", kwlist, &pid, &epoch)) {
        return NULL;
    }
    event_dicts d;
    PyObject *list = NULL;
    if (event_dicts_init(&d, bind_state_of_type(Py_TYPE(op)), pid) < 0) {
        goto error;
    }
    list = PyList_New((Py_ssize_t)self->batch.n);
    for (size_t i = 0; list && i < self->batch.n; i++) {
        PyObject *event = event_dict(self, &d, &self->batch.events[i], epoch);
        if (!event) {
            goto error;
        }
        PyList_SetItem(list, (Py_ssize_t)i, event);
    }
    event_dicts_free(&d);
    return list;
error:
    Py_XDECREF(list);
    event_dicts_free(&d);
    return NULL;
}

static void batch_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    st_events_batch_free(&((EventBatchObject *)op)->batch);
    freefunc free_fn = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    free_fn(op);
    Py_DECREF(tp);
}

static PyMethodDef batch_methods[] = {
    {"tolist", batch_tolist, METH_NOARGS,
     "Events as tuples (t_begin_ns, t_end_ns, name_id, detail_id, tid, stage, outcome, kind,\n"
     "args, cat_id): args the recorded args as JSON object text, or None."},
    {"events", (PyCFunction)(void (*)(void))batch_events, METH_VARARGS | METH_KEYWORDS,
     "events(pid=0, epoch_ns=0) -> [dict]: the Chrome trace events exactly as\n"
     "TraceWriter.write_batch(batch, pid, epoch_ns) writes them (json.loads of the file\n"
     "gives the same dicts): names and categories resolved, ts/dur in microseconds as\n"
     "floats, args parsed."},
    {"tids", batch_tids, METH_NOARGS, "The distinct tids (tracks) of the events, sorted."},
    {NULL},
};

PyDoc_STRVAR(batch_doc,
             "Events moved out of the buffers by drain(); read-only. A sequence of tuples\n"
             "(t_begin_ns, t_end_ns, name_id, detail_id, tid, stage, outcome, kind, args, cat_id):\n"
             "kind one of EVENT_SPAN, EVENT_INSTANT, EVENT_COUNTER, EVENT_METADATA; args the\n"
             "recorded args as JSON object text, or None; cat_id 0 for the stage's name.");

static PyType_Slot batch_slots[] = {
    {Py_tp_doc, (void *)batch_doc},
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
    static char *kwlist[] = {"stage",   "name_id", "detail_id", "t_begin_ns", "t_end_ns", "outcome",
                             "instant", "args",    "cat_id",    "tid",        "kind",     NULL};
    long stage, outcome = ST_OUTCOME_OK;
    unsigned int name_id, detail_id, cat_id = 0, tid = 0;
    unsigned long long t0, t1;
    int instant = 0;
    PyObject *event_args = Py_None, *kind_arg = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "lIIKK|lpOIIO", kwlist, &stage, &name_id,
                                     &detail_id, &t0, &t1, &outcome, &instant, &event_args,
                                     &cat_id, &tid, &kind_arg) ||
        bind_check_stage(stage) < 0 || bind_check_outcome(outcome) < 0) {
        return NULL;
    }
    long kind = instant ? ST_EVENT_INSTANT : ST_EVENT_SPAN;
    if (kind_arg != Py_None) {
        kind = PyLong_AsLong(kind_arg);
        if (kind == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (kind < 0 || kind >= ST_EVENT_KIND_COUNT || (instant && kind != ST_EVENT_INSTANT)) {
            PyErr_Format(PyExc_ValueError, "kind %ld is not an EVENT_* constant%s", kind,
                         instant ? " agreeing with instant=True" : "");
            return NULL;
        }
    }
    if (t1 < t0) {
        PyErr_Format(PyExc_ValueError, "t_end_ns (%llu) is before t_begin_ns (%llu)", t1, t0);
        return NULL;
    }
    bind_args_text text;
    if (bind_args_serialize(event_args, (unsigned)kind, (unsigned)stage, detail_id, &text) < 0) {
        return NULL;
    }
    st_event ev = {.t_begin_ns = t0, .t_end_ns = kind == ST_EVENT_SPAN ? t1 : t0,
                   .name_id = name_id, .detail_id = detail_id, .tid = tid, .cat_id = cat_id,
                   .stage = (uint16_t)stage, .outcome = (uint8_t)outcome, .kind = (uint8_t)kind};
    if (kind == ST_EVENT_INSTANT) {
        st_nvtx_mark((unsigned)stage, name_id, bind_detail_payload(detail_id));
    }
    st_events_stored stored = st_events_append_args(&ev, text.text, text.lost ? 1 : text.len);
    bind_args_free(&text);
    return PyBool_FromLong(stored != ST_EVENTS_DROPPED);
}

static PyObject *mod_drain(PyObject *m, PyObject *unused)
{
    (void)unused;
    module_state *st = PyModule_GetState(m);
    st_events_batch batch;
    st_events_status status;
    /* The GIL stays held: a drain is a few memcpys, and giving the GIL up on the prompt worker
     * hands it to the writer thread for a whole switch interval (5 ms) before the worker gets it back. */
    status = st_events_drain(&batch);
    if (status != ST_EVENTS_OK) {
        return PyErr_NoMemory();
    }
    allocfunc alloc = (allocfunc)PyType_GetSlot(st->event_batch_type, Py_tp_alloc);
    EventBatchObject *b = (EventBatchObject *)alloc(st->event_batch_type, 0);
    if (!b) {
        st_events_batch_free(&batch);
        return NULL;
    }
    b->batch = batch;
    return (PyObject *)b;
}

static PyObject *mod_dropped(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return PyLong_FromUnsignedLongLong(st_events_dropped());
}

static PyObject *mod_args_dropped(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return PyLong_FromUnsignedLongLong(st_events_args_dropped());
}

static PyObject *mod_stats(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    uint32_t buffers, capacity;
    st_events_stats(&buffers, &capacity);
    return Py_BuildValue("{sIsIsKsKsIsKsK}", "buffers", buffers, "capacity", capacity,
                         "dropped", (unsigned long long)st_events_dropped(), "args_dropped",
                         (unsigned long long)st_events_args_dropped(), "names", st_intern_count(),
                         "hook_errors", (unsigned long long)bind_hook_error_count(),
                         "stage_tokens_rejected", (unsigned long long)st_stagespan_rejected());
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

PyMethodDef bind_events_methods[] = {
    {"now_ns", mod_now_ns, METH_NOARGS, "Monotonic clock in nanoseconds (the trace clock)."},
    {"record", (PyCFunction)(void (*)(void))mod_record, METH_VARARGS | METH_KEYWORDS,
     "record(stage, name_id, detail_id, t_begin_ns, t_end_ns, outcome=0, instant=False,\n"
     "       args=None, cat_id=0, tid=0, kind=None) -> True if stored, False if dropped.\n"
     "kind: EVENT_SPAN, EVENT_INSTANT, EVENT_COUNTER (args are the series) or EVENT_METADATA\n"
     "(name e.g. 'thread_name', args e.g. {'name': ...}); None: EVENT_INSTANT if instant else\n"
     "EVENT_SPAN. Only a span keeps t_end_ns. args: a dict, serialized now to JSON (str keys,\n"
     "others through str(); None, bool, int, float, str, bytes, list, tuple, dict nested up to\n"
     "8 deep, anything else as str(value)); a span's or instant's 'outcome' and detail key\n"
     "come from outcome and detail_id, not args. When the thread's args arena is full the\n"
     "event is kept without args (args_dropped()). cat_id: interned category, 0 for the\n"
     "stage's name. tid: the track (a virtual one such as 0x7fff0000 + n), 0 for this thread."},
    {"drain", mod_drain, METH_NOARGS, "Move all buffered events into an EventBatch."},
    {"dropped", mod_dropped, METH_NOARGS, "Events dropped so far (all threads)."},
    {"args_dropped", mod_args_dropped, METH_NOARGS,
     "Events stored without their args so far (all threads)."},
    {"stats", mod_stats, METH_NOARGS,
     "Buffer, drop, name, hook-error and stage-token counters."},
    {"set_buffer_capacity", mod_set_buffer_capacity, METH_O,
     "Capacity of buffers created from now on (rounded up to a power of two)."},
    {"set_fake_clock", mod_set_fake_clock, METH_VARARGS,
     "set_fake_clock(start_ns, step_ns=1000) for tests; set_fake_clock(None) restores."},
    {NULL},
};

int bind_events_init(PyObject *m, module_state *st)
{
    PyObject *json = PyImport_ImportModule("json");
    if (!json) {
        return -1;
    }
    st->json_loads = PyObject_GetAttrString(json, "loads");
    Py_DECREF(json);
    if (!st->json_loads || bind_add_type(m, &batch_spec, &st->event_batch_type) < 0 ||
        PyModule_AddIntConstant(m, "EVENT_SPAN", ST_EVENT_SPAN) < 0 ||
        PyModule_AddIntConstant(m, "EVENT_INSTANT", ST_EVENT_INSTANT) < 0 ||
        PyModule_AddIntConstant(m, "EVENT_COUNTER", ST_EVENT_COUNTER) < 0 ||
        PyModule_AddIntConstant(m, "EVENT_METADATA", ST_EVENT_METADATA) < 0) {
        return -1;
    }
    return 0;
}
