/* data/nifti.c — see nifti.h. Header fields are read from raw bytes at fixed offsets (NIfTI-1: 348-byte header,
 * NIfTI-2: 540 bytes) in the file's byte order, checked, and only then is libnifti allowed to read the file. */
#include "data/nifti.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include <nifti2_io.h>

static uint16_t rd16(const uint8_t *p, int sw)
{
    return sw ? (uint16_t)(p[0] << 8 | p[1]) : (uint16_t)(p[0] | p[1] << 8);
}
static uint32_t rd32(const uint8_t *p, int sw)
{
    return sw ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]
              : (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p, int sw)
{
    uint64_t a = rd32(p, sw), b = rd32(p + 4, sw);
    return sw ? a << 32 | b : b << 32 | a;
}
static float rdf32(const uint8_t *p, int sw)
{
    uint32_t u = rd32(p, sw);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static double rdf64(const uint8_t *p, int sw)
{
    uint64_t u = rd64(p, sw);
    double d;
    memcpy(&d, &u, 8);
    return d;
}

/* Bytes per voxel of a supported datatype, 0 for known-unsupported ones, -1 for unknown codes. */
static int type_size(int dt)
{
    switch (dt) {
    case DT_UINT8:
    case DT_INT8: return 1;
    case DT_UINT16:
    case DT_INT16: return 2;
    case DT_UINT32:
    case DT_INT32:
    case DT_FLOAT32: return 4;
    case DT_FLOAT64: return 8;
    case DT_RGB24:
    case DT_RGBA32:
    case DT_COMPLEX64:
    case DT_COMPLEX128:
    case DT_COMPLEX256:
    case DT_INT64:
    case DT_UINT64:
    case DT_FLOAT128:
    case DT_BINARY: return 0;
    default: return -1;
    }
}

const char *ms_nifti_type_name(int dt)
{
    switch (dt) {
    case DT_UINT8: return "uint8";
    case DT_INT8: return "int8";
    case DT_UINT16: return "uint16";
    case DT_INT16: return "int16";
    case DT_UINT32: return "uint32";
    case DT_INT32: return "int32";
    case DT_FLOAT32: return "float32";
    case DT_FLOAT64: return "float64";
    case DT_RGB24: return "RGB24";
    case DT_RGBA32: return "RGBA32";
    case DT_COMPLEX64: return "complex64";
    case DT_COMPLEX128: return "complex128";
    case DT_COMPLEX256: return "complex256";
    case DT_INT64: return "int64";
    case DT_UINT64: return "uint64";
    case DT_FLOAT128: return "float128";
    case DT_BINARY: return "binary";
    default: return "unknown";
    }
}

ms_status ms_nifti_check_header(const uint8_t *b, size_t n, ms_nifti_hdr *h)
{
    memset(h, 0, sizeof *h);
    if (n < 348) return ms_error(MS_EFORMAT, "file too short for a NIfTI header");
    uint32_t sz = rd32(b, 0);
    int sw;
    if (sz == 348 || sz == 540)
        sw = 0;
    else if (rd32(b, 1) == 348 || rd32(b, 1) == 540)
        sw = 1, sz = rd32(b, 1);
    else
        return ms_error(MS_EFORMAT, "not a NIfTI or ANALYZE header (sizeof_hdr %u)", sz);
    h->swapped = sw;
    if (sz == 540) {
        if (n < 540) return ms_error(MS_EFORMAT, "file too short for a NIfTI-2 header");
        if (memcmp(b + 4, "n+2\0\r\n\032\n", 8) == 0)
            h->pair = 0;
        else if (memcmp(b + 4, "ni2\0\r\n\032\n", 8) == 0)
            h->pair = 1;
        else
            return ms_error(MS_EFORMAT, "bad NIfTI-2 magic");
        h->version = 2;
        h->datatype = (int16_t)rd16(b + 12, sw);
        for (int i = 0; i < 8; i++) h->dim[i] = (int64_t)rd64(b + 16 + 8 * i, sw);
        for (int i = 0; i < 8; i++) h->pixdim[i] = rdf64(b + 104 + 8 * i, sw);
        h->vox_offset = (int64_t)rd64(b + 168, sw);
        h->scl_slope = rdf64(b + 176, sw);
        h->scl_inter = rdf64(b + 184, sw);
        h->qform_code = (int32_t)rd32(b + 344, sw);
        h->sform_code = (int32_t)rd32(b + 348, sw);
        if (!h->pair && h->vox_offset < 540)
            return ms_error(MS_EFORMAT, "vox_offset %lld inside the header", (long long)h->vox_offset);
    } else {
        if (memcmp(b + 344, "n+1\0", 4) == 0)
            h->version = 1, h->pair = 0;
        else if (memcmp(b + 344, "ni1\0", 4) == 0)
            h->version = 1, h->pair = 1;
        else
            h->version = 0, h->pair = 1; /* ANALYZE 7.5 */
        h->datatype = (int16_t)rd16(b + 70, sw);
        for (int i = 0; i < 8; i++) h->dim[i] = (int16_t)rd16(b + 40 + 2 * i, sw);
        for (int i = 0; i < 8; i++) h->pixdim[i] = rdf32(b + 76 + 4 * i, sw);
        float vo = rdf32(b + 108, sw);
        /* a float offset: reject before the float → integer conversion (undefined behaviour when huge or NaN) */
        if (!(vo >= 0.f && vo < 1e12f)) return ms_error(MS_EFORMAT, "bad vox_offset");
        h->vox_offset = (int64_t)vo;
        h->scl_slope = h->version ? rdf32(b + 112, sw) : 0;
        h->scl_inter = h->version ? rdf32(b + 116, sw) : 0;
        h->qform_code = h->version ? (int16_t)rd16(b + 252, sw) : 0;
        h->sform_code = h->version ? (int16_t)rd16(b + 254, sw) : 0;
        if (!h->pair && h->vox_offset < 348)
            return ms_error(MS_EFORMAT, "vox_offset %lld inside the header", (long long)h->vox_offset);
    }
    if (h->vox_offset < 0 || h->vox_offset > ((int64_t)1 << 40)) return ms_error(MS_EFORMAT, "bad vox_offset");
    int nd = (int)h->dim[0];
    if (h->dim[0] < 1 || h->dim[0] > 7)
        return ms_error(MS_EFORMAT, "dim[0] = %lld is not in 1..7", (long long)h->dim[0]);
    int64_t nvox = 1;
    for (int i = 1; i <= nd; i++) {
        if (h->dim[i] < 1) return ms_error(MS_EFORMAT, "dim[%d] = %lld is not positive", i, (long long)h->dim[i]);
        if (h->dim[i] > MS_NIFTI_MAX_BYTES || nvox > MS_NIFTI_MAX_BYTES / h->dim[i])
            return ms_error(MS_EFORMAT, "dimensions too large");
        nvox *= h->dim[i];
    }
    for (int i = nd + 1; i < 8; i++) h->dim[i] = 1;
    int ts = type_size(h->datatype);
    if (ts < 0) return ms_error(MS_EFORMAT, "unknown datatype code %d", h->datatype);
    if (ts == 0)
        return ms_error(MS_EUNSUPPORTED, "datatype %s is not supported (scalar integer or float images only)",
                        ms_nifti_type_name(h->datatype));
    h->nbyper = ts;
    if (nvox > MS_NIFTI_MAX_BYTES / ts)
        return ms_error(MS_EFORMAT, "volume larger than %lld bytes", (long long)MS_NIFTI_MAX_BYTES);
    h->nvox = nvox;
    h->nbytes = nvox * ts;
    for (int i = 5; i <= nd; i++)
        if (h->dim[i] > 1)
            return ms_error(MS_EUNSUPPORTED, "dim[%d] = %lld: 5D and vector images are not supported", i,
                            (long long)h->dim[i]);
    for (int i = 1; i <= (nd < 3 ? nd : 3); i++)
        if (!(isfinite(h->pixdim[i]) && h->pixdim[i] > 0))
            return ms_error(MS_EFORMAT, "pixdim[%d] = %g is not a positive voxel size", i, h->pixdim[i]);
    return MS_OK;
}

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcasecmp(s + a - b, suf) == 0;
}

