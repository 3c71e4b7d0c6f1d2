/* kernels/cpu/loss.c — MSE (row-weighted, MAE), soft Dice (sigmoid, squared denominator; finetune-SAM /
 * MONAI DiceLoss) and cross-entropy with ignore (target < 0) (contract: kernels/loss.h).
 * `loss` is one host float, written. Backward accumulates dloss·∂loss/∂input.
 * Reductions are cut into chunks fixed by the problem size (kernels/cpu/cpu_par.h), summed in double and
 * combined in chunk order: the loss is bitwise reproducible. Labels are data, so they are validated and a bad
 * one is an MS_EINVAL, never a crash: Dice and CE reject target >= C; in Dice a target < 0 has an all-zero
 * one-hot row; CE skips it (and a batch with no valid pixel has loss 0 and no gradient, where torch gives NaN).
 */
#include "loss.h"

#include <math.h>
#include <stdlib.h>

#include "cpu/cpu_par.h"

/* ---- MSE ------------------------------------------------------------------------------------------------ */

ms_status ms_mse_loss_forward_cpu(ms_device *dev, float *loss, const float *pred, const float *target, const float *w,
                                  int64_t rows, int64_t cols)
{
    MS_FAIL_IF(rows < 0 || cols < 0 || (rows > 0 && cols == 0), MS_EINVAL, "mse_loss_forward: bad size %lld x %lld",
               (long long)rows, (long long)cols);
    int nt = ms_cpu_threads(dev);
    int64_t nch = ms_cpu_nchunks(rows, 8);
    double part[MS_CPU_MAX_CHUNKS], wpart[MS_CPU_MAX_CHUNKS];
#pragma omp parallel for num_threads(nt) schedule(static) if (rows * cols >= MS_CPU_PAR_MIN)
    for (int64_t ch = 0; ch < nch; ch++) {
        int64_t r0, r1;
        ms_cpu_chunk(rows, nch, ch, &r0, &r1);
        double s = 0, ws = 0;
        for (int64_t r = r0; r < r1; r++) {
            double wr = w ? w[r] : 1.0;
            ws += wr;
            if (wr == 0) continue;
            double e = 0;
            for (int64_t c = 0; c < cols; c++) { double d = (double)pred[r * cols + c] - target[r * cols + c]; e += d * d; }
            s += wr * e / (double)cols;
        }
        part[ch] = s;
        wpart[ch] = ws;
    }
    double s = 0, ws = 0;
    for (int64_t ch = 0; ch < nch; ch++) { s += part[ch]; ws += wpart[ch]; }
    *loss = ws != 0 ? (float)(s / ws) : 0.f;
    return MS_OK;
}

ms_status ms_mse_loss_backward_cpu(ms_device *dev, float *dpred, float dloss, const float *pred, const float *target,
                                   const float *w, int64_t rows, int64_t cols)
{
    MS_FAIL_IF(rows < 0 || cols < 0 || (rows > 0 && cols == 0), MS_EINVAL, "mse_loss_backward: bad size %lld x %lld",
               (long long)rows, (long long)cols);
    if (!dpred || rows == 0) return MS_OK;
    double ws = (double)rows;
    if (w) { ws = 0; for (int64_t r = 0; r < rows; r++) ws += w[r]; }
    if (ws == 0) return MS_OK;
    double coef = 2.0 * dloss / ((double)cols * ws);
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (rows * cols >= MS_CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        float k = (float)(coef * (w ? w[r] : 1.0));
        if (k == 0.f) continue;
        for (int64_t c = 0; c < cols; c++) dpred[r * cols + c] += k * (pred[r * cols + c] - target[r * cols + c]);
    }
    return MS_OK;
}

/* ---- labels ------------------------------------------------------------------------------------------------ */

/* Fails on a label >= C; counts labels >= 0. */
static ms_status check_labels(const char *who, const int32_t *target, int64_t n, int64_t C, int64_t *n_valid)
{
    int64_t cnt = 0;
    for (int64_t i = 0; i < n; i++) {
        MS_FAIL_IF(target[i] >= C, MS_EINVAL, "%s: label %d at pixel %lld is >= the %lld classes", who, target[i],
                   (long long)i, (long long)C);
        cnt += target[i] >= 0;
    }
    if (n_valid) *n_valid = cnt;
    return MS_OK;
}

static inline double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* ---- Dice ---------------------------------------------------------------------------------------------------- */

