/* tests/finetune/nifti_write_driver.c — drives data/nifti_write for test_nifti_write.sh: reads REF's frame 0 on the
 * canonical grid (ms_nifti_frame), rounds it to labels, maps it back to the stored grid and writes it with REF's
 * geometry (.nii.gz outputs: ms_nifti_canonical_to_stored_u16 + ms_nifti_write_labels; .nii outputs:
 * ms_nifti_write_labels_like). The script then checks with nibabel that geometry and values came through exactly.
 * Usage: nifti_write_driver REF OUT   (exit 0 on success, 1 with one "path: reason" line otherwise) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "data/nifti.h"
#include "data/nifti_write.h"

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: nifti_write_driver REF OUT\n");
        return 2;
    }
    ms_nifti n;
    ms_nifti_geom g;
    ms_status st = ms_nifti_open(argv[1], &n);
    if (st) {
        fprintf(stderr, "%s\n", ms_errmsg());
        return 1;
    }
    int64_t nv = n.cdim[0] * n.cdim[1] * n.cdim[2];
    float *f = malloc((size_t)nv * sizeof *f);
    uint16_t *c = malloc((size_t)nv * 2), *s = malloc((size_t)nv * 2);
    uint64_t nonfinite = 0;
    int rc = 1;
    if (!f || !c || !s) goto leave;
    if ((st = ms_nifti_frame(&n, 0, f, &nonfinite))) goto fail;
    for (int64_t i = 0; i < nv; i++) c[i] = (uint16_t)lrintf(f[i]);
    ms_nifti_canonical_to_stored_u16(&n, c, s);
    if ((st = ms_nifti_geom_read(argv[1], &g))) goto fail;
    /* misuse must fail cleanly: a wrong voxel count, and an unwritable folder (no file left behind) */
    if (ms_nifti_write_labels(argv[2], &g, s, nv - 1) != MS_EINVAL) {
        fprintf(stderr, "a wrong voxel count was accepted\n");
        goto leave;
    }
    struct stat sb;
    if (stat(argv[2], &sb) == 0) {
        fprintf(stderr, "%s: left behind by a failed write\n", argv[2]);
        goto leave;
    }
    if (ms_nifti_write_labels("/nonexistent-folder/x.nii.gz", &g, s, nv) == MS_OK) {
        fprintf(stderr, "writing into a missing folder succeeded\n");
        goto leave;
    }
    /* .nii.gz outputs through the explicit steps, .nii through the one-call form: both paths get checked */
    size_t len = strlen(argv[2]);
    int gz = len > 3 && strcmp(argv[2] + len - 3, ".gz") == 0;
    if ((st = gz ? ms_nifti_write_labels(argv[2], &g, s, nv) : ms_nifti_write_labels_like(argv[2], argv[1], &n, c)))
        goto fail;
    printf("wrote %s: %lldx%lldx%lld, perm %d%d%d flip %d%d%d\n", argv[2], (long long)g.dim[1], (long long)g.dim[2],
           (long long)g.dim[3], n.perm[0], n.perm[1], n.perm[2], n.flip[0], n.flip[1], n.flip[2]);
    rc = 0;
    goto leave;
fail:
    fprintf(stderr, "%s\n", ms_errmsg());
leave:
    free(f);
    free(c);
    free(s);
    ms_nifti_close(&n);
    return rc;
}
