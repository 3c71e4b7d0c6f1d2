/* tests/pretrain/test_tinyvit.c — MobileSAM's TinyViT (pretrain/tinyvit.h), forward in inference mode, against
 * MobileSAM's own PyTorch code: tests/pretrain/golden/tinyvit_test.pth from tests/pretrain/gen_tinyvit_golden.py
 * (float64 reference; the file holds no weights).
 *
 * 1. Keys: the registered tensors of vit_t_test equal the key set of upstream's TinyViT.state_dict() (names,
 *    shapes), num_batches_tracked (int64) aside; vit_t's float count equals upstream's build_sam_vit_t encoder
 *    (6,075,388 floats: 6,065,532 parameters + 9,856 BatchNorm running statistics; 302 keys, 27 of them
 *    num_batches_tracked — counted with upstream's code at commit 34bbbfd).
 * 2. Loading: the state dict MobileSAM's code would save (every golden key; floats from counter_init with the
 *    generator's BatchNorm / bias-table rules, num_batches_tracked int64 scalars), written to a .pth and read back,
 *    loads strictly through ms_tinyvit_load; with one key (drawn at random, seed printed) missing, mis-shaped,
 *    or an unknown key added, or a num_batches_tracked stored as float, the load fails and loads nothing.
 * 3. Forward at 256, batch 2, input 2·(2u−1) from the counter RNG ("golden.input"): the stem, every layer's output
 *    and the neck embedding. Tolerance (fp32 against float64): max|c − r| ≤ 1e-4·max|r| on every value stored
 *    (the embedding in full, the rest on 2048 sampled values), Σ within 1e-4·Σ|r|, Σx² within 1e-4 relative.
 * 4. Optional (MS_TINYVIT_PTH, see test_torch_file): the same weights from a file torch.save wrote.
 * 2 and 3 run on the CPU, then again on CUDA when this build and machine have a GPU (same tolerance; 1's bad loads
 * and 4 read the parameters on the host: CPU only). The CUDA pass has not yet run on a GPU.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/path.h"
#include "base/rng.h"
#include "harness.h"
#include "ops.h"
#include "pretrain/params.h"
#include "pretrain/tinyvit.h"
#include "reference/counter_init.h"

#include "tinyvit_golden.h"

enum { SD_OK, SD_MISSING, SD_SHAPE, SD_UNKNOWN, SD_FLOAT_COUNTER, SD_NCASES };
static const char *sd_case[] = {"ok", "missing key", "mis-shaped key", "unknown key", "float num_batches_tracked"};

/* The state dict upstream's code saves for these weights; `bad` breaks key number `which` (a float key for
 * SD_MISSING / SD_SHAPE, an integer one for SD_FLOAT_COUNTER). */
static ms_status make_sd(ms_state_dict *sd, const gkey *k, int nk, uint64_t seed, int bad, int which)
{
    ms_sd_init(sd);
    ms_status rc = MS_OK;
    for (int i = 0; i < nk && !rc; i++) {
        if (k[i].is_int && !(bad == SD_FLOAT_COUNTER && i == which)) {
            int64_t three = 3;
            rc = ms_sd_add(sd, k[i].name, MS_DTYPE_I64, NULL, 0, &three);
            continue;
        }
        if (bad == SD_MISSING && i == which) continue;
        int64_t shape[4];
        int64_t n = 1;
        for (int d = 0; d < k[i].ndim; d++) n *= shape[d] = k[i].shape[d];
        if (bad == SD_SHAPE && i == which) shape[0] += 1, n = n / k[i].shape[0] * shape[0];
        float *v = malloc((size_t)(n ? n : 1) * sizeof *v);
        if (!v) return MS_ENOMEM;
        if (k[i].is_int) v[0] = 3.f;
        else tv_counter(v, k[i].name, shape, k[i].ndim, seed);
        rc = ms_sd_add_take(sd, k[i].name, MS_DTYPE_F32, shape, k[i].ndim, v);
    }
    if (!rc && bad == SD_UNKNOWN) {
        float z = 0;
        int64_t one = 1;
        rc = ms_sd_add(sd, PREFIX "layers.1.blocks.0.attn.extra", MS_DTYPE_F32, &one, 1, &z);
    }
    return rc;
}

