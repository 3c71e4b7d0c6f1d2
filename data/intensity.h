/* data/intensity.h — per-volume intensity normalisation of ingest, and the uint16 encoding of the store.
 *
 * Every method maps the volume linearly onto [0,1] through a window [offset, offset + scale], clips, and stores
 * round(65535 · t); so original ≈ offset + scale · stored / 65535 inside the window. Methods:
 *   percentile: window = the p_lo and p_hi percentiles (numpy's linear interpolation) of the nonzero voxels;
 *   zscore:     window = [min, max] of the volume, and the mean/std of the nonzero voxels are recorded so the loader
 *               can z-score exactly: z = (original − mean) / std;
 *   none:       window = [min, max] of the volume.
 * Percentiles: a 65536-bin histogram, then an exact selection inside the bins holding the wanted ranks (O(n),
 * no copy of the volume); never a sort of every voxel.
 */
#ifndef MS_INTENSITY_H
#define MS_INTENSITY_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

typedef enum { MS_NORM_PERCENTILE = 0, MS_NORM_ZSCORE = 1, MS_NORM_NONE = 2 } ms_norm;

typedef struct ms_intensity {
    double offset, scale; /* the window; scale > 0 */
    double mean, std;     /* of the nonzero voxels, computed for zscore only (0 and 1 otherwise or when none) */
    uint64_t n_nonzero;
    int32_t int_lo, int_hi; /* when int_hi >= int_lo: every value was an integer in this range (apply uses a table) */
} ms_intensity;

ms_status ms_norm_parse(const char *s, ms_norm *out);
const char *ms_norm_name(ms_norm n);
/* Fits the window of `norm` to n values. Uses a temporary copy of the nonzero values for percentiles. */
ms_status ms_intensity_fit(const float *v, size_t n, ms_norm norm, double p_lo, double p_hi, ms_intensity *out);
/* Integer voxels of at most 16 bits, as stored (any order): the same fit as ms_intensity_fit on their values as
 * floats, from one counting pass without the float copy. Always sets int_lo..int_hi (the values' range). */
typedef enum { MS_INT_U8, MS_INT_I8, MS_INT_U16, MS_INT_I16 } ms_int_type;
ms_status ms_intensity_fit_int(const void *v, ms_int_type type, size_t n, ms_norm norm, double p_lo, double p_hi,
                               ms_intensity *out);
/* The same, and with nq > 0 also the mean/std of the nonzero values (whatever the norm) and their percentiles
 * q[0..nq) (0..100, numpy's linear interpolation; 0 when every value is 0) into qv. */
ms_status ms_intensity_fit_int_ex(const void *v, ms_int_type type, size_t n, ms_norm norm, double p_lo,
                                  double p_hi, const double *q, int nq, double *qv, ms_intensity *out);
/* The encoding of every integer in int_lo..int_hi (int_hi − int_lo + 1 entries, malloc'd; the caller frees):
 * lut[k] is what ms_intensity_apply gives for the value int_lo + k. */
ms_status ms_intensity_lut(const ms_intensity *it, uint16_t **lut);
/* out[i] = floor(65535 · clip((v[i] − offset) / scale, 0, 1) + 0.5), evaluated in double in exactly this order. */
void ms_intensity_apply(const float *v, size_t n, const ms_intensity *it, uint16_t *out);
/* The q-th percentile (0..100) of n values with numpy's linear interpolation; reorders v. */
double ms_percentile_select(float *v, size_t n, double q);

#endif
