/* st_sink: a buffered byte sink over a file descriptor, or over memory. */
#ifndef ST_SINK_H
#define ST_SINK_H

#include <stddef.h>
#include <stdint.h>

typedef struct st_sink {
    char *buf;
    size_t len;
    size_t cap;
    int fd;      /* -1: memory sink, buf grows instead of flushing */
    int failed;  /* sticky errno of the first failure, 0 if none */
    uint64_t written; /* bytes handed to the fd so far */
} st_sink;

/* A sink writing to fd (not owned) through a cap-byte buffer, or a growing
 * memory sink when fd is -1. Returns 0, or ENOMEM. */
int st_sink_init(st_sink *s, int fd, size_t cap);

/* Free the buffer (does not flush, does not close fd). Can't fail. */
void st_sink_free(st_sink *s);

/* Append bytes. Errors are sticky in s->failed and make later calls no-ops,
 * so a writer checks once at the end. */
void st_sink_write(st_sink *s, const void *p, size_t n);

/* Append one byte. Same error policy as st_sink_write. */
static inline void st_sink_putc(st_sink *s, char c)
{
    if (s->len < s->cap) {
        s->buf[s->len++] = c;
    } else {
        st_sink_write(s, &c, 1);
    }
}

/* Append a NUL-terminated string. Same error policy. */
void st_sink_puts(st_sink *s, const char *str);

/* Append v in decimal. Same error policy. */
void st_sink_u64(st_sink *s, uint64_t v);

/* Append ns / 1000 as a decimal microsecond value with three decimals
 * ("1234.567"), exact. Same error policy. */
void st_sink_us_from_ns(st_sink *s, uint64_t ns);

/* Write out the buffer (fd sinks). Returns 0 or the sticky errno. */
int st_sink_flush(st_sink *s);

#endif
