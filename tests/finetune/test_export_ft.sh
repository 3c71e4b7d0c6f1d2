#!/usr/bin/env bash
# tests/finetune/test_export_ft.sh — `mrisam export-weights` on fine-tuned checkpoints.
#
# A 2-task LoRA (encoder blocks 0 and 2 + decoder) vit_test checkpoint from `mrisam finetune` (1 step) and a 1-task
# adapter (encoder blocks 0 and 2 + decoder) one, reweighted with counter_init values (ft_check.py reweight: LoRA B
# non-zero, so the merge is not a no-op). Checks:
#  - without --task on 2 tasks: fails naming both;
#  - --layout sam (.pth and .safetensors): SAM's key list and order for the task's mask-token count, strict load into
#    the PyTorch SAM, LoRA merged (max relative error vs float64 W + B·A printed, < 1e-6), everything else equal to
#    the checkpoint with the task's head as SAM's (ft_check.py export-sam);
#  - the export is a plain SAM checkpoint for mrisam too (ms_sam_load): predict with it gives the fine-tuned model's
#    labels (class c ↔ the task's value c) in every voxel (ft_check.py labels-equal);
#  - --layout finetune-sam: key list, order and shapes of finetune-SAM's modules rebuilt in PyTorch, strict load,
#    LoRA / adapter tensors equal to model.safetensors, Depth_Adapter zeros (ft_check.py export-fsam);
#  - adapters with --layout sam: exit 1, no file, and a message pointing to --layout finetune-sam.
# The Python checks run in two processes (torch is imported once each).
set -u
MRISAM=${MS_MRISAM:-mrisam}
SRC=${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
CHK="$SRC/tests/finetune/ft_check.py"
if ! $PY -c "import torch, numpy, nibabel" 2>/dev/null; then echo "skip: no torch/numpy/nibabel in $PY"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
fail=0
t0=$(date +%s)
M() { "$MRISAM" "$@" --threads 2; }
FT="--init random --model vit_test --max-steps 1 --warmup-steps 1 --val-slices 1"

$PY "$CHK" make . || exit 1
M ingest --labels pairs.csv -o organs --keep-paths --keep-empty --quiet || exit 1
M ingest --labels pairs.csv --label-map lesion_map.csv -o lesion --keep-paths --keep-empty --quiet || exit 1
# shellcheck disable=SC2086
if ! M finetune --store organs:organs --store lesion:lesion --method lora --scope encoder+decoder --lora-blocks 0,2 \
    --batch-size 2 $FT -o run > ft.log 2>&1; then echo "FAIL: finetune lora"; cat ft.log; exit 1; fi
# shellcheck disable=SC2086
if ! M finetune --store organs:organs --method adapter --scope encoder+decoder --adapter-blocks 0,2 --batch-size 1 \
    $FT -o run_ad > ft_ad.log 2>&1; then echo "FAIL: finetune adapter"; cat ft_ad.log; exit 1; fi
$PY "$CHK" reweight run/best 5 -- reweight run_ad/best 9 || exit 1

M export-weights run -o x.pth > /dev/null 2> err.txt
rc=$?
if [ $rc -eq 0 ] || ! grep -q "organs, lesion" err.txt; then echo "FAIL: export without --task: exit $rc"; fail=1; fi
# SAM layout: LoRA merged, the task's head; then the export predicts what the fine-tuned model predicts
M export-weights run --task organs -o org.pth || fail=1
M export-weights run/best --task lesion -o les.safetensors || fail=1
M predict --ckpt run --task organs --in in -o p_ft --batch-size 4 > /dev/null || fail=1
M predict --ckpt org.pth --in in -o p_exp --batch-size 4 > /dev/null || fail=1
# finetune-SAM layout
M export-weights run --task organs --layout finetune-sam -o org_fs.pth || fail=1
M export-weights run --task lesion --layout finetune-sam -o les_fs.pth || fail=1
# adapters: no SAM layout; finetune-SAM layout with Depth_Adapter zeros
M export-weights run_ad -o ad.pth > /dev/null 2> err.txt
rc=$?
if [ $rc -ne 1 ] || ! grep -q -- "--layout finetune-sam" err.txt || [ -e ad.pth ]; then
    echo "FAIL: adapters in SAM layout: exit $rc, $(cat err.txt)"; fail=1
else
    echo "adapters, SAM layout: $(cat err.txt)"
fi
M export-weights run_ad --layout finetune-sam -o ad_fs.pth 2> err.txt || fail=1
grep -q "Depth_Adapter" err.txt || { echo "FAIL: no note about the zero Depth_Adapter"; fail=1; }

$PY "$CHK" export-sam run/best organs org.pth -- export-sam run/best lesion les.safetensors \
    -- labels-equal run/best organs p_ft p_exp \
    -- export-fsam run/best organs org_fs.pth -- export-fsam run/best lesion les_fs.pth \
    -- export-fsam run_ad/best organs ad_fs.pth || fail=1

echo "time: $(( $(date +%s) - t0 )) s"
if [ $fail -ne 0 ]; then echo "test_export_ft: FAILED"; exit 1; fi
echo "test_export_ft: passed"
