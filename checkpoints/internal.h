/* checkpoints/internal.h — helpers shared by the readers and writers of checkpoints/ (not a public API). */
#ifndef MS_CKPT_INTERNAL_H
#define MS_CKPT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "checkpoints/state_dict.h"

/* ms_sd_add_take without the duplicate-name scan (O(n) per call): readers check all names at once first. */
ms_status ms_sd_push(ms_state_dict *sd, const char *name, ms_dtype dtype, const int64_t *shape, int ndim, void *data);
/* Fails with "<path>: duplicate tensor name <x>" when two names are equal; O(n log n). */
ms_status ms_names_unique(const char *path, const char *const *names, int n);
/* Length of the well-formed UTF-8 sequence at s[0..n) (RFC 3629: no overlongs, no surrogates, at most U+10FFFF),
 * or 0; ms_utf8_valid: all of s[0..n) is well-formed. */
size_t ms_utf8_len(const uint8_t *s, size_t n);
int ms_utf8_valid(const char *s, size_t n);
/* s[0..n) for a one-line message: printable ASCII as is, other bytes as \xNN, at most about 200 characters. */
void ms_escape_bytes(const uint8_t *s, size_t n, char *out, size_t cap);
/* Writers: fails (MS_EUNSUPPORTED) with "<path>: tensor name "<escaped>" is not valid UTF-8 (<why>)" for the first
 * name that is not UTF-8 (a .pth's pickle strings are read unchecked, so such a name can reach a writer). */
ms_status ms_names_utf8(const char *path, const ms_state_dict *sd, const char *why);

#endif
