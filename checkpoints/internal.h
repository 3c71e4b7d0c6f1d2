/* checkpoints/internal.h — helpers shared by the readers of checkpoints/ (not a public API). */
#ifndef MS_CKPT_INTERNAL_H
#define MS_CKPT_INTERNAL_H

#include "checkpoints/state_dict.h"

/* ms_sd_add_take without the duplicate-name scan (O(n) per call): readers check all names at once first. */
ms_status ms_sd_push(ms_state_dict *sd, const char *name, ms_dtype dtype, const int64_t *shape, int ndim, void *data);
/* Fails with "<path>: duplicate tensor name <x>" when two names are equal; O(n log n). */
ms_status ms_names_unique(const char *path, const char *const *names, int n);

#endif
