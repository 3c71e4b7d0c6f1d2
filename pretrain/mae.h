/* pretrain/mae.h — one MAE step on SAM's image encoder (docs/MAE.md): mask → encoder on the visible tokens →
 * decoder → MSE on the hidden patches (norm-pix), and its backward. The encoder's parameters are SAM's own; the
 * decoder's live in a separate parameter set (never exported).
 *
 * The encoder is SAM's ViT (ms_mae_init: run on the visible tokens only) or MobileSAM's TinyViT (ms_mae_init_tinyvit,
 * docs/MAE.md §TinyViT): its convolutions see every pixel, so the hidden 16×16 patches are zeroed in the normalised
 * input, the encoder runs dense up to layer 3 (grid S/16, BatchNorm in the mode tv->bn_train says: the caller's),
 * and its tokens at the visible positions go to the decoder; the backward scatters their gradients back into the
 * dense token grid.
 *
 * Target: the gray input in [0,1] (pre-normalisation intensity), patchified 16×16 (T = 1). Foreground patches are
 * those whose brightest pixel exceeds fg_threshold; the loss over hidden foreground and background patches is
 * reported apart (MRI's air background is irreducible noise under norm-pix, docs/MAE.md §Loss).
 */
#ifndef MS_MAE_H
#define MS_MAE_H

#include "pretrain/mae_decoder.h"
#include "pretrain/mae_mask.h"
#include "pretrain/sam_encoder.h"
#include "pretrain/tinyvit.h"

typedef struct ms_mae_config {
    float mask_ratio;          /* 0.75 */
    ms_mask_sampling sampling; /* stratified */
    int norm_pix;              /* 1 */
    float fg_threshold;        /* 0.05 */
    ms_mae_dec_config dec;     /* enc_dim, grid, patch filled from the encoder */
} ms_mae_config;

typedef struct ms_mae_loss {
    double loss, loss_fg, loss_bg; /* mean over hidden patches (all / foreground / background) */
    int n_fg, n_bg;
} ms_mae_loss;

typedef struct ms_mae {
    ms_mae_config cfg;
    ms_sam_encoder *enc;       /* not owned; NULL when tv is the encoder */
    ms_tinyvit *tv;            /* not owned; NULL when enc is the encoder */
    int S, patch, grid;        /* input side, patch (16), token grid g = S/16 */
    ms_mae_decoder dec;
    ms_mae_mask mask;
    ms_device *dev;
    int max_batch, batch, n_vis;
    int64_t rows, P;           /* B·L, patch pixels */
    float *target, *w_all, *w_fg, *w_bg, *dpred, *dtok, *loss_dev; /* device */
    float *h_target, *h_w_all, *h_w_fg, *h_w_bg;                  /* host */
    int32_t *vis;              /* host (B·n_vis) grid indices */
    /* TinyViT only: the masked input (B,3,S,S), the row lists that zero it (B·3·S·g rows of 16 pixels) and that
     * gather the visible tokens (B·n_vis rows b·L + t), the gathered tokens and the dense token gradient (B·L, C3) */
    float *xm, *vtok, *dfull;  /* device */
    int32_t *zidx, *vrow;      /* device */
    int32_t *h_zidx, *h_vrow;  /* host */
} ms_mae;

/* Registers the decoder's parameters in dec_ps (prefix "mae_decoder."). */
ms_status ms_mae_init(ms_mae *m, ms_sam_encoder *enc, const ms_mae_config *cfg, ms_params *dec_ps);
/* The same over TinyViT: the decoder's embed takes layer 3's width C3 (320 for vit_t); the masks are stratified over
 * 14×14 windows of the g×g grid, the ones SAM's ViT draws at the same input size and seed. */
ms_status ms_mae_init_tinyvit(ms_mae *m, ms_tinyvit *tv, const ms_mae_config *cfg, ms_params *dec_ps);
/* After both parameter sets are allocated and the encoder reserved with backward for max_batch. */
ms_status ms_mae_reserve(ms_mae *m, ms_device *dev, int max_batch);
/* Count only (docs/PERFORMANCE.md §Memory): the device bytes one MAE training step on SAM's ViT takes at max_batch,
 * allocating nothing — the encoder's and decoder's parameters with the gradients of their trainable tensors and
 * AdamW's fp32 moments (ms_params_train_bytes: set the trainable flags as the run does), the encoder's arenas
 * (ms_sam_encoder_activation_bytes, recompute on or off), the decoder's arena and the step's own buffers. Not
 * counted: the CUDA context, cuBLAS/cuDNN workspaces, the run's input batch. After ms_mae_init (no allocation
 * needed); TinyViT encoders: MS_EUNSUPPORTED. */
ms_status ms_mae_step_bytes(const ms_mae *m, const ms_params *dec_ps, int max_batch, int recompute, size_t *bytes);
/* The largest batch (up to 65536; 0: not even 1) whose ms_mae_step_bytes fits budget bytes. */
ms_status ms_mae_largest_batch(const ms_mae *m, const ms_params *dec_ps, int recompute, size_t budget, int *batch);
void ms_mae_free(ms_mae *m);

/* x (B,3,S,S) device, gray (B,S,S) host in [0,1]; keys[b] keys sample b's mask (e.g. epoch·N + position).
 * keys == NULL: use the masks already in m->mask (ms_mae_mask_set; tests and golden files). */
ms_status ms_mae_forward(ms_mae *m, const float *x, const float *gray, int B, uint64_t seed, const uint64_t *keys,
                         ms_mae_loss *out);
/* Gradients of loss·scale: decoder always; encoder too unless encoder_frozen. */
ms_status ms_mae_backward(ms_mae *m, float scale, int encoder_frozen);
/* The last forward's prediction with norm-pix undone per patch (using the true patch statistics), as a (B,S,S)
 * gray image, and the mask as hidden-patch flags — for the validation panels. */
ms_status ms_mae_reconstruction(ms_mae *m, const float *gray, float *recon);

#endif