/* Per (b,c): I = Σ p·y, Sp = Σ p², Sy = Σ y² over P pixels; stats holds 3 doubles per (b,c). */
static ms_status dice_stats(ms_device *dev, double *stats, const float *logits, const int32_t *target, int64_t B,
                            int64_t C, int64_t P)
{
    ms_status rc = MS_OK;
    int64_t nch = ms_cpu_nchunks(P, 4096), ntask = B * C * nch;
    double *part = malloc((size_t)(ntask > 0 ? ntask : 1) * 3 * sizeof(double));
    if (!part) { rc = ms_error(MS_ENOMEM, "dice_loss: out of memory for %lld partial sums", (long long)ntask); goto leave; }
    int nt = ms_cpu_threads(dev);
#pragma omp parallel for num_threads(nt) schedule(static) if (B * C * P >= MS_CPU_PAR_MIN / 4)
    for (int64_t t = 0; t < ntask; t++) {
        int64_t bc = t / nch, ch = t % nch, b = bc / C, c = bc % C, p0, p1;
        ms_cpu_chunk(P, nch, ch, &p0, &p1);
        const float *l = logits + bc * P;
        const int32_t *tg = target + b * P;
        double i_ = 0, sp = 0, sy = 0;
        for (int64_t p = p0; p < p1; p++) {
            double pr = sigmoid(l[p]);
            int y = tg[p] == c;
            sp += pr * pr;
            if (y) { i_ += pr; sy += 1; }
        }
        part[3 * t] = i_; part[3 * t + 1] = sp; part[3 * t + 2] = sy;
    }
    for (int64_t bc = 0; bc < B * C; bc++) {
        double s[3] = {0, 0, 0};
        for (int64_t ch = 0; ch < nch; ch++)
            for (int k = 0; k < 3; k++) s[k] += part[3 * (bc * nch + ch) + k];
        for (int k = 0; k < 3; k++) stats[3 * bc + k] = s[k];
    }
leave:
    free(part);
    return rc;
}

static ms_status dice_check(const char *who, const float *logits, const int32_t *target, int64_t B, int64_t C, int64_t P)
{
    MS_FAIL_IF(B < 0 || C < 0 || P < 0, MS_EINVAL, "%s: negative size", who);
    MS_FAIL_IF(B * C * P > 0 && (!logits || !target), MS_EINVAL, "%s: NULL logits or target", who);
    return check_labels(who, target, B * P, C, NULL);
}

ms_status ms_dice_loss_forward_cpu(ms_device *dev, float *loss, const float *logits, const int32_t *target, int64_t B,
                                   int64_t C, int64_t P, float smooth)
{
    MS_TRY(dice_check("dice_loss_forward", logits, target, B, C, P));
    if (B * C == 0) { *loss = 0.f; return MS_OK; }
    ms_status rc = MS_OK;
    double *st = malloc((size_t)(B * C) * 3 * sizeof(double));
    if (!st) { rc = ms_error(MS_ENOMEM, "dice_loss_forward: out of memory"); goto leave; }
    rc = dice_stats(dev, st, logits, target, B, C, P);
    if (rc) goto leave;
    double s = 0;
    for (int64_t bc = 0; bc < B * C; bc++)
        s += 1.0 - (2.0 * st[3 * bc] + smooth) / (st[3 * bc + 1] + st[3 * bc + 2] + smooth);
    *loss = (float)(s / (double)(B * C));
leave:
    free(st);
    return rc;
}

/* ∂/∂logit of 1 − (2I+s)/Den, Den = Sp+Sy+s:  ((2I+s)·2p/Den² − 2y/Den) · p(1−p). */
ms_status ms_dice_loss_backward_cpu(ms_device *dev, float *dlogits, float dloss, const float *logits,
                                    const int32_t *target, int64_t B, int64_t C, int64_t P, float smooth)
{
    MS_TRY(dice_check("dice_loss_backward", logits, target, B, C, P));
    if (!dlogits || B * C * P == 0) return MS_OK;
    ms_status rc = MS_OK;
    double *st = malloc((size_t)(B * C) * 3 * sizeof(double));
    if (!st) { rc = ms_error(MS_ENOMEM, "dice_loss_backward: out of memory"); goto leave; }
    rc = dice_stats(dev, st, logits, target, B, C, P);
    if (rc) goto leave;
    double scale = (double)dloss / (double)(B * C);
    int nt = ms_cpu_threads(dev);
    int64_t nch = ms_cpu_nchunks(P, 4096), ntask = B * C * nch;
#pragma omp parallel for num_threads(nt) schedule(static) if (B * C * P >= MS_CPU_PAR_MIN / 4)
    for (int64_t t = 0; t < ntask; t++) {
        int64_t bc = t / nch, ch = t % nch, b = bc / C, c = bc % C, p0, p1;
        ms_cpu_chunk(P, nch, ch, &p0, &p1);
        double num = 2.0 * st[3 * bc] + smooth, den = st[3 * bc + 1] + st[3 * bc + 2] + smooth;
        double a = scale * 2.0 * num / (den * den), k = scale * 2.0 / den;
        const float *l = logits + bc * P;
        const int32_t *tg = target + b * P;
        float *d = dlogits + bc * P;
        for (int64_t p = p0; p < p1; p++) {
            double pr = sigmoid(l[p]);
            d[p] += (float)((a * pr - (tg[p] == c ? k : 0.0)) * pr * (1.0 - pr));
        }
    }
leave:
    free(st);
    return rc;
}

