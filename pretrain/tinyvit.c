/* pretrain/tinyvit.c — MobileSAM's TinyViT image encoder, forward in inference mode (contract: tinyvit.h).
 * ref: ChaoningZhang/MobileSAM mobile_sam/modeling/tiny_vit_sam.py (Conv2d_BN, PatchEmbed, MBConv, PatchMerging,
 * Attention, TinyViTBlock, TinyViT.forward_features) and build_sam.py (build_sam_vit_t).
 */
#include "pretrain/tinyvit.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    /* a shallow copy without the BatchNorm counters: ms_params_load then reports missing, mis-shaped and unknown
     * keys, one line each, and loads nothing on any error */
    ms_state_dict f = {0};
    f.e = malloc((size_t)(sd->n ? sd->n : 1) * sizeof *f.e);
    MS_FAIL_IF(!f.e, MS_ENOMEM, "out of memory");
    int64_t batches = 0; /* every BatchNorm of a model counts the same training batches: keep the largest */
    for (int i = 0; i < sd->n; i++) {
        const ms_sd_entry *e = &sd->e[i];
        if (!tv_is_bn_counter(tv, e)) { f.e[f.n++] = *e; continue; }
        int64_t v = e->t.dtype == MS_DTYPE_I64 ? *(const int64_t *)e->t.data : *(const int32_t *)e->t.data;
        if (v > batches) batches = v;
    }
    f.cap = f.n;
    ms_status rc = ms_params_load(tv->ps, &f, tv->prefix);
    free(f.e);
    if (!rc) tv->bn_batches = batches;
    return rc;
}

/* ------------------------------------------------------------------------------------------------ activations */

typedef struct tv_priv {
    int32_t *idx[4];      /* layers 1..3: bias index |Δy|·ws + |Δx| of every (query, key) slot pair, N×N */
    float *stem, *out[4]; /* kept: ms_tinyvit_stage */
    float *ca, *cb, *cc;  /* NCHW scratch (stem, MBConv, mergings, neck) */
    float *tok;           /* tokens of the layer being run (B·H·W, C) */
    float *xw, *lnw, *att, *prj; /* windows (B·nW·N, C); also (B,C,H,W) scratch for the local conv */
    float *qkv;           /* (B·nW·N, 3C) */
    float *sc, *pr;       /* scores and probabilities (B·nW, heads, N, N) */
    float *hid;           /* MLP hidden (B·H·W, ratio·C) */
    float *mean, *rstd;   /* LayerNorm statistics (rows) */
    float *biasT, *abT, *ab; /* the bias table expanded to (heads, N, N) */
} tv_priv;

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

void ms_tinyvit_free(ms_tinyvit *tv)
{
    ms_arena_free(&tv->arena);
    free(tv->priv);
    tv->priv = NULL;
}

