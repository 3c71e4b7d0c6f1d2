/* kernels/base/dist.c — see dist.h. MPI parts only in builds that found MPI (MS_HAVE_MPI). */
#include "dist.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"

#ifdef MS_HAVE_MPI
#include <mpi.h>
#endif

/* One environment variable as an int in [lo, hi]; *found 0 when unset. */
static ms_status env_int(const char *name, int lo, int hi, int *v, int *found)
{
    const char *s = getenv(name);
    *found = s && *s;
    if (!*found) return MS_OK;
    char *end;
    errno = 0;
    long x = strtol(s, &end, 10);
    MS_FAIL_IF(errno || *end || x < lo || x > hi, MS_EINVAL, "%s=%s: not a whole number in [%d, %d]", name, s, lo, hi);
    *v = (int)x;
    return MS_OK;
}

ms_status ms_dist_env_read(ms_dist_env *e)
{
    static const struct {
        const char *rank, *size, *local, *name;
    } L[] = {{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "open-mpi"},
             {"PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "pmi"},
             {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "slurm"}};
    *e = (ms_dist_env){0, 1, 0, "none"};
    for (size_t i = 0; i < sizeof L / sizeof L[0]; i++) {
        int rank = 0, size = 1, local = 0, fr, fs, fl;
        MS_TRY(env_int(L[i].size, 1, 1 << 20, &size, &fs));
        MS_TRY(env_int(L[i].rank, 0, size - 1, &rank, &fr));
        if (!fr || !fs) continue;
        MS_TRY(env_int(L[i].local, 0, size - 1, &local, &fl));
        *e = (ms_dist_env){rank, size, fl ? local : 0, L[i].name};
        return MS_OK;
    }
    return MS_OK;
}

int ms_dist_have_mpi(void)
{
#ifdef MS_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

int ms_dist_have_nccl(void)
{
#ifdef MS_HAVE_NCCL
    return 1;
#else
    return 0;
#endif
}

#define MAX_INFLIGHT 256

struct ms_dist {
    int rank, world;
    double timeout_s;
    size_t bucket_n; /* floats per bucket */
    ms_device *dev;
    ms_nccl *nccl;   /* CUDA devices */
#ifdef MS_HAVE_MPI
    MPI_Request req[MAX_INFLIGHT];
#endif
    int n_req;
};

int ms_dist_rank(const ms_dist *d) { return d ? d->rank : 0; }
int ms_dist_world(const ms_dist *d) { return d ? d->world : 1; }

#ifdef MS_HAVE_MPI

static ms_status mpi_err(int rc, const char *what)
{
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, s, &len);
    return ms_error(MS_EIO, "MPI %s: %.*s", what, len, s);
}

/* Polls the requests until all are done or the deadline passes. MPI moves a large message on only while some call
 * into it is made (a shared-memory transport without single-copy passes it in fragments, one per test), so the
 * naps between tests stay short: 20 µs, so a waiting rank leaves its core to the others without slowing the
 * transfer (naps of up to 1 ms halved the step rate of 2 CPU ranks on 2 cores). */
static ms_status wait_requests(ms_dist *d, MPI_Request *req, int n, const char *what)
{
    double deadline = ms_now_s() + d->timeout_s;
    for (;;) {
        int done = 0, rc = MPI_Testall(n, req, &done, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS) return mpi_err(rc, what);
        if (done) return MS_OK;
        if (ms_now_s() > deadline)
            return ms_error(ETIMEDOUT, "rank %d of %d: %s: no answer from the other ranks within %.0f s "
                            "(--dist-timeout): a rank has died or hangs", d->rank, d->world, what, d->timeout_s);
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
}

static ms_status one_request(ms_dist *d, int rc, MPI_Request *r, const char *what)
{
    if (rc != MPI_SUCCESS) return mpi_err(rc, what);
    return wait_requests(d, r, 1, what);
}

ms_status ms_dist_open(const ms_dist_env *env, const ms_dist_opts *o, ms_device *dev, ms_dist **out)
{
    *out = NULL;
    if (env->world <= 1) return MS_OK;
    MS_FAIL_IF(dev->kind == MS_DEV_CUDA && !ms_dist_have_nccl(), MS_EUNSUPPORTED,
               "%d ranks on CUDA: this build has no NCCL (see the configure summary)", env->world);
    int inited = 0, provided = 0, rank = -1, size = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) return mpi_err(rc, "init");
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN); /* our one-line errors, not MPI's abort */
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ms_dist *d = calloc(1, sizeof *d);
    if (!d) return ms_error(MS_ENOMEM, "out of memory");
    d->rank = rank;
    d->world = size;
    d->dev = dev;
    d->timeout_s = o && o->timeout_s > 0 ? o->timeout_s : 600;
    size_t bb = o && o->bucket_bytes > 0 ? o->bucket_bytes : (size_t)25 << 20;
    d->bucket_n = bb / sizeof(float) ? bb / sizeof(float) : 1;
    if (d->bucket_n > INT_MAX) d->bucket_n = INT_MAX; /* MPI counts are int */
    ms_status st = MS_OK;
    if (rank != env->rank || size != env->world) {
        st = ms_error(MS_EINVAL, "MPI says rank %d of %d, the launcher's environment (%s) rank %d of %d", rank, size,
                      env->launcher, env->rank, env->world);
        goto fail;
    }
    if (dev->kind == MS_DEV_CUDA) {
        unsigned char id[MS_NCCL_ID_BYTES] = {0};
        if (rank == 0 && (st = ms_nccl_unique_id(id))) goto fail;
        if ((st = ms_dist_bcast_host(d, id, sizeof id, 0))) goto fail;
        if ((st = ms_nccl_open(dev, id, rank, size, d->timeout_s, &d->nccl))) goto fail;
    }
    *out = d;
    return MS_OK;
fail:
    ms_dist_close(d, 1);
    return st;
}

