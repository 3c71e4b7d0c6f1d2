/* tests/kernels/test_prep.c — the prep op's CPU half (kernels/prep.h) against the loader's own preprocessing of
 * the same sample: native uint16 → [0,1] floats, ms_aug_hflip when flipped, ms_prep_image from the crop box
 * (data/loader.c's MS_LOAD_MODEL path). Random slice sizes (shrinking and enlarging), integer RandomResizedCrop
 * boxes and fractional boxes, flips, longest/stretch, SAM/unit normalisation, 1 or 3 channels, garbage in the
 * batch padding; the outputs must be equal bit for bit. Then boxes the op must refuse.
 * With the argument `cuda` (test_prep_cuda, label gpu; skips with 77 without a CUDA build or GPU): the same batches
 * through the CUDA half, which must equal the CPU half bit for bit (the shared formulas use correctly rounded
 * intrinsics and no FMA contraction on the device). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "augment/augment.h"
#include "base/device.h"
#include "base/rng.h"
#include "data/preprocess.h"
#include "harness.h"
#include "prep.h"

static ms_device DEV, GPU;
static int USE_GPU;

/* The CUDA half on the same batch; its output must equal the CPU half's `want`. */
static void check_cuda(const uint16_t *nat, const ms_prep_sample *sm, int n, int NH, int NW, const ms_prep_config *pc,
                       const float *want, int trial)
{
    const size_t nb = (size_t)n * NH * NW * sizeof(uint16_t), yb = (size_t)n * pc->channels * pc->size * pc->size * 4;
    void *dn = NULL, *ds = NULL, *dy = NULL;
    float *got = malloc(yb);
    MS_CHECK_OK(ms_dev_alloc(&GPU, nb, &dn));
    MS_CHECK_OK(ms_dev_alloc(&GPU, (size_t)n * sizeof(*sm), &ds));
    MS_CHECK_OK(ms_dev_alloc(&GPU, yb, &dy));
    if (got && dn && ds && dy) {
        MS_CHECK_OK(ms_dev_from_host(&GPU, dn, nat, nb));
        MS_CHECK_OK(ms_dev_from_host(&GPU, ds, sm, (size_t)n * sizeof(*sm)));
        MS_CHECK_OK(ms_prep_native(&GPU, dy, dn, ds, n, NH, NW, pc->size, pc->channels, pc->resize, pc->norm));
        MS_CHECK_OK(ms_dev_to_host(&GPU, got, dy, yb));
        size_t bad = 0;
        double worst = 0;
        for (size_t i = 0; i < yb / 4; i++)
            if (memcmp(&got[i], &want[i], 4)) {
                bad++;
                double d = fabs((double)got[i] - want[i]);
                worst = d > worst ? d : worst;
            }
        MS_CHECK(bad == 0, "trial %d: CUDA differs from the CPU in %zu of %zu values (max |diff| %.3g)", trial, bad,
                 yb / 4, worst);
    }
    ms_dev_free(&GPU, dn), ms_dev_free(&GPU, ds), ms_dev_free(&GPU, dy);
    free(got);
}

static int rnd(ms_rng *r, int lo, int hi) { return lo + (int)ms_rng_below(r, (uint64_t)(hi - lo + 1)); }

/* The loader's MS_LOAD_MODEL image of one sample. */
static ms_status reference(const ms_prep_config *pc, const uint16_t *px, int stride, const ms_prep_sample *p,
                           float *out)
{
    const size_t plane = (size_t)pc->size * pc->size;
    if (p->h == 0) {
        memset(out, 0, plane * (size_t)pc->channels * sizeof(float));
        return MS_OK;
    }
    float *img = malloc((size_t)p->h * p->w * sizeof(float));
    if (!img) return ms_error(MS_ENOMEM, "test: out of memory");
    for (int y = 0; y < p->h; y++)
        for (int x = 0; x < p->w; x++) img[(size_t)y * p->w + x] = (float)px[(size_t)y * stride + x] * (1.0f / 65535.0f);
    if (p->flip) ms_aug_hflip(img, NULL, p->h, p->w);
    ms_box box = {p->y0, p->x0, p->bh, p->bw};
    ms_prep_scratch s = {0};
    ms_status rc = ms_prep_image(pc, img, p->h, p->w, &box, out, &s);
    ms_prep_scratch_free(&s);
    free(img);
    return rc;
}

