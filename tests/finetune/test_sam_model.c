/* tests/finetune/test_sam_model.c — the whole model (finetune/sam.h): loading, strict key checking, export, and one
 * end-to-end forward + backward (image → encoder → prompts → decoder → loss → every gradient, the input image's
 * included) against tests/finetune/golden/model_vit_test.pth (tests/reference/sam_ref.py golden).
 *
 * Key checks: a state dict written by ms_sam_to_sd holds SAM's 202 vit_test keys in SAM's order (image_encoder,
 * prompt_encoder, mask_decoder) and loads back bit-exactly, also through a .pth file (which PyTorch's strict
 * load_state_dict into tests/reference/sam_ref.py's Sam accepts, when torch is installed); the variant (encoder shape,
 * num_cls from mask_tokens, decoder depth) is detected; one missing + one unknown + one mis-shaped key give exactly
 * "3 key problem(s)" and no model. Fresh seed: the weights of those round trips.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "finetune/sam.h"
#include "ops.h"
#include "test_sam_decoder_golden.h"

static void fill(ms_sam *m, uint64_t seed)
{
    for (int i = 0; i < m->ps.n; i++) {
        const ms_param *p = &m->ps.p[i];
        decoder_weight(ms_params_data(&m->ps, i), p->name, p->shape, p->ndim, seed);
    }
}

static int same_values(const ms_sam *a, const ms_sam *b)
{
    if (a->ps.n != b->ps.n) return 0;
    for (int i = 0; i < a->ps.n; i++) {
        if (strcmp(a->ps.p[i].name, b->ps.p[i].name) || a->ps.p[i].numel != b->ps.p[i].numel) return 0;
        if (memcmp(ms_params_data(&a->ps, i), ms_params_data(&b->ps, i), (size_t)a->ps.p[i].numel * sizeof(float)))
            return 0;
    }
    return 1;
}

/* Copies sd into out, dropping `drop`, reshaping `reshape` to (1, numel) and adding `extra`. */
static ms_status edited(const ms_state_dict *sd, ms_state_dict *out, const char *drop, const char *reshape,
                        const char *extra)
{
    ms_sd_init(out);
    for (int i = 0; i < sd->n; i++) {
        const ms_sd_entry *e = &sd->e[i];
        if (!strcmp(e->name, drop)) continue;
        int64_t shape[MS_MAX_DIMS];
        int nd = e->t.ndim;
        memcpy(shape, e->t.shape, sizeof shape);
        if (!strcmp(e->name, reshape)) { shape[0] = 1; shape[1] = ms_tensor_numel(&e->t); nd = 2; }
        MS_TRY(ms_sd_add(out, e->name, e->t.dtype, shape, nd, e->t.data));
    }
    float z[4] = {0};
    int64_t s1[1] = {4};
    return ms_sd_add(out, extra, MS_DTYPE_F32, s1, 1, z);
}

