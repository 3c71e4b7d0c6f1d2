/* tests/pretrain/test_mae_tinyvit.c — MAE over MobileSAM's TinyViT (pretrain/mae.h ms_mae_init_tinyvit,
 * pretrain/mae_run.h ms_mae_run_open_encoder; docs/MAE.md §TinyViT), vit_t_test at 256, batch 2, on the CPU.
 *
 * 0. One MAE step against MobileSAM's own TinyViT in training mode plus the MAE reference decoder, float64
 *    (tests/pretrain/golden/mae_tinyvit_step.pth from tests/pretrain/gen_mae_tinyvit_golden.py; its weights and
 *    masks): the loss (relative 1e-5); every gradient the reference has, encoder and decoder (max|c − r| ≤
 *    1e-4·max|r| + 1e-6·the largest reference gradient, a floor for those that are 0 exactly); every BatchNorm
 *    running statistic after the step (max|c − r| ≤ 1e-4·max|r|, sums as tinyvit_golden.h checks them); the
 *    BatchNorm counter 3 → 4.
 * 1. No pixel of a hidden patch reaches the loss but through the target: with every TinyViT tensor drawn at random
 *    (seed printed; BatchNorm scales away from 1, so that no branch is dead), BatchNorm in training mode, random
 *    masks, the input's hidden patches replaced by noise give the same loss, bit for bit; one visible patch changed
 *    gives another loss.
 * 2. A run through the library: 4 steps uninterrupted; 3 steps (checkpoint at 2) and closed without a save, then a
 *    model from another seed resumes from step 2 and finishes: the parameter block (BatchNorm running statistics included), bn_batches, the decoder, the AdamW
 *    moments and the log equal the uninterrupted run's bit for bit. The encoder moved, the running statistics moved,
 *    bn_batches counts the training forwards (4: the validations run on the running statistics), the classifier,
 *    the neck and the block's other tensor did not move; a decoder-only warm-up step leaves the whole block and
 *    bn_batches alone; --input-size other than 256 is refused.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "base/fileio.h"
#include "base/path.h"
#include "base/rng.h"
#include "data/store_fixture.h"
#include "harness.h"
#include "pretrain/mae.h"
#include "pretrain/mae_run.h"

#include "tinyvit_golden.h"

static uint64_t SEED;
static char TMP[256], STORE[MS_PATH_MAX];

typedef struct model {
    ms_params ps;
    ms_tinyvit tv;
    int other; /* a tensor of the block outside the encoder: must stay frozen */
} model;

static int ends_with(const char *s, const char *t)
{
    size_t n = strlen(s), m = strlen(t);
    return n >= m && !strcmp(s + n - m, t);
}

/* Every tensor at random (not ms_tinyvit_init_random: BatchNorm scales away from 1 and MBConv's last one non-zero,
 * running statistics away from 0/1, so every branch and every statistic matters). */
static void randomise(ms_params *ps, uint64_t seed)
{
    ms_rng r;
    ms_rng_init(&r, seed, 3);
    for (int i = 0; i < ps->n; i++) {
        const ms_param *q = &ps->p[i];
        float *d = ps->data + q->off;
        double fan = q->ndim > 1 ? (double)q->numel / q->shape[0] : 1;
        int scale = ends_with(q->name, ".bn.weight") || ends_with(q->name, "norm.weight") ||
                    ends_with(q->name, "norm_head.weight") || strstr(q->name, "neck.1.weight") ||
                    strstr(q->name, "neck.3.weight");
        for (int64_t k = 0; k < q->numel; k++) {
            float z = ms_rng_normal(&r);
            if (ends_with(q->name, "running_var")) d[k] = 0.5f + ms_rng_uniform(&r);
            else if (ends_with(q->name, "running_mean")) d[k] = 0.1f * z;
            else if (scale) d[k] = 1.0f + 0.2f * z;
            else if (q->ndim == 1 || strstr(q->name, "attention_biases")) d[k] = 0.05f * z;
            else d[k] = (float)(z / sqrt(fan));
        }
    }
}

