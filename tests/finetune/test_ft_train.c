/* tests/finetune/test_ft_train.c — the library pieces of the fine-tuning loop (finetune/ft_train.h):
 *  - loss: Dice (MONAI: sigmoid, squared terms, background included, smooth 1e-5) + CE, value and gradient against
 *    a double-precision reference written here from the definitions, on fresh random logits and targets;
 *  - metric: foreground Dice aggregated over maps against a naive double count, including the empty/empty rule
 *    (a class with no ground truth and no prediction is n/a and leaves the mean) and a missed class (Dice 0);
 *  - class maps from volume infos (union, sorting, background, unlabelled volumes ignored, names, limits);
 *  - shots, the task schedule, the embedding cache;
 *  - for each method × scope (6 cases) on vit_test: one training step (encode, decode, loss, backward, AdamW);
 *    every tensor is compared before and after: exactly the tensors that should move (trainable and reached by a
 *    gradient or by weight decay) changed, every frozen tensor is bit-identical, and the PEFT / encoder tensors of
 *    the method really got gradients.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "base/rng.h"
#include "finetune/ft_model.h"
#include "finetune/ft_train.h"
#include "pretrain/optimizer.h"

static ms_device cpu_dev(void)
{
    ms_device d;
    memset(&d, 0, sizeof d);
    d.kind = MS_DEV_CPU;
    d.n_threads = 2;
    return d;
}

/* ---- loss reference ------------------------------------------------------------------------------------------- */

static double ref_loss(const float *x, const int32_t *t, int B, int C, int P, double s, double *g)
{
    double dice = 0;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
            const float *xl = x + ((size_t)b * C + c) * P;
            double I = 0, D = 0;
            for (int i = 0; i < P; i++) {
                double p = 1 / (1 + exp(-(double)xl[i])), y = t[(size_t)b * P + i] == c;
                I += p * y;
                D += p * p + y * y;
            }
            dice += 1 - (2 * I + s) / (D + s);
            for (int i = 0; i < P; i++) {
                double p = 1 / (1 + exp(-(double)xl[i])), y = t[(size_t)b * P + i] == c;
                double dp = -(2 * y * (D + s) - (2 * I + s) * 2 * p) / ((D + s) * (D + s));
                g[((size_t)b * C + c) * P + i] = dp * p * (1 - p) / (B * C);
            }
        }
    dice /= B * C;
    double ce = 0;
    int64_t n = 0;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < P; i++) n += t[(size_t)b * P + i] >= 0;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < P; i++) {
            int y = t[(size_t)b * P + i];
            if (y < 0) continue;
            double mx = -1e300, z = 0;
            for (int c = 0; c < C; c++) mx = fmax(mx, x[((size_t)b * C + c) * P + i]);
            for (int c = 0; c < C; c++) z += exp(x[((size_t)b * C + c) * P + i] - mx);
            ce += -(x[((size_t)b * C + y) * P + i] - mx - log(z)) / n;
            for (int c = 0; c < C; c++) {
                double sm = exp(x[((size_t)b * C + c) * P + i] - mx) / z;
                g[((size_t)b * C + c) * P + i] += (sm - (c == y)) / n;
            }
        }
    return dice + ce;
}

