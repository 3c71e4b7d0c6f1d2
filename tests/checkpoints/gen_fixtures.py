#!/usr/bin/python3
"""tests/checkpoints/gen_fixtures.py — writes the weight-file fixtures of tests/checkpoints/fixtures/.

Run with Debian's /usr/bin/python3 (torch 1.13): `/usr/bin/python3 tests/checkpoints/gen_fixtures.py`.
Valid files (read by test_ckpt_read, values in fixtures/expected.json):
  small.pth        zip, saved to a path (prefix "small/"): storage offset, two tensors sharing one storage,
                   a stride (1,3) view, f16, bf16, i64, a 0-d tensor
  dtypes.pth       every dtype with a torch storage class (f64, i32, i16, i8, u8, bool, ...)
  linear.pth       nn.Module.state_dict() (OrderedDict with _metadata, BUILD)
  legacy.pth       _use_new_zipfile_serialization=False (five pickles + raw records)
  buffer.pth       saved to an io.BytesIO (prefix "archive/")
  wrapped.pth      {"model": state_dict, "epoch": 7, "optimizer": {...}} (lists, floats, nested dicts)
  proto4.pth       pickle_protocol=4 (FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL)
  torch2.pth       byte-crafted torch-2.x layout (.format_version, .storage_alignment, byteorder,
                   .data/serialization_id), which torch 1.13 cannot write
  torch2_big.pth   the same with byteorder "big" and byte-swapped storages
  legacy_big.pth   a crafted legacy file from a big-endian writer (sys_info little_endian=False)
  expanded.pth     views torch keeps as views: a stride-0 broadcast buffer, tied weights (two names, one storage),
                   an expanded row; they materialise a little more than the file holds, within the reader's bound
Hostile files (fixtures/hostile/, each listed in hostile/manifest.txt with a substring its error must contain)
must all be refused with a one-line error.
"""
import collections, io, json, os, pickle, shutil, struct, sys, zipfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")
HOST = os.path.join(OUT, "hostile")
DT = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
      torch.bool: "BOOL"}

expected = {}


def record(fname, sd):
    expected[fname] = {k: {"dtype": DT[v.dtype], "shape": list(v.shape),
                           "values": [float(x) for x in v.detach().reshape(-1).double().tolist()]}
                       for k, v in sd.items()}


def small_sd():
    g = torch.Generator().manual_seed(1234)
    big = torch.randn(20, generator=g)
    m = torch.randn(4, 3, generator=g)
    sd = collections.OrderedDict()
    sd["shared.head"] = big[0:4]                 # storage shared with the next one
    sd["shared.offset"] = big[5:11].view(2, 3)   # storage offset 5
    sd["transposed"] = m.t()                     # stride (1, 3)
    sd["half"] = torch.randn(2, 5, generator=g).half()
    sd["bf16"] = torch.randn(3, 2, generator=g).bfloat16()
    sd["long"] = torch.tensor([[-3, 0, 7], [1 << 40, -(1 << 35), 12]], dtype=torch.int64)
    sd["scalar"] = torch.tensor(3.25)
    assert sd["transposed"].stride() == (1, 3) and sd["shared.offset"].storage_offset() == 5
    return sd


def dtypes_sd():
    g = torch.Generator().manual_seed(99)
    sd = collections.OrderedDict()
    sd["f64"] = torch.randn(2, 3, generator=g).double()
    sd["i32"] = torch.tensor([1, -2, 2147483647, -2147483648], dtype=torch.int32)
    sd["i16"] = torch.tensor([[5, -32768], [32767, 0]], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 127, 3], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 255, 17], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["empty"] = torch.zeros(0, 4)
    sd["f32_4d"] = torch.randn(2, 1, 3, 2, generator=g)
    return sd


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.norm = torch.nn.LayerNorm(2)
        self.register_buffer("steps", torch.tensor(5))


# ---- a small pickle/zip writer for crafted files --------------------------------------------------------------
def p_str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def p_int(v):
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    if -2**31 <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    return b"\x8a\x08" + struct.pack("<q", v)


def p_tuple(vals):
    return b"(" + b"".join(p_int(v) for v in vals) + b"t"


