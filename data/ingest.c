/* data/ingest.c — see ingest.h. Workers produce one `result` per source (every volume of it, already
 * compressed); the writer (the calling thread) consumes results strictly in source order, so keys follow the
 * order of the source list whatever the thread timing, and at most `window` results wait in memory.
 */
#include "data/ingest.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <nifti2_io.h>
#include <zstd.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "base/clock.h"
#include "base/fileio.h"
#include "base/path.h"
#include "data/dicom.h"
#include "data/encode.h"
#include "data/hash.h"
#include "data/ingest_labels.h"
#include "data/nifti.h"
#include "data/png.h"
#include "data/sampler.h"
#include "data/store.h"
#include "data/store_fmt.h"
#include "data/store_write.h"

/* ---- source list ---------------------------------------------------------------------------------------- */

typedef struct job {
    char *image, *label;
    int png;
    int dicom;      /* 1: a DICOM series (image = its folder or file, files = its files); 2: a file dcm2niix wrote */
    char **files;   /* a series' DICOM files, sorted */
    int n_files;
    int list, line; /* 0: a SRC; 1: a row of --labels, 2: of --val-labels, at this line */
    int index;      /* its place in the full source list (a shard's jobs are every N-th of it) */
    int status;     /* the result's, once committed: 0 ingested, 1 skipped, 2 failed, -1 not reached */
    char hash[65];  /* the source's content hash, once committed */
} job;

typedef struct joblist {
    job *v;
    int n, cap;
} joblist;

static ms_status push_job(joblist *l, const char *image, const char *label, int png)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        job *v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) return ms_error(MS_ENOMEM, "out of memory");
        l->v = v;
        l->cap = cap;
    }
    job *j = &l->v[l->n++];
    j->image = strdup(image);
    j->label = label ? strdup(label) : NULL;
    j->png = png;
    j->dicom = j->n_files = 0;
    j->files = NULL;
    j->list = j->line = 0;
    j->index = l->n - 1;
    j->status = -1;
    j->hash[0] = 0;
    if (!j->image || (label && !j->label)) return ms_error(MS_ENOMEM, "out of memory");
    return MS_OK;
}

static int is_nifti_name(const char *s)
{
    return ms_str_ends_with_nocase(s, ".nii") || ms_str_ends_with_nocase(s, ".nii.gz") ||
           ms_str_ends_with_nocase(s, ".hdr") || ms_str_ends_with_nocase(s, ".hdr.gz");
}

/* The DICOM files found in one folder, in walk (name) order. */
typedef struct namelist {
    char **v;
    int n, cap;
} namelist;

static ms_status names_add(namelist *l, const char *s)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        char **v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) return ms_error(MS_ENOMEM, "out of memory");
        l->v = v;
        l->cap = cap;
    }
    if (!(l->v[l->n] = strdup(s))) return ms_error(MS_ENOMEM, "out of memory");
    l->n++;
    return MS_OK;
}

static void names_free(namelist *l)
{
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* One DICOM job: `where` (a folder, or a file given as a source) and its files, which the job takes. */
static ms_status push_dicom(joblist *l, const char *where, namelist *files)
{
    ms_status st = push_job(l, where, NULL, 0);
    if (st) {
        names_free(files);
        return st;
    }
    job *j = &l->v[l->n - 1];
    j->dicom = 1;
    j->files = files->v;
    j->n_files = files->n;
    memset(files, 0, sizeof *files);
    return MS_OK;
}

/* The folders and files a walk has reached, by (st_dev, st_ino): an open-addressing set (linear probing, at most
 * half full). Paths cannot tell that d/link/ is d/, nor that two names are one file; the inode can. */
typedef struct fileid {
    uint64_t dev, ino;
} fileid;

typedef struct idset {
    fileid *v;
    uint8_t *used;
    size_t n, cap; /* cap: 0 or a power of two */
} idset;

static size_t idset_slot(const idset *s, fileid k)
{
    uint64_t x = (k.ino ^ (k.dev << 40 | k.dev >> 24)) * 0x9E3779B97F4A7C15ull; /* Fibonacci hashing */
    size_t i = (size_t)(x >> 32) & (s->cap - 1);
    while (s->used[i] && (s->v[i].dev != k.dev || s->v[i].ino != k.ino)) i = (i + 1) & (s->cap - 1);
    return i;
}

/* Adds sb's (st_dev, st_ino): 1 when it was new, 0 when it was there already; -1 out of memory. */
static int idset_add(idset *s, const struct stat *sb)
{
    fileid k = {(uint64_t)sb->st_dev, (uint64_t)sb->st_ino};
    if (2 * (s->n + 1) > s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 256;
        idset g = {calloc(cap, sizeof *g.v), calloc(cap, 1), s->n, cap};
        if (!g.v || !g.used) {
            free(g.v);
            free(g.used);
            return -1;
        }
        for (size_t i = 0; i < s->cap; i++)
            if (s->used[i]) {
                size_t j = idset_slot(&g, s->v[i]);
                g.v[j] = s->v[i];
                g.used[j] = 1;
            }
        free(s->v);
        free(s->used);
        *s = g;
    }
    size_t i = idset_slot(s, k);
    if (s->used[i]) return 0;
    s->v[i] = k;
    s->used[i] = 1;
    s->n++;
    return 1;
}

typedef struct walker {
    joblist *jobs;
    idset seen; /* every folder walked and every file taken */
    volatile sig_atomic_t *stop;
} walker;

/* Recursive walk in sorted order; from directories it takes NIfTI names and DICOM files (by content: "DICM" at byte
 * 128, checked for every other name but PNG), and the DICOM files of one folder, collected into `dcm`, become one
 * job of that folder. Links are followed, but a folder or file reached again (a link loop, two links to one place,
 * a source given twice) is skipped: first path wins. */
static ms_status walk(walker *w, const char *path, int top, namelist *dcm)
{
    struct stat sb;
    if (w->stop && *w->stop)
        return ms_error(MS_EINTERRUPTED, "%s: interrupted while listing the sources; nothing was written", path);
    if (stat(path, &sb) != 0) {
        if (top) return push_job(w->jobs, path, NULL, 0); /* reported as that source's failure */
        int e = errno;
        struct stat lb;
        int link = lstat(path, &lb) == 0 && S_ISLNK(lb.st_mode);
        fprintf(stderr, "%s: warning: %s%s%s, skipped\n", path, link ? "broken symbolic link (" : "", strerror(e),
                link ? ")" : "");
        return MS_OK;
    }
    int dicom = !S_ISDIR(sb.st_mode) && !is_nifti_name(path) && !ms_str_ends_with_nocase(path, ".png") &&
                S_ISREG(sb.st_mode) && ms_dicom_is_file(path);
    if (!top && !S_ISDIR(sb.st_mode) && !is_nifti_name(path) && !dicom) return MS_OK;
    int fresh = idset_add(&w->seen, &sb);
    if (fresh < 0) return ms_error(MS_ENOMEM, "out of memory");
    if (!fresh) return MS_OK;
    if (dicom && !top) return names_add(dcm, path);
    if (dicom) { /* a DICOM file given as a source: a series of its own */
        namelist one = {0};
        ms_status st = names_add(&one, path);
        return st ? st : push_dicom(w->jobs, path, &one);
    }
    if (!S_ISDIR(sb.st_mode)) return push_job(w->jobs, path, NULL, 0);
    namelist here = {0};
    struct dirent **names = NULL;
    int n = scandir(path, &names, NULL, alphasort);
    if (n < 0) return ms_error(errno, "%s: %s", path, strerror(errno));
    ms_status st = MS_OK;
    for (int i = 0; i < n; i++) {
        const char *nm = names[i]->d_name;
        if (!st && nm[0] != '.') {
            char *p = ms_path_join_new(path, nm);
            if (!p)
                st = ms_error(MS_ENOMEM, "out of memory");
            else
                st = walk(w, p, 0, &here);
            free(p);
        }
        free(names[i]);
    }
    free(names);
    if (!st && here.n) return push_dicom(w->jobs, path, &here);
    names_free(&here);
    return st;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\r' || s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = 0;
    return s;
}

static char *resolve(const char *base_dir, const char *p)
{
    return p[0] == '/' ? strdup(p) : ms_path_join_new(base_dir, p);
}

/* A list path: under --image-root with its leading '/' removed (finetune-SAM writes mask paths so and strips the
 * '/'), else relative to the list's folder unless absolute. */
static char *list_path(const char *root, const char *dir, const char *p)
{
    if (!root) return resolve(dir, p);
    while (*p == '/') p++;
    return ms_path_join_new(root, p);
}

/* A first row naming no file (no '.' or '/' in either field: "image,label", "img<TAB>mask") is a header. */
static int is_header(const char *img, const char *lab)
{
    return !strpbrk(img, "./") && !strpbrk(lab, "./");
}

/* A list of image,label rows (finetune-SAM's train/val lists and ours): comma or tab separated (a row holding a tab
 * is split at its first tab), CRLF accepted, an optional header line, a UTF-8 byte order mark ignored, '#' lines and
 * blank lines skipped. Rows are tagged with `list` and their line number. */
static ms_status read_csv(const char *csv, const char *root, int list, joblist *l)
{
    FILE *f = fopen(csv, "r");
    if (!f) return ms_error(errno, "%s: %s", csv, strerror(errno));
    char *dir = strdup(csv), *slash = dir ? strrchr(dir, '/') : NULL;
    if (!dir) {
        fclose(f);
        return ms_error(MS_ENOMEM, "out of memory");
    }
    if (slash)
        *slash = 0;
    else
        strcpy(dir, ".");
    char line[8192];
    int lineno = 0, rows = 0;
    ms_status st = MS_OK;
    while (!st && fgets(line, sizeof line, f)) {
        lineno++;
        char *s = line;
        if (lineno == 1 && !memcmp(s, "\xEF\xBB\xBF", 3)) s += 3;
        s = trim(s);
        if (!*s || *s == '#') continue;
        char *cut = strchr(s, '\t');
        if (!cut) cut = strchr(s, ',');
        if (!cut) {
            st = ms_error(MS_EFORMAT, "%s:%d: expected image,label", csv, lineno);
            break;
        }
        *cut = 0;
        char *img = trim(s), *lab = trim(cut + 1);
        if (rows++ == 0 && is_header(img, lab)) continue;
        if (!*img) {
            st = ms_error(MS_EFORMAT, "%s:%d: no image path", csv, lineno);
            break;
        }
        char *pi = list_path(root, dir, img), *pl = *lab ? list_path(root, dir, lab) : NULL;
        if (!pi || (*lab && !pl))
            st = ms_error(MS_ENOMEM, "out of memory");
        else
            st = push_job(l, pi, pl, ms_str_ends_with_nocase(img, ".png"));
        if (!st) {
            l->v[l->n - 1].list = list;
            l->v[l->n - 1].line = lineno;
        }
        free(pi);
        free(pl);
    }
    fclose(f);
    free(dir);
    return st;
}

/* nnU-Net raw layout: imagesTr/CASE_0000.nii.gz paired with labelsTr/CASE.nii.gz (first channel only). */
static ms_status read_nnunet(const char *root, joblist *l)
{
    char *imdir = ms_path_join_new(root, "imagesTr"), *labdir = ms_path_join_new(root, "labelsTr");
    struct dirent **names = NULL;
    ms_status st = MS_OK;
    int n = scandir(imdir, &names, NULL, alphasort);
    if (n < 0) {
        st = ms_error(errno, "%s: %s", imdir, strerror(errno));
        goto leave;
    }
    for (int i = 0; i < n; i++) {
        const char *nm = names[i]->d_name;
        const char *ext = ms_str_ends_with_nocase(nm, ".nii.gz") ? ".nii.gz"
                          : ms_str_ends_with_nocase(nm, ".nii")  ? ".nii"
                                                                 : NULL;
        size_t len = strlen(nm);
        if (!st && ext && len > strlen(ext) + 5 && !strncmp(nm + len - strlen(ext) - 5, "_0000", 5)) {
            char lname[1024];
            snprintf(lname, sizeof lname, "%.*s%s", (int)(len - strlen(ext) - 5), nm, ext);
            char *pi = ms_path_join_new(imdir, nm), *pl = ms_path_join_new(labdir, lname);
            st = push_job(l, pi, pl, 0);
            free(pi);
            free(pl);
        }
        free(names[i]);
    }
    free(names);
leave:
    free(imdir);
    free(labdir);
    return st;
}

/* ---- label map ---------------------------------------------------------------------------------------- */

typedef struct lmap {
    int64_t *from;
    int *to;
    int n;
} lmap;

/* A whole field as a base-10 integer in lo..hi (surrounding blanks allowed): nothing else, so "1e400", "2.5" or
 * "1,liver" is not read as its leading digits. */
static int parse_int_field(const char *s, long long lo, long long hi, long long *v)
{
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    while (*end == ' ' || *end == '\t') end++;
    if (end == s || *end || errno == ERANGE || x < lo || x > hi) return 0;
    *v = x;
    return 1;
}

/* 1 when s (after blanks and a sign) starts with a digit or a point: a field meant as a number. */
static int looks_numeric(const char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    if (*s == '+' || *s == '-') s++;
    return (*s >= '0' && *s <= '9') || *s == '.';
}

/* Lines "value,class": value any integer, class an integer in 0..65535. The first line is a header when none of its
 * fields looks like a number ("value,class"); a line that does is read strictly. */
static ms_status read_label_map(const char *path, lmap *m, ms_sha256 *h)
{
    FILE *f = fopen(path, "r");
    if (!f) return ms_error(errno, "%s: %s", path, strerror(errno));
    char line[512];
    int lineno = 0, cap = 0;
    ms_status st = MS_OK;
    while (!st && fgets(line, sizeof line, f)) {
        lineno++;
        char *s = trim(line);
        if (!*s || *s == '#') continue;
        ms_sha256_update(h, s, strlen(s) + 1);
        char *comma = strchr(s, ',');
        if (lineno == 1 && !looks_numeric(s) && !(comma && looks_numeric(comma + 1))) continue;
        if (!comma) {
            st = ms_error(MS_EFORMAT, "%s:%d: expected value,class", path, lineno);
            break;
        }
        *comma = 0;
        long long a, b;
        if (!parse_int_field(s, INT64_MIN, INT64_MAX, &a)) {
            st = ms_error(MS_EFORMAT, "%s:%d: value '%s' is not a 64-bit integer", path, lineno, trim(s));
            break;
        }
        if (!parse_int_field(comma + 1, 0, 65535, &b)) {
            st = ms_error(MS_EFORMAT, "%s:%d: class '%s' is not an integer in 0..65535", path, lineno,
                          trim(comma + 1));
            break;
        }
        if (m->n == cap) {
            cap = cap ? 2 * cap : 64;
            m->from = realloc(m->from, (size_t)cap * sizeof *m->from);
            m->to = realloc(m->to, (size_t)cap * sizeof *m->to);
            if (!m->from || !m->to) {
                st = ms_error(MS_ENOMEM, "out of memory");
                break;
            }
        }
        m->from[m->n] = a;
        m->to[m->n++] = (int)b;
    }
    fclose(f);
    return st;
}

static int lmap_get(const lmap *m, int64_t v)
{
    for (int i = 0; i < m->n; i++)
        if (m->from[i] == v) return m->to[i];
    return 0;
}

/* ---- per-source work ---------------------------------------------------------------------------------- */

typedef struct outvol {
    cJSON *json;
    ms_store_rec *slices, *labels;
    uint32_t n;
    char key[96];
    uint64_t skipped_empty, nan_inf;
} outvol;

typedef struct result {
    int ready, status; /* 0 ingested, 1 skipped (already stored), 2 failed */
    char msg[512];
    char warn[512];
    char note[512]; /* an informational line (a label resampled onto its image's grid), "" when none */
    int resampled;  /* its label was resampled (--label-resample) */
    char hash[65];
    outvol *vols;
    int n_vols;
    double voxel_mb;
} result;

typedef struct ctx {
    const ms_ingest_opts *o;
    ms_store_writer *w;
    lmap map;
    int layout;        /* the store's format version: the records this run writes */
    ms_mask_rule rule; /* the store's rule for PNG masks (data/ingest_labels.h); unused with a map or threshold */
    int hinted;        /* the --image-root hint has been given */
    joblist jobs;
    result *res;
    int next, written, window;
    char **done; /* sorted progress keys present when the run started */
    size_t n_done;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    FILE *log; /* --log: one JSON line per committed source, or NULL */
    double t0;
    int shard_n; /* --shard K/N: N (0: a one-piece store); volumes then record their source's index */
    ms_value_count *largest; /* --label-largest: the values chosen (classes 1..n_largest), their voxel counts */
    int n_largest;
} ctx;

static int already_done(const ctx *cx, const char *key)
{
    return cx->n_done && bsearch(&key, cx->done, cx->n_done, sizeof *cx->done, ms_cmp_str) != NULL;
}

/* Waits at most 200 ms, so a stop request set by a signal handler is seen without anyone signalling the cv. */
static void wait_cv(ctx *cx)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_nsec += 200000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&cx->cv, &cx->mu, &t);
}

