/* finetune/eval_run.h — `mrisam eval` (docs/CLI.md "eval"): label volumes scored per volume and class with the
 * metrics of finetune/eval.h, reported as per_volume.csv and summary.md.
 *
 * Files (ms_eval_files): files pair by name with the .nii/.nii.gz ending ignored (pred/a.nii.gz ↔ gt/a.nii); every
 * file must have a partner. A pair must share the grid (shape and voxel→world affine within 1e-3 mm) — no resampling
 * ever happens. Both volumes are read as frame 0 on the canonical grid (the same mapping for both, since the grids
 * agree) and must hold integer labels 0..65535. HD95 and NSD are computed on the canonical grid with its voxel sizes
 * (distances and surface areas are invariant under the permutation/flip).
 *
 * A store (ms_eval_store): the model behind a checkpoint (finetune/predict.h) segments the store's labelled slices at
 * the checkpoint's own preprocessing; per volume the stored slices are restacked at their slice indices (slices
 * ingest left out are 0 in both volumes, so HD95 and NSD see the true geometry) and scored like a file pair, with the
 * store's spacing (row, column, slice). Stored label values outside the task's classes count as background. A run's
 * shots.json restricts it to the run's validation selection.
 *
 * The report: the class list is every value > 0 present in any volume; a class absent from both volumes of a pair is
 * NaN there (eval.h) and skipped by the means. Both files are written atomically.
 */
#ifndef MS_EVAL_RUN_H
#define MS_EVAL_RUN_H

#include <stdint.h>

#include "base/path.h"
#include "base/status.h"
#include "finetune/eval.h"

/* One scored volume pair; the counts are indexed by label value 0..n_labels-1 (as ms_overlap). */
typedef struct ms_eval_pair {
    char *name;               /* the volume's name in the report */
    char *pred, *gt;          /* file paths (NULL for a store's volumes) */
    int n_labels;
    int64_t *inter, *np, *ng; /* |P∩G|, |P|, |G| */
    double *hd95;             /* mm; NULL without HD95 */
    double *nsd;              /* NULL without NSD */
} ms_eval_pair;

/* What an evaluation gave. Zero it before use (ms_eval_names_read may fill names first); free with
 * ms_eval_result_free. */
typedef struct ms_eval_result {
    ms_eval_pair *pairs;
    int n_pairs;
    char **names;  /* class names by label value (65536 slots, NULL = unnamed), or NULL when there are none */
    int n_names;   /* 1 + the largest named value */
    int hd95;      /* 1 when the pairs carry HD95 */
    int nsd;       /* set by the caller before scoring: 1 adds NSD (eval.h ms_nsd) at nsd_tol mm */
    double nsd_tol;
    char *header;  /* the summary's opening lines: what was compared, how many volumes */
} ms_eval_result;

void ms_eval_result_free(ms_eval_result *r);

/* Class names from a file of "VALUE NAME" lines (separator: blanks, ',', ':' or '='; '#' starts a comment). */
ms_status ms_eval_names_read(ms_eval_result *r, const char *path);
/* The same from text held in memory (a store's label names); what names it in errors. */
ms_status ms_eval_names_parse(ms_eval_result *r, const char *what, const char *text);

/* Scores every pair of pred_dir and gt_dir (n_threads <= 0: all cores; hd95 = 0 skips HD95). */
ms_status ms_eval_files(ms_eval_result *r, const char *pred_dir, const char *gt_dir, int n_threads, int hd95);

/* RUN/shots.json of the run a checkpoint belongs to (ckpt = RUN, RUN/best or RUN/ckpt/step_N) as a real path into
 * out, or "" when there is none. */
void ms_eval_shots_find(const char *ckpt, char out[MS_PATH_MAX]);
/* Index of store in a split file's "stores" (by real path, else by the path as written), or -1. */
ms_status ms_eval_shots_index(const char *shots, const char *store, int *idx);

typedef struct ms_eval_store_opts {
    const char *ckpt;   /* a fine-tuned checkpoint or SAM-layout weights (ms_predict_model_load) */
    const char *store;
    const char *task;   /* the task of a multi-task checkpoint, or NULL */
    const char *device; /* "cpu", "cuda", "cuda:N" */
    const char *precision; /* "fp32", "bf16"; NULL: ms_precision_default of the device's kind */
    const char *shots;  /* the run's shots.json ("" or NULL: every labelled volume) */
    int shots_index;    /* the store's index in it (ms_eval_shots_index); < 0: every labelled volume */
    int n_threads, batch, hd95;
    /* Called after each volume with its name and the number of slices segmented (may be NULL). */
    void (*on_volume)(void *ctx, const char *name, int64_t n_slices);
    void *ctx;
} ms_eval_store_opts;

/* Segments the selected labelled volumes of o->store with o->ckpt and scores them. Class names come from r->names
 * when already set, else from the checkpoint's meta.json, else from the store's label names. */
ms_status ms_eval_store(ms_eval_result *r, const ms_eval_store_opts *o);

/* Writes out_dir/per_volume.csv and out_dir/summary.md (out_dir is created when absent) and returns the summary
 * (malloc'ed) in *md, *md_len. */
ms_status ms_eval_report_write(const ms_eval_result *r, const char *out_dir, char **md, size_t *md_len);

#endif
