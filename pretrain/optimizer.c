/* pretrain/optimizer.c — see optimizer.h. */
#include "optimizer.h"

#include <math.h>
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
