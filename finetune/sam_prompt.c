/* finetune/sam_prompt.c — see sam_prompt.h. ref: segment_anything/modeling/prompt_encoder.py. */
#include "sam_prompt.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

ms_status ms_sam_acc_from_host(ms_device *dev, float *dst, const float *src, int64_t n)
{
    if (!dst || n <= 0) return MS_OK;
    if (dev->kind == MS_DEV_CPU) {
        for (int64_t i = 0; i < n; i++) dst[i] += src[i];
        return MS_OK;
    }
    float *tmp = malloc((size_t)n * sizeof(float));
    MS_FAIL_IF(!tmp, MS_ENOMEM, "out of memory");
    ms_status rc = ms_dev_to_host(dev, tmp, dst, (size_t)n * sizeof(float));
    if (!rc) {
        for (int64_t i = 0; i < n; i++) tmp[i] += src[i];
        rc = ms_dev_from_host(dev, dst, tmp, (size_t)n * sizeof(float));
    }
    free(tmp);
    return rc;
}

/* ---- registration ----------------------------------------------------------------------------------------- */

static int reg(ms_params *ps, const char *prefix, const char *name, int ndim, int64_t a, int64_t b, int64_t c,
               int64_t d, int no_decay)
{
    char full[MS_PARAM_NAME_MAX];
    int64_t shape[4] = {a, b, c, d};
    snprintf(full, sizeof full, "%s%s", prefix, name);
    return ms_params_add(ps, full, shape, ndim, no_decay);
}

ms_status ms_sam_prompt_init(ms_sam_prompt *pe, ms_params *ps, const char *prefix, int emb_h, int emb_w,
                             int img_size)
{
    memset(pe, 0, sizeof *pe);
    MS_FAIL_IF(emb_h <= 0 || emb_w <= 0 || img_size <= 0, MS_EINVAL, "prompt encoder: bad sizes %dx%d, input %d",
               emb_h, emb_w, img_size);
    pe->dim = 256;
    pe->emb_h = emb_h;
    pe->emb_w = emb_w;
    pe->img_size = img_size;
    pe->mask_in = 16;
    pe->ps = ps;
    const int D = pe->dim, mi = pe->mask_in;
    char name[64];
    int bad = 0;
    /* Order = SAM's state_dict order (the official checkpoints, e.g. sam_vit_b_01ec64.pth). */
    pe->gauss = reg(ps, prefix, "pe_layer.positional_encoding_gaussian_matrix", 2, 2, D / 2, 0, 0, 1);
    bad |= pe->gauss < 0;
    for (int k = 0; k < 4; k++) {
        snprintf(name, sizeof name, "point_embeddings.%d.weight", k);
        pe->pt[k] = reg(ps, prefix, name, 2, 1, D, 0, 0, 1);
        bad |= pe->pt[k] < 0;
    }
    pe->not_a_point = reg(ps, prefix, "not_a_point_embed.weight", 2, 1, D, 0, 0, 1);
    static const int md_idx[5] = {0, 1, 3, 4, 6};
    const int64_t md_shape[5][4] = {{mi / 4, 1, 2, 2}, {mi / 4, 0, 0, 0}, {mi, mi / 4, 2, 2}, {mi, 0, 0, 0},
                                    {D, mi, 1, 1}};
    for (int k = 0; k < 5; k++) {
        int conv = (k % 2) == 0;
        snprintf(name, sizeof name, "mask_downscaling.%d.weight", md_idx[k]);
        pe->md_w[k] = reg(ps, prefix, name, conv ? 4 : 1, md_shape[k][0], md_shape[k][1], md_shape[k][2],
                          md_shape[k][3], !conv);
        snprintf(name, sizeof name, "mask_downscaling.%d.bias", md_idx[k]);
        pe->md_b[k] = reg(ps, prefix, name, 1, md_shape[k][0], 0, 0, 0, 1);
        bad |= pe->md_w[k] < 0 || pe->md_b[k] < 0;
    }
    pe->no_mask = reg(ps, prefix, "no_mask_embed.weight", 2, 1, D, 0, 0, 1);
    bad |= pe->not_a_point < 0 || pe->no_mask < 0;
    return bad ? ms_error(MS_EINVAL, "prompt encoder: %s", ms_errmsg()) : MS_OK;
}

