/* pretrain/sam_encoder_config.c — which SAM encoder: the named variants, the variant read off a state dict's
 * shapes, the derived fields of a hand-written config, and the input size the encoder runs at. Variant numbers from
 * segment_anything/build_sam.py (build_sam_vit_b/l/h); see docs/MODEL.md. */
#include "sam_encoder.h"

#include <stdio.h>
#include <string.h>

ms_status ms_sam_enc_config_check(ms_sam_enc_config *c)
{
    MS_FAIL_IF(c->patch <= 0 || c->img_size <= 0 || c->img_size % c->patch, MS_EINVAL,
               "sam encoder: image size %d is not a multiple of the patch size %d", c->img_size, c->patch);
    MS_FAIL_IF(c->embed_dim <= 0 || c->n_heads <= 0 || c->embed_dim % c->n_heads, MS_EINVAL,
               "sam encoder: embedding dim %d is not a multiple of %d heads", c->embed_dim, c->n_heads);
    MS_FAIL_IF(c->depth <= 0 || c->depth > MS_SAM_MAX_DEPTH, MS_EINVAL, "sam encoder: depth %d out of range 1..%d",
               c->depth, MS_SAM_MAX_DEPTH);
    MS_FAIL_IF(c->n_global < 0 || c->n_global > c->depth, MS_EINVAL, "sam encoder: %d global blocks", c->n_global);
    for (int i = 0; i < c->n_global; i++)
        MS_FAIL_IF(c->global_idx[i] < 0 || c->global_idx[i] >= c->depth, MS_EINVAL,
                   "sam encoder: global block index %d out of range", c->global_idx[i]);
    MS_FAIL_IF(c->window < 0, MS_EINVAL, "sam encoder: window %d", c->window);
    MS_FAIL_IF(c->window == 0 && c->n_global != c->depth, MS_EINVAL,
               "sam encoder: window 0 needs every block global");
    if (!c->in_chans) c->in_chans = 3;
    if (!c->head_dim) c->head_dim = c->embed_dim / c->n_heads;
    MS_FAIL_IF(c->head_dim * c->n_heads != c->embed_dim, MS_EINVAL, "sam encoder: head dim %d × %d heads != %d",
               c->head_dim, c->n_heads, c->embed_dim);
    if (!c->mlp_dim) c->mlp_dim = 4 * c->embed_dim;
    if (!c->out_chans) c->out_chans = 256;
    if (!(c->eps > 0)) c->eps = 1e-6f;
    int g = c->img_size / c->patch;
    if (!c->rel_len_global) c->rel_len_global = 2 * g - 1;
    if (!c->rel_len_window && c->window) c->rel_len_window = 2 * c->window - 1;
    MS_FAIL_IF(c->rel_len_global <= 0 || (c->window && c->rel_len_window <= 0), MS_EINVAL,
               "sam encoder: bad rel-pos table length");
    return MS_OK;
}

int ms_sam_enc_block_is_global(const ms_sam_enc_config *c, int i)
{
    for (int k = 0; k < c->n_global; k++)
        if (c->global_idx[k] == i) return 1;
    return 0;
}

ms_status ms_sam_enc_config_named(const char *name, ms_sam_enc_config *c)
{
    memset(c, 0, sizeof *c);
    c->img_size = 1024;
    c->patch = 16;
    c->window = 14;
    c->out_chans = 256;
    c->n_global = 4;
    int d, depth, heads, gi[4];
    if (!strcmp(name, "vit_b")) { d = 768; depth = 12; heads = 12; gi[0] = 2; gi[1] = 5; gi[2] = 8; gi[3] = 11; }
    else if (!strcmp(name, "vit_l")) { d = 1024; depth = 24; heads = 16; gi[0] = 5; gi[1] = 11; gi[2] = 17; gi[3] = 23; }
    else if (!strcmp(name, "vit_h")) { d = 1280; depth = 32; heads = 16; gi[0] = 7; gi[1] = 15; gi[2] = 23; gi[3] = 31; }
    else if (!strcmp(name, "vit_test")) {
        d = 192; depth = 4; heads = 3; c->img_size = 256; c->n_global = 2; gi[0] = 1; gi[1] = 3;
    } else
        MS_FAIL(MS_EINVAL, "%s: unknown model (vit_b, vit_l, vit_h, vit_test)", name);
    c->embed_dim = d;
    c->depth = depth;
    c->n_heads = heads;
    for (int i = 0; i < c->n_global; i++) c->global_idx[i] = gi[i];
    return ms_sam_enc_config_check(c);
}

static ms_status sd_get(const ms_state_dict *sd, const char *prefix, const char *key, int ndim,
                        const ms_sd_entry **out)
{
    char name[MS_PARAM_NAME_MAX + 64];
    snprintf(name, sizeof name, "%s%s", prefix, key);
    *out = ms_sd_find(sd, name);
    MS_FAIL_IF(!*out, MS_ENOTFOUND, "%s: missing (needed to detect the encoder variant)", name);
    MS_FAIL_IF((*out)->t.ndim != ndim, MS_ESHAPE, "%s: %d dims, expected %d", name, (*out)->t.ndim, ndim);
    return MS_OK;
}

