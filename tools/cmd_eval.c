/* tools/cmd_eval.c — `mrisam eval --pred DIR --gt DIR -o OUTDIR`: 3D Dice, IoU and HD95 per volume and class.
 *
 * Files pair by name with the .nii/.nii.gz ending ignored (pred/a.nii.gz ↔ gt/a.nii); every file must have a
 * partner. A pair must share the grid (shape and voxel→world affine within 1e-3 mm) — no resampling ever happens.
 * Both volumes are read as frame 0 on the canonical grid (the same mapping for both, since the grids agree) and
 * must hold integer labels 0..65535. The class list is every value > 0 present in any volume; a class absent from
 * both volumes of a pair is NaN there (eval.h) and skipped by the means; HD95 is computed on the canonical grid with
 * its voxel sizes (distances are invariant under the permutation/flip). Outputs are written atomically.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/rundir.h"
#include "cli.h"
#include "data/nifti.h"
#include "finetune/eval.h"

typedef struct {
    char *base;           /* file name without .nii / .nii.gz */
    char *pred, *gt;      /* full paths */
    int n_labels;
    int64_t *inter, *np, *ng; /* indexed by label */
    double *hd95;             /* indexed by label; NULL with --no-hd95 */
} pair;

static const char *nii_suffix(const char *name)
{
    size_t n = strlen(name);
    if (n > 7 && strcmp(name + n - 7, ".nii.gz") == 0) return name + n - 7;
    if (n > 4 && strcmp(name + n - 4, ".nii") == 0) return name + n - 4;
    return NULL;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The .nii/.nii.gz names of dir, sorted. */
static ms_status list_dir(const char *dir, ms_strlist *out)
{
    DIR *d = opendir(dir);
    if (!d) return ms_error(errno, "%s: %s", dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && nii_suffix(e->d_name)) ms_strlist_push(out, e->d_name);
    closedir(d);
    if (out->n == 0) return ms_error(MS_ENOTFOUND, "%s: no .nii or .nii.gz files", dir);
    qsort(out->v, (size_t)out->n, sizeof *out->v, cmp_str);
    return MS_OK;
}

static char *base_of(const char *name)
{
    size_t k = (size_t)(nii_suffix(name) - name);
    char *b = malloc(k + 1);
    if (b) memcpy(b, name, k), b[k] = 0;
    return b;
}

static char *join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (p) {
        memcpy(p, dir, a);
        p[a] = '/';
        memcpy(p + a + 1, name, b + 1);
    }
    return p;
}

/* Finds base in the (sorted) name list; MS_EFORMAT when two files share it. */
static ms_status find_base(const ms_strlist *l, const char *dir, const char *base, int *idx)
{
    *idx = -1;
    for (int i = 0; i < l->n; i++) {
        size_t k = (size_t)(nii_suffix(l->v[i]) - l->v[i]);
        if (strlen(base) != k || strncmp(l->v[i], base, k) != 0) continue;
        if (*idx >= 0)
            return ms_error(MS_EINVAL, "%s/%s: ambiguous: %s also exists", dir, l->v[i], l->v[*idx]);
        *idx = i;
    }
    return MS_OK;
}

