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
