/* kernels/cuda/attention_bf16.cu — grouped attention on tensor cores (bf16 inputs, fp32 accumulation), the path of
 * ms_attention_{forward,backward}_cuda when dev->precision is MS_PREC_BF16 (contract: kernels/attention.h).
 * NOT YET RUN ON A GPU: it compiles warning-free for sm_90 and its device code agrees with a double-precision
 * reference under a CPU emulation of the CUDA primitives it uses; the hardware has not confirmed either
 * (docs/PERFORMANCE-gpu-notes.md).
 *
 * Relative positions are folded into plain attention first (kernels/attention_fold.h): q' = [scale·q | rel | 0],
 * k' = [k | onehot | 0] in a workspace (ms_attention_fold_forward_cuda), the kernels run with scale 1 over (q', k',
 * v), and ms_attention_fold_backward_cuda turns dq', dk' into dq, dk, drel_h, drel_w. Without them the kernels
 * take q, k, v as they are (the descriptor's scale).
 * Inputs: fa_pack first gathers q('), k('), v (and dout in the backward) through the index lists into bf16 copies
 * by slot, (slots, heads, width rounded up to 16, zero-padded), so that the kernels stage whole tiles with
 * 16-byte loads instead of converting fp32 rows in every block that reads them.
 *
 * Kernels (FlashAttention-2's split; Dao 2023, arXiv:2307.08691, Algorithms 1 and 2): 128 threads, 4 warps, each
 * warp owns 16 rows (queries in fa_fwd and fa_bwd_q, keys in fa_bwd_kv); tiles of TQ = 64 queries and TK = 64
 * keys. Products are mma.sync.aligned.m16n8k16 bf16 → fp32 (inline PTX, sm_80 and later, so no sm_90a target);
 * fragments are read from shared memory with plain 32-bit loads (pairs along the reduction dimension) or pairs
 * of 16-bit loads where the reduction runs down a column (no ldmatrix: simple first, fast later).
 *   fa_fwd:    S = Q'K'ᵀ (fp32), online softmax in fp32 (exp2 domain), P rounded to bf16, O += P·V (fp32 in
 *              registers); O and lse = ln Σ exp S are written in fp32 ([row·n_heads + h]).
 *   fa_bwd_dot: D_i = Σ dO_i·O_i (fp32, one warp per query and head).
 *   fa_bwd_kv: per key tile, over the group's query tiles: Sᵀ = K'Q'ᵀ, Pᵀ = exp(Sᵀ − lse), dPᵀ = V·dOᵀ,
 *              dSᵀ = Pᵀ∘(dPᵀ − D); dV += Pᵀ·dO, dK' += dSᵀ·Q' (fp32 accumulators in shared memory, each element
 *              owned by one thread), then dk += scale·dK', dv += dV.
 *   fa_bwd_q:  per query tile, over the key tiles: S, P, dP = dO·Vᵀ, dS; dQ' += dS·K' (shared fp32), then
 *              dq += scale·dQ'.
 * What is bf16: the packed copies of q', k', v, dO and the P / dS operands of the second products. Everything
 * else (scores, softmax statistics, D, accumulators, the outputs in global memory) is fp32.
 * Widths: q'/k' up to 256 columns per head, v up to 128 (any width: the copies are zero-padded to multiples of
 * 16); wider folds run the fp32 kernels (*done = 0). Tail keys of a tile get P = 0 (−inf scores), tail
 * queries are zero rows that are never written.
 * Determinism: no float atomics except dk/dv with k_idx (key rows may be shared between groups: the same spot as
 * the fp32 kernels, kernels/cuda/attention.cu); every other sum has a fixed order.
 * Grid: (tiles of the largest group, groups ≤ 65535 a launch, heads); q_off / k_off are copied to the host to
 * size it (a synchronising copy, as in the fp32 path), and with relative positions q_idx / k_idx too (the fold's
 * row counts). Workspace: the context's attn_ws (fa_layout), not the ops' scratch, which the fold may take.
 */
#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention_bf16.h"
#include "attention_bf16_kernels.cuh"

/* ---- host side ----------------------------------------------------------------------------------------------------- */
static int pad16(int x) { return (x + 15) & ~15; }