/* "VALUE NAME" lines (separator: blanks, ',', ':' or '='; '#' starts a comment). */
static ms_status read_names(const char *path, char ***names, int *n_names)
{
    char *txt = NULL;
    size_t len = 0;
    ms_status st = ms_read_file(path, 1 << 20, &txt, &len);
    if (st) return st;
    char **v = calloc(65536, sizeof *v);
    if (!v) {
        free(txt);
        return ms_error(MS_ENOMEM, "%s: out of memory", path);
    }
    int line = 0, top = 0;
    for (char *s = txt, *next; s && *s; s = next) {
        next = strchr(s, '\n');
        if (next) *next++ = 0;
        line++;
        char *h = strchr(s, '#');
        if (h) *h = 0;
        while (isspace((unsigned char)*s)) s++;
        size_t k = strlen(s);
        while (k && isspace((unsigned char)s[k - 1])) s[--k] = 0;
        if (!*s) continue;
        char *end;
        long val = strtol(s, &end, 10);
        if (end == s || val < 0 || val > 65535) {
            st = ms_error(MS_EFORMAT, "%s:%d: expected \"VALUE NAME\"", path, line);
            break;
        }
        while (*end && (isspace((unsigned char)*end) || *end == ',' || *end == ':' || *end == '=')) end++;
        if (!*end) {
            st = ms_error(MS_EFORMAT, "%s:%d: label %ld has no name", path, line, val);
            break;
        }
        free(v[val]);
        v[val] = strdup(end);
        if (val + 1 > top) top = (int)val + 1;
    }
    free(txt);
    if (st) {
        for (int i = 0; i < 65536; i++) free(v[i]);
        free(v);
        return st;
    }
    *names = v;
    *n_names = top;
    return MS_OK;
}

/* Frame 0 on the canonical grid as integer labels. */
static ms_status load_labels(const ms_nifti *n, const char *path, uint16_t *dst, float *tmp)
{
    uint64_t nonfinite = 0;
    ms_status st = ms_nifti_frame(n, 0, tmp, &nonfinite);
    if (st) {
        ms_error_prefix("%s", path);
        return st;
    }
    if (nonfinite) return ms_error(MS_EFORMAT, "%s: %llu NaN/Inf voxels in a label volume", path,
                                   (unsigned long long)nonfinite);
    int64_t nv = n->cdim[0] * n->cdim[1] * n->cdim[2];
    for (int64_t i = 0; i < nv; i++) {
        float v = tmp[i], r = rintf(v);
        if (!(r >= 0 && r <= 65535) || fabsf(v - r) > 1e-3f)
            return ms_error(MS_EFORMAT, "%s: voxel value %g is not a label (an integer 0..65535)", path, (double)v);
        dst[i] = (uint16_t)r;
    }
    return MS_OK;
}

/* Opens, checks and counts one pair. */
static ms_status eval_pair(pair *p, int threads, int hd95)
{
    ms_nifti a, b;
    int oa = 0, ob = 0;
    float *tmp = NULL;
    uint16_t *lp = NULL, *lg = NULL;
    ms_overlap o = {0};
    ms_status st = ms_nifti_open(p->pred, &a);
    if (st) goto leave;
    oa = 1;
    st = ms_nifti_open(p->gt, &b);
    if (st) goto leave;
    ob = 1;
    if (a.sdim[0] != b.sdim[0] || a.sdim[1] != b.sdim[1] || a.sdim[2] != b.sdim[2]) {
        st = ms_error(MS_ESHAPE, "%s: grid %lldx%lldx%lld differs from %s (%lldx%lldx%lld)", p->pred,
                      (long long)a.sdim[0], (long long)a.sdim[1], (long long)a.sdim[2], p->gt, (long long)b.sdim[0],
                      (long long)b.sdim[1], (long long)b.sdim[2]);
        goto leave;
    }
    if (!ms_affine_close(a.affine, b.affine, 1e-3)) {
        double d = 0;
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 4; j++) d = fmax(d, fabs(a.affine[i][j] - b.affine[i][j]));
        st = ms_error(MS_ESHAPE, "%s: affine differs from %s's by up to %.4g mm (no resampling is done)", p->pred,
                      p->gt, d);
        goto leave;
    }
    for (int i = 0; i < 3; i++)
        if (a.perm[i] != b.perm[i] || a.flip[i] != b.flip[i]) { /* only near 45° obliquity, within the tolerance */
            st = ms_error(MS_ESHAPE, "%s: orientation ambiguous against %s (axes map differently to RAS)", p->pred,
                          p->gt);
            goto leave;
        }
    int64_t nv = a.cdim[0] * a.cdim[1] * a.cdim[2];
    tmp = malloc((size_t)nv * sizeof *tmp);
    lp = malloc((size_t)nv * sizeof *lp);
    lg = malloc((size_t)nv * sizeof *lg);
    if (!tmp || !lp || !lg) {
        st = ms_error(MS_ENOMEM, "%s: out of memory", p->pred);
        goto leave;
    }
    if ((st = load_labels(&a, p->pred, lp, tmp)) || (st = load_labels(&b, p->gt, lg, tmp))) goto leave;
    st = ms_overlap_count(lp, lg, nv, threads, &o);
    if (st) goto leave;
    p->n_labels = o.n_labels;
    p->inter = o.inter, p->np = o.pred, p->ng = o.gt; /* ownership moves to the pair */
    if (hd95) {
        p->hd95 = malloc((size_t)p->n_labels * sizeof *p->hd95);
        if (!p->hd95) {
            st = ms_error(MS_ENOMEM, "%s: out of memory", p->pred);
            goto leave;
        }
        for (int c = 0; c < p->n_labels; c++) {
            p->hd95[c] = NAN;
            if (c > 0 && (p->np[c] || p->ng[c]) && (st = ms_hd95(lp, lg, a.cdim, a.cspacing, c, threads, &p->hd95[c])))
                goto leave;
        }
    }
