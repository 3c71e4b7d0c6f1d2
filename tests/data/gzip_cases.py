"""tests/data/gzip_cases.py — inputs and checks for test_ingest_gzip.sh (no test_ prefix: a helper, not a test).

  gen DIR SEED     writes DIR/good/*.nii.gz and DIR/bad/*.nii.gz and the lists DIR/good.txt, DIR/bad.txt (one file
                   name a line; bad: name kind member). Good: group a, one int16 volume in many gzip framings
                   (single member at a random level, stored blocks, two members, a member boundary inside the header
                   and at the voxel data, empty members, dozens of members at levels 0..9, bgzip, FHCRC/FEXTRA/FNAME/
                   FCOMMENT headers, trailing zeros/junk, bytes past the voxel data with a tiny last member (buffer
                   grow)); group b, int16 voxels as NaN-slope, slope-1, big-endian, NIfTI-2, vox_offset 355 (the
                   integer table path) and as int32 and float32 (the float path); group c the same for uint8 (also
                   slope 0 + inter); and uint8/int16 with value-changing scl_slope/inter (negative too), int8, uint16,
                   big-endian uint16. Bad: truncated mid-stream, truncated trailer, a flipped byte in the deflate
                   data, a wrong CRC32, a wrong ISIZE; each in a single- and in a multi-member file.
  same STORE       volumes whose file names share the prefix before "__" hold the same voxel values (in other gzip
                   framings, byte orders, NIfTI versions, datatypes): their stored slices must be identical, pixel for
                   pixel, and so must their windows (the table path gives the float path's pixels, as documented).
  paths STORE      prints the basename of every stored volume's source path, one a line, sorted.

The gzip members are written here by hand (zlib raw deflate + our own header and trailer), so the framing does not
depend on Python's gzip module; the reference the slices are compared with is nibabel (check_store.py)."""
import os
import struct
import sys
import zlib

import numpy as np



def inflates_same(a, b):
    """1 when the raw deflate data a inflates without error to what b inflates to."""
    try:
        return zlib.decompressobj(-15).decompress(a) == zlib.decompressobj(-15).decompress(b)
    except zlib.error:
        return False

def member(data, level=6, flags=0, mtime=0, extra=b"", name=b"", comment=b""):
    """One gzip member (RFC 1952) of data; flags: FHCRC 2, FEXTRA 4, FNAME 8, FCOMMENT 16 (fields given)."""
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    body = c.compress(data) + c.flush()
    h = bytearray(b"\x1f\x8b\x08" + bytes([flags]) + struct.pack("<I", mtime) + b"\x00\x03")
    if flags & 4:
        h += struct.pack("<H", len(extra)) + extra
    if flags & 8:
        h += name + b"\x00"
    if flags & 16:
        h += comment + b"\x00"
    if flags & 2:
        h += struct.pack("<H", zlib.crc32(bytes(h)) & 0xFFFF)
    return bytes(h), body, struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)


def gz(data, **kw):
    return b"".join(member(data, **kw))


def split_members(u, cuts, rng, level=None):
    """Members of u cut at the given offsets (0 or equal offsets give empty members)."""
    edges = [0] + list(cuts) + [len(u)]
    return b"".join(gz(u[a:b], level=int(rng.integers(0, 10)) if level is None else level)
                    for a, b in zip(edges[:-1], edges[1:]))


def bgzf(u, block=4096):
    """BGZF (bgzip): members of <= 64 KiB with a 'BC' extra field holding the member size - 1, then an empty member."""
    out = b""
    for i in range(0, len(u) + 1, block):
        chunk = u[i:i + block]
        if not chunk and i:
            break
        h, body, t = member(chunk, level=5, flags=4, extra=b"BC\x02\x00\x00\x00")
        h = bytearray(h)
        struct.pack_into("<H", h, 16, len(h) + len(body) + len(t) - 1)
        out += bytes(h) + body + t
    h, body, t = member(b"", flags=4, extra=b"BC\x02\x00\x1b\x00")
    return out + h + body + t


