/* tests/finetune/test_peft_encoder.c — LoRA and adapters in the C image encoder against PyTorch (the reference
 * and golden file: tests/reference/peft_ref_encoder.py, float64).
 *
 * 1. A tiny encoder with padded windows (48×48, patch 8 → 6×6 grid, window 4: 2 pad rows/cols) and a global block,
 *    D 48, 3 heads, depth 3, batch 2; LoRA rank 4 on blocks {0,1}, adapters on {1,2}; every weight from
 *    counter_init (LoRA B non-zero). Official SAM's block and finetune-SAM's (pad tokens = norm1.bias, which also
 *    get the LoRA delta): block outputs, emb, and for L = Σ emb·G the gradients of every PEFT tensor, of
 *    norm1/qkv/proj/norm2, pos_embed, patch bias and of the input.
 * 2. Trainable mask: base frozen, PEFT trainable → no base gradients, PEFT gradients bit-identical to the
 *    all-trainable run.
 * 3. ms_sam_encoder_peft_init_random / ms_sam_encoder_init_random: LoRA B exactly 0, A and adapters within
 *    U(±1/√fan_in) and not constant; with B = 0 a LoRA-on-every-block encoder gives exactly the base output.
 *    A base state dict (no PEFT keys) loads into a PEFT model (optional tensors). The token-subset path refuses PEFT.
 * 1–3 run on the CPU, then on CUDA when this build and machine have a GPU.
 *
 * Tolerance (fp32 against float64): max|c − r| ≤ 1e-4 · max|r| per tensor (TOL), as tests/pretrain/test_sam_encoder.c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/path.h"
#include "harness.h"
#include "ops.h"
#include "pretrain/params.h"
#include "pretrain/sam_encoder.h"
#include "reference/counter_init.h"

#define TOL 1e-4
#define NB 2

static ms_device dev;

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

static char *golden_path(const char *file)
{
    const char *src = getenv("MS_SOURCE_DIR");
    static char buf[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_fmt(buf, "%s/tests/finetune/golden/%s", src ? src : "../../..", file));
    return buf;
}

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

/* Worst relative error per tensor group, for the report. */
enum { GR_OUT, GR_LORA, GR_ADAPTER, GR_BASE, GR_INPUT, GR_N };
static const char *gr_name[GR_N] = {"outputs", "lora grads", "adapter grads", "base grads", "input grad"};
static double gr_max[GR_N];

static int group_of(const char *name)
{
    if (strstr(name, "linear_")) return GR_LORA;
    if (strstr(name, "Adapter")) return GR_ADAPTER;
    if (strstr(name, "grad.input")) return GR_INPUT;
    if (strstr(name, "grad.")) return GR_BASE;
    return GR_OUT;
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
    int gi = group_of(what);
    if (rel > gr_max[gi]) gr_max[gi] = rel;
    if (getenv("MS_VERBOSE")) printf("  %-60s rel %.2e nmse %.2e\n", what, rel, k.nmse);
}

static void check_dev(const char *what, const float *dptr, const float *r, int64_t n)
{
    if (!dptr) { MS_CHECK(0, "%s: not kept", what); return; }
    float *h = to_host(dptr, n);
    check_full(what, h, r, n);
    free(h);
}

static ms_sam_enc_config tiny_config(void)
{
    ms_sam_enc_config c;
    memset(&c, 0, sizeof c);
    c.img_size = 48;
    c.patch = 8;
    c.embed_dim = 48;
    c.depth = 3;
    c.n_heads = 3;
    c.window = 4;
    c.n_global = 1;
    c.global_idx[0] = 1;
    c.out_chans = 32;
    MS_CHECK_OK(ms_sam_enc_config_check(&c));
    return c;
}

static void counter_fill(ms_params *ps, uint64_t seed)
{
    for (int i = 0; i < ps->n; i++) {
        float *h = malloc((size_t)ps->p[i].numel * sizeof(float));
        ms_counter_init(h, ps->p[i].name, ps->p[i].shape, ps->p[i].ndim, seed);
        MS_CHECK_OK(ms_dev_from_host(&dev, ms_params_data(ps, i), h, (size_t)ps->p[i].numel * sizeof(float)));
        free(h);
    }
}

