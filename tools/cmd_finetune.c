/* tools/cmd_finetune.c — `mrisam finetune`: supervised fine-tuning of SAM on labelled MRI stores with full / LoRA /
 * adapter methods, decoder or encoder+decoder scope, optional box/point prompts, few-shot subsets and several tasks
 * at once (docs/FINETUNE.md; flags, RUN/ layout and exit codes in docs/CLI.md). The run itself is the library's
 * (finetune/ft_run.h); this file turns options into its configuration, prints progress and owns the signals:
 * SIGINT/SIGTERM let the current step finish, then the run is checkpointed and the command exits 75 (resumable).
 * Under mpirun / srun every rank runs this command (data parallel, docs/FINETUNE.md); rank 0 prints and writes RUN/.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/path.h"
#include "cli.h"
#include "finetune/ft_run.h"
#include "image_io.h"

/* The options that are words; numbers go straight into the run configuration (ms_ft_run_config). */
typedef struct opts {
    ms_strlist stores;
    const char *init, *resume, *method, *scope, *prompt, *shot_unit, *schedule, *lora_blocks, *adapter_blocks;
    const char *augment, *resize, *norm, *device, *precision, *task_weights, *intensity;
    double p_lo, p_hi, dist_timeout, bucket_mb;
    int threads;
    /* what the run configuration points into: the stores' paths and task names */
    char path[MS_FT_MAX_TASKS][MS_PATH_MAX], name[MS_FT_MAX_TASKS][MS_FT_NAME_MAX];
} opts;

/* "path:TASK" → path (into path[MS_PATH_MAX]) and task name (a suffix after the last ':' that holds no '/'). */
static ms_status split_store_arg(const char *arg, char *path, char *task, size_t nt)
{
    const char *c = strrchr(arg, ':');
    if (c && c[1] && !strchr(c + 1, '/')) {
        MS_TRY(ms_path_fmt(path, "%.*s", (int)(c - arg), arg));
        snprintf(task, nt, "%s", c + 1);
    } else {
        MS_TRY(ms_path_fmt(path, "%s", arg));
        ms_ft_task_default_name(path, task, nt);
    }
    return MS_OK;
}

/* A blocks list "0,1,10,11" (or "all") → bit mask (0 = every block). */
static int parse_blocks(const char *s, uint64_t *out)
{
    *out = 0;
    if (!s || !strcmp(s, "all") || !*s) return 0;
    const char *p = s;
    while (*p) {
        char *e;
        long v = strtol(p, &e, 10);
        if (e == p || v < 0 || v > 63) return -1;
        *out |= 1ull << v;
        p = e;
        if (*p == ',') p++;
        else if (*p) return -1;
    }
    return 0;
}

/* The word options → run configuration c (its numbers are parsed already). Returns 0, or the exit code of a
 * usage error (already printed). */
