/* tests/finetune/test_prompt_gen.c — prompt generation from label maps (finetune/prompt_gen.h) against references
 * written here: a BFS flood fill for the components, a brute-force double-precision distance transform, and the
 * sampling rules re-derived from those for points and boxes; then the batch layout field by field.
 */
#include <string.h>

#include "finetune/prompt_gen.h"
#include "harness.h"

/* ---- references -------------------------------------------------------------------------------------------- */

/* BFS flood fill, 8-connectivity; ids in raster order of each component's first pixel. lab (h·w): −1 or id.
 * Returns the count; size (h·w capacity). */
static int ref_label(const uint8_t *m, int h, int w, int *lab, int64_t *size)
{
    int *q = malloc((size_t)h * w * sizeof *q), n = 0;
    for (int i = 0; i < h * w; i++) lab[i] = -1;
    for (int s = 0; s < h * w; s++) {
        if (!m[s] || lab[s] >= 0) continue;
        int head = 0, tail = 0;
        q[tail++] = s;
        lab[s] = n;
        size[n] = 0;
        while (head < tail) {
            int c = q[head++], cy = c / w, cx = c % w;
            size[n]++;
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) {
                    int y = cy + dy, x = cx + dx;
                    if (y < 0 || y >= h || x < 0 || x >= w) continue;
                    int j = y * w + x;
                    if (m[j] && lab[j] < 0) {
                        lab[j] = n;
                        q[tail++] = j;
                    }
                }
        }
        n++;
    }
    free(q);
    return n;
}

/* rank[id]: position of component id when sorted by size descending, ties by id (= first pixel). Selection by
 * repeated max scan, independent of qsort. */
static void ref_rank(const int64_t *size, int n, int *rank)
{
    char *used = calloc((size_t)n + 1, 1);
    for (int r = 0; r < n; r++) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (!used[i] && (best < 0 || size[i] > size[best])) best = i;
        used[best] = 1;
        rank[best] = r;
    }
    free(used);
}

/* Squared distance of (y, x) to the nearest pixel with fg == 0 or outside the image, by brute force. */
static double ref_d2(const uint8_t *fg, int h, int w, int y, int x)
{
    if (!fg[y * w + x]) return 0.0;
    double b = y + 1.0;
    if (h - y < b) b = h - y;
    if (x + 1.0 < b) b = x + 1.0;
    if (w - x < b) b = w - x;
    double best = b * b;
    for (int v = 0; v < h; v++)
        for (int u = 0; u < w; u++)
            if (!fg[v * w + u]) {
                double d = (double)(v - y) * (v - y) + (double)(u - x) * (u - x);
                if (d < best) best = d;
            }
    return best;
}

/* Random blobs: discs, rectangles, lone pixels and diagonal pairs, at density `fill` of shapes. */
static void gen_mask(ms_rng *r, uint8_t *m, int h, int w, int n_shapes)
{
    memset(m, 0, (size_t)h * w);
    for (int s = 0; s < n_shapes; s++) {
        int kind = (int)ms_rng_below(r, 4);
        int cy = (int)ms_rng_below(r, (uint64_t)h), cx = (int)ms_rng_below(r, (uint64_t)w);
        if (kind == 0) {
            float rad = ms_rng_range(r, 1.0f, 0.25f * (float)(h < w ? h : w) + 1.5f);
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    if ((y - cy) * (y - cy) + (x - cx) * (x - cx) <= rad * rad) m[y * w + x] = 1;
        } else if (kind == 1) {
            int rh = 1 + (int)ms_rng_below(r, (uint64_t)(h / 3 + 1)), rw = 1 + (int)ms_rng_below(r, (uint64_t)(w / 3 + 1));
            for (int y = cy; y < cy + rh && y < h; y++)
                for (int x = cx; x < cx + rw && x < w; x++) m[y * w + x] = 1;
        } else if (kind == 2) {
            m[cy * w + cx] = 1;
        } else if (cy + 1 < h && cx + 1 < w) { /* diagonal pair: one component under 8-connectivity */
            m[cy * w + cx] = 1;
            m[(cy + 1) * w + cx + 1] = 1;
        }
    }
}

