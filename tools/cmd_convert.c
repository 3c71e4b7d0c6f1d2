/* tools/cmd_convert.c — `mrisam convert IN OUT`: copy a weight file between PyTorch .pth (zip or legacy, read
 * without executing pickle code) and .safetensors. The input format is detected from the content, the output
 * format from OUT's extension; tensors keep their names, order, dtype and values bit for bit. */
#include <stdio.h>

#include "checkpoints/state_dict.h"
#include "cli.h"

static int run(int argc, char **argv)
{
    static const ms_cmd_help h = {
        "mrisam convert [--list] IN [OUT]",
        "Convert model weights between PyTorch .pth/.pt/.bin (zip format of torch >= 1.6 or the legacy format) and "
        ".safetensors. IN's format is read from its content; OUT's from its extension (.safetensors, or .pth/.pt/.bin "
        "for the torch zip format that torch.load and SAM's builder read). Wrapped checkpoints ({\"model\": ...}, "
        "{\"state_dict\": ...}) are unwrapped. The input's pickle is never executed: only tensors and plain "
        "containers are accepted. OUT is written to a temporary file and renamed, so it is never left half-written.",
        "  mrisam convert sam_vit_b_01ec64.pth sam_vit_b.safetensors\n"
        "  mrisam convert --list model.safetensors"};
    int list = 0;
    int threads = 0;
    const ms_opt opts[] = {{"list", MS_OPT_FLAG, &list, NULL, "print name, dtype and shape of every tensor in IN"},
                           {"threads", MS_OPT_INT, &threads, "N", "accepted for uniformity (this command is I/O-bound and single-threaded)"},
                           {0}};
    ms_strlist pos = {0};
    int rc = ms_cli_parse(&h, opts, argc, argv, &pos);
    if (rc) {
        ms_strlist_free(&pos);
        return rc == MS_CLI_EXIT_OK ? MS_EXIT_OK : MS_EXIT_USAGE;
    }
    if (pos.n != 2 && !(list && pos.n == 1)) {
        fprintf(stderr, "mrisam convert: expected IN and OUT (see mrisam convert --help)\n");
        ms_strlist_free(&pos);
        return MS_EXIT_USAGE;
    }
    ms_state_dict sd;
    ms_status st = ms_sd_load(pos.v[0], &sd);
    if (!st) {
        size_t bytes = 0;
        for (int i = 0; i < sd.n; i++) {
            bytes += ms_tensor_bytes(&sd.e[i].t);
            if (list) {
                char s[160];
                printf("%-60s %-5s %s\n", sd.e[i].name, ms_dtype_name(sd.e[i].t.dtype),
                       ms_shape_str(sd.e[i].t.shape, sd.e[i].t.ndim, s, sizeof s));
            }
        }
        if (pos.n == 2) st = ms_sd_save(pos.v[1], &sd);
        if (!st)
            printf("%s%s%s: %d tensors, %zu bytes\n", pos.v[0], pos.n == 2 ? " -> " : "", pos.n == 2 ? pos.v[1] : "",
                   sd.n, bytes);
        ms_sd_free(&sd);
    }
    ms_strlist_free(&pos);
    return st ? ms_cli_report("convert", st) : MS_EXIT_OK;
}

const ms_command ms_cmd_convert = {"convert", "convert weights between .pth and .safetensors", run};
