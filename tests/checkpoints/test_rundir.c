/* tests/checkpoints/test_rundir.c — RUN/ directory mechanics: atomic files, step directories with DONE, latest
 * complete checkpoint, pruning, and the TensorBoard event framing (CRC-32C check value, record lengths). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoints/rundir.h"
#include "checkpoints/runlog.h"
#include "harness.h"

static int exists(const char *p) { return access(p, F_OK) == 0; }

int main(void)
{
    uint64_t seed = ms_test_seed();
    char run[256], p[MS_PATH_MAX], dir[MS_PATH_MAX];
    snprintf(run, sizeof run, "rundir_test_%llu/run", (unsigned long long)seed);
    MS_CHECK_OK(ms_mkdirs(run));

    /* atomic write replaces content and leaves no temporary file */
    snprintf(p, sizeof p, "%s/config.json", run);
    MS_CHECK_OK(ms_write_file_atomic(p, "{\"a\": 1}", 8));
    MS_CHECK_OK(ms_write_file_atomic(p, "{\"a\": 22}", 9));
    char *data;
    size_t len;
    MS_CHECK_OK(ms_read_file(p, 1 << 20, &data, &len));
    MS_CHECK(len == 9 && !strcmp(data, "{\"a\": 22}"), "atomic write content '%s'", data);
    free(data);
    MS_CHECK(ms_read_file(p, 4, &data, &len) == MS_EFORMAT, "size bound enforced");

    /* step directories: only committed ones count; prune keeps the newest k */
    int64_t step;
    MS_CHECK(ms_ckpt_dir_latest(run, &step, dir) == MS_ENOTFOUND, "no checkpoint yet");
    for (int s = 10; s <= 50; s += 10) {
        MS_CHECK_OK(ms_ckpt_dir_create(run, s, dir));
        MS_CHECK_OK(ms_path_join(p, dir, "model.bin"));
        MS_CHECK_OK(ms_write_file_atomic(p, "x", 1));
        if (s != 50) MS_CHECK_OK(ms_ckpt_dir_commit(dir)); /* step 50 "crashed" before DONE */
    }
    MS_CHECK_OK(ms_ckpt_dir_latest(run, &step, dir));
    MS_CHECK(step == 40, "latest complete step %lld, expected 40", (long long)step);
    MS_CHECK_OK(ms_ckpt_dir_prune(run, 2, 10));
    snprintf(p, sizeof p, "%s/ckpt/step_00000010/DONE", run);
    MS_CHECK(exists(p), "protected step kept");
    snprintf(p, sizeof p, "%s/ckpt/step_00000020", run);
    MS_CHECK(!exists(p), "old step pruned");
    snprintf(p, sizeof p, "%s/ckpt/step_00000030/DONE", run);
    MS_CHECK(exists(p), "newest two kept (30)");
    snprintf(p, sizeof p, "%s/ckpt/step_00000050", run);
    MS_CHECK(!exists(p), "incomplete step removed");

    /* CRC-32C check value and TFRecord framing */
    MS_CHECK(ms_crc32c(0, "123456789", 9) == 0xE3069283u, "crc32c check value %08x", ms_crc32c(0, "123456789", 9));
    ms_runlog lg;
    MS_CHECK_OK(ms_runlog_open(&lg, run));
    MS_CHECK_OK(ms_runlog_json(&lg, "{\"step\": 1, \"loss\": 0.5}"));
    MS_CHECK_OK(ms_runlog_scalar(&lg, "train/loss", 1, 0.5));
    MS_CHECK_OK(ms_runlog_scalar(&lg, "train/lr", 1, 1e-4));
    ms_runlog_close(&lg);
    snprintf(p, sizeof p, "%s/log.jsonl", run);
    MS_CHECK_OK(ms_read_file(p, 1 << 20, &data, &len));
    MS_CHECK(!strcmp(data, "{\"step\": 1, \"loss\": 0.5}\n"), "jsonl content");
    free(data);
    /* walk the records of the event file: 3 records, each length + masked crc + data + masked crc */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "ls %s/tb/events.out.tfevents.* > %s/tbname", run, run);
    MS_CHECK(system(cmd) == 0, "event file exists");
    snprintf(p, sizeof p, "%s/tbname", run);
    MS_CHECK_OK(ms_read_file(p, 4096, &data, &len));
    data[strcspn(data, "\n")] = 0;
    char *ev;
    size_t evlen;
    MS_CHECK_OK(ms_read_file(data, 1 << 20, &ev, &evlen));
    free(data);
    size_t off = 0;
    int records = 0, crc_ok = 1;
    while (off + 12 <= evlen) {
        uint64_t n;
        memcpy(&n, ev + off, 8);
        uint32_t c = ms_crc32c(0, ev + off, 8);
        uint32_t want;
        memcpy(&want, ev + off + 8, 4);
        crc_ok &= (((c >> 15) | (c << 17)) + 0xa282ead8u) == want;
        off += 12 + n + 4;
        records++;
    }
    MS_CHECK(records == 3 && off == evlen && crc_ok, "event records %d, framing ok %d", records, crc_ok);
    MS_CHECK(memmem(ev, evlen, "train/loss", 10) != NULL, "scalar tag written");
    free(ev);
    snprintf(cmd, sizeof cmd, "rm -rf rundir_test_%llu", (unsigned long long)seed);
    MS_CHECK(system(cmd) == 0, "cleanup");
    return ms_test_done();
}