/* Everything the point / box checks need about one mask. */
typedef struct {
    int h, w, n;
    int *rank;      /* (h·w) −1 or rank by size */
    int64_t *size;  /* by rank */
    int bb[64][4];  /* by rank */
} ref_regions;

static void ref_regions_make(ref_regions *R, const uint8_t *m, int h, int w)
{
    int *lab = malloc((size_t)h * w * sizeof *lab), *rk = malloc((size_t)h * w * sizeof *rk);
    int64_t *sz = malloc((size_t)h * w * sizeof *sz);
    R->h = h, R->w = w;
    R->n = ref_label(m, h, w, lab, sz);
    ref_rank(sz, R->n, rk);
    R->rank = malloc((size_t)h * w * sizeof *R->rank);
    R->size = calloc((size_t)R->n + 1, sizeof *R->size);
    for (int i = 0; i < R->n; i++) R->size[rk[i]] = sz[i];
    for (int r = 0; r < 64; r++) R->bb[r][0] = w, R->bb[r][1] = h, R->bb[r][2] = -1, R->bb[r][3] = -1;
    for (int i = 0; i < h * w; i++) {
        R->rank[i] = lab[i] < 0 ? -1 : rk[lab[i]];
        int r = R->rank[i], y = i / w, x = i % w;
        if (r < 0 || r >= 64) continue;
        if (x < R->bb[r][0]) R->bb[r][0] = x;
        if (y < R->bb[r][1]) R->bb[r][1] = y;
        if (x > R->bb[r][2]) R->bb[r][2] = x;
        if (y > R->bb[r][3]) R->bb[r][3] = y;
    }
    free(lab), free(rk), free(sz);
}

static void ref_regions_free(ref_regions *R) { free(R->rank), free(R->size); }

/* Squared distances of region r (alone) at every pixel, and its threshold max(d[floor(ratio·n)], 1) on d²
 * sorted descending (selection by counting, not sorting). */
static double *ref_region_d2(const ref_regions *R, int r, double ratio, double *thr)
{
    int h = R->h, w = R->w;
    uint8_t *fg = malloc((size_t)h * w);
    double *d2 = malloc((size_t)h * w * sizeof *d2);
    for (int i = 0; i < h * w; i++) fg[i] = R->rank[i] == r;
    int64_t n = 0;
    for (int i = 0; i < h * w; i++) {
        d2[i] = ref_d2(fg, h, w, i / w, i % w);
        n += fg[i];
    }
    int64_t t = (int64_t)(ratio * (double)n);
    /* the value v with #{d2 > v} <= t < #{d2 >= v} */
    double v = -1;
    for (int i = 0; i < h * w; i++) {
        if (!fg[i]) continue;
        int64_t gt = 0, ge = 0;
        for (int j = 0; j < h * w; j++)
            if (fg[j]) gt += d2[j] > d2[i], ge += d2[j] >= d2[i];
        if (gt <= t && t < ge) v = d2[i];
    }
    *thr = v > 1.0 ? v : 1.0;
    free(fg);
    return d2;
}

/* ---- tests -------------------------------------------------------------------------------------------------- */

