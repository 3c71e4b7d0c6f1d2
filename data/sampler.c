/* data/sampler.c — seeded permutations, selections, splits by volume, few-shot subsets, multi-store order.
 *
 * Invariants: every function here is a pure function of its arguments (seed, epoch, position), so that the order
 * does not depend on threads, ranks or resume points; a selection's ranges are sorted, disjoint and merged after
 * ms_selection_finish; a split never puts slices of one volume on both sides (except the single-volume case, where
 * the two sides are contiguous blocks at least `gap` slices apart).
 */
#include "data/sampler.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/path.h"
#include "base/rng.h"

/* ---- permutation ------------------------------------------------------------------------------------------- */

void ms_perm_init(ms_perm *p, uint64_t n, uint64_t key)
{
    p->n = n;
    p->half_bits = 1;
    while (p->half_bits < 32 && ((uint64_t)1 << (2 * p->half_bits)) < n) p->half_bits++;
    for (int r = 0; r < 4; r++) p->keys[r] = ms_rand_u64(key, (uint64_t)r);
}

static uint64_t feistel(const ms_perm *p, uint64_t x)
{
    const int hb = p->half_bits;
    const uint64_t mask = ((uint64_t)1 << hb) - 1;
    uint64_t l = x >> hb, r = x & mask;
    for (int k = 0; k < 4; k++) {
        uint64_t t = l ^ (ms_mix64(r ^ p->keys[k]) & mask);
        l = r;
        r = t;
    }
    return (l << hb) | r;
}

uint64_t ms_perm_apply(const ms_perm *p, uint64_t i)
{
    if (p->n <= 1) return 0;
    /* Cycle walking: the network permutes [0, 4^h) with 4^h < 4n, so the walk leaves [n, 4^h) in a few steps and
     * the restriction to [0, n) stays a bijection. */
    uint64_t x = i;
    do x = feistel(p, x);
    while (x >= p->n);
    return x;
}

/* ---- selection ---------------------------------------------------------------------------------------------- */

ms_status ms_selection_add(ms_selection *s, uint64_t first, uint64_t count)
{
    if (count == 0) return MS_OK;
    if (s->n_ranges == s->cap) {
        int cap = s->cap ? 2 * s->cap : 16;
        ms_key_range *r = realloc(s->ranges, (size_t)cap * sizeof(*r));
        MS_FAIL_IF(!r, MS_ENOMEM, "selection: out of memory");
        s->ranges = r;
        s->cap = cap;
    }
    s->ranges[s->n_ranges].first = first;
    s->ranges[s->n_ranges].count = count;
    s->n_ranges++;
    return MS_OK;
}

static int cmp_range(const void *a, const void *b)
{
    const ms_key_range *x = a, *y = b;
    return x->first < y->first ? -1 : x->first > y->first;
}

ms_status ms_selection_finish(ms_selection *s)
{
    if (s->n_ranges > 1) qsort(s->ranges, (size_t)s->n_ranges, sizeof(*s->ranges), cmp_range);
    int m = 0;
    for (int i = 0; i < s->n_ranges; i++) {
        ms_key_range r = s->ranges[i];
        if (m > 0) {
            ms_key_range *last = &s->ranges[m - 1];
            MS_FAIL_IF(r.first < last->first + last->count, MS_EINVAL,
                       "selection: key ranges overlap at key %llu", (unsigned long long)r.first);
            if (r.first == last->first + last->count) {
                last->count += r.count;
                continue;
            }
        }
        s->ranges[m++] = r;
    }
    s->n_ranges = m;
    free(s->prefix);
    s->prefix = malloc((size_t)(m + 1) * sizeof(uint64_t));
    MS_FAIL_IF(!s->prefix, MS_ENOMEM, "selection: out of memory");
    s->prefix[0] = 0;
    for (int i = 0; i < m; i++) s->prefix[i + 1] = s->prefix[i] + s->ranges[i].count;
    s->n = s->prefix[m];
    return MS_OK;
}

