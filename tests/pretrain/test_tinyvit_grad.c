/* tests/pretrain/test_tinyvit_grad.c — TinyViT's backward and its BatchNorm modes (pretrain/tinyvit.h) against
 * MobileSAM's own PyTorch code: tests/pretrain/golden/tinyvit_test_grad.pth from tests/pretrain/gen_tinyvit_golden.py
 * (float64 reference; the weights and input are tinyvit_test.pth's: counter_init with the generator's BatchNorm /
 * bias-table rules, num_batches_tracked 3; vit_t_test, batch 2 at 256).
 *
 * Cases (G, G3: 2u − 1 from the counter RNG under "golden.G" / "golden.G3"):
 *   train   BatchNorm in training mode, L = Σ emb·G: every parameter's gradient and dx; the running statistics
 *           after the forward (momentum 0.1, unbiased variance) and num_batches_tracked 3 → 4.
 *   train3  training mode, the neck skipped (emb NULL: MAE's encoder output), L = Σ tokens3·G3 from dtok.
 *   bneval  BatchNorm on its running statistics (never updated), L = Σ emb·G.
 *   In train and bneval the embedding with backward reserved equals the forward-only one in the same mode (bit for
 *   bit on the CPU).
 *   peft_*  LoRA and adapters (both column slicings) with the base frozen (no gradient buffers: NULL skips; without
 *           dx the backward stops at layer 1): see run_peft.
 *   init    ms_tinyvit_init_random (seed: the harness's, printed) against upstream's constructor: see test_init.
 * Tolerance (fp32 against float64): max|c − r| ≤ TOL_G·max|r| + ATOL_G·(the case's largest gradient) per tensor
 * (in full up to 256 values, else 64 samples) and Σ, Σx² as test_tinyvit (tinyvit_golden.h); the floor is for
 * gradients a training-mode BatchNorm makes exactly 0 (the bias of the Linear just before a merging: a constant per
 * channel, removed by the batch mean), which fp32 leaves at rounding level. Tensors without an upstream gradient
 * (the classifier head) stay 0. The golden file fixes weights, input and G.
 * Everything but init runs on the CPU, then again on CUDA when this build and machine have a GPU (same tolerances;
 * not yet run on one).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/path.h"
#include "base/rng.h"
#include "harness.h"
#include "ops.h"
#include "pretrain/params.h"
#include "pretrain/tinyvit.h"
#include "reference/counter_init.h"

#include "tinyvit_golden.h"

#define TOL_G 2e-3
#define ATOL_G 1e-6 /* × the case's largest gradient: the floor for gradients that are 0 exactly */
#define PEFT_SCALE 0.25f /* the generator's PEFT tensors: PEFT_SCALE·(2u − 1) under their names */

/* One model on one device, its inputs, and host snapshots of what the checks read. */
typedef struct gt {
    ms_tinyvit_config c;
    ms_params ps;
    ms_tinyvit tv;
    ms_device *dev;
    uint64_t seed;
    int B, nbase;                     /* nbase: tensors before the PEFT ones */
    int64_t nx, ne, nt;
    float *x, *dx, *emb, *G, *G3;     /* device */
    float *hdata, *hgrad, *hdx, *hemb; /* host */
} gt;

static void counter_pm1(float *dst, const char *name, int64_t n, uint64_t seed, float scale)
{
    uint64_t stream = ms_rng_stream(seed, ms_fnv1a64(name), 0);
    for (int64_t i = 0; i < n; i++) dst[i] = scale * (2.0f * ms_rand_uniform(stream, (uint64_t)i) - 1.0f);
}

static float *dev_input(ms_device *dev, const char *name, int64_t n, uint64_t seed, float scale)
{
    float *h = malloc((size_t)n * sizeof *h), *d = NULL;
    counter_pm1(h, name, n, seed, scale);
    MS_CHECK_OK(ms_dev_alloc(dev, (size_t)n * sizeof(float), (void **)&d));
    MS_CHECK_OK(ms_dev_from_host(dev, d, h, (size_t)n * sizeof(float)));
    free(h);
    return d;
}

