/* kernels/loss.h — the training losses. `loss` is ONE float in device memory (written, not accumulated);
 * `dloss` is the upstream scalar (host float, e.g. 1/accum_steps); backward accumulates into the input grad.
 *   mse:   loss = Σ_r w_r·mean_c (p[r,c]−t[r,c])² / Σ_r w_r, p,t (rows, cols), w (rows) or NULL (all 1; MAE uses
 *          w = 1 on masked patches). Σ w = 0 gives loss 0 and no gradient.
 *   dice:  soft Dice of finetune-SAM / MONAI (docs/FINETUNE.md §Step): p = σ(logit) per channel,
 *          y = one_hot(target, C); per (b,c): 1 − (2Σ p·y + s)/(Σ p² + Σ y² + s); mean over b and c.
 *          logits (B,C,P), target (B,P) int32.
 *   cross_entropy: mean over pixels with target >= 0 of −log softmax_c(logits)[target]; logits (B,C,P),
 *          target (B,P); target < 0 is ignored; when every pixel is ignored the loss is 0 and no gradient flows
 *          (torch would give NaN). In dice, a target below 0 belongs to no class.
 * Tested by rows "mse", "dice", "cross_entropy" of tests/kernels/op_cases.c (test_ops_a: CPU vs reference, bad labels;
 *   test_ops_cuda: CUDA vs CPU).
 */
#ifndef MS_LOSS_H
#define MS_LOSS_H

#include "base/dispatch.h"

MS_DECLARE_OP(ms_mse_loss_forward, float *loss, const float *pred, const float *target, const float *w,
              int64_t rows, int64_t cols)
MS_DECLARE_OP(ms_mse_loss_backward, float *dpred, float dloss, const float *pred, const float *target,
              const float *w, int64_t rows, int64_t cols)
MS_DECLARE_OP(ms_dice_loss_forward, float *loss, const float *logits, const int32_t *target, int64_t B, int64_t C,
              int64_t P, float smooth)
MS_DECLARE_OP(ms_dice_loss_backward, float *dlogits, float dloss, const float *logits, const int32_t *target,
              int64_t B, int64_t C, int64_t P, float smooth)
MS_DECLARE_OP(ms_cross_entropy_forward, float *loss, const float *logits, const int32_t *target, int64_t B,
              int64_t C, int64_t P)
MS_DECLARE_OP(ms_cross_entropy_backward, float *dlogits, float dloss, const float *logits, const int32_t *target,
              int64_t B, int64_t C, int64_t P)

static inline ms_status ms_mse_loss_forward(ms_device *dev, float *loss, const float *pred, const float *target,
                                            const float *w, int64_t rows, int64_t cols)
{ return MS_DISPATCH(dev, ms_mse_loss_forward, loss, pred, target, w, rows, cols); }
static inline ms_status ms_mse_loss_backward(ms_device *dev, float *dpred, float dloss, const float *pred,
                                             const float *target, const float *w, int64_t rows, int64_t cols)
{ return MS_DISPATCH(dev, ms_mse_loss_backward, dpred, dloss, pred, target, w, rows, cols); }
static inline ms_status ms_dice_loss_forward(ms_device *dev, float *loss, const float *logits, const int32_t *target,
                                             int64_t B, int64_t C, int64_t P, float smooth)
{ return MS_DISPATCH(dev, ms_dice_loss_forward, loss, logits, target, B, C, P, smooth); }
static inline ms_status ms_dice_loss_backward(ms_device *dev, float *dlogits, float dloss, const float *logits,
                                              const int32_t *target, int64_t B, int64_t C, int64_t P, float smooth)
{ return MS_DISPATCH(dev, ms_dice_loss_backward, dlogits, dloss, logits, target, B, C, P, smooth); }
static inline ms_status ms_cross_entropy_forward(ms_device *dev, float *loss, const float *logits,
                                                 const int32_t *target, int64_t B, int64_t C, int64_t P)
{ return MS_DISPATCH(dev, ms_cross_entropy_forward, loss, logits, target, B, C, P); }
static inline ms_status ms_cross_entropy_backward(ms_device *dev, float *dlogits, float dloss, const float *logits,
                                                  const int32_t *target, int64_t B, int64_t C, int64_t P)
{ return MS_DISPATCH(dev, ms_cross_entropy_backward, dlogits, dloss, logits, target, B, C, P); }

#endif
