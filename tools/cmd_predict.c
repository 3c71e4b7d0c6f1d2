/* tools/cmd_predict.c — `mrisam predict`: automatic multi-class segmentation of NIfTI volumes with a SAM-layout
 * model or a fine-tuned checkpoint (docs/CLI.md §predict; the pipeline is finetune/predict.h).
 *
 * A fine-tuned checkpoint (RUN/, RUN/best, a directory with meta.json) brings its preprocessing, slicing axis,
 * intensity normalisation and class values; --task picks one of its tasks. --axis/--norm/percentiles given
 * explicitly override the checkpoint's (with a warning). Prompt-trained checkpoints need --prompts-from: a label
 * volume (file) or a directory of them paired by file name with --in DIR.
 *
 * --in FILE: -o is the output file (or an existing directory: DIR/<input file name>). --in DIR: every .nii/.nii.gz
 * directly inside, in sorted order, to -o DIR/<same file name>. A volume that fails costs one line "path: reason"
 * on stderr; the others are still written and the exit status is 1. On a terminal a progress line shows volumes,
 * slices/s and an ETA. --png DIR writes three overlay PNGs per volume (slices at 1/4, 1/2 and 3/4 along the axis,
 * gray with label colours blended at 50%) as DIR/<stem>_s<k>.png.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/device.h"
#include "base/fileio.h"
#include "base/path.h"
#include "cli.h"
#include "data/ingest.h"
#include "finetune/predict.h"

typedef struct progress {
    int on;
    int vol, n_vols;
    int64_t slices_done, slices_before; /* over the whole run; slices_before = done in finished volumes */
    double t0;
} progress;

static void on_progress(void *ctx, int64_t done, int64_t total)
{
    progress *pg = ctx;
    pg->slices_done = pg->slices_before + done;
    if (!pg->on) return;
    double dt = ms_now_s() - pg->t0, rate = dt > 0 ? (double)pg->slices_done / dt : 0;
    /* ETA: the rest of this volume plus the remaining volumes at this volume's size */
    double left = (double)(total - done) + (double)(pg->n_vols - pg->vol - 1) * (double)total;
    fprintf(stderr, "\rpredict: volume %d/%d, slice %lld/%lld, %.2f slices/s, ETA %.0f s   ", pg->vol + 1,
            pg->n_vols, (long long)done, (long long)total, rate, rate > 0 ? left / rate : 0.0);
    fflush(stderr);
}

/* The input list: one file, or every NIfTI file in a directory (sorted). Output paths beside them. */
static ms_status list_inputs(const char *in, const char *out, char ***ins, char ***outs, int *n)
{
    *ins = *outs = NULL;
    *n = 0;
    if (!ms_path_is_dir(in)) {
        *ins = calloc(1, sizeof(char *));
        *outs = calloc(1, sizeof(char *));
        MS_FAIL_IF(!*ins || !*outs, MS_ENOMEM, "out of memory");
        *n = 1;
        (*ins)[0] = strdup(in);
        (*outs)[0] = ms_path_is_dir(out) ? ms_path_join_new(out, ms_path_base(in)) : strdup(out);
        MS_FAIL_IF(!(*ins)[0] || !(*outs)[0], MS_ENOMEM, "out of memory");
        return MS_OK;
    }
    MS_TRY(ms_path_list_nii(in, ins, n));
    *outs = calloc((size_t)(*n ? *n : 1), sizeof(char *));
    MS_FAIL_IF(!*outs, MS_ENOMEM, "out of memory");
    for (int i = 0; i < *n; i++) {
        char *name = (*ins)[i];
        (*outs)[i] = ms_path_join_new(out, name);
        (*ins)[i] = ms_path_join_new(in, name);
        free(name);
        MS_FAIL_IF(!(*ins)[i] || !(*outs)[i], MS_ENOMEM, "out of memory");
    }
    return MS_OK;
}

/* The usage checks of --axis, --norm, --batch-size and the percentiles (given or not: < 0). Prints the reason and
 * returns 1 when they cannot run. */
