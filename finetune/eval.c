/* finetune/eval.c — Dice / IoU counting (see eval.h for the definitions and the empty-class rule).
 *
 * One pass over the voxels with per-thread histograms (a label volume is a few million voxels; the counts are
 * exact integers, so the thread count never changes a result).
 */
#include "finetune/eval.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

void ms_overlap_free(ms_overlap *o)
{
    free(o->inter);
    free(o->pred);
    free(o->gt);
    memset(o, 0, sizeof *o);
}

ms_status ms_overlap_count(const uint16_t *pred, const uint16_t *gt, int64_t n, int n_threads, ms_overlap *o)
{
    memset(o, 0, sizeof *o);
    uint16_t mx = 0;
    for (int64_t i = 0; i < n; i++) {
        if (pred[i] > mx) mx = pred[i];
        if (gt[i] > mx) mx = gt[i];
    }
    int L = (int)mx + 1;
    int T = n_threads > 0 ? n_threads : omp_get_max_threads();
    if (T > 64) T = 64;
    while (T > 1 && (int64_t)T * L > ((int64_t)1 << 20)) T /= 2; /* many labels: fewer private histograms */
    ms_status st = MS_OK;
    /* per thread: inter, pred, gt histograms side by side */
    int64_t *h = calloc((size_t)T * 3 * (size_t)L, sizeof *h);
    o->inter = calloc((size_t)L, sizeof(int64_t));
    o->pred = calloc((size_t)L, sizeof(int64_t));
    o->gt = calloc((size_t)L, sizeof(int64_t));
    if (!h || !o->inter || !o->pred || !o->gt) {
        st = ms_error(MS_ENOMEM, "eval: out of memory for %d labels", L);
        ms_overlap_free(o);
        goto leave;
    }
    o->n_labels = L;
#pragma omp parallel num_threads(T)
    {
        int t = omp_get_thread_num();
        int64_t *hi = h + (size_t)t * 3 * (size_t)L, *hp = hi + L, *hg = hp + L;
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; i++) {
            uint16_t p = pred[i], g = gt[i];
            hp[p]++;
            hg[g]++;
            hi[p] += p == g;
        }
    }
    for (int t = 0; t < T; t++)
        for (int c = 0; c < L; c++) {
            const int64_t *hi = h + (size_t)t * 3 * (size_t)L;
            o->inter[c] += hi[c];
            o->pred[c] += hi[L + c];
            o->gt[c] += hi[2 * L + c];
        }
leave:
    free(h);
    return st;
}

double ms_dice(int64_t inter, int64_t np, int64_t ng)
{
    return np + ng == 0 ? NAN : 2.0 * (double)inter / (double)(np + ng);
}

double ms_iou(int64_t inter, int64_t np, int64_t ng)
{
    return np + ng == 0 ? NAN : (double)inter / (double)(np + ng - inter);
}

void ms_mean_sd(const double *v, int n, double *mean, double *sd, int *n_used)
{
    double s = 0;
    int k = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i])) s += v[i], k++;
    *n_used = k;
    if (k == 0) {
        *mean = *sd = NAN;
        return;
    }
    double m = s / k, q = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i])) q += (v[i] - m) * (v[i] - m);
    *mean = m;
    *sd = k > 1 ? sqrt(q / (k - 1)) : 0.0;
}

/* 1-D squared distance transform (Felzenszwalb & Huttenlocher) of f (INFINITY = no feature) with squared spacing w:
 * d[q] = min_p f[p] + w (q - p)^2. v, z: scratch of n and n + 1. */
static void edt1d(const double *f, double *d, int64_t n, double w, int64_t *v, double *z)
{
    int64_t k = -1;
    for (int64_t q = 0; q < n; q++) {
        if (f[q] == INFINITY) continue;
        double s = -INFINITY;
        while (k >= 0) {
            int64_t p = v[k];
            s = ((f[q] + w * (double)q * q) - (f[p] + w * (double)p * p)) / (2 * w * (double)(q - p));
            if (s > z[k]) break;
            k--;
        }
        k++;
        v[k] = q;
        z[k] = k == 0 ? -INFINITY : s;
        z[k + 1] = INFINITY;
    }
    if (k < 0) {
        for (int64_t q = 0; q < n; q++) d[q] = INFINITY;
        return;
    }
    int64_t j = 0;
    for (int64_t q = 0; q < n; q++) {
        while (z[j + 1] < (double)q) j++;
        double t = (double)(q - v[j]);
        d[q] = w * t * t + f[v[j]];
    }
}

