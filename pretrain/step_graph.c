/* pretrain/step_graph.c — capture / replay / eager for a training step's device work (step_graph.h).
 * Tested by tests/pretrain/test_mae_graph.c (the rule, the CPU's stub) and test_mae_graph_cuda.c (replays equal
 * eager steps on a GPU). */
#include "step_graph.h"

#include <string.h>

static int sig_eq(const ms_step_sig *a, const ms_step_sig *b) { return !memcmp(a->v, b->v, sizeof a->v); }

ms_step_mode ms_step_graph_decide(const ms_step_graph *s, const ms_step_sig *sig, uint64_t grows)
{
    if (!s->enabled) return MS_STEP_EAGER;
    if (s->have_graph && grows == s->graph_grows && sig_eq(&s->gsig, sig)) return MS_STEP_REPLAY;
    if (s->have_warm && grows == s->warm_grows && sig_eq(&s->warm, sig)) return MS_STEP_CAPTURE;
    return MS_STEP_EAGER;
}

void ms_step_graph_advance(ms_step_graph *s, ms_step_mode mode, const ms_step_sig *sig, uint64_t grows)
{
    s->have_warm = 0;
    if (!s->enabled) {
        s->eager++;
        return;
    }
    if (mode == MS_STEP_REPLAY) {
        s->replays++;
    } else if (mode == MS_STEP_CAPTURE) {
        s->gsig = *sig;
        s->graph_grows = grows; /* a capture cannot reallocate: the count it was recorded under */
        s->have_graph = 1;
        s->captures++;
    } else { /* the warm-up: the count after it, as its workspaces now have their sizes */
        s->warm = *sig;
        s->warm_grows = grows;
        s->have_warm = 1;
        s->eager++;
    }
}

static ms_status capture(ms_step_graph *s, ms_device *dev, ms_status (*fn)(void *), void *ctx)
{
    ms_graph *g = NULL;
    MS_TRY(ms_graph_begin(dev));
    ms_status rc = fn(ctx);
    ms_status re = ms_graph_end(dev, &g); /* always: the stream leaves capture mode */
    if (rc) {
        ms_graph_free(g);
        return rc;
    }
    MS_TRY(re);
    ms_graph_free(s->graph);
    s->graph = g;
    return ms_graph_launch(dev, g); /* capturing ran nothing */
}

ms_status ms_step_graph_run(ms_step_graph *s, ms_device *dev, const ms_step_sig *sig, ms_status (*fn)(void *ctx),
                            void *ctx)
{
    ms_step_mode mode = ms_step_graph_decide(s, sig, ms_cuda_grow_count(dev));
    s->have_warm = 0; /* a failed step warms nothing up */
    if (mode == MS_STEP_REPLAY) MS_TRY(ms_graph_launch(dev, s->graph));
    else if (mode == MS_STEP_CAPTURE) MS_TRY(capture(s, dev, fn, ctx));
    else MS_TRY(fn(ctx));
    ms_step_graph_advance(s, mode, sig, ms_cuda_grow_count(dev));
    return MS_OK;
}

void ms_step_graph_free(ms_step_graph *s)
{
    ms_graph_free(s->graph);
    s->graph = NULL;
    s->have_graph = s->have_warm = 0;
}

int64_t ms_step_sig_hash(int64_t h, const int32_t *x, int64_t n)
{
    uint64_t u = (uint64_t)h ^ 0xcbf29ce484222325ull;
    for (int64_t i = 0; i < n; i++) {
        u ^= (uint32_t)x[i];
        u *= 0x100000001b3ull;
    }
    return (int64_t)u;
}
