# The realistic archive (tools/bench/gen_archive.py --small: Rician noise over the whole field, int16/uint16/float32,
# every orientation, 4D, odd headers) through ingest into layout 2: check_store.py compares every slice with
# nibabel — the stored values bit for bit with the source's (integer sources) or with the documented quantisation
# (float sources), the window, the normalised pixels; then the C reader (export .npy, export --stored) against the
# Python reader on random keys, and a rerun that adds nothing.
source "$MS_SOURCE_DIR/tests/data/common.sh"
$PY "$SRC/tools/bench/gen_archive.py" "$T/in" --n 20 --seed "$SEED" --small -j 1 | tail -1 || exit 1
check $M ingest "$T/in" --keep-paths -o "$T/a.store" --threads 2 --quiet
check $PY "$HERE/check_store.py" "$T/a.store"
check $M verify "$T/a.store"
n=$($PY -c "import sys; sys.path.insert(0, '$HERE'); from storelib import Store; print(Store('$T/a.store').meta_json('counts')['slices'])")
keys=$($PY -c "import random; random.seed($SEED); print(' '.join(str(random.randrange($n)) for _ in range(12)))")
for k in $keys; do
  check $M export "$T/a.store" --key "$k" -o "$T/p$k.npy"
  check $M export "$T/a.store" --key "$k" -o "$T/s$k.npy" --stored
done
check $PY - "$T/a.store" "$T" $keys <<'PYEOF'
import sys, numpy as np
sys.path.insert(0, __import__("os").environ["MS_SOURCE_DIR"] + "/tests/data")
from storelib import Store
st, t, keys = Store(sys.argv[1]), sys.argv[2], [int(k) for k in sys.argv[3:]]
for k in keys:
    d = st.decode(st.raw(k))
    p, s = np.load(f"{t}/p{k}.npy"), np.load(f"{t}/s{k}.npy")
    assert np.array_equal(p, d["pixels"]), f"key {k}: C normalised pixels differ from the Python reader's"
    assert s.dtype == d["stored"].dtype and np.array_equal(s, d["stored"]), f"key {k}: stored values differ"
    v = st.volume(d["volume"])
    assert (s.dtype == np.int16) == (v["intensity"]["stored"] == "int16"), f"key {k}: npy type"
print(f"{len(keys)} slices: C and Python readers agree (normalised and stored)")
PYEOF
# verify catches a record whose layout disagrees with its volume (bit 1 cleared, header crc fixed) and a volume
# whose encoding is broken (no window); the reader refuses the latter's slices with the volume named
cp -r "$T/a.store" "$T/b.store"
k=$($PY - "$T/b.store" "$SEED" <<'PYEOF'
import json, random, struct, sys, lmdb
sys.path.insert(0, __import__("os").environ["MS_SOURCE_DIR"] + "/tests/data")
from storelib import crc32c
env = lmdb.open(sys.argv[1], max_dbs=8)
sl, vo = env.open_db(b"slices"), env.open_db(b"volumes")
random.seed(int(sys.argv[2]))
with env.begin(write=True) as t:
    n = t.stat(sl)["entries"]
    k = random.randrange(n)
    rec = bytearray(t.get(struct.pack(">Q", k), db=sl))
    rec[5] &= ~2
    rec[40:44] = struct.pack("<I", crc32c(bytes(rec[:40])))
    t.put(struct.pack(">Q", k), bytes(rec), db=sl)
    vid = struct.unpack("<I", rec[24:28])[0]
    other = (vid + 1) % t.stat(vo)["entries"]
    v = json.loads(bytes(t.get(struct.pack(">I", other), db=vo)))
    del v["intensity"]["window"]
    t.put(struct.pack(">I", other), json.dumps(v).encode(), db=vo)
    print(k, v["first_key"], other)
PYEOF
)
read -r kbad kvol vbad <<<"$k"
$M verify "$T/b.store" > "$T/verify.txt" 2>&1; rc=$?
check test $rc -eq 1
check grep -q "slices key $kbad: record layout" "$T/verify.txt"
check grep -q "volumes key $vbad: .*bad intensity encoding" "$T/verify.txt"
$M export "$T/b.store" --key "$kvol" -o "$T/x.npy" 2>"$T/err"; rc=$?
check test $rc -ne 0
check grep -q "volume $vbad: no valid intensity encoding" "$T/err"
out=$($M ingest "$T/in" --keep-paths -o "$T/a.store" 2>&1)
check grep -q "0 ingested, 20 skipped" <<<"$out"
done_
