# A store written by mrisam 08ca0b8 (layout 1, normalised pixels; tests/data/golden/store_v1, sources made by
# gen_store_v1.py) still reads with today's mrisam: verify, inspect, every slice exported and compared with the
# sources normalised as layout 1 did; a rerun into it appends layout-1 records (no stored values, no bit 1), which
# read back as layout 1 too; ms_store_set_norm is refused there (via export --stored).
source "$MS_SOURCE_DIR/tests/data/common.sh"
G=$HERE/golden/store_v1
mkdir -p "$T/v1.store" && cp "$G/store/data.mdb" "$T/v1.store/"
check $M verify "$T/v1.store"
out=$($M inspect "$T/v1.store" 2>&1)
check grep -q '"version":1' <<<"$out"
for k in $(seq 0 9); do check $M export "$T/v1.store" --key "$k" -o "$T/k$k.npy"; done
$M export "$T/v1.store" --key 0 -o "$T/s.npy" --stored 2>"$T/err"; rc=$?
check test $rc -ne 0
check grep -q "layout-1 store" "$T/err"
check $PY - "$G/src" "$T" <<'PYEOF'
import sys, numpy as np, nibabel as nib
sys.path.insert(0, __import__("os").environ["MS_SOURCE_DIR"] + "/tests/data")
from storelib import canonical, normalise
src, t = sys.argv[1:3]
k = 0
for name in ("i16", "f32"):
    exp, lo, sc = normalise(canonical(nib.load(f"{src}/{name}.nii.gz")))
    for z in range(exp.shape[2]):
        got = np.load(f"{t}/k{k}.npy")
        d = np.abs(got.astype(np.int64) - exp[:, :, z].astype(np.int64))
        assert got.shape == exp[:, :, z].shape and d.max() <= 1 and (d > 0).mean() < 0.01, (name, z, d.max())
        k += 1
assert k == 10
print("10 layout-1 slices equal the sources normalised")
PYEOF
# a rerun into the layout-1 store: the two sources are skipped, a new one is appended in layout 1
$PY - "$T/new.nii.gz" "$SEED" <<'PYEOF'
import sys, numpy as np, nibabel as nib
rng = np.random.default_rng(int(sys.argv[2]))
nib.Nifti1Image(rng.integers(0, 900, (24, 20, 5)).astype(np.int16), np.diag([1, 1, 2.0, 1])).to_filename(sys.argv[1])
PYEOF
out=$($M ingest "$G/src/i16.nii.gz" "$G/src/f32.nii.gz" "$T/new.nii.gz" --keep-paths -o "$T/v1.store" 2>&1)
echo "$out" | tail -1
check grep -q "1 ingested, 2 skipped" <<<"$out"
check $M verify "$T/v1.store"
check $PY - "$T/v1.store" "$T/new.nii.gz" <<'PYEOF'
import sys, numpy as np, nibabel as nib
sys.path.insert(0, __import__("os").environ["MS_SOURCE_DIR"] + "/tests/data")
from storelib import Store, canonical, normalise
st = Store(sys.argv[1])
assert st.meta_json("format")["version"] == 1
v = st.volumes()[2]
assert "stored" not in v["intensity"], v["intensity"]
exp, _, _ = normalise(canonical(nib.load(sys.argv[2])))
for i in range(v["n_slices"]):
    rec = st.raw(v["first_key"] + i)
    assert rec[5] & 2 == 0 and rec[4] == 1, "layout-1 record expected"
    assert np.array_equal(st.decode(rec)["pixels"], exp[:, :, i]), i
print("appended volume is layout 1")
PYEOF
# --layout 1 writes today what 08ca0b8 wrote: every slice record byte-identical to the golden store's
check $M ingest "$G/src/i16.nii.gz" "$G/src/f32.nii.gz" -o "$T/l1.store" --layout 1 --threads 1 --quiet
check $PY - "$G/store" "$T/l1.store" <<'PYEOF'
import sys
sys.path.insert(0, __import__("os").environ["MS_SOURCE_DIR"] + "/tests/data")
from storelib import Store
a, b = Store(sys.argv[1]), Store(sys.argv[2])
assert b.meta_json("format")["version"] == 1
ka = a.keys(a.slices)
assert ka == b.keys(b.slices), "keys differ"
for k in ka:
    assert a.raw(k) == b.raw(k), f"record {k} differs"
print(f"--layout 1: {len(ka)} records byte-identical to 08ca0b8's")
PYEOF
# and a layout-2 store refuses layout-1 records (and the other way round)
check $M ingest "$G/src/i16.nii.gz" -o "$T/l2.store" --quiet
$M ingest "$T/new.nii.gz" -o "$T/l2.store" --layout 1 --quiet 2>"$T/err"; rc=$?
check test $rc -ne 0
check grep -q "layout-2 store; it cannot take layout-1" "$T/err"
done_
