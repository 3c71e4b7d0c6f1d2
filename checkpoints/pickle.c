/* checkpoints/pickle.c — see pickle.h. Opcode semantics from CPython's Lib/pickle.py / pickletools.py.
 *
 * Values live in one growable pool and are referred to by index, so the memo and BINGET share objects by
 * reference without reference counting; everything is freed at once when the machine stops. Nothing here
 * recurses over pickled data (nesting only costs pool entries), so a deeply nested file cannot exhaust the C
 * stack. Only the state-dict search below descends, and it stops at depth 4.
 */
#include "checkpoints/pickle.h"
#include "base/fileio.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_TUPLE, V_LIST, V_DICT, V_GLOBAL, V_STORAGE, V_TENSOR };
enum { G_ODICT = 1, G_REBUILD, G_PARAM, G_STORAGE /* + ms_dtype */ };
enum { MAX_VALUES = 1 << 23, MAX_STACK = 1 << 20, MAX_MARKS = 4096, MAX_NAME = 4096, MAX_KEY = 64 };

typedef struct val {
    uint8_t kind;
    union {
        int64_t i;
        double f;
        struct { uint32_t off, len; } s;      /* V_STR: bytes in the input */
        struct { int32_t n, cap, *it; } q;    /* V_TUPLE/V_LIST; V_DICT holds key,value pairs (n = 2·pairs) */
        int32_t ref;                          /* V_GLOBAL kind, V_STORAGE / V_TENSOR index */
    } u;
} val;

typedef struct storage { int32_t key; ms_dtype dtype; int64_t numel; } storage;
typedef struct tens { int32_t storage; int ndim; int64_t offset, size[MS_MAX_DIMS], stride[MS_MAX_DIMS]; } tens;

typedef struct vm {
    const uint8_t *b;
    size_t n, pos, at; /* at = offset of the opcode being run, for messages */
    const char *where;
    int legacy;
    val *v;
    int32_t nv, capv;
    int32_t *st, nst, capst;
    int32_t *mk, nmk, capmk;
    int32_t *memo, capmemo, memo_len;
    storage *sto;
    int32_t nsto, capsto;
    tens *te;
    int32_t nte, capte;
} vm;

static ms_status verr(vm *m, const char *fmt, ...) MS_PRINTF(2, 3);
static ms_status verr(vm *m, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return ms_error(MS_EFORMAT, "%s: pickle offset %zu: %s", m->where, m->at, buf);
}

/* Grows *p (elements of `el` bytes) so that index need-1 fits; limit caps the element count. */
static int grow(void **p, int32_t *cap, int64_t need, size_t el, int64_t limit)
{
    if (need <= *cap) return 0;
    if (need > limit) return -1;
    int64_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    if (c > limit) c = limit;
    void *q = realloc(*p, (size_t)c * el);
    if (!q) return -2;
    *p = q;
    *cap = (int32_t)c;
    return 0;
}

static ms_status new_val(vm *m, int kind, int32_t *out)
{
    int g = grow((void **)&m->v, &m->capv, (int64_t)m->nv + 1, sizeof(val), MAX_VALUES);
    if (g == -1) return verr(m, "more than %d objects", MAX_VALUES);
    if (g) return ms_error(MS_ENOMEM, "%s: out of memory", m->where);
    memset(&m->v[m->nv], 0, sizeof(val));
    m->v[m->nv].kind = (uint8_t)kind;
    *out = m->nv++;
    return MS_OK;
}

static ms_status push(vm *m, int32_t x)
{
    int g = grow((void **)&m->st, &m->capst, (int64_t)m->nst + 1, sizeof(int32_t), MAX_STACK);
    if (g == -1) return verr(m, "stack deeper than %d", MAX_STACK);
    if (g) return ms_error(MS_ENOMEM, "%s: out of memory", m->where);
    m->st[m->nst++] = x;
    return MS_OK;
}

static ms_status push_new(vm *m, int kind, int32_t *out)
{
    int32_t x;
    MS_TRY(new_val(m, kind, &x));
    if (out) *out = x;
    return push(m, x);
}

static int32_t floor_(const vm *m) { return m->nmk ? m->mk[m->nmk - 1] : 0; }