static void test_components(ms_rng *r)
{
    int checked = 0;
    for (int it = 0; it < 60; it++) {
        int h = 1 + (int)ms_rng_below(r, 60), w = 1 + (int)ms_rng_below(r, 60);
        uint8_t *m = malloc((size_t)h * w);
        if (it % 3 == 2) /* salt noise: many small, diagonally touching components */
            for (int i = 0; i < h * w; i++) m[i] = ms_rng_uniform(r) < 0.35f;
        else
            gen_mask(r, m, h, w, 1 + (int)ms_rng_below(r, 12));
        int32_t *comp = malloc((size_t)h * w * sizeof *comp);
        int64_t sizes[8];
        int n = -1;
        MS_CHECK_OK(ms_components(m, h, w, comp, sizes, 8, &n));
        ref_regions R;
        ref_regions_make(&R, m, h, w);
        MS_CHECK(n == R.n, "components %dx%d: %d vs reference %d", h, w, n, R.n);
        int bad = 0;
        for (int i = 0; i < h * w; i++) bad += comp[i] != R.rank[i];
        MS_CHECK(bad == 0, "components %dx%d: %d pixels with a different rank", h, w, bad);
        for (int k = 0; k < n && k < 8; k++) MS_CHECK(sizes[k] == R.size[k], "size[%d] %lld vs %lld", k,
                                                      (long long)sizes[k], (long long)R.size[k]);
        for (int k = 1; k < n && k < 8; k++) MS_CHECK(sizes[k] <= sizes[k - 1], "sizes not descending at %d", k);
        checked += n;
        ref_regions_free(&R);
        free(m), free(comp);
    }
    /* hand-made: a diagonal chain is one region; equal sizes keep the raster order of first pixels */
    const char *pic[] = {"#...#.",
                         ".#...#",
                         "..#...",
                         "......",
                         "##..##"};
    uint8_t m[30];
    for (int y = 0; y < 5; y++)
        for (int x = 0; x < 6; x++) m[y * 6 + x] = pic[y][x] == '#';
    int32_t comp[30];
    int64_t sizes[4];
    int n = 0;
    MS_CHECK_OK(ms_components(m, 5, 6, comp, sizes, 4, &n));
    MS_CHECK(n == 4 && comp[0] == 0 && comp[7] == 0 && comp[14] == 0 && comp[4] == 1 && comp[11] == 1 &&
                 comp[24] == 2 && comp[28] == 3 && sizes[0] == 3 && sizes[3] == 2,
             "hand-made components: n %d, ranks %d %d %d %d", n, comp[0], comp[4], comp[24], comp[28]);
    printf("components: 60 random masks, %d regions, match the BFS reference\n", checked);
}

static void test_edt(ms_rng *r)
{
    double max_err = 0;
    for (int it = 0; it < 40; it++) {
        int h = 1 + (int)ms_rng_below(r, 48), w = 1 + (int)ms_rng_below(r, 48);
        float dens = it < 4 ? 1.0f : ms_rng_range(r, 0.5f, 0.995f); /* all-foreground: only the border */
        uint8_t *m = malloc((size_t)h * w);
        for (int i = 0; i < h * w; i++) m[i] = ms_rng_uniform(r) < dens;
        if (it % 2) gen_mask(r, m, h, w, 4); /* blob shapes too */
        float *d = malloc((size_t)h * w * sizeof *d);
        MS_CHECK_OK(ms_edt(m, h, w, d));
        double err = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                double e = fabs(d[y * w + x] - sqrt(ref_d2(m, h, w, y, x)));
                if (e > err) err = e;
            }
        MS_CHECK(err < 1e-5, "EDT %dx%d: max error %g", h, w, err);
        if (err > max_err) max_err = err;
        free(m), free(d);
    }
    printf("EDT: 40 random masks, max |err| %.3g vs brute force\n", max_err);
}

/* A mask with a few well-separated discs of distinct sizes plus optional specks. */
static int gen_regions_mask(ms_rng *r, uint8_t *m, int h, int w, int n_discs)
{
    memset(m, 0, (size_t)h * w);
    for (int s = 0; s < n_discs; s++) {
        int cy = 4 + (int)ms_rng_below(r, (uint64_t)(h - 8)), cx = 4 + (int)ms_rng_below(r, (uint64_t)(w - 8));
        float rad = ms_rng_range(r, 1.5f, 7.0f);
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                if ((y - cy) * (y - cy) + (x - cx) * (x - cx) <= rad * rad) m[y * w + x] = 1;
    }
    return 0;
}

