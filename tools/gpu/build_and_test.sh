#!/bin/bash
# tools/gpu/build_and_test.sh — build mrisam with CUDA on a GPU machine that has no -dev packages, run the
# CUDA-vs-CPU op test (tests/kernels/test_ops_cuda.c) with timings, time the same shapes in PyTorch, print a table.
#
# Prerequisite (on a machine with apt, once): the .debs in deps/debs (git-ignored), see docs/PERFORMANCE-gpu-notes.md:
#   mkdir -p deps/debs && cd deps/debs && apt-get download liblmdb0 liblmdb-dev libnifti2-2 libnifti2-dev libniftiio-dev libznz3 \
#     libznz-dev libzstd1 libzstd-dev libopenblas0-openmp libopenblas-openmp-dev libgfortran5 libquadmath0 \
#     libpng-dev libpng16-16 zlib1g zlib1g-dev libcjson1 libcjson-dev pkgconf pkgconf-bin libpkgconf3
# With the device tool: run with carry ["deps"], command `bash tools/gpu/build_and_test.sh`.
# Environment: MS_BUILD (build dir, default build-gpu), MS_JOBS (default 16), OUT (logs are copied there if set),
#   MS_SKIP_TORCH=1 skips the PyTorch timings.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
B=${MS_BUILD:-build-gpu}
J=${MS_JOBS:-16}
. "$ROOT/tools/gpu/env.sh"
. "$ROOT/tools/gpu/deps.sh"
mkdir -p "$LOG"
ms_gpu_unpack
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader || true
/usr/local/cuda/bin/nvcc --version | tail -1 || true

ms_gpu_configure "$B" > "$LOG/cmake.log" 2>&1
cfg=$?
[ $cfg = 0 ] && grep -E "^\-\- +\[" "$LOG/cmake.log" || grep -A3 "CMake Error" "$LOG/cmake.log" | head -12
TEST="$B/tests/test_ops_cuda"
: >> "$LOG/build.log"
if [ $cfg != 0 ] || ! cmake --build "$B" -j"$J" --target test_ops_cuda > "$LOG/build.log" 2>&1; then
  grep -E "error|Error" "$LOG/build.log" | head -20
  # Fallback: the op test needs only kernels/ — build it without the rest of the library (which may be
  # mid-edit in a shared tree) straight from the sources.
  echo "full build failed; building the op test from kernels/ alone"
  K="$B/kernels-only"
  mkdir -p "$K"
  CF="-O2 -std=c11 -Wall -Wextra -D_GNU_SOURCE -DMS_HAVE_CUDA=1 -fopenmp -I. -Ikernels -Itests -I$P/usr/include/x86_64-linux-gnu/openblas-openmp"
  ls kernels/base/*.c kernels/cpu/*.c tests/kernels/test_ops_cuda.c tests/kernels/op_cases.c tests/kernels/ref.c | xargs -P "$J" -I{} sh -c 'gcc '"$CF"' -c {} -o '"$K"'/$(echo {} | tr / _).o' || exit 1
  ls kernels/cuda/*.cu | xargs -P "$J" -I{} sh -c '/usr/local/cuda/bin/nvcc -O3 -arch=sm_90 -Xcompiler=-Wall,-Wextra -DMS_HAVE_CUDA=1 -I. -Ikernels -c {} -o '"$K"'/$(echo {} | tr / _).o' || exit 1
  /usr/local/cuda/bin/nvcc -o "$K/test_ops_cuda" "$K"/*.o -L"$L/openblas-openmp" -lopenblas -lcublas -lcublasLt -lgomp -lm \
    -Xlinker -rpath-link="$L" || exit 1
  TEST="$K/test_ops_cuda"
fi
echo "build: $(grep -ci warning "$LOG/build.log") warning lines"

MS_TEST_BENCH=1 "$TEST" > "$LOG/test_ops_cuda.log" 2>&1
rc=$?
if [ "${MS_SANITIZE_RUN:-0}" = 1 ] && command -v compute-sanitizer > /dev/null; then
  # out-of-bounds and misaligned accesses in every kernel the op test reaches (no timings: memcheck is slow)
  timeout 180 compute-sanitizer --tool memcheck --error-exitcode 3 "$TEST" > "$LOG/memcheck.log" 2>&1
  echo "compute-sanitizer memcheck: rc=$? ($(grep -c "Invalid\|ERROR SUMMARY" "$LOG/memcheck.log") report lines)"
  grep -E "ERROR SUMMARY|passed" "$LOG/memcheck.log" | tail -2
fi
if [ "${MS_SKIP_TORCH:-0}" != 1 ]; then
  python3 tools/gpu/torch_bench.py > "$LOG/torch_bench.log" 2>&1 || tail -5 "$LOG/torch_bench.log"
fi

echo "==== test_ops_cuda (rc=$rc) ===="
grep -E "^seed|FAIL|passed" "$LOG/test_ops_cuda.log" | head -40
echo "---- per-op comparison (gpu vs cpu) ----"
grep -E "^  " "$LOG/test_ops_cuda.log" | sed 's/^  //' | head -150
echo "---- timings (best of N, H100, fp32) ----"
grep -h -E "^(BENCH|TORCH)" "$LOG/test_ops_cuda.log" "$LOG/torch_bench.log" 2>/dev/null
exit $rc
