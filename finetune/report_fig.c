/* finetune/report_fig.c — the report's pictures (see report.h): curves through gnuplot, overlays drawn here. */
#include "finetune/report.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/fileio.h"
#include "base/path.h"
#include "data/nifti.h"
#include "data/png.h"

/* ---- curves ---------------------------------------------------------------------------------------------------- */

/* s as a gnuplot single-quoted string: '' stands for ', and control characters (a newline would end the command)
 * become spaces. */
static void gp_quote(ms_buf *b, const char *s)
{
    ms_buf_put(b, "'", 1);
    for (; s && *s; s++) {
        if (*s == '\'') ms_buf_put(b, "''", 2);
        else if ((unsigned char)*s < 0x20) ms_buf_put(b, " ", 1);
        else ms_buf_put(b, s, 1);
    }
    ms_buf_put(b, "'", 1);
}

/* The executable: a name with a '/' as it is, otherwise the first match on PATH. */
static ms_status find_exe(const char *name, char *out)
{
    struct stat sb;
    if (strchr(name, '/')) {
        MS_FAIL_IF(strlen(name) >= MS_PATH_MAX, MS_EINVAL, "%s: path too long", name);
        strcpy(out, name);
        if (stat(out, &sb) == 0 && S_ISREG(sb.st_mode) && access(out, X_OK) == 0) return MS_OK;
        return ms_error(MS_ENOTFOUND, "%s: not an executable file", name);
    }
    for (const char *p = getenv("PATH"); p;) {
        const char *end = strchr(p, ':');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        int w = len ? snprintf(out, MS_PATH_MAX, "%.*s/%s", (int)len, p, name) : snprintf(out, MS_PATH_MAX, "./%s", name);
        if (w > 0 && w < MS_PATH_MAX && stat(out, &sb) == 0 && S_ISREG(sb.st_mode) && access(out, X_OK) == 0)
            return MS_OK;
        p = end ? end + 1 : NULL;
    }
    out[0] = 0;
    return ms_error(MS_ENOTFOUND, "%s: not found on PATH; install Debian's gnuplot-nox package", name);
}

/* gnuplot SCRIPT, stdout and stderr into LOG; no shell, no inherited descriptors beyond 0-2. */
static ms_status run_gnuplot(const char *exe, const char *script, const char *log)
{
    char *argv[] = {"gnuplot", (char *)script, NULL};
    char *envp[] = {"LC_ALL=C", "GNUTERM=svg", NULL};
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa)) return ms_error(MS_ENOMEM, "out of memory");
    int e = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (!e) e = posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (!e) e = posix_spawn_file_actions_adddup2(&fa, 1, 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    if (!e) e = posix_spawn_file_actions_addclosefrom_np(&fa, 3);
#endif
    pid_t pid = 0;
    if (!e) e = posix_spawn(&pid, exe, &fa, NULL, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    if (e) return ms_error(e, "%s: cannot run %s: %s", script, exe, strerror(e));
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0)
        if (errno != EINTR) return ms_error(errno, "%s: waiting for gnuplot: %s", script, strerror(errno));
    if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
        return ms_error(MS_EIO, "%s: gnuplot failed (%s %d; its output is in %s)", script,
                        WIFEXITED(ws) ? "exit" : "signal", WIFEXITED(ws) ? WEXITSTATUS(ws) : WTERMSIG(ws), log);
    return MS_OK;
}

