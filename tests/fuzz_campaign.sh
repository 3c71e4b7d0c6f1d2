#!/usr/bin/env bash
# tests/fuzz_campaign.sh BUILD_DIR OUT_DIR DEADLINE_EPOCH QUEUE_A QUEUE_B — a longer fuzzing campaign than CI's
# (docs/RELIABILITY.md). A queue is a comma-separated list of TARGET:CPU_SECONDS; the two queues run side by side
# (two fuzzing processes at a time), each target until it has used CPU_SECONDS of CPU time (measured
# from /proc, so a busy machine does not shorten the run) or until DEADLINE_EPOCH, then stops gracefully (SIGUSR1:
# libFuzzer prints its final stats). Each target keeps a growing corpus in OUT_DIR/corpus/<target> (seeded from
# tests/<area>/fuzz_corpus/<target>), its log in OUT_DIR/<target>.log and what it finds in OUT_DIR/art/<target>/;
# a target that stops on a finding is restarted (at most 3 times) with the CPU time it has left. The CPU time a
# target has had is kept in OUT_DIR/<target>.cpu_total, so a second call with larger budgets continues each target
# (run the campaign in rounds, so that a deadline cuts every target short rather than the last ones). The binary
# is copied when the target starts, so a rebuild while the campaign runs is picked up by the targets not yet
# started. Appends one line per target to OUT_DIR/summary.txt: CPU seconds so far, executions, executions per CPU
# second, findings, and libFuzzer's last cov/ft/corpus line.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=$1 OUT=$2 DEADLINE=$3
shift 3
mkdir -p "$OUT/bin" "$OUT/corpus" "$OUT/art"
TCK=$(getconf CLK_TCK)

cpu_of() { # utime + stime of a pid, in seconds
  awk -v t="$TCK" '{ print int(($14 + $15) / t) }' "/proc/$1/stat" 2>/dev/null || echo 0
}

run_one() { # name cpu_budget
  local name=$1 budget=$2 used tries=0
  used=$(cat "$OUT/$name.cpu_total" 2>/dev/null || echo 0)
  local src; src=$(ls "$HERE"/*/"$name".c)
  mkdir -p "$OUT/corpus/$name" "$OUT/art/$name"
  cp -n "$(dirname "$src")/fuzz_corpus/$name"/* "$OUT/corpus/$name/" 2>/dev/null
  touch "$OUT/$name.log"
  while [ $used -lt "$budget" ] && [ "$(date +%s)" -lt "$DEADLINE" ] && [ $tries -lt 4 ]; do
    tries=$((tries + 1))
    cp "$(find "$BUILD" -maxdepth 3 -type f -name "$name" -perm -u+x | head -1)" "$OUT/bin/$name"
    echo "=== run $tries, $(date -u +%T), CPU budget left $((budget - used)) s" >>"$OUT/$name.log"
    ASAN_OPTIONS=detect_leaks=1 "$OUT/bin/$name" -max_total_time=100000 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$OUT/art/$name/" "$OUT/corpus/$name" >>"$OUT/$name.log" 2>&1 &
    local pid=$! c=0
    while kill -0 $pid 2>/dev/null; do
      sleep 5
      c=$(cpu_of $pid)
      [ "$c" -gt 0 ] && echo $c >"$OUT/$name.cpu_run"
      if [ $((used + c)) -ge "$budget" ] || [ "$(date +%s)" -ge "$DEADLINE" ]; then
        kill -USR1 $pid 2>/dev/null
        break
      fi
    done
    wait $pid 2>/dev/null
    echo "=== exit $? after $(cat "$OUT/$name.cpu_run" 2>/dev/null || echo "$c") s CPU" >>"$OUT/$name.log"
    used=$((used + $(cat "$OUT/$name.cpu_run" 2>/dev/null || echo "$c")))
    echo $used >"$OUT/$name.cpu_total"
    rm -f "$OUT/$name.cpu_run"
  done
  local execs rate last
  execs=$(grep -o 'number_of_executed_units: *[0-9]*' "$OUT/$name.log" | awk '{ s += $2 } END { print s }')
  last=$(grep -E '^#[0-9]+' "$OUT/$name.log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[^ ]+')
  rate=$(( ${execs:-0} / (used > 0 ? used : 1) ))
  echo "$name cpu_s=$used execs=${execs:-?} exec_per_cpu_s=$rate runs=$tries findings=$(ls "$OUT/art/$name" | wc -l) $last" \
    >>"$OUT/summary.txt"
}

worker() { # the targets of one queue, in order
  local spec
  for spec in ${1//,/ }; do run_one "${spec%%:*}" "${spec##*:}"; done
}

worker "$1" &
worker "$2" &
wait
cat "$OUT/summary.txt"
