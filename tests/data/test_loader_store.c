/* tests/data/test_loader_store.c — the loader over small stores written with the store's writer API:
 * same batches with 1, 2 and 4 threads; exact resume mid-epoch; W ranks == one process with the global batch and
 * every record once per epoch; native output equals the stored pixels; preprocessing without augmentation equals
 * ms_prep_image on the known pixels; labelled-only selection and label values; corrupt records reported with their
 * key, skipped, counted; multi-store weights.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/loader.h"
#include "harness.h"
#include "store_fixture.h"

static uint64_t SEED;
static char STORE_A[512], STORE_B[512];

static const fx_vol VOLS[] = {{48, 40, 12, 1}, {64, 64, 9, 0}, {40, 56, 15, 1}, {64, 48, 10, 1},
                              {32, 32, 8, 0},  {56, 60, 11, 1}};
#define NV ((int)(sizeof(VOLS) / sizeof(VOLS[0])))

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 0x100000001b3ull;
    return h;
}

static uint64_t batch_digest(const ms_batch *b)
{
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv(h, &b->n, sizeof(b->n));
    h = fnv(h, &b->epoch, 8);
    h = fnv(h, &b->step, 8);
    h = fnv(h, b->key, (size_t)b->n * 8);
    if (b->image) h = fnv(h, b->image, (size_t)b->n * b->channels * b->size * b->size * sizeof(float));
    if (b->label) h = fnv(h, b->label, (size_t)b->n * b->label_size * b->label_size * 2);
    if (b->native) h = fnv(h, b->native, (size_t)b->n * b->native_h * b->native_w * 2);
    return h;
}

static void base_config(ms_loader_config *c, const char *store, int threads)
{
    ms_loader_config_default(c);
    c->store_paths[0] = store;
    c->seed = SEED;
    c->global_batch = 4;
    c->n_threads = threads;
    ms_prep_config_default(&c->prep, 64);
    c->labels = 1;
    c->augment = 1;
    ms_aug_config_seg(&c->aug);
    c->aug.rrc = 1;
}

/* Runs a loader to its end (or max batches), storing digests; returns the number of batches. */
static int run_digests(const ms_loader_config *c, uint64_t *dig, int max, ms_loader_state *st_after, int stop_after)
{
    ms_loader *L = NULL;
    ms_status rc = ms_loader_open(c, &L);
    MS_CHECK(rc == MS_OK, "open: %s", ms_errmsg());
    if (rc) return 0;
    int n = 0;
    const ms_batch *b;
    while (n < max && (stop_after < 0 || n < stop_after)) {
        rc = ms_loader_next(L, &b);
        if (rc || !b) break;
        dig[n++] = batch_digest(b);
    }
    MS_CHECK(rc == MS_OK, "next: %s", ms_errmsg());
    if (st_after) ms_loader_state_get(L, st_after);
    ms_loader_close(L);
    return n;
}

static void test_threads_and_resume(const char *store, int labeled_only)
{
    enum { MAXB = 256 };
    uint64_t d1[MAXB], d2[MAXB], d4[MAXB], dr[MAXB];
    ms_loader_config c;
    base_config(&c, store, 1);
    c.labeled_only = labeled_only;
    c.n_epochs = 3;
    uint64_t steps = 0;
    {
        ms_loader *L = NULL;
        MS_CHECK_OK(ms_loader_open(&c, &L));
        if (!L) return;
        steps = ms_loader_steps_per_epoch(L);
        ms_loader_close(L);
    }
    MS_CHECK(3 * steps <= MAXB && steps > 6, "test store too large or small: %llu steps", (unsigned long long)steps);
    if (3 * steps > MAXB || steps <= 6) return;
    int n1 = run_digests(&c, d1, MAXB, NULL, -1);
    c.n_threads = 2;
    int n2 = run_digests(&c, d2, MAXB, NULL, -1);
    c.n_threads = 4;
    c.ring = 2;
    c.pinned = 1; /* ms_host_alloc_pinned: page-locked with CUDA, aligned malloc without */
    int n4 = run_digests(&c, d4, MAXB, NULL, -1);
    c.pinned = 0;
    MS_CHECK(n1 == 3 * (int)steps && n2 == n1 && n4 == n1, "batches: %d %d %d (want %d)", n1, n2, n4, 3 * (int)steps);
    MS_CHECK(!memcmp(d1, d2, sizeof(uint64_t) * n1), "2 threads give other batches than 1");
    MS_CHECK(!memcmp(d1, d4, sizeof(uint64_t) * n1), "4 threads give other batches than 1");
    int differ = 0;
    for (int i = 1; i < n1; i++) differ += d1[i] != d1[i - 1];
    MS_CHECK(differ == n1 - 1, "consecutive batches repeat");

    /* stop in the middle of epoch 1, resume from the saved state (as bytes, as a checkpoint would keep it) */
    ms_loader_state st, st2;
    c.n_threads = 2;
    int k = (int)steps + 5;
    int na = run_digests(&c, dr, MAXB, &st, k);
    MS_CHECK(na == k && st.epoch == 1 && st.step == 5, "stopped after %d batches at epoch %llu step %llu", na,
             (unsigned long long)st.epoch, (unsigned long long)st.step);
    unsigned char bytes[sizeof(st)];
    memcpy(bytes, &st, sizeof(st));
    memcpy(&st2, bytes, sizeof(st2));
    c.resume = &st2;
    c.n_threads = 3;
    int nb = run_digests(&c, dr + na, MAXB - na, NULL, -1);
    MS_CHECK(na + nb == n1 && !memcmp(d1, dr, sizeof(uint64_t) * n1),
             "resumed run differs from the uninterrupted one (%d + %d batches)", na, nb);
    /* a state from another configuration is refused */
    ms_loader *L = NULL;
    c.global_batch = 8;
    MS_CHECK(ms_loader_open(&c, &L) == MS_EINVAL, "a mismatched resume state was accepted");
    ms_loader_close(L);
}

