-- async-dl schema, version 20: one stream for all of an owner's jobs.
--
-- GET {p}stream and GET {p}ws without a job id follow every job of the
-- request's owner, those created after the stream opened too.  A client
-- that reconnects says how far it got (Last-Event-ID), and must miss the
-- changes of no job.  Event ids that hold across jobs:
--
-- - Each job row keeps the transaction that changed it last
--   (change_xid: set on insert and on every change, with event_seq).
-- - The id an owner stream gives its events is a horizon H, the oldest
--   transaction still running when it listed the owner's changes
--   (pg_snapshot_xmin); the stream gives H only once it has sent every
--   job that listing named, as new as the listing saw it.  A transaction
--   that had not ended then has an xid >= H; one that had, and whose
--   change the listing did not show, had an xid older than the previous
--   horizon, whose changes the client already had.
-- - A stream resumed from H lists the owner's jobs changed by
--   transactions >= H, and the deleted ones (async_dl_job_tombstones, kept
--   a day), with every job that has not ended (it follows those), and
--   sends each one's state.  It is told of what changes after its
--   listing by the notifications it registered for before listing.
-- - The notification of a new job on async_dl_events is
--   "<job id> <event seq> n <md5 of owner>", so that the streams of its
--   owner start following it; readers of the first two words (001) need
--   not look further.

ALTER TABLE async_dl_jobs ADD COLUMN change_xid xid8;

CREATE OR REPLACE FUNCTION async_dl_jobs_before_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.event_seq := OLD.event_seq + 1;
    NEW.updated_at := now();
    NEW.change_xid := pg_current_xact_id();
    RETURN NEW;
END $$;

CREATE FUNCTION async_dl_jobs_insert_xid() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.change_xid := pg_current_xact_id();
    RETURN NEW;
END $$;

CREATE TRIGGER async_dl_jobs_insert_xid BEFORE INSERT ON async_dl_jobs
    FOR EACH ROW EXECUTE FUNCTION async_dl_jobs_insert_xid();

-- (the rows from before this version have none: unchanged since before
-- any horizon a stream of this version gave, no listing needs them)
CREATE INDEX async_dl_jobs_owner_change
    ON async_dl_jobs (owner, change_xid);


-- Jobs deleted (DELETE, expiry), for the streams that resume after it.
CREATE TABLE async_dl_job_tombstones (
    owner        text NOT NULL,
    job_id       uuid NOT NULL,
    deleted_xid  xid8 NOT NULL DEFAULT pg_current_xact_id(),
    deleted_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX async_dl_job_tombstones_owner
    ON async_dl_job_tombstones (owner, deleted_xid);

CREATE FUNCTION async_dl_jobs_tombstone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- the owner's own tombstones older than a day go first (its index)
    DELETE FROM async_dl_job_tombstones
     WHERE owner = OLD.owner AND deleted_at < now() - interval '1 day';
    INSERT INTO async_dl_job_tombstones (owner, job_id)
        VALUES (OLD.owner, OLD.id);
    RETURN NULL;
END $$;

CREATE TRIGGER async_dl_jobs_tombstone AFTER DELETE ON async_dl_jobs
    FOR EACH ROW EXECUTE FUNCTION async_dl_jobs_tombstone();


-- 017's notification to the workers, and now the one to the streams.
CREATE OR REPLACE FUNCTION async_dl_jobs_created_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- delivered at commit, when the job's files are visible too
    PERFORM pg_notify('async_dl_jobs', NEW.id::text
                      || CASE WHEN EXISTS (
                              SELECT 1 FROM async_dl_files f
                               WHERE f.status = 'downloading'
                                 AND f.owner = NEW.owner)
                              THEN '' ELSE ' idle' END);
    PERFORM pg_notify('async_dl_events',
                      NEW.id::text || ' ' || NEW.event_seq::text
                      || ' n ' || md5(NEW.owner));
    RETURN NULL;
END $$;


-- What an owner stream follows: the owner's jobs that have not ended,
-- and with p_since those changed by transactions from p_since on and
-- those deleted since (event_seq 0).  Every row carries the horizon
-- (see above); one row has no job, so that there is always one.
CREATE FUNCTION async_dl_owner_changes(p_owner text, p_since xid8)
RETURNS TABLE (horizon xid8, job_id uuid, event_seq bigint)
LANGUAGE sql STABLE AS $$
    WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x)
    SELECT h.x, NULL::uuid, NULL::bigint FROM h
    UNION ALL
    SELECT h.x, j.id, j.event_seq
      FROM h, async_dl_jobs j
     WHERE j.owner = p_owner
       AND j.status NOT IN ('completed', 'failed', 'canceled')
    UNION ALL
    SELECT h.x, j.id, j.event_seq
      FROM h, async_dl_jobs j
     WHERE p_since IS NOT NULL
       AND j.owner = p_owner
       AND j.change_xid >= p_since
       AND j.status IN ('completed', 'failed', 'canceled')
    UNION ALL
    SELECT h.x, t.job_id, 0
      FROM h, async_dl_job_tombstones t
     WHERE p_since IS NOT NULL
       AND t.owner = p_owner
       AND t.deleted_xid >= p_since
$$;
