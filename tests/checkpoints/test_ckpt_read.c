/* tests/checkpoints/test_ckpt_read.c — reading weight files: the PyTorch-written fixtures of gen_fixtures.py
 * against fixtures/expected.json (names, order, dtypes, shapes, values bit for bit), every hostile file of
 * fixtures/hostile/manifest.txt (refused with a one-line error naming the file and the expected reason), every
 * truncation of valid files, and seeded random byte corruption (must fail cleanly or load; run under ASan).
 * With MRISAM_SAM_CKPT=<sam_vit_{b,l,h}.pth> it also checks a real SAM checkpoint's key count and shapes. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/clock.h"
#include "base/fileio.h"
#include "base/path.h"
#include "checkpoints/pickle.h"
#include "checkpoints/state_dict.h"
#include "checkpoints/zip.h"
#include "ckpt_gen.h"
#include "harness.h"

static char fixdir[MS_PATH_MAX];

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)sz + 1);
    if (b && fread(b, 1, (size_t)sz, f) != (size_t)sz) {
        free(b);
        b = NULL;
    }
    if (b) b[sz] = 0;
    fclose(f);
    if (n) *n = (size_t)sz;
    return b;
}

static int spit(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(p, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

static void check_file(const char *fname, const cJSON *want)
{
    char path[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(path, fixdir, fname));
    ms_state_dict sd;
    ms_status st = ms_sd_load(path, &sd);
    MS_CHECK(st == MS_OK, "%s: %s", fname, ms_errmsg());
    if (st) return;
    MS_CHECK(sd.n == cJSON_GetArraySize(want), "%s: %d tensors, expected %d", fname, sd.n, cJSON_GetArraySize(want));
    int i = 0, bad = 0;
    for (const cJSON *t = want->child; t && i < sd.n; t = t->next, i++) {
        const ms_sd_entry *e = &sd.e[i];
        if (strcmp(e->name, t->string)) {
            MS_CHECK(0, "%s: tensor %d is %s, expected %s", fname, i, e->name, t->string);
            continue;
        }
        const char *dt = cJSON_GetObjectItem(t, "dtype")->valuestring;
        MS_CHECK(!strcmp(ms_dtype_name(e->t.dtype), dt), "%s %s: dtype %s, expected %s", fname, e->name,
                 ms_dtype_name(e->t.dtype), dt);
        const cJSON *sh = cJSON_GetObjectItem(t, "shape"), *vals = cJSON_GetObjectItem(t, "values");
        int64_t shape[MS_MAX_DIMS];
        int nd = 0;
        for (const cJSON *x = sh->child; x; x = x->next) shape[nd++] = (int64_t)x->valuedouble;
        int64_t n = cJSON_GetArraySize(vals);
        float *f = malloc((size_t)(n + 1) * sizeof *f);
        st = ms_sd_get_f32(&sd, e->name, shape, nd, f);
        MS_CHECK(st == MS_OK, "%s: %s", fname, ms_errmsg());
        int64_t k = 0;
        for (const cJSON *x = vals->child; !st && x; x = x->next, k++) {
            int ok = f[k] == (float)x->valuedouble;
            /* f64 and i64 also exactly in their own type */
            if (e->t.dtype == MS_DTYPE_F64) ok &= ((const double *)e->t.data)[k] == x->valuedouble;
            if (e->t.dtype == MS_DTYPE_I64) ok &= ((const int64_t *)e->t.data)[k] == (int64_t)x->valuedouble;
            if (!ok && bad++ < 5) MS_CHECK(0, "%s %s[%lld]: %.9g, expected %.17g", fname, e->name, (long long)k, f[k],
                                           x->valuedouble);
        }
        free(f);
    }
    MS_CHECK(bad == 0, "%s: %d wrong values", fname, bad);
    ms_sd_free(&sd);
}

