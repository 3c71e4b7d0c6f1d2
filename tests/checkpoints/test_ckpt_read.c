/* tests/checkpoints/test_ckpt_read.c — reading weight files: the PyTorch-written fixtures of gen_fixtures.py
 * against fixtures/expected.json (names, order, dtypes, shapes, values bit for bit), every hostile file of
 * fixtures/hostile/manifest.txt (refused with a one-line error naming the file and the expected reason), every
 * truncation of valid files, and seeded random byte corruption (must fail cleanly or load; run under ASan).
 * With MRISAM_SAM_CKPT=<sam_vit_{b,l,h}.pth> it also checks a real SAM checkpoint's key count and shapes. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/path.h"
#include "checkpoints/pickle.h"
#include "checkpoints/state_dict.h"
#include "harness.h"

static char fixdir[MS_PATH_MAX];

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)sz + 1);
    if (b && fread(b, 1, (size_t)sz, f) != (size_t)sz) {
        free(b);
        b = NULL;
    }
    if (b) b[sz] = 0;
    fclose(f);
    if (n) *n = (size_t)sz;
    return b;
}

static int spit(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(p, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

static void check_file(const char *fname, const cJSON *want)
{
    char path[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(path, fixdir, fname));
    ms_state_dict sd;
    ms_status st = ms_sd_load(path, &sd);
    MS_CHECK(st == MS_OK, "%s: %s", fname, ms_errmsg());
    if (st) return;
    MS_CHECK(sd.n == cJSON_GetArraySize(want), "%s: %d tensors, expected %d", fname, sd.n, cJSON_GetArraySize(want));
    int i = 0, bad = 0;
    for (const cJSON *t = want->child; t && i < sd.n; t = t->next, i++) {
        const ms_sd_entry *e = &sd.e[i];
        if (strcmp(e->name, t->string)) {
            MS_CHECK(0, "%s: tensor %d is %s, expected %s", fname, i, e->name, t->string);
            continue;
        }
        const char *dt = cJSON_GetObjectItem(t, "dtype")->valuestring;
        MS_CHECK(!strcmp(ms_dtype_name(e->t.dtype), dt), "%s %s: dtype %s, expected %s", fname, e->name,
                 ms_dtype_name(e->t.dtype), dt);
        const cJSON *sh = cJSON_GetObjectItem(t, "shape"), *vals = cJSON_GetObjectItem(t, "values");
        int64_t shape[MS_MAX_DIMS];
        int nd = 0;
        for (const cJSON *x = sh->child; x; x = x->next) shape[nd++] = (int64_t)x->valuedouble;
        int64_t n = cJSON_GetArraySize(vals);
        float *f = malloc((size_t)(n + 1) * sizeof *f);
        st = ms_sd_get_f32(&sd, e->name, shape, nd, f);
        MS_CHECK(st == MS_OK, "%s: %s", fname, ms_errmsg());
        int64_t k = 0;
        for (const cJSON *x = vals->child; !st && x; x = x->next, k++) {
            int ok = f[k] == (float)x->valuedouble;
            /* f64 and i64 also exactly in their own type */
            if (e->t.dtype == MS_DTYPE_F64) ok &= ((const double *)e->t.data)[k] == x->valuedouble;
            if (e->t.dtype == MS_DTYPE_I64) ok &= ((const int64_t *)e->t.data)[k] == (int64_t)x->valuedouble;
            if (!ok && bad++ < 5) MS_CHECK(0, "%s %s[%lld]: %.9g, expected %.17g", fname, e->name, (long long)k, f[k],
                                           x->valuedouble);
        }
        free(f);
    }
    MS_CHECK(bad == 0, "%s: %d wrong values", fname, bad);
    ms_sd_free(&sd);
}

/* Must fail with a one-line message that names the file and contains `why`. */
static void expect_refused(const char *path, const char *why, const char *label)
{
    ms_state_dict sd;
    ms_status st = ms_sd_load(path, &sd);
    const char *m = ms_errmsg();
    MS_CHECK(st != MS_OK, "%s: was accepted (%d tensors)", label, st ? 0 : sd.n);
    if (st == MS_OK) {
        ms_sd_free(&sd);
        return;
    }
    MS_CHECK(!strchr(m, '\n') && strstr(m, path) && (!why || strstr(m, why)), "%s: message \"%s\" (want \"%s\")",
             label, m, why ? why : "");
}

