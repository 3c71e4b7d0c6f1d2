"""tests/data/check_store.py STORE [--keep-empty] [--min-fg F] [--norm N] [--axis A] [--label-map F] [--label-resample]
store made with --keep-paths against nibabel: closest-canonical reorientation, scaling, NaN/Inf -> 0, the documented
normalisation, the slicing plane and in-plane layout, the near-empty rule, labels and their values.
Exit 1 on any mismatch. Pixel tolerance: 1 LSB of uint16 (float32 vs float64 rounding at .5)."""
import argparse
import sys

import nibabel as nib
import numpy as np

sys.path.insert(0, __import__("os").path.dirname(__file__))
from storelib import AXES, Store, canonical, cut, encode, normalise, resample_nn  # noqa: E402
from storelib import read_png as read_png_int  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("store")
ap.add_argument("--keep-empty", action="store_true")
ap.add_argument("--min-fg", type=float, default=0.01)
ap.add_argument("--norm", default="percentile")
ap.add_argument("--axis", default="auto")
ap.add_argument("--expect-volumes", type=int, default=-1)
ap.add_argument("--label-threshold", type=float, default=None)
ap.add_argument("--label-map", default=None)
ap.add_argument("--label-resample", action="store_true", help="labels on another grid are resampled (nearest)")
ap.add_argument("--crc-max-bytes", type=int, default=1 << 15, help="check crcs in Python only for smaller slices")
a = ap.parse_args()

st = Store(a.store)
vols = st.volumes()
fails, checked = 0, 0


def fail(msg):
    global fails
    fails += 1
    print("FAIL", msg)


if a.expect_volumes >= 0 and len(vols) != a.expect_volumes:
    fail(f"{len(vols)} volumes, expected {a.expect_volumes}")
counts = st.meta_json("counts")
if counts["volumes"] != len(vols):
    fail("counts.volumes")
keys = st.keys(st.slices)
if keys != list(range(counts["slices"])):
    fail("slice keys are not 0..n-1")

lmap = None
if a.label_map:
    lmap = {}
    for line in open(a.label_map):
        f = line.strip().split(",")
        if len(f) == 2 and not line.startswith("#") and f[0].strip().lstrip("+-").isdigit():  # no header, comments
            lmap[int(f[0])] = int(f[1])


def read_png(path):
    return read_png_int(path).astype(np.float32)


def relabel(lraw):
    if a.label_threshold is not None:
        return (lraw > a.label_threshold).astype(np.int64)
    if lmap is not None:
        u, inv = np.unique(np.rint(lraw).astype(np.int64), return_inverse=True)
        return np.array([lmap.get(int(x), 0) for x in u], np.int64)[inv].reshape(np.shape(lraw))
    return np.rint(lraw).astype(np.int64)


def png_rule():
    """The store's PNG mask rule from its masks (docs/CLI.md, Class ids): class ids when any mask holds a value below
    half its bit depth's range other than 0, else binary when any holds a nonzero value."""
    kinds = set()
    for v in vols:
        if v["kind"] == "png" and "label_path" in v:
            m = read_png(v["label_path"])
            half = 32768 if open(v["label_path"], "rb").read()[24] == 16 else 128  # IHDR bit depth
            kinds.add("ids" if ((m > 0) & (m < half)).any() else "binary" if m.any() else "empty")
    return "ids" if "ids" in kinds else "binary" if "binary" in kinds else "undecided"


