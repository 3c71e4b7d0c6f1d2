/* checkpoints/state_dict.c — the state-dict container and dtype conversion to f32 (format dispatch: format.c).
 * Invariants: names are unique and non-empty; every entry's data holds numel·dtype-size bytes (NULL when 0). */
#include "checkpoints/state_dict.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/path.h"
#include "checkpoints/internal.h"

void ms_sd_init(ms_state_dict *sd) { memset(sd, 0, sizeof *sd); }

void ms_sd_free(ms_state_dict *sd)
{
    for (int i = 0; i < sd->n; i++) {
        free(sd->e[i].name);
        free(sd->e[i].t.data);
    }
    free(sd->e);
    free(sd->meta_json);
    memset(sd, 0, sizeof *sd);
}

ms_status ms_sd_push(ms_state_dict *sd, const char *name, ms_dtype dtype, const int64_t *shape, int ndim, void *data)
{
    ms_status rc = MS_OK;
    if (!name || !name[0] || (unsigned)dtype >= MS_DTYPE_COUNT || ndim < 0 || ndim > MS_MAX_DIMS) {
        rc = ms_error(MS_EINVAL, "%s: bad tensor name, dtype or rank", name ? name : "(null)");
        goto fail;
    }
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) {
            rc = ms_error(MS_EINVAL, "%s: negative dimension", name);
            goto fail;
        }
    if (sd->n == sd->cap) {
        int cap = sd->cap ? 2 * sd->cap : 64;
        ms_sd_entry *e = realloc(sd->e, (size_t)cap * sizeof *e);
        if (!e) {
            rc = ms_error(MS_ENOMEM, "%s: out of memory", name);
            goto fail;
        }
        sd->e = e;
        sd->cap = cap;
    }
    ms_sd_entry *e = &sd->e[sd->n];
    memset(e, 0, sizeof *e);
    if (!(e->name = strdup(name))) {
        rc = ms_error(MS_ENOMEM, "%s: out of memory", name);
        goto fail;
    }
    e->t.data = data;
    e->t.dtype = dtype;
    e->t.ndim = ndim;
    e->t.device = MS_DEV_CPU;
    for (int i = 0; i < ndim; i++) e->t.shape[i] = shape[i];
    sd->n++;
    return MS_OK;
fail:
    free(data);
    return rc;
}

ms_status ms_sd_add_take(ms_state_dict *sd, const char *name, ms_dtype dtype, const int64_t *shape, int ndim,
                         void *data)
{
    if (name && ms_sd_find(sd, name)) {
        free(data);
        return ms_error(MS_EINVAL, "%s: duplicate tensor name", name);
    }
    return ms_sd_push(sd, name, dtype, shape, ndim, data);
}

ms_status ms_sd_add(ms_state_dict *sd, const char *name, ms_dtype dtype, const int64_t *shape, int ndim,
                    const void *data)
{
    MS_FAIL_IF((unsigned)dtype >= MS_DTYPE_COUNT || ndim < 0 || ndim > MS_MAX_DIMS, MS_EINVAL,
               "%s: bad dtype or rank", name ? name : "(null)");
    size_t bytes = ms_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        MS_FAIL_IF(shape[i] < 0 || (shape[i] && bytes > SIZE_MAX / (size_t)shape[i]), MS_EINVAL,
                   "%s: bad shape", name ? name : "(null)");
        bytes *= (size_t)shape[i];
    }
    void *copy = NULL;
    if (bytes) {
        copy = malloc(bytes);
        MS_FAIL_IF(!copy, MS_ENOMEM, "%s: out of memory", name ? name : "(null)");
        memcpy(copy, data, bytes);
    }
    return ms_sd_add_take(sd, name, dtype, shape, ndim, copy);
}

const ms_sd_entry *ms_sd_find(const ms_state_dict *sd, const char *name)
{
    for (int i = 0; i < sd->n; i++)
        if (strcmp(sd->e[i].name, name) == 0) return &sd->e[i];
    return NULL;
}

int ms_sd_remove(ms_state_dict *sd, const char *name)
{
    for (int i = 0; i < sd->n; i++)
        if (strcmp(sd->e[i].name, name) == 0) {
            free(sd->e[i].name);
            free(sd->e[i].t.data);
            memmove(&sd->e[i], &sd->e[i + 1], (size_t)(sd->n - i - 1) * sizeof *sd->e);
            sd->n--;
            return 1;
        }
    return 0;
}

