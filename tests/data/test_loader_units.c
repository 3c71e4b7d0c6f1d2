/* tests/data/test_loader_units.c — the loader's pure parts, no store needed: permutation, sharding, multi-store
 * order, splits by volume (no leakage; single-volume blocks with a gap), few-shot files, augmentation properties
 * (tests/augment/aug_checks.h), evenly spread validation subsets, and the resampler against an independent double-precision reference.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "augment/aug_checks.h"
#include "data/preprocess.h"
#include "data/sampler.h"
#include "harness.h"

static uint64_t SEED;

static void test_perm(void)
{
    const uint64_t ns[] = {1, 2, 3, 5, 16, 17, 100, 1000, 4097, 65536 + 3};
    for (size_t t = 0; t < sizeof(ns) / sizeof(ns[0]); t++) {
        uint64_t n = ns[t];
        unsigned char *seen = calloc(n, 1);
        ms_perm p, q;
        ms_perm_init(&p, n, ms_rng_stream(SEED, t, 0));
        ms_perm_init(&q, n, ms_rng_stream(SEED, t, 1));
        int bad = 0;
        uint64_t same = 0;
        for (uint64_t i = 0; i < n; i++) {
            uint64_t v = ms_perm_apply(&p, i);
            if (v >= n || seen[v]) bad = 1;
            else seen[v] = 1;
            same += v == ms_perm_apply(&q, i);
        }
        MS_CHECK(!bad, "permutation of %llu is not a bijection", (unsigned long long)n);
        if (n >= 100) MS_CHECK(same < n / 10, "two epochs' permutations of %llu agree at %llu places",
                               (unsigned long long)n, (unsigned long long)same);
        free(seen);
    }
}

/* Every record exactly once per epoch across W ranks, and W ranks == one process with batch B. */
static void test_sharding(void)
{
    ms_rng r;
    ms_rng_init(&r, SEED, 11);
    for (int trial = 0; trial < 6; trial++) {
        uint64_t n = 50 + ms_rng_below(&r, 300);
        const int W = 1 << (trial % 3), B = W * (1 + (int)ms_rng_below(&r, 6));
        ms_order o;
        MS_CHECK_OK(ms_order_init(&o, 1, &n, NULL, SEED + trial, 1, 0));
        int *count = calloc(n, sizeof(int));
        uint64_t steps = (n + B - 1) / B; /* no drop_last: the partial last batch too */
        int mismatch = 0;
        for (uint64_t g = 0; g < steps; g++)
            for (int rank = 0; rank < W; rank++)
                for (int k = 0; k < B / W; k++) {
                    uint64_t pos = ms_shard_position(g, B, rank, W, k);
                    if (pos >= n) continue;
                    int src;
                    uint64_t idx, idx1;
                    ms_order_at(&o, 3, pos, &src, &idx);
                    count[idx]++;
                    /* the same position in a single process: batch g, element pos - g*B */
                    ms_order_at(&o, 3, g * B + (pos - g * B), &src, &idx1);
                    mismatch += idx1 != idx || pos - g * B != (uint64_t)(rank + k * W);
                }
        int bad = 0;
        for (uint64_t i = 0; i < n; i++) bad += count[i] != 1;
        MS_CHECK(bad == 0 && mismatch == 0, "n %llu W %d B %d: %d records not seen exactly once, %d mismatches",
                 (unsigned long long)n, W, B, bad, mismatch);
        free(count);
    }
}

