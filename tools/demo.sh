#!/usr/bin/env bash
# tools/demo.sh MRISAM [OUTDIR] — the main job on the embedded default data (Debian's mricron-data brain templates),
# small enough for a laptop CPU (about a minute on 2 cores):
#   1. ingest the ch2better and ch2 T1 templates (ch2 with its brain mask, ch2bet > 0, as labels; its slices are keys
#      286.. of the store), verify, inspect,
#      export a slice to look at;
#   2. MAE-pretrain SAM's image encoder (the vit_test variant, from PyTorch's default initialisation) on them, with
#      held-out validation and reconstruction panels;
#   3. export MRI-specific SAM weights (RUN/sam_mri_vit_test.pth, loadable by SAM's own code) and embed a slice with them;
#   4. few-shot fine-tune those weights into a brain segmenter (8 labelled slices of ch2, decoder only, cached
#      embeddings; validation on a mid-brain block of held-out slices);
#   5. segment ch2 with it (a NIfTI label volume on ch2's grid, PNG overlays) and score it on the held-out slices.
# Environment: MS_DEMO_STEPS (default 200), MS_DEMO_FT_STEPS (default 200), MS_THREADS (default: all cores).
set -euo pipefail
MRISAM=${1:?usage: demo.sh path/to/mrisam [outdir]}
OUT=${2:-demo-out}
STEPS=${MS_DEMO_STEPS:-200}
FT_STEPS=${MS_DEMO_FT_STEPS:-200}
# Loader threads and OpenMP share the cores: passive waiting keeps spinning threads from starving the others.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
THREADS=${MS_THREADS:-0}
TPL=/usr/share/mricron/templates
for f in ch2 ch2bet ch2better; do
    [ -f "$TPL/$f.nii.gz" ] || { echo "demo: $TPL/$f.nii.gz missing (apt-get install mricron-data)" >&2; exit 1; }
done
mkdir -p "$OUT"
printf 'image,label\n%s,%s\n' "$TPL/ch2.nii.gz" "$TPL/ch2bet.nii.gz" > "$OUT/pairs.csv"

echo "== 1. ingest: ch2 (T1, with the ch2bet brain > 0 as its label) and ch2better"
rm -rf "$OUT/store"
"$MRISAM" ingest "$TPL/ch2better.nii.gz" --labels "$OUT/pairs.csv" --label-threshold 0 --axis axial -o "$OUT/store"
"$MRISAM" verify "$OUT/store"
"$MRISAM" inspect "$OUT/store" | tail -4
"$MRISAM" export "$OUT/store" --key 376 --label -o "$OUT/slice.png"
echo "   a slice and its label: $OUT/slice.png, $OUT/slice_label.png"

echo "== 2. pretrain: MAE on SAM's encoder (vit_test, $STEPS steps on the CPU)"
rm -rf "$OUT/run"
"$MRISAM" pretrain --store "$OUT/store" --init random --model vit_test --max-steps "$STEPS" --batch-size 8 \
    --decoder-dim 128 --decoder-depth 2 --decoder-heads 4 --lr 1e-3 --val-every 50 --val-slices 16 \
    --save-every 100 --threads "$THREADS" -o "$OUT/run"
echo "   held-out reconstruction loss (step: loss):"
grep '"split": "val"' "$OUT/run/log.jsonl" | sed 's/.*"step": \([0-9]*\).*"loss": \([0-9.e-]*\).*/     \1: \2/'
echo "   panels (input | masked | reconstruction | reconstruction + visible): $OUT/run/val/"

echo "== 3. the exported weights in use: embed slice 376 with $OUT/run/sam_mri_vit_test.pth"
"$MRISAM" embed --ckpt "$OUT/run/sam_mri_vit_test.pth" --store "$OUT/store" --key 376 -o "$OUT/slice_embedding.npy" \
    --threads "$THREADS"

echo "== 4. finetune: few-shot brain segmentation from the pretrained weights ($FT_STEPS steps)"
# ch2's slices are keys 286.. of the store: 8 training slices spread over the brain, a held-out mid-brain block.
# (ch2bet's mask is cut short at the top of the head and the skull base, so the default end-block split would
# validate on its worst slices.)
cat > "$OUT/split.json" <<'SPLIT'
{"version": 1, "seed": "0", "val_fraction": 0.2, "shots": 8, "shot_unit": "slice",
 "stores": [{"path": "store", "single_volume": 1,
             "train": [[306, 1], [316, 1], [326, 1], [336, 1], [346, 1], [356, 1], [366, 1], [374, 1]],
             "val": [[386, 24]]}]}
SPLIT
rm -rf "$OUT/ft"
"$MRISAM" finetune --store "$OUT/store:brain" --ckpt "$OUT/run/sam_mri_vit_test.pth" --method full --scope decoder \
    --cache-embeddings --split "$OUT/split.json" --max-steps "$FT_STEPS" --warmup-steps 10 --lr 3e-4 --val-every 25 \
    --patience 1000 --seed 2 --threads "$THREADS" -o "$OUT/ft"
echo "   validation foreground Dice (step: dice):"
grep '"split": "val"' "$OUT/ft/log.jsonl" | sed 's/.*"step": \([0-9]*\),.*"score": \([0-9.e-]*\).*/     \1: \2/'

echo "== 5. predict ch2 with the fine-tuned model, and evaluate it on the held-out slices"
"$MRISAM" predict --ckpt "$OUT/ft" --in "$TPL/ch2.nii.gz" -o "$OUT/ch2_brain.nii.gz" --png "$OUT/overlays" \
    --threads "$THREADS"
"$MRISAM" eval --ckpt "$OUT/ft" --store "$OUT/store" -o "$OUT/eval" --threads "$THREADS"
echo "   label volume: $OUT/ch2_brain.nii.gz, overlays: $OUT/overlays/, scores: $OUT/eval/summary.md"
echo "demo finished: outputs in $OUT/"
