#!/usr/bin/env bash
# tools/demo.sh MRISAM [OUTDIR] — the whole story on the embedded default data (Debian's mricron-data templates), in
# about ten minutes on 2 cores (README.md gives the measured time):
#   1. ingest: an unlabeled store for pretraining (ch2better, the human template's other image, and the inia19
#      macaque T1), and two labelled task stores of the human ch2 T1: its brain mask (ch2bet > 0) and the AAL atlas
#      grouped into 7 lobes and structures (data/labelmaps/aal_lobes.csv); verify them;
#   2. pretrain: MAE on SAM's image encoder (vit_test, from PyTorch's default initialisation) on the unlabeled store,
#      with held-out validation and reconstruction panels; export MRI-specific SAM weights (RUN/sam_mri_vit_test.pth);
#   3. compare: fine-tune both tasks from a random start and from the pretrained weights, at one label budget and a
#      few seeds, splits and labelled slices shared by the two starts; 3-D Dice on held-out slices (a block in the
#      labelled anatomy), validation Dice every tenth of the steps, paired differences with their t-intervals (mrisam
#      compare); with MS_DEMO_HO=1 a third task: HarvardOxford's cortical atlas (MNI152 1 mm grid) resampled onto
#      ch2 by nearest neighbour (--label-resample), its 6 largest regions as classes (--label-largest 6);
#   4. predict: segment the whole ch2 volume (brain mask) with a fine-tuned model (a NIfTI label volume on its grid);
#   5. report: one self-contained page, OUTDIR/report/index.html (mrisam report; curves drawn by gnuplot).
# Pretraining never sees ch2 itself, so no held-out slice of a task is in it; it does see ch2better, another image of
# the same person's brain. With one human and one macaque the numbers show that the pipeline works, not how well it
# generalises.
# Environment: MS_DEMO_STEPS (pretraining steps, default 100), MS_DEMO_FT_STEPS (steps of each fine-tune, default
# 200), MS_DEMO_SEEDS (default 2: the fewest a paired interval takes), MS_DEMO_BUDGET (labelled slices per fine-tune,
# default 8), MS_DEMO_HO (1: add the HarvardOxford task; default 0), MS_THREADS (default: all cores).
# The macaque task (inia19 with its NeuroMaps labels) is not in the demo: its T1 is in the demo's pretraining store,
# whose MAE run cannot leave a task's held-out slices out; docs/EVIDENCE.md gives the comparison that includes it.
set -euo pipefail
MRISAM=${1:?usage: demo.sh path/to/mrisam [outdir]}
OUT=${2:-demo-out}
STEPS=${MS_DEMO_STEPS:-100}
FT_STEPS=${MS_DEMO_FT_STEPS:-200}
SEEDS=${MS_DEMO_SEEDS:-2}
BUDGET=${MS_DEMO_BUDGET:-8}
HO=${MS_DEMO_HO:-0}
# Loader threads and OpenMP share the cores: passive waiting keeps spinning threads from starving the others.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
THREADS=${MS_THREADS:-0}
TPL=/usr/share/mricron/templates
MAPS=$(cd "$(dirname "$0")/.." && pwd)/data/labelmaps
for f in ch2 ch2bet ch2better aal inia19-t1-brain; do
    [ -f "$TPL/$f.nii.gz" ] || { echo "demo: $TPL/$f.nii.gz missing (apt-get install mricron-data)" >&2; exit 1; }
done
HOF=$TPL/HarvardOxford-cort-maxprob-thr0-1mm.nii.gz
[ "$HO" = 0 ] || [ -f "$HOF" ] || { echo "demo: $HOF missing (apt-get install mricron-data)" >&2; exit 1; }
command -v gnuplot > /dev/null || { echo "demo: gnuplot missing (apt-get install gnuplot-nox)" >&2; exit 1; }
mkdir -p "$OUT"
start=$(date +%s)
printf 'image,label\n%s,%s\n' "$TPL/ch2.nii.gz" "$TPL/ch2bet.nii.gz" > "$OUT/pairs_brain.csv"
printf 'image,label\n%s,%s\n' "$TPL/ch2.nii.gz" "$TPL/aal.nii.gz" > "$OUT/pairs_lobes.csv"

