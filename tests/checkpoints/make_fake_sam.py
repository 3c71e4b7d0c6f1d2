#!/usr/bin/python3
"""tests/checkpoints/make_fake_sam.py VARIANT OUT.pth — a state dict with SAM's exact key layout and shapes
(docs/MODEL.md §Checkpoint keys; vit_b 314 keys, vit_l 482, vit_h 594) and random values, saved with torch.save like the
released checkpoints. For exercising the loader at full size without downloading SAM:
    /usr/bin/python3 tests/checkpoints/make_fake_sam.py vit_b /tmp/fake_b.pth
    MRISAM_SAM_CKPT=/tmp/fake_b.pth ctest -R test_ckpt_read -V
"""
import collections, sys

import torch

CFG = {"vit_b": (768, 12, 64), "vit_l": (1024, 24, 64), "vit_h": (1280, 32, 80)}


def sam_shapes(variant):
    D, depth, hd = CFG[variant]
    glob = {depth // 4 * k - 1 for k in (1, 2, 3, 4)}
    s = collections.OrderedDict()
    e = "image_encoder."
    s[e + "pos_embed"] = (1, 64, 64, D)
    s[e + "patch_embed.proj.weight"] = (D, 3, 16, 16)
    s[e + "patch_embed.proj.bias"] = (D,)
    for i in range(depth):
        b = e + "blocks.%d." % i
        r = 127 if i in glob else 27
        for k, v in (("norm1.weight", (D,)), ("norm1.bias", (D,)), ("attn.rel_pos_h", (r, hd)),
                     ("attn.rel_pos_w", (r, hd)), ("attn.qkv.weight", (3 * D, D)), ("attn.qkv.bias", (3 * D,)),
                     ("attn.proj.weight", (D, D)), ("attn.proj.bias", (D,)), ("norm2.weight", (D,)),
                     ("norm2.bias", (D,)), ("mlp.lin1.weight", (4 * D, D)), ("mlp.lin1.bias", (4 * D,)),
                     ("mlp.lin2.weight", (D, 4 * D)), ("mlp.lin2.bias", (D,))):
            s[b + k] = v
    for k, v in (("neck.0.weight", (256, D, 1, 1)), ("neck.1.weight", (256,)), ("neck.1.bias", (256,)),
                 ("neck.2.weight", (256, 256, 3, 3)), ("neck.3.weight", (256,)), ("neck.3.bias", (256,))):
        s[e + k] = v
    p = "prompt_encoder."
    s[p + "pe_layer.positional_encoding_gaussian_matrix"] = (2, 128)
    for i in range(4):
        s[p + "point_embeddings.%d.weight" % i] = (1, 256)
    s[p + "not_a_point_embed.weight"] = (1, 256)
    for k, v in (("0.weight", (4, 1, 2, 2)), ("0.bias", (4,)), ("1.weight", (4,)), ("1.bias", (4,)),
                 ("3.weight", (16, 4, 2, 2)), ("3.bias", (16,)), ("4.weight", (16,)), ("4.bias", (16,)),
                 ("6.weight", (256, 16, 1, 1)), ("6.bias", (256,))):
        s[p + "mask_downscaling." + k] = v
    s[p + "no_mask_embed.weight"] = (1, 256)
    m = "mask_decoder."

    def attn(pre, inner):
        for q in "qkv":
            s[pre + q + "_proj.weight"] = (inner, 256)
            s[pre + q + "_proj.bias"] = (inner,)
        s[pre + "out_proj.weight"] = (256, inner)
        s[pre + "out_proj.bias"] = (256,)

    for L in range(2):
        t = m + "transformer.layers.%d." % L
        attn(t + "self_attn.", 256)
        s[t + "norm1.weight"] = s[t + "norm1.bias"] = (256,)
        attn(t + "cross_attn_token_to_image.", 128)
        s[t + "norm2.weight"] = s[t + "norm2.bias"] = (256,)
        s[t + "mlp.lin1.weight"], s[t + "mlp.lin1.bias"] = (2048, 256), (2048,)
        s[t + "mlp.lin2.weight"], s[t + "mlp.lin2.bias"] = (256, 2048), (256,)
        s[t + "norm3.weight"] = s[t + "norm3.bias"] = (256,)
        s[t + "norm4.weight"] = s[t + "norm4.bias"] = (256,)
        attn(t + "cross_attn_image_to_token.", 128)
    attn(m + "transformer.final_attn_token_to_image.", 128)
    s[m + "transformer.norm_final_attn.weight"] = s[m + "transformer.norm_final_attn.bias"] = (256,)
    s[m + "iou_token.weight"], s[m + "mask_tokens.weight"] = (1, 256), (4, 256)
    for k, v in (("0.weight", (256, 64, 2, 2)), ("0.bias", (64,)), ("1.weight", (64,)), ("1.bias", (64,)),
                 ("3.weight", (64, 32, 2, 2)), ("3.bias", (32,))):
        s[m + "output_upscaling." + k] = v
    for i in range(4):
        for l, v in enumerate(((256, 256), (256, 256), (32, 256))):
            s[m + "output_hypernetworks_mlps.%d.layers.%d.weight" % (i, l)] = v
            s[m + "output_hypernetworks_mlps.%d.layers.%d.bias" % (i, l)] = (v[0],)
    for l, v in enumerate(((256, 256), (256, 256), (4, 256))):
        s[m + "iou_prediction_head.layers.%d.weight" % l] = v
        s[m + "iou_prediction_head.layers.%d.bias" % l] = (v[0],)
    return s


if __name__ == "__main__":
    variant, out = sys.argv[1], sys.argv[2]
    shapes = sam_shapes(variant)
    g = torch.Generator().manual_seed(0)
    sd = collections.OrderedDict((k, torch.randn(v, generator=g)) for k, v in shapes.items())
    n = sum(t.numel() for t in sd.values())
    torch.save(sd, out)
    print("%s: %d keys, %d parameters -> %s" % (variant, len(sd), n, out))
