#!/usr/bin/env bash
# tests/finetune/test_segment_embed_runs.sh — `mrisam embed` and `mrisam segment` take run directories as --ckpt, as predict
# and eval do (finetune/predict.h ms_ckpt_resolve), and segment runs a fine-tuned checkpoint's task head.
#
# A fine-tuning run (ft_check.py make's volumes ingested twice: task organs, values 0,3,7; task lesion, 0,5; full
# encoder+decoder, 1 step, RUN/best then given counter_init weights by ft_check.py reweight so that its outputs are
# not trivially background) and a pretraining run (vit_test at 64, 2 steps, a checkpoint at each). Checks, with the
# prompt point drawn at random (seeded):
#  - embed with --ckpt RUN/, RUN/best, RUN/ckpt/, RUN/ckpt/step_N of either run == embed with what export-weights
#    writes from the same argument (byte for byte), and the pretraining run's step 1 != step 2 (RUN/ is the newest);
#  - segment with the pretraining run's forms == segment with its export (logits and PNG, byte for byte);
#  - segment on the 2-task checkpoint without --task exits non-zero naming both tasks;
#  - segment --task T on each fine-tuning form writes the task head's class channels (tokens 1..C) as --logits: equal
#    byte for byte to segment --multimask on export-weights --task T (task T's head under SAM's keys), shape
#    (1, num_cls, lo, lo) — mask token 0 would give (1, 1, lo, lo) — and the PNG is the argmax of the post-processed
#    channels (float64, tests/reference/sam_ref.py) written as the task's class values (near-ties aside).
set -u
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
MRISAM=${MS_MRISAM:-mrisam}
SRC=${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
CHK="$SRC/tests/finetune/ft_check.py"
if ! $PY -c "import torch, numpy, nibabel, scipy, PIL" 2>/dev/null; then
    echo "skip: no torch/numpy/nibabel/scipy/PIL"; exit 77
fi
SEED=${MS_TEST_SEED:-$(( $(date +%s%N) % 100000 ))}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
RANDOM=$SEED
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
fail=0
M() { "$MRISAM" "$@" --threads 2; }
check() { if [ "$1" -ne 0 ]; then echo "FAIL: $2"; fail=1; else echo "ok: $2"; fi; }

$PY "$CHK" make . > /dev/null || exit 1
M ingest --labels pairs.csv -o organs --keep-paths --keep-empty --quiet || exit 1
M ingest --labels pairs.csv --label-map lesion_map.csv -o lesion --keep-paths --keep-empty --quiet || exit 1
if ! M finetune --store organs:organs --store lesion:lesion --method full --scope encoder+decoder --max-steps 1 \
    --init random --model vit_test --warmup-steps 1 --val-slices 1 --batch-size 2 -o ft > ft.log 2>&1; then
    echo "FAIL: finetune"; cat ft.log; exit 1
fi
$PY "$CHK" reweight ft/best 5 > /dev/null || exit 1
if ! M pretrain --store organs --init random --model vit_test --input-size 64 --batch-size 2 --decoder-dim 32 \
    --decoder-depth 1 --decoder-heads 2 --lr 1e-3 --val-slices 2 --val-every 2 --save-every 1 --keep-last 2 \
    --max-steps 2 -o pre > pre.log 2>&1; then
    echo "FAIL: pretrain"; cat pre.log; exit 1
fi
$PY - <<'EOF' || exit 1
import numpy as np
from PIL import Image
yy, xx = np.mgrid[0:60, 0:80]
g = (127 + 90 * np.sin(xx / 7.0) * np.cos(yy / 5.0) + 40 * ((xx - 50) ** 2 + (yy - 25) ** 2 < 150)).clip(0, 255)
Image.fromarray(g.astype(np.uint8), "L").save("img.png")
EOF
PT="$((RANDOM % 80)),$((RANDOM % 60))"
echo "point: $PT"
FTSTEP=$(ls -d ft/ckpt/step_* | tail -1)

# embed: every form == its export
for c in ft ft/best ft/ckpt "$FTSTEP" pre pre/ckpt pre/ckpt/step_00000002 pre/ckpt/step_00000001; do
    args=(); case $c in ft*) args=(--task organs) ;; esac
    M export-weights "$c" "${args[@]}" -o x.pth > /dev/null 2> err.txt || { echo "FAIL: export-weights $c"; cat err.txt
        fail=1; continue; }
    M embed --ckpt x.pth --image img.png -o e_ref.npy 2> /dev/null
    M embed --ckpt "$c" --image img.png -o "e_$(echo "$c" | tr / _).npy" 2> err.txt
    rc=$?
    [ $rc -eq 0 ] && cmp -s e_ref.npy "e_$(echo "$c" | tr / _).npy"
    check $? "embed --ckpt $c == embed of its export (exit $rc: $(head -c 200 err.txt))"
