/* kernels/base/buf.c — see buf.h. */
#include "base/buf.h"

#include <stdlib.h>
#include <string.h>

void ms_buf_put(ms_buf *b, const void *s, size_t n)
{
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 4096;
        while (c < b->n + n + 1) c *= 2;
        uint8_t *q = realloc(b->p, c);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = c;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void ms_buf_free(ms_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}