static int make_config(opts *o, ms_ft_run_config *c)
{
#define USAGE(...) do { fprintf(stderr, "mrisam finetune: " __VA_ARGS__); fprintf(stderr, "\n"); \
                        return MS_EXIT_USAGE; } while (0)
    if (o->resume && !c->out) c->out = o->resume;
    if (!c->out || !o->stores.n || (!c->ckpt && !(o->init && c->model)) || (o->init && strcmp(o->init, "random")) ||
        !o->method || !o->scope)
        USAGE("needs --store, -o RUN, --method, --scope and --ckpt F or --init random --model NAME (see --help)");
    if (o->resume && strcmp(o->resume, c->out)) USAGE("--resume RUN and -o must name the same run");
    if (o->stores.n > MS_FT_MAX_TASKS) USAGE("at most %d stores (tasks)", MS_FT_MAX_TASKS);
    c->n_tasks = o->stores.n;
    for (int t = 0; t < c->n_tasks; t++) {
        if (split_store_arg(o->stores.v[t], o->path[t], o->name[t], sizeof o->name[t])) USAGE("%s", ms_errmsg());
        c->store[t] = o->path[t];
        c->task[t] = o->name[t];
    }
    if (ms_ft_method_parse(o->method, &c->method) || ms_ft_scope_parse(o->scope, &c->scope) ||
        ms_prompt_mode_parse(o->prompt, &c->prompt))
        USAGE("%s", ms_errmsg());
    c->shot_unit = !strcmp(o->shot_unit, "slice") ? MS_SHOT_SLICE
                 : !strcmp(o->shot_unit, "volume") ? MS_SHOT_VOLUME : -1;
    if (c->shot_unit < 0) USAGE("--shot-unit slice|volume");
    if (!strcmp(o->schedule, "poly")) c->schedule = MS_SCHED_POLY;
    else if (!strcmp(o->schedule, "cosine")) c->schedule = MS_SCHED_COSINE;
    else USAGE("--schedule poly|cosine");
    if (strcmp(o->augment, "none") && strcmp(o->augment, "seg")) USAGE("--augment none|seg");
    if (strcmp(o->task_weights, "size") && strcmp(o->task_weights, "uniform")) USAGE("--task-weights size|uniform");
    if (parse_blocks(o->lora_blocks, &c->lora_blocks) || parse_blocks(o->adapter_blocks, &c->adapter_blocks))
        USAGE("--lora-blocks / --adapter-blocks: a list like 0,1,10,11 or all");
    ms_prep_config pc = {.resize = c->resize, .norm = c->norm};
    if (ms_prep_parse(&pc, o->resize, o->norm)) USAGE("%s", ms_errmsg());
    c->resize = pc.resize;
    c->norm = pc.norm;
    if (ms_norm_choice_parse(o->intensity, o->p_lo, o->p_hi, &c->intensity)) USAGE("%s", ms_errmsg());
    if (c->ckpt) c->model = NULL; /* the weights decide the model */
    c->init_random = o->init != NULL;
    c->augment = !strcmp(o->augment, "seg");
    c->task_weights_uniform = !strcmp(o->task_weights, "uniform");
    c->resume = o->resume != NULL;
    if (ms_ft_run_config_check(c)) USAGE("%s", ms_errmsg());
    return 0;
#undef USAGE
}

/* What the run is: tasks, the resume point, the plan. */
static void print_plan(const opts *o, const ms_ft_run_config *c, const ms_ft_run_info *in, const ms_device *dev)
{
    char dd[48];
    for (int t = 0; t < in->n_tasks; t++) {
        const ms_ft_run_task_info *ti = &in->task[t];
        if (ti->single_volume)
            printf("finetune: %s has one labelled volume: training and validation are contiguous slice blocks "
                   "%d slices apart\n", ti->store, 8);
        if (ti->single_volume && !c->resume && !c->split && c->shots && c->shot_unit == MS_SHOT_VOLUME)
            fprintf(stderr, "finetune: warning: %s: --shots %d --shot-unit volume on a store with one labelled "
                    "volume: that volume's training block is used whole\n", ti->store, c->shots);
        printf("finetune: task %s: %d classes, %llu training slices with foreground (%llu empty left out), "
               "%llu validation slices\n", ti->name, ti->num_cls, (unsigned long long)ti->n_train,
               (unsigned long long)ti->n_empty, (unsigned long long)ti->n_val);
    }
    if (in->warmup_exceeds_run)
        fprintf(stderr, "finetune: warning: --warmup-steps %lld lasts the whole run of %lld steps: the learning rate never "
                "reaches --lr\n", (long long)in->warmup, (long long)in->total);
    if (in->resumed_from)
        printf("finetune: resuming from %s (step %lld)\n", in->resumed_from, (long long)in->resumed_step);
    printf("finetune: %s, %s / %s, prompt %s, input %d, %d task(s), %lld steps (%lld per epoch), batch %d, "
           "lr %.3g %s (warm-up %lld), %lld trainable parameters in %d tensors%s, %s\n",
           in->model, o->method, o->scope, o->prompt, in->input_size, in->n_tasks, (long long)in->total,
           (long long)in->steps_per_epoch, c->batch, c->lr, o->schedule, (long long)in->warmup,
           (long long)in->trainable, in->n_trainable_tensors, c->cache_embeddings ? ", embeddings cached" : "",
           ms_cli_device_desc(dev, dd, sizeof dd));
}

