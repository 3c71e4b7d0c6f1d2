"""tests/pretrain/gen_tinyvit_golden.py — golden file for tests/pretrain/test_tinyvit.c from MobileSAM's own code.

    /usr/bin/python3 tests/pretrain/gen_tinyvit_golden.py --upstream DIR     (or MOBILESAM_DIR=DIR; from the repo root)

DIR is a checkout of github.com/ChaoningZhang/MobileSAM (generated from commit 34bbbfd); only
DIR/mobile_sam/modeling/tiny_vit_sam.py is loaded, by file path, so the package's other imports are not needed.
No upstream code lives in this repository. The file imports DropPath, to_2tuple and trunc_normal_ from
timm.models.layers and register_model from timm.models.registry; Debian has no timm, so a stand-in module with
those four names is put into sys.modules first (drop rate 0 everywhere: DropPath is never built).

The model is MobileSAM's TinyViT with vit_t_test's configuration (pretrain/tinyvit.c): input 256, embed dims
32/64/80/320, depths 1/2/2/1, heads 1/2/5/10, windows 7/7/14/7, num_classes 10. The last dim is 320 on
purpose: upstream's PatchMerging uses stride 1 only when out_dim is 320, 448 or 576, which is how MobileSAM keeps the
final grid at input/16; any other last dim gives a model upstream's own code cannot run. Every window is padded
(32 → 35, 16 → 28, 16 → 21). TinyViT.forward_features hard-codes the 64×64 grid of a 1024 input; the reference
below runs the same modules (patch_embed, layers, neck) with the grid S/16 instead.

Weights: every state-dict key (prefixed "image_encoder.") from tests/reference/counter_init.py with SEED, then
    running_var ← 1 + 5·v (in [0.5, 1.5)), running_mean ← 5·v, attention_biases ← 8·v, num_batches_tracked ← 3,
so inference-mode BatchNorm sees non-trivial statistics; the C test regenerates the same values. (counter_init
gives names containing "embed" U(±1) weights, so the stem's outputs reach ~80; the BatchNorms after it bring the
scale back.) The state dict
is loaded with strict=True BEFORE .eval(): MobileSAM's Attention caches the expanded bias table (`ab`) when eval()
is called, so weights loaded into a model already in eval mode would leave a stale table.
The input (2,3,256,256) is x[i] = 2·(2u−1) from the counter RNG under the name "golden.input" (as
tests/pretrain/test_sam_encoder_vitb_slow.c). The model runs in float64.

Writes tests/pretrain/golden/tinyvit_test.pth (torch.save of a flat dict):
  meta.seed                  (1,) int64
  key.<state-dict key>       int64 [ndim, is_int64, dims...] for every key of TinyViT's state_dict(): the exact key
                             set MobileSAM's code saves and loads strictly
  stage.stem                 patch_embed output (B,C0,S/4,S/4)           sampled (.idx/.val/.stats)
  stage.layer.<i>            layers[i] output, tokens (B,L,C)             sampled when > FULL_MAX elements
  emb                        neck output (B,256,S/16,S/16)               in full
Writes tests/pretrain/golden/tinyvit_test_grad.pth (test_tinyvit_grad.c), same weights and input, float64:
  <case>.grad.<key>          every parameter gradient upstream gives (sampled: in full up to GRAD_FULL values,
                             else GRAD_NS samples + stats), <case>.dx (B,3,S,S) sampled, for the cases
    train                    model.train() (BatchNorm on batch statistics), L = Σ emb·G, G = 2u − 1 ("golden.G")
    train3                   the same with the neck skipped, L = Σ tokens3·G3 ("golden.G3")
    bneval                   model.train() with only its BatchNorm2d modules in eval (running statistics)
    peft_true, peft_fsam     bneval plus LoRA and adapters (add_peft: forward hooks on upstream's modules, PEFT
                             tensors PEFT_SCALE·(2u − 1) under their keys), true per-head q/v columns or
                             finetune-SAM's slicing; also <case>.emb; gradients of the PEFT tensors only
  run.<key>                  running_mean / running_var / num_batches_tracked after train's forward
  init.<key>                 [mean, std, min, max, numel] of what upstream's constructor draws (torch seed 0)
With --state-dict PATH, the vit_t_test weights are also written to PATH by torch.save (a file as MobileSAM's own
code saves it, num_batches_tracked included; too large to commit): MS_TINYVIT_PTH=PATH test_tinyvit loads it.
Sampled tensors: NS indices (.idx int64), their values (.val float32), and (Σ, Σx², Σ|x|) (.stats float64).
"""
import argparse
import importlib.util
import os
import sys
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import counter_init as ci  # noqa: E402

