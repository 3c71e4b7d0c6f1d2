/* tests/pretrain/test_tinyvit_vit_t_slow.c (label slow) — TinyViT-5M as MobileSAM builds it (vit_t: build_sam.py
 * build_sam_vit_t, input 1024, batch 1), forward on the CPU against tests/pretrain/golden/tinyvit_vit_t_1024.pth
 * (gen_tinyvit_golden.py --vit-t: MobileSAM's own code in float64, whose embedding there equals upstream's
 * TinyViT.forward itself). Weights as in test_tinyvit.c (counter_init plus the BatchNorm / bias-table rules), set
 * directly; the key set is compared with upstream's state_dict() (302 keys, 27 num_batches_tracked). The file holds
 * 2048 sampled values and (Σ, Σx², Σ|x|) of the stem, every layer and the embedding. Tolerance: sampled
 * max|c − r| ≤ 1e-4·max|r|, Σ within 1e-4·Σ|r|, Σx² within 1e-4 relative.
 */
#include <stdio.h>
#include <stdlib.h>

#include "base/clock.h"
#include "base/rng.h"
#include "pretrain/tinyvit.h"

#include "tinyvit_golden.h"

int main(void)
{
    ms_test_seed(); /* inputs are fixed by the golden file */
    const char *src = getenv("MS_SOURCE_DIR");
    char path[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(path, src ? src : "../..", "tests/pretrain/golden/tinyvit_vit_t_1024.pth"));
    ms_state_dict g;
    ms_sd_init(&g);
    ms_status st = ms_sd_load(path, &g);
    MS_CHECK_OK(st);
    if (st) return ms_test_done();
    const ms_sd_entry *es = ms_sd_find(&g, "meta.seed");
    uint64_t seed = es && es->t.dtype == MS_DTYPE_I64 ? (uint64_t)((int64_t *)es->t.data)[0] : 0;

    ms_device dev;
    MS_CHECK_OK(ms_device_init(&dev, MS_DEV_CPU, 0));
    ms_tinyvit_config c;
    MS_CHECK_OK(ms_tinyvit_config_named("vit_t", &c));
    ms_params ps;
    ms_params_init(&ps);
    ms_tinyvit tv;
    MS_CHECK_OK(ms_tinyvit_init(&tv, &c, &ps, "image_encoder."));
    MS_CHECK_OK(ms_params_alloc(&ps, &dev));
    gkey *k;
    int nk = golden_keys(&g, &k);
    test_keys(&ps, k, nk);
    MS_CHECK(nk == 302, "%d keys in the golden file, upstream's vit_t has 302", nk);
    free(k);
    for (int i = 0; i < ps.n; i++) tv_counter(ms_params_data(&ps, i), ps.p[i].name, ps.p[i].shape, ps.p[i].ndim, seed);

    int64_t S = c.img_size, nx = 3 * S * S, g4 = ms_tinyvit_grid(&c, 4), ne = (int64_t)c.out_chans * g4 * g4;
    float *x = malloc((size_t)nx * sizeof *x), *emb = malloc((size_t)ne * sizeof *emb);
    uint64_t stream = ms_rng_stream(seed, ms_fnv1a64("golden.input"), 0);
    for (int64_t i = 0; i < nx; i++) x[i] = 2.0f * (2.0f * ms_rand_uniform(stream, (uint64_t)i) - 1.0f);
    MS_CHECK_OK(ms_tinyvit_reserve(&tv, 1, 0));
    double t0 = ms_now_s();
    MS_CHECK_OK(ms_tinyvit_forward(&tv, x, 1, emb));
    printf("vit_t 1024 forward: %.2f s on %d threads\n", ms_now_s() - t0, dev.n_threads);
    int64_t g0 = ms_tinyvit_grid(&c, 0);
    check_stage(&g, "stage.stem", ms_tinyvit_stage(&tv, -1), c.dims[0] * g0 * g0);
    for (int i = 0; i < 4; i++) {
        char key[32];
        int64_t go = ms_tinyvit_grid(&c, i < 3 ? i + 1 : 4), C = c.dims[i < 3 ? i + 1 : 3];
        snprintf(key, sizeof key, "stage.layer.%d", i);
        check_stage(&g, key, ms_tinyvit_stage(&tv, i), go * go * C);
    }
    check_stage(&g, "emb", emb, ne);
    free(x);
    free(emb);
    ms_tinyvit_free(&tv);
    ms_params_free(&ps);
    ms_device_free(&dev);
    ms_sd_free(&g);
    return ms_test_done();
}
