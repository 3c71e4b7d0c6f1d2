/* tests/finetune/test_mobilesam.c — vit_t as a whole SAM (MobileSAM: TinyViT encoder + SAM's prompt encoder and
 * mask decoder; finetune/sam.h) against MobileSAM's own code (tests/finetune/gen_mobilesam_golden.py).
 *
 * 1. Keys: ms_sam_to_sd of vit_t_test and of vit_t writes exactly golden/mobilesam_vit_t_test.keys and
 *    golden/mobilesam_vit_t.keys (names, order, dtypes, shapes of MobileSAM's Sam.state_dict(), num_batches_tracked
 *    as int64 0-dim scalars): what MobileSAM's load_state_dict(strict=True) takes.
 * 2. Round trip: vit_t_test with counter_init weights (fresh seed) and a drawn num_batches_tracked, written as .pth and
 *    .safetensors, loads back through ms_sam_load: recognised as TinyViT (the config equal to vit_t_test's, input
 *    256), the same weights bit for bit, the same counter. A file with one drawn key dropped, or an unknown key
 *    outside the encoder, or a float num_batches_tracked, or a drawn attention_biases one column wider, is refused. TinyViT's LoRA merges (per-head q/v rows, and
 *    finetune-SAM's slicing) on a drawn layer against the product written out. A finetune-SAM TinyViT LoRA file (drawn
 *    layers and rank) runs through ms_sam_load (its PEFT) as through ms_sam_build (merged); random init builds.
 * 3. Golden (golden/mobilesam_test.pth, the generator's seed): the weights regenerated here, saved and loaded through
 *    ms_sam_load; the image through SAM's preprocessing (its longest side already 256: no resampling) and the
 *    encoder → embedding within 1e-4·max|ref| of MobileSAM's (float64 run); a point pair (multimask) and a box (single
 *    mask) through the prompt encoder and decoder → low-res logits and IoU within 1e-4·max|ref| of MobileSAM's float32
 *    predictor (observed: 3e-6), and the highest-IoU mask post-processed to 192×256 likewise, the sign equal wherever
 *    |ref| > 1e-3·max|ref|. (Embedding observed: 7e-7.)
 * 4. Optional (MS_MOBILESAM_PTH=PATH, gen_mobilesam_golden.py --full PATH): a mobile_sam.pt-shaped file (TinyViT-5M at
 *    1024) that MobileSAM's code saved loads as vit_t; its embedding of PATH.golden.pth's image and a box prompt's
 *    low-res logits match MobileSAM's float32 predictor within 1e-3·max|ref|.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/clock.h"
#include "base/path.h"
#include "data/preprocess.h"
#include "finetune/sam.h"
#include "harness.h"
#include "reference/counter_init.h"

static char src_dir[1024];

/* gen_mobilesam_golden.py's weights: counter_init, then the TinyViT BatchNorm / bias-table rule under image_encoder.
 * and the decoder's token_to_image / image_to_token scaling elsewhere. */
static void weight(float *dst, const char *name, const int64_t *shape, int ndim, uint64_t seed)
{
    ms_counter_init(dst, name, shape, ndim, seed);
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    float a = 1.f, b = 0.f;
    if (!strncmp(name, "image_encoder.", 14)) {
        if (ms_str_ends_with(name, ".running_var")) { a = 5.f; b = 1.f; }
        else if (ms_str_ends_with(name, ".running_mean")) a = 5.f;
        else if (ms_str_ends_with(name, ".attention_biases")) a = 8.f;
    } else if ((strstr(name, "token_to_image") || strstr(name, "image_to_token")) && ndim == 2)
        a = (float)(1.0 / sqrt((double)shape[1]));
    for (int64_t i = 0; i < n; i++) dst[i] = b + a * dst[i];
}

static void fill(ms_sam *m, uint64_t seed, int64_t batches)
{
    for (int i = 0; i < m->ps.n; i++) {
        const ms_param *p = &m->ps.p[i];
        weight(ms_params_data(&m->ps, i), p->name, p->shape, p->ndim, seed);
    }
    m->tv.bn_batches = batches;
}

static ms_status new_model(ms_sam *m, const char *name, ms_device *dev)
{
    ms_sam_config cfg;
    MS_TRY(ms_sam_config_named(name, 4, &cfg));
    return ms_sam_init(m, &cfg, dev);
}

