/* finetune/sam.c — see sam.h. */
#include "sam.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/path.h"
#include "base/rng.h"
#include "ops.h"

/* 1 when sd holds MobileSAM's TinyViT under prefix (its layers.* keys; SAM's ViT has blocks.*) */
static int has_tinyvit(const ms_state_dict *sd, const char *prefix)
{
    char k[160];
    snprintf(k, sizeof k, "%spatch_embed.seq.0.c.weight", prefix);
    return ms_sd_find(sd, k) != NULL;
}

/* The shape of key prefix+fmt (dims into s), or -1 when absent. */
static int sd_shape(const ms_state_dict *sd, const char *prefix, int64_t s[MS_MAX_DIMS], const char *fmt, int a,
                    int b)
{
    char key[160], k[200];
    snprintf(key, sizeof key, fmt, a, b);
    snprintf(k, sizeof k, "%s%s", prefix, key);
    const ms_sd_entry *e = ms_sd_find(sd, k);
    if (!e) return -1;
    memcpy(s, e->t.shape, sizeof(int64_t) * MS_MAX_DIMS);
    return e->t.ndim;
}

/* Two TinyViT configs with the same tensors (the input size and layer 0's unused heads / window aside). */
static int tv_same_shapes(const ms_tinyvit_config *a, const ms_tinyvit_config *b)
{
    ms_tinyvit_config x = *a, y = *b;
    x.img_size = y.img_size = 0;
    x.heads[0] = y.heads[0] = x.windows[0] = y.windows[0] = 0;
    return !memcmp(&x, &y, sizeof x);
}

ms_status ms_sam_tinyvit_config_from_sd(const ms_state_dict *sd, const char *prefix, ms_tinyvit_config *c)
{
    memset(c, 0, sizeof *c);
    int64_t s[MS_MAX_DIMS];
    MS_FAIL_IF(sd_shape(sd, prefix, s, "patch_embed.seq.%d.c.weight", 0, 0) != 4, MS_ENOTFOUND,
               "%spatch_embed.seq.0.c.weight: missing or not 4-D (not a TinyViT)", prefix);
    c->in_chans = (int)s[1];
    MS_FAIL_IF(sd_shape(sd, prefix, s, "patch_embed.seq.%d.c.weight", 2, 0) != 4, MS_ENOTFOUND,
               "%spatch_embed.seq.2.c.weight: missing or not 4-D", prefix);
    c->dims[0] = (int)s[0];
    for (int i = 0; i < 4; i++) {
        /* depth: the blocks present; layer 0's are MBConvs (conv1), the others TinyViT blocks (attn.qkv) */
        const char *f = i ? "layers.%d.blocks.%d.attn.qkv.weight" : "layers.%d.blocks.%d.conv1.c.weight";
        while (c->depths[i] <= MS_TINYVIT_MAX_DEPTH && sd_shape(sd, prefix, s, f, i, c->depths[i]) > 0) c->depths[i]++;
        MS_FAIL_IF(c->depths[i] < 1 || c->depths[i] > MS_TINYVIT_MAX_DEPTH, MS_EUNSUPPORTED,
                   "%slayers.%d: %d blocks (1..%d supported)", prefix, i, c->depths[i], MS_TINYVIT_MAX_DEPTH);
        if (i == 0) {
            MS_FAIL_IF(sd_shape(sd, prefix, s, "layers.0.blocks.0.conv1.c.weight", 0, 0) != 4, MS_ESHAPE,
                       "%slayers.0.blocks.0.conv1.c.weight: not 4-D", prefix);
            c->mbconv_expand = c->dims[0] ? (int)(s[0] / c->dims[0]) : 0;
            continue;
        }
        MS_FAIL_IF(sd_shape(sd, prefix, s, "layers.%d.downsample.conv1.c.weight", i - 1, 0) != 4, MS_ENOTFOUND,
                   "%slayers.%d.downsample.conv1.c.weight: missing or not 4-D", prefix, i - 1);
        c->dims[i] = (int)s[0];
        /* attention_biases (heads, ws²): one bias per (|Δy|, |Δx|) of a ws×ws window */
        MS_FAIL_IF(sd_shape(sd, prefix, s, "layers.%d.blocks.%d.attn.attention_biases", i, 0) != 2, MS_ENOTFOUND,
                   "%slayers.%d.blocks.0.attn.attention_biases: missing or not 2-D", prefix, i);
        c->heads[i] = (int)s[0];
        int ws = (int)(sqrt((double)s[1]) + 0.5);
        MS_FAIL_IF((int64_t)ws * ws != s[1], MS_ESHAPE, "%slayers.%d.blocks.0.attn.attention_biases: %lld columns, "
                   "not a square window", prefix, i, (long long)s[1]);
        c->windows[i] = ws;
        if (sd_shape(sd, prefix, s, "layers.%d.blocks.%d.mlp.fc1.weight", i, 0) == 2 && c->dims[i])
            c->mlp_ratio = (int)(s[0] / c->dims[i]);
        if (sd_shape(sd, prefix, s, "layers.%d.blocks.%d.local_conv.c.weight", i, 0) == 4) c->local_conv = (int)s[2];
    }
    /* upstream's PatchMerging takes stride 1 when its output dim is 320, 448 or 576 (tiny_vit_sam.py) */
    for (int k = 0; k < 3; k++) {
        int o = c->dims[k + 1];
        c->merge_stride[k] = o == 320 || o == 448 || o == 576 ? 1 : 2;
    }
    c->num_classes = sd_shape(sd, prefix, s, "head.weight", 0, 0) == 2 ? (int)s[0] : 0;
    MS_FAIL_IF(sd_shape(sd, prefix, s, "neck.0.weight", 0, 0) != 4, MS_ENOTFOUND, "%sneck.0.weight: missing or not "
               "4-D", prefix);
    c->out_chans = (int)s[0];
    /* The input size is in no key (MobileSAM's build_sam_vit_t: 1024, image_embedding_size 64 × patch 16): a named
     * variant's shapes give that variant (vit_t_test runs at 256), any other 1024. */
    c->img_size = 1024;
    static const char *const named[2] = {"vit_t", "vit_t_test"};
    for (int i = 0; i < 2; i++) {
        ms_tinyvit_config t;
        if (!ms_tinyvit_config_named(named[i], &t) && tv_same_shapes(&t, c)) *c = t;
    }
    return ms_tinyvit_config_check(c);
}

