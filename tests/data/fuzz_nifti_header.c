/* tests/data/fuzz_nifti_header.c — libFuzzer target for ms_nifti_check_header, the validator that stands in front of
 * libnifti. Any input must return without a crash, sanitizer report or huge allocation, and an accepted header must
 * satisfy the invariants ingest relies on (dims >= 1, sizes agree and stay under the cap, known datatype).
 * Built and run by test_fuzz_nifti_header.sh (clang -fsanitize=fuzzer,address,undefined), and with CC=clang
 * -DMS_FUZZ=ON against the instrumented library (tests/data/tests.cmake); seeds in
 * tests/data/fuzz_corpus/fuzz_nifti_header. */
#include <stdint.h>
#include <stdlib.h>

#include "data/nifti.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ms_nifti_hdr h;
    if (ms_nifti_check_header(data, size, &h) != MS_OK) return 0;
    int64_t nvox = 1;
    for (int i = 1; i <= h.dim[0]; i++) {
        if (h.dim[i] < 1) abort();
        nvox *= h.dim[i];
    }
    if (h.dim[0] < 1 || h.dim[0] > 7 || nvox != h.nvox || h.nbytes != nvox * h.nbyper ||
        h.nbytes > MS_NIFTI_MAX_BYTES || h.nbyper < 1 || h.nbyper > 8 || h.vox_offset < 0 ||
        (h.version && !h.pair && h.vox_offset < 348))
        abort();
    return 0;
}