static ms_status pop(vm *m, int32_t *x)
{
    if (m->nst <= floor_(m)) return verr(m, "stack underflow");
    *x = m->st[--m->nst];
    return MS_OK;
}

static ms_status top(vm *m, int32_t *x)
{
    if (m->nst <= floor_(m)) return verr(m, "stack underflow");
    *x = m->st[m->nst - 1];
    return MS_OK;
}

static ms_status pop_mark(vm *m, int32_t *base)
{
    if (!m->nmk) return verr(m, "no MARK on the stack");
    *base = m->mk[--m->nmk];
    return MS_OK;
}

static ms_status need(vm *m, size_t k)
{
    if (m->n - m->pos < k) return verr(m, "truncated pickle");
    return MS_OK;
}

/* Appends items to a tuple/list/dict value. */
static ms_status seq_add(vm *m, int32_t s, const int32_t *items, int32_t k)
{
    if (k == 0) return MS_OK; /* an empty tuple/list has no item array */
    val *v = &m->v[s];
    int g = grow((void **)&v->u.q.it, &v->u.q.cap, (int64_t)v->u.q.n + k, sizeof(int32_t), MAX_VALUES);
    if (g == -1) return verr(m, "container with more than %d items", MAX_VALUES);
    if (g) return ms_error(MS_ENOMEM, "%s: out of memory", m->where);
    memcpy(v->u.q.it + v->u.q.n, items, (size_t)k * sizeof(int32_t));
    v->u.q.n += k;
    return MS_OK;
}

static ms_status make_tuple(vm *m, int32_t base)
{
    int32_t k = m->nst - base, t;
    MS_TRY(new_val(m, V_TUPLE, &t));
    MS_TRY(seq_add(m, t, k ? m->st + base : NULL, k)); /* the stack may still be unallocated */
    m->nst = base;
    return push(m, t);
}

static int str_eq(const vm *m, int32_t x, const char *s)
{
    const val *v = &m->v[x];
    return v->kind == V_STR && v->u.s.len == strlen(s) && memcmp(m->b + v->u.s.off, s, v->u.s.len) == 0;
}

/* Printable copy of untrusted bytes for messages. */
static const char *show(const uint8_t *p, size_t n, char *buf, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 5 < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, (p[i] >= 32 && p[i] < 127) ? "%c" : "\\x%02x", p[i]);
    buf[o] = 0;
    return buf;
}

static const char *storage_names[MS_DTYPE_COUNT] = {
    [MS_DTYPE_F32] = "FloatStorage", [MS_DTYPE_F16] = "HalfStorage", [MS_DTYPE_BF16] = "BFloat16Storage",
    [MS_DTYPE_F64] = "DoubleStorage", [MS_DTYPE_I64] = "LongStorage", [MS_DTYPE_I32] = "IntStorage",
    [MS_DTYPE_I16] = "ShortStorage", [MS_DTYPE_I8] = "CharStorage", [MS_DTYPE_U8] = "ByteStorage",
    [MS_DTYPE_BOOL] = "BoolStorage",
};

static int eq(const uint8_t *p, size_t n, const char *s) { return n == strlen(s) && memcmp(p, s, n) == 0; }

static ms_status push_global(vm *m, const uint8_t *mod, size_t ml, const uint8_t *name, size_t nl)
{
    int g = 0;
    if (eq(mod, ml, "collections") && eq(name, nl, "OrderedDict")) g = G_ODICT;
    else if (eq(mod, ml, "torch._utils") && eq(name, nl, "_rebuild_tensor_v2")) g = G_REBUILD;
    else if (eq(mod, ml, "torch._utils") && eq(name, nl, "_rebuild_parameter")) g = G_PARAM;
    else if (eq(mod, ml, "torch"))
        for (int d = 0; d < MS_DTYPE_COUNT; d++)
            if (storage_names[d] && eq(name, nl, storage_names[d])) g = G_STORAGE + d;
    if (!g) {
        char a[160], b[160];
        return verr(m, "GLOBAL %s.%s is not allowed (only collections.OrderedDict, torch._utils._rebuild_tensor_v2, "
                       "torch._utils._rebuild_parameter and torch.*Storage)",
                    show(mod, ml < 64 ? ml : 64, a, sizeof a), show(name, nl < 64 ? nl : 64, b, sizeof b));
    }
    int32_t x;
    MS_TRY(push_new(m, V_GLOBAL, &x));
    m->v[x].u.ref = g;
    return MS_OK;
}

