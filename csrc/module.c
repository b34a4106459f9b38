/* module.c: the Python face of the StageTrace core, and the only file that
 * speaks the Python C API. Everything it exposes is process-wide (event
 * buffers, intern table, NVTX domain), so the module does not support
 * multiple interpreters; loading it twice in one interpreter (under two
 * package names) is fine and shares that state.
 *
 * Built with Py_LIMITED_API (abi3, CPython >= 3.10) by default; a build
 * without it (STAGETRACE_FULL_API=1) uses vectorcall, which benchmarks/
 * compares. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <structmember.h>

#include "st_clock.h"
#include "st_cupti.h"
#include "st_events.h"
#include "st_gpu.h"
#include "st_intern.h"
#include "st_json.h"
#include "st_nvml.h"
#include "st_jsonscan.h"
#include "st_nvtx.h"
#include "st_safetensors.h"
#include "st_sfgroup.h"
#include "st_sink.h"
#include "st_stage.h"
#include "st_trace.h"

// --- Process-wide state ---------------------------------------------------

/* Recording switch: when off, wrappers call straight through. */
static atomic_int recording_enabled = 1;
static atomic_int gpu_windows_enabled = 0; /* Wrapper spans open st_gpu windows */

/* Hook errors: counted, and the last message kept for the next safe call
 * (hook_errors()) to report. Guarded by the GIL. */
static uint64_t hook_error_count;
static char hook_error_last[256];

/* A namer that fails this many times is dropped (the span keeps its static
 * name): a hook that keeps failing uninstalls itself. */
#define NAMER_MAX_FAILURES 3

typedef struct {
    PyTypeObject *wrapper_type;
    PyTypeObject *span_await_type;
    PyTypeObject *event_batch_type;
    PyTypeObject *trace_writer_type;
    PyTypeObject *header_hold_type;
    PyTypeObject *group_keys_type;
    PyObject *safetensors_error; /* SafetensorsError(ValueError) */
    PyObject *coroutine_type; /* types.CoroutineType */
    PyObject *method_type;    /* types.MethodType */
} module_state;

static module_state *state_of_type(PyTypeObject *tp)
{
    return (module_state *)PyType_GetModuleState(tp);
}

/* Record the exception in flight as a hook error and clear it. Call only
 * where the exception was raised by StageTrace's own callbacks, never where
 * it belongs to the host. */
static void hook_error_swallow(const char *where)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *text = value ? PyObject_Str(value) : NULL;
    const char *msg = text ? PyUnicode_AsUTF8AndSize(text, NULL) : NULL;
    PyErr_Clear(); /* from str() or AsUTF8 */
    snprintf(hook_error_last, sizeof hook_error_last, "%s: %s", where, msg ? msg : "?");
    hook_error_count++;
    Py_XDECREF(text);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

// --- Names ------------------------------------------------------------------

/* Intern a str (invalid surrogates are kept as their bytes for the JSON
 * escaper to replace). Registers the name with NVTX. -1 with an exception
 * set on failure. */
static int intern_object(PyObject *s, uint32_t *id)
{
    if (s == Py_None) {
        *id = ST_INTERN_NONE;
        return 0;
    }
    if (!PyUnicode_Check(s)) {
        PyErr_SetString(PyExc_TypeError, "a span name or detail must be str or None");
        return -1;
    }
    PyObject *bytes = PyUnicode_AsEncodedString(s, "utf-8", "surrogatepass");
    if (!bytes) {
        return -1;
    }
    char *data;
    Py_ssize_t len;
    PyBytes_AsStringAndSize(bytes, &data, &len);
    st_intern_status status = st_intern(data, (size_t)len, id);
    if (status == ST_INTERN_OK && *id != ST_INTERN_NONE) {
        st_nvtx_register_name(*id, data);
    }
    Py_DECREF(bytes);
    if (status != ST_INTERN_OK) {
        PyErr_SetString(PyExc_MemoryError, status == ST_INTERN_FULL
                                               ? "StageTrace name table is full"
                                               : "out of memory interning a name");
        return -1;
    }
    return 0;
}

/* NVTX payload for a detail: the number itself when the detail is a plain
 * decimal node id ("12"), else the intern id. */
static uint64_t detail_payload(uint32_t detail_id)
{
    size_t len;
    const char *s = st_intern_lookup(detail_id, &len);
    if (!s || len == 0 || len > 19) {
        return detail_id;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return detail_id;
        }
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    return v;
}

static int check_stage(long stage)
{
    if (stage < 0 || stage >= ST_STAGE_COUNT) {
        PyErr_Format(PyExc_ValueError, "stage %ld is out of range 0..%d", stage,
                     ST_STAGE_COUNT - 1);
        return -1;
    }
    return 0;
}

static int check_outcome(long outcome)
{
    if (outcome < 0 || outcome >= ST_OUTCOME_COUNT) {
        PyErr_Format(PyExc_ValueError, "outcome %ld is out of range 0..%d", outcome,
                     ST_OUTCOME_COUNT - 1);
        return -1;
    }
    return 0;
}

static void record_span(unsigned stage, uint32_t name_id, uint32_t detail_id, uint64_t t0,
                        uint64_t t1, unsigned outcome)
{
    st_event ev = {
        .t_begin_ns = t0,
        .t_end_ns = t1,
        .name_id = name_id,
        .detail_id = detail_id,
        .stage = (uint16_t)stage,
        .outcome = (uint8_t)outcome,
        .kind = ST_EVENT_SPAN,
    };
    st_events_append(&ev);
}

// --- Wrapper: a C callable that records a span around any callable --------

typedef struct {
    PyObject_HEAD
    PyObject *func;
    PyObject *namer;      /* optional: namer(*args, **kw) -> (name, detail[, hint]) */
    PyObject *outcome_fn; /* optional: outcome_fn(result) -> int outcome */
    PyObject *interrupts; /* exception class or tuple counted as "interrupted" */
    PyObject *weaklist;
#ifndef Py_LIMITED_API
    vectorcallfunc vectorcall;
#endif
    uint32_t name_id;
    uint32_t detail_id;
    unsigned stage;
    int coroutine; /* the callable is known to return coroutines */
    int namer_failures;
} WrapperObject;

/* The arguments of one call, in either calling convention. */
typedef struct {
    PyObject *args; /* tuple (tp_call), or NULL for vectorcall */
    PyObject *kwargs;
    PyObject *const *argv;
    size_t nargsf;
    PyObject *kwnames;
} call_args;

static PyObject *call_with(PyObject *callable, const call_args *ca)
{
#ifndef Py_LIMITED_API
    if (!ca->args) {
        return PyObject_Vectorcall(callable, ca->argv, ca->nargsf, ca->kwnames);
    }
#endif
    return PyObject_Call(callable, ca->args, ca->kwargs);
}

/* Outcome of the exception in flight: "interrupted" for the given interrupt
 * classes and for BaseExceptions that are not Exceptions (KeyboardInterrupt,
 * asyncio.CancelledError, SystemExit: the call was stopped, it did not fail),
 * else "error". Never calls Python code, never touches the exception. */
static unsigned exception_outcome(PyObject *interrupts)
{
    if (interrupts && PyErr_ExceptionMatches(interrupts)) {
        return ST_OUTCOME_INTERRUPTED;
    }
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return ST_OUTCOME_INTERRUPTED;
    }
    return ST_OUTCOME_ERROR;
}

/* Outcome of a successful result: outcome_fn(result) if given, then the
 * namer's hint for plain successes. Needs no exception in flight. */
static unsigned result_outcome(PyObject *outcome_fn, PyObject *result, unsigned hint)
{
    unsigned outcome = ST_OUTCOME_OK;
    if (outcome_fn) {
        PyObject *r = PyObject_CallFunctionObjArgs(outcome_fn, result, NULL);
        long v = r ? PyLong_AsLong(r) : -1;
        Py_XDECREF(r);
        if (v < 0 || v >= ST_OUTCOME_COUNT) {
            if (PyErr_Occurred()) {
                hook_error_swallow("outcome callback");
            }
            v = ST_OUTCOME_OK;
        }
        outcome = (unsigned)v;
    }
    return outcome == ST_OUTCOME_OK && hint ? hint : outcome;
}

