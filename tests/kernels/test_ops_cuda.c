/* tests/kernels/test_ops_cuda.c — the whole op table (op_cases.h) on CUDA against the same rows on the CPU (the CPU
 * ops are themselves checked row by row against double-precision references and finite differences in
 * test_ops_a/b).
 *
 * For each row: the row's random inputs (seed printed; MS_TEST_SEED replays), outputs pre-filled with the same
 * random values on both sides (an unwritten element shows up), gradient buffers pre-filled likewise (so
 * "accumulates, does not overwrite" is checked too). The backward runs on equal inputs: the CPU's forward results
 * (output, saved tensors) are copied to the device first. Metric: NMSE = ‖gpu − cpu‖² / ‖cpu‖² and max-rel
 * (|d| / (|cpu| + 1e-3·max|cpu|)); tolerances per op in the table (op_cases.c, cu_tolerances):
 *   TOL_EXACT_ 1e-12 / 1e-6 (index maps, copies: bit-identical expected, some slack for x+0 vs fma),
 *   TOL_SUM_ 1e-9 / 1e-3 (fp32 reductions and GEMMs, different summation orders: ~1e-7 relative per element),
 *   attention 1e-8 / 2e-3 (exp2 approximations and online softmax vs the CPU's exact softmax; its gradients are
 *   sums of many cancelling terms). Every attention row runs on both kernel variants (MS_KERNEL_ATTENTION=1).
 * Then AdamW, sumsq and scale_inplace, which are not table rows (steps with state, a double result).
 * Then the bf16 pass: every table row and attention row again with both devices at MS_PREC_BF16, the CPU's bf16
 * emulation being the reference (docs/PRECISION.md). Tolerances (NMSE / max-rel), by what the op does in bf16:
 *   matmul, linear: TOL_BF16_GEMM 1e-8 / 1e-2 (normwise 1e-4). Both sides multiply the same bf16-rounded operands
 *   and accumulate in fp32, so only the order of the sums (and the tensor cores' fp32 accumulation) differs, as in
 *   fp32 (TOL_SUM_), with 10x slack; an operand left unrounded costs ~2e-3 normwise (NMSE ~4e-6) and fails. The
 *   bias gradient is an fp32 column sum: TOL_SUM_. test_ops_a checks that the CPU's bf16 and fp32 results differ
 *   by 1e-4..1e-2 normwise, so this GPU bf16 result is within about 1e-2 of the CPU fp32 op as well.
 *   attention: TOL_ATT_BF16 1e-4 / 5 (normwise 1e-2): the kernels may round more than the CPU emulates (e.g. the
 *   probabilities before P·V), which moves results by bf16's precision. Max-rel only catches gross errors (a wrong
 *   element scores ~1e3): a bf16-sized error on an element near zero is large against the 1e-3·max floor (fp32
 *   against bf16 GEMMs on these rows: NMSE ~4e-6, max-rel up to ~2), so the norm is what is bounded.
 *   every other row: its fp32 tolerance unchanged (LayerNorm, softmax, losses, elementwise ops, and the
 *   convolutions, which stay fp32 on both backends in this version, ignore the precision).
 * Exits 77 (skip) when this build has no CUDA backend or no GPU is visible; fails when a visible GPU will not
 * open. MS_TEST_OPS_TWIN=cpu runs the same comparisons with a 1-thread CPU device in the GPU's place (checks this
 * runner without a GPU). Prints timings of the attention and GEMM shapes the docs quote when MS_TEST_BENCH=1
 * (tools/gpu/build_and_test.sh sets it).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/clock.h"
#include "base/device.h"
#include "harness.h"
#include "op_cases.h"

#define TOL_ATT ((ms_opc_tol){1e-8, 2e-3})
#define TOL_BF16_GEMM ((ms_opc_tol){1e-8, 1e-2})
#define TOL_ATT_BF16 ((ms_opc_tol){1e-4, 5.0})

static ms_device cpu, dut, dut_v1; /* dut: the device under test (CUDA); dut_v1: CUDA with attention variant 1 */
static ms_rng rng;
static void *allocs[4096];
static int is_dev[4096], n_allocs;

