/* pretrain/sam_encoder_internal.h — what sam_encoder.c, sam_encoder_config.c and sam_encoder_peft.c share and
 * nobody else needs. */
#ifndef MS_SAM_ENCODER_INTERNAL_H
#define MS_SAM_ENCODER_INTERNAL_H

#include "sam_encoder.h"

/* PEFT present on block i / anywhere (ms_sam_encoder_add_peft sets the indices, -1 = none). */
static inline int ms_sam_enc_has_lora(const ms_sam_encoder *enc, int i) { return enc->blk[i].lora_aq >= 0; }
static inline int ms_sam_enc_has_adapter(const ms_sam_encoder *enc, int i) { return enc->blk[i].sa_w1 >= 0; }
static inline int ms_sam_enc_has_peft(const ms_sam_encoder *enc)
{
    return enc->peft.lora_blocks || enc->peft.adapter_blocks;
}

/* Registers prefix + key with shape (a, b, c, d)[:ndim] in ps; returns its index or -1 (reported by ms_params_add). */
int ms_sam_enc_param_add(ms_params *ps, const char *prefix, const char *key, int64_t a, int64_t b, int64_t c,
                         int64_t d, int ndim, int no_decay);

#endif
