/* tests/data/fuzz_store_open.c — libFuzzer target for opening a damaged store: the input is written as data.mdb
 * into a private directory and opened with ms_store_open (the truncation check against the meta page, LMDB's
 * own checks, the meta records' JSON); an opened store then has its first volumes and slices read, its meta
 * entries read back, and is verified (every record decoded, as `mrisam verify` does). Any crash (a SIGBUS from a
 * page beyond the file's end included), leak or sanitizer report is a bug, and so is an error message of more than
 * one line. Built with CC=clang -DMS_FUZZ=ON (tests/data/tests.cmake); seeds (small stores) in
 * tests/data/fuzz_corpus/fuzz_store_open. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/store.h"
#include "fuzz_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void on_bad(void *ctx, const char *db, uint64_t key, const char *reason)
{
    (void)db;
    (void)key;
    if (strchr(reason, '\n')) abort();
    ++*(int *)ctx;
}

static void read_store(ms_store *s)
{
    uint32_t nv = ms_store_n_volumes(s);
    for (uint32_t v = 0; v < nv && v < 4; v++) {
        ms_volume_info vi;
        ms_fuzz_check_msg(ms_store_volume(s, v, &vi));
    }
    static const char *const names[] = {"format", "params", "counts", "created"};
    for (int i = 0; i < 4; i++) {
        char *js = NULL;
        ms_fuzz_check_msg(ms_store_meta_json(s, names[i], &js));
        free(js);
    }
    ms_store_reader *r;
    ms_status st = ms_store_reader_new(s, &r);
    ms_fuzz_check_msg(st);
    if (!st) {
        for (uint64_t k = 0; k < ms_store_n_slices(s) && k < 4; k++) {
            ms_slice sl;
            ms_fuzz_check_msg(ms_store_read(r, k, &sl));
        }
        ms_store_reader_free(r);
    }
    uint64_t checked = 0, bad = 0;
    int n_bad = 0;
    ms_fuzz_check_msg(ms_store_verify(s, on_bad, &n_bad, &checked, &bad));
    ms_store_sizes sz;
    ms_fuzz_check_msg(ms_store_sizes_get(s, &sz));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char dir[128];
    snprintf(dir, sizeof dir, "%s/store", ms_fuzz_tmpdir());
    mkdir(dir, 0700);
    ms_fuzz_named("store/data.mdb", data, size);
    ms_store *s;
    ms_status st = ms_store_open(dir, 1, &s);
    ms_fuzz_check_msg(st);
    if (!st) {
        read_store(s);
        ms_store_close(s);
    }
    return 0;
}
