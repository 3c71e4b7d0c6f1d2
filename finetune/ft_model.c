/* finetune/ft_model.c — see ft_model.h. The trainable table of docs/FINETUNE.md lives in set_trainable(). */
#include "ft_model.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoints/rundir.h"
#include "data/ingest.h"
#include "ops.h"

/* ---- configuration ------------------------------------------------------------------------------------------ */

void ms_ft_config_default(ms_ft_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->model, sizeof c->model, "vit_b");
    c->method = MS_FT_FULL;
    c->scope = MS_FT_SCOPE_DECODER;
    c->prompt = MS_PROMPT_NONE;
    c->lora_rank = 4;
    c->adapter_scale = 0.5f;
    c->n_tasks = 1;
    snprintf(c->task[0].name, MS_FT_NAME_MAX, "task");
    c->task[0].num_cls = 2;
    c->task[0].values[1] = 1;
    ms_prep_config_default(&c->prep, 1024);
    c->prep.channels = 3;
    c->axis = MS_AXIS_AXIAL;
    c->intensity = MS_NORM_PERCENTILE;
    c->p_lo = 0.5;
    c->p_hi = 99.5;
}

static const char *method_names[] = {"full", "lora", "adapter"};
static const char *scope_names[] = {"decoder", "encoder+decoder"};
static const char *prompt_names[] = {"none", "box", "point", "hybrid"};

const char *ms_ft_method_name(ms_ft_method m) { return (unsigned)m < 3 ? method_names[m] : "?"; }
const char *ms_ft_scope_name(ms_ft_scope s) { return (unsigned)s < 2 ? scope_names[s] : "?"; }
const char *ms_prompt_mode_name(ms_prompt_mode p) { return (unsigned)p < 4 ? prompt_names[p] : "?"; }

ms_status ms_ft_method_parse(const char *s, ms_ft_method *m)
{
    for (int i = 0; i < 3; i++) if (!strcmp(s, method_names[i])) { *m = (ms_ft_method)i; return MS_OK; }
    return ms_error(MS_EINVAL, "--method %s: expected full, lora or adapter", s);
}

ms_status ms_ft_scope_parse(const char *s, ms_ft_scope *sc)
{
    for (int i = 0; i < 2; i++) if (!strcmp(s, scope_names[i])) { *sc = (ms_ft_scope)i; return MS_OK; }
    return ms_error(MS_EINVAL, "--scope %s: expected decoder or encoder+decoder", s);
}

ms_status ms_prompt_mode_parse(const char *s, ms_prompt_mode *p)
{
    for (int i = 0; i < 4; i++) if (!strcmp(s, prompt_names[i])) { *p = (ms_prompt_mode)i; return MS_OK; }
    return ms_error(MS_EINVAL, "--prompt %s: expected none, box, point or hybrid", s);
}

int ms_ft_out_channels(const ms_ft_config *c, int t) { return c->prompt == MS_PROMPT_NONE ? c->task[t].num_cls : 2; }

int ms_ft_task_find(const ms_ft_config *c, const char *name)
{
    for (int t = 0; t < c->n_tasks; t++) if (!strcmp(c->task[t].name, name)) return t;
    return -1;
}

static ms_status config_check(const ms_ft_config *c)
{
    MS_FAIL_IF(c->n_tasks < 1 || c->n_tasks > MS_FT_MAX_TASKS, MS_EINVAL, "finetune: %d tasks (1..%d)", c->n_tasks,
               MS_FT_MAX_TASKS);
    for (int t = 0; t < c->n_tasks; t++) {
        const ms_ft_task *k = &c->task[t];
        MS_FAIL_IF(!k->name[0] || strchr(k->name, '.') || strchr(k->name, '/'), MS_EINVAL,
                   "finetune: task name \"%s\" must be non-empty, without '.' or '/'", k->name);
        MS_FAIL_IF(k->num_cls < 2 || k->num_cls > MS_FT_MAX_CLASSES, MS_EINVAL,
                   "task %s: %d classes (2..%d, background included)", k->name, k->num_cls, MS_FT_MAX_CLASSES);
        for (int u = 0; u < t; u++)
            MS_FAIL_IF(!strcmp(c->task[u].name, k->name), MS_EINVAL, "finetune: task name %s given twice", k->name);
    }
    MS_FAIL_IF(c->method != MS_FT_FULL && c->method != MS_FT_LORA && c->method != MS_FT_ADAPTER, MS_EINVAL,
               "finetune: bad method");
    MS_FAIL_IF(c->method == MS_FT_LORA && (c->lora_rank < 1 || c->lora_rank > 256), MS_EINVAL,
               "finetune: LoRA rank %d (1..256)", c->lora_rank);
    return MS_OK;
}

/* ---- the trainable table (docs/FINETUNE.md) ----------------------------------------------------------------- */

static int is_lora(const char *n)
{
    return strstr(n, ".linear_a_") || strstr(n, ".linear_b_") || strstr(n, "_proj.w_a.") || strstr(n, "_proj.w_b.");
}
static int is_adapter(const char *n) { return strstr(n, "Adapter.") != NULL; }
/* The output heads that a fresh num_cls needs trained: tokens, upscaling, hypernetworks, IoU head (any task). */
static int is_head(const char *n)
{
    static const char *h[] = {"mask_decoder.iou_token.", "mask_decoder.mask_tokens.", "mask_decoder.output_upscaling.",
                              "mask_decoder.output_hypernetworks_mlps.", "mask_decoder.iou_prediction_head."};
    for (size_t i = 0; i < sizeof h / sizeof *h; i++) if (strstr(n, h[i])) return 1;
    return 0;
}

