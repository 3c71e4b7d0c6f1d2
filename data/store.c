/* data/store.c — the read side of the slice store (data/store.h); record layout in data/store_fmt.h.
 *
 * Invariants: the environment is opened read-only with MDB_NOTLS, so any thread may use any reader as long as one
 * reader is used by one thread at a time; a reader keeps one read transaction that is reset after every read (a
 * long-lived snapshot would pin pages and grow the file under a concurrent ingest). Nothing read from the file is
 * trusted: every value LMDB returns must lie inside the data file (in_file), sizes are checked against the header
 * before decompression and the pixel crc after.
 *
 * A set of shards (`ingest --shard K/N`: DIR/shard-K-of-N, docs/FORMATS.md §Shard sets) is one ms_store over N
 * environments ("parts"): its volumes are ordered by their source's index in the full source list (the order a
 * one-piece ingest of the same sources commits them in), keys assigned consecutively in that order, and a global
 * key maps to (shard, local key) through the volume ranges (binary search). A one-piece store is one part with the
 * identity map.
 */
#include "data/store.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <dirent.h>

#include <cjson/cJSON.h>

#include "base/path.h"
#include "data/encode.h"
#include "data/hash.h"
#include "data/store_fmt.h"

/* One LMDB environment: a one-piece store, or one shard of a set. */
typedef struct part {
    MDB_env *env;
    MDB_dbi meta, volumes, slices, labels;
    char *path;
    uint64_t n_slices;
    uint32_t n_volumes;
    char *label_names;
    const uint8_t *map; /* LMDB's map of the data file (NULL: unknown), the file's length when opened (in_file) */
    uint64_t file_len;
    int fd;
    int layout;  /* the format version */
    char id[33]; /* meta "id"; "" in a store written before stores had IDs */
    char set[33]; /* meta "shard": the set's ID ("" when not a shard), this shard's k of n */
    int k, n;
} part;

/* A volume of a set, in the set's order: its global first key, and where it lives. */
typedef struct gvol {
    uint64_t first, local_first;
    int64_t source; /* its source's index in the full source list */
    uint32_t n, local;
    int part;
} gvol;

struct ms_store {
    part *parts;
    int n_parts;
    int is_set;
    gvol *vols; /* a set's volumes by global id */
    char *path;
    uint64_t n_slices;
    uint32_t n_volumes;
    int layout;   /* the format version */
    int rewindow; /* ms_store_set_norm was called: layout-2 volumes get this window instead of their own */
    ms_norm norm;
    double p_lo, p_hi;
};

/* A reader's cache of layout-2 volume encodings, direct-mapped by volume id: the loader reads slices of random
 * volumes, and parsing a volume record costs about as much as decoding a slice. */
#define ENC_CACHE 512
typedef struct enc_slot {
    uint32_t id;
    int valid;
    ms_encoding e;
} enc_slot;

struct ms_store_reader {
    ms_store *s;
    MDB_txn **txn; /* one per part, begun at its first read and reset after every read */
    ZSTD_DCtx *dctx;
    uint16_t *pix, *lab;
    size_t pix_cap, lab_cap;
    uint8_t *tmp;
    size_t tmp_cap;
    uint16_t *raw; /* the decoded record: the pixels of layout 1, the stored values of layout 2 */
    size_t raw_cap;
    enc_slot *enc; /* ENC_CACHE slots, allocated at the first layout-2 record */
};

static ms_status grow(void **p, size_t *cap, size_t need)
{
    if (need <= *cap) return MS_OK;
    void *q = realloc(*p, need);
    if (!q) return ms_error(MS_ENOMEM, "store: out of memory (%zu bytes)", need);
    *p = q;
    *cap = need;
    return MS_OK;
}

/* 1 when a key or value LMDB returned lies inside the data file. LMDB checks page numbers but trusts a damaged
 * page's node sizes, and reading past the file's end through its map is a SIGBUS, not an error. The file may
 * have grown since the store was opened (a concurrent ingest), so a miss looks at its size again. */
static int in_file(const part *s, const MDB_val *v)
{
    uintptr_t p = (uintptr_t)v->mv_data, m = (uintptr_t)s->map;
    struct stat sb;
    if (!s->map) return 1;
    if (p < m) return 0;
    if (v->mv_size <= s->file_len && p - m <= s->file_len - v->mv_size) return 1;
    return fstat(s->fd, &sb) == 0 && v->mv_size <= (uint64_t)sb.st_size && p - m <= sb.st_size - v->mv_size;
}

/* The start of LMDB's map of the data file (LMDB does not say; mdb_env_info's me_mapaddr is only a fixed map's
 * address): the mapping of the file's inode, at file offset 0, that holds `inside`, a pointer LMDB returned into
 * it. NULL when /proc/self/maps cannot tell. */
static const uint8_t *map_start(int fd, const void *inside)
{
    struct stat sb;
    char line[512];
    uintptr_t p = (uintptr_t)inside, found = 0;
    FILE *f = fstat(fd, &sb) == 0 ? fopen("/proc/self/maps", "r") : NULL;
    while (f && !found && fgets(line, sizeof line, f)) {
        unsigned long long a, b, off, ino;
        if (sscanf(line, "%llx-%llx %*s %llx %*s %llu", &a, &b, &off, &ino) == 4 &&
            ino == (unsigned long long)sb.st_ino && off == 0 && p >= a && p < b)
            found = (uintptr_t)a;
    }
    if (f) fclose(f);
    return (const uint8_t *)found;
}

static ms_status get_text(part *s, MDB_txn *txn, MDB_dbi dbi, const void *key, size_t klen, char **out)
{
    MDB_val k = {klen, (void *)key}, v;
    *out = NULL;
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == MDB_NOTFOUND) return MS_ENOTFOUND;
    if (rc) return ms_error(MS_EIO, "%s: %s", s->path, mdb_strerror(rc));
    if (!in_file(s, &v)) return ms_error(MS_ECORRUPT, "%s: a record reaches past the end of the file", s->path);
    char *t = malloc(v.mv_size + 1);
    if (!t) return ms_error(MS_ENOMEM, "%s: out of memory", s->path);
    memcpy(t, v.mv_data, v.mv_size);
    t[v.mv_size] = 0;
    *out = t;
    return MS_OK;
}

/* LMDB's meta page (libraries/liblmdb/mdb.c, MDB_meta after the 16-byte page header, 64-bit build): the magic at
 * byte 16 and the page size (mm_dbs[FREE_DBI].md_pad) at byte 40. Only read when the file is too short for LMDB
 * to open, to say how long it should be. */
#define LMDB_MAGIC 0xBEEFC0DEu
#define LMDB_MAGIC_AT 16
#define LMDB_PSIZE_AT 40

/* The page size a data file too short to open was written with: its first meta page's, else this system's
 * (what LMDB uses for a new file). 0: the file is not LMDB's (a wrong magic), so not a truncated store. */
