/* augment/augment.c — MAE and segmentation augmentations on a native slice (see augment.h).
 *
 * Invariants: geometric transforms keep image and label aligned and write labels only by copying an input label
 * value or 0 (the background), so a label map never gains a value; image values stay in [0,1] after ms_aug_apply.
 */
#include "augment/augment.h"

#include <math.h>
#include <string.h>

void ms_aug_config_none(ms_aug_config *c)
{
    memset(c, 0, sizeof(*c));
    c->rrc_scale[0] = 0.4f, c->rrc_scale[1] = 1.0f;
    c->rrc_ratio[0] = 3.0f / 4.0f, c->rrc_ratio[1] = 4.0f / 3.0f;
    c->scale_range[0] = c->scale_range[1] = 1.0f;
    c->gamma_range[0] = c->gamma_range[1] = 1.0f;
    c->contrast_range[0] = c->contrast_range[1] = 1.0f;
}

void ms_aug_config_mae(ms_aug_config *c)
{
    ms_aug_config_none(c);
    c->rrc = 1;
    c->p_hflip = 0.5f;
}

void ms_aug_config_seg(ms_aug_config *c)
{
    /* Ranges in the spirit of nnU-Net's 2D defaults, milder rotation (MRI slices are already canonical). */
    ms_aug_config_none(c);
    c->p_hflip = 0.5f;
    c->p_vflip = 0.5f;
    c->p_rot90 = 0.25f;
    c->p_affine = 0.3f;
    c->max_rot_deg = 15.0f;
    c->scale_range[0] = 0.85f, c->scale_range[1] = 1.15f;
    c->p_gamma = 0.3f;
    c->gamma_range[0] = 0.7f, c->gamma_range[1] = 1.5f;
    c->p_contrast = 0.3f;
    c->contrast_range[0] = 0.75f, c->contrast_range[1] = 1.25f;
    c->brightness = 0.1f;
    c->p_noise = 0.15f;
    c->noise_sd[0] = 0.0f, c->noise_sd[1] = 0.03f;
    c->p_bias = 0.3f;
    c->bias_strength = 0.3f;
}

void ms_aug_hflip(float *img, uint16_t *label, int h, int w)
{
    for (int y = 0; y < h; y++) {
        float *r = img + (size_t)y * w;
        for (int a = 0, b = w - 1; a < b; a++, b--) {
            float t = r[a];
            r[a] = r[b], r[b] = t;
        }
        if (!label) continue;
        uint16_t *l = label + (size_t)y * w;
        for (int a = 0, b = w - 1; a < b; a++, b--) {
            uint16_t t = l[a];
            l[a] = l[b], l[b] = t;
        }
    }
}

void ms_aug_vflip(float *img, uint16_t *label, int h, int w)
{
    for (int a = 0, b = h - 1; a < b; a++, b--) {
        float *ra = img + (size_t)a * w, *rb = img + (size_t)b * w;
        for (int x = 0; x < w; x++) {
            float t = ra[x];
            ra[x] = rb[x], rb[x] = t;
        }
        if (!label) continue;
        uint16_t *la = label + (size_t)a * w, *lb = label + (size_t)b * w;
        for (int x = 0; x < w; x++) {
            uint16_t t = la[x];
            la[x] = lb[x], lb[x] = t;
        }
    }
}

void ms_aug_rot90(float *img, uint16_t *label, int *h, int *w, int k, float *tmp, uint16_t *tmp_l)
{
    const int H = *h, W = *w;
    k = ((k % 4) + 4) % 4;
    if (k == 0) return;
    const int oh = (k == 2) ? H : W, ow = (k == 2) ? W : H;
    const size_t n = (size_t)H * W;
    memcpy(tmp, img, n * sizeof(float));
    if (label) memcpy(tmp_l, label, n * sizeof(uint16_t));
    for (int i = 0; i < oh; i++)
        for (int j = 0; j < ow; j++) {
            int sy, sx; /* numpy.rot90 convention: counter-clockwise */
            if (k == 1) sy = j, sx = W - 1 - i;
            else if (k == 2) sy = H - 1 - i, sx = W - 1 - j;
            else sy = H - 1 - j, sx = i;
            img[(size_t)i * ow + j] = tmp[(size_t)sy * W + sx];
            if (label) label[(size_t)i * ow + j] = tmp_l[(size_t)sy * W + sx];
        }
    *h = oh;
    *w = ow;
}