static void set_trainable(ms_ft_model *m)
{
    const ms_ft_config *c = &m->cfg;
    ms_params *ps = &m->sam.ps;
    for (int i = 0; i < ps->n; i++) {
        const char *n = ps->p[i].name;
        int enc = !strncmp(n, "image_encoder.", 14), pe = !strncmp(n, "prompt_encoder.", 15);
        int tr = 0;
        switch (c->method) {
        case MS_FT_FULL:
            tr = c->scope == MS_FT_SCOPE_ENC_DEC ? 1 : !enc;
            break;
        case MS_FT_LORA:
            /* finetune-SAM's LoRA_Sam freezes only the encoder and the decoder's transformer */
            tr = is_lora(n) || is_head(n) || (c->compat_finetune_sam && pe);
            break;
        case MS_FT_ADAPTER:
            /* finetune-SAM freezes every name without "Adapter", its re-initialised heads included */
            tr = is_adapter(n) || (!c->compat_finetune_sam && is_head(n));
            break;
        }
        if (m->sam.cfg.tinyvit) {
            /* finetune-SAM's LoRA_Sam on MobileSAM also trains TinyViT's convolutional layer 0 */
            if (c->compat_finetune_sam && c->method == MS_FT_LORA && c->scope == MS_FT_SCOPE_ENC_DEC &&
                !strncmp(n, "image_encoder.layers.0.", 23))
                tr = 1;
            /* TinyViT's classifier is unused by SAM: never trained */
            if (!strncmp(n, "image_encoder.norm_head.", 24) || !strncmp(n, "image_encoder.head.", 19)) tr = 0;
        }
        ps->p[i].trainable = tr && !ps->p[i].buffer;
    }
    ms_sam_prompt_freeze_buffers(&m->sam.pe);
}

/* ---- build ---------------------------------------------------------------------------------------------------- */

static const char *head_keys[] = {"mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.",
                                  "mask_decoder.iou_prediction_head."};

static int is_head0_key(const char *n)
{
    for (int i = 0; i < 3; i++) if (!strncmp(n, head_keys[i], strlen(head_keys[i]))) return 1;
    return 0;
}

static uint64_t all_blocks(int depth) { return depth >= 64 ? ~0ull : ((1ull << depth) - 1); }

/* The variant name of a detected configuration. */
static const char *model_name(const ms_sam_config *sc)
{
    if (sc->tinyvit) {
        ms_tinyvit_config t;
        for (int k = 0; k < 2; k++) {
            const char *nm = k ? "vit_t_test" : "vit_t";
            if (!ms_tinyvit_config_named(nm, &t) && !memcmp(t.dims, sc->tv.dims, sizeof t.dims) &&
                !memcmp(t.depths, sc->tv.depths, sizeof t.depths))
                return nm;
        }
        return "custom";
    }
    int d = sc->enc.embed_dim;
    return d == 768 ? "vit_b" : d == 1024 ? "vit_l" : d == 1280 ? "vit_h" : d == 192 ? "vit_test" : "custom";
}

/* The encoder's PEFT tensors (scope encoder+decoder). TinyViT: the bits of lora_blocks / adapter_blocks name its
 * layers 1..3 (layer 0 is convolutional); 0 = all three. */
static ms_status add_encoder_peft(ms_sam *s, const ms_ft_config *c)
{
    if (s->cfg.tinyvit) {
        ms_tinyvit_peft tp = {0};
        tp.adapter_scale = c->adapter_scale;
        tp.fsam_slicing = c->compat_finetune_sam;
        unsigned bits = (unsigned)((c->method == MS_FT_LORA ? c->lora_blocks : c->adapter_blocks) & 0xE);
        if (!bits) bits = 0xE;
        if (c->method == MS_FT_LORA) {
            tp.lora_rank = c->lora_rank;
            tp.lora_layers = bits;
        } else {
            tp.adapter_layers = bits;
        }
        return ms_tinyvit_add_peft(&s->tv, &tp);
    }
    ms_sam_enc_peft ep = {0};
    ep.adapter_scale = c->adapter_scale;
    uint64_t all = all_blocks(s->cfg.enc.depth);
    if (c->method == MS_FT_LORA) {
        ep.lora_rank = c->lora_rank;
        ep.lora_blocks = c->lora_blocks ? (c->lora_blocks & all) : all;
    } else {
        ep.adapter_blocks = c->adapter_blocks ? (c->adapter_blocks & all) : all;
    }
    return ms_sam_encoder_add_peft(&s->enc, &ep);
}

/* The adapter tensors of init over their random initialisation (ms_params_load checked their names and shapes). */
static ms_status load_adapters(ms_params *ps, const ms_state_dict *init)
{
    for (int i = 0; i < init->n; i++) {
        const ms_sd_entry *e = &init->e[i];
        int k = ms_sam_key_is_adapter(e->name) ? ms_params_find(ps, e->name) : -1;
        if (k < 0) continue;
        const ms_param *p = &ps->p[k];
        float *h = malloc((size_t)p->numel * sizeof(float));
        MS_FAIL_IF(!h, MS_ENOMEM, "out of memory");
        ms_status rc = ms_sd_get_f32(init, e->name, p->shape, p->ndim, h);
        if (!rc) rc = ms_dev_from_host(ps->dev, ps->data + p->off, h, (size_t)p->numel * sizeof(float));
        free(h);
        MS_TRY(rc);
    }
    return MS_OK;
}

