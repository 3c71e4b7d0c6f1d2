/* data/nifti_write.c — NIfTI-1 label volumes on a reference grid (see nifti_write.h for what is copied and why).
 *
 * The header is assembled byte by byte at the NIfTI-1 offsets (little-endian), so no compiler padding or
 * uninitialised byte can reach the file. Output goes through ms_afile (tmp + fsync + rename); .nii.gz is deflated
 * with zlib's gzip wrapper in chunks. The read-back is independent of the write path: zlib's gzread for the bytes
 * and ms_nifti_open (our validation + libnifti) for the parse.
 */
#include "data/nifti_write.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "base/fileio.h"
#include "base/path.h"

enum { HDR1 = 348, VOX_OFFSET = 352 };

static uint64_t ld(const uint8_t *p, int n, int sw)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)p[sw ? n - 1 - i : i] << (8 * i);
    return v;
}
static double ldf32(const uint8_t *p, int sw)
{
    uint32_t u = (uint32_t)ld(p, 4, sw);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static double ldf64(const uint8_t *p, int sw)
{
    uint64_t u = ld(p, 8, sw);
    double d;
    memcpy(&d, &u, 8);
    return d;
}
static void putf32(uint8_t *p, double v)
{
    float f = (float)v;
    uint32_t u;
    memcpy(&u, &f, 4);
    ms_put32(p, u);
}

ms_status ms_nifti_geom_read(const char *ref_path, ms_nifti_geom *g)
{
    memset(g, 0, sizeof *g);
    uint8_t b[540];
    gzFile gz = gzopen(ref_path, "rb");
    if (!gz) return ms_error(errno ? errno : MS_EIO, "%s: %s", ref_path, strerror(errno ? errno : EIO));
    int got = gzread(gz, b, sizeof b);
    gzclose(gz);
    if (got < HDR1) return ms_error(MS_EFORMAT, "%s: cannot read a NIfTI header", ref_path);
    ms_nifti_hdr h;
    ms_status st = ms_nifti_check_header(b, (size_t)got, &h);
    if (st) {
        ms_error_prefix("%s", ref_path);
        return st;
    }
    int sw = h.swapped;
    g->version = h.version;
    for (int i = 0; i < 8; i++) g->dim[i] = h.dim[i], g->pixdim[i] = h.pixdim[i];
    if (h.version == 2) {
        g->qform_code = h.qform_code, g->sform_code = h.sform_code;
        for (int i = 0; i < 6; i++) g->quatern[i] = ldf64(b + 352 + 8 * i, sw);
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 4; c++) g->srow[r][c] = ldf64(b + 400 + 32 * r + 8 * c, sw);
        g->xyzt_units = (int)(int32_t)ld(b + 500, 4, sw);
        g->dim_info = b[524];
    } else {
        g->dim_info = b[39];
        g->xyzt_units = b[123];
        if (h.version == 1) { /* ANALYZE keeps other things at these offsets: no qform/sform there */
            g->qform_code = h.qform_code, g->sform_code = h.sform_code;
            for (int i = 0; i < 6; i++) g->quatern[i] = ldf32(b + 256 + 4 * i, sw);
            for (int r = 0; r < 3; r++)
                for (int c = 0; c < 4; c++) g->srow[r][c] = ldf32(b + 280 + 16 * r + 4 * c, sw);
        }
    }
    /* a label volume has one frame: drop time/extra axes only when they hold more than one frame */
    int64_t extra = 1;
    for (int i = 4; i <= g->dim[0] && i < 8; i++) extra *= g->dim[i];
    if (g->dim[0] > 3 && extra > 1) {
        for (int i = 4; i < 8; i++) g->dim[i] = 1;
        g->dim[0] = 3;
    }
    g->nvox = 1;
    for (int i = 1; i <= 3; i++) g->nvox *= i <= g->dim[0] ? g->dim[i] : 1;
    for (int i = 0; i <= g->dim[0]; i++)
        if (g->dim[i] > 32767 || g->dim[i] < (i ? 1 : 0))
            return ms_error(MS_EUNSUPPORTED, "%s: dim[%d] = %lld does not fit a NIfTI-1 header", ref_path, i,
                            (long long)g->dim[i]);
    return MS_OK;
}

