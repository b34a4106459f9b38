/* st_json: JSON string escaping with strict UTF-8 validation (Unicode ch. 3,
 * table 3-7: the well-formed byte sequences). */
#include "st_json.h"

#include <stdint.h>

static const char hex_digits[] = "0123456789abcdef";
static const char replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */

size_t st_utf8_sequence(const unsigned char *p, size_t avail, size_t *bad_len)
{
    unsigned char c = p[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c < 0x80) {
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) {
            lo = 0xA0; /* overlong */
        } else if (c == 0xED) {
            hi = 0x9F; /* surrogates */
        }
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) {
            lo = 0x90; /* overlong */
        } else if (c == 0xF4) {
            hi = 0x8F; /* above U+10FFFF */
        }
    } else {
        *bad_len = 1;
        return 0;
    }
    size_t i = 1;
    for (; i < need && i < avail; i++) {
        unsigned char b = p[i];
        unsigned char min = i == 1 ? lo : 0x80, max = i == 1 ? hi : 0xBF;
        if (b < min || b > max) {
            break;
        }
    }
    if (i == need) {
        return need;
    }
    *bad_len = i;
    return 0;
}

size_t st_json_write_string(st_sink *out, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t replaced = 0, run = 0, i = 0;
    st_sink_putc(out, '"');
    while (i < len) {
        unsigned char c = p[i];
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') {
            run++; /* plain ASCII: copied in runs */
            i++;
            continue;
        }
        if (run) {
            st_sink_write(out, p + i - run, run);
            run = 0;
        }
        if (c >= 0x80) {
            size_t bad = 0, n = st_utf8_sequence(p + i, len - i, &bad);
            if (n) {
                st_sink_write(out, p + i, n);
                i += n;
            } else {
                st_sink_write(out, replacement, 3);
                replaced++;
                i += bad;
            }
            continue;
        }
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t esc_len = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex_digits[c >> 4];
            esc[5] = hex_digits[c & 15];
            esc_len = 6;
        }
        st_sink_write(out, esc, esc_len);
        i++;
    }
    if (run) {
        st_sink_write(out, p + i - run, run);
    }
    st_sink_putc(out, '"');
    return replaced;
}
