/* checkpoints/runlog.h — what a run writes for people to watch it: RUN/log.jsonl (one JSON object per line, keys
 * of docs/CLI.md §RUN/ layout) and TensorBoard event files RUN/tb/events.out.tfevents.* with the same scalars,
 * written by mrisam itself (TFRecord framing with masked CRC32C around tensorboard.Event protobuf messages; no
 * TensorFlow needed). Both files are appended and flushed after every record, so a killed run keeps everything logged
 * before.
 */
#ifndef MS_RUNLOG_H
#define MS_RUNLOG_H

#include <stdint.h>
#include <stdio.h>

#include "base/status.h"

typedef struct ms_runlog {
    FILE *jsonl;
    FILE *tb;
} ms_runlog;

/* Opens (appends to) RUN/log.jsonl and a new RUN/tb/events.out.tfevents.<time>.mrisam file. */
ms_status ms_runlog_open(ms_runlog *l, const char *run);
void ms_runlog_close(ms_runlog *l);
/* Appends one JSON line (the caller formats the object, e.g. "{\"step\": 3, \"loss\": 0.5}"). */
ms_status ms_runlog_json(ms_runlog *l, const char *json_object);
/* One scalar to TensorBoard. */
ms_status ms_runlog_scalar(ms_runlog *l, const char *tag, int64_t step, double value);

/* CRC-32C (Castagnoli), as TFRecord uses it. */
uint32_t ms_crc32c(uint32_t crc, const void *data, size_t n);

#endif