/* Must fail with a one-line message that names the file and contains `why`. */
static void expect_refused(const char *path, const char *why, const char *label)
{
    ms_state_dict sd;
    ms_status st = ms_sd_load(path, &sd);
    const char *m = ms_errmsg();
    MS_CHECK(st != MS_OK, "%s: was accepted (%d tensors)", label, st ? 0 : sd.n);
    if (st == MS_OK) {
        ms_sd_free(&sd);
        return;
    }
    MS_CHECK(!strchr(m, '\n') && strstr(m, path) && (!why || strstr(m, why)), "%s: message \"%s\" (want \"%s\")",
             label, m, why ? why : "");
}

static void hostile(void)
{
    char path[MS_PATH_MAX], line[1024];
    MS_CHECK_OK(ms_path_join(path, fixdir, "hostile/manifest.txt"));
    FILE *f = fopen(path, "r");
    MS_CHECK(f != NULL, "no %s", path);
    if (!f) return;
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        char *tab = strchr(line, '\t');
        if (!tab) continue;
        *tab = 0;
        tab[strcspn(tab + 1, "\n") + 1] = 0;
        MS_CHECK_OK(ms_path_fmt(path, "%s/hostile/%s", fixdir, line));
        expect_refused(path, tab + 1, line);
        if (n++ < 100) printf("  refused %-28s %s\n", line, ms_errmsg());
    }
    fclose(f);
    MS_CHECK(n >= 40, "only %d hostile files", n);
}

/* Every prefix of a valid file must be refused; corrupted copies must load or fail, never crash. */
static void damage(const char *fname, int step, uint64_t seed, int n_flips)
{
    char src[MS_PATH_MAX], tmp[64];
    MS_CHECK_OK(ms_path_join(src, fixdir, fname));
    snprintf(tmp, sizeof tmp, "damaged_%d.bin", (int)getpid());
    size_t n;
    unsigned char *b = (unsigned char *)slurp(src, &n);
    MS_CHECK(b != NULL, "cannot read %s", src);
    if (!b) return;
    int refused = 0, total = 0;
    for (size_t cut = 0; cut < n; cut += (size_t)step) {
        spit(tmp, b, cut);
        ms_state_dict sd;
        ms_status st = ms_sd_load(tmp, &sd);
        total++;
        if (st) refused++;
        else ms_sd_free(&sd);
        MS_CHECK(st == MS_OK || !strchr(ms_errmsg(), '\n'), "multi-line message");
    }
    MS_CHECK(refused == total, "%s: %d of %d truncations accepted", fname, total - refused, total);
    ms_rng r;
    ms_rng_init(&r, seed, 77);
    int loaded = 0;
    for (int it = 0; it < n_flips; it++) {
        unsigned char *c = malloc(n);
        memcpy(c, b, n);
        int k = 1 + (int)(ms_rng_u64(&r) % 4);
        for (int j = 0; j < k; j++) c[ms_rng_u64(&r) % n] ^= (unsigned char)(1 + ms_rng_u64(&r) % 255);
        spit(tmp, c, n);
        free(c);
        ms_state_dict sd;
        if (ms_sd_load(tmp, &sd) == MS_OK) {
            loaded++;
            ms_sd_free(&sd);
        }
    }
    printf("  %s: %d truncations refused; %d/%d corrupted copies still loaded (bytes no check covers), none crashed\n",
           fname, refused, loaded, n_flips);
    remove(tmp);
    free(b);
}

