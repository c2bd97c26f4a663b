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
--   A held file keeps when it was due (held_due), and the resume makes it
--   due then, or at once if that time has passed: a retry's backoff, or
--   an origin's Retry-After, runs in wall-clock time, paused or not.
-- - A worker that died holding a paused job's file does not pass it on:
--   the claim takes over a lease that ran out only of a job not paused;
--   one of a paused job goes back to pending (held, its attempt not
--   counted).  The claim also checks, once it holds a row, that the file
--   is still due: a pause that committed after it picked the file and
--   before it locked it keeps the file.
-- - The workers hear of a pause on async_dl_pause (payload: the job id)
--   and hand back the job's transfers; the streams hear of it on
--   async_dl_events (an "e" notification: at once, not throttled).
-- - What a paused file keeps.  A file going up as a multipart upload
--   keeps its upload and the parts it stored: the worker handing it back
--   records them (async_dl_file_checkpoint: the key, the upload id, the
--   parts' ETags, the bytes they hold, the SHA-256 state after them, the
--   origin's size, validator and type) in resume.  The next worker to
--   claim the file goes on from there with a Range request, and says so
--   (async_dl_file_resumed: resumedFrom in the file's document, 0 when the
--   origin sent the whole file again); the upload is its own from then on.
--   An upload that nobody will go on with (the file ends otherwise, its
--   job is deleted, a worker cannot use it) is queued for the janitor to
--   abort, as a deleted object with its upload id.
-- - A file that ends while its job is paused ends as usual (its upload
--   was committing); a job whose last file ends so ends.  A job whose
--   files have all ended (its zip is being built) is not shown paused: a
--   pause stops file transfers only.
-- - The list (GET {p}jobs?status=) filters on the status the documents
--   show: "paused" lists the paused jobs, "queued" and "processing" the
--   ones that are not.

ALTER TABLE async_dl_jobs ADD COLUMN paused_at timestamptz,
                          ADD COLUMN paused_left interval;
ALTER TABLE async_dl_files ADD COLUMN resume jsonb,
                           ADD COLUMN resumed_from bigint,
                           ADD COLUMN held_due timestamptz;
ALTER TABLE async_dl_deleted_objects ADD COLUMN upload_id text;

-- The janitor's take, with the upload to abort (NULL: delete the object).
DROP FUNCTION async_dl_deleted_take(bigint, integer);
CREATE FUNCTION async_dl_deleted_take(p_lease_ms bigint, p_limit integer)
RETURNS TABLE (o_id bigint, o_job uuid, o_key text, o_upload_id text)
LANGUAGE sql AS $$
    UPDATE async_dl_deleted_objects
       SET deleted_at = now() + p_lease_ms * interval '1 millisecond'
     WHERE id IN (SELECT id FROM async_dl_deleted_objects
                   WHERE deleted_at <= now()
                   ORDER BY id LIMIT p_limit FOR UPDATE SKIP LOCKED)
    RETURNING id, job_id, object_key, upload_id
$$;

-- A kept upload nobody will go on with: aborted by the janitor.
CREATE FUNCTION async_dl_resume_abort(p_job uuid, p_resume jsonb)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_resume ->> 'uploadId' IS NOT NULL AND p_resume ->> 'key' IS NOT NULL
    THEN
        INSERT INTO async_dl_deleted_objects (job_id, object_key, upload_id)
        VALUES (p_job, p_resume ->> 'key', p_resume ->> 'uploadId');
        PERFORM pg_notify('async_dl_deleted', p_job::text);
    END IF;
END $$;

-- The worker handing a paused file back records what it stored: true
-- when the file is still its own, or when the same statement sent before
-- (its answer lost with the connection) recorded it already.  A kept
-- upload it replaces is aborted.
CREATE FUNCTION async_dl_file_checkpoint(p_job uuid, p_idx integer,
                                         p_worker text, p_resume jsonb)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    f async_dl_files;
    old jsonb;
BEGIN
    SELECT * INTO f FROM async_dl_files
     WHERE job_id = p_job AND idx = p_idx FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF f.status = 'pending'
       AND f.resume ->> 'uploadId' = p_resume ->> 'uploadId'
    THEN
        RETURN true;
    END IF;
    IF f.status <> 'downloading' OR f.lease_owner IS DISTINCT FROM p_worker
    THEN
        RETURN false;
    END IF;
    old := f.resume;
    IF old ->> 'uploadId' IS DISTINCT FROM p_resume ->> 'uploadId' THEN
        PERFORM async_dl_resume_abort(p_job, old);
    END IF;
    UPDATE async_dl_files SET resume = p_resume
     WHERE job_id = p_job AND idx = p_idx;
    RETURN true;
END $$;

-- The worker that claimed a file with a checkpoint took it up, from byte
-- p_from (its bytes count as done again), or, p_drop, could not (its
-- upload is aborted); p_from 0 later: the origin sent the whole file
-- again.  Either way the upload is no longer the row's to keep.
CREATE FUNCTION async_dl_file_resumed(p_job uuid, p_idx integer,
                                      p_worker text, p_from bigint,
                                      p_drop boolean)
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
    IF p_drop THEN
        PERFORM async_dl_resume_abort(p_job, f.resume);
    END IF;
    UPDATE async_dl_files
       SET resume = NULL,
           resumed_from = CASE WHEN p_drop THEN resumed_from ELSE p_from END,
           bytes_done = CASE WHEN p_drop THEN bytes_done
                             ELSE greatest(bytes_done, p_from) END,
           updated_at = now()
     WHERE job_id = p_job AND idx = p_idx
    RETURNING * INTO n;
    PERFORM async_dl_job_file_changed(f, n);
    RETURN true;
END $$;

-- A file that ends, or whose job is deleted, with an upload kept: the
-- upload is aborted.  A file handed back with one counts its bytes as
-- done (they are stored).
CREATE FUNCTION async_dl_files_resume_end() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM async_dl_resume_abort(OLD.job_id, OLD.resume);
        RETURN OLD;
    END IF;
    IF NEW.status = 'pending' THEN
        NEW.bytes_done := coalesce((NEW.resume ->> 'offset')::bigint, 0);
        RETURN NEW;
    END IF;
    PERFORM async_dl_resume_abort(NEW.job_id, NEW.resume);
    NEW.resume := NULL;
    RETURN NEW;
END $$;

CREATE TRIGGER async_dl_files_resume_end
    BEFORE UPDATE OF status ON async_dl_files
    FOR EACH ROW
    WHEN (NEW.resume IS NOT NULL
          AND NEW.status IN ('pending', 'completed', 'failed', 'canceled'))
    EXECUTE FUNCTION async_dl_files_resume_end();

CREATE TRIGGER async_dl_files_resume_delete
    BEFORE DELETE ON async_dl_files
    FOR EACH ROW WHEN (OLD.resume IS NOT NULL)
    EXECUTE FUNCTION async_dl_files_resume_end();

-- A file that becomes pending while its job is paused waits for the
-- resume, keeping when it was due.
CREATE FUNCTION async_dl_files_hold_paused() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM async_dl_jobs j
                WHERE j.id = NEW.job_id AND j.paused_at IS NOT NULL)
    THEN
        IF NEW.next_attempt_at <> 'infinity' THEN
            NEW.held_due := NEW.next_attempt_at;
        END IF;
        NEW.next_attempt_at := 'infinity';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER async_dl_files_hold_paused
    BEFORE UPDATE OF status ON async_dl_files
    FOR EACH ROW WHEN (NEW.status = 'pending')
    EXECUTE FUNCTION async_dl_files_hold_paused();