static int check_options(const char *axis_s, const char *norm_s, int batch, double p_lo, double p_hi, int *axis,
                         ms_norm *norm, double *lo_v, double *hi_v)
{
    *axis = MS_AXIS_AUTO;
    *norm = MS_NORM_PERCENTILE;
    if (!axis_s || !strcmp(axis_s, "auto")) *axis = MS_AXIS_AUTO;
    else if (!strcmp(axis_s, "axial")) *axis = MS_AXIS_AXIAL;
    else if (!strcmp(axis_s, "coronal")) *axis = MS_AXIS_CORONAL;
    else if (!strcmp(axis_s, "sagittal")) *axis = MS_AXIS_SAGITTAL;
    else {
        fprintf(stderr, "mrisam predict: --axis must be auto, axial, coronal or sagittal\n");
        return 1;
    }
    if (norm_s && ms_norm_parse(norm_s, norm)) {
        fprintf(stderr, "mrisam predict: --norm must be percentile, zscore or none\n");
        return 1;
    }
    if (batch < 1 || batch > 1024) {
        fprintf(stderr, "mrisam predict: --batch-size must be 1..1024\n");
        return 1;
    }
    *lo_v = p_lo < 0 ? 0.5 : p_lo;
    *hi_v = p_hi < 0 ? 99.5 : p_hi;
    if (!(*lo_v >= 0 && *lo_v < *hi_v && *hi_v <= 100)) {
        fprintf(stderr, "mrisam predict: need 0 <= --percentile-low < --percentile-high <= 100\n");
        return 1;
    }
    return 0;
}

/* The prompt label volume of each input: --prompts-from itself, or the file of the same name in that directory. */
static ms_status prompt_inputs(const char *prompts, char **ins, int n, char ***pins)
{
    *pins = calloc((size_t)(n ? n : 1), sizeof **pins);
    MS_FAIL_IF(!*pins, MS_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        (*pins)[i] = ms_path_is_dir(prompts) ? ms_path_join_new(prompts, ms_path_base(ins[i])) : strdup(prompts);
        MS_FAIL_IF(!(*pins)[i], MS_ENOMEM, "out of memory");
    }
    MS_FAIL_IF(n > 1 && !ms_path_is_dir(prompts), MS_EINVAL,
               "%s: --in is a directory, so --prompts-from must be one too", prompts);
    return MS_OK;
}

/* Every volume in turn (a failure costs its line, the others still run) and the summary line; returns the number
 * that failed. */
static int predict_all(ms_predictor *pr, ms_predict_opts *po, const ms_predict_model *pm, char **ins, char **pins,
                       char **outs, int n, const char *png)
{
    progress pg = {.on = isatty(2), .n_vols = n, .t0 = ms_now_s()};
    po->progress = on_progress;
    po->progress_ctx = &pg;
    int written = 0, failed = 0;
    for (int i = 0; i < n; i++) {
        pg.vol = i;
        ms_predict_result r;
        ms_status st = ms_predict_file_prompted(pr, po, ins[i], pins ? pins[i] : NULL, outs[i], &r);
        if (pg.on) fprintf(stderr, "\r\033[K");
        if (!st && png) st = ms_predict_write_overlays(png, ins[i], &r);
        if (st) {
            fprintf(stderr, "%s\n", ms_errmsg());
            failed++;
        } else {
            written++;
            pg.slices_before += r.n_slices;
            if (r.n_nonfinite)
                fprintf(stderr, "%s: warning: %llu NaN/Inf voxels set to 0\n", ins[i],
                        (unsigned long long)r.n_nonfinite);
        }
        ms_predict_result_free(&r);
    }
    double dt = ms_now_s() - pg.t0;
    printf("predict: %d of %d volumes written, %lld slices in %.1f s (%.2f slices/s), %d classes%s%s\n", written, n,
           (long long)pg.slices_before, dt, dt > 0 ? (double)pg.slices_before / dt : 0.0, pm->n_classes,
           pm->finetuned ? ", task " : "", pm->finetuned ? pm->ft.cfg.task[pm->task].name : "");
    return failed;
}

