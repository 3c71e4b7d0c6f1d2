# The in-memory .nii.gz path (libdeflate, or zlib with -DMS_LIBDEFLATE=OFF): odd gzip framings (multi-member, many
# members, empty members, a member boundary inside the header, bgzip, optional header fields, stored blocks,
# trailing bytes) and odd volumes (big-endian, NIfTI-2, 8/16-bit integers with and without scl_slope, a misaligned
# vox_offset) are stored as nibabel + the documented normalisation says (check_store.py), and every framing, byte
# order, NIfTI version and datatype (integer table path or float path) of the same voxel values gives exactly the
# same slices (gzip_cases.py same). Corrupt files (truncated mid-stream or in the trailer, a flipped byte in
# the deflate data, a wrong CRC32, a wrong ISIZE; in a single- and in a multi-member file) each cost exactly one error
# line naming the file and exit status 1 (no crash), while the good files of the same run are all stored.
source "$MS_SOURCE_DIR/tests/data/common.sh"
D=$T/in
$PY "$HERE/gzip_cases.py" gen "$D" "$SEED" || exit 1
mapfile -t GOOD < "$D/good.txt"
mapfile -t BADROWS < "$D/bad.txt"
BAD=()
for r in "${BADROWS[@]}"; do BAD+=("${r%% *}"); done
NG=${#GOOD[@]}
NB=${#BAD[@]}
echo "$NG good files, $NB corrupt files"

# 1. good files alone: every slice against nibabel, every framing of the "a" voxels against the single member
$M ingest "$D/good" --keep-paths --keep-empty -o "$T/good.store" --threads 2 2>"$T/err0"
rc=$?
tail -1 "$T/err0"
check test $rc -eq 0
check grep -q "^ingest: $NG ingested, 0 skipped (already stored), 0 failed" "$T/err0"
check $PY "$HERE/check_store.py" "$T/good.store" --keep-empty --expect-volumes "$NG"
check $PY "$HERE/gzip_cases.py" same "$T/good.store"
$PY "$HERE/gzip_cases.py" paths "$T/good.store" > "$T/paths0"
check diff <(sort "$D/good.txt") "$T/paths0"
check $M verify "$T/good.store"

# 2. corrupt files mixed in between good ones (a worker's buffer serves a good file after a failed one), with 1 and
# 2 workers; default near-empty rule this time
for threads in 1 2; do
  args=()
  i=0
  for g in "${GOOD[@]}"; do
    args+=("$D/good/$g")
    if [ $i -lt $NB ]; then args+=("$D/bad/${BAD[$i]}"); fi
    i=$((i + 1))
  done
  while [ $i -lt $NB ]; do args+=("$D/bad/${BAD[$i]}"); i=$((i + 1)); done
  S=$T/mixed$threads.store
  $M ingest "${args[@]}" --keep-paths -o "$S" --threads $threads 2>"$T/err$threads"
  rc=$?
  echo "--- --threads $threads: exit status $rc"
  cat "$T/err$threads"
  if [ $rc -eq 1 ]; then ok; else bad "--threads $threads: exit status $rc, expected 1 (>= 128: a crash)"; fi
  if grep -qi "sanitizer\|runtime error\|segmentation\|core dumped\|assert" "$T/err$threads"; then
    bad "--threads $threads: crash report"
  else ok; fi
  for r in "${BADROWS[@]}"; do
    f=${r%% *}
    n=$(grep -c "^$D/bad/$f: " "$T/err$threads")
    if [ "$n" -eq 1 ]; then ok; else bad "--threads $threads: $f ($r): expected one error line, got $n"; fi
  done
  # no other error lines: none for good files, none without a file name
  n=$(grep -vc "^$D/bad/[a-z_]*\.nii\.gz: \|^ingest: " "$T/err$threads")
  if [ "$n" -eq 0 ]; then ok; else bad "--threads $threads: $n unexpected lines on stderr"; fi
  check grep -q "^ingest: $NG ingested, 0 skipped (already stored), $NB failed" "$T/err$threads"
  $PY "$HERE/gzip_cases.py" paths "$S" > "$T/paths$threads"
  check diff <(sort "$D/good.txt") "$T/paths$threads"
  check $PY "$HERE/check_store.py" "$S" --expect-volumes "$NG"
  check $PY "$HERE/gzip_cases.py" same "$S"
  check $M verify "$S"
done
done_
