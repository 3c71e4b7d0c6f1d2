/* kernels/cuda/cuda_ctx.cu — the CUDA bridge (kernels/base/cuda_bridge.h): probe, context (stream, cuBLAS and
 * cuBLASLt handles, their shared workspace, the ops' scratch, the bf16 GEMM operand buffer), device memory, copies
 * and pinned host memory.
 *
 * Invariants: all work of one ms_device is ordered on its one stream; copies to or from the host return only
 * when the host buffer may be reused (they synchronise the stream). TF32 GEMMs are off unless the environment
 * asks for them at init (MS_CUDA_TF32=1): fp32 results then match the CPU to float rounding.
 * Tested by tests/kernels/test_ops_cuda.c (every op, CUDA vs CPU).
 */
#include <stdlib.h>
#include <string.h>

#include "cuda_common.h"

#define WORKSPACE_BYTES ((size_t)32 << 20)

extern "C" int ms_cuda_probe(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* clear: no driver / no device is an answer, not an error */
        return 0;
    }
    return n > 0 ? n : 0;
}

extern "C" void ms_cuda_ctx_free(ms_device *dev)
{
    if (!dev || !dev->cuda) return;
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    cudaSetDevice(cx->device);
    if (cx->stream) cudaStreamSynchronize(cx->stream);
    if (cx->lt) cublasLtDestroy(cx->lt);
    if (cx->blas) cublasDestroy(cx->blas);
    if (cx->workspace) cudaFree(cx->workspace);
    if (cx->scratch) cudaFree(cx->scratch);
    if (cx->attn_ws) cudaFree(cx->attn_ws);
    if (cx->bf16) cudaFree(cx->bf16);
    if (cx->stream) cudaStreamDestroy(cx->stream);
    free(cx);
    dev->cuda = NULL;
}

extern "C" ms_status ms_cuda_ctx_init(ms_device *dev)
{
    ms_status rc = MS_OK;
    int n = 0, smem = 0;
    const char *tf;
    ms_cuda_ctx *cx = (ms_cuda_ctx *)calloc(1, sizeof *cx);
    if (!cx) return ms_error(MS_ENOMEM, "cuda context: out of memory");
    dev->cuda = cx;
    cx->device = dev->cuda_index;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        (void)cudaGetLastError();
        rc = ms_error(MS_EDEVICE, "cuda:%d: no CUDA device is visible (driver missing or no GPU)", dev->cuda_index);
        goto leave;
    }
    if (cx->device < 0 || cx->device >= n) {
        rc = ms_error(MS_EDEVICE, "cuda:%d: only %d CUDA device(s) visible", dev->cuda_index, n);
        goto leave;
    }
    MS_CU_GOTO(cudaSetDevice(cx->device), rc, leave);
    MS_CU_GOTO(cudaDeviceGetAttribute(&cx->sm_count, cudaDevAttrMultiProcessorCount, cx->device), rc, leave);
    MS_CU_GOTO(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, cx->device), rc, leave);
    cx->smem_optin = (size_t)smem;
    MS_CU_GOTO(cudaStreamCreateWithFlags(&cx->stream, cudaStreamNonBlocking), rc, leave);
    {   /* Ops' short-lived temporaries come from cudaMallocAsync (the attention fold): keep freed blocks in the
         * device's default pool instead of returning them at every synchronisation. */
        cudaMemPool_t pool;
        uint64_t keep = UINT64_MAX;
        MS_CU_GOTO(cudaDeviceGetDefaultMemPool(&pool, cx->device), rc, leave);
        MS_CU_GOTO(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), rc, leave);
    }
    MS_CU_GOTO(cudaMalloc(&cx->workspace, WORKSPACE_BYTES), rc, leave);
    cx->workspace_bytes = WORKSPACE_BYTES;
    MS_CU_GOTO(cublasCreate(&cx->blas), rc, leave);
    MS_CU_GOTO(cublasSetStream(cx->blas, cx->stream), rc, leave);
    MS_CU_GOTO(cublasSetWorkspace(cx->blas, cx->workspace, cx->workspace_bytes), rc, leave);
    tf = getenv("MS_KERNEL_ATTENTION");
    cx->attn_variant = tf && !strcmp(tf, "1") ? 1 : 2;
    tf = getenv("MS_CUDA_TF32");
    cx->tf32 = tf && !strcmp(tf, "1");
    /* Default math is exact fp32; TF32 tensor cores only on explicit request. */
    MS_CU_GOTO(cublasSetMathMode(cx->blas, cx->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH), rc, leave);
    MS_CU_GOTO(cublasLtCreate(&cx->lt), rc, leave);
leave:
    if (rc) ms_cuda_ctx_free(dev);
    return rc;
}

