#!/usr/bin/python3
"""tests/gen_fuzz_corpus.py — writes the seed corpora of the libFuzzer targets (tests/<area>/fuzz_corpus/<target>/):
a handful of small valid inputs each, made from the checkpoint fixtures and from scratch (numpy, nibabel,
zstandard; /usr/bin/python3). Seeds whose target reads a selector byte first carry it. Deterministic. Files named
regress_* are inputs a target once failed on; they are kept across runs of this script (it rewrites the rest).
Run from anywhere: /usr/bin/python3 tests/gen_fuzz_corpus.py"""
import gzip
import io
import json
import os
import pickletools
import shutil
import struct
import zipfile
import zlib

import nibabel as nib
import numpy as np
import zstandard

TESTS = os.path.dirname(os.path.abspath(__file__))


def out_dir(area, target):
    d = os.path.join(TESTS, area, "fuzz_corpus", target)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if not f.startswith("regress_"):
            os.remove(os.path.join(d, f))
    return d


def put(d, name, data):
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# ---- NIfTI ---------------------------------------------------------------------------------------------------

def nifti_bytes(cls, shape, dtype, seed, slope=None, swap=False, qform=True):
    rng = np.random.default_rng(seed)
    arr = (rng.random(shape) * 100).astype(dtype)
    aff = np.diag([1.5, 1.0, 2.0, 1.0])
    aff[:3, 3] = [-10, 5, 3]
    img = cls(arr, aff)
    if slope is not None:
        img.header.set_slope_inter(slope, 1.0)
    if not qform:
        img.set_qform(None, code=0)
    buf = io.BytesIO()
    img.to_file_map({"image": nib.FileHolder(fileobj=buf), "header": nib.FileHolder(fileobj=buf)})
    data = buf.getvalue()
    if swap:  # the same image in the other byte order
        h = img.header.as_byteswapped()
        off = int(h["vox_offset"])
        data = h.binaryblock + data[len(h.binaryblock):off] + arr.astype(arr.dtype.newbyteorder()).tobytes("F")
    return data


def gen_nifti():
    d = out_dir("data", "fuzz_nifti_header")
    for i, (cls, shape, dt) in enumerate([(nib.Nifti1Header, (4, 5, 6), np.int16),
                                          (nib.Nifti2Header, (7, 3, 2, 4), np.float32),
                                          (nib.Nifti1Header, (9,), np.uint8), (nib.Nifti1Header, (3, 3, 3), np.float64)]):
        h = cls()
        h.set_data_shape(shape)
        h.set_data_dtype(dt)
        if i == 3:
            h["magic"] = b"ni1"  # the header of an .hdr/.img pair
        put(d, f"h{i}", h.binaryblock + b"\0" * 4)
        put(d, f"s{i}", h.as_byteswapped().binaryblock + b"\0" * 4)
    d = out_dir("data", "fuzz_nifti_gz")
    files = [nifti_bytes(nib.Nifti1Image, (4, 5, 6), np.int16, 1),
             nifti_bytes(nib.Nifti1Image, (3, 3, 3), np.uint8, 2, qform=False),
             nifti_bytes(nib.Nifti2Image, (3, 4, 2, 2), np.float32, 3),
             nifti_bytes(nib.Nifti1Image, (5, 4, 3), np.int16, 4, slope=2.0),
             nifti_bytes(nib.Nifti1Image, (2, 3, 4), np.int16, 5, swap=True)]
    for i, f in enumerate(files):
        put(d, f"gz{i}", b"\0" + gzip.compress(f, 9, mtime=0))
        put(d, f"raw{i}", b"\1" + f)
    put(d, "gz_two_members", b"\0" + gzip.compress(files[0][:200], mtime=0) + gzip.compress(files[0][200:], mtime=0))


# ---- checkpoints ---------------------------------------------------------------------------------------------

def pickles(data):
    """(start, end) of each pickle in a byte string of consecutive pickles."""
    out, pos = [], 0
    while pos < len(data):
        f = io.BytesIO(data[pos:])
        try:
            for op, _, at in pickletools.genops(f):
                if op.name == "STOP":
                    break
        except Exception:
            break
        out.append((pos, pos + f.tell()))
        pos += f.tell()
    return out


def safetensors(tensors, meta=None):
    hdr, blob = {}, b""
    if meta:
        hdr["__metadata__"] = meta
    for name, (dt, shape, raw) in tensors.items():
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    js = json.dumps(hdr, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)
    return struct.pack("<Q", len(js)) + js + blob


