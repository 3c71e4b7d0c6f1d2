/* kernels/cuda/attention_fold.cu — SAM's decomposed relative positions folded into extra query/key columns
 * (contract: kernels/attention_fold.h; the CPU twin, with the plan and descriptor helpers both backends use, is
 * kernels/cpu/attention_fold.c). fp32, simple kernels: they run once per attention call, beside the attention.
 *
 * Grids: blockIdx.y walks the groups (group sizes and offsets live on the device, so nothing is copied to the host),
 * blockIdx.x and the threads walk the group's (row, head, column) elements. Rows outside [0, n_q) / [0, n_k) and
 * slots outside the tables are skipped (the CPU backend reports them; here the index lists cannot be read on the
 * host without a synchronising copy).
 *   forward   q' elements: scale·q, or one dot product q·rel[t] of head_dim terms; k' elements: k, one-hot, 0. A
 *             key row shared by several groups is written once per group with the same bits.
 *   backward  dq elements: scale·dq'[c] + Σ_s dq'[hd+s]·rel[t(s)][c] over the Lh + Lw slots, one writer per element
 *             (a query row is in one group). dk: with k_idx a key row may be in several groups; its owner is the
 *             smallest such group (integer atomicMin, an order-free result) and only the owner adds dk'.
 *             drel: each block adds A_tileᵀ·Q_tile into its own partial table (slab), where a tile is TS (row, head)
 *             pairs staged in shared memory and A[s][t] = dq'[hd + slot of table row t] (0 where no slot maps to
 *             t); a second kernel adds the slabs in index order. No float atomics: results are deterministic.
 * Temporaries (slabs, owners) come from cudaMallocAsync on the device's stream (never from ms_cuda_scratch,
 * where the caller's q'/k' may live) and are freed the same way, so the functions also work under graph capture.
 */
#include <stdint.h>

#include "cuda_common.h" /* brings attention_fold.h as extern "C" (through ops.h) */

#define NT 256            /* threads per block */
#define TARGET_BLOCKS 1024 /* elementwise grids: about this many blocks in all */
#define SLABS 256         /* drel partial tables, about */
#define TS_MAX 32         /* (row, head) pairs per drel tile */
#define SMEM_MAX 40960    /* bytes of shared memory for a drel tile */

struct fold_args {
    const int32_t *q_off, *q_idx, *k_off, *k_idx, *q_row, *q_col, *k_row, *k_col;
    const float *rel_h, *rel_w;
    int64_t nq, nk, ldq, ldk, n_q, n_k, G;
    int H, hd, lh, lw, dqk, len_h, len_w;
    float scale;
};

static fold_args args_of(const ms_attention_desc *d, const ms_attention_fold *f)
{
    fold_args a;
    a.q_off = d->q_off; a.q_idx = d->q_idx; a.k_off = d->k_off; a.k_idx = d->k_idx;
    a.q_row = d->q_row; a.q_col = d->q_col; a.k_row = d->k_row; a.k_col = d->k_col;
    a.rel_h = d->rel_h; a.rel_w = d->rel_w;
    a.nq = d->nq; a.nk = d->nk; a.ldq = d->ldq; a.ldk = d->ldk;
    a.n_q = f->n_q; a.n_k = f->n_k; a.G = d->n_groups;
    a.H = f->n_heads; a.hd = f->head_dim; a.lh = f->lh; a.lw = f->lw; a.dqk = f->dqk;
    a.len_h = (int)d->len_h; a.len_w = (int)d->len_w;
    a.scale = d->scale;
    return a;
}

