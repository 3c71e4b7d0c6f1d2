/* tests/data/fuzz_store_open.c — libFuzzer target for opening a damaged store. Two small stores are written at
 * start-up with the store's writer (tests/data/store_fixture.h); the input says how to damage a copy of one:
 *   byte 0      which store;
 *   bytes 1..4  a length to cut the data file to (little-endian, modulo the file's length + 1; 0xffffffff: no cut);
 *   then        3-byte patches (16-bit position, byte to xor) inside the size fields of LMDB's record nodes (a
 *               size that reaches past the file's end) and the bytes of the records: slice and label records, the
 *               meta entries' and volumes' JSON, the sources;
 * and the damaged copy is opened as data.mdb of a private directory with ms_store_open (the truncation check
 * against the meta page, the meta records), its first volumes and slices read, its meta entries read back, and it
 * is verified as `mrisam verify` does. Any crash (a SIGBUS from a page beyond the file's end included), leak or
 * sanitizer report is a bug, and so is an error message of more than one line. Damage to LMDB's own B-tree pages
 * is left out: LMDB 0.9 has no page checksums and stops the process on some (its own assertions), see
 * docs/RELIABILITY.md. Built with CC=clang -DMS_FUZZ=ON (tests/data/tests.cmake); seeds in
 * tests/data/fuzz_corpus/fuzz_store_open. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "base/fileio.h"
#include "data/store.h"
#include "fuzz_file.h"
#include "store_fixture.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct region {
    size_t off, len;
} region;

typedef struct pristine {
    uint8_t *bytes; /* the data file */
    size_t n;
    region r[128]; /* the 4-byte size fields of the records' nodes, then the records' bytes */
    int nr;
    size_t total; /* bytes in all regions */
} pristine;

static pristine P[2];

/* the byte ranges of every value of the store's named databases and of their sizes in LMDB's nodes (an 8-byte
 * header before the key: data size low 16 bits, high 16 bits, flags, key size; liblmdb's MDB_node), as offsets
 * into the data file */
static void find_regions(const char *dir, pristine *p)
{
    region vals[64];
    int nv = 0;
    static const char *const dbs[] = {"meta", "volumes", "slices", "labels", "sources"};
    MDB_env *env;
    MDB_txn *txn;
    MDB_stat st;
    if (mdb_env_create(&env) || mdb_env_set_maxdbs(env, 8) || mdb_env_open(env, dir, MDB_RDONLY, 0644) ||
        mdb_env_stat(env, &st) || mdb_txn_begin(env, NULL, MDB_RDONLY, &txn))
        abort();
    const uint8_t *map = NULL; /* from a leaf page's header (its page number first): the store is intact */
    uintptr_t psize = st.ms_psize;
    for (int d = 0; d < 5; d++) {
        MDB_dbi dbi;
        MDB_cursor *cur;
        MDB_val k, v;
        if (mdb_dbi_open(txn, dbs[d], 0, &dbi) || mdb_cursor_open(txn, dbi, &cur)) abort();
        if (!map && !mdb_cursor_get(cur, &k, &v, MDB_FIRST)) {
            const uint8_t *page = (const uint8_t *)((uintptr_t)k.mv_data & ~(psize - 1));
            uint64_t pgno;
            memcpy(&pgno, page, 8);
            map = page - pgno * psize;
        }
        for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); !rc && nv < 64;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            p->r[p->nr++] = (region){(size_t)((uint8_t *)k.mv_data - 8 - map), 4};
            vals[nv++] = (region){(size_t)((uint8_t *)v.mv_data - map), v.mv_size};
        }
        mdb_cursor_close(cur);
    }
    mdb_txn_abort(txn);
    mdb_env_close(env);
    for (int i = 0; i < nv; i++) p->r[p->nr++] = vals[i];
    for (int i = 0; i < p->nr; i++) {
        if (p->r[i].off + p->r[i].len > p->n) abort();
        p->total += p->r[i].len;
    }
}

static void make_pristine(int i, const fx_vol *vols, int nv)
{
    char dir[128], file[160];
    snprintf(dir, sizeof dir, "%s/pristine%d", ms_fuzz_tmpdir(), i);
    snprintf(file, sizeof file, "%s/data.mdb", dir);
    if (fx_make_store(dir, 7 + (uint64_t)i, vols, nv)) abort();
    char *txt;
    size_t len;
    if (ms_read_file(file, 1 << 24, &txt, &len)) abort();
    P[i].bytes = (uint8_t *)txt;
    P[i].n = len;
    find_regions(dir, &P[i]);
}

static void on_bad(void *ctx, const char *db, uint64_t key, const char *reason)
{
    (void)db;
    (void)key;
    if (strchr(reason, '\n')) abort();
    ++*(int *)ctx;
}

/* returns the number of bad records verify found, + 1000 for each failed read */
static int read_store(ms_store *s)
{
    int fails = 0;
    uint32_t nv = ms_store_n_volumes(s);
    for (uint32_t v = 0; v < nv && v < 4; v++) {
        ms_volume_info vi;
        ms_status st = ms_store_volume(s, v, &vi);
        fails += st ? 1000 : 0;
        ms_fuzz_check_msg(st);
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
            ms_status rs = ms_store_read(r, k, &sl);
            fails += rs ? 1000 : 0;
            ms_fuzz_check_msg(rs);
        }
        ms_store_reader_free(r);
    }
    uint64_t checked = 0, bad = 0;
    int n_bad = 0;
    ms_fuzz_check_msg(ms_store_verify(s, on_bad, &n_bad, &checked, &bad));
    ms_store_sizes sz;
    ms_fuzz_check_msg(ms_store_sizes_get(s, &sz));
    return fails + n_bad;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!P[0].bytes) {
        const fx_vol a[1] = {{6, 5, 3, 1}}, b[2] = {{8, 8, 2, 0}, {4, 7, 3, 1}};
        make_pristine(0, a, 1);
        make_pristine(1, b, 2);
    }
    if (size < 5) return 0;
    const pristine *p = &P[data[0] & 1];
    uint32_t cut;
    memcpy(&cut, data + 1, 4);
    size_t n = cut == 0xffffffffu ? p->n : cut % (p->n + 1);
    uint8_t *f = malloc(p->n);
    memcpy(f, p->bytes, p->n);
    for (size_t i = 5; i + 3 <= size && p->total; i += 3) {
        size_t pos = ((size_t)data[i] | (size_t)data[i + 1] << 8) % p->total;
        int j = 0;
        while (pos >= p->r[j].len) pos -= p->r[j++].len;
        f[p->r[j].off + pos] ^= data[i + 2];
    }
    char dir[128];
    snprintf(dir, sizeof dir, "%s/store", ms_fuzz_tmpdir());
    mkdir(dir, 0700);
    char name[160];
    snprintf(name, sizeof name, "%s/data.mdb", dir);
    FILE *o = fopen(name, "wb");
    if (!o || (n && fwrite(f, 1, n, o) != n) || fclose(o)) abort();
    free(f);
    ms_store *s;
    ms_status st = ms_store_open(dir, 1, &s);
    ms_fuzz_check_msg(st);
    int intact = n == p->n && size < 8; /* no cut, no patch: must read back whole */
    if (intact && st) abort();
    if (!st) {
        if (read_store(s) && intact) abort();
        ms_store_close(s);
    }
    return 0;
}
