/*
 * settings: one table of every setting with its default; load() applies
 * the defaults, then the environment, then the command line, then checks
 * what spans several settings.  A bad value names the setting and exits 2.
 */
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metrics_server.h"
#include "settings.h"

typedef enum {
    T_STR,
    T_SECRET,           /* a string --help does not echo */
    T_INT,
    T_SIZE,
    T_DURATION,
    T_BOOL,
    T_ENUM
} setting_type_t;

typedef struct {
    const char      *env;
    setting_type_t   type;
    size_t           offset;
    const char      *def;       /* NULL: no default */
    int64_t          min, max;  /* numbers; for T_ENUM unused */
    const char      *choices;   /* T_ENUM: "a|b|c", value = index */
    const char      *help;
} setting_t;

#define OFF(f)  offsetof(adl_settings_t, f)
#define KIB     1024LL
#define MIB     (1024LL * KIB)
#define GIB     (1024LL * MIB)
#define TIB     (1024LL * GIB)

static const setting_t  settings[] = {
    { "ASYNC_DL_DATABASE_URL", T_SECRET, OFF(database_url), NULL, 0, 0, NULL,
      "libpq connection string or URL (required)" },
    { "ASYNC_DL_S3_ENDPOINT", T_STR, OFF(s3_endpoint), NULL, 0, 0, NULL,
      "S3 endpoint, http[s]://host[:port] (required to run)" },
    { "ASYNC_DL_S3_BUCKET", T_STR, OFF(s3_bucket), NULL, 0, 0, NULL,
      "bucket the files are stored in (required to run)" },
    { "ASYNC_DL_S3_REGION", T_STR, OFF(s3_region), "us-east-1", 0, 0, NULL,
      "SigV4 signing region" },
    { "ASYNC_DL_S3_ACCESS_KEY_ID", T_STR, OFF(s3_access_key), NULL, 0, 0,
      NULL, "S3 access key id (required to run)" },
    { "ASYNC_DL_S3_SECRET_ACCESS_KEY", T_SECRET, OFF(s3_secret_key), NULL,
      0, 0, NULL, "S3 secret access key (required to run)" },
    { "ASYNC_DL_S3_ADDRESSING", T_ENUM, OFF(s3_addressing), "path", 0, 0,
      "path|virtual", "path-style or virtual-hosted-style bucket URLs" },
    { "ASYNC_DL_S3_PREFIX", T_STR, OFF(s3_prefix), "", 0, 0, NULL,
      "object key prefix; keys are PREFIX<job id>/<index>/<name>" },
    { "ASYNC_DL_CONCURRENCY", T_INT, OFF(concurrency), "16", 1, 4096, NULL,
      "files transferred at once by this process" },
    { "ASYNC_DL_METRICS_LISTEN", T_STR, OFF(metrics_listen), "", 0, 0, NULL,
      "host:port (an IP address) to serve Prometheus metrics on, for "
      "GET; empty: none" },
    { "ASYNC_DL_NEWCOMER_SLOTS", T_INT, OFF(newcomer_slots), "1", 0, 64, NULL,
      "transfers beyond ASYNC_DL_CONCURRENCY, each only for an owner with "
      "nothing downloading, so that a new owner's job starts at once" },
    { "ASYNC_DL_PER_HOST_CONCURRENCY", T_INT, OFF(per_host_concurrency),
      "0", 0, 4096, NULL, "files downloaded at once from one origin host "
      "(host:port), all workers together (0: no limit)" },
    { "ASYNC_DL_MAX_TRANSFER_RATE", T_SIZE, OFF(max_transfer_rate), "0", 0,
      1 * TIB, NULL, "bytes a second one download may take from its origin "
      "(0: no limit)" },
    { "ASYNC_DL_PER_OWNER_CONCURRENCY", T_INT, OFF(per_owner_concurrency),
      "0", 0, 1000000, NULL, "files downloaded at once for one owner, all "
      "workers together (0: no limit)" },
    { "ASYNC_DL_PART_SIZE", T_SIZE, OFF(part_size), "8m", 5 * MIB, 5 * GIB,
      NULL, "multipart part size; files up to this size use one PUT" },
    { "ASYNC_DL_STREAM_PUT", T_BOOL, OFF(stream_put), "on", 0, 0, NULL,
      "a file of known size above one part (up to 5 GiB) goes up as one "
      "streamed PUT: one request, one part of memory; off: as a multipart "
      "upload, two parts of memory, whose stored parts a paused file keeps" },
    { "ASYNC_DL_MAX_FILE_SIZE", T_SIZE, OFF(max_file_size), "10g", 0,
      5 * TIB, NULL, "largest file accepted, else TOO_LARGE (0: no limit)" },
    { "ASYNC_DL_MAX_ATTEMPTS", T_INT, OFF(max_attempts), "5", 1, 100, NULL,
      "download attempts per file (transient failures are retried)" },
    { "ASYNC_DL_RETRY_BASE", T_DURATION, OFF(retry_base), "1s", 1,
      3600000, NULL, "first retry delay, doubled each attempt, jittered" },
    { "ASYNC_DL_CONNECT_TIMEOUT", T_DURATION, OFF(connect_timeout), "10s",
      1, 600000, NULL, "connect timeout for origin and storage" },
    { "ASYNC_DL_IDLE_TIMEOUT", T_DURATION, OFF(idle_timeout), "60s", 1000,
      3600000, NULL, "a transfer receiving nothing this long is retried" },
    { "ASYNC_DL_ALLOW_PRIVATE_NETWORKS", T_BOOL, OFF(allow_private), "off",
      0, 0, NULL, "allow origins on loopback, private, link-local, CGNAT "
      "and ULA addresses" },
    { "ASYNC_DL_ALLOW_CIDRS", T_STR, OFF(allow_cidrs), "", 0, 0, NULL,
      "comma list of addresses/CIDRs origins may use despite the checks" },
    { "ASYNC_DL_LEASE", T_DURATION, OFF(lease), "30s", 3000, 3600000, NULL,
      "how long a claimed file is held; renewed every third of it" },
    { "ASYNC_DL_POLL_INTERVAL", T_DURATION, OFF(poll_interval), "5s", 100,
      3600000, NULL, "safety poll for work and deadlines (besides NOTIFY)" },
    { "ASYNC_DL_SHUTDOWN_GRACE", T_DURATION, OFF(shutdown_grace), "20s", 0,
      3600000, NULL, "on SIGTERM/SIGINT, time to finish before handing "
      "work back" },
    { "ASYNC_DL_LOG_LEVEL", T_ENUM, OFF(log_level), "info", 0, 0,
      "debug|info|warn|error", "least severe level logged" },
    { "ASYNC_DL_LOG_FORMAT", T_ENUM, OFF(log_format), "text", 0, 0,
      "text|json", "log line format (stderr)" },
    { "ASYNC_DL_WORKER_ID", T_STR, OFF(worker_id), NULL, 0, 0, NULL,
      "name holding leases (default hostname:pid)" },
    { "ASYNC_DL_CALLBACK_SECRET", T_SECRET, OFF(callback_secret), "", 0, 0,
      NULL, "HMAC secret for job callbacks" },
    { "ASYNC_DL_TTL_COMPLETED", T_DURATION, OFF(ttl_completed), "24h", 1000,
      INT64_MAX / 2, NULL, "how long completed and canceled jobs and their "
      "files are kept" },
    { "ASYNC_DL_TTL_FAILED", T_DURATION, OFF(ttl_failed), "1h", 1000,
      INT64_MAX / 2, NULL, "how long failed jobs are kept" },
    { "ASYNC_DL_BUNDLE_ZIP64", T_BOOL, OFF(bundle_zip64), "off", 0, 0, NULL,
      "ZIP64 headers on every zip bundle entry (else only past 4 GiB)" },
};

