/* tests/checkpoints/test_ckpt_write.c — writers: a random state dict of every dtype (0-d, empty, odd shapes) goes
 * through .pth (default, Zip64-forced with another prefix) and .safetensors (with __metadata__) and must read back
 * bit for bit, in order; the zip is checked entry by entry (64-byte aligned data, CRC32 of every entry, the
 * torch 2.x record set); API errors (duplicates, shape mismatch, unknown extension, unwritable folder, dtypes torch
 * has no storage for) give one-line messages and leave no temporary file; random UTF-8 names round-trip, and names
 * that are not UTF-8 are refused by both writers (a safetensors header is UTF-8; torch.load decodes names so). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/fileio.h"
#include "checkpoints/pth.h"
#include "checkpoints/safetensors.h"
#include "checkpoints/state_dict.h"
#include "checkpoints/zip.h"
#include "ckpt_gen.h"
#include "harness.h"

static void random_sd(ms_state_dict *sd, ms_rng *r, int torch_only)
{
    static const struct { ms_dtype dt; int nd; int64_t s[4]; } spec[] = {
        {MS_DTYPE_F32, 2, {7, 5}},   {MS_DTYPE_F16, 3, {2, 3, 4}}, {MS_DTYPE_BF16, 1, {9}},
        {MS_DTYPE_F64, 2, {3, 1}},   {MS_DTYPE_I64, 1, {4}},       {MS_DTYPE_I32, 2, {2, 2}},
        {MS_DTYPE_I16, 1, {3}},      {MS_DTYPE_I8, 1, {5}},        {MS_DTYPE_U8, 4, {1, 2, 1, 3}},
        {MS_DTYPE_BOOL, 1, {6}},     {MS_DTYPE_F32, 0, {0}},       {MS_DTYPE_F32, 2, {0, 3}},
        {MS_DTYPE_U16, 1, {3}},      {MS_DTYPE_U32, 1, {2}},       {MS_DTYPE_U64, 1, {2}},
    };
    ms_sd_init(sd);
    for (size_t i = 0; i < sizeof spec / sizeof *spec; i++) {
        if (torch_only && (spec[i].dt == MS_DTYPE_U16 || spec[i].dt == MS_DTYPE_U32 || spec[i].dt == MS_DTYPE_U64))
            continue;
        int64_t n = 1;
        for (int k = 0; k < spec[i].nd; k++) n *= spec[i].s[k];
        size_t bytes = (size_t)n * ms_dtype_size(spec[i].dt);
        unsigned char *b = malloc(bytes + 1);
        for (size_t k = 0; k < bytes; k++) b[k] = (unsigned char)ms_rng_u64(r);
        if (spec[i].dt == MS_DTYPE_BOOL)
            for (size_t k = 0; k < bytes; k++) b[k] &= 1;
        char name[64];
        snprintf(name, sizeof name, "layer.%zu.%s \"q\"", i, ms_dtype_name(spec[i].dt)); /* quotes: JSON escaping */
        MS_CHECK_OK(ms_sd_add(sd, name, spec[i].dt, spec[i].s, spec[i].nd, b));
        free(b);
    }
}

static int same_sd(const ms_state_dict *a, const ms_state_dict *b, const char *label)
{
    int ok = a->n == b->n;
    MS_CHECK(ok, "%s: %d tensors, expected %d", label, b->n, a->n);
    for (int i = 0; ok && i < a->n; i++) {
        const ms_tensor *x = &a->e[i].t, *y = &b->e[i].t;
        int same = !strcmp(a->e[i].name, b->e[i].name) && x->dtype == y->dtype && x->ndim == y->ndim;
        for (int k = 0; same && k < x->ndim; k++) same = x->shape[k] == y->shape[k];
        same = same && (ms_tensor_bytes(x) == 0 || !memcmp(x->data, y->data, ms_tensor_bytes(x)));
        MS_CHECK(same, "%s: tensor %d (%s) differs", label, i, a->e[i].name);
        ok &= same;
    }
    return ok;
}

