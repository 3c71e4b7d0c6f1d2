/* tools/cmd_eval.c — `mrisam eval --pred DIR --gt DIR -o OUTDIR` or `--ckpt C --store S -o OUTDIR`: 3D Dice, IoU
 * and HD95 per volume and class.
 *
 * Files pair by name with the .nii/.nii.gz ending ignored (pred/a.nii.gz ↔ gt/a.nii); every file must have a
 * partner. A pair must share the grid (shape and voxel→world affine within 1e-3 mm) — no resampling ever happens.
 * Both volumes are read as frame 0 on the canonical grid (the same mapping for both, since the grids agree) and
 * must hold integer labels 0..65535. The class list is every value > 0 present in any volume; a class absent from
 * both volumes of a pair is NaN there (eval.h) and skipped by the means; HD95 is computed on the canonical grid with
 * its voxel sizes (distances are invariant under the permutation/flip). Outputs are written atomically.
 *
 * --ckpt --store: the model (finetune/predict.h) segments the store's labelled slices at the checkpoint's own
 * preprocessing; per volume the slices are restacked at their slice indices and scored like a file pair, with the
 * store's spacing (row, column, slice) for HD95. A run's shots.json restricts it to the validation selection.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "checkpoints/rundir.h"
#include "cli.h"
#include "data/nifti.h"
#include "data/sampler.h"
#include "data/store.h"
#include "finetune/eval.h"
#include "finetune/predict.h"

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

/* "VALUE NAME" lines (separator: blanks, ',', ':' or '='; '#' starts a comment) of txt (malloc'ed; freed here). */
static ms_status parse_names(const char *path, char *txt, char ***names, int *n_names)
{
    ms_status st = MS_OK;
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

static ms_status read_names(const char *path, char ***names, int *n_names)
{
    char *txt = NULL;
    size_t len = 0;
    ms_status st = ms_read_file(path, 1 << 20, &txt, &len);
    if (st) return st;
    return parse_names(path, txt, names, n_names);
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

/* ---- --ckpt C --store S: segment the store's labelled volumes and score them ------------------------------------ */

/* RUN/shots.json of the run the checkpoint belongs to (C = RUN, RUN/best or RUN/ckpt/step_N), or "" when none. */
static void find_shots(const char *ckpt, char *out, size_t n)
{
    static const char *rel[] = {"shots.json", "../shots.json", "../../shots.json"};
    char p[4400], real_c[4096];
    out[0] = 0;
    if (!realpath(ckpt, real_c)) return;
    const char *b = strrchr(real_c, '/');
    b = b ? b + 1 : real_c;
    int k = !strcmp(b, "best") ? 1 : !strncmp(b, "step_", 5) ? 2 : 0;
    snprintf(p, sizeof p, "%s/%s", real_c, rel[k]);
    char real_p[4096];
    if (access(p, R_OK) == 0 && realpath(p, real_p)) snprintf(out, n, "%s", real_p);
}

/* Index of `store` in a split file's "stores" (by real path, else by the path as written), or -1. */
static ms_status shots_index(const char *shots, const char *store, int *idx)
{
    cJSON *o;
    *idx = -1;
    MS_TRY(ms_read_json(shots, 1 << 26, &o));
    char want[4096], have[4096];
    int ok_want = realpath(store, want) != NULL, i = 0;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "stores"), *e;
    cJSON_ArrayForEach(e, st) {
        const cJSON *pp = cJSON_GetObjectItemCaseSensitive(e, "path");
        if (cJSON_IsString(pp) && *idx < 0 &&
            (!strcmp(pp->valuestring, store) ||
             (ok_want && realpath(pp->valuestring, have) && !strcmp(have, want))))
            *idx = i;
        i++;
    }
    cJSON_Delete(o);
    return MS_OK;
}

/* The volume's name for the CSV: its source file name without the NIfTI ending (stores written with --keep-paths),
 * else vol<id>. */
static char *volume_name(ms_store *s, uint32_t id)
{
    char *js = NULL, buf[512];
    snprintf(buf, sizeof buf, "vol%u", id);
    if (ms_store_volume_json(s, id, &js) == MS_OK && js) {
        cJSON *o = cJSON_Parse(js);
        const cJSON *p = o ? cJSON_GetObjectItemCaseSensitive(o, "path") : NULL;
        if (cJSON_IsString(p)) {
            const char *b = strrchr(p->valuestring, '/');
            b = b ? b + 1 : p->valuestring;
            const char *suf = nii_suffix(b);
            snprintf(buf, sizeof buf, "%.*s", suf ? (int)(suf - b) : (int)strlen(b), b);
        }
        cJSON_Delete(o);
    }
    free(js);
    return strdup(buf);
}

typedef struct ckpt_eval {
    const char *ckpt, *store, *task, *device, *shots; /* shots: "" = every labelled volume */
    int threads, batch, hd95;
} ckpt_eval;

/* Segments the selected labelled volumes of the store slice by slice and counts overlaps per volume. The stored
 * slices of a volume are restacked at their slice indices (slices ingest left out are 0 in both volumes, so HD95 sees
 * the true geometry); stored label values outside the task's classes count as background. */
static ms_status eval_store(const ckpt_eval *ce, char *task_name, size_t tn, pair **pairs_out, int *n_out,
                            char ***names, int *n_names)
{
    ms_status st = MS_OK;
    ms_device dev;
    int dev_ok = 0, pred_ok = 0;
    ms_store *s = NULL;
    ms_store_reader *rd = NULL;
    ms_predict_model model, *pm = &model;
    ms_predictor pr;
    ms_selection val = {0};
    int have_sel = 0;
    pair *pairs = NULL;
    int n_pairs = 0;
    float *img = NULL;
    uint16_t *plab = NULL, *lab = NULL, *pv = NULL, *gv = NULL;
    uint8_t *in_task = calloc(65536, 1); /* label value → 1 when it is one of the task's foreground classes */
    memset(&pr, 0, sizeof pr);
    memset(&model, 0, sizeof model);
    task_name[0] = 0;

    ms_device_kind kind;
    int index;
    if ((st = ms_device_parse(ce->device, &kind, &index))) goto leave;
    if ((st = ms_device_init_at(&dev, kind, index, ce->threads))) goto leave;
    dev_ok = 1;
    if ((st = ms_predict_model_load(pm, ce->ckpt, ce->task, &dev))) goto leave;
    if (pm->finetuned) snprintf(task_name, tn, "%s", pm->ft.cfg.task[pm->task].name);
    if ((st = ms_predictor_init_ex(&pr, pm->m, &dev, ce->batch, &pm->pc, pm->prompt))) goto leave;
    pred_ok = 1;
    ms_predict_opts po;
    ms_predict_opts_default(&po);
    po.batch = ce->batch;
    po.class_map = pm->class_map;
    po.n_class_map = pm->n_classes;
    if (!in_task) { st = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
    for (int c = 1; c < pm->n_classes; c++) in_task[pm->class_map[c]] = 1;
    if (pm->finetuned && !*names) { /* class names from meta.json, by label value */
        const ms_ft_task *t = &pm->ft.cfg.task[pm->task];
        char **v = calloc(65536, sizeof *v);
        if (!v) { st = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
        for (int c = 0; c < t->num_cls; c++)
            if (t->class_names[c][0]) {
                v[t->values[c]] = strdup(t->class_names[c]);
                if (t->values[c] + 1 > *n_names) *n_names = t->values[c] + 1;
            }
        *names = v;
    }

    if ((st = ms_store_open(ce->store, 4, &s))) goto leave;
    if (!*names && ms_store_label_names(s)) { /* else the store's --label-names */
        char *txt = strdup(ms_store_label_names(s));
        if (!txt) { st = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
        if ((st = parse_names(ce->store, txt, names, n_names))) goto leave;
    }
    if (ce->shots[0]) {
        int idx;
        if ((st = shots_index(ce->shots, ce->store, &idx))) goto leave;
        if (idx < 0) {
            fprintf(stderr, "eval: note: %s is not among the stores of %s; every labelled volume is evaluated\n",
                    ce->store, ce->shots);
        } else {
            if ((st = ms_split_load(ce->shots, idx, NULL, &val))) goto leave;
            have_sel = 1;
            if (val.n == 0) {
                st = ms_error(MS_EINVAL, "%s: the run has no validation selection for %s (use --all)", ce->shots,
                              ce->store);
                goto leave;
            }
        }
    }
    if ((st = ms_store_reader_new(s, &rd))) goto leave;
    uint32_t nv = ms_store_n_volumes(s);
    pairs = calloc(nv ? nv : 1, sizeof *pairs);
    if (!pairs) { st = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
    for (uint32_t id = 0; id < nv; id++) {
        ms_volume_info vi;
        if ((st = ms_store_volume(s, id, &vi))) goto leave;
        if (!vi.has_labels) continue;
        /* the selected slices: their index range along the axis */
        int64_t kmin = INT64_MAX, kmax = -1, n_sel = 0;
        for (uint64_t k = vi.first_key; k < vi.first_key + vi.n_slices; k++) {
            if (have_sel && !ms_selection_contains(&val, k)) continue;
            ms_slice sl;
            if ((st = ms_store_read(rd, k, &sl))) goto leave;
            kmin = sl.slice_index < kmin ? sl.slice_index : kmin;
            kmax = (int64_t)sl.slice_index > kmax ? sl.slice_index : kmax;
            n_sel++;
        }
        if (!n_sel) continue;
        const int H = vi.height, W = vi.width;
        const int64_t D = kmax - kmin + 1, npx = (int64_t)H * W, nvox = D * npx;
        free(pv), free(gv), free(img), free(plab), free(lab);
        pv = calloc((size_t)nvox, sizeof *pv);
        gv = calloc((size_t)nvox, sizeof *gv);
        img = malloc((size_t)(ce->batch * npx) * sizeof *img);
        plab = malloc((size_t)(ce->batch * npx) * sizeof *plab);
        lab = malloc((size_t)(ce->batch * npx) * sizeof *lab);
        int64_t *zs = malloc((size_t)ce->batch * sizeof *zs);
        if (!pv || !gv || !img || !plab || !lab || !zs) {
            free(zs);
            st = ms_error(MS_ENOMEM, "out of memory");
            goto leave;
        }
        int nb = 0;
        for (uint64_t k = vi.first_key; k < vi.first_key + vi.n_slices && !st; k++) {
            if (have_sel && !ms_selection_contains(&val, k)) continue;
            ms_slice sl;
            if ((st = ms_store_read(rd, k, &sl))) break;
            if (sl.height != H || sl.width != W) {
                st = ms_error(MS_EFORMAT, "%s: key %llu: slice %dx%d in a %dx%d volume", ce->store,
                              (unsigned long long)k, sl.height, sl.width, H, W);
                break;
            }
            int64_t z = (int64_t)sl.slice_index - kmin;
            for (int64_t i = 0; i < npx; i++) {
                img[nb * npx + i] = (float)sl.pixels[i] * (1.0f / 65535.0f); /* the loader's scaling */
                uint16_t g = sl.label ? sl.label[i] : 0;
                plab[nb * npx + i] = g;
                gv[z * npx + i] = in_task[g] ? g : 0;
            }
            zs[nb++] = z;
            /* flush when the batch is full or this is the volume's last selected slice */
            uint64_t kn = k + 1;
            while (have_sel && kn < vi.first_key + vi.n_slices && !ms_selection_contains(&val, kn)) kn++;
            if (nb == ce->batch || kn >= vi.first_key + vi.n_slices) {
                if ((st = ms_predict_slices(&pr, &po, img, plab, nb, H, W, lab))) break;
                for (int b = 0; b < nb; b++) memcpy(pv + zs[b] * npx, lab + b * npx, (size_t)npx * sizeof *pv);
                nb = 0;
            }
        }
        free(zs);
        if (st) goto leave;
        pair *p = &pairs[n_pairs++];
        p->base = volume_name(s, id);
        if (!p->base) { st = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
        ms_overlap o = {0};
        if ((st = ms_overlap_count(pv, gv, nvox, ce->threads, &o))) goto leave;
        p->n_labels = o.n_labels;
        p->inter = o.inter, p->np = o.pred, p->ng = o.gt;
        if (ce->hd95) {
            const int64_t dim[3] = {W, H, D};
            const double sp[3] = {vi.spacing[1], vi.spacing[0], vi.spacing[2]}; /* x = column, y = row, z = slice */
            p->hd95 = malloc((size_t)p->n_labels * sizeof *p->hd95);
            if (!p->hd95) { st = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
            for (int c = 0; c < p->n_labels; c++) {
                p->hd95[c] = NAN;
                if (c > 0 && (p->np[c] || p->ng[c]) && (st = ms_hd95(pv, gv, dim, sp, c, ce->threads, &p->hd95[c])))
                    goto leave;
            }
        }
        fprintf(stderr, "eval: %s: %lld slices segmented\n", p->base, (long long)n_sel);
    }
    if (!n_pairs) st = ms_error(MS_ENOTFOUND, "%s: no labelled volumes%s", ce->store,
                                have_sel ? " in the run's validation selection" : "");
leave:
    free(pv), free(gv), free(img), free(plab), free(lab), free(in_task);
    if (rd) ms_store_reader_free(rd);
    if (s) ms_store_close(s);
    ms_selection_free(&val);
    if (pred_ok) ms_predictor_free(&pr);
    ms_predict_model_free(pm); /* before its device */
    if (dev_ok) ms_device_free(&dev);
    *pairs_out = pairs;
    *n_out = n_pairs;
    return st;
}

static int run(int argc, char **argv)
{
    static const ms_cmd_help h = {
        "mrisam eval --pred DIR --gt DIR -o OUTDIR [--label-names FILE] [--no-hd95] [--threads N]\n"
        "       mrisam eval --ckpt C --store S -o OUTDIR [--task NAME] [--all] [--device cpu|cuda] [--batch-size B]",
        "Compare predicted label volumes with ground truth: 3D Dice and IoU per volume and class. Files pair by name "
        "(.nii and .nii.gz are interchangeable) and must share the grid. Every label value > 0 found in any volume "
        "is a class; a class absent from both volumes of a pair is undefined (nan) there, not 1, and skipped by the "
        "means. HD95 (mm) is the larger directed 95th percentile of surface distances; inf when only one volume has "
        "the class. Writes OUTDIR/per_volume.csv and OUTDIR/summary.md and prints the summary table.\n"
        "With --ckpt C --store S the checkpoint segments the store's labelled volumes slice by slice (its own "
        "preprocessing; prompt-trained checkpoints take their prompts from the stored labels) and each volume is "
        "scored against its stored labels, mapped through the task's class values (other values count as "
        "background). When C belongs to a run with shots.json (C = RUN/, RUN/best or RUN/ckpt/step_N) only the "
        "run's validation selection is evaluated, unless --all.",
        "mrisam eval --pred runs/a/pred --gt data/labels -o runs/a/eval --label-names labels.txt\n"
        "  mrisam eval --ckpt runs/ft/ --store prostate.store -o runs/ft/eval"};
    const char *pred_dir = NULL, *gt_dir = NULL, *out = NULL, *names_path = NULL, *ckpt = NULL, *store = NULL,
               *task = NULL, *device = "cpu";
    int threads = 0, no_hd95 = 0, all = 0, batch = 4;
    const ms_opt opts[] = {
        {"pred", MS_OPT_STR, &pred_dir, "DIR", "predicted label volumes (.nii / .nii.gz)"},
        {"gt", MS_OPT_STR, &gt_dir, "DIR", "ground-truth label volumes, same file names"},
        {"ckpt", MS_OPT_STR, &ckpt, "C", "a fine-tuned checkpoint (RUN/, RUN/best) or SAM-layout weights"},
        {"store", MS_OPT_STR, &store, "S", "the store whose labelled volumes --ckpt segments"},
        {"task", MS_OPT_STR, &task, "NAME", "the task of a multi-task checkpoint"},
        {"all", MS_OPT_FLAG, &all, NULL, "every labelled volume, even when the run has a validation selection"},
        {"device", MS_OPT_STR, &device, "cpu|cuda", "compute device for --ckpt (default cpu)"},
        {"batch-size", MS_OPT_INT, &batch, "B", "slices per encoder batch for --ckpt (default 4)"},
        {"o", MS_OPT_STR, &out, "OUTDIR", "output folder (created when absent)"},
        {"label-names", MS_OPT_STR, &names_path, "FILE", "class names: lines \"VALUE NAME\" ('#' comments)"},
        {"no-hd95", MS_OPT_FLAG, &no_hd95, NULL, "skip HD95 (the slowest metric)"},
        {"threads", MS_OPT_INT, &threads, "N", "threads (default: all cores)"},
        {0}};
    int rc = ms_cli_parse(&h, opts, argc, argv, NULL);
    if (rc) return rc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    int mode_files = pred_dir || gt_dir, mode_ckpt = ckpt || store;
    if (!out || mode_files == mode_ckpt || (mode_files && (!pred_dir || !gt_dir)) || (mode_ckpt && (!ckpt || !store))) {
        fprintf(stderr, "mrisam eval: needs -o and either --pred and --gt, or --ckpt and --store (see mrisam eval "
                        "--help)\n");
        return MS_EXIT_USAGE;
    }
    if (mode_files && (task || all)) {
        fprintf(stderr, "mrisam eval: --task and --all go with --ckpt\n");
        return MS_EXIT_USAGE;
    }
    if (batch < 1 || batch > 1024) {
        fprintf(stderr, "mrisam eval: --batch-size must be 1..1024\n");
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
    char shots[4400] = "", task_name[MS_FT_NAME_MAX] = "";

    if (names_path && (st = read_names(names_path, &names, &n_names))) goto leave;
    if (mode_ckpt) {
        if (!all) find_shots(ckpt, shots, sizeof shots);
        ckpt_eval ce = {ckpt, store, task, device, shots, threads, batch, !no_hd95};
        if ((st = eval_store(&ce, task_name, sizeof task_name, &pairs, &n_pairs, &names, &n_names))) goto leave;
    } else {
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
    }

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
    if (mode_ckpt)
        fprintf(fm, "# mrisam eval\n\ncheckpoint: %s%s%s  \nstore: %s (%s%s)  \nvolumes: %d\n\n", ckpt,
                task_name[0] ? ", task " : "", task_name, store,
                shots[0] ? "the validation selection of " : "every labelled volume", shots[0] ? shots : "", n_pairs);
    else
        fprintf(fm, "# mrisam eval\n\nprediction: %s  \nground truth: %s  \nvolumes: %d\n\n", pred_dir, gt_dir,
                n_pairs);
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

const ms_command ms_cmd_eval = {"eval", "3D Dice and IoU of label volumes against ground truth (files or a store)",
                                run};