/* The progress line (at most once a second, and at the last step), validation and early stopping. */
static void print_step(const ms_ft_step_info *s, int patience, double *t_last)
{
    double t = ms_now_s();
    if (s->stepped && (t - *t_last > 1.0 || s->step == s->total)) {
        printf("%sstep %lld/%lld  epoch %.1f  loss %.4f  lr %.3g  %.2f img/s  ETA %dm%02ds%s", isatty(1) ? "\r" : "",
               (long long)s->step, (long long)s->total, s->epoch, s->loss, s->lr, s->img_per_s,
               (int)(s->eta_s / 60), (int)s->eta_s % 60, isatty(1) ? "   " : "\n");
        fflush(stdout);
        *t_last = t;
    }
    if (s->validated)
        printf("%sval step %lld (epoch %.1f): loss %.4f, mean foreground Dice %.4f%s\n", isatty(1) ? "\n" : "",
               (long long)s->step, s->epoch, s->val.loss, s->val.score, s->best ? " (best)" : "");
    if (s->stopped_early)
        printf("finetune: no better validation Dice for %.1f epochs (--patience %d): stopping\n",
               s->epochs_since_best, patience);
}

/* Opens the run, steps it to the end or to a signal, reports. */
static ms_status train(const opts *o, ms_ft_run_config *c, ms_device *dev, ms_dist *dist)
{
    c->dist = dist;
    c->bucket_bytes = (size_t)(o->bucket_mb * 1048576.0);
    c->stop = ms_cli_catch_stop();
    ms_ft_run *run = NULL;
    MS_TRY(ms_ft_run_open(c, dev, &run));
    ms_ft_run_info in;
    ms_ft_run_get_info(run, &in);
    print_plan(o, c, &in, dev);
    if (in.world > 1)
        printf("finetune: %d ranks, batch %d per rank, global batch %d (lr %.3g, not scaled)\n", in.world, c->batch,
               in.global_batch, c->lr);
    double t_last = ms_now_s();
    /* several ranks agree on the flag inside each step (s.stop); one process also stops on a flag set between steps */
    ms_ft_step_info s = {0};
    ms_status rc = MS_OK;
    while (!s.done && !s.stop && !(!dist && *c->stop) && !(rc = ms_ft_run_step(run, &s))) {
        print_step(&s, c->patience, &t_last);
        if (s.stepped) ms_cli_test_stop(s.step, ms_dist_rank(dist), c->stop);
    }
    if (!rc && !s.done) { /* a signal: checkpoint the step just finished */
        ms_ft_run_get_info(run, &in);
        rc = ms_ft_run_save(run);
        if (!rc) {
            printf("\nfinetune: interrupted at step %lld; checkpoint written, continue with the same options and "
                   "--resume %s\n", (long long)in.step, c->out);
            rc = ms_error(MS_EINTERRUPTED, "interrupted at step %lld (resumable)", (long long)in.step);
        }
    } else if (!rc) {
        ms_ft_run_get_info(run, &in);
        if (c->cache_embeddings)
            printf("finetune: embedding cache: %lld slices, %llu hits\n", (long long)in.cache_count,
                   (unsigned long long)in.cache_hits);
        if (!isnan(in.best_score))
            printf("finetune: best validation Dice %.4f at step %lld (epoch %.1f): %s/best\n", in.best_score,
                   (long long)in.best_step, in.best_epoch, c->out);
        else
            printf("finetune: %s; the final model is in %s/best\n",
                   in.has_val ? "no class could be scored on the validation slices" : "no validation set", c->out);
    }
    ms_ft_run_close(run);
    return rc;
}

