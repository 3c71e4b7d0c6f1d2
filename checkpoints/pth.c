/* checkpoints/pth.c — see pth.h. */
#include "checkpoints/pth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "checkpoints/internal.h"
#include "checkpoints/pickle.h"
#include "checkpoints/zip.h"

/* A view may hold more elements than its storage only through overlapping strides (expand); cap what such a
 * view may allocate, since its size is not backed by bytes in the file. */
#define MS_PTH_MAX_EXPANDED (256ull << 20)
/* All views together may materialise at most MS_PTH_ALIAS_FACTOR times the file's bytes plus MS_PTH_ALIAS_SLACK,
 * and never more than MS_PTH_MAX_MATERIALISED. Ordinary views are disjoint slices of storages that lie in the file
 * (at most 1x), tied weights (two names on one storage) 2x; only aliasing or stride-0 views go past that, and a
 * few of them over a tiny storage would otherwise cost gigabytes and minutes of copying. */
#define MS_PTH_ALIAS_FACTOR 4
#define MS_PTH_ALIAS_SLACK (64ull << 20)
#define MS_PTH_MAX_MATERIALISED (64ull << 30)

/* One distinct storage: where its bytes are in the file. */
typedef struct sto_ref {
    const char *key;
    ms_dtype dtype;
    int64_t numel;
    const uint8_t *data; /* NULL until located */
} sto_ref;

static int cmp_sto(const void *a, const void *b)
{
    return strcmp(((const sto_ref *)a)->key, ((const sto_ref *)b)->key);
}

/* Distinct storages of the pickle, sorted by key; the same key must always carry the same class and size. */
static ms_status collect_storages(const char *path, const ms_pkl_sd *p, sto_ref **out, int *n_out)
{
    *n_out = 0;
    sto_ref *s = calloc((size_t)p->nsto + 1, sizeof *s);
    MS_FAIL_IF(!s, MS_ENOMEM, "%s: out of memory", path);
    for (int i = 0; i < p->nsto; i++) s[i] = (sto_ref){p->sto[i].key, p->sto[i].dtype, p->sto[i].numel, NULL};
    qsort(s, (size_t)p->nsto, sizeof *s, cmp_sto);
    int n = 0;
    for (int i = 0; i < p->nsto; i++) {
        if (n && strcmp(s[n - 1].key, s[i].key) == 0) {
            if (s[n - 1].dtype != s[i].dtype || s[n - 1].numel != s[i].numel) {
                ms_status rc = ms_error(MS_EFORMAT, "%s: storage %s is declared with two different types or sizes",
                                        path, s[i].key);
                free(s);
                return rc;
            }
            continue;
        }
        s[n++] = s[i];
    }
    *out = s;
    *n_out = n;
    return MS_OK;
}

static sto_ref *find_sto(sto_ref *s, int n, const char *key)
{
    sto_ref k = {key, 0, 0, NULL};
    return bsearch(&k, s, (size_t)n, sizeof *s, cmp_sto);
}

/* Elements of view t, checked against the per-view limits. */
static ms_status view_numel(const char *path, const ms_pkl_tensor *t, int64_t *numel)
{
    size_t es = ms_dtype_size(t->dtype);
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->size[i]; /* no overflow: checked by the pickle reader */
    if (n > t->storage_numel && (uint64_t)n * es > MS_PTH_MAX_EXPANDED)
        return ms_error(MS_EFORMAT, "%s: tensor %s: an expanded view of %lld elements from a storage of %lld", path,
                        t->name, (long long)n, (long long)t->storage_numel);
    if ((uint64_t)n > SIZE_MAX / es) return ms_error(MS_EFORMAT, "%s: tensor %s too large", path, t->name);
    *numel = n;
    return MS_OK;
}

/* Refuses, before anything is copied, views that together materialise more than the file can back (see
 * MS_PTH_ALIAS_FACTOR): any number of aliasing views is one O(views) pass, not a copy each. */
