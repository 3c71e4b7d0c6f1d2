/* tests/finetune/test_ft_model.c — the fine-tunable model (finetune/ft_model.h):
 *  - meta.json round trip;
 *  - the trainable set of every method × scope (and --compat-finetune-sam), checked by name against the table of
 *    docs/FINETUNE.md written out independently here; gradients exist exactly for trainable tensors;
 *  - finetune-SAM's load_from: a SAM file with 4 mask tokens loads everything but the head for num_cls 2
 *    (head re-initialised), and everything for num_cls 3;
 *  - save → load gives the same tensors and the same logits (with non-zero LoRA B, so PEFT tensors really travel);
 *  - two tasks with different class counts decode to their own channel counts, and backward runs.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "base/rng.h"
#include "finetune/ft_model.h"

static ms_device cpu_dev(void)
{
    ms_device d;
    memset(&d, 0, sizeof d);
    d.kind = MS_DEV_CPU;
    d.n_threads = 2;
    return d;
}

static int has(const char *n, const char *s) { return strstr(n, s) != NULL; }

/* The table, written from finetune-SAM's code (SingleGPU_train_finetune_noprompt.py, sam_LoRa.py; issue #7), not from
 * ft_model.c. */
static int expect_trainable(const ms_ft_config *c, const char *n)
{
    int enc = !strncmp(n, "image_encoder.", 14), pe = !strncmp(n, "prompt_encoder.", 15);
    int gauss = has(n, "positional_encoding_gaussian_matrix");
    int lora = has(n, "linear_a_q") || has(n, "linear_b_q") || has(n, "linear_a_v") || has(n, "linear_b_v") ||
               has(n, ".w_a.") || has(n, ".w_b.");
    int adapter = has(n, "Adapter");
    int head = has(n, "iou_token") || has(n, "mask_tokens") || has(n, "output_upscaling") ||
               has(n, "output_hypernetworks_mlps") || has(n, "iou_prediction_head");
    if (gauss) return 0;
    if (c->method == MS_FT_FULL) return c->scope == MS_FT_SCOPE_ENC_DEC || !enc;
    if (c->method == MS_FT_LORA) return lora || head || (c->compat_finetune_sam && pe);
    return adapter || (!c->compat_finetune_sam && head);
}

static ms_ft_config test_cfg(ms_ft_method m, ms_ft_scope s, int compat)
{
    ms_ft_config c;
    ms_ft_config_default(&c);
    snprintf(c.model, sizeof c.model, "vit_test");
    ms_prep_config_default(&c.prep, 256);
    c.prep.channels = 3;
    c.method = m;
    c.scope = s;
    c.compat_finetune_sam = compat;
    return c;
}