/* Grow *buf to at least `bytes` (half as much again when memory allows); never shrinks. */
static ms_status grow_buffer(ms_cuda_ctx *cx, void **buf, size_t *have, size_t bytes)
{
    if (bytes == 0) bytes = 256;
    if (bytes > *have) {
        size_t want = bytes + bytes / 2;
        if (cx->capturing)
            return ms_error(MS_EBADSTATE, "cuda:%d: a workspace must grow to %zu bytes while a CUDA graph is "
                            "captured (run the step once eagerly first)", cx->device, bytes);
        cx->grows++;
        /* Kernels queued earlier may still read the old buffer: let them finish before freeing it. */
        MS_CU(cudaStreamSynchronize(cx->stream));
        if (*buf) cudaFree(*buf);
        *buf = NULL;
        *have = 0;
        if (cudaMalloc(buf, want) != cudaSuccess) {
            (void)cudaGetLastError();
            want = bytes;
            MS_CU(cudaMalloc(buf, want));
        }
        *have = want;
    }
    return MS_OK;
}

ms_status ms_cuda_scratch(ms_device *dev, size_t bytes, void **out)
{
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    *out = NULL;
    MS_TRY(grow_buffer(cx, &cx->scratch, &cx->scratch_bytes, bytes));
    *out = cx->scratch;
    return MS_OK;
}

ms_status ms_cuda_attn_workspace(ms_device *dev, size_t bytes, void **out)
{
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    *out = NULL;
    MS_TRY(grow_buffer(cx, &cx->attn_ws, &cx->attn_ws_bytes, bytes));
    *out = cx->attn_ws;
    return MS_OK;
}

ms_status ms_cuda_bf16_buffer(ms_device *dev, size_t bytes, void **out)
{
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    *out = NULL;
    MS_TRY(grow_buffer(cx, &cx->bf16, &cx->bf16_bytes, bytes));
    *out = cx->bf16;
    return MS_OK;
}

extern "C" ms_status ms_cuda_alloc(ms_device *dev, size_t bytes, void **out)
{
    *out = NULL;
    MS_CU_CTX(dev);
    MS_FAIL_IF(ms_cuda_ctx_of(dev)->capturing, MS_EBADSTATE, "cuda:%d: an allocation of %zu bytes while a CUDA graph "
               "is captured", dev->cuda_index, bytes);
    cudaError_t e = cudaMalloc(out, bytes ? bytes : 256);
    if (e != cudaSuccess) {
        *out = NULL;
        (void)cudaGetLastError();
        size_t fr = 0, tot = 0;
        cudaMemGetInfo(&fr, &tot);
        return ms_error(e == cudaErrorMemoryAllocation ? MS_ENOMEM : MS_EDEVICE,
                        "cuda:%d: cudaMalloc of %zu bytes failed: %s (%zu of %zu bytes free)", dev->cuda_index,
                        bytes, cudaGetErrorString(e), fr, tot);
    }
    return MS_OK;
}

extern "C" void ms_cuda_free(ms_device *dev, void *p)
{
    (void)dev;
    if (p) cudaFree(p);
}

extern "C" ms_status ms_cuda_memset0(ms_device *dev, void *p, size_t bytes)
{
    MS_CU_CTX(dev);
    if (!bytes) return MS_OK;
    MS_CU(cudaMemsetAsync(p, 0, bytes, ms_cuda_ctx_of(dev)->stream));
    return MS_OK;
}

extern "C" ms_status ms_cuda_copy(ms_device *dev, void *dst, const void *src, size_t bytes, int dir)
{
    MS_CU_CTX(dev);
    cudaStream_t s = ms_cuda_ctx_of(dev)->stream;
    cudaMemcpyKind kind = dir == 1 ? cudaMemcpyHostToDevice : dir == 2 ? cudaMemcpyDeviceToHost
                        : dir == 3 ? cudaMemcpyDeviceToDevice : cudaMemcpyDefault;
    if (dir < 1 || dir > 3) return ms_error(MS_EINVAL, "ms_cuda_copy: direction %d is not 1, 2 or 3", dir);
    if (!bytes) return MS_OK;
    if (dir != 3 && ms_cuda_ctx_of(dev)->capturing)
        return ms_error(MS_EBADSTATE, "cuda:%d: a copy %s the host while a CUDA graph is captured", dev->cuda_index,
                        dir == 1 ? "from" : "to");
    MS_CU(cudaMemcpyAsync(dst, src, bytes, kind, s));
    /* Host buffers may be reused (or read) as soon as we return. */
    if (dir != 3) MS_CU(cudaStreamSynchronize(s));
    return MS_OK;
}

extern "C" ms_status ms_cuda_sync(ms_device *dev)
{
    MS_CU_CTX(dev);
    MS_FAIL_IF(ms_cuda_ctx_of(dev)->capturing, MS_EBADSTATE, "cuda:%d: a synchronisation while a CUDA graph is "
               "captured", dev->cuda_index);
    MS_CU(cudaStreamSynchronize(ms_cuda_ctx_of(dev)->stream));
    return MS_OK;
}

