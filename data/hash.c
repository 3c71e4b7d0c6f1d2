/* data/hash.c — CRC-32C and SHA-256 (see hash.h). Both are self-contained so the store needs no extra library. */
#include "data/hash.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static uint32_t crc_table[8][256];
static int crc_table_ready; /* written once; the table is a pure function of the polynomial, so a race is benign */

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 255];
    __atomic_store_n(&crc_table_ready, 1, __ATOMIC_RELEASE);
}

static uint32_t crc_sw(uint32_t c, const uint8_t *p, size_t n)
{
    if (!__atomic_load_n(&crc_table_ready, __ATOMIC_ACQUIRE)) crc_init();
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        v ^= c;
        c = crc_table[7][v & 255] ^ crc_table[6][(v >> 8) & 255] ^ crc_table[5][(v >> 16) & 255] ^
            crc_table[4][(v >> 24) & 255] ^ crc_table[3][(v >> 32) & 255] ^ crc_table[2][(v >> 40) & 255] ^
            crc_table[1][(v >> 48) & 255] ^ crc_table[0][v >> 56];
        p += 8;
        n -= 8;
    }
    while (n--) c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 255];
    return c;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(MS_HASH_NO_HW)
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t n)
{
    uint64_t c64 = c;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c64 = __builtin_ia32_crc32di(c64, v);
        p += 8;
        n -= 8;
    }
    c = (uint32_t)c64;
    while (n--) c = __builtin_ia32_crc32qi(c, *p++);
    return c;
}
#endif

uint32_t ms_data_crc32c(uint32_t crc, const void *buf, size_t n)
{
    uint32_t c = ~crc;
#if defined(__x86_64__) && defined(__GNUC__) && !defined(MS_HASH_NO_HW)
    if (__builtin_cpu_supports("sse4.2")) return ~crc_hw(c, (const uint8_t *)buf, n);
#endif
    return ~crc_sw(c, (const uint8_t *)buf, n);
}

/* ---- SHA-256 (FIPS 180-4) ---- */
static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha_block(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(MS_HASH_NO_HW)
#include <cpuid.h>
#include <immintrin.h>

/* The SHA extensions (SHA-NI): 4 rounds per pair of sha256rnds2, the message schedule by sha256msg1/msg2. The state
 * lives as ABEF / CDGH; W[g & 3] holds the words of round group g, rewritten with group g + 4 once used. */
__attribute__((target("sha,sse4.1,ssse3"))) static void sha_blocks_ni(uint32_t h[8], const uint8_t *p, size_t nblk)
{
    const __m128i MASK = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i t = _mm_loadu_si128((const __m128i *)&h[0]), s1 = _mm_loadu_si128((const __m128i *)&h[4]);
    t = _mm_shuffle_epi32(t, 0xB1);         /* CDAB */
    s1 = _mm_shuffle_epi32(s1, 0x1B);       /* EFGH */
    __m128i s0 = _mm_alignr_epi8(t, s1, 8); /* ABEF */
    s1 = _mm_blend_epi16(s1, t, 0xF0);      /* CDGH */
    for (; nblk; nblk--, p += 64) {
        __m128i a0 = s0, a1 = s1, W[4];
        for (int g = 0; g < 4; g++) W[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * g)), MASK);
        for (int g = 0; g < 16; g++) {
            __m128i m = _mm_add_epi32(W[g & 3], _mm_loadu_si128((const __m128i *)&K256[4 * g]));
            s1 = _mm_sha256rnds2_epu32(s1, s0, m);
            m = _mm_shuffle_epi32(m, 0x0E);
            s0 = _mm_sha256rnds2_epu32(s0, s1, m);
            if (g < 12) {
                __m128i x = _mm_sha256msg1_epu32(W[g & 3], W[(g + 1) & 3]);
                x = _mm_add_epi32(x, _mm_alignr_epi8(W[(g + 3) & 3], W[(g + 2) & 3], 4));
                W[g & 3] = _mm_sha256msg2_epu32(x, W[(g + 3) & 3]);
            }
        }
        s0 = _mm_add_epi32(s0, a0);
        s1 = _mm_add_epi32(s1, a1);
    }
    t = _mm_shuffle_epi32(s0, 0x1B);   /* FEBA */
    s1 = _mm_shuffle_epi32(s1, 0xB1);  /* DCHG */
    s0 = _mm_blend_epi16(t, s1, 0xF0); /* DCBA */
    s1 = _mm_alignr_epi8(s1, t, 8);    /* HGFE */
    _mm_storeu_si128((__m128i *)&h[0], s0);
    _mm_storeu_si128((__m128i *)&h[4], s1);
}

static int have_sha_ni(void)
{
    static int v = -1; /* a pure function of the CPU: racing writers store the same value */
    int c = __atomic_load_n(&v, __ATOMIC_RELAXED);
    if (c < 0) {
        unsigned a, b, cx, d, ok = 0;
        if (__get_cpuid(1, &a, &b, &cx, &d) && (cx & (1u << 19)) && (cx & (1u << 9)) &&
            __get_cpuid_count(7, 0, &a, &b, &cx, &d))
            ok = (b >> 29) & 1;
        c = (int)ok;
        __atomic_store_n(&v, c, __ATOMIC_RELAXED);
    }
    return c;
}
#endif

static void sha_blocks(uint32_t h[8], const uint8_t *p, size_t nblk)
{
#if defined(__x86_64__) && defined(__GNUC__) && !defined(MS_HASH_NO_HW)
    if (have_sha_ni()) {
        sha_blocks_ni(h, p, nblk);
        return;
    }
#endif
    for (; nblk; nblk--, p += 64) sha_block(h, p);
}

void ms_sha256_init(ms_sha256 *s)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof iv);
    s->len = 0;
    s->n = 0;
}

void ms_sha256_update(ms_sha256 *s, const void *data, size_t n)
{
    const uint8_t *p = (const uint8_t *)data;
    s->len += n;
    if (s->n) {
        size_t k = 64 - s->n < n ? 64 - s->n : n;
        memcpy(s->buf + s->n, p, k);
        s->n += k;
        p += k;
        n -= k;
        if (s->n == 64) {
            sha_blocks(s->h, s->buf, 1);
            s->n = 0;
        }
    }
    if (n >= 64) {
        sha_blocks(s->h, p, n / 64);
        p += n / 64 * 64;
        n %= 64;
    }
    if (n) {
        memcpy(s->buf, p, n);
        s->n = n;
    }
}

void ms_sha256_final(ms_sha256 *s, uint8_t out[32])
{
    uint64_t bits = s->len * 8;
    uint8_t pad = 0x80;
    ms_sha256_update(s, &pad, 1);
    uint8_t z = 0;
    while (s->n != 56) ms_sha256_update(s, &z, 1);
    uint8_t l[8];
    for (int i = 0; i < 8; i++) l[i] = (uint8_t)(bits >> (56 - 8 * i));
    ms_sha256_update(s, l, 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(s->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)s->h[i];
    }
}

void ms_hex(const uint8_t *d, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[d[i] >> 4];
        out[2 * i + 1] = hx[d[i] & 15];
    }
    out[2 * n] = 0;
}

ms_status ms_sha256_file(ms_sha256 *s, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return ms_error(errno ? errno : MS_EIO, "%s: %s", path, strerror(errno));
    uint8_t buf[1 << 16];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, f)) > 0) ms_sha256_update(s, buf, k);
    int bad = ferror(f);
    fclose(f);
    if (bad) return ms_error(MS_EIO, "%s: read error", path);
    return MS_OK;
}
