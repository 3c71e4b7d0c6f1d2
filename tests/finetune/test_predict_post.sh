#!/usr/bin/env bash
# tests/finetune/test_predict_post.sh — `mrisam predict --keep-largest / --min-size / --connectivity` end to end,
# checked with scipy.ndimage.label (an independent labeller) on the unprocessed prediction of the same volumes: every
# class keeps whole components of the plain prediction only (voxels removed become 0); --keep-largest leaves exactly
# one component per class, of the largest size (full 26-connectivity, or 6 with --connectivity 6); --min-size N keeps
# exactly the components of N voxels or more (N drawn at random, seed printed); bad values are usage errors.
set -u
MRISAM=${MS_MRISAM:-mrisam}
SRC=${MS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=/usr/bin/python3
if ! $PY -c "import torch, numpy, nibabel, scipy.ndimage" 2>/dev/null; then
    echo "skip: no torch/numpy/nibabel/scipy"; exit 77
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
SEED=${MS_TEST_SEED:-$RANDOM$RANDOM}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
fail=0
$PY "$SRC/tests/reference/sam_ref.py" ckpt "$T/sam_test.pth" vit_test 21 || exit 1
# one small volume (3 thick axial slices, x flipped, oblique), random smooth intensities: the untrained model's
# prediction is fragmented, with many components per class
$PY - "$T" "$SEED" <<'PYEOF' || exit 1
import os, sys
import numpy as np, nibabel as nib
from scipy import ndimage
T, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
v = ndimage.gaussian_filter(rng.random((40, 36, 3)), (2, 2, 0.5)).astype(np.float32)
a = np.diag([-1.1, 0.9, 3.0, 1.0])
a[0, 1], a[:3, 3] = 0.2, [20.0, -10.0, 5.0]
os.makedirs(T + "/in")
nib.save(nib.Nifti1Image(v, a), T + "/in/v.nii.gz")
PYEOF
N=$((2 + SEED % 9))
run() { # out-dir options...
    local o=$1; shift
    "$MRISAM" predict --ckpt "$T/sam_test.pth" --in "$T/in" -o "$T/$o" --batch-size 4 --threads 2 "$@" > /dev/null \
        || { echo "FAIL: predict $*"; fail=1; }
}
run plain
run largest --keep-largest
run small --min-size $N
run both6 --keep-largest --min-size $N --connectivity 6
$PY - "$T" "$N" <<'PYEOF' || fail=1
import os, sys
import numpy as np, nibabel as nib
from scipy import ndimage
T, N = sys.argv[1], int(sys.argv[2])
full, six = np.ones((3, 3, 3), bool), ndimage.generate_binary_structure(3, 1)
bad, stats = [], []
for name in sorted(os.listdir(T + "/plain")):
    plain = np.asarray(nib.load(f"{T}/plain/{name}").dataobj)
    for run, keep, min_size, st in (("largest", 1, 0, full), ("small", 0, N, full), ("both6", 1, N, six)):
        got = np.asarray(nib.load(f"{T}/{run}/{name}").dataobj)
        if np.any((got != 0) & (got != plain)):
            bad.append(f"{run}/{name}: voxels changed class instead of becoming 0")
        for c in np.unique(plain[plain > 0]):
            comp, n = ndimage.label(plain == c, structure=st)
            sizes = np.bincount(comp.ravel())[1:]
            kept = [k + 1 for k in range(n) if np.all(got[comp == k + 1] == c)]
            gone = [k + 1 for k in range(n) if np.all(got[comp == k + 1] == 0)]
            if len(kept) + len(gone) != n:
                bad.append(f"{run}/{name} class {c}: a component was cut")
                continue
            want_n = sum(sizes >= min_size) if not keep else int(sizes.max() >= min_size)
            if len(kept) != want_n or any(sizes[k - 1] < min_size for k in kept) or \
                    (keep and kept and sizes[kept[0] - 1] != sizes.max()):
                bad.append(f"{run}/{name} class {c}: kept sizes {[int(sizes[k - 1]) for k in kept]} of "
                           f"{sorted(sizes.tolist(), reverse=True)[:8]}")
            stats.append(n)
for b in bad:
    print("FAIL", b)
print(f"{len(stats)} (volume, class, run) checks, {max(stats)} components at most, min-size {N}: "
      f"{'ok' if not bad else 'FAILED'}")
if max(stats) < 2:
    print("FAIL: degenerate test: no class has two components"); sys.exit(1)
sys.exit(1 if bad else 0)
PYEOF
for o in "--min-size -1" "--connectivity 8"; do
    "$MRISAM" predict --ckpt "$T/sam_test.pth" --in "$T/in" -o "$T/x" $o 2> "$T/err"; rc=$?
    [ $rc -eq 2 ] || { echo "FAIL: $o: exit $rc, want 2"; fail=1; }
done
[ $fail = 0 ] && echo "test_predict_post: all passed"
exit $fail
