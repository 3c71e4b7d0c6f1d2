/* data/store_norm.h — which intensity normalisation a store's readers apply: the store's own (what ingest chose,
 * meta "params") or another one picked when the store is opened, without a new ingest (layout 2 keeps the stored
 * values and their statistics: docs/FORMATS.md "Pixels, layout 2", ms_store_set_norm).
 *
 * Who picks: pretrain's and finetune's --intensity / --percentile-low / --percentile-high (every store the run
 * opens, recorded in RUN/config.json so a resume must give the same), and eval / embed, which read a store with the
 * normalisation a fine-tuned model was trained on (its meta.json preprocess). A layout-1 store (pixels normalised at
 * ingest) and percentiles the store does not keep are refused with one line naming the store.
 */
#ifndef MS_STORE_NORM_H
#define MS_STORE_NORM_H

#include <stddef.h>

#include "base/status.h"
#include "data/intensity.h"
#include "data/store.h"

struct cJSON;

typedef struct ms_norm_choice {
    int given;         /* 0: the store's own normalisation (nothing is changed) */
    ms_norm norm;
    double p_lo, p_hi; /* percentile only; 0.5 / 99.5 unless given (ingest's defaults) */
} ms_norm_choice;

/* The options as given (norm NULL, p_lo / p_hi < 0: not given) → a choice. Percentiles without a norm mean
 * percentile; with zscore or none, or out of 0 <= low < high <= 100, they are refused (MS_EINVAL, the reason). */
ms_status ms_norm_choice_parse(const char *norm, double p_lo, double p_hi, ms_norm_choice *out);
/* "intensity percentile 0.5..99.5", "intensity zscore", "intensity none" or "the store's own normalisation". */
const char *ms_norm_choice_str(const ms_norm_choice *c, char *buf, size_t n);
int ms_norm_choice_equal(const ms_norm_choice *a, const ms_norm_choice *b);
/* RUN/config.json: "intensity" (and "percentile_low", "percentile_high" for percentile) when given, nothing
 * otherwise (so a run without the options writes what it wrote before they existed); and back. */
void ms_norm_choice_to_json(const ms_norm_choice *c, struct cJSON *obj);
void ms_norm_choice_from_json(const struct cJSON *obj, ms_norm_choice *out);

/* The store's own normalisation from its "params" meta; MS_ENOTFOUND when the store does not say. */
ms_status ms_store_norm_own(ms_store *s, ms_norm_choice *out);
/* A given choice applied to a store just opened (before its readers): ms_store_set_norm, a refusal as one line
 * "path: reason". Nothing when the choice is not given. */
ms_status ms_store_norm_apply(ms_store *s, const char *path, const ms_norm_choice *c);
/* Readers of s see what a model was trained on (want): nothing when that is the store's own, else
 * ms_store_norm_apply; a refusal (MS_EUNSUPPORTED) names the store, the model and both normalisations.
 * *changed (may be NULL): 1 when the store's window was replaced. */
ms_status ms_store_norm_match(ms_store *s, const char *path, const ms_norm_choice *want, const char *model,
                              int *changed);

#endif
