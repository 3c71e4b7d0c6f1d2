# tests/finetune/test_eval_nsd.sh — `mrisam eval`'s NSD (normalized surface Dice) against a brute-force reference
# in doubles (nsd_check.py: every pair of surface elements) on random label volumes with random anisotropic spacing, at
# the default 1 mm and at a random --nsd-tolerance; the empty cases (nan / 0 / 1), thread-count independence, --no-nsd
# and a bad tolerance.
set -u
M=$MS_MRISAM
PY=/usr/bin/python3
HERE="$MS_SOURCE_DIR/tests/finetune"
$PY -c 'import nibabel, numpy' 2>/dev/null || { echo "no python3-nibabel: skipped"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/ms_nsd.XXXXXX")
trap 'rm -rf "$T"' EXIT
SEED=${MS_TEST_SEED:-$RANDOM$RANDOM}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
fail=0
$PY "$HERE/nsd_check.py" gen "$T" "$SEED" || exit 1
TOL=$(cat "$T/tol")
$M eval --pred "$T/pred" --gt "$T/gt" -o "$T/o1" --threads 2 >/dev/null || { echo "FAIL: mrisam eval"; exit 1; }
$PY "$HERE/nsd_check.py" check "$T" "$T/o1/per_volume.csv" 1 || fail=1
$M eval --pred "$T/pred" --gt "$T/gt" -o "$T/o2" --nsd-tolerance "$TOL" --threads 1 >/dev/null || fail=1
$PY "$HERE/nsd_check.py" check "$T" "$T/o2/per_volume.csv" "$TOL" || fail=1
$M eval --pred "$T/pred" --gt "$T/gt" -o "$T/o3" --nsd-tolerance "$TOL" --threads 3 >/dev/null || fail=1
cmp -s "$T/o2/per_volume.csv" "$T/o3/per_volume.csv" || { echo "FAIL: the thread count changes NSD"; fail=1; }
grep -q "| NSD $TOL mm (mean ± sd) |" "$T/o2/summary.md" || { echo "FAIL: summary.md lacks the NSD column"; fail=1; }
head -1 "$T/o1/per_volume.csv" | grep -qx "volume,class,name,dice,iou,hd95,nsd" || { echo "FAIL: header"; fail=1; }
$M eval --pred "$T/pred" --gt "$T/gt" -o "$T/o4" --no-nsd >/dev/null || fail=1
head -1 "$T/o4/per_volume.csv" | grep -qx "volume,class,name,dice,iou,hd95" || { echo "FAIL: --no-nsd header"; fail=1; }
grep -q NSD "$T/o4/summary.md" && { echo "FAIL: --no-nsd summary has NSD"; fail=1; }
$M eval --pred "$T/pred" --gt "$T/gt" -o "$T/o5" --nsd-tolerance -1 2>"$T/err"; rc=$?
[ $rc -eq 2 ] && grep -q "nsd-tolerance" "$T/err" || { echo "FAIL: tolerance -1: rc $rc: $(cat "$T/err")"; fail=1; }
[ $fail = 0 ] && echo "test_eval_nsd: all passed"
exit $fail
