/* st_sfgroup: component groups of a safetensors header. One pass over the
 * tensors: match each name against the prefix patterns, find the group by
 * its prefix text in a hash table, add the tensor to the group's totals. */
#include "st_sfgroup.h"

#include <stdlib.h>
#include <string.h>

// --- Prefix patterns ------------------------------------------------------------

/* Match pattern p against s (len bytes), in the order a backtracking regex
 * engine tries: "#" longest digit run first, "*" shortest run of whole
 * UTF-8 characters first (the reader has validated the UTF-8). The
 * patterns are StageTrace's own short table, so the recursion depth is at
 * most the number of "#" and "*" in one pattern. */
static long match_from(const char *p, const char *s, size_t len, size_t at)
{
    for (; *p; p++) {
        if (*p == '#') {
            size_t digits = 0;
            while (at + digits < len && s[at + digits] >= '0' && s[at + digits] <= '9') {
                digits++;
            }
            for (; digits > 0; digits--) {
                long m = match_from(p + 1, s, len, at + digits);
                if (m >= 0) {
                    return m;
                }
            }
            return -1;
        }
        if (*p == '*') {
            for (size_t take = 1; at + take <= len; take++) {
                if (at + take < len && ((unsigned char)s[at + take] & 0xC0) == 0x80) {
                    continue; /* whole UTF-8 characters only, as a str regex */
                }
                long m = match_from(p + 1, s, len, at + take);
                if (m >= 0) {
                    return m;
                }
            }
            return -1;
        }
        if (at >= len || s[at] != *p) {
            return -1;
        }
        at++;
    }
    return (long)at;
}

long st_sfg_match(const char *pattern, const char *s, size_t len)
{
    return match_from(pattern, s, len, 0);
}

// --- Grouping -------------------------------------------------------------------

typedef struct grouper {
    const st_sf_header *h;
    st_sfg_result *r;
    size_t groups_cap;
    uint32_t *slots; /* group index + 1; 0 is empty */
    size_t slots_cap;
    size_t last; /* the group found last */
} grouper;

static const char *prefix_of(const grouper *g, const st_sfg_group *group)
{
    return g->h->strings + g->h->tensors[group->first].name_off;
}

static int rehash(grouper *g)
{
    size_t cap = g->slots_cap ? g->slots_cap * 2 : 16;
    uint32_t *slots = calloc(cap, sizeof *slots);
    if (!slots) {
        return -1;
    }
    for (size_t i = 0; i < g->r->n_groups; i++) {
        const st_sfg_group *group = &g->r->groups[i];
        size_t at = (size_t)st_sf_name_hash(prefix_of(g, group), group->prefix_len) & (cap - 1);
        while (slots[at]) {
            at = (at + 1) & (cap - 1);
        }
        slots[at] = (uint32_t)(i + 1);
    }
    free(g->slots);
    g->slots = slots;
    g->slots_cap = cap;
    return 0;
}

/* The group whose prefix is the first prefix_len bytes of tensor i's name,
 * created if new; -1 when out of memory. */
static long group_for(grouper *g, uint32_t i, uint32_t prefix_len, int pattern)
{
    const char *name = g->h->strings + g->h->tensors[i].name_off;
    if (g->r->n_groups) { /* tensors of one component mostly come together */
        const st_sfg_group *last = &g->r->groups[g->last];
        if (last->prefix_len == prefix_len && memcmp(prefix_of(g, last), name, prefix_len) == 0) {
            return (long)g->last;
        }
    }
    size_t at = (size_t)st_sf_name_hash(name, prefix_len) & (g->slots_cap - 1);
    for (; g->slots[at]; at = (at + 1) & (g->slots_cap - 1)) {
        const st_sfg_group *group = &g->r->groups[g->slots[at] - 1];
        if (group->prefix_len == prefix_len && memcmp(prefix_of(g, group), name, prefix_len) == 0) {
            g->last = g->slots[at] - 1;
            return (long)g->last;
        }
    }
    st_sfg_result *r = g->r;
    if (r->n_groups == g->groups_cap) {
        size_t cap = g->groups_cap ? g->groups_cap * 2 : 8;
        st_sfg_group *groups = realloc(r->groups, cap * sizeof *groups);
        if (!groups) {
            return -1;
        }
        r->groups = groups;
        g->groups_cap = cap;
    }
    st_sfg_group *group = &r->groups[r->n_groups];
    memset(group, 0, sizeof *group);
    group->pattern = pattern;
    group->first = i;
    group->prefix_len = prefix_len;
    g->slots[at] = (uint32_t)(r->n_groups + 1);
    g->last = r->n_groups++;
    if (2 * r->n_groups > g->slots_cap && rehash(g) != 0) { /* keep the table at most half full */
        return -1;
    }
    return (long)(r->n_groups - 1);
}

int st_sfg_group_tensors(const st_sf_header *h, const char *const *patterns, size_t n_patterns,
                         st_sfg_result *out)
{
    memset(out, 0, sizeof *out);
    grouper g = {.h = h, .r = out};
    if (rehash(&g) != 0) {
        goto error;
    }
    out->group_of = malloc((h->n_tensors ? h->n_tensors : 1) * sizeof *out->group_of);
    if (!out->group_of) {
        goto error;
    }
    for (size_t i = 0; i < h->n_tensors; i++) {
        const st_sf_tensor *t = &h->tensors[i];
        const char *name = h->strings + t->name_off;
        int pattern = -1;
        long prefix_len = 0;
        for (size_t k = 0; k < n_patterns && pattern < 0; k++) {
            long m = st_sfg_match(patterns[k], name, t->name_len);
            if (m >= 0) {
                pattern = (int)k;
                prefix_len = m;
            }
        }
        long index = group_for(&g, (uint32_t)i, (uint32_t)prefix_len, pattern);
        if (index < 0) {
            goto error;
        }
        st_sfg_group *group = &out->groups[index];
        const uint64_t *shape = st_sf_shape(h, t);
        uint64_t elements = 1;
        for (unsigned d = 0; d < t->ndim; d++) {
            elements *= shape[d]; /* the reader checked this cannot overflow */
        }
        group->n_tensors++;
        group->parameters += elements;
        group->bytes += t->end - t->begin;
        group->dtype_bytes[t->dtype < ST_SFG_DTYPES ? t->dtype : ST_SFG_DTYPES - 1] +=
            t->end - t->begin;
        out->group_of[i] = (uint32_t)index;
    }
    free(g.slots);
    return 0;
error:
    free(g.slots);
    st_sfg_free(out);
    return -1;
}

void st_sfg_free(st_sfg_result *r)
{
    free(r->groups);
    free(r->group_of);
    memset(r, 0, sizeof *r);
}