/* mode 0: start from SAM weights (init may be NULL = random); mode 1: an exact run checkpoint, inference only. */
static ms_status build(ms_ft_model *m, const ms_ft_config *cfg, const ms_state_dict *init, uint64_t seed,
                       ms_device *dev, int exact)
{
    memset(m, 0, sizeof *m);
    m->dev = dev;
    m->cfg = *cfg;
    MS_TRY(config_check(cfg));
    ms_state_dict tv_view = {0}; /* TinyViT: init without its BatchNorm counters */
    ms_ft_config *c = &m->cfg;
    ms_sam_config sc;
    int M0 = ms_ft_out_channels(c, 0) + 1, file_M = 0;
    if (init) {
        MS_TRY(ms_sam_config_from_sd(init, &sc));
        file_M = sc.n_mask_tokens;
        sc.n_mask_tokens = M0;
        snprintf(c->model, sizeof c->model, "%s", model_name(&sc));
    } else {
        MS_TRY(ms_sam_config_named(c->model, M0, &sc));
    }
    /* the embedding grid is input/16 for both encoders (SAM's patch; TinyViT's total stride) */
    const int patch = sc.tinyvit ? 16 : sc.enc.patch, native = sc.tinyvit ? sc.tv.img_size : sc.enc.img_size;
    if (!sc.tinyvit) sc.enc.finetune_sam_block = c->compat_finetune_sam;
    MS_FAIL_IF(c->prep.size < patch || c->prep.size % patch || c->prep.size > 4096, MS_EINVAL,
               "finetune: input size %d is not a multiple of the patch size %d (up to 4096)", c->prep.size, patch);
    /* another input size than the weights': position tables interpolated inside every forward (as pretrain) */
    c->prep.label_size = 4 * (c->prep.size / patch);
    c->prep.channels = 3;
    MS_TRY(ms_sam_register_at(&m->sam, &sc, c->prep.size == native ? 0 : c->prep.size, dev));
    ms_sam *s = &m->sam;
    ms_status rc = MS_OK;
    m->head[0] = 0;
    for (int t = 1; t < c->n_tasks && !rc; t++) {
        char prefix[160];
        snprintf(prefix, sizeof prefix, "tasks.%s.mask_decoder.", c->task[t].name);
        m->head[t] = ms_sam_decoder_add_head(&s->dec, prefix, ms_ft_out_channels(c, t) + 1);
        if (m->head[t] < 0) rc = ms_error(MS_EINVAL, "%s", ms_errmsg());
    }
    /* PEFT tensors: decoder always (for lora / adapter), encoder only when it trains */
    m->encoder_trains = c->scope == MS_FT_SCOPE_ENC_DEC;
    if (!rc && c->method != MS_FT_FULL) {
        ms_sam_dec_peft dp = {0};
        dp.adapter_scale = c->adapter_scale;
        if (c->method == MS_FT_LORA) dp.lora_rank = c->lora_rank;
        else dp.adapters = 1;
        rc = ms_sam_decoder_add_peft(&s->dec, &dp);
        if (!rc && m->encoder_trains) rc = add_encoder_peft(s, c);
    }
    /* TinyViT's BatchNorms use batch statistics in training when they train, or under finetune-SAM's train mode */
    m->train_bn = sc.tinyvit && (c->compat_finetune_sam || (c->method == MS_FT_FULL && m->encoder_trains));
    if (!rc) rc = ms_sam_alloc(s);
    if (rc) goto fail;

    /* TinyViT files carry each BatchNorm's num_batches_tracked (an integer, not a parameter): loaded from a view
     * without them, the counter kept in the encoder */
    if (init && sc.tinyvit) {
        int64_t batches = 0;
        if ((rc = ms_tinyvit_sd_view(&s->tv, init, &tv_view, &batches))) goto fail;
        s->tv.bn_batches = batches;
        init = &tv_view;
    }

    /* initial values */
    if (!init) {
        rc = sc.tinyvit ? ms_tinyvit_init_random(&s->tv, seed) : ms_sam_encoder_init_random(&s->enc, seed);
        if (!rc) rc = ms_sam_init_default(&s->ps, "prompt_encoder.", seed);
        if (!rc) rc = ms_sam_init_default(&s->ps, "mask_decoder.", seed + 1);
    } else if (exact) {
        rc = ms_params_load(&s->ps, init, "");
    } else {
        /* finetune-SAM's load_from: a different mask-token count drops the head keys (they are re-initialised).
         * The view shares the entries' memory; only its index array is ours. */
        ms_state_dict view = *init;
        int reinit = file_M != M0;
        view.e = malloc((size_t)(init->n ? init->n : 1) * sizeof *view.e);
        if (!view.e) { rc = ms_error(MS_ENOMEM, "out of memory"); goto fail; }
        view.n = 0;
        for (int i = 0; i < init->n; i++)
            if (!(reinit && is_head0_key(init->e[i].name))) view.e[view.n++] = init->e[i];
        view.cap = view.n;
        for (int i = 0; reinit && i < 3; i++) ms_params_set_optional(&s->ps, head_keys[i], 1);
        rc = ms_params_load(&s->ps, &view, "");
        for (int i = 0; reinit && i < 3; i++) ms_params_set_optional(&s->ps, head_keys[i], 0);
        free(view.e);
        if (!rc && reinit) {
            fprintf(stderr, "note: the weights have %d mask tokens, task %s needs %d: mask tokens, hypernetwork MLPs "
                            "and IoU head re-initialised (as finetune-SAM does)\n", file_M, c->task[0].name, M0);
            rc = ms_sam_decoder_head_init_random(&s->dec, 0, seed + 5);
        }
    }
    if (!exact) {
        for (int t = 1; t < c->n_tasks && !rc; t++)
            rc = ms_sam_decoder_head_init_random(&s->dec, m->head[t], seed + 5 + (uint64_t)t);
        if (!rc && c->method != MS_FT_FULL) {
            rc = ms_sam_decoder_peft_init_random(&s->dec, seed + 3);
            if (!rc && m->encoder_trains)
                rc = sc.tinyvit ? ms_tinyvit_peft_init_random(&s->tv, seed + 4)
                                : ms_sam_encoder_peft_init_random(&s->enc, seed + 4);
        }
        if (!rc && init) rc = load_adapters(&s->ps, init); /* finetune-SAM's trained adapters go on training */
    }
    free(tv_view.e);
    tv_view.e = NULL;
    if (rc) goto fail;
    if (exact) {
        for (int i = 0; i < s->ps.n; i++) s->ps.p[i].trainable = 0;
        m->encoder_trains = m->train_bn = 0;
    } else {
        set_trainable(m);
        rc = ms_params_alloc_grads(&s->ps);
        if (rc) goto fail;
    }
    m->last_task = -1;
    return MS_OK;
fail:
    free(tv_view.e);
    ms_ft_model_free(m);
    return rc;
}

