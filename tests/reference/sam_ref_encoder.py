"""tests/reference/sam_ref_encoder.py — a PyTorch reference of SAM's image encoder (ImageEncoderViT), written from
docs/MODEL.md §Image encoder (not copied from segment-anything), with SAM's exact state-dict key names, so
`model.load_state_dict(official_sd_subset, strict=True)` works and torch.save(model.state_dict()) gives the keys of a
SAM file minus the "image_encoder." prefix.

Also SAM's preprocessing (docs/MODEL.md §Preprocessing) for `mrisam embed`'s test (bilinear resize without antialias, as
mrisam does). Run with Debian's /usr/bin/python3 (torch 1.13, CPU).
"""
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import counter_init  # noqa: E402

PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]

VARIANTS = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11), img_size=1024),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23), img_size=1024),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31), img_size=1024),
    "vit_test": dict(embed_dim=192, depth=4, num_heads=3, global_attn_indexes=(1, 3), img_size=256),
}


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of NCHW (docs/MODEL.md §Image encoder)."""

    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    def __init__(self, d, m):
        super().__init__()
        self.lin1 = nn.Linear(d, m)
        self.lin2 = nn.Linear(m, d)

    def forward(self, x):
        return self.lin2(F.gelu(self.lin1(x)))  # exact erf GELU


def get_rel_pos(q_size, k_size, rel_pos):
    """(q_size, k_size, C) table; linear interpolation (align_corners=False) when the length differs."""
    m = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != m:
        rel_pos = F.interpolate(rel_pos.t()[None], size=m, mode="linear", align_corners=False)[0].t()
    qc = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    kc = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    idx = (qc - kc) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[idx.long()]


class Attention(nn.Module):
    def __init__(self, dim, num_heads, input_size, rel_len=None):
        super().__init__()
        self.num_heads = num_heads
        hd = dim // num_heads
        self.scale = hd ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        lh = rel_len if rel_len else 2 * input_size[0] - 1
        lw = rel_len if rel_len else 2 * input_size[1] - 1
        self.rel_pos_h = nn.Parameter(torch.zeros(lh, hd))
        self.rel_pos_w = nn.Parameter(torch.zeros(lw, hd))

    def forward(self, x):
        B, H, W, _ = x.shape
        N = H * W
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, N, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        # decomposed relative positions, with the UNSCALED q (docs/MODEL.md §Image encoder)
        Rh = get_rel_pos(H, H, self.rel_pos_h)
        Rw = get_rel_pos(W, W, self.rel_pos_w)
        r_q = q.reshape(B * self.num_heads, H, W, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
        attn = (attn.view(B * self.num_heads, H, W, H, W) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :])
        attn = attn.view(B * self.num_heads, N, N).softmax(dim=-1)
        x = (attn @ v).view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)


def window_partition(x, ws):
    B, H, W, C = x.shape
    ph = (ws - H % ws) % ws
    pw = (ws - W % ws) % ws
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    Hp, Wp = H + ph, W + pw
    x = x.view(B, Hp // ws, ws, Wp // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, C)
    return x, (Hp, Wp)


def window_unpartition(x, ws, pad_hw, hw):
    Hp, Wp = pad_hw
    H, W = hw
    B = x.shape[0] // (Hp * Wp // ws // ws)
    x = x.view(B, Hp // ws, Wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, :H, :W, :].contiguous()


class Block(nn.Module):
    """Pre-norm transformer block. finetune_sam=True partitions BEFORE norm1 (pad tokens become norm1.bias)."""

    def __init__(self, dim, num_heads, window_size, input_size, mlp_ratio=4.0, rel_len=None, finetune_sam=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, input_size if window_size == 0 else (window_size, window_size),
                              rel_len)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size
        self.finetune_sam = finetune_sam

    def forward(self, x):
        shortcut = x
        H, W = x.shape[1], x.shape[2]
        if self.finetune_sam and self.window_size > 0:
            x, pad_hw = window_partition(x, self.window_size)
            x = self.norm1(x)
        else:
            x = self.norm1(x)
            if self.window_size > 0:
                x, pad_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (H, W))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch, in_chans, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    def __init__(self, img_size=1024, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 out_chans=256, window_size=14, global_attn_indexes=(), rel_len_window=None, rel_len_global=None,
                 finetune_sam=False, mlp_ratio=4.0):
        super().__init__()
        g = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, embed_dim))
        self.blocks = nn.ModuleList()
        for i in range(depth):
            glob = i in global_attn_indexes
            self.blocks.append(Block(embed_dim, num_heads, 0 if glob else window_size, (g, g), mlp_ratio,
                                     rel_len_global if glob else rel_len_window, finetune_sam))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x, stages=None):
        """stages: optional list that receives the patch-embed (+pos) output and every block's output (BHWC)."""
        x = self.patch_embed(x) + self.pos_embed
        if stages is not None:
            stages.append(x)
        for blk in self.blocks:
            x = blk(x)
            if stages is not None:
                stages.append(x)
        return self.neck(x.permute(0, 3, 1, 2))


def build(name, **kw):
    cfg = dict(VARIANTS[name])
    cfg.update(kw)
    return ImageEncoderViT(**cfg)


def counter_init_(model, seed, prefix="image_encoder."):
    """Sets every tensor from counter_init (name = prefix + state-dict key), as the C tests do."""
    sd = model.state_dict()
    new = {}
    for k, v in sd.items():
        new[k] = torch.from_numpy(counter_init.counter_init(prefix + k, tuple(v.shape), seed))
    model.load_state_dict(new, strict=True)
    return model


def resize_longest_shape(h, w, target):
    scale = target * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def preprocess(img_hwc, img_size):
    """SAM preprocessing as mrisam embed implements it: float 0..255 HWC (gray replicated to RGB), bilinear resize of
    the longest side to img_size (align_corners=False, no antialias), (x − mean)/std, zero pad bottom/right."""
    x = torch.as_tensor(np.ascontiguousarray(img_hwc), dtype=torch.float32)
    if x.dim() == 2:
        x = x[:, :, None]
    if x.shape[2] == 1:
        x = x.repeat(1, 1, 3)
    h, w = x.shape[0], x.shape[1]
    nh, nw = resize_longest_shape(h, w, img_size)
    x = x.permute(2, 0, 1)[None]
    if (nh, nw) != (h, w):
        x = F.interpolate(x.double(), size=(nh, nw), mode="bilinear", align_corners=False).float()
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    return F.pad(x, (0, img_size - nw, 0, img_size - nh))
