/* tools/bench_mae.c — `mrisam bench mae`: images/s of one MAE training step (mask, encoder on the visible tokens,
 * decoder, norm-pix loss, backward, AdamW on encoder and decoder) for vit_test and vit_b at a given input size,
 * beside the PyTorch reference step (tools/bench/bench_mae_torch.py: tests/reference/mae_ref.py, SAM's dense encoder
 * with attention masks + MAE's decoder) on the same shapes and thread counts, in the same run. vit_t / vit_t_test
 * (MobileSAM's TinyViT: dense encoder on the zeroed-patch input, BatchNorm in training mode, docs/MAE.md §TinyViT)
 * run at their own input size only and have no PyTorch side. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/path.h"
#include "base/rng.h"
#include "bench.h"
#include "cli.h"
#include "finetune/sam.h"
#include "pretrain/mae.h"
#include "pretrain/flops.h"
#include "pretrain/optimizer.h"

typedef struct bcfg {
    int input, batch, steps, dec_dim, dec_depth, dec_heads;
    double ratio;
    ms_device_kind kind;
    int index;
    const char *precision; /* NULL: the device kind's default */
    int recompute;         /* --recompute: per-block recomputation in the encoder's backward */
} bcfg;

/* One configuration of ours: mean seconds per step after a warm-up step, the time to the end of the first step,
 * device memory above the context. *dev_out: the device as it ran (kind, precision) for the report. */