/* finetune-SAM's layout as starting weights (docs/FINETUNE.md): a renamed copy, LoRA merged into the base weights
 * (the run's own LoRA, if any, starts fresh on top), adapters kept for a run that has them at the same places. */
static ms_status from_finetune_sam(const ms_ft_config *c, const ms_state_dict *init, ms_state_dict *sd, int *fsam)
{
    for (int i = 0; i < init->n; i++) {
        const ms_sd_entry *e = &init->e[i];
        MS_TRY(ms_sd_add(sd, e->name, e->t.dtype, e->t.shape, e->t.ndim, e->t.data));
    }
    MS_TRY(ms_sam_sd_from_finetune_sam(sd, fsam));
    if (!*fsam) return MS_OK;
    const ms_sd_entry *pw = ms_sd_find(sd, "image_encoder.patch_embed.proj.weight");
    int n_lora = 0;
    MS_TRY(ms_sam_sd_merge_lora(sd, pw && pw->t.ndim == 4 ? pw->t.shape[0] : 0, 1, &n_lora));
    ms_sam_enc_peft ep;
    ms_sam_dec_peft dp;
    ms_sam_peft_from_sd(sd, &ep, &dp);
    int ad = ep.adapter_blocks || dp.adapters;
    MS_FAIL_IF(ad && c->method != MS_FT_ADAPTER, MS_EUNSUPPORTED, "the starting weights hold finetune-SAM adapters, "
               "which cannot be merged into SAM's weights (they add layers): go on with --method adapter%s",
               ep.adapter_blocks ? " --scope encoder+decoder" : "");
    MS_FAIL_IF(ep.adapter_blocks && c->scope != MS_FT_SCOPE_ENC_DEC, MS_EUNSUPPORTED, "the starting weights hold "
               "encoder adapters: go on with --scope encoder+decoder");
    fprintf(stderr, "note: finetune-SAM weights: %d LoRA pairs merged into the base weights%s\n", n_lora,
            ad ? ", its adapters go on training" : "");
    return MS_OK;
}

ms_status ms_ft_model_build(ms_ft_model *m, const ms_ft_config *cfg, const ms_state_dict *init, uint64_t seed,
                            ms_device *dev)
{
    if (!init || !ms_sam_sd_is_finetune_sam(init)) return build(m, cfg, init, seed, dev, 0);
    ms_state_dict sd;
    ms_sd_init(&sd);
    int fsam = 0; /* 0: only a DataParallel "module." dropped */
    ms_status rc = from_finetune_sam(cfg, init, &sd, &fsam);
    if (!rc) rc = build(m, cfg, &sd, seed, dev, 0);
    else memset(m, 0, sizeof *m);
    ms_sd_free(&sd);
    return rc;
}

static int c_max(const ms_ft_config *c)
{
    int cm = 0;
    for (int t = 0; t < c->n_tasks; t++) if (ms_ft_out_channels(c, t) > cm) cm = ms_ft_out_channels(c, t);
    return cm;
}

static void free_buffers(ms_ft_model *m)
{
    ms_device *dev = m->dev;
    if (!dev) return;
    ms_dev_free(dev, m->x);
    ms_dev_free(dev, m->emb);
    ms_dev_free(dev, m->demb);
    ms_dev_free(dev, m->logits);
    ms_dev_free(dev, m->dlogits);
    ms_dev_free(dev, m->dmasks);
    ms_sam_prompt_state_free(dev, &m->pst);
    free(m->d_sparse);
    m->x = m->emb = m->demb = m->logits = m->dlogits = m->dmasks = m->d_sparse = NULL;
    m->d_sparse_cap = 0;
    memset(&m->pst, 0, sizeof m->pst);
    m->max_batch = 0;
}

/* The model's own device buffers for (S, g, C classes, max_batch): where each pointer lives and its floats;
 * returns how many. One list for ms_ft_model_reserve and ms_ft_step_bytes. */
