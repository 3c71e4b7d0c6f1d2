#!/usr/bin/python3
"""tests/finetune/norm_check.py — inputs and independent checks of test_store_norm.sh (reading a store with another
intensity normalisation than ingest's: data/store_norm.h, pretrain/finetune --intensity, eval).

  gen DIR SEED                      three noisy int16 volumes (Rician noise over the whole field, a brighter head)
                                    with a {0,1} label blob each: DIR/in/v*.nii.gz, DIR/lab/v*.nii.gz, DIR/pairs.csv
  pixels STORE OUT.bin NORM LO HI   OUT.bin (store_norm_driver's pixels, keys in order) against the reference from
                                    the source NIfTI (the store must keep paths): canonical volume (nibabel), stored
                                    values (integers as they are), window of NORM on them (numpy percentiles of the
                                    nonzero values, or min/max), floor(65535 * clip((s - off) / sc, 0, 1) + 0.5)
  v1 SRC DST                        DST: a layout-1 copy of layout-2 store SRC, written from docs/FORMATS.md (meta
                                    format version 1, normalised uint16 pixels in unshuffled records, volume
                                    records without the layout-2 members)
  meta RUN NORM [LO HI]             RUN/best/meta.json's preprocess says intensity NORM (and p_lo, p_hi)
"""
import json
import os
import struct
import sys

import lmdb
import nibabel as nib
import numpy as np
import zstandard

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
import storelib  # noqa: E402


def gen(d, seed):
    rng = np.random.default_rng(seed)
    os.makedirs(f"{d}/in", exist_ok=True)
    os.makedirs(f"{d}/lab", exist_ok=True)
    rows = ["image,label"]
    for i in range(3):
        x, y, z = np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 36), np.linspace(-1, 1, 5), indexing="ij")
        head = (x / 0.8) ** 2 + (y / 0.9) ** 2 < 1
        s = np.where(head, rng.uniform(400, 900) + rng.uniform(100, 300) * x, 0)
        sig = rng.uniform(10, 40)
        v = np.sqrt((s + rng.normal(0, sig, s.shape)) ** 2 + rng.normal(0, sig, s.shape) ** 2)
        cx, cy = rng.uniform(-0.3, 0.3, 2)
        lab = ((x - cx) ** 2 + (y - cy) ** 2 < rng.uniform(0.08, 0.2)).astype(np.uint8)
        v = v + 250 * lab  # the structure is brighter, so a model's output depends on the pixels
        aff = np.diag([0.9, 0.9, 2.0, 1])
        nib.save(nib.Nifti1Image(v.astype(np.int16), aff), f"{d}/in/v{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), f"{d}/lab/v{i}.nii.gz")
        rows.append(f"{d}/in/v{i}.nii.gz,{d}/lab/v{i}.nii.gz")
    open(f"{d}/pairs.csv", "w").write("\n".join(rows) + "\n")


def pixels(store, out, norm, lo, hi):
    st = storelib.Store(store)
    got = np.fromfile(out, "<u2")
    pos, bad, n = 0, 0, 0
    ref_vol = {}
    for k in st.keys(st.slices):
        rec = st.decode(st.raw(k))
        vi = st.volume(rec["volume"])
        if vi["id"] not in ref_vol:
            can = storelib.canonical(nib.load(vi["path"]))
            s, slope = storelib.encode(can)
            assert slope == 1.0, "integer source kept exactly"
            ref_vol[vi["id"]] = (s, storelib.normalise(s, norm, (lo, hi))[0])
        s, ref = ref_vol[vi["id"]]
        ax = storelib.AXES[vi["axis"]]
        h, w = rec["h"], rec["w"]
        if rec["stored"] is not None and not np.array_equal(storelib.cut(s, ax, rec["index"]), rec["stored"]):
            print(f"FAIL: key {k}: the stored values are not the source's")
            bad += 1
        r = storelib.cut(ref, ax, rec["index"])
        g = got[pos:pos + h * w].reshape(h, w)
        pos += h * w
        n += 1
        # numpy's percentile interpolates as b - (b - a)(1 - t) when t >= 0.5, the store as a + (b - a)t: the
        # windows can differ in their last bit, which moves a pixel at a rounding tie by one (as check_store.py allows)
        dd = np.abs(g.astype(np.int64) - r.astype(np.int64)) if g.shape == r.shape else None
        if dd is None or dd.max() > 1 or (dd > 0).mean() > 0.01:
            d = dd.max() if dd is not None else -1
            print(f"FAIL: key {k} (volume {vi['id']}, slice {rec['index']}): max |diff| {d}")
            bad += 1
    if pos != got.size:
        print(f"FAIL: {got.size} pixels read, {pos} expected")
        bad += 1
    print(("ok" if not bad else "FAIL") + f": {norm} {lo}..{hi}: {n} slices equal the reference from the sources")
    return 1 if bad else 0


def v1(src, dst):
    s = storelib.Store(src)
    os.makedirs(dst, exist_ok=True)
    env = lmdb.open(dst, max_dbs=8, map_size=1 << 26)
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
    with s.env.begin() as t, env.begin(write=True) as w:
        for name in ("meta", "volumes", "slices", "labels", "sources"):
            sdb = s.env.open_db(name.encode(), txn=t, create=False)
            ddb = env.open_db(name.encode(), txn=w)
            for k, v in t.cursor(db=sdb):
                k, v = bytes(k), bytes(v)
                if name == "meta" and k == b"format":
                    v = json.dumps({"format": "mrisam-store", "version": 1}).encode()
                elif name == "volumes":
                    o = json.loads(v)
                    it = o["intensity"]
                    o["intensity"] = {a: it[a] for a in ("norm", "offset", "scale", "mean", "std") if a in it}
                    v = json.dumps(o).encode()
                elif name == "slices":
                    rec = s.decode(v)
                    px = rec["pixels"].astype("<u2").tobytes()
                    z = cctx.compress(px)
                    hdr = b"MSR1" + struct.pack("<BBH", 1, 0, 0) + struct.pack("<II", rec["h"], rec["w"])
                    hdr += struct.pack("<ff", *rec["spacing"])
                    hdr += struct.pack("<IIII", rec["volume"], rec["index"], storelib.crc32c(px), len(z))
                    v = hdr + struct.pack("<I", storelib.crc32c(hdr)) + z
                w.put(k, v, db=ddb)
    env.close()


def meta(run, norm, lo=None, hi=None):
    pp = json.load(open(f"{run}/best/meta.json"))["preprocess"]
    ok = pp["intensity"] == norm and (lo is None or (pp["p_lo"] == float(lo) and pp["p_hi"] == float(hi)))
    print(("ok" if ok else "FAIL") + f": {run}/best/meta.json preprocess: intensity {pp['intensity']}, "
          f"p {pp['p_lo']}..{pp['p_hi']} (want {norm} {lo or ''} {hi or ''})")
    return 0 if ok else 1


if __name__ == "__main__":
    a = sys.argv[1:]
    if a[0] == "gen":
        gen(a[1], int(a[2]))
        rc = 0
    elif a[0] == "pixels":
        rc = pixels(a[1], a[2], a[3], float(a[4]), float(a[5]))
    elif a[0] == "v1":
        v1(a[1], a[2])
        rc = 0
    else:
        rc = meta(*a[1:])
    sys.exit(rc)
