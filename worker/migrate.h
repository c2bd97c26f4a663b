/*
 * migrate: applies the schema migrations embedded from sql/ (see
 * adl_migrations.h), in order, each in its own transaction, recording
 * each version in async_dl_schema_migrations.  Serialised between
 * processes by a session advisory lock, so any number of workers may
 * start at once; applying an already current schema does nothing.
 */
#ifndef ADL_MIGRATE_H
#define ADL_MIGRATE_H

#include <libpq-fe.h>

#include "settings.h"

/* The advisory lock key: "async-dl" in ASCII. */
#define ADL_MIGRATE_LOCK  0x6173796e632d646cLL

/* Returns 0, or -1 after logging why. */
int adl_migrate(PGconn *conn);

/* Stores the settings the schema reads (the last worker started wins):
 * the TTLs (ASYNC_DL_TTL_COMPLETED, _FAILED), read when a job ends, and the
 * claim limits (ASYNC_DL_PER_HOST_CONCURRENCY, _PER_OWNER_), read to say
 * why a file waits.  0, or -1 after logging why. */
int adl_migrate_store_settings(PGconn *conn, const adl_settings_t *s);

#endif /* ADL_MIGRATE_H */