static ms_status check_materialised(const char *path, const ms_pkl_sd *p, uint64_t file_size)
{
    uint64_t total = 0, limit = MS_PTH_MAX_MATERIALISED;
    if (file_size < (MS_PTH_MAX_MATERIALISED - MS_PTH_ALIAS_SLACK) / MS_PTH_ALIAS_FACTOR)
        limit = file_size * MS_PTH_ALIAS_FACTOR + MS_PTH_ALIAS_SLACK;
    for (int i = 0; i < p->n; i++) {
        int64_t numel;
        MS_TRY(view_numel(path, &p->t[i], &numel));
        uint64_t b = (uint64_t)numel * ms_dtype_size(p->t[i].dtype); /* < 2^63: checked by the pickle reader */
        total = b > UINT64_MAX - total ? UINT64_MAX : total + b;
    }
    MS_FAIL_IF(total > limit, MS_EFORMAT,
               "%s: tensor views materialise %llu bytes from a %llu-byte file (aliasing or stride-0 views)", path,
               (unsigned long long)total, (unsigned long long)file_size);
    return MS_OK;
}

/* Copies view t of storage base into a new contiguous buffer (byte-swapped when swap). */
static ms_status copy_view(const char *path, const ms_pkl_tensor *t, const uint8_t *base, int swap, void **out)
{
    *out = NULL;
    size_t es = ms_dtype_size(t->dtype);
    int64_t numel;
    MS_TRY(view_numel(path, t, &numel));
    if (numel == 0) return MS_OK;
    uint8_t *dst = malloc((size_t)numel * es);
    MS_FAIL_IF(!dst, MS_ENOMEM, "%s: tensor %s: out of memory (%lld elements)", path, t->name, (long long)numel);
    /* Walk the outer dims with a counter; the last dim is a run (memcpy when its stride is 1). */
    int nd = t->ndim;
    int64_t inner = nd ? t->size[nd - 1] : 1, istride = nd ? t->stride[nd - 1] : 1;
    int64_t idx[MS_MAX_DIMS] = {0};
    uint8_t *d = dst;
    for (int64_t done = 0; done < numel; done += inner) {
        int64_t off = t->offset;
        for (int k = 0; k < nd - 1; k++) off += idx[k] * t->stride[k];
        const uint8_t *s = base + (size_t)off * es;
        if (istride == 1) memcpy(d, s, (size_t)inner * es);
        else
            for (int64_t j = 0; j < inner; j++) memcpy(d + (size_t)j * es, s + (size_t)(j * istride) * es, es);
        d += (size_t)inner * es;
        for (int k = nd - 2; k >= 0; k--) {
            if (++idx[k] < t->size[k]) break;
            idx[k] = 0;
        }
    }
    if (swap && es > 1)
        for (int64_t i = 0; i < numel; i++) {
            uint8_t *e = dst + (size_t)i * es;
            for (size_t a = 0, b = es - 1; a < b; a++, b--) {
                uint8_t c = e[a];
                e[a] = e[b];
                e[b] = c;
            }
        }
    *out = dst;
    return MS_OK;
}

static ms_status build_sd(const char *path, const ms_pkl_sd *p, sto_ref *s, int ns, int swap, uint64_t file_size,
                          ms_state_dict *out)
{
    const char **names = malloc((size_t)(p->n + 1) * sizeof *names);
    MS_FAIL_IF(!names, MS_ENOMEM, "%s: out of memory", path);
    for (int i = 0; i < p->n; i++) names[i] = p->t[i].name;
    ms_status rc = ms_names_unique(path, names, p->n);
    free(names);
    MS_TRY(rc);
    MS_TRY(check_materialised(path, p, file_size));
    for (int i = 0; i < p->n; i++) {
        const ms_pkl_tensor *t = &p->t[i];
        sto_ref *r = find_sto(s, ns, t->key);
        MS_FAIL_IF(!r || !r->data, MS_EFORMAT, "%s: tensor %s: storage %s has no data", path, t->name, t->key);
        void *buf;
        MS_TRY(copy_view(path, t, r->data, swap, &buf));
        MS_TRY(ms_sd_push(out, t->name, t->dtype, t->size, t->ndim, buf));
    }
    return MS_OK;
}