ms_status ms_names_unique(const char *path, const char *const *names, int n)
{
    const char **s = malloc((size_t)(n + 1) * sizeof *s);
    MS_FAIL_IF(!s, MS_ENOMEM, "%s: out of memory", path);
    memcpy(s, names, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, ms_cmp_str);
    ms_status rc = MS_OK;
    for (int i = 1; i < n; i++)
        if (strcmp(s[i - 1], s[i]) == 0) {
            rc = ms_error(MS_EFORMAT, "%s: duplicate tensor name %.200s", path, s[i]);
            break;
        }
    free(s);
    return rc;
}

size_t ms_utf8_len(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    size_t len = c < 0x80 ? 1 : c < 0xc2 ? 0 : c <= 0xdf ? 2 : c <= 0xef ? 3 : c <= 0xf4 ? 4 : 0;
    if (!len || len > n) return 0;
    /* the second byte's range depends on the first (overlongs, surrogates, > U+10FFFF); the rest are continuations */
    uint8_t lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80, hi = c == 0xed ? 0x9f : c == 0xf4 ? 0x8f : 0xbf;
    if (len > 1 && (s[1] < lo || s[1] > hi)) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    return len;
}

int ms_utf8_valid(const char *s, size_t n)
{
    for (size_t i = 0, l; i < n; i += l)
        if (!(l = ms_utf8_len((const uint8_t *)s + i, n - i))) return 0;
    return 1;
}

void ms_escape_bytes(const uint8_t *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < cap && o < 200; i++)
        o += (size_t)snprintf(out + o, cap - o, s[i] >= 0x20 && s[i] < 0x7f ? "%c" : "\\x%02x", s[i]);
    out[o] = 0;
}

ms_status ms_names_utf8(const char *path, const ms_state_dict *sd, const char *why)
{
    for (int i = 0; i < sd->n; i++) {
        const char *nm = sd->e[i].name;
        if (ms_utf8_valid(nm, strlen(nm))) continue;
        char shown[256];
        ms_escape_bytes((const uint8_t *)nm, strlen(nm), shown, sizeof shown);
        return ms_error(MS_EUNSUPPORTED, "%s: tensor name \"%s\" is not valid UTF-8 (%s)", path, shown, why);
    }
    return MS_OK;
}

ms_status ms_sd_get_f32(const ms_state_dict *sd, const char *name, const int64_t *shape, int ndim, float *dst)
{
    const ms_sd_entry *e = ms_sd_find(sd, name);
    MS_FAIL_IF(!e, MS_ENOTFOUND, "%s: missing", name);
    int same = e->t.ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = e->t.shape[i] == shape[i];
    if (!same) {
        char a[160], b[160];
        return ms_error(MS_ESHAPE, "%s: shape %s in file, expected %s", name,
                        ms_shape_str(e->t.shape, e->t.ndim, a, sizeof a), ms_shape_str(shape, ndim, b, sizeof b));
    }
    int64_t n = ms_tensor_numel(&e->t);
    const void *p = e->t.data;
    switch (e->t.dtype) {
    case MS_DTYPE_F32: if (n) memcpy(dst, p, (size_t)n * 4); break;
    case MS_DTYPE_F16: for (int64_t i = 0; i < n; i++) dst[i] = ms_f16_to_f32(((const uint16_t *)p)[i]); break;
    case MS_DTYPE_BF16: for (int64_t i = 0; i < n; i++) dst[i] = ms_bf16_to_f32(((const uint16_t *)p)[i]); break;
    case MS_DTYPE_F64: for (int64_t i = 0; i < n; i++) dst[i] = (float)((const double *)p)[i]; break;
    case MS_DTYPE_I64: for (int64_t i = 0; i < n; i++) dst[i] = (float)((const int64_t *)p)[i]; break;
    case MS_DTYPE_I32: for (int64_t i = 0; i < n; i++) dst[i] = (float)((const int32_t *)p)[i]; break;
    case MS_DTYPE_I16: for (int64_t i = 0; i < n; i++) dst[i] = (float)((const int16_t *)p)[i]; break;
    case MS_DTYPE_I8: for (int64_t i = 0; i < n; i++) dst[i] = (float)((const int8_t *)p)[i]; break;
    case MS_DTYPE_U8:
    case MS_DTYPE_BOOL: for (int64_t i = 0; i < n; i++) dst[i] = (float)((const uint8_t *)p)[i]; break;
    case MS_DTYPE_U16: for (int64_t i = 0; i < n; i++) dst[i] = (float)((const uint16_t *)p)[i]; break;
    case MS_DTYPE_U32: for (int64_t i = 0; i < n; i++) dst[i] = (float)((const uint32_t *)p)[i]; break;
    case MS_DTYPE_U64: for (int64_t i = 0; i < n; i++) dst[i] = (float)((const uint64_t *)p)[i]; break;
    default: return ms_error(MS_EUNSUPPORTED, "%s: unknown dtype", name);
    }
    return MS_OK;
}
