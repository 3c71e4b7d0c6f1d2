/* finetune/predict.h — automatic (prompt-free) multi-class segmentation of NIfTI volumes and PNG images (one slice
 * each, as ingest stores a PNG: ms_predict_png) with a SAM-layout model or a fine-tuned checkpoint, and prompted
 * segmentation for prompt-trained ones (`mrisam predict`, `mrisam eval --ckpt`; docs/CLI.md §predict, docs/MODEL.md
 * §Multi-class output).
 *
 * Per volume: ms_nifti_open → frame 0 as a canonical RAS+ float volume → ingest's intensity normalisation
 * (ms_intensity_fit + ms_intensity_apply to uint16, then /65535 exactly as the loader feeds training) → slices
 * along ingest's axis (rows = the lower remaining canonical axis, columns = the higher one) → SAM preprocessing
 * (ms_prep_image at the model's input size; a fine-tuned checkpoint's own) → image encoder in batches → prompt
 * encoder with no prompts (sparse empty, dense = no_mask_embed) → mask decoder, tokens 1..num_cls (multimask
 * output) → low-res logits post-processed to the slice size (ms_sam_postprocess_masks) → per-pixel argmax over the
 * num_cls channels (class 0 = background, the first maximum wins ties) → restacked canonical label volume
 * → optional post-processing (ms_predict_opts keep_largest / min_size: connected components of each class on the
 * canonical volume) → written on the input's stored grid with ms_nifti_write_labels_like (exact geometry, no free
 * text, verified by reading back).
 *
 * Class values: class c is written as class_map[c] when a map is given (a fine-tuned task's sorted label values),
 * else as c. Every slice is segmented (ingest's near-empty-slice filter is a training-data choice, not a geometry one).
 *
 * Fine-tuned checkpoints (finetune/ft_model.h: RUN/, RUN/best, a ckpt dir with meta.json): ms_predict_model_load
 * builds the ms_ft_model, selects the task's decoder head, and takes the preprocessing (input size, resize
 * longest|stretch, norm), ingest's axis and intensity normalisation and the task's class values from meta.json.
 * PEFT tensors live inside the ms_sam, so the predictor runs it exactly like a plain SAM. With MS_RESIZE_STRETCH the
 * post-processing resizes the whole S×S frame to the slice (no crop).
 *
 * Prompt-trained checkpoints (prompt != none): prompts come from a label volume on the input's grid. Per slice, the
 * label goes to the model's label grid as training's targets do (ms_prep_label); per class c >= 1 present there
 * (value class_map[c]) the deterministic prompts of finetune/prompt_gen.h (boxes of the largest regions, most interior
 * points) give one binary prediction (channels background, foreground); the classes are combined per pixel: among the
 * classes predicted positive (foreground logit above the background one) the one with the highest foreground
 * probability σ(l_fg − l_bg) wins (ties: the lower class).
 */
#ifndef MS_PREDICT_H
#define MS_PREDICT_H

#include <stdint.h>

#include "base/status.h"
#include "data/intensity.h"
#include "data/nifti.h"
#include "data/preprocess.h"
#include "finetune/ft_model.h"
#include "finetune/sam.h"

typedef struct ms_predict_opts {
    int axis;                 /* MS_AXIS_* of data/ingest.h (MS_AXIS_AUTO: ingest's rule) */
    ms_norm norm;             /* ingest's intensity normalisation */
    double p_lo, p_hi;        /* percentiles for MS_NORM_PERCENTILE (0.5, 99.5) */
    int batch;                /* slices per encoder batch (>= 1) */
    const uint16_t *class_map;/* class c → written value; NULL = identity */
    int n_class_map;          /* entries in class_map (must cover every class when given) */
    /* Post-processing of each predicted volume (finetune/components.h ms_labels_postprocess), per class: keep only
     * the largest connected component, and/or remove components under min_size voxels; conn 26 (default) or 6. */
    int keep_largest;
    int64_t min_size;
    int conn;
    /* Called after every batch with the number of slices done in this volume and its total (may be NULL). */
    void (*progress)(void *ctx, int64_t done, int64_t total);
    void *progress_ctx;
} ms_predict_opts;

void ms_predict_opts_default(ms_predict_opts *o);

