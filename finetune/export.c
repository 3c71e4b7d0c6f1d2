/* finetune/export.c — see export.h. */
#include "finetune/export.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "base/path.h"
#include "checkpoints/rundir.h"
#include "finetune/ft_model.h"
#include "finetune/predict.h"
#include "finetune/sam.h"

/* ---- fine-tuning checkpoints --------------------------------------------------------------------------------- */

static const char *head_groups[3] = {"mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.",
                                     "mask_decoder.iou_prediction_head."};

static int head_group(const char *name)
{
    for (int g = 0; g < 3; g++)
        if (!strncmp(name, head_groups[g], strlen(head_groups[g]))) return g;
    return -1;
}

static int is_peft(const char *n) { return ms_sam_key_is_lora(n) || ms_sam_key_is_adapter(n); }

static ms_status put(ms_state_dict *out, const ms_sd_entry *e, const char *name)
{
    ms_status rc = ms_sd_add(out, name, e->t.dtype, e->t.shape, e->t.ndim, e->t.data);
    if (rc) ms_error_prefix("%s", name);
    return rc;
}

/* Copies entry `name` of all into out, under `as` (NULL: its own name). */
static ms_status put_key(ms_state_dict *out, const ms_state_dict *all, const char *name, const char *as)
{
    const ms_sd_entry *e = ms_sd_find(all, name);
    MS_FAIL_IF(!e, MS_ENOTFOUND, "%s: missing from the checkpoint", name);
    return put(out, e, as ? as : name);
}

/* Emits the SAM keys of `all` in its (SAM) order with the selected task's head in place of head 0; `finetune_sam`
 * renames and interleaves the PEFT tensors as finetune-SAM's modules register them. */
