/* finetune/ft_train.c — class maps, selections, task schedule, loss, metric and embedding cache of the fine-tuning
 * loop (finetune/ft_train.h). */
#include "finetune/ft_train.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/rng.h"
#include "ops.h"

/* ---- class maps ------------------------------------------------------------------------------------------------ */

/* The name of value v in "VALUE NAME ..." lines ('#' comments), copied to out ("" when absent). */
static void label_name_of(const char *text, unsigned v, char *out, size_t n)
{
    out[0] = 0;
    if (!text) return;
    const char *p = text;
    while (*p) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        char line[512];
        if (len >= sizeof line) len = sizeof line - 1;
        memcpy(line, p, len);
        line[len] = 0;
        p = eol ? eol + 1 : p + len;
        char *s = line;
        while (isspace((unsigned char)*s)) s++;
        if (!*s || *s == '#') continue;
        char *end;
        unsigned long val = strtoul(s, &end, 10);
        if (end == s || val != v) continue;
        s = end;
        while (isspace((unsigned char)*s) || *s == ',') s++;
        size_t k = 0;
        while (s[k] && !isspace((unsigned char)s[k]) && s[k] != ',' && k + 1 < n) k++;
        memcpy(out, s, k);
        out[k] = 0;
        return;
    }
}

ms_status ms_ft_task_from_volumes(ms_ft_task *t, const char *name, const ms_volume_info *vols, int n_vols,
                                  const char *label_names)
{
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name ? name : "task");
    /* presence table over the 16-bit value range, then read out in order: sorted and unique by construction */
    uint8_t *seen = calloc(65536, 1);
    MS_FAIL_IF(!seen, MS_ENOMEM, "out of memory");
    seen[0] = 1;
    int labelled = 0;
    for (int i = 0; i < n_vols; i++) {
        if (!vols[i].has_labels) continue;
        labelled++;
        int nv = vols[i].n_label_values;
        if (nv > 256) nv = 256;
        for (int k = 0; k < nv; k++) seen[vols[i].label_values[k]] = 1;
    }
    int C = 0;
    for (int v = 0; v < 65536; v++) {
        if (!seen[v]) continue;
        if (C == MS_FT_MAX_CLASSES) {
            free(seen);
            return ms_error(MS_EINVAL, "task %s: more than %d label values (at most %d classes incl. background)",
                            t->name, MS_FT_MAX_CLASSES - 1, MS_FT_MAX_CLASSES);
        }
        t->values[C++] = (uint16_t)v;
    }
    free(seen);
    MS_FAIL_IF(!labelled, MS_EINVAL, "task %s: no labelled volume", t->name);
    MS_FAIL_IF(C < 2, MS_EINVAL, "task %s: the labels hold no foreground value", t->name);
    t->num_cls = C;
    for (int c = 0; c < C; c++) label_name_of(label_names, t->values[c], t->class_names[c], MS_FT_NAME_MAX);
    return MS_OK;
}

ms_status ms_ft_task_from_store(ms_ft_task *t, const char *name, ms_store *s)
{
    uint32_t nv = ms_store_n_volumes(s);
    ms_volume_info *v = calloc(nv ? nv : 1, sizeof *v);
    MS_FAIL_IF(!v, MS_ENOMEM, "out of memory");
    ms_status rc = MS_OK;
    for (uint32_t i = 0; i < nv && !rc; i++) rc = ms_store_volume(s, i, &v[i]);
    if (!rc) rc = ms_ft_task_from_volumes(t, name, v, (int)nv, ms_store_label_names(s));
    free(v);
    return rc;
}

void ms_ft_task_label_map(const ms_ft_task *t, uint16_t *map)
{
    memset(map, 0, 65536 * sizeof *map);
    for (int c = 0; c < t->num_cls; c++) map[t->values[c]] = (uint16_t)c;
}

void ms_ft_task_default_name(const char *store_path, char *out, size_t n)
{
    size_t len = strlen(store_path);
    while (len > 1 && store_path[len - 1] == '/') len--;
    size_t b = len;
    while (b > 0 && store_path[b - 1] != '/') b--;
    size_t k = len - b;
    if (k >= n) k = n - 1;
    memcpy(out, store_path + b, k);
    out[k] = 0;
    for (size_t i = 0; i < k; i++) /* task names become tensor-name parts: no '.' */
        if (out[i] == '.' || out[i] == ':') out[i] = '_';
    if (!k) snprintf(out, n, "task");
}