done
! cmp -s e_pre_ckpt_step_00000001.npy e_pre.npy
check $? "pretraining step 1 embeds differently from RUN/ (its newest, step 2)"

# segment with the pretraining run: SAM's path, the same as its export
M export-weights pre -o pre.pth > /dev/null || exit 1
M segment --ckpt pre.pth --image img.png --point "$PT" -o ps_ref.png --logits ps_ref.npy > /dev/null
for c in pre pre/ckpt pre/ckpt/step_00000002; do
    M segment --ckpt "$c" --image img.png --point "$PT" -o ps.png --logits ps.npy > /dev/null 2> err.txt
    rc=$?
    [ $rc -eq 0 ] && cmp -s ps.npy ps_ref.npy && cmp -s ps.png ps_ref.png
    check $? "segment --ckpt $c == segment of its export (exit $rc: $(head -c 200 err.txt))"
done

# segment with the fine-tuning run: the task is required, and its head's class channels are used
M segment --ckpt ft --image img.png --point "$PT" -o x.png > /dev/null 2> err.txt
rc=$?
[ $rc -ne 0 ] && grep -q organs err.txt && grep -q lesion err.txt
check $? "segment on 2 tasks without --task refused naming them (exit $rc: $(head -c 200 err.txt))"
for task in organs lesion; do
    for c in ft ft/best "$FTSTEP"; do
        M export-weights "$c" --task $task -o t.pth > /dev/null || { echo "FAIL: export-weights $c --task $task"; fail=1; }
        M segment --ckpt t.pth --multimask --image img.png --point "$PT" -o ref.png --logits ref.npy > /dev/null
        M segment --ckpt "$c" --task $task --image img.png --point "$PT" -o "s_$task.png" --logits s.npy > out.txt \
            2> err.txt
        rc=$?
        [ $rc -eq 0 ] && cmp -s s.npy ref.npy
        check $? "segment --ckpt $c --task $task: logits == task head's tokens 1.. of its export (exit $rc: $(head -c 200 err.txt))"
        [ "$c" = ft ] || continue
        $PY - "$SRC" "$task" <<'EOF'
import os, sys
import numpy as np, torch
from PIL import Image
sys.path.insert(0, os.path.join(sys.argv[1], "tests", "reference"))
import sam_ref
task = sys.argv[2]
values = {"organs": [0, 3, 7], "lesion": [0, 5]}[task]
low = np.load("s.npy").astype(np.float64)
if low.shape[:2] != (1, len(values)):
    print("FAIL: %s logits shape %s, expected (1, %d, ...)" % (task, low.shape, len(values))); sys.exit(1)
png = np.asarray(Image.open("s_%s.png" % task))
h, w = png.shape
full = sam_ref.postprocess(torch.from_numpy(low), 256, h, w).numpy()[0]  # (C, h, w); input size 256
ref = np.array(values)[np.argmax(full, axis=0)]
srt = np.sort(full, axis=0)
near = srt[-1] - srt[-2] < 1e-4 * np.abs(full).max()
bad = (png != ref) & ~near
print("%s: classes %s, pixels %s, %d differ from the float64 argmax (%d near-ties)" % (
    task, values, [int((png == v).sum()) for v in values], int((png != ref).sum()), int(near.sum())))
if bad.any() or not set(np.unique(png)) <= set(values):
    print("FAIL: %s class map" % task); sys.exit(1)
EOF
        check $? "segment --ckpt ft --task $task: PNG = argmax class map in the task's values"
    done
done

if [ $fail -ne 0 ]; then echo "test_segment_embed_runs: FAILED"; exit 1; fi
echo "test_segment_embed_runs: passed"
