/* st_stage: the stage vocabulary of shared/design.md, with fixed NVTX colours. */
#ifndef ST_STAGE_H
#define ST_STAGE_H

#include <stdint.h>

/* The order is part of the trace format: append, never renumber. */
typedef enum st_stage {
    ST_STAGE_PROMPT = 0,
    ST_STAGE_NODE,
    ST_STAGE_MODEL_LOAD_READ,
    ST_STAGE_MODEL_LOAD_BUILD,
    ST_STAGE_MODEL_LOAD_TO_DEVICE,
    ST_STAGE_ANATOMY,
    ST_STAGE_TEXT_ENCODE,
    ST_STAGE_SAMPLE,
    ST_STAGE_SAMPLE_STEP,
    ST_STAGE_VAE_DECODE,
    ST_STAGE_VAE_ENCODE,
    ST_STAGE_SAVE,
    ST_STAGE_OTHER,
    ST_STAGE_COUNT
} st_stage;

/* How a span ended. Also part of the trace format. */
typedef enum st_outcome {
    ST_OUTCOME_OK = 0,
    ST_OUTCOME_ERROR,
    ST_OUTCOME_INTERRUPTED,
    ST_OUTCOME_PENDING,
    ST_OUTCOME_CACHED,
    ST_OUTCOME_COUNT
} st_outcome;

/* The stage's name as written in traces ("model_load.read"), or NULL when
 * stage is out of range. Static storage; this function can't fail otherwise. */
const char *st_stage_name(unsigned stage);

/* The stage's ARGB colour for NVTX and viewers. 0 when out of range. */
uint32_t st_stage_colour(unsigned stage);

/* The args key under which a stage's detail string is written ("node_id",
 * "path", ...); "detail" when out of range. Static storage; can't fail. */
const char *st_stage_detail_key(unsigned stage);

/* The outcome's name ("ok", "error", ...), or NULL when out of range. */
const char *st_outcome_name(unsigned outcome);

#endif
