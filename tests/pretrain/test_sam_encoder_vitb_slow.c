/* tests/pretrain/test_sam_encoder_vitb_slow.c (label slow) — vit_b at its real size (1024 input, 12 blocks, 4 global)
 * forward on the CPU against tests/pretrain/golden/encoder_vit_b_1024.pth (gen_encoder_golden.py --vit-b, float64).
 *
 * Weights come from counter_init (tests/reference/counter_init.{c,py}, same values in C and Python), the input
 * from the counter RNG: x[i] = 2·(2u−1), u = (ms_rand_u64(ms_rng_stream(seed, fnv1a64("golden.input"), 0), i) >> 40)
 * / 2^24 — exact in float32 on both sides. The file holds 4096 sampled values and (Σ, Σx², Σ|x|) of the patch
 * embedding, blocks 5 and 11 and the neck output. Tolerance: sampled max|c − r| ≤ 1e-4·max|r|, sums within
 * 1e-4·Σ|r|, Σx² within 1e-4 relative.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/path.h"
#include "harness.h"
#include "pretrain/params.h"
#include "pretrain/sam_encoder.h"
#include "reference/counter_init.h"

static void check(const ms_state_dict *g, const char *key, const float *c, int64_t n)
{
    char k[128];
    snprintf(k, sizeof k, "%s.idx", key);
    const ms_sd_entry *ei = ms_sd_find(g, k);
    snprintf(k, sizeof k, "%s.val", key);
    const ms_sd_entry *ev = ms_sd_find(g, k);
    snprintf(k, sizeof k, "%s.stats", key);
    const ms_sd_entry *es = ms_sd_find(g, k);
    if (!ei || !ev || !es || ei->t.dtype != MS_DTYPE_I64 || ev->t.dtype != MS_DTYPE_F32 || es->t.dtype != MS_DTYPE_F64) {
        MS_CHECK(0, "%s: missing or mistyped in the golden file", key);
        return;
    }
    int64_t ns = ms_tensor_numel(&ei->t);
    const int64_t *idx = ei->t.data;
    const float *val = ev->t.data;
    const double *st = es->t.data;
    double mx = 0, err = 0;
    for (int64_t i = 0; i < ns; i++) {
        if (idx[i] < 0 || idx[i] >= n) { MS_CHECK(0, "%s: index out of range", key); return; }
        if (fabs(val[i]) > mx) mx = fabs(val[i]);
        double d = fabs((double)c[idx[i]] - val[i]);
        if (d > err) err = d;
    }
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) { s += c[i]; s2 += (double)c[i] * c[i]; }
    printf("%-16s sampled max err %.3g (rel %.3g); sum %.9g vs %.9g; sumsq %.9g vs %.9g\n", key, err, err / mx, s,
           st[0], s2, st[1]);
    MS_CHECK(err <= 1e-4 * mx, "%s: sampled max error %.3g > 1e-4·%.3g", key, err, mx);
    MS_CHECK(fabs(s - st[0]) <= 1e-4 * st[2], "%s: sum %.9g vs %.9g", key, s, st[0]);
    MS_CHECK(fabs(s2 - st[1]) <= 1e-4 * st[1], "%s: sumsq %.9g vs %.9g", key, s2, st[1]);
}

int main(void)
{
    ms_test_seed(); /* inputs are fixed by the golden file */
    const char *src = getenv("MS_SOURCE_DIR");
    char path[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(path, src ? src : "../..", "tests/pretrain/golden/encoder_vit_b_1024.pth"));
    ms_state_dict g;
    ms_sd_init(&g);
    ms_status st = ms_sd_load(path, &g);
    MS_CHECK_OK(st);
    if (st) return ms_test_done();
    const ms_sd_entry *es = ms_sd_find(&g, "meta.seed");
    uint64_t seed = es && es->t.dtype == MS_DTYPE_I64 ? (uint64_t)((int64_t *)es->t.data)[0] : 0;

    ms_device dev;
    MS_CHECK_OK(ms_device_init(&dev, MS_DEV_CPU, 0));
    ms_sam_enc_config c;
    MS_CHECK_OK(ms_sam_enc_config_named("vit_b", &c));
    ms_params ps;
    ms_params_init(&ps);
    ms_sam_encoder enc;
    MS_CHECK_OK(ms_sam_encoder_init(&enc, &c, &ps, "image_encoder."));
    MS_CHECK_OK(ms_params_alloc(&ps, &dev));
    for (int i = 0; i < ps.n; i++)
        ms_counter_init(ms_params_data(&ps, i), ps.p[i].name, ps.p[i].shape, ps.p[i].ndim, seed);
    MS_CHECK_OK(ms_sam_encoder_reserve(&enc, &dev, 1, 1)); /* keeps every block's output for the checks */
    int64_t S = 1024, nx = 3 * S * S, T = 64 * 64, D = 768, ne = 256 * T;
    float *x = malloc((size_t)nx * sizeof(float)), *emb = malloc((size_t)ne * sizeof(float));
    uint64_t stream = ms_rng_stream(seed, ms_fnv1a64("golden.input"), 0);
    for (int64_t i = 0; i < nx; i++) x[i] = 2.0f * (2.0f * ms_rand_uniform(stream, (uint64_t)i) - 1.0f);
    double t0 = ms_now_s();
    MS_CHECK_OK(ms_sam_encoder_forward(&enc, x, 1, emb));
    printf("vit_b 1024 forward: %.2f s on %d threads\n", ms_now_s() - t0, dev.n_threads);
    check(&g, "stage.patch", ms_sam_encoder_tokens(&enc, -1), T * D);
    check(&g, "stage.block.5", ms_sam_encoder_tokens(&enc, 5), T * D);
    check(&g, "stage.block.11", ms_sam_encoder_tokens(&enc, 11), T * D);
    check(&g, "emb", emb, ne);
    free(x);
    free(emb);
    ms_sam_encoder_free(&enc);
    ms_params_free(&ps);
    ms_device_free(&dev);
    ms_sd_free(&g);
    return ms_test_done();
}
