/* tests/pretrain/test_sam_encoder.c — the C image encoder against the PyTorch reference (tests/reference/sam_ref_encoder.py,
 * golden files from tests/reference/gen_encoder_golden.py, computed in float64).
 *
 * 1. vit_test (docs/CLI.md) at 256, batch 1, counter_init weights: patch embedding, every block's output, the neck output,
 *    and for L = Σ emb·G every parameter gradient and the input gradient.
 * 2. An odd tiny variant whose weights are in the file (patch 8, D 48, 2 heads, window 4 on a 10×10 grid → padded
 *    windows, global tables of length 15 ≠ 2·10−1 → interpolated), batch 2: variant detection from the shapes,
 *    ms_params_load, outputs and full gradients, for SAM's block and for finetune-SAM's (pad tokens = norm1.bias).
 * 3. A state dict with a missing key, a mis-shaped key and an unknown key: one stderr line per key, nothing loaded.
 * 4. Parameter counts of vit_b/l/h against segment_anything's checkpoints (build_sam.py configurations), and
 *    detection round trips of vit_test.
 * 1–3 run on the CPU, then again on CUDA when this build and machine have a GPU (same golden files, same tolerance:
 * the CUDA backend does exact fp32 GEMMs unless MS_CUDA_TF32=1).
 *
 * Tolerance (fp32 against a float64 reference): for each tensor, max|c − r| ≤ 1e-4 · max|r| (TOL); sampled
 * gradients: the same on the sample, and |Σc − Σr| ≤ 1e-4·Σ|r|, |Σc² − Σr²| ≤ 1e-4·Σr². NMSE is printed too.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/path.h"
#include "harness.h"
#include "ops.h"
#include "pretrain/params.h"
#include "pretrain/sam_encoder.h"
#include "reference/counter_init.h"

#define TOL 1e-4

static ms_device dev; /* the device under test: the CPU, then CUDA when this build and machine have one */

static float *to_host(const float *d, int64_t n)
{
    float *h = malloc((size_t)(n ? n : 1) * sizeof(float));
    if (h && d) MS_CHECK_OK(ms_dev_to_host(&dev, h, d, (size_t)n * sizeof(float)));
    return h;
}

static float *to_dev(const float *h, int64_t n)
{
    float *d = NULL;
    MS_CHECK_OK(ms_dev_alloc(&dev, (size_t)(n ? n : 1) * sizeof(float), (void **)&d));
    if (d && h) MS_CHECK_OK(ms_dev_from_host(&dev, d, h, (size_t)n * sizeof(float)));
    return d;
}

/* check_full on a device array */
static void check_dev(const char *what, const float *dptr, const float *r, int64_t n);

static const float *gold(const ms_state_dict *sd, const char *name, int64_t numel)
{
    const ms_sd_entry *e = ms_sd_find(sd, name);
    if (!e) { MS_CHECK(0, "%s: not in golden file", name); return NULL; }
    if (e->t.dtype != MS_DTYPE_F32 || ms_tensor_numel(&e->t) != numel) {
        MS_CHECK(0, "%s: golden dtype %d numel %lld, expected f32 %lld", name, e->t.dtype,
                 (long long)ms_tensor_numel(&e->t), (long long)numel);
        return NULL;
    }
    return e->t.data;
}

/* max|c − r| ≤ TOL·max|r| */
static void check_full(const char *what, const float *c, const float *r, int64_t n)
{
    if (!r) return;
    ms_cmp k = ms_compare_f(c, r, n);
    double mx = 0;
    for (int64_t i = 0; i < n; i++) if (fabs(r[i]) > mx) mx = fabs(r[i]);
    double rel = k.max_abs / (mx > 0 ? mx : 1);
    MS_CHECK(rel <= TOL && mx > 0, "%s: max_abs %.3g (rel to max|ref| %.3g), nmse %.3g, worst index %lld", what,
             k.max_abs, rel, k.nmse, (long long)k.worst);
    if (getenv("MS_VERBOSE")) printf("  %-50s rel %.2e nmse %.2e\n", what, rel, k.nmse);
}

