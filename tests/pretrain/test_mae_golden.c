/* tests/pretrain/test_mae_golden.c — one whole MAE step (mask → encoder on visible tokens → decoder → norm-pix MSE,
 * and its backward) against a float64 PyTorch reference (tests/reference/mae_ref.py, golden file written by
 * tests/reference/gen_mae_golden.py). The reference computes the encoder as SAM's DENSE encoder with attention
 * masks (windowed blocks: visible tokens of the window + its kept pad slots; global blocks: visible tokens), an
 * independent route to the C subset path (index lists, grouped attention).
 *
 * Config (from the file's meta.cfg): 112 px, 7×7 tokens, D 48, depth 2, 2 heads, window 4 (padded 8×8: edge
 * windows hold pad slots), global block [1]; decoder dim 32, depth 2, 2 heads; batch 2; mask ratio 0.5.
 * Tolerances: loss relative 1e-5; every gradient tensor max|c − r| <= 1e-4·max|r| (fp32 vs fp64).
 * The step runs twice (gradients zeroed in between) so that stale state from the first step would show. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/path.h"
#include "checkpoints/state_dict.h"
#include "harness.h"
#include "pretrain/mae.h"
#include "pretrain/sam_encoder.h"

#define GRAD_TOL 1e-4
#define LOSS_TOL 1e-5

/* Loads every tensor of ps from sd under its own name (shapes checked by ms_sd_get_f32). */
static int load_all(const ms_params *ps, const ms_state_dict *sd)
{
    for (int i = 0; i < ps->n; i++) {
        const ms_param *p = &ps->p[i];
        if (ms_sd_get_f32(sd, p->name, p->shape, p->ndim, ms_params_data(ps, i))) {
            printf("load: %s\n", ms_errmsg());
            return 0;
        }
    }
    return 1;
}

/* Compares every gradient of ps with "grad.<name>" in sd; returns the number compared, tracks the worst ratio. */
static int compare_grads(const ms_params *ps, const ms_state_dict *sd, int iter, double *worst, char *wname)
{
    int n = 0;
    for (int i = 0; i < ps->n; i++) {
        const ms_param *p = &ps->p[i];
        if (strstr(p->name, "image_encoder.neck.")) continue; /* the MAE step stops before the neck */
        char key[256];
        snprintf(key, sizeof key, "grad.%s", p->name);
        float *ref = malloc(sizeof(float) * (size_t)p->numel);
        MS_CHECK(ref != NULL, "out of memory");
        if (!ref) return n;
        if (ms_sd_get_f32(sd, key, p->shape, p->ndim, ref)) {
            MS_CHECK(0, "golden: %s", ms_errmsg());
            free(ref);
            continue;
        }
        const float *c = ms_params_grad(ps, i);
        MS_CHECK(c != NULL, "%s has no gradient", p->name);
        if (c) {
            double rmax = 0, dmax = 0;
            for (int64_t k = 0; k < p->numel; k++) {
                rmax = fmax(rmax, fabs(ref[k]));
                double d = fabs((double)c[k] - ref[k]);
                dmax = isnan(d) ? INFINITY : fmax(dmax, d);
            }
            double ratio = dmax / (rmax > 0 ? rmax : 1e-30);
            MS_CHECK(ratio <= GRAD_TOL && rmax > 0, "step %d: grad %s: max|c-r| %.3g, max|r| %.3g (ratio %.3g > %.0e)",
                     iter, p->name, dmax, rmax, ratio, GRAD_TOL);
            if (ratio > *worst) {
                *worst = ratio;
                snprintf(wname, 256, "%s", p->name);
            }
            n++;
        }
        free(ref);
    }
    return n;
}

