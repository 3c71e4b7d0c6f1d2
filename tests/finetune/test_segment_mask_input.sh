#!/usr/bin/env bash
# tests/finetune/test_segment_mask_input.sh — `mrisam segment --embedding` and `--mask-input` (SAM predictor's
# mask_input).
#
# The vit_test checkpoint and 128x96 image of test_segment.sh. Prompts are drawn at random (seed printed):
# - --embedding E.npy, E from `mrisam embed` of the same image and weights: mask PNG, --logits and stdout
#   byte-identical to `segment` running the encoder itself (single-mask and --multimask).
# - --mask-input: a first prediction's best low-res logits (argmax predicted IoU, as SAM's predictor examples feed
#   them back), then a second prediction with a point and that mask; the reference is tests/reference/sam_ref.py in
#   float64 with the mask through the prompt encoder's mask_downscaling (segment_anything's PromptEncoder). Pass:
#   low-res logits and IoU within 1e-4·max|ref|, mask pixels equal except where |ref logit| < 1e-3·max. The mask
#   given as (64, 64), (1, 64, 64) or (1, 1, 64, 64) gives the same bytes; a mask input changes the result.
# - refused with exit 1 and one line naming the file: an embedding of another input size, of a wrong shape, a file
#   that is not .npy; a mask input of another size, with 3 channels (a --multimask --logits file), with a NaN.
set -u
MRISAM=${MS_MRISAM:-mrisam}
SRC=${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
if ! $PY -c "import torch, numpy, PIL" 2>/dev/null; then echo "skip: no torch/numpy/PIL in $PY"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
seed=${MS_TEST_SEED:-$RANDOM}; echo "seed: $seed (replay with MS_TEST_SEED=$seed)"; RANDOM=$seed

$PY "$SRC/tests/reference/sam_ref.py" ckpt "$T/sam_test.pth" vit_test 21 || exit 1
$PY - "$T" <<'EOF' || exit 1
import os, sys
import numpy as np
from PIL import Image
T = sys.argv[1]
yy, xx = np.mgrid[0:96, 0:128]
g = (127 + 90 * np.sin(xx / 9.0) * np.cos(yy / 6.0) + 30 * ((xx - 60) ** 2 + (yy - 45) ** 2 < 400)).clip(0, 255)
Image.fromarray(g.astype(np.uint8), "L").save(os.path.join(T, "img.png"))
np.save(os.path.join(T, "emb512.npy"), np.zeros((1, 256, 32, 32), np.float32))
np.save(os.path.join(T, "emb3.npy"), np.zeros((256, 16, 8), np.float32))
np.save(os.path.join(T, "m32.npy"), np.zeros((1, 32, 32), np.float32))
np.save(os.path.join(T, "m3.npy"), np.zeros((1, 3, 64, 64), np.float32))
m = np.zeros((1, 64, 64), np.float32); m[0, 5, 7] = np.nan
np.save(os.path.join(T, "mnan.npy"), m)
EOF
seg() { "$MRISAM" segment --ckpt "$T/sam_test.pth" --image "$T/img.png" --threads 2 "$@"; }
"$MRISAM" embed --ckpt "$T/sam_test.pth" --image "$T/img.png" -o "$T/emb.npy" --threads 2 2> /dev/null || exit 1

# --embedding: byte-identical to the encoder run
p1="$((RANDOM % 128)),$((RANDOM % 96))"; p2="$((RANDOM % 128)),$((RANDOM % 96)),0"
x0=$((RANDOM % 60)); y0=$((RANDOM % 40)); box="$x0,$y0,$((x0 + 20 + RANDOM % 40)),$((y0 + 20 + RANDOM % 40))"
for args in "--point $p1 --point $p2 --multimask" "--box $box --point $p1"; do
    # shellcheck disable=SC2086
    seg $args -o "$T/a.png" --logits "$T/a.npy" > "$T/a.out" || { echo "FAIL: segment $args"; fail=1; }
    # shellcheck disable=SC2086
    seg $args --embedding "$T/emb.npy" -o "$T/b.png" --logits "$T/b.npy" > "$T/b.out" || { echo "FAIL: --embedding"; fail=1; }
    sed -i 's/[ab]\.png$//' "$T/a.out" "$T/b.out"
    if cmp -s "$T/a.png" "$T/b.png" && cmp -s "$T/a.npy" "$T/b.npy" && cmp -s "$T/a.out" "$T/b.out"; then
        echo "--embedding ($args): byte-identical to the encoder run"
    else
        echo "FAIL: --embedding ($args) differs from the encoder run"; fail=1
    fi
done

# --mask-input: a first prediction fed back with another point, against the reference
q2="$((RANDOM % 128)),$((RANDOM % 96)),$((RANDOM % 2))"
seg --point "$p1" --multimask -o "$T/first.png" --logits "$T/first.npy" > "$T/first.out" || exit 1
$PY - "$T" <<'EOF' || exit 1
import os, sys
import numpy as np
T = sys.argv[1]
low = np.load(os.path.join(T, "first.npy"))[0]
line = [l for l in open(os.path.join(T, "first.out")) if l.startswith("iou:")][0]
best = int(np.argmax([float(t) for t in line.split()[1:]]))
np.save(os.path.join(T, "prev.npy"), low[best][None])          # (1, 64, 64): SAM's mask_input
np.save(os.path.join(T, "prev2.npy"), low[best])               # (64, 64)
np.save(os.path.join(T, "prev4.npy"), low[best][None, None])   # (1, 1, 64, 64)
EOF
for mm in "" --multimask; do
    seg --point "$q2" --mask-input "$T/prev.npy" $mm -o "$T/m.png" --logits "$T/m.npy" > "$T/m.out" ||
        { echo "FAIL: --mask-input $mm"; fail=1; continue; }
    seg --point "$q2" $mm -o "$T/n.png" --logits "$T/n.npy" > /dev/null || fail=1
    if cmp -s "$T/m.npy" "$T/n.npy"; then echo "FAIL: --mask-input $mm changes nothing"; fail=1; fi
    for v in prev2 prev4; do
        seg --point "$q2" --mask-input "$T/$v.npy" $mm -o "$T/v.png" --logits "$T/v.npy" > /dev/null || fail=1
        cmp -s "$T/v.npy" "$T/m.npy" && cmp -s "$T/v.png" "$T/m.png" || { echo "FAIL: $v.npy differs"; fail=1; }
    done
    $PY - "$T" "$SRC" "$q2" "$mm" <<'EOF' || fail=1
import os, sys
import numpy as np, torch
from PIL import Image
T, SRC, q, mm = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "--multimask"
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
import sam_ref, sam_ref_encoder as enc_ref
v = [float(t) for t in q.split(",")]
m = sam_ref.Sam("vit_test").double()
m.load_state_dict({k: t.double() for k, t in torch.load(os.path.join(T, "sam_test.pth")).items()}, strict=True)
img = np.asarray(Image.open(os.path.join(T, "img.png"))).astype(np.float64)
h, w = img.shape
S = m.img_size
x = enc_ref.preprocess(img, S).double()
P = (torch.from_numpy(sam_ref.apply_coords([v[:2]], h, w, S))[None], torch.tensor([[int(v[2])]]))
mask_in = torch.from_numpy(np.load(os.path.join(T, "prev.npy")).astype(np.float64))[None]  # (1, 1, 64, 64)
with torch.no_grad():
    emb = m.image_encoder(x)
    sparse, dense = m.prompt_encoder(P, None, mask_in)
    low, iou = m.mask_decoder(emb, m.prompt_encoder.get_dense_pe(), sparse, dense, mm)
    full = sam_ref.postprocess(low, S, h, w)
low, iou, full = low.numpy(), iou.numpy()[0], full.numpy()[0]
c_low = np.load(os.path.join(T, "m.npy"))
ok = c_low.shape == low.shape
e = np.abs(c_low - low).max() / np.abs(low).max() if ok else np.inf
line = [l for l in open(os.path.join(T, "m.out")) if l.startswith("iou:")][0]
c_iou = np.array([float(t) for t in line.split()[1:]])
ei = np.abs(c_iou - iou).max() / np.abs(iou).max() if c_iou.shape == iou.shape else np.inf
best = int(np.argmax(iou))
ref_mask = full[best] > 0
c_mask = np.asarray(Image.open(os.path.join(T, "m.png"))) > 127
diff = c_mask != ref_mask
near = np.abs(full[best]) < 1e-3 * np.abs(full[best]).max()
print("--mask-input%s: logits normwise error %.3g, iou %.3g, mask %d on (ref %d), %d differ away from 0" %
      (" --multimask" if mm else "", e, ei, c_mask.sum(), ref_mask.sum(), (diff & ~near).sum()))
if not (e <= 1e-4 and ei <= 1e-4 and not (diff & ~near).any()):
    print("FAIL: --mask-input against the reference"); sys.exit(1)
EOF
done

refused() { # file-to-name, option args...: exit 1, one line naming the file
    local f=$1; shift
    seg --point "$p1" -o "$T/x.png" "$@" 2> "$T/err.txt" > /dev/null
    local rc=$?
    if [ $rc -ne 1 ] || [ "$(wc -l < "$T/err.txt")" -ne 1 ] || ! grep -qF "$f" "$T/err.txt"; then
        echo "FAIL: $* exits $rc (expected 1 with one line naming $f):"; cat "$T/err.txt"; fail=1
    else
        echo "refused: $(cat "$T/err.txt")"
    fi
}
refused "$T/emb512.npy" --embedding "$T/emb512.npy"
refused "$T/emb3.npy" --embedding "$T/emb3.npy"
refused "$T/img.png" --embedding "$T/img.png"
refused "$T/m32.npy" --mask-input "$T/m32.npy"
refused "$T/m3.npy" --mask-input "$T/m3.npy"
refused "$T/mnan.npy" --mask-input "$T/mnan.npy"
if [ -e "$T/x.png" ]; then echo "FAIL: a refused run wrote its output"; fail=1; fi

if [ $fail -ne 0 ]; then echo "test_segment_mask_input: FAILED"; exit 1; fi
echo "test_segment_mask_input: passed"
