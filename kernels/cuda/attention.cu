/* kernels/cuda/attention.cu — grouped scaled-dot-product attention with SAM's decomposed relative positions,
 * fp32, flash-style (contract: kernels/attention.h; the CPU twin is kernels/cpu/attention.c).
 *
 * Layout of the work: a block owns one (group, head, tile of BQ queries); each thread owns one query row and
 * keeps q and its output accumulator in registers (HD = head_dim rounded up to 16/32/64/128, a template
 * parameter, so the arrays stay in registers); keys and values stream through shared memory in tiles of BK
 * (read as broadcast float4). Softmax is online (running max and sum, in the exp2 domain); no N×N matrix exists.
 * Relative positions: R[slot, head, t] = q·rel_h[t] (t < len_h) and q·rel_w[t] come first from a small kernel
 * (scratch), then each block stages its queries' R rows in shared memory as [t][query] (conflict-free) and the
 * score adds R[q_row − k_row + (len_h−1)/2] + R[len_h + q_col − k_col + (len_w−1)/2]. Indices are clamped to
 * the tables on the device (the contract says they are inside; the CPU backend checks it).
 * Backward (P recomputed from lse):
 *   kernel A, per query: D = Σ dO⊙O, dS = P⊙(dP − D), dq += scale·dS·K + Σ_t dR[t]·rel[t], and dR[t] (per
 *     query, shared memory) = Σ_{j at offset t} dS; the block then adds dRᵀ·Q into its own partial table.
 *     A fixed grid of blocks walks the tiles (tile = blockIdx.x + k·gridDim.x), so the partial tables are
 *     summed in a fixed order afterwards: drel is deterministic.
 *   kernel B, per key: dv += Σ_i P·dO_i, dk += scale·Σ_i dS·q_i, looping over the group's queries in tiles.
 *     With k_idx (key rows may be shared between groups) dk/dv are added with float atomics — the one
 *     non-deterministic spot (last-bit order effects, only when several groups really share a key row).
 * Groups are processed in chunks so that R (slots·heads·(len_h+len_w) floats) stays under CHUNK_FLOATS.
 * q_off/k_off live in device memory: they are copied to the host (a synchronising copy) to size the grid.
 * With dev->precision == MS_PREC_BF16 both entry points hand the call to the tensor-core kernels first
 * (attention_bf16.cu); these fp32 kernels run only the shapes that path leaves (folded widths over 256).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention_bf16.h"

#define LOG2E 1.4426950408889634f
#define NEG_BIG (-1e30f)
#define CHUNK_FLOATS ((int64_t)64 << 20)
#define BQ 64      /* queries per block (forward, kernel A) */
#define BK 32      /* keys per shared tile (forward, kernel A) */
#define BKB 64     /* keys per block (kernel B) */
#define BQB 32     /* queries per shared tile (kernel B) */
#define NBLK_A 512 /* fixed grid of kernel A (drel partial tables) */
#define CH 8       /* keys per online-softmax step */

struct attn_args {
    const float *q, *k, *v, *out, *dout, *lse_in;
    float *o, *lse, *dq, *dk, *dv;
    const float *rel_h, *rel_w;
    const float *R;    /* (chunk slots, H, L) */
    float *Dsum;       /* (chunk slots, H) */
    float *part;       /* (NBLK_A, L, hd) */
    const int32_t *q_off, *q_idx, *k_off, *k_idx, *q_row, *q_col, *k_row, *k_col;
    int64_t nq, nk, ldq, ldk, ldv, ldo;
    int64_t g0, n_g;   /* groups of this chunk */
    int64_t slot0;     /* first query slot of the chunk */
    int H, hd, Lh, Lw, offh, offw, n_qt;
    float scale;
    int want_dq, want_drel, k_atomic;
};

__device__ static inline int clampi(int v, int n) { return v < 0 ? 0 : (v >= n ? n - 1 : v); }

/* R[(s − slot0)·H + h][t] = q_row(s)·table[t]; grid (slots of the chunk, H), 128 threads */
__global__ static void attn_rel_dots(attn_args a, int64_t n_slots)
{
    extern __shared__ float qs[];
    int64_t sl = blockIdx.x;
    int h = blockIdx.y, L = a.Lh + a.Lw;
    if (sl >= n_slots) return;
    int64_t row = q_rowid(a, a.slot0 + sl);
    for (int d = threadIdx.x; d < a.hd; d += blockDim.x) qs[d] = a.q[row * a.ldq + (int64_t)h * a.hd + d];
    __syncthreads();
    float *R = (float *)a.R + (sl * a.H + h) * L;
    for (int t = threadIdx.x; t < L; t += blockDim.x) {
        const float *tab = t < a.Lh ? a.rel_h + (int64_t)t * a.hd : a.rel_w + (int64_t)(t - a.Lh) * a.hd;
        float s = 0.f;
        for (int d = 0; d < a.hd; d++) s += qs[d] * tab[d];
        R[t] = s;
    }
}

/* Load keys/values k0 .. k0+nkt of group g, head h into Ks/Vs (BKx × HD, zero padded) and their rows/cols. */
template <int HD, int BKX, int NT>
__device__ static inline void load_kv(const attn_args &a, float *Ks, float *Vs, int *kr, int *kc, int64_t kb,
                                      int64_t k0, int nkt, int h)
{
    for (int idx = threadIdx.x; idx < BKX * HD; idx += NT) {
        int j = idx / HD, d = idx % HD;
        float kv = 0.f, vv = 0.f;
        if (j < nkt && d < a.hd) {
            int64_t r = k_rowid(a, kb + k0 + j);
            kv = a.k[r * a.ldk + (int64_t)h * a.hd + d];
            vv = a.v[r * a.ldv + (int64_t)h * a.hd + d];
        }
        Ks[idx] = kv;
        Vs[idx] = vv;
    }
    if (a.Lh)
        for (int j = threadIdx.x; j < nkt; j += NT) {
            int64_t r = k_rowid(a, kb + k0 + j);
            kr[j] = a.k_row[r];
            kc[j] = a.k_col[r];
        }
}

template <int HD>
__device__ static inline float dot4(const float *q, const float *row)
{
    const float4 *r4 = (const float4 *)row;
    float s = 0.f;
#pragma unroll
    for (int d4 = 0; d4 < HD / 4; d4++) {
        float4 kk = r4[d4];
        s += q[4 * d4] * kk.x + q[4 * d4 + 1] * kk.y + q[4 * d4 + 2] * kk.z + q[4 * d4 + 3] * kk.w;
    }
    return s;
}