static void test_loss(uint64_t seed)
{
    ms_device dev = cpu_dev();
    ms_rng r;
    ms_rng_init(&r, seed, 11);
    for (int trial = 0; trial < 3; trial++) {
        int B = 1 + (int)ms_rng_below(&r, 3), C = 2 + (int)ms_rng_below(&r, 4), P = 64 + (int)ms_rng_below(&r, 200);
        int64_t n = (int64_t)B * C * P;
        float *x = malloc(n * sizeof(float)), *dx = malloc(n * sizeof(float));
        double *g = malloc(n * sizeof(double));
        int32_t *t = malloc((size_t)B * P * sizeof(int32_t));
        ms_fill_uniform(x, n, &r, -4, 4);
        for (int64_t i = 0; i < (int64_t)B * P; i++) t[i] = (int32_t)ms_rng_below(&r, (uint64_t)C) - (trial == 2 && i % 7 == 0);
        ms_ft_loss L;
        MS_CHECK_OK(ms_ft_loss_init(&L, &dev, (int64_t)B * P));
        double d = 0, e = 0;
        MS_CHECK_OK(ms_ft_loss_run(&L, x, t, B, C, P, dx, &d, &e));
        double ref = ref_loss(x, t, B, C, P, MS_FT_DICE_SMOOTH, g);
        ms_cmp cg = ms_compare(dx, g, n);
        printf("loss B=%d C=%d P=%d%s: %.7f vs ref %.7f, grad max_abs %.3g max_rel %.3g\n", B, C, P,
               trial == 2 ? " (some targets ignored)" : "", d + e, ref, cg.max_abs, cg.max_rel);
        /* fp32 sums over <= 3·5·264 terms: relative error well under 1e-5; the bound leaves a 10x margin */
        MS_CHECK(fabs(d + e - ref) <= 1e-5 * fabs(ref) + 1e-6, "loss %.8f vs %.8f", d + e, ref);
        MS_CHECK(cg.max_rel < 1e-3 && cg.nmse < 1e-9, "loss gradient: max_rel %.3g nmse %.3g", cg.max_rel, cg.nmse);
        /* loss_fg / loss_bg: the two CE means recombine into the CE mean (independent of how the op splits) */
        double fg = 0, bg = 0, nf = 0, nb = 0;
        MS_CHECK_OK(ms_ft_loss_split(&L, x, t, B, C, P, &fg, &bg));
        for (int64_t i = 0; i < (int64_t)B * P; i++) { nf += t[i] > 0; nb += t[i] == 0; }
        MS_CHECK(fabs((fg * nf + bg * nb) / (nf + nb) - e) <= 1e-5 * fabs(e) + 1e-6 && fg > 0 && bg > 0,
                 "CE split: fg %.6f bg %.6f vs CE %.6f", fg, bg, e);
        ms_ft_loss_free(&L);
        free(x); free(dx); free(g); free(t);
    }
}

/* ---- metric ----------------------------------------------------------------------------------------------------- */

