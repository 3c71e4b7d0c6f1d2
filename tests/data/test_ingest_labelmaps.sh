# The label tasks on mricron-data's atlases (#15): data/labelmaps/aal_lobes.csv lists every AAL value once and ingest
# with it stores exactly the classes it says (check_store.py: raw volumes through nibabel, the map applied in
# Python); --label-largest K on inia19's NeuroMaps labels against numpy's bincount (K drawn), and on random volumes
# with many tied counts (one count over all the run's label volumes, ties to the smaller value); the refusals.
source "$MS_SOURCE_DIR/tests/data/common.sh"
TPL=$(dpkg -L mricron-data 2>/dev/null | grep '/ch2.nii.gz$' | xargs -r dirname)
[ -n "$TPL" ] && [ -f "$TPL/inia19-NeuroMaps.nii.gz" ] || { echo "skip: mricron-data is not installed (apt-get install mricron-data)"; exit 77; }
MAPS=$SRC/data/labelmaps
# the map: every value of aal.nii.txt once, classes 1..7 each used, a name for each of 0..7
check $PY - "$MAPS/aal_lobes.csv" "$MAPS/aal_lobes_names.txt" "$TPL/aal.nii.txt" <<'PYEOF'
import sys
rows = [l.split(",") for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")][1:]
vals = [int(v) for v, _ in rows]
cls = {int(v): int(c) for v, c in rows}
aal = [int(l.split()[0]) for l in open(sys.argv[3]) if l.strip()]
assert sorted(vals) == sorted(aal) and len(set(vals)) == len(vals) == 116, "every AAL value once"
assert set(cls.values()) == set(range(1, 8)), sorted(set(cls.values()))
names = [int(l.split()[0]) for l in open(sys.argv[2]) if l.strip()]
assert names == list(range(8)), names
print("aal_lobes.csv: 116 values into classes 1..7")
PYEOF
printf 'image,label\n%s,%s\n' "$TPL/ch2.nii.gz" "$TPL/aal.nii.gz" >"$T/aal.csv"
check $M ingest --labels "$T/aal.csv" --label-map "$MAPS/aal_lobes.csv" --label-names "$MAPS/aal_lobes_names.txt" \
  --keep-paths -o "$T/aal.store" --quiet
check $PY "$HERE/check_store.py" "$T/aal.store" --label-map "$MAPS/aal_lobes.csv" --expect-volumes 1
$M inspect "$T/aal.store" --no-volumes >"$T/insp" || bad "inspect aal.store"
check grep -q "^classes  8 " "$T/insp"
check grep -q "cerebellum" "$T/insp"
# --label-largest K on inia19 (K drawn from the seed)
K=$((SEED % 6 + 3))
printf 'image,label\n%s,%s\n' "$TPL/inia19-t1-brain.nii.gz" "$TPL/inia19-NeuroMaps.nii.gz" >"$T/inia.csv"
$M ingest --labels "$T/inia.csv" --label-largest $K --keep-paths -o "$T/inia.store" 2>"$T/err"; rc=$?
cat "$T/err"
check test $rc -eq 0
check grep -q "^ingest: --label-largest $K of 724 nonzero values: 1=" "$T/err"
# numpy's choice, as a map for check_store.py
check $PY - "$T/inia.store" "$TPL/inia19-NeuroMaps.nii.gz" $K "$T/inia_map.csv" <<'PYEOF'
import sys, numpy as np, nibabel as nib
sys.path.insert(0, __import__("os").environ["MS_SOURCE_DIR"] + "/tests/data")
from storelib import Store
d = np.asanyarray(nib.load(sys.argv[2]).dataobj).astype(np.int64).ravel()
b = np.bincount(d - d.min())
vals = np.arange(len(b)) + d.min()
b[vals == 0] = 0
order = np.lexsort((vals, -b))[: int(sys.argv[3])]  # count descending, then the smaller value
want = [int(v) for v in vals[order]]
got = Store(sys.argv[1]).meta_json("params")["label_largest"]
assert got == {"k": int(sys.argv[3]), "values": want}, (got, want)
open(sys.argv[4], "w").write("".join(f"{v},{i + 1}\n" for i, v in enumerate(want)))
print("label_largest", want, "voxels", [int(x) for x in b[order]])
PYEOF
check $PY "$HERE/check_store.py" "$T/inia.store" --label-map "$T/inia_map.csv" --expect-volumes 1
# random label volumes with tied counts (and a PNG mask): counted over all of them together
check $PY - "$T/tie" "$SEED" <<'PYEOF'
import sys, os, numpy as np, nibabel as nib
sys.path.insert(0, os.environ["MS_SOURCE_DIR"] + "/tests/data")
from storelib import write_png
out, rng = sys.argv[1], np.random.default_rng(int(sys.argv[2]))
os.makedirs(out)
rows, total = [], {}
for t in range(3):
    n = rng.integers(8, 16, 3)
    lab = np.zeros(int(np.prod(n)), np.int16)
    vals = rng.choice(np.arange(-20, 40), 8, replace=False)
    counts = rng.choice([5, 10, 15], 8)  # few distinct counts: ties across volumes are the rule
    pos = 0
    for v, c in zip(vals, counts):
        lab[pos:pos + c] = v
        total[int(v)] = total.get(int(v), 0) + (int(c) if v else 0)
        pos += c
    lab = rng.permutation(lab).reshape(n)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.Nifti1Image(rng.integers(1, 100, n).astype(np.int16), aff).to_filename(f"{out}/i{t}.nii.gz")
    nib.Nifti1Image(lab, aff).to_filename(f"{out}/l{t}.nii.gz")
    rows.append(f"i{t}.nii.gz,l{t}.nii.gz")
m = np.zeros(24 * 20, np.uint8)  # a finetune-SAM style PNG pair: its mask's values count like any label's
pos = 0
for v, c in zip(rng.choice(np.arange(1, 40), 5, replace=False), rng.choice([5, 10, 15], 5)):
    m[pos:pos + c] = v
    total[int(v)] = total.get(int(v), 0) + int(c)
    pos += c
write_png(f"{out}/m.png", rng.permutation(m).reshape(24, 20))
write_png(f"{out}/p.png", rng.integers(1, 255, (24, 20)).astype(np.uint8))
rows.append("p.png,m.png")
open(f"{out}/pairs.csv", "w").write("\n".join(rows) + "\n")
k = int(rng.integers(2, 7))
ranked = sorted((v for v in total if v and total[v]), key=lambda v: (-total[v], v))[:k]
open(f"{out}/k", "w").write(str(k))
open(f"{out}/map.csv", "w").write("".join(f"{v},{i + 1}\n" for i, v in enumerate(ranked)))
print("K", k, "expected", ranked, [total[v] for v in ranked])
PYEOF
check $M ingest --labels "$T/tie/pairs.csv" --label-largest "$(cat "$T/tie/k")" --keep-paths --keep-empty -o "$T/tie.store" --quiet
check $PY - "$T/tie.store" "$T/tie/map.csv" <<'PYEOF'
import sys
sys.path.insert(0, __import__("os").environ["MS_SOURCE_DIR"] + "/tests/data")
from storelib import Store
want = [int(l.split(",")[0]) for l in open(sys.argv[2])]
got = Store(sys.argv[1]).meta_json("params")["label_largest"]["values"]
assert got == want, (got, want)
PYEOF
check $PY "$HERE/check_store.py" "$T/tie.store" --label-map "$T/tie/map.csv" --keep-empty --expect-volumes 4
# shards count over the full list: every shard records the same values, and the set reads as the one-piece store
k=$(cat "$T/tie/k")
check $M ingest --labels "$T/tie/pairs.csv" --label-largest $k --keep-paths --keep-empty --shard 0/2 -o "$T/set" --quiet
check $M ingest --labels "$T/tie/pairs.csv" --label-largest $k --keep-paths --keep-empty --shard 1/2 -o "$T/set" --quiet
check $PY - "$T/set" "$T/tie/map.csv" <<'PYEOF'
import sys, glob
sys.path.insert(0, __import__("os").environ["MS_SOURCE_DIR"] + "/tests/data")
from storelib import Store
want = [int(l.split(",")[0]) for l in open(sys.argv[2])]
got = [Store(d).meta_json("params")["label_largest"]["values"] for d in sorted(glob.glob(sys.argv[1] + "/shard-*"))]
assert got == [want, want], (got, want)
PYEOF
# refusals: with --label-map or --label-threshold, out of range
for extra in "--label-map $T/tie/map.csv" "--label-threshold 0.5"; do
  $M ingest --labels "$T/tie/pairs.csv" --label-largest 2 $extra -o "$T/no.store" 2>"$T/err2"; rc=$?
  check test $rc -eq 2
  check grep -q "label-largest excludes" "$T/err2"
done
$M ingest --labels "$T/tie/pairs.csv" --label-largest 256 -o "$T/no.store" 2>"$T/err3"; rc=$?
check test $rc -eq 2
check grep -q "label-largest must be in 1..255" "$T/err3"
check test ! -e "$T/no.store"
done_
