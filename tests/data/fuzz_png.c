/* tests/data/fuzz_png.c — libFuzzer target for the PNG reader (libpng through data/png.c): the first byte picks
 * the call (0: ms_png_read as stored, 1: ms_png_read to gray, 2: ms_png_read_image, the CLI's image path); the
 * rest is the file. A decoded image must have the size, channels and depth the reader promises. Any crash, leak
 * or sanitizer report is a bug, and so is an error message of more than one line. Built with CC=clang
 * -DMS_FUZZ=ON (tests/data/tests.cmake); seeds in tests/data/fuzz_corpus/fuzz_png. */
#include <stdint.h>
#include <stdlib.h>

#include "data/png.h"
#include "fuzz_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int mode = data[0] % 3;
    const char *path = ms_fuzz_memfd(data + 1, size - 1);
    ms_status st;
    if (mode < 2) {
        ms_png p = {0};
        st = ms_png_read(path, mode ? MS_PNG_GRAY : MS_PNG_AS_STORED, &p);
        if (!st) {
            if (p.w < 1 || p.h < 1 || p.w > 65536 || p.h > 65536 || (p.c != 1 && p.c != 3) ||
                (mode && p.c != 1) || (p.depth != 8 && p.depth != 16) || !p.px)
                abort();
            for (size_t i = 0, n = (size_t)p.w * p.h * p.c; i < n; i++)
                if (p.px[i] >> p.depth) abort();
            ms_png_free(&p);
        }
    } else {
        ms_image im = {0};
        st = ms_png_read_image(path, &im);
        if (!st) {
            if (im.w < 1 || im.h < 1 || (im.c != 1 && im.c != 3) || !im.data) abort();
            for (size_t i = 0, n = (size_t)im.w * im.h * im.c; i < n; i++)
                if (!(im.data[i] >= 0.f && im.data[i] <= 1.f)) abort();
            ms_image_free(&im);
        }
    }
    ms_fuzz_check_msg(st);
    return 0;
}
