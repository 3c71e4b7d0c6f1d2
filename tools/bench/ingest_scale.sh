#!/bin/bash
# tools/bench/ingest_scale.sh [N=1000] [DIR=/tmp/mrisam_ingest_scale] — ingest at archive scale (docs/PERFORMANCE.md,
# "Ingest at scale"): N realistic volumes from tools/bench/gen_archive.py (generated in chunks of CHUNK, files
# already in DIR/in reused), then `mrisam ingest --log` over them while a sampler records every second the
# process's resident memory (VmRSS), data.mdb's size and the sources, volumes and .nii.gz bytes committed (this
# run's, from its log); the run is killed (SIGKILL) once KILL_FRAC of the sources are committed, then resumed (the
# rerun skips what is stored), then checked: `mrisam verify`, `mrisam inspect` (every volume of the manifest in the
# store) and a third run that must skip everything.
# Writes DIR/samples.csv, DIR/log.run1.jsonl and DIR/log.run2.jsonl (ingest --log), DIR/summary.txt and
# DIR/summary.json (tools/bench/ingest_scale_summary.py: rates per decile, RSS after warm-up, the longest gap
# between commits, a projection to 110,000 volumes on a 16-core node).
# Environment: MRISAM (default build/mrisam), THREADS (all cores), SEED (1), CHUNK (100), KILL_FRAC (0.5),
# CLEAN=store|all|none (default store: the store is removed at the end, the inputs kept for a rerun; about
# 14.4 MB of .nii.gz per volume on average, the store about as much again: 1000 volumes need about 30 GB).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
N=${1:-1000}
DIR=${2:-/tmp/mrisam_ingest_scale}
M=${MRISAM:-$HERE/../../build/mrisam}
THREADS=${THREADS:-$(nproc)}
SEED=${SEED:-1}
CHUNK=${CHUNK:-100}
KILL_FRAC=${KILL_FRAC:-0.5}
CLEAN=${CLEAN:-store}
PY=/usr/bin/python3
S=$DIR/store
mkdir -p "$DIR/in"
need=$((N * 32)) # MB: inputs and store, with room
free=$(df -Pm "$DIR" | awk 'NR == 2 { print $4 }')
[ "$free" -gt "$need" ] || echo "warning: $free MB free in $DIR, about $need MB needed for $N volumes" >&2
# libdeflate-gzip (Debian's libdeflate-tools) compresses at level 6 three times faster than zlib: used when present
FAST=""
command -v libdeflate-gzip >/dev/null && FAST=--fast-gzip
echo "== generating $N volumes into $DIR/in (seed $SEED, chunks of $CHUNK)"
for ((n = CHUNK < N ? CHUNK : N; ; n += CHUNK)); do
  [ "$n" -gt "$N" ] && n=$N
  $PY "$HERE/gen_archive.py" "$DIR/in" --n "$n" --seed "$SEED" -j "$(nproc)" $FAST | tail -1
  [ "$n" -ge "$N" ] && break
done
mapfile -t IN < <(ls "$DIR"/in/vol_*.nii.gz | head -n "$N")
rm -rf "$S" "$DIR"/log.run*.jsonl
echo "t,run,rss_kb,mdb_bytes,sources,volumes,gz_bytes" > "$DIR/samples.csv"
T0=$(date +%s.%N)
# run RUN [KILL_AT]: ingest with the sampler; with KILL_AT, SIGKILL once that many sources are logged
run() {
  local r=$1 kill_at=${2:-0} log=$DIR/log.run$1.jsonl pid rss mdb n t nv gb
  : > "$log"
  echo "$(date +%s.%N) $r start" >> "$DIR/runs.txt"
  "$M" ingest "${IN[@]}" -o "$S" --threads "$THREADS" --log "$log" --quiet 2> "$DIR/err.run$r.txt" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
    mdb=$(stat -c %s "$S/data.mdb" 2>/dev/null || echo 0)
    n=$(wc -l < "$log")
    read -r nv gb < <(awk '{ match($0, /"volumes":[0-9]+/); v += substr($0, RSTART + 10, RLENGTH - 10)
                             match($0, /"source_bytes":[0-9]+/); b += substr($0, RSTART + 15, RLENGTH - 15) }
                           END { print v + 0, b + 0 }' "$log")
    t=$(echo "$(date +%s.%N) - $T0" | bc)
    [ -n "$rss" ] && echo "$t,$r,$rss,$mdb,$n,$nv,$gb" >> "$DIR/samples.csv"
    if [ "$kill_at" -gt 0 ] && [ "$n" -ge "$kill_at" ]; then
      kill -9 "$pid" 2>/dev/null && echo "run $r: SIGKILL after $n sources committed ($t s)"
      break
    fi
    sleep 1
  done
  wait "$pid" 2>/dev/null && rc=0 || rc=$?
  echo "$(date +%s.%N) $r end $rc" >> "$DIR/runs.txt"
  echo "run $r: exit status $rc, $(wc -l < "$log") sources committed"
  cat "$DIR/err.run$r.txt"
}
echo "$T0 0 t0" > "$DIR/runs.txt"
KILL_AT=$($PY -c "print(max(1, int($N * $KILL_FRAC)))")
echo "== ingest, $THREADS threads, killed after $KILL_AT sources, then resumed"
run 1 "$KILL_AT"
run 2
echo "== checks"
FAIL=0
if "$M" verify "$S" > "$DIR/verify.txt" 2>&1; then
  tail -1 "$DIR/verify.txt"
else
  FAIL=1
  echo "FAIL: verify"
  cat "$DIR/verify.txt"
fi
"$M" inspect "$S" --no-volumes --no-classes > "$DIR/inspect.txt"
grep -E "^(counts|volumes|slices|file)" "$DIR/inspect.txt"
$PY - "$DIR" "$N" <<'PYEOF' || FAIL=1
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
man = [e for e in json.load(open(f"{d}/in/manifest.json"))["volumes"] if e["index"] < n]
counts = json.loads(next(l for l in open(f"{d}/inspect.txt") if l.startswith("counts")).split(None, 1)[1])
want = sum(e["frames"] for e in man)
print(f"store: {counts['volumes']} volumes from {counts['sources']} sources; manifest: {want} volumes in {n} files")
sys.exit(0 if counts["volumes"] == want else 1)
PYEOF
out=$("$M" ingest "${IN[@]}" -o "$S" --threads "$THREADS" 2>&1 | tail -1)
echo "third run: $out"
grep -q "0 ingested, $N skipped" <<<"$out" || { FAIL=1; echo "FAIL: the third run did not skip every source"; }
STORE_BYTES=$(du -sb "$S" | cut -f1)
GZ_BYTES=$(du -cb "${IN[@]}" | tail -1 | cut -f1)
echo "== summary"
$PY "$HERE/ingest_scale_summary.py" "$DIR" --threads "$THREADS" --store-bytes "$STORE_BYTES" --gz-bytes "$GZ_BYTES" \
  --n "$N" | tee "$DIR/summary.txt"
case $CLEAN in
  store) rm -rf "$S"; echo "(store removed; inputs kept in $DIR/in: rm -rf $DIR when done)" ;;
  all) rm -rf "$DIR"; echo "($DIR removed)" ;;
  *) echo "(kept: $DIR)" ;;
esac
[ $FAIL -eq 0 ] && echo "checks passed" || { echo "checks FAILED"; exit 1; }
