/* tools/image_io.h — the image and array files the CLI writes and reads: PNG (libpng) and NumPy .npy.
 *
 * PNGs are read and written by data/png.h (included here for the commands). Writers go
 * through kernels/base/fileio.h (temporary file, fsync, rename), so an interrupted write never leaves a half-written
 * file. .npy: version 1.0, little-endian '<f4', C order.
 */
#ifndef MS_IMAGE_IO_H
#define MS_IMAGE_IO_H

#include <stdint.h>

#include "base/status.h"
#include "data/png.h"

ms_status ms_npy_write_f32(const char *path, const float *data, const int64_t *shape, int ndim);
/* Reads a '<f4' C-order .npy (any ndim <= 8) into a malloc'd array; *data must be freed by the caller. */
ms_status ms_npy_read_f32(const char *path, float **data, int64_t *shape, int *ndim);

#endif
