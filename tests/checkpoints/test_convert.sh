#!/bin/bash
# tests/checkpoints/test_convert.sh — `mrisam convert` both ways, checked with PyTorch (/usr/bin/python3, torch 1.13):
#  1. torch.save(module.state_dict()) -> mrisam convert -> .safetensors, read by a small pure-Python reader (no
#     safetensors package needed): bit-exact against the module;
#  2. .safetensors -> mrisam convert -> .pth -> torch.load + load_state_dict(strict=True) on a fresh module mirroring
#     the key names: bit-exact; the zip's entries are STORED and 64-byte aligned;
#  3. the dtypes and legacy fixtures through safetensors and back to .pth: torch.load gives the original tensors;
#  4. --help exits 0; a hostile file exits 1 with one line on stderr and leaves no output file: code in a pickle,
#     torch-written stride-0 views materialising 1.5 GB from 2.5 KB (refused within 5 s), a tensor name that is not
#     UTF-8 (loads from a .pth, but neither writer may write it).
set -u
MRISAM=${MS_MRISAM:-mrisam}
SRC=${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
if ! $PY -c "import torch" 2>/dev/null; then echo "no /usr/bin/python3 with torch: skipped"; exit 77; fi
T=$(mktemp -d ckpt_convert.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail=0
step() { if "$@"; then echo "ok: $*"; else echo "FAIL: $*"; fail=1; fi; }

cat > "$T/check.py" <<'PYEOF'
import json, struct, sys, zipfile
import torch

DT = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64, "I64": torch.int64,
      "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}

def read_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack_from("<Q", b)[0]
    h = json.loads(b[8:8 + n])
    data = b[8 + n:]
    out = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        raw = bytearray(data[s:e])
        dt = DT[v["dtype"]]
        if dt == torch.bfloat16:
            t = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16) if raw else torch.empty(0, dtype=dt)
        else:
            t = torch.frombuffer(raw, dtype=dt) if raw else torch.empty(0, dtype=dt)
        out[k] = t.reshape(v["shape"]).clone()
    return out, list(h.keys())

class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(8)
        self.attn = torch.nn.Module()
        self.attn.qkv = torch.nn.Linear(8, 24)
        self.attn.rel_pos_h = torch.nn.Parameter(torch.randn(27, 4))
        self.mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))

class Mini(torch.nn.Module):   # SAM-like key names: image_encoder.blocks.{i}.attn.qkv.weight, ...
    def __init__(self):
        super().__init__()
        self.image_encoder = torch.nn.Module()
        self.image_encoder.pos_embed = torch.nn.Parameter(torch.randn(1, 4, 4, 8))
        self.image_encoder.blocks = torch.nn.ModuleList([Block() for _ in range(2)])
        self.image_encoder.neck = torch.nn.Sequential(torch.nn.Conv2d(8, 4, 1, bias=False), torch.nn.BatchNorm2d(4))
        self.mask_decoder = torch.nn.Module()
        self.mask_decoder.iou_token = torch.nn.Embedding(1, 8)
        self.mask_decoder.output_upscaling = torch.nn.ConvTranspose2d(8, 4, 2, stride=2)

def bits(t):
    t = t.contiguous()
    return t.view(torch.int16) if t.dtype in (torch.float16, torch.bfloat16) else t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int64) if t.dtype == torch.float64 else t

def eq(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))

cmd = sys.argv[1]
if cmd == "make":
    torch.manual_seed(int(sys.argv[3]))
    m = Mini()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    m.image_encoder.neck[1].running_mean.normal_()
    torch.save(m.state_dict(), sys.argv[2])
elif cmd == "check_st":   # ref.pth vs out.safetensors
    ref = torch.load(sys.argv[2])
    got, keys = read_safetensors(sys.argv[3])
    assert keys == list(ref.keys()), (keys, list(ref.keys()))
    bad = [k for k in ref if not eq(ref[k], got[k])]
    assert not bad, bad
    print("  %d tensors bit-exact, order kept" % len(ref))
