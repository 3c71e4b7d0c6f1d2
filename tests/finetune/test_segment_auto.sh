#!/usr/bin/env bash
# tests/finetune/test_segment_auto.sh — `mrisam segment --auto` (SAM's automatic mask generator, finetune/amg.h)
# against tests/reference/amg_ref.py (segment_anything's amg.py helpers, transcribed or, with
# MS_SAM_UPSTREAM=<segment-anything checkout>, upstream's own; torchvision's nms transcribed).
#
# 1. Synthetic candidates (amg_driver): blobs of random centre, radius, slope and sign, near-duplicates, empty and
#    full masks, distinct predicted IoUs; random thresholds (seed printed). Filters, stability score, boxes, NMS, RLE,
#    area, bbox and order must equal the reference's exactly, and the label map the reference's painting rule.
# 2. End to end on the vit_test checkpoint of test_segment.sh with its last hypernetwork layers scaled ×30 and the
#    IoU head's bias +0.8, so that random weights give masks with stability scores and predicted IoUs that thresholds
#    can split: a random grid (5..7 points per side), batch size and thresholds, --auto-candidates dumping every
#    candidate. (a) The candidates against sam_ref.py in float64 (grid points mapped by apply_coords, multimask,
#    the predictor's post-processing): normwise ≤ 1e-4. (b) The JSON against the reference's selection of those same
#    candidates with the grid of build_point_grid — exact; the label PNG against the reference's label map.
#    (c) A 4×4 grid with SamAutomaticMaskGenerator's default thresholds (0.88, 0.95, offset 1, NMS 0.7), the same way.
# 3. Usage: --auto with a prompt or --json without --auto exits 2; --points-per-side 0 exits 2.
# What this does not cover: upstream's float64 point coordinates inside the prompt encoder (mrisam's are float32;
# covered by the 1e-4 comparison, not bit for bit), and crops / small-region removal, which --auto does not do.
set -u
MRISAM=${MS_MRISAM:-mrisam}
SRC=${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
DRIVER=${1:-${MS_BINARY_DIR:-.}/amg_driver}
PY=/usr/bin/python3
if ! $PY -c "import torch, numpy, PIL" 2>/dev/null; then echo "skip: no torch/numpy/PIL in $PY"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
seed=${MS_TEST_SEED:-$RANDOM}; echo "seed: $seed (replay with MS_TEST_SEED=$seed)"

# ---- 1. synthetic candidates through the driver
read -r N H W IT ST SO NT < <($PY - "$T" "$seed" <<'EOF'
import os, sys
import numpy as np
T, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
h, w, n = int(rng.integers(20, 60)), int(rng.integers(20, 60)), 80
yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
lg = np.empty((n, h, w), np.float32)
for i in range(n):
    if i % 10 == 0 and i > 0 and rng.random() < 0.5:   # a near-duplicate of an earlier one
        j = int(rng.integers(0, i)); lg[i] = np.roll(lg[j], int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
        continue
    cx, cy = rng.uniform(-5, w + 5), rng.uniform(-5, h + 5)
    r = rng.uniform(0, max(h, w) * 0.7)
    k = rng.uniform(0.05, 4.0)
    d = np.sqrt(((xx - cx) / rng.uniform(0.5, 2)) ** 2 + (yy - cy) ** 2)
    lg[i] = (k * (r - d) + rng.normal(0, 0.3, (h, w))).astype(np.float32)
lg[3] = -5.0                                             # empty
lg[7] = 5.0                                              # full
iou = rng.permutation(np.linspace(0.5, 1.0, n)).astype(np.float32)
pts = rng.uniform(0, [w, h], (n, 2)).astype(np.float32)
lg.tofile(os.path.join(T, "lg.f32")); iou.tofile(os.path.join(T, "iou.f32")); pts.tofile(os.path.join(T, "pts.f32"))
# a threshold of 0 turns its filter off (upstream's rule): then empty masks (stability NaN) come through too
print(n, h, w, round(float(rng.uniform(0.55, 0.8)), 3) if rng.random() < 0.8 else 0,
      round(float(rng.uniform(0.0, 0.6)), 3) if rng.random() < 0.75 else 0,
      round(float(rng.uniform(0.3, 1.5)), 3), round(float(rng.uniform(0.2, 0.9)), 3))
EOF
)
echo "synthetic: $N candidates ${W}x$H, pred IoU > $IT, stability >= $ST (offset $SO), NMS $NT"
if ! "$DRIVER" "$N" "$H" "$W" "$T/lg.f32" "$T/iou.f32" "$T/pts.f32" "$IT" "$ST" "$SO" "$NT" "$T/syn.json" \
    "$T/syn.lab"; then
    echo "FAIL: amg_driver"; fail=1
fi
$PY - "$T" "$SRC" "$N" "$H" "$W" "$IT" "$ST" "$SO" "$NT" <<'EOF' || fail=1
import json, os, sys
import numpy as np, torch
T, SRC = sys.argv[1], sys.argv[2]
n, h, w = (int(v) for v in sys.argv[3:6])
it, st, so, nt = (float(v) for v in sys.argv[6:10])
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
import amg_ref
A, which = amg_ref.amg_module()
lg = torch.from_numpy(np.fromfile(os.path.join(T, "lg.f32"), np.float32).reshape(n, h, w))
iou = torch.from_numpy(np.fromfile(os.path.join(T, "iou.f32"), np.float32))
pts = torch.from_numpy(np.fromfile(os.path.join(T, "pts.f32"), np.float32).reshape(n, 2).astype(np.float64))
ref = amg_ref.select(A, lg, iou, pts, it, st, so, nt)
got = json.load(open(os.path.join(T, "syn.json")))
msgs = amg_ref.compare(got, ref, "synthetic")
lab = np.fromfile(os.path.join(T, "syn.lab"), np.uint16).reshape(h, w)
if not msgs and not np.array_equal(lab, amg_ref.label_map(A, ref, h, w, 65535)):
    msgs.append("synthetic: label map differs from the reference's")
print("synthetic (%s): %d masks, %d overlapping pairs" % (which, len(ref), sum(
    1 for a in range(len(ref)) for b in range(a) if (A.rle_to_mask(ref[a]["segmentation"]) &
                                                   A.rle_to_mask(ref[b]["segmentation"])).any())))
for m in msgs[:10]:
    print("FAIL " + m)
sys.exit(1 if msgs else 0)
EOF

# ---- 2. end to end
$PY "$SRC/tests/reference/sam_ref.py" ckpt "$T/base.pth" vit_test 21 || exit 1
$PY - "$T" <<'EOF' || exit 1
import os, sys
import numpy as np, torch
from PIL import Image
T = sys.argv[1]
sd = torch.load(os.path.join(T, "base.pth"))
for k in sd:
    if "output_hypernetworks_mlps" in k and ".layers.2." in k:
        sd[k] = sd[k] * 30
sd["mask_decoder.iou_prediction_head.layers.2.bias"] += 0.8
torch.save(sd, os.path.join(T, "sam_amg.pth"))
yy, xx = np.mgrid[0:96, 0:128]
g = (127 + 90 * np.sin(xx / 9.0) * np.cos(yy / 6.0) + 30 * ((xx - 60) ** 2 + (yy - 45) ** 2 < 400)).clip(0, 255)
Image.fromarray(g.astype(np.uint8), "L").save(os.path.join(T, "img.png"))
EOF
RANDOM=$seed
pps=$((5 + RANDOM % 3)); ppb=$((1 + RANDOM % 40))
it=0.$((70 + RANDOM % 16)); st=0.$((10 + RANDOM % 40)); nt=0.$((80 + RANDOM % 19))
auto_case() { # name, reference check of the candidates (1/0), mrisam options...
    local name=$1 check=$2; shift 2
    if ! "$MRISAM" segment --ckpt "$T/sam_amg.pth" --image "$T/img.png" --auto -o "$T/$name.png" \
        --json "$T/$name.json" --auto-candidates "$T/$name" --threads 2 "$@" > "$T/$name.out"; then
        echo "FAIL: segment --auto $*"; fail=1; return
    fi
    cat "$T/$name.out"
    $PY - "$T" "$SRC" "$name" "$check" "$@" <<'EOF' || fail=1
import json, os, sys
import numpy as np, torch
from PIL import Image
T, SRC, name, check, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", sys.argv[5:]
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
import amg_ref, sam_ref, sam_ref_encoder as enc_ref
A, which = amg_ref.amg_module()
opt = {"pps": 32, "pit": 0.88, "st": 0.95, "so": 1.0, "nt": 0.7}  # SamAutomaticMaskGenerator's defaults
names = {"--points-per-side": "pps", "--pred-iou-thresh": "pit", "--stability-thresh": "st",
         "--stability-offset": "so", "--box-nms-thresh": "nt"}
for i in range(0, len(args) - 1):
    if args[i] in names:
        opt[names[args[i]]] = float(args[i + 1])
n = int(opt["pps"])
lg = np.load(os.path.join(T, name + ".logits.npy"))   # (P, 3, h, w)
iou = np.load(os.path.join(T, name + ".iou.npy"))     # (P, 3)
P, nm, h, w = lg.shape
msgs = []
if P != n * n or nm != 3:
    print("FAIL: candidates of shape %s for %d points" % (lg.shape, n * n)); sys.exit(1)
pts = A.build_point_grid(n) * np.array([w, h])[None]
if check:  # the candidates themselves: sam_ref in float64
    m = sam_ref.Sam("vit_test").double()
    m.load_state_dict({k: t.double() for k, t in torch.load(os.path.join(T, "sam_amg.pth")).items()}, strict=True)
    img = np.asarray(Image.open(os.path.join(T, "img.png"))).astype(np.float64)
    S = m.img_size
    with torch.no_grad():
        emb = m.image_encoder(enc_ref.preprocess(img, S).double())
        c = torch.from_numpy(sam_ref.apply_coords(pts, h, w, S))[:, None, :]
        sparse, dense = m.prompt_encoder((c, torch.ones(P, 1, dtype=torch.int64)), None, None)
        low, riou = m.mask_decoder(emb, m.prompt_encoder.get_dense_pe(), sparse, dense, True)
        full = sam_ref.postprocess(low, S, h, w).numpy()
    e = np.abs(lg - full).max() / np.abs(full).max()
    ei = np.abs(iou - riou.numpy()).max() / np.abs(riou.numpy()).max()
    print("%s: %d candidates against sam_ref.py: logits normwise %.3g, IoU %.3g" % (name, P * nm, e, ei))
    if not (e <= 1e-4 and ei <= 1e-4):
        msgs.append("%s: candidates differ from the reference" % name)
ref = amg_ref.select(A, torch.from_numpy(lg.reshape(P * nm, h, w)), torch.from_numpy(iou.reshape(-1)),
                     torch.from_numpy(pts.repeat(nm, axis=0)), opt["pit"], opt["st"], opt["so"], opt["nt"])
got = json.load(open(os.path.join(T, name + ".json")))
msgs += amg_ref.compare(got, ref, name)
png = np.asarray(Image.open(os.path.join(T, name + ".png")))
if not np.array_equal(png, amg_ref.label_map(A, ref, h, w)):
    msgs.append("%s: label PNG differs from the reference's label map" % name)
print("%s (%s): %d masks, %d labels in the PNG, as the reference" % (name, which, len(ref), len(np.unique(png)) - 1)
      if not msgs else "")
for s in msgs[:10]:
    print("FAIL " + s)
sys.exit(1 if msgs else 0)
EOF
}
auto_case drawn 1 --points-per-side "$pps" --points-per-batch "$ppb" --pred-iou-thresh "$it" --stability-thresh "$st" \
    --box-nms-thresh "$nt"
auto_case defaults 0 --points-per-side 4

# ---- 3. usage
for bad in "--auto --point 3,4" "--json $T/x.json" "--auto --points-per-side 0"; do
    # shellcheck disable=SC2086
    "$MRISAM" segment --ckpt "$T/sam_amg.pth" --image "$T/img.png" -o "$T/x.png" $bad 2> "$T/err.txt" > /dev/null
    rc=$?
    if [ $rc -ne 2 ] || [ "$(wc -l < "$T/err.txt")" -ne 1 ]; then
        echo "FAIL: segment $bad exits $rc (expected 2 with one line):"; cat "$T/err.txt"; fail=1
    fi
done

if [ $fail -ne 0 ]; then echo "test_segment_auto: FAILED"; exit 1; fi
echo "test_segment_auto: passed"