/* Checks one point list against the reference; returns the number of regions that got points. */
static void check_points(const ms_promptgen_opts *o, const uint8_t *m, int h, int w, const float *xy,
                         const int32_t *lab, const uint8_t *target, int n_regions, const char *what)
{
    ref_regions R;
    ref_regions_make(&R, m, h, w);
    int kk = R.n < o->max_regions ? R.n : o->max_regions;
    int k = kk < o->n_points ? kk : o->n_points;
    MS_CHECK(n_regions == k, "%s: %d regions with points, expected %d", what, n_regions, k);
    if (R.n == 0) {
        int bad = 0;
        for (int i = 0; i < o->max_points; i++) bad += lab[i] != -1 || xy[2 * i] != 0.f || xy[2 * i + 1] != 0.f;
        MS_CHECK(bad == 0, "%s: empty mask gives %d non-padding points", what, bad);
    } else {
        double thr[64];
        double *d2[64];
        for (int reg = 0; reg < k; reg++) d2[reg] = ref_region_d2(&R, reg, o->dist_ratio, &thr[reg]);
        int per[64] = {0}, order_ok = 1, prev = 0;
        const float s = o->scale, off = (s - 1.f) * 0.5f;
        for (int i = 0; i < o->n_points; i++) {
            MS_CHECK(lab[i] == 1, "%s: point %d label %d", what, i, lab[i]);
            float fx = (xy[2 * i] - off) / s, fy = (xy[2 * i + 1] - off) / s;
            int x = (int)lroundf(fx), y = (int)lroundf(fy);
            MS_CHECK(fabsf(fx - x) < 1e-4f && fabsf(fy - y) < 1e-4f && x >= 0 && x < w && y >= 0 && y < h,
                     "%s: point %d (%g, %g) is not a pixel centre", what, i, xy[2 * i], xy[2 * i + 1]);
            if (x < 0 || x >= w || y < 0 || y >= h) continue;
            int reg = R.rank[y * w + x];
            MS_CHECK(reg >= 0 && reg < k, "%s: point %d in region %d, kept %d", what, i, reg, k);
            if (reg < 0 || reg >= k) continue;
            per[reg]++;
            if (reg < prev) order_ok = 0;
            prev = reg;
            MS_CHECK(d2[reg][y * w + x] >= thr[reg], "%s: point %d distance² %g below the threshold %g", what, i,
                     d2[reg][y * w + x], thr[reg]);
            if (o->deterministic) { /* the most interior pixels: nothing in the region is deeper than the first */
                double mx = 0;
                for (int j = 0; j < h * w; j++)
                    if (R.rank[j] == reg && d2[reg][j] > mx) mx = d2[reg][j];
                if (per[reg] == 1)
                    MS_CHECK(d2[reg][y * w + x] == mx, "%s: deterministic point %d at d² %g, region max %g", what, i,
                             d2[reg][y * w + x], mx);
            }
        }
        MS_CHECK(order_ok, "%s: points not grouped by region", what);
        for (int reg = 0; reg < k; reg++) {
            MS_CHECK(per[reg] >= 1, "%s: region %d got no point", what, reg);
            if (o->deterministic)
                MS_CHECK(per[reg] == o->n_points / k + (reg < o->n_points % k), "%s: region %d got %d points", what,
                         reg, per[reg]);
        }
        int pad_bad = 0;
        for (int i = o->n_points; i < o->max_points; i++)
            pad_bad += lab[i] != 1 || xy[2 * i] != xy[2 * (o->n_points - 1)] ||
                       xy[2 * i + 1] != xy[2 * (o->n_points - 1) + 1];
        MS_CHECK(pad_bad == 0, "%s: %d padding points differ from the last point", what, pad_bad);
        for (int reg = 0; reg < k; reg++) free(d2[reg]);
    }
    if (target) {
        int bad = 0;
        for (int i = 0; i < h * w; i++) bad += target[i] != (R.rank[i] >= 0 && R.rank[i] < k);
        MS_CHECK(bad == 0, "%s: target differs from the kept regions at %d pixels", what, bad);
    }
    ref_regions_free(&R);
}

