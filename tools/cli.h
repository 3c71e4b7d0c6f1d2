/* tools/cli.h — long-option parsing and --help for the mrisam subcommands.
 *
 * A command describes its options in a table of ms_opt (name without "--", type, destination, help). Both
 * "--name value" and "--name=value" work; MS_OPT_LIST options may repeat and collect every value. Positional
 * arguments are collected in order. ms_cli_parse prints --help itself and reports usage errors in one line.
 */
#ifndef MS_CLI_H
#define MS_CLI_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "base/device.h"
#include "base/dist.h"

typedef enum { MS_OPT_FLAG, MS_OPT_INT, MS_OPT_I64, MS_OPT_FLOAT, MS_OPT_STR, MS_OPT_LIST } ms_opt_type;

typedef struct ms_strlist {
    int n, cap;
    char **v;
} ms_strlist;

typedef struct ms_opt {
    const char *name;  /* "threads" for --threads */
    ms_opt_type type;
    void *dst;         /* int*, int64_t*, double*, const char**, ms_strlist* */
    const char *meta;  /* "N", "FILE", ... (NULL for flags) */
    const char *help;
} ms_opt;

typedef struct ms_cmd_help {
    const char *usage;    /* "mrisam ingest [options] SRC... -o STORE" */
    const char *summary;  /* one paragraph */
    const char *examples; /* may be NULL */
} ms_cmd_help;

enum { MS_CLI_OK = 0, MS_CLI_EXIT_OK = 1, MS_CLI_USAGE = 2 };

/* Parses argv[1..] (argv[0] is the command name). Returns MS_CLI_OK, MS_CLI_EXIT_OK (after --help) or
 * MS_CLI_USAGE (message printed). positional may be NULL when the command takes none. */
int ms_cli_parse(const ms_cmd_help *h, const ms_opt *opts, int argc, char **argv, ms_strlist *positional);
void ms_cli_print_help(const ms_cmd_help *h, const ms_opt *opts);
void ms_strlist_push(ms_strlist *l, const char *s);
void ms_strlist_free(ms_strlist *l);

/* The exit codes of docs/CLI.md §Exit codes: 0 ok, 1 failure, 2 usage, 75 interrupted but resumable. */
enum { MS_EXIT_OK = 0, MS_EXIT_FAIL = 1, MS_EXIT_USAGE = 2, MS_EXIT_RESUMABLE = 75 };
/* Prints "mrisam <cmd>: <message>" for a failed status and returns the matching exit code. */
int ms_cli_report(const char *cmd, int status);

/* Installs the SIGINT/SIGTERM handler of the long-running commands and returns the flag it sets: the command stops at
 * its next safe point (a run saves its checkpoint, ingest finishes the volume being written) and exits 75. A second
 * signal ends the process at once with status 128 + signal; what was committed stays valid. The flag is the CLI's one
 * piece of process state. */
volatile sig_atomic_t *ms_cli_catch_stop(void);

/* Data-parallel runs (docs/DISTRIBUTED.md): reads the launcher's environment (ms_dist_env_read), opens the device
 * ("cuda" without an ordinal: the local rank's GPU among the visible ones) with --precision (NULL: the kind's
 * default, ms_cli_set_precision) and joins the job with the given
 * --dist-timeout and bucket size. *d is NULL for a single process. Ranks other than 0 print nothing on stdout. */
ms_status ms_cli_dist_open(const char *device, const char *precision, int threads, double timeout_s, double bucket_mb,
                           ms_device *dev, ms_dist **d);

/* --precision (docs/CLI.md §Precision): sets dev->precision after the device is open; NULL (not given) takes
 * ms_precision_default of its kind (bf16 on CUDA, fp32 on the CPU). A bad name fails with MS_EINVAL. */
ms_status ms_cli_set_precision(ms_device *dev, const char *precision);
/* "cpu fp32", "cuda:0 bf16": the device and precision a run computes with, for its start-up line. */
const char *ms_cli_device_desc(const ms_device *dev, char *buf, size_t n);
#define MS_CLI_PRECISION_OPTION(precision)                                                                            \
    {"precision", MS_OPT_STR, precision, "fp32|bf16",                                                                 \
     "arithmetic of the GEMMs and attention (default: bf16 on cuda, fp32 on cpu; docs/CLI.md §Precision)"}

/* The options of data-parallel runs, one copy for the option tables of pretrain and finetune: pointers to the
 * device string, --dist-timeout and --bucket-mb (doubles) and the --zero1 flag (int). */
#define MS_CLI_DIST_OPTIONS(device, dist_timeout, bucket_mb, zero1)                                                   \
    {"device", MS_OPT_STR, device, "cpu|cuda",                                                                        \
     "compute device (default cpu; cuda under mpirun/srun: the local rank's GPU)"},                                   \
    {"dist-timeout", MS_OPT_FLOAT, dist_timeout, "S",                                                                 \
     "several ranks: fail when the others do not answer within S seconds (default 600)"},                             \
    {"bucket-mb", MS_OPT_FLOAT, bucket_mb, "MB", "several ranks: gradient all-reduce bucket size (default 25)"},     \
    {"zero1", MS_OPT_FLAG, zero1, NULL,                                                                               \
     "several ranks: each keeps the AdamW state of its 1/N of the parameters only (ZeRO-1)"}

/* Test hook (docs/CLI.md): with MRISAM_TEST_STOP="STEP,RANK" set, rank RANK (0 for one process) raises its own stop
 * flag once optimizer step STEP is done, as a signal arriving then would; the ranks agree on it in the next step. */
void ms_cli_test_stop(int64_t step, int rank, const volatile sig_atomic_t *stop);

/* A command: `mrisam NAME ...` runs fn(argc, argv) with argv[0] = NAME. Defined in tools/cmd_<name>.c as
 * const ms_command ms_cmd_<name> = { "name", "one-line summary", fn }; (name uses '-' where the file has '_'). */
typedef struct ms_command {
    const char *name;
    const char *summary;
    int (*fn)(int argc, char **argv);
} ms_command;

#endif