/* What the kernels run over: the descriptor itself, or the fold's plain one over (q', k', v). */
typedef struct fa_setup {
    ms_attn_plan p;
    int fold;
    ms_attention_fold f;
    ms_attention_desc pd;
    int64_t slot0, n_slots;   /* query slots of all groups */
    int64_t kslot0, n_kslots; /* key slots */
} fa_setup;

/* 1 + the largest row id that any group reads (the rows q or k must have). */
static ms_status rows_spanned(ms_device *dev, const int32_t *off_h, const int32_t *idx, int64_t n_groups, int64_t per,
                              int64_t *rows, const char *what)
{
    const int64_t lo = off_h ? off_h[0] : 0, hi = off_h ? off_h[n_groups] : n_groups * per;
    *rows = hi;
    if (!idx || hi <= lo) return MS_OK;
    int32_t *h = (int32_t *)malloc((size_t)(hi - lo) * sizeof(int32_t));
    MS_FAIL_IF(!h, MS_ENOMEM, "%s: out of memory", what);
    ms_status rc = ms_cuda_copy(dev, h, idx + lo, (size_t)(hi - lo) * sizeof(int32_t), 2);
    int64_t mx = -1;
    for (int64_t i = 0; !rc && i < hi - lo; i++) {
        if (h[i] < 0) rc = ms_error(MS_EINVAL, "%s: negative row id %d in an index list", what, h[i]);
        if (h[i] > mx) mx = h[i];
    }
    free(h);
    *rows = mx + 1;
    return rc;
}

/* Host offsets, the fold's plan where d has relative positions, and whether the kernels cover the widths
 * (*fits = 0: the caller runs the fp32 kernels). */
static ms_status fa_prepare(ms_device *dev, const ms_attention_desc *d, fa_setup *s, int *fits, const char *what)
{
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    memset(s, 0, sizeof *s);
    *fits = 0;
    s->pd = *d;
    MS_TRY(ms_attn_plan_make(dev, d, &s->p, what));
    s->slot0 = s->p.q_off ? s->p.q_off[0] : 0;
    s->n_slots = (s->p.q_off ? s->p.q_off[d->n_groups] : d->n_groups * d->nq) - s->slot0;
    s->kslot0 = s->p.k_off ? s->p.k_off[0] : 0;
    s->n_kslots = (s->p.k_off ? s->p.k_off[d->n_groups] : d->n_groups * d->nk) - s->kslot0;
    if (d->rel_h) {
        int64_t n_q, n_k;
        MS_TRY(rows_spanned(dev, s->p.q_off, d->q_idx, d->n_groups, d->nq, &n_q, what));
        MS_TRY(rows_spanned(dev, s->p.k_off, d->k_idx, d->n_groups, d->nk, &n_k, what));
        MS_TRY(ms_attention_fold_plan(d, n_q, n_k, &s->f));
        s->fold = 1;
        s->pd = ms_attention_fold_desc(d, &s->f);
    }
    const int dqkp = pad16(s->pd.head_dim_qk ? s->pd.head_dim_qk : s->pd.head_dim), dvp = pad16(d->head_dim);
    *fits = dqkp <= MAX_DQK && dvp <= MAX_DV && smem_fwd(dqkp, dvp) <= cx->smem_optin &&
            smem_bwd_kv(dqkp, dvp) <= cx->smem_optin && smem_bwd_q(dqkp, dvp) <= cx->smem_optin;
    return MS_OK;
}

static void fa_fill(fa_args *a, const ms_attention_desc *pd, const fa_setup *s)
{
    memset(a, 0, sizeof *a);
    a->q_off = pd->q_off;
    a->q_idx = pd->q_idx;
    a->k_off = pd->k_off;
    a->k_idx = pd->k_idx;
    a->nq = pd->nq;
    a->nk = pd->nk;
    a->ldq = pd->ldq;
    a->ldk = pd->ldk;
    a->ldv = pd->ldv;
    a->ldo = pd->ldo;
    a->slot0 = s->slot0;
    a->kslot0 = s->kslot0;
    a->H = pd->n_heads;
    a->wqk = pd->head_dim_qk ? pd->head_dim_qk : pd->head_dim;
    a->wv = pd->head_dim;
    a->wqkp = pad16(a->wqk);
    a->wvp = pad16(a->wv);
    a->scale = pd->scale;
    a->k_atomic = pd->k_idx != NULL; /* key rows may be shared between groups */
}

