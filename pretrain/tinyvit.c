/* pretrain/tinyvit.c — MobileSAM's TinyViT image encoder: forward and backward, BatchNorm in inference or training
 * mode, finetune-SAM's LoRA and adapters (contract: tinyvit.h).
 * ref: ChaoningZhang/MobileSAM mobile_sam/modeling/tiny_vit_sam.py (Conv2d_BN, PatchEmbed, MBConv, PatchMerging,
 * Attention, TinyViTBlock, TinyViT.forward_features, TinyViT._init_weights) and build_sam.py (build_sam_vit_t);
 * mazurowski-lab/finetune-SAM models/sam_LoRa.py (_LoRA_qkv), models/sam/modeling/tiny_vit_sam.py (TinyViTBlock's
 * adapters), models/sam/modeling/common.py (Adapter).
 */
#include "pretrain/tinyvit.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "ops.h"

#define TV_BN_EPS 1e-5f   /* torch.nn.BatchNorm2d default */
#define TV_LN_EPS 1e-5f   /* torch.nn.LayerNorm default (attn.norm, mlp.norm) */
#define TV_LN2D_EPS 1e-6f /* the neck's LayerNorm2d */

/* ------------------------------------------------------------------------------------------------ config */

ms_status ms_tinyvit_config_named(const char *name, ms_tinyvit_config *c)
{
    memset(c, 0, sizeof *c);
    static const int t_dims[4] = {64, 128, 160, 320}, t_depths[4] = {2, 2, 6, 2}, t_heads[4] = {2, 4, 5, 10};
    static const int s_dims[4] = {32, 64, 80, 320}, s_depths[4] = {1, 2, 2, 1}, s_heads[4] = {1, 2, 5, 10};
    const int *dims, *depths, *heads;
    if (!strcmp(name, "vit_t")) {
        dims = t_dims; depths = t_depths; heads = t_heads;
        c->img_size = 1024;
        c->num_classes = 1000;
    } else if (!strcmp(name, "vit_t_test")) {
        dims = s_dims; depths = s_depths; heads = s_heads;
        c->img_size = 256;
        c->num_classes = 10;
    } else
        MS_FAIL(MS_EINVAL, "%s: unknown TinyViT model (vit_t, vit_t_test)", name);
    static const int windows[4] = {7, 7, 14, 7};
    for (int i = 0; i < 4; i++) {
        c->dims[i] = dims[i];
        c->depths[i] = depths[i];
        c->heads[i] = heads[i];
        c->windows[i] = windows[i];
    }
    c->in_chans = 3;
    c->mlp_ratio = 4;
    c->mbconv_expand = 4;
    c->local_conv = 3;
    c->merge_stride[0] = c->merge_stride[1] = 2;
    c->merge_stride[2] = 1;
    c->out_chans = 256;
    return ms_tinyvit_config_check(c);
}

int ms_tinyvit_grid(const ms_tinyvit_config *c, int i)
{
    int g = c->img_size / 4;
    for (int k = 0; k < i && k < 3; k++) g = (int)ms_conv_out_size(g, 3, 1, c->merge_stride[k]);
    return g;
}

ms_status ms_tinyvit_config_check(const ms_tinyvit_config *c)
{
    MS_FAIL_IF(c->img_size <= 0 || c->img_size % 16, MS_EINVAL,
               "TinyViT: input size %d is not a positive multiple of 16", c->img_size);
    MS_FAIL_IF(c->in_chans <= 0 || c->out_chans <= 0 || c->mlp_ratio <= 0 || c->mbconv_expand <= 0 ||
                   c->local_conv <= 0 || c->local_conv % 2 == 0 || c->num_classes < 0,
               MS_EINVAL, "TinyViT: bad channel counts, ratios or local conv size");
    MS_FAIL_IF(c->dims[0] % 2, MS_EINVAL, "TinyViT: dims[0] = %d must be even (the stem's first conv has dims[0]/2)",
               c->dims[0]);
    for (int i = 0; i < 4; i++) {
        MS_FAIL_IF(c->dims[i] <= 0 || c->depths[i] < 0 || c->depths[i] > MS_TINYVIT_MAX_DEPTH, MS_EINVAL,
                   "TinyViT: layer %d: dim %d, depth %d (at most %d)", i, c->dims[i], c->depths[i],
                   MS_TINYVIT_MAX_DEPTH);
        if (i == 0) continue;
        MS_FAIL_IF(c->heads[i] <= 0 || c->dims[i] % c->heads[i] || c->windows[i] <= 0, MS_EINVAL,
                   "TinyViT: layer %d: %d heads do not divide dim %d, or window %d", i, c->heads[i], c->dims[i],
                   c->windows[i]);
    }
    /* MobileSAM's layers assume an exact halving at each stride-2 merging (input_resolution = S/4 / 2^i) */
    int g = c->img_size / 4;
    for (int k = 0; k < 3; k++) {
        MS_FAIL_IF(c->merge_stride[k] != 1 && c->merge_stride[k] != 2, MS_EINVAL, "TinyViT: merge stride %d",
                   c->merge_stride[k]);
        MS_FAIL_IF(g % c->merge_stride[k], MS_EINVAL, "TinyViT: grid %d does not divide by stride %d", g,
                   c->merge_stride[k]);
        g /= c->merge_stride[k];
    }
    return MS_OK;
}

/* ------------------------------------------------------------------------------------------------ params */

typedef struct tv_reg {
    ms_params *ps;
    const char *prefix;
    int bad;
} tv_reg;

static int tv_add(tv_reg *r, int no_decay, int ndim, const int64_t *shape, const char *fmt, ...) MS_PRINTF(5, 6);
static int tv_add(tv_reg *r, int no_decay, int ndim, const int64_t *shape, const char *fmt, ...)
{
    char key[MS_PARAM_NAME_MAX], name[MS_PARAM_NAME_MAX + 64];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(key, sizeof key, fmt, ap);
    va_end(ap);
    snprintf(name, sizeof name, "%s%s", r->prefix, key);
    int i = ms_params_add(r->ps, name, shape, ndim, no_decay);
    if (i < 0) r->bad = 1;
    return i;
}

static int tv_add1(tv_reg *r, int no_decay, int64_t n, const char *key, const char *leaf)
{
    int64_t s[1] = {n};
    return tv_add(r, no_decay, 1, s, "%s%s", key, leaf);
}

/* Conv2d_BN under `key` ("layers.0.blocks.1.conv2."): c.weight (cout, cin/groups, ks, ks), bn.{weight, bias,
 * running_mean, running_var}. The running statistics are buffers, registered as floats (no decay). */
static void tv_add_cbn(tv_reg *r, ms_tinyvit_cbn *u, const char *key, int cin, int cout, int ks, int groups)
{
    int64_t s[4] = {cout, cin / groups, ks, ks};
    u->w = tv_add(r, 0, 4, s, "%sc.weight", key);
    u->g = tv_add1(r, 1, cout, key, "bn.weight");
    u->b = tv_add1(r, 1, cout, key, "bn.bias");
    u->mean = tv_add1(r, 1, cout, key, "bn.running_mean");
    u->var = tv_add1(r, 1, cout, key, "bn.running_var");
    if (u->mean >= 0 && u->var >= 0) { /* buffers: never trained, whatever the method marks */
        r->ps->p[u->mean].buffer = r->ps->p[u->var].buffer = 1;
        r->ps->p[u->mean].trainable = r->ps->p[u->var].trainable = 0;
    }
}

static void tv_add_block(tv_reg *r, ms_tinyvit_block *b, const char *key, int C, int heads, int ws, int hidden, int lc)
{
    char k[MS_PARAM_NAME_MAX];
    int64_t s2[2] = {heads, (int64_t)ws * ws}; /* one bias per distinct (|Δy|, |Δx|) of a ws×ws window */
    b->ab = tv_add(r, 1, 2, s2, "%sattn.attention_biases", key);
    snprintf(k, sizeof k, "%sattn.", key);
    b->norm_w = tv_add1(r, 1, C, k, "norm.weight");
    b->norm_b = tv_add1(r, 1, C, k, "norm.bias");
    int64_t sq[2] = {3 * (int64_t)C, C}, sp[2] = {C, C}, s1[2] = {hidden, C}, sf[2] = {C, hidden};
    b->qkv_w = tv_add(r, 0, 2, sq, "%sqkv.weight", k);
    b->qkv_b = tv_add1(r, 1, 3 * (int64_t)C, k, "qkv.bias");
    b->proj_w = tv_add(r, 0, 2, sp, "%sproj.weight", k);
    b->proj_b = tv_add1(r, 1, C, k, "proj.bias");
    snprintf(k, sizeof k, "%smlp.", key);
    b->mnorm_w = tv_add1(r, 1, C, k, "norm.weight");
    b->mnorm_b = tv_add1(r, 1, C, k, "norm.bias");
    b->fc1_w = tv_add(r, 0, 2, s1, "%sfc1.weight", k);
    b->fc1_b = tv_add1(r, 1, hidden, k, "fc1.bias");
    b->fc2_w = tv_add(r, 0, 2, sf, "%sfc2.weight", k);
    b->fc2_b = tv_add1(r, 1, C, k, "fc2.bias");
    snprintf(k, sizeof k, "%slocal_conv.", key);
    tv_add_cbn(r, &b->local, k, C, C, lc, C);
    b->lora_aq = b->lora_bq = b->lora_av = b->lora_bv = -1; /* PEFT: ms_tinyvit_add_peft */
    b->sa_w1 = b->sa_b1 = b->sa_w2 = b->sa_b2 = b->ma_w1 = b->ma_b1 = b->ma_w2 = b->ma_b2 = -1;
}

/* Registration follows MobileSAM's state_dict() order: patch_embed, layers (blocks, downsample), norm_head, head,
 * neck. */
