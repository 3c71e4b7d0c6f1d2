#!/bin/sh
# tools/gpu/nvcc-wrap.sh — nvcc without the host-only warning flags.
# CMakeLists.txt's add_compile_options(-Wall -Wextra ...) reaches the CUDA compile line too, and nvcc rejects
# "-Wall" ("nvcc fatal: Unknown option '-Wall'"). Until CMakeLists.txt scopes them to C
# ($<$<COMPILE_LANGUAGE:C>:...>), configure with -DCMAKE_CUDA_COMPILER=$PWD/tools/gpu/nvcc-wrap.sh: this drops
# the two flags and forwards them to the host compiler instead.
NVCC=${MS_NVCC:-/usr/local/cuda/bin/nvcc}
first=1
for a in "$@"; do
    if [ $first = 1 ]; then set --; first=0; fi
    case "$a" in
        -Wall|-Wextra) set -- "$@" "-Xcompiler=$a" ;;
        *) set -- "$@" "$a" ;;
    esac
done
exec "$NVCC" "$@"
