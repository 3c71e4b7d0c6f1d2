#!/usr/bin/env bash
# tests/fuzz_all.sh BUILD_DIR [SECONDS] — runs every libFuzzer target (tests/<area>/fuzz_*.c, built in BUILD_DIR
# with CC=clang -DMS_FUZZ=ON: cmake --build BUILD_DIR --target fuzz) on a copy of its seed corpus
# (tests/<area>/fuzz_corpus/<target>/), one after another, SECONDS in all (default 150) shared equally, under
# ASan + UBSan. Fails on any crash, leak, sanitizer report, timeout (10 s per input) or out-of-memory (2 GB), and
# prints the input that did it (kept in the work folder, printed at the end). MS_FUZZ_SEED=<n> replays a run's
# mutations; the seed is printed. MS_FUZZ_ONLY=<regex> picks targets. MS_FUZZ_KEEP=1 keeps the work folder.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:?usage: tests/fuzz_all.sh BUILD_DIR [SECONDS]}
TOTAL=${2:-150}
SEED=${MS_FUZZ_SEED:-$((RANDOM * 32768 + RANDOM + 1))}
WORK=$(mktemp -d /tmp/ms_fuzz_all.XXXXXX)
echo "fuzz_all: seed $SEED (MS_FUZZ_SEED=$SEED replays), work folder $WORK"

targets=()
for src in "$HERE"/*/fuzz_*.c; do
  name=$(basename "$src" .c)
  [[ -n "${MS_FUZZ_ONLY:-}" && ! "$name" =~ $MS_FUZZ_ONLY ]] && continue
  targets+=("$src")
done
[ ${#targets[@]} -gt 0 ] || { echo "fuzz_all: no targets"; exit 1; }
per=$((TOTAL / ${#targets[@]}))
[ "$per" -ge 1 ] || per=1

fail=0
for src in "${targets[@]}"; do
  name=$(basename "$src" .c)
  seeds=$(dirname "$src")/fuzz_corpus/$name
  bin=$(find "$BUILD" -maxdepth 3 -type f -name "$name" -perm -u+x | head -1)
  if [ -z "$bin" ]; then
    echo "FAIL $name: not built in $BUILD (cmake --build $BUILD --target fuzz)"
    fail=1
    continue
  fi
  mkdir -p "$WORK/$name/corpus"
  [ -d "$seeds" ] && cp "$seeds"/* "$WORK/$name/corpus/" 2>/dev/null
  t0=$(date +%s.%N)
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} \
    "$bin" -max_total_time="$per" -seed="$SEED" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$WORK/$name/" "$WORK/$name/corpus" >"$WORK/$name/log" 2>&1
  rc=$?
  t=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$WORK/$name/log" | grep -o '[0-9]*$')
  last=$(grep -E '^#[0-9]+' "$WORK/$name/log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[^ ]+')
  if [ $rc -ne 0 ]; then
    echo "FAIL $name (exit $rc after ${t}s): the log's end and the input that failed:"
    tail -40 "$WORK/$name/log"
    ls "$WORK/$name"/crash-* "$WORK/$name"/leak-* "$WORK/$name"/timeout-* "$WORK/$name"/oom-* 2>/dev/null
    fail=1
  else
    printf 'ok   %-20s %5ss %9s execs  %s\n' "$name" "$t" "${execs:-?}" "$last"
  fi
done
if [ $fail -eq 0 ] && [ "${MS_FUZZ_KEEP:-0}" != 1 ]; then rm -rf "$WORK"; else echo "fuzz_all: kept $WORK"; fi
exit $fail