ms_status ms_tinyvit_init(ms_tinyvit *tv, const ms_tinyvit_config *cfg, ms_params *ps, const char *prefix)
{
    memset(tv, 0, sizeof *tv);
    MS_TRY(ms_tinyvit_config_check(cfg));
    MS_FAIL_IF(ps->data, MS_EBADSTATE, "TinyViT: parameters already allocated");
    MS_FAIL_IF(strlen(prefix) >= sizeof tv->prefix, MS_EINVAL, "%s: prefix too long", prefix);
    tv->cfg = *cfg;
    tv->ps = ps;
    snprintf(tv->prefix, sizeof tv->prefix, "%s", prefix);
    const ms_tinyvit_config *c = cfg;
    tv_reg r = {ps, prefix, 0};
    char k[96];
    tv_add_cbn(&r, &tv->stem[0], "patch_embed.seq.0.", c->in_chans, c->dims[0] / 2, 3, 1);
    tv_add_cbn(&r, &tv->stem[1], "patch_embed.seq.2.", c->dims[0] / 2, c->dims[0], 3, 1);
    for (int i = 0; i < 4; i++) {
        int C = c->dims[i];
        for (int j = 0; j < c->depths[i]; j++) {
            if (i == 0) {
                int hid = C * c->mbconv_expand;
                snprintf(k, sizeof k, "layers.0.blocks.%d.conv1.", j);
                tv_add_cbn(&r, &tv->mb[j][0], k, C, hid, 1, 1);
                snprintf(k, sizeof k, "layers.0.blocks.%d.conv2.", j);
                tv_add_cbn(&r, &tv->mb[j][1], k, hid, hid, 3, hid);
                snprintf(k, sizeof k, "layers.0.blocks.%d.conv3.", j);
                tv_add_cbn(&r, &tv->mb[j][2], k, hid, C, 1, 1);
            } else {
                snprintf(k, sizeof k, "layers.%d.blocks.%d.", i, j);
                tv_add_block(&r, &tv->blk[i][j], k, C, c->heads[i], c->windows[i], C * c->mlp_ratio, c->local_conv);
            }
        }
        if (i < 3) {
            int O = c->dims[i + 1];
            snprintf(k, sizeof k, "layers.%d.downsample.conv1.", i);
            tv_add_cbn(&r, &tv->merge[i][0], k, C, O, 1, 1);
            snprintf(k, sizeof k, "layers.%d.downsample.conv2.", i);
            tv_add_cbn(&r, &tv->merge[i][1], k, O, O, 3, O);
            snprintf(k, sizeof k, "layers.%d.downsample.conv3.", i);
            tv_add_cbn(&r, &tv->merge[i][2], k, O, O, 1, 1);
        }
    }
    int C3 = c->dims[3], O = c->out_chans;
    tv->head_norm_w = tv_add1(&r, 1, C3, "norm_head.", "weight");
    tv->head_norm_b = tv_add1(&r, 1, C3, "norm_head.", "bias");
    if (c->num_classes > 0) { /* else upstream's head is an Identity */
        int64_t sh[2] = {c->num_classes, C3};
        tv->head_w = tv_add(&r, 0, 2, sh, "head.weight");
        tv->head_b = tv_add1(&r, 1, c->num_classes, "head.", "bias");
    } else tv->head_w = tv->head_b = -1;
    int64_t s0[4] = {O, C3, 1, 1}, s2[4] = {O, O, 3, 3};
    tv->neck0_w = tv_add(&r, 0, 4, s0, "neck.0.weight");
    tv->neck1_w = tv_add1(&r, 1, O, "neck.1.", "weight");
    tv->neck1_b = tv_add1(&r, 1, O, "neck.1.", "bias");
    tv->neck2_w = tv_add(&r, 0, 4, s2, "neck.2.weight");
    tv->neck3_w = tv_add1(&r, 1, O, "neck.3.", "weight");
    tv->neck3_b = tv_add1(&r, 1, O, "neck.3.", "bias");
    return r.bad ? MS_EINVAL : MS_OK;
}

int64_t ms_tinyvit_numel(const ms_tinyvit *tv)
{
    size_t np = strlen(tv->prefix);
    int64_t n = 0;
    for (int i = 0; i < tv->ps->n; i++)
        if (!strncmp(tv->ps->p[i].name, tv->prefix, np)) n += tv->ps->p[i].numel;
    return n;
}

/* A num_batches_tracked key that belongs to a registered BatchNorm (integer scalar): MobileSAM files have one per
 * BatchNorm; inference never reads it. */
static int tv_is_bn_counter(const ms_tinyvit *tv, const ms_sd_entry *e)
{
    static const char leaf[] = "num_batches_tracked";
    size_t n = strlen(e->name), nl = sizeof leaf - 1;
    if (n <= nl || strcmp(e->name + n - nl, leaf)) return 0;
    char mean[MS_PARAM_NAME_MAX + 32];
    if (n - nl + 13 >= sizeof mean) return 0;
    snprintf(mean, sizeof mean, "%.*srunning_mean", (int)(n - nl), e->name);
    int integer = e->t.dtype == MS_DTYPE_I64 || e->t.dtype == MS_DTYPE_I32;
    return integer && ms_tensor_numel(&e->t) == 1 && e->t.ndim <= 1 && ms_params_find(tv->ps, mean) >= 0;
}

ms_status ms_tinyvit_load(ms_tinyvit *tv, const ms_state_dict *sd)
{
    /* without the BatchNorm counters, ms_params_load reports missing, mis-shaped and unknown keys, one line each,
     * and loads nothing on any error */
    ms_state_dict f;
    int64_t batches;
    MS_TRY(ms_tinyvit_sd_view(tv, sd, &f, &batches));
    ms_status rc = ms_params_load(tv->ps, &f, tv->prefix);
    free(f.e);
    if (!rc) tv->bn_batches = batches;
    return rc;
}

ms_status ms_tinyvit_sd_view(const ms_tinyvit *tv, const ms_state_dict *sd, ms_state_dict *view, int64_t *batches)
{
    memset(view, 0, sizeof *view);
    view->e = malloc((size_t)(sd->n ? sd->n : 1) * sizeof *view->e);
    MS_FAIL_IF(!view->e, MS_ENOMEM, "out of memory");
    view->meta_json = sd->meta_json;
    *batches = 0; /* every BatchNorm of a model counts the same training batches: keep the largest */
    for (int i = 0; i < sd->n; i++) {
        const ms_sd_entry *e = &sd->e[i];
        if (!tv_is_bn_counter(tv, e)) { view->e[view->n++] = *e; continue; }
        int64_t v = e->t.dtype == MS_DTYPE_I64 ? *(const int64_t *)e->t.data : *(const int32_t *)e->t.data;
        if (v > *batches) *batches = v;
    }
    view->cap = view->n;
    return MS_OK;
}

/* ------------------------------------------------------------------------------------------------ activations */

/* What one Conv2d_BN keeps: c = conv(x), y = BN(c), a = GELU(y) (when followed by GELU), the BatchNorm statistics
 * the forward used. Forward only: c, y and a share one buffer (in place), statistics NULL in inference mode. */
typedef struct tv_cbn_act { float *c, *y, *a, *mean, *rstd; } tv_cbn_act;
typedef struct tv_mb_act { tv_cbn_act u[3]; float *s, *out; } tv_mb_act; /* out = GELU(s), s = x + BN(conv3) */
typedef struct tv_merge_act { float *in; tv_cbn_act u[3]; } tv_merge_act; /* in: the merging's NCHW input */
typedef struct tv_blk_act {
    const float *in;                        /* the block's input tokens (not owned) */
    float *xw, *lnw, *mean1, *rstd1, *qkv, *pr, *att; /* attention on windows */
    float *t1;                              /* x + attention, NCHW: the local conv's input */
    tv_cbn_act local;                       /* its output y is NCHW */
    float *tok2, *ln2, *mean2, *rstd2, *h, *hg, *out; /* MLP on tokens */
    float *tq, *tv;                         /* LoRA: LN(x)·A_qᵀ, LN(x)·A_vᵀ (window rows, rank) */
    float *sa_in, *sa_h, *sa_g, *ma_h, *ma_g; /* adapters: Space's input (the attention output), hidden pre/post GELU */
} tv_blk_act;
typedef struct tv_neck_act { float *t, *n0, *n1, *n2, *m1, *r1, *m2, *r2; } tv_neck_act;

typedef struct tv_priv {
    int32_t *idx[4];      /* layers 1..3: bias index |Δy|·ws + |Δx| of every (query, key) slot pair, N×N */
    float *stem, *out[4]; /* kept: ms_tinyvit_stage */
    float *ca, *cb, *cc;  /* NCHW scratch (stem, MBConv, mergings, neck) */
    float *tok;           /* tokens of the layer being run (B·H·W, C) */
    float *xw, *lnw, *att, *prj; /* windows (B·nW·N, C); also (B,C,H,W) scratch for the local conv */
    float *qkv;           /* (B·nW·N, 3C) */
    float *sc, *pr;       /* scores and probabilities (B·nW, heads, N, N) */
    float *hid;           /* MLP hidden (B·H·W, ratio·C) */
    float *mean, *rstd;   /* LayerNorm statistics (rows); BatchNorm's (channels) in training without backward */
    float *biasT, *abT, *ab; /* the bias table expanded to (heads, N, N) */
    float *ado;           /* PEFT: an adapter's output (B·H·W, C) */
    /* what each unit of the forward reads and writes: shared scratch without backward, its own with */
    tv_cbn_act stem_a[2];
    tv_mb_act mb[MS_TINYVIT_MAX_DEPTH];
    tv_merge_act mg[3];
    tv_blk_act blk[4][MS_TINYVIT_MAX_DEPTH];
    tv_neck_act neck;
    /* backward only */
    float *x;             /* copy of the input (the stem's first conv weight gradient) */
    float *g[4];          /* gradient scratch, each the largest activation */
    float *dh0, *dh1, *dqkv, *dP, *dS, *dab, *dabT, *dbT;
    float *dtq, *dsa0, *dsa1; /* PEFT: LoRA's rank-space gradient, the adapters' hidden ones */
    int fwd_train;        /* BatchNorm mode of the last forward (its backward must match) */
} tv_priv;

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

void ms_tinyvit_free(ms_tinyvit *tv)
{
    ms_arena_free(&tv->arena);
    free(tv->priv);
    tv->priv = NULL;
}

/* The largest sizes over all layers, for batch B. */
typedef struct tv_sizes { int64_t nchw, tok, win, qkv, sc, hid, rows, tab, lora, ad; } tv_sizes;

static int tv_has_lora(const ms_tinyvit *tv, int i)
{
    return tv->peft.lora_rank > 0 && (tv->peft.lora_layers >> i & 1);
}
static int tv_has_adapter(const ms_tinyvit *tv, int i) { return (tv->peft.adapter_layers >> i & 1) != 0; }

static tv_sizes tv_sizes_of(const ms_tinyvit *tv, int64_t B)
{
    const ms_tinyvit_config *c = &tv->cfg;
    int64_t S = c->img_size, g0 = ms_tinyvit_grid(c, 0), C0 = c->dims[0];
    tv_sizes z = {0};
    z.nchw = max64(B * (C0 / 2) * (S / 2) * (S / 2), B * C0 * c->mbconv_expand * g0 * g0);
    for (int i = 0; i < 4; i++) {
        int64_t g = ms_tinyvit_grid(c, i), C = c->dims[i];
        if (i < 3) { /* merging: conv1 at the input grid, conv2/conv3 at the output grid */
            int64_t go = ms_tinyvit_grid(c, i + 1), O = c->dims[i + 1];
            z.nchw = max64(z.nchw, max64(B * O * g * g, B * max64(C, O) * g * g));
            z.tok = max64(z.tok, B * O * go * go);
        }
        if (i == 0) continue;
        int64_t ws = c->windows[i], nw = (g + ws - 1) / ws, N = ws * ws, Bw = B * nw * nw;
        z.tok = max64(z.tok, B * g * g * C);
        z.win = max64(z.win, Bw * N * C);
        z.qkv = max64(z.qkv, Bw * N * 3 * C);
        z.sc = max64(z.sc, Bw * c->heads[i] * N * N);
        z.hid = max64(z.hid, B * g * g * C * c->mlp_ratio);
        z.rows = max64(z.rows, Bw * N);
        z.tab = max64(z.tab, c->heads[i] * N * N);
        if (tv_has_lora(tv, i)) z.lora = max64(z.lora, Bw * N * tv->peft.lora_rank);
        if (tv_has_adapter(tv, i)) z.ad = max64(z.ad, B * g * g * (C / 4));
    }
    int64_t g4 = ms_tinyvit_grid(c, 4);
    z.nchw = max64(z.nchw, B * max64(c->out_chans, c->dims[3]) * g4 * g4);
    z.rows = max64(z.rows, B * g4 * g4);
    /* BatchNorm statistics in training mode without backward use the LayerNorm rows (channels ≤ rows in practice) */
    z.rows = max64(z.rows, max64((int64_t)C0 * c->mbconv_expand, c->dims[3]));
    for (int i = 0; i < 4; i++) z.rows = max64(z.rows, c->dims[i]);
    return z;
}