static void test_ranks(const char *store, int labeled_only)
{
    /* W = 2 ranks of batch 2 each == one process of batch 4, sample for sample; every record once per epoch.
     * One process holds the three loaders, so they share one store handle (LMDB: one environment per process). */
    ms_store *st = NULL;
    MS_CHECK_OK(ms_store_open(store, 16, &st));
    if (!st) return;
    ms_loader_config c;
    base_config(&c, store, 2);
    c.stores[0] = st;
    c.labeled_only = labeled_only;
    c.n_epochs = 1;
    c.drop_last = 0;
    ms_loader *one = NULL, *r0 = NULL, *r1 = NULL;
    MS_CHECK_OK(ms_loader_open(&c, &one));
    c.world = 2;
    c.rank = 0;
    MS_CHECK_OK(ms_loader_open(&c, &r0));
    c.rank = 1;
    MS_CHECK_OK(ms_loader_open(&c, &r1));
    if (!one || !r0 || !r1) goto leave;
    const uint64_t nkeys = ms_store_n_slices(st);
    int *seen = calloc(nkeys, sizeof(int)), mismatch = 0, steps = 0;
    for (;;) {
        const ms_batch *b, *b0, *b1;
        MS_CHECK_OK(ms_loader_next(one, &b));
        MS_CHECK_OK(ms_loader_next(r0, &b0));
        MS_CHECK_OK(ms_loader_next(r1, &b1));
        if (!b || !b0 || !b1) {
            MS_CHECK(!b && !b0 && !b1, "ranks end at different steps");
            break;
        }
        steps++;
        const size_t img = (size_t)b->channels * b->size * b->size, lab = (size_t)b->label_size * b->label_size;
        MS_CHECK(b0->n + b1->n == b->n, "step %llu: %d + %d samples, single process %d", (unsigned long long)b->step,
                 b0->n, b1->n, b->n);
        for (int j = 0; j < b->n; j++) {
            const ms_batch *rb = (j % 2) ? b1 : b0;
            int k = j / 2;
            if (k >= rb->n) {
                mismatch++;
                continue;
            }
            mismatch += rb->key[k] != b->key[j] || rb->position[k] != b->position[j] ||
                        memcmp(rb->image + img * k, b->image + img * j, img * sizeof(float)) ||
                        memcmp(rb->label + lab * k, b->label + lab * j, lab * 2);
        }
        for (int k = 0; k < b0->n; k++) seen[b0->key[k] < nkeys ? b0->key[k] : 0]++;
        for (int k = 0; k < b1->n; k++) seen[b1->key[k] < nkeys ? b1->key[k] : 0]++;
    }
    {
        /* every selected record once (unselected keys: never) */
        int bad = 0;
        uint64_t nsel = ms_loader_n_records(one), nseen = 0;
        for (uint64_t i = 0; i < nkeys; i++) {
            bad += seen[i] > 1;
            nseen += seen[i] == 1;
        }
        MS_CHECK((uint64_t)steps == (nsel + 3) / 4 && mismatch == 0 && bad == 0 && nseen == nsel,
                 "ranks: %d steps for %llu records, %d samples differ from the single process, %d records seen twice, "
                 "%llu seen once", steps, (unsigned long long)nsel, mismatch, bad, (unsigned long long)nseen);
    }
    free(seen);
leave:
    ms_loader_close(one);
    ms_loader_close(r0);
    ms_loader_close(r1);
    ms_store_close(st);
}

