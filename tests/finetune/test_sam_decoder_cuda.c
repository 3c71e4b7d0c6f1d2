/* tests/finetune/test_sam_decoder_cuda.c — prompt encoder + mask decoder on CUDA against the CPU path, forward and
 * backward, for three prompt/batch layouts (fresh random weights and inputs each run). Skips (77) without a CUDA
 * build or a visible GPU. Tolerance: normwise 1e-4 per tensor (3e-4 for the token→image q/k projection gradients,
 * see test_sam_decoder_golden.h); the CUDA kernels may use other summation orders and fast exponentials.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/clock.h"
#include "finetune/sam_decoder.h"
#include "ops.h"
#include "test_sam_decoder_golden.h"

typedef struct run {
    ms_device *dev;
    ms_params ps;
    ms_sam_prompt pe;
    ms_sam_decoder dec;
    ms_sam_prompt_state pst;
    float *emb, *mask, *dmasks, *diou, *demb, *ddense; /* device */
    float *masks_h, *iou_h, *demb_h, *dsparse_h;       /* host results */
} run;

typedef struct layout {
    const char *name;
    int b_img, bp, np, box, mask, M;
} layout;

static float *upload(ms_device *dev, const float *h, int64_t n, ms_status *st)
{
    float *d = NULL;
    if (*st) return NULL;
    *st = ms_dev_alloc(dev, (size_t)(n ? n : 1) * sizeof(float), (void **)&d);
    if (!*st && h) *st = ms_dev_from_host(dev, d, h, (size_t)n * sizeof(float));
    if (!*st && !h) *st = ms_dev_zero(dev, d, (size_t)n * sizeof(float));
    return d;
}

static ms_status do_run(run *r, const layout *L, uint64_t seed, const float *emb, const float *mask, const float *pts,
                        const int32_t *lab, const float *box, const float *dm, const float *di)
{
    const int h = 16, w = 16;
    const int64_t N = (int64_t)h * w, P = 16 * N, B = L->b_img > L->bp ? L->b_img : L->bp;
    ms_status st = MS_OK;
    ms_params_init(&r->ps);
    memset(&r->pst, 0, sizeof r->pst);
    MS_TRY(ms_sam_prompt_init(&r->pe, &r->ps, "prompt_encoder.", h, w, 256));
    MS_TRY(ms_sam_decoder_init(&r->dec, &r->ps, "mask_decoder.", L->M, 2, h, w));
    MS_TRY(ms_params_alloc(&r->ps, r->dev));
    for (int i = 0; i < r->ps.n; i++) {
        const ms_param *p = &r->ps.p[i];
        float *tmp = malloc((size_t)p->numel * sizeof(float));
        decoder_weight(tmp, p->name, p->shape, p->ndim, seed);
        st = ms_dev_from_host(r->dev, ms_params_data(&r->ps, i), tmp, (size_t)p->numel * sizeof(float));
        free(tmp);
        MS_TRY(st);
    }
    ms_params_set_trainable(&r->ps, "", 1);
    ms_sam_prompt_freeze_buffers(&r->pe);
    MS_TRY(ms_params_alloc_grads(&r->ps));
    r->emb = upload(r->dev, emb, (int64_t)L->b_img * 256 * N, &st);
    r->mask = L->mask ? upload(r->dev, mask, (int64_t)L->bp * P, &st) : NULL;
    r->dmasks = upload(r->dev, dm, B * L->M * P, &st);
    r->diou = upload(r->dev, di, B * L->M, &st);
    r->demb = upload(r->dev, NULL, (int64_t)L->b_img * 256 * N, &st);
    r->ddense = L->mask ? upload(r->dev, NULL, (int64_t)L->bp * 256 * N, &st) : NULL;
    MS_TRY(st);
    ms_sam_prompts pr = {.bp = L->bp, .n_points = L->np, .points = pts, .labels = lab,
                         .boxes = L->box ? box : NULL, .masks = r->mask};
    MS_TRY(ms_sam_prompt_forward(r->dev, &r->pe, &pr, &r->pst));
    MS_TRY(ms_sam_decoder_forward(r->dev, &r->dec, r->emb, L->b_img, &r->pst));
    r->masks_h = malloc((size_t)(B * L->M * P) * sizeof(float));
    r->iou_h = malloc((size_t)(B * L->M) * sizeof(float));
    r->demb_h = malloc((size_t)L->b_img * 256 * N * sizeof(float));
    r->dsparse_h = calloc((size_t)L->bp * (r->pst.ns + 1) * 256, sizeof(float));
    MS_TRY(ms_dev_to_host(r->dev, r->masks_h, r->dec.masks, (size_t)(B * L->M * P) * sizeof(float)));
    MS_TRY(ms_dev_to_host(r->dev, r->iou_h, r->dec.iou, (size_t)(B * L->M) * sizeof(float)));
    MS_TRY(ms_sam_decoder_backward(r->dev, &r->dec, r->dmasks, r->diou, r->demb, r->dsparse_h, r->ddense));
    MS_TRY(ms_sam_prompt_backward(r->dev, &r->pe, &r->pst, r->dsparse_h, r->ddense));
    return ms_dev_to_host(r->dev, r->demb_h, r->demb, (size_t)L->b_img * 256 * N * sizeof(float));
}