/* Buffer sizes for batch B: the maxima over all layers (forward only, so scratch is shared between layers). */
static void tv_plan(const ms_tinyvit *tv, tv_priv *p, ms_plan *pl, int64_t B)
{
    const ms_tinyvit_config *c = &tv->cfg;
    int64_t S = c->img_size, g0 = ms_tinyvit_grid(c, 0), C0 = c->dims[0];
    int64_t nchw = max64(B * (C0 / 2) * (S / 2) * (S / 2), B * C0 * c->mbconv_expand * g0 * g0);
    int64_t tok = 0, win = 0, qkv = 0, sc = 0, hid = 0, rows = 0, tab = 0;
    for (int i = 0; i < 4; i++) {
        int64_t g = ms_tinyvit_grid(c, i), C = c->dims[i];
        if (i < 3) { /* merging: conv1 at the input grid, conv2/conv3 at the output grid */
            int64_t go = ms_tinyvit_grid(c, i + 1), O = c->dims[i + 1];
            nchw = max64(nchw, max64(B * O * g * g, B * max64(C, O) * g * g));
            tok = max64(tok, B * O * go * go);
        }
        if (i == 0) continue;
        int64_t ws = c->windows[i], nw = (g + ws - 1) / ws, N = ws * ws, Bw = B * nw * nw;
        tok = max64(tok, B * g * g * C);
        win = max64(win, Bw * N * C);
        qkv = max64(qkv, Bw * N * 3 * C);
        sc = max64(sc, Bw * c->heads[i] * N * N);
        hid = max64(hid, B * g * g * C * c->mlp_ratio);
        rows = max64(rows, Bw * N);
        tab = max64(tab, c->heads[i] * N * N);
    }
    int64_t g4 = ms_tinyvit_grid(c, 4);
    nchw = max64(nchw, B * max64(c->out_chans, c->dims[3]) * g4 * g4);
    rows = max64(rows, B * g4 * g4);
    ms_plan_add_f32(pl, &p->stem, B * C0 * g0 * g0);
    for (int i = 0; i < 4; i++) {
        int64_t go = ms_tinyvit_grid(c, i < 3 ? i + 1 : 3);
        ms_plan_add_f32(pl, &p->out[i], B * go * go * c->dims[i < 3 ? i + 1 : 3]);
        if (i) ms_plan_add_i32(pl, &p->idx[i], (int64_t)c->windows[i] * c->windows[i] * c->windows[i] * c->windows[i]);
    }
    float **scratch[] = {&p->ca, &p->cb, &p->cc};
    for (int i = 0; i < 3; i++) ms_plan_add_f32(pl, scratch[i], nchw);
    ms_plan_add_f32(pl, &p->tok, tok);
    float **w[] = {&p->xw, &p->lnw, &p->att, &p->prj};
    for (int i = 0; i < 4; i++) ms_plan_add_f32(pl, w[i], win);
    ms_plan_add_f32(pl, &p->qkv, qkv);
    ms_plan_add_f32(pl, &p->sc, sc);
    ms_plan_add_f32(pl, &p->pr, sc);
    ms_plan_add_f32(pl, &p->hid, hid);
    ms_plan_add_f32(pl, &p->mean, rows);
    ms_plan_add_f32(pl, &p->rstd, rows);
    ms_plan_add_f32(pl, &p->biasT, tab);
    ms_plan_add_f32(pl, &p->abT, tab);
    ms_plan_add_f32(pl, &p->ab, tab);
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
    MS_FAIL_IF(with_backward, MS_EUNSUPPORTED, "TinyViT: no backward yet");
    tv->with_backward = 0;
    ms_plan pl = {0};
    tv_plan(tv, p, &pl, max_batch);
    ms_status rc = ms_plan_alloc(&pl, tv->dev, &tv->arena);
    ms_plan_free(&pl);
    for (int i = 1; i < 4 && !rc; i++) rc = tv_bias_index(tv->dev, p->idx[i], tv->cfg.windows[i]);
    if (rc) ms_tinyvit_free(tv);
    return rc;
}

/* ------------------------------------------------------------------------------------------------ forward */

static const float *tv_p(const ms_tinyvit *tv, int idx) { return ms_params_data(tv->ps, idx); }

/* Conv2d_BN: y = BN(conv(x)) with the running statistics; groups = 1 or Cin (depthwise). act: then GELU. */
static ms_status tv_cbn(ms_tinyvit *tv, const ms_tinyvit_cbn *u, float *y, const float *x, int64_t B, int64_t Cin,
                        int64_t H, int64_t Cout, int ks, int stride, int depthwise, int act)
{
    ms_device *dev = tv->dev;
    int pad = ks / 2;
    if (depthwise) MS_TRY(ms_dwconv2d_forward(dev, y, x, tv_p(tv, u->w), NULL, B, Cin, H, H, ks, pad, stride));
    else MS_TRY(ms_conv2d_forward(dev, y, x, tv_p(tv, u->w), NULL, B, Cin, H, H, Cout, ks, pad, stride));
    int64_t Ho = ms_conv_out_size(H, ks, pad, stride);
    MS_TRY(ms_batchnorm_forward(dev, y, NULL, NULL, y, tv_p(tv, u->g), tv_p(tv, u->b), (float *)tv_p(tv, u->mean),
                                (float *)tv_p(tv, u->var), B, Cout, Ho * Ho, TV_BN_EPS, 0.f, 0));
    return act ? ms_gelu_forward(dev, y, y, B * Cout * Ho * Ho) : MS_OK;
}