-- Is the job paused, as the documents show it: paused, not ended, and
-- with a file not ended.
CREATE FUNCTION async_dl_job_paused(j async_dl_jobs) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT j.paused_at IS NOT NULL AND j.status IN ('queued', 'processing')
           AND j.completed_files + j.failed_files < j.total_files
$$;

-- The status a job's documents show.
CREATE FUNCTION async_dl_job_shown_status(j async_dl_jobs) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN async_dl_job_paused(j) THEN 'paused' ELSE j.status END
$$;

-- The pause's and the resume's part on the job's pending files: held
-- (keeping when each was due), or due again when it was.
CREATE FUNCTION async_dl_job_hold_files(p_job uuid, p_hold boolean)
RETURNS void
LANGUAGE sql AS $$
    UPDATE async_dl_files
       SET held_due = next_attempt_at, next_attempt_at = 'infinity'
     WHERE p_hold AND job_id = p_job AND status = 'pending'
       AND next_attempt_at <> 'infinity';
    UPDATE async_dl_files
       SET next_attempt_at = greatest(now(), held_due),  -- (NULL: now())
           held_due = NULL
     WHERE NOT p_hold AND job_id = p_job AND status = 'pending'
       AND next_attempt_at = 'infinity';
$$;

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

    UPDATE async_dl_jobs
       SET paused_at = CASE WHEN p_pause THEN now() END,
           paused_left = CASE WHEN p_pause
                              THEN greatest(deadline - now(),
                                            interval '0') END,
           deadline = CASE WHEN p_pause THEN 'infinity'
                           ELSE now() + coalesce(j.paused_left,
                                                 interval '0') END
     WHERE id = p_job
    RETURNING event_seq INTO j.event_seq;     -- numbered by 1's trigger
    PERFORM async_dl_job_hold_files(p_job, p_pause);

    -- the workers hand back (pause) or claim again (as for a new job: 1's
    -- channel); the streams' event at once ("e")
    PERFORM pg_notify(CASE WHEN p_pause THEN 'async_dl_pause'
                           ELSE 'async_dl_jobs' END, p_job::text);
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
        'status', async_dl_job_shown_status(j),
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
        'pausedAt', CASE WHEN async_dl_job_paused(j)
                         THEN async_dl_iso(j.paused_at) END)
