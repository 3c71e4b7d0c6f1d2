/* finetune/export.h — checkpoints as SAM (or finetune-SAM) weights: what `mrisam export-weights` writes.
 *
 * Pretraining: CKPT is a run directory (its newest complete checkpoint), its ckpt/ folder, or one ckpt/step_%08d/
 * directory. The checkpoint's own config.json says how the run's model was built (a SAM checkpoint, or a random
 * initialisation with a model and a seed); the prompt encoder and mask decoder are rebuilt that way and the image
 * encoder is read from the checkpoint's model.safetensors.
 *
 * Fine-tuning (ms_ft_is_checkpoint: RUN/, RUN/best, a directory with meta.json): the selected task's head (the only
 * one when task is NULL) goes under mask_decoder.*. MS_LAYOUT_SAM merges LoRA into the base weights (encoder qkv rows
 * 0..D-1 += B_q·A_q and 2D..3D-1 += B_v·A_v; decoder q_proj/v_proj weight += w_b·w_a; the products summed in double)
 * and refuses adapters, which have no SAM equivalent. MS_LAYOUT_FINETUNE_SAM writes finetune-SAM's names and order
 * (mazurowski-lab/finetune-SAM: models/sam/modeling/, models/sam_LoRa.py): attn.qkv.qkv.{weight,bias} +
 * attn.qkv.linear_{a,b}_{q,v}.weight, <attn>.{q,v}_proj.proj.* + .w_a/.w_b, block adapters MLP_Adapter,
 * Space_Adapter, Depth_Adapter (zeros: finetune-SAM always has it, it only runs with its 3D branch) between attn.*
 * and norm2.*, decoder layers' MLP_Adapter, Adapter after their last attention. Formats: docs/FORMATS.md.
 */
#ifndef MS_FT_EXPORT_H
#define MS_FT_EXPORT_H

#include "base/status.h"

typedef enum ms_weights_layout { MS_LAYOUT_SAM = 0, MS_LAYOUT_FINETUNE_SAM = 1 } ms_weights_layout;

/* "sam" | "finetune-sam" */
ms_status ms_weights_layout_parse(const char *s, ms_weights_layout *out);

/* What an export wrote, for the caller's messages. */
typedef struct ms_export_info {
    char model[32];       /* vit_b, vit_l, vit_h, vit_test */
    char what[640];       /* the source, one line: "DIR, vit_test" or "vit_test, lora/decoder, task T, 3 mask tokens" */
    int finetuned;        /* a fine-tuning checkpoint */
    int n_tensors;
    int lora_merged;      /* LoRA was merged into the base weights */
    int pad_differs;      /* trained with finetune-SAM's block padding, exported in SAM's layout: windows with padding
                           * compute differently in SAM's own code */
    int depth_adapter_zeros; /* finetune-SAM's Depth_Adapter written as zeros */
} ms_export_info;

ms_status ms_export_pretrain_ckpt(const char *ckpt, const char *out, int threads, ms_export_info *info);
ms_status ms_export_ft_ckpt(const char *ckpt, const char *out, const char *task, ms_weights_layout layout, int threads,
                            ms_export_info *info);

#endif