/* MBConv on ca (B,C,g,g) in place: GELU(x + BN(conv3(GELU(BN(dw(GELU(BN(conv1(x))))))))). */
static ms_status tv_mbconv(ms_tinyvit *tv, const ms_tinyvit_cbn *u, int64_t B, int64_t C, int64_t g)
{
    tv_priv *p = tv->priv;
    int64_t hid = C * tv->cfg.mbconv_expand;
    MS_TRY(tv_cbn(tv, &u[0], p->cb, p->ca, B, C, g, hid, 1, 1, 0, 1));
    MS_TRY(tv_cbn(tv, &u[1], p->cc, p->cb, B, hid, g, hid, 3, 1, 1, 1));
    MS_TRY(tv_cbn(tv, &u[2], p->cb, p->cc, B, hid, g, C, 1, 1, 0, 0));
    MS_TRY(ms_add_forward(tv->dev, p->ca, p->ca, p->cb, B * C * g * g));
    return ms_gelu_forward(tv->dev, p->ca, p->ca, B * C * g * g);
}

/* PatchMerging i: x (B,C,g,g) in ca → tokens (B, go·go, O) in out. */
static ms_status tv_merge(ms_tinyvit *tv, int i, int64_t B, float *out)
{
    tv_priv *p = tv->priv;
    const ms_tinyvit_config *c = &tv->cfg;
    int64_t C = c->dims[i], O = c->dims[i + 1], g = ms_tinyvit_grid(c, i), go = ms_tinyvit_grid(c, i + 1);
    MS_TRY(tv_cbn(tv, &tv->merge[i][0], p->cb, p->ca, B, C, g, O, 1, 1, 0, 1));
    MS_TRY(tv_cbn(tv, &tv->merge[i][1], p->cc, p->cb, B, O, g, O, 3, c->merge_stride[i], 1, 1));
    MS_TRY(tv_cbn(tv, &tv->merge[i][2], p->cb, p->cc, B, O, go, O, 1, 1, 0, 0));
    return ms_transpose_forward(tv->dev, out, p->cb, B, O, go * go); /* x.flatten(2).transpose(1, 2) */
}

/* Window attention of one block on tok (B, g·g, C): tok += crop(proj(attn(LN(partition(tok))))). The attention is
 * written out with GEMMs (no fused op takes an additive bias table yet): per head, S = scale·q·kᵀ for every window
 * at once, S += bias (broadcast over windows), P = softmax(S), out = P·v. */
