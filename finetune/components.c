/* finetune/components.c — 3-D connected components and the per-class label post-processing (see components.h).
 *
 * Two-pass union-find whose root is always the smallest voxel index of its set, so the roots come in raster order of
 * first voxels and the size sort breaks ties on them for free. Pass 1 links each voxel to its neighbours already
 * scanned (13 of the 26, or 3 of the 6).
 */
#include "finetune/components.h"

#include <stdlib.h>
#include <string.h>

static int32_t uf_find(int32_t *p, int32_t x)
{
    while (p[x] != x) {
        p[x] = p[p[x]]; /* path halving */
        x = p[x];
    }
    return x;
}

static void uf_union(int32_t *p, int32_t a, int32_t b)
{
    a = uf_find(p, a);
    b = uf_find(p, b);
    if (a < b) p[b] = a;
    else if (b < a) p[a] = b;
}

typedef struct { int64_t size; int32_t label; } comp_key;

static int comp_key_cmp(const void *a, const void *b)
{
    const comp_key *x = a, *y = b;
    if (x->size != y->size) return x->size > y->size ? -1 : 1;
    return (x->label > y->label) - (x->label < y->label);
}

/* Pass 1: p[i] = i's parent (−1 on background). */
static void link_pass(const uint8_t *mask, const int64_t dim[3], int conn, int32_t *p)
{
    const int32_t nx = (int32_t)dim[0], ny = (int32_t)dim[1], nz = (int32_t)dim[2], sz = nx * ny;
    for (int32_t z = 0, i = 0; z < nz; z++)
        for (int32_t y = 0; y < ny; y++)
            for (int32_t x = 0; x < nx; x++, i++) {
                if (!mask[i]) { p[i] = -1; continue; }
                p[i] = i;
                if (conn == 6) {
                    if (x > 0 && mask[i - 1]) uf_union(p, i, i - 1);
                    if (y > 0 && mask[i - nx]) uf_union(p, i, i - nx);
                    if (z > 0 && mask[i - sz]) uf_union(p, i, i - sz);
                    continue;
                }
                /* the 13 neighbours before i in raster order: the slice below, the row above, the voxel left */
                for (int dz = -1; dz <= 0; dz++)
                    for (int dy = -1; dy <= 1; dy++)
                        for (int dx = -1; dx <= 1; dx++) {
                            if (dz == 0 && (dy > 0 || (dy == 0 && dx >= 0))) continue;
                            int32_t X = x + dx, Y = y + dy, Z = z + dz;
                            if (X < 0 || Y < 0 || Z < 0 || X >= nx || Y >= ny) continue;
                            int32_t j = i + dx + dy * nx + dz * sz;
                            if (mask[j]) uf_union(p, i, j);
                        }
            }
}

ms_status ms_components3d(const uint8_t *mask, const int64_t dim[3], int conn, int32_t *comp, int64_t *sizes, int cap,
                          int *n_comp)
{
    MS_FAIL_IF(!mask || !comp || !n_comp || dim[0] < 1 || dim[1] < 1 || dim[2] < 1 || (conn != 6 && conn != 26) ||
                   dim[0] * dim[1] * dim[2] > INT32_MAX,
               MS_EINVAL, "components: bad arguments (%lldx%lldx%lld, connectivity %d)", (long long)dim[0],
               (long long)dim[1], (long long)dim[2], conn);
    const int32_t n = (int32_t)(dim[0] * dim[1] * dim[2]);
    int32_t *p = malloc((size_t)n * sizeof *p);
    MS_FAIL_IF(!p, MS_ENOMEM, "components: out of memory (%d voxels)", n);
    link_pass(mask, dim, conn, p);
    /* pass 2: provisional labels in raster order of roots (a root precedes its members) */
    int32_t nl = 0;
    for (int32_t i = 0; i < n; i++) {
        if (p[i] < 0) { comp[i] = -1; continue; }
        int32_t r = uf_find(p, i);
        comp[i] = r == i ? nl++ : comp[r];
    }
    free(p);
    comp_key *key = malloc((size_t)(nl > 0 ? nl : 1) * sizeof *key);
    int32_t *rank = malloc((size_t)(nl > 0 ? nl : 1) * sizeof *rank);
    if (!key || !rank) {
        free(key);
        free(rank);
        MS_FAIL(MS_ENOMEM, "components: out of memory (%d regions)", nl);
    }
    for (int32_t l = 0; l < nl; l++) key[l] = (comp_key){0, l};
    for (int32_t i = 0; i < n; i++)
        if (comp[i] >= 0) key[comp[i]].size++;
    qsort(key, (size_t)nl, sizeof *key, comp_key_cmp);
    for (int32_t r = 0; r < nl; r++) rank[key[r].label] = r;
    for (int32_t i = 0; i < n; i++)
        if (comp[i] >= 0) comp[i] = rank[comp[i]];
    if (sizes)
        for (int32_t r = 0; r < nl && r < cap; r++) sizes[r] = key[r].size;
    *n_comp = nl;
    free(key);
    free(rank);
    return MS_OK;
}

ms_status ms_labels_postprocess(uint16_t *lab, const int64_t dim[3], int conn, int keep_largest, int64_t min_size,
                                int64_t *n_removed)
{
    if (n_removed) *n_removed = 0;
    if (!keep_largest && min_size <= 1) return MS_OK;
    MS_FAIL_IF(conn != 6 && conn != 26, MS_EINVAL, "post-processing: connectivity %d (6 or 26)", conn);
    const int64_t n = dim[0] * dim[1] * dim[2];
    MS_FAIL_IF(n > INT32_MAX, MS_EINVAL, "post-processing: %lld voxels, at most %d", (long long)n, INT32_MAX);
    uint8_t *present = calloc(65536, 1), *mask = malloc((size_t)n);
    int32_t *comp = malloc((size_t)n * sizeof *comp);
    int64_t *sizes = NULL;
    ms_status st = MS_OK;
    if (!present || !mask || !comp) {
        st = ms_error(MS_ENOMEM, "post-processing: out of memory (%lld voxels)", (long long)n);
        goto leave;
    }
    for (int64_t i = 0; i < n; i++) present[lab[i]] = 1;
    for (int c = 1; c < 65536; c++) {
        if (!present[c]) continue;
        for (int64_t i = 0; i < n; i++) mask[i] = lab[i] == c;
        int nc = 0;
        if ((st = ms_components3d(mask, dim, conn, comp, NULL, 0, &nc))) goto leave;
        free(sizes);
        sizes = malloc((size_t)nc * sizeof *sizes);
        if (!sizes) {
            st = ms_error(MS_ENOMEM, "post-processing: out of memory (%d components)", nc);
            goto leave;
        }
        memset(sizes, 0, (size_t)nc * sizeof *sizes);
        for (int64_t i = 0; i < n; i++)
            if (comp[i] >= 0) sizes[comp[i]]++;
        for (int64_t i = 0; i < n; i++) {
            int32_t k = comp[i];
            if (k < 0 || ((!keep_largest || k == 0) && sizes[k] >= min_size)) continue;
            lab[i] = 0;
            if (n_removed) ++*n_removed;
        }
    }
leave:
    free(present);
    free(mask);
    free(comp);
    free(sizes);
    return st;
}
