/* tests/data/test_store_truncated.c — a data.mdb cut short (a half-copied store) is refused by name, never read.
 *
 * A small store is written through the writer API (store_fixture.h); copies of its data.mdb cut at drawn lengths
 * (0, inside the first page, inside the meta pages, mid-data, page-aligned, one byte short) must make
 * ms_store_open (directory and single-file form) and ms_store_writer_open fail with MS_ECORRUPT and the one line
 * "<store>/data.mdb: truncated: N bytes, the store's pages need M (a partial copy?)", and the writer must leave
 * the cut file as it was. Before the fix such opens died with SIGBUS inside mdb_dbi_open, so every open runs in a
 * forked child and a child killed by a signal counts as a failure. The whole copy opens and reads.
 *
 * A writer killed while creating a store leaves only DIR/data.mdb.new (a store appears whole, under its own name,
 * or not at all): the next writer replaces it with a new store and leaves no data.mdb.new behind.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "data/store.h"
#include "data/store_write.h"
#include "harness.h"
#include "store_fixture.h"

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)len + 1);
    *n = b && fread(b, 1, (size_t)len, f) == (size_t)len ? (size_t)len : 0;
    fclose(f);
    return b;
}

static int spill(const char *path, const uint8_t *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(b, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static long file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (long)sb.st_size : -1;
}

enum { OPEN_READ, OPEN_READ_FILE, OPEN_WRITE };
static const char *const open_name[] = {"ms_store_open", "ms_store_open (file)", "ms_store_writer_open"};

/* In the child: opens `store` the way `how` says; exit 0 when refused with the expected message, 1 otherwise. */
static int child_open(int how, const char *store, const char *data, size_t len, size_t need)
{
    ms_status st;
    if (how == OPEN_WRITE) {
        ms_store_writer *w = NULL;
        st = ms_store_writer_open(store, "{\"test\":1}", "{\"tool\":\"test\"}", &w);
        ms_store_writer_close(w);
    } else {
        ms_store *s = NULL;
        st = ms_store_open(how == OPEN_READ_FILE ? data : store, 2, &s);
        ms_store_close(s);
    }
    char want[600];
    snprintf(want, sizeof want, "%s: truncated: %zu bytes, the store's pages need %zu (a partial copy?)", data, len,
             need);
    if (st != MS_ECORRUPT || strcmp(ms_errmsg(), want) != 0) {
        printf("  %s, %zu bytes: status %d, message \"%s\", wanted \"%s\"\n", open_name[how], len, st, ms_errmsg(),
               want);
        return 1;
    }
    if (how == OPEN_WRITE && file_size(data) != (long)len) {
        printf("  %s, %zu bytes: the writer changed the file to %ld bytes\n", open_name[how], len, file_size(data));
        return 1;
    }
    return 0;
}

/* Writes the first `len` bytes of the store into a fresh directory and checks each kind of open in a child. */
static void check_cut(const char *dir, int i, const uint8_t *full, size_t len, size_t need)
{
    for (int how = OPEN_READ; how <= OPEN_WRITE; how++) {
        char store[400], data[420];
        snprintf(store, sizeof store, "%s/cut%d_%zu_%d", dir, i, len, how);
        if (how == OPEN_READ_FILE)
            snprintf(data, sizeof data, "%s.mdb", store);
        else
            snprintf(data, sizeof data, "%s/data.mdb", store);
        MS_CHECK(how == OPEN_READ_FILE || mkdir(store, 0750) == 0, "mkdir %s: %s", store, strerror(errno));
        MS_CHECK(spill(data, full, len) == 0, "write %s", data);
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) _exit(child_open(how, store, data, len, need));
        int ws = 0;
        MS_CHECK(pid > 0 && waitpid(pid, &ws, 0) == pid, "fork/wait");
        if (WIFSIGNALED(ws))
            MS_CHECK(0, "%s on data.mdb cut to %zu of %zu bytes: killed by signal %d (%s)", open_name[how], len,
                     need, WTERMSIG(ws), strsignal(WTERMSIG(ws)));
        else
            MS_CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "%s on data.mdb cut to %zu of %zu bytes: not refused as "
                     "truncated", open_name[how], len, need);
    }
}

/* The length every cut is measured against, from the intact store: (last page + 1) · page size, which the writer
 * keeps the file at (and the fixture's stores end exactly there). */