static ms_status read_zip(const char *path, const ms_map *m, ms_state_dict *out)
{
    ms_zip z;
    ms_pkl_sd p = {0};
    sto_ref *s = NULL;
    int ns = 0, swap = 0;
    char *name = NULL, *where = NULL;
    MS_TRY(ms_zip_open(&z, m->p, m->size, path));
    ms_status rc = MS_OK;
    /* torch takes the folder from the first entry's name. */
    const char *slash = z.n ? strchr(z.e[0].name, '/') : NULL;
    if (!slash) {
        rc = ms_error(MS_EFORMAT, "%s: zip has no top-level folder (not a torch.save file)", path);
        goto leave;
    }
    size_t plen = (size_t)(slash - z.e[0].name), cap = plen + 2 * 64 + 32;
    name = malloc(cap);
    where = malloc(strlen(path) + cap);
    if (!name || !where) {
        rc = ms_error(MS_ENOMEM, "%s: out of memory", path);
        goto leave;
    }
    snprintf(name, cap, "%.*s/byteorder", (int)plen, z.e[0].name);
    const ms_zip_entry *e = ms_zip_find(&z, name);
    if (e) {
        const char *bo = (const char *)m->p + e->data_off;
        if (e->size == 3 && memcmp(bo, "big", 3) == 0) swap = 1;
        else if (!(e->size == 6 && memcmp(bo, "little", 6) == 0)) {
            rc = ms_error(MS_EFORMAT, "%s: byteorder record is neither \"little\" nor \"big\"", path);
            goto leave;
        }
    }
    snprintf(name, cap, "%.*s/data.pkl", (int)plen, z.e[0].name);
    if (!(e = ms_zip_find(&z, name))) {
        rc = ms_error(MS_EFORMAT, "%s: no %s in the zip (not a torch.save file)", path, name);
        goto leave;
    }
    sprintf(where, "%s:%s", path, name);
    /* torch checks CRC32 on read too: a damaged download fails here instead of loading wrong weights */
    if ((rc = ms_zip_check_crc(&z, e))) goto leave;
    size_t used;
    rc = ms_pickle_state_dict(m->p + e->data_off, e->size, where, 0, &p, &used);
    if (rc) goto leave;
    rc = collect_storages(path, &p, &s, &ns);
    if (rc) goto leave;
    for (int i = 0; i < ns; i++) {
        snprintf(name, cap, "%.*s/data/%s", (int)plen, z.e[0].name, s[i].key);
        e = ms_zip_find(&z, name);
        uint64_t bytes = (uint64_t)s[i].numel * ms_dtype_size(s[i].dtype); /* bounded by the pickle reader */
        if (!e) {
            rc = ms_error(MS_EFORMAT, "%s: storage %s: no zip entry %s", path, s[i].key, name);
            goto leave;
        }
        if (e->size != bytes) {
            rc = ms_error(MS_EFORMAT, "%s: storage %s: entry holds %llu bytes, the pickle declares %llu", path,
                          s[i].key, (unsigned long long)e->size, (unsigned long long)bytes);
            goto leave;
        }
        if ((rc = ms_zip_check_crc(&z, e))) goto leave;
        s[i].data = m->p + e->data_off;
    }
    rc = build_sd(path, &p, s, ns, swap, m->size, out);
leave:
    free(s);
    free(name);
    free(where);
    ms_pkl_sd_free(&p);
    ms_zip_close(&z);
    return rc;
}

/* pickle.dump(MAGIC_NUMBER, f, protocol=2): PROTO 2, LONG1 of 10 bytes, STOP. */
static const uint8_t legacy_magic[] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
                                       0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e};

