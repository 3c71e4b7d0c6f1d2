/* tools/cmd_predict.c — `mrisam predict`: automatic multi-class segmentation of NIfTI volumes and PNG images with a
 * SAM-layout model or a fine-tuned checkpoint (docs/CLI.md §predict; the pipeline is finetune/predict.h).
 *
 * A fine-tuned checkpoint (RUN/, RUN/best, a directory with meta.json) brings its preprocessing, slicing axis,
 * intensity normalisation and class values; --task picks one of its tasks. --axis/--norm/percentiles given
 * explicitly override the checkpoint's (with a warning). Prompt-trained checkpoints need --prompts-from: a label
 * volume (file) or a directory of them paired by file name with --in DIR.
 *
 * --in FILE: -o is the output file (or an existing directory: DIR/<input file name>); a PNG gives a PNG of class
 * ids. --in DIR: every .nii/.nii.gz/.png directly inside, in sorted order, to -o DIR/<same file name>. --in LIST (a
 * text file, one path a line): each listed image to -o DIR/<its file name>. Other image formats (JPEG, ...) are
 * refused by name before any work. A volume that fails costs one line "path: reason"
 * on stderr; the others are still written and the exit status is 1. On a terminal a progress line shows volumes,
 * slices/s and an ETA. --png DIR writes three overlay PNGs per volume (slices at 1/4, 1/2 and 3/4 along the axis,
 * gray with label colours blended at 50%) as DIR/<stem>_s<k>.png.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

/* The inputs: their paths, output paths and kinds (MS_INPUT_NIFTI or MS_INPUT_PNG). */
typedef struct inputs {
    char **in, **out;
    int *kind;
    int n, cap;
} inputs;

static void inputs_free(inputs *l)
{
    for (int i = 0; i < l->n; i++) free(l->in[i]), free(l->out[i]);
    free(l->in), free(l->out), free(l->kind);
    memset(l, 0, sizeof *l);
}

/* Appends in (taken over) with its output path (taken over); either NULL means out of memory. */
static ms_status inputs_push(inputs *l, char *in, char *out, int kind)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        char **a = realloc(l->in, (size_t)cap * sizeof *a);
        if (a) l->in = a;
        char **b = realloc(l->out, (size_t)cap * sizeof *b);
        if (b) l->out = b;
        int *k = realloc(l->kind, (size_t)cap * sizeof *k);
        if (k) l->kind = k;
        if (!a || !b || !k) in = NULL;
        else l->cap = cap;
    }
    if (!in || !out) {
        free(in), free(out);
        return ms_error(MS_ENOMEM, "out of memory");
    }
    l->in[l->n] = in, l->out[l->n] = out, l->kind[l->n++] = kind;
    return MS_OK;
}

static int is_input_name(const char *name)
{
    return ms_path_nii_suffix(name) || ms_str_ends_with_nocase(name, ".png");
}

/* The kind of one input file; formats predict does not read are refused by name. */
static ms_status input_kind(const char *path, ms_input_kind *kind)
{
    const char *what;
    MS_TRY(ms_predict_input_kind(path, kind, &what));
    MS_FAIL_IF(*kind == MS_INPUT_OTHER, MS_EUNSUPPORTED,
               "%s: a %s image: predict reads NIfTI volumes and PNG images (convert it to PNG)", path, what);
    return MS_OK;
}

/* The entries of a list file, each to out/<its file name> (two of one name are refused). */
static ms_status list_file_inputs(const char *list, const char *out, inputs *l)
{
    char **v = NULL;
    int n = 0;
    MS_TRY(ms_predict_list_read(list, &v, &n));
    ms_status st = MS_OK;
    int i = 0;
    for (; i < n && !st; i++) {
        ms_input_kind k;
        if ((st = input_kind(v[i], &k))) break;
        if (k == MS_INPUT_LIST) {
            st = ms_error(MS_EINVAL, "%s: listed in %s, but not an image (a text file)", v[i], list);
            break;
        }
        for (int j = 0; j < l->n && !st; j++)
            if (!strcmp(ms_path_base(l->in[j]), ms_path_base(v[i])))
                st = ms_error(MS_EINVAL, "%s: listed in %s after %s: both would be written to %s/%s", v[i], list,
                              l->in[j], out, ms_path_base(v[i]));
        if (!st) st = inputs_push(l, v[i], ms_path_join_new(out, ms_path_base(v[i])), k);
    }
    for (; i < n; i++) free(v[i]); /* the entries not taken over */
    free(v);
    return st;
}

