/* checkpoints/rundir.h — the RUN/ directory of pretrain and finetune (docs/CLI.md §RUN/ layout): crash-safe files and
 * checkpoint step directories.
 *
 * A checkpoint is RUN/ckpt/step_%08d/: its files are written and fsynced, then DONE is written last and the
 * directory and its parent are fsynced; a directory without DONE is incomplete and ignored (and removed by the next
 * prune). Resume takes the newest directory with DONE. Single files (config.json, exports) are written to a
 * temporary name, fsynced and renamed, so a crash leaves either the old or the new file, never half of one.
 */
#ifndef MS_RUNDIR_H
#define MS_RUNDIR_H

#include <stddef.h>
#include <stdint.h>

#include "base/dist.h"   /* checkpoints written by the ranks of a job */
#include "base/fileio.h" /* mkdirs, atomic writes, read_file, fsync, dir swap/remove */
#include "base/path.h"   /* MS_PATH_MAX */
#include "base/status.h"

/* How a run starts in its RUN/ directory. A fresh run needs RUN/ absent or empty, so two runs never mix (the old
 * checkpoints would win keep-last, logs would interleave); resume continues what is there; overwrite starts again
 * over an old run, but only where every entry of RUN/ is one a run writes (run_dir_entry in rundir.c: config.json,
 * log.jsonl, shots.json, sam_mri_*.pth/.safetensors, tb/, ckpt/, val/, best/, best.tmp/ and the temporaries
 * "<file>.tmp.<pid>" of an interrupted write), so it never removes a user's other files. */
typedef enum ms_run_mode { MS_RUN_FRESH, MS_RUN_RESUME, MS_RUN_OVERWRITE } ms_run_mode;

/* The mode of a run writing into out: resume (NULL: none) names the run whose checkpoint it continues from; the same
 * directory as out (however spelled) is MS_RUN_RESUME, another one starts out afresh. MS_EINVAL when overwrite and
 * resume name the same run. */
ms_status ms_run_mode_of(const char *out, const char *resume, int overwrite, ms_run_mode *mode);
/* Whether a run may start in RUN/ in mode, touching nothing (call it before any expensive work). MS_EINVAL, one
 * line: "RUN: not empty (a run is there): --resume RUN to continue it, --overwrite to start again" for a fresh run
 * over a run; "RUN: not empty (holds NAME, which no run writes): ..." for a fresh run or an overwrite over other
 * files; "RUN: not a directory". */
ms_status ms_run_dir_check(const char *run, ms_run_mode mode);
/* ms_run_dir_check, then (overwrite) removes every entry of RUN/, (resume) removes what a killed run was writing
 * (the temporaries "<file>.tmp.<pid>" in RUN/ and RUN/val/, best.tmp/), then creates RUN/. Call it just before the
 * run's first write, when the inputs (weights or a split file inside the old RUN/) have been read. */
ms_status ms_run_dir_prepare(const char *run, ms_run_mode mode);

/* Reads and parses a JSON file (config.json, state.json, meta.json, shots.json): "path: not valid JSON" when it does
 * not parse. The caller owns *out (cJSON_Delete). */
struct cJSON;
ms_status ms_read_json(const char *path, size_t max_len, struct cJSON **out);

/* RUN/ckpt/step_%08d into out[MS_PATH_MAX] (creating RUN/ckpt/ and the step directory). */
ms_status ms_ckpt_dir_create(const char *run, int64_t step, char *out);
/* After a failed write into a step directory (full disk, I/O error): removes the directory, which holds no DONE
 * yet, and returns rc with its message (the write's error, naming the file), whatever the removal does. */
ms_status ms_ckpt_dir_abandon(const char *step_dir, ms_status rc);
/* One checkpoint written by the ranks of a job (d NULL: one process): rank 0 makes RUN/ckpt/step_%08d/; with
 * each_rank, every rank then writes its own part into it (a barrier first, so the folder exists); rank 0 writes the
 * rest (rank0); after a barrier that every rank reaches once its part is written, rank 0 writes DONE and prunes to
 * keep_last. A failed write on rank 0 removes the directory; any failure is returned, and the caller ends the job
 * (ms_dist_close(d, 1)), so no rank waits at a barrier for ever and no checkpoint looks complete without all parts. */
typedef ms_status (*ms_ckpt_writer)(void *ctx, const char *step_dir);
ms_status ms_ckpt_dir_save(const char *run, int64_t step, ms_dist *d, ms_ckpt_writer each_rank, ms_ckpt_writer rank0,
                           void *ctx, int keep_last);
/* Writes DONE into a finished step directory and fsyncs it and its parent. */
ms_status ms_ckpt_dir_commit(const char *step_dir);
/* The newest complete checkpoint: its step and directory (into out[MS_PATH_MAX]). MS_ENOTFOUND when there is none. */
ms_status ms_ckpt_dir_latest(const char *run, int64_t *step, char *out);
/* Keeps the newest keep_last complete checkpoints (and `protect`, if >= 0), removes older ones and every incomplete
 * directory. */
ms_status ms_ckpt_dir_prune(const char *run, int keep_last, int64_t protect);

#endif
