/* kernels/cuda/attention_bf16_kernels.cuh — the device code of the bf16 tensor-core attention (the design and its
 * status: kernels/cuda/attention_bf16.cu's header). Included once, by attention_bf16.cu, after attention_bf16.h
 * (q_base / q_cnt / q_rowid ..., ms_warp_sum) and <cuda_bf16.h>; kept apart from the host code so that the kernels
 * can also be compiled as plain C++ against an emulation of the few CUDA primitives they use (threads, barriers,
 * shuffles, one warp-wide mma): such an emulator defines MS_FA_EMULATED_MMA and its own mma_bf16.
 */
#ifndef MS_CUDA_ATTENTION_BF16_KERNELS_CUH
#define MS_CUDA_ATTENTION_BF16_KERNELS_CUH
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
    const bf16 *qb, *kb, *vb, *dob; /* packed bf16 copies (fa_pack) of q, k, v, dout, by slot */
    const float *o, *dout, *lse_in, *Dsum;
    float *out, *lse, *dq, *dk, *dv, *Dw;
    const int32_t *q_off, *q_idx, *k_off, *k_idx;
    int64_t nq, nk, ldq, ldk, ldv, ldo;
    int64_t g0;    /* first group of this launch */
    int64_t slot0;  /* first query slot (row 0 of qb, dob, Dsum) */
    int64_t kslot0; /* first key slot (row 0 of kb, vb) */
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
#ifndef MS_FA_EMULATED_MMA
__device__ static __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
#endif
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

/* The bf16 copies the kernels stage from: dst[((s − s0)·H + h)·wp + c] = bf16(src[row(s)·ld + h·w + c]) for the
 * slots s0 .. s0+n (rows idx[s], or s itself), c < w, and 0 for w ≤ c < wp (wp a multiple of 16: rows of 32-byte
 * multiples, so a tile row is whole 16-byte vectors). One conversion instead of one per block that reads a row. */
__global__ static void fa_pack(bf16 *dst, const float *src, int64_t ld, const int32_t *idx, int64_t s0, int64_t n,
                               int H, int w, int wp)
{
    const int64_t pairs = n * H * (wp / 2);
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < pairs; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t sh = e / (wp / 2), s = s0 + sh / H, row = idx ? idx[s] : s;
        const int h = (int)(sh % H), c = (int)(e % (wp / 2)) * 2;
        const float *x = src + row * ld + (int64_t)h * w + c;
        const float lo = c < w ? x[0] : 0.f, hi = c + 1 < w ? x[1] : 0.f;
        *(__nv_bfloat162 *)(dst + 2 * e) = __floats2bfloat162_rn(lo, hi);
    }
}

/* Rows 0 .. n_valid of a packed tile (row stride lds elements, wp columns) into dst[i·ld + c] (transposed:
 * dst[c·ld + i]); rows n_valid .. n are zero. 16-byte loads. */
__device__ static void stage_tile(bf16 *dst, int ld, const bf16 *src, int64_t lds, int n_valid, int n, int wp,
                                  bool transposed)
{
    const int v8 = wp / 8;
    for (int idx = threadIdx.x; idx < n * v8; idx += NTH) {
        const int i = idx / v8, c = (idx - i * v8) * 8;
        uint4 x = make_uint4(0u, 0u, 0u, 0u);
        if (i < n_valid) x = *(const uint4 *)(src + i * lds + c);
        if (!transposed) {
            *(uint4 *)(dst + i * ld + c) = x;
        } else {
            const unsigned short *u = (const unsigned short *)&x;
            unsigned short *d = (unsigned short *)dst;
#pragma unroll
            for (int e = 0; e < 8; e++) d[(c + e) * ld + i] = u[e];
        }
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
    const int nqt = (int)(nq - i0 < TQ ? nq - i0 : TQ);
    for (int i = tid; i < TQ; i += NTH) qrow[i] = i < nqt ? q_rowid(a, qb + i0 + i) : -1;
    stage_tile(Qs, sq, a.qb + ((qb + i0 - a.slot0) * a.H + h) * a.wqkp, (int64_t)a.H * a.wqkp, nqt, TQ, a.wqkp, false);
    __syncthreads(); /* qrow is read by other lanes at the end, even without keys */
    float o[DVT / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
#pragma unroll
    for (int nt = 0; nt < DVT / 8; nt++) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;
    const float sl2 = a.scale * LOG2E;
    for (int64_t k0 = 0; k0 < nk; k0 += TK) {
        const int nkt = (int)(nk - k0 < TK ? nk - k0 : TK);
        const int64_t kso = kb + k0 - a.kslot0;
        __syncthreads(); /* the previous tile is consumed */
        stage_tile(Ks, sq, a.kb + (kso * a.H + h) * a.wqkp, (int64_t)a.H * a.wqkp, nkt, TK, a.wqkp, false);
        stage_tile(Vt, sv, a.vb + (kso * a.H + h) * a.wvp, (int64_t)a.H * a.wvp, nkt, TK, a.wvp, true);
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
    const int64_t kso = kb + j0 - a.kslot0;
    stage_tile(Ks, sq, a.kb + (kso * a.H + h) * a.wqkp, (int64_t)a.H * a.wqkp, nkt, TK, a.wqkp, false);
    stage_tile(Vs, sv, a.vb + (kso * a.H + h) * a.wvp, (int64_t)a.H * a.wvp, nkt, TK, a.wvp, false);
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
        const int64_t qso = qb + i0 - a.slot0;
        stage_tile(Qs, sq, a.qb + (qso * a.H + h) * a.wqkp, (int64_t)a.H * a.wqkp, nqt, TQ, a.wqkp, false);
        stage_tile(dOs, sv, a.dob + (qso * a.H + h) * a.wvp, (int64_t)a.H * a.wvp, nqt, TQ, a.wvp, false);
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
    const int nqt = (int)(nq - i0 < TQ ? nq - i0 : TQ);
    const int64_t qso = qb + i0 - a.slot0;
    for (int i = tid; i < TQ; i += NTH) qrow[i] = i < nqt ? q_rowid(a, qb + i0 + i) : -1;
    for (int idx = tid; idx < TQ * sq; idx += NTH) dQa[idx] = 0.f;
    stage_tile(Qs, sq, a.qb + (qso * a.H + h) * a.wqkp, (int64_t)a.H * a.wqkp, nqt, TQ, a.wqkp, false);
    stage_tile(dOs, sv, a.dob + (qso * a.H + h) * a.wvp, (int64_t)a.H * a.wvp, nqt, TQ, a.wvp, false);
    __syncthreads(); /* dQa zeroed and qrow written (read by other lanes), even without keys */
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
        const int64_t kso = kb + k0 - a.kslot0;
        __syncthreads(); /* the previous key tile is consumed */
        stage_tile(Ks, sq, a.kb + (kso * a.H + h) * a.wqkp, (int64_t)a.H * a.wqkp, nkt, TK, a.wqkp, false);
        stage_tile(Vs, sv, a.vb + (kso * a.H + h) * a.wvp, (int64_t)a.H * a.wvp, nkt, TK, a.wvp, false);
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

#endif
