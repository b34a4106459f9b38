/* libFuzzer target: the safetensors header reader and the JSON escaper on
 * arbitrary bytes. Built and run (bounded) by tests/test_fuzz.py under
 * ASan/UBSan; `make fuzz` runs it longer. Any crash, leak, hang or
 * sanitizer report fails the run. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "st_json.h"
#include "st_safetensors.h"
#include "st_sfgroup.h"
#include "st_sink.h"

/* ComfyUI checkpoint prefixes, as comfy_nodes/anatomy.py's PREFIX_PATTERNS */
static const char *const patterns[] = {"model.diffusion_model.", "first_stage_model.", "vae.",
                                       "cond_stage_model.", "conditioner.embedders.#.", "text_encoders.*.",
                                       "control_model.", "model_ema.", "#."};

/* Grouping must account for every tensor exactly once, with each tensor's
 * name starting with its group's prefix. */
static void check_groups(const st_sf_header *h)
{
    st_sfg_result g;
    if (st_sfg_group_tensors(h, patterns, sizeof patterns / sizeof patterns[0], &g) != 0) {
        return; /* out of memory */
    }
    uint64_t tensors = 0, bytes = 0;
    for (size_t k = 0; k < g.n_groups; k++) {
        const st_sfg_group *group = &g.groups[k];
        uint64_t by_dtype = 0;
        for (unsigned d = 0; d < ST_SFG_DTYPES; d++) {
            by_dtype += group->dtype_bytes[d];
        }
        if (by_dtype != group->bytes || group->n_tensors == 0 || (group->pattern < 0) != (group->prefix_len == 0)) {
            abort();
        }
        tensors += group->n_tensors;
        bytes += group->bytes;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < h->n_tensors; i++) {
        const st_sf_tensor *t = &h->tensors[i];
        const st_sfg_group *group = &g.groups[g.group_of[i]];
        const st_sf_tensor *first = &h->tensors[group->first];
        if (g.group_of[i] >= g.n_groups || group->prefix_len > t->name_len ||
            memcmp(h->strings + t->name_off, h->strings + first->name_off, group->prefix_len) != 0) {
            abort();
        }
        total += t->end - t->begin;
    }
    if (tensors != h->n_tensors || bytes != total) {
        abort();
    }
    st_sfg_free(&g);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* as a whole file: the reader sees the prefix, header and data */
    st_sf_header h;
    st_sf_status status = st_sf_parse((const char *)data, size, size, 1u << 20, &h);
    if (status == ST_SF_OK) {
        /* results must be internally consistent */
        for (size_t i = 0; i < h.n_tensors; i++) {
            const st_sf_tensor *t = &h.tensors[i];
            if (t->begin > t->end || t->end > h.data_end || (t->ndim && t->dims_off + t->ndim > h.n_dims) ||
                strlen(h.strings + t->name_off) != t->name_len || !st_sf_dtype_name(t->dtype)) {
                abort();
            }
            if (i && h.tensors[i - 1].begin > t->begin) {
                abort();
            }
            /* the name index finds every tensor by its own name */
            if (st_sf_find(&h, h.strings + t->name_off, t->name_len) != (long)i) {
                abort();
            }
        }
        /* the tensors tile the data section exactly, as the library demands */
        uint64_t reach = 0;
        for (size_t i = 0; i < h.n_tensors; i++) {
            if (h.tensors[i].begin != reach) {
                abort();
            }
            reach = h.tensors[i].end;
        }
        if (reach != h.data_end || 8 + h.header_len + h.data_end != h.file_size) {
            abort();
        }
        check_groups(&h);
    } else if ((unsigned)status >= ST_SF_STATUS_COUNT || h.n_tensors || h.tensors || h.strings ||
               (h.err_offset > size && status != ST_SF_TOO_SHORT)) {
        abort();
    }
    st_sf_header_free(&h);

    /* the escaper: any bytes in, JSON string out */
    st_sink sink;
    if (st_sink_init(&sink, -1, 16) == 0) {
        st_json_write_string(&sink, (const char *)data, size);
        if (sink.len < 2 || sink.buf[0] != '"' || sink.buf[sink.len - 1] != '"') {
            abort();
        }
        st_sink_free(&sink);
    }
    return 0;
}
