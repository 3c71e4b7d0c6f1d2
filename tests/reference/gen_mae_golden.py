"""tests/reference/gen_mae_golden.py — golden file for one MAE step (tests/pretrain/test_mae_golden.c).

    /usr/bin/python3 tests/reference/gen_mae_golden.py          (from the repository root)

Writes tests/pretrain/golden/mae_step.pth (torch.save of a flat dict name → tensor):
  image_encoder.<SAM key>   every encoder tensor (neck included, unused), float32
  mae_decoder.<key>         every decoder tensor under mrisam's names (pretrain/mae_decoder.h), float32
  x (B,3,S,S)               the (already SAM-normalised) input; gray (B,S,S) the target image in [0,1]
  keep (B,n_keep), pad (B,n_pad)  int32 mask lists (window order, raster order inside a window)
  loss (1,) float64;  grad.<name> float32: d loss / d every encoder (except neck.*) and decoder tensor
  meta.cfg int64: img, patch, dim, depth, heads, window, out_chans, dec_dim, dec_depth, dec_heads, B (+ global idx 1)
Config: the odd encoder of tests/pretrain/test_mae_encoder.c (112 px, 7×7 tokens, window 4 → padded 8×8, 4 windows,
global block [1]), decoder dim 32 / depth 2 / 2 heads, batch 2, mask ratio 0.5, stratified masks. Random weights
from a seeded generator (U(−0.3, 0.3); LayerNorm gammas U(0.7, 1.3)), computed in float64 (mae_ref.py).
"""
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mae_ref  # noqa: E402
import sam_ref_encoder as se  # noqa: E402

OUT = os.path.join(HERE, "..", "pretrain", "golden")
IMG, PATCH, DIM, DEPTH, HEADS, WS, OUTC = 112, 16, 48, 2, 2, 4, 16
GLOBAL = (1,)
DDIM, DDEPTH, DHEADS = 32, 2, 2
B, RATIO = 2, 0.5


def randomise(model, gen):
    with torch.no_grad():
        for k, p in model.named_parameters():
            lo, hi = -0.3, 0.3
            if p.dim() == 1 and "norm" in k and k.endswith(".weight"):
                lo, hi = 0.7, 1.3
            # round through float32 so that the file holds exactly the weights the reference used
            p.copy_((torch.rand(p.shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo).float().double())


def main():
    gen = torch.Generator().manual_seed(20261123)
    g = IMG // PATCH
    enc = se.ImageEncoderViT(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                             out_chans=OUTC, window_size=WS, global_attn_indexes=GLOBAL).double()
    dec = mae_ref.MaeDecoder(DIM, DDIM, DDEPTH, DHEADS, g, PATCH).double()
    randomise(enc, gen)
    randomise(dec, gen)

    x = (torch.rand(B, 3, IMG, IMG, generator=gen, dtype=torch.float64) * 4 - 2).float().double()
    gray = torch.rand(B, IMG, IMG, generator=gen, dtype=torch.float64)
    masks = [mae_ref.stratified_mask(g, WS, RATIO, gen) for _ in range(B)]
    keep = torch.stack([m[0] for m in masks])
    pad = torch.stack([m[1] for m in masks])
    # special HIDDEN patches: flat zero (norm-pix variance 0 -> eps; background), flat 0.25, nearly flat, dark noise
    # (background under fg_threshold 0.05)
    for b in range(B):
        hid = [t for t in range(g * g) if t not in set(keep[b].tolist())]
        for j, t in enumerate(hid[:4]):
            y, x0 = (t // g) * PATCH, (t % g) * PATCH
            p = gray[b, y:y + PATCH, x0:x0 + PATCH]
            p.copy_([torch.zeros_like(p), torch.full_like(p, 0.25), 0.5 + 1e-3 * p, 0.04 * p][j])
    gray = gray.float().double()

    # sanity: with everything kept, the masked dense encoder is SAM's plain forward
    with torch.no_grad():
        all_keep = torch.arange(g * g, dtype=torch.int32).repeat(B, 1)
        gp = -(-g // WS) * WS
        all_pad = torch.tensor([i for i in range(gp * gp) if i // gp >= g or i % gp >= g], dtype=torch.int32)
        all_pad = all_pad.repeat(B, 1)
        stages = []
        enc(x, stages)
        full = stages[-1].reshape(B, g * g, DIM)
        vis = mae_ref.encoder_visible(enc, x, all_keep, all_pad)
        err = (vis - full).abs().max().item()
        assert err < 1e-12, "masked encoder with nothing masked != dense SAM (%g)" % err

    loss = mae_ref.mae_step(enc, dec, x, gray, keep, pad, PATCH, norm_pix=True)
    loss.backward()

    o = {}
    for k, v in enc.state_dict().items():
        o["image_encoder." + k] = v.float().clone()
    for k, v in dec.state_dict().items():
        o["mae_decoder." + k] = v.float().clone()
    for k, p in enc.named_parameters():
        if not k.startswith("neck."):
            o["grad.image_encoder." + k] = p.grad.float().clone()
    for k, p in dec.named_parameters():
        o["grad.mae_decoder." + k] = p.grad.float().clone()
    o["x"] = x.float()
    o["gray"] = gray.float()
    o["keep"] = keep
    o["pad"] = pad
    o["loss"] = loss.detach().reshape(1).clone()
    o["meta.cfg"] = torch.tensor([IMG, PATCH, DIM, DEPTH, HEADS, WS, OUTC, DDIM, DDEPTH, DHEADS, B] + list(GLOBAL),
                                 dtype=torch.int64)
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "mae_step.pth")
    torch.save(o, path)
    print("loss %.10g, keep %s, pad %s -> %s (%d bytes)" % (loss.item(), tuple(keep.shape), tuple(pad.shape), path,
                                                            os.path.getsize(path)))


if __name__ == "__main__":
    main()