/* 1. the exported key list against the generator's */
static void check_keys(ms_device *dev, const char *model)
{
    char path[1200], line[600];
    snprintf(path, sizeof path, "%s/tests/finetune/golden/mobilesam_%s.keys", src_dir, model);
    FILE *f = fopen(path, "r");
    MS_CHECK(f != NULL, "%s: cannot open", path);
    if (!f) return;
    ms_sam m;
    ms_state_dict sd;
    ms_sd_init(&sd);
    MS_CHECK_OK(new_model(&m, model, dev));
    MS_CHECK_OK(ms_sam_to_sd(&m, &sd));
    int i = 0, bad = 0;
    for (; fgets(line, sizeof line, f); i++) {
        char name[400], dt[32], shp[128], got[128];
        if (sscanf(line, "%399s %31s %127s", name, dt, shp) != 3) { bad++; break; }
        if (i >= sd.n) { bad++; printf("  %s: missing from the export\n", name); break; }
        const ms_sd_entry *e = &sd.e[i];
        int o = 0;
        got[0] = 0;
        for (int d = 0; d < e->t.ndim; d++) o += snprintf(got + o, sizeof got - o, "%s%lld", d ? "," : "",
                                                         (long long)e->t.shape[d]);
        if (!e->t.ndim) snprintf(got, sizeof got, "-");
        const char *gdt = e->t.dtype == MS_DTYPE_F32 ? "float32" : e->t.dtype == MS_DTYPE_I64 ? "int64" : "?";
        if (strcmp(name, e->name) || strcmp(dt, gdt) || strcmp(shp, got)) {
            if (bad++ < 5) printf("  key %d: export %s %s %s, MobileSAM %s %s %s\n", i, e->name, gdt, got, name, dt, shp);
        }
    }
    fclose(f);
    printf("%s: %d keys exported, %d in MobileSAM's list, %d differ\n", model, sd.n, i, bad);
    MS_CHECK(!bad && i == sd.n, "%s: the export's keys differ from MobileSAM's (%d, %d vs %d)", model, bad, sd.n, i);
    ms_sd_free(&sd);
    ms_sam_free(&m);
}

static int same_values(const ms_sam *a, const ms_sam *b)
{
    if (a->ps.n != b->ps.n) return 0;
    for (int i = 0; i < a->ps.n; i++)
        if (strcmp(a->ps.p[i].name, b->ps.p[i].name) || a->ps.p[i].numel != b->ps.p[i].numel ||
            memcmp(ms_params_data(&a->ps, i), ms_params_data(&b->ps, i), (size_t)a->ps.p[i].numel * sizeof(float)))
            return 0;
    return 1;
}

/* sd without key `drop` (NULL: none), with `extra` (a float (1,)), num_batches_tracked as float when fcount, and key
 * `widen` one column wider (its rows zero-filled) */
static ms_status edited(const ms_state_dict *sd, ms_state_dict *out, const char *drop, const char *extra, int fcount,
                        const char *widen)
{
    ms_sd_init(out);
    for (int i = 0; i < sd->n; i++) {
        const ms_sd_entry *e = &sd->e[i];
        if (drop && !strcmp(e->name, drop)) continue;
        if (widen && !strcmp(e->name, widen)) {
            int64_t sh[2] = {e->t.shape[0], e->t.shape[1] + 1};
            float *z = calloc((size_t)(sh[0] * sh[1]), sizeof *z);
            MS_TRY(ms_sd_add_take(out, e->name, MS_DTYPE_F32, sh, 2, z));
            continue;
        }
        if (fcount && e->t.dtype == MS_DTYPE_I64) {
            float v = 3.f;
            MS_TRY(ms_sd_add(out, e->name, MS_DTYPE_F32, e->t.shape, 0, &v));
            fcount = 0; /* one is enough */
            continue;
        }
        MS_TRY(ms_sd_add(out, e->name, e->t.dtype, e->t.shape, e->t.ndim, e->t.data));
    }
    float z = 0;
    int64_t one = 1;
    return extra ? ms_sd_add(out, extra, MS_DTYPE_F32, &one, 1, &z) : MS_OK;
}

