/* data/dicom.c — see dicom.h. */
#include "data/dicom.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/fileio.h"
#include "base/path.h"
#include "data/hash.h"

int ms_dicom_is_file(const char *path)
{
    uint8_t b[132];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t r = read(fd, b + got, sizeof b - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    return got == sizeof b && !memcmp(b + 128, "DICM", 4);
}

ms_status ms_dicom_series_hash(const char *const *files, int n, char out[65])
{
    static const char tag[] = "mrisam-dicom-series";
    ms_sha256 h;
    ms_sha256_init(&h);
    ms_sha256_update(&h, tag, sizeof tag); /* with its NUL: no NIfTI source hashes the same */
    for (int i = 0; i < n; i++) {
        struct stat sb;
        if (stat(files[i], &sb)) return ms_error(errno, "%s: %s", files[i], strerror(errno));
        uint8_t len[8];
        for (int b = 0; b < 8; b++) len[b] = (uint8_t)((uint64_t)sb.st_size >> (8 * b));
        ms_sha256_update(&h, len, sizeof len);
        ms_sha256 before = h;
        MS_TRY(ms_sha256_file(&h, files[i]));
        /* the length hashed must be the length read: a file that changed size in between is refused */
        MS_FAIL_IF(h.len - before.len != (uint64_t)sb.st_size, MS_EIO, "%s: changed while it was read", files[i]);
    }
    uint8_t d[32];
    ms_sha256_final(&h, d);
    ms_hex(d, 32, out);
    return MS_OK;
}

ms_status ms_dicom_find_converter(const char *series, char *out, size_t cap)
{
    const char *p = getenv("PATH");
    while (p) { /* an unset PATH finds nothing */
        const char *end = strchr(p, ':');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        int w = len ? snprintf(out, cap, "%.*s/dcm2niix", (int)len, p) : snprintf(out, cap, "./dcm2niix");
        struct stat sb;
        if (w > 0 && (size_t)w < cap && stat(out, &sb) == 0 && S_ISREG(sb.st_mode) && access(out, X_OK) == 0)
            return MS_OK;
        p = end ? end + 1 : NULL;
    }
    if (cap) out[0] = 0;
    return ms_error(MS_ENOTFOUND, "%s: dcm2niix not found; install Debian's dcm2niix package", series);
}

/* The input folder: one symbolic link per file (to its absolute path), named by position, so the converter sees
 * this series and nothing else that shares its folder. */
static ms_status link_inputs(const char *series, const char *in, const char *const *files, int n)
{
    for (int i = 0; i < n; i++) {
        char *abs = realpath(files[i], NULL);
        if (!abs) return ms_error(errno, "%s: %s", files[i], strerror(errno));
        char at[MS_PATH_MAX];
        ms_status st = ms_path_fmt(at, "%s/%06d.dcm", in, i);
        if (!st && symlink(abs, at)) st = ms_error(errno, "%s: cannot link a file for dcm2niix: %s", series,
                                                   strerror(errno));
        free(abs);
        MS_TRY(st);
    }
    return MS_OK;
}

/* Waits for the converter; with *stop set it is sent SIGTERM (and then waited for). Polled with a growing sleep (1
 * to 20 ms) since a signal may land on any thread. */
static ms_status wait_child(const char *series, pid_t pid, volatile sig_atomic_t *stop, int *ws)
{
    long ns = 1000000L;
    int stopped = 0;
    for (;;) {
        pid_t r = waitpid(pid, ws, stopped ? 0 : WNOHANG);
        if (r == pid) break;
        if (r < 0 && errno != EINTR) return ms_error(errno, "%s: waiting for dcm2niix: %s", series, strerror(errno));
        if (r < 0) continue;
        if (stop && *stop && !stopped) {
            kill(pid, SIGTERM);
            stopped = 1;
            continue;
        }
        nanosleep(&(struct timespec){0, ns}, NULL);
        if (ns < 20000000L) ns *= 2;
    }
    /* a SIGINT from the terminal reaches the converter too (same process group): it died of the same stop */
    if (stopped || (stop && *stop && WIFSIGNALED(*ws)))
        return ms_error(MS_EINTERRUPTED, "%s: interrupted while converting (rerun to resume)", series);
    return MS_OK;
}

/* Runs `exe` on the input folder `in` into `out`; its stdout and stderr into `log` (never read: it holds header
 * text). */
static ms_status run_converter(const char *series, const char *exe, const char *tmp, const char *in,
                               const char *out, const char *log, volatile sig_atomic_t *stop)
{
    char *argv[] = {"dcm2niix", "-f", "vol", "-b", "n", "-z", "n", "-o", (char *)out, (char *)in, NULL};
    char home[MS_PATH_MAX + 8];
    snprintf(home, sizeof home, "HOME=%s", tmp);
    char *envp[] = {home, "LC_ALL=C", NULL};
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa)) return ms_error(MS_ENOMEM, "out of memory");
    int e = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (!e) e = posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (!e) e = posix_spawn_file_actions_adddup2(&fa, 1, 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    if (!e) e = posix_spawn_file_actions_addclosefrom_np(&fa, 3); /* no store or lock descriptor in the child */
#endif
    pid_t pid = 0;
    if (!e) e = posix_spawn(&pid, exe, &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    if (e) return ms_error(e, "%s: cannot run %s: %s", series, exe, strerror(e));
    int ws = 0;
    MS_TRY(wait_child(series, pid, stop, &ws));
    if (WIFSIGNALED(ws))
        return ms_error(MS_EIO, "%s: dcm2niix failed (killed by signal %d)", series, WTERMSIG(ws));
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
        return ms_error(MS_EIO, "%s: dcm2niix failed (exit %d)", series, WIFEXITED(ws) ? WEXITSTATUS(ws) : -1);
    return MS_OK;
}

/* The converter's NIfTI files, sorted, as full paths. */
static ms_status list_output(const char *series, const char *out, ms_dicom_conv *c)
{
    char **names = NULL;
    int n = 0;
    MS_TRY(ms_path_list_nii(out, &names, &n));
    ms_status st = n ? MS_OK : ms_error(MS_EFORMAT, "%s: dcm2niix wrote no NIfTI file", series);
    c->nii = st ? NULL : calloc((size_t)n, sizeof *c->nii);
    if (!st && !c->nii) st = ms_error(MS_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        if (!st && !(c->nii[c->n] = ms_path_join_new(out, names[i]))) st = ms_error(MS_ENOMEM, "out of memory");
        if (!st) c->n++;
        free(names[i]);
    }
    free(names);
    return st;
}

ms_status ms_dicom_convert(const char *series, const char *const *files, int n, volatile sig_atomic_t *stop,
                           ms_dicom_conv *c)
{
    memset(c, 0, sizeof *c);
    char exe[MS_PATH_MAX], in[MS_PATH_MAX], out[MS_PATH_MAX], log[MS_PATH_MAX];
    MS_TRY(ms_dicom_find_converter(series, exe, sizeof exe));
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    char tmpl[MS_PATH_MAX];
    MS_TRY(ms_path_fmt(tmpl, "%s/mrisam-dicom-XXXXXX", base));
    if (!mkdtemp(tmpl))
        return ms_error(errno, "%s: cannot create a temporary folder in %s: %s", series, base, strerror(errno));
    if (!(c->dir = strdup(tmpl))) {
        ms_dir_remove(tmpl);
        return ms_error(MS_ENOMEM, "out of memory");
    }
    ms_status st = ms_path_join(in, c->dir, "in");
    if (!st) st = ms_path_join(out, c->dir, "out");
    if (!st) st = ms_path_join(log, c->dir, "dcm2niix.log");
    if (!st && (mkdir(in, 0700) || mkdir(out, 0700)))
        st = ms_error(errno, "%s: cannot create a temporary folder in %s: %s", series, base, strerror(errno));
    if (!st) st = link_inputs(series, in, files, n);
    if (!st) st = run_converter(series, exe, c->dir, in, out, log, stop);
    if (!st) st = list_output(series, out, c);
    if (st) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", ms_errmsg()); /* the removal must not replace the message */
        ms_dicom_conv_free(c);
        ms_error(st, "%s", msg);
    }
    return st;
}

ms_status ms_dicom_conv_free(ms_dicom_conv *c)
{
    ms_status st = MS_OK;
    if (c->dir) st = ms_dir_remove(c->dir);
    for (int i = 0; i < c->n; i++) free(c->nii[i]);
    free(c->nii);
    free(c->dir);
    memset(c, 0, sizeof *c);
    return st;
}
