/* tools/image_io.h — the image and array files the CLI writes and reads: PNG (libpng) and NumPy .npy.
 *
 * PNGs are read by data/png.h (ms_png_read_image: HWC floats in 0..1, included here for the commands). Writers go
 * through kernels/base/fileio.h (temporary file, fsync, rename), so an interrupted write never leaves a half-written
 * file. .npy: version 1.0, little-endian '<f4', C order.
 */
#ifndef MS_IMAGE_IO_H
#define MS_IMAGE_IO_H

#include <stdint.h>

#include "base/status.h"
#include "data/png.h"

/* 8-bit PNG, channels 1 (gray) or 3 (RGB), pixels HWC. */
ms_status ms_png_write_u8(const char *path, const uint8_t *pix, int w, int h, int channels);

ms_status ms_npy_write_f32(const char *path, const float *data, const int64_t *shape, int ndim);
/* Reads a '<f4' C-order .npy (any ndim <= 8) into a malloc'd array; *data must be freed by the caller. */
ms_status ms_npy_read_f32(const char *path, float **data, int64_t *shape, int *ndim);

#endif