static void test_meta(uint64_t seed)
{
    ms_ft_config a = test_cfg(MS_FT_LORA, MS_FT_SCOPE_ENC_DEC, 1), b;
    ms_rng r;
    ms_rng_init(&r, seed, 1);
    a.lora_rank = 2 + (int)(ms_rng_u64(&r) % 7);
    a.lora_blocks = ms_rng_u64(&r) & 0xfff;
    a.adapter_blocks = ms_rng_u64(&r) & 0xf0f;
    a.prompt = MS_PROMPT_HYBRID;
    a.n_tasks = 2;
    a.task[1] = a.task[0];
    snprintf(a.task[1].name, MS_FT_NAME_MAX, "lesion");
    a.task[1].num_cls = 4;
    for (int i = 1; i < 4; i++) {
        a.task[1].values[i] = (uint16_t)(10 * i + ms_rng_u64(&r) % 9);
        snprintf(a.task[1].class_names[i], MS_FT_NAME_MAX, "class %d", i);
    }
    a.prep.resize = MS_RESIZE_STRETCH;
    a.axis = 1;
    a.intensity = MS_NORM_ZSCORE;
    char dir[] = "/tmp/ms_ftmeta_XXXXXX";
    MS_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char p[256];
    snprintf(p, sizeof p, "%s/meta.json", dir);
    MS_CHECK_OK(ms_ft_meta_write(p, &a, "{\"step\": 12, \"dice\": {\"lesion\": {\"1\": 0.5}}}"));
    MS_CHECK_OK(ms_ft_meta_read(p, &b));
    MS_CHECK(!strcmp(a.model, b.model) && a.method == b.method && a.scope == b.scope && a.prompt == b.prompt,
             "meta: model/method/scope/prompt");
    MS_CHECK(a.lora_rank == b.lora_rank && a.lora_blocks == b.lora_blocks && a.adapter_blocks == b.adapter_blocks &&
                 a.compat_finetune_sam == b.compat_finetune_sam, "meta: PEFT fields");
    MS_CHECK(b.n_tasks == 2 && b.task[1].num_cls == 4 && !strcmp(b.task[1].name, "lesion"), "meta: tasks");
    int same = 1;
    for (int i = 0; i < 4; i++) same &= a.task[1].values[i] == b.task[1].values[i] &&
                                        !strcmp(a.task[1].class_names[i], b.task[1].class_names[i]);
    MS_CHECK(same, "meta: class values and names");
    MS_CHECK(b.prep.size == 256 && b.prep.resize == MS_RESIZE_STRETCH && b.axis == 1 && b.intensity == MS_NORM_ZSCORE,
             "meta: preprocessing");
    /* a corrupt file is a clear error, not a crash */
    FILE *f = fopen(p, "w");
    fputs("{\"format\": \"mrisam-finetune\", \"version\": 1, \"model\": \"vit_test\"", f);
    fclose(f);
    MS_CHECK(ms_ft_meta_read(p, &b) != MS_OK, "truncated meta.json must fail");
    unlink(p);
    rmdir(dir);
}

static void test_trainable(uint64_t seed)
{
    ms_device dev = cpu_dev();
    for (int m = 0; m < 3; m++)
        for (int s = 0; s < 2; s++)
            for (int compat = 0; compat < 2; compat++) {
                if (m == MS_FT_FULL && compat) continue;
                ms_ft_config c = test_cfg((ms_ft_method)m, (ms_ft_scope)s, compat);
                ms_ft_model fm;
                ms_status st = ms_ft_model_build(&fm, &c, NULL, seed, &dev);
                MS_CHECK_OK(st);
                if (st) continue;
                int bad = 0, n_lora = 0, n_ad = 0, n_enc_peft = 0;
                for (int i = 0; i < fm.sam.ps.n; i++) {
                    const ms_param *p = &fm.sam.ps.p[i];
                    int want = expect_trainable(&c, p->name);
                    int has_grad = ms_params_grad(&fm.sam.ps, i) != NULL;
                    if (p->trainable != want || has_grad != want) {
                        if (bad++ < 5)
                            printf("  %s/%s%s: %s trainable=%d grad=%d, expected %d\n", ms_ft_method_name(c.method),
                                   ms_ft_scope_name(c.scope), compat ? "/compat" : "", p->name, p->trainable,
                                   has_grad, want);
                    }
                    n_lora += has(p->name, "linear_a_q") || has(p->name, ".w_a.");
                    n_ad += has(p->name, "Adapter.D_fc1.weight");
                    n_enc_peft += !strncmp(p->name, "image_encoder.", 14) && (has(p->name, "linear_") || has(p->name, "Adapter"));
                }
                MS_CHECK(!bad, "%s/%s compat=%d: %d tensors with the wrong trainable state", ms_ft_method_name(c.method),
                         ms_ft_scope_name(c.scope), compat, bad);
                /* PEFT tensors where the method puts them: decoder always, encoder only with encoder+decoder */
                if (m == MS_FT_LORA) MS_CHECK(n_lora == 14 + (s ? 4 : 0), "LoRA tensor count %d", n_lora); /* decoder: 2 layers × 3 attns × q,v + final q,v */
                if (m == MS_FT_ADAPTER) MS_CHECK(n_ad == 2 * 2 + (s ? 2 * 4 : 0), "adapter count %d", n_ad);
                if (s == MS_FT_SCOPE_DECODER) MS_CHECK(n_enc_peft == 0, "decoder scope: %d encoder PEFT tensors", n_enc_peft);
                int nt;
                int64_t numel = ms_ft_model_trainable_numel(&fm, &nt);
                printf("  %-7s %-15s compat=%d: %d trainable tensors, %lld values\n", ms_ft_method_name(c.method),
                       ms_ft_scope_name(c.scope), compat, nt, (long long)numel);
                ms_ft_model_free(&fm);
            }
}