/* Tiny pickles found by fuzzing or at the edges of the opcode table: each must end in a clean error. */
static void pickle_edges(void)
{
    static const struct { const char *p; size_t n; const char *why; } c[] = {
        {"\x80\x02(t.", 6, "no dict of tensors"},                     /* empty tuple, stack not yet allocated */
        {"\x80\x02](e.", 7, "no dict of tensors"},                    /* empty APPENDS */
        {"\x80\x02}(u.", 7, ""},                                      /* empty SETITEMS: an empty state dict */
        {"\x80\x02}(K\x01u.", 9, "bad SETITEMS"},                     /* odd item count */
        {"\x80\x02K\x01K\x02K\x03s.", 10, "SETITEM on something"},  /* SETITEM on an int */
        {"\x80\x02)K\x01" "b.", 7, "BUILD on something"},            /* BUILD on a tuple */
        {"\x80\x02\x8a\x09" "AAAAAAAAA.", 14, "at most 8"},          /* LONG1 longer than int64 */
        {"\x80\x06}.", 4, "protocol 6"},
        {"\x80\x02\x95\xff\xff\xff\xff\xff\xff\xff\x7f}.", 13, "FRAME"},
        {"\x80\x02" "c\n\n.", 6, "GLOBAL . is not allowed"},
        {"\x80\x02X\x01\x00\x00\x00" "a" "X\x01\x00\x00\x00" "b\x93.", 16, "GLOBAL a.b"},
        {"\x80\x02\x94.", 4, "stack underflow"},
        {"\x80\x02)Q.", 5, "persistent id"},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        ms_pkl_sd sd;
        size_t used;
        ms_status st = ms_pickle_state_dict((const uint8_t *)c[i].p, c[i].n, "edge", 0, &sd, &used);
        if (st == MS_OK) {
            MS_CHECK(sd.n == 0 && i == 2, "edge pickle %zu accepted with %d tensors", i, sd.n);
            ms_pkl_sd_free(&sd);
            continue;
        }
        MS_CHECK(strstr(ms_errmsg(), c[i].why) && !strchr(ms_errmsg(), '\n'), "edge pickle %zu: %s (want %s)", i,
                 ms_errmsg(), c[i].why);
    }
}

/* ---- aliasing views: few bytes in the file, gigabytes to materialise ------------------------------------- */

typedef struct view { int64_t off; int nd; int64_t size[4], stride[4]; } view;

static const struct { ms_dtype dt; const char *cls; } alias_dt[] = {
    {MS_DTYPE_F32, "FloatStorage"}, {MS_DTYPE_F16, "HalfStorage"}, {MS_DTYPE_I64, "LongStorage"},
    {MS_DTYPE_U8, "ByteStorage"},
};

static void pk_str(ms_buf *b, const char *s)
{
    uint8_t h[5] = {'X'};
    ms_put32(h + 1, (uint32_t)strlen(s));
    ms_buf_put(b, h, 5);
    ms_buf_put(b, s, strlen(s));
}
static void pk_int(ms_buf *b, int64_t v) /* BININT for 32-bit values, else LONG1 of 8 bytes */
{
    uint8_t h[10] = {'J'};
    if (v >= INT32_MIN && v <= INT32_MAX) {
        ms_put32(h + 1, (uint32_t)v);
        ms_buf_put(b, h, 5);
        return;
    }
    h[0] = 0x8a, h[1] = 8;
    ms_put64(h + 2, (uint64_t)v);
    ms_buf_put(b, h, 10);
}
static void pk_tuple(ms_buf *b, const int64_t *v, int n)
{
    ms_buf_put(b, "(", 1);
    for (int i = 0; i < n; i++) pk_int(b, v[i]);
    ms_buf_put(b, "t", 1);
}
#define PK(b, lit) ms_buf_put(b, lit, sizeof lit - 1)