/* A gradient stored in full (name) or as name.idx / name.val / name.stats. */
static void check_grad(const ms_state_dict *sd, const char *name, const float *c, int64_t n)
{
    if (ms_sd_find(sd, name)) { check_full(name, c, gold(sd, name, n), n); return; }
    char k[256];
    snprintf(k, sizeof k, "%s.idx", name);
    const ms_sd_entry *ei = ms_sd_find(sd, k);
    snprintf(k, sizeof k, "%s.stats", name);
    const ms_sd_entry *es = ms_sd_find(sd, k);
    snprintf(k, sizeof k, "%s.val", name);
    const ms_sd_entry *ev = ms_sd_find(sd, k);
    if (!ei || !es || !ev || ei->t.dtype != MS_DTYPE_I64 || es->t.dtype != MS_DTYPE_F64 || ev->t.dtype != MS_DTYPE_F32) {
        MS_CHECK(0, "%s: not in golden file", name);
        return;
    }
    int64_t ns = ms_tensor_numel(&ei->t);
    const int64_t *idx = ei->t.data;
    float *cs = malloc((size_t)ns * sizeof(float));
    int ok = 1;
    for (int64_t i = 0; i < ns; i++) {
        ok &= idx[i] >= 0 && idx[i] < n;
        cs[i] = ok ? c[idx[i]] : 0;
    }
    MS_CHECK(ok, "%s: sample index out of range", name);
    snprintf(k, sizeof k, "%s (sampled)", name);
    check_full(k, cs, ev->t.data, ns);
    free(cs);
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) { s += c[i]; s2 += (double)c[i] * c[i]; }
    const double *st = es->t.data;
    MS_CHECK(fabs(s - st[0]) <= TOL * st[2] && fabs(s2 - st[1]) <= TOL * st[1],
             "%s: sum %.9g vs %.9g, sumsq %.9g vs %.9g (sum|r| %.6g)", name, s, st[0], s2, st[1], st[2]);
}

static void check_dev(const char *what, const float *dptr, const float *r, int64_t n)
{
    if (!dptr) { MS_CHECK(0, "%s: not kept", what); return; }
    float *h = to_host(dptr, n);
    check_full(what, h, r, n);
    free(h);
}

static void check_grad_dev(const ms_state_dict *sd, const char *name, const float *dptr, int64_t n)
{
    float *h = to_host(dptr, n);
    check_grad(sd, name, h, n);
    free(h);
}

static void check_encoder_grads(ms_sam_encoder *enc, const ms_state_dict *g, const char *pre, const float *dx,
                                int64_t nx)
{
    ms_params *ps = enc->ps;
    for (int i = 0; i < ps->n; i++) {
        char k[256];
        snprintf(k, sizeof k, "%sgrad.%s", pre, ps->p[i].name);
        const float *gr = ms_params_grad(ps, i);
        MS_CHECK(gr != NULL, "%s: no gradient", ps->p[i].name);
        if (gr) check_grad_dev(g, k, gr, ps->p[i].numel);
    }
    char k[64];
    snprintf(k, sizeof k, "%sgrad.input", pre);
    check_grad(g, k, dx, nx);
}

static char *golden_path(const char *file)
{
    const char *src = getenv("MS_SOURCE_DIR");
    static char buf[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_fmt(buf, "%s/tests/pretrain/golden/%s", src ? src : "../../..", file));
    return buf;
}