void ms_aug_affine(float *img, uint16_t *label, int h, int w, float deg, float scale, float *tmp, uint16_t *tmp_l)
{
    const size_t n = (size_t)h * w;
    memcpy(tmp, img, n * sizeof(float));
    if (label) memcpy(tmp_l, label, n * sizeof(uint16_t));
    const double th = deg * (3.14159265358979323846 / 180.0), c = cos(th) / scale, s = sin(th) / scale;
    const double cy = 0.5 * (h - 1), cx = 0.5 * (w - 1);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            /* inverse map: output pixel → source position */
            double dy = y - cy, dx = x - cx;
            double sy = cy + c * dy - s * dx, sx = cx + s * dy + c * dx;
            int y0 = (int)floor(sy), x0 = (int)floor(sx);
            float fy = (float)(sy - y0), fx = (float)(sx - x0), v = 0;
            for (int a = 0; a < 2; a++)
                for (int b = 0; b < 2; b++) {
                    int yy = y0 + a, xx = x0 + b;
                    if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
                    v += (a ? fy : 1 - fy) * (b ? fx : 1 - fx) * tmp[(size_t)yy * w + xx];
                }
            img[(size_t)y * w + x] = v;
            if (label) {
                int ny = (int)floor(sy + 0.5), nx = (int)floor(sx + 0.5);
                label[(size_t)y * w + x] =
                    (ny < 0 || ny >= h || nx < 0 || nx >= w) ? 0 : tmp_l[(size_t)ny * w + nx];
            }
        }
}

void ms_aug_gamma(float *img, int n, float gamma)
{
    for (int i = 0; i < n; i++) img[i] = img[i] > 0 ? powf(img[i], gamma) : 0.0f;
}

void ms_aug_contrast(float *img, int n, float contrast, float brightness)
{
    double m = 0;
    for (int i = 0; i < n; i++) m += img[i];
    float mean = n ? (float)(m / n) : 0.0f;
    for (int i = 0; i < n; i++) img[i] = (img[i] - mean) * contrast + mean + brightness;
}

void ms_aug_noise(float *img, int n, float sd, ms_rng *r)
{
    for (int i = 0; i < n; i++) img[i] += sd * ms_rng_normal(r);
}

void ms_aug_bias_field(float *img, int h, int w, const float coef[5])
{
    for (int y = 0; y < h; y++) {
        float v = h > 1 ? 2.0f * y / (h - 1) - 1.0f : 0.0f;
        for (int x = 0; x < w; x++) {
            float u = w > 1 ? 2.0f * x / (w - 1) - 1.0f : 0.0f;
            float e = coef[0] * u + coef[1] * v + coef[2] * u * v + coef[3] * (u * u - 1.0f / 3) +
                      coef[4] * (v * v - 1.0f / 3);
            img[(size_t)y * w + x] *= expf(e);
        }
    }
}

ms_box ms_aug_rrc_box(ms_rng *r, int h, int w, const float scale[2], const float ratio[2])
{
    const double area = (double)h * w, lr0 = log(ratio[0]), lr1 = log(ratio[1]);
    for (int t = 0; t < 10; t++) {
        double target = area * ms_rng_range(r, scale[0], scale[1]);
        double ar = exp(lr0 + (lr1 - lr0) * ms_rng_uniform(r));
        int cw = (int)lround(sqrt(target * ar)), ch = (int)lround(sqrt(target / ar));
        if (cw > 0 && cw <= w && ch > 0 && ch <= h) {
            int i = (int)ms_rng_below(r, (uint64_t)(h - ch + 1));
            int j = (int)ms_rng_below(r, (uint64_t)(w - cw + 1));
            return (ms_box){(float)i, (float)j, (float)ch, (float)cw};
        }
    }
    double in_ratio = (double)w / h;
    int cw = w, ch = h;
    if (in_ratio < ratio[0]) ch = (int)lround(cw / ratio[0]);
    else if (in_ratio > ratio[1]) cw = (int)lround(ch * ratio[1]);
    if (ch < 1) ch = 1;
    if (cw < 1) cw = 1;
    if (ch > h) ch = h;
    if (cw > w) cw = w;
    return (ms_box){(float)((h - ch) / 2), (float)((w - cw) / 2), (float)ch, (float)cw};
}