static float *host_copy(const ms_params *ps, int i)
{
    const ms_param *p = &ps->p[i];
    float *h = malloc((size_t)p->numel * sizeof(float));
    ms_dev_to_host(ps->dev, h, ps->data + p->off, (size_t)p->numel * sizeof(float));
    return h;
}

static int tensor_equal(const ms_params *a, int ia, const ms_params *b, int ib)
{
    if (a->p[ia].numel != b->p[ib].numel) return 0;
    float *x = host_copy(a, ia), *y = host_copy(b, ib);
    int eq = !memcmp(x, y, (size_t)a->p[ia].numel * sizeof(float));
    free(x);
    free(y);
    return eq;
}


/* PyTorch's default initialisation of the decoder, by an independent rule: every 2-D ".weight" of a Linear is
 * U(±1/√fan_in) (std bound/√3); the IoU token, mask tokens and the prompt embeddings (nn.Embedding) are N(0, 1). */
static void test_default_init(uint64_t seed)
{
    ms_device dev = cpu_dev();
    ms_ft_config c = test_cfg(MS_FT_FULL, MS_FT_SCOPE_ENC_DEC, 0);
    ms_ft_model fm;
    MS_CHECK_OK(ms_ft_model_build(&fm, &c, NULL, seed, &dev));
    int checked = 0, bad = 0;
    for (int i = 0; i < fm.sam.ps.n; i++) {
        const ms_param *p = &fm.sam.ps.p[i];
        const char *n = p->name;
        int emb = has(n, "iou_token.") || has(n, "mask_tokens.") || has(n, "point_embeddings.") ||
                  has(n, "not_a_point_embed.") || has(n, "no_mask_embed.");
        int lin = !emb && strncmp(n, "image_encoder.", 14) && p->ndim == 2 && has(n, ".weight") && p->numel >= 256;
        if (!emb && !lin) continue;
        float *h = host_copy(&fm.sam.ps, i);
        double s2 = 0, mx = 0;
        for (int64_t j = 0; j < p->numel; j++) { s2 += (double)h[j] * h[j]; if (fabs(h[j]) > mx) mx = fabs(h[j]); }
        double sd = sqrt(s2 / p->numel);
        free(h);
        double want = emb ? 1.0 : 1.0 / sqrt((double)p->shape[1]) / sqrt(3.0);
        double tol = p->numel >= 1000 ? 0.15 : 0.5;
        int ok = fabs(sd / want - 1) < tol && (emb || mx <= 1.0 / sqrt((double)p->shape[1]) + 1e-6);
        if (!ok && bad++ < 5) printf("  init %s: sd %.4f, expected %.4f (max %.4f)\n", n, sd, want, mx);
        checked++;
    }
    MS_CHECK(checked > 20 && !bad, "default init: %d of %d tensors off", bad, checked);
    ms_ft_model_free(&fm);
}

