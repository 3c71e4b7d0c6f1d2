/* kernels/cpu/optim.c — AdamW step (one tensor, or a table of them), sum of squares and in-place scaling
 * (contract: kernels/optim.h), plus the backend-generic ms_adamw_plan_init and ms_clip_grad_norm, built only from
 * ms_dev_* and the dispatched ms_sumsq / ms_scale_inplace so the same code serves CUDA.
 * AdamW follows torch.optim.AdamW (_single_tensor_adamw) step by step in float; the bias corrections are
 * computed in double, as torch does in Python. adamw_step and adamw_multi share the element loop (adamw_span) and
 * the constants, and split the work into MS_ADAMW_CHUNK pieces (elementwise: any split gives the same bits).
 * sumsq sums squares in double over chunks fixed by n and adds the chunk partials in order: the total does not
 * depend on the thread count.
 */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_par.h"

/* The per-step constants, computed once per call as torch does (bias corrections in double). */
typedef struct { float step_size, bc2_sqrt, omb1, omb2; } adamw_k;

static ms_status adamw_consts(const char *who, float lr, float beta1, float beta2, int64_t step, adamw_k *k)
{
    MS_FAIL_IF(step < 1, MS_EINVAL, "%s: step %lld (steps count from 1)", who, (long long)step);
    MS_FAIL_IF(!(beta1 >= 0.f && beta1 < 1.f && beta2 >= 0.f && beta2 < 1.f), MS_EINVAL,
               "%s: betas (%g, %g) outside [0, 1)", who, (double)beta1, (double)beta2);
    double bc1 = 1.0 - pow((double)beta1, (double)step), bc2 = 1.0 - pow((double)beta2, (double)step);
    k->step_size = (float)((double)lr / bc1);
    k->bc2_sqrt = (float)sqrt(bc2);
    k->omb1 = (float)(1.0 - (double)beta1);
    k->omb2 = (float)(1.0 - (double)beta2);
    return MS_OK;
}

static float adamw_decay(float lr, float wd) { return (float)(1.0 - (double)lr * (double)wd); }

/* Elements [i0, i1) of one tensor: the float expressions both ops share (so adamw_multi equals adamw_step). */
static inline void adamw_span(float *p, const float *g, float *m, float *v, int64_t i0, int64_t i1, float decay,
                              float beta1, float beta2, float eps, const adamw_k *k)
{
    for (int64_t i = i0; i < i1; i++) {
        float gi = g[i];
        float pi = p[i] * decay;
        float mi = beta1 * m[i] + k->omb1 * gi;
        float vi = beta2 * v[i] + k->omb2 * gi * gi;
        float denom = sqrtf(vi) / k->bc2_sqrt + eps;
        p[i] = pi - k->step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}

ms_status ms_adamw_step_cpu(ms_device *dev, float *p, const float *g, float *m, float *v, int64_t n, float lr,
                            float beta1, float beta2, float eps, float wd, int64_t step)
{
    MS_FAIL_IF(n < 0, MS_EINVAL, "adamw_step: negative size %lld", (long long)n);
    adamw_k k;
    MS_TRY(adamw_consts("adamw_step", lr, beta1, beta2, step, &k));
    float decay = adamw_decay(lr, wd);
    int nt = ms_cpu_threads(dev);
    int64_t nch = (n + MS_ADAMW_CHUNK - 1) / MS_ADAMW_CHUNK;
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= MS_CPU_PAR_MIN)
    for (int64_t c = 0; c < nch; c++) {
        int64_t i0 = c * MS_ADAMW_CHUNK, i1 = i0 + MS_ADAMW_CHUNK < n ? i0 + MS_ADAMW_CHUNK : n;
        adamw_span(p, g, m, v, i0, i1, decay, beta1, beta2, eps, &k);
    }
    return MS_OK;
}

/* The tensor holding chunk c: the last t with chunk0[t] <= c (empty tensors own no chunk). */
static int chunk_tensor(const int64_t *chunk0, int n, int64_t c)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (chunk0[mid] <= c) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

ms_status ms_adamw_multi_cpu(ms_device *dev, const ms_adamw_plan *pl, float lr, float beta1, float beta2, float eps,
                             int64_t step)
{
    MS_FAIL_IF(!pl || pl->dev != dev, MS_EINVAL, "adamw_multi: the plan was built for another device");
    adamw_k k;
    MS_TRY(adamw_consts("adamw_multi", lr, beta1, beta2, step, &k));
    int nt = ms_cpu_threads(dev);
    int64_t nch = pl->n ? pl->chunk0[pl->n] : 0;
#pragma omp parallel for num_threads(nt) schedule(static) if (pl->numel >= MS_CPU_PAR_MIN)
    for (int64_t c = 0; c < nch; c++) {
        int ti = chunk_tensor(pl->chunk0, pl->n, c);
        const ms_adamw_tensor *t = &pl->t[ti];
        int64_t i0 = (c - pl->chunk0[ti]) * MS_ADAMW_CHUNK;
        int64_t i1 = i0 + MS_ADAMW_CHUNK < t->n ? i0 + MS_ADAMW_CHUNK : t->n;
        adamw_span(t->p, t->g, t->m, t->v, i0, i1, adamw_decay(lr, t->wd), beta1, beta2, eps, &k);
    }
    return MS_OK;
}

