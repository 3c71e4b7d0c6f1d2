# tests/finetune/ch2_brainmask.sh — sourced by the finetune CLI tests: ingests Debian's mricron-data ch2 T1 template
# twice, with two labellings of its brain-extracted twin ch2bet (ch2bet = ch2 × BET mask, same grid):
#   $T/brain : ch2bet > 0 (--label-threshold 0), values {0,1}: the brain mask;
#   $T/tissue: ch2bet grouped by intensity with --label-map (1..95 → 1 "dark", 96..255 → 2 "bright"; about GM/CSF
#              versus WM), values {0,1,2}, with --label-names.
# Exits 77 (skip) when the templates are missing. Needs T (scratch folder) and MRISAM set.
TPL=${MS_MRICRON_TEMPLATES:-/usr/share/mricron/templates}
for f in ch2 ch2bet; do
    [ -f "$TPL/$f.nii.gz" ] || { echo "skip: $TPL/$f.nii.gz missing (apt-get install mricron-data)"; exit 77; }
done
printf 'image,label\n%s,%s\n' "$TPL/ch2.nii.gz" "$TPL/ch2bet.nii.gz" > "$T/pairs.csv"
: > "$T/tissue_map.csv"
for v in $(seq 1 255); do echo "$v,$(( v <= 95 ? 1 : 2 ))" >> "$T/tissue_map.csv"; done
printf '1 dark\n2 bright\n' > "$T/tissue_names.txt"
"$MRISAM" ingest --labels "$T/pairs.csv" --label-threshold 0 --axis axial -o "$T/brain" > "$T/ingest_brain.log" 2>&1 ||
    { echo "FAIL: ingest brain"; cat "$T/ingest_brain.log"; exit 1; }
"$MRISAM" ingest --labels "$T/pairs.csv" --label-map "$T/tissue_map.csv" --label-names "$T/tissue_names.txt" \
    --axis axial -o "$T/tissue" > "$T/ingest_tissue.log" 2>&1 ||
    { echo "FAIL: ingest tissue"; cat "$T/ingest_tissue.log"; exit 1; }
