/* tests/pretrain/test_mae_graph.c — CUDA graphs of the MAE step on the CPU (pretrain/step_graph.h,
 * docs/PERFORMANCE-gpu-notes.md §CUDA graphs):
 *  (a) the bridge's graph calls on a CPU device fail with MS_EDEVICE and a message, leave *out NULL, and nothing
 *      counts as capturing or grown;
 *  (b) the rule (ms_step_graph_decide / _advance) on random sequences of signatures and workspace reallocations,
 *      against the rule restated over the history of calls: replay iff the newest capture had this signature and
 *      count; else capture iff the call just before ran eagerly with this signature and nothing grew since; else
 *      eager; and disabled: always eager;
 *  (c) ms_step_graph_run on the CPU with graphs disabled calls the step eagerly, every time;
 *  (d) an MAE run with cuda_graphs = 1 on the CPU equals the run without, bit for bit (the option is ignored).
 */
#include <unistd.h>

#include "mae_graph_run.h"
#include "base/cuda_bridge.h"
#include "base/rng.h"
#include "pretrain/step_graph.h"

static uint64_t SEED;

static void check_stub(ms_device *cpu)
{
    ms_graph *g = (ms_graph *)&g; /* anything non-NULL */
    MS_CHECK(ms_graph_begin(cpu) == MS_EDEVICE && ms_errmsg()[0], "begin on the CPU: MS_EDEVICE with a message");
    MS_CHECK(ms_graph_end(cpu, &g) == MS_EDEVICE && g == NULL, "end on the CPU: MS_EDEVICE, *out NULL");
    MS_CHECK(ms_graph_launch(cpu, NULL) != MS_OK, "launch on the CPU fails");
    MS_CHECK(!ms_graph_capturing(cpu) && ms_cuda_grow_count(cpu) == 0, "the CPU never captures nor grows");
    ms_graph_free(NULL);
}

typedef struct call {
    ms_step_mode mode;
    int sig;
    uint64_t before, after;
} call;

/* The rule restated over the history h[0..n). */
static ms_step_mode reference(const call *h, int n, int sig, uint64_t grows, int enabled)
{
    if (!enabled) return MS_STEP_EAGER;
    for (int i = n - 1; i >= 0; i--)
        if (h[i].mode == MS_STEP_CAPTURE) {
            if (h[i].sig == sig && h[i].before == grows) return MS_STEP_REPLAY;
            break;
        }
    if (n && h[n - 1].mode == MS_STEP_EAGER && h[n - 1].sig == sig && h[n - 1].after == grows) return MS_STEP_CAPTURE;
    return MS_STEP_EAGER;
}