def gen_ckpt():
    fx = os.path.join(TESTS, "checkpoints", "fixtures")
    d = out_dir("checkpoints", "fuzz_ckpt")
    for name in ["small.pth", "legacy.pth", "dtypes.pth", "expanded.pth", "proto4.pth", "torch2.pth", "wrapped.pth"]:
        raw = open(os.path.join(fx, name), "rb").read()
        put(d, "sd_" + name, b"\2" + raw)
        if raw[:2] == b"PK":  # the zip's data.pkl for the pickle machine
            with zipfile.ZipFile(io.BytesIO(raw)) as z:
                pkl = [n for n in z.namelist() if n.endswith("data.pkl")][0]
                put(d, "pkl_" + name, b"\0" + z.read(pkl))
        else:  # legacy: magic, protocol, sys_info, then the state dict's pickle
            p = pickles(raw)
            if len(p) >= 4:
                put(d, "pkl_" + name, b"\1" + raw[p[3][0]:p[3][1]])
    put(d, "st_small", b"\3" + safetensors({"w": ("F32", [2, 3], np.arange(6, dtype="<f4").tobytes()),
                                            "b": ("F16", [3], np.ones(3, "<f2").tobytes())}, {"format": "pt"}))
    put(d, "st_dtypes", b"\3" + safetensors({"i": ("I64", [2], np.arange(2, dtype="<i8").tobytes()),
                                             "u": ("U8", [4], bytes(range(4))), "h": ("BF16", [1], b"\x80\x3f"),
                                             "e": ("F32", [0], b"")}))
    d = out_dir("checkpoints", "fuzz_run_json")
    put(d, "config.json", json.dumps({"model": "vit_test", "ckpt": "", "seed": 7, "stores": ["/data/store"],
                                      "mask_ratio": 0.75, "steps": 100, "batch": 4, "lr": 1.5e-4,
                                      "decoder": {"depth": 2, "dim": 64}}, indent=2))
    put(d, "state.json", json.dumps({"step": 40, "adam_step": 40, "skipped": 0, "samples": 160, "best_epoch": 1.5,
                                     "best_step": 30, "stopped_early": 0, "n_tasks": 1,
                                     "best_score_bits": "3fe8000000000000"}))
    put(d, "escapes.json", '{"a":"\\u00e9\\ud83d\\ude00\\n","b":[1e308,-0.0,true,null,{}]}')


# ---- store ---------------------------------------------------------------------------------------------------

def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def record(px, u8=False, shuffle=True, vid=0, idx=0, i16=False):
    """i16: a layout-2 record of int16 stored values (dtype 3, flag bit 1)."""
    h, w = px.shape
    if u8:
        raw = px.astype(np.uint8).tobytes()
        dtype, flags = 2, 0
    else:
        le = px.astype("<i2").view("<u2") if i16 else px.astype("<u2")
        raw = le.view(np.uint8).reshape(-1, 2).T.tobytes() if shuffle else le.tobytes()
        dtype, flags = (3, 2) if i16 else (1, 0)
        flags |= 1 if shuffle else 0
        px = le
    z = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True).compress(raw)
    crc = crc32c(px.astype(np.uint8 if u8 else "<u2").tobytes())
    hdr = b"MSR1" + struct.pack("<BBHIIffIIII", dtype, flags, 0, h, w, 1.0, 1.5, vid, idx, crc, len(z))
    return hdr + struct.pack("<I", crc32c(hdr)) + z


def gen_store():
    rng = np.random.default_rng(5)
    d = out_dir("data", "fuzz_store_record")
    put(d, "u16_shuffled", b"\3" + record(rng.integers(0, 65536, (6, 5))))
    put(d, "u16_plain", b"\3" + record(rng.integers(0, 4000, (3, 7)), shuffle=False))
    put(d, "u8_label", b"\3" + record(rng.integers(0, 3, (8, 8)), u8=True))
    put(d, "u16_flat", b"\3" + record(np.full((16, 16), 1234)))
    put(d, "i16_stored", b"\3" + record(rng.integers(-300, 3000, (9, 6)), i16=True))
    # fuzz_store_open damages stores it writes itself: store byte, cut length (0xffffffff: none), 3-byte patches
    d = out_dir("data", "fuzz_store_open")
    put(d, "intact0", b"\0\xff\xff\xff\xff")
    put(d, "intact1", b"\1\xff\xff\xff\xff")
    put(d, "cut_8192", b"\0" + struct.pack("<I", 8192))
    put(d, "cut_odd", b"\1" + struct.pack("<I", 20000))
    put(d, "flip_record", b"\0\xff\xff\xff\xff" + struct.pack("<HB", 600, 0x10))
    put(d, "regress_size_past_eof", b"\0\xff\xff\xff\xff\x02\x00\x7f")  # a node's size high byte: SIGBUS before


# ---- JSON and text lists -------------------------------------------------------------------------------------

