"""tests/pretrain/gen_mae_tinyvit_golden.py — golden file for one MAE step over MobileSAM's TinyViT
(tests/pretrain/test_mae_tinyvit.c, part 0; docs/MAE.md §TinyViT), from MobileSAM's own code.

    /usr/bin/python3 tests/pretrain/gen_mae_tinyvit_golden.py --upstream DIR   (or MOBILESAM_DIR=DIR; repo root)

DIR is a checkout of github.com/ChaoningZhang/MobileSAM, loaded as tests/pretrain/gen_tinyvit_golden.py loads it
(only mobile_sam/modeling/tiny_vit_sam.py, with its timm stand-in); the MAE decoder, loss and stratified masks are
tests/reference/mae_ref.py's. Both are imported, not copied.

The step, in float64, TinyViT in TRAINING mode (BatchNorm on batch statistics, running statistics updated):
  x (2,3,256,256) = 2·(2u−1) from the counter RNG ("golden.input", as gen_tinyvit_golden.py), gray (2,256,256) = u
  ("golden.gray"); masks: mae_ref.stratified_mask(16, 14, 0.75) per image (window order);
  xm = x with every hidden 16×16 patch set to 0 (all three channels);
  tokens = layers(patch_embed(xm)) (B, 256, 320); the visible ones (keep order) → MaeDecoder(320, 32, 1, 2, 16, 16)
  → mae_loss (norm-pix, hidden patches only); backward.
Weights: the encoder as gen_tinyvit_golden.py (counter_init + its BatchNorm / bias-table rules, SEED 17,
num_batches_tracked 3; the C test regenerates them), the decoder U(−0.3, 0.3) (LayerNorm gammas U(0.7, 1.3)) from a
seeded generator, rounded to float32 and stored.

Writes tests/pretrain/golden/mae_tinyvit_step.pth (torch.save of a flat dict):
  meta.cfg int64 [B, S, dec_dim, dec_depth, dec_heads]; keep (B, n_keep) int32; loss (1,) float64
  mae_decoder.<key>        the decoder's weights, float32
  grad.<name>              d loss / d every encoder tensor that has one (the neck and classifier do not run) and every
                           decoder tensor; sampled as gen_tinyvit_golden.put (.idx/.val/.stats, NS values) when large
  bn.<running stat name>   every BatchNorm running mean / var after the step, in full
"""
import argparse
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import gen_tinyvit_golden as tg  # noqa: E402
import mae_ref  # noqa: E402

B, S, RATIO, WS = 2, 256, 0.75, 14
DDIM, DDEPTH, DHEADS = 32, 1, 2
OUT = os.path.join(HERE, "golden", "mae_tinyvit_step.pth")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", default=os.environ.get("MOBILESAM_DIR"), help="MobileSAM checkout")
    a = ap.parse_args()
    if not a.upstream:
        sys.exit("give --upstream DIR or MOBILESAM_DIR")
    up = tg.load_upstream(a.upstream)
    torch.manual_seed(0)
    m = up.TinyViT(**tg.CFG)
    sd = {}
    for k, v in m.state_dict().items():
        sd[k] = torch.full_like(v, 3) if not v.is_floating_point() else \
            tg.counter_value("image_encoder." + k, v.shape, tg.SEED).to(v.dtype)
    m.load_state_dict(sd, strict=True)
    m = m.double().train()
    g, p = S // 16, 16
    dec = mae_ref.MaeDecoder(320, DDIM, DDEPTH, DHEADS, g, p).double()
    gen = torch.Generator().manual_seed(20261207)
    with torch.no_grad():
        for k, t in dec.named_parameters():
            lo, hi = (0.7, 1.3) if (t.dim() == 1 and "norm" in k and k.endswith(".weight")) else (-0.3, 0.3)
            t.copy_((torch.rand(t.shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo).float().double())

    x = 2.0 * tg.counter_uniform("golden.input", (B, 3, S, S), tg.SEED)
    gray = (tg.counter_uniform("golden.gray", (B, S, S), tg.SEED) + 1.0) / 2.0
    keep = torch.stack([mae_ref.stratified_mask(g, WS, RATIO, gen)[0] for _ in range(B)])
    hidden = torch.ones(B, g * g, dtype=torch.bool)
    for b in range(B):
        hidden[b, keep[b].long()] = False
    pix = hidden.view(B, g, g).repeat_interleave(p, 1).repeat_interleave(p, 2)  # (B, S, S)
    xm = x.masked_fill(pix[:, None], 0.0)

    h = m.patch_embed(xm)
    for layer in m.layers:
        h = layer(h)                                     # (B, g·g, 320) after layer 3
    tok = torch.stack([h[b, keep[b].long()] for b in range(B)])
    loss = mae_ref.mae_loss(dec(tok, keep), gray, keep, p, norm_pix=True)
    loss.backward()

    o = {"meta.cfg": torch.tensor([B, S, DDIM, DDEPTH, DHEADS], dtype=torch.int64), "keep": keep.to(torch.int32),
         "loss": loss.detach().reshape(1).clone()}
    for k, v in dec.state_dict().items():
        o["mae_decoder." + k] = v.float().clone()
    tg.NS = 256
    sgen = torch.Generator().manual_seed(tg.SEED)
    n_grad = 0
    for k, t in m.named_parameters():
        if t.grad is not None:
            tg.put(o, "grad.image_encoder." + k, t.grad, sgen)
            n_grad += 1
    for k, t in dec.named_parameters():
        tg.put(o, "grad.mae_decoder." + k, t.grad, sgen)
    for k, v in m.state_dict().items():
        if k.endswith("running_mean") or k.endswith("running_var"):
            o["bn.image_encoder." + k] = v.float().clone()
        if k.endswith("num_batches_tracked"):
            assert v.item() == 4, k
    torch.save(o, OUT)
    print("loss %.10g, %d encoder gradients, keep %s -> %s (%d bytes)" % (loss.item(), n_grad, tuple(keep.shape), OUT,
                                                                        os.path.getsize(OUT)))


if __name__ == "__main__":
    main()