static int is_peft(const char *name) { return strstr(name, "linear_") || strstr(name, "Adapter"); }

/* Forward + backward on the golden input; checks outputs and every gradient the golden file has (prefix pre).
 * Returns the host copies of the PEFT gradients (concatenated in parameter order) when keep != NULL. */
static void run_and_check(ms_sam_encoder *enc, const ms_state_dict *g, const char *pre, float **keep)
{
    const ms_sam_enc_config *c = &enc->cfg;
    ms_params *ps = enc->ps;
    int64_t S = c->img_size, gs = ms_sam_enc_grid(c), T = gs * gs, D = c->embed_dim;
    int64_t nx = (int64_t)NB * 3 * S * S, ne = (int64_t)NB * c->out_chans * T;
    const float *hx = gold(g, "input", nx), *hG = gold(g, "G", ne);
    if (!hx || !hG) return;
    float *x = to_dev(hx, nx), *G = to_dev(hG, ne), *emb = to_dev(NULL, ne);
    MS_CHECK_OK(ms_params_zero_grads(ps));
    MS_CHECK_OK(ms_sam_encoder_forward(enc, x, NB, emb));
    char k[256];
    for (int i = 0; i < c->depth; i++) {
        snprintf(k, sizeof k, "%sstage.block.%d", pre, i);
        check_dev(k, ms_sam_encoder_tokens(enc, i), gold(g, k, NB * T * D), NB * T * D);
    }
    snprintf(k, sizeof k, "%semb", pre);
    check_dev(k, emb, gold(g, k, ne), ne);
    /* dx accumulates: start it at 1 and subtract after */
    float *hdx = malloc((size_t)nx * sizeof(float));
    for (int64_t i = 0; i < nx; i++) hdx[i] = 1.0f;
    float *dx = to_dev(hdx, nx);
    free(hdx);
    MS_CHECK_OK(ms_sam_encoder_backward(enc, G, dx));
    hdx = to_host(dx, nx);
    for (int64_t i = 0; i < nx; i++) hdx[i] -= 1.0f;
    snprintf(k, sizeof k, "%sgrad.input", pre);
    check_full(k, hdx, gold(g, k, nx), nx);
    free(hdx);
    int n_checked = 0, n_peft = 0;
    int64_t off = 0, tot = 0;
    for (int i = 0; i < ps->n; i++) if (is_peft(ps->p[i].name)) tot += ps->p[i].numel;
    if (keep) *keep = malloc((size_t)tot * sizeof(float));
    for (int i = 0; i < ps->n; i++) {
        snprintf(k, sizeof k, "%sgrad.%s", pre, ps->p[i].name);
        const float *gr = ms_params_grad(ps, i);
        int peft = is_peft(ps->p[i].name);
        n_peft += peft;
        if (!ps->p[i].trainable) continue; /* frozen: no gradient (checked by the caller) */
        if (!ms_sd_find(g, k)) {
            MS_CHECK(!peft, "%s: PEFT gradient missing from the golden file", k);
            continue;
        }
        MS_CHECK(gr != NULL, "%s: no gradient", ps->p[i].name);
        if (!gr) continue;
        float *h = to_host(gr, ps->p[i].numel);
        check_full(k, h, gold(g, k, ps->p[i].numel), ps->p[i].numel);
        if (keep && peft) { memcpy(*keep + off, h, (size_t)ps->p[i].numel * sizeof(float)); off += ps->p[i].numel; }
        free(h);
        n_checked++;
    }
    MS_CHECK(n_peft == 2 * 4 + 2 * 8, "%d PEFT tensors, expected 24", n_peft);
    printf("  %s: %d gradients checked\n", *pre ? "finetune-SAM block" : "official block", n_checked);
    ms_dev_free(&dev, x);
    ms_dev_free(&dev, G);
    ms_dev_free(&dev, emb);
    ms_dev_free(&dev, dx);
}

