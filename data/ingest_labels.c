/* data/ingest_labels.c — see ingest_labels.h. The first pass reads each mask once more than the ingest proper;
 * 2D masks are small, and the rule must be known before the first slice is written. */
#include "data/ingest_labels.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "data/png.h"

enum { MASK_NONE = 0, MASK_EMPTY, MASK_BINARY, MASK_IDS };

typedef struct mask_info {
    int kind;
    uint64_t between, high;
    unsigned ids_value, high_value; /* the first class id 1..half-1 and the first value >= half seen */
} mask_info;

typedef struct scan_ctx {
    const char *const *paths;
    mask_info *info;
    int n, next;
    pthread_mutex_t mu;
} scan_ctx;

static void scan_one(const char *path, mask_info *m)
{
    ms_png p;
    memset(m, 0, sizeof *m);
    if (ms_png_read(path, MS_PNG_GRAY, &p)) return; /* reported by the ingest proper */
    const unsigned top = p.depth == 16 ? 65535u : 255u, half = top / 2 + 1;
    const size_t n = (size_t)p.w * p.h;
    int ids = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned v = p.px[i];
        if (v == 0) continue;
        if (v < half) {
            if (!ids) m->ids_value = v;
            ids = 1;
        } else {
            if (!m->high) m->high_value = v;
            m->high++;
            m->between += v != top;
        }
    }
    m->kind = ids ? MASK_IDS : m->high ? MASK_BINARY : MASK_EMPTY;
    ms_png_free(&p);
}

static void *scan_worker(void *arg)
{
    scan_ctx *c = arg;
    for (;;) {
        pthread_mutex_lock(&c->mu);
        int i = c->next++;
        pthread_mutex_unlock(&c->mu);
        if (i >= c->n) return NULL;
        if (c->paths[i]) scan_one(c->paths[i], &c->info[i]);
    }
}

ms_status ms_mask_scan_run(const char *const *paths, int n, int threads, ms_mask_scan *out)
{
    memset(out, 0, sizeof *out);
    if (n <= 0) return MS_OK;
    scan_ctx c = {paths, calloc((size_t)n, sizeof(mask_info)), n, 0, PTHREAD_MUTEX_INITIALIZER};
    if (!c.info) return ms_error(MS_ENOMEM, "out of memory");
    if (threads < 1) threads = 1;
    if (threads > n) threads = n;
    pthread_t th[64];
    int started = 0;
    for (; started < threads && started < 64; started++)
        if (pthread_create(&th[started], NULL, scan_worker, &c)) break;
    if (started == 0) scan_worker(&c);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    /* merged in list order, so the paths the messages name do not depend on thread timing */
    for (int i = 0; i < n; i++) {
        const mask_info *m = &c.info[i];
        if (m->kind == MASK_NONE) continue;
        out->n_masks++;
        if (m->kind == MASK_BINARY) {
            out->n_binary++;
            out->between += m->between;
        }
        if (m->kind == MASK_IDS) {
            out->n_ids++;
            out->high_in_ids += m->high;
            if (!out->ids_path) out->ids_path = paths[i], out->ids_value = m->ids_value;
        }
        if (m->high && !out->high_path) out->high_path = paths[i], out->high_value = m->high_value;
    }
    free(c.info);
    pthread_mutex_destroy(&c.mu);
    return MS_OK;
}

ms_mask_rule ms_mask_scan_rule(const ms_mask_scan *s)
{
    return s->n_ids ? MS_MASKS_IDS : s->n_binary ? MS_MASKS_BINARY : MS_MASKS_UNDECIDED;
}

const char *ms_mask_rule_name(ms_mask_rule r)
{
    return r == MS_MASKS_BINARY ? "binary" : r == MS_MASKS_IDS ? "ids" : "undecided";
}

/* The rule recorded in a "label_rule" meta text; MS_EFORMAT when the text is not one this version writes. */
static ms_status parse_recorded(const char *store, const char *text, ms_mask_rule *r)
{
    *r = MS_MASKS_UNDECIDED;
    if (!text) return MS_OK;
    cJSON *j = cJSON_Parse(text);
    const cJSON *m = cJSON_GetObjectItem(j, "png_masks");
    const char *v = cJSON_IsString(m) ? m->valuestring : "";
    if (!strcmp(v, "binary"))
        *r = MS_MASKS_BINARY;
    else if (!strcmp(v, "ids"))
        *r = MS_MASKS_IDS;
    cJSON_Delete(j);
    return *r ? MS_OK : ms_error(MS_EFORMAT, "%s: unreadable label_rule entry %.80s", store, text);
}

