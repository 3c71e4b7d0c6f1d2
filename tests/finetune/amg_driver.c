/* tests/finetune/amg_driver.c — drives finetune/amg.h's filtering, NMS and writers for test_segment_auto.sh on
 * candidates made by the script (synthetic masks whose boxes overlap in every way, which a random-weight SAM does not
 * give): N candidates as raw little-endian float32 files — logits (N, h, w), predicted IoU (N), points (N, 2) —
 * through ms_amg_add_candidate and ms_amg_nms, written as JSON (ms_amg_write_json) and as the raw uint16 label map
 * (ms_amg_label_map, every mask painted).
 * Usage: amg_driver N H W LOGITS IOU POINTS IOU_T STAB_T STAB_OFF NMS_T OUT.json OUT.labels
 * (exit 0 on success, 1 with one "path: reason" line otherwise) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "finetune/amg.h"

static float *read_f32(const char *path, size_t n)
{
    FILE *f = fopen(path, "rb");
    float *p = malloc(n * sizeof(float));
    size_t got = f && p ? fread(p, sizeof(float), n, f) : 0;
    if (f) fclose(f);
    if (got != n) {
        fprintf(stderr, "%s: not %zu float32 values\n", path, n);
        free(p);
        return NULL;
    }
    return p;
}

int main(int argc, char **argv)
{
    if (argc != 13) {
        fprintf(stderr, "usage: amg_driver N H W LOGITS IOU POINTS IOU_T STAB_T STAB_OFF NMS_T OUT.json OUT.labels\n");
        return 2;
    }
    const int n = atoi(argv[1]), h = atoi(argv[2]), w = atoi(argv[3]);
    const size_t hw = (size_t)h * w;
    float *lg = read_f32(argv[4], (size_t)n * hw), *iou = read_f32(argv[5], (size_t)n),
          *pt = read_f32(argv[6], (size_t)n * 2);
    uint16_t *lab = malloc(hw * sizeof(uint16_t));
    int rc = 1;
    ms_amg_config c;
    ms_amg_config_default(&c);
    c.pred_iou_thresh = (float)atof(argv[7]);
    c.stability_thresh = (float)atof(argv[8]);
    c.stability_offset = (float)atof(argv[9]);
    c.box_nms_thresh = atof(argv[10]);
    ms_amg_result r;
    memset(&r, 0, sizeof r);
    r.h = h;
    r.w = w;
    if (!lg || !iou || !pt || !lab) goto leave;
    ms_status st = MS_OK;
    for (int i = 0; i < n && !st; i++)
        st = ms_amg_add_candidate(&r, &c, lg + (size_t)i * hw, iou[i], pt[2 * i], pt[2 * i + 1]);
    if (!st) st = ms_amg_nms(&r, c.box_nms_thresh);
    if (!st) st = ms_amg_write_json(argv[11], &r);
    if (!st) st = ms_amg_label_map(&r, 65535, lab);
    if (st) { fprintf(stderr, "%s\n", ms_errmsg()); goto leave; }
    FILE *f = fopen(argv[12], "wb");
    if (!f || fwrite(lab, sizeof(uint16_t), hw, f) != hw) { fprintf(stderr, "%s: cannot write\n", argv[12]); }
    else rc = 0;
    if (f && fclose(f)) rc = 1;
    printf("amg_driver: %d candidates, %d past IoU, %d stable, %d after NMS\n", r.n_candidates, r.n_iou, r.n_stable,
           r.n);
leave:
    ms_amg_result_free(&r);
    free(lg);
    free(iou);
    free(pt);
    free(lab);
    return rc;
}
