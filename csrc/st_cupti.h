/* st_cupti: GPU activity from CUPTI, loaded with dlopen (nothing links CUDA
 * at build time). Kernels, memcpy and memset records are walked with the
 * loaded library's own iterator, put on the trace clock and handed to
 * st_gpu, which attributes them to stage windows. When CUPTI cannot be used
 * (no library, no driver, no GPU, another subscriber such as Nsight Systems
 * or torch.profiler) start fails with a one-line reason and nothing stays
 * enabled. Process-wide: one collector per process. */
#ifndef ST_CUPTI_H
#define ST_CUPTI_H

#include <stddef.h>
#include <stdint.h>

typedef enum st_cupti_status {
    ST_CUPTI_OK = 0,
    ST_CUPTI_NO_HEADERS,       /* built without the CUPTI headers */
    ST_CUPTI_NOT_FOUND,        /* no candidate library could be loaded */
    ST_CUPTI_MISSING_SYMBOL,   /* the library lacks a function StageTrace needs */
    ST_CUPTI_OTHER_SUBSCRIBER, /* Nsight Systems, torch.profiler or another client holds CUPTI */
    ST_CUPTI_CALL_FAILED,      /* a CUPTI call failed: no driver, no device, no permission... */
    ST_CUPTI_NO_MEMORY,
    ST_CUPTI_STATUS_COUNT
} st_cupti_status;

typedef struct st_cupti_config {
    size_t buffer_bytes; /* size of each activity buffer handed to CUPTI (default 2 MiB) */
    size_t max_buffers;  /* buffers outstanding at once; beyond, CUPTI drops records (default 32) */
} st_cupti_config;

/* Load CUPTI from the first of paths that dlopens (the caller orders them:
 * see comfy_nodes/gpu.py), resolve every function, then subscribe, register
 * the buffer callbacks and enable kernel, memcpy and memset activity. On
 * failure undo what was done and write a one-line reason into why. Loading
 * happens once per process (later calls reuse the library, or the reason it
 * could not load); starting while started returns OK. Takes the control
 * lock and holds it across the CUPTI calls, whose buffer callbacks take no
 * lock of the control side, so CUPTI may run them synchronously. No GIL
 * needed. Every CUPTI call is checked: a failure is counted, kept (info's
 * last_error) and logged as one line on stderr, once per call site. */
st_cupti_status st_cupti_start(const char *const *paths, size_t n_paths, const st_cupti_config *config,
                               char *why, size_t why_len);

/* Ask CUPTI to hand over every buffer holding records (forced: even partly
 * filled ones), so they reach st_gpu before the caller reports. Blocks until
 * CUPTI has delivered them; no-op when not started. Can't fail. */
void st_cupti_flush(int forced);

/* Disable activity collection, flush, unsubscribe. Safe when not started.
 * Can't fail. */
void st_cupti_stop(void);

/* Whether collection is running. Lock-free; can't fail. */
int st_cupti_active(void);

/* What the collector knows about itself. Can't fail. */
typedef struct st_cupti_info {
    const char *library;  /* path loaded, or NULL */
    uint32_t version;     /* cuptiGetVersion, 0 if unknown */
    int own_clock;        /* 1: CUPTI stamps records with the trace clock itself */
    int64_t clock_offset; /* else: added to CUPTI timestamps to get the trace clock */
    uint64_t buffers_completed, buffers_refused, records;
    uint64_t errors;       /* CUPTI calls that failed (every call is checked) */
    char last_error[256];  /* the last: "cuptiActivityFlushAll(): CUPTI_ERROR_..." or "" */
} st_cupti_info;

void st_cupti_get_info(st_cupti_info *out);

/* pthread_atfork handlers, registered by st_fork: the child starts the
 * collector's locks afresh and leaves collection off (CUDA does not survive
 * fork); prepare and parent do nothing (st_cupti.c says why). */
void st_cupti_fork_prepare(void);
void st_cupti_fork_parent(void);
void st_cupti_fork_child(void);

/* A short English description of a status. Static storage. */
const char *st_cupti_status_text(st_cupti_status status);

#endif