/* A torch zip file (the layout torch.save writes) whose k views v.0 .. v.<k-1> all use one storage of S elements. */
static int write_views_pth(const char *path, int dti, int64_t S, const uint8_t *sto, const view *v, int k)
{
    ms_buf b = {0};
    PK(&b, "\x80\x02" "ccollections\nOrderedDict\nq\x00" ")R(");
    for (int i = 0; i < k; i++) {
        char name[32];
        snprintf(name, sizeof name, "v.%d", i);
        pk_str(&b, name);
        PK(&b, "ctorch._utils\n_rebuild_tensor_v2\n((");
        pk_str(&b, "storage");
        PK(&b, "ctorch\n");
        ms_buf_put(&b, alias_dt[dti].cls, strlen(alias_dt[dti].cls));
        PK(&b, "\n");
        pk_str(&b, "0");
        pk_str(&b, "cpu");
        pk_int(&b, S);
        PK(&b, "tQ");
        pk_int(&b, v[i].off);
        pk_tuple(&b, v[i].size, v[i].nd);
        pk_tuple(&b, v[i].stride, v[i].nd);
        PK(&b, "\x89" "h\x00" ")RtR"); /* requires_grad False, backward hooks OrderedDict() */
    }
    PK(&b, "u.");
    ms_afile f = {0};
    ms_zipw w = {0};
    ms_status st = b.oom ? MS_ENOMEM : ms_afile_open(&f, path);
    ms_zipw_init(&w, &f);
    if (!st) st = ms_zipw_add(&w, "archive/data.pkl", b.p, b.n);
    if (!st) st = ms_zipw_add(&w, "archive/data/0", sto, (uint64_t)S * ms_dtype_size(alias_dt[dti].dt));
    if (!st) st = ms_zipw_add(&w, "archive/version", "3\n", 2);
    if (!st) st = ms_zipw_finish(&w);
    if (!st) st = ms_afile_commit(&f);
    ms_afile_abort(&f);
    ms_zipw_free(&w);
    ms_buf_free(&b);
    return st;
}

static int64_t view_numel(const view *v)
{
    int64_t n = 1;
    for (int k = 0; k < v->nd; k++) n *= v->size[k];
    return n;
}

/* A random view of about `target` elements over S: one stride-0 dim carries the bulk; the other dims are stride 0
 * or strides that overlap or not, all inside the storage. */
static void random_view(ms_rng *r, int64_t S, int64_t target, view *v)
{
    v->nd = 1 + (int)(ms_rng_u64(r) % 4);
    v->off = (int64_t)(ms_rng_u64(r) % (uint64_t)S);
    int64_t room = S - 1 - v->off, other = 1;
    int bulk = (int)(ms_rng_u64(r) % (uint64_t)v->nd);
    for (int k = 0; k < v->nd; k++) {
        v->stride[k] = 0;
        v->size[k] = 1;
        if (k == bulk) continue;
        if (room > 0 && ms_rng_u64(r) % 3) {
            v->stride[k] = 1 + (int64_t)(ms_rng_u64(r) % (uint64_t)room);
            v->size[k] = 1 + (int64_t)(ms_rng_u64(r) % (uint64_t)(room / v->stride[k] + 1));
            room -= (v->size[k] - 1) * v->stride[k];
        } else v->size[k] = 1 + (int64_t)(ms_rng_u64(r) % 8);
        other *= v->size[k];
    }
    v->size[bulk] = target / other > 0 ? target / other : 1;
}

/* Loads path in a child limited to its present address space + 512 MB and 10 s. Returns 1 when the load was
 * refused (msg: the message), 0 when it loaded, -1 when the child died (msg says how). */
