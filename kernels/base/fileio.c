/* kernels/base/fileio.c — see fileio.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* renameat2 */
#endif
#include "base/fileio.h"
#include "base/path.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

ms_status ms_map_open(const char *path, ms_map *m)
{
    m->p = NULL;
    m->size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ms_error(errno == ENOENT ? MS_ENOTFOUND : MS_EIO, "%s: %s", path, strerror(errno));
    ms_status rc = MS_OK;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = ms_error(MS_EIO, "%s: %s", path, strerror(errno));
        goto leave;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = ms_error(MS_EINVAL, "%s: not a regular file", path);
        goto leave;
    }
    if (st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            rc = ms_error(MS_EIO, "%s: mmap: %s", path, strerror(errno));
            goto leave;
        }
        m->p = p;
        m->size = (size_t)st.st_size;
    }
leave:
    close(fd);
    return rc;
}

void ms_map_close(ms_map *m)
{
    if (m->p) munmap((void *)m->p, m->size);
    m->p = NULL;
    m->size = 0;
}

ms_status ms_afile_open(ms_afile *a, const char *path)
{
    memset(a, 0, sizeof *a);
    size_t n = strlen(path);
    a->path = malloc(n + 1);
    a->tmp = malloc(n + 32);
    if (!a->path || !a->tmp) {
        ms_afile_abort(a);
        return ms_error(MS_ENOMEM, "%s: out of memory", path);
    }
    memcpy(a->path, path, n + 1);
    snprintf(a->tmp, n + 32, "%s.tmp.%ld", path, (long)getpid());
    a->f = fopen(a->tmp, "wb");
    if (!a->f) {
        ms_status rc = ms_error_sys(errno, a->path, ""); /* the name the user gave, not the temporary */
        ms_afile_abort(a);
        return rc;
    }
    return MS_OK;
}

ms_status ms_afile_write(ms_afile *a, const void *p, size_t n)
{
    /* the final name in the message: the temporary is removed on failure (a full disk: ENOSPC, EFBIG) */
    if (n && fwrite(p, 1, n, a->f) != n) return ms_error_sys(errno, a->path, "");
    a->off += n;
    return MS_OK;
}

ms_status ms_afile_commit(ms_afile *a)
{
    ms_status rc = MS_OK;
    if (fflush(a->f) != 0 || fsync(fileno(a->f)) != 0) {
        rc = ms_error_sys(errno, a->path, "");
        goto leave;
    }
    int cr = fclose(a->f);
    a->f = NULL;
    if (cr != 0) {
        rc = ms_error_sys(errno, a->path, "close: ");
        goto leave;
    }
    if (rename(a->tmp, a->path) != 0) {
        rc = ms_error_sys(errno, a->path, "rename: ");
        goto leave;
    }
    free(a->tmp);
    a->tmp = NULL;
    /* rename is atomic but not durable until the folder entry is synced. */
    rc = ms_fsync_parent(a->path);
leave:
    ms_afile_abort(a);
    return rc;
}

void ms_afile_abort(ms_afile *a)
{
    if (a->f) fclose(a->f);
    a->f = NULL;
    if (a->tmp) remove(a->tmp);
    free(a->tmp);
    free(a->path);
    a->tmp = a->path = NULL;
}

ms_status ms_mkdirs(const char *path)
{
    char buf[MS_PATH_MAX];
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

ms_status ms_write_file_atomic(const char *path, const void *data, size_t len)
{
    ms_afile a;
    MS_TRY(ms_afile_open(&a, path));
    ms_status rc = ms_afile_write(&a, data, len);
    if (rc) {
        ms_afile_abort(&a);
        return rc;
    }
    return ms_afile_commit(&a);
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

ms_status ms_fsync_parent(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return ms_fsync_dir(".");
    if (slash == path) return ms_fsync_dir("/");
    char *dir = strndup(path, (size_t)(slash - path));
    MS_FAIL_IF(!dir, MS_ENOMEM, "%s: out of memory", path);
    ms_status rc = ms_fsync_dir(dir);
    free(dir);
    return rc;
}

static ms_status remove_tree(const char *path)
{
    DIR *d = opendir(path);
    if (!d) return ms_error(errno, "%s: %s", path, strerror(errno));
    struct dirent *e;
    ms_status rc = MS_OK;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[MS_PATH_MAX];
        if ((rc = ms_path_join(p, path, e->d_name))) break;
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

ms_status ms_mkdirs_parent(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash || slash == path) return MS_OK; /* the current folder or / */
    char *dir = strndup(path, (size_t)(slash - path));
    MS_FAIL_IF(!dir, MS_ENOMEM, "%s: out of memory", path);
    ms_status rc = ms_mkdirs(dir);
    free(dir);
    return rc;
}