/* ---- forward -------------------------------------------------------------------------------------------------- */
template <int HD>
__global__ static void __launch_bounds__(BQ) attn_fwd(attn_args a)
{
    extern __shared__ __align__(16) float sm[];
    float *Ks = sm, *Vs = Ks + BK * HD;
    int *kr = (int *)(Vs + BK * HD), *kc = kr + BK;
    float *Rs = (float *)(kc + BK);
    const int L = a.Lh + a.Lw, tid = threadIdx.x, h = blockIdx.z;
    const int64_t g = a.g0 + blockIdx.y, nq = q_cnt(a, g), nk = k_cnt(a, g);
    if ((int64_t)blockIdx.x * BQ >= nq) return; /* uniform over the block */
    const int64_t i = (int64_t)blockIdx.x * BQ + tid, s = q_base(a, g) + i;
    const bool valid = i < nq;
    const int64_t row = valid ? q_rowid(a, s) : 0;
    float q[HD], acc[HD];
#pragma unroll
    for (int d = 0; d < HD; d++) {
        q[d] = (valid && d < a.hd) ? a.q[row * a.ldq + (int64_t)h * a.hd + d] : 0.f;
        acc[d] = 0.f;
    }
    int qr = 0, qc = 0;
    if (L && valid) {
        qr = a.q_row[row];
        qc = a.q_col[row];
        const float *Rg = a.R + ((s - a.slot0) * a.H + h) * L;
        for (int t = 0; t < L; t++) Rs[t * BQ + tid] = Rg[t] * LOG2E;
    }
    const float sl2 = a.scale * LOG2E;
    float m = NEG_BIG, l = 0.f;
    const int64_t kb = k_base(a, g);
    for (int64_t k0 = 0; k0 < nk; k0 += BK) {
        const int nkt = (int)(nk - k0 < BK ? nk - k0 : BK);
        __syncthreads();
        load_kv<HD, BK, BQ>(a, Ks, Vs, kr, kc, kb, k0, nkt, h);
        __syncthreads();
        if (!valid) continue;
        for (int j0 = 0; j0 < nkt; j0 += CH) {
            float sc[CH];
            float cmax = NEG_BIG;
#pragma unroll
            for (int c = 0; c < CH; c++) {
                const int j = j0 + c;
                float sv = NEG_BIG;
                if (j < nkt) {
                    sv = dot4<HD>(q, Ks + j * HD) * sl2;
                    if (L)
                        sv += Rs[clampi(qr - kr[j] + a.offh, a.Lh) * BQ + tid] +
                              Rs[(a.Lh + clampi(qc - kc[j] + a.offw, a.Lw)) * BQ + tid];
                }
                sc[c] = sv;
                cmax = fmaxf(cmax, sv);
            }
            if (cmax > m) {
                const float f = exp2f(m - cmax);
                l *= f;
#pragma unroll
                for (int d = 0; d < HD; d++) acc[d] *= f;
                m = cmax;
            }
#pragma unroll
            for (int c = 0; c < CH; c++) {
                const int j = j0 + c;
                if (j >= nkt) break;
                const float p = exp2f(sc[c] - m);
                l += p;
                const float4 *v4 = (const float4 *)(Vs + j * HD);
#pragma unroll
                for (int d4 = 0; d4 < HD / 4; d4++) {
                    float4 vv = v4[d4];
                    acc[4 * d4] += p * vv.x;
                    acc[4 * d4 + 1] += p * vv.y;
                    acc[4 * d4 + 2] += p * vv.z;
                    acc[4 * d4 + 3] += p * vv.w;
                }
            }
        }
    }
    if (!valid) return;
    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int d = 0; d < HD; d++)
        if (d < a.hd) a.o[row * a.ldo + (int64_t)h * a.hd + d] = acc[d] * inv;
    if (a.lse) a.lse[row * a.H + h] = l > 0.f ? (m + log2f(l)) / LOG2E : -INFINITY;
}

/* ---- backward kernel A: dq, D, drel partials ----------------------------------------------------------------- */
template <int HD>
__global__ static void __launch_bounds__(BQ) attn_bwd_q(attn_args a, int64_t n_tiles)
{
    extern __shared__ __align__(16) float sm[];
    float *Ks = sm, *Vs = Ks + BK * HD;
    int *kr = (int *)(Vs + BK * HD), *kc = kr + BK;
    const int L = a.Lh + a.Lw, tid = threadIdx.x;
    float *Rs = (float *)(kc + BK), *dRs = Rs + L * BQ, *DOs = dRs + L * BQ; /* DOs: BQ × (HD+1) */
    for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
        const int qt = (int)(tile % a.n_qt);
        const int h = (int)((tile / a.n_qt) % a.H);
        const int64_t g = a.g0 + tile / ((int64_t)a.n_qt * a.H);
        const int64_t nq = q_cnt(a, g), nk = k_cnt(a, g);
        if ((int64_t)qt * BQ >= nq) continue; /* uniform over the block */
        __syncthreads();                      /* shared memory of the previous tile is free */
        const int64_t i = (int64_t)qt * BQ + tid, s = q_base(a, g) + i;
        const bool valid = i < nq;
        const int64_t row = valid ? q_rowid(a, s) : 0;
        float q[HD], dq[HD];
        float Di = 0.f, lse2 = 0.f;
#pragma unroll
        for (int d = 0; d < HD; d++) {
            const bool in = valid && d < a.hd;
            const int64_t o = row * a.ldo + (int64_t)h * a.hd + d;
            q[d] = in ? a.q[row * a.ldq + (int64_t)h * a.hd + d] : 0.f;
            const float g_ = in ? a.dout[o] : 0.f;
            DOs[tid * (HD + 1) + d] = g_;
            Di += in ? g_ * a.out[o] : 0.f;
            dq[d] = 0.f;
        }
        if (valid) {
            lse2 = a.lse_in[row * a.H + h] * LOG2E;
            a.Dsum[(s - a.slot0) * a.H + h] = Di;
        }
        int qr = 0, qc = 0;
        if (L) {
            if (valid) {
                qr = a.q_row[row];
                qc = a.q_col[row];
            }
            const float *Rg = a.R + ((s - a.slot0) * a.H + h) * L;
            for (int t = 0; t < L; t++) {
                Rs[t * BQ + tid] = valid ? Rg[t] : 0.f;
                dRs[t * BQ + tid] = 0.f;
            }
        }
        const int64_t kb = k_base(a, g);
        for (int64_t k0 = 0; k0 < nk; k0 += BK) {
            const int nkt = (int)(nk - k0 < BK ? nk - k0 : BK);
            __syncthreads();
            load_kv<HD, BK, BQ>(a, Ks, Vs, kr, kc, kb, k0, nkt, h);
            __syncthreads();
            if (!valid) continue;
            for (int j = 0; j < nkt; j++) {
                float sv = dot4<HD>(q, Ks + j * HD) * a.scale;
                int th = 0, tw = 0;
                if (L) {
                    th = clampi(qr - kr[j] + a.offh, a.Lh);
                    tw = a.Lh + clampi(qc - kc[j] + a.offw, a.Lw);
                    sv += Rs[th * BQ + tid] + Rs[tw * BQ + tid];
                }
                const float p = exp2f(sv * LOG2E - lse2);
                float dp = 0.f;
#pragma unroll
                for (int d = 0; d < HD; d++) dp += DOs[tid * (HD + 1) + d] * Vs[j * HD + d];
                const float ds = p * (dp - Di);
                const float dss = ds * a.scale;
                const float4 *k4 = (const float4 *)(Ks + j * HD);
#pragma unroll
                for (int d4 = 0; d4 < HD / 4; d4++) {
                    float4 kk = k4[d4];
                    dq[4 * d4] += dss * kk.x;
                    dq[4 * d4 + 1] += dss * kk.y;
                    dq[4 * d4 + 2] += dss * kk.z;
                    dq[4 * d4 + 3] += dss * kk.w;
                }
                if (L) {
                    dRs[th * BQ + tid] += ds;
                    dRs[tw * BQ + tid] += ds;
                }
            }
        }
        if (valid && a.want_dq) {
            for (int t = 0; t < L; t++) { /* the rel-pos path: dq += Σ_t dR[t]·table[t] */
                const float w = dRs[t * BQ + tid];
                const float *tab = t < a.Lh ? a.rel_h + (int64_t)t * a.hd : a.rel_w + (int64_t)(t - a.Lh) * a.hd;
#pragma unroll
                for (int d = 0; d < HD; d++)
                    if (d < a.hd) dq[d] += w * tab[d];
            }
            float *o = a.dq + row * a.ldq + (int64_t)h * a.hd;
#pragma unroll
            for (int d = 0; d < HD; d++)
                if (d < a.hd) o[d] += dq[d];
        }
        if (L && a.want_drel) {
            __syncthreads(); /* DOs becomes Q, read by all */
#pragma unroll
            for (int d = 0; d < HD; d++) DOs[tid * (HD + 1) + d] = q[d];
            __syncthreads();
            float *P = a.part + (int64_t)blockIdx.x * L * a.hd;
            for (int idx = tid; idx < L * a.hd; idx += BQ) {
                const int t = idx / a.hd, d = idx % a.hd;
                float acc = 0.f;
                for (int ii = 0; ii < BQ; ii++) acc += dRs[t * BQ + ii] * DOs[ii * (HD + 1) + d];
                P[idx] += acc;
            }
        }
    }
}

