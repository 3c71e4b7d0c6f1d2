/* data/store_write.c — the write side of the slice store (see store_write.h, layout in store_fmt.h).
 *
 * Durability: the environment is opened with MDB_NOSYNC. A killed process loses nothing committed (the pages are in
 * the kernel's cache); an OS crash may lose the last transactions but keeps the store consistent, since LMDB
 * writes data pages before the meta page. Close calls mdb_env_sync(1). Every transaction is one whole volume.
 */
#include "data/store_write.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "base/path.h"
#include "data/hash.h"
#include "data/store_fmt.h"

struct ms_store_writer {
    MDB_env *env;
    MDB_dbi meta, volumes, slices, labels, sources;
    char *path;
    size_t mapsize;
    int layout; /* the store's format version: what this writer's records must be */
};

#define INITIAL_MAP ((size_t)256 << 20)

ms_status ms_store_encode(ZSTD_CCtx *cctx, int level, int flags, int dtype, const void *pixels, uint32_t height,
                          uint32_t width, const float spacing[2], uint32_t slice_index, ms_store_rec *out)
{
    size_t npx = (size_t)height * width, raw = npx * (dtype == MS_REC_U8 ? 1 : 2);
    size_t bound = ZSTD_compressBound(raw);
    uint8_t *buf = malloc(MS_REC_HDR + bound), *planes = NULL;
    out->data = NULL;
    out->len = 0;
    if (!buf) return ms_error(MS_ENOMEM, "store: out of memory");
    const void *src = pixels;
    int shuffle = (flags & MS_REC_SHUFFLED) && dtype != MS_REC_U8, stored = flags & MS_REC_STORED;
    if (shuffle) {
        planes = malloc(raw);
        if (!planes) {
            free(buf);
            return ms_error(MS_ENOMEM, "store: out of memory");
        }
        const uint16_t *p = pixels;
        for (size_t i = 0; i < npx; i++) {
            planes[i] = (uint8_t)p[i];
            planes[npx + i] = (uint8_t)(p[i] >> 8);
        }
        src = planes;
    }
    ZSTD_CCtx_reset(cctx, ZSTD_reset_session_only);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
    ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1);
    size_t z = ZSTD_compress2(cctx, buf + MS_REC_HDR, bound, src, raw);
    free(planes);
    if (ZSTD_isError(z)) {
        free(buf);
        return ms_error(MS_EIO, "store: zstd: %s", ZSTD_getErrorName(z));
    }
    memcpy(buf, MS_REC_MAGIC, 4);
    buf[4] = (uint8_t)dtype;
    buf[5] = (uint8_t)((shuffle ? MS_REC_SHUFFLED : 0) | (stored ? MS_REC_STORED : 0));
    buf[6] = buf[7] = 0;
    ms_put_u32le(buf + 8, height);
    ms_put_u32le(buf + 12, width);
    uint32_t a, b;
    memcpy(&a, &spacing[0], 4);
    memcpy(&b, &spacing[1], 4);
    ms_put_u32le(buf + 16, a);
    ms_put_u32le(buf + 20, b);
    ms_put_u32le(buf + 24, 0);
    ms_put_u32le(buf + 28, slice_index);
    ms_put_u32le(buf + 32, ms_data_crc32c(0, pixels, raw));
    ms_put_u32le(buf + 36, (uint32_t)z);
    ms_put_u32le(buf + 40, ms_data_crc32c(0, buf, 40));
    out->data = buf;
    out->len = MS_REC_HDR + z;
    return MS_OK;
}

/* Slack below which a file system counts as full: a failed commit wrote pages that needed more than this. */
#define FULL_FS_SLACK ((uint64_t)64 << 10)

/* LMDB turns a short write into EIO (mdb_page_flush: "short write, filesystem full?"), losing the kernel's reason.
 * A write extending a file stops short only at RLIMIT_FSIZE or on a full file system, where the next write fails
 * with EFBIG or ENOSPC: that is the reason when data.mdb has reached the limit, or the file system has (almost) no
 * space left for this user. Anything else stays EIO. */
