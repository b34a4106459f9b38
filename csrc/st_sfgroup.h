/* st_sfgroup: splits a safetensors header's tensors into components by key
 * prefix (model.diffusion_model., first_stage_model., text_encoders.*., ...)
 * and totals each component (tensors, parameters, bytes per dtype), so the
 * classifier gets a few groups instead of every tensor. */
#ifndef ST_SFGROUP_H
#define ST_SFGROUP_H

#include <stddef.h>
#include <stdint.h>

#include "st_safetensors.h"

#define ST_SFG_DTYPES 32 /* above the reader's dtype count */

typedef struct st_sfg_group {
    int pattern;         /* index of the prefix pattern, -1 for keys under none */
    uint32_t first;      /* a tensor of the group: its name starts with the prefix */
    uint32_t prefix_len; /* bytes of that name that are the prefix */
    uint64_t n_tensors;
    uint64_t parameters;                 /* elements, summed over the group's tensors */
    uint64_t bytes;                      /* data bytes, from the offsets */
    uint64_t dtype_bytes[ST_SFG_DTYPES]; /* bytes per reader dtype index */
} st_sfg_group;

typedef struct st_sfg_result {
    st_sfg_group *groups; /* in order of first appearance */
    size_t n_groups;
    uint32_t *group_of; /* per tensor of the header: its group */
} st_sfg_result;

/* The length of the prefix of s (len bytes) that pattern matches, or -1.
 * Patterns are literal text where "#" stands for a run of ASCII digits
 * (longest first) and "*" for a run of one or more bytes (shortest first):
 * the first match a backtracking regex engine would find for the regex with
 * "#" as ([0-9]+) and "*" as .+? under re.match with DOTALL. Linear in len
 * for patterns with at most one "*" and no "#" right after it (StageTrace's
 * own); more wildcards can backtrack for longer. Can't fail. */
long st_sfg_match(const char *pattern, const char *s, size_t len);

/* Group h's tensors: each goes to the group of the first pattern that
 * matches a prefix of its name, the matched text being the group's prefix
 * (so "text_encoders.*." makes one group per encoder); names no pattern
 * matches form the group with pattern -1 and an empty prefix. Returns 0, or
 * -1 when out of memory. On success free *out with st_sfg_free. */
int st_sfg_group_tensors(const st_sf_header *h, const char *const *patterns, size_t n_patterns,
                         st_sfg_result *out);

/* Free a result; safe on a zeroed one. Can't fail. */
void st_sfg_free(st_sfg_result *r);

#endif