static ms_status tv_attention(ms_tinyvit *tv, const ms_tinyvit_block *b, int i, int64_t B)
{
    tv_priv *p = tv->priv;
    ms_device *dev = tv->dev;
    const ms_tinyvit_config *c = &tv->cfg;
    int64_t g = ms_tinyvit_grid(c, i), C = c->dims[i], nh = c->heads[i], hd = C / nh, ws = c->windows[i];
    int64_t nw = (g + ws - 1) / ws, N = ws * ws, Bw = B * nw * nw, R = Bw * N;
    MS_TRY(ms_window_partition_forward(dev, p->xw, p->tok, B, g, g, C, (int)ws));
    MS_TRY(ms_layernorm_forward(dev, p->lnw, p->mean, p->rstd, p->xw, tv_p(tv, b->norm_w), tv_p(tv, b->norm_b), R, C,
                                TV_LN_EPS));
    MS_TRY(ms_linear_forward(dev, p->qkv, p->lnw, tv_p(tv, b->qkv_w), tv_p(tv, b->qkv_b), R, C, 3 * C));
    /* ab[h, n, m] = attention_biases[h, idx[n, m]]: rows of the transposed table gathered, then transposed back */
    MS_TRY(ms_transpose_forward(dev, p->biasT, tv_p(tv, b->ab), 1, nh, N));
    MS_TRY(ms_gather_rows_forward(dev, p->abT, p->biasT, p->idx[i], N * N, nh));
    MS_TRY(ms_transpose_forward(dev, p->ab, p->abT, 1, N * N, nh));
    for (int64_t h = 0; h < nh; h++) {
        ms_matmul_desc d = ms_matmul_plain(N, N, hd); /* S_h = scale · q_h k_hᵀ, q/k/v of head h side by side */
        d.trans_b = 1;
        d.lda = d.ldb = 3 * C;
        d.ldc = N;
        d.batch = Bw;
        d.stride_a = d.stride_b = N * 3 * C;
        d.stride_c = nh * N * N;
        d.alpha = 1.0f / sqrtf((float)hd);
        MS_TRY(ms_matmul_forward(dev, p->sc + h * N * N, p->qkv + h * 3 * hd, p->qkv + h * 3 * hd + hd, &d));
    }
    MS_TRY(ms_add_bcast_forward(dev, p->sc, p->sc, p->ab, Bw, nh * N * N));
    MS_TRY(ms_softmax_forward(dev, p->pr, p->sc, Bw * nh * N, N));
    for (int64_t h = 0; h < nh; h++) {
        ms_matmul_desc d = ms_matmul_plain(N, hd, N); /* out[:, h·hd:(h+1)·hd] = P_h v_h */
        d.lda = N;
        d.ldb = 3 * C;
        d.ldc = C;
        d.batch = Bw;
        d.stride_a = nh * N * N;
        d.stride_b = N * 3 * C;
        d.stride_c = N * C;
        MS_TRY(ms_matmul_forward(dev, p->att + h * hd, p->pr + h * N * N, p->qkv + h * 3 * hd + 2 * hd, &d));
    }
    MS_TRY(ms_linear_forward(dev, p->prj, p->att, tv_p(tv, b->proj_w), tv_p(tv, b->proj_b), R, C, C));
    MS_TRY(ms_window_unpartition_forward(dev, p->xw, p->prj, B, g, g, C, (int)ws));
    return ms_add_forward(dev, p->tok, p->tok, p->xw, B * g * g * C);
}

/* TinyViTBlock j of layer i on tok (B, g·g, C), in place. */
static ms_status tv_block(ms_tinyvit *tv, int i, int j, int64_t B)
{
    tv_priv *p = tv->priv;
    ms_device *dev = tv->dev;
    const ms_tinyvit_config *c = &tv->cfg;
    const ms_tinyvit_block *b = &tv->blk[i][j];
    int64_t g = ms_tinyvit_grid(c, i), C = c->dims[i], L = g * g, M = B * L, H = C * c->mlp_ratio;
    MS_TRY(tv_attention(tv, b, i, B));
    /* local conv on the grid, no residual: tokens → (B,C,g,g) → dw conv + BN → tokens */
    MS_TRY(ms_transpose_forward(dev, p->xw, p->tok, B, L, C));
    MS_TRY(tv_cbn(tv, &b->local, p->lnw, p->xw, B, C, g, C, c->local_conv, 1, 1, 0));
    MS_TRY(ms_transpose_forward(dev, p->tok, p->lnw, B, C, L));
    MS_TRY(ms_layernorm_forward(dev, p->lnw, p->mean, p->rstd, p->tok, tv_p(tv, b->mnorm_w), tv_p(tv, b->mnorm_b), M, C,
                                TV_LN_EPS));
    MS_TRY(ms_linear_forward(dev, p->hid, p->lnw, tv_p(tv, b->fc1_w), tv_p(tv, b->fc1_b), M, C, H));
    MS_TRY(ms_gelu_forward(dev, p->hid, p->hid, M * H));
    MS_TRY(ms_linear_forward(dev, p->att, p->hid, tv_p(tv, b->fc2_w), tv_p(tv, b->fc2_b), M, H, C));
    return ms_add_forward(dev, p->tok, p->tok, p->att, M * C);
}

