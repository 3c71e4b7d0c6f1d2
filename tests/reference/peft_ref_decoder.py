"""tests/reference/peft_ref_decoder.py — PyTorch reference of finetune-SAM's decoder PEFT, and the golden file of
tests/finetune/test_peft_decoder.c.

Usage: /usr/bin/python3 tests/reference/peft_ref_decoder.py [OUT_DIR]   (default tests/finetune/golden)

Written from docs/MODEL.md §PEFT (and finetune-SAM's transformer.py, sam_LoRa.py) on top of sam_ref_decoder.py (SAM's
decoder):
- LoRA (_LoRA_qkv_proj): every q_proj and v_proj of the two-way transformer (self, token→image and image→token
  attention of each layer, final token→image attention) computes proj(x) + w_b(w_a(x)), scale 1, no bias on w_a/w_b.
  The base keeps SAM's key (q_proj.weight); the LoRA tensors are q_proj.w_a.weight (r, 256), q_proj.w_b.weight
  (internal, r) — mrisam's names (finetune-SAM nests the base under q_proj.proj.*).
- Adapters (TwoWayAttentionBlock with if_mask_decoder_adapter): Adapter (skip) after the token→image residual,
  0.5·MLP_Adapter (no skip) beside the MLP, and the SAME Adapter after the image→token residual.

The case "lora_adapter": num_cls = 3 (M = 4 tokens), rank 4, adapters in both layers, no prompt (sparse empty,
dense = no_mask_embed), image batch 2, 8×8 embedding grid. Weights are counter_init (decoder_weight of
gen_decoder_golden.py, so w_b is NOT zero), float64. Loss L = Σ masks[:,1:] ⊙ Wm + Σ iou[:,1:] ⊙ Wi with
Wm, Wi = counter_init("loss.masks"/"loss.iou"). Stored like gen_decoder_golden.py: meta.*, out.masks / out.iou
(all M tokens), grad.<key> of every parameter and grad.image_embed (256 samples + sums when > 4096 elements).
"""
import os
import sys
import types

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_decoder_golden  # noqa: E402
from gen_decoder_golden import cw, decoder_weight, put  # noqa: E402
from sam_ref_decoder import SamHead  # noqa: E402


class LoRALinear(nn.Linear):
    """finetune-SAM's _LoRA_qkv_proj: y = proj(x) + w_b(w_a(x))."""

    def __init__(self, inp, out, r):
        super().__init__(inp, out)
        self.w_a = nn.Linear(inp, r, bias=False)
        self.w_b = nn.Linear(r, out, bias=False)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + self.w_b(self.w_a(x))


class Adapter(nn.Module):
    """common.py Adapter(D, mlp_ratio=0.25, act=GELU, skip_connect)."""

    def __init__(self, dim, mlp_ratio=0.25, skip_connect=True):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.skip_connect = skip_connect
        self.D_fc1 = nn.Linear(dim, hidden)
        self.D_fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x):
        xs = self.D_fc2(self.act(self.D_fc1(x)))
        return x + xs if self.skip_connect else xs


def block_forward_adapter(self, queries, keys, query_pe, key_pe):
    """finetune-SAM's TwoWayAttentionBlock.forward with if_mask_decoder_adapter (docs/MODEL.md §PEFT)."""
    if self.skip_first_layer_pe:
        queries = self.self_attn(queries, queries, queries)
    else:
        q = queries + query_pe
        queries = queries + self.self_attn(q, q, queries)
    queries = self.norm1(queries)
    q, k = queries + query_pe, keys + key_pe
    queries = queries + self.cross_attn_token_to_image(q, k, keys)
    queries = self.Adapter(queries)
    queries = self.norm2(queries)
    queries = queries + self.mlp(queries) + self.scale * self.MLP_Adapter(queries)
    queries = self.norm3(queries)
    q, k = queries + query_pe, keys + key_pe
    keys = keys + self.cross_attn_image_to_token(k, q, queries)
    keys = self.Adapter(keys)
    keys = self.norm4(keys)
    return queries, keys


def add_peft(decoder, rank, adapters, scale=0.5):
    """Turns a sam_ref_decoder MaskDecoder into finetune-SAM's LoRA / adapter variant (in place)."""
    tr = decoder.transformer
    attns = []
    for layer in tr.layers:
        attns += [layer.self_attn, layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
        if adapters:
            layer.MLP_Adapter = Adapter(256, skip_connect=False)
            layer.Adapter = Adapter(256)
            layer.scale = scale
            layer.forward = types.MethodType(block_forward_adapter, layer)
    attns.append(tr.final_attn_token_to_image)
    if rank:
        for a in attns:
            a.q_proj = LoRALinear(256, a.internal, rank)
            a.v_proj = LoRALinear(256, a.internal, rank)


def run_case(name, seed, out_dir, num_multimask=3, b_img=2, emb_hw=(8, 8), img_size=128, rank=4, adapters=True):
    torch.manual_seed(0)
    model = SamHead(emb_hw, img_size, num_multimask)
    add_peft(model.mask_decoder, rank, adapters)
    model = model.to(torch.float64)
    sd = model.state_dict()
    model.load_state_dict({k: decoder_weight(k, tuple(v.shape), seed) for k, v in sd.items()}, strict=True)
    h, w = emb_hw
    emb = cw("input.image_embed", (b_img * 256, h * w), seed).reshape(b_img, 256, h, w).requires_grad_(True)
    sparse, dense = model.prompt_encoder(None, None, None)
    masks, iou = model.mask_decoder.predict_masks(emb, model.prompt_encoder.get_dense_pe(), sparse, dense)
    ms, io = masks[:, 1:], iou[:, 1:]
    wm = cw("loss.masks", (ms.numel(),), seed).reshape(ms.shape)
    wi = cw("loss.iou", (io.numel(),), seed).reshape(io.shape)
    loss = (ms * wm).sum() + (io * wi).sum()
    loss.backward()

    rng = np.random.RandomState(seed)
    d = {}
    meta = dict(seed=seed, num_mask_tokens=num_multimask + 1, b_img=b_img, emb_h=h, emb_w=w, img_size=img_size,
                lora_rank=rank, adapters=int(adapters))
    for k, v in meta.items():
        d["meta." + k] = torch.tensor([v], dtype=torch.int64)
    d["meta.adapter_scale"] = torch.tensor([0.5], dtype=torch.float64)
    d["in.image_embed.sum"] = emb.detach().sum().reshape(1)
    d["out.loss"] = loss.detach().reshape(1)
    put(d, "out.masks", masks, rng)
    put(d, "out.iou", iou, rng)
    for k, p in model.named_parameters():
        if p.grad is not None:
            put(d, "grad." + k, p.grad, rng)
    put(d, "grad.image_embed", emb.grad, rng)
    path = os.path.join(out_dir, "peft_decoder_%s.pth" % name)
    torch.save(d, path)
    print("%s: %d entries, %d bytes, loss %.6f" % (path, len(d), os.path.getsize(path), loss.item()))


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "finetune",
                                                                  "golden")
    os.makedirs(out_dir, exist_ok=True)
    gen_decoder_golden.N_SAMPLE = 256  # ~180 gradients in one file: keep it well under 1 MB
    run_case("lora_adapter", 201, out_dir)


if __name__ == "__main__":
    main()
