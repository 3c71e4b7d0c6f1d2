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

#include "base/fileio.h" /* mkdirs, atomic writes, read_file, fsync, dir swap/remove */
#include "base/path.h"   /* MS_PATH_MAX */
#include "base/status.h"

/* Reads and parses a JSON file (config.json, state.json, meta.json, shots.json): "path: not valid JSON" when it does
 * not parse. The caller owns *out (cJSON_Delete). */
struct cJSON;
ms_status ms_read_json(const char *path, size_t max_len, struct cJSON **out);

/* RUN/ckpt/step_%08d into out[MS_PATH_MAX] (creating RUN/ckpt/ and the step directory). */
ms_status ms_ckpt_dir_create(const char *run, int64_t step, char *out);
/* Writes DONE into a finished step directory and fsyncs it and its parent. */
ms_status ms_ckpt_dir_commit(const char *step_dir);
/* The newest complete checkpoint: its step and directory (into out[MS_PATH_MAX]). MS_ENOTFOUND when there is none. */
ms_status ms_ckpt_dir_latest(const char *run, int64_t *step, char *out);
/* Keeps the newest keep_last complete checkpoints (and `protect`, if >= 0), removes older ones and every incomplete
 * directory. */
ms_status ms_ckpt_dir_prune(const char *run, int keep_last, int64_t protect);

#endif
