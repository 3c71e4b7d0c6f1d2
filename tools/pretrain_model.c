/* tools/pretrain_model.c — see pretrain_model.h. */
#include "pretrain_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"

ms_status ms_pt_build_sam(ms_sam *sam, const char *ckpt, const char *model, uint64_t seed, ms_device *dev,
                          char *model_name, size_t n)
{
    if (ckpt) {
        MS_TRY(ms_sam_load(sam, ckpt, dev));
        int d = sam->cfg.enc.embed_dim;
        snprintf(model_name, n, "%s", d == 768 ? "vit_b" : d == 1024 ? "vit_l" : d == 1280 ? "vit_h"
                                      : d == 192 ? "vit_test" : "custom");
        return MS_OK;
    }
    MS_FAIL_IF(!model, MS_EINVAL, "needs --ckpt F or --init random --model NAME");
    ms_sam_config sc;
    MS_TRY(ms_sam_config_named(model, 4, &sc));
    MS_TRY(ms_sam_init(sam, &sc, dev));
    ms_status rc = ms_sam_encoder_init_random(&sam->enc, seed);
    if (!rc) rc = ms_sam_init_default(&sam->ps, "prompt_encoder.", seed);
    if (!rc) rc = ms_sam_init_default(&sam->ps, "mask_decoder.", seed + 1);
    if (rc) { ms_sam_free(sam); return rc; }
    snprintf(model_name, n, "%s", model);
    return MS_OK;
}
