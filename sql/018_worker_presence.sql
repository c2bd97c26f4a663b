-- async-dl schema, version 18: workers say they are alive, and the health
-- route says how many are.
--
-- Each worker writes its row when its database connection comes up and
-- every poll interval after (async_dl_worker_beat), and removes it when it
-- stops (async_dl_worker_gone).  A worker counts as alive until three of
-- its own intervals pass without a beat: one killed, or cut off from the
-- database, stops counting within that.  Rows of workers not seen for a
-- day are removed by the next beat of any worker.

CREATE TABLE async_dl_workers (
    id           text PRIMARY KEY,           -- ASYNC_DL_WORKER_ID
    started_at   timestamptz NOT NULL DEFAULT now(),
    seen_at      timestamptz NOT NULL DEFAULT now(),
    beat         interval NOT NULL,          -- its poll interval
    concurrency  integer
);

CREATE FUNCTION async_dl_worker_beat(p_id text, p_beat interval,
                                     p_concurrency integer)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO async_dl_workers (id, beat, concurrency)
    VALUES (p_id, p_beat, p_concurrency)
    ON CONFLICT (id) DO UPDATE
       SET seen_at = now(), beat = EXCLUDED.beat,
           concurrency = EXCLUDED.concurrency;
    DELETE FROM async_dl_workers
     WHERE seen_at < now() - interval '1 day';
$$;

CREATE FUNCTION async_dl_worker_gone(p_id text)
RETURNS void
LANGUAGE sql AS $$
    DELETE FROM async_dl_workers WHERE id = p_id;
$$;

-- For GET {p}health: the workers alive, and, only when there is none,
-- whether files wait for one (any pending file: one probe of the claim's
-- partial index, async_dl_files_fair).
CREATE FUNCTION async_dl_health(OUT o_workers integer, OUT o_waiting boolean)
LANGUAGE sql STABLE AS $$
    SELECT w.n,
           w.n = 0 AND EXISTS (SELECT 1 FROM async_dl_files f
                                WHERE f.status = 'pending')
      FROM (SELECT count(*)::integer AS n FROM async_dl_workers w
             WHERE w.seen_at + 3 * w.beat > now()) w;
$$;