static void random_batch(ms_rng *r, int trial)
{
    ms_prep_config pc;
    const int sizes[] = {16, 32, 48, 64, 100};
    ms_prep_config_default(&pc, sizes[rnd(r, 0, 4)]);
    pc.resize = rnd(r, 0, 3) == 0 ? MS_RESIZE_STRETCH : MS_RESIZE_LONGEST;
    pc.norm = rnd(r, 0, 3) == 0 ? MS_NORM_UNIT : MS_NORM_SAM;
    pc.channels = rnd(r, 0, 2) == 0 ? 1 : 3;
    const int n = rnd(r, 1, 4), NH = rnd(r, 8, 300), NW = rnd(r, 8, 300);
    uint16_t *nat = malloc((size_t)n * NH * NW * sizeof(uint16_t));
    ms_prep_sample *sm = calloc((size_t)n, sizeof(*sm));
    const size_t per = (size_t)pc.channels * pc.size * pc.size;
    float *got = malloc((size_t)n * per * sizeof(float)), *ref = malloc((size_t)n * per * sizeof(float));
    if (!nat || !sm || !got || !ref) {
        MS_CHECK(0, "out of memory");
        goto leave;
    }
    for (size_t i = 0; i < (size_t)n * NH * NW; i++) nat[i] = (uint16_t)ms_rng_below(r, 65536); /* padding: garbage */
    for (int k = 0; k < n; k++) {
        ms_prep_sample *p = &sm[k];
        if (rnd(r, 0, 9) == 0) continue; /* an invalid sample: zeros */
        p->h = rnd(r, 1, NH), p->w = rnd(r, 1, NW), p->flip = rnd(r, 0, 1);
        ms_box b = {0, 0, (float)p->h, (float)p->w};
        int kind = rnd(r, 0, 2);
        if (kind == 1) {
            const float sc[2] = {0.05f, 1.0f}, ra[2] = {0.3f, 3.0f};
            b = ms_aug_rrc_box(r, p->h, p->w, sc, ra);
        } else if (kind == 2) { /* fractional box */
            b.h = 1 + (float)ms_rng_uniform(r) * (float)(p->h - 1);
            b.w = 1 + (float)ms_rng_uniform(r) * (float)(p->w - 1);
            b.y0 = (float)ms_rng_uniform(r) * ((float)p->h - b.h);
            b.x0 = (float)ms_rng_uniform(r) * ((float)p->w - b.w);
        }
        p->y0 = b.y0, p->x0 = b.x0, p->bh = b.h, p->bw = b.w;
    }
    ms_status rc = ms_prep_native(&DEV, got, nat, sm, n, NH, NW, pc.size, pc.channels, pc.resize, pc.norm);
    MS_CHECK(rc == MS_OK, "trial %d: the op failed: %s", trial, ms_errmsg());
    if (USE_GPU && !rc) check_cuda(nat, sm, n, NH, NW, &pc, got, trial);
    for (int k = 0; k < n && !rc; k++) {
        MS_CHECK_OK(reference(&pc, nat + (size_t)k * NH * NW, NW, &sm[k], ref + (size_t)k * per));
        const float *a = got + (size_t)k * per, *e = ref + (size_t)k * per;
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < per; i++)
            if (memcmp(&a[i], &e[i], sizeof(float)) && !bad++) first = i;
        MS_CHECK(bad == 0,
                 "trial %d sample %d (slice %dx%d, box %gx%g at %g,%g, flip %d, size %d, resize %d, norm %d, ch %d): "
                 "%zu values differ, first at %zu: %.9g vs %.9g",
                 trial, k, sm[k].h, sm[k].w, sm[k].bh, sm[k].bw, sm[k].y0, sm[k].x0, sm[k].flip, pc.size, pc.resize,
                 pc.norm, pc.channels, bad, first, bad ? a[first] : 0, bad ? e[first] : 0);
    }
leave:
    free(nat), free(sm), free(got), free(ref);
}

static void refusals(void)
{
    ms_prep_sample p = {10, 10, 0, 0, 0, 0, 10, 10};
    MS_CHECK(ms_prep_check(&p, 1, 10, 10, 32, 0) == MS_OK, "a valid sample was refused: %s", ms_errmsg());
    p.x0 = 1; /* box beyond the slice */
    MS_CHECK(ms_prep_check(&p, 1, 10, 10, 32, 0) == MS_EINVAL, "a box beyond the slice was accepted");
    p = (ms_prep_sample){20, 10, 0, 0, 0, 0, 20, 10};
    MS_CHECK(ms_prep_check(&p, 1, 10, 10, 32, 0) == MS_EINVAL, "a slice beyond the batch was accepted");
    p = (ms_prep_sample){4000, 4000, 0, 0, 0, 0, 4000, 4000};
    MS_CHECK(ms_prep_check(&p, 1, 4000, 4000, 16, 0) == MS_EINVAL, "a 250x shrink was accepted");
}

int main(int argc, char **argv)
{
    USE_GPU = argc > 1 && !strcmp(argv[1], "cuda");
    if (USE_GPU && !ms_cuda_available()) {
        printf("test_prep_cuda: no CUDA backend or device: skipped\n");
        return MS_TEST_SKIP;
    }
    ms_rng r = {ms_test_seed(), 0};
    if (USE_GPU && ms_device_init(&GPU, MS_DEV_CUDA, 0)) {
        printf("cuda device: %s\n", ms_errmsg()); /* a visible GPU that will not open is a failure */
        return 1;
    }
    if (ms_device_init(&DEV, MS_DEV_CPU, 1)) {
        printf("cpu device: %s\n", ms_errmsg());
        return 1;
    }
    for (int t = 0; t < 60; t++) random_batch(&r, t);
    refusals();
    ms_device_free(&DEV);
    if (USE_GPU) ms_device_free(&GPU);
    return ms_test_done();
}