static void test_multi_order(void)
{
    uint64_t n[3] = {50, 200, 7};
    double w[3] = {1, 2, 1};
    ms_order o;
    MS_CHECK_OK(ms_order_init(&o, 3, n, w, SEED, 1, 0));
    MS_CHECK(o.quota[0] + o.quota[1] + o.quota[2] == MS_ORDER_BLOCK && o.quota[1] == MS_ORDER_BLOCK / 2,
             "quotas %d %d %d", o.quota[0], o.quota[1], o.quota[2]);
    const uint64_t total = 3 * MS_ORDER_BLOCK;
    uint64_t cnt[3] = {0};
    /* per source: draws in order; every n_s consecutive draws form a permutation */
    uint64_t *seq[3];
    for (int s = 0; s < 3; s++) seq[s] = calloc(total, sizeof(uint64_t));
    for (uint64_t t = 0; t < total; t++) {
        int s;
        uint64_t idx;
        ms_order_at(&o, t / o.epoch_len, t % o.epoch_len, &s, &idx);
        seq[s][cnt[s]++] = idx;
    }
    for (int s = 0; s < 3; s++) {
        MS_CHECK(cnt[s] == 3 * (uint64_t)o.quota[s], "source %d drawn %llu times, quota %d per block", s,
                 (unsigned long long)cnt[s], o.quota[s]);
        /* the source's draws are passes over its records: every record is drawn floor or ceil of cnt/n times */
        int bad = 0;
        uint64_t hits[256] = {0}, lo = cnt[s] / n[s];
        for (uint64_t i = 0; i < cnt[s]; i++) hits[seq[s][i] < n[s] ? seq[s][i] : 255] += seq[s][i] < n[s] ? 1 : 1000;
        for (uint64_t i = 0; i < n[s]; i++) bad += hits[i] != lo && hits[i] != lo + 1;
        MS_CHECK(bad == 0, "source %d: a pass repeats records (%d)", s, bad);
        free(seq[s]);
    }
}

static void make_vols(ms_volume_info *v, int nv, ms_rng *r, int labeled_every)
{
    uint64_t key = 0;
    for (int i = 0; i < nv; i++) {
        memset(&v[i], 0, sizeof(v[i]));
        v[i].id = (uint32_t)i;
        v[i].first_key = key;
        v[i].n_slices = 10 + (uint32_t)ms_rng_below(r, 40);
        v[i].height = v[i].width = 64;
        v[i].has_labels = labeled_every ? (i % labeled_every == 0) : 1;
        key += v[i].n_slices;
    }
}

static int volume_of(const ms_volume_info *v, int nv, uint64_t key)
{
    for (int i = 0; i < nv; i++)
        if (key >= v[i].first_key && key < v[i].first_key + v[i].n_slices) return i;
    return -1;
}

