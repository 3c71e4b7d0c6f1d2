/* tests/data/fuzz_split.c — libFuzzer target for the split file reader (ms_split_load: RUN/shots.json and
 * --split FILE). The first byte picks the arguments (bit 0: store index 0 or 1; bit 1: a store path to match;
 * bit 2: a record count to check ranges against); the rest is the file. A split that loads must hold ranges
 * inside the record count, none overlapping. Any crash, leak or sanitizer report is a bug, and so is an error
 * message of more than one line. Built with CC=clang -DMS_FUZZ=ON (tests/data/tests.cmake); seeds in
 * tests/data/fuzz_corpus/fuzz_split. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data/sampler.h"
#include "fuzz_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* every key of the selection, checked against n_keys (0: unchecked) and marked in seen[] (overlaps abort) */
static void check_sel(const ms_selection *s, uint64_t n_keys, uint8_t *seen)
{
    for (int i = 0; i < s->n_ranges; i++) {
        uint64_t a = s->ranges[i].first, n = s->ranges[i].count;
        if (n_keys && (a >= n_keys || n > n_keys - a)) abort();
        for (uint64_t k = a; n_keys && k < a + n; k++) {
            if (seen[k]) abort();
            seen[k] = 1;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int mode = data[0];
    const char *path = ms_fuzz_memfd(data + 1, size - 1);
    uint64_t n_keys = mode & 4 ? 4096 : 0;
    ms_selection tr = {0}, va = {0};
    ms_status st = ms_split_load(path, mode & 1, mode & 2 ? "/data/store" : NULL, n_keys, &tr, &va);
    if (!st) {
        static uint8_t seen[4096];
        memset(seen, 0, sizeof seen);
        check_sel(&tr, n_keys, seen);
        check_sel(&va, n_keys, seen);
        ms_selection_free(&tr);
        ms_selection_free(&va);
    }
    ms_fuzz_check_msg(st);
    return 0;
}