static uint64_t short_file_psize(int fd, uint64_t size)
{
    uint8_t b[LMDB_PSIZE_AT + 4];
    long os = sysconf(_SC_PAGESIZE);
    uint64_t dflt = os > 0 ? (uint64_t)os : 4096;
    if (size < LMDB_MAGIC_AT + 4) return dflt;
    ssize_t n = pread(fd, b, sizeof b, 0);
    if (n < LMDB_MAGIC_AT + 4) return dflt;
    uint32_t magic, psize;
    memcpy(&magic, b + LMDB_MAGIC_AT, 4);
    if (magic != LMDB_MAGIC) return 0;
    if (n < (ssize_t)sizeof b) return dflt;
    memcpy(&psize, b + LMDB_PSIZE_AT, 4);
    return psize >= 512 && psize <= 65536 && (psize & (psize - 1)) == 0 ? psize : dflt;
}

ms_status ms_store_check_length(const char *path, int is_dir, MDB_env *env)
{
    char name[MS_PATH_MAX];
    size_t len = strlen(path);
    while (is_dir && len > 1 && path[len - 1] == '/') len--;
    MS_TRY(ms_path_fmt(name, "%.*s%s", (int)len, path, is_dir ? "/data.mdb" : ""));
    struct stat sb;
    uint64_t need;
    if (env) {
        /* every page up to the last one the meta page names must be in the file: LMDB maps the file and reads a
         * page beyond its end as SIGBUS, not as an error */
        MDB_envinfo ei;
        MDB_stat ms;
        int fd, rc = mdb_env_info(env, &ei);
        if (!rc) rc = mdb_env_stat(env, &ms);
        if (!rc) rc = mdb_env_get_fd(env, &fd);
        if (rc) return ms_error(MS_EIO, "%s: %s", name, mdb_strerror(rc));
        if (fstat(fd, &sb) != 0) return ms_error(errno, "%s: %s", name, strerror(errno));
        need = ((uint64_t)ei.me_last_pgno + 1) * ms.ms_psize;
    } else {
        int fd = open(name, O_RDONLY | O_CLOEXEC);
        if (fd < 0) return MS_OK; /* absent or unreadable: mdb_env_open says which */
        if (fstat(fd, &sb) != 0) {
            int e = errno;
            close(fd);
            return ms_error(e, "%s: %s", name, strerror(e));
        }
        /* two meta pages at least; LMDB fails on less ("not an LMDB file"), or for a writer on an empty file makes
         * a new store in place of the lost one */
        need = 2 * short_file_psize(fd, (uint64_t)sb.st_size);
        close(fd);
    }
    if ((uint64_t)sb.st_size < need)
        return ms_error(MS_ECORRUPT, "%s: truncated: %llu bytes, the store's pages need %llu (a partial copy?)", name,
                        (unsigned long long)sb.st_size, (unsigned long long)need);
    return MS_OK;
}

