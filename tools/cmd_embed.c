/* tools/cmd_embed.c — `mrisam embed`: SAM's image embedding of one PNG or one store slice, as a float32 .npy of
 * shape (1, out_chans, S/16, S/16).
 *
 * Preprocessing (docs/MODEL.md §Preprocessing, docs/CLI.md §Preprocessing): resize the longest side to the model's
 * input size S with data/preprocess.c's bilinear resampler (PIL's triangle filter, antialiased when shrinking — close
 * to, but not bit-exact with, PIL's uint8 output that SAM's predictor feeds the model), SAM's pixel mean/std on 0..255
 * RGB (gray replicated), zero padding bottom/right after normalisation. --resize stretch / --norm medsam select
 * finetune-SAM's square stretch and [0,1] inputs. The variant (vit_b/l/h, vit_test, anything SAM-shaped; MobileSAM's
 * TinyViT, vit_t) comes from the checkpoint's shapes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "base/device.h"
#include "base/path.h"
#include "checkpoints/state_dict.h"
#include "cli.h"
#include "data/preprocess.h"
#include "data/store.h"
#include "data/store_norm.h"
#include "finetune/predict.h"
#include "image_io.h"
#include "pretrain/params.h"
#include "pretrain/sam_encoder.h"
#include "pretrain/tinyvit.h"

/* want: the intensity normalisation a fine-tuned model was trained on (NULL: the store's own). */
static ms_status read_store_slice(const char *path, int64_t key, const ms_norm_choice *want, const char *model,
                                  float **img, int *h, int *w)
{
    ms_store *s = NULL;
    ms_store_reader *r = NULL;
    ms_slice sl;
    *img = NULL;
    ms_status rc = ms_store_open(path, 4, &s);
    if (rc) goto leave;
    if (want && (rc = ms_store_norm_match(s, path, want, model, NULL))) goto leave;
    if (key < 0 || (uint64_t)key >= ms_store_n_slices(s)) {
        rc = ms_error(MS_ENOTFOUND, "%s: no slice %lld (the store has %llu)", path, (long long)key,
                      (unsigned long long)ms_store_n_slices(s));
        goto leave;
    }
    if ((rc = ms_store_reader_new(s, &r))) goto leave;
    if ((rc = ms_store_read(r, (uint64_t)key, &sl))) goto leave;
    *img = malloc((size_t)sl.height * sl.width * sizeof(float));
    if (!*img) { rc = ms_error(MS_ENOMEM, "embed: out of memory"); goto leave; }
    for (size_t i = 0; i < (size_t)sl.height * sl.width; i++) (*img)[i] = sl.pixels[i] * (1.0f / 65535.0f);
    *h = sl.height;
    *w = sl.width;
leave:
    if (r) ms_store_reader_free(r);
    if (s) ms_store_close(s);
    return rc;
}

/* The image encoder of a weight file sd (finetune-SAM's names already mapped to ours), alone, strictly: SAM's ViT
 * (*e = enc) or MobileSAM's TinyViT (*t = tv), under "image_encoder." in full SAM files, without it in encoder-only
 * exports. The configuration comes from the file's keys and shapes: a non-SAM file is named with the key it lacks;
 * unknown keys under the encoder's prefix (adapters, LoRA without their model) are refused. */
static ms_status load_encoder(ms_state_dict *sd, ms_params *ps, ms_sam_encoder *enc, ms_tinyvit *tv, ms_device *dev,
                              ms_sam_encoder **e, ms_tinyvit **t)
{
    const char *tiny = ms_sd_find(sd, "image_encoder.patch_embed.seq.0.c.weight") ? "image_encoder."
                       : ms_sd_find(sd, "patch_embed.seq.0.c.weight")             ? ""
                                                                                  : NULL;
    if (tiny) {
        ms_tinyvit_config tc;
        MS_TRY(ms_sam_tinyvit_config_from_sd(sd, tiny, &tc));
        MS_TRY(ms_tinyvit_init(tv, &tc, ps, tiny));
        ms_tinyvit_peft tp; /* finetune-SAM's LoRA / adapters: its model, as ms_sam_load_sd builds it */
        if (ms_sam_tinyvit_peft_from_sd(sd, tiny, &tp)) MS_TRY(ms_tinyvit_add_peft(tv, &tp));
        for (int i = 0; i < ps->n; i++) ps->p[i].optional = 0;
        MS_TRY(ms_params_alloc(ps, dev));
        MS_TRY(ms_tinyvit_load(tv, sd)); /* BatchNorms' num_batches_tracked accepted */
        *t = tv;
        return MS_OK;
    }
    /* Full SAM files prefix the encoder with image_encoder.; encoder-only exports do not. */
    const char *prefix = ms_sd_find(sd, "image_encoder.pos_embed") ? "image_encoder." : "";
    ms_sam_enc_config cfg;
    MS_TRY(ms_sam_enc_config_from_sd(sd, prefix, &cfg));
    /* finetune-SAM's LoRA / adapters: its model, as ms_sam_load_sd builds it (finetune/sam.h) */
    ms_sam_enc_peft ep;
    ms_sam_dec_peft dp;
    cfg.finetune_sam_block = ms_sam_peft_from_sd(sd, &ep, &dp);
    MS_TRY(ms_sam_encoder_init(enc, &cfg, ps, prefix));
    if (ep.lora_rank || ep.adapter_blocks) MS_TRY(ms_sam_encoder_add_peft(enc, &ep));
    for (int i = 0; i < ps->n; i++) ps->p[i].optional = 0;
    MS_TRY(ms_params_alloc(ps, dev));
    MS_TRY(ms_params_load(ps, sd, prefix));
    *e = enc;
    return MS_OK;
}