ms_status ms_sam_config_from_sd(const ms_state_dict *sd, ms_sam_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    /* a saved DataParallel wrapper's "module." (ms_sam_sd_from_finetune_sam drops it) */
    const char *w = ms_sd_find(sd, "module.mask_decoder.mask_tokens.weight") ? "module." : "";
    char k[128];
    snprintf(k, sizeof k, "%simage_encoder.", w);
    if (has_tinyvit(sd, k)) {
        cfg->tinyvit = 1;
        MS_TRY(ms_sam_tinyvit_config_from_sd(sd, k, &cfg->tv));
    } else
        MS_TRY(ms_sam_enc_config_from_sd(sd, k, &cfg->enc));
    snprintf(k, sizeof k, "%smask_decoder.mask_tokens.weight", w);
    const ms_sd_entry *mt = ms_sd_find(sd, k);
    MS_FAIL_IF(!mt, MS_ENOTFOUND, "mask_decoder.mask_tokens.weight: missing (not a SAM checkpoint?)");
    MS_FAIL_IF(mt->t.ndim != 2 || mt->t.shape[1] != 256 || mt->t.shape[0] < 1 ||
                   mt->t.shape[0] > MS_SAM_MAX_MASK_TOKENS,
               MS_ESHAPE, "mask_decoder.mask_tokens.weight: shape (%lld, %lld), expected (num_cls+1 <= %d, 256)",
               (long long)mt->t.shape[0], (long long)(mt->t.ndim > 1 ? mt->t.shape[1] : 0), MS_SAM_MAX_MASK_TOKENS);
    cfg->n_mask_tokens = (int)mt->t.shape[0];
    for (cfg->dec_depth = 0; cfg->dec_depth <= MS_SAM_DEC_MAX_DEPTH; cfg->dec_depth++) {
        snprintf(k, sizeof k, "%smask_decoder.transformer.layers.%d.norm1.weight", w, cfg->dec_depth);
        if (!ms_sd_find(sd, k)) break;
    }
    MS_FAIL_IF(cfg->dec_depth < 1 || cfg->dec_depth > MS_SAM_DEC_MAX_DEPTH, MS_EUNSUPPORTED,
               "mask_decoder.transformer: %d layers (1..%d supported)", cfg->dec_depth, MS_SAM_DEC_MAX_DEPTH);
    return MS_OK;
}

ms_status ms_sam_config_named(const char *name, int n_mask_tokens, ms_sam_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    if (!strcmp(name, "vit_t") || !strcmp(name, "vit_t_test")) {
        cfg->tinyvit = 1;
        MS_TRY(ms_tinyvit_config_named(name, &cfg->tv));
    } else
        MS_TRY(ms_sam_enc_config_named(name, &cfg->enc));
    cfg->n_mask_tokens = n_mask_tokens;
    cfg->dec_depth = 2;
    return MS_OK;
}