/* ---- backward kernel B: dk, dv -------------------------------------------------------------------------------- */
template <int HD>
__global__ static void __launch_bounds__(BKB) attn_bwd_kv(attn_args a)
{
    extern __shared__ __align__(16) float sm[];
    float *Qs = sm, *DOs = Qs + BQB * HD;             /* BQB × HD each, broadcast reads */
    float *Ko = DOs + BQB * HD, *Vo = Ko + BKB * (HD + 1); /* own rows, padded */
    float *ls = Vo + BKB * (HD + 1), *Ds = ls + BQB;
    int *qrs = (int *)(Ds + BQB), *qcs = qrs + BQB;
    int64_t *roff = (int64_t *)(((uintptr_t)(qcs + BQB) + 7) & ~(uintptr_t)7);
    const int L = a.Lh + a.Lw, tid = threadIdx.x, h = blockIdx.z;
    const int64_t g = a.g0 + blockIdx.y, nq = q_cnt(a, g), nk = k_cnt(a, g);
    if ((int64_t)blockIdx.x * BKB >= nk) return;
    const int64_t j = (int64_t)blockIdx.x * BKB + tid;
    const bool valid = j < nk;
    const int64_t krow = valid ? k_rowid(a, k_base(a, g) + j) : 0;
    int kr = 0, kc = 0;
    if (valid && L) {
        kr = a.k_row[krow];
        kc = a.k_col[krow];
    }
    float dk[HD], dv[HD];
#pragma unroll
    for (int d = 0; d < HD; d++) {
        const bool in = valid && d < a.hd;
        Ko[tid * (HD + 1) + d] = in ? a.k[krow * a.ldk + (int64_t)h * a.hd + d] : 0.f;
        Vo[tid * (HD + 1) + d] = in ? a.v[krow * a.ldv + (int64_t)h * a.hd + d] : 0.f;
        dk[d] = 0.f;
        dv[d] = 0.f;
    }
    const int64_t qb = q_base(a, g);
    for (int64_t q0 = 0; q0 < nq; q0 += BQB) {
        const int nqt = (int)(nq - q0 < BQB ? nq - q0 : BQB);
        __syncthreads();
        for (int idx = tid; idx < BQB * HD; idx += BKB) {
            const int ii = idx / HD, d = idx % HD;
            float qv = 0.f, gv = 0.f;
            if (ii < nqt && d < a.hd) {
                const int64_t r = q_rowid(a, qb + q0 + ii);
                qv = a.q[r * a.ldq + (int64_t)h * a.hd + d];
                gv = a.dout[r * a.ldo + (int64_t)h * a.hd + d];
            }
            Qs[idx] = qv;
            DOs[idx] = gv;
        }
        for (int ii = tid; ii < nqt; ii += BKB) {
            const int64_t s = qb + q0 + ii, r = q_rowid(a, s);
            ls[ii] = a.lse_in[r * a.H + h] * LOG2E;
            Ds[ii] = a.Dsum[(s - a.slot0) * a.H + h];
            if (L) {
                qrs[ii] = a.q_row[r];
                qcs[ii] = a.q_col[r];
                roff[ii] = ((s - a.slot0) * a.H + h) * L;
            }
        }
        __syncthreads();
        if (!valid) continue;
        for (int ii = 0; ii < nqt; ii++) {
            float sv = 0.f, dp = 0.f;
#pragma unroll
            for (int d = 0; d < HD; d++) {
                sv += Qs[ii * HD + d] * Ko[tid * (HD + 1) + d];
                dp += DOs[ii * HD + d] * Vo[tid * (HD + 1) + d];
            }
            sv *= a.scale;
            if (L) {
                const float *Rr = a.R + roff[ii];
                sv += Rr[clampi(qrs[ii] - kr + a.offh, a.Lh)] + Rr[a.Lh + clampi(qcs[ii] - kc + a.offw, a.Lw)];
            }
            const float p = exp2f(sv * LOG2E - ls[ii]);
            const float dss = p * (dp - Ds[ii]) * a.scale;
            const float4 *q4 = (const float4 *)(Qs + ii * HD), *g4 = (const float4 *)(DOs + ii * HD);
#pragma unroll
            for (int d4 = 0; d4 < HD / 4; d4++) {
                float4 qq = q4[d4], gg = g4[d4];
                dv[4 * d4] += p * gg.x;
                dv[4 * d4 + 1] += p * gg.y;
                dv[4 * d4 + 2] += p * gg.z;
                dv[4 * d4 + 3] += p * gg.w;
                dk[4 * d4] += dss * qq.x;
                dk[4 * d4 + 1] += dss * qq.y;
                dk[4 * d4 + 2] += dss * qq.z;
                dk[4 * d4 + 3] += dss * qq.w;
            }
        }
    }
    if (!valid) return;
    float *ok = a.dk ? a.dk + krow * a.ldk + (int64_t)h * a.hd : NULL;
    float *ov = a.dv ? a.dv + krow * a.ldv + (int64_t)h * a.hd : NULL;
#pragma unroll
    for (int d = 0; d < HD; d++) {
        if (d >= a.hd) break;
        if (a.k_atomic) {
            if (ok) atomicAdd(ok + d, dk[d]);
            if (ov) atomicAdd(ov + d, dv[d]);
        } else {
            if (ok) ok[d] += dk[d];
            if (ov) ov[d] += dv[d];
        }
    }
}

