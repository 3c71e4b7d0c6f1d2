/* kernels/base/path.c — see path.h. */
#include "base/path.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* The error of a path that did not fit: out holds its first MS_PATH_MAX − 1 bytes, n is its full length. */
static ms_status too_long(char *out, size_t n)
{
    /* the message names the path by its start: the whole of it would not fit the one-line message either */
    out[200] = 0;
    ms_error(MS_EINVAL, "%s...: path too long (%zu bytes, at most %d)", out, n, MS_PATH_MAX - 1);
    out[0] = 0;
    return MS_EINVAL;
}

ms_status ms_path_join(char *out, const char *dir, const char *name)
{
    int k = snprintf(out, MS_PATH_MAX, "%s/%s", dir, name);
    if (k >= 0 && k < MS_PATH_MAX) return MS_OK;
    return too_long(out, strlen(dir) + 1 + strlen(name));
}

ms_status ms_path_fmt(char *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(out, MS_PATH_MAX, fmt, ap);
    va_end(ap);
    if (k >= 0 && k < MS_PATH_MAX) return MS_OK;
    if (k < 0) { /* an encoding error: nothing sensible was written */
        out[0] = 0;
        return ms_error(MS_EINVAL, "%s: path format failed", fmt);
    }
    return too_long(out, (size_t)k);
}

char *ms_path_join_new(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

const char *ms_path_base(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

const char *ms_path_nii_suffix(const char *name)
{
    size_t n = strlen(name);
    if (n > 7 && strcmp(name + n - 7, ".nii.gz") == 0) return name + n - 7;
    if (n > 4 && strcmp(name + n - 4, ".nii") == 0) return name + n - 4;
    return NULL;
}

int ms_path_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

ms_status ms_path_list(const char *dir, int (*keep)(const char *name), char ***names, int *n)
{
    *names = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return ms_error(errno, "%s: %s", dir, strerror(errno));
    char **v = NULL;
    int k = 0, cap = 0;
    ms_status st = MS_OK;
    struct dirent *e;
    while (!st && (e = readdir(d))) {
        if (e->d_name[0] == '.' || !keep(e->d_name)) continue;
        if (k == cap) {
            char **t = realloc(v, (size_t)(cap = cap ? 2 * cap : 16) * sizeof *t);
            if (!t) { st = ms_error(MS_ENOMEM, "%s: out of memory", dir); break; }
            v = t;
        }
        if (!(v[k] = strdup(e->d_name))) st = ms_error(MS_ENOMEM, "%s: out of memory", dir);
        else k++;
    }
    closedir(d);
    if (st) {
        for (int i = 0; i < k; i++) free(v[i]);
        free(v);
        return st;
    }
    if (k) qsort(v, (size_t)k, sizeof *v, ms_cmp_str);
    *names = v;
    *n = k;
    return MS_OK;
}

static int is_nii(const char *name) { return ms_path_nii_suffix(name) != NULL; }

ms_status ms_path_list_nii(const char *dir, char ***names, int *n) { return ms_path_list(dir, is_nii, names, n); }

int ms_str_ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

int ms_str_ends_with_nocase(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcasecmp(s + a - b, suffix) == 0;
}

int ms_cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }
