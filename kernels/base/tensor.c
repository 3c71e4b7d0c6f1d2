/* kernels/base/tensor.c — dtype helpers, the arena and its planner. */
#include "tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct { size_t size; const char *name; } dtype_info[MS_DTYPE_COUNT] = {
    [MS_DTYPE_F32] = {4, "F32"}, [MS_DTYPE_F16] = {2, "F16"}, [MS_DTYPE_BF16] = {2, "BF16"},
    [MS_DTYPE_F64] = {8, "F64"}, [MS_DTYPE_I64] = {8, "I64"}, [MS_DTYPE_I32] = {4, "I32"},
    [MS_DTYPE_I16] = {2, "I16"}, [MS_DTYPE_I8] = {1, "I8"}, [MS_DTYPE_U8] = {1, "U8"},
    [MS_DTYPE_U16] = {2, "U16"}, [MS_DTYPE_U32] = {4, "U32"}, [MS_DTYPE_U64] = {8, "U64"},
    [MS_DTYPE_BOOL] = {1, "BOOL"},
};

size_t ms_dtype_size(ms_dtype t) { return (unsigned)t < MS_DTYPE_COUNT ? dtype_info[t].size : 0; }
const char *ms_dtype_name(ms_dtype t) { return (unsigned)t < MS_DTYPE_COUNT ? dtype_info[t].name : "?"; }

int64_t ms_tensor_numel(const ms_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

size_t ms_tensor_bytes(const ms_tensor *t) { return (size_t)ms_tensor_numel(t) * ms_dtype_size(t->dtype); }

const char *ms_shape_str(const int64_t *shape, int ndim, char *buf, size_t n)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "(");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (o < n) snprintf(buf + o, n - o, ")");
    return buf;
}

float ms_f16_to_f32(uint16_t h)
{
    uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31, m = h & 1023, u;
    if (e == 0) {
        float f = ldexpf((float)m, -24);
        return s ? -f : f;
    }
    if (e == 31) u = s | 0x7f800000u | (m << 13);
    else u = s | ((e + 112) << 23) | (m << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t ms_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t s = (u >> 16) & 0x8000, e = (u >> 23) & 255, m = u & 0x7fffff;
    if (e == 255) return (uint16_t)(s | 0x7c00 | (m ? 0x200 : 0));
    int ne = (int)e - 127 + 15;
    if (ne >= 31) return (uint16_t)(s | 0x7c00);
    if (ne <= 0) {
        if (ne < -10) return (uint16_t)s;
        m |= 0x800000;
        int shift = 14 - ne;
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(s | r);
    }
    uint32_t r = ((uint32_t)ne << 10) | (m >> 13), rem = m & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (uint16_t)(s | r);
}

float ms_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t ms_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    /* NaN: truncating could clear every mantissa bit left (an inf); set the quiet bit instead */
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);
    /* adding 0x7fff (+1 when the kept part is odd) carries into bit 16 exactly when the dropped half is above
     * one half (or equal with an odd kept part); a carry out of the mantissa bumps the exponent, up to inf */
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float ms_bf16_round(float f) { return ms_bf16_to_f32(ms_f32_to_bf16(f)); }

void ms_bf16_round_copy(float *dst, const float *src, int64_t n)
{
    for (int64_t i = 0; i < n; i++) dst[i] = ms_bf16_round(src[i]);
}

size_t ms_arena_reserve(ms_arena *a, size_t bytes)
{
    size_t off = a->used;
    if (!bytes) bytes = 4;
    a->used += (bytes + MS_ARENA_ALIGN - 1) & ~(size_t)(MS_ARENA_ALIGN - 1);
    return off;
}

ms_status ms_arena_alloc(ms_arena *a, ms_device *dev, int zero)
{
    a->dev = dev;
    a->base = NULL;
    if (a->used == 0) return MS_OK;
    MS_TRY(ms_dev_alloc(dev, a->used, &a->base));
    if (zero) return ms_dev_zero(dev, a->base, a->used);
    return MS_OK;
}

void *ms_arena_ptr(const ms_arena *a, size_t offset) { return (char *)a->base + offset; }

void ms_arena_free(ms_arena *a)
{
    if (a->base && a->dev) ms_dev_free(a->dev, a->base);
    a->base = NULL;
    a->used = 0;
}

/* ---- ms_plan ---------------------------------------------------------------------------------------------- */

static void plan_add(ms_plan *p, void *ptr, int kind, size_t elem, int64_t count)
{
    if (p->oom) return;
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 64;
        ms_plan_slot *s = realloc(p->slot, (size_t)cap * sizeof *s);
        if (!s) { p->oom = 1; return; }
        p->slot = s;
        p->cap = cap;
    }
    size_t off = ms_arena_reserve(&p->layout, (size_t)(count > 0 ? count : 1) * elem);
    p->slot[p->n++] = (ms_plan_slot){ptr, kind, off};
}

void ms_plan_add_f32(ms_plan *p, float **ptr, int64_t count) { plan_add(p, ptr, 0, sizeof(float), count); }
void ms_plan_add_i32(ms_plan *p, int32_t **ptr, int64_t count) { plan_add(p, ptr, 1, sizeof(int32_t), count); }

static void plan_bind(const ms_plan *p, const ms_arena *a)
{
    for (int i = 0; i < p->n; i++) {
        void *at = ms_arena_ptr(a, p->slot[i].off);
        if (p->slot[i].kind == 0) *(float **)p->slot[i].ptr = at;
        else *(int32_t **)p->slot[i].ptr = at;
    }
}

ms_status ms_plan_alloc(ms_plan *p, ms_device *dev, ms_arena *a)
{
    MS_FAIL_IF(p->oom, MS_ENOMEM, "out of memory (arena plan)");
    memset(a, 0, sizeof *a);
    a->used = p->layout.used;
    ms_status rc = ms_arena_alloc(a, dev, 1);
    if (rc) {
        a->used = 0;
        return rc;
    }
    plan_bind(p, a);
    return MS_OK;
}

ms_status ms_plan_fit(ms_plan *p, ms_device *dev, ms_arena *a, int *fresh)
{
    MS_FAIL_IF(p->oom, MS_ENOMEM, "out of memory (arena plan)");
    *fresh = !(a->base && a->used == p->layout.used);
    if (!*fresh) {
        plan_bind(p, a);
        return MS_OK;
    }
    ms_arena_free(a);
    return ms_plan_alloc(p, dev, a);
}

void ms_plan_free(ms_plan *p)
{
    free(p->slot);
    memset(p, 0, sizeof *p);
}

ms_status ms_plan_largest_batch(ms_status (*bytes_of)(void *ctx, int batch, size_t *bytes), void *ctx, size_t budget,
                                int max_batch, int *batch)
{
    int lo = 0, hi = max_batch; /* bytes_of(lo) fits (lo 0: nothing checked yet); the answer is in [lo, hi] */
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        size_t n = 0;
        MS_TRY(bytes_of(ctx, mid, &n));
        if (n <= budget) lo = mid;
        else hi = mid - 1;
    }
    *batch = lo;
    return MS_OK;
}