/* In-place squared EDT of g (0 at features, INFINITY elsewhere) on a box b[0]·b[1]·b[2], spacing sp. */
static ms_status edt3d(double *g, const int64_t b[3], const double sp[3], int T)
{
    int64_t mx = b[0] > b[1] ? b[0] : b[1];
    mx = mx > b[2] ? mx : b[2];
    int64_t stride[3] = {1, b[0], b[0] * b[1]};
    ms_status st = MS_OK;
    size_t per = (size_t)(4 * mx + 1);
    double *buf = malloc((size_t)T * per * sizeof(double));
    int64_t *vb = malloc((size_t)T * (size_t)mx * sizeof(int64_t));
    if (!buf || !vb) {
        st = ms_error(MS_ENOMEM, "hd95: out of memory for the distance transform");
        goto leave;
    }
    for (int ax = 0; ax < 3; ax++) {
        int a1 = ax == 0 ? 1 : 0, a2 = ax == 2 ? 1 : 2; /* the two other axes */
        int64_t n = b[ax], lines = b[a1] * b[a2];
        double w = sp[ax] * sp[ax];
#pragma omp parallel for num_threads(T) schedule(static)
        for (int64_t l = 0; l < lines; l++) {
            int t = omp_get_thread_num();
            double *f = buf + (size_t)t * per, *d = f + mx, *z = d + mx;
            int64_t *v = vb + (size_t)t * (size_t)mx;
            int64_t o = (l % b[a1]) * stride[a1] + (l / b[a1]) * stride[a2];
            for (int64_t q = 0; q < n; q++) f[q] = g[o + q * stride[ax]];
            edt1d(f, d, n, w, v, z);
            for (int64_t q = 0; q < n; q++) g[o + q * stride[ax]] = d[q];
        }
    }
leave:
    free(buf);
    free(vb);
    return st;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* numpy.percentile(v, 95) with linear interpolation; sorts v. */
static double p95(double *v, int64_t n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_dbl);
    double pos = 0.95 * (double)(n - 1);
    int64_t i = (int64_t)floor(pos);
    if (i >= n - 1) return v[n - 1];
    return v[i] + (pos - (double)i) * (v[i + 1] - v[i]);
}

/* Voxels of class c in pred (np) and gt (ng), and the box [lo, hi] around both (hi < lo when neither has any). */
static void class_box(const uint16_t *pred, const uint16_t *gt, const int64_t dim[3], int c, int64_t lo[3],
                      int64_t hi[3], int64_t *np, int64_t *ng)
{
    for (int k = 0; k < 3; k++) lo[k] = dim[k], hi[k] = -1;
    *np = *ng = 0;
    for (int64_t z = 0, i = 0; z < dim[2]; z++)
        for (int64_t y = 0; y < dim[1]; y++)
            for (int64_t x = 0; x < dim[0]; x++, i++) {
                int a = pred[i] == c, b = gt[i] == c;
                *np += a, *ng += b;
                if (a || b) {
                    int64_t p[3] = {x, y, z};
                    for (int k = 0; k < 3; k++) {
                        if (p[k] < lo[k]) lo[k] = p[k];
                        if (p[k] > hi[k]) hi[k] = p[k];
                    }
                }
            }
}

