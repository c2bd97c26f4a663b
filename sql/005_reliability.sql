-- async-dl schema, version 5: state changes that hold under concurrency.
--
-- What 001 got wrong, and the rules that replace it:
--
--   Counters of a job (completed_files, failed_files, sized_files,
--   bytes_done, bytes_total) were changed in several places, some of them
--   recomputed on a snapshot older than the job's row lock, some with the
--   wrong deltas, so two files ending at once, a hand-back or a progress
--   report without a size left them wrong for good.  Now one function,
--   async_dl_job_add(), changes them, by deltas taken from file rows its
--   callers hold, applied to the latest version of the job's row.
--
--   The counts behind QUEUE_FULL and TOO_MANY_JOBS were kept by updating
--   counter rows from a row trigger, in whatever order a statement touched
--   its jobs, so concurrent claims (and the deadline sweep) deadlocked on
--   them.  Now the trigger only appends deltas (no row lock at all) and
--   async_dl_counts_compact() folds them, one caller at a time.
--
--   A lease was identified by the worker's name only, so a worker that
--   claimed its own expired file again (after a database outage longer
--   than the lease) ran two transfers of it, both renewing.  Now each claim
--   of a file gets its own lease token (lease_owner), which progress and
--   finish compare.
--
--   "attempts" counts the transfers started: the claim counts one, so a
--   crash costs the file an attempt, and a file whose holder died after
--   its last attempt fails (WORKER_LOST) instead of being claimed forever.
--
-- Lock order, everywhere: a job's file rows, then job rows in id order.
-- Counters take no row locks.

-- --- the counts behind the limits ---------------------------------------

CREATE TABLE async_dl_count_deltas (
    id      bigserial PRIMARY KEY,
    owner   text NOT NULL,
    queued  integer NOT NULL,       -- change of the number of queued jobs
    active  integer NOT NULL        -- change of the owner's unfinished jobs
);
CREATE INDEX async_dl_count_deltas_owner ON async_dl_count_deltas (owner);

CREATE TABLE async_dl_queue_count (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    queued  bigint NOT NULL DEFAULT 0
);

DROP TRIGGER async_dl_jobs_count ON async_dl_jobs;
DROP FUNCTION async_dl_jobs_count();
DROP TABLE async_dl_queue_shards;

-- start from the truth, whatever the old counters said
INSERT INTO async_dl_queue_count (queued)
SELECT count(*) FROM async_dl_jobs WHERE status = 'queued';
DELETE FROM async_dl_owner_active;
INSERT INTO async_dl_owner_active (owner, active)
SELECT owner, count(*) FROM async_dl_jobs
 WHERE status IN ('queued', 'processing') GROUP BY owner;

CREATE FUNCTION async_dl_jobs_count() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    dq  integer := 0;
    da  integer := 0;
    o   text;
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
    IF dq <> 0 OR da <> 0 THEN
        INSERT INTO async_dl_count_deltas (owner, queued, active)
        VALUES (o, dq, da);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER async_dl_jobs_count
    AFTER INSERT OR DELETE OR UPDATE OF status ON async_dl_jobs
    FOR EACH ROW EXECUTE FUNCTION async_dl_jobs_count();

-- Folds the deltas into the totals; owners left with no unfinished job
-- lose their row.  One caller at a time (the others return at once): the
-- workers' poll, and initiate when the deltas pile up.  Returns the number
-- of deltas folded, or -1 when another session was folding.
CREATE FUNCTION async_dl_counts_compact() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(7262081143556440373) THEN
        RETURN -1;
    END IF;
    WITH d AS (
        DELETE FROM async_dl_count_deltas RETURNING owner, queued, active
    ), q AS (
        UPDATE async_dl_queue_count
           SET queued = queued + (SELECT coalesce(sum(queued), 0) FROM d)
    ), a AS (
        INSERT INTO async_dl_owner_active AS t (owner, active)
        SELECT owner, sum(active) FROM d
         GROUP BY owner HAVING sum(active) <> 0
         ORDER BY owner
        ON CONFLICT (owner) DO UPDATE SET active = t.active + excluded.active
    )
    SELECT count(*) INTO n FROM d;
    DELETE FROM async_dl_owner_active WHERE active = 0;
    RETURN n;
