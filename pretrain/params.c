/* pretrain/params.c — see params.h. */
#include "params.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ms_params_init(ms_params *ps) { memset(ps, 0, sizeof *ps); }

void ms_params_free(ms_params *ps)
{
    if (ps->dev) {
        ms_dev_free(ps->dev, ps->data);
        ms_dev_free(ps->dev, ps->grad);
    }
    free(ps->p);
    memset(ps, 0, sizeof *ps);
}

int ms_params_find(const ms_params *ps, const char *name)
{
    for (int i = 0; i < ps->n; i++)
        if (!strcmp(ps->p[i].name, name)) return i;
    return -1;
}

int ms_params_add(ms_params *ps, const char *name, const int64_t *shape, int ndim, int no_decay)
{
    if (ndim < 0 || ndim > 4 || strlen(name) >= MS_PARAM_NAME_MAX) {
        ms_error(MS_EINVAL, "%s: bad parameter (ndim %d)", name, ndim);
        return -1;
    }
    if (ps->data) {
        ms_error(MS_EBADSTATE, "%s: parameters already allocated", name);
        return -1;
    }
    if (ms_params_find(ps, name) >= 0) {
        ms_error(MS_EINVAL, "%s: duplicate parameter", name);
        return -1;
    }
    if (ps->n == ps->cap) {
        int cap = ps->cap ? 2 * ps->cap : 64;
        ms_param *p = realloc(ps->p, (size_t)cap * sizeof *p);
        if (!p) { ms_error(MS_ENOMEM, "out of memory"); return -1; }
        ps->p = p;
        ps->cap = cap;
    }
    ms_param *p = &ps->p[ps->n];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->numel = 1;
    for (int i = 0; i < ndim; i++) { p->shape[i] = shape[i]; p->numel *= shape[i]; }
    p->off = (size_t)ps->numel;
    ps->numel += (p->numel + 15) & ~(int64_t)15; /* 64-byte alignment per tensor */
    p->no_decay = no_decay;
    p->trainable = 1;
    return ps->n++;
}

ms_status ms_params_alloc(ms_params *ps, ms_device *dev)
{
    ps->dev = dev;
    MS_TRY(ms_dev_alloc(dev, (size_t)(ps->numel ? ps->numel : 1) * sizeof(float), (void **)&ps->data));
    return ms_dev_zero(dev, ps->data, (size_t)ps->numel * sizeof(float));
}

int ms_params_set_trainable(ms_params *ps, const char *prefix, int trainable)
{
    int k = 0;
    size_t n = strlen(prefix);
    for (int i = 0; i < ps->n; i++)
        if (!strncmp(ps->p[i].name, prefix, n)) { ps->p[i].trainable = trainable && !ps->p[i].buffer; k++; }
    return k;
}

int ms_params_set_optional(ms_params *ps, const char *prefix, int optional)
{
    int k = 0;
    size_t n = strlen(prefix);
    for (int i = 0; i < ps->n; i++)
        if (!strncmp(ps->p[i].name, prefix, n)) { ps->p[i].optional = optional; k++; }
    return k;
}

/* One gradient's floats in the gradient block: 64-byte aligned, like the parameters. */
static int64_t grad_span(int64_t numel) { return (numel + 15) & ~(int64_t)15; }

size_t ms_params_train_bytes(const ms_params *ps)
{
    int64_t t = 0;
    for (int i = 0; i < ps->n; i++)
        if (ps->p[i].trainable) t += grad_span(ps->p[i].numel);
    return (size_t)(ps->numel + 3 * t) * sizeof(float);
}

ms_status ms_params_alloc_grads(ms_params *ps)
{
    MS_FAIL_IF(!ps->dev, MS_EBADSTATE, "parameters not allocated");
    ms_dev_free(ps->dev, ps->grad);
    ps->grad = NULL;
    int64_t t = 0;
    for (int i = 0; i < ps->n; i++)
        if (ps->p[i].trainable) { ps->p[i].goff = (size_t)t; t += grad_span(ps->p[i].numel); }
    ps->numel_trainable = t;
    if (!t) return MS_OK;
    MS_TRY(ms_dev_alloc(ps->dev, (size_t)t * sizeof(float), (void **)&ps->grad));
    return ms_params_zero_grads(ps);
}

ms_status ms_params_zero_grads(ms_params *ps)
{
    if (!ps->grad) return MS_OK;
    return ms_dev_zero(ps->dev, ps->grad, (size_t)ps->numel_trainable * sizeof(float));
}

