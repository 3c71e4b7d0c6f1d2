/* tools/cmd_version.c — `mrisam version`: version and the backends this build has. */
#include <stdio.h>

#include "base/device.h"
#include "cli.h"

static int run(int argc, char **argv)
{
    static const ms_cmd_help h = {"mrisam version", "Print the version and which backends this build has.", NULL};
    static const ms_opt opts[] = {{0}};
    int rc = ms_cli_parse(&h, opts, argc, argv, NULL);
    if (rc) return rc == MS_CLI_EXIT_OK ? 0 : 2;
    printf("mrisam %s\ncpu: yes\ncuda: %s\n", MS_VERSION,
#ifdef MS_HAVE_CUDA
           ms_cuda_available() ? "yes (GPU visible)" : "built, no GPU visible"
#else
           "not built"
#endif
    );
    return 0;
}

const ms_command ms_cmd_version = {"version", "print the version and the backends of this build", run};