static void free_outvol(outvol *v)
{
    cJSON_Delete(v->json);
    for (uint32_t i = 0; i < v->n; i++) {
        if (v->slices) free(v->slices[i].data);
        if (v->labels) free(v->labels[i].data);
    }
    free(v->slices);
    free(v->labels);
}

static void free_result(result *r)
{
    for (int i = 0; i < r->n_vols; i++) free_outvol(&r->vols[i]);
    free(r->vols);
    r->vols = NULL;
    r->n_vols = 0;
}

static const char *axis_name(int a)
{
    return a == MS_AXIS_AXIAL   ? "axial"
        : a == MS_AXIS_CORONAL  ? "coronal"
        : a == MS_AXIS_SAGITTAL ? "sagittal"
                                : "auto";
}

int ms_ingest_pick_axis(int axis, const double sp[3], const int64_t dim[3])
{
    if (axis != MS_AXIS_AUTO) return axis;
    /* a 2D image (one voxel thick along some axis) is one slice along that axis, whatever the spacings say */
    for (int a = 2; a >= 0; a--)
        if (dim[a] == 1 && dim[(a + 1) % 3] > 1 && dim[(a + 2) % 3] > 1) return a;
    double mx = fmax(sp[0], fmax(sp[1], sp[2]));
    if (sp[2] >= mx * (1 - 1e-3)) return MS_AXIS_AXIAL;
    if (sp[1] >= mx * (1 - 1e-3)) return MS_AXIS_CORONAL;
    return MS_AXIS_SAGITTAL;
}

/* A canonical image ready to slice: 16-bit pixels (layout 1: normalised; layout 2: stored values, see enc), optional
 * uint16 label, geometry. */
typedef struct canon {
    int64_t dim[3];
    double spacing[3];
    double affine[4][4];
    uint16_t *pix, *lab;
    int lab_u16;
    int layout;      /* the store's (ms_store_writer_layout) */
    ms_encoding enc; /* layout 2: what pix holds */
    const uint16_t *view; /* layout 2, 16-bit sources: the frame in the source buffer (pix unused), strides vst */
    int64_t vst[3];
    const ms_nifti *lab_from; /* the label volume when it was resampled onto this grid (--label-resample), else NULL */
    uint64_t lab_outside;     /* then: voxels of this grid outside the label's (background) */
} canon;

/* d (H x W, row-major) = src[r * rs + x * cs]. Columns step through the volume (cs > rs), so a plain row loop reads
 * one element per cache line. With rs == 1 (axial and coronal slices) this is a transpose, done in 8 x 8 tiles: eight
 * 16-byte loads, three rounds of unpacks, eight 16-byte stores (SSE2, part of x86-64); 4x the plain loop. */
static void take_slice(const uint16_t *src, int64_t H, int64_t W, int64_t rs, int64_t cs, uint16_t *d)
{
    int64_t H8 = 0, W8 = 0;
#if defined(__SSE2__)
    if (rs == 1) {
        H8 = H & ~(int64_t)7, W8 = W & ~(int64_t)7;
        for (int64_t r0 = 0; r0 < H8; r0 += 8)
            for (int64_t x0 = 0; x0 < W8; x0 += 8) {
                __m128i a[8], b[8], c[8];
                for (int i = 0; i < 8; i++) a[i] = _mm_loadu_si128((const __m128i *)(src + r0 + (x0 + i) * cs));
                for (int i = 0; i < 4; i++) {
                    b[2 * i] = _mm_unpacklo_epi16(a[2 * i], a[2 * i + 1]);
                    b[2 * i + 1] = _mm_unpackhi_epi16(a[2 * i], a[2 * i + 1]);
                }
                for (int i = 0; i < 2; i++) {
                    c[4 * i + 0] = _mm_unpacklo_epi32(b[4 * i + 0], b[4 * i + 2]);
                    c[4 * i + 1] = _mm_unpackhi_epi32(b[4 * i + 0], b[4 * i + 2]);
                    c[4 * i + 2] = _mm_unpacklo_epi32(b[4 * i + 1], b[4 * i + 3]);
                    c[4 * i + 3] = _mm_unpackhi_epi32(b[4 * i + 1], b[4 * i + 3]);
                }
                uint16_t *o = d + r0 * W + x0;
                for (int i = 0; i < 4; i++) {
                    _mm_storeu_si128((__m128i *)(o + (2 * i) * W), _mm_unpacklo_epi64(c[i], c[i + 4]));
                    _mm_storeu_si128((__m128i *)(o + (2 * i + 1) * W), _mm_unpackhi_epi64(c[i], c[i + 4]));
                }
            }
    }
#endif
    /* the rest: everything without SSE2 or with rs != 1, else the right and bottom edges */
    for (int64_t r = 0; r < H; r++)
        for (int64_t x = r < H8 ? W8 : 0; x < W; x++) d[r * W + x] = src[r * rs + x * cs];
}

