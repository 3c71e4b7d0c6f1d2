/* tests/data/fuzz_store_record.c — libFuzzer target for the store's record decoder (ms_rec_decode, data/store_fmt.h:
 * the 44-byte header, the zstd frame, the pixel checksum), which every slice and label read and `verify` go
 * through. The first byte's bits make the input reach past the header checks a random input cannot pass: bit 0
 * writes the magic and the frame length (size − 44), bit 1 the header checksum. A decoded record must have the
 * shape the header says. Any crash, leak or sanitizer report is a bug. Built with CC=clang -DMS_FUZZ=ON
 * (tests/data/tests.cmake); seeds (records of a small store) in tests/data/fuzz_corpus/fuzz_store_record. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data/hash.h"
#include "data/store_fmt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ZSTD_DCtx *dctx;
    if (!dctx && !(dctx = ZSTD_createDCtx())) abort();
    if (size < 1) return 0;
    int fix = data[0];
    size--;
    uint8_t *p = malloc(size ? size : 1); /* a private copy so that reads past the end are caught by ASan */
    memcpy(p, data + 1, size);
    if (size >= MS_REC_HDR && (fix & 1)) {
        memcpy(p, MS_REC_MAGIC, 4);
        ms_put_u32le(p + 36, (uint32_t)(size - MS_REC_HDR));
    }
    if (size >= MS_REC_HDR && (fix & 2)) ms_put_u32le(p + 40, ms_data_crc32c(0, p, 40));
    ms_rec_hdr h;
    uint16_t *dst = NULL;
    uint8_t *tmp = NULL;
    size_t dst_cap = 0, tmp_cap = 0;
    const char *why = NULL;
    if (ms_rec_decode(dctx, p, size, &h, &dst, &dst_cap, &tmp, &tmp_cap, &why)) {
        if (!h.height || !h.width || h.height > 65536 || h.width > 65536 ||
            dst_cap < (size_t)h.height * h.width * 2)
            abort();
    } else if (!why || strchr(why, '\n')) {
        abort();
    }
    free(dst);
    free(tmp);
    free(p);
    return 0;
}
