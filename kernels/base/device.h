/* kernels/base/device.h — the compute device handle passed as the first argument of every op.
 *
 * MS_DEV_CPU: host memory, OpenMP threads (n_threads) and OpenBLAS. MS_DEV_CUDA: device memory, one stream,
 * cuBLAS/cuBLASLt handles and a workspace, all inside `cuda` (kernels/cuda/cuda_ctx.h). Results on the CPU are
 * deterministic for a given n_threads. There is no global device: code that computes takes an ms_device *.
 */
#ifndef MS_DEVICE_H
#define MS_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef enum { MS_DEV_CPU = 0, MS_DEV_CUDA = 1 } ms_device_kind;

/* The arithmetic of the heavy ops (GEMMs, attention). MS_PREC_FP32: exact fp32. MS_PREC_BF16: their inputs rounded
 * to bf16 (round to nearest even), products accumulated in fp32, results fp32; everything else (LayerNorm
 * statistics, softmax, losses, gradient norms, master weights, AdamW state) stays fp32 (docs/PRECISION.md). ms_device_init sets fp32 on every device; the tools default to bf16 on CUDA (--precision). */
typedef enum { MS_PREC_FP32 = 0, MS_PREC_BF16 = 1 } ms_precision;

typedef struct ms_device {
    ms_device_kind kind;
    int n_threads;  /* CPU threads for OpenMP regions and OpenBLAS */
    int cuda_index; /* CUDA device ordinal */
    void *cuda;     /* ms_cuda_ctx * when kind == MS_DEV_CUDA */
    ms_precision precision; /* MS_PREC_FP32 after init; set by the caller */
} ms_device;

/* n_threads <= 0 means all cores. Fails with MS_EDEVICE for CUDA when the build or the machine has none.
 * Every field of *dev is set here (nothing is read from it): ms_device_init uses CUDA device 0, _at the ordinal
 * given (from ms_device_parse). */
ms_status ms_device_init(ms_device *dev, ms_device_kind kind, int n_threads);
ms_status ms_device_init_at(ms_device *dev, ms_device_kind kind, int index, int n_threads);
void ms_device_free(ms_device *dev);
/* Parse "cpu" / "cuda" / "cuda:N". */
ms_status ms_device_parse(const char *s, ms_device_kind *kind, int *index);
/* Parse "fp32" / "bf16". */
ms_status ms_precision_parse(const char *s, ms_precision *out);
const char *ms_precision_name(ms_precision p);
/* What the tools use when --precision is not given: bf16 on CUDA, fp32 on the CPU. */
ms_precision ms_precision_default(ms_device_kind kind);
/* Device memory in use and in all, bytes (cudaMemGetInfo: every process on the GPU; for a benchmark's peak, sample
 * after a step, when the arena and the library workspaces are all allocated). The CPU answers MS_EUNSUPPORTED. */
ms_status ms_dev_mem_info(ms_device *dev, size_t *used, size_t *total);
/* 1 when this build has the CUDA backend and a GPU is visible. */
int ms_cuda_available(void);
/* The GPUs this process sees (CUDA_VISIBLE_DEVICES applied); 0 without the CUDA backend. */
int ms_cuda_device_count(void);

/* Memory on the device (host malloc for CPU, cudaMalloc for CUDA); 64-byte aligned. */
ms_status ms_dev_alloc(ms_device *dev, size_t bytes, void **out);
void ms_dev_free(ms_device *dev, void *p);
ms_status ms_dev_zero(ms_device *dev, void *p, size_t bytes);
ms_status ms_dev_to_host(ms_device *dev, void *host_dst, const void *dev_src, size_t bytes);
ms_status ms_dev_from_host(ms_device *dev, void *dev_dst, const void *host_src, size_t bytes);
ms_status ms_dev_copy(ms_device *dev, void *dst, const void *src, size_t bytes); /* both on dev */
ms_status ms_dev_sync(ms_device *dev);

#endif
