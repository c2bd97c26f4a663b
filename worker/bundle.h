/*
 * bundle: the zip of a multi-file job's stored files (sql/004_lifecycle.sql
 * starts it when such a job completes).  A bundle is claimed like a file,
 * under a lease renewed while it is built; a crashed builder's bundle is
 * claimed again after its lease and built again from the start, under the
 * same key, so it is stored once.
 *
 * Built on the worker's event loop, in constant memory: each stored object
 * is read back in ranges (signed GETs on the storage multi handle), fed to
 * libarchive's zip writer (store: no compression), whose output fills the
 * parts of a multipart upload (one PUT when it all fits in a part).
 * libarchive only copies and CRCs what it is given, a range at a time, so
 * the loop is never held for long; no thread is needed.
 */
#ifndef ADL_BUNDLE_H
#define ADL_BUNDLE_H

#include <stddef.h>

#include "task.h"

/* The kind: claims, lease renewal, retries, freeing ended builds (every
 * tick); ASYNC_DL_BUNDLE_ZIP64 puts ZIP64 headers on every entry. */
extern const adl_task_ops_t  adl_bundles_ops;

#endif /* ADL_BUNDLE_H */
