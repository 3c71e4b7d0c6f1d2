# tools/gpu/env.sh — sourced by the tools/gpu scripts: where build_and_test.sh unpacks the Debian .debs (P), their
# libraries on the loader's path, and where logs go (the device tool's $OUT, else /tmp).
P=/opt/msdeps
L=$P/usr/lib/x86_64-linux-gnu
LOG=${OUT:-/tmp}
export LD_LIBRARY_PATH=$L:$L/openblas-openmp:$P/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