/* The shared buffers of the forward (both modes). */
static void tv_plan(const ms_tinyvit *tv, tv_priv *p, ms_plan *pl, int64_t B, const tv_sizes *z, int wb)
{
    const ms_tinyvit_config *c = &tv->cfg;
    int64_t g0 = ms_tinyvit_grid(c, 0), C0 = c->dims[0];
    ms_plan_add_f32(pl, &p->stem, B * C0 * g0 * g0);
    for (int i = 0; i < 4; i++) {
        int64_t go = ms_tinyvit_grid(c, i < 3 ? i + 1 : 3);
        ms_plan_add_f32(pl, &p->out[i], B * go * go * c->dims[i < 3 ? i + 1 : 3]);
        if (i) ms_plan_add_i32(pl, &p->idx[i], (int64_t)c->windows[i] * c->windows[i] * c->windows[i] * c->windows[i]);
    }
    /* with backward the units write into their own buffers (tv_plan_backward): these shared ones are not needed */
    float **scratch[] = {&p->ca, &p->cb, &p->cc};
    for (int i = 0; i < 3 && !wb; i++) ms_plan_add_f32(pl, scratch[i], z->nchw);
    ms_plan_add_f32(pl, &p->tok, z->tok);
    float **w[] = {&p->xw, &p->lnw, &p->att, &p->prj};
    for (int i = 0; i < 4; i++)
        if (!wb || w[i] == &p->xw || w[i] == &p->prj) ms_plan_add_f32(pl, w[i], z->win);
    if (!wb) {
        ms_plan_add_f32(pl, &p->qkv, z->qkv);
        ms_plan_add_f32(pl, &p->sc, z->sc);
        ms_plan_add_f32(pl, &p->pr, z->sc);
        ms_plan_add_f32(pl, &p->hid, z->hid);
        ms_plan_add_f32(pl, &p->mean, z->rows);
        ms_plan_add_f32(pl, &p->rstd, z->rows);
    } else ms_plan_add_f32(pl, &p->sc, z->sc);
    ms_plan_add_f32(pl, &p->biasT, z->tab);
    ms_plan_add_f32(pl, &p->abT, z->tab);
    ms_plan_add_f32(pl, &p->ab, z->tab);
    if (z->ad) ms_plan_add_f32(pl, &p->ado, z->tok); /* PEFT buffers only with PEFT: the base plan is unchanged */
}

/* Without backward every unit runs in the shared scratch, in place, as the forward always has. The BatchNorm
 * statistics pointers are set per forward (tv_bn_stats_shared). */
static void tv_acts_shared(const ms_tinyvit *tv, tv_priv *p)
{
    const ms_tinyvit_config *c = &tv->cfg;
    tv_cbn_act cb = {p->cb, p->cb, p->cb, NULL, NULL}, cc = {p->cc, p->cc, p->cc, NULL, NULL};
    p->stem_a[0] = cb;
    p->stem_a[1] = (tv_cbn_act){p->stem, p->stem, p->stem, NULL, NULL};
    for (int j = 0; j < c->depths[0]; j++) {
        tv_mb_act *m = &p->mb[j];
        m->u[0] = cb; m->u[1] = cc; m->u[2] = cb;
        m->s = m->out = p->ca;
    }
    for (int i = 0; i < 3; i++) {
        p->mg[i].in = p->ca;
        p->mg[i].u[0] = cb; p->mg[i].u[1] = cc; p->mg[i].u[2] = cb;
    }
    for (int i = 1; i < 4; i++)
        for (int j = 0; j < c->depths[i]; j++) {
            tv_blk_act *a = &p->blk[i][j];
            a->xw = p->xw; a->lnw = p->lnw; a->mean1 = p->mean; a->rstd1 = p->rstd;
            a->qkv = p->qkv; a->pr = p->pr; a->att = p->att;
            a->t1 = p->xw;
            a->local = (tv_cbn_act){p->lnw, p->lnw, p->lnw, NULL, NULL};
            a->tok2 = p->tok; a->ln2 = p->lnw; a->mean2 = p->mean; a->rstd2 = p->rstd;
            a->h = a->hg = p->hid; a->out = p->tok;
        }
    p->neck = (tv_neck_act){p->ca, p->cb, p->ca, p->cb, p->mean, p->rstd, p->mean, p->rstd};
}

/* PEFT scratch without backward: one set shared by every block (the Space adapter reads the attention output in
 * p->xw; the two adapters run one after the other). */
static void tv_plan_peft_shared(const ms_tinyvit *tv, tv_priv *p, ms_plan *pl, const tv_sizes *z)
{
    if (!z->lora && !z->ad) return;
    tv_blk_act *a0 = &p->blk[1][0];
    if (z->lora) {
        ms_plan_add_f32(pl, &a0->tq, z->lora);
        ms_plan_add_f32(pl, &a0->tv, z->lora);
    }
    if (z->ad) {
        ms_plan_add_f32(pl, &a0->sa_h, z->ad);
        ms_plan_add_f32(pl, &a0->sa_g, z->ad);
    }
    (void)tv;
}

static void tv_peft_shared(const ms_tinyvit *tv, tv_priv *p)
{
    const tv_blk_act *a0 = &p->blk[1][0];
    float *tq = a0->tq, *tvv = a0->tv, *h = a0->sa_h, *gg = a0->sa_g;
    for (int i = 1; i < 4; i++)
        for (int j = 0; j < tv->cfg.depths[i]; j++) {
            tv_blk_act *a = &p->blk[i][j];
            a->tq = tq; a->tv = tvv;
            a->sa_in = p->xw; a->sa_h = a->ma_h = h; a->sa_g = a->ma_g = gg;
        }
}

/* Training-mode BatchNorm needs somewhere to put its statistics even without backward. */
static void tv_bn_stats_shared(const ms_tinyvit *tv, tv_priv *p, int train)
{
    float *m = train ? p->mean : NULL, *r = train ? p->rstd : NULL;
    tv_cbn_act *all[2 + 3 * MS_TINYVIT_MAX_DEPTH + 9 + 4 * MS_TINYVIT_MAX_DEPTH];
    int n = 0;
    all[n++] = &p->stem_a[0];
    all[n++] = &p->stem_a[1];
    for (int j = 0; j < tv->cfg.depths[0]; j++) for (int k = 0; k < 3; k++) all[n++] = &p->mb[j].u[k];
    for (int i = 0; i < 3; i++) for (int k = 0; k < 3; k++) all[n++] = &p->mg[i].u[k];
    for (int i = 1; i < 4; i++) for (int j = 0; j < tv->cfg.depths[i]; j++) all[n++] = &p->blk[i][j].local;
    for (int k = 0; k < n; k++) { all[k]->mean = m; all[k]->rstd = r; }
}

/* A Conv2d_BN's own buffers: conv output (B,Cout,Ho,Ho), BN output, GELU output when act, statistics. */
static void tv_plan_cbn(ms_plan *pl, tv_cbn_act *a, int64_t n, int64_t C, int act)
{
    ms_plan_add_f32(pl, &a->c, n);
    ms_plan_add_f32(pl, &a->y, n);
    if (act) ms_plan_add_f32(pl, &a->a, n);
    ms_plan_add_f32(pl, &a->mean, C);
    ms_plan_add_f32(pl, &a->rstd, C);
}

/* With backward: every activation the backward reads gets its own buffer, plus the gradient scratch. */
static void tv_plan_backward(const ms_tinyvit *tv, tv_priv *p, ms_plan *pl, int64_t B, const tv_sizes *z)
{
    const ms_tinyvit_config *c = &tv->cfg;
    int64_t S = c->img_size, C0 = c->dims[0], g0 = ms_tinyvit_grid(c, 0), E = c->mbconv_expand;
    ms_plan_add_f32(pl, &p->x, B * c->in_chans * S * S);
    tv_plan_cbn(pl, &p->stem_a[0], B * (C0 / 2) * (S / 2) * (S / 2), C0 / 2, 1);
    tv_plan_cbn(pl, &p->stem_a[1], B * C0 * g0 * g0, C0, 0);
    for (int j = 0; j < c->depths[0]; j++) {
        tv_mb_act *m = &p->mb[j];
        int64_t n = B * C0 * g0 * g0;
        tv_plan_cbn(pl, &m->u[0], n * E, C0 * E, 1);
        tv_plan_cbn(pl, &m->u[1], n * E, C0 * E, 1);
        tv_plan_cbn(pl, &m->u[2], n, C0, 0);
        ms_plan_add_f32(pl, &m->s, n);
        ms_plan_add_f32(pl, &m->out, n);
    }
    for (int i = 0; i < 3; i++) {
        int64_t g = ms_tinyvit_grid(c, i), go = ms_tinyvit_grid(c, i + 1), C = c->dims[i], O = c->dims[i + 1];
        if (i) ms_plan_add_f32(pl, &p->mg[i].in, B * C * g * g); /* layer 0 merges the MBConv output itself */
        tv_plan_cbn(pl, &p->mg[i].u[0], B * O * g * g, O, 1);
        tv_plan_cbn(pl, &p->mg[i].u[1], B * O * go * go, O, 1);
        tv_plan_cbn(pl, &p->mg[i].u[2], B * O * go * go, O, 0);
    }
    for (int i = 1; i < 4; i++) {
        int64_t g = ms_tinyvit_grid(c, i), C = c->dims[i], M = B * g * g, ws = c->windows[i], nw = (g + ws - 1) / ws;
        int64_t R = B * nw * nw * ws * ws, H = C * c->mlp_ratio;
        for (int j = 0; j < c->depths[i]; j++) {
            tv_blk_act *a = &p->blk[i][j];
            ms_plan_add_f32(pl, &a->xw, R * C);
            ms_plan_add_f32(pl, &a->lnw, R * C);
            ms_plan_add_f32(pl, &a->mean1, R);
            ms_plan_add_f32(pl, &a->rstd1, R);
            ms_plan_add_f32(pl, &a->qkv, R * 3 * C);
            ms_plan_add_f32(pl, &a->pr, (R / (ws * ws)) * c->heads[i] * ws * ws * ws * ws);
            ms_plan_add_f32(pl, &a->att, R * C);
            ms_plan_add_f32(pl, &a->t1, M * C);
            ms_plan_add_f32(pl, &a->local.c, M * C);
            ms_plan_add_f32(pl, &a->local.y, M * C);
            ms_plan_add_f32(pl, &a->local.mean, C);
            ms_plan_add_f32(pl, &a->local.rstd, C);
            ms_plan_add_f32(pl, &a->tok2, M * C);
            ms_plan_add_f32(pl, &a->ln2, M * C);
            ms_plan_add_f32(pl, &a->mean2, M);
            ms_plan_add_f32(pl, &a->rstd2, M);
            ms_plan_add_f32(pl, &a->h, M * H);
            ms_plan_add_f32(pl, &a->hg, M * H);
            ms_plan_add_f32(pl, &a->out, M * C);
            if (tv_has_lora(tv, i)) {
                ms_plan_add_f32(pl, &a->tq, R * tv->peft.lora_rank);
                ms_plan_add_f32(pl, &a->tv, R * tv->peft.lora_rank);
            }
            if (tv_has_adapter(tv, i)) {
                float **ad[] = {&a->sa_h, &a->sa_g, &a->ma_h, &a->ma_g};
                ms_plan_add_f32(pl, &a->sa_in, M * C);
                for (int k = 0; k < 4; k++) ms_plan_add_f32(pl, ad[k], M * (C / 4));
            }
        }
    }
    int64_t g4 = ms_tinyvit_grid(c, 4), L = g4 * g4, O = c->out_chans;
    tv_neck_act *k = &p->neck;
    ms_plan_add_f32(pl, &k->t, B * c->dims[3] * L);
    float **nb[] = {&k->n0, &k->n1, &k->n2};
    for (int i = 0; i < 3; i++) ms_plan_add_f32(pl, nb[i], B * O * L);
    float **st[] = {&k->m1, &k->r1, &k->m2, &k->r2};
    for (int i = 0; i < 4; i++) ms_plan_add_f32(pl, st[i], B * L);
    int64_t big = max64(z->nchw, max64(z->tok, z->win));
    for (int i = 0; i < 4; i++) ms_plan_add_f32(pl, &p->g[i], big);
    ms_plan_add_f32(pl, &p->dh0, z->hid);
    ms_plan_add_f32(pl, &p->dh1, z->hid);
    ms_plan_add_f32(pl, &p->dqkv, z->qkv);
    ms_plan_add_f32(pl, &p->dP, z->sc);
    ms_plan_add_f32(pl, &p->dS, z->sc);
    ms_plan_add_f32(pl, &p->dab, z->tab);
    ms_plan_add_f32(pl, &p->dabT, z->tab);
    ms_plan_add_f32(pl, &p->dbT, z->tab);
    if (z->lora) ms_plan_add_f32(pl, &p->dtq, z->lora);
    if (z->ad) {
        ms_plan_add_f32(pl, &p->dsa0, z->ad);
        ms_plan_add_f32(pl, &p->dsa1, z->ad);
    }
}

