# Builds the libFuzzer target for the NIfTI header validator with clang (-fsanitize=fuzzer,address,undefined) and
# runs it for ~20 s from a seed corpus of valid headers (NIfTI-1 .nii and .hdr, NIfTI-2, byte-swapped). Skips (77)
# when clang or libFuzzer is missing (Debian: apt-get install clang libclang-rt-14-dev). Crashes are kept in $T.
source "$MS_SOURCE_DIR/tests/data/common.sh"
CC=$(command -v clang || command -v clang-14) || { echo "skip: no clang"; exit 77; }
F=$T/fuzz_nifti_header
if ! $CC -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -D_GNU_SOURCE \
    -I"$SRC" -I"$SRC/kernels" -I/usr/include/nifti "$HERE/fuzz_nifti_header.c" "$SRC/data/nifti.c" \
    "$SRC/kernels/base/status.c" "$SRC/kernels/base/path.c" -lnifti2 -lznz -lz -lm -o "$F" 2>"$T/build.log"; then
  cat "$T/build.log"
  if grep -qi "fuzzer\|cannot find\|no such file" "$T/build.log"; then echo "skip: libFuzzer unavailable"; exit 77; fi
  exit 1
fi
mkdir -p "$T/corpus" # the committed seeds (tests/gen_fuzz_corpus.py), copied: libFuzzer adds to its corpus folder
cp "$HERE/fuzz_corpus/fuzz_nifti_header/"* "$T/corpus/" || exit 1
"$F" -max_total_time="${MS_FUZZ_SECONDS:-20}" -seed="$((SEED % 2147483647))" -rss_limit_mb=1024 -max_len=600 \
  -artifact_prefix="$T/" "$T/corpus" >"$T/fuzz.log" 2>&1
rc=$?
tail -3 "$T/fuzz.log"
check test $rc -eq 0
done_