/* vit_t_test on dev, with PEFT when pf: then only the PEFT tensors train, else every parameter. */
static void gt_open(gt *t, ms_device *dev, uint64_t seed, const ms_tinyvit_peft *pf)
{
    memset(t, 0, sizeof *t);
    t->dev = dev;
    t->seed = seed;
    MS_CHECK_OK(ms_tinyvit_config_named("vit_t_test", &t->c));
    ms_params_init(&t->ps);
    MS_CHECK_OK(ms_tinyvit_init(&t->tv, &t->c, &t->ps, PREFIX));
    t->nbase = t->ps.n;
    if (pf) {
        MS_CHECK_OK(ms_tinyvit_add_peft(&t->tv, pf));
        MS_CHECK(ms_tinyvit_add_peft(&t->tv, pf) == MS_EBADSTATE, "PEFT added twice");
    }
    MS_CHECK_OK(ms_params_alloc(&t->ps, dev));
    ms_params_set_trainable(&t->ps, "", !pf);
    for (int i = t->nbase; i < t->ps.n; i++) t->ps.p[i].trainable = 1;
    MS_CHECK_OK(ms_params_alloc_grads(&t->ps));
    t->B = 2;
    int64_t S = t->c.img_size, g4 = ms_tinyvit_grid(&t->c, 4);
    t->nx = (int64_t)t->B * 3 * S * S;
    t->ne = (int64_t)t->B * t->c.out_chans * g4 * g4;
    t->nt = (int64_t)t->B * g4 * g4 * t->c.dims[3];
    t->x = dev_input(dev, "golden.input", t->nx, seed, 2.0f);
    t->G = dev_input(dev, "golden.G", t->ne, seed, 1.0f);
    t->G3 = dev_input(dev, "golden.G3", t->nt, seed, 1.0f);
    MS_CHECK_OK(ms_dev_alloc(dev, (size_t)t->nx * sizeof(float), (void **)&t->dx));
    MS_CHECK_OK(ms_dev_alloc(dev, (size_t)t->ne * sizeof(float), (void **)&t->emb));
    t->hdata = malloc((size_t)t->ps.numel * sizeof(float));
    t->hgrad = malloc((size_t)(t->ps.numel_trainable ? t->ps.numel_trainable : 1) * sizeof(float));
    t->hdx = malloc((size_t)t->nx * sizeof(float));
    t->hemb = malloc((size_t)t->ne * sizeof(float));
}

static void gt_close(gt *t)
{
    float *d[] = {t->x, t->dx, t->emb, t->G, t->G3};
    for (int i = 0; i < 5; i++) ms_dev_free(t->dev, d[i]);
    free(t->hdata); free(t->hgrad); free(t->hdx); free(t->hemb);
    ms_tinyvit_free(&t->tv);
    ms_params_free(&t->ps);
}

/* counter weights (the generator's rules), PEFT tensors PEFT_SCALE·(2u − 1), num_batches_tracked 3 */
static void set_weights(gt *t)
{
    ms_params *ps = &t->ps;
    for (int i = 0; i < ps->n; i++) {
        const ms_param *p = &ps->p[i];
        if (i < t->nbase) tv_counter(t->hdata + p->off, p->name, p->shape, p->ndim, t->seed);
        else counter_pm1(t->hdata + p->off, p->name, p->numel, t->seed, PEFT_SCALE);
    }
    MS_CHECK_OK(ms_dev_from_host(t->dev, ps->data, t->hdata, (size_t)ps->numel * sizeof(float)));
    t->tv.bn_batches = 3;
}

/* Parameters, gradients, dx and the embedding to the host. */
static void snapshot(gt *t)
{
    ms_params *ps = &t->ps;
    MS_CHECK_OK(ms_dev_to_host(t->dev, t->hdata, ps->data, (size_t)ps->numel * sizeof(float)));
    if (ps->grad)
        MS_CHECK_OK(ms_dev_to_host(t->dev, t->hgrad, ps->grad, (size_t)ps->numel_trainable * sizeof(float)));
    MS_CHECK_OK(ms_dev_to_host(t->dev, t->hdx, t->dx, (size_t)t->nx * sizeof(float)));
    MS_CHECK_OK(ms_dev_to_host(t->dev, t->hemb, t->emb, (size_t)t->ne * sizeof(float)));
}

static const float *host_grad(const gt *t, int i)
{
    return ms_params_grad(&t->ps, i) ? t->hgrad + t->ps.p[i].goff : NULL;
}

/* Every parameter gradient against "<cas>.grad.<name>"; those upstream leaves without one must be 0; frozen
 * tensors have no gradient buffer. */
