/* st_stagespan: stage spans opened and closed by token (the stage hooks inside
 * nodes: model loading, text encoding, sampling steps, VAE, saving), each an
 * NVTX range, optionally a GPU attribution window, and a recorded span. */
#ifndef ST_STAGESPAN_H
#define ST_STAGESPAN_H

#include <stddef.h>
#include <stdint.h>

#include "st_events.h"

typedef enum st_stagespan_status {
    ST_STAGESPAN_OK = 0,
    ST_STAGESPAN_NESTED,  /* begin: a span of this stage is already open on this thread */
    ST_STAGESPAN_BAD_STAGE,
    ST_STAGESPAN_FOREIGN, /* end/abandon: the token was issued on another thread */
    ST_STAGESPAN_STALE,   /* end/abandon: the token's span is closed, or it was never issued */
} st_stagespan_status;

/* Open a span of stage on the calling thread: take the time, start an NVTX
 * range (payload as for st_nvtx_start) and, when gpu_window is set, open a GPU
 * attribution window. Spans of one stage do not nest: while one is open on
 * this thread, NESTED and *token 0 (the outer span covers the inner call).
 * So at most one span per stage is open per thread: the bookkeeping is a
 * fixed table of ST_STAGE_COUNT slots per thread. On OK *token is non-zero
 * and names this thread, the stage and the opening. Lock-free; no GIL. */
st_stagespan_status st_stagespan_begin(unsigned stage, uint32_t name_id, uint32_t detail_id,
                                       uint64_t nvtx_payload, int gpu_window, uint64_t *token);

/* Close the span of token: take the time, end its NVTX range and GPU window
 * and record it (st_events_append_args with the args_len bytes of args, a
 * JSON object or NULL, and outcome); *stored says what became of the event.
 * Token 0 is a no-op (OK, *stored DROPPED). A token from another thread
 * (FOREIGN) or of a closed span (STALE) is ignored and counted. Lock-free. */
st_stagespan_status st_stagespan_end(uint64_t token, const char *args, size_t args_len,
                                     unsigned outcome, st_events_stored *stored);

/* Close the span of token without recording it (a step span opened for a
 * step that never ran): its NVTX range and GPU window end. Token 0, FOREIGN
 * and STALE as for st_stagespan_end. Lock-free. */
st_stagespan_status st_stagespan_abandon(uint64_t token);

/* Tokens ignored so far (FOREIGN or STALE), all threads. Can't fail. */
uint64_t st_stagespan_rejected(void);

#endif