/* Number of nonzero pixels. SSE2: per-lane 16-bit counters (subtracting the all-ones compare mask), emptied before
 * they can wrap; GCC 12 does not vectorise the plain loop at -O2. */
static size_t count_nonzero(const uint16_t *p, size_t n)
{
    size_t zeros = 0, i = 0;
#if defined(__SSE2__)
    const __m128i z = _mm_setzero_si128();
    while (n - i >= 8) {
        size_t end = i + (n - i < (size_t)8 * 65535 ? (n - i) & ~(size_t)7 : (size_t)8 * 65535);
        __m128i acc = z;
        for (; i < end; i += 8)
            acc = _mm_sub_epi16(acc, _mm_cmpeq_epi16(_mm_loadu_si128((const __m128i *)(p + i)), z));
        uint16_t lanes[8];
        _mm_storeu_si128((__m128i *)lanes, acc);
        for (int k = 0; k < 8; k++) zeros += lanes[k];
    }
#endif
    for (; i < n; i++) zeros += p[i] == 0;
    return n - zeros;
}

/* Pixels at or above thr, as the type's values (layout 2: "above background" in stored units). */
static size_t count_at_least(const uint16_t *p, size_t n, int type, int32_t thr)
{
    size_t c = 0;
    if (type == MS_STORED_I16) {
        const int16_t *q = (const int16_t *)p;
        for (size_t i = 0; i < n; i++) c += q[i] >= thr;
    } else {
        for (size_t i = 0; i < n; i++) c += p[i] >= thr;
    }
    return c;
}

/* Cuts slices along `axis`, drops near-empty ones (unless they carry a label), compresses. rows = the lower remaining
 * canonical axis, columns = the higher one (numpy's vol[:, :, k] for axial). */
static ms_status cut(const ms_ingest_opts *o, ZSTD_CCtx *cctx, const canon *c, int axis, outvol *ov)
{
    int ra = axis == 0 ? 1 : 0, ca = axis == 2 ? 1 : 2;
    int64_t H = c->dim[ra], W = c->dim[ca], K = c->dim[axis];
    int64_t st3[3] = {1, c->dim[0], c->dim[0] * c->dim[1]};
    int64_t rs = st3[ra], cs = st3[ca], ks = st3[axis];
    size_t npx = (size_t)(H * W);
    uint16_t *sl = malloc(npx * 2), *lb = c->lab ? malloc(npx * 2) : NULL;
    uint8_t *lb8 = c->lab ? malloc(npx) : NULL;
    ms_status st = MS_OK;
    ov->slices = calloc((size_t)K, sizeof *ov->slices);
    ov->labels = c->lab ? calloc((size_t)K, sizeof *ov->labels) : NULL;
    if (!sl || !ov->slices || (c->lab && (!lb || !lb8 || !ov->labels))) {
        st = ms_error(MS_ENOMEM, "out of memory");
        goto leave;
    }
    float sp[2] = {(float)c->spacing[ra], (float)c->spacing[ca]};
    int l2 = c->layout == 2, dtype = l2 ? c->enc.type : MS_REC_U16;
    int flags = (o->shuffle > 0 || (o->shuffle < 0 && l2) ? MS_REC_SHUFFLED : 0) | (l2 ? MS_REC_STORED : 0);
    int32_t thr = l2 ? ms_encoding_threshold(&c->enc) : 1;
    for (int64_t k = 0; k < K; k++) {
        if (c->view) /* straight from the inflated file: one pass instead of a canonical copy, then the cut */
            take_slice(c->view + k * c->vst[axis], H, W, c->vst[ra], c->vst[ca], sl);
        else
            take_slice(c->pix + k * ks, H, W, rs, cs, sl);
        if (c->lab) take_slice(c->lab + k * ks, H, W, rs, cs, lb);
        size_t fg = l2 ? count_at_least(sl, npx, dtype, thr) : count_nonzero(sl, npx);
        size_t lfg = c->lab ? count_nonzero(lb, npx) : 0;
        if (!o->keep_empty && lfg == 0 && (double)fg < o->min_foreground * (double)npx) {
            ov->skipped_empty++;
            continue;
        }
        uint32_t i = ov->n;
        st = ms_store_encode(cctx, o->zstd_level, flags, dtype, sl, (uint32_t)H, (uint32_t)W, sp, (uint32_t)k,
                             &ov->slices[i]);
        if (st) goto leave;
        ov->n++; /* counted before the label so free_outvol frees this slice if the label fails */
        if (c->lab) {
            const void *lp = lb;
            if (!c->lab_u16) {
                for (size_t p = 0; p < npx; p++) lb8[p] = (uint8_t)lb[p];
                lp = lb8;
            }
            st = ms_store_encode(cctx, o->zstd_level, 0, c->lab_u16 ? MS_REC_U16 : MS_REC_U8, lp, (uint32_t)H,
                                 (uint32_t)W, sp, (uint32_t)k, &ov->labels[i]);
            if (st) goto leave;
        }
    }
leave:
    free(sl);
    free(lb);
    free(lb8);
    return st;
}