static int short_write_reason(const char *data_path)
{
    struct stat sb;
    struct rlimit rl;
    struct statvfs vs;
    if (stat(data_path, &sb) == 0 && getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (uint64_t)sb.st_size >= (uint64_t)rl.rlim_cur)
        return EFBIG;
    if (statvfs(data_path, &vs) == 0 && (uint64_t)vs.f_bavail * vs.f_frsize < FULL_FS_SLACK) return ENOSPC;
    return EIO;
}

/* "STORE/data.mdb: <reason>": an errno value (EIO diagnosed by short_write_reason) is its own status, named with
 * strerror and its symbol ("File too large (EFBIG)"); LMDB's own codes are MS_EIO with LMDB's text. */
static ms_status store_err(const char *dir, int rc, const char *what)
{
    char data[MS_PATH_MAX];
    if (ms_path_join(data, dir, "data.mdb")) return ms_error(MS_EIO, "%s: %s%s", dir, what, mdb_strerror(rc));
    if (rc == EIO) rc = short_write_reason(data);
    if (rc > 0) return ms_error_sys(rc, data, what);
    return ms_error(MS_EIO, "%s: %s%s", data, what, mdb_strerror(rc));
}

static ms_status lmdb_err(ms_store_writer *w, int rc) { return store_err(w->path, rc, ""); }

/* Commits, then makes the file as long as its pages. LMDB never writes a page that the transaction dirtied and then
 * freed (a loose page, which goes to the free list), so a commit can leave the file short of its last page number
 * (LMDB's own mdb_env_copy allows for it); the readers (ms_store_check_length) refuse a file shorter than its pages
 * as truncated, so the writer fills the gap with zeros. fallocate(2) only allocates holes and never writes over
 * data, so it is safe beside another writer extending the file; glibc's posix_fallocate emulation would not be,
 * so a file system without fallocate keeps the gap (EOPNOTSUPP is not an error). */
static int commit(ms_store_writer *w, MDB_txn *txn)
{
    int rc = mdb_txn_commit(txn), fd;
    if (rc) return rc;
    MDB_envinfo ei;
    MDB_stat ms;
    struct stat sb;
    if ((rc = mdb_env_info(w->env, &ei)) || (rc = mdb_env_stat(w->env, &ms)) || (rc = mdb_env_get_fd(w->env, &fd)))
        return rc;
    if (fstat(fd, &sb) != 0) return errno;
    off_t need = ((off_t)ei.me_last_pgno + 1) * (off_t)ms.ms_psize;
    if (sb.st_size >= need || fallocate(fd, 0, sb.st_size, need - sb.st_size) == 0) return 0;
    return errno == EOPNOTSUPP ? 0 : errno;
}

static ms_status put_text(ms_store_writer *w, MDB_txn *txn, MDB_dbi dbi, const char *key, const char *val)
{
    (void)w;
    MDB_val k = {strlen(key), (void *)key}, v = {strlen(val), (void *)val};
    int rc = mdb_put(txn, dbi, &k, &v, 0);
    return rc ? rc : MS_OK;
}

