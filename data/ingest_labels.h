/* data/ingest_labels.h — the value→class rule of a store's PNG masks (docs/CLI.md "ingest, inspect, verify,
 * export", Class ids), decided once per store from all its masks before any slice is written.
 *
 * A mask holding only 0 and values of at least half its bit depth's range (128..255, 32768..65535: a binary mask,
 * maybe anti-aliased) is binary-like; one holding any value 1..127 (1..32767) holds class ids; an all-zero mask is
 * neither. The store's rule: class ids when any mask holds class ids, else binary (every nonzero value → 1) when any
 * mask is binary-like, else undecided. The rule is recorded in the store's meta entry "label_rule"; a rerun keeps
 * it and is refused when its masks would turn a binary store into one of class ids. --label-map and
 * --label-threshold replace the rule (they read the masks' own values). NIfTI label volumes are class ids always.
 */
#ifndef MS_INGEST_LABELS_H
#define MS_INGEST_LABELS_H

#include <stdint.h>

#include "base/status.h"

typedef enum ms_mask_rule {
    MS_MASKS_UNDECIDED = 0, /* no mask with a nonzero value yet */
    MS_MASKS_BINARY = 1,    /* 0 → 0, every other value → 1 */
    MS_MASKS_IDS = 2,       /* values kept as class ids */
} ms_mask_rule;

/* What the masks of one ingest hold (the first pass). Paths point into the caller's job list. */
typedef struct ms_mask_scan {
    int n_masks, n_binary, n_ids;     /* masks read; binary-like ones; ones with class ids */
    uint64_t between;                 /* pixels of binary-like masks neither 0 nor the depth's maximum */
    uint64_t high_in_ids;             /* pixels >= half the range in masks holding class ids */
    const char *ids_path, *high_path; /* the first mask with a class id 1..half-1 / with a value >= half */
    unsigned ids_value, high_value;
} ms_mask_scan;

/* Reads every mask of paths[0..n) (entries may be NULL: no mask) with `threads` threads; an unreadable mask is
 * left to the ingest proper, which reports it as that source's failure. */
ms_status ms_mask_scan_run(const char *const *paths, int n, int threads, ms_mask_scan *out);

/* The rule the scan alone decides. */
ms_mask_rule ms_mask_scan_rule(const ms_mask_scan *s);

/* The store's rule after this ingest, from the recorded one (meta "label_rule" text or NULL) and the scan;
 * warnings go to stderr. Refused (MS_EINVAL, "<store>: reason") when the masks would change a recorded rule.
 * *record is set to the meta text to write when the store has none yet (malloc'ed; NULL: nothing to write). */
ms_status ms_mask_rule_decide(const char *store, const char *recorded, const ms_mask_scan *s, ms_mask_rule *rule,
                              char **record);

/* The rule's name in the store's meta entry and in messages: "binary", "ids" or "undecided". */
const char *ms_mask_rule_name(ms_mask_rule r);

/* ---- label volumes on another grid (ingest --label-resample) ----------------------------------------------- */

/* Nearest-neighbour resampling of a label volume onto an image's grid through the two affines. Both volumes are
 * canonical (data/nifti.h: x fastest, RAS+ axes) with their canonical voxel → world affines (ms_nifti.caffine, the
 * chosen sform/qform composed with the reorientation, so world points are the file's own). For each voxel p of dst:
 * q = inv(saff) · daff · p, the source voxel floor(q + 0.5) per axis (ties round up), its value; outside src → 0.
 * *outside (may be NULL) counts the dst voxels that fell outside. MS_EINVAL when saff is singular. */
ms_status ms_label_resample_nn(const float *src, const int64_t sdim[3], const double saff[4][4], float *dst,
                               const int64_t ddim[3], const double daff[4][4], uint64_t *outside);

/* ---- the K most frequent label values (ingest --label-largest K) ------------------------------------------ */

typedef struct ms_value_count {
    int64_t value;
    uint64_t count;
} ms_value_count;

/* Voxel counts per distinct nonzero label value over any number of volumes (an open-addressing table). */
typedef struct ms_value_counter {
    ms_value_count *slot; /* count 0: empty */
    size_t cap, n;
} ms_value_counter;

/* Adds the nonzero values of v[0..n). Values must be integers (within 1e-3, as ingest reads labels): otherwise
 * MS_EFORMAT "<path>: label value V is not an integer" and nothing of v is counted. */
ms_status ms_value_counter_add(ms_value_counter *c, const float *v, size_t n, const char *path);

/* The k most frequent values, by count descending, ties by the smaller value: out[0..*n_out), *n_out = min(k, the
 * number of distinct values). */
void ms_value_counter_top(const ms_value_counter *c, int k, ms_value_count *out, int *n_out);

void ms_value_counter_free(ms_value_counter *c);

#endif
