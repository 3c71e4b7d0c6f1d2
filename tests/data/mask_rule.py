"""tests/data/mask_rule.py — random PNG masks for the store's value→class rule (docs/CLI.md, Class ids), and checks.

  gen DIR SEED            DIR/pair.csv: a 0/255 mask and a 0/254/255 mask; DIR/bin.csv: these two, an anti-aliased
                          one (0 and 128..255) and a 16-bit one (0, 65535 and 32768..65534), in a drawn order;
                          DIR/ids.csv: masks of small class ids 0..K. DIR/expect.json: n254 (the 254 pixels of
                          pair.csv) and between (the pixels neither 0 nor the depth's maximum over bin.csv's masks).
  labels STORE MODE       every label of the store (made with --keep-paths) against its PNG read here: MODE binary
                          (nonzero → 1), ids (as is) or gt:T (value > T → 1).
  counts STORE INSPECT    the "classes" lines of `mrisam inspect` output (file INSPECT) against the pixel counts of
                          the store's labels decoded here.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from storelib import Store, read_png, write_png  # noqa: E402


def gen(d, seed):
    rng = np.random.default_rng(seed)
    os.makedirs(d, exist_ok=True)
    between = 0

    def pair(name, mk):
        h, w = mk.shape
        write_png(os.path.join(d, f"im_{name}.png"), rng.integers(1, 255, size=(h, w)).astype(np.uint8))
        write_png(os.path.join(d, f"mk_{name}.png"), mk)
        return f"im_{name}.png,mk_{name}.png\n"

    def shape():
        return int(rng.integers(16, 40)), int(rng.integers(16, 40))
    bin_rows, ids_rows = [], []
    m = (rng.random(shape()) < 0.3).astype(np.uint8) * 255
    bin_rows.append(pair("b255", m))
    m = (rng.random(shape()) < 0.3).astype(np.uint8) * 255
    m[rng.random(m.shape) < 0.1] = 254
    m.flat[0] = 254
    between += int((m == 254).sum())
    bin_rows.append(pair("b254", m))
    n254 = int((m == 254).sum())
    s = shape()
    m = np.where(rng.random(s) < 0.4, rng.integers(128, 256, size=s), 0).astype(np.uint8)
    between += int(((m > 0) & (m < 255)).sum())
    bin_rows.append(pair("baa", m))
    m = np.where(rng.random(shape()) < 0.4, 65535, 0).astype(np.uint16)
    m[rng.random(m.shape) < 0.05] = int(rng.integers(32768, 65535))
    between += int(((m > 0) & (m < 65535)).sum())
    bin_rows.append(pair("b16", m))
    for i in range(2):
        k = int(rng.integers(2, 6))
        m = rng.integers(0, k + 1, size=shape()).astype(np.uint8)
        m.flat[0] = 1
        ids_rows.append(pair(f"ids{i}", m))
    order = rng.permutation(len(bin_rows))
    open(os.path.join(d, "bin.csv"), "w").write("".join(bin_rows[i] for i in order))
    open(os.path.join(d, "ids.csv"), "w").write("".join(ids_rows))
    open(os.path.join(d, "pair.csv"), "w").write("".join(bin_rows[:2]))
    json.dump({"between": between, "n254": n254}, open(os.path.join(d, "expect.json"), "w"))


def stored_labels(store):
    st = Store(store)
    for v in st.volumes():
        yield v, st.decode(st.raw(v["first_key"], label=True))["pixels"].astype(np.int64)


def labels(store, mode):
    n = 0
    for v, got in stored_labels(store):
        m = read_png(v["label_path"])
        want = (m > 0).astype(np.int64) if mode == "binary" else m if mode == "ids" else \
            (m > float(mode[3:])).astype(np.int64)
        if not np.array_equal(got, want):
            raise SystemExit(f"{v['label_path']}: stored values {sorted(set(got.flat))}, "
                             f"expected {sorted(set(want.flat))} ({mode})")
        n += 1
    print(f"{n} labels as expected ({mode})")


def counts(store, inspect_out):
    want = {}
    for _, got in stored_labels(store):
        for c, k in zip(*np.unique(got, return_counts=True)):
            want[int(c)] = want.get(int(c), 0) + int(k)
    lines = open(inspect_out).read().splitlines()
    i = next(i for i, x in enumerate(lines) if x.startswith("classes "))
    if int(lines[i].split()[1]) != len(want):
        raise SystemExit(f"inspect: {lines[i]}; expected {len(want)} classes")
    got = {int(x.split()[0]): int(x.split()[1]) for x in lines[i + 1:i + 1 + len(want)]}
    if got != want:
        raise SystemExit(f"inspect counts {got}, expected {want}")
    print(f"inspect: classes {want}")


if __name__ == "__main__":
    {"gen": lambda: gen(sys.argv[2], int(sys.argv[3])), "labels": lambda: labels(sys.argv[2], sys.argv[3]),
     "counts": lambda: counts(sys.argv[2], sys.argv[3])}[sys.argv[1]]()
