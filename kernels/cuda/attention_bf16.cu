/* kernels/cuda/attention_bf16.cu — grouped attention on tensor cores (bf16 inputs, fp32 accumulation), the path of
 * ms_attention_{forward,backward}_cuda when dev->precision is MS_PREC_BF16 (contract: kernels/attention.h).
 * NOT YET RUN ON A GPU: it compiles warning-free for sm_90, nothing more is known (docs/PERFORMANCE-gpu-notes.md).
 *
 * Relative positions are folded into plain attention first (kernels/attention_fold.h): q' = [scale·q | rel | 0],
 * k' = [k | onehot | 0] in a workspace (ms_attention_fold_forward_cuda), the kernels run with scale 1 over (q', k',
 * v), and ms_attention_fold_backward_cuda turns dq', dk' into dq, dk, drel_h, drel_w. Without them the kernels
 * read q, k, v as they are (the descriptor's scale).
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
 * What is bf16: the staged tiles of q', k', v, dO and the P / dS operands of the second products. Everything
 * else (scores, softmax statistics, D, accumulators, the outputs in global memory) is fp32.
 * Widths: q'/k' up to 256 columns per head, v up to 128 (any width: tiles are zero-padded to multiples of 16 in
 * shared memory); wider folds run the fp32 kernels (*done = 0). Tail keys of a tile get P = 0 (−inf scores), tail
 * queries are zero rows that are never written.
 * Determinism: no float atomics except dk/dv with k_idx (key rows may be shared between groups: the same spot as
 * the fp32 kernels, kernels/cuda/attention.cu); every other sum has a fixed order.
 * Grid: (tiles of the largest group, groups ≤ 65535 a launch, heads); q_off / k_off are copied to the host to
 * size it (a synchronising copy, as in the fp32 path), and with relative positions q_idx / k_idx too (the fold's
 * row counts).
 */
#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention_bf16.h"

#define LOG2E 1.4426950408889634f
#define TQ 64        /* queries per tile (4 warps × 16) */
#define TK 64        /* keys per tile */
#define NTH 128      /* threads per block */
#define MAX_DQK 256  /* widest q'/k' per head */
#define MAX_DV 128   /* widest v per head (attention.h allows no more) */
#define MAX_GRID_Y 65535
static_assert(TQ == 64 && TK == 64, "the fragment code assumes 64-row tiles (8 column tiles, 4 k-steps)");

typedef __nv_bfloat16 bf16;

struct fa_args {
    const float *q, *k, *v, *o, *dout, *lse_in, *Dsum;
    float *out, *lse, *dq, *dk, *dv, *Dw;
    const int32_t *q_off, *q_idx, *k_off, *k_idx;
    int64_t nq, nk, ldq, ldk, ldv, ldo;
    int64_t g0;    /* first group of this launch */
    int64_t slot0; /* first query slot (index into Dsum) */
    int H, wqk, wv;  /* widths per head of q/k and of v */
    int wqkp, wvp;   /* the same rounded up to 16 */
    float scale;
    int k_atomic;
};

/* ---- tensor-core and fragment helpers --------------------------------------------------------------------------
 * m16n8k16 fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16"), lane = 4·g + t:
 *   A (16×16): r0 = A[g][2t..2t+1], r1 = A[g+8][2t..], r2 = A[g][2t+8..], r3 = A[g+8][2t+8..]
 *   B (16×8):  r0 = B[2t..2t+1][g], r1 = B[2t+8..2t+9][g]
 *   C (16×8):  c0, c1 = C[g][2t..2t+1], c2, c3 = C[g+8][2t..2t+1]
 * so the C fragments of two adjacent 8-column tiles are, packed to bf16, the A fragment of the next product. */
__device__ static __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
/* Two consecutive bf16 of a row (the lower index in the low half). */
__device__ static __forceinline__ uint32_t ld_pair(const bf16 *p) { return *(const uint32_t *)p; }
/* M[r][c] and M[r+1][c] of a row-major bf16 tile: a pair down a column. */
__device__ static __forceinline__ uint32_t ld_pair_col(const bf16 *m, int ld, int r, int c)
{
    const unsigned short *u = (const unsigned short *)m;
    return (uint32_t)u[r * ld + c] | ((uint32_t)u[(r + 1) * ld + c] << 16);
}
__device__ static __forceinline__ uint32_t pack_bf16(float lo, float hi)
{
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(const uint32_t *)&v;
}