static void test_golden(void)
{
    ms_state_dict g;
    ms_sd_init(&g);
    ms_status st = ms_sd_load(golden_path("peft_encoder.pth"), &g);
    MS_CHECK_OK(st);
    if (st) return;
    const ms_sd_entry *es = ms_sd_find(&g, "meta.seed");
    uint64_t seed = es && es->t.dtype == MS_DTYPE_I64 ? (uint64_t)((int64_t *)es->t.data)[0] : 0;
    ms_sam_enc_config c = tiny_config();
    ms_params ps;
    ms_params_init(&ps);
    ms_sam_encoder enc;
    MS_CHECK_OK(ms_sam_encoder_init(&enc, &c, &ps, "image_encoder."));
    int nbase = ps.n;
    ms_sam_enc_peft pf = {.lora_rank = 4, .lora_blocks = 0x3 | ((uint64_t)1 << 40), /* bit 40 ≥ depth: ignored */
                          .adapter_blocks = 0x6, .adapter_scale = 0.5f};
    MS_CHECK_OK(ms_sam_encoder_add_peft(&enc, &pf));
    MS_CHECK(ps.n == nbase + 24 && enc.peft.lora_blocks == 0x3, "add_peft: %d tensors, blocks %llx", ps.n - nbase,
             (unsigned long long)enc.peft.lora_blocks);
    MS_CHECK(ms_sam_encoder_add_peft(&enc, &pf) != MS_OK, "add_peft twice accepted");
    MS_CHECK(enc.blk[2].lora_aq == -1 && enc.blk[0].sa_w1 == -1 && enc.blk[5].ma_b2 == -1 && enc.blk[0].lora_bv >= 0,
             "PEFT indices of blocks without PEFT are not -1");
    {
        int ia = ms_params_find(&ps, "image_encoder.blocks.1.attn.qkv.linear_a_v.weight");
        int ib = ms_params_find(&ps, "image_encoder.blocks.2.MLP_Adapter.D_fc2.bias");
        MS_CHECK(ia == enc.blk[1].lora_av && ia >= 0 && ps.p[ia].shape[0] == 4 && ps.p[ia].shape[1] == 48 &&
                     ps.p[ia].optional && !ps.p[ia].no_decay,
                 "linear_a_v: index %d shape/optional wrong", ia);
        MS_CHECK(ib == enc.blk[2].ma_b2 && ib >= 0 && ps.p[ib].ndim == 1 && ps.p[ib].shape[0] == 48 &&
                     ps.p[ib].optional && ps.p[ib].no_decay,
                 "MLP_Adapter.D_fc2.bias: index %d shape/flags wrong", ib);
    }
    MS_CHECK_OK(ms_params_alloc(&ps, &dev));
    counter_fill(&ps, seed);
    MS_CHECK_OK(ms_params_alloc_grads(&ps));
    MS_CHECK_OK(ms_sam_encoder_reserve(&enc, &dev, NB, 1));
    float *g_all = NULL;
    run_and_check(&enc, &g, "", &g_all);
    enc.cfg.finetune_sam_block = 1;
    run_and_check(&enc, &g, "ft.", NULL);
    enc.cfg.finetune_sam_block = 0;

    /* Frozen base, trainable PEFT: the same PEFT gradients (bit for bit), no base gradients. */
    ms_params_set_trainable(&ps, "image_encoder.", 0);
    for (int i = 0; i < ps.n; i++) if (is_peft(ps.p[i].name)) ps.p[i].trainable = 1;
    MS_CHECK_OK(ms_params_alloc_grads(&ps));
    float *g_frozen = NULL;
    run_and_check(&enc, &g, "", &g_frozen);
    int64_t tot = 0, nbad = 0;
    for (int i = 0; i < ps.n; i++) {
        MS_CHECK(is_peft(ps.p[i].name) == (ms_params_grad(&ps, i) != NULL), "%s: trainable mask not respected",
                 ps.p[i].name);
        if (is_peft(ps.p[i].name)) tot += ps.p[i].numel;
    }
    for (int64_t i = 0; g_all && g_frozen && i < tot; i++) nbad += g_all[i] != g_frozen[i];
    MS_CHECK(g_all && g_frozen && nbad == 0, "frozen base: %lld of %lld PEFT gradient values differ",
             (long long)nbad, (long long)tot);
    printf("  frozen base: %lld PEFT gradient values identical to the all-trainable run\n", (long long)(tot - nbad));
    free(g_all);
    free(g_frozen);

    /* Inference mode (one shared activation set, PEFT buffers included): the same embeddings. */
    MS_CHECK_OK(ms_sam_encoder_reserve(&enc, &dev, NB, 0));
    for (int ft = 0; ft < 2; ft++) {
        int64_t nx = (int64_t)NB * 3 * 48 * 48, ne = (int64_t)NB * 32 * 36;
        float *x = to_dev(gold(&g, "input", nx), nx), *emb = to_dev(NULL, ne);
        enc.cfg.finetune_sam_block = ft;
        MS_CHECK_OK(ms_sam_encoder_forward(&enc, x, NB, emb));
        check_dev(ft ? "ft.emb (inference mode)" : "emb (inference mode)", emb, gold(&g, ft ? "ft.emb" : "emb", ne),
                  ne);
        ms_dev_free(&dev, x);
        ms_dev_free(&dev, emb);
    }
    enc.cfg.finetune_sam_block = 0;

    /* The token-subset (MAE) path refuses an encoder with PEFT. */
    {
        int32_t keep[36], koff[5] = {0, 9, 18, 27, 36}, poff[5] = {0};
        for (int i = 0; i < 36; i++) keep[i] = i;
        ms_sam_enc_subset s = {36, 36, 1, keep, koff, keep, poff};
        const float *tok = NULL;
        float *x = to_dev(gold(&g, "input", NB * 3 * 48 * 48), NB * 3 * 48 * 48);
        st = ms_sam_encoder_forward_subset(&enc, x, 1, &s, &tok);
        MS_CHECK(st == MS_EUNSUPPORTED, "subset forward with PEFT: status %d (%s)", st, ms_errmsg());
        ms_dev_free(&dev, x);
    }
    ms_sam_encoder_free(&enc);
    ms_params_free(&ps);
    ms_sd_free(&g);
}

