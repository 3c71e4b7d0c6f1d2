/* pretrain/step_graph.h — a training step's stretch of device work as a CUDA graph, where its shapes are fixed
 * (docs/PERFORMANCE-gpu-notes.md §CUDA graphs). Opt-in (ms_mae_run_config.cuda_graphs).
 *
 * The caller describes each step by a signature: everything the recorded launches depend on that may change from
 * step to step (batch, token counts, the per-window layout of the mask, scalar arguments), and the device's
 * workspace reallocation count (ms_cuda_grow_count: a reallocation frees pointers a graph may hold). The rule
 * (ms_step_graph_decide, pure): a signature seen for the first time runs eagerly (the warm-up: it sizes every
 * workspace); if the very next step has the same signature and no reallocation came in between, it is captured
 * (and the graph then launched: capturing runs nothing), replacing any older graph; a signature and count equal to
 * the graph's replay it. Anything else runs eagerly. So a lasting change of shape costs one eager step and one
 * capture, while a one-off (the last partial batch of an epoch) costs one eager step and keeps the graph.
 */
#ifndef MS_STEP_GRAPH_H
#define MS_STEP_GRAPH_H

#include <stdint.h>

#include "base/cuda_bridge.h"

#define MS_STEP_SIG_N 8

typedef struct ms_step_sig {
    int64_t v[MS_STEP_SIG_N]; /* the caller's fields; compared whole */
} ms_step_sig;

typedef enum { MS_STEP_EAGER = 0, MS_STEP_CAPTURE = 1, MS_STEP_REPLAY = 2 } ms_step_mode;

typedef struct ms_step_graph {
    int enabled;         /* 0: every step eager (the CPU, several ranks, or not asked for) */
    int have_warm;       /* the previous step ran eagerly: its signature and count */
    int have_graph;
    ms_step_sig warm;
    ms_step_sig gsig;    /* the graph's */
    uint64_t warm_grows, graph_grows; /* ms_cuda_grow_count after the warm-up step, at the capture */
    ms_graph *graph;
    int64_t eager, captures, replays; /* counts, for logs and tests */
} ms_step_graph;

/* What the next step with signature sig does, the device's reallocation count being grows (no side effects). */
ms_step_mode ms_step_graph_decide(const ms_step_graph *s, const ms_step_sig *sig, uint64_t grows);

/* The state after a step that ran as mode with signature sig, the reallocation count being grows after it (the
 * graph pointer aside: ms_step_graph_run sets it). Pure, like decide: the CPU tests drive both. */
void ms_step_graph_advance(ms_step_graph *s, ms_step_mode mode, const ms_step_sig *sig, uint64_t grows);

/* Runs fn(ctx) on dev for a step with signature sig as ms_step_graph_decide says, and updates s. fn must only
 * launch device work on dev's stream (no host copies, no synchronisation) when it may be captured. */
ms_status ms_step_graph_run(ms_step_graph *s, ms_device *dev, const ms_step_sig *sig, ms_status (*fn)(void *ctx),
                            void *ctx);

void ms_step_graph_free(ms_step_graph *s);

/* FNV-1a over n int32 (a mask's window offsets into a signature field). */
int64_t ms_step_sig_hash(int64_t h, const int32_t *x, int64_t n);

#endif