static void test_metric(uint64_t seed)
{
    ms_rng r;
    ms_rng_init(&r, seed, 12);
    const int C = 4, P = 300, B = 3;
    float *x = malloc((size_t)B * C * P * sizeof(float));
    int32_t *t = malloc((size_t)B * P * sizeof(int32_t));
    ms_fill_uniform(x, (int64_t)B * C * P, &r, -2, 2);
    /* class 3: never in the ground truth, never predicted → n/a; class 2: in the truth, never predicted → 0 */
    for (int b = 0; b < B; b++)
        for (int i = 0; i < P; i++) {
            x[((size_t)b * C + 3) * P + i] = -100;
            x[((size_t)b * C + 2) * P + i] = -100;
            t[(size_t)b * P + i] = (int32_t)ms_rng_below(&r, 3);
        }
    ms_ft_dice_acc a;
    ms_ft_dice_reset(&a, C);
    for (int b = 0; b < B; b++) ms_ft_dice_add(&a, x + (size_t)b * C * P, t + (size_t)b * P, 1, C, P);
    double tp[4] = {0}, np[4] = {0}, ng[4] = {0};
    for (int b = 0; b < B; b++)
        for (int i = 0; i < P; i++) {
            int best = 0;
            for (int c = 1; c < C; c++) if (x[((size_t)b * C + c) * P + i] > x[((size_t)b * C + best) * P + i]) best = c;
            int y = t[(size_t)b * P + i];
            np[best]++; ng[y]++; tp[y] += best == y;
        }
    double ref1 = 2 * tp[1] / (np[1] + ng[1]);
    MS_CHECK(fabs(ms_ft_dice_class(&a, 1) - ref1) < 1e-12, "class 1 Dice %.6f vs %.6f", ms_ft_dice_class(&a, 1), ref1);
    MS_CHECK(ms_ft_dice_class(&a, 2) == 0, "a missed class scores 0, got %g", ms_ft_dice_class(&a, 2));
    MS_CHECK(isnan(ms_ft_dice_class(&a, 3)), "empty/empty class is n/a, got %g", ms_ft_dice_class(&a, 3));
    int nc = 0;
    double mean = ms_ft_dice_mean(&a, &nc);
    MS_CHECK(nc == 2 && fabs(mean - ref1 / 2) < 1e-12, "mean over scored classes: %.6f (%d) vs %.6f (2)", mean, nc,
             ref1 / 2);
    printf("metric: class 1 %.4f, class 2 %.4f (missed), class 3 n/a, mean %.4f over %d\n", ms_ft_dice_class(&a, 1),
           ms_ft_dice_class(&a, 2), mean, nc);
    /* aggregated, not averaged per map: one map with all-correct 1 pixel and one with a large miss */
    ms_ft_dice_reset(&a, 2);
    float l2[2 * 4] = {0, 0, 0, 0, 1, -1, -1, -1}; /* map 0: pixel 0 predicted fg */
    int32_t t2[4] = {1, 0, 0, 0};
    ms_ft_dice_add(&a, l2, t2, 1, 2, 4);
    float l3[2 * 4] = {0, 0, 0, 0, -1, -1, -1, -1};
    int32_t t3[4] = {1, 1, 1, 0};
    ms_ft_dice_add(&a, l3, t3, 1, 2, 4);
    MS_CHECK(fabs(ms_ft_dice_class(&a, 1) - 2.0 * 1 / (1 + 4)) < 1e-12, "aggregated Dice %.4f vs 0.4",
             ms_ft_dice_class(&a, 1));
    /* binary (prompt) accumulation */
    ms_ft_dice_reset(&a, 3);
    ms_ft_dice_add_binary(&a, 2, l2, t2, 4);
    MS_CHECK(ms_ft_dice_class(&a, 2) == 1 && isnan(ms_ft_dice_class(&a, 1)), "binary accumulation");
    free(x);
    free(t);
}

/* ---- class maps ------------------------------------------------------------------------------------------------- */

