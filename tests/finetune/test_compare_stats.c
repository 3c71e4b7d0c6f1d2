/* tests/finetune/test_compare_stats.c — the statistics of `mrisam compare` (finetune/compare.h) and the key
 * exclusion its pretraining relies on (data/sampler.h ms_split_spec.exclude):
 *  - ms_t_crit95(df) against an independent quantile: the Student t density integrated numerically (Simpson, from
 *    lgamma) to 0.475, for df 1..120 (the table for 1..30, its expansion beyond); NaN for df < 1;
 *  - ms_paired_diff on random pairs (some NaN or inf, which drop out) against a direct two-pass computation;
 *  - ms_split_volumes with random volumes and a random exclusion: no excluded key in train or val, and every other
 *    key of the unexcluded split still there.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/sampler.h"
#include "finetune/compare.h"
#include "harness.h"

/* P(0 < T < x) for Student t with df degrees of freedom (Simpson on the density). */
static double t_mass(double x, int df)
{
    const int n = 20000;
    double v = df, c = exp(lgamma((v + 1) / 2) - lgamma(v / 2)) / sqrt(v * M_PI), h = x / n, s = 0;
    for (int i = 0; i <= n; i++) {
        double y = c * pow(1 + (i * h) * (i * h) / v, -(v + 1) / 2);
        s += (i == 0 || i == n ? 1 : i % 2 ? 4 : 2) * y;
    }
    return s * h / 3;
}

static void test_t(void)
{
    for (int df = 1; df <= 120; df++) {
        double q = ms_t_crit95(df), m = t_mass(q, df);
        MS_CHECK(fabs(m - 0.475) < 2e-6, "df %d: t %.9f holds mass %.9f of (0, t), want 0.475", df, q, m);
    }
    MS_CHECK(isnan(ms_t_crit95(0)) && isnan(ms_t_crit95(-3)), "df < 1 gives NaN");
}

static void test_paired(uint64_t seed)
{
    for (int trial = 0; trial < 50; trial++) {
        int n = 1 + (int)(ms_rand_u64(seed, (uint64_t)trial * 1000) % 12);
        double a[12], b[12], d[12];
        int k = 0;
        for (int i = 0; i < n; i++) {
            a[i] = ms_rand_uniform(seed, (uint64_t)trial * 1000 + 1 + (uint64_t)i);
            b[i] = ms_rand_uniform(seed, (uint64_t)trial * 1000 + 100 + (uint64_t)i);
            uint64_t r = ms_rand_u64(seed, (uint64_t)trial * 1000 + 200 + (uint64_t)i) % 8;
            if (r == 0) a[i] = NAN;
            if (r == 1) b[i] = INFINITY;
            if (isfinite(a[i]) && isfinite(b[i])) d[k++] = a[i] - b[i];
        }
        ms_paired p;
        ms_paired_diff(a, b, n, &p);
        double mean = 0, ss = 0;
        for (int i = 0; i < k; i++) mean += d[i] / k;
        for (int i = 0; i < k; i++) ss += (d[i] - mean) * (d[i] - mean);
        MS_CHECK(p.n == k, "trial %d: n %d, want %d", trial, p.n, k);
        if (k == 0) {
            MS_CHECK(isnan(p.mean) && isnan(p.lo), "trial %d: no pair gives NaN", trial);
            continue;
        }
        double sd = k > 1 ? sqrt(ss / (k - 1)) : 0;
        MS_CHECK(fabs(p.mean - mean) < 1e-12 && fabs(p.sd - sd) < 1e-12, "trial %d: mean %g sd %g, want %g %g", trial,
                 p.mean, p.sd, mean, sd);
        if (k >= 2) {
            double half = ms_t_crit95(k - 1) * sd / sqrt(k);
            MS_CHECK(fabs(p.lo - (mean - half)) < 1e-12 && fabs(p.hi - (mean + half)) < 1e-12,
                     "trial %d: interval [%g, %g], want [%g, %g]", trial, p.lo, p.hi, mean - half, mean + half);
        } else {
            MS_CHECK(isnan(p.lo) && isnan(p.hi), "trial %d: one pair has no interval", trial);
        }
    }
}

static void test_exclude(uint64_t seed)
{
    for (int trial = 0; trial < 40; trial++) {
        uint64_t s = seed + (uint64_t)trial * 7919;
        int nv = 1 + (int)(ms_rand_u64(s, 0) % 6);
        ms_volume_info v[6];
        memset(v, 0, sizeof v);
        uint64_t key = 0;
        for (int i = 0; i < nv; i++) {
            v[i].id = (uint32_t)i;
            v[i].first_key = key;
            v[i].n_slices = 40 + (uint32_t)(ms_rand_u64(s, 1 + (uint64_t)i) % 40);
            v[i].has_labels = 1;
            key += v[i].n_slices;
        }
        uint8_t *ex = calloc(key, 1);
        ms_selection exs = {0};
        for (int r = 0; r < 4; r++) { /* a few random ranges, possibly touching */
            uint64_t f = ms_rand_u64(s, 10 + (uint64_t)r) % key, c = 1 + ms_rand_u64(s, 20 + (uint64_t)r) % 30;
            if (f + c > key) c = key - f;
            for (uint64_t k = f; k < f + c; k++) ex[k] = 1;
        }
        for (uint64_t k = 0; k < key;) { /* the exclusion as sorted disjoint ranges */
            if (!ex[k]) { k++; continue; }
            uint64_t e = k;
            while (e < key && ex[e]) e++;
            MS_CHECK_OK(ms_selection_add(&exs, k, e - k));
            k = e;
        }
        MS_CHECK_OK(ms_selection_finish(&exs));
        ms_split_spec sp;
        ms_split_spec_default(&sp);
        sp.seed = s;
        sp.val_fraction = 0.2;
        ms_selection tr0 = {0}, va0 = {0}, tr1 = {0}, va1 = {0};
        MS_CHECK_OK(ms_split_volumes(v, nv, &sp, &tr0, &va0, NULL));
        sp.exclude = &exs;
        MS_CHECK_OK(ms_split_volumes(v, nv, &sp, &tr1, &va1, NULL));
        int bad = 0;
        for (uint64_t k = 0; k < key; k++) {
            int want_t = ms_selection_contains(&tr0, k) && !ex[k], want_v = ms_selection_contains(&va0, k) && !ex[k];
            bad += ms_selection_contains(&tr1, k) != want_t || ms_selection_contains(&va1, k) != want_v;
        }
        MS_CHECK(bad == 0, "trial %d: %d keys wrong after the exclusion of %llu keys", trial, bad,
                 (unsigned long long)exs.n);
        uint64_t cnt = 0;
        for (uint64_t i = 0; i < tr1.n; i++) cnt += !ex[ms_selection_key(&tr1, i)];
        MS_CHECK(cnt == tr1.n, "trial %d: the train selection's keys by index", trial);
        ms_selection_free(&tr0), ms_selection_free(&va0), ms_selection_free(&tr1), ms_selection_free(&va1);
        ms_selection_free(&exs);
        free(ex);
    }
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    test_t();
    test_paired(seed);
    test_exclude(seed);
    return ms_test_done();
}