static cJSON *num_array(const double *v, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

/* Label volume (canonical float) → uint16 classes (map / threshold / as is) and its sorted distinct values. */
static ms_status make_label(const ctx *cx, const char *path, const float *lf, size_t n, uint16_t *out, cJSON **values,
                            int *u16)
{
    const ms_ingest_opts *o = cx->o;
    static const int MAXV = 65536;
    uint8_t *seen = calloc(MAXV, 1);
    if (!seen) return ms_error(MS_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        double v = lf[i];
        int c;
        if (o->has_threshold)
            c = v > o->label_threshold;
        else {
            double r = nearbyint(v);
            if (fabs(v - r) > 1e-3) {
                free(seen);
                return ms_error(MS_EFORMAT, "%s: label value %g is not an integer", path, v);
            }
            if (cx->map.n || o->label_largest)
                c = lmap_get(&cx->map, (int64_t)r);
            else if (r < 0 || r > 65535) {
                free(seen);
                return ms_error(MS_EFORMAT, "%s: label value %g is not in 0..65535", path, v);
            } else
                c = (int)r;
        }
        out[i] = (uint16_t)c;
        seen[c] = 1;
    }
    *values = cJSON_CreateArray();
    int nv = 0, mx = 0;
    for (int v = 0; v < MAXV; v++)
        if (seen[v]) {
            cJSON_AddItemToArray(*values, cJSON_CreateNumber(v));
            nv++;
            mx = v;
        }
    free(seen);
    if (nv > 256) return ms_error(MS_EUNSUPPORTED, "%s: %d distinct label values (at most 256)", path, nv);
    *u16 = mx > 255;
    return MS_OK;
}

/* SHA-256 of the image file (its bytes when the caller has read them already: file != NULL), the .img of a pair,
 * a separator and the label file. */
static ms_status hash_source(const job *j, const uint8_t *file, size_t file_n, char out[65])
{
    ms_sha256 h;
    ms_sha256_init(&h);
    if (file)
        ms_sha256_update(&h, file, file_n);
    else
        MS_TRY(ms_sha256_file(&h, j->image));
    if (!j->png && (ms_str_ends_with_nocase(j->image, ".hdr") || ms_str_ends_with_nocase(j->image, ".hdr.gz"))) {
        char *img = strdup(j->image);
        size_t n = strlen(img);
        char *dot = ms_str_ends_with_nocase(img, ".gz") ? img + n - 7 : img + n - 4;
        memcpy(dot + 1, dot[1] == 'H' ? "IMG" : "img", 3);
        ms_status st = ms_sha256_file(&h, img);
        free(img);
        MS_TRY(st);
    }
    uint8_t sep = 0;
    ms_sha256_update(&h, &sep, 1);
    if (j->label) MS_TRY(ms_sha256_file(&h, j->label));
    uint8_t d[32];
    ms_sha256_final(&h, d);
    ms_hex(d, 32, out);
    return MS_OK;
}

/* ---- PNG (finetune-SAM 2D pairs) ---- */

/* A PNG as gray floats at its bit depth (data/png.h: colour converted to gray, 16-bit values kept as they are —
 * a mask's values are class ids, and the image's intensity normalisation needs no scale), transposed to the
 * canonical order: the PNG's pixel (row r, column x) at x·h + r, since the slicer reads canonical x fastest. */
static ms_status read_png(const char *path, float **out, int *h, int *w)
{
    ms_png p;
    MS_TRY(ms_png_read(path, MS_PNG_GRAY, &p));
    const size_t H = (size_t)p.h, W = (size_t)p.w;
    float *img = malloc(H * W * sizeof *img);
    if (!img) {
        ms_png_free(&p);
        return ms_error(MS_ENOMEM, "%s: out of memory", path);
    }
    for (size_t r = 0; r < H; r++)
        for (size_t x = 0; x < W; x++) img[x * H + r] = (float)p.px[r * W + x];
    *h = p.h;
    *w = p.w;
    *out = img;
    ms_png_free(&p);
    return MS_OK;
}

/* A PNG image and its mask (when the job has one; same size). In a store whose masks are binary every nonzero
 * value becomes 1; otherwise (class ids, --label-map, --label-threshold) the values stay as read. On failure the
 * caller frees whatever *img and *mask hold. */
static ms_status read_png_pair(const ctx *cx, const job *j, float **img, float **mask, int *h, int *w)
{
    int lh, lw;
    MS_TRY(read_png(j->image, img, h, w));
    if (!j->label) return MS_OK;
    MS_TRY(read_png(j->label, mask, &lh, &lw));
    MS_FAIL_IF(lh != *h || lw != *w, MS_ESHAPE, "%s: mask is %dx%d but %s is %dx%d", j->label, lh, lw, j->image, *h,
               *w);
    float *lf = *mask;
    const size_t n = (size_t)*h * *w;
    if (cx->rule == MS_MASKS_BINARY && !cx->o->label_map && !cx->o->has_threshold && !cx->o->label_largest)
        for (size_t i = 0; i < n; i++) lf[i] = lf[i] ? 1.f : 0.f;
    return MS_OK;
}

/* Per-worker buffers kept across sources: volumes of one archive have similar sizes, and fresh multi-megabyte
 * mallocs cost a page fault per 4 KiB every time. */
typedef struct scratch {
    float *vf;
    uint16_t *pix;
    uint8_t *file; /* the current .nii.gz, read once for both the hash and the parse */
    size_t vf_cap, pix_cap, file_cap;
    ms_nifti_buf inflated; /* its inflated bytes (the image's voxels point here) */
} scratch;

static void *reserve(void **p, size_t *cap, size_t need)
{
    if (need > *cap) {
        free(*p);
        *p = malloc(need);
        *cap = *p ? need : 0;
    }
    return *p;
}

/* The image (from memory when sc is given: sc->file holds file_n bytes) and its label volume, which must share its
 * grid and affine unless resample (--label-resample): then *resampled says whether it must be resampled onto the
 * image's grid. c gets the canonical dims, spacing and affine, r the header warnings. */
static ms_status open_nifti_pair(const job *j, scratch *sc, size_t file_n, int resample, ms_nifti *im, ms_nifti *lab,
                                 canon *c, result *r, int *resampled)
{
    static const char hint[] = "; --label-resample resamples it onto the image's grid (nearest neighbour)";
    *resampled = 0;
    MS_TRY(sc ? ms_nifti_open_mem(j->image, sc->file, file_n, &sc->inflated, im) : ms_nifti_open(j->image, im));
    if (im->warn[0]) snprintf(r->warn, sizeof r->warn, "%s: warning: %s", j->image, im->warn);
    if (im->hdr.version == 0)
        snprintf(r->warn, sizeof r->warn, "%s: warning: ANALYZE 7.5 header, orientation unreliable", j->image);
    if (j->label) {
        MS_TRY(ms_nifti_open(j->label, lab));
        int dims = lab->sdim[0] == im->sdim[0] && lab->sdim[1] == im->sdim[1] && lab->sdim[2] == im->sdim[2];
        if (lab->n_frames != 1 || (!dims && !resample)) /* a label volume has one frame, resampled or not */
            return ms_error(MS_ESHAPE, "%s: label grid %lldx%lldx%lld(x%lld) does not match %s (%lldx%lldx%lld)%s",
                            j->label, (long long)lab->sdim[0], (long long)lab->sdim[1], (long long)lab->sdim[2],
                            (long long)lab->n_frames, j->image, (long long)im->sdim[0], (long long)im->sdim[1],
                            (long long)im->sdim[2], lab->n_frames == 1 ? hint : "");
        int same = dims && ms_affine_close(lab->affine, im->affine,
                                           1e-3 * fmax(1.0, fmax(im->cspacing[0], im->cspacing[2])));
        if (!same && !resample)
            return ms_error(MS_ESHAPE, "%s: label affine does not match %s%s", j->label, j->image, hint);
        if (!same && (lab->geom == MS_GEOM_PIXDIM || im->geom == MS_GEOM_PIXDIM)) /* no world to meet in */
            return ms_error(MS_ESHAPE, "%s: label grid differs from %s and %s has no usable sform or qform: cannot "
                            "resample", j->label, j->image, lab->geom == MS_GEOM_PIXDIM ? j->label : j->image);
        *resampled = !same;
    }
    for (int i = 0; i < 3; i++) {
        c->dim[i] = im->cdim[i];
        c->spacing[i] = im->cspacing[i];
    }
    memcpy(c->affine, im->caffine, sizeof c->affine);
    return MS_OK;
}

/* The label volume of a NIfTI pair as the store keeps it, canonical on the image's grid c (lf: c's voxels): read
 * as it is, or resampled onto c when open_nifti_pair said so (c->lab_from, c->lab_outside set then). Everything
 * else the ingest does with labels (class maps, thresholds, --label-largest) comes after this. */
static ms_status nifti_label(const job *j, const ms_nifti *lab, int resampled, canon *c, float *lf)
{
    uint64_t bad = 0;
    if (!resampled) {
        MS_TRY(ms_nifti_frame(lab, 0, lf, &bad));
    } else {
        size_t n = (size_t)(lab->cdim[0] * lab->cdim[1] * lab->cdim[2]);
        float *own = malloc(n * sizeof *own);
        MS_FAIL_IF(!own, MS_ENOMEM, "%s: out of memory", j->label);
        ms_status st = ms_nifti_frame(lab, 0, own, &bad);
        if (!st && !bad && ms_label_resample_nn(own, lab->cdim, lab->caffine, lf, c->dim, c->affine, &c->lab_outside))
            st = ms_error(MS_EINVAL, "%s: label affine is singular", j->label);
        free(own);
        MS_TRY(st);
        c->lab_from = lab;
    }
    if (bad) /* they would read as class 0 */
        return ms_error(MS_EFORMAT, "%s: %llu NaN/Inf voxels in a label volume (labels are integers)", j->label,
                        (unsigned long long)bad);
    return MS_OK;
}

/* Frame f's intensities → c->pix. Layout 2 (data/encode.h): the stored values and c->enc; integer images of at most
 * 16 bits are gathered to canonical order as they are, others encoded from floats. Layout 1:
 * the normalised pixels; 8/16-bit integer images fit on the stored values, then take one table lookup per voxel on
 * the way to canonical order: the same pixels as the float path, without its float volume. *bad counts NaN/Inf
 * voxels (zeroed). it gets the window in original units. */
static ms_status frame_pixels(const ms_ingest_opts *o, const job *j, const ms_nifti *im, int64_t f, size_t nv,
                              float *vf, canon *c, ms_intensity *it, uint64_t *bad)
{
    const void *raw;
    int dt = j->png ? 0 : ms_nifti_frame_int(im, f, &raw);
    *bad = 0;
    c->view = NULL;
    if (dt) {
        ms_int_type t = dt == DT_UINT8    ? MS_INT_U8
            : dt == DT_INT8    ? MS_INT_I8
            : dt == DT_UINT16  ? MS_INT_U16
                               : MS_INT_I16;
        if (c->layout == 2) {
            MS_TRY(ms_encode_fit_int(raw, t, nv, o->norm, o->p_lo, o->p_hi, &c->enc));
            *it = c->enc.win;
            if (ms_nifti_frame_view16(im, f, &c->view, c->vst)) return MS_OK;
            return ms_nifti_frame_raw16(im, f, c->pix);
        }
        uint16_t *lut = NULL;
        MS_TRY(ms_intensity_fit_int(raw, t, nv, o->norm, o->p_lo, o->p_hi, it));
        MS_TRY(ms_intensity_lut(it, &lut));
        ms_status st = ms_nifti_frame_lut(im, f, lut, it->int_lo, it->int_hi, c->pix);
        free(lut);
        return st;
    }
    if (!j->png) MS_TRY(ms_nifti_frame(im, f, vf, bad));
    MS_FAIL_IF(*bad && o->strict, MS_EFORMAT, "%s: %llu NaN/Inf voxels (--strict)", j->image, (unsigned long long)*bad);
    if (c->layout == 2) {
        MS_TRY(ms_encode_floats(vf, nv, o->norm, o->p_lo, o->p_hi, c->pix, &c->enc));
        ms_intensity w = c->enc.win; /* to original units (slope > 0) */
        it->offset = c->enc.inter + c->enc.slope * w.offset;
        it->scale = c->enc.slope * w.scale;
        it->mean = o->norm == MS_NORM_ZSCORE ? c->enc.inter + c->enc.slope * w.mean : 0;
        it->std = o->norm == MS_NORM_ZSCORE ? c->enc.slope * w.std : 1;
        return MS_OK;
    }
    MS_TRY(ms_intensity_fit(vf, nv, o->norm, o->p_lo, o->p_hi, it));
    ms_intensity_apply(vf, nv, it, c->pix);
    return MS_OK;
}

/* Layout 2's additions to the volume's "intensity" object (docs/FORMATS.md). */
static void encoding_json(cJSON *in, const ms_encoding *e)
{
    cJSON_AddStringToObject(in, "stored", e->type == MS_STORED_I16 ? "int16" : "uint16");
    cJSON_AddNumberToObject(in, "slope", e->slope);
    cJSON_AddNumberToObject(in, "inter", e->inter);
    cJSON_AddNumberToObject(in, "max_error", e->max_error);
    cJSON_AddItemToObject(in, "window", num_array((double[2]){e->win.offset, e->win.scale}, 2));
    cJSON *st = cJSON_AddObjectToObject(in, "stats");
    cJSON_AddNumberToObject(st, "min", e->min);
    cJSON_AddNumberToObject(st, "max", e->max);
    cJSON_AddNumberToObject(st, "n_nonzero", (double)e->n_nonzero);
    cJSON_AddNumberToObject(st, "mean", e->mean);
    cJSON_AddNumberToObject(st, "std", e->std);
    cJSON_AddItemToObject(st, "percentiles_at", num_array(ms_enc_pct, MS_ENC_NPCT));
    cJSON_AddItemToObject(st, "percentiles", num_array(e->pct, MS_ENC_NPCT));
}

/* Which affine of a NIfTI file was used (MS_GEOM_*), as the volume record names it. */
static const char *geom_name(int geom)
{
    return geom == MS_GEOM_SFORM ? "sform" : geom == MS_GEOM_QFORM ? "qform" : "pixdim";
}

/* The volume record of frame f (docs/FORMATS.md): geometry, source, intensity window, labels (lvalues is taken). */
static cJSON *volume_json(const ms_ingest_opts *o, const job *j, const ms_nifti *im, const canon *c, int axis,
                          int64_t f, int64_t nf, const ms_intensity *it, uint64_t bad, const outvol *ov,
                          cJSON *lvalues, const char *hash)
{
    int ra = axis == 0 ? 1 : 0, ca = axis == 2 ? 1 : 2;
    cJSON *v = cJSON_CreateObject();
    cJSON_AddNumberToObject(v, "height", (double)c->dim[ra]);
    cJSON_AddNumberToObject(v, "width", (double)c->dim[ca]);
    double sp[3] = {c->spacing[ra], c->spacing[ca], c->spacing[axis]};
    cJSON_AddItemToObject(v, "spacing", num_array(sp, 3));
    cJSON_AddStringToObject(v, "axis", axis_name(axis));
    cJSON_AddStringToObject(v, "kind", j->png ? "png" : "nifti");
    cJSON_AddItemToObject(v, "shape", num_array((double[3]){(double)c->dim[0], (double)c->dim[1], (double)c->dim[2]}, 3));
    cJSON_AddItemToObject(v, "affine", num_array(&c->affine[0][0], 16));
    if (!j->png) {
        cJSON_AddStringToObject(v, "geometry", geom_name(im->geom));
        cJSON_AddNumberToObject(v, "nifti_version", im->hdr.version);
        cJSON_AddStringToObject(v, "source_dtype", ms_nifti_type_name(im->hdr.datatype));
    }
    cJSON_AddNumberToObject(v, "frame", (double)f);
    cJSON_AddNumberToObject(v, "n_frames", (double)nf);
    cJSON *in = cJSON_AddObjectToObject(v, "intensity");
    cJSON_AddStringToObject(in, "norm", ms_norm_name(o->norm));
    cJSON_AddNumberToObject(in, "offset", it->offset);
    cJSON_AddNumberToObject(in, "scale", it->scale);
    cJSON_AddNumberToObject(in, "mean", it->mean);
    cJSON_AddNumberToObject(in, "std", it->std);
    if (c->layout == 2) encoding_json(in, &c->enc);
    cJSON_AddNumberToObject(v, "nan_inf", (double)bad);
    cJSON_AddNumberToObject(v, "skipped_empty", (double)ov->skipped_empty);
    if (c->lab) {
        cJSON *lo = cJSON_AddObjectToObject(v, "labels");
        cJSON_AddStringToObject(lo, "dtype", c->lab_u16 ? "uint16" : "uint8");
        cJSON_AddItemToObject(lo, "values", lvalues);
        if (c->lab_from) { /* --label-resample: the label's own grid (stored shape, the affine used) */
            const ms_nifti *l = c->lab_from;
            cJSON *rs = cJSON_AddObjectToObject(lo, "resampled");
            cJSON_AddStringToObject(rs, "method", "nearest");
            cJSON_AddItemToObject(rs, "shape", num_array((double[3]){(double)l->sdim[0], (double)l->sdim[1],
                                                                    (double)l->sdim[2]}, 3));
            cJSON_AddItemToObject(rs, "affine", num_array(&l->affine[0][0], 16));
            cJSON_AddStringToObject(rs, "geometry", geom_name(l->geom));
            cJSON_AddNumberToObject(rs, "outside", (double)c->lab_outside);
        }
    } else {
        cJSON_Delete(lvalues);
    }
    cJSON_AddStringToObject(v, "source_hash", hash);
    if (o->keep_paths) {
        cJSON_AddStringToObject(v, "path", j->image);
        if (j->label) cJSON_AddStringToObject(v, "label_path", j->label);
    }
    return v;
}

/* One source → result. Every failure lands in r->msg as "path: reason". */
static void work(ctx *cx, ZSTD_CCtx *cctx, scratch *sc, const job *j, result *r)
{
    const ms_ingest_opts *o = cx->o;
    ms_nifti im = {0}, lab = {0};
    float *vf = NULL, *lf = NULL;
    int vf_own = 1;
    canon c = {.layout = cx->layout};
    int resampled = 0;
    ms_status st = MS_OK;
    /* single-file .nii.gz: read once, hashed and inflated from memory (uncompressed files, .hdr/.img pairs and
     * .nii.gz over 1 GiB are streamed: no second copy of a large file in memory) */
    int in_mem = !j->png && ms_nifti_in_memory(j->image);
    size_t file_n = 0;
    if (in_mem && (st = ms_nifti_read_file(j->image, &sc->file, &sc->file_cap, &file_n))) goto leave;
    if (j->dicom) { /* a file dcm2niix wrote: the series' hash, already looked up (work_dicom) */
        memcpy(r->hash, j->hash, sizeof r->hash);
    } else {
        if ((st = hash_source(j, in_mem ? sc->file : NULL, file_n, r->hash))) goto leave;
        if (already_done(cx, r->hash)) {
            r->status = 1;
            return;
        }
    }
    if (j->png) {
        int h, w;
        if ((st = read_png_pair(cx, j, &vf, &lf, &h, &w))) goto leave;
        /* one slice: canonical axes (rows, cols, 1) so that axial slicing returns the PNG as it is */
        c.dim[0] = h;
        c.dim[1] = w;
        c.dim[2] = 1;
        c.spacing[0] = c.spacing[1] = c.spacing[2] = 1;
    } else if ((st = open_nifti_pair(j, in_mem ? sc : NULL, file_n, cx->o->label_resample, &im, &lab, &c, r,
                                     &resampled))) {
        goto leave;
    }
    size_t nv = (size_t)(c.dim[0] * c.dim[1] * c.dim[2]);
    const void *raw;
    /* integer images need no float volume (see the frame loop); PNGs have theirs already */
    if (!vf && !(!j->png && ms_nifti_frame_int(&im, 0, &raw))) {
        vf = reserve((void **)&sc->vf, &sc->vf_cap, nv * sizeof *vf);
        vf_own = 0;
        if (!vf) {
            st = ms_error(MS_ENOMEM, "%s: out of memory", j->image);
            goto leave;
        }
    }
    c.pix = reserve((void **)&sc->pix, &sc->pix_cap, nv * 2);
    if (!c.pix) {
        st = ms_error(MS_ENOMEM, "%s: out of memory", j->image);
        goto leave;
    }
    cJSON *lvalues = NULL;
    if (j->label) {
        if (!lf && !(lf = malloc(nv * sizeof *lf))) {
            st = ms_error(MS_ENOMEM, "out of memory");
            goto leave;
        }
        if (!j->png && (st = nifti_label(j, &lab, resampled, &c, lf))) goto leave;
        if (c.lab_from) {
            r->resampled = 1;
            snprintf(r->note, sizeof r->note,
                     "%s: resampled onto the grid of %s by nearest neighbour (from %lldx%lldx%lld, %s; %llu voxels "
                     "outside it are background)",
                     j->label, j->image, (long long)lab.sdim[0], (long long)lab.sdim[1], (long long)lab.sdim[2],
                     geom_name(lab.geom),
                     (unsigned long long)c.lab_outside);
        }
        if (!(c.lab = malloc(nv * 2))) {
            st = ms_error(MS_ENOMEM, "out of memory");
            goto leave;
        }
        if ((st = make_label(cx, j->label, lf, nv, c.lab, &lvalues, &c.lab_u16))) {
            cJSON_Delete(lvalues);
            goto leave;
        }
    }
    int axis = ms_ingest_pick_axis(o->axis, c.spacing, c.dim);
    int64_t nf = j->png ? 1 : im.n_frames, f0 = 0, f1 = nf;
    if (o->frame >= 0) {
        if (o->frame >= nf) {
            cJSON_Delete(lvalues);
            st = ms_error(MS_EINVAL, "%s: --frame %d but the image has %lld frames", j->image, o->frame, (long long)nf);
            goto leave;
        }
        f0 = o->frame, f1 = o->frame + 1;
    }
    r->vols = calloc((size_t)(f1 - f0), sizeof *r->vols);
    if (!r->vols) {
        cJSON_Delete(lvalues);
        st = ms_error(MS_ENOMEM, "out of memory");
        goto leave;
    }
    for (int64_t f = f0; f < f1; f++) {
        outvol *ov = &r->vols[r->n_vols++];
        uint64_t bad = 0;
        ms_intensity it;
        if ((st = frame_pixels(o, j, &im, f, nv, vf, &c, &it, &bad))) break;
        ov->nan_inf = bad;
        if ((st = cut(o, cctx, &c, axis, ov))) break;
        /* the last frame takes the label values, the others a copy */
        cJSON *lv = f + 1 < f1 ? cJSON_Duplicate(lvalues, 1) : lvalues;
        if (f + 1 == f1) lvalues = NULL;
        ov->json = volume_json(o, j, &im, &c, axis, f, nf, &it, bad, ov, lv, r->hash);
        snprintf(ov->key, sizeof ov->key, "%s#%lld", r->hash, (long long)f);
        r->voxel_mb += (double)nv * (j->png ? 1 : im.hdr.nbyper) / 1e6;
    }
    cJSON_Delete(lvalues);
leave:
    if (st) {
        r->status = 2;
        const char *m = ms_errmsg();
        /* messages from the header checks carry the path already; the others get it here */
        if (strncmp(m, j->image, strlen(j->image)) && (!j->label || strncmp(m, j->label, strlen(j->label))))
            snprintf(r->msg, sizeof r->msg, "%s: %s", j->image, m);
        else
            snprintf(r->msg, sizeof r->msg, "%s", m);
        free_result(r);
    }
    ms_nifti_close(&im);
    ms_nifti_close(&lab);
    if (vf_own) free(vf);
    free(lf);
    free(c.lab);
}

/* "<tmp>/out/vol.nii: reason" (a message about a file dcm2niix wrote) as "<series>: vol.nii: reason": no temporary
 * path in the messages. */
static void name_series(char *s, size_t cap, const char *nii, const char *series)
{
    size_t n = strlen(nii);
    if (!s[0] || strncmp(s, nii, n)) return;
    char t[1024];
    int m = snprintf(t, sizeof t, "%s: %s%s", series, ms_path_base(nii), s + n);
    if (m < 0) return;
    size_t len = (size_t)m < sizeof t ? (size_t)m : sizeof t - 1;
    if (len >= cap) len = cap - 1;
    memcpy(s, t, len);
    s[len] = 0;
}

/* A DICOM series (data/dicom.h): its files' hash first, so a stored series is skipped without converting it; then
 * dcm2niix into a private temporary folder and every NIfTI file it wrote through work() as volumes of this one
 * source (kind "dicom", keys "<hash>#<file>.<frame>", --keep-paths records the series' folder); the temporary
 * folder is removed whatever happens. */
static void work_dicom(ctx *cx, ZSTD_CCtx *cctx, scratch *sc, const job *j, result *r)
{
    ms_dicom_conv cv = {0};
    ms_status st = ms_dicom_series_hash((const char *const *)j->files, j->n_files, r->hash);
    if (!st && already_done(cx, r->hash)) {
        r->status = 1;
        return;
    }
    if (!st) st = ms_dicom_convert(j->image, (const char *const *)j->files, j->n_files, cx->o->stop, &cv);
    if (st) snprintf(r->msg, sizeof r->msg, "%s", ms_errmsg());
    for (int k = 0; k < cv.n && !st; k++) {
        job sub = {.image = cv.nii[k], .dicom = 2};
        memcpy(sub.hash, r->hash, sizeof sub.hash);
        result sr = {0};
        work(cx, cctx, sc, &sub, &sr);
        name_series(sr.msg, sizeof sr.msg, cv.nii[k], j->image);
        name_series(sr.warn, sizeof sr.warn, cv.nii[k], j->image);
        if (sr.warn[0]) snprintf(r->warn, sizeof r->warn, "%s", sr.warn);
        if (sr.status == 2) {
            snprintf(r->msg, sizeof r->msg, "%s", sr.msg);
            st = MS_EFORMAT;
            break;
        }
        outvol *v = realloc(r->vols, (size_t)(r->n_vols + sr.n_vols) * sizeof *v + 1);
        if (!v) {
            free_result(&sr);
            snprintf(r->msg, sizeof r->msg, "%s: out of memory", j->image);
            st = MS_ENOMEM;
            break;
        }
        r->vols = v;
        for (int i = 0; i < sr.n_vols; i++) {
            outvol *ov = &r->vols[r->n_vols++];
            *ov = sr.vols[i];
            cJSON_ReplaceItemInObject(ov->json, "kind", cJSON_CreateString("dicom"));
            if (cJSON_GetObjectItem(ov->json, "path"))
                cJSON_ReplaceItemInObject(ov->json, "path", cJSON_CreateString(j->image));
            const char *frame = strchr(ov->key, '#');
            char key[sizeof ov->key];
            snprintf(key, sizeof key, "%s#%d.%s", r->hash, k, frame ? frame + 1 : "0");
            memcpy(ov->key, key, sizeof key);
        }
        free(sr.vols);
        r->voxel_mb += sr.voxel_mb;
    }
    ms_status rm = ms_dicom_conv_free(&cv);
    if (!st && rm) { /* the volumes are fine, but a temporary folder is left behind: say so */
        snprintf(r->warn, sizeof r->warn, "%s: warning: %s", j->image, ms_errmsg());
    }
    if (st) {
        r->status = 2;
        free_result(r);
    }
}

static void *worker(void *arg)
{
    ctx *cx = arg;
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    scratch sc = {0};
    for (;;) {
        pthread_mutex_lock(&cx->mu);
        while (cx->next < cx->jobs.n && cx->next >= cx->written + cx->window && !(cx->o->stop && *cx->o->stop))
            wait_cv(cx);
        if (cx->next >= cx->jobs.n || (cx->o->stop && *cx->o->stop)) {
            pthread_mutex_unlock(&cx->mu);
            break;
        }
        int i = cx->next++;
        pthread_mutex_unlock(&cx->mu);
        result r = {0};
        if (!cctx) {
            r.status = 2;
            snprintf(r.msg, sizeof r.msg, "%s: out of memory", cx->jobs.v[i].image);
        } else if (cx->jobs.v[i].dicom)
            work_dicom(cx, cctx, &sc, &cx->jobs.v[i], &r);
        else
            work(cx, cctx, &sc, &cx->jobs.v[i], &r);
        pthread_mutex_lock(&cx->mu);
        r.ready = 1;
        cx->res[i] = r;
        pthread_cond_broadcast(&cx->cv);
        pthread_mutex_unlock(&cx->mu);
    }
    ZSTD_freeCCtx(cctx);
    free(sc.vf);
    free(sc.pix);
    free(sc.file);
    free(sc.inflated.p);
    return NULL;
}

/* layout: the store's (an existing one's, else the one asked for): the informative "pixels" string says what its
 * records hold, and a layout-1 store keeps the string it was created with (params are compared on every rerun). */
static char *params_json(const ms_ingest_opts *o, const char *map_hash, int layout, const ctx *cx)
{
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "axis", axis_name(o->axis));
    cJSON_AddStringToObject(p, "norm", ms_norm_name(o->norm));
    if (o->norm == MS_NORM_PERCENTILE)
        cJSON_AddItemToObject(p, "percentiles", num_array((double[2]){o->p_lo, o->p_hi}, 2));
    cJSON_AddNumberToObject(p, "min_foreground", o->keep_empty ? 0 : o->min_foreground);
    cJSON_AddNumberToObject(p, "frame", o->frame);
    if (map_hash) cJSON_AddStringToObject(p, "label_map_sha256", map_hash);
    if (o->has_threshold) cJSON_AddNumberToObject(p, "label_threshold", o->label_threshold);
    if (o->label_largest) { /* the values, not their counts: a rerun that adds sources keeps the store's classes */
        cJSON *l = cJSON_AddObjectToObject(p, "label_largest");
        cJSON_AddNumberToObject(l, "k", o->label_largest);
        cJSON *v = cJSON_AddArrayToObject(l, "values");
        for (int i = 0; i < cx->n_largest; i++)
            cJSON_AddItemToArray(v, cJSON_CreateNumber((double)cx->largest[i].value));
    }
    cJSON_AddStringToObject(p, "pixels", layout == 1 ? "uint16 = round(65535 * clip((v - offset) / scale, 0, 1))"
                                     : "stored values; read as round(65535 * clip((s - offset) / scale, 0, 1))");
    cJSON_AddStringToObject(p, "orientation", "RAS+ by permutation/flip; slice rows = lower remaining axis");
    char *s = cJSON_PrintUnformatted(p);
    cJSON_Delete(p);
    return s;
}

