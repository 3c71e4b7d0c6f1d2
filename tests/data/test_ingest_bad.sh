# Bad inputs: truncated .nii.gz and .nii, a corrupt gzip stream, garbage, dims that disagree with the file size,
# unsupported datatypes (RGB24, complex), a label on another grid, a missing file. Each costs one line naming the
# file, the summary counts them, the exit status is 1, the good volumes before and after are stored and verify.
# A label volume with NaN/Inf voxels is refused (a random count, seeded); so is a label map whose value or class is
# not an integer (1e400, 2.5, nan, out of range, ...: drawn at random), naming the file, line and value, and so is
# a --labels CSV with a row that is not image,label (drawn) or that does not exist: one line, no summary after it.
# Then verify must find a byte flipped inside one record of data.mdb and name its key.
source "$MS_SOURCE_DIR/tests/data/common.sh"
D=$T/in
mkdir -p "$D"
$PY - "$D" "$SEED" <<'PYEOF' || exit 1
import gzip, os, struct, sys
import nibabel as nib, numpy as np
d, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
def vol(dt=np.int16, shape=(12, 11, 10)):
    return nib.Nifti1Image(rng.integers(1, 1000, size=shape).astype(dt), np.diag([1., 1., 2., 1.]))
vol().to_filename(f"{d}/a_good.nii.gz")
vol().to_filename(f"{d}/z_good.nii")
raw = gzip.compress(open(f"{d}/z_good.nii", "rb").read())
open(f"{d}/b_trunc.nii.gz", "wb").write(raw[: len(raw) // 2])
b = bytearray(raw); b[len(b) // 2] ^= 0xFF; b[len(b) // 2 + 1] ^= 0xA5
open(f"{d}/c_corrupt_stream.nii.gz", "wb").write(bytes(b))
open(f"{d}/d_garbage.nii", "wb").write(os.urandom(1000))
open(f"{d}/e_tiny.nii", "wb").write(b"garbage")
h = bytearray(open(f"{d}/z_good.nii", "rb").read())
open(f"{d}/f_trunc.nii", "wb").write(h[: len(h) - 100])
g = bytearray(h); g[42:44] = struct.pack("<h", 400)   # dim[1] 12 -> 400: more data than the file holds
open(f"{d}/g_dims.nii", "wb").write(g)
r = bytearray(h); r[70:72] = struct.pack("<h", 128); r[72:74] = struct.pack("<h", 24)   # RGB24
open(f"{d}/h_rgb.nii", "wb").write(r)
c = bytearray(h); c[70:72] = struct.pack("<h", 32); c[72:74] = struct.pack("<h", 64)    # complex64
open(f"{d}/i_complex.nii", "wb").write(c)
z = bytearray(h); z[40:42] = struct.pack("<h", 9)   # dim[0] = 9
open(f"{d}/j_dim0.nii", "wb").write(z)
vol().to_filename(f"{d}/k_img.nii.gz")
nib.Nifti1Image(np.zeros((12, 11, 9), np.uint8), np.diag([1., 1., 2., 1.])).to_filename(f"{d}/k_lab_shape.nii.gz")
vol().to_filename(f"{d}/l_img.nii.gz")
nib.Nifti1Image(np.zeros((12, 11, 10), np.uint8), np.diag([1., 1., 3., 1.])).to_filename(f"{d}/l_lab_affine.nii.gz")
vol().to_filename(f"{d}/n_img.nii.gz")
lab = rng.integers(0, 3, size=(12, 11, 10)).astype(np.float32)
nbad = int(rng.integers(1, 20))
lab.flat[rng.choice(lab.size, nbad, replace=False)] = rng.choice([np.nan, np.inf, -np.inf], nbad)
nib.Nifti1Image(lab, np.diag([1., 1., 2., 1.])).to_filename(f"{d}/n_lab_nan.nii.gz")
open(f"{d}/n_lab_nan.count", "w").write(f"{nbad}\n")
# label maps with one bad field: the class, or the value, on a random line after good ones
bad_class = ["1e400", "1e5", "2.5", "1.0", "nan", "inf", "-1", "65536", "99999999999999999999", "0x10", "7abc", "",
             "1,liver", "1 2"]
bad_value = ["1e400", "2.5", "nan", "-inf", "99999999999999999999", "", "3x", "1 2"]
with open(f"{d}/maps.expect", "w") as ex:
    for k in range(6):
        field = "class" if k == 0 or rng.integers(2) else "value"
        tok = "1e400" if k == 0 else str(rng.choice(bad_class if field == "class" else bad_value))
        lines = ["value,class"] if rng.integers(2) else []
        lines += [f"{v},{rng.integers(0, 4)}" for v in range(int(rng.integers(0, 5)))]
        lines.append(f"9,{tok}" if field == "class" else f"{tok},1")
        at = len(lines)  # its line number
        lines += [f"{v},1" for v in range(10, 10 + int(rng.integers(0, 3)))]
        open(f"{d}/map{k}.csv", "w").write("\n".join(lines) + "\n")
        ex.write(f"map{k}.csv\t{at}\t{field}\t{tok}\n")
PYEOF
cat > "$D/pairs.csv" <<CSV
image,label
a_good.nii.gz,
k_img.nii.gz,k_lab_shape.nii.gz
l_img.nii.gz,l_lab_affine.nii.gz
n_img.nii.gz,n_lab_nan.nii.gz
CSV
BADS="b_trunc.nii.gz c_corrupt_stream.nii.gz d_garbage.nii e_tiny.nii f_trunc.nii g_dims.nii h_rgb.nii i_complex.nii j_dim0.nii"
args=()
for f in $BADS; do args+=("$D/$f"); done
$M ingest "$D/a_good.nii.gz" "${args[@]}" "$D/no_such_file.nii" "$D/z_good.nii" -o "$T/s.store" --threads 2 2>"$T/err"
rc=$?
cat "$T/err"
check test $rc -eq 1
for f in $BADS no_such_file.nii; do
  n=$(grep -c "^$D/$f: " "$T/err")
  if [ "$n" -eq 1 ]; then ok; else bad "$f: expected one error line, got $n"; fi
done
check grep -q "h_rgb.nii: .*RGB24 is not supported" "$T/err"
check grep -q "i_complex.nii: .*complex64 is not supported" "$T/err"
check grep -q "g_dims.nii: .*truncated" "$T/err"
check grep -q "j_dim0.nii: dim\[0\] = 9" "$T/err"
check grep -q "2 ingested, 0 skipped (already stored), 10 failed" "$T/err"
check $M verify "$T/s.store"
n=$($PY -c "import sys; sys.path.insert(0,'$HERE'); from storelib import Store; print(len(Store('$T/s.store').volumes()))")
check test "$n" = 2
# label mismatches: the pair is refused with a line naming both files; the good row is kept
$M ingest --labels "$D/pairs.csv" -o "$T/l.store" 2>"$T/err2"
rc=$?
cat "$T/err2"
check test $rc -eq 1
check grep -q "k_lab_shape.nii.gz: label grid .* does not match .*k_img.nii.gz" "$T/err2"
check grep -q "l_lab_affine.nii.gz: label affine does not match .*l_img.nii.gz" "$T/err2"
check grep -q "^$D/n_lab_nan.nii.gz: $(cat "$D/n_lab_nan.count") NaN/Inf voxels in a label volume (labels are integers)$" "$T/err2"
check grep -q "1 ingested, 0 skipped (already stored), 3 failed" "$T/err2"
# a bad label map is refused before anything is written, naming the file, the line and the value
while IFS=$'\t' read -r map line field tok; do
  rm -rf "$T/m.store"
  $M ingest --labels "$D/pairs.csv" --label-map "$D/$map" -o "$T/m.store" 2>"$T/err5"
  rc=$?
  echo "$map (line $line, $field '$tok'): exit $rc"
  grep -v "^ingest: " "$T/err5"
  check test $rc -eq 1
  check grep -qF "$D/$map:$line: $field '$tok' is not" "$T/err5"
  # the one line is the error: no summary of zeros after it (issue #18 item 7)
  check test "$(wc -l <"$T/err5")" -eq 1
  check test ! -e "$T/m.store/data.mdb"
done <"$D/maps.expect"
# a --labels CSV with a row that is not image,label at a drawn line: one line naming the CSV and the line, exit 1,
# no summary, nothing written; the same for a CSV that does not exist
for k in 0 1 2; do
  $PY - "$D/bad$k.csv" "$((SEED + k))" <<'PYEOF' >"$T/csvline" || bad "could not write bad$k.csv"
import random, sys
path, seed = sys.argv[1], int(sys.argv[2])
r = random.Random(seed)
rows = ["image,label"] if r.random() < 0.5 else []
rows += [r.choice(["a_good.nii.gz,", "z_good.nii,", "# a comment", ""]) for _ in range(r.randint(0, 4))]
rows.append(r.choice(["a_good.nii.gz", "image label", "z_good.nii;k_lab_shape.nii.gz", "x y", "just_a_name"]))
print(len(rows))
rows += ["z_good.nii,"] * r.randint(0, 2)
open(path, "w").write("\n".join(rows) + "\n")
PYEOF
  rm -rf "$T/c.store"
  $M ingest --labels "$D/bad$k.csv" -o "$T/c.store" 2>"$T/err6"
  rc=$?
  cat "$T/err6"
  check test $rc -eq 1
  check test "$(cat "$T/err6")" = "mrisam ingest: $D/bad$k.csv:$(cat "$T/csvline"): expected image,label"
  check test ! -e "$T/c.store/data.mdb"
done
$M ingest --labels "$D/no_such.csv" -o "$T/c.store" 2>"$T/err6"
rc=$?
check test $rc -eq 1
check test "$(cat "$T/err6")" = "mrisam ingest: $D/no_such.csv: No such file or directory"
# an unreadable file (as non-root only: root reads anything)
if [ "$(id -u)" != 0 ]; then
  cp "$D/z_good.nii" "$D/m_noread.nii" && chmod 000 "$D/m_noread.nii"
  $M ingest "$D/m_noread.nii" -o "$T/u.store" 2>"$T/err3"; rc=$?
  check test $rc -eq 1
  check grep -q "m_noread.nii: Permission denied" "$T/err3"
fi
# verify finds a flipped byte inside record 3 and names it
$PY - "$T/s.store" 3 <<'PYEOF' || bad "could not corrupt the store"
import sys
sys.path.insert(0, __import__("os").environ["MS_SOURCE_DIR"] + "/tests/data")
from storelib import Store
path, key = sys.argv[1], int(sys.argv[2])
rec = Store(path).raw(key)
data = bytearray(open(path + "/data.mdb", "rb").read())
at, n = data.find(rec), 0
while at >= 0:  # copy-on-write leaves stale copies of a page in free pages: flip every copy
    data[at + 44 + (len(rec) - 44) // 2] ^= 0x10
    at, n = data.find(rec, at + 1), n + 1
assert n >= 1
open(path + "/data.mdb", "r+b").write(data)
PYEOF
$M verify "$T/s.store" >"$T/v" 2>&1
rc=$?
cat "$T/v"
check test $rc -eq 1
check grep -q "slices key 3: " "$T/v"
check grep -q "1 corrupt" "$T/v"
$M export "$T/s.store" --key 3 -o "$T/x.npy" 2>"$T/e4"; rc=$?
check test $rc -ne 0
check grep -q "slice 3: " "$T/e4"
done_