#define NSETTINGS  (sizeof(settings) / sizeof(settings[0]))


/* --- notation ------------------------------------------------------- */

static int
parse_uint(const char **p, int64_t *out)
{
    int64_t  v = 0;

    if (!isdigit((unsigned char) **p)) {
        return -1;
    }
    while (isdigit((unsigned char) **p)) {
        if (v > (INT64_MAX - 9) / 10) {
            return -1;
        }
        v = v * 10 + (**p - '0');
        (*p)++;
    }
    *out = v;
    return 0;
}

int
adl_parse_size(const char *v, int64_t *out)
{
    const char  *p = v;
    int64_t      n, mul = 1;

    if (parse_uint(&p, &n) != 0) {
        return -1;
    }
    switch (tolower((unsigned char) *p)) {
    case '\0': break;
    case 'k': mul = KIB; p++; break;
    case 'm': mul = MIB; p++; break;
    case 'g': mul = GIB; p++; break;
    case 't': mul = TIB; p++; break;
    default: return -1;
    }
    if (*p != '\0' || n > INT64_MAX / mul) {
        return -1;
    }
    *out = n * mul;
    return 0;
}

int
adl_parse_duration(const char *v, int64_t *out_ms)
{
    const char  *p = v;
    int64_t      total = 0, n, mul;

    if (parse_uint(&p, &n) == 0 && *p == '\0') {
        if (n > INT64_MAX / 1000) {
            return -1;
        }
        *out_ms = n * 1000;             /* a bare number is seconds */
        return 0;
    }

    p = v;
    do {
        if (parse_uint(&p, &n) != 0) {
            return -1;
        }
        if (p[0] == 'm' && p[1] == 's') {
            mul = 1; p += 2;
        } else {
            switch (*p) {
            case 's': mul = 1000; break;
            case 'm': mul = 60 * 1000LL; break;
            case 'h': mul = 3600 * 1000LL; break;
            case 'd': mul = 86400 * 1000LL; break;
            case 'w': mul = 7 * 86400 * 1000LL; break;
            default: return -1;
            }
            p++;
        }
        if (n > (INT64_MAX / 4 - total) / mul) {
            return -1;
        }
        total += n * mul;
    } while (*p != '\0');

    *out_ms = total;
    return 0;
}