static void test_class_map(uint64_t seed)
{
    ms_rng r;
    ms_rng_init(&r, seed, 13);
    ms_volume_info v[3];
    memset(v, 0, sizeof v);
    uint16_t a = (uint16_t)(2 + ms_rng_below(&r, 100)), b = (uint16_t)(200 + ms_rng_below(&r, 1000));
    v[0].has_labels = 1; v[0].n_label_values = 2; v[0].label_values[0] = 0; v[0].label_values[1] = b;
    v[1].has_labels = 1; v[1].n_label_values = 2; v[1].label_values[0] = a; v[1].label_values[1] = b; /* no 0 */
    v[2].has_labels = 0; v[2].n_label_values = 1; v[2].label_values[0] = 1; /* unlabelled: ignored */
    char names[256];
    snprintf(names, sizeof names, "# names\n%u  white_matter extra\n%u,gray\n", a, b);
    ms_ft_task t;
    MS_CHECK_OK(ms_ft_task_from_volumes(&t, "brain", v, 3, names));
    MS_CHECK(t.num_cls == 3 && t.values[0] == 0 && t.values[1] == a && t.values[2] == b,
             "classes %d: [%u %u %u], expected [0 %u %u]", t.num_cls, t.values[0], t.values[1], t.values[2], a, b);
    MS_CHECK(!strcmp(t.class_names[1], "white_matter") && !strcmp(t.class_names[2], "gray") && !t.class_names[0][0],
             "names '%s' '%s' '%s'", t.class_names[0], t.class_names[1], t.class_names[2]);
    uint16_t *map = malloc(65536 * sizeof *map);
    ms_ft_task_label_map(&t, map);
    MS_CHECK(map[0] == 0 && map[a] == 1 && map[b] == 2 && map[1] == 0 && map[65535] == 0, "label map");
    free(map);
    /* limits: 31 values + background is one too many; no foreground is an error */
    v[0].n_label_values = 31;
    for (int i = 0; i < 31; i++) v[0].label_values[i] = (uint16_t)(1 + i);
    MS_CHECK(ms_ft_task_from_volumes(&t, "x", v, 1, NULL) != MS_OK, "31 foreground values must be refused (max %d "
             "classes incl. background)", MS_FT_MAX_CLASSES);
    v[0].n_label_values = 30;
    MS_CHECK_OK(ms_ft_task_from_volumes(&t, "x", v, 1, NULL));
    MS_CHECK(t.num_cls == 31, "30 foreground values → 31 classes (%d)", t.num_cls);
    v[0].n_label_values = 1;
    v[0].label_values[0] = 0;
    MS_CHECK(ms_ft_task_from_volumes(&t, "x", v, 1, NULL) != MS_OK, "background only must be refused");
    char nm[64];
    ms_ft_task_default_name("data/stores/brain_mask/", nm, sizeof nm);
    MS_CHECK(!strcmp(nm, "brain_mask"), "default task name '%s'", nm);
    ms_ft_task_default_name("/x/y/atlas.v2", nm, sizeof nm);
    MS_CHECK(!strcmp(nm, "atlas_v2"), "default task name without '.': '%s'", nm);
}

/* ---- shots, schedule, cache ------------------------------------------------------------------------------------ */

static void test_small(uint64_t seed)
{
    ms_selection in = {0}, a = {0}, b = {0}, c = {0};
    MS_CHECK_OK(ms_selection_add(&in, 10, 40));
    MS_CHECK_OK(ms_selection_add(&in, 100, 30));
    MS_CHECK_OK(ms_selection_finish(&in));
    MS_CHECK_OK(ms_ft_select_shots(&in, 7, seed, &a));
    MS_CHECK_OK(ms_ft_select_shots(&in, 7, seed, &b));
    MS_CHECK_OK(ms_ft_select_shots(&in, 7, seed + 1, &c));
    int same = a.n == b.n, differ = 0, inside = 1;
    for (uint64_t i = 0; i < a.n && i < b.n; i++) same &= ms_selection_key(&a, i) == ms_selection_key(&b, i);
    for (uint64_t i = 0; i < a.n; i++) {
        inside &= ms_selection_contains(&in, ms_selection_key(&a, i));
        differ |= i >= c.n || ms_selection_key(&a, i) != ms_selection_key(&c, i);
    }
    MS_CHECK(a.n == 7 && same && inside, "7 distinct shots inside the pool, same seed same shots");
    MS_CHECK(differ, "another seed picks other shots");
    MS_CHECK(ms_ft_select_shots(&in, 71, seed, &c) != MS_OK, "more shots than slices is refused");
    ms_selection_free(&in); ms_selection_free(&a); ms_selection_free(&b); ms_selection_free(&c);

    double w[3] = {1, 3, 6};
    int cnt[3] = {0};
    const int N = 20000;
    for (int s = 0; s < N; s++) cnt[ms_ft_task_at(seed, s, 3, w)]++;
    int det = 1;
    for (int s = 0; s < 100; s++) det &= ms_ft_task_at(seed, s, 3, w) == ms_ft_task_at(seed, s, 3, w);
    printf("task schedule: %d %d %d of %d (weights 1:3:6)\n", cnt[0], cnt[1], cnt[2], N);
    /* binomial sd <= sqrt(N/4) = 71; 5 sd */
    MS_CHECK(det && abs(cnt[0] - N / 10) < 355 && abs(cnt[1] - 3 * N / 10) < 355 && abs(cnt[2] - 6 * N / 10) < 355,
             "schedule proportions");

    ms_emb_cache *ec;
    MS_CHECK_OK(ms_emb_cache_new(5, &ec));
    float e[5];
    for (int k = 0; k < 1000; k++) {
        for (int i = 0; i < 5; i++) e[i] = (float)(k * 10 + i);
        MS_CHECK_OK(ms_emb_cache_put(ec, k & 1, (uint64_t)k * 7919, e));
    }
    int ok = ms_emb_cache_count(ec) == 1000;
    for (int k = 0; k < 1000; k++) {
        const float *g = ms_emb_cache_get(ec, k & 1, (uint64_t)k * 7919);
        ok &= g && g[0] == k * 10 && g[4] == k * 10 + 4;
        ok &= ms_emb_cache_get(ec, !(k & 1), (uint64_t)k * 7919) == NULL || k == 0;
    }
    MS_CHECK(ok, "embedding cache: 1000 entries over growth, keyed by (store, key)");
    ms_emb_cache_free(ec);
}

