/* tools/bench_common.c — see bench.h: the process clock, the peak for MFU, device memory above the context, and the
 * cells and JSON lines of the training benchmarks. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

double ms_bench_process_age(void)
{
    FILE *f = fopen("/proc/self/stat", "r");
    char buf[1024];
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f) fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces; field 22 is starttime */
    unsigned long long start = 0;
    int field = 2;
    for (; p && *p && field < 22; p++)
        if (*p == ' ') field++;
    if (!p || sscanf(p, "%llu", &start) != 1) return -1;
    double up = -1;
    f = fopen("/proc/uptime", "r");
    if (!f || fscanf(f, "%lf", &up) != 1) up = -1;
    if (f) fclose(f);
    long tck = sysconf(_SC_CLK_TCK);
    return up < 0 || tck <= 0 ? -1 : up - (double)start / (double)tck;
}

double ms_bench_peak_tflops(const ms_device *dev, double given)
{
    if (given > 0) return given;
    if (dev->kind != MS_DEV_CUDA) return 0;
    return dev->precision == MS_PREC_BF16 ? 989 : 67;
}

size_t ms_bench_mem_above(ms_device *dev, size_t base)
{
    size_t used = 0, total = 0;
    if (dev->kind != MS_DEV_CUDA || ms_dev_mem_info(dev, &used, &total)) return 0;
    return used > base ? used - base : 0;
}

void ms_bench_cells(char *buf, size_t n, const ms_bench_result *r, double flops_per_img, double peak_tflops,
                    int cuda)
{
    double ips = r->batch / r->s_per_step;
    char mfu[32] = "-", mem[32] = "-";
    if (peak_tflops > 0) snprintf(mfu, sizeof mfu, "%.1f %%", 100 * ips * flops_per_img / (peak_tflops * 1e12));
    if (cuda) snprintf(mem, sizeof mem, "%.2f", r->peak_bytes / 1073741824.0);
    snprintf(buf, n, "%.3g | %s | %s | %.2f", ips, mfu, mem, r->first_s);
}

void ms_bench_json(const char *bench, const char *label, const ms_bench_result *r, double flops_per_img,
                   double peak_tflops, const ms_device *dev)
{
    double ips = r->batch / r->s_per_step;
    printf("{\"bench\": \"%s\", \"case\": \"%s\", \"device\": \"%s\", \"precision\": \"%s\", \"batch\": %d, "
           "\"img_per_s\": %.6g, \"tflop_per_img\": %.6g, \"mfu\": %.6g, \"peak_gib\": %.4f, \"first_step_s\": %.3f}\n",
           bench, label, dev->kind == MS_DEV_CUDA ? "cuda" : "cpu", ms_precision_name(dev->precision), r->batch, ips,
           flops_per_img / 1e12, peak_tflops > 0 ? ips * flops_per_img / (peak_tflops * 1e12) : -1.0,
           r->peak_bytes / 1073741824.0, r->first_s);
}
