/* pretrain/mae_decoder.c — see mae_decoder.h. Activations live in one arena sized by ms_mae_decoder_reserve; the
 * backward walks the blocks in reverse with a handful of reused gradient buffers.
 * ref: facebookresearch/mae models_mae.py forward_decoder/forward_loss @efb2a80 (docs/MAE.md). */
#include "mae_decoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "ops.h"

typedef struct {
    float *tokens, *lnin, *mean_in, *rstd_in, *src, *pos;
    float *x[MS_MAE_MAX_DEPTH + 1];
    float *ln1[MS_MAE_MAX_DEPTH], *m1[MS_MAE_MAX_DEPTH], *r1[MS_MAE_MAX_DEPTH], *qkv[MS_MAE_MAX_DEPTH],
        *att[MS_MAE_MAX_DEPTH], *lse[MS_MAE_MAX_DEPTH], *mid[MS_MAE_MAX_DEPTH], *ln2[MS_MAE_MAX_DEPTH],
        *m2[MS_MAE_MAX_DEPTH], *r2[MS_MAE_MAX_DEPTH], *h1[MS_MAE_MAX_DEPTH], *g1[MS_MAE_MAX_DEPTH];
    float *lnf, *mf, *rf, *pred;
    float *d_a, *d_b, *d_c, *d_big1, *d_big2, *d_qkv, *d_src, *d_lnin;
    int32_t *gather_idx; /* device (B·L) */
    int32_t *host_idx;
} dec_priv;

static int add_param(ms_params *ps, const char *prefix, const char *name, int64_t a, int64_t b, int nd, int no_decay)
{
    char full[MS_PARAM_NAME_MAX];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    int64_t shape[3] = {a, b, 0};
    if (nd == 3) { shape[0] = 1; shape[1] = 1; shape[2] = a; }
    return ms_params_add(ps, full, shape, nd, no_decay);
}

ms_status ms_mae_decoder_init(ms_mae_decoder *d, const ms_mae_dec_config *cfg, ms_params *ps, const char *prefix)
{
    memset(d, 0, sizeof *d);
    MS_FAIL_IF(cfg->depth < 1 || cfg->depth > MS_MAE_MAX_DEPTH, MS_EINVAL, "--decoder-depth must be 1..%d",
               MS_MAE_MAX_DEPTH);
    MS_FAIL_IF(cfg->n_heads < 1 || cfg->dim % cfg->n_heads, MS_EINVAL,
               "--decoder-dim %d is not a multiple of --decoder-heads %d", cfg->dim, cfg->n_heads);
    MS_FAIL_IF(cfg->dim % 4, MS_EINVAL, "--decoder-dim must be a multiple of 4 (sin-cos positions)");
    MS_FAIL_IF(cfg->target_ch != 1 && cfg->target_ch != 3, MS_EINVAL, "decoder target channels must be 1 or 3");
    d->cfg = *cfg;
    d->ps = ps;
    int C = cfg->enc_dim, D = cfg->dim, P = cfg->patch * cfg->patch * cfg->target_ch;
#define ADD(field, name, a, b, nd, nodecay)                                                                         \
    if ((d->field = add_param(ps, prefix, name, a, b, nd, nodecay)) < 0) return MS_EINVAL;
    ADD(norm_in_w, "norm_in.weight", C, 0, 1, 1)
    ADD(norm_in_b, "norm_in.bias", C, 0, 1, 1)
    ADD(embed_w, "embed.weight", D, C, 2, 0)
    ADD(embed_b, "embed.bias", D, 0, 1, 1)
    ADD(mask_token, "mask_token", D, 0, 3, 0)
    for (int i = 0; i < cfg->depth; i++) {
        char n[96];
#define BLK(field, suffix, a, b, nd, nodecay)                                                                       \
    snprintf(n, sizeof n, "blocks.%d.%s", i, suffix);                                                           \
    if ((d->blk[i].field = add_param(ps, prefix, n, a, b, nd, nodecay)) < 0) return MS_EINVAL;
        BLK(n1w, "norm1.weight", D, 0, 1, 1)
        BLK(n1b, "norm1.bias", D, 0, 1, 1)
        BLK(qkvw, "attn.qkv.weight", 3 * D, D, 2, 0)
        BLK(qkvb, "attn.qkv.bias", 3 * D, 0, 1, 1)
        BLK(projw, "attn.proj.weight", D, D, 2, 0)
        BLK(projb, "attn.proj.bias", D, 0, 1, 1)
        BLK(n2w, "norm2.weight", D, 0, 1, 1)
        BLK(n2b, "norm2.bias", D, 0, 1, 1)
        BLK(fc1w, "mlp.fc1.weight", 4 * D, D, 2, 0)
        BLK(fc1b, "mlp.fc1.bias", 4 * D, 0, 1, 1)
        BLK(fc2w, "mlp.fc2.weight", D, 4 * D, 2, 0)
        BLK(fc2b, "mlp.fc2.bias", D, 0, 1, 1)
#undef BLK
    }
    ADD(norm_w, "norm.weight", D, 0, 1, 1)
    ADD(norm_b, "norm.bias", D, 0, 1, 1)
    ADD(pred_w, "pred.weight", P, D, 2, 0)
    ADD(pred_b, "pred.bias", P, 0, 1, 1)
#undef ADD
    return MS_OK;
}