elif cmd == "check_pth":  # ref.pth vs C-written .pth, strict load into a fresh module
    ref = torch.load(sys.argv[2])
    sd = torch.load(sys.argv[3])
    m = Mini()
    m.load_state_dict(sd, strict=True)
    msd = m.state_dict()
    bad = [k for k in ref if not eq(ref[k], msd[k]) or not eq(ref[k], sd[k])]
    assert not bad, bad
    assert list(sd.keys()) == list(ref.keys())
    with zipfile.ZipFile(sys.argv[3]) as z:
        names = z.namelist()
        assert names[0] == "archive/data.pkl" and "archive/version" in names and "archive/byteorder" in names, names
        for i in z.infolist():
            assert i.compress_type == zipfile.ZIP_STORED
            off = i.header_offset + 30 + len(i.filename.encode()) + struct.unpack_from("<H", open(sys.argv[3], "rb").read(i.header_offset + 30), i.header_offset + 28)[0]
            assert off % 64 == 0, (i.filename, off)
        assert z.testzip() is None
    print("  strict load_state_dict ok, %d tensors bit-exact, %d entries 64-byte aligned, CRCs ok" % (len(ref), len(names)))
elif cmd == "badname":    # copy of a .pth whose key "scalar" becomes b"sca\xffar" (same length: no offsets move)
    with zipfile.ZipFile(sys.argv[2]) as z, zipfile.ZipFile(sys.argv[3], "w") as out:
        for i in z.infolist():
            d = z.read(i)
            if i.filename.endswith("/data.pkl"):
                assert d.count(b"scalar") == 1
                d = d.replace(b"scalar", b"sca\xffar")
            out.writestr(i, d)
elif cmd == "check_same":  # two .pth files hold equal tensors (any layout)
    a, b = torch.load(sys.argv[2]), torch.load(sys.argv[3])
    if "model" in a and isinstance(a["model"], dict):
        a = a["model"]
    assert list(a.keys()) == list(b.keys()), (list(a.keys()), list(b.keys()))
    bad = [k for k in a if not eq(a[k].contiguous(), b[k])]
    assert not bad, bad
    print("  %d tensors equal (%s)" % (len(a), ", ".join(sorted({str(v.dtype) for v in a.values()}))))
PYEOF

FIX="$SRC/tests/checkpoints/fixtures"
seed=$(( $(date +%s) % 100000 )); echo "seed: $seed"
step $PY "$T/check.py" make "$T/ref.pth" $seed
step "$MRISAM" convert "$T/ref.pth" "$T/a.safetensors"
step $PY "$T/check.py" check_st "$T/ref.pth" "$T/a.safetensors"
step "$MRISAM" convert "$T/a.safetensors" "$T/b.pth"
step $PY "$T/check.py" check_pth "$T/ref.pth" "$T/b.pth"
step "$MRISAM" convert "$T/ref.pth" "$T/c.pt"
step $PY "$T/check.py" check_same "$T/ref.pth" "$T/c.pt"
for f in dtypes small legacy wrapped proto4; do
  step "$MRISAM" convert "$FIX/$f.pth" "$T/$f.safetensors"
  step "$MRISAM" convert "$T/$f.safetensors" "$T/$f.pth"
  step $PY "$T/check.py" check_same "$FIX/$f.pth" "$T/$f.pth"
done
step "$MRISAM" convert --list "$T/a.safetensors"
"$MRISAM" convert --help > "$T/help.txt"; step test $? -eq 0 -a -s "$T/help.txt"
"$MRISAM" convert "$FIX/hostile/os_system.pth" "$T/evil.safetensors" 2> "$T/err.txt"; rc=$?
echo "  hostile: exit $rc: $(cat "$T/err.txt")"
step test $rc -eq 1 -a "$(wc -l < "$T/err.txt")" -eq 1 -a ! -e "$T/evil.safetensors"
refused() { # refused IN OUT WHY: exit 1 within 5 s, one stderr line containing WHY, no OUT
  local t0=$(date +%s.%N) rc
  "$MRISAM" convert "$1" "$2" 2> "$T/err.txt"; rc=$?
  local dt=$(echo "$(date +%s.%N) - $t0" | bc)
  echo "  $(basename "$1") -> $(basename "$2"): exit $rc after ${dt}s: $(cat "$T/err.txt")"
  test $rc -eq 1 -a "$(wc -l < "$T/err.txt")" -eq 1 -a ! -e "$2" && grep -q "$3" "$T/err.txt" &&
    [ "$(echo "$dt < 5" | bc)" = 1 ]
}
step refused "$FIX/hostile/aliased_views.pth" "$T/alias.safetensors" "tensor views materialise"
step $PY "$T/check.py" badname "$FIX/small.pth" "$T/badname.pth"
step refused "$T/badname.pth" "$T/badname.safetensors" 'tensor name "sca\\xffar" is not valid UTF-8'
step refused "$T/badname.pth" "$T/badname2.pth" "not valid UTF-8"
"$MRISAM" convert "$FIX/small.pth" 2> /dev/null; step test $? -eq 2
echo "$([ $fail = 0 ] && echo PASS || echo FAIL)"
exit $fail