static void test_outputs(void)
{
    /* native: the stored pixels, top-left, zero padded; model without augmentation: ms_prep_image of them */
    ms_loader_config c;
    base_config(&c, STORE_A, 2);
    c.n_epochs = 1;
    c.augment = 0;
    c.output = MS_LOAD_NATIVE;
    c.labeled_only = 1;
    ms_loader *L = NULL;
    MS_CHECK_OK(ms_loader_open(&c, &L));
    if (!L) return;
    MS_CHECK(ms_loader_n_records(L) == 12 + 15 + 10 + 11, "labelled-only selection has %llu records",
             (unsigned long long)ms_loader_n_records(L));
    const ms_batch *b;
    int bad_px = 0, bad_lab = 0, unlabeled = 0, n = 0;
    while (ms_loader_next(L, &b) == MS_OK && b) {
        for (int k = 0; k < b->n; k++, n++) {
            uint64_t key = b->key[k];
            int v = 0;
            uint64_t first = 0;
            while (v < NV && key >= first + (uint64_t)VOLS[v].n) first += (uint64_t)VOLS[v++].n;
            if (v >= NV) {
                bad_px++;
                continue;
            }
            unlabeled += !VOLS[v].labeled;
            const uint16_t *p = b->native + (size_t)k * b->native_h * b->native_w;
            const uint16_t *l = b->native_label + (size_t)k * b->native_h * b->native_w;
            for (int y = 0; y < b->native_h; y++)
                for (int x = 0; x < b->native_w; x++) {
                    int in = y < VOLS[v].h && x < VOLS[v].w;
                    bad_px += p[y * b->native_w + x] != (in ? fx_pixel(SEED, key, y, x) : 0);
                    bad_lab += l[y * b->native_w + x] != (in ? fx_label(key, y, x, VOLS[v].h, VOLS[v].w) : 0);
                }
            bad_px += b->height[k] != VOLS[v].h || b->width[k] != VOLS[v].w;
        }
    }
    MS_CHECK(n == 48 && bad_px == 0 && bad_lab == 0 && unlabeled == 0,
             "native: %d samples, %d wrong pixels, %d wrong labels, %d from unlabelled volumes", n, bad_px, bad_lab,
             unlabeled);
    ms_loader_close(L);

    c.output = MS_LOAD_MODEL;
    c.prep.size = 96;
    c.prep.label_size = 24;
    /* finetune's class map: sorted values {0,3,7} → classes {0,1,2} */
    uint16_t *cmap = calloc(65536, sizeof(uint16_t));
    cmap[3] = 1;
    cmap[7] = 2;
    c.label_map[0] = cmap;
    L = NULL;
    MS_CHECK_OK(ms_loader_open(&c, &L));
    if (!L) return;
    ms_prep_scratch sc = {0};
    float *want = malloc(sizeof(float) * 3 * 96 * 96), *img = malloc(sizeof(float) * 64 * 64);
    uint16_t *lab = malloc(64 * 64 * 2), *wl = malloc(24 * 24 * 2);
    int diff = 0, badv = 0;
    while (ms_loader_next(L, &b) == MS_OK && b) {
        for (int k = 0; k < b->n; k++) {
            uint64_t key = b->key[k], first = 0;
            int v = 0;
            while (key >= first + (uint64_t)VOLS[v].n) first += (uint64_t)VOLS[v++].n;
            int h = VOLS[v].h, w = VOLS[v].w;
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++) {
                    img[y * w + x] = (float)fx_pixel(SEED, key, y, x) * (1.0f / 65535.0f);
                    lab[y * w + x] = fx_label(key, y, x, h, w);
                }
            ms_prep_image(&c.prep, img, h, w, NULL, want, &sc);
            ms_prep_label(&c.prep, lab, h, w, NULL, wl);
            for (int i = 0; i < 24 * 24; i++) wl[i] = cmap[wl[i]];
            diff += memcmp(want, b->image + (size_t)k * 3 * 96 * 96, sizeof(float) * 3 * 96 * 96) != 0;
            diff += memcmp(wl, b->label + (size_t)k * 24 * 24, 24 * 24 * 2) != 0;
            for (int i = 0; i < 24 * 24; i++) {
                uint16_t x = b->label[(size_t)k * 24 * 24 + i];
                badv += x > 2;
            }
        }
    }
    MS_CHECK(diff == 0 && badv == 0, "model output: %d samples differ from ms_prep_image, %d bad label values", diff,
             badv);
    free(want), free(img), free(lab), free(wl), free(cmap);
    ms_prep_scratch_free(&sc);
    ms_loader_close(L);
}

