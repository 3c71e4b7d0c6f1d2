#!/usr/bin/env bash
# tests/finetune/test_segment_vit_t.sh — `mrisam embed` and `mrisam segment` on a MobileSAM (vit_t) file against
# MobileSAM's own predictor (tests/finetune/golden/mobilesam_test.pth, gen_mobilesam_golden.py).
#
# The file: MobileSAM's exact keys for vit_t_test (golden/mobilesam_vit_t_test.keys: names, order, int64 0-dim
# num_batches_tracked) with the generator's weights (counter_init + its BatchNorm / decoder rules, the golden's seed),
# written by torch.save as MobileSAM's users save theirs. The golden's 256×192 RGB image as a PNG (its longest side is
# the model's input: no resampling). Pass: embed's output within 1e-4·max|ref| of MobileSAM's embedding; segment with
# two points (--multimask) and with a box: low-res logits and printed IoU within 1e-4·max|ref| of MobileSAM's
# predictor, the mask PNG equal to its highest-IoU mask > 0 except where |ref logit| < 1e-3·max. Also: a drawn point
# (seed printed) gives the same mask and logits with --embedding (embed's output) as with the encoder; the encoder
# alone (keys without image_encoder., as an encoder-only export) embeds byte-identically; an unknown
# key outside the encoder is refused with exit 1 and a one-line message naming the file; `mrisam predict` runs the
# file (a label PNG of the image's size with classes 0..2).
set -u
MRISAM=${MS_MRISAM:-mrisam}
SRC=${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
if ! $PY -c "import torch, numpy, PIL" 2>/dev/null; then echo "skip: no torch/numpy/PIL in $PY"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0

$PY - "$T" "$SRC" <<'EOF' || exit 1
import math, os, sys
import numpy as np, torch
from PIL import Image
T, SRC = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
import counter_init as ci
g = torch.load(os.path.join(SRC, "tests", "finetune", "golden", "mobilesam_test.pth"))
seed = int(g["meta.seed"][0])
sd = {}
for line in open(os.path.join(SRC, "tests", "finetune", "golden", "mobilesam_vit_t_test.keys")):
    k, dt, shp = line.split()
    shape = () if shp == "-" else tuple(int(d) for d in shp.split(","))
    if dt == "int64":
        sd[k] = torch.tensor(3, dtype=torch.int64).reshape(shape)
        continue
    v = torch.from_numpy(ci.counter_init(k, shape, seed))
    if k.startswith("image_encoder."):  # gen_mobilesam_golden.py's counter_value
        if k.endswith(".running_var"): v = 1.0 + 5.0 * v
        elif k.endswith(".running_mean"): v = 5.0 * v
        elif k.endswith(".attention_biases"): v = 8.0 * v
    elif ("token_to_image" in k or "image_to_token" in k) and len(shape) == 2:
        v = v * np.float32(1.0 / math.sqrt(shape[1]))
    sd[k] = v
torch.save(sd, os.path.join(T, "mobilesam_test.pth"))
torch.save({k[14:]: v for k, v in sd.items() if k.startswith("image_encoder.")}, os.path.join(T, "encoder.pth"))
sd["mask_decoder.extra.weight"] = torch.zeros(2)
torch.save(sd, os.path.join(T, "extra.pth"))
Image.fromarray(g["image"].numpy(), "RGB").save(os.path.join(T, "img.png"))
EOF

# compare.py NAME:KIND...: KIND emb (NAME = EMB.npy vs the golden) or point/box (NAME.npy, NAME.png, NAME.out); one
# Python for all (torch's import is most of a run)
cat > "$T/compare.py" <<'EOF'
import os, sys
import numpy as np, torch
from PIL import Image
T, SRC = sys.argv[1:3]
g = torch.load(os.path.join(SRC, "tests", "finetune", "golden", "mobilesam_test.pth"))
def close(what, c, r, tol=1e-4):
    r = r.numpy() if hasattr(r, "numpy") else r
    if c.size != r.size:
        print("FAIL %s: %s values, golden %s" % (what, c.shape, r.shape)); return False
    e = np.abs(c.reshape(-1) - r.reshape(-1)).max() / np.abs(r).max()
    print("%s: normwise error %.3g" % (what, e))
    return e <= tol
ok = True
for arg in sys.argv[3:]:
    name, kind = arg.split(":")
    if kind == "emb":
        ok &= close(name, np.load(os.path.join(T, name)), g["emb"])
        continue
    ok &= close(name + " logits", np.load(os.path.join(T, name + ".npy")), g[kind + ".low"])
    line = [l for l in open(os.path.join(T, name + ".out")) if l.startswith("iou:")][0]
    ok &= close(name + " iou", np.array([float(t) for t in line.split()[1:]]), g[kind + ".iou"])
    ref = g[kind + ".masks"].numpy()
    c = np.asarray(Image.open(os.path.join(T, name + ".png"))) > 127
    diff = c != (ref > 0)
    near = np.abs(ref) < 1e-3 * np.abs(ref).max()
    print("%s: mask %d pixels on (MobileSAM %d), %d differ beyond 1e-3·max" % (name, c.sum(), (ref > 0).sum(),
                                                                               (diff & ~near).sum()))
    ok &= c.shape == ref.shape and not (diff & ~near).any()
if not ok:
    print("FAIL: compare"); sys.exit(1)
EOF

cmp_args=()
if ! "$MRISAM" embed --ckpt "$T/mobilesam_test.pth" --image "$T/img.png" -o "$T/emb.npy" --threads 2; then
    echo "FAIL: mrisam embed"; fail=1
else
    cmp_args+=(emb.npy:emb)
fi
seg() { # name kind args...
    local name=$1 kind=$2; shift 2
    if ! "$MRISAM" segment --ckpt "$T/mobilesam_test.pth" --image "$T/img.png" -o "$T/$name.png" \
        --logits "$T/$name.npy" --threads 2 "$@" > "$T/$name.out"; then
        echo "FAIL: mrisam segment ($name)"; fail=1; return 1
    fi
    cat "$T/$name.out"
    [ "$kind" = none ] || cmp_args+=("$name:$kind")
}
seg point point --point 100,80 --point 200,150,0 --multimask
seg box box --box 40,30,180,140
[ ${#cmp_args[@]} -eq 0 ] || $PY "$T/compare.py" "$T" "$SRC" "${cmp_args[@]}" || fail=1

# an encoder-only file (keys without image_encoder.) embeds the same
if "$MRISAM" embed --ckpt "$T/encoder.pth" --image "$T/img.png" -o "$T/emb_enc.npy" --threads 2 2> /dev/null &&
    cmp -s "$T/emb.npy" "$T/emb_enc.npy"; then
    echo "encoder-only file: the same embedding"
else
    echo "FAIL: embed of the encoder-only file"; fail=1
fi

# a drawn point: the encoder run and embed's output give the same prediction
seed=${MS_TEST_SEED:-$RANDOM}; echo "seed: $seed (replay with MS_TEST_SEED=$seed)"; RANDOM=$seed
pt="$((RANDOM % 256)),$((RANDOM % 192))"
if [ -f "$T/emb.npy" ] && seg enc none --point "$pt" --multimask && seg reuse none --point "$pt" --multimask \
    --embedding "$T/emb.npy"; then
    if ! cmp -s "$T/enc.png" "$T/reuse.png" || ! cmp -s "$T/enc.npy" "$T/reuse.npy"; then
        echo "FAIL: --point $pt: --embedding gives another mask or logits than the encoder"; fail=1
    else
        echo "--point $pt: the same mask and logits with --embedding"
    fi
fi

# predict (automatic, no prompts: mask tokens 1..3 as classes) runs vit_t: a label PNG of the image's size, classes 0..2
if ! "$MRISAM" predict --ckpt "$T/mobilesam_test.pth" --in "$T/img.png" -o "$T/pred.png" --threads 2 > "$T/pred.out"; then
    echo "FAIL: mrisam predict"; fail=1
else
    cat "$T/pred.out"
    $PY -c "
import sys, numpy as np
from PIL import Image
a = np.asarray(Image.open(sys.argv[1]))
print('predict: %s, classes %s' % (a.shape, np.unique(a).tolist()))
sys.exit(0 if a.shape == (192, 256) and a.max() <= 2 else 1)" "$T/pred.png" || { echo "FAIL: predict's output"; fail=1; }
fi

"$MRISAM" segment --ckpt "$T/extra.pth" --image "$T/img.png" -o "$T/x.png" --point 10,10 > /dev/null 2> "$T/err.txt"
rc=$?
if [ $rc -ne 1 ] || ! tail -n 1 "$T/err.txt" | grep -q "extra.pth"; then
    echo "FAIL: an unknown key: exit $rc (expected 1, the file named):"; cat "$T/err.txt"; fail=1
else
    echo "unknown key refused: $(tail -n 1 "$T/err.txt")"
fi

if [ $fail -ne 0 ]; then echo "test_segment_vit_t: FAILED"; exit 1; fi
echo "test_segment_vit_t: passed"
