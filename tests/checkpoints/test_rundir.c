/* tests/checkpoints/test_rundir.c — RUN/ directory mechanics: atomic files, step directories with DONE, latest
 * complete checkpoint, pruning, the TensorBoard event framing (CRC-32C check value, record lengths), and how a run
 * starts in RUN/ (ms_run_dir_check / _prepare on random directory contents, ms_run_mode_of). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/path.h"
#include "base/rng.h"
#include "checkpoints/rundir.h"
#include "checkpoints/runlog.h"
#include "harness.h"

static int exists(const char *p) { return access(p, F_OK) == 0; }

/* The test's own list of RUN/ entries: what a run writes (docs/CLI.md §RUN/ layout, with ms_afile's temporaries),
 * and look-alikes that no run writes (a wrong type, a name close to a run's). Type: 'f' file, 'd' directory with
 * content, 'l' symbolic link. */
typedef struct entry { const char *name; char type; } entry;
static const entry RUN_ENTRIES[] = {
    {"config.json", 'f'}, {"log.jsonl", 'f'}, {"shots.json", 'f'}, {"sam_mri_vit_test.pth", 'f'},
    {"sam_mri_vit_b.safetensors", 'f'}, {"config.json.tmp.4242", 'f'}, {"sam_mri_x.pth.tmp.7", 'f'},
    {"tb", 'd'}, {"ckpt", 'd'}, {"val", 'd'}, {"best", 'd'}, {"best.tmp", 'd'}};
static const entry OTHER_ENTRIES[] = {
    {"notes.txt", 'f'}, {"data", 'd'}, {"ckpt", 'f'}, {"config.json", 'd'}, {"sam_mri_.pth", 'f'},
    {"sam_mri_a.pth.bak", 'f'}, {"config.json.tmp.", 'f'}, {"config.json.tmp.12x", 'f'}, {"log.jsonl", 'l'},
    {"model.pth", 'f'}, {".hidden", 'f'}, {"tb2", 'd'}, {"val", 'l'}, {"export.safetensors", 'f'}};
#define N_RUN (int)(sizeof RUN_ENTRIES / sizeof *RUN_ENTRIES)
#define N_OTHER (int)(sizeof OTHER_ENTRIES / sizeof *OTHER_ENTRIES)

static void make_entry(const char *dir, const entry *e, ms_rng *g)
{
    char p[MS_PATH_MAX], q[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(p, dir, e->name));
    if (e->type == 'l') {
        MS_CHECK(symlink("/tmp", p) == 0, "symlink %s", p);
    } else if (e->type == 'd') {
        MS_CHECK_OK(ms_path_fmt(q, "%s/sub/step_%08d", p, (int)(ms_rng_u64(g) % 100)));
        MS_CHECK_OK(ms_mkdirs(q));
        MS_CHECK_OK(ms_path_fmt(q, "%s/sub/DONE", p));
        MS_CHECK_OK(ms_write_file_atomic(q, "done\n", 5));
    } else {
        MS_CHECK_OK(ms_write_file_atomic(p, "x", ms_rng_u64(g) % 2));
    }
}

/* `find` listing (names, types, sizes) of dir, or "" when it does not exist: "unchanged" compares two of these. */
static char *listing(const char *dir)
{
    char cmd[MS_PATH_MAX + 100];
    snprintf(cmd, sizeof cmd, "cd '%s' 2>/dev/null && find . -printf '%%p %%y %%s\\n' | sort", dir);
    FILE *f = popen(cmd, "r");
    char *buf = calloc(1, 1 << 16);
    if (f && buf) buf[fread(buf, 1, (1 << 16) - 1, f)] = 0;
    if (f) pclose(f);
    return buf;
}

/* Random RUN/ contents: k entries of a run and m others (distinct names); each mode against the test's expectation.
 * fresh: absent or empty; resume: anything, untouched; overwrite: only a run's entries, which it removes. */
