"""tools/bench/tinyvit_torch.py — MobileSAM's own TinyViT as an image encoder for the PyTorch sides of
`mrisam bench sam` and `mrisam bench finetune` (vit_t, vit_t_test). The upstream file
(mobile_sam/modeling/tiny_vit_sam.py of a ChaoningZhang/MobileSAM checkout: --upstream DIR or MOBILESAM_DIR) is
loaded as tests/pretrain/gen_tinyvit_golden.py loads it (its timm stand-in and configurations, one copy).
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "pretrain"))


def upstream_dir(given):
    d = given or os.environ.get("MOBILESAM_DIR")
    if not d:
        sys.exit("vit_t: give --upstream DIR or MOBILESAM_DIR (a checkout of ChaoningZhang/MobileSAM)")
    return d


class TinyViTEncoder(torch.nn.Module):
    """MobileSAM's TinyViT, stem → layers → neck at grid S/16 (its forward_features hard-codes a 1024 input)."""

    def __init__(self, model, upstream):
        super().__init__()
        import gen_tinyvit_golden as tg
        cfg = tg.CFG_VIT_T if model == "vit_t" else tg.CFG
        self.m = tg.load_upstream(upstream_dir(upstream)).TinyViT(**cfg)
        self.g = cfg["img_size"] // 16
        self.img_size = cfg["img_size"]

    def forward(self, x):
        h = self.m.patch_embed(x)
        for layer in self.m.layers:
            h = layer(h)
        return self.m.neck(h.view(x.shape[0], self.g, self.g, h.shape[-1]).permute(0, 3, 1, 2))