/* The load of a broken state dict fails and leaves the parameters as they were (all zero here). */
static void test_bad_loads(ms_tinyvit *tv, const gkey *k, int nk, uint64_t seed)
{
    int nf = 0, ni = 0;
    for (int i = 0; i < nk; i++) k[i].is_int ? ni++ : nf++;
    ms_rng r;
    ms_rng_init(&r, seed, 1);
    MS_CHECK_OK(ms_dev_zero(tv->ps->dev, tv->ps->data, (size_t)tv->ps->numel * sizeof(float)));
    for (int bad = SD_MISSING; bad < SD_NCASES; bad++) {
        int want_int = bad == SD_FLOAT_COUNTER, pick = (int)ms_rng_below(&r, (uint64_t)(want_int ? ni : nf));
        int which = -1;
        for (int i = 0; i < nk && which < 0; i++)
            if (k[i].is_int == want_int && pick-- == 0) which = i;
        ms_state_dict sd;
        MS_CHECK_OK(make_sd(&sd, k, nk, seed, bad, which));
        printf("bad load (%s%s%s): ", sd_case[bad], bad == SD_UNKNOWN ? "" : ", ",
               bad == SD_UNKNOWN ? "" : k[which].name);
        fflush(stdout);
        ms_status rc = ms_tinyvit_load(tv, &sd);
        printf("-> %s\n", rc ? ms_errmsg() : "loaded");
        MS_CHECK(rc != MS_OK, "%s: loaded", sd_case[bad]);
        ms_sd_free(&sd);
    }
    double s = 0;
    for (int64_t i = 0; i < tv->ps->numel; i++) s += fabs(tv->ps->data[i]);
    MS_CHECK(s == 0, "a failed load changed the parameters (Σ|p| = %g)", s);
}

/* MS_TINYVIT_PTH=file (gen_tinyvit_golden.py --state-dict): a state dict saved by torch.save from MobileSAM's
 * own model (int64 num_batches_tracked included) loads strictly, gives the same weights as counter_init, and the
 * same embedding. Off by default: the file (9 MB) is not committed. */
static void test_torch_file(ms_tinyvit *tv, const ms_state_dict *g, const float *x, int B, float *emb, int64_t ne)
{
    const char *path = getenv("MS_TINYVIT_PTH");
    if (!path || !*path) return;
    ms_params *ps = tv->ps;
    float *before = malloc((size_t)ps->numel * sizeof *before);
    memcpy(before, ps->data, (size_t)ps->numel * sizeof *before);
    MS_CHECK_OK(ms_dev_zero(ps->dev, ps->data, (size_t)ps->numel * sizeof(float)));
    ms_state_dict sd;
    ms_sd_init(&sd);
    MS_CHECK_OK(ms_sd_load(path, &sd));
    MS_CHECK_OK(ms_tinyvit_load(tv, &sd));
    ms_cmp cm = ms_compare_f(ps->data, before, ps->numel);
    printf("%s: %d keys, weights max diff to counter_init %.3g\n", path, sd.n, cm.max_abs);
    MS_CHECK(cm.max_abs <= 1e-6, "%s: weights differ from counter_init by %.3g", path, cm.max_abs);
    MS_CHECK_OK(ms_tinyvit_forward(tv, x, B, emb));
    check_stage(g, "emb", emb, ne);
    ms_sd_free(&sd);
    free(before);
}

static void test_counts(void)
{
    ms_tinyvit_config c;
    MS_CHECK_OK(ms_tinyvit_config_named("vit_t", &c));
    ms_params ps;
    ms_params_init(&ps);
    ms_tinyvit tv;
    MS_CHECK_OK(ms_tinyvit_init(&tv, &c, &ps, PREFIX));
    printf("vit_t: %d float tensors, %lld floats, final grid %d\n", ps.n, (long long)ms_tinyvit_numel(&tv),
           ms_tinyvit_grid(&c, 4));
    MS_CHECK(ps.n == 302 - 27 && ms_tinyvit_numel(&tv) == 6075388, "vit_t: %d tensors, %lld floats", ps.n,
             (long long)ms_tinyvit_numel(&tv));
    MS_CHECK(ms_tinyvit_grid(&c, 4) == 64, "vit_t grid %d, expected 64", ms_tinyvit_grid(&c, 4));
    ms_params_free(&ps);
    MS_CHECK(ms_tinyvit_config_named("vit_x", &c) == MS_EINVAL, "unknown model accepted");
    MS_CHECK_OK(ms_tinyvit_config_named("vit_t", &c));
    c.heads[2] = 3; /* 160 / 3 */
    MS_CHECK(ms_tinyvit_config_check(&c) == MS_EINVAL, "heads not dividing the dim accepted");
    MS_CHECK_OK(ms_tinyvit_config_named("vit_t", &c));
    c.img_size = 1000;
    MS_CHECK(ms_tinyvit_config_check(&c) == MS_EINVAL, "input 1000 accepted");
}

/* A device array copied to the host (caller frees). */
static float *host_copy(ms_device *dev, const float *d, int64_t n)
{
    float *h = malloc((size_t)(n ? n : 1) * sizeof *h);
    if (h && d) MS_CHECK_OK(ms_dev_to_host(dev, h, d, (size_t)n * sizeof *h));
    return d ? h : (free(h), NULL);
}

