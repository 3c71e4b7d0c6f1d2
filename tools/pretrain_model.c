/* tools/pretrain_model.c — see pretrain_model.h. */
#include "pretrain_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"

/* PyTorch's default initialisation for the prompt encoder and mask decoder tensors (sam.md §5, "Default inits"). */
static ms_status init_default(ms_params *ps, const char *prefix, uint64_t seed)
{
    size_t np = strlen(prefix);
    int64_t maxn = 1;
    for (int i = 0; i < ps->n; i++) if (ps->p[i].numel > maxn) maxn = ps->p[i].numel;
    float *h = malloc((size_t)maxn * sizeof(float));
    MS_FAIL_IF(!h, MS_ENOMEM, "out of memory");
    ms_status rc = MS_OK;
    for (int i = 0; i < ps->n && !rc; i++) {
        const ms_param *p = &ps->p[i];
        if (strncmp(p->name, prefix, np)) continue;
        ms_rng r;
        ms_rng_init(&r, seed, ms_rng_stream(0x696e6974ull, (uint64_t)i, 0));
        const char *nm = p->name;
        size_t ln = strlen(nm);
        int is_w = ln > 7 && !strcmp(nm + ln - 7, ".weight");
        int is_norm = strstr(nm, "norm") || (strstr(nm, "mask_downscaling.") && (strstr(nm, ".1.") || strstr(nm, ".4."))) ||
                      (strstr(nm, "output_upscaling.1."));
        if (strstr(nm, "gaussian")) {
            for (int64_t j = 0; j < p->numel; j++) h[j] = ms_rng_normal(&r);
        } else if (strstr(nm, "embed") || strstr(nm, "token")) { /* nn.Embedding: N(0, 1) */
            for (int64_t j = 0; j < p->numel; j++) h[j] = ms_rng_normal(&r);
        } else if (is_norm) {
            for (int64_t j = 0; j < p->numel; j++) h[j] = is_w ? 1.f : 0.f;
        } else {
            const ms_param *w = is_w ? p : &ps->p[i - 1]; /* a bias follows its weight */
            int64_t fan_in = 1;
            if (strstr(w->name, "output_upscaling") && w->ndim == 4) fan_in = w->shape[1] * w->shape[2] * w->shape[3];
            else for (int d = 1; d < w->ndim; d++) fan_in *= w->shape[d];
            float bound = 1.f / sqrtf((float)fan_in);
            for (int64_t j = 0; j < p->numel; j++) h[j] = ms_rng_range(&r, -bound, bound);
        }
        rc = ms_dev_from_host(ps->dev, ps->data + p->off, h, (size_t)p->numel * sizeof(float));
    }
    free(h);
    return rc;
}

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
    if (!rc) rc = init_default(&sam->ps, "prompt_encoder.", seed);
    if (!rc) rc = init_default(&sam->ps, "mask_decoder.", seed + 1);
    if (rc) { ms_sam_free(sam); return rc; }
    snprintf(model_name, n, "%s", model);
    return MS_OK;
}