static int run(int argc, char **argv)
{
    static const ms_cmd_help help = {
        "mrisam finetune --store S[:TASK] [--store S2[:TASK2] ...] (--ckpt F | --init random --model NAME) -o RUN/\n"
        "       --method full|lora|adapter --scope decoder|encoder+decoder [options]",
        "Supervised fine-tuning of SAM on labelled slices (finetune-SAM's recipe: Dice + CE, AdamW, warm-up + poly\n"
        "decay, validation every 2 epochs, early stopping). Each store is one task with its own class map (the\n"
        "sorted label values, 0 = background) and output head; tasks share everything else. Training uses only\n"
        "slices whose label has foreground; splits are by volume (one labelled volume: slice blocks with a gap).\n"
        "Writes RUN/config.json, shots.json, log.jsonl, tb/, ckpt/step_*/, val/step_*.png and best/ (the best\n"
        "validation Dice; predict and eval read it). SIGINT/SIGTERM: finish the step, checkpoint, exit 75;\n"
        "--resume RUN/ with the same options continues exactly; RUN/ must be new or empty otherwise (exit 2):\n"
        "--overwrite starts again over an old run there. Data parallel: mpirun -np N mrisam finetune ... (or\n"
        "srun); --batch-size is per rank, the global batch N x B; lr is not scaled with the number of ranks.\n"
        "docs/FINETUNE.md has the details.",
        "  mrisam finetune --store brain/ --init random --model vit_test --method full --scope decoder \\\n"
        "      --shots 8 --max-steps 300 --warmup-steps 30 --val-every 20 -o run/\n"
        "  mrisam finetune --store prostate/ --ckpt sam_vit_b_01ec64.pth --method lora --scope encoder+decoder -o run/\n"
        "  mrisam finetune --store a/:brain --store b/:tissue --ckpt sam_mri_vit_b.pth --method adapter \\\n"
        "      --scope encoder+decoder -o run/"};
    opts o = {.prompt = "none", .shot_unit = "slice", .schedule = "poly", .augment = "none", .device = "cpu",
              .task_weights = "size", .p_lo = -1, .p_hi = -1, .dist_timeout = 600, .bucket_mb = 25};
    ms_ft_run_config cfg;
    ms_ft_run_config_default(&cfg);
    const ms_opt table[] = {
        {"store", MS_OPT_LIST, &o.stores, "S[:TASK]", "a labelled store; repeat for several tasks (name: TASK or the "
                                                      "store's folder name)"},
        {"ckpt", MS_OPT_STR, &cfg.ckpt, "FILE", "SAM weights to start from (.pth or .safetensors)"},
        {"init", MS_OPT_STR, &o.init, "random", "start from PyTorch's default initialisation (with --model)"},
        {"model", MS_OPT_STR, &cfg.model, "NAME", "vit_b, vit_l, vit_h, vit_t (MobileSAM), vit_test or vit_t_test (with --init random)"},
        {"o", MS_OPT_STR, &cfg.out, "RUN", "run directory"},
        {"method", MS_OPT_STR, &o.method, "full|lora|adapter", "what is fine-tuned (docs/FINETUNE.md table)"},
        {"scope", MS_OPT_STR, &o.scope, "decoder|encoder+decoder", "decoder only (encoder frozen) or both"},
        {"prompt", MS_OPT_STR, &o.prompt, "none|box|point|hybrid", "prompts from the labels (default none: automatic)"},
        {"shots", MS_OPT_INT, &cfg.shots, "K", "few-shot: K training slices (or volumes), chosen by seed"},
        {"shot-unit", MS_OPT_STR, &o.shot_unit, "slice|volume", "what --shots counts (default slice)"},
        {"split", MS_OPT_STR, &cfg.split, "FILE", "reuse a split / shots file (RUN/shots.json of another run)"},
        {"val-fraction", MS_OPT_FLOAT, &cfg.val_fraction, "F", "share of volumes held out (default 0.2)"},
        {"epochs", MS_OPT_INT, &cfg.epochs, "E", "epochs (default 200; --max-steps wins)"},
        {"max-steps", MS_OPT_I64, &cfg.max_steps, "N", "optimizer steps"},
        {"batch-size", MS_OPT_INT, &cfg.batch, "B", "slices per step and rank (default 4)"},
        {"lr", MS_OPT_FLOAT, &cfg.lr, "X", "peak learning rate (default 1e-3; not scaled with the number of ranks)"},
        {"min-lr", MS_OPT_FLOAT, &cfg.min_lr, "X", "cosine floor (default 0)"},
        {"weight-decay", MS_OPT_FLOAT, &cfg.weight_decay, "X", "AdamW weight decay (default 0.1)"},
        {"warmup-steps", MS_OPT_INT, &cfg.warmup, "N", "linear warm-up steps (default min(200, 10% of the steps))"},
        {"schedule", MS_OPT_STR, &o.schedule, "poly|cosine", "decay after warm-up (default poly 0.9)"},
        {"clip-grad", MS_OPT_FLOAT, &cfg.clip_grad, "X", "clip the global gradient norm (default 0: off)"},
        {"val-every", MS_OPT_INT, &cfg.val_every, "E", "validate every E epochs (default 2)"},
        {"val-slices", MS_OPT_INT, &cfg.val_slices, "N", "validate on the first N held-out slices per task (default "
                                                         "0: all)"},
        {"patience", MS_OPT_INT, &cfg.patience, "E", "stop after E epochs without a better validation Dice (default "
                                                     "20)"},
        {"lora-rank", MS_OPT_INT, &cfg.lora_rank, "R", "LoRA rank (default 4)"},
        {"lora-blocks", MS_OPT_STR, &o.lora_blocks, "LIST", "encoder blocks with LoRA, e.g. 0,1,10,11 (default all)"},
        {"adapter-blocks", MS_OPT_STR, &o.adapter_blocks, "LIST", "encoder blocks with adapters (default all)"},
        {"cache-embeddings", MS_OPT_FLAG, &cfg.cache_embeddings, NULL, "compute each slice's embedding once (frozen "
                                                                       "encoder, no augmentation)"},
        {"compat-finetune-sam", MS_OPT_FLAG, &cfg.compat_finetune_sam, NULL, "train exactly what finetune-SAM trains"},
        {"augment", MS_OPT_STR, &o.augment, "none|seg", "training augmentation (default none)"},
        {"task-weights", MS_OPT_STR, &o.task_weights, "size|uniform", "how often each task trains (default size: "
                                                                      "proportional to its training slices)"},
        {"input-size", MS_OPT_INT, &cfg.input_size, "N", "model input size (default: the model's own; others "
                                                         "interpolate the position tables)"},
        {"resize", MS_OPT_STR, &o.resize, "longest|stretch", "SAM's longest-side resize (default) or a square stretch"},
        {"norm", MS_OPT_STR, &o.norm, "sam|medsam", "pixel normalisation (default sam)"},
        {"intensity", MS_OPT_STR, &o.intensity, "M",
         "percentile|zscore|none: the stores' intensity normalisation (default: each store's own, ingest's)"},
        {"percentile-low", MS_OPT_FLOAT, &o.p_lo, "P", "lower percentile of --intensity percentile (0.5)"},
        {"percentile-high", MS_OPT_FLOAT, &o.p_hi, "P", "upper percentile of --intensity percentile (99.5)"},
        {"seed", MS_OPT_I64, &cfg.seed, "S", "seed (default 0)"},
        {"resume", MS_OPT_STR, &o.resume, "RUN", "continue the run in RUN from its newest checkpoint"},
        {"overwrite", MS_OPT_FLAG, &cfg.overwrite, NULL, "start again over an old run in RUN (removes it)"},
        {"save-every", MS_OPT_INT, &cfg.save_every, "N", "checkpoint every N steps (default 1000)"},
        {"keep-last", MS_OPT_INT, &cfg.keep_last, "K", "checkpoints to keep (default 2)"},
        {"workers", MS_OPT_INT, &cfg.workers, "N", "loader threads per task (default: --threads)"},
        {"threads", MS_OPT_INT, &o.threads, "N", "CPU threads (default: all cores)"},
        MS_CLI_DIST_OPTIONS(&o.device, &o.dist_timeout, &o.bucket_mb, &cfg.zero1),
        {"recompute", MS_OPT_FLAG, &cfg.recompute, NULL,
         "recompute each encoder block in the backward: same gradients, less memory, ~1/3 more encoder work"},
        MS_CLI_PRECISION_OPTION(&o.precision),
        {0}};
    int prc = ms_cli_parse(&help, table, argc, argv, NULL);
    int urc = prc ? 0 : make_config(&o, &cfg);
    if (prc || urc) {
        ms_strlist_free(&o.stores);
        return prc ? (prc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE) : urc;
    }
    ms_device dev = {0};
    ms_dist *dist = NULL;
    ms_status rc = ms_cli_dist_open(o.device, o.precision, o.threads, o.dist_timeout, o.bucket_mb, &dev, &dist);
    if (!rc) rc = train(&o, &cfg, &dev, dist);
    int code = ms_cli_report("finetune", rc);
    ms_dist_close(dist, rc && rc != MS_EINTERRUPTED); /* a failed rank ends the whole job: no rank waits forever */
    ms_device_free(&dev);
    ms_strlist_free(&o.stores);
    return code;
}

const ms_command ms_cmd_finetune = {"finetune", "fine-tune SAM on labelled stores (full, LoRA, adapters; multi-task)",
                                    run};