/* MobileSAM numbers the offsets (|Δy|, |Δx|) in first-seen order over (query, key) pairs in raster order; the
 * first query (0,0) already meets every offset in raster order, so offset (dy, dx) gets index dy·ws + dx. */
static ms_status tv_bias_index(ms_device *dev, int32_t *dst, int ws)
{
    int64_t N = (int64_t)ws * ws;
    int32_t *h = malloc((size_t)(N * N) * sizeof *h);
    MS_FAIL_IF(!h, MS_ENOMEM, "out of memory");
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < N; j++)
            h[i * N + j] = (int32_t)(labs((long)(i / ws - j / ws)) * ws + labs((long)(i % ws - j % ws)));
    ms_status rc = ms_dev_from_host(dev, dst, h, (size_t)(N * N) * sizeof *h);
    free(h);
    return rc;
}

ms_status ms_tinyvit_reserve(ms_tinyvit *tv, int max_batch, int with_backward)
{
    MS_FAIL_IF(!tv->ps || !tv->ps->data, MS_EBADSTATE, "TinyViT: parameters not allocated");
    MS_FAIL_IF(max_batch <= 0, MS_EINVAL, "TinyViT: batch %d", max_batch);
    ms_tinyvit_free(tv);
    tv_priv *p = calloc(1, sizeof *p);
    MS_FAIL_IF(!p, MS_ENOMEM, "out of memory");
    tv->priv = p;
    tv->dev = tv->ps->dev;
    tv->max_batch = max_batch;
    tv->batch = 0;
    tv->with_backward = with_backward != 0;
    ms_plan pl = {0};
    tv_sizes z = tv_sizes_of(tv, max_batch);
    tv_plan(tv, p, &pl, max_batch, &z, with_backward);
    if (with_backward) tv_plan_backward(tv, p, &pl, max_batch, &z);
    else tv_plan_peft_shared(tv, p, &pl, &z);
    ms_status rc = ms_plan_alloc(&pl, tv->dev, &tv->arena);
    ms_plan_free(&pl);
    if (!rc && !with_backward) {
        tv_acts_shared(tv, p);
        tv_peft_shared(tv, p);
    }
    for (int i = 1; i < 4 && !rc; i++) rc = tv_bias_index(tv->dev, p->idx[i], tv->cfg.windows[i]);
    if (rc) ms_tinyvit_free(tv);
    return rc;
}

/* ------------------------------------------------------------------------------------------------ forward */

static const float *tv_p(const ms_tinyvit *tv, int idx) { return ms_params_data(tv->ps, idx); }
static float *tv_g(const ms_tinyvit *tv, int idx) { return idx < 0 ? NULL : ms_params_grad(tv->ps, idx); }
static ms_status tv_zero(ms_tinyvit *tv, float *d, int64_t n)
{
    return ms_dev_zero(tv->dev, d, (size_t)n * sizeof(float));
}

/* Conv2d_BN: a->y = BN(a->c = conv(x)), then a->a = GELU(a->y) when act; groups = 1 or Cin (depthwise). BatchNorm
 * as tv->bn_train says: training normalises with the batch statistics and updates the running ones (momentum 0.1,
 * torch's default). Returns the unit's output. */
static ms_status tv_cbn(ms_tinyvit *tv, const ms_tinyvit_cbn *u, const tv_cbn_act *a, const float *x, int64_t B,
                        int64_t Cin, int64_t H, int64_t Cout, int ks, int stride, int depthwise, int act)
{
    ms_device *dev = tv->dev;
    int pad = ks / 2;
    if (depthwise) MS_TRY(ms_dwconv2d_forward(dev, a->c, x, tv_p(tv, u->w), NULL, B, Cin, H, H, ks, pad, stride));
    else MS_TRY(ms_conv2d_forward(dev, a->c, x, tv_p(tv, u->w), NULL, B, Cin, H, H, Cout, ks, pad, stride));
    int64_t Ho = ms_conv_out_size(H, ks, pad, stride);
    MS_TRY(ms_batchnorm_forward(dev, a->y, a->mean, a->rstd, a->c, tv_p(tv, u->g), tv_p(tv, u->b),
                                (float *)tv_p(tv, u->mean), (float *)tv_p(tv, u->var), B, Cout, Ho * Ho, TV_BN_EPS,
                                0.1f, tv->bn_train));
    return act ? ms_gelu_forward(dev, a->a, a->y, B * Cout * Ho * Ho) : MS_OK;
}

/* MBConv j on x (B,C,g,g): out = GELU(x + BN(conv3(GELU(BN(dw(GELU(BN(conv1(x))))))))). */
static ms_status tv_mbconv(ms_tinyvit *tv, int j, const float *x, int64_t B, int64_t C, int64_t g)
{
    tv_priv *p = tv->priv;
    const ms_tinyvit_cbn *u = tv->mb[j];
    tv_mb_act *m = &p->mb[j];
    int64_t hid = C * tv->cfg.mbconv_expand;
    MS_TRY(tv_cbn(tv, &u[0], &m->u[0], x, B, C, g, hid, 1, 1, 0, 1));
    MS_TRY(tv_cbn(tv, &u[1], &m->u[1], m->u[0].a, B, hid, g, hid, 3, 1, 1, 1));
    MS_TRY(tv_cbn(tv, &u[2], &m->u[2], m->u[1].a, B, hid, g, C, 1, 1, 0, 0));
    MS_TRY(ms_add_forward(tv->dev, m->s, x, m->u[2].y, B * C * g * g));
    return ms_gelu_forward(tv->dev, m->out, m->s, B * C * g * g);
}

/* PatchMerging i: x (B,C,g,g) → tokens (B, go·go, O) in out. */
static ms_status tv_merge(ms_tinyvit *tv, int i, const float *x, int64_t B, float *out)
{
    tv_priv *p = tv->priv;
    const ms_tinyvit_config *c = &tv->cfg;
    tv_merge_act *m = &p->mg[i];
    int64_t C = c->dims[i], O = c->dims[i + 1], g = ms_tinyvit_grid(c, i), go = ms_tinyvit_grid(c, i + 1);
    MS_TRY(tv_cbn(tv, &tv->merge[i][0], &m->u[0], x, B, C, g, O, 1, 1, 0, 1));
    MS_TRY(tv_cbn(tv, &tv->merge[i][1], &m->u[1], m->u[0].a, B, O, g, O, 3, c->merge_stride[i], 1, 1));
    MS_TRY(tv_cbn(tv, &tv->merge[i][2], &m->u[2], m->u[1].a, B, O, go, O, 1, 1, 0, 0));
    return ms_transpose_forward(tv->dev, out, m->u[2].y, B, O, go * go); /* x.flatten(2).transpose(1, 2) */
}

/* One GEMM per head over every window at once: q/k/v of head h sit side by side in qkv (row stride 3C).
 * Scores S_h = scale·q_h·k_hᵀ into (Bw, heads, N, N); or out_h = P_h·v_h into (Bw·N, C). */
static ms_matmul_desc tv_desc_scores(int64_t N, int64_t hd, int64_t C, int64_t nh, int64_t Bw)
{
    ms_matmul_desc d = ms_matmul_plain(N, N, hd);
    d.trans_b = 1;
    d.lda = d.ldb = 3 * C;
    d.ldc = N;
    d.batch = Bw;
    d.stride_a = d.stride_b = N * 3 * C;
    d.stride_c = nh * N * N;
    d.alpha = 1.0f / sqrtf((float)hd);
    return d;
}
static ms_matmul_desc tv_desc_pv(int64_t N, int64_t hd, int64_t C, int64_t nh, int64_t Bw)
{
    ms_matmul_desc d = ms_matmul_plain(N, hd, N);
    d.lda = N;
    d.ldb = 3 * C;
    d.ldc = C;
    d.batch = Bw;
    d.stride_a = nh * N * N;
    d.stride_b = N * 3 * C;
    d.stride_c = N * C;
    return d;
}

/* LoRA's delta into qkv, (Bw·N, rank)·Bᵀ added (beta 1) to n columns of qkv (row stride 3C). */
static ms_matmul_desc tv_desc_lora(int64_t R, int64_t n, int64_t r, int64_t C)
{
    ms_matmul_desc d = ms_matmul_plain(R, n, r);
    d.trans_b = 1;
    d.lda = d.ldb = r;
    d.ldc = 3 * C;
    d.beta = 1.0f;
    return d;
}

/* LoRA of block (i, j) (k = 0: q, 1: v), forward (qkv += (LN(x)·Aᵀ)·Bᵀ in the q or v columns) or backward (from
 * dqkv into A, B and dln). True q/v LoRA: the delta's head-major columns h·hd.. go to head h's q (or v) columns
 * h·3hd (+ 2hd); finetune-SAM's slicing: all C columns to [0, C) (q) or [2C, 3C) (v). */
static ms_status tv_lora(ms_tinyvit *tv, int i, int j, int k, int64_t R, float *dqkv, float *dln)
{
    tv_priv *p = tv->priv;
    const ms_tinyvit_config *c = &tv->cfg;
    const ms_tinyvit_block *b = &tv->blk[i][j];
    tv_blk_act *a = &p->blk[i][j];
    int64_t C = c->dims[i], nh = c->heads[i], hd = C / nh, r = tv->peft.lora_rank;
    int ia = k ? b->lora_av : b->lora_aq, ib = k ? b->lora_bv : b->lora_bq;
    float *t = k ? a->tv : a->tq, *gb = tv_g(tv, ib);
    int fsam = tv->peft.fsam_slicing;
    int64_t nseg = fsam ? 1 : nh, n = fsam ? C : hd;
    ms_matmul_desc d = tv_desc_lora(R, n, r, C);
    if (!dqkv) MS_TRY(ms_linear_forward(tv->dev, t, a->lnw, tv_p(tv, ia), NULL, R, C, r));
    else MS_TRY(tv_zero(tv, p->dtq, R * r));
    for (int64_t h = 0; h < nseg; h++) {
        int64_t col = fsam ? k * 2 * C : h * 3 * hd + k * 2 * hd, off = h * hd * r;
        if (!dqkv) MS_TRY(ms_matmul_forward(tv->dev, a->qkv + col, t, tv_p(tv, ib) + off, &d));
        else MS_TRY(ms_matmul_backward(tv->dev, p->dtq, gb ? gb + off : NULL, dqkv + col, t, tv_p(tv, ib) + off, &d));
    }
    if (!dqkv) return MS_OK;
    return ms_linear_backward(tv->dev, dln, tv_g(tv, ia), NULL, p->dtq, a->lnw, tv_p(tv, ia), R, C, r);
}

