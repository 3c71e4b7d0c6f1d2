"""tests/finetune/gen_mobilesam_golden.py — golden files for vit_t as a whole SAM (MobileSAM) from MobileSAM's own code.

    /usr/bin/python3 tests/finetune/gen_mobilesam_golden.py --upstream DIR          (or MOBILESAM_DIR=DIR; repo root)
        [--full PATH] [--check-export FILE]...

DIR is a checkout of github.com/ChaoningZhang/MobileSAM (generated from commit 34bbbfd). Its package mobile_sam is
imported from DIR (Sam, TinyViT, PromptEncoder, MaskDecoder, TwoWayTransformer, SamPredictor, build_sam_vit_t); no
upstream code lives in this repository. Debian lacks timm and torchvision, which the package imports: stand-ins are
put into sys.modules first — timm's DropPath, to_2tuple, trunc_normal_, register_model (as
tests/pretrain/gen_tinyvit_golden.py), torchvision's resize / to_pil_image restricted to the identity (every image
here already has its longest side at the model's input size, so ResizeLongestSide leaves it as it is) and
torchvision.ops.boxes (imported by the automatic mask generator, unused here).

The model: MobileSAM's Sam with vit_t_test's TinyViT (pretrain/tinyvit.c: input 256, dims 32/64/80/320, depths
1/2/2/1, heads 1/2/5/10, windows 7/7/14/7, 10 classes) and SAM's prompt encoder (embedding grid 16, input 256) and
mask decoder (3 multimask outputs, two-way transformer depth 2) — build_sam_vit_t's other parts. TinyViT's
forward_features hard-codes the 64×64 grid of a 1024 input: the encoder's forward is replaced by the same modules
with the grid S/16 (as gen_tinyvit_golden.py; at 1024 upstream's own forward runs).
Weights: every key of Sam.state_dict() from tests/reference/counter_init.py with SEED, then for image_encoder.*
gen_tinyvit_golden.py's BatchNorm / bias-table rule (running_var ← 1 + 5·v, running_mean ← 5·v, attention_biases ←
8·v), for the rest test_sam_decoder_golden.h's rule (2-D token_to_image / image_to_token weights × 1/√fan_in);
num_batches_tracked ← 3. test_mobilesam.c and test_segment_vit_t.sh regenerate the same weights. Loaded with
strict=True before .eval() (MobileSAM's Attention caches its bias table on eval()).

The image: RGB uint8 192×256 (h×w), a smooth pattern plus a disc. SamPredictor.set_image runs MobileSAM's
preprocessing and encoder; SamPredictor.predict(return_logits=True) runs MobileSAM's prompt path and post-processing in float32 (its prompt
encoder casts coordinates to float32, so the whole pipeline cannot run in float64). The embedding is also computed in
float64 (the same modules, model.double()): that is the golden embedding; the masks are float32 predict()'s.

Writes (committed):
  tests/finetune/golden/mobilesam_test.pth   torch.save of a flat dict:
      meta.seed (1,) int64, image (192,256,3) uint8, emb (1,256,16,16) (float64 run, stored float32),
      point.coords (2,2) + point.labels (2,): (100,80) positive, (200,150) negative, multimask:
      point.iou (3,), point.low (3,64,64), point.masks (192,256) the logits of the highest-IoU mask;
      box (4,) = 40,30,180,140, single mask: box.iou (1,), box.low (1,64,64), box.masks (192,256).
  tests/finetune/golden/mobilesam_vit_t_test.keys, mobilesam_vit_t.keys   one line per state-dict key of
      Sam.state_dict() (vit_t_test as above; build_sam_vit_t()): "name dtype d0,d1,..." — the exact key set, order
      and dtypes MobileSAM's code saves and loads strictly (num_batches_tracked: int64, 0-dim, shape "-").
--full PATH: also a whole mobile_sam.pt-shaped file (build_sam_vit_t, TinyViT-5M at 1024) with PyTorch's random
  initialisation and random BatchNorm statistics (running_mean N(0, 0.5), running_var U(0.5, 1.5), num_batches_tracked
  1000), torch.save'd as MobileSAM's users save theirs (40 MB, not committed), and PATH.golden.pth: a 768×1024 RGB
  image and its embedding (1,256,64,64) and box-prompt masks from SamPredictor in float32 (upstream's own forward).
  MS_MOBILESAM_PTH=PATH test_mobilesam loads it and checks the embedding.
--check-export FILE (repeatable): FILE (an mrisam export, .pth or .safetensors, the latter read here: Debian has no
  safetensors package) must hold MobileSAM's keys in its order with its dtypes and load with strict=True into the Sam
  its keys describe (vit_t_test's or vit_t's); exits 1 otherwise. Exports to check:
  MS_MOBILESAM_EXPORT_DIR=DIR [MS_MOBILESAM_PTH=PATH] test_mobilesam writes DIR/vit_t_test.{pth,safetensors} (and
  DIR/vit_t.pth, PATH loaded and written back; checked here: equal to PATH tensor for tensor).
"""
import argparse
import math
import os
import sys
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import counter_init as ci  # noqa: E402