/* Apply the namer; on failure keep the static names and count the error. */
static void apply_namer(WrapperObject *self, const call_args *ca, uint32_t *name_id,
                        uint32_t *detail_id, unsigned *hint)
{
    PyObject *r = call_with(self->namer, ca);
    if (!r) {
        goto error;
    }
    if (!PyTuple_Check(r) || PyTuple_Size(r) < 2 || PyTuple_Size(r) > 3) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_TypeError, "namer must return (name, detail[, hint])");
        goto error;
    }
    uint32_t n, d;
    if (intern_object(PyTuple_GetItem(r, 0), &n) < 0 ||
        intern_object(PyTuple_GetItem(r, 1), &d) < 0) {
        Py_DECREF(r);
        goto error;
    }
    long h = 0;
    if (PyTuple_Size(r) == 3 && PyTuple_GetItem(r, 2) != Py_None) {
        h = PyLong_AsLong(PyTuple_GetItem(r, 2));
        if (h < 0 || h >= ST_OUTCOME_COUNT) {
            Py_DECREF(r);
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "namer hint is not an outcome");
            }
            goto error;
        }
    }
    Py_DECREF(r);
    if (n != ST_INTERN_NONE) {
        *name_id = n;
    }
    *detail_id = d;
    *hint = (unsigned)h;
    return;
error:
    hook_error_swallow("namer");
    if (++self->namer_failures >= NAMER_MAX_FAILURES) {
        Py_CLEAR(self->namer);
    }
}

typedef struct {
    PyObject_HEAD
    PyObject *coro;
    PyObject *outcome_fn;
    PyObject *interrupts;
    uint64_t t_begin;
    uint64_t nvtx_range;
    uint32_t name_id;
    uint32_t detail_id;
    uint32_t gpu_window;
    unsigned stage;
    unsigned hint;
    int done;
} SpanAwaitObject;

static PyObject *span_await_new(PyTypeObject *tp, WrapperObject *w, PyObject *coro, uint64_t t0,
                                uint32_t name_id, uint32_t detail_id, unsigned hint, uint32_t gpu_window)
{
    SpanAwaitObject *self = PyObject_GC_New(SpanAwaitObject, tp);
    if (!self) {
        return NULL;
    }
    self->coro = coro; /* steals */
    self->outcome_fn = w->outcome_fn;
    Py_XINCREF(self->outcome_fn);
    self->interrupts = w->interrupts;
    Py_XINCREF(self->interrupts);
    self->t_begin = t0;
    self->name_id = name_id;
    self->detail_id = detail_id;
    self->stage = w->stage;
    self->hint = hint;
    self->gpu_window = gpu_window;
    self->done = 0;
    self->nvtx_range = st_nvtx_start(w->stage, name_id, detail_payload(detail_id));
    PyObject_GC_Track((PyObject *)self);
    return (PyObject *)self;
}

static PyObject *wrapper_invoke(WrapperObject *self, const call_args *ca)
{
    if (!atomic_load_explicit(&recording_enabled, memory_order_relaxed)) {
        return call_with(self->func, ca);
    }
    uint32_t name_id = self->name_id, detail_id = self->detail_id;
    unsigned hint = 0;
    if (self->namer) {
        apply_namer(self, ca, &name_id, &detail_id, &hint);
    }
    uint64_t t0 = st_clock_now_ns();
    uint32_t gpu_window = atomic_load_explicit(&gpu_windows_enabled, memory_order_relaxed)
                              ? st_gpu_window_open((uint8_t)self->stage, name_id, t0)
                              : 0;
    if (!self->coroutine) {
        st_nvtx_push(self->stage, name_id, detail_id ? detail_payload(detail_id) : 0);
    }
    PyObject *res = call_with(self->func, ca);
    if (!self->coroutine) {
        st_nvtx_pop();
    }
    if (res) {
        module_state *st = state_of_type(Py_TYPE(self));
        /* types.CoroutineType cannot be subclassed: an identity check is exact */
        if (Py_IS_TYPE(res, (PyTypeObject *)st->coroutine_type)) {
            PyObject *aw = span_await_new(st->span_await_type, self, res, t0, name_id,
                                          detail_id, hint, gpu_window);
            if (!aw) { /* out of memory: hand back the plain coroutine */
                PyErr_Clear();
                hook_error_count++;
                st_gpu_window_close(gpu_window, st_clock_now_ns());
                return res;
            }
            return aw;
        }
        uint64_t t1 = st_clock_now_ns();
        st_gpu_window_close(gpu_window, t1);
        record_span(self->stage, name_id, detail_id, t0, t1,
                    result_outcome(self->outcome_fn, res, hint));
        return res;
    }
    uint64_t t1 = st_clock_now_ns();
    st_gpu_window_close(gpu_window, t1);
    record_span(self->stage, name_id, detail_id, t0, t1, exception_outcome(self->interrupts));
    return NULL; /* the original exception, untouched */
}

static PyObject *wrapper_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    call_args ca = {.args = args, .kwargs = kwargs};
    return wrapper_invoke((WrapperObject *)op, &ca);
}

#ifndef Py_LIMITED_API
static PyObject *wrapper_vectorcall(PyObject *op, PyObject *const *argv, size_t nargsf,
                                    PyObject *kwnames)
{
    call_args ca = {.argv = argv, .nargsf = nargsf, .kwnames = kwnames};
    return wrapper_invoke((WrapperObject *)op, &ca);
}
#endif

static PyObject *wrapper_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"func",    "stage",      "name",      "detail", "namer",
                             "outcome", "interrupts", "coroutine", NULL};
    PyObject *func, *name, *detail = Py_None, *namer = Py_None, *outcome = Py_None,
                           *interrupts = Py_None;
    long stage;
    int coroutine = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OlU|$OOOOp", kwlist, &func, &stage, &name,
                                     &detail, &namer, &outcome, &interrupts, &coroutine)) {
        return NULL;
    }
    if (!PyCallable_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "func must be callable");
        return NULL;
    }
    if ((namer != Py_None && !PyCallable_Check(namer)) ||
        (outcome != Py_None && !PyCallable_Check(outcome))) {
        PyErr_SetString(PyExc_TypeError, "namer and outcome must be callable or None");
        return NULL;
    }
    if (check_stage(stage) < 0) {
        return NULL;
    }
    uint32_t name_id, detail_id;
    if (intern_object(name, &name_id) < 0 || intern_object(detail, &detail_id) < 0) {
        return NULL;
    }
    allocfunc alloc = (allocfunc)PyType_GetSlot(tp, Py_tp_alloc);
    WrapperObject *self = (WrapperObject *)alloc(tp, 0);
    if (!self) {
        return NULL;
    }
    self->func = Py_NewRef(func);
    self->namer = namer == Py_None ? NULL : Py_NewRef(namer);
    self->outcome_fn = outcome == Py_None ? NULL : Py_NewRef(outcome);
    self->interrupts = interrupts == Py_None ? NULL : Py_NewRef(interrupts);
    self->name_id = name_id;
    self->detail_id = detail_id;
    self->stage = (unsigned)stage;
    self->coroutine = coroutine;
#ifndef Py_LIMITED_API
    self->vectorcall = wrapper_vectorcall;
#endif
    return (PyObject *)self;
}

static int wrapper_traverse(PyObject *op, visitproc visit, void *arg)
{
    WrapperObject *self = (WrapperObject *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->func);
    Py_VISIT(self->namer);
    Py_VISIT(self->outcome_fn);
    Py_VISIT(self->interrupts);
    return 0;
}

static int wrapper_clear(PyObject *op)
{
    WrapperObject *self = (WrapperObject *)op;
    Py_CLEAR(self->func);
    Py_CLEAR(self->namer);
    Py_CLEAR(self->outcome_fn);
    Py_CLEAR(self->interrupts);
    return 0;
}

static void wrapper_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (((WrapperObject *)op)->weaklist) {
        PyObject_ClearWeakRefs(op);
    }
    wrapper_clear(op);
    freefunc free_fn = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    free_fn(op);
    Py_DECREF(tp);
}