/* An adapter fc2(GELU(fc1(x))) (finetune-SAM's Adapter without its skip): x (M, C) → y (M, C), hidden (M, C/4) in
 * h (pre-GELU) and gg. w: D_fc1 weight, bias, D_fc2 weight, bias indices. */
static ms_status tv_adapter(ms_tinyvit *tv, const int *w, const float *x, float *h, float *gg, float *y, int64_t M,
                            int64_t C)
{
    int64_t Da = C / 4;
    MS_TRY(ms_linear_forward(tv->dev, h, x, tv_p(tv, w[0]), tv_p(tv, w[1]), M, C, Da));
    MS_TRY(ms_gelu_forward(tv->dev, gg, h, M * Da));
    return ms_linear_forward(tv->dev, y, gg, tv_p(tv, w[2]), tv_p(tv, w[3]), M, Da, C);
}

/* Its backward: dy → += dx, and the adapter's gradients. */
static ms_status tv_adapter_backward(ms_tinyvit *tv, const int *w, const float *dy, const float *x, const float *h,
                                     const float *gg, float *dx, int64_t M, int64_t C)
{
    tv_priv *p = tv->priv;
    int64_t Da = C / 4;
    MS_TRY(tv_zero(tv, p->dsa0, M * Da));
    MS_TRY(ms_linear_backward(tv->dev, p->dsa0, tv_g(tv, w[2]), tv_g(tv, w[3]), dy, gg, tv_p(tv, w[2]), M, Da, C));
    MS_TRY(tv_zero(tv, p->dsa1, M * Da));
    MS_TRY(ms_gelu_backward(tv->dev, p->dsa1, p->dsa0, h, M * Da));
    return ms_linear_backward(tv->dev, dx, tv_g(tv, w[0]), tv_g(tv, w[1]), p->dsa1, x, tv_p(tv, w[0]), M, C, Da);
}

/* Window attention of block (i, j): p->tok = a->in + crop(proj(attn(LN(partition(a->in))))). The attention is
 * written out with GEMMs (no fused op takes an additive bias table yet): per head, S = scale·q·kᵀ for every window
 * at once, S += bias (broadcast over windows), P = softmax(S), out = P·v. */
static ms_status tv_attention(ms_tinyvit *tv, int i, int j, int64_t B)
{
    tv_priv *p = tv->priv;
    ms_device *dev = tv->dev;
    const ms_tinyvit_config *c = &tv->cfg;
    const ms_tinyvit_block *b = &tv->blk[i][j];
    tv_blk_act *a = &p->blk[i][j];
    int64_t g = ms_tinyvit_grid(c, i), C = c->dims[i], nh = c->heads[i], hd = C / nh, ws = c->windows[i];
    int64_t nw = (g + ws - 1) / ws, N = ws * ws, Bw = B * nw * nw, R = Bw * N;
    MS_TRY(ms_window_partition_forward(dev, a->xw, a->in, B, g, g, C, (int)ws));
    MS_TRY(ms_layernorm_forward(dev, a->lnw, a->mean1, a->rstd1, a->xw, tv_p(tv, b->norm_w), tv_p(tv, b->norm_b), R,
                                C, TV_LN_EPS));
    MS_TRY(ms_linear_forward(dev, a->qkv, a->lnw, tv_p(tv, b->qkv_w), tv_p(tv, b->qkv_b), R, C, 3 * C));
    if (tv_has_lora(tv, i))
        for (int k = 0; k < 2; k++) MS_TRY(tv_lora(tv, i, j, k, R, NULL, NULL));
    /* ab[h, n, m] = attention_biases[h, idx[n, m]]: rows of the transposed table gathered, then transposed back */
    MS_TRY(ms_transpose_forward(dev, p->biasT, tv_p(tv, b->ab), 1, nh, N));
    MS_TRY(ms_gather_rows_forward(dev, p->abT, p->biasT, p->idx[i], N * N, nh));
    MS_TRY(ms_transpose_forward(dev, p->ab, p->abT, 1, N * N, nh));
    ms_matmul_desc ds = tv_desc_scores(N, hd, C, nh, Bw), dp = tv_desc_pv(N, hd, C, nh, Bw);
    for (int64_t h = 0; h < nh; h++)
        MS_TRY(ms_matmul_forward(dev, p->sc + h * N * N, a->qkv + h * 3 * hd, a->qkv + h * 3 * hd + hd, &ds));
    MS_TRY(ms_add_bcast_forward(dev, p->sc, p->sc, p->ab, Bw, nh * N * N));
    MS_TRY(ms_softmax_forward(dev, a->pr, p->sc, Bw * nh * N, N));
    for (int64_t h = 0; h < nh; h++)
        MS_TRY(ms_matmul_forward(dev, a->att + h * hd, a->pr + h * N * N, a->qkv + h * 3 * hd + 2 * hd, &dp));
    MS_TRY(ms_linear_forward(dev, p->prj, a->att, tv_p(tv, b->proj_w), tv_p(tv, b->proj_b), R, C, C));
    if (!tv_has_adapter(tv, i)) {
        MS_TRY(ms_window_unpartition_forward(dev, p->xw, p->prj, B, g, g, C, (int)ws));
        return ms_add_forward(dev, p->tok, a->in, p->xw, B * g * g * C);
    }
    /* Space_Adapter (with its skip) on the cropped attention output, then the block's residual */
    int64_t M = B * g * g;
    const int w[4] = {b->sa_w1, b->sa_b1, b->sa_w2, b->sa_b2};
    MS_TRY(ms_window_unpartition_forward(dev, a->sa_in, p->prj, B, g, g, C, (int)ws));
    MS_TRY(tv_adapter(tv, w, a->sa_in, a->sa_h, a->sa_g, p->prj, M, C));
    MS_TRY(ms_add_forward(dev, p->prj, a->sa_in, p->prj, M * C));
    return ms_add_forward(dev, p->tok, a->in, p->prj, M * C);
}

/* TinyViTBlock j of layer i: a->in (B, g·g, C) → a->out. */
static ms_status tv_block(ms_tinyvit *tv, int i, int j, int64_t B)
{
    tv_priv *p = tv->priv;
    ms_device *dev = tv->dev;
    const ms_tinyvit_config *c = &tv->cfg;
    const ms_tinyvit_block *b = &tv->blk[i][j];
    tv_blk_act *a = &p->blk[i][j];
    int64_t g = ms_tinyvit_grid(c, i), C = c->dims[i], L = g * g, M = B * L, H = C * c->mlp_ratio;
    MS_TRY(tv_attention(tv, i, j, B));
    /* local conv on the grid, no residual: tokens → (B,C,g,g) → dw conv + BN → tokens */
    MS_TRY(ms_transpose_forward(dev, a->t1, p->tok, B, L, C));
    MS_TRY(tv_cbn(tv, &b->local, &a->local, a->t1, B, C, g, C, c->local_conv, 1, 1, 0));
    MS_TRY(ms_transpose_forward(dev, a->tok2, a->local.y, B, C, L));
    MS_TRY(ms_layernorm_forward(dev, a->ln2, a->mean2, a->rstd2, a->tok2, tv_p(tv, b->mnorm_w), tv_p(tv, b->mnorm_b), M,
                                C, TV_LN_EPS));
    MS_TRY(ms_linear_forward(dev, a->h, a->ln2, tv_p(tv, b->fc1_w), tv_p(tv, b->fc1_b), M, C, H));
    MS_TRY(ms_gelu_forward(dev, a->hg, a->h, M * H));
    MS_TRY(ms_linear_forward(dev, p->prj, a->hg, tv_p(tv, b->fc2_w), tv_p(tv, b->fc2_b), M, H, C));
    if (!tv_has_adapter(tv, i)) return ms_add_forward(dev, a->out, a->tok2, p->prj, M * C);
    /* MLP_Adapter, parallel to the MLP on the same input (without backward out is tok2: read it first) */
    const int w[4] = {b->ma_w1, b->ma_b1, b->ma_w2, b->ma_b2};
    MS_TRY(tv_adapter(tv, w, a->tok2, a->ma_h, a->ma_g, p->ado, M, C));
    MS_TRY(ms_scale_forward(dev, p->ado, p->ado, tv->peft.adapter_scale, M * C));
    MS_TRY(ms_add_forward(dev, a->out, a->tok2, p->prj, M * C));
    return ms_add_forward(dev, a->out, a->out, p->ado, M * C);
}

/* neck: tokens (B, g·g, C3) → emb (B, out, g, g) */
static ms_status tv_neck(ms_tinyvit *tv, const float *tok, int64_t B, float *emb)
{
    tv_priv *p = tv->priv;
    tv_neck_act *k = &p->neck;
    ms_device *dev = tv->dev;
    const ms_tinyvit_config *c = &tv->cfg;
    int64_t g = ms_tinyvit_grid(c, 4), C = c->dims[3], O = c->out_chans, L = g * g;
    MS_TRY(ms_transpose_forward(dev, k->t, tok, B, L, C));
    MS_TRY(ms_conv2d_forward(dev, k->n0, k->t, tv_p(tv, tv->neck0_w), NULL, B, C, g, g, O, 1, 0, 1));
    MS_TRY(ms_layernorm2d_forward(dev, k->n1, k->m1, k->r1, k->n0, tv_p(tv, tv->neck1_w), tv_p(tv, tv->neck1_b), B, O,
                                  L, TV_LN2D_EPS));
    MS_TRY(ms_conv2d_forward(dev, k->n2, k->n1, tv_p(tv, tv->neck2_w), NULL, B, O, g, g, O, 3, 1, 1));
    return ms_layernorm2d_forward(dev, emb, k->m2, k->r2, k->n2, tv_p(tv, tv->neck3_w), tv_p(tv, tv->neck3_b), B, O, L,
                                  TV_LN2D_EPS);
}

/* Layers 1..3 (blocks, then the merging of layers 1 and 2). Without backward the blocks run in place on p->tok. */
static ms_status tv_layers(ms_tinyvit *tv, int64_t B)
{
    tv_priv *p = tv->priv;
    ms_device *dev = tv->dev;
    const ms_tinyvit_config *c = &tv->cfg;
    for (int i = 1; i < 4; i++) {
        int64_t g = ms_tinyvit_grid(c, i), C = c->dims[i];
        size_t bytes = (size_t)(B * g * g * C) * sizeof(float);
        const float *h = p->out[i - 1];
        if (!tv->with_backward) {
            MS_TRY(ms_dev_copy(dev, p->tok, h, bytes));
            h = p->tok;
        }
        for (int j = 0; j < c->depths[i]; j++) {
            p->blk[i][j].in = h;
            MS_TRY(tv_block(tv, i, j, B));
            h = p->blk[i][j].out;
        }
        if (i == 3) MS_TRY(ms_dev_copy(dev, p->out[3], h, bytes));
        else {
            MS_TRY(ms_transpose_forward(dev, p->mg[i].in, h, B, g * g, C)); /* merging works on the grid */
            MS_TRY(tv_merge(tv, i, p->mg[i].in, B, p->out[i]));
        }
    }
    return MS_OK;
}

