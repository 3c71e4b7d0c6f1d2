/* tools/cmd_ingest.c — `mrisam ingest`: NIfTI archives (and finetune-SAM PNG pairs) into an LMDB slice store.
 * Option parsing and messages only; the work is data/ingest.c. SIGINT/SIGTERM finish the volume being
 * written and exit 75 (rerun to resume); a second signal exits at once (the store stays consistent). */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "data/ingest.h"

static int run(int argc, char **argv)
{
    static const ms_cmd_help h = {
        "mrisam ingest [options] [SRC...] -o STORE",
        "Reads NIfTI-1/NIfTI-2 volumes (.nii, .nii.gz, .hdr/.img; directories are walked recursively) and DICOM series "
        "(each folder's DICOM files, converted by dcm2niix into a private temporary folder), brings each to "
        "RAS+ by axis permutations and flips, normalises its intensity, cuts it into 2D slices along --axis and stores "
        "them zstd-compressed in an LMDB store. Reruns skip sources already stored (identified by content hash) and "
        "append new ones. With --labels a CSV of image,label rows (PNG rows are finetune-SAM 2D pairs) or an nnU-Net "
        "dataset folder pairs images with label volumes; finetune-SAM's train and val lists ingest as they ship with "
        "--labels TRAIN.csv --val-labels VAL.csv --image-root IMG_FOLDER, which also writes STORE/split.json for "
        "finetune --split. Exit status 1 when any source failed.",
        "mrisam ingest /archive/t1 -o t1.store --threads 8\n"
        "  mrisam ingest --labels pairs.csv --label-map groups.csv -o seg.store\n"
        "  mrisam ingest Dataset001 --labels nnunet -o ds1.store\n"
        "  mrisam ingest --shard $SLURM_ARRAY_TASK_ID/16 /data/archive -o archive.store\n"
        "  mrisam ingest --labels datasets/MRI-Prostate/train_5shot.csv \\\n"
        "      --val-labels datasets/MRI-Prostate/val_5shot.csv --image-root datasets -o prostate.store"};
    const char *out = NULL, *labels = NULL, *val_labels = NULL, *image_root = NULL, *label_map = NULL,
               *label_names = NULL, *axis = "auto", *norm = "percentile", *log_path = NULL, *shard = NULL;
    double thr = NAN, p_lo = 0.5, p_hi = 99.5, min_fg = 0.01;
    int level = 3, threads = 0, keep_paths = 0, strict = 0, frame = -1, keep_empty = 0, shuffle = -1, quiet = 0, layout = 0;
    int progress = -1, label_largest = 0, label_resample = 0;
    const ms_opt opts[] = {
        {"o", MS_OPT_STR, &out, "STORE", "the store directory (created when absent; reruns append)"},
        {"shard", MS_OPT_STR, &shard, "K/N",
         "one of N jobs: every N-th source of the sorted list from K into STORE/shard-K-of-N; --store STORE reads "
         "the N shards as one store (docs/DISTRIBUTED.md)"},
        {"labels", MS_OPT_STR, &labels, "CSV|nnunet",
         "pair images with labels: a CSV of image,label rows (comma or tab) or an nnU-Net folder"},
        {"val-labels", MS_OPT_STR, &val_labels, "CSV",
         "a second list (validation) into the same store; writes STORE/split.json (train: --labels rows)"},
        {"image-root", MS_OPT_STR, &image_root, "DIR",
         "the lists' paths, a leading / removed, are relative to DIR (finetune-SAM's -img_folder)"},
        {"label-map", MS_OPT_STR, &label_map, "FILE", "lines value,class: label values become classes (others 0)"},
        {"label-threshold", MS_OPT_FLOAT, &thr, "T", "binary labels: value > T"},
        {"label-names", MS_OPT_STR, &label_names, "FILE", "lines 'class name' kept in the store"},
        {"label-largest", MS_OPT_INT, &label_largest, "K",
         "classes 1..K: the K most frequent nonzero label values of the run (ties: smaller value), others 0"},
        {"label-resample", MS_OPT_FLAG, &label_resample, NULL,
         "a NIfTI label on another grid than its image: resample it onto the image's grid (nearest neighbour "
         "through both affines) instead of refusing it"},
        {"axis", MS_OPT_STR, &axis, "A", "auto|axial|coronal|sagittal (auto: lowest-resolution axis, ties axial)"},
        {"norm", MS_OPT_STR, &norm, "M", "percentile|zscore|none (default percentile 0.5..99.5 of nonzero voxels)"},
        {"percentile-low", MS_OPT_FLOAT, &p_lo, "P", "lower clip percentile of --norm percentile (0.5)"},
        {"percentile-high", MS_OPT_FLOAT, &p_hi, "P", "upper clip percentile of --norm percentile (99.5)"},
        {"min-foreground", MS_OPT_FLOAT, &min_fg, "F",
         "skip slices with fewer than F of pixels above background (0.01)"},
        {"keep-empty", MS_OPT_FLAG, &keep_empty, NULL, "store near-empty slices too"},
        {"frame", MS_OPT_INT, &frame, "N", "4D images: only frame N (default: every frame is its own volume)"},
        {"zstd-level", MS_OPT_INT, &level, "N", "zstd compression level (3)"},
        {"shuffle", MS_OPT_INT, &shuffle, "0|1",
         "split 16-bit pixels into byte planes before zstd (default: on for new stores, off in layout-1 stores)"},
        {"layout", MS_OPT_INT, &layout, "1|2",
         "a new store's layout: 2 (default: stored values, normalised on read) or 1 (normalised at ingest, as "
         "stores before 2; for comparisons)"},
        {"keep-paths", MS_OPT_FLAG, &keep_paths, NULL, "store source paths (default: content hashes only)"},
        {"strict", MS_OPT_FLAG, &strict, NULL, "reject volumes with NaN/Inf voxels (default: set to 0, counted)"},
        {"threads", MS_OPT_INT, &threads, "N", "decode/normalise/compress workers (default: all cores)"},
        {"progress", MS_OPT_INT, &progress, "0|1", "progress line (default: when stderr is a terminal)"},
        {"quiet", MS_OPT_FLAG, &quiet, NULL, "no summary line"},
        {"log", MS_OPT_STR, &log_path, "FILE.jsonl",
         "append one JSON line per committed source (time, sizes, commit ms)"},
        {0}};
    ms_strlist pos = {0};
    int rc = ms_cli_parse(&h, opts, argc, argv, &pos);
    if (rc) {
        ms_strlist_free(&pos);
        return rc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    }
    ms_ingest_opts o = {0};
    const char *bad = NULL;
    int sk = 0, sn = 0, used = 0;
    if (shard && (sscanf(shard, "%d/%d%n", &sk, &sn, &used) != 2 || shard[used] || sn < 1 || sk < 0 || sk >= sn))
        bad = "--shard must be K/N with 0 <= K < N";
    else if (shard && val_labels)
        bad = "--val-labels writes one split file for the whole store: ingest it without --shard";
    else if (!out)
        bad = "-o STORE is required";
    else if (pos.n == 0 && !(labels && strcmp(labels, "nnunet")))
        bad = "no SRC given (SRC may be omitted only with --labels CSV)";
    else if (val_labels && !(labels && strcmp(labels, "nnunet")))
        bad = "--val-labels needs --labels CSV (the training list)";
    else if (image_root && !(labels && strcmp(labels, "nnunet")))
        bad = "--image-root applies to --labels CSV lists only";
    else if (label_map && !isnan(thr))
        bad = "--label-map and --label-threshold exclude each other";
    else if (label_largest && (label_map || !isnan(thr)))
        bad = "--label-largest excludes --label-map and --label-threshold";
    else if (label_largest < 0 || label_largest > 255)
        bad = "--label-largest must be in 1..255";
    else if (level < -7 || level > 22)
        bad = "--zstd-level must be in -7..22";
    else if (layout != 0 && layout != 1 && layout != 2)
        bad = "--layout must be 1 or 2";
    else if (shuffle < -1 || shuffle > 1)
        bad = "--shuffle must be 0 or 1";
    else if (!(p_lo >= 0 && p_lo < p_hi && p_hi <= 100))
        bad = "percentiles must satisfy 0 <= low < high <= 100";
    else if (!(min_fg >= 0 && min_fg <= 1))
        bad = "--min-foreground must be in 0..1";
    else if (ms_norm_parse(norm, &o.norm))
        bad = ms_errmsg();
    if (!bad) {
        if (!strcmp(axis, "auto"))
            o.axis = MS_AXIS_AUTO;
        else if (!strcmp(axis, "axial"))
            o.axis = MS_AXIS_AXIAL;
        else if (!strcmp(axis, "coronal"))
            o.axis = MS_AXIS_CORONAL;
        else if (!strcmp(axis, "sagittal"))
            o.axis = MS_AXIS_SAGITTAL;
        else
            bad = "--axis must be auto, axial, coronal or sagittal";
    }
    if (bad) {
        fprintf(stderr, "mrisam ingest: %s\n", bad);
        ms_strlist_free(&pos);
        return MS_EXIT_USAGE;
    }
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
    o.srcs = (const char *const *)pos.v;
    o.n_srcs = pos.n;
    o.out = out;
    o.labels = labels;
    o.val_labels = val_labels;
    o.image_root = image_root;
    o.label_map = label_map;
    o.label_names = label_names;
    o.has_threshold = !isnan(thr);
    o.label_threshold = thr;
    o.quiet = quiet;
    o.label_largest = label_largest;
    o.label_resample = label_resample;
    o.p_lo = p_lo;
    o.p_hi = p_hi;
    o.min_foreground = min_fg;
    o.keep_empty = keep_empty;
    o.frame = frame;
    o.zstd_level = level;
    o.shuffle = shuffle;
    o.layout = layout;
    o.keep_paths = keep_paths;
    o.strict = strict;
    o.threads = threads;
    o.progress = progress < 0 ? isatty(2) : progress;
    o.log_path = log_path;
    o.shard_k = sk;
    o.shard_n = sn;
    o.stop = ms_cli_catch_stop();
    ms_ingest_summary s;
    ms_status st = ms_ingest_run(&o, &s);
    /* A failed run: the error first, then the summary only when sources were processed (a bad label map, CSV or
     * store fails before any, and a summary of zeros would read as if the run had happened). */
    int rc_exit = st ? ms_cli_report("ingest", st) : MS_EXIT_OK;
    if (st ? s.ingested + s.skipped + s.failed > 0 : !quiet || s.failed)
        fprintf(stderr,
                "ingest: %llu ingested, %llu skipped (already stored), %llu failed; %llu volumes, %llu slices "
                "(%llu near-empty skipped, %llu NaN/Inf voxels zeroed); %.1f MB of voxels in %.2f s: %.0f slices/s, "
                "%.1f MB/s\n",
                (unsigned long long)s.ingested, (unsigned long long)s.skipped, (unsigned long long)s.failed,
                (unsigned long long)s.volumes, (unsigned long long)s.slices, (unsigned long long)s.empty_skipped,
                (unsigned long long)s.nan_inf, s.voxel_mb, s.seconds, s.seconds > 0 ? s.slices / s.seconds : 0,
                s.seconds > 0 ? s.voxel_mb / s.seconds : 0);
    if (s.split_path[0])
        fprintf(stderr,
                "ingest: split file %s: train %llu slices (%s), val %llu slices (%s), %llu rows left out (mask empty "
                "or absent); use: mrisam finetune --store %s --split %s\n",
                s.split_path, (unsigned long long)s.split_train, labels, (unsigned long long)s.split_val, val_labels,
                (unsigned long long)s.split_left_out, out, s.split_path);
    ms_strlist_free(&pos);
    if (st) return rc_exit;
    return s.failed ? MS_EXIT_FAIL : MS_EXIT_OK;
}

const ms_command ms_cmd_ingest = {"ingest", "NIfTI volumes into an LMDB store of compressed 2D slices", run};
