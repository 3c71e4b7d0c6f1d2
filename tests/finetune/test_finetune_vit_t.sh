#!/usr/bin/env bash
# tests/finetune/test_finetune_vit_t.sh — `mrisam finetune` on MobileSAM's TinyViT encoder (vit_t_test: TinyViT at
# 256 with SAM's prompt encoder and mask decoder; pretrain/tinyvit.h) on the CPU, with the brain mask of mricron's ch2
# (tests/finetune/ch2_brainmask.sh):
#  1. learning: random init, full / decoder, 8 training slices, cached embeddings: best validation Dice > MIN_DICE;
#     then predict 20 axial slices of ch2 (cropped, same world grid) from RUN/ (the checkpoint rebuilds the vit_t model): Dice against ch2bet > 0.5.
#  2. every method × scope runs 3 steps with finite losses, and the trainable set is the docs/FINETUNE.md table
#     for TinyViT: the BatchNorm running statistics and the classifier (norm_head, head) are never trainable; the
#     running statistics change in training only when the BatchNorms train (full, encoder+decoder) or under
#     --compat-finetune-sam (finetune-SAM keeps the model in train mode); LoRA's compat mode also trains layers.0.
#  2b. a LoRA encoder+decoder run exported (--layout sam: MobileSAM's keys, LoRA merged per head; --layout
#     finetune-sam) predicts what the run predicts.
#  3. --cache-embeddings with --compat-finetune-sam is refused on vit_t (exit 2).
#  4. a full encoder+decoder run (BatchNorm in training mode) stopped and resumed equals the uninterrupted run.
set -u
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
MRISAM=${MS_MRISAM:-mrisam}
PY=/usr/bin/python3
MIN_DICE=${MS_FT_MIN_DICE:-0.7}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
check() { if [ "$1" -ne 0 ]; then echo "FAIL: $2"; fail=1; else echo "ok: $2"; fi; }
t0=$(date +%s)
. "$(dirname "$0")/ch2_brainmask.sh"

cat > "$T/split.json" <<'EOF'
{"version": 1, "seed": "0", "val_fraction": 0.2, "shots": 8, "shot_unit": "slice",
 "stores": [{"path": "brain", "single_volume": 1,
             "train": [[20, 1], [30, 1], [40, 1], [50, 1], [60, 1], [70, 1], [80, 1], [88, 1]],
             "val": [[100, 24]]}]}
EOF
A="--store $T/brain --init random --model vit_t_test --threads 2 --split $T/split.json"

# 1: learning, then predict from the run
"$MRISAM" finetune $A --method full --scope decoder --max-steps ${MS_VIT_T_STEPS:-60} --warmup-steps 10 --lr 3e-4 \
    --seed 2 --val-every 25 --patience 1000 --cache-embeddings -o "$T/run" > "$T/run.log" 2>&1
rc=$?
check $rc "finetune vit_t_test ($(tail -1 "$T/run.log"))"
[ $rc -ne 0 ] && cat "$T/run.log"
$PY - "$T/run" "$MIN_DICE" <<'PYEND'
import json, os, sys
run, min_dice = sys.argv[1], float(sys.argv[2])
val = [json.loads(l) for l in open(os.path.join(run, "log.jsonl"))]
val = [(v["step"], v["dice"]["brain"]["1"]) for v in val if v["split"] == "val"]
meta = json.load(open(os.path.join(run, "best", "meta.json")))
print("validation Dice by step:", val)
ok = meta["model"] == "vit_t_test" and meta["dice"]["brain"]["1"] > min_dice
print(("ok" if ok else "FAIL") + ": model %s, best validation Dice %.4f > %.2f" % (meta["model"], meta["dice"]["brain"]["1"], min_dice))
sys.exit(0 if ok else 1)
PYEND
check $? "vit_t_test learns the brain mask"
# 20 axial slices of ch2 around the training ones (a cropped copy on the same grid: world coordinates kept)
$PY - "$TPL/ch2.nii.gz" "$TPL/ch2bet.nii.gz" "$T" <<'PYEND'
import sys
import nibabel as nib
import numpy as np
for src, dst in ((sys.argv[1], "crop.nii.gz"), (sys.argv[2], "crop_gt.nii.gz")):
    v = nib.load(src)
    a = v.affine.copy()
    a[:3, 3] += a[:3, 2] * 70
    nib.save(nib.Nifti1Image(np.asarray(v.dataobj)[:, :, 70:90], a, v.header), "%s/%s" % (sys.argv[3], dst))
