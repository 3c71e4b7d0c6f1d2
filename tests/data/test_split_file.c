/* tests/data/test_split_file.c — the split file reader (ms_split_load, docs/CLI.md §Split files) on files written
 * here by hand, not by ms_split_save.
 *
 * Valid files: random disjoint train / val ranges over a random store size, written in random order and cut into
 * random pieces, with each accepted form of the store path; the selections read back must hold exactly the keys
 * drawn (checked against a per-key membership array). Broken files: random members of each refused class — val
 * overlapping train, ranges overlapping within train, another version, fractional / negative / non-numeric range
 * members, negative or fractional shots, another store, a range past the store's last key — must be refused with a
 * one-line message that names the file and the reason (the first shared key, the element, the value).
 * Store IDs: a file saved by ms_split_save against a real store names it by its ID; it is accepted for that store
 * and a copy of it elsewhere, refused for another store, also one put at the first one's path.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/fileio.h"
#include "data/sampler.h"
#include "data/store.h"
#include "data/store_write.h"
#include "harness.h"

enum { NONE = 0, TRAIN = 1, VAL = 2 };

typedef struct {
    uint64_t n_keys;
    unsigned char *side; /* per key: NONE, TRAIN or VAL */
    int n_pieces;
    uint64_t first[512], count[512];
    unsigned char piece_side[512];
} draw;

/* Random runs of keys, each given to train, val or neither, cut into pieces (adjacent pieces are allowed); drawn
 * again until both sides have keys. */
static void draw_split(ms_rng *g, draw *d)
{
again:
    d->n_keys = 20 + ms_rng_below(g, 3000);
    d->side = calloc(d->n_keys, 1);
    d->n_pieces = 0;
    for (uint64_t k = 0; k < d->n_keys && d->n_pieces < 512;) {
        uint64_t len = 1 + ms_rng_below(g, 60);
        if (k + len > d->n_keys) len = d->n_keys - k;
        int s = (int)ms_rng_below(g, 3);
        if (s != NONE) {
            d->first[d->n_pieces] = k;
            d->count[d->n_pieces] = len;
            d->piece_side[d->n_pieces++] = (unsigned char)s;
            for (uint64_t i = 0; i < len; i++) d->side[k + i] = (unsigned char)s;
        }
        k += len;
    }
    int has[3] = {0, 0, 0};
    for (int i = 0; i < d->n_pieces; i++) has[d->piece_side[i]] = 1;
    if (!has[TRAIN] || !has[VAL]) {
        free(d->side);
        goto again;
    }
    for (int i = d->n_pieces - 1; i > 0; i--) { /* a random order in the file */
        int j = (int)ms_rng_below(g, (uint64_t)i + 1);
        uint64_t f = d->first[i], c = d->count[i];
        unsigned char s = d->piece_side[i];
        d->first[i] = d->first[j], d->count[i] = d->count[j], d->piece_side[i] = d->piece_side[j];
        d->first[j] = f, d->count[j] = c, d->piece_side[j] = s;
    }
}

/* Writes the file: header fields as given (NULL leaves one out), the ranges of side s, then `extra_train` /
 * `extra_val` appended as raw JSON elements. */
static void write_split(const char *file, const char *version, const char *shots, const char *store, const draw *d,
                        const char *extra_train, const char *extra_val)
{
    FILE *f = fopen(file, "w");
    if (!f) { perror(file); exit(1); }
    fprintf(f, "{");
    if (version) fprintf(f, "\"version\": %s, ", version);
    fprintf(f, "\"seed\": \"7\", \"val_fraction\": 0.2, ");
    if (shots) fprintf(f, "\"shots\": %s, ", shots);
    fprintf(f, "\"shot_unit\": \"slice\",\n \"stores\": [{\"path\": \"%s\", \"single_volume\": 0,", store);
    for (int s = TRAIN; s <= VAL; s++) {
        fprintf(f, "\n  \"%s\": [", s == TRAIN ? "train" : "val");
        int n = 0;
        for (int i = 0; i < d->n_pieces; i++)
            if (d->piece_side[i] == s)
                fprintf(f, "%s[%llu, %llu]", n++ ? ", " : "", (unsigned long long)d->first[i],
                        (unsigned long long)d->count[i]);
        const char *x = s == TRAIN ? extra_train : extra_val;
        if (x) fprintf(f, "%s%s", n ? ", " : "", x);
        fprintf(f, "]%s", s == TRAIN ? "," : "");
    }
    fprintf(f, "}]}\n");
    fclose(f);
}

