-- async-dl schema, version 10: one naming for what is held under a lease,
-- and initiate's whole row written by initiate.
--
-- A file, a job's zip and a job's callback are each claimed by one worker
-- at a time.  Until 9 the three named that alike only for the files:
--
--   files     lease_owner, lease_until, next_attempt_at
--   zip       bundle_lease_owner, and bundle_lease_until both for the end
--             of a builder's lease and for "retry not before" (pending)
--   callback  callback_owner, and callback_next_at both for "retry not
--             before" and for the end of a deliverer's lease
--
-- Now each of them has the same three columns, one meaning each:
--
--   <x>lease_owner      the claim's lease token, while it is held
--   <x>lease_until      when that lease runs out, while it is held
--   <x>next_attempt_at  not to be claimed before (NULL: at once); kept by
--                       the claim, set again by a hand-back or a retry
--
-- with <x> "", "bundle_" and "callback_".  A zip or callback is claimable
-- when its lease ran out, or, not held, when its next attempt is due:
-- coalesce(<x>lease_until, <x>next_attempt_at).  The claim and finish
-- functions keep their names, arguments and results.
--
-- Until 9, initiate passed {p} to the jobs' insert trigger through a
-- transaction-local setting (async_dl.api_prefix); now it writes
-- api_prefix in its INSERT, and the trigger is gone.

-- --- the columns ---------------------------------------------------------

ALTER TABLE async_dl_jobs RENAME COLUMN callback_owner
    TO callback_lease_owner;
ALTER TABLE async_dl_jobs RENAME COLUMN callback_next_at
    TO callback_next_attempt_at;
ALTER TABLE async_dl_jobs ADD COLUMN callback_lease_until timestamptz;
ALTER TABLE async_dl_jobs ADD COLUMN bundle_next_attempt_at timestamptz;

-- Each value where it now belongs: a pending zip's retry time, a held
-- callback's lease end.  Not a change of the jobs for their readers: no
-- event, updated_at kept.
ALTER TABLE async_dl_jobs DISABLE TRIGGER async_dl_jobs_before_update;
UPDATE async_dl_jobs
   SET bundle_next_attempt_at = bundle_lease_until,
       bundle_lease_until = NULL
 WHERE bundle_status = 'pending' AND bundle_lease_until IS NOT NULL;
UPDATE async_dl_jobs
   SET callback_lease_until = callback_next_attempt_at,
       callback_next_attempt_at = NULL
 WHERE callback_lease_owner IS NOT NULL;
ALTER TABLE async_dl_jobs ENABLE TRIGGER async_dl_jobs_before_update;

-- what a worker may claim, in the order the claims take it
DROP INDEX async_dl_jobs_bundle_todo;
CREATE INDEX async_dl_jobs_bundle_todo
    ON async_dl_jobs ((coalesce(bundle_lease_until, bundle_next_attempt_at)))
    WHERE bundle_status IN ('pending', 'building');
DROP INDEX async_dl_jobs_callback_todo;
CREATE INDEX async_dl_jobs_callback_todo
    ON async_dl_jobs ((coalesce(callback_lease_until,
                                callback_next_attempt_at)))
    WHERE callback_status = 'pending';


-- --- the zip -------------------------------------------------------------

-- Claim one job's zip for p_worker (the claim's lease token), as in 006:
-- pending ones whose next attempt is due, and building ones whose
-- builder's lease ran out (a crashed worker: built again from the start).
-- After p_max_attempts the zip fails.  Rows: the stored files, in order.
CREATE OR REPLACE FUNCTION async_dl_bundle_claim(p_worker text,
                                                 p_lease interval,
                                                 p_max_attempts integer,
                                                 p_prefix text DEFAULT NULL)
RETURNS TABLE (job_id uuid, attempts integer, idx integer, name text,
               object_key text, size bigint, mtime bigint, zip_key text)
LANGUAGE plpgsql AS $$
DECLARE
    j async_dl_jobs;