PYEND
"$MRISAM" predict --ckpt "$T/run" --in "$T/crop.nii.gz" -o "$T/pred.nii.gz" --threads 2 > "$T/pred.log" 2>&1
rc=$?
check $rc "predict 20 slices of ch2 from the vit_t_test run ($(tail -1 "$T/pred.log"))"
[ $rc -ne 0 ] && cat "$T/pred.log"
$PY - "$T/pred.nii.gz" "$T/crop_gt.nii.gz" <<'PYEND'
import sys
import nibabel as nib
import numpy as np
p, g = nib.load(sys.argv[1]), nib.load(sys.argv[2])
a, b = np.asarray(p.dataobj) > 0, np.asarray(g.dataobj) > 0
dice = 2 * (a & b).sum() / max(1, a.sum() + b.sum())
ok = p.shape == g.shape and np.allclose(p.affine, g.affine) and dice > 0.5
print(("ok" if ok else "FAIL") + ": prediction on ch2's grid %s, brain Dice %.3f > 0.5 (8 training slices)" % (p.shape, dice))
sys.exit(0 if ok else 1)
PYEND
check $? "prediction"

# 2: every method × scope, and the BatchNorm rule
for m in full lora adapter; do
    for s in decoder encoder+decoder; do
        for compat in 0 1; do
            [ $compat = 1 ] && [ $s = decoder ] && [ $m != lora ] && continue
            extra=""; [ $compat = 1 ] && extra="--compat-finetune-sam"
            d="$T/r_${m}_${s/+/_}_$compat"
            "$MRISAM" finetune $A --method $m --scope $s $extra --max-steps 3 --warmup-steps 1 --val-every 100 \
                --val-slices 2 --batch-size 2 --seed 5 -o "$d" > "$d.log" 2>&1
            rc=$?
            check $rc "$m / $s compat=$compat, 3 steps"
            [ $rc -ne 0 ] && tail -5 "$d.log"
        done
    done