/* The path of the data file of an .hdr (same stem, .img, same compression). */
static char *img_path(const char *path)
{
    size_t n = strlen(path);
    char *p = malloc(n + 8);
    if (!p) return NULL;
    memcpy(p, path, n + 1);
    char *dot = has_suffix(path, ".hdr.gz") ? p + n - 7 : has_suffix(path, ".hdr") ? p + n - 4 : NULL;
    if (!dot) {
        free(p);
        return NULL;
    }
    int gz = has_suffix(path, ".gz"), upper = dot[1] == 'H';
    strcpy(dot, upper ? ".IMG" : ".img");
    if (gz) strcat(dot, upper ? ".GZ" : ".gz");
    return p;
}

/* Reads up to n header bytes (inflating .gz) and checks the length of the data against the header. */
static ms_status probe(const char *path, ms_nifti_hdr *h)
{
    uint8_t buf[540];
    ms_status st = MS_OK;
    char *img = NULL;
    gzFile gz = gzopen(path, "rb");
    if (!gz) return ms_error(errno ? errno : MS_EIO, "%s: %s", path, strerror(errno ? errno : EIO));
    int got = gzread(gz, buf, sizeof buf);
    int err;
    const char *msg = gzerror(gz, &err);
    if (got < 0 || (err != Z_OK && err != Z_STREAM_END && got < 348)) {
        const char *why = strrchr(msg, ':'); /* zlib prefixes the path */
        st = ms_error(MS_EFORMAT, "%s: cannot read the header: corrupt or unreadable data (%s)", path,
                      why ? why + 2 : msg);
        gzclose(gz);
        return st;
    }
    gzclose(gz);
    st = ms_nifti_check_header(buf, (size_t)got, h);
    if (st) {
        ms_error_prefix("%s", path);
        return st;
    }
    const char *data = path;
    if (h->pair) {
        img = img_path(path);
        if (!img) return ms_error(MS_EFORMAT, "%s: a header of an .hdr/.img pair needs an .hdr name", path);
        data = img;
    }
    struct stat sb;
    if (stat(data, &sb) != 0) {
        st = ms_error(errno, "%s: %s", data, strerror(errno));
        goto leave;
    }
    int64_t need = (h->pair ? h->vox_offset : h->vox_offset) + h->nbytes;
    if (has_suffix(data, ".gz")) {
        /* gzip keeps the uncompressed length mod 2^32 in its last 4 bytes; deflate cannot expand more than ~1032x */
        uint8_t tail[4];
        FILE *f = fopen(data, "rb");
        if (!f || sb.st_size < 18 || fseek(f, -4, SEEK_END) != 0 || fread(tail, 1, 4, f) != 4) {
            if (f) fclose(f);
            st = ms_error(MS_EFORMAT, "%s: truncated gzip file", data);
            goto leave;
        }
        fclose(f);
        uint32_t isize = (uint32_t)tail[0] | (uint32_t)tail[1] << 8 | (uint32_t)tail[2] << 16 | (uint32_t)tail[3] << 24;
        if (need > (int64_t)sb.st_size * 1100 + 4096) {
            st = ms_error(MS_EFORMAT, "%s: header says %lld bytes of data but the compressed file is %lld bytes", data,
                          (long long)need, (long long)sb.st_size);
            goto leave;
        }
        if (need < ((int64_t)1 << 32) && (int64_t)isize < need) {
            st = ms_error(MS_EFORMAT, "%s: header dimensions need %lld bytes but the file holds %u (truncated?)", data,
                          (long long)need, isize);
            goto leave;
        }
    } else if ((int64_t)sb.st_size < need) {
        st = ms_error(MS_EFORMAT, "%s: header dimensions need %lld bytes but the file has %lld (truncated?)", data,
                      (long long)need, (long long)sb.st_size);
        goto leave;
    }
leave:
    free(img);
    return st;
}