def crafted_pkl(entries, legacy=False):
    """entries: (name, storage class, key, numel, offset, size, stride); legacy: 6-tuple persistent ids."""
    out = b"\x80\x02ccollections\nOrderedDict\nq\x00)R("
    for name, cls, key, numel, off, size, stride in entries:
        out += p_str(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(("
        out += p_str("storage") + b"ctorch\n" + cls.encode() + b"\n" + p_str(key) + p_str("cpu") + p_int(numel)
        out += (b"N" if legacy else b"") + b"tQ" + p_int(off) + p_tuple(size) + p_tuple(stride) + b"\x89h\x00)RtR"
    return out + b"u."


def write_zip(path, entries, method=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in entries:
            z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data, compress_type=method)


def zip_of_storages(pkl, storages, prefix="archive", extra=()):
    ents = [(prefix + "/data.pkl", pkl)] + list(extra)
    ents += [("%s/data/%s" % (prefix, k), v) for k, v in storages]
    return ents + [(prefix + "/version", b"3\n")]


def raw(t):
    return t.contiguous().numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes()


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(HOST)
    sd = small_sd()
    torch.save(sd, os.path.join(OUT, "small.pth"))
    record("small.pth", sd)
    d = dtypes_sd()
    torch.save(d, os.path.join(OUT, "dtypes.pth"))
    record("dtypes.pth", d)

    torch.manual_seed(7)
    lin = Tiny().state_dict()
    assert hasattr(lin, "_metadata")
    torch.save(lin, os.path.join(OUT, "linear.pth"))
    record("linear.pth", lin)

    torch.save(sd, os.path.join(OUT, "legacy.pth"), _use_new_zipfile_serialization=False)
    record("legacy.pth", sd)

    buf = io.BytesIO()
    torch.save(lin, buf)
    open(os.path.join(OUT, "buffer.pth"), "wb").write(buf.getvalue())
    record("buffer.pth", lin)

    opt = {"state": {0: {"step": 3, "exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999),
                                                                                  "params": [0, 1], "amsgrad": False,
                                                                                  "name": None}]}
    torch.save({"model": lin, "epoch": 7, "optimizer": opt, "loss": 0.25}, os.path.join(OUT, "wrapped.pth"))
    record("wrapped.pth", lin)

    torch.save(sd, os.path.join(OUT, "proto4.pth"), pickle_protocol=4)
    record("proto4.pth", sd)

    g = torch.Generator().manual_seed(11)
    w = torch.randn(4, 3, generator=g)
    ex = collections.OrderedDict([("position_ids", torch.arange(16).expand(1, -1)), ("embed.weight", w),
                                  ("head.weight", w), ("bias", torch.randn(3, generator=g)[None].expand(5, 3))])
    assert ex["bias"].stride() == (0, 1) and ex["head.weight"].data_ptr() == ex["embed.weight"].data_ptr()
    torch.save(ex, os.path.join(OUT, "expanded.pth"))
    record("expanded.pth", ex)

    # torch 2.x layout, crafted: one storage per tensor, plus the records torch 1.13 does not write.
    t2 = collections.OrderedDict([("w", torch.randn(3, 4, generator=torch.Generator().manual_seed(5))),
                                  ("h", torch.randn(5, generator=torch.Generator().manual_seed(6)).half()),
                                  ("n", torch.tensor([1, 2, 300], dtype=torch.int64))])
    ents = [(k, {"F32": "FloatStorage", "F16": "HalfStorage", "I64": "LongStorage"}[DT[v.dtype]], str(i), v.numel(),
             0, tuple(v.shape), tuple(v.stride())) for i, (k, v) in enumerate(t2.items())]
    pkl = crafted_pkl(ents)
    for fname, order in (("torch2.pth", "little"), ("torch2_big.pth", "big")):
        extra = [("archive/.format_version", b"1"), ("archive/.storage_alignment", b"64"),
                 ("archive/byteorder", order.encode())]
        stor = []
        for i, v in enumerate(t2.values()):
            b = raw(v)
            if order == "big":
                es = v.element_size()
                b = b"".join(b[j:j + es][::-1] for j in range(0, len(b), es))
            stor.append((str(i), b))
        ents_z = zip_of_storages(pkl, stor, extra=extra) + [("archive/.data/serialization_id", b"0123456789")]
        write_zip(os.path.join(OUT, fname), ents_z)
        record(fname, t2)
    # Legacy format written on a big-endian machine: sys_info little_endian=False, counts and data big-endian.
    leg = (pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2) + pickle.dumps(1001, protocol=2)
           + pickle.dumps({"protocol_version": 1001, "little_endian": False,
                           "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
           + crafted_pkl(ents, legacy=True) + pickle.dumps([str(i) for i in range(len(t2))], protocol=2))
    for i, v in enumerate(t2.values()):
        b, es = raw(v), v.element_size()
        leg += struct.pack(">q", v.numel()) + b"".join(b[j:j + es][::-1] for j in range(0, len(b), es))
    open(os.path.join(OUT, "legacy_big.pth"), "wb").write(leg)
    record("legacy_big.pth", t2)
    got = torch.load(os.path.join(OUT, "torch2.pth"))  # the crafted pickle is one torch itself accepts
    assert all(torch.equal(got[k], t2[k]) for k in t2)

    for fname, prefix in (("small.pth", "small/"), ("buffer.pth", "archive/"), ("torch2.pth", "archive/")):
        names = zipfile.ZipFile(os.path.join(OUT, fname)).namelist()
        assert all(n.startswith(prefix) for n in names), (fname, names)
    assert open(os.path.join(OUT, "legacy.pth"), "rb").read(2) == b"\x80\x02"

    hostile(t2)
    json.dump(expected, open(os.path.join(OUT, "expected.json"), "w"), indent=0)
    for f in sorted(os.listdir(OUT)) + sorted("hostile/" + f for f in os.listdir(HOST)):
        p = os.path.join(OUT, f)
        if os.path.isfile(p):
            print("%8d  %s" % (os.path.getsize(p), f))


def hostile(t2):
    manifest = []
    w = t2["w"]
    good_store = [("0", raw(w))]

    def zfile(name, pkl, why, storages=good_store, **kw):
        write_zip(os.path.join(HOST, name), zip_of_storages(pkl, storages), **kw)
        manifest.append((name, why))

    class System:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    class Eval:
        def __reduce__(self):
            return (eval, ("__import__('os').system('echo pwned')",))

    zfile("os_system.pth", pickle.dumps({"w": System()}, protocol=2), "posix.system is not allowed")
    zfile("builtins_eval.pth", pickle.dumps(collections.OrderedDict(w=Eval()), protocol=4), "builtins.eval is not allowed")
    # The same attack in a legacy file: magic, protocol, sys_info, then the evil object pickle.
    leg = (pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2) + pickle.dumps(1001, protocol=2)
           + pickle.dumps({"protocol_version": 1001, "little_endian": True,
                           "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
           + pickle.dumps(System(), protocol=2))
    open(os.path.join(HOST, "legacy_system.pth"), "wb").write(leg)
    manifest.append(("legacy_system.pth", "posix.system is not allowed"))
    zfile("inst_opcode.pth", b"\x80\x02(X\x01\x00\x00\x00xios\nsystem\n.", "INST")

    ent = ("w", "FloatStorage", "0", 12, 0, (3, 4), (4, 1))
    zfile("numel_2p60.pth", crafted_pkl([("w", "FloatStorage", "0", 1 << 60, 0, (1 << 60,), (1,))]),
          "the pickle declares")
    zfile("numel_overflow.pth", crafted_pkl([("w", "FloatStorage", "0", 12, 0, (1 << 40, 1 << 40), (0, 0))]),
          "element count overflows")
    zfile("expanded_huge.pth", crafted_pkl([("w", "FloatStorage", "0", 12, 0, (1 << 30, 1 << 30), (0, 0))]),
          "expanded view")
    zfile("newline_name.pth", crafted_pkl([("w\nx", "FloatStorage", "0", 12, 0, (1 << 30, 1 << 30), (0, 0))]),
          "tensor w?x: an expanded view")
    # Written by torch itself: eight stride-0 views of 7000 x 7000 over a 4-element storage, 1.5 GB from 1 KB.
    torch.save(collections.OrderedDict(("v%d" % i, torch.zeros(4).as_strided((7000, 7000), (0, 0), i % 4))
                                       for i in range(8)), os.path.join(HOST, "aliased_views.pth"))
    manifest.append(("aliased_views.pth", "tensor views materialise 1568000000 bytes from a"))
    zfile("offset_beyond.pth", crafted_pkl([("w", "FloatStorage", "0", 12, 20, (2,), (1,))]), "outside its storage")
    zfile("stride_beyond.pth", crafted_pkl([("w", "FloatStorage", "0", 12, 0, (3, 4), (5, 1))]), "outside its storage")
    zfile("too_many_dims.pth", crafted_pkl([("w", "FloatStorage", "0", 12, 0, (1,) * 9, (1,) * 9)]), "dims")
    zfile("duplicate_key.pth", crafted_pkl([ent, ent]), "duplicate tensor name")
    zfile("missing_storage.pth", crafted_pkl([("w", "FloatStorage", "7", 12, 0, (3, 4), (4, 1))]), "no zip entry")
    zfile("storage_type_clash.pth", crafted_pkl([ent, ("v", "HalfStorage", "0", 12, 0, (3, 4), (4, 1))]),
          "two different types")
    zfile("path_key.pth", crafted_pkl([("w", "FloatStorage", "../../etc/passwd", 12, 0, (3, 4), (4, 1))]),
          "bad storage key")
    zfile("complex_storage.pth", crafted_pkl([("w", "ComplexFloatStorage", "0", 12, 0, (3, 4), (4, 1))]),
          "ComplexFloatStorage is not allowed")
    zfile("deep_marks.pth", b"\x80\x02" + b"(" * 100000 + b".", "nested MARKs")
    zfile("deep_tuples.pth", b"\x80\x02}X\x01\x00\x00\x00w)" + b"\x85" * 200000 + b"s.", "no state dict found")
    zfile("huge_memo.pth", b"\x80\x02}r\xf0\xff\xff\xff.", "memo index")
    zfile("undefined_memo.pth", b"\x80\x02j\x05\x00\x00\x00.", "not defined")
    zfile("stack_underflow.pth", b"\x80\x02R.", "stack underflow")
    zfile("no_stop.pth", crafted_pkl([ent])[:-1], "no STOP")
    zfile("long_string.pth", b"\x80\x02X\xff\xff\xff\x7fabc", "runs past the end")
    zfile("not_a_dict.pth", b"\x80\x02K\x05.", "no dict of tensors")
    zfile("bad_byteorder.pth", b"", "byteorder")  # replaced below
    write_zip(os.path.join(HOST, "bad_byteorder.pth"),
              zip_of_storages(crafted_pkl([ent]), good_store, extra=[("archive/byteorder", b"middle")]))
    zfile("compressed.pth", crafted_pkl([ent]), "compressed", method=zipfile.ZIP_DEFLATED)
    zfile("short_storage.pth", crafted_pkl([ent]), "the pickle declares", storages=[("0", raw(w)[:-4])])
    write_zip(os.path.join(HOST, "no_folder.pth"), [("data.pkl", crafted_pkl([ent])), ("data/0", raw(w))])
    manifest.append(("no_folder.pth", "no top-level folder"))
    with zipfile.ZipFile(os.path.join(HOST, "duplicate_entry.pth"), "w") as z:
        import warnings
        warnings.simplefilter("ignore")
        for n, b in zip_of_storages(crafted_pkl([ent]), good_store) + [("archive/data/0", raw(w))]:
            z.writestr(n, b)
    manifest.append(("duplicate_entry.pth", "duplicate zip entry"))

    # Zip structure damage on a valid torch file.
    good = open(os.path.join(OUT, "buffer.pth"), "rb").read()
    e = good.rfind(b"PK\x05\x06")
    l = good.rfind(b"PK\x06\x07")
    z64 = struct.unpack_from("<Q", good, l + 8)[0]
    bad = bytearray(good)
    struct.pack_into("<Q", bad, z64 + 48, 1 << 40)        # central directory offset, zip64 end record ...
    struct.pack_into("<I", bad, e + 16, 0xFFFFFFFF)       # ... which the saturated 32-bit field defers to
    open(os.path.join(HOST, "cd_outside.pth"), "wb").write(bad)
    manifest.append(("cd_outside.pth", "outside the file"))
    bad = bytearray(good)
    struct.pack_into("<Q", bad, l + 8, len(good) + 100)   # locator points past the end
    open(os.path.join(HOST, "bad_locator.pth"), "wb").write(bad)
    manifest.append(("bad_locator.pth", "zip64 locator"))
    bad = bytearray(good)
    cd = struct.unpack_from("<Q", good, z64 + 48)[0]
    struct.pack_into("<I", bad, cd + 42, 0xFFFFFFF0)      # first entry's local header offset
    open(os.path.join(HOST, "local_outside.pth"), "wb").write(bad)
    manifest.append(("local_outside.pth", "local header offset"))
    bad = bytearray(good)
    struct.pack_into("<QQ", bad, z64 + 24, 1 << 50, 1 << 50)  # entry counts
    struct.pack_into("<HH", bad, e + 8, 0xFFFF, 0xFFFF)
    open(os.path.join(HOST, "many_entries.pth"), "wb").write(bad)
    manifest.append(("many_entries.pth", "entries"))
    bad = bytearray(good)
    bad[good.find(b"archive/data/0") + len("archive/data/0") + 8] ^= 1  # (inside the FB padding: harmless)
    with zipfile.ZipFile(io.BytesIO(good)) as zz:
        info = zz.getinfo("archive/data/0")
    loc = info.header_offset
    doff = loc + 30 + struct.unpack_from("<H", good, loc + 26)[0] + struct.unpack_from("<H", good, loc + 28)[0]
    bad[doff + 1] ^= 0x40                                 # one bit of the first weight
    open(os.path.join(HOST, "crc_mismatch.pth"), "wb").write(bad)
    manifest.append(("crc_mismatch.pth", "CRC32"))
    open(os.path.join(HOST, "trunc_half.pth"), "wb").write(good[:len(good) // 2])
    manifest.append(("trunc_half.pth", "no zip end record"))
    open(os.path.join(HOST, "empty.pth"), "wb").write(b"")
    manifest.append(("empty.pth", "not a PyTorch"))

    # safetensors
    def st(name, header, data, why, raw_len=None):
        h = json.dumps(header).encode() if isinstance(header, dict) else header
        n = len(h) if raw_len is None else raw_len
        open(os.path.join(HOST, name), "wb").write(struct.pack("<Q", n) + h + data)
        manifest.append((name, why))

    f = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    st("st_header_2p40.safetensors", {"a": f}, bytes(16), "header of 1099511627776 bytes", raw_len=1 << 40)
    st("st_header_past_end.safetensors", {"a": f}, bytes(16), "runs past the end", raw_len=5000)
    st("st_overlap.safetensors", {"a": f, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
                                  "c": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}}, bytes(24), "overlap")
    st("st_gap.safetensors", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, bytes(16), "gap")
    st("st_uncovered.safetensors", {"a": f}, bytes(20), "cover")
    st("st_past_end.safetensors", {"a": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 1 << 42]}}, bytes(16),
       "outside the")
    st("st_size_mismatch.safetensors", {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, bytes(16),
       "bytes for 3 elements")
    st("st_newline_name.safetensors", {"a\nb": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, bytes(16),
       "tensor a?b: 16 bytes for 3 elements")
    st("st_f8.safetensors", {"a": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}, bytes(4),
       "not supported")
    st("st_negative_dim.safetensors", {"a": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}}, bytes(16),
       "bad shape")
    st("st_duplicate.safetensors", b'{"a":' + json.dumps(f).encode() + b',"a":' + json.dumps(f).encode() + b"}",
       bytes(16), "duplicate tensor name")
    st("st_bad_json.safetensors", b'{"a": {"dtype": "F32", ', bytes(16), "not a JSON object")
    st("st_deep_json.safetensors", b"{" + b'"a":[' * 5000 + b"]" * 5000 + b"}", b"", "not a JSON object")
    st("st_bad_meta.safetensors", {"__metadata__": {"k": 5}, "a": f}, bytes(16), "not a string")
    st("st_nine_dims.safetensors", {"a": {"dtype": "F32", "shape": [1] * 9, "data_offsets": [0, 4]}}, bytes(4),
       "dims")
    ok = b'{"a":' + json.dumps(f).encode() + b"}"
    st("st_trailing_garbage.safetensors", ok + b"  x ", bytes(16), "byte 0x78 after the JSON")
    st("st_nul_padding.safetensors", ok + b"\0\0\0", bytes(16), "byte 0x00 after the JSON")
    st("st_nul_name.safetensors", {"a\0b": f}, bytes(16), 'tensor name "a\\u0000b" holds a NUL')
    st("st_bad_utf8_name.safetensors", ok.replace(b'"a"', b'"a\xffb"'), bytes(16),
       'tensor name "a\\xffb" is not valid UTF-8')
    with open(os.path.join(HOST, "manifest.txt"), "w") as fm:
        for n, why in manifest:
            fm.write("%s\t%s\n" % (n, why))


if __name__ == "__main__":
    sys.exit(main())