leave:
    if (oa) ms_nifti_close(&a);
    if (ob) ms_nifti_close(&b);
    free(tmp);
    free(lp);
    free(lg);
    return st;
}

static void csv_field(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void put_num(FILE *f, double v)
{
    if (isnan(v)) fputs("nan", f);
    else if (isinf(v)) fputs("inf", f);
    else fprintf(f, "%.8f", v);
}

static int run(int argc, char **argv)
{
    static const ms_cmd_help h = {
        "mrisam eval --pred DIR --gt DIR -o OUTDIR [--label-names FILE] [--no-hd95] [--threads N]",
        "Compare predicted label volumes with ground truth: 3D Dice and IoU per volume and class. Files pair by name "
        "(.nii and .nii.gz are interchangeable) and must share the grid. Every label value > 0 found in any volume "
        "is a class; a class absent from both volumes of a pair is undefined (nan) there, not 1, and skipped by the "
        "means. HD95 (mm) is the larger directed 95th percentile of surface distances; inf when only one volume has "
        "the class. Writes OUTDIR/per_volume.csv and OUTDIR/summary.md and prints the summary table.",
        "mrisam eval --pred runs/a/pred --gt data/labels -o runs/a/eval --label-names labels.txt"};
    const char *pred_dir = NULL, *gt_dir = NULL, *out = NULL, *names_path = NULL;
    int threads = 0, no_hd95 = 0;
    const ms_opt opts[] = {
        {"pred", MS_OPT_STR, &pred_dir, "DIR", "predicted label volumes (.nii / .nii.gz)"},
        {"gt", MS_OPT_STR, &gt_dir, "DIR", "ground-truth label volumes, same file names"},
        {"o", MS_OPT_STR, &out, "OUTDIR", "output folder (created when absent)"},
        {"label-names", MS_OPT_STR, &names_path, "FILE", "class names: lines \"VALUE NAME\" ('#' comments)"},
        {"no-hd95", MS_OPT_FLAG, &no_hd95, NULL, "skip HD95 (the slowest metric)"},
        {"threads", MS_OPT_INT, &threads, "N", "threads (default: all cores)"},
        {0}};
    int rc = ms_cli_parse(&h, opts, argc, argv, NULL);
    if (rc) return rc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    if (!pred_dir || !gt_dir || !out) {
        fprintf(stderr, "mrisam eval: --pred, --gt and -o are required (see mrisam eval --help)\n");
        return MS_EXIT_USAGE;
    }
    ms_strlist lp = {0}, lg = {0};
    pair *pairs = NULL;
    int n_pairs = 0, n_names = 0, n_classes = 0;
    char **names = NULL, *csv = NULL, *md = NULL;
    int *classes = NULL;
    double *vals = NULL;
    size_t csv_len = 0, md_len = 0;
    FILE *fc = NULL, *fm = NULL;
    ms_status st = MS_OK;

    if (names_path && (st = read_names(names_path, &names, &n_names))) goto leave;
    if ((st = list_dir(pred_dir, &lp)) || (st = list_dir(gt_dir, &lg))) goto leave;
    pairs = calloc((size_t)lg.n, sizeof *pairs);
    if (!pairs) {
        st = ms_error(MS_ENOMEM, "out of memory");
        goto leave;
    }
    for (int i = 0; i < lg.n; i++) {
        pair *p = &pairs[n_pairs++];
        int j, k;
        p->base = base_of(lg.v[i]);
        if ((st = find_base(&lg, gt_dir, p->base, &k))) goto leave;
        if ((st = find_base(&lp, pred_dir, p->base, &j))) goto leave;
        if (j < 0) {
            st = ms_error(MS_ENOTFOUND, "%s/%s: no prediction named %s.nii[.gz] in %s", gt_dir, lg.v[i], p->base,
                          pred_dir);
            goto leave;
        }
        p->gt = join(gt_dir, lg.v[i]);
        p->pred = join(pred_dir, lp.v[j]);
    }
    for (int j = 0; j < lp.n; j++) {
        char *b = base_of(lp.v[j]);
        int k;
        st = find_base(&lg, gt_dir, b, &k);
        free(b);
        if (st) goto leave;
        if (k < 0) {
            st = ms_error(MS_ENOTFOUND, "%s/%s: no ground truth of that name in %s", pred_dir, lp.v[j], gt_dir);
            goto leave;
        }
    }
    for (int i = 0; i < n_pairs; i++)
        if ((st = eval_pair(&pairs[i], threads, !no_hd95))) goto leave;

    /* classes: every value > 0 present in any volume */
    int max_l = 0;
    for (int i = 0; i < n_pairs; i++) max_l = pairs[i].n_labels > max_l ? pairs[i].n_labels : max_l;
    classes = malloc((size_t)(max_l + 1) * sizeof *classes);
    vals = malloc((size_t)(3 * n_pairs + 1) * sizeof *vals);
    if (!classes || !vals) {
        st = ms_error(MS_ENOMEM, "out of memory");
        goto leave;
    }
    for (int c = 1; c < max_l; c++)
        for (int i = 0; i < n_pairs; i++)
            if (c < pairs[i].n_labels && (pairs[i].np[c] || pairs[i].ng[c])) {
                classes[n_classes++] = c;
                break;
            }

    fc = open_memstream(&csv, &csv_len);
    fm = open_memstream(&md, &md_len);
    if (!fc || !fm) {
        st = ms_error(MS_ENOMEM, "out of memory");
        goto leave;
    }
    fputs(no_hd95 ? "volume,class,name,dice,iou\n" : "volume,class,name,dice,iou,hd95\n", fc);
    for (int i = 0; i < n_pairs; i++)
        for (int k = 0; k < n_classes; k++) {
            int c = classes[k];
            const pair *p = &pairs[i];
            int64_t in = c < p->n_labels ? p->inter[c] : 0, a = c < p->n_labels ? p->np[c] : 0,
                    g = c < p->n_labels ? p->ng[c] : 0;
            csv_field(fc, p->base);
            fprintf(fc, ",%d,", c);
            csv_field(fc, c < n_names && names[c] ? names[c] : "");
            fputc(',', fc);
            put_num(fc, ms_dice(in, a, g));
            fputc(',', fc);
            put_num(fc, ms_iou(in, a, g));
            if (!no_hd95) {
                fputc(',', fc);
                put_num(fc, c < p->n_labels ? p->hd95[c] : NAN);
            }
            fputc('\n', fc);
        }
    fprintf(fm, "# mrisam eval\n\nprediction: %s  \nground truth: %s  \nvolumes: %d\n\n", pred_dir, gt_dir, n_pairs);
    fputs(no_hd95 ? "| class | name | n | Dice (mean ± sd) | IoU (mean ± sd) |\n|---:|---|---:|---|---|\n"
                  : "| class | name | n | Dice (mean ± sd) | IoU (mean ± sd) | HD95 mm (mean ± sd) |\n"
                    "|---:|---|---:|---|---|---|\n",
          fm);
    for (int k = 0; k < n_classes; k++) {
        int c = classes[k], nd, ni, nh, n_inf = 0;
        double *dv = vals, *iv = vals + n_pairs, *hv = vals + 2 * n_pairs, dm, ds, im, is, hm, hs;
        for (int i = 0; i < n_pairs; i++) {
            const pair *p = &pairs[i];
            int64_t in = c < p->n_labels ? p->inter[c] : 0, a = c < p->n_labels ? p->np[c] : 0,
                    g = c < p->n_labels ? p->ng[c] : 0;
            dv[i] = ms_dice(in, a, g);
            iv[i] = ms_iou(in, a, g);
            hv[i] = !no_hd95 && c < p->n_labels ? p->hd95[c] : NAN;
            n_inf += isinf(hv[i]) != 0;
        }
        ms_mean_sd(dv, n_pairs, &dm, &ds, &nd);
        ms_mean_sd(iv, n_pairs, &im, &is, &ni);
        ms_mean_sd(hv, n_pairs, &hm, &hs, &nh);
        fprintf(fm, "| %d | %s | %d | %.4f ± %.4f | %.4f ± %.4f |", c, c < n_names && names[c] ? names[c] : "", nd, dm,
                ds, im, is);
        if (!no_hd95) {
            fprintf(fm, " %.2f ± %.2f", hm, hs);
            if (n_inf) fprintf(fm, " (%d inf left out)", n_inf);
            fputs(" |", fm);
        }
        fputc('\n', fm);
    }
    fputs("\nn counts the volumes where the class is present in the prediction or the ground truth; a class absent "
          "from both is undefined there and left out (never scored as 1). sd is the sample standard deviation. HD95 "
          "is inf where only one of the two volumes has the class; those are left out of its mean.\n",
          fm);
    if (fclose(fc) || fclose(fm)) {
        fc = fm = NULL;
        st = ms_error(MS_ENOMEM, "out of memory");
        goto leave;
    }
    fc = fm = NULL;
    char path[4096];
    if ((st = ms_mkdirs(out))) goto leave;
    snprintf(path, sizeof path, "%s/per_volume.csv", out);
    if ((st = ms_write_file_atomic(path, csv, csv_len))) goto leave;
    snprintf(path, sizeof path, "%s/summary.md", out);
    if ((st = ms_write_file_atomic(path, md, md_len))) goto leave;
    fwrite(md, 1, md_len, stdout);
leave:
    if (fc) fclose(fc);
    if (fm) fclose(fm);
    free(csv);
    free(md);
    for (int i = 0; i < n_pairs; i++) {
        free(pairs[i].base);
        free(pairs[i].pred);
        free(pairs[i].gt);
        free(pairs[i].inter);
        free(pairs[i].np);
        free(pairs[i].ng);
        free(pairs[i].hd95);
    }
    free(pairs);
    free(classes);
    free(vals);
    if (names) {
        for (int i = 0; i < 65536; i++) free(names[i]);
        free(names);
    }
    ms_strlist_free(&lp);
    ms_strlist_free(&lg);
    return ms_cli_report("eval", st);
}

const ms_command ms_cmd_eval = {"eval", "3D Dice and IoU of predicted label volumes against ground truth", run};
