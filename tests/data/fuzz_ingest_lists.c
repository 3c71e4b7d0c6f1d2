/* tests/data/fuzz_ingest_lists.c — libFuzzer target for ingest's text lists: the --labels CSV of image,label rows
 * and the --label-map file of value,class lines (data/ingest.c). The first byte picks the file (even: the CSV,
 * odd: the label map; bit 1 also gives a --label-names file of the same bytes); the rest is its text. They are
 * read through ms_ingest_run, whose store is then refused (its parent is not a directory), so nothing is written
 * and no volume is read. Any crash, leak or sanitizer report is a bug, and so is an error message of more than
 * one line. Built with CC=clang -DMS_FUZZ=ON (tests/data/tests.cmake); seeds in
 * tests/data/fuzz_corpus/fuzz_ingest_lists. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data/ingest.h"
#include "fuzz_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *src;
    /* one source, so that the list is never empty (an empty one makes ingest print a warning every time) */
    if (!src && !(src = strdup(ms_fuzz_named("a.nii", (const uint8_t *)"", 0)))) abort();
    if (size < 1) return 0;
    int mode = data[0];
    const char *path = ms_fuzz_memfd(data + 1, size - 1);
    ms_ingest_opts o;
    memset(&o, 0, sizeof o);
    const char *srcs[1] = {src};
    o.srcs = srcs;
    o.n_srcs = 1;
    o.out = "/dev/null/store";
    o.labels = mode & 1 ? NULL : path;
    o.label_map = mode & 1 ? path : NULL;
    o.label_names = mode & 2 ? path : NULL;
    o.axis = MS_AXIS_AUTO;
    o.frame = -1;
    o.zstd_level = 1;
    o.threads = 1;
    o.quiet = 1;
    ms_ingest_summary sum;
    ms_status st = ms_ingest_run(&o, &sum);
    if (st == MS_OK) abort(); /* the store cannot be made */
    ms_fuzz_check_msg(st);
    return 0;
}
