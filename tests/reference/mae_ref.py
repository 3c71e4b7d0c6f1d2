"""tests/reference/mae_ref.py — a PyTorch reference of ONE MAE step on SAM's image encoder as mrisam implements it
(docs/MAE.md §Masking to §Loss; pretrain/mae.h, mae_decoder.h, mae_mask.h), written from the design, not the C code.

Independence from the C code: the C encoder runs its blocks on the SUBSET of visible tokens (index lists, grouped
attention). Here the encoder is SAM's DENSE encoder (tests/reference/sam_ref_encoder.py, reused as is) whose
attention gets an additive mask instead:
  * windowed block: a query attends to the visible real tokens of its window and to the window's KEPT pad slots
    (SAM pads after norm1 with zero vectors, so their k/v are the qkv bias); the other pad slots and every hidden
    token are −inf;
  * global block: a query attends to the visible tokens of its image only.
Hidden tokens still flow through the dense blocks but never reach a visible one (they are masked as keys, and MLP/LN
work per token); every query may also attend to itself so that no row is all −inf (no NaN in masked rows). This equals
the grouped computation (docs/MAE.md §Encoder on the visible tokens). The visible tokens' last-block outputs (no neck)
feed the decoder:
  LayerNorm(C) eps 1e-6 (norm_in) → Linear(C→Dd) (embed) on visible tokens; mask_token at hidden grid positions;
  + fixed 2D sin-cos positions (columns first) → depth pre-norm blocks (global attention) → LayerNorm → Linear(Dd→p²)
  → pred (B, L, p²), patch pixels in (py, px) order.
Loss: norm-pix MSE of the gray target on the hidden patches (per-patch mean, unbiased variance, eps 1e-6), the mean
over hidden patches of the per-patch mean squared error.
Run with Debian's /usr/bin/python3 (torch 1.13, CPU); float64 throughout for the golden files.
"""
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sam_ref_encoder as se  # noqa: E402

NEG = float("-inf")


# ---- encoder on visible tokens: dense SAM with attention masks ---------------------------------------------------

def attn_masked(attn, x, bias):
    """SAM's Attention (module `attn` of sam_ref_encoder) on x (B', H, W, C) with an additive bias (B', N, N)
    broadcast over heads."""
    Bp, H, W, _ = x.shape
    N = H * W
    nh = attn.num_heads
    qkv = attn.qkv(x).reshape(Bp, N, 3, nh, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, Bp * nh, N, -1).unbind(0)
    a = (q * attn.scale) @ k.transpose(-2, -1)
    Rh = se.get_rel_pos(H, H, attn.rel_pos_h)
    Rw = se.get_rel_pos(W, W, attn.rel_pos_w)
    r_q = q.reshape(Bp * nh, H, W, -1)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
    a = a.view(Bp * nh, H, W, H, W) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    a = a.view(Bp, nh, N, N) + bias[:, None]
    a = a.softmax(dim=-1).view(Bp * nh, N, N)
    o = (a @ v).view(Bp, nh, H, W, -1).permute(0, 2, 3, 1, 4).reshape(Bp, H, W, -1)
    return attn.proj(o)


