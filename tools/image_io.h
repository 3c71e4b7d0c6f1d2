/* tools/image_io.h — the image and array files the CLI reads and writes: PNG (libpng) and NumPy .npy.
 *
 * ms_png_read gives float pixels on the 0..255 scale, HWC, 1 (gray) or 3 (RGB) channels: 8-bit values as they are,
 * 16-bit values divided by 257 (so 65535 → 255), palette → RGB, 1/2/4-bit gray → 8-bit, alpha dropped, no gamma.
 * Writers go through checkpoints/fileio.h (temporary file, fsync, rename), so an interrupted write never leaves
 * a half-written file. .npy: version 1.0, little-endian '<f4', C order.
 */
#ifndef MS_IMAGE_IO_H
#define MS_IMAGE_IO_H

#include <stdint.h>

#include "base/status.h"

typedef struct ms_image {
    int w, h, c;  /* c = 1 (gray) or 3 (RGB) */
    float *data;  /* h·w·c floats, row-major HWC, 0..255 scale */
} ms_image;

ms_status ms_png_read(const char *path, ms_image *img);
void ms_image_free(ms_image *img);
/* 8-bit PNG, channels 1 (gray) or 3 (RGB), pixels HWC. */
ms_status ms_png_write_u8(const char *path, const uint8_t *pix, int w, int h, int channels);

ms_status ms_npy_write_f32(const char *path, const float *data, const int64_t *shape, int ndim);
/* Reads a '<f4' C-order .npy (any ndim <= 8) into a malloc'd array; *data must be freed by the caller. */
ms_status ms_npy_read_f32(const char *path, float **data, int64_t *shape, int *ndim);

#endif
