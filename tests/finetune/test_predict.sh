#!/usr/bin/env bash
# tests/finetune/test_predict.sh — `mrisam predict` end to end against nibabel and the PyTorch reference.
#
# A vit_test SAM checkpoint (counter_init weights, num_cls = 3: 4 mask tokens) and two small float32 volumes with
# oblique, non-identity affines (predict_ref.py make): a_las.nii.gz (41x35x7, x flipped, thick z → axial) and
# b_psr.nii (9x33x27, stored axes P/S/R → permuted and flipped, thick A-P → coronal), plus bad.nii.gz (garbage).
# Directory mode with --batch-size 3 and --png: exit 1 with exactly one stderr line naming bad.nii.gz, both good
# volumes written; predict_ref.py check then compares geometry (shape, affine, q/sform and codes, pixdim, empty
# descrip), label range, and the labels with the reference prediction (see predict_ref.py for the tie rule).
# Also: single-file mode with --batch-size 1 gives the same labels as the batched run; --axis bogus exits 2.
set -u
MRISAM=${MS_MRISAM:-mrisam}
SRC=${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
if ! $PY -c "import torch, numpy, nibabel" 2>/dev/null; then echo "skip: no torch/numpy/nibabel in $PY"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0

$PY "$SRC/tests/reference/sam_ref.py" ckpt "$T/sam_test.pth" vit_test 21 || exit 1
$PY "$SRC/tests/finetune/predict_ref.py" make "$T" || exit 1
head -c 500 /dev/urandom | gzip > "$T/in/bad.nii.gz"

"$MRISAM" predict --ckpt "$T/sam_test.pth" --in "$T/in" -o "$T/out" --png "$T/png" --batch-size 3 --threads 2 \
    > "$T/run.out" 2> "$T/run.err"
rc=$?
cat "$T/run.out"
if [ $rc -ne 1 ]; then
    echo "FAIL: directory run with one bad volume exits $rc, expected 1"; cat "$T/run.err"; fail=1
fi
if [ "$(wc -l < "$T/run.err")" -ne 1 ] || ! grep -q "bad.nii.gz: " "$T/run.err"; then
    echo "FAIL: expected one stderr line 'PATH/bad.nii.gz: reason', got:"; cat "$T/run.err"; fail=1
else
    echo "bad volume: $(cat "$T/run.err")"
fi
for f in a_las.nii.gz b_psr.nii; do
    [ -f "$T/out/$f" ] || { echo "FAIL: $T/out/$f not written"; fail=1; }
done
[ -f "$T/out/bad.nii.gz" ] && { echo "FAIL: output written for the bad volume"; fail=1; }
npng=$(ls "$T/png"/*.png 2>/dev/null | wc -l)
if [ "$npng" -ne 6 ]; then echo "FAIL: $npng overlay PNGs, expected 6"; fail=1; fi

$PY "$SRC/tests/finetune/predict_ref.py" check "$T" "$T/sam_test.pth" 3 || fail=1

# single file, batch 1: identical labels to the batched directory run
if "$MRISAM" predict --ckpt "$T/sam_test.pth" --in "$T/in/a_las.nii.gz" -o "$T/single.nii.gz" --threads 2 \
    > /dev/null; then
    $PY - "$T" <<'PYEOF' || fail=1
import sys, numpy as np, nibabel as nib
T = sys.argv[1]
a = np.asarray(nib.load(T + "/single.nii.gz").dataobj); b = np.asarray(nib.load(T + "/out/a_las.nii.gz").dataobj)
if not np.array_equal(a, b):
    print("FAIL: batch 1 and batch 3 differ in %d voxels" % (a != b).sum()); sys.exit(1)
print("batch 1 == batch 3")
PYEOF
else
    echo "FAIL: single-file predict"; fail=1
fi
"$MRISAM" predict --ckpt "$T/sam_test.pth" --in "$T/in/a_las.nii.gz" -o "$T/x.nii.gz" --axis bogus 2> /dev/null
rc=$?
if [ $rc -ne 2 ]; then echo "FAIL: --axis bogus exits $rc, expected 2"; fail=1; fi

# -o and --png in folders that do not exist yet: created (a missing folder used to fail after the work, on a .tmp path)
if "$MRISAM" predict --ckpt "$T/sam_test.pth" --in "$T/in/a_las.nii.gz" -o "$T/new/sub/x.nii.gz" --png "$T/new/png/p" \
    --threads 2 > /dev/null && [ -f "$T/new/sub/x.nii.gz" ] && [ "$(ls "$T/new/png/p"/*.png | wc -l)" -eq 3 ]; then
    echo "missing output folders created"
else
    echo "FAIL: predict into folders that do not exist"; fail=1
fi

if [ $fail -ne 0 ]; then echo "test_predict: FAILED"; exit 1; fi
echo "test_predict: passed"