static int ft_buffers(ms_ft_model *m, int64_t S, int64_t g, int64_t C, int64_t B, int train, int encoder_trains,
                      float **ptr[6], int64_t n[6])
{
    const int64_t lo = 4 * g;
    int k = 0;
#define BUF(p, cnt) (ptr[k] = &(p), n[k] = (cnt), k++)
    BUF(m->x, B * 3 * S * S);
    BUF(m->emb, B * 256 * g * g);
    BUF(m->logits, B * C * lo * lo);
    if (train) {
        BUF(m->dlogits, B * C * lo * lo);
        BUF(m->dmasks, B * (C + 1) * lo * lo);
        if (encoder_trains) BUF(m->demb, B * 256 * g * g);
    }
#undef BUF
    return k;
}

ms_status ms_ft_model_reserve(ms_ft_model *m, int max_batch, int train)
{
    free_buffers(m);
    MS_FAIL_IF(max_batch < 1, MS_EINVAL, "finetune: batch %d", max_batch);
    ms_sam *s = &m->sam;
    m->max_batch = max_batch;
    m->with_backward = train;
    MS_TRY(ms_sam_image_reserve(s, max_batch, train && m->encoder_trains));
    float **ptr[6];
    int64_t n[6];
    int nb = ft_buffers(m, s->img_size, s->emb_h, c_max(&m->cfg), max_batch, train, m->encoder_trains, ptr, n);
    for (int k = 0; k < nb; k++) MS_TRY(ms_dev_alloc(m->dev, (size_t)n[k] * sizeof(float), (void **)ptr[k]));
    return MS_OK;
}

ms_status ms_ft_step_bytes(const ms_sam *s, int n_classes, int max_batch, int recompute, size_t *bytes)
{
    MS_FAIL_IF(s->cfg.tinyvit, MS_EUNSUPPORTED, "finetune: the memory count covers SAM's ViT encoders only");
    MS_FAIL_IF(max_batch < 1, MS_EINVAL, "finetune: batch %d", max_batch);
    size_t act = 0;
    MS_TRY(ms_sam_encoder_activation_bytes(&s->enc, max_batch, 1, recompute, 0, &act));
    ms_ft_model tmp; /* ft_buffers records where pointers live; nothing is allocated */
    memset(&tmp, 0, sizeof tmp);
    float **ptr[6];
    int64_t n[6];
    int nb = ft_buffers(&tmp, s->img_size, s->emb_h, n_classes, max_batch, 1, 1, ptr, n);
    size_t own = 0;
    for (int k = 0; k < nb; k++) own += (size_t)n[k] * sizeof(float);
    *bytes = ms_params_train_bytes(&s->ps) + act + own;
    return MS_OK;
}

typedef struct ft_count { const ms_sam *s; int n_classes, recompute; } ft_count;

static ms_status ft_count_bytes(void *ctx, int batch, size_t *bytes)
{
    const ft_count *c = ctx;
    return ms_ft_step_bytes(c->s, c->n_classes, batch, c->recompute, bytes);
}

ms_status ms_ft_largest_batch(const ms_sam *s, int n_classes, int recompute, size_t budget, int *batch)
{
    ft_count c = {s, n_classes, recompute};
    return ms_plan_largest_batch(ft_count_bytes, &c, budget, 1 << 16, batch);
}

void ms_ft_model_free(ms_ft_model *m)
{
    free_buffers(m);
    ms_sam_free(&m->sam);
    memset(m, 0, sizeof *m);
}

/* ---- forward / backward ---------------------------------------------------------------------------------------- */

ms_status ms_ft_model_encode(ms_ft_model *m, const float *x, int B)
{
    MS_FAIL_IF(!m->max_batch, MS_EBADSTATE, "finetune model: ms_ft_model_reserve was not called");
    MS_FAIL_IF(B < 1 || B > m->max_batch, MS_EINVAL, "finetune model: batch %d, reserved %d", B, m->max_batch);
    return ms_sam_image_forward(&m->sam, x, B, m->emb);
}

void ms_ft_model_set_training(ms_ft_model *m, int training) { m->sam.tv.bn_train = training && m->train_bn; }

ms_status ms_ft_model_decode(ms_ft_model *m, int t, const float *emb, int B, const ms_sam_prompts *pr)
{
    MS_FAIL_IF(!m->max_batch, MS_EBADSTATE, "finetune model: ms_ft_model_reserve was not called");
    MS_FAIL_IF(t < 0 || t >= m->cfg.n_tasks, MS_EINVAL, "finetune model: task %d of %d", t, m->cfg.n_tasks);
    MS_FAIL_IF(B < 1 || B > m->max_batch, MS_EINVAL, "finetune model: batch %d, reserved %d", B, m->max_batch);
    MS_FAIL_IF(pr && pr->bp != B, MS_EINVAL, "finetune model: %d prompts for %d images", pr->bp, B);
    MS_FAIL_IF(!pr && m->cfg.prompt != MS_PROMPT_NONE, MS_EINVAL, "finetune model: the model was trained with %s "
               "prompts; give prompts", ms_prompt_mode_name(m->cfg.prompt));
    ms_sam *s = &m->sam;
    ms_device *dev = m->dev;
    MS_TRY(ms_sam_decoder_use_head(&s->dec, m->head[t]));
    ms_sam_prompts none = {.bp = 1, .n_points = 0, .points = NULL, .labels = NULL, .boxes = NULL, .masks = NULL};
    MS_TRY(ms_sam_prompt_forward(dev, &s->pe, pr ? pr : &none, &m->pst));
    MS_TRY(ms_sam_decoder_forward(dev, &s->dec, emb, B, &m->pst));
    const int64_t M = s->dec.M, C = M - 1, P = 16 * (int64_t)s->emb_h * s->emb_w;
    MS_FAIL_IF(C != ms_ft_out_channels(&m->cfg, t), MS_EBADSTATE, "finetune model: head of task %d has %d channels",
               t, (int)C);
    /* channels = mask tokens 1..M−1 (token 0 is SAM's single-mask output, unused: docs/MODEL.md §Multi-class output) */
    for (int b = 0; b < B; b++)
        MS_TRY(ms_dev_copy(dev, m->logits + (int64_t)b * C * P, s->dec.masks + ((int64_t)b * M + 1) * P,
                           (size_t)(C * P) * sizeof(float)));
    m->last_task = t;
    m->last_B = B;
    m->last_C = (int)C;
    m->last_emb = emb;
    return MS_OK;
}