static int load_in_child(const char *path, char *msg, size_t cap)
{
    int fd[2];
    snprintf(msg, cap, "pipe or fork failed");
    if (pipe(fd)) return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        unsigned long pages = 0;
        FILE *f = fopen("/proc/self/statm", "r");
        if (f && fscanf(f, "%lu", &pages) != 1) pages = 0;
        if (f) fclose(f);
        rlim_t lim = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + (512ull << 20);
        struct rlimit rl = {lim, lim};
        setrlimit(RLIMIT_AS, &rl);
        alarm(10);
        ms_state_dict sd;
        ms_status st = ms_sd_load(path, &sd);
        char out[1100];
        int n = snprintf(out, sizeof out, "%c%s", st ? 'R' : 'A', st ? ms_errmsg() : "");
        _exit(write(fd[1], out, (size_t)n) == n ? 0 : 3);
    }
    close(fd[1]);
    size_t got = 0;
    ssize_t k;
    while (pid > 0 && got + 1 < cap && (k = read(fd[0], msg + got, cap - 1 - got)) > 0) got += (size_t)k;
    msg[got] = 0;
    close(fd[0]);
    int ws = 0;
    if (pid < 0 || waitpid(pid, &ws, 0) != pid) return -1;
    if (WIFSIGNALED(ws) || WEXITSTATUS(ws) || !got) {
        snprintf(msg, cap, "child died (signal %d, exit %d)", WIFSIGNALED(ws) ? WTERMSIG(ws) : 0,
                 WIFEXITED(ws) ? WEXITSTATUS(ws) : 0);
        return -1;
    }
    char kind = msg[0];
    memmove(msg, msg + 1, got);
    return kind == 'R';
}

/* Members of the class "any number of aliasing views over a tiny storage, materialising far more than the file":
 * each must be refused within the time and memory bounds, with the message giving the total and the file size. */
static void aliasing_refused(uint64_t seed, int members)
{
    char path[64], msg[1200], want[160];
    snprintf(path, sizeof path, "alias_%d.pth", (int)getpid());
    view *v = malloc(1024 * sizeof *v);
    uint8_t sto[16 * 8];
    int ok_all = 1;
    for (int m = 0; m < members; m++) {
        ms_rng r;
        ms_rng_init(&r, seed, 1000 + (uint64_t)m);
        int dti = (int)(ms_rng_u64(&r) % 4);
        int64_t S = 1 + (int64_t)(ms_rng_u64(&r) % 16), es = (int64_t)ms_dtype_size(alias_dt[dti].dt);
        for (size_t i = 0; i < sizeof sto; i++) sto[i] = (uint8_t)ms_rng_u64(&r);
        int k = 2 + (int)(ms_rng_u64(&r) % ((2u << (ms_rng_u64(&r) % 10)) - 1)); /* 2 .. 1024, log-spread */
        uint64_t total = 0;
        for (int i = 0; i < k; i++) {
            /* 192..384 MiB in all, each view under the 256 MiB per-view cap: the total is what must be caught */
            int64_t bytes = (int64_t)((192ull << 20) / (uint64_t)k * (512 + ms_rng_u64(&r) % 513) / 512);
            if (bytes > (200ll << 20)) bytes = 200ll << 20;
            random_view(&r, S, bytes / es, &v[i]);
            total += (uint64_t)(view_numel(&v[i]) * es);
        }
        MS_CHECK_OK(write_views_pth(path, dti, S, sto, v, k));
        struct stat sb;
        uint64_t fsize = stat(path, &sb) ? 0 : (uint64_t)sb.st_size;
        snprintf(want, sizeof want, "%s: tensor views materialise %llu bytes from a %llu-byte file", path,
                 (unsigned long long)total, (unsigned long long)fsize);
        double t0 = ms_now_s();
        int rc = load_in_child(path, msg, sizeof msg);
        double dt = ms_now_s() - t0;
        int ok = rc == 1 && strstr(msg, want) && !strchr(msg, '\n') && dt < 5;
        MS_CHECK(ok, "member %d (%d views, %s storage of %lld, %llu bytes from %llu): %s after %.2f s: %s", m, k,
                 ms_dtype_name(alias_dt[dti].dt), (long long)S, (unsigned long long)total,
                 (unsigned long long)fsize, rc == 1 ? "refused" : rc == 0 ? "LOADED" : "died", dt, msg);
        if (m == 0 || !ok) printf("  %s\n", msg);
        ok_all &= ok;
    }
    printf("  aliasing views: %d random members (2..1024 stride-0/overlapping views each) %s\n", members,
           ok_all ? "refused within 5 s and 512 MB" : "NOT all refused");
    remove(path);
    free(v);
}

