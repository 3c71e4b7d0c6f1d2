#!/usr/bin/python3
"""tools/bench/gen_archive.py OUT_DIR --n N [--seed S] [-j JOBS] [--small] — a benchmark archive of .nii.gz volumes
that look like clinical MRI (docs/PERFORMANCE.md, "The realistic archive"), plus OUT_DIR/manifest.json.

Each volume is a head phantom (scalp, skull, CSF, folded grey matter over white matter with smooth texture,
ventricles) under a smooth multiplicative bias field, with T1-like or T2-like contrast, and Rician noise over the
whole field of view: |signal + N(0, s) + i N(0, s)|, so the air is a Rayleigh background, never zeros. Mostly int16
256x256x120-200 (also 192x256, 240x240, 320x320), 15 % uint16, 15 % float32; stored in any axis order and direction
with the matching affine (some oblique by a few degrees), thick slices now and then; about 5 % 4D (2-4 frames) and
10 % odd headers (scl_slope/scl_inter, qform only, sform only, pixdim only, NIfTI-2, big-endian). Written as
dcm2niix writes: gzip level 6, mtime 0.

Volume i depends only on (seed, i): any file can be regenerated alone, and files already present are skipped, so
a large archive can be built in chunks (the same seed: a manifest with another seed is refused). --small makes
64x64x24-40 volumes of the same kinds, for tests. Needs numpy and nibabel (/usr/bin/python3).
"""
import argparse
import gzip
import io
import json
import multiprocessing
import os
import secrets
import subprocess
import sys
import time

import nibabel as nib
import numpy as np

ODDITIES = ["scl_slope", "qform_only", "sform_only", "pixdim_only", "nifti2", "big_endian"]
# tissue intensities relative to the brightest tissue: scalp fat, skull, CSF, grey matter, white matter
CONTRAST = {"T1": (0.85, 0.06, 0.22, 0.62, 1.00), "T2": (0.55, 0.05, 1.00, 0.62, 0.42)}


