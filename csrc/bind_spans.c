/* bind_spans.c: the hooks, exposed to Python: Wrapper (a C callable that
 * records a span around any callable, coroutines included), the SpanAwait it
 * returns for a coroutine, stage spans opened and closed by token
 * (stage_begin/stage_end/stage_abandon, st_stagespan), direct NVTX calls, the
 * recording switch and the errors swallowed inside hooks. */
#include "bind.h"

#include <stdio.h>
#include <structmember.h>

#include "st_clock.h"
#include "st_events.h"
#include "st_gpu.h"
#include "st_intern.h"
#include "st_nvtx.h"
#include "st_stage.h"
#include "st_stagespan.h"

// --- Recording switch and hook errors ------------------------------------------------

/* Recording switch: when off, wrappers call straight through. */
static atomic_int recording_enabled = 1;

/* Hook errors: counted, and the last message kept for the next safe call
 * (hook_errors()) to report. Guarded by the GIL. */
static uint64_t hook_error_count;
static char hook_error_last[256];

/* A namer that fails this many times is dropped (the span keeps its static
 * name): a hook that keeps failing uninstalls itself. */
#define NAMER_MAX_FAILURES 3

uint64_t bind_hook_error_count(void)
{
    return hook_error_count;
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
    if (bind_intern(PyTuple_GetItem(r, 0), &n) < 0 ||
        bind_intern(PyTuple_GetItem(r, 1), &d) < 0) {
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
    self->nvtx_range = st_nvtx_start(w->stage, name_id, bind_detail_payload(detail_id));
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
    uint32_t gpu_window = atomic_load_explicit(&bind_gpu_windows_enabled, memory_order_relaxed)
                              ? st_gpu_window_open((uint8_t)self->stage, name_id, t0)
                              : 0;
    if (!self->coroutine) {
        st_nvtx_push(self->stage, name_id, detail_id ? bind_detail_payload(detail_id) : 0);
    }
    PyObject *res = call_with(self->func, ca);
    if (!self->coroutine) {
        st_nvtx_pop();
    }
    if (res) {
        module_state *st = bind_state_of_type(Py_TYPE(self));
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
    if (bind_check_stage(stage) < 0) {
        return NULL;
    }
    uint32_t name_id, detail_id;
    if (bind_intern(name, &name_id) < 0 || bind_intern(detail, &detail_id) < 0) {
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
    module_state *st = bind_state_of_type(Py_TYPE(self));
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

// --- Module functions -------------------------------------------------------------

static PyObject *mod_nvtx_range_start(PyObject *m, PyObject *args)
{
    (void)m;
    long stage;
    unsigned int name_id;
    unsigned long long payload = 0;
    if (!PyArg_ParseTuple(args, "lI|K", &stage, &name_id, &payload) || bind_check_stage(stage) < 0) {
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
    if (!PyArg_ParseTuple(args, "lI|K", &stage, &name_id, &payload) || bind_check_stage(stage) < 0) {
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

static PyObject *mod_set_enabled(PyObject *m, PyObject *arg)
{
    (void)m;
    return bind_store_flag(&recording_enabled, arg);
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

static PyObject *mod_hook_errors(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return Py_BuildValue("(Ks)", (unsigned long long)hook_error_count, hook_error_last);
}

// --- Stage spans: begin/end by token ------------------------------------------------

static PyObject *mod_stage_begin(PyObject *m, PyObject *args)
{
    (void)m;
    long stage;
    PyObject *name;
    unsigned long long payload = 0; /* the NVTX range's payload (a node's numeric id), 0 for none */
    uint32_t name_id;
    if (!PyArg_ParseTuple(args, "lU|K", &stage, &name, &payload) || bind_check_stage(stage) < 0 ||
        bind_intern(name, &name_id) < 0) {
        return NULL;
    }
    uint64_t token = 0;
    if (atomic_load_explicit(&recording_enabled, memory_order_relaxed)) {
        st_stagespan_begin((unsigned)stage, name_id, ST_INTERN_NONE, payload,
                           atomic_load_explicit(&bind_gpu_windows_enabled, memory_order_relaxed),
                           &token);
    }
    return PyLong_FromUnsignedLongLong(token);
}

/* The token argument: 0, or -1 with an exception set (not an int). */
static int parse_token(PyObject *arg, uint64_t *token)
{
    *token = PyLong_AsUnsignedLongLong(arg);
    if (*token == (uint64_t)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return -1;
        }
        PyErr_Clear(); /* negative or too large: no token we issued */
        *token = 1;     /* thread serial 0: rejected as foreign */
    }
    return 0;
}

static PyObject *mod_stage_end(PyObject *m, PyObject *args, PyObject *kwargs)
{
    (void)m;
    static char *kwlist[] = {"token", "args", "outcome", NULL};
    PyObject *token_arg, *event_args = Py_None;
    long outcome = ST_OUTCOME_OK;
    uint64_t token;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|Ol", kwlist, &token_arg, &event_args,
                                     &outcome) ||
        bind_check_outcome(outcome) < 0 || parse_token(token_arg, &token) < 0) {
        return NULL;
    }
    if (event_args != Py_None && !PyDict_Check(event_args)) {
        return PyErr_Format(PyExc_TypeError, "args must be a dict or None, not %R",
                            (PyObject *)Py_TYPE(event_args));
    }
    if (token == 0) {
        Py_RETURN_NONE;
    }
    bind_args_text text; /* stage spans have no detail: only "outcome" is their own */
    if (bind_args_serialize(event_args, ST_EVENT_SPAN, ST_STAGE_OTHER, ST_INTERN_NONE, &text) < 0) {
        return NULL;
    }
    st_events_stored stored;
    st_stagespan_end(token, text.text, text.lost ? 1 : text.len, (unsigned)outcome, &stored);
    bind_args_free(&text);
    Py_RETURN_NONE;
}

static PyObject *mod_stage_abandon(PyObject *m, PyObject *arg)
{
    (void)m;
    uint64_t token;
    if (parse_token(arg, &token) < 0) {
        return NULL;
    }
    st_stagespan_abandon(token);
    Py_RETURN_NONE;
}

PyMethodDef bind_spans_methods[] = {
    {"nvtx_range_start", mod_nvtx_range_start, METH_VARARGS,
     "nvtx_range_start(stage, name_id, payload=0) -> range id (0 when NVTX is off)."},
    {"nvtx_range_end", mod_nvtx_range_end, METH_O, "nvtx_range_end(range_id)."},
    {"nvtx_push", mod_nvtx_push, METH_VARARGS, "nvtx_push(stage, name_id, payload=0)."},
    {"nvtx_pop", mod_nvtx_pop, METH_NOARGS, "nvtx_pop()."},
    {"set_enabled", mod_set_enabled, METH_O, "Turn recording on or off."},
    {"enabled", mod_enabled, METH_NOARGS, "Whether recording is on."},
    {"nvtx_set_enabled", mod_nvtx_set_enabled, METH_O, "Turn NVTX emission on or off."},
    {"nvtx_enabled", mod_nvtx_enabled, METH_NOARGS, "Whether NVTX emission is on."},
    {"stage_begin", mod_stage_begin, METH_VARARGS,
     "stage_begin(stage, name, payload=0) -> token: open a stage span on this thread (the\n"
     "time, an NVTX range carrying payload, a GPU window when gpu_set_windows(True)). 0 when a span of the\n"
     "same stage is open on this thread (spans of one stage do not nest) or recording is off."},
    {"stage_end", (PyCFunction)(void (*)(void))mod_stage_end, METH_VARARGS | METH_KEYWORDS,
     "stage_end(token, args=None, outcome=0): close the span and record it with args (a dict,\n"
     "as for record()). Token 0 does nothing; a token from another thread or of a closed span\n"
     "is ignored and counted (stats()['stage_tokens_rejected'])."},
    {"stage_abandon", mod_stage_abandon, METH_O,
     "stage_abandon(token): close the span without recording it (its NVTX range and GPU\n"
     "window end)."},
    {"hook_errors", mod_hook_errors, METH_NOARGS,
     "(count, last message) of errors swallowed inside hooks."},
    {NULL},
};

int bind_spans_init(PyObject *m, module_state *st)
{
    PyObject *types = PyImport_ImportModule("types");
    if (!types) {
        return -1;
    }
    st->coroutine_type = PyObject_GetAttrString(types, "CoroutineType");
    st->method_type = PyObject_GetAttrString(types, "MethodType");
    Py_DECREF(types);
    if (!st->coroutine_type || !st->method_type ||
        bind_add_type(m, &wrapper_spec, &st->wrapper_type) < 0 ||
        bind_add_type(m, &span_await_spec, &st->span_await_type) < 0) {
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
    if (PyModule_AddIntConstant(m, "NVTX_COMPILED", st_nvtx_compiled()) < 0) {
        return -1;
    }
    st_nvtx_init();
    return 0;
}