/* ---- variant 2 (default): each query/key row is shared by SPLIT adjacent lanes, each holding HDS = HD/SPLIT
 * dimensions (HD 64 → 2 lanes, 128 → 4), so q/acc/dq/dk/dv stay in registers without spilling and a block has
 * NT2 = 128 threads; partial dot products are summed across the lanes with xor-shuffles (every lane ends with
 * the same bits, so the lanes agree on the softmax). Same math, same scratch, same determinism as variant 1. */
#define NT2 128

template <int HD> struct v2cfg {
    static constexpr int SPLIT = HD >= 64 ? HD / 32 : 1;
    static constexpr int HDS = HD / SPLIT;
    static constexpr int ROWS = NT2 / SPLIT; /* query (or key) rows per block */
};

template <int SPLIT> __device__ static inline float grp_sum(float v)
{
#pragma unroll
    for (int o = 1; o < SPLIT; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <int N> __device__ static inline float dot4n(const float *a, const float *row)
{
    const float4 *r4 = (const float4 *)row;
    float s = 0.f;
#pragma unroll
    for (int d4 = 0; d4 < N / 4; d4++) {
        float4 kk = r4[d4];
        s += a[4 * d4] * kk.x + a[4 * d4 + 1] * kk.y + a[4 * d4 + 2] * kk.z + a[4 * d4 + 3] * kk.w;
    }
    return s;
}
template <int N> __device__ static inline void axpy4n(float *acc, float p, const float *row)
{
    const float4 *r4 = (const float4 *)row;
#pragma unroll
    for (int d4 = 0; d4 < N / 4; d4++) {
        float4 vv = r4[d4];
        acc[4 * d4] += p * vv.x;
        acc[4 * d4 + 1] += p * vv.y;
        acc[4 * d4 + 2] += p * vv.z;
        acc[4 * d4 + 3] += p * vv.w;
    }
}

template <int HD>
__global__ static void __launch_bounds__(NT2) attn_fwd_v2(attn_args a)
{
    typedef v2cfg<HD> C;
    extern __shared__ __align__(16) float sm[];
    float *Ks = sm, *Vs = Ks + BK * HD;
    int *kr = (int *)(Vs + BK * HD), *kc = kr + BK;
    float *Rs = (float *)(kc + BK);
    const int L = a.Lh + a.Lw, tid = threadIdx.x, h = blockIdx.z;
    const int gi = tid / C::SPLIT, part = tid % C::SPLIT, d0 = part * C::HDS;
    const int64_t g = a.g0 + blockIdx.y, nq = q_cnt(a, g), nk = k_cnt(a, g);
    if ((int64_t)blockIdx.x * C::ROWS >= nq) return;
    const int64_t i = (int64_t)blockIdx.x * C::ROWS + gi, s = q_base(a, g) + i;
    const bool valid = i < nq;
    const int64_t row = valid ? q_rowid(a, s) : 0;
    float q[C::HDS], acc[C::HDS];
#pragma unroll
    for (int d = 0; d < C::HDS; d++) {
        q[d] = (valid && d0 + d < a.hd) ? a.q[row * a.ldq + (int64_t)h * a.hd + d0 + d] : 0.f;
        acc[d] = 0.f;
    }
    int qr = 0, qc = 0;
    if (L) {
        if (valid) {
            qr = a.q_row[row];
            qc = a.q_col[row];
        }
        const float *Rg = a.R + ((s - a.slot0) * a.H + h) * L;
        for (int t = part; t < L; t += C::SPLIT) Rs[t * C::ROWS + gi] = valid ? Rg[t] * LOG2E : 0.f;
    }
    const float sl2 = a.scale * LOG2E;
    float m = NEG_BIG, l = 0.f;
    const int64_t kb = k_base(a, g);
    for (int64_t k0 = 0; k0 < nk; k0 += BK) {
        const int nkt = (int)(nk - k0 < BK ? nk - k0 : BK);
        __syncthreads();
        load_kv<HD, BK, NT2>(a, Ks, Vs, kr, kc, kb, k0, nkt, h);
        __syncthreads();
        for (int j0 = 0; j0 < nkt; j0 += CH) {
            float sc[CH];
            float cmax = NEG_BIG;
#pragma unroll
            for (int c = 0; c < CH; c++) {
                const int j = j0 + c;
                float sv = NEG_BIG;
                if (j < nkt) { /* uniform over the block: the shuffles see every lane */
                    sv = grp_sum<C::SPLIT>(dot4n<C::HDS>(q, Ks + j * HD + d0)) * sl2;
                    if (L)
                        sv += Rs[clampi(qr - kr[j] + a.offh, a.Lh) * C::ROWS + gi] +
                              Rs[(a.Lh + clampi(qc - kc[j] + a.offw, a.Lw)) * C::ROWS + gi];
                }
                sc[c] = sv;
                cmax = fmaxf(cmax, sv);
            }
            if (cmax > m) {
                const float f = exp2f(m - cmax);
                l *= f;
#pragma unroll
                for (int d = 0; d < C::HDS; d++) acc[d] *= f;
                m = cmax;
            }
#pragma unroll
            for (int c = 0; c < CH; c++) {
                const int j = j0 + c;
                if (j >= nkt) break;
                const float p = exp2f(sc[c] - m);
                l += p;
                axpy4n<C::HDS>(acc, p, Vs + j * HD + d0);
            }
        }
    }
    if (!valid) return;
    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int d = 0; d < C::HDS; d++)
        if (d0 + d < a.hd) a.o[row * a.ldo + (int64_t)h * a.hd + d0 + d] = acc[d] * inv;
    if (a.lse && part == 0) a.lse[row * a.H + h] = l > 0.f ? (m + log2f(l)) / LOG2E : -INFINITY;
}

template <int HD>
__global__ static void __launch_bounds__(NT2) attn_bwd_q_v2(attn_args a, int64_t n_tiles)
{
    typedef v2cfg<HD> C;
    extern __shared__ __align__(16) float sm[];
    float *Ks = sm, *Vs = Ks + BK * HD;
    int *kr = (int *)(Vs + BK * HD), *kc = kr + BK;
    const int L = a.Lh + a.Lw, tid = threadIdx.x;
    const int gi = tid / C::SPLIT, part = tid % C::SPLIT, d0 = part * C::HDS;
    float *Rs = (float *)(kc + BK), *dRs = Rs + L * C::ROWS, *Qs = dRs + L * C::ROWS; /* Qs: ROWS × (HD+1) */
    for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
        const int qt = (int)(tile % a.n_qt);
        const int h = (int)((tile / a.n_qt) % a.H);
        const int64_t g = a.g0 + tile / ((int64_t)a.n_qt * a.H);
        const int64_t nq = q_cnt(a, g), nk = k_cnt(a, g);
        if ((int64_t)qt * C::ROWS >= nq) continue;
        __syncthreads();
        const int64_t i = (int64_t)qt * C::ROWS + gi, s = q_base(a, g) + i;
        const bool valid = i < nq;
        const int64_t row = valid ? q_rowid(a, s) : 0;
        float q[C::HDS], dq[C::HDS], go[C::HDS];
        float Di = 0.f;
#pragma unroll
        for (int d = 0; d < C::HDS; d++) {
            const bool in = valid && d0 + d < a.hd;
            const int64_t o = row * a.ldo + (int64_t)h * a.hd + d0 + d;
            q[d] = in ? a.q[row * a.ldq + (int64_t)h * a.hd + d0 + d] : 0.f;
            go[d] = in ? a.dout[o] : 0.f;
            Di += in ? go[d] * a.out[o] : 0.f;
            dq[d] = 0.f;
        }
        Di = grp_sum<C::SPLIT>(Di);
        const float lse2 = valid ? a.lse_in[row * a.H + h] * LOG2E : 0.f;
        if (valid && part == 0) a.Dsum[(s - a.slot0) * a.H + h] = Di;
        int qr = 0, qc = 0;
        if (L) {
            if (valid) {
                qr = a.q_row[row];
                qc = a.q_col[row];
            }
            const float *Rg = a.R + ((s - a.slot0) * a.H + h) * L;
            for (int t = part; t < L; t += C::SPLIT) {
                Rs[t * C::ROWS + gi] = valid ? Rg[t] : 0.f;
                dRs[t * C::ROWS + gi] = 0.f;
            }
        }
        const int64_t kb = k_base(a, g);
        for (int64_t k0 = 0; k0 < nk; k0 += BK) {
            const int nkt = (int)(nk - k0 < BK ? nk - k0 : BK);
            __syncthreads();
            load_kv<HD, BK, NT2>(a, Ks, Vs, kr, kc, kb, k0, nkt, h);
            __syncthreads();
            for (int j = 0; j < nkt; j++) {
                float sv = dot4n<C::HDS>(q, Ks + j * HD + d0);
                float dp = dot4n<C::HDS>(go, Vs + j * HD + d0);
                sv = grp_sum<C::SPLIT>(sv) * a.scale;
                dp = grp_sum<C::SPLIT>(dp);
                int th = 0, tw = 0;
                if (L) {
                    th = clampi(qr - kr[j] + a.offh, a.Lh);
                    tw = a.Lh + clampi(qc - kc[j] + a.offw, a.Lw);
                    sv += Rs[th * C::ROWS + gi] + Rs[tw * C::ROWS + gi];
                }
                const float p = valid ? exp2f(sv * LOG2E - lse2) : 0.f;
                const float ds = p * (dp - Di);
                axpy4n<C::HDS>(dq, ds * a.scale, Ks + j * HD + d0);
                if (L && part == 0) {
                    dRs[th * C::ROWS + gi] += ds;
                    dRs[tw * C::ROWS + gi] += ds;
                }
            }
        }
        if (L) __syncthreads(); /* dRs written by lane 0 of each row, read by all its lanes */
        if (valid && a.want_dq) {
            for (int t = 0; t < L; t++) {
                const float w = dRs[t * C::ROWS + gi];
                const float *tab = t < a.Lh ? a.rel_h + (int64_t)t * a.hd : a.rel_w + (int64_t)(t - a.Lh) * a.hd;
#pragma unroll
                for (int d = 0; d < C::HDS; d++)
                    if (d0 + d < a.hd) dq[d] += w * tab[d0 + d];
            }
            float *o = a.dq + row * a.ldq + (int64_t)h * a.hd + d0;
#pragma unroll
            for (int d = 0; d < C::HDS; d++)
                if (d0 + d < a.hd) o[d] += dq[d];
        }
        if (L && a.want_drel) {
#pragma unroll
            for (int d = 0; d < C::HDS; d++) Qs[gi * (HD + 1) + d0 + d] = q[d];
            __syncthreads();
            float *P = a.part + (int64_t)blockIdx.x * L * a.hd;
            for (int idx = tid; idx < L * a.hd; idx += NT2) {
                const int t = idx / a.hd, d = idx % a.hd;
                float acc = 0.f;
                for (int ii = 0; ii < C::ROWS; ii++) acc += dRs[t * C::ROWS + ii] * Qs[ii * (HD + 1) + d];
                P[idx] += acc;
            }
        }
    }
}