def volume(rng, dt, lo, hi, shape=None):
    if shape is None:
        shape = tuple(int(x) for x in (rng.integers(18, 34), rng.integers(18, 34), rng.integers(6, 12)))
    # a smooth blob with noise over a zero background (the near-empty rule, nonzero percentiles), and a few
    # outliers over the whole range so that the percentile window clips something and is not just min..max
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = sum(a * a for a in g)
    span = hi - lo
    x = lo + span * (0.2 + 0.5 * (1 - r) + rng.uniform(-0.15, 0.15, shape))
    out = rng.random(shape) < 0.004
    x[out] = rng.uniform(lo, hi, int(out.sum()))
    x = np.where(r < 0.8, np.rint(x), 0)
    x[:, :, 0] = 0  # one empty slice at the edge
    return np.clip(x, lo, hi).astype(dt)


def gen(d, seed):
    import nibabel as nib
    rng = np.random.default_rng(seed)
    good, bad = os.path.join(d, "good"), os.path.join(d, "bad")
    os.makedirs(good, exist_ok=True)
    os.makedirs(bad, exist_ok=True)
    aff = np.diag([0.9, 1.1, 2.5, 1.0])
    aff[:3, 3] = rng.normal(0, 10, 3)

    def nii_bytes(img):
        p = os.path.join(d, "tmp.nii")
        img.to_filename(p)
        b = open(p, "rb").read()
        os.remove(p)
        return b

    goods = {}

    def put(name, blob):
        goods[name] = blob

    # 1. one int16 volume (the integer table path) in many gzip framings: identical voxel bytes, "same" checks them
    u = nii_bytes(nib.Nifti1Image(volume(rng, np.int16, -200, 3000), aff))
    n = len(u)
    put("a__single.nii.gz", gz(u, level=int(rng.integers(1, 10))))
    put("a__stored.nii.gz", gz(u, level=0))  # stored blocks
    put("a__multi.nii.gz", split_members(u, [int(rng.integers(400, n - 400))], rng))
    put("a__multi_in_header.nii.gz", split_members(u, [int(rng.integers(1, 348))], rng))  # header spans two members
    put("a__multi_at_data.nii.gz", split_members(u, [352], rng))
    put("a__empty_members.nii.gz", split_members(u, [0, 0, n // 2, n // 2, n], rng))
    step = int(rng.integers(200, 1200))
    put("a__many.nii.gz", split_members(u, range(step, n, step), rng))  # dozens of members, levels 0..9
    put("a__bgzf.nii.gz", bgzf(u, block=int(rng.integers(1024, 8192))))
    put("a__header_fields.nii.gz", gz(u, flags=2 | 4 | 8 | 16, mtime=1700000000, extra=b"XY\x03\x00abc",
                                      name=b"vol.nii", comment=b"odd header"))
    put("a__trail_zeros.nii.gz", gz(u) + b"\x00" * int(rng.integers(1, 600)))
    put("a__trail_junk.nii.gz", gz(u) + bytes(rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8)))
    # bytes after the voxel data inside a member, then a tiny last member: its ISIZE undersizes the buffer (grow path)
    k = int(rng.integers(400, n - 400))
    put("a__grow.nii.gz", gz(u[:k]) + gz(u[k:] + bytes(rng.integers(0, 256, 30000, dtype=np.uint8))) + gz(b"z"))
    put("a__multi_trail.nii.gz", split_members(u, [n // 3, 2 * n // 3], rng) + b"JUNK" * 3)

    # 2. datatypes, byte order, NIfTI-2, scl_slope. Groups b (int16 voxels) and c (uint8 voxels) hold the same values
    # through the integer table path (no scl_slope, NaN or 0 slope, slope 1) and through the float path (int32,
    # float32): the documented "same pixels as the float path", checked exactly by `same`.
    def img(v, cls=nib.Nifti1Image, slope=None, inter=0.0, big=False):
        hdr = (nib.Nifti2Header if cls is nib.Nifti2Image else nib.Nifti1Header)(endianness=">" if big else "<")
        v = v.astype(v.dtype.newbyteorder(">" if big else "<"))
        hdr.set_data_dtype(v.dtype)  # a header given to nibabel sets the on-disk type, not the array
        im = cls(v, aff, header=hdr)
        b = bytearray(nii_bytes(im))
        e = ">" if big else "<"
        assert struct.unpack(e + "i", b[:4])[0] in (348, 540), "byte order"
        if slope is not None:
            # nibabel recomputes scl_slope/inter on save: patch them into the header bytes
            if cls is nib.Nifti2Image:
                struct.pack_into(e + "dd", b, 176, slope, inter)
            else:
                struct.pack_into(e + "ff", b, 112, slope, inter)
        return bytes(b)

    v16 = volume(rng, np.int16, -1000, 4000)
    put("b__i16_nanslope.nii.gz", gz(img(v16, slope=float("nan"))))  # NaN slope: no scaling
    put("b__i16_slope1.nii.gz", gz(img(v16, slope=1.0, inter=0.0)))
    put("b__i16_be.nii.gz", split_members(img(v16, big=True), [1000], rng))
    put("b__i16_nifti2.nii.gz", split_members(img(v16, cls=nib.Nifti2Image), [600, 3000], rng))
    # vox_offset 355: the int16 voxels are misaligned in the inflated buffer
    w = bytearray(img(v16))
    struct.pack_into("<f", w, 108, 355.0)
    put("b__i16_oddoffset.nii.gz", split_members(bytes(w[:352]) + b"\x00" * 3 + bytes(w[352:]), [200], rng))
    put("b__i32.nii.gz", gz(img(v16.astype(np.int32))))
    put("b__f32.nii.gz", gz(img(v16.astype(np.float32))))
    v8 = volume(rng, np.uint8, 0, 255)
    put("c__u8.nii.gz", gz(img(v8)))
    put("c__u8_slope0.nii.gz", gz(img(v8, slope=0.0, inter=50.0)))  # slope 0: no scaling, inter ignored
    put("c__u8_nifti2.nii.gz", split_members(img(v8, cls=nib.Nifti2Image), [400], rng))
    put("c__i16.nii.gz", gz(img(v8.astype(np.int16))))
    put("c__f32.nii.gz", gz(img(v8.astype(np.float32))))
    # value-changing scl_slope/scl_inter (float path), other 8/16-bit types, big-endian uint16
    put("u8_slope.nii.gz", gz(img(volume(rng, np.uint8, 0, 255), slope=float(rng.uniform(0.3, 4.0)), inter=-7.0)))
    put("u8_nifti2_slope.nii.gz", gz(img(volume(rng, np.uint8, 0, 255), cls=nib.Nifti2Image, slope=2.0)))
    put("i16_slope.nii.gz", gz(img(volume(rng, np.int16, -1000, 4000), slope=float(rng.uniform(0.01, 3.0)),
                                   inter=12.5)))
    put("i16_negslope.nii.gz", gz(img(volume(rng, np.int16, -1000, 4000), slope=-0.5)))
    put("i8.nii.gz", split_members(img(volume(rng, np.int8, -128, 127)), [500], rng))
    put("u16.nii.gz", gz(img(volume(rng, np.uint16, 0, 60000))))
    put("u16_be.nii.gz", gz(img(volume(rng, np.uint16, 0, 40000), big=True)))

    for k, b in goods.items():
        open(os.path.join(good, k), "wb").write(b)
    with open(os.path.join(d, "good.txt"), "w") as f:
        f.write("".join(k + "\n" for k in sorted(goods)))

    # 3. corrupt copies: each fault on a single-member and on a multi-member file (fresh voxels: no hash overlap)
    rows = []
    for form in ("single", "multi"):
        for kind in ("trunc", "trunc_trailer", "flip", "crc", "isize"):
            v = nii_bytes(nib.Nifti1Image(volume(rng, np.int16, 0, 3000), aff))
            if form == "single":
                mem = [member(v, level=int(rng.integers(1, 10)))]
            else:
                c = sorted(int(x) for x in rng.integers(400, len(v) - 400, 2))
                mem = [member(v[a:b], level=int(rng.integers(1, 10))) for a, b in zip([0] + c, c + [len(v)])]
            mem = [[bytearray(x) for x in m] for m in mem]
            which = int(rng.integers(0, len(mem)))  # the member the fault goes into
            h, body, t = mem[which]
            if kind == "flip":
                # inside the deflate data, away from its last byte (padding bits there may be ignored); a flip that
                # still inflates to the same bytes (an unused bit of a Huffman table, say) is no fault: flip again
                orig = bytes(body)
                while bytes(body) == orig or inflates_same(bytes(body), orig):
                    body[:] = orig
                    p = int(rng.integers(len(body) // 5, len(body) * 4 // 5))
                    body[p] ^= int(rng.integers(1, 256))
            elif kind == "crc":
                t[0:4] = struct.pack("<I", struct.unpack("<I", t[0:4])[0] ^ int(rng.integers(1, 1 << 32)))
            elif kind == "isize":
                old = struct.unpack("<I", t[4:8])[0]
                t[4:8] = struct.pack("<I", (old + int(rng.choice([-1, 1, 2, 4096, int(rng.integers(1, 1 << 31))])))
                                     & 0xFFFFFFFF)
            blob = b"".join(bytes(x) for m in mem for x in m)
            if kind == "trunc":
                # cut inside the deflate data of the chosen member
                start = sum(len(x) for m in mem[:which] for x in m) + len(h)
                blob = blob[:start + int(rng.integers(len(body) // 10, len(body) * 9 // 10))]
            elif kind == "trunc_trailer":
                blob = blob[:len(blob) - int(rng.integers(1, 8))]  # the last member's CRC/ISIZE cut short
            name = f"{form}_{kind}.nii.gz"
            open(os.path.join(bad, name), "wb").write(blob)
            rows.append(f"{name} {kind} member {which + 1}/{len(mem)}")
    with open(os.path.join(d, "bad.txt"), "w") as f:
        f.write("".join(r + "\n" for r in rows))


def same(store):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from storelib import Store
    st = Store(store)
    groups = {}
    for v in st.volumes():
        base = os.path.basename(v["path"])
        if "__" in base:
            groups.setdefault(base.split("__")[0], []).append(v)
    fails, n = 0, 0
    for g, vs in sorted(groups.items()):
        ref = vs[0]
        rp = [st.decode(st.raw(ref["first_key"] + i))["pixels"] for i in range(ref["n_slices"])]
        for v in vs[1:]:
            n += 1
            name = os.path.basename(v["path"])
            # the same values from int16 and float32 framings: the stored type may differ (uint16 when none is
            # negative), nothing else
            def win(x): return {k: y for k, y in x["intensity"].items() if k != "stored"}
            if v["n_slices"] != ref["n_slices"] or win(v) != win(ref):
                print(f"FAIL {name}: {v['n_slices']} slices, window {v['intensity']}; "
                      f"{os.path.basename(ref['path'])}: {ref['n_slices']}, {ref['intensity']}")
                fails += 1
                continue
            for i in range(v["n_slices"]):
                if not np.array_equal(st.decode(st.raw(v["first_key"] + i))["pixels"], rp[i]):
                    print(f"FAIL {name}: slice {i} differs from {os.path.basename(ref['path'])}")
                    fails += 1
                    break
    print(f"{n} framings compared with their group's first, {fails} failures")
    return 1 if fails or n == 0 else 0


def paths(store):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from storelib import Store
    for p in sorted(os.path.basename(v["path"]) for v in Store(store).volumes()):
        print(p)
    return 0


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "gen":
        gen(sys.argv[2], int(sys.argv[3]))
    elif cmd == "same":
        sys.exit(same(sys.argv[2]))
    elif cmd == "paths":
        sys.exit(paths(sys.argv[2]))
    else:
        sys.exit(f"unknown command {cmd}")
