/* tools/cli.c — see cli.h. */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/status.h"

void ms_strlist_push(ms_strlist *l, const char *s)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 8;
        char **v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) return;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = strdup(s);
}

void ms_strlist_free(ms_strlist *l)
{
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

void ms_cli_print_help(const ms_cmd_help *h, const ms_opt *opts)
{
    printf("usage: %s\n\n%s\n\noptions:\n", h->usage, h->summary);
    for (const ms_opt *o = opts; o && o->name; o++) {
        char left[64];
        snprintf(left, sizeof left, "%s%s%s%s", o->name[1] ? "--" : "-", o->name, o->meta ? " " : "", o->meta ? o->meta : "");
        printf("  %-26s %s\n", left, o->help);
    }
    printf("  %-26s %s\n", "--help", "show this help and exit");
    if (h->examples) printf("\nexamples:\n%s\n", h->examples);
}

static int set_value(const ms_opt *o, const char *v)
{
    char *end = NULL;
    errno = 0;
    switch (o->type) {
    case MS_OPT_INT: {
        long x = strtol(v, &end, 10);
        if (errno || *end || end == v || x < -2147483647L || x > 2147483647L) return -1;
        *(int *)o->dst = (int)x;
        return 0;
    }
    case MS_OPT_I64: {
        long long x = strtoll(v, &end, 10);
        if (errno || *end || end == v) return -1;
        *(int64_t *)o->dst = x;
        return 0;
    }
    case MS_OPT_FLOAT: {
        double x = strtod(v, &end);
        if (errno || *end || end == v) return -1;
        *(double *)o->dst = x;
        return 0;
    }
    case MS_OPT_STR: *(const char **)o->dst = v; return 0;
    case MS_OPT_LIST: ms_strlist_push((ms_strlist *)o->dst, v); return 0;
    case MS_OPT_FLAG: return -1;
    }
    return -1;
}

int ms_cli_parse(const ms_cmd_help *h, const ms_opt *opts, int argc, char **argv, ms_strlist *positional)
{
    const char *cmd = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            ms_cli_print_help(h, opts);
            return MS_CLI_EXIT_OK;
        }
        if (a[0] != '-' || !strcmp(a, "-")) {
            if (!positional) {
                fprintf(stderr, "mrisam %s: unexpected argument '%s' (see --help)\n", cmd, a);
                return MS_CLI_USAGE;
            }
            ms_strlist_push(positional, a);
            continue;
        }
        const char *name = a[1] == '-' ? a + 2 : a + 1; /* "-o" is the one short option */
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const ms_opt *o = NULL;
        for (const ms_opt *p = opts; p && p->name; p++)
            if (strlen(p->name) == len && !strncmp(p->name, name, len)) { o = p; break; }
        if (!o) {
            fprintf(stderr, "mrisam %s: unknown option '%s' (see --help)\n", cmd, a);
            return MS_CLI_USAGE;
        }
        if (o->type == MS_OPT_FLAG) {
            if (eq) {
                fprintf(stderr, "mrisam %s: option --%s takes no value\n", cmd, o->name);
                return MS_CLI_USAGE;
            }
            *(int *)o->dst = 1;
            continue;
        }
        const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) {
            fprintf(stderr, "mrisam %s: option --%s needs a value\n", cmd, o->name);
            return MS_CLI_USAGE;
        }
        if (set_value(o, v)) {
            fprintf(stderr, "mrisam %s: bad value '%s' for --%s\n", cmd, v, o->name);
            return MS_CLI_USAGE;
        }
    }
    return MS_CLI_OK;
}

int ms_cli_report(const char *cmd, int st)
{
    if (st == MS_OK) return MS_EXIT_OK;
    const char *m = ms_errmsg();
    fprintf(stderr, "mrisam %s: %s\n", cmd, m[0] ? m : ms_strerror(st));
    if (st == MS_EINTERRUPTED) return MS_EXIT_RESUMABLE;
    if (st == MS_EINVAL) return MS_EXIT_USAGE;
    return MS_EXIT_FAIL;
}

static volatile sig_atomic_t g_stop;

static void on_stop_signal(int sig)
{
    if (g_stop) _exit(128 + sig);
    g_stop = 1;
}

volatile sig_atomic_t *ms_cli_catch_stop(void)
{
    signal(SIGINT, on_stop_signal);
    signal(SIGTERM, on_stop_signal);
    return &g_stop;
}

ms_status ms_cli_dist_open(const char *device, const char *precision, int threads, double timeout_s, double bucket_mb,
                           ms_device *dev, ms_dist **d)
{
    *d = NULL;
    ms_dist_env env;
    ms_device_kind kind;
    int index;
    MS_TRY(ms_dist_env_read(&env));
    MS_TRY(ms_device_parse(device, &kind, &index));
    if (kind == MS_DEV_CUDA && !strchr(device, ':') && env.world > 1) {
        int n = ms_cuda_device_count();
        index = n > 0 ? env.local_rank % n : 0; /* ranks on a node share its GPUs in turn */
    }
    MS_TRY(ms_device_init_at(dev, kind, index, threads));
    MS_TRY(ms_cli_set_precision(dev, precision));
    ms_dist_opts o = {.timeout_s = timeout_s, .bucket_bytes = bucket_mb > 0 ? (size_t)(bucket_mb * 1048576.0) : 0};
    ms_status rc = ms_dist_open(&env, &o, dev, d);
    if (rc) {
        ms_error_prefix("rank %d of %d", env.rank, env.world);
        return rc;
    }
    if (ms_dist_rank(*d) != 0 && !freopen("/dev/null", "w", stdout))
        return ms_error(errno, "rank %d: cannot silence stdout", ms_dist_rank(*d));
    return MS_OK;
}

ms_status ms_cli_set_precision(ms_device *dev, const char *precision)
{
    if (!precision) {
        dev->precision = ms_precision_default(dev->kind);
        return MS_OK;
    }
    return ms_precision_parse(precision, &dev->precision);
}

const char *ms_cli_device_desc(const ms_device *dev, char *buf, size_t n)
{
    if (dev->kind == MS_DEV_CUDA)
        snprintf(buf, n, "cuda:%d %s", dev->cuda_index, ms_precision_name(dev->precision));
    else
        snprintf(buf, n, "cpu %s", ms_precision_name(dev->precision));
    return buf;
}

void ms_cli_test_stop(int64_t step, int rank, const volatile sig_atomic_t *stop)
{
    const char *e = getenv("MRISAM_TEST_STOP");
    long long at;
    int who;
    if (e && sscanf(e, "%lld,%d", &at, &who) == 2 && step == at && who == rank) *(volatile sig_atomic_t *)stop = 1;
}
