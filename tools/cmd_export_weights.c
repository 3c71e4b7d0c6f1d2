/* tools/cmd_export_weights.c — `mrisam export-weights CKPT -o F.pth|F.safetensors`: any pretraining checkpoint as
 * full SAM weights (SAM's key layout, strict-loadable by SAM's builder), like the export at the end of a run.
 *
 * CKPT is a run directory (its newest complete checkpoint), its ckpt/ folder, or one ckpt/step_%08d/ directory.
 * The checkpoint's own config.json says how the run's model was built (--ckpt file, or --init random --model and
 * --seed); the prompt encoder and mask decoder are rebuilt that way and the image encoder is read from the
 * checkpoint's model.safetensors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "checkpoints/rundir.h"
#include "cli.h"
#include "pretrain_model.h"

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* CKPT → a complete step directory. */
static ms_status resolve(const char *ckpt, char *out, size_t n)
{
    char p[4200];
    snprintf(p, sizeof p, "%s/DONE", ckpt);
    if (access(p, F_OK) == 0) { snprintf(out, n, "%s", ckpt); return MS_OK; }
    int64_t step;
    snprintf(p, sizeof p, "%s/ckpt", ckpt);
    if (is_dir(p)) return ms_ckpt_dir_latest(ckpt, &step, out, n);
    snprintf(p, sizeof p, "%s/..", ckpt); /* the ckpt/ folder itself */
    if (is_dir(ckpt)) {
        char probe[4300];
        snprintf(probe, sizeof probe, "%s/ckpt", p);
        if (is_dir(probe)) return ms_ckpt_dir_latest(p, &step, out, n);
    }
    MS_FAIL(MS_ENOTFOUND, "%s: not a run directory or a complete checkpoint (no DONE)", ckpt);
}

static int run(int argc, char **argv)
{
    static const ms_cmd_help help = {
        "mrisam export-weights CKPT -o F.pth|F.safetensors [--layout sam]",
        "Writes a pretraining checkpoint as full SAM weights in SAM's key layout (image encoder from the checkpoint,\n"
        "prompt encoder and mask decoder as the run built them), loadable with SAM's own builder (strict).\n"
        "CKPT: a run directory (newest complete checkpoint), its ckpt/ folder, or a ckpt/step_%08d/ directory.",
        "  mrisam export-weights run/ -o sam_mri_vit_b.pth\n"
        "  mrisam export-weights run/ckpt/step_00002000 -o step2000.safetensors"};
    const char *out = NULL, *layout = "sam";
    int threads = 0;
    const ms_opt opts[] = {{"o", MS_OPT_STR, &out, "FILE", "output .pth or .safetensors"},
                           {"layout", MS_OPT_STR, &layout, "sam", "key layout (sam; finetune-sam comes with finetune)"},
                           {"threads", MS_OPT_INT, &threads, "N", "accepted for uniformity (I/O-bound)"},
                           {0}};
    ms_strlist pos = {0};
    int prc = ms_cli_parse(&help, opts, argc, argv, &pos);
    if (prc) { ms_strlist_free(&pos); return prc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE; }
    if (pos.n != 1 || !out) {
        fprintf(stderr, "mrisam export-weights: needs CKPT and -o FILE (see --help)\n");
        ms_strlist_free(&pos);
        return MS_EXIT_USAGE;
    }
    ms_status rc = MS_OK;
    ms_device dev = {0};
    ms_sam sam;
    memset(&sam, 0, sizeof sam);
    ms_state_dict sd, src;
    ms_sd_init(&sd);
    ms_sd_init(&src);
    cJSON *cfg = NULL;
    char *js = NULL;
    char dir[4200], p[4400], model_name[32];
    if (strcmp(layout, "sam")) {
        rc = ms_error(MS_EUNSUPPORTED, "--layout %s: only the SAM layout exists in this version", layout);
        goto leave;
    }
    if ((rc = resolve(pos.v[0], dir, sizeof dir))) goto leave;
    size_t len;
    snprintf(p, sizeof p, "%s/config.json", dir);
    if ((rc = ms_read_file(p, 1 << 20, &js, &len))) goto leave;
    cfg = cJSON_Parse(js);
    if (!cfg) { rc = ms_error(MS_EFORMAT, "%s: not valid JSON", p); goto leave; }
    const cJSON *ck = cJSON_GetObjectItemCaseSensitive(cfg, "ckpt"), *mo = cJSON_GetObjectItemCaseSensitive(cfg, "model"),
                *se = cJSON_GetObjectItemCaseSensitive(cfg, "seed");
    const char *ckpt = cJSON_IsString(ck) && ck->valuestring[0] ? ck->valuestring : NULL;
    const char *model = cJSON_IsString(mo) ? mo->valuestring : NULL;
    uint64_t seed = cJSON_IsNumber(se) ? (uint64_t)se->valuedouble : 0;
    if ((rc = ms_device_init(&dev, MS_DEV_CPU, threads))) goto leave;
    if ((rc = ms_pt_build_sam(&sam, ckpt, model, seed, &dev, model_name, sizeof model_name))) goto leave;
    /* the trained encoder replaces the one the run started from */
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    if ((rc = ms_sd_load(p, &src))) goto leave;
    for (int i = 0; i < sam.ps.n && !rc; i++) {
        const ms_param *q = &sam.ps.p[i];
        if (strncmp(q->name, "image_encoder.", 14)) continue;
        float *h = malloc((size_t)q->numel * sizeof(float));
        if (!h) { rc = ms_error(MS_ENOMEM, "out of memory"); break; }
        rc = ms_sd_get_f32(&src, q->name, q->shape, q->ndim, h);
        if (!rc) rc = ms_dev_from_host(&dev, sam.ps.data + q->off, h, (size_t)q->numel * sizeof(float));
        free(h);
    }
    if (rc) { ms_error_prefix("%s", p); goto leave; }
    if ((rc = ms_sam_to_sd(&sam, &sd))) goto leave;
    if ((rc = ms_sd_save(out, &sd))) goto leave;
    printf("export-weights: %s (%s) -> %s\n", dir, model_name, out);
leave:
    cJSON_Delete(cfg);
    free(js);
    ms_sd_free(&sd);
    ms_sd_free(&src);
    ms_sam_free(&sam);
    ms_device_free(&dev);
    ms_strlist_free(&pos);
    return ms_cli_report("export-weights", rc);
}

const ms_command ms_cmd_export_weights = {"export-weights", "write a pretraining checkpoint as SAM weights", run};
