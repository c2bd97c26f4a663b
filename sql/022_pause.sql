-- async-dl schema, version 22: pause and resume a job.
--
-- POST {p}{id}/pause stops the job's transfers; POST {p}{id}/resume lets
-- them go on.  A pause is a flag beside the job's lifecycle, not a status
-- of its own: the job stays queued or processing in the row (so the
-- counters, the backpressure limits, the claims' fairness, cancel, DELETE
-- and expiry treat it as any job not ended), and the documents show
-- "paused" for the job and for each of its files not ended.
--
-- - paused_at: when it was paused; NULL when it is not.
-- - A paused job's deadline does not run: the pause keeps what was left
--   of it (paused_left) and sets the deadline to infinity, so neither the
--   deadline sweep nor a claim's deadline ends it; the resume sets the
--   deadline to now() + what was left.
-- - A paused job's pending files are not due: their next_attempt_at is
--   infinity, so no claim takes them (the claims' index is read up to
--   now()).  A trigger holds every file that becomes pending while its
--   job is paused (a transfer the worker handed back on the pause, a
--   retry's backoff, a lease that ran out): one place, whichever path.
--   The resume makes them due at once.
-- - A paused job's leases do not run out: the pause sets the lease of
--   each file downloading to infinity, and a renewal keeps it so.  A
--   claim takes over a lease that ran out (a worker died) straight to
--   another worker: not while the job is paused.  The worker hands the
--   file back on the notification below; if it died, the resume lets the
--   lease run out at once and a claim takes it over.
-- - The workers hear of a pause on async_dl_pause (payload: the job id)
--   and hand back the job's transfers; the streams hear of it on
--   async_dl_events (an "e" notification: at once, not throttled).
-- - A file that ends while its job is paused ends as usual (its upload
--   was committing); a job whose last file ends so ends, and is no longer
--   paused.  A zip being built goes on: the pause stops file transfers.

ALTER TABLE async_dl_jobs ADD COLUMN paused_at timestamptz,
                          ADD COLUMN paused_left interval;

-- What the documents show: the stored status, or "paused".
CREATE FUNCTION async_dl_shown_status(p_status text, p_paused_at timestamptz,
                                      p_live text[])
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_paused_at IS NOT NULL AND p_status = ANY (p_live)
                THEN 'paused' ELSE p_status END
$$;

-- While its job is paused, a file that becomes pending waits for the
-- resume, and a renewal of a file's lease keeps it from running out.
CREATE FUNCTION async_dl_files_hold_paused() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM async_dl_jobs j
                WHERE j.id = NEW.job_id AND j.paused_at IS NOT NULL)
    THEN
        IF NEW.status = 'pending' THEN
            NEW.next_attempt_at := 'infinity';
        ELSE
            NEW.lease_until := 'infinity';
        END IF;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER async_dl_files_hold_paused
    BEFORE UPDATE OF status ON async_dl_files
    FOR EACH ROW WHEN (NEW.status = 'pending')
    EXECUTE FUNCTION async_dl_files_hold_paused();

CREATE TRIGGER async_dl_files_keep_paused_lease
    BEFORE UPDATE OF lease_until ON async_dl_files
    FOR EACH ROW
    WHEN (OLD.lease_until = 'infinity' AND NEW.status = 'downloading'
          AND NEW.lease_owner IS NOT DISTINCT FROM OLD.lease_owner
          AND NEW.lease_until IS NOT NULL)
    EXECUTE FUNCTION async_dl_files_hold_paused();

-- POST {p}{id}/pause (p_pause) and POST {p}{id}/resume: NULL when there
-- is no such job of p_owner; else "paused" or "resumed" (also when it
-- already was), or the status of a job that ended.
CREATE FUNCTION async_dl_job_pause(p_job uuid, p_owner text,
                                   p_pause boolean)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    j async_dl_jobs;
