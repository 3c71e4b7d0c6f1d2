/* finetune/report.c — see report.h. The page, its tables and the reading of the runs' files. */
#include "finetune/report.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/fileio.h"
#include "base/path.h"
#include "finetune/eval_run.h"

#define MAX_TEXT ((size_t)256 << 20) /* largest log or table read */

void ms_report_printf(ms_buf *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof small) {
        ms_buf_put(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    ms_buf_put(b, big, (size_t)n);
    free(big);
}

void ms_report_html(ms_buf *b, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '&': ms_buf_put(b, "&amp;", 5); break;
        case '<': ms_buf_put(b, "&lt;", 4); break;
        case '>': ms_buf_put(b, "&gt;", 4); break;
        case '"': ms_buf_put(b, "&quot;", 6); break;
        case '\'': ms_buf_put(b, "&#39;", 5); break;
        default: ms_buf_put(b, s, 1);
        }
    }
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* A note in place of a section that has no input. */
static void note(ms_buf *h, const char *what, const char *why)
{
    ms_report_printf(h, "<p class=\"note\">Not shown: ");
    ms_report_html(h, what);
    ms_report_printf(h, " (");
    ms_report_html(h, why);
    ms_report_printf(h, ").</p>\n");
}

/* ---- CSV (RFC 4180: quoted fields with "" for a quote; the first row names the columns) ------------------------- */

typedef struct csv {
    int ncol, nrow; /* rows after the header */
    char **cell;    /* (nrow + 1) · ncol, row 0 the header */
} csv;

static void csv_free(csv *t)
{
    for (int i = 0; t->cell && i < (t->nrow + 1) * t->ncol; i++) free(t->cell[i]);
    free(t->cell);
    memset(t, 0, sizeof *t);
}

/* The fields of the line at *p (advanced past it) into f[0..cap), their count into *n. */
static ms_status csv_line(const char *path, int line, const char **p, ms_buf *f, int cap, int *n)
{
    const char *s = *p;
    *n = 0;
    for (;;) {
        MS_FAIL_IF(*n >= cap, MS_EFORMAT, "%s: line %d has more than %d fields", path, line, cap);
        ms_buf *b = &f[(*n)++];
        b->n = 0;
        if (*s == '"') {
            for (s++;; s++) {
                MS_FAIL_IF(!*s, MS_EFORMAT, "%s: line %d: unterminated quoted field", path, line);
                if (*s == '"' && s[1] == '"') ms_buf_put(b, s++, 1);
                else if (*s == '"') break;
                else ms_buf_put(b, s, 1);
            }
            s++;
        } else {
            for (; *s && *s != ',' && *s != '\n' && *s != '\r'; s++) ms_buf_put(b, s, 1);
        }
        ms_buf_put(b, "", 1); /* the terminating NUL counts in n: strdup below sees a string */
        if (*s == ',') { s++; continue; }
        MS_FAIL_IF(*s && *s != '\n' && *s != '\r', MS_EFORMAT, "%s: line %d: text after a quoted field", path, line);
        if (*s == '\r') s++;
        if (*s == '\n') s++;
        *p = s;
        return MS_OK;
    }
}

/* Reads a whole CSV file; rows counted without the header. */
static ms_status csv_read(const char *path, csv *t)
{
    enum { CAP = 64 };
    char *text = NULL;
    size_t len = 0;
    memset(t, 0, sizeof *t);
    MS_TRY(ms_read_file(path, MAX_TEXT, &text, &len));
    ms_buf f[CAP] = {{0}};
    ms_status rc = MS_OK;
    int cap_rows = 0, line = 0, rows = 0; /* rows held, the header included */
    for (const char *p = text; *p && !rc;) {
        int n = 0;
        line++;
        if (*p == '\n' || *p == '\r') { p += *p == '\r' && p[1] == '\n' ? 2 : 1; continue; } /* blank line */
        if ((rc = csv_line(path, line, &p, f, CAP, &n))) break;
        if (!t->ncol) t->ncol = n;
        if (n != t->ncol) {
            rc = ms_error(MS_EFORMAT, "%s: line %d has %d fields, the header %d", path, line, n, t->ncol);
            break;
        }
        if (rows >= cap_rows) {
            cap_rows = cap_rows ? 2 * cap_rows : 64;
            char **c = realloc(t->cell, (size_t)cap_rows * t->ncol * sizeof *c);
            if (!c) { rc = ms_error(MS_ENOMEM, "%s: out of memory", path); break; }
            t->cell = c;
        }
        for (int i = 0; i < n; i++) {
            char *v = f[i].oom ? NULL : strdup((const char *)f[i].p);
            if (!v && !rc) rc = ms_error(MS_ENOMEM, "%s: out of memory", path);
            t->cell[(size_t)rows * t->ncol + i] = v;
        }
        rows++;
    }
    for (int i = 0; i < CAP; i++) ms_buf_free(&f[i]);
    free(text);
    t->nrow = rows - 1;
    if (!rc && rows == 0) rc = ms_error(MS_EFORMAT, "%s: empty (no header line)", path);
    if (rc) {
        t->nrow = rows ? rows - 1 : 0;
        if (!rows) t->ncol = 0;
        csv_free(t);
    }
    return rc;
}

