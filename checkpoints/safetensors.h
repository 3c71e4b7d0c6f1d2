/* checkpoints/safetensors.h — the safetensors format (docs/FORMATS.md §Checkpoints and weights): u64 LE header
 * length N, N bytes of JSON, then the tensors' bytes. Reading checks: N <= 100 MB and within the file before anything
 * is allocated, a JSON object whose entries have a known dtype, at most 8 non-negative dims, data_offsets [begin, end]
 * with end - begin = numel·size, and buffers that neither overlap nor leave gaps and exactly cover the data area;
 * the header text must be UTF-8 with no NUL in any string (raw or \u0000) and nothing but space padding after the
 * JSON. F8 and other dtypes mrisam has no type for are refused. Writing: entries in state-dict order, the header
 * space-padded so the data starts on an 8-byte boundary, __metadata__ from sd->meta_json when set; empty or
 * non-UTF-8 names (and non-UTF-8 metadata) are refused, so no header written is one a reader must reject.
 */
#ifndef MS_CKPT_SAFETENSORS_H
#define MS_CKPT_SAFETENSORS_H

#include "base/fileio.h"
#include "checkpoints/state_dict.h"

#define MS_SAFETENSORS_MAX_HEADER (100u * 1000u * 1000u)

ms_status ms_safetensors_read(const char *path, const ms_map *m, ms_state_dict *out);
ms_status ms_safetensors_write(const char *path, const ms_state_dict *sd);

#endif
