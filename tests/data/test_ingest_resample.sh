# ingest --label-resample (#15): label volumes on another grid than their image. Real MRI from Debian's mricron-data:
# HarvardOxford (LAS, 182x218x182) and JHU (sform and qform differ) onto ch2's grid, checked by check_store.py against
# an independent resampling in the files' stored voxel frames (storelib.resample_nn, nibabel's affines); random
# synthetic pairs (shift, flips, axis order, voxel sizes half/equal/double) whose labels are known exactly
# (gen_resample.py); the refusal without the flag; a label already on its image's grid is untouched by the flag
# (the expected labels of those pairs written on the image's grid); an oblique qform-only label (random rotation).
source "$MS_SOURCE_DIR/tests/data/common.sh"
TPL=$(dpkg -L mricron-data 2>/dev/null | grep '/ch2.nii.gz$' | xargs -r dirname)
[ -n "$TPL" ] && [ -f "$TPL/HarvardOxford-cort-maxprob-thr0-1mm.nii.gz" ] || { echo "skip: mricron-data is not installed (apt-get install mricron-data)"; exit 77; }
HO=$TPL/HarvardOxford-cort-maxprob-thr0-1mm.nii.gz
JHU=$TPL/JHU-WhiteMatter-labels-1mm.nii.gz
# without the flag: the existing one-line refusal, now naming the flag; nothing stored
printf 'image,label\n%s,%s\n' "$TPL/ch2.nii.gz" "$HO" >"$T/ho.csv"
$M ingest --labels "$T/ho.csv" -o "$T/refused.store" 2>"$T/err0"; rc=$?
cat "$T/err0"
check test $rc -eq 1
check grep -q "^$HO: label grid 182x218x182(x1) does not match $TPL/ch2.nii.gz (181x217x181); --label-resample resamples it" "$T/err0"
check grep -q " 0 volumes" "$T/err0"
# with it: both atlases onto ch2, recorded per volume, noted on stderr and in the --log line
printf 'image,label\n%s,%s\n%s,%s\n' "$TPL/ch2.nii.gz" "$HO" "$TPL/ch2.nii.gz" "$JHU" >"$T/rs.csv"
$M ingest --labels "$T/rs.csv" --label-resample --keep-paths --threads 2 --log "$T/log.jsonl" -o "$T/rs.store" 2>"$T/err1"; rc=$?
cat "$T/err1"
check test $rc -eq 0
check grep -q "^$HO: resampled onto the grid of $TPL/ch2.nii.gz by nearest neighbour (from 182x218x182, sform; 0 voxels" "$T/err1"
check grep -q "^$JHU: resampled onto the grid of" "$T/err1"
check test "$(grep -c '"label_resampled":true' "$T/log.jsonl")" -eq 2
check $PY "$HERE/check_store.py" "$T/rs.store" --label-resample --expect-volumes 2
check $PY - "$T/rs.store" "$HO" <<'PYEOF'
import sys, numpy as np, nibabel as nib
sys.path.insert(0, __import__("os").environ["MS_SOURCE_DIR"] + "/tests/data")
from storelib import Store
v = [x for x in Store(sys.argv[1]).volumes() if x["label_path"] == sys.argv[2]][0]
rs = v["labels"]["resampled"]
aff = nib.load(sys.argv[2]).affine
assert rs["shape"] == [182, 218, 182] and rs["geometry"] == "sform" and rs["method"] == "nearest", rs
assert np.allclose(np.array(rs["affine"]).reshape(4, 4), aff), rs["affine"]
print("HarvardOxford: resampled record", rs["shape"], rs["geometry"], "outside", rs["outside"])
PYEOF
# synthetic pairs with exactly known labels
check $PY "$HERE/gen_resample.py" gen "$T/syn" "$SEED"
check $M ingest --labels "$T/syn/pairs.csv" --label-resample --keep-paths -o "$T/syn.store" --quiet
check $PY "$HERE/gen_resample.py" check "$T/syn.store" "$T/syn"
check $PY "$HERE/check_store.py" "$T/syn.store" --label-resample --expect-volumes 3
# an oblique label (random rotation and voxel size, qform only) against the reference in the files' voxel frames
check $PY - "$T/syn" "$SEED" <<'PYEOF'
import sys, numpy as np, nibabel as nib
d, rng = sys.argv[1], np.random.default_rng(int(sys.argv[2]) + 1)
img = nib.load(f"{d}/img_0.nii.gz")
ax = rng.normal(size=3); ax /= np.linalg.norm(ax)
a = rng.uniform(0.1, 0.6)  # radians
K = np.array([[0, -ax[2], ax[1]], [ax[2], 0, -ax[0]], [-ax[1], ax[0], 0]])
R = np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K
aff = np.eye(4)
aff[:3, :3] = R @ np.diag(rng.uniform(0.6, 1.8, 3))
aff[:3, 3] = img.affine[:3, 3] + rng.uniform(-3, 3, 3)
lab = nib.Nifti1Image(rng.integers(0, 30, tuple(rng.integers(12, 30, 3))).astype(np.int16), None)
lab.set_qform(aff, code=1)
lab.set_sform(None, code=0)
lab.to_filename(f"{d}/oblique.nii.gz")
open(f"{d}/oblique.csv", "w").write("img_0.nii.gz,oblique.nii.gz\n")
print(f"oblique label: {a:.3f} rad about {np.round(ax, 3)}, voxel sizes {np.round(np.sqrt((aff[:3, :3] ** 2).sum(0)), 3)}")
PYEOF
check $M ingest --labels "$T/syn/oblique.csv" --label-resample --keep-paths -o "$T/oblique.store" --quiet
check $PY "$HERE/check_store.py" "$T/oblique.store" --label-resample --expect-volumes 1
$M ingest --labels "$T/syn/pairs.csv" -o "$T/syn_refused.store" 2>"$T/err2"; rc=$?
check test $rc -eq 1
check test "$(grep -c -- "--label-resample resamples it" "$T/err2")" -eq 3
# a label without sform and qform has no place in the world: refused even with the flag
check $PY -c 'import sys, nibabel as nib; i = nib.load(sys.argv[1]); i.set_sform(None, code=0); i.set_qform(None, code=0); i.to_filename(sys.argv[2])' "$T/syn/lab_0.nii.gz" "$T/syn/nogeom.nii.gz"
printf 'img_0.nii.gz,nogeom.nii.gz\n' >"$T/syn/nogeom.csv"
$M ingest --labels "$T/syn/nogeom.csv" --label-resample -o "$T/nogeom.store" 2>"$T/err3"; rc=$?
cat "$T/err3"
check test $rc -eq 1
check grep -q "nogeom.nii.gz: label grid differs from .*img_0.nii.gz and .*nogeom.nii.gz has no usable sform or qform: cannot resample" "$T/err3"
# a label on its image's grid: the flag changes nothing (the same store content, no resampled record)
check $M ingest --labels "$T/syn/same.csv" --keep-paths -o "$T/same0.store" --quiet
check $M ingest --labels "$T/syn/same.csv" --label-resample --keep-paths -o "$T/same1.store" --quiet
check $PY "$HERE/compare_stores.py" "$T/same0.store" "$T/same1.store"
check $PY "$HERE/gen_resample.py" check "$T/same1.store" "$T/syn" --same
done_
