# Synthetic volumes in every datatype, NIfTI-1/2, .nii/.nii.gz/.hdr+.img, orientations (RAS, LAS, permuted,
# oblique, qform-only, none), 4D, scl_slope, NaN/Inf, labels (CSV, nnU-Net, map, threshold), PNG pairs: every stored
# slice is compared with nibabel (check_store.py); rerun idempotence; export to .npy/.png.
source "$MS_SOURCE_DIR/tests/data/common.sh"
$PY "$HERE/gen_synth.py" "$T/syn" "$SEED" || exit 1
S=$T/syn
check $M ingest "$S/img" --labels "$S/labels.csv" --keep-paths --keep-empty -o "$T/a.store" --threads 2 --quiet
check $PY "$HERE/check_store.py" "$T/a.store" --keep-empty --expect-volumes 22
check $M ingest "$S/img" --labels "$S/labels.csv" --keep-paths -o "$T/b.store" --threads 1 --quiet
check $PY "$HERE/check_store.py" "$T/b.store" --expect-volumes 22
# rerun: everything skipped, nothing added
out=$($M ingest "$S/img" --labels "$S/labels.csv" --keep-paths -o "$T/b.store" 2>&1)
echo "$out" | tail -1
check grep -q "0 ingested, 20 skipped" <<<"$out"
check $PY "$HERE/check_store.py" "$T/b.store" --expect-volumes 22
# other options recorded in the store are refused
$M ingest "$S/img" --norm none -o "$T/b.store" --quiet 2>"$T/err"; rc=$?
check test $rc -ne 0
check grep -q "created with other options" "$T/err"
# axis, norm
check $M ingest "$S/img" --keep-paths --keep-empty --axis coronal --norm zscore -o "$T/c.store" --quiet
check $PY "$HERE/check_store.py" "$T/c.store" --keep-empty --axis coronal --norm zscore
check $M ingest "$S/img" --keep-paths --axis sagittal --norm none -o "$T/d.store" --quiet
check $PY "$HERE/check_store.py" "$T/d.store" --axis sagittal --norm none
# nnU-Net layout with a label map, CSV with a threshold
printf '1,5\n2,0\n' > "$T/map.csv"
check $M ingest "$S/nnunet" --labels nnunet --label-map "$T/map.csv" --keep-paths -o "$T/nn.store" --quiet
check $PY "$HERE/check_store.py" "$T/nn.store" --label-map "$T/map.csv" --expect-volumes 2
check $M ingest --labels "$S/labels.csv" --label-threshold 2.5 --keep-paths -o "$T/thr.store" --quiet
check $PY "$HERE/check_store.py" "$T/thr.store" --label-threshold 2.5 --expect-volumes 4
# no paths without --keep-paths: neither file names nor header text in the store
check $M ingest "$S/img" -o "$T/nopath.store" --quiet
if grep -aq "img/\|u8_ras\|\.nii" "$T/nopath.store/data.mdb"; then bad "a file name is in the store"; else ok; fi
check $M verify "$T/a.store"
# export: .npy equals the record decoded in Python, .png is stored*255/65535, label beside it
check $M export "$T/a.store" --key 200 -o "$T/k.npy" --label
check $M export "$T/a.store" --key 200 -o "$T/k.png"
check $PY - "$T/a.store" "$T/k.npy" "$T/k_label.npy" <<'PYEOF'
import sys, numpy as np
sys.path.insert(0, __import__("os").environ["MS_SOURCE_DIR"] + "/tests/data")
from storelib import Store
st = Store(sys.argv[1])
d, l = st.decode(st.raw(200)), st.decode(st.raw(200, label=True))
a, b = np.load(sys.argv[2]), np.load(sys.argv[3])
assert a.dtype == np.uint16 and np.array_equal(a, d["pixels"]), "npy"
assert np.array_equal(b, l["pixels"]), "label npy"
PYEOF
$M export "$T/a.store" --key 999999 -o "$T/x.npy" 2>/dev/null && bad "export of a missing key succeeded" || ok
check $M inspect "$T/a.store" >/dev/null
done_
