/* checkpoints/rundir.c — see rundir.h. */
#include "rundir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "base/path.h"

ms_status ms_read_json(const char *path, size_t max_len, cJSON **out)
{
    char *txt;
    size_t len;
    *out = NULL;
    MS_TRY(ms_read_file(path, max_len, &txt, &len));
    *out = cJSON_ParseWithLength(txt, len);
    free(txt);
    MS_FAIL_IF(!*out, MS_EFORMAT, "%s: not valid JSON", path);
    return MS_OK;
}

/* ---- the run directory's mode ---------------------------------------------------------------------------------- */

static int same_dir(const char *a, const char *b)
{
    struct stat sa, sb;
    if (!strcmp(a, b)) return 1;
    return !stat(a, &sa) && !stat(b, &sb) && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

ms_status ms_run_mode_of(const char *out, const char *resume, int overwrite, ms_run_mode *mode)
{
    *mode = overwrite ? MS_RUN_OVERWRITE : MS_RUN_FRESH;
    if (!resume || !same_dir(out, resume)) return MS_OK;
    MS_FAIL_IF(overwrite, MS_EINVAL, "%s: --resume continues the run, --overwrite starts it again: not both", out);
    *mode = MS_RUN_RESUME;
    return MS_OK;
}

/* name without a trailing ".tmp.<digits>" (what ms_afile leaves when a write is interrupted): its length */
static size_t strip_tmp(const char *name)
{
    size_t n = strlen(name), d = n;
    while (d > 0 && name[d - 1] >= '0' && name[d - 1] <= '9') d--;
    if (d == n || d < 5 || memcmp(name + d - 5, ".tmp.", 5)) return n;
    return d - 5;
}

/* 1 when `name` (an entry of RUN/, of type is_dir) is one a run writes (docs/CLI.md §RUN/ layout). */
static int run_dir_entry(const char *name, int is_dir)
{
    static const char *const dirs[] = {"tb", "ckpt", "val", "best", "best.tmp"};
    static const char *const files[] = {"config.json", "log.jsonl", "shots.json"};
    if (is_dir) {
        for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) if (!strcmp(name, dirs[i])) return 1;
        return 0;
    }
    size_t n = strip_tmp(name);
    for (size_t i = 0; i < sizeof files / sizeof *files; i++)
        if (n == strlen(files[i]) && !memcmp(name, files[i], n)) return 1;
    /* the pretraining export sam_mri_<model>.pth / .safetensors */
    if (strncmp(name, "sam_mri_", 8)) return 0;
    for (const char *ext = ".pth"; ext; ext = ext[1] == 'p' ? ".safetensors" : NULL) {
        size_t e = strlen(ext);
        if (n > 8 + e && !memcmp(name + n - e, ext, e)) return 1;
    }
    return 0;
}

/* Walks RUN/'s entries: *n_run entries a run writes, the first other one into foreign (empty when none). */
static ms_status scan_run_dir(const char *run, int *n_run, char *foreign, size_t fn)
{
    *n_run = 0;
    foreign[0] = 0;
    DIR *d = opendir(run);
    if (!d) return ms_error(errno, "%s: %s", run, strerror(errno));
    struct dirent *e;
    ms_status rc = MS_OK;
    while ((e = readdir(d)) && !rc) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[MS_PATH_MAX];
        struct stat st;
        rc = ms_path_join(p, run, e->d_name);
        if (rc) break;
        if (lstat(p, &st)) { rc = ms_error(errno, "%s: %s", p, strerror(errno)); break; }
        /* a symbolic link is never something a run writes, whatever its name */
        int ok = (S_ISDIR(st.st_mode) || S_ISREG(st.st_mode)) && run_dir_entry(e->d_name, S_ISDIR(st.st_mode));
        if (ok) (*n_run)++;
        else if (!foreign[0]) snprintf(foreign, fn, "%s", e->d_name);
    }
    closedir(d);
    return rc;
}

