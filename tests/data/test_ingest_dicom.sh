# DICOM sources of `mrisam ingest` (data/dicom.c): series generated with pydicom (gen_dicom.py: axial, sagittal and
# oblique series in nested folders, a folder mixing a NIfTI file and a DICOM series, a single DICOM file) whose
# headers hold identifying fields with random strings. Checks: every series becomes one volume of kind "dicom" whose
# shape, spacing and pixels match the DICOM files read back with pydicom (check_dicom.py); none of the identifying
# strings and no temporary path in any file of the store nor in ingest's output; the temporary folders removed after
# success, failure and SIGTERM; a rerun skips every series without running the converter (a failing fake dcm2niix
# first on PATH); the converter sees only the series' files, its output is never echoed, its failure is one line
# naming the folder; without dcm2niix on PATH one line per series names the package.
source "$MS_SOURCE_DIR/tests/data/common.sh"
$PY -c 'import pydicom' 2>/dev/null || { echo "FAIL: python3-pydicom missing (tools/run.sh installs it)"; exit 1; }
DCM2NIIX=$(command -v dcm2niix) || { echo "FAIL: dcm2niix missing (tools/run.sh installs it)"; exit 1; }
D=$T/dcm
$PY "$HERE/gen_dicom.py" "$D" "$SEED" 2>/dev/null || exit 1
printf 'not an image\n' >"$D/archive/notes.txt"              # neither NIfTI nor DICOM: not taken
head -c 200 /dev/urandom >"$D/archive/deep/random.bin"          # read (132 bytes) and left
SERIES=("$D/archive/axial" "$D/archive/deep/er/sag" "$D/archive/deep/obl" "$D/mixed" "$D/single.dcm")
mkdir -p "$T/tmp" "$T/fake" "$T/none"
export TMPDIR=$T/tmp # the converter's private folders go here, so the test can see them removed
tmp_empty() { [ -z "$(ls -A "$T/tmp")" ]; }
# every identifying string, and the temporary folders' names, absent from every byte of the given files
no_leak() {
  local f s n=0
  for f in "$@"; do
    while read -r s; do
      [ -n "$s" ] || continue
      if grep -qaF -- "$s" "$f"; then
        echo "LEAK: '$s' in $f"
        n=$((n + 1))
      fi
    done < <(cat "$D/secrets.txt"; echo "mrisam-dicom-"; echo "$T/tmp")
  done
  [ "$n" -eq 0 ]
}

# 1. the archive (nested folders), the mixed folder and a single file, paths kept
$M ingest "$D/archive" "$D/mixed" "$D/single.dcm" -o "$T/a.store" --keep-paths --keep-empty --threads 2 \
  >"$T/a.out" 2>"$T/a.err"