template <int HD>
__global__ static void __launch_bounds__(NT2) attn_bwd_kv_v2(attn_args a)
{
    typedef v2cfg<HD> C;
    extern __shared__ __align__(16) float sm[];
    float *Qs = sm, *DOs = Qs + BQB * HD;
    float *ls = DOs + BQB * HD, *Ds = ls + BQB;
    int *qrs = (int *)(Ds + BQB), *qcs = qrs + BQB;
    int64_t *roff = (int64_t *)(((uintptr_t)(qcs + BQB) + 7) & ~(uintptr_t)7);
    const int L = a.Lh + a.Lw, tid = threadIdx.x, h = blockIdx.z;
    const int gi = tid / C::SPLIT, part = tid % C::SPLIT, d0 = part * C::HDS;
    const int64_t g = a.g0 + blockIdx.y, nq = q_cnt(a, g), nk = k_cnt(a, g);
    if ((int64_t)blockIdx.x * C::ROWS >= nk) return;
    const int64_t j = (int64_t)blockIdx.x * C::ROWS + gi;
    const bool valid = j < nk;
    const int64_t krow = valid ? k_rowid(a, k_base(a, g) + j) : 0;
    int kr = 0, kc = 0;
    if (valid && L) {
        kr = a.k_row[krow];
        kc = a.k_col[krow];
    }
    float kk[C::HDS], vv[C::HDS], dk[C::HDS], dv[C::HDS];
#pragma unroll
    for (int d = 0; d < C::HDS; d++) {
        const bool in = valid && d0 + d < a.hd;
        kk[d] = in ? a.k[krow * a.ldk + (int64_t)h * a.hd + d0 + d] : 0.f;
        vv[d] = in ? a.v[krow * a.ldv + (int64_t)h * a.hd + d0 + d] : 0.f;
        dk[d] = 0.f;
        dv[d] = 0.f;
    }
    const int64_t qb = q_base(a, g);
    for (int64_t q0 = 0; q0 < nq; q0 += BQB) {
        const int nqt = (int)(nq - q0 < BQB ? nq - q0 : BQB);
        __syncthreads();
        for (int idx = tid; idx < BQB * HD; idx += NT2) {
            const int ii = idx / HD, d = idx % HD;
            float qv = 0.f, gv = 0.f;
            if (ii < nqt && d < a.hd) {
                const int64_t r = q_rowid(a, qb + q0 + ii);
                qv = a.q[r * a.ldq + (int64_t)h * a.hd + d];
                gv = a.dout[r * a.ldo + (int64_t)h * a.hd + d];
            }
            Qs[idx] = qv;
            DOs[idx] = gv;
        }
        for (int ii = tid; ii < nqt; ii += NT2) {
            const int64_t s = qb + q0 + ii, r = q_rowid(a, s);
            ls[ii] = a.lse_in[r * a.H + h] * LOG2E;
            Ds[ii] = a.Dsum[(s - a.slot0) * a.H + h];
            if (L) {
                qrs[ii] = a.q_row[r];
                qcs[ii] = a.q_col[r];
                roff[ii] = ((s - a.slot0) * a.H + h) * L;
            }
        }
        __syncthreads();
        for (int ii = 0; ii < nqt; ii++) {
            float sv = dot4n<C::HDS>(kk, Qs + ii * HD + d0);
            float dp = dot4n<C::HDS>(vv, DOs + ii * HD + d0);
            sv = grp_sum<C::SPLIT>(sv) * a.scale;
            dp = grp_sum<C::SPLIT>(dp);
            if (L && valid) {
                const float *Rr = a.R + roff[ii];
                sv += Rr[clampi(qrs[ii] - kr + a.offh, a.Lh)] + Rr[a.Lh + clampi(qcs[ii] - kc + a.offw, a.Lw)];
            }
            const float p = valid ? exp2f(sv * LOG2E - ls[ii]) : 0.f;
            const float dss = p * (dp - Ds[ii]) * a.scale;
            axpy4n<C::HDS>(dv, p, DOs + ii * HD + d0);
            axpy4n<C::HDS>(dk, dss, Qs + ii * HD + d0);
        }
    }
    if (!valid) return;
    float *ok = a.dk ? a.dk + krow * a.ldk + (int64_t)h * a.hd + d0 : NULL;
    float *ov = a.dv ? a.dv + krow * a.ldv + (int64_t)h * a.hd + d0 : NULL;
#pragma unroll
    for (int d = 0; d < C::HDS; d++) {
        if (d0 + d >= a.hd) break;
        if (a.k_atomic) {
            if (ok) atomicAdd(ok + d, dk[d]);
            if (ov) atomicAdd(ov + d, dv[d]);
        } else {
            if (ok) ok[d] += dk[d];
            if (ov) ov[d] += dv[d];
        }
    }
}

