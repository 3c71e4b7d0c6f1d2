/* finetune/ft_train.h — the pieces of the fine-tuning run (finetune/ft_run.h) that tests call directly:
 * class maps from the stores' label values, the segmentation loss on the device, the validation metric, the
 * foreground and few-shot selections, the multi-task schedule, and the host embedding cache.
 *
 * Class map: the sorted union of the label values of a store's labelled volumes → classes 0..C−1, value 0
 * (background) always class 0. Loss: finetune-SAM's Dice (MONAI, sigmoid per channel, squared terms, background
 * included, smooth 1e-5) + cross-entropy (softmax), 1:1, on the (B, C, lo, lo) low-res logits against int32 class
 * labels at the same resolution. Metric: per class c >= 1, foreground Dice over a whole validation set,
 * 2·ΣTP / (ΣP + ΣG) from the argmax of the logits; a class with no ground truth and no prediction anywhere is n/a
 * (NaN here, "n/a" in logs), not 1, and does not count in the mean. docs/FINETUNE.md has the definitions.
 */
#ifndef MS_FT_TRAIN_H
#define MS_FT_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "base/device.h"
#include "base/status.h"
#include "data/sampler.h"
#include "data/store.h"
#include "finetune/ft_model.h"

/* ---- class maps ------------------------------------------------------------------------------------------------ */

/* Task t's class map from volume infos: union of label_values of the volumes with has_labels (all of them when
 * only_labelled is 0) plus 0, sorted; class names from label_names ("VALUE NAME" lines, '#' comments; NULL = none).
 * Fails with MS_EINVAL when there are more than MS_FT_MAX_CLASSES values or no foreground value at all. */
ms_status ms_ft_task_from_volumes(ms_ft_task *t, const char *name, const ms_volume_info *vols, int n_vols,
                                  const char *label_names);
/* The same over every volume of an open store (its label names included). */
ms_status ms_ft_task_from_store(ms_ft_task *t, const char *name, ms_store *s);
/* The loader's 65536-entry value → class table of a task (values outside the map → 0). */
void ms_ft_task_label_map(const ms_ft_task *t, uint16_t *map);
/* Task name from a store path: its last path component ("data/brain/" → "brain"; '.' and ':' become '_'). */
void ms_ft_task_default_name(const char *store_path, char *out, size_t n);

/* ---- selections ------------------------------------------------------------------------------------------------ */

/* The slices of `in` whose label has foreground (any non-zero value): finetune-SAM trains only on those.
 * *n_empty counts the others. */
ms_status ms_ft_select_foreground(ms_store *s, const ms_selection *in, ms_selection *out, uint64_t *n_empty);
/* K records of `in` chosen by seed (a seeded permutation's first K), as a new selection. */
ms_status ms_ft_select_shots(const ms_selection *in, int shots, uint64_t seed, ms_selection *out);

/* ---- multi-task schedule --------------------------------------------------------------------------------------- */

/* The task that trains at optimizer step `step`: a draw of ms_rand_uniform(stream(seed, "task"), step) against
 * the cumulative weights (any positive scale). A pure function of (seed, step), so resuming needs no state. */
int ms_ft_task_at(uint64_t seed, int64_t step, int n_tasks, const double *weights);

/* ---- loss -------------------------------------------------------------------------------------------------------- */

typedef struct ms_ft_loss {
    ms_device *dev;
    int64_t cap;       /* target elements the buffers hold */
    int32_t *target;   /* device (cap) */
    float *loss;       /* device (2): dice, ce */
    int32_t *split;    /* host (cap): one side's targets for ms_ft_loss_split */
} ms_ft_loss;

ms_status ms_ft_loss_init(ms_ft_loss *L, ms_device *dev, int64_t max_target);
void ms_ft_loss_free(ms_ft_loss *L);
/* Dice + CE of logits (device, (B, C, P)) against target (host int32 (B, P), classes 0..C−1, < 0 ignored).
 * With dlogits (device, like logits) non-NULL it is overwritten with d(dice + ce)/dlogits. */
ms_status ms_ft_loss_run(ms_ft_loss *L, const float *logits, const int32_t *target_host, int B, int C, int64_t P,
                         float *dlogits, double *dice, double *ce);
/* The cross-entropy split by target (log.jsonl's loss_fg / loss_bg, docs/CLI.md): mean CE over pixels with
 * target > 0, and over pixels with target == 0 (0 where there are none). Forward only, for the log. */
ms_status ms_ft_loss_split(ms_ft_loss *L, const float *logits, const int32_t *target_host, int B, int C, int64_t P,
                           double *ce_fg, double *ce_bg);
#define MS_FT_DICE_SMOOTH 1e-5f

/* ---- validation metric ------------------------------------------------------------------------------------------- */

typedef struct ms_ft_dice_acc {
    int C;                                  /* classes incl. background */
    double tp[MS_FT_MAX_CLASSES], np[MS_FT_MAX_CLASSES], ng[MS_FT_MAX_CLASSES];
} ms_ft_dice_acc;

void ms_ft_dice_reset(ms_ft_dice_acc *a, int C);
/* Adds B maps: argmax over the C channels of logits (host (B, C, P); ties → the lower class) against target
 * (host (B, P)). */
void ms_ft_dice_add(ms_ft_dice_acc *a, const float *logits, const int32_t *target, int B, int C, int64_t P);
/* Adds one binary prediction of class cls (prompt modes): pred = logits[1] > logits[0] of a (2, P) map,
 * truth = target == 1. */
void ms_ft_dice_add_binary(ms_ft_dice_acc *a, int cls, const float *logits2, const int32_t *target01, int64_t P);
/* Dice of class c; NaN when the class is n/a (no ground truth and no prediction anywhere). */
double ms_ft_dice_class(const ms_ft_dice_acc *a, int c);
/* Mean over classes 1..C−1 that are not n/a; NaN when all are n/a. *n_counted may be NULL. */
double ms_ft_dice_mean(const ms_ft_dice_acc *a, int *n_counted);

/* ---- embedding cache (frozen encoder, no image augmentation) ------------------------------------------------- */

typedef struct ms_emb_cache ms_emb_cache;

/* A host cache of image embeddings of emb_floats floats each, keyed by (store index, slice key). */
ms_status ms_emb_cache_new(int64_t emb_floats, ms_emb_cache **out);
void ms_emb_cache_free(ms_emb_cache *c);
/* The cached embedding or NULL. */
const float *ms_emb_cache_get(const ms_emb_cache *c, int store, uint64_t key);
/* Copies emb (host) in; replaces an existing entry. */
ms_status ms_emb_cache_put(ms_emb_cache *c, int store, uint64_t key, const float *emb);
int64_t ms_emb_cache_count(const ms_emb_cache *c);
uint64_t ms_emb_cache_hits(const ms_emb_cache *c);

#endif
