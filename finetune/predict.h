/* finetune/predict.h — automatic (prompt-free) multi-class segmentation of NIfTI volumes with a SAM-layout model
 * (`mrisam predict`, cli.md "predict", sam.md §6.4).
 *
 * Per volume: ms_nifti_open → frame 0 as a canonical RAS+ float volume → ingest's intensity normalisation
 * (ms_intensity_fit + ms_intensity_apply to uint16, then /65535 exactly as the loader feeds training) → slices
 * along ingest's axis (rows = the lower remaining canonical axis, columns = the higher one) → SAM preprocessing
 * (ms_prep_image at the model's input size) → image encoder in batches → prompt encoder with no prompts (sparse
 * empty, dense = no_mask_embed) → mask decoder, tokens 1..num_cls (multimask output) → low-res logits
 * post-processed to the slice size (ms_sam_postprocess_masks) → per-pixel argmax over the num_cls channels
 * (class 0 = background, the first maximum wins ties) → restacked canonical label volume → written on the
 * input's stored grid with ms_nifti_write_labels_like (exact geometry, no free text, verified by reading back).
 *
 * Class values: class c is written as class_map[c] when a map is given (finetune's sorted label values, cli.md
 * "ingest"), else as c. Fine-tuned run directories do not exist yet; the map is the hook for them.
 * Every slice is segmented (ingest's near-empty-slice filter is a training-data choice, not a geometry one).
 */
#ifndef MS_PREDICT_H
#define MS_PREDICT_H

#include <stdint.h>

#include "base/status.h"
#include "data/intensity.h"
#include "data/nifti.h"
#include "data/preprocess.h"
#include "finetune/sam.h"

typedef struct ms_predict_opts {
    int axis;                 /* MS_AXIS_* of data/ingest.h (MS_AXIS_AUTO: ingest's rule) */
    ms_norm norm;             /* ingest's intensity normalisation */
    double p_lo, p_hi;        /* percentiles for MS_NORM_PERCENTILE (0.5, 99.5) */
    int batch;                /* slices per encoder batch (>= 1) */
    const uint16_t *class_map;/* class c → written value; NULL = identity */
    int n_class_map;          /* entries in class_map (must cover every class when given) */
    /* Called after every batch with the number of slices done in this volume and its total (may be NULL). */
    void (*progress)(void *ctx, int64_t done, int64_t total);
    void *progress_ctx;
} ms_predict_opts;

void ms_predict_opts_default(ms_predict_opts *o);

/* A loaded model plus the buffers of one batch. */
typedef struct ms_predictor {
    ms_sam *m;                 /* not owned */
    ms_device *dev;            /* not owned */
    int batch, num_cls;        /* num_cls = n_mask_tokens − 1 channels of the argmax */
    ms_prep_config pc;
    float *hx;                 /* host (batch, 3, S, S) */
    float *x, *emb;            /* device input and embeddings */
    float *low;                /* host (batch, M, lo, lo) */
    ms_sam_prompt_state pst;   /* the (constant) no-prompt state */
    ms_prep_scratch scr;
} ms_predictor;

ms_status ms_predictor_init(ms_predictor *p, ms_sam *m, ms_device *dev, int batch);
void ms_predictor_free(ms_predictor *p);

/* What one volume gave: canonical grid (n->cdim, x fastest). */
typedef struct ms_predict_result {
    int axis;                  /* the slicing axis used (MS_AXIS_SAGITTAL/CORONAL/AXIAL) */
    int64_t dim[3];            /* canonical dims */
    int64_t n_slices, H, W;    /* slices along axis, rows, columns */
    uint16_t *labels;          /* canonical labels (written values, class map applied) */
    float *image01;            /* canonical normalised intensity in [0,1] (what the model saw, before resizing) */
    uint64_t n_nonfinite;
} ms_predict_result;

void ms_predict_result_free(ms_predict_result *r);

/* Segments frame 0 of an opened volume. */
ms_status ms_predict_volume(ms_predictor *p, const ms_predict_opts *o, const ms_nifti *n, ms_predict_result *r);

/* Opens in_path, segments it and writes out_path (.nii or .nii.gz) on the input's grid. r may be NULL; when
 * given it keeps the result (the caller frees it). Errors read "<path>: reason". */
ms_status ms_predict_file(ms_predictor *p, const ms_predict_opts *o, const char *in_path, const char *out_path,
                          ms_predict_result *r);

#endif