void ms_sam_prompt_freeze_buffers(ms_sam_prompt *pe) { pe->ps->p[pe->gauss].trainable = 0; }

/* ---- positional encoding ---------------------------------------------------------------------------------- */

void ms_sam_pe_encode(const float *G, int dim, const float *xy01, int n, float *out)
{
    const int half = dim / 2;
    const float two_pi = (float)(2.0 * M_PI);
    for (int i = 0; i < n; i++) {
        /* fp32 at every step, as PyTorch computes it: c' = 2c − 1, p = c'·G, p = 2π·p. */
        float cx = 2.f * xy01[2 * i] - 1.f, cy = 2.f * xy01[2 * i + 1] - 1.f;
        for (int k = 0; k < half; k++) {
            float p = (float)((double)cx * G[k] + (double)cy * G[half + k]);
            p = two_pi * p;
            out[(int64_t)i * dim + k] = sinf(p);
            out[(int64_t)i * dim + half + k] = cosf(p);
        }
    }
}

static ms_status get_host(ms_device *dev, const ms_params *ps, int idx, float *dst)
{
    return ms_dev_to_host(dev, dst, ms_params_data(ps, idx), (size_t)ps->p[idx].numel * sizeof(float));
}

ms_status ms_sam_dense_pe(ms_device *dev, const ms_sam_prompt *pe, float *out)
{
    const int h = pe->emb_h, w = pe->emb_w, D = pe->dim;
    float *G = malloc((size_t)D * sizeof(float));
    float *xy = malloc((size_t)h * w * 2 * sizeof(float));
    ms_status rc = MS_OK;
    if (!G || !xy) { rc = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
    rc = get_host(dev, pe->ps, pe->gauss, G);
    if (rc) goto leave;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            xy[2 * ((int64_t)y * w + x)] = ((float)x + 0.5f) / (float)w;
            xy[2 * ((int64_t)y * w + x) + 1] = ((float)y + 0.5f) / (float)h;
        }
    ms_sam_pe_encode(G, D, xy, h * w, out);
leave:
    free(G);
    free(xy);
    return rc;
}

/* ---- forward ---------------------------------------------------------------------------------------------- */

static ms_status sparse_forward(ms_device *dev, const ms_sam_prompt *pe, const ms_sam_prompts *pr,
                                ms_sam_prompt_state *st)
{
    const int D = pe->dim, bp = pr->bp, np = pr->n_points;
    const int pad = np > 0 && !pr->boxes;
    const int ns = np + pad + (pr->boxes ? 2 : 0);
    st->bp = bp;
    st->ns = ns;
    if (ns == 0) return MS_OK;
    if (bp * ns > st->sparse_cap) {
        free(st->sparse);
        free(st->kind);
        st->sparse = malloc((size_t)bp * ns * D * sizeof(float));
        st->kind = malloc((size_t)bp * ns);
        st->sparse_cap = st->sparse && st->kind ? bp * ns : 0;
        MS_FAIL_IF(!st->sparse_cap, MS_ENOMEM, "out of memory");
    }
    float emb[6][256], G[256], xy[2];
    MS_FAIL_IF(D != 256, MS_EINVAL, "prompt encoder: dim %d unsupported", D);
    MS_TRY(get_host(dev, pe->ps, pe->gauss, G));
    for (int k = 0; k < 4; k++) MS_TRY(get_host(dev, pe->ps, pe->pt[k], emb[k]));
    MS_TRY(get_host(dev, pe->ps, pe->not_a_point, emb[4]));
    const float inv = (float)pe->img_size;
    for (int b = 0; b < bp; b++) {
        for (int t = 0; t < ns; t++) {
            float *o = st->sparse + ((int64_t)b * ns + t) * D;
            int kind = -1, zero = 0;
            float px = 0.f, py = 0.f; /* the pad point is (0,0) after the shift */
            if (t < np) {
                px = pr->points[((int64_t)b * np + t) * 2] + 0.5f;
                py = pr->points[((int64_t)b * np + t) * 2 + 1] + 0.5f;
                int lab = pr->labels[(int64_t)b * np + t];
                if (lab == -1) { kind = 4; zero = 1; }
                else if (lab == 0 || lab == 1) kind = lab;
                else if (lab == MS_SAM_LABEL_BOX_TL || lab == MS_SAM_LABEL_BOX_BR) kind = 2 + (lab - MS_SAM_LABEL_BOX_TL);
            } else if (t < np + pad) {
                kind = 4;
                zero = 1;
            } else {
                int c = t - np - pad; /* box corner 0 or 1 */
                px = pr->boxes[(int64_t)b * 4 + 2 * c] + 0.5f;
                py = pr->boxes[(int64_t)b * 4 + 2 * c + 1] + 0.5f;
                kind = 2 + c;
            }
            xy[0] = px / inv;
            xy[1] = py / inv;
            if (zero) memset(o, 0, (size_t)D * sizeof(float));
            else ms_sam_pe_encode(G, D, xy, 1, o);
            if (kind >= 0)
                for (int c = 0; c < D; c++) o[c] += emb[kind][c];
            st->kind[(int64_t)b * ns + t] = (int8_t)kind;
        }
    }
    return MS_OK;
}