def key_allowed(g, ws, keep, pad):
    """Per image: (g, g) bool of visible real tokens and (gp, gp) bool of allowed window slots (visible real tokens
    plus kept pad slots), gp = ceil(g/ws)·ws. keep: grid indices y·g + x; pad: padded-grid indices y·gp + x."""
    gp = -(-g // ws) * ws if ws else g
    vis = torch.zeros(g * g, dtype=torch.bool)
    vis[keep.long()] = True
    slots = torch.zeros(gp, gp, dtype=torch.bool)
    slots[:g, :g] = vis.view(g, g)
    sl = slots.view(-1)
    if pad is not None and len(pad):
        sl[pad.long()] = True
    return vis.view(g, g), slots


def block_masked(blk, x, vis, slots):
    """One SAM Block (official variant: pad after norm1) with masked attention. x (B, H, W, C); vis (B, H, W) and
    slots (B, Hp, Wp) bool from key_allowed."""
    shortcut = x
    B, H, W, _ = x.shape
    x = blk.norm1(x)
    if blk.window_size > 0:
        ws = blk.window_size
        x, pad_hw = se.window_partition(x, ws)                  # (B·nW, ws, ws, C), zero pad slots
        Hp, Wp = pad_hw
        allow = slots.view(B, Hp // ws, ws, Wp // ws, ws).permute(0, 1, 3, 2, 4).reshape(-1, ws * ws)
    else:
        allow = vis.reshape(B, H * W)
    n = allow.shape[1]
    ok = allow[:, None, :] | torch.eye(n, dtype=torch.bool)[None]  # self always: no all −inf row
    bias = torch.zeros(ok.shape, dtype=x.dtype).masked_fill(~ok, NEG)
    x = attn_masked(blk.attn, x, bias)
    if blk.window_size > 0:
        x = se.window_unpartition(x, blk.window_size, pad_hw, (H, W))
    x = shortcut + x
    return x + blk.mlp(blk.norm2(x))


def encoder_visible(enc, x, keep, pad):
    """enc: sam_ref_encoder.ImageEncoderViT (official blocks); x (B,3,S,S); keep (B, n_vis), pad (B, n_pad) int.
    Returns the last block's output of the visible tokens in keep's order, (B, n_vis, C)."""
    t = enc.patch_embed(x) + enc.pos_embed
    B, g = t.shape[0], t.shape[1]
    ws = max(b.window_size for b in enc.blocks)
    vs, ss = [], []
    for b in range(B):
        v, s = key_allowed(g, ws, keep[b], pad[b] if pad is not None else None)
        vs.append(v)
        ss.append(s)
    vis, slots = torch.stack(vs), torch.stack(ss)
    for blk in enc.blocks:
        t = block_masked(blk, t, vis, slots)
    C = t.shape[-1]
    t = t.reshape(B, g * g, C)
    return torch.stack([t[b, keep[b].long()] for b in range(B)])


# ---- decoder ------------------------------------------------------------------------------------------------------

def sincos_2d(grid, dim, dtype=torch.float64):
    """(grid², dim): channels [0, q) sin(col·ω_k), [q, 2q) cos(col·ω_k), [2q, 3q) sin(row·ω_k), [3q, 4q) cos(row·ω_k),
    q = dim/4, ω_k = 10000^(−k/q); token y·grid + x."""
    q = dim // 4
    om = 1.0 / 10000.0 ** (torch.arange(q, dtype=torch.float64) / q)
    yy, xx = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    c = xx.reshape(-1, 1) * om[None]
    r = yy.reshape(-1, 1) * om[None]
    return torch.cat([c.sin(), c.cos(), r.sin(), r.cos()], dim=1).to(dtype)


class DecAttn(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = (q @ k.transpose(-2, -1)) * (D // self.heads) ** -0.5
        o = a.softmax(-1) @ v
        return self.proj(o.transpose(1, 2).reshape(B, N, D))


class DecMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))  # exact erf GELU


class DecBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = DecAttn(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = DecMlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MaeDecoder(nn.Module):
    """State-dict keys = mrisam's decoder names without the "mae_decoder." prefix."""

    def __init__(self, enc_dim, dim, depth, heads, grid, patch, target_ch=1):
        super().__init__()
        self.grid = grid
        self.norm_in = nn.LayerNorm(enc_dim, eps=1e-6)
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([DecBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch * patch * target_ch)
        self.register_buffer("pos", sincos_2d(grid, dim), persistent=False)

    def forward(self, tokens, keep):
        """tokens (B, n_vis, C) in keep's order; keep (B, n_vis) grid indices → pred (B, L, p²·T)."""
        B, L = tokens.shape[0], self.grid * self.grid
        e = self.embed(self.norm_in(tokens))
        x = self.mask_token.expand(B, L, -1).clone()
        for b in range(B):
            x[b, keep[b].long()] = e[b]
        x = x + self.pos.to(x.dtype)[None]
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))


# ---- loss ---------------------------------------------------------------------------------------------------------

def patchify(gray, patch):
    """(B, S, S) → (B, L, p²), token y·g + x, pixels (py, px)."""
    B, S, _ = gray.shape
    g = S // patch
    return gray.reshape(B, g, patch, g, patch).permute(0, 1, 3, 2, 4).reshape(B, g * g, patch * patch)


def mae_loss(pred, gray, keep, patch, norm_pix=True):
    t = patchify(gray.to(pred.dtype), patch)
    if norm_pix:
        mean = t.mean(-1, keepdim=True)
        var = t.var(-1, keepdim=True, unbiased=True)
        t = (t - mean) / (var + 1e-6) ** 0.5
    B, L = t.shape[0], t.shape[1]
    hidden = torch.ones(B, L, dtype=pred.dtype)
    for b in range(B):
        hidden[b, keep[b].long()] = 0
    per = ((pred - t) ** 2).mean(-1)
    return (per * hidden).sum() / hidden.sum()


def mae_step(enc, dec, x, gray, keep, pad, patch, norm_pix=True):
    """Forward of one MAE step: the loss (a scalar tensor); call .backward() for the gradients."""
    tok = encoder_visible(enc, x, keep, pad)
    pred = dec(tok, keep)
    return mae_loss(pred, gray, keep, patch, norm_pix)


def stratified_mask(g, ws, ratio, gen):
    """One sample's (keep, pad) lists: per window keep counts from largest-remainder rounding of (1−m)·n_real (sum =
    floor(L(1−m))) and round-half-up((1−m)·n_pad) pad slots, drawn at random; window order, raster order inside."""
    gp = -(-g // ws) * ws
    nw = gp // ws
    wins = []
    for wy in range(nw):
        for wx in range(nw):
            real, pads = [], []
            for y in range(wy * ws, wy * ws + ws):
                for x in range(wx * ws, wx * ws + ws):
                    (real if (y < g and x < g) else pads).append((y, x))
            wins.append((real, pads))
    want = [(1 - ratio) * len(r) for r, _ in wins]
    k = [math.floor(w) for w in want]
    left = math.floor(g * g * (1 - ratio)) - sum(k)
    order = sorted(range(len(wins)), key=lambda i: -(want[i] - k[i]))
    for i in order[:left]:
        k[i] += 1
    keep, pad = [], []
    for i, (real, pads) in enumerate(wins):
        sel = torch.randperm(len(real), generator=gen)[:k[i]].sort().values.tolist()
        keep += [real[j][0] * g + real[j][1] for j in sel]
        npd = int(math.floor((1 - ratio) * len(pads) + 0.5))
        sel = torch.randperm(len(pads), generator=gen)[:npd].sort().values.tolist() if pads else []
        pad += [pads[j][0] * gp + pads[j][1] for j in sel]
    return torch.tensor(keep, dtype=torch.int32), torch.tensor(pad, dtype=torch.int32)
