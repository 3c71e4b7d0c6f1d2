/* data/nifti.h — NIfTI reading for ingest: our own header validation in front of libnifti, datatype conversion,
 * scl_slope/scl_inter, NaN/Inf handling, the choice of affine, and reorientation to RAS+ by permutation and flip.
 *
 * Invariants: libnifti never sees a file whose header failed ms_nifti_check_header and whose data length
 * disagrees with the header (libnifti 3.0.1 crashes or allocates gigabytes on hostile headers). Free-text header
 * fields (descrip, aux_file, intent_name, extensions) are never read. Canonical volumes are float32, x fastest,
 * axes (x, y, z) = (Right, Anterior, Superior) increasing; no interpolation ever happens.
 */
#ifndef MS_NIFTI_H
#define MS_NIFTI_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

enum { MS_GEOM_SFORM = 1, MS_GEOM_QFORM = 2, MS_GEOM_PIXDIM = 3 };

typedef struct ms_nifti_hdr {
    int version; /* 1 or 2; 0 = ANALYZE 7.5 (no magic) */
    int pair;    /* 1 when the data lives in a separate .img */
    int swapped; /* header is in the other byte order */
    int datatype, nbyper;
    int64_t dim[8];
    double pixdim[8];
    int64_t vox_offset;
    double scl_slope, scl_inter;
    int qform_code, sform_code;
    int64_t nvox;   /* product of dim[1..dim[0]] */
    int64_t nbytes; /* nvox · nbyper */
} ms_nifti_hdr;

/* Largest volume accepted (bytes of voxel data). */
#define MS_NIFTI_MAX_BYTES ((int64_t)16 << 30)

/* Validates a raw header of n bytes (348 or more for NIfTI-1/ANALYZE, 540 or more for NIfTI-2) without touching
 * anything else: sizes, dims, datatype, offsets, pixdim. Pure and allocation-free (the fuzz target). */
ms_status ms_nifti_check_header(const uint8_t *buf, size_t n, ms_nifti_hdr *out);

typedef struct ms_nifti {
    void *nim;   /* nifti_image * (header and geometry only; data is read by us, see nifti.c) */
    void *data;  /* the voxel data, native byte order */
    void *block; /* the allocation data points into (freed by ms_nifti_close); NULL when the buffer was lent */
    ms_nifti_hdr hdr;
    int geom;             /* MS_GEOM_* : which affine was used */
    double affine[4][4];  /* voxel → world (RAS mm) of the stored grid */
    int perm[3], flip[3]; /* canonical axis i = stored axis perm[i], reversed when flip[i] */
    int64_t sdim[3];      /* stored grid size (1 for missing axes) */
    int64_t cdim[3];      /* canonical grid size */
    double cspacing[3];   /* canonical voxel size (mm) */
    double caffine[4][4]; /* canonical voxel → world */
    int64_t n_frames;
    char warn[256]; /* non-fatal notes ("no sform or qform: using pixdim"), "" when none */
} ms_nifti;

/* Validates the header and the file length, then reads the image with libnifti. Single-file .nii.gz up to
 * MS_NIFTI_MEM_MAX bytes are read whole and inflated in memory (ms_nifti_open_mem); larger ones, .hdr/.img pairs and
 * uncompressed names stream through zlib (no second copy of the file in memory). */
#define MS_NIFTI_MEM_MAX ((int64_t)1 << 30)
/* 1 when ms_nifti_open takes the in-memory path for this file (a .nii.gz name, at most MS_NIFTI_MEM_MAX bytes). */
int ms_nifti_in_memory(const char *path);
ms_status ms_nifti_open(const char *path, ms_nifti *out);
/* A buffer lent to ms_nifti_open_mem for the inflated file and kept across volumes by its owner (a fresh multi-MB
 * allocation costs a page fault per 4 KiB every time). Grown as needed; the owner frees p. */
typedef struct ms_nifti_buf {
    uint8_t *p;
    size_t cap;
} ms_nifti_buf;
/* The same from the bytes of a single-file NIfTI already in memory (`file`, n bytes, gzip or not; not kept), `path`
 * naming it in messages. gzip: the header is inflated first and checked, then the whole stream at once with
 * libdeflate (built with MS_HAVE_LIBDEFLATE; multi-member files too) or zlib (otherwise, and for data over 4 GB).
 * lent: NULL, or a buffer out->data will point into (valid until the buffer's next use; close the image first). */
ms_status ms_nifti_open_mem(const char *path, const uint8_t *file, size_t n, ms_nifti_buf *lent, ms_nifti *out);
/* Reads the whole file at `path` into *buf (grown with realloc as needed; *cap its size), its length in *n. */
ms_status ms_nifti_read_file(const char *path, uint8_t **buf, size_t *cap, size_t *n);
/* Frame f as a canonical float32 volume of cdim[0]·cdim[1]·cdim[2] voxels, scaling applied, NaN/Inf set to 0 and
 * counted in *n_nonfinite. */
ms_status ms_nifti_frame(const ms_nifti *n, int64_t frame, float *dst, uint64_t *n_nonfinite);
/* Integer voxels read as they are (uint8, int8, uint16, int16 and no scl_slope/scl_inter that changes a value):
 * returns the datatype code and sets *data to frame f as stored (sdim order, native byte order); 0 otherwise. Those
 * frames can skip the float volume: ms_intensity_fit_int on *data, then ms_nifti_frame_lut. */
int ms_nifti_frame_int(const ms_nifti *n, int64_t frame, const void **data);
/* Frame f of such an image through a table, in canonical order: dst[i] = lut[v − lo] for values v in lo..hi (0 for
 * any other value, which the table's fit on the same frame rules out). */
ms_status ms_nifti_frame_lut(const ms_nifti *n, int64_t frame, const uint16_t *lut, int32_t lo, int32_t hi,
                             uint16_t *dst);
/* The same walk copying the frame's stored values as 16 bits (layout 2, data/encode.h): uint16/int16 as they are,
 * uint8 zero- and int8 sign-extended. MS_EINVAL unless ms_nifti_frame_int accepts the frame. */
ms_status ms_nifti_frame_raw16(const ms_nifti *n, int64_t frame, uint16_t *dst);
/* A 16-bit integer frame (ms_nifti_frame_int, 2-byte aligned) seen in canonical order without a copy: canonical
 * voxel (x, y, z) is (*base)[x·st[0] + y·st[1] + z·st[2]] (strides may be negative). Returns its datatype, or 0
 * when the frame cannot be viewed so (8-bit, scaled, float, misaligned). */
int ms_nifti_frame_view16(const ms_nifti *n, int64_t frame, const uint16_t **base, int64_t st[3]);
void ms_nifti_close(ms_nifti *n);
/* The datatype's name ("int16"), or "unknown". */
const char *ms_nifti_type_name(int datatype);
/* 1 when two affines agree within tol mm in every entry. */
int ms_affine_close(const double a[4][4], const double b[4][4], double tol);

#endif
