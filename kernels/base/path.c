/* kernels/base/path.c — see path.h. */
#include "base/path.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

ms_status ms_path_join(char *out, const char *dir, const char *name)
{
    int k = snprintf(out, MS_PATH_MAX, "%s/%s", dir, name);
    if (k < 0 || k >= MS_PATH_MAX) {
        out[0] = 0;
        return ms_error(MS_EINVAL, "%s/%s: path too long", dir, name);
    }
    return MS_OK;
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