static float *hrand(int64_t n, float lo, float hi)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    ms_fill_uniform(p, n, &rng, lo, hi);
    allocs[n_allocs++] = p;
    return p;
}
static void *up_bytes(const void *h, size_t bytes)
{
    void *d = NULL;
    MS_CHECK_OK(ms_dev_alloc(&dut, bytes ? bytes : 4, &d));
    if (d && bytes) MS_CHECK_OK(ms_dev_from_host(&dut, d, h, bytes));
    is_dev[n_allocs] = 1;
    allocs[n_allocs++] = d;
    return d;
}
static float *up(const float *h, int64_t n) { return up_bytes(h, (size_t)n * sizeof(float)); }
static int32_t *up_i(const int32_t *h, int64_t n) { return up_bytes(h, (size_t)n * sizeof(int32_t)); }
static float *down(const float *d, int64_t n)
{
    float *h = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    allocs[n_allocs++] = h;
    if (n) MS_CHECK_OK(ms_dev_to_host(&dut, h, d, (size_t)n * sizeof(float)));
    return h;
}
static void release_all(void)
{
    for (int i = 0; i < n_allocs; i++) {
        if (is_dev[i]) ms_dev_free(&dut, allocs[i]);
        else free(allocs[i]);
        is_dev[i] = 0;
    }
    n_allocs = 0;
}

/* compare the device array d with the CPU array h */
static void cmp(const char *what, const float *d, const float *h, int64_t n, ms_opc_tol t)
{
    float *g = down(d, n);
    ms_cmp c = ms_compare_f(g, h, n);
    int ok = c.nmse <= t.nmse && c.max_rel <= t.max_rel && !isnan(c.nmse);
    MS_CHECK(ok, "%-40s n=%-8lld nmse=%.2e max_rel=%.2e (worst %lld: gpu %.8g cpu %.8g)", what, (long long)n, c.nmse,
             c.max_rel, (long long)c.worst, (double)g[c.worst], (double)h[c.worst]);
    printf("  %-40s nmse=%.2e max_rel=%.2e %s\n", what, c.nmse, c.max_rel, ok ? "ok" : "FAIL");
}

/* ---- opcase rows ----------------------------------------------------------------------------------------------- */
static void run_row(opcase *c, uint64_t seed, int row)
{
    static const char *gname[MAXIN] = {"d0", "d1", "d2", "d3"};
    char name[128];
    ms_rng r;
    ms_rng_init(&r, seed, 1000 + (uint64_t)row);
    opc_alloc(c, &r);
    if (c->aux_out) { /* saved outputs: pre-filled, so an unwritten element shows up */
        ms_fill_uniform(c->aux0, c->aux_n[0], &r, -1, 1);
        ms_fill_uniform(c->aux1, c->aux_n[1], &r, -1, 1);
    }
    opcase g = *c; /* the same row with its buffers on the device under test */
    for (int k = 0; k < c->n_in; k++) g.in[k] = up(c->in[k], c->in_n[k]);
    g.out = up(c->out, c->out_n);
    g.gout = up(c->gout, c->out_n);
    g.aux0 = c->aux0 ? up(c->aux0, c->aux_n[0]) : NULL;
    g.aux1 = c->aux1 ? up(c->aux1, c->aux_n[1]) : NULL;
    g.lab = c->lab ? up_i(c->lab, c->lab_n) : NULL;
    MS_CHECK_OK(c->fwd(&cpu, c));
    MS_CHECK_OK(g.fwd(&dut, &g));
    MS_CHECK_OK(ms_dev_sync(&dut));
    snprintf(name, sizeof name, "%s fwd", c->name);
    cmp(name, g.out, c->out, c->out_n, c->cu_fwd);
    if (c->aux_out) {
        snprintf(name, sizeof name, "%s fwd saved 0", c->name);
        cmp(name, g.aux0, c->aux0, c->aux_n[0], c->cu_fwd);
        snprintf(name, sizeof name, "%s fwd saved 1", c->name);
        cmp(name, g.aux1, c->aux1, c->aux_n[1], c->cu_fwd);
        MS_CHECK_OK(ms_dev_from_host(&dut, g.aux0, c->aux0, (size_t)c->aux_n[0] * sizeof(float)));
        MS_CHECK_OK(ms_dev_from_host(&dut, g.aux1, c->aux1, (size_t)c->aux_n[1] * sizeof(float)));
    }
    MS_CHECK_OK(ms_dev_from_host(&dut, g.out, c->out, (size_t)c->out_n * sizeof(float)));
    float *gh[MAXIN] = {0}, *gd[MAXIN] = {0};
    for (int k = 0; k < c->n_in; k++) {
        gh[k] = hrand(c->in_n[k], -1, 1);
        gd[k] = up(gh[k], c->in_n[k]);
    }
    MS_CHECK_OK(c->bwd(&cpu, c, gh));
    MS_CHECK_OK(g.bwd(&dut, &g, gd));
    MS_CHECK_OK(ms_dev_sync(&dut));
    for (int k = 0; k < c->n_in; k++) {
        snprintf(name, sizeof name, "%s bwd %s", c->name, gname[k]);
        cmp(name, gd[k], gh[k], c->in_n[k], c->cu_bwd[k].nmse > 0 ? c->cu_bwd[k] : c->cu_bwd[0]);
    }
    release_all();
    opc_free(c);
}

