/* tools/pretrain_model.h — the SAM model a pretraining run trains and exports, built the same way by
 * `mrisam pretrain` and `mrisam export-weights`: from a SAM checkpoint (--ckpt), or from PyTorch's default
 * initialisation (--init random --model NAME, seeded) with the prompt encoder and mask decoder initialised too, so
 * an export is a complete SAM state dict. */
#ifndef MS_TOOLS_PRETRAIN_MODEL_H
#define MS_TOOLS_PRETRAIN_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "finetune/sam.h"

/* ckpt != NULL: load it; else model NAME with seeded random weights. model_name receives vit_b/l/h/vit_test. */
ms_status ms_pt_build_sam(ms_sam *sam, const char *ckpt, const char *model, uint64_t seed, ms_device *dev,
                          char *model_name, size_t n);

#endif