static int run(int argc, char **argv)
{
    static const ms_cmd_help help = {
        "mrisam embed --ckpt F|RUN (--image IMG.png | --store S --key K) -o EMB.npy [options]",
        "Computes SAM's image embedding: resize the longest side to the model's input size, SAM's pixel mean/std "
        "(gray replicated to RGB), zero pad bottom/right, image encoder. Writes float32 (1, 256, S/16, S/16). The "
        "model variant is read from the checkpoint's shapes: SAM's vit_b/l/h (or any SAM-shaped encoder) or "
        "MobileSAM's vit_t (mobile_sam.pt, TinyViT at 1024). The bilinear resize is PIL-style (antialiased when "
        "shrinking) but not bit-exact with PIL's uint8 output. --ckpt also takes a pretraining run (RUN/, "
        "RUN/ckpt/step_N) and a fine-tuning one (RUN/, RUN/best, RUN/ckpt/step_N; its preprocessing unless --resize "
        "/ --norm say otherwise; a store slice is read with the intensity normalisation it was trained on).",
        "mrisam embed --ckpt sam_vit_b_01ec64.pth --image slice.png -o emb.npy --threads 8"};
    const char *ckpt = NULL, *image = NULL, *store = NULL, *out = NULL, *device = "cpu", *resize = NULL,
               *norm = NULL, *precision = NULL;
    int64_t key = -1;
    int threads = 0;
    const ms_opt opts[] = {
        {"ckpt", MS_OPT_STR, &ckpt, "F|RUN", "SAM-layout weights (.pth, .safetensors) or a run directory"},
        {"image", MS_OPT_STR, &image, "IMG.png", "input image (8/16-bit gray or RGB PNG)"},
        {"store", MS_OPT_STR, &store, "S", "slice store (with --key)"},
        {"key", MS_OPT_I64, &key, "K", "slice key in the store"},
        {"o", MS_OPT_STR, &out, "EMB.npy", "output embedding"},
        {"resize", MS_OPT_STR, &resize, "longest|stretch", "resize mode (default longest, SAM's)"},
        {"norm", MS_OPT_STR, &norm, "sam|medsam", "input normalisation (default sam)"},
        {"threads", MS_OPT_INT, &threads, "N", "CPU threads (default: all cores)"},
        {"device", MS_OPT_STR, &device, "cpu|cuda", "compute device (default cpu)"},
        MS_CLI_PRECISION_OPTION(&precision),
        {0}};
    int prc = ms_cli_parse(&help, opts, argc, argv, NULL);
    if (prc) return prc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    if (!ckpt || !out || (!image == !store) || (store && key < 0)) {
        fprintf(stderr, "mrisam embed: needs --ckpt, -o and one of --image or --store with --key (see --help)\n");
        return MS_EXIT_USAGE;
    }

    ms_state_dict sd;
    ms_params ps;
    ms_sam_encoder enc;
    ms_tinyvit tv;
    ms_predict_model pm;
    ms_device dev;
    ms_image img = {0};
    float *img01 = NULL, *x = NULL, *emb = NULL;
    int dev_ok = 0;
    ms_sd_init(&sd);
    ms_params_init(&ps);
    memset(&enc, 0, sizeof enc);
    memset(&tv, 0, sizeof tv);
    memset(&pm, 0, sizeof pm);
    ms_status rc;
    ms_device_kind kind;
    int index;
    double t0 = ms_now_s();
    if ((rc = ms_device_parse(device, &kind, &index))) goto leave;
    if ((rc = ms_device_init_at(&dev, kind, index, threads))) goto leave;
    dev_ok = 1;
    if ((rc = ms_cli_set_precision(&dev, precision))) goto leave;
    ms_ckpt_kind ck;
    char ckdir[MS_PATH_MAX], what[160];
    /* one of: SAM's ViT alone (e), TinyViT alone (t), a run's whole model (sm) */
    ms_sam_encoder *e = NULL;
    ms_tinyvit *t = NULL;
    ms_sam *sm = NULL;
    int S = 0, g = 0, out_chans = 0;
    ms_prep_config pc;
    if ((rc = ms_ckpt_resolve(ckpt, &ck, ckdir))) goto leave;
    if (ck == MS_CKPT_WEIGHTS) { /* a weight file: SAM's, MobileSAM's, or an encoder-only export */
        if ((rc = ms_sd_load(ckpt, &sd))) goto leave;
        int fsam;
        if ((rc = ms_sam_sd_from_finetune_sam(&sd, &fsam))) { ms_error_prefix("%s", ckpt); goto leave; }
        if ((rc = load_encoder(&sd, &ps, &enc, &tv, &dev, &e, &t))) { ms_error_prefix("%s", ckpt); goto leave; }
        ms_sd_free(&sd);
        if (t) {
            S = t->cfg.img_size, g = ms_tinyvit_grid(&t->cfg, 4), out_chans = t->cfg.out_chans;
            snprintf(what, sizeof what, "TinyViT dims %d/%d/%d/%d", t->cfg.dims[0], t->cfg.dims[1], t->cfg.dims[2],
                     t->cfg.dims[3]);
        }
    } else { /* a run: the model every --ckpt loads (LoRA / adapters inside its encoder); the head does not matter */
        if ((rc = ms_predict_model_load_ex(&pm, ckpt, NULL, 1, &dev))) goto leave;
        sm = pm.m;
        S = sm->img_size, g = sm->emb_h, out_chans = 256;
        if (sm->cfg.tinyvit) snprintf(what, sizeof what, "TinyViT (%s)", ms_sam_config_model_name(&sm->cfg));
        else e = &sm->enc;
    }
    if (e) {
        S = ms_sam_enc_run_size(e), g = S / e->cfg.patch, out_chans = e->cfg.out_chans;
        snprintf(what, sizeof what, "encoder D %d depth %d", e->cfg.embed_dim, e->cfg.depth);
    }
    if (sm) pc = pm.pc;
    else ms_prep_config_default(&pc, S);
    if (sm) rc = ms_sam_image_reserve(sm, 1, 0);
    else rc = t ? ms_tinyvit_reserve(t, 1, 0) : ms_sam_encoder_reserve(e, &dev, 1, 0);
    if (rc) goto leave;

    int h = 0, w = 0, c = 0;
    if (image) {
        if ((rc = ms_png_read_image(image, &img))) goto leave;
        h = img.h; w = img.w; c = img.c;
        img01 = img.data;
    } else {
        const ms_norm_choice want = {.given = 1, .norm = pm.norm, .p_lo = pm.p_lo, .p_hi = pm.p_hi};
        if ((rc = read_store_slice(store, key, pm.has_prep ? &want : NULL, ckpt, &img01, &h, &w))) goto leave;
        c = 1;
    }
    pc.channels = 3;
    if ((rc = ms_prep_parse(&pc, resize, norm))) goto leave;
    size_t nx = (size_t)3 * S * S, ne = (size_t)out_chans * g * g;
    float *hx = malloc(nx * sizeof(float)), *he = malloc(ne * sizeof(float));
    if (!hx || !he) { free(hx); free(he); rc = ms_error(MS_ENOMEM, "embed: out of memory"); goto leave; }
    rc = ms_prep_image_hwc(&pc, img01, h, w, c, hx);
    if (!rc) rc = ms_dev_alloc(&dev, nx * sizeof(float), (void **)&x);
    if (!rc) rc = ms_dev_alloc(&dev, ne * sizeof(float), (void **)&emb);
    if (!rc) rc = ms_dev_from_host(&dev, x, hx, nx * sizeof(float));
    double t1 = ms_now_s();
    if (!rc) rc = sm ? ms_sam_image_forward(sm, x, 1, emb) : t ? ms_tinyvit_forward(t, x, 1, emb)
                                                              : ms_sam_encoder_forward(e, x, 1, emb);
    if (!rc) rc = ms_dev_to_host(&dev, he, emb, ne * sizeof(float));
    double t2 = ms_now_s();
    int64_t shape[4] = {1, out_chans, g, g};
    if (!rc) rc = ms_npy_write_f32(out, he, shape, 4);
    char dd[48];
    if (!rc)
        fprintf(stderr, "embed: %s → %s (1, %d, %d, %d); %s at %d, %s: %.2f s (total %.2f s)\n", image ? image : store,
                out, out_chans, g, g, what, S, ms_cli_device_desc(&dev, dd, sizeof dd), t2 - t1, t2 - t0);
    free(hx);
    free(he);
leave:
    if (image) ms_image_free(&img);
    else free(img01);
    if (dev_ok) {
        if (x) ms_dev_free(&dev, x);
        if (emb) ms_dev_free(&dev, emb);
    }
    ms_sam_encoder_free(&enc);
    ms_tinyvit_free(&tv);
    ms_predict_model_free(&pm);
    ms_params_free(&ps);
    ms_sd_free(&sd);
    if (dev_ok) ms_device_free(&dev);
    return ms_cli_report("embed", rc);
}

const ms_command ms_cmd_embed = {"embed", "SAM image embedding of a PNG or a store slice (.npy)", run};
