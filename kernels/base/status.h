/* kernels/base/status.h — status codes and the per-thread error message.
 *
 * Every fallible library function returns ms_status: 0 is success, > 0 is an errno value, < 0 is one of
 * the MS_E* codes below (a reserved band, as LMDB does, so one ms_strerror() covers both). The one-line,
 * user-facing message ("<path>: <reason>") is kept per thread and read with ms_errmsg(). Library code never
 * exits or aborts; only tools/main.c turns a status into an exit code.
 */
#ifndef MS_STATUS_H
#define MS_STATUS_H

#include <stddef.h>

typedef int ms_status;

enum {
    MS_OK = 0,
    MS_EINVAL = -30700,  /**< invalid argument or usage */
    MS_ENOMEM,           /**< allocation failed */
    MS_EIO,              /**< read/write failed */
    MS_EFORMAT,          /**< malformed or hostile file content */
    MS_EUNSUPPORTED,     /**< valid but not supported (dtype, backend, version) */
    MS_ECORRUPT,         /**< checksum mismatch */
    MS_EDEVICE,          /**< CUDA / cuBLAS / cuDNN failure, or no device */
    MS_EBADSTATE,        /**< handle is unusable after an earlier error */
    MS_EINTERRUPTED,     /**< stopped by a signal; state saved, resumable */
    MS_ENOTFOUND,        /**< key, file or tensor not found */
    MS_ESHAPE,           /**< tensor shape mismatch */
    MS_ELAST
};

#if defined(__GNUC__)
#define MS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MS_PRINTF(a, b)
#endif

/* Short name of a status code ("invalid argument", strerror for errno values). */
const char *ms_strerror(ms_status st);
/* The last message recorded on this thread (never NULL; "" when none). */
const char *ms_errmsg(void);
/* Record a message for code `st` and return `st` (so: return ms_error(MS_EIO, "%s: short read", path);). */
ms_status ms_error(ms_status st, const char *fmt, ...) MS_PRINTF(2, 3);
/* A failed system call on path: records "<path>: <what><strerror> (<ERRNO NAME>)", e.g. "RUN/x.pth: No space left
 * on device (ENOSPC)", and returns err (an errno value). what: "" or a context such as "flush failed: ". */
ms_status ms_error_sys(int err, const char *path, const char *what);
/* Clear this thread's message. */
void ms_error_clear(void);
/* Prefix the current message with "<prefix>: " (adds context while propagating). */
void ms_error_prefix(const char *fmt, ...) MS_PRINTF(1, 2);

#define MS_FAIL(code, ...) return ms_error((code), __VA_ARGS__)
#define MS_FAIL_IF(cond, code, ...)                                                                        \
    do {                                                                                                   \
        if (cond) return ms_error((code), __VA_ARGS__);                                                    \
    } while (0)
/* Propagate a failure; only in functions that hold no resources (otherwise: rc = f(); if (rc) goto leave;). */
#define MS_TRY(expr)                                                                                       \
    do {                                                                                                   \
        ms_status ms_try_rc_ = (expr);                                                                     \
        if (ms_try_rc_ != MS_OK) return ms_try_rc_;                                                        \
    } while (0)

#endif
