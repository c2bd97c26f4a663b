-- async-dl schema, version 2: the HTTP API's side.
--
-- Each API request is one round trip: the nginx module runs one of the
-- functions below as a prepared statement and gets back the whole answer
-- (a JSON document built here with json_build_object, keys in the order of
-- the API documentation) plus, where the answer depends on it, an outcome
-- word that the module maps to an HTTP status.
--
-- {p} (p_prefix) is the location prefix where async_dl is on, for the
-- statusUrl / downloadUrl links.  p_owner is async_dl_owner's value ('' when
-- the directive is not used): a job of another owner is the same as no job.
--
-- Times are ISO 8601 UTC with milliseconds: 2025-01-31T12:00:00.000Z.

-- Objects of deleted jobs, for the worker to remove from the storage: the
-- module has no S3 client of its own, and a DELETE must not wait for the
-- storage.  The worker deletes the objects and then these rows.
CREATE TABLE async_dl_deleted_objects (
    id          bigserial PRIMARY KEY,
    job_id      uuid NOT NULL,
    object_key  text NOT NULL,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);


CREATE FUNCTION async_dl_iso(t timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

-- 0..100: by bytes when every file's size is known, else by ended files;
-- 100 only once the job has ended.
CREATE FUNCTION async_dl_job_progress(j async_dl_jobs) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN j.status IN ('completed', 'failed') THEN 100
        WHEN j.status = 'canceled'
            THEN (j.completed_files * 100 / j.total_files)::integer
        WHEN j.sized_files = j.total_files AND j.bytes_total > 0
            THEN least(99, j.bytes_done * 100 / j.bytes_total)::integer
        ELSE least(99, (j.completed_files + j.failed_files) * 100
                       / j.total_files)::integer
    END
$$;

-- Something to download: a single-file job's stored file, a multi-file
-- job's stored bundle.
CREATE FUNCTION async_dl_job_download_url(j async_dl_jobs, p_prefix text)
RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN (j.total_files = 1 AND j.completed_files = 1)
                     OR j.bundle_status = 'completed'
                THEN p_prefix || j.id::text END
$$;

-- A job without its files: the list's entries, the start of the status.
CREATE FUNCTION async_dl_job_summary(j async_dl_jobs, p_prefix text)
RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'jobId', j.id,
        'status', j.status,
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
        'expiresAt', async_dl_iso(j.expires_at))
$$;

-- The job's zip bundle (004) and callback, for the status document.
CREATE FUNCTION async_dl_job_bundle_json(j async_dl_jobs, p_prefix text)
RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN j.bundle_status IS NOT NULL THEN json_build_object(
        'status', j.bundle_status,
        'files', j.bundle_files,
        'size', j.bundle_size,
        'sha256', j.bundle_sha256,
        'downloadUrl', CASE WHEN j.bundle_status = 'completed'
                            THEN p_prefix || j.id::text END,
        'error', j.bundle_error,
        'completedAt', async_dl_iso(j.bundle_completed_at)) END
$$;

CREATE FUNCTION async_dl_job_callback_json(j async_dl_jobs)
RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN j.callback_url IS NOT NULL THEN json_build_object(
        'url', j.callback_url,
        'status', coalesce(j.callback_status, 'pending'),
        'attempts', j.callback_attempts,
        'lastError', j.callback_error,
        'deliveredAt', async_dl_iso(j.delivered_at)) END
$$;

-- The files of the status document, in index order.
--
-- PL/pgSQL on purpose, here and for the status document: it keeps its
-- plans per connection, where a SQL function with a FROM clause is neither
-- inlined nor cached and was planned again on every call (status went from
-- about 730 to 1800 calls/s on one connection).
CREATE FUNCTION async_dl_job_files_json(j async_dl_jobs, p_prefix text)
RETURNS json
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(json_agg(json_build_object(
               'index', f.idx,
               'fileId', f.file_id,
               'url', f.url,
               'name', f.name,
               'status', f.status,
               'size', f.size,
               'contentType', f.content_type,
               'sha256', f.sha256,
               'attempts', f.attempts,
               'error', CASE WHEN f.error_code IS NOT NULL
                             THEN json_build_object('code', f.error_code,
                                                    'message',
                                                    f.error_message) END,
               'downloadUrl', CASE WHEN f.status = 'completed'
                                   THEN p_prefix || j.id::text || '/files/'
                                        || f.idx END)
             ORDER BY f.idx), '[]'::json)
      FROM async_dl_files f
     WHERE f.job_id = j.id);
END $$;

