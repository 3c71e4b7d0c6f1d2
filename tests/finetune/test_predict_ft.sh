#!/usr/bin/env bash
# tests/finetune/test_predict_ft.sh — `mrisam predict` and `mrisam eval --ckpt --store` on fine-tuned checkpoints.
#
# Three small float32 volumes with an oblique, non-identity affine and label volumes {0,3,7} (ft_check.py make) are
# ingested twice: store organs (values 0,3,7) and store lesion (--label-map 3→5: values 0,5). `mrisam finetune`
# makes three checkpoints: run/ (2 tasks organs + lesion, LoRA encoder+decoder, 2 steps), run_pr/ (hybrid prompts:
# points + boxes, full/decoder, 1 step) and run_st/ (--resize stretch --norm medsam, 1 step). ft_check.py reweight
# then gives every tensor counter_init values (LoRA B non-zero): a model after 1-2 steps predicts background
# everywhere, which would make the comparisons below trivially true. Checks:
#  - predict without --task on the 2-task checkpoint fails and names both tasks; --task bogus fails;
#  - predict --task organs (RUN/) and --task lesion (RUN/best): geometry exactly the input's (dims, affine, q/sform
#    and codes, pixdim, empty descrip), values within the task's class values, and equal to the float64 PyTorch
#    reference of the checkpoint (LoRA merged, the task's head) up to near-ties (ft_check.py predict);
#  - eval --pred/--gt of those predictions == eval --ckpt --store --all (the same Dice/IoU/HD95 per volume and class;
#    the store path restacks stored slices), and eval --ckpt RUN/best (no --all) scores only the run's validation
#    volume (shots.json), with rows equal to the --all ones;
#  - the hybrid-prompt checkpoint: predict without --prompts-from fails; with it, geometry as above and labels equal
#    to the float64 reference of prompted prediction (ft_check.py predict-prompt: label grid, prompt_gen's
#    deterministic points and boxes, per-pixel best positive class); eval --ckpt --store (prompts from the stored
#    labels) scores exactly what eval --pred/--gt gives for those predictions;
#  - the stretch/medsam checkpoint: predict applies its preprocessing (reference: stretched input, logits resized
#    from S×S straight to the slice, [0,1] pixels).
# The Python checks run in three processes (torch is imported once each).
set -u
MRISAM=${MS_MRISAM:-mrisam}
SRC=${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
CHK="$SRC/tests/finetune/ft_check.py"
if ! $PY -c "import torch, numpy, nibabel, scipy" 2>/dev/null; then echo "skip: no torch/numpy/nibabel/scipy"; exit 77
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1
fail=0
t0=$(date +%s)
M() { "$MRISAM" "$@" --threads 2; }
FT="--init random --model vit_test --warmup-steps 1 --val-slices 1 --batch-size 2"

$PY "$CHK" make . || exit 1
M ingest --labels pairs.csv -o organs --keep-paths --keep-empty --quiet || exit 1
M ingest --labels pairs.csv --label-map lesion_map.csv -o lesion --keep-paths --keep-empty --quiet || exit 1
for spec in "run:--store organs:organs --store lesion:lesion --method lora --scope encoder+decoder --max-steps 2" \
    "run_pr:--store organs:organs --method full --scope decoder --prompt hybrid --max-steps 1" \
    "run_st:--store organs:organs --method full --scope decoder --resize stretch --norm medsam --max-steps 1"; do
    name=${spec%%:*}
    # shellcheck disable=SC2086
    if ! M finetune ${spec#*:} $FT -o "$name" > "$name.log" 2>&1; then
        echo "FAIL: finetune $name"; cat "$name.log"; exit 1
    fi
done
$PY "$CHK" reweight run/best 5 -- reweight run_pr/best 7 -- reweight run_st/best 4 || exit 1

# task selection
M predict --ckpt run --in in -o p0 > /dev/null 2> err.txt
rc=$?
if [ $rc -eq 0 ] || ! grep -q organs err.txt || ! grep -q lesion err.txt; then
    echo "FAIL: predict without --task on 2 tasks: exit $rc, stderr: $(cat err.txt)"; fail=1
else
    echo "no --task: exit $rc: $(cat err.txt)"
fi
M predict --ckpt run --task bogus --in in -o p0 > /dev/null 2> err.txt
rc=$?
if [ $rc -eq 0 ] || ! grep -q "organs, lesion" err.txt; then echo "FAIL: --task bogus: exit $rc"; fail=1; fi
M predict --ckpt run_pr --in in -o p0 > /dev/null 2> err.txt
rc=$?
if [ $rc -eq 0 ] || ! grep -q -- "--prompts-from" err.txt; then
    echo "FAIL: prompts checkpoint without prompts: exit $rc"; fail=1
fi

# predictions and evaluations
M predict --ckpt run --task organs --in in -o p_org --batch-size 4 || fail=1
M predict --ckpt run/best --task lesion --in in -o p_les --batch-size 4 || fail=1
M predict --ckpt run_pr --in in -o p_pr --prompts-from lab --batch-size 4 || fail=1
M predict --ckpt run_st --in in -o p_st --batch-size 4 || fail=1
M eval --pred p_org --gt lab -o e_files > /dev/null || fail=1
M eval --ckpt run --task organs --store organs --all -o e_all > /dev/null 2>&1 || { echo "FAIL: eval --all"; fail=1; }
M eval --ckpt run/best --task organs --store organs -o e_val > /dev/null 2>&1 || { echo "FAIL: eval val"; fail=1; }
M eval --pred p_pr --gt lab -o e_pr_files --no-hd95 > /dev/null || fail=1
M eval --ckpt run_pr --store organs --all -o e_pr --no-hd95 > /dev/null 2>&1 || { echo "FAIL: eval prompts"; fail=1; }
nv_all=$(grep -c "^volumes: 3" e_all/summary.md); nv_val=$(grep -c "^volumes: 1" e_val/summary.md)
if [ "$nv_all" -ne 1 ] || [ "$nv_val" -ne 1 ] || ! grep -q "validation selection" e_val/summary.md; then
    echo "FAIL: --all should score 3 volumes, the validation selection 1:"; head -5 e_all/summary.md e_val/summary.md
    fail=1
fi

# a store the run was not trained on: every labelled volume is evaluated, and the summary says so
M eval --ckpt run_st --store lesion -o e_other --no-hd95 > /dev/null 2>&1 || { echo "FAIL: eval other store"; fail=1; }
if ! grep -q "(every labelled volume)" e_other/summary.md || grep -q "validation selection" e_other/summary.md; then
    echo "FAIL: eval on a store outside the run: the summary must say every labelled volume:"; head -5 e_other/summary.md
    fail=1
fi

$PY "$CHK" predict run/best organs in p_org -- predict run/best lesion in p_les \
    -- csv e_files/per_volume.csv e_all/per_volume.csv e_all/per_volume.csv e_files/per_volume.csv \
    e_val/per_volume.csv e_all/per_volume.csv \
    -- predict-prompt run_pr/best organs in lab p_pr -- csv e_pr_files/per_volume.csv e_pr/per_volume.csv \
    -- predict run_st/best organs in p_st || fail=1

echo "time: $(( $(date +%s) - t0 )) s"
if [ $fail -ne 0 ]; then echo "test_predict_ft: FAILED"; exit 1; fi
echo "test_predict_ft: passed"