ms_status ms_hd95(const uint16_t *pred, const uint16_t *gt, const int64_t dim[3], const double spacing[3], int c,
                  int n_threads, double *out)
{
    int T = n_threads > 0 ? n_threads : omp_get_max_threads();
    int64_t nx = dim[0], ny = dim[1], nz = dim[2], lo[3], hi[3], np, ng;
    class_box(pred, gt, dim, c, lo, hi, &np, &ng);
    if (np == 0 || ng == 0) {
        *out = np + ng == 0 ? NAN : INFINITY;
        return MS_OK;
    }
    int64_t b[3] = {hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1}, nb = b[0] * b[1] * b[2];
    ms_status st = MS_OK;
    uint8_t *sp = calloc((size_t)nb, 1), *sg = calloc((size_t)nb, 1); /* surface masks on the box */
    double *g = malloc((size_t)nb * sizeof *g), *dist = malloc((size_t)(np + ng) * sizeof *dist), worst = 0;
    if (!sp || !sg || !g || !dist) {
        st = ms_error(MS_ENOMEM, "hd95: out of memory");
        goto leave;
    }
    for (int which = 0; which < 2; which++) {
        const uint16_t *m = which ? gt : pred;
        uint8_t *s = which ? sg : sp;
        for (int64_t z = 0; z < b[2]; z++)
            for (int64_t y = 0; y < b[1]; y++)
                for (int64_t x = 0; x < b[0]; x++) {
                    int64_t X = x + lo[0], Y = y + lo[1], Z = z + lo[2], i = X + nx * (Y + ny * Z);
                    if (m[i] != c) continue;
                    /* outside the volume counts as background (scipy's binary_erosion border_value = 0) */
                    int edge = X == 0 || Y == 0 || Z == 0 || X == nx - 1 || Y == ny - 1 || Z == nz - 1 ||
                               m[i - 1] != c || m[i + 1] != c || m[i - nx] != c || m[i + nx] != c ||
                               m[i - nx * ny] != c || m[i + nx * ny] != c;
                    s[x + b[0] * (y + b[1] * z)] = (uint8_t)edge;
                }
    }
    /* directed distances: to each mask's surface from the other's surface voxels */
    for (int dir = 0; dir < 2; dir++) {
        const uint8_t *to = dir ? sp : sg, *from = dir ? sg : sp;
        for (int64_t i = 0; i < nb; i++) g[i] = to[i] ? 0.0 : INFINITY;
        if ((st = edt3d(g, b, spacing, T))) goto leave;
        int64_t k = 0;
        for (int64_t i = 0; i < nb; i++)
            if (from[i]) dist[k++] = sqrt(g[i]);
        double p = p95(dist, k);
        worst = p > worst ? p : worst;
    }
    *out = worst;
leave:
    free(sp);
    free(sg);
    free(g);
    free(dist);
    return st;
}

/* ---- NSD: the surface elements of 2x2x2 neighbourhoods -------------------------------------------------------- */

enum { NSD_MAX_TRI = 8 };

/* Per neighbourhood code (bit j set = corner j inside; corner j sits at (j & 1, j >> 1 & 1, j >> 2 & 1) = x, y, z):
 * the cross products of its triangles' edges, with vertices at doubled coordinates (edge midpoints become
 * integers), so a triangle's area in voxel units is |cross| / 8. */
typedef struct nsd_cells {
    int n[256];
    int v[256][NSD_MAX_TRI][3];
} nsd_cells;

static void cross3(const int a[3], const int b[3], int o[3])
{
    o[0] = a[1] * b[2] - a[2] * b[1];
    o[1] = a[2] * b[0] - a[0] * b[2];
    o[2] = a[0] * b[1] - a[1] * b[0];
}

/* The edge between corners i and j as a node id; its midpoint, doubled. */
static int edge_id(int i, int j) { return i < j ? i * 8 + j : j * 8 + i; }
static void edge_mid(int id, int p[3])
{
    for (int a = 0; a < 3; a++) p[a] = (id / 8 >> a & 1) + (id % 8 >> a & 1);
}

/* Triangulates one closed polygon (node ids) as the fan with the fewest distinct planes (the first such start)
 * and appends its triangles to cell code. A planar polygon gives the same area from any start. */