static ms_status model_build(model *m, ms_device *dev, uint64_t seed)
{
    ms_params_init(&m->ps);
    memset(&m->tv, 0, sizeof m->tv);
    ms_tinyvit_config tc;
    MS_TRY(ms_tinyvit_config_named("vit_t_test", &tc));
    MS_TRY(ms_tinyvit_init(&m->tv, &tc, &m->ps, "image_encoder."));
    const int64_t sh[2] = {3, 5};
    m->other = ms_params_add(&m->ps, "other.weight", sh, 2, 0);
    MS_FAIL_IF(m->other < 0, MS_EINVAL, "%s", ms_errmsg());
    MS_TRY(ms_params_alloc(&m->ps, dev));
    randomise(&m->ps, seed);
    float *o = ms_params_data(&m->ps, m->other); /* outside the run's checkpoints: the same in every model */
    for (int i = 0; i < 15; i++) o[i] = 0.25f * (float)i - 1.0f;
    return MS_OK;
}

static void model_free(model *m)
{
    ms_tinyvit_free(&m->tv);
    ms_params_free(&m->ps);
}

/* ---- 0: against MobileSAM's code ----------------------------------------------------------------------------- */

#define B 2
#define S 256

#define GRAD_TOL 1e-4
#define GRAD_ATOL 1e-6 /* × the largest reference gradient: the floor for gradients that are 0 exactly (a bias
                          before a BatchNorm in training mode) */

static int load_golden_all(const ms_params *ps, const ms_state_dict *sd)
{
    for (int i = 0; i < ps->n; i++)
        if (ms_sd_get_f32(sd, ps->p[i].name, ps->p[i].shape, ps->p[i].ndim, ms_params_data(ps, i))) {
            MS_CHECK(0, "golden: %s", ms_errmsg());
            return 0;
        }
    return 1;
}

