# tests/data/common.sh — sourced by the data script tests: paths, a fresh seed, a scratch folder, check helpers.
set -u
M=${MS_MRISAM:?run through ctest}
SRC=${MS_SOURCE_DIR:?run through ctest}
PY=/usr/bin/python3
HERE=$SRC/tests/data
T=${MS_BINARY_DIR:?}/tests/tmp_$(basename "$0" .sh)
rm -rf "$T" && mkdir -p "$T"
SEED=${MS_TEST_SEED:-$(( (RANDOM << 15) | RANDOM ))}
echo "seed: $SEED (replay with MS_TEST_SEED=$SEED)"
$PY -c 'import nibabel, lmdb, zstandard, numpy' 2>/dev/null || { echo "skip: python3-nibabel/lmdb/zstandard missing"; exit 77; }
PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); }
bad() { FAIL=$((FAIL + 1)); echo "FAIL: $*"; }
check() { if "$@"; then ok; else bad "$*"; fi; }
done_() { echo "$PASS passed, $FAIL failed"; [ "$FAIL" -eq 0 ]; exit $?; }
# handlers_wait PID: up to 10 s for the process to be $M (the forked shell has exec'd it: bash itself may catch
# SIGTERM before that) and to catch SIGTERM (bit 15 of SigCgt in /proc/PID/status), so that a signal sent next meets
# mrisam's handler, not the shell's or the default action (on a loaded machine the start can take seconds)
handlers_wait() {
  local pid=$1 i cgt exe
  exe=$(readlink -f "$M")
  for ((i = 0; i < 200; i++)); do
    [ -d "/proc/$pid" ] || return 0
    cgt=$(awk '/^SigCgt:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ] && [ -n "$cgt" ] && (( (16#$cgt >> 14) & 1 )) && return 0
    sleep 0.05
  done
}
# term_wait PID: SIGTERM, then up to 10 s for the process to leave (SIGKILL and a failure after that); sets rc to
# its exit status
term_wait() {
  local pid=$1 i
  kill -TERM "$pid"
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    bad "still running 10 s after SIGTERM"
    kill -KILL "$pid"
  fi
  wait "$pid"
  rc=$?
}
