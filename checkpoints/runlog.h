/* checkpoints/runlog.h — what a run writes for people to watch it: RUN/log.jsonl (one JSON object per line, keys
 * of docs/CLI.md §RUN/ layout) and TensorBoard event files RUN/tb/events.out.tfevents.* with the same scalars,
 * written by mrisam itself (TFRecord framing with masked CRC32C around tensorboard.Event protobuf messages; no
 * TensorFlow needed). Both files are appended and flushed after every record, so a killed run keeps everything logged
 * before. A resumed run first drops what its checkpoint superseded (ms_runlog_rewind), so log.jsonl stays one clean
 * sequence of steps and TensorBoard one curve.
 */
#ifndef MS_RUNLOG_H
#define MS_RUNLOG_H

#include <stdint.h>
#include <stdio.h>

#include "base/path.h" /* MS_PATH_MAX */
#include "base/status.h"

typedef struct ms_runlog {
    FILE *jsonl;
    FILE *tb;
    char jsonl_path[MS_PATH_MAX], tb_path[MS_PATH_MAX]; /* for the messages (a full disk names the file) */
} ms_runlog;

/* Opens (appends to) RUN/log.jsonl and a new RUN/tb/events.out.tfevents.<time>.mrisam file. */
ms_status ms_runlog_open(ms_runlog *l, const char *run);
void ms_runlog_close(ms_runlog *l);
/* A run continues from a checkpoint at step from - 1 (a resume, or a rollback): the steps logged after it are
 * superseded. Rewrites log.jsonl without the lines whose "step" is >= from and without a torn last line (the kept
 * lines go to a temporary, fsynced and renamed over it, so a crash leaves the old or the new log), and writes a
 * SessionLog START event at step `from` into the event file: TensorBoard then drops every event of the run's
 * earlier files at a step >= from (its restart purge, tensorboard/backend/event_processing/event_accumulator.py),
 * so it shows one curve. */
ms_status ms_runlog_rewind(ms_runlog *l, int64_t from);
/* Appends one JSON line (the caller formats the object, e.g. "{\"step\": 3, \"loss\": 0.5}"). */
ms_status ms_runlog_json(ms_runlog *l, const char *json_object);
/* One scalar to TensorBoard. */
ms_status ms_runlog_scalar(ms_runlog *l, const char *tag, int64_t step, double value);

/* CRC-32C (Castagnoli), as TFRecord uses it. */
uint32_t ms_crc32c(uint32_t crc, const void *data, size_t n);

#endif
