# The directory walk of `mrisam ingest` over symlink loops. Random trees (seeded): depth 1-4, 1-3 folders per level,
# 1-5 links back to an ancestor, the folder itself or another folder (relative or absolute), a file reached twice
# (a hard link and a symlink to it), some dangling links and a link to itself. Each run must end (under `timeout`),
# ingest every file exactly once (N ingested, 0 skipped, N volumes in the store) and name each broken link on one
# warning line. Then SIGTERM during the walk of a large loop tree: exit 75 within seconds, nothing written.
source "$MS_SOURCE_DIR/tests/data/common.sh"
LIMIT=${MS_WALK_TIMEOUT:-60}
NTREES=6
$PY - "$T" "$SEED" "$NTREES" <<'PYEOF' || exit 1
import os, sys
import nibabel as nib, numpy as np
t, seed, ntrees = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(seed)
def vol(path):
    v = rng.integers(1, 1000, size=(6, 5, 4)).astype(np.int16)  # random content: no two files alike
    nib.Nifti1Image(v, np.eye(4)).to_filename(path)
def link(target, at, absolute):
    os.symlink(target if absolute else os.path.relpath(target, os.path.dirname(at)), at)
for ti in range(ntrees):
    root = f"{t}/tree{ti}"
    os.makedirs(root)
    dirs, parent, level = [root], {root: None}, [root]
    for _ in range(int(rng.integers(1, 5))):
        nxt = []
        for p in level:
            for k in range(int(rng.integers(1, 4))):
                q = f"{p}/d{k}"
                os.mkdir(q)
                parent[q] = p
                nxt.append(q)
        dirs += nxt
        level = nxt
    pick = lambda: dirs[int(rng.integers(len(dirs)))]
    n = int(rng.integers(2, 7))
    files = []
    for i in range(n):
        f = f"{pick()}/v{i}" + (".nii.gz" if rng.integers(2) else ".nii")
        vol(f)
        files.append(f)
    os.link(files[0], f"{pick()}/hard{ti}.nii" if files[0].endswith(".nii") else f"{pick()}/hard{ti}.nii.gz")
    link(files[-1], f"{pick()}/alias{ti}" + (".nii.gz" if files[-1].endswith(".gz") else ".nii"), rng.integers(2))
    for k in range(int(rng.integers(1, 6))):
        q = pick()
        if rng.integers(2):  # an ancestor (or q itself)
            anc = [q]
            while parent[anc[-1]]:
                anc.append(parent[anc[-1]])
            target = anc[int(rng.integers(len(anc)))]
        else:  # any folder: a sibling, a cousin, a descendant
            target = pick()
        link(target, f"{q}/L{k}", rng.integers(2))
    broken = []
    for k in range(int(rng.integers(0, 4))):
        at = f"{pick()}/dangle{ti}_{k}" + ["", ".nii", ".nii.gz"][int(rng.integers(3))]
        link(f"{root}/nowhere{k}", at, rng.integers(2))
        broken.append(os.path.basename(at))
    if rng.integers(2):
        at = f"{pick()}/self{ti}.nii"
        os.symlink(os.path.basename(at), at)  # a link to itself: ELOOP
        broken.append(os.path.basename(at))
    with open(f"{t}/tree{ti}.expect", "w") as f:
        f.write(f"{n}\n" + " ".join(broken) + "\n")
PYEOF
nvol() { $PY -c "import sys; sys.path.insert(0,'$HERE'); from storelib import Store; print(len(Store('$1').volumes()))"; }
for ((ti = 0; ti < NTREES; ti++)); do
  R=$T/tree$ti
  n=$(sed -n 1p "$R.expect")
  broken=$(sed -n 2p "$R.expect")
  srcs=("$R")
  [ "$ti" = 0 ] && srcs+=("$R/d0" "$R") # a folder given again, and one inside it: still each file once
  start=$SECONDS
  timeout -s KILL "$LIMIT" $M ingest "${srcs[@]}" -o "$T/s$ti.store" 2>"$T/err$ti"
  rc=$?
  echo "tree$ti: $n files, broken links [$broken]: exit $rc after $((SECONDS - start)) s"
  if [ $rc -eq 137 ]; then
    bad "tree$ti: the walk did not end in $LIMIT s"
    continue
  fi
  tail -n 3 "$T/err$ti"
  check test $rc -eq 0
  check grep -q "ingest: $n ingested, 0 skipped (already stored), 0 failed" "$T/err$ti"
  check test "$(nvol "$T/s$ti.store")" = "$n"
  nb=0
  for b in $broken; do
    nb=$((nb + 1))
    c=$(grep -c "/$b: warning: " "$T/err$ti")
    if [ "$c" -eq 1 ]; then ok; else bad "tree$ti: $b named on $c warning lines, expected 1"; fi
  done
  check test "$(grep -c ": warning: " "$T/err$ti")" -eq "$nb"
done
# SIGTERM in the walk of the large loop tree: a prompt exit 75, no store. The tree (42k entries) is built on tmpfs
# where there is one: on a busy disk its creation alone takes a minute.
B=$T
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  B=$(mktemp -d -p /dev/shm mrisam_walk.XXXXXX) || exit 1
  trap 'rm -rf "$B"' EXIT
fi
$PY - "$B" "$SEED" <<'PYEOF' || exit 1
import os, sys
import nibabel as nib, numpy as np
b, seed = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(seed)
# the large tree: 3 levels of 24 folders (14k folders), each with two links back (to its parent and to the root)
big = f"{b}/big"
level = [big]
os.makedirs(big)
for _ in range(3):
    nxt = []
    for p in level:
        for k in range(24):
            q = f"{p}/d{k}"
            os.mkdir(q)
            os.symlink("..", f"{q}/up")
            os.symlink(big, f"{q}/top")
            nxt.append(q)
    level = nxt
nib.Nifti1Image(rng.integers(1, 1000, size=(6, 5, 4)).astype(np.int16), np.eye(4)).to_filename(f"{big}/d0/v.nii")
PYEOF
$M ingest "$B/big" -o "$T/big.store" 2>"$T/big.err" &
pid=$!
handlers_wait "$pid"
sleep 0.1 # a walk of this tree takes about 1 s on tmpfs
term_wait "$pid"
cat "$T/big.err"
if [ ! -e "$T/big.store" ]; then # stopped before the store was opened: in the walk
  check test $rc -eq 75
  check grep -q "interrupted while listing the sources" "$T/big.err"
else
  echo "note: the walk had ended before the signal (store present)" # the stop then comes from the ingest loop
  check test $rc -eq 75 -o $rc -eq 0
fi
# the same tree, walked to the end: one file
start=$SECONDS
timeout -s KILL "$LIMIT" $M ingest "$B/big" -o "$T/big2.store" --quiet 2>"$T/big2.err"
rc=$?
echo "large tree walked in $((SECONDS - start)) s: exit $rc"
check test $rc -eq 0
check test "$(nvol "$T/big2.store")" = 1
done_
