/* tests/pretrain/test_mae_graph_cuda.c — the MAE step with CUDA graphs on a GPU (label gpu; exits 77 without a
 * CUDA backend or a GPU): 10 optimizer steps of vit_test at 64 px, batch 2 × 2 accumulation steps, each backward
 * through pretrain/step_graph.h (the first eager, the second captured, the rest replayed), against the same run
 * without graphs. The replays launch the eager kernels with the same arguments, so losses, gradient norms and the
 * final parameters must be equal bit for bit — as long as the eager run is itself deterministic, which a second
 * eager run checks first (if it is not, the graphs' run must stay within the eager runs' own spread, stated below).
 * Both precisions. NEVER RUN: written without a GPU (docs/PERFORMANCE-gpu-notes.md §CUDA graphs).
 */
#include <math.h>
#include <unistd.h>

#include "mae_graph_run.h"
#include "base/cuda_bridge.h"

#define STEPS 10

static double spread(const gr_record *a, const gr_record *b)
{
    double d = 0;
    for (int i = 0; i < a->steps && i < b->steps; i++) d = fmax(d, fabs(a->loss[i] - b->loss[i]));
    return d;
}

static void one_precision(ms_device *dev, const char *tmp, const char *store, uint64_t seed, ms_precision prec)
{
    char n0[32], n1[32], n2[32];
    dev->precision = prec;
    snprintf(n0, sizeof n0, "eager_%d", (int)prec);
    snprintf(n1, sizeof n1, "again_%d", (int)prec);
    snprintf(n2, sizeof n2, "graph_%d", (int)prec);
    gr_record a = {0}, a2 = {0}, g = {0};
    MS_CHECK_OK(gr_run(dev, tmp, store, n0, seed, STEPS, 0, &a));
    MS_CHECK_OK(gr_run(dev, tmp, store, n1, seed, STEPS, 0, &a2));
    MS_CHECK_OK(gr_run(dev, tmp, store, n2, seed, STEPS, 1, &g));
    MS_CHECK(a.steps == STEPS && g.steps == STEPS, "%s: %d and %d steps", ms_precision_name(prec), a.steps, g.steps);
    if (a.steps == a2.steps && !memcmp(a.loss, a2.loss, sizeof a.loss) &&
        !memcmp(a.block, a2.block, (size_t)a.numel * sizeof(float))) {
        gr_equal(&a, &g, ms_precision_name(prec));
    } else { /* stated tolerance: within twice the eager runs' own spread of the losses */
        double s = spread(&a, &a2), d = spread(&a, &g);
        printf("note: %s eager runs differ (loss spread %.3g): comparing within 2x that\n", ms_precision_name(prec), s);
        MS_CHECK(d <= 2 * s + 1e-7, "%s: graphs' loss differs by %.3g (eager spread %.3g)", ms_precision_name(prec), d,
                 s);
    }
    free(a.block);
    free(a2.block);
    free(g.block);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    if (!ms_cuda_probe()) {
        printf("skip: no CUDA backend or no GPU\n");
        return MS_TEST_SKIP;
    }
    ms_device dev = {0};
    MS_CHECK_OK(ms_device_init(&dev, MS_DEV_CUDA, 1));
    char tmp[256], store[MS_PATH_MAX];
    snprintf(tmp, sizeof tmp, "/tmp/test_mae_graph_cuda_XXXXXX");
    MS_CHECK(mkdtemp(tmp) != NULL, "mkdtemp");
    MS_CHECK_OK(ms_path_join(store, tmp, "store"));
    const fx_vol vols[] = {{40, 48, 12, 0}, {48, 40, 12, 0}};
    MS_CHECK_OK(fx_make_store(store, seed, vols, 2));
    one_precision(&dev, tmp, store, seed, MS_PREC_FP32);
    one_precision(&dev, tmp, store, seed, MS_PREC_BF16);
    ms_device_free(&dev);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd)) printf("note: could not remove %s\n", tmp);
    return ms_test_done();
}
