/* checkpoints/pickle.h — a restricted pickle reader for torch.save's data.pkl (docs/FORMATS.md §Checkpoints and
 * weights). It executes nothing: it is a small stack machine that knows only the opcodes torch's state dicts use
 * (protocol 2, plus the protocol-4 framing ops) and only these globals: collections.OrderedDict,
 * torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter and the typed storage classes
 * torch.{Float,Half,BFloat16,Double,Long,Int,Short, Char,Byte,Bool}Storage. Anything else (INST, OBJ, NEWOBJ, EXT*, any
 * other global such as posix.system or builtins.eval) is refused with a one-line error naming the opcode or global and
 * its offset. Bounds: stack 1M entries, 4096 open MARKs, 8M objects, memo indices below the pickle's length, strings
 * within the remaining bytes, tensors with at most 8 dims, sizes/strides/offsets >= 0 and every product checked for
 * int64 overflow; a tensor's last element must lie inside its storage's declared element count.
 * Strings and storage keys are copied out; the input buffer need not outlive the results.
 */
#ifndef MS_CKPT_PICKLE_H
#define MS_CKPT_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "base/tensor.h"

typedef struct ms_pkl_tensor {
    char *name;            /* state-dict key */
    char *key;             /* storage key: zip entry <prefix>/data/<key>, or the legacy record key */
    ms_dtype dtype;        /* of the storage class */
    int64_t storage_numel; /* elements, as declared in the persistent id */
    int64_t offset;        /* elements */
    int ndim;
    int64_t size[MS_MAX_DIMS], stride[MS_MAX_DIMS];
} ms_pkl_tensor;

typedef struct ms_pkl_storage {
    char *key;
    ms_dtype dtype;
    int64_t numel;
} ms_pkl_storage;

typedef struct ms_pkl_sd {
    int n;
    ms_pkl_tensor *t;
    int nsto;             /* every persistent id met in the pickle (also outside the state dict), in order */
    ms_pkl_storage *sto;
} ms_pkl_sd;

typedef struct ms_pkl_strlist {
    int n;
    char **s;
} ms_pkl_strlist;

/* Each function reads one pickle from buf[0..n) and sets *used to the bytes up to and including its STOP.
 * `where` names the source in messages ("file.pth:archive/data.pkl").
 * legacy = 1: persistent ids are the 6-tuples of the pre-1.6 format (the 6th, a view, must be None). */
ms_status ms_pickle_state_dict(const uint8_t *buf, size_t n, const char *where, int legacy, ms_pkl_sd *out,
                               size_t *used);
ms_status ms_pickle_int(const uint8_t *buf, size_t n, const char *where, int64_t *v, size_t *used);
/* The legacy format's sys_info dict; *little_endian from its "little_endian" entry. */
ms_status ms_pickle_sys_info(const uint8_t *buf, size_t n, const char *where, int *little_endian, size_t *used);
ms_status ms_pickle_str_list(const uint8_t *buf, size_t n, const char *where, ms_pkl_strlist *out, size_t *used);
void ms_pkl_sd_free(ms_pkl_sd *sd);
void ms_pkl_strlist_free(ms_pkl_strlist *l);

#endif