/* The 352 bytes before the data: header + a zero extension flag. */
static void build_header(uint8_t *b, const ms_nifti_geom *g, int datatype, int bitpix)
{
    memset(b, 0, VOX_OFFSET);
    ms_put32(b, HDR1);
    b[38] = 'r'; /* "regular", as every writer sets it */
    b[39] = (uint8_t)g->dim_info;
    for (int i = 0; i < 8; i++) ms_put16(b + 40 + 2 * i, (uint16_t)(int16_t)g->dim[i]);
    ms_put16(b + 70, (uint16_t)datatype);
    ms_put16(b + 72, (uint16_t)bitpix);
    for (int i = 0; i < 8; i++) putf32(b + 76 + 4 * i, g->pixdim[i]);
    putf32(b + 108, VOX_OFFSET);
    putf32(b + 112, 1.0);
    putf32(b + 116, 0.0);
    b[123] = (uint8_t)g->xyzt_units;
    ms_put16(b + 252, (uint16_t)(int16_t)g->qform_code);
    ms_put16(b + 254, (uint16_t)(int16_t)g->sform_code);
    for (int i = 0; i < 6; i++) putf32(b + 256 + 4 * i, g->quatern[i]);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) putf32(b + 280 + 16 * r + 4 * c, g->srow[r][c]);
    memcpy(b + 344, "n+1\0", 4);
}

/* Writes n bytes, deflating them when z is not NULL (flush = Z_FINISH on the last piece). */
static ms_status put(ms_afile *a, z_stream *z, const void *p, size_t n, int flush, const char *path)
{
    if (!z) return ms_afile_write(a, p, n);
    uint8_t out[1 << 16];
    z->next_in = (Bytef *)(uintptr_t)p;
    z->avail_in = (uInt)n;
    for (;;) {
        z->next_out = out;
        z->avail_out = sizeof out;
        int zr = deflate(z, flush);
        if (zr == Z_STREAM_ERROR) return ms_error(MS_EIO, "%s: deflate failed", path);
        ms_status st = ms_afile_write(a, out, sizeof out - z->avail_out);
        if (st) return st;
        if (flush == Z_FINISH ? zr == Z_STREAM_END : (z->avail_in == 0 && z->avail_out != 0)) break;
    }
    return MS_OK;
}

/* Reads back what path holds (inflating .gz) and compares it with the header bytes and data CRC written. */
static ms_status verify(const char *path, const uint8_t *hdr, uint32_t crc, int64_t nbytes, int datatype,
                        const ms_nifti_geom *g)
{
    ms_status st = MS_OK;
    uint8_t back[VOX_OFFSET], *buf = NULL;
    ms_nifti n;
    int opened = 0;
    gzFile gz = gzopen(path, "rb");
    if (!gz) return ms_error(MS_ECORRUPT, "%s: cannot reopen the written file", path);
    if (gzread(gz, back, VOX_OFFSET) != VOX_OFFSET || memcmp(back, hdr, VOX_OFFSET) != 0) {
        st = ms_error(MS_ECORRUPT, "%s: the header read back differs from the one written", path);
        goto leave;
    }
    buf = malloc(1 << 20);
    if (!buf) {
        st = ms_error(MS_ENOMEM, "%s: out of memory", path);
        goto leave;
    }
    uint32_t c = (uint32_t)crc32(0L, Z_NULL, 0);
    int64_t total = 0;
    for (;;) {
        int got = gzread(gz, buf, 1 << 20);
        if (got < 0) {
            st = ms_error(MS_ECORRUPT, "%s: the data cannot be read back", path);
            goto leave;
        }
        if (got == 0) break;
        c = (uint32_t)crc32(c, buf, (uInt)got);
        total += got;
    }
    if (total != nbytes || c != crc) {
        st = ms_error(MS_ECORRUPT, "%s: the data read back differs from the data written (%lld of %lld bytes)", path,
                      (long long)total, (long long)nbytes);
        goto leave;
    }
    /* an independent parse: our header checks, then libnifti */
    st = ms_nifti_open(path, &n);
    if (st) {
        ms_error_prefix("read-back");
        goto leave;
    }
    opened = 1;
    uint32_t c2 = (uint32_t)crc32(0L, Z_NULL, 0);
    c2 = (uint32_t)crc32_z(c2, n.data, (z_size_t)n.hdr.nbytes);
    int same = n.hdr.datatype == datatype && n.hdr.nbytes == nbytes && c2 == crc &&
               n.hdr.qform_code == g->qform_code && n.hdr.sform_code == g->sform_code &&
               n.hdr.scl_slope == 1.0 && n.hdr.scl_inter == 0.0;
    for (int i = 0; i < 8; i++) same = same && n.hdr.dim[i] == g->dim[i];
    if (!same) st = ms_error(MS_ECORRUPT, "%s: the file parsed back does not match what was written", path);
leave:
    if (opened) ms_nifti_close(&n);
    free(buf);
    gzclose(gz);
    return st;
}

