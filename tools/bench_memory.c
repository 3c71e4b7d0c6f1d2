/* tools/bench_memory.c — `mrisam bench memory`: the largest batch of each model that fits a device of a given size,
 * for the MAE step and full fine-tuning, with and without --recompute (docs/PERFORMANCE.md §Memory). Count only:
 * the arenas are planned with the same code the runs use (ms_mae_largest_batch, ms_ft_largest_batch) and nothing
 * beyond the parameter registry is allocated, so vit_h's table comes out on a laptop. */
#include <stdio.h>
#include <string.h>

#include "base/device.h"
#include "bench.h"
#include "cli.h"
#include "finetune/ft_model.h"
#include "pretrain/mae.h"
#include "pretrain/mae_mask.h"
#include "pretrain/sam_encoder.h"

typedef struct mem_cfg {
    double budget, allowance; /* bytes */
    double ratio;
    int dec_dim, dec_depth, dec_heads;
} mem_cfg;

/* MAE: the encoder trains without its neck (as pretrain does), the decoder is reserved for the visible rows. */
static ms_status mae_row(const char *name, const mem_cfg *mc, ms_device *dev, int bm[2], size_t at[2], size_t *state)
{
    (void)dev;
    ms_sam_enc_config cfg;
    ms_params eps, dps;
    ms_sam_encoder enc;
    ms_mae mae;
    int have_enc = 0, have_mae = 0;
    ms_params_init(&eps);
    ms_params_init(&dps);
    ms_mae_config c = {.mask_ratio = (float)mc->ratio, .sampling = MS_MASK_STRATIFIED, .norm_pix = 1,
                       .fg_threshold = 0.05f,
                       .dec = {.dim = mc->dec_dim, .depth = mc->dec_depth, .n_heads = mc->dec_heads, .target_ch = 1}};
    size_t budget = (size_t)(mc->budget - mc->allowance);
    ms_status rc = ms_sam_enc_config_named(name, &cfg);
    if (!rc) rc = ms_sam_encoder_init(&enc, &cfg, &eps, "image_encoder.");
    have_enc = !rc;
    if (!rc) {
        ms_params_set_trainable(&eps, "", 1);
        ms_params_set_trainable(&eps, "image_encoder.neck.", 0);
        rc = ms_mae_init(&mae, &enc, &c, &dps);
        have_mae = !rc;
    }
    if (!rc) {
        ms_params_set_trainable(&dps, "", 1);
        ms_sam_encoder_set_subset_only(&enc, ms_mae_mask_keep_target(mae.grid, c.mask_ratio));
    }
    for (int rec = 0; rec < 2 && !rc; rec++) {
        bm[rec] = 0;
        at[rec] = 0;
        rc = ms_mae_largest_batch(&mae, &dps, rec, budget, &bm[rec]);
        if (!rc && bm[rec]) rc = ms_mae_step_bytes(&mae, &dps, bm[rec], rec, &at[rec]);
    }
    *state = ms_params_train_bytes(&eps) + ms_params_train_bytes(&dps);
    if (have_mae) ms_mae_decoder_free(&mae.dec);
    if (have_enc) ms_sam_encoder_free(&enc);
    ms_params_free(&dps);
    ms_params_free(&eps);
    return rc;
}

/* Full fine-tuning, every tensor trainable, one class (the mask decoder's per-prompt memory is not counted). */
static ms_status ft_row(const char *name, const mem_cfg *mc, ms_device *dev, int bf[2], size_t af[2], size_t *state)
{
    ms_sam_config sc;
    ms_sam s;
    size_t budget = (size_t)(mc->budget - mc->allowance);
    ms_status rc = ms_sam_config_named(name, 2, &sc);
    if (!rc && sc.tinyvit) rc = ms_error(MS_EUNSUPPORTED, "bench memory: %s: only SAM's ViT encoders", name);
    if (rc) return rc;
    MS_TRY(ms_sam_register_at(&s, &sc, 0, dev));
    ms_params_set_trainable(&s.ps, "", 1);
    for (int rec = 0; rec < 2 && !rc; rec++) {
        bf[rec] = 0;
        af[rec] = 0;
        rc = ms_ft_largest_batch(&s, 1, rec, budget, &bf[rec]);
        if (!rc && bf[rec]) rc = ms_ft_step_bytes(&s, 1, bf[rec], rec, &af[rec]);
    }
    *state = ms_params_train_bytes(&s.ps);
    ms_sam_free(&s);
    return rc;
}

