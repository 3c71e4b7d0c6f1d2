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

ms_status ms_ckpt_dir_create(const char *run, int64_t step, char *out)
{
    char ck[MS_PATH_MAX], done[MS_PATH_MAX];
    MS_TRY(ms_path_join(ck, run, "ckpt"));
    MS_TRY(ms_mkdirs(ck));
    MS_TRY(ms_path_fmt(out, "%s/step_%08lld", ck, (long long)step));
    MS_TRY(ms_path_join(done, out, "DONE"));
    unlink(done); /* re-writing a step: it is incomplete until committed again */
    return ms_mkdirs(out);
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
        if (!rc) rc = ms_dir_remove(p);
    }
    return rc;
}