/* Aliasing views that stay within the bound (a broadcast buffer, tied weights) still load, each element equal to
 * storage[offset + sum(index_k * stride_k)] computed here by division, not by the reader's walk. */
static void aliasing_accepted(uint64_t seed, int members)
{
    char path[64];
    snprintf(path, sizeof path, "alias_ok_%d.pth", (int)getpid());
    view v[16];
    uint8_t sto[16 * 8];
    int bad = 0;
    for (int m = 0; m < members; m++) {
        ms_rng r;
        ms_rng_init(&r, seed, 2000 + (uint64_t)m);
        int dti = (int)(ms_rng_u64(&r) % 4), k = 1 + (int)(ms_rng_u64(&r) % 16);
        int64_t S = 1 + (int64_t)(ms_rng_u64(&r) % 16), es = (int64_t)ms_dtype_size(alias_dt[dti].dt);
        for (size_t i = 0; i < sizeof sto; i++) sto[i] = (uint8_t)ms_rng_u64(&r);
        for (int i = 0; i < k; i++) random_view(&r, S, 1 + (int64_t)(ms_rng_u64(&r) % 16384), &v[i]);
        MS_CHECK_OK(write_views_pth(path, dti, S, sto, v, k));
        ms_state_dict sd;
        ms_status st = ms_sd_load(path, &sd);
        MS_CHECK(st == MS_OK, "member %d: %s", m, ms_errmsg());
        if (st) continue;
        MS_CHECK(sd.n == k, "member %d: %d tensors, expected %d", m, sd.n, k);
        for (int i = 0; i < k && i < sd.n; i++) {
            const ms_tensor *t = &sd.e[i].t;
            int ok = t->dtype == alias_dt[dti].dt && t->ndim == v[i].nd;
            for (int d = 0; ok && d < t->ndim; d++) ok = t->shape[d] == v[i].size[d];
            for (int64_t e = 0, n = view_numel(&v[i]); ok && e < n; e++) {
                int64_t rest = e, off = v[i].off;
                for (int d = v[i].nd - 1; d >= 0; d--) {
                    off += rest % v[i].size[d] * v[i].stride[d];
                    rest /= v[i].size[d];
                }
                ok = !memcmp((const uint8_t *)t->data + e * es, sto + off * es, (size_t)es);
            }
            if (!ok && bad++ < 5) MS_CHECK(0, "member %d: view %d read wrong", m, i);
        }
        ms_sd_free(&sd);
    }
    MS_CHECK(bad == 0, "%d aliasing views within the bound read wrong", bad);
    printf("  aliasing views within the bound: %d random members load, values checked\n", members);
    remove(path);
}

/* ---- safetensors header text: UTF-8, no NUL in a name, nothing but spaces after the JSON ---------------------- */

/* A safetensors file in memory: n F32 tensors of shape [1] named by the JSON string bodies names[i] (raw bytes, as
 * they go between the quotes), then tail[0..tail_n) after the JSON inside the declared header. */
static size_t st_build(ms_buf *b, const uint8_t *const *names, const size_t *name_n, int n, const uint8_t *tail,
                       size_t tail_n)
{
    ms_buf h = {0};
    PK(&h, "{");
    for (int i = 0; i < n; i++) {
        char ent[96];
        snprintf(ent, sizeof ent, "\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[%d,%d]}%s", 4 * i, 4 * i + 4,
                 i + 1 < n ? "," : "");
        PK(&h, "\"");
        ms_buf_put(&h, names[i], name_n[i]);
        ms_buf_put(&h, ent, strlen(ent));
    }
    PK(&h, "}");
    ms_buf_put(&h, tail, tail_n);
    uint8_t len[8];
    ms_put64(len, h.n);
    b->n = 0;
    ms_buf_put(b, len, 8);
    ms_buf_put(b, h.p, h.n);
    for (int i = 0; i < 4 * n; i++) ms_buf_put(b, "\x3f", 1);
    ms_buf_free(&h);
    return b->n;
}

