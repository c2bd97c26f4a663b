-- async-dl schema, version 1: jobs, their files, and the state changes that
-- both the nginx module and the worker go through.
--
-- Every state change of a job or a file happens in one of the functions
-- below, so the rules (counters, the job's final status, notifications)
-- live in one place whatever process makes the change.
--
-- Channels:
--   async_dl_jobs    payload job id   a job has work to claim (worker wake-up)
--   async_dl_cancel  payload job id   a job was canceled or deleted (worker)
--   async_dl_events  payload "<job id> <event seq> <kind>"  a job's state
--                                     changed (status, progress, a file
--                                     ended: SSE); see async_dl_jobs_notify
--   async_dl_deleted  payload job id  a deleted job left objects to remove
--                                     (002, async_dl_deleted_objects)
--   async_dl_lifecycle payload job id a job ended, or its bundle did: a
--                                     bundle or callback may be due (004)

CREATE TABLE async_dl_jobs (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner            text NOT NULL DEFAULT '',
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'processing', 'completed',
                                       'failed', 'canceled')),
    idempotency_key  text,
    request_hash     text,
    total_files      integer NOT NULL CHECK (total_files > 0),
    completed_files  integer NOT NULL DEFAULT 0,
    failed_files     integer NOT NULL DEFAULT 0,
    sized_files      integer NOT NULL DEFAULT 0,  -- files whose size is known
    bytes_done       bigint NOT NULL DEFAULT 0,
    bytes_total      bigint NOT NULL DEFAULT 0,   -- sum of the known sizes
    timeout_ms       bigint NOT NULL CHECK (timeout_ms > 0),
    deadline         timestamptz NOT NULL,
    callback_url     text,
    error_code       text,
    error_message    text,
    event_seq        bigint NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    completed_at     timestamptz,
    expires_at       timestamptz,     -- set when the job ends (004)
    api_prefix       text,            -- {p} at initiate, for callbacks
    -- the zip of a multi-file job that completed (004)
    bundle_status    text
                     CHECK (bundle_status IN ('pending', 'building',
                                              'completed', 'failed')),
    bundle_key       text,
    bundle_size      bigint,
    bundle_sha256    text,
    bundle_files     integer,
    bundle_attempts  integer NOT NULL DEFAULT 0,
    bundle_error     text,
    bundle_lease_owner  text,
    bundle_lease_until  timestamptz,  -- also: retry not before; split in 010
    bundle_completed_at timestamptz,
    -- the POST of the final status document to callback_url (004)
    callback_status  text
                     CHECK (callback_status IN ('pending', 'delivered',
                                                'failed')),
    callback_attempts integer NOT NULL DEFAULT 0,
    callback_error   text,
    callback_next_at timestamptz,     -- retry time, or lease; split in 010
    callback_owner   text,            -- renamed in 010
    delivered_at     timestamptz
);

CREATE UNIQUE INDEX async_dl_jobs_idempotency
    ON async_dl_jobs (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- the owner's list, newest first, keyset-paged by (created_at, id)
CREATE INDEX async_dl_jobs_owner_created
    ON async_dl_jobs (owner, created_at DESC, id DESC);

-- backpressure counts and the expiry sweep
CREATE INDEX async_dl_jobs_unfinished
    ON async_dl_jobs (owner) WHERE status IN ('queued', 'processing');
CREATE INDEX async_dl_jobs_expires
    ON async_dl_jobs (expires_at) WHERE expires_at IS NOT NULL;

-- what a worker may claim: bundles to build, callbacks to deliver (004)
CREATE INDEX async_dl_jobs_bundle_todo
    ON async_dl_jobs (bundle_lease_until)
    WHERE bundle_status IN ('pending', 'building');
CREATE INDEX async_dl_jobs_callback_todo
    ON async_dl_jobs (callback_next_at)
    WHERE callback_status = 'pending';

CREATE TABLE async_dl_files (
    job_id           uuid NOT NULL REFERENCES async_dl_jobs (id)
                     ON DELETE CASCADE,
    idx              integer NOT NULL CHECK (idx >= 0),
    file_id          bigint,
    url              text NOT NULL,
    name             text,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'downloading', 'completed',
                                       'failed', 'canceled')),
    size             bigint,          -- announced by the origin, then stored
    bytes_done       bigint NOT NULL DEFAULT 0,
    content_type     text,
    sha256           text,
    object_key       text,
    attempts         integer NOT NULL DEFAULT 0,
    error_code       text,
    error_message    text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_until      timestamptz,
    started_at       timestamptz,
    completed_at     timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, idx)
);

