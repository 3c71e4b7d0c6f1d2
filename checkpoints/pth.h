/* checkpoints/pth.h — PyTorch torch.save files (docs/FORMATS.md §Checkpoints and weights): the zip format
 * (torch >= 1.6) and the legacy concatenated-pickle format, read without executing anything (see pickle.h), and the zip
 * format written. Reading: storages are referenced in place in the mapped file, each one checked once against its zip
 * entry (size and CRC32, as torch does) or legacy record size; views are copied into contiguous buffers (strided copies
 * for non-contiguous strides); big-endian files are byte-swapped. What views may materialise is bounded before
 * anything is copied: an expanded (overlapping-stride) view at most 256 MiB, all views together at most 4x the
 * file's bytes + 64 MiB and 64 GiB in all, so aliasing or stride-0 views over a tiny storage are refused at once
 * ("tensor views materialise N bytes from a M-byte file").
 * Writing: the torch 2.x layout under the prefix "archive/": data.pkl (collections.OrderedDict of
 * torch._utils._rebuild_tensor_v2 with persistent ids), .format_version, .storage_alignment, byteorder, data/<i> (one
 * storage per tensor, 64-byte aligned), version "3\n"; names that are not UTF-8 are refused (torch.load could not
 * decode them).
 */
#ifndef MS_CKPT_PTH_H
#define MS_CKPT_PTH_H

#include "base/fileio.h"
#include "checkpoints/state_dict.h"

/* m: the mapped file; chooses zip or legacy by the first bytes. */
ms_status ms_pth_read(const char *path, const ms_map *m, ms_state_dict *out);

typedef struct ms_pth_wopts {
    const char *prefix;  /* folder inside the zip; NULL = "archive" */
    int force_zip64;     /* Zip64 records even for small files (tests) */
} ms_pth_wopts;

/* Atomic write (temporary + fsync + rename). o may be NULL. */
ms_status ms_pth_write(const char *path, const ms_state_dict *sd, const ms_pth_wopts *o);

#endif