rc=$?
cat "$T/a.err"
check test $rc -eq 0
check grep -q "ingest: 6 ingested, 0 skipped (already stored), 0 failed; 6 volumes, 47 slices" "$T/a.err"
check $PY "$HERE/check_dicom.py" "$T/a.store" "${SERIES[@]}"
kinds=$($PY -c "import sys; sys.path.insert(0,'$HERE'); from storelib import Store
print(' '.join(sorted(v['kind'] for v in Store('$T/a.store').volumes())))")
echo "kinds: $kinds"
check test "$kinds" = "dicom dicom dicom dicom dicom nifti"
# the voxels stored are those the series hold: 64x48x12 + 64x64x10 + 56x64x9 + 48x48x8 + 40x40
vox=$($PY -c "import sys, numpy as np; sys.path.insert(0,'$HERE'); from storelib import Store
print(sum(int(np.prod(v['shape'])) for v in Store('$T/a.store').volumes() if v['kind'] == 'dicom'))")
check test "$vox" = $((64 * 48 * 12 + 64 * 64 * 10 + 56 * 64 * 9 + 48 * 48 * 8 + 40 * 40))
check tmp_empty

# 2. the default (no paths): the same content; a rerun skips everything and never runs the converter
check $M ingest "$D" -o "$T/b.store" --quiet
cat >"$T/fake/dcm2niix" <<EOF
#!/bin/sh
echo "\$@" >>"$T/fake.args"
ls "\$9" | wc -l >>"$T/fake.args"
echo "FAKE-ECHO-\$\$ $(sed -n 1p "$D/secrets.txt")"
echo "FAKE-ECHO-ERR" >&2
exit 3
EOF
chmod +x "$T/fake/dcm2niix"
PATH=$T/fake:$PATH $M ingest "$D" -o "$T/b.store" >"$T/b.out" 2>"$T/b.err"
rc=$?
cat "$T/b.err"
check test $rc -eq 0
check grep -q "ingest: 0 ingested, 6 skipped (already stored), 0 failed" "$T/b.err"
check test ! -e "$T/fake.args"
check tmp_empty

# 3. the converter failing: one line per series naming its folder and the exit status, its output never echoed;
# it was given the fixed options and an input folder holding only the series' files
PATH=$T/fake:$PATH $M ingest "$D/mixed" "$D/archive/axial" -o "$T/c.store" --threads 1 >"$T/c.out" 2>"$T/c.err"
rc=$?
cat "$T/c.err"
check test $rc -eq 1
check grep -qx "$D/mixed: dcm2niix failed (exit 3)" "$T/c.err"
check grep -qx "$D/archive/axial: dcm2niix failed (exit 3)" "$T/c.err"
check grep -q "ingest: 1 ingested, 0 skipped (already stored), 2 failed" "$T/c.err"
check test "$(grep -c "FAKE-ECHO" "$T/c.out" "$T/c.err" | awk -F: '{s += $2} END {print s}')" = 0
cat "$T/fake.args"
check test "$(grep -c -- "^-f vol -b n -z n -o $T/tmp/mrisam-dicom-.*/out $T/tmp/mrisam-dicom-.*/in\$" "$T/fake.args")" = 2
check test "$(sed -n 2p "$T/fake.args")" = 8  # the mixed folder's 8 DICOM files, not its NIfTI file
check test "$(sed -n 4p "$T/fake.args")" = 12
check tmp_empty

# 4. no dcm2niix on PATH: one line per series naming it and the package; the NIfTI file beside them still ingests
PATH=$T/none $M ingest "$D/mixed" "$D/archive" -o "$T/d.store" >"$T/d.out" 2>"$T/d.err"
rc=$?
cat "$T/d.err"
check test $rc -eq 1
for s in "$D/mixed" "$D/archive/axial" "$D/archive/deep/er/sag" "$D/archive/deep/obl"; do
  check grep -qx "$s: dcm2niix not found; install Debian's dcm2niix package" "$T/d.err"
done
check grep -q "ingest: 1 ingested, 0 skipped (already stored), 4 failed" "$T/d.err"

# 5. two series in one folder: one source, two volumes
mkdir -p "$T/two"
cp "$D/archive/axial/"* "$T/two/"
for f in "$D/archive/deep/er/sag/"*; do cp "$f" "$T/two/s_$(basename "$f")"; done
check $M ingest "$T/two" -o "$T/e.store" --keep-empty --quiet
nv=$($PY -c "import sys; sys.path.insert(0,'$HERE'); from storelib import Store
print(sorted(tuple(v['shape']) for v in Store('$T/e.store').volumes()))")
echo "two series in one folder: $nv"
check test "$nv" = "[(10, 64, 64), (48, 64, 12)]"
check tmp_empty

# 6. SIGTERM while the converter runs: exit 75 within seconds, the converter stopped, the temporary folder removed
cat >"$T/fake/dcm2niix" <<EOF
#!/bin/sh
echo \$\$ >"$T/slow.pid"
exec sleep 60
EOF
PATH=$T/fake:$PATH $M ingest "$D/archive/axial" -o "$T/f.store" 2>"$T/f.err" &
pid=$!
for ((i = 0; i < 100; i++)); do [ -s "$T/slow.pid" ] && break; sleep 0.1; done
term_wait "$pid"
cat "$T/f.err"
check test $rc -eq 75
check grep -q "$D/archive/axial: interrupted while converting" "$T/f.err"
if [ -s "$T/slow.pid" ] && kill -0 "$(cat "$T/slow.pid")" 2>/dev/null; then
  bad "the converter still runs"
  kill "$(cat "$T/slow.pid")"
fi
check tmp_empty

# 7. nothing identifying anywhere: every file of every store, every output of ingest
files=()
for s in a b c d e f; do for f in "$T/$s.store"/*; do [ -f "$f" ] && files+=("$f"); done; done
files+=("$T"/*.out "$T"/*.err)
echo "searched ${#files[@]} files for $(wc -l <"$D/secrets.txt") identifying strings"
check no_leak "${files[@]}"
done_