ms_status ms_tinyvit_forward(ms_tinyvit *tv, const float *x, int B, float *emb)
{
    MS_FAIL_IF(!tv->priv, MS_EBADSTATE, "TinyViT: activations not reserved");
    MS_FAIL_IF(B <= 0 || B > tv->max_batch, MS_EINVAL, "TinyViT: batch %d (reserved for %d)", B, tv->max_batch);
    tv_priv *p = tv->priv;
    ms_device *dev = tv->dev;
    const ms_tinyvit_config *c = &tv->cfg;
    int64_t S = c->img_size, C0 = c->dims[0], g0 = ms_tinyvit_grid(c, 0);
    tv->batch = 0;
    tv->neck_ran = 0;
    if (!tv->with_backward) tv_bn_stats_shared(tv, p, tv->bn_train);
    else MS_TRY(ms_dev_copy(dev, p->x, x, (size_t)(B * c->in_chans * S * S) * sizeof(float)));
    MS_TRY(tv_cbn(tv, &tv->stem[0], &p->stem_a[0], x, B, c->in_chans, S, C0 / 2, 3, 2, 0, 1));
    MS_TRY(tv_cbn(tv, &tv->stem[1], &p->stem_a[1], p->stem_a[0].a, B, C0 / 2, S / 2, C0, 3, 2, 0, 0));
    /* p->stem_a[1].y is p->stem with backward; without, MBConv runs in place on a copy */
    const float *h = p->stem_a[1].y;
    if (!tv->with_backward) {
        MS_TRY(ms_dev_copy(dev, p->ca, p->stem, (size_t)(B * C0 * g0 * g0) * sizeof(float)));
        h = p->ca;
    } else MS_TRY(ms_dev_copy(dev, p->stem, h, (size_t)(B * C0 * g0 * g0) * sizeof(float)));
    for (int j = 0; j < c->depths[0]; j++) {
        MS_TRY(tv_mbconv(tv, j, h, B, C0, g0));
        h = p->mb[j].out;
    }
    p->mg[0].in = (float *)h;
    MS_TRY(tv_merge(tv, 0, h, B, p->out[0]));
    MS_TRY(tv_layers(tv, B));
    if (emb) MS_TRY(tv_neck(tv, p->out[3], B, emb));
    if (tv->bn_train) tv->bn_batches++;
    p->fwd_train = tv->bn_train;
    tv->neck_ran = emb != NULL;
    tv->batch = B;
    return MS_OK;
}

const float *ms_tinyvit_stage(const ms_tinyvit *tv, int stage)
{
    const tv_priv *p = tv->priv;
    if (!p || !tv->batch || stage < -1 || stage > 3) return NULL;
    return stage < 0 ? p->stem : p->out[stage];
}

/* ------------------------------------------------------------------------------------------------ backward */

/* Backward of tv_cbn from dout (the unit's output gradient) into dx (x's gradient; zeroed first when zero_dx, and
 * then it may be dout itself; NULL when x needs none). ta, tb: scratch distinct from dout and dx. BatchNorm's
 * backward in the forward's mode. */
static ms_status tv_cbn_backward(ms_tinyvit *tv, const ms_tinyvit_cbn *u, const tv_cbn_act *a, const float *x,
                                 float *dout, float *dx, int zero_dx, float *ta, float *tb, int64_t B, int64_t Cin,
                                 int64_t H, int64_t Cout, int ks, int stride, int depthwise, int act)
{
    tv_priv *p = tv->priv;
    ms_device *dev = tv->dev;
    int pad = ks / 2;
    int64_t Ho = ms_conv_out_size(H, ks, pad, stride), n = B * Cout * Ho * Ho;
    const float *dy = dout;
    if (act) {
        MS_TRY(tv_zero(tv, ta, n));
        MS_TRY(ms_gelu_backward(dev, ta, dout, a->y, n));
        dy = ta;
    }
    MS_TRY(tv_zero(tv, tb, n));
    MS_TRY(ms_batchnorm_backward(dev, tb, tv_g(tv, u->g), tv_g(tv, u->b), dy, a->c, tv_p(tv, u->g), a->mean, a->rstd,
                                 B, Cout, Ho * Ho, p->fwd_train));
    float *dw = tv_g(tv, u->w);
    if (!dx && !dw) return MS_OK;
    if (dx && zero_dx) MS_TRY(tv_zero(tv, dx, B * Cin * H * H));
    if (depthwise) return ms_dwconv2d_backward(dev, dx, dw, NULL, tb, x, tv_p(tv, u->w), B, Cin, H, H, ks, pad, stride);
    return ms_conv2d_backward(dev, dx, dw, NULL, tb, x, tv_p(tv, u->w), B, Cin, H, H, Cout, ks, pad, stride);
}

/* The three gradient scratch buffers other than a. */
static void tv_others(tv_priv *p, const float *a, float **b, float **c, float **d)
{
    float **o[3] = {b, c, d};
    for (int k = 0, n = 0; k < 4; k++)
        if (p->g[k] != a) *o[n++] = p->g[k];
}

/* Neck backward: demb → the gradient of layer 3's tokens in d (B·L, C3). */
static ms_status tv_neck_backward(ms_tinyvit *tv, const float *demb, int64_t B, float *d)
{
    tv_priv *p = tv->priv;
    tv_neck_act *k = &p->neck;
    ms_device *dev = tv->dev;
    const ms_tinyvit_config *c = &tv->cfg;
    int64_t g = ms_tinyvit_grid(c, 4), C = c->dims[3], O = c->out_chans, L = g * g;
    float *t0 = p->g[2], *t1 = p->g[3];
    MS_TRY(tv_zero(tv, t0, B * O * L));
    MS_TRY(ms_layernorm2d_backward(dev, t0, tv_g(tv, tv->neck3_w), tv_g(tv, tv->neck3_b), demb, k->n2,
                                   tv_p(tv, tv->neck3_w), k->m2, k->r2, B, O, L));
    MS_TRY(tv_zero(tv, t1, B * O * L));
    MS_TRY(ms_conv2d_backward(dev, t1, tv_g(tv, tv->neck2_w), NULL, t0, k->n1, tv_p(tv, tv->neck2_w), B, O, g, g, O, 3,
                              1, 1));
    MS_TRY(tv_zero(tv, t0, B * O * L));
    MS_TRY(ms_layernorm2d_backward(dev, t0, tv_g(tv, tv->neck1_w), tv_g(tv, tv->neck1_b), t1, k->n0,
                                   tv_p(tv, tv->neck1_w), k->m1, k->r1, B, O, L));
    MS_TRY(tv_zero(tv, t1, B * C * L));
    MS_TRY(ms_conv2d_backward(dev, t1, tv_g(tv, tv->neck0_w), NULL, t0, k->t, tv_p(tv, tv->neck0_w), B, C, g, g, O, 1,
                              0, 1));
    MS_TRY(tv_zero(tv, d, B * L * C));
    return ms_transpose_backward(dev, d, t1, B, L, C);
}

/* Attention backward of block (i, j): dtok1 = the gradient of p->tok (x + attention) → += into din. */
static ms_status tv_attention_backward(ms_tinyvit *tv, int i, int j, int64_t B, const float *dtok1, float *din,
                                       float *t0, float *t1)
{
    tv_priv *p = tv->priv;
    ms_device *dev = tv->dev;
    const ms_tinyvit_config *c = &tv->cfg;
    const ms_tinyvit_block *b = &tv->blk[i][j];
    tv_blk_act *a = &p->blk[i][j];
    int64_t g = ms_tinyvit_grid(c, i), C = c->dims[i], nh = c->heads[i], hd = C / nh, ws = c->windows[i];
    int64_t nw = (g + ws - 1) / ws, N = ws * ws, Bw = B * nw * nw, R = Bw * N;
    if (tv_has_adapter(tv, i)) { /* the attention output's gradient: the adapter's skip plus its branch */
        const int w[4] = {b->sa_w1, b->sa_b1, b->sa_w2, b->sa_b2};
        MS_TRY(ms_dev_copy(dev, p->ado, dtok1, (size_t)(B * g * g * C) * sizeof(float)));
        MS_TRY(tv_adapter_backward(tv, w, dtok1, a->sa_in, a->sa_h, a->sa_g, p->ado, B * g * g, C));
        dtok1 = p->ado;
    }
    MS_TRY(tv_zero(tv, t0, R * C));
    MS_TRY(ms_window_unpartition_backward(dev, t0, dtok1, B, g, g, C, (int)ws));
    MS_TRY(tv_zero(tv, t1, R * C));
    MS_TRY(ms_linear_backward(dev, t1, tv_g(tv, b->proj_w), tv_g(tv, b->proj_b), t0, a->att, tv_p(tv, b->proj_w), R, C,
                              C));
    ms_matmul_desc ds = tv_desc_scores(N, hd, C, nh, Bw), dp = tv_desc_pv(N, hd, C, nh, Bw);
    MS_TRY(tv_zero(tv, p->dqkv, R * 3 * C));
    MS_TRY(tv_zero(tv, p->dP, Bw * nh * N * N));
    for (int64_t h = 0; h < nh; h++)
        MS_TRY(ms_matmul_backward(dev, p->dP + h * N * N, p->dqkv + h * 3 * hd + 2 * hd, t1 + h * hd,
                                  a->pr + h * N * N, a->qkv + h * 3 * hd + 2 * hd, &dp));
    MS_TRY(tv_zero(tv, p->dS, Bw * nh * N * N));
    MS_TRY(ms_softmax_backward(dev, p->dS, p->dP, a->pr, Bw * nh * N, N));
    float *gab = tv_g(tv, b->ab);
    if (gab) { /* the bias table: summed over windows, scattered back through the index, transposed */
        MS_TRY(tv_zero(tv, p->dab, nh * N * N));
        MS_TRY(ms_add_bcast_backward(dev, NULL, p->dab, p->dS, Bw, nh * N * N));
        MS_TRY(tv_zero(tv, p->dabT, N * N * nh));
        MS_TRY(ms_transpose_backward(dev, p->dabT, p->dab, 1, N * N, nh));
        MS_TRY(tv_zero(tv, p->dbT, N * nh));
        MS_TRY(ms_gather_rows_backward(dev, p->dbT, p->dabT, p->idx[i], N * N, nh, N));
        MS_TRY(ms_transpose_backward(dev, gab, p->dbT, 1, nh, N));
    }
    for (int64_t h = 0; h < nh; h++)
        MS_TRY(ms_matmul_backward(dev, p->dqkv + h * 3 * hd, p->dqkv + h * 3 * hd + hd, p->dS + h * N * N,
                                  a->qkv + h * 3 * hd, a->qkv + h * 3 * hd + hd, &ds));
    MS_TRY(tv_zero(tv, t0, R * C));
    MS_TRY(ms_linear_backward(dev, t0, tv_g(tv, b->qkv_w), tv_g(tv, b->qkv_b), p->dqkv, a->lnw, tv_p(tv, b->qkv_w), R,
                              C, 3 * C));
    if (tv_has_lora(tv, i))
        for (int k = 0; k < 2; k++) MS_TRY(tv_lora(tv, i, j, k, R, p->dqkv, t0));
    MS_TRY(tv_zero(tv, t1, R * C));
    MS_TRY(ms_layernorm_backward(dev, t1, tv_g(tv, b->norm_w), tv_g(tv, b->norm_b), t0, a->xw, tv_p(tv, b->norm_w),
                                 a->mean1, a->rstd1, R, C));
    return ms_window_partition_backward(dev, din, t1, B, g, g, C, (int)ws);
}

