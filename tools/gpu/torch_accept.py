#!/usr/bin/env python3
"""tools/gpu/torch_accept.py — the PyTorch baselines of tools/gpu/accept.sh (docs/PERFORMANCE.md §GPU acceptance):
SAM's ViT-B image encoder at 1024 (docs/MODEL.md: 12 blocks, width 768, 12 heads, 14x14 windows, global blocks
2, 5, 8, 11, decomposed relative positions, the neck), written here from that description, trained one step at a
time on random data:
  mae      the MAE step (docs/MAE.md): window-stratified mask 0.75, the encoder on the visible tokens, the MAE decoder
           512 wide x 8 blocks x 16 heads over all tokens, norm-pix loss on the hidden patches, AdamW;
  full     full fine-tuning of encoder + head, Dice + cross-entropy, AdamW;
  lora     LoRA r = 4 on q and v of every encoder block (encoder weights frozen) + the head trained.
The fine-tuning head is a light one, not SAM's mask decoder: the neck's 256x64x64 embedding upscaled 4x by two
transposed convolutions (SAM's own upscaling) to num_cls logits; like the mask decoder it is under 0.1 % of the
encoder's FLOPs. Attention variants:
  mask     eager, bf16 autocast, SDPA with the decomposed relative-position bias (q·rel_h + q·rel_w, gathered per
           query/key pair) passed as the attention mask;
  fold     eager, the relative positions folded into SDPA: q' = [s·q, q·rel_h(row), q·rel_w(col)],
           k' = [k, onehot(row), onehot(col)], v padded with zeros to q''s width so every SDPA backend takes it,
           SDPA at scale 1;
  compile  torch.compile of the faster of the two (MAE step only, --compile).
Windowed MAE groups attend over their visible tokens only (mrisam's encoder also keeps the window's pad slots as
keys, docs/MAE.md: at most 6 % of the windowed attention; the FLOP count is mrisam's for both sides).
Figures per (task, variant, batch): images/s over --steps steps after one warm-up, MFU against --peak-tflops on the
model FLOPs per image handed in by --tflop (mrisam's count, pretrain/flops.h; none: MFU not printed), peak memory
(torch.cuda.max_memory_reserved, reset per configuration), time to the first step (the process's own start-up to
torch and the device being ready, measured once, plus the configuration's build and first step: what a fresh
process per configuration would take). A batch that runs out of memory is retried at half the size.
--check compares the mask and fold attentions (output and the gradients of q, k, v and both tables) in float64 on
random inputs for windowed, global and MAE-subset groups; --device cpu --tiny runs everything at a tiny size.
Prints one JSON line per configuration. Needs PyTorch >= 2.1 for SDPA's scale (Debian's 1.13 falls back to an
explicit softmax, for the CPU dry run)."""
import argparse
import contextlib
import json
import math
import os
import sys
import time


def process_age():
    """Seconds since this process started, as tools/bench_common.c measures it."""
    try:
        with open("/proc/self/stat") as f:
            st = f.read()
        start = int(st[st.rindex(")") + 2:].split()[19])
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
        return up - start / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return -1.0


import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")


def sdpa(q, k, v, mask=None, scale=None):
    if HAVE_SDPA:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    a = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if mask is not None:
        a = a + mask
    return a.softmax(-1) @ v


# ---- SAM's attention with decomposed relative positions, two ways -------------------------------------------------

def rel_bias_mask(q, rh, rw, rows, cols, L):
    """(mask) bias[g, h, i, j] = q_i·rh[r_i - r_j + L - 1] + q_i·rw[c_i - c_j + L - 1]; rows/cols (G, n), or (1, n)
    when every group shares them (the index is then built once and broadcast)."""
    G, H, n, _ = q.shape
    qh, qw = q @ rh.t(), q @ rw.t()  # (G, H, n, 2L-1)
    ih = (rows[:, :, None] - rows[:, None, :] + L - 1)[:, None].expand(G, H, n, n)
    iw = (cols[:, :, None] - cols[:, None, :] + L - 1)[:, None].expand(G, H, n, n)
    return qh.gather(-1, ih) + qw.gather(-1, iw)


