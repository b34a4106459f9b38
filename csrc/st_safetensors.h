/* st_safetensors: reads and validates a .safetensors header without touching
 * the tensor data, so a 20 GB file reads as fast as a 20 KB one. */
#ifndef ST_SAFETENSORS_H
#define ST_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

/* One status per failure; each comes with the byte offset (from the start of
 * the file) where it was found. */
typedef enum st_sf_status {
    ST_SF_OK = 0,
    ST_SF_OPEN_FAILED,       /* see err_errno */
    ST_SF_READ_FAILED,       /* see err_errno */
    ST_SF_TOO_SHORT,         /* fewer than 8 bytes: no header length */
    ST_SF_HEADER_TOO_LARGE,  /* header length above the cap */
    ST_SF_HEADER_BEYOND_EOF, /* header length runs past the end of the file */
    ST_SF_BAD_JSON,          /* see json_status */
    ST_SF_NOT_AN_OBJECT,     /* the header is not a JSON object */
    ST_SF_BAD_ENTRY,         /* a tensor entry is not an object or lacks a field */
    ST_SF_DUPLICATE_KEY,     /* a tensor name (or an entry field) appears twice */
    ST_SF_BAD_DTYPE,         /* unknown dtype string */
    ST_SF_BAD_SHAPE,         /* shape not a list of non-negative integers */
    ST_SF_BAD_OFFSETS,       /* data_offsets not [begin, end] with begin <= end */
    ST_SF_SIZE_MISMATCH,     /* dtype size x shape != end - begin */
    ST_SF_OVERLAP,           /* two tensors share bytes */
    ST_SF_OUT_OF_RANGE,      /* offsets beyond the data section the file has */
    ST_SF_BAD_METADATA,      /* __metadata__ is not an object of strings */
    ST_SF_GAP,               /* data bytes no tensor covers, before or between tensors */
    ST_SF_TRAILING_DATA,     /* bytes after the last tensor's data */
    ST_SF_NO_MEMORY,
    ST_SF_STATUS_COUNT
} st_sf_status;

#define ST_SF_DEFAULT_HEADER_CAP 100000000u /* as the safetensors library */

typedef struct st_sf_tensor {
    uint32_t name_off; /* into st_sf_header.strings, NUL-terminated */
    uint32_t name_len;
    uint32_t dims_off; /* into st_sf_header.dims: the shape, ndim values */
    uint32_t ndim;     /* any number, as the safetensors library */
    uint8_t dtype;     /* index into the dtype table (st_sf_dtype_name) */
    uint64_t begin, end; /* relative to the data section */
} st_sf_tensor;

typedef struct st_sf_meta {
    uint32_t key_off, key_len, value_off, value_len; /* into strings */
} st_sf_meta;

typedef struct st_sf_header {
    st_sf_tensor *tensors;
    size_t n_tensors;
    st_sf_meta *meta;
    size_t n_meta;
    int has_metadata;
    char *strings; /* names, keys, values, each NUL-terminated */
    size_t strings_len;
    uint64_t *dims; /* every tensor's shape, one after the other (never NULL on success) */
    size_t n_dims;
    uint64_t header_len; /* N, the JSON's length */
    uint64_t file_size;
    uint64_t data_end;   /* largest tensor end: the data the header declares */
    uint32_t *name_slots; /* hash index of the names (tensor index + 1; 0 empty), for st_sf_find */
    size_t name_slots_cap;
    /* on failure */
    uint64_t err_offset;
    int err_errno;
    int json_status;      /* st_json_status when BAD_JSON */
    char err_detail[160]; /* tensor name or field involved, if any */
} st_sf_header;

/* Read the header of the file at path, validating it as the safetensors
 * library (0.8, and so ComfyUI) does, so that what it refuses fails here and
 * what it loads reads here: header length within the file and below
 * header_cap, strict JSON nested at most 127 deep, entries well formed (an
 * object, or the array [dtype, shape, data_offsets]; a dtype string or
 * {"DTYPE": null}), a tensor named twice keeps its last entry, offsets
 * sized as dtype x shape and covering the data section exactly: from its
 * first byte to the end of the file, without gaps or overlaps. Tensors
 * come out in file order (by begin offset). Only a regular file is read,
 * and opening never blocks. Needs no GIL. On failure *h holds the error
 * fields and nothing to free; on success free it with st_sf_header_free. */
st_sf_status st_sf_read(const char *path, uint64_t header_cap, st_sf_header *h);

/* Same, over a header already in memory (the 8-byte length prefix included)
 * for a file of file_size bytes. For fuzzing and tests. */
st_sf_status st_sf_parse(const char *bytes, size_t len, uint64_t file_size, uint64_t header_cap,
                         st_sf_header *h);

void st_sf_header_free(st_sf_header *h);

/* The dtype's safetensors name ("F16"), its size in bits, or NULL/0 when out of range. */
const char *st_sf_dtype_name(unsigned dtype);
unsigned st_sf_dtype_bits(unsigned dtype);

/* Tensor t's shape: t->ndim values. Can't fail. */
static inline const uint64_t *st_sf_shape(const st_sf_header *h, const st_sf_tensor *t)
{
    return h->dims + t->dims_off;
}

/* The index of the tensor named name (len bytes) in h, or -1. Lock-free on a
 * header nobody modifies; can't fail. */
long st_sf_find(const st_sf_header *h, const char *name, size_t len);

/* A 64-bit hash of len bytes at s, for hash tables of names: spreads them,
 * nothing more (confirm equal hashes with memcmp). Can't fail. */
uint64_t st_sf_name_hash(const char *s, size_t len);

/* A short English description of a status. Static storage. */
const char *st_sf_status_text(st_sf_status status);

/* The status's identifier ("SIZE_MISMATCH"). Static storage. */
const char *st_sf_status_name(st_sf_status status);

#endif
