/* pretrain/optimizer.c — see optimizer.h. */
#include "optimizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

ms_status ms_optimizer_init(ms_optimizer *o, ms_params *ps, float beta1, float beta2, float eps, float weight_decay)
{
    memset(o, 0, sizeof *o);
    o->ps = ps;
    o->beta1 = beta1;
    o->beta2 = beta2;
    o->eps = eps;
    o->weight_decay = weight_decay;
    size_t bytes = (size_t)(ps->numel_trainable ? ps->numel_trainable : 1) * sizeof(float);
    ms_status rc = ms_dev_alloc(ps->dev, bytes, (void **)&o->m);
    if (!rc) rc = ms_dev_alloc(ps->dev, bytes, (void **)&o->v);
    if (!rc) rc = ms_dev_zero(ps->dev, o->m, bytes);
    if (!rc) rc = ms_dev_zero(ps->dev, o->v, bytes);
    if (rc) ms_optimizer_free(o);
    return rc;
}

void ms_optimizer_free(ms_optimizer *o)
{
    if (o->ps && o->ps->dev) {
        ms_dev_free(o->ps->dev, o->m);
        ms_dev_free(o->ps->dev, o->v);
    }
    o->m = o->v = NULL;
}

ms_status ms_optimizer_step(ms_optimizer *o, float lr, const char *skip_prefix)
{
    ms_params *ps = o->ps;
    size_t skip_n = skip_prefix ? strlen(skip_prefix) : 0;
    for (int i = 0; i < ps->n; i++) {
        const ms_param *p = &ps->p[i];
        if (!p->trainable) continue;
        if (skip_n && !strncmp(p->name, skip_prefix, skip_n)) continue;
        float wd = p->no_decay ? 0.f : o->weight_decay;
        MS_TRY(ms_adamw_step(ps->dev, ps->data + p->off, ps->grad + p->goff, o->m + p->goff, o->v + p->goff, p->numel,
                             lr, o->beta1, o->beta2, o->eps, wd, o->step + 1));
    }
    o->step++;
    return MS_OK;
}

float ms_lr_at(ms_schedule kind, int64_t step, int64_t warmup, int64_t total, float base_lr, float min_lr)
{
    if (warmup > 0 && step < warmup) return base_lr * (float)(step + 1) / (float)warmup;
    if (kind == MS_SCHED_CONSTANT || total <= warmup) return base_lr;
    double t = (double)(step - warmup) / (double)(total - warmup);
    if (t > 1) t = 1;
    if (kind == MS_SCHED_POLY) return (float)(base_lr * pow(1.0 - t, 0.9));
    return (float)(min_lr + (base_lr - min_lr) * 0.5 * (1.0 + cos(M_PI * t)));
}

/* One loop for both directions: the names and the walk over trainable tensors must agree exactly. */
static ms_status moments_io(ms_optimizer *o, ms_state_dict *sd, int save)
{
    const ms_params *ps = o->ps;
    ms_status rc = MS_OK;
    for (int i = 0; i < ps->n && !rc; i++) {
        const ms_param *p = &ps->p[i];
        if (!p->trainable) continue;
        float *h = malloc((size_t)p->numel * sizeof(float));
        if (!h) return ms_error(MS_ENOMEM, "out of memory");
        char name[MS_PARAM_NAME_MAX + 4];
        for (int k = 0; k < 2 && !rc; k++) {
            float *d = (k ? o->v : o->m) + p->goff;
            snprintf(name, sizeof name, "%c.%s", k ? 'v' : 'm', p->name);
            if (save) {
                rc = ms_dev_to_host(ps->dev, h, d, (size_t)p->numel * sizeof(float));
                if (!rc) rc = ms_sd_add(sd, name, MS_DTYPE_F32, p->shape, p->ndim, h);
            } else {
                rc = ms_sd_get_f32(sd, name, p->shape, p->ndim, h);
                if (!rc) rc = ms_dev_from_host(ps->dev, d, h, (size_t)p->numel * sizeof(float));
            }
        }
        free(h);
    }
    return rc;
}

ms_status ms_optimizer_moments_to_sd(const ms_optimizer *o, ms_state_dict *sd)
{
    return moments_io((ms_optimizer *)o, sd, 1); /* save only reads the moments */
}

ms_status ms_optimizer_moments_from_sd(ms_optimizer *o, const ms_state_dict *sd)
{
    return moments_io(o, (ms_state_dict *)sd, 0); /* load only reads the state dict */
}