static void test_golden(ms_device *dev)
{
    const char *src = getenv("MS_SOURCE_DIR");
    char path[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(path, src ? src : ".", "tests/pretrain/golden/mae_tinyvit_step.pth"));
    ms_state_dict g;
    ms_sd_init(&g);
    ms_status st = ms_sd_load(path, &g);
    MS_CHECK(st == MS_OK, "cannot load %s: %s (set MS_SOURCE_DIR)", path, ms_errmsg());
    const ms_sd_entry *ce = ms_sd_find(&g, "meta.cfg"), *ke = ms_sd_find(&g, "keep"), *le = ms_sd_find(&g, "loss");
    int ok = !st && ce && ke && le && ce->t.dtype == MS_DTYPE_I64 && ms_tensor_numel(&ce->t) == 5 &&
             ke->t.dtype == MS_DTYPE_I32 && ke->t.ndim == 2 && le->t.dtype == MS_DTYPE_F64;
    MS_CHECK(st || ok, "golden: meta.cfg, keep or loss missing or mistyped");
    if (!ok) { ms_sd_free(&g); return; }
    const int64_t *mc = ce->t.data;
    MS_CHECK(mc[0] == B && mc[1] == S, "golden: batch %lld at %lld", (long long)mc[0], (long long)mc[1]);
    ms_params ps, dps;
    ms_params_init(&ps);
    ms_params_init(&dps);
    ms_tinyvit tv;
    memset(&tv, 0, sizeof tv);
    ms_mae mae;
    memset(&mae, 0, sizeof mae);
    ms_tinyvit_config tc;
    float *x = NULL, *gray = NULL;
    MS_CHECK_OK(ms_tinyvit_config_named("vit_t_test", &tc));
    MS_CHECK_OK(ms_tinyvit_init(&tv, &tc, &ps, PREFIX));
    MS_CHECK_OK(ms_params_alloc(&ps, dev));
    for (int i = 0; i < ps.n; i++) tv_counter(ms_params_data(&ps, i), ps.p[i].name, ps.p[i].shape, ps.p[i].ndim, 17);
    tv.bn_batches = 3;
    tv.bn_train = 1;
    ms_params_set_trainable(&ps, "", 1);
    MS_CHECK_OK(ms_params_alloc_grads(&ps));
    MS_CHECK_OK(ms_tinyvit_reserve(&tv, B, 1));
    ms_mae_config mcfg = {.mask_ratio = 0.75f, .sampling = MS_MASK_STRATIFIED, .norm_pix = 1, .fg_threshold = 0.05f,
                          .dec = {.dim = (int)mc[2], .depth = (int)mc[3], .n_heads = (int)mc[4], .target_ch = 1}};
    MS_CHECK_OK(ms_mae_init_tinyvit(&mae, &tv, &mcfg, &dps));
    MS_CHECK_OK(ms_params_alloc(&dps, dev));
    MS_CHECK_OK(ms_params_alloc_grads(&dps));
    MS_CHECK_OK(ms_mae_reserve(&mae, dev, B));
    if (ms_test_fail_ || !load_golden_all(&dps, &g)) goto leave;
    int nk = (int)ke->t.shape[1];
    for (int b = 0; b < B; b++)
        MS_CHECK_OK(ms_mae_mask_set(&mae.mask, b, (const int32_t *)ke->t.data + (size_t)b * nk, nk, NULL, 0));
    size_t nx = (size_t)B * 3 * S * S, ng = (size_t)B * S * S;
    x = malloc(nx * sizeof *x);
    gray = malloc(ng * sizeof *gray);
    uint64_t sx = ms_rng_stream(17, ms_fnv1a64("golden.input"), 0), sg = ms_rng_stream(17, ms_fnv1a64("golden.gray"), 0);
    for (size_t i = 0; i < nx; i++) x[i] = 2.0f * (2.0f * ms_rand_uniform(sx, i) - 1.0f);
    for (size_t i = 0; i < ng; i++) gray[i] = ((2.0f * ms_rand_uniform(sg, i) - 1.0f) + 1.0f) / 2.0f;
    ms_mae_loss l;
    MS_CHECK_OK(ms_mae_forward(&mae, x, gray, B, 0, NULL, &l));
    MS_CHECK_OK(ms_mae_backward(&mae, 1.0f, 0));
    double ref = *(const double *)le->t.data, rel = fabs(l.loss - ref) / fabs(ref);
    printf("golden: loss %.9f, MobileSAM + reference decoder %.9f (rel %.2e)\n", l.loss, ref, rel);
    MS_CHECK(rel <= 1e-5, "loss %.9f vs %.9f (rel %.3g)", l.loss, ref, rel);
    int n_grad = 0, n_bn = 0;
    double gmax = 0, worst = 0; /* the largest reference gradient sets the floor for those that are 0 exactly */
    for (int i = 0; i < g.n; i++)
        if (!strncmp(g.e[i].name, "grad.", 5) && g.e[i].t.dtype == MS_DTYPE_F32)
            for (int64_t j = 0; j < ms_tensor_numel(&g.e[i].t); j++)
                gmax = fmax(gmax, fabs(((const float *)g.e[i].t.data)[j]));
    const ms_params *sets[2] = {&ps, &dps};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < sets[k]->n; i++) {
            const ms_param *q = &sets[k]->p[i];
            char key[MS_PARAM_NAME_MAX + 8];
            snprintf(key, sizeof key, "grad.%s", q->name);
            char key_idx[MS_PARAM_NAME_MAX + 16];
            snprintf(key_idx, sizeof key_idx, "%s.idx", key);
            if (ms_sd_find(&g, key) || ms_sd_find(&g, key_idx)) {
                worst = fmax(worst, check_stage_tol(&g, key, ms_params_grad(sets[k], i), q->numel, GRAD_TOL,
                                                    GRAD_ATOL * gmax, 0));
                n_grad++;
            }
            snprintf(key, sizeof key, "bn.%s", q->name);
            if (q->buffer && ms_sd_find(&g, key)) {
                check_stage(&g, key, ms_params_data(sets[k], i), q->numel);
                n_bn++;
            }
        }
    int n_ref = 0;
    for (int i = 0; i < g.n; i++)
        n_ref += !strncmp(g.e[i].name, "grad.", 5) && !ms_str_ends_with(g.e[i].name, ".val") &&
                 !ms_str_ends_with(g.e[i].name, ".stats");
    printf("golden: %d gradients, worst max error %.3g of max|r| + floor (tolerance %g, floor %g of %.3g); %d running "
           "statistics\n", n_grad, worst, GRAD_TOL, GRAD_ATOL, gmax, n_bn);
    MS_CHECK(n_grad == n_ref && n_grad > 100 && n_bn > 20, "%d gradients compared of %d, %d running statistics",
             n_grad, n_ref, n_bn);
    MS_CHECK(tv.bn_batches == 4, "bn_batches %lld after one training forward (4)", (long long)tv.bn_batches);