static int get_counts(ms_store_writer *w, MDB_txn *txn, ms_store_counts *c)
{
    memset(c, 0, sizeof *c);
    MDB_val k = {6, "counts"}, v;
    int rc = mdb_get(txn, w->meta, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    cJSON *j = cJSON_ParseWithLength(v.mv_data, v.mv_size);
    if (!j) return MDB_CORRUPTED;
#define F(name)                                                                                                        \
    do {                                                                                                               \
        cJSON *e = cJSON_GetObjectItem(j, #name);                                                                      \
        if (cJSON_IsNumber(e)) c->name = (uint64_t)e->valuedouble;                                                     \
    } while (0)
    F(volumes);
    F(slices);
    F(label_slices);
    F(skipped_empty);
    F(nan_inf);
    F(sources);
#undef F
    cJSON_Delete(j);
    return 0;
}

static int put_counts(ms_store_writer *w, MDB_txn *txn, const ms_store_counts *c)
{
    char buf[400];
    snprintf(buf, sizeof buf,
             "{\"volumes\":%llu,\"slices\":%llu,\"label_slices\":%llu,\"skipped_empty\":%llu,\"nan_inf\":%llu,"
             "\"sources\":%llu}",
             (unsigned long long)c->volumes, (unsigned long long)c->slices, (unsigned long long)c->label_slices,
             (unsigned long long)c->skipped_empty, (unsigned long long)c->nan_inf, (unsigned long long)c->sources);
    return put_text(w, txn, w->meta, "counts", buf);
}

ms_status ms_store_writer_open(const char *path, const char *params_json, const char *created_json,
                               ms_store_writer **out)
{
    return ms_store_writer_open_map(path, params_json, created_json, INITIAL_MAP, out);
}

ms_status ms_store_writer_open_map(const char *path, const char *params_json, const char *created_json,
                                   size_t initial_map, ms_store_writer **out)
{
    return ms_store_writer_open_as(path, params_json, created_json, initial_map, 0, out);
}

/* The named tables, created when missing. */
static int open_tables(ms_store_writer *w, MDB_txn *txn)
{
    int rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &w->meta);
    if (!rc) rc = mdb_dbi_open(txn, "volumes", MDB_CREATE, &w->volumes);
    if (!rc) rc = mdb_dbi_open(txn, "slices", MDB_CREATE, &w->slices);
    if (!rc) rc = mdb_dbi_open(txn, "labels", MDB_CREATE, &w->labels);
    if (!rc) rc = mdb_dbi_open(txn, "sources", MDB_CREATE, &w->sources);
    return rc;
}

/* A new store's ID: 128 random bits in hex. Split files and shard sets name a store by it, so a copy (staged to
 * another disk) is the same store and another store at the same path is not. Without getrandom, the time, the
 * process and the path hashed stand in (unique enough for telling stores apart, not for security). */
static void new_store_id(const char *path, char out[33])
{
    uint8_t b[32];
    if (getrandom(b, 16, 0) != 16) {
        ms_sha256 h;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long pid = (long)getpid();
        ms_sha256_init(&h);
        ms_sha256_update(&h, &ts, sizeof ts);
        ms_sha256_update(&h, &pid, sizeof pid);
        ms_sha256_update(&h, path, strlen(path));
        ms_sha256_final(&h, b);
    }
    ms_hex(b, 16, out);
}

/* A new store's meta entries: format (with w->layout), params, created, zero counts, its ID. */
static int put_new_meta(ms_store_writer *w, MDB_txn *txn, const char *params_json, const char *created_json)
{
    char fmt[64], id[33], idj[64];
    snprintf(fmt, sizeof fmt, "{\"format\":\"mrisam-store\",\"version\":%d}", w->layout);
    new_store_id(w->path, id);
    snprintf(idj, sizeof idj, "{\"id\":\"%s\"}", id);
    ms_store_counts c = {0};
    int rc = put_text(w, txn, w->meta, "format", fmt);
    if (!rc) rc = put_text(w, txn, w->meta, "id", idj);
    if (!rc) rc = put_text(w, txn, w->meta, "params", params_json);
    if (!rc) rc = put_text(w, txn, w->meta, "created", created_json ? created_json : "{}");
    if (!rc) rc = put_counts(w, txn, &c);
    return rc;
}

/* A new store appears whole or not at all: its first transaction (tables, format, params) is written and synced in
 * DIR/data.mdb.new, which is then renamed to DIR/data.mdb. Without this, a writer killed before LMDB wrote its
 * first pages would leave an empty data.mdb, which the next run must refuse (it cannot tell it from a store cut to
 * nothing by a failed copy). A lock on the folder keeps two writers from creating the same store at once; the
 * kernel drops it when its holder dies, so the next writer removes what a killed one left. */
static ms_status create_whole(const char *path, int layout, const char *params_json, const char *created_json)
{
    char data[MS_PATH_MAX], tmp[MS_PATH_MAX];
    MS_TRY(ms_path_join(data, path, "data.mdb"));
    MS_TRY(ms_path_join(tmp, path, "data.mdb.new"));
    int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return ms_error_sys(errno, path, "");
    ms_status st = MS_OK;
    ms_store_writer t = {.path = (char *)path, .layout = layout};
    MDB_txn *txn = NULL;
    struct stat sb;
    if (flock(dfd, LOCK_EX) != 0) {
        st = ms_error_sys(errno, path, "cannot lock the folder: ");
        goto leave;
    }
    if (stat(data, &sb) == 0) goto leave; /* another writer created it meanwhile */
    if (unlink(tmp) != 0 && errno != ENOENT) {
        st = ms_error_sys(errno, tmp, "");
        goto leave;
    }
    int rc = mdb_env_create(&t.env);
    if (!rc) rc = mdb_env_set_maxdbs(t.env, 8);
    /* no lock file: the folder lock already keeps every other writer out of the new file */
    if (!rc) rc = mdb_env_open(t.env, tmp, MDB_NOSUBDIR | MDB_NOLOCK, 0640);
    if (!rc) rc = mdb_txn_begin(t.env, NULL, 0, &txn);
    if (!rc) rc = open_tables(&t, txn);
    if (!rc) rc = put_new_meta(&t, txn, params_json, created_json);
    if (!rc) {
        rc = commit(&t, txn); /* synced: the environment has no MDB_NOSYNC */
        txn = NULL;
    }
    if (rc) {
        st = rc > 0 ? ms_error_sys(rc, tmp, "") : ms_error(MS_EIO, "%s: %s", tmp, mdb_strerror(rc));
        goto leave;
    }
    mdb_env_close(t.env);
    t.env = NULL;
    if (rename(tmp, data) != 0 || fsync(dfd) != 0) st = ms_error_sys(errno, data, "cannot create: ");
leave:
    if (txn) mdb_txn_abort(txn);
    if (t.env) mdb_env_close(t.env);
    if (st) unlink(tmp);
    close(dfd); /* drops the lock */
    return st;
}

ms_status ms_store_writer_open_as(const char *path, const char *params_json, const char *created_json,
                                  size_t initial_map, int layout, ms_store_writer **out)
{
    ms_status st = MS_OK;
    if (layout != 0 && layout != 1 && layout != MS_STORE_VERSION)
        return ms_error(MS_EINVAL, "%s: no store layout %d (1 or %d)", path, layout, MS_STORE_VERSION);
    MDB_txn *txn = NULL;
    *out = NULL;
    ms_store_writer *w = calloc(1, sizeof *w);
    if (!w) return ms_error(MS_ENOMEM, "%s: out of memory", path);
    w->path = strdup(path);
    if (mkdir(path, 0750) != 0 && errno != EEXIST) {
        st = ms_error(errno, "%s: %s", path, strerror(errno));
        goto leave;
    }
    /* a truncated store is refused, never appended to (or, when empty, replaced by a new one) */
    if ((st = ms_store_check_length(path, 1, NULL))) goto leave;
    w->layout = layout ? layout : MS_STORE_VERSION;
    char data[MS_PATH_MAX];
    struct stat sb;
    if ((st = ms_path_join(data, path, "data.mdb"))) goto leave;
    if (stat(data, &sb) != 0 && (st = create_whole(path, w->layout, params_json, created_json))) goto leave;
    int rc = mdb_env_create(&w->env);
    if (!rc) rc = mdb_env_set_maxdbs(w->env, 8);
    if (!rc) rc = mdb_env_open(w->env, path, MDB_NOSYNC, 0640);
    if (rc) {
        st = store_err(path, rc, "cannot open store: ");
        goto leave;
    }
    if ((st = ms_store_check_length(path, 1, w->env))) goto leave;
    MDB_envinfo ei;
    mdb_env_info(w->env, &ei);
    w->mapsize = ei.me_mapsize;
    if (initial_map == 0) initial_map = INITIAL_MAP;
    if (initial_map < ((size_t)64 << 10)) initial_map = (size_t)64 << 10;
    if (w->mapsize < initial_map) {
        w->mapsize = initial_map;
        if ((rc = mdb_env_set_mapsize(w->env, w->mapsize))) {
            st = lmdb_err(w, rc);
            goto leave;
        }
    }
    mdb_reader_check(w->env, NULL); /* clear reader slots left by killed processes */
    rc = mdb_txn_begin(w->env, NULL, 0, &txn);
    if (!rc) rc = open_tables(w, txn);
    if (rc) {
        st = lmdb_err(w, rc);
        goto leave;
    }
    MDB_val k = {6, "params"}, v, fk = {6, "format"}, fv;
    rc = mdb_get(txn, w->meta, &k, &v);
    if (rc == 0) {
        /* an existing store keeps its layout: appending to a layout-1 store writes layout-1 records */
        const char *ver = mdb_get(txn, w->meta, &fk, &fv) ? NULL : memmem(fv.mv_data, fv.mv_size, "\"version\":", 10);
        const char *end = ver ? (const char *)fv.mv_data + fv.mv_size : NULL;
        w->layout = ver && end - ver > 10 && (ver[10] == '1' || ver[10] == '2') ? ver[10] - '0' : 0;
        if (!w->layout) {
            st = ms_error(MS_EUNSUPPORTED, "%s: unsupported store format version", path);
            goto leave;
        }
        if (layout && layout != w->layout) {
            st = ms_error(MS_EINVAL, "%s: a layout-%d store; it cannot take layout-%d records", path, w->layout,
                          layout);
            goto leave;
        }
        if (v.mv_size != strlen(params_json) || memcmp(v.mv_data, params_json, v.mv_size) != 0) {
            st = ms_error(MS_EINVAL, "%s: the store was created with other options (%.*s); use a new store", path,
                          (int)(v.mv_size < 300 ? v.mv_size : 300), (const char *)v.mv_data);
            goto leave;
        }
    } else if (rc == MDB_NOTFOUND) {
        /* an LMDB file without our entries (left by a writer before stores were created whole) */
        if ((rc = put_new_meta(w, txn, params_json, created_json))) {
            st = lmdb_err(w, rc);
            goto leave;
        }
    } else {
        st = lmdb_err(w, rc);
        goto leave;
    }
    rc = commit(w, txn);
    txn = NULL;
    if (rc) {
        st = lmdb_err(w, rc);
        goto leave;
    }
leave:
    if (txn) mdb_txn_abort(txn);
    if (st) {
        if (w->env) mdb_env_close(w->env);
        free(w->path);
        free(w);
    } else
        *out = w;
    return st;
}

int ms_store_writer_layout(const ms_store_writer *w) { return w->layout; }

ms_status ms_store_writer_close(ms_store_writer *w)
{
    if (!w) return MS_OK;
    ms_status st = MS_OK;
    int rc = mdb_env_sync(w->env, 1);
    if (rc) st = store_err(w->path, rc, "flush failed: ");
    mdb_env_close(w->env);
    free(w->path);
    free(w);
    return st;
}

int ms_store_writer_has_source(ms_store_writer *w, const char *source_key)
{
    MDB_txn *txn;
    if (mdb_txn_begin(w->env, NULL, MDB_RDONLY, &txn)) return 0;
    MDB_val k = {strlen(source_key), (void *)source_key}, v;
    int found = mdb_get(txn, w->sources, &k, &v) == 0;
    mdb_txn_abort(txn);
    return found;
}

ms_status ms_store_writer_source_keys(ms_store_writer *w, char ***keys, size_t *n)
{
    MDB_txn *txn;
    MDB_cursor *cur;
    MDB_val k, v;
    size_t cap = 0;
    ms_status st = MS_OK;
    *keys = NULL;
    *n = 0;
    int rc = mdb_txn_begin(w->env, NULL, MDB_RDONLY, &txn);
    if (rc) return lmdb_err(w, rc);
    if ((rc = mdb_cursor_open(txn, w->sources, &cur))) {
        mdb_txn_abort(txn);
        return lmdb_err(w, rc);
    }
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (*n == cap) {
            cap = cap ? 2 * cap : 256;
            char **q = realloc(*keys, cap * sizeof *q);
            if (!q) {
                st = ms_error(MS_ENOMEM, "out of memory");
                break;
            }
            *keys = q;
        }
        char *s = malloc(k.mv_size + 1);
        if (!s) {
            st = ms_error(MS_ENOMEM, "out of memory");
            break;
        }
        memcpy(s, k.mv_data, k.mv_size);
        s[k.mv_size] = 0;
        (*keys)[(*n)++] = s;
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return st;
}

ms_status ms_store_writer_counts(ms_store_writer *w, ms_store_counts *out)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(w->env, NULL, MDB_RDONLY, &txn);
    if (rc) return lmdb_err(w, rc);
    rc = get_counts(w, txn, out);
    mdb_txn_abort(txn);
    return rc ? lmdb_err(w, rc) : MS_OK;
}

