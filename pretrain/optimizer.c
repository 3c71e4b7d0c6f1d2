/* pretrain/optimizer.c — see optimizer.h. */
#include "optimizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/path.h"
#include "ops.h"

ms_status ms_optimizer_init(ms_optimizer *o, ms_params *ps, float beta1, float beta2, float eps, float weight_decay)
{
    memset(o, 0, sizeof *o);
    o->ps = ps;
    o->beta1 = beta1;
    o->beta2 = beta2;
    o->eps = eps;
    o->weight_decay = weight_decay;
    o->lo = 0;
    o->hi = ps->numel_trainable;
    size_t bytes = (size_t)(ps->numel_trainable ? ps->numel_trainable : 1) * sizeof(float);
    ms_status rc = ms_dev_alloc(ps->dev, bytes, (void **)&o->m);
    if (!rc) rc = ms_dev_alloc(ps->dev, bytes, (void **)&o->v);
    if (!rc) rc = ms_dev_zero(ps->dev, o->m, bytes);
    if (!rc) rc = ms_dev_zero(ps->dev, o->v, bytes);
    if (rc) ms_optimizer_free(o);
    return rc;
}

/* Forgets the step table (ms_optimizer_step builds it again when needed). */
static void plan_drop(ms_optimizer *o)
{
    ms_adamw_plan_free(&o->plan);
    free(o->plan_skip);
    o->plan_skip = NULL;
    o->plan_data = o->plan_grad = NULL;
}

void ms_optimizer_free(ms_optimizer *o)
{
    plan_drop(o);
    if (o->ps && o->ps->dev) {
        ms_dev_free(o->ps->dev, o->m);
        ms_dev_free(o->ps->dev, o->v);
    }
    o->m = o->v = NULL;
}

ms_status ms_optimizer_shard(ms_optimizer *o, ms_dist *d)
{
    if (ms_dist_world(d) <= 1) return MS_OK;
    ms_params *ps = o->ps;
    int64_t lo, hi;
    ms_dist_range(ps->numel_trainable, ms_dist_rank(d), ms_dist_world(d), &lo, &hi);
    plan_drop(o); /* it points into the moments freed here */
    ms_dev_free(ps->dev, o->m);
    ms_dev_free(ps->dev, o->v);
    o->m = o->v = NULL;
    size_t bytes = (size_t)(hi > lo ? hi - lo : 1) * sizeof(float);
    MS_TRY(ms_dev_alloc(ps->dev, bytes, (void **)&o->m));
    MS_TRY(ms_dev_alloc(ps->dev, bytes, (void **)&o->v));
    MS_TRY(ms_dev_zero(ps->dev, o->m, bytes));
    MS_TRY(ms_dev_zero(ps->dev, o->v, bytes));
    o->lo = lo;
    o->hi = hi;
    o->dist = d;
    return MS_OK;
}

/* The part [*a, *b) of tensor p inside [lo, hi) of the gradient array; 0 when none. */
static int overlap(const ms_param *p, int64_t lo, int64_t hi, int64_t *a, int64_t *b)
{
    int64_t g = (int64_t)p->goff;
    *a = g > lo ? g : lo;
    *b = g + p->numel < hi ? g + p->numel : hi;
    return *a < *b;
}

/* ZeRO-1: this rank's updated parameters into its range of the gradient array, every rank's range gathered in
 * place, then every trainable tensor back from it. */
static ms_status gather_params(ms_optimizer *o)
{
    ms_params *ps = o->ps;
    int64_t a, b;
    for (int i = 0; i < ps->n; i++) {
        const ms_param *p = &ps->p[i];
        if (p->trainable && overlap(p, o->lo, o->hi, &a, &b))
            MS_TRY(ms_dev_copy(ps->dev, ps->grad + a, ps->data + p->off + (a - (int64_t)p->goff),
                               (size_t)(b - a) * sizeof(float)));
    }
    MS_TRY(ms_dist_allgather_inplace(o->dist, ps->grad, ps->numel_trainable));
    for (int i = 0; i < ps->n; i++) {
        const ms_param *p = &ps->p[i];
        if (p->trainable)
            MS_TRY(ms_dev_copy(ps->dev, ps->data + p->off, ps->grad + p->goff, (size_t)p->numel * sizeof(float)));
    }
    return MS_OK;
}

/* The spans ms_optimizer_step updates, as an ms_adamw_multi table: every trainable tensor's part inside [lo, hi),
 * except those named with skip_prefix. Kept with what it was built from. */