leave:
    free(x);
    free(gray);
    ms_mae_free(&mae);
    ms_tinyvit_free(&tv);
    ms_params_free(&dps);
    ms_params_free(&ps);
    ms_sd_free(&g);
}

/* ---- 1: hidden pixels ----------------------------------------------------------------------------------- */

typedef struct step_fx {
    model m;
    ms_params dps;
    ms_mae mae;
    float *x, *gray;
    uint64_t keys[B];
} step_fx;

static double loss_at(step_fx *f, const float *x)
{
    ms_mae_loss l;
    ms_status rc = ms_mae_forward(&f->mae, x, f->gray, B, SEED, f->keys, &l);
    MS_CHECK_OK(rc);
    return rc ? NAN : l.loss;
}

static void test_hidden(ms_device *dev)
{
    step_fx f;
    memset(&f, 0, sizeof f);
    ms_params_init(&f.dps);
    MS_CHECK_OK(model_build(&f.m, dev, SEED));
    ms_params_set_trainable(&f.m.ps, "image_encoder.", 1);
    MS_CHECK_OK(ms_params_alloc_grads(&f.m.ps));
    MS_CHECK_OK(ms_tinyvit_reserve(&f.m.tv, B, 1));
    f.m.tv.bn_train = 1;
    ms_mae_config mc = {.mask_ratio = 0.75f, .sampling = MS_MASK_STRATIFIED, .norm_pix = 1, .fg_threshold = 0.05f,
                        .dec = {.dim = 32, .depth = 1, .n_heads = 2, .target_ch = 1}};
    MS_CHECK_OK(ms_mae_init_tinyvit(&f.mae, &f.m.tv, &mc, &f.dps));
    MS_CHECK_OK(ms_params_alloc(&f.dps, dev));
    MS_CHECK_OK(ms_params_alloc_grads(&f.dps));
    MS_CHECK_OK(ms_mae_decoder_init_weights(&f.mae.dec, SEED + 1));
    MS_CHECK(f.mae.cfg.dec.enc_dim == 320 && f.mae.grid == 16, "decoder takes %d channels on a %d grid (320, 16)",
             f.mae.cfg.dec.enc_dim, f.mae.grid);
    MS_CHECK_OK(ms_mae_reserve(&f.mae, dev, B));
    size_t nx = (size_t)B * 3 * S * S;
    f.x = malloc(nx * sizeof(float));
    f.gray = malloc((size_t)B * S * S * sizeof(float));
    ms_rng r;
    ms_rng_init(&r, SEED, 9);
    for (size_t i = 0; i < (size_t)B * S * S; i++) f.gray[i] = ms_rng_uniform(&r);
    for (size_t i = 0; i < nx; i++) f.x[i] = 2 * f.gray[i % ((size_t)S * S) + (i / (3 * (size_t)S * S)) * S * S] - 1;
    for (int b = 0; b < B; b++) f.keys[b] = ms_rng_u64(&r);
    if (ms_test_fail_) goto leave;

    double l0 = loss_at(&f, f.x);
    MS_CHECK(isfinite(l0) && l0 > 0, "loss %g", l0);
    /* hidden pixels do not matter, visible ones do */
    float *x2 = malloc(nx * sizeof(float));
    memcpy(x2, f.x, nx * sizeof(float));
    int g = 16, p = 16, first_vis = -1;
    for (size_t i = 0; i < nx; i++) {
        size_t b = i / (3 * (size_t)S * S), y = (i / S) % S, xx = i % S;
        if (f.mae.mask.masked[b * g * g + (y / p) * g + xx / p]) x2[i] = 3 * ms_rng_normal(&r);
    }
    double lh = loss_at(&f, x2);
    MS_CHECK(lh == l0, "hidden patches replaced by noise: loss %.9g, was %.9g (must be equal)", lh, l0);
    for (int t = 0; t < g * g && first_vis < 0; t++)
        if (!f.mae.mask.masked[t]) first_vis = t;
    for (int y = 0; y < p; y++)
        for (int xx = 0; xx < p; xx++)
            x2[(size_t)((first_vis / g) * p + y) * S + (first_vis % g) * p + xx] += 1.0f;
    double lv = loss_at(&f, x2);
    MS_CHECK(lv != l0, "a visible patch changed: loss %.9g, was %.9g (must differ)", lv, l0);
    free(x2);
leave:
    free(f.x);
    free(f.gray);
    ms_mae_free(&f.mae);
    ms_params_free(&f.dps);
    model_free(&f.m);
}