static void check_rule(void)
{
    enum { N = 400 };
    static call h[N];
    ms_rng r;
    ms_rng_init(&r, SEED, 13);
    for (int trial = 0; trial < 20; trial++) {
        ms_step_graph s = {0};
        s.enabled = trial % 5 != 4;
        int nsig = 1 + (int)(ms_rng_u64(&r) % 3), bad = 0;
        uint64_t grows = 0;
        int64_t modes[3] = {0, 0, 0};
        for (int n = 0; n < N && !bad; n++) {
            /* runs of one signature (a partial batch now and then), a forward that grows now and then */
            int sig = n && ms_rng_u64(&r) % 10 < 8 ? h[n - 1].sig : (int)(ms_rng_u64(&r) % nsig);
            if (ms_rng_u64(&r) % 17 == 0) grows++;
            ms_step_sig ss = {{sig, 2, 0, 0x3f000000, -7, 11, 0, 0}};
            ms_step_mode want = reference(h, n, sig, grows, s.enabled);
            ms_step_mode got = ms_step_graph_decide(&s, &ss, grows);
            uint64_t before = grows;
            if (got == MS_STEP_EAGER && ms_rng_u64(&r) % 9 == 0) grows++; /* a warm-up that sizes a workspace */
            ms_step_graph_advance(&s, got, &ss, grows);
            h[n] = (call){got, sig, before, grows};
            modes[got]++;
            if (got != want) {
                MS_CHECK(0, "trial %d call %d: mode %d, the rule says %d", trial, n, (int)got, (int)want);
                bad = 1;
            }
        }
        if (!bad) MS_CHECK(s.eager == modes[0] && s.captures == modes[1] && s.replays == modes[2],
                           "trial %d: counts %lld/%lld/%lld", trial, (long long)s.eager, (long long)s.captures,
                           (long long)s.replays);
        if (!bad && s.enabled && nsig == 1)
            MS_CHECK(modes[2] > N / 2, "one shape replays mostly: %lld", (long long)modes[2]);
        if (!s.enabled) MS_CHECK(modes[1] + modes[2] == 0, "disabled: eager only");
    }
    /* one signature field differs: not the graph's */
    ms_step_graph s = {0};
    s.enabled = 1;
    ms_step_sig a = {{1, 2, 3, 4, 5, 6, 7, 8}}, b = a;
    ms_step_graph_advance(&s, MS_STEP_EAGER, &a, 0);
    ms_step_graph_advance(&s, MS_STEP_CAPTURE, &a, 0);
    for (int k = 0; k < MS_STEP_SIG_N; k++) {
        b = a;
        b.v[k] ^= 1 << (ms_rng_u64(&r) % 30);
        MS_CHECK(ms_step_graph_decide(&s, &b, 0) == MS_STEP_EAGER, "field %d changed: eager", k);
    }
    MS_CHECK(ms_step_graph_decide(&s, &a, 0) == MS_STEP_REPLAY && ms_step_graph_decide(&s, &a, 1) == MS_STEP_EAGER,
             "the graph's signature replays, unless a workspace was reallocated");
    int32_t x[5] = {1, 2, 3, 4, 5}, y[5] = {1, 2, 3, 5, 4};
    MS_CHECK(ms_step_sig_hash(0, x, 5) != ms_step_sig_hash(0, y, 5), "the offsets' hash sees order");
}

static ms_status count_call(void *ctx)
{
    (*(int *)ctx)++;
    return MS_OK;
}

static void check_run_cpu(ms_device *cpu)
{
    ms_step_graph s = {0}; /* enabled 0: what mae_run sets on the CPU */
    ms_step_sig sig = {{0}};
    int n = 0;
    for (int i = 0; i < 5; i++) MS_CHECK_OK(ms_step_graph_run(&s, cpu, &sig, count_call, &n));
    MS_CHECK(n == 5 && s.eager == 5 && !s.captures && !s.replays && !s.graph, "5 eager calls, no graph: %d", n);
    ms_step_graph_free(&s);
}

int main(void)
{
    SEED = ms_test_seed();
    ms_device cpu = {0};
    MS_CHECK_OK(ms_device_init(&cpu, MS_DEV_CPU, 1));
    check_stub(&cpu);
    check_rule();
    check_run_cpu(&cpu);
    char tmp[256], store[MS_PATH_MAX];
    snprintf(tmp, sizeof tmp, "/tmp/test_mae_graph_XXXXXX");
    MS_CHECK(mkdtemp(tmp) != NULL, "mkdtemp");
    MS_CHECK_OK(ms_path_join(store, tmp, "store"));
    const fx_vol vols[] = {{40, 48, 6, 0}, {48, 40, 6, 0}};
    MS_CHECK_OK(fx_make_store(store, SEED, vols, 2));
    gr_record a = {0}, b = {0};
    MS_CHECK_OK(gr_run(&cpu, tmp, store, "eager", SEED, 3, 0, &a));
    MS_CHECK_OK(gr_run(&cpu, tmp, store, "graphs", SEED, 3, 1, &b));
    MS_CHECK(a.steps == 3, "3 steps: %d", a.steps);
    gr_equal(&a, &b, "cuda_graphs on the CPU");
    free(a.block);
    free(b.block);
    ms_device_free(&cpu);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd)) printf("note: could not remove %s\n", tmp);
    return ms_test_done();
}