/* ---- selections ------------------------------------------------------------------------------------------------ */

ms_status ms_ft_select_foreground(ms_store *s, const ms_selection *in, ms_selection *out, uint64_t *n_empty)
{
    memset(out, 0, sizeof *out);
    *n_empty = 0;
    ms_store_reader *r;
    MS_TRY(ms_store_reader_new(s, &r));
    ms_status rc = MS_OK;
    /* runs of consecutive foreground keys become one range each */
    uint64_t run_first = 0, run_n = 0;
    for (uint64_t i = 0; i < in->n && !rc; i++) {
        uint64_t key = ms_selection_key(in, i);
        ms_slice sl;
        int fg = 0;
        rc = ms_store_read(r, key, &sl);
        if (rc == MS_ECORRUPT) { rc = MS_OK; fg = 0; } /* the loader reports it; it cannot train anyway */
        else if (!rc && sl.label) {
            size_t np = (size_t)sl.height * sl.width;
            for (size_t k = 0; k < np && !fg; k++) fg = sl.label[k] != 0;
        }
        if (rc) break;
        if (fg) {
            if (run_n && run_first + run_n == key) run_n++;
            else {
                if (run_n) rc = ms_selection_add(out, run_first, run_n);
                run_first = key;
                run_n = 1;
            }
        } else (*n_empty)++;
    }
    if (!rc && run_n) rc = ms_selection_add(out, run_first, run_n);
    if (!rc) rc = ms_selection_finish(out);
    ms_store_reader_free(r);
    if (rc) ms_selection_free(out);
    return rc;
}

ms_status ms_ft_select_shots(const ms_selection *in, int shots, uint64_t seed, ms_selection *out)
{
    memset(out, 0, sizeof *out);
    MS_FAIL_IF(shots < 1 || (uint64_t)shots > in->n, MS_EINVAL, "--shots %d but %llu eligible training slices",
               shots, (unsigned long long)in->n);
    ms_perm p;
    ms_perm_init(&p, in->n, ms_rng_stream(seed, 0x5107, 2));
    ms_status rc = MS_OK;
    for (int k = 0; k < shots && !rc; k++) rc = ms_selection_add(out, ms_selection_key(in, ms_perm_apply(&p, (uint64_t)k)), 1);
    if (!rc) rc = ms_selection_finish(out);
    if (rc) ms_selection_free(out);
    return rc;
}

/* ---- multi-task schedule --------------------------------------------------------------------------------------- */

int ms_ft_task_at(uint64_t seed, int64_t step, int n_tasks, const double *weights)
{
    if (n_tasks <= 1) return 0;
    double tot = 0;
    for (int t = 0; t < n_tasks; t++) tot += weights[t] > 0 ? weights[t] : 0;
    if (tot <= 0) return (int)(ms_rand_u64(ms_rng_stream(seed, 0x7a5c, 0), (uint64_t)step) % (uint64_t)n_tasks);
    double u = ms_rand_uniform(ms_rng_stream(seed, 0x7a5c, 1), (uint64_t)step) * tot, acc = 0;
    for (int t = 0; t < n_tasks; t++) {
        acc += weights[t] > 0 ? weights[t] : 0;
        if (u < acc) return t;
    }
    return n_tasks - 1;
}

/* ---- loss -------------------------------------------------------------------------------------------------------- */

ms_status ms_ft_loss_init(ms_ft_loss *L, ms_device *dev, int64_t max_target)
{
    memset(L, 0, sizeof *L);
    L->dev = dev;
    L->cap = max_target;
    MS_TRY(ms_dev_alloc(dev, (size_t)max_target * sizeof(int32_t), (void **)&L->target));
    ms_status rc = ms_dev_alloc(dev, 2 * sizeof(float), (void **)&L->loss);
    if (!rc && !(L->split = malloc((size_t)(max_target > 0 ? max_target : 1) * sizeof(int32_t))))
        rc = ms_error(MS_ENOMEM, "out of memory");
    if (rc) ms_ft_loss_free(L);
    return rc;
}

void ms_ft_loss_free(ms_ft_loss *L)
{
    if (!L->dev) return;
    ms_dev_free(L->dev, L->target);
    ms_dev_free(L->dev, L->loss);
    free(L->split);
    memset(L, 0, sizeof *L);
}

