/* tests/checkpoints/fuzz_ckpt.c — libFuzzer target for the weight-file readers (built with CC=clang -DMS_FUZZ=ON,
 * tests/checkpoints/tests.cmake). The first byte picks the reader: the pickle machine (zip or legacy persistent
 * ids) or ms_sd_load_mem (.pth zip/legacy, safetensors); the rest is the input. Seeds in
 * tests/checkpoints/fuzz_corpus/fuzz_ckpt (the fixtures with their selector byte, tests/gen_fuzz_corpus.py).
 * Any crash, leak or sanitizer report is a bug: every input must end in MS_OK or a one-line error, and a loaded
 * state dict may hold at most what the readers' bound allows (4x the input + 64 MiB: aliasing views,
 * checkpoints/pth.h). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoints/pickle.h"
#include "checkpoints/state_dict.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int mode = data[0] % 4;
    /* a private copy so that reads past the end are caught by ASan */
    uint8_t *p = malloc(size - 1 ? size - 1 : 1);
    memcpy(p, data + 1, size - 1);
    ms_state_dict sd;
    ms_sd_init(&sd);
    if (mode < 2) {
        ms_pkl_sd out;
        size_t used;
        if (ms_pickle_state_dict(p, size - 1, "fuzz", mode, &out, &used) == MS_OK) ms_pkl_sd_free(&out);
    } else if (ms_sd_load_mem("fuzz", p, size - 1, &sd) == MS_OK) {
        uint64_t total = 0;
        for (int i = 0; i < sd.n; i++) total += ms_tensor_bytes(&sd.e[i].t);
        if (total > 4 * (uint64_t)(size - 1) + (64ull << 20)) abort();
    }
    if (strchr(ms_errmsg(), '\n')) abort();
    ms_sd_free(&sd);
    free(p);
    return 0;
}
