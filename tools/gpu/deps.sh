# tools/gpu/deps.sh — sourced by the tools/gpu scripts after env.sh, on a GPU machine without -dev packages:
# ms_gpu_unpack unpacks the Debian .debs of deps/debs (carried; the list is in build_and_test.sh) into $P and points
# pkg-config there; ms_gpu_configure DIR [cmake args...] configures a CUDA build (sm_90) against them.
ms_gpu_unpack() {
    mkdir -p "$P"
    for f in deps/debs/*.deb; do dpkg -x "$f" "$P"; done
    # Debian's absolute symlinks (libz.so -> /lib/...) and CMake package files (/usr/...) must point into $P
    find "$P" -type l | while read -r f; do t=$(readlink "$f"); case "$t" in /*) ln -sf "$P$t" "$f" ;; esac; done
    sed -i "s|\"/usr/lib/|\"$P/usr/lib/|g; s|\"/usr/include|\"$P/usr/include|g" "$L"/cmake/*/*.cmake 2>/dev/null
    export PKG_CONFIG_PATH=$L/pkgconfig PKG_CONFIG_LIBDIR=$L/pkgconfig PKG_CONFIG_SYSROOT_DIR=$P
    PKGCONF=$(command -v pkg-config || echo "$P/usr/bin/pkgconf")
}

ms_gpu_configure() {
    local dir=$1
    shift
    cmake -S . -B "$dir" -DMS_CUDA=ON -DMS_CUDA_ARCH=90 -DBUILD_TESTING=ON \
      -DPKG_CONFIG_EXECUTABLE="$PKGCONF" \
      -DCMAKE_PREFIX_PATH="$P/usr;$L/cmake" \
      -DNIFTI_INCLUDE=$P/usr/include/nifti -DNIFTI2_LIB=$L/libnifti2.so -DZNZ_LIB=$L/libznz.so \
      -DOPENBLAS_INCLUDE=$P/usr/include/x86_64-linux-gnu/openblas-openmp -DOPENBLAS_LIB=$L/openblas-openmp/libopenblas.so \
      -DPNG_LIBRARY=$L/libpng16.so -DPNG_PNG_INCLUDE_DIR=$P/usr/include \
      -DZLIB_LIBRARY=$L/libz.so -DZLIB_INCLUDE_DIR=$P/usr/include \
      -DCMAKE_C_FLAGS="-I$P/usr/include" \
      -DCMAKE_EXE_LINKER_FLAGS="-L$L -Wl,-rpath-link,$L -Wl,-rpath-link,$L/openblas-openmp -Wl,-rpath-link,$P/lib/x86_64-linux-gnu" \
      "$@"
}
