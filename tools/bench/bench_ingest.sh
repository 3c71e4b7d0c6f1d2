#!/bin/bash
# tools/bench/bench_ingest.sh [MRISAM] — the ingest benchmark of docs/PERFORMANCE.md, two sets of volumes timed in
# one run:
#  - "templates": the mricron-data templates ch2, ch2bet, ch2better, aal, plus 6 generated int16 256x256x160
#    .nii.gz smooth volumes (seed 1);
#  - "realistic": REAL_N (24) volumes of tools/bench/gen_archive.py (seed 1): Rician noise over the whole field,
#    int16/uint16/float32, every orientation, 4D and odd headers, gzip level 6 (generated once into the bench
#    folder, reused after).
# For each set: zcat of the inputs (the gzip floor), `mrisam ingest` with 1 thread and with all cores ($(nproc)),
# the ratios to zcat (issue 19's targets: 1 thread <= 1.5x zcat, all cores <= zcat single-thread) and the store's
# bytes (du -sb of the store directory) over the .nii.gz bytes (target <= 1.0 for integer sources; the realistic
# set's integer subset, int16/uint16 without scl_slope, is ingested alone for that figure). The templates set also
# gets 1 thread at zstd level 1 and, unless PY_ROWS=0, tools/bench/bench_ingest.py (nibabel + numpy + zstandard +
# lmdb) at zstd levels 3 and 1 (issue 3's comparison) and tools/bench/zstd_floor.py (zstd alone on the stored
# slices). The realistic set is also ingested in layout 1 (`--layout 1`: normalised at ingest, the layout before
# issue 19) for its time and bytes, and both layouts' stores go through `mrisam bench loader` (1 worker: decode,
# decode + MAE augmentation to 256 and to 1024), alternating REPS times, best of each. Prints slices/s and MB/s (MB = 1e6 bytes of decoded voxel data), wall and CPU (user+sys) time, each the
# best of REPS runs (default 3), and the load average before and after. Needs /usr/bin/python3 with nibabel,
# zstandard, lmdb.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
M=${1:-${MRISAM:-$HERE/../../build/mrisam}}
REPS=${REPS:-3}
W=${BENCH_DIR:-/tmp/mrisam_bench_ingest}
REAL_N=${REAL_N:-24}
PY_ROWS=${PY_ROWS:-1}
NP=$(nproc)
PY=/usr/bin/python3
mkdir -p "$W/in"
TPL=$(dpkg -L mricron-data 2>/dev/null | grep '/ch2.nii.gz$' | xargs -r dirname)
for f in ch2 ch2bet ch2better aal; do [ -n "$TPL" ] && cp -n "$TPL/$f.nii.gz" "$W/in/" 2>/dev/null || true; done
$PY - "$W/in" <<'PYEOF'
import os, sys, numpy as np, nibabel as nib
d = sys.argv[1]
rng = np.random.default_rng(1)
x, y, z = np.meshgrid(np.linspace(-1, 1, 256), np.linspace(-1, 1, 256), np.linspace(-1, 1, 160), indexing="ij")
head = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.85) ** 2 < 1
for i in range(6):
    p = f"{d}/gen{i}.nii.gz"
    if os.path.exists(p):
        continue
    tissue = 800 + 400 * np.sin(6 * x + i) * np.cos(5 * y) + 300 * (z > 0.2)
    v = np.where(head, tissue + rng.normal(0, 30, head.shape), np.abs(rng.normal(0, 5, head.shape)))
    nib.Nifti1Image(v.astype(np.int16), np.diag([0.9, 0.9, 1.2, 1])).to_filename(p)