/* 2. save → ms_sam_load round trips and refusals */
static void check_round_trip(ms_device *dev, uint64_t seed)
{
    ms_rng r;
    ms_rng_init(&r, seed, 7);
    ms_sam m, back;
    ms_state_dict sd;
    ms_sd_init(&sd);
    MS_CHECK_OK(new_model(&m, "vit_t_test", dev));
    const int64_t batches = 1 + (int64_t)ms_rng_below(&r, 100000);
    fill(&m, seed, batches);
    MS_CHECK_OK(ms_sam_to_sd(&m, &sd));
    const char *ext[2] = {"pth", "safetensors"}, *keep = getenv("MS_MOBILESAM_EXPORT_DIR");
    char path[1200];
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "/tmp/ms_mobilesam_%d.%s", (int)getpid(), ext[k]);
        MS_CHECK_OK(ms_sd_save(path, &sd));
        if (keep && *keep) { /* for gen_mobilesam_golden.py --check-export */
            char kp[1200];
            snprintf(kp, sizeof kp, "%s/vit_t_test.%s", keep, ext[k]);
            MS_CHECK_OK(ms_sd_save(kp, &sd));
        }
        ms_status st = ms_sam_load(&back, path, dev);
        MS_CHECK(st == MS_OK, "%s: %s", path, ms_errmsg());
        if (!st) {
            ms_tinyvit_config want;
            MS_CHECK_OK(ms_tinyvit_config_named("vit_t_test", &want));
            MS_CHECK(back.cfg.tinyvit && !memcmp(&back.cfg.tv, &want, sizeof want) && back.img_size == 256 &&
                         back.emb_h == 16 && back.cfg.n_mask_tokens == 4,
                     "%s: not recognised as vit_t_test at 256", ext[k]);
            MS_CHECK(!strcmp(ms_sam_config_model_name(&back.cfg), "vit_t_test"), "name %s",
                     ms_sam_config_model_name(&back.cfg));
            MS_CHECK(same_values(&m, &back), "%s: weights differ after the round trip", ext[k]);
            MS_CHECK(back.tv.bn_batches == batches, "%s: num_batches_tracked %lld, wrote %lld", ext[k],
                     (long long)back.tv.bn_batches, (long long)batches);
            printf("round trip (%s): %d tensors + num_batches_tracked %lld OK\n", ext[k], back.ps.n,
                   (long long)batches);
            ms_sam_free(&back);
        }
        unlink(path);
    }
    /* refusals: a drawn float key dropped, an unknown key outside the encoder, a float counter, a drawn block's
     * attention_biases with ws² + 1 columns (no square window) */
    int pick, ab;
    do pick = (int)ms_rng_below(&r, (uint64_t)sd.n); while (sd.e[pick].t.dtype != MS_DTYPE_F32);
    do ab = (int)ms_rng_below(&r, (uint64_t)sd.n); while (!ms_str_ends_with(sd.e[ab].name, ".attention_biases"));
    const char *cases[4] = {"a missing key", "an unknown key", "a float num_batches_tracked", "attention_biases"};
    for (int c = 0; c < 4; c++) {
        ms_state_dict bad;
        MS_CHECK_OK(edited(&sd, &bad, c == 0 ? sd.e[pick].name : NULL, c == 1 ? "mask_decoder.extra.weight" : NULL,
                           c == 2, c == 3 ? sd.e[ab].name : NULL));
        snprintf(path, sizeof path, "/tmp/ms_mobilesam_bad_%d.pth", (int)getpid());
        MS_CHECK_OK(ms_sd_save(path, &bad));
        ms_status st = ms_sam_load(&back, path, dev);
        printf("%s%s%s: %s\n", cases[c], c == 0 || c == 3 ? " " : "", c == 0 ? sd.e[pick].name : c == 3 ? sd.e[ab].name
               : "", st ? ms_errmsg() : "loaded");
        MS_CHECK(st != MS_OK, "%s: loaded", cases[c]);
        if (!st) ms_sam_free(&back);
        unlink(path);
        ms_sd_free(&bad);
    }
    ms_sd_free(&sd);
    ms_sam_free(&m);
}

static const ms_sd_entry *need(const ms_state_dict *g, const char *k)
{
    const ms_sd_entry *e = ms_sd_find(g, k);
    MS_CHECK(e != NULL, "golden: no %s", k);
    return e;
}

/* c within tol·max|ref| of golden key k (n values) */
static void close_to(const ms_state_dict *g, const char *k, const float *c, int64_t n, double tol)
{
    const ms_sd_entry *e = need(g, k);
    if (!e) return;
    MS_CHECK(ms_tensor_numel(&e->t) == n, "%s: %lld values, expected %lld", k, (long long)ms_tensor_numel(&e->t),
             (long long)n);
    if (ms_tensor_numel(&e->t) != n) return;
    float *ref = malloc((size_t)n * sizeof *ref);
    MS_CHECK_OK(ms_sd_get_f32(g, k, e->t.shape, e->t.ndim, ref));
    double mx = 0, d = 0;
    for (int64_t i = 0; i < n; i++) {
        mx = fmax(mx, fabs(ref[i]));
        d = fmax(d, fabs((double)c[i] - ref[i]));
    }
    printf("  %-12s max|c - ref| %.3g (max|ref| %.3g, %.2g of it)\n", k, d, mx, d / (mx + 1e-30));
    MS_CHECK(d <= tol * mx, "%s: max diff %.3g > %.1g·%.3g", k, d, tol, mx);
    free(ref);
}

/* the image (h,w,3) uint8 of golden g → the model input x (host) */
static ms_status prep(const ms_sam *m, const ms_state_dict *g, float *x, int *h, int *w)
{
    const ms_sd_entry *e = ms_sd_find(g, "image");
    MS_FAIL_IF(!e || e->t.ndim != 3 || e->t.dtype != MS_DTYPE_U8, MS_EFORMAT, "golden: no uint8 image");
    *h = (int)e->t.shape[0], *w = (int)e->t.shape[1];
    size_t n = (size_t)*h * *w * 3;
    float *f = malloc(n * sizeof *f);
    MS_FAIL_IF(!f, MS_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) f[i] = ((const uint8_t *)e->t.data)[i] / 255.f;
    ms_prep_config pc;
    ms_prep_config_default(&pc, m->img_size);
    pc.channels = 3;
    memset(x, 0, (size_t)3 * m->img_size * m->img_size * sizeof *x);
    ms_status rc = ms_prep_image_hwc(&pc, f, *h, *w, 3, x);
    free(f);
    return rc;
}