static void check_keys(ms_device *dev, uint64_t seed)
{
    ms_sam a, b, c;
    ms_state_dict sd, bad;
    ms_sd_init(&sd);
    ms_sd_init(&bad);
    memset(&b, 0, sizeof b);
    memset(&c, 0, sizeof c);
    ms_sam_config cfg;
    MS_CHECK_OK(ms_sam_config_named("vit_test", 4, &cfg));
    ms_status st = ms_sam_init(&a, &cfg, dev);
    MS_CHECK(st == MS_OK, "init: %s", ms_errmsg());
    if (st) return;
    fill(&a, seed);
    MS_CHECK_OK(ms_sam_to_sd(&a, &sd));
    MS_CHECK(sd.n == 202, "vit_test SAM has %d keys, expected 202 (65 encoder + 17 prompt + 120 decoder)", sd.n);
    int order_ok = sd.n > 0 && !strncmp(sd.e[0].name, "image_encoder.", 14), phase = 0;
    for (int i = 0; i < sd.n; i++) {
        int p = !strncmp(sd.e[i].name, "image_encoder.", 14) ? 0 : !strncmp(sd.e[i].name, "prompt_encoder.", 15) ? 1 : 2;
        if (p < phase) order_ok = 0;
        phase = p;
    }
    MS_CHECK(order_ok, "keys are not in SAM's order (image_encoder, prompt_encoder, mask_decoder)");
    MS_CHECK(ms_sd_find(&sd, "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix") != NULL,
             "the gaussian buffer is not exported");

    st = ms_sam_load_sd(&b, &sd, dev);
    MS_CHECK(st == MS_OK, "load_sd: %s", ms_errmsg());
    if (!st) {
        MS_CHECK(b.cfg.enc.embed_dim == 192 && b.cfg.enc.depth == 4 && b.cfg.enc.img_size == 256 &&
                     b.cfg.n_mask_tokens == 4 && b.cfg.dec_depth == 2 && b.emb_h == 16,
                 "detected D %d depth %d S %d mask tokens %d decoder depth %d", b.cfg.enc.embed_dim, b.cfg.enc.depth,
                 b.cfg.enc.img_size, b.cfg.n_mask_tokens, b.cfg.dec_depth);
        MS_CHECK(same_values(&a, &b), "state dict round trip changed values");
        ms_sam_free(&b);
    }
    char path[] = "/tmp/ms_test_sam_model_XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0) close(fd);
    char pth[64];
    snprintf(pth, sizeof pth, "%s.pth", path);
    st = ms_sd_save(pth, &sd);
    MS_CHECK(st == MS_OK, "save: %s", ms_errmsg());
    if (!st) {
        st = ms_sam_load(&c, pth, dev);
        MS_CHECK(st == MS_OK, "load .pth: %s", ms_errmsg());
        if (!st) { MS_CHECK(same_values(&a, &c), ".pth round trip changed values"); ms_sam_free(&c); }
    }
    /* PyTorch accepts the export: strict load_state_dict into the reference model (skipped without torch) */
    if (!st && access("/usr/bin/python3", X_OK) == 0 && system("/usr/bin/python3 -c 'import torch' 2>/dev/null") == 0) {
        const char *src = getenv("MS_SOURCE_DIR");
        char cmd[2048];
        snprintf(cmd, sizeof cmd,
                 "/usr/bin/python3 -c \"import sys, torch; sys.path.insert(0, '%s/tests/reference'); import sam_ref; "
                 "m = sam_ref.Sam('vit_test'); m.load_state_dict(torch.load('%s'), strict=True); print('torch: strict "
                 "load of the export ok')\"",
                 src ? src : "../..", pth);
        int rc = system(cmd);
        MS_CHECK(rc == 0, "PyTorch refused the exported .pth (strict load_state_dict), rc %d", rc);
    }
    unlink(pth);
    unlink(path);

    /* strict: one missing, one mis-shaped, one unknown key → three problems, no model */
    st = edited(&sd, &bad, "mask_decoder.transformer.layers.1.norm2.bias", "prompt_encoder.mask_downscaling.0.weight",
                "mask_decoder.transformer.layers.0.Adapter.D_fc1.bias");
    MS_CHECK(st == MS_OK, "edit: %s", ms_errmsg());
    st = ms_sam_load_sd(&b, &bad, dev);
    MS_CHECK(st != MS_OK && strstr(ms_errmsg(), "3 key problem"), "strict load: status %d, '%s'", st, ms_errmsg());
    MS_CHECK(b.ps.data == NULL, "a failed load left a model behind");
    ms_sd_free(&bad);

    /* num_cls from the file: 2 classes + the single-mask token = 3 mask tokens */
    ms_sam d3;
    ms_state_dict sd3;
    ms_sd_init(&sd3);
    MS_CHECK_OK(ms_sam_config_named("vit_test", 3, &cfg));
    if (ms_sam_init(&d3, &cfg, dev) == MS_OK) {
        fill(&d3, seed + 1);
        MS_CHECK_OK(ms_sam_to_sd(&d3, &sd3));
        ms_sam_free(&d3);
        st = ms_sam_load_sd(&d3, &sd3, dev);
        MS_CHECK(st == MS_OK && d3.cfg.n_mask_tokens == 3, "num_cls=2 file: status %d, %d mask tokens (%s)", st,
                 d3.cfg.n_mask_tokens, ms_errmsg());
        if (!st) ms_sam_free(&d3);
    }
    ms_sd_free(&sd3);
    ms_sd_free(&sd);
    ms_sam_free(&a);
}