BEGIN
    IF NOT async_dl_lock_job(p_job, p_owner) THEN
        RETURN NULL;
    END IF;
    SELECT * INTO j FROM async_dl_jobs WHERE id = p_job;
    IF j.status NOT IN ('queued', 'processing') THEN
        RETURN j.status;
    END IF;
    IF (j.paused_at IS NOT NULL) = p_pause THEN
        RETURN CASE WHEN p_pause THEN 'paused' ELSE 'resumed' END;
    END IF;
    PERFORM set_config('synchronous_commit', 'on', true);   -- answered 200

    IF p_pause THEN
        UPDATE async_dl_jobs
           SET paused_at = now(),
               paused_left = greatest(deadline - now(), interval '0'),
               deadline = 'infinity'
         WHERE id = p_job;
        UPDATE async_dl_files SET next_attempt_at = 'infinity'
         WHERE job_id = p_job AND status = 'pending';
        UPDATE async_dl_files SET lease_until = 'infinity'
         WHERE job_id = p_job AND status = 'downloading';
        PERFORM pg_notify('async_dl_pause', p_job::text);
    ELSE
        UPDATE async_dl_jobs
           SET paused_at = NULL, paused_left = NULL,
               deadline = now() + coalesce(j.paused_left, interval '0')
         WHERE id = p_job;
        UPDATE async_dl_files SET next_attempt_at = now()
         WHERE job_id = p_job AND status = 'pending'
           AND next_attempt_at = 'infinity';
        -- a lease still held since the pause: its worker died (a live one
        -- handed the file back within a second of the pause)
        UPDATE async_dl_files SET lease_until = now()
         WHERE job_id = p_job AND status = 'downloading'
           AND lease_until = 'infinity';
        -- the workers claim again (as for a new job: 001's channel)
        PERFORM pg_notify('async_dl_jobs', p_job::text);
    END IF;

    -- the streams' event, at once ("e"), with the new sequence number
    UPDATE async_dl_jobs SET event_seq = event_seq + 1, updated_at = now()
     WHERE id = p_job
    RETURNING event_seq INTO j.event_seq;
    PERFORM pg_notify('async_dl_events',
                      p_job::text || ' ' || j.event_seq || ' e');
    RETURN CASE WHEN p_pause THEN 'paused' ELSE 'resumed' END;
END $$;

-- The routes' answer: the outcome and the status document.
CREATE FUNCTION async_dl_job_pause_status(p_job uuid, p_owner text,
                                          p_prefix text, p_pause boolean)
RETURNS TABLE (outcome text, body text)
LANGUAGE plpgsql AS $$
DECLARE
    s text;
BEGIN
    s := async_dl_job_pause(p_job, p_owner, p_pause);
    IF s IS NOT NULL THEN
        RETURN QUERY SELECT s, async_dl_job_status(p_job, p_owner, p_prefix);
    END IF;
END $$;

-- 2's summary, with the status shown and "pausedAt".
CREATE OR REPLACE FUNCTION async_dl_job_summary(j async_dl_jobs,
                                                p_prefix text)
RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'jobId', j.id,
        'status', async_dl_shown_status(j.status, j.paused_at,
                                        '{queued,processing}'),
        'progress', async_dl_job_progress(j),
        'totalFiles', j.total_files,
        'completedFiles', j.completed_files,
        'failedFiles', j.failed_files,
        'bytesDone', j.bytes_done,
        'bytesTotal', CASE WHEN j.sized_files = j.total_files
                           THEN j.bytes_total END,
        'downloadUrl', async_dl_job_download_url(j, p_prefix),
        'error', CASE WHEN j.error_code IS NOT NULL
                      THEN json_build_object('code', j.error_code,
                                             'message', j.error_message) END,
        'createdAt', async_dl_iso(j.created_at),
        'updatedAt', async_dl_iso(j.updated_at),
        'startedAt', async_dl_iso(j.started_at),
        'completedAt', async_dl_iso(j.completed_at),
        'expiresAt', async_dl_iso(j.expires_at),
        'pausedAt', CASE WHEN j.status IN ('queued', 'processing')
                         THEN async_dl_iso(j.paused_at) END)
$$;

-- 16's files, with the status shown: a paused job's files not ended are
-- "paused", and wait for nothing else.
CREATE OR REPLACE FUNCTION async_dl_job_files_json(j async_dl_jobs,
                                                   p_prefix text)
RETURNS json
LANGUAGE plpgsql STABLE AS $$
DECLARE
    lim    async_dl_claim_limits;
    owned  bigint := 0;
    held   timestamptz;