$$;

-- 2's list, filtered on the status shown.
CREATE OR REPLACE FUNCTION async_dl_job_list(p_owner text, p_prefix text,
                                             p_status text, p_limit integer,
                                             p_offset integer,
                                             p_cursor text)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    c_at   timestamptz;
    c_id   uuid;
    js     async_dl_jobs[];
    total  bigint;
    next   text;
    jobs   json;
BEGIN
    IF p_cursor IS NOT NULL THEN
        c_at := 'epoch'::timestamptz
                + split_part(p_cursor, '.', 1)::bigint
                  * interval '1 microsecond';
        c_id := split_part(p_cursor, '.', 2)::uuid;
    END IF;

    SELECT count(*) INTO total FROM async_dl_jobs j
     WHERE j.owner = p_owner
       AND (p_status IS NULL OR async_dl_job_shown_status(j) = p_status)
       AND async_dl_job_live(j.expires_at);

    SELECT array_agg(p ORDER BY p.created_at DESC, p.id DESC) INTO js
      FROM (SELECT * FROM async_dl_jobs j
             WHERE j.owner = p_owner
               AND (p_status IS NULL
                    OR async_dl_job_shown_status(j) = p_status)
               AND async_dl_job_live(j.expires_at)
               AND (c_at IS NULL OR (j.created_at, j.id) < (c_at, c_id))
             ORDER BY j.created_at DESC, j.id DESC
            OFFSET p_offset LIMIT p_limit + 1) p;

    IF coalesce(array_length(js, 1), 0) > p_limit THEN
        js := js[1:p_limit];
        next := (extract(epoch FROM js[p_limit].created_at) * 1000000)
                    ::bigint::text || '.' || js[p_limit].id::text;
    END IF;

    SELECT coalesce(json_agg(async_dl_job_summary(js[i], p_prefix)
                             ORDER BY i), '[]'::json)
      INTO jobs
      FROM generate_subscripts(js, 1) AS i;

    RETURN json_build_object('jobs', coalesce(jobs, '[]'::json),
                             'limit', p_limit, 'offset', p_offset,
                             'total', total, 'nextCursor', next)::text;
END $$;

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
    held := CASE WHEN async_dl_job_paused(j) THEN j.paused_at END;
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
               'status', CASE WHEN held IS NOT NULL
                                   AND f.status IN ('pending', 'downloading')
                              THEN 'paused' ELSE f.status END,
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
               'resumedFrom', f.resumed_from,
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
           CASE WHEN p_shown AND async_dl_job_paused(j) THEN 'paused'
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

-- 15's claim, which leaves paused jobs alone: a lease of a paused job
-- that ran out goes back to pending (held) instead of to this worker, and
-- a file picked as due is taken only if it is still due once locked (the
-- pick reads without locks: a pause may commit in between).
DROP FUNCTION async_dl_claim(text, integer, interval, integer, text,
                             integer, integer);
CREATE FUNCTION async_dl_claim(p_worker text, p_limit integer,
                               p_lease interval, p_max_attempts integer,
                               p_prefix text DEFAULT NULL,
                               p_host_limit integer DEFAULT 0,
                               p_owner_limit integer DEFAULT 0)
