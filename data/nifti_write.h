/* data/nifti_write.h — writing label volumes (predictions) as NIfTI-1 on a reference image's exact grid.
 *
 * The geometry is copied from the reference's raw header bytes, not from libnifti's parsed image: libnifti
 * rewrites pixdim and zeroes the quaternion of qform_code 0 files, and its writer reports no errors. What is copied:
 * dim (spatial part), pixdim (pixdim[0] = qfac included), qform_code, sform_code, quatern_b/c/d, qoffset_x/y/z,
 * srow_x/y/z, xyzt_units, dim_info. From a NIfTI-1 reference every copied value is bit-exact; from a NIfTI-2
 * reference the doubles are rounded to float (the NIfTI-1 format). Nothing else is copied: descrip, aux_file,
 * intent_name, db_name are blank and no extension is written (free text may hold patient data).
 *
 * Invariants of the written file: 348-byte little-endian header, magic "n+1", vox_offset 352, extension flag 0,
 * datatype uint8 (every value <= 255) or uint16, scl_slope 1, scl_inter 0. It is written to "<path>.tmp.<pid>",
 * fsynced and renamed (kernels/base/fileio.h), then read back (header bytes, a CRC-32 of the data, and a parse
 * through ms_nifti_open); a file that fails the read-back is removed and MS_ECORRUPT returned.
 */
#ifndef MS_NIFTI_WRITE_H
#define MS_NIFTI_WRITE_H

#include <stdint.h>

#include "base/status.h"
#include "data/nifti.h"

typedef struct ms_nifti_geom {
    int version;       /* of the reference: 0 ANALYZE (no qform/sform), 1, 2 */
    int64_t dim[8];    /* as written: the reference's, with dim[0] cut to 3 when it has several frames */
    double pixdim[8];
    int qform_code, sform_code;
    double quatern[6]; /* quatern_b, quatern_c, quatern_d, qoffset_x, qoffset_y, qoffset_z */
    double srow[3][4];
    int xyzt_units, dim_info;
    int64_t nvox;      /* dim[1]·dim[2]·dim[3] (missing axes count 1): the label volume's size */
} ms_nifti_geom;

/* Reads the reference header (plain or .gz; validated by ms_nifti_check_header) and takes its geometry. */
ms_status ms_nifti_geom_read(const char *ref_path, ms_nifti_geom *g);

/* Writes labels (nvox values, x fastest, on the reference's STORED grid) to path (.nii, or .nii.gz = gzip), then
 * verifies it by reading it back. nvox must equal g->nvox. */
ms_status ms_nifti_write_labels(const char *path, const ms_nifti_geom *g, const uint16_t *labels, int64_t nvox);

/* Maps a canonical (RAS) volume of n->cdim voxels, as ms_nifti_frame lays it out, back to the stored grid of
 * n->sdim voxels (the inverse of the permutation/flip; no interpolation). */
void ms_nifti_canonical_to_stored_u16(const ms_nifti *n, const uint16_t *canon, uint16_t *stored);

/* What predict needs in one call: labels on the canonical grid of `ref` (opened from ref_path with ms_nifti_open) are
 * mapped back to the stored grid and written to path with ref_path's geometry. */
ms_status ms_nifti_write_labels_like(const char *path, const char *ref_path, const ms_nifti *ref,
                                     const uint16_t *canon);

#endif
