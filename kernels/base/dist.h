/* kernels/base/dist.h — data-parallel collectives: one interface, MPI on the CPU backend, NCCL on CUDA.
 *
 * A run of W processes (ranks) is started by mpirun or srun; ms_dist_env_read finds rank, world size and local rank
 * in the launcher's environment. ms_dist_open joins the job: MPI (MPI_Init_thread, funneled: only the calling
 * thread talks to MPI), and on a CUDA device an NCCL communicator whose unique id rank 0 broadcasts over MPI.
 * A NULL ms_dist is a single process: every collective is then a no-op, so callers need no special case.
 *
 * Buffers: ms_dist_allreduce / _allgather take memory of the device the handle was opened with (host memory on
 * the CPU, device memory on CUDA); the _host_ calls always take host memory and go over MPI.
 * Buckets: a reduction is split into buckets of bucket_bytes, each one in flight on its own, so that a caller can
 * start the buckets whose gradients are final while the backward still computes the others (ms_dist_start), and
 * wait for all of them once (ms_dist_wait).
 * Faults: every wait polls with a deadline (timeout_s from open, --dist-timeout): a rank that died or hangs makes
 * the others fail with ETIMEDOUT and a one-line message instead of waiting forever. After any failure the caller
 * ends with ms_dist_close(d, 1), which aborts the whole job (MPI_Abort) so that no rank is left waiting.
 */
#ifndef MS_DIST_H
#define MS_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "device.h"
#include "status.h"

/* Where the launcher put the job's shape. world 1 when no launcher variables are set. */
typedef struct ms_dist_env {
    int rank, world, local_rank;
    const char *launcher; /* "open-mpi", "pmi", "slurm" or "none" */
} ms_dist_env;

/* Reads OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK} (Open MPI), PMI_RANK / PMI_SIZE / MPI_LOCALRANKID (MPICH, Hydra),
 * then SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (srun), the first complete set found. A malformed value is an
 * error naming the variable. */
ms_status ms_dist_env_read(ms_dist_env *e);

/* 1 when this build can run more than one rank (MPI found at configure time); 1 for NCCL when it has NCCL too. */
int ms_dist_have_mpi(void);
int ms_dist_have_nccl(void);

typedef struct ms_dist ms_dist;

typedef struct ms_dist_opts {
    double timeout_s;      /* the longest any collective may wait; <= 0: 600 s */
    size_t bucket_bytes;   /* <= 0: 25 MiB */
} ms_dist_opts;

/* Joins the job env describes on device dev (which must outlive the handle). env->world 1: *out = NULL (a single
 * process). Fails with MS_EUNSUPPORTED when the build has no MPI (or no NCCL for a CUDA device), and when MPI's
 * own rank or size disagree with env. */
ms_status ms_dist_open(const ms_dist_env *env, const ms_dist_opts *o, ms_device *dev, ms_dist **out);
/* Ends the job's part of this process. failed: abort every rank (MPI_Abort) rather than finalize, since a
 * finalize would wait for ranks that may never come. */
void ms_dist_close(ms_dist *d, int failed);

int ms_dist_rank(const ms_dist *d);  /* 0 for NULL */
int ms_dist_world(const ms_dist *d); /* 1 for NULL */

/* Sum over ranks, in place: starts the reduction of buf[0, n) (device memory) bucket by bucket; buf must stay
 * untouched until ms_dist_wait. */
ms_status ms_dist_start(ms_dist *d, float *buf, size_t n);
/* Waits for every reduction started since the last wait (at most timeout_s). */
ms_status ms_dist_wait(ms_dist *d);
/* start + wait. */
ms_status ms_dist_allreduce(ms_dist *d, float *buf, size_t n);
/* Rank r's part of [0, n) (ZeRO-1 shards, in place gathers): [r·c, min(n, (r+1)·c)) with c = ceil(n / world). */
void ms_dist_range(int64_t n, int rank, int world, int64_t *lo, int64_t *hi);
/* In place: every rank's part of buf[0, n) (ms_dist_range, device memory) to every rank. */
ms_status ms_dist_allgather_inplace(ms_dist *d, float *buf, int64_t n);
/* Host values: sum (max_op 0) or maximum (max_op 1) over ranks, in place. */
ms_status ms_dist_allreduce_host(ms_dist *d, double *v, int n, int max_op);
/* Host bytes from root to every rank. */
ms_status ms_dist_bcast_host(ms_dist *d, void *buf, size_t bytes, int root);
ms_status ms_dist_barrier(ms_dist *d);

/* ---- the NCCL side (kernels/cuda/nccl.cu; kernels/base/nccl_stub.c when the build has no NCCL) ---------------- */
typedef struct ms_nccl ms_nccl;
#define MS_NCCL_ID_BYTES 128
#ifdef __cplusplus
extern "C" {
#endif
ms_status ms_nccl_unique_id(unsigned char id[MS_NCCL_ID_BYTES]);
/* A communicator on dev's GPU, with its own stream (reductions wait for dev's stream through an event, so they
 * overlap with work queued after them). Non-blocking: open itself is bounded by timeout_s. */
ms_status ms_nccl_open(ms_device *dev, const unsigned char id[MS_NCCL_ID_BYTES], int rank, int world,
                       double timeout_s, ms_nccl **out);
void ms_nccl_close(ms_nccl *c, int abort);
ms_status ms_nccl_allreduce_start(ms_nccl *c, float *buf, size_t n);
/* In place: rank r's part of buf[0, n) (ms_dist_range) broadcast from r, all ranks in one group. */
ms_status ms_nccl_allgather_inplace_start(ms_nccl *c, float *buf, int64_t n);
/* Waits for everything started (dev's stream then waits for it too), at most timeout_s; aborts the communicator
 * on a timeout or an asynchronous NCCL error. */
ms_status ms_nccl_wait(ms_nccl *c, double timeout_s);
#ifdef __cplusplus
}
#endif

#endif
