/* tools/cmd_inspect.c — `mrisam inspect STORE`: its ID (a set: its shards), counts, bytes, compression ratio, creation parameters, the classes
 * with their pixel counts and a per-volume table (geometry, intensity window, label values, source hash prefix).
 * Read-only. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "data/store.h"

static void print_meta(ms_store *s, const char *name)
{
    char *t = NULL;
    if (ms_store_meta_json(s, name, &t) == MS_OK) printf("%-8s %s\n", name, t);
    free(t);
}

/* Pixels per class over every label record, counted now (the store records which values each volume holds, not
 * how many pixels): one pass that decodes the labelled volumes' slices. */
static ms_status print_classes(ms_store *s)
{
    uint64_t *count = calloc(65536, sizeof *count), n_label = 0;
    ms_store_reader *r = NULL;
    ms_status st = count ? ms_store_reader_new(s, &r) : ms_error(MS_ENOMEM, "out of memory");
    for (uint32_t v = 0; v < ms_store_n_volumes(s) && !st; v++) {
        ms_volume_info vi;
        if ((st = ms_store_volume(s, v, &vi)) || !vi.has_labels) continue;
        for (uint64_t k = vi.first_key; k < vi.first_key + vi.n_slices && !st; k++) {
            ms_slice sl;
            if ((st = ms_store_read(r, k, &sl)) || !sl.label) continue;
            const size_t n = (size_t)sl.height * (size_t)sl.width;
            for (size_t i = 0; i < n; i++) count[sl.label[i]]++;
            n_label++;
        }
    }
    if (!st && n_label) {
        int n_cls = 0;
        for (int c = 0; c < 65536; c++) n_cls += count[c] > 0;
        printf("classes  %d (pixels per class value over %" PRIu64 " label slices)\n", n_cls, n_label);
        for (int c = 0; c < 65536; c++)
            if (count[c]) printf("  %5d %" PRIu64 "\n", c, count[c]);
    }
    if (r) ms_store_reader_free(r);
    free(count);
    return st;
}

