/*
 * migrate: runs at start (blocking: nothing else is going on yet) and for
 * `async-dl-worker --migrate`; then, at start, stores this worker's TTLs
 * (for the expiry sweep) and claim limits (for a file's "waiting").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adl_migrations.h"
#include "log.h"
#include "migrate.h"

static int
exec_ok(PGconn *conn, const char *sql, const char *what)
{
    PGresult        *res = PQexec(conn, sql);
    ExecStatusType   st = PQresultStatus(res);

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        adl_log_error(NULL, -1, "migrate: %s failed: %s", what,
                      PQresultErrorMessage(res));
        PQclear(res);
        return -1;
    }
    PQclear(res);
    return 0;
}

static int
applied(PGconn *conn, int version, int *yes)
{
    char         v[16];
    const char  *params[1] = { v };
    PGresult    *res;

    snprintf(v, sizeof(v), "%d", version);
    res = PQexecParams(conn, "SELECT 1 FROM async_dl_schema_migrations "
                       "WHERE version = $1", 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_error(NULL, -1, "migrate: reading versions failed: %s",
                      PQresultErrorMessage(res));
        PQclear(res);
        return -1;
    }
    *yes = PQntuples(res) > 0;
    PQclear(res);
    return 0;
}

static int
apply_one(PGconn *conn, const adl_migration_t *m)
{
    char         v[16];
    const char  *params[2] = { v, m->name };
    PGresult    *res;

    if (exec_ok(conn, "BEGIN", "BEGIN") != 0) {
        return -1;
    }
    if (exec_ok(conn, m->sql, m->name) != 0) {
        goto rollback;
    }
    snprintf(v, sizeof(v), "%d", m->version);
    res = PQexecParams(conn, "INSERT INTO async_dl_schema_migrations "
                       "(version, name) VALUES ($1, $2)", 2, NULL, params,
                       NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        adl_log_error(NULL, -1, "migrate: recording %s failed: %s", m->name,
                      PQresultErrorMessage(res));
        PQclear(res);
        goto rollback;
    }
    PQclear(res);
    if (exec_ok(conn, "COMMIT", "COMMIT") != 0) {
        return -1;
    }
    adl_log_info(NULL, -1, "migrate: applied %s", m->name);
    return 0;

rollback:
    PQclear(PQexec(conn, "ROLLBACK"));
    return -1;
}

int
adl_migrate(PGconn *conn)
{
    const adl_migration_t  *m;
    char                    lock[80];
    int                     rc = -1, yes, n = 0;

    snprintf(lock, sizeof(lock), "SELECT pg_advisory_lock(%lld)",
             (long long) ADL_MIGRATE_LOCK);
    if (exec_ok(conn, "SET client_min_messages = warning", "SET") != 0
        || exec_ok(conn, lock, "taking the advisory lock") != 0)
    {
        return -1;
    }

    if (exec_ok(conn, "CREATE TABLE IF NOT EXISTS async_dl_schema_migrations"
                " (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())",
                "creating async_dl_schema_migrations") != 0)
    {
        goto unlock;
    }

    for (m = adl_migrations; m->sql != NULL; m++) {
        if (applied(conn, m->version, &yes) != 0) {
            goto unlock;
        }
        if (yes) {
            continue;
        }
        if (apply_one(conn, m) != 0) {
            goto unlock;
        }
        n++;
    }
    adl_log_info(NULL, -1, "migrate: schema is current (%d applied now)", n);
    rc = 0;

unlock:
    snprintf(lock, sizeof(lock), "SELECT pg_advisory_unlock(%lld)",
             (long long) ADL_MIGRATE_LOCK);
    if (exec_ok(conn, lock, "releasing the advisory lock") != 0) {
        rc = -1;
    }
    return rc;
}

static int
store(PGconn *conn, const char *sql, int64_t a, int64_t b, const char *what)
{
    char         x[24], y[24];
    const char  *p[2] = { x, y };
    PGresult    *res;
    int          rc = 0;

    snprintf(x, sizeof(x), "%lld", (long long) a);
    snprintf(y, sizeof(y), "%lld", (long long) b);
    res = PQexecParams(conn, sql, 2, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        adl_log_error(NULL, -1, "storing the %s failed: %s", what,
                      PQresultErrorMessage(res));
        rc = -1;
    }
    PQclear(res);
    return rc;
}

int
adl_migrate_store_settings(PGconn *conn, const adl_settings_t *s)
{
    if (store(conn, "SELECT async_dl_lifecycle_ttls($1::bigint, $2::bigint)",
              s->ttl_completed, s->ttl_failed, "expiry TTLs") != 0)
    {
        return -1;
    }
    return store(conn, "SELECT async_dl_claim_limits_set($1::integer, "
                 "$2::integer)", s->per_host_concurrency,
                 s->per_owner_concurrency, "claim limits");
}