extern "C" ms_status ms_cuda_mem_info(ms_device *dev, size_t *used, size_t *total)
{
    MS_CU_CTX(dev);
    size_t fr = 0, all = 0;
    MS_CU(cudaMemGetInfo(&fr, &all));
    *used = all - fr;
    *total = all;
    return MS_OK;
}

extern "C" ms_status ms_host_alloc_pinned(size_t bytes, void **out)
{
    size_t n = (bytes + 63) & ~(size_t)63;
    *out = NULL;
    if (ms_cuda_probe() && cudaMallocHost(out, n ? n : 64) == cudaSuccess) return MS_OK;
    (void)cudaGetLastError();
    *out = aligned_alloc(64, n ? n : 64); /* no GPU: ordinary memory works, only without DMA */
    MS_FAIL_IF(!*out, MS_ENOMEM, "out of memory allocating %zu bytes", bytes);
    return MS_OK;
}

extern "C" void ms_host_free_pinned(void *p)
{
    unsigned flags = 0;
    if (!p) return;
    if (cudaHostGetFlags(&flags, p) == cudaSuccess) {
        cudaFreeHost(p);
        return;
    }
    (void)cudaGetLastError();
    free(p);
}

/* ---- CUDA graphs (cuda_bridge.h) ----------------------------------------------------------------------------- */

struct ms_graph {
    cudaGraphExec_t exec;
    int device;
};

extern "C" int ms_graph_capturing(const ms_device *dev)
{
    return dev && dev->kind == MS_DEV_CUDA && dev->cuda && ((const ms_cuda_ctx *)dev->cuda)->capturing;
}

extern "C" uint64_t ms_cuda_grow_count(const ms_device *dev)
{
    return dev && dev->kind == MS_DEV_CUDA && dev->cuda ? ((const ms_cuda_ctx *)dev->cuda)->grows : 0;
}

extern "C" ms_status ms_graph_begin(ms_device *dev)
{
    MS_CU_CTX(dev);
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    MS_FAIL_IF(cx->capturing, MS_EBADSTATE, "cuda:%d: a CUDA graph is already being captured", dev->cuda_index);
    MS_CU(cudaSetDevice(cx->device));
    /* thread-local: another thread's unsafe calls (a loader's cudaMallocHost) do not invalidate this capture */
    MS_CU(cudaStreamBeginCapture(cx->stream, cudaStreamCaptureModeThreadLocal));
    cx->capturing = 1;
    return MS_OK;
}

extern "C" ms_status ms_graph_end(ms_device *dev, ms_graph **out)
{
    *out = NULL;
    MS_CU_CTX(dev);
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    MS_FAIL_IF(!cx->capturing, MS_EBADSTATE, "cuda:%d: ms_graph_end without ms_graph_begin", dev->cuda_index);
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(cx->stream, &graph);
    cx->capturing = 0;
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        if (graph) cudaGraphDestroy(graph);
        return ms_error(MS_EDEVICE, "cuda:%d: the CUDA graph capture failed: %s", dev->cuda_index,
                        cudaGetErrorString(e));
    }
    ms_graph *g = (ms_graph *)calloc(1, sizeof *g);
    if (!g) {
        cudaGraphDestroy(graph);
        return ms_error(MS_ENOMEM, "cuda graph: out of memory");
    }
    g->device = cx->device;
    /* the fold's cudaMallocAsync temporaries become graph memory nodes, freed inside the graph again (what a graph
     * that is launched more than once needs) */
    e = cudaGraphInstantiate(&g->exec, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        free(g);
        return ms_error(MS_EDEVICE, "cuda:%d: cudaGraphInstantiate failed: %s", dev->cuda_index, cudaGetErrorString(e));
    }
    *out = g;
    return MS_OK;
}

extern "C" ms_status ms_graph_launch(ms_device *dev, const ms_graph *g)
{
    MS_CU_CTX(dev);
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    MS_FAIL_IF(!g, MS_EINVAL, "ms_graph_launch: no graph");
    MS_FAIL_IF(g->device != cx->device, MS_EINVAL, "ms_graph_launch: the graph belongs to cuda:%d, not cuda:%d",
               g->device, cx->device);
    MS_FAIL_IF(cx->capturing, MS_EBADSTATE, "cuda:%d: a graph launch while a CUDA graph is captured", cx->device);
    MS_CU(cudaGraphLaunch(g->exec, cx->stream));
    return MS_OK;
}

extern "C" void ms_graph_free(ms_graph *g)
{
    if (!g) return;
    cudaSetDevice(g->device);
    cudaGraphExecDestroy(g->exec);
    free(g);
}