/* Doubles the map; only legal with no transaction open in this process (the writer thread is the only user). */
static int grow_map(ms_store_writer *w)
{
    w->mapsize *= 2;
    return mdb_env_set_mapsize(w->env, w->mapsize);
}

ms_status ms_store_writer_set_label_names(ms_store_writer *w, const char *text)
{
    return ms_store_writer_set_meta(w, "label_names", text);
}

ms_status ms_store_writer_get_meta(ms_store_writer *w, const char *name, char **out)
{
    *out = NULL;
    MDB_txn *txn;
    int rc = mdb_txn_begin(w->env, NULL, MDB_RDONLY, &txn);
    if (rc) return lmdb_err(w, rc);
    MDB_val k = {strlen(name), (void *)name}, v;
    rc = mdb_get(txn, w->meta, &k, &v);
    if (!rc) {
        *out = malloc(v.mv_size + 1);
        if (*out) {
            memcpy(*out, v.mv_data, v.mv_size);
            (*out)[v.mv_size] = 0;
        }
    }
    mdb_txn_abort(txn);
    if (rc == MDB_NOTFOUND) return MS_OK;
    if (rc) return lmdb_err(w, rc);
    return *out ? MS_OK : ms_error(MS_ENOMEM, "%s: out of memory", w->path);
}

