/* checkpoints/fileio.c — see fileio.h. */
#include "checkpoints/fileio.h"

#include <errno.h>
#include <fcntl.h>
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
        ms_status rc = ms_error(MS_EIO, "%s: %s", a->tmp, strerror(errno));
        ms_afile_abort(a);
        return rc;
    }
    return MS_OK;
}

ms_status ms_afile_write(ms_afile *a, const void *p, size_t n)
{
    if (n && fwrite(p, 1, n, a->f) != n) return ms_error(MS_EIO, "%s: write: %s", a->tmp, strerror(errno));
    a->off += n;
    return MS_OK;
}

ms_status ms_afile_commit(ms_afile *a)
{
    ms_status rc = MS_OK;
    if (fflush(a->f) != 0 || fsync(fileno(a->f)) != 0) {
        rc = ms_error(MS_EIO, "%s: flush: %s", a->tmp, strerror(errno));
        goto leave;
    }
    int cr = fclose(a->f);
    a->f = NULL;
    if (cr != 0) {
        rc = ms_error(MS_EIO, "%s: close: %s", a->tmp, strerror(errno));
        goto leave;
    }
    if (rename(a->tmp, a->path) != 0) {
        rc = ms_error(MS_EIO, "%s: rename: %s", a->path, strerror(errno));
        goto leave;
    }
    free(a->tmp);
    a->tmp = NULL;
    /* rename is atomic but not durable until the folder entry is synced. */
    char *slash = strrchr(a->path, '/');
    if (slash) *slash = 0;
    int dfd = open(slash ? (a->path[0] ? a->path : "/") : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (slash) *slash = '/';
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
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