static void test_split(void)
{
    ms_rng r;
    ms_rng_init(&r, SEED, 12);
    ms_volume_info v[23];
    make_vols(v, 23, &r, 2);
    ms_split_spec sp;
    ms_split_spec_default(&sp);
    sp.seed = SEED;
    sp.labeled_only = 1;
    sp.val_fraction = 0.25;
    ms_selection tr = {0}, va = {0};
    int single = -1;
    MS_CHECK_OK(ms_split_volumes(v, 23, &sp, &tr, &va, &single));
    int side[23];
    for (int i = 0; i < 23; i++) side[i] = 0;
    int leak = 0, unlabeled = 0;
    for (uint64_t i = 0; i < tr.n; i++) {
        int vi = volume_of(v, 23, ms_selection_key(&tr, i));
        side[vi] |= 1;
        unlabeled += !v[vi].has_labels;
    }
    for (uint64_t i = 0; i < va.n; i++) {
        int vi = volume_of(v, 23, ms_selection_key(&va, i));
        side[vi] |= 2;
        unlabeled += !v[vi].has_labels;
    }
    int ntr = 0, nva = 0, partial = 0;
    for (int i = 0; i < 23; i++) {
        leak += side[i] == 3;
        ntr += side[i] == 1;
        nva += side[i] == 2;
    }
    /* whole volumes only: a selected volume contributes all its slices */
    for (int i = 0; i < 23; i++)
        if (side[i]) {
            const ms_selection *s = side[i] == 1 ? &tr : &va;
            for (uint32_t k = 0; k < v[i].n_slices; k++) partial += !ms_selection_contains(s, v[i].first_key + k);
        }
    MS_CHECK(leak == 0 && unlabeled == 0 && partial == 0 && single == 0,
             "split: %d volumes on both sides, %d unlabelled slices, %d partial volumes", leak, unlabeled, partial);
    MS_CHECK(ntr + nva == 12 && nva == 3, "split: %d train + %d val volumes of 12 labelled", ntr, nva);

    /* few-shot by slice: a subset of train, saved and reloaded exactly */
    ms_selection tr5 = {0}, va5 = {0}, tl = {0}, vl = {0};
    sp.shots = 5;
    MS_CHECK_OK(ms_split_volumes(v, 23, &sp, &tr5, &va5, NULL));
    int outside = 0;
    for (uint64_t i = 0; i < tr5.n; i++) outside += !ms_selection_contains(&tr, ms_selection_key(&tr5, i));
    MS_CHECK(tr5.n == 5 && outside == 0 && va5.n == va.n, "shots: %llu slices, %d outside train",
             (unsigned long long)tr5.n, outside);
    char path[256];
    snprintf(path, sizeof(path), "shots_%ld.json", (long)getpid());
    const char *paths[1] = {"store"};
    MS_CHECK_OK(ms_split_save(path, &sp, 1, paths, &tr5, &va5, NULL));
    MS_CHECK_OK(ms_split_load(path, 0, NULL, 0, &tl, &vl));
    int same = tl.n == tr5.n && vl.n == va5.n;
    for (uint64_t i = 0; same && i < tl.n; i++) same = ms_selection_key(&tl, i) == ms_selection_key(&tr5, i);
    for (uint64_t i = 0; same && i < vl.n; i++) same = ms_selection_key(&vl, i) == ms_selection_key(&va5, i);
    MS_CHECK(same, "split file round trip differs");
    unlink(path);
    /* few-shot by volume */
    ms_selection trv = {0};
    sp.shots = 2;
    sp.shot_unit = MS_SHOT_VOLUME;
    MS_CHECK_OK(ms_split_volumes(v, 23, &sp, &trv, NULL, NULL));
    int nvol = 0;
    for (int i = 0; i < 23; i++) {
        int in = 0;
        for (uint32_t k = 0; k < v[i].n_slices; k++) in += ms_selection_contains(&trv, v[i].first_key + k);
        MS_CHECK(in == 0 || in == (int)v[i].n_slices, "volume shots: volume %d partly selected", i);
        nvol += in > 0;
    }
    MS_CHECK(nvol == 2, "volume shots: %d volumes", nvol);
    ms_selection_free(&tr);
    ms_selection_free(&va);
    ms_selection_free(&tr5);
    ms_selection_free(&va5);
    ms_selection_free(&tl);
    ms_selection_free(&vl);
    ms_selection_free(&trv);

    /* one labelled volume: contiguous blocks at least 8 slices apart */
    for (int trial = 0; trial < 8; trial++) {
        ms_volume_info one[3];
        make_vols(one, 3, &r, 0);
        one[0].has_labels = one[2].has_labels = 0;
        one[1].n_slices = 30 + (uint32_t)ms_rng_below(&r, 100);
        one[2].first_key = one[1].first_key + one[1].n_slices;
        ms_split_spec s1;
        ms_split_spec_default(&s1);
        s1.seed = SEED + (uint64_t)trial;
        s1.labeled_only = 1;
        ms_selection a = {0}, b = {0};
        int sv = 0;
        MS_CHECK_OK(ms_split_volumes(one, 3, &s1, &a, &b, &sv));
        int64_t mind = INT64_MAX;
        for (uint64_t i = 0; i < a.n; i++)
            for (uint64_t j = 0; j < b.n; j++) {
                int64_t d = llabs((int64_t)ms_selection_key(&a, i) - (int64_t)ms_selection_key(&b, j));
                if (d < mind) mind = d;
            }
        int inside = 1;
        for (uint64_t i = 0; i < a.n; i++) inside &= volume_of(one, 3, ms_selection_key(&a, i)) == 1;
        for (uint64_t i = 0; i < b.n; i++) inside &= volume_of(one, 3, ms_selection_key(&b, i)) == 1;
        MS_CHECK(sv == 1 && a.n_ranges == 1 && b.n_ranges == 1 && mind > 8 && inside && b.n > 0 &&
                     a.n + b.n + 8 == one[1].n_slices,
                 "single volume split: sv %d, ranges %d/%d, min distance %lld, sizes %llu/%llu of %u", sv, a.n_ranges,
                 b.n_ranges, (long long)mind, (unsigned long long)a.n, (unsigned long long)b.n, one[1].n_slices);
        ms_selection_free(&a);
        ms_selection_free(&b);
    }

    /* one volume too short to hold out a block: the message names the problem (labelled or not) and the fix */
    for (int labeled = 0; labeled < 2; labeled++) {
        ms_volume_info one[1];
        make_vols(one, 1, &r, 0);
        one[0].has_labels = labeled;
        one[0].n_slices = 2 + (uint32_t)ms_rng_below(&r, 7);
        ms_split_spec s1;
        ms_split_spec_default(&s1);
        s1.labeled_only = labeled;
        ms_selection a = {0}, b = {0};
        ms_status st = ms_split_volumes(one, 1, &s1, &a, &b, NULL);
        const char *m = ms_errmsg();
        MS_CHECK(st == MS_EINVAL && strstr(m, "only ") && strstr(m, "--val-slices 0") &&
                     (strstr(m, "labelled") != NULL) == labeled,
                 "a %u-slice %s volume: %s", one[0].n_slices, labeled ? "labelled" : "unlabelled", m);
        ms_selection_free(&a);
        ms_selection_free(&b);
    }
}

