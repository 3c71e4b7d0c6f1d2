#!/usr/bin/env bash
# tools/demo.sh MRISAM [OUTDIR] — the main job on the embedded default data (Debian's mricron-data brain templates):
# ingest the ch2 T1 template with its brain mask (ch2bet > 0) as labels, verify and inspect the store, export a slice to look at,
# and run the op self-check. Later issues extend it to pretrain → finetune → predict → eval.
set -euo pipefail
MRISAM=${1:?usage: demo.sh path/to/mrisam [outdir]}
OUT=${2:-demo-out}
TPL=/usr/share/mricron/templates
[ -f "$TPL/ch2.nii.gz" ] || { echo "demo: $TPL/ch2.nii.gz missing (apt-get install mricron-data)" >&2; exit 1; }
mkdir -p "$OUT"
printf 'image,label\n%s,%s\n' "$TPL/ch2.nii.gz" "$TPL/ch2bet.nii.gz" > "$OUT/pairs.csv"
echo "== ingest: ch2 (T1) with the ch2bet brain (> 0) as a binary label"
rm -rf "$OUT/store"
"$MRISAM" ingest --labels "$OUT/pairs.csv" --label-threshold 0 --axis axial -o "$OUT/store"
echo "== verify"
"$MRISAM" verify "$OUT/store"
echo "== inspect"
"$MRISAM" inspect "$OUT/store" | head -40
key=$(( $("$MRISAM" inspect "$OUT/store" --json 2>/dev/null | sed -n 's/.*"slices": *\([0-9]*\).*/\1/p' | head -1 || echo 0) / 2 ))
echo "== export slice $key (and its label) to $OUT/slice.png"
"$MRISAM" export "$OUT/store" --key "$key" --label -o "$OUT/slice.png"
echo "demo finished: outputs in $OUT/"
