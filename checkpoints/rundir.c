/* checkpoints/rundir.c — see rundir.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* renameat2 */
#endif
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

ms_status ms_mkdirs(const char *path)
{
    char buf[4096];
    size_t n = strlen(path);
    MS_FAIL_IF(n == 0 || n >= sizeof buf, MS_EINVAL, "%s: bad directory name", path);
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != 0) continue;
        char c = buf[i];
        buf[i] = 0;
        if (mkdir(buf, 0755) && errno != EEXIST) return ms_error(errno, "%s: cannot create directory: %s", buf, strerror(errno));
        buf[i] = c;
    }
    struct stat st;
    MS_FAIL_IF(stat(path, &st) || !S_ISDIR(st.st_mode), MS_EIO, "%s: not a directory", path);
    return MS_OK;
}

ms_status ms_fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return ms_error(errno, "%s: cannot open directory: %s", dir, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc) return ms_error(e, "%s: fsync failed: %s", dir, strerror(e));
    return MS_OK;
}

static void parent_of(const char *path, char *out, size_t n)
{
    snprintf(out, n, "%s", path);
    char *s = strrchr(out, '/');
    if (!s) snprintf(out, n, ".");
    else if (s == out) out[1] = 0;
    else *s = 0;
}

ms_status ms_write_file_atomic(const char *path, const void *data, size_t len)
{
    char tmp[4200], dir[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return ms_error(errno, "%s: cannot create: %s", tmp, strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = errno ? errno : EIO;
            close(fd);
            unlink(tmp);
            return ms_error(e, "%s: write failed: %s", path, strerror(e));
        }
        p += w;
        left -= (size_t)w;
    }
    if (fsync(fd) || close(fd)) {
        int e = errno;
        unlink(tmp);
        return ms_error(e, "%s: fsync failed: %s", path, strerror(e));
    }
    if (rename(tmp, path)) {
        int e = errno;
        unlink(tmp);
        return ms_error(e, "%s: rename failed: %s", path, strerror(e));
    }
    parent_of(path, dir, sizeof dir);
    return ms_fsync_dir(dir);
}

ms_status ms_read_file(const char *path, size_t max_len, char **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return ms_error(errno, "%s: %s", path, strerror(errno));
    ms_status rc = MS_OK;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END)) { rc = ms_error(MS_EIO, "%s: cannot seek", path); goto leave; }
    long sz = ftell(f);
    if (sz < 0 || (size_t)sz > max_len) { rc = ms_error(MS_EFORMAT, "%s: size %ld exceeds %zu bytes", path, sz, max_len); goto leave; }
    rewind(f);
    buf = malloc((size_t)sz + 1);
    if (!buf) { rc = ms_error(MS_ENOMEM, "%s: out of memory", path); goto leave; }
    if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) { rc = ms_error(MS_EIO, "%s: short read", path); goto leave; }
    buf[sz] = 0;
    *data = buf;
    *len = (size_t)sz;
    buf = NULL;
leave:
    free(buf);
    fclose(f);
    return rc;
}

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

ms_status ms_ckpt_dir_create(const char *run, int64_t step, char *out, size_t n)
{
    char ck[4096];
    snprintf(ck, sizeof ck, "%s/ckpt", run);
    MS_TRY(ms_mkdirs(ck));
    snprintf(out, n, "%s/step_%08lld", ck, (long long)step);
    char done[4200];
    snprintf(done, sizeof done, "%s/DONE", out);
    unlink(done); /* re-writing a step: it is incomplete until committed again */
    return ms_mkdirs(out);
}

ms_status ms_ckpt_dir_commit(const char *step_dir)
{
    char done[4200], parent[4200];
    snprintf(done, sizeof done, "%s/DONE", step_dir);
    MS_TRY(ms_fsync_dir(step_dir));
    MS_TRY(ms_write_file_atomic(done, "done\n", 5));
    parent_of(step_dir, parent, sizeof parent);
    return ms_fsync_dir(parent);
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

static int is_complete(const char *ck, const char *name)
{
    char p[4400];
    snprintf(p, sizeof p, "%s/%s/DONE", ck, name);
    return access(p, F_OK) == 0;
}

ms_status ms_ckpt_dir_latest(const char *run, int64_t *step, char *out, size_t n)
{
    char ck[4096];
    snprintf(ck, sizeof ck, "%s/ckpt", run);
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
    *step = best;
    snprintf(out, n, "%s/step_%08lld", ck, (long long)best);
    return MS_OK;
}

static ms_status remove_tree(const char *path)
{
    DIR *d = opendir(path);
    if (!d) return ms_error(errno, "%s: %s", path, strerror(errno));
    struct dirent *e;
    ms_status rc = MS_OK;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[4400];
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) rc = remove_tree(p);
        else if (unlink(p)) rc = ms_error(errno, "%s: %s", p, strerror(errno));
        if (rc) break;
    }
    closedir(d);
    if (!rc && rmdir(path)) rc = ms_error(errno, "%s: %s", path, strerror(errno));
    return rc;
}

ms_status ms_dir_swap_in(const char *src, const char *dst)
{
    struct stat sb;
    if (stat(dst, &sb) == 0) {
        if (renameat2(AT_FDCWD, src, AT_FDCWD, dst, RENAME_EXCHANGE))
            return ms_error(errno, "%s: %s", dst, strerror(errno));
        return MS_OK;
    }
    if (rename(src, dst)) return ms_error(errno, "%s: %s", dst, strerror(errno));
    return MS_OK;
}

ms_status ms_dir_remove(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) && errno == ENOENT) return MS_OK;
    return remove_tree(path);
}

ms_status ms_ckpt_dir_prune(const char *run, int keep_last, int64_t protect)
{
    char ck[4096];
    snprintf(ck, sizeof ck, "%s/ckpt", run);
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
        char p[4200];
        snprintf(p, sizeof p, "%s/step_%08lld", ck, (long long)steps[i]);
        rc = remove_tree(p);
    }
    return rc;
}
