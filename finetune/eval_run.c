/* finetune/eval_run.c — `mrisam eval`'s evaluation and report (see eval_run.h). */
#include "finetune/eval_run.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "checkpoints/rundir.h"
#include "data/nifti.h"
#include "data/sampler.h"
#include "data/store.h"
#include "data/store_norm.h"
#include "finetune/predict.h"

enum { N_NAME_SLOTS = 65536 }; /* one per 16-bit label value */

static void names_free(char **v)
{
    if (!v) return;
    for (int i = 0; i < N_NAME_SLOTS; i++) free(v[i]);
    free(v);
}

void ms_eval_result_free(ms_eval_result *r)
{
    for (int i = 0; i < r->n_pairs; i++) {
        ms_eval_pair *p = &r->pairs[i];
        free(p->name);
        free(p->pred);
        free(p->gt);
        free(p->inter);
        free(p->np);
        free(p->ng);
        free(p->hd95);
        free(p->nsd);
    }
    free(r->pairs);
    names_free(r->names);
    free(r->header);
    memset(r, 0, sizeof *r);
}

/* A malloc'ed printf; NULL when out of memory. */
static char *format(const char *fmt, ...) MS_PRINTF(1, 2);
static char *format(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    int k = vasprintf(&s, fmt, ap);
    va_end(ap);
    return k < 0 ? NULL : s;
}

/* ---- class names ------------------------------------------------------------------------------------------------ */

/* "VALUE NAME" lines of txt (malloc'ed; freed here) into r->names (which must be NULL). */
static ms_status names_parse(ms_eval_result *r, const char *path, char *txt)
{
    ms_status st = MS_OK;
    char **v = calloc(N_NAME_SLOTS, sizeof *v);
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
        if (end == s || val < 0 || val >= N_NAME_SLOTS) {
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
        names_free(v);
        return st;
    }
    r->names = v;
    r->n_names = top;
    return MS_OK;
}

ms_status ms_eval_names_read(ms_eval_result *r, const char *path)
{
    char *txt = NULL;
    size_t len = 0;
    MS_TRY(ms_read_file(path, 1 << 20, &txt, &len));
    names_free(r->names);
    r->names = NULL;
    return names_parse(r, path, txt);
}

ms_status ms_eval_names_parse(ms_eval_result *r, const char *what, const char *text)
{
    char *txt = strdup(text);
    MS_FAIL_IF(!txt, MS_ENOMEM, "%s: out of memory", what);
    names_free(r->names);
    r->names = NULL;
    return names_parse(r, what, txt);
}

/* ---- scoring ---------------------------------------------------------------------------------------------------- */

/* Overlap counts (and HD95, NSD as r asks) of one pair of label volumes of dim[0]·dim[1]·dim[2] voxels, spacing in
 * mm. */
static ms_status pair_score(const ms_eval_result *r, ms_eval_pair *p, const uint16_t *pred, const uint16_t *gt,
                           const int64_t dim[3], const double spacing[3], int n_threads)
{
    ms_overlap o = {0};
    MS_TRY(ms_overlap_count(pred, gt, dim[0] * dim[1] * dim[2], n_threads, &o));
    p->n_labels = o.n_labels;
    p->inter = o.inter, p->np = o.pred, p->ng = o.gt; /* ownership moves to the pair */
    if (r->hd95) {
        p->hd95 = malloc((size_t)p->n_labels * sizeof *p->hd95);
        MS_FAIL_IF(!p->hd95, MS_ENOMEM, "%s: out of memory", p->name);
        for (int c = 0; c < p->n_labels; c++) {
            p->hd95[c] = NAN;
            if (c > 0 && (p->np[c] || p->ng[c])) MS_TRY(ms_hd95(pred, gt, dim, spacing, c, n_threads, &p->hd95[c]));
        }
    }
    if (r->nsd) {
        p->nsd = malloc((size_t)p->n_labels * sizeof *p->nsd);
        MS_FAIL_IF(!p->nsd, MS_ENOMEM, "%s: out of memory", p->name);
        for (int c = 0; c < p->n_labels; c++) {
            p->nsd[c] = NAN;
            if (c > 0 && (p->np[c] || p->ng[c]))
                MS_TRY(ms_nsd(pred, gt, dim, spacing, c, r->nsd_tol, n_threads, &p->nsd[c]));
        }
    }
    return MS_OK;
}