/* drel_h/drel_w += Σ_b part[b] in block order */
__global__ static void attn_drel_final(float *drel_h, float *drel_w, const float *part, int nb, int Lh, int Lw, int hd)
{
    const int64_t n = (int64_t)(Lh + Lw) * hd;
    MS_GRID_STRIDE(i, n) {
        float s = 0.f;
        for (int b = 0; b < nb; b++) s += part[(int64_t)b * n + i];
        const int64_t t = i / hd;
        if (t < Lh) {
            if (drel_h) drel_h[i] += s;
        } else if (drel_w) {
            drel_w[i - (int64_t)Lh * hd] += s;
        }
    }
}

/* ---- host side ------------------------------------------------------------------------------------------------ */
static ms_status copy_offsets(ms_device *dev, const int32_t *dptr, int64_t n_groups, int32_t **out, int64_t *max_n,
                              const char *what, const char *name)
{
    *out = (int32_t *)malloc((size_t)(n_groups + 1) * sizeof(int32_t));
    MS_FAIL_IF(!*out, MS_ENOMEM, "%s: out of memory", what);
    MS_TRY(ms_cuda_copy(dev, *out, dptr, (size_t)(n_groups + 1) * sizeof(int32_t), 2));
    int64_t mx = 0;
    MS_FAIL_IF((*out)[0] < 0, MS_EINVAL, "%s: %s[0] = %d is negative", what, name, (*out)[0]);
    for (int64_t g = 0; g < n_groups; g++) {
        int64_t c = (int64_t)(*out)[g + 1] - (*out)[g];
        MS_FAIL_IF(c < 0, MS_EINVAL, "%s: group %lld has decreasing offsets in %s", what, (long long)g, name);
        if (c > mx) mx = c;
    }
    *max_n = mx;
    return MS_OK;
}

ms_status ms_attn_check_desc(const ms_attention_desc *d, const char *what)
{
    MS_FAIL_IF(!d, MS_EINVAL, "%s: NULL descriptor", what);
    MS_FAIL_IF(d->n_groups < 0 || d->n_heads <= 0 || d->head_dim <= 0, MS_EINVAL,
               "%s: bad n_groups=%lld n_heads=%d head_dim=%d", what, (long long)d->n_groups, d->n_heads, d->head_dim);
    MS_FAIL_IF(d->head_dim > 128, MS_EUNSUPPORTED, "%s: head_dim %d > 128 is not supported by the CUDA kernel", what,
               d->head_dim);
    MS_FAIL_IF(d->head_dim_qk < 0 || (d->head_dim_qk && d->head_dim_qk != d->head_dim && d->rel_h), MS_EINVAL,
               "%s: head_dim_qk %d is negative or comes with relative positions", what, d->head_dim_qk);
    int64_t D = (int64_t)d->n_heads * d->head_dim;
    int64_t Dqk = (int64_t)d->n_heads * (d->head_dim_qk ? d->head_dim_qk : d->head_dim);
    MS_FAIL_IF(d->ldq < Dqk || d->ldk < Dqk || d->ldv < D || d->ldo < D, MS_EINVAL,
               "%s: row strides (%lld %lld %lld %lld) below n_heads·head_dim = %lld (q, k: %lld)", what,
               (long long)d->ldq, (long long)d->ldk, (long long)d->ldv, (long long)d->ldo, (long long)D,
               (long long)Dqk);
    MS_FAIL_IF((!d->q_off && d->nq < 0) || (!d->k_off && d->nk < 0), MS_EINVAL, "%s: negative group size", what);
    MS_FAIL_IF(d->rel_h && (!d->rel_w || d->len_h <= 0 || d->len_w <= 0 || !d->q_row || !d->q_col || !d->k_row ||
                            !d->k_col),
               MS_EINVAL, "%s: relative positions need rel_h, rel_w, len_h, len_w and all four row/col tables", what);
    MS_FAIL_IF(d->rel_h && d->len_h + d->len_w > 4096, MS_EUNSUPPORTED, "%s: rel-pos tables longer than 4096", what);
    return MS_OK;
}

/* The fp32 kernels read q and k with head_dim columns per head: a wider q/k (folded relative positions) is the
 * bf16 path's (attention_bf16.cu). */
static ms_status check_fp32_widths(const ms_attention_desc *d, const char *what)
{
    MS_FAIL_IF(d->head_dim_qk && d->head_dim_qk != d->head_dim, MS_EUNSUPPORTED,
               "%s: the fp32 CUDA kernels need head_dim_qk == head_dim (got %d and %d)", what, d->head_dim_qk,
               d->head_dim);
    return MS_OK;
}

ms_status ms_attn_plan_make(ms_device *dev, const ms_attention_desc *d, ms_attn_plan *p, const char *what)
{
    p->q_off = p->k_off = NULL;
    p->max_nq = d->nq;
    p->max_nk = d->nk;
    if (d->q_off) MS_TRY(copy_offsets(dev, d->q_off, d->n_groups, &p->q_off, &p->max_nq, what, "q_off"));
    if (d->k_off) MS_TRY(copy_offsets(dev, d->k_off, d->n_groups, &p->k_off, &p->max_nk, what, "k_off"));
    return MS_OK;
}

void ms_attn_plan_free(ms_attn_plan *p)
{
    free(p->q_off);
    free(p->k_off);
    p->q_off = p->k_off = NULL;
}

static int64_t slot_base(const ms_attn_plan *p, const ms_attention_desc *d, int64_t g)
{
    return p->q_off ? p->q_off[g] : g * d->nq;
}