ms_status ms_ft_loss_run(ms_ft_loss *L, const float *logits, const int32_t *target_host, int B, int C, int64_t P,
                         float *dlogits, double *dice, double *ce)
{
    MS_FAIL_IF((int64_t)B * P > L->cap, MS_EINVAL, "loss: %d x %lld targets exceed the buffer", B, (long long)P);
    ms_device *dev = L->dev;
    MS_TRY(ms_dev_from_host(dev, L->target, target_host, (size_t)B * P * sizeof(int32_t)));
    MS_TRY(ms_dice_loss_forward(dev, L->loss, logits, L->target, B, C, P, MS_FT_DICE_SMOOTH));
    MS_TRY(ms_cross_entropy_forward(dev, L->loss + 1, logits, L->target, B, C, P));
    float h[2];
    MS_TRY(ms_dev_to_host(dev, h, L->loss, sizeof h));
    if (dice) *dice = h[0];
    if (ce) *ce = h[1];
    if (!dlogits) return MS_OK;
    MS_TRY(ms_dev_zero(dev, dlogits, (size_t)B * C * P * sizeof(float)));
    MS_TRY(ms_dice_loss_backward(dev, dlogits, 1.0f, logits, L->target, B, C, P, MS_FT_DICE_SMOOTH));
    return ms_cross_entropy_backward(dev, dlogits, 1.0f, logits, L->target, B, C, P);
}

ms_status ms_ft_loss_split(ms_ft_loss *L, const float *logits, const int32_t *target_host, int B, int C, int64_t P,
                           double *ce_fg, double *ce_bg)
{
    MS_FAIL_IF((int64_t)B * P > L->cap, MS_EINVAL, "loss: %d x %lld targets exceed the buffer", B, (long long)P);
    int64_t n = (int64_t)B * P;
    int32_t *t = L->split;
    ms_status rc = MS_OK;
    for (int side = 0; side < 2 && !rc; side++) {
        /* the CE op ignores targets < 0: keep one side's pixels only */
        for (int64_t i = 0; i < n; i++) t[i] = (side ? target_host[i] == 0 : target_host[i] > 0) ? target_host[i] : -1;
        float h = 0;
        rc = ms_dev_from_host(L->dev, L->target, t, (size_t)n * sizeof(int32_t));
        if (!rc) rc = ms_cross_entropy_forward(L->dev, L->loss + 1, logits, L->target, B, C, P);
        if (!rc) rc = ms_dev_to_host(L->dev, &h, L->loss + 1, sizeof h);
        if (side) *ce_bg = h;
        else *ce_fg = h;
    }
    return rc;
}

/* ---- validation metric ------------------------------------------------------------------------------------------- */

void ms_ft_dice_reset(ms_ft_dice_acc *a, int C)
{
    memset(a, 0, sizeof *a);
    a->C = C > MS_FT_MAX_CLASSES ? MS_FT_MAX_CLASSES : C;
}

void ms_ft_dice_add(ms_ft_dice_acc *a, const float *logits, const int32_t *target, int B, int C, int64_t P)
{
    if (C > a->C) C = a->C;
    for (int b = 0; b < B; b++) {
        const float *l = logits + (size_t)b * C * P;
        const int32_t *t = target + (size_t)b * P;
        for (int64_t i = 0; i < P; i++) {
            int best = 0;
            float bv = l[i];
            for (int c = 1; c < C; c++)
                if (l[(size_t)c * P + i] > bv) { bv = l[(size_t)c * P + i]; best = c; }
            int g = t[i];
            a->np[best] += 1;
            if (g >= 0 && g < C) {
                a->ng[g] += 1;
                if (g == best) a->tp[g] += 1;
            }
        }
    }
}

void ms_ft_dice_add_binary(ms_ft_dice_acc *a, int cls, const float *logits2, const int32_t *target01, int64_t P)
{
    if (cls < 0 || cls >= a->C) return;
    for (int64_t i = 0; i < P; i++) {
        int p = logits2[P + i] > logits2[i], g = target01[i] == 1;
        a->np[cls] += p;
        a->ng[cls] += g;
        a->tp[cls] += p && g;
    }
}