/* ---- pairs of label files --------------------------------------------------------------------------------------- */

/* The .nii/.nii.gz names of dir, sorted; at least one. */
static ms_status list_dir(const char *dir, char ***names, int *n)
{
    MS_TRY(ms_path_list_nii(dir, names, n));
    MS_FAIL_IF(*n == 0, MS_ENOTFOUND, "%s: no .nii or .nii.gz files", dir);
    return MS_OK;
}

static void list_free(char **v, int n)
{
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

/* name without its .nii / .nii.gz ending (malloc'ed). */
static char *base_of(const char *name)
{
    size_t k = (size_t)(ms_path_nii_suffix(name) - name);
    char *b = malloc(k + 1);
    if (b) memcpy(b, name, k), b[k] = 0;
    return b;
}

/* Finds base in the (sorted) name list (*idx = -1 when absent); MS_EINVAL when two files share it. */
static ms_status find_base(char *const *v, int n, const char *dir, const char *base, int *idx)
{
    *idx = -1;
    for (int i = 0; i < n; i++) {
        size_t k = (size_t)(ms_path_nii_suffix(v[i]) - v[i]);
        if (strlen(base) != k || strncmp(v[i], base, k) != 0) continue;
        if (*idx >= 0) return ms_error(MS_EINVAL, "%s/%s: ambiguous: %s also exists", dir, v[i], v[*idx]);
        *idx = i;
    }
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

/* The two volumes of a pair share the grid: shape, affine within 1e-3 mm, and the same axis mapping. */
static ms_status grids_match(const ms_eval_pair *p, const ms_nifti *a, const ms_nifti *b)
{
    if (a->sdim[0] != b->sdim[0] || a->sdim[1] != b->sdim[1] || a->sdim[2] != b->sdim[2])
        return ms_error(MS_ESHAPE, "%s: grid %lldx%lldx%lld differs from %s (%lldx%lldx%lld)", p->pred,
                        (long long)a->sdim[0], (long long)a->sdim[1], (long long)a->sdim[2], p->gt,
                        (long long)b->sdim[0], (long long)b->sdim[1], (long long)b->sdim[2]);
    if (!ms_affine_close(a->affine, b->affine, 1e-3)) {
        double d = 0;
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 4; j++) d = fmax(d, fabs(a->affine[i][j] - b->affine[i][j]));
        return ms_error(MS_ESHAPE, "%s: affine differs from %s's by up to %.4g mm (no resampling is done)", p->pred,
                        p->gt, d);
    }
    for (int i = 0; i < 3; i++)
        if (a->perm[i] != b->perm[i] || a->flip[i] != b->flip[i]) /* only near 45° obliquity, within the tolerance */
            return ms_error(MS_ESHAPE, "%s: orientation ambiguous against %s (axes map differently to RAS)", p->pred,
                            p->gt);
    return MS_OK;
}

/* Opens, checks and scores one pair of files. */
static ms_status file_pair_score(const ms_eval_result *r, ms_eval_pair *p, int n_threads)
{
    ms_nifti a, b;
    int oa = 0, ob = 0;
    float *tmp = NULL;
    uint16_t *lp = NULL, *lg = NULL;
    ms_status st = ms_nifti_open(p->pred, &a);
    if (st) goto leave;
    oa = 1;
    if ((st = ms_nifti_open(p->gt, &b))) goto leave;
    ob = 1;
    if ((st = grids_match(p, &a, &b))) goto leave;
    int64_t nv = a.cdim[0] * a.cdim[1] * a.cdim[2];
    tmp = malloc((size_t)nv * sizeof *tmp);
    lp = malloc((size_t)nv * sizeof *lp);
    lg = malloc((size_t)nv * sizeof *lg);
    if (!tmp || !lp || !lg) {
        st = ms_error(MS_ENOMEM, "%s: out of memory", p->pred);
        goto leave;
    }
    if ((st = load_labels(&a, p->pred, lp, tmp)) || (st = load_labels(&b, p->gt, lg, tmp))) goto leave;
    st = pair_score(r, p, lp, lg, a.cdim, a.cspacing, n_threads);
leave:
    if (oa) ms_nifti_close(&a);
    if (ob) ms_nifti_close(&b);
    free(tmp);
    free(lp);
    free(lg);
    return st;
}

/* Pairs the files of the two listings by name; every file must have a partner. */
static ms_status pair_files(ms_eval_result *r, const char *pred_dir, char **lp, int np, const char *gt_dir,
                            char **lg, int ng)
{
    r->pairs = calloc((size_t)ng, sizeof *r->pairs);
    MS_FAIL_IF(!r->pairs, MS_ENOMEM, "out of memory");
    for (int i = 0; i < ng; i++) {
        ms_eval_pair *p = &r->pairs[r->n_pairs++];
        int j, k;
        p->name = base_of(lg[i]);
        MS_FAIL_IF(!p->name, MS_ENOMEM, "out of memory");
        MS_TRY(find_base(lg, ng, gt_dir, p->name, &k));
        MS_TRY(find_base(lp, np, pred_dir, p->name, &j));
        MS_FAIL_IF(j < 0, MS_ENOTFOUND, "%s/%s: no prediction named %s.nii[.gz] in %s", gt_dir, lg[i], p->name,
                   pred_dir);
        p->gt = ms_path_join_new(gt_dir, lg[i]);
        p->pred = ms_path_join_new(pred_dir, lp[j]);
        MS_FAIL_IF(!p->gt || !p->pred, MS_ENOMEM, "out of memory");
    }
    for (int j = 0; j < np; j++) {
        char *b = base_of(lp[j]);
        int k;
        MS_FAIL_IF(!b, MS_ENOMEM, "out of memory");
        ms_status st = find_base(lg, ng, gt_dir, b, &k);
        free(b);
        MS_TRY(st);
        MS_FAIL_IF(k < 0, MS_ENOTFOUND, "%s/%s: no ground truth of that name in %s", pred_dir, lp[j], gt_dir);
    }
    return MS_OK;
}

ms_status ms_eval_files(ms_eval_result *r, const char *pred_dir, const char *gt_dir, int n_threads, int hd95)
{
    char **lp = NULL, **lg = NULL;
    int np = 0, ng = 0;
    r->hd95 = hd95;
    ms_status st = list_dir(pred_dir, &lp, &np);
    if (!st) st = list_dir(gt_dir, &lg, &ng);
    if (!st) st = pair_files(r, pred_dir, lp, np, gt_dir, lg, ng);
    for (int i = 0; i < r->n_pairs && !st; i++) st = file_pair_score(r, &r->pairs[i], n_threads);
    list_free(lp, np);
    list_free(lg, ng);
    if (!st && !(r->header = format("# mrisam eval\n\nprediction: %s  \nground truth: %s  \nvolumes: %d\n\n",
                                    pred_dir, gt_dir, r->n_pairs)))
        st = ms_error(MS_ENOMEM, "out of memory");
    return st;
}

/* ---- a checkpoint segmenting a store ---------------------------------------------------------------------------- */

void ms_eval_shots_find(const char *ckpt, char out[MS_PATH_MAX])
{
    static const char *rel[] = {"shots.json", "../shots.json", "../../shots.json"};
    char p[MS_PATH_MAX], real_c[MS_PATH_MAX], real_p[MS_PATH_MAX];
    out[0] = 0;
    if (!realpath(ckpt, real_c)) return;
    const char *b = ms_path_base(real_c);
    int k = !strcmp(b, "best") ? 1 : !strncmp(b, "step_", 5) ? 2 : 0;
    /* a path too long to join has no shots.json we could open either: "" as for none */
    if (ms_path_join(p, real_c, rel[k]) == MS_OK && access(p, R_OK) == 0 && realpath(p, real_p))
        memcpy(out, real_p, strlen(real_p) + 1);
}

ms_status ms_eval_shots_index(const char *shots, const char *store, int *idx)
{
    cJSON *o;
    *idx = -1;
    MS_TRY(ms_read_json(shots, 1 << 26, &o));
    char want[MS_PATH_MAX], have[MS_PATH_MAX];
    int ok_want = realpath(store, want) != NULL, i = 0;
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "stores"), *e;
    cJSON_ArrayForEach(e, st) {
        const cJSON *pp = cJSON_GetObjectItemCaseSensitive(e, "path");
        if (cJSON_IsString(pp) && *idx < 0 &&
            (!strcmp(pp->valuestring, store) || (ok_want && realpath(pp->valuestring, have) && !strcmp(have, want))))
            *idx = i;
        i++;
    }
    cJSON_Delete(o);
    return MS_OK;
}

