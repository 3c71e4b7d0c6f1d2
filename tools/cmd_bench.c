/* tools/cmd_bench.c — `mrisam bench <name> [options]`: dispatches to the sub-benchmark named by the first
 * positional argument (tools/bench.h). Each sub-benchmark measures ours and its baseline side by side in the same
 * run (docs/PERFORMANCE.md §How figures are taken) and prints a table; `mrisam bench <name> --help` lists its
 * options. */
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "cli.h"

typedef struct bench_entry {
    const char *name;
    const char *summary;
    int (*fn)(int argc, char **argv);
} bench_entry;

/* Add new sub-benchmarks here (and declare them in bench.h). */
static const bench_entry benches[] = {
    {"ops", "GEMM and attention (SAM ViT-B shapes) GFLOP/s vs PyTorch, 1 and 2 threads", ms_bench_ops},
    {"loader", "streaming loader slices/s (decode, MAE aug to 256/1024) vs PyTorch DataLoader, 1 and 2 threads", ms_bench_loader},
    /* {"ingest", "...", ms_bench_ingest}, */
    {"mae", "one MAE training step (vit_test, vit_b at 256) img/s vs the PyTorch reference step", ms_bench_mae},
    {"sam", "SAM image encoder CPU s/image, forward and forward+backward (vit_b 1024, vit_test) vs PyTorch", ms_bench_sam},
    {"finetune", "a fine-tuning step per method x scope (vit_test 256) slices/s vs PyTorch, 1 and 2 threads",
     ms_bench_finetune},
    {"memory", "the largest batch per model (vit_b/l/h at 1024) on an 80 GB card, with and without --recompute",
     ms_bench_memory},
};
static const int n_benches = (int)(sizeof benches / sizeof benches[0]);

static void usage(FILE *f)
{
    fprintf(f, "usage: mrisam bench <name> [options]   (mrisam bench <name> --help for its options)\n\n"
               "Benchmarks, each against its baseline in the same run:\n");
    for (int i = 0; i < n_benches; i++) fprintf(f, "  %-10s %s\n", benches[i].name, benches[i].summary);
}

static int run(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? MS_EXIT_USAGE : MS_EXIT_OK;
    }
    for (int i = 0; i < n_benches; i++)
        if (!strcmp(benches[i].name, argv[1])) return benches[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "mrisam bench: unknown benchmark '%s'\n", argv[1]);
    usage(stderr);
    return MS_EXIT_USAGE;
}

const ms_command ms_cmd_bench = {"bench", "run a benchmark against its baseline (ops, ...)", run};
