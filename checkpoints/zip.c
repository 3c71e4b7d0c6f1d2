/* checkpoints/zip.c — see zip.h. Record layouts from APPNOTE.TXT 6.3 (sections 4.3.7, 4.3.12, 4.3.14-16). */
#include "checkpoints/zip.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

enum {
    SIG_LOCAL = 0x04034b50, SIG_CENTRAL = 0x02014b50, SIG_EOCD = 0x06054b50,
    SIG_EOCD64 = 0x06064b50, SIG_LOC64 = 0x07064b50,
    LOCAL_LEN = 30, CENTRAL_LEN = 46, EOCD_LEN = 22, EOCD64_LEN = 56, LOC64_LEN = 20,
    ALIGN = 64, EXTRA_FB = 0x4246, EXTRA_ZIP64 = 0x0001
};

static uint32_t crc32_big(const uint8_t *p, uint64_t n)
{
    uLong c = crc32(0L, Z_NULL, 0);
    while (n) {
        uInt k = n > (1u << 30) ? (1u << 30) : (uInt)n;
        c = crc32(c, p, k);
        p += k;
        n -= k;
    }
    return (uint32_t)c;
}

/* Reads the saturated fields of a central entry from its 0x0001 extra field (order: usize, csize, offset). */
static ms_status zip64_extra(const ms_zip *z, const uint8_t *x, uint32_t xlen, const char *name, uint64_t *usize,
                             uint64_t *csize, uint64_t *off)
{
    uint32_t i = 0;
    while (i + 4 <= xlen) {
        uint32_t id = ms_le16(x + i), len = ms_le16(x + i + 2);
        if (i + 4 + len > xlen) break;
        if (id == EXTRA_ZIP64) {
            const uint8_t *q = x + i + 4;
            uint32_t need = 8u * ((*usize == 0xFFFFFFFFu) + (*csize == 0xFFFFFFFFu) + (*off == 0xFFFFFFFFu));
            MS_FAIL_IF(len < need, MS_EFORMAT, "%s: entry %s: zip64 extra field too short", z->path, name);
            if (*usize == 0xFFFFFFFFu) { *usize = ms_le64(q); q += 8; }
            if (*csize == 0xFFFFFFFFu) { *csize = ms_le64(q); q += 8; }
            if (*off == 0xFFFFFFFFu) *off = ms_le64(q);
            return MS_OK;
        }
        i += 4 + len;
    }
    MS_FAIL_IF(*usize == 0xFFFFFFFFu || *csize == 0xFFFFFFFFu || *off == 0xFFFFFFFFu, MS_EFORMAT,
               "%s: entry %s: zip64 sizes without a zip64 extra field", z->path, name);
    return MS_OK;
}

