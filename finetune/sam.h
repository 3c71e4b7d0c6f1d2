/* finetune/sam.h — the whole SAM model: image encoder (pretrain/sam_encoder.h), prompt encoder
 * (finetune/sam_prompt.h) and mask decoder (finetune/sam_decoder.h) in ONE parameter table under SAM's state-dict
 * keys, plus the official predictor's coordinate transform and mask post-processing (docs/MODEL.md §Preprocessing).
 *
 * Loading reads the variant from the file's shapes: the encoder from ms_sam_enc_config_from_sd (vit_b/l/h,
 * vit_test, other SAM-shaped encoders) or, for MobileSAM's files (vit_t), ms_sam_tinyvit_config_from_sd, num_cls
 * from mask_tokens' rows (num_mask_tokens = num_cls + 1; 4 in SAM), the decoder depth from its layers. Loading is
 * strict across all three parts: every missing, mis-shaped or unknown key is reported on its own line (stderr) and
 * nothing is loaded when any is wrong (no partial model). ms_sam_to_sd writes the same keys back in SAM's order
 * (gaussian buffer included; MobileSAM's, BatchNorm counters included, for vit_t), so an export loads strictly into
 * segment_anything's (MobileSAM's) own builder. vit_t's file layout: docs/FORMATS.md §MobileSAM (vit_t) weight files.
 */
#ifndef MS_SAM_H
#define MS_SAM_H

#include "checkpoints/state_dict.h"
#include "finetune/sam_decoder.h"
#include "finetune/sam_prompt.h"
#include "pretrain/params.h"
#include "pretrain/sam_encoder.h"
#include "pretrain/tinyvit.h"

typedef struct ms_sam_config {
    int tinyvit;            /* 1: the image encoder is MobileSAM's TinyViT (vit_t; tv below), else SAM's ViT (enc) */
    ms_tinyvit_config tv;
    ms_sam_enc_config enc;
    int n_mask_tokens;  /* num_cls + 1 (4 for SAM) */
    int dec_depth;      /* 2 */
} ms_sam_config;

typedef struct ms_sam {
    ms_sam_config cfg;
    int img_size, emb_h, emb_w;
    ms_params ps;            /* every tensor of the model, SAM's key order */
    ms_sam_encoder enc;      /* cfg.tinyvit == 0 */
    ms_tinyvit tv;           /* cfg.tinyvit == 1 */
    ms_sam_prompt pe;
    ms_sam_decoder dec;
    ms_device *dev;
} ms_sam;

/* The configuration of a SAM state dict (keys image_encoder.*, prompt_encoder.*, mask_decoder.*): SAM's ViT, or
 * MobileSAM's TinyViT when image_encoder.patch_embed.seq.0.c.weight is present (ms_sam_tinyvit_config_from_sd). */
ms_status ms_sam_config_from_sd(const ms_state_dict *sd, ms_sam_config *cfg);
/* A TinyViT's configuration from the shapes of its keys under prefix (docs/FORMATS.md §MobileSAM): dims from
 * patch_embed.seq.2 and each downsample.conv1, depths from the blocks present, heads and windows from
 * attention_biases (heads, ws²), mlp ratio, MBConv expansion, local conv, num_classes (head.weight's rows; 0 when
 * absent), out_chans (neck.0). Merging strides follow upstream (1 when the output dim is 320, 448 or 576, else 2).
 * The input size is stored nowhere: 256 for vit_t_test's shapes, else 1024 (MobileSAM's build_sam_vit_t). */
ms_status ms_sam_tinyvit_config_from_sd(const ms_state_dict *sd, const char *prefix, ms_tinyvit_config *cfg);
/* A named variant (vit_b, vit_l, vit_h, vit_test; vit_t and vit_t_test: TinyViT) with num_cls + 1 mask tokens. */
ms_status ms_sam_config_named(const char *name, int n_mask_tokens, ms_sam_config *cfg);
/* The variant's name (vit_b, vit_l, vit_h, vit_test, vit_t, vit_t_test; "custom" for other shapes). */
const char *ms_sam_config_model_name(const ms_sam_config *cfg);
/* Registers and allocates every tensor (zeros); gradients are not allocated (ms_params_alloc_grads when training). */
ms_status ms_sam_init(ms_sam *m, const ms_sam_config *cfg, ms_device *dev);
/* The same in two steps, so that PEFT tensors and extra heads can be registered in between: register every SAM
 * tensor (nothing allocated; on failure m is freed), then allocate (zeros) and freeze the prompt encoder's buffers. */