static void check_golden(ms_device *dev)
{
    char path[1024];
    const char *src = getenv("MS_SOURCE_DIR");
    snprintf(path, sizeof path, "%s/tests/finetune/golden/model_vit_test.pth", src ? src : "../..");
    ms_state_dict sd;
    ms_sd_init(&sd);
    ms_status st = ms_sd_load(path, &sd);
    MS_CHECK(st == MS_OK, "%s: %s", path, ms_errmsg());
    if (st) return;
    const uint64_t seed = (uint64_t)scalar(&sd, "meta.seed");
    ms_sam m;
    ms_sam_config cfg;
    ms_sam_prompt_state pst;
    memset(&pst, 0, sizeof pst);
    float *x = NULL, *emb = NULL, *demb = NULL, *dx = NULL, *dmasks = NULL, *diou = NULL, *wm = NULL, *wi = NULL;
    MS_CHECK_OK(ms_sam_config_named("vit_test", 4, &cfg));
    st = ms_sam_init(&m, &cfg, dev);
    MS_CHECK(st == MS_OK, "init: %s", ms_errmsg());
    if (st) { ms_sd_free(&sd); return; }
    fill(&m, seed);
    ms_params_set_trainable(&m.ps, "", 1);
    ms_sam_prompt_freeze_buffers(&m.pe);
    const int S = m.img_size, g = m.emb_h, M = 4;
    const int64_t N = (int64_t)g * g, P = 16 * N, nx = 3LL * S * S, ne = 256 * N;
    st = ms_params_alloc_grads(&m.ps);
    if (!st) st = ms_sam_encoder_reserve(&m.enc, dev, 1, 1);
    MS_CHECK(st == MS_OK, "grads/reserve: %s", ms_errmsg());
    if (st) goto leave;
    int64_t xs[2] = {3, (int64_t)S * S};
    x = malloc((size_t)nx * sizeof(float));
    emb = malloc((size_t)ne * sizeof(float));
    demb = calloc((size_t)ne, sizeof(float));
    dx = calloc((size_t)nx, sizeof(float));
    ms_counter_init(x, "input.image_embed", xs, 2, seed);
    st = ms_sam_encoder_forward(&m.enc, x, 1, emb);
    MS_CHECK(st == MS_OK, "encoder: %s", ms_errmsg());
    if (st) goto leave;
    check(&sd, "out.embed", emb, ne, "model");
    double *pv = as_double(get(&sd, "in.points")), *lv = as_double(get(&sd, "in.labels"));
    float pts[4];
    int32_t lab[2];
    for (int i = 0; i < 4; i++) pts[i] = (float)pv[i];
    for (int i = 0; i < 2; i++) lab[i] = (int32_t)lv[i];
    free(pv);
    free(lv);
    ms_sam_prompts pr = {.bp = 1, .n_points = 2, .points = pts, .labels = lab};
    st = ms_sam_prompt_forward(dev, &m.pe, &pr, &pst);
    if (!st) st = ms_sam_decoder_forward(dev, &m.dec, emb, 1, &pst);
    MS_CHECK(st == MS_OK, "decoder: %s", ms_errmsg());
    if (st) goto leave;
    check(&sd, "out.masks", m.dec.masks, M * P, "model");
    check(&sd, "out.iou", m.dec.iou, M, "model");
    int64_t nm[1] = {3 * P}, ni[1] = {3};
    wm = malloc((size_t)nm[0] * sizeof(float));
    wi = malloc(3 * sizeof(float));
    ms_counter_init(wm, "loss.masks", nm, 1, seed);
    ms_counter_init(wi, "loss.iou", ni, 1, seed);
    dmasks = calloc((size_t)(M * P), sizeof(float));
    diou = calloc(M, sizeof(float));
    memcpy(dmasks + P, wm, (size_t)(3 * P) * sizeof(float));
    memcpy(diou + 1, wi, 3 * sizeof(float));
    float dsparse[3 * 256] = {0};
    st = ms_sam_decoder_backward(dev, &m.dec, dmasks, diou, demb, dsparse, NULL);
    if (!st) st = ms_sam_prompt_backward(dev, &m.pe, &pst, dsparse, NULL);
    if (!st) st = ms_sam_encoder_backward(&m.enc, demb, dx);
    MS_CHECK(st == MS_OK, "backward: %s", ms_errmsg());
    if (st) goto leave;
    int n = 0;
    for (int i = 0; i < m.ps.n; i++) {
        float *gr = ms_params_grad(&m.ps, i);
        if (!gr) continue;
        char k[256], ki[270];
        snprintf(k, sizeof k, "grad.%s", m.ps.p[i].name);
        snprintf(ki, sizeof ki, "%s.idx", k);
        if (!get(&sd, k) && !get(&sd, ki)) continue; /* unused in PyTorch (mask_downscaling without a mask) */
        check(&sd, k, gr, m.ps.p[i].numel, "model");
        n++;
    }
    check(&sd, "grad.image", dx, nx, "model");
    printf("model: %d parameter gradients compared; largest normwise error %.3g (%s)\n", n, worst_err, worst_key);
leave:
    free(x); free(emb); free(demb); free(dx); free(dmasks); free(diou); free(wm); free(wi);
    ms_sam_prompt_state_free(dev, &pst);
    ms_sam_free(&m);
    ms_sd_free(&sd);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_device dev;
    memset(&dev, 0, sizeof dev);
    if (ms_device_init(&dev, MS_DEV_CPU, 0)) { printf("device: %s\n", ms_errmsg()); return 1; }
    check_keys(&dev, seed);
    check_golden(&dev);
    ms_device_free(&dev);
    return ms_test_done();
}
