"""tests/finetune/fsam_golden.py — a checkpoint as finetune-SAM writes it, and its outputs from finetune-SAM's own
code (test_fsam_weights.sh). Run with Debian's /usr/bin/python3 (torch, numpy).

  generate UPSTREAM GOLDEN_DIR   (once, by hand) builds finetune-SAM's Sam (UPSTREAM = a checkout of
                                 mazurowski-lab/finetune-SAM; its models/ is imported from there, nothing of it is
                                 copied here) on vit_test's shape (docs/MODEL.md: D 192, depth 4, 3 heads, window 14,
                                 global blocks 1 and 3, input 256) with 3 classes, wraps it with its LoRA_Sam (rank 4,
                                 encoder blocks 0 and 2, every decoder attention) and its adapters (encoder blocks 1
                                 and 2, both decoder layers), sets every tensor of its state_dict to
                                 sam_ref.test_weight(name, shape, 11), and writes GOLDEN_DIR/fsam_theirs.json (the
                                 state_dict's keys in order with their shapes) and GOLDEN_DIR/fsam_theirs_out.npz: the
                                 image encoder's output on image() (every 7th value) and the mask decoder's multimask
                                 low-resolution logits for one foreground point (POINT), as finetune-SAM computes them.
  weights KEYS.json OUT.pth [module]
                                 the same state_dict rebuilt from the key list (torch.save of an OrderedDict, as
                                 finetune-SAM's training scripts save one); "module" puts "module." before every key
                                 (a saved DataParallel wrapper).
  image OUT.png                  the 256×256 8-bit gray input image.
  compare OUT.npz EMB.npy LOGITS.npy
                                 mrisam's embedding and logits against the golden ones (max |diff| over max |golden|
                                 printed; < 1e-4 each).
"""
import collections
import importlib.util
import json
import os
import struct
import sys
import types
import zlib

import numpy as np
import torch

SRC = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
import sam_ref  # noqa: E402

SEED = 11
POINT = (100, 140)  # x (column), y (row)
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def image():
    """A smooth pattern with a bright disk and some noise, uint8 (256, 256)."""
    y, x = np.mgrid[0:256, 0:256].astype(np.float64)
    v = 60 + 40 * np.sin(x / 23.0) * np.cos(y / 31.0) + 100 * (((x - 110) ** 2 + (y - 130) ** 2) < 45 ** 2)
    v += np.random.RandomState(7).uniform(-12, 12, v.shape)
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)


def write_png(path, a):
    raw = b"".join(b"\x00" + a[r].tobytes() for r in range(a.shape[0]))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    hdr = struct.pack(">IIBBBBB", a.shape[1], a.shape[0], 8, 0, 0, 0, 0)
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", hdr) + chunk(b"IDAT", zlib.compress(raw, 9)) +
                           chunk(b"IEND", b""))


def stub(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def load_upstream(root):
    """finetune-SAM's models/sam/modeling and models/sam_LoRa.py, with stubs for what they import but these tests do
    not run (timm, einops and vit.py: TinyViT, the 3-D branch and a ViT it does not build; icecream, safetensors,
    segment_anything: unused names)."""
    stub("timm")
    stub("timm.models")
    stub("timm.models.layers", DropPath=torch.nn.Identity, to_2tuple=lambda v: (v, v), trunc_normal_=lambda *a, **k: 0)
    stub("timm.models.registry", register_model=lambda f: f)
    stub("einops", rearrange=None, repeat=None)
    stub("einops.layers")
    stub("einops.layers.torch", Rearrange=None, Reduce=None)
    stub("icecream", ic=print)
    stub("safetensors", safe_open=None)
    stub("safetensors.torch", save_file=None)
    stub("segment_anything")
    stub("segment_anything.modeling", Sam=object)
    pkg = stub("fsam_models")
    pkg.__path__ = [os.path.join(root, "models")]
    stub("fsam_models.sam", build_sam=None, SamPredictor=None, sam_model_registry=None)

    def load(name, path, package):
        spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=package)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod
    stub("fsam_modeling.vit", TransformerEncoder=None)  # imported by mask_decoder.py, not used by MaskDecoder
    mdir = os.path.join(root, "models", "sam", "modeling")
    modeling = load("fsam_modeling", os.path.join(mdir, "__init__.py"), [mdir])
    lora = load("fsam_models.sam_LoRa", os.path.join(root, "models", "sam_LoRa.py"), None)
    return modeling, lora