static void test_load_from(uint64_t seed)
{
    ms_device dev = cpu_dev();
    /* a SAM-layout vit_test file (4 mask tokens, like every released SAM) */
    ms_ft_config c4 = test_cfg(MS_FT_FULL, MS_FT_SCOPE_DECODER, 0);
    c4.task[0].num_cls = 3;
    c4.task[0].values[2] = 2;
    ms_ft_model src;
    MS_CHECK_OK(ms_ft_model_build(&src, &c4, NULL, seed, &dev));
    ms_state_dict sd;
    ms_sd_init(&sd);
    MS_CHECK_OK(ms_sam_to_sd(&src.sam, &sd));
    for (int ncls = 2; ncls <= 3; ncls++) {
        ms_ft_config c = test_cfg(MS_FT_LORA, MS_FT_SCOPE_ENC_DEC, 0);
        c.task[0].num_cls = ncls;
        c.task[0].values[2] = 2;
        ms_ft_model fm;
        ms_status st = ms_ft_model_build(&fm, &c, &sd, seed + 7, &dev);
        MS_CHECK_OK(st);
        if (st) continue;
        MS_CHECK(!strcmp(fm.cfg.model, "vit_test"), "model detected as %s", fm.cfg.model);
        int wrong = 0, n_head = 0;
        for (int i = 0; i < fm.sam.ps.n; i++) {
            const char *n = fm.sam.ps.p[i].name;
            int j = ms_params_find(&src.sam.ps, n);
            int head = has(n, "mask_decoder.mask_tokens") || has(n, "output_hypernetworks_mlps") ||
                       has(n, "iou_prediction_head");
            if (j < 0) continue; /* PEFT tensors */
            if (head) n_head++;
            int eq = tensor_equal(&fm.sam.ps, i, &src.sam.ps, j);
            int want_eq = !(head && ncls == 2);
            if (head && ncls == 2 && fm.sam.ps.p[i].numel != src.sam.ps.p[j].numel) eq = 0;
            if (eq != want_eq && wrong++ < 3) printf("  num_cls %d: %s equal=%d expected %d\n", ncls, n, eq, want_eq);
        }
        MS_CHECK(!wrong && n_head > 0, "load_from with num_cls %d: %d tensors wrong", ncls, wrong);
        ms_ft_model_free(&fm);
    }
    ms_sd_free(&sd);
    ms_ft_model_free(&src);
}

static ms_status set_random(ms_params *ps, const char *substr, ms_rng *r)
{
    for (int i = 0; i < ps->n; i++) {
        if (!strstr(ps->p[i].name, substr)) continue;
        float *h = malloc((size_t)ps->p[i].numel * sizeof(float));
        ms_fill_uniform(h, ps->p[i].numel, r, -0.2f, 0.2f);
        ms_status st = ms_dev_from_host(ps->dev, ps->data + ps->p[i].off, h, (size_t)ps->p[i].numel * sizeof(float));
        free(h);
        MS_TRY(st);
    }
    return MS_OK;
}

