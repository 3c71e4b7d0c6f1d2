/* tests/fuzz_file.h — helpers of the libFuzzer targets (tests/<folder>/fuzz_*.c) whose reader takes a path: the
 * input is written to a file made once per process (a memfd, /proc/self/fd/N, or a named file in a private
 * temporary directory when the reader looks at the name) and rewritten for every input. Also the check every
 * target makes: an error message is one line. */
#ifndef MS_FUZZ_FILE_H
#define MS_FUZZ_FILE_H

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/status.h"

/* A memfd rewritten with each input; its path is /proc/self/fd/N (stable for the process). */
static inline const char *ms_fuzz_memfd(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz", 0);
        if (fd < 0) abort();
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size)) abort();
    return path;
}

static char ms_fuzz_dir[64];

static inline int ms_fuzz_rm(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)type;
    (void)ftw;
    remove(path);
    return 0;
}

static inline void ms_fuzz_cleanup(void)
{
    nftw(ms_fuzz_dir, ms_fuzz_rm, 8, FTW_DEPTH | FTW_PHYS);
}

/* A private temporary directory, made once and removed when the process exits normally. */
static inline const char *ms_fuzz_tmpdir(void)
{
    if (!ms_fuzz_dir[0]) {
        snprintf(ms_fuzz_dir, sizeof ms_fuzz_dir, "/tmp/ms_fuzz_XXXXXX");
        if (!mkdtemp(ms_fuzz_dir)) abort();
        atexit(ms_fuzz_cleanup);
    }
    return ms_fuzz_dir;
}

/* Writes the input to <tmpdir>/name and returns that path (valid until the next call). */
static inline const char *ms_fuzz_named(const char *name, const uint8_t *data, size_t size)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", ms_fuzz_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) abort();
    return path;
}

/* Every error is one line "<path>: <reason>": a newline in the message is a bug. */
static inline void ms_fuzz_check_msg(ms_status st)
{
    if (st != MS_OK && strchr(ms_errmsg(), '\n')) {
        fprintf(stderr, "error message with a newline: %s\n", ms_errmsg());
        abort();
    }
    ms_error_clear();
}

#endif