/* Bind like a function when stored on a class (class-level wrapping). */
static PyObject *wrapper_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    (void)type;
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    module_state *st = state_of_type(Py_TYPE(self));
    return PyObject_CallFunctionObjArgs(st->method_type, self, obj, NULL);
}

/* Attributes the Wrapper lacks (__name__, __qualname__, __defaults__, ...)
 * come from the wrapped callable, so the wrapper passes for it where code
 * inspects it. The type's own __module__ and __doc__ are not forwarded. */
static PyObject *wrapper_getattro(PyObject *self, PyObject *name)
{
    PyObject *r = PyObject_GenericGetAttr(self, name);
    if (r || !PyErr_ExceptionMatches(PyExc_AttributeError)) {
        return r;
    }
    PyErr_Clear();
    return PyObject_GetAttr(((WrapperObject *)self)->func, name);
}

static PyObject *wrapper_get_stage(PyObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLong(((WrapperObject *)self)->stage);
}

static PyObject *wrapper_get_name(PyObject *self, void *closure)
{
    (void)closure;
    size_t len;
    const char *s = st_intern_lookup(((WrapperObject *)self)->name_id, &len);
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "surrogatepass");
}

static PyObject *wrapper_get_has_namer(PyObject *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((WrapperObject *)self)->namer != NULL);
}

static PyObject *wrapper_repr(PyObject *self)
{
    WrapperObject *w = (WrapperObject *)self;
    size_t len;
    const char *name = st_intern_lookup(w->name_id, &len);
    return PyUnicode_FromFormat("<stagetrace.Wrapper %s stage=%s of %R>", name,
                                st_stage_name(w->stage), w->func);
}

static PyMemberDef wrapper_members[] = {
    {"__wrapped__", T_OBJECT, offsetof(WrapperObject, func), READONLY, "the wrapped callable"},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(WrapperObject, weaklist), READONLY, NULL},
#ifndef Py_LIMITED_API
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(WrapperObject, vectorcall), READONLY, NULL},
#endif
    {NULL},
};

static PyGetSetDef wrapper_getset[] = {
    {"stage", wrapper_get_stage, NULL, "stage index (see STAGES)", NULL},
    {"name", wrapper_get_name, NULL, "the span's static name", NULL},
    {"has_namer", wrapper_get_has_namer, NULL,
     "False once the namer was dropped after repeated failures", NULL},
    {NULL},
};

PyDoc_STRVAR(wrapper_doc,
             "Wrapper(func, stage, name, *, detail=None, namer=None, outcome=None,\n"
             "        interrupts=None, coroutine=False)\n--\n\n"
             "Call func, recording a span of the given stage around it (and an NVTX\n"
             "range). If func returns a coroutine, the span lasts until it finishes.\n"
             "namer(*args, **kwargs) -> (name, detail[, outcome hint]) names each\n"
             "call; outcome(result) -> int classifies a returned value; exceptions\n"
             "matching interrupts (or KeyboardInterrupt) count as interrupted, others\n"
             "as errors, and always propagate untouched.");

static PyType_Slot wrapper_slots[] = {
    {Py_tp_doc, (void *)wrapper_doc},
    {Py_tp_new, wrapper_new},
    {Py_tp_call, wrapper_call},
    {Py_tp_descr_get, wrapper_descr_get},
    {Py_tp_getattro, wrapper_getattro},
    {Py_tp_repr, wrapper_repr},
    {Py_tp_traverse, wrapper_traverse},
    {Py_tp_clear, wrapper_clear},
    {Py_tp_dealloc, wrapper_dealloc},
    {Py_tp_members, wrapper_members},
    {Py_tp_getset, wrapper_getset},
    {0, NULL},
};

static PyType_Spec wrapper_spec = {
    .name = "stagetrace._native.Wrapper",
    .basicsize = sizeof(WrapperObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
#ifndef Py_LIMITED_API
             | Py_TPFLAGS_HAVE_VECTORCALL
#endif
    ,
    .slots = wrapper_slots,
};

// --- SpanAwait: the awaitable a Wrapper returns for a coroutine ------------

static void span_await_finish(SpanAwaitObject *self, unsigned outcome)
{
    if (self->done) {
        return;
    }
    self->done = 1;
    st_nvtx_end(self->nvtx_range);
    uint64_t t1 = st_clock_now_ns();
    st_gpu_window_close(self->gpu_window, t1);
    record_span(self->stage, self->name_id, self->detail_id, self->t_begin, t1, outcome);
}

static PySendResult span_await_am_send(PyObject *op, PyObject *arg, PyObject **result)
{
    SpanAwaitObject *self = (SpanAwaitObject *)op;
    PySendResult r = PyIter_Send(self->coro, arg, result);
    if (r == PYGEN_RETURN) {
        span_await_finish(self, result_outcome(self->outcome_fn, *result, self->hint));
    } else if (r == PYGEN_ERROR) {
        span_await_finish(self, exception_outcome(self->interrupts));
    }
    return r;
}

/* Raise StopIteration(value) the way a generator returning value does. */
static void set_stop_iteration(PyObject *value)
{
    PyObject *exc = PyObject_CallFunctionObjArgs(PyExc_StopIteration, value, NULL);
    if (exc) {
        PyErr_SetObject(PyExc_StopIteration, exc);
        Py_DECREF(exc);
    }
}

static PyObject *span_await_send(PyObject *op, PyObject *arg)
{
    PyObject *result = NULL;
    PySendResult r = span_await_am_send(op, arg, &result);
    if (r == PYGEN_RETURN) {
        if (result == Py_None) {
            PyErr_SetNone(PyExc_StopIteration);
        } else {
            set_stop_iteration(result);
        }
        Py_DECREF(result);
        return NULL;
    }
    return r == PYGEN_NEXT ? result : NULL;
}

static PyObject *span_await_iternext(PyObject *op)
{
    PyObject *result = NULL;
    PySendResult r = span_await_am_send(op, Py_None, &result);
    if (r == PYGEN_RETURN) {
        if (result != Py_None) {
            set_stop_iteration(result);
        }
        Py_DECREF(result);
        return NULL;
    }
    return r == PYGEN_NEXT ? result : NULL;
}

static PyObject *span_await_throw(PyObject *op, PyObject *args)
{
    SpanAwaitObject *self = (SpanAwaitObject *)op;
    PyObject *throw = PyObject_GetAttrString(self->coro, "throw");
    if (!throw) {
        return NULL;
    }
    PyObject *r = PyObject_Call(throw, args, NULL);
    Py_DECREF(throw);
    if (r || self->done) {
        return r;
    }
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
        span_await_finish(self, exception_outcome(self->interrupts));
        return NULL;
    }
    /* the coroutine caught the exception and returned: classify its value,
     * then re-raise the very same StopIteration */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    PyObject *ret = value ? PyObject_GetAttrString(value, "value") : NULL;
    if (!ret) {
        PyErr_Clear();
        ret = Py_NewRef(Py_None);
    }
    span_await_finish(self, result_outcome(self->outcome_fn, ret, self->hint));
    Py_DECREF(ret);
    PyErr_Restore(type, value, tb);
    return NULL;
}

static PyObject *span_await_close(PyObject *op, PyObject *unused)
{
    (void)unused;
    SpanAwaitObject *self = (SpanAwaitObject *)op;
    PyObject *r = PyObject_CallMethod(self->coro, "close", NULL);
    span_await_finish(self, ST_OUTCOME_INTERRUPTED);
    return r;
}

static PyObject *span_await_await(PyObject *op)
{
    return Py_NewRef(op);
}

static int span_await_traverse(PyObject *op, visitproc visit, void *arg)
{
    SpanAwaitObject *self = (SpanAwaitObject *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->coro);
    Py_VISIT(self->outcome_fn);
    Py_VISIT(self->interrupts);
    return 0;
}

static int span_await_clear(PyObject *op)
{
    SpanAwaitObject *self = (SpanAwaitObject *)op;
    Py_CLEAR(self->coro);
    Py_CLEAR(self->outcome_fn);
    Py_CLEAR(self->interrupts);
    return 0;
}

