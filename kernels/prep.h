/* kernels/prep.h — SAM's input preprocessing as an op: a batch of native uint16 slices (the store's normalised
 * pixels, [n][native_h][native_w], each top-left) plus per-sample crop box and flip → the float model input
 * [n][channels][size][size], exactly what the loader's MS_LOAD_MODEL path computes on the CPU (data/preprocess.h:
 * one antialiased bilinear resampling from the box, SAM or unit normalisation, zero padding; resize 0 = longest
 * side, 1 = stretch; norm 0 = SAM, 1 = unit). The formulas are kernels/prep_math.h, shared with data/preprocess.c,
 * so the CPU half is bit-identical to the loader and the CUDA half computes the same rounded operations.
 * A sample with h or w 0 (no readable record) gives zeros. `samples` lives where the op runs (device memory for
 * CUDA), so the CUDA half cannot check them: its producer does (the loader calls ms_prep_check per sample; the
 * kernel only clamps its tap count), while the CPU half checks before writing anything. The input path of pretrain (docs/PERFORMANCE.md §GPU input path) ships the integers and runs this op on
 * the device.
 * Tested by tests/kernels/test_prep.c (CPU op vs the loader's MS_LOAD_MODEL batches) and test_prep_cuda.c (CUDA vs
 * CPU, skips without a GPU).
 */
#ifndef MS_PREP_H
#define MS_PREP_H

#include "base/dispatch.h"

typedef struct ms_prep_sample {
    int32_t h, w;           /* native slice size; 0: an invalid sample (zeros) */
    int32_t flip;           /* mirrored left-right before the crop (the MAE augmentation's flip) */
    int32_t reserved;
    float y0, x0, bh, bw;   /* the crop box in the (mirrored) slice */
} ms_prep_sample;

/* Host-side check of the samples against the batch shape: slice inside native_h × native_w, box inside the slice,
 * at most MS_PREP_MAX_TAPS taps per output (shrinking by up to ~30×). */
ms_status ms_prep_check(const ms_prep_sample *s, int64_t n, int64_t native_h, int64_t native_w, int64_t size,
                        int64_t resize);

MS_DECLARE_OP(ms_prep_native, float *y, const uint16_t *native, const ms_prep_sample *samples, int64_t n,
              int64_t native_h, int64_t native_w, int64_t size, int64_t channels, int64_t resize, int64_t norm)

static inline ms_status ms_prep_native(ms_device *dev, float *y, const uint16_t *native,
                                       const ms_prep_sample *samples, int64_t n, int64_t native_h, int64_t native_w,
                                       int64_t size, int64_t channels, int64_t resize, int64_t norm)
{ return MS_DISPATCH(dev, ms_prep_native, y, native, samples, n, native_h, native_w, size, channels, resize, norm); }

#endif