static void test_init(uint64_t seed)
{
    ms_sam_enc_config c = tiny_config();
    /* base encoder and a LoRA-on-every-block + adapters twin with the same base weights */
    ms_params pb, pl;
    ms_params_init(&pb);
    ms_params_init(&pl);
    ms_sam_encoder eb, el;
    MS_CHECK_OK(ms_sam_encoder_init(&eb, &c, &pb, "image_encoder."));
    MS_CHECK_OK(ms_sam_encoder_init(&el, &c, &pl, "image_encoder."));
    ms_sam_enc_peft pf = {.lora_rank = 4, .lora_blocks = ~(uint64_t)0, .adapter_blocks = 0x1, .adapter_scale = 0.5f};
    MS_CHECK_OK(ms_sam_encoder_add_peft(&el, &pf));
    MS_CHECK_OK(ms_params_alloc(&pb, &dev));
    MS_CHECK_OK(ms_params_alloc(&pl, &dev));
    counter_fill(&pb, seed);
    counter_fill(&pl, seed);
    MS_CHECK_OK(ms_sam_encoder_peft_init_random(&el, seed));
    float bD = 1.0f / sqrtf(48.0f), bA = 1.0f / sqrtf(12.0f);
    for (int i = 0; i < pl.n; i++) {
        const ms_param *p = &pl.p[i];
        if (!is_peft(p->name)) continue;
        float *h = to_host(ms_params_data(&pl, i), p->numel);
        int is_b = strstr(p->name, "linear_b_") != NULL;
        float bound = strstr(p->name, "D_fc2") ? bA : bD;
        float mn = h[0], mx = h[0];
        for (int64_t j = 0; j < p->numel; j++) { if (h[j] < mn) mn = h[j]; if (h[j] > mx) mx = h[j]; }
        if (is_b)
            MS_CHECK(mn == 0.0f && mx == 0.0f, "%s: LoRA B not zero (%g..%g)", p->name, mn, mx);
        else
            MS_CHECK(mn >= -bound && mx <= bound && mx > mn &&
                         (p->numel < 100 || (mx > 0.5f * bound && mn < -0.5f * bound)), /* ≥ 100: P(fail) < 1e-12 */
                     "%s: values %g..%g, bound %g", p->name, mn, mx, bound);
        free(h);
    }
    ms_params_free(&pl);

    /* LoRA alone (every block) with B = 0 is exactly the base model */

    ms_params_init(&pl);
    MS_CHECK_OK(ms_sam_encoder_init(&el, &c, &pl, "image_encoder."));
    pf.adapter_blocks = 0;
    MS_CHECK_OK(ms_sam_encoder_add_peft(&el, &pf));
    MS_CHECK_OK(ms_params_alloc(&pl, &dev));
    /* a base state dict (no PEFT keys) loads into the PEFT model: PEFT tensors are optional */
    ms_state_dict sd;
    ms_sd_init(&sd);
    MS_CHECK_OK(ms_params_to_sd(&pb, &sd));
    MS_CHECK_OK(ms_params_load(&pl, &sd, "image_encoder."));
    ms_sd_free(&sd);
    MS_CHECK_OK(ms_sam_encoder_peft_init_random(&el, seed + 1));
    MS_CHECK_OK(ms_sam_encoder_reserve(&eb, &dev, NB, 0));
    MS_CHECK_OK(ms_sam_encoder_reserve(&el, &dev, NB, 1));
    int64_t nx = (int64_t)NB * 3 * 48 * 48, ne = (int64_t)NB * 32 * 36;
    float *hx = malloc((size_t)nx * sizeof(float));
    ms_rng r;
    ms_rng_init(&r, seed, 1);
    ms_fill_uniform(hx, nx, &r, -2, 2);
    float *x = to_dev(hx, nx), *e1 = to_dev(NULL, ne), *e2 = to_dev(NULL, ne);
    for (int ft = 0; ft < 2; ft++) { /* finetune-SAM pads: LoRA on norm1.bias rows, still 0 with B = 0 */
        eb.cfg.finetune_sam_block = el.cfg.finetune_sam_block = ft;
        MS_CHECK_OK(ms_sam_encoder_forward(&eb, x, NB, e1));
        MS_CHECK_OK(ms_sam_encoder_forward(&el, x, NB, e2));
        float *h1 = to_host(e1, ne), *h2 = to_host(e2, ne);
        int64_t nd = 0;
        for (int64_t i = 0; i < ne; i++) nd += h1[i] != h2[i];
        MS_CHECK(nd == 0, "LoRA with B = 0 (ft %d): %lld of %lld outputs differ from the base", ft, (long long)nd,
                 (long long)ne);
        free(h1);
        free(h2);
    }
    /* ms_sam_encoder_init_random also initialises the PEFT tensors (B = 0) */
    MS_CHECK_OK(ms_sam_encoder_init_random(&el, seed));
    for (int i = 0; i < c.depth; i++) {
        float *h = to_host(ms_params_data(&pl, el.blk[i].lora_bv), 48 * 4);
        float *a = to_host(ms_params_data(&pl, el.blk[i].lora_aq), 48 * 4);
        int z = 1, nz = 0;
        for (int j = 0; j < 48 * 4; j++) { z &= h[j] == 0.0f; nz += a[j] != 0.0f; }
        MS_CHECK(z && nz > 100, "init_random: block %d LoRA B not zero or A zero", i);
        free(h);
        free(a);
    }
    free(hx);
    ms_dev_free(&dev, x);
    ms_dev_free(&dev, e1);
    ms_dev_free(&dev, e2);
    ms_sam_encoder_free(&eb);
    ms_sam_encoder_free(&el);
    ms_params_free(&pb);
    ms_params_free(&pl);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    clock_t t0 = clock();
    for (int k = 0; k < 2; k++) {
        if (k == 1 && !ms_cuda_available()) { printf("CUDA: not available, CPU only\n"); break; }
        MS_CHECK_OK(ms_device_init(&dev, k ? MS_DEV_CUDA : MS_DEV_CPU, 0));
        printf("== device %s\n", k ? "cuda" : "cpu");
        memset(gr_max, 0, sizeof gr_max);
        test_golden();
        for (int i = 0; i < GR_N; i++) printf("  max rel error, %-14s %.2e\n", gr_name[i], gr_max[i]);
        test_init(seed);
        ms_device_free(&dev);
    }
    printf("cpu time %.2f s\n", (double)(clock() - t0) / CLOCKS_PER_SEC);
    return ms_test_done();
}