static void test_save_load(uint64_t seed)
{
    ms_device dev = cpu_dev();
    ms_ft_config c = test_cfg(MS_FT_LORA, MS_FT_SCOPE_ENC_DEC, 0);
    c.n_tasks = 2;
    c.task[1] = c.task[0];
    snprintf(c.task[1].name, MS_FT_NAME_MAX, "second");
    c.task[1].num_cls = 4;
    for (int i = 1; i < 4; i++) c.task[1].values[i] = (uint16_t)(i * 3);
    ms_ft_model a, b;
    MS_CHECK_OK(ms_ft_model_build(&a, &c, NULL, seed, &dev));
    ms_rng r;
    ms_rng_init(&r, seed, 99);
    MS_CHECK_OK(set_random(&a.sam.ps, "linear_b_", &r)); /* LoRA B = 0 after init: make it matter */
    MS_CHECK_OK(set_random(&a.sam.ps, ".w_b.", &r));
    char dir[] = "/tmp/ms_ftsave_XXXXXX";
    MS_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    MS_CHECK_OK(ms_ft_model_save(&a, dir, NULL));
    MS_CHECK(ms_ft_is_checkpoint(dir), "saved dir is a checkpoint");
    ms_status st = ms_ft_model_load(&b, dir, &dev);
    MS_CHECK_OK(st);
    if (st) { ms_ft_model_free(&a); return; }
    int diff = 0;
    MS_CHECK(a.sam.ps.n == b.sam.ps.n, "tensor count %d vs %d", a.sam.ps.n, b.sam.ps.n);
    for (int i = 0; i < a.sam.ps.n && i < b.sam.ps.n; i++) {
        int j = ms_params_find(&b.sam.ps, a.sam.ps.p[i].name);
        if (j < 0 || !tensor_equal(&a.sam.ps, i, &b.sam.ps, j)) diff++;
    }
    MS_CHECK(!diff, "save/load: %d tensors differ", diff);
    /* the same logits for both tasks */
    const int B = 2, S = 256;
    MS_CHECK_OK(ms_ft_model_reserve(&a, B, 1));
    MS_CHECK_OK(ms_ft_model_reserve(&b, B, 0));
    float *x = malloc((size_t)B * 3 * S * S * sizeof(float));
    ms_fill_uniform(x, (int64_t)B * 3 * S * S, &r, -2.f, 2.f);
    MS_CHECK_OK(ms_dev_from_host(&dev, a.x, x, (size_t)B * 3 * S * S * sizeof(float)));
    MS_CHECK_OK(ms_dev_from_host(&dev, b.x, x, (size_t)B * 3 * S * S * sizeof(float)));
    MS_CHECK_OK(ms_ft_model_encode(&a, a.x, B));
    MS_CHECK_OK(ms_ft_model_encode(&b, b.x, B));
    const int lo = 64;
    for (int t = 0; t < 2; t++) {
        int C = ms_ft_out_channels(&c, t);
        MS_CHECK_OK(ms_ft_model_decode(&a, t, a.emb, B, NULL));
        MS_CHECK_OK(ms_ft_model_decode(&b, t, b.emb, B, NULL));
        MS_CHECK(a.last_C == C && b.last_C == C, "task %d: %d/%d channels, expected %d", t, a.last_C, b.last_C, C);
        int64_t n = (int64_t)B * C * lo * lo;
        ms_cmp cm = ms_compare_f(a.logits, b.logits, n);
        MS_CHECK(cm.max_abs == 0, "task %d: loaded model logits differ by %g", t, cm.max_abs);
        double mx = 0;
        for (int64_t i = 0; i < n; i++) if (fabs(a.logits[i]) > mx) mx = fabs(a.logits[i]);
        MS_CHECK(mx > 0 && isfinite(mx), "task %d logits not degenerate (max %g)", t, mx);
        /* backward through the encoder reaches the encoder LoRA */
        float *dl = malloc((size_t)n * sizeof(float));
        ms_fill_uniform(dl, n, &r, -1.f, 1.f);
        MS_CHECK_OK(ms_params_zero_grads(&a.sam.ps));
        MS_CHECK_OK(ms_ft_model_backward(&a, dl));
        int iq = ms_params_find(&a.sam.ps, "image_encoder.blocks.0.attn.qkv.linear_a_q.weight");
        MS_CHECK(iq >= 0, "encoder LoRA present");
        if (iq >= 0) {
            const float *g = ms_params_grad(&a.sam.ps, iq);
            double s = 0;
            for (int64_t i = 0; g && i < a.sam.ps.p[iq].numel; i++) s += fabs(g[i]);
            MS_CHECK(g && s > 0 && isfinite(s), "task %d: encoder LoRA A gets a gradient (|g|=%g)", t, s);
        }
        free(dl);
    }
    free(x);
    char p[256];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/meta.json", dir);
    unlink(p);
    rmdir(dir);
    ms_ft_model_free(&a);
    ms_ft_model_free(&b);
}

/* Another input size than the weights' (vit_test's 256 → 128: grid 8, logits 32×32): the tensors keep their shapes,
 * the run grid follows the input, a checkpoint reloads to the same logits, and gradients reach the encoder. */
