# A store ingested as 3 shards (three `ingest --shard k/3` jobs, one killed with SIGKILL and rerun) reads as the
# one-piece store of the same sources: the same counts, export --key gives byte-identical arrays (random keys, the
# seed printed; pixels and stored values), verify passes and inspect names the set, a few pretrain steps log the
# same losses. Shards open without LMDB's lock file. A set missing a shard, holding one twice or mixing two sets is
# refused with one line naming the folder and the reason; a rerun with another source list is refused; a plain
# ingest into a set and a shard into a one-piece store are refused.
source "$MS_SOURCE_DIR/tests/data/common.sh"
export OMP_WAIT_POLICY=passive
$PY "$SRC/tools/bench/gen_archive.py" "$T/in" --n 10 --seed "$SEED" --small -j 1 | tail -1 || exit 1
check $M ingest "$T/in" -o "$T/one.store" --threads 1 --quiet
check $M ingest "$T/in" --shard 0/3 -o "$T/set.store" --threads 1 --quiet
# shard 1 killed at a random moment (or after it finished), then rerun: it resumes as a one-piece ingest does
$M ingest "$T/in" --shard 1/3 -o "$T/set.store" --threads 1 --quiet 2>/dev/null &
pid=$!
sleep "0.$(( SEED % 5 ))"
kill -KILL "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
check $M ingest "$T/in" --shard 1/3 -o "$T/set.store" --threads 1 --quiet
check $M ingest "$T/in" --shard 2/3 -o "$T/set.store" --threads 1 --quiet
out=$($M ingest "$T/in" --shard 2/3 -o "$T/set.store" --threads 1 2>&1)
check grep -q "0 ingested, [1-9][0-9]* skipped" <<<"$out"
check test -d "$T/set.store/shard-00000-of-00003" -a -d "$T/set.store/shard-00002-of-00003"
rm -f "$T"/set.store/*/lock.mdb

# counts, inspect and verify
$M inspect "$T/one.store" --no-classes --no-volumes >"$T/i1" || bad "inspect one.store"
$M inspect "$T/set.store" --no-classes >"$T/i3" || bad "inspect set.store"
check grep -q "^set      3 shards, ID [0-9a-f]\{32\}" "$T/i3"
for w in volumes slices; do
  a=$(grep "^$w " "$T/i1") b=$(grep "^$w " "$T/i3")
  check test -n "$a" -a "${a%%,*}" = "${b%%,*}"
done
check $M verify "$T/set.store"
check grep -q "a set of 3 shards" <($M verify "$T/set.store")
n=$(awk '/^slices /{print $2}' "$T/i1")
check test "$n" -gt 0
# the set's volume table lists ids and first keys as the one-piece store's
diff <($M inspect "$T/one.store" --no-classes --json | $PY -c '
import sys, json
for l in sys.stdin:
    if l.startswith("{") and "first_key" in l: v = json.loads(l); print(v["id"], v["first_key"], v["n_slices"], v["source_hash"])') \
     <($M inspect "$T/set.store" --no-classes --json | $PY -c '
import sys, json
for l in sys.stdin:
    if l.startswith("{") and "first_key" in l: v = json.loads(l); print(v["id"], v["first_key"], v["n_slices"], v["source_hash"])') \
  >"$T/vdiff" && ok || bad "volume tables differ: $(head -3 "$T/vdiff")"

# export --key: byte-identical arrays for random keys (and the first and last)
keys="0 $((n - 1)) $($PY -c "import random; random.seed($SEED); print(' '.join(str(random.randrange($n)) for _ in range(25)))")"
for k in $keys; do
  $M export "$T/one.store" --key "$k" -o "$T/o$k.npy" && $M export "$T/set.store" --key "$k" -o "$T/s$k.npy" &&
    $M export "$T/set.store" --key "$k" --stored -o "$T/ss$k.npy" && $M export "$T/one.store" --key "$k" --stored \
    -o "$T/os$k.npy" && cmp -s "$T/o$k.npy" "$T/s$k.npy" && cmp -s "$T/os$k.npy" "$T/ss$k.npy" && ok ||
    bad "export --key $k differs between the one-piece store and the set"
done
$M export "$T/set.store" --key "$n" -o "$T/x.npy" 2>/dev/null && bad "key $n past the set's end accepted" || ok
check test ! -e "$T/set.store/shard-00000-of-00003/lock.mdb"

# a few pretrain steps: the same loss lines
A="--init random --model vit_test --batch-size 2 --decoder-dim 32 --decoder-depth 1 --decoder-heads 2 --lr 1e-3
   --val-slices 4 --threads 1 --seed $((SEED % 1000)) --max-steps 3 --val-every 3 --save-every 100"
check $M pretrain --store "$T/one.store" $A -o "$T/r1" >/dev/null 2>&1
check $M pretrain --store "$T/set.store" $A -o "$T/r3" >/dev/null 2>&1
losses() { $PY -c 'import sys, json
for l in open(sys.argv[1]): d = json.loads(l); print(d["step"], d["split"], d["loss"], d.get("grad_norm"))' "$1"; }
check test "$(losses "$T/r1/log.jsonl")" = "$(losses "$T/r3/log.jsonl")"
check test "$(losses "$T/r3/log.jsonl" | wc -l)" -ge 4
check test ! -e "$T/set.store/shard-00001-of-00003/lock.mdb"

# refusals: one line naming the folder and the reason
refused() { # WHY DIR CMD...: the command fails with one line "DIR: ...WHY..."
  local why=$1 dir=$2
  shift 2
  "$@" >/dev/null 2>"$T/err" && { bad "$why: accepted"; return; }
  grep -q "$dir: .*$why" "$T/err" && [ "$(grep -c . "$T/err")" -eq 1 ] && ok || bad "$why: $(cat "$T/err")"
}
cp -r "$T/set.store" "$T/miss.store" && rm -rf "$T/miss.store/shard-00001-of-00003"
refused "shard 1 of 3 is missing" "$T/miss.store" $M inspect "$T/miss.store"
refused "shard 1 of 3 is missing" "$T/miss.store" $M export "$T/miss.store" --key 0 -o "$T/x.npy"
cp -r "$T/set.store" "$T/dup.store" && cp -r "$T/set.store/shard-00001-of-00003" "$T/dup.store/shard-1-of-3"
refused "shard 1 of 3 twice" "$T/dup.store" $M verify "$T/dup.store"
# another set: the same sources with other options
check $M ingest "$T/in" --shard 2/3 --zstd-level 1 --min-foreground 0.2 -o "$T/other.store" --threads 1 --quiet
cp -r "$T/set.store" "$T/mix.store" && rm -rf "$T/mix.store/shard-00002-of-00003" &&
  cp -r "$T/other.store/shard-00002-of-00003" "$T/mix.store/"
refused "shards of two sets" "$T/mix.store" $M inspect "$T/mix.store"
refused "shards of two sets" "$T/mix.store" $M pretrain --store "$T/mix.store" $A -o "$T/rx"
# a rerun with another source list, a plain ingest into a set, a shard into a one-piece store
cp "$T/in/$(ls "$T/in" | grep nii | head -1)" "$T/extra.nii.gz"
refused "a shard made from other sources" "$T/set.store/shard-00000-of-00003" \
  $M ingest "$T/in" "$T/extra.nii.gz" --shard 0/3 -o "$T/set.store" --quiet
refused "a set of shards" "$T/set.store" $M ingest "$T/extra.nii.gz" -o "$T/set.store" --quiet
refused "a one-piece store" "$T/one.store" $M ingest "$T/in" --shard 0/2 -o "$T/one.store" --quiet
$M ingest "$T/in" --shard 3/3 -o "$T/bad.store" 2>"$T/err" && bad "--shard 3/3 accepted" ||
  check grep -q "0 <= K < N" "$T/err"
done_