ms_status ms_zip_open(ms_zip *z, const uint8_t *p, uint64_t size, const char *path)
{
    memset(z, 0, sizeof *z);
    z->p = p;
    z->size = size;
    z->path = strdup(path);
    if (!z->path) return ms_error(MS_ENOMEM, "%s: out of memory", path);
    ms_status rc = MS_OK;
    if (size < EOCD_LEN) {
        rc = ms_error(MS_EFORMAT, "%s: truncated zip (%llu bytes)", path, (unsigned long long)size);
        goto leave;
    }
    /* The end record sits in the last 22 + 65535 bytes (its comment is at most 65535 bytes). */
    uint64_t eocd = UINT64_MAX;
    uint64_t lo = size - EOCD_LEN > 65535 ? size - EOCD_LEN - 65535 : 0;
    for (uint64_t i = size - EOCD_LEN + 1; i-- > lo;)
        if (ms_le32(p + i) == SIG_EOCD && i + EOCD_LEN + ms_le16(p + i + 20) == size) {
            eocd = i;
            break;
        }
    if (eocd == UINT64_MAX) {
        rc = ms_error(MS_EFORMAT, "%s: no zip end record (truncated or not a zip file)", path);
        goto leave;
    }
    const uint8_t *e = p + eocd;
    uint64_t n_ent = ms_le16(e + 10), cd_size = ms_le32(e + 12), cd_off = ms_le32(e + 16);
    uint64_t cd_end_limit = eocd; /* the central directory must end before the end records */
    if (ms_le16(e + 4) != 0 || ms_le16(e + 6) != 0 || ms_le16(e + 8) != ms_le16(e + 10)) {
        rc = ms_error(MS_EUNSUPPORTED, "%s: multi-disk zip archives are not supported", path);
        goto leave;
    }
    if (eocd >= LOC64_LEN && ms_le32(p + eocd - LOC64_LEN) == SIG_LOC64) {
        const uint8_t *l = p + eocd - LOC64_LEN;
        uint64_t e64 = ms_le64(l + 8);
        if (ms_le32(l + 4) != 0 || ms_le32(l + 16) > 1) {
            rc = ms_error(MS_EUNSUPPORTED, "%s: multi-disk zip64 archives are not supported", path);
            goto leave;
        }
        if (e64 > eocd - LOC64_LEN || eocd - LOC64_LEN - e64 < EOCD64_LEN || ms_le32(p + e64) != SIG_EOCD64) {
            rc = ms_error(MS_EFORMAT, "%s: zip64 locator points to no zip64 end record", path);
            goto leave;
        }
        const uint8_t *z64 = p + e64;
        if (ms_le32(z64 + 16) != 0 || ms_le32(z64 + 20) != 0 || ms_le64(z64 + 24) != ms_le64(z64 + 32)) {
            rc = ms_error(MS_EUNSUPPORTED, "%s: multi-disk zip64 archives are not supported", path);
            goto leave;
        }
        if (n_ent == 0xFFFF) n_ent = ms_le64(z64 + 32);
        if (cd_size == 0xFFFFFFFFu) cd_size = ms_le64(z64 + 40);
        if (cd_off == 0xFFFFFFFFu) cd_off = ms_le64(z64 + 48);
        cd_end_limit = e64;
    } else if (n_ent == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_off == 0xFFFFFFFFu) {
        rc = ms_error(MS_EFORMAT, "%s: zip64 sizes in the end record but no zip64 locator", path);
        goto leave;
    }
    if (cd_off > cd_end_limit || cd_size > cd_end_limit - cd_off) {
        rc = ms_error(MS_EFORMAT, "%s: central directory (offset %llu, %llu bytes) lies outside the file", path,
                      (unsigned long long)cd_off, (unsigned long long)cd_size);
        goto leave;
    }
    if (n_ent > cd_size / CENTRAL_LEN) { /* checked before allocating from the count */
        rc = ms_error(MS_EFORMAT, "%s: zip claims %llu entries in a %llu-byte central directory", path,
                      (unsigned long long)n_ent, (unsigned long long)cd_size);
        goto leave;
    }
    z->e = calloc(n_ent ? n_ent : 1, sizeof *z->e);
    if (!z->e) {
        rc = ms_error(MS_ENOMEM, "%s: out of memory", path);
        goto leave;
    }
    uint64_t q = cd_off, cd_end = cd_off + cd_size;
    for (uint64_t k = 0; k < n_ent; k++) {
        if (cd_end - q < CENTRAL_LEN || ms_le32(p + q) != SIG_CENTRAL) {
            rc = ms_error(MS_EFORMAT, "%s: bad central directory entry %llu", path, (unsigned long long)k);
            goto leave;
        }
        const uint8_t *c = p + q;
        uint32_t flags = ms_le16(c + 8), method = ms_le16(c + 10), nlen = ms_le16(c + 28), xlen = ms_le16(c + 30),
                 clen = ms_le16(c + 32);
        if (cd_end - q - CENTRAL_LEN < (uint64_t)nlen + xlen + clen) {
            rc = ms_error(MS_EFORMAT, "%s: central directory entry %llu overruns the directory", path,
                          (unsigned long long)k);
            goto leave;
        }
        if (nlen == 0 || memchr(c + CENTRAL_LEN, 0, nlen)) {
            rc = ms_error(MS_EFORMAT, "%s: central directory entry %llu has a bad name", path, (unsigned long long)k);
            goto leave;
        }
        char *name = malloc(nlen + 1u);
        if (!name) {
            rc = ms_error(MS_ENOMEM, "%s: out of memory", path);
            goto leave;
        }
        memcpy(name, c + CENTRAL_LEN, nlen);
        name[nlen] = 0;
        z->e[z->n++].name = name;
        if (method != 0 || (flags & 1)) {
            rc = ms_error(MS_EUNSUPPORTED, "%s: entry %s is %s (only stored entries are read)", path, name,
                          (flags & 1) ? "encrypted" : "compressed");
            goto leave;
        }
        if (ms_le16(c + 34) != 0 && ms_le16(c + 34) != 0xFFFF) {
            rc = ms_error(MS_EUNSUPPORTED, "%s: entry %s lies on another disk", path, name);
            goto leave;
        }
        uint64_t csize = ms_le32(c + 20), usize = ms_le32(c + 24), loff = ms_le32(c + 42);
        rc = zip64_extra(z, c + CENTRAL_LEN + nlen, xlen, name, &usize, &csize, &loff);
        if (rc) goto leave;
        if (csize != usize) {
            rc = ms_error(MS_EFORMAT, "%s: stored entry %s has different packed and unpacked sizes", path, name);
            goto leave;
        }
        if (loff > cd_off || cd_off - loff < LOCAL_LEN || ms_le32(p + loff) != SIG_LOCAL) {
            rc = ms_error(MS_EFORMAT, "%s: entry %s: local header offset %llu is outside the data area", path, name,
                          (unsigned long long)loff);
            goto leave;
        }
        uint64_t lnlen = ms_le16(p + loff + 26), lxlen = ms_le16(p + loff + 28);
        uint64_t doff = loff + LOCAL_LEN + lnlen + lxlen;
        if (doff > cd_off || usize > cd_off - doff) {
            rc = ms_error(MS_EFORMAT, "%s: entry %s: %llu bytes at offset %llu run past the data area", path, name,
                          (unsigned long long)usize, (unsigned long long)doff);
            goto leave;
        }
        if (lnlen != nlen || memcmp(p + loff + LOCAL_LEN, name, nlen) != 0) {
            rc = ms_error(MS_EFORMAT, "%s: entry %s: local and central names differ", path, name);
            goto leave;
        }
        for (int j = 0; j < z->n - 1; j++)
            if (strcmp(z->e[j].name, name) == 0) {
                rc = ms_error(MS_EFORMAT, "%s: duplicate zip entry %s", path, name);
                goto leave;
            }
        z->e[z->n - 1].data_off = doff;
        z->e[z->n - 1].size = usize;
        z->e[z->n - 1].crc = ms_le32(c + 16);
        q += CENTRAL_LEN + (uint64_t)nlen + xlen + clen;
    }
leave:
    if (rc) ms_zip_close(z);
    return rc;
}