done
$PY - "$T" <<'PYEND'
import json, os, sys, struct
T = sys.argv[1]
def st_read(p):
    with open(p, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        base = 8 + n
        data = {}
        for k, v in h.items():
            if k == "__metadata__":
                continue
            a, b = v["data_offsets"]
            f.seek(base + a)
            data[k] = f.read(b - a)
    return data
ok = True
def need(c, msg):
    global ok
    print(("ok: " if c else "FAIL: ") + msg)
    ok &= bool(c)
for m in ["full", "lora", "adapter"]:
    for s in ["decoder", "encoder_decoder"]:
        for compat in [0, 1]:
            d = os.path.join(T, "r_%s_%s_%d" % (m, s, compat))
            if not os.path.isdir(d):
                continue
            lines = [json.loads(l) for l in open(os.path.join(d, "log.jsonl"))]
            tr = [l for l in lines if l["split"] == "train"]
            need(len(tr) == 3 and all(l["loss"] == l["loss"] for l in tr), "%s: 3 finite training losses" % d)
            ck = os.path.join(d, "ckpt", "step_00000003")
            opt = st_read(os.path.join(ck, "optim.safetensors"))
            names = set(k.split(".", 1)[1] if k.startswith(("m.", "v.", "exp_avg.", "exp_avg_sq.")) else k for k in opt)
            bad = [k for k in names if "running_" in k or "norm_head." in k or ".head." in k and "mask_decoder" not in k]
            need(not bad, "%s: no BatchNorm statistics or classifier in the optimizer (%s)" % (d, bad[:3]))
            enc = [k for k in names if k.startswith("image_encoder.")]
            if m == "full":
                need((len(enc) > 0) == (s == "encoder_decoder"), "%s: encoder trains iff encoder+decoder" % d)
            elif s == "encoder_decoder":
                peft = [k for k in enc if ("linear_" in k if m == "lora" else "Adapter" in k)]
                l0 = [k for k in enc if k.startswith("image_encoder.layers.0.")]
                other = [k for k in enc if k not in peft and k not in l0]
                need(peft and not other, "%s: the encoder trains its %s tensors only" % (d, m))
                need(bool(l0) == (m == "lora" and compat == 1), "%s: layers.0 trains iff LoRA compat" % d)
            # BatchNorm statistics: compare the model at step 3 with the random initialisation's running stats
            model = st_read(os.path.join(ck, "model.safetensors"))
            rv = [k for k in model if k.endswith("running_var")]
            moved = any(model[k] != struct.pack("<%df" % (len(model[k]) // 4), *([1.0] * (len(model[k]) // 4))) for k in rv)
            want = (m == "full" and s == "encoder_decoder") or compat == 1
            need(moved == want, "%s: BatchNorm running statistics %s" % (d, "updated" if want else "untouched"))
sys.exit(0 if ok else 1)
PYEND
check $? "trainable sets and BatchNorm modes"

# 2b: a LoRA encoder+decoder run exported as MobileSAM weights (LoRA merged per head) and in finetune-SAM's layout:
#     both predict what the run predicts (labels equal but for near-ties: >= 99.9 % of the voxels)
R2="$T/r_lora_encoder_decoder_0"
for lay in sam finetune-sam; do
    "$MRISAM" export-weights "$R2/ckpt/step_00000003" --layout $lay -o "$T/exp_$lay.pth" > "$T/exp_$lay.log" 2>&1
    check $? "export-weights --layout $lay of a vit_t_test LoRA run"
done
"$MRISAM" predict --ckpt "$R2/ckpt/step_00000003" --in "$T/crop.nii.gz" -o "$T/p_run.nii.gz" --threads 2 > /dev/null 2>&1
check $? "predict from the LoRA run"
for lay in sam finetune-sam; do
    "$MRISAM" predict --ckpt "$T/exp_$lay.pth" --in "$T/crop.nii.gz" -o "$T/p_$lay.nii.gz" --axis axial \
        --threads 2 > "$T/p_$lay.log" 2>&1
    check $? "predict from the $lay export ($(tail -1 "$T/p_$lay.log"))"
done
$PY - "$T/p_run.nii.gz" "$T/p_sam.nii.gz" "$T/p_finetune-sam.nii.gz" <<'PYEND'
import sys
import nibabel as nib
import numpy as np
ref = np.asarray(nib.load(sys.argv[1]).dataobj)
ok = True
for p in sys.argv[2:]:
    same = (np.asarray(nib.load(p).dataobj) == ref).mean()
    print(("ok" if same >= 0.999 else "FAIL") + ": %s equals the run's prediction in %.5f of the voxels" % (p, same))
    ok &= same >= 0.999
sys.exit(0 if ok else 1)
PYEND
check $? "exports predict as the run"

# 3: the cache is refused where BatchNorm runs in train mode
"$MRISAM" finetune $A --method full --scope decoder --compat-finetune-sam --cache-embeddings --max-steps 1 \
    -o "$T/bad" > "$T/bad.log" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q "BatchNorm" "$T/bad.log"
check $? "--cache-embeddings with --compat-finetune-sam refused on vit_t (exit $rc: $(head -c 160 "$T/bad.log"))"

# 4: exact resume with training-mode BatchNorm (full, encoder+decoder): stopped after step 3, resumed, equal to the
#    uninterrupted run (losses, weights with the running statistics, optimizer state)
R="$A --method full --scope encoder+decoder --batch-size 2 --max-steps 6 --warmup-steps 1 --val-every 100 --val-slices 2
   --save-every 3 --seed 9"
"$MRISAM" finetune $R -o "$T/u" > "$T/u.log" 2>&1
check $? "uninterrupted full encoder+decoder run"
MRISAM_TEST_STOP=3,0 "$MRISAM" finetune $R -o "$T/i" > "$T/i.log" 2>&1
rc=$?
check $(( rc != 75 )) "stopped after step 3 (exit $rc)"
"$MRISAM" finetune $R --resume "$T/i" -o "$T/i" > "$T/r.log" 2>&1
check $? "resumed"
$PY - "$T/u/log.jsonl" "$T/i/log.jsonl" <<'PYEND'
import json, sys
seq = lambda p: {(j["split"], j["step"]): (j["loss"], j.get("dice")) for j in map(json.loads, open(p))}
a, b = seq(sys.argv[1]), seq(sys.argv[2])
print(("ok" if a == b and len(a) == 7 else "FAIL") + ": losses of the resumed run equal the uninterrupted run's (%d lines)" % len(a))
sys.exit(0 if a == b and len(a) == 7 else 1)
PYEND
check $? "bit-exact resume (losses)"
cmp -s "$T/u/ckpt/step_00000006/model.safetensors" "$T/i/ckpt/step_00000006/model.safetensors" &&
    cmp -s "$T/u/ckpt/step_00000006/optim.safetensors" "$T/i/ckpt/step_00000006/optim.safetensors"
check $? "identical final weights (BatchNorm statistics included) and optimizer state"

echo "test_finetune_vit_t: $(( $(date +%s) - t0 )) s"
exit $fail