void ms_mae_sincos_2d(float *out, int grid, int dim)
{
    int q = dim / 4;
    for (int i = 0; i < grid; i++)
        for (int j = 0; j < grid; j++) {
            float *o = out + ((size_t)i * grid + j) * dim;
            for (int k = 0; k < q; k++) {
                double w = 1.0 / pow(10000.0, (double)k / q);
                o[k] = (float)sin(j * w);
                o[q + k] = (float)cos(j * w);
                o[2 * q + k] = (float)sin(i * w);
                o[3 * q + k] = (float)cos(i * w);
            }
        }
}

void ms_mae_patchify(const float *img, int B, int S, int patch, int norm_pix, float *target)
{
    int g = S / patch, P = patch * patch;
    for (int b = 0; b < B; b++)
        for (int y = 0; y < g; y++)
            for (int x = 0; x < g; x++) {
                float *t = target + (((size_t)b * g + y) * g + x) * P;
                for (int py = 0; py < patch; py++)
                    for (int px = 0; px < patch; px++)
                        t[py * patch + px] = img[((size_t)b * S + y * patch + py) * S + x * patch + px];
                if (!norm_pix) continue;
                double mean = 0, var = 0;
                for (int k = 0; k < P; k++) mean += t[k];
                mean /= P;
                for (int k = 0; k < P; k++) var += (t[k] - mean) * (t[k] - mean);
                var /= (P - 1); /* torch.var is unbiased (models_mae.py forward_loss) */
                double inv = 1.0 / sqrt(var + 1e-6);
                for (int k = 0; k < P; k++) t[k] = (float)((t[k] - mean) * inv);
            }
}

/* The decoder's activations, then the backward's reused gradient buffers, for max_batch × max_vis visible tokens. */
static void dec_plan(ms_plan *pl, dec_priv *p, const ms_mae_dec_config *c, int max_batch, int max_vis)
{
    int64_t L = (int64_t)c->grid * c->grid, R = (int64_t)max_batch * L, V = (int64_t)max_batch * max_vis;
    int64_t D = c->dim, C = c->enc_dim, P = (int64_t)c->patch * c->patch * c->target_ch, H = c->n_heads;
    ms_plan_add_f32(pl, &p->tokens, V * C);
    ms_plan_add_f32(pl, &p->lnin, V * C);
    ms_plan_add_f32(pl, &p->mean_in, V);
    ms_plan_add_f32(pl, &p->rstd_in, V);
    ms_plan_add_f32(pl, &p->src, (V + 1) * D);
    ms_plan_add_f32(pl, &p->pos, L * D);
    for (int i = 0; i <= c->depth; i++) ms_plan_add_f32(pl, &p->x[i], R * D);
    for (int i = 0; i < c->depth; i++) {
        ms_plan_add_f32(pl, &p->ln1[i], R * D);
        ms_plan_add_f32(pl, &p->m1[i], R);
        ms_plan_add_f32(pl, &p->r1[i], R);
        ms_plan_add_f32(pl, &p->qkv[i], R * 3 * D);
        ms_plan_add_f32(pl, &p->att[i], R * D);
        ms_plan_add_f32(pl, &p->lse[i], R * H);
        ms_plan_add_f32(pl, &p->mid[i], R * D);
        ms_plan_add_f32(pl, &p->ln2[i], R * D);
        ms_plan_add_f32(pl, &p->m2[i], R);
        ms_plan_add_f32(pl, &p->r2[i], R);
        ms_plan_add_f32(pl, &p->h1[i], R * 4 * D);
    }
    for (int i = 0; i < c->depth; i++) ms_plan_add_f32(pl, &p->g1[i], R * 4 * D);
    ms_plan_add_f32(pl, &p->lnf, R * D);
    ms_plan_add_f32(pl, &p->mf, R);
    ms_plan_add_f32(pl, &p->rf, R);
    ms_plan_add_f32(pl, &p->pred, R * P);
    ms_plan_add_f32(pl, &p->d_a, R * D);
    ms_plan_add_f32(pl, &p->d_b, R * D);
    ms_plan_add_f32(pl, &p->d_c, R * D);
    ms_plan_add_f32(pl, &p->d_big1, R * 4 * D);
    ms_plan_add_f32(pl, &p->d_big2, R * 4 * D);
    ms_plan_add_f32(pl, &p->d_qkv, R * 3 * D);
    ms_plan_add_f32(pl, &p->d_src, (V + 1) * D);
    ms_plan_add_f32(pl, &p->d_lnin, V * C);
    ms_plan_add_i32(pl, &p->gather_idx, R);
}