/* The volume's name for the report: its source file name without the NIfTI ending (stores written with
 * --keep-paths), else vol<id>. NULL when out of memory. */
static char *volume_name(ms_store *s, uint32_t id)
{
    char *js = NULL, buf[512];
    snprintf(buf, sizeof buf, "vol%u", id);
    if (ms_store_volume_json(s, id, &js) == MS_OK && js) {
        cJSON *o = cJSON_Parse(js);
        const cJSON *p = o ? cJSON_GetObjectItemCaseSensitive(o, "path") : NULL;
        if (cJSON_IsString(p)) {
            const char *b = ms_path_base(p->valuestring), *suf = ms_path_nii_suffix(b);
            snprintf(buf, sizeof buf, "%.*s", suf ? (int)(suf - b) : (int)strlen(b), b);
        }
        cJSON_Delete(o);
    }
    free(js);
    return strdup(buf);
}

/* The state of one store evaluation. */
typedef struct store_eval {
    const ms_eval_store_opts *o;
    ms_store *s;
    ms_store_reader *rd;
    ms_predictor pr;
    ms_predict_opts po;
    ms_selection val;
    int have_sel;
    uint8_t *in_task;             /* label value → 1 when it is one of the task's foreground classes */
    float *img;                   /* a batch of slices, 0..1 */
    uint16_t *plab, *lab;         /* a batch of stored labels (the prompts' source) and of predictions */
    int64_t *zs;                  /* the batch's slice positions in the volume */
    uint16_t *pv, *gv;            /* the restacked predicted and ground-truth volumes */
} store_eval;