static ms_status plan_build(ms_optimizer *o, const char *skip_prefix)
{
    ms_params *ps = o->ps;
    size_t skip_n = skip_prefix ? strlen(skip_prefix) : 0;
    ms_adamw_tensor *t = malloc((size_t)(ps->n ? ps->n : 1) * sizeof *t);
    char *skip = skip_prefix ? strdup(skip_prefix) : NULL;
    if (!t || (skip_prefix && !skip)) {
        free(t);
        free(skip);
        return ms_error(MS_ENOMEM, "optimizer: out of memory");
    }
    int n = 0;
    int64_t a, b;
    for (int i = 0; i < ps->n; i++) {
        const ms_param *p = &ps->p[i];
        if (!p->trainable || !overlap(p, o->lo, o->hi, &a, &b)) continue;
        if (skip_n && !strncmp(p->name, skip_prefix, skip_n)) continue;
        t[n++] = (ms_adamw_tensor){.p = ps->data + p->off + (a - (int64_t)p->goff), .g = ps->grad + a,
                                   .m = o->m + (a - o->lo), .v = o->v + (a - o->lo), .n = b - a,
                                   .wd = p->no_decay ? 0.f : o->weight_decay};
    }
    ms_adamw_plan_free(&o->plan);
    free(o->plan_skip);
    o->plan_skip = NULL;
    ms_status rc = ms_adamw_plan_init(&o->plan, ps->dev, t, n);
    free(t);
    if (rc) {
        free(skip);
        return rc;
    }
    o->plan_skip = skip;
    o->plan_data = ps->data;
    o->plan_grad = ps->grad;
    return MS_OK;
}