__device__ static inline int64_t grp_start(const int32_t *off, int64_t u, int64_t g) { return off ? off[g] : g * u; }
__device__ static inline int64_t grp_count(const int32_t *off, int64_t u, int64_t g)
{
    return off ? (int64_t)off[g + 1] - off[g] : u;
}
__device__ static inline int64_t q_row_id(const fold_args &a, int64_t s0, int64_t t)
{
    return a.q_idx ? a.q_idx[s0 + t] : s0 + t;
}
__device__ static inline int64_t k_row_id(const fold_args &a, int64_t s0, int64_t t)
{
    return a.k_idx ? a.k_idx[s0 + t] : s0 + t;
}
/* Table row of slot s (s < lh: rel_h, else rel_w) for a query at (qr, qc); −1 outside the table. */
__device__ static inline int table_row(const fold_args &a, int qr, int qc, int s)
{
    int t = s < a.lh ? qr - s + a.lh - 1 : qc - (s - a.lh) + a.lw - 1, len = s < a.lh ? a.len_h : a.len_w;
    return t >= 0 && t < len ? t : -1;
}

/* The elements e of group g's items (count per row: per), walked by this block column. */
#define GROUP_LOOP(a, off, u)                                                                              \
    for (int64_t g = blockIdx.y; g < (a).G; g += gridDim.y)                                                \
        for (int64_t s0 = grp_start(off, u, g), n_ = grp_count(off, u, g) * per,                           \
                     e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n_;                           \
             e += (int64_t)gridDim.x * blockDim.x)

__global__ static void __launch_bounds__(NT) fold_q_k(float *qf, const float *q, fold_args a)
{
    int64_t per = (int64_t)a.H * a.dqk;
    GROUP_LOOP(a, a.q_off, a.nq) {
        int64_t r = q_row_id(a, s0, e / per);
        int h = (int)(e % per / a.dqk), c = (int)(e % a.dqk);
        if (r < 0 || r >= a.n_q) continue;
        const float *qi = q + r * a.ldq + (int64_t)h * a.hd;
        float x = 0.f;
        if (c < a.hd) {
            x = a.scale * qi[c];
        } else if (c < a.hd + a.lh + a.lw) {
            int s = c - a.hd, t = table_row(a, a.q_row[r], a.q_col[r], s);
            if (t >= 0) {
                const float *rel = (s < a.lh ? a.rel_h : a.rel_w) + (int64_t)t * a.hd;
                for (int k = 0; k < a.hd; k++) x = fmaf(qi[k], rel[k], x);
            }
        }
        qf[(r * a.H + h) * a.dqk + c] = x;
    }
}

__global__ static void __launch_bounds__(NT) fold_k_k(float *kf, const float *k, fold_args a)
{
    int64_t per = (int64_t)a.H * a.dqk;
    GROUP_LOOP(a, a.k_off, a.nk) {
        int64_t r = k_row_id(a, s0, e / per);
        int h = (int)(e % per / a.dqk), c = (int)(e % a.dqk);
        if (r < 0 || r >= a.n_k) continue;
        float x = 0.f;
        if (c < a.hd) {
            x = k[r * a.ldk + (int64_t)h * a.hd + c];
        } else if (c < a.hd + a.lh) {
            x = c - a.hd == a.k_row[r] ? 1.f : 0.f; /* a row outside [0, lh) matches no slot */
        } else if (c < a.hd + a.lh + a.lw) {
            x = c - a.hd - a.lh == a.k_col[r] ? 1.f : 0.f;
        }
        kf[(r * a.H + h) * a.dqk + c] = x;
    }
}

__global__ static void __launch_bounds__(NT) unfold_dq_k(float *dq, const float *dqf, fold_args a)
{
    int64_t per = (int64_t)a.H * a.hd;
    GROUP_LOOP(a, a.q_off, a.nq) {
        int64_t r = q_row_id(a, s0, e / per);
        int h = (int)(e % per / a.hd), c = (int)(e % a.hd);
        if (r < 0 || r >= a.n_q) continue;
        const float *gq = dqf + (r * a.H + h) * a.dqk;
        int qr = a.q_row[r], qc = a.q_col[r];
        float x = a.scale * gq[c];
        for (int s = 0; s < a.lh + a.lw; s++) {
            int t = table_row(a, qr, qc, s);
            if (t >= 0) x = fmaf(gq[a.hd + s], (s < a.lh ? a.rel_h : a.rel_w)[(int64_t)t * a.hd + c], x);
        }
        dq[r * a.ldq + (int64_t)h * a.hd + c] += x;
    }
}

