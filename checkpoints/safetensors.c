/* checkpoints/safetensors.c — see safetensors.h. Rules follow huggingface/safetensors' Rust validator. */
#include "checkpoints/safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "checkpoints/internal.h"

typedef struct span { uint64_t b, e; int idx; } span;

static int cmp_span(const void *a, const void *b)
{
    const span *x = a, *y = b;
    return x->b < y->b ? -1 : x->b > y->b ? 1 : (x->e > y->e) - (x->e < y->e);
}

/* A JSON number that is an exact non-negative integer (JSON numbers are doubles in cJSON: at most 2^53). */
static int json_u64(const cJSON *j, uint64_t *v)
{
    if (!cJSON_IsNumber(j)) return 0;
    double d = j->valuedouble;
    if (!(d >= 0 && d <= 9007199254740992.0) || floor(d) != d) return 0;
    *v = (uint64_t)d;
    return 1;
}

static int dtype_from_name(const char *s, ms_dtype *dt)
{
    for (int d = 0; d < MS_DTYPE_COUNT; d++)
        if (strcmp(s, ms_dtype_name((ms_dtype)d)) == 0) {
            *dt = (ms_dtype)d;
            return 1;
        }
    return 0;
}

/* What cJSON leaves unchecked in a header it parsed (h[0..end) the JSON value, h[end..n) the rest): the text must
 * be UTF-8, as the format requires; no string may hold a NUL, raw or escaped (a C string would end the name
 * there); after the value only the spaces writers pad with. */
static ms_status check_header_text(const char *path, const uint8_t *h, size_t end, size_t n)
{
    char shown[256];
    int depth = 0;
    for (size_t i = 0; i < end;) {
        if (h[i] != '"') {
            depth += h[i] == '{' || h[i] == '[' ? 1 : h[i] == '}' || h[i] == ']' ? -1 : 0;
            MS_FAIL_IF(h[i] >= 0x80, MS_EFORMAT, "%s: safetensors header is not UTF-8 at byte %zu", path, i);
            i++;
            continue;
        }
        size_t b = ++i, l;
        int nul = 0, bad = 0;
        for (; i < end && h[i] != '"'; i += l) {
            l = h[i] == '\\' ? 2 : ms_utf8_len(h + i, end - i);
            if (h[i] == '\\' && i + 6 <= end && memcmp(h + i + 1, "u0000", 5) == 0) nul = 1;
            nul |= h[i] == 0;
            if (!l) bad = l = 1;
        }
        if (nul || bad) {
            size_t k = i + 1;
            while (k < end && (h[k] == ' ' || h[k] == '\t' || h[k] == '\n' || h[k] == '\r')) k++;
            ms_escape_bytes(h + b, i - b, shown, sizeof shown);
            return ms_error(MS_EFORMAT, "%s: %s \"%s\" %s", path,
                            depth == 1 && k < end && h[k] == ':' ? "tensor name" : "header string", shown,
                            bad ? "is not valid UTF-8" : "holds a NUL character");
        }
        i++;
    }
    for (size_t i = end; i < n; i++)
        MS_FAIL_IF(h[i] != ' ', MS_EFORMAT,
                   "%s: safetensors header holds byte 0x%02x after the JSON, at header byte %zu (only space padding)",
                   path, h[i], i);
    return MS_OK;
}

