/* pretrain/mae.c — see mae.h. ref: facebookresearch/mae models_mae.py forward_loss @efb2a80; docs/MAE.md §Masking to
 * §Loss. */
#include "mae.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

/* The window of SAM's ViT, whose masks TinyViT draws too (docs/MAE.md §TinyViT). */
#define MAE_TV_WINDOW 14

static ms_status mae_init_common(ms_mae *m, const ms_mae_config *cfg, int enc_dim, ms_params *dec_ps)
{
    m->cfg = *cfg;
    m->cfg.dec.enc_dim = enc_dim;
    m->cfg.dec.grid = m->grid;
    m->cfg.dec.patch = m->patch;
    if (!m->cfg.dec.target_ch) m->cfg.dec.target_ch = 1;
    MS_FAIL_IF(!(cfg->mask_ratio >= 0 && cfg->mask_ratio < 1), MS_EINVAL, "--mask-ratio must be in [0, 1)");
    return ms_mae_decoder_init(&m->dec, &m->cfg.dec, dec_ps, "mae_decoder.");
}

ms_status ms_mae_init(ms_mae *m, ms_sam_encoder *enc, const ms_mae_config *cfg, ms_params *dec_ps)
{
    memset(m, 0, sizeof *m);
    m->enc = enc;
    m->S = ms_sam_enc_run_size(enc);
    m->patch = enc->cfg.patch;
    m->grid = m->S / m->patch;
    return mae_init_common(m, cfg, enc->cfg.embed_dim, dec_ps);
}

ms_status ms_mae_init_tinyvit(ms_mae *m, ms_tinyvit *tv, const ms_mae_config *cfg, ms_params *dec_ps)
{
    memset(m, 0, sizeof *m);
    m->tv = tv;
    m->S = tv->cfg.img_size;
    m->grid = ms_tinyvit_grid(&tv->cfg, 3);
    m->patch = m->S / m->grid;
    MS_FAIL_IF(m->patch * m->grid != m->S || m->patch != 16, MS_EINVAL,
               "mae: TinyViT's last grid %d is not input %d / 16 (MAE predicts 16x16 patches)", m->grid, m->S);
    return mae_init_common(m, cfg, tv->cfg.dims[3], dec_ps);
}

static int mae_enc_dim(const ms_mae *m) { return m->cfg.dec.enc_dim; }

/* The step's own device buffers (beside the encoder's and the decoder's arenas) for max_batch: where each pointer
 * lives and its bytes; returns how many. One list for ms_mae_reserve and ms_mae_step_bytes. */
static int mae_buffers(ms_mae *m, int max_batch, void **ptr[12], size_t bytes[12])
{
    int g = m->grid, L = g * g, C = mae_enc_dim(m), S = m->S, k = 0;
    int64_t R = (int64_t)max_batch * L, P = (int64_t)m->patch * m->patch * m->cfg.dec.target_ch;
    size_t fR = (size_t)R * sizeof(float);
    int max_vis = L; /* ratio 0 keeps every token */
#define BUF(p, n) (ptr[k] = (void **)&(p), bytes[k] = (n), k++)
    BUF(m->target, fR * (size_t)P);
    BUF(m->w_all, fR);
    BUF(m->w_fg, fR);
    BUF(m->w_bg, fR);
    BUF(m->dpred, fR * (size_t)P);
    BUF(m->dtok, (size_t)max_batch * max_vis * C * sizeof(float));
    BUF(m->loss_dev, 4 * sizeof(float));
    if (m->tv) {
        BUF(m->xm, (size_t)max_batch * 3 * S * S * sizeof(float));
        BUF(m->vtok, (size_t)R * C * sizeof(float));
        BUF(m->dfull, (size_t)R * C * sizeof(float));
        BUF(m->zidx, (size_t)max_batch * 3 * S * g * sizeof(int32_t));
        BUF(m->vrow, (size_t)R * sizeof(int32_t));
    }
#undef BUF
    return k;
}