static void check_zip_layout(const char *path, const char *prefix, int n_tensors)
{
    ms_map m;
    ms_zip z;
    MS_CHECK_OK(ms_map_open(path, &m));
    ms_status st = ms_zip_open(&z, m.p, m.size, path);
    MS_CHECK(st == MS_OK, "%s", ms_errmsg());
    if (!st) {
        MS_CHECK(z.n == n_tensors + 5, "%d entries, expected %d", z.n, n_tensors + 5);
        int aligned = 1;
        for (int i = 0; i < z.n; i++) {
            aligned &= z.e[i].data_off % 64 == 0;
            MS_CHECK_OK(ms_zip_check_crc(&z, &z.e[i]));
            MS_CHECK(!strncmp(z.e[i].name, prefix, strlen(prefix)), "entry %s outside %s", z.e[i].name, prefix);
        }
        MS_CHECK(aligned, "%s: data not 64-byte aligned", path);
        static const char *rec[] = {"data.pkl", ".format_version", ".storage_alignment", "byteorder", "version"};
        for (int i = 0; i < 5; i++) {
            char n[128];
            snprintf(n, sizeof n, "%s%s", prefix, rec[i]);
            MS_CHECK(ms_zip_find(&z, n) != NULL, "%s: no %s", path, n);
        }
        ms_zip_close(&z);
    }
    ms_map_close(&m);
}

static int temp_left(const char *stem)
{
    DIR *d = opendir(".");
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, stem) && strstr(e->d_name, ".tmp.")) n++;
    if (d) closedir(d);
    return n;
}

/* Random names: well-formed UTF-8 ones round-trip through .safetensors and .pth byte for byte; a name holding an
 * ill-formed sequence is refused by both writers (one line, the path, the name escaped), leaving the files already
 * at those paths as they were and no temporary file. */
