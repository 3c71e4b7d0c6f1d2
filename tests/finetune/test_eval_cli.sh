# tests/finetune/test_eval_cli.sh — `mrisam eval` end to end (Dice, IoU, HD95): three oblique volume pairs (.nii.gz
# predictions against .nii truths) with known cases (identical class, empty prediction, class absent from both),
# per_volume.csv and summary.md
# checked against numpy (eval_check.py); bad inputs fail with one "path: reason" line and a non-zero exit.
set -u
M=$MS_MRISAM
PY=/usr/bin/python3
HERE="$MS_SOURCE_DIR/tests/finetune"
$PY -c 'import nibabel, numpy' 2>/dev/null || { echo "no python3-nibabel: skipped"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/ms_eval.XXXXXX")
trap 'rm -rf "$T"' EXIT
SEED=${MS_TEST_SEED:-$RANDOM$RANDOM}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
fail=0
$PY "$HERE/eval_check.py" gen "$T" "$SEED" || exit 1
if ! $M eval --pred "$T/pred" --gt "$T/gt" -o "$T/out" --label-names "$T/names.txt" --threads 2; then
  echo "FAIL: mrisam eval"; exit 1
fi
$PY "$HERE/eval_check.py" check "$T" "$T/out" || fail=1
# the thread count never changes a number
$M eval --pred "$T/pred" --gt "$T/gt" -o "$T/out1" --label-names "$T/names.txt" --threads 1 >/dev/null || fail=1
cmp -s "$T/out/per_volume.csv" "$T/out1/per_volume.csv" || { echo "FAIL: --threads 1 differs"; fail=1; }
# bad inputs: non-zero exit, exactly one line on stderr naming the offending file
expect_fail() { # name pattern
  $M eval --pred "$T/bad_$1/pred" --gt "$T/bad_$1/gt" -o "$T/o_$1" 2>"$T/err"; rc=$?
  n=$(wc -l <"$T/err")
  if [ $rc -eq 0 ] || [ "$n" -ne 1 ] || ! grep -q -- "$2" "$T/err"; then
    echo "FAIL: bad_$1: rc $rc, $n lines: $(cat "$T/err")"; fail=1
  else
    echo "bad_$1: $(cat "$T/err")"
  fi
  [ -e "$T/o_$1/per_volume.csv" ] && { echo "FAIL: bad_$1 wrote outputs"; fail=1; }
}
expect_fail shape "bad_shape/pred/v.nii.gz: grid .* differs from .*bad_shape/gt/v.nii.gz"
expect_fail affine "bad_affine/pred/v.nii.gz: affine differs from .*bad_affine/gt/v.nii.gz"
expect_fail missing "no prediction named v"
expect_fail float "bad_float/pred/v.nii.gz: voxel value .* is not a label"
$M eval --pred "$T/nope" --gt "$T/gt" -o "$T/o" 2>"$T/err" && { echo "FAIL: missing folder accepted"; fail=1; }
grep -q "nope" "$T/err" || { echo "FAIL: missing folder not named: $(cat "$T/err")"; fail=1; }
$M eval --pred "$T/pred" -o "$T/o" 2>/dev/null; [ $? -eq 2 ] || { echo "FAIL: missing --gt is not a usage error"; fail=1; }
# --no-hd95 drops the column and leaves the other numbers as they were
$M eval --pred "$T/pred" --gt "$T/gt" -o "$T/out2" --no-hd95 >/dev/null || fail=1
head -1 "$T/out2/per_volume.csv" | grep -qx "volume,class,name,dice,iou,nsd" || { echo "FAIL: --no-hd95 header"; fail=1; }
cmp -s <(cut -d, -f1,2,4,5 "$T/out2/per_volume.csv" | tail -n +2) \
       <(/usr/bin/python3 -c 'import csv,sys; [print(",".join([r["volume"],r["class"],r["dice"],r["iou"]])) for r in csv.DictReader(open(sys.argv[1]))]' "$T/out/per_volume.csv") \
  || { echo "FAIL: --no-hd95 changed Dice/IoU"; fail=1; }
[ $fail = 0 ] && echo "test_eval_cli: all passed"
exit $fail
