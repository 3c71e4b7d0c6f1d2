/* data/sampler.h — which records the loader reads, and in which order, with no per-record list in memory.
 *
 * Selection: the records of one store that take part (a split, a few-shot subset) as a short sorted list of key
 * ranges; record i of the selection is found by binary search over the ranges' prefix sums.
 * Order: a seeded bijection of [0, n) per epoch (a 4-round Feistel network over the next power of 4 with cycle
 * walking), so an epoch visits every selected record exactly once and nothing is stored per record. Several stores
 * are mixed by weight with a fixed quota per block of MS_ORDER_BLOCK positions (slots shuffled within a block), so
 * each store is still walked through a permutation of its own and the mix is exact over every block.
 * Sharding: global batch g holds epoch positions [g·B, (g+1)·B); rank r of W takes positions g·B + r + k·W. Each
 * sample's augmentation is keyed by (seed, epoch, position), so W ranks together see what one process with batch B
 * sees, whatever the number of threads.
 * Splits are by volume, never by slice; a single labelled volume is split into contiguous slice blocks separated
 * by a gap (docs/CLI.md §finetune). Splits and few-shot subsets are saved to JSON (the key ranges themselves) and
 * reused exactly.
 */
#ifndef MS_SAMPLER_H
#define MS_SAMPLER_H

#include <stdint.h>

#include "base/status.h"
#include "data/store.h"

/* ---- seeded permutation ------------------------------------------------------------------------------------- */
typedef struct ms_perm {
    uint64_t n;          /* domain [0, n) */
    int half_bits;       /* the Feistel network permutes [0, 4^half_bits) ⊇ [0, n) */
    uint64_t keys[4];
} ms_perm;

void ms_perm_init(ms_perm *p, uint64_t n, uint64_t key);
/* The image of i (< n) under the permutation; a bijection of [0, n). */
uint64_t ms_perm_apply(const ms_perm *p, uint64_t i);

/* ---- selection: key ranges of one store ------------------------------------------------------------------------ */
typedef struct ms_key_range {
    uint64_t first, count;
} ms_key_range;

typedef struct ms_selection {
    int n_ranges, cap;
    ms_key_range *ranges; /* sorted by first, non-overlapping */
    uint64_t *prefix;     /* prefix[i] = records in ranges [0, i); valid after ms_selection_finish */
    uint64_t n;           /* total records */
} ms_selection;

/* Appends [first, first + count) (count 0 is ignored). Ranges may come in any order; finish sorts and merges. */
ms_status ms_selection_add(ms_selection *s, uint64_t first, uint64_t count);
/* Sorts, merges adjacent ranges, rejects overlaps, builds the prefix sums. */
ms_status ms_selection_finish(ms_selection *s);
/* Removes the keys of ex (finished) from s (finished), which stays finished. */
ms_status ms_selection_subtract(ms_selection *s, const ms_selection *ex);
/* Key of record i (< s->n). */
uint64_t ms_selection_key(const ms_selection *s, uint64_t i);
/* out = n records of s (finished) spread evenly over it: record floor((j + 1/2) * s->n / n) for j < n; all of s
 * when n >= s->n. A validation set drawn this way covers a held-out volume end to end instead of its first slices. */
ms_status ms_selection_spread(const ms_selection *s, uint64_t n, ms_selection *out);
/* 1 when key is selected. */
int ms_selection_contains(const ms_selection *s, uint64_t key);
void ms_selection_free(ms_selection *s);

/* ---- splits and few-shot subsets --------------------------------------------------------------------------------- */
enum { MS_SHOT_SLICE = 0, MS_SHOT_VOLUME = 1 };

typedef struct ms_split_spec {
    double val_fraction;  /* share of volumes (or, with one volume, of slices) held out; 0 = no validation set */
    uint64_t seed;        /* split and shot seed */
    int gap;              /* slices between train and val blocks in the single-volume case (>= 8) */
    int labeled_only;     /* only volumes that have labels take part */
    int shots;            /* > 0: keep this many training slices (or volumes) */
    int shot_unit;        /* MS_SHOT_SLICE or MS_SHOT_VOLUME */
    /* keys that take part in neither train nor val (NULL: none), removed after the split: the slices another run
     * evaluates on (`mrisam compare` keeps the fine-tunes' held-out slices out of MAE pretraining) */
    const ms_selection *exclude;
} ms_split_spec;

void ms_split_spec_default(ms_split_spec *sp);

/* Splits the volumes of one store into train and val selections. *single_volume is set to 1 when only one volume
 * took part and the split is by slice blocks (the caller says so in logs). Pass val NULL to get train only. */
ms_status ms_split_volumes(const ms_volume_info *vols, int n_vols, const ms_split_spec *sp, ms_selection *train,
                           ms_selection *val, int *single_volume);

/* Split file (RUN/shots.json, --split FILE): {"version":1, "seed":S, "shots":K, "shot_unit":"slice"|"volume",
 * "single_volume":0|1, "stores":[{"path":P, "id":ID, "train":[[first,count],...], "val":[[first,count],...]}, ...]}.
 * "id" is the store's ID (ms_store_id_at; a set's for a set of shards), left out for a store without one. */
ms_status ms_split_save(const char *path, const ms_split_spec *sp, int n_stores, const char *const *store_paths,
                        const ms_selection *train, const ms_selection *val, const int *single_volume);
/* Reads store number `index` of a split file into train / val (either may be NULL). store_path is the run's store
 * (NULL: not checked), n_keys its record count (0: not checked). Refused, with "<path>: <reason>": a version other
 * than 1, shots that are not a non-negative integer, a range that is not a [first key, count] pair of non-negative
 * integers or reaches key n_keys, ranges that overlap (within train or val, or val with train), an entry whose
 * "id" is not the ID of the store at store_path, and an entry without "id" (an older file) whose "path" names
 * another store (docs/CLI.md §Split files says how stores are matched). */
ms_status ms_split_load(const char *path, int index, const char *store_path, uint64_t n_keys, ms_selection *train,
                        ms_selection *val);

/* ---- epoch order over one or more selections ------------------------------------------------------------------- */
#define MS_ORDER_MAX_SOURCES 16
#define MS_ORDER_BLOCK 4096

typedef struct ms_order {
    int n_sources;
    uint64_t n[MS_ORDER_MAX_SOURCES];  /* records per source */
    int quota[MS_ORDER_MAX_SOURCES];   /* slots per block (several sources only) */
    uint64_t seed;
    int shuffle;                       /* 0: sequential order (validation) */
    uint64_t epoch_len;                /* positions per epoch */
} ms_order;

/* weights may be NULL (proportional to size). epoch_len 0 = the sum of the sources' sizes. */
ms_status ms_order_init(ms_order *o, int n_sources, const uint64_t *n, const double *weights, uint64_t seed,
                        int shuffle, uint64_t epoch_len);
/* The record at position pos (< epoch_len) of epoch `epoch`: source and index in that source's selection. */
void ms_order_at(const ms_order *o, uint64_t epoch, uint64_t pos, int *source, uint64_t *index);

/* Epoch position of the k-th sample of rank `rank` in global batch g (global batch B, W ranks, B % W == 0). */
static inline uint64_t ms_shard_position(uint64_t g, int global_batch, int rank, int world, int k)
{
    return g * (uint64_t)global_batch + (uint64_t)rank + (uint64_t)k * (uint64_t)world;
}

#endif