/* Random members of four classes: well-formed UTF-8 names with space padding (load, names byte-equal); bytes
 * other than spaces after the JSON; a NUL in a name (raw or \u0000); an ill-formed UTF-8 sequence in a name. */
static void safetensors_text(uint64_t seed, int members)
{
    static const char *why[4] = {NULL, "after the JSON", "holds a NUL character", "is not valid UTF-8"};
    int count[4] = {0};
    ms_buf file = {0};
    for (int m = 0; m < members; m++) {
        ms_rng r;
        ms_rng_init(&r, seed, 3000 + (uint64_t)m);
        int kind = m % 4, n = 1 + (int)(ms_rng_u64(&r) % 5), victim = (int)(ms_rng_u64(&r) % (uint64_t)n);
        uint8_t nm[5][96], tail[16];
        const uint8_t *np[5];
        size_t nn[5], tn = ms_rng_u64(&r) % 8;
        for (int i = 0; i < n; i++) {
            snprintf((char *)nm[i], 8, "%d.", i); /* distinct names */
            gen_utf8_name(&r, (char *)nm[i] + strlen((char *)nm[i]));
            nn[i] = strlen((char *)nm[i]);
            np[i] = nm[i];
        }
        memset(tail, ' ', sizeof tail);
        if (kind == 1) { /* spaces, a byte that is not a space, then any bytes */
            tn = 1 + ms_rng_u64(&r) % 8;
            size_t p = ms_rng_u64(&r) % tn;
            for (size_t j = p + 1; j < tn; j++) tail[j] = (uint8_t)ms_rng_u64(&r);
            tail[p] = (uint8_t)(' ' + 1 + ms_rng_u64(&r) % 255);
        }
        if (kind >= 2) { /* after the ASCII "<i>." prefix: a code-point boundary */
            uint8_t ins[8];
            size_t in = 0, at = 2;
            if (kind == 3) in = gen_bad_utf8(&r, ins);
            else if (ms_rng_u64(&r) % 2) ins[in++] = 0;
            else memcpy(ins, "\\u0000", in = 6);
            memmove(nm[victim] + at + in, nm[victim] + at, nn[victim] - at + 1);
            memcpy(nm[victim] + at, ins, in);
            nn[victim] += in;
        }
        char label[64];
        snprintf(label, sizeof label, "member_%d.safetensors", m);
        size_t sz = st_build(&file, np, nn, n, tail, tn);
        ms_state_dict sd;
        ms_status st = ms_sd_load_mem(label, file.p, sz, &sd);
        if (kind == 0) {
            MS_CHECK(st == MS_OK && sd.n == n, "%s (valid UTF-8 names): %s", label, st ? ms_errmsg() : "wrong count");
            for (int i = 0; !st && i < n && i < sd.n; i++)
                MS_CHECK(strlen(sd.e[i].name) == nn[i] && !memcmp(sd.e[i].name, nm[i], nn[i]), "%s: name %d differs",
                         label, i);
        } else {
            const char *msg = ms_errmsg();
            int ok = st == MS_EFORMAT && strstr(msg, label) && strstr(msg, why[kind]) && !strchr(msg, '\n') &&
                     (kind == 1 || strstr(msg, "tensor name \""));
            MS_CHECK(ok, "%s (class %d): %s", label, kind, st ? msg : "accepted");
            if (count[kind] == 0) printf("  %s\n", msg);
        }
        if (!st) ms_sd_free(&sd);
        count[kind]++;
    }
    printf("  safetensors header text: %d valid, %d trailing-garbage, %d NUL-name, %d bad-UTF-8 members\n", count[0],
           count[1], count[2], count[3]);
    ms_buf_free(&file);
}