/* No output may be its own input (-o the input folder would overwrite the images with their labels). */
static ms_status check_overwrite(const inputs *l)
{
    for (int i = 0; i < l->n; i++) {
        struct stat a, b;
        if (stat(l->in[i], &a) == 0 && stat(l->out[i], &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
            return ms_error(MS_EINVAL, "%s: the output would overwrite the input %s (give another -o)", l->out[i],
                            l->in[i]);
    }
    return MS_OK;
}

static int is_other_name(const char *name) { return ms_predict_other_format(name) != NULL; }

/* Image files of other formats in a folder: named in the error when the folder has no inputs, else in a warning. */
static ms_status other_files(const char *dir, int n_inputs)
{
    char **names = NULL;
    int n = 0;
    MS_TRY(ms_path_list(dir, is_other_name, &names, &n));
    char what[64] = "";
    if (n) snprintf(what, sizeof what, "%s", ms_predict_other_format(names[0]));
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    MS_FAIL_IF(n_inputs == 0 && n, MS_EINVAL, "%s: no .nii, .nii.gz or .png files, but %d image%s of other formats "
               "(%s, ...): predict reads NIfTI volumes and PNG images (convert them to PNG)", dir, n, n > 1 ? "s" : "",
               what);
    MS_FAIL_IF(n_inputs == 0, MS_EINVAL, "%s: no .nii, .nii.gz or .png files", dir);
    if (n)
        fprintf(stderr, "predict: warning: %s: %d image%s of other formats (%s, ...) left out: predict reads NIfTI "
                        "volumes and PNG images\n", dir, n, n > 1 ? "s" : "", what);
    return MS_OK;
}

/* The inputs: one file, a list file of them, or every NIfTI and PNG file in a directory (sorted). *many: the
 * outputs go into the folder out. */
static ms_status list_inputs(const char *in, const char *out, inputs *l, int *many)
{
    *many = 0;
    if (ms_path_is_dir(in)) {
        char **names = NULL;
        int n = 0;
        *many = 1;
        MS_TRY(ms_path_list(in, is_input_name, &names, &n));
        ms_status st = MS_OK;
        int i = 0;
        for (; i < n && !st; i++) {
            int k = ms_path_nii_suffix(names[i]) ? MS_INPUT_NIFTI : MS_INPUT_PNG;
            st = inputs_push(l, ms_path_join_new(in, names[i]), ms_path_join_new(out, names[i]), k);
            free(names[i]);
        }
        for (; i < n; i++) free(names[i]);
        free(names);
        MS_TRY(st);
        return other_files(in, l->n);
    }
    ms_input_kind k;
    MS_TRY(input_kind(in, &k));
    if (k == MS_INPUT_LIST) {
        *many = 1;
        return list_file_inputs(in, out, l);
    }
    MS_FAIL_IF(k == MS_INPUT_PNG && !ms_path_is_dir(out) && !ms_str_ends_with_nocase(out, ".png"), MS_EINVAL,
               "%s: the labels of a PNG image are written as a PNG: give -o NAME.png or a folder", out);
    return inputs_push(l, strdup(in), ms_path_is_dir(out) ? ms_path_join_new(out, ms_path_base(in)) : strdup(out),
                       k);
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

/* Every input in turn (a failure costs its line, the others still run) and the summary line; returns the number
 * that failed. */
static int predict_all(ms_predictor *pr, ms_predict_opts *po, const ms_predict_model *pm, const inputs *l,
                       char **pins, const char *png, const ms_device *dev)
{
    const int n = l->n;
    progress pg = {.on = isatty(2), .n_vols = n, .t0 = ms_now_s()};
    po->progress = on_progress;
    po->progress_ctx = &pg;
    int written = 0, failed = 0, n_png = 0;
    for (int i = 0; i < n; i++) {
        pg.vol = i;
        ms_predict_result r;
        ms_status st = l->kind[i] == MS_INPUT_PNG
                           ? ms_predict_png(pr, po, l->in[i], l->out[i], &r)
                           : ms_predict_file_prompted(pr, po, l->in[i], pins ? pins[i] : NULL, l->out[i], &r);
        n_png += l->kind[i] == MS_INPUT_PNG;
        if (pg.on) fprintf(stderr, "\r\033[K");
        if (!st && png) st = ms_predict_write_overlays(png, l->in[i], &r);
        if (st) {
            fprintf(stderr, "%s\n", ms_errmsg());
            failed++;
        } else {
            written++;
            pg.slices_before += r.n_slices;
            if (r.n_nonfinite)
                fprintf(stderr, "%s: warning: %llu NaN/Inf voxels set to 0\n", l->in[i],
                        (unsigned long long)r.n_nonfinite);
        }
        ms_predict_result_free(&r);
    }
    double dt = ms_now_s() - pg.t0;
    char dd[48];
    printf("predict: %d of %d %s written, %lld slices in %.1f s (%.2f slices/s, %s), %d classes%s%s\n", written, n,
           n_png == 0 ? "volumes" : n_png == n ? "images" : "inputs", (long long)pg.slices_before, dt,
           dt > 0 ? (double)pg.slices_before / dt : 0.0, ms_cli_device_desc(dev, dd, sizeof dd), pm->n_classes, pm->finetuned ? ", task " : "",
           pm->finetuned ? pm->ft.cfg.task[pm->task].name : "");
    return failed;
}

static int run(int argc, char **argv)
{
    static const ms_cmd_help help = {
        "mrisam predict --ckpt F --in VOL.nii[.gz]|IMG.png|DIR|LIST.txt -o SEG.nii.gz|SEG.png|DIR "
        "[--axis auto|axial|coronal|sagittal] "
        "[--norm percentile|zscore|none] [--percentile-low P] [--percentile-high P] [--png DIR] [--threads N] "
        "[--device cpu|cuda] [--batch-size B] [--task NAME] [--prompts-from LABEL.nii.gz|DIR] [--keep-largest] "
        "[--min-size N] [--connectivity 26|6]",
        "Automatic multi-class segmentation (no prompts; mask tokens 1..num_cls, per-pixel argmax, class 0 = "
        "background) of every slice of each volume, cut and normalised exactly as ingest does, restacked and written "
        "as a NIfTI label volume on the input's exact grid (dims, affine, qform/sform codes; no free-text fields), "
        "verified by reading it back. --ckpt: SAM-layout weights (vit_b/l/h, or MobileSAM's vit_t; class c is written as "
        "the value c) or a fine-tuned "
        "checkpoint RUN/ or RUN/best (its preprocessing, axis, intensity normalisation and class values; --task NAME "
        "when it has several tasks). Prompt-trained checkpoints take per-slice prompts from --prompts-from (label "
        "volumes on the input's grid). With a directory, every .nii/.nii.gz inside goes to DIR/<same name>; a bad "
        "volume costs one line and exit status 1, the others are still written. 2-D images: a PNG (8/16-bit, "
        "colour converted to gray), a directory holding PNGs, or a text file listing them (one path a line, relative "
        "to the list's folder) give one 8-bit PNG of class ids per image; JPEG and other formats are refused by name. "
        "Post-processing per class (as "
        "nnU-Net's): --keep-largest keeps only the largest connected component, --min-size N removes components of "
        "fewer than N voxels (removed voxels become background); 3-D components with 26-connectivity (nnU-Net's "
        "full connectivity) unless --connectivity 6.",
        "mrisam predict --ckpt sam_mri.pth --in scans/ -o seg/ --png seg/png\n"
        "  mrisam predict --ckpt runs/ft/ --task prostate --in scans/ -o seg/"};
    const char *ckpt = NULL, *in = NULL, *out = NULL, *axis_s = NULL, *norm_s = NULL, *png = NULL,
               *device = "cpu", *task = NULL, *prompts = NULL, *precision = NULL;
    int threads = 0, batch = 1, keep_largest = 0, conn = 26;
    int64_t min_size = 0;
    double p_lo = -1, p_hi = -1; /* < 0: not given */
    const ms_opt opts[] = {
        {"ckpt", MS_OPT_STR, &ckpt, "F", "SAM-layout weights (.pth or .safetensors) or a fine-tuned RUN/[best]"},
        {"task", MS_OPT_STR, &task, "NAME", "the task of a multi-task fine-tuned checkpoint"},
        {"prompts-from", MS_OPT_STR, &prompts, "LABEL|DIR", "label volume(s) to take prompts from (prompt-trained "
                                                            "checkpoints)"},
        {"in", MS_OPT_STR, &in, "VOL|IMG|DIR|LIST", "a NIfTI volume, a PNG, a directory of them or a list file"},
        {"o", MS_OPT_STR, &out, "SEG|DIR", "output label volume or PNG, or directory"},
        {"axis", MS_OPT_STR, &axis_s, "A", "auto|axial|coronal|sagittal (auto: lowest-resolution axis, ties axial; "
                                           "default: the fine-tuned checkpoint's, else auto)"},
        {"norm", MS_OPT_STR, &norm_s, "N", "percentile|zscore|none intensity normalisation (as ingest; default "
                                           "the fine-tuned checkpoint's, else percentile 0.5/99.5)"},
        {"percentile-low", MS_OPT_FLOAT, &p_lo, "P", "lower percentile of --norm percentile (0.5, as ingest)"},
        {"percentile-high", MS_OPT_FLOAT, &p_hi, "P", "upper percentile of --norm percentile (99.5, as ingest)"},
        {"png", MS_OPT_STR, &png, "DIR", "overlay PNGs of three slices per volume"},
        {"threads", MS_OPT_INT, &threads, "N", "CPU threads (default: all cores)"},
        {"device", MS_OPT_STR, &device, "cpu|cuda", "compute device (default cpu)"},
        MS_CLI_PRECISION_OPTION(&precision),
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

    inputs l = {0};
    char **pins = NULL;
    int many = 0, failed = 0, dev_ok = 0, model_ok = 0, pred_ok = 0;
    ms_status rc = MS_OK;
    ms_device dev;
    ms_predict_model pm;
    ms_predictor pr;
    memset(&pm, 0, sizeof pm);
    if ((rc = list_inputs(in, out, &l, &many)) || (rc = check_overwrite(&l))) goto leave;
    if (many) {
        if ((rc = ms_mkdirs(out))) goto leave;
    } else if ((rc = ms_mkdirs_parent(l.out[0]))) { /* -o new/folder/x.nii.gz: its folder, before any work */
        goto leave;
    }
    if (png && (rc = ms_mkdirs(png))) goto leave;
    ms_device_kind kind;
    int index;
    if ((rc = ms_device_parse(device, &kind, &index))) goto leave;
    if ((rc = ms_device_init_at(&dev, kind, index, threads))) goto leave;
    dev_ok = 1;
    if ((rc = ms_cli_set_precision(&dev, precision))) goto leave;
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
    if (prompts && pm.prompt != MS_PROMPT_NONE && (rc = prompt_inputs(prompts, l.in, l.n, &pins))) goto leave;
    if ((rc = ms_predictor_init_ex(&pr, pm.m, &dev, batch, &pm.pc, pm.prompt))) goto leave;
    pred_ok = 1;

    failed = predict_all(&pr, &po, &pm, &l, pins, png, &dev);
leave:
    for (int i = 0; pins && i < l.n; i++) free(pins[i]);
    free(pins);
    inputs_free(&l);
    if (pred_ok) ms_predictor_free(&pr);
    if (model_ok) ms_predict_model_free(&pm);
    if (dev_ok) ms_device_free(&dev);
    if (rc) return ms_cli_report("predict", rc);
    return failed ? MS_EXIT_FAIL : MS_EXIT_OK;
}

const ms_command ms_cmd_predict = {"predict",
                                   "automatic multi-class segmentation of NIfTI volumes (label NIfTI) and PNG images",
                                   run};
