#!/usr/bin/python3
"""tools/bench/bench_ingest.py [--zstd-level N] STORE FILE... — the Python baseline of `mrisam ingest` for the
benchmark: the same work, vectorised with numpy, single process: SHA-256 of the file, nibabel load (+ closest-canonical
reorientation), float32 with NaN/Inf -> 0, percentiles 0.5/99.5 of the nonzero voxels (np.percentile, introselect),
uint16 scaling, slices along the lowest-resolution axis, near-empty slices skipped, zstd (level 3 unless --zstd-level,
as ingest) with checksum (no shuffle, as ingest), a 44-byte record header with a crc of the pixels (zlib.crc32
stands in for crc32c: Python has no fast crc32c), LMDB with one transaction per volume. Prints "slices N seconds S"."""
import hashlib
import json
import struct
import sys
import time
import zlib

import lmdb
import nibabel as nib
import numpy as np
import zstandard

t0 = time.perf_counter()
args = sys.argv[1:]
level = 3
if args[:1] == ["--zstd-level"]:
    level, args = int(args[1]), args[2:]
store, files = args[0], args[1:]
env = lmdb.open(store, map_size=1 << 34, max_dbs=8, sync=False)
dbs = {n: env.open_db(n.encode()) for n in ("meta", "volumes", "slices", "labels", "sources")}
cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
key = 0
for vid, path in enumerate(files):
    h = hashlib.sha256(open(path, "rb").read()).hexdigest()
    img = nib.as_closest_canonical(nib.load(path))
    v = np.asarray(img.dataobj, dtype=np.float32)
    v[~np.isfinite(v)] = 0
    if v.ndim == 4:
        v = v[..., 0]
    nz = v[v != 0]
    lo, hi = np.percentile(nz, (0.5, 99.5)) if nz.size else (0.0, 1.0)
    sc = hi - lo if hi > lo else 1.0
    u = (np.clip((v - lo) * (65535.0 / sc), 0, 65535) + 0.5).astype(np.uint16)
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
    axis = 2 if zooms[2] >= zooms.max() * (1 - 1e-3) else 1 if zooms[1] >= zooms.max() * (1 - 1e-3) else 0
    sl = np.moveaxis(u, axis, 0)  # (K, H, W)
    fg = (sl > 0).reshape(sl.shape[0], -1).mean(1)
    n = 0
    with env.begin(write=True) as txn:
        for k in np.nonzero(fg >= 0.01)[0]:
            s = np.ascontiguousarray(sl[k])
            z = cctx.compress(s.tobytes())
            hdr = struct.pack("<4sBBHIIffIIII", b"MSR1", 1, 0, 0, s.shape[0], s.shape[1], 1.0, 1.0, vid, int(k),
                              zlib.crc32(s.tobytes()), len(z))
            txn.put(struct.pack(">Q", key), hdr + struct.pack("<I", zlib.crc32(hdr)) + z, db=dbs["slices"], append=True)
            key += 1
            n += 1
        txn.put(struct.pack(">I", vid), json.dumps({"id": vid, "n_slices": n, "source_hash": h}).encode(), db=dbs["volumes"])
        txn.put(h.encode(), b"{}", db=dbs["sources"])
env.sync(True)
env.close()
print(f"slices {key} seconds {time.perf_counter() - t0:.3f}")
