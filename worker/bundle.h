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
#include <stdint.h>

#include "worker.h"

typedef struct adl_bundler_s  adl_bundler_t;

/* force_zip64: ZIP64 headers on every entry, not only above 4 GiB. */
adl_bundler_t *adl_bundler_create(adl_worker_t *w, int force_zip64);
void adl_bundler_destroy(adl_bundler_t *b);

/* Something may be claimable (NOTIFY async_dl_lifecycle, the poll). */
void adl_bundler_kick(adl_bundler_t *b);

/* Every tick: claims, lease renewal, retries, freeing ended builds. */
void adl_bundler_tick(adl_bundler_t *b, int64_t now);

/* Shutting down: stop the builds and hand them back. */
void adl_bundler_hand_back(adl_bundler_t *b);

int adl_bundler_busy(const adl_bundler_t *b);

/*
 * The names of the entries: each name reduced to a file name (no folders,
 * no "." or "..", no control characters, no characters Windows refuses,
 * valid UTF-8, at most 200 bytes), then made unique ignoring ASCII case:
 * "a.pdf", "a (1).pdf", ...  names[i] is replaced by a malloc'ed string.
 * -1 on allocation failure.
 */
int adl_bundle_names(char **names, size_t n);

#endif /* ADL_BUNDLE_H */
