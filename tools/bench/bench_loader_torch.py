#!/usr/bin/python3
"""tools/bench/bench_loader_torch.py — the PyTorch side of `mrisam bench loader` (run with /usr/bin/python3).

A torch.utils.data.DataLoader (num_workers=2 by default, shuffled, batch B) over the same store, read with
python3-lmdb + zstandard + numpy, with the same transforms as the C loader:
  decode   LMDB get + zstd decode + byte-plane unshuffle → the uint16 slice (as int16 tensor)
  aug256   decode, /65535, RandomResizedCrop(scale 0.4-1, ratio 3/4-4/3, torchvision's get_params) resized to
           256x256 (bilinear, antialias=True), horizontal flip p=0.5, ×255, 3 channels, SAM mean/std
  aug1024  the same to 1024x1024
Store format: docs/FORMATS.md (LMDB named databases; slice keys 8-byte big-endian; record = 44-byte header +
zstd frame; flags bit 0 = low-byte plane first). The crc32c of the pixels is NOT verified here (ours verifies it).
Prints one JSON line per mode: {"impl":"torch","mode":..,"workers":..,"slices_per_s":..,"ttfb_s":..}.
"""
import argparse
import json
import math
import random
import resource
import struct
import time

import lmdb
import numpy as np
import torch
import torch.nn.functional as F
import zstandard

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


class SliceDataset(torch.utils.data.Dataset):
    def __init__(self, path, mode):
        self.path, self.mode = path, mode
        self.env = None  # opened in each worker (LMDB environments must not cross fork())
        env = lmdb.open(path, readonly=True, lock=False, max_dbs=8, subdir=True)
        meta = env.open_db(b"meta", create=False)
        with env.begin() as txn:
            self.n = json.loads(txn.get(b"counts", db=meta))["slices"]
        env.close()

    def __len__(self):
        return self.n

    def _open(self):
        self.env = lmdb.open(self.path, readonly=True, lock=False, max_dbs=8, subdir=True, readahead=False)
        self.db = self.env.open_db(b"slices", create=False)
        self.vdb = self.env.open_db(b"volumes", create=False)
        self.dctx = zstandard.ZstdDecompressor()
        self.windows = {}

    def decode(self, key):
        if self.env is None:
            self._open()
        with self.env.begin(buffers=True) as txn:
            rec = bytes(txn.get(struct.pack(">Q", key), db=self.db))
        if rec[:4] != b"MSR1":
            raise ValueError("bad record %d" % key)
        dtype, flags = rec[4], rec[5]
        h, w = struct.unpack_from("<II", rec, 8)
        raw = self.dctx.decompress(rec[44:])
        n = h * w
        if dtype == 2:
            px = np.frombuffer(raw, np.uint8).astype(np.uint16)
        elif flags & 1:
            b = np.frombuffer(raw, np.uint8)
            px = b[:n].astype(np.uint16) | (b[n:].astype(np.uint16) << 8)
        else:
            px = np.frombuffer(raw, "<u2")
        if flags & 2:  # layout 2: stored values, normalised with the volume's window (docs/FORMATS.md), as ours does
            vid = struct.unpack_from("<I", rec, 24)[0]
            if vid not in self.windows:
                with self.env.begin() as txn:
                    v = json.loads(bytes(txn.get(struct.pack(">I", vid), db=self.vdb)))
                self.windows[vid] = v["intensity"]["window"]
            off, sc = self.windows[vid]
            s = px.view(np.int16) if dtype == 3 else px
            t = np.clip((s.astype(np.float64) - off) / sc, 0, 1)
            px = np.floor(t * 65535 + 0.5).astype(np.uint16)
        return px.reshape(h, w)

    def __getitem__(self, i):
        px = self.decode(i)
        if self.mode == "decode":
            return torch.from_numpy(px.view(np.int16).copy())
        size = 256 if self.mode == "aug256" else 1024
        x = torch.from_numpy(px.astype(np.float32) * (1.0 / 65535.0))
        t, l, ch, cw = rrc_params(x.shape[0], x.shape[1], (0.4, 1.0), (3 / 4, 4 / 3))
        x = x[t:t + ch, l:l + cw][None, None]
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        if random.random() < 0.5:
            x = torch.flip(x, dims=[-1])
        return (x * 255.0).expand(3, size, size).sub(MEAN).div(STD)


def rrc_params(height, width, scale, ratio):
    """torchvision.transforms.RandomResizedCrop.get_params."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * random.uniform(scale[0], scale[1])
        aspect = math.exp(random.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def worker_init(_):
    torch.set_num_threads(1)  # one core per worker, as the C workers


def cpu_children_and_self():
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def bench(store, mode, batch, seconds, workers):
    ds = SliceDataset(store, mode)
    c0 = cpu_children_and_self()
    t0 = time.perf_counter()
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                     worker_init_fn=worker_init, persistent_workers=False, prefetch_factor=2)
    it = iter(dl)
    next(it)
    ttfb = time.perf_counter() - t0
    for _ in range(2):  # warm-up
        next(it)
    n, t1 = 0, time.perf_counter()
    while True:
        try:
            b = next(it)
        except StopIteration:
            it = iter(dl)
            continue
        n += b.shape[0]
        el = time.perf_counter() - t1
        if el >= seconds and n >= 4 * batch:
            break
    del it, dl  # workers exit and are joined, so their CPU time lands in RUSAGE_CHILDREN
    # CPU seconds over the loader's whole life (start-up, warm-up, timed part, and the batches prefetched at the
    # end) per slice counted generously: every batch that may have been produced
    produced = n + batch * (3 + workers * 2)
    cpu = cpu_children_and_self() - c0
    return {"impl": "torch", "mode": mode, "workers": workers, "batch": batch, "slices_per_s": n / el,
            "slices_per_cpu_s": produced / cpu if cpu > 0 else 0, "ttfb_s": ttfb, "torch": torch.__version__}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--modes", default="decode,aug256,aug1024")
    a = ap.parse_args()
    torch.set_num_threads(1)
    for m in a.modes.split(","):
        print(json.dumps(bench(a.store, m, a.batch, a.seconds, a.workers)), flush=True)


if __name__ == "__main__":
    main()