ms_status ms_mae_reserve(ms_mae *m, ms_device *dev, int max_batch)
{
    int g = m->grid, L = g * g, S = m->S;
    m->dev = dev;
    m->max_batch = max_batch;
    m->P = (int64_t)m->patch * m->patch * m->cfg.dec.target_ch;
    int64_t R = (int64_t)max_batch * L;
    int window = m->tv ? MAE_TV_WINDOW : (m->enc->cfg.window ? m->enc->cfg.window : g);
    MS_TRY(ms_mae_mask_init(&m->mask, g, window, max_batch));
    int max_vis = L; /* ratio 0 keeps every token */
    MS_TRY(ms_mae_decoder_reserve(&m->dec, dev, max_batch, max_vis));
    void **ptr[12];
    size_t bytes[12];
    int nb = mae_buffers(m, max_batch, ptr, bytes);
    for (int k = 0; k < nb; k++) MS_TRY(ms_dev_alloc(dev, bytes[k], ptr[k]));
    size_t fR = (size_t)R * sizeof(float);
    m->h_target = malloc(fR * (size_t)m->P);
    m->h_w_all = malloc(fR);
    m->h_w_fg = malloc(fR);
    m->h_w_bg = malloc(fR);
    m->vis = malloc((size_t)max_batch * L * sizeof(int32_t));
    MS_FAIL_IF(!m->h_target || !m->h_w_all || !m->h_w_fg || !m->h_w_bg || !m->vis, MS_ENOMEM, "out of memory");
    if (!m->tv) return MS_OK;
    int64_t nz = (int64_t)max_batch * 3 * S * g;
    m->h_zidx = malloc((size_t)nz * sizeof(int32_t));
    m->h_vrow = malloc((size_t)R * sizeof(int32_t));
    MS_FAIL_IF(!m->h_zidx || !m->h_vrow, MS_ENOMEM, "out of memory");
    return MS_OK;
}

ms_status ms_mae_step_bytes(const ms_mae *m, const ms_params *dec_ps, int max_batch, int recompute, size_t *bytes)
{
    MS_FAIL_IF(!m->enc, MS_EUNSUPPORTED, "mae: the memory count covers SAM's ViT encoder only");
    MS_FAIL_IF(max_batch < 1, MS_EINVAL, "mae: batch %d", max_batch);
    size_t enc_act = 0, dec_act = 0, own = 0;
    MS_TRY(ms_sam_encoder_activation_bytes(m->enc, max_batch, 1, recompute, 1, &enc_act));
    MS_TRY(ms_mae_decoder_activation_bytes(&m->cfg.dec, max_batch, m->grid * m->grid, &dec_act));
    ms_mae tmp = *m; /* mae_buffers records where pointers live; nothing is allocated */
    void **ptr[12];
    size_t b[12];
    int nb = mae_buffers(&tmp, max_batch, ptr, b);
    for (int k = 0; k < nb; k++) own += b[k];
    *bytes = ms_params_train_bytes(m->enc->ps) + ms_params_train_bytes(dec_ps) + enc_act + dec_act + own;
    return MS_OK;
}

typedef struct mae_count { const ms_mae *m; const ms_params *dec_ps; int recompute; } mae_count;

static ms_status mae_count_bytes(void *ctx, int batch, size_t *bytes)
{
    const mae_count *c = ctx;
    return ms_mae_step_bytes(c->m, c->dec_ps, batch, c->recompute, bytes);
}

ms_status ms_mae_largest_batch(const ms_mae *m, const ms_params *dec_ps, int recompute, size_t budget, int *batch)
{
    mae_count c = {m, dec_ps, recompute};
    return ms_plan_largest_batch(mae_count_bytes, &c, budget, 1 << 16, batch);
}

void ms_mae_free(ms_mae *m)
{
    if (m->dev) {
        ms_dev_free(m->dev, m->target); ms_dev_free(m->dev, m->w_all); ms_dev_free(m->dev, m->w_fg);
        ms_dev_free(m->dev, m->w_bg); ms_dev_free(m->dev, m->dpred); ms_dev_free(m->dev, m->dtok);
        ms_dev_free(m->dev, m->loss_dev); ms_dev_free(m->dev, m->xm); ms_dev_free(m->dev, m->vtok);
        ms_dev_free(m->dev, m->dfull); ms_dev_free(m->dev, m->zidx); ms_dev_free(m->dev, m->vrow);
    }
    free(m->h_target); free(m->h_w_all); free(m->h_w_fg); free(m->h_w_bg); free(m->vis);
    free(m->h_zidx); free(m->h_vrow);
    ms_mae_decoder_free(&m->dec);
    ms_mae_mask_free(&m->mask);
    memset(m, 0, sizeof *m);
}

static ms_sam_enc_subset subset_of(const ms_mae_mask *mk)
{
    ms_sam_enc_subset s;
    s.n_keep = mk->n_keep[0];
    s.keep_stride = mk->n_keep_max;
    s.keep = mk->keep;
    s.win_keep_off = mk->win_keep_off;
    s.pad_stride = mk->n_pad_max;
    s.pad = mk->pad;
    s.win_pad_off = mk->win_pad_off;
    return s;
}