static int run(int argc, char **argv)
{
    static const ms_cmd_help help = {
        "mrisam predict --ckpt F --in VOL.nii[.gz]|DIR -o SEG.nii.gz|DIR [--axis auto|axial|coronal|sagittal] "
        "[--norm percentile|zscore|none] [--percentile-low P] [--percentile-high P] [--png DIR] [--threads N] "
        "[--device cpu|cuda] [--batch-size B] [--task NAME] [--prompts-from LABEL.nii.gz|DIR] [--keep-largest] "
        "[--min-size N] [--connectivity 26|6]",
        "Automatic multi-class segmentation (no prompts; mask tokens 1..num_cls, per-pixel argmax, class 0 = "
        "background) of every slice of each volume, cut and normalised exactly as ingest does, restacked and written "
        "as a NIfTI label volume on the input's exact grid (dims, affine, qform/sform codes; no free-text fields), "
        "verified by reading it back. --ckpt: SAM-layout weights (class c is written as the value c) or a fine-tuned "
        "checkpoint RUN/ or RUN/best (its preprocessing, axis, intensity normalisation and class values; --task NAME "
        "when it has several tasks). Prompt-trained checkpoints take per-slice prompts from --prompts-from (label "
        "volumes on the input's grid). With a directory, every .nii/.nii.gz inside goes to DIR/<same name>; a bad "
        "volume costs one line and exit status 1, the others are still written. Post-processing per class (as "
        "nnU-Net's): --keep-largest keeps only the largest connected component, --min-size N removes components of "
        "fewer than N voxels (removed voxels become background); 3-D components with 26-connectivity (nnU-Net's "
        "full connectivity) unless --connectivity 6.",
        "mrisam predict --ckpt sam_mri.pth --in scans/ -o seg/ --png seg/png\n"
        "  mrisam predict --ckpt runs/ft/ --task prostate --in scans/ -o seg/"};
    const char *ckpt = NULL, *in = NULL, *out = NULL, *axis_s = NULL, *norm_s = NULL, *png = NULL,
               *device = "cpu", *task = NULL, *prompts = NULL;
    int threads = 0, batch = 1, keep_largest = 0, conn = 26;
    int64_t min_size = 0;
    double p_lo = -1, p_hi = -1; /* < 0: not given */
    const ms_opt opts[] = {
        {"ckpt", MS_OPT_STR, &ckpt, "F", "SAM-layout weights (.pth or .safetensors) or a fine-tuned RUN/[best]"},
        {"task", MS_OPT_STR, &task, "NAME", "the task of a multi-task fine-tuned checkpoint"},
        {"prompts-from", MS_OPT_STR, &prompts, "LABEL|DIR", "label volume(s) to take prompts from (prompt-trained "
                                                            "checkpoints)"},
        {"in", MS_OPT_STR, &in, "VOL|DIR", "a NIfTI volume or a directory of them"},
        {"o", MS_OPT_STR, &out, "SEG|DIR", "output label volume, or directory"},
        {"axis", MS_OPT_STR, &axis_s, "A", "auto|axial|coronal|sagittal (auto: lowest-resolution axis, ties axial; "
                                           "default: the fine-tuned checkpoint's, else auto)"},
        {"norm", MS_OPT_STR, &norm_s, "N", "percentile|zscore|none intensity normalisation (as ingest; default "
                                           "the fine-tuned checkpoint's, else percentile 0.5/99.5)"},
        {"percentile-low", MS_OPT_FLOAT, &p_lo, "P", "lower percentile of --norm percentile (0.5, as ingest)"},
        {"percentile-high", MS_OPT_FLOAT, &p_hi, "P", "upper percentile of --norm percentile (99.5, as ingest)"},
        {"png", MS_OPT_STR, &png, "DIR", "overlay PNGs of three slices per volume"},
        {"threads", MS_OPT_INT, &threads, "N", "CPU threads (default: all cores)"},
        {"device", MS_OPT_STR, &device, "cpu|cuda", "compute device (default cpu)"},
        {"batch-size", MS_OPT_INT, &batch, "B", "slices per encoder batch (default 1)"},
        {"keep-largest", MS_OPT_FLAG, &keep_largest, NULL, "keep only the largest connected component of each class"},
        {"min-size", MS_OPT_I64, &min_size, "N", "remove each class's components of fewer than N voxels"},
        {"connectivity", MS_OPT_INT, &conn, "26|6", "3-D connectivity of the components (default 26)"},
        {0}};
    int prc = ms_cli_parse(&help, opts, argc, argv, NULL);
    if (prc) return prc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    if (!ckpt || !in || !out) {
        fprintf(stderr, "mrisam predict: needs --ckpt, --in and -o (see --help)\n");
        return MS_EXIT_USAGE;
    }
    ms_predict_opts po;
    ms_predict_opts_default(&po);
    int axis;
    ms_norm norm;
    double lo_v, hi_v;
    if (check_options(axis_s, norm_s, batch, p_lo, p_hi, &axis, &norm, &lo_v, &hi_v)) return MS_EXIT_USAGE;
    po.batch = batch;
    if (min_size < 0 || (conn != 26 && conn != 6)) {
        fprintf(stderr, "mrisam predict: --min-size must be >= 0 and --connectivity 26 or 6\n");
        return MS_EXIT_USAGE;
    }
    po.keep_largest = keep_largest;
    po.min_size = min_size;
    po.conn = conn;

    char **ins = NULL, **outs = NULL, **pins = NULL;
    int n = 0, failed = 0, dev_ok = 0, model_ok = 0, pred_ok = 0;
    ms_status rc = MS_OK;
    ms_device dev;
    ms_predict_model pm;
    ms_predictor pr;
    memset(&pm, 0, sizeof pm);
    if ((rc = list_inputs(in, out, &ins, &outs, &n))) goto leave;
    if (ms_path_is_dir(in)) {
        if (n == 0) { rc = ms_error(MS_EINVAL, "%s: no .nii or .nii.gz files", in); goto leave; }
        if ((rc = ms_mkdirs(out))) goto leave;
    } else if ((rc = ms_mkdirs_parent(outs[0]))) { /* -o new/folder/x.nii.gz: its folder, before any work */
        goto leave;
    }
    if (png && (rc = ms_mkdirs(png))) goto leave;
    ms_device_kind kind;
    int index;
    if ((rc = ms_device_parse(device, &kind, &index))) goto leave;
    if ((rc = ms_device_init_at(&dev, kind, index, threads))) goto leave;
    dev_ok = 1;
    if ((rc = ms_predict_model_load(&pm, ckpt, task, &dev))) goto leave;
    model_ok = 1;
    /* the checkpoint's slicing and intensities unless given explicitly (then they win, with a warning) */
    po.axis = pm.has_prep && !axis_s ? pm.axis : axis;
    po.norm = pm.has_prep && !norm_s ? pm.norm : norm;
    po.p_lo = pm.has_prep && p_lo < 0 ? pm.p_lo : lo_v;
    po.p_hi = pm.has_prep && p_hi < 0 ? pm.p_hi : hi_v;
    if (pm.has_prep && (axis_s || norm_s || p_lo >= 0 || p_hi >= 0))
        fprintf(stderr, "predict: warning: --axis/--norm/--percentile-* override the checkpoint's own preprocessing\n");
    if (pm.finetuned) {
        po.class_map = pm.class_map;
        po.n_class_map = pm.n_classes;
    }
    if (pm.prompt != MS_PROMPT_NONE && !prompts) {
        rc = ms_error(MS_EINVAL, "%s: trained with %s prompts: give --prompts-from LABEL.nii.gz (or a directory "
                                 "of label volumes named like the inputs)", ckpt, ms_prompt_mode_name(pm.prompt));
        goto leave;
    }
    if (prompts && pm.prompt == MS_PROMPT_NONE)
        fprintf(stderr, "predict: warning: %s was trained without prompts; --prompts-from is ignored\n", ckpt);
    if (prompts && pm.prompt != MS_PROMPT_NONE && (rc = prompt_inputs(prompts, ins, n, &pins))) goto leave;
    if ((rc = ms_predictor_init_ex(&pr, pm.m, &dev, batch, &pm.pc, pm.prompt))) goto leave;
    pred_ok = 1;

    failed = predict_all(&pr, &po, &pm, ins, pins, outs, n, png);
leave:
    for (int i = 0; i < n; i++) {
        if (ins) free(ins[i]);
        if (outs) free(outs[i]);
        if (pins) free(pins[i]);
    }
    free(ins);
    free(outs);
    free(pins);
    if (pred_ok) ms_predictor_free(&pr);
    if (model_ok) ms_predict_model_free(&pm);
    if (dev_ok) ms_device_free(&dev);
    if (rc) return ms_cli_report("predict", rc);
    return failed ? MS_EXIT_FAIL : MS_EXIT_OK;
}

const ms_command ms_cmd_predict = {"predict", "automatic multi-class segmentation of NIfTI volumes (label NIfTI)", run};
