/* tests/pretrain/test_optimizer.c — ms_optimizer_step (one ms_adamw_multi over a table it builds once and keeps)
 * against the walk it replaced: one ms_adamw_step per trainable tensor, with weight decay 0 on no_decay tensors and
 * skip_prefix honoured.
 *
 * A parameter set of random sizes (1, non-multiples of 4, chunk edges), random no_decay flags and a frozen tensor;
 * eight steps with fresh random gradients, a changing lr and a skip_prefix that changes between steps (NULL, "enc.",
 * "dec.", NULL again: the table must follow it). After every step the parameters and both moments equal the
 * reference bit for bit. Seed printed; MS_TEST_SEED replays.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "ops.h"
#include "pretrain/optimizer.h"
#include "pretrain/params.h"

enum { NT = 7, STEPS = 8 };

int main(void)
{
    uint64_t seed = ms_test_seed();
    ms_rng r;
    ms_rng_init(&r, seed, 1);
    ms_device dev = {0};
    MS_CHECK_OK(ms_device_init(&dev, MS_DEV_CPU, 2));
    static const int64_t pick[] = {1, 3, 5, 77, 4095, 4096, 4097, 9001};
    ms_params ps;
    ms_params_init(&ps);
    char name[NT][32];
    for (int i = 0; i < NT; i++) {
        int64_t shape[2] = {i == 0 ? 1 : pick[ms_rng_below(&r, sizeof pick / sizeof *pick)], 1 + (int64_t)ms_rng_below(&r, 3)};
        if (i == 1) shape[0] = 20011; /* above the threading threshold */
        snprintf(name[i], sizeof name[i], "%s.%d.w", i < NT / 2 ? "enc" : "dec", i);
        MS_CHECK(ms_params_add(&ps, name[i], shape, 2, (int)ms_rng_below(&r, 2)) == i, "add %s: %s", name[i], ms_errmsg());
    }
    MS_CHECK_OK(ms_params_alloc(&ps, &dev));
    ms_params_set_trainable(&ps, "", 1);
    int frozen = 2 + (int)ms_rng_below(&r, NT - 2);
    char fp[40];
    snprintf(fp, sizeof fp, "%s", name[frozen]);
    MS_CHECK(ms_params_set_trainable(&ps, fp, 0) == 1, "freeze %s", fp);
    MS_CHECK_OK(ms_params_alloc_grads(&ps));
    ms_fill_uniform(ps.data, ps.numel, &r, -1, 1);

    /* the reference: its own copy of every value and its own moments, laid out like the gradients */
    float *pref = malloc((size_t)ps.numel * sizeof(float));
    float *mref = calloc((size_t)ps.numel_trainable + 1, sizeof(float)), *vref = calloc((size_t)ps.numel_trainable + 1, sizeof(float));
    memcpy(pref, ps.data, (size_t)ps.numel * sizeof(float));
    ms_optimizer o;
    MS_CHECK_OK(ms_optimizer_init(&o, &ps, 0.9f, 0.95f, 1e-8f, 0.05f));
    static const char *skip[STEPS] = {NULL, NULL, "enc.", "enc.", "dec.", NULL, "dec.", NULL};
    int same = 1;
    for (int s = 0; s < STEPS; s++) {
        float lr = 1e-3f * (float)(STEPS - s) / STEPS;
        ms_fill_uniform(ps.grad, ps.numel_trainable, &r, -1, 1);
        MS_CHECK_OK(ms_optimizer_step(&o, lr, skip[s]));
        for (int i = 0; i < ps.n; i++) {
            const ms_param *p = &ps.p[i];
            if (!p->trainable || (skip[s] && !strncmp(p->name, skip[s], strlen(skip[s])))) continue;
            MS_CHECK_OK(ms_adamw_step_cpu(&dev, pref + p->off, ps.grad + p->goff, mref + p->goff, vref + p->goff, p->numel, lr,
                                          0.9f, 0.95f, 1e-8f, p->no_decay ? 0.f : 0.05f, s + 1));
        }
        int ok = !memcmp(pref, ps.data, (size_t)ps.numel * sizeof(float)) &&
                 !memcmp(mref, o.m, (size_t)ps.numel_trainable * sizeof(float)) &&
                 !memcmp(vref, o.v, (size_t)ps.numel_trainable * sizeof(float));
        MS_CHECK(ok, "step %d (skip %s): parameters or moments differ from per-tensor adamw_step", s + 1,
                 skip[s] ? skip[s] : "none");
        same &= ok;
    }
    MS_CHECK(o.step == STEPS, "step counter %lld", (long long)o.step);
    /* the frozen tensor never moved */
    const ms_param *pf = &ps.p[frozen];
    MS_CHECK(!memcmp(ps.data + pf->off, pref + pf->off, (size_t)pf->numel * sizeof(float)), "frozen tensor");
    printf("optimizer: %d tensors (%lld trainable floats, %s frozen), %d steps with changing skip_prefix: %s\n", NT,
           (long long)ps.numel_trainable, fp, STEPS, same ? "bit-identical to per-tensor adamw_step" : "DIFFERENT");
    ms_optimizer_free(&o);
    ms_optimizer_free(&o); /* twice: a no-op */
    free(pref); free(mref); free(vref);
    ms_params_free(&ps);
    ms_device_free(&dev);
    return ms_test_done();
}
