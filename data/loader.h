/* data/loader.h — the streaming loader: stores → selected records → seeded, sharded order → worker threads that
 * decode, augment and preprocess into a ring of preallocated batches → the consumer, in order.
 *
 * Determinism: batch (epoch, step) of rank r is a pure function of the configuration — record choice from
 * data/sampler.h, augmentation from ms_rng_stream(seed', epoch, position) — so the same seed gives the same
 * batches with 1 or 16 threads, W ranks together see what one process with the global batch sees, and resuming
 * from a saved ms_loader_state reproduces the uninterrupted run exactly.
 * Back-pressure: `ring` batch buffers are allocated once (pinned host memory when cfg.pinned); workers fill at most
 * ring−1 batches ahead of the one the consumer holds, so memory is bounded and nothing queues without limit.
 * Corrupt records (checksum or format failure) are reported with their key, counted and replaced by the next record
 * of the same store (deterministically); they never stop the run. Other failures (I/O, memory) stop the loader and
 * are returned by ms_loader_next.
 * LMDB allows one environment per store per process: when several loaders read one store (train and validation,
 * or ranks simulated in one process), open it once with ms_store_open and pass the handle in cfg.stores.
 */
#ifndef MS_LOADER_H
#define MS_LOADER_H

#include <stdint.h>

#include "augment/augment.h"
#include "base/status.h"
#include "data/preprocess.h"
#include "data/sampler.h"
#include "data/store.h"
#include "prep.h"

/* MS_LOAD_NATIVE_AUG: the native slices as MS_LOAD_NATIVE plus each sample's drawn flip and crop box (the MAE
 * augmentation, same random keys as MS_LOAD_MODEL), for the prep op (kernels/prep.h) to resample on the device:
 * ms_prep_native on the batch gives MS_LOAD_MODEL's image bit for bit. Images only (no labels); the augmentation
 * may hold only the flip and RandomResizedCrop. */
enum { MS_LOAD_MODEL = 0, MS_LOAD_NATIVE = 1, MS_LOAD_NATIVE_AUG = 2 };

#define MS_LOADER_STATE_MAGIC 0x534c534du /* "MSLS" */

/* The loader's resume state: a plain struct of fixed-width fields, stored in checkpoints as is. */
typedef struct ms_loader_state {
    uint32_t magic, version;
    uint64_t seed;
    uint64_t epoch, step;  /* the next batch to be delivered */
    uint64_t n_records;    /* selected records over all stores: resuming on other data is refused */
    uint32_t global_batch, world;
    uint64_t skipped;      /* corrupt records met so far */
} ms_loader_state;

typedef void (*ms_corrupt_fn)(void *ctx, int store, uint64_t key, const char *message);

typedef struct ms_loader_config {
    int n_stores;
    const char *store_paths[MS_ORDER_MAX_SOURCES];
    ms_store *stores[MS_ORDER_MAX_SOURCES];            /* already open (not owned) or NULL: open store_paths */
    const ms_selection *selection[MS_ORDER_MAX_SOURCES]; /* records to use (not owned) or NULL: every slice */
    double weights[MS_ORDER_MAX_SOURCES];             /* sampling weights; all 0 = proportional to size */
    int labeled_only;      /* with a NULL selection: only volumes that have labels */
    uint64_t seed;
    int shuffle;           /* 0: sequential order, for validation */
    uint64_t epoch_len;    /* positions per epoch; 0 = all selected records */
    int drop_last;         /* drop the last partial global batch of an epoch */
    int n_epochs;          /* 0 = endless; otherwise ms_loader_next ends after this many epochs */
    int global_batch, rank, world;
    int n_threads;         /* worker threads (>= 1) */
    int ring;              /* batch buffers; 0 = 3 */
    int pinned;            /* allocate the ring with ms_host_alloc_pinned (CUDA backend) */
    int output;            /* MS_LOAD_MODEL: preprocessed floats; MS_LOAD_NATIVE(_AUG): decoded uint16 slices */
    ms_prep_config prep;
    int labels;            /* deliver label maps */
    const uint16_t *label_map[MS_ORDER_MAX_SOURCES]; /* per store: 65536-entry value → class table, or NULL */
    int augment;
    ms_aug_config aug;
    const ms_loader_state *resume; /* start from this state (NULL = epoch 0, step 0) */
    ms_corrupt_fn on_corrupt;      /* NULL: one line on stderr */
    void *on_corrupt_ctx;
} ms_loader_config;

/* Defaults: one store slot, shuffle, drop_last, batch 1, world 1, 1 thread, 1024 SAM preprocessing, no augment. */
void ms_loader_config_default(ms_loader_config *c);

typedef struct ms_batch {
    int n;                    /* samples of this rank in this batch (may be < global_batch/world at an epoch end) */
    uint64_t epoch, step;     /* step = global batch index within the epoch */
    /* MS_LOAD_MODEL: image [n][channels][size][size] floats, label [n][label_size][label_size] */
    int channels, size, label_size;
    float *image;
    uint16_t *label;          /* NULL without labels */
    /* MS_LOAD_NATIVE: [n][native_h][native_w] uint16, each slice top-left, zero padded */
    int native_h, native_w;
    uint16_t *native, *native_label;
    ms_prep_sample *prep;     /* MS_LOAD_NATIVE_AUG: [n] slice size, flip and crop box (channels, size are set) */
    /* per sample */
    int32_t *height, *width;  /* native: the slice size; model and native_aug: the frame the image fills */
    uint64_t *key;            /* store key actually read */
    int32_t *source;          /* store index */
    uint64_t *position;       /* epoch position */
    uint8_t *valid;           /* 0 when no readable record was found (sample zeroed) */
    int n_skipped;            /* corrupt records met while filling this batch */
} ms_batch;

typedef struct ms_loader ms_loader;

ms_status ms_loader_open(const ms_loader_config *cfg, ms_loader **out);
/* The next batch in order (blocks until ready); *out = NULL after the last epoch. The batch stays valid until the
 * next call (it is then returned to the ring). */
ms_status ms_loader_next(ms_loader *L, const ms_batch **out);
/* State for resuming after the batches delivered so far. */
void ms_loader_state_get(const ms_loader *L, ms_loader_state *st);
uint64_t ms_loader_steps_per_epoch(const ms_loader *L);
uint64_t ms_loader_n_records(const ms_loader *L);
uint64_t ms_loader_skipped(ms_loader *L);
void ms_loader_close(ms_loader *L);

/* Splits one store's volumes (reads their infos and calls ms_split_volumes). */
ms_status ms_loader_select(ms_store *s, const ms_split_spec *sp, ms_selection *train, ms_selection *val,
                           int *single_volume);

#endif
