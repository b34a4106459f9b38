/* bind.h: what the binding files (bind_*.c) share, and nothing the pure-C
 * st_* units may include. Each binding file exposes one concept to Python:
 *
 *   bind_names.c        names, stages and outcomes (intern, name_of, STAGES)
 *   bind_args.c         an event's args: a dict serialized to JSON at record time
 *   bind_events.c       the clock and the event buffers (record, drain, EventBatch)
 *   bind_spans.c        hooks: Wrapper, SpanAwait, stage_begin/stage_end, NVTX calls,
 *                       the recording switch, hook errors
 *   bind_trace.c        TraceWriter and the JSON escaper
 *   bind_safetensors.c  read_safetensors_header, GroupKeys, SafetensorsError
 *   bind_gpu.c          CUPTI collection and GPU attribution windows
 *   bind_nvml.c         the NVML sampler
 *   bind_tracescan.c    the streaming trace reader and the span arithmetic
 *
 * module.c owns the module's life cycle: it calls each file's bind_X_init()
 * from its exec slot and adds each file's method table. All of these need the
 * GIL unless they say otherwise. */
#ifndef ST_BIND_H
#define ST_BIND_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "st_events.h"
#include "st_sink.h"

// --- Module state -------------------------------------------------------------

/* Per-module references (types, exception, imported helpers). The C state
 * behind them (event buffers, intern table, NVTX domain, CUPTI) is
 * process-wide. */
typedef struct {
    PyTypeObject *wrapper_type;
    PyTypeObject *span_await_type;
    PyTypeObject *event_batch_type;
    PyTypeObject *trace_writer_type;
    PyTypeObject *header_hold_type;
    PyTypeObject *group_keys_type;
    PyObject *safetensors_error; /* SafetensorsError(ValueError) */
    PyObject *coroutine_type;    /* types.CoroutineType */
    PyObject *method_type;       /* types.MethodType */
    PyObject *json_loads;        /* json.loads, for EventBatch.events() */
} module_state;

/* The state of the module that created tp (a heap type of this module). */
static inline module_state *bind_state_of_type(PyTypeObject *tp)
{
    return (module_state *)PyType_GetModuleState(tp);
}

/* Create the heap type of spec for module m, store a new reference in *slot
 * and add it to the module under the last dotted part of spec->name.
 * Returns 0, or -1 with an exception set. */
static inline int bind_add_type(PyObject *m, PyType_Spec *spec, PyTypeObject **slot)
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

/* Store the truth of arg into flag. None, or NULL with an exception set. */
static inline PyObject *bind_store_flag(atomic_int *flag, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0) {
        return NULL;
    }
    atomic_store(flag, on);
    Py_RETURN_NONE;
}

// --- bind_names.c ---------------------------------------------------------------

/* Intern a str (lone surrogates are kept as their bytes for the JSON escaper
 * to replace) and register it with NVTX; None gives ST_INTERN_NONE. 0, or -1
 * with TypeError (not str or None) or MemoryError set. */
int bind_intern(PyObject *s, uint32_t *id);

/* NVTX payload for a detail: the number itself when the detail is a plain
 * decimal node id ("12"), else the intern id. Can't fail. */
uint64_t bind_detail_payload(uint32_t detail_id);

/* 0 when stage (outcome) is in range, else -1 with ValueError set. */
int bind_check_stage(long stage);
int bind_check_outcome(long outcome);

/* Adds STAGES, OUTCOMES and STAGE_COLOURS. */
int bind_names_init(PyObject *m, module_state *st);
extern PyMethodDef bind_names_methods[];

// --- bind_args.c ----------------------------------------------------------------

/* Containers nest at most this deep in args, the args object included; a
 * deeper one is written as the string "<too deep>". */
#define BIND_ARGS_MAX_DEPTH 8

/* An event's args as JSON object text, made by bind_args_serialize. */
typedef struct {
    const char *text; /* NULL: no args (or lost) */
    size_t len;
    int lost; /* out of memory while serializing: the event goes without args */
    st_sink sink;
} bind_args_text;

/* Serialize args (a dict, or None/NULL for none) for an event of kind, stage
 * and detail into out: keys str (non-str keys through str()); values None,
 * bool, int (any size, decimal), float (non-finite as null), str, bytes
 * (UTF-8, ill-formed sequences as U+FFFD), list/tuple, dict, anything else as
 * str(value) ("<unprintable>" when that raises). A span's or instant's own
 * members ("outcome", and the stage's detail key when detail_id is set) are
 * left out of its args. Never raises for a value and keeps any exception in
 * flight; returns -1 with TypeError set only when args is neither None nor a
 * dict. Free out with bind_args_free. */
int bind_args_serialize(PyObject *args, unsigned kind, unsigned stage, uint32_t detail_id,
                        bind_args_text *out);
void bind_args_free(bind_args_text *a);

// --- bind_events.c --------------------------------------------------------------

/* The events drain() moved out of the buffers; owned by the batch. The trace
 * writer's binding reads them. */
typedef struct {
    PyObject_HEAD
    st_events_batch batch;
} EventBatchObject;

/* Adds EventBatch and the EVENT_* kinds. */
int bind_events_init(PyObject *m, module_state *st);
extern PyMethodDef bind_events_methods[];

// --- bind_spans.c ---------------------------------------------------------------

/* Errors swallowed inside hooks so far. Can't fail. */
uint64_t bind_hook_error_count(void);

/* Adds Wrapper and SpanAwait (registered as a collections.abc.Coroutine),
 * NVTX_COMPILED, and initialises NVTX. */
int bind_spans_init(PyObject *m, module_state *st);
extern PyMethodDef bind_spans_methods[];

// --- bind_trace.c ---------------------------------------------------------------

/* Adds TraceWriter and TRACE_FORMAT_VERSION. */
int bind_trace_init(PyObject *m, module_state *st);
extern PyMethodDef bind_trace_methods[];

// --- bind_safetensors.c ---------------------------------------------------------

/* Adds GroupKeys, HeaderHold and SafetensorsError. */
int bind_safetensors_init(PyObject *m, module_state *st);
extern PyMethodDef bind_safetensors_methods[];

// --- bind_gpu.c -----------------------------------------------------------------

/* Whether Wrapper spans open GPU attribution windows (gpu_set_windows()). */
extern atomic_int bind_gpu_windows_enabled;

extern PyMethodDef bind_gpu_methods[];

// --- bind_nvml.c ----------------------------------------------------------------

extern PyMethodDef bind_nvml_methods[];

// --- bind_tracescan.c -----------------------------------------------------------
extern PyMethodDef bind_tracescan_methods[];

#endif