ms_status ms_selection_subtract(ms_selection *s, const ms_selection *ex)
{
    if (!ex || !ex->n_ranges || !s->n_ranges) return MS_OK;
    ms_selection out = {0};
    ms_status rc = MS_OK;
    int j = 0; /* ex's ranges are sorted: the first that may still overlap the current range of s */
    for (int i = 0; i < s->n_ranges && !rc; i++) {
        uint64_t a = s->ranges[i].first, end = a + s->ranges[i].count;
        while (j < ex->n_ranges && ex->ranges[j].first + ex->ranges[j].count <= a) j++;
        for (int k = j; k < ex->n_ranges && ex->ranges[k].first < end && !rc; k++) {
            uint64_t ef = ex->ranges[k].first, ee = ef + ex->ranges[k].count;
            if (ef > a) rc = ms_selection_add(&out, a, ef - a);
            if (ee > a) a = ee;
        }
        if (!rc && a < end) rc = ms_selection_add(&out, a, end - a);
    }
    if (!rc) rc = ms_selection_finish(&out);
    if (rc) { ms_selection_free(&out); return rc; }
    ms_selection_free(s);
    *s = out;
    return MS_OK;
}

uint64_t ms_selection_key(const ms_selection *s, uint64_t i)
{
    int lo = 0, hi = s->n_ranges - 1; /* the last range with prefix <= i */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (s->prefix[mid] <= i) lo = mid;
        else hi = mid - 1;
    }
    return s->ranges[lo].first + (i - s->prefix[lo]);
}

ms_status ms_selection_spread(const ms_selection *s, uint64_t n, ms_selection *out)
{
    memset(out, 0, sizeof(*out));
    uint64_t m = n < s->n ? n : s->n;
    for (uint64_t j = 0; j < m; j++) {
        /* in double: (2j + 1) n overflows 64 bits for huge selections; the rounding moves no index that matters */
        uint64_t i = (uint64_t)(((2 * (double)j + 1) * (double)s->n) / (2 * (double)m)); /* = j when m == s->n */
        ms_status rc = ms_selection_add(out, ms_selection_key(s, i < s->n ? i : s->n - 1), 1);
        if (rc) {
            ms_selection_free(out);
            return rc;
        }
    }
    ms_status rc = ms_selection_finish(out);
    if (rc) ms_selection_free(out);
    return rc;
}

int ms_selection_contains(const ms_selection *s, uint64_t key)
{
    for (int i = 0; i < s->n_ranges; i++)
        if (key >= s->ranges[i].first && key < s->ranges[i].first + s->ranges[i].count) return 1;
    return 0;
}

void ms_selection_free(ms_selection *s)
{
    free(s->ranges);
    free(s->prefix);
    memset(s, 0, sizeof(*s));
}

/* ---- splits ------------------------------------------------------------------------------------------------- */

void ms_split_spec_default(ms_split_spec *sp)
{
    memset(sp, 0, sizeof(*sp));
    sp->val_fraction = 0.2;
    sp->gap = 8;
    sp->shot_unit = MS_SHOT_SLICE;
}

/* Keeps `shots` records of `train` chosen by seed (slices), writing the result back into train. */
static ms_status shots_by_slice(ms_selection *train, int shots, uint64_t seed)
{
    ms_status rc = MS_OK;
    ms_selection out = {0};
    MS_FAIL_IF((uint64_t)shots > train->n, MS_EINVAL, "split: --shots %d but only %llu training slices", shots,
               (unsigned long long)train->n);
    ms_perm p;
    ms_perm_init(&p, train->n, ms_rng_stream(seed, 0x5a075, 1));
    for (int k = 0; k < shots; k++) {
        rc = ms_selection_add(&out, ms_selection_key(train, ms_perm_apply(&p, (uint64_t)k)), 1);
        if (rc) goto leave;
    }
    rc = ms_selection_finish(&out);
    if (rc) goto leave;
    ms_selection_free(train);
    *train = out;
    memset(&out, 0, sizeof(out));
leave:
    ms_selection_free(&out);
    return rc;
}

