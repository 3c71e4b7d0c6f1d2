/* tools/bench_finetune.c — `mrisam bench finetune`: slices/s of one fine-tuning step (encoder forward — with
 * backward when the scope trains it —, prompt-free decoder of num_cls channels, Dice + CE, backward, AdamW on the
 * trainable set) for each method × scope, beside the PyTorch reference step (tools/bench/finetune_ref.py:
 * tests/reference/'s SAM with finetune-SAM's LoRA / adapters; frozen encoder under torch.no_grad() for scope
 * decoder) on the same model, batch and thread count, in the same run. Both sides print their trainable parameter
 * count: they must agree, or the two steps do not train the same tensors. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/path.h"
#include "base/rng.h"
#include "bench.h"
#include "cli.h"
#include "finetune/ft_model.h"
#include "loss.h"
#include "pretrain/flops.h"
#include "pretrain/optimizer.h"

#define MAX_CASES 6
#define MAX_STEPS 1000

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct bcase {
    ms_ft_method method;
    ms_ft_scope scope;
    double ours_s, torch_s;           /* median seconds per step; NAN = not measured */
    ms_bench_result ours;             /* batch run, first step, peak memory of ours */
    ms_device ran;                    /* the device ours ran on (kind, precision) */
    int64_t ours_n, torch_n;          /* trainable numel; -1 = not known */
    int ours_t, torch_t;              /* trainable tensors */
} bcase;

typedef struct bcfg {
    const char *model, *upstream; /* upstream: a MobileSAM checkout for vit_t's PyTorch side */
    int batch, steps, warmup, num_cls, compat, list;
    uint64_t seed;
    ms_device_kind kind;
    int index;
    const char *precision; /* NULL: the device kind's default */
    int recompute;         /* --recompute: per-block recomputation in the encoder's backward */
} bcfg;

/* Median seconds per step of ours for one case at `batch` images; also its trainable count, the time from process
 * start to the end of the first step and the device memory above the context. */
