"""tests/reference/peft_ref_encoder.py — SAM's image encoder with finetune-SAM's PEFT (LoRA on q/v, Space/MLP
adapters), written from docs/MODEL.md §PEFT on top of sam_ref_encoder.py; golden files for
tests/finetune/test_peft_encoder.c.

    /usr/bin/python3 tests/reference/peft_ref_encoder.py        (from the repository root)

LoRA (_LoRA_qkv, SAMed-style, scale 1, no dropout): qkv = W x + b; qkv[..., 0:D] += B_q(A_q x); qkv[..., 2D:3D] +=
B_v(A_v x). The LoRA module is the qkv Linear itself (a subclass), so its keys are attn.qkv.{weight,bias} (SAM's,
as mrisam keeps them) and attn.qkv.linear_{a,b}_{q,v}.weight (finetune-SAM's). It acts on the padded windowed
tensor, so pad tokens get the delta too (0 for official zero pads, B·A·norm1.bias for finetune-SAM's pads).
Adapter (common.py): x → fc2(GELU(fc1(x))), hidden int(0.25·D). Block with adapters:
    xmid = shortcut + Space_Adapter(attn(...))  (Space_Adapter with its skip: a + fc2(GELU(fc1(a))))
    out  = xmid + mlp(xn) + 0.5·MLP_Adapter(xn),  xn = norm2(xmid)     (MLP_Adapter without skip)

Writes tests/finetune/golden/peft_encoder.pth (torch.save of a flat dict name → tensor): a tiny encoder with padded
windows (48×48 input, patch 8 → 6×6 grid, window 4 → 2×2 windows with 2 pad rows/cols) and one global block,
D 48, 3 heads, depth 3 (global [1]), out_chans 32, batch 2; LoRA rank 4 on blocks {0, 1}, adapters on {1, 2}.
Every weight (LoRA B included, so it is NON-zero) comes from counter_init (seed SEED, names "image_encoder.<key>"),
so the file holds no weights: input, G, and for official SAM's block (prefix "") and finetune-SAM's (prefix "ft.")
each block's output, emb, and for L = Σ emb·G the gradients of every PEFT tensor, of norm1/qkv/proj/norm2 of every
block, pos_embed, patch_embed.proj.bias and of the input. Computed in float64.
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sam_ref_encoder as ref  # noqa: E402

SEED = 11
OUT = os.path.join(HERE, "..", "finetune", "golden")

CFG = dict(img_size=48, patch_size=8, embed_dim=48, depth=3, num_heads=3, global_attn_indexes=(1,), window_size=4,
           out_chans=32)
RANK = 4
LORA_BLOCKS = (0, 1)
ADAPTER_BLOCKS = (1, 2)
B = 2


class LoRAQKV(nn.Linear):
    """The qkv Linear plus rank-r updates of its q and v outputs (docs/MODEL.md §PEFT)."""

    def __init__(self, dim, r):
        super().__init__(dim, 3 * dim, bias=True)
        self.dim = dim
        self.linear_a_q = nn.Linear(dim, r, bias=False)
        self.linear_b_q = nn.Linear(r, dim, bias=False)
        self.linear_a_v = nn.Linear(dim, r, bias=False)
        self.linear_b_v = nn.Linear(r, dim, bias=False)

    def forward(self, x):
        qkv = F.linear(x, self.weight, self.bias)
        dq = self.linear_b_q(self.linear_a_q(x))
        dv = self.linear_b_v(self.linear_a_v(x))
        d = self.dim
        return torch.cat([qkv[..., :d] + dq, qkv[..., d:2 * d], qkv[..., 2 * d:] + dv], dim=-1)


class Adapter(nn.Module):
    def __init__(self, dim, skip):
        super().__init__()
        self.D_fc1 = nn.Linear(dim, int(dim * 0.25))
        self.D_fc2 = nn.Linear(int(dim * 0.25), dim)
        self.skip = skip

    def forward(self, x):
        xs = self.D_fc2(F.gelu(self.D_fc1(x)))
        return x + xs if self.skip else xs


class PeftBlock(ref.Block):
    """ref.Block (both pad conventions) with optional LoRA qkv and adapters."""

    def __init__(self, dim, num_heads, window_size, input_size, lora_rank=0, adapter=False, scale=0.5):
        super().__init__(dim, num_heads, window_size, input_size)
        if lora_rank:
            self.attn.qkv = LoRAQKV(dim, lora_rank)
        self.adapter = adapter
        self.scale = scale
        if adapter:
            self.Space_Adapter = Adapter(dim, skip=True)
            self.MLP_Adapter = Adapter(dim, skip=False)

    def forward(self, x):
        shortcut = x
        H, W = x.shape[1], x.shape[2]
        if self.finetune_sam and self.window_size > 0:
            x, pad_hw = ref.window_partition(x, self.window_size)
            x = self.norm1(x)
        else:
            x = self.norm1(x)
            if self.window_size > 0:
                x, pad_hw = ref.window_partition(x, self.window_size)
        x = self.attn(x)
        if self.adapter:
            x = self.Space_Adapter(x)  # per token: the same before or after unpartition
        if self.window_size > 0:
            x = ref.window_unpartition(x, self.window_size, pad_hw, (H, W))
        x = shortcut + x
        xn = self.norm2(x)
        if self.adapter:
            return x + self.mlp(xn) + self.scale * self.MLP_Adapter(xn)
        return x + self.mlp(xn)


def build(cfg, rank, lora_blocks, adapter_blocks):
    m = ref.ImageEncoderViT(**cfg)
    g = cfg["img_size"] // cfg["patch_size"]
    for i in range(cfg["depth"]):
        glob = i in cfg["global_attn_indexes"]
        m.blocks[i] = PeftBlock(cfg["embed_dim"], cfg["num_heads"], 0 if glob else cfg["window_size"], (g, g),
                                rank if i in lora_blocks else 0, i in adapter_blocks)
    return m


def peft_key(k):
    return "linear_" in k or "Adapter" in k


def golden_key(k):
    """Gradients written to the golden file: PEFT tensors and a set of base tensors."""
    return (peft_key(k) or any(s in k for s in (".norm1.", ".attn.qkv.", ".attn.proj.", ".norm2."))
            or k in ("pos_embed", "patch_embed.proj.bias"))


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    gen = torch.Generator().manual_seed(7)
    m = build(CFG, RANK, LORA_BLOCKS, ADAPTER_BLOCKS)
    ref.counter_init_(m, SEED)
    m = m.double()
    S, g = CFG["img_size"], CFG["img_size"] // CFG["patch_size"]
    x0 = torch.rand(B, 3, S, S, generator=gen) * 4 - 2
    G = torch.randn(B, CFG["out_chans"], g, g, generator=gen)
    o = {"meta.seed": torch.tensor([SEED], dtype=torch.int64), "input": x0, "G": G}
    for ft in (False, True):
        pre = "ft." if ft else ""
        for b in m.blocks:
            b.finetune_sam = ft
        m.zero_grad()
        x = x0.double().requires_grad_(True)
        stages = []
        emb = m(x, stages)
        (emb * G.double()).sum().backward()
        o[pre + "emb"] = emb.detach().float()
        for i, s in enumerate(stages[1:]):
            o[pre + "stage.block.%d" % i] = s.detach().float()
        for k, p in m.named_parameters():
            if golden_key(k):
                o[pre + "grad.image_encoder." + k] = p.grad.float()
        o[pre + "grad.input"] = x.grad.float()
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "peft_encoder.pth")
    torch.save(o, path)
    print("%s: %d tensors, %d bytes" % (path, len(o), os.path.getsize(path)))


if __name__ == "__main__":
    main()