/* ---- resampling ---- */

/* PIL's antialiased bilinear in double precision, written from the formula (support max(1, scale)). */
/* ms_selection_spread against a plain list of the keys: n of them, in key order,
 * record j at floor((j + 1/2) s->n / n); all of s when n >= s->n. */
static void test_spread(void)
{
    ms_rng r;
    ms_rng_init(&r, SEED, 0x5b7ead);
    for (int trial = 0; trial < 200; trial++) {
        ms_selection s = {0}, out;
        uint64_t keys[4096], nk = 0, at = ms_rng_u64(&r) % 1000;
        int nr = 1 + (int)(ms_rng_u64(&r) % 6);
        for (int i = 0; i < nr; i++) {
            uint64_t c = 1 + ms_rng_u64(&r) % 300;
            MS_CHECK_OK(ms_selection_add(&s, at, c));
            for (uint64_t k = 0; k < c; k++) keys[nk++] = at + k;
            at += c + 1 + ms_rng_u64(&r) % 50; /* a gap: several ranges stay several */
        }
        MS_CHECK_OK(ms_selection_finish(&s));
        uint64_t n = 1 + ms_rng_u64(&r) % (trial % 4 == 0 ? 2 * nk : 70);
        MS_CHECK_OK(ms_selection_spread(&s, n, &out));
        uint64_t m = n < nk ? n : nk;
        MS_CHECK(out.n == m, "spread: %llu of %llu records gave %llu", (unsigned long long)n,
                 (unsigned long long)nk, (unsigned long long)out.n);
        double step = (double)nk / (double)m;
        int bad = 0;
        for (uint64_t j = 0; j < out.n && j < m; j++) {
            uint64_t key = ms_selection_key(&out, j);
            uint64_t idx = 0; /* the record's index in s, from the plain list */
            while (idx < nk && keys[idx] != key) idx++;
            double want = (j + 0.5) * step;
            if (idx == nk || (double)idx > want + 1e-9 || want - (double)idx >= 1) bad = 1; /* floor(want) */
        }
        MS_CHECK(!bad, "spread (seed %llu, trial %d): %llu of %llu records not evenly spread",
                 (unsigned long long)SEED, trial, (unsigned long long)m, (unsigned long long)nk);
        ms_selection_free(&out);
        ms_selection_free(&s);
    }
}