SEED = 17
B, S = 2, 256  # vit_t_test; the vit_t file: batch 1 at 1024
FULL_MAX = 4096
NS = 2048
GRAD_FULL, GRAD_NS = 256, 64  # tinyvit_test_grad.pth: ~3 × 150 gradients under 1 MB
OUT = os.path.join(HERE, "golden")
CFG = dict(img_size=S, in_chans=3, num_classes=10, embed_dims=[32, 64, 80, 320], depths=[1, 2, 2, 1],
           num_heads=[1, 2, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4., drop_rate=0., drop_path_rate=0.0,
           use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8)
# build_sam.py build_sam_vit_t's encoder (TinyViT-5M at 1024)
CFG_VIT_T = dict(CFG, img_size=1024, num_classes=1000, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                 num_heads=[2, 4, 5, 10])


def timm_stand_in():
    """timm.models.layers (DropPath, to_2tuple, trunc_normal_) and timm.models.registry (register_model)."""
    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob=None):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            if not self.drop_prob or not self.training:
                return x
            raise NotImplementedError("stand-in DropPath: drop paths are not used here")

    def to_2tuple(x):
        return tuple(x) if isinstance(x, (tuple, list)) else (x, x)

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    layers.DropPath, layers.to_2tuple = DropPath, to_2tuple
    layers.trunc_normal_ = lambda t, mean=0., std=1., a=-2., b=2.: torch.nn.init.trunc_normal_(t, mean, std, a, b)
    registry.register_model = lambda fn: fn
    timm.models, models.layers, models.registry = models, layers, registry
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers,
                        "timm.models.registry": registry})