/* prompts → decoder → low-res logits of tokens first.. (n of them) and their IoU vs golden `tag`; the best one
 * post-processed to h×w vs tag.masks */
static void check_prompt(ms_device *dev, ms_sam *m, const ms_state_dict *g, const char *tag, const float *emb,
                         int h, int w, int n_points, const float *pts_in, const int32_t *labels, const float *box_in,
                         int first, int n, double tol)
{
    float pts[8], box[4];
    if (n_points) memcpy(pts, pts_in, (size_t)n_points * 2 * sizeof(float));
    if (box_in) memcpy(box, box_in, sizeof box);
    ms_sam_apply_coords(pts, n_points, h, w, m->img_size);
    if (box_in) ms_sam_apply_coords(box, 2, h, w, m->img_size);
    ms_sam_prompts pr = {.bp = 1, .n_points = n_points, .points = pts, .labels = labels,
                         .boxes = box_in ? box : NULL, .masks = NULL};
    ms_sam_prompt_state pst;
    memset(&pst, 0, sizeof pst);
    MS_CHECK_OK(ms_sam_prompt_forward(dev, &m->pe, &pr, &pst));
    MS_CHECK_OK(ms_sam_decoder_forward(dev, &m->dec, emb, 1, &pst));
    const int lo = 4 * m->emb_h, M = m->dec.M;
    const size_t plane = (size_t)lo * lo;
    float *low = malloc((size_t)M * plane * sizeof *low), iou[8], *full = malloc((size_t)h * w * sizeof *full);
    MS_CHECK_OK(ms_dev_to_host(dev, low, m->dec.masks, (size_t)M * plane * sizeof *low));
    MS_CHECK_OK(ms_dev_to_host(dev, iou, m->dec.iou, (size_t)M * sizeof *iou));
    char k[64];
    printf("%s:\n", tag);
    snprintf(k, sizeof k, "%s.low", tag);
    close_to(g, k, low + (size_t)first * plane, (int64_t)n * plane, tol);
    snprintf(k, sizeof k, "%s.iou", tag);
    close_to(g, k, iou + first, n, tol);
    int best = first;
    for (int i = first; i < first + n; i++) if (iou[i] > iou[best]) best = i;
    MS_CHECK_OK(ms_sam_postprocess_masks(low + (size_t)best * plane, 1, lo, lo, m->img_size, 0, h, w, full));
    snprintf(k, sizeof k, "%s.masks", tag);
    close_to(g, k, full, (int64_t)h * w, tol);
    const ms_sd_entry *e = ms_sd_find(g, k);
    if (e && ms_tensor_numel(&e->t) == (int64_t)h * w) {
        const float *ref = e->t.data;
        double mx = 0;
        for (int64_t i = 0; i < (int64_t)h * w; i++) mx = fmax(mx, fabs(ref[i]));
        int64_t flips = 0, on = 0;
        for (int64_t i = 0; i < (int64_t)h * w; i++) {
            on += ref[i] > 0;
            if (fabs(ref[i]) > 1e-3 * mx && (full[i] > 0) != (ref[i] > 0)) flips++;
        }
        printf("  mask: token %d, %lld of %lld pixels on, %lld differ beyond 1e-3·max\n", best, (long long)on,
               (long long)h * w, (long long)flips);
        MS_CHECK(!flips, "%s: %lld mask pixels differ", tag, (long long)flips);
    }
    free(low);
    free(full);
    ms_sam_prompt_state_free(dev, &pst);
}

/* TinyViT's true q/v LoRA merge: the delta row h·hd + d lands in qkv row h·3hd + d (q) / h·3hd + 2hd + d (v), the k
 * rows untouched; with finetune-SAM's slicing (ms_sam_sd_merge_lora) rows [0, C) and [2C, 3C). Drawn values. */
