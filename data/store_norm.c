/* data/store_norm.c — see store_norm.h. */
#include "data/store_norm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

ms_status ms_norm_choice_parse(const char *norm, double p_lo, double p_hi, ms_norm_choice *out)
{
    memset(out, 0, sizeof *out);
    out->norm = MS_NORM_PERCENTILE;
    out->p_lo = 0.5;
    out->p_hi = 99.5;
    int have_p = p_lo >= 0 || p_hi >= 0;
    if (!norm && !have_p) return MS_OK;
    if (norm) {
        if (!strcmp(norm, "percentile")) out->norm = MS_NORM_PERCENTILE;
        else if (!strcmp(norm, "zscore")) out->norm = MS_NORM_ZSCORE;
        else if (!strcmp(norm, "none")) out->norm = MS_NORM_NONE;
        else return ms_error(MS_EINVAL, "--intensity: '%s' is not percentile, zscore or none", norm);
    }
    if (have_p && out->norm != MS_NORM_PERCENTILE)
        return ms_error(MS_EINVAL, "--percentile-low / --percentile-high go with --intensity percentile, not %s",
                        ms_norm_name(out->norm));
    if (p_lo >= 0) out->p_lo = p_lo;
    if (p_hi >= 0) out->p_hi = p_hi;
    if (!(out->p_lo >= 0 && out->p_lo < out->p_hi && out->p_hi <= 100))
        return ms_error(MS_EINVAL, "percentiles must satisfy 0 <= --percentile-low < --percentile-high <= 100 "
                        "(got %g, %g)", out->p_lo, out->p_hi);
    out->given = 1;
    return MS_OK;
}

const char *ms_norm_choice_str(const ms_norm_choice *c, char *buf, size_t n)
{
    if (!c->given) snprintf(buf, n, "the store's own normalisation");
    else if (c->norm == MS_NORM_PERCENTILE) snprintf(buf, n, "intensity percentile %g..%g", c->p_lo, c->p_hi);
    else snprintf(buf, n, "intensity %s", ms_norm_name(c->norm));
    return buf;
}

int ms_norm_choice_equal(const ms_norm_choice *a, const ms_norm_choice *b)
{
    if (a->given != b->given) return 0;
    if (!a->given) return 1;
    return a->norm == b->norm && (a->norm != MS_NORM_PERCENTILE || (a->p_lo == b->p_lo && a->p_hi == b->p_hi));
}

void ms_norm_choice_to_json(const ms_norm_choice *c, cJSON *obj)
{
    if (!c->given) return;
    cJSON_AddStringToObject(obj, "intensity", ms_norm_name(c->norm));
    if (c->norm != MS_NORM_PERCENTILE) return;
    cJSON_AddNumberToObject(obj, "percentile_low", c->p_lo);
    cJSON_AddNumberToObject(obj, "percentile_high", c->p_hi);
}

void ms_norm_choice_from_json(const cJSON *obj, ms_norm_choice *out)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(obj, "intensity");
    const cJSON *lo = cJSON_GetObjectItemCaseSensitive(obj, "percentile_low");
    const cJSON *hi = cJSON_GetObjectItemCaseSensitive(obj, "percentile_high");
    memset(out, 0, sizeof *out);
    out->p_lo = cJSON_IsNumber(lo) ? lo->valuedouble : 0.5;
    out->p_hi = cJSON_IsNumber(hi) ? hi->valuedouble : 99.5;
    /* an unknown word reads as given-but-different from every choice: a resume compares unequal */
    out->given = cJSON_IsString(n);
    if (out->given && ms_norm_parse(n->valuestring, &out->norm)) {
        ms_error_clear();
        out->norm = (ms_norm)-1;
    }
}

ms_status ms_store_norm_own(ms_store *s, ms_norm_choice *out)
{
    char *js = NULL;
    ms_status rc = ms_store_meta_json(s, "params", &js);
    if (rc || !js) { free(js); return rc ? rc : ms_error(MS_ENOTFOUND, "store: no params"); }
    cJSON *j = cJSON_Parse(js);
    free(js);
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(j, "norm"), *p = cJSON_GetObjectItemCaseSensitive(j, "percentiles");
    memset(out, 0, sizeof *out);
    out->p_lo = 0.5;
    out->p_hi = 99.5;
    rc = cJSON_IsString(n) ? ms_norm_parse(n->valuestring, &out->norm) : MS_ENOTFOUND;
    if (!rc && cJSON_IsArray(p) && cJSON_GetArraySize(p) == 2) {
        out->p_lo = cJSON_GetArrayItem(p, 0)->valuedouble;
        out->p_hi = cJSON_GetArrayItem(p, 1)->valuedouble;
    }
    cJSON_Delete(j);
    if (rc) return ms_error(MS_ENOTFOUND, "store: params name no normalisation");
    out->given = 1;
    return MS_OK;
}

ms_status ms_store_norm_apply(ms_store *s, const char *path, const ms_norm_choice *c)
{
    if (!c->given) return MS_OK;
    ms_status rc = ms_store_set_norm(s, c->norm, c->p_lo, c->p_hi);
    /* the layout-1 refusal names the store already; the percentile one does not */
    if (rc && ms_store_layout(s) >= 2) ms_error_prefix("%s", path);
    return rc;
}

ms_status ms_store_norm_match(ms_store *s, const char *path, const ms_norm_choice *want, const char *model,
                              int *changed)
{
    if (changed) *changed = 0;
    ms_norm_choice own;
    if (ms_store_norm_own(s, &own)) { /* unknown: apply it (a layout-1 store without params is refused below) */
        ms_error_clear();
        memset(&own, 0, sizeof own);
    }
    if (!want->given || ms_norm_choice_equal(&own, want)) return MS_OK;
    ms_status rc = ms_store_norm_apply(s, path, want);
    if (rc) {
        char why[512], a[64], b[64];
        snprintf(why, sizeof why, "%s", ms_errmsg());
        /* not a usage error: the model and the store do not fit together */
        return ms_error(MS_EUNSUPPORTED, "%s (%s was trained on %s, the store holds %s)", why, model,
                        ms_norm_choice_str(want, a, sizeof a),
                        own.given ? ms_norm_choice_str(&own, b, sizeof b) : "no recorded normalisation");
    }
    if (changed) *changed = 1;
    return MS_OK;
}