/* A loaded model plus the buffers of one batch. */
typedef struct ms_predictor {
    ms_sam *m;                 /* not owned */
    ms_device *dev;            /* not owned */
    int batch, num_cls;        /* num_cls = the active head's n_mask_tokens − 1 channels (2 with prompts) */
    int M;                     /* the active head's mask tokens */
    int prompt;                /* ms_prompt_mode the head was trained with (MS_PROMPT_NONE: automatic) */
    ms_prep_config pc;
    float *hx;                 /* host (batch, 3, S, S) */
    float *x, *emb;            /* device input and embeddings */
    float *low;                /* host (batch, M, lo, lo) */
    ms_sam_prompt_state pst;   /* the (constant) no-prompt state; per slice with prompts */
    ms_prep_scratch scr;
    float *full;               /* host scratch (channels or classes, H, W), grown on demand */
    size_t full_cap;
} ms_predictor;

/* SAM's preprocessing at the model's input size, no prompts (plain SAM-layout weights). */
ms_status ms_predictor_init(ms_predictor *p, ms_sam *m, ms_device *dev, int batch);
/* The same with an explicit preprocessing (pc->size must be the size the encoder runs at) and prompt mode; the
 * decoder's ACTIVE head (ms_sam_decoder_use_head) is the one used. */
ms_status ms_predictor_init_ex(ms_predictor *p, ms_sam *m, ms_device *dev, int batch, const ms_prep_config *pc,
                               int prompt);
void ms_predictor_free(ms_predictor *p);

/* Segments nb <= p->batch slices of H×W pixels in [0,1] (img01, nb·H·W, row-major) into lab (nb·H·W, class map
 * applied). prompt_lab (nb·H·W stored label values) is required when the head was trained with prompts, else
 * ignored. */
ms_status ms_predict_slices(ms_predictor *p, const ms_predict_opts *o, const float *img01, const uint16_t *prompt_lab,
                            int nb, int H, int W, uint16_t *lab);

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
/* The same with prompts from frame 0 of the label volume pl (its grid must be n's); pl may be NULL without prompts. */
ms_status ms_predict_volume_prompted(ms_predictor *p, const ms_predict_opts *o, const ms_nifti *n,
                                     const ms_nifti *pl, ms_predict_result *r);

/* Opens in_path, segments it and writes out_path (.nii or .nii.gz) on the input's grid. r may be NULL; when
 * given it keeps the result (the caller frees it). Errors read "<path>: reason". */
ms_status ms_predict_file(ms_predictor *p, const ms_predict_opts *o, const char *in_path, const char *out_path,
                          ms_predict_result *r);
/* The same with prompts from the label volume prompt_path (NULL: none). */
ms_status ms_predict_file_prompted(ms_predictor *p, const ms_predict_opts *o, const char *in_path,
                                   const char *prompt_path, const char *out_path, ms_predict_result *r);

/* ---- 2-D images ----------------------------------------------------------------------------------------------- */

/* A PNG as ingest stores one (gray at its bit depth, colour converted by libpng: data/png.h; one axial slice of
 * canonical dims (rows, columns, 1), voxel size 1), segmented like a volume (same intensity normalisation, same
 * post-processing, in-plane), and its class ids written to out_path as an 8-bit gray PNG of the image's size; a class
 * value above 255 is refused. Prompt-trained checkpoints are refused (images have no prompt source yet). r as
 * ms_predict_file. Errors read "<path>: reason". */
ms_status ms_predict_png(ms_predictor *p, const ms_predict_opts *o, const char *in_path, const char *out_path,
                         ms_predict_result *r);

/* What an input file holds: by its name (.nii, .nii.gz, .hdr, .img[.gz] → NIfTI/ANALYZE; .png), else by its first
 * bytes: text → a list of inputs; PNG's signature → PNG; other binary → NIfTI/ANALYZE (whose reader names what is
 * wrong). Image formats predict does not read (JPEG, TIFF, BMP, GIF, WebP, DICOM, NumPy, ...) give MS_INPUT_OTHER
 * with *what naming the format, found by name or by signature. */