float *ms_params_data(const ms_params *ps, int idx) { return ps->data + ps->p[idx].off; }

float *ms_params_grad(const ms_params *ps, int idx)
{
    if (!ps->grad || !ps->p[idx].trainable) return NULL;
    return ps->grad + ps->p[idx].goff;
}

ms_status ms_params_load(ms_params *ps, const ms_state_dict *sd, const char *unknown_prefix)
{
    MS_FAIL_IF(!ps->data, MS_EBADSTATE, "parameters not allocated");
    int bad = 0;
    char first[600] = "";
    /* Check everything first, so that an error loads nothing. */
    for (int i = 0; i < ps->n; i++) {
        const ms_param *p = &ps->p[i];
        const ms_sd_entry *e = ms_sd_find(sd, p->name);
        char msg[600];
        msg[0] = 0;
        if (!e && p->optional) continue;
        if (!e) snprintf(msg, sizeof msg, "%s: missing", p->name);
        else {
            int ok = e->t.ndim == p->ndim;
            for (int d = 0; ok && d < p->ndim; d++) ok = e->t.shape[d] == p->shape[d];
            if (!ok) {
                char a[128], b[128];
                snprintf(msg, sizeof msg, "%s: shape %s in file, expected %s", p->name,
                         ms_shape_str(e->t.shape, e->t.ndim, a, sizeof a), ms_shape_str(p->shape, p->ndim, b, sizeof b));
            }
        }
        if (msg[0]) {
            fprintf(stderr, "%s\n", msg);
            if (!bad++) snprintf(first, sizeof first, "%s", msg);
        }
    }
    if (unknown_prefix) {
        size_t n = strlen(unknown_prefix);
        for (int i = 0; i < sd->n; i++)
            if (!strncmp(sd->e[i].name, unknown_prefix, n) && ms_params_find(ps, sd->e[i].name) < 0) {
                fprintf(stderr, "%s: unexpected key\n", sd->e[i].name);
                if (!bad++) snprintf(first, sizeof first, "%s: unexpected key", sd->e[i].name);
            }
    }
    if (bad) return ms_error(MS_ESHAPE, "%d key problem(s), first: %.400s", bad, first);
    float *tmp = NULL;
    int64_t maxn = 0;
    for (int i = 0; i < ps->n; i++) if (ps->p[i].numel > maxn) maxn = ps->p[i].numel;
    tmp = malloc((size_t)(maxn ? maxn : 1) * sizeof(float));
    MS_FAIL_IF(!tmp, MS_ENOMEM, "out of memory");
    ms_status rc = MS_OK;
    for (int i = 0; i < ps->n && !rc; i++) {
        const ms_param *p = &ps->p[i];
        if (p->optional && !ms_sd_find(sd, p->name)) continue;
        rc = ms_sd_get_f32(sd, p->name, p->shape, p->ndim, tmp);
        if (!rc) rc = ms_dev_from_host(ps->dev, ps->data + p->off, tmp, (size_t)p->numel * sizeof(float));
    }
    free(tmp);
    return rc;
}

ms_status ms_params_load_prefix(ms_params *ps, const ms_state_dict *sd, const char *prefix)
{
    size_t np = prefix ? strlen(prefix) : 0;
    ms_status rc = MS_OK;
    for (int i = 0; i < ps->n && !rc; i++) {
        const ms_param *p = &ps->p[i];
        if (np && strncmp(p->name, prefix, np)) continue;
        float *h = malloc((size_t)(p->numel ? p->numel : 1) * sizeof(float));
        if (!h) return ms_error(MS_ENOMEM, "out of memory");
        rc = ms_sd_get_f32(sd, p->name, p->shape, p->ndim, h);
        if (!rc) rc = ms_dev_from_host(ps->dev, ps->data + p->off, h, (size_t)p->numel * sizeof(float));
        free(h);
    }
    return rc;
}

ms_status ms_params_to_sd(const ms_params *ps, ms_state_dict *sd)
{
    ms_status rc = MS_OK;
    for (int i = 0; i < ps->n && !rc; i++) {
        const ms_param *p = &ps->p[i];
        float *tmp = malloc((size_t)(p->numel ? p->numel : 1) * sizeof(float));
        if (!tmp) return ms_error(MS_ENOMEM, "out of memory");
        rc = ms_dev_to_host(ps->dev, tmp, ps->data + p->off, (size_t)p->numel * sizeof(float));
        if (!rc) rc = ms_sd_add(sd, p->name, MS_DTYPE_F32, p->shape, p->ndim, tmp);
        free(tmp);
    }
    return rc;
}