ms_status ms_sam_register(ms_sam *m, const ms_sam_config *cfg, ms_device *dev);
/* The same for running at input side run_size (0 = the checkpoint's own): the encoder interpolates its position
 * tables (ms_sam_encoder_set_input_size), img_size and the embedding grid follow the run size, and every tensor keeps
 * its native shape. TinyViT runs at its own input size only (another run_size is refused). */
ms_status ms_sam_register_at(ms_sam *m, const ms_sam_config *cfg, int run_size, ms_device *dev);
ms_status ms_sam_alloc(ms_sam *m);
/* PyTorch's default initialisation (Embedding N(0,1), Linear/ConvT U(±1/√fan_in), norms 1/0, the gaussian PE matrix
 * N(0,1)) of every allocated tensor whose name starts with prefix, from seed. */
ms_status ms_sam_init_default(ms_params *ps, const char *prefix, uint64_t seed);
/* Detect + init + strict load. PEFT tensors in sd (our names: ms_sam_sd_from_finetune_sam) are built as they are
 * (ms_sam_peft_from_sd; every one then required) and the encoder runs finetune-SAM's block (its padded windows), the
 * model such a file comes from. ms_sam_load reads finetune-SAM's layout too. On failure m is left freed. */
ms_status ms_sam_load_sd(ms_sam *m, const ms_state_dict *sd, ms_device *dev);
ms_status ms_sam_load(ms_sam *m, const char *path, ms_device *dev);
/* Appends every tensor (host f32 copies) to sd in SAM's key order. A TinyViT encoder's BatchNorms also get their
 * num_batches_tracked (int64, 0-dim, = tv.bn_batches) right after running_var: MobileSAM's exact key set and order,
 * which its code loads strictly. */
ms_status ms_sam_to_sd(const ms_sam *m, ms_state_dict *sd);
/* The SAM a pretraining run trains and exports (`mrisam pretrain`, `mrisam export-weights`, `mrisam bench mae`):
 * ckpt != NULL loads that file (finetune-SAM's layout: its LoRA merged, adapters refused, since MAE runs no PEFT);
 * else the named variant with PyTorch's default initialisation from seed (encoder and prompt encoder from seed, mask
 * decoder from seed + 1), so that an export is a complete SAM state dict. name gets the variant (vit_b, vit_l,
 * vit_h, vit_test, vit_t, vit_t_test or "custom": ms_sam_config_model_name). TinyViT's random initialisation is
 * ms_tinyvit_init_random. On failure m is left freed. */
ms_status ms_sam_build(ms_sam *m, const char *ckpt, const char *model, uint64_t seed, ms_device *dev, char *name,
                       size_t n);
void ms_sam_free(ms_sam *m);

/* ---- the image encoder, whichever it is (SAM's ViT or TinyViT) -------------------------------------------------
 * Callers that only run the encoder use these, not ms_sam_encoder_* / ms_tinyvit_* directly. */
/* Activations for batches up to max_batch (with_backward: keep what the backward needs). */
ms_status ms_sam_image_reserve(ms_sam *m, int max_batch, int with_backward);
/* x (B,3,S,S) → emb (B,256,emb_h,emb_w), device memory. TinyViT's BatchNorms run in the mode m->tv.bn_train says. */
ms_status ms_sam_image_forward(ms_sam *m, const float *x, int B, float *emb);
/* demb → the encoder's parameter gradients (trainable only, +=), dx += when non-NULL. */
ms_status ms_sam_image_backward(ms_sam *m, const float *demb, float *dx);

/* ---- finetune-SAM's checkpoints (mazurowski-lab/finetune-SAM: models/sam_LoRa.py, models/sam/modeling/) ----------
 * finetune-SAM saves its Sam's state_dict with LoRA wrapping the encoder's qkv (attn.qkv.qkv.{weight,bias} +
 * attn.qkv.linear_{a,b}_{q,v}.weight) and the decoder's q/v projections (<attn>.{q,v}_proj.proj.* + .w_a/.w_b),
 * and adapters under blocks.i.{MLP_Adapter,Space_Adapter,Depth_Adapter}.* and transformer.layers.l.{MLP_Adapter,
 * Adapter}.* — what `export-weights --layout finetune-sam` writes too (finetune/export.h). */

