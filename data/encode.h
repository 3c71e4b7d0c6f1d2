/* data/encode.h — what the store keeps of a volume's intensities (layout 2), and the normalisation the readers apply.
 *
 * Layout 2 keeps each volume's intensities as 16-bit integers ("stored values") and leaves the normalisation to
 * read time: a voxel's original value is slope · stored + inter, and a reader maps a stored value s to the 16-bit
 * normalised pixel every consumer sees, floor(65535 · clip((s − off) / sc, 0, 1) + 0.5), with the window (off, sc)
 * in stored units. Integer sources of at most 16 bits without scaling (most MRI) are kept exactly (slope 1, inter
 * 0), and so are floating-point or scaled sources whose values are all integers in −32768..65535 (PNGs, float32
 * volumes holding integers). Any other source is quantised: slope = max|v| / 32767 (int16, when a value is
 * negative) or max v / 65535 (uint16), inter 0, so zero stays zero and the error is at most slope / 2
 * (`max_error`, recorded). The window is fitted on the stored values with the store's --norm; because the fit
 * and the expression are those of layout 1 (data/intensity.h), an integer source reads back exactly the pixels a
 * layout-1 store holds.
 *
 * Per volume the store also keeps statistics of the stored values (min, max, moments and a fixed grid of
 * percentiles of the nonzero values), so a reader can pick another window later without ingesting again
 * (ms_encoding_rewindow).
 *
 * ingest (data/ingest.c) encodes; the store reader (data/store.c) and predict (finetune/predict.c) normalise with
 * ms_encoding_apply, so training, predict and eval see the same numbers.
 */
#ifndef MS_ENCODE_H
#define MS_ENCODE_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "data/intensity.h"

enum { MS_STORED_U16 = 1, MS_STORED_I16 = 3 }; /* the record dtypes of data/store_fmt.h */

/* The percentiles kept per volume (of the nonzero stored values, numpy's linear interpolation). */
#define MS_ENC_NPCT 19
extern const double ms_enc_pct[MS_ENC_NPCT];

typedef struct ms_encoding {
    int type;                  /* MS_STORED_U16 | MS_STORED_I16 */
    double slope, inter;       /* original = slope · stored + inter */
    double max_error;          /* 0 when exact, else slope / 2 */
    ms_intensity win;          /* the window in stored units (offset, scale; mean/std of the nonzero stored values) */
    int32_t min, max;          /* of all stored values */
    uint64_t n_nonzero;
    double mean, std;          /* of the nonzero stored values */
    double pct[MS_ENC_NPCT];   /* at ms_enc_pct */
} ms_encoding;

/* Integer voxels (the NIfTI's stored values when they need no scaling) → the encoding: exact, window fitted with
 * norm/p_lo/p_hi, statistics. */
ms_status ms_encode_fit_int(const void *v, ms_int_type type, size_t n, ms_norm norm, double p_lo, double p_hi,
                            ms_encoding *e);
/* Float voxels (after scaling, NaN/Inf already 0) → stored values in `out` (n, in the same order) and the encoding. */
ms_status ms_encode_floats(const float *v, size_t n, ms_norm norm, double p_lo, double p_hi, uint16_t *out,
                           ms_encoding *e);

/* Stored values (bits of the encoding's type) → normalised pixels with e->win, exactly the expression above: a
 * multiply-add per pixel (SSE2, two doubles wide), with the division only where the multiply-add lands within 1e-7
 * of a rounding tie. In place (stored == out) is allowed. */
void ms_encoding_apply(const ms_encoding *e, const uint16_t *stored, size_t n, uint16_t *out);
/* The smallest stored value (as int32) whose normalised pixel is above 0: "above background" in stored units. */
int32_t ms_encoding_threshold(const ms_encoding *e);
/* A new window from the kept statistics: percentile (p_lo, p_hi must be in ms_enc_pct), zscore or none. */
ms_status ms_encoding_rewindow(ms_encoding *e, ms_norm norm, double p_lo, double p_hi);

#endif