/* owner[r] = the smallest group holding key row r (owner starts at 0x7f7f7f7f). */
__global__ static void __launch_bounds__(NT) key_owner_k(int32_t *owner, fold_args a)
{
    int64_t per = 1;
    GROUP_LOOP(a, a.k_off, a.nk) {
        int64_t r = k_row_id(a, s0, e);
        if (r >= 0 && r < a.n_k) atomicMin(owner + r, (int32_t)g);
    }
}

__global__ static void __launch_bounds__(NT) unfold_dk_k(float *dk, const float *dkf, const int32_t *owner, fold_args a)
{
    int64_t per = (int64_t)a.H * a.hd;
    GROUP_LOOP(a, a.k_off, a.nk) {
        int64_t r = k_row_id(a, s0, e / per);
        int h = (int)(e % per / a.hd), c = (int)(e % a.hd);
        if (r < 0 || r >= a.n_k || (owner && owner[r] != g)) continue;
        dk[r * a.ldk + (int64_t)h * a.hd + c] += dkf[(r * a.H + h) * a.dqk + c];
    }
}

/* Block (x, y)'s slab += Σ over its tiles of Aᵀ·Q (see the top). Tiles of group g: (row, head) pairs
 * [tile·ts, tile·ts + ts), tile = blockIdx.x, blockIdx.x + gridDim.x, ... */
__global__ static void __launch_bounds__(NT) drel_part_k(float *slabs, const float *dqf, const float *q, fold_args a,
                                                         int ts)
{
    extern __shared__ float sh[];
    int L = a.len_h + a.len_w;
    float *A = sh, *Q = sh + (int64_t)ts * L; /* A (ts, L), Q (ts, hd) */
    float *part = slabs + ((int64_t)blockIdx.y * gridDim.x + blockIdx.x) * L * a.hd;
    for (int64_t g = blockIdx.y; g < a.G; g += gridDim.y) {
        int64_t s0 = grp_start(a.q_off, a.nq, g), pairs = grp_count(a.q_off, a.nq, g) * a.H;
        for (int64_t p0 = (int64_t)blockIdx.x * ts; p0 < pairs; p0 += (int64_t)gridDim.x * ts) {
            __syncthreads(); /* the previous tile's readers are done */
            for (int i = threadIdx.x; i < ts * L; i += blockDim.x) A[i] = 0.f;
            for (int i = threadIdx.x; i < ts * a.hd; i += blockDim.x) Q[i] = 0.f;
            __syncthreads();
            /* stage: pair p0 + s is (row t, head h) */
            for (int i = threadIdx.x; i < ts * (a.lh + a.lw + a.hd); i += blockDim.x) {
                int s = i / (a.lh + a.lw + a.hd), j = i % (a.lh + a.lw + a.hd);
                int64_t p = p0 + s;
                if (p >= pairs) continue;
                int64_t r = q_row_id(a, s0, p / a.H);
                int h = (int)(p % a.H);
                if (r < 0 || r >= a.n_q) continue;
                if (j < a.hd) {
                    Q[s * a.hd + j] = q[r * a.ldq + (int64_t)h * a.hd + j];
                } else {
                    int slot = j - a.hd, t = table_row(a, a.q_row[r], a.q_col[r], slot);
                    if (t >= 0) A[s * L + (slot < a.lh ? 0 : a.len_h) + t] = dqf[(r * a.H + h) * a.dqk + a.hd + slot];
                }
            }
            __syncthreads();
            for (int64_t o = threadIdx.x; o < (int64_t)L * a.hd; o += blockDim.x) {
                int t = (int)(o / a.hd), c = (int)(o % a.hd);
                float x = 0.f;
                for (int s = 0; s < ts; s++) x = fmaf(A[s * L + t], Q[s * a.hd + c], x);
                part[o] += x;
            }
        }
    }
}

