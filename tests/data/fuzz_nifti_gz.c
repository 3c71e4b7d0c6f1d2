/* tests/data/fuzz_nifti_gz.c — libFuzzer target for whole NIfTI files: the first byte picks the path, the rest is
 * the file. 0: ms_nifti_open_mem (a .nii.gz read whole: the gzip header and members, inflate with libdeflate or
 * zlib, the header check, libnifti on the header); 1: ms_nifti_open on a .nii file (the streamed path through
 * znz). An opened image has its first and last frames read (ms_nifti_frame, and ms_nifti_frame_int for integer
 * data). Any crash, leak or sanitizer report is a bug, and so is an error message of more than one line.
 * Built with CC=clang -DMS_FUZZ=ON (tests/data/tests.cmake); seeds in tests/data/fuzz_corpus/fuzz_nifti_gz. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <nifti2_io.h>

#include "data/nifti.h"
#include "fuzz_file.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    nifti_set_debug_level(0); /* as ingest does: libnifti's own messages are noise here */
    return 0;
}

static ms_status read_frames(const ms_nifti *im)
{
    size_t nv = (size_t)(im->cdim[0] * im->cdim[1] * im->cdim[2]);
    float *dst = malloc(nv ? nv * sizeof *dst : 1);
    if (!dst) abort();
    ms_status st = MS_OK;
    int64_t frames[2] = {0, im->n_frames - 1};
    for (int i = 0; i < 2 && !st; i++) {
        uint64_t nonfinite = 0;
        const void *raw;
        st = ms_nifti_frame(im, frames[i], dst, &nonfinite);
        if (!st && nonfinite > nv) abort();
        if (!st) ms_nifti_frame_int(im, frames[i], &raw);
    }
    free(dst);
    return st;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int mode = data[0] & 1;
    size--;
    uint8_t *p = malloc(size ? size : 1); /* a private copy so that reads past the end are caught by ASan */
    memcpy(p, data + 1, size);
    ms_nifti im;
    memset(&im, 0, sizeof im);
    ms_status st = mode == 0 ? ms_nifti_open_mem("fuzz.nii.gz", p, size, NULL, &im)
                             : ms_nifti_open(ms_fuzz_named("fuzz.nii", p, size), &im);
    if (!st) {
        if (im.n_frames < 1 || im.cdim[0] < 1 || im.cdim[1] < 1 || im.cdim[2] < 1) abort();
        ms_fuzz_check_msg(read_frames(&im));
        ms_nifti_close(&im);
    }
    ms_fuzz_check_msg(st);
    free(p);
    return 0;
}
