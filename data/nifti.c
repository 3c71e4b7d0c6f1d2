/* data/nifti.c — see nifti.h. Header fields are read from raw bytes at fixed offsets (NIfTI-1: 348-byte header,
 * NIfTI-2: 540 bytes) in the file's byte order, checked, and only then is libnifti allowed to see the header.
 *
 * Two ways in. Single-file .nii.gz (up to MS_NIFTI_MEM_MAX) are read whole and handled in memory: the header is
 * inflated alone with zlib and checked, then the whole gzip stream is inflated in one call (libdeflate: 2-3x zlib's
 * speed on whole buffers, no stream state) and libnifti only converts the already-checked header bytes
 * (nifti_convert_n?hdr2nim, no file access). Uncompressed files, .hdr/.img pairs and larger files stream through
 * zlib's gzread as before. Both give the same ms_nifti.
 */
#include "data/nifti.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <nifti2_io.h>
#ifdef MS_HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif

#include "base/path.h"

_Static_assert(sizeof(nifti_1_header) == 348, "nifti_1_header must be the 348 bytes of the file");
_Static_assert(sizeof(nifti_2_header) == 540, "nifti_2_header must be the 540 bytes of the file");

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

/* The path of the data file of an .hdr (same stem, .img, same compression). */
static char *img_path(const char *path)
{
    size_t n = strlen(path);
    char *p = malloc(n + 8);
    if (!p) return NULL;
    memcpy(p, path, n + 1);
    char *dot = ms_str_ends_with_nocase(path, ".hdr.gz") ? p + n - 7
                : ms_str_ends_with_nocase(path, ".hdr")  ? p + n - 4
                                                         : NULL;
    if (!dot) {
        free(p);
        return NULL;
    }
    int gz = ms_str_ends_with_nocase(path, ".gz"), upper = dot[1] == 'H';
    strcpy(dot, upper ? ".IMG" : ".img");
    if (gz) strcat(dot, upper ? ".GZ" : ".gz");
    return p;
}

/* The data file (size bytes on disk; gzip's ISIZE trailer when gz) can hold what the header promises. gzip keeps
 * the uncompressed length mod 2^32 in its last 4 bytes, and deflate cannot expand more than ~1032x. */
static ms_status check_length(const char *data, const ms_nifti_hdr *h, int gz, int64_t size, uint32_t isize)
{
    int64_t need = h->vox_offset + h->nbytes;
    if (gz) {
        if (need > size * 1100 + 4096)
            return ms_error(MS_EFORMAT, "%s: header says %lld bytes of data but the compressed file is %lld bytes",
                            data, (long long)need, (long long)size);
        if (need < ((int64_t)1 << 32) && (int64_t)isize < need)
            return ms_error(MS_EFORMAT, "%s: header dimensions need %lld bytes but the file holds %u (truncated?)",
                            data, (long long)need, isize);
    } else if (size < need)
        return ms_error(MS_EFORMAT, "%s: header dimensions need %lld bytes but the file has %lld (truncated?)", data,
                        (long long)need, (long long)size);
    return MS_OK;
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
    if (ms_str_ends_with_nocase(data, ".gz")) {
        uint8_t tail[4];
        FILE *f = fopen(data, "rb");
        if (!f || sb.st_size < 18 || fseek(f, -4, SEEK_END) != 0 || fread(tail, 1, 4, f) != 4) {
            if (f) fclose(f);
            st = ms_error(MS_EFORMAT, "%s: truncated gzip file", data);
            goto leave;
        }
        fclose(f);
        st = check_length(data, h, 1, (int64_t)sb.st_size, rd32(tail, 0));
    } else
        st = check_length(data, h, 0, (int64_t)sb.st_size, 0);
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

/* Voxel data in the file's byte order → native. */
static void swap_data(const ms_nifti_hdr *h, uint8_t *buf)
{
    if (!h->swapped || h->nbyper < 2) return;
    int k = h->nbyper;
    for (int64_t i = 0; i < h->nbytes; i += k)
        for (int a = 0, b = k - 1; a < b; a++, b--) {
            uint8_t t = buf[i + a];
            buf[i + a] = buf[i + b];
            buf[i + b] = t;
        }
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
    swap_data(&n->hdr, buf);
    n->block = n->data = buf;
    buf = NULL;
leave:
    if (gz) gzclose(gz);
    free(buf);
    free(img);
    return st;
}

/* libnifti's image (header fields, qform/sform matrices) must agree with our own reading of the header. */
static ms_status adopt_nim(const char *path, ms_nifti *n, nifti_image *nim)
{
    if (!nim) return ms_error(MS_EFORMAT, "%s: libnifti cannot read the header", path);
    n->nim = nim;
    if (nim->nvox != n->hdr.nvox || nim->nbyper != n->hdr.nbyper || nim->datatype != n->hdr.datatype)
        return ms_error(MS_EFORMAT, "%s: libnifti disagrees with the header", path);
    return MS_OK;
}

static ms_status geometry(ms_nifti *n);

/* The streaming path: .hdr/.img pairs and uncompressed files (no second copy of a large .nii in memory). */
static ms_status open_stream(const char *path, ms_nifti *n)
{
    MS_TRY(probe(path, &n->hdr));
    MS_TRY(adopt_nim(path, n, nifti_image_read(path, 0)));
    MS_TRY(read_data(path, n));
    return geometry(n);
}

ms_status ms_nifti_read_file(const char *path, uint8_t **buf, size_t *cap, size_t *n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ms_error(errno, "%s: %s", path, strerror(errno));
    struct stat sb;
    ms_status st = MS_OK;
    if (fstat(fd, &sb) != 0) {
        st = ms_error(errno, "%s: %s", path, strerror(errno));
        goto leave;
    }
    size_t want = sb.st_size > 0 ? (size_t)sb.st_size : 0, got = 0;
    if (want + 1 > *cap) { /* +1: a file that grew since fstat is noticed as a short read at the end, below */
        uint8_t *p = realloc(*buf, want + 1);
        if (!p) {
            st = ms_error(MS_ENOMEM, "%s: out of memory (%zu bytes)", path, want + 1);
            goto leave;
        }
        *buf = p;
        *cap = want + 1;
    }
    for (;;) {
        ssize_t k = read(fd, *buf + got, *cap - got);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            st = ms_error(errno, "%s: %s", path, strerror(errno));
            goto leave;
        }
        if (k == 0) break;
        got += (size_t)k;
        if (got == *cap) { /* still growing: read on */
            uint8_t *p = realloc(*buf, *cap * 2);
            if (!p) {
                st = ms_error(MS_ENOMEM, "%s: out of memory", path);
                goto leave;
            }
            *buf = p;
            *cap *= 2;
        }
    }
    *n = got;
leave:
    close(fd);
    return st;
}

