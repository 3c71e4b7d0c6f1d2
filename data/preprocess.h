/* data/preprocess.h — SAM's input preprocessing on the CPU (docs/MODEL.md §Preprocessing, docs/CLI.md
 * §Preprocessing).
 *
 * Input: one gray slice as floats in [0,1] (the store's normalised intensity) and a box (the whole slice, or a
 * RandomResizedCrop box). Output: `channels` planes of size×size floats. MS_RESIZE_LONGEST (SAM, the default)
 * scales the box so its longest side is `size` (newh = int(h·size/max + 0.5)), resamples bilinearly — with PIL's
 * antialiasing triangle filter when shrinking — and leaves the bottom/right padding at 0 after normalisation, as
 * SAM pads after normalising; MS_RESIZE_STRETCH (finetune-SAM) fills size×size. MS_NORM_SAM: gray·255 replicated to
 * 3 channels minus SAM's pixel mean, over its std; MS_NORM_UNIT: the [0,1] value (MedSAM-style weights).
 * Labels are resampled by nearest neighbour straight to label_size×label_size (the mask decoder's output, size/4),
 * in the same frame as the image: padding is label 0.
 * Resampling weights are normalised, so a constant image stays constant, and an identity-size resize is exact.
 */
#ifndef MS_PREPROCESS_H
#define MS_PREPROCESS_H

#include <stddef.h>
#include <stdint.h>

#include "augment/augment.h"
#include "base/status.h"

enum { MS_RESIZE_LONGEST = 0, MS_RESIZE_STRETCH = 1 };
enum { MS_NORM_SAM = 0, MS_NORM_UNIT = 1 };

typedef struct ms_prep_config {
    int size;       /* model input size (1024 for SAM) */
    int resize;     /* MS_RESIZE_LONGEST | MS_RESIZE_STRETCH */
    int norm;       /* MS_NORM_SAM | MS_NORM_UNIT */
    int channels;   /* 3 (the model's input) or 1 (the gray plane; the consumer replicates) */
    int label_size; /* label map side; size/4 by default */
} ms_prep_config;

extern const float ms_sam_pixel_mean[3], ms_sam_pixel_std[3];

void ms_prep_config_default(ms_prep_config *c, int size);
/* Resolves "longest|stretch" and "sam|medsam|unit" (NULL keeps the current value). */
ms_status ms_prep_parse(ms_prep_config *c, const char *resize, const char *norm);

/* The part of the size×size frame that the box fills: rows [0, *oh), columns [0, *ow). */
void ms_prep_frame(const ms_prep_config *c, float box_h, float box_w, int *oh, int *ow);

/* Scratch memory for the resampler, grown on demand; one per thread. */
typedef struct ms_prep_scratch {
    void *buf;
    size_t cap;
} ms_prep_scratch;
void ms_prep_scratch_free(ms_prep_scratch *s);

/* Separable resampling of box of img (h×w) to oh×ow, written with row stride out_stride. Taps outside the box
 * are dropped and the weights renormalised (PIL's behaviour on a cropped image). */
ms_status ms_resize_bilinear(const float *img, int h, int w, const ms_box *box, float *out, int oh, int ow,
                             int out_stride, ms_prep_scratch *s);

/* Image → channels × size × size normalised floats. box NULL = the whole slice. */
ms_status ms_prep_image(const ms_prep_config *c, const float *img, int h, int w, const ms_box *box, float *out,
                        ms_prep_scratch *s);
/* Label (h×w) → label_size × label_size by nearest neighbour in the same frame; padding is 0. */
void ms_prep_label(const ms_prep_config *c, const uint16_t *label, int h, int w, const ms_box *box, uint16_t *out);

/* Gray (c = 1) or RGB (c = 3) pixels on the 0..1 scale, HWC → 3 × size × size model input (zeros outside the
 * frame), each channel with its own SAM mean/std — what embed and segment feed SAM from a PNG. */
ms_status ms_prep_image_hwc(const ms_prep_config *pc, const float *img01, int h, int w, int c, float *out);

/* The inverse for pictures and reconstruction targets: channel 0 of a normalised size × size model input back to the
 * 0..1 gray scale (not clamped); 0 outside the frame rows [0, fh) × columns [0, fw) the slice fills, so the padding
 * counts as background. */
void ms_prep_to_gray(const ms_prep_config *pc, const float *chw, int fh, int fw, float *gray);

#endif
