/* tools/cmd_export.c — `mrisam export STORE --key K -o FILE.png|FILE.npy [--label] [--stored]`: one slice to look at.
 * PNG: 8-bit, round(pixel · 255 / 65535) of the normalised pixel the loader reads; labels as their values (clipped to
 * 255). NPY: the normalised uint16 array (H, W), '<u2', C order; with --stored (layout-2 stores) the stored values
 * instead, '<i2' or '<u2' as the volume keeps them (original = slope · stored + inter, docs/FORMATS.md).
 * --label writes the label slice beside it as FILE_label.png/.npy. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/fileio.h"
#include "base/path.h"
#include "cli.h"
#include "data/store.h"
#include "image_io.h"

/* v: 16-bit values (descr '<u2', or '<i2' for int16 bits) */
static ms_status write_npy16(const char *path, const uint16_t *v, int h, int w, const char *descr)
{
    char hdr[128];
    int n = snprintf(hdr, sizeof hdr, "{'descr': '%s', 'fortran_order': False, 'shape': (%d, %d), }", descr, h, w);
    int total = 10 + n + 1, pad = (64 - total % 64) % 64;
    size_t hl = (size_t)(n + pad + 1), len = 10 + hl + (size_t)h * w * 2;
    unsigned char *b = malloc(len);
    if (!b) return ms_error(MS_ENOMEM, "%s: out of memory", path);
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hl & 255), (unsigned char)(hl >> 8)};
    memcpy(b, pre, 10);
    memcpy(b + 10, hdr, (size_t)n);
    memset(b + 10 + n, ' ', (size_t)pad);
    b[10 + hl - 1] = '\n';
    for (size_t i = 0; i < (size_t)h * w; i++) { /* little-endian whatever the host */
        b[10 + hl + 2 * i] = (unsigned char)(v[i] & 255);
        b[10 + hl + 2 * i + 1] = (unsigned char)(v[i] >> 8);
    }
    /* atomically: a full disk leaves no half-written file under the name (the message names the file and errno) */
    ms_status rc = ms_write_file_atomic(path, b, len);
    free(b);
    return rc;
}

static ms_status write_one(const char *path, const uint16_t *v, int h, int w, int is_label)
{
    if (ms_str_ends_with(path, ".npy")) return write_npy16(path, v, h, w, "<u2");
    uint8_t *p = malloc((size_t)h * w);
    if (!p) return ms_error(MS_ENOMEM, "out of memory");
    for (size_t i = 0; i < (size_t)h * w; i++)
        p[i] = is_label ? (uint8_t)(v[i] > 255 ? 255 : v[i]) : (uint8_t)((v[i] * 255u + 32767u) / 65535u);
    ms_status st = ms_png_write_u8(path, p, w, h, 1);
    free(p);
    return st;
}

static int run(int argc, char **argv)
{
    static const ms_cmd_help h = {"mrisam export STORE --key K -o FILE.png|FILE.npy [--label] [--stored]",
                                  "Writes slice K (decimal key, from 0 in ingest order) as the loader reads it: an "
                                  "8-bit PNG (pixel x 255 / 65535) or the normalised uint16 array in .npy; --stored "
                                  "writes the values the store keeps (.npy, int16 or uint16; layout-2 stores); "
                                  "--label adds FILE_label.*.",
                                  NULL};
    int64_t key = -1;
    const char *out = NULL;
    int label = 0, stored = 0;
    int threads = 0;
    const ms_opt opts[] = {{"key", MS_OPT_I64, &key, "K", "slice key"},
                           {"o", MS_OPT_STR, &out, "FILE", ".png or .npy"},
                           {"label", MS_OPT_FLAG, &label, NULL, "also write the label slice as FILE_label.png/.npy"},
                           {"stored", MS_OPT_FLAG, &stored, NULL,
                            "the stored values, not the normalised pixels (.npy only; layout-2 stores)"},
                           {"threads", MS_OPT_INT, &threads, "N", "accepted for uniformity (this command is I/O-bound and single-threaded)"},
                           {0}};
    ms_strlist pos = {0};
    int rc = ms_cli_parse(&h, opts, argc, argv, &pos);
    if (rc) {
        ms_strlist_free(&pos);
        return rc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    }
    size_t ol = out ? strlen(out) : 0;
    if (pos.n != 1 || key < 0 || !out || ol < 5 ||
        (!ms_str_ends_with(out, ".png") && !ms_str_ends_with(out, ".npy")) ||
        (stored && !ms_str_ends_with(out, ".npy"))) {
        fprintf(stderr, "mrisam export: usage: %s\n", h.usage);
        ms_strlist_free(&pos);
        return MS_EXIT_USAGE;
    }
    ms_store *s = NULL;
    ms_store_reader *r = NULL;
    ms_slice sl;
    char *lpath = NULL;
    ms_status st = ms_store_open(pos.v[0], 1, &s);
    if (!st) st = ms_store_reader_new(s, &r);
    if (!st) st = ms_store_read(r, (uint64_t)key, &sl);
    if (!st && stored && !sl.stored)
        st = ms_error(MS_EUNSUPPORTED, "%s: slice %" PRId64 " is from a layout-1 store, which keeps only normalised "
                      "pixels (export it without --stored)", pos.v[0], key);
    if (!st && stored)
        st = write_npy16(out, sl.stored, sl.height, sl.width, sl.stored_type == MS_STORED_I16 ? "<i2" : "<u2");
    else if (!st)
        st = write_one(out, sl.pixels, sl.height, sl.width, 0);
    if (!st && label) {
        if (!sl.label)
            st = ms_error(MS_ENOTFOUND, "%s: slice %" PRId64 " has no label", pos.v[0], key);
        else {
            lpath = malloc(ol + 8);
            snprintf(lpath, ol + 8, "%.*s_label%s", (int)(ol - 4), out, out + ol - 4);
            st = write_one(lpath, sl.label, sl.height, sl.width, 1);
        }
    }
    free(lpath);
    ms_store_reader_free(r);
    ms_store_close(s);
    ms_strlist_free(&pos);
    return ms_cli_report("export", st);
}

const ms_command ms_cmd_export = {"export", "write one slice (and its label) of a store as PNG or NPY", run};