ms_status ms_mae_decoder_activation_bytes(const ms_mae_dec_config *c, int max_batch, int max_vis, size_t *bytes)
{
    dec_priv *p = calloc(1, sizeof *p); /* the plan writes its pointers here; nothing is allocated */
    MS_FAIL_IF(!p, MS_ENOMEM, "out of memory");
    ms_plan pl = {0};
    dec_plan(&pl, p, c, max_batch, max_vis);
    int oom = pl.oom;
    *bytes = ms_plan_bytes(&pl);
    ms_plan_free(&pl);
    free(p);
    MS_FAIL_IF(oom, MS_ENOMEM, "out of memory (arena plan)");
    return MS_OK;
}

ms_status ms_mae_decoder_reserve(ms_mae_decoder *d, ms_device *dev, int max_batch, int max_vis)
{
    const ms_mae_dec_config *c = &d->cfg;
    int64_t L = (int64_t)c->grid * c->grid, R = (int64_t)max_batch * L, D = c->dim;
    dec_priv *p = calloc(1, sizeof *p);
    MS_FAIL_IF(!p, MS_ENOMEM, "out of memory");
    d->priv = p;
    d->dev = dev;
    d->max_batch = max_batch;
    d->max_vis = max_vis;
    ms_plan pl = {0};
    dec_plan(&pl, p, c, max_batch, max_vis);
    ms_status rc = ms_plan_alloc(&pl, dev, &d->arena);
    ms_plan_free(&pl);
    MS_TRY(rc);
    p->host_idx = malloc((size_t)R * sizeof(int32_t));
    float *pos = malloc((size_t)(L * D) * sizeof(float));
    if (!p->host_idx || !pos) { free(pos); MS_FAIL(MS_ENOMEM, "out of memory"); }
    ms_mae_sincos_2d(pos, c->grid, c->dim);
    rc = ms_dev_from_host(dev, p->pos, pos, (size_t)(L * D) * sizeof(float));
    free(pos);
    return rc;
}

void ms_mae_decoder_free(ms_mae_decoder *d)
{
    dec_priv *p = d->priv;
    if (p) free(p->host_idx);
    free(p);
    d->priv = NULL;
    ms_arena_free(&d->arena);
}

const float *ms_mae_decoder_pred(const ms_mae_decoder *d) { return ((dec_priv *)d->priv)->pred; }

static ms_attention_desc attn_desc(const ms_mae_decoder *d, int B)
{
    ms_attention_desc a;
    memset(&a, 0, sizeof a);
    int64_t L = (int64_t)d->cfg.grid * d->cfg.grid, D = d->cfg.dim;
    a.n_groups = B;
    a.n_heads = d->cfg.n_heads;
    a.head_dim = (int)(D / d->cfg.n_heads);
    a.scale = 1.0f / sqrtf((float)a.head_dim);
    a.nq = a.nk = L;
    a.ldq = a.ldk = a.ldv = 3 * D;
    a.ldo = D;
    return a;
}

