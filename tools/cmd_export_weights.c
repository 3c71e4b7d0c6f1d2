/* tools/cmd_export_weights.c — `mrisam export-weights CKPT -o F.pth|F.safetensors`: a pretraining or fine-tuning
 * checkpoint as full SAM weights (SAM's key layout, strict-loadable by SAM's builder), or a fine-tuning checkpoint
 * in finetune-SAM's key layout. The conversion is finetune/export.h's. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "finetune/export.h"
#include "base/path.h"
#include "finetune/ft_model.h"
#include "finetune/predict.h"

static int run(int argc, char **argv)
{
    static const ms_cmd_help help = {
        "mrisam export-weights CKPT -o F.pth|F.safetensors [--layout sam|finetune-sam] [--task NAME]",
        "Writes a pretraining checkpoint as full SAM weights in SAM's key layout (image encoder from the checkpoint,\n"
        "prompt encoder and mask decoder as the run built them), loadable with SAM's own builder (strict);\n"
        "vit_t (MobileSAM's TinyViT) in mobile_sam.pt's layout, num_batches_tracked included, for MobileSAM's builder.\n"
        "CKPT: a run directory (newest complete checkpoint), its ckpt/ folder, or a ckpt/step_%08d/ directory.\n"
        "A fine-tuning checkpoint (RUN/, RUN/best) is written with its task's head as SAM's (--task when several):\n"
        "--layout sam merges LoRA into the base weights (adapters cannot be merged: use finetune-sam);\n"
        "--layout finetune-sam keeps LoRA/adapter tensors under finetune-SAM's key names and order.",
        "  mrisam export-weights run/ -o sam_mri_vit_b.pth\n"
        "  mrisam export-weights run/ckpt/step_00002000 -o step2000.safetensors\n"
        "  mrisam export-weights ft_run/ --task prostate -o prostate_lora_merged.pth\n"
        "  mrisam export-weights ft_run/ --layout finetune-sam -o finetune_sam_lora.pth"};
    const char *out = NULL, *layout = "sam", *task = NULL;
    int threads = 0;
    const ms_opt opts[] = {{"o", MS_OPT_STR, &out, "FILE", "output .pth or .safetensors"},
                           {"layout", MS_OPT_STR, &layout, "L",
                            "sam (default) or finetune-sam (fine-tuning checkpoints)"},
                           {"task", MS_OPT_STR, &task, "NAME", "the task whose head is exported (fine-tuning)"},
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
    ms_export_info info;
    ms_weights_layout lay;
    if ((rc = ms_weights_layout_parse(layout, &lay))) goto leave;
    ms_ckpt_kind kind;
    char dir[MS_PATH_MAX];
    if ((rc = ms_ckpt_resolve(pos.v[0], &kind, dir))) goto leave;
    if (kind == MS_CKPT_FINETUNE) {
        if ((rc = ms_export_ft_ckpt(dir, out, task, lay, threads, &info))) goto leave;
        if (info.pad_differs)
            fprintf(stderr, "export-weights: warning: the checkpoint was trained with finetune-SAM's encoder block (pad "
                            "tokens = norm1.bias); SAM's own block pads with zeros, so windows with padding differ\n");
        if (info.depth_adapter_zeros)
            fprintf(stderr, "export-weights: note: Depth_Adapter tensors written as zeros (finetune-SAM always has "
                            "them; they run only in its 3D branch)\n");
        printf("export-weights: %s (%s) -> %s, %s layout, %d tensors%s\n", pos.v[0], info.what, out,
               lay == MS_LAYOUT_FINETUNE_SAM ? "finetune-SAM" : "SAM", info.n_tensors,
               info.lora_merged ? ", LoRA merged" : "");
        goto leave;
    }
    if (lay != MS_LAYOUT_SAM) {
        rc = ms_error(MS_EUNSUPPORTED, "--layout %s: pretraining checkpoints export in SAM's layout only", layout);
        goto leave;
    }
    if (task) {
        rc = ms_error(MS_EINVAL, "--task goes with fine-tuning checkpoints");
        goto leave;
    }
    if ((rc = ms_export_pretrain_ckpt(pos.v[0], out, threads, &info))) goto leave;
    printf("export-weights: %s -> %s\n", info.what, out);
leave:
    ms_strlist_free(&pos);
    return ms_cli_report("export-weights", rc);
}

const ms_command ms_cmd_export_weights = {
    "export-weights", "write a pretraining or fine-tuning checkpoint as SAM or finetune-SAM weights", run};
