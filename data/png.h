/* data/png.h — the one PNG reader (libpng), for ingest's 2D pairs and the CLI's images (docs/CLI.md "ingest, ...",
 * "embed, segment, convert"; docs/FORMATS.md "Store", Pixels).
 *
 * ms_png_read returns the samples as stored, at their bit depth: 8-bit PNGs give 0..255, 16-bit PNGs 0..65535 —
 * never rescaled, because a mask's values are class ids. Palette images are expanded to RGB and 1/2/4-bit gray to
 * 8 bits (libpng's expansion scales them: a 1-bit 1 becomes 255); alpha and tRNS transparency are dropped; no gamma
 * correction; interlaced files are de-interlaced. With MS_PNG_GRAY colour is converted to one gray channel by libpng
 * (png_set_rgb_to_gray with its default weights, or the file's cHRM; a pixel with R = G = B keeps its value).
 *
 * ms_png_read_image is the image path (embed, segment): every sample scaled to 0..1 by the bit depth's maximum,
 * sample · (1 / (2^depth − 1)) in float, so an 8-bit 255 and a 16-bit 65535 are both 1.
 */
#ifndef MS_PNG_H
#define MS_PNG_H

#include <stdint.h>

#include "base/status.h"

typedef enum ms_png_color {
    MS_PNG_AS_STORED = 0, /* gray stays 1 channel, colour 3 channels (RGB) */
    MS_PNG_GRAY = 1,      /* 1 channel: colour converted to gray */
} ms_png_color;

typedef struct ms_png {
    int w, h, c;  /* c = 1 (gray) or 3 (RGB) */
    int depth;    /* bits per sample: 8 or 16 */
    uint16_t *px; /* h·w·c samples, row-major HWC, 0..2^depth − 1 */
} ms_png;

/* Errors read "<path>: reason"; images wider or taller than 65536 pixels are refused. */
ms_status ms_png_read(const char *path, ms_png_color color, ms_png *out);
void ms_png_free(ms_png *p);

typedef struct ms_image {
    int w, h, c; /* c = 1 (gray) or 3 (RGB) */
    float *data; /* h·w·c floats, row-major HWC, 0..1 */
} ms_image;

ms_status ms_png_read_image(const char *path, ms_image *img);
void ms_image_free(ms_image *img);

/* Writes an 8-bit PNG, channels 1 (gray) or 3 (RGB), pixels HWC, crash-safe (kernels/base/fileio.h: temporary
 * file, fsync, rename). */
ms_status ms_png_write_u8(const char *path, const uint8_t *pix, int w, int h, int channels);

#endif