/* Block (i, j) backward: *d holds the gradient of its output; on return *d holds its input's (buffers rotate
 * among g[0..3]). */
static ms_status tv_block_backward(ms_tinyvit *tv, int i, int j, int64_t B, float **d)
{
    tv_priv *p = tv->priv;
    ms_device *dev = tv->dev;
    const ms_tinyvit_config *c = &tv->cfg;
    const ms_tinyvit_block *b = &tv->blk[i][j];
    tv_blk_act *a = &p->blk[i][j];
    int64_t g = ms_tinyvit_grid(c, i), C = c->dims[i], L = g * g, M = B * L, H = C * c->mlp_ratio;
    float *ta = *d, *tb, *tc, *td;
    tv_others(p, ta, &tb, &tc, &td);
    /* out = tok2 + fc2(GELU(fc1(LN(tok2)))) (+ scale·MLP_Adapter(tok2)) */
    MS_TRY(ms_dev_copy(dev, tc, ta, (size_t)(M * C) * sizeof(float)));
    if (tv_has_adapter(tv, i)) {
        const int w[4] = {b->ma_w1, b->ma_b1, b->ma_w2, b->ma_b2};
        MS_TRY(ms_scale_forward(dev, p->ado, ta, tv->peft.adapter_scale, M * C));
        MS_TRY(tv_adapter_backward(tv, w, p->ado, a->tok2, a->ma_h, a->ma_g, tc, M, C));
    }
    MS_TRY(tv_zero(tv, p->dh0, M * H));
    MS_TRY(ms_linear_backward(dev, p->dh0, tv_g(tv, b->fc2_w), tv_g(tv, b->fc2_b), ta, a->hg, tv_p(tv, b->fc2_w), M, H,
                              C));
    MS_TRY(tv_zero(tv, p->dh1, M * H));
    MS_TRY(ms_gelu_backward(dev, p->dh1, p->dh0, a->h, M * H));
    MS_TRY(tv_zero(tv, tb, M * C));
    MS_TRY(ms_linear_backward(dev, tb, tv_g(tv, b->fc1_w), tv_g(tv, b->fc1_b), p->dh1, a->ln2, tv_p(tv, b->fc1_w), M,
                              C, H));
    MS_TRY(ms_layernorm_backward(dev, tc, tv_g(tv, b->mnorm_w), tv_g(tv, b->mnorm_b), tb, a->tok2,
                                 tv_p(tv, b->mnorm_w), a->mean2, a->rstd2, M, C));
    /* tok2 = transpose(BN(dw(t1))), t1 = transpose(x + attention) */
    MS_TRY(tv_zero(tv, ta, M * C));
    MS_TRY(ms_transpose_backward(dev, ta, tc, B, C, L));
    MS_TRY(tv_cbn_backward(tv, &b->local, &a->local, a->t1, ta, ta, 1, NULL, tb, B, C, g, C, c->local_conv, 1, 1, 0));
    MS_TRY(tv_zero(tv, tc, M * C));
    MS_TRY(ms_transpose_backward(dev, tc, ta, B, L, C));
    /* x + attention: the residual's gradient, then the attention's */
    MS_TRY(ms_dev_copy(dev, td, tc, (size_t)(M * C) * sizeof(float)));
    MS_TRY(tv_attention_backward(tv, i, j, B, tc, td, ta, tb));
    *d = td;
    return MS_OK;
}

/* Merging i backward: *d holds the gradient of its output tokens; on return *d holds its NCHW input's. */
static ms_status tv_merge_backward(ms_tinyvit *tv, int i, int64_t B, float **d)
{
    tv_priv *p = tv->priv;
    const ms_tinyvit_config *c = &tv->cfg;
    tv_merge_act *m = &p->mg[i];
    int64_t C = c->dims[i], O = c->dims[i + 1], g = ms_tinyvit_grid(c, i), go = ms_tinyvit_grid(c, i + 1);
    float *ta = *d, *tb, *tc, *td;
    tv_others(p, ta, &tb, &tc, &td);
    MS_TRY(tv_zero(tv, tb, B * O * go * go));
    MS_TRY(ms_transpose_backward(tv->dev, tb, ta, B, O, go * go));
    MS_TRY(tv_cbn_backward(tv, &tv->merge[i][2], &m->u[2], m->u[1].a, tb, tb, 1, NULL, tc, B, O, go, O, 1, 1, 0, 0));
    MS_TRY(tv_cbn_backward(tv, &tv->merge[i][1], &m->u[1], m->u[0].a, tb, tb, 1, tc, td, B, O, g, O, 3,
                           c->merge_stride[i], 1, 1));
    MS_TRY(tv_cbn_backward(tv, &tv->merge[i][0], &m->u[0], m->in, tb, tb, 1, tc, td, B, C, g, O, 1, 1, 0, 1));
    *d = tb;
    return MS_OK;
}

/* MBConv j backward (x its input): *d holds the gradient of its output; on return *d holds x's. */
static ms_status tv_mbconv_backward(ms_tinyvit *tv, int j, const float *x, int64_t B, float **d)
{
    tv_priv *p = tv->priv;
    const ms_tinyvit_config *c = &tv->cfg;
    const ms_tinyvit_cbn *u = tv->mb[j];
    tv_mb_act *m = &p->mb[j];
    int64_t C = c->dims[0], g = ms_tinyvit_grid(c, 0), hid = C * c->mbconv_expand;
    float *ta = *d, *tb, *tc, *td;
    tv_others(p, ta, &tb, &tc, &td);
    MS_TRY(tv_zero(tv, tb, B * C * g * g)); /* tb: the gradient of s, then of x (residual + conv1's) */
    MS_TRY(ms_gelu_backward(tv->dev, tb, ta, m->s, B * C * g * g));
    MS_TRY(tv_cbn_backward(tv, &u[2], &m->u[2], m->u[1].a, tb, ta, 1, NULL, tc, B, hid, g, C, 1, 1, 0, 0));
    MS_TRY(tv_cbn_backward(tv, &u[1], &m->u[1], m->u[0].a, ta, ta, 1, tc, td, B, hid, g, hid, 3, 1, 1, 1));
    MS_TRY(tv_cbn_backward(tv, &u[0], &m->u[0], x, ta, tb, 0, tc, td, B, C, g, hid, 1, 1, 0, 1));
    *d = tb;
    return MS_OK;
}

/* The lowest stage with a trainable tensor: 0 the stem and layer 0, i = 1..3 layers.i (blocks, merging, PEFT),
 * 4 the neck, 5 none. Without dx the backward stops there: below it nothing needs a gradient (with LoRA on a
 * frozen encoder that skips layer 0 and the stem, the largest activations). */
static int tv_lowest_trainable(const ms_tinyvit *tv)
{
    size_t np = strlen(tv->prefix);
    int low = 5;
    for (int i = 0; i < tv->ps->n && low > 0; i++) {
        const char *nm = tv->ps->p[i].name;
        if (strncmp(nm, tv->prefix, np) || !ms_params_grad(tv->ps, i)) continue;
        nm += np;
        int st = 5;
        if (!strncmp(nm, "patch_embed.", 12)) st = 0;
        else if (!strncmp(nm, "layers.", 7) && nm[7] >= '0' && nm[7] <= '3') st = nm[7] - '0';
        else if (!strncmp(nm, "neck.", 5)) st = 4;
        if (st < low) low = st;
    }
    return low;
}

/* Layers 3..max(1, low) backward: *d holds the gradient of layer 3's tokens; on return, when low ≤ 1, *d holds
 * that of out[0]. */
static ms_status tv_layers_backward(ms_tinyvit *tv, int64_t B, float **d, int low)
{
    tv_priv *p = tv->priv;
    const ms_tinyvit_config *c = &tv->cfg;
    for (int i = 3; i >= 1 && i >= low; i--) {
        int64_t g = ms_tinyvit_grid(c, i), C = c->dims[i];
        if (i < 3) { /* merging i's input was the grid of the last block's tokens */
            MS_TRY(tv_merge_backward(tv, i, B, d));
            float *t, *u, *v;
            tv_others(p, *d, &t, &u, &v);
            MS_TRY(tv_zero(tv, t, B * g * g * C));
            MS_TRY(ms_transpose_backward(tv->dev, t, *d, B, g * g, C));
            *d = t;
        }
        for (int j = c->depths[i] - 1; j >= 0; j--) MS_TRY(tv_block_backward(tv, i, j, B, d));
    }
    return MS_OK;
}

ms_status ms_tinyvit_backward(ms_tinyvit *tv, const float *demb, const float *dtok, float *dx)
{
    tv_priv *p = tv->priv;
    MS_FAIL_IF(!p || !tv->with_backward, MS_EBADSTATE, "TinyViT: backward needs ms_tinyvit_reserve(with_backward)");
    MS_FAIL_IF(!tv->batch, MS_EBADSTATE, "TinyViT: backward without a forward");
    MS_FAIL_IF(tv->neck_ran ? !demb : !dtok, MS_EINVAL, "TinyViT: backward needs %s (the last forward %s the neck)",
               tv->neck_ran ? "demb" : "dtok", tv->neck_ran ? "ran" : "skipped");
    const ms_tinyvit_config *c = &tv->cfg;
    int64_t B = tv->batch, S = c->img_size, C0 = c->dims[0];
    int64_t g3 = ms_tinyvit_grid(c, 3);
    int low = dx ? 0 : tv_lowest_trainable(tv);
    float *d = p->g[0];
    if (tv->neck_ran) MS_TRY(tv_neck_backward(tv, demb, B, d));
    else MS_TRY(ms_dev_copy(tv->dev, d, dtok, (size_t)(B * g3 * g3 * c->dims[3]) * sizeof(float)));
    MS_TRY(tv_layers_backward(tv, B, &d, low));
    if (low > 0) return MS_OK;
    MS_TRY(tv_merge_backward(tv, 0, B, &d));
    for (int j = c->depths[0] - 1; j >= 0; j--)
        MS_TRY(tv_mbconv_backward(tv, j, j ? p->mb[j - 1].out : p->stem, B, &d));
    float *ta, *tb, *tc;
    tv_others(p, d, &ta, &tb, &tc);
    MS_TRY(tv_cbn_backward(tv, &tv->stem[1], &p->stem_a[1], p->stem_a[0].a, d, d, 1, NULL, ta, B, C0 / 2, S / 2, C0,
                           3, 2, 0, 0));
    return tv_cbn_backward(tv, &tv->stem[0], &p->stem_a[0], p->x, d, dx, 0, ta, tb, B, c->in_chans, S, C0 / 2, 3, 2,
                           0, 1);
}

/* ------------------------------------------------------------------------------------------------ initialisation */

enum { TV_ZERO, TV_ONE, TV_UNIFORM, TV_TRUNC };

/* timm's trunc_normal_(std, a = −2, b = 2): a normal draw redrawn while outside [a, b] (absolute bounds: with std
 * 0.02 a redraw practically never happens). */
static float tv_trunc_normal(ms_rng *r, float std)
{
    for (;;) {
        float v = std * ms_rng_normal(r);
        if (v >= -2.0f && v <= 2.0f) return v;
    }
}

/* One tensor: constant, U(±1/√fan_in) (PyTorch's kaiming_uniform(a=√5) default for conv and linear weights), or
 * trunc_normal(0.02); the stream is the tensor's index, so each tensor's values do not depend on the others. */
