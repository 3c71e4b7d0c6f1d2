/* finetune/ft_model.h — the fine-tunable SAM: one ms_sam plus per-task output heads and LoRA / adapter tensors,
 * the trainable set of each method × scope (docs/FINETUNE.md), and the run-checkpoint form (model.safetensors +
 * meta.json) that finetune writes and predict / eval / export-weights read.
 *
 * Tasks (multi-task): one shared image encoder, prompt encoder, IoU token, two-way transformer and output
 * upscaling; each task owns its mask tokens, hypernetwork MLPs and IoU head (a decoder head, ms_sam_decoder_add_head).
 * Task 0's head has SAM's own keys (mask_decoder.mask_tokens ...), task t > 0 lives under
 * "tasks.<name>.mask_decoder.". Without prompts, task t's head has num_cls + 1 mask tokens and the output channels
 * are tokens 1..num_cls (finetune-SAM's multimask trick, docs/MODEL.md §Multi-class output): channel c = class c, 0 =
 * background. With a prompt mode every target is binary (one (slice, class) per sample): the head has 3 tokens,
 * channels 2.
 *
 * Loading initial SAM weights follows finetune-SAM's load_from: when the file's mask-token count differs from the
 * head's, mask tokens, hypernetwork MLPs and IoU head are not loaded but re-initialised (one line on stderr says so);
 * every other key must be present with its shape, and PEFT tensors and extra heads are initialised here.
 *
 * A run checkpoint directory (RUN/best, RUN/ckpt/step_N) holds model.safetensors (every tensor of the model under
 * the names above) and meta.json (ms_ft_meta_write); ms_ft_model_load rebuilds the same model from the two.
 */
#ifndef MS_FT_MODEL_H
#define MS_FT_MODEL_H

#include <stdint.h>

#include "base/device.h"
#include "base/status.h"
#include "checkpoints/state_dict.h"
#include "data/intensity.h"
#include "data/preprocess.h"
#include "finetune/sam.h"
#include "finetune/sam_prompt.h"

#define MS_FT_MAX_TASKS 8
#define MS_FT_MAX_CLASSES 31 /* MS_SAM_MAX_MASK_TOKENS − 1 */
#define MS_FT_NAME_MAX 64

typedef enum { MS_FT_FULL = 0, MS_FT_LORA = 1, MS_FT_ADAPTER = 2 } ms_ft_method;
typedef enum { MS_FT_SCOPE_DECODER = 0, MS_FT_SCOPE_ENC_DEC = 1 } ms_ft_scope;
typedef enum { MS_PROMPT_NONE = 0, MS_PROMPT_BOX = 1, MS_PROMPT_POINT = 2, MS_PROMPT_HYBRID = 3 } ms_prompt_mode;

typedef struct ms_ft_task {
    char name[MS_FT_NAME_MAX];               /* from --store S:NAME, else the store's file name */
    int num_cls;                             /* classes including background (0) */
    uint16_t values[MS_FT_MAX_CLASSES];      /* class c ↔ stored label value values[c] (values[0] = 0, sorted) */
    char class_names[MS_FT_MAX_CLASSES][MS_FT_NAME_MAX]; /* "" when the store has none */
} ms_ft_task;

typedef struct ms_ft_config {
    char model[32];            /* vit_b, vit_l, vit_h, vit_test, or "custom" (read from the init weights) */
    ms_ft_method method;
    ms_ft_scope scope;
    ms_prompt_mode prompt;
    int lora_rank;             /* 4 */
    uint64_t lora_blocks;      /* encoder blocks with LoRA (bit i); 0 = every block. vit_t: its layers 1..3 */
    uint64_t adapter_blocks;   /* encoder blocks with adapters; 0 = every block. vit_t: its layers 1..3 */
    float adapter_scale;       /* 0.5 */
    int compat_finetune_sam;   /* train what finetune-SAM trains (docs/FINETUNE.md) */
    int n_tasks;
    ms_ft_task task[MS_FT_MAX_TASKS];
    /* preprocessing that travels with the checkpoint (docs/CLI.md §Model weights and checkpoints) */
    ms_prep_config prep;       /* input size, resize, norm, label size (= 4·grid) */
    int axis;                  /* ingest's slicing axis (MS_AXIS_*), from the store's meta */
    ms_norm intensity;         /* ingest's intensity normalisation */
    double p_lo, p_hi;         /* its percentiles */
} ms_ft_config;

/* full / decoder, no prompt, rank 4, all blocks, scale 0.5, one task "task" of 2 classes, SAM preprocessing at
 * 1024, axial, percentile 0.5..99.5. */
void ms_ft_config_default(ms_ft_config *c);
const char *ms_ft_method_name(ms_ft_method m);
const char *ms_ft_scope_name(ms_ft_scope s);
const char *ms_prompt_mode_name(ms_prompt_mode p);
ms_status ms_ft_method_parse(const char *s, ms_ft_method *m);
ms_status ms_ft_scope_parse(const char *s, ms_ft_scope *sc);     /* "decoder" | "encoder+decoder" */
ms_status ms_prompt_mode_parse(const char *s, ms_prompt_mode *p);
/* Output channels of task t: num_cls without prompts, 2 with. */
int ms_ft_out_channels(const ms_ft_config *c, int t);
/* Index of the task named `name`, or -1. */
int ms_ft_task_find(const ms_ft_config *c, const char *name);