/* Renames such a state dict's keys in place to ours (attn.qkv.qkv.* → attn.qkv.*, <attn>.{q,v}_proj.proj.* →
 * <attn>.{q,v}_proj.*; LoRA and adapter names are the same), drops Depth_Adapter (finetune-SAM runs it only in its
 * 3-D branch) and a "module." prefix on every key (a saved DataParallel / DistributedDataParallel wrapper).
 * *found = 1 when the file had any finetune-SAM-only key or PEFT tensor. Other keys are left as they are (the
 * loader reports unknown ones). */
ms_status ms_sam_sd_from_finetune_sam(ms_state_dict *sd, int *found);
/* 1 when ms_sam_sd_from_finetune_sam would change or find anything (without changing sd). */
int ms_sam_sd_is_finetune_sam(const ms_state_dict *sd);
/* LoRA tensors (encoder linear_{a,b}_{q,v}, decoder {q,v}_proj.w_{a,b}) and adapter tensors (*Adapter.*), by name. */
int ms_sam_key_is_lora(const char *name);
int ms_sam_key_is_adapter(const char *name);
/* The PEFT tensors present in a state dict in our names (encoder under "image_encoder.", decoder under
 * "mask_decoder.") as the settings that register them: encoder LoRA rank from linear_a_q's rows, the blocks with all
 * four LoRA tensors, the blocks with all eight adapter tensors (MLP_Adapter, Space_Adapter), decoder LoRA rank and
 * adapters from layer 0's (the decoder has them in every layer); scale 0.5 (finetune-SAM's fixed one). An incomplete
 * group registers nothing: its keys stay unknown to the loader, which reports them. Returns 1 when any. */
int ms_sam_peft_from_sd(const ms_state_dict *sd, ms_sam_enc_peft *ep, ms_sam_dec_peft *dp);
/* TinyViT's PEFT tensors under prefix (finetune-SAM's TinyViT names, ours too: layers.i.blocks.j.attn.qkv.linear_{a,b}_
 * {q,v}.weight, {Space,MLP}_Adapter.D_fc{1,2}.*), per layer i = 1..3 from its block 0, LoRA rank from linear_a_q's
 * rows; such a file comes from finetune-SAM's model, so its LoRA column slicing (ms_tinyvit_peft.fsam_slicing) and
 * adapter scale 0.5. Returns 1 when any. */
int ms_sam_tinyvit_peft_from_sd(const ms_state_dict *sd, const char *prefix, ms_tinyvit_peft *pf);
/* Merges every LoRA pair of sd (our names) into its base weight: encoder qkv rows 0..D−1 += B_q·A_q and
 * 2D..3D−1 += B_v·A_v (D = embed_dim, or each qkv weight's own columns when embed_dim is 0: TinyViT's layers differ;
 * for TinyViT these are finetune-SAM's slices, ms_tinyvit_peft.fsam_slicing), decoder <attn>.{q,v}_proj.weight
 * += w_b·w_a, each product summed in double then added once; float32 tensors only. drop != 0 removes the LoRA
 * tensors afterwards. *n_merged counts the pairs. */
ms_status ms_sam_sd_merge_lora(ms_state_dict *sd, int64_t embed_dim, int drop, int *n_merged);
/* The same for TinyViT's true q/v LoRA (ms_tinyvit_peft without fsam_slicing): the delta's row h·hd + d goes to qkv
 * row h·3hd + d (q) or h·3hd + 2hd + d (v), hd = dims[i] / heads[i] of layers.i (TinyViT lays qkv out per head). */
ms_status ms_sam_sd_merge_lora_tinyvit(ms_state_dict *sd, const ms_tinyvit_config *tv, int drop, int *n_merged);

/* ---- the official predictor's geometry (ResizeLongestSide) --------------------------------------------------- */

/* newh = int(h·S/max(h,w) + 0.5), likewise neww. */
void ms_sam_resize_shape(int h, int w, int S, int *newh, int *neww);
/* n points (x, y) in an h×w image → the resized frame: x·(neww/w), y·(newh/h) (boxes: two corners). */
void ms_sam_apply_coords(float *xy, int n, int h, int w, int S);
/* The one mask post-processing (the official predictor's, and `mrisam predict`'s): low-res logits (C, lh, lw) host →
 * (C, orig_h, orig_w) logits host: bilinear to S×S, crop to the frame the image filled (ResizeLongestSide's
 * newh × neww; all of S×S when stretched != 0, i.e. the image was stretched to S×S), bilinear to the original size
 * (align_corners=False, no antialias). The binary mask is logit > 0. */
ms_status ms_sam_postprocess_masks(const float *low, int C, int lh, int lw, int S, int stretched, int orig_h,
                                   int orig_w, float *out);

#endif