static int coin(ms_rng *r, float p) { return p > 0 && ms_rng_uniform(r) < p; }

void ms_aug_apply(const ms_aug_config *c, ms_rng *r, float *img, uint16_t *label, int *h, int *w, float *tmp,
                  uint16_t *tmp_l, ms_box *box)
{
    int n = *h * *w, touched = 0;
    if (coin(r, c->p_gamma)) {
        double lg0 = log(c->gamma_range[0]), lg1 = log(c->gamma_range[1]);
        ms_aug_gamma(img, n, (float)exp(lg0 + (lg1 - lg0) * ms_rng_uniform(r)));
        touched = 1;
    }
    if (coin(r, c->p_contrast)) {
        float ct = ms_rng_range(r, c->contrast_range[0], c->contrast_range[1]);
        float br = ms_rng_range(r, -c->brightness, c->brightness);
        ms_aug_contrast(img, n, ct, br);
        touched = 1;
    }
    if (coin(r, c->p_bias)) {
        float coef[5];
        for (int i = 0; i < 5; i++) coef[i] = ms_rng_range(r, -c->bias_strength, c->bias_strength);
        ms_aug_bias_field(img, *h, *w, coef);
        touched = 1;
    }
    if (coin(r, c->p_noise)) {
        ms_aug_noise(img, n, ms_rng_range(r, c->noise_sd[0], c->noise_sd[1]), r);
        touched = 1;
    }
    if (coin(r, c->p_hflip)) ms_aug_hflip(img, label, *h, *w);
    if (coin(r, c->p_vflip)) ms_aug_vflip(img, label, *h, *w);
    if (coin(r, c->p_rot90)) ms_aug_rot90(img, label, h, w, 1 + (int)ms_rng_below(r, 3), tmp, tmp_l);
    if (coin(r, c->p_affine)) {
        float deg = ms_rng_range(r, -c->max_rot_deg, c->max_rot_deg);
        float sc = ms_rng_range(r, c->scale_range[0], c->scale_range[1]);
        ms_aug_affine(img, label, *h, *w, deg, sc, tmp, tmp_l);
        touched = 1;
    }
    /* one clamp at the end: intensity transforms overshoot, bilinear weights may sum to 1 + ulp */
    if (touched)
        for (int i = 0; i < n; i++) img[i] = img[i] < 0 ? 0.0f : img[i] > 1 ? 1.0f : img[i];
    if (c->rrc) *box = ms_aug_rrc_box(r, *h, *w, c->rrc_scale, c->rrc_ratio);
    else *box = (ms_box){0, 0, (float)*h, (float)*w};
}

ms_status ms_aug_draw_flip_crop(const ms_aug_config *c, ms_rng *r, int h, int w, int *flip, ms_box *box)
{
    MS_FAIL_IF(c->p_gamma > 0 || c->p_contrast > 0 || c->p_bias > 0 || c->p_noise > 0 || c->p_vflip > 0 ||
                   c->p_rot90 > 0 || c->p_affine > 0,
               MS_EINVAL, "augment: only the flip and RandomResizedCrop can be drawn without the pixels");
    /* ms_aug_apply's order: its coins of probability 0 draw nothing, then the flip, then the crop */
    *flip = coin(r, c->p_hflip);
    if (c->rrc) *box = ms_aug_rrc_box(r, h, w, c->rrc_scale, c->rrc_ratio);
    else *box = (ms_box){0, 0, (float)h, (float)w};
    return MS_OK;
}