RETURNS TABLE (job_id uuid, idx integer, url text, name text,
               attempts integer, deadline timestamptz, file_id bigint,
               lease text, write_key text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    v_job   uuid[];
    v_idx   integer[];
    v_dead  boolean[];
    v_done  bigint[];
    n       integer;
    r       record;
BEGIN
    p_host_limit := coalesce(p_host_limit, 0);
    p_owner_limit := coalesce(p_owner_limit, 0);
    PERFORM pg_advisory_xact_lock(6920133011209537015);

    -- leases of paused jobs that ran out (their worker died before it
    -- handed the file back): pending, held until the resume, the attempt
    -- not counted, as the worker's own hand-back would have done
    FOR r IN
        SELECT f.job_id, f.idx, f.lease_owner, f.attempts
          FROM async_dl_files f
          JOIN async_dl_jobs j ON j.id = f.job_id
         WHERE f.status = 'downloading' AND f.lease_until < now()
           AND j.paused_at IS NOT NULL
         ORDER BY f.lease_until
         LIMIT p_limit
           FOR UPDATE OF f SKIP LOCKED
    LOOP
        PERFORM async_dl_file_finish(r.job_id, r.idx, r.lease_owner,
                                     'pending', NULL, NULL, NULL, NULL,
                                     greatest(r.attempts - 1, 0), NULL, NULL,
                                     now());
    END LOOP;

    -- leases that ran out: few rows, found by the downloading index
    SELECT coalesce(array_agg(p.job_id), '{}'),
           coalesce(array_agg(p.idx), '{}'),
           coalesce(array_agg(p.attempts >= p_max_attempts), '{}'),
           coalesce(array_agg(p.bytes_done), '{}')
      INTO v_job, v_idx, v_dead, v_done
      FROM (SELECT f.job_id, f.idx, f.attempts, f.bytes_done
              FROM async_dl_files f
             WHERE f.status = 'downloading' AND f.lease_until < now()
               AND NOT EXISTS (SELECT 1 FROM async_dl_jobs j
                                WHERE j.id = f.job_id
                                  AND j.paused_at IS NOT NULL)
             ORDER BY f.lease_until
             LIMIT p_limit
               FOR UPDATE OF f SKIP LOCKED) p;

    -- files that fail here take no room in the claim
    n := p_limit - (SELECT count(*) FROM unnest(v_dead) d WHERE NOT d);
    IF n > 0 THEN
        SELECT v_job || coalesce(array_agg(p.job_id), '{}'),
               v_idx || coalesce(array_agg(p.idx), '{}'),
               v_dead || coalesce(array_agg(false), '{}'),
               v_done || coalesce(array_agg(p.bytes_done), '{}')
          INTO v_job, v_idx, v_dead, v_done
          FROM (SELECT f.job_id, f.idx, f.bytes_done
                  FROM (SELECT c.job_id, c.idx
                          FROM async_dl_claim_pick(n, p_host_limit,
                                                   p_owner_limit) c
                        OFFSET 0) c
                  JOIN async_dl_files f
                    ON f.job_id = c.job_id AND f.idx = c.idx
                 WHERE f.status = 'pending' AND f.next_attempt_at <= now()
                   FOR UPDATE OF f SKIP LOCKED) p;
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

    -- a key an earlier attempt wrote under another worker's prefix is
    -- nobody's once this claim writes elsewhere
    INSERT INTO async_dl_deleted_objects (job_id, object_key)
    SELECT f.job_id, f.write_key
      FROM unnest(v_job, v_idx, v_dead) AS u (j, i, dead)
      JOIN async_dl_files f ON f.job_id = u.j AND f.idx = u.i
     WHERE NOT u.dead AND p_prefix IS NOT NULL AND f.write_key IS NOT NULL
       AND f.write_key <> async_dl_object_key(p_prefix, f.job_id, f.idx,
                                              f.name, f.url);

    UPDATE async_dl_files f
       SET status = 'downloading',
           lease_owner = p_worker || '/' || nextval('async_dl_lease_seq'),
           lease_until = now() + p_lease,
           attempts = f.attempts + 1,
           started_at = coalesce(f.started_at, now()),
           write_key = CASE WHEN p_prefix IS NULL THEN f.write_key
                            ELSE async_dl_object_key(p_prefix, f.job_id,
                                                     f.idx, f.name, f.url)
                       END,
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
           f.file_id, f.lease_owner, f.write_key
      FROM unnest(v_job, v_idx, v_dead) AS u (j, i, dead)
      JOIN async_dl_files f ON f.job_id = u.j AND f.idx = u.i
      JOIN async_dl_jobs j ON j.id = f.job_id
     WHERE NOT u.dead;
END $$;

-- 5's progress report, which also renews the lease, answers NULL instead
-- of true while the job is paused.  A worker that missed the pause's
-- notification (its connection was down) hands the file back at its next
-- report, as on the notification; one whose upload is finishing goes on
-- (its lease renewed).  A worker of schema 21 reads NULL as renewed.
ALTER FUNCTION async_dl_file_progress(uuid, integer, text, interval, bigint,
                                      bigint, integer)
    RENAME TO async_dl_file_report;
CREATE FUNCTION async_dl_file_progress(p_job uuid, p_idx integer,
                                       p_worker text, p_lease interval,
                                       p_bytes bigint, p_size bigint,
                                       p_attempts integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT async_dl_file_report(p_job, p_idx, p_worker, p_lease, p_bytes,
                                p_size, p_attempts)
    THEN
        RETURN false;
    END IF;
    -- read after the report waited for the row: a pause that held it
    -- has committed
    IF EXISTS (SELECT 1 FROM async_dl_jobs j
                WHERE j.id = p_job AND j.paused_at IS NOT NULL)
    THEN
        RETURN NULL;
    END IF;
    RETURN true;
END $$;

-- The documents changed shape ("pausedAt"): the status caches start
-- afresh (13).
NOTIFY async_dl_events, 'flush';
