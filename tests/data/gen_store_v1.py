#!/usr/bin/python3
"""tests/data/gen_store_v1.py OUT_DIR — the two small sources of the layout-1 golden store
(tests/data/golden/store_v1): a noisy int16 volume and a float32 volume with negative values, seed 7. The store in
golden/store_v1/store was written from them by mrisam 08ca0b8 (the last layout-1 release):
    mrisam ingest OUT_DIR/i16.nii.gz OUT_DIR/f32.nii.gz -o store --threads 1 --quiet
test_store_v1.sh reads it with today's mrisam and compares with these sources normalised as layout 1 did."""
import gzip
import os
import sys

import nibabel as nib
import numpy as np

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(7)
x, y, z = np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 36), np.linspace(-1, 1, 6), indexing="ij")
head = (x / 0.8) ** 2 + (y / 0.9) ** 2 < 1
s = np.where(head, 700 + 200 * x, 0)
v = np.sqrt((s + rng.normal(0, 20, s.shape)) ** 2 + rng.normal(0, 20, s.shape) ** 2)
img = nib.Nifti1Image(v.astype(np.int16), np.diag([0.9, -0.9, 2.0, 1]))
open(f"{out}/i16.nii.gz", "wb").write(gzip.compress(img.to_bytes(), 6, mtime=0))
f = (v[:, :, :4] - 300).astype(np.float32) * 0.37
img = nib.Nifti1Image(f, np.diag([-1.0, 1.0, 1.5, 1]))
open(f"{out}/f32.nii.gz", "wb").write(gzip.compress(img.to_bytes(), 6, mtime=0))