ms_status ms_split_volumes(const ms_volume_info *vols, int n_vols, const ms_split_spec *sp, ms_selection *train,
                           ms_selection *val, int *single_volume)
{
    ms_status rc = MS_OK;
    int *elig = malloc((size_t)(n_vols > 0 ? n_vols : 1) * sizeof(int));
    int *is_val = calloc((size_t)(n_vols > 0 ? n_vols : 1), sizeof(int));
    int *is_shot = calloc((size_t)(n_vols > 0 ? n_vols : 1), sizeof(int));
    int ne = 0;
    double frac = val ? sp->val_fraction : 0.0;
    if (single_volume) *single_volume = 0;
    if (!elig || !is_val || !is_shot) {
        rc = ms_error(MS_ENOMEM, "split: out of memory");
        goto leave;
    }
    for (int i = 0; i < n_vols; i++)
        if (vols[i].n_slices > 0 && (vols[i].has_labels || !sp->labeled_only)) elig[ne++] = i;
    if (ne == 0) {
        rc = ms_error(MS_EINVAL, "split: no %svolumes to select from", sp->labeled_only ? "labelled " : "");
        goto leave;
    }
    if (frac < 0 || frac >= 1) {
        rc = ms_error(MS_EINVAL, "split: validation fraction %g is not in [0, 1)", frac);
        goto leave;
    }
    if (ne == 1 && frac > 0) {
        /* One labelled volume: contiguous blocks, `gap` slices apart, so neighbouring (near-duplicate) slices never
         * straddle the split. The seed picks whether validation is the first or the last block. */
        const ms_volume_info *v = &vols[elig[0]];
        int gap = sp->gap < 8 ? 8 : sp->gap;
        uint64_t n = v->n_slices, nv = (uint64_t)llround(frac * (double)n);
        if (nv < 1) nv = 1;
        if (n < nv + (uint64_t)gap + 1) {
            rc = ms_error(MS_EINVAL, "split: the store's only %svolume has %llu slices: too few to hold out a "
                          "%llu-slice validation block and a %d-slice gap; train without validation (pretrain "
                          "--val-slices 0, finetune --val-fraction 0) or add volumes", sp->labeled_only ? "labelled " : "",
                          (unsigned long long)n, (unsigned long long)nv, gap);
            goto leave;
        }
        uint64_t nt = n - nv - (uint64_t)gap;
        int val_first = (int)(ms_rand_u64(ms_rng_stream(sp->seed, 0x5b1, 0), 0) & 1);
        if (single_volume) *single_volume = 1;
        if (val_first) {
            if ((rc = ms_selection_add(val, v->first_key, nv))) goto leave;
            if ((rc = ms_selection_add(train, v->first_key + nv + (uint64_t)gap, nt))) goto leave;
        } else {
            if ((rc = ms_selection_add(train, v->first_key, nt))) goto leave;
            if ((rc = ms_selection_add(val, v->first_key + nt + (uint64_t)gap, nv))) goto leave;
        }
    } else {
        int nval = 0;
        if (frac > 0) {
            nval = (int)lround(frac * ne);
            if (nval < 1) nval = 1;
            if (nval > ne - 1) nval = ne - 1;
        }
        ms_perm p;
        ms_perm_init(&p, (uint64_t)ne, ms_rng_stream(sp->seed, 0x5b2, 0));
        for (int k = 0; k < nval; k++) is_val[elig[ms_perm_apply(&p, (uint64_t)k)]] = 1;
        int ntrain = ne - nval;
        if (sp->shots > 0 && sp->shot_unit == MS_SHOT_VOLUME) {
            if (sp->shots > ntrain) {
                rc = ms_error(MS_EINVAL, "split: --shots %d volumes but only %d training volumes", sp->shots, ntrain);
                goto leave;
            }
            /* The k-th training volume in a seeded order, for k < shots. */
            int *tv = malloc((size_t)ntrain * sizeof(int)), m = 0;
            if (!tv) {
                rc = ms_error(MS_ENOMEM, "split: out of memory");
                goto leave;
            }
            for (int i = 0; i < ne; i++)
                if (!is_val[elig[i]]) tv[m++] = elig[i];
            ms_perm q;
            ms_perm_init(&q, (uint64_t)ntrain, ms_rng_stream(sp->seed, 0x5a075, 2));
            for (int k = 0; k < sp->shots; k++) is_shot[tv[ms_perm_apply(&q, (uint64_t)k)]] = 1;
            free(tv);
        }
        for (int i = 0; i < ne; i++) {
            const ms_volume_info *v = &vols[elig[i]];
            if (is_val[elig[i]]) rc = ms_selection_add(val, v->first_key, v->n_slices);
            else if (!(sp->shots > 0 && sp->shot_unit == MS_SHOT_VOLUME) || is_shot[elig[i]])
                rc = ms_selection_add(train, v->first_key, v->n_slices);
            if (rc) goto leave;
        }
    }
    if ((rc = ms_selection_finish(train))) goto leave;
    if (val && (rc = ms_selection_finish(val))) goto leave;
    if ((rc = ms_selection_subtract(train, sp->exclude))) goto leave;
    if (val && (rc = ms_selection_subtract(val, sp->exclude))) goto leave;
    if (sp->shots > 0 && sp->shot_unit == MS_SHOT_SLICE && (rc = shots_by_slice(train, sp->shots, sp->seed)))
        goto leave;
leave:
    free(elig);
    free(is_val);
    free(is_shot);
    return rc;
}