/* Loading and the forward on one device; the checks that read parameters directly run on the CPU only. */
static void run_device(ms_device *dev, const ms_state_dict *g, const gkey *k, int nk, uint64_t seed, uint64_t tseed)
{
    ms_tinyvit_config c;
    MS_CHECK_OK(ms_tinyvit_config_named("vit_t_test", &c));
    ms_params ps;
    ms_params_init(&ps);
    ms_tinyvit tv;
    MS_CHECK_OK(ms_tinyvit_init(&tv, &c, &ps, PREFIX));
    MS_CHECK_OK(ms_params_alloc(&ps, dev));
    int cpu = dev->kind == MS_DEV_CPU;
    if (cpu) {
        test_keys(&ps, k, nk);
        test_bad_loads(&tv, k, nk, tseed);
    }
    /* the good state dict, through a .pth file as a MobileSAM user would hand it over */
    ms_state_dict sd, rd;
    MS_CHECK_OK(make_sd(&sd, k, nk, seed, SD_OK, -1));
    char tmp[MS_PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/test_tinyvit_%d.pth", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    MS_CHECK_OK(ms_sd_save(tmp, &sd));
    ms_sd_init(&rd);
    MS_CHECK_OK(ms_sd_load(tmp, &rd));
    unlink(tmp);
    MS_CHECK(rd.n == nk, "state dict read back with %d keys, wrote %d", rd.n, nk);
    MS_CHECK_OK(ms_tinyvit_load(&tv, &rd));
    ms_sd_free(&sd);
    ms_sd_free(&rd);

    int B = 2;
    int64_t S = c.img_size, nx = (int64_t)B * 3 * S * S, g4 = ms_tinyvit_grid(&c, 4);
    int64_t ne = (int64_t)B * c.out_chans * g4 * g4;
    float *hx = malloc((size_t)nx * sizeof *hx), *x = NULL, *emb = NULL;
    uint64_t stream = ms_rng_stream(seed, ms_fnv1a64("golden.input"), 0);
    for (int64_t i = 0; i < nx; i++) hx[i] = 2.0f * (2.0f * ms_rand_uniform(stream, (uint64_t)i) - 1.0f);
    MS_CHECK_OK(ms_dev_alloc(dev, (size_t)nx * sizeof(float), (void **)&x));
    MS_CHECK_OK(ms_dev_alloc(dev, (size_t)ne * sizeof(float), (void **)&emb));
    MS_CHECK_OK(ms_dev_from_host(dev, x, hx, (size_t)nx * sizeof(float)));
    MS_CHECK_OK(ms_tinyvit_reserve(&tv, B, 0));
    MS_CHECK_OK(ms_tinyvit_forward(&tv, x, B, emb));
    int64_t g0 = ms_tinyvit_grid(&c, 0);
    float *h = host_copy(dev, ms_tinyvit_stage(&tv, -1), B * c.dims[0] * g0 * g0);
    check_stage(g, "stage.stem", h, B * c.dims[0] * g0 * g0);
    free(h);
    for (int i = 0; i < 4; i++) {
        char key[32];
        int64_t go = ms_tinyvit_grid(&c, i < 3 ? i + 1 : 4), C = c.dims[i < 3 ? i + 1 : 3];
        snprintf(key, sizeof key, "stage.layer.%d", i);
        h = host_copy(dev, ms_tinyvit_stage(&tv, i), B * go * go * C);
        check_stage(g, key, h, B * go * go * C);
        free(h);
    }
    h = host_copy(dev, emb, ne);
    check_stage(g, "emb", h, ne);
    free(h);
    MS_CHECK(ms_tinyvit_forward(&tv, x, B + 1, emb) == MS_EINVAL, "batch above the reserve accepted");
    if (cpu) test_torch_file(&tv, g, x, B, emb, ne);
    free(hx);
    ms_dev_free(dev, x);
    ms_dev_free(dev, emb);
    ms_tinyvit_free(&tv);
    ms_params_free(&ps);
}

int main(void)
{
    uint64_t tseed = ms_test_seed(); /* picks the broken keys; the weights and input are fixed by the golden file */
    test_counts();
    const char *src = getenv("MS_SOURCE_DIR");
    char path[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(path, src ? src : "../..", "tests/pretrain/golden/tinyvit_test.pth"));
    ms_state_dict g;
    ms_sd_init(&g);
    ms_status st = ms_sd_load(path, &g);
    MS_CHECK_OK(st);
    if (st) return ms_test_done();
    const ms_sd_entry *es = ms_sd_find(&g, "meta.seed");
    uint64_t seed = es && es->t.dtype == MS_DTYPE_I64 ? (uint64_t)((int64_t *)es->t.data)[0] : 0;
    gkey *k;
    int nk = golden_keys(&g, &k);
    for (int d = 0; d < 2; d++) {
        if (d == 1 && !ms_cuda_available()) { printf("CUDA: not available, CPU only\n"); break; }
        ms_device dev;
        MS_CHECK_OK(ms_device_init(&dev, d ? MS_DEV_CUDA : MS_DEV_CPU, 0));
        printf("== device %s\n", d ? "cuda" : "cpu");
        run_device(&dev, &g, k, nk, seed, tseed);
        ms_device_free(&dev);
    }
    free(k);
    ms_sd_free(&g);
    return ms_test_done();
}