/* The --log line of source i, committed in commit_s seconds: what a long run's time series needs (throughput, map
 * growth, stalls), flushed so that a killed run keeps every line of what it committed. */
static ms_status log_commit(ctx *cx, int i, const result *r, uint64_t volumes, uint64_t slices, double commit_s)
{
    const job *j = &cx->jobs.v[i];
    struct stat sb;
    long long src = 0, mdb = 0;
    if (!stat(j->image, &sb)) src += sb.st_size;
    if (j->label && !stat(j->label, &sb)) src += sb.st_size;
    char path[4200];
    snprintf(path, sizeof path, "%s/data.mdb", cx->o->out);
    if (!stat(path, &sb) || !stat(cx->o->out, &sb)) mdb = sb.st_size;
    fprintf(cx->log,
            "{\"t\":%.3f,\"source\":%d,\"volumes\":%llu,\"slices\":%llu,\"source_bytes\":%lld,"
            "\"voxel_bytes\":%.0f,\"commit_ms\":%.3f,\"mdb_bytes\":%lld%s}\n",
            ms_now_s() - cx->t0, j->index, (unsigned long long)volumes, (unsigned long long)slices, src, r->voxel_mb * 1e6,
            commit_s * 1e3, mdb, r->resampled ? ",\"label_resampled\":true" : "");
    if (fflush(cx->log) || ferror(cx->log))
        return ms_error(MS_EIO, "%s: cannot write: %s", cx->o->log_path, strerror(errno));
    return MS_OK;
}