/* ---- 2: a run, stopped and resumed ------------------------------------------------------------------------- */

#define STEPS 4

static void base_config(ms_mae_run_config *c, const char *out)
{
    ms_mae_run_config_default(c);
    c->n_stores = 1;
    c->stores[0] = STORE;
    c->workers = 1;
    c->out = out;
    c->model = "vit_t_test";
    c->init = "random";
    c->batch = 2;
    c->max_steps = STEPS;
    c->warmup = 1;
    c->lr = 1e-3;
    c->seed = SEED;
    c->dec_dim = 32;
    c->dec_depth = 1;
    c->dec_heads = 2;
    c->save_every = 2;
    c->val_every = 2;
    c->val_slices = 2;
    c->panels = 0;
}

typedef struct record {
    float *block;
    int64_t bn_batches;
    ms_state_dict model, optim;
    char *log;
} record;

static void record_free(record *rc)
{
    free(rc->block);
    free(rc->log);
    ms_sd_free(&rc->model);
    ms_sd_free(&rc->optim);
}

/* log.jsonl without the wall-clock keys. */
static char *read_log(const char *run)
{
    char p[MS_PATH_MAX], *buf = NULL;
    size_t n = 0;
    if (ms_path_join(p, run, "log.jsonl") || ms_read_file(p, 1 << 22, &buf, &n)) return NULL;
    char *out = calloc(2 * n + 2, 1), *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(line);
        if (!j) continue;
        cJSON_DeleteItemFromObject(j, "t");
        cJSON_DeleteItemFromObject(j, "img_per_s");
        char *s = cJSON_PrintUnformatted(j);
        strcat(out, s);
        strcat(out, "\n");
        cJSON_free(s);
        cJSON_Delete(j);
    }
    free(buf);
    return out;
}

static ms_status run_steps(ms_mae_run *r, int64_t until)
{
    ms_mae_step_info in = {0};
    do MS_TRY(ms_mae_run_step(r, &in));
    while (in.step < until && !in.done);
    return MS_OK;
}

static ms_status finish(ms_mae_run *r, const model *m, const char *out, record *rec)
{
    ms_sd_init(&rec->model);
    ms_sd_init(&rec->optim);
    MS_TRY(ms_mae_run_state_to_sd(r, &rec->model, &rec->optim));
    rec->block = malloc((size_t)m->ps.numel * sizeof(float));
    MS_FAIL_IF(!rec->block, MS_ENOMEM, "out of memory");
    memcpy(rec->block, m->ps.data, (size_t)m->ps.numel * sizeof(float));
    rec->bn_batches = m->tv.bn_batches;
    rec->log = read_log(out);
    return MS_OK;
}