static void nsd_fan(nsd_cells *t, int code, const int *loop, int n)
{
    int best = -1, best_planes = 99;
    for (int s = 0; s < n; s++) {
        int cr[8][3], planes = 0;
        for (int i = 1; i + 1 < n; i++) {
            int p0[3], p1[3], p2[3], u[3], w[3], c[3], z[3];
            edge_mid(loop[s], p0), edge_mid(loop[(s + i) % n], p1), edge_mid(loop[(s + i + 1) % n], p2);
            for (int a = 0; a < 3; a++) u[a] = p1[a] - p0[a], w[a] = p2[a] - p0[a];
            cross3(u, w, c);
            int fresh = 1;
            for (int k = 0; k < planes && fresh; k++) {
                cross3(c, cr[k], z);
                fresh = z[0] || z[1] || z[2];
            }
            if (fresh) memcpy(cr[planes++], c, sizeof c);
        }
        if (planes < best_planes) best_planes = planes, best = s;
    }
    for (int i = 1; i + 1 < n && t->n[code] < NSD_MAX_TRI; i++) {
        int p0[3], p1[3], p2[3], u[3], w[3];
        edge_mid(loop[best], p0), edge_mid(loop[(best + i) % n], p1), edge_mid(loop[(best + i + 1) % n], p2);
        for (int a = 0; a < 3; a++) u[a] = p1[a] - p0[a], w[a] = p2[a] - p0[a];
        cross3(u, w, t->v[code][t->n[code]++]);
    }
}

/* Marching cubes on one cell: the segments each face contributes, chained into polygons, each triangulated. */
static void nsd_cell(nsd_cells *t, int code)
{
    static const int pq[4][2] = {{0, 0}, {1, 0}, {1, 1}, {0, 1}}; /* a face's corners in cyclic order */
    int adj[64][2], deg[64] = {0}, n_in = 0;
    for (int j = 0; j < 8; j++) n_in += code >> j & 1;
    const int sep_in = n_in <= 4; /* keep the minority's diagonal corners apart (the complement gets equal area) */
    for (int ax = 0; ax < 3; ax++)
        for (int v = 0; v < 2; v++) {
            int cyc[4], e[4], cut[4], nc = 0;
            for (int k = 0; k < 4; k++) cyc[k] = v << ax | pq[k][0] << (ax + 1) % 3 | pq[k][1] << (ax + 2) % 3;
            for (int k = 0; k < 4; k++) {
                e[k] = edge_id(cyc[k], cyc[(k + 1) % 4]);
                if ((code >> cyc[k] & 1) != (code >> cyc[(k + 1) % 4] & 1)) cut[nc++] = k;
            }
            int seg[2][2], ns = 0;
            if (nc == 2) seg[ns][0] = e[cut[0]], seg[ns++][1] = e[cut[1]];
            else if (nc == 4 && (code >> cyc[0] & 1) == sep_in) /* corner k lies between edges k-1 and k */
                seg[0][0] = e[3], seg[0][1] = e[0], seg[1][0] = e[1], seg[1][1] = e[2], ns = 2;
            else if (nc == 4)
                seg[0][0] = e[0], seg[0][1] = e[1], seg[1][0] = e[2], seg[1][1] = e[3], ns = 2;
            for (int s = 0; s < ns; s++) {
                adj[seg[s][0]][deg[seg[s][0]]++] = seg[s][1];
                adj[seg[s][1]][deg[seg[s][1]]++] = seg[s][0];
            }
        }
    int seen[64] = {0};
    for (int s = 0; s < 64; s++) {
        if (deg[s] != 2 || seen[s]) continue;
        int loop[12], n = 0, prev = -1, cur = s;
        do { /* every cut edge lies on two faces: each node has two neighbours */
            loop[n++] = cur;
            seen[cur] = 1;
            int next = adj[cur][0] == prev ? adj[cur][1] : adj[cur][0];
            prev = cur, cur = next;
        } while (cur != s && n < 12);
        nsd_fan(t, code, loop, n);
    }
}

/* Area (mm²) of each neighbourhood code's surface at the given spacing: a triangle's cross product scales by the
 * cofactors (sy·sz, sx·sz, sx·sy). */