BEGIN
    LOOP
        SELECT * INTO j FROM async_dl_jobs jb
         WHERE jb.bundle_status IN ('pending', 'building')
           AND coalesce(jb.bundle_lease_until, jb.bundle_next_attempt_at,
                        '-infinity') < now()
         ORDER BY coalesce(jb.bundle_lease_until, jb.bundle_next_attempt_at)
                  NULLS FIRST
         LIMIT 1
           FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        EXIT WHEN j.bundle_attempts < p_max_attempts;
        UPDATE async_dl_jobs
           SET bundle_status = 'failed', bundle_lease_owner = NULL,
               bundle_lease_until = NULL,
               bundle_error = coalesce(bundle_error || ' (gave up after '
                                       || bundle_attempts || ' attempts)',
                                       'gave up after ' || bundle_attempts
                                       || ' attempts')
         WHERE id = j.id;
    END LOOP;

    UPDATE async_dl_jobs
       SET bundle_status = 'building', bundle_lease_owner = p_worker,
           bundle_lease_until = now() + p_lease,
           bundle_attempts = bundle_attempts + 1,
           bundle_write_key = coalesce(p_prefix || j.id::text || '/'
                                       || j.id::text || '.zip',
                                       bundle_write_key)
     WHERE id = j.id
    RETURNING * INTO j;

    RETURN QUERY
    SELECT j.id, j.bundle_attempts, f.idx, async_dl_file_display_name(f),
           f.object_key, f.size,
           extract(epoch FROM coalesce(f.completed_at, now()))::bigint,
           j.bundle_write_key
      FROM async_dl_files f
     WHERE f.job_id = j.id AND f.status = 'completed'
       AND f.object_key IS NOT NULL
     ORDER BY f.idx;
END $$;

-- A zip build ended, as in 004: p_status 'completed' (key, size, sha256,
-- files), 'failed' (error; tried again at p_retry_at when that is given,
-- else final) or 'pending' (handed back: not counted as an attempt).
-- False when the lease p_worker is not the zip's.
CREATE OR REPLACE FUNCTION async_dl_bundle_finish(p_job uuid, p_worker text,
                                                  p_status text, p_key text,
                                                  p_size bigint,
                                                  p_sha256 text,
                                                  p_files integer,
                                                  p_error text,
                                                  p_retry_at timestamptz)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM async_dl_jobs
      WHERE id = p_job AND bundle_status = 'building'
        AND bundle_lease_owner = p_worker
        FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;

    IF p_status = 'completed' THEN
        UPDATE async_dl_jobs
           SET bundle_status = 'completed', bundle_key = p_key,
               bundle_size = p_size, bundle_sha256 = p_sha256,
               bundle_files = p_files, bundle_error = NULL,
               bundle_lease_owner = NULL, bundle_lease_until = NULL,
               bundle_completed_at = now()
         WHERE id = p_job;
    ELSIF p_status = 'pending' OR p_retry_at IS NOT NULL THEN
        UPDATE async_dl_jobs
           SET bundle_status = 'pending', bundle_error = p_error,
               bundle_lease_owner = NULL, bundle_lease_until = NULL,
               bundle_next_attempt_at = p_retry_at,
               bundle_attempts = bundle_attempts
                                 - (p_status = 'pending')::integer
         WHERE id = p_job;
    ELSE
        UPDATE async_dl_jobs
           SET bundle_status = 'failed', bundle_error = p_error,
               bundle_lease_owner = NULL, bundle_lease_until = NULL
         WHERE id = p_job;
    END IF;
    PERFORM pg_notify('async_dl_lifecycle', p_job::text);
    RETURN true;
END $$;


-- --- the callback --------------------------------------------------------

-- A job that ends, as in 007: when it expires, and whether it gets a
-- callback (due at once).
CREATE OR REPLACE FUNCTION async_dl_jobs_ended() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    s async_dl_lifecycle_settings;
BEGIN
    SELECT * INTO s FROM async_dl_lifecycle_settings;
    NEW.expires_at := coalesce(NEW.completed_at, now())
        + CASE WHEN NEW.status = 'failed'
               THEN coalesce(s.ttl_failed, interval '1 hour')
               ELSE coalesce(s.ttl_completed, interval '24 hours') END;
    IF NEW.callback_url IS NOT NULL THEN
        NEW.callback_status := 'pending';
        NEW.callback_next_attempt_at := now();
    END IF;
    PERFORM pg_notify('async_dl_lifecycle', NEW.id::text);
    RETURN NEW;
END $$;