/* Row rows[i] (−1: a zero row) of a fp32 matrix, columns col0 .. col0+w, into dst[i·ld + c] as bf16 for c < wp
 * (zero for c ≥ w); transposed: dst[c·ld + i]. */
__device__ static void stage_rows(bf16 *dst, int ld, const float *src, int64_t lds, int64_t col0, const int64_t *rows,
                                  int n, int w, int wp, bool transposed)
{
    for (int idx = threadIdx.x; idx < n * wp; idx += NTH) {
        const int i = idx / wp, c = idx - i * wp;
        const int64_t r = rows[i];
        const float x = (r >= 0 && c < w) ? src[r * lds + col0 + c] : 0.f;
        dst[transposed ? c * ld + i : i * ld + c] = __float2bfloat16_rn(x);
    }
}

/* Warp w's 16 rows of acc (fp32, row stride lda) += X · M, where X (16 × 64) is given by its C fragments x (the
 * fp32 results of an earlier product, rounded to bf16 here) and M (64 × ncols) is a row-major bf16 tile (row stride
 * ldm, ncols a multiple of 16). Each acc element belongs to one lane: no synchronisation needed. */
__device__ static __forceinline__ void acc_product(float *acc, int lda, const float (&x)[8][4], const bf16 *M, int ldm,
                                                   int ncols, int w, int g, int t)
{
    uint32_t af[4][4];
#pragma unroll
    for (int ks = 0; ks < 4; ks++) {
        af[ks][0] = pack_bf16(x[2 * ks][0], x[2 * ks][1]);
        af[ks][1] = pack_bf16(x[2 * ks][2], x[2 * ks][3]);
        af[ks][2] = pack_bf16(x[2 * ks + 1][0], x[2 * ks + 1][1]);
        af[ks][3] = pack_bf16(x[2 * ks + 1][2], x[2 * ks + 1][3]);
    }
    for (int n0 = 0; n0 < ncols; n0 += 8) {
        float r[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int ks = 0; ks < 4; ks++)
            mma_bf16(r, af[ks][0], af[ks][1], af[ks][2], af[ks][3], ld_pair_col(M, ldm, ks * 16 + 2 * t, n0 + g),
                     ld_pair_col(M, ldm, ks * 16 + 8 + 2 * t, n0 + g));
        float2 *p0 = (float2 *)(acc + (w * 16 + g) * lda + n0 + 2 * t);
        float2 *p1 = (float2 *)(acc + (w * 16 + g + 8) * lda + n0 + 2 * t);
        float2 v0 = *p0, v1 = *p1;
        v0.x += r[0];
        v0.y += r[1];
        v1.x += r[2];
        v1.y += r[3];
        *p0 = v0;
        *p1 = v1;
    }
}

/* c[nt] (16 × 64, 8 column tiles) = A · Bᵀ over `depth` columns (a multiple of 16): A rows are warp w's 16 rows
 * of the row-major tile A (stride lda), Bᵀ's columns the 64 rows of the row-major tile B (stride ldb). */
__device__ static __forceinline__ void product_abt(float (&c)[8][4], const bf16 *A, int lda, const bf16 *B, int ldb,
                                                   int depth, int w, int g, int t)
{
#pragma unroll
    for (int nt = 0; nt < 8; nt++) c[nt][0] = c[nt][1] = c[nt][2] = c[nt][3] = 0.f;
    const bf16 *ar = A + (w * 16 + g) * lda + 2 * t;
    for (int kk = 0; kk < depth; kk += 16) {
        const uint32_t a0 = ld_pair(ar + kk), a1 = ld_pair(ar + 8 * lda + kk), a2 = ld_pair(ar + kk + 8),
                       a3 = ld_pair(ar + 8 * lda + kk + 8);
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            const bf16 *br = B + (nt * 8 + g) * ldb + kk + 2 * t;
            mma_bf16(c[nt], a0, a1, a2, a3, ld_pair(br), ld_pair(br + 8));
        }
    }
}