static void span_await_dealloc(PyObject *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    /* dropped before it finished (never awaited, or abandoned): interrupted */
    span_await_finish((SpanAwaitObject *)op, ST_OUTCOME_INTERRUPTED);
    span_await_clear(op);
    freefunc free_fn = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    free_fn(op);
    Py_DECREF(tp);
}

static PyMethodDef span_await_methods[] = {
    {"send", span_await_send, METH_O, "Send a value into the wrapped coroutine."},
    {"throw", span_await_throw, METH_VARARGS, "Raise an exception in the wrapped coroutine."},
    {"close", span_await_close, METH_NOARGS, "Close the wrapped coroutine."},
    {NULL},
};

static PyMemberDef span_await_members[] = {
    {"__wrapped__", T_OBJECT, offsetof(SpanAwaitObject, coro), READONLY, "the coroutine"},
    {NULL},
};

static PyType_Slot span_await_slots[] = {
    {Py_tp_doc, "Awaitable recording a span until the wrapped coroutine finishes."},
    {Py_am_await, span_await_await},
    {Py_am_send, span_await_am_send},
    {Py_tp_iter, span_await_await},
    {Py_tp_iternext, span_await_iternext},
    {Py_tp_methods, span_await_methods},
    {Py_tp_members, span_await_members},
    {Py_tp_traverse, span_await_traverse},
    {Py_tp_clear, span_await_clear},
    {Py_tp_dealloc, span_await_dealloc},
    {0, NULL},
};

static PyType_Spec span_await_spec = {
    .name = "stagetrace._native.SpanAwait",
    .basicsize = sizeof(SpanAwaitObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = span_await_slots,
};

// --- EventBatch: drained events, owned by C --------------------------------

typedef struct {
    PyObject_HEAD
    st_event *events;
    size_t n;
} EventBatchObject;

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
    module_state *st = state_of_type(Py_TYPE(op));
    if (!PyArg_ParseTuple(args, "O!|kK", st->event_batch_type, &batch, &pid, &epoch) ||
        !writer_ready(self)) {
        return NULL;
    }
    EventBatchObject *b = (EventBatchObject *)batch;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    for (size_t i = 0; i < b->n; i++) {
        st_trace_event(&self->w, &b->events[i], (uint32_t)pid, epoch);
    }
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

// --- Module functions ---------------------------------------------------------

static PyObject *mod_now_ns(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return PyLong_FromUnsignedLongLong(st_clock_now_ns());
}

static PyObject *mod_intern(PyObject *m, PyObject *s)
{
    (void)m;
    uint32_t id;
    if (intern_object(s, &id) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLong(id);
}

static PyObject *mod_name_of(PyObject *m, PyObject *arg)
{
    (void)m;
    unsigned long id = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred()) {
        return NULL;
    }
    size_t len;
    const char *s = id > UINT32_MAX ? NULL : st_intern_lookup((uint32_t)id, &len);
    if (!s) {
        PyErr_Format(PyExc_KeyError, "no name with id %lu", id);
        return NULL;
    }
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "surrogatepass");
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
        check_stage(stage) < 0 || check_outcome(outcome) < 0) {
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
        st_nvtx_mark((unsigned)stage, name_id, detail_payload(detail_id));
    }
    return PyBool_FromLong(st_events_append(&ev));
}

static PyObject *mod_nvtx_range_start(PyObject *m, PyObject *args)
{
    (void)m;
    long stage;
    unsigned int name_id;
    unsigned long long payload = 0;
    if (!PyArg_ParseTuple(args, "lI|K", &stage, &name_id, &payload) || check_stage(stage) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(st_nvtx_start((unsigned)stage, name_id, payload));
}

static PyObject *mod_nvtx_range_end(PyObject *m, PyObject *arg)
{
    (void)m;
    unsigned long long id = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred()) {
        return NULL;
    }
    st_nvtx_end(id);
    Py_RETURN_NONE;
}

static PyObject *mod_nvtx_push(PyObject *m, PyObject *args)
{
    (void)m;
    long stage;
    unsigned int name_id;
    unsigned long long payload = 0;
    if (!PyArg_ParseTuple(args, "lI|K", &stage, &name_id, &payload) || check_stage(stage) < 0) {
        return NULL;
    }
    st_nvtx_push((unsigned)stage, name_id, payload);
    Py_RETURN_NONE;
}

static PyObject *mod_nvtx_pop(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    st_nvtx_pop();
    Py_RETURN_NONE;
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
                         "hook_errors", (unsigned long long)hook_error_count);
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
static PyObject *store_flag(atomic_int *flag, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0) {
        return NULL;
    }
    atomic_store(flag, on);
    Py_RETURN_NONE;
}

static PyObject *mod_set_enabled(PyObject *m, PyObject *arg)
{
    (void)m;
    return store_flag(&recording_enabled, arg);
}

static PyObject *mod_enabled(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return PyBool_FromLong(atomic_load(&recording_enabled));
}

static PyObject *mod_nvtx_set_enabled(PyObject *m, PyObject *arg)
{
    (void)m;
    int on = PyObject_IsTrue(arg);
    if (on < 0) {
        return NULL;
    }
    st_nvtx_set_enabled(on);
    Py_RETURN_NONE;
}

static PyObject *mod_nvtx_enabled(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return PyBool_FromLong(st_nvtx_enabled());
}

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

static PyObject *mod_hook_errors(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return Py_BuildValue("(Ks)", (unsigned long long)hook_error_count, hook_error_last);
}


// --- Safetensors headers ------------------------------------------------------

/* Raise SafetensorsError(message) with .path .status .offset .detail set. */
static PyObject *safetensors_error(module_state *st, PyObject *path, const st_sf_header *h,
                                   st_sf_status status)
{
    char what[256];
    if (status == ST_SF_OPEN_FAILED || status == ST_SF_READ_FAILED) {
        snprintf(what, sizeof what, "%s: %s", st_sf_status_text(status), strerror(h->err_errno));
    } else if (status == ST_SF_BAD_JSON) {
        snprintf(what, sizeof what, "%s: %s", st_sf_status_text(status),
                 st_json_status_text((st_json_status)h->json_status));
    } else {
        snprintf(what, sizeof what, "%s", st_sf_status_text(status));
    }
    PyObject *msg = h->err_detail[0]
                        ? PyUnicode_FromFormat("%S: byte offset %llu: %s (%s)", path,
                                               (unsigned long long)h->err_offset, what, h->err_detail)
                        : PyUnicode_FromFormat("%S: byte offset %llu: %s", path,
                                               (unsigned long long)h->err_offset, what);
    PyObject *exc = msg ? PyObject_CallFunctionObjArgs(st->safetensors_error, msg, NULL) : NULL;
    Py_XDECREF(msg);
    if (!exc) {
        return NULL;
    }
    PyObject *offset = PyLong_FromUnsignedLongLong(h->err_offset);
    PyObject *detail = PyUnicode_DecodeUTF8(h->err_detail, (Py_ssize_t)strlen(h->err_detail), "replace");
    if (offset && detail && PyObject_SetAttrString(exc, "path", path) == 0 &&
        PyObject_SetAttrString(exc, "offset", offset) == 0 &&
        PyObject_SetAttrString(exc, "detail", detail) == 0) {
        PyObject *name = PyUnicode_FromString(st_sf_status_name(status));
        if (name && PyObject_SetAttrString(exc, "status", name) == 0) {
            PyErr_SetObject(st->safetensors_error, exc);
        }
        Py_XDECREF(name);
    }
    Py_XDECREF(offset);
    Py_XDECREF(detail);
    Py_DECREF(exc);
    return NULL;
}

static PyObject *shape_tuple(const st_sf_tensor *t)
{
    PyObject *shape = PyTuple_New(t->ndim);
    for (unsigned d = 0; shape && d < t->ndim; d++) {
        PyObject *v = PyLong_FromUnsignedLongLong(t->shape[d]);
        if (!v) {
            Py_CLEAR(shape);
            break;
        }
        PyTuple_SetItem(shape, d, v);
    }
    return shape;
}