def attend_mask(q, k, v, rh, rw, rows, cols, L, span):
    return sdpa(q, k, v, mask=rel_bias_mask(q, rh, rw, rows, cols, L).to(q.dtype))


def attend_fold(q, k, v, rh, rw, rows, cols, L, span):
    """q' = [s·q, q·rh(r_i - ρ), q·rw(c_i - γ)] over ρ, γ < span; k' = [k, onehot(r_j), onehot(c_j)]."""
    G, H, n, hd = q.shape
    ar = torch.arange(span, device=q.device)
    ih = (rows[:, :, None] - ar + L - 1)[:, None].expand(G, H, n, span)
    iw = (cols[:, :, None] - ar + L - 1)[:, None].expand(G, H, n, span)
    qh, qw = (q @ rh.t()).gather(-1, ih), (q @ rw.t()).gather(-1, iw)
    oh = F.one_hot(rows, span).to(k.dtype)[:, None].expand(G, H, n, span)
    ow = F.one_hot(cols, span).to(k.dtype)[:, None].expand(G, H, n, span)
    qf = torch.cat([q * hd ** -0.5, qh.to(q.dtype), qw.to(q.dtype)], -1)
    kf = torch.cat([k, oh, ow], -1)
    e = -(-qf.shape[-1] // 8) * 8  # head dims in multiples of 8; v as wide as q'/k'
    qf, kf = F.pad(qf, (0, e - qf.shape[-1])), F.pad(kf, (0, e - kf.shape[-1]))
    return sdpa(qf, kf, F.pad(v, (0, e - hd)), scale=1.0)[..., :hd]


ATTEND = {"mask": attend_mask, "fold": attend_fold}


class Attention(nn.Module):
    def __init__(self, dim, heads, rel_size, lora_r=0):
        super().__init__()
        self.h, self.hd, self.L = heads, dim // heads, rel_size
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.randn(2 * rel_size - 1, self.hd) * 0.02)
        self.rel_pos_w = nn.Parameter(torch.randn(2 * rel_size - 1, self.hd) * 0.02)
        self.lora_r = lora_r
        if lora_r:  # finetune-SAM's LoRA on q and v: B·A·x added to their rows of qkv; B starts at 0
            self.qa, self.va = (nn.Parameter(torch.randn(lora_r, dim) / math.sqrt(dim)) for _ in range(2))
            self.qb, self.vb = (nn.Parameter(torch.zeros(dim, lora_r)) for _ in range(2))

    def forward(self, x, rows, cols, span, variant):
        G, n, D = x.shape
        qkv = self.qkv(x)
        if self.lora_r:
            dq, dv = (x @ self.qa.t()) @ self.qb.t(), (x @ self.va.t()) @ self.vb.t()
            qkv = qkv + torch.cat([dq, torch.zeros_like(dq), dv], -1)
        q, k, v = qkv.view(G, n, 3, self.h, self.hd).permute(2, 0, 3, 1, 4)
        o = ATTEND[variant](q, k, v, self.rel_pos_h, self.rel_pos_w, rows, cols, self.L, span)
        return self.proj(o.transpose(1, 2).reshape(G, n, D))


class Block(nn.Module):
    def __init__(self, dim, heads, window, grid, lora_r):
        super().__init__()
        self.window = window  # 0: global
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, window or grid, lora_r)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))