ms_status ms_ft_model_backward(ms_ft_model *m, const float *dlogits)
{
    MS_FAIL_IF(!m->with_backward, MS_EBADSTATE, "finetune model: reserved without backward");
    MS_FAIL_IF(m->last_task < 0, MS_EBADSTATE, "finetune model: backward before decode");
    ms_sam *s = &m->sam;
    ms_device *dev = m->dev;
    const int B = m->last_B;
    const int64_t C = m->last_C, M = C + 1, P = 16 * (int64_t)s->emb_h * s->emb_w;
    MS_FAIL_IF(s->dec.M != M, MS_EBADSTATE, "finetune model: the decoder ran another head since the decode");
    MS_TRY(ms_dev_zero(dev, m->dmasks, (size_t)(B * M * P) * sizeof(float)));
    for (int b = 0; b < B; b++)
        MS_TRY(ms_dev_copy(dev, m->dmasks + ((int64_t)b * M + 1) * P, dlogits + (int64_t)b * C * P,
                           (size_t)(C * P) * sizeof(float)));
    int enc = m->encoder_trains && m->last_emb == m->emb;
    if (enc) MS_TRY(ms_dev_zero(dev, m->demb, (size_t)B * 256 * s->emb_h * s->emb_w * sizeof(float)));
    /* sparse prompt gradients only matter when the prompt encoder trains and there were prompt tokens */
    float *dsp = NULL;
    int64_t nsp = (int64_t)m->pst.bp * m->pst.ns * 256;
    int pe_trains = ms_params_grad(&s->ps, s->pe.pt[0]) != NULL;
    if (pe_trains && nsp > 0) {
        if (nsp > m->d_sparse_cap) {
            free(m->d_sparse);
            m->d_sparse = malloc((size_t)nsp * sizeof(float));
            m->d_sparse_cap = m->d_sparse ? nsp : 0;
            MS_FAIL_IF(!m->d_sparse, MS_ENOMEM, "out of memory");
        }
        memset(m->d_sparse, 0, (size_t)nsp * sizeof(float)); /* the decoder accumulates into it */
        dsp = m->d_sparse;
    }
    MS_TRY(ms_sam_decoder_backward(dev, &s->dec, m->dmasks, NULL, enc ? m->demb : NULL, dsp, NULL));
    if (dsp) MS_TRY(ms_sam_prompt_backward(dev, &s->pe, &m->pst, dsp, NULL));
    if (enc) MS_TRY(ms_sam_image_backward(s, m->demb, NULL));
    return MS_OK;
}

int64_t ms_ft_model_trainable_numel(const ms_ft_model *m, int *n_tensors)
{
    int64_t n = 0;
    int k = 0;
    for (int i = 0; i < m->sam.ps.n; i++)
        if (m->sam.ps.p[i].trainable) { n += m->sam.ps.p[i].numel; k++; }
    if (n_tensors) *n_tensors = k;
    return n;
}

/* ---- meta.json ------------------------------------------------------------------------------------------------- */

static cJSON *blocks_json(uint64_t bits)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < 64; i++) if (bits >> i & 1) cJSON_AddItemToArray(a, cJSON_CreateNumber(i));
    return a;
}

static const char *axis_name(int a)
{
    return a == MS_AXIS_SAGITTAL ? "sagittal" : a == MS_AXIS_CORONAL ? "coronal" : a == MS_AXIS_AXIAL ? "axial" : "auto";
}

