/* finetune/prompt_gen.h — box / point prompts from binary label maps (finetune-SAM's get_first_prompt and
 * get_top_boxes in its utils/funcs.py; docs/FINETUNE.md §Step, "Prompt modes"), and a packer that turns B masks into
 * one ms_sam_prompts plus the restricted binary targets.
 *
 * Regions: 8-connected components (skimage label, connectivity=2), sorted by size (ties: the component whose first
 * pixel comes first in raster order). 'largest_k': only the k = max_regions largest are kept, and the target is
 * restricted to the kept regions (the rest of the mask becomes background).
 *
 * Points: n_points positive points split over the kept regions like random_sum_to: with k' = min(k, components)
 * regions and n_points > k', a uniformly random composition of n_points into k' parts of >= 1 each; with
 * n_points <= k' only the n_points largest regions are kept (one point each; finetune-SAM does the same, and the
 * target follows). Each point is drawn uniformly (with replacement) among the region's pixels whose exact Euclidean
 * distance to the background (of that region alone; outside the image counts as background) is
 * >= max(d[floor(0.1·n)], 1), d = the region's distances sorted descending, n = its size. The list is padded to
 * max_points by repeating the last point; labels are 1. Empty mask: max_points points (0,0) with label −1.
 *
 * Boxes: one per kept region, its tight bounds (below) with each side pushed OUTWARD by U(0,1)·box_jitter of the
 * box width (x sides) / height (y sides), clipped to [0, w·scale − 1] × [0, h·scale − 1]; padded to max_regions by
 * repeating the last box (get_top_boxes). Empty mask: boxes (0,0,0,0) and n_boxes = 0.
 *
 * Coordinates are in the model's input frame: label pixel x maps to the centre of its scale×scale footprint,
 * x·scale + (scale − 1)/2 (= (x + 0.5)·scale − 0.5; scale 1 gives the pixel index itself). A box's tight bounds are
 * the footprint's outer pixels: x0·scale .. x1·scale + scale − 1 (scale 1: finetune-SAM's min/max index).
 *
 * Deterministic (inference): no jitter; points go round-robin over the kept regions, largest first (region i of k'
 * gets n/k' + (i < n mod k')), and within a region they are its most interior pixels (largest distance, ties in
 * raster order) among the same interior candidates, cycling through them when there are fewer than points.
 *
 * Randomness: sample i of a batch draws from ms_rng_stream(seed, ids[i], MS_PROMPTGEN_POINTS or _BOXES), so its
 * prompts depend on (seed, id) only, never on the batch it sits in, and hybrid's points equal point mode's.
 */
#ifndef MS_PROMPT_GEN_H
#define MS_PROMPT_GEN_H

#include <stdint.h>

#include "base/status.h"
#include "finetune/ft_model.h"
#include "finetune/sam_prompt.h"

/* Stream purposes (third word of ms_rng_stream). */
#define MS_PROMPTGEN_POINTS 0x706f696eu
#define MS_PROMPTGEN_BOXES 0x626f7865u
/* Limits checked by every call. */
#define MS_PROMPTGEN_MAX_REGIONS 64
#define MS_PROMPTGEN_MAX_POINTS 1024

typedef struct ms_promptgen_opts {
    int max_regions;  /* 3: keep the 3 largest regions ('largest_3') */
    int n_points;     /* 5 positive points over the kept regions */
    int max_points;   /* 8: point list length (padded by repeating the last point) */
    float box_jitter; /* 0.10: outward push of each box side, fraction of the box width / height */
    double dist_ratio;/* 0.10: interior threshold at rank floor(dist_ratio·n) of the region's distances */
    float scale;      /* 1: label pixel → model input coordinate (4 when labels are the decoder's low-res grid) */
    int deterministic;/* 0: random (training); 1: no jitter, most interior points (inference) */
} ms_promptgen_opts;

/* finetune-SAM's defaults above: 3 regions, 5 points padded to 8, 10% jitter, 10% rank, scale 1, random. */
void ms_promptgen_opts_default(ms_promptgen_opts *o);