static double det3(const double m[4][4])
{
    return m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0]) +
        m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
}

static int usable(const double m[4][4])
{
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            if (!isfinite(m[i][j])) return 0;
    double d = det3(m);
    return isfinite(d) && fabs(d) > 1e-12;
}

int ms_affine_close(const double a[4][4], const double b[4][4], double tol)
{
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++)
            if (!(fabs(a[i][j] - b[i][j]) <= tol)) return 0;
    return 1;
}

/* Reads nbytes of voxel data at vox_offset of the data file (compressed or not), swapping to native order. */
static ms_status read_data(const char *path, ms_nifti *n)
{
    char *img = n->hdr.pair ? img_path(path) : NULL;
    const char *dp = img ? img : path;
    ms_status st = MS_OK;
    int64_t nb = n->hdr.nbytes;
    uint8_t *buf = malloc((size_t)nb > 0 ? (size_t)nb : 1);
    gzFile gz = NULL;
    if (!buf) {
        st = ms_error(MS_ENOMEM, "%s: out of memory (%lld bytes)", dp, (long long)nb);
        goto leave;
    }
    gz = gzopen(dp, "rb");
    if (!gz) {
        st = ms_error(errno ? errno : MS_EIO, "%s: %s", dp, strerror(errno ? errno : EIO));
        goto leave;
    }
    gzbuffer(gz, 1 << 18);
    if (n->hdr.vox_offset > 0 && gzseek(gz, (z_off_t)n->hdr.vox_offset, SEEK_SET) != (z_off_t)n->hdr.vox_offset) {
        st = ms_error(MS_EFORMAT, "%s: truncated before the voxel data", dp);
        goto leave;
    }
    for (int64_t off = 0; off < nb;) {
        unsigned chunk = (unsigned)(nb - off > (1 << 30) ? (1 << 30) : nb - off);
        int got = gzread(gz, buf + off, chunk);
        if (got <= 0) {
            int err;
            const char *m = gzerror(gz, &err);
            st = ms_error(MS_EFORMAT, "%s: truncated or corrupt voxel data (%lld of %lld bytes read%s%s)", dp,
                          (long long)off, (long long)nb, err && err != Z_BUF_ERROR ? ": " : "",
                          err && err != Z_BUF_ERROR ? m : "");
            goto leave;
        }
        off += got;
    }
    if (n->hdr.swapped && n->hdr.nbyper > 1) {
        int k = n->hdr.nbyper;
        for (int64_t i = 0; i < nb; i += k)
            for (int a = 0, b = k - 1; a < b; a++, b--) {
                uint8_t t = buf[i + a];
                buf[i + a] = buf[i + b];
                buf[i + b] = t;
            }
    }
    n->data = buf;
    buf = NULL;
leave:
    if (gz) gzclose(gz);
    free(buf);
    free(img);
    return st;
}

