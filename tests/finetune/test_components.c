/* tests/finetune/test_components.c — 3-D connected components (26- and 6-connectivity) and the per-class label
 * post-processing of `mrisam predict` (--keep-largest, --min-size) against a brute-force flood fill on random label
 * volumes (fresh seed): the components' partition, their size ranks and tie rule, and the processed volumes. */
#include <stdlib.h>
#include <string.h>

#include "finetune/components.h"
#include "harness.h"

/* Flood fill of every voxel of class c (a plain stack, all neighbours within the connectivity): ref[i] = the
 * component's index in order of discovery (raster order of first voxels), −1 elsewhere; returns the count and the
 * sizes in sz. */
static int flood(const uint16_t *lab, const int64_t d[3], int c, int conn, int32_t *ref, int64_t *sz, int64_t *stack)
{
    const int64_t n = d[0] * d[1] * d[2];
    int nc = 0;
    for (int64_t i = 0; i < n; i++) ref[i] = -1;
    for (int64_t s = 0; s < n; s++) {
        if (lab[s] != c || ref[s] >= 0) continue;
        int64_t top = 0;
        stack[top++] = s;
        ref[s] = nc;
        sz[nc] = 0;
        while (top) {
            int64_t i = stack[--top], x = i % d[0], y = i / d[0] % d[1], z = i / (d[0] * d[1]);
            sz[nc]++;
            for (int dz = -1; dz <= 1; dz++)
                for (int dy = -1; dy <= 1; dy++)
                    for (int dx = -1; dx <= 1; dx++) {
                        int k = abs(dx) + abs(dy) + abs(dz);
                        if (k == 0 || (conn == 6 && k > 1)) continue;
                        int64_t X = x + dx, Y = y + dy, Z = z + dz;
                        if (X < 0 || Y < 0 || Z < 0 || X >= d[0] || Y >= d[1] || Z >= d[2]) continue;
                        int64_t j = X + d[0] * (Y + d[1] * Z);
                        if (lab[j] == c && ref[j] < 0) ref[j] = nc, stack[top++] = j;
                    }
        }
        nc++;
    }
    return nc;
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_rng r;
    ms_rng_init(&r, seed, 0);
    for (int trial = 0; trial < 40; trial++) {
        int64_t d[3] = {1 + (int64_t)(ms_rng_u64(&r) % 14), 1 + (int64_t)(ms_rng_u64(&r) % 14),
                        1 + (int64_t)(ms_rng_u64(&r) % 10)};
        const int64_t n = d[0] * d[1] * d[2];
        const int conn = trial % 2 ? 6 : 26, L = 1 + (int)(ms_rng_u64(&r) % 4);
        const double dens = 0.15 + 0.6 * ms_rng_uniform(&r); /* around the percolation thresholds */
        uint16_t *lab = malloc((size_t)n * 2), *got = malloc((size_t)n * 2), *want = malloc((size_t)n * 2);
        uint8_t *mask = malloc((size_t)n);
        int32_t *comp = malloc((size_t)n * 4), *ref = malloc((size_t)n * 4);
        int64_t *sz = malloc((size_t)n * 8), *stack = malloc((size_t)n * 8), *sizes = malloc((size_t)n * 8);
        for (int64_t i = 0; i < n; i++)
            lab[i] = ms_rng_uniform(&r) < dens ? (uint16_t)(1 + ms_rng_u64(&r) % (uint64_t)L) : 0;
        /* the components of each class: the same partition, ranked by size, ties by first voxel */
        for (int c = 1; c <= L; c++) {
            for (int64_t i = 0; i < n; i++) mask[i] = lab[i] == c;
            int nc = -1;
            MS_CHECK_OK(ms_components3d(mask, d, conn, comp, sizes, (int)n, &nc));
            int nr = flood(lab, d, c, conn, ref, sz, stack);
            MS_CHECK(nc == nr, "trial %d class %d (%lldx%lldx%lld, %d-conn): %d components, flood fill %d", trial, c,
                     (long long)d[0], (long long)d[1], (long long)d[2], conn, nc, nr);
            /* rank of reference component k: how many are larger, or as large and found earlier */
            int bad = 0;
            for (int64_t i = 0; i < n && nc == nr; i++) {
                if ((ref[i] < 0) != (comp[i] < 0)) { bad++; continue; }
                if (ref[i] < 0) continue;
                int k = ref[i], rank = 0;
                for (int j = 0; j < nr; j++) rank += sz[j] > sz[k] || (sz[j] == sz[k] && j < k);
                bad += comp[i] != rank || sizes[rank] != sz[k];
            }
            MS_CHECK(bad == 0, "trial %d class %d (%d-conn): %d voxels with a wrong component rank", trial, c, conn,
                     bad);
        }
        /* post-processing: keep the largest and/or drop the small ones, each class independently */
        for (int mode = 0; mode < 3; mode++) {
            int keep = mode != 1;
            int64_t min_size = mode == 0 ? 0 : 1 + (int64_t)(ms_rng_u64(&r) % 6);
            memcpy(want, lab, (size_t)n * 2);
            int64_t removed_ref = 0;
            for (int c = 1; c <= L; c++) {
                int nr = flood(lab, d, c, conn, ref, sz, stack), big = 0;
                for (int j = 1; j < nr; j++) big = sz[j] > sz[big] ? j : big; /* first of the largest */
                for (int64_t i = 0; i < n; i++)
                    if (ref[i] >= 0 && ((keep && ref[i] != big) || sz[ref[i]] < min_size)) want[i] = 0, removed_ref++;
            }
            memcpy(got, lab, (size_t)n * 2);
            int64_t removed = -1;
            MS_CHECK_OK(ms_labels_postprocess(got, d, conn, keep, min_size, &removed));
            MS_CHECK(!memcmp(got, want, (size_t)n * 2) && removed == removed_ref,
                     "trial %d (%lldx%lldx%lld, %d-conn) keep_largest %d min_size %lld: differs from the flood fill "
                     "(%lld removed, reference %lld)", trial, (long long)d[0], (long long)d[1], (long long)d[2], conn,
                     keep, (long long)min_size, (long long)removed, (long long)removed_ref);
        }
        free(lab), free(got), free(want), free(mask), free(comp), free(ref), free(sz), free(stack), free(sizes);
    }
    /* hand cases: two voxels touching at a corner are one 26-component and two 6-components; a tie keeps the first */
    {
        int64_t d[3] = {2, 2, 2};
        uint16_t lab[8] = {1, 0, 0, 0, 0, 0, 0, 1}, l6[8];
        memcpy(l6, lab, sizeof lab);
        MS_CHECK_OK(ms_labels_postprocess(lab, d, 26, 1, 0, NULL));
        MS_CHECK(lab[0] == 1 && lab[7] == 1, "26-connectivity: corner neighbours are one component");
        MS_CHECK_OK(ms_labels_postprocess(l6, d, 6, 1, 0, NULL));
        MS_CHECK(l6[0] == 1 && l6[7] == 0, "6-connectivity tie: the first component in raster order stays");
        uint16_t z[8] = {0};
        MS_CHECK(ms_labels_postprocess(z, d, 5, 1, 0, NULL) != MS_OK, "connectivity 5 must be refused");
    }
    return ms_test_done();
}