/* ---- forward ----------------------------------------------------------------------------------------------------
 * Shared: qrow[TQ], krow[TK] (int64 row ids, −1 outside the group), Q'[TQ][dqkp+8], K'[TK][dqkp+8] and Vᵀ[dvp][TK+8]
 * (bf16; the +8 keeps the fragment loads free of bank conflicts). DVT: the largest v width of the instance. */
static size_t smem_fwd(int dqkp, int dvp)
{
    return (size_t)(TQ + TK) * 8 + ((size_t)(TQ + TK) * (dqkp + 8) + (size_t)dvp * (TK + 8)) * sizeof(bf16);
}

template <int DVT>
__global__ static void __launch_bounds__(NTH) fa_fwd(fa_args a)
{
    extern __shared__ __align__(16) unsigned char fa_sm[];
    const int sq = a.wqkp + 8, sv = TK + 8, tid = threadIdx.x, w = tid >> 5, g = (tid & 31) >> 2, t = tid & 3;
    int64_t *qrow = (int64_t *)fa_sm, *krow = qrow + TQ;
    bf16 *Qs = (bf16 *)(krow + TK), *Ks = Qs + TQ * sq, *Vt = Ks + TK * sq;
    const int64_t grp = a.g0 + blockIdx.y, nq = q_cnt(a, grp), nk = k_cnt(a, grp), i0 = (int64_t)blockIdx.x * TQ;
    const int h = blockIdx.z;
    if (i0 >= nq) return; /* uniform over the block */
    const int64_t qb = q_base(a, grp), kb = k_base(a, grp);
    for (int i = tid; i < TQ; i += NTH) qrow[i] = i0 + i < nq ? q_rowid(a, qb + i0 + i) : -1;
    __syncthreads();
    stage_rows(Qs, sq, a.q, a.ldq, (int64_t)h * a.wqk, qrow, TQ, a.wqk, a.wqkp, false);
    float o[DVT / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < DVT / 8; nt++) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;
    const float sl2 = a.scale * LOG2E;
    for (int64_t k0 = 0; k0 < nk; k0 += TK) {
        const int nkt = (int)(nk - k0 < TK ? nk - k0 : TK);
        __syncthreads(); /* the previous tile is consumed */
        for (int j = tid; j < TK; j += NTH) krow[j] = j < nkt ? k_rowid(a, kb + k0 + j) : -1;
        __syncthreads();
        stage_rows(Ks, sq, a.k, a.ldk, (int64_t)h * a.wqk, krow, TK, a.wqk, a.wqkp, false);
        stage_rows(Vt, sv, a.v, a.ldv, (int64_t)h * a.wv, krow, TK, a.wv, a.wvp, true);
        __syncthreads();
        float s[8][4];
        product_abt(s, Qs, sq, Ks, sq, a.wqkp, w, g, t);
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float x = nt * 8 + 2 * t + (e & 1) < nkt ? s[nt][e] * sl2 : -INFINITY;
                s[nt][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        float corr[2], rs[2] = {0.f, 0.f};
#pragma unroll
        for (int r = 0; r < 2; r++) { /* the 4 lanes of a row group hold its 64 scores */
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            const float mn = fmaxf(m[r], mx[r]); /* finite: the tile has a key */
            corr[r] = exp2f(m[r] - mn);
            m[r] = mn;
        }
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float p = exp2f(s[nt][e] - m[e >> 1]);
                s[nt][e] = p;
                rs[e >> 1] += p;
            }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 1);
            rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 2);
            l[r] = l[r] * corr[r] + rs[r];
        }
#pragma unroll
        for (int nt = 0; nt < DVT / 8; nt++) {
            o[nt][0] *= corr[0];
            o[nt][1] *= corr[0];
            o[nt][2] *= corr[1];
            o[nt][3] *= corr[1];
        }
