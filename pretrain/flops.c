/* pretrain/flops.c — see flops.h. Token counts are fractional under masking: (1 − m) of each window, the mean the
 * stratified sampler keeps exactly up to rounding. */
#include "pretrain/flops.h"

ms_flops ms_flops_add(ms_flops a, ms_flops b) { return (ms_flops){a.gemm + b.gemm, a.attn + b.attn}; }

double ms_flops_step(ms_flops f, int weights_trained) { return f.gemm * (weights_trained ? 3 : 2) + 3 * f.attn; }

/* One attention over a group of nq queries and nk keys, all heads, with decomposed rel-pos over an lh × lw area. */
static ms_flops attention(const ms_sam_enc_config *c, double nq, double nk, int lh, int lw)
{
    double hd = c->head_dim, h = c->n_heads;
    return (ms_flops){0, h * (4 * nq * nk * hd + 2 * nq * (lh + lw) * hd)};
}

ms_flops ms_flops_sam_encoder(const ms_sam_enc_config *c, int S, double mask_ratio, int neck)
{
    const double D = c->embed_dim, keep = 1 - mask_ratio, g = S / c->patch;
    const double N = g * g, T = keep * N; /* tokens in the image, tokens the encoder runs on */
    ms_flops f = {2 * T * D * c->in_chans * c->patch * c->patch, 0};
    const int w = c->window;
    const double gp = w ? ((int)g + w - 1) / w * w : g; /* the grid SAM pads to for its windows */
    const double nw = w ? (gp / w) * (gp / w) : 0, slots = (double)w * w;
    for (int b = 0; b < c->depth; b++) {
        int global = !w;
        for (int i = 0; i < c->n_global; i++) global |= c->global_idx[i] == b;
        /* dense windowed blocks run qkv and proj on every padded slot; on a subset, pad slots' k/v are the bias */
        double rows = global || mask_ratio > 0 ? T : nw * slots;
        f.gemm += 8 * rows * D * D + 4 * T * D * c->mlp_dim;
        if (global) f = ms_flops_add(f, attention(c, T, T, (int)g, (int)g));
        else /* every slot queries its window densely; on a subset the T visible tokens query (1 − m) of the slots */
            f = ms_flops_add(f, attention(c, mask_ratio > 0 ? T : nw * slots, keep * slots, w, w));
    }
    if (neck && mask_ratio == 0) f.gemm += 2 * N * D * c->out_chans + 2 * N * c->out_chans * c->out_chans * 9;
    return f;
}

ms_flops ms_flops_mae_decoder(const ms_mae_dec_config *d, double mask_ratio)
{
    const double Dd = d->dim, N = (double)d->grid * d->grid, T = (1 - mask_ratio) * N;
    ms_flops f = {2 * T * d->enc_dim * Dd, 0};
    f.gemm += d->depth * 24 * N * Dd * Dd; /* qkv 6, proj 2, MLP 4·Dd wide: 16 */
    f.attn += d->depth * 4 * N * N * Dd;
    f.gemm += 2 * N * Dd * d->patch * d->patch * d->target_ch;
    return f;
}
