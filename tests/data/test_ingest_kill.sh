# SIGINT during ingest: exit 75 after finishing the volume being written; the store verifies; a rerun completes it.
# SIGKILL during ingest at random moments, several times: after every kill the store opens and verifies; the final
# rerun completes it, and its content equals a clean ingest (same volumes by source hash and frame, same slices,
# nothing duplicated or lost, keys without gaps). Includes a 4D file, whose frames commit one by one.
source "$MS_SOURCE_DIR/tests/data/common.sh"
D=$T/in
$PY - "$D" "$SEED" <<'PYEOF' || exit 1
import os, sys, nibabel as nib, numpy as np
d, seed = sys.argv[1], int(sys.argv[2])
os.makedirs(d)
rng = np.random.default_rng(seed)
for i in range(24):
    v = rng.integers(0, 4000, size=(96, 96, 40)).astype(np.int16)
    v[:, :, :3] = 0
    nib.Nifti1Image(v, np.diag([1.0, 1.0, 2.5, 1.0])).to_filename(f"{d}/v{i:02d}.nii.gz")
nib.Nifti1Image(rng.normal(100, 20, size=(64, 64, 30, 6)).astype(np.float32), np.eye(4)).to_filename(f"{d}/v12_4d.nii.gz")
PYEOF
t0=$(date +%s.%N)
check $M ingest "$D" -o "$T/ref.store" --threads 2 --quiet
dur=$($PY -c "print(max(0.2, $(date +%s.%N) - $t0))")
echo "clean ingest: ${dur}s"
kills=0
for round in 1 2 3 4 5 6; do
  $M ingest "$D" -o "$T/k.store" --threads 2 --quiet 2>/dev/null &
  pid=$!
  # a random moment in the first quarter of a clean run's time, so most rounds die mid-way (seeded: replayable)
  delay=$($PY -c "import random; random.seed($SEED * 10 + $round); print(round(random.uniform(0.02, $dur / 4), 3))")
  sleep "$delay"
  if kill -9 "$pid" 2>/dev/null; then kills=$((kills + 1)); fi
  wait "$pid" 2>/dev/null
  if [ -f "$T/k.store/data.mdb" ]; then
    if $M verify "$T/k.store" >"$T/v.txt" 2>&1; then ok; else bad "round $round (killed after ${delay}s): verify failed"; cat "$T/v.txt"; fi
    tail -1 "$T/v.txt"
  fi
done
echo "killed $kills of 6 runs"
check $M ingest "$D" -o "$T/k.store" --threads 2 --quiet
check $M verify "$T/k.store"
check $PY "$HERE/compare_stores.py" "$T/ref.store" "$T/k.store"
out=$($M ingest "$D" -o "$T/k.store" 2>&1)
check grep -q "0 ingested, 25 skipped" <<<"$out"
# SIGINT: a clean stop with exit status 75, then resume
$M ingest "$D" -o "$T/i.store" --threads 2 --quiet 2>"$T/int.err" &
pid=$!
sleep "$($PY -c "print(round($dur / 3, 3))")"
kill -INT "$pid" 2>/dev/null
wait "$pid"
rc=$?
cat "$T/int.err"
if [ $rc -eq 0 ]; then echo "(finished before the signal)"; ok; else check test $rc -eq 75; check grep -q "interrupted" "$T/int.err"; fi
check $M verify "$T/i.store"
check $M ingest "$D" -o "$T/i.store" --threads 2 --quiet
check $PY "$HERE/compare_stores.py" "$T/ref.store" "$T/i.store"
done_