static double jnum(const cJSON *o, const char *name, double dflt)
{
    const cJSON *v = cJSON_GetObjectItem(o, name);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

/* The layout-2 encoding in a volume's "intensity" object (docs/FORMATS.md), with the window ms_store_set_norm chose
 * when it was called: MS_ENOTFOUND for a layout-1 volume, MS_EFORMAT for a bad encoding, MS_EINVAL (message set)
 * when the window cannot be taken from the kept statistics. */
static ms_status volume_encoding(const ms_store *s, const cJSON *in, ms_encoding *e)
{
    const cJSON *t = cJSON_GetObjectItem(in, "stored"), *w = cJSON_GetObjectItem(in, "window");
    const cJSON *st = cJSON_GetObjectItem(in, "stats");
    if (!cJSON_IsString(t)) return MS_ENOTFOUND;
    memset(e, 0, sizeof *e);
    e->type = !strcmp(t->valuestring, "int16") ? MS_STORED_I16 : !strcmp(t->valuestring, "uint16") ? MS_STORED_U16 : 0;
    e->slope = jnum(in, "slope", 0);
    e->inter = jnum(in, "inter", 0);
    e->max_error = jnum(in, "max_error", 0);
    const cJSON *w0 = cJSON_GetArrayItem(w, 0), *w1 = cJSON_GetArrayItem(w, 1), *pc = cJSON_GetObjectItem(st, "percentiles");
    if (!e->type || !(e->slope > 0) || !cJSON_IsNumber(w0) || !cJSON_IsNumber(w1) || !(w1->valuedouble > 0) ||
        !cJSON_IsObject(st) || cJSON_GetArraySize(pc) != MS_ENC_NPCT)
        return MS_EFORMAT;
    e->win.offset = w0->valuedouble;
    e->win.scale = w1->valuedouble;
    e->win.mean = jnum(in, "mean", 0); /* in original units, informative: reads use the window only */
    e->win.std = jnum(in, "std", 1);
    double mn = jnum(st, "min", 0), mx = jnum(st, "max", 0), nz = jnum(st, "n_nonzero", 0);
    if (!(mn >= -32768 && mx <= 65535 && mn <= mx && nz >= 0 && nz < 0x1p63)) return MS_EFORMAT;
    e->min = (int32_t)mn;
    e->max = (int32_t)mx;
    e->n_nonzero = (uint64_t)nz;
    e->mean = jnum(st, "mean", 0);
    e->std = jnum(st, "std", 1);
    for (int i = 0; i < MS_ENC_NPCT; i++) {
        const cJSON *v = cJSON_GetArrayItem(pc, i);
        if (!cJSON_IsNumber(v)) return MS_EFORMAT;
        e->pct[i] = v->valuedouble;
    }
    return s->rewindow ? ms_encoding_rewindow(e, s->norm, s->p_lo, s->p_hi) : MS_OK;
}

/* Reads a JSON meta entry's string field (meta `name`, field `field`) into out (33 bytes: a 32-hex-digit ID), and
 * for "shard" the k and n fields. Absent entries leave out empty. */
static ms_status read_ids(part *p, MDB_txn *txn)
{
    char *t = NULL;
    ms_status st = get_text(p, txn, p->meta, "id", 2, &t);
    if (st == MS_OK) {
        cJSON *j = cJSON_Parse(t);
        const cJSON *v = cJSON_GetObjectItem(j, "id");
        if (cJSON_IsString(v) && strlen(v->valuestring) < sizeof p->id) snprintf(p->id, sizeof p->id, "%s", v->valuestring);
        cJSON_Delete(j);
    } else if (st != MS_ENOTFOUND)
        return st;
    free(t);
    t = NULL;
    st = get_text(p, txn, p->meta, "shard", 5, &t);
    if (st == MS_ENOTFOUND) return MS_OK;
    if (st) return st;
    cJSON *j = cJSON_Parse(t);
    free(t);
    const cJSON *set = cJSON_GetObjectItem(j, "set");
    double k = jnum(j, "k", -1), n = jnum(j, "n", 0);
    if (!cJSON_IsString(set) || strlen(set->valuestring) != 32 || !(n >= 1 && n <= 1 << 20 && k >= 0 && k < n)) {
        cJSON_Delete(j);
        return ms_error(MS_EFORMAT, "%s: bad shard record", p->path);
    }
    snprintf(p->set, sizeof p->set, "%s", set->valuestring);
    p->k = (int)k;
    p->n = (int)n;
    cJSON_Delete(j);
    return MS_OK;
}

/* Opens one environment read-only: a one-piece store, or (extra = MDB_NOLOCK) a shard of a set. */
static ms_status open_part(const char *path, unsigned extra, int max_readers, part *s)
{
    ms_status st = MS_OK;
    MDB_txn *txn = NULL;
    char *fmt = NULL, *counts = NULL;
    cJSON *j = NULL;
    memset(s, 0, sizeof *s);
    s->fd = -1;
    s->path = strdup(path);
    if (!s->path) return ms_error(MS_ENOMEM, "%s: out of memory", path);
    struct stat sb;
    if (stat(path, &sb) != 0) return ms_error(MS_ENOTFOUND, "%s: %s", path, strerror(errno));
    unsigned flags = MDB_RDONLY | MDB_NOTLS | extra | (S_ISDIR(sb.st_mode) ? 0 : MDB_NOSUBDIR);
    MS_TRY(ms_store_check_length(path, S_ISDIR(sb.st_mode), NULL));
    int rc = mdb_env_create(&s->env);
    if (!rc) rc = mdb_env_set_maxdbs(s->env, 8);
    if (!rc) rc = mdb_env_set_maxreaders(s->env, (unsigned)(max_readers > 0 ? max_readers : 1) + 8);
    if (!rc) rc = mdb_env_open(s->env, path, flags, 0644);
    if (rc) return ms_error(MS_EIO, "%s: not a store (%s)", path, mdb_strerror(rc));
    MS_TRY(ms_store_check_length(path, S_ISDIR(sb.st_mode), s->env));
    struct stat fb;
    if (mdb_env_get_fd(s->env, &s->fd) || fstat(s->fd, &fb) != 0)
        return ms_error(MS_EIO, "%s: cannot read the store's size", path);
    s->file_len = (uint64_t)fb.st_size;
    rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (!rc) rc = mdb_dbi_open(txn, "meta", 0, &s->meta);
    if (!rc) rc = mdb_dbi_open(txn, "volumes", 0, &s->volumes);
    if (!rc) rc = mdb_dbi_open(txn, "slices", 0, &s->slices);
    if (!rc) rc = mdb_dbi_open(txn, "labels", 0, &s->labels);
    if (rc) {
        st = ms_error(MS_EFORMAT, "%s: not a store (%s)", path, mdb_strerror(rc));
        goto leave;
    }
    MDB_val fk = {6, "format"}, fv;
    if (!mdb_get(txn, s->meta, &fk, &fv)) s->map = map_start(s->fd, fv.mv_data);
    st = get_text(s, txn, s->meta, "format", 6, &fmt);
    if (st) {
        st = ms_error(MS_EFORMAT, "%s: not a store (no format record)", path);
        goto leave;
    }
    j = cJSON_Parse(fmt);
    cJSON *ver = cJSON_GetObjectItem(j, "version");
    if (!cJSON_IsNumber(ver) || (ver->valuedouble != 1 && ver->valuedouble != MS_STORE_VERSION)) {
        st = ms_error(MS_EUNSUPPORTED, "%s: unsupported store format version", path);
        goto leave;
    }
    s->layout = (int)ver->valuedouble;
    cJSON_Delete(j);
    j = NULL;
    st = get_text(s, txn, s->meta, "counts", 6, &counts);
    if (st == MS_OK) {
        j = cJSON_Parse(counts);
        cJSON *v = cJSON_GetObjectItem(j, "volumes"), *n = cJSON_GetObjectItem(j, "slices");
        /* no more than the databases hold (the counts size what readers and verify allocate and visit) */
        MDB_stat vs, ss;
        if (!cJSON_IsNumber(v) || !cJSON_IsNumber(n) || v->valuedouble < 0 || n->valuedouble < 0 ||
            mdb_stat(txn, s->volumes, &vs) || mdb_stat(txn, s->slices, &ss) || v->valuedouble > (double)vs.ms_entries ||
            n->valuedouble > (double)ss.ms_entries) {
            st = ms_error(MS_EFORMAT, "%s: bad counts record", path);
            goto leave;
        }
        s->n_volumes = (uint32_t)v->valuedouble;
        s->n_slices = (uint64_t)n->valuedouble;
    } else if (st == MS_ENOTFOUND)
        st = MS_OK; /* created, nothing committed yet */
    else
        goto leave;
    st = get_text(s, txn, s->meta, "label_names", 11, &s->label_names);
    if (st == MS_ENOTFOUND) st = MS_OK;
    if (!st) st = read_ids(s, txn);
leave:
    /* commit, not abort: handles opened by mdb_dbi_open in an aborted transaction are closed again */
    if (txn && st == MS_OK)
        mdb_txn_commit(txn);
    else if (txn)
        mdb_txn_abort(txn);
    cJSON_Delete(j);
    free(fmt);
    free(counts);
    return st;
}

static void close_part(part *p)
{
    if (p->env) mdb_env_close(p->env);
    free(p->label_names);
    free(p->path);
    memset(p, 0, sizeof *p);
}

/* "shard-K-of-N" (digits only): 1 and k, n; else 0. The name is what ingest writes and what a reader looks for;
 * the shard's own record (meta "shard") is what counts. */
static int shard_name(const char *nm, int *k, int *n)
{
    int used = 0;
    if (strncmp(nm, "shard-", 6) || nm[6] < '0' || nm[6] > '9') return 0;
    if (sscanf(nm, "shard-%d-of-%d%n", k, n, &used) != 2 || nm[used]) return 0;
    const char *of = strstr(nm, "-of-");
    return of && of[4] >= '0' && of[4] <= '9';
}

ms_status ms_store_shard_path(const char *dir, int k, int n, char out[MS_PATH_MAX])
{
    return ms_path_fmt(out, "%s/shard-%05d-of-%05d", dir, k, n);
}

int ms_store_is_set(const char *path)
{
    char data[MS_PATH_MAX];
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode) || ms_path_join(data, path, "data.mdb")) return 0;
    if (stat(data, &sb) == 0) return 0;
    DIR *d = opendir(path);
    struct dirent *e;
    int found = 0, k, n;
    while (d && !found && (e = readdir(d))) found = shard_name(e->d_name, &k, &n);
    if (d) closedir(d);
    return found;
}

/* The shard folders of a set, sorted by name. */
static ms_status list_shards(const char *dir, char ***names, int *count)
{
    struct dirent **ents = NULL;
    int m = scandir(dir, &ents, NULL, alphasort), k, n;
    *names = NULL;
    *count = 0;
    if (m < 0) return ms_error_sys(errno, dir, "");
    ms_status st = MS_OK;
    char **v = calloc((size_t)m + 1, sizeof *v);
    if (!v) st = ms_error(MS_ENOMEM, "%s: out of memory", dir);
    for (int i = 0; i < m; i++) {
        if (!st && shard_name(ents[i]->d_name, &k, &n)) {
            v[*count] = ms_path_join_new(dir, ents[i]->d_name);
            if (!v[(*count)++]) st = ms_error(MS_ENOMEM, "%s: out of memory", dir);
        }
        free(ents[i]);
    }
    free(ents);
    *names = v;
    return st;
}

static int cmp_gvol(const void *a, const void *b)
{
    const gvol *x = a, *y = b;
    if (x->source != y->source) return x->source < y->source ? -1 : 1;
    return (x->local > y->local) - (x->local < y->local);
}

/* A set's volumes in their global order: every volume record of every shard (its source index, local range),
 * sorted by source index, then local id (a source's volumes, all in one shard, in ingest order). */