const char *ms_sam_config_model_name(const ms_sam_config *cfg)
{
    if (cfg->tinyvit) {
        ms_tinyvit_config t;
        if (!ms_tinyvit_config_named("vit_t", &t) && !memcmp(&t, &cfg->tv, sizeof t)) return "vit_t";
        if (!ms_tinyvit_config_named("vit_t_test", &t) && !memcmp(&t, &cfg->tv, sizeof t)) return "vit_t_test";
        return "custom";
    }
    int d = cfg->enc.embed_dim;
    return d == 768 ? "vit_b" : d == 1024 ? "vit_l" : d == 1280 ? "vit_h" : d == 192 ? "vit_test" : "custom";
}

ms_status ms_sam_register(ms_sam *m, const ms_sam_config *cfg, ms_device *dev)
{
    return ms_sam_register_at(m, cfg, 0, dev);
}

ms_status ms_sam_register_at(ms_sam *m, const ms_sam_config *cfg, int run_size, ms_device *dev)
{
    memset(m, 0, sizeof *m);
    ms_params_init(&m->ps);
    m->cfg = *cfg;
    m->dev = dev;
    ms_status rc = MS_OK;
    const int out_chans = cfg->tinyvit ? cfg->tv.out_chans : cfg->enc.out_chans;
    if (out_chans != 256) {
        rc = ms_error(MS_EUNSUPPORTED, "image encoder: %d output channels; the mask decoder needs 256", out_chans);
        goto leave;
    }
    if (cfg->tinyvit && run_size && run_size != cfg->tv.img_size) {
        /* its attention windows and merging strides are laid out for one grid; no interpolated table to resize */
        rc = ms_error(MS_EUNSUPPORTED, "TinyViT (vit_t) runs at its own input size %d only, not %d", cfg->tv.img_size,
                      run_size);
        goto leave;
    }
    /* the prompt encoder and mask decoder have no size-dependent tensors: they follow the run grid */
    if (cfg->tinyvit) {
        m->img_size = cfg->tv.img_size;
        m->emb_h = m->emb_w = ms_tinyvit_grid(&cfg->tv, 4);
    } else {
        m->img_size = run_size ? run_size : cfg->enc.img_size;
        m->emb_h = m->emb_w = m->img_size / cfg->enc.patch;
    }
    /* SAM's key order: image_encoder, prompt_encoder, mask_decoder. */
    if (cfg->tinyvit) rc = ms_tinyvit_init(&m->tv, &cfg->tv, &m->ps, "image_encoder.");
    else rc = ms_sam_encoder_init(&m->enc, &cfg->enc, &m->ps, "image_encoder.");
    if (rc) goto leave;
    if (run_size && !cfg->tinyvit && (rc = ms_sam_encoder_set_input_size(&m->enc, run_size))) goto leave;
    if ((rc = ms_sam_prompt_init(&m->pe, &m->ps, "prompt_encoder.", m->emb_h, m->emb_w, m->img_size))) goto leave;
    if ((rc = ms_sam_decoder_init(&m->dec, &m->ps, "mask_decoder.", cfg->n_mask_tokens, cfg->dec_depth, m->emb_h,
                                  m->emb_w)))
        goto leave;
leave:
    if (rc) ms_sam_free(m);
    return rc;
}

ms_status ms_sam_alloc(ms_sam *m)
{
    ms_status rc = ms_params_alloc(&m->ps, m->dev);
    if (!rc) ms_sam_prompt_freeze_buffers(&m->pe);
    return rc;
}

ms_status ms_sam_init(ms_sam *m, const ms_sam_config *cfg, ms_device *dev)
{
    MS_TRY(ms_sam_register(m, cfg, dev));
    ms_status rc = ms_sam_alloc(m);
    if (rc) ms_sam_free(m);
    return rc;
}

/* PyTorch's default initialisation for the prompt encoder and mask decoder tensors (nn.Embedding, nn.Linear and
 * nn.ConvTranspose2d reset_parameters(), norms' ones/zeros). */
