/* tests/pretrain/test_mae_decoder.c — the MAE decoder's backward against central finite differences of its own
 * forward (a tiny config, fresh random weights and inputs): every parameter tensor and the token gradient are
 * probed. Scalar: L = Σ pred ⊙ G with a fixed random G. Tolerance: float32 forward with h = 1e-2 → relative error
 * below 2e-2 on probes whose gradient is not negligible (the reference is the same float forward, so this checks
 * the backward's algebra, not rounding). Also the sin-cos table against the closed form and patchify's norm-pix. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "ops.h"
#include "pretrain/mae_decoder.h"

typedef struct {
    ms_mae_decoder *d;
    float *tokens, *G;
    int32_t *vis;
    int B, nv;
    int64_t npred;
} ctx_t;

static double loss_of(ctx_t *c)
{
    if (ms_mae_decoder_forward(c->d, c->tokens, c->vis, c->B, c->nv)) return NAN;
    const float *p = ms_mae_decoder_pred(c->d);
    double s = 0;
    for (int64_t i = 0; i < c->npred; i++) s += (double)p[i] * c->G[i];
    return s;
}

static double probe(ctx_t *c, float *x, float h)
{
    float x0 = *x;
    *x = x0 + h;
    double lp = loss_of(c);
    *x = x0 - h;
    double lm = loss_of(c);
    *x = x0;
    return (lp - lm) / (2.0 * h);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_device dev = {0};
    MS_CHECK_OK(ms_device_init(&dev, MS_DEV_CPU, 2));
    ms_mae_dec_config cfg = {.enc_dim = 12, .dim = 16, .depth = 2, .n_heads = 2, .grid = 4, .patch = 2, .target_ch = 1};
    ms_params ps;
    ms_params_init(&ps);
    ms_mae_decoder d;
    MS_CHECK_OK(ms_mae_decoder_init(&d, &cfg, &ps, "mae_decoder."));
    MS_CHECK_OK(ms_params_alloc(&ps, &dev));
    MS_CHECK_OK(ms_params_alloc_grads(&ps));
    MS_CHECK_OK(ms_mae_decoder_init_weights(&d, seed));
    /* MAE init leaves biases at 0 and LN at 1/0: perturb everything so every path carries gradient */
    ms_rng r;
    ms_rng_init(&r, seed, 99);
    for (int64_t i = 0; i < ps.numel; i++) ps.data[i] += ms_rng_range(&r, -0.3f, 0.3f);
    int B = 2, nv = 5;
    MS_CHECK_OK(ms_mae_decoder_reserve(&d, &dev, B, nv));
    ctx_t c = {.d = &d, .B = B, .nv = nv};
    c.tokens = malloc(sizeof(float) * B * nv * cfg.enc_dim);
    c.vis = malloc(sizeof(int32_t) * B * nv);
    c.npred = (int64_t)B * 16 * 4;
    c.G = malloc(sizeof(float) * c.npred);
    ms_fill_uniform(c.tokens, B * nv * cfg.enc_dim, &r, -1.f, 1.f);
    ms_fill_uniform(c.G, c.npred, &r, -1.f, 1.f);
    for (int b = 0; b < B; b++) /* distinct visible tokens per image, drawn at random */
        for (int i = 0, t = 0; i < nv; t++)
            if (ms_rng_uniform(&r) < 0.4f || 16 - t <= nv - i) c.vis[b * nv + i++] = t;
    MS_CHECK(!isnan(loss_of(&c)), "forward failed: %s", ms_errmsg());
    float *dtok = calloc((size_t)B * nv * cfg.enc_dim, sizeof(float));
    MS_CHECK_OK(ms_params_zero_grads(&ps));
    MS_CHECK_OK(ms_mae_decoder_backward(&d, c.G, dtok));
    double worst = 0;
    const char *worst_name = "";
    for (int k = 0; k < ps.n; k++) {
        const ms_param *p = &ps.p[k];
        float *g = ms_params_grad(&ps, k);
        double gmax = 0;
        for (int64_t i = 0; i < p->numel; i++) gmax = fmax(gmax, fabs(g[i]));
        for (int t = 0; t < 4; t++) {
            int64_t i = (int64_t)ms_rng_below(&r, (uint64_t)p->numel);
            double fd = probe(&c, ms_params_data(&ps, k) + i, 1e-2f);
            double err = fabs(fd - g[i]) / (fabs(fd) + 0.05 * gmax + 1e-4);
            if (err > worst) { worst = err; worst_name = p->name; }
        }
    }
    MS_CHECK(worst < 2e-2, "parameter gradient rel error %.3g at %s", worst, worst_name);
    double worst_t = 0, tmax = 0;
    for (int i = 0; i < B * nv * cfg.enc_dim; i++) tmax = fmax(tmax, fabs(dtok[i]));
    for (int t = 0; t < 12; t++) {
        int i = (int)ms_rng_below(&r, (uint64_t)(B * nv * cfg.enc_dim));
        double fd = probe(&c, c.tokens + i, 1e-2f);
        worst_t = fmax(worst_t, fabs(fd - dtok[i]) / (fabs(fd) + 0.05 * tmax + 1e-4));
    }
    MS_CHECK(worst_t < 2e-2, "token gradient rel error %.3g", worst_t);

    /* sin-cos: token (row i, col j), channel k < D/4 is sin(j·ω_k) */
    float pos[4 * 4 * 16];
    ms_mae_sincos_2d(pos, 4, 16);
    double w1 = 1.0 / pow(10000.0, 1.0 / 4);
    MS_CHECK(fabs(pos[(2 * 4 + 3) * 16 + 1] - sin(3 * w1)) < 1e-6 && fabs(pos[(2 * 4 + 3) * 16 + 9] - sin(2 * w1)) < 1e-6,
             "sin-cos layout");
    /* patchify with norm-pix: every patch has mean 0 and unbiased variance ~1 */
    float img[2 * 8 * 8], tgt[2 * 16 * 4];
    ms_fill_uniform(img, 128, &r, 0.f, 1.f);
    ms_mae_patchify(img, 2, 8, 2, 1, tgt);
    /* MAE divides by sqrt(var + 1e-6): the normalised variance is var/(var + 1e-6), computed here from the raw
     * pixels of patch p = (image, row, col) in row-major order (order within a patch does not matter) */
    double worst_m = 0;
    for (int p = 0; p < 32; p++) {
        double m = 0, v = 0, rm = 0, rv = 0;
        int b = p / 16, py = p % 16 / 4, px = p % 4;
        for (int k = 0; k < 4; k++) {
            m += tgt[p * 4 + k];
            rm += img[b * 64 + (py * 2 + k / 2) * 8 + px * 2 + k % 2];
        }
        m /= 4;
        rm /= 4;
        for (int k = 0; k < 4; k++) {
            double q = img[b * 64 + (py * 2 + k / 2) * 8 + px * 2 + k % 2] - rm;
            v += (tgt[p * 4 + k] - m) * (tgt[p * 4 + k] - m);
            rv += q * q;
        }
        v /= 3;
        rv /= 3;
        worst_m = fmax(worst_m, fabs(m) + fabs(v - rv / (rv + 1e-6)));
    }
    MS_CHECK(worst_m < 1e-3, "norm-pix patches: worst deviation %.3g", worst_m);
    free(c.tokens); free(c.vis); free(c.G); free(dtok);
    ms_mae_decoder_free(&d);
    ms_params_free(&ps);
    return ms_test_done();
}