static ms_status read_legacy(const char *path, const ms_map *m, ms_state_dict *out)
{
    ms_pkl_sd p = {0};
    ms_pkl_strlist keys = {0};
    sto_ref *s = NULL;
    int ns = 0, little = 1;
    int64_t proto;
    size_t pos = sizeof legacy_magic, used;
    ms_status rc = ms_pickle_int(m->p + pos, m->size - pos, path, &proto, &used);
    if (rc) goto leave;
    pos += used;
    if (proto != 1001) {
        rc = ms_error(MS_EUNSUPPORTED, "%s: legacy protocol version %lld (1001 is read)", path, (long long)proto);
        goto leave;
    }
    if ((rc = ms_pickle_sys_info(m->p + pos, m->size - pos, path, &little, &used))) goto leave;
    pos += used;
    if ((rc = ms_pickle_state_dict(m->p + pos, m->size - pos, path, 1, &p, &used))) goto leave;
    pos += used;
    if ((rc = ms_pickle_str_list(m->p + pos, m->size - pos, path, &keys, &used))) goto leave;
    pos += used;
    if ((rc = collect_storages(path, &p, &s, &ns))) goto leave;
    /* Records follow in key-list order: numel (i64, writer's byte order), then numel·size bytes. */
    for (int i = 0; i < keys.n; i++) {
        sto_ref *r = find_sto(s, ns, keys.s[i]);
        if (!r) {
            rc = ms_error(MS_EFORMAT, "%s: storage %s in the key list is not in the pickle", path, keys.s[i]);
            goto leave;
        }
        if (r->data) {
            rc = ms_error(MS_EFORMAT, "%s: storage %s listed twice", path, keys.s[i]);
            goto leave;
        }
        if (m->size - pos < 8) {
            rc = ms_error(MS_EFORMAT, "%s: truncated at storage %s", path, keys.s[i]);
            goto leave;
        }
        uint64_t numel = ms_le64(m->p + pos);
        if (!little) numel = __builtin_bswap64(numel);
        pos += 8;
        uint64_t bytes = (uint64_t)r->numel * ms_dtype_size(r->dtype);
        if (numel != (uint64_t)r->numel || m->size - pos < bytes) {
            rc = ms_error(MS_EFORMAT, "%s: storage %s: record of %llu elements (pickle says %lld, %llu bytes left)",
                          path, keys.s[i], (unsigned long long)numel, (long long)r->numel,
                          (unsigned long long)(m->size - pos));
            goto leave;
        }
        r->data = m->p + pos;
        pos += bytes;
    }
    rc = build_sd(path, &p, s, ns, !little, m->size, out);
leave:
    free(s);
    ms_pkl_strlist_free(&keys);
    ms_pkl_sd_free(&p);
    return rc;
}

ms_status ms_pth_read(const char *path, const ms_map *m, ms_state_dict *out)
{
    if (m->size >= 4 && memcmp(m->p, "PK\x03\x04", 4) == 0) return read_zip(path, m, out);
    if (m->size >= sizeof legacy_magic && memcmp(m->p, legacy_magic, sizeof legacy_magic) == 0)
        return read_legacy(path, m, out);
    return ms_error(MS_EFORMAT, "%s: not a torch.save file (neither zip nor legacy magic)", path);
}

/* ---- writer ------------------------------------------------------------------------------------------------ */

static void put1(ms_buf *b, uint8_t c) { ms_buf_put(b, &c, 1); }
static void put_str(ms_buf *b, const char *s)
{
    uint8_t h[5] = {'X'};
    size_t n = strlen(s);
    ms_put32(h + 1, (uint32_t)n);
    ms_buf_put(b, h, 5);
    ms_buf_put(b, s, n);
}
static void put_int(ms_buf *b, int64_t v)
{
    uint8_t h[10];
    if (v >= 0 && v < 256) { h[0] = 'K'; h[1] = (uint8_t)v; ms_buf_put(b, h, 2); }
    else if (v >= 0 && v < 65536) { h[0] = 'M'; ms_put16(h + 1, (uint16_t)v); ms_buf_put(b, h, 3); }
    else if (v >= INT32_MIN && v <= INT32_MAX) { h[0] = 'J'; ms_put32(h + 1, (uint32_t)v); ms_buf_put(b, h, 5); }
    else { h[0] = 0x8a; h[1] = 8; ms_put64(h + 2, (uint64_t)v); ms_buf_put(b, h, 10); }
}
/* GLOBAL the first time (memoised at slot), BINGET afterwards. */
static void put_global(ms_buf *b, const char *text, uint8_t slot, uint8_t *seen)
{
    if (*seen) {
        uint8_t h[2] = {'h', slot};
        ms_buf_put(b, h, 2);
        return;
    }
    put1(b, 'c');
    ms_buf_put(b, text, strlen(text));
    uint8_t h[2] = {'q', slot};
    ms_buf_put(b, h, 2);
    *seen = 1;
}

static const char *storage_global[MS_DTYPE_COUNT] = {
    [MS_DTYPE_F32] = "torch\nFloatStorage\n", [MS_DTYPE_F16] = "torch\nHalfStorage\n",
    [MS_DTYPE_BF16] = "torch\nBFloat16Storage\n", [MS_DTYPE_F64] = "torch\nDoubleStorage\n",
    [MS_DTYPE_I64] = "torch\nLongStorage\n", [MS_DTYPE_I32] = "torch\nIntStorage\n",
    [MS_DTYPE_I16] = "torch\nShortStorage\n", [MS_DTYPE_I8] = "torch\nCharStorage\n",
    [MS_DTYPE_U8] = "torch\nByteStorage\n", [MS_DTYPE_BOOL] = "torch\nBoolStorage\n",
};