__global__ static void __launch_bounds__(NT) drel_sum_k(float *drel_h, float *drel_w, const float *slabs, int n_slabs,
                                                        int64_t len_h, int64_t len_w, int hd)
{
    int64_t n = (len_h + len_w) * hd;
    MS_GRID_STRIDE(o, n) {
        float x = 0.f;
        for (int k = 0; k < n_slabs; k++) x += slabs[(int64_t)k * n + o];
        if (o < len_h * hd) {
            if (drel_h) drel_h[o] += x;
        } else if (drel_w) {
            drel_w[o - len_h * hd] += x;
        }
    }
}

/* Grid for elementwise work over G groups of `per_group` elements (< 0: unknown, offsets on the device). */
static dim3 group_grid(int64_t G, int64_t per_group)
{
    int64_t gy = G < 65535 ? G : 65535, gx = (TARGET_BLOCKS + gy - 1) / (gy > 0 ? gy : 1);
    if (per_group >= 0 && gx > (per_group + NT - 1) / NT) gx = (per_group + NT - 1) / NT;
    if (gx < 1) gx = 1;
    if (gx > 1024) gx = 1024;
    return dim3((unsigned)gx, (unsigned)(gy > 0 ? gy : 1));
}

static ms_status check(const ms_attention_desc *d, const ms_attention_fold *f, const char *what)
{
    MS_FAIL_IF(!d || !f || !d->rel_h || !d->rel_w || !d->q_row || !d->q_col || !d->k_row || !d->k_col, MS_EINVAL,
               "%s: the descriptor has no relative positions", what);
    MS_FAIL_IF(f->n_heads != d->n_heads || f->head_dim != d->head_dim || f->lh != (int)((d->len_h + 1) / 2) ||
                   f->lw != (int)((d->len_w + 1) / 2),
               MS_EINVAL, "%s: the fold was planned for another descriptor", what);
    MS_FAIL_IF(d->n_groups >= 0x7f7f7f7f, MS_EUNSUPPORTED, "%s: %lld groups", what, (long long)d->n_groups);
    return MS_OK;
}

ms_status ms_attention_fold_forward_cuda(ms_device *dev, float *qf, float *kf, const float *q, const float *k,
                                         const ms_attention_desc *d, const ms_attention_fold *f)
{
    MS_CU_CTX(dev);
    MS_TRY(check(d, f, "attention fold"));
    if (d->n_groups <= 0) return MS_OK;
    cudaStream_t st = ms_cuda_ctx_of(dev)->stream;
    fold_args a = args_of(d, f);
    int64_t per = (int64_t)f->n_heads * f->dqk;
    fold_q_k<<<group_grid(d->n_groups, d->q_off ? -1 : d->nq * per), NT, 0, st>>>(qf, q, a);
    MS_CU_LAUNCHED();
    fold_k_k<<<group_grid(d->n_groups, d->k_off ? -1 : d->nk * per), NT, 0, st>>>(kf, k, a);
    MS_CU_LAUNCHED();
    return MS_OK;
}

/* drel_h / drel_w += the relative-position gradients (slabs, then their ordered sum). */
static ms_status unfold_drel(ms_device *dev, float *drel_h, float *drel_w, const float *dqf, const float *q,
                             const ms_attention_desc *d, const fold_args &a)
{
    cudaStream_t st = ms_cuda_ctx_of(dev)->stream;
    int64_t L = d->len_h + d->len_w, row_bytes = (L + a.hd) * (int64_t)sizeof(float);
    MS_FAIL_IF(row_bytes > SMEM_MAX, MS_EUNSUPPORTED,
               "attention fold backward: tables of %lld rows with head_dim %d exceed the shared-memory tile",
               (long long)L, a.hd);
    int ts = (int)(SMEM_MAX / row_bytes);
    if (ts > TS_MAX) ts = TS_MAX;
    int64_t gy = d->n_groups < 128 ? d->n_groups : 128, gx = (SLABS + gy - 1) / gy;
    if (!d->q_off && gx > (d->nq * a.H + ts - 1) / ts) gx = (d->nq * a.H + ts - 1) / ts;
    if (gx < 1) gx = 1;
    int n_slabs = (int)(gx * gy);
    size_t bytes = (size_t)n_slabs * (size_t)(L * a.hd) * sizeof(float);
    void *slabs = NULL;
    MS_CU(cudaMallocAsync(&slabs, bytes, st));
    ms_status rc = MS_OK;
    MS_CU_GOTO(cudaMemsetAsync(slabs, 0, bytes, st), rc, leave);
    drel_part_k<<<dim3((unsigned)gx, (unsigned)gy), NT, (size_t)ts * (size_t)row_bytes, st>>>((float *)slabs, dqf, q,
                                                                                              a, ts);
    MS_CU_GOTO(cudaGetLastError(), rc, leave);
    drel_sum_k<<<ms_cu_blocks(L * a.hd, NT), NT, 0, st>>>(drel_h, drel_w, (const float *)slabs, n_slabs, d->len_h,
                                                          d->len_w, a.hd);
    MS_CU_GOTO(cudaGetLastError(), rc, leave);
leave:
    if (cudaFreeAsync(slabs, st) != cudaSuccess && !rc)
        rc = ms_error(MS_EDEVICE, "attention fold backward: cudaFreeAsync failed");
    return rc;
}