/* Class names from the checkpoint's meta.json (by label value), else from the store's --label-names, unless the
 * caller gave some. */
static ms_status store_names(ms_eval_result *r, const ms_predict_model *pm, ms_store *s, const char *store)
{
    if (pm->finetuned && !r->names) {
        const ms_ft_task *t = &pm->ft.cfg.task[pm->task];
        char **v = calloc(N_NAME_SLOTS, sizeof *v);
        MS_FAIL_IF(!v, MS_ENOMEM, "out of memory");
        for (int c = 0; c < t->num_cls; c++)
            if (t->class_names[c][0]) {
                v[t->values[c]] = strdup(t->class_names[c]);
                if (t->values[c] + 1 > r->n_names) r->n_names = t->values[c] + 1;
            }
        r->names = v;
    }
    if (!r->names && ms_store_label_names(s)) MS_TRY(ms_eval_names_parse(r, store, ms_store_label_names(s)));
    return MS_OK;
}

/* The run's validation selection of the store, when the options name one. */
static ms_status store_selection(store_eval *e)
{
    const ms_eval_store_opts *o = e->o;
    if (!o->shots || !o->shots[0] || o->shots_index < 0) return MS_OK;
    MS_TRY(ms_split_load(o->shots, o->shots_index, o->store, ms_store_n_slices(e->s), NULL, &e->val));
    e->have_sel = 1;
    MS_FAIL_IF(e->val.n == 0, MS_EINVAL, "%s: the run has no validation selection for %s (use --all)", o->shots,
               o->store);
    return MS_OK;
}