/* TinyViT (docs/MAE.md §TinyViT): the input viewed as rows of one patch's 16 pixels (b, c, y, patch column) is
 * copied with the hidden patches' rows zeroed (index -1), layer 3 runs dense, and the visible tokens (rows
 * b·L + t, in m->vis order) are gathered for the decoder. */
static ms_status tinyvit_forward(ms_mae *m, const float *x, int B, const float **tok)
{
    int S = m->S, p = m->patch, g = m->grid, L = g * g, nv = m->n_vis, C = mae_enc_dim(m);
    int64_t nz = (int64_t)B * 3 * S * g;
    for (int64_t r = 0; r < nz; r++) {
        int64_t b = r / ((int64_t)3 * S * g), y = (r / g) % S, px = r % g;
        m->h_zidx[r] = m->mask.masked[b * L + (y / p) * g + px] ? -1 : (int32_t)r;
    }
    for (int b = 0; b < B; b++)
        for (int i = 0; i < nv; i++) m->h_vrow[b * nv + i] = b * L + m->vis[b * nv + i];
    ms_device *dev = m->dev;
    MS_TRY(ms_dev_from_host(dev, m->zidx, m->h_zidx, (size_t)nz * sizeof(int32_t)));
    MS_TRY(ms_dev_from_host(dev, m->vrow, m->h_vrow, (size_t)B * nv * sizeof(int32_t)));
    MS_TRY(ms_gather_rows_forward(dev, m->xm, x, m->zidx, nz, p));
    MS_TRY(ms_tinyvit_forward(m->tv, m->xm, B, NULL));
    const float *t3 = ms_tinyvit_stage(m->tv, 3);
    MS_FAIL_IF(!t3, MS_EBADSTATE, "mae: TinyViT gave no layer-3 tokens");
    MS_TRY(ms_gather_rows_forward(dev, m->vtok, t3, m->vrow, (int64_t)B * nv, C));
    *tok = m->vtok;
    return MS_OK;
}

ms_status ms_mae_forward(ms_mae *m, const float *x, const float *gray, int B, uint64_t seed, const uint64_t *keys,
                         ms_mae_loss *out)
{
    MS_FAIL_IF(B < 1 || B > m->max_batch, MS_EINVAL, "mae: batch %d exceeds the reserved %d", B, m->max_batch);
    int S = m->S, p = m->patch, g = m->grid, L = g * g;
    int64_t R = (int64_t)B * L, P = m->P;
    if (keys)
        for (int b = 0; b < B; b++)
            MS_TRY(ms_mae_mask_sample(&m->mask, b, m->cfg.mask_ratio, m->cfg.sampling, seed, keys[b]));
    int nv = m->mask.n_keep[0];
    for (int b = 1; b < B; b++)
        MS_FAIL_IF(m->mask.n_keep[b] != nv, MS_EINVAL, "mae: samples keep different token counts");
    m->batch = B;
    m->n_vis = nv;
    m->rows = R;
    /* targets and weights on the host (cheap next to the model), then one copy each */
    ms_mae_patchify(gray, B, S, p, m->cfg.norm_pix, m->h_target);
    float *raw = malloc((size_t)R * P * sizeof(float));
    MS_FAIL_IF(!raw, MS_ENOMEM, "out of memory");
    ms_mae_patchify(gray, B, S, p, 0, raw);
    int n_fg = 0, n_bg = 0;
    for (int64_t r = 0; r < R; r++) {
        float mx = 0;
        for (int64_t k = 0; k < P; k++) mx = raw[r * P + k] > mx ? raw[r * P + k] : mx;
        int hidden = m->mask.masked[r], fg = mx > m->cfg.fg_threshold;
        m->h_w_all[r] = (float)hidden;
        m->h_w_fg[r] = (float)(hidden && fg);
        m->h_w_bg[r] = (float)(hidden && !fg);
        n_fg += hidden && fg;
        n_bg += hidden && !fg;
    }
    free(raw);
    for (int b = 0; b < B; b++) memcpy(m->vis + (size_t)b * nv, m->mask.keep + (size_t)b * m->mask.n_keep_max, (size_t)nv * 4);
    ms_device *dev = m->dev;
    MS_TRY(ms_dev_from_host(dev, m->target, m->h_target, (size_t)R * P * 4));
    MS_TRY(ms_dev_from_host(dev, m->w_all, m->h_w_all, (size_t)R * 4));
    MS_TRY(ms_dev_from_host(dev, m->w_fg, m->h_w_fg, (size_t)R * 4));
    MS_TRY(ms_dev_from_host(dev, m->w_bg, m->h_w_bg, (size_t)R * 4));
    const float *tok;
    if (m->tv) {
        MS_TRY(tinyvit_forward(m, x, B, &tok));
    } else {
        ms_sam_enc_subset sub = subset_of(&m->mask);
        MS_TRY(ms_sam_encoder_forward_subset(m->enc, x, B, &sub, &tok));
    }
    MS_TRY(ms_mae_decoder_forward(&m->dec, tok, m->vis, B, nv));
    const float *pred = ms_mae_decoder_pred(&m->dec);
    float l[3] = {0, 0, 0};
    MS_TRY(ms_mse_loss_forward(dev, m->loss_dev, pred, m->target, m->w_all, R, P));
    MS_TRY(ms_mse_loss_forward(dev, m->loss_dev + 1, pred, m->target, m->w_fg, R, P));
    MS_TRY(ms_mse_loss_forward(dev, m->loss_dev + 2, pred, m->target, m->w_bg, R, P));
    MS_TRY(ms_dev_to_host(dev, l, m->loss_dev, sizeof l));
    out->loss = l[0];
    out->loss_fg = n_fg ? l[1] : NAN;
    out->loss_bg = n_bg ? l[2] : NAN;
    out->n_fg = n_fg;
    out->n_bg = n_bg;
    return MS_OK;
}