static int sd_equal(const ms_state_dict *a, const ms_state_dict *b)
{
    int ok = a->n == b->n && a->n > 0;
    for (int i = 0; ok && i < a->n; i++) {
        const ms_tensor *x = &a->e[i].t, *y = &b->e[i].t;
        ok = !strcmp(a->e[i].name, b->e[i].name) && ms_tensor_numel(x) == ms_tensor_numel(y) &&
             !memcmp(x->data, y->data, (size_t)ms_tensor_numel(x) * ms_dtype_size(x->dtype));
        if (!ok) printf("  entry %d (%s) differs\n", i, a->e[i].name);
    }
    return ok;
}

/* Whether tensors whose names contain `part` are equal in two blocks (all = 1: all of them; 0: none of them). */
static int same_where(const ms_params *ps, const float *a, const float *b, const char *part, int buffers)
{
    int n = 0, eq = 0;
    for (int i = 0; i < ps->n; i++) {
        const ms_param *q = &ps->p[i];
        if (!strstr(q->name, part) || (buffers >= 0 && q->buffer != buffers)) continue;
        n++;
        eq += !memcmp(a + q->off, b + q->off, (size_t)q->numel * sizeof(float));
    }
    return n == 0 ? -1 : (eq == n ? 1 : (eq == 0 ? 0 : 2));
}

