"""tests/data/gen_synth.py OUTDIR SEED — synthetic NIfTI volumes covering every supported datatype, NIfTI-1 and
NIfTI-2, .nii / .nii.gz / .hdr+.img, orientations (RAS, LAS, permuted, oblique sform, qform only, no affine), 4D,
scl_slope/scl_inter, NaN/Inf, and label volumes (uint8 and >255 values). Writes OUTDIR/labels.csv for the labelled
pairs. Generated at test time into the build tree; nothing here is committed but this script."""
import math
import os
import struct
import sys

import nibabel as nib
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from storelib import write_png  # noqa: E402

out, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
os.makedirs(out, exist_ok=True)
os.makedirs(os.path.join(out, "img"), exist_ok=True)


def blob(shape, lo, hi, dtype):
    """A bright ellipsoid with noise on a zero background, so some slices are near-empty."""
    nx, ny, nz = shape[:3]
    x, y, z = np.meshgrid(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), np.linspace(-1.3, 1.3, nz), indexing="ij")
    inside = (x / 0.8) ** 2 + (y / 0.7) ** 2 + (z / 0.9) ** 2 < 1
    v = rng.uniform(lo, hi, size=shape)
    if len(shape) == 4:
        inside = inside[..., None]
    v = np.where(inside, v, 0)
    return v.astype(dtype)


def rot(axis, deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    m = np.eye(4)
    i, j = [(1, 2), (0, 2), (0, 1)][axis]
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


def aff(perm=(0, 1, 2), flips=(1, 1, 1), sp=(1, 1, 1), extra=None):
    a = np.zeros((4, 4))
    for vox, world in enumerate(perm):
        a[world, vox] = flips[vox] * sp[vox]
    a[:3, 3] = rng.uniform(-50, 50, 3)
    a[3, 3] = 1
    return extra @ a if extra is not None else a


def save(img, name, sform=None, qform=None):
    if sform is not None:
        img.header.set_sform(img.affine if sform else None, code=sform)
    if qform is not None:
        img.header.set_qform(img.affine if qform else None, code=qform)
    p = os.path.join(out, "img", name)
    img.to_filename(p)
    return p


def patch_scale(path, slope, inter):
    """nibabel recomputes scaling on save; set scl_slope/scl_inter in the header bytes instead."""
    with open(path, "r+b") as f:
        f.seek(112)
        f.write(struct.pack("<ff", slope, inter))


N1, N2, P1 = nib.Nifti1Image, nib.Nifti2Image, nib.Nifti1Pair
S = (14, 12, 10)
cases = [
    ("u8_ras.nii", N1, blob(S, 1, 255, np.uint8), aff(), 2, 0),
    ("i8_las.nii.gz", N1, blob(S, -100, 100, np.int8), aff(flips=(-1, 1, 1)), 1, 1),
    ("u16_n2_thick.nii", N2, blob(S, 30000, 65000, np.uint16), aff(sp=(0.9, 0.9, 3.0)), 1, 0),
    ("i16_pair_perm.hdr", P1, blob(S, -1000, 3000, np.int16), aff(perm=(2, 0, 1), flips=(1, -1, 1)), 2, 0),
    ("u32_n2_oblique.nii.gz", N2, blob(S, 0, 3e9, np.uint32), aff(extra=rot(2, 12) @ rot(0, 8)), 2, 0),
    ("i32_qform_pir.nii", N1, blob(S, -1e6, 1e6, np.int32), aff(perm=(1, 2, 0), flips=(-1, -1, 1), sp=(1.2, 1, 1)), 0, 1),
    ("f32_nan.nii.gz", N1, blob(S, -5, 50, np.float32), aff(flips=(1, -1, -1)), 2, 2),
    ("f64_n2_sag.nii", N2, blob(S, 0, 1, np.float64), aff(sp=(3.0, 1, 1)), 2, 0),
    ("i16_slope.nii", N1, blob(S, 0, 2000, np.int16), aff(), 2, 0),
    ("f32_4d.nii.gz", N1, blob(S + (3,), 0, 100, np.float32), aff(perm=(0, 2, 1)), 2, 0),
    ("u8_noaffine.nii", N1, blob(S, 1, 200, np.uint8), aff(flips=(-1, 1, 1)), 0, 0),
    ("u16_pair_las.hdr", P1, blob(S, 1, 60000, np.uint16), aff(flips=(-1, 1, 1), sp=(1, 2, 1)), 1, 0),
]
for name, cls, data, a, sc, qc in cases:
    if name.startswith("f32_nan"):
        data.flat[rng.choice(data.size, 5, replace=False)] = np.nan
        data.flat[rng.choice(data.size, 3, replace=False)] = np.inf
    img = cls(data, a)
    p = save(img, name, sform=sc, qform=qc)
    if name == "i16_slope.nii":
        patch_scale(p, 2.5, -100.0)
    if name == "u8_noaffine.nii":  # nibabel re-derives the codes on save; zero them in the bytes
        with open(p, "r+b") as f:
            f.seek(252)
            f.write(struct.pack("<hh", 0, 0))

# labelled pairs (CSV): the same grid, an 8-bit label and a >255 label
rows = []
for i, (vals, ldt) in enumerate([((0, 3, 7), np.uint8), ((0, 300, 2), np.uint16)]):
    a = aff(flips=(-1, 1, 1) if i else (1, 1, 1))
    im = N1(blob(S, 10, 500, np.int16), a)
    lab = rng.choice(vals, size=S).astype(ldt)
    lab[:, :, :2] = 0  # label-free slices: near-empty rule applies there
    pi = save(im, f"lab_img{i}.nii.gz", sform=2, qform=0)
    pl = save(N1(lab, a), f"lab_lab{i}.nii.gz", sform=2, qform=0)
    rows.append((os.path.relpath(pi, out), os.path.relpath(pl, out)))


os.makedirs(os.path.join(out, "png"), exist_ok=True)
for i, dt in enumerate([np.uint8, np.uint16]):
    h, w = 20 + i, 17
    im = rng.integers(1, 250 if dt == np.uint8 else 60000, size=(h, w)).astype(dt)
    mk = np.zeros((h, w), np.uint8)
    mk[3:12, 4:9] = 255
    pi, pm = os.path.join(out, "png", f"im{i}.png"), os.path.join(out, "png", f"mk{i}.png")
    write_png(pi, im)
    write_png(pm, mk)
    rows.append((os.path.relpath(pi, out), os.path.relpath(pm, out)))
with open(os.path.join(out, "labels.csv"), "w", newline="") as f:
    f.write("image,label\r\n")
    for r in rows:
        f.write(f"{r[0]},{r[1]}\r\n")
# nnU-Net layout: imagesTr/CASE_0000.nii.gz + labelsTr/CASE.nii.gz
for d in ("nnunet/imagesTr", "nnunet/labelsTr"):
    os.makedirs(os.path.join(out, d), exist_ok=True)
for i in range(2):
    a = aff()
    im = N1(blob(S, 10, 500, np.int16), a)
    lab = rng.choice((0, 1, 2), size=S).astype(np.uint8)
    im.to_filename(os.path.join(out, "nnunet/imagesTr", f"case{i:03d}_0000.nii.gz"))
    N1(lab, a).to_filename(os.path.join(out, "nnunet/labelsTr", f"case{i:03d}.nii.gz"))
print(len(cases), "images,", len(rows), "labelled pairs in", out)
