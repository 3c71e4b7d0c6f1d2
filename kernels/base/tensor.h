/* kernels/base/tensor.h — a tensor is a plain struct: pointer, shape, dtype, device. It never owns memory;
 * models keep parameters, gradients and activations in a few large allocations (ms_arena) and point into them. */
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
/* f16 / bf16 <-> f32 */
float ms_f16_to_f32(uint16_t h);
uint16_t ms_f32_to_f16(float f);
float ms_bf16_to_f32(uint16_t h);
uint16_t ms_f32_to_bf16(float f);

/* ms_arena: one allocation carved into 64-byte-aligned pieces. Sizes are reserved first (offsets only),
 * then ms_arena_alloc makes the single allocation and ms_arena_ptr turns offsets into pointers. */
typedef struct ms_arena {
    ms_device *dev;
    void *base;
    size_t used;
} ms_arena;

size_t ms_arena_reserve(ms_arena *a, size_t bytes); /* returns the offset */
ms_status ms_arena_alloc(ms_arena *a, ms_device *dev, int zero);
void *ms_arena_ptr(const ms_arena *a, size_t offset);
void ms_arena_free(ms_arena *a);

#endif