ms_status ms_sam_enc_config_from_sd(const ms_state_dict *sd, const char *prefix, ms_sam_enc_config *c)
{
    memset(c, 0, sizeof *c);
    const ms_sd_entry *pw, *pos, *n0, *r, *l1;
    MS_TRY(sd_get(sd, prefix, "patch_embed.proj.weight", 4, &pw));
    MS_TRY(sd_get(sd, prefix, "pos_embed", 4, &pos));
    MS_TRY(sd_get(sd, prefix, "neck.0.weight", 4, &n0));
    MS_TRY(sd_get(sd, prefix, "blocks.0.mlp.lin1.weight", 2, &l1));
    c->mlp_dim = (int)l1->t.shape[0];
    c->embed_dim = (int)pw->t.shape[0];
    c->in_chans = (int)pw->t.shape[1];
    c->patch = (int)pw->t.shape[2];
    MS_FAIL_IF(pw->t.shape[3] != pw->t.shape[2], MS_EUNSUPPORTED, "%spatch_embed.proj.weight: non-square patch",
               prefix);
    MS_FAIL_IF(pos->t.shape[1] != pos->t.shape[2] || pos->t.shape[3] != c->embed_dim, MS_EUNSUPPORTED,
               "%spos_embed: shape not (1, g, g, %d)", prefix, c->embed_dim);
    int g = (int)pos->t.shape[1];
    c->img_size = g * c->patch;
    c->out_chans = (int)n0->t.shape[0];
    /* depth = number of consecutive blocks.i.norm1.weight keys */
    int depth = 0;
    for (;; depth++) {
        char key[64], name[MS_PARAM_NAME_MAX + 64];
        snprintf(key, sizeof key, "blocks.%d.norm1.weight", depth);
        snprintf(name, sizeof name, "%s%s", prefix, key);
        if (!ms_sd_find(sd, name)) break;
        MS_FAIL_IF(depth >= MS_SAM_MAX_DEPTH, MS_EUNSUPPORTED, "%sblocks: more than %d blocks", prefix,
                   MS_SAM_MAX_DEPTH);
    }
    MS_FAIL_IF(!depth, MS_EFORMAT, "%sblocks.0.norm1.weight: missing (no encoder blocks)", prefix);
    c->depth = depth;
    int len[MS_SAM_MAX_DEPTH];
    for (int i = 0; i < depth; i++) {
        char key[64];
        snprintf(key, sizeof key, "blocks.%d.attn.rel_pos_h", i);
        MS_TRY(sd_get(sd, prefix, key, 2, &r));
        if (i == 0) c->head_dim = (int)r->t.shape[1];
        MS_FAIL_IF(r->t.shape[1] != c->head_dim, MS_EFORMAT, "%s%s: head dim %lld, block 0 has %d", prefix, key,
                   (long long)r->t.shape[1], c->head_dim);
        len[i] = (int)r->t.shape[0];
    }
    MS_FAIL_IF(c->head_dim <= 0 || c->embed_dim % c->head_dim, MS_EFORMAT,
               "%sblocks.0.attn.rel_pos_h: head dim %d does not divide %d", prefix, c->head_dim, c->embed_dim);
    c->n_heads = c->embed_dim / c->head_dim;
    /* Global blocks have the table length that differs from the windowed ones: 2g−1 if present, else the larger. */
    int la = len[0], lb = -1;
    for (int i = 1; i < depth; i++)
        if (len[i] != la) {
            if (lb < 0) lb = len[i];
            else MS_FAIL_IF(len[i] != lb, MS_EFORMAT, "%sblocks.%d.attn.rel_pos_h: a third table length %d", prefix,
                            i, len[i]);
        }
    int lglob, lwin;
    if (lb < 0) {
        if (la == 2 * g - 1) { lglob = la; lwin = -1; }
        else { lglob = -1; lwin = la; }
    } else if (la == 2 * g - 1 || (lb != 2 * g - 1 && la > lb)) { lglob = la; lwin = lb; }
    else { lglob = lb; lwin = la; }
    c->n_global = 0;
    for (int i = 0; i < depth; i++)
        if (len[i] == lglob) c->global_idx[c->n_global++] = i;
    c->rel_len_global = lglob > 0 ? lglob : 2 * g - 1;
    if (lwin > 0) {
        MS_FAIL_IF(!(lwin & 1), MS_EFORMAT, "%s: windowed rel-pos table length %d is even", prefix, lwin);
        c->window = (lwin + 1) / 2;
        c->rel_len_window = lwin;
    }
    c->eps = 1e-6f;
    return ms_sam_enc_config_check(c);
}

int64_t ms_sam_enc_numel(const ms_sam_enc_config *c)
{
    int64_t D = c->embed_dim, g = c->img_size / c->patch, M = c->mlp_dim, C = c->out_chans;
    int64_t n = g * g * D + D * c->in_chans * c->patch * c->patch + D;
    for (int i = 0; i < c->depth; i++) {
        int64_t L = ms_sam_enc_block_is_global(c, i) ? c->rel_len_global : c->rel_len_window;
        n += 4 * D + 2 * L * c->head_dim + 3 * D * D + 3 * D + D * D + D + M * D + M + D * M + D;
    }
    return n + C * D + 2 * C + C * C * 9 + 2 * C;
}

ms_status ms_sam_encoder_set_input_size(ms_sam_encoder *enc, int S)
{
    const ms_sam_enc_config *c = &enc->cfg;
    MS_FAIL_IF(enc->priv, MS_EBADSTATE, "sam encoder: set the input size before ms_sam_encoder_reserve");
    MS_FAIL_IF(S <= 0 || S % c->patch, MS_EINVAL, "--input-size %d is not a positive multiple of the patch size %d", S,
               c->patch);
    enc->run_size = S == c->img_size ? 0 : S;
    return MS_OK;
}

