# ingest --label-resample (#15): label volumes on another grid than their image. Real MRI from Debian's mricron-data:
# HarvardOxford (LAS, 182x218x182) and JHU (sform and qform differ) onto ch2's grid, checked by check_store.py against
# an independent resampling in the files' stored voxel frames (storelib.resample_nn, nibabel's affines); random
# synthetic pairs (shift, flips, axis order, voxel sizes half/equal/double) whose labels are known exactly
# (gen_resample.py); the refusal without the flag; a label already on its image's grid is untouched by the flag
# (the expected labels of those pairs written on the image's grid).
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
$M ingest --labels "$T/syn/pairs.csv" -o "$T/syn_refused.store" 2>"$T/err2"; rc=$?
check test $rc -eq 1
check test "$(grep -c -- "--label-resample resamples it" "$T/err2")" -eq 3
# a label on its image's grid: the flag changes nothing (the same store content, no resampled record)
check $M ingest --labels "$T/syn/same.csv" --keep-paths -o "$T/same0.store" --quiet
check $M ingest --labels "$T/syn/same.csv" --label-resample --keep-paths -o "$T/same1.store" --quiet
check $PY "$HERE/compare_stores.py" "$T/same0.store" "$T/same1.store"
check $PY "$HERE/gen_resample.py" check "$T/same1.store" "$T/syn" --same
done_
