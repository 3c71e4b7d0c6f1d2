/* pretrain/grad_sync.c — see grad_sync.h. */
#include "grad_sync.h"

void ms_grad_sync_init(ms_grad_sync *g, ms_dist *d, size_t bucket_bytes)
{
    *g = (ms_grad_sync){.d = d};
    size_t bb = bucket_bytes > 0 ? bucket_bytes : (size_t)25 << 20;
    g->bucket_n = (int64_t)(bb / sizeof(float)) > 0 ? (int64_t)(bb / sizeof(float)) : 1;
}

ms_status ms_grad_sync_add(ms_grad_sync *g, ms_params *ps)
{
    MS_FAIL_IF(g->n == MS_GRAD_SYNC_MAX, MS_EINVAL, "gradient sync: more than %d parameter blocks", MS_GRAD_SYNC_MAX);
    g->ps[g->n] = ps;
    g->started[g->n] = ps->numel_trainable;
    g->n++;
    return MS_OK;
}

void ms_grad_sync_arm(ms_grad_sync *g)
{
    g->armed = 1;
    for (int k = 0; k < g->n; k++) g->started[k] = g->ps[k]->numel_trainable;
}

/* Starts the buckets of block k that lie wholly in [lo, started): the grid is counted from the end, so the
 * bucket below `started` is [max(0, started − bucket_n), started) — the same cut on every rank. */
static ms_status start_from(ms_grad_sync *g, int k, int64_t lo, int early)
{
    if (lo < 0) lo = 0;
    while (g->started[k] > lo) {
        int64_t hi = g->started[k], b0 = hi - g->bucket_n > 0 ? hi - g->bucket_n : 0;
        if (b0 < lo) break; /* partly still being written */
        MS_TRY(ms_dist_start(g->d, g->ps[k]->grad + b0, (size_t)(hi - b0)));
        g->started[k] = b0;
        g->buckets_early += early;
    }
    return MS_OK;
}

ms_status ms_grad_sync_ready(void *ctx, const ms_params *ps, int64_t lo)
{
    ms_grad_sync *g = ctx;
    if (!g->d || !g->armed) return MS_OK;
    int at = 0;
    while (at < g->n && g->ps[at] != ps) at++;
    if (at == g->n) return MS_OK; /* not a block this sync reduces */
    for (int k = 0; k < at; k++) MS_TRY(start_from(g, k, 0, 1)); /* finished before ps's backward began */
    return start_from(g, at, lo, 1);
}

ms_status ms_grad_sync_finish(ms_grad_sync *g)
{
    /* not armed (this rank's last loss was not finite, so no backward reported): every bucket starts here, as
     * the other ranks' do, in the same order */
    if (!g->armed) ms_grad_sync_arm(g);
    g->armed = 0;
    if (!g->d) return MS_OK;
    for (int k = 0; k < g->n; k++) MS_TRY(start_from(g, k, 0, 0));
    return ms_dist_wait(g->d);
}