def build_theirs(root):
    from functools import partial
    modeling, lora = load_upstream(root)
    args = types.SimpleNamespace(devices=[torch.device("cpu")], if_split_encoder_gpus=False, thd=False,
                                 if_encoder_adapter=True, encoder_adapter_depths=[1, 2], if_mask_decoder_adapter=True,
                                 decoder_adapt_depth=2, if_encoder_lora_layer=True, encoder_lora_layer=[0, 2],
                                 if_decoder_lora_layer=True)
    enc = modeling.ImageEncoderViT(args=args, img_size=256, patch_size=16, embed_dim=192, depth=4, num_heads=3,
                                   mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True,
                                   use_rel_pos=True, global_attn_indexes=[1, 3], window_size=14, out_chans=256)
    pe = modeling.PromptEncoder(embed_dim=256, image_embedding_size=(16, 16), input_image_size=(256, 256),
                                mask_in_chans=16)
    dec = modeling.MaskDecoder(num_multimask_outputs=3, transformer=modeling.TwoWayTransformer(
        args=args, depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3,
        iou_head_hidden_dim=256)
    sam = modeling.Sam(args, image_encoder=enc, prompt_encoder=pe, mask_decoder=dec,
                       pixel_mean=MEAN.tolist(), pixel_std=STD.tolist())
    sam = lora.LoRA_Sam(args, sam, r=4).sam  # as finetune-SAM's training scripts keep it
    sam.eval()
    return sam


def weights(keys):
    return collections.OrderedDict((k, sam_ref.test_weight(k, tuple(s), SEED)) for k, s in keys)


def generate(root, gdir):
    torch.manual_seed(0)
    sam = build_theirs(root)
    keys = [(k, list(v.shape)) for k, v in sam.state_dict().items()]
    sam.load_state_dict(weights(keys), strict=True)
    x = (image().astype(np.float32)[None, :, :, None] - MEAN) / STD
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        emb = sam.image_encoder(x)
        pts = torch.tensor([[list(POINT)]], dtype=torch.float32), torch.tensor([[1]], dtype=torch.int64)
        sparse, dense = sam.prompt_encoder(points=pts, boxes=None, masks=None)
        low, iou = sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=True)
    json.dump({"source": "mazurowski-lab/finetune-SAM models/sam/modeling + models/sam_LoRa.py (LoRA_Sam r=4)",
               "seed": SEED, "point": POINT, "keys": keys}, open(os.path.join(gdir, "fsam_theirs.json"), "w"))
    np.savez_compressed(os.path.join(gdir, "fsam_theirs_out.npz"), emb=emb.numpy().reshape(-1)[::7],
                        logits=low.numpy(), iou=iou.numpy())
    print("generate: %d keys, embedding %s, logits %s" % (len(keys), tuple(emb.shape), tuple(low.shape)))


def compare(npz, emb_path, logits_path):
    g = np.load(npz)
    ok = True
    for name, got, want in (("embedding", np.load(emb_path).reshape(-1)[::7], g["emb"]),
                            ("logits", np.load(logits_path), g["logits"])):
        if got.shape != want.shape:
            print("FAIL: %s shape %s, expected %s" % (name, got.shape, want.shape))
            ok = False
            continue
        err = float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())
        print("%s vs finetune-SAM's: max |diff| / max |golden| = %.3g" % (name, err))
        ok = ok and err < 1e-4
    return ok


def main(a):
    if len(a) == 3 and a[0] == "generate":
        generate(a[1], a[2])
    elif len(a) in (3, 4) and a[0] == "weights":
        keys = json.load(open(a[1]))["keys"]
        sd = weights(keys)
        if len(a) == 4 and a[3] == "module":
            sd = collections.OrderedDict(("module." + k, v) for k, v in sd.items())
        torch.save(sd, a[2])
    elif len(a) == 2 and a[0] == "image":
        write_png(a[1], image())
    elif len(a) == 4 and a[0] == "compare":
        sys.exit(0 if compare(a[1], a[2], a[3]) else 1)
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
