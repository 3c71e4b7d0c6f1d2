/* data/store_write.h — the write side of the slice store, used by `mrisam ingest` (one writer thread).
 *
 * Workers encode records (ms_store_encode: zstd frame with content size + checksum, optional byte-plane shuffle,
 * crc32c of the raw pixels) with their own ZSTD_CCtx; the writer thread then commits one volume per LMDB write
 * transaction (ms_store_writer_add): volume record, its slice and label records, the source's progress record and
 * the counts, all or nothing. A process killed at any moment therefore leaves whole volumes only, and a rerun
 * skips sources whose progress record exists. The writer re-reads the counts inside each transaction, so two
 * ingests into one store serialise on LMDB's writer lock without clobbering each other.
 */
#ifndef MS_STORE_WRITE_H
#define MS_STORE_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <zstd.h>

#include "base/status.h"

typedef struct ms_store_writer ms_store_writer;

typedef struct ms_store_rec {
    uint8_t *data; /* malloc'ed: 44-byte header + zstd frame; volume id and header crc are filled by the writer */
    size_t len;
} ms_store_rec;

/* Encodes a uint16 (dtype 1), uint8 (dtype 2) or int16 (dtype 3, given as its bits) slice. flags (data/store_fmt.h):
 * MS_REC_SHUFFLED stores the low-byte plane then the high-byte plane (16-bit only), which compresses noisy stored
 * values far better; MS_REC_STORED marks layout-2 stored values. */
ms_status ms_store_encode(ZSTD_CCtx *cctx, int level, int flags, int dtype, const void *pixels, uint32_t height,
                          uint32_t width, const float spacing[2], uint32_t slice_index, ms_store_rec *out);

/* Opens (creating when absent) the store directory. params_json: the content-determining options; a store created
 * with other options is refused (MS_EINVAL), so a store never mixes normalisations or axes. created_json: kept on
 * creation only (tool version, zstd level, ...). */
ms_status ms_store_writer_open(const char *path, const char *params_json, const char *created_json,
                               ms_store_writer **out);
/* The same with the first map size given (bytes, >= 64 KiB; ms_store_writer_open uses 256 MiB). Tests use a small
 * one to exercise the growth on MDB_MAP_FULL. An existing larger map is kept. */
ms_status ms_store_writer_open_map(const char *path, const char *params_json, const char *created_json,
                                   size_t initial_map, ms_store_writer **out);
/* The same with the layout of a new store given (initial_map 0: the default): 1 (normalised pixels, as stores written before layout 2) or 2; 0
 * is the current one (2). An existing store keeps its own; naming another layout for it is refused. */
ms_status ms_store_writer_open_as(const char *path, const char *params_json, const char *created_json,
                                  size_t initial_map, int layout, ms_store_writer **out);
/* Flushes (mdb_env_sync) and closes; returns the flush status. */
ms_status ms_store_writer_close(ms_store_writer *w);
/* The store's format version (data/store_fmt.h): 2 for a new store, 1 for a layout-1 store being extended. */
int ms_store_writer_layout(const ms_store_writer *w);
/* 1 when a progress record `source_key` exists, 0 otherwise. Not while another thread may grow the map. */
int ms_store_writer_has_source(ms_store_writer *w, const char *source_key);
/* Every progress record key, sorted (strcmp order), as one malloc'ed array of malloc'ed strings. Workers consult
 * this snapshot instead of the environment, since the writer may resize the map only with no transaction open. */
ms_status ms_store_writer_source_keys(ms_store_writer *w, char ***keys, size_t *n);
ms_status ms_store_writer_set_label_names(ms_store_writer *w, const char *text);
/* A meta entry's text (malloc'ed; *out NULL when absent), and one written in its own transaction. */
ms_status ms_store_writer_get_meta(ms_store_writer *w, const char *name, char **out);
ms_status ms_store_writer_set_meta(ms_store_writer *w, const char *name, const char *text);

typedef struct ms_store_counts {
    uint64_t volumes, slices, label_slices, skipped_empty, nan_inf, sources;
} ms_store_counts;

/* Commits one volume: `vol` (a JSON object; the writer adds "id", "first_key" and "n_slices"), n slice records and
 * either n label records or labels == NULL. source_key: the progress record written in the same transaction;
 * done_key (may be NULL): a second progress record (the whole file is done) in the same transaction.
 * skipped_empty and nan_inf add to the store's counts. When source_key already exists (another run committed it)
 * nothing is written and *dup = 1. The map grows by doubling on MDB_MAP_FULL. */
ms_status ms_store_writer_add(ms_store_writer *w, cJSON *vol, ms_store_rec *slices, ms_store_rec *labels, uint32_t n,
                              const char *source_key, const char *done_key, uint64_t skipped_empty, uint64_t nan_inf,
                              uint32_t *volume_id, int *dup);
/* Writes a progress record alone (a file that produced no volume, e.g. every frame already stored). */
ms_status ms_store_writer_mark(ms_store_writer *w, const char *source_key);
ms_status ms_store_writer_counts(ms_store_writer *w, ms_store_counts *out);

#endif
