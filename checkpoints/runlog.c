/* checkpoints/runlog.c — see runlog.h. The protobuf encoding is written by hand: Event{1: wall_time double,
 * 2: step int64, 3: file_version string, 5: summary{1: value{1: tag string, 2: simple_value float}}}. */
#include "runlog.h"

#include <errno.h>
#include <string.h>
#include <time.h>

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

static ms_status write_record(FILE *f, const unsigned char *data, size_t n)
{
    unsigned char hdr[12];
    uint64_t len = n;
    memcpy(hdr, &len, 8); /* little-endian hosts only, as the rest of mrisam */
    uint32_t c = masked_crc(hdr, 8);
    memcpy(hdr + 8, &c, 4);
    uint32_t dc = masked_crc(data, n);
    if (fwrite(hdr, 1, 12, f) != 12 || fwrite(data, 1, n, f) != n || fwrite(&dc, 1, 4, f) != 4 || fflush(f))
        return ms_error(MS_EIO, "tensorboard event file: write failed");
    return MS_OK;
}

/* Event with wall_time, step and either a file_version or one scalar. */
static ms_status write_event(FILE *f, int64_t step, const char *file_version, const char *tag, float value)
{
    unsigned char b[600];
    size_t n = 0;
    double wt = ms_wall_s();
    b[n++] = 0x09;
    memcpy(b + n, &wt, 8);
    n += 8;
    b[n++] = 0x10;
    n += put_varint(b + n, (uint64_t)step);
    if (file_version) {
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
    return write_record(f, b, n);
}

ms_status ms_runlog_open(ms_runlog *l, const char *run)
{
    memset(l, 0, sizeof *l);
    char p[MS_PATH_MAX];
    MS_TRY(ms_mkdirs(run));
    MS_TRY(ms_path_join(p, run, "log.jsonl"));
    l->jsonl = fopen(p, "a");
    if (!l->jsonl) return ms_error(errno, "%s: %s", p, strerror(errno));
    ms_status rc = ms_path_join(p, run, "tb");
    if (!rc) rc = ms_mkdirs(p);
    if (!rc) rc = ms_path_fmt(p, "%s/tb/events.out.tfevents.%lld.mrisam", run, (long long)time(NULL));
    if (!rc) {
        l->tb = fopen(p, "ab");
        if (!l->tb) rc = ms_error(errno, "%s: %s", p, strerror(errno));
    }
    if (!rc) rc = write_event(l->tb, 0, "brain.Event:2", NULL, 0);
    if (rc) ms_runlog_close(l);
    return rc;
}

void ms_runlog_close(ms_runlog *l)
{
    if (l->jsonl) fclose(l->jsonl);
    if (l->tb) fclose(l->tb);
    l->jsonl = l->tb = NULL;
}

ms_status ms_runlog_json(ms_runlog *l, const char *obj)
{
    if (fputs(obj, l->jsonl) < 0 || fputc('\n', l->jsonl) < 0 || fflush(l->jsonl))
        return ms_error(MS_EIO, "log.jsonl: write failed");
    return MS_OK;
}

ms_status ms_runlog_scalar(ms_runlog *l, const char *tag, int64_t step, double value)
{
    return write_event(l->tb, step, NULL, tag, (float)value);
}