/* ---- attention rows -------------------------------------------------------------------------------------------- */

/* The row's descriptor with its index lists and tables on the device (aliases kept: self-attention shares them). */
static ms_attention_desc att_upload(const ms_attention_desc *d, int64_t nq_rows, int64_t nk_rows)
{
    ms_attention_desc g = *d;
    int64_t G = d->n_groups;
    g.q_off = d->q_off ? up_i(d->q_off, G + 1) : NULL;
    g.q_idx = d->q_idx ? up_i(d->q_idx, d->q_off[G]) : NULL;
    g.k_off = d->k_off == d->q_off ? g.q_off : d->k_off ? up_i(d->k_off, G + 1) : NULL;
    g.k_idx = d->k_idx == d->q_idx ? g.q_idx : d->k_idx ? up_i(d->k_idx, d->k_off[G]) : NULL;
    g.q_row = d->q_row ? up_i(d->q_row, nq_rows) : NULL;
    g.q_col = d->q_col ? up_i(d->q_col, nq_rows) : NULL;
    g.k_row = d->k_row == d->q_row ? g.q_row : d->k_row ? up_i(d->k_row, nk_rows) : NULL;
    g.k_col = d->k_col == d->q_col ? g.q_col : d->k_col ? up_i(d->k_col, nk_rows) : NULL;
    g.rel_h = d->rel_h ? up(d->rel_h, d->len_h * d->head_dim) : NULL;
    g.rel_w = d->rel_w ? up(d->rel_w, d->len_w * d->head_dim) : NULL;
    return g;
}

