/*
 * settings: the worker's configuration, from ASYNC_DL_* environment
 * variables and the equivalent --flags (flags win).  Every setting, its
 * default and its notation is in one table in settings.c; --help prints it.
 *
 * Notation (nginx-like):
 *   size      bytes, or a number with k, m, g or t (binary: 8m = 8 MiB)
 *   duration  seconds, or a sequence of number+unit with ms, s, m, h, d, w
 *             ("500ms", "30s", "5m", "1h30m")
 *   bool      on|off (also true|false, yes|no, 1|0)
 */
#ifndef ADL_SETTINGS_H
#define ADL_SETTINGS_H

#include <stdint.h>
#include "ssrf.h"

typedef enum {
    ADL_LOG_DEBUG = 0,
    ADL_LOG_INFO,
    ADL_LOG_WARN,
    ADL_LOG_ERROR
} adl_log_level_t;

typedef struct {
    char             *database_url;
    char             *s3_endpoint;
    char             *s3_bucket;
    char             *s3_region;
    char             *s3_access_key;
    char             *s3_secret_key;
    int               s3_addressing;     /* 0 path, 1 virtual */
    char             *s3_prefix;
    int64_t           concurrency;
    int64_t           per_host_concurrency;
    int64_t           per_owner_concurrency;
    int64_t           newcomer_slots;
    char             *metrics_listen;    /* "" when off */
    int64_t           max_transfer_rate;    /* bytes/s per download, 0: no */
    int64_t           part_size;         /* bytes */
    int               stream_put;        /* one streamed PUT above a part */
    int64_t           max_file_size;     /* bytes, 0: no limit */
    int64_t           max_attempts;
    int64_t           retry_base;        /* ms */
    int64_t           connect_timeout;   /* ms */
    int64_t           idle_timeout;      /* ms */
    int               allow_private;
    char             *allow_cidrs;
    int64_t           lease;             /* ms */
    int64_t           poll_interval;     /* ms */
    int64_t           shutdown_grace;    /* ms */
    int               log_level;         /* adl_log_level_t */
    int               log_format;        /* 0 text, 1 json */
    char             *worker_id;
    char             *callback_secret;
    int64_t           ttl_completed;     /* ms */
    int64_t           ttl_failed;        /* ms */
    int               bundle_zip64;      /* ZIP64 on every bundle entry */

    adl_cidr_list_t   cidrs;             /* allow_cidrs, parsed */
    int               migrate_only;      /* --migrate */
} adl_settings_t;

/*
 * Fills s from defaults, the environment and argv.  Returns 0, or 1 when
 * --help or --version was printed (exit 0), or -1 after printing a message
 * naming the bad setting to stderr (exit 2).
 */
int adl_settings_load(adl_settings_t *s, int argc, char **argv);
void adl_settings_free(adl_settings_t *s);

/* Notation parsers, shared with the tests of the notation. */
int adl_parse_size(const char *v, int64_t *out);
int adl_parse_duration(const char *v, int64_t *out_ms);
int adl_parse_bool(const char *v, int *out);

#endif /* ADL_SETTINGS_H */