ms_status ms_ft_meta_write(const char *path, const ms_ft_config *c, const char *extra_json)
{
    cJSON *o = cJSON_CreateObject(), *extra = NULL;
    MS_FAIL_IF(!o, MS_ENOMEM, "out of memory");
    cJSON_AddStringToObject(o, "format", "mrisam-finetune");
    cJSON_AddNumberToObject(o, "version", 1);
    cJSON_AddStringToObject(o, "model", c->model);
    cJSON_AddStringToObject(o, "method", ms_ft_method_name(c->method));
    cJSON_AddStringToObject(o, "scope", ms_ft_scope_name(c->scope));
    cJSON_AddStringToObject(o, "prompt", ms_prompt_mode_name(c->prompt));
    cJSON_AddNumberToObject(o, "lora_rank", c->lora_rank);
    cJSON_AddItemToObject(o, "lora_blocks", blocks_json(c->lora_blocks));
    cJSON_AddItemToObject(o, "adapter_blocks", blocks_json(c->adapter_blocks));
    cJSON_AddNumberToObject(o, "adapter_scale", c->adapter_scale);
    cJSON_AddNumberToObject(o, "compat_finetune_sam", c->compat_finetune_sam);
    cJSON *tasks = cJSON_AddArrayToObject(o, "tasks");
    for (int t = 0; t < c->n_tasks; t++) {
        const ms_ft_task *k = &c->task[t];
        cJSON *to = cJSON_CreateObject(), *v = cJSON_CreateArray(), *nm = cJSON_CreateArray();
        cJSON_AddStringToObject(to, "name", k->name);
        cJSON_AddNumberToObject(to, "num_cls", k->num_cls);
        for (int i = 0; i < k->num_cls; i++) {
            cJSON_AddItemToArray(v, cJSON_CreateNumber(k->values[i]));
            cJSON_AddItemToArray(nm, cJSON_CreateString(k->class_names[i]));
        }
        cJSON_AddItemToObject(to, "values", v);
        cJSON_AddItemToObject(to, "class_names", nm);
        cJSON_AddItemToArray(tasks, to);
    }
    cJSON *pp = cJSON_AddObjectToObject(o, "preprocess");
    cJSON_AddNumberToObject(pp, "input_size", c->prep.size);
    cJSON_AddStringToObject(pp, "resize", c->prep.resize == MS_RESIZE_STRETCH ? "stretch" : "longest");
    cJSON_AddStringToObject(pp, "norm", c->prep.norm == MS_NORM_UNIT ? "medsam" : "sam");
    cJSON_AddNumberToObject(pp, "label_size", c->prep.label_size);
    cJSON_AddStringToObject(pp, "axis", axis_name(c->axis));
    cJSON_AddStringToObject(pp, "intensity", ms_norm_name(c->intensity));
    cJSON_AddNumberToObject(pp, "p_lo", c->p_lo);
    cJSON_AddNumberToObject(pp, "p_hi", c->p_hi);
    ms_status rc = MS_OK;
    if (extra_json) {
        extra = cJSON_Parse(extra_json);
        if (!extra || !cJSON_IsObject(extra)) rc = ms_error(MS_EINVAL, "meta.json: extra members are not an object");
        else
            for (cJSON *it = extra->child; it; it = it->next)
                cJSON_AddItemToObject(o, it->string, cJSON_Duplicate(it, 1));
    }
    char *txt = rc ? NULL : cJSON_Print(o);
    if (!rc && !txt) rc = ms_error(MS_ENOMEM, "out of memory");
    if (!rc) rc = ms_write_file_atomic(path, txt, strlen(txt));
    free(txt);
    cJSON_Delete(extra);
    cJSON_Delete(o);
    return rc;
}

static uint64_t blocks_from_json(const cJSON *a)
{
    uint64_t b = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, a) if (cJSON_IsNumber(it) && it->valuedouble >= 0 && it->valuedouble < 64)
        b |= 1ull << (int)it->valuedouble;
    return b;
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int jnum(const cJSON *o, const char *k, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(v)) return 0;
    *out = v->valuedouble;
    return 1;
}