static void check_grads(gt *t, const ms_state_dict *g, const char *cas)
{
    ms_params *ps = &t->ps;
    double worst = 0, gmax = 0;
    const char *wname = "";
    int n = 0;
    size_t lc = strlen(cas);
    for (int i = 0; i < g->n; i++) { /* the case's largest reference gradient sets the absolute floor */
        const ms_sd_entry *e = &g->e[i];
        if (strncmp(e->name, cas, lc) || strncmp(e->name + lc, ".grad.", 6) || e->t.dtype != MS_DTYPE_F32) continue;
        for (int64_t j = 0; j < ms_tensor_numel(&e->t); j++) gmax = fmax(gmax, fabs(((const float *)e->t.data)[j]));
    }
    double atol = ATOL_G * gmax;
    for (int i = 0; i < ps->n; i++) {
        const ms_param *p = &ps->p[i];
        char key[MS_PARAM_NAME_MAX + 32], k2[MS_PARAM_NAME_MAX + 40];
        snprintf(key, sizeof key, "%s.grad.%s", cas, p->name);
        snprintf(k2, sizeof k2, "%s.val", key);
        int has = ms_sd_find(g, key) || ms_sd_find(g, k2);
        const float *gr = host_grad(t, i);
        if (p->buffer || !p->trainable) {
            MS_CHECK(!gr, "%s: %s with a gradient buffer", p->name, p->buffer ? "a buffer" : "frozen");
            MS_CHECK(!has || !p->buffer, "%s: a buffer with an upstream gradient", p->name);
            continue;
        }
        if (!gr) { MS_CHECK(0, "%s: trainable without gradient", p->name); continue; }
        if (!has) {
            double s = 0;
            for (int64_t j = 0; j < p->numel; j++) s += fabs(gr[j]);
            MS_CHECK(s == 0, "%s: no upstream gradient, but Σ|g| = %g here", p->name, s);
            continue;
        }
        double e = check_stage_tol(g, key, gr, p->numel, TOL_G, atol, 0);
        if (e > worst) { worst = e; wname = p->name; }
        n++;
    }
    printf("%-9s %3d parameter gradients, worst max err %.3g of max|g| + floor/tol (%s); floor %.3g (%g of %.3g)\n",
           cas, n, worst, wname, atol, ATOL_G, gmax);
}

static void check_dx(gt *t, const ms_state_dict *g, const char *cas)
{
    char key[32];
    snprintf(key, sizeof key, "%s.dx", cas);
    printf("%-9s dx max err %.3g of max|dx|\n", cas, check_stage_tol(g, key, t->hdx, t->nx, TOL_G, 0, 0));
}

/* Running statistics: updated in training mode as torch does, untouched on the running statistics. */
static void check_running(gt *t, const ms_state_dict *g, const char *cas, int bn_train)
{
    ms_params *ps = &t->ps;
    double worst = 0;
    int n = 0;
    for (int i = 0; i < ps->n; i++) {
        const ms_param *p = &ps->p[i];
        if (!p->buffer) continue;
        char key[MS_PARAM_NAME_MAX + 8];
        snprintf(key, sizeof key, "run.%s", p->name);
        const ms_sd_entry *e = ms_sd_find(g, key);
        float *ref = malloc((size_t)p->numel * sizeof *ref);
        if (bn_train && e && e->t.dtype == MS_DTYPE_F32 && ms_tensor_numel(&e->t) == p->numel)
            memcpy(ref, e->t.data, (size_t)p->numel * sizeof *ref);
        else if (bn_train) { MS_CHECK(0, "%s: no golden running statistics", key); free(ref); continue; }
        else tv_counter(ref, p->name, p->shape, p->ndim, t->seed);
        const float *v = t->hdata + p->off;
        double mx = 0, err = 0;
        for (int64_t j = 0; j < p->numel; j++) {
            mx = fmax(mx, fabs(ref[j]));
            err = fmax(err, fabs((double)v[j] - ref[j]));
        }
        MS_CHECK(bn_train ? err <= TOL * mx : err == 0, "%s: running statistics off by %.3g (max %.3g)", p->name,
                 err, mx);
        if (mx > 0 && err / mx > worst) worst = err / mx;
        free(ref);
        n++;
    }
    printf("%-9s %d running statistics %s, worst err %.3g of max\n", cas, n, bn_train ? "updated" : "unchanged",
           worst);
}

