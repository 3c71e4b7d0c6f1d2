/* finetune/eval.h — metrics of label volumes: 3D Dice, IoU, HD95 and NSD per class.
 *
 * Classes are label values > 0 (0 is background and never scored). For class c with P = {pred == c} and
 * G = {gt == c}: Dice = 2|P∩G| / (|P| + |G|), IoU = |P∩G| / |P∪G|. When both P and G are empty the metric is
 * undefined and reported as NaN (never as 1): an empty prediction on an empty ground truth says nothing about the
 * model, and counting it as a perfect score inflates means. Means and standard deviations skip non-finite entries.
 */
#ifndef MS_EVAL_H
#define MS_EVAL_H

#include <stdint.h>

#include "base/status.h"

/* Per-label voxel counts, indexed by label value 0..n_labels-1. */
typedef struct ms_overlap {
    int n_labels;   /* 1 + the largest label in either volume */
    int64_t *inter; /* |P∩G| */
    int64_t *pred;  /* |P| */
    int64_t *gt;    /* |G| */
} ms_overlap;

/* Counts over n voxels (n_threads <= 0: OpenMP's default). Labels are 16-bit class values. */
ms_status ms_overlap_count(const uint16_t *pred, const uint16_t *gt, int64_t n, int n_threads, ms_overlap *o);
void ms_overlap_free(ms_overlap *o);

/* NaN when both sets are empty. */
double ms_dice(int64_t inter, int64_t np, int64_t ng);
double ms_iou(int64_t inter, int64_t np, int64_t ng);

/* HD95 of class c in mm: the larger of the two directed 95th percentiles (numpy's linear interpolation) of the
 * distances from each surface voxel of one mask to the nearest surface voxel of the other (MONAI's
 * compute_hausdorff_distance with percentile 95). A surface voxel is a voxel of the mask with a 6-neighbour outside the
 * mask or outside the volume. Distances are between voxel centres, scaled by spacing (x, y, z in mm; exact on an
 * orthogonal grid, rotated or not). *out is NaN when both masks are empty and +inf when exactly one is. Volumes are
 * dim[0]·dim[1]·dim[2], x fastest; the exact separable distance transform runs on the masks' bounding box. */
ms_status ms_hd95(const uint16_t *pred, const uint16_t *gt, const int64_t dim[3], const double spacing[3], int c,
                  int n_threads, double *out);

/* NSD (normalized surface Dice) of class c at tolerance tol_mm, as the DeepMind surface-distance package defines it
 * (compute_surface_distances + compute_surface_dice_at_tolerance, which MedSAM's evaluation uses): the surface of a
 * mask is the marching-cubes surface of its 2x2x2 voxel neighbourhoods; each lattice point between voxels (outside
 * the volume counts as background) whose neighbourhood is neither empty nor full is a surface element, weighted by
 * the area (mm², from spacing) of its marching-cubes triangles. Its distance to the other surface is the distance to
 * the nearest surface element of the other mask. NSD = (area of the surface elements of either mask within tol_mm of
 * the other surface) / (total area of both surfaces); "within" is at most tol_mm·(1 + 1e-6), since voxel sizes are
 * float32 and an exact tie must not depend on their rounding. The triangles: vertices at edge midpoints; a face with
 * two diagonal corners of the minority kind (inside when 4 or fewer of the 8 are inside) keeps them apart; each
 * polygon is triangulated as the fan with the fewest distinct planes. *out is NaN when both masks are empty and 0
 * when exactly one is. Volumes and spacing as ms_hd95. */
ms_status ms_nsd(const uint16_t *pred, const uint16_t *gt, const int64_t dim[3], const double spacing[3], int c,
                 double tol_mm, int n_threads, double *out);

/* Mean and sample standard deviation (n-1; 0 for a single value) of the finite entries; *n_used gets their count.
 * Both NaN when there is none. */
void ms_mean_sd(const double *v, int n, double *mean, double *sd, int *n_used);

#endif
