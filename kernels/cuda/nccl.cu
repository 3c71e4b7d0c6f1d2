/* kernels/cuda/nccl.cu — the NCCL side of kernels/base/dist.h (builds with NCCL: MS_HAVE_NCCL).
 *
 * The communicator is non-blocking (ncclConfig_t.blocking = 0), so no NCCL call can hang the host: open and every
 * wait poll ncclCommGetAsyncError / a CUDA event with a deadline and abort the communicator when it passes.
 * Reductions run on the communicator's own stream: start records an event on the device's stream and makes the
 * NCCL stream wait for it (the gradients are written), so compute queued after start overlaps with the reduction;
 * wait makes the device's stream wait for the NCCL stream before anything reads the result.
 */
#ifdef MS_HAVE_NCCL
#include <errno.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.h"

extern "C" {
#include "base/clock.h"
#include "base/dist.h"
}

struct ms_nccl {
    ncclComm_t comm;
    cudaStream_t stream;    /* the reductions' stream */
    cudaEvent_t ready, done;
    ms_device *dev;
    int rank, world, pending;
};

static ms_status nccl_err(ncclResult_t r, const char *what)
{
    return ms_error(MS_EDEVICE, "NCCL %s: %s", what, ncclGetErrorString(r));
}

/* Polls the communicator until it leaves ncclInProgress (non-blocking calls), at most timeout_s. */
static ms_status settle(ms_nccl *c, double timeout_s, const char *what)
{
    double deadline = ms_now_s() + timeout_s;
    for (;;) {
        ncclResult_t st = ncclSuccess, r = ncclCommGetAsyncError(c->comm, &st);
        if (r != ncclSuccess) return nccl_err(r, what);
        if (st == ncclSuccess) return MS_OK;
        if (st != ncclInProgress) return nccl_err(st, what);
        if (ms_now_s() > deadline)
            return ms_error(ETIMEDOUT, "rank %d of %d: NCCL %s: no answer within %.0f s (--dist-timeout)", c->rank,
                            c->world, what, timeout_s);
    }
}

extern "C" ms_status ms_nccl_unique_id(unsigned char id[MS_NCCL_ID_BYTES])
{
    static_assert(sizeof(ncclUniqueId) <= MS_NCCL_ID_BYTES, "NCCL's unique id is larger than MS_NCCL_ID_BYTES");
    ncclUniqueId u;
    ncclResult_t r = ncclGetUniqueId(&u);
    if (r != ncclSuccess) return nccl_err(r, "unique id");
    memset(id, 0, MS_NCCL_ID_BYTES);
    memcpy(id, &u, sizeof u);
    return MS_OK;
}

extern "C" void ms_nccl_close(ms_nccl *c, int abort)
{
    if (!c) return;
    if (c->comm) {
        if (abort)
            ncclCommAbort(c->comm);
        else
            ncclCommDestroy(c->comm);
    }
    if (c->ready) cudaEventDestroy(c->ready);
    if (c->done) cudaEventDestroy(c->done);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

extern "C" ms_status ms_nccl_open(ms_device *dev, const unsigned char id[MS_NCCL_ID_BYTES], int rank, int world,
                                  double timeout_s, ms_nccl **out)
{
    *out = NULL;
    ms_nccl *c = (ms_nccl *)calloc(1, sizeof *c);
    if (!c) return ms_error(MS_ENOMEM, "out of memory");
    c->dev = dev;
    c->rank = rank;
    c->world = world;
    ms_status rc = MS_OK;
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t r;
    MS_CU_GOTO(cudaSetDevice(ms_cuda_ctx_of(dev)->device), rc, fail);
    MS_CU_GOTO(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), rc, fail);
    MS_CU_GOTO(cudaEventCreateWithFlags(&c->ready, cudaEventDisableTiming), rc, fail);
    MS_CU_GOTO(cudaEventCreateWithFlags(&c->done, cudaEventDisableTiming), rc, fail);
    r = ncclCommInitRankConfig(&c->comm, world, u, rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        rc = nccl_err(r, "init");
        goto fail;
    }
    if ((rc = settle(c, timeout_s, "init"))) goto fail;
    *out = c;
    return MS_OK;
fail:
    ms_nccl_close(c, 1);
    return rc;
}

/* The NCCL stream waits for what the device's stream has queued so far. */
static ms_status after_compute(ms_nccl *c)
{
    cudaStream_t s = ms_cuda_ctx_of(c->dev)->stream;
    MS_CU(cudaEventRecord(c->ready, s));
    MS_CU(cudaStreamWaitEvent(c->stream, c->ready, 0));
    return MS_OK;
}

extern "C" ms_status ms_nccl_allreduce_start(ms_nccl *c, float *buf, size_t n)
{
    if (!n) return MS_OK;
    MS_TRY(after_compute(c));
    ncclResult_t r = ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, c->comm, c->stream);
    if (r != ncclSuccess && r != ncclInProgress) return nccl_err(r, "all-reduce");
    c->pending = 1;
    return MS_OK;
}

extern "C" ms_status ms_nccl_allgather_inplace_start(ms_nccl *c, float *buf, int64_t n)
{
    if (n <= 0) return MS_OK;
    MS_TRY(after_compute(c));
    /* no all-gather with parts of different sizes in NCCL: one broadcast per rank, grouped */
    ncclResult_t r = ncclGroupStart();
    for (int q = 0; q < c->world && (r == ncclSuccess || r == ncclInProgress); q++) {
        int64_t lo, hi;
        ms_dist_range(n, q, c->world, &lo, &hi);
        if (hi > lo) r = ncclBroadcast(buf + lo, buf + lo, (size_t)(hi - lo), ncclFloat, q, c->comm, c->stream);
    }
    ncclResult_t e = ncclGroupEnd();
    if (r == ncclSuccess || r == ncclInProgress) r = e;
    if (r != ncclSuccess && r != ncclInProgress) return nccl_err(r, "all-gather");
    c->pending = 1;
    return MS_OK;
}

extern "C" ms_status ms_nccl_wait(ms_nccl *c, double timeout_s)
{
    if (!c->pending) return MS_OK;
    c->pending = 0;
    MS_TRY(settle(c, timeout_s, "enqueue"));
    MS_CU(cudaEventRecord(c->done, c->stream));
    double deadline = ms_now_s() + timeout_s;
    for (;;) {
        cudaError_t e = cudaEventQuery(c->done);
        if (e == cudaSuccess) break;
        if (e != cudaErrorNotReady) return ms_error(MS_EDEVICE, "NCCL wait: %s", cudaGetErrorString(e));
        ncclResult_t st = ncclSuccess;
        ncclCommGetAsyncError(c->comm, &st);
        if (st != ncclSuccess && st != ncclInProgress) return nccl_err(st, "all-reduce");
        if (ms_now_s() > deadline)
            return ms_error(ETIMEDOUT, "rank %d of %d: NCCL: no answer from the other ranks within %.0f s "
                            "(--dist-timeout): a rank has died or hangs", c->rank, c->world, timeout_s);
    }
    MS_CU(cudaStreamWaitEvent(ms_cuda_ctx_of(c->dev)->stream, c->done, 0));
    return MS_OK;
}
#endif