static void run_free(run *r)
{
    if (!r->dev) return;
    ms_dev_free(r->dev, r->emb); ms_dev_free(r->dev, r->mask); ms_dev_free(r->dev, r->dmasks);
    ms_dev_free(r->dev, r->diou); ms_dev_free(r->dev, r->demb); ms_dev_free(r->dev, r->ddense);
    free(r->masks_h); free(r->iou_h); free(r->demb_h); free(r->dsparse_h);
    ms_sam_prompt_state_free(r->dev, &r->pst);
    ms_sam_decoder_free(&r->dec);
    ms_params_free(&r->ps);
}

static void cmp(const char *what, const char *key, const float *gpu, const float *cpu, int64_t n)
{
    double e = 0, m = 0;
    for (int64_t i = 0; i < n; i++) { e = fmax(e, fabs((double)gpu[i] - cpu[i])); m = fmax(m, fabs((double)cpu[i])); }
    double tol = strstr(key, "token_to_image") && (strstr(key, "q_proj") || strstr(key, "k_proj")) ? 3e-4 : 1e-4;
    if (strstr(key, "k_proj.bias")) { MS_CHECK(e <= 1e-5, "%s %s: %.3g (exact 0)", what, key, e); return; }
    if (e / (m > 0 ? m : 1) > worst_err) { worst_err = e / (m > 0 ? m : 1); snprintf(worst_key, sizeof worst_key, "%s %s", what, key); }
    MS_CHECK(e <= tol * m || (m == 0 && e == 0), "%s %s: normwise %.3g (max|cpu| %.3g)", what, key, e / m, m);
}

/* MS_TEST_BENCH=1: seconds per forward and per forward+backward at SAM's real size (64×64 grid, one image, one
 * point prompt, every tensor trainable), on one device. */