static ms_status time_ours(const char *model, int threads, const bcfg *b, int batch, ms_bench_result *res,
                           ms_device *dev_out)
{
    ms_device dev = {0};
    ms_sam sam;
    memset(&sam, 0, sizeof sam);
    ms_params dps;
    ms_params_init(&dps);
    ms_mae mae;
    memset(&mae, 0, sizeof mae);
    ms_optimizer oe = {0}, od = {0};
    float *x = NULL, *xd = NULL, *gray = NULL;
    uint64_t keys[256];
    char name[32];
    size_t base = 0, total = 0;
    res->batch = batch;
    ms_status rc = ms_device_init_at(&dev, b->kind, b->index, threads);
    if (rc) return rc;
    rc = ms_cli_set_precision(&dev, b->precision);
    *dev_out = dev;
    if (!rc && dev.kind == MS_DEV_CUDA) rc = ms_dev_mem_info(&dev, &base, &total); /* the context */
    if (!rc) rc = ms_sam_build(&sam, NULL, model, 1, &dev, name, sizeof name);
    int tiny = !rc && sam.cfg.tinyvit;
    if (tiny && b->input != sam.tv.cfg.img_size)
        rc = ms_error(MS_EINVAL, "%s runs at %d only (--input-size)", model, sam.tv.cfg.img_size);
    else if (!rc && !tiny) rc = ms_sam_encoder_set_input_size(&sam.enc, b->input);
    if (rc) goto leave;
    ms_params_set_trainable(&sam.ps, "", 0);
    ms_params_set_trainable(&sam.ps, "image_encoder.", 1);
    if (tiny) { /* what the MAE run trains (pretrain/mae_run.h) */
        ms_params_set_trainable(&sam.ps, "image_encoder.neck.", 0);
        ms_params_set_trainable(&sam.ps, "image_encoder.head.", 0);
        ms_params_set_trainable(&sam.ps, "image_encoder.norm_head.", 0);
        sam.tv.bn_train = 1;
    }
    ms_mae_config mc = {.mask_ratio = (float)b->ratio, .sampling = MS_MASK_STRATIFIED, .norm_pix = 1,
                        .fg_threshold = 0.05f,
                        .dec = {.dim = b->dec_dim, .depth = b->dec_depth, .n_heads = b->dec_heads, .target_ch = 1}};
    if (!tiny) { /* reserved as `mrisam pretrain` does (pretrain/mae_run.c): visible rows only */
        ms_sam_encoder_set_recompute(&sam.enc, b->recompute);
        int g = ms_sam_enc_run_size(&sam.enc) / sam.enc.cfg.patch;
        ms_sam_encoder_set_subset_only(&sam.enc, ms_mae_mask_keep_target(g, (float)b->ratio));
    }
    if ((rc = ms_params_alloc_grads(&sam.ps)) ||
        (rc = tiny ? ms_tinyvit_reserve(&sam.tv, batch, 1) : ms_sam_encoder_reserve(&sam.enc, &dev, batch, 1)) ||
        (rc = tiny ? ms_mae_init_tinyvit(&mae, &sam.tv, &mc, &dps) : ms_mae_init(&mae, &sam.enc, &mc, &dps)) ||
        (rc = ms_params_alloc(&dps, &dev)) ||
        (rc = ms_params_alloc_grads(&dps)) || (rc = ms_mae_decoder_init_weights(&mae.dec, 1)) ||
        (rc = ms_mae_reserve(&mae, &dev, batch)) ||
        (rc = ms_optimizer_init(&oe, &sam.ps, 0.9f, 0.95f, 1e-8f, 0.05f)) ||
        (rc = ms_optimizer_init(&od, &dps, 0.9f, 0.95f, 1e-8f, 0.05f)))
        goto leave;
    size_t S = (size_t)b->input, nx = (size_t)batch * 3 * S * S;
    x = malloc(nx * sizeof(float));
    gray = malloc((size_t)batch * S * S * sizeof(float));
    if (!x || !gray) { rc = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
    ms_rng r;
    ms_rng_init(&r, 7, 1);
    for (size_t i = 0; i < nx; i++) x[i] = ms_rng_normal(&r);
    for (size_t i = 0; i < (size_t)batch * S * S; i++) gray[i] = ms_rng_uniform(&r);
    if ((rc = ms_dev_alloc(&dev, nx * sizeof(float), (void **)&xd)) ||
        (rc = ms_dev_from_host(&dev, xd, x, nx * sizeof(float))))
        goto leave;
    double t0 = 0;
    for (int s = 0; s <= b->steps && !rc; s++) { /* step 0 is the warm-up */
        if (s == 1) t0 = ms_now_s();
        for (int i = 0; i < batch; i++) keys[i] = (uint64_t)s * 1000 + i;
        ms_mae_loss l;
        rc = ms_mae_forward(&mae, xd, gray, batch, 1, keys, &l);
        if (!rc) rc = ms_mae_backward(&mae, 1.f, 0);
        if (!rc) rc = ms_optimizer_step(&oe, 1e-4f, NULL);
        if (!rc) rc = ms_optimizer_step(&od, 1e-4f, NULL);
        if (!rc) rc = ms_params_zero_grads(&sam.ps);
        if (!rc) rc = ms_params_zero_grads(&dps);
        if (!rc) rc = ms_dev_sync(&dev);
        if (!rc && s == 0) res->first_s = ms_bench_process_age();
    }
    res->s_per_step = (ms_now_s() - t0) / b->steps;
    res->peak_bytes = ms_bench_mem_above(&dev, base);
leave:
    free(x);
    free(gray);
    if (xd) ms_dev_free(&dev, xd);
    ms_optimizer_free(&oe);
    ms_optimizer_free(&od);
    ms_mae_free(&mae);
    ms_params_free(&dps);
    ms_sam_free(&sam);
    ms_device_free(&dev);
    return rc;
}

/* Model FLOPs of one MAE step per image (pretrain/flops.h); 0 for TinyViT (not counted). */
static double step_flops(const char *model, const bcfg *b)
{
    ms_sam_enc_config ec;
    if (ms_sam_enc_config_named(model, &ec)) return 0;
    ms_mae_dec_config dc = {.enc_dim = ec.embed_dim, .dim = b->dec_dim, .depth = b->dec_depth, .n_heads = b->dec_heads,
                            .grid = b->input / ec.patch, .patch = ec.patch, .target_ch = 1};
    return ms_flops_step(ms_flops_add(ms_flops_sam_encoder(&ec, b->input, b->ratio, 0),
                                      ms_flops_mae_decoder(&dc, b->ratio)), 1);
}

int ms_bench_mae(int argc, char **argv)
{
    static const ms_cmd_help help = {
        "mrisam bench mae [--models vit_test,vit_b] [--input-size 256] [--threads 1,2] [options]",
        "Images/s of one MAE training step (window-stratified mask 0.75, SAM's encoder on the visible tokens, MAE\n"
        "decoder 512x8x16, norm-pix loss, backward, AdamW), ours vs the PyTorch reference step\n"
        "(tools/bench/bench_mae_torch.py, CPU fp32 only) on the same shapes and threads, in the same run. vit_b runs\n"
        "at the input size from its 1024 masters (interpolated position tables); the PyTorch side builds vit_b\n"
        "natively at that size. vit_t (1024) and vit_t_test (256), MobileSAM's TinyViT, run dense at their own size,\n"
        "without a PyTorch side. Beside img/s: model-FLOP MFU (pretrain/flops.h, docs/PERFORMANCE.md §FLOP counting)\n"
        "against --peak-tflops (CUDA default: 989 bf16, 67 fp32; the CPU prints MFU only when it is given), peak\n"
        "device memory above the context (CUDA) and the time from process start to the end of the first step.\n"
        "--halve-on-oom retries a batch that runs out of device memory at half the size.",
        "  mrisam bench mae --models vit_test,vit_b --input-size 256 --threads 1,2\n"
        "  mrisam bench mae --models vit_b --input-size 1024 --device cuda --batch 32 --halve-on-oom --json"};
    const char *models = "vit_test,vit_b", *threads_s = "1,2", *python = "/usr/bin/python3", *device = "cpu";
    bcfg b = {.input = 256, .batch = 4, .steps = 3, .dec_dim = 512, .dec_depth = 8, .dec_heads = 16, .ratio = 0.75};
    int no_torch = 0, halve = 0, json = 0;
    double peak_given = 0;
    const ms_opt opts[] = {{"models", MS_OPT_STR, &models, "LIST", "models, comma-separated (vit_test,vit_b)"},
                           {"input-size", MS_OPT_INT, &b.input, "N", "input size (256)"},
                           {"threads", MS_OPT_STR, &threads_s, "LIST", "thread counts (1,2)"},
                           {"batch", MS_OPT_INT, &b.batch, "B", "images per step (4)"},
                           {"steps", MS_OPT_INT, &b.steps, "N", "timed steps after one warm-up (3)"},
                           {"mask-ratio", MS_OPT_FLOAT, &b.ratio, "R", "share of hidden patches (0.75)"},
                           {"decoder-dim", MS_OPT_INT, &b.dec_dim, "N", "MAE decoder width (512)"},
                           {"decoder-depth", MS_OPT_INT, &b.dec_depth, "N", "MAE decoder blocks (8)"},
                           {"decoder-heads", MS_OPT_INT, &b.dec_heads, "N", "MAE decoder heads (16)"},
                           {"device", MS_OPT_STR, &device, "cpu|cuda", "compute device (cpu)"},
                           MS_CLI_PRECISION_OPTION(&b.precision),
                           {"recompute", MS_OPT_FLAG, &b.recompute, NULL, "recompute encoder blocks in the backward"},
                           {"peak-tflops", MS_OPT_FLOAT, &peak_given, "X", "peak for MFU, TFLOP/s (CUDA: 989 bf16, 67 fp32)"},
                           {"halve-on-oom", MS_OPT_FLAG, &halve, NULL, "out of device memory: retry at half the batch"},
                           {"json", MS_OPT_FLAG, &json, NULL, "also one JSON line per row (tools/gpu/accept.sh)"},
                           {"no-torch", MS_OPT_FLAG, &no_torch, NULL, "skip the PyTorch side"},
                           {"python", MS_OPT_STR, &python, "PY", "interpreter with torch (/usr/bin/python3)"},
                           {0}};
    int prc = ms_cli_parse(&help, opts, argc, argv, NULL);
    if (prc) return prc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    if (b.batch < 1 || b.batch > 256 || b.steps < 1 || b.ratio < 0 || b.ratio >= 1) {
        fprintf(stderr, "mrisam bench mae: bad --batch/--steps/--mask-ratio\n");
        return MS_EXIT_USAGE;
    }
    ms_precision prec;
    if (ms_device_parse(device, &b.kind, &b.index) || (b.precision && ms_precision_parse(b.precision, &prec))) {
        fprintf(stderr, "mrisam bench mae: %s\n", ms_errmsg());
        return MS_EXIT_USAGE;
    }
    no_torch |= b.kind == MS_DEV_CUDA; /* the reference step is the CPU's fp32 one */
    const char *src = getenv("MS_SOURCE_DIR");
    char script[MS_PATH_MAX];
    if (ms_path_join(script, src ? src : ".", "tools/bench/bench_mae_torch.py")) {
        fprintf(stderr, "mrisam bench mae: %s\n", ms_errmsg());
        return MS_EXIT_FAIL;
    }
    printf("mrisam bench mae: one MAE step (fwd+bwd+AdamW), input %d, batch %d, mask %.2f, decoder %dx%dx%d, "
           "mean of %d steps after a warm-up, %s\n", b.input, b.batch, b.ratio, b.dec_dim, b.dec_depth, b.dec_heads,
           b.steps, device);
    printf("| model | input | threads | precision | batch | mrisam img/s | MFU | peak GiB | first step s | "
           "PyTorch img/s | speed-up |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    char mlist[256];
    snprintf(mlist, sizeof mlist, "%s", models);
    int fail = 0;
    for (char *m = strtok(mlist, ","); m; m = strtok(NULL, ",")) {
        char tl[128];
        snprintf(tl, sizeof tl, "%s", threads_s);
        char *save = NULL;
        for (char *t = strtok_r(tl, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            int th = atoi(t);
            double theirs = NAN;
            ms_bench_result res = {0};
            ms_device ran = {0};
            ms_status rc = time_ours(m, th, &b, b.batch, &res, &ran);
            for (int bb = b.batch / 2; rc == MS_ENOMEM && halve && bb >= 1; bb /= 2) {
                fprintf(stderr, "mrisam bench mae: %s batch %d: out of memory, trying %d\n", m, res.batch, bb);
                rc = time_ours(m, th, &b, bb, &res, &ran);
            }
            if (rc) { fprintf(stderr, "mrisam bench mae: %s: %s\n", m, ms_errmsg()); fail = 1; continue; }
            if (!no_torch && strcmp(m, "vit_t") && strcmp(m, "vit_t_test")) { /* no PyTorch side for TinyViT */
                char cmd[8192];
                snprintf(cmd, sizeof cmd,
                         "'%s' '%s' --model %s --input-size %d --batch %d --steps %d --threads %d --decoder-dim %d "
                         "--decoder-depth %d --decoder-heads %d --mask-ratio %g",
                         python, script, m, b.input, res.batch, b.steps, th, b.dec_dim, b.dec_depth, b.dec_heads,
                         b.ratio);
                FILE *f = popen(cmd, "r");
                char line[1024];
                while (f && fgets(line, sizeof line, f)) {
                    char *k = strstr(line, "\"s_per_step\":");
                    if (k) theirs = atof(k + 13);
                }
                if (f) pclose(f);
            }
            double fl = step_flops(m, &b), peak = fl > 0 ? ms_bench_peak_tflops(&ran, peak_given) : 0;
            char cells[160], tc[64] = "- | -";
            ms_bench_cells(cells, sizeof cells, &res, fl, peak, ran.kind == MS_DEV_CUDA);
            if (!isnan(theirs)) /* no PyTorch side (--no-torch, CUDA, TinyViT): "-" */
                snprintf(tc, sizeof tc, "%.3g | %.2fx", res.batch / theirs, theirs / res.s_per_step);
            printf("| %s | %d | %d | %s | %d | %s | %s |\n", m, b.input, th, ms_precision_name(ran.precision),
                   res.batch, cells, tc);
            if (json) {
                char label[64];
                snprintf(label, sizeof label, "%s@%d", m, b.input);
                ms_bench_json("mae", label, &res, fl, peak, &ran);
            }
            fflush(stdout);
        }
    }
    return fail;
}