/* Forward + backward of enc on the golden input; checks stages (with prefix pre) and gradients. */
static void run_and_check(ms_sam_encoder *enc, const ms_state_dict *g, const char *pre, int B, int check_patch)
{
    const ms_sam_enc_config *c = &enc->cfg;
    int64_t S = c->img_size, gs = ms_sam_enc_grid(c), T = gs * gs, D = c->embed_dim;
    int64_t nx = (int64_t)B * 3 * S * S, ne = (int64_t)B * c->out_chans * T;
    const float *hx = gold(g, "input", nx), *hG = gold(g, "G", ne);
    if (!hx || !hG) return;
    float *x = to_dev(hx, nx), *G = to_dev(hG, ne), *emb = to_dev(NULL, ne);
    MS_CHECK_OK(ms_params_zero_grads(enc->ps));
    MS_CHECK_OK(ms_sam_encoder_forward(enc, x, B, emb));
    char k[128];
    if (check_patch) check_dev("stage.patch", ms_sam_encoder_tokens(enc, -1), gold(g, "stage.patch", B * T * D), B * T * D);
    for (int i = 0; i < c->depth; i++) {
        snprintf(k, sizeof k, "%sstage.block.%d", pre, i);
        check_dev(k, ms_sam_encoder_tokens(enc, i), gold(g, k, B * T * D), B * T * D);
    }
    snprintf(k, sizeof k, "%semb", pre);
    check_dev(k, emb, gold(g, k, ne), ne);
    /* dx accumulates: start it at 1 and subtract after, to check += */
    float *hdx = malloc((size_t)nx * sizeof(float));
    for (int64_t i = 0; i < nx; i++) hdx[i] = 1.0f;
    float *dx = to_dev(hdx, nx);
    free(hdx);
    MS_CHECK_OK(ms_sam_encoder_backward(enc, G, dx));
    hdx = to_host(dx, nx);
    for (int64_t i = 0; i < nx; i++) hdx[i] -= 1.0f;
    check_encoder_grads(enc, g, pre, hdx, nx);
    free(hdx);
    ms_dev_free(&dev, x);
    ms_dev_free(&dev, G);
    ms_dev_free(&dev, emb);
    ms_dev_free(&dev, dx);
}

static void test_vit_test(void)
{
    ms_state_dict g;
    ms_sd_init(&g);
    ms_status st = ms_sd_load(golden_path("encoder_vit_test.pth"), &g);
    MS_CHECK_OK(st);
    if (st) return;
    const ms_sd_entry *es = ms_sd_find(&g, "meta.seed");
    uint64_t seed = es && es->t.dtype == MS_DTYPE_I64 ? (uint64_t)((int64_t *)es->t.data)[0] : 0;
    ms_sam_enc_config c;
    MS_CHECK_OK(ms_sam_enc_config_named("vit_test", &c));
    ms_params ps;
    ms_params_init(&ps);
    ms_sam_encoder enc;
    MS_CHECK_OK(ms_sam_encoder_init(&enc, &c, &ps, "image_encoder."));
    MS_CHECK_OK(ms_params_alloc(&ps, &dev));
    for (int i = 0; i < ps.n; i++) {
        float *h = malloc((size_t)ps.p[i].numel * sizeof(float));
        ms_counter_init(h, ps.p[i].name, ps.p[i].shape, ps.p[i].ndim, seed);
        MS_CHECK_OK(ms_dev_from_host(&dev, ms_params_data(&ps, i), h, (size_t)ps.p[i].numel * sizeof(float)));
        free(h);
    }
    MS_CHECK_OK(ms_params_alloc_grads(&ps));
    MS_CHECK_OK(ms_sam_encoder_reserve(&enc, &dev, 1, 1));
    printf("vit_test: %d tensors, %lld floats\n", ps.n, (long long)ps.numel);
    int64_t tot = 0;
    for (int i = 0; i < ps.n; i++) tot += ps.p[i].numel;
    MS_CHECK(tot == ms_sam_enc_numel(&c), "vit_test numel %lld vs ms_sam_enc_numel %lld", (long long)tot,
             (long long)ms_sam_enc_numel(&c));
    run_and_check(&enc, &g, "", 1, 1);

    /* Detection round trip: the state dict of this model gives back the vit_test config. */
    ms_state_dict sd;
    ms_sd_init(&sd);
    MS_CHECK_OK(ms_params_to_sd(&ps, &sd));
    ms_sam_enc_config d;
    MS_CHECK_OK(ms_sam_enc_config_from_sd(&sd, "image_encoder.", &d));
    MS_CHECK(d.embed_dim == 192 && d.depth == 4 && d.n_heads == 3 && d.head_dim == 64 && d.window == 14 &&
                 d.n_global == 2 && d.global_idx[0] == 1 && d.global_idx[1] == 3 && d.img_size == 256 &&
                 d.patch == 16 && d.out_chans == 256 && d.mlp_dim == 768 && d.rel_len_global == 31 &&
                 d.rel_len_window == 27,
             "vit_test detection: D %d depth %d heads %d window %d globals %d img %d", d.embed_dim, d.depth,
             d.n_heads, d.window, d.n_global, d.img_size);
    ms_sd_free(&sd);
    ms_sam_encoder_free(&enc);
    ms_params_free(&ps);
    ms_sd_free(&g);
}