int main(void)
{
    uint64_t seed = ms_test_seed(); /* unused by the step itself: the masks come from the golden file */
    const char *src = getenv("MS_SOURCE_DIR");
    char path[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(path, src ? src : ".", "tests/pretrain/golden/mae_step.pth"));
    ms_state_dict sd;
    ms_sd_init(&sd);
    ms_status st = ms_sd_load(path, &sd);
    MS_CHECK(st == MS_OK, "cannot load %s: %s (set MS_SOURCE_DIR)", path, ms_errmsg());
    if (st) return ms_test_done();

    const ms_sd_entry *ce = ms_sd_find(&sd, "meta.cfg"), *ke = ms_sd_find(&sd, "keep"), *pe = ms_sd_find(&sd, "pad"),
                      *le = ms_sd_find(&sd, "loss");
    MS_CHECK(ce && ce->t.dtype == MS_DTYPE_I64 && ms_tensor_numel(&ce->t) >= 12, "golden: meta.cfg missing or bad");
    MS_CHECK(ke && ke->t.dtype == MS_DTYPE_I32 && ke->t.ndim == 2, "golden: keep missing or not int32 (B, n)");
    MS_CHECK(pe && pe->t.dtype == MS_DTYPE_I32 && pe->t.ndim == 2, "golden: pad missing or not int32 (B, n)");
    MS_CHECK(le && le->t.dtype == MS_DTYPE_F64 && ms_tensor_numel(&le->t) == 1, "golden: loss missing or not f64");
    if (!ce || !ke || !pe || !le || ce->t.dtype != MS_DTYPE_I64 || ke->t.dtype != MS_DTYPE_I32 ||
        pe->t.dtype != MS_DTYPE_I32 || le->t.dtype != MS_DTYPE_F64 || ms_tensor_numel(&ce->t) < 12) {
        ms_sd_free(&sd);
        return ms_test_done();
    }
    const int64_t *mc = ce->t.data;
    ms_sam_enc_config cfg = {.img_size = (int)mc[0], .patch = (int)mc[1], .in_chans = 3, .embed_dim = (int)mc[2],
                             .depth = (int)mc[3], .n_heads = (int)mc[4], .window = (int)mc[5],
                             .out_chans = (int)mc[6]};
    cfg.n_global = (int)(ms_tensor_numel(&ce->t) - 11);
    for (int i = 0; i < cfg.n_global; i++) cfg.global_idx[i] = (int)mc[11 + i];
    const int B = (int)mc[10], S = cfg.img_size;
    const int n_keep = (int)ke->t.shape[1], n_pad = (int)pe->t.shape[1];
    const double loss_ref = *(const double *)le->t.data;
    printf("config: img %d, D %d, depth %d, heads %d, window %d, %d global; decoder %lld/%lld/%lld; B %d, %d visible, "
           "%d pad slots per image\n", S, cfg.embed_dim, cfg.depth, cfg.n_heads, cfg.window, cfg.n_global,
           (long long)mc[7], (long long)mc[8], (long long)mc[9], B, n_keep, n_pad);

    ms_device dev = {0};
    MS_CHECK_OK(ms_device_init(&dev, MS_DEV_CPU, 2));
    ms_params eps, dps;
    ms_params_init(&eps);
    ms_params_init(&dps);
    ms_sam_encoder enc;
    ms_mae mae;
    memset(&enc, 0, sizeof enc);
    memset(&mae, 0, sizeof mae);
    MS_CHECK_OK(ms_sam_encoder_init(&enc, &cfg, &eps, "image_encoder."));
    ms_mae_config mcfg = {.mask_ratio = 0.5f, .sampling = MS_MASK_STRATIFIED, .norm_pix = 1, .fg_threshold = 0.05f};
    mcfg.dec.dim = (int)mc[7];
    mcfg.dec.depth = (int)mc[8];
    mcfg.dec.n_heads = (int)mc[9];
    MS_CHECK_OK(ms_mae_init(&mae, &enc, &mcfg, &dps));
    MS_CHECK_OK(ms_params_alloc(&eps, &dev));
    MS_CHECK_OK(ms_params_alloc_grads(&eps));
    MS_CHECK_OK(ms_params_alloc(&dps, &dev));
    MS_CHECK_OK(ms_params_alloc_grads(&dps));
    int loaded = load_all(&eps, &sd) && load_all(&dps, &sd);
    MS_CHECK(loaded, "weights missing from the golden file");
    MS_CHECK_OK(ms_sam_encoder_reserve(&enc, &dev, B, 1));
    MS_CHECK_OK(ms_mae_reserve(&mae, &dev, B));

    size_t nx = (size_t)B * 3 * S * S, ng = (size_t)B * S * S;
    float *x = malloc(sizeof(float) * nx), *gray = malloc(sizeof(float) * ng);
    int64_t xs[4] = {B, 3, S, S}, gs[3] = {B, S, S};
    MS_CHECK(x && gray, "out of memory");
    MS_CHECK_OK(ms_sd_get_f32(&sd, "x", xs, 4, x));
    MS_CHECK_OK(ms_sd_get_f32(&sd, "gray", gs, 3, gray));
    /* the CPU device works on host memory; a CUDA build would stage x with ms_dev_from_host */
    float *xd = NULL;
    MS_CHECK_OK(ms_dev_alloc(&dev, sizeof(float) * nx, (void **)&xd));
    MS_CHECK_OK(ms_dev_from_host(&dev, xd, x, sizeof(float) * nx));

    const int32_t *keep = ke->t.data, *pad = pe->t.data;
    for (int b = 0; b < B; b++)
        MS_CHECK_OK(ms_mae_mask_set(&mae.mask, b, keep + (size_t)b * n_keep, n_keep, pad + (size_t)b * n_pad, n_pad));

    for (int iter = 0; iter < 2 && loaded; iter++) {
        MS_CHECK_OK(ms_params_zero_grads(&eps));
        MS_CHECK_OK(ms_params_zero_grads(&dps));
        ms_mae_loss l;
        memset(&l, 0, sizeof l);
        MS_CHECK_OK(ms_mae_forward(&mae, xd, gray, B, seed, NULL, &l));
        MS_CHECK_OK(ms_mae_backward(&mae, 1.0f, 0));
        double lrel = fabs(l.loss - loss_ref) / fabs(loss_ref);
        printf("step %d: loss C %.8f, reference %.8f, rel %.3g (tol %.0e); hidden patches fg %d bg %d\n", iter, l.loss,
               loss_ref, lrel, LOSS_TOL, l.n_fg, l.n_bg);
        MS_CHECK(lrel <= LOSS_TOL, "step %d: loss %.8f vs reference %.8f (rel %.3g)", iter, l.loss, loss_ref, lrel);
        MS_CHECK(l.n_fg + l.n_bg == B * (S / cfg.patch) * (S / cfg.patch) - B * n_keep, "hidden patch count %d + %d",
                 l.n_fg, l.n_bg);
        double worst = 0;
        char wname[256] = "";
        int n = compare_grads(&eps, &sd, iter, &worst, wname);
        n += compare_grads(&dps, &sd, iter, &worst, wname);
        printf("step %d: %d gradient tensors compared, worst max|c-r|/max|r| = %.3g at %s (tol %.0e)\n", iter, n,
               worst, wname, GRAD_TOL);
        MS_CHECK(n == eps.n - 6 + dps.n, "compared %d gradient tensors, expected %d", n, eps.n - 6 + dps.n);
    }

    ms_dev_free(&dev, xd);
    free(x);
    free(gray);
    ms_mae_free(&mae);
    ms_sam_encoder_free(&enc);
    ms_params_free(&dps);
    ms_params_free(&eps);
    ms_sd_free(&sd);
    ms_device_free(&dev);
    return ms_test_done();
}