ms_status ms_store_writer_set_meta(ms_store_writer *w, const char *name, const char *text)
{
    for (;;) {
        MDB_txn *txn;
        int rc = mdb_txn_begin(w->env, NULL, 0, &txn);
        if (rc) return lmdb_err(w, rc);
        rc = put_text(w, txn, w->meta, name, text);
        if (!rc)
            rc = commit(w, txn);
        else
            mdb_txn_abort(txn);
        if (rc == MDB_MAP_FULL && !grow_map(w)) continue;
        return rc ? lmdb_err(w, rc) : MS_OK;
    }
}

ms_status ms_store_writer_mark(ms_store_writer *w, const char *source_key)
{
    for (;;) {
        MDB_txn *txn;
        int rc = mdb_txn_begin(w->env, NULL, 0, &txn);
        if (rc) return lmdb_err(w, rc);
        rc = put_text(w, txn, w->sources, source_key, "{}");
        if (!rc)
            rc = commit(w, txn);
        else
            mdb_txn_abort(txn);
        if (rc == MDB_MAP_FULL && !grow_map(w)) continue;
        return rc ? lmdb_err(w, rc) : MS_OK;
    }
}

ms_status ms_store_writer_add(ms_store_writer *w, cJSON *vol, ms_store_rec *slices, ms_store_rec *labels, uint32_t n,
                              const char *source_key, const char *done_key, uint64_t skipped_empty, uint64_t nan_inf,
                              uint32_t *volume_id, int *dup)
{
    *dup = 0;
    for (;;) {
        MDB_txn *txn = NULL;
        char *txt = NULL;
        ms_store_counts c;
        int rc = mdb_txn_begin(w->env, NULL, 0, &txn);
        if (rc) return lmdb_err(w, rc);
        MDB_val k = {strlen(source_key), (void *)source_key}, v;
        rc = mdb_get(txn, w->sources, &k, &v);
        if (rc == 0) {
            mdb_txn_abort(txn);
            *dup = 1;
            return MS_OK;
        }
        if (rc != MDB_NOTFOUND) goto fail;
        if ((rc = get_counts(w, txn, &c))) goto fail;
        if (c.volumes >= UINT32_MAX) {
            mdb_txn_abort(txn);
            return ms_error(MS_EUNSUPPORTED, "%s: too many volumes", w->path);
        }
        uint32_t id = (uint32_t)c.volumes;
        cJSON_DeleteItemFromObject(vol, "id");
        cJSON_DeleteItemFromObject(vol, "first_key");
        cJSON_DeleteItemFromObject(vol, "n_slices");
        cJSON_AddNumberToObject(vol, "id", id);
        cJSON_AddNumberToObject(vol, "first_key", (double)c.slices);
        cJSON_AddNumberToObject(vol, "n_slices", n);
        txt = cJSON_PrintUnformatted(vol);
        if (!txt) {
            mdb_txn_abort(txn);
            return ms_error(MS_ENOMEM, "%s: out of memory", w->path);
        }
        uint8_t vk[4];
        ms_key32(vk, id);
        MDB_val kv = {4, vk}, vv = {strlen(txt), txt};
        if ((rc = mdb_put(txn, w->volumes, &kv, &vv, MDB_NOOVERWRITE))) goto fail;
        for (int pass = 0; pass < 2; pass++) {
            ms_store_rec *recs = pass ? labels : slices;
            if (!recs) continue;
            for (uint32_t i = 0; i < n; i++) {
                uint8_t *p = recs[i].data;
                ms_put_u32le(p + 24, id);
                ms_put_u32le(p + 40, ms_data_crc32c(0, p, 40));
                uint8_t kb[8];
                ms_key64(kb, c.slices + i);
                MDB_val ks = {8, kb}, vs = {recs[i].len, p};
                if ((rc = mdb_put(txn, pass ? w->labels : w->slices, &ks, &vs, MDB_APPEND))) goto fail;
            }
        }
        char prog[64];
        snprintf(prog, sizeof prog, "{\"volume\":%u}", id);
        if ((rc = put_text(w, txn, w->sources, source_key, prog))) goto fail;
        if (done_key && (rc = put_text(w, txn, w->sources, done_key, prog))) goto fail;
        c.volumes++;
        c.slices += n;
        if (labels) c.label_slices += n;
        c.skipped_empty += skipped_empty;
        c.nan_inf += nan_inf;
        c.sources++;
        if ((rc = put_counts(w, txn, &c))) goto fail;
        rc = commit(w, txn);
        txn = NULL;
        if (rc) goto fail;
        free(txt);
        *volume_id = id;
        return MS_OK;
    fail:
        if (txn) mdb_txn_abort(txn);
        free(txt);
        if (rc == MDB_MAP_FULL && !grow_map(w)) continue; /* redo the whole volume in a bigger map */
        return lmdb_err(w, rc);
    }
}
