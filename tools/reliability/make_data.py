"""tools/reliability/make_data.py DIR SEED [--small] — the inputs of the kill campaign and the full-disk tests, drawn
from SEED (numpy, nibabel):
  DIR/in/   a noisy archive: int16 volumes (128×128×32, --small 64×64×10; their first two slices empty, which ingest
            skips) and one 4D float32 file, whose frames are volumes committed one by one;
  DIR/ft/   labelled volumes for finetune: img/v*.nii.gz with lab/v*.nii.gz (two blobs, values 3 and 7, brighter than
            a noisy background) and pairs.csv for `ingest --labels`."""
import os
import sys

import nibabel as nib
import numpy as np

d, seed, small = sys.argv[1], int(sys.argv[2]), "--small" in sys.argv[3:]
rng = np.random.default_rng(seed)
for sub in ("in", "ft/img", "ft/lab"):
    os.makedirs(os.path.join(d, sub), exist_ok=True)
n, shape, shape4 = (3, (64, 64, 10), (48, 48, 8, 2)) if small else (12, (128, 128, 32), (80, 80, 24, 5))
for i in range(n):
    v = rng.integers(0, 4000, size=shape).astype(np.int16)
    v[:, :, :2] = 0
    nib.Nifti1Image(v, np.diag([1.0, 1.0, 2.5, 1.0])).to_filename(f"{d}/in/v{i:02d}.nii.gz")
nib.Nifti1Image(rng.normal(100, 20, size=shape4).astype(np.float32), np.eye(4)).to_filename(f"{d}/in/v01_4d.nii.gz")
g = np.meshgrid(*[np.linspace(-1, 1, k) for k in (40, 36, 4)], indexing="ij")
rows = []
for i in range(3):
    lab = np.zeros((40, 36, 4), np.uint8)
    lab[(g[0] - 0.1 * i) ** 2 + (g[1] + 0.1) ** 2 < 0.3] = 3
    lab[(g[0] + 0.5) ** 2 + (g[1] - 0.4) ** 2 < 0.08] = 7
    img = rng.normal(400, 60, size=lab.shape).astype(np.float32) + 100.0 * lab
    nib.Nifti1Image(img, np.eye(4)).to_filename(f"{d}/ft/img/v{i}.nii.gz")
    nib.Nifti1Image(lab, np.eye(4)).to_filename(f"{d}/ft/lab/v{i}.nii.gz")
    rows.append(f"img/v{i}.nii.gz,lab/v{i}.nii.gz")
open(f"{d}/ft/pairs.csv", "w").write("image,label\n" + "\n".join(rows) + "\n")
