/* tests/data/test_loader_prep.c — the loader's MS_LOAD_NATIVE_AUG output through the prep op (kernels/prep.h) equals
 * its MS_LOAD_MODEL output bit for bit: a store with slices larger than the model size (shrinking) and smaller
 * (enlarging), MAE augmentation (RandomResizedCrop + flip), 2 worker threads, two epochs of batches, SAM and unit
 * normalisation. Then the configurations the native augmented output refuses: labels, and augmentations that
 * need the pixels (the segmentation set). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/loader.h"
#include "harness.h"
#include "prep.h"
#include "store_fixture.h"

static uint64_t SEED;
static char STORE[300];
static ms_device DEV;
static ms_store *ST; /* one LMDB environment per store per process: both loaders share it */

static void base(ms_loader_config *c, int output, int norm)
{
    ms_loader_config_default(c);
    c->store_paths[0] = STORE;
    c->stores[0] = ST;
    c->seed = SEED;
    c->global_batch = 3;
    c->n_threads = 2;
    c->n_epochs = 2;
    c->output = output;
    ms_prep_config_default(&c->prep, 64);
    c->prep.norm = norm;
    c->augment = 1;
    ms_aug_config_mae(&c->aug);
}

static void compare(int norm)
{
    ms_loader_config cm, cn;
    base(&cm, MS_LOAD_MODEL, norm);
    base(&cn, MS_LOAD_NATIVE_AUG, norm);
    ms_loader *lm = NULL, *ln = NULL;
    MS_CHECK_OK(ms_loader_open(&cm, &lm));
    MS_CHECK_OK(ms_loader_open(&cn, &ln));
    if (!lm || !ln) goto leave;
    const size_t per = (size_t)3 * 64 * 64;
    float *y = malloc(3 * per * sizeof(float));
    int batches = 0, bad = 0, flips = 0;
    for (;;) {
        const ms_batch *bm, *bn;
        ms_status r1 = ms_loader_next(lm, &bm), r2 = ms_loader_next(ln, &bn);
        MS_CHECK(r1 == MS_OK && r2 == MS_OK, "next: %s", ms_errmsg());
        if (r1 || r2 || !bm || !bn) {
            MS_CHECK(!bm && !bn, "both loaders end together");
            break;
        }
        MS_CHECK(bn->native && bn->prep && bn->size == 64 && bn->channels == 3 && bn->n == bm->n,
                 "the native augmented batch's shape");
        MS_CHECK_OK(ms_prep_native(&DEV, y, bn->native, bn->prep, bn->n, bn->native_h, bn->native_w, bn->size,
                                   bn->channels, cn.prep.resize, cn.prep.norm));
        for (int k = 0; k < bn->n; k++) {
            flips += bn->prep[k].flip;
            bad += bn->key[k] != bm->key[k] || bn->height[k] != bm->height[k] || bn->width[k] != bm->width[k] ||
                   memcmp(y + k * per, bm->image + k * per, per * sizeof(float)) != 0;
        }
        batches++;
    }
    MS_CHECK(batches > 4 && bad == 0, "norm %d: %d of the samples of %d batches differ from MS_LOAD_MODEL's", norm,
             bad, batches);
    MS_CHECK(flips > 0, "some samples were flipped");
    free(y);
leave:
    if (lm) ms_loader_close(lm);
    if (ln) ms_loader_close(ln);
}

static void refusals(void)
{
    ms_loader_config c;
    ms_loader *L = NULL;
    base(&c, MS_LOAD_NATIVE_AUG, MS_NORM_SAM);
    c.labels = 1;
    MS_CHECK(ms_loader_open(&c, &L) == MS_EINVAL && !L, "labels with the native augmented output were accepted");
    base(&c, MS_LOAD_NATIVE_AUG, MS_NORM_SAM);
    ms_aug_config_seg(&c.aug);
    MS_CHECK_OK(ms_loader_open(&c, &L));
    if (!L) return;
    const ms_batch *b;
    ms_status rc = ms_loader_next(L, &b);
    MS_CHECK(rc == MS_EINVAL && strstr(ms_errmsg(), "flip and RandomResizedCrop"),
             "the segmentation augmentation was not refused: %d %s", rc, ms_errmsg());
    ms_loader_close(L);
}

int main(void)
{
    SEED = ms_test_seed();
    char dir[] = "/tmp/ms_loader_prep_XXXXXX";
    if (!mkdtemp(dir) || ms_device_init(&DEV, MS_DEV_CPU, 1)) {
        printf("setup failed\n");
        return 1;
    }
    snprintf(STORE, sizeof(STORE), "%s/s", dir);
    const fx_vol vols[] = {{200, 150, 4, 0}, {40, 48, 4, 0}, {90, 300, 3, 0}};
    ms_status rc = fx_make_store(STORE, SEED, vols, 3);
    MS_CHECK(rc == MS_OK, "building the test store: %s", ms_errmsg());
    if (!rc) rc = ms_store_open(STORE, 16, &ST);
    MS_CHECK(rc == MS_OK, "opening the test store: %s", ms_errmsg());
    if (!rc) {
        compare(MS_NORM_SAM);
        compare(MS_NORM_UNIT);
        refusals();
        ms_store_close(ST);
    }
    ms_device_free(&DEV);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("could not remove %s\n", dir);
    return ms_test_done();
}
