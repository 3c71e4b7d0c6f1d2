/* tools/cmd_verify.c — `mrisam verify STORE`: decompresses every slice and label record, checks the header crc,
 * the pixel crc, zstd's own checksum, sizes and key ranges; lists every bad key; exit 1 when any is bad. A set of
 * shards is checked shard by shard (bad records named by shard folder and the shard's own key). */
#include <inttypes.h>
#include <stdio.h>

#include "cli.h"
#include "data/store.h"

static void on_bad(void *ctx, const char *db, uint64_t key, const char *reason)
{
    printf("%s: %s key %" PRIu64 ": %s\n", (const char *)ctx, db, key, reason);
}

static int run(int argc, char **argv)
{
    static const ms_cmd_help h = {"mrisam verify STORE",
                                  "Reads and checks every record of the store; prints one line per corrupt record and "
                                  "exits 1 when there is any.",
                                  NULL};
    int threads = 0;
    const ms_opt opts[] = {{"threads", MS_OPT_INT, &threads, "N", "accepted for uniformity (this command is I/O-bound and single-threaded)"},
                           {0}};
    ms_strlist pos = {0};
    int rc = ms_cli_parse(&h, opts, argc, argv, &pos);
    if (rc) {
        ms_strlist_free(&pos);
        return rc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    }
    if (pos.n != 1) {
        fprintf(stderr, "mrisam verify: expected one STORE\n");
        ms_strlist_free(&pos);
        return MS_EXIT_USAGE;
    }
    ms_store *s = NULL;
    ms_status st = ms_store_open(pos.v[0], 4, &s);
    uint64_t n = 0, bad = 0;
    if (!st) st = ms_store_verify(s, on_bad, pos.v[0], &n, &bad);
    if (!st && ms_store_n_shards(s))
        printf("%s: a set of %d shards (ID %s): %" PRIu64 " records checked, %" PRIu64 " corrupt\n", pos.v[0],
               ms_store_n_shards(s), ms_store_id(s), n, bad);
    else if (!st)
        printf("%s: %" PRIu64 " records checked, %" PRIu64 " corrupt\n", pos.v[0], n, bad);
    ms_store_close(s);
    ms_strlist_free(&pos);
    if (st) return ms_cli_report("verify", st);
    return bad ? MS_EXIT_FAIL : MS_EXIT_OK;
}

const ms_command ms_cmd_verify = {"verify", "check every record of a slice store", run};
