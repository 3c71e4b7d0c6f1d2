#!/usr/bin/python3
"""tests/data/check_dicom.py STORE SERIES... — checks the store's volume of each DICOM series (a folder, or a file
given as a source; the store made with --keep-paths --keep-empty) against the DICOM files read back with pydicom:
one volume of kind "dicom" per series, the canonical (RAS+) shape, spacing and slicing axis of nibabel's
closest-canonical of the series' voxel grid (built here from ImagePositionPatient, ImageOrientationPatient and
PixelSpacing, independently of dcm2niix), every slice stored, and each stored slice an ordered image of the DICOM
pixels at the same place: stored values a non-decreasing function of the DICOM values, and strictly increasing over
the values between the 2nd and 98th percentile (which no normalisation clips). Exit 1 on any mismatch."""
import os
import sys

import nibabel as nib
import numpy as np
import pydicom

sys.path.insert(0, os.path.dirname(__file__))
from storelib import AXES, Store, canonical, cut  # noqa: E402

store, series = sys.argv[1], sys.argv[2:]
st = Store(store)
fails = 0


def fail(msg):
    global fails
    fails += 1
    print("FAIL", msg)


def is_dicom(p):
    with open(p, "rb") as f:
        b = f.read(132)
    return len(b) == 132 and b[128:] == b"DICM"


def reference(path):
    """The series as a RAS+ canonical float32 volume, and its voxel sizes."""
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(path, n) for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)) and
        is_dicom(os.path.join(path, n)))
    ds = [pydicom.dcmread(f) for f in files]
    iop = np.array(ds[0].ImageOrientationPatient, float)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    ds.sort(key=lambda d: float(np.array(d.ImagePositionPatient, float) @ normal))
    dr, dc = (float(x) for x in ds[0].PixelSpacing)
    p0 = np.array(ds[0].ImagePositionPatient, float)
    if len(ds) > 1:
        step = (np.array(ds[-1].ImagePositionPatient, float) - p0) / (len(ds) - 1)
    else:
        step = normal * float(ds[0].SliceThickness)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * dc, col_dir * dr, step, p0
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    # array index (i = column, j = row, k = slice), as a NIfTI voxel grid
    data = np.stack([d.pixel_array.astype(np.float32).T for d in ds], axis=2)
    img = nib.Nifti1Image(data, ras)
    img.set_sform(ras, 1)
    img.set_qform(ras, 1)
    can = nib.as_closest_canonical(img)
    return canonical(img), np.array(can.header.get_zooms()[:3], float)


vols = st.volumes()
by_path = {v.get("path"): v for v in vols if v["kind"] == "dicom"}
for path in series:
    v = by_path.get(path)
    if v is None:
        fail(f"{path}: no volume of kind dicom with this path")
        continue
    ref, zooms = reference(path)
    if list(v["shape"]) != list(ref.shape):
        fail(f"{path}: shape {v['shape']}, the DICOM series gives {list(ref.shape)}")
        continue
    ax = AXES[v["axis"]]
    others = [a for a in range(3) if a != ax]
    want_sp = [zooms[others[0]], zooms[others[1]], zooms[ax]]
    if not np.allclose(v["spacing"], want_sp, rtol=1e-3):
        fail(f"{path}: spacing {v['spacing']}, the DICOM series gives {want_sp}")
    if v["n_slices"] != ref.shape[ax]:
        fail(f"{path}: {v['n_slices']} slices stored, the series has {ref.shape[ax]} along {v['axis']}")
    for i in range(v["n_slices"]):
        d = st.decode(st.raw(v["first_key"] + i))
        r = cut(ref, ax, d["index"]).astype(np.float64)
        px = d["pixels"].astype(np.float64)
        if px.shape != r.shape:
            fail(f"{path} slice {d['index']}: {px.shape}, expected {r.shape}")
            break
        o = np.argsort(r, axis=None, kind="stable")
        rs, ps = r.ravel()[o], px.ravel()[o]
        lo, hi = np.percentile(rs, [2, 98])
        mid = (rs > lo) & (rs < hi)
        up = np.diff(rs[mid]) > 0
        if np.any(np.diff(ps) < 0) or not np.all(np.diff(ps[mid])[up] > 0):
            fail(f"{path} slice {d['index']}: stored pixels are not an ordered image of the DICOM pixels")
            break
    print(f"{path}: {v['shape']} {v['axis']}, {v['n_slices']} slices checked")
print(f"check_dicom: {len(series)} series, {fails} failures")
sys.exit(1 if fails else 0)