void ms_dist_close(ms_dist *d, int failed)
{
    if (!d) return;
    if (d->nccl) ms_nccl_close(d->nccl, failed);
    free(d);
    int fin = 0;
    MPI_Finalized(&fin);
    if (fin) return;
    if (failed)
        MPI_Abort(MPI_COMM_WORLD, 1);
    else
        MPI_Finalize();
}

ms_status ms_dist_start(ms_dist *d, float *buf, size_t n)
{
    if (!d || !n) return MS_OK;
    if (d->nccl) return ms_nccl_allreduce_start(d->nccl, buf, n);
    for (size_t off = 0; off < n; off += d->bucket_n) {
        size_t k = n - off < d->bucket_n ? n - off : d->bucket_n;
        if (d->n_req == MAX_INFLIGHT) MS_TRY(ms_dist_wait(d)); /* bounded; still correct, overlaps less */
        int rc = MPI_Iallreduce(MPI_IN_PLACE, buf + off, (int)k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                                &d->req[d->n_req]);
        if (rc != MPI_SUCCESS) return mpi_err(rc, "all-reduce");
        d->n_req++;
    }
    return MS_OK;
}

ms_status ms_dist_wait(ms_dist *d)
{
    if (!d) return MS_OK;
    if (d->nccl) return ms_nccl_wait(d->nccl, d->timeout_s);
    int n = d->n_req;
    d->n_req = 0;
    return n ? wait_requests(d, d->req, n, "all-reduce") : MS_OK;
}

ms_status ms_dist_allgather_inplace(ms_dist *d, float *buf, int64_t n)
{
    if (!d || n <= 0) return MS_OK;
    if (d->nccl) {
        MS_TRY(ms_nccl_allgather_inplace_start(d->nccl, buf, n));
        return ms_nccl_wait(d->nccl, d->timeout_s);
    }
    MS_FAIL_IF(n > INT_MAX, MS_EUNSUPPORTED, "all-gather of %lld floats: too many for one MPI call", (long long)n);
    int *counts = malloc(2 * (size_t)d->world * sizeof(int));
    MS_FAIL_IF(!counts, MS_ENOMEM, "out of memory");
    int *displs = counts + d->world;
    for (int r = 0; r < d->world; r++) {
        int64_t lo, hi;
        ms_dist_range(n, r, d->world, &lo, &hi);
        counts[r] = (int)(hi - lo);
        displs[r] = (int)lo;
    }
    MPI_Request q;
    ms_status st = one_request(d, MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, displs, MPI_FLOAT,
                                                  MPI_COMM_WORLD, &q), &q, "all-gather");
    free(counts);
    return st;
}

ms_status ms_dist_allreduce_host(ms_dist *d, double *v, int n, int max_op)
{
    if (!d || n <= 0) return MS_OK;
    MPI_Request r;
    return one_request(d, MPI_Iallreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, max_op ? MPI_MAX : MPI_SUM, MPI_COMM_WORLD,
                                         &r), &r, "all-reduce");
}

ms_status ms_dist_bcast_host(ms_dist *d, void *buf, size_t bytes, int root)
{
    if (!d || !bytes) return MS_OK;
    MS_FAIL_IF(bytes > INT_MAX, MS_EUNSUPPORTED, "broadcast of %zu bytes: too many for MPI", bytes);
    MPI_Request r;
    return one_request(d, MPI_Ibcast(buf, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD, &r), &r, "broadcast");
}

ms_status ms_dist_barrier(ms_dist *d)
{
    if (!d) return MS_OK;
    MPI_Request r;
    return one_request(d, MPI_Ibarrier(MPI_COMM_WORLD, &r), &r, "barrier");
}

#else /* no MPI: one process only */

ms_status ms_dist_open(const ms_dist_env *env, const ms_dist_opts *o, ms_device *dev, ms_dist **out)
{
    (void)o;
    (void)dev;
    *out = NULL;
    MS_FAIL_IF(env->world > 1, MS_EUNSUPPORTED,
               "started as rank %d of %d (%s), but this build has no MPI: install libopenmpi-dev and rebuild",
               env->rank, env->world, env->launcher);
    return MS_OK;
}

void ms_dist_close(ms_dist *d, int failed) { (void)d; (void)failed; }
ms_status ms_dist_start(ms_dist *d, float *buf, size_t n) { (void)d; (void)buf; (void)n; return MS_OK; }
ms_status ms_dist_wait(ms_dist *d) { (void)d; return MS_OK; }
ms_status ms_dist_allgather_inplace(ms_dist *d, float *buf, int64_t n) { (void)d; (void)buf; (void)n; return MS_OK; }
ms_status ms_dist_allreduce_host(ms_dist *d, double *v, int n, int max_op) { (void)d; (void)v; (void)n; (void)max_op; return MS_OK; }
ms_status ms_dist_bcast_host(ms_dist *d, void *buf, size_t bytes, int root) { (void)d; (void)buf; (void)bytes; (void)root; return MS_OK; }
ms_status ms_dist_barrier(ms_dist *d) { (void)d; return MS_OK; }

#endif

void ms_dist_range(int64_t n, int rank, int world, int64_t *lo, int64_t *hi)
{
    int64_t c = world > 0 ? (n + world - 1) / world : n;
    *lo = (int64_t)rank * c < n ? (int64_t)rank * c : n;
    *hi = *lo + c < n ? *lo + c : n;
}

ms_status ms_dist_allreduce(ms_dist *d, float *buf, size_t n)
{
    MS_TRY(ms_dist_start(d, buf, n));
    return ms_dist_wait(d);
}