/* dk += dk'[:head_dim], once per key row (owners when groups may share key rows). */
static ms_status unfold_dk(ms_device *dev, float *dk, const float *dkf, const ms_attention_desc *d, const fold_args &a)
{
    cudaStream_t st = ms_cuda_ctx_of(dev)->stream;
    int64_t per = (int64_t)a.H * a.hd;
    dim3 grid = group_grid(d->n_groups, d->k_off ? -1 : d->nk * per);
    if (!d->k_idx) { /* disjoint key ranges: every listed row is in one group */
        unfold_dk_k<<<grid, NT, 0, st>>>(dk, dkf, NULL, a);
        MS_CU_LAUNCHED();
        return MS_OK;
    }
    void *owner = NULL;
    size_t bytes = (size_t)(a.n_k > 0 ? a.n_k : 1) * sizeof(int32_t);
    MS_CU(cudaMallocAsync(&owner, bytes, st));
    ms_status rc = MS_OK;
    MS_CU_GOTO(cudaMemsetAsync(owner, 0x7f, bytes, st), rc, leave);
    key_owner_k<<<group_grid(d->n_groups, d->k_off ? -1 : d->nk), NT, 0, st>>>((int32_t *)owner, a);
    MS_CU_GOTO(cudaGetLastError(), rc, leave);
    unfold_dk_k<<<grid, NT, 0, st>>>(dk, dkf, (const int32_t *)owner, a);
    MS_CU_GOTO(cudaGetLastError(), rc, leave);
leave:
    if (cudaFreeAsync(owner, st) != cudaSuccess && !rc)
        rc = ms_error(MS_EDEVICE, "attention fold backward: cudaFreeAsync failed");
    return rc;
}

ms_status ms_attention_fold_backward_cuda(ms_device *dev, float *dq, float *dk, float *drel_h, float *drel_w,
                                          const float *dqf, const float *dkf, const float *q,
                                          const ms_attention_desc *d, const ms_attention_fold *f)
{
    MS_CU_CTX(dev);
    MS_TRY(check(d, f, "attention fold backward"));
    if (!dqf) dq = drel_h = drel_w = NULL;
    if (!dkf) dk = NULL;
    if (d->n_groups <= 0 || (!dq && !dk && !drel_h && !drel_w)) return MS_OK;
    cudaStream_t st = ms_cuda_ctx_of(dev)->stream;
    fold_args a = args_of(d, f);
    if (dq) {
        int64_t per = (int64_t)f->n_heads * f->head_dim;
        unfold_dq_k<<<group_grid(d->n_groups, d->q_off ? -1 : d->nq * per), NT, 0, st>>>(dq, dqf, a);
        MS_CU_LAUNCHED();
    }
    if (dk) MS_TRY(unfold_dk(dev, dk, dkf, d, a));
    if (drel_h || drel_w) MS_TRY(unfold_drel(dev, drel_h, drel_w, dqf, q, d, a));
    return MS_OK;
}