ms_status ms_safetensors_read(const char *path, const ms_map *m, ms_state_dict *out)
{
    MS_FAIL_IF(m->size < 8, MS_EFORMAT, "%s: truncated safetensors file", path);
    uint64_t hn = ms_le64(m->p);
    MS_FAIL_IF(hn > MS_SAFETENSORS_MAX_HEADER, MS_EFORMAT, "%s: safetensors header of %llu bytes (limit %u)", path,
               (unsigned long long)hn, MS_SAFETENSORS_MAX_HEADER);
    MS_FAIL_IF(hn > m->size - 8, MS_EFORMAT, "%s: safetensors header of %llu bytes runs past the end of the file", path,
               (unsigned long long)hn);
    const uint8_t *data = m->p + 8 + hn;
    uint64_t dsize = m->size - 8 - hn;
    ms_status rc = MS_OK;
    span *sp = NULL;
    const char **names = NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)m->p + 8, (size_t)hn, &end, 0);
    if (!cJSON_IsObject(root)) {
        rc = ms_error(MS_EFORMAT, "%s: safetensors header is not a JSON object", path);
        goto leave;
    }
    if ((rc = check_header_text(path, m->p + 8, (size_t)(end - (const char *)m->p - 8), (size_t)hn))) goto leave;
    int n = cJSON_GetArraySize(root), nt = 0;
    sp = calloc((size_t)n + 1, sizeof *sp);
    names = calloc((size_t)n + 1, sizeof *names);
    if (!sp || !names) {
        rc = ms_error(MS_ENOMEM, "%s: out of memory", path);
        goto leave;
    }
    /* Pass 1: validate every entry and its byte range. */
    int i = 0;
    for (cJSON *it = root->child; it; it = it->next, i++) {
        const char *name = it->string;
        if (!name || !name[0]) {
            rc = ms_error(MS_EFORMAT, "%s: empty tensor name in the header", path);
            goto leave;
        }
        if (strcmp(name, "__metadata__") == 0) {
            if (!cJSON_IsObject(it) || out->meta_json) {
                rc = ms_error(MS_EFORMAT, "%s: __metadata__ is not a single object", path);
                goto leave;
            }
            for (cJSON *kv = it->child; kv; kv = kv->next)
                if (!cJSON_IsString(kv)) {
                    rc = ms_error(MS_EFORMAT, "%s: __metadata__ value %.100s is not a string", path, kv->string);
                    goto leave;
                }
            char *txt = cJSON_PrintUnformatted(it);
            if (txt) out->meta_json = strdup(txt);
            cJSON_free(txt);
            if (!out->meta_json) {
                rc = ms_error(MS_ENOMEM, "%s: out of memory", path);
                goto leave;
            }
            continue;
        }
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
        const cJSON *of = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        ms_dtype dtype;
        if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2) {
            rc = ms_error(MS_EFORMAT, "%s: tensor %.200s: needs dtype, shape and data_offsets [begin, end]", path,
                          name);
            goto leave;
        }
        if (!dtype_from_name(dt->valuestring, &dtype)) {
            rc = ms_error(MS_EUNSUPPORTED, "%s: tensor %.200s: dtype %.20s is not supported", path, name,
                          dt->valuestring);
            goto leave;
        }
        int nd = cJSON_GetArraySize(sh);
        if (nd > MS_MAX_DIMS) {
            rc = ms_error(MS_EFORMAT, "%s: tensor %.200s has %d dims (at most %d)", path, name, nd, MS_MAX_DIMS);
            goto leave;
        }
        uint64_t numel = 1, b, e, d;
        int k = 0;
        for (const cJSON *x = sh->child; x; x = x->next, k++)
            if (!json_u64(x, &d) || (d && numel > UINT64_MAX / d)) {
                rc = ms_error(MS_EFORMAT, "%s: tensor %.200s: bad shape", path, name);
                goto leave;
            } else numel *= d;
        if (!json_u64(of->child, &b) || !json_u64(of->child->next, &e) || b > e || e > dsize) {
            rc = ms_error(MS_EFORMAT, "%s: tensor %.200s: data_offsets outside the %llu-byte data area", path, name,
                          (unsigned long long)dsize);
            goto leave;
        }
        if (numel > UINT64_MAX / ms_dtype_size(dtype) || numel * ms_dtype_size(dtype) != e - b) {
            rc = ms_error(MS_EFORMAT, "%s: tensor %.200s: %llu bytes for %llu elements of %s", path, name,
                          (unsigned long long)(e - b), (unsigned long long)numel, ms_dtype_name(dtype));
            goto leave;
        }
        sp[nt] = (span){b, e, i};
        names[nt++] = name;
    }
    if ((rc = ms_names_unique(path, names, nt))) goto leave;
    /* The buffers must tile the data area exactly: no overlap, no gap, nothing left over. */
    qsort(sp, (size_t)nt, sizeof *sp, cmp_span);
    uint64_t at = 0;
    for (int j = 0; j < nt; j++) {
        if (sp[j].b != at) {
            rc = ms_error(MS_EFORMAT, "%s: tensor buffers %s at byte %llu", path,
                          sp[j].b < at ? "overlap" : "leave a gap", (unsigned long long)sp[j].b);
            goto leave;
        }
        at = sp[j].e;
    }
    if (at != dsize) {
        rc = ms_error(MS_EFORMAT, "%s: the tensors cover %llu of %llu data bytes", path, (unsigned long long)at,
                      (unsigned long long)dsize);
        goto leave;
    }
    /* Pass 2: copy out, in header order. */
    i = 0;
    for (cJSON *it = root->child; it; it = it->next, i++) {
        if (strcmp(it->string, "__metadata__") == 0) continue;
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
        const cJSON *of = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        ms_dtype dtype = MS_DTYPE_F32;
        dtype_from_name(cJSON_GetObjectItemCaseSensitive(it, "dtype")->valuestring, &dtype);
        int64_t shape[MS_MAX_DIMS];
        int nd = 0;
        uint64_t b = 0, e = 0, d = 0;
        for (const cJSON *x = sh->child; x; x = x->next) {
            json_u64(x, &d);
            shape[nd++] = (int64_t)d;
        }
        json_u64(of->child, &b);
        json_u64(of->child->next, &e);
        void *buf = NULL;
        if (e > b) {
            if (!(buf = malloc((size_t)(e - b)))) {
                rc = ms_error(MS_ENOMEM, "%s: tensor %.200s: out of memory", path, it->string);
                goto leave;
            }
            memcpy(buf, data + b, (size_t)(e - b));
        }
        if ((rc = ms_sd_push(out, it->string, dtype, shape, nd, buf))) goto leave;
    }