const ms_zip_entry *ms_zip_find(const ms_zip *z, const char *name)
{
    for (int i = 0; i < z->n; i++)
        if (strcmp(z->e[i].name, name) == 0) return &z->e[i];
    return NULL;
}

ms_status ms_zip_check_crc(const ms_zip *z, const ms_zip_entry *e)
{
    uint32_t c = crc32_big(z->p + e->data_off, e->size);
    MS_FAIL_IF(c != e->crc, MS_ECORRUPT, "%s: entry %s: CRC32 %08x, directory says %08x", z->path, e->name, c, e->crc);
    return MS_OK;
}

void ms_zip_close(ms_zip *z)
{
    for (int i = 0; i < z->n; i++) free(z->e[i].name);
    free(z->e);
    free(z->path);
    memset(z, 0, sizeof *z);
}

/* ---- writer ------------------------------------------------------------------------------------------------ */

void ms_zipw_init(ms_zipw *w, ms_afile *f)
{
    memset(w, 0, sizeof *w);
    w->f = f;
}

ms_status ms_zipw_add(ms_zipw *w, const char *name, const void *data, uint64_t size)
{
    size_t nlen = strlen(name);
    MS_FAIL_IF(nlen == 0 || nlen > 0xFFFF, MS_EINVAL, "%s: bad zip entry name", w->f->path);
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        ms_zipw_entry *e = realloc(w->e, (size_t)cap * sizeof *e);
        MS_FAIL_IF(!e, MS_ENOMEM, "%s: out of memory", w->f->path);
        w->e = e;
        w->cap = cap;
    }
    ms_zipw_entry *en = &w->e[w->n];
    en->name = strdup(name);
    MS_FAIL_IF(!en->name, MS_ENOMEM, "%s: out of memory", w->f->path);
    w->n++;
    en->off = w->f->off;
    en->size = size;
    en->crc = crc32_big(data, size);
    int z64 = w->force_zip64 || size >= 0xFFFFFFFFu;
    uint8_t h[LOCAL_LEN + 20];
    uint32_t x64 = z64 ? 20 : 0;
    /* The FB pad makes the data start on a 64-byte file offset; an extra field needs at least its 4-byte header. */
    uint64_t base = en->off + LOCAL_LEN + nlen + x64 + 4;
    uint32_t pad = (uint32_t)((ALIGN - base % ALIGN) % ALIGN);
    ms_put32(h, SIG_LOCAL);
    ms_put16(h + 4, z64 ? 45 : 20);
    ms_put16(h + 6, 0x0800); /* names are UTF-8 */
    ms_put16(h + 8, 0);
    ms_put16(h + 10, 0);
    ms_put16(h + 12, 0x21); /* 1980-01-01 */
    ms_put32(h + 14, en->crc);
    ms_put32(h + 18, z64 ? 0xFFFFFFFFu : (uint32_t)size);
    ms_put32(h + 22, z64 ? 0xFFFFFFFFu : (uint32_t)size);
    ms_put16(h + 26, (uint16_t)nlen);
    ms_put16(h + 28, (uint16_t)(x64 + 4 + pad));
    MS_TRY(ms_afile_write(w->f, h, LOCAL_LEN));
    MS_TRY(ms_afile_write(w->f, name, nlen));
    if (z64) {
        ms_put16(h, EXTRA_ZIP64);
        ms_put16(h + 2, 16);
        ms_put64(h + 4, size);
        ms_put64(h + 12, size);
        MS_TRY(ms_afile_write(w->f, h, 20));
    }
    uint8_t fb[4 + ALIGN];
    ms_put16(fb, EXTRA_FB);
    ms_put16(fb + 2, (uint16_t)pad);
    memset(fb + 4, 'Z', pad);
    MS_TRY(ms_afile_write(w->f, fb, 4 + pad));
    const uint8_t *d = data;
    for (uint64_t left = size; left;) { /* fwrite in bounded pieces */
        size_t k = left > (1u << 30) ? (1u << 30) : (size_t)left;
        MS_TRY(ms_afile_write(w->f, d, k));
        d += k;
        left -= k;
    }
    return MS_OK;
}

