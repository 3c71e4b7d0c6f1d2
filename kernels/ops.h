/* kernels/ops.h — the op table: every op mrisam's models are built from, forward and backward.
 *
 * Each op header declares ms_<op>_cpu (kernels/cpu/<file>.c, the fp32 reference, OpenMP + OpenBLAS) and
 * ms_<op>_cuda (kernels/cuda/<file>.cu) with identical parameters, and ms_<op> which dispatches on
 * dev->kind — so model code is written once and a test can run one op on both backends and compare.
 * Conventions (all ops): row-major fp32; the first argument is the ms_device; outputs first, then saved
 * tensors, inputs, weights, sizes, scalars; element counts are int64_t; backward ACCUMULATES (+=) into every
 * gradient output and skips NULL ones; CPU results are deterministic for a given thread count.
 * Adding an op: kernels/README.md.
 */
#ifndef MS_OPS_H
#define MS_OPS_H

#include "base/device.h"
#include "base/status.h"
#include "base/tensor.h"

#include "activation.h"  /* gelu, relu */
#include "attention.h"   /* grouped SDPA with decomposed relative positions */
#include "attention_fold.h" /* relative positions folded into extra q/k columns */
#include "batchnorm.h"   /* batchnorm2d (training and inference) */
#include "conv.h"        /* conv_patch, conv2d, conv_transpose2x2 */
#include "dwconv.h"      /* depthwise conv2d */
#include "elementwise.h" /* add, add_bcast, scale, transpose, gather_rows, reduce_sum */
#include "layernorm.h"   /* layernorm, layernorm2d */
#include "loss.h"        /* mse, dice, cross_entropy */
#include "matmul.h"      /* matmul, linear */
#include "optim.h"       /* adamw_step, sumsq, clip_grad_norm */
#include "prep.h"        /* native uint16 slices → SAM model input (the GPU input path) */
#include "rel_pos.h"     /* rel_pos_resize */
#include "resize.h"      /* bilinear, bicubic */
#include "softmax.h"     /* softmax */
#include "window.h"      /* window partition / unpartition */

#endif