static void run_att(const att_row *row, ms_device *ad, const char *vname, ms_opc_tol tol)
{
    att_case c = {0};
    row->build(row, &c, &rng);
    ms_attention_desc *d = &c.d;
    const int64_t H = d->n_heads, hd = d->head_dim, D = H * hd, nq = c.nq_rows, nk = c.nk_rows;
    const int64_t nqf = c.packed ? nq * 3 * D : nq * d->ldq, nkf = nk * d->ldk, nvf = nk * d->ldv;
    char name[160];
    float *q = hrand(nqf, -1, 1), *k = c.packed ? q + D : hrand(nkf, -1, 1), *v = c.packed ? q + 2 * D : hrand(nvf, -1, 1);
    for (int64_t r = 0; c.pad && r < nq; r++) /* SAM's pad tokens: all equal to the last row (the qkv bias) */
        if (c.pad[r]) memcpy(q + r * 3 * D, q + nq * 3 * D - 3 * D, (size_t)(3 * D) * sizeof(float));
    if (d->rel_h) {
        d->rel_h = hrand(d->len_h * hd, -0.5f, 0.5f);
        d->rel_w = hrand(d->len_w * hd, -0.5f, 0.5f);
    }
    float *out = hrand(nq * d->ldo, -1, 1), *lse = hrand(nq * H, -1, 1);
    ms_attention_desc dg = att_upload(d, nq, nk);
    float *gq = up(q, nqf), *gk = c.packed ? gq + D : up(k, nkf), *gv = c.packed ? gq + 2 * D : up(v, nvf);
    float *gout = up(out, nq * d->ldo), *glse = up(lse, nq * H);
    MS_CHECK_OK(ms_attention_forward(&cpu, out, lse, q, k, v, d));
    MS_CHECK_OK(ms_attention_forward(ad, gout, glse, gq, gk, gv, &dg));
    MS_CHECK_OK(ms_dev_sync(ad)); /* another stream than the copies' */
    snprintf(name, sizeof name, "att%s %s fwd out", vname, row->name);
    cmp(name, gout, out, nq * d->ldo, tol);
    snprintf(name, sizeof name, "att%s %s fwd lse", vname, row->name);
    cmp(name, glse, lse, nq * H, tol);

    /* backward from the CPU's forward (out, lse), so both backends see equal inputs */
    float *dout = hrand(nq * d->ldo, -1, 1), *dq = hrand(nqf, -1, 1);
    float *dk = c.packed ? dq + D : hrand(nkf, -1, 1), *dv = c.packed ? dq + 2 * D : hrand(nvf, -1, 1);
    float *drh = d->rel_h ? hrand(d->len_h * hd, -1, 1) : NULL, *drw = d->rel_h ? hrand(d->len_w * hd, -1, 1) : NULL;
    float *gdout = up(dout, nq * d->ldo), *gdq = up(dq, nqf), *gdk = c.packed ? gdq + D : up(dk, nkf);
    float *gdv = c.packed ? gdq + 2 * D : up(dv, nvf);
    float *gdrh = drh ? up(drh, d->len_h * hd) : NULL, *gdrw = drw ? up(drw, d->len_w * hd) : NULL;
    float *gout_c = up(out, nq * d->ldo), *glse_c = up(lse, nq * H);
    MS_CHECK_OK(ms_attention_backward(&cpu, dq, dk, dv, drh, drw, dout, out, lse, q, k, v, d));
    MS_CHECK_OK(ms_attention_backward(ad, gdq, gdk, gdv, gdrh, gdrw, gdout, gout_c, glse_c, gq, gk, gv, &dg));
    MS_CHECK_OK(ms_dev_sync(ad));
    if (c.packed) {
        snprintf(name, sizeof name, "att%s %s bwd dqkv", vname, row->name);
        cmp(name, gdq, dq, nqf, tol);
    } else {
        snprintf(name, sizeof name, "att%s %s bwd dq", vname, row->name);
        cmp(name, gdq, dq, nqf, tol);
        snprintf(name, sizeof name, "att%s %s bwd dk", vname, row->name);
        cmp(name, gdk, dk, nkf, tol);
        snprintf(name, sizeof name, "att%s %s bwd dv", vname, row->name);
        cmp(name, gdv, dv, nvf, tol);
    }
    if (drh) {
        snprintf(name, sizeof name, "att%s %s bwd drel_h", vname, row->name);
        cmp(name, gdrh, drh, d->len_h * hd, tol);
        snprintf(name, sizeof name, "att%s %s bwd drel_w", vname, row->name);
        cmp(name, gdrw, drw, d->len_w * hd, tol);
        /* determinism of the drel partial tables: run again from the same start, expect identical bits */
        float *again = up(drh, d->len_h * hd), *again2 = up(drh, d->len_h * hd);
        MS_CHECK_OK(ms_attention_backward(ad, NULL, NULL, NULL, again, NULL, gdout, gout_c, glse_c, gq, gk, gv, &dg));
        MS_CHECK_OK(ms_attention_backward(ad, NULL, NULL, NULL, again2, NULL, gdout, gout_c, glse_c, gq, gk, gv, &dg));
        MS_CHECK_OK(ms_dev_sync(ad));
        float *b1 = down(again, d->len_h * hd), *b2 = down(again2, d->len_h * hd);
        MS_CHECK(!memcmp(b1, b2, (size_t)(d->len_h * hd) * sizeof(float)), "attention %s drel_h not deterministic",
                 row->name);
    }
    release_all();
    att_free(&c);
}

/* The bf16 pass's tolerance of a table row (see the top of this file). */
static void bf16_tolerance(opcase *c)
{
    if (c->ref != ref_matmul && c->ref != ref_linear) return; /* precision-independent ops keep theirs */
    ms_opc_tol bias_grad = TOL_SUM_;
    c->cu_fwd = c->cu_bwd[0] = c->cu_bwd[1] = TOL_BF16_GEMM;
    if (c->n_in > 2) c->cu_bwd[2] = bias_grad;
}

