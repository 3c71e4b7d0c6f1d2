/* finetune/components.h — connected components of 3-D masks and the label post-processing of `mrisam predict`
 * (docs/CLI.md §predict: --keep-largest, --min-size).
 *
 * Components: 26-connectivity (voxels sharing a face, an edge or a corner; what nnU-Net's "keep the largest
 * component" uses: skimage's label with full connectivity) or 6-connectivity (a shared face). Ranked by size, ties
 * broken by the component whose first voxel comes first in raster order (x fastest). A one-slice volume with
 * 26-connectivity is the 2-D 8-connectivity of finetune/prompt_gen.h's ms_components (which calls this one).
 */
#ifndef MS_COMPONENTS_H
#define MS_COMPONENTS_H

#include <stdint.h>

#include "base/status.h"

/* Components of mask (dim[0]·dim[1]·dim[2], x fastest, nonzero = foreground) at connectivity conn (6 or 26).
 * comp (same size): −1 on background, else the component's rank by size (0 = largest). sizes: the first
 * min(n, cap) sizes, descending (may be NULL). *n_comp: the count. At most INT32_MAX voxels. */
ms_status ms_components3d(const uint8_t *mask, const int64_t dim[3], int conn, int32_t *comp, int64_t *sizes, int cap,
                          int *n_comp);

/* Per class value c > 0 of a label volume, independently: keep_largest keeps only c's largest component (ties: as
 * above) and min_size > 0 removes c's components of fewer than min_size voxels; removed voxels become 0 (background).
 * *n_removed (may be NULL) gets the number of voxels set to 0. Nothing to do (keep_largest 0, min_size <= 1): lab is
 * left as it is. */
ms_status ms_labels_postprocess(uint16_t *lab, const int64_t dim[3], int conn, int keep_largest, int64_t min_size,
                                int64_t *n_removed);

#endif