/* Inflates the gzip members at in[0..n) into out[0..want) with zlib, stopping when out is full or the members end
 * (bytes after a member that do not start another one are ignored, as gzread does). to_end: once out is full, go on
 * inflating (into a sink) to the end of that member, so that its CRC and length are checked too. *got = bytes
 * produced. Returns 0; -1 for corrupt data (*why = zlib's message); -2 when the input ends inside a member. */
static int zinflate(const uint8_t *in, size_t n, uint8_t *out, size_t want, int to_end, size_t *got, const char **why)
{
    z_stream s;
    memset(&s, 0, sizeof s);
    *got = 0;
    *why = "unexpected end of file";
    if (inflateInit2(&s, 16 + MAX_WBITS) != Z_OK) {
        *why = "out of memory";
        return -1;
    }
    uint8_t sink[16384];
    size_t ip = 0, op = 0;
    int rc = 0, at_end = 0;
    for (;;) {
        int draining = op == want;
        if (draining && (!to_end || at_end)) break;
        /* zlib counts in uInt: feed at most 1 GiB per call */
        uInt ai = (uInt)(n - ip > (1u << 30) ? (1u << 30) : n - ip);
        uInt ao = draining ? (uInt)sizeof sink : (uInt)(want - op > (1u << 30) ? (1u << 30) : want - op);
        s.next_in = (Bytef *)(uintptr_t)(in + ip);
        s.avail_in = ai;
        s.next_out = draining ? sink : out + op;
        s.avail_out = ao;
        int zr = inflate(&s, Z_NO_FLUSH);
        ip += ai - s.avail_in;
        if (!draining) op += ao - s.avail_out;
        if (zr == Z_STREAM_END) {
            at_end = 1;
            if (op < want && n - ip >= 2 && in[ip] == 0x1f && in[ip + 1] == 0x8b) {
                inflateReset(&s);
                at_end = 0;
                continue;
            }
            break;
        }
        if (zr == Z_OK) continue;
        if (zr != Z_BUF_ERROR) *why = s.msg ? s.msg : "corrupt data";
        rc = zr == Z_BUF_ERROR ? -2 : -1;
        break;
    }
    *got = op;
    inflateEnd(&s);
    return rc;
}