static void test_run(ms_device *dev)
{
    char out_a[MS_PATH_MAX], out_b[MS_PATH_MAX], out_c[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(out_a, TMP, "a"));
    MS_CHECK_OK(ms_path_join(out_b, TMP, "b"));
    MS_CHECK_OK(ms_path_join(out_c, TMP, "c"));
    record a = {0}, b = {0};
    ms_mae_run_config c;
    ms_mae_run *r = NULL;
    model m;

    /* refused: another input size */
    MS_CHECK_OK(model_build(&m, dev, SEED ^ 0x51));
    base_config(&c, out_c);
    c.input_size = 512;
    ms_mae_encoder e = {.tv = &m.tv};
    MS_CHECK(ms_mae_run_open_encoder(&c, dev, &e, &r) != MS_OK && !r && strstr(ms_errmsg(), "input size"),
             "--input-size 512 on TinyViT refused: %s", ms_errmsg());
    model_free(&m);

    /* the decoder-only warm-up: the encoder, running statistics included, does not move, bn_batches stays */
    MS_CHECK_OK(model_build(&m, dev, SEED ^ 0x51));
    float *before = malloc((size_t)m.ps.numel * sizeof(float));
    memcpy(before, m.ps.data, (size_t)m.ps.numel * sizeof(float));
    base_config(&c, out_c);
    c.freeze_epochs = 1;
    c.max_steps = 1;
    c.val_slices = 0;
    e.tv = &m.tv;
    MS_CHECK_OK(ms_mae_run_open_encoder(&c, dev, &e, &r));
    if (r) MS_CHECK_OK(run_steps(r, 1));
    ms_mae_run_close(r);
    r = NULL;
    MS_CHECK(!memcmp(before, m.ps.data, (size_t)m.ps.numel * sizeof(float)) && m.tv.bn_batches == 0,
             "a frozen encoder step leaves the whole block (running statistics included) and bn_batches (%lld) alone",
             (long long)m.tv.bn_batches);
    free(before);
    model_free(&m);

    /* a: uninterrupted */
    MS_CHECK_OK(model_build(&m, dev, SEED ^ 0x51));
    float *init = malloc((size_t)m.ps.numel * sizeof(float));
    memcpy(init, m.ps.data, (size_t)m.ps.numel * sizeof(float));
    base_config(&c, out_a);
    e.tv = &m.tv;
    MS_CHECK_OK(ms_mae_run_open_encoder(&c, dev, &e, &r));
    if (r) MS_CHECK_OK(run_steps(r, STEPS));
    if (r) MS_CHECK_OK(finish(r, &m, out_a, &a));
    ms_mae_run_close(r);
    r = NULL;
    if (a.block) {
        MS_CHECK(same_where(&m.ps, a.block, init, "layers.", 0) == 0, "every trainable tensor of the layers moved");
        MS_CHECK(same_where(&m.ps, a.block, init, "running_", 1) == 0, "every BatchNorm running statistic moved");
        MS_CHECK(same_where(&m.ps, a.block, init, "head", -1) == 1 && same_where(&m.ps, a.block, init, "neck.", -1) == 1 &&
                     same_where(&m.ps, a.block, init, "other.", -1) == 1,
                 "the classifier, the neck and the other tensor did not move");
        MS_CHECK(a.bn_batches == STEPS, "bn_batches %lld after %d training forwards", (long long)a.bn_batches, STEPS);
    }
    model_free(&m);

    /* b: 2 steps, save, close; resumed from another seed */
    MS_CHECK_OK(model_build(&m, dev, SEED ^ 0x51));
    base_config(&c, out_b);
    e.tv = &m.tv;
    MS_CHECK_OK(ms_mae_run_open_encoder(&c, dev, &e, &r));
    if (r) MS_CHECK_OK(run_steps(r, 2 + 1)); /* 3 steps; the checkpoint is at 2: the 3rd is done again */
    ms_mae_run_close(r);
    r = NULL;
    model_free(&m);
    MS_CHECK_OK(model_build(&m, dev, SEED ^ 0x77));
    m.tv.bn_batches = 12345;
    c.resume = out_b;
    e.tv = &m.tv;
    MS_CHECK_OK(ms_mae_run_open_encoder(&c, dev, &e, &r));
    if (r) MS_CHECK(ms_mae_run_plan_get(r)->start_step == 2, "resumed at step %lld (2)",
                    (long long)ms_mae_run_plan_get(r)->start_step);
    if (r) MS_CHECK_OK(run_steps(r, STEPS));
    if (r) MS_CHECK_OK(finish(r, &m, out_b, &b));
    ms_mae_run_close(r);
    if (a.block && b.block) {
        int nd = 0;
        for (int i = 0; i < m.ps.n; i++) {
            const ms_param *q = &m.ps.p[i];
            if (memcmp(a.block + q->off, b.block + q->off, (size_t)q->numel * sizeof(float)) && nd++ < 5)
                printf("  resumed: %s differs\n", q->name);
        }
        MS_CHECK(nd == 0, "resumed: the whole block (running statistics included) equals the uninterrupted run's "
                 "(%d tensors differ)", nd);
        MS_CHECK(a.bn_batches == b.bn_batches, "bn_batches %lld == %lld", (long long)b.bn_batches,
                 (long long)a.bn_batches);
        MS_CHECK(sd_equal(&a.model, &b.model) && sd_equal(&a.optim, &b.optim), "model and AdamW moments equal");
        MS_CHECK(a.log && b.log && !strcmp(a.log, b.log), "log.jsonl equal but for t and img_per_s");
    }
    model_free(&m);
    free(init);
    record_free(&a);
    record_free(&b);
}

int main(void)
{
    SEED = ms_test_seed();
    (void)golden_keys; /* tinyvit_golden.h's key checks are test_tinyvit's */
    (void)test_keys;
    snprintf(TMP, sizeof TMP, "/tmp/test_mae_tinyvit_XXXXXX");
    MS_CHECK(mkdtemp(TMP) != NULL, "mkdtemp");
    MS_CHECK_OK(ms_path_join(STORE, TMP, "store"));
    const fx_vol vols[] = {{40, 48, 6, 0}, {48, 40, 6, 0}, {44, 44, 6, 0}};
    MS_CHECK_OK(fx_make_store(STORE, SEED, vols, 3));
    ms_device dev = {0};
    MS_CHECK_OK(ms_device_init(&dev, MS_DEV_CPU, 1));
    test_golden(&dev);
    test_hidden(&dev);
    test_run(&dev);
    ms_device_free(&dev);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", TMP);
    if (system(cmd)) printf("note: could not remove %s\n", TMP);
    return ms_test_done();
}
