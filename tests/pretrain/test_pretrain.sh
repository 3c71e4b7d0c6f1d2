#!/usr/bin/env bash
# tests/pretrain/test_pretrain.sh — `mrisam pretrain` end to end on real MRI (ch2 and ch2better of Debian's
# mricron-data), vit_test with a small MAE decoder on the CPU:
#  1. the held-out reconstruction loss (fixed slices, fixed masks) falls clearly below its starting value;
#  2. RUN/ holds config.json, log.jsonl (docs/CLI.md keys), TensorBoard events, checkpoints with DONE, PNG panels and
#     the export (.pth and .safetensors);
#  3. a run killed with SIGKILL and resumed gives the same loss sequence and the same export, bit for bit;
#  4. SIGINT: the step finishes, a checkpoint is written, exit 75; --resume completes the run identically;
#  8. --input-size 128 from a 256 model trains and its export strict-loads;
#  6. injected non-finite losses are skipped, counted and rolled back; 7. --freeze-encoder-epochs keeps the encoder;
#  5. export-weights of the last checkpoint equals the run's own export; the export loads with strict loading in the PyTorch reference (tests/reference/sam_ref.py), and its encoder
#     output on an image equals `mrisam embed`'s (max|c - r| <= 1e-4 max|r|).
set -u
MRISAM=${MS_MRISAM:-mrisam}
SRC=${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
TPL=/usr/share/mricron/templates
[ -f "$TPL/ch2.nii.gz" ] && [ -f "$TPL/ch2better.nii.gz" ] || { echo "skip: mricron-data not installed"; exit 77; }
$PY -c "import torch, numpy, PIL" 2>/dev/null || { echo "skip: no torch/numpy/PIL in $PY"; exit 77; }
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
check() { if [ "$1" -ne 0 ]; then echo "FAIL: $2"; fail=1; else echo "ok: $2"; fi; }

"$MRISAM" ingest "$TPL/ch2.nii.gz" "$TPL/ch2better.nii.gz" --axis axial -o "$T/store" 2>"$T/ingest.log"
check $? "ingest ch2 + ch2better"
A="--store $T/store --init random --model vit_test --batch-size 4 --decoder-dim 128 --decoder-depth 2
   --decoder-heads 4 --lr 1e-3 --val-slices 16 --threads 2 --seed 3"

# 1 + 2: learning, and the RUN/ layout
"$MRISAM" pretrain $A --max-steps 60 --val-every 30 --save-every 30 --keep-last 1 -o "$T/run" >"$T/run.log" 2>&1
check $? "pretrain 60 steps"
$PY - "$T/run" <<'PYEND'
import json, os, sys
run = sys.argv[1]
lines = [json.loads(l) for l in open(os.path.join(run, "log.jsonl"))]
val = [l for l in lines if l["split"] == "val"]
train = [l for l in lines if l["split"] == "train"]
keys = {"step", "epoch", "split", "loss", "loss_fg", "loss_bg", "lr", "grad_norm", "img_per_s", "skipped", "t"}
ok = True
def need(c, msg):
    global ok
    print(("ok: " if c else "FAIL: ") + msg)
    ok &= bool(c)
need(len(train) == 60 and keys <= set(train[0]), "60 train lines with the docs/CLI.md keys")
need(val and val[0]["step"] == 0 and val[-1]["step"] == 60, "validation at steps 0 and 60")
need(val[-1]["loss"] < 0.8 * val[0]["loss"],
     "held-out loss %.4f -> %.4f (must fall below 80%%)" % (val[0]["loss"], val[-1]["loss"]))
for p in ["config.json", "ckpt/step_00000060/DONE", "ckpt/step_00000060/model.safetensors",
          "ckpt/step_00000060/optim.safetensors", "val/step_00000060.png", "sam_mri_vit_test.pth",
          "sam_mri_vit_test.safetensors"]:
    need(os.path.exists(os.path.join(run, p)), p)
need(not os.path.exists(os.path.join(run, "ckpt/step_00000030")), "--keep-last 1 pruned step 30")
need(any(f.startswith("events.out.tfevents.") for f in os.listdir(os.path.join(run, "tb"))), "tensorboard events")
sys.exit(0 if ok else 1)
PYEND
check $? "log, layout and learning"

# 3: SIGKILL and resume == uninterrupted
B="$A --max-steps 16 --val-every 100 --save-every 4"
"$MRISAM" pretrain $B -o "$T/a" >/dev/null 2>&1
check $? "uninterrupted run"
"$MRISAM" pretrain $B -o "$T/b" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 1200); do [ -f "$T/b/ckpt/step_00000008/DONE" ] && break; sleep 0.05; done
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
"$MRISAM" pretrain $B --resume "$T/b" -o "$T/b" >"$T/resume.log" 2>&1
check $? "resume after SIGKILL ($(grep -o 'resuming from [^ ]*' "$T/resume.log"))"
$PY - "$T/a/log.jsonl" "$T/b/log.jsonl" <<'PYEND'
import json, sys
def seq(p):
    d = {}
    for l in open(p):
        j = json.loads(l)
        if j["split"] == "train":
            d[j["step"]] = j["loss"]  # a resumed run rewrites the steps after its checkpoint
    return d
