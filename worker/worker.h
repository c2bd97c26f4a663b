/*
 * worker: the event loop (worker.c).
 *
 * One process, one thread, one epoll loop: signals (signalfd), a tick
 * timer (timerfd), the PostgreSQL connection (db.c) and two libcurl multi
 * handles (http.c: origin and storage, each with its own timerfd).  The
 * work itself is done by the kinds of task.h.
 */
#ifndef ADL_WORKER_H
#define ADL_WORKER_H

#include "settings.h"

/* Runs until SIGTERM/SIGINT and the work in flight is done or handed
 * back; 0, or -1 when the loop could not be set up or failed. */
int adl_worker_run(const adl_settings_t *s);

#endif /* ADL_WORKER_H */