static void ref_resize(const float *in, int h, int w, ms_box b, double *out, int oh, int ow)
{
    double *mid = malloc(sizeof(double) * h * ow);
    for (int pass = 0; pass < 2; pass++) {
        int olen = pass ? oh : ow, ilen = pass ? h : w;
        double start = pass ? b.y0 : b.x0, len = pass ? b.h : b.w, scale = len / olen;
        double sup = scale > 1 ? scale : 1;
        int lo = (int)floor(start), hi = (int)ceil(start + len);
        if (hi > ilen) hi = ilen;
        for (int i = 0; i < olen; i++) {
            double c = start + (i + 0.5) * scale, wsum = 0;
            double acc[4096];
            int nacc = pass ? ow : h;
            for (int a = 0; a < nacc; a++) acc[a] = 0;
            for (int j = lo; j < hi; j++) {
                double x = fabs((j + 0.5 - c) / sup), wt = x < 1 ? 1 - x : 0;
                if (wt <= 0) continue;
                wsum += wt;
                for (int a = 0; a < nacc; a++) acc[a] += wt * (pass ? mid[(size_t)j * ow + a] : in[(size_t)a * w + j]);
            }
            for (int a = 0; a < nacc; a++) {
                if (pass) out[(size_t)i * ow + a] = acc[a] / wsum;
                else mid[(size_t)a * ow + i] = acc[a] / wsum;
            }
        }
    }
    free(mid);
}

static void test_resize(void)
{
    ms_rng r;
    ms_rng_init(&r, SEED, 16);
    ms_prep_scratch sc = {0};
    double worst = 0;
    for (int t = 0; t < 12; t++) {
        int h = 8 + (int)ms_rng_below(&r, 300), w = 8 + (int)ms_rng_below(&r, 300);
        int oh = 4 + (int)ms_rng_below(&r, 300), ow = 4 + (int)ms_rng_below(&r, 300);
        ms_box b = {0, 0, (float)h, (float)w};
        if (t & 1) {
            b.h = (float)(1 + ms_rng_below(&r, (uint64_t)h));
            b.w = (float)(1 + ms_rng_below(&r, (uint64_t)w));
            b.y0 = (float)ms_rng_below(&r, (uint64_t)(h - (int)b.h + 1));
            b.x0 = (float)ms_rng_below(&r, (uint64_t)(w - (int)b.w + 1));
        }
        float *in = malloc(sizeof(float) * h * w), *out = malloc(sizeof(float) * oh * ow);
        double *ref = malloc(sizeof(double) * oh * ow);
        ms_fill_uniform(in, h * w, &r, 0, 1);
        MS_CHECK_OK(ms_resize_bilinear(in, h, w, &b, out, oh, ow, ow, &sc));
        ref_resize(in, h, w, b, ref, oh, ow);
        ms_cmp c = ms_compare(out, ref, (int64_t)oh * ow);
        if (c.max_abs > worst) worst = c.max_abs;
        MS_CHECK(c.max_abs < 2e-5, "resize %dx%d box %gx%g → %dx%d: max |diff| %g vs reference", h, w, b.h, b.w, oh,
                 ow, c.max_abs);
        /* upsampling equals plain bilinear (align_corners=False, edge clamp): an independent formula */
        if (b.h <= oh && b.w <= ow && !(t & 1)) {
            double md = 0;
            for (int y = 0; y < oh; y++)
                for (int x = 0; x < ow; x++) {
                    double sy = (y + 0.5) * h / oh - 0.5, sx = (x + 0.5) * w / ow - 0.5;
                    sy = sy < 0 ? 0 : sy, sx = sx < 0 ? 0 : sx;
                    int y0 = (int)sy, x0 = (int)sx, y1 = y0 + 1 < h ? y0 + 1 : h - 1, x1 = x0 + 1 < w ? x0 + 1 : w - 1;
                    double fy = sy - y0, fx = sx - x0;
                    double v = (1 - fy) * ((1 - fx) * in[y0 * w + x0] + fx * in[y0 * w + x1]) +
                               fy * ((1 - fx) * in[y1 * w + x0] + fx * in[y1 * w + x1]);
                    double d = fabs(v - out[y * ow + x]);
                    if (d > md) md = d;
                }
            MS_CHECK(md < 2e-5, "upsampling differs from plain bilinear by %g", md);
        }
        free(in), free(out), free(ref);
    }
    printf("resize vs double reference: worst max|diff| %.3g\n", worst);
    ms_prep_scratch_free(&sc);
}