/* ---- one training step per method × scope: exactly the trainable set moves ------------------------------------ */

static float *host_copy(const ms_params *ps, int i)
{
    const ms_param *p = &ps->p[i];
    float *h = malloc((size_t)p->numel * sizeof(float));
    ms_dev_to_host(ps->dev, h, ps->data + p->off, (size_t)p->numel * sizeof(float));
    return h;
}

static void test_trainable_step(uint64_t seed)
{
    ms_device dev = cpu_dev();
    for (int m = 0; m < 3; m++)
        for (int s = 0; s < 2; s++) {
            ms_ft_config c;
            ms_ft_config_default(&c);
            snprintf(c.model, sizeof c.model, "vit_test");
            ms_prep_config_default(&c.prep, 256);
            c.prep.channels = 3;
            c.method = (ms_ft_method)m;
            c.scope = (ms_ft_scope)s;
            c.task[0].num_cls = 3;
            c.task[0].values[2] = 2;
            ms_ft_model fm;
            ms_status st = ms_ft_model_build(&fm, &c, NULL, seed, &dev);
            MS_CHECK(st == MS_OK, "%s/%s build: %s", ms_ft_method_name(c.method), ms_ft_scope_name(c.scope), ms_errmsg());
            if (st) continue;
            ms_params *ps = &fm.sam.ps;
            const int B = 1, S = fm.sam.img_size;
            const int64_t P = 16 * (int64_t)fm.sam.emb_h * fm.sam.emb_w;
            MS_CHECK_OK(ms_ft_model_reserve(&fm, B, 1));
            ms_optimizer opt = {0};
            MS_CHECK_OK(ms_optimizer_init(&opt, ps, 0.9f, 0.999f, 1e-8f, 0.1f));
            float **before = calloc((size_t)ps->n, sizeof(float *));
            for (int i = 0; i < ps->n; i++) before[i] = host_copy(ps, i);
            ms_rng r;
            ms_rng_init(&r, seed, 100 + m * 2 + s);
            float *x = malloc((size_t)B * 3 * S * S * sizeof(float));
            ms_fill_uniform(x, (int64_t)B * 3 * S * S, &r, -2, 2);
            int32_t *t = malloc((size_t)B * P * sizeof(int32_t));
            for (int64_t i = 0; i < B * P; i++) t[i] = (int32_t)ms_rng_below(&r, 3);
            ms_ft_loss L;
            MS_CHECK_OK(ms_ft_loss_init(&L, &dev, B * P));
            MS_CHECK_OK(ms_dev_from_host(&dev, fm.x, x, (size_t)B * 3 * S * S * sizeof(float)));
            MS_CHECK_OK(ms_ft_model_encode(&fm, fm.x, B));
            MS_CHECK_OK(ms_ft_model_decode(&fm, 0, fm.emb, B, NULL));
            double d, e;
            MS_CHECK_OK(ms_ft_loss_run(&L, fm.logits, t, B, 3, P, fm.dlogits, &d, &e));
            MS_CHECK_OK(ms_ft_model_backward(&fm, fm.dlogits));
            /* which trainable tensors got a gradient */
            int *has_grad = calloc((size_t)ps->n, sizeof(int));
            int n_tr = 0, n_grad = 0, n_peft_grad = 0, n_enc_grad = 0;
            for (int i = 0; i < ps->n; i++) {
                const ms_param *p = &ps->p[i];
                float *gd = ms_params_grad(ps, i);
                MS_CHECK((gd != NULL) == (p->trainable != 0), "%s: gradient memory iff trainable", p->name);
                if (!gd) continue;
                n_tr++;
                float *h = malloc((size_t)p->numel * sizeof(float));
                ms_dev_to_host(&dev, h, gd, (size_t)p->numel * sizeof(float));
                for (int64_t k = 0; k < p->numel && !has_grad[i]; k++) has_grad[i] = h[k] != 0;
                free(h);
                n_grad += has_grad[i];
                n_peft_grad += has_grad[i] && (strstr(p->name, "linear_") || strstr(p->name, ".w_a.") ||
                                               strstr(p->name, ".w_b.") || strstr(p->name, "Adapter"));
                n_enc_grad += has_grad[i] && !strncmp(p->name, "image_encoder.", 14);
            }
            MS_CHECK_OK(ms_optimizer_step(&opt, 1e-3f, NULL));
            int bad = 0, n_changed = 0;
            for (int i = 0; i < ps->n; i++) {
                const ms_param *p = &ps->p[i];
                float *after = host_copy(ps, i);
                int changed = memcmp(after, before[i], (size_t)p->numel * sizeof(float)) != 0, nonzero = 0;
                for (int64_t k = 0; k < p->numel && !nonzero; k++) nonzero = before[i][k] != 0;
                /* AdamW moves a trainable tensor when it has a gradient, or by decay when it decays and is non-zero */
                int expect = p->trainable && (has_grad[i] || (!p->no_decay && nonzero));
                if (changed != expect && bad++ < 5)
                    printf("  %s: changed %d, expected %d (trainable %d, grad %d, no_decay %d)\n", p->name, changed,
                           expect, p->trainable, has_grad[i], p->no_decay);
                n_changed += changed;
                free(after);
            }
            printf("%s/%s: loss %.4f, %d tensors, %d trainable, %d with a gradient (%d PEFT, %d encoder), %d changed\n",
                   ms_ft_method_name(c.method), ms_ft_scope_name(c.scope), d + e, ps->n, n_tr, n_grad, n_peft_grad,
                   n_enc_grad, n_changed);
            MS_CHECK(!bad, "%s/%s: %d tensors changed against the trainable set", ms_ft_method_name(c.method),
                     ms_ft_scope_name(c.scope), bad);
            MS_CHECK(n_grad > 0, "some gradient");
            if (m != MS_FT_FULL) MS_CHECK(n_peft_grad > 0, "%s: PEFT tensors get gradients", ms_ft_method_name(c.method));
            if (s == MS_FT_SCOPE_ENC_DEC) MS_CHECK(n_enc_grad > 0, "encoder+decoder: encoder tensors get gradients");
            else MS_CHECK(n_enc_grad == 0, "decoder scope: no encoder gradient");
            for (int i = 0; i < ps->n; i++) free(before[i]);
            free(before); free(has_grad); free(x); free(t);
            ms_ft_loss_free(&L);
            ms_optimizer_free(&opt);
            ms_ft_model_free(&fm);
        }
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    test_loss(seed);
    test_metric(seed);
    test_class_map(seed);
    test_small(seed);
    test_trainable_step(seed);
    return ms_test_done();
}