#pragma unroll
        for (int ks = 0; ks < TK / 16; ks++) {
            const uint32_t a0 = pack_bf16(s[2 * ks][0], s[2 * ks][1]), a1 = pack_bf16(s[2 * ks][2], s[2 * ks][3]),
                           a2 = pack_bf16(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                           a3 = pack_bf16(s[2 * ks + 1][2], s[2 * ks + 1][3]);
#pragma unroll
            for (int nt = 0; nt < DVT / 8; nt++)
                if (nt * 8 < a.wvp) {
                    const bf16 *vp = Vt + (nt * 8 + g) * sv + ks * 16 + 2 * t;
                    mma_bf16(o[nt], a0, a1, a2, a3, ld_pair(vp), ld_pair(vp + 8));
                }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int64_t row = qrow[w * 16 + g + 8 * r];
        if (row < 0) continue;
        const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
        float *op = a.out + row * a.ldo + (int64_t)h * a.wv;
#pragma unroll
        for (int nt = 0; nt < DVT / 8; nt++) {
            const int c = nt * 8 + 2 * t;
            if (c < a.wv) op[c] = o[nt][2 * r] * inv;
            if (c + 1 < a.wv) op[c + 1] = o[nt][2 * r + 1] * inv;
        }
        if (a.lse && t == 0) a.lse[row * a.H + h] = l[r] > 0.f ? (m[r] + log2f(l[r])) / LOG2E : -INFINITY;
    }
}

/* ---- backward ---------------------------------------------------------------------------------------------------- */
/* D[(s − slot0)·H + h] = Σ_c dO[row(s), h, c]·O[row(s), h, c]: one warp per (query slot, head). */
__global__ static void fa_bwd_dot(fa_args a, int64_t n_slots)
{
    const int lane = threadIdx.x & 31;
    const int64_t n = n_slots * a.H, stride = (int64_t)gridDim.x * (blockDim.x >> 5);
    for (int64_t wi = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; wi < n; wi += stride) {
        const int64_t s = a.slot0 + wi / a.H, row = q_rowid(a, s);
        const int h = (int)(wi % a.H);
        const float *po = a.o + row * a.ldo + (int64_t)h * a.wv, *pd = a.dout + row * a.ldo + (int64_t)h * a.wv;
        float acc = 0.f;
        for (int c = lane; c < a.wv; c += 32) acc += po[c] * pd[c];
        acc = ms_warp_sum(acc);
        if (lane == 0) a.Dw[wi] = acc;
    }
}

/* Shared: dK'[TK][dqkp+8], dV[TK][dvp+8] (fp32 accumulators), lse2[TQ], D[TQ], qrow[TQ], krow[TK], then bf16
 * K'[TK][dqkp+8], V[TK][dvp+8], Q'[TQ][dqkp+8], dO[TQ][dvp+8]. */
static size_t smem_bwd_kv(int dqkp, int dvp)
{
    return (size_t)TK * (dqkp + dvp + 16) * sizeof(float) + (size_t)2 * TQ * sizeof(float) + (size_t)(TQ + TK) * 8 +
           (size_t)(TK + TQ) * (dqkp + dvp + 16) * sizeof(bf16);
}

/* Add warp w's 16 rows of acc (rows of the tile, global row ids rows[]) times f into dst (+= or atomics). */
__device__ static void flush_rows(float *dst, int64_t ld, int64_t col0, const float *acc, int lda, const int64_t *rows,
                                  int width, float f, int atomic, int w)
{
    const int lane = threadIdx.x & 31;
    for (int rr = 0; rr < 16; rr++) {
        const int64_t row = rows[w * 16 + rr];
        if (row < 0) continue;
        float *o = dst + row * ld + col0;
        const float *x = acc + (w * 16 + rr) * lda;
        for (int c = lane; c < width; c += 32) {
            if (atomic)
                atomicAdd(o + c, f * x[c]);
            else
                o[c] += f * x[c];
        }
    }
}