static ms_status ft_layout(const ms_ft_model *m, int t, ms_state_dict *all, int finetune_sam, ms_state_dict *out)
{
    char tp[200], k[400];
    snprintf(tp, sizeof tp, "tasks.%s.", m->cfg.task[t].name);
    int done[3] = {0, 0, 0};
    const int64_t D = m->sam.cfg.enc.embed_dim, Da = D / 4;
    for (int i = 0; i < all->n; i++) {
        const char *n = all->e[i].name;
        if (!strncmp(n, "tasks.", 6) || is_peft(n)) continue;
        int g = head_group(n);
        if (g >= 0 && t > 0) { /* the task's own head, once per group, in its registration order */
            if (done[g]) continue;
            done[g] = 1;
            for (int j = 0; j < all->n; j++) {
                const char *h = all->e[j].name;
                if (strncmp(h, tp, strlen(tp)) || head_group(h + strlen(tp)) != g) continue;
                MS_TRY(put(out, &all->e[j], h + strlen(tp)));
            }
            continue;
        }
        if (!finetune_sam) { MS_TRY(put(out, &all->e[i], n)); continue; }
        /* finetune-SAM: encoder block PEFT */
        int blk, lay;
        char rest[200], base[120];
        base[0] = 0;
        if (sscanf(n, "image_encoder.layers.%d.blocks.%d.%199s", &lay, &blk, rest) == 3) /* TinyViT */
            snprintf(base, sizeof base, "image_encoder.layers.%d.blocks.%d.", lay, blk);
        else if (sscanf(n, "image_encoder.blocks.%d.%199s", &blk, rest) == 2)
            snprintf(base, sizeof base, "image_encoder.blocks.%d.", blk);
        if (base[0]) {
            const int tiny = m->sam.cfg.tinyvit;
            snprintf(k, sizeof k, "%sattn.qkv.linear_a_q.weight", base);
            int lora = ms_sd_find(all, k) != NULL;
            snprintf(k, sizeof k, "%sSpace_Adapter.D_fc1.weight", base);
            int adapter = ms_sd_find(all, k) != NULL;
            if (lora && (!strcmp(rest, "attn.qkv.weight") || !strcmp(rest, "attn.qkv.bias"))) {
                snprintf(k, sizeof k, "%sattn.qkv.qkv.%s", base, rest + strlen("attn.qkv."));
                MS_TRY(put(out, &all->e[i], k));
                if (!strcmp(rest, "attn.qkv.bias")) {
                    static const char *lk[4] = {"linear_a_q", "linear_b_q", "linear_a_v", "linear_b_v"};
                    for (int q = 0; q < 4; q++) {
                        snprintf(k, sizeof k, "%sattn.qkv.%s.weight", base, lk[q]);
                        MS_TRY(put_key(out, all, k, NULL));
                    }
                }
                continue;
            }
            if (adapter && tiny && !strcmp(rest, "local_conv.bn.num_batches_tracked")) {
                /* finetune-SAM's TinyViTBlock registers its adapters after local_conv (no Depth_Adapter in 2-D) */
                MS_TRY(put(out, &all->e[i], n));
                static const char *ak[2] = {"MLP_Adapter", "Space_Adapter"};
                static const char *pk[4] = {"D_fc1.weight", "D_fc1.bias", "D_fc2.weight", "D_fc2.bias"};
                for (int a = 0; a < 2; a++)
                    for (int q = 0; q < 4; q++) {
                        snprintf(k, sizeof k, "%s%s.%s", base, ak[a], pk[q]);
                        MS_TRY(put_key(out, all, k, NULL));
                    }
                continue;
            }
            if (adapter && !tiny && !strcmp(rest, "norm2.weight")) { /* Block registers them between attn and norm2 */
                static const char *ak[3] = {"MLP_Adapter", "Space_Adapter", "Depth_Adapter"};
                static const char *pk[4] = {"D_fc1.weight", "D_fc1.bias", "D_fc2.weight", "D_fc2.bias"};
                for (int a = 0; a < 3; a++)
                    for (int q = 0; q < 4; q++) {
                        snprintf(k, sizeof k, "%s%s.%s", base, ak[a], pk[q]);
                        if (a < 2) { MS_TRY(put_key(out, all, k, NULL)); continue; }
                        const int64_t sh[4][2] = {{Da, D}, {Da, 0}, {D, Da}, {D, 0}};
                        int nd = sh[q][1] ? 2 : 1;
                        float *z = calloc((size_t)(sh[q][0] * (nd == 2 ? sh[q][1] : 1)), sizeof(float));
                        MS_FAIL_IF(!z, MS_ENOMEM, "out of memory");
                        ms_status rc = ms_sd_add(out, k, MS_DTYPE_F32, sh[q], nd, z);
                        free(z);
                        MS_TRY(rc);
                    }
            }
            MS_TRY(put(out, &all->e[i], n));
            continue;
        }
        /* decoder attention LoRA: <attn>.{q,v}_proj.{weight,bias} → .proj.*, then .w_a, .w_b after the bias */
        if ((strstr(n, ".q_proj.") || strstr(n, ".v_proj.")) && !strncmp(n, "mask_decoder.transformer.", 25)) {
            const char *pj = strstr(n, ".q_proj.") ? strstr(n, ".q_proj.") : strstr(n, ".v_proj.");
            char base[300];
            snprintf(base, sizeof base, "%.*s", (int)(pj - n) + 7, n); /* "...attn.q_proj" */
            snprintf(k, sizeof k, "%s.w_a.weight", base);
            if (ms_sd_find(all, k)) {
                snprintf(k, sizeof k, "%s.proj.%s", base, pj + 8);
                MS_TRY(put(out, &all->e[i], k));
                if (ms_str_ends_with(n, ".bias")) {
                    snprintf(k, sizeof k, "%s.w_a.weight", base);
                    MS_TRY(put_key(out, all, k, NULL));
                    snprintf(k, sizeof k, "%s.w_b.weight", base);
                    MS_TRY(put_key(out, all, k, NULL));
                }
                continue;
            }
        }
        MS_TRY(put(out, &all->e[i], n));
        /* decoder layer adapters: registered after cross_attn_image_to_token, MLP_Adapter then Adapter */
        int l;
        if (sscanf(n, "mask_decoder.transformer.layers.%d.%199s", &l, rest) == 2 &&
            !strcmp(rest, "cross_attn_image_to_token.out_proj.bias")) {
            static const char *ak[2] = {"MLP_Adapter", "Adapter"};
            static const char *pk[4] = {"D_fc1.weight", "D_fc1.bias", "D_fc2.weight", "D_fc2.bias"};
            snprintf(k, sizeof k, "mask_decoder.transformer.layers.%d.Adapter.D_fc1.weight", l);
            if (ms_sd_find(all, k))
                for (int a = 0; a < 2; a++)
                    for (int q = 0; q < 4; q++) {
                        snprintf(k, sizeof k, "mask_decoder.transformer.layers.%d.%s.%s", l, ak[a], pk[q]);
                        MS_TRY(put_key(out, all, k, NULL));
                    }
        }
    }
    return MS_OK;
}