/* ---- cross-entropy ------------------------------------------------------------------------------------------ */

/* log Σ_c exp(l[c·P]) for one pixel, max-subtracted. */
static double pixel_lse(const float *l, int64_t C, int64_t P)
{
    float mx = -INFINITY;
    for (int64_t c = 0; c < C; c++) mx = l[c * P] > mx ? l[c * P] : mx;
    double s = 0;
    for (int64_t c = 0; c < C; c++) s += exp((double)l[c * P] - mx);
    return mx + log(s);
}

static ms_status ce_check(const char *who, const float *logits, const int32_t *target, int64_t B, int64_t C, int64_t P,
                          int64_t *n_valid)
{
    MS_FAIL_IF(B < 0 || C < 0 || P < 0, MS_EINVAL, "%s: negative size", who);
    MS_FAIL_IF(B * P > 0 && (!logits || !target), MS_EINVAL, "%s: NULL logits or target", who);
    return check_labels(who, target, B * P, C, n_valid);
}

ms_status ms_cross_entropy_forward_cpu(ms_device *dev, float *loss, const float *logits, const int32_t *target,
                                       int64_t B, int64_t C, int64_t P)
{
    int64_t n_valid = 0;
    MS_TRY(ce_check("cross_entropy_forward", logits, target, B, C, P, &n_valid));
    if (n_valid == 0) { *loss = 0.f; return MS_OK; }
    int nt = ms_cpu_threads(dev);
    int64_t npix = B * P, nch = ms_cpu_nchunks(npix, 1024);
    double part[MS_CPU_MAX_CHUNKS];
#pragma omp parallel for num_threads(nt) schedule(static) if (npix * C >= MS_CPU_PAR_MIN / 4)
    for (int64_t ch = 0; ch < nch; ch++) {
        int64_t q0, q1;
        ms_cpu_chunk(npix, nch, ch, &q0, &q1);
        double s = 0;
        for (int64_t q = q0; q < q1; q++) {
            int32_t t = target[q];
            if (t < 0) continue;
            const float *l = logits + (q / P) * C * P + q % P;
            s += pixel_lse(l, C, P) - l[t * P];
        }
        part[ch] = s;
    }
    double s = 0;
    for (int64_t ch = 0; ch < nch; ch++) s += part[ch];
    *loss = (float)(s / (double)n_valid);
    return MS_OK;
}

ms_status ms_cross_entropy_backward_cpu(ms_device *dev, float *dlogits, float dloss, const float *logits,
                                        const int32_t *target, int64_t B, int64_t C, int64_t P)
{
    int64_t n_valid = 0;
    MS_TRY(ce_check("cross_entropy_backward", logits, target, B, C, P, &n_valid));
    if (!dlogits || n_valid == 0) return MS_OK;
    double scale = (double)dloss / (double)n_valid;
    int nt = ms_cpu_threads(dev);
    int64_t npix = B * P;
#pragma omp parallel for num_threads(nt) schedule(static) if (npix * C >= MS_CPU_PAR_MIN / 4)
    for (int64_t q = 0; q < npix; q++) {
        int32_t t = target[q];
        if (t < 0) continue;
        int64_t off = (q / P) * C * P + q % P;
        const float *l = logits + off;
        float *d = dlogits + off;
        double lse = pixel_lse(l, C, P);
        for (int64_t c = 0; c < C; c++)
            d[c * P] += (float)(scale * (exp((double)l[c * P] - lse) - (c == t ? 1.0 : 0.0)));
    }
    return MS_OK;
}