ms_status ms_sumsq_cpu(ms_device *dev, double *out, const float *x, int64_t n)
{
    MS_FAIL_IF(n < 0, MS_EINVAL, "sumsq: negative size %lld", (long long)n);
    int64_t nch = ms_cpu_nchunks(n, 8192);
    double part[MS_CPU_MAX_CHUNKS];
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= MS_CPU_PAR_MIN)
    for (int64_t ch = 0; ch < nch; ch++) {
        int64_t i0, i1;
        ms_cpu_chunk(n, nch, ch, &i0, &i1);
        double s = 0;
        for (int64_t i = i0; i < i1; i++) s += (double)x[i] * x[i];
        part[ch] = s;
    }
    double s = 0;
    for (int64_t ch = 0; ch < nch; ch++) s += part[ch];
    *out += s;
    return MS_OK;
}

ms_status ms_scale_inplace_cpu(ms_device *dev, float *x, float alpha, int64_t n)
{
    MS_FAIL_IF(n < 0, MS_EINVAL, "scale_inplace: negative size %lld", (long long)n);
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (n >= MS_CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) x[i] *= alpha;
    return MS_OK;
}

void ms_adamw_plan_free(ms_adamw_plan *pl)
{
    if (pl->dev_table) ms_dev_free(pl->dev, pl->dev_table);
    free(pl->t);
    free(pl->chunk0);
    memset(pl, 0, sizeof *pl);
}

/* Backend-generic: the device copy goes through ms_dev_alloc / ms_dev_from_host (once, here, not per step). */
ms_status ms_adamw_plan_init(ms_adamw_plan *pl, ms_device *dev, const ms_adamw_tensor *t, int n)
{
    memset(pl, 0, sizeof *pl);
    MS_FAIL_IF(!dev || n < 0 || (n > 0 && !t), MS_EINVAL, "adamw_plan: bad tensor list");
    for (int i = 0; i < n; i++)
        MS_FAIL_IF(t[i].n < 0 || (t[i].n > 0 && (!t[i].p || !t[i].g || !t[i].m || !t[i].v)), MS_EINVAL,
                   "adamw_plan: tensor %d: negative size or NULL buffer", i);
    pl->dev = dev;
    pl->n = n;
    size_t tb = (size_t)(n ? n : 1) * sizeof *t, cb = (size_t)(n + 1) * sizeof(int64_t);
    pl->t = malloc(tb);
    pl->chunk0 = malloc(cb);
    if (!pl->t || !pl->chunk0) {
        ms_adamw_plan_free(pl);
        return ms_error(MS_ENOMEM, "adamw_plan: out of memory");
    }
    if (n) memcpy(pl->t, t, (size_t)n * sizeof *t);
    pl->chunk0[0] = 0;
    for (int i = 0; i < n; i++) {
        pl->chunk0[i + 1] = pl->chunk0[i] + (t[i].n + MS_ADAMW_CHUNK - 1) / MS_ADAMW_CHUNK;
        pl->numel += t[i].n;
    }
    if (dev->kind == MS_DEV_CUDA) { /* t, then chunk0 at tb (a multiple of 8 bytes) */
        ms_status rc = ms_dev_alloc(dev, tb + cb, &pl->dev_table);
        if (!rc && n) rc = ms_dev_from_host(dev, pl->dev_table, pl->t, (size_t)n * sizeof *t);
        if (!rc) rc = ms_dev_from_host(dev, (char *)pl->dev_table + tb, pl->chunk0, cb);
        if (rc) {
            ms_adamw_plan_free(pl);
            return rc;
        }
    }
    return MS_OK;
}

/* A NULL gradient (frozen tensor) is skipped. A non-finite norm is returned without scaling, so the caller can
 * see it and skip the step (torch would scale every gradient to NaN). */
ms_status ms_clip_grad_norm(ms_device *dev, float *const *grads, const int64_t *sizes, int n_tensors, float max_norm,
                            float *norm_out)
{
    MS_FAIL_IF(n_tensors < 0 || (n_tensors > 0 && (!grads || !sizes)), MS_EINVAL, "clip_grad_norm: bad tensor list");
    double total = 0;
    for (int i = 0; i < n_tensors; i++)
        if (grads[i] && sizes[i] > 0) MS_TRY(ms_sumsq(dev, &total, grads[i], sizes[i]));
    double norm = sqrt(total);
    if (norm_out) *norm_out = (float)norm;
    if (max_norm > 0 && isfinite(norm) && norm > max_norm) {
        float coef = (float)((double)max_norm / (norm + 1e-6));
        for (int i = 0; i < n_tensors; i++)
            if (grads[i] && sizes[i] > 0) MS_TRY(ms_scale_inplace(dev, grads[i], coef, sizes[i]));
    }
    return MS_OK;
}
