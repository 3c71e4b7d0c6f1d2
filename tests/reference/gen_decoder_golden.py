"""tests/reference/gen_decoder_golden.py — golden files for tests/finetune/test_sam_decoder.c.

Usage: /usr/bin/python3 tests/reference/gen_decoder_golden.py [OUT_DIR]   (default tests/finetune/golden)

For each case it builds the reference prompt encoder + mask decoder (sam_ref_decoder.py) in float64 with the
counter-based weights of counter_init.py (the C test regenerates the same weights and inputs from the seed, so no
weights are stored), runs forward, and backpropagates the scalar loss
    L = Σ masks_sel ⊙ Wm + Σ iou_sel ⊙ Wi,     Wm = counter_init("loss.masks", (numel,)), Wi likewise "loss.iou"
(masks_sel / iou_sel: the multimask selection). Stored in decoder_<case>.pth (torch.save of a flat dict):
  meta.*           seed, num_mask_tokens, multimask, b_img, bp, emb_h, emb_w, img_size
  in.points/labels/boxes (when used); in.image_embed.sum, in.mask.sum (checksums of the regenerated inputs)
  out.sparse, out.dense (mask case), out.hs, out.keys, out.masks (all M tokens), out.iou (all M)
  grad.<state-dict key> for every parameter, grad.image_embed
Tensors with more than 4096 elements are stored as 512 sampled entries (KEY.idx, KEY.val) plus KEY.sum, KEY.asum
(Σ|x|) and KEY.sumsq; smaller ones in full. Values are float64 (the reference runs in double).
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from counter_init import counter_init  # noqa: E402
from sam_ref_decoder import SamHead  # noqa: E402

FULL_MAX = 4096
N_SAMPLE = 512


def put(d, key, t, rng):
    t = t.detach().to(torch.float64).contiguous()
    if t.numel() <= FULL_MAX:
        d[key] = t.clone()
        return
    flat = t.reshape(-1)
    idx = np.sort(rng.choice(flat.numel(), N_SAMPLE, replace=False)).astype(np.int64)
    d[key + ".idx"] = torch.from_numpy(idx)
    d[key + ".val"] = flat[torch.from_numpy(idx)].clone()
    d[key + ".sum"] = flat.sum().reshape(1)
    d[key + ".asum"] = flat.abs().sum().reshape(1)
    d[key + ".sumsq"] = (flat * flat).sum().reshape(1)


def cw(name, shape, seed):
    return torch.from_numpy(counter_init(name, shape, seed)).to(torch.float64)


def decoder_weight(name, shape, seed):
    """counter_init, except that the cross-attention projections (whose names contain "token", which counter_init
    treats as an embedding of scale 1) are rescaled by 1/sqrt(fan_in) in float32, as the C test does: scale-1
    projections give attention logits of ~500 and a reference too ill-conditioned to compare fp32 against."""
    v = counter_init(name, shape, seed)
    if ("token_to_image" in name or "image_to_token" in name) and len(shape) == 2:
        v = (v * np.float32(1.0 / np.sqrt(shape[1]))).astype(np.float32)
    return torch.from_numpy(v).to(torch.float64)


def run_case(name, seed, out_dir, num_multimask=3, b_img=1, points=None, labels=None, boxes=None, use_mask=False,
             multimask=True, emb_hw=(64, 64), img_size=1024):
    torch.manual_seed(0)
    model = SamHead(emb_hw, img_size, num_multimask).to(torch.float64)
    sd = model.state_dict()
    new = {k: decoder_weight(k, tuple(v.shape), seed) for k, v in sd.items()}
    model.load_state_dict(new, strict=True)
    h, w = emb_hw
    emb = cw("input.image_embed", (b_img * 256, h * w), seed).reshape(b_img, 256, h, w).requires_grad_(True)
    bp = 1
    pts = None
    if points is not None:
        pts = (torch.tensor(points, dtype=torch.float32).to(torch.float64), torch.tensor(labels, dtype=torch.int64))
        bp = pts[0].shape[0]
    bx = None
    if boxes is not None:
        bx = torch.tensor(boxes, dtype=torch.float32).to(torch.float64)
        bp = bx.shape[0]
    mask = None
    if use_mask:
        mask = cw("input.mask_embed", (bp, 16 * h * w), seed).reshape(bp, 1, 4 * h, 4 * w)

    sparse, dense = model.prompt_encoder(pts, bx, mask)
    masks_all, iou_all = model.mask_decoder.predict_masks(emb, model.prompt_encoder.get_dense_pe(), sparse, dense)
    sl = slice(1, None) if multimask else slice(0, 1)
    ms, io = masks_all[:, sl], iou_all[:, sl]
    wm = cw("loss.masks", (ms.numel(),), seed).reshape(ms.shape)
    wi = cw("loss.iou", (io.numel(),), seed).reshape(io.shape)
    loss = (ms * wm).sum() + (io * wi).sum()
    loss.backward()

    rng = np.random.RandomState(seed)
    d = {}
    B = max(b_img, bp)
    meta = dict(seed=seed, num_mask_tokens=num_multimask + 1, multimask=int(multimask), b_img=b_img, bp=bp,
                emb_h=h, emb_w=w, img_size=img_size, B=B, n_points=0 if pts is None else pts[0].shape[1],
                has_box=int(bx is not None), has_mask=int(use_mask))
    for k, v in meta.items():
        d["meta." + k] = torch.tensor([v], dtype=torch.int64)
    if pts is not None:
        d["in.points"] = pts[0].to(torch.float32)
        d["in.labels"] = pts[1]
    if bx is not None:
        d["in.boxes"] = bx.to(torch.float32)
    d["in.image_embed.sum"] = emb.detach().sum().reshape(1)
    if mask is not None:
        d["in.mask.sum"] = mask.sum().reshape(1)
    d["out.loss"] = loss.detach().reshape(1)
    put(d, "out.sparse", sparse, rng)
    if use_mask:
        put(d, "out.dense", dense, rng)
    put(d, "out.hs", model.mask_decoder.last_hs, rng)
    put(d, "out.keys", model.mask_decoder.last_keys, rng)
    put(d, "out.masks", masks_all, rng)
    put(d, "out.iou", iou_all, rng)
    for k, p in model.named_parameters():
        if p.grad is not None:
            put(d, "grad." + k, p.grad, rng)
    put(d, "grad.image_embed", emb.grad, rng)
    path = os.path.join(out_dir, "decoder_%s.pth" % name)
    torch.save(d, path)
    print("%s: %d entries, %d bytes, loss %.6f" % (path, len(d), os.path.getsize(path), loss.item()))


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "finetune",
                                                                  "golden")
    os.makedirs(out_dir, exist_ok=True)
    # Two prompts on one image (the image embedding is repeated; its gradient sums both), labels 1/0/-1 and a bare
    # label (2), pad point appended, multimask.
    run_case("points", 101, out_dir, points=[[[312.25, 501.5], [700.0, 222.75], [64.5, 980.0]],
                                             [[512.0, 512.0], [100.0, 900.25], [1000.5, 3.0]]],
             labels=[[1, 0, 2], [1, -1, 0]], multimask=True)
    # Box + points (no pad point), single-mask output.
    run_case("box", 102, out_dir, points=[[[400.0, 410.5], [620.25, 300.0]]], labels=[[1, 0]],
             boxes=[[250.5, 200.0, 800.0, 760.75]], multimask=False)
    # A mask prompt (low-res logits through mask_downscaling) and one point.
    run_case("mask", 103, out_dir, points=[[[333.0, 444.0]]], labels=[[1]], use_mask=True, multimask=True)
    # finetune-SAM multi-class: num_cls = 3 (4 mask tokens), image batch 2, no prompts (tokens tiled over B).
    run_case("cls3", 104, out_dir, num_multimask=3, b_img=2, multimask=True)
    # num_cls = 5 (6 mask tokens), image batch 2: a token count other than SAM's.
    run_case("cls5", 105, out_dir, num_multimask=5, b_img=2, multimask=True)


if __name__ == "__main__":
    main()
