#!/usr/bin/python3
"""tools/bench/zstd_floor.py STORE [LEVEL] — what zstd alone costs on a store's slices, for the ingest benchmark.

Decodes every slice record of STORE (docs/FORMATS.md: 44-byte header, then a zstd frame of the uint16 pixels), then
times compressing all of them again with python-zstandard (the C zstd that both `mrisam ingest` and
bench_ingest.py call), one frame per slice with the checksum on, as ingest does: plain, byte-shuffled (low bytes,
then high bytes), horizontal differences, and differences + shuffle. Best of 3 each. The plain row is a floor that
both sides of the benchmark pay; the others show whether a filter would help (ingest stores plain frames unless
--shuffle)."""
import struct
import sys
import time

import lmdb
import numpy as np
import zstandard

store = sys.argv[1]
level = int(sys.argv[2]) if len(sys.argv) > 2 else 3
env = lmdb.open(store, readonly=True, lock=False, max_dbs=8)
db = env.open_db(b"slices", create=False)
dec = zstandard.ZstdDecompressor()
slices = []
with env.begin() as txn:
    for _, v in txn.cursor(db):
        if v[5] & 1:
            sys.exit("zstd_floor.py: the store has shuffled records; ingest it without --shuffle")
        h, w = struct.unpack("<II", v[8:16])
        slices.append(np.frombuffer(dec.decompress(bytes(v[44:])), dtype=np.uint16).reshape(h, w))


def planes(a):
    return np.concatenate([(a & 255).astype(np.uint8).ravel(), (a >> 8).astype(np.uint8).ravel()])


def hdiff(a):
    return np.diff(a.astype(np.int32), axis=1, prepend=0).astype(np.uint16)


filters = [("plain", lambda a: a), ("shuffle", planes), ("horizontal differences", hdiff),
           ("differences + shuffle", lambda a: planes(hdiff(a)))]
raw = sum(a.nbytes for a in slices)
print(f"{len(slices)} slices, {raw / 1e6:.1f} MB of uint16 pixels, zstd {zstandard.ZSTD_VERSION} level {level}")
for name, f in filters:
    bufs = [np.ascontiguousarray(f(a)).tobytes() for a in slices]
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    best, out = 1e9, 0
    for _ in range(3):
        t0 = time.perf_counter()
        out = sum(len(cctx.compress(b)) for b in bufs)
        best = min(best, time.perf_counter() - t0)
    print(f"zstd {name:24s} {best:6.3f} s  {out / 1e6:6.1f} MB  ratio {raw / out:.2f}")