ms_status ms_report_plot(const char *gnuplot, const char *dir, const char *name, const char *title,
                         const char *xlabel, const char *ylabel, const ms_report_series *s, int n_series)
{
    char exe[MS_PATH_MAX], dat[MS_PATH_MAX], gp[MS_PATH_MAX], svg[MS_PATH_MAX], log[MS_PATH_MAX];
    MS_TRY(find_exe(gnuplot ? gnuplot : "gnuplot", exe));
    MS_TRY(ms_path_fmt(dat, "%s/%s.dat", dir, name));
    MS_TRY(ms_path_fmt(gp, "%s/%s.gp", dir, name));
    MS_TRY(ms_path_fmt(svg, "%s/%s.svg", dir, name));
    MS_TRY(ms_path_fmt(log, "%s/%s.log", dir, name));
    /* the data: one block per series (gnuplot's index), two blank lines apart */
    ms_buf d = {0}, g = {0};
    for (int i = 0; i < n_series; i++) {
        ms_report_printf(&d, "# %d\n", i);
        for (int k = 0; k < s[i].n; k++)
            if (isfinite(s[i].y[k])) ms_report_printf(&d, "%.17g %.9g\n", s[i].x[k], s[i].y[k]);
        ms_buf_put(&d, "\n\n", 2);
    }
    ms_report_printf(&g, "set terminal svg size 760,440 fixed font 'Helvetica,12' background '#ffffff'\n"
                         "set output ");
    gp_quote(&g, svg);
    ms_report_printf(&g, "\nset termoption noenhanced\nset title ");
    gp_quote(&g, title);
    ms_report_printf(&g, "\nset xlabel ");
    gp_quote(&g, xlabel);
    ms_report_printf(&g, "\nset ylabel ");
    gp_quote(&g, ylabel);
    ms_report_printf(&g, "\nset grid\nset key below\nset border 3\nset tics nomirror\n"
                         "set linetype 1 lc rgb '#1f77b4' lw 2\nset linetype 2 lc rgb '#d62728' lw 2\n"
                         "set linetype 3 lc rgb '#2ca02c' lw 2\nset linetype 4 lc rgb '#9467bd' lw 2\n"
                         "set linetype cycle 4\nplot ");
    int any = 0;
    for (int i = 0; i < n_series; i++) {
        if (!s[i].n) continue;
        ms_report_printf(&g, "%s", any ? ", \\\n  " : "");
        gp_quote(&g, dat);
        ms_report_printf(&g, " index %d using 1:2 with linespoints lt %d pt 7 ps 0.5 title ", i, s[i].style + 1);
        gp_quote(&g, s[i].title);
        any = 1;
    }
    if (!any) ms_report_printf(&g, "NaN notitle");
    ms_buf_put(&g, "\n", 1);
    ms_status rc = d.oom || g.oom ? ms_error(MS_ENOMEM, "%s: out of memory", svg) : MS_OK;
    if (!rc) rc = ms_write_file_atomic(dat, d.p ? (const char *)d.p : "", d.n);
    if (!rc) rc = ms_write_file_atomic(gp, g.p, g.n);
    ms_buf_free(&d);
    ms_buf_free(&g);
    if (!rc) rc = run_gnuplot(exe, gp, log);
    struct stat sb;
    if (!rc && (stat(svg, &sb) || sb.st_size == 0)) rc = ms_error(MS_EIO, "%s: gnuplot wrote no picture", svg);
    if (!rc) unlink(log);
    return rc;
}

/* ---- overlays -------------------------------------------------------------------------------------------------- */

static const uint8_t palette[8][3] = {{230, 25, 75},  {60, 180, 75}, {0, 130, 200}, {255, 225, 25},
                                      {245, 130, 48}, {145, 30, 180}, {70, 240, 240}, {240, 50, 230}};

typedef struct vol {
    int64_t d[3];
    float *v;
} vol;

/* A NIfTI file's first frame on its canonical (RAS+) grid. */
static ms_status vol_read(const char *path, vol *out)
{
    ms_nifti n;
    MS_TRY(ms_nifti_open(path, &n));
    int64_t nv = n.cdim[0] * n.cdim[1] * n.cdim[2];
    out->v = malloc((size_t)nv * sizeof *out->v);
    memcpy(out->d, n.cdim, sizeof out->d);
    uint64_t bad = 0;
    ms_status rc = out->v ? ms_nifti_frame(&n, 0, out->v, &bad) : ms_error(MS_ENOMEM, "%s: out of memory", path);
    ms_nifti_close(&n);
    if (rc) {
        free(out->v);
        out->v = NULL;
    }
    return rc;
}

/* lo and hi: the 0.5th and 99.5th percentiles of the volume, by a 4096-bin histogram between its extremes. */
static void window(const vol *a, float *lo, float *hi)
{
    int64_t n = a->d[0] * a->d[1] * a->d[2];
    float mn = INFINITY, mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        if (a->v[i] < mn) mn = a->v[i];
        if (a->v[i] > mx) mx = a->v[i];
    }
    *lo = mn;
    *hi = mx > mn ? mx : mn + 1;
    if (!(mx > mn)) return;
    enum { NB = 4096 };
    int64_t *h = calloc(NB, sizeof *h);
    if (!h) return;
    for (int64_t i = 0; i < n; i++) h[(int)((a->v[i] - mn) / (mx - mn) * (NB - 1))]++;
    int64_t acc = 0;
    int got_lo = 0;
    for (int b = 0; b < NB; b++) {
        acc += h[b];
        if (!got_lo && acc > n / 200) *lo = mn + (mx - mn) * b / (NB - 1), got_lo = 1;
        if (acc >= n - n / 200) { *hi = mn + (mx - mn) * (b + 1) / (NB - 1); break; }
    }
    free(h);
}

