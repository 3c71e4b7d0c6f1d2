/* tests/base/test_path.c — kernels/base/path.h against plain references: random strings (seed printed) for the suffix
 * tests and the join around MS_PATH_MAX (fits exactly when the result has MS_PATH_MAX − 1 bytes; one more is an
 * error naming the path, never a truncation), ms_path_fmt the same way against snprintf plus fixed formats, fixed
 * cases for the NIfTI ending and the base name, and a directory of random files for ms_path_list_nii (only
 * .nii/.nii.gz, no dot files, strcmp order). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/path.h"
#include "harness.h"

static void random_string(ms_rng *r, char *s, int n, const char *alphabet)
{
    const int k = (int)strlen(alphabet);
    for (int i = 0; i < n; i++) s[i] = alphabet[ms_rng_below(r, (uint64_t)k)];
    s[n] = 0;
}

/* The reference: compare from the end, byte by byte (folding ASCII case when asked). */
static int ref_ends_with(const char *s, const char *suf, int nocase)
{
    size_t a = strlen(s), b = strlen(suf);
    if (b > a) return 0;
    for (size_t i = 1; i <= b; i++) {
        char x = s[a - i], y = suf[b - i];
        if (nocase) {
            x = (char)(x >= 'A' && x <= 'Z' ? x + 32 : x);
            y = (char)(y >= 'A' && y <= 'Z' ? y + 32 : y);
        }
        if (x != y) return 0;
    }
    return 1;
}

static void check_suffixes(ms_rng *r)
{
    char s[16], suf[8];
    int hits = 0;
    for (int t = 0; t < 20000; t++) {
        random_string(r, s, (int)ms_rng_below(r, 8), "aAbB.");
        random_string(r, suf, (int)ms_rng_below(r, 4), "aAbB.");
        int want = ref_ends_with(s, suf, 0), want_nc = ref_ends_with(s, suf, 1);
        hits += want_nc;
        MS_CHECK(ms_str_ends_with(s, suf) == want, "ms_str_ends_with('%s', '%s') != %d", s, suf, want);
        MS_CHECK(ms_str_ends_with_nocase(s, suf) == want_nc, "ms_str_ends_with_nocase('%s', '%s') != %d", s, suf,
                 want_nc);
    }
    MS_CHECK(hits > 1000, "only %d matching suffixes drawn", hits);

    static const struct { const char *name, *suffix; } nii[] = {
        {"a.nii", ".nii"}, {"a.nii.gz", ".nii.gz"}, {"dir.x/b.c.nii", ".nii"}, {".nii", NULL}, {".nii.gz", NULL},
        {"a.NII", NULL},   {"a.gz", NULL},          {"a.nii.gz.bak", NULL},   {"", NULL},     {"x.nii.gz", ".nii.gz"}};
    for (size_t i = 0; i < sizeof nii / sizeof *nii; i++) {
        const char *got = ms_path_nii_suffix(nii[i].name);
        MS_CHECK(nii[i].suffix ? got && !strcmp(got, nii[i].suffix) && got + strlen(got) == nii[i].name +
                                                                                           strlen(nii[i].name)
                               : !got,
                 "ms_path_nii_suffix('%s') = '%s'", nii[i].name, got ? got : "(null)");
    }
    MS_CHECK(!strcmp(ms_path_base("a/b/c.nii"), "c.nii") && !strcmp(ms_path_base("c"), "c") &&
                 !strcmp(ms_path_base("a/"), ""),
             "ms_path_base");
}

static void check_join(ms_rng *r)
{
    char *dir = malloc(MS_PATH_MAX + 8), *name = malloc(MS_PATH_MAX + 8), out[MS_PATH_MAX];
    for (int t = 0; t < 400; t++) {
        /* lengths around the limit: dir + '/' + name + NUL against MS_PATH_MAX */
        int a = 1 + (int)ms_rng_below(r, MS_PATH_MAX - 2);
        int total = MS_PATH_MAX - 3 + (int)ms_rng_below(r, 6), b = total - a - 1;
        if (b < 1) b = 1;
        random_string(r, dir, a, "abc/");
        random_string(r, name, b, "xyz.");
        const int fits = a + 1 + b < MS_PATH_MAX;
        ms_status st = ms_path_join(out, dir, name);
        if (fits) {
            MS_CHECK(st == MS_OK && (int)strlen(out) == a + 1 + b && !strncmp(out, dir, (size_t)a) && out[a] == '/' &&
                         !strcmp(out + a + 1, name),
                     "join of %d + %d bytes: %d", a, b, st);
        } else {
            MS_CHECK(st == MS_EINVAL && out[0] == 0 && !strncmp(ms_errmsg(), dir, (size_t)(a < 200 ? a : 200)) &&
                         strstr(ms_errmsg(), "path too long"),
                     "join of %d + %d bytes should fail: %d", a, b, st);
        }
        char *p = ms_path_join_new(dir, name);
        MS_CHECK(p && (int)strlen(p) == a + 1 + b && p[a] == '/' && !strcmp(p + a + 1, name), "ms_path_join_new");
        free(p);
    }
    free(dir);
    free(name);
}

/* ms_path_fmt against snprintf into a big buffer: random "%s/%s_%03d.%s" around the limit (fits exactly at
 * MS_PATH_MAX − 1 bytes, one more is the error naming the path's start with out = ""), and fixed formatting cases. */