/* One ms_adamw_multi over the table (one launch on CUDA), the table rebuilt only when its inputs changed. */
ms_status ms_optimizer_step(ms_optimizer *o, float lr, const char *skip_prefix)
{
    ms_params *ps = o->ps;
    int same = o->plan.dev == ps->dev && o->plan_data == ps->data && o->plan_grad == ps->grad &&
               (skip_prefix ? o->plan_skip && !strcmp(skip_prefix, o->plan_skip) : !o->plan_skip);
    if (!same) MS_TRY(plan_build(o, skip_prefix));
    MS_TRY(ms_adamw_multi(ps->dev, &o->plan, lr, o->beta1, o->beta2, o->eps, o->step + 1));
    o->step++;
    return o->dist ? gather_params(o) : MS_OK;
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

/* One loop for both directions: the names and the walk over trainable tensors must agree exactly. A sharded
 * optimizer loads the part of each tensor inside its range (saving needs the whole). */
static ms_status moments_io(ms_optimizer *o, ms_state_dict *sd, int save)
{
    const ms_params *ps = o->ps;
    ms_status rc = MS_OK;
    MS_FAIL_IF(save && (o->lo != 0 || o->hi != ps->numel_trainable), MS_EBADSTATE,
               "optimizer: a ZeRO-1 shard saves with ms_optimizer_shard_to_sd");
    for (int i = 0; i < ps->n && !rc; i++) {
        const ms_param *p = &ps->p[i];
        int64_t a, b;
        if (!p->trainable || !overlap(p, o->lo, o->hi, &a, &b)) continue;
        float *h = malloc((size_t)p->numel * sizeof(float));
        if (!h) return ms_error(MS_ENOMEM, "out of memory");
        char name[MS_PARAM_NAME_MAX + 4];
        for (int k = 0; k < 2 && !rc; k++) {
            float *d = (k ? o->v : o->m) + (a - o->lo);
            snprintf(name, sizeof name, "%c.%s", k ? 'v' : 'm', p->name);
            if (save) {
                rc = ms_dev_to_host(ps->dev, h, d, (size_t)p->numel * sizeof(float));
                if (!rc) rc = ms_sd_add(sd, name, MS_DTYPE_F32, p->shape, p->ndim, h);
            } else {
                rc = ms_sd_get_f32(sd, name, p->shape, p->ndim, h);
                if (!rc) rc = ms_dev_from_host(ps->dev, d, h + (a - (int64_t)p->goff), (size_t)(b - a) * sizeof(float));
            }
        }
        free(h);
    }
    return rc;
}

/* A sharded optimizer's moments as two flat tensors "<tag>.m", "<tag>.v" (its range of the gradient array). */
static ms_status shard_to_sd(const ms_optimizer *o, const char *tag, ms_state_dict *sd)
{
    int64_t n = o->hi - o->lo;
    float *h = malloc((size_t)(n ? n : 1) * sizeof(float));
    MS_FAIL_IF(!h, MS_ENOMEM, "out of memory");
    char name[80];
    ms_status rc = MS_OK;
    for (int k = 0; k < 2 && !rc; k++) {
        snprintf(name, sizeof name, "%s.%c", tag, k ? 'v' : 'm');
        rc = ms_dev_to_host(o->ps->dev, h, k ? o->v : o->m, (size_t)n * sizeof(float));
        if (!rc) rc = ms_sd_add(sd, name, MS_DTYPE_F32, &n, 1, h);
    }
    free(h);
    return rc;
}

/* One shard file's flat "<tag>.m" / "<tag>.v" (a rank's range, laid end to end after the earlier ranks' from *at):
 * the part inside this optimizer's [lo, hi) is kept, and *at moves past the file's range. */
static ms_status take_shard(ms_optimizer *o, const char *tag, const ms_state_dict *sd, const char *file, int64_t *at)
{
    int64_t len = -1;
    for (int k = 0; k < 2; k++) {
        char name[80];
        snprintf(name, sizeof name, "%s.%c", tag, k ? 'v' : 'm');
        const ms_sd_entry *e = ms_sd_find(sd, name);
        MS_FAIL_IF(!e || e->t.dtype != MS_DTYPE_F32 || e->t.ndim != 1 || (k && e->t.shape[0] != len), MS_EFORMAT,
                   "%s: %s: missing or not a flat float32 tensor as long as its m", file, name);
        len = e->t.shape[0];
        int64_t a = *at > o->lo ? *at : o->lo, b = *at + len < o->hi ? *at + len : o->hi;
        if (a < b)
            MS_TRY(ms_dev_from_host(o->ps->dev, (k ? o->v : o->m) + (a - o->lo), (const float *)e->t.data + (a - *at),
                                    (size_t)(b - a) * sizeof(float)));
    }
    *at += len;
    return MS_OK;
}

ms_status ms_optimizer_moments_to_sd(const ms_optimizer *o, ms_state_dict *sd)
{
    return moments_io((ms_optimizer *)o, sd, 1); /* save only reads the moments */
}

ms_status ms_optimizer_moments_from_sd(ms_optimizer *o, const ms_state_dict *sd)
{
    return moments_io(o, (ms_state_dict *)sd, 0); /* load only reads the state dict */
}

static ms_status shard_file(const char *dir, int rank, int world, char *out)
{
    return ms_path_fmt(out, "%s/optim.rank%03d-of-%03d.safetensors", dir, rank, world);
}

ms_status ms_optimizers_save(ms_optimizer *const *o, const char *const *tags, int n, const char *dir)
{
    char p[MS_PATH_MAX];
    ms_dist *d = n ? o[0]->dist : NULL;
    if (d) MS_TRY(shard_file(dir, ms_dist_rank(d), ms_dist_world(d), p));
    else MS_TRY(ms_path_join(p, dir, "optim.safetensors"));
    ms_state_dict sd;
    ms_sd_init(&sd);
    ms_status rc = MS_OK;
    for (int i = 0; i < n && !rc; i++)
        rc = d ? shard_to_sd(o[i], tags[i], &sd) : ms_optimizer_moments_to_sd(o[i], &sd);
    if (!rc) rc = ms_sd_save(p, &sd);
    ms_sd_free(&sd);
    return rc;
}

ms_status ms_optimizers_load(ms_optimizer *const *o, const char *const *tags, int n, const char *dir, int zero_world)
{
    char p[MS_PATH_MAX];
    ms_status rc = MS_OK;
    if (zero_world <= 0) {
        MS_TRY(ms_path_join(p, dir, "optim.safetensors"));
        ms_state_dict sd;
        ms_sd_init(&sd);
        rc = ms_sd_load(p, &sd);
        for (int i = 0; i < n && !rc; i++) rc = ms_optimizer_moments_from_sd(o[i], &sd);
        ms_sd_free(&sd);
        if (rc) ms_error_prefix("%s", p);
        return rc;
    }
    MS_FAIL_IF(zero_world > 100000, MS_EFORMAT, "%s/state.json: zero_world %d", dir, zero_world);
    MS_FAIL_IF(n > 8, MS_EINVAL, "optimizer: %d optimizers in one checkpoint (at most 8)", n);
    /* every shard file once, each optimizer taking its part: the files laid end to end are the whole moments */
    int64_t at[8] = {0};
    for (int q = 0; q < zero_world && !rc; q++) {
        ms_state_dict sd;
        ms_sd_init(&sd);
        rc = shard_file(dir, q, zero_world, p);
        if (!rc) rc = ms_sd_load(p, &sd);
        for (int i = 0; i < n && !rc; i++) rc = take_shard(o[i], tags[i], &sd, p, &at[i]);
        ms_sd_free(&sd);
    }
    for (int i = 0; i < n && !rc; i++)
        if (at[i] != o[i]->ps->numel_trainable)
            rc = ms_error(MS_EFORMAT, "%s: the %d optimizer shards hold %lld moments of %s, the model trains %lld", dir,
                          zero_world, (long long)at[i], tags[i], (long long)o[i]->ps->numel_trainable);
    return rc;
}