static void utf8_names(uint64_t seed, const char *st, int members)
{
    char pth[64];
    snprintf(pth, sizeof pth, "u_%d.pth", (int)getpid());
    float v[3] = {1, 2, 3};
    int64_t shp[1] = {3};
    int refused = 0;
    for (int m = 0; m < members; m++) {
        ms_rng r;
        ms_rng_init(&r, seed, 500 + (uint64_t)m);
        ms_state_dict a, b;
        ms_sd_init(&a);
        int n = 1 + (int)(ms_rng_u64(&r) % 4);
        for (int i = 0; i < n; i++) {
            char name[80];
            snprintf(name, 8, "%d.", i);
            gen_utf8_name(&r, name + strlen(name));
            MS_CHECK_OK(ms_sd_add(&a, name, MS_DTYPE_F32, shp, 1, v));
        }
        MS_CHECK_OK(ms_sd_save(st, &a));
        MS_CHECK_OK(ms_sd_load(st, &b));
        same_sd(&a, &b, "UTF-8 names .safetensors");
        ms_sd_free(&b);
        MS_CHECK_OK(ms_sd_save(pth, &a));
        MS_CHECK_OK(ms_sd_load(pth, &b));
        same_sd(&a, &b, "UTF-8 names .pth");
        ms_sd_free(&b);
        /* now one more name with an ill-formed sequence inside */
        char bad[80] = "bad.";
        size_t k = strlen(bad) + gen_bad_utf8(&r, (uint8_t *)bad + strlen(bad));
        bad[k] = 0;
        gen_utf8_name(&r, bad + k);
        MS_CHECK_OK(ms_sd_add(&a, bad, MS_DTYPE_F32, shp, 1, v));
        ms_status s = ms_sd_save(st, &a);
        const char *msg = ms_errmsg();
        int ok = s == MS_EUNSUPPORTED && strstr(msg, st) && strstr(msg, "tensor name \"bad.\\x") &&
                 strstr(msg, "not valid UTF-8") && !strchr(msg, '\n');
        MS_CHECK(ok, "member %d: %s", m, s ? msg : "written");
        if (m == 0) printf("  %s\n", msg);
        s = ms_sd_save(pth, &a); /* torch.load could not decode it either */
        msg = ms_errmsg();
        ok &= s == MS_EUNSUPPORTED && strstr(msg, pth) && strstr(msg, "not valid UTF-8") && !strchr(msg, '\n');
        MS_CHECK(ok, "member %d (.pth): %s", m, s ? msg : "written");
        refused += ok;
        ms_sd_remove(&a, bad);
        for (int f = 0; f < 2; f++) { /* the earlier files are still there, unchanged */
            MS_CHECK_OK(ms_sd_load(f ? pth : st, &b));
            same_sd(&a, &b, "after the refused write");
            ms_sd_free(&b);
        }
        ms_sd_free(&a);
    }
    MS_CHECK(temp_left("w_") == 0 && temp_left("u_") == 0, "temporary files left behind");
    printf("  UTF-8 names: %d members round-trip; %d ill-formed names refused by both writers\n", members, refused);
    remove(pth);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_rng r;
    ms_rng_init(&r, seed, 1);
    char pth[64], st[64], z64[64], bad[64];
    snprintf(pth, sizeof pth, "w_%d.pth", (int)getpid());
    snprintf(st, sizeof st, "w_%d.safetensors", (int)getpid());
    snprintf(z64, sizeof z64, "w64_%d.pt", (int)getpid());
    snprintf(bad, sizeof bad, "w_%d.weights", (int)getpid());

    ms_state_dict a, b, all;
    random_sd(&a, &r, 1);
    random_sd(&all, &r, 0);
    all.meta_json = strdup("{\"format\":\"pt\",\"note\":\"x\\\"y\"}");

    MS_CHECK_OK(ms_sd_save(pth, &a));
    MS_CHECK_OK(ms_sd_load(pth, &b));
    same_sd(&a, &b, ".pth");
    ms_sd_free(&b);
    check_zip_layout(pth, "archive/", a.n);

    ms_pth_wopts o = {"my_model", 1};
    MS_CHECK_OK(ms_pth_write(z64, &a, &o));
    MS_CHECK_OK(ms_sd_load(z64, &b));
    same_sd(&a, &b, "zip64 .pt");
    ms_sd_free(&b);
    check_zip_layout(z64, "my_model/", a.n);

    MS_CHECK_OK(ms_sd_save(st, &all));
    MS_CHECK_OK(ms_sd_load(st, &b));
    same_sd(&all, &b, ".safetensors");
    MS_CHECK(b.meta_json && !strcmp(b.meta_json, all.meta_json), "metadata %s", b.meta_json ? b.meta_json : "(none)");
    FILE *f = fopen(st, "rb");
    unsigned char h[8] = {0};
    MS_CHECK(f && fread(h, 1, 8, f) == 8, "read header length");
    if (f) fclose(f);
    MS_CHECK((8 + ms_le64(h)) % 8 == 0, "safetensors data not 8-byte aligned");
    ms_sd_free(&b);

    /* torch has no storage class for U16/U32/U64: refused, and the old file stays. */
    ms_status s = ms_sd_save(pth, &all);
    MS_CHECK(s == MS_EUNSUPPORTED && strstr(ms_errmsg(), "U16"), "U16 to .pth: %d %s", s, ms_errmsg());
    MS_CHECK_OK(ms_sd_load(pth, &b));
    ms_sd_free(&b);
    s = ms_sd_save(bad, &a);
    MS_CHECK(s == MS_EINVAL && strstr(ms_errmsg(), "extension"), "unknown extension: %s", ms_errmsg());
    s = ms_sd_save("no_such_dir_ckpt/x.pth", &a);
    MS_CHECK(s != MS_OK && strstr(ms_errmsg(), "no_such_dir_ckpt"), "unwritable: %s", ms_errmsg());
    MS_CHECK(temp_left("w_") == 0 && temp_left("w64_") == 0, "temporary files left behind");

    /* API errors */
    int64_t shp[2] = {2, 2};
    float v[4] = {1, 2, 3, 4}, out[4];
    MS_CHECK(ms_sd_add(&a, a.e[0].name, MS_DTYPE_F32, shp, 2, v) != MS_OK, "duplicate accepted");
    MS_CHECK_OK(ms_sd_add(&a, "four", MS_DTYPE_F32, shp, 2, v));
    MS_CHECK_OK(ms_sd_get_f32(&a, "four", shp, 2, out));
    MS_CHECK(!memcmp(out, v, sizeof v), "get_f32 values");
    int64_t wrong[2] = {4, 1};
    s = ms_sd_get_f32(&a, "four", wrong, 2, out);
    MS_CHECK(s == MS_ESHAPE && !strcmp(ms_errmsg(), "four: shape (2, 2) in file, expected (4, 1)"), "%s", ms_errmsg());
    s = ms_sd_get_f32(&a, "five", wrong, 2, out);
    MS_CHECK(s == MS_ENOTFOUND && !strcmp(ms_errmsg(), "five: missing"), "%s", ms_errmsg());
    /* f16 / bf16 / i64 conversion */
    const ms_sd_entry *e16 = ms_sd_find(&a, "layer.1.F16 \"q\"");
    float *g = malloc(24 * sizeof *g);
    MS_CHECK_OK(ms_sd_get_f32(&a, e16->name, e16->t.shape, 3, g));
    int ok = 1;
    for (int i = 0; i < 24; i++) {
        float w = ms_f16_to_f32(((uint16_t *)e16->t.data)[i]);
        ok &= (g[i] == w) || (w != w && g[i] != g[i]);
    }
    MS_CHECK(ok, "f16 conversion");
    free(g);

    utf8_names(seed, st, 60);

    remove(pth);
    remove(st);
    remove(z64);
    ms_sd_free(&a);
    ms_sd_free(&all);
    return ms_test_done();
}