static ms_status memo_put(vm *m, uint64_t idx)
{
    int32_t x;
    MS_TRY(top(m, &x));
    /* Pickle numbers memo entries 0, 1, 2, ..., each costing at least 2 bytes: a larger index is hostile. */
    if (idx >= m->n) return verr(m, "memo index %llu too large", (unsigned long long)idx);
    int32_t old = m->capmemo;
    int g = grow((void **)&m->memo, &m->capmemo, (int64_t)idx + 1, sizeof(int32_t), INT32_MAX);
    if (g) return ms_error(MS_ENOMEM, "%s: out of memory", m->where);
    for (int32_t i = old; i < m->capmemo; i++) m->memo[i] = -1;
    if (m->memo[idx] < 0) m->memo_len++;
    m->memo[idx] = x;
    return MS_OK;
}

static ms_status memo_get(vm *m, uint64_t idx)
{
    if (idx >= (uint64_t)m->capmemo || m->memo[idx] < 0)
        return verr(m, "memo index %llu is not defined", (unsigned long long)idx);
    return push(m, m->memo[idx]);
}

static int valid_key(const vm *m, int32_t x)
{
    const val *v = &m->v[x];
    if (v->kind != V_STR || v->u.s.len == 0 || v->u.s.len > MAX_KEY) return 0;
    for (uint32_t i = 0; i < v->u.s.len; i++) {
        uint8_t c = m->b[v->u.s.off + i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_')) return 0;
    }
    return 1;
}

static ms_status persid(vm *m)
{
    int32_t p;
    MS_TRY(pop(m, &p));
    const val *t = &m->v[p];
    int want = m->legacy ? 6 : 5;
    if (t->kind != V_TUPLE || t->u.q.n != want || !str_eq(m, t->u.q.it[0], "storage"))
        return verr(m, "persistent id is not a %d-tuple ('storage', ...)", want);
    const int32_t *it = t->u.q.it;
    const val *cls = &m->v[it[1]], *num = &m->v[it[4]];
    if (cls->kind != V_GLOBAL || cls->u.ref < G_STORAGE) return verr(m, "persistent id without a storage class");
    if (!valid_key(m, it[2])) return verr(m, "bad storage key in persistent id");
    if (m->v[it[3]].kind != V_STR) return verr(m, "bad storage location in persistent id");
    ms_dtype dt = (ms_dtype)(cls->u.ref - G_STORAGE);
    if (num->kind != V_INT || num->u.i < 0 || num->u.i > INT64_MAX / (int64_t)ms_dtype_size(dt))
        return verr(m, "bad storage size in persistent id");
    if (m->legacy && m->v[it[5]].kind != V_NONE)
        return verr(m, "storage views (legacy view_metadata) are not supported");
    int g = grow((void **)&m->sto, &m->capsto, (int64_t)m->nsto + 1, sizeof(storage), MAX_VALUES);
    if (g) return g == -1 ? verr(m, "too many storages") : ms_error(MS_ENOMEM, "%s: out of memory", m->where);
    m->sto[m->nsto] = (storage){it[2], dt, num->u.i};
    int32_t x;
    MS_TRY(push_new(m, V_STORAGE, &x));
    m->v[x].u.ref = m->nsto++;
    return MS_OK;
}

static ms_status int_tuple(vm *m, int32_t x, int64_t *out, int *n, const char *what)
{
    const val *t = &m->v[x];
    if (t->kind != V_TUPLE) return verr(m, "tensor %s is not a tuple", what);
    if (t->u.q.n > MS_MAX_DIMS) return verr(m, "tensor has %d dims (at most %d)", t->u.q.n, MS_MAX_DIMS);
    for (int i = 0; i < t->u.q.n; i++) {
        const val *e = &m->v[t->u.q.it[i]];
        if (e->kind != V_INT || e->u.i < 0) return verr(m, "tensor %s holds a negative or non-integer value", what);
        out[i] = e->u.i;
    }
    *n = t->u.q.n;
    return MS_OK;
}

static ms_status rebuild_tensor(vm *m, const val *args)
{
    if (args->kind != V_TUPLE || (args->u.q.n != 6 && args->u.q.n != 7))
        return verr(m, "_rebuild_tensor_v2 needs 6 or 7 arguments");
    const int32_t *it = args->u.q.it;
    const val *s = &m->v[it[0]], *off = &m->v[it[1]];
    if (s->kind != V_STORAGE) return verr(m, "_rebuild_tensor_v2: first argument is not a storage");
    if (off->kind != V_INT || off->u.i < 0) return verr(m, "_rebuild_tensor_v2: bad storage offset");
    tens t = {.storage = s->u.ref, .offset = off->u.i};
    int ns;
    MS_TRY(int_tuple(m, it[2], t.size, &t.ndim, "size"));
    MS_TRY(int_tuple(m, it[3], t.stride, &ns, "stride"));
    if (ns != t.ndim) return verr(m, "tensor size has %d dims but stride %d", t.ndim, ns);
    const storage *st = &m->sto[t.storage];
    int64_t numel = 1, last = t.offset, esz = (int64_t)ms_dtype_size(st->dtype);
    for (int i = 0; i < t.ndim; i++) {
        int64_t span;
        if (__builtin_mul_overflow(numel, t.size[i], &numel)) return verr(m, "tensor element count overflows");
        if (t.size[i] > 0 && (__builtin_mul_overflow(t.size[i] - 1, t.stride[i], &span) ||
                              __builtin_add_overflow(last, span, &last)))
            return verr(m, "tensor extent overflows");
    }
    if (numel > INT64_MAX / esz) return verr(m, "tensor byte count overflows");
    if (numel > 0 ? last >= st->numel : t.offset > st->numel)
        return verr(m, "tensor (offset %lld, last element %lld) lies outside its storage of %lld elements",
                    (long long)t.offset, (long long)last, (long long)st->numel);
    int g = grow((void **)&m->te, &m->capte, (int64_t)m->nte + 1, sizeof(tens), MAX_VALUES);
    if (g) return g == -1 ? verr(m, "too many tensors") : ms_error(MS_ENOMEM, "%s: out of memory", m->where);
    m->te[m->nte] = t;
    int32_t x;
    MS_TRY(push_new(m, V_TENSOR, &x));
    m->v[x].u.ref = m->nte++;
    return MS_OK;
}

static ms_status reduce(vm *m)
{
    int32_t a = 0, f = 0;
    MS_TRY(pop(m, &a));
    MS_TRY(pop(m, &f));
    const val *fn = &m->v[f], *args = &m->v[a];
    if (fn->kind != V_GLOBAL) return verr(m, "REDUCE on something that is not an allowed global");
    switch (fn->u.ref) {
    case G_ODICT:
        if (args->kind != V_TUPLE || args->u.q.n != 0) return verr(m, "OrderedDict called with arguments");
        return push_new(m, V_DICT, NULL);
    case G_REBUILD: return rebuild_tensor(m, args);
    case G_PARAM:
        if (args->kind != V_TUPLE || args->u.q.n < 1 || m->v[args->u.q.it[0]].kind != V_TENSOR)
            return verr(m, "_rebuild_parameter without a tensor");
        return push(m, args->u.q.it[0]);
    default: return verr(m, "REDUCE on a storage class is not allowed");
    }
}

static const char *op_name(uint8_t op)
{
    switch (op) {
    case 'i': return "INST";
    case 'o': return "OBJ";
    case 0x81: return "NEWOBJ";
    case 0x92: return "NEWOBJ_EX";
    case 0x82: case 0x83: case 0x84: return "EXT";
    case 'P': return "PERSID";
    case 'S': return "STRING";
    case 'V': return "UNICODE";
    case 'I': return "INT";
    case 'L': return "LONG";
    case 'F': return "FLOAT";
    case 'g': return "GET";
    case 'p': return "PUT";
    case 'd': return "DICT";
    case 'l': return "LIST";
    case 0x8b: return "LONG4";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    case 'B': case 'C': case 0x8e: return "BINBYTES";
    case 'T': case 'U': return "BINSTRING";
    case '0': return "POP";
    case '1': return "POP_MARK";
    case '2': return "DUP";
    default: return "unknown";
    }
}

/* Runs the machine to STOP; *root = the result. */
static ms_status run(vm *m, int32_t *root)
{
    if (m->n >= UINT32_MAX) return ms_error(MS_EFORMAT, "%s: pickle larger than 4 GiB", m->where);
    for (;;) {
        m->at = m->pos;
        if (m->pos >= m->n) return verr(m, "truncated pickle (no STOP)");
        uint8_t op = m->b[m->pos++];
        const uint8_t *p = m->b + m->pos;
        int32_t x = 0, y = 0, z = 0, base = 0;
        switch (op) {
        case 0x80: /* PROTO */
            MS_TRY(need(m, 1));
            if (p[0] < 2 || p[0] > 5) return verr(m, "pickle protocol %d (2 to 5 are read)", p[0]);
            m->pos += 1;
            break;
        case 0x95: /* FRAME: a length prefix for what follows; the data is read as usual */
            MS_TRY(need(m, 8));
            if (ms_le64(p) > m->n - m->pos - 8) return verr(m, "FRAME runs past the end");
            m->pos += 8;
            break;
        case 'c': { /* GLOBAL "module\nname\n" */
            size_t lim = m->n - m->pos < 512 ? m->n - m->pos : 512;
            const uint8_t *nl1 = memchr(p, '\n', lim);
            if (!nl1) return verr(m, "bad GLOBAL");
            size_t rest = lim - (size_t)(nl1 + 1 - p);
            const uint8_t *nl2 = memchr(nl1 + 1, '\n', rest);
            if (!nl2) return verr(m, "bad GLOBAL");
            m->pos += (size_t)(nl2 + 1 - p);
            MS_TRY(push_global(m, p, (size_t)(nl1 - p), nl1 + 1, (size_t)(nl2 - nl1 - 1)));
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            MS_TRY(pop(m, &y));
            MS_TRY(pop(m, &x));
            if (m->v[x].kind != V_STR || m->v[y].kind != V_STR) return verr(m, "STACK_GLOBAL without strings");
            MS_TRY(push_global(m, m->b + m->v[x].u.s.off, m->v[x].u.s.len, m->b + m->v[y].u.s.off, m->v[y].u.s.len));
            break;
        case 'q': MS_TRY(need(m, 1)); m->pos += 1; MS_TRY(memo_put(m, p[0])); break;
        case 'r': MS_TRY(need(m, 4)); m->pos += 4; MS_TRY(memo_put(m, ms_le32(p))); break;
        case 0x94: MS_TRY(memo_put(m, (uint64_t)m->memo_len)); break; /* MEMOIZE */
        case 'h': MS_TRY(need(m, 1)); m->pos += 1; MS_TRY(memo_get(m, p[0])); break;
        case 'j': MS_TRY(need(m, 4)); m->pos += 4; MS_TRY(memo_get(m, ms_le32(p))); break;
        case '(': {
            int g = grow((void **)&m->mk, &m->capmk, (int64_t)m->nmk + 1, sizeof(int32_t), MAX_MARKS);
            if (g) return g == -1 ? verr(m, "more than %d nested MARKs", MAX_MARKS)
                                  : ms_error(MS_ENOMEM, "%s: out of memory", m->where);
            m->mk[m->nmk++] = m->nst;
            break;
        }
        case ')': MS_TRY(push_new(m, V_TUPLE, NULL)); break;
        case 't': MS_TRY(pop_mark(m, &base)); MS_TRY(make_tuple(m, base)); break;
        case 0x85: case 0x86: case 0x87: {
            int k = op - 0x84;
            if (m->nst - floor_(m) < k) return verr(m, "stack underflow");
            MS_TRY(make_tuple(m, m->nst - k));
            break;
        }
        case 'X': case 0x8c: { /* BINUNICODE, SHORT_BINUNICODE */
            size_t hl = op == 'X' ? 4 : 1;
            MS_TRY(need(m, hl));
            uint64_t len = op == 'X' ? ms_le32(p) : p[0];
            m->pos += hl;
            if (len > m->n - m->pos) return verr(m, "string of %llu bytes runs past the end", (unsigned long long)len);
            MS_TRY(push_new(m, V_STR, &x));
            m->v[x].u.s.off = (uint32_t)m->pos;
            m->v[x].u.s.len = (uint32_t)len;
            m->pos += len;
            break;
        }
        case 'K': case 'M': case 'J': {
            size_t k = op == 'K' ? 1 : op == 'M' ? 2 : 4;
            MS_TRY(need(m, k));
            m->pos += k;
            MS_TRY(push_new(m, V_INT, &x));
            m->v[x].u.i = op == 'K' ? p[0] : op == 'M' ? (int64_t)(p[0] | (p[1] << 8)) : (int64_t)(int32_t)ms_le32(p);
            break;
        }
        case 0x8a: { /* LONG1: little-endian two's complement */
            MS_TRY(need(m, 1));
            size_t k = p[0];
            if (k > 8) return verr(m, "integer of %zu bytes (at most 8 are read)", k);
            MS_TRY(need(m, 1 + k));
            uint64_t u = 0;
            for (size_t i = 0; i < k; i++) u |= (uint64_t)p[1 + i] << (8 * i);
            if (k && k < 8 && (p[k] & 0x80)) u |= ~0ull << (8 * k);
            m->pos += 1 + k;
            MS_TRY(push_new(m, V_INT, &x));
            memcpy(&m->v[x].u.i, &u, 8);
            break;
        }
        case 0x88: case 0x89: MS_TRY(push_new(m, V_BOOL, &x)); m->v[x].u.i = op == 0x88; break;
        case 'N': MS_TRY(push_new(m, V_NONE, NULL)); break;
        case 'G': { /* BINFLOAT: big-endian double */
            MS_TRY(need(m, 8));
            uint64_t u = 0;
            for (int i = 0; i < 8; i++) u = (u << 8) | p[i];
            m->pos += 8;
            MS_TRY(push_new(m, V_FLOAT, &x));
            memcpy(&m->v[x].u.f, &u, 8);
            break;
        }
        case '}': MS_TRY(push_new(m, V_DICT, NULL)); break;
        case ']': MS_TRY(push_new(m, V_LIST, NULL)); break;
        case 's': { /* SETITEM */
            int32_t kv[2];
            MS_TRY(pop(m, &kv[1]));
            MS_TRY(pop(m, &kv[0]));
            MS_TRY(top(m, &z));
            if (m->v[z].kind != V_DICT) return verr(m, "SETITEM on something that is not a dict");
            MS_TRY(seq_add(m, z, kv, 2));
            break;
        }
        case 'u': case 'e': { /* SETITEMS, APPENDS */
            MS_TRY(pop_mark(m, &base));
            if ((op == 'u' && (m->nst - base) % 2) || base <= floor_(m)) return verr(m, "bad SETITEMS/APPENDS");
            z = m->st[base - 1];
            if (m->v[z].kind != (op == 'u' ? V_DICT : V_LIST)) return verr(m, "SETITEMS/APPENDS on a wrong type");
            MS_TRY(seq_add(m, z, m->st + base, m->nst - base));
            m->nst = base;
            break;
        }
        case 'a': /* APPEND */
            MS_TRY(pop(m, &y));
            MS_TRY(top(m, &z));
            if (m->v[z].kind != V_LIST) return verr(m, "APPEND on something that is not a list");
            MS_TRY(seq_add(m, z, &y, 1));
            break;
        case 'Q': MS_TRY(persid(m)); break;
        case 'R': MS_TRY(reduce(m)); break;
        case 'b': /* BUILD: only the _metadata state of an OrderedDict; it is dropped */
            MS_TRY(pop(m, &y));
            MS_TRY(top(m, &z));
            if (m->v[z].kind != V_DICT) return verr(m, "BUILD on something that is not a dict");
            break;
        case '.':
            MS_TRY(pop(m, root));
            return MS_OK;
        default: return verr(m, "opcode 0x%02x (%s) is not allowed", op, op_name(op));
        }
    }
}

static void vm_free(vm *m)
{
    for (int32_t i = 0; i < m->nv; i++)
        if (m->v[i].kind == V_TUPLE || m->v[i].kind == V_LIST || m->v[i].kind == V_DICT) free(m->v[i].u.q.it);
    free(m->v);
    free(m->st);
    free(m->mk);
    free(m->memo);
    free(m->sto);
    free(m->te);
    memset(m, 0, sizeof *m);
}

static ms_status vm_run(vm *m, const uint8_t *buf, size_t n, const char *where, int legacy, int32_t *root, size_t *used)
{
    memset(m, 0, sizeof *m);
    m->b = buf;
    m->n = n;
    m->where = where;
    m->legacy = legacy;
    ms_status rc = run(m, root);
    if (!rc && used) *used = m->pos;
    return rc;
}

static char *dup_str(const vm *m, int32_t x)
{
    const val *v = &m->v[x];
    char *s = malloc(v->u.s.len + 1u);
    if (!s) return NULL;
    memcpy(s, m->b + v->u.s.off, v->u.s.len);
    s[v->u.s.len] = 0;
    return s;
}

static int all_tensors(const vm *m, const val *d)
{
    for (int32_t i = 0; i < d->u.q.n; i += 2)
        if (m->v[d->u.q.it[i + 1]].kind != V_TENSOR) return 0;
    return 1;
}

/* The dict of tensors: the root itself or, for wrapped checkpoints, the dict under a well-known key. */
static ms_status find_sd(vm *m, int32_t x, int depth, int32_t *out)
{
    static const char *wrappers[] = {"state_dict", "model", "model_state_dict", "module", "net", "network_weights"};
    const val *d = &m->v[x];
    if (d->kind != V_DICT) return ms_error(MS_EFORMAT, "%s: the pickle holds no dict of tensors", m->where);
    if (all_tensors(m, d)) {
        *out = x;
        return MS_OK;
    }
    if (depth < 4)
        for (size_t w = 0; w < sizeof wrappers / sizeof *wrappers; w++)
            for (int32_t i = 0; i < d->u.q.n; i += 2)
                if (str_eq(m, d->u.q.it[i], wrappers[w]) && m->v[d->u.q.it[i + 1]].kind == V_DICT)
                    return find_sd(m, d->u.q.it[i + 1], depth + 1, out);
    char keys[200] = "", tmp[64];
    size_t o = 0;
    for (int32_t i = 0; i < d->u.q.n && o + 70 < sizeof keys; i += 2) {
        const val *k = &m->v[d->u.q.it[i]];
        if (k->kind == V_STR)
            o += (size_t)snprintf(keys + o, sizeof keys - o, "%s%s", o ? ", " : "",
                                  show(m->b + k->u.s.off, k->u.s.len < 40 ? k->u.s.len : 40, tmp, sizeof tmp));
    }
    return ms_error(MS_EFORMAT, "%s: no state dict found: a dict with non-tensor values and keys [%s]", m->where, keys);
}

ms_status ms_pickle_state_dict(const uint8_t *buf, size_t n, const char *where, int legacy, ms_pkl_sd *out,
                               size_t *used)
{
    memset(out, 0, sizeof *out);
    vm m;
    int32_t root = 0, sd = 0;
    ms_status rc = vm_run(&m, buf, n, where, legacy, &root, used);
    if (rc) goto leave;
    rc = find_sd(&m, root, 0, &sd);
    if (rc) goto leave;
    const val *d = &m.v[sd];
    out->t = calloc((size_t)(d->u.q.n / 2 + 1), sizeof *out->t);
    if (!out->t) {
        rc = ms_error(MS_ENOMEM, "%s: out of memory", where);
        goto leave;
    }
    for (int32_t i = 0; i < d->u.q.n; i += 2) {
        const val *k = &m.v[d->u.q.it[i]];
        if (k->kind != V_STR || k->u.s.len == 0 || k->u.s.len > MAX_NAME || memchr(m.b + k->u.s.off, 0, k->u.s.len)) {
            rc = ms_error(MS_EFORMAT, "%s: a state-dict key is not a valid string", where);
            goto leave;
        }
        const tens *t = &m.te[m.v[d->u.q.it[i + 1]].u.ref];
        const storage *s = &m.sto[t->storage];
        ms_pkl_tensor *o = &out->t[out->n++];
        o->name = dup_str(&m, d->u.q.it[i]);
        o->key = dup_str(&m, s->key);
        if (!o->name || !o->key) {
            rc = ms_error(MS_ENOMEM, "%s: out of memory", where);
            goto leave;
        }
        o->dtype = s->dtype;
        o->storage_numel = s->numel;
        o->offset = t->offset;
        o->ndim = t->ndim;
        memcpy(o->size, t->size, sizeof o->size);
        memcpy(o->stride, t->stride, sizeof o->stride);
    }
    out->sto = calloc((size_t)m.nsto + 1, sizeof *out->sto);
    if (!out->sto) {
        rc = ms_error(MS_ENOMEM, "%s: out of memory", where);
        goto leave;
    }
    for (int32_t i = 0; i < m.nsto; i++) {
        ms_pkl_storage *o = &out->sto[out->nsto++];
        o->dtype = m.sto[i].dtype;
        o->numel = m.sto[i].numel;
        if (!(o->key = dup_str(&m, m.sto[i].key))) {
            rc = ms_error(MS_ENOMEM, "%s: out of memory", where);
            goto leave;
        }
    }
leave:
    if (rc) ms_pkl_sd_free(out);
    vm_free(&m);
    return rc;
}

ms_status ms_pickle_int(const uint8_t *buf, size_t n, const char *where, int64_t *v, size_t *used)
{
    vm m;
    int32_t root = 0;
    ms_status rc = vm_run(&m, buf, n, where, 0, &root, used);
    if (!rc && m.v[root].kind != V_INT) rc = ms_error(MS_EFORMAT, "%s: expected an integer pickle", where);
    if (!rc) *v = m.v[root].u.i;
    vm_free(&m);
    return rc;
}

ms_status ms_pickle_sys_info(const uint8_t *buf, size_t n, const char *where, int *little_endian, size_t *used)
{
    vm m;
    int32_t root = 0;
    ms_status rc = vm_run(&m, buf, n, where, 0, &root, used);
    if (rc) goto leave;
    const val *d = &m.v[root];
    rc = ms_error(MS_EFORMAT, "%s: sys_info has no little_endian flag", where);
    if (d->kind != V_DICT) goto leave;
    for (int32_t i = 0; i < d->u.q.n; i += 2)
        if (str_eq(&m, d->u.q.it[i], "little_endian") && m.v[d->u.q.it[i + 1]].kind == V_BOOL) {
            *little_endian = (int)m.v[d->u.q.it[i + 1]].u.i;
            rc = MS_OK;
            ms_error_clear();
        }
leave:
    vm_free(&m);
    return rc;
}

ms_status ms_pickle_str_list(const uint8_t *buf, size_t n, const char *where, ms_pkl_strlist *out, size_t *used)
{
    out->n = 0;
    out->s = NULL;
    vm m;
    int32_t root = 0;
    ms_status rc = vm_run(&m, buf, n, where, 0, &root, used);
    if (rc) goto leave;
    const val *l = &m.v[root];
    if (l->kind != V_LIST) {
        rc = ms_error(MS_EFORMAT, "%s: expected a list of storage keys", where);
        goto leave;
    }
    out->s = calloc((size_t)l->u.q.n + 1, sizeof(char *));
    if (!out->s) {
        rc = ms_error(MS_ENOMEM, "%s: out of memory", where);
        goto leave;
    }
    for (int32_t i = 0; i < l->u.q.n; i++) {
        if (!valid_key(&m, l->u.q.it[i])) {
            rc = ms_error(MS_EFORMAT, "%s: bad storage key in the key list", where);
            goto leave;
        }
        if (!(out->s[out->n++] = dup_str(&m, l->u.q.it[i]))) {
            rc = ms_error(MS_ENOMEM, "%s: out of memory", where);
            goto leave;
        }
    }
leave:
    if (rc) ms_pkl_strlist_free(out);
    vm_free(&m);
    return rc;
}

void ms_pkl_sd_free(ms_pkl_sd *sd)
{
    for (int i = 0; i < sd->n; i++) {
        free(sd->t[i].name);
        free(sd->t[i].key);
    }
    free(sd->t);
    for (int i = 0; i < sd->nsto; i++) free(sd->sto[i].key);
    free(sd->sto);
    memset(sd, 0, sizeof *sd);
}

void ms_pkl_strlist_free(ms_pkl_strlist *l)
{
    for (int i = 0; i < l->n; i++) free(l->s[i]);
    free(l->s);
    l->n = 0;
    l->s = NULL;
}