static void test_points(ms_rng *r, uint64_t seed)
{
    const int h = 40, w = 44;
    uint8_t m[40 * 44], t[40 * 44];
    float xy[2 * 16];
    int32_t lab[16];
    int nr = 0, cases = 0;
    for (int it = 0; it < 24; it++) {
        ms_promptgen_opts o;
        ms_promptgen_opts_default(&o);
        if (it % 4 == 1) o.scale = 4.0f;
        if (it % 4 == 2) o.n_points = 2; /* fewer points than regions: the 2 largest get one each */
        if (it % 4 == 3) o.deterministic = 1, o.n_points = 7, o.max_points = 9;
        if (it == 5) o.scale = 2.5f;
        gen_regions_mask(r, m, h, w, 1 + it % 6);
        if (it % 8 == 0) /* specks and a border-touching bar */
            for (int x = 0; x < w; x++) m[x] = 1;
        uint64_t stream = ms_rng_stream(seed, (uint64_t)it, MS_PROMPTGEN_POINTS);
        MS_CHECK_OK(ms_promptgen_points(&o, m, h, w, stream, xy, lab, t, &nr));
        char what[64];
        snprintf(what, sizeof what, "points case %d", it);
        check_points(&o, m, h, w, xy, lab, t, nr, what);
        cases++;
    }
    /* reproducible per stream, different for another */
    ms_promptgen_opts o;
    ms_promptgen_opts_default(&o);
    memset(m, 0, sizeof m);
    for (int y = 5; y < 35; y++)
        for (int x = 5; x < 39; x++) m[y * w + x] = 1; /* one big region: many interior candidates */
    float a[16], b[16], c[16];
    int32_t la[8], lb[8], lc[8];
    uint64_t s1 = ms_rng_stream(seed, 7, MS_PROMPTGEN_POINTS), s2 = ms_rng_stream(seed, 8, MS_PROMPTGEN_POINTS);
    MS_CHECK_OK(ms_promptgen_points(&o, m, h, w, s1, a, la, NULL, &nr));
    MS_CHECK_OK(ms_promptgen_points(&o, m, h, w, s1, b, lb, NULL, &nr));
    MS_CHECK_OK(ms_promptgen_points(&o, m, h, w, s2, c, lc, NULL, &nr));
    MS_CHECK(!memcmp(a, b, sizeof a) && !memcmp(la, lb, sizeof la), "points differ for the same stream");
    MS_CHECK(memcmp(a, c, 10 * sizeof(float)) != 0, "points equal for two streams");
    /* the split of 5 points over 3 regions varies with the stream, every part >= 1 */
    gen_regions_mask(r, m, h, w, 0);
    for (int y = 2; y < 10; y++)
        for (int x = 2; x < 12; x++) m[y * w + x] = 1;
    for (int y = 20; y < 27; y++)
        for (int x = 20; x < 28; x++) m[y * w + x] = 1;
    for (int y = 30; y < 36; y++)
        for (int x = 2; x < 8; x++) m[y * w + x] = 1;
    int splits[8] = {0};
    for (int id = 0; id < 200; id++) {
        MS_CHECK_OK(ms_promptgen_points(&o, m, h, w, ms_rng_stream(seed, (uint64_t)id, MS_PROMPTGEN_POINTS), a, la,
                                        NULL, &nr));
        int n0 = 0;
        for (int i = 0; i < 5; i++) n0 += a[2 * i + 1] < 12.f; /* region 0 is rows 2..9 */
        if (n0 >= 1 && n0 <= 3) splits[n0]++;
        else splits[0]++;
    }
    /* random_sum_to(5, 3): 6 compositions; the largest gets 1, 2, 3 points in 3, 2, 1 of them */
    MS_CHECK(splits[0] == 0 && splits[1] > 60 && splits[2] > 35 && splits[3] > 15,
             "split of 5 over 3 regions: bad %d, 1:%d 2:%d 3:%d of 200", splits[0], splits[1], splits[2], splits[3]);
    /* empty mask */
    memset(m, 0, sizeof m);
    memset(t, 7, sizeof t);
    MS_CHECK_OK(ms_promptgen_points(&o, m, h, w, s1, a, la, t, &nr));
    check_points(&o, m, h, w, a, la, t, nr, "empty mask");
    printf("points: %d masks checked (regions, interior, padding, target); split 1/2/3 points to the largest: "
           "%d/%d/%d of 200\n", cases, splits[1], splits[2], splits[3]);
}

