#!/bin/bash
# tests/data/test_loader_ingest.sh — the loader over a store written by `mrisam ingest` from NIfTI volumes
# (generated here with /usr/bin/python3 + nibabel, fresh random content each run): same batches with 1/2/4
# threads, exact resume, W ranks == one process, split by volume without leakage, labels within each volume's set.
set -euo pipefail
PY=/usr/bin/python3
"$PY" -c "import nibabel, numpy" 2>/dev/null || { echo "skip: /usr/bin/python3 lacks nibabel/numpy"; exit 77; }
: "${MS_MRISAM:?run through ctest}" "${MS_BINARY_DIR:?run through ctest}"
T=$(mktemp -d /tmp/ms_loader_ingest.XXXXXX)
trap 'rm -rf "$T"' EXIT
"$PY" - "$T" <<'PYEOF'
import os, sys
import nibabel as nib
import numpy as np
d = sys.argv[1]
seed = int.from_bytes(os.urandom(4), "little")
print("volume seed", seed)
rng = np.random.default_rng(seed)
rows = []
for v in range(5):
    shape = (40 + 4 * v, 48, 24)
    z = np.linspace(-1, 1, shape[2])[None, None, :]
    y = np.linspace(-1, 1, shape[1])[None, :, None]
    x = np.linspace(-1, 1, shape[0])[:, None, None]
    head = (x * x / 0.8 + y * y / 0.9 + z * z / 1.5) < 1
    img = (head * (600 + 300 * x) + rng.normal(0, 20, shape)).clip(0, None).astype(np.int16)
    lab = np.zeros(shape, np.uint8)
    lab[np.broadcast_to((x * x + y * y) < 0.2, shape) & head] = 1 + v % 2
    lab[np.broadcast_to((x > 0.3) & (y > 0.3), shape) & head] = 4
    aff = np.diag([1.0, 1.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(img, aff), os.path.join(d, "img%d.nii.gz" % v))
    nib.save(nib.Nifti1Image(lab, aff), os.path.join(d, "lab%d.nii.gz" % v))
    rows.append("img%d.nii.gz,lab%d.nii.gz" % (v, v))
open(os.path.join(d, "pairs.csv"), "w").write("image,label\n" + "\n".join(rows) + "\n")
PYEOF
"$MS_MRISAM" ingest --labels "$T/pairs.csv" -o "$T/store" --threads 2 --keep-empty --quiet
"$MS_BINARY_DIR/tests/test_loader_store" "$T/store"