-- what a worker may claim: pending files, and files whose lease ran out
CREATE INDEX async_dl_files_pending
    ON async_dl_files (next_attempt_at) WHERE status = 'pending';
CREATE INDEX async_dl_files_leased
    ON async_dl_files (lease_until) WHERE status = 'downloading';

-- One row: the TTLs of the workers (the last one to start wins), read by
-- the trigger async_dl_jobs_ended (004) when a job ends.
CREATE TABLE async_dl_lifecycle_settings (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    ttl_completed  interval NOT NULL DEFAULT interval '24 hours',
    ttl_failed     interval NOT NULL DEFAULT interval '1 hour',
    updated_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO async_dl_lifecycle_settings DEFAULT VALUES;

-- Backpressure counts, kept by the trigger below so that initiate reads a
-- few rows instead of counting the queue (which made each initiate cost
-- grow with the queue's length).  Queued jobs are counted in 16 shards,
-- each change going to a random one, so concurrent initiates and claims
-- rarely wait on the same row; only the sum means anything (a shard may
-- go below zero).  Unfinished jobs are counted per owner.  Like any count
-- read without a lock, they can be passed by a few concurrent initiates.
CREATE TABLE async_dl_queue_shards (
    shard   smallint PRIMARY KEY,
    queued  bigint NOT NULL DEFAULT 0
);
INSERT INTO async_dl_queue_shards (shard) SELECT generate_series(0, 15);

CREATE TABLE async_dl_owner_active (
    owner   text PRIMARY KEY,
    active  integer NOT NULL DEFAULT 0    -- queued or processing
);

CREATE FUNCTION async_dl_jobs_count() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    dq  integer := 0;       -- change of the queued count
    da  integer := 0;       -- change of the owner's unfinished count
    o   text;
    s   smallint;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        dq := dq - (OLD.status = 'queued')::integer;
        da := da - (OLD.status IN ('queued', 'processing'))::integer;
        o := OLD.owner;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        dq := dq + (NEW.status = 'queued')::integer;
        da := da + (NEW.status IN ('queued', 'processing'))::integer;
        o := NEW.owner;
    END IF;

    IF dq <> 0 THEN
        -- drawn once: random() in the WHERE clause would be drawn per row
        s := floor(random() * 16)::smallint;
        UPDATE async_dl_queue_shards SET queued = queued + dq
         WHERE shard = s;
    END IF;
    IF da <> 0 THEN
        INSERT INTO async_dl_owner_active AS a (owner, active)
        VALUES (o, da)
        ON CONFLICT (owner) DO UPDATE SET active = a.active + da;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER async_dl_jobs_count
    AFTER INSERT OR DELETE OR UPDATE OF status ON async_dl_jobs
    FOR EACH ROW EXECUTE FUNCTION async_dl_jobs_count();


-- Each change of a job is an event: number it, stamp it, announce it.
CREATE FUNCTION async_dl_jobs_before_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.event_seq := OLD.event_seq + 1;
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER async_dl_jobs_before_update
    BEFORE UPDATE ON async_dl_jobs
    FOR EACH ROW WHEN (OLD IS DISTINCT FROM NEW)
    EXECUTE FUNCTION async_dl_jobs_before_update();

-- The payload of async_dl_events has a third word, the kind of change:
--   "<job id> <event seq> e"   the status or the ended-file counters changed
--                              (a file ended, the job ended): sent at once
--   "<job id> <event seq> p"   only the bytes moved: progress, which the
--                              stream may throttle
--   "<job id> 0"               the job was deleted (the delete trigger below)
-- Readers of the first two words need not look at the third.
CREATE FUNCTION async_dl_jobs_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- delivered at commit, when the job's files are visible too
        PERFORM pg_notify('async_dl_jobs', NEW.id::text);
    ELSE
        PERFORM pg_notify('async_dl_events',
                          NEW.id::text || ' ' || NEW.event_seq::text
                          || CASE WHEN OLD.status = NEW.status
                                   AND OLD.completed_files = NEW.completed_files
                                   AND OLD.failed_files = NEW.failed_files
                                  THEN ' p' ELSE ' e' END);
        IF NEW.status = 'canceled' AND OLD.status <> 'canceled' THEN
            PERFORM pg_notify('async_dl_cancel', NEW.id::text);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER async_dl_jobs_notify_insert
    AFTER INSERT ON async_dl_jobs
    FOR EACH ROW EXECUTE FUNCTION async_dl_jobs_notify();

CREATE TRIGGER async_dl_jobs_notify_update
    AFTER UPDATE ON async_dl_jobs
    FOR EACH ROW WHEN (OLD.event_seq IS DISTINCT FROM NEW.event_seq)
    EXECUTE FUNCTION async_dl_jobs_notify();

CREATE FUNCTION async_dl_jobs_notify_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN ('queued', 'processing') THEN
        PERFORM pg_notify('async_dl_cancel', OLD.id::text);
    END IF;
    PERFORM pg_notify('async_dl_events', OLD.id::text || ' 0');
    RETURN NULL;
END $$;

CREATE TRIGGER async_dl_jobs_notify_delete
    AFTER DELETE ON async_dl_jobs
    FOR EACH ROW EXECUTE FUNCTION async_dl_jobs_notify_delete();


-- Worker: claim up to p_limit files for p_worker, holding them for p_lease.
-- Pending files whose time has come, and files whose previous holder's
-- lease ran out (a crashed worker): those start again from byte 0, and
-- the bytes their previous holder reported are taken off the job's
-- bytes_done in the same statement (else the job's progress could pass
-- 100 % until the file ended).
-- SKIP LOCKED lets any number of workers claim at once, each getting
-- different files, so one job's files spread over all running workers.
CREATE FUNCTION async_dl_claim(p_worker text, p_limit integer,
                               p_lease interval)
RETURNS TABLE (job_id uuid, idx integer, url text, name text,
               attempts integer, deadline timestamptz, file_id bigint)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT f.job_id, f.idx, f.bytes_done
          FROM async_dl_files f
         WHERE (f.status = 'pending' AND f.next_attempt_at <= now())
            OR (f.status = 'downloading' AND f.lease_until < now())
         ORDER BY f.next_attempt_at, f.job_id, f.idx
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE async_dl_files f
           SET status = 'downloading', lease_owner = p_worker,
               lease_until = now() + p_lease,
               started_at = coalesce(f.started_at, now()),
               bytes_done = 0, updated_at = now()
          FROM picked p
         WHERE f.job_id = p.job_id AND f.idx = p.idx
        RETURNING f.job_id, f.idx, f.url, f.name, f.attempts, f.file_id
    ), lost AS (
        SELECT p.job_id, sum(p.bytes_done) AS bytes
          FROM picked p
         WHERE p.bytes_done <> 0
         GROUP BY p.job_id
    ), started AS (
        UPDATE async_dl_jobs j
           SET status = CASE WHEN j.status = 'queued' THEN 'processing'
                             ELSE j.status END,
               started_at = coalesce(j.started_at, now()),
               bytes_done = greatest(0, j.bytes_done
                                        - coalesce(l.bytes, 0))
          FROM (SELECT DISTINCT c.job_id FROM claimed c) c
          LEFT JOIN lost l ON l.job_id = c.job_id
         WHERE j.id = c.job_id
           AND (j.status = 'queued' OR l.bytes IS NOT NULL)
    )
    SELECT c.job_id, c.idx, c.url, c.name, c.attempts, j.deadline, c.file_id
      FROM claimed c JOIN async_dl_jobs j ON j.id = c.job_id;
END $$;

-- Worker: report progress on a claimed file and renew its lease.  Returns
-- false when the file is no longer this worker's (canceled, deleted, or the
-- lease was lost): the transfer must stop.
CREATE FUNCTION async_dl_file_progress(p_job uuid, p_idx integer,
                                       p_worker text, p_lease interval,
                                       p_bytes bigint, p_size bigint,
                                       p_attempts integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    f async_dl_files;
BEGIN
    SELECT * INTO f FROM async_dl_files
     WHERE job_id = p_job AND idx = p_idx FOR UPDATE;
    IF NOT FOUND OR f.status <> 'downloading'
       OR f.lease_owner IS DISTINCT FROM p_worker
    THEN
        RETURN false;
    END IF;

    UPDATE async_dl_files
       SET bytes_done = p_bytes, size = coalesce(p_size, size),
           attempts = greatest(attempts, p_attempts),
           lease_until = now() + p_lease, updated_at = now()
     WHERE job_id = p_job AND idx = p_idx;

    IF p_bytes <> f.bytes_done OR p_size IS DISTINCT FROM f.size THEN
        UPDATE async_dl_jobs
           SET bytes_done = bytes_done + (p_bytes - f.bytes_done),
               bytes_total = bytes_total + coalesce(p_size, 0)
                             - coalesce(f.size, 0),
               sized_files = sized_files
                             + (p_size IS NOT NULL)::integer
                             - (f.size IS NOT NULL)::integer
         WHERE id = p_job;
    END IF;
    RETURN true;
END $$;

-- Worker: a claimed file ended.  p_status is 'completed' or 'failed' (with
-- an error code), or 'pending' to hand it back (retry later, or a worker
-- shutting down).  Keeps the job's counters and decides the job's final
-- status once its last file ended: completed when at least one file was
-- stored, else failed.  Returns false when the file was not this worker's.
CREATE FUNCTION async_dl_file_finish(p_job uuid, p_idx integer,
                                     p_worker text, p_status text,
                                     p_size bigint, p_content_type text,
                                     p_sha256 text, p_object_key text,
                                     p_attempts integer,
                                     p_error_code text, p_error_message text,
                                     p_retry_at timestamptz)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    f async_dl_files;
    j async_dl_jobs;
BEGIN
    IF p_status NOT IN ('completed', 'failed', 'pending') THEN
        RAISE EXCEPTION 'async_dl_file_finish: bad status %', p_status;
    END IF;

    SELECT * INTO f FROM async_dl_files
     WHERE job_id = p_job AND idx = p_idx FOR UPDATE;
    IF NOT FOUND OR f.status <> 'downloading'
       OR f.lease_owner IS DISTINCT FROM p_worker
    THEN
        RETURN false;
    END IF;

    IF p_status = 'pending' THEN
        UPDATE async_dl_files
           SET status = 'pending', lease_owner = NULL, lease_until = NULL,
               attempts = greatest(attempts, p_attempts),
               next_attempt_at = coalesce(p_retry_at, now()),
               error_code = p_error_code, error_message = p_error_message,
               updated_at = now()
         WHERE job_id = p_job AND idx = p_idx;
        UPDATE async_dl_jobs
           SET bytes_done = bytes_done - f.bytes_done
         WHERE id = p_job AND f.bytes_done <> 0;
        RETURN true;
    END IF;

    UPDATE async_dl_files
       SET status = p_status, lease_owner = NULL, lease_until = NULL,
           size = CASE WHEN p_status = 'completed' THEN p_size ELSE size END,
           bytes_done = CASE WHEN p_status = 'completed' THEN p_size
                             ELSE bytes_done END,
           content_type = p_content_type, sha256 = p_sha256,
           object_key = p_object_key,
           attempts = greatest(attempts, p_attempts),
           error_code = p_error_code, error_message = p_error_message,
           completed_at = now(), updated_at = now()
     WHERE job_id = p_job AND idx = p_idx
    RETURNING * INTO f;

    PERFORM async_dl_job_account(p_job, f, p_status);
    RETURN true;
END $$;

-- Internal: count an ended file (the row as it now is) into its job, and
-- end the job when it was the last one.  Callers hold the file's row lock.
CREATE FUNCTION async_dl_job_account(p_job uuid, f async_dl_files,
                                     p_status text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    j async_dl_jobs;
BEGIN
    UPDATE async_dl_jobs
       SET completed_files = completed_files
                             + (p_status = 'completed')::integer,
           failed_files = failed_files + (p_status <> 'completed')::integer,
           bytes_done = (SELECT coalesce(sum(bytes_done), 0)
                           FROM async_dl_files WHERE job_id = p_job),
           bytes_total = (SELECT coalesce(sum(size), 0)
                            FROM async_dl_files WHERE job_id = p_job),
           sized_files = (SELECT count(size)
                            FROM async_dl_files WHERE job_id = p_job)
     WHERE id = p_job
    RETURNING * INTO j;

    IF j.status IN ('queued', 'processing')
       AND j.completed_files + j.failed_files >= j.total_files
    THEN
        UPDATE async_dl_jobs
           SET status = CASE WHEN completed_files > 0 THEN 'completed'
                             ELSE 'failed' END,
               error_code = CASE WHEN completed_files > 0 THEN NULL
                                 ELSE 'ALL_FILES_FAILED' END,
               error_message = CASE WHEN completed_files > 0 THEN NULL
                                    ELSE 'no file could be downloaded' END,
               completed_at = now()
         WHERE id = p_job;
    END IF;
END $$;

-- Worker: files of jobs whose deadline passed before a worker could finish
-- (or even claim) them fail with TIMEOUT.  Files still held by a live
-- worker are left to that worker, which enforces the deadline itself;
-- their lease running out brings them here too.
CREATE FUNCTION async_dl_sweep_deadlines() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    f async_dl_files;
    n integer := 0;
BEGIN
    FOR f IN
        SELECT fl.* FROM async_dl_files fl
          JOIN async_dl_jobs j ON j.id = fl.job_id
         WHERE j.deadline < now()
           AND (fl.status = 'pending'
                OR (fl.status = 'downloading' AND fl.lease_until < now()))
           FOR UPDATE OF fl SKIP LOCKED
    LOOP
        UPDATE async_dl_files
           SET status = 'failed', lease_owner = NULL, lease_until = NULL,
               error_code = 'TIMEOUT',
               error_message = 'the job''s deadline passed',
               completed_at = now(), updated_at = now()
         WHERE job_id = f.job_id AND idx = f.idx
        RETURNING * INTO f;
        PERFORM async_dl_job_account(f.job_id, f, 'failed');
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- A job past its expires_at is gone for the API at once, whether or not
-- the sweeper has removed it yet: every owner lookup of the API asks this.
CREATE FUNCTION async_dl_job_live(p_expires timestamptz) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT p_expires IS NULL OR p_expires > now()
$$;

-- Locks a job of p_owner for a change from the API: its file rows first,
-- then the job row.  Workers hold a file row and then update its job
-- (progress, a file's end, claims), so taking the job first here could
-- deadlock with them.  Returns false when there is no such job.
CREATE FUNCTION async_dl_lock_job(p_job uuid, p_owner text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM async_dl_jobs
     WHERE id = p_job AND owner = p_owner AND async_dl_job_live(expires_at);
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM 1 FROM async_dl_files WHERE job_id = p_job
      ORDER BY idx FOR UPDATE;
    PERFORM 1 FROM async_dl_jobs WHERE id = p_job AND owner = p_owner
      FOR UPDATE;
    RETURN FOUND;
END $$;

-- API: cancel a job of p_owner.  Its unfinished files become canceled and
-- the job canceled; the record is kept.  Returns the job's status after the
-- call, or NULL when there is no such job for this owner.  Canceling a job
-- that already ended changes nothing.
CREATE FUNCTION async_dl_job_cancel(p_job uuid, p_owner text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    j async_dl_jobs;
BEGIN
    -- lock order: the job's files, then the job (see async_dl_lock_job)
    IF NOT async_dl_lock_job(p_job, p_owner) THEN
        RETURN NULL;
    END IF;
    SELECT * INTO j FROM async_dl_jobs WHERE id = p_job;
    IF j.status NOT IN ('queued', 'processing') THEN
        RETURN j.status;
    END IF;

    UPDATE async_dl_files
       SET status = 'canceled', lease_owner = NULL, lease_until = NULL,
           error_code = 'CANCELED', error_message = 'the job was canceled',
           completed_at = now(), updated_at = now()
     WHERE job_id = p_job AND status IN ('pending', 'downloading');

    UPDATE async_dl_jobs
       SET status = 'canceled',
           failed_files = total_files - completed_files,
           error_code = 'CANCELED', error_message = 'the job was canceled',
           completed_at = now()
     WHERE id = p_job;
    RETURN 'canceled';
END $$;
