/* tools/cmd_compare.c — `mrisam compare`: random vs SAM vs MRI-pretrained starts, fine-tuned per task × label
 * budget × seed on shared splits and shots, evaluated in 3-D on held-out data, tabulated with paired t intervals
 * (docs/CLI.md "compare", docs/EVIDENCE.md). The comparison is finetune/compare.h's; this file parses the options,
 * prints its progress lines and turns SIGINT/SIGTERM into a checkpoint of the current run and exit 75.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/path.h"
#include "cli.h"
#include "finetune/compare.h"

static void print_line(void *ctx, const char *line)
{
    (void)ctx;
    printf("%s\n", line);
    fflush(stdout);
}

/* "1,3,10,all" → budgets (0 = all); -1 on a bad list. */
static int parse_budgets(const char *s, ms_compare_config *c)
{
    c->n_budgets = 0;
    for (const char *p = s; *p;) {
        if (c->n_budgets == MS_CMP_MAX_BUDGETS) return -1;
        char *e;
        long v;
        if (!strncmp(p, "all", 3)) v = 0, e = (char *)p + 3;
        else if ((v = strtol(p, &e, 10)) < 1 || e == p || v > 1000000) return -1;
        c->budget[c->n_budgets++] = (int)v;
        p = e;
        if (*p == ',') p++;
        else if (*p) return -1;
    }
    return c->n_budgets ? 0 : -1;
}

/* "NAME=STORE" into the task tables (names kept in name[]). */
static int parse_task(const char *arg, ms_compare_config *c, char name[][MS_FT_NAME_MAX])
{
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg || !eq[1] || c->n_tasks == MS_FT_MAX_TASKS || (size_t)(eq - arg) >= MS_FT_NAME_MAX) return -1;
    int t = c->n_tasks++;
    snprintf(name[t], MS_FT_NAME_MAX, "%.*s", (int)(eq - arg), arg);
    c->task[t] = name[t];
    c->store[t] = eq + 1;
    return 0;
}

