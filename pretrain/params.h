/* pretrain/params.h — a model's parameters: one table of (state-dict name, shape, offset), one allocation for all
 * values, one for the gradients of the trainable ones only (frozen tensors get no gradient memory and no optimizer
 * state). Used by the SAM image encoder, the prompt encoder / mask decoder, the MAE decoder, LoRA and adapters.
 *
 * Life cycle: ms_params_add() every tensor (names are PyTorch state-dict keys), ms_params_alloc() once, then
 * ms_params_set_trainable() as the method wants and ms_params_alloc_grads(). Pointers stay valid until free.
 */
#ifndef MS_PARAMS_H
#define MS_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "base/device.h"
#include "base/tensor.h"
#include "checkpoints/state_dict.h"

#define MS_PARAM_NAME_MAX 160

typedef struct ms_param {
    char name[MS_PARAM_NAME_MAX];
    int64_t shape[4];
    int ndim;
    int64_t numel;
    size_t off;       /* float offset into the value block (and into the gradient block when trainable) */
    size_t goff;
    int trainable;
    int no_decay;     /* norms, biases, position embeddings, rel-pos tables: no weight decay */
    int optional;     /* ms_params_load: absent from the file is fine (PEFT tensors, extra task heads) */
    int buffer;       /* a float buffer, never trainable (BatchNorm running statistics): set_trainable skips it */
} ms_param;

typedef struct ms_params {
    ms_device *dev;
    int n, cap;
    ms_param *p;
    int64_t numel, numel_trainable;
    float *data;  /* device memory, numel floats */
    float *grad;  /* device memory, numel_trainable floats, or NULL */
} ms_params;

void ms_params_init(ms_params *ps);
void ms_params_free(ms_params *ps);
/* Registers a tensor; returns its index (>= 0) or -1 with ms_errmsg set (duplicate name, too many dims). */
int ms_params_add(ms_params *ps, const char *name, const int64_t *shape, int ndim, int no_decay);
/* Index of a name, or -1. */
int ms_params_find(const ms_params *ps, const char *name);
ms_status ms_params_alloc(ms_params *ps, ms_device *dev);
/* Marks every tensor whose name starts with `prefix` ("" = all) trainable or frozen; returns how many matched.
 * Buffers (ms_param.buffer) match but stay frozen. */
int ms_params_set_trainable(ms_params *ps, const char *prefix, int trainable);
ms_status ms_params_alloc_grads(ms_params *ps);
/* Count only (nothing allocated): the bytes of the parameters, the gradients of the tensors trainable now and
 * AdamW's two fp32 moments over those gradients (pretrain/optimizer.h), as ms_params_alloc, ms_params_alloc_grads
 * and the optimizer would allocate them. */
size_t ms_params_train_bytes(const ms_params *ps);
ms_status ms_params_zero_grads(ms_params *ps);
float *ms_params_data(const ms_params *ps, int idx);
float *ms_params_grad(const ms_params *ps, int idx); /* NULL when the tensor is frozen */

/* Marks every tensor whose name starts with `prefix` as optional for ms_params_load (absent = keep its current
 * values); returns how many matched. A tensor that IS in the file must still have the right shape. */
int ms_params_set_optional(ms_params *ps, const char *prefix, int optional);

/* Loads every registered tensor from the state dict under its own name. Optional tensors absent from the file
 * keep their values. Reports ONE line per missing, mis-shaped or (when `unknown_prefix` is non-NULL) unknown key
 * under that prefix, all of them, and loads nothing on any error (no partial model). */
ms_status ms_params_load(ms_params *ps, const ms_state_dict *sd, const char *unknown_prefix);
/* Loads the tensors whose names start with prefix (NULL: all) from sd; every one of them must be there with its
 * shape. Tensors outside the prefix, and keys of sd that match none, are left alone. */
ms_status ms_params_load_prefix(ms_params *ps, const ms_state_dict *sd, const char *prefix);
/* Appends every tensor (f32, device → host copy) to sd. */
ms_status ms_params_to_sd(const ms_params *ps, ms_state_dict *sd);

#endif