-- GET {p}status/{id}: the document (the job's summary plus "bundle",
-- "callback" and "files"), or NULL: no such job for this owner, or it
-- expired.  PL/pgSQL for its cached plans (above).
CREATE FUNCTION async_dl_job_status(p_job uuid, p_owner text, p_prefix text)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    j  async_dl_jobs;
BEGIN
    SELECT * INTO j FROM async_dl_jobs
     WHERE id = p_job AND owner = p_owner
       AND async_dl_job_live(expires_at);
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    RETURN left(async_dl_job_summary(j, p_prefix)::text, -1)
           || ', "bundle" : '
           || coalesce(async_dl_job_bundle_json(j, p_prefix)::text, 'null')
           || ', "callback" : '
           || coalesce(async_dl_job_callback_json(j)::text, 'null')
           || ', "files" : ' || async_dl_job_files_json(j, p_prefix)::text
           || '}';
END $$;

-- The answer to POST {p}initiate (created or replayed).
CREATE FUNCTION async_dl_job_created(j async_dl_jobs, p_prefix text)
RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'jobId', j.id,
        'status', j.status,
        'totalFiles', j.total_files,
        'statusUrl', p_prefix || 'status/' || j.id::text,
        'streamUrl', p_prefix || 'stream/' || j.id::text,
        'downloadUrl', p_prefix || j.id::text,
        'createdAt', async_dl_iso(j.created_at))
$$;

-- POST {p}initiate.  p_files: [{"url","name","file_id"}], already checked
-- by the module.  Outcomes:
--   created      the job and its files are inserted (one transaction; the
--                INSERT trigger wakes the workers at commit)
--   replayed     same owner + Idempotency-Key + same request: that job
--   conflict     same owner + Idempotency-Key, another request (422)
--   queue_full   p_max_pending or more jobs are queued (503)
--   owner_limit  p_max_active or more unfinished jobs of this owner (429)
-- A limit of 0 is no limit.  The limits are checked without a lock: under
-- concurrent initiates they can be passed by the number of concurrent
-- requests, which is what keeps initiates from serialising.
-- {p} is kept with the job, for the callback's status document: it is put
-- in a transaction-local setting that the insert trigger
-- async_dl_jobs_prefix (below) reads (until 010: the INSERT writes it).
CREATE FUNCTION async_dl_job_create(p_owner text, p_key text, p_hash text,
                                    p_timeout_ms bigint, p_callback text,
                                    p_files json, p_max_pending integer,
                                    p_max_active integer, p_prefix text)