static ms_status make_pickle(const char *path, const ms_state_dict *sd, ms_buf *b)
{
    uint8_t seen[2 + MS_DTYPE_COUNT] = {0}, odict_seen = 0;
    ms_buf_put(b, "\x80\x02", 2);
    put_global(b, "collections\nOrderedDict\n", 0, &odict_seen);
    ms_buf_put(b, ")R", 2);
    for (int i = 0; i < sd->n; i++) {
        const ms_sd_entry *e = &sd->e[i];
        const ms_tensor *t = &e->t;
        if ((unsigned)t->dtype >= MS_DTYPE_COUNT || !storage_global[t->dtype])
            return ms_error(MS_EUNSUPPORTED, "%s: tensor %s: dtype %s has no torch storage class", path, e->name,
                            ms_dtype_name(t->dtype));
        if (i % 1000 == 0) put1(b, '('); /* pickle's own batching: at most 1000 pairs per SETITEMS */
        put_str(b, e->name);
        put_global(b, "torch._utils\n_rebuild_tensor_v2\n", 1, &seen[1]);
        ms_buf_put(b, "((", 2);
        put_str(b, "storage");
        put_global(b, storage_global[t->dtype], (uint8_t)(2 + t->dtype), &seen[2 + t->dtype]);
        char key[24];
        snprintf(key, sizeof key, "%d", i);
        put_str(b, key);
        put_str(b, "cpu");
        put_int(b, ms_tensor_numel(t));
        ms_buf_put(b, "tQ", 2);
        put_int(b, 0);
        int64_t stride[MS_MAX_DIMS], s = 1;
        for (int k = t->ndim - 1; k >= 0; k--) {
            stride[k] = s;
            s *= t->shape[k];
        }
        for (int pass = 0; pass < 2; pass++) {
            put1(b, t->ndim ? '(' : ')');
            for (int k = 0; k < t->ndim; k++) put_int(b, pass ? stride[k] : t->shape[k]);
            if (t->ndim) put1(b, 't');
        }
        put1(b, 0x89);                    /* requires_grad = False */
        ms_buf_put(b, "h\x00)R", 4);             /* backward_hooks = OrderedDict() */
        ms_buf_put(b, "tR", 2);
        if (i % 1000 == 999 || i == sd->n - 1) put1(b, 'u');
    }
    put1(b, '.');
    MS_FAIL_IF(b->oom, MS_ENOMEM, "%s: out of memory", path);
    return MS_OK;
}

ms_status ms_pth_write(const char *path, const ms_state_dict *sd, const ms_pth_wopts *o)
{
    MS_TRY(ms_names_utf8(path, sd, "torch.load decodes names as UTF-8"));
    const char *prefix = o && o->prefix ? o->prefix : "archive";
    ms_buf b = {0};
    ms_afile f = {0};
    ms_zipw w = {0};
    char *name = malloc(strlen(prefix) + 64);
    ms_status rc = name ? make_pickle(path, sd, &b) : ms_error(MS_ENOMEM, "%s: out of memory", path);
    if (rc || (rc = ms_afile_open(&f, path))) goto leave;
    ms_zipw_init(&w, &f);
    w.force_zip64 = o ? o->force_zip64 : 0;
#define ADD(fmt, arg, data, size)                                                                          \
    do {                                                                                                   \
        sprintf(name, fmt, prefix, arg);                                                                   \
        if ((rc = ms_zipw_add(&w, name, data, size))) goto leave;                                          \
    } while (0)
    ADD("%s/data.pkl%s", "", b.p, b.n);
    ADD("%s/.format_version%s", "", "1", 1);
    ADD("%s/.storage_alignment%s", "", "64", 2);
    ADD("%s/byteorder%s", "", "little", 6);
    for (int i = 0; i < sd->n; i++) ADD("%s/data/%d", i, sd->e[i].t.data, ms_tensor_bytes(&sd->e[i].t));
    ADD("%s/version%s", "", "3\n", 2);
#undef ADD
    if (!(rc = ms_zipw_finish(&w))) rc = ms_afile_commit(&f);
leave:
    ms_afile_abort(&f);
    ms_zipw_free(&w);
    free(b.p);
    free(name);
    return rc;
}