ms_status ms_zipw_finish(ms_zipw *w)
{
    uint64_t cd_off = w->f->off;
    for (int i = 0; i < w->n; i++) {
        const ms_zipw_entry *en = &w->e[i];
        int zs = w->force_zip64 || en->size >= 0xFFFFFFFFu, zo = w->force_zip64 || en->off >= 0xFFFFFFFFu;
        uint32_t x64 = 8u * (2 * zs + zo);
        size_t nlen = strlen(en->name);
        uint8_t h[CENTRAL_LEN + 28];
        memset(h, 0, sizeof h);
        ms_put32(h, SIG_CENTRAL);
        ms_put16(h + 4, 45);
        ms_put16(h + 6, x64 ? 45 : 20);
        ms_put16(h + 8, 0x0800);
        ms_put16(h + 14, 0x21);
        ms_put32(h + 16, en->crc);
        ms_put32(h + 20, zs ? 0xFFFFFFFFu : (uint32_t)en->size);
        ms_put32(h + 24, zs ? 0xFFFFFFFFu : (uint32_t)en->size);
        ms_put16(h + 28, (uint16_t)nlen);
        ms_put16(h + 30, (uint16_t)(x64 ? x64 + 4 : 0));
        ms_put32(h + 42, zo ? 0xFFFFFFFFu : (uint32_t)en->off);
        MS_TRY(ms_afile_write(w->f, h, CENTRAL_LEN));
        MS_TRY(ms_afile_write(w->f, en->name, nlen));
        if (x64) {
            uint8_t *x = h + CENTRAL_LEN;
            ms_put16(x, EXTRA_ZIP64);
            ms_put16(x + 2, (uint16_t)x64);
            uint8_t *q = x + 4;
            if (zs) { ms_put64(q, en->size); ms_put64(q + 8, en->size); q += 16; }
            if (zo) ms_put64(q, en->off);
            MS_TRY(ms_afile_write(w->f, x, 4 + x64));
        }
    }
    uint64_t cd_size = w->f->off - cd_off, n = (uint64_t)w->n;
    int z64 = w->force_zip64 || n >= 0xFFFF || cd_off >= 0xFFFFFFFFu || cd_size >= 0xFFFFFFFFu;
    uint8_t h[EOCD64_LEN];
    if (z64) {
        uint64_t e64 = w->f->off;
        memset(h, 0, sizeof h);
        ms_put32(h, SIG_EOCD64);
        ms_put64(h + 4, EOCD64_LEN - 12);
        ms_put16(h + 12, 45);
        ms_put16(h + 14, 45);
        ms_put64(h + 24, n);
        ms_put64(h + 32, n);
        ms_put64(h + 40, cd_size);
        ms_put64(h + 48, cd_off);
        MS_TRY(ms_afile_write(w->f, h, EOCD64_LEN));
        memset(h, 0, LOC64_LEN);
        ms_put32(h, SIG_LOC64);
        ms_put64(h + 8, e64);
        ms_put32(h + 16, 1);
        MS_TRY(ms_afile_write(w->f, h, LOC64_LEN));
    }
    memset(h, 0, EOCD_LEN);
    ms_put32(h, SIG_EOCD);
    uint16_t n16 = z64 ? 0xFFFF : (uint16_t)n;
    ms_put16(h + 8, n16);
    ms_put16(h + 10, n16);
    ms_put32(h + 12, z64 ? 0xFFFFFFFFu : (uint32_t)cd_size);
    ms_put32(h + 16, z64 ? 0xFFFFFFFFu : (uint32_t)cd_off);
    return ms_afile_write(w->f, h, EOCD_LEN);
}

void ms_zipw_free(ms_zipw *w)
{
    for (int i = 0; i < w->n; i++) free(w->e[i].name);
    free(w->e);
    memset(w, 0, sizeof *w);
}
