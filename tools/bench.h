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
int ms_bench_memory(int argc, char **argv);   /* tools/bench_memory.c: largest batch per model (count only) */

/* tools/bench_common.c: what the training benchmarks (mae, finetune) report beside images/s
 * (docs/PERFORMANCE.md §GPU acceptance). */
#include <stddef.h>

#include "base/device.h"

/* Seconds since this process started (/proc/self/stat against /proc/uptime, 10 ms ticks); the PyTorch baselines
 * measure their time to the first step the same way. Negative when unknown. */
double ms_bench_process_age(void);
/* The peak MFU is taken against, TFLOP/s: --peak-tflops when given (> 0), else 989 (H100 SXM dense bf16) for CUDA
 * bf16 and 67 (H100 SXM fp32) for CUDA fp32; 0 on the CPU (MFU not printed). */
double ms_bench_peak_tflops(const ms_device *dev, double given);
/* Device memory in use now minus base, bytes (CUDA); 0 on the CPU. */
size_t ms_bench_mem_above(ms_device *dev, size_t base);
/* What one configuration measured. */
typedef struct ms_bench_result {
    int batch;          /* images per step actually run (after halving on out-of-memory) */
    double s_per_step;  /* median (finetune) or mean (mae) seconds per step */
    double first_s;     /* process start to the end of the first step */
    size_t peak_bytes;  /* device memory above the context after the steps (CUDA) */
} ms_bench_result;
/* "img/s | MFU | peak GiB | first step s" cells of a table row; mfu "-" when peak_tflops is 0, memory "-" on the
 * CPU. flops_per_img: model FLOPs of one training step per image (pretrain/flops.h). */
void ms_bench_cells(char *buf, size_t n, const ms_bench_result *r, double flops_per_img, double peak_tflops,
                    int cuda);
/* One JSON line for scripts (tools/gpu/accept.sh): {"bench": ..., "case": ..., "batch": ..., "img_per_s": ...,
 * "mfu": ..., "peak_gib": ..., "first_step_s": ..., "tflop_per_img": ..., "precision": ...}. */
void ms_bench_json(const char *bench, const char *label, const ms_bench_result *r, double flops_per_img,
                   double peak_tflops, const ms_device *dev);

#endif
