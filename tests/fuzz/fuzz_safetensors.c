/* libFuzzer target: the safetensors header reader and the JSON escaper on
 * arbitrary bytes. Built and run (bounded) by tests/test_fuzz.py under
 * ASan/UBSan; `make fuzz` runs it longer. Any crash, leak, hang or
 * sanitizer report fails the run. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "st_json.h"
#include "st_safetensors.h"
#include "st_sink.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* as a whole file: the reader sees the prefix, header and data */
    st_sf_header h;
    st_sf_status status = st_sf_parse((const char *)data, size, size, 1u << 20, &h);
    if (status == ST_SF_OK) {
        /* results must be internally consistent */
        for (size_t i = 0; i < h.n_tensors; i++) {
            const st_sf_tensor *t = &h.tensors[i];
            if (t->begin > t->end || t->end > h.data_end || t->ndim > ST_SF_MAX_DIMS ||
                strlen(h.strings + t->name_off) != t->name_len || !st_sf_dtype_name(t->dtype)) {
                abort();
            }
            if (i && h.tensors[i - 1].begin > t->begin) {
                abort();
            }
        }
        if (8 + h.header_len + h.data_end > h.file_size) {
            abort();
        }
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