static ms_status set_map(ms_store *s)
{
    uint64_t nv = 0;
    for (int i = 0; i < s->n_parts; i++) nv += s->parts[i].n_volumes;
    if (nv >= UINT32_MAX) return ms_error(MS_EUNSUPPORTED, "%s: too many volumes", s->path);
    s->vols = calloc((size_t)nv + 1, sizeof *s->vols);
    if (!s->vols) return ms_error(MS_ENOMEM, "%s: out of memory", s->path);
    ms_status st = MS_OK;
    uint64_t m = 0;
    for (int i = 0; i < s->n_parts && !st; i++) {
        part *p = &s->parts[i];
        MDB_txn *txn = NULL;
        int rc = mdb_txn_begin(p->env, NULL, MDB_RDONLY, &txn);
        if (rc) return ms_error(MS_EIO, "%s: %s", p->path, mdb_strerror(rc));
        for (uint32_t v = 0; v < p->n_volumes && !st; v++) {
            uint8_t k[4];
            char *t = NULL;
            ms_key32(k, v);
            if ((st = get_text(p, txn, p->volumes, k, 4, &t))) {
                if (st == MS_ENOTFOUND) st = ms_error(MS_ECORRUPT, "%s: no volume %u", p->path, v);
                break;
            }
            cJSON *j = cJSON_Parse(t);
            free(t);
            double id = jnum(j, "id", -1), fk = jnum(j, "first_key", -1), n = jnum(j, "n_slices", -1);
            double src = jnum(j, "source_index", -1);
            cJSON_Delete(j);
            if (!(id == v && fk >= 0 && n >= 0 && n <= UINT32_MAX && fk + n <= (double)p->n_slices && src >= 0 &&
                  src < 0x1p53 && (int64_t)src % p->n == p->k)) {
                st = ms_error(MS_EFORMAT, "%s: volume %u: not a volume of shard %d of %d (id, key range or "
                              "source_index)", p->path, v, p->k, p->n);
                break;
            }
            s->vols[m++] = (gvol){.local_first = (uint64_t)fk, .source = (int64_t)src, .n = (uint32_t)n,
                                  .local = v, .part = i};
        }
        mdb_txn_abort(txn);
    }
    if (st) return st;
    qsort(s->vols, (size_t)m, sizeof *s->vols, cmp_gvol);
    uint64_t key = 0;
    for (uint64_t g = 0; g < m; g++) {
        s->vols[g].first = key;
        key += s->vols[g].n;
    }
    s->n_volumes = (uint32_t)m;
    s->n_slices = key;
    return MS_OK;
}

/* Opens DIR's shards as one store. They are opened with MDB_NOLOCK: a set is read once its ingest jobs are done
 * (readers never share a shard with its writer), often from a read-only or node-local copy where LMDB could not
 * create or lock lock.mdb; without a writer there is nothing to lock against. A one-piece store keeps LMDB's lock
 * file, since a one-piece ingest may append while readers train on it. */
static ms_status open_set(ms_store *s, int max_readers)
{
    char **names = NULL;
    int n_names = 0;
    ms_status st = list_shards(s->path, &names, &n_names);
    part *got = st ? NULL : calloc((size_t)n_names + 1, sizeof *got);
    if (!st && !got) st = ms_error(MS_ENOMEM, "%s: out of memory", s->path);
    for (int i = 0; i < n_names && !st; i++) {
        if ((st = open_part(names[i], MDB_NOLOCK, max_readers, &got[i]))) break;
        if (!got[i].set[0])
            st = ms_error(MS_EFORMAT, "%s: %s is not a shard (no shard record)", s->path, ms_path_base(names[i]));
        else if (strcmp(got[i].set, got[0].set) || got[i].n != got[0].n)
            st = ms_error(MS_EINVAL, "%s: shards of two sets: %s (set %s, %d shards) and %s (set %s, %d shards)",
                          s->path, ms_path_base(names[0]), got[0].set, got[0].n, ms_path_base(names[i]), got[i].set,
                          got[i].n);
        else if (got[i].layout != got[0].layout)
            st = ms_error(MS_EFORMAT, "%s: shards of two layouts (%s, %s)", s->path, ms_path_base(names[0]),
                          ms_path_base(names[i]));
    }
    int n = n_names ? got[0].n : 0;
    if (!st) {
        s->parts = calloc((size_t)n + 1, sizeof *s->parts);
        if (!s->parts) st = ms_error(MS_ENOMEM, "%s: out of memory", s->path);
    }
    for (int i = 0; i < n_names && !st; i++) { /* parts by k: each once */
        part *dst = &s->parts[got[i].k];
        if (dst->path)
            st = ms_error(MS_EINVAL, "%s: shard %d of %d twice: %s and %s", s->path, got[i].k, n,
                          ms_path_base(dst->path), ms_path_base(got[i].path));
        else {
            *dst = got[i];
            memset(&got[i], 0, sizeof got[i]);
        }
    }
    if (s->parts) s->n_parts = n;
    for (int k = 0; k < n && !st; k++)
        if (!s->parts[k].path)
            st = ms_error(MS_ENOTFOUND, "%s: shard %d of %d is missing (set %s: each of ingest --shard 0/%d .. "
                          "%d/%d must be in the folder)", s->path, k, n, s->parts[0].path ? s->parts[0].set : "?",
                          n, n - 1, n);
    if (!st) {
        s->is_set = 1;
        s->layout = s->parts[0].layout;
        st = set_map(s);
    }
    for (int i = 0; i < n_names; i++) {
        if (got) close_part(&got[i]);
        free(names[i]);
    }
    free(got);
    free(names);
    return st;
}

ms_status ms_store_open(const char *path, int max_readers, ms_store **out)
{
    ms_status st = MS_OK;
    *out = NULL;
    ms_store *s = calloc(1, sizeof *s);
    if (!s) return ms_error(MS_ENOMEM, "%s: out of memory", path);
    s->path = strdup(path);
    if (!s->path)
        st = ms_error(MS_ENOMEM, "%s: out of memory", path);
    else if (ms_store_is_set(path))
        st = open_set(s, max_readers);
    else if (!(s->parts = calloc(1, sizeof *s->parts)))
        st = ms_error(MS_ENOMEM, "%s: out of memory", path);
    else {
        s->n_parts = 1;
        st = open_part(path, 0, max_readers, &s->parts[0]);
        s->n_volumes = s->parts[0].n_volumes;
        s->n_slices = s->parts[0].n_slices;
        s->layout = s->parts[0].layout;
    }
    if (st)
        ms_store_close(s);
    else
        *out = s;
    return st;
}

void ms_store_close(ms_store *s)
{
    if (!s) return;
    for (int i = 0; i < s->n_parts; i++) close_part(&s->parts[i]);
    free(s->parts);
    free(s->vols);
    free(s->path);
    free(s);
}

uint64_t ms_store_n_slices(const ms_store *s) { return s->n_slices; }
uint32_t ms_store_n_volumes(const ms_store *s) { return s->n_volumes; }
const char *ms_store_label_names(const ms_store *s) { return s->parts[0].label_names; }
int ms_store_n_shards(const ms_store *s) { return s->is_set ? s->n_parts : 0; }
const char *ms_store_shard_dir(const ms_store *s, int k) { return k >= 0 && k < s->n_parts ? s->parts[k].path : NULL; }

const char *ms_store_id(const ms_store *s)
{
    const char *id = s->is_set ? s->parts[0].set : s->parts[0].id;
    return id[0] ? id : NULL;
}