static ms_status time_ours(const bcfg *b, int threads, int batch, bcase *k)
{
    ms_device dev = {0};
    ms_ft_model m;
    memset(&m, 0, sizeof m);
    ms_optimizer opt = {0};
    int32_t *target = NULL, *t_host = NULL;
    float *loss = NULL, *x = NULL;
    double times[MAX_STEPS];
    size_t base = 0, total = 0;
    k->ours.batch = batch;
    ms_status rc = ms_device_init_at(&dev, b->kind, b->index, threads);
    if (rc) return rc;
    rc = ms_cli_set_precision(&dev, b->precision);
    k->ran = dev;
    if (!rc && dev.kind == MS_DEV_CUDA) rc = ms_dev_mem_info(&dev, &base, &total); /* the context */
    if (rc) goto leave;
    ms_ft_config cfg;
    ms_ft_config_default(&cfg);
    snprintf(cfg.model, sizeof cfg.model, "%s", b->model);
    cfg.method = k->method;
    cfg.scope = k->scope;
    cfg.compat_finetune_sam = b->compat;
    cfg.task[0].num_cls = b->num_cls;
    for (int c = 0; c < b->num_cls; c++) cfg.task[0].values[c] = (uint16_t)c;
    ms_sam_config sc;
    if ((rc = ms_sam_config_named(b->model, b->num_cls + 1, &sc))) goto leave;
    ms_prep_config_default(&cfg.prep, sc.tinyvit ? sc.tv.img_size : sc.enc.img_size);
    cfg.prep.channels = 3;
    if ((rc = ms_ft_model_build(&m, &cfg, NULL, b->seed, &dev))) goto leave;
    if (!m.sam.cfg.tinyvit) ms_sam_encoder_set_recompute(&m.sam.enc, b->recompute);
    if ((rc = ms_ft_model_reserve(&m, batch, 1)) ||
        (rc = ms_optimizer_init(&opt, &m.sam.ps, 0.9f, 0.999f, 1e-8f, 0.1f)))
        goto leave;
    k->ours_n = ms_ft_model_trainable_numel(&m, &k->ours_t);
    if (b->list)
        for (int i = 0; i < m.sam.ps.n; i++)
            if (m.sam.ps.p[i].trainable) printf("  mrisam trainable: %s %lld\n", m.sam.ps.p[i].name,
                                                (long long)m.sam.ps.p[i].numel);
    const int64_t S = m.sam.img_size, lo = 4 * (int64_t)m.sam.emb_h, P = lo * lo, B = batch, C = b->num_cls;
    x = malloc((size_t)(B * 3 * S * S) * sizeof(float));
    t_host = malloc((size_t)(B * P) * sizeof(int32_t));
    if (!x || !t_host) { rc = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
    ms_rng r;
    ms_rng_init(&r, b->seed, 1);
    for (int64_t i = 0; i < B * 3 * S * S; i++) x[i] = ms_rng_normal(&r);
    for (int64_t i = 0; i < B * P; i++) t_host[i] = (int32_t)(ms_rng_uniform(&r) * C) % (int32_t)C;
    if ((rc = ms_dev_alloc(&dev, (size_t)(B * P) * sizeof(int32_t), (void **)&target)) ||
        (rc = ms_dev_alloc(&dev, 2 * sizeof(float), (void **)&loss)) ||
        (rc = ms_dev_from_host(&dev, target, t_host, (size_t)(B * P) * sizeof(int32_t))))
        goto leave;
    const size_t lbytes = (size_t)(B * C * P) * sizeof(float);
    for (int s = 0; s < b->warmup + b->steps && !rc; s++) {
        double t0 = ms_now_s();
        float lh[2];
        /* the input upload is part of a step, as the trainer's batch upload is */
        rc = ms_dev_from_host(&dev, m.x, x, (size_t)(B * 3 * S * S) * sizeof(float));
        if (!rc) rc = ms_params_zero_grads(&m.sam.ps);
        ms_ft_model_set_training(&m, 1);
        if (!rc) rc = ms_ft_model_encode(&m, m.x, (int)B);
        ms_ft_model_set_training(&m, 0);
        if (!rc) rc = ms_ft_model_decode(&m, 0, m.emb, (int)B, NULL);
        if (!rc) rc = ms_dice_loss_forward(&dev, loss, m.logits, target, B, C, P, 1e-5f);
        if (!rc) rc = ms_cross_entropy_forward(&dev, loss + 1, m.logits, target, B, C, P);
        if (!rc) rc = ms_dev_to_host(&dev, lh, loss, sizeof lh);
        if (!rc) rc = ms_dev_zero(&dev, m.dlogits, lbytes);
        if (!rc) rc = ms_dice_loss_backward(&dev, m.dlogits, 1.f, m.logits, target, B, C, P, 1e-5f);
        if (!rc) rc = ms_cross_entropy_backward(&dev, m.dlogits, 1.f, m.logits, target, B, C, P);
        if (!rc) rc = ms_ft_model_backward(&m, m.dlogits);
        if (!rc) rc = ms_optimizer_step(&opt, 1e-4f, NULL);
        if (!rc) rc = ms_dev_sync(&dev);
        if (!rc && !isfinite(lh[0] + lh[1])) rc = ms_error(MS_EINVAL, "bench finetune: loss is not finite");
        if (s >= b->warmup) times[s - b->warmup] = ms_now_s() - t0;
        if (!rc && s == 0) k->ours.first_s = ms_bench_process_age();
    }
    k->ours.peak_bytes = ms_bench_mem_above(&dev, base);
    if (!rc) {
        qsort(times, (size_t)b->steps, sizeof *times, cmp_double);
        k->ours_s = b->steps % 2 ? times[b->steps / 2] : 0.5 * (times[b->steps / 2 - 1] + times[b->steps / 2]);
        k->ours.s_per_step = k->ours_s;
    }
leave:
    free(x);
    free(t_host);
    if (target) ms_dev_free(&dev, target);
    if (loss) ms_dev_free(&dev, loss);
    ms_optimizer_free(&opt);
    ms_ft_model_free(&m);
    ms_device_free(&dev);
    return rc;
}

/* Runs the PyTorch side for every case at one thread count (one interpreter: torch's import is paid once) and
 * fills torch_s / torch_n. Returns 0 when at least one line came back. */
static int run_torch(const char *python, const char *script, const bcfg *b, int threads, bcase *cs, int n)
{
    char cases[512] = "", cmd[8192];
    /* vit_t's PyTorch side is MobileSAM's TinyViT without PEFT: method full only */
    int tiny = !strncmp(b->model, "vit_t", 5) && strcmp(b->model, "vit_test");
    for (int i = 0; i < n; i++) {
        if (tiny && cs[i].method != MS_FT_FULL) continue;
        size_t l = strlen(cases);
        snprintf(cases + l, sizeof cases - l, "%s%s:%s", l ? "," : "", ms_ft_method_name(cs[i].method),
                 ms_ft_scope_name(cs[i].scope));
    }
    if (!cases[0]) return -1;
    snprintf(cmd, sizeof cmd,
             "'%s' '%s' --cases '%s' --model %s --batch %d --steps %d --warmup %d --threads %d --num-cls %d "
             "--seed %llu%s%s%s%s%s",
             python, script, cases, b->model, b->batch, b->steps, b->warmup, threads, b->num_cls,
             (unsigned long long)b->seed, b->compat ? " --compat" : "", b->list ? " --list-trainable" : "",
             b->upstream ? " --upstream '" : "", b->upstream ? b->upstream : "", b->upstream ? "'" : "");
    const size_t line_cap = 1 << 20; /* a line carries every trainable name with --list-trainable */
    char *line = malloc(line_cap);
    FILE *f = line ? popen(cmd, "r") : NULL;
    if (!f) { free(line); return -1; }
    int got = 0;
    while (fgets(line, (int)line_cap, f)) {
        cJSON *j = cJSON_Parse(line);
        if (!j) continue;
        const cJSON *me = cJSON_GetObjectItemCaseSensitive(j, "method"),
                    *sc = cJSON_GetObjectItemCaseSensitive(j, "scope"),
                    *sp = cJSON_GetObjectItemCaseSensitive(j, "s_per_step"),
                    *tn = cJSON_GetObjectItemCaseSensitive(j, "trainable"),
                    *tt = cJSON_GetObjectItemCaseSensitive(j, "trainable_tensors"),
                    *nm = cJSON_GetObjectItemCaseSensitive(j, "names");
        for (int i = 0; i < n && cJSON_IsString(me) && cJSON_IsString(sc) && cJSON_IsNumber(sp); i++) {
            if (strcmp(me->valuestring, ms_ft_method_name(cs[i].method)) ||
                strcmp(sc->valuestring, ms_ft_scope_name(cs[i].scope)))
                continue;
            cs[i].torch_s = sp->valuedouble;
            cs[i].torch_n = cJSON_IsNumber(tn) ? (int64_t)tn->valuedouble : -1;
            cs[i].torch_t = cJSON_IsNumber(tt) ? tt->valueint : 0;
            got++;
            const cJSON *e;
            cJSON_ArrayForEach(e, nm) if (cJSON_IsString(e)) printf("  PyTorch trainable (%s/%s): %s\n",
                                                                     me->valuestring, sc->valuestring, e->valuestring);
        }
        cJSON_Delete(j);
    }
    pclose(f);
    free(line);
    return got ? 0 : -1;
}

/* finetune_ref.py into out[MS_PATH_MAX]. */
static ms_status default_script(char *out)
{
    /* $MS_SOURCE_DIR, else the working folder, else the source tree above a build folder */
    const char *src = getenv("MS_SOURCE_DIR");
    MS_TRY(ms_path_join(out, src ? src : ".", "tools/bench/finetune_ref.py"));
    struct stat sb;
    if (src || stat(out, &sb) == 0) return MS_OK;
    char exe[MS_PATH_MAX];
    ssize_t l = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (l <= 0) return MS_OK;
    exe[l] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    return ms_path_join(out, exe, "../tools/bench/finetune_ref.py");
}

/* Model FLOPs of one step per image (pretrain/flops.h): SAM's encoder and neck; the backward of frozen encoder
 * weights (LoRA, adapters) is dX only; scope decoder runs the encoder forward alone. The mask decoder (< 1 %) and the
 * PEFT tensors' own products are left out. 0 for TinyViT (not counted). */
static double step_flops(const bcfg *b, const bcase *k)
{
    ms_sam_enc_config ec;
    if (ms_sam_enc_config_named(b->model, &ec)) return 0;
    ms_flops f = ms_flops_sam_encoder(&ec, ec.img_size, 0, 1);
    if (k->scope != MS_FT_SCOPE_ENC_DEC) return f.gemm + f.attn;
    return ms_flops_step(f, k->method == MS_FT_FULL);
}

int ms_bench_finetune(int argc, char **argv)
{
    static const ms_cmd_help help = {
        "mrisam bench finetune [--model vit_test] [--threads 1,2] [--batch 4] [--steps 10] [options]",
        "Slices/s of one fine-tuning step (no prompts, num_cls output channels, Dice + CE, backward, AdamW on the\n"
        "trainable set) for each method x scope, ours vs the PyTorch reference step (tools/bench/finetune_ref.py:\n"
        "tests/reference/'s SAM with finetune-SAM's LoRA r=4 and adapters; encoder under torch.no_grad() for scope\n"
        "decoder) on the same model, batch and threads, in the same run; median of --steps after --warmup steps.\n"
        "The trainable parameter counts of both sides are printed and must agree (exit 1 when they do not).\n"
        "Beside slices/s: model-FLOP MFU (pretrain/flops.h, docs/PERFORMANCE.md §FLOP counting) against\n"
        "--peak-tflops (CUDA default: 989 bf16, 67 fp32; the CPU prints MFU only when it is given), peak device memory\n"
        "above the context (CUDA) and the time from process start to the end of the first step. On CUDA the PyTorch\n"
        "side is left out (tools/gpu/torch_accept.py is the GPU baseline).",
        "  mrisam bench finetune --threads 1,2 --steps 10\n"
        "  mrisam bench finetune --cases lora:encoder+decoder --threads 2 --list-trainable\n"
        "  mrisam bench finetune --model vit_b --device cuda --cases full:encoder+decoder --batch 32 --halve-on-oom"};
    const char *threads_s = "1,2", *python = "/usr/bin/python3", *script = NULL,
               *cases_s = "full:decoder,full:encoder+decoder,lora:decoder,lora:encoder+decoder,adapter:decoder,"
                          "adapter:encoder+decoder";
    bcfg b = {.model = "vit_test", .batch = 4, .steps = 10, .warmup = 2, .num_cls = 2, .seed = 1};
    int no_torch = 0, seed = 1, halve = 0, json = 0;
    const char *device = "cpu";
    double peak_given = 0;
    const ms_opt opts[] = {
        {"cases", MS_OPT_STR, &cases_s, "LIST", "method:scope pairs, comma-separated (all six)"},
        {"model", MS_OPT_STR, &b.model, "NAME", "SAM variant, at its native input size (vit_test, vit_t_test: 256; "
         "vit_t: MobileSAM's TinyViT at 1024)"},
        {"upstream", MS_OPT_STR, &b.upstream, "DIR", "a ChaoningZhang/MobileSAM checkout: vit_t's PyTorch side, "
         "method full only (default: $MOBILESAM_DIR)"},
        {"threads", MS_OPT_STR, &threads_s, "LIST", "thread counts for both sides (1,2)"},
        {"batch", MS_OPT_INT, &b.batch, "B", "slices per step (4)"},
        {"steps", MS_OPT_INT, &b.steps, "N", "timed steps; the median is reported (10)"},
        {"warmup", MS_OPT_INT, &b.warmup, "N", "untimed steps first (2)"},
        {"num-cls", MS_OPT_INT, &b.num_cls, "C", "classes incl. background (2)"},
        {"compat-finetune-sam", MS_OPT_FLAG, &b.compat, NULL, "finetune-SAM's trainable sets on both sides"},
        {"list-trainable", MS_OPT_FLAG, &b.list, NULL, "print every trainable tensor of both sides"},
        {"seed", MS_OPT_INT, &seed, "S", "initialisation and data seed (1)"},
        {"no-torch", MS_OPT_FLAG, &no_torch, NULL, "skip the PyTorch side"},
        {"python", MS_OPT_STR, &python, "PY", "interpreter with torch (/usr/bin/python3)"},
        {"device", MS_OPT_STR, &device, "cpu|cuda", "compute device of ours (cpu)"},
        MS_CLI_PRECISION_OPTION(&b.precision),
        {"recompute", MS_OPT_FLAG, &b.recompute, NULL, "recompute encoder blocks in the backward"},
        {"peak-tflops", MS_OPT_FLOAT, &peak_given, "X", "peak for MFU, TFLOP/s (CUDA: 989 bf16, 67 fp32)"},
        {"halve-on-oom", MS_OPT_FLAG, &halve, NULL, "out of device memory: retry at half the batch"},
        {"json", MS_OPT_FLAG, &json, NULL, "also one JSON line per row (tools/gpu/accept.sh)"},
        {"torch-script", MS_OPT_STR, &script, "PY", "finetune_ref.py (default: $MS_SOURCE_DIR or ./tools/bench)"},
        {0}};
    int prc = ms_cli_parse(&help, opts, argc, argv, NULL);
    if (prc) return prc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    b.seed = (uint64_t)seed;
    if (b.batch < 1 || b.batch > 256 || b.steps < 1 || b.steps > MAX_STEPS || b.warmup < 0 || b.num_cls < 2 ||
        b.num_cls > MS_FT_MAX_CLASSES) {
        fprintf(stderr, "mrisam bench finetune: bad --batch, --steps, --warmup or --num-cls\n");
        return MS_EXIT_USAGE;
    }
    ms_precision prec;
    if (ms_device_parse(device, &b.kind, &b.index) || (b.precision && ms_precision_parse(b.precision, &prec))) {
        fprintf(stderr, "mrisam bench finetune: %s\n", ms_errmsg());
        return MS_EXIT_USAGE;
    }
    no_torch |= b.kind == MS_DEV_CUDA;
    bcase cs[MAX_CASES];
    int n = 0;
    char cl[512];
    snprintf(cl, sizeof cl, "%s", cases_s);
    for (char *save = NULL, *c = strtok_r(cl, ",", &save); c; c = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(c, ':');
        if (!colon || n == MAX_CASES) {
            fprintf(stderr, "mrisam bench finetune: --cases: expected up to %d method:scope pairs, got '%s'\n",
                    MAX_CASES, c);
            return MS_EXIT_USAGE;
        }
        *colon = 0;
        memset(&cs[n], 0, sizeof cs[n]);
        if (ms_ft_method_parse(c, &cs[n].method) || ms_ft_scope_parse(colon + 1, &cs[n].scope))
            return ms_cli_report("bench finetune", MS_EINVAL);
        n++;
    }
    char spath[MS_PATH_MAX];
    if (!script) {
        if (default_script(spath)) {
            fprintf(stderr, "mrisam bench finetune: %s\n", ms_errmsg());
            return MS_EXIT_FAIL;
        }
        script = spath;
    }
    printf("mrisam bench finetune: %s, batch %d, %d classes, no prompts, Dice+CE, AdamW; median of %d steps after %d "
           "warm-up; trainable sets: %s\n", b.model, b.batch, b.num_cls, b.steps, b.warmup,
           b.compat ? "finetune-SAM's (--compat-finetune-sam)" : "mrisam's");
    printf("| method | scope | threads | trainable mrisam | trainable PyTorch | precision | batch | mrisam slices/s | MFU | "
           "peak GiB | first step s | PyTorch slices/s | speed-up |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    fflush(stdout);
    int fail = 0;
    char tl[128];
    snprintf(tl, sizeof tl, "%s", threads_s);
    for (char *save = NULL, *t = strtok_r(tl, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int th = atoi(t);
        for (int i = 0; i < n; i++) {
            cs[i].ours_s = cs[i].torch_s = NAN;
            cs[i].ours_n = cs[i].torch_n = -1;
        }
        /* PyTorch first: once our OpenMP pool exists its idle threads can steal the child's cores */
        if (!no_torch && run_torch(python, script, &b, th, cs, n))
            fprintf(stderr, "mrisam bench finetune: no result from %s %s\n", python, script);
        for (int i = 0; i < n; i++) {
            bcase *k = &cs[i];
            ms_status rc = time_ours(&b, th, b.batch, k);
            for (int bb = b.batch / 2; rc == MS_ENOMEM && halve && bb >= 1; bb /= 2) {
                fprintf(stderr, "mrisam bench finetune: batch %d: out of memory, trying %d\n", k->ours.batch, bb);
                rc = time_ours(&b, th, bb, k);
            }
            if (rc) {
                fprintf(stderr, "mrisam bench finetune: %s/%s: %s\n", ms_ft_method_name(k->method),
                        ms_ft_scope_name(k->scope), ms_errmsg());
                fail = 1;
            }
            int differ = k->ours_n >= 0 && k->torch_n >= 0 && k->ours_n != k->torch_n;
            char tn[48];
            if (k->torch_n >= 0) snprintf(tn, sizeof tn, "%lld (%d)%s", (long long)k->torch_n, k->torch_t,
                                          differ ? " DIFFERS" : "");
            else snprintf(tn, sizeof tn, "-");
            char ts[32] = "-", sx[32] = "-", cells[160] = "- | - | - | -";
            if (!isnan(k->torch_s)) {
                snprintf(ts, sizeof ts, "%.2f", b.batch / k->torch_s);
                snprintf(sx, sizeof sx, "%.2fx", k->torch_s / k->ours_s);
            }
            double fl = step_flops(&b, k), peak = fl > 0 ? ms_bench_peak_tflops(&k->ran, peak_given) : 0;
            if (!rc) ms_bench_cells(cells, sizeof cells, &k->ours, fl, peak, k->ran.kind == MS_DEV_CUDA);
            printf("| %s | %s | %d | %lld (%d) | %s | %s | %d | %s | %s | %s |\n", ms_ft_method_name(k->method),
                   ms_ft_scope_name(k->scope), th, (long long)k->ours_n, k->ours_t, tn,
                   ms_precision_name(k->ran.precision), k->ours.batch, cells, ts, sx);
            if (json && !rc) {
                char label[96];
                snprintf(label, sizeof label, "%s:%s@%s", ms_ft_method_name(k->method), ms_ft_scope_name(k->scope),
                         b.model);
                ms_bench_json("finetune", label, &k->ours, fl, peak, &k->ran);
            }
            fflush(stdout);
            if (differ) {
                fprintf(stderr, "mrisam bench finetune: %s/%s: the trainable sets differ (%lld vs %lld parameters; "
                                "--list-trainable shows both)\n", ms_ft_method_name(k->method),
                        ms_ft_scope_name(k->scope), (long long)k->ours_n, (long long)k->torch_n);
                fail = 1;
            }
        }
    }
    return fail;
}