END $$;

CREATE FUNCTION async_dl_queued_count() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT (SELECT queued FROM async_dl_queue_count)
           + (SELECT coalesce(sum(queued), 0) FROM async_dl_count_deltas)
$$;

CREATE FUNCTION async_dl_owner_active_count(p_owner text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT active FROM async_dl_owner_active
                      WHERE owner = p_owner), 0)
           + (SELECT coalesce(sum(active), 0) FROM async_dl_count_deltas
               WHERE owner = p_owner)
$$;

-- Every owner with unfinished jobs and their number, as the limits see it.
CREATE FUNCTION async_dl_owner_counts()
RETURNS TABLE (owner text, active bigint)
LANGUAGE sql STABLE AS $$
    SELECT o, sum(n)::bigint FROM (
        SELECT a.owner, a.active FROM async_dl_owner_active a
        UNION ALL
        SELECT d.owner, d.active FROM async_dl_count_deltas d) c (o, n)
     GROUP BY o HAVING sum(n) <> 0
     ORDER BY o
$$;


-- --- tables: hot rows stay small and their updates HOT -------------------

-- Progress renews lease_until many times a transfer: an index on it made
-- every renewal a non-HOT update.  What the claim needs is the few files
-- being downloaded, found by status alone.
DROP INDEX async_dl_files_leased;
CREATE INDEX async_dl_files_downloading
    ON async_dl_files (job_id, idx) WHERE status = 'downloading';

-- the deadline sweep reads unfinished jobs past their deadline
CREATE INDEX async_dl_jobs_deadline
    ON async_dl_jobs (deadline) WHERE status IN ('queued', 'processing');

-- room on each page for the new versions of updated rows
ALTER TABLE async_dl_jobs SET (fillfactor = 80);
ALTER TABLE async_dl_files SET (fillfactor = 80);

CREATE SEQUENCE async_dl_lease_seq;


-- --- a job's counters: one place -----------------------------------------

-- Changes a job's counters by what its files' changes added (dc completed,
-- df failed or canceled, ds sized, dd bytes done, dt bytes total) and ends
-- the job when its last file ended: completed when at least one file was
-- stored, else failed; p_cancel ends it canceled; p_started marks it
-- processing.  The only function that writes a job's counters.
--
-- Callers hold the file rows whose change they report, so the deltas are
-- exact; "x = x + d" applies them to the latest version of the job's row
-- (READ COMMITTED re-reads it after waiting for its lock), and one UPDATE
-- lets the triggers of a job ending here see its final counters.  Lock
-- order: the job's file rows, then job rows in id order.
CREATE FUNCTION async_dl_job_add(p_job uuid, dc integer, df integer,
                                 ds integer, dd bigint, dt bigint,
                                 p_started boolean, p_cancel boolean)
RETURNS void
LANGUAGE sql AS $$
    UPDATE async_dl_jobs
       SET completed_files = completed_files + dc,
           failed_files = failed_files + df,
           sized_files = sized_files + ds,
           bytes_done = bytes_done + dd,
           bytes_total = bytes_total + dt,
           status = CASE
               WHEN status NOT IN ('queued', 'processing') THEN status
               WHEN p_cancel THEN 'canceled'
               WHEN completed_files + dc + failed_files + df >= total_files
                   THEN CASE WHEN completed_files + dc > 0 THEN 'completed'
                             ELSE 'failed' END
               WHEN p_started THEN 'processing'
               ELSE status END,
           started_at = CASE WHEN p_started THEN coalesce(started_at, now())
                             ELSE started_at END,
           completed_at = CASE
               WHEN status IN ('queued', 'processing')
                    AND (p_cancel OR completed_files + dc + failed_files + df
                                     >= total_files)
                   THEN now()
               ELSE completed_at END,
           error_code = CASE
               WHEN status NOT IN ('queued', 'processing') THEN error_code
               WHEN p_cancel THEN 'CANCELED'
               WHEN completed_files + dc + failed_files + df >= total_files
                    AND completed_files + dc = 0 THEN 'ALL_FILES_FAILED'
               ELSE error_code END,
           error_message = CASE
               WHEN status NOT IN ('queued', 'processing') THEN error_message
               WHEN p_cancel THEN 'the job was canceled'
               WHEN completed_files + dc + failed_files + df >= total_files
                    AND completed_files + dc = 0
                   THEN 'no file could be downloaded'
               ELSE error_message END
     WHERE id = p_job
