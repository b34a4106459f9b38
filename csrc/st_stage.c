/* st_stage: names and colours of the stages and outcomes. */
#include "st_stage.h"

#include <stddef.h>

static const struct {
    const char *name;
    const char *detail_key; /* args key the event's detail id is written under */
    uint32_t argb;
} stages[ST_STAGE_COUNT] = {
    [ST_STAGE_PROMPT] = {"prompt", "prompt_id", 0xFF607D8Bu},
    [ST_STAGE_NODE] = {"node", "node_id", 0xFF9E9E9Eu},
    [ST_STAGE_MODEL_LOAD_READ] = {"model_load.read", "path", 0xFFE53935u},
    [ST_STAGE_MODEL_LOAD_BUILD] = {"model_load.build", "detail", 0xFFFB8C00u},
    [ST_STAGE_MODEL_LOAD_TO_DEVICE] = {"model_load.to_device", "detail", 0xFFFDD835u},
    [ST_STAGE_ANATOMY] = {"anatomy", "path", 0xFF8D6E63u},
    [ST_STAGE_TEXT_ENCODE] = {"text_encode", "detail", 0xFF43A047u},
    [ST_STAGE_SAMPLE] = {"sample", "detail", 0xFF1E88E5u},
    [ST_STAGE_SAMPLE_STEP] = {"sample.step", "step", 0xFF64B5F6u},
    [ST_STAGE_VAE_DECODE] = {"vae_decode", "detail", 0xFF8E24AAu},
    [ST_STAGE_VAE_ENCODE] = {"vae_encode", "detail", 0xFFBA68C8u},
    [ST_STAGE_SAVE] = {"save", "path", 0xFF00897Bu},
    [ST_STAGE_OTHER] = {"other", "detail", 0xFF546E7Au},
};

static const char *const outcomes[ST_OUTCOME_COUNT] = {
    [ST_OUTCOME_OK] = "ok",
    [ST_OUTCOME_ERROR] = "error",
    [ST_OUTCOME_INTERRUPTED] = "interrupted",
    [ST_OUTCOME_PENDING] = "pending",
    [ST_OUTCOME_CACHED] = "cached",
};

const char *st_stage_name(unsigned stage)
{
    return stage < ST_STAGE_COUNT ? stages[stage].name : NULL;
}

uint32_t st_stage_colour(unsigned stage)
{
    return stage < ST_STAGE_COUNT ? stages[stage].argb : 0;
}

const char *st_stage_detail_key(unsigned stage)
{
    return stage < ST_STAGE_COUNT ? stages[stage].detail_key : "detail";
}

const char *st_outcome_name(unsigned outcome)
{
    return outcome < ST_OUTCOME_COUNT ? outcomes[outcome] : NULL;
}
