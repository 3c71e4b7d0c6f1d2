/* checkpoints/format.c — the weight-file format dispatch behind ms_sd_load / ms_sd_save (state_dict.h): the file's
 * first bytes pick the reader, the extension picks the writer. The formats (pth.c, safetensors.c) build on
 * state_dict.c; only this file knows them all. */
#include "checkpoints/state_dict.h"

#include <stdio.h>
#include <string.h>

#include "base/fileio.h"
#include "base/path.h"
#include "checkpoints/pth.h"
#include "checkpoints/safetensors.h"

/* Names and keys inside a hostile file may hold control characters: keep the message on one line. */
static ms_status one_line(ms_status rc)
{
    char buf[1024];
    int changed = 0;
    snprintf(buf, sizeof buf, "%s", ms_errmsg());
    for (char *c = buf; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) {
            *c = '?';
            changed = 1;
        }
    if (changed) ms_error(rc, "%s", buf);
    return rc;
}

static ms_status load_map(const char *path, const ms_map *m, ms_state_dict *out)
{
    ms_status rc;
    ms_sd_init(out);
    /* safetensors first: its header length may start with "PK" or 0x80, but byte 8 of a zip (compression method)
     * or of the legacy magic is never '{'. */
    if (m->size >= 9 && m->p[8] == '{') rc = ms_safetensors_read(path, m, out);
    else if (m->size >= 2 && (memcmp(m->p, "PK", 2) == 0 || m->p[0] == 0x80)) rc = ms_pth_read(path, m, out);
    else rc = ms_error(MS_EFORMAT, "%s: not a PyTorch (.pth) or safetensors weight file", path);
    if (rc) ms_sd_free(out);
    return rc ? one_line(rc) : rc;
}

ms_status ms_sd_load(const char *path, ms_state_dict *out)
{
    ms_map m;
    ms_sd_init(out);
    MS_TRY(ms_map_open(path, &m));
    ms_status rc = load_map(path, &m, out);
    ms_map_close(&m);
    return rc;
}

ms_status ms_sd_load_mem(const char *name, const void *data, size_t size, ms_state_dict *out)
{
    ms_map m = {data, size};
    return load_map(name, &m, out);
}

ms_status ms_sd_save(const char *path, const ms_state_dict *sd)
{
    if (ms_str_ends_with(path, ".safetensors")) return ms_safetensors_write(path, sd);
    if (ms_str_ends_with(path, ".pth") || ms_str_ends_with(path, ".pt") || ms_str_ends_with(path, ".bin") ||
        ms_str_ends_with(path, ".ckpt"))
        return ms_pth_write(path, sd, NULL);
    return ms_error(MS_EINVAL, "%s: unknown extension (use .pth, .pt, .bin or .safetensors)", path);
}
