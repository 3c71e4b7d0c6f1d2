/* tests/augment/aug_checks.h — properties of the augmentations (augment/augment.h): flips and rot90 against index
 * maps and their inverses, affine(0°, scale 1) = identity, label values kept and intensities in [0,1] under every
 * transform at once, random-resized-crop boxes inside the image with areas in the configured range.
 * Included by tests/data/test_loader_units.c (ctest test_loader_units), which owns the harness's pass/fail counts;
 * each check takes the test's seed. */
#ifndef MS_TEST_AUG_CHECKS_H
#define MS_TEST_AUG_CHECKS_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "augment/augment.h"
#include "data/preprocess.h"
#include "harness.h"

static void test_flips(uint64_t seed)
{
    ms_rng r;
    ms_rng_init(&r, seed, 13);
    const int h = 37, w = 53, n = h * w;
    float *img = malloc(n * sizeof(float)), *ref = malloc(n * sizeof(float)), *tmp = malloc(n * sizeof(float));
    uint16_t *lab = malloc(n * 2), *lref = malloc(n * 2), *tl = malloc(n * 2);
    ms_fill_uniform(ref, n, &r, 0, 1);
    for (int i = 0; i < n; i++) lref[i] = (uint16_t)ms_rng_below(&r, 5);
    memcpy(img, ref, n * sizeof(float));
    memcpy(lab, lref, n * 2);
    ms_aug_hflip(img, lab, h, w);
    int moved = img[0] != ref[0] || img[w - 1] != ref[0 * w + w - 1];
    MS_CHECK(img[0] == ref[w - 1] && lab[5 * w] == lref[5 * w + w - 1], "hflip moved the wrong pixel");
    ms_aug_hflip(img, lab, h, w);
    MS_CHECK(moved && !memcmp(img, ref, n * sizeof(float)) && !memcmp(lab, lref, n * 2), "hflip twice != identity");
    ms_aug_vflip(img, lab, h, w);
    MS_CHECK(img[0] == ref[(h - 1) * w], "vflip moved the wrong pixel");
    ms_aug_vflip(img, lab, h, w);
    MS_CHECK(!memcmp(img, ref, n * sizeof(float)) && !memcmp(lab, lref, n * 2), "vflip twice != identity");
    int hh = h, ww = w;
    ms_aug_rot90(img, lab, &hh, &ww, 1, tmp, tl);
    /* numpy.rot90: out[i][j] = in[j][w-1-i] */
    MS_CHECK(hh == w && ww == h && img[2 * ww + 3] == ref[3 * w + (w - 1 - 2)], "rot90 convention");
    for (int k = 0; k < 3; k++) ms_aug_rot90(img, lab, &hh, &ww, 1, tmp, tl);
    MS_CHECK(hh == h && ww == w && !memcmp(img, ref, n * sizeof(float)) && !memcmp(lab, lref, n * 2),
             "rot90 four times != identity");
    ms_aug_rot90(img, lab, &hh, &ww, 3, tmp, tl);
    ms_aug_rot90(img, lab, &hh, &ww, 1, tmp, tl);
    MS_CHECK(!memcmp(img, ref, n * sizeof(float)), "rot90(3) then rot90(1) != identity");
    /* affine by 0 degrees and scale 1 is the identity (bilinear at integer positions) */
    ms_aug_affine(img, lab, h, w, 0.0f, 1.0f, tmp, tl);
    ms_cmp c = ms_compare_f(img, ref, n);
    MS_CHECK(c.max_abs < 1e-6 && !memcmp(lab, lref, n * 2), "affine(0, 1) differs by %g", c.max_abs);
    free(img), free(ref), free(tmp), free(lab), free(lref), free(tl);
}

static void test_label_values_and_range(uint64_t seed)
{
    ms_rng r;
    ms_rng_init(&r, seed, 14);
    const uint16_t vals[3] = {0, 3, 700};
    ms_aug_config c;
    ms_aug_config_seg(&c);
    c.p_hflip = c.p_vflip = c.p_rot90 = c.p_affine = c.p_gamma = c.p_contrast = c.p_noise = c.p_bias = 1.0f;
    c.max_rot_deg = 40;
    ms_prep_config pc;
    ms_prep_config_default(&pc, 128);
    ms_prep_scratch sc = {0};
    int bad_label = 0, bad_range = 0;
    for (int trial = 0; trial < 20; trial++) {
        int h = 20 + (int)ms_rng_below(&r, 60), w = 20 + (int)ms_rng_below(&r, 60), n = h * w;
        float *img = malloc(n * sizeof(float)), *tmp = malloc(n * sizeof(float));
        uint16_t *lab = malloc(n * 2), *tl = malloc(n * 2), *lo = malloc(32 * 32 * 2);
        ms_fill_uniform(img, n, &r, 0, 1);
        for (int i = 0; i < n; i++) lab[i] = vals[ms_rng_below(&r, 3)];
        ms_rng ar = {ms_rng_stream(seed, 1, (uint64_t)trial), 0};
        ms_box box;
        c.rrc = trial & 1;
        ms_aug_apply(&c, &ar, img, lab, &h, &w, tmp, tl, &box);
        for (int i = 0; i < h * w; i++) {
            bad_label += lab[i] != 0 && lab[i] != 3 && lab[i] != 700;
            bad_range += !(img[i] >= 0 && img[i] <= 1);
        }
        ms_prep_label(&pc, lab, h, w, &box, lo);
        for (int i = 0; i < 32 * 32; i++) bad_label += lo[i] != 0 && lo[i] != 3 && lo[i] != 700;
        free(img), free(tmp), free(lab), free(tl), free(lo);
    }
    MS_CHECK(bad_label == 0, "%d label pixels left the value set {0,3,700}", bad_label);
    MS_CHECK(bad_range == 0, "%d image pixels left [0,1]", bad_range);
    ms_prep_scratch_free(&sc);
}

static void test_rrc_bounds(uint64_t seed)
{
    ms_rng r;
    ms_rng_init(&r, seed, 15);
    const float scale[2] = {0.4f, 1.0f}, ratio[2] = {0.75f, 4.0f / 3.0f};
    int bad = 0, in_range = 0, total = 0;
    for (int t = 0; t < 5000; t++) {
        int h = 1 + (int)ms_rng_below(&r, 600), w = 1 + (int)ms_rng_below(&r, 600);
        if (t % 7 == 0) w = h * 5 + 1; /* extreme aspect ratios reach the fallback */
        ms_box b = ms_aug_rrc_box(&r, h, w, scale, ratio);
        bad += !(b.y0 >= 0 && b.x0 >= 0 && b.h >= 1 && b.w >= 1 && b.y0 + b.h <= h && b.x0 + b.w <= w);
        bad += b.y0 != floorf(b.y0) || b.h != floorf(b.h);
        if (h >= 64 && w >= 64 && w < 2 * h && h < 2 * w) {
            double a = (double)b.h * b.w / ((double)h * w);
            total++;
            in_range += a >= 0.38 && a <= 1.0;
        }
    }
    MS_CHECK(bad == 0, "%d crop boxes out of bounds", bad);
    MS_CHECK(in_range > total * 99 / 100, "crop areas in [0.4,1]: %d of %d", in_range, total);
}

#endif