/* The label of canonical voxel (x, y, z), 0 outside. */
static int lab(const vol *l, int64_t x, int64_t y, int64_t z)
{
    if (x < 0 || y < 0 || x >= l->d[0] || y >= l->d[1]) return 0;
    float f = l->v[x + l->d[0] * (y + l->d[1] * z)];
    return f > 0 ? (int)lrintf(f) : 0;
}

/* A voxel on the edge of its label: a 4-neighbour in the plane carries another one. */
static int edge(const vol *l, int64_t x, int64_t y, int64_t z)
{
    int c = lab(l, x, y, z);
    return c && (lab(l, x - 1, y, z) != c || lab(l, x + 1, y, z) != c || lab(l, x, y - 1, z) != c ||
                 lab(l, x, y + 1, z) != c);
}

/* Axial slice z, anterior up, the subject's right on the right (neurological), each voxel s × s pixels: gray, the
 * labels tinted at 35 % with solid edges, gt's edges in white. */
static ms_status draw_slice(const char *path, const vol *im, const vol *sg, const vol *gt, int64_t z, int s,
                            float lo, float hi)
{
    const int64_t W = im->d[0], H = im->d[1];
    uint8_t *pix = malloc((size_t)(W * s * H * s * 3));
    MS_FAIL_IF(!pix, MS_ENOMEM, "%s: out of memory", path);
    for (int64_t r = 0; r < H; r++)
        for (int64_t x = 0; x < W; x++) {
            int64_t y = H - 1 - r;
            float g = (im->v[x + W * (y + H * z)] - lo) / (hi - lo) * 255.0f;
            g = g < 0 ? 0 : g > 255 ? 255 : g;
            int c = lab(sg, x, y, z);
            float rgb[3] = {g, g, g};
            for (int k = 0; k < 3 && c; k++) {
                float col = palette[(c - 1) % 8][k];
                rgb[k] = edge(sg, x, y, z) ? col : 0.65f * g + 0.35f * col;
            }
            if (gt && edge(gt, x, y, z)) rgb[0] = rgb[1] = rgb[2] = 255;
            for (int dy = 0; dy < s; dy++)
                for (int dx = 0; dx < s; dx++) {
                    uint8_t *o = pix + (((r * s + dy) * W * s) + x * s + dx) * 3;
                    for (int k = 0; k < 3; k++) o[k] = (uint8_t)(rgb[k] + 0.5f);
                }
        }
    ms_status rc = ms_png_write_u8(path, pix, (int)(W * s), (int)(H * s), 3);
    free(pix);
    return rc;
}

/* Per-label Dice of seg against gt over the whole volume, as an HTML table. */
static void dice_table(const vol *sg, const vol *gt, int max_label, char (*names)[48], ms_buf *html)
{
    int64_t n = sg->d[0] * sg->d[1] * sg->d[2];
    ms_report_printf(html, "<table><tr><th>label</th><th>voxels (predicted)</th><th>voxels (reference)</th>"
                           "<th>Dice over the volume</th></tr>\n");
    for (int c = 1; c <= max_label; c++) {
        int64_t a = 0, b = 0, ab = 0;
        for (int64_t i = 0; i < n; i++) {
            int p = sg->v[i] > 0 && lrintf(sg->v[i]) == c, q = gt->v[i] > 0 && lrintf(gt->v[i]) == c;
            a += p, b += q, ab += p && q;
        }
        if (!a && !b) continue;
        ms_report_printf(html, "<tr><td>%d ", c);
        ms_report_html(html, c < 256 ? names[c] : "");
        ms_report_printf(html, "</td><td>%lld</td><td>%lld</td><td>%.4f</td></tr>\n", (long long)a,
                         (long long)b, 2.0 * ab / (double)(a + b));
    }
    ms_report_printf(html, "</table>\n");
}

static int same_grid(const vol *a, const vol *b) { return !memcmp(a->d, b->d, sizeof a->d); }

/* z range of the labelled voxels (the whole volume when none) and the largest label. */
static void extent(const vol *sg, int64_t *z0, int64_t *z1, int *max_label)
{
    *z0 = sg->d[2], *z1 = -1, *max_label = 0;
    int64_t plane = sg->d[0] * sg->d[1];
    for (int64_t z = 0; z < sg->d[2]; z++)
        for (int64_t i = 0; i < plane; i++) {
            float f = sg->v[i + plane * z];
            if (f > 0) {
                if (z < *z0) *z0 = z;
                *z1 = z;
                if (lrintf(f) > *max_label) *max_label = (int)lrintf(f);
            }
        }
    if (*z1 < 0) *z0 = 0, *z1 = sg->d[2] - 1;
}