ms_status ms_store_id_at(const char *path, char id[33])
{
    char **names = NULL;
    int n = 0;
    part p = {0};
    id[0] = 0;
    ms_status st = MS_OK;
    if (ms_store_is_set(path)) st = list_shards(path, &names, &n);
    /* MDB_NOLOCK even for a one-piece store: the caller may hold it open already, and a second lock file handle in
     * one process would drop that one's locks when closed (LMDB's fcntl locks are per process). The ID, written
     * once at creation, is read in one short transaction. */
    if (!st) st = open_part(n ? names[0] : path, MDB_NOLOCK, 1, &p);
    if (!st) snprintf(id, 33, "%s", n ? p.set : p.id);
    close_part(&p);
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return st;
}

static ms_status txn_text(part *s, MDB_dbi dbi, const void *key, size_t klen, char **out)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc) return ms_error(MS_EIO, "%s: %s", s->path, mdb_strerror(rc));
    ms_status st = get_text(s, txn, dbi, key, klen, out);
    mdb_txn_abort(txn);
    return st;
}

/* A set's "counts": every number summed over the shards. */
static ms_status set_counts(ms_store *s, char **out)
{
    cJSON *sum = NULL;
    ms_status st = MS_OK;
    for (int i = 0; i < s->n_parts && !st; i++) {
        char *t = NULL;
        if ((st = txn_text(&s->parts[i], s->parts[i].meta, "counts", 6, &t))) break;
        cJSON *j = cJSON_Parse(t), *e;
        free(t);
        if (!sum) {
            sum = j;
            continue;
        }
        cJSON_ArrayForEach(e, sum)
        {
            const cJSON *o = cJSON_GetObjectItem(j, e->string);
            if (cJSON_IsNumber(e) && cJSON_IsNumber(o)) cJSON_SetNumberValue(e, e->valuedouble + o->valuedouble);
        }
        cJSON_Delete(j);
    }
    if (!st && !(*out = sum ? cJSON_PrintUnformatted(sum) : NULL)) st = ms_error(MS_ENOMEM, "%s: out of memory", s->path);
    cJSON_Delete(sum);
    return st;
}

ms_status ms_store_meta_json(ms_store *s, const char *name, char **out)
{
    ms_status st;
    *out = NULL;
    if (s->is_set && (!strcmp(name, "id") || !strcmp(name, "shard"))) {
        char t[160];
        if (!strcmp(name, "id"))
            snprintf(t, sizeof t, "{\"id\":\"%s\"}", s->parts[0].set);
        else
            snprintf(t, sizeof t, "{\"set\":\"%s\",\"n\":%d}", s->parts[0].set, s->n_parts);
        *out = strdup(t);
        return *out ? MS_OK : ms_error(MS_ENOMEM, "%s: out of memory", s->path);
    }
    if (s->is_set && !strcmp(name, "counts"))
        st = set_counts(s, out);
    else /* a set's shards share format, params and label rule (the set's ID covers the options) */
        st = txn_text(&s->parts[0], s->parts[0].meta, name, strlen(name), out);
    if (st == MS_ENOTFOUND) return ms_error(st, "%s: no meta record %s", s->path, name);
    return st;
}

/* Volume id of the store: its part and local id (a one-piece store's are its own). */
static ms_status locate_volume(ms_store *s, uint32_t volume_id, part **p, uint32_t *local)
{
    *p = &s->parts[0];
    *local = volume_id;
    if (!s->is_set) return MS_OK;
    if (volume_id >= s->n_volumes) return ms_error(MS_ENOTFOUND, "%s: no volume %u", s->path, volume_id);
    *p = &s->parts[s->vols[volume_id].part];
    *local = s->vols[volume_id].local;
    return MS_OK;
}

ms_status ms_store_volume_json(ms_store *s, uint32_t volume_id, char **out)
{
    part *p;
    uint32_t local;
    uint8_t k[4];
    *out = NULL;
    MS_TRY(locate_volume(s, volume_id, &p, &local));
    ms_key32(k, local);
    ms_status st = txn_text(p, p->volumes, k, 4, out);
    if (st == MS_ENOTFOUND) return ms_error(st, "%s: no volume %u", s->path, volume_id);
    if (st || !s->is_set) return st;
    /* a set's volume says its global id and first key (the record keeps the shard's own) */
    cJSON *j = cJSON_Parse(*out);
    free(*out);
    *out = NULL;
    if (j) {
        cJSON_ReplaceItemInObject(j, "id", cJSON_CreateNumber(volume_id));
        cJSON_ReplaceItemInObject(j, "first_key", cJSON_CreateNumber((double)s->vols[volume_id].first));
        *out = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
    }
    return *out ? MS_OK : ms_error(MS_EFORMAT, "%s: volume %u: bad record", p->path, local);
}

/* Volume `volume_id` of part p (its local id), as the record says. */
static ms_status volume_part(ms_store *s, part *p, uint32_t volume_id, ms_volume_info *out)
{
    char *txt = NULL;
    uint8_t k[4];
    ms_key32(k, volume_id);
    ms_status st = txn_text(p, p->volumes, k, 4, &txt);
    if (st == MS_ENOTFOUND) return ms_error(st, "%s: no volume %u", p->path, volume_id);
    if (st) return st;
    memset(out, 0, sizeof *out);
    cJSON *j = cJSON_Parse(txt);
    if (!j) {
        st = ms_error(MS_EFORMAT, "%s: volume %u: bad record", p->path, volume_id);
        goto leave;
    }
    /* the integer fields inside their types (the cast of a number outside them is undefined) */
    double id = jnum(j, "id", -1), fk = jnum(j, "first_key", 0), ns = jnum(j, "n_slices", 0);
    double ht = jnum(j, "height", 0), wd = jnum(j, "width", 0);
    if (!(id >= 0 && id <= UINT32_MAX && fk >= 0 && fk < 0x1p64 && ns >= 0 && ns <= UINT32_MAX && ht >= 0 &&
          ht <= INT32_MAX && wd >= 0 && wd <= INT32_MAX)) {
        st = ms_error(MS_EFORMAT, "%s: volume %u: bad record", p->path, volume_id);
        goto leave;
    }
    out->id = (uint32_t)id;
    out->first_key = (uint64_t)fk;
    out->n_slices = (uint32_t)ns;
    out->height = (int32_t)ht;
    out->width = (int32_t)wd;
    const cJSON *sp = cJSON_GetObjectItem(j, "spacing");
    for (int i = 0; i < 3 && cJSON_IsArray(sp); i++) {
        const cJSON *e = cJSON_GetArrayItem(sp, i);
        out->spacing[i] = cJSON_IsNumber(e) ? (float)e->valuedouble : 0.f;
    }
    const cJSON *in = cJSON_GetObjectItem(j, "intensity");
    out->intensity_offset = jnum(in, "offset", 0);
    out->intensity_scale = jnum(in, "scale", 1);
    ms_status es = volume_encoding(s, in, &out->enc);
    out->layout = es == MS_ENOTFOUND ? 1 : 2;
    if (es == MS_EFORMAT) {
        st = ms_error(MS_EFORMAT, "%s: volume %u: bad intensity encoding", p->path, volume_id);
        goto leave;
    }
    if (es && es != MS_ENOTFOUND) {
        st = ms_error(es, "%s: volume %u: %s", p->path, volume_id, ms_errmsg());
        goto leave;
    }
    const cJSON *lab = cJSON_GetObjectItem(j, "labels");
    if (cJSON_IsObject(lab)) {
        out->has_labels = 1;
        const cJSON *vals = cJSON_GetObjectItem(lab, "values");
        int n = cJSON_GetArraySize(vals);
        if (n > 256) n = 256;
        for (int i = 0; i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(vals, i);
            out->label_values[i] = (uint16_t)(cJSON_IsNumber(e) ? e->valueint : 0);
        }
        out->n_label_values = n;
    }
    const cJSON *h = cJSON_GetObjectItem(j, "source_hash");
    if (cJSON_IsString(h)) snprintf(out->source_hash, sizeof out->source_hash, "%s", h->valuestring);
    if (out->id != volume_id || out->height <= 0 || out->width <= 0)
        st = ms_error(MS_EFORMAT, "%s: volume %u: bad record", p->path, volume_id);
leave:
    cJSON_Delete(j);
    free(txt);
    return st;
}