$$;

-- One file's row changed from o to n (both read under its row lock).
CREATE FUNCTION async_dl_job_file_changed(o async_dl_files, n async_dl_files)
RETURNS void
LANGUAGE sql AS $$
    SELECT async_dl_job_add(n.job_id,
        (n.status = 'completed')::integer - (o.status = 'completed')::integer,
        (n.status IN ('failed', 'canceled'))::integer
            - (o.status IN ('failed', 'canceled'))::integer,
        (n.size IS NOT NULL)::integer - (o.size IS NOT NULL)::integer,
        n.bytes_done - o.bytes_done,
        coalesce(n.size, 0) - coalesce(o.size, 0),
        false, false)
     WHERE (o.status, o.size, o.bytes_done)
           IS DISTINCT FROM (n.status, n.size, n.bytes_done)
$$;

-- 001's incremental accounting, kept under its name for nothing else: gone.
DROP FUNCTION async_dl_job_account(uuid, async_dl_files, text);


-- --- worker: claims, progress, ends --------------------------------------

DROP FUNCTION async_dl_claim(text, integer, interval);

-- Claim up to p_limit files for p_worker, holding them for p_lease: files
-- whose holder's lease ran out (a crashed worker) first, then pending
-- files whose time came.  Each claim of a file gets its own lease token,
-- returned as "lease": progress and finish must present it.  A claim
-- counts an attempt; a file whose holder died after the last of
-- p_max_attempts fails with WORKER_LOST.  A reclaimed file starts again
-- from byte 0.  SKIP LOCKED lets any number of workers claim at once.
CREATE FUNCTION async_dl_claim(p_worker text, p_limit integer,
                               p_lease interval, p_max_attempts integer)