/* ---- optimiser (not table rows: state over steps, a double result) -------------------------------------------- */
static void t_optim(void)
{
    int64_t n = 100003;
    float *p = hrand(n, -1, 1), *g = hrand(n, -1, 1), *m = hrand(n, -0.1f, 0.1f), *v = hrand(n, 0, 0.01f);
    float *gp = up(p, n), *gg = up(g, n), *gm = up(m, n), *gv = up(v, n);
    ms_opc_tol t = {1e-9, 1e-4};
    for (int step = 1; step <= 3; step++) {
        MS_CHECK_OK(ms_adamw_step(&cpu, p, g, m, v, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.05f, step));
        MS_CHECK_OK(ms_adamw_step(&dut, gp, gg, gm, gv, n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.05f, step));
    }
    cmp("adamw p (3 steps)", gp, p, n, t);
    cmp("adamw m", gm, m, n, t);
    cmp("adamw v", gv, v, n, t);
    double sc = 1.5, sg = 1.5, sg2 = 1.5;
    MS_CHECK_OK(ms_sumsq(&cpu, &sc, g, n));
    MS_CHECK_OK(ms_sumsq(&dut, &sg, gg, n));
    MS_CHECK_OK(ms_sumsq(&dut, &sg2, gg, n));
    MS_CHECK(fabs(sg - sc) <= 1e-10 * fabs(sc), "sumsq gpu %.17g cpu %.17g", sg, sc);
    MS_CHECK(sg == sg2, "sumsq not deterministic: %.17g vs %.17g", sg, sg2);
    printf("  %-40s rel=%.2e %s\n", "sumsq (+deterministic)", fabs(sg - sc) / fabs(sc), sg == sg2 ? "ok" : "FAIL");
    MS_CHECK_OK(ms_scale_inplace(&cpu, g, 0.37f, n));
    MS_CHECK_OK(ms_scale_inplace(&dut, gg, 0.37f, n));
    cmp("scale_inplace", gg, g, n, TOL_EXACT_);
    /* adamw_multi: one launch over 4 tensors (sizes across chunk edges, one of 1 element, one without decay) */
    enum { NT = 4 };
    const int64_t sz[NT] = {1, MS_ADAMW_CHUNK + 3, 3 * MS_ADAMW_CHUNK, 777};
    ms_adamw_tensor th[NT], td[NT];
    for (int i = 0; i < NT; i++) {
        float *hp = hrand(sz[i], -1, 1), *hg = hrand(sz[i], -1, 1), *hm = hrand(sz[i], -0.1f, 0.1f),
              *hv = hrand(sz[i], 0, 0.01f);
        float wd = i == 2 ? 0.f : 0.05f;
        td[i] = (ms_adamw_tensor){up(hp, sz[i]), up(hg, sz[i]), up(hm, sz[i]), up(hv, sz[i]), sz[i], wd};
        th[i] = (ms_adamw_tensor){hp, hg, hm, hv, sz[i], wd};
    }
    ms_adamw_plan pc = {0}, pd = {0};
    MS_CHECK_OK(ms_adamw_plan_init(&pc, &cpu, th, NT));
    MS_CHECK_OK(ms_adamw_plan_init(&pd, &dut, td, NT));
    for (int step = 1; step <= 3; step++) {
        MS_CHECK_OK(ms_adamw_multi(&cpu, &pc, 1e-3f * step, 0.9f, 0.999f, 1e-8f, step));
        MS_CHECK_OK(ms_adamw_multi(&dut, &pd, 1e-3f * step, 0.9f, 0.999f, 1e-8f, step));
    }
    for (int i = 0; i < NT; i++) {
        char lab[64];
        snprintf(lab, sizeof lab, "adamw_multi p, tensor %d (n %lld)", i, (long long)sz[i]);
        cmp(lab, td[i].p, th[i].p, sz[i], t);
        cmp("adamw_multi m", td[i].m, th[i].m, sz[i], t);
        cmp("adamw_multi v", td[i].v, th[i].v, sz[i], t);
    }
    ms_adamw_plan_free(&pc);
    ms_adamw_plan_free(&pd);
    release_all();
}