ms_status ms_mae_decoder_forward(ms_mae_decoder *d, const float *tokens, const int32_t *vis_idx, int B, int n_vis)
{
    dec_priv *p = d->priv;
    MS_FAIL_IF(!p, MS_EBADSTATE, "mae decoder: not reserved");
    MS_FAIL_IF(B < 1 || B > d->max_batch || n_vis < 1 || n_vis > d->max_vis, MS_EINVAL,
               "mae decoder: batch %d x %d visible exceeds the reserved %d x %d", B, n_vis, d->max_batch, d->max_vis);
    const ms_mae_dec_config *c = &d->cfg;
    ms_device *dev = d->dev;
    ms_params *ps = d->ps;
    int64_t L = (int64_t)c->grid * c->grid, R = (int64_t)B * L, V = (int64_t)B * n_vis, D = c->dim,
            C = c->enc_dim, P = (int64_t)c->patch * c->patch * c->target_ch;
    d->batch = B;
    d->n_vis = n_vis;
    /* where each of the B·L grid rows comes from: a visible token's embedding, or the mask token (row V) */
    for (int64_t r = 0; r < R; r++) p->host_idx[r] = (int32_t)V;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < n_vis; i++) {
            int32_t t = vis_idx[(size_t)b * n_vis + i];
            MS_FAIL_IF(t < 0 || t >= L, MS_EINVAL, "mae decoder: visible token index %d outside the %lld-token grid", t,
                       (long long)L);
            p->host_idx[(size_t)b * L + t] = (int32_t)(b * n_vis + i);
        }
    MS_TRY(ms_dev_from_host(dev, p->gather_idx, p->host_idx, (size_t)R * sizeof(int32_t)));
#define W(i) ms_params_data(ps, (i))
    MS_TRY(ms_dev_copy(dev, p->tokens, tokens, (size_t)(V * C) * 4));
    MS_TRY(ms_layernorm_forward(dev, p->lnin, p->mean_in, p->rstd_in, p->tokens, W(d->norm_in_w), W(d->norm_in_b), V,
                                C, 1e-6f));
    MS_TRY(ms_linear_forward(dev, p->src, p->lnin, W(d->embed_w), W(d->embed_b), V, C, D));
    MS_TRY(ms_dev_copy(dev, p->src + V * D, W(d->mask_token), (size_t)D * 4));
    MS_TRY(ms_gather_rows_forward(dev, p->x[0], p->src, p->gather_idx, R, D));
    MS_TRY(ms_add_bcast_forward(dev, p->x[0], p->x[0], p->pos, B, L * D));
    ms_attention_desc ad = attn_desc(d, B);
    for (int i = 0; i < c->depth; i++) {
        MS_TRY(ms_layernorm_forward(dev, p->ln1[i], p->m1[i], p->r1[i], p->x[i], W(d->blk[i].n1w), W(d->blk[i].n1b), R,
                                    D, 1e-6f));
        MS_TRY(ms_linear_forward(dev, p->qkv[i], p->ln1[i], W(d->blk[i].qkvw), W(d->blk[i].qkvb), R, D, 3 * D));
        MS_TRY(ms_attention_forward(dev, p->att[i], p->lse[i], p->qkv[i], p->qkv[i] + D, p->qkv[i] + 2 * D, &ad));
        MS_TRY(ms_linear_forward(dev, p->mid[i], p->att[i], W(d->blk[i].projw), W(d->blk[i].projb), R, D, D));
        MS_TRY(ms_add_forward(dev, p->mid[i], p->mid[i], p->x[i], R * D));
        MS_TRY(ms_layernorm_forward(dev, p->ln2[i], p->m2[i], p->r2[i], p->mid[i], W(d->blk[i].n2w), W(d->blk[i].n2b), R,
                                    D, 1e-6f));
        MS_TRY(ms_linear_forward(dev, p->h1[i], p->ln2[i], W(d->blk[i].fc1w), W(d->blk[i].fc1b), R, D, 4 * D));
        MS_TRY(ms_gelu_forward(dev, p->g1[i], p->h1[i], R * 4 * D));
        MS_TRY(ms_linear_forward(dev, p->x[i + 1], p->g1[i], W(d->blk[i].fc2w), W(d->blk[i].fc2b), R, 4 * D, D));
        MS_TRY(ms_add_forward(dev, p->x[i + 1], p->x[i + 1], p->mid[i], R * D));
    }
    MS_TRY(ms_layernorm_forward(dev, p->lnf, p->mf, p->rf, p->x[c->depth], W(d->norm_w), W(d->norm_b), R, D, 1e-6f));
    return ms_linear_forward(dev, p->pred, p->lnf, W(d->pred_w), W(d->pred_b), R, D, P);
}