static void check_boxes(const ms_promptgen_opts *o, const uint8_t *m, int h, int w, const float *bx,
                        const uint8_t *target, int nb, const char *what, int *jittered, double *max_push)
{
    ref_regions R;
    ref_regions_make(&R, m, h, w);
    int k = R.n < o->max_regions ? R.n : o->max_regions;
    MS_CHECK(nb == k, "%s: %d boxes, expected %d", what, nb, k);
    const float s = o->scale, ext = s > 1.f ? s - 1.f : 0.f;
    const float lim[4] = {0.f, 0.f, (float)w * s - 1.f, (float)h * s - 1.f};
    for (int reg = 0; reg < k; reg++) {
        const float *b = bx + 4 * reg;
        float t[4] = {R.bb[reg][0] * s, R.bb[reg][1] * s, R.bb[reg][2] * s + ext, R.bb[reg][3] * s + ext};
        float bw = t[2] - t[0], bh = t[3] - t[1];
        float push[4] = {t[0] - b[0], t[1] - b[1], b[2] - t[2], b[3] - t[3]};
        float side[4] = {bw, bh, bw, bh};
        for (int e = 0; e < 4; e++) {
            float mx = o->deterministic ? 0.f : o->box_jitter * side[e];
            int clipped = b[e] == lim[e];
            MS_CHECK(push[e] >= 0.f && (push[e] <= mx * (1 + 1e-6f) + 1e-4f || clipped),
                     "%s: box %d side %d pushed %g, allowed [0, %g]", what, reg, e, push[e], mx);
            if (e < 2) MS_CHECK(b[e] >= 0.f, "%s: box %d side %d = %g below 0", what, reg, e, b[e]);
            else MS_CHECK(b[e] <= lim[e], "%s: box %d side %d = %g beyond %g", what, reg, e, b[e], lim[e]);
            if (push[e] > 0) (*jittered)++;
            if (side[e] > 0 && push[e] / side[e] > *max_push) *max_push = push[e] / side[e];
        }
    }
    for (int reg = k; reg < o->max_regions; reg++) {
        const float *src = k ? bx + 4 * (k - 1) : NULL;
        for (int e = 0; e < 4; e++)
            MS_CHECK(bx[4 * reg + e] == (src ? src[e] : 0.f), "%s: padding box %d side %d = %g", what, reg, e,
                     bx[4 * reg + e]);
    }
    if (target) {
        int bad = 0;
        for (int i = 0; i < h * w; i++) bad += target[i] != (R.rank[i] >= 0 && R.rank[i] < k);
        MS_CHECK(bad == 0, "%s: target differs from the kept regions at %d pixels", what, bad);
    }
    ref_regions_free(&R);
}

static void test_boxes(ms_rng *r, uint64_t seed)
{
    const int h = 40, w = 44;
    uint8_t m[40 * 44], t[40 * 44];
    float bx[4 * 8];
    int nb = 0, jittered = 0, sides = 0;
    double max_push = 0;
    for (int it = 0; it < 30; it++) {
        ms_promptgen_opts o;
        ms_promptgen_opts_default(&o);
        if (it % 3 == 1) o.scale = 4.0f;
        if (it % 5 == 2) o.deterministic = 1;
        if (it % 7 == 3) o.max_regions = 5;
        gen_regions_mask(r, m, h, w, it % 6);
        if (it % 4 == 0) /* touching the border: clipping */
            for (int y = 0; y < h; y++) m[y * w + w - 1] = m[y * w] = 1;
        MS_CHECK_OK(ms_promptgen_boxes(&o, m, h, w, ms_rng_stream(seed, (uint64_t)it, MS_PROMPTGEN_BOXES), bx, t,
                                       &nb));
        char what[64];
        snprintf(what, sizeof what, "boxes case %d", it);
        check_boxes(&o, m, h, w, bx, t, nb, what, &jittered, &max_push);
        if (!o.deterministic) sides += 4 * nb;
    }
    MS_CHECK(jittered > sides / 2, "boxes: only %d of %d random sides were pushed out", jittered, sides);
    MS_CHECK(max_push > 0.05, "boxes: largest push %.3f of the side, expected up to 0.10", max_push);
    printf("boxes: 30 masks, %d of %d random sides pushed, largest push %.3f of the side\n", jittered, sides, max_push);
}