/* [(name, dtype, shape, begin, end)] in file order. */
static PyObject *tensor_list(const st_sf_header *h)
{
    PyObject *tensors = PyList_New((Py_ssize_t)h->n_tensors);
    for (size_t i = 0; tensors && i < h->n_tensors; i++) {
        const st_sf_tensor *t = &h->tensors[i];
        PyObject *item = Py_BuildValue("(NsNKK)",
                                       PyUnicode_DecodeUTF8(h->strings + t->name_off, t->name_len, "strict"),
                                       st_sf_dtype_name(t->dtype), shape_tuple(t), (unsigned long long)t->begin,
                                       (unsigned long long)t->end);
        if (!item) {
            Py_CLEAR(tensors);
            break;
        }
        PyList_SetItem(tensors, (Py_ssize_t)i, item);
    }
    return tensors;
}

// --- GroupKeys: one component's tensor names, without a Python object per tensor ---

/* Owns a parsed header and its grouping for the GroupKeys that read them. */
typedef struct {
    PyObject_HEAD
    st_sf_header h;
    st_sfg_result g;
    uint32_t *members; /* tensor indices by group: group k's are members[starts[k] .. starts[k + 1]) */
    size_t *starts;
} HeaderHoldObject;

static void header_hold_dealloc(PyObject *op)
{
    HeaderHoldObject *self = (HeaderHoldObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    st_sf_header_free(&self->h);
    st_sfg_free(&self->g);
    PyMem_Free(self->members);
    PyMem_Free(self->starts);
    PyObject_Free(op);
    Py_DECREF(tp);
}

static PyType_Slot header_hold_slots[] = {
    {Py_tp_dealloc, header_hold_dealloc},
    {Py_tp_doc, (void *)"A parsed safetensors header kept for its GroupKeys."},
    {0, NULL},
};

static PyType_Spec header_hold_spec = {
    .name = "stagetrace._native.HeaderHold",
    .basicsize = sizeof(HeaderHoldObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = header_hold_slots,
};

/* A read-only mapping {name after the group's prefix: shape} over the header:
 * lookups hash the name in C (the reader's name index), shapes are built when
 * asked for, and the names only when iterated. What the classifier asks of a
 * group (a few dozen lookups) costs no Python object per tensor. */
typedef struct {
    PyObject_HEAD
    HeaderHoldObject *hold;
    uint32_t group;
    PyObject *names; /* the names after the prefix, built on first iteration */
} GroupKeysObject;

static void group_keys_dealloc(PyObject *op)
{
    GroupKeysObject *self = (GroupKeysObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    Py_XDECREF(self->names);
    Py_XDECREF(self->hold);
    PyObject_Free(op);
    Py_DECREF(tp);
}

/* The tensor index of key in this group, -1 when absent, -2 with an exception set. */
static long group_keys_find(GroupKeysObject *self, PyObject *key)
{
    Py_ssize_t len;
    const char *rest = PyUnicode_AsUTF8AndSize(key, &len);
    if (!rest) {
        return -2;
    }
    const st_sf_header *h = &self->hold->h;
    const st_sfg_group *group = &self->hold->g.groups[self->group];
    size_t total = group->prefix_len + (size_t)len;
    char stack[512];
    char *full = total <= sizeof stack ? stack : PyMem_Malloc(total ? total : 1);
    if (!full) {
        PyErr_NoMemory();
        return -2;
    }
    memcpy(full, h->strings + h->tensors[group->first].name_off, group->prefix_len);
    memcpy(full + group->prefix_len, rest, (size_t)len);
    long i = st_sf_find(h, full, total);
    if (full != stack) {
        PyMem_Free(full);
    }
    return i >= 0 && self->hold->g.group_of[i] == self->group ? i : -1;
}

static int group_keys_contains(PyObject *op, PyObject *key)
{
    if (!PyUnicode_Check(key)) {
        return 0;
    }
    long i = group_keys_find((GroupKeysObject *)op, key);
    return i == -2 ? -1 : i >= 0;
}

static PyObject *group_keys_getitem(PyObject *op, PyObject *key)
{
    long i = PyUnicode_Check(key) ? group_keys_find((GroupKeysObject *)op, key) : -1;
    if (i == -2) {
        return NULL;
    }
    if (i < 0) {
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    return shape_tuple(&((GroupKeysObject *)op)->hold->h.tensors[i]);
}

static Py_ssize_t group_keys_len(PyObject *op)
{
    GroupKeysObject *self = (GroupKeysObject *)op;
    return (Py_ssize_t)self->hold->g.groups[self->group].n_tensors;
}

/* The names after the prefix, in file order (built once). Borrowed. */
static PyObject *group_keys_names(GroupKeysObject *self)
{
    if (self->names) {
        return self->names;
    }
    const HeaderHoldObject *hold = self->hold;
    size_t begin = hold->starts[self->group], end = hold->starts[self->group + 1];
    uint32_t skip = hold->g.groups[self->group].prefix_len;
    PyObject *names = PyList_New((Py_ssize_t)(end - begin));
    for (size_t k = begin; names && k < end; k++) {
        const st_sf_tensor *t = &hold->h.tensors[hold->members[k]];
        PyObject *name = PyUnicode_DecodeUTF8(hold->h.strings + t->name_off + skip, t->name_len - skip, "strict");
        if (!name) {
            Py_CLEAR(names);
            break;
        }
        PyList_SetItem(names, (Py_ssize_t)(k - begin), name);
    }
    self->names = names;
    return names;
}

static PyObject *group_keys_iter(PyObject *op)
{
    PyObject *names = group_keys_names((GroupKeysObject *)op);
    return names ? PyObject_GetIter(names) : NULL;
}

static PyObject *group_keys_keys(PyObject *op, PyObject *unused)
{
    (void)unused;
    PyObject *names = group_keys_names((GroupKeysObject *)op);
    return names ? PyList_GetSlice(names, 0, PyList_Size(names)) : NULL;
}

/* matching(head, tail): the names (after the prefix) that start with head and end
 * with tail, compared in C: a "#" pattern's candidates without a str per name. */
static PyObject *group_keys_matching(PyObject *op, PyObject *args)
{
    GroupKeysObject *self = (GroupKeysObject *)op;
    const char *head, *tail;
    Py_ssize_t head_len, tail_len;
    if (!PyArg_ParseTuple(args, "s#s#", &head, &head_len, &tail, &tail_len)) {
        return NULL;
    }
    const HeaderHoldObject *hold = self->hold;
    uint32_t skip = hold->g.groups[self->group].prefix_len;
    PyObject *out = PyList_New(0);
    for (size_t k = hold->starts[self->group]; out && k < hold->starts[self->group + 1]; k++) {
        const st_sf_tensor *t = &hold->h.tensors[hold->members[k]];
        const char *name = hold->h.strings + t->name_off + skip;
        size_t len = t->name_len - skip;
        if (len < (size_t)(head_len + tail_len) || memcmp(name, head, (size_t)head_len) != 0 ||
            memcmp(name + len - (size_t)tail_len, tail, (size_t)tail_len) != 0) {
            continue;
        }
        PyObject *str = PyUnicode_DecodeUTF8(name, (Py_ssize_t)len, "strict");
        if (!str || PyList_Append(out, str) < 0) {
            Py_XDECREF(str);
            Py_CLEAR(out);
        } else {
            Py_DECREF(str);
        }
    }
    return out;
}

static PyObject *group_keys_get(PyObject *op, PyObject *args)
{
    PyObject *key, *fallback = Py_None;
    if (!PyArg_ParseTuple(args, "O|O", &key, &fallback)) {
        return NULL;
    }
    long i = PyUnicode_Check(key) ? group_keys_find((GroupKeysObject *)op, key) : -1;
    if (i == -2) {
        return NULL;
    }
    return i < 0 ? Py_NewRef(fallback) : shape_tuple(&((GroupKeysObject *)op)->hold->h.tensors[i]);
}

static PyObject *group_keys_repr(PyObject *op)
{
    return PyUnicode_FromFormat("<GroupKeys: %zd names>", group_keys_len(op));
}

static PyMethodDef group_keys_methods[] = {
    {"keys", group_keys_keys, METH_NOARGS, "The names after the group's prefix, in file order."},
    {"get", group_keys_get, METH_VARARGS, "get(name, default=None) -> shape."},
    {"matching", group_keys_matching, METH_VARARGS,
     "matching(head, tail) -> the names that start with head and end with tail."},
    {NULL},
};

static PyType_Slot group_keys_slots[] = {
    {Py_tp_dealloc, group_keys_dealloc},
    {Py_tp_iter, group_keys_iter},
    {Py_tp_repr, group_keys_repr},
    {Py_tp_methods, group_keys_methods},
    {Py_sq_contains, group_keys_contains},
    {Py_mp_subscript, group_keys_getitem},
    {Py_mp_length, group_keys_len},
    {Py_tp_doc, (void *)"{name after a component's prefix: shape}, read-only, over a parsed header."},
    {0, NULL},
};

static PyType_Spec group_keys_spec = {
    .name = "stagetrace._native.GroupKeys",
    .basicsize = sizeof(GroupKeysObject),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = group_keys_slots,
};

/* Move *h and *g into a new HeaderHold (they are zeroed: nothing left to free),
 * with the tensors listed group by group. */
static HeaderHoldObject *header_hold_new(module_state *st, st_sf_header *h, st_sfg_result *g)
{
    HeaderHoldObject *hold = PyObject_New(HeaderHoldObject, st->header_hold_type);
    if (!hold) {
        return NULL;
    }
    hold->h = *h;
    hold->g = *g;
    memset(h, 0, sizeof *h);
    memset(g, 0, sizeof *g);
    hold->starts = PyMem_Calloc(hold->g.n_groups + 1, sizeof *hold->starts);
    hold->members = PyMem_Malloc((hold->h.n_tensors ? hold->h.n_tensors : 1) * sizeof *hold->members);
    if (!hold->starts || !hold->members) {
        Py_DECREF(hold);
        PyErr_NoMemory();
        return NULL;
    }
    for (size_t i = 0; i < hold->h.n_tensors; i++) { /* counting sort by group, file order kept */
        hold->starts[hold->g.group_of[i] + 1]++;
    }
    for (size_t k = 0; k < hold->g.n_groups; k++) {
        hold->starts[k + 1] += hold->starts[k];
    }
    size_t *next = PyMem_Calloc(hold->g.n_groups ? hold->g.n_groups : 1, sizeof *next);
    if (!next) {
        Py_DECREF(hold);
        PyErr_NoMemory();
        return NULL;
    }
    for (size_t i = 0; i < hold->h.n_tensors; i++) {
        uint32_t k = hold->g.group_of[i];
        hold->members[hold->starts[k] + next[k]++] = (uint32_t)i;
    }
    PyMem_Free(next);
    return hold;
}

/* [(prefix, pattern, keys: GroupKeys {name after the prefix: shape}, tensors,
 * parameters, bytes, dtypes: {dtype: bytes})], one per group of *g; *h and *g
 * move into the GroupKeys' HeaderHold. */
static PyObject *group_list(module_state *st, st_sf_header *h, st_sfg_result *g)
{
    PyObject *groups = PyList_New((Py_ssize_t)g->n_groups);
    HeaderHoldObject *hold = groups ? header_hold_new(st, h, g) : NULL;
    if (!hold) {
        Py_XDECREF(groups);
        return NULL;
    }
    h = &hold->h;
    g = &hold->g;
    for (size_t k = 0; k < g->n_groups; k++) {
        const st_sfg_group *group = &g->groups[k];
        PyObject *dtypes = PyDict_New();
        for (unsigned d = 0; dtypes && d < ST_SFG_DTYPES; d++) {
            PyObject *n = group->dtype_bytes[d] ? PyLong_FromUnsignedLongLong(group->dtype_bytes[d]) : NULL;
            const char *name = st_sf_dtype_name(d);
            int bad = group->dtype_bytes[d] && (!n || PyDict_SetItemString(dtypes, name ? name : "?", n) < 0);
            Py_XDECREF(n);
            if (bad) {
                Py_CLEAR(dtypes);
            }
        }
        GroupKeysObject *keys = PyObject_New(GroupKeysObject, st->group_keys_type);
        if (keys) {
            keys->hold = (HeaderHoldObject *)Py_NewRef(hold);
            keys->group = (uint32_t)k;
            keys->names = NULL;
        }
        PyObject *item = Py_BuildValue(
            "(NiNKKKN)",
            PyUnicode_DecodeUTF8(h->strings + h->tensors[group->first].name_off, group->prefix_len, "strict"),
            group->pattern, (PyObject *)keys, (unsigned long long)group->n_tensors,
            (unsigned long long)group->parameters, (unsigned long long)group->bytes, dtypes);
        if (!item) { /* N released what it had */
            Py_DECREF(hold);
            Py_DECREF(groups);
            return NULL;
        }
        PyList_SetItem(groups, (Py_ssize_t)k, item);
    }
    Py_DECREF(hold); /* the GroupKeys hold it now */
    return groups;
}

static PyObject *header_to_dict(module_state *st, st_sf_header *h, st_sfg_result *g)
{
    /* what the dict needs from h, before group_list moves it */
    unsigned long long header_len = h->header_len, file_size = h->file_size, data_end = h->data_end;
    PyObject *meta = h->has_metadata ? PyDict_New() : Py_NewRef(Py_None);
    PyObject *items = NULL;
    if (!meta) {
        goto error;
    }
    for (size_t i = 0; i < h->n_meta && meta != Py_None; i++) {
        const st_sf_meta *m = &h->meta[i];
        PyObject *k = PyUnicode_DecodeUTF8(h->strings + m->key_off, m->key_len, "strict");
        PyObject *v = PyUnicode_DecodeUTF8(h->strings + m->value_off, m->value_len, "strict");
        int bad = !k || !v || PyDict_SetItem(meta, k, v) < 0;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (bad) {
            goto error;
        }
    }
    items = g ? group_list(st, h, g) : tensor_list(h);
    if (!items) {
        goto error;
    }
    return Py_BuildValue("{sNsNsKsKsK}", g ? "groups" : "tensors", items, "metadata", meta, "header_bytes",
                         header_len, "file_size", file_size, "data_bytes", data_end); /* N steals both */
error:
    Py_XDECREF(items);
    Py_XDECREF(meta);
    return NULL;
}

/* The prefix patterns of group_by as UTF-8 C strings; *owner keeps them alive.
 * NULL with an exception set when group_by is not a sequence of str. */
static const char **group_patterns(PyObject *group_by, PyObject **owner, Py_ssize_t *count)
{
    *owner = PySequence_Tuple(group_by);
    if (!*owner) {
        return NULL;
    }
    *count = PyTuple_Size(*owner);
    const char **patterns = PyMem_Calloc(*count ? (size_t)*count : 1, sizeof *patterns);
    if (!patterns) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < *count; i++) {
        patterns[i] = PyUnicode_AsUTF8AndSize(PyTuple_GetItem(*owner, i), NULL);
        if (!patterns[i]) {
            PyMem_Free(patterns);
            return NULL;
        }
    }
    return patterns;
}

static PyObject *mod_read_safetensors_header(PyObject *m, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"path", "header_cap", "group_by", NULL};
    PyObject *path_bytes, *group_by = Py_None, *owner = NULL, *path = NULL, *r = NULL;
    unsigned long long cap = ST_SF_DEFAULT_HEADER_CAP;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&|K$O", kwlist, PyUnicode_FSConverter, &path_bytes, &cap,
                                     &group_by)) {
        return NULL;
    }
    const char **patterns = NULL;
    Py_ssize_t n_patterns = 0;
    if (group_by != Py_None && !(patterns = group_patterns(group_by, &owner, &n_patterns))) {
        Py_DECREF(path_bytes);
        Py_XDECREF(owner);
        return NULL;
    }
    st_sf_header h;
    st_sfg_result g = {0};
    st_sf_status status;
    int grouped = 0;
    const char *cpath = PyBytes_AsString(path_bytes);
    Py_BEGIN_ALLOW_THREADS
    status = st_sf_read(cpath, cap, &h);
    if (status == ST_SF_OK && patterns) {
        grouped = st_sfg_group_tensors(&h, patterns, (size_t)n_patterns, &g) == 0 ? 1 : -1;
    }
    Py_END_ALLOW_THREADS
    if (grouped < 0) {
        PyErr_NoMemory();
    } else if ((path = PyUnicode_DecodeFSDefault(cpath)) != NULL) {
        r = status == ST_SF_OK ? header_to_dict(PyModule_GetState(m), &h, grouped ? &g : NULL)
                               : safetensors_error(PyModule_GetState(m), path, &h, status);
    }
    Py_XDECREF(path);
    Py_DECREF(path_bytes);
    Py_XDECREF(owner);
    PyMem_Free(patterns);
    st_sfg_free(&g);
    st_sf_header_free(&h);
    return r;
}

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
    return Py_BuildValue("{sNszsIsNsLsKsKsK}", "active", PyBool_FromLong(st_cupti_active()), "library",
                         info.library, "version", (unsigned)info.version, "own_clock",
                         PyBool_FromLong(info.own_clock), "clock_offset_ns", (long long)info.clock_offset,
                         "buffers_completed", (unsigned long long)info.buffers_completed, "buffers_refused",
                         (unsigned long long)info.buffers_refused, "records", (unsigned long long)info.records);
}

