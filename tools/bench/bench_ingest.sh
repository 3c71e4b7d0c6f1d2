#!/bin/bash
# tools/bench/bench_ingest.sh [MRISAM] — the ingest benchmark of docs/PERFORMANCE.md: one fixed set of volumes (the
# mricron-data templates ch2, ch2bet, ch2better, aal, plus 6 generated int16 256x256x160 .nii.gz "scanner-like"
# volumes, seed 1), timed in one run: zcat of the inputs (the gzip floor), `mrisam ingest` with 1 and 2 threads
# (and 1 thread at zstd level 1), and tools/bench/bench_ingest.py (nibabel + numpy + zstandard + lmdb) at zstd
# levels 3 and 1 (each Python row does the work of the mrisam row at its level), then issue 3's three ratios, and
# tools/bench/zstd_floor.py: zstd alone on the stored slices (plain and with byte-shuffle / delta filters).
# Prints slices/s and MB/s (MB = 1e6 bytes of decoded voxel data) side by side, wall and CPU (user+sys) time, each
# the best of REPS runs (default 3), and the load average before and after. Needs /usr/bin/python3 with nibabel,
# zstandard, lmdb.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
M=${1:-${MRISAM:-$HERE/../../build/mrisam}}
REPS=${REPS:-3}
W=${BENCH_DIR:-/tmp/mrisam_bench_ingest}
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
IN=("$W"/in/*.nii.gz)
RAW=$($PY -c "import sys, nibabel as nib, numpy as np; print(sum(np.prod(nib.load(f).shape) * nib.load(f).get_data_dtype().itemsize for f in sys.argv[1:]))" "${IN[@]}")
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
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
T_ZCAT=$(best sh -c "zcat ${IN[*]} > /dev/null")
T_M1=$(best "$M" ingest "${IN[@]}" -o "$W/s.store" --threads 1 --quiet)
T_M2=$(best "$M" ingest "${IN[@]}" -o "$W/s.store" --threads 2 --quiet)
T_M1L1=$(best "$M" ingest "${IN[@]}" -o "$W/s.store" --threads 1 --quiet --zstd-level 1)
T_PY=$(best $PY "$HERE/bench_ingest.py" "$W/p.store" "${IN[@]}")
T_PYL1=$(best $PY "$HERE/bench_ingest.py" --zstd-level 1 "$W/p.store" "${IN[@]}")
"$M" ingest "${IN[@]}" -o "$W/s.store" --threads 2 2>&1 | tail -1
N=$($PY -c "import lmdb; e = lmdb.open('$W/s.store', readonly=True, lock=False, max_dbs=8); print(e.open_db(b'slices', create=False) and e.begin().stat(e.open_db(b'slices', create=False))['entries'])")
echo "load average before/after: $LOAD0 / $(cut -d' ' -f1-3 /proc/loadavg)"
echo "inputs: ${#IN[@]} volumes, $(du -cb "${IN[@]}" | tail -1 | cut -f1) bytes compressed, $RAW bytes of voxels, $N slices stored; best of $REPS; $(nproc) cores"
echo "wall = elapsed seconds (best of $REPS); cpu = user+sys seconds (best of $REPS; on a shared machine the fairer figure)"
printf "%-28s %8s %8s %11s %9s %8s %8s\n" method wall cpu slices/s MB/s "wall/zc" "cpu/zc"
ZW=${T_ZCAT% *}; ZC=${T_ZCAT#* }
for row in "zcat (gzip floor)|$T_ZCAT" "mrisam ingest --threads 1|$T_M1" "mrisam ingest --threads 2|$T_M2" \
           "mrisam -t 1 --zstd-level 1|$T_M1L1" "python nibabel+numpy+zstd|$T_PY" "python, zstd level 1|$T_PYL1"; do
  name=${row%|*}; t=${row#*|}; w=${t% *}; c=${t#* }
  printf "%-28s %8.2f %8.2f %11.0f %9.1f %8.2f %8.2f\n" "$name" "$w" "$c" "$(echo "$N / $w" | bc -l)" \
    "$(echo "$RAW / $w / 1000000" | bc -l)" "$(echo "$w / $ZW" | bc -l)" "$(echo "$c / $ZC" | bc -l)"
done
# issue 3's targets, wall and CPU: (1) 1 thread <= 2x zcat, (2) 2 threads <= zcat (1 thread), (3) Python >= 4x ours
ratio() { echo "$1 / $2" | bc -l; }
M1W=${T_M1% *}; M1C=${T_M1#* }; M2W=${T_M2% *}; PYW=${T_PY% *}; PYC=${T_PY#* }
L1W=${T_M1L1% *}; L1C=${T_M1L1#* }; P1W=${T_PYL1% *}; P1C=${T_PYL1#* }
printf "targets: (1) 1 thread / zcat = %.2f wall, %.2f cpu (<= 2)   (2) 2 threads / zcat = %.2f wall (<= 1)\n" \
  "$(ratio "$M1W" "$ZW")" "$(ratio "$M1C" "$ZC")" "$(ratio "$M2W" "$ZW")"
printf "         (3) python / mrisam 1 thread = %.2f wall, %.2f cpu at zstd 3; %.2f wall, %.2f cpu at zstd 1 (>= 4)\n" \
  "$(ratio "$PYW" "$M1W")" "$(ratio "$PYC" "$M1C")" "$(ratio "$P1W" "$L1W")" "$(ratio "$P1C" "$L1C")"
printf "             python / mrisam 2 threads (ingest's default on this machine: all cores) = %.2f wall at zstd 3\n" \
  "$(ratio "$PYW" "$M2W")"
# the part of both sides that is the same C zstd on the same slices: what is left for 4x at 1 thread
$PY "$HERE/zstd_floor.py" "$W/s.store" > "$W/zstd_floor.txt"
cat "$W/zstd_floor.txt"
ZF=$(awk '/zstd plain/ { print $3 }' "$W/zstd_floor.txt")
printf "zstd level 3 alone: %.2f s of python's %.2f and mrisam's %.2f (1 thread); 4x would leave mrisam %.2f s for everything else (it uses %.2f)\n" \
  "$ZF" "$PYW" "$M1W" "$(echo "$PYW / 4 - $ZF" | bc -l)" "$(echo "$M1W - $ZF" | bc -l)"
