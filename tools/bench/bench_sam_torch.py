#!/usr/bin/python3
"""tools/bench/bench_sam_torch.py — the PyTorch side of `mrisam bench sam` (run with /usr/bin/python3).

Times SAM's image encoder (tests/reference/sam_ref_encoder.py, the same architecture as segment_anything's
ImageEncoderViT) in float32 on the CPU, batch 1: forward under no_grad, and forward+backward of L = Σ emb·G with
every parameter requiring grad (the input does not). One warm-up, then the best of --reps.
Prints "<model> fwd <threads> <best s> <median s>" and "<model> fb <threads> <best s> <median s>".

vit_t / vit_t_test: MobileSAM's own TinyViT (mobile_sam/modeling/tiny_vit_sam.py of a checkout given by --upstream
or MOBILESAM_DIR, loaded as tests/pretrain/gen_tinyvit_golden.py does) with its neck, forward in eval mode
(BatchNorm on running statistics) and forward+backward in train mode (batch statistics), as mrisam times them.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "reference"))
import sam_ref_encoder as ref  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tinyvit_torch import TinyViTEncoder  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="vit_test")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--upstream", default=os.environ.get("MOBILESAM_DIR"), help="MobileSAM checkout (vit_t)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    tiny = a.model.startswith("vit_t")
    if tiny:
        m = TinyViTEncoder(a.model, a.upstream)
        s = m.img_size
    else:
        m = ref.build(a.model)
        s = ref.VARIANTS[a.model]["img_size"]
    for p in m.parameters():
        torch.nn.init.uniform_(p, -0.05, 0.05)
    x = torch.rand(1, 3, s, s) * 4 - 2
    with torch.no_grad():
        G = torch.randn(m(x).shape)
    fwd, fb = [], []
    for it in range(a.reps + 1):
        m.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            m(x)
        t1 = time.perf_counter()
        m.train()  # TinyViT's BatchNorms: batch statistics, as a trained encoder runs them (no effect on ViT)
        m.zero_grad(set_to_none=True)
        (m(x) * G).sum().backward()
        t2 = time.perf_counter()
        if it:
            fwd.append(t1 - t0)
            fb.append(t2 - t1)
    print("%s fwd %d %.4f %.4f" % (a.model, a.threads, min(fwd), statistics.median(fwd)))
    print("%s fb %d %.4f %.4f" % (a.model, a.threads, min(fb), statistics.median(fb)))


if __name__ == "__main__":
    main()