sys.path.insert(0, os.path.join(HERE, "..", "pretrain"))
import gen_tinyvit_golden as tg  # noqa: E402

SEED = 23
S = 256
OUT = os.path.join(HERE, "golden")
TV_TEST = tg.CFG  # vit_t_test
POINTS, LABELS, BOX = [[100.0, 80.0], [200.0, 150.0]], [1, 0], [40.0, 30.0, 180.0, 140.0]


def stand_ins():
    """timm (gen_tinyvit_golden's stand-in, one copy) and torchvision (identity resize, ops.boxes)."""
    tg.timm_stand_in()

    def resize(img, size):
        if tuple(img.shape[:2]) != tuple(size):
            raise NotImplementedError("stand-in resize: identity only (%s -> %s)" % (img.shape[:2], size))
        return img

    tv = types.ModuleType("torchvision")
    tvt = types.ModuleType("torchvision.transforms")
    tvf = types.ModuleType("torchvision.transforms.functional")
    tvo = types.ModuleType("torchvision.ops")
    tvb = types.ModuleType("torchvision.ops.boxes")
    tvf.resize, tvf.to_pil_image = resize, lambda a: a
    tvb.batched_nms = tvb.box_area = None
    tv.transforms, tvt.functional, tv.ops, tvo.boxes = tvt, tvf, tvo, tvb
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tvt,
                        "torchvision.transforms.functional": tvf, "torchvision.ops": tvo,
                        "torchvision.ops.boxes": tvb})


def load_upstream(root):
    if not os.path.isfile(os.path.join(root, "mobile_sam", "modeling", "tiny_vit_sam.py")):
        sys.exit("%s: no mobile_sam/modeling/tiny_vit_sam.py (give a checkout of ChaoningZhang/MobileSAM)" % root)
    stand_ins()
    sys.path.insert(0, root)
    import mobile_sam
    return mobile_sam