__global__ static void __launch_bounds__(NTH) fa_bwd_kv(fa_args a)
{
    extern __shared__ __align__(16) unsigned char fa_sm[];
    const int sq = a.wqkp + 8, sv = a.wvp + 8, tid = threadIdx.x, w = tid >> 5, g = (tid & 31) >> 2, t = tid & 3;
    float *dKa = (float *)fa_sm, *dVa = dKa + TK * sq, *lse2 = dVa + TK * sv, *Ds = lse2 + TQ;
    int64_t *qrow = (int64_t *)(Ds + TQ), *krow = qrow + TQ;
    bf16 *Ks = (bf16 *)(krow + TK), *Vs = Ks + TK * sq, *Qs = Vs + TK * sv, *dOs = Qs + TQ * sq;
    const int64_t grp = a.g0 + blockIdx.y, nq = q_cnt(a, grp), nk = k_cnt(a, grp), j0 = (int64_t)blockIdx.x * TK;
    const int h = blockIdx.z;
    if (j0 >= nk) return; /* uniform over the block */
    const int64_t qb = q_base(a, grp), kb = k_base(a, grp);
    const int nkt = (int)(nk - j0 < TK ? nk - j0 : TK);
    for (int j = tid; j < TK; j += NTH) krow[j] = j < nkt ? k_rowid(a, kb + j0 + j) : -1;
    for (int idx = tid; idx < TK * (sq + sv); idx += NTH) dKa[idx] = 0.f; /* dKa and dVa */
    __syncthreads();
    stage_rows(Ks, sq, a.k, a.ldk, (int64_t)h * a.wqk, krow, TK, a.wqk, a.wqkp, false);
    stage_rows(Vs, sv, a.v, a.ldv, (int64_t)h * a.wv, krow, TK, a.wv, a.wvp, false);
    const float sl2 = a.scale * LOG2E;
    const bool kv0 = w * 16 + g < nkt, kv1 = w * 16 + g + 8 < nkt; /* this lane's two key rows */
    for (int64_t i0 = 0; i0 < nq; i0 += TQ) {
        const int nqt = (int)(nq - i0 < TQ ? nq - i0 : TQ);
        __syncthreads(); /* the previous query tile is consumed */
        for (int i = tid; i < TQ; i += NTH) {
            int64_t r = -1;
            float l2 = INFINITY, D = 0.f; /* outside the group: P = exp2(−inf) = 0 */
            if (i < nqt) {
                const int64_t s = qb + i0 + i;
                r = q_rowid(a, s);
                l2 = a.lse_in[r * a.H + h] * LOG2E;
                D = a.Dsum[(s - a.slot0) * a.H + h];
            }
            qrow[i] = r;
            lse2[i] = l2;
            Ds[i] = D;
        }
        __syncthreads();
        stage_rows(Qs, sq, a.q, a.ldq, (int64_t)h * a.wqk, qrow, TQ, a.wqk, a.wqkp, false);
        stage_rows(dOs, sv, a.dout, a.ldo, (int64_t)h * a.wv, qrow, TQ, a.wv, a.wvp, false);
        __syncthreads();
        float pt[8][4], dpt[8][4]; /* Pᵀ, then dSᵀ: this warp's 16 keys × the tile's 64 queries */
        product_abt(pt, Ks, sq, Qs, sq, a.wqkp, w, g, t);
        product_abt(dpt, Vs, sv, dOs, sv, a.wvp, w, g, t);
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int qc = nt * 8 + 2 * t + (e & 1);
                const float p = (e < 2 ? kv0 : kv1) ? exp2f(pt[nt][e] * sl2 - lse2[qc]) : 0.f;
                pt[nt][e] = p;
                dpt[nt][e] = p * (dpt[nt][e] - Ds[qc]);
            }
        if (a.dv) acc_product(dVa, sv, pt, dOs, sv, a.wvp, w, g, t);
        if (a.dk) acc_product(dKa, sq, dpt, Qs, sq, a.wqkp, w, g, t);
    }
    __syncwarp(); /* a warp flushes the rows its own lanes accumulated */
    if (a.dk) flush_rows(a.dk, a.ldk, (int64_t)h * a.wqk, dKa, sq, krow, a.wqk, a.scale, a.k_atomic, w);
    if (a.dv) flush_rows(a.dv, a.ldv, (int64_t)h * a.wv, dVa, sv, krow, a.wv, 1.f, a.k_atomic, w);
}

