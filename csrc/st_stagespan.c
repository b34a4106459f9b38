/* st_stagespan: one slot per stage per thread. A token is
 *   thread serial (32 bits) | opening number (27 bits) | stage (5 bits),
 * the serial handed out once per thread (never 0, so no token is 0), the
 * opening number counted per slot, so a token is only good for the opening
 * that issued it, on the thread that issued it. */
#include "st_stagespan.h"

#include <stdatomic.h>

#include "st_clock.h"
#include "st_gpu.h"
#include "st_nvtx.h"
#include "st_stage.h"

_Static_assert(ST_STAGE_COUNT <= 32, "a token holds the stage in 5 bits");

#define OPENING_MASK 0x7FFFFFFu

typedef struct open_span {
    uint64_t t_begin_ns;
    uint64_t nvtx_range;
    uint32_t name_id;
    uint32_t detail_id;
    uint32_t gpu_window;
    uint32_t opening;
    int open;
} open_span;

typedef struct thread_spans {
    uint32_t serial; /* 0 until the thread's first span */
    open_span slots[ST_STAGE_COUNT];
} thread_spans;

static _Thread_local thread_spans spans;
static _Atomic uint32_t next_serial = 1;
static _Atomic uint64_t rejected;

st_stagespan_status st_stagespan_begin(unsigned stage, uint32_t name_id, uint32_t detail_id,
                                       uint64_t nvtx_payload, int gpu_window, uint64_t *token)
{
    *token = 0;
    if (stage >= ST_STAGE_COUNT) {
        return ST_STAGESPAN_BAD_STAGE;
    }
    thread_spans *t = &spans;
    open_span *slot = &t->slots[stage];
    if (slot->open) {
        return ST_STAGESPAN_NESTED;
    }
    while (t->serial == 0) { /* 0 is skipped when the counter wraps */
        t->serial = atomic_fetch_add_explicit(&next_serial, 1, memory_order_relaxed);
    }
    slot->open = 1;
    slot->opening = (slot->opening + 1) & OPENING_MASK;
    slot->name_id = name_id;
    slot->detail_id = detail_id;
    slot->t_begin_ns = st_clock_now_ns();
    slot->nvtx_range = st_nvtx_start(stage, name_id, nvtx_payload);
    slot->gpu_window = gpu_window ? st_gpu_window_open((uint8_t)stage, name_id, slot->t_begin_ns) : 0;
    *token = (uint64_t)t->serial << 32 | (uint64_t)slot->opening << 5 | stage;
    return ST_STAGESPAN_OK;
}

/* The open slot token names on this thread, or NULL with *status set (and
 * the rejection counted). */
static open_span *slot_of(uint64_t token, unsigned *stage, st_stagespan_status *status)
{
    thread_spans *t = &spans;
    *stage = (unsigned)(token & 31);
    if ((uint32_t)(token >> 32) != t->serial || t->serial == 0) {
        *status = ST_STAGESPAN_FOREIGN;
    } else if (*stage >= ST_STAGE_COUNT || !t->slots[*stage].open ||
               t->slots[*stage].opening != ((token >> 5) & OPENING_MASK)) {
        *status = ST_STAGESPAN_STALE;
    } else {
        *status = ST_STAGESPAN_OK;
        return &t->slots[*stage];
    }
    atomic_fetch_add_explicit(&rejected, 1, memory_order_relaxed);
    return NULL;
}

/* End the slot's NVTX range and GPU window at t1 and free the slot. */
static void slot_close(open_span *slot, uint64_t t1)
{
    st_nvtx_end(slot->nvtx_range);
    st_gpu_window_close(slot->gpu_window, t1);
    slot->open = 0;
}

st_stagespan_status st_stagespan_end(uint64_t token, const char *args, size_t args_len,
                                     unsigned outcome, st_events_stored *stored)
{
    *stored = ST_EVENTS_DROPPED;
    if (token == 0) {
        return ST_STAGESPAN_OK;
    }
    unsigned stage;
    st_stagespan_status status;
    open_span *slot = slot_of(token, &stage, &status);
    if (!slot) {
        return status;
    }
    uint64_t t1 = st_clock_now_ns();
    slot_close(slot, t1);
    st_event ev = {
        .t_begin_ns = slot->t_begin_ns,
        .t_end_ns = t1,
        .name_id = slot->name_id,
        .detail_id = slot->detail_id,
        .stage = (uint16_t)stage,
        .outcome = (uint8_t)outcome,
        .kind = ST_EVENT_SPAN,
    };
    *stored = st_events_append_args(&ev, args, args_len);
    return ST_STAGESPAN_OK;
}

st_stagespan_status st_stagespan_abandon(uint64_t token)
{
    if (token == 0) {
        return ST_STAGESPAN_OK;
    }
    unsigned stage;
    st_stagespan_status status;
    open_span *slot = slot_of(token, &stage, &status);
    if (slot) {
        slot_close(slot, st_clock_now_ns());
    }
    return status;
}

uint64_t st_stagespan_rejected(void)
{
    return atomic_load_explicit(&rejected, memory_order_relaxed);
}