/* Segments the selected slices of volume vi (index range kmin.. along the axis) into e->pv and their labels (task
 * classes only) into e->gv, in batches of o->batch. */
static ms_status store_segment(store_eval *e, const ms_volume_info *vi, int64_t kmin)
{
    const ms_eval_store_opts *o = e->o;
    const int H = vi->height, W = vi->width;
    const int64_t npx = (int64_t)H * W;
    const uint64_t end = vi->first_key + vi->n_slices;
    int nb = 0;
    for (uint64_t k = vi->first_key; k < end; k++) {
        if (e->have_sel && !ms_selection_contains(&e->val, k)) continue;
        ms_slice sl;
        MS_TRY(ms_store_read(e->rd, k, &sl));
        MS_FAIL_IF(sl.height != H || sl.width != W, MS_EFORMAT, "%s: key %llu: slice %dx%d in a %dx%d volume",
                   o->store, (unsigned long long)k, sl.height, sl.width, H, W);
        int64_t z = (int64_t)sl.slice_index - kmin;
        for (int64_t i = 0; i < npx; i++) {
            e->img[nb * npx + i] = (float)sl.pixels[i] * (1.0f / 65535.0f); /* the loader's scaling */
            uint16_t g = sl.label ? sl.label[i] : 0;
            e->plab[nb * npx + i] = g;
            e->gv[z * npx + i] = e->in_task[g] ? g : 0;
        }
        e->zs[nb++] = z;
        /* flush when the batch is full or this is the volume's last selected slice */
        uint64_t kn = k + 1;
        while (e->have_sel && kn < end && !ms_selection_contains(&e->val, kn)) kn++;
        if (nb == o->batch || kn >= end) {
            MS_TRY(ms_predict_slices(&e->pr, &e->po, e->img, e->plab, nb, H, W, e->lab));
            for (int b = 0; b < nb; b++)
                memcpy(e->pv + e->zs[b] * npx, e->lab + b * npx, (size_t)npx * sizeof *e->pv);
            nb = 0;
        }
    }
    return MS_OK;
}

/* (Re)allocates the per-volume buffers for D slices of H×W. */
static ms_status store_buffers(store_eval *e, int H, int W, int64_t D)
{
    const int64_t npx = (int64_t)H * W, nvox = D * npx, nb = e->o->batch;
    free(e->pv), free(e->gv), free(e->img), free(e->plab), free(e->lab), free(e->zs);
    e->pv = calloc((size_t)nvox, sizeof *e->pv);
    e->gv = calloc((size_t)nvox, sizeof *e->gv);
    e->img = malloc((size_t)(nb * npx) * sizeof *e->img);
    e->plab = malloc((size_t)(nb * npx) * sizeof *e->plab);
    e->lab = malloc((size_t)(nb * npx) * sizeof *e->lab);
    e->zs = malloc((size_t)nb * sizeof *e->zs);
    MS_FAIL_IF(!e->pv || !e->gv || !e->img || !e->plab || !e->lab || !e->zs, MS_ENOMEM, "out of memory");
    return MS_OK;
}