ms_status ms_nifti_open(const char *path, ms_nifti *n)
{
    memset(n, 0, sizeof *n);
    MS_TRY(probe(path, &n->hdr));
    nifti_image *nim = nifti_image_read(path, 0);
    if (!nim) return ms_error(MS_EFORMAT, "%s: libnifti cannot read the header", path);
    n->nim = nim;
    if (nim->nvox != n->hdr.nvox || nim->nbyper != n->hdr.nbyper || nim->datatype != n->hdr.datatype) {
        ms_nifti_close(n);
        return ms_error(MS_EFORMAT, "%s: libnifti disagrees with the header", path);
    }
    ms_status st = read_data(path, n);
    if (st) {
        ms_nifti_close(n);
        return st;
    }
    for (int i = 0; i < 3; i++) n->sdim[i] = nim->dim[0] > i ? nim->dim[i + 1] : 1;
    n->n_frames = nim->dim[0] >= 4 ? nim->dim[4] : 1;
    double q[4][4], s[4][4];
    memcpy(q, nim->qto_xyz.m, sizeof q);
    memcpy(s, nim->sto_xyz.m, sizeof s);
    if (nim->sform_code > 0 && usable(s)) {
        n->geom = MS_GEOM_SFORM;
        memcpy(n->affine, s, sizeof s);
        if (nim->qform_code > 0 && usable(q) && !ms_affine_close(q, s, 1e-3))
            snprintf(n->warn, sizeof n->warn, "sform and qform differ; using sform");
    } else if (nim->qform_code > 0 && usable(q)) {
        n->geom = MS_GEOM_QFORM;
        memcpy(n->affine, q, sizeof q);
        if (nim->sform_code > 0) snprintf(n->warn, sizeof n->warn, "sform is degenerate; using qform");
    } else {
        n->geom = MS_GEOM_PIXDIM;
        memset(n->affine, 0, sizeof n->affine);
        for (int i = 0; i < 3; i++) n->affine[i][i] = i < nim->dim[0] ? fabs(nim->pixdim[i + 1]) : 1.0;
        n->affine[3][3] = 1;
        snprintf(n->warn, sizeof n->warn,
                 "no usable sform or qform: orientation unknown, voxel sizes from pixdim "
                 "(stored axes taken as RAS)");
    }
    /* closest axis permutation: repeatedly take the largest |direction cosine| among unused world and voxel axes */
    double c[3][3];
    for (int j = 0; j < 3; j++) {
        double norm = 0;
        for (int i = 0; i < 3; i++) norm += n->affine[i][j] * n->affine[i][j];
        norm = sqrt(norm);
        for (int i = 0; i < 3; i++) c[i][j] = norm > 0 ? n->affine[i][j] / norm : 0;
    }
    int used_w[3] = {0}, used_v[3] = {0};
    for (int it = 0; it < 3; it++) {
        int bi = -1, bj = -1;
        double best = -1;
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++)
                if (!used_w[i] && !used_v[j] && fabs(c[i][j]) > best) best = fabs(c[i][j]), bi = i, bj = j;
        used_w[bi] = used_v[bj] = 1;
        n->perm[bi] = bj;
        n->flip[bi] = c[bi][bj] < 0;
    }
    /* canonical index → stored index: stored[perm[i]] = flip ? sdim-1-c_i : c_i; caffine = affine · M */
    double M[4][4] = {{0}};
    for (int i = 0; i < 3; i++) {
        int j = n->perm[i];
        M[j][i] = n->flip[i] ? -1 : 1;
        M[j][3] = n->flip[i] ? (double)(n->sdim[j] - 1) : 0;
        n->cdim[i] = n->sdim[j];
    }
    M[3][3] = 1;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            double a = 0;
            for (int k = 0; k < 4; k++) a += n->affine[i][k] * M[k][j];
            n->caffine[i][j] = a;
        }
    for (int j = 0; j < 3; j++)
        n->cspacing[j] = sqrt(n->caffine[0][j] * n->caffine[0][j] + n->caffine[1][j] * n->caffine[1][j] +
                              n->caffine[2][j] * n->caffine[2][j]);
    return MS_OK;
}

