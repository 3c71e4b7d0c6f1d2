"""tests/data/storelib.py — an independent reader of the mrisam slice store (python-lmdb + zstandard + numpy),
written from docs/FORMATS.md, and the reference normalisation/reorientation (nibabel) the tests compare against."""
import json
import os
import struct
import zlib

import lmdb
import numpy as np
import zstandard

HDR = 44


def crc32c(data):
    # bitwise CRC-32C: slow but independent of the C implementation (used on small slices only)
    crc = 0xFFFFFFFF
    tbl = crc32c.tbl
    for b in data:
        crc = (crc >> 8) ^ tbl[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


def _tbl():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        t.append(c)
    return t


crc32c.tbl = _tbl()


class Store:
    def __init__(self, path):
        self.env = lmdb.open(path, readonly=True, lock=False, max_dbs=8, subdir=True)
        self.meta = self.env.open_db(b"meta", create=False)
        self.vols = self.env.open_db(b"volumes", create=False)
        self.slices = self.env.open_db(b"slices", create=False)
        self.labels = self.env.open_db(b"labels", create=False)
        self.sources = self.env.open_db(b"sources", create=False)
        self.dctx = zstandard.ZstdDecompressor()

    def meta_json(self, name):
        with self.env.begin() as t:
            v = t.get(name.encode(), db=self.meta)
            return json.loads(bytes(v)) if v is not None else None

    def volumes(self):
        out = []
        with self.env.begin() as t:
            for k, v in t.cursor(db=self.vols):
                out.append(json.loads(bytes(v)))
        return out

    def keys(self, db):
        with self.env.begin() as t:
            return [struct.unpack(">Q", bytes(k))[0] for k, _ in t.cursor(db=db)]

    def raw(self, key, label=False):
        with self.env.begin() as t:
            v = t.get(struct.pack(">Q", key), db=self.labels if label else self.slices)
            return None if v is None else bytes(v)

    def decode(self, rec, check_crc=True):
        assert rec[:4] == b"MSR1", "magic"
        dtype, flags = rec[4], rec[5]
        h, w = struct.unpack("<II", rec[8:16])
        sr, sc = struct.unpack("<ff", rec[16:24])
        vid, sidx, crc, zlen, hcrc = struct.unpack("<IIIII", rec[24:44])
        assert zlen == len(rec) - HDR, "zlen"
        if check_crc:
            assert crc32c(rec[:40]) == hcrc, "header crc"
        raw = self.dctx.decompress(rec[HDR:], max_output_size=h * w * 2)
        if dtype in (1, 3):
            if flags & 1:
                b = np.frombuffer(raw, np.uint8)
                px = (b[: h * w].astype(np.uint16) | (b[h * w:].astype(np.uint16) << 8))
            else:
                px = np.frombuffer(raw, "<u2").astype(np.uint16)
        else:
            px = np.frombuffer(raw, np.uint8).astype(np.uint16)
        if check_crc:
            payload = px.astype("<u2").tobytes() if dtype != 2 else px.astype(np.uint8).tobytes()
            assert crc32c(payload) == crc, "pixel crc"
        stored = None
        if flags & 2:  # layout 2: stored values, normalised with the volume's window (docs/FORMATS.md)
            stored = px.view(np.int16) if dtype == 3 else px
            woff, wsc = self.volume(vid)["intensity"]["window"]
            t = np.clip((stored.astype(np.float64) - woff) / wsc, 0, 1)
            px = np.floor(t * 65535 + 0.5).astype(np.uint16)
            stored = stored.reshape(h, w)
        return dict(h=h, w=w, spacing=(sr, sc), volume=vid, index=sidx, dtype=dtype,
                    pixels=px.reshape(h, w), stored=stored)

    def volume(self, vid):
        if not hasattr(self, "_vols"):
            self._vols = {v["id"]: v for v in self.volumes()}
        return self._vols[vid]


def write_png(path, a):
    """Gray PNG (filter 0): 8-bit for uint8 arrays, 16-bit for uint16; the folder is made when missing."""
    h, w = a.shape
    bd = 16 if a.dtype == np.uint16 else 8
    raw = b"".join(b"\0" + (a[r].astype(">u2").tobytes() if bd == 16 else a[r].tobytes()) for r in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bd, 0, 0, 0, 0)) +
                chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def read_png(path):
    """Gray PNG as written by gen_synth.py and fsam_lists.py (filter 0, 8 or 16 bits), as int64 samples."""
    b = open(path, "rb").read()
    pos, idat, w, h, bd = 8, b"", 0, 0, 8
    while pos < len(b):
        n = struct.unpack(">I", b[pos:pos + 4])[0]
        t, d = b[pos + 4:pos + 8], b[pos + 8:pos + 8 + n]
        if t == b"IHDR":
            w, h, bd = struct.unpack(">IIB", d[:9])
        elif t == b"IDAT":
            idat += d
        pos += 12 + n
    raw = zlib.decompress(idat)
    bpp = 2 if bd == 16 else 1
    rows = [raw[r * (1 + w * bpp) + 1:(r + 1) * (1 + w * bpp)] for r in range(h)]
    return np.array([np.frombuffer(r, ">u2" if bpp == 2 else np.uint8) for r in rows]).astype(np.int64)


