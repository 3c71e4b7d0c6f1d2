/* tests/kernels/op_cases.h — the one op test table, as ggml's tests/test-backend-ops.cpp has it.
 *
 * Every row is one op case (shapes, parameters, input ranges) whose fwd/bwd call the dispatching ms_<op>()
 * (kernels/base/dispatch.h), so the same rows run on any backend:
 *   test_ops_a.c  CPU against the double-precision references (ref.c), rows of half 'a' (run_case)
 *   test_ops_b.c  the same for half 'b' (lin_run) and every attention row (att_run)
 *   test_ops_cuda.c  CUDA against the CPU, every row of both tables
 * Two tables: opcase rows (one buffer per input / output / gradient, refs in ref.c) and attention rows (a
 * builder fills an att_case: descriptor, index lists, packed qkv, pad tokens; the reference is att_ref in
 * test_ops_b.c). Inputs are random from an ms_rng the runner seeds (the seed is printed, MS_TEST_SEED replays).
 * The buffers of a row are allocated by opc_alloc on the host; a runner for another backend copies them over.
 */
#ifndef MS_TEST_OP_CASES_H
#define MS_TEST_OP_CASES_H

#include <stdint.h>

#include "base/rng.h"
#include "ops.h"

#define MAXIN 4
#define OPC_MAX 192 /* rows in the table, at most */

/* CUDA against CPU: NMSE = ‖gpu − cpu‖² / ‖cpu‖² and max-rel (|d| / (|cpu| + 1e-3·max|cpu|)) */
typedef struct { double nmse, max_rel; } ms_opc_tol;
#define TOL_EXACT_ ((ms_opc_tol){1e-12, 1e-6}) /* index maps, copies: bit-identical expected (x+0 vs fma slack) */
#define TOL_SUM_ ((ms_opc_tol){1e-9, 1e-3})   /* fp32 reductions and GEMMs, different summation orders */

typedef struct opcase opcase;
typedef void (*ref_fn)(const opcase *c, const double *const *in, double *out);
typedef ms_status (*fwd_fn)(ms_device *dev, opcase *c);
typedef ms_status (*bwd_fn)(ms_device *dev, opcase *c, float *const *g);
typedef void (*init_fn)(opcase *c, ms_rng *r);

struct opcase {
    const char *name;
    char half;             /* 'a': test_ops_a checks it against its reference, 'b': test_ops_b */
    int n_in;              /* differentiable inputs */
    int64_t in_n[MAXIN];
    float lo[MAXIN], hi[MAXIN];
    int64_t out_n;
    int op;                /* which op of a family (lin rows: OP_PART ...) */
    int64_t d[8];          /* sizes, op-specific */
    float f[2];            /* scalars, op-specific */
    double fwd_tol;        /* CPU vs reference; 0 = the runner's default */
    ms_matmul_desc md;
    int64_t aux_n[2];      /* sizes of aux0 / aux1 (0 = NULL) */
    int aux_out;           /* aux0/aux1 are saved outputs of the forward (layernorm mean/rstd) */
    int64_t lab_n;         /* size of lab (0 = NULL) */
    ms_opc_tol cu_fwd;     /* CUDA vs CPU: the forward output (and aux outputs) */
    ms_opc_tol cu_bwd[MAXIN]; /* CUDA vs CPU per gradient; a zero entry takes cu_bwd[0] */
    init_fn init;
    ref_fn ref;
    fwd_fn fwd;
    bwd_fn bwd;
    /* run-time buffers (host, or the backend's memory in a runner's copy of the row) */
    float *in[MAXIN];
    double *ind[MAXIN];    /* host double copies of in (opc_alloc) */
    float *out, *out0, *gout;
    float dloss;           /* gout[0] as a host value: the upstream scalar of the losses */
    float *aux0, *aux1;    /* saved tensors (LN mean/rstd) or per-row weights and targets (mse) */
    int32_t *lab;          /* labels / indices */
};

/* Fills rows (at most max) and returns how many. Rows are plain values: opc_alloc gives each its buffers. */
int opc_table(opcase *rows, int max);
/* Host buffers: out0/gout/in random (out0, gout in [-1,1], in[k] in [lo, hi]), aux/lab zeroed, then the row's
 * init (labels, indices, weights), dloss = gout[0], ind = double copies of in. opc_free releases them. */
void opc_alloc(opcase *c, ms_rng *r);
void opc_free(opcase *c);

/* The references (ref.c), one per op family, L(x) in double from in[] (and the row's lab/aux on the host). */
void ref_matmul(const opcase *c, const double *const *in, double *out);
void ref_linear(const opcase *c, const double *const *in, double *out);
void ref_layernorm(const opcase *c, const double *const *in, double *out);
void ref_layernorm2d(const opcase *c, const double *const *in, double *out);
void ref_batchnorm(const opcase *c, const double *const *in, double *out);
void ref_gelu(const opcase *c, const double *const *in, double *out);
void ref_relu(const opcase *c, const double *const *in, double *out);
void ref_softmax(const opcase *c, const double *const *in, double *out);
void ref_add(const opcase *c, const double *const *in, double *out);
void ref_add_bcast(const opcase *c, const double *const *in, double *out);
void ref_scale(const opcase *c, const double *const *in, double *out);
void ref_transpose(const opcase *c, const double *const *in, double *out);
void ref_gather(const opcase *c, const double *const *in, double *out);
void ref_reduce(const opcase *c, const double *const *in, double *out);
void ref_mse(const opcase *c, const double *const *in, double *out);
void ref_dice(const opcase *c, const double *const *in, double *out);
void ref_ce(const opcase *c, const double *const *in, double *out);
enum { OP_PART, OP_UNPART, OP_RELPOS, OP_BILINEAR, OP_BICUBIC, OP_PATCH, OP_CONV, OP_CT, OP_DW };
/* window partition/unpartition, rel_pos_resize, bilinear/bicubic, conv_patch, conv2d, conv_transpose2x2, depthwise
 * conv2d: in[0] = x, in[1] = w and in[2] = b where the row has them (n_in). */
void ref_lin(const opcase *c, const double *const *in, double *out);

/* ---- attention rows ------------------------------------------------------------------------------------------ */

typedef struct att_case {
    const char *name;
    ms_attention_desc d;                /* host descriptor; d.rel_h != NULL asks the runner for rel-pos tables */
    int64_t nq_rows, nk_rows;           /* rows in the q buffer and in the k/v buffers */
    int packed;                         /* q, k, v share one (rows, 3D) buffer (self-attention) */
    char *pad;                          /* rows that are pad tokens: they all get the same q/k/v (packed only) */
    int probes;                         /* finite-difference probes per input (CPU) */
    double fwd_rel, thread_rel;         /* CPU forward vs reference, 1 vs 2 threads (max_rel; 0 = 5e-4, 1e-5) */
    /* owned arrays */
    int32_t *q_off, *q_idx, *k_off, *k_idx, *q_row, *q_col, *k_row, *k_col;
} att_case;

typedef struct att_row att_row;
struct att_row {
    const char *name;
    void (*build)(const att_row *row, att_case *c, ms_rng *r);
    int p[9];                           /* builder parameters */
    int probes;
    double fwd_rel, thread_rel;         /* see att_case */
};

/* The attention rows; *n gets their count. */
const att_row *att_table(int *n);
void att_free(att_case *c);

#endif