/* One labelled volume: segmented and scored into a new pair of r (nothing when none of its slices is selected). */
static ms_status store_volume(store_eval *e, ms_eval_result *r, uint32_t id)
{
    const ms_eval_store_opts *o = e->o;
    ms_volume_info vi;
    MS_TRY(ms_store_volume(e->s, id, &vi));
    if (!vi.has_labels) return MS_OK;
    /* the selected slices: their index range along the axis */
    int64_t kmin = INT64_MAX, kmax = -1, n_sel = 0;
    for (uint64_t k = vi.first_key; k < vi.first_key + vi.n_slices; k++) {
        if (e->have_sel && !ms_selection_contains(&e->val, k)) continue;
        ms_slice sl;
        MS_TRY(ms_store_read(e->rd, k, &sl));
        kmin = sl.slice_index < kmin ? sl.slice_index : kmin;
        kmax = (int64_t)sl.slice_index > kmax ? sl.slice_index : kmax;
        n_sel++;
    }
    if (!n_sel) return MS_OK;
    const int64_t D = kmax - kmin + 1;
    MS_TRY(store_buffers(e, vi.height, vi.width, D));
    MS_TRY(store_segment(e, &vi, kmin));
    ms_eval_pair *p = &r->pairs[r->n_pairs++];
    p->name = volume_name(e->s, id);
    MS_FAIL_IF(!p->name, MS_ENOMEM, "out of memory");
    const int64_t dim[3] = {vi.width, vi.height, D};
    const double sp[3] = {vi.spacing[1], vi.spacing[0], vi.spacing[2]}; /* x = column, y = row, z = slice */
    MS_TRY(pair_score(r, p, e->pv, e->gv, dim, sp, o->n_threads));
    if (o->on_volume) o->on_volume(o->ctx, p->name, n_sel);
    return MS_OK;
}

/* The predictor for the model, with the task's class values. */
static ms_status store_predictor(store_eval *e, ms_predict_model *pm, ms_device *dev)
{
    MS_TRY(ms_predictor_init_ex(&e->pr, pm->m, dev, e->o->batch, &pm->pc, pm->prompt));
    ms_predict_opts_default(&e->po);
    e->po.batch = e->o->batch;
    e->po.class_map = pm->class_map;
    e->po.n_class_map = pm->n_classes;
    e->in_task = calloc(N_NAME_SLOTS, 1);
    MS_FAIL_IF(!e->in_task, MS_ENOMEM, "out of memory");
    for (int c = 1; c < pm->n_classes; c++) e->in_task[pm->class_map[c]] = 1;
    return MS_OK;
}

ms_status ms_eval_store(ms_eval_result *r, const ms_eval_store_opts *o)
{
    ms_status st = MS_OK;
    ms_device dev;
    int dev_ok = 0;
    ms_predict_model pm;
    store_eval e;
    char task_name[MS_FT_NAME_MAX] = "";
    memset(&pm, 0, sizeof pm);
    memset(&e, 0, sizeof e);
    e.o = o;
    r->hd95 = o->hd95;
    ms_device_kind kind;
    int index;
    if ((st = ms_device_parse(o->device, &kind, &index))) goto leave;
    if ((st = ms_device_init_at(&dev, kind, index, o->n_threads))) goto leave;
    dev_ok = 1;
    dev.precision = ms_precision_default(kind);
    if (o->precision && (st = ms_precision_parse(o->precision, &dev.precision))) goto leave;
    if ((st = ms_predict_model_load(&pm, o->ckpt, o->task, &dev))) goto leave;
    if (pm.finetuned) snprintf(task_name, sizeof task_name, "%s", pm.ft.cfg.task[pm.task].name);
    if ((st = store_predictor(&e, &pm, &dev))) goto leave;
    if ((st = ms_store_open(o->store, 4, &e.s))) goto leave;
    if (pm.has_prep) { /* the store read as the model was trained (a window other than ingest's: layout 2) */
        const ms_norm_choice want = {.given = 1, .norm = pm.norm, .p_lo = pm.p_lo, .p_hi = pm.p_hi};
        if ((st = ms_store_norm_match(e.s, o->store, &want, o->ckpt, NULL))) goto leave;
    }
    if ((st = store_names(r, &pm, e.s, o->store))) goto leave;
    if ((st = store_selection(&e))) goto leave;
    if ((st = ms_store_reader_new(e.s, &e.rd))) goto leave;
    uint32_t nv = ms_store_n_volumes(e.s);
    r->pairs = calloc(nv ? nv : 1, sizeof *r->pairs);
    if (!r->pairs) { st = ms_error(MS_ENOMEM, "out of memory"); goto leave; }
    for (uint32_t id = 0; id < nv && !st; id++) st = store_volume(&e, r, id);
    if (st) goto leave;
    if (!r->n_pairs) {
        st = ms_error(MS_ENOTFOUND, "%s: no labelled volumes%s", o->store,
                      e.have_sel ? " in the run's validation selection" : "");
        goto leave;
    }
    const int sel = e.have_sel; /* a run's shots.json that does not name this store selects nothing */
    r->header = format("# mrisam eval\n\ncheckpoint: %s%s%s  \nstore: %s (%s%s)  \nvolumes: %d\n\n", o->ckpt,
                       task_name[0] ? ", task " : "", task_name, o->store,
                       sel ? "the validation selection of " : "every labelled volume", sel ? o->shots : "", r->n_pairs);
    if (!r->header) st = ms_error(MS_ENOMEM, "out of memory");
leave:
    free(e.pv), free(e.gv), free(e.img), free(e.plab), free(e.lab), free(e.zs), free(e.in_task);
    if (e.rd) ms_store_reader_free(e.rd);
    if (e.s) ms_store_close(e.s);
    ms_selection_free(&e.val);
    if (e.pr.m) ms_predictor_free(&e.pr);
    ms_predict_model_free(&pm); /* before its device */
    if (dev_ok) ms_device_free(&dev);
    return st;
}

