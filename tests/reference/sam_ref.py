"""tests/reference/sam_ref.py — the whole SAM model in PyTorch (image encoder from sam_ref_encoder.py, prompt encoder
and mask decoder from sam_ref_decoder.py) under SAM's top-level key names, and the official predictor's geometry:
ResizeLongestSide coordinates and mask post-processing (docs/MODEL.md §Preprocessing).

Also a small CLI:
  /usr/bin/python3 sam_ref.py ckpt OUT.pth VARIANT SEED     write a counter_init checkpoint (float32; test_segment.sh)
  /usr/bin/python3 sam_ref.py golden [OUT_DIR]              write tests/finetune/golden/model_vit_test.pth
                                                             (test_sam_model.c):
      the whole model in float64, image → encoder → prompts → decoder, loss L = Σ masks_sel·Wm + Σ iou_sel·Wi
      (gen_decoder_golden.py's loss), outputs and the gradients of every parameter and of the input image.
Run with Debian's /usr/bin/python3 (torch 1.13, CPU).
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sam_ref_encoder as enc_ref  # noqa: E402
from counter_init import counter_init  # noqa: E402
from sam_ref_decoder import MaskDecoder, PromptEncoder  # noqa: E402


class Sam(nn.Module):
    def __init__(self, variant="vit_b", num_multimask_outputs=3):
        super().__init__()
        self.image_encoder = enc_ref.build(variant)
        S = enc_ref.VARIANTS[variant]["img_size"]
        g = S // 16
        self.img_size = S
        self.prompt_encoder = PromptEncoder(256, (g, g), S)
        self.mask_decoder = MaskDecoder(256, num_multimask_outputs)

    def predict(self, x, points=None, boxes=None, multimask_output=True):
        """x: preprocessed (1,3,S,S); points/boxes in the resized frame. Returns low-res masks and IoU (selected)."""
        emb = self.image_encoder(x)
        sparse, dense = self.prompt_encoder(points, boxes, None)
        return self.mask_decoder(emb, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output)


def test_weight(name, shape, seed):
    """counter_init; the decoder's cross-attention projections (names with "token", scale 1 in counter_init) are
    rescaled by 1/sqrt(fan_in) in float32 — the same rule as gen_decoder_golden.py and the C tests."""
    v = counter_init(name, shape, seed)
    if ("token_to_image" in name or "image_to_token" in name) and len(shape) == 2:
        v = (v * np.float32(1.0 / np.sqrt(shape[1]))).astype(np.float32)
    return torch.from_numpy(v)


def counter_init_(model, seed):
    sd = model.state_dict()
    model.load_state_dict({k: test_weight(k, tuple(v.shape), seed) for k, v in sd.items()}, strict=True)
    return model


def apply_coords(xy, h, w, S):
    nh, nw = enc_ref.resize_longest_shape(h, w, S)
    xy = np.array(xy, dtype=np.float64).reshape(-1, 2).copy()
    xy[:, 0] *= nw / w
    xy[:, 1] *= nh / h
    return xy


def postprocess(low, S, h, w):
    """low (1,C,lh,lw) logits → (1,C,h,w) logits: bilinear to S, crop to the resized frame, bilinear to (h,w)."""
    nh, nw = enc_ref.resize_longest_shape(h, w, S)
    m = F.interpolate(low, (S, S), mode="bilinear", align_corners=False)
    m = m[..., :nh, :nw]
    return F.interpolate(m, (h, w), mode="bilinear", align_corners=False)


def golden(out_dir, seed=201):
    from gen_decoder_golden import put, cw
    m = counter_init_(Sam("vit_test"), seed).double()
    S = m.img_size
    x = cw("input.image_embed", (3, S * S), seed).reshape(1, 3, S, S).requires_grad_(True)
    pts = [[60.25, 100.5], [200.0, 31.0]]
    labels = [1, 0]
    P = (torch.tensor([pts], dtype=torch.float64), torch.tensor([labels]))
    emb = m.image_encoder(x)
    sparse, dense = m.prompt_encoder(P, None, None)
    masks_all, iou_all = m.mask_decoder.predict_masks(emb, m.prompt_encoder.get_dense_pe(), sparse, dense)
    ms, io = masks_all[:, 1:], iou_all[:, 1:]
    wm = cw("loss.masks", (ms.numel(),), seed).reshape(ms.shape)
    wi = cw("loss.iou", (io.numel(),), seed).reshape(io.shape)
    loss = (ms * wm).sum() + (io * wi).sum()
    loss.backward()
    rng = np.random.RandomState(seed)
    d = {"meta.seed": torch.tensor([seed]), "in.points": torch.tensor(pts, dtype=torch.float32),
         "in.labels": torch.tensor(labels), "out.loss": loss.detach().reshape(1)}
    put(d, "out.embed", emb, rng)
    put(d, "out.masks", masks_all, rng)
    put(d, "out.iou", iou_all, rng)
    for k, p in m.named_parameters():
        if p.grad is not None:
            put(d, "grad." + k, p.grad, rng)
    put(d, "grad.image", x.grad, rng)
    path = os.path.join(out_dir, "model_vit_test.pth")
    torch.save(d, path)
    print("%s: %d entries, %d bytes, loss %.6f" % (path, len(d), os.path.getsize(path), loss.item()))


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "ckpt":
        m = counter_init_(Sam(sys.argv[3]), int(sys.argv[4]))
        torch.save(m.state_dict(), sys.argv[2])
        return
    if len(sys.argv) in (2, 3) and sys.argv[1] == "golden":
        golden(sys.argv[2] if len(sys.argv) == 3
               else os.path.join(os.path.dirname(__file__), "..", "finetune", "golden"))
        return
    print(__doc__)
    sys.exit(2)


if __name__ == "__main__":
    main()
