#!/bin/bash
# tests/data/test_ingest_full.sh — ingest on a full disk (issue #18 item 7). The store's data.mdb hits a size limit
# drawn at random (seeded) below the size of the whole store: RLIMIT_FSIZE (`ulimit -f` in a subshell; ingest ignores
# SIGXFSZ, so the write fails with EFBIG instead of killing it) and, where the test may mount one (root), a tmpfs of
# that size (ENOSPC). Each must exit 1 with the error first, naming the file and the errno:
#   mrisam ingest: STORE/data.mdb: File too large (EFBIG)   /   ...: No space left on device (ENOSPC)
# then the summary, which counts the source being written as failed (before the fix: "Input/output error" naming
# the store directory, and "0 failed"). Nothing committed is lost: the partial store verifies and holds the volumes
# the summary counts; a rerun with space resumes (those sources skipped) and equals a clean ingest. A 4D file is among
# the sources, so the limit may fall between its frames.
source "$MS_SOURCE_DIR/tests/data/common.sh"
D=$T/in
$PY - "$D" "$SEED" <<'PYEOF' || exit 1
import os, sys, nibabel as nib, numpy as np
d, seed = sys.argv[1], int(sys.argv[2])
os.makedirs(d)
rng = np.random.default_rng(seed)
for i in range(5):
    shape = tuple(int(s) for s in rng.integers(40, 72, size=3))
    nib.Nifti1Image(rng.integers(1, 4000, size=shape).astype(np.int16), np.eye(4)).to_filename(f"{d}/v{i}.nii.gz")
v = rng.normal(100, 20, size=(48, 48, 20, 4)).astype(np.float32)
nib.Nifti1Image(v, np.eye(4)).to_filename(f"{d}/v2_4d.nii.gz")
PYEOF
NSRC=6
check $M ingest "$D" -o "$T/ref.store" --threads 2 --quiet
FULL=$(stat -c %s "$T/ref.store/data.mdb")
R=$SEED
draw() { R=$(( (R * 1103515245 + 12345) % 2147483648 )); echo $(( R % $1 )); }
nvol() { $PY -c "import sys; sys.path.insert(0, '$HERE'); from storelib import Store; print(len(Store('$1').volumes()))"; }

# $1: the store; $2: the errno's text and name; $T/err: ingest's stderr; $3: its exit status
check_full() {
  local S=$1 want="mrisam ingest: $1/data.mdb: $2" rc=$3
  cat "$T/err"
  check test "$rc" -eq 1
  check test "$(head -n 1 "$T/err")" = "$want"
  check test "$(wc -l <"$T/err")" -eq 2
  local sum
  sum=$(sed -n 2p "$T/err")
  check grep -qE "^ingest: [0-9]+ ingested, 0 skipped \(already stored\), 1 failed; " <<<"$sum"
  check test -z "$(grep -E " 0 failed" <<<"$sum")"
  # nothing committed is lost: the store verifies and holds the volumes the summary counts
  check $M verify "$S"
  local nsum
  nsum=$(sed -nE 's/.* failed; ([0-9]+) volumes,.*/\1/p' <<<"$sum")
  check test "$(nvol "$S")" = "$nsum"
  NING=$(sed -nE 's/^ingest: ([0-9]+) ingested,.*/\1/p' <<<"$sum")
}

# a rerun with space resumes: the stored sources are skipped, the rest ingested, the content that of a clean run
check_resume() {
  local S=$1
  $M ingest "$D" -o "$S" --threads 2 2>"$T/err2"
  check test $? -eq 0
  cat "$T/err2"
  check grep -q "^ingest: $((NSRC - NING)) ingested, $NING skipped (already stored), 0 failed" "$T/err2"
  check $M verify "$S"
  check $PY "$HERE/compare_stores.py" "$T/ref.store" "$S"
}

# EFBIG: RLIMIT_FSIZE in KiB, from 32 KiB (the store opens) to 80 % of the whole store
K=$((32 + $(draw $((FULL * 8 / 10 / 1024 - 32)))))
TH=$((1 + $(draw 2)))
echo "RLIMIT_FSIZE ${K} KiB (the whole store: $FULL bytes), --threads $TH"
(ulimit -f "$K"; exec $M ingest "$D" -o "$T/f.store" --threads "$TH") 2>"$T/err"
check_full "$T/f.store" "File too large (EFBIG)" $?
check_resume "$T/f.store"

# ENOSPC: a tmpfs of a drawn size (root only, and only where mount works)
MNT=$T/mnt
mkdir -p "$MNT"
K=$((48 + $(draw $((FULL * 8 / 10 / 1024 - 48)))))
if [ "$(id -u)" = 0 ] && mount -t tmpfs -o size=${K}k tmpfs "$MNT" 2>/dev/null; then
  trap 'umount "$MNT" 2>/dev/null' EXIT
  TH=$((1 + $(draw 2)))
  echo "tmpfs of ${K} KiB, --threads $TH"
  $M ingest "$D" -o "$MNT/s.store" --threads "$TH" 2>"$T/err"
  check_full "$MNT/s.store" "No space left on device (ENOSPC)" $?
  check mount -o remount,size=64m "$MNT"
  check_resume "$MNT/s.store"
else
  echo "(no ENOSPC case: cannot mount a tmpfs here)"
fi
done_