ms_status ms_mask_rule_decide(const char *store, const char *recorded, const ms_mask_scan *s, ms_mask_rule *rule,
                              char **record)
{
    ms_mask_rule old, now = ms_mask_scan_rule(s);
    *record = NULL;
    MS_TRY(parse_recorded(store, recorded, &old));
    if (old == MS_MASKS_BINARY && now == MS_MASKS_IDS)
        return ms_error(MS_EINVAL,
                        "%s: the store's PNG masks are binary (0 and values >= 128 became 0/1), but %s holds %u, a "
                        "class id: read together they would be class ids, which would change the classes already "
                        "stored; ingest into a new store (or give --label-map / --label-threshold there)",
                        store, s->ids_path, s->ids_value);
    *rule = old ? old : now;
    if (*rule == MS_MASKS_BINARY && s->between)
        fprintf(stderr,
                "ingest: warning: PNG masks read as binary (0 -> class 0, 128..255 -> class 1): %llu pixels in %d "
                "masks were neither 0 nor 255\n",
                (unsigned long long)s->between, s->n_binary);
    if (*rule == MS_MASKS_IDS && s->high_path) {
        char why[600];
        if (s->ids_path)
            snprintf(why, sizeof why, "%s holds %u", s->ids_path, s->ids_value);
        else
            snprintf(why, sizeof why, "the store's masks are, as recorded");
        fprintf(stderr,
                "ingest: warning: PNG masks kept as class ids (%s), so values >= 128 are classes of their own (%s "
                "holds %u): give --label-map or --label-threshold (in a new store) if they mean foreground\n",
                why, s->high_path, s->high_value);
    }
    if (!old && *rule) {
        char buf[64];
        snprintf(buf, sizeof buf, "{\"png_masks\":\"%s\"}", ms_mask_rule_name(*rule));
        if (!(*record = strdup(buf))) return ms_error(MS_ENOMEM, "out of memory");
    }
    return MS_OK;
}

/* ---- --label-resample ------------------------------------------------------------------------------------ */

/* inv(a) · b for affines (last row 0 0 0 1); 0 when a's 3×3 part is singular. */
static int affine_solve(const double a[4][4], const double b[4][4], double t[4][4])
{
    double inv[3][3];
    inv[0][0] = a[1][1] * a[2][2] - a[1][2] * a[2][1];
    inv[0][1] = a[0][2] * a[2][1] - a[0][1] * a[2][2];
    inv[0][2] = a[0][1] * a[1][2] - a[0][2] * a[1][1];
    inv[1][0] = a[1][2] * a[2][0] - a[1][0] * a[2][2];
    inv[1][1] = a[0][0] * a[2][2] - a[0][2] * a[2][0];
    inv[1][2] = a[0][2] * a[1][0] - a[0][0] * a[1][2];
    inv[2][0] = a[1][0] * a[2][1] - a[1][1] * a[2][0];
    inv[2][1] = a[0][1] * a[2][0] - a[0][0] * a[2][1];
    inv[2][2] = a[0][0] * a[1][1] - a[0][1] * a[1][0];
    double det = a[0][0] * inv[0][0] + a[0][1] * inv[1][0] + a[0][2] * inv[2][0];
    if (!isfinite(det) || fabs(det) < 1e-12) return 0;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) inv[i][j] /= det;
    /* a⁻¹ · (b x − a_t) for the columns of b: the translation enters as b_t − a_t */
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++) {
            double s = 0;
            for (int k = 0; k < 3; k++) s += inv[i][k] * (b[k][j] - (j == 3 ? a[k][3] : 0));
            t[i][j] = s;
        }
    t[3][0] = t[3][1] = t[3][2] = 0;
    t[3][3] = 1;
    return 1;
}