RETURNS TABLE (outcome text, job_id uuid, body text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    j async_dl_jobs;
    n integer;
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

    -- the counts kept by async_dl_jobs_count (001)
    IF p_max_pending > 0 THEN
        SELECT sum(queued) INTO n FROM async_dl_queue_shards;
        IF n >= p_max_pending THEN
            RETURN QUERY SELECT 'queue_full'::text, NULL::uuid, NULL::text;
            RETURN;
        END IF;
    END IF;

    IF p_max_active > 0 THEN
        SELECT active INTO n FROM async_dl_owner_active
         WHERE owner = p_owner;
        IF coalesce(n, 0) >= p_max_active THEN
            RETURN QUERY SELECT 'owner_limit'::text, NULL::uuid, NULL::text;
            RETURN;
        END IF;
    END IF;

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

CREATE FUNCTION async_dl_jobs_prefix() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.api_prefix := coalesce(NEW.api_prefix,
        nullif(current_setting('async_dl.api_prefix', true), ''));
    RETURN NEW;
END $$;

CREATE TRIGGER async_dl_jobs_prefix
    BEFORE INSERT ON async_dl_jobs
    FOR EACH ROW EXECUTE FUNCTION async_dl_jobs_prefix();

-- GET {p}jobs: the owner's jobs, newest first.  Paged by p_offset, or by
-- p_cursor ("<created_at in epoch microseconds>.<id>", as returned in
-- nextCursor) for large lists.  nextCursor is null on the last page.
CREATE FUNCTION async_dl_job_list(p_owner text, p_prefix text,
                                  p_status text, p_limit integer,
                                  p_offset integer, p_cursor text)
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

    SELECT count(*) INTO total FROM async_dl_jobs
     WHERE owner = p_owner AND (p_status IS NULL OR status = p_status)
       AND async_dl_job_live(expires_at);

    SELECT array_agg(p ORDER BY p.created_at DESC, p.id DESC) INTO js
      FROM (SELECT * FROM async_dl_jobs j
             WHERE j.owner = p_owner
               AND (p_status IS NULL OR j.status = p_status)
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

-- POST {p}{id}/cancel: no row when there is no such job; else the job's
-- status after the call (canceled, or completed/failed when it had already
-- ended: nothing changed) and its status document.
CREATE FUNCTION async_dl_job_cancel_status(p_job uuid, p_owner text,
                                           p_prefix text)
RETURNS TABLE (outcome text, body text)
LANGUAGE plpgsql AS $$
DECLARE
    s text;
BEGIN
    s := async_dl_job_cancel(p_job, p_owner);
    IF s IS NOT NULL THEN
        RETURN QUERY SELECT s, async_dl_job_status(p_job, p_owner, p_prefix);
    END IF;
END $$;

-- DELETE {p}{id}: false when there is no such job.  The delete trigger
-- tells the workers to stop its transfers (async_dl_cancel); its stored
-- objects are queued in async_dl_deleted_objects, and the workers are told
-- on async_dl_deleted.
CREATE FUNCTION async_dl_job_delete(p_job uuid, p_owner text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT async_dl_lock_job(p_job, p_owner) THEN
        RETURN false;
    END IF;

    INSERT INTO async_dl_deleted_objects (job_id, object_key)
    SELECT f.job_id, f.object_key FROM async_dl_files f
     WHERE f.job_id = p_job AND f.object_key IS NOT NULL;
    IF FOUND THEN
        PERFORM pg_notify('async_dl_deleted', p_job::text);
    END IF;

    DELETE FROM async_dl_jobs WHERE id = p_job;
    RETURN true;
END $$;

-- GET {p}{id} (p_idx NULL) and GET {p}{id}/files/{index}: what to redirect
-- to.  A multi-file job's {p}{id} is its zip bundle.  o_outcome:
--   no_job     no such job for this owner, or it expired (404)
--   no_file    no such index (404)
--   not_ready  still pending or downloading (409 + Retry-After)
--   no_bundle  a multi-file job's zip is not built yet (409 + Retry-After)
--   failed, canceled  that file (or bundle) will never be there (409)
--   ready      o_key is the object; o_name the file's name ("<job id>.zip"
--              for a bundle), or NULL (then the module names the download
--              after the URL's last segment)
CREATE FUNCTION async_dl_job_file(p_job uuid, p_owner text, p_idx integer)
RETURNS TABLE (o_outcome text, o_key text, o_name text, o_message text,
               o_url text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    j  async_dl_jobs;
    f  async_dl_files;
BEGIN
    SELECT * INTO j FROM async_dl_jobs
     WHERE id = p_job AND owner = p_owner
       AND async_dl_job_live(expires_at);
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_job'::text, NULL::text, NULL::text,
                            'no such job'::text, NULL::text;
        RETURN;
    END IF;

    IF p_idx IS NULL AND j.total_files > 1 THEN
        RETURN QUERY SELECT
            CASE WHEN j.bundle_status = 'completed' THEN 'ready'
                 WHEN j.bundle_status = 'failed' THEN 'failed'
                 WHEN j.status = 'canceled' THEN 'canceled'
                 WHEN j.status = 'failed' THEN 'failed'
                 ELSE 'no_bundle' END,
            j.bundle_key,
            j.id::text || '.zip',
            CASE WHEN j.status IN ('queued', 'processing')
                 THEN 'the job is ' || j.status || ', '
                      || j.completed_files + j.failed_files || ' of '
                      || j.total_files || ' files ended'
                 WHEN j.bundle_status IN ('pending', 'building')
                 THEN 'the zip bundle is being built'
                 WHEN j.bundle_status = 'failed'
                 THEN 'the zip bundle could not be built: '
                      || coalesce(j.bundle_error, 'unknown error')
                 WHEN j.bundle_status = 'completed' THEN NULL
                 ELSE 'the job ' || j.status || ' without a zip bundle; '
                      || 'download its files one by one' END,
            NULL::text;
        RETURN;
    END IF;

    SELECT * INTO f FROM async_dl_files
     WHERE job_id = p_job AND idx = coalesce(p_idx, 0);
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_file'::text, NULL::text, NULL::text,
                            'the job has ' || j.total_files || ' files',
                            NULL::text;
        RETURN;
    END IF;

    RETURN QUERY SELECT
        CASE WHEN f.status = 'completed' AND f.object_key IS NOT NULL
                  THEN 'ready'
             WHEN f.status IN ('pending', 'downloading') THEN 'not_ready'
             WHEN f.status = 'canceled' THEN 'canceled'
             ELSE 'failed' END,
        f.object_key,
        nullif(f.name, ''),
        CASE WHEN f.status IN ('pending', 'downloading')
                  THEN 'file ' || f.idx || ' is ' || f.status
             WHEN f.status = 'completed' THEN NULL
             ELSE 'file ' || f.idx || ' ' || f.status
                  || coalesce(': ' || f.error_message, '') END,
        f.url;
END $$;
