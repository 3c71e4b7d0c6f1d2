#!/usr/bin/env bash
# tests/finetune/test_segment.sh — `mrisam segment` against the PyTorch reference (tests/reference/sam_ref.py).
#
# A vit_test SAM checkpoint (counter_init weights under SAM's keys, torch.save) and an 8-bit gray PNG of 96x128
# (upscaled x2 to 192x256 by the preprocessing, so the coordinate transform, the crop and the final resize all do
# something). Two prompt sets: two points (one negative) with --multimask, and a box + point single-mask. The
# reference runs in float64 with the same preprocessing (bilinear, align_corners=False; upscaling, so no
# antialiasing question) and the official post-processing. Pass: low-res logits and IoU within 1e-4·max|ref|; the
# chosen token equal; mask pixels equal except where |ref logit| < 1e-3·max|ref logit|.
# Also: a bad --point exits 2, a point outside the image or an inverted box exits 2 naming the image size, a missing
# checkpoint exits 1 with a one-line message.
set -u
MRISAM=${MS_MRISAM:-mrisam}
SRC=${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
if ! $PY -c "import torch, numpy, PIL" 2>/dev/null; then echo "skip: no torch/numpy/PIL in $PY"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0

$PY "$SRC/tests/reference/sam_ref.py" ckpt "$T/sam_test.pth" vit_test 21 || exit 1
$PY - "$T" <<'EOF' || exit 1
import os, sys
import numpy as np
from PIL import Image
T = sys.argv[1]
yy, xx = np.mgrid[0:96, 0:128]
g = (127 + 90 * np.sin(xx / 9.0) * np.cos(yy / 6.0) + 30 * ((xx - 60) ** 2 + (yy - 45) ** 2 < 400)).clip(0, 255)
Image.fromarray(g.astype(np.uint8), "L").save(os.path.join(T, "img.png"))
EOF

run_case() { # name, mrisam args..., then the reference compares
    local name=$1; shift
    if ! "$MRISAM" segment --ckpt "$T/sam_test.pth" --image "$T/img.png" -o "$T/$name.png" --logits "$T/$name.npy" \
        --threads 2 "$@" > "$T/$name.out"; then
        echo "FAIL: mrisam segment ($name)"; fail=1; return
    fi
    cat "$T/$name.out"
    $PY - "$T" "$SRC" "$name" "$@" <<'EOF' || fail=1
import os, sys
import numpy as np, torch
from PIL import Image
T, SRC, name, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
import sam_ref, sam_ref_encoder as enc_ref
pts, labels, box, multimask = [], [], None, False
i = 0
while i < len(args):
    if args[i] == "--point":
        v = [float(t) for t in args[i + 1].split(",")]
        pts.append(v[:2]); labels.append(int(v[2]) if len(v) > 2 else 1); i += 2
    elif args[i] == "--box":
        box = [float(t) for t in args[i + 1].split(",")]; i += 2
    elif args[i] == "--multimask":
        multimask = True; i += 1
    else:
        i += 1
m = sam_ref.Sam("vit_test").double()
m.load_state_dict({k: v.double() for k, v in torch.load(os.path.join(T, "sam_test.pth")).items()}, strict=True)
img = np.asarray(Image.open(os.path.join(T, "img.png"))).astype(np.float64)
h, w = img.shape
S = m.img_size
x = enc_ref.preprocess(img, S).double()
P = None
if pts:
    P = (torch.from_numpy(sam_ref.apply_coords(pts, h, w, S))[None], torch.tensor([labels]))
B = None
if box is not None:
    B = torch.from_numpy(sam_ref.apply_coords(box, h, w, S).reshape(1, 4))
with torch.no_grad():
    low, iou = m.predict(x, P, B, multimask)
    full = sam_ref.postprocess(low, S, h, w)
low, iou, full = low.numpy(), iou.numpy()[0], full.numpy()[0]
ok = True
c_low = np.load(os.path.join(T, name + ".npy"))
if c_low.shape != low.shape:
    print("FAIL %s: logits shape %s, reference %s" % (name, c_low.shape, low.shape)); sys.exit(1)
e = np.abs(c_low - low).max() / np.abs(low).max()
print("%s: low-res logits normwise error %.3g" % (name, e))
ok &= e <= 1e-4
line = [l for l in open(os.path.join(T, name + ".out")) if l.startswith("iou:")][0]
c_iou = np.array([float(t) for t in line.split()[1:]])
ei = np.abs(c_iou - iou).max() / np.abs(iou).max()
print("%s: iou %s vs reference %s (normwise %.3g)" % (name, c_iou, iou, ei))
ok &= c_iou.shape == iou.shape and ei <= 1e-4
best = int(np.argmax(iou))
ref_mask = full[best] > 0
c_mask = np.asarray(Image.open(os.path.join(T, name + ".png"))) > 127
if c_mask.shape != ref_mask.shape:
    print("FAIL %s: mask shape %s vs %s" % (name, c_mask.shape, ref_mask.shape)); sys.exit(1)
diff = c_mask != ref_mask
near = np.abs(full[best]) < 1e-3 * np.abs(full[best]).max()
print("%s: mask %d pixels on (reference %d), %d differ (%d of them at |logit| < 1e-3·max)" %
      (name, c_mask.sum(), ref_mask.sum(), diff.sum(), (diff & near).sum()))
ok &= not (diff & ~near).any()
if not ok:
    print("FAIL %s" % name); sys.exit(1)
EOF
}

run_case multi --point 40,30 --point 90,60,0 --multimask
run_case boxpt --box 20,10,100,80 --point 60,50

"$MRISAM" segment --ckpt "$T/sam_test.pth" --image "$T/img.png" -o "$T/x.png" --point 1,2,3 2> "$T/err.txt"
rc=$?
if [ $rc -ne 2 ]; then echo "FAIL: bad --point exits $rc, expected 2"; fail=1; fi
# prompts outside the 128x96 image, or an inverted box: exit 2, one line giving the image size (random members, seeded)
seed=${MS_TEST_SEED:-$RANDOM}; echo "seed: $seed (replay with MS_TEST_SEED=$seed)"; RANDOM=$seed
for k in 1 2 3 4; do
    case $((RANDOM % 4)) in
    0) arg=(--point "$((128 + RANDOM % 50)),$((RANDOM % 96))") ;;
    1) arg=(--point "$((RANDOM % 128)),-$((1 + RANDOM % 30))") ;;
    2) x0=$((10 + RANDOM % 100)); arg=(--box "$x0,10,$((x0 - 1 - RANDOM % 9)),80") ;;
    3) arg=(--box "10,10,100,$((97 + RANDOM % 40))") ;;
    esac
    "$MRISAM" segment --ckpt "$T/sam_test.pth" --image "$T/img.png" -o "$T/x.png" "${arg[@]}" 2> "$T/err.txt"
    rc=$?
    if [ $rc -ne 2 ] || [ "$(wc -l < "$T/err.txt")" -ne 1 ] || ! grep -q "128x96" "$T/err.txt"; then
        echo "FAIL: ${arg[*]} exits $rc (expected 2 with one line giving 128x96):"; cat "$T/err.txt"; fail=1
    fi
done
"$MRISAM" segment --ckpt "$T/missing.pth" --image "$T/img.png" -o "$T/x.png" 2> "$T/err.txt"
rc=$?
lines=$(wc -l < "$T/err.txt")
if [ $rc -ne 1 ]; then echo "FAIL: missing checkpoint exits $rc, expected 1"; fail=1; fi
if [ "$lines" -ne 1 ]; then echo "FAIL: missing checkpoint gives $lines lines:"; cat "$T/err.txt"; fail=1; fi

if [ $fail -ne 0 ]; then echo "test_segment: FAILED"; exit 1; fi
echo "test_segment: passed"
