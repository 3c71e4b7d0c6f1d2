"""tests/reference/gen_encoder_golden.py — golden files for the C image encoder (tests/pretrain/test_sam_encoder*.c).

    /usr/bin/python3 tests/reference/gen_encoder_golden.py [--vit-b]     (from the repository root)

Writes, with torch.save (a flat dict name → tensor), into tests/pretrain/golden/:
  encoder_vit_test.pth  vit_test (docs/MODEL.md §Variants) at 256, batch 1, weights from counter_init (seed SEED, names
                        "image_encoder.<key>"), so the file holds no weights: input, G, every stage's output
                        (stage.patch = patch embedding + pos_embed, stage.block.<i>, BHWC), emb, and for the loss
                        L = Σ emb·G the gradient of every parameter and of the input — in full when it has at most
                        FULL_MAX elements, else NS sampled (idx, val) pairs plus (sum, sum of squares, sum of |·|).
  encoder_odd.pth       a tiny variant with odd sizes and ALL weights in the file under SAM's keys (so the C test
                        goes through ms_sd_load, variant detection and ms_params_load): patch 8 on an 80×80 input, D 48, 2 heads of 24, depth
                        3, global block [1], window 4 on a 10×10 grid (pad 2 → 3×3 windows), out_chans 32, batch 2,
                        global rel-pos tables of length 15 (≠ 2·10−1: exercises get_rel_pos's interpolation);
                        outputs and full gradients for official SAM's block and for finetune-SAM's (prefix ft.).
  encoder_vit_b_1024.pth (--vit-b) vit_b at 1024, counter_init weights, input from the counter RNG: checksums
                        and 4096 sampled values of the embedding and of two token stages (forward only).
The reference runs in float64, so the difference to the C fp32 code is the C code's rounding alone.
"""
import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import counter_init as ci  # noqa: E402
import sam_ref_encoder as ref  # noqa: E402

SEED = 5
FULL_MAX = 4096
NS = 512
OUT = os.path.join(HERE, "..", "pretrain", "golden")


def counter_uniform(name, shape, seed):
    """2u−1 in [−1, 1) from the counter RNG (exact in float32; tests/pretrain/test_sam_encoder_vitb_slow.c has the
    twin)."""
    n = int(np.prod(shape))
    stream = ci.rng_stream(seed, ci.fnv1a64(name), 0)
    u = (ci.rand_u64(stream, np.arange(n, dtype=np.uint64)) >> np.uint64(40)).astype(np.float64) / 16777216.0
    return torch.from_numpy((2.0 * u - 1.0).astype(np.float32).reshape(shape))


def sample(out, key, t, gen):
    t = t.detach().reshape(-1).float()
    if t.numel() <= FULL_MAX:
        out[key] = t.clone()
        return
    idx = torch.randperm(t.numel(), generator=gen)[:NS].sort().values
    out[key + ".idx"] = idx.to(torch.int64)
    out[key + ".val"] = t[idx].clone()
    td = t.double()
    out[key + ".stats"] = torch.tensor([td.sum(), (td * td).sum(), td.abs().sum()], dtype=torch.float64)


def vit_test():
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(2)
    m = ref.build("vit_test")
    ref.counter_init_(m, SEED)
    m = m.double()
    B, S = 1, 256
    x = (torch.rand(B, 3, S, S, generator=gen) * 4 - 2).double().requires_grad_(True)
    stages = []
    emb = m(x, stages)
    G = torch.randn(emb.shape, generator=gen).double()
    (emb * G).sum().backward()
    o = {"meta.seed": torch.tensor([SEED], dtype=torch.int64),
         "input": x.detach().float(), "G": G.float(), "emb": emb.detach().float(),
         "stage.patch": stages[0].detach().float()}
    for i, s in enumerate(stages[1:]):
        o["stage.block.%d" % i] = s.detach().float()
    for k, p in m.named_parameters():
        sample(o, "grad.image_encoder." + k, p.grad, gen)
    sample(o, "grad.input", x.grad, gen)
    torch.save(o, os.path.join(OUT, "encoder_vit_test.pth"))


def odd():
    gen = torch.Generator().manual_seed(3)
    cfg = dict(img_size=80, patch_size=8, embed_dim=48, depth=3, num_heads=2, global_attn_indexes=(1,), window_size=4,
               out_chans=32, rel_len_global=15)
    m = ref.ImageEncoderViT(**cfg)
    ref.counter_init_(m, SEED + 1)
    m = m.double()
    B = 2
    x0 = torch.rand(B, 3, 80, 80, generator=gen) * 4 - 2
    G = torch.randn(B, 32, 10, 10, generator=gen).double()
    o = {"meta.seed": torch.tensor([SEED + 1], dtype=torch.int64), "input": x0, "G": G.float()}
    for k, v in m.state_dict().items():
        o["image_encoder." + k] = v.float()
    for ft in (False, True):
        pre = "ft." if ft else ""
        for b in m.blocks:
            b.finetune_sam = ft
        m.zero_grad()
        x = x0.double().requires_grad_(True)
        stages = []
        emb = m(x, stages)
        (emb * G).sum().backward()
        o[pre + "emb"] = emb.detach().float()
        for i, s in enumerate(stages[1:]):
            o[pre + "stage.block.%d" % i] = s.detach().float()
        for k, p in m.named_parameters():
            o[pre + "grad.image_encoder." + k] = p.grad.float()
        o[pre + "grad.input"] = x.grad.float()
    torch.save(o, os.path.join(OUT, "encoder_odd.pth"))


def vit_b():
    gen = torch.Generator().manual_seed(4)
    m = ref.build("vit_b")
    ref.counter_init_(m, SEED)
    x = counter_uniform("golden.input", (1, 3, 1024, 1024), SEED) * 2.0
    stages = []
    with torch.no_grad():
        emb = m.double()(x.double(), stages)
    o = {"meta.seed": torch.tensor([SEED], dtype=torch.int64)}
    for key, t in (("emb", emb), ("stage.patch", stages[0]), ("stage.block.5", stages[6]),
                   ("stage.block.11", stages[12])):
        t = t.reshape(-1)
        idx = torch.randperm(t.numel(), generator=gen)[:4096].sort().values
        o[key + ".idx"] = idx
        o[key + ".val"] = t[idx].float()
        o[key + ".stats"] = torch.tensor([t.sum(), (t * t).sum(), t.abs().sum()], dtype=torch.float64)
    torch.save(o, os.path.join(OUT, "encoder_vit_b_1024.pth"))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--vit-b", action="store_true", help="also the vit_b 1024 file (a few minutes on 2 cores)")
    ap.add_argument("--only-vit-b", action="store_true")
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if not a.only_vit_b:
        vit_test()
        odd()
    if a.vit_b or a.only_vit_b:
        vit_b()