static void hostile(void)
{
    char path[MS_PATH_MAX], line[1024];
    MS_CHECK_OK(ms_path_join(path, fixdir, "hostile/manifest.txt"));
    FILE *f = fopen(path, "r");
    MS_CHECK(f != NULL, "no %s", path);
    if (!f) return;
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        char *tab = strchr(line, '\t');
        if (!tab) continue;
        *tab = 0;
        tab[strcspn(tab + 1, "\n") + 1] = 0;
        MS_CHECK_OK(ms_path_fmt(path, "%s/hostile/%s", fixdir, line));
        expect_refused(path, tab + 1, line);
        if (n++ < 100) printf("  refused %-28s %s\n", line, ms_errmsg());
    }
    fclose(f);
    MS_CHECK(n >= 40, "only %d hostile files", n);
}

/* Every prefix of a valid file must be refused; corrupted copies must load or fail, never crash. */
static void damage(const char *fname, int step, uint64_t seed, int n_flips)
{
    char src[MS_PATH_MAX], tmp[64];
    MS_CHECK_OK(ms_path_join(src, fixdir, fname));
    snprintf(tmp, sizeof tmp, "damaged_%d.bin", (int)getpid());
    size_t n;
    unsigned char *b = (unsigned char *)slurp(src, &n);
    MS_CHECK(b != NULL, "cannot read %s", src);
    if (!b) return;
    int refused = 0, total = 0;
    for (size_t cut = 0; cut < n; cut += (size_t)step) {
        spit(tmp, b, cut);
        ms_state_dict sd;
        ms_status st = ms_sd_load(tmp, &sd);
        total++;
        if (st) refused++;
        else ms_sd_free(&sd);
        MS_CHECK(st == MS_OK || !strchr(ms_errmsg(), '\n'), "multi-line message");
    }
    MS_CHECK(refused == total, "%s: %d of %d truncations accepted", fname, total - refused, total);
    ms_rng r;
    ms_rng_init(&r, seed, 77);
    int loaded = 0;
    for (int it = 0; it < n_flips; it++) {
        unsigned char *c = malloc(n);
        memcpy(c, b, n);
        int k = 1 + (int)(ms_rng_u64(&r) % 4);
        for (int j = 0; j < k; j++) c[ms_rng_u64(&r) % n] ^= (unsigned char)(1 + ms_rng_u64(&r) % 255);
        spit(tmp, c, n);
        free(c);
        ms_state_dict sd;
        if (ms_sd_load(tmp, &sd) == MS_OK) {
            loaded++;
            ms_sd_free(&sd);
        }
    }
    printf("  %s: %d truncations refused; %d/%d corrupted copies still loaded (bytes no check covers), none crashed\n",
           fname, refused, loaded, n_flips);
    remove(tmp);
    free(b);
}

/* Tiny pickles found by fuzzing or at the edges of the opcode table: each must end in a clean error. */
static void pickle_edges(void)
{
    static const struct { const char *p; size_t n; const char *why; } c[] = {
        {"\x80\x02(t.", 6, "no dict of tensors"},                     /* empty tuple, stack not yet allocated */
        {"\x80\x02](e.", 7, "no dict of tensors"},                    /* empty APPENDS */
        {"\x80\x02}(u.", 7, ""},                                      /* empty SETITEMS: an empty state dict */
        {"\x80\x02}(K\x01u.", 9, "bad SETITEMS"},                     /* odd item count */
        {"\x80\x02K\x01K\x02K\x03s.", 10, "SETITEM on something"},  /* SETITEM on an int */
        {"\x80\x02)K\x01" "b.", 7, "BUILD on something"},            /* BUILD on a tuple */
        {"\x80\x02\x8a\x09" "AAAAAAAAA.", 14, "at most 8"},          /* LONG1 longer than int64 */
        {"\x80\x06}.", 4, "protocol 6"},
        {"\x80\x02\x95\xff\xff\xff\xff\xff\xff\xff\x7f}.", 13, "FRAME"},
        {"\x80\x02" "c\n\n.", 6, "GLOBAL . is not allowed"},
        {"\x80\x02X\x01\x00\x00\x00" "a" "X\x01\x00\x00\x00" "b\x93.", 16, "GLOBAL a.b"},
        {"\x80\x02\x94.", 4, "stack underflow"},
        {"\x80\x02)Q.", 5, "persistent id"},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        ms_pkl_sd sd;
        size_t used;
        ms_status st = ms_pickle_state_dict((const uint8_t *)c[i].p, c[i].n, "edge", 0, &sd, &used);
        if (st == MS_OK) {
            MS_CHECK(sd.n == 0 && i == 2, "edge pickle %zu accepted with %d tensors", i, sd.n);
            ms_pkl_sd_free(&sd);
            continue;
        }
        MS_CHECK(strstr(ms_errmsg(), c[i].why) && !strchr(ms_errmsg(), '\n'), "edge pickle %zu: %s (want %s)", i,
                 ms_errmsg(), c[i].why);
    }
}