ms_status ms_ft_meta_read(const char *path, ms_ft_config *c)
{
    cJSON *o;
    MS_TRY(ms_read_json(path, 1 << 20, &o));
    ms_status rc = MS_OK;
    ms_ft_config_default(c);
    const char *s;
    double v;
#define BAD(...) do { rc = ms_error(MS_EFORMAT, __VA_ARGS__); goto leave; } while (0)
    s = jstr(o, "format");
    if (!s || strcmp(s, "mrisam-finetune")) BAD("%s: not a mrisam finetune meta.json", path);
    if (!jnum(o, "version", &v) || v != 1) BAD("%s: unsupported version", path);
    if (!(s = jstr(o, "model"))) BAD("%s: no model", path);
    snprintf(c->model, sizeof c->model, "%s", s);
    if (!(s = jstr(o, "method")) || ms_ft_method_parse(s, &c->method)) BAD("%s: bad method", path);
    if (!(s = jstr(o, "scope")) || ms_ft_scope_parse(s, &c->scope)) BAD("%s: bad scope", path);
    if (!(s = jstr(o, "prompt")) || ms_prompt_mode_parse(s, &c->prompt)) BAD("%s: bad prompt", path);
    /* an int field: a number outside int's range would make the cast undefined */
    if (jnum(o, "lora_rank", &v) && !(v >= INT_MIN && v <= INT_MAX)) BAD("%s: lora_rank out of range", path);
    if (jnum(o, "lora_rank", &v)) c->lora_rank = (int)v;
    c->lora_blocks = blocks_from_json(cJSON_GetObjectItemCaseSensitive(o, "lora_blocks"));
    c->adapter_blocks = blocks_from_json(cJSON_GetObjectItemCaseSensitive(o, "adapter_blocks"));
    if (jnum(o, "adapter_scale", &v)) c->adapter_scale = (float)v;
    if (jnum(o, "compat_finetune_sam", &v)) c->compat_finetune_sam = v != 0;
    const cJSON *tasks = cJSON_GetObjectItemCaseSensitive(o, "tasks"), *t;
    if (!cJSON_IsArray(tasks) || cJSON_GetArraySize(tasks) < 1 || cJSON_GetArraySize(tasks) > MS_FT_MAX_TASKS)
        BAD("%s: tasks must be an array of 1..%d", path, MS_FT_MAX_TASKS);
    c->n_tasks = 0;
    cJSON_ArrayForEach(t, tasks) {
        ms_ft_task *k = &c->task[c->n_tasks++];
        memset(k, 0, sizeof *k);
        if (!(s = jstr(t, "name")) || strlen(s) >= MS_FT_NAME_MAX) BAD("%s: task without a name", path);
        snprintf(k->name, sizeof k->name, "%s", s);
        char shown[MS_FT_NAME_MAX]; /* the name in messages: a control character in it would break the line */
        for (size_t i = 0; i < sizeof shown; i++) shown[i] = k->name[i] > 0 && k->name[i] < 0x20 ? '?' : k->name[i];
        if (!jnum(t, "num_cls", &v) || v < 2 || v > MS_FT_MAX_CLASSES) BAD("%s: task %s: bad num_cls", path, shown);
        k->num_cls = (int)v;
        const cJSON *vals = cJSON_GetObjectItemCaseSensitive(t, "values"), *names = cJSON_GetObjectItemCaseSensitive(t, "class_names");
        if (!cJSON_IsArray(vals) || cJSON_GetArraySize(vals) != k->num_cls) BAD("%s: task %s: values", path, shown);
        for (int i = 0; i < k->num_cls; i++) {
            const cJSON *x = cJSON_GetArrayItem(vals, i);
            if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble > 65535)
                BAD("%s: task %s: bad class value", path, shown);
            k->values[i] = (uint16_t)x->valuedouble;
            const cJSON *n = cJSON_IsArray(names) ? cJSON_GetArrayItem(names, i) : NULL;
            if (cJSON_IsString(n)) snprintf(k->class_names[i], MS_FT_NAME_MAX, "%s", n->valuestring);
        }
    }
    const cJSON *pp = cJSON_GetObjectItemCaseSensitive(o, "preprocess");
    if (!cJSON_IsObject(pp) || !jnum(pp, "input_size", &v) || v < 16 || v > 8192) BAD("%s: preprocess.input_size", path);
    ms_prep_config_default(&c->prep, (int)v);
    c->prep.channels = 3;
    if (ms_prep_parse(&c->prep, jstr(pp, "resize"), jstr(pp, "norm"))) BAD("%s: preprocess resize/norm", path);
    if (jnum(pp, "label_size", &v) && !(v >= INT_MIN && v <= INT_MAX)) BAD("%s: preprocess.label_size", path);
    if (jnum(pp, "label_size", &v)) c->prep.label_size = (int)v;
    s = jstr(pp, "axis");
    c->axis = !s ? MS_AXIS_AXIAL : !strcmp(s, "sagittal") ? MS_AXIS_SAGITTAL : !strcmp(s, "coronal") ? MS_AXIS_CORONAL
              : !strcmp(s, "axial") ? MS_AXIS_AXIAL : MS_AXIS_AUTO;
    if ((s = jstr(pp, "intensity")) && ms_norm_parse(s, &c->intensity)) BAD("%s: preprocess.intensity", path);
    if (jnum(pp, "p_lo", &v)) c->p_lo = v;
    if (jnum(pp, "p_hi", &v)) c->p_hi = v;
#undef BAD
leave:
    cJSON_Delete(o);
    return rc;
}

/* ---- save / load --------------------------------------------------------------------------------------------- */

ms_status ms_ft_model_save(const ms_ft_model *m, const char *dir, const char *extra_json)
{
    char path[MS_PATH_MAX];
    ms_state_dict sd;
    ms_sd_init(&sd);
    ms_status rc = ms_params_to_sd(&m->sam.ps, &sd);
    if (!rc) rc = ms_path_join(path, dir, "model.safetensors");
    if (!rc) rc = ms_sd_save(path, &sd);
    ms_sd_free(&sd);
    if (!rc) rc = ms_path_join(path, dir, "meta.json");
    if (!rc) rc = ms_ft_meta_write(path, &m->cfg, extra_json);
    return rc;
}

static int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* path itself when it holds meta.json, else path/best when that does, into dir[MS_PATH_MAX]; 0 = neither (a path too
 * long to join names no file either). */
static int resolve(const char *path, char *dir)
{
    char p[MS_PATH_MAX];
    if (ms_path_join(p, path, "meta.json") == MS_OK && file_exists(p)) return ms_path_fmt(dir, "%s", path) == MS_OK;
    if (ms_path_join(p, path, "best/meta.json") == MS_OK && file_exists(p))
        return ms_path_join(dir, path, "best") == MS_OK;
    return 0;
}

int ms_ft_is_checkpoint(const char *path)
{
    char d[MS_PATH_MAX];
    return resolve(path, d);
}

ms_status ms_ft_model_load(ms_ft_model *m, const char *path, ms_device *dev)
{
    char dir[MS_PATH_MAX], p[MS_PATH_MAX];
    memset(m, 0, sizeof *m);
    MS_FAIL_IF(!resolve(path, dir), MS_ENOTFOUND, "%s: not a finetune checkpoint (no meta.json here or in best/)",
               path);
    ms_ft_config cfg;
    MS_TRY(ms_path_join(p, dir, "meta.json"));
    MS_TRY(ms_ft_meta_read(p, &cfg));
    MS_TRY(ms_path_join(p, dir, "model.safetensors"));
    ms_state_dict sd;
    ms_sd_init(&sd);
    ms_status rc = ms_sd_load(p, &sd);
    if (!rc) {
        rc = build(m, &cfg, &sd, 0, dev, 1);
        if (rc) ms_error_prefix("%s", dir);
    }
    ms_sd_free(&sd);
    return rc;
}