/* Source i's result into the store, in source order: its volumes (a volume already stored counts as skipped), or
 * the warning / failure it carries. */
static ms_status commit_result(ctx *cx, int i, result *r, ms_ingest_summary *sum)
{
    const ms_ingest_opts *o = cx->o;
    ms_status st = MS_OK;
    job *j = &cx->jobs.v[i];
    memcpy(j->hash, r->hash, sizeof j->hash);
    j->status = r->status;
    if (r->warn[0]) fprintf(stderr, "%s\n", r->warn);
    if (r->note[0] && r->status == 0) fprintf(stderr, "%s\n", r->note);
    if (r->status == 1) {
        sum->skipped++;
        return MS_OK;
    }
    if (r->status == 2) {
        sum->failed++;
        fprintf(stderr, "%s\n", r->msg);
        struct stat sb;
        if (j->list && !o->image_root && !cx->hinted && (stat(j->image, &sb) || (j->label && stat(j->label, &sb)))) {
            cx->hinted = 1; /* the likely cause, once */
            fprintf(stderr,
                    "%s:%d: warning: %s not found (paths are relative to the list's folder; finetune-SAM's lists are "
                    "relative to its -img_folder: give it as --image-root DIR)\n",
                    j->list == 1 ? o->labels : o->val_labels, j->line, stat(j->image, &sb) ? j->image : j->label);
        }
        return MS_OK;
    }
    int dup_all = 1;
    uint64_t vol0 = sum->volumes, sl0 = sum->slices;
    double tc = ms_now_s();
    for (int v = 0; v < r->n_vols && !st; v++) {
        outvol *ov = &r->vols[v];
        uint32_t id;
        int dup;
        /* a shard's volumes carry their source's place in the full list: the set orders them by it */
        if (cx->shard_n && !cJSON_AddNumberToObject(ov->json, "source_index", j->index)) {
            st = ms_error(MS_ENOMEM, "out of memory");
            break;
        }
        st = ms_store_writer_add(cx->w, ov->json, ov->slices, ov->labels, ov->n, ov->key,
                                 v + 1 == r->n_vols ? r->hash : NULL, ov->skipped_empty, ov->nan_inf, &id, &dup);
        if (st) break;
        if (!dup) {
            dup_all = 0;
            sum->volumes++;
            sum->slices += ov->n;
            sum->empty_skipped += ov->skipped_empty;
            sum->nan_inf += ov->nan_inf;
        }
        if (!dup && ov->nan_inf)
            fprintf(stderr, "%s: warning: %llu NaN/Inf voxels set to 0\n", cx->jobs.v[i].image,
                    (unsigned long long)ov->nan_inf);
        free_outvol(ov);
        memset(ov, 0, sizeof *ov);
        if (o->stop && *o->stop && v + 1 < r->n_vols) break; /* frames so far are committed; the rest resumes */
    }
    if (r->n_vols == 0 && !st) st = ms_store_writer_mark(cx->w, r->hash);
    if (st) {
        j->status = 2;
        sum->failed++; /* the store refused it (full disk, ...): the run stops; this source is not (wholly) stored */
    }
    else if (dup_all && r->n_vols)
        sum->skipped++;
    else
        sum->ingested++;
    sum->voxel_mb += r->voxel_mb;
    if (!st && cx->log && !(dup_all && r->n_vols))
        st = log_commit(cx, i, r, sum->volumes - vol0, sum->slices - sl0, ms_now_s() - tc);
    return st;
}

/* The label map (its hash into map_hash), the jobs from the sources (nnU-Net folders, or files + the --labels
 * list) and the label names file. */
static ms_status list_jobs(ctx *cx, char map_hash[65], char **labnames)
{
    const ms_ingest_opts *o = cx->o;
    ms_status st = MS_OK;
    if (o->label_map) {
        ms_sha256 h;
        uint8_t d[32];
        ms_sha256_init(&h);
        MS_TRY(read_label_map(o->label_map, &cx->map, &h));
        ms_sha256_final(&h, d);
        ms_hex(d, 32, map_hash);
    }
    if (o->labels && !strcmp(o->labels, "nnunet")) {
        for (int i = 0; i < o->n_srcs && !st; i++) st = read_nnunet(o->srcs[i], &cx->jobs);
    } else {
        walker w = {&cx->jobs, {0}, o->stop};
        for (int i = 0; i < o->n_srcs && !st; i++) st = walk(&w, o->srcs[i], 1, NULL);
        free(w.seen.v);
        free(w.seen.used);
        if (!st && o->labels) st = read_csv(o->labels, o->image_root, 1, &cx->jobs);
        if (!st && o->val_labels) st = read_csv(o->val_labels, o->image_root, 2, &cx->jobs);
    }
    if (st) return st;
    if (cx->jobs.n == 0) fprintf(stderr, "ingest: warning: no NIfTI or DICOM files found in the sources given\n");
    if (o->label_names) {
        size_t len;
        MS_TRY(ms_read_file(o->label_names, 1 << 20, labnames, &len));
    }
    return MS_OK;
}