ms_status ms_run_dir_check(const char *run, ms_run_mode mode)
{
    struct stat st;
    if (stat(run, &st)) {
        if (errno == ENOENT) return MS_OK; /* created by prepare */
        return ms_error(errno, "%s: %s", run, strerror(errno));
    }
    MS_FAIL_IF(!S_ISDIR(st.st_mode), MS_EINVAL, "%s: not a directory", run);
    if (mode == MS_RUN_RESUME) return MS_OK;
    int n_run;
    char foreign[256];
    MS_TRY(scan_run_dir(run, &n_run, foreign, sizeof foreign));
    MS_FAIL_IF(n_run && mode == MS_RUN_FRESH, MS_EINVAL,
               "%s: not empty (a run is there): --resume %s to continue it, --overwrite to start again", run, run);
    MS_FAIL_IF(foreign[0], MS_EINVAL, "%s: not empty (holds %s, which no run writes): -o a new or empty directory",
               run, foreign);
    return MS_OK;
}

/* Removes the temporaries "<file>.tmp.<pid>" an interrupted write left in folder dir (absent: nothing to do). */
static ms_status remove_temporaries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return errno == ENOENT ? MS_OK : ms_error(errno, "%s: %s", dir, strerror(errno));
    struct dirent *e;
    ms_status rc = MS_OK;
    while (!rc && (e = readdir(d))) {
        char p[MS_PATH_MAX];
        struct stat st;
        if (strip_tmp(e->d_name) == strlen(e->d_name) || (rc = ms_path_join(p, dir, e->d_name))) continue;
        if (!lstat(p, &st) && S_ISREG(st.st_mode) && unlink(p) && errno != ENOENT)
            rc = ms_error(errno, "%s: %s", p, strerror(errno));
    }
    closedir(d);
    return rc;
}

ms_status ms_run_dir_prepare(const char *run, ms_run_mode mode)
{
    MS_TRY(ms_run_dir_check(run, mode));
    if (mode == MS_RUN_RESUME) { /* what a killed run was writing: the resumed run writes it again */
        char p[MS_PATH_MAX];
        MS_TRY(remove_temporaries(run));
        MS_TRY(ms_path_join(p, run, "val"));
        MS_TRY(remove_temporaries(p));
        MS_TRY(ms_path_join(p, run, "best.tmp"));
        MS_TRY(ms_dir_remove(p));
    }
    if (mode == MS_RUN_OVERWRITE && ms_path_is_dir(run)) {
        DIR *d = opendir(run);
        if (!d) return ms_error(errno, "%s: %s", run, strerror(errno));
        struct dirent *e;
        ms_status rc = MS_OK;
        while (!rc && (e = readdir(d))) { /* every entry was just checked to be a run's */
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char p[MS_PATH_MAX];
            struct stat st;
            rc = ms_path_join(p, run, e->d_name);
            if (rc) break;
            if (!lstat(p, &st) && S_ISDIR(st.st_mode)) rc = ms_dir_remove(p);
            else if (unlink(p) && errno != ENOENT) rc = ms_error(errno, "%s: %s", p, strerror(errno));
        }
        closedir(d);
        MS_TRY(rc);
        MS_TRY(ms_fsync_dir(run));
    }
    return ms_mkdirs(run);
}

/* RUN/ckpt/step_%08d into out. */
static ms_status step_dir(const char *run, int64_t step, char *out)
{
    return ms_path_fmt(out, "%s/ckpt/step_%08lld", run, (long long)step);
}

ms_status ms_ckpt_dir_create(const char *run, int64_t step, char *out)
{
    char ck[MS_PATH_MAX], done[MS_PATH_MAX];
    MS_TRY(ms_path_join(ck, run, "ckpt"));
    MS_TRY(ms_mkdirs(ck));
    MS_TRY(step_dir(run, step, out));
    MS_TRY(ms_path_join(done, out, "DONE"));
    unlink(done); /* re-writing a step: it is incomplete until committed again */
    return ms_mkdirs(out);
}

ms_status ms_ckpt_dir_save(const char *run, int64_t step, ms_dist *d, ms_ckpt_writer each_rank, ms_ckpt_writer rank0,
                           void *ctx, int keep_last)
{
    char dir[MS_PATH_MAX];
    int rank = ms_dist_rank(d);
    ms_status rc;
    if (rank == 0) MS_TRY(ms_ckpt_dir_create(run, step, dir));
    else MS_TRY(step_dir(run, step, dir));
    if (each_rank) {
        MS_TRY(ms_dist_barrier(d));
        if ((rc = each_rank(ctx, dir))) return rank ? rc : ms_ckpt_dir_abandon(dir, rc);
    }
    if (rank == 0 && (rc = rank0(ctx, dir))) return ms_ckpt_dir_abandon(dir, rc); /* no partial step directory */
    MS_TRY(ms_dist_barrier(d));
    if (rank != 0) return MS_OK;
    if ((rc = ms_ckpt_dir_commit(dir))) return ms_ckpt_dir_abandon(dir, rc);
    return ms_ckpt_dir_prune(run, keep_last, -1);
}