/* ---- timings (MS_TEST_BENCH=1) ------------------------------------------------------------------------------------ */
#define TIME_MS(label, reps, stmt, flops)                                                                   \
    do {                                                                                                   \
        for (int w_ = 0; w_ < 2; w_++) stmt;                                                               \
        MS_CHECK_OK(ms_dev_sync(ad));                                                                      \
        double best_ = 1e30;                                                                               \
        for (int r_ = 0; r_ < (reps); r_++) {                                                              \
            double t0_ = ms_now_s();                                                                       \
            stmt;                                                                                          \
            MS_CHECK_OK(ms_dev_sync(ad));                                                                  \
            double t_ = (ms_now_s() - t0_) * 1e3;                                                          \
            if (t_ < best_) best_ = t_;                                                                    \
        }                                                                                                  \
        printf("BENCH %-44s %9.3f ms  %7.2f TFLOP/s\n", label, best_, (flops) / (best_ * 1e9));            \
    } while (0)

static void bench(ms_device *ad, const char *tag)
{
    if (ad == &dut) { /* GEMM 4096x768x2304 (the qkv projection of 4096 tokens), once */
        int64_t M = 4096, K = 768, N = 2304;
        float *x = up(hrand(M * K, -1, 1), M * K), *w = up(hrand(N * K, -1, 1), N * K), *y = up(hrand(M * N, -1, 1), M * N);
        TIME_MS("linear fwd 4096x768 -> 2304 (fp32)", 10, ms_linear_forward(ad, y, x, w, NULL, M, K, N),
                2.0 * M * N * K);
        ad->precision = MS_PREC_BF16; /* cuBLASLt, the operands' conversion included */
        TIME_MS("linear fwd 4096x768 -> 2304 (bf16)", 10, ms_linear_forward(ad, y, x, w, NULL, M, K, N),
                2.0 * M * N * K);
        ad->precision = MS_PREC_FP32;
    }
    /* attention, dim 768, 12 heads: 25 windows of 14x14 with rel-pos; 1 global 64x64 with rel-pos */
    int cfgs[2][3] = {{25, 14, 14}, {1, 64, 64}};
    for (int c = 0; c < 2; c++) {
        int64_t G = cfgs[c][0], gh = cfgs[c][1], gw = cfgs[c][2], per = gh * gw, n = G * per;
        int H = 12, hd = 64, Dm = H * hd;
        int64_t lh = 2 * gh - 1, lw = 2 * gw - 1;
        int32_t *qr = malloc((size_t)n * sizeof(int32_t)), *qc = malloc((size_t)n * sizeof(int32_t));
        for (int64_t i = 0; i < n; i++) { qr[i] = (int32_t)((i % per) / gw); qc[i] = (int32_t)(i % gw); }
        float *qkv = up(hrand(n * 3 * Dm, -1, 1), n * 3 * Dm), *o = up(hrand(n * Dm, -1, 1), n * Dm);
        float *l = up(hrand(n * H, -1, 1), n * H), *dqkv = up(hrand(n * 3 * Dm, -1, 1), n * 3 * Dm);
        float *rh = up(hrand(lh * hd, -0.5f, 0.5f), lh * hd), *rw = up(hrand(lw * hd, -0.5f, 0.5f), lw * hd);
        float *drh = up(hrand(lh * hd, -1, 1), lh * hd), *drw = up(hrand(lw * hd, -1, 1), lw * hd);
        ms_attention_desc d = {0};
        d.n_groups = G; d.n_heads = H; d.head_dim = hd; d.scale = 0.125f; d.nq = per; d.nk = per;
        d.ldq = d.ldk = d.ldv = 3 * Dm; d.ldo = Dm;
        d.rel_h = rh; d.rel_w = rw; d.len_h = lh; d.len_w = lw;
        d.q_row = d.k_row = up_i(qr, n); d.q_col = d.k_col = up_i(qc, n);
        double fl = 4.0 * G * H * (double)per * per * hd;
        char label[96];
        snprintf(label, sizeof label, "attention%s fwd %lldx%lld tok, relpos", tag, (long long)G, (long long)per);
        TIME_MS(label, 10, ms_attention_forward(ad, o, l, qkv, qkv + Dm, qkv + 2 * Dm, &d), fl);
        snprintf(label, sizeof label, "attention%s bwd %lldx%lld tok, relpos", tag, (long long)G, (long long)per);
        TIME_MS(label, 5,
                ms_attention_backward(ad, dqkv, dqkv + Dm, dqkv + 2 * Dm, drh, drw, o, o, l, qkv, qkv + Dm,
                                      qkv + 2 * Dm, &d),
                2.5 * fl);
        d.rel_h = d.rel_w = NULL;
        snprintf(label, sizeof label, "attention%s fwd %lldx%lld tok, no relpos", tag, (long long)G, (long long)per);
        TIME_MS(label, 10, ms_attention_forward(ad, o, l, qkv, qkv + Dm, qkv + 2 * Dm, &d), fl);
        snprintf(label, sizeof label, "attention%s bwd %lldx%lld tok, no relpos", tag, (long long)G, (long long)per);
        TIME_MS(label, 5,
                ms_attention_backward(ad, dqkv, dqkv + Dm, dqkv + 2 * Dm, NULL, NULL, o, o, l, qkv, qkv + Dm,
                                      qkv + 2 * Dm, &d),
                2.5 * fl);
        free(qr);
        free(qc);
    }
    release_all();
}

