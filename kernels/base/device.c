/* kernels/base/device.c — CPU half of ms_device; the CUDA half is kernels/cuda/cuda_ctx.cu. */
#include "device.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "cuda_bridge.h"

void openblas_set_num_threads(int n); /* OpenBLAS API; declared here to avoid depending on cblas.h flavour */

ms_status ms_device_parse(const char *s, ms_device_kind *kind, int *index)
{
    *index = 0;
    if (!strcmp(s, "cpu")) { *kind = MS_DEV_CPU; return MS_OK; }
    if (!strncmp(s, "cuda", 4)) {
        *kind = MS_DEV_CUDA;
        if (s[4] == 0) return MS_OK;
        if (s[4] == ':' && s[5]) { char *e; long v = strtol(s + 5, &e, 10); if (!*e && v >= 0 && v < 64) { *index = (int)v; return MS_OK; } }
    }
    MS_FAIL(MS_EINVAL, "--device: expected cpu, cuda or cuda:N, got '%s'", s);
}

ms_status ms_precision_parse(const char *s, ms_precision *out)
{
    if (!strcmp(s, "fp32")) { *out = MS_PREC_FP32; return MS_OK; }
    if (!strcmp(s, "bf16")) { *out = MS_PREC_BF16; return MS_OK; }
    MS_FAIL(MS_EINVAL, "--precision: expected fp32 or bf16, got '%s'", s);
}

const char *ms_precision_name(ms_precision p) { return p == MS_PREC_BF16 ? "bf16" : "fp32"; }

ms_precision ms_precision_default(ms_device_kind kind) { return kind == MS_DEV_CUDA ? MS_PREC_BF16 : MS_PREC_FP32; }

ms_status ms_dev_mem_info(ms_device *dev, size_t *used, size_t *total)
{
    *used = *total = 0;
    if (dev->kind == MS_DEV_CUDA) return ms_cuda_mem_info(dev, used, total);
    MS_FAIL(MS_EUNSUPPORTED, "device memory use: only for CUDA devices");
}

ms_status ms_device_init(ms_device *dev, ms_device_kind kind, int n_threads)
{
    return ms_device_init_at(dev, kind, 0, n_threads);
}

ms_status ms_device_init_at(ms_device *dev, ms_device_kind kind, int index, int n_threads)
{
    memset(dev, 0, sizeof *dev);
    dev->cuda_index = index;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    dev->kind = kind;
    dev->n_threads = n_threads;
    openblas_set_num_threads(n_threads);
#ifdef _OPENMP
    omp_set_num_threads(n_threads);
#endif
    if (kind == MS_DEV_CUDA) return ms_cuda_ctx_init(dev);
    return MS_OK;
}

void ms_device_free(ms_device *dev)
{
    if (!dev) return;
    if (dev->kind == MS_DEV_CUDA) ms_cuda_ctx_free(dev);
    dev->cuda = NULL;
}

int ms_cuda_available(void) { return ms_cuda_probe() > 0; }
int ms_cuda_device_count(void) { return ms_cuda_probe(); }

ms_status ms_dev_alloc(ms_device *dev, size_t bytes, void **out)
{
    *out = NULL;
    if (dev->kind == MS_DEV_CUDA) return ms_cuda_alloc(dev, bytes, out);
    size_t n = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, n ? n : 64);
    MS_FAIL_IF(!p, MS_ENOMEM, "out of memory allocating %zu bytes", bytes);
    *out = p;
    return MS_OK;
}

void ms_dev_free(ms_device *dev, void *p)
{
    if (!p) return;
    if (dev->kind == MS_DEV_CUDA) ms_cuda_free(dev, p);
    else free(p);
}

ms_status ms_dev_zero(ms_device *dev, void *p, size_t bytes)
{
    if (dev->kind == MS_DEV_CUDA) return ms_cuda_memset0(dev, p, bytes);
    memset(p, 0, bytes);
    return MS_OK;
}

ms_status ms_dev_to_host(ms_device *dev, void *dst, const void *src, size_t bytes)
{
    if (dev->kind == MS_DEV_CUDA) return ms_cuda_copy(dev, dst, src, bytes, 2);
    memcpy(dst, src, bytes);
    return MS_OK;
}

ms_status ms_dev_from_host(ms_device *dev, void *dst, const void *src, size_t bytes)
{
    if (dev->kind == MS_DEV_CUDA) return ms_cuda_copy(dev, dst, src, bytes, 1);
    memcpy(dst, src, bytes);
    return MS_OK;
}

ms_status ms_dev_copy(ms_device *dev, void *dst, const void *src, size_t bytes)
{
    if (dev->kind == MS_DEV_CUDA) return ms_cuda_copy(dev, dst, src, bytes, 3);
    memmove(dst, src, bytes);
    return MS_OK;
}

ms_status ms_dev_sync(ms_device *dev)
{
    if (dev->kind == MS_DEV_CUDA) return ms_cuda_sync(dev);
    return MS_OK;
}