/* ---- split files -------------------------------------------------------------------------------------------- */

static cJSON *ranges_json(const ms_selection *s)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && s && i < s->n_ranges; i++) {
        cJSON *r = cJSON_CreateArray();
        if (!r) break;
        cJSON_AddItemToArray(r, cJSON_CreateNumber((double)s->ranges[i].first));
        cJSON_AddItemToArray(r, cJSON_CreateNumber((double)s->ranges[i].count));
        cJSON_AddItemToArray(a, r);
    }
    return a;
}

/* Writes text to path crash-safely: path.tmp.<pid>, fsync, rename. */
static ms_status write_file_atomic(const char *path, const char *text)
{
    ms_status rc = MS_OK;
    char tmp[MS_PATH_MAX];
    int fd = -1;
    if ((rc = ms_path_fmt(tmp, "%s.tmp.%ld", path, (long)getpid()))) goto leave;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        rc = ms_error(errno, "%s: %s", tmp, strerror(errno));
        goto leave;
    }
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            rc = ms_error(errno ? errno : MS_EIO, "%s: write failed: %s", tmp, strerror(errno));
            goto leave;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        fd = -1;
        rc = ms_error(errno, "%s: %s", tmp, strerror(errno));
        goto leave;
    }
    fd = -1;
    if (rename(tmp, path) != 0) rc = ms_error(errno, "%s: %s", path, strerror(errno));
leave:
    if (fd >= 0) close(fd);
    if (rc) unlink(tmp);
    return rc;
}

ms_status ms_split_save(const char *path, const ms_split_spec *sp, int n_stores, const char *const *store_paths,
                        const ms_selection *train, const ms_selection *val, const int *single_volume)
{
    ms_status rc = MS_OK;
    char *text = NULL;
    cJSON *root = cJSON_CreateObject(), *stores = NULL;
    if (!root) return ms_error(MS_ENOMEM, "%s: out of memory", path);
    cJSON_AddNumberToObject(root, "version", 1);
    char seed[32];
    snprintf(seed, sizeof(seed), "%llu", (unsigned long long)sp->seed); /* a string: JSON numbers lose 64-bit seeds */
    cJSON_AddStringToObject(root, "seed", seed);
    cJSON_AddNumberToObject(root, "val_fraction", sp->val_fraction);
    cJSON_AddNumberToObject(root, "shots", sp->shots);
    cJSON_AddStringToObject(root, "shot_unit", sp->shot_unit == MS_SHOT_VOLUME ? "volume" : "slice");
    stores = cJSON_AddArrayToObject(root, "stores");
    for (int i = 0; stores && i < n_stores; i++) {
        cJSON *o = cJSON_CreateObject();
        if (!o) break;
        const char *sp_i = store_paths && store_paths[i] ? store_paths[i] : "";
        char id[33] = "";
        cJSON_AddStringToObject(o, "path", sp_i);
        /* the store's ID names it wherever it is copied; a path that is no store (or one without an ID) writes none */
        if (sp_i[0] && ms_store_id_at(sp_i, id) != MS_OK) ms_error_clear();
        if (id[0]) cJSON_AddStringToObject(o, "id", id);
        cJSON_AddNumberToObject(o, "single_volume", single_volume ? single_volume[i] : 0);
        cJSON_AddItemToObject(o, "train", ranges_json(&train[i]));
        cJSON_AddItemToObject(o, "val", ranges_json(val ? &val[i] : NULL));
        cJSON_AddItemToArray(stores, o);
    }
    text = cJSON_Print(root);
    if (!text) {
        rc = ms_error(MS_ENOMEM, "%s: out of memory", path);
        goto leave;
    }
    rc = write_file_atomic(path, text);
leave:
    free(text);
    cJSON_Delete(root);
    return rc;
}

