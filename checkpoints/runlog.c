/* checkpoints/runlog.c — see runlog.h. The protobuf encoding is written by hand: Event{1: wall_time double,
 * 2: step int64, 3: file_version string, 5: summary{1: value{1: tag string, 2: simple_value float}},
 * 6: session_log{1: status enum, START = 1}}. */
#include "runlog.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "base/clock.h"
#include "rundir.h"

uint32_t ms_crc32c(uint32_t crc, const void *data, size_t n)
{
    const unsigned char *p = data;
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static uint32_t masked_crc(const void *d, size_t n)
{
    uint32_t c = ms_crc32c(0, d, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

static size_t put_varint(unsigned char *b, uint64_t v)
{
    size_t n = 0;
    do {
        unsigned char c = v & 0x7f;
        v >>= 7;
        b[n++] = c | (v ? 0x80 : 0);
    } while (v);
    return n;
}

static ms_status write_record(FILE *f, const char *path, const unsigned char *data, size_t n)
{
    unsigned char hdr[12];
    uint64_t len = n;
    memcpy(hdr, &len, 8); /* little-endian hosts only, as the rest of mrisam */
    uint32_t c = masked_crc(hdr, 8);
    memcpy(hdr + 8, &c, 4);
    uint32_t dc = masked_crc(data, n);
    if (fwrite(hdr, 1, 12, f) != 12 || fwrite(data, 1, n, f) != n || fwrite(&dc, 1, 4, f) != 4 || fflush(f))
        return ms_error_sys(errno, path, "");
    return MS_OK;
}

/* Event with wall_time, step and either a file_version, one scalar, or (tag NULL too) a SessionLog START. */
static ms_status write_event(FILE *f, const char *path, int64_t step, const char *file_version, const char *tag,
                             float value)
{
    unsigned char b[600];
    size_t n = 0;
    double wt = ms_wall_s();
    b[n++] = 0x09;
    memcpy(b + n, &wt, 8);
    n += 8;
    b[n++] = 0x10;
    n += put_varint(b + n, (uint64_t)step);
    if (!file_version && !tag) {
        static const unsigned char start[] = {0x32, 0x02, 0x08, 0x01}; /* session_log{status: START} */
        memcpy(b + n, start, sizeof start);
        n += sizeof start;
    } else if (file_version) {
        size_t l = strlen(file_version);
        b[n++] = 0x1a;
        n += put_varint(b + n, l);
        memcpy(b + n, file_version, l);
        n += l;
    } else {
        size_t tl = strlen(tag);
        if (tl > 400) tl = 400;
        size_t vlen = 1 + 1 + tl + 1 + 4; /* value: tag field + simple_value field (tl < 128: 1-byte length) */
        if (tl >= 128) vlen++;
        size_t slen = 1 + (vlen >= 128 ? 2 : 1) + vlen;
        b[n++] = 0x2a;
        n += put_varint(b + n, slen);
        b[n++] = 0x0a;
        n += put_varint(b + n, vlen);
        b[n++] = 0x0a;
        n += put_varint(b + n, tl);
        memcpy(b + n, tag, tl);
        n += tl;
        b[n++] = 0x15;
        memcpy(b + n, &value, 4);
        n += 4;
    }
    return write_record(f, path, b, n);
}

ms_status ms_runlog_open(ms_runlog *l, const char *run)
{
    memset(l, 0, sizeof *l);
    char p[MS_PATH_MAX];
    MS_TRY(ms_mkdirs(run));
    MS_TRY(ms_path_join(l->jsonl_path, run, "log.jsonl"));
    l->jsonl = fopen(l->jsonl_path, "a");
    if (!l->jsonl) return ms_error(errno, "%s: %s", l->jsonl_path, strerror(errno));
    ms_status rc = ms_path_join(p, run, "tb");
    if (!rc) rc = ms_mkdirs(p);
    if (!rc) rc = ms_path_fmt(l->tb_path, "%s/tb/events.out.tfevents.%lld.mrisam", run, (long long)time(NULL));
    if (!rc) {
        l->tb = fopen(l->tb_path, "ab");
        if (!l->tb) rc = ms_error(errno, "%s: %s", l->tb_path, strerror(errno));
    }
    if (!rc) rc = write_event(l->tb, l->tb_path, 0, "brain.Event:2", NULL, 0);
    if (rc) ms_runlog_close(l);
    return rc;
}

void ms_runlog_close(ms_runlog *l)
{
    if (l->jsonl) fclose(l->jsonl);
    if (l->tb) fclose(l->tb);
    l->jsonl = l->tb = NULL;
}

/* 1 when a complete log.jsonl line (without its newline) is one a run continuing from `from` supersedes */
static int superseded(const char *line, size_t n, int64_t from)
{
    cJSON *j = cJSON_ParseWithLength(line, n);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "step");
    int drop = cJSON_IsNumber(s) && s->valuedouble >= (double)from;
    cJSON_Delete(j);
    return drop;
}

ms_status ms_runlog_rewind(ms_runlog *l, int64_t from)
{
    char *txt;
    size_t len, kept = 0;
    if (fflush(l->jsonl)) return ms_error_sys(errno, l->jsonl_path, "");
    MS_TRY(ms_read_file(l->jsonl_path, (size_t)1 << 34, &txt, &len));
    for (size_t i = 0; i < len;) { /* kept lines move to the front, byte for byte */
        char *nl = memchr(txt + i, '\n', len - i);
        if (!nl) break; /* torn by a kill mid-line: the resumed run would glue its first line to it */
        size_t n = (size_t)(nl - (txt + i)) + 1;
        if (!superseded(txt + i, n - 1, from)) {
            memmove(txt + kept, txt + i, n);
            kept += n;
        }
        i += n;
    }
    ms_status rc = kept == len ? MS_OK : ms_write_file_atomic(l->jsonl_path, txt, kept);
    free(txt);
    MS_TRY(rc);
    if (kept != len) { /* the open handle still appends to the replaced file */
        fclose(l->jsonl);
        l->jsonl = fopen(l->jsonl_path, "a");
        if (!l->jsonl) return ms_error(errno, "%s: %s", l->jsonl_path, strerror(errno));
    }
    return write_event(l->tb, l->tb_path, from, NULL, NULL, 0);
}

ms_status ms_runlog_json(ms_runlog *l, const char *obj)
{
    if (fputs(obj, l->jsonl) < 0 || fputc('\n', l->jsonl) < 0 || fflush(l->jsonl))
        return ms_error_sys(errno, l->jsonl_path, "");
    return MS_OK;
}

ms_status ms_runlog_scalar(ms_runlog *l, const char *tag, int64_t step, double value)
{
    return write_event(l->tb, l->tb_path, step, NULL, tag, (float)value);
}
