/* kernels/base/nccl_stub.c — the NCCL side of dist.h in builds without NCCL: every call fails with
 * MS_EUNSUPPORTED (ms_dist_open refuses a CUDA job before any of them is reached). */
#ifndef MS_HAVE_NCCL
#include "dist.h"

static ms_status no_nccl(void) { return ms_error(MS_EUNSUPPORTED, "this build has no NCCL"); }

ms_status ms_nccl_unique_id(unsigned char id[MS_NCCL_ID_BYTES]) { (void)id; return no_nccl(); }
ms_status ms_nccl_open(ms_device *dev, const unsigned char id[MS_NCCL_ID_BYTES], int rank, int world,
                       double timeout_s, ms_nccl **out)
{
    (void)dev; (void)id; (void)rank; (void)world; (void)timeout_s;
    *out = NULL;
    return no_nccl();
}
void ms_nccl_close(ms_nccl *c, int abort) { (void)c; (void)abort; }
ms_status ms_nccl_allreduce_start(ms_nccl *c, float *buf, size_t n) { (void)c; (void)buf; (void)n; return no_nccl(); }
ms_status ms_nccl_allgather_inplace_start(ms_nccl *c, float *buf, int64_t n)
{
    (void)c; (void)buf; (void)n;
    return no_nccl();
}
ms_status ms_nccl_wait(ms_nccl *c, double timeout_s) { (void)c; (void)timeout_s; return no_nccl(); }
#else
typedef int ms_nccl_stub_unused; /* ISO C: no empty translation unit */
#endif