static void check_prepare(const char *base, uint64_t seed)
{
    char run[MS_PATH_MAX], msg[3 * MS_PATH_MAX];
    for (int trial = 0; trial < 60; trial++) {
        ms_rng g;
        ms_rng_init(&g, seed, 100 + trial);
        MS_CHECK_OK(ms_path_fmt(run, "%s/t%d/run", base, trial));
        int absent = ms_rng_u64(&g) % 8 == 0;
        int k = 0, m = 0;
        if (!absent) {
            MS_CHECK_OK(ms_mkdirs(run));
            int want_k = (int)(ms_rng_u64(&g) % 4);
            int want_m = ms_rng_u64(&g) % 3 == 0 ? 1 + (int)(ms_rng_u64(&g) % 2) : 0;
            char used[N_RUN + N_OTHER][40];
            int nu = 0;
            for (int tries = 0; tries < 50 && (k < want_k || m < want_m); tries++) {
                int other = k >= want_k;
                const entry *e = other ? &OTHER_ENTRIES[ms_rng_u64(&g) % N_OTHER]
                                       : &RUN_ENTRIES[ms_rng_u64(&g) % N_RUN];
                int dup = 0;
                for (int i = 0; i < nu; i++) dup |= !strcmp(used[i], e->name);
                if (dup) continue;
                snprintf(used[nu++], sizeof used[0], "%s", e->name);
                make_entry(run, e, &g);
                if (other) m++; else k++;
            }
        }
        char *before = listing(run);
        /* resume: never refused by the directory, never touched */
        MS_CHECK(ms_run_dir_check(run, MS_RUN_RESUME) == MS_OK, "trial %d: resume check: %s", trial, ms_errmsg());
        /* fresh */
        ms_status st = ms_run_dir_prepare(run, MS_RUN_FRESH);
        char *after = listing(run);
        if (k + m == 0) {
            MS_CHECK(st == MS_OK && ms_path_is_dir(run), "trial %d: fresh run in an %s directory: %s", trial,
                     absent ? "absent" : "empty", ms_errmsg());
        } else {
            snprintf(msg, sizeof msg, "%s: not empty (a run is there): --resume %s to continue it, --overwrite to "
                     "start again", run, run);
            int want_msg = k ? !strcmp(ms_errmsg(), msg) : strstr(ms_errmsg(), "which no run writes") != NULL;
            MS_CHECK(st == MS_EINVAL && want_msg && !strcmp(before, after),
                     "trial %d (%d run entries, %d others): fresh refused, unchanged: %d '%s'", trial, k, m, st,
                     ms_errmsg());
        }
        free(after);
        /* overwrite */
        st = ms_run_dir_prepare(run, MS_RUN_OVERWRITE);
        after = listing(run);
        if (m == 0) {
            MS_CHECK(st == MS_OK && !strncmp(after, ". d ", 4) && strchr(after, '\n') == after + strlen(after) - 1,
                     "trial %d: overwrite of %d run entries leaves RUN/ empty: %s '%s'", trial, k, ms_errmsg(), after);
        } else {
            MS_CHECK(st == MS_EINVAL && strstr(ms_errmsg(), "which no run writes") && !strcmp(before, after),
                     "trial %d (%d run entries, %d others): overwrite refused, unchanged: %d '%s'", trial, k, m, st,
                     ms_errmsg());
        }
        free(after);
        free(before);
    }
    /* a file where RUN/ should be */
    MS_CHECK_OK(ms_path_fmt(run, "%s/file", base));
    MS_CHECK_OK(ms_write_file_atomic(run, "x", 1));
    for (int mode = MS_RUN_FRESH; mode <= MS_RUN_OVERWRITE; mode++)
        MS_CHECK(ms_run_dir_prepare(run, (ms_run_mode)mode) == MS_EINVAL && strstr(ms_errmsg(), "not a directory") &&
                     exists(run), "mode %d: a file as RUN/ refused: %s", mode, ms_errmsg());
}

/* The mode from (out, resume, overwrite): the same directory however spelled continues it. */
static void check_mode_of(const char *base)
{
    char a[MS_PATH_MAX], a2[MS_PATH_MAX], b[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_fmt(a, "%s/m/a", base));
    MS_CHECK_OK(ms_path_fmt(a2, "%s/m/./a/", base));
    MS_CHECK_OK(ms_path_fmt(b, "%s/m/b", base));
    MS_CHECK_OK(ms_mkdirs(a));
    MS_CHECK_OK(ms_mkdirs(b));
    ms_run_mode md = MS_RUN_RESUME;
    MS_CHECK(!ms_run_mode_of(a, NULL, 0, &md) && md == MS_RUN_FRESH, "no resume: fresh");
    MS_CHECK(!ms_run_mode_of(a, NULL, 1, &md) && md == MS_RUN_OVERWRITE, "no resume, overwrite");
    MS_CHECK(!ms_run_mode_of(a, a2, 0, &md) && md == MS_RUN_RESUME, "resume of the same run, spelled otherwise");
    MS_CHECK(!ms_run_mode_of(b, a, 0, &md) && md == MS_RUN_FRESH, "a checkpoint from elsewhere: fresh");
    MS_CHECK(!ms_run_mode_of(b, a, 1, &md) && md == MS_RUN_OVERWRITE, "a checkpoint from elsewhere, overwrite");
    MS_CHECK(ms_run_mode_of(a, a2, 1, &md) == MS_EINVAL, "resume and overwrite of the same run: refused");
}

