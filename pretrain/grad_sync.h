/* pretrain/grad_sync.h — data-parallel gradient reduction in buckets that start while the backward still runs.
 *
 * The trainable gradients of each registered parameter block (ms_params: one contiguous gradient array) are cut
 * into buckets on a fixed grid counted from the array's end (the backward writes the last layers first). During a
 * step's last backward, the model reports "every gradient of ps at offset >= lo is final" (ms_grad_sync_ready, the
 * encoder's grads_ready hook); each bucket that lies wholly above lo starts its all-reduce at once (ms_dist_start),
 * so the reductions overlap with the remaining backward. ms_grad_sync_finish starts what is left and waits.
 * Blocks are registered in the order the backward finishes them: a report for block k means blocks before k are
 * final. Every rank starts the same buckets in the same order (the grid and the reports depend only on the model),
 * as MPI and NCCL require, whatever each rank's data. Backend-independent: MPI on the CPU, NCCL on CUDA.
 * With a NULL ms_dist (one process) every call does nothing.
 */
#ifndef MS_GRAD_SYNC_H
#define MS_GRAD_SYNC_H

#include "base/dist.h"
#include "pretrain/params.h"

#define MS_GRAD_SYNC_MAX 4

typedef struct ms_grad_sync {
    ms_dist *d;
    int64_t bucket_n; /* floats per bucket */
    int n;
    ms_params *ps[MS_GRAD_SYNC_MAX];
    int64_t started[MS_GRAD_SYNC_MAX]; /* gradients [started, numel_trainable) are in flight or done */
    int armed;                         /* the current backward is the step's last: reports start buckets */
    int64_t buckets_early;             /* buckets started by reports (before finish) since init: overlap made */
} ms_grad_sync;

/* bucket_bytes <= 0: 25 MiB. */
void ms_grad_sync_init(ms_grad_sync *g, ms_dist *d, size_t bucket_bytes);
ms_status ms_grad_sync_add(ms_grad_sync *g, ms_params *ps);
/* Call before the step's last backward: from now on, reports start buckets. */
void ms_grad_sync_arm(ms_grad_sync *g);
/* The hook: every trainable gradient of ps at offset >= lo is final. ctx is the ms_grad_sync. */
ms_status ms_grad_sync_ready(void *ctx, const ms_params *ps, int64_t lo);
/* Starts every bucket not started yet (all of them when no report came since the last finish), waits for all: the
 * gradients now hold the sum over ranks. */
ms_status ms_grad_sync_finish(ms_grad_sync *g);

#endif