static void run_case(gt *t, const ms_state_dict *g, const char *cas, int bn_train, int neck)
{
    ms_tinyvit *tv = &t->tv;
    set_weights(t);
    tv->bn_train = bn_train;
    MS_CHECK_OK(ms_params_zero_grads(&t->ps));
    MS_CHECK_OK(ms_dev_zero(t->dev, t->dx, (size_t)t->nx * sizeof(float)));
    MS_CHECK_OK(ms_tinyvit_forward(tv, t->x, t->B, neck ? t->emb : NULL));
    MS_CHECK(tv->neck_ran == neck, "%s: neck_ran %d", cas, tv->neck_ran);
    MS_CHECK(tv->bn_batches == 3 + bn_train, "%s: num_batches_tracked %lld", cas, (long long)tv->bn_batches);
    MS_CHECK(ms_tinyvit_backward(tv, neck ? NULL : t->G, neck ? t->G3 : NULL, NULL) == MS_EINVAL,
             "%s: backward from the wrong end accepted", cas);
    MS_CHECK_OK(ms_tinyvit_backward(tv, neck ? t->G : NULL, neck ? NULL : t->G3, t->dx));
    snapshot(t);
    check_grads(t, g, cas);
    check_dx(t, g, cas);
    check_running(t, g, cas, bn_train);
}

/* The embedding with backward reserved against the forward-only one: bit for bit on the CPU (same arithmetic in
 * other buffers); on CUDA library GEMMs may pick other kernels for other addresses, so within 1e-6. */
static void check_same_emb(const gt *t, const float *emb0, const char *cas)
{
    if (t->dev->kind == MS_DEV_CPU) {
        MS_CHECK(!memcmp(emb0, t->hemb, (size_t)t->ne * sizeof(float)),
                 "%s: the embedding with backward reserved differs from the forward-only one", cas);
        return;
    }
    double mx = 0, err = 0;
    for (int64_t i = 0; i < t->ne; i++) {
        mx = fmax(mx, fabs(emb0[i]));
        err = fmax(err, fabs((double)t->hemb[i] - emb0[i]));
    }
    MS_CHECK(err <= 1e-6 * mx, "%s: forward-only embedding differs by %.3g (max %.3g)", cas, err, mx);
}

static void run_base(ms_device *dev, const ms_state_dict *g, uint64_t seed)
{
    gt t;
    gt_open(&t, dev, seed, NULL);
    /* forward only, in both BatchNorm modes: the embeddings the backward's forward must reproduce */
    float *emb0[2];
    MS_CHECK_OK(ms_tinyvit_reserve(&t.tv, t.B, 0));
    MS_CHECK(ms_tinyvit_backward(&t.tv, t.G, NULL, NULL) == MS_EBADSTATE, "backward without its reserve accepted");
    for (int m = 0; m < 2; m++) {
        emb0[m] = malloc((size_t)t.ne * sizeof(float));
        set_weights(&t);
        t.tv.bn_train = m;
        MS_CHECK_OK(ms_tinyvit_forward(&t.tv, t.x, t.B, t.emb));
        MS_CHECK(t.tv.bn_batches == 3 + m, "forward only, bn_train %d: num_batches_tracked %lld", m,
                 (long long)t.tv.bn_batches);
        MS_CHECK_OK(ms_dev_to_host(dev, emb0[m], t.emb, (size_t)t.ne * sizeof(float)));
    }
    MS_CHECK_OK(ms_tinyvit_reserve(&t.tv, t.B, 1));
    run_case(&t, g, "train", 1, 1);
    check_same_emb(&t, emb0[1], "train");
    run_case(&t, g, "train3", 1, 0);
    run_case(&t, g, "bneval", 0, 1);
    check_same_emb(&t, emb0[0], "bneval");
    free(emb0[0]);
    free(emb0[1]);
    gt_close(&t);
}

/* PEFT (ms_tinyvit_add_peft) on the running statistics, L = Σ emb·G: the embedding, the PEFT tensors' gradients
 * (the only trainable ones) and dx against the generator's hooks on upstream's blocks; every PEFT tensor
 * PEFT_SCALE·(2u − 1) under its name (LoRA B nonzero). Then ms_tinyvit_peft_init_random: LoRA B = 0 (the model
 * starts as the base), A and the adapters U(±1/√in_features). */