class Encoder(nn.Module):
    """SAM's ViT image encoder (docs/MODEL.md) with the neck."""

    def __init__(self, c, lora_r=0):
        super().__init__()
        self.c, g, D = c, c["img"] // 16, c["dim"]
        self.g = g
        self.patch_embed = nn.Conv2d(3, D, 16, 16)
        self.pos_embed = nn.Parameter(torch.randn(1, g, g, D) * 0.02)
        self.blocks = nn.ModuleList(
            Block(D, c["heads"], 0 if i in c["globals"] else c["window"], g, lora_r) for i in range(c["depth"]))
        self.neck = nn.Sequential(nn.Conv2d(D, 256, 1, bias=False), LayerNorm2d(256),
                                  nn.Conv2d(256, 256, 3, padding=1, bias=False), LayerNorm2d(256))

    def embed(self, x):
        return (self.patch_embed(x).permute(0, 2, 3, 1) + self.pos_embed).flatten(1, 2)  # (B, N, D)

    def forward_dense(self, x, variant):
        B, g, w = x.shape[0], self.g, self.c["window"]
        t = self.embed(x)
        ar = torch.arange(g, device=x.device)
        grows, gcols = ar.repeat_interleave(g)[None], ar.repeat(g)[None]
        gp = -(-g // w) * w
        aw = torch.arange(w, device=x.device)
        wrows, wcols = aw.repeat_interleave(w)[None], aw.repeat(w)[None]
        for b in self.blocks:
            y = b.norm1(t)
            if b.window:  # SAM: pad the grid with zeros after norm1, attend within windows, crop
                y = F.pad(y.view(B, g, g, -1), (0, 0, 0, gp - g, 0, gp - g))
                y = y.view(B, gp // w, w, gp // w, w, -1).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, y.shape[-1])
                y = b.attn(y, wrows, wcols, w, variant)  # coordinates (1, n): shared, broadcast over groups
                y = y.view(B, gp // w, gp // w, w, w, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, gp, gp, -1)
                y = y[:, :g, :g].reshape(B, g * g, -1)
            else:
                y = b.attn(y, grows, gcols, g, variant)
            t = t + y
            t = t + b.mlp(b.norm2(t))
        return self.neck(t.view(B, g, g, -1).permute(0, 3, 1, 2))

    def forward_visible(self, x, vis, classes, variant):
        """vis (B, T): the visible token indices, ordered window class by class (stratified_mask)."""
        B, g, w = x.shape[0], self.g, self.c["window"]
        t = self.embed(x).gather(1, vis[..., None].expand(-1, -1, self.c["dim"]))
        rows, cols = vis // g, vis % g
        for b in self.blocks:
            y = b.norm1(t)
            if b.window:
                outs, o = [], 0
                for nwin, k in classes:  # windows of one size class batch together: (B·nwin, k) groups
                    sl = slice(o, o + nwin * k)
                    G = B * nwin
                    yy = y[:, sl].reshape(G, k, -1)
                    outs.append(b.attn(yy, (rows[:, sl] % w).reshape(G, k), (cols[:, sl] % w).reshape(G, k), w,
                                       variant).reshape(B, nwin * k, -1))
                    o += nwin * k
                y = torch.cat(outs, 1)
            else:
                y = b.attn(y, rows, cols, g, variant)
            t = t + y
            t = t + b.mlp(b.norm2(t))
        return t


class LayerNorm2d(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + self.bias[:, None, None]


def stratified_mask(B, g, w, ratio, gen, device):
    """Per window keep round((1 - ratio)·real tokens), drawn at random; windows grouped by size class. Returns the
    visible indices (B, T) and the classes [(windows, kept per window)]."""
    by_class = {}
    for wy in range(0, g, w):
        for wx in range(0, g, w):
            h, ww = min(w, g - wy), min(w, g - wx)
            idx = [(wy + i) * g + wx + j for i in range(h) for j in range(ww)]
            by_class.setdefault(len(idx), []).append(idx)
    cols, classes = [], []
    for n, wins in sorted(by_class.items(), reverse=True):
        k = max(1, round((1 - ratio) * n))
        classes.append((len(wins), k))
        for idx in wins:
            t = torch.tensor(idx)
            pick = torch.rand(B, n, generator=gen).argsort(1)[:, :k]
            cols.append(t[pick])
    return torch.cat(cols, 1).to(device), classes


def sincos_2d(g, dim):
    def one(d, pos):
        om = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        o = pos.reshape(-1, 1) * om
        return torch.cat([o.sin(), o.cos()], 1)
    gh, gw = torch.meshgrid(torch.arange(g, dtype=torch.float64), torch.arange(g, dtype=torch.float64), indexing="ij")
    return torch.cat([one(dim // 2, gh), one(dim // 2, gw)], 1).float()


class MaeDecoder(nn.Module):
    """MAE's decoder (docs/MAE.md): embed, mask tokens at the hidden positions, fixed 2-D sin-cos positions,
    pre-norm ViT blocks over all tokens, norm, per-patch prediction of 16x16 gray pixels."""

    def __init__(self, enc_dim, dim, depth, heads, g):
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.register_buffer("pos", sincos_2d(g, dim)[None], persistent=False)
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(
            n1=nn.LayerNorm(dim, eps=1e-6), qkv=nn.Linear(dim, 3 * dim), proj=nn.Linear(dim, dim),
            n2=nn.LayerNorm(dim, eps=1e-6), mlp=nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(),
                                                              nn.Linear(4 * dim, dim)))) for _ in range(depth))
        self.norm, self.pred = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 256)

    def forward(self, t, vis, N):
        B = t.shape[0]
        e = self.embed(t)
        x = self.mask_token.to(e.dtype).expand(B, N, -1).scatter(1, vis[..., None].expand(-1, -1, e.shape[-1]), e)
        x = x + self.pos
        for b in self.blocks:
            y = b["n1"](x)
            q, k, v = b["qkv"](y).view(B, N, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            x = x + b["proj"](sdpa(q, k, v).transpose(1, 2).reshape(B, N, -1))
            x = x + b["mlp"](b["n2"](x))
        return self.pred(self.norm(x))


def mae_loss(pred, gray, vis, g):
    B = gray.shape[0]
    tgt = gray.view(B, g, 16, g, 16).permute(0, 1, 3, 2, 4).reshape(B, g * g, 256)
    tgt = (tgt - tgt.mean(-1, keepdim=True)) / (tgt.var(-1, keepdim=True) + 1e-6).sqrt()
    hidden = torch.ones(B, g * g, device=gray.device).scatter(1, vis, 0.0)
    per = ((pred.float() - tgt) ** 2).mean(-1)
    return (per * hidden).sum() / hidden.sum()


class Head(nn.Module):
    """The light fine-tuning head: SAM's 4x upscaling of the neck's embedding, then num_cls logits."""

    def __init__(self, ncls):
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose2d(256, 64, 2, 2), LayerNorm2d(64), nn.GELU(),
                                nn.ConvTranspose2d(64, 32, 2, 2), nn.GELU(), nn.Conv2d(32, ncls, 1))

    def forward(self, e):
        return self.up(e)


def seg_loss(logits, target, ncls):
    lf = logits.float()
    ce = F.cross_entropy(lf, target)
    p = lf.softmax(1)
    oh = F.one_hot(target, ncls).permute(0, 3, 1, 2).float()
    inter, den = (p * oh).sum((2, 3)), (p + oh).sum((2, 3))
    return ce + (1 - (2 * inter + 1e-5) / (den + 1e-5)).mean()


# ---- one configuration --------------------------------------------------------------------------------------------

def build(task, c, device, seed):
    torch.manual_seed(seed)
    enc = Encoder(c, lora_r=4 if task == "lora" else 0).to(device)
    if task == "mae":
        extra = MaeDecoder(c["dim"], c["dec_dim"], c["dec_depth"], c["dec_heads"], enc.g).to(device)
        params = list(enc.parameters()) + list(extra.parameters())
        for p in enc.neck.parameters():
            p.requires_grad_(False)  # the MAE run does not train the neck
        params = [p for p in params if p.requires_grad]
    else:
        extra = Head(2).to(device)
        if task == "lora":
            for n, p in enc.named_parameters():  # the LoRA tensors alone in the encoder
                p.requires_grad_(n.endswith((".qa", ".qb", ".va", ".vb")))
        params = [p for p in list(enc.parameters()) + list(extra.parameters()) if p.requires_grad]
    kw = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, **kw)
    return enc, extra, opt


def make_step(task, enc, extra, opt, c, variant, device, dtype, compiled):
    """One training step; with compiled, torch.compile of the forward and loss (the mask is drawn outside, the
    backward and AdamW stay eager)."""
    g = enc.g

    def loss_of(x, gray, target, vis, classes):
        with torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext():
            if task == "mae":
                t = enc.forward_visible(x, vis, classes, variant)
                return mae_loss(extra(t, vis, g * g), gray, vis, g)
            return seg_loss(extra(enc.forward_dense(x, variant)), target, 2)
    fwd = torch.compile(loss_of) if compiled else loss_of

    def step(x, gray, target, gen):
        vis, classes = stratified_mask(x.shape[0], g, c["window"], 0.75, gen, device) if task == "mae" else (None, None)
        loss = fwd(x, gray, target, vis, classes)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def run_config(a, task, variant, batch, c, device, dtype, ready_s):
    """variant: mask, fold or compile:<mask|fold>."""
    t_cfg = time.perf_counter()
    enc, extra, opt = build(task, c, device, a.seed)
    step = make_step(task, enc, extra, opt, c, variant.split(":")[-1], device, dtype, variant.startswith("compile"))
    gen = torch.Generator().manual_seed(a.seed)
    S = c["img"]
    x = torch.randn(batch, 3, S, S, generator=gen).to(device)
    gray = torch.rand(batch, S, S, generator=gen).to(device)
    target = torch.randint(0, 2, (batch, S // 4, S // 4), generator=gen).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    loss = step(x, gray, target, gen)
    sync()
    first = ready_s + time.perf_counter() - t_cfg
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step(x, gray, target, gen)
    sync()
    dt = (time.perf_counter() - t0) / a.steps
    if not math.isfinite(float(loss)):
        raise RuntimeError(f"{task}/{variant}: loss is not finite")
    return dt, first, float(loss)


OOM = getattr(torch.cuda, "OutOfMemoryError", MemoryError)


def measure(a, task, variant, batch, c, device, dtype, ready_s):
    """Halves the batch on out-of-memory; returns the JSON record."""
    asked = batch
    while True:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            dt, first, loss = run_config(a, task, variant, batch, c, device, dtype, ready_s)
            break
        except OOM:
            if batch == 1:
                return {"task": task, "variant": variant, "batch_asked": asked, "batch": 0,
                        "error": "out of memory at batch 1"}
            print(f"torch_accept: {task}/{variant} batch {batch}: out of memory, trying {batch // 2}",
                  file=sys.stderr)
            batch //= 2
    ips = batch / dt
    tf = a.tflop.get(task)
    return {"task": task, "variant": variant, "batch_asked": asked, "batch": batch, "img_per_s": ips, "loss": loss,
            "mfu": ips * tf / a.peak_tflops if tf else None, "tflop_per_img": tf,
            "peak_gib": torch.cuda.max_memory_reserved() / 2 ** 30 if device.type == "cuda" else None,
            "first_step_s": first, "device": device.type, "precision": str(dtype).replace("torch.", ""),
            "torch": torch.__version__}


# ---- the equivalence check ----------------------------------------------------------------------------------------

def check(seed):
    """mask vs fold: output and every gradient, float64, windowed (with pad slots), global and MAE-subset groups."""
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    cases = []
    for _ in range(4):
        w = int(torch.randint(3, 9, (1,), generator=gen))
        g = int(torch.randint(w, 2 * w, (1,), generator=gen))
        G, H, hd = int(torch.randint(1, 4, (1,), generator=gen)), 2, 8 * int(torch.randint(1, 3, (1,), generator=gen))
        aw = torch.arange(w)
        cases.append(("window", G, H, hd, aw.repeat_interleave(w)[None].expand(G, -1), aw.repeat(w)[None].expand(G, -1),
                      w, w))
        ag = torch.arange(g)
        cases.append(("global", G, H, hd, ag.repeat_interleave(g)[None].expand(G, -1), ag.repeat(g)[None].expand(G, -1),
                      g, g))
        n = max(2, (g * g) // 4)  # an MAE subset: random tokens of the grid, per group
        pick = torch.rand(G, g * g, generator=gen).argsort(1)[:, :n]
        cases.append(("subset", G, H, hd, pick // g, pick % g, g, g))
    for name, G, H, hd, rows, cols, L, span in cases:
        n = rows.shape[1]
        mk = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_()  # noqa: E731
        q, k, v, rh, rw = mk(G, H, n, hd), mk(G, H, n, hd), mk(G, H, n, hd), mk(2 * L - 1, hd), mk(2 * L - 1, hd)
        gout = torch.randn(G, H, n, hd, generator=gen, dtype=torch.float64)
        res = []
        for fn in (attend_mask, attend_fold):
            o = fn(q, k, v, rh, rw, rows, cols, L, span)
            grads = torch.autograd.grad(o, (q, k, v, rh, rw), gout)
            res.append([o.detach()] + [t.detach() for t in grads])
        for ta, tb in zip(*res):
            # floor 1e-3 (the gradients are of order 1): a gradient that is 0 analytically is rounding noise in both
            # variants (an MAE subset whose tokens share one row: that row's bias is the same for every key, and
            # softmax ignores it; seed 124399198)
            worst = max(worst, float((ta - tb).abs().max() / max(float(tb.abs().max()), 1e-3)))
    return worst


def main():
    t_ready0 = process_age()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (CPU dry run)")
    ap.add_argument("--tasks", default="mae,full,lora")
    ap.add_argument("--variants", default="mask,fold")
    ap.add_argument("--compile", action="store_true", help="also torch.compile of the faster variant (MAE step)")
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--precision", default=None, help="bf16 (default on CUDA) or fp32 (default on the CPU)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (CUDA default 989; CPU: none)")
    ap.add_argument("--tflop", default="", help="model TFLOP per image per task, e.g. mae=2.02,full=2.92,lora=2.0")
    ap.add_argument("--check", action="store_true", help="only the mask-vs-fold equivalence check")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    a.seed = int.from_bytes(os.urandom(4), "little") if a.seed is None else a.seed
    print(f"seed: {a.seed} (replay with --seed {a.seed})", file=sys.stderr)
    worst = check(a.seed)
    ok = worst < 1e-10
    print(json.dumps({"check": "mask_vs_fold", "max_rel_diff": worst, "ok": ok, "seed": a.seed}), flush=True)
    if a.check or not ok:
        return 0 if ok else 1
    a.tflop = {k: float(v) for k, v in (kv.split("=") for kv in a.tflop.split(",") if kv)}
    device = torch.device(a.device)
    if a.peak_tflops is None and device.type == "cuda":
        a.peak_tflops = 989.0
    if a.peak_tflops is None:
        a.tflop = {}  # no MFU without a peak
    prec = a.precision or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if prec == "bf16" else torch.float32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.zeros(1, device=device)
        torch.cuda.synchronize()
    ready_s = process_age() if t_ready0 >= 0 else 0.0  # start-up: interpreter, torch, the device's context
    if a.tiny:
        c = dict(img=160, dim=64, depth=2, heads=2, window=4, globals=(1,), dec_dim=32, dec_depth=1, dec_heads=2)
    else:
        c = dict(img=1024, dim=768, depth=12, heads=12, window=14, globals=(2, 5, 8, 11), dec_dim=512, dec_depth=8,
                 dec_heads=16)
    variants = a.variants.split(",")
    for task in a.tasks.split(","):
        best = None
        for variant in variants:
            for batch in map(int, a.batches.split(",")):
                r = measure(a, task, variant, batch, c, device, dtype, ready_s)
                print(json.dumps(r), flush=True)
                if "img_per_s" in r and (best is None or r["img_per_s"] > best[1]):
                    best = (variant, r["img_per_s"])
        if a.compile and task == "mae" and not hasattr(torch, "compile"):
            print(json.dumps({"task": task, "variant": "compile", "batch_asked": 0, "batch": 0,
                              "error": f"torch {torch.__version__} has no torch.compile"}), flush=True)
        elif a.compile and task == "mae" and best:
            for batch in map(int, a.batches.split(",")):
                r = measure(a, task, "compile:" + best[0], batch, c, device, dtype, ready_s)
                print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
