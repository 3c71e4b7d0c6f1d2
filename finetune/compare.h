/* finetune/compare.h — `mrisam compare` (docs/CLI.md "compare", docs/EVIDENCE.md): does a starting point beat
 * another? Fine-tunes every task × label budget × start × seed, each its own run (finetune/ft_run.h) in
 * OUT/runs/<task>/<start>/b<budget>/s<seed>/, evaluates each on its held-out data in 3-D (finetune/eval_run.h) into
 * RUN/eval/, and tabulates.
 *
 * Starts: "random" (always), "sam" (the given SAM checkpoint), "pretrained" (given MRI-pretrained weights, or an MAE
 * run of compare's own in OUT/pretrain/, pretrain/mae_run.h).
 * Splits: per task and seed the held-out volumes (one-volume store: the held-out slice block) are drawn once, and
 * per budget the shots (training slices with foreground) too; they go to OUT/splits/<task>/s<seed>_b<budget>.json
 * and every run of that (task, budget, seed) is given that file, so the starts differ in their weights only.
 * Pretraining: before it starts, every seed's held-out keys of each task are fixed; a pretraining store that is a
 * task's store (same real path or store ID) leaves them out of its training and validation sampling
 * (ms_mae_run_config.exclude). OUT/compare.json records the plan and what pretraining saw.
 * The held-out data are the test set: the runs train all their steps (no early stopping, no model selection on
 * them: best/ is the final model) and their final model is evaluated. Every val_every steps a run's validation Dice
 * on them goes to RUN/val_curve.jsonl, to be looked at (the report's curves), never to choose or stop.
 * Resumable: a run with RUN/eval/classes.csv is done and skipped; one with a checkpoint resumes (bit-exact on the
 * CPU); one without starts again. The pretraining run resumes the same way.
 * Tables: OUT/results.csv (task,budget,start,seed,class,dice,iou,hd95,nsd,run: per class the mean over the held-out
 * volumes, and class "mean" = the mean over foreground classes), OUT/summary.csv (class-mean Dice over seeds),
 * OUT/paired.csv (start − baseline paired by seed, Student t 95 % interval), OUT/summary.md, OUT/plots/ (gnuplot).
 */
#ifndef MS_COMPARE_H
#define MS_COMPARE_H

#include <signal.h>
#include <stdint.h>

#include "base/device.h"
#include "base/status.h"
#include "finetune/ft_run.h"
#include "pretrain/mae_run.h"

#define MS_CMP_MAX_BUDGETS 16
#define MS_CMP_MAX_SEEDS 100

typedef struct ms_compare_config {
    int n_tasks;
    const char *task[MS_FT_MAX_TASKS], *store[MS_FT_MAX_TASKS]; /* task names (folder names) and labelled stores */
    const char *sam_ckpt;   /* the "sam" start (NULL: none); pretraining starts from it too */
    const char *pretrained; /* the "pretrained" start; NULL: pretrain into OUT/pretrain/ when mae.max_steps > 0 */
    /* the MAE run's template: stores, max_steps, lr, batch, decoder, mask ratio, seed... (out, model, ckpt, init,
     * exclude and to_sd are compare's). n_stores 0 with max_steps > 0: the task stores */
    ms_mae_run_config mae;
    int n_budgets;
    int budget[MS_CMP_MAX_BUDGETS]; /* training slices; 0 = all */
    int n_seeds;
    int64_t seed_base;              /* seeds seed_base .. seed_base + n_seeds - 1 */
    /* every fine-tune's options (model, method, scope, max_steps, warmup, lr, input size, ...); store, task, ckpt,
     * split, shots, seed, out, resume, overwrite, val_every and patience are compare's */
    ms_ft_run_config ft;
    const char *out;
    int threads;            /* evaluation threads (0: all cores) */
    int hd95, nsd;          /* the evaluation's optional metrics */
    double nsd_tol;
    int eval_batch;
    int64_t val_every;      /* steps between the validation curve's points; 0: the last step only; -1: steps / 10 */
    const char *gnuplot;    /* the plotting program (NULL: "gnuplot" on PATH) */
    /* progress lines (one per run, the pretraining's steps, notes); NULL: silent */
    void (*log)(void *ctx, const char *line);
    void *log_ctx;
    const volatile sig_atomic_t *stop; /* a signal's flag: the current run is checkpointed, MS_EINTERRUPTED */
} ms_compare_config;

/* Defaults: budgets {1, 3, 10, all}, 3 seeds from 0, no SAM start, no pretraining, HD95 and NSD at 1 mm, eval batch
 * 4, a curve point every steps / 10; ft and mae from their own defaults. */
void ms_compare_config_default(ms_compare_config *c);

/* Runs (or resumes) the whole comparison and writes every table. */
ms_status ms_compare_run(const ms_compare_config *c, ms_device *dev);

/* ---- statistics (one copy; means and sds are eval.h's ms_mean_sd) ---- */
/* The two-sided 95 % Student t quantile t_{0.975, df}: a table for df 1..30, beyond it the normal quantile with
 * its Cornish-Fisher correction in 1/df; NaN for df < 1. */
double ms_t_crit95(int df);
/* Differences a[i] − b[i] over the pairs where both are finite: their n, mean, sd (n − 1) and the 95 % t interval
 * (NaN where n < 2). */
typedef struct ms_paired {
    int n;
    double mean, sd, t, lo, hi;
} ms_paired;
void ms_paired_diff(const double *a, const double *b, int n, ms_paired *out);

#endif