echo "== 1. ingest: unlabeled ch2better + inia19 (macaque); ch2 with its brain mask; ch2 with AAL lobes"
rm -rf "$OUT/store" "$OUT/brain" "$OUT/lobes"
"$MRISAM" ingest "$TPL/ch2better.nii.gz" "$TPL/inia19-t1-brain.nii.gz" --axis axial -o "$OUT/store"
"$MRISAM" ingest --labels "$OUT/pairs_brain.csv" --label-threshold 0 --axis axial -o "$OUT/brain"
"$MRISAM" ingest --labels "$OUT/pairs_lobes.csv" --label-map "$MAPS/aal_lobes.csv" \
    --label-names "$MAPS/aal_lobes_names.txt" --axis axial -o "$OUT/lobes"
TASKS=(--task brain="$OUT/brain" --task lobes="$OUT/lobes")
rm -rf "$OUT/ho"
if [ "$HO" != 0 ]; then
    printf 'image,label\n%s,%s\n' "$TPL/ch2.nii.gz" "$HOF" > "$OUT/pairs_ho.csv"
    "$MRISAM" ingest --labels "$OUT/pairs_ho.csv" --label-resample --label-largest 6 --axis axial -o "$OUT/ho"
    "$MRISAM" verify "$OUT/ho"
    TASKS+=(--task ho="$OUT/ho")
fi
for s in store brain lobes; do "$MRISAM" verify "$OUT/$s"; done

echo "== 2. pretrain: MAE on SAM's encoder (vit_test, $STEPS steps on the CPU), unlabeled store only"
rm -rf "$OUT/run"
"$MRISAM" pretrain --store "$OUT/store" --init random --model vit_test --max-steps "$STEPS" --batch-size 8 \
    --decoder-dim 128 --decoder-depth 2 --decoder-heads 4 --lr 1e-3 --val-every 50 --val-slices 16 \
    --save-every 100 --threads "$THREADS" -o "$OUT/run"
echo "   held-out reconstruction loss (step: loss):"
grep '"split": "val"' "$OUT/run/log.jsonl" | sed 's/.*"step": \([0-9]*\).*"loss": \([0-9.e-]*\).*/     \1: \2/'

echo "== 3. compare: random vs pretrained start, $BUDGET labelled slices, $SEEDS seeds, $FT_STEPS steps each"
t3=$(date +%s)
# Rerunning resumes (finished runs are skipped); a fresh demo starts afresh.
rm -rf "$OUT/compare"
"$MRISAM" compare "${TASKS[@]}" --model vit_test \
    --pretrained "$OUT/run/sam_mri_vit_test.pth" --budgets "$BUDGET" --seeds "$SEEDS" --steps "$FT_STEPS" \
    --warmup-steps 10 --lr 1e-3 --method full --scope decoder --cache-embeddings --no-hd95 \
    --threads "$THREADS" -o "$OUT/compare"
cat "$OUT/compare/summary.md" 2> /dev/null || true
echo "   compare took $(( $(date +%s) - t3 )) s"

echo "== 4. predict: the whole ch2 volume's brain mask with the pretrained start's first seed"
FT=$(ls -d "$OUT"/compare/runs/brain/pretrained/b*/s* | head -1)
"$MRISAM" predict --ckpt "$FT" --in "$TPL/ch2.nii.gz" -o "$OUT/ch2_brain.nii.gz" --threads "$THREADS"

echo "== 5. report"
printf '1 brain\n' > "$OUT/brain_names.txt" # the overlay's legend
"$MRISAM" report --pretrain "$OUT/run" --compare "$OUT/compare" --predict "$TPL/ch2.nii.gz" \
    --seg "$OUT/ch2_brain.nii.gz" --label-names "$OUT/brain_names.txt" -o "$OUT/report"
echo "demo finished in $(( $(date +%s) - start )) s: open $OUT/report/index.html"
