#!/usr/bin/env bash
# tests/finetune/test_predict_png.sh — `mrisam predict` on 2-D images: PNGs (8-bit gray, 16-bit gray, 8-bit RGB with
# R = G = B; random smooth intensities, seed printed) given as a list file (a comment, a blank line, CRLF ends,
# relative and absolute paths), as a folder and one by one must give 8-bit gray PNGs of the image's size whose class
# ids equal predict's labels for the same pixels stored as one-slice NIfTI volumes (rows along x, as ingest stores a
# PNG); PNGs are written and read here by Pillow, an independent codec. JPEG (by name and by signature), a list
# naming a JPEG (exit 1), a NIfTI -o for a PNG, -o the input folder and a folder of JPEGs only (usage errors, 2) are
# refused with one line before any work.
set -u
MRISAM=${MS_MRISAM:-mrisam}
SRC=${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
if ! $PY -c "import torch, numpy, nibabel, PIL" 2>/dev/null; then echo "skip: no torch/numpy/nibabel/PIL"; exit 77; fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
SEED=${MS_TEST_SEED:-$RANDOM$RANDOM}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
fail=0
$PY "$SRC/tests/reference/sam_ref.py" ckpt "$T/sam_test.pth" vit_test 21 || exit 1
$PY - "$T" "$SEED" <<'PYEOF' || exit 1
import os, sys
import numpy as np, nibabel as nib
from PIL import Image
from scipy import ndimage
T, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
for d in ("imgs", "nii", "sub", "bad"):
    os.makedirs(f"{T}/{d}")
def smooth(h, w, top):
    v = ndimage.gaussian_filter(rng.random((h, w)), 2.5)
    v = (v - v.min()) / (v.max() - v.min())
    return np.rint(v * top)
imgs = {"a": smooth(40, 36, 255).astype(np.uint8), "b": smooth(30, 44, 65535).astype(np.uint16),
        "c": smooth(24, 28, 255).astype(np.uint8)}
Image.fromarray(imgs["a"], "L").save(f"{T}/imgs/a.png")
Image.fromarray(imgs["b"], "I;16").save(f"{T}/imgs/b.png")
Image.fromarray(np.repeat(imgs["c"][:, :, None], 3, 2), "RGB").save(f"{T}/sub/c.png")
for k, v in imgs.items():  # the same pixels as one-slice volumes: array (rows, columns, 1), RAS identity
    nib.save(nib.Nifti1Image(v[:, :, None], np.eye(4)), f"{T}/nii/{k}.nii.gz")
os.symlink(f"{T}/sub/c.png", f"{T}/imgs/c.png")
with open(f"{T}/list.txt", "wb") as f:
    f.write(f"# images\r\nimgs/a.png\r\n\r\n  {T}/imgs/b.png  \r\nsub/c.png\r\n".encode())
Image.fromarray(imgs["a"], "L").save(f"{T}/bad/x.jpg")
open(f"{T}/bad/noext", "wb").write(open(f"{T}/bad/x.jpg", "rb").read())
open(f"{T}/bad/list.txt", "w").write(f"{T}/imgs/a.png\nx.jpg\n")
PYEOF
M() { "$MRISAM" predict --ckpt "$T/sam_test.pth" --threads 2 --batch-size 2 "$@"; }
M --in "$T/list.txt" -o "$T/out_list" > "$T/list.out" || { echo "FAIL: predict on a list"; fail=1; }
grep -q "3 of 3 images written" "$T/list.out" || { echo "FAIL: summary: $(cat "$T/list.out")"; fail=1; }
M --in "$T/nii" -o "$T/out_nii" > /dev/null || { echo "FAIL: predict on the NIfTI slices"; fail=1; }
M --in "$T/imgs" -o "$T/out_dir" > /dev/null || { echo "FAIL: predict on a folder"; fail=1; }
M --in "$T/imgs/b.png" -o "$T/single.png" > /dev/null || { echo "FAIL: predict on one PNG"; fail=1; }
$PY - "$T" <<'PYEOF' || fail=1
import sys
import numpy as np, nibabel as nib
from PIL import Image
T = sys.argv[1]
bad, seen = [], set()
for k in "abc":
    im = Image.open(f"{T}/out_list/{k}.png")
    got = np.asarray(im)
    want = np.asarray(nib.load(f"{T}/out_nii/{k}.nii.gz").dataobj)[:, :, 0]
    src = Image.open(f"{T}/imgs/{k}.png")
    if im.mode != "L" or im.size != src.size:
        bad.append(f"{k}.png: mode {im.mode} size {im.size}, want L {src.size}")
    elif not np.array_equal(got, want):
        bad.append(f"{k}.png: {int((got != want).sum())} pixels differ from the one-slice NIfTI's labels")
    if not np.array_equal(np.asarray(Image.open(f"{T}/out_dir/{k}.png")), got):
        bad.append(f"{k}.png: the folder run differs from the list run")
    seen |= set(np.unique(got).tolist())
if not np.array_equal(np.asarray(Image.open(f"{T}/single.png")), np.asarray(Image.open(f"{T}/out_list/b.png"))):
    bad.append("single.png differs from the list run's b.png")
if len(seen) < 2:
    bad.append(f"degenerate test: classes {sorted(seen)}")
for b in bad:
    print("FAIL", b)
print(f"3 images: PNG labels == one-slice NIfTI labels, classes {sorted(seen)}: {'ok' if not bad else 'FAILED'}")
sys.exit(1 if bad else 0)
PYEOF
refuse() { # exit-status pattern args...
    local want=$1 pat=$2; shift 2
    M "$@" > /dev/null 2> "$T/err"; rc=$?
    if [ $rc -ne "$want" ] || [ "$(wc -l < "$T/err")" -ne 1 ] || ! grep -q -- "$pat" "$T/err"; then
        echo "FAIL: $*: exit $rc, want $want and one line matching '$pat':"; cat "$T/err"; fail=1
    else
        echo "refused: $(cat "$T/err")"
    fi
}
refuse 1 "bad/x.jpg: a JPEG image" --in "$T/bad/x.jpg" -o "$T/o1.png"
refuse 1 "bad/noext: a JPEG image" --in "$T/bad/noext" -o "$T/o2.png"
refuse 1 "x.jpg: a JPEG image" --in "$T/bad/list.txt" -o "$T/o3"
[ -e "$T/o3/a.png" ] && { echo "FAIL: a list naming a JPEG was partly run"; fail=1; }
refuse 2 "o4.nii.gz: the labels of a PNG image are written as a PNG" --in "$T/imgs/a.png" -o "$T/o4.nii.gz"
refuse 2 "bad: no .nii, .nii.gz or .png files, but 1 image of other formats (JPEG" --in "$T/bad" -o "$T/o5"
sum0=$(cat "$T"/imgs/*.png | md5sum)
refuse 2 "imgs/a.png: the output would overwrite the input" --in "$T/imgs" -o "$T/imgs"
[ "$(cat "$T"/imgs/*.png | md5sum)" = "$sum0" ] || { echo "FAIL: the input images changed"; fail=1; }
[ $fail = 0 ] && echo "test_predict_png: all passed"
exit $fail
