/* tests/finetune/store_norm_driver.c — reads every slice of a store through data/store_norm.h for
 * test_store_norm.sh: opened as it is ("own") or with another normalisation (ms_store_norm_apply, the path
 * pretrain's and finetune's --intensity take), and writes the normalised pixels of keys 0.. in order, uint16
 * little-endian, to OUT. The script compares them with a reference computed from the source NIfTI in Python.
 * Usage: store_norm_driver STORE own|percentile|zscore|none P_LO P_HI OUT
 * (exit 0 on success, 1 with the library's one-line message otherwise) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/store.h"
#include "data/store_norm.h"

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: store_norm_driver STORE own|percentile|zscore|none P_LO P_HI OUT\n");
        return 2;
    }
    ms_norm_choice c;
    ms_store *s = NULL;
    ms_store_reader *r = NULL;
    FILE *f = NULL;
    ms_status st = ms_norm_choice_parse(strcmp(argv[2], "own") ? argv[2] : NULL,
                                        strcmp(argv[2], "percentile") ? -1 : atof(argv[3]),
                                        strcmp(argv[2], "percentile") ? -1 : atof(argv[4]), &c);
    if (!st) st = ms_store_open(argv[1], 4, &s);
    if (!st) st = ms_store_norm_apply(s, argv[1], &c);
    if (!st) st = ms_store_reader_new(s, &r);
    if (!st && !(f = fopen(argv[5], "wb"))) st = ms_error(MS_EIO, "%s: cannot create", argv[5]);
    for (uint64_t k = 0; !st && k < ms_store_n_slices(s); k++) {
        ms_slice sl;
        st = ms_store_read(r, k, &sl);
        if (!st && fwrite(sl.pixels, 2, (size_t)sl.height * sl.width, f) != (size_t)sl.height * sl.width)
            st = ms_error(MS_EIO, "%s: short write", argv[5]);
    }
    if (f && fclose(f) && !st) st = ms_error(MS_EIO, "%s: close failed", argv[5]);
    if (r) ms_store_reader_free(r);
    if (s) ms_store_close(s);
    if (st) fprintf(stderr, "%s\n", ms_errmsg());
    return st ? 1 : 0;
}