ms_status ms_store_volume(ms_store *s, uint32_t volume_id, ms_volume_info *out)
{
    part *p;
    uint32_t local;
    MS_TRY(locate_volume(s, volume_id, &p, &local));
    MS_TRY(volume_part(s, p, local, out));
    if (s->is_set) { /* the set's numbering */
        out->id = volume_id;
        out->first_key = s->vols[volume_id].first;
    }
    return MS_OK;
}

ms_status ms_store_reader_new(ms_store *s, ms_store_reader **out)
{
    ms_store_reader *r = calloc(1, sizeof *r);
    if (!r) return ms_error(MS_ENOMEM, "%s: out of memory", s->path);
    r->s = s;
    r->dctx = ZSTD_createDCtx();
    r->txn = calloc((size_t)s->n_parts, sizeof *r->txn);
    if (!r->dctx || !r->txn) {
        ZSTD_freeDCtx(r->dctx);
        free(r->txn);
        free(r);
        return ms_error(MS_ENOMEM, "%s: out of memory", s->path);
    }
    *out = r;
    return MS_OK;
}

void ms_store_reader_free(ms_store_reader *r)
{
    if (!r) return;
    for (int i = 0; i < r->s->n_parts; i++)
        if (r->txn[i]) mdb_txn_abort(r->txn[i]);
    free(r->txn);
    ZSTD_freeDCtx(r->dctx);
    free(r->pix);
    free(r->lab);
    free(r->tmp);
    free(r->raw);
    free(r->enc);
    free(r);
}

/* Parses and checks the header of a record of `len` bytes. why gets the reason on failure. */
static int parse_hdr(const uint8_t *p, size_t len, ms_rec_hdr *h, const char **why)
{
    if (len < MS_REC_HDR || memcmp(p, MS_REC_MAGIC, 4) != 0) {
        *why = "bad record magic or size";
        return 0;
    }
    h->hcrc = ms_get_u32le(p + 40);
    if (ms_data_crc32c(0, p, 40) != h->hcrc) {
        *why = "record header checksum mismatch";
        return 0;
    }
    h->dtype = p[4];
    h->flags = p[5];
    h->height = ms_get_u32le(p + 8);
    h->width = ms_get_u32le(p + 12);
    uint32_t a = ms_get_u32le(p + 16), b = ms_get_u32le(p + 20);
    memcpy(&h->spacing[0], &a, 4);
    memcpy(&h->spacing[1], &b, 4);
    h->volume_id = ms_get_u32le(p + 24);
    h->slice_index = ms_get_u32le(p + 28);
    h->crc = ms_get_u32le(p + 32);
    h->zlen = ms_get_u32le(p + 36);
    if ((h->dtype != MS_REC_U16 && h->dtype != MS_REC_U8 && h->dtype != MS_REC_I16) || h->height == 0 || h->width == 0 || h->height > 65536 ||
        h->width > 65536 || (uint64_t)h->zlen != len - MS_REC_HDR) {
        *why = "bad record header fields";
        return 0;
    }
    return 1;
}

/* Decodes one record (see store_fmt.h). */
int ms_rec_decode(ZSTD_DCtx *dctx, const uint8_t *p, size_t len, ms_rec_hdr *h, uint16_t **dst, size_t *dst_cap,
                  uint8_t **tmp, size_t *tmp_cap, const char **why)
{
    if (!parse_hdr(p, len, h, why)) return 0;
    size_t npx = (size_t)h->height * h->width, esz = h->dtype == MS_REC_U8 ? 1 : 2, raw = npx * esz;
    unsigned long long fcs = ZSTD_getFrameContentSize(p + MS_REC_HDR, h->zlen);
    if (fcs != raw) {
        *why = "zstd frame size disagrees with the header";
        return 0;
    }
    if (grow((void **)tmp, tmp_cap, raw) || grow((void **)dst, dst_cap, npx * 2)) {
        *why = "out of memory";
        return 0;
    }
    size_t got = ZSTD_decompressDCtx(dctx, *tmp, raw, p + MS_REC_HDR, h->zlen);
    if (ZSTD_isError(got) || got != raw) {
        *why = ZSTD_isError(got) ? ZSTD_getErrorName(got) : "short zstd frame";
        return 0;
    }
    uint16_t *o = *dst;
    const uint8_t *t = *tmp;
    if (esz == 1) {
        if (ms_data_crc32c(0, t, raw) != h->crc) {
            *why = "pixel checksum mismatch";
            return 0;
        }
        for (size_t i = 0; i < npx; i++) o[i] = t[i];
        return 1;
    }
    if (h->flags & MS_REC_SHUFFLED) {
        size_t i = 0;
#if defined(__SSE2__)
        for (; i + 16 <= npx; i += 16) { /* interleave 16 low and 16 high bytes */
            __m128i l = _mm_loadu_si128((const __m128i *)(t + i)), hb = _mm_loadu_si128((const __m128i *)(t + npx + i));
            _mm_storeu_si128((__m128i *)(o + i), _mm_unpacklo_epi8(l, hb));
            _mm_storeu_si128((__m128i *)(o + i + 8), _mm_unpackhi_epi8(l, hb));
        }
#endif
        for (; i < npx; i++) o[i] = (uint16_t)(t[i] | t[npx + i] << 8);
    }
    else
        for (size_t i = 0; i < npx; i++) o[i] = (uint16_t)(t[2 * i] | t[2 * i + 1] << 8);
    /* crc of the little-endian pixels; on a big-endian host this would need a byte swap first */
    if (ms_data_crc32c(0, o, raw) != h->crc) {
        *why = "pixel checksum mismatch";
        return 0;
    }
    return 1;
}

/* The encoding of part p's volume `id` (a layout-2 record), from the reader's cache (by the store's volume id
 * `gid`) or its record, read in the reader's txn of that part. */
