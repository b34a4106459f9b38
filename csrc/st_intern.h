/* st_intern: process-wide table of interned UTF-8 names; events carry the ids. */
#ifndef ST_INTERN_H
#define ST_INTERN_H

#include <stddef.h>
#include <stdint.h>

typedef enum st_intern_status {
    ST_INTERN_OK = 0,
    ST_INTERN_NO_MEMORY,
    ST_INTERN_FULL, /* more than ST_INTERN_MAX names */
} st_intern_status;

#define ST_INTERN_MAX (1u << 22)

/* Id 0 is always the empty name, meaning "none". */
#define ST_INTERN_NONE 0u

/* Intern the len bytes at s (any bytes, copied) and store its id in *id; the
 * same bytes always give the same id. Lock-free for a name already interned;
 * a new name takes the table's own lock. No GIL needed. Fails with NO_MEMORY
 * or FULL, leaving *id untouched. */
st_intern_status st_intern(const char *s, size_t len, uint32_t *id);

/* The bytes of an interned id and their length, or NULL for an unknown id.
 * The storage lives until the process ends. Lock-free; can't fail. */
const char *st_intern_lookup(uint32_t id, size_t *len);

/* Number of ids handed out so far, the empty name included. Can't fail. */
uint32_t st_intern_count(void);

/* pthread_atfork handlers, registered by st_fork: prepare takes the table's
 * lock, parent and child release it. */
void st_intern_fork_prepare(void);
void st_intern_fork_parent(void);
void st_intern_fork_child(void);

#endif