leave:
    cJSON_Delete(root);
    free(sp);
    free(names);
    return rc;
}

/* ---- writer ------------------------------------------------------------------------------------------------ */

static void sputs(ms_buf *b, const char *s) { ms_buf_put(b, s, strlen(s)); }
static void sput_json_str(ms_buf *b, const char *s)
{
    sputs(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char t[8];
        if (c == '"' || c == '\\') { t[0] = '\\'; t[1] = (char)c; ms_buf_put(b, t, 2); }
        else if (c < 0x20) { snprintf(t, sizeof t, "\\u%04x", c); sputs(b, t); }
        else ms_buf_put(b, (const char *)&c, 1);
    }
    sputs(b, "\"");
}

ms_status ms_safetensors_write(const char *path, const ms_state_dict *sd)
{
    ms_buf h = {0};
    char num[64];
    if (sd->meta_json) {
        cJSON *mj = cJSON_Parse(sd->meta_json);
        int ok = cJSON_IsObject(mj);
        for (cJSON *kv = ok ? mj->child : NULL; kv; kv = kv->next) ok &= cJSON_IsString(kv);
        cJSON_Delete(mj);
        MS_FAIL_IF(!ok, MS_EINVAL, "%s: metadata must be a JSON object of strings", path);
    }
    /* The header is UTF-8 JSON: refuse here what no reader could take back. */
    MS_FAIL_IF(sd->meta_json && !ms_utf8_valid(sd->meta_json, strlen(sd->meta_json)), MS_EUNSUPPORTED,
               "%s: metadata is not valid UTF-8", path);
    MS_TRY(ms_names_utf8(path, sd, "safetensors headers are UTF-8"));
    sputs(&h, "{");
    if (sd->meta_json) {
        sputs(&h, "\"__metadata__\":");
        sputs(&h, sd->meta_json);
    }
    uint64_t off = 0;
    for (int i = 0; i < sd->n; i++) {
        const ms_tensor *t = &sd->e[i].t;
        if (i || sd->meta_json) sputs(&h, ",");
        sput_json_str(&h, sd->e[i].name);
        sputs(&h, ":{\"dtype\":\"");
        sputs(&h, ms_dtype_name(t->dtype));
        sputs(&h, "\",\"shape\":[");
        for (int k = 0; k < t->ndim; k++) {
            snprintf(num, sizeof num, k ? ",%lld" : "%lld", (long long)t->shape[k]);
            sputs(&h, num);
        }
        uint64_t bytes = ms_tensor_bytes(t);
        snprintf(num, sizeof num, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                 (unsigned long long)(off + bytes));
        sputs(&h, num);
        off += bytes;
    }
    sputs(&h, "}");
    while ((8 + h.n) % 8) sputs(&h, " "); /* the data area starts 8-byte aligned */
    ms_afile f = {0};
    ms_status rc = h.oom ? ms_error(MS_ENOMEM, "%s: out of memory", path) : ms_afile_open(&f, path);
    if (rc) goto leave;
    uint8_t len[8];
    ms_put64(len, h.n);
    if ((rc = ms_afile_write(&f, len, 8)) || (rc = ms_afile_write(&f, h.p, h.n))) goto leave;
    for (int i = 0; i < sd->n; i++)
        if ((rc = ms_afile_write(&f, sd->e[i].t.data, ms_tensor_bytes(&sd->e[i].t)))) goto leave;
    rc = ms_afile_commit(&f);
leave:
    ms_afile_abort(&f);
    free(h.p);
    return rc;
}
