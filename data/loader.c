/* data/loader.c — worker threads filling a ring of batches in order (see loader.h).
 *
 * Work is handed out one sample at a time: task t is sample t % b of sequence number t / b (b = per-rank batch),
 * dispensed in order under one mutex. A sequence may be started only when its ring slot is free (the consumer has
 * released sequence s − ring); the consumer waits until every sample of its sequence is done. Sample content
 * depends only on (epoch, step, rank, k), never on the thread, which is what makes the output thread-count
 * independent.
 * Invariants: slots[s % ring] holds sequence s between its first task and its release; released <= consumed;
 * tasks are only dispensed for s < released + ring.
 */
#include "data/loader.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/cuda_bridge.h"
#include "base/rng.h"
#include "prep_math.h"

#define MAX_ATTEMPTS 8

typedef struct slot {
    uint64_t seq;   /* UINT64_MAX when unused */
    int done;
    ms_batch b;
    void *mem;      /* one allocation behind every array of the batch */
} slot;

typedef struct worker {
    ms_loader *L;
    pthread_t th;
    int started;
    ms_store_reader *readers[MS_ORDER_MAX_SOURCES];
    float *img, *tmp;
    uint16_t *lab, *tmp_l;
    ms_prep_scratch scratch;
} worker;

struct ms_loader {
    ms_loader_config cfg;
    int n_stores;
    ms_store *stores[MS_ORDER_MAX_SOURCES];
    int owns_store[MS_ORDER_MAX_SOURCES];
    ms_selection sel[MS_ORDER_MAX_SOURCES]; /* owned copies */
    ms_order order;
    uint64_t n_records, steps, start_abs, end_seq;
    int b;                                  /* per-rank batch */
    size_t max_hw;
    int max_h, max_w;
    int ring;
    slot *slots;
    worker *workers;
    int n_workers;
    uint64_t aug_seed;
    /* shared state, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_ready;
    int sync_init;
    uint64_t next_task, released, consumed;
    int holding, stop;
    ms_status err;
    char errmsg[512];
    uint64_t skipped;
};

void ms_loader_config_default(ms_loader_config *c)
{
    memset(c, 0, sizeof(*c));
    c->n_stores = 1;
    c->shuffle = 1;
    c->drop_last = 1;
    c->global_batch = 1;
    c->world = 1;
    c->n_threads = 1;
    c->output = MS_LOAD_MODEL;
    ms_prep_config_default(&c->prep, 1024);
    ms_aug_config_none(&c->aug);
}

ms_status ms_loader_select(ms_store *s, const ms_split_spec *sp, ms_selection *train, ms_selection *val,
                           int *single_volume)
{
    ms_status rc = MS_OK;
    uint32_t nv = ms_store_n_volumes(s);
    ms_volume_info *v = calloc(nv ? nv : 1, sizeof(*v));
    if (!v) return ms_error(MS_ENOMEM, "split: out of memory");
    for (uint32_t i = 0; i < nv; i++)
        if ((rc = ms_store_volume(s, i, &v[i]))) goto leave;
    rc = ms_split_volumes(v, (int)nv, sp, train, val, single_volume);
leave:
    free(v);
    return rc;
}

/* Number of samples of this rank in absolute batch `a`. */
static int batch_count(const ms_loader *L, uint64_t a)
{
    uint64_t g = a % L->steps, len = L->order.epoch_len;
    uint64_t first = ms_shard_position(g, L->cfg.global_batch, L->cfg.rank, L->cfg.world, 0);
    if (first >= len) return 0;
    uint64_t n = (len - first + (uint64_t)L->cfg.world - 1) / (uint64_t)L->cfg.world;
    return n < (uint64_t)L->b ? (int)n : L->b;
}

static void report_corrupt(ms_loader *L, int src, uint64_t key, const char *msg)
{
    if (L->cfg.on_corrupt) L->cfg.on_corrupt(L->cfg.on_corrupt_ctx, src, key, msg);
    else fprintf(stderr, "mrisam loader: %s (record skipped)\n", msg);
}

/* MS_LOAD_NATIVE_AUG: the flip and crop box MS_LOAD_MODEL would apply to sample k (an h × w slice; 0 × 0 when
 * invalid), drawn from the same key, and the frame it fills. */
static ms_status draw_native_aug(ms_loader *L, ms_batch *b, int k, int h, int w)
{
    const ms_loader_config *c = &L->cfg;
    ms_prep_sample *p = &b->prep[k];
    memset(p, 0, sizeof(*p));
    b->height[k] = b->width[k] = 0;
    if (h == 0 || w == 0) return MS_OK;
    ms_box box = {0, 0, (float)h, (float)w};
    int flip = 0;
    if (c->augment) {
        ms_rng r = {ms_rng_stream(L->aug_seed, b->epoch, b->position[k]), 0};
        MS_TRY(ms_aug_draw_flip_crop(&c->aug, &r, h, w, &flip, &box));
    }
    *p = (ms_prep_sample){h, w, flip, 0, box.y0, box.x0, box.h, box.w};
    MS_TRY(ms_prep_check(p, 1, b->native_h, b->native_w, c->prep.size, c->prep.resize));
    int oh, ow;
    ms_prep_frame(&c->prep, box.h, box.w, &oh, &ow);
    b->height[k] = oh;
    b->width[k] = ow;
    return MS_OK;
}

/* Fills sample k of slot sl. Returns a failure only for errors that must stop the run. */
static ms_status fill_sample(ms_loader *L, worker *W, slot *sl, int k)
{
    ms_batch *b = &sl->b;
    const ms_loader_config *c = &L->cfg;
    uint64_t pos = ms_shard_position(b->step, c->global_batch, c->rank, c->world, k);
    int src;
    uint64_t idx;
    ms_order_at(&L->order, b->epoch, pos, &src, &idx);
    ms_slice s;
    uint64_t key = 0;
    int ok = 0, skipped = 0;
    for (int a = 0; a < MAX_ATTEMPTS && !ok; a++) {
        /* A corrupt record is replaced by the next record of the same store: deterministic, no shared state. */
        key = ms_selection_key(&L->sel[src], (idx + (uint64_t)a) % L->sel[src].n);
        ms_status rc = ms_store_read(W->readers[src], key, &s);
        if (rc == MS_OK && ((size_t)s.height * (size_t)s.width > L->max_hw || s.height < 1 || s.width < 1))
            rc = ms_error(MS_EFORMAT, "%s: slice %llu: size %dx%d exceeds the volumes' %dx%d",
                          c->store_paths[src] ? c->store_paths[src] : "store", (unsigned long long)key, s.height,
                          s.width, L->max_h, L->max_w);
        if (rc == MS_OK) ok = 1;
        else if (rc == MS_ECORRUPT || rc == MS_EFORMAT) {
            skipped++;
            report_corrupt(L, src, key, ms_errmsg());
        } else return rc;
    }
    b->key[k] = key;
    b->source[k] = src;
    b->position[k] = pos;
    b->valid[k] = (uint8_t)ok;
    if (skipped) {
        pthread_mutex_lock(&L->mu);
        b->n_skipped += skipped;
        L->skipped += (uint64_t)skipped;
        pthread_mutex_unlock(&L->mu);
    }
    if (c->output == MS_LOAD_NATIVE || c->output == MS_LOAD_NATIVE_AUG) {
        const size_t plane = (size_t)b->native_h * b->native_w;
        uint16_t *o = b->native + plane * k, *ol = b->native_label ? b->native_label + plane * k : NULL;
        const int h = ok ? s.height : 0, w = ok ? s.width : 0, W2 = b->native_w;
        b->height[k] = h;
        b->width[k] = w;
        /* rows of the slice, zero right padding, then zero rows below */
        for (int y = 0; y < h; y++) {
            memcpy(o + (size_t)y * W2, s.pixels + (size_t)y * w, (size_t)w * sizeof(uint16_t));
            memset(o + (size_t)y * W2 + w, 0, (size_t)(W2 - w) * sizeof(uint16_t));
            if (!ol) continue;
            if (s.label) memcpy(ol + (size_t)y * W2, s.label + (size_t)y * w, (size_t)w * sizeof(uint16_t));
            else memset(ol + (size_t)y * W2, 0, (size_t)w * sizeof(uint16_t));
            memset(ol + (size_t)y * W2 + w, 0, (size_t)(W2 - w) * sizeof(uint16_t));
        }
        memset(o + (size_t)h * W2, 0, (size_t)(b->native_h - h) * W2 * sizeof(uint16_t));
        if (ol) memset(ol + (size_t)h * W2, 0, (size_t)(b->native_h - h) * W2 * sizeof(uint16_t));
        const uint16_t *map = c->label_map[src];
        if (ol && map) /* padding maps too: the map's entry 0 is background */
            for (size_t i = 0; i < plane; i++) ol[i] = map[ol[i]];
        return c->output == MS_LOAD_NATIVE_AUG ? draw_native_aug(L, b, k, h, w) : MS_OK;
    }
    const size_t plane = (size_t)b->size * b->size, lplane = (size_t)b->label_size * b->label_size;
    float *oi = b->image + plane * (size_t)b->channels * k;
    uint16_t *ol = b->label ? b->label + lplane * k : NULL;
    if (!ok) {
        memset(oi, 0, plane * (size_t)b->channels * sizeof(float));
        if (ol) memset(ol, 0, lplane * sizeof(uint16_t));
        b->height[k] = b->width[k] = 0;
        return MS_OK;
    }
    int h = s.height, w = s.width;
    const size_t n = (size_t)h * w;
    float *restrict fimg = W->img;
    const uint16_t *restrict px = s.pixels;
#pragma omp simd
    for (size_t i = 0; i < n; i++) fimg[i] = ms_pm_unit(px[i]);
    uint16_t *lab = NULL;
    if (ol) {
        lab = W->lab;
        if (s.label) memcpy(lab, s.label, n * sizeof(uint16_t));
        else memset(lab, 0, n * sizeof(uint16_t));
    }
    ms_box box = {0, 0, (float)h, (float)w};
    if (c->augment) {
        ms_rng r = {ms_rng_stream(L->aug_seed, b->epoch, pos), 0};
        ms_aug_apply(&c->aug, &r, W->img, lab, &h, &w, W->tmp, W->tmp_l, &box);
    }
    int oh, ow;
    ms_prep_frame(&c->prep, box.h, box.w, &oh, &ow);
    b->height[k] = oh;
    b->width[k] = ow;
    MS_TRY(ms_prep_image(&c->prep, W->img, h, w, &box, oi, &W->scratch));
    if (ol) {
        ms_prep_label(&c->prep, lab, h, w, &box, ol);
        const uint16_t *map = c->label_map[src];
        if (map)
            for (size_t i = 0; i < lplane; i++) ol[i] = map[ol[i]];
    }
    return MS_OK;
}

static void *worker_main(void *arg)
{
    worker *W = arg;
    ms_loader *L = W->L;
    const uint64_t b = (uint64_t)L->b;
    pthread_mutex_lock(&L->mu);
    for (;;) {
        if (L->stop || L->err) break;
        uint64_t t = L->next_task, s = t / b;
        int k = (int)(t % b);
        if (s >= L->end_seq || s >= L->released + (uint64_t)L->ring) {
            pthread_cond_wait(&L->cv_work, &L->mu);
            continue;
        }
        slot *sl = &L->slots[s % (uint64_t)L->ring];
        if (k == 0) {
            /* first task of the sequence: the slot is free (its previous sequence was released) */
            uint64_t a = L->start_abs + s;
            sl->seq = s;
            sl->done = 0;
            sl->b.epoch = a / L->steps;
            sl->b.step = a % L->steps;
            sl->b.n = batch_count(L, a);
            sl->b.n_skipped = 0;
        }
        if (k >= sl->b.n) {
            L->next_task = (s + 1) * b;
            if (sl->b.n == 0) pthread_cond_broadcast(&L->cv_ready);
            continue;
        }
        L->next_task++;
        pthread_mutex_unlock(&L->mu);
        ms_status rc = fill_sample(L, W, sl, k);
        pthread_mutex_lock(&L->mu);
        if (rc && !L->err) {
            L->err = rc;
            snprintf(L->errmsg, sizeof(L->errmsg), "%s", ms_errmsg());
        }
        if (++sl->done == sl->b.n || rc) pthread_cond_broadcast(&L->cv_ready);
    }
    pthread_cond_broadcast(&L->cv_ready);
    pthread_mutex_unlock(&L->mu);
    return NULL;
}

/* Carves the arrays of one batch out of one allocation. */
static ms_status slot_alloc(ms_loader *L, slot *sl)
{
    const ms_loader_config *c = &L->cfg;
    const size_t b = (size_t)L->b;
    size_t img_bytes, lab_bytes = 0;
    ms_batch *B = &sl->b;
    memset(B, 0, sizeof(*B));
    if (c->output == MS_LOAD_NATIVE || c->output == MS_LOAD_NATIVE_AUG) {
        B->native_h = L->max_h;
        B->native_w = L->max_w;
        img_bytes = b * L->max_hw * sizeof(uint16_t);
        if (c->labels) lab_bytes = img_bytes;
        if (c->output == MS_LOAD_NATIVE_AUG) { /* the samples' parameters take the label's place */
            B->channels = c->prep.channels;
            B->size = c->prep.size;
            lab_bytes = b * sizeof(ms_prep_sample);
        }
    } else {
        B->channels = c->prep.channels;
        B->size = c->prep.size;
        B->label_size = c->prep.label_size;
        img_bytes = b * (size_t)B->channels * B->size * B->size * sizeof(float);
        if (c->labels) lab_bytes = b * (size_t)B->label_size * B->label_size * sizeof(uint16_t);
    }
#define A64(x) (((x) + 63) & ~(size_t)63)
    size_t meta = A64(b * 4) * 3 + A64(b * 8) * 2 + A64(b);
    size_t total = A64(img_bytes) + A64(lab_bytes) + meta;
    ms_status rc = c->pinned ? ms_host_alloc_pinned(total, &sl->mem) : MS_OK;
    if (!c->pinned) {
        sl->mem = aligned_alloc(64, A64(total));
        if (!sl->mem) rc = ms_error(MS_ENOMEM, "loader: out of memory (%zu bytes per batch)", total);
    }
    if (rc) return rc;
    /* not cleared: workers write every byte of the samples they deliver, and first-touching a 1024-px ring here
     * would cost the first batch hundreds of milliseconds */
    char *p = sl->mem;
    void *img = p;
    p += A64(img_bytes);
    void *lab = lab_bytes ? p : NULL;
    p += A64(lab_bytes);
    B->height = (int32_t *)p, p += A64(b * 4);
    B->width = (int32_t *)p, p += A64(b * 4);
    B->source = (int32_t *)p, p += A64(b * 4);
    B->key = (uint64_t *)p, p += A64(b * 8);
    B->position = (uint64_t *)p, p += A64(b * 8);
    B->valid = (uint8_t *)p;
#undef A64
    if (c->output == MS_LOAD_NATIVE) {
        B->native = img;
        B->native_label = lab;
    } else if (c->output == MS_LOAD_NATIVE_AUG) {
        B->native = img;
        B->prep = lab;
    } else {
        B->image = img;
        B->label = lab;
    }
    sl->seq = UINT64_MAX;
    return MS_OK;
}

static ms_status worker_init(ms_loader *L, worker *W)
{
    W->L = L;
    for (int s = 0; s < L->n_stores; s++) MS_TRY(ms_store_reader_new(L->stores[s], &W->readers[s]));
    const size_t n = L->max_hw;
    W->img = malloc(n * sizeof(float));
    W->tmp = malloc(n * sizeof(float));
    W->lab = malloc(n * sizeof(uint16_t));
    W->tmp_l = malloc(n * sizeof(uint16_t));
    MS_FAIL_IF(!W->img || !W->tmp || !W->lab || !W->tmp_l, MS_ENOMEM, "loader: out of memory for worker buffers");
    return MS_OK;
}

static void worker_free(ms_loader *L, worker *W)
{
    for (int s = 0; s < L->n_stores; s++)
        if (W->readers[s]) ms_store_reader_free(W->readers[s]);
    free(W->img);
    free(W->tmp);
    free(W->lab);
    free(W->tmp_l);
    ms_prep_scratch_free(&W->scratch);
}

ms_status ms_loader_open(const ms_loader_config *cfg, ms_loader **out)
{
    ms_status rc = MS_OK;
    *out = NULL;
    ms_loader *L = calloc(1, sizeof(*L));
    if (!L) return ms_error(MS_ENOMEM, "loader: out of memory");
    L->cfg = *cfg;
    const ms_loader_config *c = &L->cfg;
    L->n_stores = c->n_stores;
    if (c->n_stores < 1 || c->n_stores > MS_ORDER_MAX_SOURCES || c->global_batch < 1 || c->world < 1 ||
        c->rank < 0 || c->rank >= c->world || c->global_batch % c->world != 0 || c->n_threads < 1 ||
        c->n_threads > 1024 || c->ring < 0) {
        rc = ms_error(MS_EINVAL, "loader: invalid configuration (stores %d, batch %d, rank %d of %d, threads %d): "
                      "the global batch must be a multiple of the world size", c->n_stores, c->global_batch, c->rank,
                      c->world, c->n_threads);
        goto leave;
    }
    if (c->output == MS_LOAD_NATIVE_AUG && c->labels) {
        rc = ms_error(MS_EINVAL, "loader: the native augmented output carries images only (no labels)");
        goto leave;
    }
    if (c->output != MS_LOAD_NATIVE && (c->prep.size < 1 || c->prep.label_size < 1 ||
                                       (c->prep.channels != 1 && c->prep.channels != 3))) {
        rc = ms_error(MS_EINVAL, "loader: invalid preprocessing (size %d, label size %d, channels %d)", c->prep.size,
                      c->prep.label_size, c->prep.channels);
        goto leave;
    }
    L->b = c->global_batch / c->world;
    L->ring = c->ring ? c->ring : 3;
    if (L->ring < 2) L->ring = 2;
    L->aug_seed = ms_mix64(c->seed ^ 0xa0a0a06ull);
    /* stores and selections */
    uint64_t nsel[MS_ORDER_MAX_SOURCES];
    int any_weight = 0;
    for (int s = 0; s < L->n_stores; s++) {
        for (int t = 0; t < s && !c->stores[s] && c->store_paths[s]; t++)
            if (c->store_paths[t] && !strcmp(c->store_paths[t], c->store_paths[s]))
                L->stores[s] = L->stores[t]; /* one environment per store per process (LMDB) */
        if (c->stores[s]) L->stores[s] = c->stores[s];
        else if (!L->stores[s]) {
            if (!c->store_paths[s]) {
                rc = ms_error(MS_EINVAL, "loader: store %d has neither a handle nor a path", s);
                goto leave;
            }
            /* a store listed twice gives each worker two readers on it */
            int readers = (c->n_threads + 1) * c->n_stores + 4;
            if ((rc = ms_store_open(c->store_paths[s], readers, &L->stores[s]))) goto leave;
            L->owns_store[s] = 1;
        }
        ms_store *st = L->stores[s];
        uint32_t nv = ms_store_n_volumes(st);
        for (uint32_t v = 0; v < nv; v++) {
            ms_volume_info vi;
            if ((rc = ms_store_volume(st, v, &vi))) goto leave;
            if (vi.height > L->max_h) L->max_h = vi.height;
            if (vi.width > L->max_w) L->max_w = vi.width;
            if (!c->selection[s] && vi.n_slices && (vi.has_labels || !c->labeled_only))
                if ((rc = ms_selection_add(&L->sel[s], vi.first_key, vi.n_slices))) goto leave;
        }
        if (c->selection[s]) {
            for (int i = 0; i < c->selection[s]->n_ranges; i++)
                if ((rc = ms_selection_add(&L->sel[s], c->selection[s]->ranges[i].first,
                                           c->selection[s]->ranges[i].count)))
                    goto leave;
        }
        if ((rc = ms_selection_finish(&L->sel[s]))) goto leave;
        if (L->sel[s].n == 0) {
            rc = ms_error(MS_EINVAL, "%s: no slices selected", c->store_paths[s] ? c->store_paths[s] : "store");
            goto leave;
        }
        uint64_t last = L->sel[s].ranges[L->sel[s].n_ranges - 1].first + L->sel[s].ranges[L->sel[s].n_ranges - 1].count;
        if (last > ms_store_n_slices(st)) {
            rc = ms_error(MS_EINVAL, "%s: the selection names key %llu but the store has %llu slices",
                          c->store_paths[s] ? c->store_paths[s] : "store", (unsigned long long)(last - 1),
                          (unsigned long long)ms_store_n_slices(st));
            goto leave;
        }
        nsel[s] = L->sel[s].n;
        L->n_records += nsel[s];
        if (c->weights[s] > 0) any_weight = 1;
    }
    L->max_hw = (size_t)L->max_h * (size_t)L->max_w;
    if (L->max_hw == 0) {
        rc = ms_error(MS_EINVAL, "loader: the stores hold no slices");
        goto leave;
    }
    if ((rc = ms_order_init(&L->order, L->n_stores, nsel, any_weight ? c->weights : NULL, c->seed, c->shuffle,
                            c->epoch_len)))
        goto leave;
    L->steps = c->drop_last ? L->order.epoch_len / (uint64_t)c->global_batch
                            : (L->order.epoch_len + (uint64_t)c->global_batch - 1) / (uint64_t)c->global_batch;
    if (L->steps == 0) {
        rc = ms_error(MS_EINVAL, "loader: %llu records per epoch, fewer than one global batch of %d",
                      (unsigned long long)L->order.epoch_len, c->global_batch);
        goto leave;
    }
    if (c->resume) {
        const ms_loader_state *r = c->resume;
        if (r->magic != MS_LOADER_STATE_MAGIC || r->version != 1 || r->seed != c->seed ||
            r->n_records != L->n_records || r->global_batch != (uint32_t)c->global_batch || r->step >= L->steps) {
            rc = ms_error(MS_EINVAL, "loader: the saved loader state does not match this configuration (seed, "
                          "selected records %llu vs %llu, or global batch %u vs %d)",
                          (unsigned long long)r->n_records, (unsigned long long)L->n_records, r->global_batch,
                          c->global_batch);
            goto leave;
        }
        L->start_abs = r->epoch * L->steps + r->step;
        L->skipped = r->skipped;
    }
    L->end_seq = UINT64_MAX;
    if (c->n_epochs > 0) {
        uint64_t end_abs = (uint64_t)c->n_epochs * L->steps;
        L->end_seq = end_abs > L->start_abs ? end_abs - L->start_abs : 0;
    }
    /* ring */
    L->slots = calloc((size_t)L->ring, sizeof(slot));
    L->workers = calloc((size_t)c->n_threads, sizeof(worker));
    if (!L->slots || !L->workers) {
        rc = ms_error(MS_ENOMEM, "loader: out of memory");
        goto leave;
    }
    for (int i = 0; i < L->ring; i++)
        if ((rc = slot_alloc(L, &L->slots[i]))) goto leave;
    for (int i = 0; i < c->n_threads; i++)
        if ((rc = worker_init(L, &L->workers[i]))) goto leave;
    pthread_mutex_init(&L->mu, NULL);
    pthread_cond_init(&L->cv_work, NULL);
    pthread_cond_init(&L->cv_ready, NULL);
    L->sync_init = 1;
    for (int i = 0; i < c->n_threads; i++) {
        int e = pthread_create(&L->workers[i].th, NULL, worker_main, &L->workers[i]);
        if (e) {
            rc = ms_error(e, "loader: cannot start worker thread: %s", strerror(e));
            goto leave;
        }
        L->workers[i].started = 1;
        L->n_workers = i + 1;
    }
leave:
    if (rc) {
        ms_loader_close(L);
        return rc;
    }
    *out = L;
    return MS_OK;
}

ms_status ms_loader_next(ms_loader *L, const ms_batch **out)
{
    *out = NULL;
    pthread_mutex_lock(&L->mu);
    if (L->holding) {
        L->released++;
        L->holding = 0;
        pthread_cond_broadcast(&L->cv_work);
    }
    uint64_t s = L->consumed;
    if (s >= L->end_seq) {
        pthread_mutex_unlock(&L->mu);
        return MS_OK;
    }
    slot *sl = &L->slots[s % (uint64_t)L->ring];
    while (!L->err && !(sl->seq == s && sl->done == sl->b.n)) pthread_cond_wait(&L->cv_ready, &L->mu);
    if (L->err) {
        ms_status rc = L->err;
        pthread_mutex_unlock(&L->mu);
        return ms_error(rc, "%s", L->errmsg);
    }
    L->consumed++;
    L->holding = 1;
    pthread_mutex_unlock(&L->mu);
    *out = &sl->b;
    return MS_OK;
}

void ms_loader_state_get(const ms_loader *L, ms_loader_state *st)
{
    memset(st, 0, sizeof(*st));
    uint64_t a = L->start_abs + L->consumed;
    st->magic = MS_LOADER_STATE_MAGIC;
    st->version = 1;
    st->seed = L->cfg.seed;
    st->epoch = a / L->steps;
    st->step = a % L->steps;
    st->n_records = L->n_records;
    st->global_batch = (uint32_t)L->cfg.global_batch;
    st->world = (uint32_t)L->cfg.world;
    st->skipped = L->skipped;
}

uint64_t ms_loader_steps_per_epoch(const ms_loader *L) { return L->steps; }
uint64_t ms_loader_n_records(const ms_loader *L) { return L->n_records; }

uint64_t ms_loader_skipped(ms_loader *L)
{
    pthread_mutex_lock(&L->mu);
    uint64_t n = L->skipped;
    pthread_mutex_unlock(&L->mu);
    return n;
}

void ms_loader_close(ms_loader *L)
{
    if (!L) return;
    if (L->sync_init) {
        pthread_mutex_lock(&L->mu);
        L->stop = 1;
        pthread_cond_broadcast(&L->cv_work);
        pthread_mutex_unlock(&L->mu);
    }
    for (int i = 0; i < L->n_workers; i++)
        if (L->workers[i].started) pthread_join(L->workers[i].th, NULL);
    if (L->workers)
        for (int i = 0; i < L->cfg.n_threads; i++) worker_free(L, &L->workers[i]);
    if (L->slots)
        for (int i = 0; i < L->ring; i++) {
            if (!L->slots[i].mem) continue;
            if (L->cfg.pinned) ms_host_free_pinned(L->slots[i].mem);
            else free(L->slots[i].mem);
        }
    if (L->sync_init) {
        pthread_mutex_destroy(&L->mu);
        pthread_cond_destroy(&L->cv_work);
        pthread_cond_destroy(&L->cv_ready);
    }
    for (int s = 0; s < L->n_stores; s++) {
        ms_selection_free(&L->sel[s]);
        if (L->owns_store[s] && L->stores[s]) ms_store_close(L->stores[s]);
    }
    free(L->workers);
    free(L->slots);
    free(L);
}