/* docs/MODEL.md §Checkpoint keys: key counts and a few shapes per variant. */
static void real_sam(void)
{
    const char *p = getenv("MRISAM_SAM_CKPT");
    if (!p || !*p) {
        printf("  MRISAM_SAM_CKPT not set: skipped the real SAM checkpoint check\n");
        return;
    }
    ms_state_dict sd;
    ms_status st = ms_sd_load(p, &sd);
    MS_CHECK(st == MS_OK, "%s", ms_errmsg());
    if (st) return;
    const ms_sd_entry *q = ms_sd_find(&sd, "image_encoder.blocks.0.attn.qkv.weight");
    MS_CHECK(q && q->t.ndim == 2, "no qkv weight");
    int64_t D = q ? q->t.shape[1] : 0;
    int depth = D == 768 ? 12 : D == 1024 ? 24 : D == 1280 ? 32 : 0, hd = D == 1280 ? 80 : 64;
    int keys = 3 + 14 * depth + 6 + 17 + 120;
    MS_CHECK(depth && sd.n == keys, "%s: %d keys, expected %d for D=%lld", p, sd.n, keys, (long long)D);
    struct { const char *name; int nd; int64_t s[4]; } want[] = {
        {"image_encoder.pos_embed", 4, {1, 64, 64, D}},
        {"image_encoder.patch_embed.proj.weight", 4, {D, 3, 16, 16}},
        {"image_encoder.blocks.0.attn.qkv.weight", 2, {3 * D, D}},
        {"image_encoder.blocks.0.attn.rel_pos_h", 2, {27, hd}},
        {"image_encoder.blocks.0.mlp.lin1.weight", 2, {4 * D, D}},
        {"image_encoder.neck.0.weight", 4, {256, D, 1, 1}},
        {"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", 2, {2, 128}},
        {"mask_decoder.output_upscaling.0.weight", 4, {256, 64, 2, 2}},
        {"mask_decoder.iou_prediction_head.layers.2.weight", 2, {4, 256}},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const ms_sd_entry *e = ms_sd_find(&sd, want[i].name);
        int ok = e && e->t.ndim == want[i].nd && e->t.dtype == MS_DTYPE_F32;
        for (int k = 0; ok && k < want[i].nd; k++) ok = e->t.shape[k] == want[i].s[k];
        MS_CHECK(ok, "%s: wrong or missing", want[i].name);
    }
    char g[96];
    snprintf(g, sizeof g, "image_encoder.blocks.%d.attn.rel_pos_w", depth / 4 * 4 - 1);
    const ms_sd_entry *e = ms_sd_find(&sd, g);
    MS_CHECK(e && e->t.shape[0] == 127, "%s: global block rel_pos not (127, hd)", g);
    printf("  %s: %d keys, D=%lld, depth %d: ok\n", p, sd.n, (long long)D, depth);
    ms_sd_free(&sd);
}

int main(void)
{
    uint64_t seed = ms_test_seed();
    const char *src = getenv("MS_SOURCE_DIR");
    MS_CHECK_OK(ms_path_join(fixdir, src ? src : ".", "tests/checkpoints/fixtures"));
    char path[MS_PATH_MAX];
    MS_CHECK_OK(ms_path_join(path, fixdir, "expected.json"));
    char *txt = slurp(path, NULL);
    cJSON *exp = txt ? cJSON_Parse(txt) : NULL;
    MS_CHECK(exp != NULL, "cannot read %s", path);
    for (const cJSON *f = exp ? exp->child : NULL; f; f = f->next) {
        check_file(f->string, f);
        printf("  read %s: %d tensors\n", f->string, cJSON_GetArraySize(f));
    }
    cJSON_Delete(exp);
    free(txt);
    hostile();
    pickle_edges();
    damage("small.pth", 3, seed, 300);
    damage("legacy.pth", 1, seed + 1, 300);
    damage("torch2.pth", 5, seed + 2, 300);
    aliasing_refused(seed, 16);
    aliasing_accepted(seed, 16);
    safetensors_text(seed, 200);
    real_sam();
    return ms_test_done();
}
