# Real MRI: Debian's mricron-data templates (ch2, ch2bet, ch2better, aal; plus ch2bet reoriented to a permuted
# LPS-like order by nibabel) ingested and compared slice by slice with nibabel; ch2 paired with the aal atlas as
# labels (with the atlas's .txt label names); the reoriented copy must store exactly the original's slices.
source "$MS_SOURCE_DIR/tests/data/common.sh"
TPL=$(dpkg -L mricron-data 2>/dev/null | grep '/ch2.nii.gz$' | xargs -r dirname)
[ -n "$TPL" ] && [ -f "$TPL/ch2bet.nii.gz" ] || { echo "skip: mricron-data is not installed (apt-get install mricron-data)"; exit 77; }
$PY - "$TPL/ch2bet.nii.gz" "$T/ch2bet_psl.nii.gz" <<'PYEOF' || exit 1
import sys, nibabel as nib
from nibabel.orientations import axcodes2ornt, ornt_transform, io_orientation
img = nib.load(sys.argv[1])
img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt(("P", "S", "L")))).to_filename(sys.argv[2])
PYEOF
check $M ingest "$TPL/ch2.nii.gz" "$TPL/ch2bet.nii.gz" "$TPL/ch2better.nii.gz" "$TPL/aal.nii.gz" "$T/ch2bet_psl.nii.gz" \
  --keep-paths -o "$T/t.store" --threads 2
check $PY "$HERE/check_store.py" "$T/t.store" --expect-volumes 5
check $M verify "$T/t.store"
check $PY - "$T/t.store" <<'PYEOF'
import sys
sys.path.insert(0, __import__("os").environ["MS_SOURCE_DIR"] + "/tests/data")
from storelib import Store
st = Store(sys.argv[1])
v = {x["path"].split("/")[-1]: x for x in st.volumes()}
a, b = v["ch2bet.nii.gz"], v["ch2bet_psl.nii.gz"]
assert a["n_slices"] == b["n_slices"] and a["height"] == b["height"] and a["width"] == b["width"], "geometry"
for i in range(a["n_slices"]):
    assert st.raw(a["first_key"] + i)[44:] == st.raw(b["first_key"] + i)[44:], f"slice {i}"
print("reoriented copy: identical slices")
PYEOF
printf 'image,label\n%s,%s\n' "$TPL/ch2.nii.gz" "$TPL/aal.nii.gz" > "$T/pairs.csv"
check $M ingest --labels "$T/pairs.csv" --label-names "$TPL/aal.nii.txt" --keep-paths --axis coronal -o "$T/l.store" --quiet
check $PY "$HERE/check_store.py" "$T/l.store" --axis coronal --expect-volumes 1
check $M verify "$T/l.store"
$M inspect "$T/l.store" --no-volumes > "$T/inspect.txt"
check grep -q "Precentral_L" "$T/inspect.txt"
check grep -q "labels   [1-9][0-9]* records" "$T/inspect.txt"
done_