/* ms_runlog_rewind: a random log of train and val lines up to step n, a line without a step and a torn last line;
 * rewinding to `from` keeps exactly the complete lines of steps < from (and the stepless one), in order, and adds a
 * SessionLog START at `from` to the event file. */
static void check_rewind(const char *base, uint64_t seed)
{
    ms_rng g;
    ms_rng_init(&g, seed, 31);
    char run[MS_PATH_MAX], p[MS_PATH_MAX], line[128], want[8192] = "";
    snprintf(run, sizeof run, "%s_rewind", base);
    int n = 3 + (int)ms_rng_below(&g, 20), from = 1 + (int)ms_rng_below(&g, (uint64_t)n);
    ms_runlog lg;
    MS_CHECK_OK(ms_runlog_open(&lg, run));
    MS_CHECK_OK(ms_runlog_json(&lg, "{\"note\": \"no step\"}"));
    strcat(want, "{\"note\": \"no step\"}\n");
    for (int s = 1; s <= n; s++) {
        int val = ms_rng_below(&g, 3) == 0;
        for (int k = 0; k <= val; k++) {
            snprintf(line, sizeof line, "{\"step\": %d, \"split\": \"%s\", \"loss\": %d.5}", s, k ? "val" : "train", s);
            MS_CHECK_OK(ms_runlog_json(&lg, line));
            if (s < from) strcat(strcat(want, line), "\n");
        }
    }
    fputs("{\"step\": 1, \"spl", lg.jsonl); /* torn by a kill */
    MS_CHECK_OK(ms_runlog_rewind(&lg, from));
    MS_CHECK_OK(ms_runlog_json(&lg, "{\"step\": 99}"));
    strcat(want, "{\"step\": 99}\n");
    ms_runlog_close(&lg);
    char *data;
    size_t len;
    MS_CHECK_OK(ms_path_join(p, run, "log.jsonl"));
    MS_CHECK_OK(ms_read_file(p, 1 << 20, &data, &len));
    MS_CHECK(!strcmp(data, want), "rewind of %d steps to %d: kept the lines before it, dropped the torn one", n, from);
    free(data);
    char cmd[MS_PATH_MAX + 64];
    snprintf(cmd, sizeof cmd, "cat %s/tb/events.out.tfevents.* > %s/all", run, run);
    MS_CHECK(system(cmd) == 0, "event files");
    MS_CHECK_OK(ms_path_join(p, run, "all"));
    MS_CHECK_OK(ms_read_file(p, 1 << 20, &data, &len));
    const unsigned char start[] = {0x10, (unsigned char)from, 0x32, 0x02, 0x08, 0x01}; /* from < 128 */
    MS_CHECK(memmem(data, len, start, sizeof start) != NULL, "SessionLog START at step %d", from);
    free(data);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    char run[256], p[MS_PATH_MAX], dir[MS_PATH_MAX];
    snprintf(run, sizeof run, "rundir_test_%llu/run", (unsigned long long)seed);
    MS_CHECK_OK(ms_mkdirs(run));

    /* atomic write replaces content and leaves no temporary file */
    snprintf(p, sizeof p, "%s/config.json", run);
    MS_CHECK_OK(ms_write_file_atomic(p, "{\"a\": 1}", 8));
    MS_CHECK_OK(ms_write_file_atomic(p, "{\"a\": 22}", 9));
    char *data;
    size_t len;
    MS_CHECK_OK(ms_read_file(p, 1 << 20, &data, &len));
    MS_CHECK(len == 9 && !strcmp(data, "{\"a\": 22}"), "atomic write content '%s'", data);
    free(data);
    MS_CHECK(ms_read_file(p, 4, &data, &len) == MS_EFORMAT, "size bound enforced");

    /* step directories: only committed ones count; prune keeps the newest k */
    int64_t step;
    MS_CHECK(ms_ckpt_dir_latest(run, &step, dir) == MS_ENOTFOUND, "no checkpoint yet");
    for (int s = 10; s <= 50; s += 10) {
        MS_CHECK_OK(ms_ckpt_dir_create(run, s, dir));
        MS_CHECK_OK(ms_path_join(p, dir, "model.bin"));
        MS_CHECK_OK(ms_write_file_atomic(p, "x", 1));
        if (s != 50) MS_CHECK_OK(ms_ckpt_dir_commit(dir)); /* step 50 "crashed" before DONE */
    }
    MS_CHECK_OK(ms_ckpt_dir_latest(run, &step, dir));
    MS_CHECK(step == 40, "latest complete step %lld, expected 40", (long long)step);
    MS_CHECK_OK(ms_ckpt_dir_prune(run, 2, 10));
    snprintf(p, sizeof p, "%s/ckpt/step_00000010/DONE", run);
    MS_CHECK(exists(p), "protected step kept");
    snprintf(p, sizeof p, "%s/ckpt/step_00000020", run);
    MS_CHECK(!exists(p), "old step pruned");
    snprintf(p, sizeof p, "%s/ckpt/step_00000030/DONE", run);
    MS_CHECK(exists(p), "newest two kept (30)");
    snprintf(p, sizeof p, "%s/ckpt/step_00000050", run);
    MS_CHECK(!exists(p), "incomplete step removed");

    /* CRC-32C check value and TFRecord framing */
    MS_CHECK(ms_crc32c(0, "123456789", 9) == 0xE3069283u, "crc32c check value %08x", ms_crc32c(0, "123456789", 9));
    ms_runlog lg;
    MS_CHECK_OK(ms_runlog_open(&lg, run));
    MS_CHECK_OK(ms_runlog_json(&lg, "{\"step\": 1, \"loss\": 0.5}"));
    MS_CHECK_OK(ms_runlog_scalar(&lg, "train/loss", 1, 0.5));
    MS_CHECK_OK(ms_runlog_scalar(&lg, "train/lr", 1, 1e-4));
    ms_runlog_close(&lg);
    snprintf(p, sizeof p, "%s/log.jsonl", run);
    MS_CHECK_OK(ms_read_file(p, 1 << 20, &data, &len));
    MS_CHECK(!strcmp(data, "{\"step\": 1, \"loss\": 0.5}\n"), "jsonl content");
    free(data);
    /* walk the records of the event file: 3 records, each length + masked crc + data + masked crc */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls %s/tb/events.out.tfevents.* > %s/tbname", run, run);
    MS_CHECK(system(cmd) == 0, "event file exists");
    snprintf(p, sizeof p, "%s/tbname", run);
    MS_CHECK_OK(ms_read_file(p, 4096, &data, &len));
    data[strcspn(data, "\n")] = 0;
    char *ev;
    size_t evlen;
    MS_CHECK_OK(ms_read_file(data, 1 << 20, &ev, &evlen));
    free(data);
    size_t off = 0;
    int records = 0, crc_ok = 1;
    while (off + 12 <= evlen) {
        uint64_t n;
        memcpy(&n, ev + off, 8);
        uint32_t c = ms_crc32c(0, ev + off, 8);
        uint32_t want;
        memcpy(&want, ev + off + 8, 4);
        crc_ok &= (((c >> 15) | (c << 17)) + 0xa282ead8u) == want;
        off += 12 + n + 4;
        records++;
    }
    MS_CHECK(records == 3 && off == evlen && crc_ok, "event records %d, framing ok %d", records, crc_ok);
    MS_CHECK(memmem(ev, evlen, "train/loss", 10) != NULL, "scalar tag written");
    free(ev);
    snprintf(p, sizeof p, "rundir_test_%llu", (unsigned long long)seed);
    check_prepare(p, seed);
    check_mode_of(p);
    check_rewind(p, seed);
    snprintf(cmd, sizeof cmd, "rm -rf rundir_test_%llu rundir_test_%llu_rewind", (unsigned long long)seed,
             (unsigned long long)seed);
    MS_CHECK(system(cmd) == 0, "cleanup");
    return ms_test_done();
}