/* Counts the stderr lines ms_params_load prints (one per bad key) by pointing fd 2 at a temporary file. */
static void test_bad_keys(const ms_state_dict *g, const ms_sam_enc_config *c)
{
    ms_state_dict bad;
    ms_sd_init(&bad);
    const char *miss = "image_encoder.blocks.1.attn.proj.bias", *shape = "image_encoder.neck.2.weight";
    for (int i = 0; i < g->n; i++) {
        const ms_sd_entry *e = &g->e[i];
        if (strncmp(e->name, "image_encoder.", 14) || !strcmp(e->name, miss)) continue;
        if (!strcmp(e->name, shape)) {
            int64_t sh[4] = {e->t.shape[0], e->t.shape[1], 1, 9};
            MS_CHECK_OK(ms_sd_add(&bad, e->name, MS_DTYPE_F32, sh, 4, e->t.data));
        } else
            MS_CHECK_OK(ms_sd_add(&bad, e->name, e->t.dtype, e->t.shape, e->t.ndim, e->t.data));
    }
    int64_t one = 1;
    float v = 1;
    MS_CHECK_OK(ms_sd_add(&bad, "image_encoder.blocks.7.norm1.weight", MS_DTYPE_F32, &one, 1, &v));
    ms_params ps;
    ms_params_init(&ps);
    ms_sam_encoder enc;
    MS_CHECK_OK(ms_sam_encoder_init(&enc, c, &ps, "image_encoder."));
    MS_CHECK_OK(ms_params_alloc(&ps, &dev));
    char tmpl[] = "/tmp/ms_enc_stderr_XXXXXX";
    int fd = mkstemp(tmpl), saved = dup(2);
    fflush(stderr);
    dup2(fd, 2);
    ms_status st = ms_params_load(&ps, &bad, "image_encoder.");
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    MS_CHECK(st != MS_OK, "loading a bad state dict succeeded");
    printf("bad keys -> %s\n", ms_errmsg());
    FILE *f = fdopen(fd, "r");
    rewind(f);
    char line[512];
    int n = 0, seen_miss = 0, seen_shape = 0, seen_unknown = 0;
    while (fgets(line, sizeof line, f)) {
        n++;
        printf("  stderr: %s", line);
        seen_miss |= strstr(line, miss) && strstr(line, "missing");
        seen_shape |= strstr(line, shape) && strstr(line, "shape");
        seen_unknown |= strstr(line, "blocks.7.norm1.weight") != NULL;
    }
    fclose(f);
    unlink(tmpl);
    MS_CHECK(n == 3 && seen_miss && seen_shape && seen_unknown, "expected 3 lines (missing, shape, unknown), got %d",
             n);
    int zero = 1;
    float *h = to_host(ps.data, ps.numel);
    for (int64_t i = 0; i < ps.numel; i++) zero &= h[i] == 0.0f;
    free(h);
    MS_CHECK(zero, "a failed load changed the parameters");
    ms_params_free(&ps);
    ms_sd_free(&bad);
}

