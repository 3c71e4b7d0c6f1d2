/* kernels/base/buf.h — a growable byte buffer for writers that build a file's header or body in memory.
 * An allocation failure is sticky (oom set, later puts do nothing), so a writer checks once at the end. The bytes
 * are always followed by a NUL, so a buffer of text can be used as a C string. */
#ifndef MS_BUF_H
#define MS_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct ms_buf {
    uint8_t *p;
    size_t n, cap;
    int oom;
} ms_buf;

void ms_buf_put(ms_buf *b, const void *s, size_t n);
void ms_buf_free(ms_buf *b);

#endif