static int run(int argc, char **argv)
{
    static const ms_cmd_help help = {
        "mrisam compare --task NAME=STORE [--task ...] --model NAME [--ckpt SAM.pth] [--pretrained MRI.pth |\n"
        "       --pretrain-steps N [--pretrain-store S ...]] --budgets 1,3,10,all --seeds 3 --steps N\n"
        "       --warmup-steps N --lr X [options] -o OUT/",
        "Does MRI pretraining help? Fine-tunes every task from each start - random (always), the SAM checkpoint\n"
        "(--ckpt), the MRI-pretrained weights (--pretrained, or an MAE run of its own into OUT/pretrain/ with\n"
        "--pretrain-steps) - at every label budget (training slices with foreground; all = every one) and seed.\n"
        "The held-out volumes (one-volume store: a held-out slice block) and the shots are drawn per task and seed\n"
        "and shared by the starts (OUT/splits/); pretraining never sees a task store's held-out slices of any seed.\n"
        "Each run is OUT/runs/<task>/<start>/b<budget>/s<seed>/ (a finetune RUN/) that trains all its steps (the\n"
        "held-out data are the test set: no early stopping or model selection on them), and its final model is\n"
        "evaluated on its held-out volumes (3-D Dice, IoU, HD95, NSD) into RUN/eval/; its validation Dice every\n"
        "--val-every steps goes to RUN/val_curve.jsonl (watched, not used). Writes OUT/results.csv,\n"
        "summary.csv, paired.csv (start - baseline by seed, Student t 95 %), summary.md, plots/ (gnuplot SVG) and\n"
        "compare.json. Rerun the same command to resume: evaluated runs are skipped, an interrupted one\n"
        "continues from its checkpoint. SIGINT/SIGTERM: checkpoint, exit 75. docs/EVIDENCE.md says why it is built\n"
        "this way.",
        "  mrisam compare --task brain=brain/ --model vit_test --input-size 256 --pretrain-steps 1500 \\\n"
        "      --budgets 1,3,10,all --seeds 5 --steps 150 --warmup-steps 15 --lr 1e-3 -o cmp/"};
    ms_compare_config c;
    ms_compare_config_default(&c);
    ms_strlist tasks = {0}, pstores = {0};
    const char *budgets = "1,3,10,all", *method = "full", *scope = "decoder", *device = "cpu";
    static char name[MS_FT_MAX_TASKS][MS_FT_NAME_MAX];
    int threads = 0, no_hd95 = 0, no_nsd = 0, warmup = -2;
    int64_t steps = 0;
    const ms_opt table[] = {
        {"task", MS_OPT_LIST, &tasks, "NAME=STORE", "a labelled task store (repeat for several)"},
        {"model", MS_OPT_STR, &c.ft.model, "NAME", "the random start's model (vit_test, vit_b, ...) and pretraining's"},
        {"ckpt", MS_OPT_STR, &c.sam_ckpt, "FILE", "SAM weights: the \"sam\" start (and pretraining's start)"},
        {"pretrained", MS_OPT_STR, &c.pretrained, "FILE", "MRI-pretrained SAM weights: the \"pretrained\" start"},
        {"pretrain-store", MS_OPT_LIST, &pstores, "S", "pretraining store (repeat; default: the task stores)"},
        {"pretrain-steps", MS_OPT_I64, &c.mae.max_steps, "N", "pretrain into OUT/pretrain/ for N steps (MAE)"},
        {"pretrain-lr", MS_OPT_FLOAT, &c.mae.lr, "X", "pretraining's absolute lr (default: its blr rule)"},
        {"pretrain-batch", MS_OPT_INT, &c.mae.batch, "B", "pretraining batch (default 8)"},
        {"pretrain-warmup", MS_OPT_INT, &c.mae.warmup, "N", "pretraining warm-up steps (default 5% of its steps)"},
        {"pretrain-seed", MS_OPT_I64, (int64_t *)&c.mae.seed, "S", "pretraining seed (default 0)"},
        {"mask-ratio", MS_OPT_FLOAT, &c.mae.mask_ratio, "R", "pretraining's mask ratio (default 0.75)"},
        {"norm-pix-loss", MS_OPT_INT, &c.mae.norm_pix, "0|1", "pretraining's per-patch normalised targets (default 1)"},
        {"decoder-dim", MS_OPT_INT, &c.mae.dec_dim, "N", "MAE decoder width (default 512)"},
        {"decoder-depth", MS_OPT_INT, &c.mae.dec_depth, "N", "MAE decoder blocks (default 8)"},
        {"decoder-heads", MS_OPT_INT, &c.mae.dec_heads, "N", "MAE decoder heads (default 16)"},
        {"budgets", MS_OPT_STR, &budgets, "LIST", "training slices per run, e.g. 1,3,10,all (default)"},
        {"seeds", MS_OPT_INT, &c.n_seeds, "N", "seeds per task and budget (default 3)"},
        {"seed-base", MS_OPT_I64, &c.seed_base, "S", "the first seed (default 0)"},
        {"steps", MS_OPT_I64, &steps, "N", "optimizer steps of every fine-tune (required)"},
        {"warmup-steps", MS_OPT_INT, &warmup, "N", "every fine-tune's linear warm-up (required: set it explicitly)"},
        {"lr", MS_OPT_FLOAT, &c.ft.lr, "X", "fine-tuning peak lr (default 1e-3)"},
        {"batch-size", MS_OPT_INT, &c.ft.batch, "B", "fine-tuning batch (default 4)"},
        {"method", MS_OPT_STR, &method, "full|lora|adapter", "what fine-tuning trains (default full)"},
        {"scope", MS_OPT_STR, &scope, "decoder|encoder+decoder", "fine-tuning scope (default decoder)"},
        {"input-size", MS_OPT_INT, &c.ft.input_size, "N", "model input size of pretraining and fine-tuning"},
        {"val-fraction", MS_OPT_FLOAT, &c.ft.val_fraction, "F", "held-out share of volumes (slices) (default 0.2)"},
        {"val-slices", MS_OPT_INT, &c.ft.val_slices, "N",
         "the validation curve on the first N held-out slices (default all)"},
        {"val-every", MS_OPT_I64, &c.val_every, "K",
         "a validation-curve point every K steps (RUN/val_curve.jsonl; 0: last step only; default steps/10)"},
        {"cache-embeddings", MS_OPT_FLAG, &c.ft.cache_embeddings, NULL, "frozen encoder: embed each slice once"},
        {"no-hd95", MS_OPT_FLAG, &no_hd95, NULL, "evaluate without HD95"},
        {"no-nsd", MS_OPT_FLAG, &no_nsd, NULL, "evaluate without NSD"},
        {"nsd-tolerance", MS_OPT_FLOAT, &c.nsd_tol, "MM", "NSD tolerance (default 1 mm)"},
        {"device", MS_OPT_STR, &device, "cpu|cuda", "compute device (default cpu)"},
        {"threads", MS_OPT_INT, &threads, "N", "CPU threads (default: all cores)"},
        {"o", MS_OPT_STR, &c.out, "OUT", "output folder (rerun with the same options to resume)"},
        {0}};
    int prc = ms_cli_parse(&help, table, argc, argv, NULL);
    int code = prc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    if (prc) goto leave;
    code = MS_EXIT_USAGE;
#define USAGE(...) do { fprintf(stderr, "mrisam compare: " __VA_ARGS__); fputc('\n', stderr); goto leave; } while (0)
    if (!tasks.n || !c.out || steps < 1 || warmup < 0)
        USAGE("needs --task NAME=STORE, --steps N, --warmup-steps N and -o OUT (see --help)");
    for (int i = 0; i < tasks.n; i++)
        if (parse_task(tasks.v[i], &c, name)) USAGE("--task NAME=STORE (at most %d): %s", MS_FT_MAX_TASKS, tasks.v[i]);
    if (parse_budgets(budgets, &c)) USAGE("--budgets: a list like 1,3,10,all");
    if (c.pretrained && (c.mae.max_steps > 0 || pstores.n)) USAGE("--pretrained or --pretrain-steps, not both");
    if (pstores.n && c.mae.max_steps <= 0) USAGE("--pretrain-store goes with --pretrain-steps N");
    if (pstores.n > MS_ORDER_MAX_SOURCES) USAGE("at most %d pretraining stores", MS_ORDER_MAX_SOURCES);
    if (c.val_every < -1) USAGE("--val-every K: K >= 0");
    if (ms_ft_method_parse(method, &c.ft.method) || ms_ft_scope_parse(scope, &c.ft.scope)) USAGE("%s", ms_errmsg());
    c.mae.n_stores = pstores.n;
    for (int i = 0; i < pstores.n; i++) c.mae.stores[i] = pstores.v[i];
    c.mae.input_size = c.ft.input_size;
    c.mae.workers = c.ft.workers = threads;
    c.ft.max_steps = steps;
    c.ft.warmup = warmup;
    c.hd95 = !no_hd95;
    c.nsd = !no_nsd;
    c.threads = threads;
    c.log = print_line;
    c.stop = ms_cli_catch_stop();
#undef USAGE
    ms_device dev = {0};
    ms_dist *dist = NULL;
    ms_status rc = ms_cli_dist_open(device, NULL, threads, 600, 25, &dev, &dist);
    if (!rc && dist) rc = ms_error(MS_EINVAL, "runs one process (its fine-tunes are small): not under mpirun / srun");
    if (!rc) rc = ms_compare_run(&c, &dev);
    if (rc == MS_EINTERRUPTED) printf("compare: interrupted; rerun the same command to continue\n");
    code = ms_cli_report("compare", rc);
    ms_dist_close(dist, rc != MS_OK);
    ms_device_free(&dev);
leave:
    ms_strlist_free(&tasks);
    ms_strlist_free(&pstores);
    return code;
}

const ms_command ms_cmd_compare = {"compare",
                                   "random vs SAM vs MRI-pretrained starts: fine-tune, evaluate, paired tables", run};
