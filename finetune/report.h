/* finetune/report.h — `mrisam report` (docs/CLI.md "report"): one self-contained folder with an index.html that
 * tells a run's story: the MAE pretraining (loss curve, reconstruction panels), the comparison of starting points
 * written by `mrisam compare` (validation Dice curves, a Dice table per class, paired differences with their
 * intervals) and segmentation overlays of one predicted volume.
 *
 * Curves are drawn by gnuplot (Debian's gnuplot-nox, run without a shell as data/dicom.c runs dcm2niix) into SVG
 * files next to the page, with the data and script behind each one; overlays are PNGs drawn here from the volumes.
 * The page references nothing outside its folder (no network, no script). Every string that reaches the HTML is
 * escaped; every string that reaches a gnuplot script is quoted and printed literally (noenhanced).
 *
 * An input that is not given, or a section whose files are absent, is left out with a note in the page; a file that
 * is present but malformed is an error naming it. The folder is built beside DIR and swapped in whole, so a failed
 * report leaves an earlier one as it was.
 */
#ifndef MS_REPORT_H
#define MS_REPORT_H

#include "base/status.h"

typedef struct ms_report_opts {
    const char *pretrain; /* an MAE run directory (log.jsonl, val/step_*.png, config.json), or NULL */
    const char *compare;  /* what `mrisam compare` wrote (results.csv, summary.csv, paired.csv, compare.json), or NULL */
    const char *predict;  /* an input volume (NIfTI), or NULL */
    const char *seg;      /* the label volume `mrisam predict` wrote for it (with predict) */
    const char *gt;       /* reference labels on the same grid, or NULL */
    const char *names;    /* label names for the overlays' legend: lines "value name" (ingest's --label-names), or NULL */
    const char *gnuplot;  /* the gnuplot executable, or NULL: "gnuplot" on PATH */
} ms_report_opts;

/* Writes dir/index.html and its files. */
ms_status ms_report_write(const char *dir, const ms_report_opts *o);

/* --- shared by report.c and report_fig.c --- */
typedef struct ms_buf ms_buf;
/* printf into a buffer (allocation failures are sticky in the buffer). */
void ms_report_printf(ms_buf *b, const char *fmt, ...) MS_PRINTF(2, 3);
/* s HTML-escaped (& < > " ') into b. */
void ms_report_html(ms_buf *b, const char *s);

/* One curve: n points (x[i], y[i]) with a legend title; style picks gnuplot's line type (same style, same colour). */
typedef struct ms_report_series {
    const char *title;
    int style;
    int n;
    const double *x, *y;
} ms_report_series;

/* Draws the series into dir/<name>.svg with gnuplot; dir/<name>.dat and dir/<name>.gp keep the data and the
 * script. dir must be absolute. */
ms_status ms_report_plot(const char *gnuplot, const char *dir, const char *name, const char *title,
                         const char *xlabel, const char *ylabel, const ms_report_series *s, int n_series);

/* Overlays of seg (and gt's contours) on vol: 3 axial PNGs dir/overlay_<k>.png (k = 0, 1, 2) through the labelled
 * part of the volume; html gets their <figure>s, a legend and, with gt, a per-label Dice table over the volume. */
ms_status ms_report_overlays(const char *dir, const char *vol, const char *seg, const char *gt, const char *names,
                             ms_buf *html);

#endif