RETURNS TABLE (job_id uuid, idx integer, url text, name text,
               attempts integer, deadline timestamptz, file_id bigint,
               lease text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_job   uuid[];
    v_idx   integer[];
    v_dead  boolean[];
    v_done  bigint[];
    n       integer;
    r       record;
BEGIN
    -- leases that ran out: few rows, found by the downloading index
    SELECT coalesce(array_agg(p.job_id), '{}'),
           coalesce(array_agg(p.idx), '{}'),
           coalesce(array_agg(p.attempts >= p_max_attempts), '{}'),
           coalesce(array_agg(p.bytes_done), '{}')
      INTO v_job, v_idx, v_dead, v_done
      FROM (SELECT f.job_id, f.idx, f.attempts, f.bytes_done
              FROM async_dl_files f
             WHERE f.status = 'downloading' AND f.lease_until < now()
             ORDER BY f.lease_until
             LIMIT p_limit
               FOR UPDATE SKIP LOCKED) p;

    -- files that fail here take no room in the claim
    n := p_limit - (SELECT count(*) FROM unnest(v_dead) d WHERE NOT d);
    IF n > 0 THEN
        SELECT v_job || coalesce(array_agg(p.job_id), '{}'),
               v_idx || coalesce(array_agg(p.idx), '{}'),
               v_dead || coalesce(array_agg(false), '{}'),
               v_done || coalesce(array_agg(p.bytes_done), '{}')
          INTO v_job, v_idx, v_dead, v_done
          FROM (SELECT f.job_id, f.idx, f.bytes_done FROM async_dl_files f
                 WHERE f.status = 'pending' AND f.next_attempt_at <= now()
                 ORDER BY f.next_attempt_at, f.job_id, f.idx
                 LIMIT n
                   FOR UPDATE SKIP LOCKED) p;
    END IF;
    IF cardinality(v_job) = 0 THEN
        RETURN;
    END IF;

    UPDATE async_dl_files f
       SET status = 'failed', lease_owner = NULL, lease_until = NULL,
           error_code = 'WORKER_LOST',
           error_message = 'gave up after ' || f.attempts || ' attempts: '
                           || 'the last one''s worker stopped renewing '
                           || 'its lease',
           completed_at = now(), updated_at = now()
      FROM unnest(v_job, v_idx, v_dead) AS u (j, i, dead)
     WHERE u.dead AND f.job_id = u.j AND f.idx = u.i;

    UPDATE async_dl_files f
       SET status = 'downloading',
           lease_owner = p_worker || '/' || nextval('async_dl_lease_seq'),
           lease_until = now() + p_lease,
           attempts = f.attempts + 1,
           started_at = coalesce(f.started_at, now()),
           bytes_done = 0, updated_at = now()
      FROM unnest(v_job, v_idx, v_dead) AS u (j, i, dead)
     WHERE NOT u.dead AND f.job_id = u.j AND f.idx = u.i;

    -- their jobs, in id order: failed files, and the bytes of reclaimed
    -- files, which start again from 0
    FOR r IN
        SELECT u.j, count(*) FILTER (WHERE u.dead) AS failed,
               coalesce(sum(u.done) FILTER (WHERE NOT u.dead), 0) AS lost
          FROM unnest(v_job, v_dead, v_done) AS u (j, dead, done)
         GROUP BY u.j ORDER BY u.j
    LOOP
        PERFORM async_dl_job_add(r.j, 0, r.failed::integer, 0,
                                 (-r.lost)::bigint, 0,
                                 true, false);
    END LOOP;

    RETURN QUERY
    SELECT f.job_id, f.idx, f.url, f.name, f.attempts, j.deadline,
           f.file_id, f.lease_owner
      FROM unnest(v_job, v_idx, v_dead) AS u (j, i, dead)
      JOIN async_dl_files f ON f.job_id = u.j AND f.idx = u.i
      JOIN async_dl_jobs j ON j.id = f.job_id
     WHERE NOT u.dead;
END $$;

-- Report progress on a claimed file and renew its lease.  p_worker is the
-- claim's lease token.  Returns false when the file is no longer held by
-- that claim (canceled, deleted, the lease ran out and it was claimed
-- again): the transfer must stop.
CREATE OR REPLACE FUNCTION async_dl_file_progress(p_job uuid, p_idx integer,
                                                  p_worker text,
                                                  p_lease interval,
                                                  p_bytes bigint,
                                                  p_size bigint,
                                                  p_attempts integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    f async_dl_files;
    n async_dl_files;
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
     WHERE job_id = p_job AND idx = p_idx
    RETURNING * INTO n;

    PERFORM async_dl_job_file_changed(f, n);
    RETURN true;
END $$;

-- A claimed file ended.  p_worker is the claim's lease token.  p_status is
-- 'completed' (p_object_key: where it is stored) or 'failed' (with an error
-- code; p_object_key: where it would have been, removed by the janitor in
-- case an earlier attempt stored something), or 'pending' to hand it
-- back: retry at p_retry_at, with attempts set to p_attempts (a worker
-- shutting down passes the attempts before its claim: not the file's
-- fault).  Returns false when the file was not held by that claim.
CREATE OR REPLACE FUNCTION async_dl_file_finish(p_job uuid, p_idx integer,
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
    n async_dl_files;
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
               attempts = coalesce(p_attempts, attempts), bytes_done = 0,
               next_attempt_at = coalesce(p_retry_at, now()),
               error_code = p_error_code, error_message = p_error_message,
               updated_at = now()
         WHERE job_id = p_job AND idx = p_idx
        RETURNING * INTO n;
    ELSE
        UPDATE async_dl_files
           SET status = p_status, lease_owner = NULL, lease_until = NULL,
               size = CASE WHEN p_status = 'completed' THEN p_size
                           ELSE size END,
               bytes_done = CASE WHEN p_status = 'completed' THEN p_size
                                 ELSE bytes_done END,
               content_type = p_content_type, sha256 = p_sha256,
               object_key = CASE WHEN p_status = 'completed'
                                 THEN p_object_key END,
               attempts = greatest(attempts, p_attempts),
               error_code = p_error_code, error_message = p_error_message,
               completed_at = now(), updated_at = now()
         WHERE job_id = p_job AND idx = p_idx
        RETURNING * INTO n;
    END IF;

    -- a file that failed names the key its transfers wrote to: an earlier
    -- attempt (a worker killed after the storage had committed) may have
    -- left an object there that no row records
    IF p_status = 'failed' AND p_object_key IS NOT NULL THEN
        INSERT INTO async_dl_deleted_objects (job_id, object_key)
        VALUES (p_job, p_object_key);
        PERFORM pg_notify('async_dl_deleted', p_job::text);
    END IF;

    PERFORM async_dl_job_file_changed(f, n);
    RETURN true;
END $$;

-- Files of jobs whose deadline passed before a worker could finish (or
-- even claim) them fail with TIMEOUT.  Files still held by a live worker
-- are left to it (it enforces the deadline itself); their lease running
-- out brings them here too.  Job by job in id order, as claims go.
CREATE OR REPLACE FUNCTION async_dl_sweep_deadlines() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    k  uuid;
    m  integer;
    n  integer := 0;
BEGIN
    FOR k IN
        SELECT j.id FROM async_dl_jobs j
         WHERE j.deadline < now() AND j.status IN ('queued', 'processing')
         ORDER BY j.id
    LOOP
        WITH t AS (
            SELECT f.job_id, f.idx FROM async_dl_files f
             WHERE f.job_id = k
               AND (f.status = 'pending'
                    OR (f.status = 'downloading' AND f.lease_until < now()))
             ORDER BY f.idx
               FOR UPDATE SKIP LOCKED
        ), u AS (
            UPDATE async_dl_files f
               SET status = 'failed', lease_owner = NULL, lease_until = NULL,
                   error_code = 'TIMEOUT',
                   error_message = 'the job''s deadline passed',
                   completed_at = now(), updated_at = now()
              FROM t WHERE f.job_id = t.job_id AND f.idx = t.idx
            RETURNING 1)
        SELECT count(*) INTO m FROM u;
        IF m > 0 THEN
            -- pending or downloading before: each one more failed file
            PERFORM async_dl_job_add(k, 0, m, 0, 0, 0, false, false);
            n := n + m;
        END IF;
    END LOOP;
    RETURN n;
END $$;


-- --- the API -------------------------------------------------------------

-- Cancel: the job's files (in index order), then the job.
CREATE OR REPLACE FUNCTION async_dl_job_cancel(p_job uuid, p_owner text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    j async_dl_jobs;
    m integer;
BEGIN
    IF NOT async_dl_lock_job(p_job, p_owner) THEN
        RETURN NULL;
    END IF;
    SELECT * INTO j FROM async_dl_jobs WHERE id = p_job;
    IF j.status NOT IN ('queued', 'processing') THEN
        RETURN j.status;
    END IF;
    PERFORM set_config('synchronous_commit', 'on', true);   -- answered 200

    UPDATE async_dl_files
       SET status = 'canceled', lease_owner = NULL, lease_until = NULL,
           error_code = 'CANCELED', error_message = 'the job was canceled',
           completed_at = now(), updated_at = now()
     WHERE job_id = p_job AND status IN ('pending', 'downloading');
    GET DIAGNOSTICS m = ROW_COUNT;

    PERFORM async_dl_job_add(p_job, 0, m, 0, 0, 0, false, true);
    RETURN 'canceled';
END $$;

-- DELETE: every stored object of the job, its zip included, is queued for
-- the workers to remove.  A zip still being built is removed by its
-- builder, whose finish finds the job gone.
CREATE OR REPLACE FUNCTION async_dl_job_delete(p_job uuid, p_owner text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT async_dl_lock_job(p_job, p_owner) THEN
        RETURN false;
    END IF;
    PERFORM set_config('synchronous_commit', 'on', true);   -- answered 204

    INSERT INTO async_dl_deleted_objects (job_id, object_key)
    SELECT p_job, k.key FROM (
        SELECT f.object_key AS key FROM async_dl_files f
         WHERE f.job_id = p_job AND f.object_key IS NOT NULL
        UNION
        SELECT j.bundle_key FROM async_dl_jobs j
         WHERE j.id = p_job AND j.bundle_key IS NOT NULL) k;
    IF FOUND THEN
        PERFORM pg_notify('async_dl_deleted', p_job::text);
    END IF;

    DELETE FROM async_dl_jobs WHERE id = p_job;
    RETURN true;
END $$;

-- Expiry: the jobs' file rows, then the jobs in id order, then delete.
DROP FUNCTION async_dl_expired_delete(uuid[]);
CREATE FUNCTION async_dl_expired_delete(p_jobs uuid[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    PERFORM 1 FROM async_dl_files WHERE job_id = ANY (p_jobs)
      ORDER BY job_id, idx FOR UPDATE;
    PERFORM 1 FROM async_dl_jobs WHERE id = ANY (p_jobs)
      ORDER BY id FOR UPDATE;
    WITH d AS (
        DELETE FROM async_dl_jobs
         WHERE id = ANY (p_jobs) AND expires_at <= now()
           AND status IN ('completed', 'failed', 'canceled')
        RETURNING 1)
    SELECT count(*)::integer INTO n FROM d;
    RETURN n;
END $$;

-- POST {p}initiate, as in 002, with two changes: the limits read the
-- counts above, and the transaction commits synchronously whatever the
-- server's synchronous_commit, so that a 202 survives a crash.
CREATE OR REPLACE FUNCTION async_dl_job_create(p_owner text, p_key text,
                                    p_hash text,
                                    p_timeout_ms bigint, p_callback text,
                                    p_files json, p_max_pending integer,
                                    p_max_active integer, p_prefix text)
RETURNS TABLE (outcome text, job_id uuid, body text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    j  async_dl_jobs;
    n  bigint;
BEGIN
    PERFORM set_config('async_dl.api_prefix', coalesce(p_prefix, ''), true);

    IF p_key IS NOT NULL THEN
        SELECT * INTO j FROM async_dl_jobs
         WHERE owner = p_owner AND idempotency_key = p_key;
        IF FOUND THEN
            RETURN QUERY
            SELECT CASE WHEN j.request_hash = p_hash THEN 'replayed'
                        ELSE 'conflict' END,
                   j.id, async_dl_job_created(j, p_prefix)::text;
            RETURN;
        END IF;
    END IF;

    IF p_max_pending > 0 THEN
        IF (SELECT count(*) FROM (SELECT 1 FROM async_dl_count_deltas
                                   LIMIT 1001) d) > 1000
        THEN
            -- nobody folded them lately (no worker running?): fold now
            -- unless another session is at it
            PERFORM async_dl_counts_compact();
        END IF;
        n := async_dl_queued_count();   -- one snapshot: totals and deltas
        IF n >= p_max_pending THEN
            RETURN QUERY SELECT 'queue_full'::text, NULL::uuid, NULL::text;
            RETURN;
        END IF;
    END IF;

    IF p_max_active > 0 THEN
        IF async_dl_owner_active_count(p_owner) >= p_max_active THEN
            RETURN QUERY SELECT 'owner_limit'::text, NULL::uuid, NULL::text;
            RETURN;
        END IF;
    END IF;

    -- a 202 is a promise: this commit waits for the WAL flush
    PERFORM set_config('synchronous_commit', 'on', true);

    INSERT INTO async_dl_jobs (owner, idempotency_key, request_hash,
                               total_files, timeout_ms, deadline,
                               callback_url)
    VALUES (p_owner, p_key, p_hash, json_array_length(p_files), p_timeout_ms,
            now() + p_timeout_ms * interval '1 millisecond', p_callback)
    ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING * INTO j;

    IF NOT FOUND THEN
        -- a concurrent request with the same key committed first
        SELECT * INTO j FROM async_dl_jobs
         WHERE owner = p_owner AND idempotency_key = p_key;
        RETURN QUERY
        SELECT CASE WHEN j.request_hash = p_hash THEN 'replayed'
                    ELSE 'conflict' END,
               j.id, async_dl_job_created(j, p_prefix)::text;
        RETURN;
    END IF;

    INSERT INTO async_dl_files (job_id, idx, file_id, url, name)
    SELECT j.id, (e.ord - 1)::integer, (e.f ->> 'file_id')::bigint,
           e.f ->> 'url', e.f ->> 'name'
      FROM json_array_elements(p_files) WITH ORDINALITY AS e (f, ord);

    RETURN QUERY SELECT 'created'::text, j.id,
                        async_dl_job_created(j, p_prefix)::text;
END $$;