static ms_status reader_encoding(ms_store_reader *r, part *s, MDB_txn *txn, uint32_t id, uint32_t gid,
                                 const ms_encoding **out)
{
    if (!r->enc && !(r->enc = calloc(ENC_CACHE, sizeof *r->enc))) return ms_error(MS_ENOMEM, "%s: out of memory", s->path);
    enc_slot *slot = &r->enc[gid % ENC_CACHE];
    if (!slot->valid || slot->id != gid) {
        uint8_t k[4];
        char *txt = NULL;
        ms_key32(k, id);
        ms_status st = get_text(s, txn, s->volumes, k, 4, &txt);
        if (st == MS_ENOTFOUND) return ms_error(MS_ECORRUPT, "%s: a slice names volume %u, which has no record", s->path, id);
        if (st) return st;
        cJSON *j = cJSON_Parse(txt);
        free(txt);
        slot->valid = 0;
        st = j ? volume_encoding(r->s, cJSON_GetObjectItem(j, "intensity"), &slot->e) : MS_EFORMAT;
        cJSON_Delete(j);
        if (st == MS_EINVAL) return ms_error(st, "%s: volume %u: %s", s->path, id, ms_errmsg());
        if (st) return ms_error(MS_ECORRUPT, "%s: volume %u: no valid intensity encoding for its stored values", s->path, id);
        slot->id = gid;
        slot->valid = 1;
    }
    *out = &slot->e;
    return MS_OK;
}

int ms_store_layout(const ms_store *s) { return s->layout; }

ms_status ms_store_set_norm(ms_store *s, ms_norm norm, double p_lo, double p_hi)
{
    if (s->layout < 2)
        return ms_error(MS_EUNSUPPORTED, "%s: a layout-1 store keeps its pixels normalised at ingest; ingest the "
                        "sources again into a new store to change the normalisation", s->path);
    if (norm == MS_NORM_PERCENTILE) { /* refuse a pair the stores' grid lacks now, not at the first read */
        ms_encoding e = {.n_nonzero = 0};
        MS_TRY(ms_encoding_rewindow(&e, norm, p_lo, p_hi));
    }
    s->rewindow = 1;
    s->norm = norm;
    s->p_lo = p_lo;
    s->p_hi = p_hi;
    return MS_OK;
}

/* Slice `key` of part pi (its local key). gv: the set's volume that owns it (its record must name that volume;
 * out->key and out->volume_id are the set's), NULL in a one-piece store. */
static ms_status read_part(ms_store_reader *r, int pi, uint64_t key, const gvol *gv, ms_slice *out)
{
    part *s = &r->s->parts[pi];
    MDB_txn **txn = &r->txn[pi];
    ms_status st = MS_OK;
    int rc = *txn ? mdb_txn_renew(*txn) : mdb_txn_begin(s->env, NULL, MDB_RDONLY, txn);
    if (rc) {
        if (*txn) {
            mdb_txn_abort(*txn);
            *txn = NULL;
        }
        return ms_error(MS_EIO, "%s: %s", s->path, mdb_strerror(rc));
    }
    uint8_t kb[8];
    ms_key64(kb, key);
    MDB_val k = {8, kb}, v;
    ms_rec_hdr h, hl;
    const char *why = NULL;
    rc = mdb_get(*txn, s->slices, &k, &v);
    if (rc == MDB_NOTFOUND) {
        st = ms_error(MS_ENOTFOUND, "%s: no slice %llu", s->path, (unsigned long long)key);
        goto leave;
    }
    if (rc) {
        st = ms_error(MS_EIO, "%s: %s", s->path, mdb_strerror(rc));
        goto leave;
    }
    if (!in_file(s, &v)) {
        st = ms_error(MS_ECORRUPT, "%s: slice %llu: reaches past the end of the file", s->path,
                      (unsigned long long)key);
        goto leave;
    }
    if (!ms_rec_decode(r->dctx, v.mv_data, v.mv_size, &h, &r->raw, &r->raw_cap, &r->tmp, &r->tmp_cap, &why)) {
        st = ms_error(MS_ECORRUPT, "%s: slice %llu: %s", s->path, (unsigned long long)key, why);
        goto leave;
    }
    memset(out, 0, sizeof *out);
    out->key = gv ? gv->first + (key - gv->local_first) : key;
    out->volume_id = gv ? (uint32_t)(gv - r->s->vols) : h.volume_id;
    if (gv && h.volume_id != gv->local) {
        st = ms_error(MS_ECORRUPT, "%s: slice %llu: names volume %u, its key lies in volume %u", s->path,
                      (unsigned long long)key, h.volume_id, gv->local);
        goto leave;
    }
    out->slice_index = h.slice_index;
    out->height = (int32_t)h.height;
    out->width = (int32_t)h.width;
    out->spacing[0] = h.spacing[0];
    out->spacing[1] = h.spacing[1];
    out->pixels = r->raw;
    if (h.flags & MS_REC_STORED) {
        const ms_encoding *e = NULL;
        size_t npx = (size_t)h.height * h.width;
        if ((st = reader_encoding(r, s, *txn, h.volume_id, out->volume_id, &e))) goto leave;
        if (e->type != h.dtype) {
            st = ms_error(MS_ECORRUPT, "%s: slice %llu: record type differs from its volume's", s->path,
                          (unsigned long long)key);
            goto leave;
        }
        if ((st = grow((void **)&r->pix, &r->pix_cap, npx * 2))) goto leave;
        ms_encoding_apply(e, r->raw, npx, r->pix);
        out->pixels = r->pix;
        out->stored = r->raw;
        out->stored_type = h.dtype;
    }
    rc = mdb_get(*txn, s->labels, &k, &v);
    if (rc == MDB_NOTFOUND) goto leave;
    if (rc) {
        st = ms_error(MS_EIO, "%s: %s", s->path, mdb_strerror(rc));
        goto leave;
    }
    if (!in_file(s, &v)) {
        st = ms_error(MS_ECORRUPT, "%s: label %llu: reaches past the end of the file", s->path,
                      (unsigned long long)key);
        goto leave;
    }
    if (!ms_rec_decode(r->dctx, v.mv_data, v.mv_size, &hl, &r->lab, &r->lab_cap, &r->tmp, &r->tmp_cap, &why)) {
        st = ms_error(MS_ECORRUPT, "%s: label %llu: %s", s->path, (unsigned long long)key, why);
        goto leave;
    }
    if (hl.height != h.height || hl.width != h.width) {
        st = ms_error(MS_ECORRUPT, "%s: label %llu: shape differs from its slice", s->path, (unsigned long long)key);
        goto leave;
    }
    out->label = r->lab;
leave:
    mdb_txn_reset(*txn);
    return st;
}

ms_status ms_store_read(ms_store_reader *r, uint64_t key, ms_slice *out)
{
    ms_store *s = r->s;
    if (!s->is_set) return read_part(r, 0, key, NULL, out);
    if (key >= s->n_slices) return ms_error(MS_ENOTFOUND, "%s: no slice %llu", s->path, (unsigned long long)key);
    size_t lo = 0, hi = s->n_volumes; /* the last volume whose first key is <= key (empty ones skipped past) */
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (s->vols[mid].first <= key)
            lo = mid;
        else
            hi = mid;
    }
    while (lo < s->n_volumes && s->vols[lo].first + s->vols[lo].n <= key) lo++;
    const gvol *gv = &s->vols[lo];
    return read_part(r, gv->part, gv->local_first + (key - gv->first), gv, out);
}

/* ---- verify and sizes ---- */

typedef struct vrange {
    uint64_t first;
    uint32_t n;
    int has_labels;
    int stored_type; /* layout 2: the record dtype its slices must have; 0 for layout 1 */
    int bad;         /* its record is bad (reported once, not again for each of its slices) */
} vrange;