static void check_lora_merge(uint64_t seed)
{
    ms_tinyvit_config c;
    MS_CHECK_OK(ms_tinyvit_config_named("vit_t_test", &c));
    ms_rng r;
    ms_rng_init(&r, seed, 11);
    const int L = 1 + (int)ms_rng_below(&r, 3), C = c.dims[L], H = c.heads[L], hd = C / H, rk = 2;
    float *W = malloc((size_t)3 * C * C * sizeof *W), *A[2], *B[2];
    ms_fill_uniform(W, 3LL * C * C, &r, -1, 1);
    char w[128], k[128];
    snprintf(w, sizeof w, "image_encoder.layers.%d.blocks.0.attn.qkv.weight", L);
    for (int fsam = 0; fsam < 2; fsam++) {
        ms_state_dict sd;
        ms_sd_init(&sd);
        int64_t sw[2] = {3 * C, C}, sa[2] = {rk, C}, sb[2] = {C, rk};
        MS_CHECK_OK(ms_sd_add(&sd, w, MS_DTYPE_F32, sw, 2, W));
        for (int v = 0; v < 2; v++) {
            A[v] = malloc((size_t)rk * C * sizeof(float));
            B[v] = malloc((size_t)C * rk * sizeof(float));
            ms_fill_uniform(A[v], (int64_t)rk * C, &r, -1, 1);
            ms_fill_uniform(B[v], (int64_t)C * rk, &r, -1, 1);
            snprintf(k, sizeof k, "image_encoder.layers.%d.blocks.0.attn.qkv.linear_a_%c.weight", L, v ? 'v' : 'q');
            MS_CHECK_OK(ms_sd_add(&sd, k, MS_DTYPE_F32, sa, 2, A[v]));
            snprintf(k, sizeof k, "image_encoder.layers.%d.blocks.0.attn.qkv.linear_b_%c.weight", L, v ? 'v' : 'q');
            MS_CHECK_OK(ms_sd_add(&sd, k, MS_DTYPE_F32, sb, 2, B[v]));
        }
        int n = 0;
        MS_CHECK_OK(fsam ? ms_sam_sd_merge_lora(&sd, 0, 1, &n) : ms_sam_sd_merge_lora_tinyvit(&sd, &c, 1, &n));
        const float *M = ms_sd_find(&sd, w)->t.data;
        double worst = 0;
        for (int row = 0; row < 3 * C; row++) {
            /* which delta row (if any) this qkv row receives */
            int v = -1, i = -1;
            if (fsam) v = row < C ? 0 : row >= 2 * C ? 1 : -1, i = v < 0 ? -1 : row - (v ? 2 * C : 0);
            else {
                int h = row / (3 * hd), o = row % (3 * hd);
                v = o < hd ? 0 : o >= 2 * hd ? 1 : -1, i = v < 0 ? -1 : h * hd + o % hd;
            }
            for (int j = 0; j < C; j++) {
                double want = W[(size_t)row * C + j];
                if (v >= 0)
                    for (int q = 0; q < rk; q++) want += (double)B[v][i * rk + q] * A[v][q * C + j];
                worst = fmax(worst, fabs(M[(size_t)row * C + j] - want));
            }
        }
        printf("LoRA merge (%s slicing), layers.%d (C %d, %d heads): %d pairs, %d keys left, max error %.3g\n",
               fsam ? "finetune-SAM's" : "per-head q/v", L, C, H, n, sd.n, worst);
        MS_CHECK(n == 2 && sd.n == 1 && worst <= 1e-5, "LoRA merge: %d pairs, %d keys, error %.3g", n, sd.n, worst);
        for (int v = 0; v < 2; v++) free(A[v]), free(B[v]);
        ms_sd_free(&sd);
    }
    free(W);
}

static ms_status embed(ms_sam *m, const float *hx, float *he)
{
    const size_t nx = (size_t)3 * m->img_size * m->img_size, ne = (size_t)256 * m->emb_h * m->emb_w;
    float *x = NULL, *emb = NULL;
    ms_status rc = ms_dev_alloc(m->dev, nx * sizeof(float), (void **)&x);
    if (!rc) rc = ms_dev_alloc(m->dev, ne * sizeof(float), (void **)&emb);
    if (!rc) rc = ms_dev_from_host(m->dev, x, hx, nx * sizeof(float));
    if (!rc) rc = ms_sam_image_reserve(m, 1, 0);
    if (!rc) rc = ms_sam_image_forward(m, x, 1, emb);
    if (!rc) rc = ms_dev_to_host(m->dev, he, emb, ne * sizeof(float));
    if (x) ms_dev_free(m->dev, x);
    if (emb) ms_dev_free(m->dev, emb);
    return rc;
}

/* finetune-SAM's TinyViT LoRA file (attn.qkv.qkv.* + linear_{a,b}_{q,v} in drawn layers): ms_sam_load runs it as
 * finetune-SAM's model (PEFT, its column slicing), ms_sam_build merges it into the weights (pretraining's start):
 * the same embedding. Also ms_sam_build --init random --model vit_t_test. */