/* ---- the report ------------------------------------------------------------------------------------------------- */

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

static const char *class_name(const ms_eval_result *r, int c)
{
    return c < r->n_names && r->names[c] ? r->names[c] : "";
}

/* Dice, IoU, HD95 and NSD (NaN without) of class c in pair p: m[0..3]. */
static void pair_metrics(const ms_eval_result *r, const ms_eval_pair *p, int c, double m[4])
{
    int64_t in = c < p->n_labels ? p->inter[c] : 0, a = c < p->n_labels ? p->np[c] : 0,
            g = c < p->n_labels ? p->ng[c] : 0;
    m[0] = ms_dice(in, a, g);
    m[1] = ms_iou(in, a, g);
    m[2] = r->hd95 && c < p->n_labels ? p->hd95[c] : NAN;
    m[3] = r->nsd && c < p->n_labels ? p->nsd[c] : NAN;
}

/* One row per volume and class. */
static void csv_write(FILE *fc, const ms_eval_result *r, const int *classes, int n_classes)
{
    fprintf(fc, "volume,class,name,dice,iou%s%s\n", r->hd95 ? ",hd95" : "", r->nsd ? ",nsd" : "");
    for (int i = 0; i < r->n_pairs; i++)
        for (int k = 0; k < n_classes; k++) {
            int c = classes[k];
            double m[4];
            pair_metrics(r, &r->pairs[i], c, m);
            csv_field(fc, r->pairs[i].name);
            fprintf(fc, ",%d,", c);
            csv_field(fc, class_name(r, c));
            for (int j = 0; j < 4; j++) {
                if ((j == 2 && !r->hd95) || (j == 3 && !r->nsd)) continue;
                fputc(',', fc);
                put_num(fc, m[j]);
            }
            fputc('\n', fc);
        }
}

