#!/usr/bin/env bash
# tools/run.sh — the two entry points of README.md, for a fresh Debian 12 machine.
#   tools/run.sh demo   installs what is missing, builds, and runs the main job on the embedded default data
#   tools/run.sh test   installs what is missing, builds (CUDA too when nvcc is present), runs the whole test suite,
#                       then the sanitizer build (ASan + UBSan, CPU-only) of the fast tests, then the libFuzzer
#                       targets (clang, ASan + UBSan) on their seed corpora for 150 s in all
# Environment: MS_JOBS (build parallelism, default: cores), MS_SKIP_INSTALL=1 (trust the machine), MS_TEST_ARGS
# (extra ctest arguments, e.g. "-LE slow"), CI=true (a test that skips for a missing dependency fails; only the
# tests labelled gpu may skip).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
JOBS=${MS_JOBS:-$(nproc)}
mode=${1:-}

# dcm2niix: ingest's DICOM converter, run at run time (both modes install it); python3-pydicom writes the test series;
# Open MPI: pretrain and finetune over several processes (mpirun), and the tests labelled mpi; gnuplot-nox: the curves
# of `mrisam report` (required) and the plots of `mrisam compare` (it finishes without them), run at run time
BUILD_PKGS="build-essential cmake pkg-config libnifti2-dev liblmdb-dev libzstd-dev libopenblas-openmp-dev libpng-dev
  libcjson-dev zlib1g-dev libdeflate-dev dcm2niix libopenmpi-dev openmpi-bin gnuplot-nox"
TEST_PKGS="python3-torch python3-numpy python3-nibabel python3-lmdb python3-zstandard python3-pil python3-scipy mricron-data
  python3-pydicom clang libclang-rt-14-dev"

install_missing() {
  [ "${MS_SKIP_INSTALL:-0}" = 1 ] && return 0
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  local SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build() { # build DIR [cmake args...]; the configure log stays in DIR
  local dir=$1; shift
  mkdir -p "$dir"
  cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >"$dir/configure.log" 2>&1 \
    || { cat "$dir/configure.log"; exit 1; }
  grep -E '^-- (mrisam|  \[)' "$dir/configure.log" || true
  cmake --build "$dir" -j"$JOBS"
}

case "$mode" in
demo)
  install_missing $BUILD_PKGS mricron-data
  mkdir -p build
  build build
  shift
  exec bash tools/demo.sh "$ROOT/build/mrisam" "$@"
  ;;
test)
  install_missing $BUILD_PKGS $TEST_PKGS
  mkdir -p build build-asan
  start=$(date +%s)
  # Tests run side by side (ctest -j): OpenMP threads that spin while waiting steal the cores the other tests need.
  export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
  build build -DMS_CUDA=AUTO
  (cd build && ctest --output-on-failure -j"$JOBS" ${MS_TEST_ARGS:-}) || fail=1
  # Sanitizers on the fast CPU tests (slow ones and script tests that drive Python are left to the main run).
  build build-asan -DMS_SANITIZE=ON -DMS_CUDA=OFF
  (cd build-asan && ASAN_OPTIONS=detect_leaks=0 ctest --output-on-failure -j"$JOBS" -LE 'slow|gpu|script') || fail=1
  # Fuzz targets (tests/<area>/fuzz_*.c): only the instrumented library and the targets are built, then each runs on
  # a copy of its seeds, 150 s shared among them (tests/fuzz_all.sh); any crash or sanitizer report fails the run.
  fuzz_start=$(date +%s)
  mkdir -p build-fuzz
  CC=clang cmake -S "$ROOT" -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMS_FUZZ=ON -DMS_CUDA=OFF \
    >build-fuzz/configure.log 2>&1 || { cat build-fuzz/configure.log; exit 1; }
  cmake --build build-fuzz -j"$JOBS" --target fuzz || fail=1
  bash tests/fuzz_all.sh build-fuzz 150 || fail=1
  echo "fuzz step (configure, build, run): $(( $(date +%s) - fuzz_start )) s"
  echo "test wall time: $(( $(date +%s) - start )) s"
  exit ${fail:-0}
  ;;
*)
  echo "usage: tools/run.sh demo|test" >&2
  exit 2
  ;;
esac