typedef struct corrupt_log {
    int calls;
    uint64_t key;
    int mentions_key;
} corrupt_log;

static void on_corrupt(void *ctx, int store, uint64_t key, const char *msg)
{
    corrupt_log *l = ctx;
    char want[64];
    snprintf(want, sizeof(want), " %llu", (unsigned long long)key);
    __atomic_fetch_add(&l->calls, 1, __ATOMIC_SEQ_CST);
    l->key = key;
    l->mentions_key = strstr(msg, want) != NULL && store == 0;
}

static void test_corrupt(void)
{
    const uint64_t bad = 23;
    MS_CHECK(fx_corrupt(STORE_B, bad) == 0, "could not corrupt the test store");
    ms_loader_config c;
    base_config(&c, STORE_B, 2);
    c.n_epochs = 2;
    c.output = MS_LOAD_NATIVE;
    c.augment = 0;
    corrupt_log log = {0};
    c.on_corrupt = on_corrupt;
    c.on_corrupt_ctx = &log;
    ms_loader *L = NULL;
    MS_CHECK_OK(ms_loader_open(&c, &L));
    if (!L) return;
    const ms_batch *b;
    int skipped = 0, invalid = 0, n = 0, repl = 0, has_bad = 0;
    ms_status rc;
    while ((rc = ms_loader_next(L, &b)) == MS_OK && b) {
        skipped += b->n_skipped;
        for (int k = 0; k < b->n; k++, n++) {
            invalid += !b->valid[k];
            has_bad += b->key[k] == bad;
            repl += b->key[k] == bad + 1;
        }
    }
    MS_CHECK(rc == MS_OK, "the run stopped on a corrupt record: %s", ms_errmsg());
    MS_CHECK(log.calls >= 1 && log.key == bad && log.mentions_key, "corrupt record not reported with its key "
             "(%d calls, key %llu)", log.calls, (unsigned long long)log.key);
    /* drop_last loses one record per epoch, so the corrupt one is met once or twice */
    MS_CHECK(skipped == log.calls && ms_loader_skipped(L) == (uint64_t)log.calls && has_bad == 0 && invalid == 0 &&
                 n == 128,
             "corrupt: %d skipped in batches, %llu counted, %d reports, bad key delivered %d times, %d invalid, "
             "%d samples", skipped, (unsigned long long)ms_loader_skipped(L), log.calls, has_bad, invalid, n);
    MS_CHECK(repl >= 1, "the corrupt record was not replaced by its neighbour");
    ms_loader_close(L);
}

static void test_multi_store(void)
{
    ms_loader_config c;
    base_config(&c, STORE_A, 2);
    c.n_stores = 2;
    c.store_paths[1] = STORE_B;
    c.weights[0] = 1;
    c.weights[1] = 3;
    c.output = MS_LOAD_NATIVE;
    c.augment = 0;
    c.epoch_len = 4096;
    c.global_batch = 64;
    c.n_epochs = 1;
    c.on_corrupt = on_corrupt; /* store B has a corrupt record from the previous test */
    corrupt_log log = {0};
    c.on_corrupt_ctx = &log;
    ms_loader *L = NULL;
    MS_CHECK_OK(ms_loader_open(&c, &L));
    if (!L) return;
    const ms_batch *b;
    int cnt[2] = {0, 0};
    while (ms_loader_next(L, &b) == MS_OK && b)
        for (int k = 0; k < b->n; k++) cnt[b->source[k]]++;
    MS_CHECK(cnt[0] == 1024 && cnt[1] == 3072, "weights 1:3 over 4096 samples gave %d:%d", cnt[0], cnt[1]);
    ms_loader_close(L);
    /* the same store twice (two tasks of one store): opened once, both entries read */
    c.store_paths[1] = STORE_A;
    L = NULL;
    MS_CHECK_OK(ms_loader_open(&c, &L));
    if (!L) return;
    cnt[0] = cnt[1] = 0;
    while (ms_loader_next(L, &b) == MS_OK && b)
        for (int k = 0; k < b->n; k++) cnt[b->source[k]]++;
    MS_CHECK(cnt[0] == 1024 && cnt[1] == 3072, "one store twice: %d:%d", cnt[0], cnt[1]);
    ms_loader_close(L);
}

