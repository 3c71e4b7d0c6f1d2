/* data/dicom.h — DICOM series for `mrisam ingest`: recognised by content, identified by a hash of their files,
 * converted by the real converter (dcm2niix, found on PATH at run time) into a private temporary folder.
 *
 * mrisam parses no DICOM itself. Nothing from the headers reaches the caller: the converter writes files named
 * "vol*.nii" (a fixed pattern, no header fields), no BIDS sidecar, and its stdout and stderr (which repeat header
 * text: protocol names, descriptions) go to a file inside the temporary folder that is never read and is removed
 * with it. Its messages name only the series' folder and the exit status.
 */
#ifndef MS_DICOM_H
#define MS_DICOM_H

#include <signal.h>

#include "base/status.h"

/* 1 when the file at path holds "DICM" at byte 128 (a DICOM Part 10 file); only its first 132 bytes are read. 0 for
 * anything else, a file that cannot be read included. */
int ms_dicom_is_file(const char *path);

/* The series' identity: SHA-256 over "mrisam-dicom-series" and NUL, then for each file in the order given (callers
 * sort them by name) its length as 8 bytes little-endian and its bytes. 64 hex characters and a NUL into out. */
ms_status ms_dicom_series_hash(const char *const *files, int n, char out[65]);

/* The converter's path: the first executable regular file named dcm2niix in $PATH's folders (an empty entry is the
 * current folder). Missing: MS_ENOTFOUND, "<series>: dcm2niix not found; install Debian's dcm2niix package". */
ms_status ms_dicom_find_converter(const char *series, char *out, size_t cap);

typedef struct ms_dicom_conv {
    char *dir;  /* the private temporary folder (mode 0700), NULL once removed */
    char **nii; /* the NIfTI files the converter wrote, sorted by name (full paths inside dir) */
    int n;
} ms_dicom_conv;

/* Converts the n files of one series (`series` names it in messages: its folder, or the file given) with dcm2niix
 * into a fresh temporary folder under $TMPDIR (or /tmp): the files are linked into an input folder of their own so
 * that nothing else beside them is converted; output uncompressed, no sidecar, names vol*.nii. The converter runs
 * without a shell (posix_spawn), with HOME set to the temporary folder (no user defaults file) and stdin from
 * /dev/null. `stop` (may be NULL) is polled: when set the converter is sent SIGTERM and MS_EINTERRUPTED returned.
 * Errors: "<series>: dcm2niix failed (exit N)", "... (killed by signal N)", "<series>: dcm2niix wrote no NIfTI
 * file". On failure the temporary folder is already removed and c holds nothing; on success the caller reads
 * c->nii and then calls ms_dicom_conv_free. */
ms_status ms_dicom_convert(const char *series, const char *const *files, int n, volatile sig_atomic_t *stop,
                           ms_dicom_conv *c);

/* Removes the temporary folder and its files, frees the list (safe on a zeroed or freed c). */
ms_status ms_dicom_conv_free(ms_dicom_conv *c);

#endif