int ms_bench_memory(int argc, char **argv)
{
    static const ms_cmd_help help = {
        "mrisam bench memory [options]",
        "The largest batch per model within a device's memory, MAE step and full fine-tuning, with and without\n"
        "--recompute: fp32 activations, parameters, gradients and AdamW moments, input 1024. Count only (the runs'\n"
        "own arena plans; nothing is allocated). Not counted: the CUDA context and library workspaces (--allowance-gb),\n"
        "the mask decoder's per-prompt buffers in fine-tuning, the input batch.",
        "  mrisam bench memory\n"
        "  mrisam bench memory --models vit_b --budget-gb 141 --mask-ratio 0.5"};
    const char *models = "vit_b,vit_l,vit_h";
    double budget_gb = 80, allowance_gb = 4;
    mem_cfg mc = {.ratio = 0.75, .dec_dim = 512, .dec_depth = 8, .dec_heads = 16};
    const ms_opt opts[] = {{"models", MS_OPT_STR, &models, "LIST", "models, comma-separated (vit_b,vit_l,vit_h)"},
                           {"budget-gb", MS_OPT_FLOAT, &budget_gb, "X", "device memory, 1e9 bytes (80)"},
                           {"allowance-gb", MS_OPT_FLOAT, &allowance_gb, "X", "kept free for context, workspaces (4)"},
                           {"mask-ratio", MS_OPT_FLOAT, &mc.ratio, "R", "MAE share of hidden patches (0.75)"},
                           {"decoder-dim", MS_OPT_INT, &mc.dec_dim, "N", "MAE decoder width (512)"},
                           {"decoder-depth", MS_OPT_INT, &mc.dec_depth, "N", "MAE decoder blocks (8)"},
                           {"decoder-heads", MS_OPT_INT, &mc.dec_heads, "N", "MAE decoder heads (16)"},
                           {0}};
    int prc = ms_cli_parse(&help, opts, argc, argv, NULL);
    if (prc) return prc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    if (budget_gb <= allowance_gb || allowance_gb < 0 || mc.ratio < 0 || mc.ratio >= 1) {
        fprintf(stderr, "mrisam bench memory: need --budget-gb > --allowance-gb >= 0 and 0 <= --mask-ratio < 1\n");
        return MS_EXIT_USAGE;
    }
    mc.budget = budget_gb * 1e9;
    mc.allowance = allowance_gb * 1e9;
    ms_device dev;
    if (ms_device_init(&dev, MS_DEV_CPU, 1)) {
        fprintf(stderr, "mrisam bench memory: %s\n", ms_errmsg());
        return MS_EXIT_FAIL;
    }
    printf("largest batch within %.0f GB less %.0f GB: input 1024, fp32, MAE mask %.2f decoder %dx%dx%d\n", budget_gb,
           allowance_gb, mc.ratio, mc.dec_dim, mc.dec_depth, mc.dec_heads);
    printf("| model | step | batch | GB at batch | batch, --recompute | GB at batch, --recompute | "
           "params+grads+AdamW GB |\n|---|---|---|---|---|---|---|\n");
    int ret = MS_EXIT_OK;
    char list[256];
    snprintf(list, sizeof list, "%s", models);
    for (char *save = NULL, *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        int b[2];
        size_t at[2], state;
        ms_status rc = mae_row(name, &mc, &dev, b, at, &state);
        if (!rc)
            printf("| %s | MAE | %d | %.2f | %d | %.2f | %.2f |\n", name, b[0], at[0] / 1e9, b[1], at[1] / 1e9,
                   state / 1e9);
        if (!rc) rc = ft_row(name, &mc, &dev, b, at, &state);
        if (!rc)
            printf("| %s | full fine-tuning | %d | %.2f | %d | %.2f | %.2f |\n", name, b[0], at[0] / 1e9, b[1],
                   at[1] / 1e9, state / 1e9);
        if (rc) {
            fprintf(stderr, "mrisam bench memory: %s\n", ms_errmsg());
            ret = MS_EXIT_FAIL;
            break;
        }
    }
    ms_device_free(&dev);
    return ret;
}