-- Claim up to p_limit callbacks for p_worker (the claim's lease token), as
-- in 004: pending, due (or their deliverer's lease ran out), and the job's
-- zip (if any) settled, so that the document sent is final.  The claim
-- counts the attempt and holds the callback for p_lease, so a crashed
-- worker's delivery is tried again.  body is the job's status document,
-- as GET {p}status/{id} answers it.
CREATE OR REPLACE FUNCTION async_dl_callback_claim(p_worker text,
                                                   p_limit integer,
                                                   p_lease interval)
RETURNS TABLE (job_id uuid, url text, attempts integer, body text)
LANGUAGE plpgsql AS $$
DECLARE
    j async_dl_jobs;
BEGIN
    FOR j IN
        SELECT * FROM async_dl_jobs jb
         WHERE jb.callback_status = 'pending'
           AND coalesce(jb.callback_lease_until,
                        jb.callback_next_attempt_at) <= now()
           AND (jb.bundle_status IS NULL
                OR jb.bundle_status IN ('completed', 'failed'))
         ORDER BY coalesce(jb.callback_lease_until,
                           jb.callback_next_attempt_at)
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    LOOP
        UPDATE async_dl_jobs
           SET callback_attempts = callback_attempts + 1,
               callback_lease_owner = p_worker,
               callback_lease_until = now() + p_lease
         WHERE id = j.id
        RETURNING * INTO j;
        RETURN QUERY
        SELECT j.id, j.callback_url, j.callback_attempts,
               async_dl_job_status(j.id, j.owner,
                                   coalesce(j.api_prefix, '/'));
    END LOOP;
END $$;

-- A delivery attempt ended, as in 004.  p_ok: delivered.  Else p_error,
-- and p_retry_at: the next attempt (NULL: no more tries, failed).  False
-- when the lease p_worker is not the callback's any more.
CREATE OR REPLACE FUNCTION async_dl_callback_finish(p_job uuid,
                                                    p_worker text,
                                                    p_ok boolean,
                                                    p_error text,
                                                    p_retry_at timestamptz)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE async_dl_jobs
       SET callback_status = CASE WHEN p_ok THEN 'delivered'
                                  WHEN p_retry_at IS NULL THEN 'failed'
                                  ELSE 'pending' END,
           callback_error = CASE WHEN p_ok THEN NULL ELSE p_error END,
           callback_next_attempt_at = CASE WHEN p_ok THEN NULL
                                           ELSE p_retry_at END,
           delivered_at = CASE WHEN p_ok THEN now() END,
           callback_lease_owner = NULL, callback_lease_until = NULL
     WHERE id = p_job AND callback_status = 'pending'
       AND callback_lease_owner = p_worker;
    RETURN FOUND;
END $$;


-- --- initiate ------------------------------------------------------------

DROP TRIGGER async_dl_jobs_prefix ON async_dl_jobs;
DROP FUNCTION async_dl_jobs_prefix();

-- Initiate's answer for the job j already made with its Idempotency-Key:
-- replayed for the same request (p_hash), else conflict.
CREATE FUNCTION async_dl_job_replayed(j async_dl_jobs, p_hash text,
                                      p_prefix text)
RETURNS TABLE (outcome text, job_id uuid, body text)
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN j.request_hash = p_hash THEN 'replayed'
                ELSE 'conflict' END,
           j.id, async_dl_job_created(j, p_prefix)::text
$$;

-- POST {p}initiate, as in 005; {p} is kept with the job (for the
-- callback's status document) by the INSERT itself, NULL when empty.
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
    IF p_key IS NOT NULL THEN
        SELECT * INTO j FROM async_dl_jobs
         WHERE owner = p_owner AND idempotency_key = p_key;
        IF FOUND THEN
            RETURN QUERY SELECT * FROM async_dl_job_replayed(j, p_hash,
                                                             p_prefix);
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
                               callback_url, api_prefix)
    VALUES (p_owner, p_key, p_hash, json_array_length(p_files), p_timeout_ms,
            now() + p_timeout_ms * interval '1 millisecond', p_callback,
            nullif(p_prefix, ''))
    ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL
    DO NOTHING
    RETURNING * INTO j;

    IF NOT FOUND THEN
        -- a concurrent request with the same key committed first
        SELECT * INTO j FROM async_dl_jobs
         WHERE owner = p_owner AND idempotency_key = p_key;
        RETURN QUERY SELECT * FROM async_dl_job_replayed(j, p_hash, p_prefix);
        RETURN;
    END IF;

    INSERT INTO async_dl_files (job_id, idx, file_id, url, name)
    SELECT j.id, (e.ord - 1)::integer, (e.f ->> 'file_id')::bigint,
           e.f ->> 'url', e.f ->> 'name'
      FROM json_array_elements(p_files) WITH ORDINALITY AS e (f, ord);

    RETURN QUERY SELECT 'created'::text, j.id,
                        async_dl_job_created(j, p_prefix)::text;
END $$;