ms_status ms_nifti_write_labels(const char *path, const ms_nifti_geom *g, const uint16_t *labels, int64_t nvox)
{
    if (nvox != g->nvox)
        return ms_error(MS_EINVAL, "%s: %lld labels for a grid of %lld voxels", path, (long long)nvox,
                        (long long)g->nvox);
    uint16_t mx = 0;
    for (int64_t i = 0; i < nvox; i++) mx = labels[i] > mx ? labels[i] : mx;
    int datatype = mx > 255 ? 512 : 2, bpv = mx > 255 ? 2 : 1; /* NIFTI_TYPE_UINT16 : NIFTI_TYPE_UINT8 */
    int64_t nbytes = nvox * bpv;
    int gzip = ms_str_ends_with(path, ".gz");
    uint8_t hdr[VOX_OFFSET], chunk[1 << 16];
    build_header(hdr, g, datatype, 8 * bpv);
    ms_afile a = {0};
    z_stream z;
    int zinit = 0;
    uint32_t crc = (uint32_t)crc32(0L, Z_NULL, 0);
    ms_status st = ms_afile_open(&a, path);
    if (st) return st;
    if (gzip) {
        memset(&z, 0, sizeof z);
        if (deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
            st = ms_error(MS_ENOMEM, "%s: cannot start deflate", path);
            goto leave;
        }
        zinit = 1;
    }
    st = put(&a, zinit ? &z : NULL, hdr, VOX_OFFSET, Z_NO_FLUSH, path);
    /* data in little-endian chunks */
    for (int64_t i = 0; !st && i < nvox;) {
        int64_t m = (int64_t)sizeof chunk / bpv;
        if (m > nvox - i) m = nvox - i;
        for (int64_t k = 0; k < m; k++) {
            if (bpv == 1) chunk[k] = (uint8_t)labels[i + k];
            else ms_put16(chunk + 2 * k, labels[i + k]);
        }
        crc = (uint32_t)crc32(crc, chunk, (uInt)(m * bpv));
        i += m;
        st = put(&a, zinit ? &z : NULL, chunk, (size_t)(m * bpv), i == nvox ? Z_FINISH : Z_NO_FLUSH, path);
    }
    if (!st && zinit && nvox == 0) st = put(&a, &z, chunk, 0, Z_FINISH, path);
    if (st) goto leave;
    st = ms_afile_commit(&a);
    if (st) goto leave;
    st = verify(path, hdr, crc, nbytes, datatype, g);
    if (st) unlink(path); /* never leave a file that failed its read-back where a user would take it as good */
leave:
    if (zinit) deflateEnd(&z);
    ms_afile_abort(&a);
    return st;
}

void ms_nifti_canonical_to_stored_u16(const ms_nifti *n, const uint16_t *canon, uint16_t *stored)
{
    int64_t stride[3] = {1, n->sdim[0], n->sdim[0] * n->sdim[1]}, s[3], o0 = 0;
    for (int i = 0; i < 3; i++) {
        int j = n->perm[i];
        s[i] = n->flip[i] ? -stride[j] : stride[j];
        if (n->flip[i]) o0 += (n->sdim[j] - 1) * stride[j];
    }
    int64_t k = 0;
    for (int64_t z = 0; z < n->cdim[2]; z++)
        for (int64_t y = 0; y < n->cdim[1]; y++) {
            int64_t o = o0 + z * s[2] + y * s[1];
            for (int64_t x = 0; x < n->cdim[0]; x++) stored[o + x * s[0]] = canon[k++];
        }
}

ms_status ms_nifti_write_labels_like(const char *path, const char *ref_path, const ms_nifti *ref,
                                     const uint16_t *canon)
{
    ms_nifti_geom g;
    ms_status st = ms_nifti_geom_read(ref_path, &g);
    if (st) return st;
    int64_t nv = ref->sdim[0] * ref->sdim[1] * ref->sdim[2];
    if (nv != g.nvox || ref->cdim[0] * ref->cdim[1] * ref->cdim[2] != nv)
        return ms_error(MS_EINVAL, "%s: the opened image does not match the header (%lld vs %lld voxels)", ref_path,
                        (long long)nv, (long long)g.nvox);
    uint16_t *stored = malloc((size_t)nv * sizeof *stored);
    if (!stored) return ms_error(MS_ENOMEM, "%s: out of memory", path);
    ms_nifti_canonical_to_stored_u16(ref, canon, stored);
    st = ms_nifti_write_labels(path, &g, stored, nv);
    free(stored);
    return st;
}
