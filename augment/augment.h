/* augment/augment.h — data augmentation on one native-resolution slice (float image in [0,1], optional uint16 label).
 *
 * Pure functions: every random choice comes from an ms_rng cursor the caller keys with
 * ms_rng_stream(seed, epoch, position), so a sample's augmentation is reproducible and independent of which thread
 * runs it. Geometric transforms move image and label together (labels by nearest neighbour, so label values stay in
 * their set); intensity transforms touch the image only. The crop of RandomResizedCrop is returned as a box that
 * data/preprocess.h resizes straight to the model input (one resampling, antialiased when shrinking).
 * Order inside ms_aug_apply: intensity → flips / 90° rotations → small rotation + scaling → crop box.
 */
#ifndef MS_AUGMENT_H
#define MS_AUGMENT_H

#include <stdint.h>

#include "base/rng.h"
#include "base/status.h"

/* A crop box in pixel units of the (augmented) native image. */
typedef struct ms_box {
    float y0, x0, h, w;
} ms_box;

typedef struct ms_aug_config {
    /* MAE (docs/MAE.md §Inputs) */
    int rrc;                   /* RandomResizedCrop */
    float rrc_scale[2];        /* area fraction, default 0.4..1.0 */
    float rrc_ratio[2];        /* aspect w/h, default 3/4..4/3 (sampled log-uniformly) */
    float p_hflip;             /* horizontal flip */
    /* segmentation (joint image + label) */
    float p_vflip;
    float p_rot90;             /* rotate by k·90°, k uniform in 1..3 */
    float p_affine;            /* small rotation and scaling about the centre */
    float max_rot_deg;         /* rotation uniform in ±max_rot_deg */
    float scale_range[2];      /* zoom factor */
    /* intensity (image only) */
    float p_gamma;
    float gamma_range[2];      /* x^γ, γ log-uniform in the range */
    float p_contrast;
    float contrast_range[2];   /* (x − mean)·c + mean */
    float brightness;          /* + uniform in ±brightness */
    float p_noise;
    float noise_sd[2];         /* Gaussian noise, sd uniform in the range */
    float p_bias;
    float bias_strength;       /* multiplicative exp(quadratic polynomial), coefficients in ±strength */
} ms_aug_config;

void ms_aug_config_none(ms_aug_config *c);
/* RandomResizedCrop(0.4..1.0, 3/4..4/3) + horizontal flip p 0.5. */
void ms_aug_config_mae(ms_aug_config *c);
/* Flips, 90° rotations, ±15° rotation and 0.85..1.15 scaling, gamma, contrast/brightness, noise, bias field. */
void ms_aug_config_seg(ms_aug_config *c);

/* ---- the individual transforms (in place; label may be NULL) ----------------------------------------------------- */
void ms_aug_hflip(float *img, uint16_t *label, int h, int w);
void ms_aug_vflip(float *img, uint16_t *label, int h, int w);
/* Rotate by k·90° counter-clockwise; *h and *w are swapped for odd k. tmp holds h·w floats (and labels in tmp_l). */
void ms_aug_rot90(float *img, uint16_t *label, int *h, int *w, int k, float *tmp, uint16_t *tmp_l);
/* Rotate by `deg` and zoom by `scale` about the centre; outside pixels become 0. tmp as for rot90. */
void ms_aug_affine(float *img, uint16_t *label, int h, int w, float deg, float scale, float *tmp, uint16_t *tmp_l);
void ms_aug_gamma(float *img, int n, float gamma);
void ms_aug_contrast(float *img, int n, float contrast, float brightness);
void ms_aug_noise(float *img, int n, float sd, ms_rng *r);
void ms_aug_bias_field(float *img, int h, int w, const float coef[5]);
/* torchvision RandomResizedCrop.get_params: 10 tries at the sampled area/ratio, then the clamped-ratio centre crop.
 * The box always lies inside [0, h) × [0, w) and is at least 1×1. */
ms_box ms_aug_rrc_box(ms_rng *r, int h, int w, const float scale[2], const float ratio[2]);

/* The draws ms_aug_apply makes for a configuration of only the horizontal flip and RandomResizedCrop (MAE), without
 * touching pixels: the same random stream, so *flip and *box are what ms_aug_apply would apply to an h × w slice
 * with the same cursor. Fails (MS_EINVAL) for any other transform. */
ms_status ms_aug_draw_flip_crop(const ms_aug_config *c, ms_rng *r, int h, int w, int *flip, ms_box *box);
/* Applies the whole configuration to one sample. img/label hold cap floats/labels (>= h·w); tmp and tmp_l likewise.
 * On return *h, *w are the (possibly rotated) size and *box the region to resize (the full image without RRC). */
void ms_aug_apply(const ms_aug_config *c, ms_rng *r, float *img, uint16_t *label, int *h, int *w, float *tmp,
                  uint16_t *tmp_l, ms_box *box);

#endif