void ms_nifti_close(ms_nifti *n)
{
    if (n->nim) nifti_image_free((nifti_image *)n->nim);
    free(n->data);
    n->nim = NULL;
    n->data = NULL;
}

#define GATHER(T)                                                                                                      \
    do {                                                                                                               \
        const T *src = (const T *)base;                                                                                \
        for (int64_t z = 0; z < cz; z++)                                                                               \
            for (int64_t y = 0; y < cy; y++) {                                                                         \
                int64_t o = o0 + z * sz + y * sy;                                                                      \
                float *d = dst + (z * cy + y) * cx;                                                                    \
                for (int64_t x = 0; x < cx; x++, o += sx) {                                                            \
                    double v = (double)src[o];                                                                         \
                    if (scale) v = v * slope + inter;                                                                  \
                    float f = (float)v;                                                                                \
                    if (!isfinite(f)) {                                                                                \
                        f = 0;                                                                                         \
                        bad++;                                                                                         \
                    }                                                                                                  \
                    d[x] = f;                                                                                          \
                }                                                                                                      \
            }                                                                                                          \
    } while (0)

ms_status ms_nifti_frame(const ms_nifti *n, int64_t frame, float *dst, uint64_t *n_nonfinite)
{
    const nifti_image *nim = n->nim;
    if (frame < 0 || frame >= n->n_frames) return ms_error(MS_EINVAL, "frame %lld out of range", (long long)frame);
    int64_t fvox = n->sdim[0] * n->sdim[1] * n->sdim[2];
    const uint8_t *base = (const uint8_t *)n->data + (size_t)(frame * fvox) * (size_t)nim->nbyper;
    int64_t stride[3] = {1, n->sdim[0], n->sdim[0] * n->sdim[1]};
    int64_t s[3], o0 = 0;
    for (int i = 0; i < 3; i++) {
        int j = n->perm[i];
        s[i] = n->flip[i] ? -stride[j] : stride[j];
        if (n->flip[i]) o0 += (n->sdim[j] - 1) * stride[j];
    }
    int64_t cx = n->cdim[0], cy = n->cdim[1], cz = n->cdim[2], sx = s[0], sy = s[1], sz = s[2];
    double slope = nim->scl_slope, inter = nim->scl_inter;
    int scale = isfinite(slope) && slope != 0;
    if (!isfinite(inter)) inter = 0;
    if (!scale) slope = 1, inter = 0;
    uint64_t bad = 0;
    switch (nim->datatype) {
    case DT_UINT8: GATHER(uint8_t); break;
    case DT_INT8: GATHER(int8_t); break;
    case DT_UINT16: GATHER(uint16_t); break;
    case DT_INT16: GATHER(int16_t); break;
    case DT_UINT32: GATHER(uint32_t); break;
    case DT_INT32: GATHER(int32_t); break;
    case DT_FLOAT32: GATHER(float); break;
    case DT_FLOAT64: GATHER(double); break;
    default: return ms_error(MS_EUNSUPPORTED, "datatype %d", nim->datatype);
    }
    *n_nonfinite = bad;
    return MS_OK;
}
