"""tools/bench/bench_mae_torch.py — the PyTorch side of `mrisam bench mae`: one MAE training step (forward, backward,
AdamW) of SAM's image encoder + MAE decoder with tests/reference/mae_ref.py (SAM's dense encoder with attention masks
for the visible tokens, MAE's decoder, norm-pix loss), float32, on random data; prints one JSON line per run.
Run with Debian's /usr/bin/python3 (torch CPU)."""
import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "reference"))
import mae_ref  # noqa: E402
import sam_ref_encoder as se  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_test")
    ap.add_argument("--input-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--decoder-dim", type=int, default=512)
    ap.add_argument("--decoder-depth", type=int, default=8)
    ap.add_argument("--decoder-heads", type=int, default=16)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    S, p = a.input_size, 16
    g = S // p
    enc = se.build(a.model, img_size=S)
    ws = max(b.window_size for b in enc.blocks)
    dec = mae_ref.MaeDecoder(enc.pos_embed.shape[-1], a.decoder_dim, a.decoder_depth, a.decoder_heads, g, p)
    params = [q for q in enc.parameters()] + [q for q in dec.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    gen = torch.Generator().manual_seed(1)
    B = a.batch
    x = torch.randn(B, 3, S, S)
    gray = torch.rand(B, S, S)

    def step():
        keep, pad = zip(*[mae_ref.stratified_mask(g, ws, a.mask_ratio, gen) for _ in range(B)])
        keep, pad = torch.stack(keep), torch.stack(pad)
        loss = mae_ref.mae_step(enc, dec, x, gray, keep, pad, p)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    dt = (time.perf_counter() - t0) / a.steps
    print(json.dumps({"impl": "torch", "model": a.model, "input": S, "threads": a.threads, "batch": B,
                      "s_per_step": dt, "img_per_s": B / dt, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