/* Verifies one part (its own keys and volume ids). */
static ms_status verify_part(ms_store *whole, part *s, ms_store_bad_fn on_bad, void *ctx, uint64_t *n_checked,
                            uint64_t *n_bad)
{
    ms_status st = MS_OK;
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    uint16_t *buf = NULL;
    uint8_t *tmp = NULL;
    size_t cap = 0, tcap = 0;
    vrange *vr = calloc((size_t)s->n_volumes + 1, sizeof *vr);
    if (!dctx || !vr) {
        st = ms_error(MS_ENOMEM, "%s: out of memory", s->path);
        goto leave;
    }
    char why_buf[160];
#define BAD(db, key, ...)                                                                                              \
    do {                                                                                                               \
        snprintf(why_buf, sizeof why_buf, __VA_ARGS__);                                                                \
        (*n_bad)++;                                                                                                    \
        if (on_bad) on_bad(ctx, db, key, why_buf);                                                                     \
    } while (0)
    for (uint32_t i = 0; i < s->n_volumes; i++) {
        ms_volume_info vi;
        (*n_checked)++;
        if (volume_part(whole, s, i, &vi) != MS_OK) {
            BAD("volumes", i, "%s", ms_errmsg());
            vr[i].bad = 1;
            continue;
        }
        vr[i].first = vi.first_key;
        vr[i].n = vi.n_slices;
        vr[i].has_labels = vi.has_labels;
        vr[i].stored_type = vi.layout == 2 ? vi.enc.type : 0;
    }
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc) {
        st = ms_error(MS_EIO, "%s: %s", s->path, mdb_strerror(rc));
        goto leave;
    }
    for (int pass = 0; pass < 2; pass++) {
        const char *db = pass ? "labels" : "slices";
        rc = mdb_cursor_open(txn, pass ? s->labels : s->slices, &cur);
        if (rc) {
            st = ms_error(MS_EIO, "%s: %s", s->path, mdb_strerror(rc));
            goto leave;
        }
        MDB_val k, v;
        uint64_t count = 0;
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            (*n_checked)++;
            count++;
            if (!in_file(s, &k) || !in_file(s, &v)) {
                BAD(db, count - 1, "record %llu reaches past the end of the file", (unsigned long long)(count - 1));
                continue;
            }
            if (k.mv_size != 8) {
                BAD(db, 0, "key of %zu bytes", k.mv_size);
                continue;
            }
            uint64_t key = ms_unkey64(k.mv_data);
            ms_rec_hdr h;
            const char *why = NULL;
            if (!ms_rec_decode(dctx, v.mv_data, v.mv_size, &h, &buf, &cap, &tmp, &tcap, &why)) {
                BAD(db, key, "%s", why);
                continue;
            }
            if (h.volume_id < s->n_volumes && vr[h.volume_id].bad) continue;
            if (h.volume_id >= s->n_volumes || key < vr[h.volume_id].first ||
                key >= vr[h.volume_id].first + vr[h.volume_id].n)
                BAD(db, key, "volume id %u does not own this key", h.volume_id);
            else if (pass && !vr[h.volume_id].has_labels)
                BAD(db, key, "label record for a volume without labels");
            else if (!pass && (!!(h.flags & MS_REC_STORED) != !!vr[h.volume_id].stored_type ||
                               ((h.flags & MS_REC_STORED) && h.dtype != vr[h.volume_id].stored_type)))
                BAD(db, key, "record layout (flags %u, dtype %u) differs from its volume's encoding", h.flags, h.dtype);
            if (key >= s->n_slices) BAD(db, key, "key beyond the slice count %llu", (unsigned long long)s->n_slices);
        }
        if (rc != MDB_NOTFOUND) {
            st = ms_error(MS_EIO, "%s: %s", s->path, mdb_strerror(rc));
            goto leave;
        }
        if (!pass && count != s->n_slices)
            BAD(db, count, "%llu slice records, counts say %llu", (unsigned long long)count,
                (unsigned long long)s->n_slices);
        mdb_cursor_close(cur);
        cur = NULL;
    }
#undef BAD
leave:
    if (cur) mdb_cursor_close(cur);
    if (txn) mdb_txn_abort(txn);
    ZSTD_freeDCtx(dctx);
    free(buf);
    free(tmp);
    free(vr);
    return st;
}

/* A set's verify: each shard's records, reported as "<shard folder> <db>" with the shard's own keys. */
typedef struct shard_bad {
    ms_store_bad_fn fn;
    void *ctx;
    const char *name;
} shard_bad;

static void on_shard_bad(void *ctx, const char *db, uint64_t key, const char *reason)
{
    const shard_bad *b = ctx;
    char where[MS_PATH_MAX + 16];
    snprintf(where, sizeof where, "%s %s", b->name, db);
    if (b->fn) b->fn(b->ctx, where, key, reason);
}

ms_status ms_store_verify(ms_store *s, ms_store_bad_fn on_bad, void *ctx, uint64_t *n_checked, uint64_t *n_bad)
{
    *n_checked = *n_bad = 0;
    if (!s->is_set) return verify_part(s, &s->parts[0], on_bad, ctx, n_checked, n_bad);
    for (int i = 0; i < s->n_parts; i++) {
        shard_bad b = {on_bad, ctx, ms_path_base(s->parts[i].path)};
        MS_TRY(verify_part(s, &s->parts[i], on_shard_bad, &b, n_checked, n_bad));
    }
    return MS_OK;
}

/* Adds part s's sizes to out. */
static ms_status sizes_part(part *s, ms_store_sizes *out)
{
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    ms_status st = MS_OK;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn);
    if (rc) return ms_error(MS_EIO, "%s: %s", s->path, mdb_strerror(rc));
    for (int pass = 0; pass < 2; pass++) {
        rc = mdb_cursor_open(txn, pass ? s->labels : s->slices, &cur);
        if (rc) {
            st = ms_error(MS_EIO, "%s: %s", s->path, mdb_strerror(rc));
            goto leave;
        }
        MDB_val k, v;
        uint64_t *n = pass ? &out->label_records : &out->slice_records;
        uint64_t *b = pass ? &out->label_bytes : &out->slice_bytes;
        uint64_t *raw = pass ? &out->label_raw_bytes : &out->slice_raw_bytes;
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            ms_rec_hdr h;
            const char *why;
            (*n)++;
            if (!in_file(s, &v)) continue;
            *b += v.mv_size;
            if (parse_hdr(v.mv_data, v.mv_size, &h, &why))
                *raw += (uint64_t)h.height * h.width * (h.dtype == MS_REC_U16 ? 2 : 1);
        }
        mdb_cursor_close(cur);
        cur = NULL;
    }
    MDB_envinfo ei;
    MDB_stat ms;
    if (!mdb_env_info(s->env, &ei) && !mdb_env_stat(s->env, &ms))
        out->file_bytes += (uint64_t)(ei.me_last_pgno + 1) * ms.ms_psize;
leave:
    if (cur) mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return st;
}

ms_status ms_store_sizes_get(ms_store *s, ms_store_sizes *out)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < s->n_parts; i++) MS_TRY(sizes_part(&s->parts[i], out));
    return MS_OK;
}