def draw_params(seed, index, small):
    """Everything about volume `index` but its pixels, from its own stream: cheap, so the manifest never needs the
    pixels."""
    r = np.random.default_rng([seed, index, 0])
    u = r.random()
    if small:
        inplane = (64, 64) if u < 0.7 else [(48, 64), (60, 60), (80, 80)][r.integers(3)]
        scale = 256 / 64
    else:
        inplane = (256, 256) if u < 0.7 else [(192, 256), (240, 240), (320, 320)][r.integers(3)]
        scale = 1.0
    vox_ip = float(r.uniform(0.8, 1.2)) * 256 / max(inplane)  # a field of view about 256 mm
    if r.random() < 0.2:  # thick slices: fewer of them, about the same extent
        thick = float(r.uniform(1.5, 5.0)) * scale
        ns = int(round(r.uniform(150, 200) / thick))
    else:
        ns = int(r.integers(120, 201)) if not small else int(r.integers(24, 41))
        thick = float(r.uniform(1.0, 1.2)) * (scale if not small else 160 / ns)
    d = r.random()
    dtype = "int16" if d < 0.70 else "uint16" if d < 0.85 else "float32"
    peak = float(np.exp(r.uniform(np.log(300), np.log(4000))))
    if r.random() < 0.08:
        peak = float(r.uniform(8000, 24000))
    # 4D (1 in 20) and odd headers (1 in 10, the kinds in turn) by index: their share is exact in any 20 indices
    # in a row (a 40-volume test archive holds 2 4D volumes and 4 odd headers), their place depends on the seed
    frames = int(r.integers(2, 5)) if index % 20 == (seed * 7 + 3) % 20 else 1
    oddity = ODDITIES[(index // 10 + seed) % len(ODDITIES)] if index % 10 == seed % 10 else None
    # the stored axes: a permutation of the world axes, each possibly flipped; the last stored axis is the slices
    perm = [int(a) for a in r.permutation(3)]
    flips = [bool(f) for f in r.random(3) < 0.5]
    oblique = [float(a) for a in r.uniform(-8, 8, 3)] if r.random() < 0.12 else None
    return {
        "index": index,
        "seed": seed,
        "file": f"vol_{index:06d}.nii.gz",
        "shape": [inplane[0], inplane[1], ns] + ([frames] if frames > 1 else []),
        "voxel_mm": [round(vox_ip, 4), round(vox_ip, 4), round(thick, 4)],
        "dtype": dtype,
        "frames": frames,
        "contrast": "T1" if r.random() < 0.6 else "T2",
        "peak": round(peak, 1),
        "noise_frac": round(float(r.uniform(0.02, 0.05)), 4),
        "perm": perm,
        "flips": flips,
        "oblique_deg": oblique,
        "oddity": oddity,
        "head": [float(v) for v in r.uniform([66, 84, 78], [76, 96, 90])],  # semi-axes, mm (L-R, A-P, S-I)
        "centre": [float(v) for v in r.uniform([-6, -8, 5], [6, 8, 25])],  # mm; the neck falls out of the field
    }


def smooth_field(r, shape, n_ctrl, width):
    """Smooth random field over `shape` (values about N(0,1)): a coarse random grid spread by separable Gaussian
    weights; the last product (by x) is the only one of the full grid's size, and comes out C-contiguous."""
    g = r.standard_normal(n_ctrl).astype(np.float32)
    w = []
    for ax in range(3):
        t = np.linspace(0, 1, shape[ax], dtype=np.float32)[:, None]
        c = np.linspace(0, 1, n_ctrl[ax], dtype=np.float32)[None, :]
        k = np.exp(-((t - c) ** 2) / np.float32(2 * (width / n_ctrl[ax]) ** 2))
        w.append(k / k.sum(1, keepdims=True))
    g = g @ w[2].T  # (cx, cy, nz)
    g = np.einsum("jb,abk->ajk", w[1], g)  # (cx, ny, nz)
    g = (w[0] @ g.reshape(n_ctrl[0], -1)).reshape(shape)
    g *= np.float32(1 / max(float(g[::3, ::3, ::3].std(dtype=np.float64)), 1e-6))
    return g


def ramp(x, edge, width):
    """clip((edge - x) / width, 0, 1), new array (np.minimum/maximum: np.clip is several times slower here)."""
    out = np.subtract(np.float32(edge), x, dtype=np.float32)
    out *= np.float32(1 / width)
    np.minimum(out, 1, out=out)
    return np.maximum(out, 0, out=out)


def phantom(p, r, shape, spacing):
    """The noiseless head in RAS voxel order (shape, spacing: world axes x, y, z), brightest tissue about 1."""
    scalp, skull, csf, gm, wm = CONTRAST[p["contrast"]]
    jitter = r.uniform(0.9, 1.1, 5)
    scalp, skull, csf, gm, wm = (float(v * j) for v, j in zip((scalp, skull, csf, gm, wm), jitter))
    co = [((np.arange(n) - (n - 1) / 2) * s - c).astype(np.float32) for n, s, c in zip(shape, spacing, p["centre"])]
    a, b, c = p["head"]
    r0 = (co[0] / a)[:, None, None] ** 2 + (co[1] / b)[None, :, None] ** 2
    r0 = r0 + (co[2] / c)[None, None, :] ** 2
    np.sqrt(r0, out=r0)
    f = smooth_field(r, shape, (5, 5, 5), 1.0)
    f *= 0.015
    r0 += f  # no perfect ellipsoid
    # outer layers by radius (linear ramps between them: partial volume); brain = grey matter here
    knots = [0.0, 0.855, 0.87, 0.895, 0.91, 0.935, 0.95, 0.99, 1.0]
    vals = [gm, gm, csf, csf, skull, skull, scalp, scalp * 0.7, 0.0]
    img = np.interp(r0, knots, vals).astype(np.float32)
    # white matter under a folded cortex: the grey/white boundary moves with a mid-frequency field
    folds = smooth_field(r, shape, (22, 26, 20), 0.8)
    f = folds * np.float32(0.09)
    f += r0
    w = ramp(f, 0.77, 0.025)
    cortex = ramp(r0, 0.855, 0.015)
    w *= cortex
    f = w * np.float32(wm - gm)
    img += f
    # sulcal CSF: where the folds field crosses a level, in the cortex only
    folds -= np.float32(0.8)
    np.abs(folds, out=folds)
    sulci = ramp(folds, 0.12, 0.12)
    sulci *= cortex
    np.subtract(1, w, out=w)
    sulci *= w
    sulci *= np.float32(0.6 * (csf - gm))
    img += sulci
    del f, w, cortex, sulci, folds, r0
    # ventricles: two ellipsoids either side of the midline, inside a small box
    for side in (-1, 1):
        vc = np.array([side * 0.09 * a, 0.02 * b, 0.12 * c]) + np.array(p["centre"])
        va = np.array([0.07 * a, 0.28 * b, 0.12 * c])
        sl, cs = [], []
        for ax in range(3):
            full = (np.arange(shape[ax]) - (shape[ax] - 1) / 2) * spacing[ax]
            idx = np.nonzero(np.abs(full - vc[ax]) < va[ax] * 1.2)[0]
            if len(idx) == 0:
                break
            sl.append(slice(idx[0], idx[-1] + 1))
            cs.append(((full[idx] - vc[ax]) / va[ax]).astype(np.float32))
        if len(sl) < 3:
            continue
        rv = cs[0][:, None, None] ** 2 + cs[1][None, :, None] ** 2 + cs[2][None, None, :] ** 2
        v = np.clip((1 - np.sqrt(rv)) / 0.15, 0, 1)
        sub = img[tuple(sl)]
        sub += (csf - sub) * v
    # smooth texture inside the head, and a multiplicative bias field (low-order, about +-20 %)
    t = smooth_field(r, shape, (10, 10, 8), 0.8)
    t *= 0.05
    t += 1
    img *= t
    ex = [np.exp(r.uniform(-0.15, 0.15) * np.linspace(-1, 1, n) + r.uniform(-0.1, 0.1) * np.linspace(-1, 1, n) ** 2)
          for n in shape]
    img *= (ex[0][:, None] * ex[1][None, :]).astype(np.float32)[:, :, None]
    img *= ex[2].astype(np.float32)[None, None, :]
    return img


def rician(signal, sigma, r):
    """|signal + n1 + i n2|, n1, n2 ~ N(0, sigma): over the whole field, air included."""
    sigma = np.float32(sigma)
    n = r.standard_normal(signal.shape, dtype=np.float32)
    n *= sigma
    n += signal
    np.square(n, out=n)
    m = r.standard_normal(signal.shape, dtype=np.float32)
    m *= sigma
    np.square(m, out=m)
    n += m
    return np.sqrt(n, out=n)


def affine_for(p, shape_ras, spacing):
    """The RAS affine of the phantom's grid (centred), then rotated for oblique volumes."""
    aff = np.diag(list(spacing) + [1.0])
    aff[:3, 3] = -(np.array(shape_ras) - 1) / 2 * np.array(spacing)
    if p["oblique_deg"]:
        rot = np.eye(4)
        for ax, deg in enumerate(p["oblique_deg"]):
            t = np.deg2rad(deg)
            i, j = [k for k in range(3) if k != ax]
            m = np.eye(4)
            m[i, i] = m[j, j] = np.cos(t)
            m[i, j], m[j, i] = -np.sin(t), np.sin(t)
            rot = m @ rot
        aff = rot @ aff
    return aff


def to_dtype(v, dtype):
    if dtype == "float32":
        return v
    np.rint(v, out=v)
    np.minimum(v, 32767 if dtype == "int16" else 65535, out=v)  # values are >= 0 (a magnitude)
    return v.astype(dtype)


def nifti_bytes(p, data, aff, r):
    """The uncompressed NIfTI file, with the volume's header oddity. The header is edited in the written bytes:
    nibabel rewrites codes and scaling from the image's affine and array when it writes."""
    odd = p["oddity"]
    cls = nib.Nifti2Image if odd == "nifti2" else nib.Nifti1Image
    hdr = (nib.Nifti2Header if odd == "nifti2" else nib.Nifti1Header)(endianness=">" if odd == "big_endian" else "<")
    slope = inter = None
    if odd == "scl_slope":  # stored integers times a slope plus an intercept (float sources: on the stored floats)
        slope, inter = float(r.uniform(0.25, 4.0)), float(r.uniform(-50, 0))
        if data.dtype != np.float32:
            hi = np.iinfo(data.dtype).max
            data = np.clip(np.rint((data.astype(np.float32) - inter) / slope), 0, hi).astype(data.dtype)
        else:
            data = (data - inter) / np.float32(slope)
    img = cls(data, aff, header=hdr)
    img.set_data_dtype(data.dtype)  # a given header brings its own (float32)
    b = bytearray(img.to_bytes())
    h = type(img.header).from_fileobj(io.BytesIO(b))
    h.set_xyzt_units("mm", "sec")
    h.set_qform(aff, code=0 if odd in ("sform_only", "pixdim_only") else 1)  # dcm2niix: both, scanner-based
    h.set_sform(aff, code=0 if odd in ("qform_only", "pixdim_only") else 1)
    if slope is not None:
        h.set_slope_inter(slope, inter)
    bb = h.binaryblock
    b[: len(bb)] = bb
    return bytes(b)


def make_volume(p):
    r = np.random.default_rng([p["seed"], p["index"], 1])
    n1, n2, ns = p["shape"][:3]
    stored = [n1, n2, ns]
    stored_sp = p["voxel_mm"]
    # the phantom's RAS grid: stored axis k is world axis perm[k]
    shape_ras, sp_ras = [0, 0, 0], [0.0, 0.0, 0.0]
    for k, ax in enumerate(p["perm"]):
        shape_ras[ax], sp_ras[ax] = stored[k], stored_sp[k]
    clean = phantom(p, r, shape_ras, sp_ras)
    aff_ras = affine_for(p, shape_ras, sp_ras)
    # world axis -> stored axis, with flips: the ornt of the stored array relative to the RAS one
    ornt = np.array([[p["perm"].index(ax), -1 if p["flips"][p["perm"].index(ax)] else 1] for ax in range(3)])
    frames = []
    for f in range(p["frames"]):
        gain = p["peak"] * (1 + 0.03 * f)
        v = rician(clean * gain, p["noise_frac"] * p["peak"], r)
        frames.append(to_dtype(nib.orientations.apply_orientation(v, ornt), p["dtype"]))
    data = frames[0] if len(frames) == 1 else np.stack(frames, axis=-1)
    aff = aff_ras @ nib.orientations.inv_ornt_aff(ornt, shape_ras)
    return nifti_bytes(p, np.ascontiguousarray(data), aff, r)


def orientation_code(p):
    """The axis codes of the stored array (nibabel's reading of the affine; pixdim-only headers carry none)."""
    if p["oddity"] == "pixdim_only":
        return "none"
    codes = ["RL"[p["flips"][k]] if ax == 0 else "AP"[p["flips"][k]] if ax == 1 else "SI"[p["flips"][k]]
             for k, ax in enumerate(p["perm"])]
    return "".join(codes)


def gzip6(raw, fast):
    """gzip level 6, mtime 0: zlib's (what dcm2niix's pigz writes), or with fast libdeflate-gzip's level 6 (Debian's
    libdeflate-tools; about 3x faster, files about 1.5 % smaller, which only makes the store/source ratio harder)."""
    if not fast:
        return gzip.compress(raw, compresslevel=6, mtime=0)
    return subprocess.run(["libdeflate-gzip", "-6", "-c"], input=raw, stdout=subprocess.PIPE, check=True).stdout


def one(job):
    out_dir, p, fast = job
    path = os.path.join(out_dir, p["file"])
    t = 0.0
    if not os.path.exists(path):
        t0 = time.perf_counter()
        raw = make_volume(p)
        gz = gzip6(raw, fast)
        tmp = path + ".part"
        with open(tmp, "wb") as f:
            f.write(gz)
        os.replace(tmp, path)  # a killed run leaves no truncated .nii.gz to be skipped later
        t = time.perf_counter() - t0
    return p["index"], os.path.getsize(path), t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--seed", type=int)
    ap.add_argument("-j", "--jobs", type=int, default=1)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--fast-gzip", action="store_true",
                    help="compress with libdeflate-gzip -6 (the 1000-volume run; the benchmarks use zlib)")
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    man_path = os.path.join(a.out_dir, "manifest.json")
    old = None
    if os.path.exists(man_path):
        with open(man_path) as f:
            old = json.load(f)
    seed = a.seed if a.seed is not None else old["seed"] if old else secrets.randbelow(2**31)
    if old and (old["seed"] != seed or old["small"] != a.small):
        sys.exit(f"{man_path}: written with seed {old['seed']}, small {old['small']}; "
                 f"use the same (or another OUT_DIR)")
    print(f"seed: {seed} (regenerate with --seed {seed})", flush=True)
    params = [draw_params(seed, i, a.small) for i in range(a.n)]
    jobs = [(a.out_dir, p, a.fast_gzip) for p in params]
    t0 = time.perf_counter()
    if a.jobs > 1:
        with multiprocessing.Pool(a.jobs) as pool:
            done = list(pool.imap_unordered(one, jobs, chunksize=1))
    else:
        done = [one(j) for j in jobs]
    wall = time.perf_counter() - t0
    sizes = {i: (b, t) for i, b, t in done}
    made = [t for _, _, t in done if t > 0]
    entries = []
    for p in params:
        e = {k: p[k] for k in ("file", "index", "seed", "shape", "voxel_mm", "dtype", "frames", "contrast", "peak",
                               "noise_frac", "oblique_deg", "oddity")}
        e["orientation"] = orientation_code(p)
        e["gz_bytes"] = sizes[p["index"]][0]
        entries.append(e)
    if old:  # keep entries of a larger earlier run
        entries += [e for e in old["volumes"] if e["index"] >= a.n]
    tmp = man_path + ".part"
    with open(tmp, "w") as f:
        json.dump({"seed": seed, "small": a.small, "volumes": entries}, f, indent=1)
    os.replace(tmp, man_path)
    total = sum(b for b, _ in sizes.values())
    print(f"{len(made)} written, {a.n - len(made)} present; {total / 1e6:.1f} MB of .nii.gz; "
          f"{wall:.1f} s wall" + (f", {sum(made) / len(made):.2f} s per volume per process" if made else ""))


if __name__ == "__main__":
    main()