BEGIN
    held := CASE WHEN j.status IN ('queued', 'processing')
                 THEN j.paused_at END;
    SELECT * INTO lim FROM async_dl_claim_limits;
    IF lim.owner_limit > 0 AND held IS NULL THEN
        SELECT count(*) INTO owned FROM async_dl_files x
         WHERE x.status = 'downloading' AND x.owner = j.owner;
    END IF;
    RETURN (WITH hosts AS (
                SELECT h.host,
                       EXISTS (SELECT 1 FROM async_dl_hosts p
                                WHERE p.host = h.host
                                  AND p.paused_until > now()) AS paused,
                       CASE WHEN lim.host_limit > 0
                            THEN (SELECT count(*) FROM async_dl_files x
                                   WHERE x.status = 'downloading'
                                     AND x.host = h.host)
                            ELSE 0 END AS busy
                  FROM (SELECT DISTINCT f.host FROM async_dl_files f
                         WHERE f.job_id = j.id AND f.status = 'pending'
                           AND held IS NULL) h)
            SELECT coalesce(json_agg(json_build_object(
               'index', f.idx,
               'fileId', f.file_id,
               'url', f.url,
               'name', f.name,
               'status', async_dl_shown_status(f.status, held,
                                               '{pending,downloading}'),
               'size', f.size,
               'contentType', f.content_type,
               'sha256', f.sha256,
               'attempts', f.attempts,
               'waiting', CASE
                   WHEN f.status <> 'pending' OR held IS NOT NULL THEN NULL
                   WHEN f.next_attempt_at > now() THEN 'retry'
                   WHEN h.paused THEN 'host_paused'
                   WHEN lim.host_limit > 0 AND h.busy >= lim.host_limit
                        THEN 'host_limit'
                   WHEN lim.owner_limit > 0 AND owned >= lim.owner_limit
                        THEN 'owner_limit'
                   ELSE 'queue' END,
               'error', CASE WHEN f.error_code IS NOT NULL
                             THEN json_build_object('code', f.error_code,
                                                    'message',
                                                    f.error_message) END,
               'downloadUrl', CASE WHEN f.status = 'completed'
                                   THEN p_prefix || j.id::text || '/files/'
                                        || f.idx END)
             ORDER BY f.idx), '[]'::json)
              FROM async_dl_files f
              LEFT JOIN hosts h ON h.host = f.host
             WHERE f.job_id = j.id);
END $$;

-- 3's state for the streams.  A paused file is not ended ('p').  The
-- status is the stored one unless p_shown: a module of schema 21 or
-- older knows no "paused" (it would read an unknown status as an end),
-- and calls with two arguments.
DROP FUNCTION async_dl_job_events_state(uuid, text);
CREATE FUNCTION async_dl_job_events_state(p_job uuid, p_prefix text,
                                          p_shown boolean DEFAULT false)
RETURNS TABLE (o_owner text, o_seq bigint, o_status text, o_states text,
               o_summary text, o_files text, o_full text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT j.owner, j.event_seq,
           CASE WHEN p_shown
                THEN async_dl_shown_status(j.status, j.paused_at,
                                           '{queued,processing}')
                ELSE j.status END,
           coalesce(f.states, ''),
           async_dl_job_summary(j, p_prefix)::text,
           coalesce(f.files, ''),
           async_dl_job_status(j.id, j.owner, p_prefix)
      FROM async_dl_jobs j
      LEFT JOIN LATERAL (
           SELECT string_agg(CASE e ->> 'status'
                                 WHEN 'pending' THEN 'p'
                                 WHEN 'paused' THEN 'p'
                                 WHEN 'downloading' THEN 'd'
                                 WHEN 'completed' THEN 'c'
                                 WHEN 'failed' THEN 'f'
                                 ELSE 'x' END, '' ORDER BY n) AS states,
                  string_agg(replace(e::text, E'\n', ' '), E'\n'
                             ORDER BY n) AS files
             FROM json_array_elements(async_dl_job_files_json(j, p_prefix))
                  WITH ORDINALITY AS x (e, n)) f ON true
     WHERE j.id = p_job;
END $$;