/* names[v] from a file of lines "value name" (ingest's --label-names; '#' lines and blank lines skipped). */
static ms_status read_names(const char *path, char (*names)[48])
{
    char *text = NULL;
    size_t len = 0;
    MS_TRY(ms_read_file(path, (size_t)1 << 20, &text, &len));
    ms_status rc = MS_OK;
    int line = 0;
    for (char *save = NULL, *ln = strtok_r(text, "\n", &save); ln && !rc; ln = strtok_r(NULL, "\n", &save)) {
        line++;
        while (*ln == ' ' || *ln == '\t') ln++;
        if (!*ln || *ln == '#' || *ln == '\r') continue;
        char *end;
        long v = strtol(ln, &end, 10);
        if (end == ln || (*end != ' ' && *end != '\t') || v < 0 || v > 65535)
            rc = ms_error(MS_EFORMAT, "%s: line %d: expected \"value name\"", path, line);
        while (!rc && (*end == ' ' || *end == '\t')) end++;
        end[strcspn(end, "\r")] = 0;
        if (!rc && v < 256) snprintf(names[v], sizeof names[v], "%s", end);
    }
    free(text);
    return rc;
}

ms_status ms_report_overlays(const char *dir, const char *vpath, const char *spath, const char *gpath,
                             const char *names_path, ms_buf *html)
{
    vol im = {0}, sg = {0}, gt = {0};
    char (*names)[48] = calloc(256, sizeof *names);
    ms_status rc = names ? vol_read(vpath, &im) : ms_error(MS_ENOMEM, "%s: out of memory", spath);
    if (!rc) rc = vol_read(spath, &sg);
    if (!rc && gpath) rc = vol_read(gpath, &gt);
    if (!rc && !same_grid(&im, &sg))
        rc = ms_error(MS_ESHAPE, "%s: grid %lldx%lldx%lld differs from %s's", spath, (long long)sg.d[0],
                      (long long)sg.d[1], (long long)sg.d[2], vpath);
    if (!rc && gpath && !same_grid(&im, &gt))
        rc = ms_error(MS_ESHAPE, "%s: grid %lldx%lldx%lld differs from %s's", gpath, (long long)gt.d[0],
                      (long long)gt.d[1], (long long)gt.d[2], vpath);
    if (!rc && names_path) rc = read_names(names_path, names);
    if (rc) goto leave;
    float lo, hi;
    window(&im, &lo, &hi);
    int64_t z0, z1;
    int max_label;
    extent(&sg, &z0, &z1, &max_label);
    if (gpath) { /* the Dice table lists the reference's labels too */
        int64_t g0, g1;
        int gmax;
        extent(&gt, &g0, &g1, &gmax);
        if (gmax > max_label) max_label = gmax;
    }
    int s = (int)((300 + im.d[0] - 1) / im.d[0]); /* at least 300 pixels wide */
    if (s > 4) s = 4;
    ms_report_printf(html, "<div class=\"row\">\n");
    for (int k = 0; k < 3 && !rc; k++) {
        int64_t z = z0 + (z1 - z0) * (k + 1) / 4;
        char name[64], path[MS_PATH_MAX];
        snprintf(name, sizeof name, "overlay_%d.png", k);
        if ((rc = ms_path_join(path, dir, name))) break;
        if ((rc = draw_slice(path, &im, &sg, gpath ? &gt : NULL, z, s, lo, hi))) break;
        ms_report_printf(html, "<figure><img class=\"ov\" src=\"%s\" alt=\"axial slice %lld\"><figcaption>axial slice z = %lld of "
                               "%lld</figcaption></figure>\n", name, (long long)z, (long long)z, (long long)im.d[2]);
    }
    ms_report_printf(html, "</div>\n<p class=\"legend\">");
    if (!max_label) ms_report_printf(html, "The predicted volume holds no labelled voxel (all background). ");
    for (int c = 1; c <= max_label && c <= 16; c++)
    {
        ms_report_printf(html, "<span class=\"sw\" style=\"background:#%02x%02x%02x\"></span> %d",
                         palette[(c - 1) % 8][0], palette[(c - 1) % 8][1], palette[(c - 1) % 8][2], c);
        if (names[c][0]) ms_report_printf(html, " ");
        ms_report_html(html, names[c]);
        ms_report_printf(html, " &nbsp; ");
    }
    if (max_label > 16) ms_report_printf(html, "(labels above 16 repeat the colours) ");
    ms_report_printf(html, "%s</p>\n", gpath ? "White outlines: the reference labels." : "");
    if (!rc && gpath) dice_table(&sg, &gt, max_label, names, html);
leave:
    free(names);
    free(im.v);
    free(sg.v);
    free(gt.v);
    return rc;
}
