/* tests/pretrain/test_mae_mask.c — window-stratified MAE masking (docs/MAE.md §Masking): per-window counts at 1024 and
 * at the vit_test size, every window holding the same number of slots, exact totals, no duplicates, ratio 0 keeping
 * everything, random sampling totals, and masks that depend only on (seed, sample key). */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "pretrain/mae_mask.h"

static void check_sample(ms_mae_mask *m, int b, float ratio, ms_mask_sampling how)
{
    int g = m->grid, L = g * g, W = m->n_windows, nw = m->padded / m->window;
    int32_t *keep = m->keep + (size_t)b * m->n_keep_max;
    int32_t *off = m->win_keep_off + (size_t)b * (W + 1);
    int32_t *poff = m->win_pad_off + (size_t)b * (W + 1);
    int32_t *pad = m->pad + (size_t)b * m->n_pad_max;
    MS_CHECK(m->n_keep[b] == (int)(L * (1.0 - ratio)), "sample %d keeps %d, expected %d", b, m->n_keep[b],
             (int)(L * (1.0 - ratio)));
    uint8_t *seen = calloc((size_t)L, 1);
    int dup = 0, wrong_window = 0, masked_count = 0;
    for (int w = 0; w < W; w++)
        for (int i = off[w]; i < off[w + 1]; i++) {
            int t = keep[i], y = t / g, x = t % g;
            if (seen[t]++) dup++;
            if ((y / m->window) * nw + x / m->window != w) wrong_window++;
        }
    for (int t = 0; t < L; t++) masked_count += m->masked[(size_t)b * L + t];
    MS_CHECK(dup == 0 && wrong_window == 0, "duplicates %d, tokens outside their window %d", dup, wrong_window);
    MS_CHECK(masked_count == L - m->n_keep[b], "mask marks %d hidden, expected %d", masked_count, L - m->n_keep[b]);
    int bad_pad = 0;
    for (int w = 0; w < W; w++)
        for (int i = poff[w]; i < poff[w + 1]; i++) {
            int y = pad[i] / m->padded, x = pad[i] % m->padded;
            if ((y < g && x < g) || (y / m->window) * nw + x / m->window != w) bad_pad++;
        }
    MS_CHECK(bad_pad == 0, "%d pad slots are real tokens or outside their window", bad_pad);
    if (how == MS_MASK_STRATIFIED && ratio == 0.75f && m->window == 14 && g == 64) {
        int off49 = 0;
        for (int w = 0; w < W; w++)
            if ((off[w + 1] - off[w]) + (poff[w + 1] - poff[w]) != 49) off49++;
        MS_CHECK(off49 == 0, "%d windows do not hold exactly 49 slots", off49);
    }
    free(seen);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    int real[64], pad[64];
    ms_mae_mask_stratified_counts(64, 14, 0.75f, real, pad);
    int n49 = 0, n28 = 0, n16 = 0, sum = 0;
    for (int w = 0; w < 25; w++) {
        sum += real[w];
        n49 += real[w] == 49 && pad[w] == 0;
        n28 += real[w] == 28 && pad[w] == 21;
        n16 += real[w] == 16 && pad[w] == 33;
    }
    MS_CHECK(n49 == 16 && n28 == 8 && n16 == 1 && sum == 1024, "1024 counts: %d full, %d edge, %d corner, sum %d",
             n49, n28, n16, sum);
    ms_mae_mask_stratified_counts(16, 14, 0.75f, real, pad);
    MS_CHECK(real[0] == 49 && real[1] == 7 && real[2] == 7 && real[3] == 1, "vit_test counts %d %d %d %d", real[0],
             real[1], real[2], real[3]);
    MS_CHECK(pad[0] == 0 && pad[1] == 42 && pad[2] == 42 && pad[3] == 48, "vit_test pads %d %d %d %d", pad[0], pad[1],
             pad[2], pad[3]);

    ms_mae_mask m;
    const int grids[] = {64, 16, 37};
    const float ratios[] = {0.75f, 0.5f, 0.9f, 0.0f};
    for (int gi = 0; gi < 3; gi++) {
        MS_CHECK_OK(ms_mae_mask_init(&m, grids[gi], 14, 3));
        for (int ri = 0; ri < 4; ri++)
            for (int how = 0; how < 2; how++)
                for (int b = 0; b < 3; b++) {
                    MS_CHECK_OK(ms_mae_mask_sample(&m, b, ratios[ri], (ms_mask_sampling)how, seed, 1000 + b));
                    check_sample(&m, b, ratios[ri], (ms_mask_sampling)how);
                }
        ms_mae_mask_free(&m);
    }

    /* same (seed, key) → same mask, whatever the slot; another key → another mask */
    ms_mae_mask a, c;
    MS_CHECK_OK(ms_mae_mask_init(&a, 64, 14, 2));
    MS_CHECK_OK(ms_mae_mask_init(&c, 64, 14, 2));
    MS_CHECK_OK(ms_mae_mask_sample(&a, 0, 0.75f, MS_MASK_STRATIFIED, seed, 42));
    MS_CHECK_OK(ms_mae_mask_sample(&c, 1, 0.75f, MS_MASK_STRATIFIED, seed, 42));
    MS_CHECK(!memcmp(a.masked, c.masked + 4096, 4096), "mask depends on the batch slot");
    MS_CHECK_OK(ms_mae_mask_sample(&c, 1, 0.75f, MS_MASK_STRATIFIED, seed, 43));
    MS_CHECK(memcmp(a.masked, c.masked + 4096, 4096) != 0, "different keys gave the same mask");
    /* ratio 0 keeps every token and every pad slot */
    MS_CHECK_OK(ms_mae_mask_sample(&a, 0, 0.0f, MS_MASK_STRATIFIED, seed, 1));
    MS_CHECK(a.n_keep[0] == 4096 && a.n_pad[0] == 70 * 70 - 4096, "ratio 0 keeps %d tokens, %d pads", a.n_keep[0],
             a.n_pad[0]);
    MS_CHECK(ms_mae_mask_sample(&a, 0, 1.0f, MS_MASK_STRATIFIED, seed, 1) == MS_EINVAL, "ratio 1 rejected");
    ms_mae_mask_free(&a);
    ms_mae_mask_free(&c);
    return ms_test_done();
}
