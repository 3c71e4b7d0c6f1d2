/* finetune/amg.h — SAM's automatic mask generator (segment_anything/automatic_mask_generator.py,
 * SamAutomaticMaskGenerator without crops: crop_n_layers 0, min_mask_region_area 0) on one image embedding.
 *
 * A grid of n×n points at ((i + 0.5)/n·w, (j + 0.5)/n·h) (amg.py's build_point_grid: numpy linspace, scaled by the
 * image's width and height), row by row, each point one foreground prompt; the points go through the prompt encoder
 * and mask decoder points_per_batch at a time. Every multimask output (tokens 1..M−1) is a candidate, in order
 * (point, token). A candidate is kept when its predicted IoU > pred_iou_thresh (only when that threshold is > 0,
 * as upstream), its logits at the image's size (the predictor's post-processing, finetune/sam.h) give a stability
 * score >= stability_thresh (only when > 0): #(logit > offset) / #(logit > −offset), the IoU of the masks thresholded
 * at ±offset around the mask threshold 0. The mask is logit > 0; its box is the inclusive pixel bounds (x0, y0,
 * x1, y1; (0,0,0,0) when empty). Then box non-maximum suppression, greedy in decreasing predicted IoU, removes every
 * box whose IoU with a kept one is > box_nms_thresh (torchvision's nms, areas (x1−x0)(y1−y0) as upstream hands it
 * the inclusive boxes). The result is in decreasing predicted IoU, as the generator returns it. Comparisons are made
 * as PyTorch makes them: predicted IoU and stability score in float32 against the thresholds rounded to float32,
 * the box IoU in float32 against the double threshold.
 *
 * Masks are kept as COCO uncompressed run-length encoding (amg.py's mask_to_rle_pytorch): the mask in column-major
 * (Fortran) order, counts of alternating runs starting with a run of zeros (0 when the first pixel is set).
 */
#ifndef MS_AMG_H
#define MS_AMG_H

#include <stdint.h>

#include "base/device.h"
#include "base/status.h"
#include "finetune/sam.h"

typedef struct ms_amg_config {
    int points_per_side;    /* 32 */
    int points_per_batch;   /* 64 */
    float pred_iou_thresh;  /* 0.88; <= 0: no filter */
    float stability_thresh; /* 0.95; <= 0: no filter */
    float stability_offset; /* 1.0 */
    double box_nms_thresh;  /* 0.7 */
    /* optional, for tests: every candidate before filtering, logits at the image's size (n·n·(M−1), h, w) and
     * predicted IoU (n·n·(M−1)), host, in candidate order; NULL = not kept */
    float *cand_logits, *cand_iou;
} ms_amg_config;

typedef struct ms_amg_mask {
    double point[2];    /* the grid point (x, y) in the image's pixels */
    float iou;          /* predicted IoU */
    float stability;    /* stability score */
    int box[4];         /* x0, y0, x1, y1, inclusive */
    int64_t area;       /* pixels set */
    int64_t *counts;    /* RLE counts (column-major, starting with zeros) */
    int64_t n_counts;
} ms_amg_mask;

typedef struct ms_amg_result {
    int h, w;
    int n, cap;         /* masks kept, room in m */
    ms_amg_mask *m;     /* decreasing predicted IoU */
    int n_candidates;   /* n·n·(M−1) */
    int n_iou, n_stable; /* candidates past the IoU filter, past both filters (before NMS) */
} ms_amg_result;

/* SamAutomaticMaskGenerator's defaults: 32 points per side, 64 per batch, 0.88, 0.95, offset 1, NMS 0.7. */
void ms_amg_config_default(ms_amg_config *c);
/* emb: device (1, 256, g, g), the embedding of an h×w image preprocessed for m (stretched != 0: stretched to S×S,
 * else ResizeLongestSide). Runs SAM's own head (out_heads[0]). On failure *out is empty. */
ms_status ms_amg_generate(ms_device *dev, ms_sam *m, const float *emb, int h, int w, int stretched,
                          const ms_amg_config *c, ms_amg_result *out);
void ms_amg_result_free(ms_amg_result *r);
/* The two stages of ms_amg_generate, for candidates made elsewhere (tests): r->h, r->w set and r otherwise zeroed
 * before the first. A candidate whose predicted IoU passes (ms_amg_iou_passes) needs its logits at the image's size
 * (h·w; NULL otherwise) and is appended when its stability score passes; ms_amg_nms then keeps the NMS survivors in
 * decreasing predicted IoU. */
int ms_amg_iou_passes(const ms_amg_config *c, float iou);
ms_status ms_amg_add_candidate(ms_amg_result *r, const ms_amg_config *c, const float *logits, float iou, double x,
                               double y);
ms_status ms_amg_nms(ms_amg_result *r, double thresh);
/* The masks as one label image (h·w): masks are painted in decreasing area (ties: rank), so a smaller mask stays
 * visible over a larger one it overlaps; pixel = 1 + the mask's rank in r->m, 0 where no mask is. Masks of rank
 * >= max_label are not painted (an 8-bit PNG holds 255). */
ms_status ms_amg_label_map(const ms_amg_result *r, int max_label, uint16_t *labels);
/* The masks as JSON, one record per mask in r's order, the fields of SamAutomaticMaskGenerator.generate() with
 * output_mode "uncompressed_rle": {"segmentation": {"size": [h, w], "counts": [...]}, "area", "bbox": [x0, y0,
 * x1 − x0, y1 − y0] (amg.py's box_xyxy_to_xywh), "predicted_iou", "point_coords": [[x, y]], "stability_score",
 * "crop_box": [0, 0, w, h]}. Written crash-safe (kernels/base/fileio.h). */
ms_status ms_amg_write_json(const char *path, const ms_amg_result *r);

#endif