PYEOF
$PY "$HERE/gen_archive.py" "$W/real" --n "$REAL_N" --seed 1 -j "$NP" | tail -1
best() { # "wall cpu": the best wall time and the best user+sys CPU time of REPS runs of "$@"
  local bw=999999 bc_=999999 w c
  for _ in $(seq "$REPS"); do
    rm -rf "$W/s.store" "$W/p.store"
    /usr/bin/time -f "%e %U %S" -o "$W/time.txt" "$@" >/dev/null 2>&1
    read -r w u s < "$W/time.txt"
    c=$(echo "$u + $s" | bc)
    bw=$(echo "if ($w < $bw) $w else $bw" | bc); bc_=$(echo "if ($c < $bc_) $c else $bc_" | bc)
  done
  echo "$bw $bc_"
}
ratio() { echo "$1 / $2" | bc -l; }
voxel_bytes() {
  $PY -c "import sys, nibabel as nib, numpy as np
hs = [nib.load(f).header for f in sys.argv[1:]]
print(sum(int(np.prod(h.get_data_shape())) * h.get_data_dtype().itemsize for h in hs))" "$@"
}
n_slices() {
  $PY -c "import lmdb; e = lmdb.open('$1', readonly=True, lock=False, max_dbs=8)
d = e.open_db(b'slices', create=False)  # before the transaction that reads it
print(e.begin().stat(d)['entries'])"
}
# the realistic set's integer sources (int16/uint16 without scl_slope): MANIFEST DIR N
int_sources() {
  $PY -c "import json, sys
m = json.load(open(sys.argv[1]))
for e in m['volumes']:
    if e['index'] < int(sys.argv[3]) and e['dtype'] != 'float32' and e['oddity'] != 'scl_slope':
        print(sys.argv[2] + '/' + e['file'])" "$@"
}
# store bytes / .nii.gz bytes of the files given, in layout LAYOUT: one ingest with all cores into a fresh store
store_ratio() { # LAYOUT FILES...
  local layout=$1; shift
  rm -rf "$W/r.store"
  "$M" ingest "$@" -o "$W/r.store" --threads "$NP" --quiet --layout "$layout" 2>/dev/null || true
  echo "$(du -sb "$W/r.store" | cut -f1) $(du -cb "$@" | tail -1 | cut -f1)"
}
# run_set NAME FILES...: the rows of one set (extra rows for the templates)
run_set() {
  local name=$1; shift
  local IN=("$@") RAW GZ N ZW ZC rows row t w c SB GB
  RAW=$(voxel_bytes "${IN[@]}")
  GZ=$(du -cb "${IN[@]}" | tail -1 | cut -f1)
  local T_ZCAT T_M1 T_MN
  T_ZCAT=$(best sh -c "zcat ${IN[*]} > /dev/null")
  T_M1=$(best "$M" ingest "${IN[@]}" -o "$W/s.store" --threads 1 --quiet)
  T_MN=$(best "$M" ingest "${IN[@]}" -o "$W/s.store" --threads "$NP" --quiet)
  rows=("zcat (gzip floor)|$T_ZCAT" "mrisam ingest --threads 1|$T_M1" "mrisam ingest --threads $NP|$T_MN")
  [ "$name" = realistic ] && rows+=("ingest --layout 1 -t 1|$(best "$M" ingest "${IN[@]}" -o "$W/s.store" --threads 1 --quiet --layout 1)" \
    "ingest --layout 1 -t $NP|$(best "$M" ingest "${IN[@]}" -o "$W/s.store" --threads "$NP" --quiet --layout 1)")
  if [ "$name" = templates ]; then
    rows+=("mrisam -t 1 --zstd-level 1|$(best "$M" ingest "${IN[@]}" -o "$W/s.store" --threads 1 --quiet --zstd-level 1)")
    if [ "$PY_ROWS" = 1 ]; then
      T_PY=$(best $PY "$HERE/bench_ingest.py" "$W/p.store" "${IN[@]}")
      T_PYL1=$(best $PY "$HERE/bench_ingest.py" --zstd-level 1 "$W/p.store" "${IN[@]}")
      rows+=("python nibabel+numpy+zstd|$T_PY" "python, zstd level 1|$T_PYL1")
    fi
  fi
  rm -rf "$W/s.store"
  "$M" ingest "${IN[@]}" -o "$W/s.store" --threads "$NP" 2>&1 | tail -1
  N=$(n_slices "$W/s.store")
  SB=$(du -sb "$W/s.store" | cut -f1)
  echo
  echo "== $name: ${#IN[@]} files, $GZ bytes .nii.gz, $RAW bytes of voxels, $N slices stored; best of $REPS; $NP cores"
  printf "%-28s %8s %8s %11s %9s %8s %8s\n" method wall cpu slices/s MB/s "wall/zc" "cpu/zc"
  ZW=${T_ZCAT% *}; ZC=${T_ZCAT#* }
  for row in "${rows[@]}"; do
    name_=${row%|*}; t=${row#*|}; w=${t% *}; c=${t#* }
    printf "%-28s %8.2f %8.2f %11.0f %9.1f %8.2f %8.2f\n" "$name_" "$w" "$c" "$(echo "$N / $w" | bc -l)" \
      "$(echo "$RAW / $w / 1000000" | bc -l)" "$(ratio "$w" "$ZW")" "$(ratio "$c" "$ZC")"
  done
  printf "targets: 1 thread / zcat = %.2f wall, %.2f cpu (<= 1.5); %d threads / zcat = %.2f wall (<= 1)\n" \
    "$(ratio "${T_M1% *}" "$ZW")" "$(ratio "${T_M1#* }" "$ZC")" "$NP" "$(ratio "${T_MN% *}" "$ZW")"
  printf "store: %d bytes (du -sb) / %d bytes .nii.gz = %.3f (<= 1.0 for integer sources)\n" "$SB" "$GZ" \
    "$(ratio "$SB" "$GZ")"
  if [ "$name" = realistic ]; then
    mapfile -t INT < <(int_sources "$W/real/manifest.json" "$W/real" "$REAL_N")
    read -r SB GB <<<"$(store_ratio 2 "${INT[@]}")"
    printf "store, integer sources only (%d of %d files): %d / %d bytes = %.3f (<= 1.0)\n" "${#INT[@]}" "${#IN[@]}" \
      "$SB" "$GB" "$(ratio "$SB" "$GB")"
    read -r SB GB <<<"$(store_ratio 1 "${IN[@]}")"
    printf "layout 1 (normalised at ingest, the layout before): store %d bytes = %.3f of the .nii.gz\n" "$SB" \
      "$(ratio "$SB" "$GZ")"
    read -r SB GB <<<"$(store_ratio 1 "${INT[@]}")"
    printf "layout 1, integer sources only: %d bytes = %.3f\n" "$SB" "$(ratio "$SB" "$(du -cb "${INT[@]}" | tail -1 | cut -f1)")"
  fi
  if [ "$name" = templates ] && [ "$PY_ROWS" = 1 ]; then
    local M1W=${T_M1% *} M1C=${T_M1#* } PYW=${T_PY% *} PYC=${T_PY#* } MNW=${T_MN% *}
    printf "issue 3: python / mrisam 1 thread = %.2f wall, %.2f cpu at zstd 3 (>= 4); python / mrisam %d threads = %.2f wall\n" \
      "$(ratio "$PYW" "$M1W")" "$(ratio "$PYC" "$M1C")" "$NP" "$(ratio "$PYW" "$MNW")"
    # the part of both sides that is the same C zstd on the same slices
    rm -rf "$W/z.store" # zstd_floor.py reads layout-1 (normalised, unshuffled) slices: what the Python script stores
    "$M" ingest "${IN[@]}" -o "$W/z.store" --layout 1 --quiet
    $PY "$HERE/zstd_floor.py" "$W/z.store" > "$W/zstd_floor.txt"
    cat "$W/zstd_floor.txt"
    ZF=$(awk '/zstd plain/ { print $3 }' "$W/zstd_floor.txt")
    printf "zstd level 3 alone: %.2f s of python's %.2f and mrisam's %.2f (1 thread)\n" "$ZF" "$PYW" "$M1W"
  fi
}
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
run_set templates "$W"/in/*.nii.gz
mapfile -t REAL < <(ls "$W"/real/vol_*.nii.gz | head -n "$REAL_N")
run_set realistic "${REAL[@]}"
# the loader on the same slices in both layouts (LOADER_SECONDS per mode, alternating, best of REPS)
rm -rf "$W/l1.store" "$W/l2.store"
"$M" ingest "${REAL[@]}" -o "$W/l1.store" --layout 1 --quiet 2>/dev/null
"$M" ingest "${REAL[@]}" -o "$W/l2.store" --quiet 2>/dev/null
: > "$W/loader.jsonl"
for _ in $(seq "$REPS"); do
  for l in 1 2; do
    "$M" bench loader --store "$W/l$l.store" --threads 1 --no-torch --seconds "${LOADER_SECONDS:-3}" 2>/dev/null |
      grep '^{"bench":"loader"' | sed "s/^{/{\"layout\":$l,/" >> "$W/loader.jsonl"
  done
done
echo
echo "== loader on the realistic set, 1 worker, best of $REPS (slices/s wall; per CPU-second)"
$PY - "$W/loader.jsonl" <<'PYEOF'
import json, sys
best = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    k = (r["mode"], r["layout"])
    w, c = best.get(k, (0, 0))
    best[k] = (max(w, r["slices_per_s"]), max(c, r["slices_per_cpu_s"]))
print(f"{'mode':10s} {'layout 1':>18s} {'layout 2':>18s} {'2 / 1':>6s}")
for m in ("decode", "aug256", "aug1024"):
    a, b = best.get((m, 1), (0, 0)), best.get((m, 2), (0, 0))
    print(f"{m:10s} {a[0]:8.0f} {a[1]:8.0f}/cs {b[0]:8.0f} {b[1]:8.0f}/cs {b[0] / a[0] if a[0] else 0:6.2f}")
PYEOF
rm -rf "$W/s.store" "$W/p.store" "$W/r.store" "$W/z.store" "$W/l1.store" "$W/l2.store"
echo
echo "load average before/after: $LOAD0 / $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wall = elapsed seconds (best of $REPS); cpu = user+sys seconds (best of $REPS; on a shared machine the fairer figure)"
