/* kernels/base/status.c — see status.h. The message buffer is thread-local: the only process-wide state. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strerrorname_np */
#endif
#include "status.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char tls_msg[1024];

const char *ms_strerror(ms_status st)
{
    switch (st) {
    case MS_OK: return "ok";
    case MS_EINVAL: return "invalid argument";
    case MS_ENOMEM: return "out of memory";
    case MS_EIO: return "I/O error";
    case MS_EFORMAT: return "bad file format";
    case MS_EUNSUPPORTED: return "unsupported";
    case MS_ECORRUPT: return "corrupt data";
    case MS_EDEVICE: return "device error";
    case MS_EBADSTATE: return "handle unusable after an earlier error";
    case MS_EINTERRUPTED: return "interrupted";
    case MS_ENOTFOUND: return "not found";
    case MS_ESHAPE: return "shape mismatch";
    default: break;
    }
    if (st > 0) return strerror(st);
    return "unknown error";
}

const char *ms_errmsg(void) { return tls_msg; }

void ms_error_clear(void) { tls_msg[0] = 0; }

ms_status ms_error(ms_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_msg, sizeof tls_msg, fmt, ap);
    va_end(ap);
    return st;
}

ms_status ms_error_sys(int err, const char *path, const char *what)
{
    if (err <= 0) err = EIO; /* a failure that set no errno */
    const char *name = strerrorname_np(err);
    return ms_error(err, "%s: %s%s (%s)", path, what, strerror(err), name ? name : "?");
}

void ms_error_prefix(const char *fmt, ...)
{
    char pre[512], old[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, tls_msg, sizeof old);
    snprintf(tls_msg, sizeof tls_msg, "%.500s: %.500s", pre, old);
}