ms_status ms_export_ft_ckpt(const char *ckpt, const char *out_path, const char *task, ms_weights_layout layout, int threads,
                            ms_export_info *info)
{
    ms_status rc = MS_OK;
    ms_device dev = {0};
    ms_ft_model m;
    ms_state_dict all, out;
    int model_ok = 0, fsam = layout == MS_LAYOUT_FINETUNE_SAM;
    memset(&m, 0, sizeof m);
    memset(info, 0, sizeof *info);
    ms_sd_init(&all);
    ms_sd_init(&out);
    if ((rc = ms_device_init(&dev, MS_DEV_CPU, threads))) goto leave;
    if ((rc = ms_ft_model_load(&m, ckpt, &dev))) goto leave;
    model_ok = 1;
    const ms_ft_config *c = &m.cfg;
    char names[MS_FT_MAX_TASKS * (MS_FT_NAME_MAX + 2) + 1];
    size_t nk = 0;
    names[0] = 0;
    for (int i = 0; i < c->n_tasks; i++) nk += (size_t)snprintf(names + nk, sizeof names - nk, "%s%s", i ? ", " : "",
                                                                c->task[i].name);
    int t = task ? ms_ft_task_find(c, task) : c->n_tasks == 1 ? 0 : -2;
    if (t == -2) { rc = ms_error(MS_EINVAL, "%s: %d tasks (%s): choose one with --task NAME", ckpt, c->n_tasks, names);
                   goto leave; }
    if (t < 0) { rc = ms_error(MS_ENOTFOUND, "%s: no task '%s' (tasks: %s)", ckpt, task, names); goto leave; }
    if (!fsam && c->method == MS_FT_ADAPTER) {
        rc = ms_error(MS_EUNSUPPORTED, "%s: adapters cannot be merged into SAM's weights (they add layers); use "
                                       "--layout finetune-sam", ckpt);
        goto leave;
    }
    if ((rc = ms_sam_to_sd(&m.sam, &all))) goto leave; /* TinyViT: num_batches_tracked too */
    int n_merged = 0;
    if (!fsam && c->method == MS_FT_LORA) {
        /* TinyViT: true q/v LoRA into each head's q and v rows; finetune-SAM's slicing into rows [0, C), [2C, 3C) */
        if (m.sam.cfg.tinyvit && !m.sam.tv.peft.fsam_slicing)
            rc = ms_sam_sd_merge_lora_tinyvit(&all, &m.sam.cfg.tv, 0, &n_merged);
        else
            rc = ms_sam_sd_merge_lora(&all, m.sam.cfg.tinyvit ? 0 : m.sam.cfg.enc.embed_dim, 0, &n_merged);
        if (rc) goto leave;
    }
    if ((rc = ft_layout(&m, t, &all, fsam, &out))) goto leave;
    if ((rc = ms_sd_save(out_path, &out))) goto leave;
    info->finetuned = 1;
    info->n_tensors = out.n;
    info->lora_merged = n_merged > 0;
    info->pad_differs = !fsam && c->compat_finetune_sam && !m.sam.cfg.tinyvit; /* TinyViT pads as MobileSAM */
    info->depth_adapter_zeros = fsam && c->method == MS_FT_ADAPTER && c->scope == MS_FT_SCOPE_ENC_DEC;
    snprintf(info->model, sizeof info->model, "%s", c->model);
    snprintf(info->what, sizeof info->what, "%s, %s/%s, task %s, %d mask tokens", c->model,
             ms_ft_method_name(c->method), ms_ft_scope_name(c->scope), c->task[t].name, ms_ft_out_channels(c, t) + 1);
leave:
    ms_sd_free(&all);
    ms_sd_free(&out);
    if (model_ok) ms_ft_model_free(&m);
    ms_device_free(&dev);
    return rc;
}

ms_status ms_export_pretrain_ckpt(const char *ckpt, const char *out, int threads, ms_export_info *info)
{
    ms_status rc = MS_OK;
    ms_device dev = {0};
    ms_sam sam;
    memset(&sam, 0, sizeof sam);
    memset(info, 0, sizeof *info);
    ms_state_dict sd;
    ms_sd_init(&sd);
    ms_ckpt_kind kind;
    char dir[MS_PATH_MAX];
    int sam_ok = 0;
    /* the same resolution as every --ckpt (finetune/predict.h), restricted to pretraining checkpoints */
    if ((rc = ms_ckpt_resolve(ckpt, &kind, dir))) goto leave;
    if (kind != MS_CKPT_PRETRAIN) {
        rc = ms_error(MS_ENOTFOUND, "%s: not a run directory or a complete checkpoint (no DONE)", ckpt);
        goto leave;
    }
    if ((rc = ms_device_init(&dev, MS_DEV_CPU, threads))) goto leave;
    if ((rc = ms_sam_load_pretrain(&sam, dir, &dev, info->model, sizeof info->model))) goto leave;
    sam_ok = 1;
    if ((rc = ms_sam_to_sd(&sam, &sd))) goto leave;
    if ((rc = ms_sd_save(out, &sd))) goto leave;
    info->n_tensors = sd.n;
    snprintf(info->what, sizeof info->what, "%s (%s)", dir, info->model);
leave:
    ms_sd_free(&sd);
    if (sam_ok) ms_sam_free(&sam);
    ms_device_free(&dev);
    return rc;
}

ms_status ms_weights_layout_parse(const char *s, ms_weights_layout *out)
{
    if (!strcmp(s, "sam")) *out = MS_LAYOUT_SAM;
    else if (!strcmp(s, "finetune-sam")) *out = MS_LAYOUT_FINETUNE_SAM;
    else return ms_error(MS_EINVAL, "--layout %s: sam or finetune-sam", s);
    return MS_OK;
}
