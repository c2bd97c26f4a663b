-- async-dl schema, version 23: the list filters on the status it shows,
-- and a paused file keeps the time it was due.
--
-- - GET {p}jobs?status=: the list shows a paused job as "paused" (22's
--   summary) but filtered on the stored status, so ?status=processing
--   listed jobs that said "paused" and ?status=paused was refused.  It now
--   filters on the status shown: "paused" lists the paused jobs, "queued"
--   and "processing" the ones that are not.
-- - A pause held a pending file by setting its next_attempt_at to
--   infinity, and the resume made it due at once: a file waiting out a
--   retry's backoff, or an origin's Retry-After, was tried again on the
--   resume.  The hold now keeps when the file was due (held_due), and the
--   resume makes it due then (or at once, if that time has passed): the
--   backoff runs in wall-clock time, paused or not.

ALTER TABLE async_dl_files ADD COLUMN held_due timestamptz;

-- The status a job's documents show.
CREATE FUNCTION async_dl_job_shown_status(j async_dl_jobs) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN async_dl_job_paused(j) THEN 'paused' ELSE j.status END
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

-- 22's hold, keeping when the file was due.  A file already held keeps
-- its held_due (a hand-back of a held file is not a new due time).
CREATE OR REPLACE FUNCTION async_dl_files_hold_paused() RETURNS trigger
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
       SET next_attempt_at = greatest(now(), coalesce(held_due, now())),
           held_due = NULL
     WHERE NOT p_hold AND job_id = p_job AND status = 'pending'
       AND next_attempt_at = 'infinity';
$$;

-- 22's pause and resume, with the files' part above.
CREATE OR REPLACE FUNCTION async_dl_job_pause(p_job uuid, p_owner text,
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
                                                 interval '0') END,
           event_seq = event_seq + 1, updated_at = now()
     WHERE id = p_job
    RETURNING event_seq INTO j.event_seq;
    PERFORM async_dl_job_hold_files(p_job, p_pause);

    -- the workers hand back (pause) or claim again (as for a new job: 1's
    -- channel); the streams' event at once ("e")
    PERFORM pg_notify(CASE WHEN p_pause THEN 'async_dl_pause'
                           ELSE 'async_dl_jobs' END, p_job::text);
    PERFORM pg_notify('async_dl_events',
                      p_job::text || ' ' || j.event_seq || ' e');
    RETURN CASE WHEN p_pause THEN 'paused' ELSE 'resumed' END;
END $$;
