/* tests/finetune/test_eval_metrics.c — Dice/IoU counting against a naive double-precision reference on random label
 * volumes (fresh seed), the empty-class rule (NaN, never 1), thread-count independence, ms_mean_sd, HD95 against
 * a brute-force reference (every pair of surface voxels, anisotropic spacing), and NSD's hand cases and thread-count
 * independence (its brute-force reference: test_eval_nsd.sh). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/eval.h"
#include "harness.h"

/* The reference: for one class, straight from the definitions, in doubles. */
static void naive(const uint16_t *p, const uint16_t *g, int64_t n, int c, double *dice, double *iou)
{
    double inter = 0, uni = 0, sp = 0, sg = 0;
    for (int64_t i = 0; i < n; i++) {
        int a = p[i] == c, b = g[i] == c;
        inter += a && b;
        uni += a || b;
        sp += a;
        sg += b;
    }
    *dice = sp + sg > 0 ? 2 * inter / (sp + sg) : NAN;
    *iou = uni > 0 ? inter / uni : NAN;
}

static int is_surface(const uint16_t *m, const int64_t d[3], int64_t x, int64_t y, int64_t z, int c)
{
    static const int off[6][3] = {{-1, 0, 0}, {1, 0, 0}, {0, -1, 0}, {0, 1, 0}, {0, 0, -1}, {0, 0, 1}};
    if (m[x + d[0] * (y + d[1] * z)] != c) return 0;
    for (int k = 0; k < 6; k++) {
        int64_t X = x + off[k][0], Y = y + off[k][1], Z = z + off[k][2];
        if (X < 0 || Y < 0 || Z < 0 || X >= d[0] || Y >= d[1] || Z >= d[2]) return 1;
        if (m[X + d[0] * (Y + d[1] * Z)] != c) return 1;
    }
    return 0;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Brute force: all surface pairs, 95th percentile with linear interpolation, the larger direction. */
static double hd95_naive(const uint16_t *p, const uint16_t *g, const int64_t d[3], const double sp[3], int c)
{
    int64_t n = d[0] * d[1] * d[2], na = 0, nb = 0;
    double (*A)[3] = malloc((size_t)n * sizeof *A), (*B)[3] = malloc((size_t)n * sizeof *B);
    for (int64_t z = 0; z < d[2]; z++)
        for (int64_t y = 0; y < d[1]; y++)
            for (int64_t x = 0; x < d[0]; x++) {
                double w[3] = {x * sp[0], y * sp[1], z * sp[2]};
                if (is_surface(p, d, x, y, z, c)) memcpy(A[na++], w, sizeof w);
                if (is_surface(g, d, x, y, z, c)) memcpy(B[nb++], w, sizeof w);
            }
    double r;
    if (!na || !nb) r = na + nb ? INFINITY : NAN;
    else {
        r = 0;
        for (int dir = 0; dir < 2; dir++) {
            double (*F)[3] = dir ? B : A, (*G)[3] = dir ? A : B;
            int64_t nf = dir ? nb : na, ng = dir ? na : nb;
            double *dist = malloc((size_t)nf * sizeof *dist);
            for (int64_t i = 0; i < nf; i++) {
                double best = INFINITY;
                for (int64_t j = 0; j < ng; j++) {
                    double e = 0;
                    for (int k = 0; k < 3; k++) e += (F[i][k] - G[j][k]) * (F[i][k] - G[j][k]);
                    best = e < best ? e : best;
                }
                dist[i] = sqrt(best);
            }
            qsort(dist, (size_t)nf, sizeof *dist, cmp_d);
            double pos = 0.95 * (double)(nf - 1), fl = floor(pos);
            int64_t i0 = (int64_t)fl, i1 = i0 + 1 < nf ? i0 + 1 : i0;
            double q = dist[i0] + (pos - fl) * (dist[i1] - dist[i0]);
            r = q > r ? q : r;
            free(dist);
        }
    }
    free(A);
    free(B);
    return r;
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_rng r;
    ms_rng_init(&r, seed, 0);
    for (int trial = 0; trial < 6; trial++) {
        int64_t nx = 5 + (int64_t)(ms_rng_u64(&r) % 40), ny = 3 + (int64_t)(ms_rng_u64(&r) % 40),
                nz = 1 + (int64_t)(ms_rng_u64(&r) % 20), n = nx * ny * nz;
        int L = 2 + (int)(ms_rng_u64(&r) % (trial == 5 ? 700 : 9)); /* one trial above 255 */
        uint16_t *p = malloc((size_t)n * 2), *g = malloc((size_t)n * 2);
        /* ground truth random; prediction = gt with a random fraction of voxels relabelled */
        double flip = (double)(ms_rng_u64(&r) % 1000) / 1000.0;
        for (int64_t i = 0; i < n; i++) {
            g[i] = (uint16_t)(ms_rng_u64(&r) % (uint64_t)L);
            p[i] = (ms_rng_u64(&r) % 1000) / 1000.0 < flip ? (uint16_t)(ms_rng_u64(&r) % (uint64_t)L) : g[i];
        }
        /* class L-1 absent from both volumes in half the trials (the empty-class case) */
        int absent = trial % 2 ? L - 1 : -1;
        if (absent > 0)
            for (int64_t i = 0; i < n; i++) {
                if (p[i] == absent) p[i] = 0;
                if (g[i] == absent) g[i] = 0;
            }
        ms_overlap o1, o4;
        MS_CHECK_OK(ms_overlap_count(p, g, n, 1, &o1));
        MS_CHECK_OK(ms_overlap_count(p, g, n, 4, &o4));
        int bad = 0;
        for (int c = 1; c < L; c++) {
            double d, u;
            naive(p, g, n, c, &d, &u);
            int64_t in = c < o1.n_labels ? o1.inter[c] : 0, a = c < o1.n_labels ? o1.pred[c] : 0,
                    b = c < o1.n_labels ? o1.gt[c] : 0;
            double dd = ms_dice(in, a, b), uu = ms_iou(in, a, b);
            if (c == absent) {
                MS_CHECK(isnan(dd) && isnan(uu), "trial %d: class %d absent from both: dice %g iou %g, want NaN",
                         trial, c, dd, uu);
                continue;
            }
            if (isnan(d) != isnan(dd) || isnan(u) != isnan(uu)) bad++; /* NaN exactly when absent from both */
            else if (!isnan(d) && !(fabs(dd - d) <= 1e-12 && fabs(uu - u) <= 1e-12)) bad++;
            if (c < o1.n_labels && c < o4.n_labels &&
                (o1.inter[c] != o4.inter[c] || o1.pred[c] != o4.pred[c] || o1.gt[c] != o4.gt[c]))
                bad++;
        }
        MS_CHECK(bad == 0, "trial %d (%lldx%lldx%lld, %d labels): %d class mismatches vs the naive reference", trial,
                 (long long)nx, (long long)ny, (long long)nz, L, bad);
        ms_overlap_free(&o1);
        ms_overlap_free(&o4);
        free(p);
        free(g);
    }
    /* hand cases: empty prediction on non-empty truth is 0, not NaN; empty on empty is NaN */
    MS_CHECK(ms_dice(0, 0, 5) == 0.0 && ms_iou(0, 0, 5) == 0.0, "empty prediction on a non-empty truth must be 0");
    MS_CHECK(isnan(ms_dice(0, 0, 0)) && isnan(ms_iou(0, 0, 0)), "empty on empty must be NaN");
    MS_CHECK(ms_dice(3, 3, 3) == 1.0 && ms_iou(3, 3, 3) == 1.0, "identical sets");
    MS_CHECK(fabs(ms_dice(2, 4, 6) - 0.4) < 1e-15 && fabs(ms_iou(2, 4, 6) - 0.25) < 1e-15, "dice/iou 2,4,6");
    double v[5] = {1, NAN, 3, 5, INFINITY}, m, s;
    int k;
    ms_mean_sd(v, 5, &m, &s, &k);
    MS_CHECK(k == 3 && fabs(m - 3) < 1e-15 && fabs(s - 2) < 1e-15, "mean_sd: n %d mean %g sd %g", k, m, s);
    ms_mean_sd(v + 1, 1, &m, &s, &k);
    MS_CHECK(k == 0 && isnan(m) && isnan(s), "mean_sd of nothing must be NaN");
    /* HD95: random boxes with noise, anisotropic spacing, 1 and 3 threads */
    for (int trial = 0; trial < 5; trial++) {
        int64_t d[3] = {4 + (int64_t)(ms_rng_u64(&r) % 13), 3 + (int64_t)(ms_rng_u64(&r) % 13),
                        2 + (int64_t)(ms_rng_u64(&r) % 9)};
        double sp[3] = {0.5 + ms_rng_uniform(&r), 0.5 + ms_rng_uniform(&r), 1 + 2 * ms_rng_uniform(&r)};
        int64_t n = d[0] * d[1] * d[2];
        uint16_t *p = calloc((size_t)n, 2), *g = calloc((size_t)n, 2);
        for (int which = 0; which < 2; which++) {
            uint16_t *m = which ? g : p;
            for (int c = 1; c <= 2; c++) {
                int64_t lo[3], hi[3];
                for (int k = 0; k < 3; k++) {
                    lo[k] = (int64_t)(ms_rng_u64(&r) % (uint64_t)d[k]);
                    hi[k] = lo[k] + 1 + (int64_t)(ms_rng_u64(&r) % (uint64_t)(d[k] - lo[k]));
                }
                for (int64_t z = lo[2]; z < hi[2]; z++)
                    for (int64_t y = lo[1]; y < hi[1]; y++)
                        for (int64_t x = lo[0]; x < hi[0]; x++) m[x + d[0] * (y + d[1] * z)] = (uint16_t)c;
            }
            for (int64_t i = 0; i < n; i++)
                if (ms_rng_u64(&r) % 10 == 0) m[i] = (uint16_t)(ms_rng_u64(&r) % 3);
        }
        if (trial == 4) /* class 2 missing from the prediction: +inf; class 3 missing from both: NaN */
            for (int64_t i = 0; i < n; i++) p[i] = p[i] == 2 ? 0 : p[i];
        for (int c = 1; c <= 3; c++) {
            double want = hd95_naive(p, g, d, sp, c), got1, got3;
            MS_CHECK_OK(ms_hd95(p, g, d, sp, c, 1, &got1));
            MS_CHECK_OK(ms_hd95(p, g, d, sp, c, 3, &got3));
            int same = (isnan(want) && isnan(got1)) || (isinf(want) && isinf(got1)) || fabs(want - got1) <= 1e-9;
            MS_CHECK(same && (got1 == got3 || (isnan(got1) && isnan(got3))),
                     "hd95 trial %d class %d (%lldx%lldx%lld): %.12g (3 threads %.12g), naive %.12g", trial, c,
                     (long long)d[0], (long long)d[1], (long long)d[2], got1, got3, want);
        }
        free(p);
        free(g);
    }
    /* hand case: two single voxels 3 apart along z with spacing 2 mm: HD95 = 6 */
    {
        int64_t d[3] = {3, 3, 5};
        double sp[3] = {1, 1, 2}, h;
        uint16_t p[45] = {0}, g[45] = {0};
        p[4] = 1, g[4 + 27] = 1;
        MS_CHECK_OK(ms_hd95(p, g, d, sp, 1, 1, &h));
        MS_CHECK(fabs(h - 6) < 1e-12, "hd95 of two voxels: %g, want 6", h);
    }
    /* NSD (the brute-force reference is tests/finetune/nsd_check.py): two voxels side by side along x with spacing 2:
     * the shared face's corners are at distance 0, the far corners at 2 mm, all eight corner triangles of a voxel
     * have one area, so NSD is 1/2 below 2 mm and 1 from 2 mm on; one voxel against itself is 1, against nothing 0 */
    {
        int64_t d[3] = {3, 2, 2};
        double sp[3] = {2, 1, 1}, v1, v2, v3, v4;
        uint16_t p[12] = {0}, g[12] = {0}, z[12] = {0};
        p[0] = 1, g[1] = 1;
        MS_CHECK_OK(ms_nsd(p, g, d, sp, 1, 1.999, 1, &v1));
        MS_CHECK_OK(ms_nsd(p, g, d, sp, 1, 2.0, 1, &v2));
        MS_CHECK_OK(ms_nsd(p, p, d, sp, 1, 0.0, 1, &v3));
        MS_CHECK_OK(ms_nsd(p, z, d, sp, 1, 5.0, 1, &v4));
        MS_CHECK(fabs(v1 - 0.5) < 1e-12 && v2 == 1.0 && v3 == 1.0 && v4 == 0.0,
                 "nsd of two voxels: %.15g at 1.999 mm (want 0.5), %.15g at 2 mm (want 1), self %g, vs empty %g", v1,
                 v2, v3, v4);
        MS_CHECK_OK(ms_nsd(z, z, d, sp, 1, 1.0, 1, &v1));
        MS_CHECK(isnan(v1), "nsd of two empty masks: %g, want NaN", v1);
    }
    /* the thread count never changes NSD */
    for (int trial = 0; trial < 3; trial++) {
        int64_t d[3] = {3 + (int64_t)(ms_rng_u64(&r) % 20), 3 + (int64_t)(ms_rng_u64(&r) % 20),
                        1 + (int64_t)(ms_rng_u64(&r) % 12)};
        double sp[3] = {0.3 + 2 * ms_rng_uniform(&r), 0.3 + 2 * ms_rng_uniform(&r), 0.3 + 3 * ms_rng_uniform(&r)};
        int64_t n = d[0] * d[1] * d[2];
        uint16_t *p = malloc((size_t)n * 2), *g = malloc((size_t)n * 2);
        for (int64_t i = 0; i < n; i++) {
            g[i] = (uint16_t)(ms_rng_u64(&r) % 3);
            p[i] = ms_rng_u64(&r) % 4 ? g[i] : (uint16_t)(ms_rng_u64(&r) % 3);
        }
        double tol = 3 * ms_rng_uniform(&r), a, b;
        MS_CHECK_OK(ms_nsd(p, g, d, sp, 1, tol, 1, &a));
        MS_CHECK_OK(ms_nsd(p, g, d, sp, 1, tol, 3, &b));
        MS_CHECK(a == b && a >= 0 && a <= 1, "nsd trial %d: %.17g with 1 thread, %.17g with 3", trial, a, b);
        free(p);
        free(g);
    }
    return ms_test_done();
}