/* Shared: dQ'[TQ][dqkp+8] (fp32), qrow[TQ], krow[TK], then bf16 Q'[TQ][dqkp+8], dO[TQ][dvp+8], K'[TK][dqkp+8],
 * V[TK][dvp+8]. */
static size_t smem_bwd_q(int dqkp, int dvp)
{
    return (size_t)TQ * (dqkp + 8) * sizeof(float) + (size_t)(TQ + TK) * 8 +
           (size_t)(TQ + TK) * (dqkp + dvp + 16) * sizeof(bf16);
}

__global__ static void __launch_bounds__(NTH) fa_bwd_q(fa_args a)
{
    extern __shared__ __align__(16) unsigned char fa_sm[];
    const int sq = a.wqkp + 8, sv = a.wvp + 8, tid = threadIdx.x, w = tid >> 5, g = (tid & 31) >> 2, t = tid & 3;
    float *dQa = (float *)fa_sm;
    int64_t *qrow = (int64_t *)(dQa + TQ * sq), *krow = qrow + TQ;
    bf16 *Qs = (bf16 *)(krow + TK), *dOs = Qs + TQ * sq, *Ks = dOs + TQ * sv, *Vs = Ks + TK * sq;
    const int64_t grp = a.g0 + blockIdx.y, nq = q_cnt(a, grp), nk = k_cnt(a, grp), i0 = (int64_t)blockIdx.x * TQ;
    const int h = blockIdx.z;
    if (i0 >= nq) return; /* uniform over the block */
    const int64_t qb = q_base(a, grp), kb = k_base(a, grp);
    for (int i = tid; i < TQ; i += NTH) qrow[i] = i0 + i < nq ? q_rowid(a, qb + i0 + i) : -1;
    for (int idx = tid; idx < TQ * sq; idx += NTH) dQa[idx] = 0.f;
    __syncthreads();
    stage_rows(Qs, sq, a.q, a.ldq, (int64_t)h * a.wqk, qrow, TQ, a.wqk, a.wqkp, false);
    stage_rows(dOs, sv, a.dout, a.ldo, (int64_t)h * a.wv, qrow, TQ, a.wv, a.wvp, false);
    float lse2[2], Dr[2]; /* this lane's two query rows */
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int i = w * 16 + g + 8 * r;
        const bool in = i0 + i < nq;
        const int64_t row = in ? q_rowid(a, qb + i0 + i) : 0;
        lse2[r] = in ? a.lse_in[row * a.H + h] * LOG2E : INFINITY;
        Dr[r] = in ? a.Dsum[(qb + i0 + i - a.slot0) * a.H + h] : 0.f;
    }
    const float sl2 = a.scale * LOG2E;
    for (int64_t k0 = 0; k0 < nk; k0 += TK) {
        const int nkt = (int)(nk - k0 < TK ? nk - k0 : TK);
        __syncthreads(); /* the previous key tile is consumed */
        for (int j = tid; j < TK; j += NTH) krow[j] = j < nkt ? k_rowid(a, kb + k0 + j) : -1;
        __syncthreads();
        stage_rows(Ks, sq, a.k, a.ldk, (int64_t)h * a.wqk, krow, TK, a.wqk, a.wqkp, false);
        stage_rows(Vs, sv, a.v, a.ldv, (int64_t)h * a.wv, krow, TK, a.wv, a.wvp, false);
        __syncthreads();
        float s[8][4], dp[8][4]; /* this warp's 16 queries × the tile's 64 keys */
        product_abt(s, Qs, sq, Ks, sq, a.wqkp, w, g, t);
        product_abt(dp, dOs, sv, Vs, sv, a.wvp, w, g, t);
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e >> 1;
                const float p = nt * 8 + 2 * t + (e & 1) < nkt ? exp2f(s[nt][e] * sl2 - lse2[r]) : 0.f;
                s[nt][e] = p * (dp[nt][e] - Dr[r]); /* dS */
            }
        acc_product(dQa, sq, s, Ks, sq, a.wqkp, w, g, t);
    }
    __syncwarp();
    flush_rows(a.dq, a.ldq, (int64_t)h * a.wqk, dQa, sq, qrow, a.wqk, a.scale, 0, w);
}