/* The last path component of p without trailing slashes: its start and length. */
static const char *last_component(const char *p, size_t *len)
{
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && p[b - 1] != '/') b--;
    *len = n - b;
    return p + b;
}

/* Whether a split file's store path names the run's store: the same string; else, when the recorded path exists
 * from here, the same directory (device and inode); else (a store moved, or a file written by hand relative to
 * another folder) the same last path component. "" records no store and matches any. */
static int split_store_matches(const char *recorded, const char *store)
{
    if (!recorded[0] || !strcmp(recorded, store)) return 1;
    struct stat a, b;
    if (stat(recorded, &a) == 0) return stat(store, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
    size_t la, lb;
    const char *ca = last_component(recorded, &la), *cb = last_component(store, &lb);
    return la == lb && la > 0 && !memcmp(ca, cb, la);
}

/* A JSON value's text for a message, cut to fit one line. */
static void json_brief(const cJSON *v, char out[64])
{
    char *t = cJSON_PrintUnformatted(v);
    if (t && strlen(t) > 60) snprintf(out, 64, "%.57s...", t);
    else snprintf(out, 64, "%s", t ? t : "?");
    free(t);
}

/* A JSON number that is a whole number in [0, 2^53] (every such integer is exact in a double). */
static int json_whole(const cJSON *v)
{
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 9007199254740992.0 &&
           v->valuedouble == floor(v->valuedouble);
}

/* stores[index].<name> into s: every element a [first key, count] pair of non-negative integers, inside the store
 * (keys < n_keys when n_keys > 0), no two overlapping. */
static ms_status ranges_from_json(const char *path, int index, const char *name, const cJSON *a, uint64_t n_keys,
                                  ms_selection *s)
{
    MS_FAIL_IF(!cJSON_IsArray(a), MS_EFORMAT, "%s: stores[%d].%s: expected an array of [first key, count] pairs",
               path, index, name);
    const cJSON *r;
    int i = 0;
    char txt[64];
    cJSON_ArrayForEach(r, a)
    {
        const cJSON *f = cJSON_GetArrayItem(r, 0), *c = cJSON_GetArrayItem(r, 1);
        if (!cJSON_IsArray(r) || cJSON_GetArraySize(r) != 2 || !json_whole(f) || !json_whole(c)) {
            json_brief(r, txt);
            return ms_error(MS_EFORMAT, "%s: stores[%d].%s[%d]: %s is not a [first key, count] pair of non-negative "
                            "integers", path, index, name, i, txt);
        }
        uint64_t first = (uint64_t)f->valuedouble, count = (uint64_t)c->valuedouble;
        MS_FAIL_IF(n_keys && count && first + count > n_keys, MS_EFORMAT,
                   "%s: stores[%d].%s[%d]: [%llu, %llu] reaches key %llu but the store has %llu records (keys "
                   "0..%llu)", path, index, name, i, (unsigned long long)first, (unsigned long long)count,
                   (unsigned long long)(first + count - 1), (unsigned long long)n_keys,
                   (unsigned long long)(n_keys - 1));
        MS_TRY(ms_selection_add(s, first, count));
        i++;
    }
    ms_status rc = ms_selection_finish(s);
    if (rc) ms_error_prefix("%s: stores[%d].%s", path, index, name);
    return rc;
}

/* The first key two finished selections share, or UINT64_MAX. */
static uint64_t first_common_key(const ms_selection *a, const ms_selection *b)
{
    int i = 0, j = 0;
    while (i < a->n_ranges && j < b->n_ranges) {
        const ms_key_range *x = &a->ranges[i], *y = &b->ranges[j];
        uint64_t lo = x->first > y->first ? x->first : y->first;
        if (lo < x->first + x->count && lo < y->first + y->count) return lo;
        if (x->first + x->count <= y->first + y->count) i++;
        else j++;
    }
    return UINT64_MAX;
}

/* The file's header fields: version 1, and shots (when present) a non-negative integer. */
static ms_status split_check_header(const char *path, const cJSON *root)
{
    char txt[64];
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "version");
    MS_FAIL_IF(!v, MS_EFORMAT, "%s: no \"version\": this mrisam reads version 1", path);
    if (!cJSON_IsNumber(v) || v->valuedouble != 1) {
        json_brief(v, txt);
        return ms_error(MS_EUNSUPPORTED, "%s: version %s: this mrisam reads version 1", path, txt);
    }
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(root, "shots");
    if (k && !json_whole(k)) {
        json_brief(k, txt);
        MS_FAIL_IF(cJSON_IsNumber(k) && k->valuedouble < 0, MS_EFORMAT, "%s: shots %s is negative", path, txt);
        return ms_error(MS_EFORMAT, "%s: shots %s is not a whole number", path, txt);
    }
    return MS_OK;
}

