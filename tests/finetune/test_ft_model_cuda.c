/* tests/finetune/test_ft_model_cuda.c — the fine-tunable model on CUDA against the CPU path: for full, LoRA and
 * adapter (encoder+decoder, two tasks), the logits of both tasks and the gradients of every trainable tensor after a
 * random upstream gradient. Same seed → same initial values on both devices (init is drawn on the host); LoRA B /
 * w_b are set non-zero so the PEFT paths matter. Skips (77) without a CUDA backend or GPU.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "base/rng.h"
#include "finetune/ft_model.h"

static ms_status set_random(ms_params *ps, const char *substr, uint64_t seed)
{
    for (int i = 0; i < ps->n; i++) {
        if (!strstr(ps->p[i].name, substr)) continue;
        ms_rng r;
        ms_rng_init(&r, seed, (uint64_t)i);
        float *h = malloc((size_t)ps->p[i].numel * sizeof(float));
        ms_fill_uniform(h, ps->p[i].numel, &r, -0.2f, 0.2f);
        ms_status st = ms_dev_from_host(ps->dev, ps->data + ps->p[i].off, h, (size_t)ps->p[i].numel * sizeof(float));
        free(h);
        MS_TRY(st);
    }
    return MS_OK;
}

static float *to_host(ms_device *dev, const float *d, int64_t n)
{
    float *h = malloc((size_t)n * sizeof(float));
    if (ms_dev_to_host(dev, h, d, (size_t)n * sizeof(float))) { free(h); return NULL; }
    return h;
}

static void run_case(ms_device *cpu, ms_device *gpu, ms_ft_method method, uint64_t seed)
{
    ms_ft_config c;
    ms_ft_config_default(&c);
    snprintf(c.model, sizeof c.model, "vit_test");
    ms_prep_config_default(&c.prep, 256);
    c.method = method;
    c.scope = MS_FT_SCOPE_ENC_DEC;
    c.n_tasks = 2;
    c.task[1] = c.task[0];
    snprintf(c.task[1].name, MS_FT_NAME_MAX, "second");
    c.task[1].num_cls = 3;
    c.task[1].values[2] = 2;
    ms_ft_model a, b;
    ms_status st = ms_ft_model_build(&a, &c, NULL, seed, cpu);
    MS_CHECK_OK(st);
    if (st) return;
    st = ms_ft_model_build(&b, &c, NULL, seed, gpu);
    MS_CHECK_OK(st);
    if (st) { ms_ft_model_free(&a); return; }
    MS_CHECK_OK(set_random(&a.sam.ps, "linear_b_", seed + 1));
    MS_CHECK_OK(set_random(&b.sam.ps, "linear_b_", seed + 1));
    MS_CHECK_OK(set_random(&a.sam.ps, ".w_b.", seed + 2));
    MS_CHECK_OK(set_random(&b.sam.ps, ".w_b.", seed + 2));
    const int B = 2, S = 256, lo = 64;
    MS_CHECK_OK(ms_ft_model_reserve(&a, B, 1));
    MS_CHECK_OK(ms_ft_model_reserve(&b, B, 1));
    ms_rng r;
    ms_rng_init(&r, seed, 77);
    int64_t nx = (int64_t)B * 3 * S * S;
    float *x = malloc((size_t)nx * sizeof(float));
    ms_fill_uniform(x, nx, &r, -2.f, 2.f);
    MS_CHECK_OK(ms_dev_from_host(cpu, a.x, x, (size_t)nx * sizeof(float)));
    MS_CHECK_OK(ms_dev_from_host(gpu, b.x, x, (size_t)nx * sizeof(float)));
    for (int t = 0; t < 2; t++) {
        MS_CHECK_OK(ms_params_zero_grads(&a.sam.ps));
        MS_CHECK_OK(ms_params_zero_grads(&b.sam.ps));
        MS_CHECK_OK(ms_ft_model_encode(&a, a.x, B));
        MS_CHECK_OK(ms_ft_model_encode(&b, b.x, B));
        MS_CHECK_OK(ms_ft_model_decode(&a, t, a.emb, B, NULL));
        MS_CHECK_OK(ms_ft_model_decode(&b, t, b.emb, B, NULL));
        int64_t n = (int64_t)B * a.last_C * lo * lo;
        float *lg = to_host(gpu, b.logits, n);
        ms_cmp cm = ms_compare_f(lg, a.logits, n);
        MS_CHECK(lg && cm.max_rel < 1e-3, "%s task %d logits: max rel %.3g", ms_ft_method_name(method), t, cm.max_rel);
        float *dl = malloc((size_t)n * sizeof(float));
        ms_fill_uniform(dl, n, &r, -1.f, 1.f);
        float *ddl = NULL;
        MS_CHECK_OK(ms_dev_alloc(gpu, (size_t)n * sizeof(float), (void **)&ddl));
        MS_CHECK_OK(ms_dev_from_host(gpu, ddl, dl, (size_t)n * sizeof(float)));
        MS_CHECK_OK(ms_ft_model_backward(&a, dl));
        MS_CHECK_OK(ms_ft_model_backward(&b, ddl));
        /* Normwise error per tensor, against a floor: some gradients are zero in exact arithmetic (a key bias
         * shifts every logit of a softmax row equally), and there both sides hold only rounding noise. The
         * floor is 1e-3 of the model's RMS gradient entry, times sqrt(numel). The bound, 5e-3, leaves room for
         * ill-conditioned but real gradients: the shared IoU token reaches a second task's logits only through
         * attention, and one seed (217080662720) gives 1.9e-3 there, the same on every rerun and thread count
         * (rounding, not a race); everything else stays under 3e-4. A wrong kernel is off by O(1). */
        float **hg = calloc((size_t)a.sam.ps.n, sizeof *hg);
        double ss = 0;
        int64_t cnt = 0;
        for (int i = 0; i < a.sam.ps.n; i++) {
            const float *ga = ms_params_grad(&a.sam.ps, i), *gb = ms_params_grad(&b.sam.ps, i);
            MS_CHECK((ga == NULL) == (gb == NULL), "%s: gradient presence differs", a.sam.ps.p[i].name);
            if (!ga || !gb) continue;
            hg[i] = to_host(gpu, gb, a.sam.ps.p[i].numel);
            for (int64_t k = 0; k < a.sam.ps.p[i].numel; k++) ss += (double)ga[k] * ga[k];
            cnt += a.sam.ps.p[i].numel;
        }
        double rms = cnt ? sqrt(ss / (double)cnt) : 0;
        double worst = 0;
        const char *wn = "";
        for (int i = 0; i < a.sam.ps.n; i++) {
            if (!hg[i]) continue;
            const float *ga = ms_params_grad(&a.sam.ps, i);
            double dd = 0, rr = 0;
            int64_t numel = a.sam.ps.p[i].numel;
            for (int64_t k = 0; k < numel; k++) {
                double d = (double)hg[i][k] - ga[k];
                dd += d * d;
                rr += (double)ga[k] * ga[k];
            }
            double e = sqrt(dd) / fmax(sqrt(rr), 1e-3 * rms * sqrt((double)numel));
            if (!(e <= worst)) { worst = e; wn = a.sam.ps.p[i].name; }
            free(hg[i]);
        }
        free(hg);
        MS_CHECK(worst < 5e-3, "%s task %d: worst normwise gradient error %.3g (%s)", ms_ft_method_name(method), t,
                 worst, wn);
        printf("%-7s task %d: logits max rel %.2e, worst gradient %.2e (%s)\n", ms_ft_method_name(method), t,
               cm.max_rel, worst, wn);
        ms_dev_free(gpu, ddl);
        free(dl);
        free(lg);
    }
    free(x);
    ms_ft_model_free(&a);
    ms_ft_model_free(&b);
}

int main(void)
{
    if (!ms_cuda_available()) { printf("skip: no CUDA backend or no GPU\n"); return MS_TEST_SKIP; }
    uint64_t seed = ms_test_seed();
    ms_device cpu, gpu;
    if (ms_device_init(&cpu, MS_DEV_CPU, 0) || ms_device_init(&gpu, MS_DEV_CUDA, 0)) {
        /* a GPU is visible, so failing to open it is a failure, not a reason to skip */
        printf("FAIL: device init: %s\n", ms_errmsg());
        return 1;
    }
    run_case(&cpu, &gpu, MS_FT_FULL, seed);
    run_case(&cpu, &gpu, MS_FT_LORA, seed);
    run_case(&cpu, &gpu, MS_FT_ADAPTER, seed);
    ms_device_free(&gpu);
    ms_device_free(&cpu);
    return ms_test_done();
}
