/* kernels/base/cuda_bridge.h — the few CUDA runtime services the C side needs, behind plain C functions.
 * Implemented in kernels/cuda/cuda_ctx.cu when the CUDA backend is built (MS_HAVE_CUDA), and by
 * kernels/base/cuda_stub.c otherwise (every call then fails with MS_EDEVICE and a clear message). */
#ifndef MS_CUDA_BRIDGE_H
#define MS_CUDA_BRIDGE_H

#include "device.h"

#ifdef __cplusplus
extern "C" {
#endif

int ms_cuda_probe(void); /* visible devices (0: none, or no driver) */
ms_status ms_cuda_ctx_init(ms_device *dev);
void ms_cuda_ctx_free(ms_device *dev);
ms_status ms_cuda_alloc(ms_device *dev, size_t bytes, void **out);
void ms_cuda_free(ms_device *dev, void *p);
ms_status ms_cuda_memset0(ms_device *dev, void *p, size_t bytes);
/* dir: 1 host→device, 2 device→host, 3 device→device */
ms_status ms_cuda_copy(ms_device *dev, void *dst, const void *src, size_t bytes, int dir);
ms_status ms_cuda_sync(ms_device *dev);
ms_status ms_cuda_mem_info(ms_device *dev, size_t *used, size_t *total); /* cudaMemGetInfo on dev's GPU */
/* Pinned host memory for loader batches (falls back to malloc when CUDA is absent). */
ms_status ms_host_alloc_pinned(size_t bytes, void **out);
void ms_host_free_pinned(void *p);

#ifdef __cplusplus
}
#endif
#endif
