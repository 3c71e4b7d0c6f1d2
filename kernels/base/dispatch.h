/* kernels/base/dispatch.h — run-time backend choice for ops.
 *
 * Every op X has ms_X_cpu (kernels/cpu/X.c) and ms_X_cuda (kernels/cuda/X.cu) with identical parameters, the
 * first being the ms_device. ms_X (static inline in the op's header) picks one by dev->kind. A CPU-only build
 * answers MS_EDEVICE for a CUDA device instead of failing to link.
 */
#ifndef MS_DISPATCH_H
#define MS_DISPATCH_H

#include "device.h"

static inline ms_status ms_no_cuda_(void)
{
    return ms_error(MS_EDEVICE, "this build of mrisam has no CUDA backend (rebuild with -DMS_CUDA=ON)");
}

#ifdef MS_HAVE_CUDA
#define MS_DISPATCH(dev, fn, ...) ((dev)->kind == MS_DEV_CUDA ? fn##_cuda(dev, __VA_ARGS__) : fn##_cpu(dev, __VA_ARGS__))
#define MS_DECLARE_OP(fn, ...) ms_status fn##_cpu(ms_device *dev, __VA_ARGS__); ms_status fn##_cuda(ms_device *dev, __VA_ARGS__);
#else
#define MS_DISPATCH(dev, fn, ...) ((dev)->kind == MS_DEV_CUDA ? ms_no_cuda_() : fn##_cpu(dev, __VA_ARGS__))
#define MS_DECLARE_OP(fn, ...) ms_status fn##_cpu(ms_device *dev, __VA_ARGS__);
#endif

#endif