/* The selection holds exactly the keys of side s. */
static int same_keys(const ms_selection *sel, const draw *d, int s)
{
    uint64_t i = 0;
    for (uint64_t k = 0; k < d->n_keys; k++) {
        if (d->side[k] != s) continue;
        if (i >= sel->n || ms_selection_key(sel, i) != k) return 0;
        i++;
    }
    return i == sel->n;
}

/* Loading must fail with one line that starts with the file's name and contains `want`. */
static void expect_refused(const char *file, const char *store, uint64_t n_keys, const char *cls, const char *want)
{
    ms_selection tr = {0}, va = {0};
    ms_status st = ms_split_load(file, 0, store, n_keys, &tr, &va);
    const char *m = ms_errmsg();
    size_t fl = strlen(file);
    MS_CHECK(st != MS_OK && !strncmp(m, file, fl) && !strncmp(m + fl, ": ", 2) && strstr(m, want) &&
                 !strchr(m, '\n'),
             "%s: expected refusal with \"%s\", got status %d: %s", cls, want, st, st ? m : "(accepted)");
    ms_selection_free(&tr);
    ms_selection_free(&va);
}

/* The smallest key both in train and val, after extra [f, c] is added to val. */
static uint64_t first_shared(const draw *d, uint64_t f, uint64_t c)
{
    for (uint64_t k = f; k < f + c; k++)
        if (d->side[k] == TRAIN) return k;
    return UINT64_MAX;
}