/* docs/MODEL.md §Checkpoint keys: key counts and a few shapes per variant. */
static void real_sam(void)
{
    const char *p = getenv("MRISAM_SAM_CKPT");
    if (!p || !*p) {
        printf("  MRISAM_SAM_CKPT not set: skipped the real SAM checkpoint check\n");
        return;
    }
    ms_state_dict sd;
    ms_status st = ms_sd_load(p, &sd);
    MS_CHECK(st == MS_OK, "%s", ms_errmsg());
    if (st) return;
    const ms_sd_entry *q = ms_sd_find(&sd, "image_encoder.blocks.0.attn.qkv.weight");
    MS_CHECK(q && q->t.ndim == 2, "no qkv weight");
    int64_t D = q ? q->t.shape[1] : 0;
    int depth = D == 768 ? 12 : D == 1024 ? 24 : D == 1280 ? 32 : 0, hd = D == 1280 ? 80 : 64;
    int keys = 3 + 14 * depth + 6 + 17 + 120;
    MS_CHECK(depth && sd.n == keys, "%s: %d keys, expected %d for D=%lld", p, sd.n, keys, (long long)D);
    struct { const char *name; int nd; int64_t s[4]; } want[] = {
        {"image_encoder.pos_embed", 4, {1, 64, 64, D}},
        {"image_encoder.patch_embed.proj.weight", 4, {D, 3, 16, 16}},
        {"image_encoder.blocks.0.attn.qkv.weight", 2, {3 * D, D}},
        {"image_encoder.blocks.0.attn.rel_pos_h", 2, {27, hd}},
        {"image_encoder.blocks.0.mlp.lin1.weight", 2, {4 * D, D}},
        {"image_encoder.neck.0.weight", 4, {256, D, 1, 1}},
        {"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", 2, {2, 128}},
        {"mask_decoder.output_upscaling.0.weight", 4, {256, 64, 2, 2}},
        {"mask_decoder.iou_prediction_head.layers.2.weight", 2, {4, 256}},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const ms_sd_entry *e = ms_sd_find(&sd, want[i].name);
        int ok = e && e->t.ndim == want[i].nd && e->t.dtype == MS_DTYPE_F32;
        for (int k = 0; ok && k < want[i].nd; k++) ok = e->t.shape[k] == want[i].s[k];
        MS_CHECK(ok, "%s: wrong or missing", want[i].name);
    }
    char g[96];
    snprintf(g, sizeof g, "image_encoder.blocks.%d.attn.rel_pos_w", depth / 4 * 4 - 1);
    const ms_sd_entry *e = ms_sd_find(&sd, g);
    MS_CHECK(e && e->t.shape[0] == 127, "%s: global block rel_pos not (127, hd)", g);
    printf("  %s: %d keys, D=%lld, depth %d: ok\n", p, sd.n, (long long)D, depth);
    ms_sd_free(&sd);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    const char *src = getenv("MS_SOURCE_DIR");
    MS_CHECK_OK(ms_path_join(fixdir, src ? src : ".", "tests/checkpoints/fixtures"));
    char path[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(path, fixdir, "expected.json"));
    char *txt = slurp(path, NULL);
    cJSON *exp = txt ? cJSON_Parse(txt) : NULL;
    MS_CHECK(exp != NULL, "cannot read %s", path);
    for (const cJSON *f = exp ? exp->child : NULL; f; f = f->next) {
        check_file(f->string, f);
        printf("  read %s: %d tensors\n", f->string, cJSON_GetArraySize(f));
    }
    cJSON_Delete(exp);
    free(txt);
    hostile();
    pickle_edges();
    damage("small.pth", 3, seed, 300);
    damage("legacy.pth", 1, seed + 1, 300);
    damage("torch2.pth", 5, seed + 2, 300);
    real_sam();
    return ms_test_done();
}