static void test_odd(void)
{
    ms_state_dict g;
    ms_sd_init(&g);
    ms_status st = ms_sd_load(golden_path("encoder_odd.pth"), &g);
    MS_CHECK_OK(st);
    if (st) return;
    ms_sam_enc_config c;
    st = ms_sam_enc_config_from_sd(&g, "image_encoder.", &c);
    MS_CHECK_OK(st);
    if (st) { ms_sd_free(&g); return; }
    MS_CHECK(c.embed_dim == 48 && c.depth == 3 && c.n_heads == 2 && c.head_dim == 24 && c.window == 4 &&
                 c.n_global == 1 && c.global_idx[0] == 1 && c.img_size == 80 && c.patch == 8 && c.out_chans == 32 &&
                 c.rel_len_global == 15 && c.rel_len_window == 7 && c.mlp_dim == 192,
             "odd detection: D %d depth %d heads %d window %d globals %d img %d patch %d out %d rel %d/%d",
             c.embed_dim, c.depth, c.n_heads, c.window, c.n_global, c.img_size, c.patch, c.out_chans,
             c.rel_len_window, c.rel_len_global);
    ms_params ps;
    ms_params_init(&ps);
    ms_sam_encoder enc;
    MS_CHECK_OK(ms_sam_encoder_init(&enc, &c, &ps, "image_encoder."));
    MS_CHECK_OK(ms_params_alloc(&ps, &dev));
    MS_CHECK_OK(ms_params_load(&ps, &g, "image_encoder."));
    MS_CHECK_OK(ms_params_alloc_grads(&ps));
    MS_CHECK_OK(ms_sam_encoder_reserve(&enc, &dev, 2, 1));
    run_and_check(&enc, &g, "", 2, 0);
    enc.cfg.finetune_sam_block = 1;
    run_and_check(&enc, &g, "ft.", 2, 0);

    /* Frozen tensors get no gradient and cost nothing; the trainable ones still match. */
    ms_params_set_trainable(&ps, "", 0);
    ms_params_set_trainable(&ps, "image_encoder.blocks.2.", 1);
    MS_CHECK_OK(ms_params_alloc_grads(&ps));
    enc.cfg.finetune_sam_block = 0;
    {
        int64_t nx = 2 * 3 * 80 * 80, ne = 2 * 32 * 100;
        float *emb = to_dev(NULL, ne), *x = to_dev(gold(&g, "input", nx), nx), *G = to_dev(gold(&g, "G", ne), ne);
        MS_CHECK_OK(ms_sam_encoder_forward(&enc, x, 2, emb));
        MS_CHECK_OK(ms_sam_encoder_backward(&enc, G, NULL));
        for (int i = 0; i < ps.n; i++) {
            const float *gr = ms_params_grad(&ps, i);
            int want = !strncmp(ps.p[i].name, "image_encoder.blocks.2.", 23);
            MS_CHECK(want == (gr != NULL), "%s: trainable %d but gradient %p", ps.p[i].name, want, (void *)gr);
            char k[256];
            snprintf(k, sizeof k, "grad.%s", ps.p[i].name);
            if (gr) check_grad_dev(&g, k, gr, ps.p[i].numel);
        }
        ms_dev_free(&dev, emb);
        ms_dev_free(&dev, x);
        ms_dev_free(&dev, G);
    }
    test_bad_keys(&g, &c);
    ms_sam_encoder_free(&enc);
    ms_params_free(&ps);
    ms_sd_free(&g);
}

static void test_counts(void)
{
    static const struct { const char *name; int64_t n; } want[] = {
        {"vit_b", 89670912}, {"vit_l", 308278272}, {"vit_h", 637026048}};
    for (int i = 0; i < 3; i++) {
        ms_sam_enc_config c;
        MS_CHECK_OK(ms_sam_enc_config_named(want[i].name, &c));
        MS_CHECK(ms_sam_enc_numel(&c) == want[i].n, "%s: %lld params, the checkpoint has %lld", want[i].name,
                 (long long)ms_sam_enc_numel(&c), (long long)want[i].n);
        ms_params ps;
        ms_params_init(&ps);
        ms_sam_encoder enc;
        MS_CHECK_OK(ms_sam_encoder_init(&enc, &c, &ps, "image_encoder."));
        MS_CHECK(ps.n == 3 + 14 * c.depth + 6, "%s: %d keys", want[i].name, ps.n);
        ms_params_free(&ps);
    }
    ms_sam_enc_config c;
    MS_CHECK(ms_sam_enc_config_named("vit_x", &c) != MS_OK, "unknown model accepted");
}

int main(void)
{
    ms_test_seed(); /* the inputs are fixed by the golden files; printed for the harness' convention */
    test_counts();
    for (int k = 0; k < 2; k++) {
        if (k == 1 && !ms_cuda_available()) { printf("CUDA: not available, CPU only\n"); break; }
        MS_CHECK_OK(ms_device_init(&dev, k ? MS_DEV_CUDA : MS_DEV_CPU, 0));
        printf("== device %s\n", k ? "cuda" : "cpu");
        test_vit_test();
        test_odd();
        ms_device_free(&dev);
    }
    return ms_test_done();
}
