/* tests/data/store_fixture.h — small stores for loader tests, written through the store's own writer API
 * (data/store_write.h, what `mrisam ingest` uses), with pixels that are a known function of (salt, key, y, x), so a
 * test can check which record a sample came from. Also: corrupting one record in place.
 */
#ifndef MS_TEST_STORE_FIXTURE_H
#define MS_TEST_STORE_FIXTURE_H

#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "base/rng.h"
#include "data/store_fmt.h"
#include "data/store_write.h"

typedef struct fx_vol {
    int h, w, n, labeled;
} fx_vol;

static inline uint16_t fx_pixel(uint64_t salt, uint64_t key, int y, int x)
{
    /* smooth-ish structure plus noise, so resampling and compression see realistic data */
    uint64_t r = ms_rand_u64(ms_rng_stream(salt, key, 0), (uint64_t)y * 4096 + (uint64_t)x);
    int v = (int)((y * 613 + x * 409 + (int)(key % 97) * 211) % 40000) + (int)(r & 0x3fff);
    return (uint16_t)(v > 65535 ? 65535 : v);
}

static inline uint16_t fx_label(uint64_t key, int y, int x, int h, int w)
{
    int dy = y - h / 2, dx = x - w / 2, r = (int)(key % 5) + h / 5;
    if (dy * dy + dx * dx < r * r) return 7;
    return (y < h / 4 && x > w / 2) ? 3 : 0;
}

/* Writes the store at path (a new directory). Keys run from 0 in volume order. */
static inline ms_status fx_make_store(const char *path, uint64_t salt, const fx_vol *vols, int nv)
{
    ms_status rc = MS_OK;
    ms_store_writer *w = NULL;
    ZSTD_CCtx *cc = ZSTD_createCCtx();
    uint64_t key = 0;
    rc = ms_store_writer_open(path, "{\"test\":1}", "{\"tool\":\"test\"}", &w);
    for (int v = 0; !rc && v < nv; v++) {
        const fx_vol *fv = &vols[v];
        ms_store_rec *sl = calloc((size_t)fv->n, sizeof(*sl)), *lb = calloc((size_t)fv->n, sizeof(*lb));
        uint16_t *px = malloc((size_t)fv->h * fv->w * 2), *lx = malloc((size_t)fv->h * fv->w * 2);
        const float sp[2] = {1.0f, 1.0f};
        for (int k = 0; !rc && k < fv->n; k++, key++) {
            for (int y = 0; y < fv->h; y++)
                for (int x = 0; x < fv->w; x++) {
                    px[y * fv->w + x] = fx_pixel(salt, key, y, x);
                    lx[y * fv->w + x] = fx_label(key, y, x, fv->h, fv->w);
                }
            rc = ms_store_encode(cc, 1, 1, MS_REC_U16, px, (uint32_t)fv->h, (uint32_t)fv->w, sp, (uint32_t)k, &sl[k]);
            if (!rc && fv->labeled)
                rc = ms_store_encode(cc, 1, 1, MS_REC_U16, lx, (uint32_t)fv->h, (uint32_t)fv->w, sp, (uint32_t)k,
                                     &lb[k]);
        }
        if (!rc) {
            char js[512], src[64];
            snprintf(js, sizeof(js),
                     "{\"height\":%d,\"width\":%d,\"spacing\":[1,1,1],\"intensity\":{\"offset\":0,\"scale\":1}%s}",
                     fv->h, fv->w, fv->labeled ? ",\"labels\":{\"values\":[0,3,7]}" : "");
            snprintf(src, sizeof(src), "vol%d", v);
            cJSON *j = cJSON_Parse(js);
            uint32_t id;
            int dup = 0;
            rc = ms_store_writer_add(w, j, sl, fv->labeled ? lb : NULL, (uint32_t)fv->n, src, NULL, 0, 0, &id, &dup);
            cJSON_Delete(j);
        }
        for (int k = 0; k < fv->n; k++) free(sl[k].data), free(lb[k].data);
        free(sl), free(lb), free(px), free(lx);
    }
    if (w) {
        ms_status c = ms_store_writer_close(w);
        if (!rc) rc = c;
    }
    ZSTD_freeCCtx(cc);
    return rc;
}

/* Flips one byte in the middle of the zstd payload of slice `key`. Returns 0 on success. */
static inline int fx_corrupt(const char *path, uint64_t key)
{
    MDB_env *env = NULL;
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    int rc = mdb_env_create(&env);
    if (!rc) rc = mdb_env_set_maxdbs(env, 8);
    if (!rc) rc = mdb_env_set_mapsize(env, (size_t)1 << 30);
    if (!rc) rc = mdb_env_open(env, path, 0, 0644);
    if (!rc) rc = mdb_txn_begin(env, NULL, 0, &txn);
    if (!rc) rc = mdb_dbi_open(txn, "slices", 0, &dbi);
    uint8_t kb[8];
    ms_key64(kb, key);
    MDB_val k = {8, kb}, v;
    if (!rc) rc = mdb_get(txn, dbi, &k, &v);
    if (!rc) {
        uint8_t *copy = malloc(v.mv_size);
        memcpy(copy, v.mv_data, v.mv_size);
        copy[MS_REC_HDR + (v.mv_size - MS_REC_HDR) / 2] ^= 0x5a;
        MDB_val nv = {v.mv_size, copy};
        rc = mdb_put(txn, dbi, &k, &nv, 0);
        free(copy);
    }
    if (!rc) {
        rc = mdb_txn_commit(txn);
        txn = NULL;
    }
    if (txn) mdb_txn_abort(txn);
    if (env) mdb_env_close(env);
    return rc;
}

#endif
