/* st_sink: buffered output with sticky errors and allocation-free number
 * formatting (the trace writer's hot path). */
#include "st_sink.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int st_sink_init(st_sink *s, int fd, size_t cap)
{
    memset(s, 0, sizeof *s);
    s->fd = fd;
    s->cap = cap ? cap : 4096;
    s->buf = malloc(s->cap);
    if (!s->buf) {
        s->failed = ENOMEM;
        return ENOMEM;
    }
    return 0;
}

void st_sink_free(st_sink *s)
{
    free(s->buf);
    s->buf = NULL;
    s->len = s->cap = 0;
}

static int flush_fd(st_sink *s)
{
    size_t off = 0;
    while (off < s->len) {
        ssize_t w = write(s->fd, s->buf + off, s->len - off);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno;
        }
        off += (size_t)w;
    }
    s->written += s->len;
    s->len = 0;
    return 0;
}

static int grow(st_sink *s, size_t need)
{
    size_t cap = s->cap;
    while (cap - s->len < need) {
        cap *= 2;
    }
    char *p = realloc(s->buf, cap);
    if (!p) {
        return ENOMEM;
    }
    s->buf = p;
    s->cap = cap;
    return 0;
}

void st_sink_write(st_sink *s, const void *p, size_t n)
{
    if (s->failed) {
        return;
    }
    if (s->cap - s->len < n) {
        int err = s->fd < 0 ? grow(s, n) : flush_fd(s);
        if (err) {
            s->failed = err;
            return;
        }
        if (s->cap - s->len < n) { /* larger than the whole buffer */
            if (s->fd < 0) {
                s->failed = ENOMEM;
                return;
            }
            const char *c = p;
            while (n) {
                ssize_t w = write(s->fd, c, n);
                if (w < 0) {
                    if (errno == EINTR) {
                        continue;
                    }
                    s->failed = errno;
                    return;
                }
                c += w;
                n -= (size_t)w;
                s->written += (uint64_t)w;
            }
            return;
        }
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
}

void st_sink_puts(st_sink *s, const char *str)
{
    st_sink_write(s, str, strlen(str));
}

void st_sink_u64(st_sink *s, uint64_t v)
{
    char tmp[20];
    int i = 20;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    st_sink_write(s, tmp + i, (size_t)(20 - i));
}

void st_sink_us_from_ns(st_sink *s, uint64_t ns)
{
    uint64_t frac = ns % 1000;
    char dec[4] = {'.', (char)('0' + frac / 100), (char)('0' + frac / 10 % 10),
                   (char)('0' + frac % 10)};
    st_sink_u64(s, ns / 1000);
    st_sink_write(s, dec, 4);
}

int st_sink_flush(st_sink *s)
{
    if (s->failed) {
        return s->failed;
    }
    if (s->fd >= 0) {
        s->failed = flush_fd(s);
    }
    return s->failed;
}