ms_status ms_label_resample_nn(const float *src, const int64_t sdim[3], const double saff[4][4], float *dst,
                               const int64_t ddim[3], const double daff[4][4], uint64_t *outside)
{
    double t[4][4];
    MS_FAIL_IF(!affine_solve(saff, daff, t), MS_EINVAL, "label affine is singular");
    uint64_t out = 0;
    for (int64_t z = 0; z < ddim[2]; z++)
        for (int64_t y = 0; y < ddim[1]; y++) {
            double b[3];
            for (int i = 0; i < 3; i++) b[i] = t[i][1] * (double)y + t[i][2] * (double)z + t[i][3];
            float *d = dst + (z * ddim[1] + y) * ddim[0];
            for (int64_t x = 0; x < ddim[0]; x++) {
                int64_t q[3];
                int in = 1;
                for (int i = 0; i < 3 && in; i++) {
                    double f = floor(b[i] + t[i][0] * (double)x + 0.5);
                    in = f >= 0 && f < (double)sdim[i]; /* false for NaN too */
                    q[i] = in ? (int64_t)f : 0;
                }
                if (in)
                    d[x] = src[(q[2] * sdim[1] + q[1]) * sdim[0] + q[0]];
                else {
                    d[x] = 0;
                    out++;
                }
            }
        }
    if (outside) *outside = out;
    return MS_OK;
}

/* ---- --label-largest ------------------------------------------------------------------------------------- */

static size_t value_hash(int64_t v, size_t mask)
{
    uint64_t x = (uint64_t)v + 0x9e3779b97f4a7c15ull; /* splitmix64's finaliser */
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return (size_t)(x ^ (x >> 31)) & mask;
}

static ms_status counter_put(ms_value_counter *c, int64_t v, uint64_t add)
{
    if (2 * (c->n + 1) > c->cap) { /* load at most 1/2 */
        size_t cap = c->cap ? 2 * c->cap : 1024;
        ms_value_count *s = calloc(cap, sizeof *s);
        MS_FAIL_IF(!s, MS_ENOMEM, "out of memory");
        for (size_t i = 0; i < c->cap; i++)
            if (c->slot[i].count) {
                size_t h = value_hash(c->slot[i].value, cap - 1);
                while (s[h].count) h = (h + 1) & (cap - 1);
                s[h] = c->slot[i];
            }
        free(c->slot);
        c->slot = s;
        c->cap = cap;
    }
    size_t h = value_hash(v, c->cap - 1);
    while (c->slot[h].count && c->slot[h].value != v) h = (h + 1) & (c->cap - 1);
    if (!c->slot[h].count) {
        c->slot[h].value = v;
        c->n++;
    }
    c->slot[h].count += add;
    return MS_OK;
}

ms_status ms_value_counter_add(ms_value_counter *c, const float *v, size_t n, const char *path)
{
    for (size_t i = 0; i < n; i++) {
        double r = nearbyint(v[i]);
        if (!(fabs(v[i] - r) <= 1e-3 && fabs(r) < 9e18))
            return ms_error(MS_EFORMAT, "%s: label value %g is not an integer", path, (double)v[i]);
    }
    /* runs of one value (labels are blocky) cost one table update */
    size_t i = 0;
    while (i < n) {
        int64_t x = (int64_t)nearbyint(v[i]);
        size_t k = i + 1;
        while (k < n && (int64_t)nearbyint(v[k]) == x) k++;
        if (x) MS_TRY(counter_put(c, x, k - i));
        i = k;
    }
    return MS_OK;
}

static int cmp_count(const void *a, const void *b)
{
    const ms_value_count *x = a, *y = b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    return (x->value > y->value) - (x->value < y->value);
}

void ms_value_counter_top(const ms_value_counter *c, int k, ms_value_count *out, int *n_out)
{
    /* a bounded insertion into out, kept sorted: k is small (classes), the table may not be */
    int m = 0;
    for (size_t i = 0; i < c->cap && k > 0; i++) {
        if (!c->slot[i].count) continue;
        ms_value_count e = c->slot[i];
        if (m == k && cmp_count(&e, &out[m - 1]) >= 0) continue;
        int p = m < k ? m++ : m - 1;
        while (p > 0 && cmp_count(&e, &out[p - 1]) < 0) {
            out[p] = out[p - 1];
            p--;
        }
        out[p] = e;
    }
    *n_out = m;
}

void ms_value_counter_free(ms_value_counter *c)
{
    free(c->slot);
    memset(c, 0, sizeof *c);
}
