/* data/ingest_labels.c — see ingest_labels.h. The first pass reads each mask once more than the ingest proper;
 * 2D masks are small, and the rule must be known before the first slice is written. */
#include "data/ingest_labels.h"

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