ms_status ms_sam_init_default(ms_params *ps, const char *prefix, uint64_t seed)
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
        } else if (strstr(nm, "embed") || strstr(nm, "iou_token.") || strstr(nm, "mask_tokens.")) {
            /* nn.Embedding: N(0, 1) (not "token" alone: cross_attn_token_to_image is a Linear) */
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

/* 1 when every base + names[i] is in sd */
static int has_all(const ms_state_dict *sd, const char *base, const char *const *names, int n)
{
    char k[400];
    for (int i = 0; i < n; i++) {
        snprintf(k, sizeof k, "%s%s", base, names[i]);
        if (!ms_sd_find(sd, k)) return 0;
    }
    return 1;
}

static const char *const lora_keys[4] = {"attn.qkv.linear_a_q.weight", "attn.qkv.linear_b_q.weight",
                                         "attn.qkv.linear_a_v.weight", "attn.qkv.linear_b_v.weight"};
static const char *const dec_lora_keys[4] = {"q_proj.w_a.weight", "q_proj.w_b.weight", "v_proj.w_a.weight",
                                             "v_proj.w_b.weight"};
static const char *const fc_keys[4] = {"D_fc1.weight", "D_fc1.bias", "D_fc2.weight", "D_fc2.bias"};

/* MLP_Adapter and `second` (Space_Adapter in a block, Adapter in a decoder layer) under base, all 8 tensors. */
static int has_adapters(const ms_state_dict *sd, const char *base, const char *second)
{
    char b[300];
    snprintf(b, sizeof b, "%sMLP_Adapter.", base);
    if (!has_all(sd, b, fc_keys, 4)) return 0;
    snprintf(b, sizeof b, "%s%s.", base, second);
    return has_all(sd, b, fc_keys, 4);
}

int ms_sam_tinyvit_peft_from_sd(const ms_state_dict *sd, const char *prefix, ms_tinyvit_peft *pf)
{
    memset(pf, 0, sizeof *pf);
    char base[160];
    for (int i = 1; i < 4; i++) {
        snprintf(base, sizeof base, "%slayers.%d.blocks.0.", prefix, i);
        if (has_all(sd, base, lora_keys, 4)) {
            char k[200];
            snprintf(k, sizeof k, "%s%s", base, lora_keys[0]);
            const ms_sd_entry *a = ms_sd_find(sd, k);
            if (!pf->lora_rank && a->t.ndim == 2) pf->lora_rank = (int)a->t.shape[0];
            pf->lora_layers |= 1u << i;
        }
        if (has_adapters(sd, base, "Space_Adapter")) pf->adapter_layers |= 1u << i;
    }
    if (!pf->lora_rank) pf->lora_layers = 0;
    pf->adapter_scale = 0.5f;
    pf->fsam_slicing = 1;
    return pf->lora_layers || pf->adapter_layers;
}

/* Strict load of a TinyViT SAM: keys outside image_encoder. must all be the model's (reported one per line), then
 * ms_tinyvit_load checks every tensor and the encoder's keys, num_batches_tracked accepted (tinyvit.h). */
static ms_status load_tinyvit_sd(ms_sam *m, const ms_state_dict *sd)
{
    int bad = 0;
    for (int i = 0; i < sd->n; i++) {
        const char *n = sd->e[i].name;
        if (strncmp(n, "image_encoder.", 14) && ms_params_find(&m->ps, n) < 0) {
            fprintf(stderr, "%s: unexpected key\n", n);
            bad++;
        }
    }
    if (bad) return ms_error(MS_ESHAPE, "%d unexpected key(s) outside image_encoder.", bad);
    return ms_tinyvit_load(&m->tv, sd);
}

ms_status ms_sam_load_sd(ms_sam *m, const ms_state_dict *sd, ms_device *dev)
{
    ms_sam_config cfg;
    ms_sam_enc_peft ep;
    ms_sam_dec_peft dp;
    ms_tinyvit_peft tp;
    memset(m, 0, sizeof *m);
    MS_TRY(ms_sam_config_from_sd(sd, &cfg));
    /* PEFT tensors only come from finetune-SAM's layout: run its model, padded windows included */
    int peft = ms_sam_peft_from_sd(sd, &ep, &dp);
    int tpeft = cfg.tinyvit && ms_sam_tinyvit_peft_from_sd(sd, "image_encoder.", &tp);
    cfg.enc.finetune_sam_block = peft;
    MS_TRY(ms_sam_register(m, &cfg, dev));
    ms_status rc = MS_OK;
    if (dp.lora_rank || dp.adapters) rc = ms_sam_decoder_add_peft(&m->dec, &dp);
    if (!rc && !cfg.tinyvit && (ep.lora_rank || ep.adapter_blocks)) rc = ms_sam_encoder_add_peft(&m->enc, &ep);
    if (!rc && tpeft) rc = ms_tinyvit_add_peft(&m->tv, &tp);
    for (int i = 0; i < m->ps.n; i++) m->ps.p[i].optional = 0; /* registered from the file's keys: all required */
    if (!rc) rc = ms_sam_alloc(m);
    if (!rc && cfg.tinyvit) rc = load_tinyvit_sd(m, sd);
    else if (!rc) rc = ms_params_load(&m->ps, sd, ""); /* "": every key of the file must belong to the model */
    if (rc) ms_sam_free(m);
    return rc;
}

/* merge_lora != 0: LoRA merged into the base weights, adapters refused (pretraining's starting weights). */
static ms_status load_file(ms_sam *m, const char *path, int merge_lora, ms_device *dev)
{
    ms_state_dict sd;
    ms_sd_init(&sd);
    memset(m, 0, sizeof *m);
    int fsam = 0, n = 0;
    ms_sam_enc_peft ep;
    ms_sam_dec_peft dp;
    ms_status rc = ms_sd_load(path, &sd); /* its messages already name the file */
    if (rc) { ms_sd_free(&sd); return rc; }
    rc = ms_sam_sd_from_finetune_sam(&sd, &fsam);
    if (!rc && fsam && merge_lora) {
        rc = ms_sam_sd_merge_lora(&sd, 0, 1, &n); /* each qkv's own width: SAM's D, or TinyViT's layer dim */
        ms_tinyvit_peft tp;
        if (!rc && (ms_sam_peft_from_sd(&sd, &ep, &dp) || ms_sam_tinyvit_peft_from_sd(&sd, "image_encoder.", &tp)))
            rc = ms_error(MS_EUNSUPPORTED, "finetune-SAM adapters cannot be merged into SAM's weights (they add "
                                           "layers); start from weights without them");
    }
    if (!rc) rc = ms_sam_load_sd(m, &sd, dev);
    if (rc) ms_error_prefix("%s", path);
    ms_sd_free(&sd);
    return rc;
}

ms_status ms_sam_load(ms_sam *m, const char *path, ms_device *dev) { return load_file(m, path, 0, dev); }

/* ---- finetune-SAM's checkpoints --------------------------------------------------------------------------------- */

int ms_sam_key_is_lora(const char *n)
{
    return strstr(n, ".linear_a_") || strstr(n, ".linear_b_") || strstr(n, "_proj.w_a.") || strstr(n, "_proj.w_b.");
}

int ms_sam_key_is_adapter(const char *n) { return strstr(n, "Adapter.") != NULL; }

/* finetune-SAM's name of key n → ours into k (n itself when it has none); 0 = drop the key. */
static int fsam_key(const char *n, char *k, size_t nk)
{
    const char *p;
    if (strstr(n, ".Depth_Adapter.")) return 0;
    if ((p = strstr(n, ".attn.qkv.qkv."))) /* keep ".attn.qkv." */
        snprintf(k, nk, "%.*s%s", (int)(p - n) + 10, n, p + 14);
    else if (!strncmp(n, "mask_decoder.", 13) && ((p = strstr(n, ".q_proj.proj.")) || (p = strstr(n, ".v_proj.proj."))))
        snprintf(k, nk, "%.*s%s", (int)(p - n) + 8, n, p + 13); /* keep ".q_proj." */
    else
        snprintf(k, nk, "%s", n);
    return 1;
}

/* "module." before every key */
static int sd_wrapped(const ms_state_dict *sd)
{
    int wrapped = sd->n > 0;
    for (int i = 0; i < sd->n && wrapped; i++) wrapped = !strncmp(sd->e[i].name, "module.", 7);
    return wrapped;
}

int ms_sam_sd_is_finetune_sam(const ms_state_dict *sd)
{
    char k[600];
    for (int i = 0; i < sd->n; i++) {
        const char *n = sd->e[i].name;
        if (ms_sam_key_is_lora(n) || ms_sam_key_is_adapter(n) || !fsam_key(n, k, sizeof k) || strcmp(k, n)) return 1;
    }
    return sd_wrapped(sd);
}

ms_status ms_sam_sd_from_finetune_sam(ms_state_dict *sd, int *found)
{
    *found = 0;
    const int wrapped = sd_wrapped(sd); /* a saved DataParallel / DDP wrapper */
    char k[600];
    for (int i = 0; i < sd->n;) {
        ms_sd_entry *e = &sd->e[i];
        const char *n = e->name + (wrapped ? 7 : 0);
        if (ms_sam_key_is_lora(n) || ms_sam_key_is_adapter(n)) *found = 1;
        if (!fsam_key(n, k, sizeof k)) { ms_sd_remove(sd, e->name); continue; }
        i++;
        if (!strcmp(k, e->name)) continue;
        *found |= strcmp(k, n) != 0;
        MS_FAIL_IF(ms_sd_find(sd, k), MS_EFORMAT, "%s: its key in SAM's names, %s, is in the file too", e->name, k);
        char *dup = malloc(strlen(k) + 1);
        MS_FAIL_IF(!dup, MS_ENOMEM, "out of memory");
        memcpy(dup, k, strlen(k) + 1);
        free(e->name);
        e->name = dup;
    }
    return MS_OK;
}

int ms_sam_peft_from_sd(const ms_state_dict *sd, ms_sam_enc_peft *ep, ms_sam_dec_peft *dp)
{
    memset(ep, 0, sizeof *ep);
    memset(dp, 0, sizeof *dp);
    ep->adapter_scale = dp->adapter_scale = 0.5f;
    char base[120];
    /* only complete groups: a stray PEFT key stays unknown to the loader, which reports it */
    for (int b = 0; b < MS_SAM_MAX_DEPTH; b++) {
        snprintf(base, sizeof base, "image_encoder.blocks.%d.", b);
        if (has_all(sd, base, lora_keys, 4)) {
            char k[200];
            snprintf(k, sizeof k, "%s%s", base, lora_keys[0]);
            const ms_sd_entry *a = ms_sd_find(sd, k);
            if (!ep->lora_rank && a->t.ndim == 2) ep->lora_rank = (int)a->t.shape[0];
            ep->lora_blocks |= 1ull << b;
        }
        if (has_adapters(sd, base, "Space_Adapter")) ep->adapter_blocks |= 1ull << b;
    }
    if (!ep->lora_rank) ep->lora_blocks = 0;
    /* the decoder's PEFT is in every layer (finetune/sam_decoder.h): layer 0 says whether there is any */
    const char *l0 = "mask_decoder.transformer.layers.0.self_attn.";
    if (has_all(sd, l0, dec_lora_keys, 4)) {
        const ms_sd_entry *a = ms_sd_find(sd, "mask_decoder.transformer.layers.0.self_attn.q_proj.w_a.weight");
        if (a->t.ndim == 2) dp->lora_rank = (int)a->t.shape[0];
    }
    dp->adapters = has_adapters(sd, "mask_decoder.transformer.layers.0.", "Adapter");
    return ep->lora_rank || ep->adapter_blocks || dp->lora_rank || dp->adapters;
}

/* W (rows, cols) += B (rows_b, r) · A (r, cols) into rows r0.. — or, with hd > 0, the delta's row i into W's row
 * (i / hd)·3hd + r0 + i % hd (TinyViT's per-head [q | k | v] layout) — each product summed in double then added
 * once. */
static ms_status merge_pair(ms_state_dict *all, const char *w_name, int64_t r0, int64_t hd, const char *b_name,
                            const char *a_name)
{
    const ms_sd_entry *we = ms_sd_find(all, w_name), *be = ms_sd_find(all, b_name), *ae = ms_sd_find(all, a_name);
    MS_FAIL_IF(!we || !be || !ae, MS_ENOTFOUND, "%s: LoRA merge: a tensor is missing", w_name);
    MS_FAIL_IF(we->t.dtype != MS_DTYPE_F32 || be->t.dtype != MS_DTYPE_F32 || ae->t.dtype != MS_DTYPE_F32 ||
                   we->t.ndim != 2 || be->t.ndim != 2 || ae->t.ndim != 2,
               MS_EUNSUPPORTED, "%s: LoRA merge: needs 2-D float32 tensors", w_name);
    const int64_t rows = be->t.shape[0], r = be->t.shape[1], cols = ae->t.shape[1];
    MS_FAIL_IF(ae->t.shape[0] != r || we->t.shape[1] != cols || (hd > 0 && rows % hd) ||
                   (hd > 0 ? 3 * rows : r0 + rows) > we->t.shape[0],
               MS_ESHAPE, "%s: LoRA merge: shapes do not fit", w_name);
    float *W = we->t.data;
    const float *B = be->t.data, *A = ae->t.data;
    for (int64_t i = 0; i < rows; i++) {
        const int64_t row = hd > 0 ? i / hd * 3 * hd + r0 + i % hd : r0 + i;
        for (int64_t j = 0; j < cols; j++) {
            double acc = 0;
            for (int64_t k = 0; k < r; k++) acc += (double)B[i * r + k] * (double)A[k * cols + j];
            W[row * cols + j] = (float)((double)W[row * cols + j] + acc);
        }
    }
    return MS_OK;
}

/* tv != NULL: TinyViT's true q/v LoRA (each head's q and v columns) for image_encoder.layers.*; else the encoder's
 * q rows 0..D−1 and v rows 2D..3D−1. */
static ms_status merge_lora(ms_state_dict *sd, int64_t embed_dim, const ms_tinyvit_config *tv, int drop,
                            int *n_merged)
{
    char w[300], a[300], b[300];
    ms_status rc = MS_OK;
    *n_merged = 0;
    for (int i = 0; i < sd->n && !rc; i++) {
        const char *n = sd->e[i].name;
        if (!ms_str_ends_with(n, ".linear_a_q.weight") && !ms_str_ends_with(n, ".linear_a_v.weight") &&
            !ms_str_ends_with(n, "_proj.w_a.weight"))
            continue;
        size_t L = strlen(n);
        if (ms_str_ends_with(n, "_proj.w_a.weight")) { /* decoder: <attn>.q_proj.w_a.weight */
            snprintf(w, sizeof w, "%.*s.weight", (int)(L - strlen(".w_a.weight")), n);
            snprintf(b, sizeof b, "%.*s.w_b.weight", (int)(L - strlen(".w_a.weight")), n);
            rc = merge_pair(sd, w, 0, 0, b, n);
        } else { /* encoder: <blk>.attn.qkv.linear_a_{q,v}.weight */
            int v = ms_str_ends_with(n, "_v.weight"), layer;
            snprintf(w, sizeof w, "%.*s.weight", (int)(L - strlen(".linear_a_q.weight")), n);
            snprintf(b, sizeof b, "%.*s.linear_b_%c.weight", (int)(L - strlen(".linear_a_q.weight")), n,
                     v ? 'v' : 'q');
            snprintf(a, sizeof a, "%s", n);
            const ms_sd_entry *we = ms_sd_find(sd, w);
            int64_t D = embed_dim ? embed_dim : we && we->t.ndim == 2 ? we->t.shape[1] : 0;
            if (tv && sscanf(n, "image_encoder.layers.%d.", &layer) == 1 && layer >= 1 && layer < 4) {
                const int64_t hd = tv->dims[layer] / tv->heads[layer];
                rc = merge_pair(sd, w, v ? 2 * hd : 0, hd, b, a);
            } else
                rc = merge_pair(sd, w, v ? 2 * D : 0, 0, b, a);
        }
        (*n_merged)++;
    }
    for (int i = 0; i < sd->n && !rc && drop;) {
        if (ms_sam_key_is_lora(sd->e[i].name)) ms_sd_remove(sd, sd->e[i].name);
        else i++;
    }
    return rc;
}

ms_status ms_sam_sd_merge_lora(ms_state_dict *sd, int64_t embed_dim, int drop, int *n_merged)
{
    return merge_lora(sd, embed_dim, NULL, drop, n_merged);
}

ms_status ms_sam_sd_merge_lora_tinyvit(ms_state_dict *sd, const ms_tinyvit_config *tv, int drop, int *n_merged)
{
    return merge_lora(sd, 0, tv, drop, n_merged);
}

ms_status ms_sam_to_sd(const ms_sam *m, ms_state_dict *sd)
{
    if (!m->cfg.tinyvit) return ms_params_to_sd(&m->ps, sd);
    /* MobileSAM's order: each BatchNorm's num_batches_tracked (int64 scalar) right after its running_var */
    ms_state_dict f;
    ms_sd_init(&f);
    ms_status rc = ms_params_to_sd(&m->ps, &f);
    const int64_t nb = m->tv.bn_batches, scalar[1] = {1};
    char k[MS_PARAM_NAME_MAX + 32];
    for (int i = 0; i < f.n && !rc; i++) {
        const ms_sd_entry *e = &f.e[i];
        rc = ms_sd_add(sd, e->name, e->t.dtype, e->t.shape, e->t.ndim, e->t.data);
        size_t n = strlen(e->name);
        if (rc || strncmp(e->name, "image_encoder.", 14) || !ms_str_ends_with(e->name, ".running_var")) continue;
        snprintf(k, sizeof k, "%.*snum_batches_tracked", (int)(n - strlen("running_var")), e->name);
        rc = ms_sd_add(sd, k, MS_DTYPE_I64, scalar, 0, &nb);
    }
    ms_sd_free(&f);
    return rc;
}

ms_status ms_sam_build(ms_sam *m, const char *ckpt, const char *model, uint64_t seed, ms_device *dev, char *name,
                       size_t n)
{
    if (ckpt) {
        MS_TRY(load_file(m, ckpt, 1, dev)); /* MAE runs no PEFT: finetune-SAM's LoRA merged */
        snprintf(name, n, "%s", ms_sam_config_model_name(&m->cfg));
        return MS_OK;
    }
    memset(m, 0, sizeof *m);
    MS_FAIL_IF(!model, MS_EINVAL, "needs --ckpt F or --init random --model NAME");
    ms_sam_config sc;
    MS_TRY(ms_sam_config_named(model, 4, &sc));
    MS_TRY(ms_sam_init(m, &sc, dev));
    ms_status rc = sc.tinyvit ? ms_tinyvit_init_random(&m->tv, seed) : ms_sam_encoder_init_random(&m->enc, seed);
    if (!rc) rc = ms_sam_init_default(&m->ps, "prompt_encoder.", seed);
    if (!rc) rc = ms_sam_init_default(&m->ps, "mask_decoder.", seed + 1);
    if (rc) { ms_sam_free(m); return rc; }
    snprintf(name, n, "%s", model);
    return MS_OK;
}

void ms_sam_free(ms_sam *m)
{
    ms_sam_encoder_free(&m->enc);
    ms_tinyvit_free(&m->tv);
    ms_sam_decoder_free(&m->dec);
    ms_params_free(&m->ps);
}

/* ---- predictor geometry ----------------------------------------------------------------------------------- */

void ms_sam_resize_shape(int h, int w, int S, int *newh, int *neww)
{
    double scale = (double)S / (double)(h > w ? h : w);
    *newh = (int)((double)h * scale + 0.5);
    *neww = (int)((double)w * scale + 0.5);
}

void ms_sam_apply_coords(float *xy, int n, int h, int w, int S)
{
    int nh, nw;
    ms_sam_resize_shape(h, w, S, &nh, &nw);
    for (int i = 0; i < n; i++) {
        xy[2 * i] = (float)((double)xy[2 * i] * ((double)nw / w));
        xy[2 * i + 1] = (float)((double)xy[2 * i + 1] * ((double)nh / h));
    }
}

ms_status ms_sam_postprocess_masks(const float *low, int C, int lh, int lw, int S, int stretched, int orig_h,
                                   int orig_w, float *out)
{
    int nh = S, nw = S;
    if (!stretched) ms_sam_resize_shape(orig_h, orig_w, S, &nh, &nw);
    MS_FAIL_IF(C < 1 || lh < 1 || lw < 1 || S < 1 || orig_h < 1 || orig_w < 1, MS_EINVAL,
               "postprocess: bad sizes");
    ms_device cpu;
    memset(&cpu, 0, sizeof cpu);
    cpu.kind = MS_DEV_CPU;
    cpu.n_threads = 1;
    const int whole = nh == S && nw == S; /* nothing to crop */
    float *full = malloc((size_t)C * S * S * sizeof(float));
    float *crop = whole ? NULL : malloc((size_t)C * nh * nw * sizeof(float));
    ms_status rc = MS_OK;
    if (!full || (!whole && !crop)) { rc = ms_error(MS_ENOMEM, "postprocess: out of memory"); goto leave; }
    rc = ms_resize_bilinear_forward_cpu(&cpu, full, low, C, lh, lw, S, S);
    if (rc) goto leave;
    if (!whole)
        for (int c = 0; c < C; c++)
            for (int y = 0; y < nh; y++)
                memcpy(crop + ((size_t)c * nh + y) * nw, full + ((size_t)c * S + y) * S, (size_t)nw * sizeof(float));
    rc = ms_resize_bilinear_forward_cpu(&cpu, out, whole ? full : crop, C, nh, nw, orig_h, orig_w);
leave:
    free(full);
    free(crop);
    return rc;
}

/* ---- the image encoder, whichever it is ---------------------------------------------------------------------- */

ms_status ms_sam_image_reserve(ms_sam *m, int max_batch, int with_backward)
{
    if (m->cfg.tinyvit) return ms_tinyvit_reserve(&m->tv, max_batch, with_backward);
    return ms_sam_encoder_reserve(&m->enc, m->dev, max_batch, with_backward);
}

ms_status ms_sam_image_forward(ms_sam *m, const float *x, int B, float *emb)
{
    if (m->cfg.tinyvit) return ms_tinyvit_forward(&m->tv, x, B, emb);
    return ms_sam_encoder_forward(&m->enc, x, B, emb);
}

ms_status ms_sam_image_backward(ms_sam *m, const float *demb, float *dx)
{
    if (m->cfg.tinyvit) return ms_tinyvit_backward(&m->tv, demb, NULL, dx);
    return ms_sam_encoder_backward(&m->enc, demb, dx);
}