static void nsd_areas(const double sp[3], double area[256])
{
    nsd_cells t;
    memset(&t, 0, sizeof t);
    for (int code = 0; code < 256; code++) {
        nsd_cell(&t, code);
        double a = 0;
        for (int k = 0; k < t.n[code]; k++) {
            const int *c = t.v[code][k];
            double x = c[0] * sp[1] * sp[2], y = c[1] * sp[0] * sp[2], z = c[2] * sp[0] * sp[1];
            a += sqrt(x * x + y * y + z * z) / 8;
        }
        area[code] = a;
    }
}

/* Neighbourhood codes of mask == c on the lattice of the box lo..lo+b-1: lattice point (X, Y, Z), 0..b, has the
 * voxels lo + (X-1..X, Y-1..Y, Z-1..Z) as its corners; voxels outside the box are background. */
static void nsd_codes(const uint16_t *m, const int64_t dim[3], const int64_t lo[3], const int64_t b[3], int c,
                      uint8_t *code, int T)
{
    const int64_t L0 = b[0] + 1, L1 = b[1] + 1, L2 = b[2] + 1;
#pragma omp parallel for num_threads(T) schedule(static)
    for (int64_t Z = 0; Z < L2; Z++)
        for (int64_t Y = 0; Y < L1; Y++)
            for (int64_t X = 0; X < L0; X++) {
                int k = 0;
                for (int j = 0; j < 8; j++) {
                    int64_t x = X - 1 + (j & 1), y = Y - 1 + (j >> 1 & 1), z = Z - 1 + (j >> 2 & 1);
                    if (x < 0 || y < 0 || z < 0 || x >= b[0] || y >= b[1] || z >= b[2]) continue;
                    if (m[(lo[0] + x) + dim[0] * ((lo[1] + y) + dim[1] * (lo[2] + z))] == c) k |= 1 << j;
                }
                code[X + L0 * (Y + L1 * Z)] = (uint8_t)k;
            }
}

ms_status ms_nsd(const uint16_t *pred, const uint16_t *gt, const int64_t dim[3], const double spacing[3], int c,
                 double tol_mm, int n_threads, double *out)
{
    int T = n_threads > 0 ? n_threads : omp_get_max_threads();
    int64_t lo[3], hi[3], np, ng;
    class_box(pred, gt, dim, c, lo, hi, &np, &ng);
    if (np == 0 || ng == 0) { /* the empty mask has no surface: the other's lies beyond any tolerance */
        *out = np + ng == 0 ? NAN : 0.0;
        return MS_OK;
    }
    const int64_t b[3] = {hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1};
    const int64_t L[3] = {b[0] + 1, b[1] + 1, b[2] + 1}, nl = L[0] * L[1] * L[2];
    double area[256];
    nsd_areas(spacing, area);
    ms_status st = MS_OK;
    uint8_t *cp = malloc((size_t)nl), *cg = malloc((size_t)nl);
    double *g = malloc((size_t)nl * sizeof *g);
    if (!cp || !cg || !g) {
        st = ms_error(MS_ENOMEM, "nsd: out of memory");
        goto leave;
    }
    nsd_codes(pred, dim, lo, b, c, cp, T);
    nsd_codes(gt, dim, lo, b, c, cg, T);
    /* within the tolerance up to float32 rounding: voxel sizes are float32 in NIfTI headers and stores, and an exact
     * tie (a 1 mm step at 1 mm) must not depend on which reader computed the spacing */
    const double lim = tol_mm * (1 + 1e-6);
    double within = 0, total = 0;
    for (int dir = 0; dir < 2; dir++) {
        const uint8_t *to = dir ? cp : cg, *from = dir ? cg : cp;
        for (int64_t i = 0; i < nl; i++) g[i] = to[i] != 0 && to[i] != 255 ? 0.0 : INFINITY;
        if ((st = edt3d(g, L, spacing, T))) goto leave;
        for (int64_t i = 0; i < nl; i++) {
            if (from[i] == 0 || from[i] == 255) continue;
            total += area[from[i]];
            if (sqrt(g[i]) <= lim) within += area[from[i]];
        }
    }
    *out = within / total;
leave:
    free(cp);
    free(cg);
    free(g);
    return st;
}
