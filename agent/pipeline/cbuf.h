/* A growing byte buffer and JSON string escaping, for the compiled formatters
 * (collectors/journald/format.c, collectors/syslog/_lines.c). */
#ifndef ALPACON_CBUF_H
#define ALPACON_CBUF_H

#include <stdlib.h>
#include <string.h>

typedef struct {
    char *buf;
    size_t len, cap;
} Arena;

static inline int arena_put(Arena *a, const void *p, size_t n) {
    if (a->len + n > a->cap) {
        size_t cap = a->cap ? a->cap : 4096;
        while (cap < a->len + n)
            cap *= 2;
        char *nb = realloc(a->buf, cap);
        if (nb == NULL)
            return -1;
        a->buf = nb;
        a->cap = cap;
    }
    memcpy(a->buf + a->len, p, n);
    a->len += n;
    return 0;
}

static const char HEX[] = "0123456789abcdef";

/* ``p[0:n]`` (valid UTF-8) as a JSON string, quotes included, escaped as orjson escapes it:
 * ", \\ and the control characters; everything else as it is. */
static inline int put_escaped(Arena *out, const unsigned char *p, size_t n) {
    char u[6] = {'\\', 'u', '0', '0', 0, 0};
    if (arena_put(out, "\"", 1) < 0)
        return -1;
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        if (arena_put(out, p + run, i - run) < 0)
            return -1;
        run = i + 1;
        const char *esc = NULL;
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        }
        if (esc != NULL) {
            if (arena_put(out, esc, 2) < 0)
                return -1;
        } else {
            u[4] = HEX[c >> 4];
            u[5] = HEX[c & 15];
            if (arena_put(out, u, 6) < 0)
                return -1;
        }
    }
    if (arena_put(out, p + run, n - run) < 0 || arena_put(out, "\"", 1) < 0)
        return -1;
    return 0;
}

#endif
