#!/usr/bin/python3
"""tests/data/gen_golden_resample.py — PyTorch reference for data/preprocess.c's resampler.

Writes tests/data/golden/resample_aa.bin: int32 n_cases, then per case int32 h, w, y0, x0, bh, bw, oh, ow,
float32 input[h*w], float32 output[oh*ow], little-endian. output = F.interpolate(input[y0:y0+bh, x0:x0+bw],
(oh, ow), mode="bilinear", align_corners=False, antialias=True) — torch's port of PIL's antialiased bilinear,
which SAM's preprocessing (PIL resize) uses. Run with /usr/bin/python3 (torch 1.13).
"""
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

CASES = [  # h, w, y0, x0, bh, bw, oh, ow
    (29, 41, 0, 0, 29, 41, 13, 17),
    (29, 41, 0, 0, 29, 41, 64, 96),
    (29, 41, 3, 5, 20, 30, 50, 40),
    (29, 41, 3, 5, 20, 30, 7, 9),
    (64, 64, 0, 0, 64, 64, 16, 16),
    (40, 60, 0, 0, 40, 60, 25, 100),
    (33, 47, 10, 2, 15, 44, 33, 47),
]


def main():
    rng = np.random.default_rng(20261123)
    out = bytearray(struct.pack("<i", len(CASES)))
    for (h, w, y0, x0, bh, bw, oh, ow) in CASES:
        x = rng.random((h, w), dtype=np.float32)
        crop = torch.from_numpy(x)[y0:y0 + bh, x0:x0 + bw][None, None]
        y = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)[0, 0]
        out += struct.pack("<8i", h, w, y0, x0, bh, bw, oh, ow)
        out += x.astype("<f4").tobytes() + y.numpy().astype("<f4").tobytes()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "resample_aa.bin")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(out)
    print("wrote", path, len(out), "bytes")


if __name__ == "__main__":
    main()
