/* module.c: the life cycle of stagetrace._native, the Python face of the
 * StageTrace core: multi-phase init, the module state, traverse/clear/free,
 * and the assembly of the binding files' types and method tables (bind.h
 * lists them, one file per concept).
 *
 * Everything the module exposes is process-wide (event buffers, intern table,
 * NVTX domain, CUPTI subscription), so the module does not support multiple
 * interpreters; loading it twice in one interpreter (under two package names)
 * is fine and shares that state.
 *
 * Built with Py_LIMITED_API (abi3, CPython >= 3.10) by default; a build
 * without it (STAGETRACE_FULL_API=1) uses vectorcall, which benchmarks/
 * compares. */
#include "bind.h"

#include "st_fork.h"

// --- Module state -------------------------------------------------------------

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
    Py_VISIT(st->json_loads);
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
    Py_CLEAR(st->json_loads);
    return 0;
}

static void module_free(void *m)
{
    module_clear((PyObject *)m);
}

// --- Assembly -------------------------------------------------------------------

/* Every binding file's functions, in the order help() lists them. */
static PyMethodDef *const method_tables[] = {
    bind_names_methods, bind_events_methods, bind_spans_methods, bind_trace_methods,
    bind_safetensors_methods, bind_gpu_methods, bind_nvml_methods, bind_tracescan_methods,
};

static int module_exec(PyObject *m)
{
    module_state *st = PyModule_GetState(m);
    for (size_t i = 0; i < sizeof method_tables / sizeof method_tables[0]; i++) {
        if (PyModule_AddFunctions(m, method_tables[i]) < 0) {
            return -1;
        }
    }
    if (bind_names_init(m, st) < 0 || bind_events_init(m, st) < 0 ||
        bind_spans_init(m, st) < 0 || bind_trace_init(m, st) < 0 ||
        bind_safetensors_init(m, st) < 0) {
        return -1;
    }
    /* StageTrace's locks across fork(): without the handlers a child forked
     * while another thread drains could deadlock; say so, and carry on */
    if (st_fork_install() != 0 &&
        PyErr_WarnEx(PyExc_RuntimeWarning,
                     "stagetrace: could not register fork handlers; do not fork while recording", 1) < 0) {
        return -1;
    }
#ifdef Py_LIMITED_API
    return PyModule_AddIntConstant(m, "LIMITED_API", 1);
#else
    return PyModule_AddIntConstant(m, "LIMITED_API", 0);
#endif
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#ifdef Py_mod_multiple_interpreters /* 3.12+, full API builds */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

PyDoc_STRVAR(module_doc,
             "StageTrace's C core. One event pipeline: record() and the hooks (the span Wrapper,\n"
             "stage_begin/stage_end) append spans, instants, counters and metadata, with args\n"
             "serialized once at record time, to per-thread bounded buffers; drain() moves them\n"
             "into an EventBatch; TraceWriter streams them as Chrome Trace Event JSON, and\n"
             "EventBatch.events() gives the same events as dicts. Beside it: the trace clock, NVTX\n"
             "ranges, the JSON escaper, the safetensors header reader, CUPTI collection with stage\n"
             "attribution windows, and the NVML sampler. Process-wide state: one interpreter per\n"
             "process.");

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_native",
    .m_doc = module_doc,
    .m_size = sizeof(module_state),
    .m_methods = NULL, /* added per binding file by module_exec */
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__native(void)
{
    return PyModuleDef_Init(&module_def);
}