/* PyTorch's F.interpolate(bilinear, antialias=True) on fixed inputs (tests/data/gen_golden_resample.py). */
static void test_resample_torch(void)
{
    char path[1024];
    const char *src = getenv("MS_SOURCE_DIR");
    snprintf(path, sizeof(path), "%s/tests/data/golden/resample_aa.bin", src ? src : "../..");
    FILE *f = fopen(path, "rb");
    MS_CHECK(f != NULL, "cannot open %s (set MS_SOURCE_DIR)", path);
    if (!f) return;
    int32_t nc = 0;
    MS_CHECK(fread(&nc, 4, 1, f) == 1 && nc > 0 && nc < 100, "bad golden header");
    ms_prep_scratch sc = {0};
    for (int c = 0; c < nc; c++) {
        int32_t p[8];
        if (fread(p, 4, 8, f) != 8 || p[0] < 1 || p[1] < 1 || p[0] > 4096 || p[1] > 4096 || p[6] < 1 || p[7] < 1 ||
            p[6] > 4096 || p[7] > 4096) {
            MS_CHECK(0, "bad golden case %d", c);
            break;
        }
        const int h = p[0], w = p[1], oh = p[6], ow = p[7];
        float *in = malloc(sizeof(float) * h * w), *want = malloc(sizeof(float) * oh * ow),
              *got = malloc(sizeof(float) * oh * ow);
        int ok = fread(in, sizeof(float), (size_t)h * w, f) == (size_t)h * w &&
                 fread(want, sizeof(float), (size_t)oh * ow, f) == (size_t)oh * ow;
        MS_CHECK(ok, "short golden file");
        if (ok) {
            ms_box b = {(float)p[2], (float)p[3], (float)p[4], (float)p[5]};
            MS_CHECK_OK(ms_resize_bilinear(in, h, w, &b, got, oh, ow, ow, &sc));
            ms_cmp cm = ms_compare_f(got, want, (int64_t)oh * ow);
            MS_CHECK(cm.max_abs < 1e-5, "case %d (%dx%d box %d,%d %dx%d → %dx%d): max |diff| vs torch %g", c, h, w,
                     p[2], p[3], p[4], p[5], oh, ow, cm.max_abs);
            printf("torch antialiased bilinear, case %d: max |diff| %.3g\n", c, cm.max_abs);
        }
        free(in), free(want), free(got);
        if (!ok) break;
    }
    fclose(f);
    ms_prep_scratch_free(&sc);
}