rule = png_rule()
cache = {}
for v in vols:
    path = v["path"]
    if v["kind"] == "png":
        img = read_png(path)
        exp, lo, sc = normalise(img, a.norm)
        d = st.decode(st.raw(v["first_key"]))
        checked += 1
        if v["n_slices"] != 1 or not np.abs(d["pixels"].astype(int) - exp.astype(int)).max() <= 1:
            fail(f"{path}: png slice differs")
        if "label_path" in v:
            m = read_png(v["label_path"])
            if rule == "binary" and a.label_threshold is None and lmap is None:
                m = (m > 0).astype(np.float32)
            m = relabel(m)
            dl = st.decode(st.raw(v["first_key"], label=True))
            if not np.array_equal(dl["pixels"], m.astype(np.uint16)):
                fail(f"{path}: png mask differs")
        continue
    if path not in cache:
        img = nib.load(path)
        cache[path] = (canonical(img), np.array(img.header.get_zooms()[:3]))
    data, _ = cache[path]
    if data.ndim == 4:
        data = data[..., v["frame"]]
    elif data.ndim == 2:
        data = data[..., None]
    cimg = nib.as_closest_canonical(nib.load(path))
    zooms = np.sqrt((cimg.affine[:3, :3] ** 2).sum(0)) if v["geometry"] != "pixdim" else np.array(nib.load(path).header.get_zooms()[:3])
    if a.axis == "auto":
        mx = zooms.max()
        axis = 2 if zooms[2] >= mx * (1 - 1e-3) else 1 if zooms[1] >= mx * (1 - 1e-3) else 0
    else:
        axis = AXES[a.axis]
    if AXES[v["axis"]] != axis:
        fail(f"{path}: axis {v['axis']} expected {axis}")
        continue
    layout2 = "stored" in v["intensity"]
    stored = None
    if layout2:  # stored values, exact or quantised, then the window fitted on them
        stored, slope = encode(data)
        if abs(v["intensity"]["slope"] - slope) > 1e-12 * slope:
            fail(f"{path}: slope {v['intensity']['slope']} expected {slope}")
        exp, lo, sc = normalise(stored, a.norm)
        w = v["intensity"]["window"]
        if abs(w[0] - lo) > 1e-9 * max(1, abs(lo)) or abs(w[1] - sc) > 1e-9 * max(1, abs(sc)):
            fail(f"{path}: stored window {w} expected {lo}+{sc}")
        lo, sc = lo * slope, sc * slope
    else:
        exp, lo, sc = normalise(data, a.norm)
    if abs(v["intensity"]["offset"] - lo) > 1e-4 * max(1, abs(lo)) or abs(v["intensity"]["scale"] - sc) > 1e-4 * max(1, abs(sc)):
        fail(f"{path}: window {v['intensity']['offset']}+{v['intensity']['scale']} expected {lo}+{sc}")
    lab = None
    if "label_path" in v:
        limg, outside = nib.load(v["label_path"]), None
        if a.label_resample:
            limg, outside = resample_nn(limg, nib.load(path))
        rs = v["labels"].get("resampled")
        if (rs is None) != (outside is None) or (rs and rs["outside"] != outside):
            fail(f"{path}: labels.resampled {rs}, expected {'none' if outside is None else outside} voxels outside")
        lab = relabel(canonical(limg))
        vals = sorted(int(x) for x in np.unique(lab))
        if vals != v["labels"]["values"]:
            fail(f"{path}: label values {v['labels']['values']} expected {vals}")
    K = data.shape[axis]
    kept = []
    for k in range(K):
        s = cut(exp, axis, k)
        lk = cut(lab, axis, k) if lab is not None else None
        if a.keep_empty or (lk is not None and (lk > 0).any()) or (s > 0).sum() >= a.min_fg * s.size:
            kept.append(k)
    if v["n_slices"] != len(kept):
        fail(f"{path} frame {v['frame']}: {v['n_slices']} slices stored, expected {len(kept)}")
        continue
    rs = [i for i in range(3) if i != axis]
    for i, k in enumerate(kept):
        key = v["first_key"] + i
        d = st.decode(st.raw(key), check_crc=data.shape[(axis + 1) % 3] * data.shape[(axis + 2) % 3] * 2 <= a.crc_max_bytes)
        checked += 1
        e = cut(exp, axis, k)
        if d["index"] != k or d["volume"] != v["id"] or d["pixels"].shape != e.shape:
            fail(f"{path} key {key}: index {d['index']} vol {d['volume']} shape {d['pixels'].shape}, expected {k} {v['id']} {e.shape}")
            break
        if layout2 and not np.array_equal(d["stored"].astype(np.int64), cut(stored, axis, k)):
            fail(f"{path} key {key}: stored values differ from the source's")
            break
        diff = np.abs(d["pixels"].astype(np.int64) - e.astype(np.int64))
        if diff.max() > 1 or (diff > 0).mean() > 0.01:
            fail(f"{path} key {key}: max diff {diff.max()} ({(diff > 0).sum()} pixels differ)")
            break
        if abs(d["spacing"][0] - zooms[rs[0]]) > 1e-4 or abs(d["spacing"][1] - zooms[rs[1]]) > 1e-4:
            fail(f"{path} key {key}: spacing {d['spacing']} expected {zooms[rs]}")
        if lab is not None:
            dl = st.decode(st.raw(key, label=True), check_crc=False)
            if not np.array_equal(dl["pixels"].astype(np.int64), cut(lab, axis, k)):
                fail(f"{path} key {key}: label differs")
        elif st.raw(key, label=True) is not None:
            fail(f"{path} key {key}: unexpected label record")
print(f"{len(vols)} volumes, {checked} slices compared, {fails} failures")
sys.exit(1 if fails else 0)