static size_t store_need(const char *store, size_t *psize)
{
    MDB_env *env = NULL;
    MDB_envinfo ei = {0};
    MDB_stat ms = {0};
    int rc = mdb_env_create(&env);
    if (!rc) rc = mdb_env_open(env, store, MDB_RDONLY, 0644);
    if (!rc) rc = mdb_env_info(env, &ei);
    if (!rc) rc = mdb_env_stat(env, &ms);
    MS_CHECK(rc == 0, "open intact store: %s", mdb_strerror(rc));
    mdb_env_close(env);
    *psize = ms.ms_psize;
    return ((size_t)ei.me_last_pgno + 1) * ms.ms_psize;
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_rng rng, *r = &rng;
    ms_rng_init(r, seed, 0);
    char dir[] = "/tmp/ms_test_trunc_XXXXXX";
    if (!mkdtemp(dir)) return 1;
    char store[300], data[320];
    snprintf(store, sizeof store, "%s/s", dir);
    snprintf(data, sizeof data, "%s/data.mdb", store);
    fx_vol vols[4];
    int nv = 2 + (int)ms_rng_below(r, 3);
    for (int v = 0; v < nv; v++)
        vols[v] = (fx_vol){24 + (int)ms_rng_below(r, 40), 24 + (int)ms_rng_below(r, 40), 3 + (int)ms_rng_below(r, 6),
                           (int)ms_rng_below(r, 2)};
    MS_CHECK_OK(fx_make_store(store, seed, vols, nv));
    size_t n = 0, psize = 0;
    uint8_t *full = slurp(data, &n);
    size_t need = store_need(store, &psize);
    MS_CHECK(full && n == need && psize >= 512, "the store's data.mdb (%zu bytes) ends at its last page (%zu)", n,
             need);
    if (!full || n != need || psize < 512) return ms_test_done();
    printf("data.mdb: %zu bytes, %zu pages of %zu\n", n, n / psize, psize);

    /* the fixed cases, then drawn lengths: inside the meta pages, page-aligned, anywhere */
    size_t cuts[32] = {0, 1 + ms_rng_below(r, psize - 1), psize, psize + ms_rng_below(r, psize), 2 * psize,
                       n - psize, n - 1};
    int nc = 7;
    while (nc < 16) cuts[nc++] = psize * (2 + ms_rng_below(r, n / psize - 2));
    while (nc < 32) cuts[nc++] = ms_rng_below(r, n);
    for (int i = 0; i < nc; i++) check_cut(dir, i, full, cuts[i], cuts[i] < 2 * psize ? 2 * psize : need);

    /* what a writer killed while creating a store leaves: a cut of a store's first pages as data.mdb.new */
    char fresh[300], left[330];
    snprintf(fresh, sizeof fresh, "%s/fresh", dir);
    snprintf(left, sizeof left, "%s/data.mdb.new", fresh);
    MS_CHECK(mkdir(fresh, 0750) == 0, "mkdir");
    size_t cut = ms_rng_below(r, 2 * psize);
    MS_CHECK(spill(left, full, cut) == 0, "write %s", left);
    printf("a killed creation: data.mdb.new of %zu bytes\n", cut);
    ms_store_writer *fw = NULL;
    MS_CHECK_OK(ms_store_writer_open(fresh, "{\"test\":1}", "{\"tool\":\"test\"}", &fw));
    MS_CHECK_OK(ms_store_writer_close(fw));
    MS_CHECK(file_size(left) < 0, "%s left behind", left);
    snprintf(data, sizeof data, "%s/data.mdb", fresh);
    MS_CHECK(file_size(data) >= (long)(2 * psize), "%s: %ld bytes", data, file_size(data));
    ms_store *fs = NULL;
    MS_CHECK_OK(ms_store_open(fresh, 2, &fs));
    ms_store_close(fs);

    /* the whole file opens and reads, through a fresh copy as well */
    char whole[300];
    snprintf(whole, sizeof whole, "%s/whole", dir);
    MS_CHECK(mkdir(whole, 0750) == 0, "mkdir");
    snprintf(data, sizeof data, "%s/data.mdb", whole);
    MS_CHECK(spill(data, full, n) == 0, "write copy");
    ms_store *s = NULL;
    MS_CHECK_OK(ms_store_open(whole, 2, &s));
    uint64_t checked = 0, bad = 0;
    if (s) MS_CHECK_OK(ms_store_verify(s, NULL, NULL, &checked, &bad));
    uint64_t slices = (uint64_t)nv; /* verify counts volume records too */
    for (int v = 0; v < nv; v++) slices += (uint64_t)vols[v].n * (vols[v].labeled ? 2 : 1);
    MS_CHECK(checked == slices && bad == 0, "whole copy: %llu records checked (%llu expected), %llu bad",
             (unsigned long long)checked, (unsigned long long)slices, (unsigned long long)bad);
    ms_store_close(s);
    ms_store_writer *w = NULL;
    MS_CHECK_OK(ms_store_writer_open(whole, "{\"test\":1}", "{\"tool\":\"test\"}", &w));
    MS_CHECK_OK(ms_store_writer_close(w));

    free(full);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) printf("could not remove %s\n", dir);
    return ms_test_done();
}