/* Removes a step directory, DONE first: should the removal stop half-way (a kill, an error), what is left is an
 * incomplete checkpoint, never one that looks complete and misses files. */
static ms_status remove_step_dir(const char *step_dir)
{
    char done[MS_PATH_MAX];
    MS_TRY(ms_path_join(done, step_dir, "DONE"));
    if (unlink(done) && errno != ENOENT) {
        int e = errno;
        /* DONE is always a file mrisam wrote, but a folder in its place (a blocked write) is removed the same way */
        if (e != EISDIR) return ms_error(e, "%s: %s", done, strerror(e));
        MS_TRY(ms_dir_remove(done));
    }
    MS_TRY(ms_fsync_dir(step_dir));
    return ms_dir_remove(step_dir);
}

ms_status ms_ckpt_dir_abandon(const char *step_dir, ms_status rc)
{
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", ms_errmsg());
    remove_step_dir(step_dir); /* a failure here leaves an incomplete directory, which the next prune removes */
    return ms_error(rc, "%s", msg);
}

ms_status ms_ckpt_dir_commit(const char *step_dir)
{
    char done[MS_PATH_MAX];
    MS_TRY(ms_path_join(done, step_dir, "DONE"));
    MS_TRY(ms_fsync_dir(step_dir));
    MS_TRY(ms_write_file_atomic(done, "done\n", 5));
    return ms_fsync_parent(step_dir);
}

/* step of "step_%08d", or -1 */
static int64_t parse_step(const char *name)
{
    if (strncmp(name, "step_", 5)) return -1;
    char *e;
    long long v = strtoll(name + 5, &e, 10);
    if (*e || e == name + 5 || v < 0) return -1;
    return v;
}

/* 1 when ck/name/DONE exists (a path too long to build is not a complete checkpoint) */
static int is_complete(const char *ck, const char *name)
{
    char p[MS_PATH_MAX];
    return ms_path_fmt(p, "%s/%s/DONE", ck, name) == MS_OK && access(p, F_OK) == 0;
}

ms_status ms_ckpt_dir_latest(const char *run, int64_t *step, char *out)
{
    char ck[MS_PATH_MAX];
    MS_TRY(ms_path_join(ck, run, "ckpt"));
    DIR *d = opendir(ck);
    if (!d) return ms_error(MS_ENOTFOUND, "%s: no checkpoints", ck);
    int64_t best = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t s = parse_step(e->d_name);
        if (s > best && is_complete(ck, e->d_name)) best = s;
    }
    closedir(d);
    if (best < 0) return ms_error(MS_ENOTFOUND, "%s: no complete checkpoint (no step directory with DONE)", ck);
    MS_TRY(ms_path_fmt(out, "%s/step_%08lld", ck, (long long)best));
    *step = best;
    return MS_OK;
}

ms_status ms_ckpt_dir_prune(const char *run, int keep_last, int64_t protect)
{
    char ck[MS_PATH_MAX];
    MS_TRY(ms_path_join(ck, run, "ckpt"));
    DIR *d = opendir(ck);
    if (!d) return MS_OK;
    int64_t steps[4096];
    int complete[4096], n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096) {
        int64_t s = parse_step(e->d_name);
        if (s < 0) continue;
        steps[n] = s;
        complete[n] = is_complete(ck, e->d_name);
        n++;
    }
    closedir(d);
    ms_status rc = MS_OK;
    for (int i = 0; i < n && !rc; i++) {
        int newer = 0;
        for (int j = 0; j < n; j++) newer += complete[j] && steps[j] > steps[i];
        int keep = complete[i] && (newer < keep_last || steps[i] == protect);
        if (keep) continue;
        char p[MS_PATH_MAX];
        rc = ms_path_fmt(p, "%s/step_%08lld", ck, (long long)steps[i]);
        if (!rc) rc = remove_step_dir(p);
    }
    return rc;
}
