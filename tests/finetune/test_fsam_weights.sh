#!/usr/bin/env bash
# tests/finetune/test_fsam_weights.sh — weights in finetune-SAM's layout read back (finetune/sam.h
# ms_sam_sd_from_finetune_sam; docs/FINETUNE.md §finetune-SAM checkpoints).
#
# Ours: a LoRA (encoder blocks 0 and 2 + decoder) and an adapter (encoder blocks 0 and 2 + decoder) vit_test fine-tune
# with --compat-finetune-sam (finetune-SAM's block), reweighted with counter_init values of a random seed (printed;
# ft_check.py reweight: LoRA B non-zero), exported with --layout finetune-sam. Checks:
#  - predict --ckpt X_fs.pth writes the run's labels in every voxel (class c as c, the run's as its values);
#  - embed --ckpt X_fs.pth writes the same bytes as embed --ckpt RUN (LoRA and adapters built as the run has them);
#  - finetune --ckpt X_fs.pth starts from it: with --lr 0 --weight-decay 0 (1 step) the run's base weights are the
#    export's with LoRA merged (float64 W + B·A, 1e-6) and its adapters the export's, exactly; --method lora from the
#    adapter export is refused pointing to --method adapter, no run written.
# Theirs: fsam_golden.py rebuilds the state_dict of finetune-SAM's own LoRA_Sam + adapters (its key list in
# golden/fsam_theirs.json, counter_init values); embed and segment --multimask --logits on one image and point equal
# finetune-SAM's outputs (golden/fsam_theirs_out.npz, < 1e-4 relative); the same file with "module." before every
# key (a saved DataParallel wrapper) gives the same bytes.
set -u
MRISAM=${MS_MRISAM:-mrisam}
SRC=${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
CHK="$SRC/tests/finetune/ft_check.py"
export FT_DIR="$SRC/tests/finetune"
GOLD="$SRC/tests/finetune/golden"
if ! $PY -c "import torch, numpy, nibabel" 2>/dev/null; then echo "skip: no torch/numpy/nibabel in $PY"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
fail=0
t0=$(date +%s)
M() { "$MRISAM" "$@" --threads 2; }
ONE="--max-steps 1 --warmup-steps 1 --val-slices 1 --batch-size 1"
FT="--init random --model vit_test $ONE"

# one Python process makes the inputs, one checks everything at the end (torch is imported once each)
$PY - "$GOLD" <<'EOF' || exit 1
import os, sys
sys.path.insert(0, os.environ["FT_DIR"])
import fsam_golden as G, ft_check as C
G.main(["weights", sys.argv[1] + "/fsam_theirs.json", "theirs.pth"])
G.main(["weights", sys.argv[1] + "/fsam_theirs.json", "theirs_mod.pth", "module"])
G.main(["image", "img.png"])
C.make(".")
EOF

# ---- theirs ----
for w in theirs theirs_mod; do
    M embed --ckpt $w.pth --image img.png -o emb_$w.npy > /dev/null || fail=1
    M segment --ckpt $w.pth --image img.png --point 100,140 --multimask -o m_$w.png --logits lo_$w.npy > /dev/null \
        || fail=1
done
cmp -s emb_theirs.npy emb_theirs_mod.npy && cmp -s lo_theirs.npy lo_theirs_mod.npy \
    || { echo "FAIL: the \"module.\" file computes something else"; fail=1; }

# ---- ours ----
M ingest --labels pairs.csv -o organs --keep-paths --keep-empty --quiet || exit 1
# shellcheck disable=SC2086
M finetune --store organs:organs --method lora --scope encoder+decoder --lora-blocks 0,2 --compat-finetune-sam $FT \
    -o run > ft.log 2>&1 || { echo "FAIL: finetune lora"; cat ft.log; exit 1; }
# shellcheck disable=SC2086
M finetune --store organs:organs --method adapter --scope encoder+decoder --adapter-blocks 0,2 --compat-finetune-sam \
    $FT -o run_ad > ft.log 2>&1 || { echo "FAIL: finetune adapter"; cat ft.log; exit 1; }
SEED=${MS_TEST_SEED:-$((RANDOM % 1000 + 1))}
echo "reweight seed $SEED (MS_TEST_SEED=$SEED repeats it)"
$PY "$CHK" reweight run/best "$SEED" -- reweight run_ad/best $((SEED + 1)) || exit 1
for r in run run_ad; do
    M export-weights $r --layout finetune-sam -o ${r}_fs.pth > /dev/null 2>&1 || { echo "FAIL: export $r"; fail=1; }
    M predict --ckpt $r --in in -o p_$r --batch-size 4 > /dev/null || fail=1
    M predict --ckpt ${r}_fs.pth --in in -o p_${r}_fs --batch-size 4 > /dev/null || fail=1
    M embed --ckpt $r --image img.png -o e_$r.npy > /dev/null || fail=1
    M embed --ckpt ${r}_fs.pth --image img.png -o e_${r}_fs.npy > /dev/null || fail=1
    if cmp -s e_$r.npy e_${r}_fs.npy; then echo "$r: embeddings byte-identical"
    else echo "FAIL: $r: embed of the finetune-SAM export differs from the run's"; fail=1; fi
done

# finetune from the exports: one step at learning rate 0 keeps the starting weights
Z="--lr 0 --weight-decay 0 $ONE"
# shellcheck disable=SC2086
M finetune --store organs:organs --ckpt run_fs.pth --method lora --scope decoder $Z -o re_lora > re.log 2>&1 \
    && grep -q "LoRA pairs merged" re.log || { echo "FAIL: finetune from the LoRA export"; cat re.log; fail=1; }
# shellcheck disable=SC2086
M finetune --store organs:organs --ckpt run_ad_fs.pth --method adapter --scope encoder+decoder --adapter-blocks 0,2 \
    $Z -o re_ad > re.log 2>&1 || { echo "FAIL: finetune from the adapter export"; cat re.log; fail=1; }
# shellcheck disable=SC2086
M finetune --store organs:organs --ckpt run_ad_fs.pth --method lora --scope decoder $Z -o re_bad > re.log 2>&1
rc=$?
if [ $rc -eq 0 ] || ! grep -q -- "--method adapter" re.log || [ -e re_bad/best ]; then
    echo "FAIL: LoRA fine-tune from adapters: exit $rc, $(cat re.log)"; fail=1
else
    echo "adapters as LoRA start: $(grep -m1 -- '--method adapter' re.log)"
fi
$PY - "$GOLD" <<'EOF' || fail=1
import glob, os, sys
import numpy as np, torch
sys.path.insert(0, os.environ["FT_DIR"])
import fsam_golden, ft_check
ok = fsam_golden.compare(sys.argv[1] + "/fsam_theirs_out.npz", "emb_theirs.npy", "lo_theirs.npy")
ok = ft_check.labels_equal("run/best", "organs", "p_run", "p_run_fs") and ok
ok = ft_check.labels_equal("run_ad/best", "organs", "p_run_ad", "p_run_ad_fs") and ok
for pth, run in (("run_fs.pth", "re_lora"), ("run_ad_fs.pth", "re_ad")):
    src = {k: v.double().numpy() for k, v in torch.load(pth).items()}
    ck = sorted(glob.glob(run + "/ckpt/step_*")) + [run + "/best"]
    got = ft_check.st_read([c for c in ck if os.path.exists(c + "/model.safetensors")][-1] + "/model.safetensors")
    n = 0
    worst = 0.0
    for k, v in src.items():
        if "Depth_Adapter" in k or ".linear_" in k or ".w_a." in k or ".w_b." in k:
            continue
        if k.startswith(("mask_decoder.mask_", "mask_decoder.output_hypernetworks_mlps.",
                         "mask_decoder.iou_prediction_head.")):
            continue  # the head: re-initialised when the class count differs, trained otherwise
        if not k.startswith(("image_encoder.", "mask_decoder.transformer.")):
            continue
        w = v.copy()
        base = k.replace("attn.qkv.qkv.", "attn.qkv.").replace("_proj.proj.", "_proj.")
        if ".attn.qkv.qkv.weight" in k and k.replace("qkv.qkv.weight", "qkv.linear_a_q.weight") in src:
            p = k.replace("qkv.qkv.weight", "qkv.")
            D = w.shape[1]
            w[:D] += src[p + "linear_b_q.weight"] @ src[p + "linear_a_q.weight"]
            w[2 * D:] += src[p + "linear_b_v.weight"] @ src[p + "linear_a_v.weight"]
        elif "_proj.proj.weight" in k and k.replace("proj.weight", "w_a.weight") in src:
            w += src[k.replace("proj.weight", "w_b.weight")] @ src[k.replace("proj.weight", "w_a.weight")]
        if base not in got:
            print("FAIL: %s: %s not in the fine-tune's weights" % (run, base))
            ok = False
            continue
        err = float(np.abs(got[base] - w).max() / max(np.abs(w).max(), 1e-30))
        worst = max(worst, err)
        if ("Adapter" in k and err != 0) or err > 1e-6:
            print("FAIL: %s: %s differs from the export's (rel %.3g)" % (run, base, err))
            ok = False
        n += 1
    print("%s: %d tensors equal the export's (LoRA merged in float64; max rel %.3g)" % (run, n, worst))
sys.exit(0 if ok else 1)
EOF

echo "time: $(( $(date +%s) - t0 )) s"
if [ $fail -ne 0 ]; then echo "test_fsam_weights: FAILED"; exit 1; fi
echo "test_fsam_weights: passed"