static ms_status dense_alloc(ms_device *dev, const ms_sam_prompt *pe, ms_sam_prompt_state *st, int bp)
{
    const int64_t hw = (int64_t)pe->emb_h * pe->emb_w, mi = pe->mask_in;
    ms_plan p = {0};
    ms_plan_add_f32(&p, &st->c0, bp * mi * hw); /* (bp, mi/4, 2h, 2w) has the same count as (bp, mi, h, w) */
    ms_plan_add_f32(&p, &st->n0, bp * mi * hw);
    ms_plan_add_f32(&p, &st->g0, bp * mi * hw);
    ms_plan_add_f32(&p, &st->mu0, bp * 4 * hw);
    ms_plan_add_f32(&p, &st->rs0, bp * 4 * hw);
    ms_plan_add_f32(&p, &st->c1, bp * mi * hw);
    ms_plan_add_f32(&p, &st->n1, bp * mi * hw);
    ms_plan_add_f32(&p, &st->g1, bp * mi * hw);
    ms_plan_add_f32(&p, &st->mu1, bp * hw);
    ms_plan_add_f32(&p, &st->rs1, bp * hw);
    ms_plan_add_f32(&p, &st->dense, bp * pe->dim * hw);
    ms_plan_add_f32(&p, &st->d_a, bp * mi * hw);
    ms_plan_add_f32(&p, &st->d_b, bp * mi * hw);
    int fresh;
    ms_status rc = ms_plan_fit(&p, dev, &st->arena, &fresh);
    ms_plan_free(&p);
    return rc;
}

ms_status ms_sam_prompt_forward(ms_device *dev, const ms_sam_prompt *pe, const ms_sam_prompts *pr,
                                ms_sam_prompt_state *st)
{
    MS_FAIL_IF(pr->bp < 1 || pr->n_points < 0 || (pr->n_points > 0 && (!pr->points || !pr->labels)), MS_EINVAL,
               "prompt encoder: bad prompt batch");
    const ms_params *ps = pe->ps;
    st->pe = pe;
    MS_TRY(sparse_forward(dev, pe, pr, st));
    st->dense_vec = ms_params_data(ps, pe->no_mask);
    st->dense_vec_grad = ms_params_grad(ps, pe->no_mask);
    st->m_in = pr->masks;
    if (!pr->masks) {
        st->dense = NULL;
        return MS_OK;
    }
    const int64_t bp = pr->bp, h = pe->emb_h, w = pe->emb_w, mi = pe->mask_in, q = mi / 4;
    MS_TRY(dense_alloc(dev, pe, st, (int)bp));
#define W(i) ms_params_data(ps, pe->md_w[i])
#define B(i) ms_params_data(ps, pe->md_b[i])
    MS_TRY(ms_conv_patch_forward(dev, st->c0, pr->masks, W(0), B(0), bp, 1, 4 * h, 4 * w, q, 2, 0));
    MS_TRY(ms_layernorm2d_forward(dev, st->n0, st->mu0, st->rs0, st->c0, W(1), B(1), bp, q, 4 * h * w, 1e-6f));
    MS_TRY(ms_gelu_forward(dev, st->g0, st->n0, bp * q * 4 * h * w));
    MS_TRY(ms_conv_patch_forward(dev, st->c1, st->g0, W(2), B(2), bp, q, 2 * h, 2 * w, mi, 2, 0));
    MS_TRY(ms_layernorm2d_forward(dev, st->n1, st->mu1, st->rs1, st->c1, W(3), B(3), bp, mi, h * w, 1e-6f));
    MS_TRY(ms_gelu_forward(dev, st->g1, st->n1, bp * mi * h * w));
    MS_TRY(ms_conv2d_forward(dev, st->dense, st->g1, W(4), B(4), bp, mi, h, w, pe->dim, 1, 0, 1));
#undef W
#undef B
    return MS_OK;
}