/* The header, then one table row per class (mean ± sd over the volumes where it is defined). vals: 4·n_pairs. */
static void md_write(FILE *fm, const ms_eval_result *r, const int *classes, int n_classes, double *vals)
{
    const int n = r->n_pairs;
    fputs(r->header, fm);
    fputs("| class | name | n | Dice (mean ± sd) | IoU (mean ± sd) |", fm);
    if (r->hd95) fputs(" HD95 mm (mean ± sd) |", fm);
    if (r->nsd) fprintf(fm, " NSD %g mm (mean ± sd) |", r->nsd_tol);
    fprintf(fm, "\n|---:|---|---:|---|---|%s%s\n", r->hd95 ? "---|" : "", r->nsd ? "---|" : "");
    for (int k = 0; k < n_classes; k++) {
        int c = classes[k], nv[4], n_inf = 0;
        double mean[4], sd[4];
        for (int i = 0; i < n; i++) {
            double m[4];
            pair_metrics(r, &r->pairs[i], c, m);
            for (int j = 0; j < 4; j++) vals[j * n + i] = m[j];
            n_inf += isinf(m[2]) != 0;
        }
        for (int j = 0; j < 4; j++) ms_mean_sd(vals + j * n, n, &mean[j], &sd[j], &nv[j]);
        fprintf(fm, "| %d | %s | %d | %.4f ± %.4f | %.4f ± %.4f |", c, class_name(r, c), nv[0], mean[0], sd[0],
                mean[1], sd[1]);
        if (r->hd95) {
            fprintf(fm, " %.2f ± %.2f", mean[2], sd[2]);
            if (n_inf) fprintf(fm, " (%d inf left out)", n_inf);
            fputs(" |", fm);
        }
        if (r->nsd) fprintf(fm, " %.4f ± %.4f |", mean[3], sd[3]);
        fputc('\n', fm);
    }
    fputs("\nn counts the volumes where the class is present in the prediction or the ground truth; a class absent "
          "from both is undefined there and left out (never scored as 1). sd is the sample standard deviation.",
          fm);
    if (r->hd95)
        fputs(" HD95 is inf where only one of the two volumes has the class; those are left out of its mean.", fm);
    if (r->nsd)
        fprintf(fm, " NSD is the normalized surface Dice at a tolerance of %g mm (surface elements weighted by "
                    "area, as in the DeepMind surface-distance package); 0 where only one volume has the class.",
                r->nsd_tol);
    fputc('\n', fm);
}

/* Both reports in memory. */
static ms_status report_format(const ms_eval_result *r, char **csv, size_t *csv_len, char **md, size_t *md_len)
{
    /* classes: every value > 0 present in any volume */
    int max_l = 0, n_classes = 0;
    for (int i = 0; i < r->n_pairs; i++) max_l = r->pairs[i].n_labels > max_l ? r->pairs[i].n_labels : max_l;
    int *classes = malloc((size_t)(max_l + 1) * sizeof *classes);
    double *vals = malloc((size_t)(4 * r->n_pairs + 1) * sizeof *vals);
    FILE *fc = open_memstream(csv, csv_len), *fm = open_memstream(md, md_len);
    ms_status st = MS_OK;
    if (!classes || !vals || !fc || !fm) {
        st = ms_error(MS_ENOMEM, "out of memory");
        goto leave;
    }
    for (int c = 1; c < max_l; c++)
        for (int i = 0; i < r->n_pairs; i++)
            if (c < r->pairs[i].n_labels && (r->pairs[i].np[c] || r->pairs[i].ng[c])) {
                classes[n_classes++] = c;
                break;
            }
    csv_write(fc, r, classes, n_classes);
    md_write(fm, r, classes, n_classes, vals);
leave:
    if (fc && fclose(fc)) st = ms_error(MS_ENOMEM, "out of memory");
    if (fm && fclose(fm)) st = ms_error(MS_ENOMEM, "out of memory");
    free(classes);
    free(vals);
    return st;
}

ms_status ms_eval_report_write(const ms_eval_result *r, const char *out_dir, char **md, size_t *md_len)
{
    char *csv = NULL, path[MS_PATH_MAX];
    size_t csv_len = 0;
    *md = NULL;
    *md_len = 0;
    ms_status st = report_format(r, &csv, &csv_len, md, md_len);
    if (!st) st = ms_mkdirs(out_dir);
    if (!st) st = ms_path_join(path, out_dir, "per_volume.csv");
    if (!st) st = ms_write_file_atomic(path, csv, csv_len);
    if (!st) st = ms_path_join(path, out_dir, "summary.md");
    if (!st) st = ms_write_file_atomic(path, *md, *md_len);
    free(csv);
    if (st) {
        free(*md);
        *md = NULL;
        *md_len = 0;
    }
    return st;
}