static void store_ids(ms_rng *g, const char *dir)
{
    char a[600], b[600], copy[600], old[600], file[700], cmd[2600], ida[33] = "", idb[33] = "";
    snprintf(a, sizeof a, "%s/idA", dir);
    snprintf(b, sizeof b, "%s/idB", dir);
    snprintf(copy, sizeof copy, "%s/idcopy", dir);
    snprintf(old, sizeof old, "%s/idA.old", dir);
    snprintf(file, sizeof file, "%s/ids.json", dir);
    ms_store_writer *w = NULL;
    MS_CHECK_OK(ms_store_writer_open(a, "{}", "{}", &w));
    ms_store_writer_close(w);
    MS_CHECK_OK(ms_store_writer_open(b, "{}", "{}", &w));
    ms_store_writer_close(w);
    MS_CHECK_OK(ms_store_id_at(a, ida));
    MS_CHECK_OK(ms_store_id_at(b, idb));
    MS_CHECK(strlen(ida) == 32 && strlen(idb) == 32 && strcmp(ida, idb), "store IDs %s and %s", ida, idb);
    draw d;
    draw_split(g, &d);
    ms_selection tr = {0}, va = {0};
    for (int i = 0; i < d.n_pieces; i++)
        if (d.piece_side[i]) MS_CHECK_OK(ms_selection_add(d.piece_side[i] == TRAIN ? &tr : &va, d.first[i], d.count[i]));
    MS_CHECK_OK(ms_selection_finish(&tr));
    MS_CHECK_OK(ms_selection_finish(&va));
    ms_split_spec sp;
    ms_split_spec_default(&sp);
    const char *paths[1] = {a};
    MS_CHECK_OK(ms_split_save(file, &sp, 1, paths, &tr, &va, NULL));
    char *text = NULL;
    size_t len = 0;
    MS_CHECK_OK(ms_read_file(file, 1 << 20, &text, &len));
    MS_CHECK(text && strstr(text, ida), "the split file records store A's ID %s", ida);
    free(text);
    ms_selection t2 = {0}, v2 = {0};
    MS_CHECK_OK(ms_split_load(file, 0, a, d.n_keys, &t2, &v2));
    MS_CHECK(same_keys(&t2, &d, TRAIN) && same_keys(&v2, &d, VAL), "store A: selections differ");
    ms_selection_free(&t2);
    ms_selection_free(&v2);
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s'", a, copy);
    MS_CHECK(system(cmd) == 0, "%s", cmd);
    MS_CHECK_OK(ms_split_load(file, 0, copy, d.n_keys, NULL, &v2)); /* a staged copy is the same store */
    ms_selection_free(&v2);
    expect_refused(file, b, d.n_keys, "another store", "was made for store ID");
    MS_CHECK(rename(a, old) == 0 && rename(b, a) == 0, "rename");
    expect_refused(file, a, d.n_keys, "another store at the same path", "was made for store ID");
    ms_selection_free(&tr);
    ms_selection_free(&va);
    free(d.side);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s' '%s' '%s'", a, old, copy, file);
    MS_CHECK(system(cmd) == 0, "%s", cmd);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_rng g;
    ms_rng_init(&g, seed, 0x5b1f);
    char dir[] = "/tmp/ms_split_XXXXXX", file[600], store[600], other[600], msg[2000];
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    snprintf(file, sizeof file, "%s/split.json", dir);
    snprintf(store, sizeof store, "%s/storeA", dir);
    snprintf(other, sizeof other, "%s/storeB", dir);
    mkdir(store, 0755);
    mkdir(other, 0755);

    /* valid files, with each accepted form of the store path */
    for (int it = 0; it < 60; it++) {
        draw d;
        draw_split(&g, &d);
        char rec[700];
        switch (it % 5) {
        case 0: snprintf(rec, sizeof rec, "%s", store); break;            /* as given */
        case 1: snprintf(rec, sizeof rec, "%s//storeA/", dir); break;     /* the same directory */
        case 2: snprintf(rec, sizeof rec, "elsewhere/storeA"); break;     /* moved: same last component */
        case 3: snprintf(rec, sizeof rec, "storeA"); break;               /* by hand, relative to another folder */
        default: rec[0] = 0; break;                                       /* no store named */
        }
        char shots[32];
        snprintf(shots, sizeof shots, "%llu", (unsigned long long)ms_rng_below(&g, 50));
        write_split(file, "1", it % 7 ? shots : NULL, rec, &d, NULL, NULL);
        ms_selection tr = {0}, va = {0}, va2 = {0};
        uint64_t nk = it % 3 ? d.n_keys : 0; /* 0: the reader does not know the store's size */
        MS_CHECK_OK(ms_split_load(file, 0, it % 4 ? store : NULL, nk, &tr, &va));
        MS_CHECK(same_keys(&tr, &d, TRAIN) && same_keys(&va, &d, VAL), "valid %d (path %s): selections differ", it,
                 rec);
        MS_CHECK_OK(ms_split_load(file, 0, store, d.n_keys, NULL, &va2)); /* as eval reads it */
        MS_CHECK(same_keys(&va2, &d, VAL), "valid %d: val alone differs", it);
        ms_selection_free(&tr);
        ms_selection_free(&va);
        ms_selection_free(&va2);
        free(d.side);
    }

    /* broken files: each class drawn several times */
    for (int it = 0; it < 40; it++) {
        draw d;
        draw_split(&g, &d);
        char x[200];
        uint64_t f = ms_rng_below(&g, d.n_keys), c = 1 + ms_rng_below(&g, d.n_keys - f);
        /* val overlapping train: a val range over a random stretch that holds a training key */
        while (first_shared(&d, f, c) == UINT64_MAX) {
            f = ms_rng_below(&g, d.n_keys);
            c = 1 + ms_rng_below(&g, d.n_keys - f);
        }
        /* the extra range may also meet other val ranges: make it val's only range */
        draw dv = d;
        dv.n_pieces = 0;
        for (int i = 0; i < d.n_pieces; i++)
            if (d.piece_side[i] == TRAIN) {
                dv.first[dv.n_pieces] = d.first[i], dv.count[dv.n_pieces] = d.count[i];
                dv.piece_side[dv.n_pieces++] = TRAIN;
            }
        snprintf(x, sizeof x, "[%llu, %llu]", (unsigned long long)f, (unsigned long long)c);
        write_split(file, "1", "4", store, &dv, NULL, x);
        snprintf(msg, sizeof msg, "stores[0].val overlaps stores[0].train at key %llu",
                 (unsigned long long)first_shared(&d, f, c));
        expect_refused(file, store, d.n_keys, "val overlaps train", msg);

        /* ranges overlapping within train */
        uint64_t k = ms_rng_below(&g, d.n_keys);
        while (d.side[k] != TRAIN) k = (k + 1) % d.n_keys;
        snprintf(x, sizeof x, "[%llu, 1]", (unsigned long long)k);
        write_split(file, "1", "4", store, &d, x, NULL);
        snprintf(msg, sizeof msg, "stores[0].train: selection: key ranges overlap at key %llu", (unsigned long long)k);
        expect_refused(file, store, d.n_keys, "train overlaps itself", msg);

        /* another version */
        static const char *versions[] = {"2", "0", "-1", "1.5", "7", "\"1\"", "null", "true"};
        const char *v = versions[ms_rng_below(&g, 8)];
        write_split(file, v, "4", store, &d, NULL, NULL);
        char vtxt[16];
        snprintf(vtxt, sizeof vtxt, "%s", v);
        snprintf(msg, sizeof msg, "version %s: this mrisam reads version 1", vtxt);
        expect_refused(file, store, d.n_keys, "version", msg);
        write_split(file, NULL, "4", store, &d, NULL, NULL);
        expect_refused(file, store, d.n_keys, "no version", "no \"version\": this mrisam reads version 1");

        /* a range member that is not a non-negative integer; the bad element goes into train or val */
        uint64_t a = ms_rng_below(&g, 1000), b = ms_rng_below(&g, 1000);
        char el[64], printed[64];
        switch (ms_rng_below(&g, 5)) {
        case 0: snprintf(el, sizeof el, "[%llu.5, %llu]", (unsigned long long)a, (unsigned long long)b);
                snprintf(printed, sizeof printed, "[%llu.5,%llu]", (unsigned long long)a, (unsigned long long)b); break;
        case 1: snprintf(el, sizeof el, "[%llu, %llu.25]", (unsigned long long)a, (unsigned long long)b);
                snprintf(printed, sizeof printed, "[%llu,%llu.25]", (unsigned long long)a, (unsigned long long)b); break;
        case 2: snprintf(el, sizeof el, "[-%llu, %llu]", (unsigned long long)a + 1, (unsigned long long)b);
                snprintf(printed, sizeof printed, "[-%llu,%llu]", (unsigned long long)a + 1, (unsigned long long)b); break;
        case 3: snprintf(el, sizeof el, "[%llu, \"%llu\"]", (unsigned long long)a, (unsigned long long)b);
                snprintf(printed, sizeof printed, "[%llu,\"%llu\"]", (unsigned long long)a, (unsigned long long)b); break;
        default: snprintf(el, sizeof el, "[%llu, %llu, 1]", (unsigned long long)a, (unsigned long long)b);
                 snprintf(printed, sizeof printed, "[%llu,%llu,1]", (unsigned long long)a, (unsigned long long)b); break;
        }
        int in_val = (int)ms_rng_below(&g, 2), n_side = 0;
        for (int i = 0; i < d.n_pieces; i++) n_side += d.piece_side[i] == (in_val ? VAL : TRAIN);
        write_split(file, "1", "4", store, &d, in_val ? NULL : el, in_val ? el : NULL);
        snprintf(msg, sizeof msg, "stores[0].%s[%d]: %s is not a [first key, count] pair of non-negative integers",
                 in_val ? "val" : "train", n_side, printed);
        expect_refused(file, store, d.n_keys, "range member", msg);

        /* shots: negative, or not a whole number */
        char sh[32];
        uint64_t m = 1 + ms_rng_below(&g, 1000);
        snprintf(sh, sizeof sh, "-%llu", (unsigned long long)m);
        write_split(file, "1", sh, store, &d, NULL, NULL);
        snprintf(msg, sizeof msg, "shots %s is negative", sh);
        expect_refused(file, store, d.n_keys, "negative shots", msg);
        snprintf(sh, sizeof sh, "%llu.5", (unsigned long long)m);
        write_split(file, "1", sh, store, &d, NULL, NULL);
        snprintf(msg, sizeof msg, "shots %s is not a whole number", sh);
        expect_refused(file, store, d.n_keys, "fractional shots", msg);

        /* another store: an existing other directory, or a name that is not the store's */
        const char *rec = it % 2 ? other : "elsewhere/storeC";
        write_split(file, "1", "4", rec, &d, NULL, NULL);
        snprintf(msg, sizeof msg, "stores[0] names store %s but the run's store is %s", rec, store);
        expect_refused(file, store, d.n_keys, "another store", msg);

        /* a range past the store's last key: the file is valid for a larger store */
        uint64_t smaller = 1 + ms_rng_below(&g, d.n_keys - 1); /* 0 would mean "size not known" */
        uint64_t last = 0;
        for (uint64_t q = 0; q < d.n_keys; q++) if (d.side[q] != NONE) last = q;
        if (last >= smaller) {
            /* the first range in file order that reaches past `smaller` is named */
            int named = -1, named_idx = 0;
            for (int s = TRAIN; s <= VAL && named < 0; s++) {
                int n = 0;
                for (int i = 0; i < d.n_pieces; i++) {
                    if (d.piece_side[i] != s) continue;
                    if (d.first[i] + d.count[i] > smaller) { named = i; named_idx = n; break; }
                    n++;
                }
            }
            write_split(file, "1", "4", store, &d, NULL, NULL);
            snprintf(msg, sizeof msg, "stores[0].%s[%d]: [%llu, %llu] reaches key %llu but the store has %llu records",
                     d.piece_side[named] == TRAIN ? "train" : "val", named_idx, (unsigned long long)d.first[named],
                     (unsigned long long)d.count[named], (unsigned long long)(d.first[named] + d.count[named] - 1),
                     (unsigned long long)smaller);
            expect_refused(file, store, smaller, "past the store", msg);
        }
        free(d.side);
    }
    store_ids(&g, dir);
    unlink(file);
    rmdir(store);
    rmdir(other);
    rmdir(dir);
    return ms_test_done();
}
