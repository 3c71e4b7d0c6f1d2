/* kernels/base/tensor.h — a tensor is a plain struct: pointer, shape, dtype, device. It never owns memory;
 * models keep parameters, gradients and activations in a few large allocations (ms_arena, laid out by an ms_plan)
 * and point into them. */
#ifndef MS_TENSOR_H
#define MS_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "device.h"

#define MS_MAX_DIMS 8

typedef enum {
    MS_DTYPE_F32 = 0, MS_DTYPE_F16, MS_DTYPE_BF16, MS_DTYPE_F64,
    MS_DTYPE_I64, MS_DTYPE_I32, MS_DTYPE_I16, MS_DTYPE_I8, MS_DTYPE_U8, MS_DTYPE_U16, MS_DTYPE_U32, MS_DTYPE_U64,
    MS_DTYPE_BOOL, MS_DTYPE_COUNT
} ms_dtype;

typedef struct ms_tensor {
    void *data;
    int64_t shape[MS_MAX_DIMS];
    int ndim;             /* 0 = scalar (numel 1) */
    ms_dtype dtype;
    ms_device_kind device;
} ms_tensor;

size_t ms_dtype_size(ms_dtype t);
const char *ms_dtype_name(ms_dtype t); /* "F32", "BF16", ... (safetensors spelling) */
int64_t ms_tensor_numel(const ms_tensor *t);
size_t ms_tensor_bytes(const ms_tensor *t);
/* "(2, 3, 4)" into buf. */
const char *ms_shape_str(const int64_t *shape, int ndim, char *buf, size_t n);
/* f16 / bf16 <-> f32. Both narrowings round to nearest, ties to even; overflow gives ±inf, NaN stays a quiet NaN
 * of the same sign, subnormals round like any other value (bf16 keeps fp32's exponent range: its subnormals are
 * multiples of 2^-133). Tested by tests/base/test_bf16.c (bf16) and tests/base/test_base.c (f16). */
float ms_f16_to_f32(uint16_t h);
uint16_t ms_f32_to_f16(float f);
float ms_bf16_to_f32(uint16_t h);
uint16_t ms_f32_to_bf16(float f);
/* f rounded to the nearest bf16 value, kept as a float (what the bf16 GEMM inputs are: docs/PRECISION.md). */
float ms_bf16_round(float f);
/* dst[i] = ms_bf16_round(src[i]) for i < n; dst may be src (in place). */
void ms_bf16_round_copy(float *dst, const float *src, int64_t n);

/* ms_arena: one allocation carved into MS_ARENA_ALIGN-aligned pieces. Sizes are reserved first (offsets only),
 * then ms_arena_alloc makes the single allocation and ms_arena_ptr turns offsets into pointers. The CUDA kernels
 * rely on the alignment (vector loads); every piece also gets at least one element, so no two pointers alias. */
#define MS_ARENA_ALIGN 64

typedef struct ms_arena {
    ms_device *dev;
    void *base;
    size_t used;
} ms_arena;

size_t ms_arena_reserve(ms_arena *a, size_t bytes); /* returns the offset; 0 bytes reserve one 4-byte element */
ms_status ms_arena_alloc(ms_arena *a, ms_device *dev, int zero);
void *ms_arena_ptr(const ms_arena *a, size_t offset);
void ms_arena_free(ms_arena *a);

/* ms_plan: the layout of one arena, written as a list of (pointer, element count) pairs. A model's activations
 * are planned in one place: ms_plan_add_f32 / _i32 record where a pointer lives and how much it needs (offsets
 * only, nothing allocated); ms_plan_alloc then makes the arena (zeroed) and writes every pointer, or ms_plan_fit
 * keeps an arena that already has the planned size. The plan's table is the caller's to release (ms_plan_free);
 * the arena outlives it. Counts <= 0 reserve one element.
 *
 *     ms_plan pl = {0};
 *     ms_plan_add_f32(&pl, &act->h, rows * hidden);
 *     ms_plan_add_i32(&pl, &act->idx, rows);
 *     ms_status rc = ms_plan_alloc(&pl, dev, &model->arena);
 *     ms_plan_free(&pl);
 */
typedef struct ms_plan_slot {
    void *ptr;    /* float ** or int32_t **, by kind */
    int kind;     /* 0 float, 1 int32 */
    size_t off;
} ms_plan_slot;

typedef struct ms_plan {
    ms_arena layout;    /* only .used: the offsets handed out so far */
    ms_plan_slot *slot;
    int n, cap;
    int oom;            /* growing the table failed: reported by ms_plan_alloc / ms_plan_fit */
} ms_plan;

void ms_plan_add_f32(ms_plan *p, float **ptr, int64_t count);
void ms_plan_add_i32(ms_plan *p, int32_t **ptr, int64_t count);
/* Bytes the planned arena takes. */
static inline size_t ms_plan_bytes(const ms_plan *p) { return p->layout.used; }
/* Allocates the planned arena into *a (zeroed; whatever a held is not freed) and points every slot into it. */
ms_status ms_plan_alloc(ms_plan *p, ms_device *dev, ms_arena *a);
/* Re-planning a buffer set whose sizes may change between calls: when *a already holds exactly the planned size,
 * the slots point into it and its contents stay (*fresh = 0); else *a is freed and ms_plan_alloc'd (*fresh = 1). */
ms_status ms_plan_fit(ms_plan *p, ms_device *dev, ms_arena *a, int *fresh);
/* Releases the plan's table (never the arena). */
void ms_plan_free(ms_plan *p);

/* The largest batch b in [1, max_batch] whose bytes_of(ctx, b) fits budget (0 when even batch 1 does not), for a
 * bytes_of that grows with the batch — a model's count-only size (e.g. ms_mae_step_bytes). */
ms_status ms_plan_largest_batch(ms_status (*bytes_of)(void *ctx, int batch, size_t *bytes), void *ctx, size_t budget,
                                int max_batch, int *batch);

#endif
