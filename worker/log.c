/*
 * log: formats a line in one buffer and writes it with one write(2), so
 * lines of concurrent workers sharing a file do not interleave.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "log.h"

static int  log_level = ADL_LOG_INFO;
static int  log_json;

static const char  *level_names[] = { "debug", "info", "warn", "error" };

void
adl_log_init(int level, int json)
{
    log_level = level;
    log_json = json;
}

void
adl_log(int level, const char *job, int idx, const char *fmt, ...)
{
    char            msg[2048], ts[40], line[4096];
    struct timeval  tv;
    struct tm       tm;
    va_list         ap;
    int             n;
    ssize_t         w;

    if (level < log_level) {
        return;
    }

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = (int) strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - (size_t) n, ".%03dZ",
             (int) (tv.tv_usec / 1000));

    if (log_json) {
        json_t  *o = json_object();
        char    *s;

        if (o == NULL) {
            return;
        }
        json_object_set_new(o, "ts", json_string(ts));
        json_object_set_new(o, "level", json_string(level_names[level]));
        if (job != NULL) {
            json_object_set_new(o, "job", json_string(job));
        }
        if (idx >= 0) {
            json_object_set_new(o, "file", json_integer(idx));
        }
        json_object_set_new(o, "msg", json_string(msg));
        s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(o);
        if (s == NULL) {
            return;
        }
        n = snprintf(line, sizeof(line), "%s\n", s);
        free(s);

    } else if (job != NULL && idx >= 0) {
        n = snprintf(line, sizeof(line), "%s [%s] job=%s file=%d %s\n", ts,
                     level_names[level], job, idx, msg);
    } else if (job != NULL) {
        n = snprintf(line, sizeof(line), "%s [%s] job=%s %s\n", ts,
                     level_names[level], job, msg);
    } else {
        n = snprintf(line, sizeof(line), "%s [%s] %s\n", ts,
                     level_names[level], msg);
    }

    if (n < 0) {
        return;
    }
    if ((size_t) n >= sizeof(line)) {
        n = sizeof(line) - 1;
        line[n - 1] = '\n';
    }
    w = write(STDERR_FILENO, line, (size_t) n);
    (void) w;
}
