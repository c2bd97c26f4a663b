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

/* the jobs with a trace context: few (those in flight), a list */
typedef struct trace_s  trace_t;

struct trace_s {
    trace_t  *next;
    int       refs;
    char      job[40];
    char      traceparent[64];
};

static trace_t  *traces;

static trace_t *
trace_find(const char *job)
{
    trace_t  *t;

    for (t = traces; t != NULL; t = t->next) {
        if (strcmp(t->job, job) == 0) {
            return t;
        }
    }
    return NULL;
}

void
adl_log_trace(const char *job, const char *traceparent)
{
    trace_t  *t;

    if (job == NULL || traceparent == NULL || traceparent[0] == '\0') {
        return;
    }
    t = trace_find(job);
    if (t == NULL) {
        t = calloc(1, sizeof(trace_t));
        if (t == NULL) {
            return;
        }
        snprintf(t->job, sizeof(t->job), "%s", job);
        snprintf(t->traceparent, sizeof(t->traceparent), "%s", traceparent);
        t->next = traces;
        traces = t;
    }
    t->refs++;
}

void
adl_log_untrace(const char *job)
{
    trace_t  **pp, *t;

    if (job == NULL) {
        return;
    }
    for (pp = &traces; (t = *pp) != NULL; pp = &t->next) {
        if (strcmp(t->job, job) == 0) {
            if (--t->refs == 0) {
                *pp = t->next;
                free(t);
            }
            return;
        }
    }
}

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
    const trace_t  *t;

    if (level < log_level) {
        return;
    }
    t = job != NULL ? trace_find(job) : NULL;

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
        if (t != NULL) {
            json_object_set_new(o, "traceparent",
                                json_string(t->traceparent));
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
        n = snprintf(line, sizeof(line), "%s [%s] job=%s file=%d %s%s%s\n",
                     ts, level_names[level], job, idx, msg,
                     t ? " trace=" : "", t ? t->traceparent : "");
    } else if (job != NULL) {
        n = snprintf(line, sizeof(line), "%s [%s] job=%s %s%s%s\n", ts,
                     level_names[level], job, msg, t ? " trace=" : "",
                     t ? t->traceparent : "");
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