/* Last group (exclusive) of the chunk starting at g0. */
static int64_t chunk_end(const ms_attn_plan *p, const ms_attention_desc *d, int64_t g0, int L)
{
    int64_t per = (int64_t)d->n_heads * (L > 0 ? L : 1);
    int64_t g1 = g0 + 1;
    while (g1 < d->n_groups && g1 - g0 < 65535 && (slot_base(p, d, g1 + 1) - slot_base(p, d, g0)) * per <= CHUNK_FLOATS)
        g1++;
    return g1;
}

static void fill_args(attn_args *a, const ms_attention_desc *d)
{
    memset(a, 0, sizeof *a);
    a->rel_h = d->rel_h;
    a->rel_w = d->rel_w;
    a->q_off = d->q_off;
    a->q_idx = d->q_idx;
    a->k_off = d->k_off;
    a->k_idx = d->k_idx;
    a->q_row = d->q_row;
    a->q_col = d->q_col;
    a->k_row = d->k_row;
    a->k_col = d->k_col;
    a->nq = d->nq;
    a->nk = d->nk;
    a->ldq = d->ldq;
    a->ldk = d->ldk;
    a->ldv = d->ldv;
    a->ldo = d->ldo;
    a->H = d->n_heads;
    a->hd = d->head_dim;
    a->scale = d->scale;
    if (d->rel_h) {
        a->Lh = (int)d->len_h;
        a->Lw = (int)d->len_w;
        a->offh = (int)((d->len_h - 1) / 2);
        a->offw = (int)((d->len_w - 1) / 2);
    }
}

static int hd_bucket(int hd) { return hd <= 16 ? 16 : hd <= 32 ? 32 : hd <= 64 ? 64 : 128; }

static int rows_for(int HD, int variant)
{
    if (variant == 1) return BQ;
    return HD == 16 ? v2cfg<16>::ROWS : HD == 32 ? v2cfg<32>::ROWS : HD == 64 ? v2cfg<64>::ROWS : v2cfg<128>::ROWS;
}
static size_t smem_fwd(int HD, int L, int rows)
{
    return (size_t)2 * BK * HD * sizeof(float) + 2 * BK * sizeof(int) + (size_t)L * rows * sizeof(float);
}
static size_t smem_bwd_a(int HD, int L, int rows)
{
    return smem_fwd(HD, L, rows) + (size_t)L * rows * sizeof(float) + (size_t)rows * (HD + 1) * sizeof(float);
}
static size_t smem_bwd_b(int HD, int variant)
{
    size_t own = variant == 1 ? (size_t)2 * BKB * (HD + 1) * sizeof(float) : 0;
    return (size_t)2 * BQB * HD * sizeof(float) + own + (size_t)2 * BQB * sizeof(float) + 2 * BQB * sizeof(int) + 8 +
           BQB * sizeof(int64_t);
}
/* Variant 2 unless the environment asked for 1 or variant 2's shared memory does not fit (long rel-pos tables
 * with head_dim <= 32 put 128 query rows in a block). */
static int pick_variant(ms_cuda_ctx *cx, int HD, int L, int bwd)
{
    if (cx->attn_variant == 1) return 1;
    int rows = rows_for(HD, 2);
    size_t need = bwd ? smem_bwd_a(HD, L, rows) : smem_fwd(HD, L, rows);
    return need <= cx->smem_optin ? 2 : 1;
}