typedef enum ms_input_kind { MS_INPUT_NIFTI, MS_INPUT_PNG, MS_INPUT_LIST, MS_INPUT_OTHER } ms_input_kind;
ms_status ms_predict_input_kind(const char *path, ms_input_kind *kind, const char **what);
/* The format an image file name's ending names when predict does not read it ("JPEG", "TIFF", ...), else NULL. */
const char *ms_predict_other_format(const char *path);

/* The paths of a list file: one a line; blank lines and lines starting with '#' skipped, surrounding blanks and a
 * CR dropped; a relative path is relative to the list file's folder. At least one. */
ms_status ms_predict_list_read(const char *path, char ***paths, int *n);

/* ---- the model behind --ckpt: SAM-layout weights or a fine-tuned checkpoint ---------------------------------- */
typedef struct ms_predict_model {
    int finetuned;             /* 1: ms_ft_model (meta.json + model.safetensors), 0: SAM-layout weight file */
    ms_sam sam;                /* finetuned == 0 */
    ms_ft_model ft;            /* finetuned == 1 */
    ms_sam *m;                 /* the model to run: &sam or &ft.sam (task head selected) */
    int task;                  /* the selected task (fine-tuned) */
    int prompt;                /* ms_prompt_mode of the checkpoint */
    ms_prep_config pc;         /* the preprocessing to apply */
    int n_classes;             /* classes incl. background */
    uint16_t class_map[MS_FT_MAX_CLASSES]; /* class c → label value (identity for SAM-layout weights) */
    int has_prep;              /* 1: axis/norm/percentiles below come from the checkpoint */
    int axis;
    ms_norm norm;
    double p_lo, p_hi;
} ms_predict_model;

/* What a --ckpt names. Every command's --ckpt takes all of these (docs/CLI.md §Model weights and checkpoints). */
typedef enum ms_ckpt_kind {
    MS_CKPT_WEIGHTS = 0,  /* a SAM-layout weight file (.pth / .safetensors) */
    MS_CKPT_PRETRAIN = 1, /* a pretraining checkpoint: RUN/ (its newest complete one), RUN/ckpt/, RUN/ckpt/step_N/ */
    MS_CKPT_FINETUNE = 2  /* a fine-tuning checkpoint: RUN/ (→ best/), RUN/best/, RUN/ckpt/step_N/ (meta.json) */
} ms_ckpt_kind;

/* ckpt → its kind and, into dir[MS_PATH_MAX], the checkpoint directory (ckpt itself for a weight file). Anything
 * that is not a directory is a weight file (its reader reports what is wrong with it); a directory that is no
 * checkpoint is refused naming what was looked for. */
ms_status ms_ckpt_resolve(const char *ckpt, ms_ckpt_kind *kind, char *dir);
/* A pretraining checkpoint directory (a step directory with DONE) as a whole SAM: prompt encoder and mask decoder
 * rebuilt as the run built them (its config.json: the starting SAM file, or the variant and seed of a random
 * initialisation), the image encoder from its model.safetensors. name (n bytes) gets the variant. */
ms_status ms_sam_load_pretrain(ms_sam *m, const char *dir, ms_device *dev, char *name, size_t n);

/* ckpt: anything ms_ckpt_resolve takes. task: a task name, or NULL for the only task (an error listing the names
 * when there are several). */
ms_status ms_predict_model_load(ms_predict_model *pm, const char *ckpt, const char *task, ms_device *dev);
/* The same; any_task != 0 lets a several-task checkpoint load without --task (task 0's head active) for callers
 * that use only the image encoder (embed). */
ms_status ms_predict_model_load_ex(ms_predict_model *pm, const char *ckpt, const char *task, int any_task,
                                   ms_device *dev);
void ms_predict_model_free(ms_predict_model *pm);
/* The task names of a loaded fine-tuned model, comma-separated, into buf. */
void ms_predict_model_task_names(const ms_predict_model *pm, char *buf, size_t n);

/* Three overlay PNGs of a predicted volume (slices at 1/4, 1/2 and 3/4 along its axis, gray with the label colours
 * blended at 50 %) as dir/<stem>_s<k>.png, stem = in_path's file name without .nii / .nii.gz. */
ms_status ms_predict_write_overlays(const char *dir, const char *in_path, const ms_predict_result *r);

#endif
