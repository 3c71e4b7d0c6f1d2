"""tests/data/gen_resample.py — label volumes on another grid than their image (ingest --label-resample), with the
labels the store must hold computed exactly, without any affine inversion.

  gen DIR SEED     writes N pairs img_T.nii.gz / lab_T.nii.gz (each stored in a random axis order and flips), the
                   expected canonical label volume exp_T.npy on the image's grid, expect.json and pairs.csv; and
                   same_T.nii.gz, the expected labels stored on the image's own grid (same.csv pairs them)
  check STORE DIR [--same]  the store (ingested with --label-resample --keep-paths) holds exactly those labels,
                   resampled (from same.csv with --same: read as they are, no resampled record)

Construction, per world axis w (canonical RAS+ frame): image voxel i at world o + a·i; the label's voxel size is
b = a·r (r in 1/2, 1, 2: finer, equal, coarser) and its voxel 0 sits at o + a·(d + e) (d a whole shift, e a fraction
of an image voxel). So image voxel i lands at label voxel (i − d − e)/r, which ingest rounds to the nearest: floor(x +
0.5). e is drawn until no x of the grid is within 0.05 of a tie, so the expected index is exact; voxels landing
outside the label's grid are background (0)."""
import json
import os
import sys

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt, ornt_transform

sys.path.insert(0, os.path.dirname(__file__))
from storelib import Store, cut  # noqa: E402

AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def random_codes(rng):
    perm = rng.permutation(3)
    pairs = (("L", "R"), ("P", "A"), ("I", "S"))
    return tuple(pairs[p][rng.integers(2)] for p in perm)


def stored(data, affine, codes, dtype):
    """A canonical (RAS+) volume stored in the axis order and directions `codes`; sform and qform both set."""
    img = nib.Nifti1Image(data.astype(dtype), affine)
    out = img.as_reoriented(ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(codes)))
    out.set_sform(out.affine, code=2)
    out.set_qform(out.affine, code=1)
    return out


def fraction_ok(n, d, e, r):
    x = (np.arange(n) - d - e) / r
    f = x - np.floor(x)
    return np.abs(f - 0.5).min() >= 0.05


def gen(out, seed):
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)
    expect, rows = {}, []
    for t in range(3):
        n = rng.integers(10, 33, 3)
        a = rng.choice([0.75, 1.0, 1.5, 2.0], 3)
        o = rng.integers(-200, 200, 3) / 4.0
        r = rng.choice([0.5, 1.0, 2.0], 3)
        d = rng.integers(-4, 5, 3)
        e = np.zeros(3)
        for w in range(3):
            while True:
                e[w] = rng.integers(-7, 8) / 8.0
                if fraction_ok(n[w], d[w], e[w], r[w]):
                    break
        m = np.maximum(2, np.ceil(n / r).astype(int) + rng.integers(-3, 4, 3))  # some image voxels fall outside
        values = rng.choice(np.arange(1, 1200), 25, replace=False)
        lab = np.where(rng.random(m) < 0.3, 0, rng.choice(values, m))
        if rng.random() < 0.5:
            lab = np.minimum(lab, 255)  # a uint8 label volume sometimes
        img = rng.integers(1, 1000, n)
        j = [np.floor((np.arange(n[w]) - d[w] - e[w]) / r[w] + 0.5).astype(int) for w in range(3)]
        J = np.meshgrid(*j, indexing="ij")
        inside = np.ones(tuple(n), bool)
        for w in range(3):
            inside &= (J[w] >= 0) & (J[w] < m[w])
        exp = np.zeros(tuple(n), np.int64)
        exp[inside] = lab[J[0][inside], J[1][inside], J[2][inside]]
        ia = np.diag(list(a) + [1.0])
        ia[:3, 3] = o
        la = np.diag(list(a * r) + [1.0])
        la[:3, 3] = o + a * (d + e)
        icodes = random_codes(rng)
        stored(img, ia, icodes, np.int16).to_filename(f"{out}/img_{t}.nii.gz")
        stored(exp, ia, icodes, np.int16).to_filename(f"{out}/same_{t}.nii.gz")
        ldt = np.uint8 if lab.max() <= 255 and rng.random() < 0.5 else np.int16
        lcodes = random_codes(rng)
        stored(lab, la, lcodes, ldt).to_filename(f"{out}/lab_{t}.nii.gz")
        np.save(f"{out}/exp_{t}.npy", exp)
        shape = [int(x) for x in nib.load(f"{out}/lab_{t}.nii.gz").shape]
        expect[f"img_{t}.nii.gz"] = {"outside": int((~inside).sum()), "label_shape": shape}
        rows.append(f"img_{t}.nii.gz,lab_{t}.nii.gz")
        print(f"pair {t}: image {n.tolist()} voxels {a.tolist()} mm, label {m.tolist()} voxels {(a * r).tolist()} mm "
              f"stored {''.join(lcodes)}, shift {(d + e).tolist()} image voxels, {int((~inside).sum())} outside")
    json.dump(expect, open(f"{out}/expect.json", "w"))
    open(f"{out}/pairs.csv", "w").write("image,label\n" + "\n".join(rows) + "\n")
    open(f"{out}/same.csv", "w").write("".join(f"img_{t}.nii.gz,same_{t}.nii.gz\n" for t in range(len(rows))))


def check(store, out, same):
    st = Store(store)
    expect = json.load(open(f"{out}/expect.json"))
    fails, n = 0, 0
    for v in st.volumes():
        name = os.path.basename(v["path"])
        exp = np.load(f"{out}/exp_{name[4:-7]}.npy")
        rs = v["labels"].get("resampled")
        want = expect[name]
        if same:
            if rs is not None:
                print(f"FAIL {name}: a label on its image's grid was resampled: {rs}")
                fails += 1
        elif not rs or rs["method"] != "nearest" or rs["outside"] != want["outside"] or rs["shape"] != want["label_shape"]:
            print(f"FAIL {name}: resampled record {rs}, expected {want}")
            fails += 1
        axis = AXES[v["axis"]]
        if v["n_slices"] != exp.shape[axis]:
            print(f"FAIL {name}: {v['n_slices']} slices, expected {exp.shape[axis]}")
            fails += 1
            continue
        vals = sorted(int(x) for x in np.unique(exp))
        if v["labels"]["values"] != vals:
            print(f"FAIL {name}: label values {v['labels']['values']}, expected {vals}")
            fails += 1
        for i in range(v["n_slices"]):
            d = st.decode(st.raw(v["first_key"] + i, label=True), check_crc=False)
            n += 1
            if not np.array_equal(d["pixels"].astype(np.int64), cut(exp, axis, d["index"])):
                print(f"FAIL {name}: label slice {d['index']} differs")
                fails += 1
                break
    print(f"{n} label slices compared, {fails} failures")
    return 1 if fails else 0


if __name__ == "__main__":
    if sys.argv[1] == "gen":
        gen(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(check(sys.argv[2], sys.argv[3], "--same" in sys.argv[4:]))