ms_status ms_mae_backward(ms_mae *m, float scale, int encoder_frozen)
{
    ms_device *dev = m->dev;
    int64_t R = m->rows, P = m->P;
    int64_t nt = (int64_t)m->batch * m->n_vis * mae_enc_dim(m);
    MS_TRY(ms_dev_zero(dev, m->dpred, (size_t)R * P * 4));
    MS_TRY(ms_mse_loss_backward(dev, m->dpred, scale, ms_mae_decoder_pred(&m->dec), m->target, m->w_all, R, P));
    if (!encoder_frozen) MS_TRY(ms_dev_zero(dev, m->dtok, (size_t)nt * 4));
    MS_TRY(ms_mae_decoder_backward(&m->dec, m->dpred, encoder_frozen ? NULL : m->dtok));
    if (encoder_frozen) return MS_OK;
    if (!m->tv) return ms_sam_encoder_backward_subset(m->enc, m->dtok, NULL);
    /* the visible tokens' gradients into the dense grid (hidden positions get none), then through TinyViT */
    int64_t C = mae_enc_dim(m);
    MS_TRY(ms_dev_zero(dev, m->dfull, (size_t)(R * C) * sizeof(float)));
    MS_TRY(ms_gather_rows_backward(dev, m->dfull, m->dtok, m->vrow, (int64_t)m->batch * m->n_vis, C, R));
    return ms_tinyvit_backward(m->tv, NULL, m->dfull, NULL);
}

ms_status ms_mae_reconstruction(ms_mae *m, const float *gray, float *recon)
{
    int S = m->S, p = m->patch, g = m->grid, B = m->batch;
    int64_t R = m->rows, P = m->P;
    float *pred = malloc((size_t)R * P * sizeof(float)), *raw = malloc((size_t)R * P * sizeof(float));
    ms_status rc = MS_OK;
    if (!pred || !raw) { rc = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
    if ((rc = ms_dev_to_host(m->dev, pred, ms_mae_decoder_pred(&m->dec), (size_t)R * P * 4))) goto leave;
    ms_mae_patchify(gray, B, S, p, 0, raw);
    for (int64_t r = 0; r < R; r++) {
        float *pr = pred + r * P;
        if (m->cfg.norm_pix) { /* undo with the true patch statistics (for display only) */
            double mean = 0, var = 0;
            for (int64_t k = 0; k < P; k++) mean += raw[r * P + k];
            mean /= P;
            for (int64_t k = 0; k < P; k++) var += (raw[r * P + k] - mean) * (raw[r * P + k] - mean);
            double sd = sqrt(var / (P - 1) + 1e-6);
            for (int64_t k = 0; k < P; k++) pr[k] = (float)(pr[k] * sd + mean);
        }
        int b = (int)(r / (g * g)), t = (int)(r % (g * g)), y = t / g, x = t % g;
        for (int py = 0; py < p; py++)
            for (int px = 0; px < p; px++)
                recon[((size_t)b * S + y * p + py) * S + x * p + px] = pr[py * p + px];
    }
leave:
    free(pred);
    free(raw);
    return rc;
}