/* Counts one source's label values (as the store would keep them: a NIfTI label resampled when --label-resample
 * says so) into vc. A source whose label cannot be read is left out: the ingest proper reports it as its failure. */
static void count_labels(const ctx *cx, const job *j, ms_value_counter *vc)
{
    float *lf = NULL;
    size_t n = 0;
    ms_nifti im = {0}, lab = {0};
    ms_status st;
    if (j->png) {
        int h, w;
        st = read_png(j->label, &lf, &h, &w);
        n = st ? 0 : (size_t)h * w;
    } else {
        canon c = {0};
        result r = {0};
        int resampled = 0;
        st = open_nifti_pair(j, NULL, 0, cx->o->label_resample, &im, &lab, &c, &r, &resampled);
        n = st ? 0 : (size_t)(c.dim[0] * c.dim[1] * c.dim[2]);
        if (!st && !(lf = malloc(n * sizeof *lf))) st = ms_error(MS_ENOMEM, "out of memory");
        if (!st) st = nifti_label(j, &lab, resampled, &c, lf);
    }
    if (!st) st = ms_value_counter_add(vc, lf, n, j->label);
    if (st == MS_ENOMEM) fprintf(stderr, "%s: warning: not counted for --label-largest: %s\n", j->label, ms_errmsg());
    ms_error_clear();
    ms_nifti_close(&im);
    ms_nifti_close(&lab);
    free(lf);
}

/* --label-largest K: a first pass over every label of the run (all of its sources, stored ones too, and a shard's
 * whole list, so that reruns and the jobs of a set choose alike) counts the nonzero values; the K most frequent
 * become classes 1..K through the label map (cx->map), every other value class 0. */
static ms_status pick_largest(ctx *cx)
{
    const ms_ingest_opts *o = cx->o;
    ms_value_counter vc = {0};
    for (int i = 0; i < cx->jobs.n; i++) {
        if (o->stop && *o->stop) {
            ms_value_counter_free(&vc);
            return ms_error(MS_EINTERRUPTED, "%s: interrupted before anything was written", o->out);
        }
        if (cx->jobs.v[i].label) count_labels(cx, &cx->jobs.v[i], &vc);
    }
    int k = o->label_largest;
    cx->largest = malloc((size_t)k * sizeof *cx->largest);
    cx->map.from = malloc((size_t)k * sizeof *cx->map.from);
    cx->map.to = malloc((size_t)k * sizeof *cx->map.to);
    if (!cx->largest || !cx->map.from || !cx->map.to) {
        ms_value_counter_free(&vc);
        return ms_error(MS_ENOMEM, "out of memory");
    }
    ms_value_counter_top(&vc, k, cx->largest, &cx->n_largest);
    size_t distinct = vc.n;
    ms_value_counter_free(&vc);
    for (int i = 0; i < cx->n_largest; i++) {
        cx->map.from[i] = cx->largest[i].value;
        cx->map.to[i] = i + 1;
    }
    cx->map.n = cx->n_largest;
    if (cx->n_largest < k)
        fprintf(stderr, "ingest: warning: --label-largest %d: the labels hold only %d nonzero values\n", k,
                cx->n_largest);
    if (!o->quiet) {
        fprintf(stderr, "ingest: --label-largest %d of %zu nonzero values:", k, distinct);
        for (int i = 0; i < cx->n_largest; i++)
            fprintf(stderr, " %d=%lld (%llu voxels)%s", i + 1, (long long)cx->largest[i].value,
                    (unsigned long long)cx->largest[i].count, i + 1 < cx->n_largest ? "," : "\n");
        if (!cx->n_largest) fprintf(stderr, " none\n");
    }
    return MS_OK;
}

/* The store's rule for PNG masks (data/ingest_labels.h): a first pass over every mask of this run, against the
 * rule the store records; recorded when the store has none yet. --label-map and --label-threshold replace it. */
static ms_status decide_rule(ctx *cx)
{
    const ms_ingest_opts *o = cx->o;
    if (o->label_map || o->has_threshold || o->label_largest) return MS_OK;
    const char **paths = calloc((size_t)cx->jobs.n + 1, sizeof *paths);
    if (!paths) return ms_error(MS_ENOMEM, "out of memory");
    int n = 0;
    for (int i = 0; i < cx->jobs.n; i++)
        if (cx->jobs.v[i].png && cx->jobs.v[i].label) paths[n++] = cx->jobs.v[i].label;
    ms_mask_scan sc;
    char *recorded = NULL, *record = NULL;
    ms_status st = n ? ms_mask_scan_run(paths, n, o->threads, &sc) : MS_OK;
    if (!st && n) st = ms_store_writer_get_meta(cx->w, "label_rule", &recorded);
    if (!st && n) st = ms_mask_rule_decide(o->out, recorded, &sc, &cx->rule, &record);
    if (!st && record) st = ms_store_writer_set_meta(cx->w, "label_rule", record);
    free(paths);
    free(recorded);
    free(record);
    return st;
}

/* ---- split file (--val-labels) ---------------------------------------------------------------------------- */

typedef struct hvol {
    char hash[65];
    uint64_t first, count;
    int fg; /* its label holds a nonzero class */
} hvol;

static int cmp_hvol(const void *a, const void *b)
{
    const hvol *x = a, *y = b;
    int c = strcmp(x->hash, y->hash);
    return c ? c : (x->first > y->first) - (x->first < y->first);
}

/* Rows of the lists ordered by hash, then list, then line. */
static int cmp_row(const void *a, const void *b)
{
    const job *x = *(const job *const *)a, *y = *(const job *const *)b;
    int c = strcmp(x->hash, y->hash);
    if (!c) c = x->list - y->list;
    return c ? c : x->line - y->line;
}

/* Marks the rows to take (take[i] = 1): each source once per list (later repeats are warned about); a source in
 * both lists is refused. */
static ms_status pick_rows(const ctx *cx, uint8_t *take)
{
    const ms_ingest_opts *o = cx->o;
    const job **rows = malloc(((size_t)cx->jobs.n + 1) * sizeof *rows);
    int n = 0;
    if (!rows) return ms_error(MS_ENOMEM, "out of memory");
    for (int i = 0; i < cx->jobs.n; i++)
        if (cx->jobs.v[i].list) rows[n++] = &cx->jobs.v[i];
    qsort(rows, (size_t)n, sizeof *rows, cmp_row);
    ms_status st = MS_OK;
    for (int k = 0; k < n && !st; k++) {
        const job *j = rows[k], *p = k ? rows[k - 1] : NULL;
        if (!p || strcmp(p->hash, j->hash))
            take[j - cx->jobs.v] = 1;
        else if (p->list != j->list)
            st = ms_error(MS_EFORMAT,
                          "%s:%d: the same image and mask as %s:%d: a slice cannot both train and validate (split "
                          "file not written)",
                          o->val_labels, j->line, o->labels, p->line);
        else
            fprintf(stderr, "%s:%d: warning: the same image and mask as line %d, taken once\n",
                    j->list == 1 ? o->labels : o->val_labels, j->line, p->line);
    }
    free(rows);
    return st;
}

