/* kernels/base/path.h — the small string and path helpers every layer needs, once.
 *
 * MS_PATH_MAX is the one size of a fixed path buffer (Linux's PATH_MAX, which realpath() fills); a path that would
 * not fit is an error (ms_path_join, ms_path_fmt), never silently truncated.
 */
#ifndef MS_PATH_H
#define MS_PATH_H

#include "base/status.h"

#define MS_PATH_MAX 4096

/* "dir/name" into out[MS_PATH_MAX]; MS_EINVAL "<the path's first 200 bytes>...: path too long (...)" and out = ""
 * when it does not fit. */
ms_status ms_path_join(char *out, const char *dir, const char *name);
/* printf into out[MS_PATH_MAX], for paths that are more than "dir/name"; the same error, and out = "", when the
 * result does not fit. */
ms_status ms_path_fmt(char *out, const char *fmt, ...) MS_PRINTF(2, 3);
/* The same, malloc'ed (any length); NULL when out of memory. */
char *ms_path_join_new(const char *dir, const char *name);
/* The part after the last '/' (the whole path when there is none). */
const char *ms_path_base(const char *path);
/* The ".nii.gz" or ".nii" ending of name (case-sensitive, as `mrisam eval` and `predict` pair files), or NULL. */
const char *ms_path_nii_suffix(const char *name);
/* 1 when path exists and is a directory. */
int ms_path_is_dir(const char *path);
/* The names (not paths) of dir's .nii / .nii.gz files (ms_path_nii_suffix; dot files left out), sorted by strcmp,
 * into a malloc'ed array of malloc'ed strings (*n may be 0). On failure nothing is left allocated. */
ms_status ms_path_list_nii(const char *dir, char ***names, int *n);
/* The same for the names keep() accepts. */
ms_status ms_path_list(const char *dir, int (*keep)(const char *name), char ***names, int *n);

/* 1 when s ends with suffix (byte-exact / ASCII case-insensitive). */
int ms_str_ends_with(const char *s, const char *suffix);
int ms_str_ends_with_nocase(const char *s, const char *suffix);
/* strcmp of two (char *) array elements: the comparator for qsort/bsearch over string arrays. */
int ms_cmp_str(const void *a, const void *b);

#endif