static PyObject *mod_gpu_set_windows(PyObject *m, PyObject *arg)
{
    (void)m;
    return store_flag(&gpu_windows_enabled, arg);
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

// --- NVML sampler ---------------------------------------------------------------

static PyObject *mod_nvml_start(PyObject *m, PyObject *args, PyObject *kwargs)
{
    (void)m;
    static char *kwlist[] = {"period_ms", "capacity", NULL};
    unsigned period = ST_NVML_DEFAULT_PERIOD_MS;
    Py_ssize_t capacity = ST_NVML_DEFAULT_CAPACITY;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|In", kwlist, &period, &capacity)) {
        return NULL;
    }
    if (capacity < 1) {
        return PyErr_Format(PyExc_ValueError, "capacity must be >= 1");
    }
    char why[400] = "";
    st_nvml_status status;
    Py_BEGIN_ALLOW_THREADS /* nvmlInit can take hundreds of milliseconds */
    status = st_nvml_start(period, (size_t)capacity, why, sizeof why);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(Ns)", PyBool_FromLong(status == ST_NVML_OK), status == ST_NVML_OK ? "" : why);
}

static PyObject *mod_nvml_stop(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    Py_BEGIN_ALLOW_THREADS /* waits for the sampler's current round */
    st_nvml_stop();
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *optional_u64(int valid, unsigned long long v)
{
    return valid ? PyLong_FromUnsignedLongLong(v) : Py_NewRef(Py_None);
}

static PyObject *mod_nvml_drain(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    PyObject *list = PyList_New(0);
    st_nvml_sample chunk[256];
    size_t n;
    while (list && (n = st_nvml_drain(chunk, 256)) > 0) {
        for (size_t i = 0; i < n; i++) {
            const st_nvml_sample *x = &chunk[i];
            PyObject *item = Py_BuildValue(
                "(KINNNNNN)", (unsigned long long)x->t_ns, (unsigned)x->device,
                optional_u64(x->valid & ST_NVML_HAS_UTILIZATION, x->gpu_util_pct),
                optional_u64(x->valid & ST_NVML_HAS_UTILIZATION, x->mem_util_pct),
                optional_u64(x->valid & ST_NVML_HAS_MEMORY, x->mem_used_bytes),
                optional_u64(x->valid & ST_NVML_HAS_MEMORY, x->mem_total_bytes),
                optional_u64(x->valid & ST_NVML_HAS_TEMPERATURE, x->temperature_c),
                optional_u64(x->valid & ST_NVML_HAS_POWER, x->power_mw));
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

static PyObject *mod_nvml_info(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    char last[200], driver[80];
    int cuda_driver = 0;
    uint64_t errors = st_nvml_errors(last, sizeof last);
    st_nvml_system(driver, sizeof driver, &cuda_driver);
    unsigned count = st_nvml_device_count();
    PyObject *devices = PyList_New(0);
    for (unsigned i = 0; devices && i < count; i++) {
        char name[ST_NVML_NAME_MAX];
        st_nvml_device_facts f;
        memset(&f, 0, sizeof f);
        st_nvml_device_name(i, name, sizeof name);
        st_nvml_device_info(i, &f);
        PyObject *d = Py_BuildValue("{sIsssNsK}", "index", i, "name", name, "compute_capability",
                                    f.cc_major ? PyUnicode_FromFormat("%d.%d", f.cc_major, f.cc_minor)
                                               : Py_NewRef(Py_None),
                                    "total_memory_bytes", (unsigned long long)f.total_memory_bytes);
        if (!d || PyList_Append(devices, d) < 0) {
            Py_XDECREF(d);
            Py_CLEAR(devices);
        } else {
            Py_DECREF(d);
        }
    }
    return Py_BuildValue("{sNsNsKsKsssssNsi}", "running", PyBool_FromLong(st_nvml_running()), "devices",
                         devices, "dropped", (unsigned long long)st_nvml_dropped(), "errors",
                         (unsigned long long)errors, "last_error", last, "driver_version", driver,
                         "pending", PyLong_FromSize_t(st_nvml_pending()), "cuda_driver_version", cuda_driver);
}

static PyMethodDef module_methods[] = {
    {"now_ns", mod_now_ns, METH_NOARGS, "Monotonic clock in nanoseconds (the trace clock)."},
    {"intern", mod_intern, METH_O, "intern(name) -> id; '' and None give 0."},
    {"name_of", mod_name_of, METH_O, "name_of(id) -> name."},
    {"record", (PyCFunction)(void (*)(void))mod_record, METH_VARARGS | METH_KEYWORDS,
     "record(stage, name_id, detail_id, t_begin_ns, t_end_ns, outcome=0, instant=False)\n"
     "-> True if stored, False if dropped."},
    {"nvtx_range_start", mod_nvtx_range_start, METH_VARARGS,
     "nvtx_range_start(stage, name_id, payload=0) -> range id (0 when NVTX is off)."},
    {"nvtx_range_end", mod_nvtx_range_end, METH_O, "nvtx_range_end(range_id)."},
    {"nvtx_push", mod_nvtx_push, METH_VARARGS, "nvtx_push(stage, name_id, payload=0)."},
    {"nvtx_pop", mod_nvtx_pop, METH_NOARGS, "nvtx_pop()."},
    {"drain", mod_drain, METH_NOARGS, "Move all buffered events into an EventBatch."},
    {"dropped", mod_dropped, METH_NOARGS, "Events dropped so far (all threads)."},
    {"stats", mod_stats, METH_NOARGS, "Buffer, name and hook-error counters."},
    {"set_buffer_capacity", mod_set_buffer_capacity, METH_O,
     "Capacity of buffers created from now on (rounded up to a power of two)."},
    {"set_fake_clock", mod_set_fake_clock, METH_VARARGS,
     "set_fake_clock(start_ns, step_ns=1000) for tests; set_fake_clock(None) restores."},
    {"set_enabled", mod_set_enabled, METH_O, "Turn recording on or off."},
    {"enabled", mod_enabled, METH_NOARGS, "Whether recording is on."},
    {"nvtx_set_enabled", mod_nvtx_set_enabled, METH_O, "Turn NVTX emission on or off."},
    {"nvtx_enabled", mod_nvtx_enabled, METH_NOARGS, "Whether NVTX emission is on."},
    {"json_escape", mod_json_escape, METH_O,
     "The JSON string literal (quoted) for str or bytes, as the trace writer writes it."},
    {"read_safetensors_header", (PyCFunction)(void (*)(void))mod_read_safetensors_header,
     METH_VARARGS | METH_KEYWORDS,
     "read_safetensors_header(path, header_cap=100_000_000, *, group_by=None) -> {tensors: [(name,\n"
     "dtype, shape, begin, end)] in file order, metadata, header_bytes, file_size, data_bytes}.\n"
     "Reads only the header; SafetensorsError (with .path .status .offset .detail) for anything\n"
     "malformed. With group_by, a sequence of prefix patterns ('#' a run of digits, '*' any run),\n"
     "'groups' replaces 'tensors': [(prefix, pattern (index, -1 for none), keys: GroupKeys\n"
     "{name after the prefix: shape}, tensors, parameters, bytes, dtypes: {dtype: bytes})], each\n"
     "tensor in the group of the first pattern matching the start of its name."},
    {"cupti_start", (PyCFunction)(void (*)(void))mod_cupti_start, METH_VARARGS | METH_KEYWORDS,
     "cupti_start(paths, buffer_bytes=0, max_buffers=0) -> (ok, status, reason): load CUPTI from the\n"
     "first path that opens (once per process) and start kernel/memcpy/memset collection."},
    {"cupti_flush", mod_cupti_flush, METH_VARARGS, "cupti_flush(forced=True): deliver buffered records."},
    {"cupti_stop", mod_cupti_stop, METH_NOARGS, "Stop CUPTI collection (flushes first)."},
    {"cupti_info", mod_cupti_info, METH_NOARGS, "The collector's library, version, clock and counters."},
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
    {"nvml_start", (PyCFunction)(void (*)(void))mod_nvml_start, METH_VARARGS | METH_KEYWORDS,
     "nvml_start(period_ms=100, capacity=65536) -> (ok, reason): sample every GPU through NVML."},
    {"nvml_stop", mod_nvml_stop, METH_NOARGS, "Stop the NVML sampler (buffered samples stay)."},
    {"nvml_drain", mod_nvml_drain, METH_NOARGS,
     "Buffered samples: [(t_ns, device, gpu_util_pct, mem_util_pct, mem_used, mem_total,\n"
     "temperature_c, power_mw)], None where NVML could not say."},
    {"nvml_info", mod_nvml_info, METH_NOARGS, "Sampler state, devices, driver version, drops, errors."},
    {"hook_errors", mod_hook_errors, METH_NOARGS,
     "(count, last message) of errors swallowed inside hooks."},
    {NULL},
};

// --- Module lifecycle ---------------------------------------------------------

static int module_traverse(PyObject *m, visitproc visit, void *arg)
{
    module_state *st = PyModule_GetState(m);
    Py_VISIT(st->wrapper_type);
    Py_VISIT(st->span_await_type);
    Py_VISIT(st->event_batch_type);
    Py_VISIT(st->trace_writer_type);
    Py_VISIT(st->header_hold_type);
    Py_VISIT(st->group_keys_type);
    Py_VISIT(st->safetensors_error);
    Py_VISIT(st->coroutine_type);
    Py_VISIT(st->method_type);
    return 0;
}

static int module_clear(PyObject *m)
{
    module_state *st = PyModule_GetState(m);
    Py_CLEAR(st->wrapper_type);
    Py_CLEAR(st->span_await_type);
    Py_CLEAR(st->event_batch_type);
    Py_CLEAR(st->trace_writer_type);
    Py_CLEAR(st->header_hold_type);
    Py_CLEAR(st->group_keys_type);
    Py_CLEAR(st->safetensors_error);
    Py_CLEAR(st->coroutine_type);
    Py_CLEAR(st->method_type);
    return 0;
}

static void module_free(void *m)
{
    module_clear((PyObject *)m);
}

static int add_type(PyObject *m, PyType_Spec *spec, PyTypeObject **slot)
{
    *slot = (PyTypeObject *)PyType_FromModuleAndSpec(m, spec, NULL);
    if (!*slot) {
        return -1;
    }
    const char *dot = strrchr(spec->name, '.');
    Py_INCREF(*slot);
    if (PyModule_AddObject(m, dot + 1, (PyObject *)*slot) < 0) {
        Py_DECREF(*slot);
        return -1;
    }
    return 0;
}

static int module_exec(PyObject *m)
{
    module_state *st = PyModule_GetState(m);
    PyObject *types = PyImport_ImportModule("types");
    if (!types) {
        return -1;
    }
    st->coroutine_type = PyObject_GetAttrString(types, "CoroutineType");
    st->method_type = PyObject_GetAttrString(types, "MethodType");
    Py_DECREF(types);
    if (!st->coroutine_type || !st->method_type) {
        return -1;
    }
    if (add_type(m, &wrapper_spec, &st->wrapper_type) < 0 ||
        add_type(m, &span_await_spec, &st->span_await_type) < 0 ||
        add_type(m, &batch_spec, &st->event_batch_type) < 0 ||
        add_type(m, &writer_spec, &st->trace_writer_type) < 0 ||
        add_type(m, &header_hold_spec, &st->header_hold_type) < 0 ||
        add_type(m, &group_keys_spec, &st->group_keys_type) < 0) {
        return -1;
    }
    st->safetensors_error = PyErr_NewExceptionWithDoc(
        "stagetrace._native.SafetensorsError",
        "A .safetensors file that cannot be read; .path, .status, .offset (bytes), .detail.",
        PyExc_ValueError, NULL);
    if (!st->safetensors_error ||
        PyModule_AddObject(m, "SafetensorsError", Py_NewRef(st->safetensors_error)) < 0) {
        return -1;
    }
    /* a SpanAwait is a coroutine to asyncio (create_task, iscoroutine) */
    PyObject *abc = PyImport_ImportModule("collections.abc");
    PyObject *registered = NULL;
    if (abc) {
        PyObject *coroutine_abc = PyObject_GetAttrString(abc, "Coroutine");
        registered = coroutine_abc ? PyObject_CallMethod(coroutine_abc, "register", "O",
                                                         (PyObject *)st->span_await_type)
                                   : NULL;
        Py_XDECREF(coroutine_abc);
        Py_DECREF(abc);
    }
    if (!registered) {
        return -1;
    }
    Py_DECREF(registered);
    PyObject *stages = PyTuple_New(ST_STAGE_COUNT);
    PyObject *outcomes = PyTuple_New(ST_OUTCOME_COUNT);
    if (!stages || !outcomes) {
        goto error;
    }
    for (int i = 0; i < ST_STAGE_COUNT; i++) {
        PyTuple_SetItem(stages, i, PyUnicode_FromString(st_stage_name((unsigned)i)));
    }
    for (int i = 0; i < ST_OUTCOME_COUNT; i++) {
        PyTuple_SetItem(outcomes, i, PyUnicode_FromString(st_outcome_name((unsigned)i)));
    }
    if (PyErr_Occurred() || PyModule_AddObject(m, "STAGES", stages) < 0) {
        goto error;
    }
    stages = NULL;
    if (PyModule_AddObject(m, "OUTCOMES", outcomes) < 0) {
        goto error;
    }
    outcomes = NULL;
    PyObject *colours = PyTuple_New(ST_STAGE_COUNT);
    if (!colours) {
        goto error;
    }
    for (int i = 0; i < ST_STAGE_COUNT; i++) {
        PyTuple_SetItem(colours, i, PyLong_FromUnsignedLong(st_stage_colour((unsigned)i)));
    }
    if (PyErr_Occurred() || PyModule_AddObject(m, "STAGE_COLOURS", colours) < 0) {
        Py_DECREF(colours);
        return -1;
    }
    if (PyModule_AddIntConstant(m, "TRACE_FORMAT_VERSION", ST_TRACE_FORMAT_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "NVTX_COMPILED", st_nvtx_compiled()) < 0 ||
#ifdef Py_LIMITED_API
        PyModule_AddIntConstant(m, "LIMITED_API", 1) < 0
#else
        PyModule_AddIntConstant(m, "LIMITED_API", 0) < 0
#endif
    ) {
        return -1;
    }
    st_nvtx_init();
    return 0;
error:
    Py_XDECREF(stages);
    Py_XDECREF(outcomes);
    return -1;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_native",
    .m_doc = "StageTrace's C core: clock, event buffers, span wrapper, NVTX, trace writer.",
    .m_size = sizeof(module_state),
    .m_methods = module_methods,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__native(void)
{
    return PyModuleDef_Init(&module_def);
}