/* *b holds at least want bytes (contents not kept: free + malloc, no copy). */
static ms_status reserve_buf(const char *path, ms_nifti_buf *b, size_t want)
{
    if (b->cap >= want) return MS_OK;
    free(b->p);
    b->p = malloc(want);
    b->cap = b->p ? want : 0;
    if (!b->p) return ms_error(MS_ENOMEM, "%s: out of memory (%zu bytes)", path, want);
    return MS_OK;
}

#ifdef MS_HAVE_LIBDEFLATE
/* Inflates whole gzip members with libdeflate into b (grown when a member is longer than the room left: libdeflate
 * cannot resume, so that member is inflated again), until `need` bytes are out. Returns MS_OK; MS_EFORMAT, without a
 * message, when the stream is corrupt or ends early (the caller asks zlib what is wrong and where); MS_ENOMEM. */
static ms_status deflate_all(const char *path, const uint8_t *in, size_t n, size_t need, ms_nifti_buf *b)
{
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    if (!d) return ms_error(MS_ENOMEM, "%s: out of memory", path);
    ms_status st = MS_OK;
    /* deflate expands at most ~1032x: a member that wants more room than that is corrupt, not large */
    size_t limit = n > (SIZE_MAX - 65536) / 1100 ? SIZE_MAX : n * 1100 + 65536;
    size_t ip = 0, op = 0;
    while (op < need) {
        size_t used = 0, got = 0;
        /* libdeflate skips a member's optional header CRC (FHCRC); zlib checks it: hand such files to zlib, so
         * both builds accept the same files */
        if (n - ip >= 4 && (in[ip + 3] & 0x02)) {
            st = MS_EFORMAT;
            break;
        }
        enum libdeflate_result r =
            libdeflate_gzip_decompress_ex(d, in + ip, n - ip, b->p + op, b->cap - op, &used, &got);
        if (r == LIBDEFLATE_INSUFFICIENT_SPACE && b->cap < limit) {
            size_t nc = b->cap > limit / 2 ? limit : b->cap * 2;
            uint8_t *p = realloc(b->p, nc);
            if (!p) {
                st = ms_error(MS_ENOMEM, "%s: out of memory (%zu bytes)", path, nc);
                break;
            }
            b->p = p;
            b->cap = nc;
            continue;
        }
        if (r != LIBDEFLATE_SUCCESS) {
            st = MS_EFORMAT;
            break;
        }
        ip += used;
        op += got;
        if (op < need && !(n - ip >= 2 && in[ip] == 0x1f && in[ip + 1] == 0x8b)) {
            st = MS_EFORMAT; /* the members end before the data does */
            break;
        }
    }
    libdeflate_free_decompressor(d);
    return st;
}
#endif