double ms_ft_dice_class(const ms_ft_dice_acc *a, int c)
{
    if (c < 0 || c >= a->C) return NAN;
    double den = a->np[c] + a->ng[c];
    return den > 0 ? 2.0 * a->tp[c] / den : NAN;
}

double ms_ft_dice_mean(const ms_ft_dice_acc *a, int *n_counted)
{
    double s = 0;
    int n = 0;
    for (int c = 1; c < a->C; c++) {
        double d = ms_ft_dice_class(a, c);
        if (isnan(d)) continue;
        s += d;
        n++;
    }
    if (n_counted) *n_counted = n;
    return n ? s / n : NAN;
}

/* ---- embedding cache ------------------------------------------------------------------------------------------- */

/* Open addressing on a 64-bit id (store in the top 16 bits, key below); the table doubles at half load. */
struct ms_emb_cache {
    int64_t emb_floats, n, cap;
    uint64_t *ids;   /* id + 1; 0 = empty */
    float **vals;
    uint64_t hits;
};

static uint64_t emb_id(int store, uint64_t key) { return ((uint64_t)(unsigned)store << 48 | (key & 0xffffffffffffull)) + 1; }

ms_status ms_emb_cache_new(int64_t emb_floats, ms_emb_cache **out)
{
    ms_emb_cache *c = calloc(1, sizeof *c);
    MS_FAIL_IF(!c, MS_ENOMEM, "out of memory");
    c->emb_floats = emb_floats;
    c->cap = 256;
    c->ids = calloc((size_t)c->cap, sizeof *c->ids);
    c->vals = calloc((size_t)c->cap, sizeof *c->vals);
    if (!c->ids || !c->vals) {
        ms_emb_cache_free(c);
        return ms_error(MS_ENOMEM, "out of memory");
    }
    *out = c;
    return MS_OK;
}

void ms_emb_cache_free(ms_emb_cache *c)
{
    if (!c) return;
    for (int64_t i = 0; i < c->cap && c->vals; i++) free(c->vals[i]);
    free(c->ids);
    free(c->vals);
    free(c);
}

static int64_t emb_slot(const ms_emb_cache *c, uint64_t id)
{
    int64_t i = (int64_t)(ms_mix64(id) & (uint64_t)(c->cap - 1));
    while (c->ids[i] && c->ids[i] != id) i = (i + 1) & (c->cap - 1);
    return i;
}

const float *ms_emb_cache_get(const ms_emb_cache *c, int store, uint64_t key)
{
    int64_t i = emb_slot(c, emb_id(store, key));
    if (!c->ids[i]) return NULL;
    ((ms_emb_cache *)c)->hits++; /* a statistic only */
    return c->vals[i];
}

ms_status ms_emb_cache_put(ms_emb_cache *c, int store, uint64_t key, const float *emb)
{
    if (2 * (c->n + 1) > c->cap) {
        int64_t nc = c->cap * 2;
        uint64_t *ids = calloc((size_t)nc, sizeof *ids);
        float **vals = calloc((size_t)nc, sizeof *vals);
        if (!ids || !vals) {
            free(ids);
            free(vals);
            return ms_error(MS_ENOMEM, "embedding cache: out of memory");
        }
        ms_emb_cache old = *c;
        c->ids = ids;
        c->vals = vals;
        c->cap = nc;
        for (int64_t i = 0; i < old.cap; i++)
            if (old.ids[i]) {
                int64_t j = emb_slot(c, old.ids[i]);
                c->ids[j] = old.ids[i];
                c->vals[j] = old.vals[i];
            }
        free(old.ids);
        free(old.vals);
    }
    uint64_t id = emb_id(store, key);
    int64_t i = emb_slot(c, id);
    if (!c->ids[i]) {
        c->vals[i] = malloc((size_t)c->emb_floats * sizeof(float));
        MS_FAIL_IF(!c->vals[i], MS_ENOMEM, "embedding cache: out of memory (%lld embeddings held)", (long long)c->n);
        c->ids[i] = id;
        c->n++;
    }
    memcpy(c->vals[i], emb, (size_t)c->emb_floats * sizeof(float));
    return MS_OK;
}

int64_t ms_emb_cache_count(const ms_emb_cache *c) { return c->n; }
uint64_t ms_emb_cache_hits(const ms_emb_cache *c) { return c->hits; }