def gen_text():
    d = out_dir("data", "fuzz_split")
    split = {"version": 1, "seed": 7, "shots": 0, "shot_unit": "slice", "single_volume": 0,
             "stores": [{"path": "/data/store", "train": [[0, 100], [200, 50]], "val": [[100, 20]]},
                        {"path": "/data/other", "train": [[0, 10]], "val": []}]}
    put(d, "two_stores", b"\6" + json.dumps(split).encode())
    put(d, "index1", b"\1" + json.dumps(split).encode())
    split1 = {"version": 1, "seed": 1, "shots": 4, "shot_unit": "volume", "single_volume": 1,
              "stores": [{"path": "store", "train": [[8, 30]], "val": [[46, 10]]}]}
    put(d, "shots_single", b"\4" + json.dumps(split1, indent=1).encode())
    d = out_dir("finetune", "fuzz_ft_meta")
    meta = {"format": "mrisam-finetune", "version": 1, "model": "vit_test", "method": "lora", "scope": "decoder",
            "prompt": "box", "lora_rank": 4, "lora_blocks": [0, 1], "adapter_blocks": [], "adapter_scale": 0.5,
            "compat_finetune_sam": 0,
            "tasks": [{"name": "liver", "num_cls": 3, "values": [0, 1, 2], "class_names": ["bg", "liver", "tumour"]}],
            "preprocess": {"input_size": 64, "resize": "longest", "norm": "sam", "label_size": 64, "axis": "axial",
                           "intensity": "percentile", "p_lo": 0.5, "p_hi": 99.5}, "step": 10, "val_dice": 0.5}
    put(d, "lora", json.dumps(meta, indent=2))
    meta2 = dict(meta, method="adapter", scope="encoder+decoder", prompt="none", compat_finetune_sam=1,
                 tasks=[{"name": "a", "num_cls": 2, "values": [0, 5]}, {"name": "b", "num_cls": 2, "values": [0, 7]}],
                 preprocess={"input_size": 1024, "resize": "stretch", "norm": "medsam", "axis": "coronal",
                             "intensity": "minmax"})
    put(d, "adapter_two_tasks", json.dumps(meta2))
    put(d, "full", json.dumps(dict(meta, method="full", prompt="hybrid")))
    d = out_dir("data", "fuzz_ingest_lists")
    put(d, "csv_header", b"\0image,label\nimg/a.nii.gz,lab/a.nii.gz\nimg/b.nii,\n# comment\n/abs/c.png,/abs/c_mask.png\n")
    put(d, "csv_crlf", b"\0a.nii , b.nii\r\n  c.nii.gz,d.nii.gz\r\n\r\n")
    put(d, "map_header", b"\1value,class\n0,0\n1,1\n2,1\n-5,2\n9223372036854775807,65535\n")
    put(d, "map_plain", b"\3 1 , 2\n# note\n3,4\r\n")
    put(d, "names", b"\2liver\ntumour\n")


# ---- PNG -----------------------------------------------------------------------------------------------------

def png(w, h, ctype, depth, rows, extra=b""):
    def chunk(t, b):
        return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b) & 0xFFFFFFFF)
    raw = b"".join(b"\0" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)) + extra +
            chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def gen_png():
    rng = np.random.default_rng(9)
    d = out_dir("data", "fuzz_png")
    g8 = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    g16 = rng.integers(0, 65536, (4, 3)).astype(">u2")
    rgb = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (3, 3, 4), dtype=np.uint8)
    pal = rng.integers(0, 4, (4, 4), dtype=np.uint8)
    plte = struct.pack(">I", 12) + b"PLTE" + bytes(range(12))
    plte += struct.pack(">I", zlib.crc32(b"PLTE" + bytes(range(12))) & 0xFFFFFFFF)
    bits = np.packbits(rng.integers(0, 2, (6, 8), dtype=np.uint8), axis=1)
    seeds = {"gray8": png(7, 5, 0, 8, [r.tobytes() for r in g8]),
             "gray16": png(3, 4, 0, 16, [r.tobytes() for r in g16]),
             "rgb8": png(4, 3, 2, 8, [r.tobytes() for r in rgb]),
             "rgba8": png(3, 3, 6, 8, [r.tobytes() for r in rgba]),
             "palette": png(4, 4, 3, 8, [r.tobytes() for r in pal], plte),
             "gray1": png(8, 6, 0, 1, [r.tobytes() for r in bits])}
    for i, (name, data) in enumerate(seeds.items()):
        put(d, name, bytes([i % 3]) + data)


if __name__ == "__main__":
    gen_nifti()
    gen_ckpt()
    gen_store()
    gen_text()
    gen_png()
