/* data/ingest.h — `mrisam ingest`: NIfTI volumes (and finetune-SAM PNG pairs, and DICOM series converted by
 * dcm2niix: data/dicom.h) into the slice store.
 *
 * Pipeline: the sources are listed first (directories walked in sorted order), then worker threads hash, decode,
 * reorient, normalise, slice and compress each source while the calling thread is the only writer and commits the
 * results in source order, one LMDB transaction per volume. Sources are identified by the SHA-256 of their bytes
 * (image, .img, label) so a rerun skips what is stored and the store holds no file names unless keep_paths.
 * A bad source costs one line "path: reason" and never the volumes stored before it.
 */
#ifndef MS_INGEST_H
#define MS_INGEST_H

#include <signal.h>
#include <stdint.h>

#include "base/status.h"
#include "data/intensity.h"

enum { MS_AXIS_AUTO = -1, MS_AXIS_SAGITTAL = 0, MS_AXIS_CORONAL = 1, MS_AXIS_AXIAL = 2 };

typedef struct ms_ingest_opts {
    const char *const *srcs;
    int n_srcs;
    const char *out;
    const char *labels;      /* NULL, "nnunet" or a CSV path (the training list when val_labels is given) */
    const char *val_labels;  /* a second CSV (finetune-SAM's val list), or NULL; needs a CSV in labels */
    const char *image_root;  /* the lists' paths, a leading '/' removed, are relative to this folder; NULL: each
                              * list's own folder, absolute paths kept */
    const char *label_map;   /* file of "value,class" lines, or NULL */
    const char *label_names; /* file kept verbatim in the store, or NULL */
    double label_threshold;  /* used when has_threshold */
    int has_threshold;
    int label_largest;  /* K > 0: classes 1..K are the K most frequent nonzero label values of the run's label volumes
                         * (ties: the smaller value), every other value 0; recorded in params (docs/FORMATS.md) */
    int label_resample; /* a NIfTI label on another grid than its image is resampled onto the image's grid (nearest
                         * neighbour through the two affines, data/ingest_labels.h) instead of refused */
    int axis; /* MS_AXIS_* */
    ms_norm norm;
    double p_lo, p_hi;     /* percentiles of --norm percentile (0.5, 99.5) */
    double min_foreground; /* slices with a smaller fraction of pixels above background are skipped (0.01) */
    int keep_empty;        /* store near-empty slices too */
    int frame;             /* -1: every frame of a 4D image is its own volume; else only this frame */
    int zstd_level;
    int shuffle; /* byte planes: 1 on, 0 off, -1 the default (on for layout 2, off for layout 1) */
    int layout;  /* a new store's layout (docs/FORMATS.md): 0 the current (2), 1 the one before (comparisons) */
    int keep_paths, strict;
    int threads;                 /* workers (>= 1) */
    int progress;                /* print a progress line on stderr (a TTY) */
    int quiet;                   /* no summary line */
    const char *log_path;        /* NULL, or a file that gets one JSON line per committed source (appended) */
    volatile sig_atomic_t *stop; /* set by a signal handler: finish the volume being written, then stop */
    /* --shard K/N (shard_n 0: a one-piece store at `out`): the sources are listed as always, then every N-th of
     * that list from K goes into out/shard-K-of-N (ms_store_shard_path), a store of its own that records the set
     * (an ID every job derives from the full list and the options, N, K) and each volume's source index; readers
     * open the folder of N shards as one store (data/store.h). Reruns resume like a one-piece store's. */
    int shard_k, shard_n;
} ms_ingest_opts;

typedef struct ms_ingest_summary {
    uint64_t ingested, skipped, failed; /* sources */
    uint64_t volumes, slices, empty_skipped, nan_inf;
    double seconds, voxel_mb; /* decoded voxel data, MB (1e6 bytes) */
    /* with val_labels: the split file written (path empty when none was), its slices, and the list rows left out
     * of it because their mask is empty or absent */
    char split_path[4096];
    uint64_t split_train, split_val, split_left_out;
} ms_ingest_summary;

/* With val_labels, the split file is STORE/split.json (docs/CLI.md §Split files): train = the slices of the
 * --labels rows, val = those of the --val-labels rows, in list order, each source once; rows whose mask is empty
 * or absent are left out, as finetune-SAM's loader drops them. It is written only when every row of both lists is
 * in the store, and rewritten (atomically) by every such run. */

/* Runs the ingest. Per-source failures are reported on stderr and counted (sum->failed), not returned; the return
 * value is an error of the run itself (store cannot be opened, usage) or MS_EINTERRUPTED. */
ms_status ms_ingest_run(const ms_ingest_opts *o, ms_ingest_summary *sum);

/* The slicing axis for a canonical (RAS+) volume: `axis` itself unless MS_AXIS_AUTO, which picks the
 * lowest-resolution axis (spacing ties within 1e-3 relative: axial, then coronal), and the thin axis of a 2D image.
 * predict slices with the same rule. */
int ms_ingest_pick_axis(int axis, const double sp[3], const int64_t dim[3]);

#endif
