/* pretrain/mae_mask.h — which patch tokens the MAE encoder sees (docs/MAE.md §Masking).
 *
 * The token grid is g×g (g = input/16). SAM's windowed blocks pad it to gp×gp (gp = ceil(g/ws)·ws) and split it into
 * nw×nw windows. Stratified sampling (default) keeps, in every window w, k_w real tokens — k_w from largest-remainder
 * rounding of (1−m)·n_real(w), so that Σ k_w = floor(L·(1−m)), L = g² — and round((1−m)·n_pad(w)) of its pad slots,
 * chosen at random within the window. Every image then has the same number of visible tokens (static shapes), and
 * at 1024 with m = 0.75 every window holds exactly 49 slots. Random sampling keeps floor(L·(1−m)) real tokens drawn
 * uniformly from the whole grid (window counts vary) and the same pad rule.
 * Randomness is keyed by (seed, sample key), so a sample's mask does not depend on the batch it lands in.
 * Token lists are in window order, and in raster order within a window. Mask ratio 0 keeps everything.
 */
#ifndef MS_MAE_MASK_H
#define MS_MAE_MASK_H

#include <stdint.h>

#include "base/status.h"

typedef enum { MS_MASK_STRATIFIED = 0, MS_MASK_RANDOM = 1 } ms_mask_sampling;

typedef struct ms_mae_mask {
    int grid, window, padded, n_windows; /* g, ws, gp, nw·nw */
    int batch;
    int n_keep_max;      /* capacity per sample for visible real tokens */
    int n_pad_max;       /* capacity per sample for kept pad slots */
    int *n_keep;         /* (B) visible real tokens per sample */
    int *n_pad;          /* (B) kept pad slots per sample */
    int32_t *keep;       /* (B, n_keep_max) grid index r·g + c of each visible token */
    int32_t *pad;        /* (B, n_pad_max) padded-grid index r·gp + c of each kept pad slot */
    int32_t *win_keep_off; /* (B, n_windows+1) window w's visible tokens are keep[off[w] .. off[w+1]) */
    int32_t *win_pad_off;  /* (B, n_windows+1) the same for pad slots */
    uint8_t *masked;     /* (B, g·g) 1 = hidden from the encoder (predicted by the decoder) */
} ms_mae_mask;

ms_status ms_mae_mask_init(ms_mae_mask *m, int grid, int window, int batch);
void ms_mae_mask_free(ms_mae_mask *m);
/* Draw sample b's mask. ratio in [0, 1). */
ms_status ms_mae_mask_sample(ms_mae_mask *m, int b, float ratio, ms_mask_sampling how, uint64_t seed,
                             uint64_t sample_key);
/* Sets sample b's mask from given lists (tests, golden files): keep = visible grid indices y·g + x, pad = kept
 * padded-grid indices y·gp + x; both must be in window order (any order within a window is kept as given). */
ms_status ms_mae_mask_set(ms_mae_mask *m, int b, const int32_t *keep, int n_keep, const int32_t *pad, int n_pad);
/* Real tokens kept per window under stratified sampling (nw² ints), for tests and docs. */
void ms_mae_mask_stratified_counts(int grid, int window, float ratio, int *real_keep, int *pad_keep);
/* Visible tokens per sample at ratio, both samplings: floor(g²·(1 − ratio)) (the encoder's subset size). */
int ms_mae_mask_keep_target(int grid, float ratio);

#endif