static void check_fsam_lora(ms_device *dev, uint64_t seed)
{
    ms_rng r;
    ms_rng_init(&r, seed, 13);
    ms_sam m, a, b;
    ms_state_dict sd, f;
    ms_sd_init(&sd);
    ms_sd_init(&f);
    MS_CHECK_OK(new_model(&m, "vit_t_test", dev));
    fill(&m, seed, 3);
    MS_CHECK_OK(ms_sam_to_sd(&m, &sd));
    ms_sam_free(&m);
    const unsigned layers = 1 + (unsigned)ms_rng_below(&r, 7); /* bits 0..2 → layers 1..3 */
    const int rank = 1 + (int)ms_rng_below(&r, 4);
    char k[300];
    for (int i = 0; i < sd.n; i++) {
        const ms_sd_entry *e = &sd.e[i];
        int L, j;
        char rest[200];
        if (sscanf(e->name, "image_encoder.layers.%d.blocks.%d.%199s", &L, &j, rest) == 3 && (layers >> (L - 1) & 1) &&
            (!strcmp(rest, "attn.qkv.weight") || !strcmp(rest, "attn.qkv.bias"))) {
            snprintf(k, sizeof k, "image_encoder.layers.%d.blocks.%d.attn.qkv.qkv.%s", L, j, rest + 9);
            MS_CHECK_OK(ms_sd_add(&f, k, e->t.dtype, e->t.shape, e->t.ndim, e->t.data));
            if (strcmp(rest, "attn.qkv.bias")) continue;
            const int64_t C = e->t.shape[0] / 3, sa[2] = {rank, C}, sb[2] = {C, rank};
            static const char *nm[4] = {"linear_a_q", "linear_b_q", "linear_a_v", "linear_b_v"};
            for (int q = 0; q < 4; q++) {
                float *v = malloc((size_t)(rank * C) * sizeof *v);
                ms_fill_uniform(v, rank * C, &r, -0.2f, 0.2f);
                snprintf(k, sizeof k, "image_encoder.layers.%d.blocks.%d.attn.qkv.%s.weight", L, j, nm[q]);
                MS_CHECK_OK(ms_sd_add_take(&f, k, MS_DTYPE_F32, q % 2 ? sb : sa, 2, v));
            }
            continue;
        }
        MS_CHECK_OK(ms_sd_add(&f, e->name, e->t.dtype, e->t.shape, e->t.ndim, e->t.data));
    }
    char path[256], name[32];
    snprintf(path, sizeof path, "/tmp/ms_mobilesam_fsam_%d.pth", (int)getpid());
    MS_CHECK_OK(ms_sd_save(path, &f));
    ms_status sa_ = ms_sam_load(&a, path, dev), sb_ = ms_sam_build(&b, path, NULL, 0, dev, name, sizeof name);
    unlink(path);
    MS_CHECK(sa_ == MS_OK && sb_ == MS_OK, "finetune-SAM TinyViT LoRA file: %s", ms_errmsg());
    if (!sa_ && !sb_) {
        MS_CHECK(a.tv.peft.lora_rank == rank && a.tv.peft.lora_layers == layers << 1 && a.tv.peft.fsam_slicing,
                 "PEFT read as rank %d layers %#x slicing %d", a.tv.peft.lora_rank, a.tv.peft.lora_layers,
                 a.tv.peft.fsam_slicing);
        const size_t nx = (size_t)3 * 256 * 256, ne = (size_t)256 * 16 * 16;
        float *hx = malloc(nx * sizeof *hx), *ea = malloc(ne * sizeof *ea), *eb = malloc(ne * sizeof *eb);
        ms_fill_uniform(hx, (int64_t)nx, &r, -2, 2);
        MS_CHECK_OK(embed(&a, hx, ea));
        MS_CHECK_OK(embed(&b, hx, eb));
        /* the base model without LoRA: the LoRA must matter */
        float *e0 = malloc(ne * sizeof *e0);
        ms_sam base;
        MS_CHECK_OK(new_model(&base, "vit_t_test", dev));
        fill(&base, seed, 3);
        MS_CHECK_OK(embed(&base, hx, e0));
        ms_sam_free(&base);
        double mx = 0, d = 0, d0 = 0;
        for (size_t i = 0; i < ne; i++) {
            mx = fmax(mx, fabs(eb[i]));
            d = fmax(d, fabs(ea[i] - eb[i]));
            d0 = fmax(d0, fabs(e0[i] - eb[i]));
        }
        printf("finetune-SAM TinyViT LoRA (rank %d, layers %#x): PEFT run vs merged (%s): max|d| %.3g (%.2g of max); "
               "the LoRA changes it by %.3g\n", rank, layers << 1, name, d, d / mx, d0);
        /* the LoRA's effect must stand well above the merge's rounding (rank 1 on one layer can be small) */
        MS_CHECK(d <= 1e-5 * mx && d0 > 1e-4 * mx && d0 > 50 * d && !strcmp(name, "vit_t_test"),
                 "LoRA run vs merge %.3g, vs none %.3g (max %.3g), name %s", d, d0, mx, name);
        free(hx), free(ea), free(eb), free(e0);
    }
    if (!sa_) ms_sam_free(&a);
    if (!sb_) ms_sam_free(&b);
    ms_sd_free(&sd);
    ms_sd_free(&f);
    /* random initialisation of the whole model */
    ms_status st = ms_sam_build(&b, NULL, "vit_t_test", seed, dev, name, sizeof name);
    MS_CHECK(st == MS_OK, "build vit_t_test: %s", ms_errmsg());
    if (!st) {
        double s = 0;
        for (int64_t i = 0; i < b.ps.numel; i++) s += fabs(b.ps.data[i]);
        printf("ms_sam_build vit_t_test (random): %d tensors, mean |w| %.3g\n", b.ps.n, s / (double)b.ps.numel);
        MS_CHECK(s > 0 && isfinite(s), "random init left zeros");
        ms_sam_free(&b);
    }
}