/* 8-connected components of mask (h·w, nonzero = foreground). comp (h·w): −1 background, else the component's rank
 * by size (0 = largest). sizes: the first min(n, cap) sizes, descending (may be NULL). *n_comp: the count. */
ms_status ms_components(const uint8_t *mask, int h, int w, int32_t *comp, int64_t *sizes, int cap, int *n_comp);

/* Exact Euclidean distance transform: dist (h·w) = distance of each foreground pixel to the nearest background
 * pixel (pixels outside the image are background), 0 on background. Felzenszwalb-Huttenlocher, two 1D passes. */
ms_status ms_edt(const uint8_t *mask, int h, int w, float *dist);

/* Points of one mask from the random stream `stream` (a key from ms_rng_stream; unused when deterministic):
 * xy (max_points, 2) as (x, y), labels (max_points), target (h·w, 1 on the regions that got points) or NULL.
 * *n_regions: regions that got points (0 = empty mask). */
ms_status ms_promptgen_points(const ms_promptgen_opts *o, const uint8_t *mask, int h, int w, uint64_t stream,
                              float *xy, int32_t *labels, uint8_t *target, int *n_regions);

/* Boxes of one mask: boxes (max_regions, 4) as x0,y0,x1,y1, padded by repeating the last box; target (h·w, 1 on
 * the kept regions) or NULL. *n_boxes: distinct boxes (kept regions; 0 = empty mask, boxes all 0). */
ms_status ms_promptgen_boxes(const ms_promptgen_opts *o, const uint8_t *mask, int h, int w, uint64_t stream,
                             float *boxes, uint8_t *target, int *n_boxes);

/* One batch of prompts and targets; owns its arrays (grown on demand, reused across fills).
 *
 * Layout of `pr` per sample (bp = B, n_points uniform over the batch):
 *   point : n_points = max_points; boxes = NULL (SAM appends its pad point). Empty mask: all labels −1.
 *   box   : boxes row = box 0; boxes 1..max_regions−1 (repeats included, as get_top_boxes pads) follow as point
 *           pairs labelled MS_SAM_LABEL_BOX_TL, _BR (top-left, bottom-right), so n_points = 2·(max_regions − 1) and SAM adds no pad
 *           point. Empty mask: box (0,0,0,0) and all point labels −1 (padding only).
 *   hybrid: the max_points points (labels 1 / −1 as in point mode), then the extra boxes as corner pairs as in box
 *           mode, boxes row = box 0. Target = the union of the regions of points and boxes (= the kept regions).
 * The caller should skip samples with n_regions[i] == 0 in training (their target is empty). */
typedef struct ms_promptgen_batch {
    int B, h, w;
    ms_prompt_mode mode;
    int n_points;      /* points per prompt in pr */
    float *points;     /* (B, n_points, 2) */
    int32_t *labels;   /* (B, n_points) */
    float *boxes;      /* (B, 4); pr.boxes is NULL in point mode */
    uint8_t *target;   /* (B, h, w) restricted binary targets */
    int *n_regions;    /* (B) kept regions per sample (0 = empty mask) */
    ms_sam_prompts pr; /* views of the arrays above, masks = NULL; valid until the next fill or free */
    int64_t cap_pts, cap_b, cap_px; /* capacities: points, samples, target pixels */
} ms_promptgen_batch;

/* Zeroes the struct (no allocation). */
void ms_promptgen_batch_init(ms_promptgen_batch *b);
/* Fills b from B binary masks (B, h, w) under mode (box, point, hybrid); sample i's randomness is keyed by
 * (seed, ids[i]) (ids NULL: i). MS_PROMPT_NONE is an error (no prompt: pass pr = NULL to the model instead). */
ms_status ms_promptgen_batch_fill(ms_promptgen_batch *b, const ms_promptgen_opts *o, ms_prompt_mode mode,
                                  const uint8_t *masks, int B, int h, int w, uint64_t seed, const uint64_t *ids);
void ms_promptgen_batch_free(ms_promptgen_batch *b);

#endif