int
adl_parse_bool(const char *v, int *out)
{
    static const char  *yes[] = { "on", "true", "yes", "1" };
    static const char  *no[] = { "off", "false", "no", "0" };
    size_t              i;

    for (i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

static int
parse_enum(const char *choices, const char *v, int *out)
{
    const char  *c = choices;
    size_t       len = strlen(v);
    int          i = 0;

    while (*c) {
        const char  *bar = strchr(c, '|');
        size_t       clen = bar ? (size_t) (bar - c) : strlen(c);

        if (clen == len && strncasecmp(c, v, len) == 0) {
            *out = i;
            return 0;
        }
        i++;
        c += clen + (bar != NULL);
    }
    return -1;
}


/* --- the table ------------------------------------------------------ */

static void
flag_name(const setting_t *st, char *out, size_t len)
{
    const char  *n = st->env + sizeof("ASYNC_DL_") - 1;
    size_t       i;

    for (i = 0; n[i] && i + 1 < len; i++) {
        out[i] = n[i] == '_' ? '-' : (char) tolower((unsigned char) n[i]);
    }
    out[i] = '\0';
}

static const char *
type_name(const setting_t *st)
{
    switch (st->type) {
    case T_INT: return "number";
    case T_SIZE: return "size (e.g. 8m)";
    case T_DURATION: return "duration (e.g. 30s, 500ms)";
    case T_BOOL: return "on|off";
    case T_ENUM: return st->choices;
    default: return "string";
    }
}

static int
apply(adl_settings_t *s, const setting_t *st, const char *v,
    const char *source)
{
    char     *base = (char *) s + st->offset;
    char      flag[64];
    int64_t   n = 0;
    int       b;

    switch (st->type) {
    case T_STR:
    case T_SECRET: {
        char  **dst = (char **) (void *) base;
        char   *copy = strdup(v);

        if (copy == NULL) {
            fprintf(stderr, "async-dl-worker: out of memory\n");
            return -1;
        }
        free(*dst);
        *dst = copy;
        return 0;
    }

    case T_INT: {
        const char  *p = v;

        if (parse_uint(&p, &n) != 0 || *p != '\0') {
            goto invalid;
        }
        break;
    }

    case T_SIZE:
        if (adl_parse_size(v, &n) != 0) {
            goto invalid;
        }
        break;

    case T_DURATION:
        if (adl_parse_duration(v, &n) != 0) {
            goto invalid;
        }
        break;

    case T_BOOL:
        if (adl_parse_bool(v, &b) != 0) {
            goto invalid;
        }
        *(int *) (void *) base = b;
        return 0;

    case T_ENUM:
        if (parse_enum(st->choices, v, &b) != 0) {
            goto invalid;
        }
        *(int *) (void *) base = b;
        return 0;
    }

    if (n < st->min || n > st->max) {
        flag_name(st, flag, sizeof(flag));
        fprintf(stderr, "async-dl-worker: %s (--%s) from %s: \"%s\" is out "
                "of range (%lld..%lld%s)\n", st->env, flag, source, v,
                (long long) st->min, (long long) st->max,
                st->type == T_SIZE ? " bytes"
                : st->type == T_DURATION ? " ms" : "");
        return -1;
    }
    *(int64_t *) (void *) base = n;
    return 0;

invalid:
    flag_name(st, flag, sizeof(flag));
    fprintf(stderr, "async-dl-worker: %s (--%s) from %s: invalid value "
            "\"%s\", expected %s\n", st->env, flag, source, v, type_name(st));
    return -1;
}

static void
usage(FILE *f)
{
    char    flag[64], left[96];
    size_t  i;

    fprintf(f,
        "usage: async-dl-worker [--migrate] [--SETTING=VALUE ...]\n"
        "\n"
        "Downloads the files of async-dl jobs into S3-compatible storage.\n"
        "Each setting is an environment variable or the equivalent flag\n"
        "(flags win).  Sizes: bytes or k/m/g/t (8m); durations: seconds or\n"
        "ms/s/m/h/d/w, combinable (500ms, 30s, 1h30m); booleans: on|off.\n"
        "\n"
        "  --migrate        create or upgrade the schema, then exit\n"
        "  --help           this text\n"
        "\n");
    for (i = 0; i < NSETTINGS; i++) {
        const setting_t  *st = &settings[i];

        flag_name(st, flag, sizeof(flag));
        snprintf(left, sizeof(left), "--%s, %s", flag, st->env);
        fprintf(f, "  %s\n      %s; %s; default: %s\n", left, st->help,
                type_name(st),
                st->def == NULL ? "(none)"
                : st->def[0] == '\0' ? "(empty)" : st->def);
    }
}


/* --- load ----------------------------------------------------------- */

static int
check(adl_settings_t *s)
{
    char                     err[256];
    struct sockaddr_storage  ss;
    socklen_t                sslen;

    if (s->database_url == NULL || s->database_url[0] == '\0') {
        fprintf(stderr, "async-dl-worker: ASYNC_DL_DATABASE_URL "
                "(--database-url) is required\n");
        return -1;
    }

    if (adl_cidr_list_parse(s->allow_cidrs, &s->cidrs, err, sizeof(err))
        != 0)
    {
        fprintf(stderr, "async-dl-worker: ASYNC_DL_ALLOW_CIDRS "
                "(--allow-cidrs): %s\n", err);
        return -1;
    }

    if (s->migrate_only) {
        return 0;
    }

    if (s->metrics_listen != NULL && s->metrics_listen[0] != '\0'
        && adl_metrics_addr(s->metrics_listen, &ss, &sslen) != 0)
    {
        fprintf(stderr, "async-dl-worker: ASYNC_DL_METRICS_LISTEN "
                "(--metrics-listen) must be host:port with an IP address "
                "(127.0.0.1:9464, [::1]:9464), got \"%s\"\n",
                s->metrics_listen);
        return -1;
    }

    if (s->s3_endpoint == NULL || (strncmp(s->s3_endpoint, "http://", 7) != 0
        && strncmp(s->s3_endpoint, "https://", 8) != 0))
    {
        fprintf(stderr, "async-dl-worker: ASYNC_DL_S3_ENDPOINT "
                "(--s3-endpoint) must be an http:// or https:// URL, "
                "got \"%s\"\n", s->s3_endpoint ? s->s3_endpoint : "");
        return -1;
    }
    if (s->s3_bucket == NULL || s->s3_bucket[0] == '\0') {
        fprintf(stderr, "async-dl-worker: ASYNC_DL_S3_BUCKET (--s3-bucket) "
                "is required\n");
        return -1;
    }
    if (s->s3_access_key == NULL || s->s3_access_key[0] == '\0'
        || s->s3_secret_key == NULL || s->s3_secret_key[0] == '\0')
    {
        fprintf(stderr, "async-dl-worker: ASYNC_DL_S3_ACCESS_KEY_ID and "
                "ASYNC_DL_S3_SECRET_ACCESS_KEY are required\n");
        return -1;
    }

    /* a paused file keeps its parts with the SHA-256 state after them,
     * which can be written down only at a whole 64-byte block */
    if (s->part_size % 64 != 0) {
        fprintf(stderr, "async-dl-worker: ASYNC_DL_PART_SIZE (--part-size) "
                "%lld is not a multiple of 64 bytes, which a paused file's "
                "kept parts need\n", (long long) s->part_size);
        return -1;
    }

    /* S3 allows 10,000 parts: the largest file must fit in them */
    if (s->max_file_size > s->part_size * 10000) {
        fprintf(stderr, "async-dl-worker: ASYNC_DL_PART_SIZE (--part-size) "
                "%lld is too small for ASYNC_DL_MAX_FILE_SIZE %lld: S3 "
                "allows at most 10000 parts\n", (long long) s->part_size,
                (long long) s->max_file_size);
        return -1;
    }
    return 0;
}

int
adl_settings_load(adl_settings_t *s, int argc, char **argv)
{
    const char  *value[NSETTINGS], *source[NSETTINGS];
    char         flag[64], host[256], id[320];
    const char  *v;
    size_t       i;
    int          a;

    memset(s, 0, sizeof(*s));

    /* the winning value of each setting: default < environment < flag;
     * only that one is parsed, so a flag can mend a bad environment */
    for (i = 0; i < NSETTINGS; i++) {
        value[i] = settings[i].def;
        source[i] = "default";
        v = getenv(settings[i].env);
        if (v != NULL) {
            value[i] = v;
            source[i] = "environment";
        }
    }

    for (a = 1; a < argc; a++) {
        const char  *arg = argv[a], *eq;
        size_t       nlen;

        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            usage(stdout);
            return 1;
        }
        if (strcmp(arg, "--migrate") == 0) {
            s->migrate_only = 1;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "async-dl-worker: unexpected argument \"%s\" "
                    "(see --help)\n", arg);
            return -1;
        }
        arg += 2;
        eq = strchr(arg, '=');
        nlen = eq ? (size_t) (eq - arg) : strlen(arg);

        for (i = 0; i < NSETTINGS; i++) {
            flag_name(&settings[i], flag, sizeof(flag));
            if (strlen(flag) == nlen && strncmp(flag, arg, nlen) == 0) {
                break;
            }
        }
        if (i == NSETTINGS) {
            fprintf(stderr, "async-dl-worker: unknown option \"--%.*s\" "
                    "(see --help)\n", (int) nlen, arg);
            return -1;
        }

        if (eq != NULL) {
            v = eq + 1;
        } else if (settings[i].type == T_BOOL) {
            v = "on";                   /* --allow-private-networks */
        } else if (a + 1 < argc) {
            v = argv[++a];
        } else {
            fprintf(stderr, "async-dl-worker: %s (--%s) needs a value\n",
                    settings[i].env, flag);
            return -1;
        }
        value[i] = v;
        source[i] = "command line";
    }

    for (i = 0; i < NSETTINGS; i++) {
        if (value[i] != NULL
            && apply(s, &settings[i], value[i], source[i]) != 0)
        {
            return -1;
        }
    }

    if (s->worker_id == NULL || s->worker_id[0] == '\0') {
        if (gethostname(host, sizeof(host)) != 0) {
            strcpy(host, "localhost");
        }
        host[sizeof(host) - 1] = '\0';
        snprintf(id, sizeof(id), "%s:%d", host, (int) getpid());
        free(s->worker_id);
        s->worker_id = strdup(id);
        if (s->worker_id == NULL) {
            fprintf(stderr, "async-dl-worker: out of memory\n");
            return -1;
        }
    }

    return check(s);
}

void
adl_settings_free(adl_settings_t *s)
{
    size_t  i;

    for (i = 0; i < NSETTINGS; i++) {
        if (settings[i].type == T_STR || settings[i].type == T_SECRET) {
            char  **p = (char **) (void *) ((char *) s + settings[i].offset);

            free(*p);
            *p = NULL;
        }
    }
    adl_cidr_list_free(&s->cidrs);
}
