/* tests/pretrain/test_flops.c — the FLOP counts of pretrain/flops.h against independent references:
 *  - the figures of docs/PERFORMANCE.md §FLOP model, vit_b at 1024: forward 972 GFLOP, training step 2.92 TFLOP; the
 *    MAE step (mask 0.75, decoder 512×8) from its parts counted window by window (16 full windows keep 49 tokens,
 *    8 edge windows 28, the corner 16; every window 49 slots as keys; docs/MAE.md);
 *  - random encoder configurations (seeded): the dense count against a loop over every window and block. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "base/rng.h"
#include "harness.h"
#include "pretrain/flops.h"

static int near(double a, double b, double rel) { return fabs(a - b) <= rel * fabs(b); }

/* Dense encoder by enumeration: each block, each window (or the whole grid), GEMMs and attention spelled out. */
static double dense_ref(const ms_sam_enc_config *c, int S)
{
    const int g = S / c->patch, w = c->window, D = c->embed_dim, hd = c->head_dim, H = c->n_heads;
    double f = 2.0 * g * g * D * 3 * c->patch * c->patch;
    for (int b = 0; b < c->depth; b++) {
        int global = !w;
        for (int i = 0; i < c->n_global; i++) global |= c->global_idx[i] == b;
        if (global) {
            double n = (double)g * g;
            f += 2 * n * D * 3 * D + 2 * n * D * D + 2 * (2 * n * D * c->mlp_dim);
            f += H * (2 * n * n * hd + 2 * n * n * hd + 2 * n * (2 * g) * hd);
            continue;
        }
        f += 2 * (2.0 * g * g * D * c->mlp_dim); /* the MLP on the real tokens */
        for (int wy = 0; wy < g; wy += w)
            for (int wx = 0; wx < g; wx += w) { /* every window has w·w slots, pads included */
                double n = (double)w * w;
                f += 2 * n * D * 3 * D + 2 * n * D * D;
                f += H * (4 * n * n * hd + 2 * n * (2 * w) * hd);
            }
    }
    return f + 2.0 * g * g * D * c->out_chans + 2.0 * g * g * c->out_chans * c->out_chans * 9;
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_sam_enc_config vb;
    MS_CHECK_OK(ms_sam_enc_config_named("vit_b", &vb));
    ms_flops fd = ms_flops_sam_encoder(&vb, 1024, 0, 1);
    double fwd = fd.gemm + fd.attn;
    printf("vit_b @1024: forward %.1f GFLOP, step %.3f TFLOP\n", fwd / 1e9, ms_flops_step(fd, 1) / 1e12);
    MS_CHECK(near(fwd, 972e9, 0.005), "vit_b forward %.1f GFLOP, docs 972", fwd / 1e9);
    MS_CHECK(near(ms_flops_step(fd, 1), 2.92e12, 0.005), "vit_b step %.3f TFLOP, docs 2.92", ms_flops_step(fd, 1) / 1e12);
    MS_CHECK(near(fwd, dense_ref(&vb, 1024), 1e-12), "vit_b dense vs enumeration");

    /* MAE, window by window: 1024 visible tokens (16·49 + 8·28 + 16), each querying 49 slots */
    ms_flops fe = ms_flops_sam_encoder(&vb, 1024, 0.75, 0);
    const double D = 768, T = 1024, hd = 64, H = 12;
    double enc = 2 * T * D * 768; /* patch embedding of the visible patches */
    for (int b = 0; b < 12; b++) {
        int global = b == 2 || b == 5 || b == 8 || b == 11;
        enc += 24 * T * D * D; /* qkv, proj, MLP on the visible tokens */
        if (global) enc += H * (4 * T * T * hd + 2 * T * 128 * hd);
        else {
            const double nq[3] = {49, 28, 16}, nwin[3] = {16, 8, 1};
            for (int k = 0; k < 3; k++) enc += nwin[k] * H * (4 * nq[k] * 49 * hd + 2 * nq[k] * 28 * hd);
        }
    }
    MS_CHECK(near(fe.gemm + fe.attn, enc, 1e-12), "MAE encoder %.2f GFLOP, by windows %.2f", (fe.gemm + fe.attn) / 1e9,
             enc / 1e9);
    ms_mae_dec_config dc = {.enc_dim = 768, .dim = 512, .depth = 8, .n_heads = 16, .grid = 64, .patch = 16, .target_ch = 1};
    ms_flops fdec = ms_flops_mae_decoder(&dc, 0.75);
    double dec = 2 * T * D * 512 + 8 * (24 * 4096.0 * 512 * 512 + 4 * 4096.0 * 4096 * 512) + 2 * 4096.0 * 512 * 256;
    MS_CHECK(near(fdec.gemm + fdec.attn, dec, 1e-12), "MAE decoder %.1f GFLOP, reference %.1f", (fdec.gemm + fdec.attn) / 1e9,
             dec / 1e9);
    double step = ms_flops_step(ms_flops_add(fe, fdec), 1);
    printf("MAE vit_b @1024 mask 0.75, decoder 512x8: encoder %.1f + decoder %.1f GFLOP forward, step %.3f TFLOP\n",
           (fe.gemm + fe.attn) / 1e9, dec / 1e9, step / 1e12);
    MS_CHECK(near(step, 3 * (enc + dec), 1e-12) && near(step, 2.03e12, 0.01), "MAE step %.3f TFLOP", step / 1e12);
    /* frozen weights: the backward of their GEMMs is dX only */
    MS_CHECK(near(ms_flops_step(fd, 0), 2 * fd.gemm + 3 * fd.attn, 1e-12), "frozen step");

    ms_rng r;
    ms_rng_init(&r, seed, 1);
    for (int it = 0; it < 50; it++) {
        ms_sam_enc_config c = vb;
        c.window = 2 + (int)ms_rng_below(&r, 15);
        c.depth = 1 + (int)ms_rng_below(&r, 12);
        c.n_global = 0;
        for (int b = 0; b < c.depth; b++)
            if (ms_rng_below(&r, 3) == 0) c.global_idx[c.n_global++] = b;
        c.n_heads = 1 + (int)ms_rng_below(&r, 16);
        c.head_dim = 8 * (1 + (int)ms_rng_below(&r, 12));
        c.embed_dim = c.n_heads * c.head_dim;
        c.mlp_dim = 4 * c.embed_dim;
        int S = 16 * (1 + (int)ms_rng_below(&r, 80));
        ms_flops f = ms_flops_sam_encoder(&c, S, 0, 1);
        double ref = dense_ref(&c, S);
        MS_CHECK(near(f.gemm + f.attn, ref, 1e-12), "config %d (S %d, window %d, depth %d, %d global): %.6g vs %.6g",
                 it, S, c.window, c.depth, c.n_global, f.gemm + f.attn, ref);
    }
    return ms_test_done();
}