template <int HD>
static ms_status launch_fwd(ms_device *dev, const attn_args &a, int64_t max_nq, size_t smem, int variant)
{
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    int rows = rows_for(HD, variant);
    dim3 grid((unsigned)((max_nq + rows - 1) / rows), (unsigned)a.n_g, (unsigned)a.H);
    if (variant == 1) {
        MS_CU(cudaFuncSetAttribute(attn_fwd<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attn_fwd<HD><<<grid, BQ, smem, cx->stream>>>(a);
    } else {
        MS_CU(cudaFuncSetAttribute(attn_fwd_v2<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        attn_fwd_v2<HD><<<grid, NT2, smem, cx->stream>>>(a);
    }
    MS_CU_LAUNCHED();
    return MS_OK;
}
template <int HD>
static ms_status launch_bwd(ms_device *dev, const attn_args &a, int64_t max_nk, size_t smem_a, size_t smem_b,
                            int variant)
{
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    int64_t n_tiles = (int64_t)a.n_qt * a.H * a.n_g;
    int64_t nblk = n_tiles < NBLK_A ? n_tiles : NBLK_A;
    if (a.want_drel) nblk = NBLK_A; /* fixed grid: the partial tables are always the same NBLK_A */
    int rows = rows_for(HD, variant);
    if (variant == 1) {
        MS_CU(cudaFuncSetAttribute(attn_bwd_q<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_a));
        attn_bwd_q<HD><<<(unsigned)nblk, BQ, smem_a, cx->stream>>>(a, n_tiles);
    } else {
        MS_CU(cudaFuncSetAttribute(attn_bwd_q_v2<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_a));
        attn_bwd_q_v2<HD><<<(unsigned)nblk, NT2, smem_a, cx->stream>>>(a, n_tiles);
    }
    MS_CU_LAUNCHED();
    if (a.dk || a.dv) {
        if (variant == 1) {
            MS_CU(cudaFuncSetAttribute(attn_bwd_kv<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_b));
            dim3 grid((unsigned)((max_nk + BKB - 1) / BKB), (unsigned)a.n_g, (unsigned)a.H);
            attn_bwd_kv<HD><<<grid, BKB, smem_b, cx->stream>>>(a);
        } else {
            MS_CU(cudaFuncSetAttribute(attn_bwd_kv_v2<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_b));
            dim3 grid((unsigned)((max_nk + rows - 1) / rows), (unsigned)a.n_g, (unsigned)a.H);
            attn_bwd_kv_v2<HD><<<grid, NT2, smem_b, cx->stream>>>(a);
        }
        MS_CU_LAUNCHED();
    }
    return MS_OK;
}

extern "C" ms_status ms_attention_forward_cuda(ms_device *dev, float *out, float *lse, const float *q, const float *k,
                                               const float *v, const ms_attention_desc *d)
{
    const char *what = "attention_forward";
    MS_CU_CTX(dev);
    MS_TRY(ms_attn_check_desc(d, what));
    if (!d->n_groups) return MS_OK;
    MS_FAIL_IF(!out || !q || !k || !v, MS_EINVAL, "%s: NULL q, k, v or out", what);
    if (dev->precision == MS_PREC_BF16) {
        int done = 0;
        MS_TRY(ms_attn_bf16_forward(dev, out, lse, q, k, v, d, &done));
        if (done) return MS_OK;
    }
    MS_TRY(check_fp32_widths(d, what));
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    ms_status rc = MS_OK;
    ms_attn_plan p;
    attn_args a;
    int HD = hd_bucket(d->head_dim), L, variant;
    size_t smem;
    rc = ms_attn_plan_make(dev, d, &p, what);
    if (rc) goto leave;
    fill_args(&a, d);
    a.q = q;
    a.k = k;
    a.v = v;
    a.o = out;
    a.lse = lse;
    L = a.Lh + a.Lw;
    variant = pick_variant(cx, HD, L, 0);
    smem = smem_fwd(HD, L, rows_for(HD, variant));
    if (smem > cx->smem_optin) {
        rc = ms_error(MS_EUNSUPPORTED, "%s: rel-pos tables of %d rows need %zu bytes of shared memory (have %zu)",
                      what, L, smem, cx->smem_optin);
        goto leave;
    }
    if (p.max_nq == 0) goto leave;
    for (int64_t g0 = 0; g0 < d->n_groups;) {
        int64_t g1 = chunk_end(&p, d, g0, L);
        a.g0 = g0;
        a.n_g = g1 - g0;
        a.slot0 = slot_base(&p, d, g0);
        if (L) {
            int64_t n_slots = slot_base(&p, d, g1) - a.slot0;
            void *sp;
            if (n_slots > 0) {
                rc = ms_cuda_scratch(dev, (size_t)(n_slots * a.H * L) * sizeof(float), &sp);
                if (rc) goto leave;
                a.R = (const float *)sp;
                attn_rel_dots<<<dim3((unsigned)n_slots, (unsigned)a.H), 128, (size_t)d->head_dim * sizeof(float),
                                cx->stream>>>(a, n_slots);
                MS_CU_GOTO(cudaGetLastError(), rc, leave);
            }
        }
        switch (HD) {
        case 16: rc = launch_fwd<16>(dev, a, p.max_nq, smem, variant); break;
        case 32: rc = launch_fwd<32>(dev, a, p.max_nq, smem, variant); break;
        case 64: rc = launch_fwd<64>(dev, a, p.max_nq, smem, variant); break;
        default: rc = launch_fwd<128>(dev, a, p.max_nq, smem, variant); break;
        }
        if (rc) goto leave;
        g0 = g1;
    }
leave:
    ms_attn_plan_free(&p);
    return rc;
}

extern "C" ms_status ms_attention_backward_cuda(ms_device *dev, float *dq, float *dk, float *dv, float *drel_h,
                                                float *drel_w, const float *dout, const float *out, const float *lse,
                                                const float *q, const float *k, const float *v,
                                                const ms_attention_desc *d)
{
    const char *what = "attention_backward";
    MS_CU_CTX(dev);
    MS_TRY(ms_attn_check_desc(d, what));
    if (!d->n_groups || (!dq && !dk && !dv && !drel_h && !drel_w)) return MS_OK;
    MS_FAIL_IF(!dout || !out || !lse || !q || !k || !v, MS_EINVAL, "%s: NULL dout, out, lse, q, k or v", what);
    if (dev->precision == MS_PREC_BF16) {
        int done = 0;
        MS_TRY(ms_attn_bf16_backward(dev, dq, dk, dv, drel_h, drel_w, dout, out, lse, q, k, v, d, &done));
        if (done) return MS_OK;
    }
    MS_TRY(check_fp32_widths(d, what));
    ms_cuda_ctx *cx = ms_cuda_ctx_of(dev);
    ms_status rc = MS_OK;
    ms_attn_plan p;
    attn_args a;
    int HD = hd_bucket(d->head_dim), L, variant;
    size_t smem_a, smem_b, part_f = 0, max_chunk = 0;
    float *base = NULL;
    rc = ms_attn_plan_make(dev, d, &p, what);
    if (rc) goto leave;
    fill_args(&a, d);
    a.q = q;
    a.k = k;
    a.v = v;
    a.out = out;
    a.dout = dout;
    a.lse_in = lse;
    a.dq = dq;
    a.dk = dk;
    a.dv = dv;
    a.want_dq = dq != NULL;
    L = a.Lh + a.Lw;
    a.want_drel = L && (drel_h || drel_w);
    a.k_atomic = d->k_idx != NULL;
    variant = pick_variant(cx, HD, L, 1);
    a.n_qt = (int)((p.max_nq + rows_for(HD, variant) - 1) / rows_for(HD, variant));
    smem_a = smem_bwd_a(HD, L, rows_for(HD, variant));
    smem_b = smem_bwd_b(HD, variant);
    if (smem_a > cx->smem_optin || smem_b > cx->smem_optin) {
        rc = ms_error(MS_EUNSUPPORTED, "%s: needs %zu bytes of shared memory (have %zu)", what,
                      smem_a > smem_b ? smem_a : smem_b, cx->smem_optin);
        goto leave;
    }
    if (p.max_nq == 0) goto leave;
    /* scratch: [drel partials (NBLK_A, L, hd)] [per chunk: D (slots, H), R (slots, H, L)] */
    if (a.want_drel) part_f = (size_t)NBLK_A * L * d->head_dim;
    for (int64_t g0 = 0; g0 < d->n_groups;) {
        int64_t g1 = chunk_end(&p, d, g0, L);
        size_t n = (size_t)(slot_base(&p, d, g1) - slot_base(&p, d, g0));
        if (n > max_chunk) max_chunk = n;
        g0 = g1;
    }
    {
        void *sp;
        size_t floats = part_f + max_chunk * a.H * (size_t)(1 + L) + 64;
        rc = ms_cuda_scratch(dev, floats * sizeof(float), &sp);
        if (rc) goto leave;
        base = (float *)sp;
    }
    a.part = base;
    if (part_f) MS_CU_GOTO(cudaMemsetAsync(a.part, 0, part_f * sizeof(float), cx->stream), rc, leave);
    a.Dsum = base + part_f;
    a.R = a.Dsum + max_chunk * a.H;
    for (int64_t g0 = 0; g0 < d->n_groups;) {
        int64_t g1 = chunk_end(&p, d, g0, L);
        a.g0 = g0;
        a.n_g = g1 - g0;
        a.slot0 = slot_base(&p, d, g0);
        int64_t n_slots = slot_base(&p, d, g1) - a.slot0;
        if (L && n_slots > 0) {
            attn_rel_dots<<<dim3((unsigned)n_slots, (unsigned)a.H), 128, (size_t)d->head_dim * sizeof(float),
                            cx->stream>>>(a, n_slots);
            MS_CU_GOTO(cudaGetLastError(), rc, leave);
        }
        switch (HD) {
        case 16: rc = launch_bwd<16>(dev, a, p.max_nk, smem_a, smem_b, variant); break;
        case 32: rc = launch_bwd<32>(dev, a, p.max_nk, smem_a, smem_b, variant); break;
        case 64: rc = launch_bwd<64>(dev, a, p.max_nk, smem_a, smem_b, variant); break;
        default: rc = launch_bwd<128>(dev, a, p.max_nk, smem_a, smem_b, variant); break;
        }
        if (rc) goto leave;
        g0 = g1;
    }
    if (a.want_drel) {
        int64_t n = (int64_t)L * d->head_dim;
        attn_drel_final<<<ms_cu_blocks(n, 256), 256, 0, cx->stream>>>(drel_h, drel_w, a.part, NBLK_A, a.Lh, a.Lw,
                                                                       d->head_dim);
        MS_CU_GOTO(cudaGetLastError(), rc, leave);
    }
leave:
    ms_attn_plan_free(&p);
    return rc;
}
