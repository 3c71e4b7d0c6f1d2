/* tests/base/test_plan.c — the arena planner (kernels/base/tensor.h: ms_plan): random lists of pieces, checked
 * against an independent layout computed here (each piece rounded up to 64 bytes, in order, a count <= 0 still one
 * element): every pointer lands at its expected offset and is 64-byte aligned, pieces never overlap, a fresh arena is
 * zeroed, ms_plan_fit keeps an arena of the same size (and its contents) but replaces one of another size, and the
 * table grows past any fixed limit. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/device.h"
#include "base/tensor.h"
#include "harness.h"

enum { N = 200 };

static size_t round64(size_t b) { return (b + 63) / 64 * 64; }

/* Plans n random pieces (f32 or i32) into p; ptrs/counts/expected offsets recorded. */
static size_t plan_random(ms_rng *r, ms_plan *p, void **ptrs, int64_t *counts, int *is_i32, size_t *off, int n)
{
    size_t used = 0;
    for (int i = 0; i < n; i++) {
        int64_t c = (int64_t)ms_rng_below(r, 5000) - 2; /* some 0 and negative counts: one element each */
        is_i32[i] = (int)ms_rng_below(r, 2);
        counts[i] = c;
        off[i] = used;
        used += round64((size_t)(c > 0 ? c : 1) * 4);
        if (is_i32[i]) ms_plan_add_i32(p, (int32_t **)&ptrs[i], c);
        else ms_plan_add_f32(p, (float **)&ptrs[i], c);
    }
    return used;
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_rng r;
    ms_rng_init(&r, seed, 0);
    ms_device dev;
    MS_CHECK_OK(ms_device_init(&dev, MS_DEV_CPU, 1));
    static void *ptrs[N];
    static int64_t counts[N];
    static int is_i32[N];
    static size_t off[N];
    int n = 1 + (int)ms_rng_below(&r, N);

    ms_plan p = {0};
    size_t want = plan_random(&r, &p, ptrs, counts, is_i32, off, n);
    MS_CHECK(ms_plan_bytes(&p) == want, "planned %zu bytes, expected %zu", ms_plan_bytes(&p), want);
    ms_arena a = {0};
    MS_CHECK_OK(ms_plan_alloc(&p, &dev, &a));
    ms_plan_free(&p);
    int misplaced = 0, unaligned = 0, dirty = 0;
    for (int i = 0; i < n; i++) {
        char *q = ptrs[i];
        if (q - (char *)ptrs[0] != (ptrdiff_t)off[i]) misplaced++;
        if ((uintptr_t)q % 64) unaligned++;
        size_t bytes = (size_t)(counts[i] > 0 ? counts[i] : 1) * 4;
        for (size_t k = 0; k < bytes; k++) dirty += q[k] != 0;
        memset(q, 0xA5, bytes); /* writing every piece in full: ASan would see an overlap or overrun */
    }
    MS_CHECK(!misplaced && !unaligned && !dirty, "%d pieces misplaced, %d unaligned, %d nonzero bytes in a fresh arena",
             misplaced, unaligned, dirty);

    /* the same plan again: the arena and its contents stay */
    ms_rng r2;
    ms_rng_init(&r2, seed, 0);
    (void)ms_rng_below(&r2, N);
    void *first = ptrs[0];
    ms_plan q = {0};
    plan_random(&r2, &q, ptrs, counts, is_i32, off, n);
    int fresh = -1;
    MS_CHECK_OK(ms_plan_fit(&q, &dev, &a, &fresh));
    ms_plan_free(&q);
    MS_CHECK(fresh == 0 && ptrs[0] == first && ((unsigned char *)ptrs[0])[0] == 0xA5,
             "ms_plan_fit replaced an arena of the same size (fresh %d)", fresh);

    /* another size: a new, zeroed arena */
    ms_plan big = {0};
    float *b = NULL;
    int64_t nb = (int64_t)(want / 4) + 1000 + (int64_t)ms_rng_below(&r, 1000);
    ms_plan_add_f32(&big, &b, nb);
    MS_CHECK_OK(ms_plan_fit(&big, &dev, &a, &fresh));
    ms_plan_free(&big);
    int nz = 0;
    for (int64_t i = 0; i < nb; i++) nz += b[i] != 0.f;
    MS_CHECK(fresh == 1 && nz == 0, "ms_plan_fit of another size: fresh %d, %d nonzero", fresh, nz);

    /* the table grows */
    ms_plan g = {0};
    float *dummy = NULL;
    int ng = 50000 + (int)ms_rng_below(&r, 50000);
    for (int i = 0; i < ng; i++) ms_plan_add_f32(&g, &dummy, 1);
    MS_CHECK(g.n == ng && !g.oom && ms_plan_bytes(&g) == (size_t)ng * 64, "a table of %d pieces: n %d, oom %d", ng,
             g.n, g.oom);
    ms_plan_free(&g);
    ms_arena_free(&a);
    ms_device_free(&dev);
    return ms_test_done();
}
