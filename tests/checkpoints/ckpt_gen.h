/* tests/checkpoints/ckpt_gen.h — random tensor names for the checkpoint tests (test_ckpt_read, test_ckpt_write):
 * well-formed UTF-8 of every sequence length, and ill-formed sequences of every kind RFC 3629 rules out. The
 * classes are written from the RFC's table, not from the reader's validator. */
#ifndef MS_TEST_CKPT_GEN_H
#define MS_TEST_CKPT_GEN_H

#include <stddef.h>
#include <stdint.h>

#include "base/rng.h"

static inline uint8_t gen_cont(ms_rng *r) { return (uint8_t)(0x80 + ms_rng_u64(r) % 64); }

/* Appends code point cp as UTF-8 at out; returns the byte count. */
static inline size_t gen_put_cp(uint8_t *out, uint32_t cp)
{
    if (cp < 0x80) { out[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) { out[0] = (uint8_t)(0xc0 | cp >> 6); out[1] = (uint8_t)(0x80 | (cp & 63)); return 2; }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xe0 | cp >> 12);
        out[1] = (uint8_t)(0x80 | (cp >> 6 & 63));
        out[2] = (uint8_t)(0x80 | (cp & 63));
        return 3;
    }
    out[0] = (uint8_t)(0xf0 | cp >> 18);
    out[1] = (uint8_t)(0x80 | (cp >> 12 & 63));
    out[2] = (uint8_t)(0x80 | (cp >> 6 & 63));
    out[3] = (uint8_t)(0x80 | (cp & 63));
    return 4;
}

/* A random well-formed name of 1..12 code points (ASCII name characters, 2-, 3- and 4-byte sequences; no
 * surrogates, no NUL, no JSON specials), NUL-terminated; out needs 64 bytes. */
static inline void gen_utf8_name(ms_rng *r, char *out)
{
    static const char ascii[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
    int n = 1 + (int)(ms_rng_u64(r) % 12);
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        uint32_t cp;
        switch (ms_rng_u64(r) % 4) {
        case 0: cp = (uint32_t)ascii[ms_rng_u64(r) % (sizeof ascii - 1)]; break;
        case 1: cp = 0x80 + (uint32_t)(ms_rng_u64(r) % (0x800 - 0x80)); break;
        case 2:
            cp = 0x800 + (uint32_t)(ms_rng_u64(r) % (0x10000 - 0x800 - 0x800));
            if (cp >= 0xd800) cp += 0x800; /* skip the surrogates */
            break;
        default: cp = 0x10000 + (uint32_t)(ms_rng_u64(r) % (0x110000 - 0x10000)); break;
        }
        o += gen_put_cp((uint8_t *)out + o, cp);
    }
    out[o] = 0;
}

/* A random ill-formed UTF-8 sequence (lone continuation, C0/C1 or F5..FF lead, overlong 3/4-byte, surrogate, above
 * U+10FFFF, a lead cut short); at most 4 bytes, returns the count. Followed by ASCII or a quote it stays ill-formed. */
static inline size_t gen_bad_utf8(ms_rng *r, uint8_t *out)
{
    switch (ms_rng_u64(r) % 7) {
    case 0: out[0] = gen_cont(r); return 1;
    case 1: out[0] = (uint8_t)(0xc0 + ms_rng_u64(r) % 2); out[1] = gen_cont(r); return 2;
    case 2: out[0] = (uint8_t)(0xf5 + ms_rng_u64(r) % 11); out[1] = gen_cont(r); return 2;
    case 3: /* overlong: E0 80..9F, F0 80..8F */
        if (ms_rng_u64(r) % 2) {
            out[0] = 0xe0, out[1] = (uint8_t)(0x80 + ms_rng_u64(r) % 32), out[2] = gen_cont(r);
            return 3;
        }
        out[0] = 0xf0, out[1] = (uint8_t)(0x80 + ms_rng_u64(r) % 16), out[2] = gen_cont(r), out[3] = gen_cont(r);
        return 4;
    case 4: out[0] = 0xed, out[1] = (uint8_t)(0xa0 + ms_rng_u64(r) % 32), out[2] = gen_cont(r); return 3;
    case 5:
        out[0] = 0xf4, out[1] = (uint8_t)(0x90 + ms_rng_u64(r) % 48), out[2] = gen_cont(r), out[3] = gen_cont(r);
        return 4;
    default: { /* a valid 2..4-byte sequence missing its last byte(s) */
        uint8_t full[4];
        size_t n = gen_put_cp(full, 0x80 + (uint32_t)(ms_rng_u64(r) % 0x700) * (ms_rng_u64(r) % 2 ? 1 : 40));
        size_t keep = 1 + ms_rng_u64(r) % (n - 1);
        for (size_t i = 0; i < keep; i++) out[i] = full[i];
        return keep;
    }
    }
}

#endif