static const char *csv_at(const csv *t, int row, int col) { return t->cell[(size_t)(row + 1) * t->ncol + col]; }

/* The columns names[0..n) (a comma-separated list) into col[]; a missing one is an error naming it. */
static ms_status csv_cols(const char *path, const csv *t, const char *names, int *col)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", names);
    int k = 0;
    for (char *save = NULL, *nm = strtok_r(buf, ",", &save); nm; nm = strtok_r(NULL, ",", &save), k++) {
        col[k] = -1;
        for (int i = 0; i < t->ncol; i++)
            if (!strcmp(t->cell[i], nm)) col[k] = i;
        MS_FAIL_IF(col[k] < 0, MS_EFORMAT, "%s: no column \"%s\" in the header", path, nm);
    }
    return MS_OK;
}

static ms_status parse_num(const char *path, int row, const char *s, double *v)
{
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    if (!*s) *v = NAN; /* an empty cell: no value (a metric that could not be computed) */
    else if (end == s || *end) return ms_error(MS_EFORMAT, "%s: row %d: \"%.40s\" is not a number", path, row + 2, s);
    return MS_OK;
}

/* ---- JSON lines ------------------------------------------------------------------------------------------------ */

/* Calls fn on every line of a .jsonl file that parses as an object; *skipped counts the others (a run killed while
 * writing leaves a cut last line). */
static ms_status jsonl_each(const char *path, int (*fn)(void *, const cJSON *), void *ctx, int *skipped)
{
    char *text = NULL;
    size_t len = 0;
    MS_TRY(ms_read_file(path, MAX_TEXT, &text, &len));
    *skipped = 0;
    ms_status rc = MS_OK;
    for (char *save = NULL, *ln = strtok_r(text, "\n", &save); ln && !rc; ln = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(ln);
        if (cJSON_IsObject(j)) {
            if (fn(ctx, j)) rc = ms_error(MS_ENOMEM, "%s: out of memory", path);
        } else {
            ++*skipped;
        }
        cJSON_Delete(j);
    }
    free(text);
    return rc;
}

/* A growable list of (x, y) points. */
typedef struct pts {
    int n, cap;
    double *x, *y;
} pts;

static int pts_add(pts *p, double x, double y)
{
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 64;
        double *nx = realloc(p->x, (size_t)cap * sizeof *nx);
        if (!nx) return 1;
        p->x = nx;
        double *ny = realloc(p->y, (size_t)cap * sizeof *ny);
        if (!ny) return 1;
        p->y = ny;
        p->cap = cap;
    }
    p->x[p->n] = x, p->y[p->n] = y, p->n++;
    return 0;
}

static void pts_free(pts *p)
{
    free(p->x);
    free(p->y);
    memset(p, 0, sizeof *p);
}