/* Split by volume through ms_loader_select: train and val loaders never share a volume; labels stay in each
 * volume's value set. */
static void test_split_loader(const char *store)
{
    ms_store *st = NULL;
    MS_CHECK_OK(ms_store_open(store, 16, &st));
    if (!st) return;
    ms_split_spec sp;
    ms_split_spec_default(&sp);
    sp.seed = SEED;
    sp.labeled_only = 1;
    sp.val_fraction = 0.3;
    ms_selection tr = {0}, va = {0};
    int single = -1;
    MS_CHECK_OK(ms_loader_select(st, &sp, &tr, &va, &single));
    uint32_t nv = ms_store_n_volumes(st);
    int *side = calloc(nv, sizeof(int)), bad_values = 0;
    ms_volume_info *vi = calloc(nv, sizeof(*vi));
    for (uint32_t v = 0; v < nv; v++) ms_store_volume(st, v, &vi[v]);
    for (int which = 0; which < 2; which++) {
        ms_loader_config c;
        base_config(&c, store, 2);
        c.stores[0] = st;
        c.selection[0] = which ? &va : &tr;
        c.shuffle = which == 0;
        c.drop_last = 0;
        c.n_epochs = 1;
        c.augment = which == 0;
        ms_loader *L = NULL;
        MS_CHECK_OK(ms_loader_open(&c, &L));
        if (!L) break;
        const ms_batch *b;
        while (ms_loader_next(L, &b) == MS_OK && b)
            for (int k = 0; k < b->n; k++) {
                uint32_t v = 0;
                while (v < nv && !(b->key[k] >= vi[v].first_key && b->key[k] < vi[v].first_key + vi[v].n_slices)) v++;
                if (v == nv) {
                    bad_values++;
                    continue;
                }
                side[v] |= 1 << which;
                const uint16_t *l = b->label + (size_t)k * b->label_size * b->label_size;
                for (int i = 0; i < b->label_size * b->label_size; i++) {
                    int ok = l[i] == 0;
                    for (int j = 0; j < vi[v].n_label_values && !ok; j++) ok = l[i] == vi[v].label_values[j];
                    bad_values += !ok;
                }
            }
        ms_loader_close(L);
    }
    int leak = 0, used = 0;
    for (uint32_t v = 0; v < nv; v++) {
        leak += side[v] == 3;
        used += side[v] != 0;
    }
    MS_CHECK(leak == 0 && bad_values == 0 && used >= 2 && tr.n > 0 && va.n > 0,
             "split loaders: %d volumes in both, %d label values outside their volume's set, %d volumes used", leak,
             bad_values, used);
    free(side);
    free(vi);
    ms_selection_free(&tr);
    ms_selection_free(&va);
    ms_store_close(st);
}

int main(int argc, char **argv)
{
    SEED = ms_test_seed();
    if (argc > 1) { /* a store written by `mrisam ingest` (tests/data/test_loader_ingest.sh) */
        test_threads_and_resume(argv[1], 1);
        test_ranks(argv[1], 1);
        test_split_loader(argv[1]);
        return ms_test_done();
    }
    char dir[] = "/tmp/ms_loader_test_XXXXXX";
    if (!mkdtemp(dir)) {
        printf("cannot create a temporary folder\n");
        return 1;
    }
    snprintf(STORE_A, sizeof(STORE_A), "%s/a", dir);
    snprintf(STORE_B, sizeof(STORE_B), "%s/b", dir);
    ms_status rc = fx_make_store(STORE_A, SEED, VOLS, NV);
    if (!rc) rc = fx_make_store(STORE_B, SEED, VOLS, NV);
    MS_CHECK(rc == MS_OK, "building the test stores: %s", ms_errmsg());
    if (!rc) {
        test_threads_and_resume(STORE_A, 0);
        test_ranks(STORE_A, 0);
        test_split_loader(STORE_A);
        test_outputs();
        test_corrupt();
        test_multi_store();
    }
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("could not remove %s\n", dir);
    return ms_test_done();
}
