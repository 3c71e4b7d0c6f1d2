/* tools/cmd_report.c — `mrisam report -o DIR [--pretrain RUN] [--compare OUT] [--predict VOL --seg SEG [--gt GT]]`:
 * one self-contained folder with index.html telling a run's story (finetune/report.h, docs/CLI.md "report"). */
#include <stdio.h>

#include "cli.h"
#include "finetune/report.h"

static int run(int argc, char **argv)
{
    static const ms_cmd_help h = {
        "mrisam report -o DIR [--pretrain RUN] [--compare OUT] [--predict VOL --seg SEG [--gt LABELS] [--label-names F]]",
        "Writes DIR/index.html and the files it shows: the MAE pretraining loss curve and reconstruction panels, the "
        "validation Dice curves, per-class Dice table and paired differences of `mrisam compare`, and overlays of a "
        "predicted label volume. Curves are drawn with gnuplot (Debian's gnuplot-nox). The folder needs nothing "
        "outside itself; a section without input is left out with a note. DIR is replaced whole.",
        "  mrisam report --pretrain demo-out/run --compare demo-out/compare --predict ch2.nii.gz \\\n"
        "      --seg demo-out/ch2_brain.nii.gz -o demo-out/report"};
    const char *out = NULL;
    ms_report_opts o = {0};
    const ms_opt opts[] = {
        {"out", MS_OPT_STR, &out, "DIR", "the report folder (replaced whole)"},
        {"o", MS_OPT_STR, &out, "DIR", "same as --out"},
        {"pretrain", MS_OPT_STR, &o.pretrain, "RUN", "an MAE pretraining run (log.jsonl, val/, config.json)"},
        {"compare", MS_OPT_STR, &o.compare, "OUT", "what `mrisam compare` wrote (results.csv, summary.csv, ...)"},
        {"predict", MS_OPT_STR, &o.predict, "VOL", "an input volume (NIfTI) for the overlays"},
        {"seg", MS_OPT_STR, &o.seg, "SEG", "the label volume `mrisam predict` wrote for --predict"},
        {"gt", MS_OPT_STR, &o.gt, "LABELS", "reference labels on the same grid (white outlines, Dice per label)"},
        {"label-names", MS_OPT_STR, &o.names, "FILE", "names of --seg's label values: lines \"value name\""},
        {"gnuplot", MS_OPT_STR, &o.gnuplot, "EXE", "the gnuplot to run (default: gnuplot on PATH)"},
        {0}};
    int rc = ms_cli_parse(&h, opts, argc, argv, NULL);
    if (rc) return rc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    if (!out) {
        fprintf(stderr, "mrisam report: -o DIR is required\n");
        return MS_EXIT_USAGE;
    }
    ms_status st = ms_report_write(out, &o);
    if (st) return ms_cli_report("report", st);
    printf("report: %s/index.html\n", out);
    return MS_EXIT_OK;
}

const ms_command ms_cmd_report = {"report", "an HTML report of a pretraining run, a comparison and a prediction", run};