static void bench(ms_device *dev, const char *name)
{
    const int h = 64, w = 64, M = 4, reps = 5;
    const int64_t N = (int64_t)h * w, P = 16 * N;
    ms_params ps;
    ms_sam_prompt pe;
    ms_sam_decoder dec;
    ms_sam_prompt_state pst;
    memset(&pst, 0, sizeof pst);
    ms_params_init(&ps);
    float *emb = NULL, *dm = NULL, *di = NULL, *demb = NULL, pts[2] = {500, 400};
    int32_t lab[1] = {1};
    ms_status st = ms_sam_prompt_init(&pe, &ps, "prompt_encoder.", h, w, 1024);
    if (!st) st = ms_sam_decoder_init(&dec, &ps, "mask_decoder.", M, 2, h, w);
    if (!st) st = ms_params_alloc(&ps, dev);
    if (!st) st = ms_params_alloc_grads(&ps);
    emb = upload(dev, NULL, 256 * N, &st);
    dm = upload(dev, NULL, M * P, &st);
    di = upload(dev, NULL, M, &st);
    demb = upload(dev, NULL, 256 * N, &st);
    ms_sam_prompts pr = {.bp = 1, .n_points = 1, .points = pts, .labels = lab};
    double tf = 0, tb = 0;
    for (int r = 0; r <= reps && !st; r++) {
        double t0 = ms_now_s();
        st = ms_sam_prompt_forward(dev, &pe, &pr, &pst);
        if (!st) st = ms_sam_decoder_forward(dev, &dec, emb, 1, &pst);
        if (!st) st = ms_dev_sync(dev);
        double t1 = ms_now_s();
        if (!st) st = ms_sam_decoder_backward(dev, &dec, dm, di, demb, NULL, NULL);
        if (!st) st = ms_dev_sync(dev);
        double t2 = ms_now_s();
        if (r) { tf += t1 - t0; tb += t2 - t0; } /* rep 0 warms up (allocations) */
    }
    if (st) printf("bench %s: %s\n", name, ms_errmsg());
    else printf("bench %s (%d threads): decoder at 64x64, 1 point: forward %.4f s, forward+backward %.4f s\n", name,
                dev->n_threads, tf / reps, tb / reps);
    ms_dev_free(dev, emb); ms_dev_free(dev, dm); ms_dev_free(dev, di); ms_dev_free(dev, demb);
    ms_sam_prompt_state_free(dev, &pst);
    ms_sam_decoder_free(&dec);
    ms_params_free(&ps);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    if (!ms_cuda_available()) { printf("skip: no CUDA backend or no GPU\n"); return MS_TEST_SKIP; }
    ms_device cpu, gpu;
    if (ms_device_init(&cpu, MS_DEV_CPU, 0) || ms_device_init(&gpu, MS_DEV_CUDA, 0)) {
        /* a GPU is visible, so failing to open it is a failure, not a reason to skip */
        printf("FAIL: device init: %s\n", ms_errmsg());
        return 1;
    }
    const layout layouts[] = {{"points, 2 prompts on 1 image", 1, 2, 3, 0, 0, 4},
                              {"box + point + mask", 1, 1, 1, 1, 1, 4},
                              {"no prompts, 2 images, num_cls 5", 2, 1, 0, 0, 0, 6}};
    const int64_t N = 256, P = 16 * N;
    for (size_t li = 0; li < sizeof layouts / sizeof layouts[0]; li++) {
        const layout *L = &layouts[li];
        const int64_t B = L->b_img > L->bp ? L->b_img : L->bp;
        ms_rng r;
        ms_rng_init(&r, seed, 100 + li);
        float *emb = malloc((size_t)L->b_img * 256 * N * sizeof(float)), *mask = malloc((size_t)L->bp * P * sizeof(float));
        float *dm = malloc((size_t)(B * L->M * P) * sizeof(float)), di[16], pts[16], box[4] = {30, 40, 200, 180};
        int32_t lab[8] = {1, 0, -1, 1, 1, 0, 1, 1};
        ms_fill_uniform(emb, L->b_img * 256 * N, &r, -1, 1);
        ms_fill_uniform(mask, L->bp * P, &r, -3, 3);
        ms_fill_uniform(dm, B * L->M * P, &r, -0.1f, 0.1f);
        ms_fill_uniform(di, 16, &r, -1, 1);
        ms_fill_uniform(pts, 16, &r, 0, 256);
        run rc_, rg_;
        memset(&rc_, 0, sizeof rc_);
        memset(&rg_, 0, sizeof rg_);
        rc_.dev = &cpu;
        rg_.dev = &gpu;
        ms_status s1 = do_run(&rc_, L, seed, emb, mask, pts, lab, box, dm, di);
        MS_CHECK(s1 == MS_OK, "%s, cpu: %s", L->name, ms_errmsg());
        ms_status s2 = s1 ? s1 : do_run(&rg_, L, seed, emb, mask, pts, lab, box, dm, di);
        MS_CHECK(s2 == MS_OK, "%s, cuda: %s", L->name, ms_errmsg());
        if (!s1 && !s2) {
            cmp(L->name, "masks", rg_.masks_h, rc_.masks_h, B * L->M * P);
            cmp(L->name, "iou", rg_.iou_h, rc_.iou_h, B * L->M);
            cmp(L->name, "image gradient", rg_.demb_h, rc_.demb_h, L->b_img * 256 * N);
            float *gg = malloc((size_t)rc_.ps.numel * sizeof(float));
            for (int i = 0; i < rc_.ps.n; i++) {
                const float *gc = ms_params_grad(&rc_.ps, i);
                float *gd = ms_params_grad(&rg_.ps, i);
                if (!gc || !gd) continue;
                if (ms_dev_to_host(&gpu, gg, gd, (size_t)rc_.ps.p[i].numel * sizeof(float))) break;
                cmp(L->name, rc_.ps.p[i].name, gg, gc, rc_.ps.p[i].numel);
            }
            free(gg);
        }
        run_free(&rc_);
        run_free(&rg_);
        free(emb); free(mask); free(dm);
    }
    printf("largest normwise difference: %.3g (%s)\n", worst_err, worst_key);
    if (getenv("MS_TEST_BENCH")) {
        bench(&cpu, "cpu");
        bench(&gpu, "cuda");
    }
    ms_device_free(&gpu);
    ms_device_free(&cpu);
    return ms_test_done();
}
