/* kernels/cuda/rel_pos.cu — linear resize of a relative-position table (L_in, C) → (L_out, C) (contract:
 * kernels/rel_pos.h; taps as kernels/cpu/rel_pos.c: float scale, source clamped at 0). Backward is a gather
 * over the few output rows that reach each input row: deterministic, no atomics. */
#include "cuda_common.h"

__device__ static inline void taps(int64_t d, int64_t L_in, int64_t L_out, int64_t *i0, int64_t *i1, float *lam)
{
    float scale = (float)L_in / (float)L_out;
    float s = __fsub_rn(__fmul_rn(scale, (float)d + 0.5f), 0.5f);
    if (s < 0) s = 0;
    int64_t a = (int64_t)s;
    if (a > L_in - 1) a = L_in - 1;
    *i0 = a;
    *i1 = a < L_in - 1 ? a + 1 : a;
    *lam = s - (float)a;
}

__global__ static void relpos_fwd_f32(float *out, const float *in, int64_t L_in, int64_t L_out, int64_t C)
{
    MS_GRID_STRIDE(i, L_out * C) {
        int64_t d = i / C, c = i % C, i0, i1;
        float lam;
        taps(d, L_in, L_out, &i0, &i1, &lam);
        out[i] = (1.f - lam) * in[i0 * C + c] + lam * in[i1 * C + c];
    }
}
__global__ static void relpos_bwd_f32(float *din, const float *dout, int64_t L_in, int64_t L_out, int64_t C)
{
    MS_GRID_STRIDE(i, L_in * C) {
        int64_t j = i / C, c = i % C, i0, i1;
        double inv = (double)L_out / (double)L_in;
        int64_t lo = (int64_t)floor(((double)j - 1.5) * inv - 0.5) - 2;
        int64_t hi = (int64_t)ceil(((double)j + 2.5) * inv - 0.5) + 2;
        if (j <= 1) lo = 0;
        if (j >= L_in - 2) hi = L_out - 1;
        if (lo < 0) lo = 0;
        if (hi > L_out - 1) hi = L_out - 1;
        float acc = 0.f, lam;
        for (int64_t d = lo; d <= hi; d++) {
            taps(d, L_in, L_out, &i0, &i1, &lam);
            float w = (i0 == j ? 1.f - lam : 0.f) + (i1 == j ? lam : 0.f);
            if (w != 0.f) acc += w * dout[d * C + c];
        }
        din[i] += acc;
    }
}

static ms_status check(const char *who, int64_t L_in, int64_t L_out, int64_t C)
{
    MS_FAIL_IF(L_in <= 0 || L_out <= 0 || C < 0, MS_EINVAL, "%s: bad sizes L_in=%lld L_out=%lld C=%lld", who,
               (long long)L_in, (long long)L_out, (long long)C);
    return MS_OK;
}

extern "C" ms_status ms_rel_pos_resize_forward_cuda(ms_device *dev, float *out, const float *in, int64_t L_in,
                                                    int64_t L_out, int64_t C)
{
    MS_CU_CTX(dev);
    MS_TRY(check("rel_pos_resize_forward", L_in, L_out, C));
    if (!C) return MS_OK;
    MS_FAIL_IF(!out || !in, MS_EINVAL, "rel_pos_resize_forward: NULL argument");
    relpos_fwd_f32<<<ms_cu_blocks(L_out * C, 256), 256, 0, ms_cuda_ctx_of(dev)->stream>>>(out, in, L_in, L_out, C);
    MS_CU_LAUNCHED();
    return MS_OK;
}
extern "C" ms_status ms_rel_pos_resize_backward_cuda(ms_device *dev, float *din, const float *dout, int64_t L_in,
                                                     int64_t L_out, int64_t C)
{
    MS_CU_CTX(dev);
    MS_TRY(check("rel_pos_resize_backward", L_in, L_out, C));
    if (!C || !din) return MS_OK;
    MS_FAIL_IF(!dout, MS_EINVAL, "rel_pos_resize_backward: NULL dout");
    relpos_bwd_f32<<<ms_cu_blocks(L_in * C, 256), 256, 0, ms_cuda_ctx_of(dev)->stream>>>(din, dout, L_in, L_out, C);
    MS_CU_LAUNCHED();
    return MS_OK;
}
