/* tools/bench.h — the sub-benchmarks of `mrisam bench <name>`, one tools/bench_<name>.c each.
 * Each is called with argv[0] = "<name>" and the remaining arguments, parses its own options (cli.h) and returns
 * an exit code (0 ok, 1 failure, 2 usage). To add one: declare it here and add a row to the table in
 * tools/cmd_bench.c. */
#ifndef MS_TOOLS_BENCH_H
#define MS_TOOLS_BENCH_H

int ms_bench_ops(int argc, char **argv);     /* tools/bench_ops.c: GEMM + attention vs PyTorch */
int ms_bench_loader(int argc, char **argv);  /* tools/bench_loader.c: streaming loader vs PyTorch DataLoader */
/* int ms_bench_ingest(int argc, char **argv);   tools/bench_ingest.c (to come) */
int ms_bench_mae(int argc, char **argv);     /* tools/bench_mae.c: one MAE training step vs the PyTorch reference step */
int ms_bench_sam(int argc, char **argv);     /* tools/bench_sam.c: SAM encoder forward/backward vs PyTorch */
int ms_bench_finetune(int argc, char **argv); /* tools/bench_finetune.c: finetune step per method x scope */

#endif