int main(void)
{
    const char *tw = getenv("MS_TEST_OPS_TWIN");
    int cpu_twin = tw && !strcmp(tw, "cpu");
#ifndef MS_HAVE_CUDA
    if (!cpu_twin) {
        printf("test_ops_cuda: this build has no CUDA backend: skipped\n");
        return MS_TEST_SKIP;
    }
#endif
    if (!cpu_twin && !ms_cuda_available()) {
        printf("test_ops_cuda: no CUDA device visible: skipped\n");
        return MS_TEST_SKIP;
    }
    uint64_t seed = ms_test_seed();
    ms_rng_init(&rng, seed, 7);
    if (ms_device_init(&cpu, MS_DEV_CPU, 0) ||
        ms_device_init_at(&dut, cpu_twin ? MS_DEV_CPU : MS_DEV_CUDA, 0, cpu_twin ? 1 : 0)) {
        printf("device init failed: %s\n", ms_errmsg()); /* a visible GPU that will not open is a failure */
        return 1;
    }
    if (!cpu_twin) { /* variant 1 of the attention kernels is chosen at init */
        setenv("MS_KERNEL_ATTENTION", "1", 1);
        MS_CHECK_OK(ms_device_init_at(&dut_v1, MS_DEV_CUDA, 0, 0));
        unsetenv("MS_KERNEL_ATTENTION");
    }
    printf("device under test: %s\n", cpu_twin ? "CPU, 1 thread (MS_TEST_OPS_TWIN=cpu)" : "CUDA 0");
    static opcase rows[OPC_MAX];
    int n = opc_table(rows, OPC_MAX);
    for (int i = 0; i < n; i++) run_row(&rows[i], seed, i);
    t_optim();
    int na;
    const att_row *att = att_table(&na);
    for (int var = 0; var < (cpu_twin ? 1 : 2); var++)
        for (int i = 0; i < na; i++) run_att(&att[i], var ? &dut_v1 : &dut, var ? "v1" : "v2", TOL_ATT);

    printf("precision bf16 (reference: the CPU's bf16 emulation)\n");
    cpu.precision = dut.precision = dut_v1.precision = MS_PREC_BF16;
    n = opc_table(rows, OPC_MAX);
    for (int i = 0; i < n; i++) {
        bf16_tolerance(&rows[i]);
        run_row(&rows[i], seed, i);
    }
    for (int var = 0; var < (cpu_twin ? 1 : 2); var++)
        for (int i = 0; i < na; i++) run_att(&att[i], var ? &dut_v1 : &dut, var ? "v1 bf16" : "v2 bf16", TOL_ATT_BF16);
    cpu.precision = dut.precision = dut_v1.precision = MS_PREC_FP32;
    const char *b = getenv("MS_TEST_BENCH");
    if (!cpu_twin && b && !strcmp(b, "1")) {
        bench(&dut, "");
        bench(&dut_v1, "(v1)");
    }
    if (!cpu_twin) ms_device_free(&dut_v1);
    ms_device_free(&dut);
    ms_device_free(&cpu);
    return ms_test_done();
}
