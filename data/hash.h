/* data/hash.h — checksums and content hashes used by the store and ingest.
 *
 * ms_data_crc32c: CRC-32C (Castagnoli, reflected poly 0x82F63B78), the per-record checksum of raw pixels; uses the
 * SSE4.2 instruction when the CPU has it, a slicing-by-8 table otherwise (same result).
 * ms_sha256: streaming SHA-256, the content hash that identifies a source file without storing its name; uses
 * the SHA extensions (SHA-NI) when the CPU has them, the portable rounds otherwise (same digest).
 */
#ifndef MS_HASH_H
#define MS_HASH_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

/* crc32c of buf continuing from `crc` (start with 0). crc32c("123456789") = 0xE3069283. (checkpoints/runlog.c has a
 * table-only ms_crc32c with the same result; this one uses SSE4.2 for the store's bulk pixel checksums.) */
uint32_t ms_data_crc32c(uint32_t crc, const void *buf, size_t n);

typedef struct ms_sha256 {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t n;
} ms_sha256;

void ms_sha256_init(ms_sha256 *s);
void ms_sha256_update(ms_sha256 *s, const void *data, size_t n);
void ms_sha256_final(ms_sha256 *s, uint8_t out[32]);
/* Hex of a digest: out gets 64 characters and a NUL. */
void ms_hex(const uint8_t *d, size_t n, char *out);
/* Feeds the whole file at `path` into s (streams it; no size limit). */
ms_status ms_sha256_file(ms_sha256 *s, const char *path);

#endif
