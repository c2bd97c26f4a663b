/*
 * async-dl-worker: settings, schema, then the daemon's event loop.
 *
 * Exit status: 0 after --help, --migrate or a clean shutdown (SIGTERM,
 * SIGINT); 1 when the schema cannot be brought up to date or the loop
 * fails; 2 on a bad setting.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>

#include "adl_sigv4.h"
#include "db.h"
#include "log.h"
#include "migrate.h"
#include "settings.h"
#include "worker.h"

#define START_WAIT  30000           /* ms the daemon waits for the database */

/* The daemon waits a while for a database that is still starting;
 * --migrate does not. */
static int
migrate_at_start(const adl_settings_t *s, int wait)
{
    PGconn     *conn;
    long long   waited = 0, delay = 250;
    int         rc;

    while ((conn = adl_db_connect_blocking(s)) == NULL) {
        if (!wait || waited >= START_WAIT) {
            return -1;
        }
        adl_log_warn(NULL, -1, "database not ready: trying again in %lld ms",
                     delay);
        usleep((useconds_t) delay * 1000);
        waited += delay;
        delay = delay * 2 > 5000 ? 5000 : delay * 2;
    }
    rc = adl_migrate(conn);
    if (rc == 0 && !s->migrate_only) {
        rc = adl_migrate_store_settings(conn, s);
    }
    PQfinish(conn);
    return rc;
}

int
main(int argc, char **argv)
{
    adl_settings_t  s;
    int             rc;

    rc = adl_settings_load(&s, argc, argv);
    if (rc != 0) {
        adl_settings_free(&s);
        return rc > 0 ? 0 : 2;
    }
    adl_log_init(s.log_level, s.log_format);

    if (s.migrate_only) {
        rc = migrate_at_start(&s, 0);
        adl_settings_free(&s);
        return rc == 0 ? 0 : 1;
    }

    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        adl_log_error(NULL, -1, "curl_global_init failed");
        adl_settings_free(&s);
        return 1;
    }

    if (adl_crypto_init() != 0) {
        adl_log_error(NULL, -1, "OpenSSL has no SHA-256");
        curl_global_cleanup();
        adl_settings_free(&s);
        return 1;
    }

    rc = migrate_at_start(&s, 1);
    if (rc == 0) {
        rc = adl_worker_run(&s);
    }

    adl_crypto_cleanup();
    curl_global_cleanup();
    adl_settings_free(&s);
    return rc == 0 ? 0 : 1;
}