ms_status ms_mae_decoder_backward(ms_mae_decoder *d, const float *dpred, float *dtokens)
{
    dec_priv *p = d->priv;
    const ms_mae_dec_config *c = &d->cfg;
    ms_device *dev = d->dev;
    ms_params *ps = d->ps;
    int B = d->batch, n_vis = d->n_vis;
    int64_t L = (int64_t)c->grid * c->grid, R = (int64_t)B * L, V = (int64_t)B * n_vis, D = c->dim,
            C = c->enc_dim, P = (int64_t)c->patch * c->patch * c->target_ch;
#define G(i) ms_params_grad(ps, (i))
    /* d_a: gradient of the current residual stream */
    MS_TRY(ms_dev_zero(dev, p->d_b, (size_t)(R * D) * 4));
    MS_TRY(ms_linear_backward(dev, p->d_b, G(d->pred_w), G(d->pred_b), dpred, p->lnf, W(d->pred_w), R, D, P));
    MS_TRY(ms_dev_zero(dev, p->d_a, (size_t)(R * D) * 4));
    MS_TRY(ms_layernorm_backward(dev, p->d_a, G(d->norm_w), G(d->norm_b), p->d_b, p->x[c->depth], W(d->norm_w), p->mf,
                                 p->rf, R, D));
    ms_attention_desc ad = attn_desc(d, B);
    for (int i = c->depth - 1; i >= 0; i--) {
        /* x[i+1] = mid + fc2(gelu(fc1(ln2(mid)))) */
        MS_TRY(ms_dev_zero(dev, p->d_big1, (size_t)(R * 4 * D) * 4));
        MS_TRY(ms_linear_backward(dev, p->d_big1, G(d->blk[i].fc2w), G(d->blk[i].fc2b), p->d_a, p->g1[i],
                                  W(d->blk[i].fc2w), R, 4 * D, D));
        MS_TRY(ms_dev_zero(dev, p->d_big2, (size_t)(R * 4 * D) * 4));
        MS_TRY(ms_gelu_backward(dev, p->d_big2, p->d_big1, p->h1[i], R * 4 * D));
        MS_TRY(ms_dev_zero(dev, p->d_b, (size_t)(R * D) * 4));
        MS_TRY(ms_linear_backward(dev, p->d_b, G(d->blk[i].fc1w), G(d->blk[i].fc1b), p->d_big2, p->ln2[i],
                                  W(d->blk[i].fc1w), R, D, 4 * D));
        /* d mid = d x[i+1] (residual, already in d_a) + LN2 backward */
        MS_TRY(ms_layernorm_backward(dev, p->d_a, G(d->blk[i].n2w), G(d->blk[i].n2b), p->d_b, p->mid[i],
                                     W(d->blk[i].n2w), p->m2[i], p->r2[i], R, D));
        /* mid = x[i] + proj(att) */
        MS_TRY(ms_dev_zero(dev, p->d_c, (size_t)(R * D) * 4));
        MS_TRY(ms_linear_backward(dev, p->d_c, G(d->blk[i].projw), G(d->blk[i].projb), p->d_a, p->att[i],
                                  W(d->blk[i].projw), R, D, D));
        MS_TRY(ms_dev_zero(dev, p->d_qkv, (size_t)(R * 3 * D) * 4));
        MS_TRY(ms_attention_backward(dev, p->d_qkv, p->d_qkv + D, p->d_qkv + 2 * D, NULL, NULL, p->d_c, p->att[i],
                                     p->lse[i], p->qkv[i], p->qkv[i] + D, p->qkv[i] + 2 * D, &ad));
        MS_TRY(ms_dev_zero(dev, p->d_b, (size_t)(R * D) * 4));
        MS_TRY(ms_linear_backward(dev, p->d_b, G(d->blk[i].qkvw), G(d->blk[i].qkvb), p->d_qkv, p->ln1[i],
                                  W(d->blk[i].qkvw), R, D, 3 * D));
        /* d x[i] = d mid (residual, d_a) + LN1 backward */
        MS_TRY(ms_layernorm_backward(dev, p->d_a, G(d->blk[i].n1w), G(d->blk[i].n1b), p->d_b, p->x[i], W(d->blk[i].n1w),
                                     p->m1[i], p->r1[i], R, D));
    }
    /* x[0] = gather(src) + pos (fixed) */
    MS_TRY(ms_dev_zero(dev, p->d_src, (size_t)((V + 1) * D) * 4));
    MS_TRY(ms_gather_rows_backward(dev, p->d_src, p->d_a, p->gather_idx, R, D, V + 1));
    float *gmask = G(d->mask_token);
    if (gmask) MS_TRY(ms_add_forward(dev, gmask, gmask, p->d_src + V * D, D));
    MS_TRY(ms_dev_zero(dev, p->d_lnin, (size_t)(V * C) * 4));
    MS_TRY(ms_linear_backward(dev, p->d_lnin, G(d->embed_w), G(d->embed_b), p->d_src, p->lnin, W(d->embed_w), V, C, D));
    if (dtokens || G(d->norm_in_w) || G(d->norm_in_b))
        MS_TRY(ms_layernorm_backward(dev, dtokens, G(d->norm_in_w), G(d->norm_in_b), p->d_lnin, p->tokens,
                                     W(d->norm_in_w), p->mean_in, p->rstd_in, V, C));
#undef G
#undef W
    return MS_OK;
}

