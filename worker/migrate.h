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

/* Stores this worker's TTLs (ASYNC_DL_TTL_COMPLETED, _FAILED), which the
 * schema reads when a job ends (the last worker started wins).  0, or -1
 * after logging why. */
int adl_migrate_store_ttls(PGconn *conn, const adl_settings_t *s);

#endif /* ADL_MIGRATE_H */