static double num(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static const char *str(const cJSON *j, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* ---- pretraining ----------------------------------------------------------------------------------------------- */

typedef struct loss_curves {
    pts train, val;
} loss_curves;

static int take_loss(void *ctx, const cJSON *j)
{
    loss_curves *c = ctx;
    const char *sp = str(j, "split");
    double step = num(j, "step"), loss = num(j, "loss");
    if (!sp || isnan(step) || isnan(loss)) return 0;
    if (!strcmp(sp, "train")) return pts_add(&c->train, step, loss);
    if (!strcmp(sp, "val")) return pts_add(&c->val, step, loss);
    return 0;
}

static int is_panel(const char *name) { return !strncmp(name, "step_", 5) && ms_str_ends_with(name, ".png"); }

/* Copies a file into the report folder. */
static ms_status copy_file(const char *from, const char *to)
{
    char *data = NULL;
    size_t len = 0;
    MS_TRY(ms_read_file(from, MAX_TEXT, &data, &len));
    ms_status rc = ms_write_file_atomic(to, data, len);
    free(data);
    return rc;
}

/* A JSON file shown whole (pretty-printed, escaped) in a closed <details>. */
static ms_status json_details(ms_buf *h, const char *path, const char *summary)
{
    char *text = NULL;
    size_t len = 0;
    MS_TRY(ms_read_file(path, MAX_TEXT, &text, &len));
    cJSON *j = cJSON_Parse(text);
    free(text);
    MS_FAIL_IF(!j, MS_EFORMAT, "%s: not valid JSON", path);
    char *pretty = cJSON_Print(j);
    cJSON_Delete(j);
    MS_FAIL_IF(!pretty, MS_ENOMEM, "%s: out of memory", path);
    ms_report_printf(h, "<details><summary>");
    ms_report_html(h, summary);
    ms_report_printf(h, "</summary><pre>");
    ms_report_html(h, pretty);
    ms_report_printf(h, "</pre></details>\n");
    free(pretty);
    return MS_OK;
}

/* Up to three reconstruction panels (the first, a middle and the last validation) copied in as recon_<k>.png. */
static ms_status panels(ms_buf *h, const char *run, const char *dir)
{
    char vdir[MS_PATH_MAX];
    MS_TRY(ms_path_join(vdir, run, "val"));
    if (!ms_path_is_dir(vdir)) {
        note(h, "reconstruction panels", "the run has no val/ folder");
        return MS_OK;
    }
    char **names = NULL;
    int n = 0;
    MS_TRY(ms_path_list(vdir, is_panel, &names, &n)); /* step_%08d: name order is step order */
    if (!n) note(h, "reconstruction panels", "no val/step_*.png in the run");
    int pick[3] = {0, n / 2, n - 1}, last = -1;
    ms_status rc = MS_OK;
    ms_report_printf(h, "<div class=\"row\">\n");
    for (int k = 0; k < 3 && n && !rc; k++) {
        if (pick[k] == last) continue;
        last = pick[k];
        char from[MS_PATH_MAX], to[MS_PATH_MAX], name[32];
        snprintf(name, sizeof name, "recon_%d.png", k);
        rc = ms_path_join(from, vdir, names[pick[k]]);
        if (!rc) rc = ms_path_join(to, dir, name);
        if (!rc) rc = copy_file(from, to);
        if (rc) break;
        long long step = atoll(names[pick[k]] + 5);
        ms_report_printf(h, "<figure><img class=\"panel\" src=\"%s\" alt=\"reconstruction at step %lld\">"
                            "<figcaption>held-out slices at step %lld</figcaption></figure>\n", name, step, step);
    }
    ms_report_printf(h, "</div>\n");
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

static ms_status section_pretrain(ms_buf *h, const char *run, const char *dir, const char *gnuplot)
{
    ms_report_printf(h, "<h2>1. Pretraining (MAE on the image encoder)</h2>\n");
    if (!run) {
        note(h, "pretraining", "no --pretrain run given");
        return MS_OK;
    }
    ms_report_printf(h, "<p>Run: <code>");
    ms_report_html(h, run);
    ms_report_printf(h, "</code></p>\n");
    char path[MS_PATH_MAX];
    MS_TRY(ms_path_join(path, run, "config.json"));
    if (exists(path)) MS_TRY(json_details(h, path, "the run's config.json"));
    else note(h, "the run's configuration", "no config.json");
    MS_TRY(ms_path_join(path, run, "log.jsonl"));
    if (!exists(path)) {
        note(h, "the loss curve", "no log.jsonl in the run");
    } else {
        loss_curves c;
        memset(&c, 0, sizeof c);
        int skipped = 0;
        ms_status rc = jsonl_each(path, take_loss, &c, &skipped);
        ms_report_series s[2] = {{"train (masked patches, per step)", 0, c.train.n, c.train.x, c.train.y},
                                 {"held-out validation", 1, c.val.n, c.val.x, c.val.y}};
        if (!rc) rc = ms_report_plot(gnuplot, dir, "pretrain_loss", "MAE reconstruction loss", "step",
                                     "loss (masked patches)", s, 2);
        if (!rc) {
            ms_report_printf(h, "<figure><img src=\"pretrain_loss.svg\" alt=\"pretraining loss curve\"><figcaption>"
                                "%d training and %d validation points (data: <a href=\"pretrain_loss.dat\">"
                                "pretrain_loss.dat</a>)", c.train.n, c.val.n);
            if (c.val.n)
                ms_report_printf(h, "; last held-out loss %.4g at step %.0f", c.val.y[c.val.n - 1],
                                 c.val.x[c.val.n - 1]);
            if (skipped) ms_report_printf(h, "; %d unreadable log lines skipped", skipped);
            ms_report_printf(h, "</figcaption></figure>\n");
        }
        pts_free(&c.train);
        pts_free(&c.val);
        MS_TRY(rc);
    }
    ms_report_printf(h, "<p>Reconstruction panels, one held-out slice per row: input | masked input | "
                        "reconstruction | reconstruction with the visible patches pasted back.</p>\n");
    return panels(h, run, dir);
}

/* ---- the comparison -------------------------------------------------------------------------------------------- */

/* A number from a CSV file: 4 decimals when it parses, else the text as it is. */
static void put_num(ms_buf *h, const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (*s && !*end && isfinite(v)) ms_report_printf(h, "%.4f", v);
    else ms_report_html(h, s);
}

static void cell_num(ms_buf *h, const char *s)
{
    ms_report_printf(h, "<td class=\"n\">");
    put_num(h, s);
    ms_report_printf(h, "</td>");
}

static void cell(ms_buf *h, const char *s)
{
    ms_report_printf(h, "<td>");
    ms_report_html(h, s);
    ms_report_printf(h, "</td>");
}

/* The group of row r: the first row with the same values in columns c[0..nc), appended to first[0..*n) when new. */
static int group_of(const csv *t, int r, const int *c, int nc, int *first, int *n)
{
    for (int g = 0; g < *n; g++) {
        int same = 1;
        for (int k = 0; k < nc && same; k++) same = !strcmp(csv_at(t, first[g], c[k]), csv_at(t, r, c[k]));
        if (same) return g;
    }
    first[*n] = r;
    return (*n)++;
}

#define MAX_NAMED_TASKS 16

/* Each task's class names from compare.json ("label_names": its store's "value name" lines); tasks without them are
 * left out. A missing or unreadable compare.json gives no names: the table then shows label values only. */
typedef struct task_names {
    int n;
    char task[MAX_NAMED_TASKS][128];
    ms_eval_result r[MAX_NAMED_TASKS];
} task_names;

static void task_names_load(task_names *tn, const char *cmp_json)
{
    memset(tn, 0, sizeof *tn);
    char *text = NULL;
    size_t len = 0;
    if (ms_read_file(cmp_json, MAX_TEXT, &text, &len)) return; /* the details section reports a bad file */
    cJSON *j = cJSON_Parse(text);
    free(text);
    const cJSON *tasks = j ? cJSON_GetObjectItemCaseSensitive(j, "tasks") : NULL, *e;
    cJSON_ArrayForEach(e, tasks) {
        const char *name = str(e, "name"), *ln = str(e, "label_names");
        if (!name || !ln || tn->n == MAX_NAMED_TASKS) continue;
        if (ms_eval_names_parse(&tn->r[tn->n], cmp_json, ln)) continue; /* unnamed, not an error: values stay */
        snprintf(tn->task[tn->n], sizeof tn->task[0], "%s", name);
        tn->n++;
    }
    cJSON_Delete(j);
}

static void task_names_free(task_names *tn)
{
    for (int i = 0; i < tn->n; i++) ms_eval_result_free(&tn->r[i]);
}

/* "VALUE name" for a class cell of task, or the cell as it is. */
static void class_cell(ms_buf *h, const task_names *tn, const char *task, const char *cls)
{
    char *end;
    long v = strtol(cls, &end, 10);
    for (int i = 0; i < tn->n && *cls && !*end; i++)
        if (!strcmp(tn->task[i], task) && v >= 0 && v < tn->r[i].n_names && tn->r[i].names[v]) {
            ms_report_printf(h, "<td>%ld ", v);
            ms_report_html(h, tn->r[i].names[v]);
            ms_report_printf(h, "</td>");
            return;
        }
    cell(h, cls);
}

/* Mean ± sd (sample, n − 1) of the Dice per task × budget × class (rows) and start (columns), from results.csv;
 * classes named from compare.json when their stores have names. */
static ms_status dice_table(ms_buf *h, const char *path, const csv *t, const task_names *tn)
{
    int c[5]; /* task, budget, class, start, dice */
    MS_TRY(csv_cols(path, t, "task,budget,class,start,dice", c));
    int nk = 0, ns = 0, *kfirst = malloc((size_t)(t->nrow + 1) * 4 * sizeof(int));
    MS_FAIL_IF(!kfirst, MS_ENOMEM, "%s: out of memory", path);
    int *sfirst = kfirst + t->nrow + 1, *rk = sfirst + t->nrow + 1, *rs = rk + t->nrow + 1;
    for (int r = 0; r < t->nrow; r++) {
        rk[r] = group_of(t, r, c, 3, kfirst, &nk);
        rs[r] = group_of(t, r, c + 3, 1, sfirst, &ns);
    }
    double *sum = calloc((size_t)nk * ns * 3 + 1, sizeof *sum); /* n, Σx, Σx² */
    ms_status rc = sum ? MS_OK : ms_error(MS_ENOMEM, "%s: out of memory", path);
    for (int r = 0; r < t->nrow && !rc; r++) {
        double v;
        if ((rc = parse_num(path, r, csv_at(t, r, c[4]), &v)) || isnan(v)) continue;
        double *s = sum + ((size_t)rk[r] * ns + rs[r]) * 3;
        s[0] += 1, s[1] += v, s[2] += v * v;
    }
    if (!rc) {
        ms_report_printf(h, "<table><tr><th>task</th><th>budget</th><th>class</th>");
        for (int s = 0; s < ns; s++) {
            ms_report_printf(h, "<th>");
            ms_report_html(h, csv_at(t, sfirst[s], c[3]));
            ms_report_printf(h, "<br><small>Dice mean ± sd (n)</small></th>");
        }
        ms_report_printf(h, "</tr>\n");
    }
    for (int k = 0; k < nk && !rc; k++) {
        ms_report_printf(h, "<tr>");
        for (int i = 0; i < 2; i++) cell(h, csv_at(t, kfirst[k], c[i]));
        class_cell(h, tn, csv_at(t, kfirst[k], c[0]), csv_at(t, kfirst[k], c[2]));
        for (int s = 0; s < ns; s++) {
            const double *a = sum + ((size_t)k * ns + s) * 3, n = a[0], m = n ? a[1] / n : NAN;
            double var = n > 1 ? (a[2] - n * m * m) / (n - 1) : NAN;
            if (!n) ms_report_printf(h, "<td class=\"n\">–</td>");
            else if (n < 2) ms_report_printf(h, "<td class=\"n\">%.4f (1)</td>", m);
            else ms_report_printf(h, "<td class=\"n\">%.4f ± %.4f (%.0f)</td>", m, sqrt(var > 0 ? var : 0), n);
        }
        ms_report_printf(h, "</tr>\n");
    }
    if (!rc) ms_report_printf(h, "</table>\n");
    free(sum);
    free(kfirst);
    return rc;
}

/* summary.csv: mean ± sd per task × budget × start, as compare computed it. */
static ms_status summary_table(ms_buf *h, const char *path, const csv *t)
{
    int c[6];
    MS_TRY(csv_cols(path, t, "task,budget,start,n,mean,sd", c));
    ms_report_printf(h, "<table><tr><th>task</th><th>budget</th><th>start</th><th>n</th><th>mean Dice</th>"
                        "<th>sd</th></tr>\n");
    for (int r = 0; r < t->nrow; r++) {
        ms_report_printf(h, "<tr>");
        for (int i = 0; i < 4; i++) cell(h, csv_at(t, r, c[i]));
        cell_num(h, csv_at(t, r, c[4]));
        cell_num(h, csv_at(t, r, c[5]));
        ms_report_printf(h, "</tr>\n");
    }
    ms_report_printf(h, "</table>\n");
    return MS_OK;
}

/* paired.csv: start − baseline paired by seed, with its t-interval. */
static ms_status paired_table(ms_buf *h, const char *path, const csv *t)
{
    int c[10];
    MS_TRY(csv_cols(path, t, "task,budget,start,baseline,n,mean_diff,sd_diff,t_crit,ci_lo,ci_hi", c));
    ms_report_printf(h, "<table><tr><th>task</th><th>budget</th><th>start</th><th>baseline</th><th>n (seeds)</th>"
                        "<th>mean difference</th><th>sd</th><th>t<sub>0.975, n−1</sub></th><th>95 %% interval</th>"
                        "</tr>\n");
    for (int r = 0; r < t->nrow; r++) {
        ms_report_printf(h, "<tr>");
        for (int i = 0; i < 5; i++) cell(h, csv_at(t, r, c[i]));
        for (int i = 5; i < 8; i++) cell_num(h, csv_at(t, r, c[i]));
        ms_report_printf(h, "<td class=\"n\">[");
        put_num(h, csv_at(t, r, c[8]));
        ms_report_printf(h, ", ");
        put_num(h, csv_at(t, r, c[9]));
        ms_report_printf(h, "]</td></tr>\n");
    }
    ms_report_printf(h, "</table>\n");
    return MS_OK;
}

/* The validation Dice of one run's task: the mean of dice[task]'s per-class values at each validation. */
typedef struct val_curve {
    const char *task;
    pts p;
} val_curve;

static int take_dice(void *ctx, const cJSON *j)
{
    val_curve *v = ctx;
    const char *sp = str(j, "split");
    double step = num(j, "step");
    if (!sp || strcmp(sp, "val") || isnan(step)) return 0;
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "dice");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(d, v->task);
    if (!cJSON_IsObject(t) && cJSON_GetArraySize(d) == 1) t = d->child; /* a one-task run named otherwise */
    double s = 0;
    int n = 0;
    for (const cJSON *c = cJSON_IsObject(t) ? t->child : NULL; c; c = c->next)
        if (cJSON_IsNumber(c)) s += c->valuedouble, n++;
    double y = n ? s / n : num(j, "score");
    return isnan(y) ? 0 : pts_add(&v->p, step, y);
}

/* A run folder named in results.csv: as it is when absolute, else inside the comparison's folder when there, else
 * relative to the working directory. */
static ms_status run_dir(const char *cmp, const char *run, char *out)
{
    if (run[0] != '/') {
        MS_TRY(ms_path_join(out, cmp, run));
        if (ms_path_is_dir(out)) return MS_OK;
    }
    MS_FAIL_IF(strlen(run) >= MS_PATH_MAX, MS_EINVAL, "%.200s...: path too long", run);
    strcpy(out, run);
    return MS_OK;
}

/* One plot per task × budget: a line per run (colour: start; one line per seed). */
static ms_status dice_curves(ms_buf *h, const char *cmp, const char *rpath, const csv *t, const char *dir,
                             const char *gnuplot)
{
    int c[5]; /* task, budget, start, seed, run */
    MS_TRY(csv_cols(rpath, t, "task,budget,start,seed,run", c));
    int *buf = malloc((size_t)(t->nrow + 1) * 6 * sizeof(int)), ng = 0, ns = 0, nr = 0;
    MS_FAIL_IF(!buf, MS_ENOMEM, "%s: out of memory", rpath);
    int *gfirst = buf, *sfirst = buf + t->nrow + 1, *rfirst = sfirst + t->nrow + 1;
    int *rg = rfirst + t->nrow + 1, *rsrt = rg + t->nrow + 1, *rrun = rsrt + t->nrow + 1;
    for (int r = 0; r < t->nrow; r++) {
        rg[r] = group_of(t, r, c, 2, gfirst, &ng);
        rsrt[r] = group_of(t, r, c + 2, 1, sfirst, &ns);
        rrun[r] = group_of(t, r, c + 4, 1, rfirst, &nr);
    }
    val_curve *vc = calloc((size_t)nr + 1, sizeof *vc);
    ms_report_series *se = calloc((size_t)nr + 1, sizeof *se);
    char (*title)[160] = calloc((size_t)nr + 1, sizeof *title);
    ms_status rc = vc && se && title ? MS_OK : ms_error(MS_ENOMEM, "%s: out of memory", rpath);
    int missing = 0;
    for (int k = 0; k < nr && !rc; k++) { /* each run's curve, read once */
        int r = rfirst[k];
        char d[MS_PATH_MAX], log[MS_PATH_MAX];
        int skipped;
        vc[k].task = csv_at(t, r, c[0]);
        rc = run_dir(cmp, csv_at(t, r, c[4]), d);
        /* compare's curve (every --val-every steps) when the run has one, else the run's own val lines */
        if (!rc) rc = ms_path_join(log, d, "val_curve.jsonl");
        if (!rc && !exists(log)) rc = ms_path_join(log, d, "log.jsonl");
        if (!rc && exists(log)) rc = jsonl_each(log, take_dice, &vc[k], &skipped);
        else if (!rc) missing++;
        snprintf(title[k], sizeof title[k], "%s, seed %s", csv_at(t, r, c[2]), csv_at(t, r, c[3]));
    }
    for (int g = 0; g < ng && !rc; g++) {
        int n = 0;
        for (int k = 0; k < nr; k++)
            if (rg[rfirst[k]] == g && vc[k].p.n)
                se[n++] = (ms_report_series){title[k], rsrt[rfirst[k]], vc[k].p.n, vc[k].p.x, vc[k].p.y};
        char name[32], ptitle[300];
        snprintf(name, sizeof name, "val_dice_%d", g);
        snprintf(ptitle, sizeof ptitle, "validation Dice: task %s, budget %s", csv_at(t, gfirst[g], c[0]),
                 csv_at(t, gfirst[g], c[1]));
        if (!n) {
            note(h, ptitle, "none of its runs has validation lines in its val_curve.jsonl or log.jsonl");
            continue;
        }
        if ((rc = ms_report_plot(gnuplot, dir, name, ptitle, "step", "Dice (mean over classes)", se, n))) break;
        ms_report_printf(h, "<figure><img src=\"%s.svg\" alt=\"", name);
        ms_report_html(h, ptitle);
        ms_report_printf(h, "\"><figcaption>");
        ms_report_html(h, ptitle);
        int most = 0;
        for (int i = 0; i < n; i++) most = se[i].n > most ? se[i].n : most;
        ms_report_printf(h, " (%d runs; data: <a href=\"%s.dat\">%s.dat</a>)%s</figcaption></figure>\n", n, name, name,
                         most < 2 ? "; each run logged one validation, so each is one point" : "");
    }
    if (!rc && missing) {
        char why[96];
        snprintf(why, sizeof why, "%d of %d runs have no val_curve.jsonl or log.jsonl", missing, nr);
        note(h, "some validation curves", why);
    }
    for (int k = 0; vc && k < nr; k++) pts_free(&vc[k].p);
    free(vc), free(se), free(title), free(buf);
    return rc;
}

/* One CSV table of the comparison, or a note when its file is absent. */
static ms_status compare_table(ms_buf *h, const char *cmp, const char *file, const char *what,
                               ms_status (*fn)(ms_buf *, const char *, const csv *))
{
    char path[MS_PATH_MAX];
    MS_TRY(ms_path_join(path, cmp, file));
    if (!exists(path)) {
        char why[64];
        snprintf(why, sizeof why, "no %s in the comparison's folder", file);
        note(h, what, why);
        return MS_OK;
    }
    csv t;
    MS_TRY(csv_read(path, &t));
    ms_status rc = fn(h, path, &t);
    csv_free(&t);
    return rc;
}

static ms_status section_compare(ms_buf *h, const char *cmp, const char *dir, const char *gnuplot)
{
    ms_report_printf(h, "<h2>2. Fine-tuning from each start</h2>\n");
    if (!cmp) {
        note(h, "the comparison", "no --compare folder given");
        return MS_OK;
    }
    ms_report_printf(h, "<p>Comparison: <code>");
    ms_report_html(h, cmp);
    ms_report_printf(h, "</code>. Every start is fine-tuned with the same seeds, splits and labelled slices; Dice is "
                        "3D Dice on held-out slices.</p>\n");
    char path[MS_PATH_MAX], json[MS_PATH_MAX];
    MS_TRY(ms_path_join(json, cmp, "compare.json"));
    if (exists(json)) MS_TRY(json_details(h, json, "the comparison's settings (compare.json)"));
    MS_TRY(ms_path_join(path, cmp, "results.csv"));
    ms_report_printf(h, "<h3>Validation curves</h3>\n<p>Dice on the held-out slices during training (per slice "
                        "batch, as finetune validates), one line per run, coloured by start. The held-out slices "
                        "are the test set: the curves are watched, never used to choose a checkpoint or to stop; "
                        "each run's final model is the one evaluated in 3D below.</p>\n");
    if (!exists(path)) {
        note(h, "validation curves and the per-class table", "no results.csv in the comparison's folder");
    } else {
        csv t;
        MS_TRY(csv_read(path, &t));
        ms_status rc = dice_curves(h, cmp, path, &t, dir, gnuplot);
        if (!rc) ms_report_printf(h, "<h3>Dice per class (held-out, mean ± sd over seeds)</h3>\n");
        if (!rc) {
            task_names tn;
            task_names_load(&tn, json);
            rc = dice_table(h, path, &t, &tn);
            task_names_free(&tn);
        }
        csv_free(&t);
        MS_TRY(rc);
    }
    ms_report_printf(h, "<h3>Per start</h3>\n");
    MS_TRY(compare_table(h, cmp, "summary.csv", "the per-start summary", summary_table));
    ms_report_printf(h, "<h3>Paired differences (same seed, same split)</h3>\n");
    return compare_table(h, cmp, "paired.csv", "the paired differences", paired_table);
}

/* ---- the page -------------------------------------------------------------------------------------------------- */

static const char *css =
    "body{font-family:Helvetica,Arial,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#222;"
    "line-height:1.4}h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}"
    "table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #ccc;padding:3px 8px;"
    "vertical-align:top}th{background:#f2f2f2;text-align:left}td.n{text-align:right;font-variant-numeric:"
    "tabular-nums;white-space:nowrap}figure{margin:8px 0;display:inline-block;vertical-align:top}"
    "figcaption{font-size:.85em;color:#555}img{max-width:100%;border:1px solid #ddd}img.panel,img.ov{width:340px}"
    ".row{display:flex;flex-wrap:wrap;gap:12px}.note{color:#8a5a00;background:#fff6e0;padding:4px 8px;"
    "border-left:3px solid #e0a000}.caveat{background:#eef4ff;border-left:3px solid #3366cc;padding:8px 12px}"
    ".sw{display:inline-block;width:12px;height:12px;border:1px solid #666;vertical-align:middle}"
    "pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:400px;font-size:.85em}code{font-size:.95em}";

static ms_status section_overlays(ms_buf *h, const ms_report_opts *o, const char *dir)
{
    ms_report_printf(h, "<h2>3. Segmentation of a whole volume</h2>\n");
    if (!o->predict || !o->seg) {
        note(h, "segmentation overlays", o->predict ? "no --seg label volume given" : "no --predict volume given");
        return MS_OK;
    }
    ms_report_printf(h, "<p>Input <code>");
    ms_report_html(h, o->predict);
    ms_report_printf(h, "</code>, labels predicted by <code>mrisam predict</code>: <code>");
    ms_report_html(h, o->seg);
    ms_report_printf(h, "</code>");
    if (o->gt) {
        ms_report_printf(h, ", reference <code>");
        ms_report_html(h, o->gt);
        ms_report_printf(h, "</code>");
    }
    ms_report_printf(h, ". Axial slices through the labelled part of the volume, anterior up, the subject's right "
                        "on the right; predicted labels tinted, their edges solid.</p>\n");
    return ms_report_overlays(dir, o->predict, o->seg, o->gt, o->names, h);
}

static ms_status build(const char *dir, const ms_report_opts *o, ms_buf *h)
{
    ms_report_printf(h, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
                        "<title>mrisam run report</title>\n<style>%s</style></head><body>\n"
                        "<h1>mrisam run report</h1>\n", css);
    ms_report_printf(h, "<p class=\"caveat\"><b>What these numbers are.</b> The data come from one human brain (the "
                        "ch2 template: ch2better, ch2 and its brain mask ch2bet, and atlases on ch2's grid or "
                        "resampled onto it) and one macaque brain (inia19), as Debian's mricron-data ships them. "
                        "Training and held-out "
                        "slices are different slices of the same few volumes, so the numbers show that the pipeline "
                        "works end to end, not how well a model generalises to other people, scanners or "
                        "protocols.</p>\n");
    MS_TRY(section_pretrain(h, o->pretrain, dir, o->gnuplot));
    MS_TRY(section_compare(h, o->compare, dir, o->gnuplot));
    MS_TRY(section_overlays(h, o, dir));
    ms_report_printf(h, "<p style=\"margin-top:32px;font-size:.85em;color:#777\">Written by <code>mrisam report"
                        "</code>. Curves drawn by gnuplot; the data and script behind each one are the .dat and .gp "
                        "files beside this page.</p>\n</body></html>\n");
    MS_FAIL_IF(h->oom, MS_ENOMEM, "%s: out of memory", dir);
    return MS_OK;
}

ms_status ms_report_write(const char *dir, const ms_report_opts *o)
{
    MS_FAIL_IF(o->seg && !o->predict, MS_EINVAL, "%s: --seg needs --predict (the volume it labels)", o->seg);
    MS_FAIL_IF(o->gt && !o->seg, MS_EINVAL, "%s: --gt needs --predict and --seg", o->gt);
    char tmp[MS_PATH_MAX], path[MS_PATH_MAX];
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/') dl--;
    MS_TRY(ms_path_fmt(tmp, "%.*s.tmp.%ld", (int)dl, dir, (long)getpid()));
    MS_TRY(ms_dir_remove(tmp));
    MS_TRY(ms_mkdirs(tmp));
    char *abs = realpath(tmp, NULL); /* gnuplot's scripts name their files absolutely */
    ms_status rc = abs ? MS_OK : ms_error_sys(errno, tmp, "");
    ms_buf h = {0};
    if (!rc) rc = build(abs, o, &h);
    if (!rc) rc = ms_path_join(path, tmp, "index.html");
    if (!rc) rc = ms_write_file_atomic(path, h.p, h.n);
    ms_buf_free(&h);
    free(abs);
    if (!rc && !exists(dir)) rc = ms_mkdirs_parent(dir);
    if (!rc) rc = ms_dir_swap_in(tmp, dir);
    ms_dir_remove(tmp); /* after the swap: the report it replaced; after a failure: the half-built one */
    return rc;
}