static void test_input_size(uint64_t seed)
{
    ms_device dev = cpu_dev();
    ms_ft_config c = test_cfg(MS_FT_LORA, MS_FT_SCOPE_ENC_DEC, 0);
    ms_prep_config_default(&c.prep, 128);
    ms_ft_model a, b;
    ms_status st = ms_ft_model_build(&a, &c, NULL, seed, &dev);
    MS_CHECK_OK(st);
    if (st) return;
    MS_CHECK(a.sam.img_size == 128 && a.sam.emb_h == 8 && a.cfg.prep.label_size == 32, "run grid: size %d grid %d label %d",
             a.sam.img_size, a.sam.emb_h, a.cfg.prep.label_size);
    int ip = ms_params_find(&a.sam.ps, "image_encoder.pos_embed");
    MS_CHECK(ip >= 0 && a.sam.ps.p[ip].shape[1] == 16, "pos_embed keeps its native 16x16 grid");
    ms_rng r;
    ms_rng_init(&r, seed, 5);
    MS_CHECK_OK(set_random(&a.sam.ps, "linear_b_", &r));
    MS_CHECK_OK(set_random(&a.sam.ps, "pos_embed", &r)); /* interpolation must matter */
    char dir[] = "/tmp/ms_ftsize_XXXXXX";
    MS_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    MS_CHECK_OK(ms_ft_model_save(&a, dir, NULL));
    st = ms_ft_model_load(&b, dir, &dev);
    MS_CHECK_OK(st);
    if (!st) {
        MS_CHECK(b.sam.img_size == 128 && b.cfg.prep.size == 128, "reloaded at 128");
        const int B = 2, S = 128;
        int64_t nx = (int64_t)B * 3 * S * S, nl = (int64_t)B * 2 * 32 * 32;
        MS_CHECK_OK(ms_ft_model_reserve(&a, B, 1));
        MS_CHECK_OK(ms_ft_model_reserve(&b, B, 0));
        float *x = malloc((size_t)nx * sizeof(float)), *dl = malloc((size_t)nl * sizeof(float));
        ms_fill_uniform(x, nx, &r, -2.f, 2.f);
        ms_fill_uniform(dl, nl, &r, -1.f, 1.f);
        MS_CHECK_OK(ms_ft_model_encode(&a, x, B));
        MS_CHECK_OK(ms_ft_model_encode(&b, x, B));
        MS_CHECK_OK(ms_ft_model_decode(&a, 0, a.emb, B, NULL));
        MS_CHECK_OK(ms_ft_model_decode(&b, 0, b.emb, B, NULL));
        ms_cmp cm = ms_compare_f(a.logits, b.logits, nl);
        MS_CHECK(cm.max_abs == 0 && isfinite(a.logits[0]), "128-px checkpoint reloads to the same logits (%g)", cm.max_abs);
        MS_CHECK_OK(ms_params_zero_grads(&a.sam.ps));
        MS_CHECK_OK(ms_ft_model_backward(&a, dl));
        int iq = ms_params_find(&a.sam.ps, "image_encoder.blocks.3.attn.qkv.linear_b_v.weight");
        const float *g = iq >= 0 ? ms_params_grad(&a.sam.ps, iq) : NULL;
        double sg = 0;
        for (int64_t i = 0; g && i < a.sam.ps.p[iq].numel; i++) sg += fabs(g[i]);
        MS_CHECK(sg > 0 && isfinite(sg), "encoder LoRA gradient at 128 px (%g)", sg);
        free(x);
        free(dl);
        ms_ft_model_free(&b);
    }
    char p[256];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/meta.json", dir);
    unlink(p);
    rmdir(dir);
    ms_ft_model_free(&a);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    test_meta(seed);
    test_trainable(seed);
    test_default_init(seed);
    test_load_from(seed);
    test_save_load(seed);
    test_input_size(seed);
    return ms_test_done();
}