/* Entry `index` of a parsed split file into train and val (finished selections; freed by the caller). */
static ms_status split_read_store(const char *path, const cJSON *root, int index, const char *store_path,
                                  uint64_t n_keys, ms_selection *tr, ms_selection *va)
{
    MS_TRY(split_check_header(path, root));
    const cJSON *stores = cJSON_GetObjectItemCaseSensitive(root, "stores");
    MS_FAIL_IF(!cJSON_IsArray(stores) || index < 0 || index >= cJSON_GetArraySize(stores), MS_EFORMAT,
               "%s: no entry for store %d in \"stores\"", path, index);
    const cJSON *o = cJSON_GetArrayItem(stores, index), *p = cJSON_GetObjectItemCaseSensitive(o, "path");
    MS_FAIL_IF(p && !cJSON_IsString(p), MS_EFORMAT, "%s: stores[%d].path is not a string", path, index);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
    MS_FAIL_IF(id && (!cJSON_IsString(id) || strlen(id->valuestring) != 32), MS_EFORMAT,
               "%s: stores[%d].id is not a store ID (32 hex digits)", path, index);
    if (store_path && id) { /* the ID decides, wherever the store now lies */
        char have[33];
        MS_TRY(ms_store_id_at(store_path, have));
        MS_FAIL_IF(strcmp(have, id->valuestring), MS_EINVAL,
                   "%s: stores[%d] was made for store ID %s but the run's store %s has %s%s", path, index,
                   id->valuestring, store_path, have[0] ? "ID " : "no ID", have);
    } else if (store_path && p && !split_store_matches(p->valuestring, store_path)) {
        /* a name with a control character (a newline would split the message) is shown quoted and escaped */
        int ctl = 0;
        for (const char *c = p->valuestring; *c; c++) ctl |= (unsigned char)*c < 0x20;
        char *q = ctl ? cJSON_PrintUnformatted(p) : NULL;
        ms_status rc = ms_error(MS_EINVAL, "%s: stores[%d] names store %s but the run's store is %s", path, index,
                                q ? q : p->valuestring, store_path);
        free(q);
        return rc;
    }
    MS_TRY(ranges_from_json(path, index, "train", cJSON_GetObjectItemCaseSensitive(o, "train"), n_keys, tr));
    MS_TRY(ranges_from_json(path, index, "val", cJSON_GetObjectItemCaseSensitive(o, "val"), n_keys, va));
    uint64_t k = first_common_key(tr, va);
    MS_FAIL_IF(k != UINT64_MAX, MS_EFORMAT, "%s: stores[%d].val overlaps stores[%d].train at key %llu", path, index,
               index, (unsigned long long)k);
    return MS_OK;
}

ms_status ms_split_load(const char *path, int index, const char *store_path, uint64_t n_keys, ms_selection *train,
                        ms_selection *val)
{
    ms_status rc = MS_OK;
    char *text = NULL;
    cJSON *root = NULL;
    ms_selection tr = {0}, va = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return ms_error(errno, "%s: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        rc = ms_error(MS_EIO, "%s: cannot seek", path);
        goto leave;
    }
    long len = ftell(f);
    if (len < 0 || len > (64L << 20)) {
        rc = ms_error(MS_EFORMAT, "%s: not a split file (size %ld)", path, len);
        goto leave;
    }
    rewind(f);
    text = malloc((size_t)len + 1);
    if (!text) {
        rc = ms_error(MS_ENOMEM, "%s: out of memory", path);
        goto leave;
    }
    if (fread(text, 1, (size_t)len, f) != (size_t)len) {
        rc = ms_error(MS_EIO, "%s: short read", path);
        goto leave;
    }
    text[len] = 0;
    root = cJSON_Parse(text);
    if (!root) {
        rc = ms_error(MS_EFORMAT, "%s: not valid JSON", path);
        goto leave;
    }
    rc = split_read_store(path, root, index, store_path, n_keys, &tr, &va);
    /* both sides are always read (the overlap check needs them); the caller gets those it asked for */
    if (!rc && train) { *train = tr; tr = (ms_selection){0}; }
    if (!rc && val) { *val = va; va = (ms_selection){0}; }
leave:
    ms_selection_free(&tr);
    ms_selection_free(&va);
    cJSON_Delete(root);
    free(text);
    fclose(f);
    return rc;
}

