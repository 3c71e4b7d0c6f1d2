"""tests/data/fsam_lists.py — data in finetune-SAM's shape, and checks of what ingest made of it.

  gen ROOT SEED         ROOT/ds/images/pN/*.png and ROOT/ds/masks/*.png, lists ROOT/ds/train.csv and ROOT/ds/val.csv
                        the way finetune-SAM ships them (README and datasets/MRI-Prostate/*.csv of
                        mazurowski-lab/finetune-SAM): "image,/mask" rows relative to the image root (-img_folder),
                        mask paths with a leading "/", comma or tab separated (drawn), CRLF or LF, a header or not;
                        some masks empty, one train row repeated. Writes ROOT/expect.json: per list, the image paths
                        (joined to ROOT) of the rows finetune-SAM keeps (mask not empty), in list order, each once.
  check STORE ROOT      the store (made with --keep-paths) holds one slice per row, and STORE/split.json's train / val
                        ranges are exactly the keys of expect.json's rows, in list order.
  same A.json B.json    two split files select the same train and val keys (RUN/shots.json against split.json).
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from storelib import Store, write_png  # noqa: E402


def gen(root, seed):
    rng = np.random.default_rng(seed)
    sep = "\t" if rng.integers(2) else ","
    eol = "\r\n" if rng.integers(2) else "\n"
    header = bool(rng.integers(2))
    n_tr, n_va = int(rng.integers(4, 9)), int(rng.integers(3, 7))
    rows, expect = [], {"train": [], "val": []}
    for i in range(n_tr + n_va):
        h, w = int(rng.integers(24, 48)), int(rng.integers(24, 48))
        img = rng.integers(1, 255, size=(h, w)).astype(np.uint8)
        mk = np.zeros((h, w), np.uint8)
        empty = i in (1, n_tr + 1)  # one empty mask in each list
        if not empty:
            r0, c0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            mk[r0:r0 + int(rng.integers(2, h // 2)), c0:c0 + int(rng.integers(2, w // 2))] = 255
        im_rel = f"ds/images/p{i}/study{i}/s{i}_{int(rng.integers(1000))}.png"
        mk_rel = f"ds/masks/s{i}.png"
        write_png(os.path.join(root, im_rel), img)
        write_png(os.path.join(root, mk_rel), mk)
        rows.append((im_rel, "/" + mk_rel))
        if not empty:
            expect["train" if i < n_tr else "val"].append(os.path.join(root, im_rel))
    tr, va = rows[:n_tr], rows[n_tr:]
    tr = tr + [tr[2]]  # a repeated row: taken once
    for name, rr in (("train", tr), ("val", va)):
        with open(os.path.join(root, "ds", name + ".csv"), "w", newline="") as f:
            if header:
                f.write(f"image{sep}mask{eol}")
            for a, b in rr:
                f.write(f"{a}{sep}{b}{eol}")
    with open(os.path.join(root, "expect.json"), "w") as f:
        json.dump(expect, f)
    print(f"lists: sep {'tab' if sep == chr(9) else 'comma'}, {'CRLF' if eol == chr(13) + chr(10) else 'LF'}, "
          f"header {header}, {n_tr} train + 1 repeat, {n_va} val rows")


def keys(ranges):
    out = []
    for first, count in ranges:
        out += range(first, first + count)
    return out


def check(store, root):
    st = Store(store)
    expect = json.load(open(os.path.join(root, "expect.json")))
    by_path = {}
    for v in st.volumes():
        if v["n_slices"] != 1 or v["kind"] != "png":
            raise SystemExit(f"volume {v['id']}: {v['n_slices']} slices, kind {v['kind']}")
        by_path[os.path.normpath(v["path"])] = v["first_key"]
    split = json.load(open(os.path.join(store, "split.json")))
    if split["version"] != 1 or len(split["stores"]) != 1:
        raise SystemExit("split.json: not one store of version 1")
    s = split["stores"][0]
    for part in ("train", "val"):
        want = [by_path[os.path.normpath(p)] for p in expect[part]]
        got = keys(s[part])
        if got != want:
            raise SystemExit(f"split {part}: keys {got}, expected {want}")
    print(f"split: train {len(keys(s['train']))}, val {len(keys(s['val']))} keys as listed")


def same(a, b):
    sa, sb = json.load(open(a))["stores"][0], json.load(open(b))["stores"][0]
    for part in ("train", "val"):
        if keys(sa[part]) != keys(sb[part]):
            raise SystemExit(f"{part}: {keys(sa[part])} in {a}, {keys(sb[part])} in {b}")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "gen":
        gen(sys.argv[2], int(sys.argv[3]))
    elif cmd == "check":
        check(sys.argv[2], sys.argv[3])
    else:
        same(sys.argv[2], sys.argv[3])
