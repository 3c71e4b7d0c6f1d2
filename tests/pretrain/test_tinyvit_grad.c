/* tests/pretrain/test_tinyvit_grad.c — TinyViT's backward and its BatchNorm modes (pretrain/tinyvit.h) against
 * MobileSAM's own PyTorch code: tests/pretrain/golden/tinyvit_test_grad.pth from tests/pretrain/gen_tinyvit_golden.py
 * (float64 reference; the weights and input are tinyvit_test.pth's: counter_init with the generator's BatchNorm /
 * bias-table rules, num_batches_tracked 3; vit_t_test, batch 2 at 256).
 *
 * Cases (G, G3: 2u − 1 from the counter RNG under "golden.G" / "golden.G3"):
 *   train   BatchNorm in training mode, L = Σ emb·G: every parameter's gradient and dx; the running statistics
 *           after the forward (momentum 0.1, unbiased variance) and num_batches_tracked 3 → 4.
 *   train3  training mode, the neck skipped (emb NULL: MAE's encoder output), L = Σ tokens3·G3 from dtok.
 *   bneval  BatchNorm on its running statistics (never updated), L = Σ emb·G; the embedding with backward
 *           reserved equals the forward-only one bit for bit.
 *   frozen  bneval again with only layers.3 and the neck trainable: their gradients as in bneval, no dx, and
 *           nothing else gets a gradient buffer (NULL skips).
 * Tolerance (fp32 against float64): max|c − r| ≤ TOL_G·max|r| + ATOL_G·(the case's largest gradient) per tensor
 * (in full up to 256 values, else 64 samples) and Σ, Σx² as test_tinyvit (tinyvit_golden.h); the floor is for
 * gradients a training-mode BatchNorm makes exactly 0 (the bias of the Linear just before a merging: a constant per
 * channel, removed by the batch mean), which fp32 leaves at rounding level. Tensors without an upstream gradient
 * (the classifier head) stay 0.
 * The golden file fixes weights and input; the seed printed picks nothing random here beyond the file (the
 * harness's seed is printed for the record).
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

typedef struct gt {
    ms_tinyvit_config c;
    ms_params ps;
    ms_tinyvit tv;
    ms_device *dev;
    uint64_t seed;
    int B;
    int64_t nx, ne, nt;
    float *x, *dx, *emb, *G, *G3; /* host == device on the CPU */
} gt;

/* counter weights (the golden generator's rules), num_batches_tracked 3 */
static void set_weights(gt *t)
{
    ms_params *ps = &t->ps;
    for (int i = 0; i < ps->n; i++)
        tv_counter(ps->data + ps->p[i].off, ps->p[i].name, ps->p[i].shape, ps->p[i].ndim, t->seed);
    t->tv.bn_batches = 3;
}

static void counter_pm1(float *dst, const char *name, int64_t n, uint64_t seed, float scale)
{
    uint64_t stream = ms_rng_stream(seed, ms_fnv1a64(name), 0);
    for (int64_t i = 0; i < n; i++) dst[i] = scale * (2.0f * ms_rand_uniform(stream, (uint64_t)i) - 1.0f);
}

/* Every parameter gradient against "<cas>.grad.<name>"; those upstream leaves without one must be 0. */
static void check_grads(gt *t, const ms_state_dict *g, const char *cas, int only_trainable)
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
        char key[MS_PARAM_NAME_MAX + 32];
        snprintf(key, sizeof key, "%s.grad.%s", cas, p->name);
        char k2[MS_PARAM_NAME_MAX + 40];
        snprintf(k2, sizeof k2, "%s.val", key);
        int has = ms_sd_find(g, key) || ms_sd_find(g, k2);
        const float *gr = ms_params_grad(ps, i);
        if (p->buffer) {
            MS_CHECK(!gr && !has, "%s: a buffer with a gradient", p->name);
            continue;
        }
        if (only_trainable && !p->trainable) {
            MS_CHECK(!gr, "%s: frozen but has a gradient buffer", p->name);
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
    printf("%-7s %3d parameter gradients, worst max err %.3g of max|g| + floor/tol (%s); floor %.3g (%g of %.3g)\n", cas, n,
           worst, wname, atol, ATOL_G, gmax);
}

