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

/* CUDA graphs of a stretch of one device's stream work (docs/PERFORMANCE-gpu-notes.md §CUDA graphs).
 * ms_graph_begin starts capturing dev's stream (cudaStreamCaptureModeThreadLocal): ops launched until
 * ms_graph_end are recorded, not run. While capturing, anything that would synchronise the stream fails with a
 * one-line error instead: a host copy or ms_cuda_sync, and a grow of the ops' workspaces (run the same work once
 * eagerly first, so that every workspace has its size). ms_graph_end ends the capture and instantiates the graph
 * (*out; on error *out is NULL and the capture is discarded — call it after a failed op too, so that the stream
 * leaves capture mode). ms_graph_launch replays it on dev's stream; the launch captures pointers and scalars as they
 * were, so replay only while they stay valid: ms_cuda_grow_count changes whenever a workspace was reallocated. */
typedef struct ms_graph ms_graph;
ms_status ms_graph_begin(ms_device *dev);
ms_status ms_graph_end(ms_device *dev, ms_graph **out);
ms_status ms_graph_launch(ms_device *dev, const ms_graph *g);
void ms_graph_free(ms_graph *g);
int ms_graph_capturing(const ms_device *dev); /* 1 between ms_graph_begin and ms_graph_end */
uint64_t ms_cuda_grow_count(const ms_device *dev); /* workspace reallocations so far (0 without CUDA) */

#ifdef __cplusplus
}
#endif
#endif
