/* tools/cmd_eval.c — `mrisam eval --pred DIR --gt DIR -o OUTDIR` or `--ckpt C --store S -o OUTDIR`: 3D Dice, IoU,
 * HD95 and NSD per volume and class. The evaluation and the report are finetune/eval_run.h's; this file parses the
 * options, finds the run's shots.json and prints.
 */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"
#include "finetune/eval_run.h"

static void on_volume(void *ctx, const char *name, int64_t n_slices)
{
    (void)ctx;
    fprintf(stderr, "eval: %s: %lld slices segmented\n", name, (long long)n_slices);
}

static int run(int argc, char **argv)
{
    static const ms_cmd_help h = {
        "mrisam eval --pred DIR --gt DIR -o OUTDIR [--label-names FILE] [--no-hd95] [--nsd-tolerance MM | --no-nsd] "
        "[--threads N]\n"
        "       mrisam eval --ckpt C --store S -o OUTDIR [--task NAME] [--all] [--device cpu|cuda] [--batch-size B] "
        "(and the options above)",
        "Compare predicted label volumes with ground truth: 3D Dice and IoU per volume and class. Files pair by name "
        "(.nii and .nii.gz are interchangeable) and must share the grid. Every label value > 0 found in any volume "
        "is a class; a class absent from both volumes of a pair is undefined (nan) there, not 1, and skipped by the "
        "means. HD95 (mm) is the larger directed 95th percentile of surface distances; inf when only one volume has "
        "the class. NSD (normalized surface Dice, MedSAM's second metric) is the share of both surfaces' area (the "
        "DeepMind surface-distance package's surface elements) within --nsd-tolerance mm of the other surface; 0 when "
        "only one volume has the class. Writes OUTDIR/per_volume.csv and OUTDIR/summary.md and prints the summary "
        "table.\n"
        "With --ckpt C --store S the checkpoint segments the store's labelled volumes slice by slice (its own "
        "preprocessing; prompt-trained checkpoints take their prompts from the stored labels) and each volume is "
        "scored against its stored labels, mapped through the task's class values (other values count as "
        "background). When C belongs to a run with shots.json (C = RUN/, RUN/best or RUN/ckpt/step_N) only the "
        "run's validation selection is evaluated, unless --all.",
        "mrisam eval --pred runs/a/pred --gt data/labels -o runs/a/eval --label-names labels.txt\n"
        "  mrisam eval --ckpt runs/ft/ --store prostate.store -o runs/ft/eval"};
    const char *pred_dir = NULL, *gt_dir = NULL, *out = NULL, *names_path = NULL, *ckpt = NULL, *store = NULL,
               *task = NULL, *device = "cpu", *precision = NULL;
    int threads = 0, no_hd95 = 0, no_nsd = 0, all = 0, batch = 4;
    double nsd_tol = 1.0;
    const ms_opt opts[] = {
        {"pred", MS_OPT_STR, &pred_dir, "DIR", "predicted label volumes (.nii / .nii.gz)"},
        {"gt", MS_OPT_STR, &gt_dir, "DIR", "ground-truth label volumes, same file names"},
        {"ckpt", MS_OPT_STR, &ckpt, "C", "a fine-tuned checkpoint (RUN/, RUN/best) or SAM-layout weights"},
        {"store", MS_OPT_STR, &store, "S", "the store whose labelled volumes --ckpt segments"},
        {"task", MS_OPT_STR, &task, "NAME", "the task of a multi-task checkpoint"},
        {"all", MS_OPT_FLAG, &all, NULL, "every labelled volume, even when the run has a validation selection"},
        {"device", MS_OPT_STR, &device, "cpu|cuda", "compute device for --ckpt (default cpu)"},
        MS_CLI_PRECISION_OPTION(&precision),
        {"batch-size", MS_OPT_INT, &batch, "B", "slices per encoder batch for --ckpt (default 4)"},
        {"o", MS_OPT_STR, &out, "OUTDIR", "output folder (created when absent)"},
        {"label-names", MS_OPT_STR, &names_path, "FILE", "class names: lines \"VALUE NAME\" ('#' comments)"},
        {"no-hd95", MS_OPT_FLAG, &no_hd95, NULL, "skip HD95 (the slowest metric)"},
        {"nsd-tolerance", MS_OPT_FLOAT, &nsd_tol, "MM", "NSD tolerance in mm (default 1; MedSAM's challenge used 2)"},
        {"no-nsd", MS_OPT_FLAG, &no_nsd, NULL, "skip NSD"},
        {"threads", MS_OPT_INT, &threads, "N", "threads (default: all cores)"},
        {0}};
    int rc = ms_cli_parse(&h, opts, argc, argv, NULL);
    if (rc) return rc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    int mode_files = pred_dir || gt_dir, mode_ckpt = ckpt || store;
    if (!out || mode_files == mode_ckpt || (mode_files && (!pred_dir || !gt_dir)) || (mode_ckpt && (!ckpt || !store))) {
        fprintf(stderr, "mrisam eval: needs -o and either --pred and --gt, or --ckpt and --store (see mrisam eval "
                        "--help)\n");
        return MS_EXIT_USAGE;
    }
    if (mode_files && (task || all)) {
        fprintf(stderr, "mrisam eval: --task and --all go with --ckpt\n");
        return MS_EXIT_USAGE;
    }
    if (batch < 1 || batch > 1024) {
        fprintf(stderr, "mrisam eval: --batch-size must be 1..1024\n");
        return MS_EXIT_USAGE;
    }
    if (!(nsd_tol >= 0 && nsd_tol <= 1e6)) {
        fprintf(stderr, "mrisam eval: --nsd-tolerance must be a distance in mm, 0..1e6\n");
        return MS_EXIT_USAGE;
    }
    ms_eval_result r = {.nsd = !no_nsd, .nsd_tol = nsd_tol};
    char shots[MS_PATH_MAX] = "", *md = NULL;
    size_t md_len = 0;
    ms_status st = MS_OK;
    if (names_path && (st = ms_eval_names_read(&r, names_path))) goto leave;
    if (mode_ckpt) {
        int idx = -1;
        if (!all) ms_eval_shots_find(ckpt, shots);
        if (shots[0] && (st = ms_eval_shots_index(shots, store, &idx))) goto leave;
        if (shots[0] && idx < 0)
            fprintf(stderr, "eval: note: %s is not among the stores of %s; every labelled volume is evaluated\n",
                    store, shots);
        const ms_eval_store_opts o = {.ckpt = ckpt, .store = store, .task = task, .device = device,
                                      .precision = precision, .shots = shots, .shots_index = idx,
                                      .n_threads = threads, .batch = batch, .hd95 = !no_hd95, .on_volume = on_volume};
        st = ms_eval_store(&r, &o);
    } else {
        st = ms_eval_files(&r, pred_dir, gt_dir, threads, !no_hd95);
    }
    if (st || (st = ms_eval_report_write(&r, out, &md, &md_len))) goto leave;
    fwrite(md, 1, md_len, stdout);
leave:
    free(md);
    ms_eval_result_free(&r);
    return ms_cli_report("eval", st);
}

const ms_command ms_cmd_eval = {"eval",
                                "3D Dice, IoU, HD95 and NSD of label volumes against ground truth (files or a store)",
                                run};