static void test_batch(ms_rng *r, uint64_t seed)
{
    const int B = 5, h = 36, w = 40;
    uint8_t *m = calloc((size_t)B * h * w, 1);
    /* 0: empty; 1: one region; 2: two; 3: five discs; 4: one region touching the border */
    gen_regions_mask(r, m + 1 * h * w, h, w, 1);
    gen_regions_mask(r, m + 2 * h * w, h, w, 0);
    for (int y = 2; y < 9; y++)
        for (int x = 2; x < 9; x++) m[2 * h * w + y * w + x] = 1;
    for (int y = 20; y < 24; y++)
        for (int x = 25; x < 33; x++) m[2 * h * w + y * w + x] = 1;
    gen_regions_mask(r, m + 3 * h * w, h, w, 5);
    for (int y = 0; y < h; y++)
        for (int x = 30; x < w; x++) m[4 * h * w + y * w + x] = 1;
    uint64_t ids[5];
    for (int i = 0; i < B; i++) ids[i] = ms_rng_u64(r);
    ms_promptgen_opts o;
    ms_promptgen_opts_default(&o);
    o.scale = 4.0f;
    ms_promptgen_batch b;
    ms_promptgen_batch_init(&b);
    MS_CHECK(ms_promptgen_batch_fill(&b, &o, MS_PROMPT_NONE, m, B, h, w, seed, ids) == MS_EINVAL,
             "mode none accepted");

    /* hybrid: 8 points, then boxes 1 and 2 as corner pairs; boxes row = box 0 */
    MS_CHECK_OK(ms_promptgen_batch_fill(&b, &o, MS_PROMPT_HYBRID, m, B, h, w, seed, ids));
    const int np = 8 + 4;
    MS_CHECK(b.n_points == np && b.pr.bp == B && b.pr.n_points == np && b.pr.points == b.points &&
                 b.pr.labels == b.labels && b.pr.boxes == b.boxes && b.pr.masks == NULL,
             "hybrid layout: n_points %d (expected %d), bp %d, boxes %p", b.n_points, np, b.pr.bp,
             (const void *)b.pr.boxes);
    int fields_bad = 0;
    for (int i = 0; i < B; i++) {
        const uint8_t *mi = m + (int64_t)i * h * w;
        float xy[16], bx[12];
        int32_t lab[8];
        uint8_t tp[36 * 40], tb[36 * 40];
        int kp = 0, kb = 0;
        MS_CHECK_OK(ms_promptgen_points(&o, mi, h, w, ms_rng_stream(seed, ids[i], MS_PROMPTGEN_POINTS), xy, lab, tp,
                                        &kp));
        MS_CHECK_OK(ms_promptgen_boxes(&o, mi, h, w, ms_rng_stream(seed, ids[i], MS_PROMPTGEN_BOXES), bx, tb, &kb));
        const float *P = b.points + (int64_t)i * np * 2;
        const int32_t *L = b.labels + (int64_t)i * np;
        char what[48];
        snprintf(what, sizeof what, "hybrid sample %d", i);
        check_points(&o, mi, h, w, P, L, NULL, kp, what);
        for (int j = 0; j < 8; j++)
            fields_bad += P[2 * j] != xy[2 * j] || P[2 * j + 1] != xy[2 * j + 1] || L[j] != lab[j];
        for (int e = 0; e < 4; e++) fields_bad += b.boxes[4 * i + e] != bx[e];
        for (int j = 1; j < 3; j++) {
            const float *c = P + 2 * (8 + 2 * (j - 1));
            const int32_t *cl = L + 8 + 2 * (j - 1);
            if (kb) fields_bad += cl[0] != MS_SAM_LABEL_BOX_TL || cl[1] != MS_SAM_LABEL_BOX_BR || memcmp(c, bx + 4 * j, 4 * sizeof(float)) != 0;
            else fields_bad += cl[0] != -1 || cl[1] != -1 || c[0] != 0.f || c[1] != 0.f || c[2] != 0.f || c[3] != 0.f;
        }
        MS_CHECK(b.n_regions[i] == (kp > kb ? kp : kb), "sample %d: n_regions %d, points %d, boxes %d", i,
                 b.n_regions[i], kp, kb);
        int tbad = 0;
        for (int p = 0; p < h * w; p++) tbad += b.target[(int64_t)i * h * w + p] != (tp[p] | tb[p]);
        MS_CHECK(tbad == 0, "sample %d: target differs from the union at %d pixels", i, tbad);
    }
    MS_CHECK(fields_bad == 0, "hybrid: %d fields differ from the single-mask calls", fields_bad);
    MS_CHECK(b.n_regions[0] == 0 && b.boxes[0] == 0.f && b.boxes[3] == 0.f, "empty sample: n_regions %d",
             b.n_regions[0]);
    MS_CHECK(b.n_regions[3] >= 1 && b.n_regions[3] <= 3, "five discs: %d regions kept", b.n_regions[3]);

    /* a sample's prompts do not depend on its batch: sample 3 alone, then samples {3, 1} */
    float keep_pts[2 * 12], keep_box[4];
    int32_t keep_lab[12];
    memcpy(keep_pts, b.points + 3 * np * 2, sizeof keep_pts);
    memcpy(keep_lab, b.labels + 3 * np, sizeof keep_lab);
    memcpy(keep_box, b.boxes + 12, sizeof keep_box);
    uint8_t *m2 = malloc((size_t)2 * h * w);
    memcpy(m2, m + 3 * h * w, (size_t)h * w);
    memcpy(m2 + h * w, m + 1 * h * w, (size_t)h * w);
    uint64_t ids2[2] = {ids[3], ids[1]};
    MS_CHECK_OK(ms_promptgen_batch_fill(&b, &o, MS_PROMPT_HYBRID, m2, 2, h, w, seed, ids2));
    MS_CHECK(!memcmp(keep_pts, b.points, sizeof keep_pts) && !memcmp(keep_lab, b.labels, sizeof keep_lab) &&
                 !memcmp(keep_box, b.boxes, sizeof keep_box),
             "sample 3's prompts changed with its batch");

    /* point mode: 8 points, no boxes (SAM adds its pad point) */
    MS_CHECK_OK(ms_promptgen_batch_fill(&b, &o, MS_PROMPT_POINT, m, B, h, w, seed, ids));
    MS_CHECK(b.n_points == 8 && b.pr.boxes == NULL && b.pr.n_points == 8, "point layout: n_points %d, boxes %p",
             b.n_points, (const void *)b.pr.boxes);
    MS_CHECK(!memcmp(b.points + 3 * 8 * 2, keep_pts, 16 * sizeof(float)), "point mode's points differ from hybrid's");
    int empty_bad = 0;
    for (int j = 0; j < 8; j++) empty_bad += b.labels[j] != -1;
    MS_CHECK(empty_bad == 0, "point mode, empty sample: %d labels not -1", empty_bad);

    /* box mode: box 0 + two corner pairs; empty → box (0,0,0,0) and padding labels */
    MS_CHECK_OK(ms_promptgen_batch_fill(&b, &o, MS_PROMPT_BOX, m, B, h, w, seed, ids));
    MS_CHECK(b.n_points == 4 && b.pr.boxes == b.boxes, "box layout: n_points %d", b.n_points);
    MS_CHECK(!memcmp(b.boxes + 12, keep_box, sizeof keep_box), "box mode's box 0 differs from hybrid's");
    MS_CHECK(b.labels[3 * 4] == MS_SAM_LABEL_BOX_TL && b.labels[3 * 4 + 1] == MS_SAM_LABEL_BOX_BR &&
                 b.labels[3 * 4 + 2] == MS_SAM_LABEL_BOX_TL && b.labels[3 * 4 + 3] == MS_SAM_LABEL_BOX_BR && !memcmp(b.points + 3 * 4 * 2, keep_pts + 16, 8 * sizeof(float)),
             "box mode: extra boxes of sample 3");
    MS_CHECK(b.labels[0] == -1 && b.labels[3] == -1 && b.boxes[0] == 0.f && b.boxes[2] == 0.f,
             "box mode, empty sample: labels %d..%d", b.labels[0], b.labels[3]);
    /* one region: the repeats of box 0 (get_top_boxes pads by repetition) */
    MS_CHECK(!memcmp(b.points + 1 * 4 * 2, b.boxes + 4, 4 * sizeof(float)) &&
                 !memcmp(b.points + 1 * 4 * 2 + 4, b.boxes + 4, 4 * sizeof(float)),
             "box mode, one region: extra boxes are not repeats of box 0");
    printf("batch: hybrid/point/box layouts checked field by field (B %d, %d points in hybrid)\n", B, np);
    ms_promptgen_batch_free(&b);
    free(m), free(m2);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_rng r;
    ms_rng_init(&r, seed, 0);
    test_components(&r);
    test_edt(&r);
    test_points(&r, seed);
    test_boxes(&r, seed);
    test_batch(&r, seed);
    return ms_test_done();
}
