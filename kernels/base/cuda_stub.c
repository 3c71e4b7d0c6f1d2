/* kernels/base/cuda_stub.c — CPU-only builds: the CUDA bridge answers "not built". */
#include "cuda_bridge.h"

#ifndef MS_HAVE_CUDA
#include <stdlib.h>

#define NO_CUDA() ms_error(MS_EDEVICE, "this build of mrisam has no CUDA backend (rebuild with -DMS_CUDA=ON)")

int ms_cuda_probe(void) { return 0; }
ms_status ms_cuda_ctx_init(ms_device *dev) { (void)dev; return NO_CUDA(); }
void ms_cuda_ctx_free(ms_device *dev) { (void)dev; }
ms_status ms_cuda_alloc(ms_device *dev, size_t bytes, void **out) { (void)dev; (void)bytes; *out = NULL; return NO_CUDA(); }
void ms_cuda_free(ms_device *dev, void *p) { (void)dev; (void)p; }
ms_status ms_cuda_memset0(ms_device *dev, void *p, size_t b) { (void)dev; (void)p; (void)b; return NO_CUDA(); }
ms_status ms_cuda_copy(ms_device *dev, void *d, const void *s, size_t b, int dir) { (void)dev; (void)d; (void)s; (void)b; (void)dir; return NO_CUDA(); }
ms_status ms_cuda_sync(ms_device *dev) { (void)dev; return NO_CUDA(); }
ms_status ms_cuda_mem_info(ms_device *dev, size_t *u, size_t *t) { (void)dev; *u = *t = 0; return NO_CUDA(); }
ms_status ms_host_alloc_pinned(size_t bytes, void **out)
{
    *out = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    MS_FAIL_IF(!*out, MS_ENOMEM, "out of memory allocating %zu bytes", bytes);
    return MS_OK;
}
void ms_host_free_pinned(void *p) { free(p); }
ms_status ms_graph_begin(ms_device *dev) { (void)dev; return NO_CUDA(); }
ms_status ms_graph_end(ms_device *dev, ms_graph **out) { (void)dev; *out = NULL; return NO_CUDA(); }
ms_status ms_graph_launch(ms_device *dev, const ms_graph *g) { (void)dev; (void)g; return NO_CUDA(); }
void ms_graph_free(ms_graph *g) { (void)g; }
int ms_graph_capturing(const ms_device *dev) { (void)dev; return 0; }
uint64_t ms_cuda_grow_count(const ms_device *dev) { (void)dev; return 0; }
#else
typedef int ms_cuda_stub_unused;
#endif
