/* checkpoints/state_dict.h — named tensors read from or written to weight files (.pth, .safetensors).
 *
 * A state dict is an ordered list of (name, tensor) with host, C-contiguous data. Readers validate every size,
 * offset and stride before touching memory and convert to the file's dtype as stored (f32, f16, bf16, f64, i64,
 * ...); ms_sd_get_f32 gives an f32 view of one entry (converting when needed). Writers take the same struct.
 * The formats know nothing about SAM: checkpoints/ depends only on kernels/base.
 */
#ifndef MS_STATE_DICT_H
#define MS_STATE_DICT_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "base/tensor.h"

typedef struct ms_sd_entry {
    char *name;
    ms_tensor t;      /* host memory, contiguous; t.data owned by the state dict */
} ms_sd_entry;

typedef struct ms_state_dict {
    int n, cap;
    ms_sd_entry *e;
    char *meta_json;  /* safetensors __metadata__ (JSON object text) or NULL */
} ms_state_dict;

void ms_sd_init(ms_state_dict *sd);
void ms_sd_free(ms_state_dict *sd);
/* Adds a copy of `data` (bytes = numel·dtype size) under `name`; fails on a duplicate name. */
ms_status ms_sd_add(ms_state_dict *sd, const char *name, ms_dtype dtype, const int64_t *shape, int ndim,
                    const void *data);
/* Like ms_sd_add, but takes ownership of `data` (malloc'ed, numel·dtype size bytes; may be NULL when numel is 0):
 * the readers use it to avoid a second copy of large tensors. On failure `data` is freed. */
ms_status ms_sd_add_take(ms_state_dict *sd, const char *name, ms_dtype dtype, const int64_t *shape, int ndim,
                         void *data);
/* Entry by name, or NULL. */
const ms_sd_entry *ms_sd_find(const ms_state_dict *sd, const char *name);
/* Removes (and frees) entry `name`, keeping the order of the rest; returns 1 when it was there, else 0. */
int ms_sd_remove(ms_state_dict *sd, const char *name);
/* Copies entry `name` into dst as float32, checking that its shape equals `shape` (ndim dims); clear one-line errors
 * "<name>: missing" / "<name>: shape (a, b) in file, expected (c, d)". */
ms_status ms_sd_get_f32(const ms_state_dict *sd, const char *name, const int64_t *shape, int ndim, float *dst);

/* Read a weight file: PyTorch zip (.pth/.pt/.bin, torch >= 1.6), legacy PyTorch (non-zip), or safetensors — chosen
 * by content, not by extension. Wrapped checkpoints ({"model": {...}}, {"state_dict": ...}) are unwrapped. */
ms_status ms_sd_load(const char *path, ms_state_dict *out);
/* The same for a file already in memory (`name` is used in messages). */
ms_status ms_sd_load_mem(const char *name, const void *data, size_t size, ms_state_dict *out);
/* Write .pth (zip, the torch 1.x/2.x layout that torch.load reads) or .safetensors, chosen by the extension.
 * Written to a temporary file, fsynced, then renamed: a crash never leaves a half-written file under `path`. */
ms_status ms_sd_save(const char *path, const ms_state_dict *sd);

#endif