static void run_peft(ms_device *dev, const ms_state_dict *g, uint64_t seed, const char *cas,
                     const ms_tinyvit_peft *pf)
{
    gt t;
    gt_open(&t, dev, seed, pf);
    float *emb0 = malloc((size_t)t.ne * sizeof(float));
    set_weights(&t);
    t.tv.bn_train = 0;
    MS_CHECK_OK(ms_tinyvit_reserve(&t.tv, t.B, 0));
    MS_CHECK_OK(ms_tinyvit_forward(&t.tv, t.x, t.B, t.emb));
    MS_CHECK_OK(ms_dev_to_host(dev, emb0, t.emb, (size_t)t.ne * sizeof(float)));
    MS_CHECK_OK(ms_tinyvit_reserve(&t.tv, t.B, 1));
    MS_CHECK_OK(ms_params_zero_grads(&t.ps));
    MS_CHECK_OK(ms_dev_zero(dev, t.dx, (size_t)t.nx * sizeof(float)));
    MS_CHECK_OK(ms_tinyvit_forward(&t.tv, t.x, t.B, t.emb));
    MS_CHECK_OK(ms_tinyvit_backward(&t.tv, t.G, NULL, t.dx));
    snapshot(&t);
    check_same_emb(&t, emb0, cas);
    char key[64];
    snprintf(key, sizeof key, "%s.emb", cas);
    double e = check_stage_tol(g, key, t.hemb, t.ne, TOL, 0, 0);
    printf("%-9s %d PEFT tensors (LoRA rank %d layers 0x%x, adapters 0x%x, %s slicing): emb max err %.3g\n", cas,
           t.ps.n - t.nbase, pf->lora_rank, pf->lora_layers, pf->adapter_layers,
           pf->fsam_slicing ? "finetune-SAM" : "true q/v", e);
    check_grads(&t, g, cas);
    check_dx(&t, g, cas);
    /* without dx the backward stops at the lowest trainable layer (1 here): the same PEFT gradients, bit for bit */
    size_t gb = (size_t)t.ps.numel_trainable * sizeof(float);
    float *g1 = malloc(gb);
    memcpy(g1, t.hgrad, gb);
    MS_CHECK_OK(ms_params_zero_grads(&t.ps));
    MS_CHECK_OK(ms_tinyvit_backward(&t.tv, t.G, NULL, NULL));
    snapshot(&t);
    MS_CHECK(!memcmp(g1, t.hgrad, gb), "%s: PEFT gradients differ when the backward stops at layer 1", cas);
    free(g1);
    MS_CHECK_OK(ms_tinyvit_peft_init_random(&t.tv, seed));
    snapshot(&t);
    int bad = 0;
    for (int i = t.nbase; i < t.ps.n; i++) {
        const ms_param *p = &t.ps.p[i];
        const float *v = t.hdata + p->off;
        int64_t fan = p->ndim == 2 ? p->shape[1] : t.ps.p[i - 1].shape[1]; /* a bias follows its weight */
        double mx = 0, bound = 1.0 / sqrt((double)fan);
        for (int64_t j = 0; j < p->numel; j++) mx = fmax(mx, fabs(v[j]));
        if (strstr(p->name, "linear_b_")) bad += mx != 0;
        else bad += !(mx > 0.5 * bound && mx <= bound);
    }
    MS_CHECK(bad == 0, "%s: peft_init_random: %d tensors off", cas, bad);
    free(emb0);
    gt_close(&t);
}

/* ms_tinyvit_init_random against what upstream's constructor draws ("init.<key>": mean, std, min, max, numel):
 * constants (BatchNorm γ = 1, or 0 for MBConv's conv3; β, running mean, attention biases 0; running var and
 * LayerNorm weights 1) exactly; random tensors (convolutions U(±1/√fan_in), Linear trunc_normal(0.02)) by their
 * spread: std within 10% (30% under 256 values), every |v| within upstream's range widened by 10% (uniform) or
 * 8 std (normal), mean within 5 standard errors. */