a, b = seq(sys.argv[1]), seq(sys.argv[2])
same = sorted(a) == sorted(b) and all(a[k] == b[k] for k in a)
print(("ok" if same else "FAIL") + ": loss sequence after SIGKILL + resume is bit-identical (%d steps)" % len(a))
sys.exit(0 if same else 1)
PYEND
check $? "bit-exact resume"
cmp -s "$T/a/sam_mri_vit_test.safetensors" "$T/b/sam_mri_vit_test.safetensors"
check $? "identical export after SIGKILL + resume"

# export-weights of the final checkpoint == the run's own export
"$MRISAM" export-weights "$T/a" -o "$T/a_export.safetensors" >/dev/null
check $? "export-weights"
cmp -s "$T/a/sam_mri_vit_test.safetensors" "$T/a_export.safetensors"
check $? "export-weights equals the run's export"

# 4: SIGINT -> checkpoint, exit 75, resumable
"$MRISAM" pretrain $B -o "$T/c" >"$T/c.log" 2>&1 &
pid=$!
for _ in $(seq 1200); do [ -f "$T/c/ckpt/step_00000004/DONE" ] && break; sleep 0.05; done
kill -INT $pid
wait $pid
rc=$?
[ $rc -eq 75 ]
check $? "SIGINT exits 75 (got $rc)"
ls "$T"/c/ckpt/*/DONE >/dev/null 2>&1
check $? "checkpoint written on SIGINT"
"$MRISAM" pretrain $B --resume "$T/c" -o "$T/c" >/dev/null 2>&1
check $? "resume after SIGINT"
cmp -s "$T/a/sam_mri_vit_test.safetensors" "$T/c/sam_mri_vit_test.safetensors"
check $? "identical export after SIGINT + resume"

# 6: non-finite losses are skipped and counted; K in a row roll back to the last checkpoint at half the lr
MRISAM_TEST_NAN=6,3 "$MRISAM" pretrain $A --max-steps 10 --val-every 100 --save-every 4 --max-bad-steps 2 \
    -o "$T/nan" >"$T/nan.log" 2>&1
check $? "run with injected non-finite losses completes"
grep -q "rolled back to .*step_00000004, lr scale now 0.5" "$T/nan.log"
check $? "two non-finite steps in a row roll back to step 4 at half the lr"
grep '"split": "train"' "$T/nan/log.jsonl" | tail -1 | grep -q '"skipped": 3'
check $? "skipped steps are counted in log.jsonl"

# 7: --freeze-encoder-epochs: the encoder does not move during the decoder-only warm-up (and does otherwise)
"$MRISAM" pretrain $A --max-steps 6 --val-every 100 --save-every 2 --keep-last 10 --freeze-encoder-epochs 1 \
    -o "$T/frz" >/dev/null 2>&1
check $? "decoder-only warm-up run"
"$MRISAM" export-weights "$T/frz/ckpt/step_00000002" -o "$T/f2.safetensors" >/dev/null &&
    "$MRISAM" export-weights "$T/frz/ckpt/step_00000006" -o "$T/f6.safetensors" >/dev/null &&
    cmp -s "$T/f2.safetensors" "$T/f6.safetensors"
check $? "encoder unchanged between steps 2 and 6 of the warm-up"
"$MRISAM" export-weights "$T/a/ckpt/step_00000012" -o "$T/a12.safetensors" >/dev/null &&
    ! cmp -s "$T/a12.safetensors" "$T/a/sam_mri_vit_test.safetensors"
check $? "without the warm-up the encoder moves (steps 12 and 16 differ)"

# 8: --input-size other than native (vit_test is 256): trains at 128 with interpolated position tables; the export
#    keeps the native shapes and strict-loads (checked in step 5's Python below)
"$MRISAM" pretrain $A --input-size 128 --max-steps 4 --val-every 100 --save-every 100 -o "$T/rs" >"$T/rs.log" 2>&1
check $? "pretrain at --input-size 128"
grep -q "input 128" "$T/rs.log"
check $? "runs at 128"

# 5: strict load in PyTorch, encoder output == mrisam embed
$PY - "$T" "$SRC" <<'PYEND'
import os, sys
import numpy as np, torch
from PIL import Image
T, SRC = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
import sam_ref
m = sam_ref.Sam("vit_test")
sd = torch.load(os.path.join(T, "run", "sam_mri_vit_test.pth"))
m.load_state_dict(sd, strict=True)
m2 = sam_ref.Sam("vit_test")
m2.load_state_dict(torch.load(os.path.join(T, "rs", "sam_mri_vit_test.pth")), strict=True)  # the 128-px run's export
rng = np.random.default_rng(5)
yy, xx = np.mgrid[0:200, 0:256]
img = (120 + 90 * np.sin(xx / 9.0) * np.cos(yy / 6.0) + rng.integers(-15, 15, (200, 256))).clip(0, 255).astype(np.uint8)
Image.fromarray(img, "L").save(os.path.join(T, "img.png"))
np.save(os.path.join(T, "img.npy"), img.astype(np.float64))
torch.save(m.image_encoder.double().state_dict(), os.path.join(T, "enc.pt"))
print("ok: strict load of the export in the PyTorch reference")
PYEND
check $? "export loads strictly in PyTorch"
"$MRISAM" embed --ckpt "$T/run/sam_mri_vit_test.pth" --image "$T/img.png" -o "$T/img.emb.npy" --threads 2
check $? "mrisam embed with the export"
$PY - "$T" "$SRC" <<'PYEND'
import os, sys
import numpy as np, torch, torch.nn.functional as F
T, SRC = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
import sam_ref_encoder as ref
enc = ref.build("vit_test").double()
enc.load_state_dict(torch.load(os.path.join(T, "enc.pt")), strict=True)
px = torch.from_numpy(np.load(os.path.join(T, "img.npy")))[:, :, None].repeat(1, 1, 3)
h, w = px.shape[:2]
nh, nw = ref.resize_longest_shape(h, w, 256)
x = F.interpolate(px.permute(2, 0, 1)[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
mean = torch.tensor(ref.PIXEL_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
std = torch.tensor(ref.PIXEL_STD, dtype=torch.float64).view(1, 3, 1, 1)
x = F.pad((x - mean) / std, (0, 256 - nw, 0, 256 - nh))
with torch.no_grad():
    r = enc(x).numpy()
c = np.load(os.path.join(T, "img.emb.npy")).astype(np.float64)
err = np.abs(c - r).max() / np.abs(r).max()
print(("ok" if err <= 1e-4 else "FAIL") + ": exported encoder, mrisam vs PyTorch: max|c-r|/max|r| = %.3g" % err)
sys.exit(0 if err <= 1e-4 else 1)
PYEND
check $? "exported encoder output equals PyTorch"

if [ $fail -eq 0 ]; then echo "test_pretrain: all passed"; else echo "test_pretrain: FAILED"; cat "$T/run.log"; fi
exit $fail