ms_status ms_nifti_open_mem(const char *path, const uint8_t *file, size_t n, ms_nifti_buf *lent, ms_nifti *out)
{
    memset(out, 0, sizeof *out);
    ms_status st = MS_OK;
    int gz = n >= 2 && file[0] == 0x1f && file[1] == 0x8b;
    uint8_t hb[540];
    size_t hn;
    if (gz) {
        const char *why;
        int rc = zinflate(file, n, hb, sizeof hb, 0, &hn, &why);
        if (rc && hn < 348)
            return ms_error(MS_EFORMAT, "%s: cannot read the header: corrupt or unreadable data (%s)", path, why);
    } else {
        hn = n < sizeof hb ? n : sizeof hb;
        memcpy(hb, file, hn);
    }
    ms_nifti_hdr *h = &out->hdr;
    st = ms_nifti_check_header(hb, hn, h);
    if (st) {
        ms_error_prefix("%s", path);
        return st;
    }
    if (h->pair) return ms_error(MS_EFORMAT, "%s: a header of an .hdr/.img pair needs an .hdr name", path);
    if (gz && n < 18) return ms_error(MS_EFORMAT, "%s: truncated gzip file", path);
    /* ISIZE is only the last member's length: multi-member files (bgzip, concatenated gzip) hold more. Inflating
     * here finds a short stream anyway, so only the expansion bound is checked up front. */
    MS_TRY(check_length(path, h, gz, (int64_t)n, UINT32_MAX));
    size_t need = (size_t)(h->vox_offset + h->nbytes);
    ms_nifti_buf own = {0}, *b = lent ? lent : &own;
    if (!gz) {
        if ((st = reserve_buf(path, b, h->nbytes > 0 ? (size_t)h->nbytes : 1))) goto leave;
        memcpy(b->p, file + h->vox_offset, (size_t)h->nbytes);
        out->data = b->p;
    } else {
        int use_zlib = 1;
#ifdef MS_HAVE_LIBDEFLATE
        /* ISIZE sizes a single-member file exactly; past 4 GB it wraps, and zlib's inflate into exactly `need` bytes
         * is the leaner way there. A stream libdeflate rejects goes to zlib too, which names the problem and the
         * byte; zlib checks the CRC and length of every member it passes, the last one included (to_end), so it
         * accepts no more than libdeflate would. */
        if (need < ((size_t)1 << 32)) {
            /* a single member's exact length; a garbage trailer must not buy more than deflate could ever fill */
            size_t isize = rd32(file + n - 4, 0), bound = n * 1100 + 65536;
            if ((st = reserve_buf(path, b, isize > need ? (isize < bound ? isize : bound) : need))) goto leave;
            st = deflate_all(path, file, n, need, b);
            if (st && st != MS_EFORMAT) goto leave;
            use_zlib = st != MS_OK;
            st = MS_OK;
        }
#endif
        if (use_zlib) {
            size_t got;
            const char *why;
            if ((st = reserve_buf(path, b, need))) goto leave;
            if (zinflate(file, n, b->p, need, 1, &got, &why) || got < need) {
                st = ms_error(MS_EFORMAT, "%s: truncated or corrupt voxel data (%lld of %lld bytes read: %s)", path,
                              (long long)(got > (size_t)h->vox_offset ? got - (size_t)h->vox_offset : 0),
                              (long long)h->nbytes, why);
                goto leave;
            }
        }
        out->data = b->p + h->vox_offset;
        if (h->vox_offset % 8) /* keep voxels aligned for their type, as a fresh allocation would be */
            out->data = memmove(b->p, b->p + h->vox_offset, (size_t)h->nbytes);
    }
    if (!lent) out->block = own.p; /* the image's own; a lent buffer stays the caller's */
    own.p = NULL;
    swap_data(h, out->data);
    /* libnifti converts the checked header bytes (it swaps them itself); no file name: it never touches the disk */
    nifti_image *nim = NULL;
    if (h->version == 2) {
        nifti_2_header h2;
        memcpy(&h2, hb, sizeof h2);
        nim = nifti_convert_n2hdr2nim(h2, NULL);
    } else {
        nifti_1_header h1;
        memcpy(&h1, hb, sizeof h1);
        nim = nifti_convert_n1hdr2nim(h1, NULL);
    }
    if (!st) st = adopt_nim(path, out, nim);
    if (!st) st = geometry(out);
leave:
    free(own.p);
    if (st) ms_nifti_close(out);
    return st;
}

int ms_nifti_in_memory(const char *path)
{
    struct stat sb;
    return ms_str_ends_with_nocase(path, ".gz") && !ms_str_ends_with_nocase(path, ".hdr.gz") &&
           stat(path, &sb) == 0 && sb.st_size <= MS_NIFTI_MEM_MAX;
}

ms_status ms_nifti_open(const char *path, ms_nifti *n)
{
    memset(n, 0, sizeof *n);
    ms_status st;
    if (ms_nifti_in_memory(path)) {
        uint8_t *buf = NULL;
        size_t cap = 0, len = 0;
        st = ms_nifti_read_file(path, &buf, &cap, &len);
        if (!st) st = ms_nifti_open_mem(path, buf, len, NULL, n);
        free(buf);
        return st;
    }
    st = open_stream(path, n);
    if (st) ms_nifti_close(n);
    return st;
}

static ms_status geometry(ms_nifti *n)
{
    const nifti_image *nim = n->nim;
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
    free(n->block);
    n->nim = NULL;
    n->data = NULL;
    n->block = NULL;
}

/* The canonical walk of a frame: canonical voxel (x, y, z) is stored element o0 + x·s[0] + y·s[1] + z·s[2] (the
 * strides negative along flipped axes). Returns o0. */