static void run_case(gt *t, const ms_state_dict *g, const char *cas, int bn_train, int neck, int with_dx)
{
    ms_tinyvit *tv = &t->tv;
    set_weights(t);
    tv->bn_train = bn_train;
    MS_CHECK_OK(ms_params_zero_grads(&t->ps));
    memset(t->dx, 0, (size_t)t->nx * sizeof(float));
    MS_CHECK_OK(ms_tinyvit_forward(tv, t->x, t->B, neck ? t->emb : NULL));
    MS_CHECK(tv->neck_ran == neck, "%s: neck_ran %d", cas, tv->neck_ran);
    MS_CHECK(tv->bn_batches == 3 + bn_train, "%s: num_batches_tracked %lld", cas, (long long)tv->bn_batches);
    MS_CHECK(ms_tinyvit_backward(tv, neck ? NULL : t->G, neck ? t->G3 : NULL, NULL) == MS_EINVAL,
             "%s: backward from the wrong end accepted", cas);
    MS_CHECK_OK(ms_tinyvit_backward(tv, neck ? t->G : NULL, neck ? NULL : t->G3, with_dx ? t->dx : NULL));
    check_grads(t, g, cas, !with_dx);
    if (with_dx) {
        char key[32];
        snprintf(key, sizeof key, "%s.dx", cas);
        double e = check_stage_tol(g, key, t->dx, t->nx, TOL_G, 0, 0);
        printf("%-7s dx max err %.3g of max|dx|\n", cas, e);
    }
    /* running statistics: updated in training mode as torch does, untouched on the running statistics */
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
        if (bn_train && e && ms_tensor_numel(&e->t) == p->numel) memcpy(ref, e->t.data, (size_t)p->numel * 4);
        else if (bn_train) { MS_CHECK(0, "%s: no golden running statistics", key); free(ref); continue; }
        else tv_counter(ref, p->name, p->shape, p->ndim, t->seed);
        const float *v = ps->data + p->off;
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
    printf("%-7s %d running statistics %s, worst err %.3g of max\n", cas, n, bn_train ? "updated" : "unchanged",
           worst);
}

int main(void)
{
    ms_test_seed(); /* printed for the record: the golden file fixes weights, input and G */
    const char *src = getenv("MS_SOURCE_DIR");
    char path[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(path, src ? src : "../..", "tests/pretrain/golden/tinyvit_test_grad.pth"));
    ms_state_dict g;
    ms_sd_init(&g);
    ms_status st = ms_sd_load(path, &g);
    MS_CHECK_OK(st);
    if (st) return ms_test_done();
    const ms_sd_entry *es = ms_sd_find(&g, "meta.seed");
    gt t = {0};
    t.seed = es && es->t.dtype == MS_DTYPE_I64 ? (uint64_t)((int64_t *)es->t.data)[0] : 0;
    ms_device dev;
    MS_CHECK_OK(ms_device_init(&dev, MS_DEV_CPU, 0));
    t.dev = &dev;
    MS_CHECK_OK(ms_tinyvit_config_named("vit_t_test", &t.c));
    ms_params_init(&t.ps);
    MS_CHECK_OK(ms_tinyvit_init(&t.tv, &t.c, &t.ps, PREFIX));
    MS_CHECK_OK(ms_params_alloc(&t.ps, &dev));
    ms_params_set_trainable(&t.ps, "", 1);
    MS_CHECK_OK(ms_params_alloc_grads(&t.ps));
    t.B = 2;
    int64_t S = t.c.img_size, g4 = ms_tinyvit_grid(&t.c, 4);
    t.nx = (int64_t)t.B * 3 * S * S;
    t.ne = (int64_t)t.B * t.c.out_chans * g4 * g4;
    t.nt = (int64_t)t.B * g4 * g4 * t.c.dims[3];
    t.x = malloc((size_t)t.nx * sizeof(float));
    t.dx = malloc((size_t)t.nx * sizeof(float));
    t.emb = malloc((size_t)t.ne * sizeof(float));
    t.G = malloc((size_t)t.ne * sizeof(float));
    t.G3 = malloc((size_t)t.nt * sizeof(float));
    counter_pm1(t.x, "golden.input", t.nx, t.seed, 2.0f);
    counter_pm1(t.G, "golden.G", t.ne, t.seed, 1.0f);
    counter_pm1(t.G3, "golden.G3", t.nt, t.seed, 1.0f);

    /* the forward-only embedding (inference mode), for the bit-for-bit comparison below */
    float *emb0 = malloc((size_t)t.ne * sizeof(float));
    set_weights(&t);
    MS_CHECK_OK(ms_tinyvit_reserve(&t.tv, t.B, 0));
    MS_CHECK(ms_tinyvit_backward(&t.tv, t.G, NULL, NULL) == MS_EBADSTATE, "backward without its reserve accepted");
    MS_CHECK_OK(ms_tinyvit_forward(&t.tv, t.x, t.B, emb0));

    MS_CHECK_OK(ms_tinyvit_reserve(&t.tv, t.B, 1));
    run_case(&t, &g, "train", 1, 1, 1);
    run_case(&t, &g, "train3", 1, 0, 1);
    run_case(&t, &g, "bneval", 0, 1, 1);
    MS_CHECK(!memcmp(emb0, t.emb, (size_t)t.ne * sizeof(float)),
             "the embedding with backward reserved differs from the forward-only one");

    /* frozen: only layers.3 and the neck train; their gradients are bneval's */
    ms_params_set_trainable(&t.ps, "", 0);
    ms_params_set_trainable(&t.ps, PREFIX "layers.3.", 1);
    ms_params_set_trainable(&t.ps, PREFIX "neck.", 1);
    MS_CHECK_OK(ms_params_alloc_grads(&t.ps));
    run_case(&t, &g, "bneval", 0, 1, 0);

    free(emb0);
    free(t.x); free(t.dx); free(t.emb); free(t.G); free(t.G3);
    ms_tinyvit_free(&t.tv);
    ms_params_free(&t.ps);
    ms_device_free(&dev);
    ms_sd_free(&g);
    return ms_test_done();
}