/* neck: tokens (B, g·g, C3) → emb (B, out, g, g) */
static ms_status tv_neck(ms_tinyvit *tv, const float *tok, int64_t B, float *emb)
{
    tv_priv *p = tv->priv;
    ms_device *dev = tv->dev;
    const ms_tinyvit_config *c = &tv->cfg;
    int64_t g = ms_tinyvit_grid(c, 4), C = c->dims[3], O = c->out_chans, L = g * g;
    MS_TRY(ms_transpose_forward(dev, p->ca, tok, B, L, C));
    MS_TRY(ms_conv2d_forward(dev, p->cb, p->ca, tv_p(tv, tv->neck0_w), NULL, B, C, g, g, O, 1, 0, 1));
    MS_TRY(ms_layernorm2d_forward(dev, p->ca, p->mean, p->rstd, p->cb, tv_p(tv, tv->neck1_w), tv_p(tv, tv->neck1_b), B,
                                  O, L, TV_LN2D_EPS));
    MS_TRY(ms_conv2d_forward(dev, p->cb, p->ca, tv_p(tv, tv->neck2_w), NULL, B, O, g, g, O, 3, 1, 1));
    return ms_layernorm2d_forward(dev, emb, p->mean, p->rstd, p->cb, tv_p(tv, tv->neck3_w), tv_p(tv, tv->neck3_b), B, O,
                                  L, TV_LN2D_EPS);
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
    MS_TRY(tv_cbn(tv, &tv->stem[0], p->cb, x, B, c->in_chans, S, C0 / 2, 3, 2, 0, 1));
    MS_TRY(tv_cbn(tv, &tv->stem[1], p->stem, p->cb, B, C0 / 2, S / 2, C0, 3, 2, 0, 0));
    MS_TRY(ms_dev_copy(dev, p->ca, p->stem, (size_t)(B * C0 * g0 * g0) * sizeof(float)));
    for (int j = 0; j < c->depths[0]; j++) MS_TRY(tv_mbconv(tv, tv->mb[j], B, C0, g0));
    MS_TRY(tv_merge(tv, 0, B, p->out[0]));
    for (int i = 1; i < 4; i++) {
        int64_t g = ms_tinyvit_grid(c, i), C = c->dims[i];
        MS_TRY(ms_dev_copy(dev, p->tok, p->out[i - 1], (size_t)(B * g * g * C) * sizeof(float)));
        for (int j = 0; j < c->depths[i]; j++) MS_TRY(tv_block(tv, i, j, B));
        if (i == 3) MS_TRY(ms_dev_copy(dev, p->out[3], p->tok, (size_t)(B * g * g * C) * sizeof(float)));
        else {
            MS_TRY(ms_transpose_forward(dev, p->ca, p->tok, B, g * g, C)); /* merging works on the grid */
            MS_TRY(tv_merge(tv, i, B, p->out[i]));
        }
    }
    MS_TRY(tv_neck(tv, p->out[3], B, emb));
    tv->batch = B;
    return MS_OK;
}

const float *ms_tinyvit_stage(const ms_tinyvit *tv, int stage)
{
    const tv_priv *p = tv->priv;
    if (!p || !tv->batch || stage < -1 || stage > 3) return NULL;
    return stage < 0 ? p->stem : p->out[stage];
}

/* ------------------------------------------------------------------------------------------------ training (stubs) */

ms_status ms_tinyvit_add_peft(ms_tinyvit *tv, const ms_tinyvit_peft *pf)
{
    (void)tv; (void)pf;
    MS_FAIL(MS_EUNSUPPORTED, "TinyViT: PEFT not implemented yet");
}

ms_status ms_tinyvit_init_random(ms_tinyvit *tv, uint64_t seed)
{
    (void)tv; (void)seed;
    MS_FAIL(MS_EUNSUPPORTED, "TinyViT: random initialisation not implemented yet");
}

ms_status ms_tinyvit_peft_init_random(ms_tinyvit *tv, uint64_t seed)
{
    (void)tv; (void)seed;
    MS_FAIL(MS_EUNSUPPORTED, "TinyViT: PEFT not implemented yet");
}

ms_status ms_tinyvit_backward(ms_tinyvit *tv, const float *demb, const float *dtok, float *dx)
{
    (void)tv; (void)demb; (void)dtok; (void)dx;
    MS_FAIL(MS_EUNSUPPORTED, "TinyViT: no backward yet");
}