/* 3. the golden file */
static void check_golden(ms_device *dev)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/tests/finetune/golden/mobilesam_test.pth", src_dir);
    ms_state_dict g;
    ms_sd_init(&g);
    ms_status st = ms_sd_load(path, &g);
    MS_CHECK(st == MS_OK, "%s: %s", path, ms_errmsg());
    if (st) return;
    const ms_sd_entry *se = need(&g, "meta.seed");
    if (!se) return;
    const uint64_t seed = (uint64_t)*(const int64_t *)se->t.data;
    /* the generator's weights, through a file and ms_sam_load (MobileSAM's key set, num_batches_tracked = 3) */
    ms_sam w, m;
    ms_state_dict sd;
    ms_sd_init(&sd);
    MS_CHECK_OK(new_model(&w, "vit_t_test", dev));
    fill(&w, seed, 3);
    MS_CHECK_OK(ms_sam_to_sd(&w, &sd));
    ms_sam_free(&w);
    char tmp[256];
    snprintf(tmp, sizeof tmp, "/tmp/ms_mobilesam_golden_%d.pth", (int)getpid());
    MS_CHECK_OK(ms_sd_save(tmp, &sd));
    ms_sd_free(&sd);
    st = ms_sam_load(&m, tmp, dev);
    unlink(tmp);
    MS_CHECK(st == MS_OK, "load: %s", ms_errmsg());
    if (st) { ms_sd_free(&g); return; }
    const int S = m.img_size, gg = m.emb_h;
    float *hx = malloc((size_t)3 * S * S * sizeof *hx), *x = NULL, *emb = NULL, *he = malloc((size_t)256 * gg * gg * 4);
    int h = 0, wd = 0;
    MS_CHECK_OK(prep(&m, &g, hx, &h, &wd));
    MS_CHECK_OK(ms_dev_alloc(dev, (size_t)3 * S * S * sizeof(float), (void **)&x));
    MS_CHECK_OK(ms_dev_alloc(dev, (size_t)256 * gg * gg * sizeof(float), (void **)&emb));
    MS_CHECK_OK(ms_dev_from_host(dev, x, hx, (size_t)3 * S * S * sizeof(float)));
    MS_CHECK_OK(ms_sam_image_reserve(&m, 1, 0));
    MS_CHECK_OK(ms_sam_image_forward(&m, x, 1, emb));
    MS_CHECK_OK(ms_dev_to_host(dev, he, emb, (size_t)256 * gg * gg * sizeof(float)));
    printf("golden %s (seed %llu), image %dx%d:\n", path, (unsigned long long)seed, wd, h);
    close_to(&g, "emb", he, 256LL * gg * gg, 1e-4);
    const ms_sd_entry *pc = need(&g, "point.coords"), *pl = need(&g, "point.labels"), *bx = need(&g, "box");
    if (pc && pl && bx) {
        float pts[4], box[4];
        int32_t lab[2];
        MS_CHECK_OK(ms_sd_get_f32(&g, "point.coords", pc->t.shape, pc->t.ndim, pts));
        MS_CHECK_OK(ms_sd_get_f32(&g, "box", bx->t.shape, bx->t.ndim, box));
        for (int i = 0; i < 2; i++) lab[i] = (int32_t)((const int64_t *)pl->t.data)[i];
        check_prompt(dev, &m, &g, "point", emb, h, wd, 2, pts, lab, NULL, 1, 3, 1e-4);
        check_prompt(dev, &m, &g, "box", emb, h, wd, 0, NULL, NULL, box, 0, 1, 1e-4);
    }
    ms_dev_free(dev, x);
    ms_dev_free(dev, emb);
    free(hx);
    free(he);
    ms_sam_free(&m);
    ms_sd_free(&g);
}