static void test_init(const ms_state_dict *g, uint64_t tseed)
{
    ms_device dev;
    MS_CHECK_OK(ms_device_init(&dev, MS_DEV_CPU, 0));
    ms_tinyvit_config c;
    MS_CHECK_OK(ms_tinyvit_config_named("vit_t_test", &c));
    ms_params ps;
    ms_params_init(&ps);
    ms_tinyvit tv;
    MS_CHECK_OK(ms_tinyvit_init(&tv, &c, &ps, PREFIX));
    MS_CHECK_OK(ms_params_alloc(&ps, &dev));
    tv.bn_batches = 7;
    MS_CHECK_OK(ms_tinyvit_init_random(&tv, tseed));
    MS_CHECK(tv.bn_batches == 0, "init_random kept num_batches_tracked %lld", (long long)tv.bn_batches);
    int nconst = 0, nrand = 0;
    for (int i = 0; i < ps.n; i++) {
        const ms_param *p = &ps.p[i];
        char key[MS_PARAM_NAME_MAX + 8];
        snprintf(key, sizeof key, "init.%s", p->name);
        const ms_sd_entry *e = ms_sd_find(g, key);
        if (!e || e->t.dtype != MS_DTYPE_F64 || ms_tensor_numel(&e->t) != 5) {
            MS_CHECK(0, "%s: no upstream init statistics", key);
            continue;
        }
        const double *u = e->t.data; /* mean, std, min, max, numel */
        const float *v = ps.data + p->off;
        int64_t n = p->numel;
        double s = 0, s2 = 0, mn = v[0], mx = v[0];
        for (int64_t j = 0; j < n; j++) {
            s += v[j];
            s2 += (double)v[j] * v[j];
            mn = fmin(mn, v[j]);
            mx = fmax(mx, v[j]);
        }
        double mean = s / n, sd = n > 1 ? sqrt(fmax(0, (s2 - s * mean) / (n - 1))) : 0;
        MS_CHECK((int64_t)u[4] == n, "%s: %lld values here, %lld upstream", p->name, (long long)n, (long long)u[4]);
        if (u[2] == u[3]) {
            MS_CHECK(mn == u[2] && mx == u[3], "%s: [%g, %g], upstream constant %g", p->name, mn, mx, u[2]);
            nconst++;
            continue;
        }
        /* uniform (max|v| ≈ √3·std upstream): within its range + 10%; normal: within 8 std */
        double um = fmax(fabs(u[2]), fabs(u[3])), range = um < 2 * u[1] ? 1.1 * um : 8 * u[1];
        double rel = n >= 256 ? 0.1 : 0.3;
        MS_CHECK(fabs(sd - u[1]) <= rel * u[1], "%s: std %g, upstream %g", p->name, sd, u[1]);
        MS_CHECK(fmax(fabs(mn), fabs(mx)) <= range, "%s: |v| up to %g, allowed %g", p->name, fmax(fabs(mn), fabs(mx)),
                 range);
        MS_CHECK(fabs(mean - u[0]) <= 5 * u[1] / sqrt((double)n), "%s: mean %g, upstream %g (std %g)", p->name, mean,
                 u[0], u[1]);
        nrand++;
    }
    printf("init_random: %d constant tensors equal upstream's, %d random ones match its spread\n", nconst, nrand);
    ms_tinyvit_free(&tv);
    ms_params_free(&ps);
    ms_device_free(&dev);
}

int main(void)
{
    uint64_t tseed = ms_test_seed(); /* init_random's seed; the golden file fixes weights, input and G */
    const char *src = getenv("MS_SOURCE_DIR");
    char path[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(path, src ? src : "../..", "tests/pretrain/golden/tinyvit_test_grad.pth"));
    ms_state_dict g;
    ms_sd_init(&g);
    ms_status st = ms_sd_load(path, &g);
    MS_CHECK_OK(st);
    if (st) return ms_test_done();
    const ms_sd_entry *es = ms_sd_find(&g, "meta.seed");
    uint64_t seed = es && es->t.dtype == MS_DTYPE_I64 ? (uint64_t)((int64_t *)es->t.data)[0] : 0;
    ms_tinyvit_peft pt = {.lora_rank = 4, .lora_layers = 0xE, .adapter_layers = 0xA};
    ms_tinyvit_peft pf = {.lora_rank = 4, .lora_layers = 0xE, .adapter_layers = 0x4, .fsam_slicing = 1};
    for (int d = 0; d < 2; d++) {
        if (d == 1 && !ms_cuda_available()) { printf("CUDA: not available, CPU only\n"); break; }
        ms_device dev;
        MS_CHECK_OK(ms_device_init(&dev, d ? MS_DEV_CUDA : MS_DEV_CPU, 0));
        printf("== device %s\n", d ? "cuda" : "cpu");
        run_base(&dev, &g, seed);
        run_peft(&dev, &g, seed, "peft_true", &pt);
        run_peft(&dev, &g, seed, "peft_fsam", &pf);
        ms_device_free(&dev);
    }
    test_init(&g, tseed);
    ms_sd_free(&g);
    return ms_test_done();
}