static void test_prep(void)
{
    ms_rng r;
    ms_rng_init(&r, SEED, 17);
    ms_prep_scratch sc = {0};
    /* a constant image gives a constant frame and zero padding, for both resize modes, crops and sizes */
    for (int t = 0; t < 8; t++) {
        ms_prep_config c;
        ms_prep_config_default(&c, (t & 1) ? 256 : 160);
        c.resize = (t & 2) ? MS_RESIZE_STRETCH : MS_RESIZE_LONGEST;
        c.norm = (t & 4) ? MS_NORM_UNIT : MS_NORM_SAM;
        int h = 20 + (int)ms_rng_below(&r, 400), w = 20 + (int)ms_rng_below(&r, 400);
        float v = ms_rng_range(&r, 0.05f, 1.0f);
        float *in = malloc(sizeof(float) * h * w), *out = malloc(sizeof(float) * 3 * c.size * c.size);
        for (int i = 0; i < h * w; i++) in[i] = v;
        ms_box b = {(float)(h / 5), (float)(w / 7), (float)(h / 2), (float)(w / 2)};
        MS_CHECK_OK(ms_prep_image(&c, in, h, w, (t & 1) ? &b : NULL, out, &sc));
        int oh, ow;
        ms_prep_frame(&c, (t & 1) ? b.h : (float)h, (t & 1) ? b.w : (float)w, &oh, &ow);
        double md = 0;
        int badpad = 0;
        for (int ch = 0; ch < 3; ch++) {
            double want = c.norm == MS_NORM_SAM ? (v * 255.0 - ms_sam_pixel_mean[ch]) / ms_sam_pixel_std[ch] : v;
            for (int y = 0; y < c.size; y++)
                for (int x = 0; x < c.size; x++) {
                    float o = out[((size_t)ch * c.size + y) * c.size + x];
                    if (y < oh && x < ow) md = fmax(md, fabs(o - want));
                    else badpad += o != 0.0f;
                }
        }
        MS_CHECK(md < 1e-5 && badpad == 0, "constant %g image %dx%d → %d (mode %d): max dev %g, %d non-zero pads", v,
                 h, w, c.size, t, md, badpad);
        MS_CHECK(c.resize == MS_RESIZE_STRETCH || (oh == c.size || ow == c.size), "longest side not %d", c.size);
        free(in), free(out);
    }
    /* 1024 in, 1024 out: the resize is the identity; only the normalisation changes values */
    {
        ms_prep_config c;
        ms_prep_config_default(&c, 1024);
        const int n = 1024 * 1024;
        float *in = malloc(sizeof(float) * n), *out = malloc(sizeof(float) * 3 * n), *id = malloc(sizeof(float) * n);
        ms_fill_uniform(in, n, &r, 0, 1);
        ms_box full = {0, 0, 1024, 1024};
        MS_CHECK_OK(ms_resize_bilinear(in, 1024, 1024, &full, id, 1024, 1024, 1024, &sc));
        MS_CHECK(!memcmp(in, id, sizeof(float) * n), "1024 → 1024 resize is not bit-exact");
        MS_CHECK_OK(ms_prep_image(&c, in, 1024, 1024, NULL, out, &sc));
        double md = 0;
        for (int ch = 0; ch < 3; ch++)
            for (int i = 0; i < n; i++)
                md = fmax(md, fabs(out[(size_t)ch * n + i] -
                                   ((double)in[i] * 255.0 - ms_sam_pixel_mean[ch]) / ms_sam_pixel_std[ch]));
        MS_CHECK(md < 2e-6 * 5, "1024 → 1024 preprocessing deviates from normalise-only by %g", md);
        free(in), free(out), free(id);
    }
    /* SAM's get_preprocess_shape, and label frame: a 200x100 slice at 1024 fills 1024x512, labels 256x128 */
    {
        ms_prep_config c;
        ms_prep_config_default(&c, 1024);
        int oh, ow;
        ms_prep_frame(&c, 200, 100, &oh, &ow);
        MS_CHECK(oh == 1024 && ow == 512, "frame of 200x100: %dx%d", oh, ow);
        ms_prep_frame(&c, 333, 500, &oh, &ow);
        MS_CHECK(oh == 682 && ow == 1024, "frame of 333x500: %dx%d (want int(333*1024/500+0.5)=682)", oh, ow);
        uint16_t *lab = malloc(200 * 100 * 2), *lo = malloc(256 * 256 * 2);
        for (int i = 0; i < 200 * 100; i++) lab[i] = (uint16_t)(1 + (i % 100 >= 50));
        ms_prep_label(&c, lab, 200, 100, NULL, lo);
        int bad = 0;
        for (int y = 0; y < 256; y++)
            for (int x = 0; x < 256; x++) {
                uint16_t want = x >= 128 ? 0 : (x >= 64 ? 2 : 1);
                bad += lo[y * 256 + x] != want;
            }
        MS_CHECK(bad == 0, "label frame/padding: %d wrong pixels", bad);
        free(lab), free(lo);
    }
    ms_prep_scratch_free(&sc);
}

int main(void)
{
    SEED = ms_test_seed();
    test_perm();
    test_sharding();
    test_multi_order();
    test_split();
    test_spread();
    test_flips(SEED);
    test_label_values_and_range(SEED);
    test_rrc_bounds(SEED);
    test_resize();
    test_resample_torch();
    test_prep();
    return ms_test_done();
}