/* One launch per chunk of ≤ 65535 groups: grid (tiles of the largest group, groups, heads). */
template <class K>
static ms_status fa_launch(ms_device *dev, K kern, fa_args a, int64_t n_groups, int64_t max_rows, size_t smem)
{
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    if (max_rows <= 0) return MS_OK;
    MS_CU(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    for (int64_t g0 = 0; g0 < n_groups; g0 += MAX_GRID_Y) {
        const int64_t ng = n_groups - g0 < MAX_GRID_Y ? n_groups - g0 : MAX_GRID_Y;
        a.g0 = g0;
        dim3 grid((unsigned)((max_rows + TQ - 1) / TQ), (unsigned)ng, (unsigned)a.H);
        kern<<<grid, NTH, smem, cx->stream>>>(a);
        MS_CU_LAUNCHED();
    }
    return MS_OK;
}

/* The workspace (ctx->attn_ws): fp32 q', k' (and dq', dk') of the fold, D, and the packed bf16 copies. */
typedef struct fa_bufs {
    float *qf, *kf, *dqf, *dkf, *D;
    bf16 *qb, *kb, *vb, *dob;
} fa_bufs;

/* Bytes of the layout (base NULL), or the pointers into base. Every piece starts on 256 bytes. */
static size_t fa_layout(const fa_setup *s, const fa_args *a, int bwd, char *base, fa_bufs *b)
{
    size_t off = 0;
    auto take = [&](size_t bytes) -> void * {
        void *p = base ? base + off : NULL;
        off += (bytes + 255) & ~(size_t)255;
        return p;
    };
    memset(b, 0, sizeof *b);
    if (s->fold) {
        const size_t nq = (size_t)s->f.n_q * s->f.n_heads * s->f.dqk, nk = (size_t)s->f.n_k * s->f.n_heads * s->f.dqk;
        b->qf = (float *)take(nq * sizeof(float));
        b->kf = (float *)take(nk * sizeof(float));
        if (bwd) {
            b->dqf = (float *)take(nq * sizeof(float));
            b->dkf = (float *)take(nk * sizeof(float));
        }
    }
    const size_t nqs = (size_t)s->n_slots * a->H, nks = (size_t)s->n_kslots * a->H;
    if (bwd) {
        b->D = (float *)take(nqs * sizeof(float));
        b->dob = (bf16 *)take(nqs * a->wvp * sizeof(bf16));
    }
    b->qb = (bf16 *)take(nqs * a->wqkp * sizeof(bf16));
    b->kb = (bf16 *)take(nks * a->wqkp * sizeof(bf16));
    b->vb = (bf16 *)take(nks * a->wvp * sizeof(bf16));
    return off;
}

static ms_status fa_pack_launch(ms_device *dev, bf16 *dst, const float *src, int64_t ld, const int32_t *idx, int64_t s0,
                                int64_t n, int H, int w, int wp)
{
    const int64_t pairs = n * H * (wp / 2);
    if (pairs <= 0) return MS_OK;
    fa_pack<<<ms_cu_blocks(pairs, 256), 256, 0, ms_cuda_ctx_of(dev)->stream>>>(dst, src, ld, idx, s0, n, H, w, wp);
    MS_CU_LAUNCHED();
    return MS_OK;
}

/* The workspace, the fold's q' and k' where there is one, and the bf16 copies of q('), k('), v the kernels read. */
static ms_status fa_inputs(ms_device *dev, const fa_setup *s, fa_args *a, int bwd, const float *q, const float *k,
                           const float *v, const ms_attention_desc *d, fa_bufs *b)
{
    void *ws;
    MS_TRY(ms_cuda_attn_workspace(dev, fa_layout(s, a, bwd, NULL, b), &ws));
    fa_layout(s, a, bwd, (char *)ws, b);
    if (s->fold) {
        MS_TRY(ms_attention_fold_forward_cuda(dev, b->qf, b->kf, q, k, d, &s->f));
        q = b->qf;
        k = b->kf;
    }
    const ms_attention_desc *pd = &s->pd;
    MS_TRY(fa_pack_launch(dev, b->qb, q, pd->ldq, pd->q_idx, s->slot0, s->n_slots, a->H, a->wqk, a->wqkp));
    MS_TRY(fa_pack_launch(dev, b->kb, k, pd->ldk, pd->k_idx, s->kslot0, s->n_kslots, a->H, a->wqk, a->wqkp));
    MS_TRY(fa_pack_launch(dev, b->vb, v, pd->ldv, pd->k_idx, s->kslot0, s->n_kslots, a->H, a->wv, a->wvp));
    a->qb = b->qb;
    a->kb = b->kb;
    a->vb = b->vb;
    return MS_OK;
}

ms_status ms_attn_bf16_forward(ms_device *dev, float *out, float *lse, const float *q, const float *k,
                               const float *v, const ms_attention_desc *d, int *done)
{
    const char *what = "attention_forward (bf16)";
    fa_setup s;
    fa_args a;
    fa_bufs b;
    int fits = 0;
    *done = 0;
    ms_status rc = fa_prepare(dev, d, &s, &fits, what);
    if (rc || !fits) goto leave;
    fa_fill(&a, &s.pd, &s);
    a.out = out;
    a.lse = lse;
    rc = fa_inputs(dev, &s, &a, 0, q, k, v, d, &b);
    if (rc) goto leave;
    rc = a.wvp <= 64 ? fa_launch(dev, fa_fwd<64>, a, d->n_groups, s.p.max_nq, smem_fwd(a.wqkp, a.wvp))
                     : fa_launch(dev, fa_fwd<128>, a, d->n_groups, s.p.max_nq, smem_fwd(a.wqkp, a.wvp));
    if (!rc) *done = 1;
leave:
    ms_attn_plan_free(&s.p);
    return rc;
}

ms_status ms_attn_bf16_backward(ms_device *dev, float *dq, float *dk, float *dv, float *drel_h, float *drel_w,
                                const float *dout, const float *out, const float *lse, const float *q,
                                const float *k, const float *v, const ms_attention_desc *d, int *done)
{
    const char *what = "attention_backward (bf16)";
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    fa_setup s;
    fa_args a;
    fa_bufs b;
    int fits = 0;
    *done = 0;
    ms_status rc = fa_prepare(dev, d, &s, &fits, what);
    if (rc || !fits) goto leave;
    fa_fill(&a, &s.pd, &s);
    rc = fa_inputs(dev, &s, &a, 1, q, k, v, d, &b);
    if (rc) goto leave;
    rc = fa_pack_launch(dev, b.dob, dout, s.pd.ldo, s.pd.q_idx, s.slot0, s.n_slots, a.H, a.wv, a.wvp);
    if (rc) goto leave;
    a.dob = b.dob;
    a.o = out;
    a.dout = dout;
    a.lse_in = lse;
    a.Dw = b.D;
    a.Dsum = b.D;
    a.dq = dq;
    a.dk = dk;
    a.dv = dv;
    if (s.fold) { /* the kernels produce dq', dk'; the fold's backward takes dq, dk and drel from them */
        MS_CU_GOTO(cudaMemsetAsync(b.dqf, 0, (size_t)s.f.n_q * s.f.n_heads * s.f.dqk * sizeof(float), cx->stream), rc,
                   leave);
        MS_CU_GOTO(cudaMemsetAsync(b.dkf, 0, (size_t)s.f.n_k * s.f.n_heads * s.f.dqk * sizeof(float), cx->stream), rc,
                   leave);
        a.dq = dq || drel_h || drel_w ? b.dqf : NULL;
        a.dk = dk ? b.dkf : NULL;
    }
    if (s.n_slots > 0) {
        fa_bwd_dot<<<ms_cu_blocks(s.n_slots * a.H * 32, 256), 256, 0, cx->stream>>>(a, s.n_slots);
        MS_CU_GOTO(cudaGetLastError(), rc, leave);
    }
    if (a.dk || a.dv) {
        rc = fa_launch(dev, fa_bwd_kv, a, d->n_groups, s.p.max_nk, smem_bwd_kv(a.wqkp, a.wvp));
        if (rc) goto leave;
    }
    if (a.dq) {
        rc = fa_launch(dev, fa_bwd_q, a, d->n_groups, s.p.max_nq, smem_bwd_q(a.wqkp, a.wvp));
        if (rc) goto leave;
    }
    if (s.fold) {
        rc = ms_attention_fold_backward_cuda(dev, dq, dk, drel_h, drel_w, b.dqf, b.dkf, q, d, &s.f);
        if (rc) goto leave;
    }
    *done = 1;
leave:
    ms_attn_plan_free(&s.p);
    return rc;
}