def load_upstream(root):
    path = os.path.join(root, "mobile_sam", "modeling", "tiny_vit_sam.py")
    if not os.path.isfile(path):
        sys.exit("%s: not found (give a checkout of ChaoningZhang/MobileSAM)" % path)
    timm_stand_in()
    spec = importlib.util.spec_from_file_location("tiny_vit_sam", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def counter_value(name, shape, seed):
    """counter_init plus the BatchNorm / bias-table rules above (test_tinyvit.c has the twin)."""
    v = torch.from_numpy(ci.counter_init(name, tuple(shape), seed))
    if name.endswith(".running_var"):
        return 1.0 + 5.0 * v
    if name.endswith(".running_mean"):
        return 5.0 * v
    if name.endswith(".attention_biases"):
        return 8.0 * v
    return v


def counter_uniform(name, shape, seed):
    n = int(np.prod(shape))
    stream = ci.rng_stream(seed, ci.fnv1a64(name), 0)
    u = (ci.rand_u64(stream, np.arange(n, dtype=np.uint64)) >> np.uint64(40)).astype(np.float64) / 16777216.0
    return torch.from_numpy((2.0 * u - 1.0).reshape(shape))


def put(o, key, t, gen, full_emb=True):
    t = t.detach().reshape(-1).double()
    if t.numel() <= FULL_MAX or (key == "emb" and full_emb):
        o[key] = t.float().clone()
        return
    idx = torch.randperm(t.numel(), generator=gen)[:NS].sort().values
    o[key + ".idx"] = idx.to(torch.int64)
    o[key + ".val"] = t[idx].float()
    o[key + ".stats"] = torch.tensor([t.sum(), (t * t).sum(), t.abs().sum()], dtype=torch.float64)


def golden(up, cfg, batch, path, sd_path=None):
    torch.manual_seed(0)
    m = up.TinyViT(**cfg)
    S = cfg["img_size"]
    sd = {}
    o = {"meta.seed": torch.tensor([SEED], dtype=torch.int64)}
    for k, v in m.state_dict().items():
        name = "image_encoder." + k
        is_int = not v.is_floating_point()
        sd[k] = torch.full_like(v, 3) if is_int else counter_value(name, v.shape, SEED).to(v.dtype)
        o["key." + name] = torch.tensor([v.dim(), int(is_int)] + list(v.shape), dtype=torch.int64)
    m.load_state_dict(sd, strict=True)
    if sd_path:  # what a MobileSAM user's torch.save(model.state_dict()) holds (encoder part, float32)
        torch.save({"image_encoder." + k: v for k, v in m.state_dict().items()}, sd_path)
    m = m.double().eval()  # eval() after loading: it caches attention_biases[:, idxs] as `ab`
    x = 2.0 * counter_uniform("golden.input", (batch, 3, S, S), SEED)
    gen = torch.Generator().manual_seed(SEED)
    g = S // 16
    with torch.no_grad():
        h = m.patch_embed(x)
        put(o, "stage.stem", h, gen)
        for i, layer in enumerate(m.layers):
            h = layer(h)
            put(o, "stage.layer.%d" % i, h, gen)
        emb = m.neck(h.view(batch, g, g, h.shape[-1]).permute(0, 3, 1, 2))
        if S == 1024:  # upstream's own forward where its hard-coded 64×64 grid applies
            assert torch.equal(emb, m(x))
    put(o, "emb", emb, gen, full_emb=S < 1024)
    n_keys = sum(1 for k in o if k.startswith("key."))
    print("keys %d, parameters %d, emb %s sum %.9g" % (n_keys, sum(p.numel() for p in m.parameters()),
                                                    tuple(emb.shape), emb.sum().item()))
    torch.save(o, path)


def sample(o, key, t, gen, full_max, ns):
    """put() with the gradient file's smaller budget: in full up to full_max values, else ns samples + stats."""
    t = t.detach().reshape(-1).double()
    if t.numel() <= full_max:
        o[key] = t.float().clone()
        return
    idx = torch.randperm(t.numel(), generator=gen)[:ns].sort().values
    o[key + ".idx"] = idx.to(torch.int64)
    o[key + ".val"] = t[idx].float()
    o[key + ".stats"] = torch.tensor([t.sum(), (t * t).sum(), t.abs().sum()], dtype=torch.float64)


def grad_case(up, sd, name, bn_train, neck, x, gen, o):
    """One backward of vit_t_test in float64: L = Σ emb·G (neck) or Σ tokens3·G3 (neck skipped, MAE's encoder
    output). bn_train: model.train() (BatchNorm on batch statistics, running ones updated); else the model in train
    mode with only its BatchNorm2d modules in eval (running statistics): what mrisam's inference-mode BatchNorm
    computes. (A full model.eval() also swaps Attention's bias table for a cached copy that gets no gradient.)"""
    torch.manual_seed(0)
    m = up.TinyViT(**CFG)
    m.load_state_dict(sd, strict=True)
    m = m.double().train()
    if not bn_train:
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.eval()
    x = x.clone().requires_grad_(True)
    g = S // 16
    h = m.patch_embed(x)
    for layer in m.layers:
        h = layer(h)
    if neck:
        out = m.neck(h.view(B, g, g, h.shape[-1]).permute(0, 3, 1, 2))
        G = counter_uniform("golden.G", tuple(out.shape), SEED)
    else:
        out = h
        G = counter_uniform("golden.G3", tuple(out.shape), SEED)
    (out * G).sum().backward()
    n = 0
    for k, prm in m.named_parameters():
        if prm.grad is None:
            continue
        sample(o, "%s.grad.image_encoder.%s" % (name, k), prm.grad, gen, GRAD_FULL, GRAD_NS)
        n += 1
    sample(o, "%s.dx" % name, x.grad, gen, GRAD_FULL, 1024)
    if name == "train":  # the same statistics whether the neck runs or not: stored once
        for k, v in m.state_dict().items():
            if k.endswith(".running_mean") or k.endswith(".running_var"):
                o["run.image_encoder." + k] = v.float().clone()
            elif k.endswith(".num_batches_tracked"):
                o["run.image_encoder." + k] = v.clone()
    print("%s: %d parameter gradients, |dx| sum %.9g" % (name, n, x.grad.abs().sum().item()))


PEFT_SCALE = 0.25  # every PEFT tensor = PEFT_SCALE·(2u − 1) under its full key (LoRA B nonzero on purpose)
PEFT_CASES = (  # name, LoRA rank, LoRA layers, adapter layers, finetune-SAM's column slicing
    ("peft_true", 4, (1, 2, 3), (1, 3), False),
    ("peft_fsam", 4, (1, 2, 3), (2,), True),
)


class PeftAdapter(torch.nn.Module):
    """finetune-SAM's Adapter (models/sam/modeling/common.py) without its skip: D_fc2(GELU(D_fc1(x))), hidden
    int(C·0.25); the skip (Space_Adapter) is added by the hook."""
    def __init__(self, c):
        super().__init__()
        self.D_fc1 = torch.nn.Linear(c, int(c * 0.25))
        self.D_fc2 = torch.nn.Linear(int(c * 0.25), c)

    def forward(self, x):
        return self.D_fc2(torch.nn.functional.gelu(self.D_fc1(x)))


def add_peft(m, rank, lora_layers, adapter_layers, fsam):
    """PEFT on upstream's blocks through forward hooks (upstream's code unchanged):
    LoRA: attn.qkv's output += (x·A_qᵀ)·B_qᵀ into the q columns, (x·A_vᵀ)·B_vᵀ into the v columns — per head
    (qkv is laid out [q_h | k_h | v_h] per head, hd each) or, with fsam, finetune-SAM's _LoRA_qkv slicing
    [0, C) and [3C − C, 3C) (sam_LoRa.py). Space_Adapter: the attention's output a → a + adapter(a) (token-wise, so
    applying it per window before the crop is the same); MLP_Adapter: the MLP's output + 0.5·adapter(its input),
    i.e. y + mlp(y) + 0.5·MLP_Adapter(y) as finetune-SAM's TinyViTBlock."""
    for i, layer in enumerate(m.layers):
        if i == 0:
            continue
        for blk in layer.blocks:
            c, nh = blk.dim, blk.num_heads
            hd = c // nh
            if i in lora_layers:
                q = blk.attn.qkv
                for n, shp in (("linear_a_q", (rank, c)), ("linear_b_q", (c, rank)), ("linear_a_v", (rank, c)),
                               ("linear_b_v", (c, rank))):
                    setattr(q, n, torch.nn.Linear(shp[1], shp[0], bias=False))

                def lora_hook(mod, inp, out, c=c, nh=nh, hd=hd):
                    x = inp[0]
                    dq = mod.linear_b_q(mod.linear_a_q(x))
                    dv = mod.linear_b_v(mod.linear_a_v(x))
                    out = out.clone()
                    if fsam:
                        out[..., :c] += dq
                        out[..., -c:] += dv
                    else:
                        o = out.view(*out.shape[:-1], nh, 3 * hd)
                        o[..., :hd] += dq.view(*dq.shape[:-1], nh, hd)
                        o[..., 2 * hd:] += dv.view(*dv.shape[:-1], nh, hd)
                    return out
                q.register_forward_hook(lora_hook)
            if i in adapter_layers:
                blk.MLP_Adapter = PeftAdapter(c)
                blk.Space_Adapter = PeftAdapter(c)
                blk.attn.register_forward_hook(lambda mod, inp, out, b=blk: out + b.Space_Adapter(out))
                blk.mlp.register_forward_hook(lambda mod, inp, out, b=blk: out + 0.5 * b.MLP_Adapter(inp[0]))
    peft = {}
    for k, v in m.named_parameters():
        if "linear_" in k or "_Adapter." in k:
            with torch.no_grad():
                v.copy_(PEFT_SCALE * counter_uniform("image_encoder." + k, tuple(v.shape), SEED))
            peft[k] = v
    return peft


def peft_case(up, sd, name, rank, lora_layers, adapter_layers, fsam, x, gen, o):
    """The model with PEFT, BatchNorm on its running statistics (a frozen encoder), L = Σ emb·G: the embedding,
    the gradients of the PEFT tensors and dx."""
    torch.manual_seed(0)
    m = up.TinyViT(**CFG)
    m.load_state_dict(sd, strict=True)
    peft = add_peft(m, rank, lora_layers, adapter_layers, fsam)
    m = m.double().train()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eval()
    x = x.clone().requires_grad_(True)
    g = S // 16
    h = m.patch_embed(x)
    for layer in m.layers:
        h = layer(h)
    emb = m.neck(h.view(B, g, g, h.shape[-1]).permute(0, 3, 1, 2))
    (emb * counter_uniform("golden.G", tuple(emb.shape), SEED)).sum().backward()
    sample(o, "%s.emb" % name, emb, gen, GRAD_FULL, 1024)
    for k, v in peft.items():
        sample(o, "%s.grad.image_encoder.%s" % (name, k), v.grad, gen, GRAD_FULL, GRAD_NS)
    sample(o, "%s.dx" % name, x.grad, gen, GRAD_FULL, 1024)
    print("%s: %d PEFT tensors, emb sum %.9g" % (name, len(peft), emb.sum().item()))


def golden_grad(up, path):
    """tinyvit_test_grad.pth: the weights and input of golden(); see the module comment."""
    torch.manual_seed(0)
    m = up.TinyViT(**CFG)
    sd = {}
    for k, v in m.state_dict().items():
        is_int = not v.is_floating_point()
        sd[k] = torch.full_like(v, 3) if is_int else counter_value("image_encoder." + k, v.shape, SEED).to(v.dtype)
    x = 2.0 * counter_uniform("golden.input", (B, 3, S, S), SEED)
    gen = torch.Generator().manual_seed(SEED + 1)
    o = {"meta.seed": torch.tensor([SEED], dtype=torch.int64)}
    grad_case(up, sd, "train", True, True, x, gen, o)
    grad_case(up, sd, "train3", True, False, x, gen, o)
    grad_case(up, sd, "bneval", False, True, x, gen, o)
    for case in PEFT_CASES:
        peft_case(up, sd, *case, x, gen, o)
    # what upstream's constructor draws (TinyViT._init_weights, Conv2d_BN's bn_weight_init, PyTorch defaults):
    # per float tensor [mean, std, min, max, numel], for ms_tinyvit_init_random's distribution check
    torch.manual_seed(0)
    for k, v in up.TinyViT(**CFG).state_dict().items():
        if v.is_floating_point():
            v = v.double()
            o["init.image_encoder." + k] = torch.tensor([v.mean(), v.std() if v.numel() > 1 else 0.0, v.min(),
                                                         v.max(), v.numel()], dtype=torch.float64)
    torch.save(o, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", default=os.environ.get("MOBILESAM_DIR"), help="MobileSAM checkout")
    ap.add_argument("--vit-t", action="store_true", help="also tinyvit_vit_t_1024.pth (TinyViT-5M at 1024)")
    ap.add_argument("--state-dict", metavar="PATH",
                    help="also torch.save the vit_t_test weights to PATH (9 MB, not committed): "
                         "MS_TINYVIT_PTH=PATH makes test_tinyvit load it too")
    a = ap.parse_args()
    if not a.upstream:
        sys.exit("give --upstream DIR or MOBILESAM_DIR")
    up = load_upstream(a.upstream)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    golden(up, CFG, B, os.path.join(OUT, "tinyvit_test.pth"), a.state_dict)
    golden_grad(up, os.path.join(OUT, "tinyvit_test_grad.pth"))
    if a.vit_t:
        golden(up, CFG_VIT_T, 1, os.path.join(OUT, "tinyvit_vit_t_1024.pth"))


if __name__ == "__main__":
    main()