/* ---- epoch order -------------------------------------------------------------------------------------------- */

ms_status ms_order_init(ms_order *o, int n_sources, const uint64_t *n, const double *weights, uint64_t seed,
                        int shuffle, uint64_t epoch_len)
{
    memset(o, 0, sizeof(*o));
    MS_FAIL_IF(n_sources < 1 || n_sources > MS_ORDER_MAX_SOURCES, MS_EINVAL, "order: %d stores (1..%d supported)",
               n_sources, MS_ORDER_MAX_SOURCES);
    o->n_sources = n_sources;
    o->seed = seed;
    o->shuffle = shuffle;
    double wsum = 0, w[MS_ORDER_MAX_SOURCES];
    uint64_t total = 0;
    for (int s = 0; s < n_sources; s++) {
        MS_FAIL_IF(n[s] == 0, MS_EINVAL, "order: store %d has no selected records", s);
        o->n[s] = n[s];
        total += n[s];
        w[s] = weights ? weights[s] : (double)n[s];
        MS_FAIL_IF(!(w[s] >= 0) || !isfinite(w[s]), MS_EINVAL, "order: invalid weight %g for store %d", w[s], s);
        wsum += w[s];
    }
    MS_FAIL_IF(wsum <= 0, MS_EINVAL, "order: all store weights are zero");
    o->epoch_len = epoch_len ? epoch_len : total;
    if (n_sources > 1) {
        /* Largest-remainder quotas of one block; every store with a positive weight gets at least one slot. */
        int used = 0;
        double rem[MS_ORDER_MAX_SOURCES];
        for (int s = 0; s < n_sources; s++) {
            double q = MS_ORDER_BLOCK * w[s] / wsum;
            o->quota[s] = (int)floor(q);
            rem[s] = q - o->quota[s];
            used += o->quota[s];
        }
        while (used < MS_ORDER_BLOCK) {
            int best = 0;
            for (int s = 1; s < n_sources; s++)
                if (rem[s] > rem[best]) best = s;
            o->quota[best]++;
            rem[best] = -1;
            used++;
        }
        for (int s = 0; s < n_sources; s++) {
            if (w[s] > 0 && o->quota[s] == 0) {
                int big = 0;
                for (int t = 1; t < n_sources; t++)
                    if (o->quota[t] > o->quota[big]) big = t;
                o->quota[big]--;
                o->quota[s]++;
            }
        }
    }
    return MS_OK;
}

/* Index of the j-th draw from a source walked in passes, each pass a fresh permutation of its n records. */
static uint64_t source_index(const ms_order *o, int s, uint64_t j)
{
    uint64_t pass = j / o->n[s], r = j % o->n[s];
    if (!o->shuffle) return r;
    ms_perm p;
    ms_perm_init(&p, o->n[s], ms_rng_stream(o->seed, 0x50c0 + (uint64_t)s, pass));
    return ms_perm_apply(&p, r);
}

void ms_order_at(const ms_order *o, uint64_t epoch, uint64_t pos, int *source, uint64_t *index)
{
    uint64_t t = epoch * o->epoch_len + pos;
    if (o->n_sources == 1) {
        *source = 0;
        *index = source_index(o, 0, t);
        return;
    }
    uint64_t b = t / MS_ORDER_BLOCK, slot = t % MS_ORDER_BLOCK;
    if (o->shuffle) {
        ms_perm p;
        ms_perm_init(&p, MS_ORDER_BLOCK, ms_rng_stream(o->seed, 0x5107, b));
        slot = ms_perm_apply(&p, slot);
    }
    int s = 0;
    uint64_t base = 0;
    while (s < o->n_sources - 1 && slot >= base + (uint64_t)o->quota[s]) base += (uint64_t)o->quota[s++];
    *source = s;
    *index = source_index(o, s, b * (uint64_t)o->quota[s] + (slot - base));
}