ms_status ms_mae_decoder_init_weights(ms_mae_decoder *d, uint64_t seed)
{
    ms_params *ps = d->ps;
    int64_t maxn = 0;
    for (int i = 0; i < ps->n; i++) if (ps->p[i].numel > maxn) maxn = ps->p[i].numel;
    float *tmp = malloc((size_t)(maxn ? maxn : 1) * sizeof(float));
    MS_FAIL_IF(!tmp, MS_ENOMEM, "out of memory");
    int ids[8 + 12 * MS_MAE_MAX_DEPTH], n = 0;
    ids[n++] = d->norm_in_w; ids[n++] = d->norm_in_b; ids[n++] = d->embed_w; ids[n++] = d->embed_b;
    ids[n++] = d->mask_token; ids[n++] = d->norm_w; ids[n++] = d->norm_b; ids[n++] = d->pred_w;
    ids[n++] = d->pred_b;
    for (int i = 0; i < d->cfg.depth; i++) {
        int *f = &d->blk[i].n1w;
        for (int k = 0; k < 12; k++) ids[n++] = f[k];
    }
    ms_status rc = MS_OK;
    for (int k = 0; k < n && !rc; k++) {
        const ms_param *p = &ps->p[ids[k]];
        ms_rng r;
        ms_rng_init(&r, seed, (uint64_t)ids[k] + 0x6d6165ull);
        size_t len = strlen(p->name);
        int is_w = len > 7 && !strcmp(p->name + len - 7, ".weight");
        if (strstr(p->name, "mask_token")) {
            for (int64_t i = 0; i < p->numel; i++) tmp[i] = 0.02f * ms_rng_normal(&r);
        } else if (p->ndim == 2) { /* xavier uniform: fused qkv counts as one (3D x D) matrix, as MAE does */
            float a = sqrtf(6.f / (float)(p->shape[0] + p->shape[1]));
            for (int64_t i = 0; i < p->numel; i++) tmp[i] = ms_rng_range(&r, -a, a);
        } else {
            float v = is_w && !strstr(p->name, "embed") ? 1.f : 0.f; /* LN gamma 1, every bias 0 */
            for (int64_t i = 0; i < p->numel; i++) tmp[i] = v;
        }
        rc = ms_dev_from_host(ps->dev, ps->data + p->off, tmp, (size_t)p->numel * sizeof(float));
    }
    free(tmp);
    return rc;
}