def canonical(img):
    """nibabel's closest-canonical (RAS+) data as float32 after scaling, NaN/Inf -> 0, like the documented ingest."""
    import nibabel as nib
    hdr = img.header
    sc, qc = int(hdr["sform_code"]), int(hdr["qform_code"])
    if sc == 0 and qc == 0:
        data = np.asanyarray(img.dataobj)  # documented rule: no usable affine -> stored axes taken as RAS
    else:
        img = nib.as_closest_canonical(img)
        data = np.asanyarray(img.dataobj)
    data = data.astype(np.float64)
    data = data.astype(np.float32)
    data[~np.isfinite(data)] = 0
    return data


def normalise(v, norm="percentile", p=(0.5, 99.5)):
    v64 = v.astype(np.float64)
    nz = v64[v64 != 0]
    if norm == "percentile":
        if nz.size == 0:
            lo, sc = 0.0, 1.0
        else:
            lo, hi = np.percentile(nz, p)
            sc = hi - lo
    else:
        lo, sc = v64.min(), v64.max() - v64.min()
    if not sc > 0:
        sc = 1.0
    t = np.clip((v64 - lo) / sc, 0, 1)
    return np.floor(t * 65535 + 0.5).astype(np.uint16), lo, sc


def encode(v):
    """Layout 2's stored values of canonical float data (docs/FORMATS.md): integers in -32768..65535 as they are,
    else quantised with slope max|v|/32767 (int16, some value negative) or max/65535 (uint16). Returns the stored
    values as int64 and the slope."""
    v64 = v.astype(np.float64)
    mn, mx = min(float(v64.min()), 0.0), max(float(v64.max()), 0.0)
    if np.all(v64 == np.floor(v64)) and mn >= -32768 and mx <= 65535 and (mn >= 0 or mx <= 32767):
        return v64.astype(np.int64), 1.0
    slope = (mx / 65535 if mx > 0 else 1.0) if mn >= 0 else max(-mn, mx) / 32767
    return np.floor(v64 / slope + 0.5).astype(np.int64), slope


def cut(vol, axis, k):
    return vol[k, :, :] if axis == 0 else vol[:, k, :] if axis == 1 else vol[:, :, k]


AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def resample_nn(lab, ref):
    """A label image on ref's grid as `ingest --label-resample` documents it, computed in the files' own stored voxel
    frames: ref voxel → world (ref.affine) → label voxel (inverse of lab.affine), rounded as floor(x + 0.5), outside →
    0. nibabel's affine is the sform when sform_code > 0, else the qform: the rule ingest uses for usable affines.
    Returns (a Nifti1Image with ref's header, voxels outside); lab itself, None when the grids agree."""
    import nibabel as nib
    tol = 1e-3 * max(1.0, float(np.sqrt((ref.affine[:3, :3] ** 2).sum(0)).max()))
    if lab.shape[:3] == ref.shape[:3] and np.abs(lab.affine[:3] - ref.affine[:3]).max() <= tol:
        return lab, None
    t = np.linalg.inv(lab.affine) @ ref.affine
    ax = [np.arange(n, dtype=np.float64).reshape([-1 if k == i else 1 for k in range(3)])
          for i, n in enumerate(ref.shape[:3])]
    q = [np.floor(t[i, 0] * ax[0] + t[i, 1] * ax[1] + t[i, 2] * ax[2] + (t[i, 3] + 0.5)).astype(np.int64)
         for i in range(3)]
    inside = np.ones(ref.shape[:3], bool)
    for i in range(3):
        inside &= (q[i] >= 0) & (q[i] < lab.shape[i])
    src = np.asanyarray(lab.dataobj)
    out = np.zeros(ref.shape[:3], src.dtype)
    out[inside] = src[q[0][inside], q[1][inside], q[2][inside]]
    return nib.Nifti1Image(out, ref.affine, ref.header), int((~inside).sum())