static void check_fmt(ms_rng *r)
{
    char *dir = malloc(MS_PATH_MAX + 8), *want = malloc(2 * MS_PATH_MAX), out[MS_PATH_MAX];
    for (int t = 0; t < 400; t++) {
        const int i = (int)ms_rng_below(r, 2000);
        const char *ext = t % 2 ? "ckpt" : "json";
        const int fixed = 1 + 4 + 1 + (i < 1000 ? 3 : 4) + 1 + 4; /* "/" "step" "_" %03d "." ext */
        int a = MS_PATH_MAX - 1 - fixed - 2 + (int)ms_rng_below(r, 5);
        if (t % 10 == 0) a = 1 + (int)ms_rng_below(r, 100); /* short ones too */
        random_string(r, dir, a, "abc/");
        const int n = snprintf(want, 2 * MS_PATH_MAX, "%s/step_%03d.%s", dir, i, ext);
        memset(out, 'Z', sizeof out);
        ms_status st = ms_path_fmt(out, "%s/step_%03d.%s", dir, i, ext);
        if (n < MS_PATH_MAX) {
            MS_CHECK(st == MS_OK && !strcmp(out, want), "fmt of %d bytes: %d", n, st);
        } else {
            MS_CHECK(st == MS_EINVAL && out[0] == 0 && !strncmp(ms_errmsg(), want, 200) &&
                         !strncmp(ms_errmsg() + 200, "...: path too long", 18),
                     "fmt of %d bytes should fail: %d '%.40s'", n, st, ms_errmsg());
        }
    }
    /* the edges exactly: MS_PATH_MAX − 1 bytes fit, MS_PATH_MAX do not */
    memset(dir, 'd', MS_PATH_MAX - 3);
    dir[MS_PATH_MAX - 3] = 0;
    MS_CHECK(ms_path_fmt(out, "%s/%c", dir, 'x') == MS_OK && strlen(out) == MS_PATH_MAX - 1 &&
                 out[MS_PATH_MAX - 3] == '/' && out[MS_PATH_MAX - 2] == 'x',
             "a path of MS_PATH_MAX - 1 bytes should fit");
    MS_CHECK(ms_path_fmt(out, "%s/%d", dir, 10) == MS_EINVAL && out[0] == 0 && strstr(ms_errmsg(), "path too long") &&
                 strstr(ms_errmsg(), "4096 bytes"),
             "a path of MS_PATH_MAX bytes should fail: '%.60s'", ms_errmsg());
    MS_CHECK(ms_path_fmt(out, "%s/%s", "", "") == MS_OK && !strcmp(out, "/"), "fmt of empty parts");
    MS_CHECK(ms_path_fmt(out, "run/%s/log_%05lld.%s", "ckpt", 42LL, "jsonl") == MS_OK &&
                 !strcmp(out, "run/ckpt/log_00042.jsonl"),
             "formatting: '%s'", out);
    MS_CHECK(ms_path_fmt(out, "%s", "plain") == MS_OK && !strcmp(out, "plain"), "fmt of a plain string");
    free(dir);
    free(want);
}

static void check_list(ms_rng *r)
{
    char dir[] = "/tmp/ms_test_path_XXXXXX";
    if (!mkdtemp(dir)) {
        MS_CHECK(0, "mkdtemp: %s", strerror(errno));
        return;
    }
    static const char *ends[] = {".nii", ".nii.gz", ".NII", ".gz", ".nii.bak", ""};
    char *want[64];
    int n_want = 0;
    char created[64][64];
    int n_created = 0;
    for (int i = 0; i < 40; i++) {
        char stem[16], path[MS_PATH_MAX];
        random_string(r, stem, 1 + (int)ms_rng_below(r, 6), "abAB_");
        if (i % 7 == 0) stem[0] = '.'; /* a dot file */
        const char *e = ends[ms_rng_below(r, 6)];
        snprintf(created[n_created], sizeof created[0], "%s%s", stem, e);
        if (ms_path_join(path, dir, created[n_created]) || access(path, F_OK) == 0) continue; /* drawn twice */
        FILE *f = fopen(path, "w");
        if (f) fclose(f);
        if (stem[0] != '.' && (!strcmp(e, ".nii") || !strcmp(e, ".nii.gz"))) want[n_want++] = created[n_created];
        n_created++;
    }
    qsort(want, (size_t)n_want, sizeof *want, ms_cmp_str);
    for (int i = 1; i < n_want; i++) MS_CHECK(strcmp(want[i - 1], want[i]) < 0, "ms_cmp_str order");
    char **got = NULL;
    int n = -1;
    MS_CHECK_OK(ms_path_list_nii(dir, &got, &n));
    MS_CHECK(n == n_want, "ms_path_list_nii: %d names, want %d", n, n_want);
    for (int i = 0; i < n && i < n_want; i++) MS_CHECK(!strcmp(got[i], want[i]), "[%d] %s != %s", i, got[i], want[i]);
    for (int i = 0; i < n; i++) free(got[i]);
    free(got);
    for (int i = 0; i < n_created; i++) {
        char path[MS_PATH_MAX];
        if (ms_path_join(path, dir, created[i]) == MS_OK) unlink(path);
    }
    rmdir(dir);
    MS_CHECK(ms_path_list_nii(dir, &got, &n) == ENOENT && got == NULL && n == 0 && strstr(ms_errmsg(), dir),
             "a missing directory: '%s'", ms_errmsg());
}

int main(void)
{
    ms_rng r;
    ms_rng_init(&r, ms_test_seed(), 0);
    check_suffixes(&r);
    check_join(&r);
    check_fmt(&r);
    check_list(&r);
    return ms_test_done();
}