static int run(int argc, char **argv)
{
    static const ms_cmd_help h = {"mrisam inspect [options] STORE",
                                  "Prints the store's counts, sizes, compression ratio, creation parameters, label "
                                  "rule and names, the classes with their pixel counts (read from every label "
                                  "record) and one line per volume.",
                                  NULL};
    int no_volumes = 0, json = 0, no_classes = 0;
    int threads = 0;
    const ms_opt opts[] = {{"no-volumes", MS_OPT_FLAG, &no_volumes, NULL, "leave out the per-volume table"},
                           {"no-classes", MS_OPT_FLAG, &no_classes, NULL,
                            "leave out the class pixel counts (they decode every label record)"},
                           {"json", MS_OPT_FLAG, &json, NULL, "per-volume records as raw JSON lines"},
                           {"threads", MS_OPT_INT, &threads, "N", "accepted for uniformity (this command is I/O-bound and single-threaded)"},
                           {0}};
    ms_strlist pos = {0};
    int rc = ms_cli_parse(&h, opts, argc, argv, &pos);
    if (rc) {
        ms_strlist_free(&pos);
        return rc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    }
    if (pos.n != 1) {
        fprintf(stderr, "mrisam inspect: expected one STORE\n");
        ms_strlist_free(&pos);
        return MS_EXIT_USAGE;
    }
    ms_store *s = NULL;
    ms_status st = ms_store_open(pos.v[0], 4, &s);
    if (st) {
        ms_strlist_free(&pos);
        return ms_cli_report("inspect", st);
    }
    ms_store_sizes z;
    st = ms_store_sizes_get(s, &z);
    if (!st) {
        printf("store    %s\n", pos.v[0]);
        if (ms_store_n_shards(s)) {
            printf("set      %d shards, ID %s (ingest --shard K/%d; keys in source order)\n", ms_store_n_shards(s),
                   ms_store_id(s), ms_store_n_shards(s));
            for (int k = 0; k < ms_store_n_shards(s); k++) printf("shard    %s\n", ms_store_shard_dir(s, k));
        } else if (ms_store_id(s))
            printf("id       %s\n", ms_store_id(s));
        print_meta(s, "format");
        print_meta(s, "params");
        print_meta(s, "created");
        print_meta(s, "counts");
        printf("volumes  %u\nslices   %" PRIu64 " records, %.2f MB compressed, %.2f MB raw, ratio %.2f\n",
               ms_store_n_volumes(s), z.slice_records, z.slice_bytes / 1e6, z.slice_raw_bytes / 1e6,
               z.slice_bytes ? (double)z.slice_raw_bytes / (double)z.slice_bytes : 0.0);
        printf("labels   %" PRIu64 " records, %.2f MB compressed, %.2f MB raw, ratio %.2f\n", z.label_records,
               z.label_bytes / 1e6, z.label_raw_bytes / 1e6,
               z.label_bytes ? (double)z.label_raw_bytes / (double)z.label_bytes : 0.0);
        printf("file     %.2f MB used\n", z.file_bytes / 1e6);
        print_meta(s, "label_rule");
        const char *ln = ms_store_label_names(s);
        if (ln) printf("label names:\n%s%s", ln, ln[0] && ln[strlen(ln) - 1] != '\n' ? "\n" : "");
        if (!no_classes && z.label_records) st = print_classes(s);
    }
    if (!st && !no_volumes) {
        if (!json)
            printf("%5s %10s %6s %9s %-22s %-8s %-6s %-8s %-21s %-12s %s\n", "id", "first_key", "slices", "HxW",
                   "spacing (mm)", "axis", "geom", "dtype", "window (offset+scale)", "source", "labels");
        for (uint32_t i = 0; i < ms_store_n_volumes(s) && !st; i++) {
            char *t = NULL;
            if ((st = ms_store_volume_json(s, i, &t))) break;
            if (json) {
                printf("%s\n", t);
                free(t);
                continue;
            }
            cJSON *j = cJSON_Parse(t);
            free(t);
            ms_volume_info v;
            if ((st = ms_store_volume(s, i, &v))) {
                cJSON_Delete(j);
                break;
            }
            const cJSON *ax = cJSON_GetObjectItem(j, "axis"), *g = cJSON_GetObjectItem(j, "geometry"),
                        *dt = cJSON_GetObjectItem(j, "source_dtype");
            char hw[32], sp[48], win[48], labs[256] = "-";
            snprintf(hw, sizeof hw, "%dx%d", v.height, v.width);
            snprintf(sp, sizeof sp, "%.3gx%.3gx%.3g", v.spacing[0], v.spacing[1], v.spacing[2]);
            snprintf(win, sizeof win, "%.4g+%.4g", v.intensity_offset, v.intensity_scale);
            if (v.has_labels) {
                int o = 0;
                for (int k = 0; k < v.n_label_values && o < (int)sizeof labs - 16; k++)
                    o += snprintf(labs + o, sizeof labs - (size_t)o, "%s%u", k ? "," : "", v.label_values[k]);
                if (o >= (int)sizeof labs - 16)
                    snprintf(labs + o, sizeof labs - (size_t)o, ",... (%d)", v.n_label_values);
            }
            printf("%5u %10" PRIu64 " %6u %9s %-22s %-8s %-6s %-8s %-21s %-12.12s %s\n", v.id, v.first_key, v.n_slices,
                   hw, sp, cJSON_IsString(ax) ? ax->valuestring : "?", cJSON_IsString(g) ? g->valuestring : "-",
                   cJSON_IsString(dt) ? dt->valuestring : "-", win, v.source_hash, labs);
            cJSON_Delete(j);
        }
    }
    ms_store_close(s);
    ms_strlist_free(&pos);
    return ms_cli_report("inspect", st);
}

const ms_command ms_cmd_inspect = {"inspect", "counts, sizes, parameters and volumes of a slice store", run};