def small_sam(ms):
    md = ms.modeling
    return md.Sam(image_encoder=md.TinyViT(**TV_TEST),
                  prompt_encoder=md.PromptEncoder(embed_dim=256, image_embedding_size=(S // 16, S // 16),
                                                  input_image_size=(S, S), mask_in_chans=16),
                  mask_decoder=md.MaskDecoder(num_multimask_outputs=3,
                                              transformer=md.TwoWayTransformer(depth=2, embedding_dim=256,
                                                                               mlp_dim=2048, num_heads=8),
                                              transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256),
                  pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def grid_forward(enc):
    """TinyViT.forward with the grid S/16 in place of the hard-coded 64 (same modules)."""
    def fwd(x):
        h = enc.patch_embed(x)
        for layer in enc.layers:
            h = layer(h)
        g = x.shape[-1] // 16
        return enc.neck(h.view(h.shape[0], g, g, h.shape[-1]).permute(0, 3, 1, 2))
    enc.forward = fwd


def counter_value(name, shape, seed):
    v = torch.from_numpy(ci.counter_init(name, tuple(shape), seed))
    if name.startswith("image_encoder."):
        if name.endswith(".running_var"):
            return 1.0 + 5.0 * v
        if name.endswith(".running_mean"):
            return 5.0 * v
        if name.endswith(".attention_biases"):
            return 8.0 * v
    elif ("token_to_image" in name or "image_to_token" in name) and len(shape) == 2:
        return v * np.float32(1.0 / math.sqrt(shape[1]))
    return v


def write_keys(sd, path):
    with open(path, "w") as f:
        for k, v in sd.items():
            dt = str(v.dtype).replace("torch.", "")
            f.write("%s %s %s\n" % (k, dt, ",".join(str(d) for d in v.shape) if v.dim() else "-"))
    print("%s: %d keys" % (path, len(sd)))


def image(h, w):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127 + 90 * np.sin(xx / (w / 28.0)) * np.cos(yy / (h / 32.0))
    disc = ((xx - 0.45 * w) ** 2 + (yy - 0.4 * h) ** 2 < (0.18 * h) ** 2)
    rgb = np.stack([r + 40 * disc, r[::-1] * 0.8 + 20, 255 - r + 30 * disc], -1)
    return rgb.clip(0, 255).astype(np.uint8)


def golden(ms):
    m = small_sam(ms)
    sd = {}
    for k, v in m.state_dict().items():
        sd[k] = torch.full_like(v, 3) if not v.is_floating_point() else counter_value(k, v.shape, SEED).to(v.dtype)
    write_keys(m.state_dict(), os.path.join(OUT, "mobilesam_vit_t_test.keys"))
    m.load_state_dict(sd, strict=True)
    grid_forward(m.image_encoder)
    m.eval()
    img = image(192, 256)
    p = ms.SamPredictor(m)
    p.set_image(img)
    pm, piou, plow = p.predict(np.array(POINTS), np.array(LABELS), multimask_output=True, return_logits=True)
    bm, biou, blow = p.predict(box=np.array(BOX), multimask_output=False, return_logits=True)
    best = int(piou.argmax())
    # the embedding once more in float64 (the same modules): the C test holds its embedding to it
    m64 = small_sam(ms)
    m64.load_state_dict(sd, strict=True)
    grid_forward(m64.image_encoder)
    m64 = m64.double().eval()
    with torch.no_grad():
        x = torch.as_tensor(img).permute(2, 0, 1)[None].double()
        emb64 = m64.image_encoder(m64.preprocess(x))
    print("emb max|f32 - f64| %.3g (max|emb| %.3g)" % ((p.features.double() - emb64).abs().max(),
                                                       emb64.abs().max()))
    print("point iou %s best %d, %d px > 0, max|low| %.3g; box iou %s, %d px > 0"
          % (piou, best, int((pm[best] > 0).sum()), np.abs(plow).max(), biou, int((bm[0] > 0).sum())))
    o = {"meta.seed": torch.tensor([SEED], dtype=torch.int64), "image": torch.from_numpy(img),
         "emb": emb64.float(), "point.coords": torch.tensor(POINTS), "point.labels": torch.tensor(LABELS),
         "point.iou": torch.from_numpy(piou), "point.low": torch.from_numpy(plow), "point.masks":
         torch.from_numpy(pm[best]), "box": torch.tensor(BOX), "box.iou": torch.from_numpy(biou),
         "box.low": torch.from_numpy(blow), "box.masks": torch.from_numpy(bm[0])}
    path = os.path.join(OUT, "mobilesam_test.pth")
    torch.save(o, path)
    print("%s: %d entries" % (path, len(o)))


def full(ms, path):
    torch.manual_seed(SEED)
    m = ms.build_sam_vit_t()
    write_keys(m.state_dict(), os.path.join(OUT, "mobilesam_vit_t.keys"))
    if not path:
        return
    gen = torch.Generator().manual_seed(SEED)
    sd = m.state_dict()
    for k, v in sd.items():
        if k.endswith(".running_mean"):
            v.copy_(0.5 * torch.randn(v.shape, generator=gen))
        elif k.endswith(".running_var"):
            v.copy_(0.5 + torch.rand(v.shape, generator=gen))
        elif k.endswith(".num_batches_tracked"):
            v.fill_(1000)
        elif k.endswith(".attention_biases"):
            v.copy_(torch.randn(v.shape, generator=gen))
    m = ms.build_sam_vit_t()  # a fresh model: load before eval() (the cached attention bias table)
    m.train()
    m.load_state_dict(sd, strict=True)
    torch.save(m.state_dict(), path)
    m.eval()
    img = image(768, 1024)
    p = ms.SamPredictor(m)
    p.set_image(img)
    masks, iou, low = p.predict(box=np.array([300.0, 200.0, 700.0, 560.0]), multimask_output=False,
                                return_logits=True)
    torch.save({"image": torch.from_numpy(img), "emb": p.features, "box": torch.tensor([300.0, 200.0, 700.0, 560.0]),
                "box.iou": torch.from_numpy(iou), "box.low": torch.from_numpy(low)}, path + ".golden.pth")
    print("%s: %d keys, %d floats; emb sum %.6g, box iou %s" % (path, len(sd), sum(v.numel() for v in sd.values()
          if v.is_floating_point()), p.features.sum().item(), iou))


def check_export(ms, path):
    if path.endswith(".safetensors"):  # read here (Debian has no safetensors package): u64 length, JSON, data
        import json
        import struct
        raw = open(path, "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        hdr = json.loads(raw[8:8 + n])
        hdr.pop("__metadata__", None)
        dts = {"F32": np.float32, "I64": np.int64}
        sd = {}
        for k, v in hdr.items():  # json keeps the file's order
            a, b = v["data_offsets"]
            arr = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=dts[v["dtype"]]).reshape(v["shape"])
            sd[k] = torch.from_numpy(arr.copy())
    else:
        sd = torch.load(path, map_location="cpu")
    tiny = sd["image_encoder.patch_embed.seq.2.c.weight"].shape[0] == 32
    m = small_sam(ms) if tiny else ms.build_sam_vit_t()
    ref = m.state_dict()
    bad = [k for k in ref if k in sd and ref[k].dtype != sd[k].dtype]
    if list(sd.keys()) != list(ref.keys()):
        print("%s: key order differs from MobileSAM's" % path)
        bad.append("order")
    m.load_state_dict(sd, strict=True)  # raises on a missing, unknown or mis-shaped key
    if bad:
        sys.exit("%s: dtypes or order differ: %s" % (path, bad[:5]))
    print("%s: %d keys, strict load into MobileSAM's Sam (%s) OK" % (path, len(sd), "vit_t_test" if tiny else "vit_t"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", default=os.environ.get("MOBILESAM_DIR"), help="MobileSAM checkout")
    ap.add_argument("--full", metavar="PATH", help="also a mobile_sam.pt-shaped file with random weights")
    ap.add_argument("--check-export", metavar="FILE", action="append", default=[])
    a = ap.parse_args()
    if not a.upstream:
        sys.exit("give --upstream DIR or MOBILESAM_DIR")
    ms = load_upstream(a.upstream)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    if a.check_export:
        for f in a.check_export:
            check_export(ms, f)
        return
    golden(ms)
    full(ms, a.full)


if __name__ == "__main__":
    main()