typedef struct ms_ft_model {
    ms_ft_config cfg;
    ms_sam sam;                     /* every tensor: SAM keys, PEFT tensors, tasks.* heads */
    int head[MS_FT_MAX_TASKS];      /* decoder head id of each task */
    ms_device *dev;
    int encoder_trains;             /* scope encoder+decoder: the encoder runs backward */
    int train_bn;                   /* TinyViT: BatchNorm in training mode while training (ms_ft_model_set_training):
                                     * its weights train (full, encoder+decoder), or --compat-finetune-sam (finetune-SAM
                                     * keeps the whole model in train mode) */
    /* buffers (ms_ft_model_reserve) */
    int max_batch, with_backward;
    float *x;                       /* device (max_batch, 3, S, S) input staging */
    float *emb, *demb;              /* device (max_batch, 256, g, g); demb only when encoder_trains */
    float *logits, *dlogits;        /* device (max_batch, C_max, lo, lo), lo = 4·g; class channels of the last decode */
    float *dmasks;                  /* device (max_batch, C_max + 1, lo, lo) */
    int last_task, last_B, last_C;
    const float *last_emb;
    ms_sam_prompt_state pst;
    float *d_sparse;                /* host scratch for the prompt-encoder gradient */
    int64_t d_sparse_cap;
} ms_ft_model;

/* Builds the model: SAM of cfg->model (or of init's shapes when init != NULL), heads, PEFT tensors, the trainable
 * set of cfg's method × scope (gradients allocated only for those), then the initial values: init's tensors
 * (SAM layout, as load_from above) or PyTorch's default initialisation from seed when init == NULL; PEFT tensors
 * and new heads from seed. init in finetune-SAM's layout (finetune/sam.h) is read from a renamed copy with its LoRA
 * merged into the base weights; its adapters (method adapter only, else refused) replace the seeded ones.
 * cfg->model is set to the detected variant name. */
ms_status ms_ft_model_build(ms_ft_model *m, const ms_ft_config *cfg, const ms_state_dict *init, uint64_t seed,
                            ms_device *dev);
/* Sizes the buffers for batches up to max_batch; train = 1 keeps what backward needs. */
ms_status ms_ft_model_reserve(ms_ft_model *m, int max_batch, int train);
/* Count only (docs/PERFORMANCE.md §Memory): the device bytes of an encoder+decoder fine-tuning step of s (SAM's ViT,
 * registered by ms_sam_register_at — no allocation needed) at max_batch, n_classes class channels: the parameters,
 * the gradients of the tensors trainable now and AdamW's fp32 moments (ms_params_train_bytes), the encoder's arena
 * with backward (recompute on or off) and the model's own buffers (ms_ft_model_reserve's). Not counted: the mask
 * decoder's and prompt encoder's arenas (sized per decode by the prompts), the CUDA context, cuBLAS/cuDNN
 * workspaces. Nothing is allocated. */
ms_status ms_ft_step_bytes(const ms_sam *s, int n_classes, int max_batch, int recompute, size_t *bytes);
/* The largest batch (up to 65536; 0: not even 1) whose ms_ft_step_bytes fits budget bytes. */
ms_status ms_ft_largest_batch(const ms_sam *s, int n_classes, int recompute, size_t budget, int *batch);
void ms_ft_model_free(ms_ft_model *m);

/* Training (1) or evaluation (0) mode of the next encodes: only TinyViT's BatchNorms differ (train_bn). Starts 0. */
void ms_ft_model_set_training(ms_ft_model *m, int training);
/* Image encoder on x (device, (B, 3, S, S)) → m->emb. */
ms_status ms_ft_model_encode(ms_ft_model *m, const float *x, int B);
/* Prompt encoder + mask decoder of task t on emb (device (B, 256, g, g): m->emb or cached embeddings uploaded by
 * the caller) → m->logits (B, C, lo, lo), C = ms_ft_out_channels(cfg, t). pr: NULL = no prompt (no_mask_embed);
 * else one prompt per image (pr->bp == B), coordinates in the model input frame (0..S). */
ms_status ms_ft_model_decode(ms_ft_model *m, int t, const float *emb, int B, const ms_sam_prompts *pr);
/* dlogits (device, like m->logits) → gradients of every trainable tensor (+=), through the encoder when it
 * trains (its last forward must be the one the decode used). */
ms_status ms_ft_model_backward(ms_ft_model *m, const float *dlogits);

/* Trainable tensors: count and numel (for logs and tests). */
int64_t ms_ft_model_trainable_numel(const ms_ft_model *m, int *n_tensors);

/* meta.json: {"format":"mrisam-finetune","version":1,"model":..,"method":..,"scope":..,"prompt":..,"lora_rank":..,
 * "lora_blocks":[..],"adapter_blocks":[..],"adapter_scale":..,"compat_finetune_sam":0|1,
 * "tasks":[{"name":..,"num_cls":C,"values":[..],"class_names":[..]}],
 * "preprocess":{"input_size":S,"resize":"longest"|"stretch","norm":"sam"|"medsam","label_size":L,
 *               "axis":"axial"|..,"intensity":"percentile"|..,"p_lo":..,"p_hi":..}} plus `extra_json` (an object's
 * members, e.g. the step and validation Dice; may be NULL). */
ms_status ms_ft_meta_write(const char *path, const ms_ft_config *c, const char *extra_json);
ms_status ms_ft_meta_read(const char *path, ms_ft_config *c);

/* Writes dir/model.safetensors and dir/meta.json (dir must exist; files are written atomically). */
ms_status ms_ft_model_save(const ms_ft_model *m, const char *dir, const char *extra_json);
/* Loads a run checkpoint: `path` is a directory with meta.json + model.safetensors, or a run directory RUN/
 * (→ RUN/best). Nothing is trainable (inference); call ms_ft_model_reserve before use. */
ms_status ms_ft_model_load(ms_ft_model *m, const char *path, ms_device *dev);
/* 1 when path is (or holds best/ with) a finetune checkpoint (meta.json present). */
int ms_ft_is_checkpoint(const char *path);

#endif