static int64_t canon_strides(const ms_nifti *n, int64_t s[3])
{
    const int64_t stride[3] = {1, n->sdim[0], n->sdim[0] * n->sdim[1]};
    int64_t o0 = 0;
    for (int i = 0; i < 3; i++) {
        int j = n->perm[i];
        s[i] = n->flip[i] ? -stride[j] : stride[j];
        if (n->flip[i]) o0 += (n->sdim[j] - 1) * stride[j];
    }
    return o0;
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
    int64_t s[3], o0 = canon_strides(n, s);
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

/* scl_slope/scl_inter as ms_nifti_frame applies them: "scale" off, or on with slope 1 and no offset, keeps values. */
static int keeps_values(const nifti_image *nim)
{
    double slope = nim->scl_slope, inter = nim->scl_inter;
    int scale = isfinite(slope) && slope != 0;
    return !scale || (slope == 1 && (!isfinite(inter) || inter == 0));
}

int ms_nifti_frame_int(const ms_nifti *n, int64_t frame, const void **data)
{
    const nifti_image *nim = n->nim;
    int dt = nim->datatype;
    if (frame < 0 || frame >= n->n_frames || !keeps_values(nim)) return 0;
    if (dt != DT_UINT8 && dt != DT_INT8 && dt != DT_UINT16 && dt != DT_INT16) return 0;
    int64_t fvox = n->sdim[0] * n->sdim[1] * n->sdim[2];
    *data = (const uint8_t *)n->data + (size_t)(frame * fvox) * (size_t)nim->nbyper;
    return dt;
}

/* The canonical walk of GATHER to 16 bits: with a table, one lookup per voxel instead of the conversion to float,
 * the scaling and the finiteness test (the bounds test keeps a foreign table from reading out of range); without,
 * the stored values' own bits (8-bit values widened, int8 sign-extended), a run along x with stride 1 a memcpy. */
#define GATHER16(T)                                                                                                    \
    do {                                                                                                               \
        const T *src = (const T *)base;                                                                                \
        for (int64_t z = 0; z < cz; z++)                                                                               \
            for (int64_t y = 0; y < cy; y++) {                                                                         \
                int64_t o = o0 + z * sz + y * sy;                                                                      \
                uint16_t *d = dst + (z * cy + y) * cx;                                                                 \
                if (lut)                                                                                               \
                    for (int64_t x = 0; x < cx; x++, o += sx) {                                                        \
                        uint32_t k = (uint32_t)((int32_t)src[o] - lo);                                                 \
                        d[x] = k <= range ? lut[k] : 0;                                                                \
                    }                                                                                                  \
                else if (sizeof(T) == 2 && sx == 1)                                                                    \
                    memcpy(d, src + o, (size_t)cx * 2);                                                                \
                else                                                                                                   \
                    for (int64_t x = 0; x < cx; x++, o += sx) d[x] = (uint16_t)src[o];                                 \
            }                                                                                                          \
    } while (0)

/* An integer frame (ms_nifti_frame_int) to canonical order through lut over lo..hi, or as its own bits (lut NULL). */
static ms_status gather16(const ms_nifti *n, int64_t frame, const uint16_t *lut, int32_t lo, int32_t hi,
                          uint16_t *dst)
{
    const void *data;
    int dt = ms_nifti_frame_int(n, frame, &data);
    if (lut && (!dt || hi < lo))
        return ms_error(MS_EINVAL, "ms_nifti_frame_lut: not an integer frame or an empty table");
    if (!dt) return ms_error(MS_EINVAL, "ms_nifti_frame_raw16: not an integer frame");
    const uint8_t *base = data;
    const uint32_t range = (uint32_t)((int64_t)hi - lo);
    int64_t s[3], o0 = canon_strides(n, s);
    int64_t cx = n->cdim[0], cy = n->cdim[1], cz = n->cdim[2], sx = s[0], sy = s[1], sz = s[2];
    switch (dt) {
    case DT_UINT8: GATHER16(uint8_t); break;
    case DT_INT8: GATHER16(int8_t); break;
    case DT_UINT16: GATHER16(uint16_t); break;
    case DT_INT16: GATHER16(int16_t); break;
    }
    return MS_OK;
}

ms_status ms_nifti_frame_lut(const ms_nifti *n, int64_t frame, const uint16_t *lut, int32_t lo, int32_t hi,
                             uint16_t *dst)
{
    MS_FAIL_IF(!lut, MS_EINVAL, "ms_nifti_frame_lut: not an integer frame or an empty table");
    return gather16(n, frame, lut, lo, hi, dst);
}

ms_status ms_nifti_frame_raw16(const ms_nifti *n, int64_t frame, uint16_t *dst)
{
    return gather16(n, frame, NULL, 0, -1, dst);
}

int ms_nifti_frame_view16(const ms_nifti *n, int64_t frame, const uint16_t **base, int64_t st[3])
{
    const void *data;
    int dt = ms_nifti_frame_int(n, frame, &data);
    if ((dt != DT_UINT16 && dt != DT_INT16) || ((uintptr_t)data & 1)) return 0;
    *base = (const uint16_t *)data + canon_strides(n, st);
    return dt;
}

