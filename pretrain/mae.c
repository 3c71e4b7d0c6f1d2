/* pretrain/mae.c — see mae.h. ref: facebookresearch/mae models_mae.py forward_loss @efb2a80; docs/MAE.md §Masking to
 * §Loss. */
#include "mae.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

ms_status ms_mae_init(ms_mae *m, ms_sam_encoder *enc, const ms_mae_config *cfg, ms_params *dec_ps)
{
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->enc = enc;
    const ms_sam_enc_config *ec = &enc->cfg;
    m->cfg.dec.enc_dim = ec->embed_dim;
    m->cfg.dec.grid = ms_sam_enc_run_size(enc) / ec->patch;
    m->cfg.dec.patch = ec->patch;
    if (!m->cfg.dec.target_ch) m->cfg.dec.target_ch = 1;
    MS_FAIL_IF(!(cfg->mask_ratio >= 0 && cfg->mask_ratio < 1), MS_EINVAL, "--mask-ratio must be in [0, 1)");
    return ms_mae_decoder_init(&m->dec, &m->cfg.dec, dec_ps, "mae_decoder.");
}

ms_status ms_mae_reserve(ms_mae *m, ms_device *dev, int max_batch)
{
    const ms_sam_enc_config *ec = &m->enc->cfg;
    int g = ms_sam_enc_run_size(m->enc) / ec->patch, L = g * g;
    m->dev = dev;
    m->max_batch = max_batch;
    m->P = (int64_t)ec->patch * ec->patch * m->cfg.dec.target_ch;
    int64_t R = (int64_t)max_batch * L;
    MS_TRY(ms_mae_mask_init(&m->mask, g, ec->window ? ec->window : g, max_batch));
    int max_vis = L; /* ratio 0 keeps every token */
    MS_TRY(ms_mae_decoder_reserve(&m->dec, dev, max_batch, max_vis));
    size_t fR = (size_t)R * sizeof(float);
    MS_TRY(ms_dev_alloc(dev, fR * (size_t)m->P, (void **)&m->target));
    MS_TRY(ms_dev_alloc(dev, fR, (void **)&m->w_all));
    MS_TRY(ms_dev_alloc(dev, fR, (void **)&m->w_fg));
    MS_TRY(ms_dev_alloc(dev, fR, (void **)&m->w_bg));
    MS_TRY(ms_dev_alloc(dev, fR * (size_t)m->P, (void **)&m->dpred));
    MS_TRY(ms_dev_alloc(dev, (size_t)max_batch * max_vis * ec->embed_dim * sizeof(float), (void **)&m->dtok));
    MS_TRY(ms_dev_alloc(dev, 4 * sizeof(float), (void **)&m->loss_dev));
    m->h_target = malloc(fR * (size_t)m->P);
    m->h_w_all = malloc(fR);
    m->h_w_fg = malloc(fR);
    m->h_w_bg = malloc(fR);
    m->vis = malloc((size_t)max_batch * L * sizeof(int32_t));
    MS_FAIL_IF(!m->h_target || !m->h_w_all || !m->h_w_fg || !m->h_w_bg || !m->vis, MS_ENOMEM, "out of memory");
    return MS_OK;
}

void ms_mae_free(ms_mae *m)
{
    if (m->dev) {
        ms_dev_free(m->dev, m->target); ms_dev_free(m->dev, m->w_all); ms_dev_free(m->dev, m->w_fg);
        ms_dev_free(m->dev, m->w_bg); ms_dev_free(m->dev, m->dpred); ms_dev_free(m->dev, m->dtok);
        ms_dev_free(m->dev, m->loss_dev);
    }
    free(m->h_target); free(m->h_w_all); free(m->h_w_fg); free(m->h_w_bg); free(m->vis);
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

ms_status ms_mae_forward(ms_mae *m, const float *x, const float *gray, int B, uint64_t seed, const uint64_t *keys,
                         ms_mae_loss *out)
{
    MS_FAIL_IF(B < 1 || B > m->max_batch, MS_EINVAL, "mae: batch %d exceeds the reserved %d", B, m->max_batch);
    const ms_sam_enc_config *ec = &m->enc->cfg;
    int S = ms_sam_enc_run_size(m->enc), p = ec->patch, g = S / p, L = g * g;
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
    ms_sam_enc_subset sub = subset_of(&m->mask);
    const float *tok;
    MS_TRY(ms_sam_encoder_forward_subset(m->enc, x, B, &sub, &tok));
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
    int64_t nt = (int64_t)m->batch * m->n_vis * m->enc->cfg.embed_dim;
    MS_TRY(ms_dev_zero(dev, m->dpred, (size_t)R * P * 4));
    MS_TRY(ms_mse_loss_backward(dev, m->dpred, scale, ms_mae_decoder_pred(&m->dec), m->target, m->w_all, R, P));
    if (!encoder_frozen) MS_TRY(ms_dev_zero(dev, m->dtok, (size_t)nt * 4));
    MS_TRY(ms_mae_decoder_backward(&m->dec, m->dpred, encoder_frozen ? NULL : m->dtok));
    if (encoder_frozen) return MS_OK;
    return ms_sam_encoder_backward_subset(m->enc, m->dtok, NULL);
}

ms_status ms_mae_reconstruction(ms_mae *m, const float *gray, float *recon)
{
    const ms_sam_enc_config *ec = &m->enc->cfg;
    int S = ms_sam_enc_run_size(m->enc), p = ec->patch, g = S / p, B = m->batch;
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