/* STORE/split.json from the rows of --labels (train) and --val-labels (val), see ingest.h. */
static ms_status write_split(const ctx *cx, ms_ingest_summary *sum)
{
    const ms_ingest_opts *o = cx->o;
    int missing = 0;
    for (int i = 0; i < cx->jobs.n; i++)
        missing += cx->jobs.v[i].list && cx->jobs.v[i].status != 0 && cx->jobs.v[i].status != 1;
    if (missing) {
        fprintf(stderr, "ingest: warning: %d rows of the lists are not in the store (see above): split file not "
                "written\n", missing);
        return MS_OK;
    }
    char path[4096];
    MS_TRY(ms_path_join(path, o->out, "split.json"));
    ms_store *s = NULL;
    MS_TRY(ms_store_open(o->out, 2, &s));
    uint32_t nv = ms_store_n_volumes(s);
    hvol *hv = calloc((size_t)nv + 1, sizeof *hv);
    uint8_t *take = calloc((size_t)cx->jobs.n + 1, 1);
    ms_selection sel[2] = {{0}, {0}};
    ms_status st = hv && take ? MS_OK : ms_error(MS_ENOMEM, "out of memory");
    for (uint32_t v = 0; v < nv && !st; v++) {
        ms_volume_info vi;
        if ((st = ms_store_volume(s, v, &vi))) break;
        memcpy(hv[v].hash, vi.source_hash, sizeof hv[v].hash);
        hv[v].first = vi.first_key;
        hv[v].count = vi.n_slices;
        hv[v].fg = vi.has_labels && vi.n_label_values > 0 && vi.label_values[vi.n_label_values - 1] != 0;
    }
    if (!st) qsort(hv, nv, sizeof *hv, cmp_hvol);
    if (!st) st = pick_rows(cx, take);
    uint64_t n_sel[2] = {0, 0};
    for (int i = 0; i < cx->jobs.n && !st; i++) {
        const job *j = &cx->jobs.v[i];
        if (!take[i]) continue;
        size_t lo = 0, hi = nv; /* the first volume of this source */
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (strcmp(hv[mid].hash, j->hash) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        int used = 0;
        for (size_t k = lo; k < nv && !strcmp(hv[k].hash, j->hash) && !st; k++)
            if (hv[k].fg && hv[k].count) {
                st = ms_selection_add(&sel[j->list - 1], hv[k].first, hv[k].count);
                n_sel[j->list - 1] += hv[k].count;
                used = 1;
            }
        if (!used) sum->split_left_out++;
    }
    if (!st) st = ms_selection_finish(&sel[0]);
    if (!st) st = ms_selection_finish(&sel[1]);
    if (!st) {
        ms_split_spec sp;
        ms_split_spec_default(&sp);
        sp.val_fraction = n_sel[0] + n_sel[1] ? (double)n_sel[1] / (double)(n_sel[0] + n_sel[1]) : 0;
        int single = 0;
        st = ms_split_save(path, &sp, 1, &o->out, &sel[0], &sel[1], &single);
    }
    if (!st) {
        snprintf(sum->split_path, sizeof sum->split_path, "%s", path);
        sum->split_train = n_sel[0];
        sum->split_val = n_sel[1];
    }
    ms_selection_free(&sel[0]);
    ms_selection_free(&sel[1]);
    free(hv);
    free(take);
    ms_store_close(s);
    return st;
}

/* ---- shards (--shard K/N, docs/FORMATS.md §Shard sets) ------------------------------------------------------- */

/* A source's name and size into the set's hash: a regular file's size (a folder's, a DICOM series', depends on the
 * file system, so its files stand for it). */
static void hash_source_name(ms_sha256 *h, const char *p)
{
    struct stat sb;
    char b[40];
    long long size = p && !stat(p, &sb) && S_ISREG(sb.st_mode) ? (long long)sb.st_size : -1;
    snprintf(b, sizeof b, "|%lld\n", size);
    if (p) ms_sha256_update(h, p, strlen(p));
    ms_sha256_update(h, b, strlen(b));
}

/* The set's ID: SHA-256 of N, the params and the full source list (paths as listed, sizes), first 16 bytes in hex.
 * Every job computes it alone from the command it was given, so the N jobs agree without talking to each other. */
static void set_id(const ctx *cx, const char *params, int n, char out[33])
{
    ms_sha256 h;
    uint8_t d[32];
    char b[96];
    ms_sha256_init(&h);
    snprintf(b, sizeof b, "mrisam shard set 1|%d|%d\n", n, cx->jobs.n);
    ms_sha256_update(&h, b, strlen(b));
    ms_sha256_update(&h, params, strlen(params) + 1);
    for (int i = 0; i < cx->jobs.n; i++) {
        const job *j = &cx->jobs.v[i];
        snprintf(b, sizeof b, "%d|%d|%d|%d\n", j->png, j->dicom, j->list, j->n_files);
        ms_sha256_update(&h, b, strlen(b));
        hash_source_name(&h, j->image);
        hash_source_name(&h, j->label);
        for (int k = 0; k < j->n_files; k++) hash_source_name(&h, j->files[k]);
    }
    ms_sha256_final(&h, d);
    ms_hex(d, 16, out);
    out[32] = 0;
}

/* The shard's record (meta "shard"): written by the first run, compared by every rerun (a resume), so a shard
 * never mixes two source lists or two sets. Called with the full source list. */
static ms_status shard_record(ctx *cx, const char *params)
{
    const ms_ingest_opts *o = cx->o;
    char id[33], want[192], *have = NULL;
    set_id(cx, params, o->shard_n, id);
    snprintf(want, sizeof want, "{\"set\":\"%s\",\"k\":%d,\"n\":%d,\"sources\":%d}", id, o->shard_k, o->shard_n,
             cx->jobs.n);
    MS_TRY(ms_store_writer_get_meta(cx->w, "shard", &have));
    if (!have) return ms_store_writer_set_meta(cx->w, "shard", want);
    ms_status st = MS_OK;
    if (strcmp(have, want))
        st = ms_error(MS_EINVAL, "%s: a shard made from other sources or options (%.160s; this run: %s): a set is "
                      "ingested once from one source list; use a new folder", o->out, have, want);
    free(have);
    return st;
}

static void free_job(job *j)
{
    free(j->image);
    free(j->label);
    for (int k = 0; k < j->n_files; k++) free(j->files[k]);
    free(j->files);
}

/* Keeps the shard's jobs: every N-th of the full list from K (they keep their index in it). */
static void keep_shard(ctx *cx)
{
    int m = 0, k = cx->o->shard_k, n = cx->o->shard_n;
    for (int i = 0; i < cx->jobs.n; i++) {
        if (cx->jobs.v[i].index % n == k)
            cx->jobs.v[m++] = cx->jobs.v[i];
        else
            free_job(&cx->jobs.v[i]);
    }
    cx->jobs.n = m;
}

static ms_status ingest_run(const ms_ingest_opts *o, ms_ingest_summary *sum)
{
    ctx cx = {0};
    ms_status st = MS_OK;
    pthread_t *th = NULL;
    int n_th = 0;
    char *params = NULL, *labnames = NULL;
    char map_hash[65] = "";
    memset(sum, 0, sizeof *sum);
    cx.o = o;
    pthread_mutex_init(&cx.mu, NULL);
    pthread_cond_init(&cx.cv, NULL);
    double t0 = ms_now_s();
    cx.t0 = t0;
    nifti_set_allow_upper_fext(1); /* archives hold .NII.GZ too; a process-wide libnifti option, set before threads */
    nifti_set_debug_level(0);      /* our own messages name the file; libnifti's would be unattributed noise */
    if ((st = list_jobs(&cx, map_hash, &labnames))) goto leave;
    if (o->log_path && !(cx.log = fopen(o->log_path, "a"))) {
        st = ms_error(MS_EIO, "%s: cannot open: %s", o->log_path, strerror(errno));
        goto leave; /* before the store: a bad path leaves nothing behind */
    }
    int layout = o->layout;
    if (!layout) { /* an existing store's own, else the current one */
        ms_store *old = NULL;
        if (ms_store_open(o->out, 2, &old) == MS_OK) layout = ms_store_layout(old);
        ms_store_close(old);
        ms_error_clear();
    }
    if (o->label_largest && (st = pick_largest(&cx))) goto leave;
    params = params_json(o, map_hash[0] ? map_hash : NULL, layout ? layout : MS_STORE_VERSION, &cx);
    char created[256];
    snprintf(created, sizeof created, "{\"tool\":\"mrisam %s\",\"zstd_level\":%d,\"shuffle\":%d,\"time\":%lld}",
             MS_VERSION, o->zstd_level, o->shuffle != 0, (long long)time(NULL)); /* read only by a new store */
    if ((st = ms_store_writer_open_as(o->out, params, created, 0, o->layout, &cx.w))) goto leave;
    cx.layout = ms_store_writer_layout(cx.w);
    if (labnames && (st = ms_store_writer_set_label_names(cx.w, labnames))) goto leave;
    if ((st = ms_store_writer_source_keys(cx.w, &cx.done, &cx.n_done))) goto leave;
    if (o->shard_n && (st = shard_record(&cx, params))) goto leave;
    if ((st = decide_rule(&cx))) goto leave; /* a shard decides from every mask of the set: one rule for all */
    cx.shard_n = o->shard_n;
    if (o->shard_n) keep_shard(&cx);
    cx.res = calloc((size_t)cx.jobs.n + 1, sizeof *cx.res);
    n_th = o->threads > 0 ? o->threads : 1;
    if (n_th > cx.jobs.n) n_th = cx.jobs.n > 0 ? cx.jobs.n : 1;
    th = calloc((size_t)n_th, sizeof *th);
    if (!cx.res || !th) {
        st = ms_error(MS_ENOMEM, "out of memory");
        goto leave;
    }
    cx.window = 2 * n_th;
    for (int i = 0; i < n_th; i++)
        if (pthread_create(&th[i], NULL, worker, &cx)) {
            n_th = i;
            st = ms_error(MS_EIO, "cannot start threads");
            break;
        }
    double last = 0;
    for (int i = 0; i < cx.jobs.n && !st; i++) {
        pthread_mutex_lock(&cx.mu);
        while (!cx.res[i].ready && !(o->stop && *o->stop && cx.next <= i)) wait_cv(&cx);
        pthread_mutex_unlock(&cx.mu);
        if (!cx.res[i].ready) break; /* stopped before this source started */
        result *r = &cx.res[i];
        st = commit_result(&cx, i, r, sum);
        free_result(r);
        pthread_mutex_lock(&cx.mu);
        cx.written = i + 1;
        pthread_cond_broadcast(&cx.cv);
        pthread_mutex_unlock(&cx.mu);
        double t = ms_now_s();
        if (o->progress && (t - last > 0.2 || i + 1 == cx.jobs.n)) {
            last = t;
            double el = t - t0, done = i + 1;
            double eta = el / done * (cx.jobs.n - done);
            fprintf(stderr, "\r[%d/%d sources] %llu volumes, %.0f slices/s, %.1f MB/s, ETA %d:%02d   ", i + 1,
                    cx.jobs.n, (unsigned long long)sum->volumes, sum->slices / el, sum->voxel_mb / el, (int)eta / 60,
                    (int)eta % 60);
            if (i + 1 == cx.jobs.n) fprintf(stderr, "\n");
        }
        if (o->stop && *o->stop) {
            st = ms_error(MS_EINTERRUPTED, "%s: interrupted; rerun the same command to resume", o->out);
            break;
        }
    }
    if (st) {
        pthread_mutex_lock(&cx.mu);
        cx.next = cx.jobs.n; /* workers take nothing more */
        pthread_cond_broadcast(&cx.cv);
        pthread_mutex_unlock(&cx.mu);
    }
leave:
    for (int i = 0; i < n_th; i++) pthread_join(th[i], NULL);
    if (cx.res)
        for (int i = 0; i < cx.jobs.n; i++) free_result(&cx.res[i]);
    if (cx.w) {
        ms_status cs = ms_store_writer_close(cx.w);
        if (!st) st = cs;
    }
    if (cx.log && fclose(cx.log) && !st) st = ms_error(MS_EIO, "%s: cannot write: %s", o->log_path, strerror(errno));
    if (!st && o->val_labels) st = write_split(&cx, sum);
    for (int i = 0; i < cx.jobs.n; i++) free_job(&cx.jobs.v[i]);
    free(cx.jobs.v);
    for (size_t i = 0; i < cx.n_done; i++) free(cx.done[i]);
    free(cx.done);
    free(cx.res);
    free(th);
    free(params);
    free(labnames);
    free(cx.map.from);
    free(cx.map.to);
    free(cx.largest);
    pthread_mutex_destroy(&cx.mu);
    pthread_cond_destroy(&cx.cv);
    sum->seconds = ms_now_s() - t0;
    return st;
}

ms_status ms_ingest_run(const ms_ingest_opts *o, ms_ingest_summary *sum)
{
    memset(sum, 0, sizeof *sum);
    if (!o->shard_n) {
        /* a set's folder holds shards only: a one-piece store beside them would hide them from every reader */
        if (ms_store_is_set(o->out))
            return ms_error(MS_EINVAL, "%s: a set of shards; ingest into it with --shard K/N", o->out);
        return ingest_run(o, sum);
    }
    if (o->shard_n < 1 || o->shard_k < 0 || o->shard_k >= o->shard_n)
        return ms_error(MS_EINVAL, "%s: --shard %d/%d: need 0 <= K < N", o->out, o->shard_k, o->shard_n);
    if (o->val_labels)
        return ms_error(MS_EINVAL, "%s: --val-labels writes a split file of the whole store; ingest it without "
                        "--shard", o->out);
    char dir[MS_PATH_MAX], data[MS_PATH_MAX];
    struct stat sb;
    MS_TRY(ms_store_shard_path(o->out, o->shard_k, o->shard_n, dir));
    MS_TRY(ms_path_join(data, o->out, "data.mdb"));
    if (stat(data, &sb) == 0)
        return ms_error(MS_EINVAL, "%s: a one-piece store; shards go into a folder of their own", o->out);
    if (mkdir(o->out, 0750) != 0 && errno != EEXIST) return ms_error_sys(errno, o->out, "");
    ms_ingest_opts so = *o;
    so.out = dir;
    return ingest_run(&so, sum);
}
