/* tests/pretrain/mae_graph_run.h — shared by test_mae_graph.c (CPU) and test_mae_graph_cuda.c (GPU): a short MAE
 * run through the library (vit_test at 64 px, a small decoder, batch 2 with 2 accumulation steps, stratified masks)
 * on a given device, with or without CUDA graphs; what it records is compared bit for bit. */
#ifndef MS_TEST_MAE_GRAPH_RUN_H
#define MS_TEST_MAE_GRAPH_RUN_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/path.h"
#include "data/store_fixture.h"
#include "harness.h"
#include "pretrain/mae_run.h"

#define GR_MAX_STEPS 16

typedef struct gr_record {
    int steps;
    double loss[GR_MAX_STEPS], gnorm[GR_MAX_STEPS];
    float *block; /* the encoder's parameter block after the run */
    int64_t numel;
} gr_record;

/* A run of `steps` optimizer steps from the same random model (seed) into TMP/name. */
static ms_status gr_run(ms_device *dev, const char *tmp, const char *store, const char *name, uint64_t seed, int steps,
                        int graphs, gr_record *rec)
{
    char out[MS_PATH_MAX];
    MS_TRY(ms_path_join(out, tmp, name));
    ms_params ps;
    ms_sam_encoder enc;
    ms_sam_enc_config ec;
    ms_params_init(&ps);
    memset(&enc, 0, sizeof enc);
    memset(rec, 0, sizeof *rec);
    MS_TRY(ms_sam_enc_config_named("vit_test", &ec));
    MS_TRY(ms_sam_encoder_init(&enc, &ec, &ps, "image_encoder."));
    ms_status rc = ms_params_alloc(&ps, dev);
    if (!rc) rc = ms_sam_encoder_init_random(&enc, seed);
    ms_mae_run_config c;
    ms_mae_run_config_default(&c);
    c.n_stores = 1;
    c.stores[0] = store;
    c.workers = 1;
    c.out = out;
    c.model = "vit_test";
    c.init = "random";
    c.input_size = 64;
    c.batch = 2;
    c.accum = 2;
    c.max_steps = steps;
    c.warmup = 2;
    c.lr = 1e-3;
    c.clip = 1.0;
    c.seed = seed;
    c.dec_dim = 32;
    c.dec_depth = 1;
    c.dec_heads = 2;
    c.save_every = 1000;
    c.val_slices = 0;
    c.panels = 0;
    c.cuda_graphs = graphs;
    ms_mae_run *r = NULL;
    if (!rc) rc = ms_mae_run_open(&c, dev, &enc, &r);
    ms_mae_step_info in = {0};
    while (!rc && !in.done && rec->steps < GR_MAX_STEPS) {
        rc = ms_mae_run_step(r, &in);
        if (!rc && in.updated) {
            rec->loss[rec->steps] = in.loss;
            rec->gnorm[rec->steps++] = in.grad_norm;
        }
    }
    if (!rc) {
        rec->numel = ps.numel;
        rec->block = malloc((size_t)ps.numel * sizeof(float));
        if (!rec->block) rc = ms_error(MS_ENOMEM, "out of memory");
        else rc = ms_dev_to_host(dev, rec->block, ps.data, (size_t)ps.numel * sizeof(float));
    }
    ms_mae_run_close(r);
    ms_sam_encoder_free(&enc);
    ms_params_free(&ps);
    return rc;
}

/* Steps, losses, gradient norms and the final block equal bit for bit. */
static int gr_equal(const gr_record *a, const gr_record *b, const char *what)
{
    int ok = a->steps == b->steps && a->numel == b->numel && a->block && b->block;
    for (int i = 0; ok && i < a->steps; i++)
        ok = !memcmp(&a->loss[i], &b->loss[i], sizeof(double)) && !memcmp(&a->gnorm[i], &b->gnorm[i], sizeof(double));
    if (ok) ok = !memcmp(a->block, b->block, (size_t)a->numel * sizeof(float));
    MS_CHECK(ok, "%s: %d vs %d steps, last loss %.9g vs %.9g", what, a->steps, b->steps,
             a->steps ? a->loss[a->steps - 1] : 0.0, b->steps ? b->loss[b->steps - 1] : 0.0);
    return ok;
}

#endif