/* ---- host side ----------------------------------------------------------------------------------------------------- */
static int pad16(int x) { return (x + 15) & ~15; }

/* What the kernels run over: the descriptor itself, or the fold's plain one over (q', k', v). */
typedef struct fa_setup {
    ms_attn_plan p;
    int fold;
    ms_attention_fold f;
    ms_attention_desc pd;
    int64_t slot0, n_slots; /* query slots of all groups */
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

static size_t floats_up(int64_t n) { return ((size_t)n + 63) & ~(size_t)63; } /* keeps 256-byte alignment */

ms_status ms_attn_bf16_forward(ms_device *dev, float *out, float *lse, const float *q, const float *k,
                               const float *v, const ms_attention_desc *d, int *done)
{
    const char *what = "attention_forward (bf16)";
    fa_setup s;
    fa_args a;
    int fits = 0;
    *done = 0;
    ms_status rc = fa_prepare(dev, d, &s, &fits, what);
    if (rc || !fits) goto leave;
    fa_fill(&a, &s.pd, &s);
    a.q = q;
    a.k = k;
    a.v = v;
    a.out = out;
    a.lse = lse;
    if (s.fold) { /* q', k' in the workspace */
        const size_t nqf = floats_up(s.f.n_q * s.f.n_heads * s.f.dqk), nkf = floats_up(s.f.n_k * s.f.n_heads * s.f.dqk);
        void *ws;
        rc = ms_cuda_attn_workspace(dev, (nqf + nkf) * sizeof(float), &ws);
        if (rc) goto leave;
        float *qf = (float *)ws, *kf = qf + nqf;
        rc = ms_attention_fold_forward_cuda(dev, qf, kf, q, k, d, &s.f);
        if (rc) goto leave;
        a.q = qf;
        a.k = kf;
    }
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
    int fits = 0;
    size_t nqf = 0, nkf = 0;
    void *ws;
    *done = 0;
    ms_status rc = fa_prepare(dev, d, &s, &fits, what);
    if (rc || !fits) goto leave;
    fa_fill(&a, &s.pd, &s);
    a.q = q;
    a.k = k;
    a.v = v;
    a.o = out;
    a.dout = dout;
    a.lse_in = lse;
    a.dq = dq;
    a.dk = dk;
    a.dv = dv;
    /* workspace: [q' | k' | dq' | dk'] (with relative positions) [D (slots, heads)] */
    if (s.fold) {
        nqf = floats_up(s.f.n_q * s.f.n_heads * s.f.dqk);
        nkf = floats_up(s.f.n_k * s.f.n_heads * s.f.dqk);
    }
    rc = ms_cuda_attn_workspace(dev, (2 * (nqf + nkf) + floats_up(s.n_slots * a.H)) * sizeof(float), &ws);
    if (rc) goto leave;
    a.Dw = (float *)ws + 2 * (nqf + nkf);
    a.Dsum = a.Dw;
    if (s.fold) {
        float *qf = (float *)ws, *kf = qf + nqf, *dqf = kf + nkf, *dkf = dqf + nqf;
        rc = ms_attention_fold_forward_cuda(dev, qf, kf, q, k, d, &s.f);
        if (rc) goto leave;
        MS_CU_GOTO(cudaMemsetAsync(dqf, 0, (nqf + nkf) * sizeof(float), cx->stream), rc, leave);
        a.q = qf;
        a.k = kf;
        a.dq = dq || drel_h || drel_w ? dqf : NULL; /* the fold backward takes dq, drel from dq' */
        a.dk = dk ? dkf : NULL;
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
        float *dqf = (float *)ws + nqf + nkf, *dkf = dqf + nqf;
        rc = ms_attention_fold_backward_cuda(dev, dq, dk, drel_h, drel_w, dqf, dkf, q, d, &s.f);
        if (rc) goto leave;
    }
    *done = 1;
leave:
    ms_attn_plan_free(&s.p);
    return rc;
}