/* 4. a mobile_sam.pt-shaped file saved by MobileSAM's code (optional) */
static void check_full_file(ms_device *dev)
{
    const char *path = getenv("MS_MOBILESAM_PTH");
    if (!path || !*path) return;
    char gp[1200];
    snprintf(gp, sizeof gp, "%s.golden.pth", path);
    ms_state_dict g;
    ms_sd_init(&g);
    ms_sam m;
    double t0 = ms_now_s();
    ms_status st = ms_sam_load(&m, path, dev);
    MS_CHECK(st == MS_OK, "%s: %s", path, ms_errmsg());
    if (st) return;
    printf("%s: loaded as %s (input %d, grid %d, num_batches_tracked %lld) in %.2f s\n", path,
           ms_sam_config_model_name(&m.cfg), m.img_size, m.emb_h, (long long)m.tv.bn_batches, ms_now_s() - t0);
    const char *keep = getenv("MS_MOBILESAM_EXPORT_DIR");
    if (keep && *keep) { /* its export, for gen_mobilesam_golden.py --check-export */
        ms_state_dict ex;
        ms_sd_init(&ex);
        MS_CHECK_OK(ms_sam_to_sd(&m, &ex));
        snprintf(gp, sizeof gp, "%s/vit_t.pth", keep);
        MS_CHECK_OK(ms_sd_save(gp, &ex));
        ms_sd_free(&ex);
        snprintf(gp, sizeof gp, "%s.golden.pth", path);
    }
    MS_CHECK(!strcmp(ms_sam_config_model_name(&m.cfg), "vit_t") && m.img_size == 1024, "not vit_t at 1024");
    MS_CHECK_OK(ms_sd_load(gp, &g));
    const int S = m.img_size, gg = m.emb_h;
    float *hx = malloc((size_t)3 * S * S * sizeof *hx), *x = NULL, *emb = NULL, *he = malloc((size_t)256 * gg * gg * 4);
    int h = 0, w = 0;
    MS_CHECK_OK(prep(&m, &g, hx, &h, &w));
    MS_CHECK_OK(ms_dev_alloc(dev, (size_t)3 * S * S * sizeof(float), (void **)&x));
    MS_CHECK_OK(ms_dev_alloc(dev, (size_t)256 * gg * gg * sizeof(float), (void **)&emb));
    MS_CHECK_OK(ms_dev_from_host(dev, x, hx, (size_t)3 * S * S * sizeof(float)));
    MS_CHECK_OK(ms_sam_image_reserve(&m, 1, 0));
    t0 = ms_now_s();
    MS_CHECK_OK(ms_sam_image_forward(&m, x, 1, emb));
    MS_CHECK_OK(ms_dev_to_host(dev, he, emb, (size_t)256 * gg * gg * sizeof(float)));
    printf("vit_t embedding of %dx%d: %.2f s\n", w, h, ms_now_s() - t0);
    close_to(&g, "emb", he, 256LL * gg * gg, 1e-3);
    float box[4];
    const ms_sd_entry *bx = need(&g, "box");
    if (bx) {
        MS_CHECK_OK(ms_sd_get_f32(&g, "box", bx->t.shape, bx->t.ndim, box));
        ms_sam_apply_coords(box, 2, h, w, S);
        ms_sam_prompts pr = {.bp = 1, .n_points = 0, .points = NULL, .labels = NULL, .boxes = box, .masks = NULL};
        ms_sam_prompt_state pst;
        memset(&pst, 0, sizeof pst);
        MS_CHECK_OK(ms_sam_prompt_forward(dev, &m.pe, &pr, &pst));
        MS_CHECK_OK(ms_sam_decoder_forward(dev, &m.dec, emb, 1, &pst));
        const size_t plane = (size_t)16 * gg * gg;
        float *low = malloc(4 * plane * sizeof *low), iou[4];
        MS_CHECK_OK(ms_dev_to_host(dev, low, m.dec.masks, 4 * plane * sizeof *low));
        MS_CHECK_OK(ms_dev_to_host(dev, iou, m.dec.iou, sizeof iou));
        printf("box:\n");
        close_to(&g, "box.low", low, (int64_t)plane, 1e-3);
        close_to(&g, "box.iou", iou, 1, 1e-3);
        free(low);
        ms_sam_prompt_state_free(dev, &pst);
    }
    ms_dev_free(dev, x);
    ms_dev_free(dev, emb);
    free(hx);
    free(he);
    ms_sam_free(&m);
    ms_sd_free(&g);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    const char *src = getenv("MS_SOURCE_DIR");
    snprintf(src_dir, sizeof src_dir, "%s", src ? src : "../..");
    ms_device dev;
    if (ms_device_init(&dev, MS_DEV_CPU, 0)) { printf("device: %s\n", ms_errmsg()); return 1; }
    check_keys(&dev, "vit_t_test");
    check_keys(&dev, "vit_t");
    check_round_trip(&dev, seed);
    check_lora_merge(seed);
    check_fsam_lora(&dev, seed);
    check_golden(&dev);
    check_full_file(&dev);
    ms_device_free(&dev);
    return ms_test_done();
}