static ms_status tv_fill(ms_tinyvit *tv, int idx, int kind, int64_t fan_in, uint64_t seed, float *h)
{
    if (idx < 0) return MS_OK;
    const ms_param *p = &tv->ps->p[idx];
    ms_rng r;
    ms_rng_init(&r, seed, ms_rng_stream(0, (uint64_t)idx, 0x7476));
    float bound = fan_in > 0 ? 1.0f / sqrtf((float)fan_in) : 0.f;
    for (int64_t j = 0; j < p->numel; j++)
        h[j] = kind == TV_ZERO ? 0.f : kind == TV_ONE ? 1.f : kind == TV_UNIFORM ? ms_rng_range(&r, -bound, bound)
                                                                               : tv_trunc_normal(&r, 0.02f);
    return ms_dev_from_host(tv->ps->dev, tv->ps->data + p->off, h, (size_t)p->numel * sizeof(float));
}

/* Conv2d_BN: conv PyTorch default (no bias), BatchNorm γ = gamma β = 0, running mean 0 / var 1. */
static ms_status tv_fill_cbn(ms_tinyvit *tv, const ms_tinyvit_cbn *u, int gamma_one, uint64_t seed, float *h)
{
    const ms_param *w = &tv->ps->p[u->w];
    MS_TRY(tv_fill(tv, u->w, TV_UNIFORM, w->numel / w->shape[0], seed, h));
    MS_TRY(tv_fill(tv, u->g, gamma_one ? TV_ONE : TV_ZERO, 0, seed, h));
    MS_TRY(tv_fill(tv, u->b, TV_ZERO, 0, seed, h));
    MS_TRY(tv_fill(tv, u->mean, TV_ZERO, 0, seed, h));
    return tv_fill(tv, u->var, TV_ONE, 0, seed, h);
}

static ms_status tv_fill_block(ms_tinyvit *tv, const ms_tinyvit_block *b, uint64_t seed, float *h)
{
    const int zero[] = {b->ab, b->norm_b, b->qkv_b, b->proj_b, b->mnorm_b, b->fc1_b, b->fc2_b};
    const int one[] = {b->norm_w, b->mnorm_w}, trunc[] = {b->qkv_w, b->proj_w, b->fc1_w, b->fc2_w};
    for (size_t k = 0; k < sizeof zero / sizeof *zero; k++) MS_TRY(tv_fill(tv, zero[k], TV_ZERO, 0, seed, h));
    for (size_t k = 0; k < 2; k++) MS_TRY(tv_fill(tv, one[k], TV_ONE, 0, seed, h));
    for (size_t k = 0; k < 4; k++) MS_TRY(tv_fill(tv, trunc[k], TV_TRUNC, 0, seed, h));
    return tv_fill_cbn(tv, &b->local, 1, seed, h);
}

static ms_status tv_init_all(ms_tinyvit *tv, uint64_t seed, float *h)
{
    const ms_tinyvit_config *c = &tv->cfg;
    for (int k = 0; k < 2; k++) MS_TRY(tv_fill_cbn(tv, &tv->stem[k], 1, seed, h));
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < c->depths[i]; j++) {
            if (i == 0) /* MBConv's conv3: bn_weight_init = 0, so each block starts as GELU(x) */
                for (int k = 0; k < 3; k++) MS_TRY(tv_fill_cbn(tv, &tv->mb[j][k], k < 2, seed, h));
            else MS_TRY(tv_fill_block(tv, &tv->blk[i][j], seed, h));
        }
        if (i < 3) for (int k = 0; k < 3; k++) MS_TRY(tv_fill_cbn(tv, &tv->merge[i][k], 1, seed, h));
    }
    MS_TRY(tv_fill(tv, tv->head_norm_w, TV_ONE, 0, seed, h));
    MS_TRY(tv_fill(tv, tv->head_norm_b, TV_ZERO, 0, seed, h));
    MS_TRY(tv_fill(tv, tv->head_w, TV_TRUNC, 0, seed, h));
    MS_TRY(tv_fill(tv, tv->head_b, TV_ZERO, 0, seed, h));
    int64_t O = c->out_chans;
    MS_TRY(tv_fill(tv, tv->neck0_w, TV_UNIFORM, c->dims[3], seed, h));
    MS_TRY(tv_fill(tv, tv->neck1_w, TV_ONE, 0, seed, h));
    MS_TRY(tv_fill(tv, tv->neck1_b, TV_ZERO, 0, seed, h));
    MS_TRY(tv_fill(tv, tv->neck2_w, TV_UNIFORM, O * 9, seed, h));
    MS_TRY(tv_fill(tv, tv->neck3_w, TV_ONE, 0, seed, h));
    return tv_fill(tv, tv->neck3_b, TV_ZERO, 0, seed, h);
}

/* A host buffer as large as the largest registered tensor, for the initialisers (parameters allocated). */
static ms_status tv_init_scratch(const ms_tinyvit *tv, float **h)
{
    const ms_params *ps = tv->ps;
    MS_FAIL_IF(!ps || !ps->data, MS_EBADSTATE, "TinyViT: parameters not allocated");
    int64_t maxn = 1;
    for (int i = 0; i < ps->n; i++) maxn = max64(maxn, ps->p[i].numel);
    *h = malloc((size_t)maxn * sizeof(float));
    MS_FAIL_IF(!*h, MS_ENOMEM, "TinyViT: out of memory");
    return MS_OK;
}

ms_status ms_tinyvit_init_random(ms_tinyvit *tv, uint64_t seed)
{
    float *h;
    MS_TRY(tv_init_scratch(tv, &h));
    ms_status rc = tv_init_all(tv, seed, h);
    free(h);
    tv->bn_batches = 0;
    if (!rc && (tv->peft.lora_rank || tv->peft.adapter_layers)) rc = ms_tinyvit_peft_init_random(tv, seed);
    return rc;
}

/* ------------------------------------------------------------------------------------------------ PEFT */

ms_status ms_tinyvit_add_peft(ms_tinyvit *tv, const ms_tinyvit_peft *pf)
{
    ms_params *ps = tv->ps;
    const ms_tinyvit_config *c = &tv->cfg;
    MS_FAIL_IF(!ps, MS_EBADSTATE, "TinyViT: add_peft before ms_tinyvit_init");
    MS_FAIL_IF(ps->data, MS_EBADSTATE, "TinyViT: add_peft after ms_params_alloc");
    MS_FAIL_IF(tv->priv, MS_EBADSTATE, "TinyViT: add_peft after ms_tinyvit_reserve");
    MS_FAIL_IF(tv->peft.lora_rank || tv->peft.adapter_layers, MS_EBADSTATE, "TinyViT: PEFT tensors already added");
    ms_tinyvit_peft f = *pf;
    f.lora_layers &= 0xEu; /* layers 1..3: layer 0 is convolutional */
    f.adapter_layers &= 0xEu;
    for (int i = 1; i < 4; i++) {
        MS_FAIL_IF((f.lora_layers >> i & 1) && f.lora_rank > 0 && f.lora_rank > c->dims[i], MS_EINVAL,
                   "TinyViT: LoRA rank %d above layer %d's dim %d", f.lora_rank, i, c->dims[i]);
        MS_FAIL_IF((f.adapter_layers >> i & 1) && c->dims[i] < 4, MS_EINVAL, "TinyViT: adapters need dim >= 4");
    }
    MS_FAIL_IF(f.lora_rank < 0, MS_EINVAL, "TinyViT: LoRA rank %d", f.lora_rank);
    if (!f.lora_rank) f.lora_layers = 0;
    if (!f.lora_layers) f.lora_rank = 0;
    if (f.adapter_layers && f.adapter_scale == 0.0f) f.adapter_scale = 0.5f; /* finetune-SAM's TinyViTBlock */
    tv_reg r = {ps, tv->prefix, 0};
    int first = ps->n;
    int64_t rk = f.lora_rank;
    for (int i = 1; i < 4; i++)
        for (int j = 0; j < c->depths[i]; j++) {
            ms_tinyvit_block *b = &tv->blk[i][j];
            int64_t C = c->dims[i], Da = C / 4, sa[2] = {rk, C}, sb[2] = {C, rk}, s1[2] = {Da, C}, s2[2] = {C, Da};
            if (f.lora_layers >> i & 1) {
                b->lora_aq = tv_add(&r, 0, 2, sa, "layers.%d.blocks.%d.attn.qkv.linear_a_q.weight", i, j);
                b->lora_bq = tv_add(&r, 0, 2, sb, "layers.%d.blocks.%d.attn.qkv.linear_b_q.weight", i, j);
                b->lora_av = tv_add(&r, 0, 2, sa, "layers.%d.blocks.%d.attn.qkv.linear_a_v.weight", i, j);
                b->lora_bv = tv_add(&r, 0, 2, sb, "layers.%d.blocks.%d.attn.qkv.linear_b_v.weight", i, j);
            }
            if (f.adapter_layers >> i & 1) {
                static const char *nm[2] = {"MLP_Adapter", "Space_Adapter"}; /* finetune-SAM's registration order */
                int *dst[2][4] = {{&b->ma_w1, &b->ma_b1, &b->ma_w2, &b->ma_b2},
                                  {&b->sa_w1, &b->sa_b1, &b->sa_w2, &b->sa_b2}};
                for (int k = 0; k < 2; k++) {
                    *dst[k][0] = tv_add(&r, 0, 2, s1, "layers.%d.blocks.%d.%s.D_fc1.weight", i, j, nm[k]);
                    *dst[k][1] = tv_add(&r, 1, 1, s1, "layers.%d.blocks.%d.%s.D_fc1.bias", i, j, nm[k]);
                    *dst[k][2] = tv_add(&r, 0, 2, s2, "layers.%d.blocks.%d.%s.D_fc2.weight", i, j, nm[k]);
                    *dst[k][3] = tv_add(&r, 1, 1, s2, "layers.%d.blocks.%d.%s.D_fc2.bias", i, j, nm[k]);
                }
            }
        }
    if (r.bad) return MS_EINVAL;
    for (int k = first; k < ps->n; k++) ps->p[k].optional = 1; /* a plain MobileSAM file loads; these keep their init */
    tv->peft = f;
    return MS_OK;
}

ms_status ms_tinyvit_peft_init_random(ms_tinyvit *tv, uint64_t seed)
{
    float *h;
    MS_TRY(tv_init_scratch(tv, &h));
    ms_status rc = MS_OK;
    for (int i = 1; i < 4 && !rc; i++)
        for (int j = 0; j < tv->cfg.depths[i] && !rc; j++) {
            const ms_tinyvit_block *b = &tv->blk[i][j];
            int64_t C = tv->cfg.dims[i], Da = C / 4;
            if (tv_has_lora(tv, i)) { /* kaiming_uniform(a=√5) on A (fan_in C), B = 0 (finetune-SAM's reset) */
                const int idx[4] = {b->lora_aq, b->lora_bq, b->lora_av, b->lora_bv};
                for (int k = 0; k < 4 && !rc; k++) rc = tv_fill(tv, idx[k], k & 1 ? TV_ZERO : TV_UNIFORM, C, seed, h);
            }
            if (tv_has_adapter(tv, i)) { /* nn.Linear's default: weight and bias U(±1/√in_features) */
                const int idx[8] = {b->sa_w1, b->sa_b1, b->sa_w2, b->sa_b2, b->ma_w1, b->ma_b1, b->ma_w2, b->ma_b2};
                for (int k = 0; k < 8 && !rc; k++) rc = tv_fill(tv, idx[k], TV_UNIFORM, (k & 2) ? Da : C, seed, h);
            }
        }
    free(h);
    return rc;
}