/* ---- backward --------------------------------------------------------------------------------------------- */

ms_status ms_sam_prompt_backward(ms_device *dev, const ms_sam_prompt *pe, ms_sam_prompt_state *st,
                                 const float *d_sparse, const float *d_dense)
{
    const ms_params *ps = pe->ps;
    const int D = pe->dim;
    if (d_sparse && st->ns > 0) {
        float acc[5][256];
        int used[5] = {0};
        memset(acc, 0, sizeof acc);
        for (int64_t t = 0; t < (int64_t)st->bp * st->ns; t++) {
            int k = st->kind[t];
            if (k < 0) continue;
            used[k] = 1;
            for (int c = 0; c < D; c++) acc[k][c] += d_sparse[t * D + c];
        }
        for (int k = 0; k < 5; k++) {
            if (!used[k]) continue;
            int idx = k < 4 ? pe->pt[k] : pe->not_a_point;
            MS_TRY(ms_sam_acc_from_host(dev, ms_params_grad(ps, idx), acc[k], D));
        }
    }
    if (!d_dense || !st->dense) return MS_OK;
    const int64_t bp = st->bp, h = pe->emb_h, w = pe->emb_w, mi = pe->mask_in, q = mi / 4;
    const int64_t n = bp * mi * h * w; /* every scratch tensor here has this many elements */
#define W(i) ms_params_data(ps, pe->md_w[i])
#define GW(i) ms_params_grad(ps, pe->md_w[i])
#define GB(i) ms_params_grad(ps, pe->md_b[i])
    float *da = st->d_a, *db = st->d_b;
    MS_TRY(ms_dev_zero(dev, da, (size_t)n * sizeof(float)));
    MS_TRY(ms_conv2d_backward(dev, da, GW(4), GB(4), d_dense, st->g1, W(4), bp, mi, h, w, D, 1, 0, 1));
    MS_TRY(ms_dev_zero(dev, db, (size_t)n * sizeof(float)));
    MS_TRY(ms_gelu_backward(dev, db, da, st->n1, n));
    MS_TRY(ms_dev_zero(dev, da, (size_t)n * sizeof(float)));
    MS_TRY(ms_layernorm2d_backward(dev, da, GW(3), GB(3), db, st->c1, W(3), st->mu1, st->rs1, bp, mi, h * w));
    MS_TRY(ms_dev_zero(dev, db, (size_t)n * sizeof(float)));
    MS_TRY(ms_conv_patch_backward(dev, db, GW(2), GB(2), da, st->g0, W(2), bp, q, 2 * h, 2 * w, mi, 2, 0));
    MS_TRY(ms_dev_zero(dev, da, (size_t)n * sizeof(float)));
    MS_TRY(ms_gelu_backward(dev, da, db, st->n0, n));
    MS_TRY(ms_dev_zero(dev, db, (size_t)n * sizeof(float)));
    MS_TRY(ms_layernorm2d_backward(dev, db, GW(1), GB(1), da, st->c0, W(1), st->mu0, st->rs0, bp, q, 4 * h * w));
    if (GW(0) || GB(0))
        MS_TRY(ms_conv_patch_backward(dev, NULL, GW(0), GB(0), db, st->m_in, W(0), bp, 1, 4 * h, 4 * w, q, 2, 0));
#undef W
#undef GW
#undef GB
    return MS_OK;
}

void ms_sam_prompt_state_free(ms_device *dev, ms_sam_prompt_state *st)
{
    (void)dev;
    free(st->sparse);
    free(st->kind);
    ms_arena_free(&st->arena);
    memset(st, 0, sizeof *st);
}
