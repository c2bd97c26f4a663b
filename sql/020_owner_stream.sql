-- async-dl schema, version 20: one stream for all of an owner's jobs.
--
-- GET {p}stream and GET {p}ws without a job id follow every job of the
-- request's owner, those created after the stream opened too.  A client
-- that reconnects says how far it got (Last-Event-ID), and must miss the
-- end of no job.  Event ids that hold across jobs:
--
-- - A job that has not ended is always sent whole to a stream that
--   (re)opens: what it missed of it does not matter.
-- - Each job row keeps the transaction that ended it (ended_xid: written
--   once, when the status becomes completed, failed or canceled; so a
--   later update of an ended job, a callback's, changes nothing here and
--   keeps its updates HOT), and a deleted job leaves a tombstone with the
--   transaction that deleted it (async_dl_job_tombstones, kept a day).
-- - The id an owner stream gives its events is a horizon H, the oldest
--   transaction still running when it listed the owner's jobs
--   (pg_snapshot_xmin); it gives H once it has sent the end of every
--   ended or deleted job that listing named.  A job that ended after the
--   listing did so in a transaction that was running then, or began
--   later: its xid is >= H.  One that ended before and was not named
--   ended before the previous horizon, whose ends the client had.
-- - A stream resumed from H lists the owner's jobs not ended, those ended
--   by transactions >= H and those deleted by them, and sends each one's
--   state.  It is told of what comes after its listing by the
--   notifications it registered for before listing.
-- - The notification of a new job on async_dl_events is
--   "<job id> <event seq> n <md5 of owner>", so that the streams of its
--   owner start following it; readers of the first two words (001) need
--   not look further.

ALTER TABLE async_dl_jobs ADD COLUMN ended_xid xid8;

CREATE FUNCTION async_dl_jobs_ended_xid() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.ended_xid := pg_current_xact_id();
    RETURN NEW;
END $$;

-- Not "UPDATE OF status": a multi-file job completes in the update that
-- records its zip, whose statement names only bundle_status (the BEFORE
-- trigger async_dl_jobs_bundle, 007, sets the status).  Named to run after
-- it (triggers of one kind run in name order), so WHEN sees that status.
CREATE TRIGGER async_dl_jobs_ended_xid BEFORE UPDATE
    ON async_dl_jobs
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed', 'canceled')
          AND OLD.status NOT IN ('completed', 'failed', 'canceled'))
    EXECUTE FUNCTION async_dl_jobs_ended_xid();

-- (the jobs that ended before this version have none: they ended before
-- any horizon a stream of this version gave, no listing needs them)
CREATE INDEX async_dl_jobs_owner_ended
    ON async_dl_jobs (owner, ended_xid) WHERE ended_xid IS NOT NULL;


-- Jobs deleted (DELETE, expiry), for the streams that resume after it.
CREATE TABLE async_dl_job_tombstones (
    owner        text NOT NULL,
    job_id       uuid NOT NULL,
    deleted_xid  xid8 NOT NULL DEFAULT pg_current_xact_id(),
    deleted_at   timestamptz NOT NULL DEFAULT now()
);

-- (by time: the pruning below reads only what it deletes; a listing reads
-- the owner's day of tombstones)
CREATE INDEX async_dl_job_tombstones_owner
    ON async_dl_job_tombstones (owner, deleted_at);

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


-- What an owner stream follows: with p_all, the owner's jobs that have
-- not ended (ended false); with p_since, the jobs ended by transactions
-- from p_since on, and those deleted by them (event_seq 0).  Every row
-- carries the horizon (see above); one row has no job, so that there is
-- always one.
CREATE FUNCTION async_dl_owner_changes(p_owner text, p_since xid8,
                                       p_all boolean)
RETURNS TABLE (horizon xid8, job_id uuid, event_seq bigint, ended boolean)
LANGUAGE sql STABLE AS $$
    WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x)
    SELECT h.x, NULL::uuid, NULL::bigint, NULL::boolean FROM h
    UNION ALL
    SELECT h.x, j.id, j.event_seq, false
      FROM h, async_dl_jobs j
     WHERE p_all
       AND j.owner = p_owner
       AND j.status IN ('queued', 'processing')
    UNION ALL
    SELECT h.x, j.id, j.event_seq, true
      FROM h, async_dl_jobs j
     WHERE p_since IS NOT NULL
       AND j.owner = p_owner
       AND j.ended_xid >= p_since
    UNION ALL
    SELECT h.x, t.job_id, 0, true
      FROM h, async_dl_job_tombstones t
     WHERE p_since IS NOT NULL
       AND t.owner = p_owner
       AND t.deleted_xid >= p_since
$$;
