-- async-dl schema, version 16: the status document says why a file waits.
--
-- A pending file's "waiting" is the first that holds of
--   "retry"        its next attempt is later (handed back by a worker
--                  that was waiting to retry it)
--   "host_paused"  its origin host asked to wait (Retry-After, 15)
--   "host_limit"   its host has ASYNC_DL_PER_HOST_CONCURRENCY downloading
--   "owner_limit"  its owner has ASYNC_DL_PER_OWNER_CONCURRENCY downloading
--   "queue"        none of these: its turn for a free slot
-- and null for a file that does not wait.  The limits are the workers'
-- (the last one started wins, as for the TTLs).
--
-- These reasons can change without an event of the job (another job's file
-- ends, a pause or a retry's wait runs out), so a status cache keeps a
-- document with a waiting file for at most 2 seconds when one of those can
-- apply: the workers have limits, or a pending file waits for a retry or a
-- paused host (async_dl_job_status_fill's expiry).  Without limits the
-- reason is "queue" until the job changes or a pause starts, and a pause
-- that starts empties the caches (async_dl_host_pause), so polls of queued
-- jobs stay in the caches.

CREATE TABLE async_dl_claim_limits (
    id           boolean PRIMARY KEY DEFAULT true CHECK (id),
    host_limit   integer NOT NULL DEFAULT 0,
    owner_limit  integer NOT NULL DEFAULT 0
);
INSERT INTO async_dl_claim_limits DEFAULT VALUES;

CREATE FUNCTION async_dl_claim_limits_set(p_host integer, p_owner integer)
RETURNS void
LANGUAGE sql AS $$
    UPDATE async_dl_claim_limits
       SET host_limit = coalesce(p_host, 0), owner_limit = coalesce(p_owner, 0);
$$;

-- The files of the status document (2), with "waiting": the limits read
-- once, the owner's downloading files counted once, each host of the job's
-- pending files looked at once.
CREATE OR REPLACE FUNCTION async_dl_job_files_json(j async_dl_jobs,
                                                   p_prefix text)
RETURNS json
LANGUAGE plpgsql STABLE AS $$
DECLARE
    lim    async_dl_claim_limits;
    owned  bigint := 0;
BEGIN
    SELECT * INTO lim FROM async_dl_claim_limits;
    IF lim.owner_limit > 0 THEN
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
                         WHERE f.job_id = j.id AND f.status = 'pending') h)
            SELECT coalesce(json_agg(json_build_object(
               'index', f.idx,
               'fileId', f.file_id,
               'url', f.url,
               'name', f.name,
               'status', f.status,
               'size', f.size,
               'contentType', f.content_type,
               'sha256', f.sha256,
               'attempts', f.attempts,
               'waiting', CASE
                   WHEN f.status <> 'pending' THEN NULL
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

-- A cache's fill (13): a document whose waiting reason can change without
-- an event of its job expires from the cache within 2 seconds.
CREATE OR REPLACE FUNCTION async_dl_job_status_fill(p_job uuid, p_prefix text)
RETURNS TABLE (o_owner text, o_seq bigint, o_expires_ms bigint, o_doc text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT j.owner, j.event_seq,
           CASE WHEN EXISTS (SELECT 1 FROM async_dl_files f
                              WHERE f.job_id = j.id AND f.status = 'pending')
                 AND (EXISTS (SELECT 1 FROM async_dl_claim_limits l
                               WHERE l.host_limit > 0 OR l.owner_limit > 0)
                      OR EXISTS (SELECT 1 FROM async_dl_files f
                                  WHERE f.job_id = j.id
                                    AND f.status = 'pending'
                                    AND (f.next_attempt_at > now()
                                         OR EXISTS (
                                            SELECT 1 FROM async_dl_hosts h
                                             WHERE h.host = f.host
                                               AND h.paused_until > now()))))
                THEN least(coalesce((extract(epoch FROM j.expires_at)
                                     * 1000)::bigint, 9223372036854775807),
                           (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                           + 3000)
                ELSE coalesce((extract(epoch FROM j.expires_at) * 1000)::bigint,
                              -1) END,
           async_dl_job_status(j.id, j.owner, p_prefix)::text
      FROM async_dl_jobs j
     WHERE j.id = p_job AND async_dl_job_live(j.expires_at);
END $$;

-- A pause (15) that starts empties the status caches: the cached
-- documents of the host's waiting files say "queue" (rare: a pause that is
-- only extended does not).
CREATE OR REPLACE FUNCTION async_dl_host_pause(p_url text, p_until timestamptz,
                                               p_reason text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    k    text := async_dl_url_host(p_url);
    was  timestamptz;
BEGIN
    DELETE FROM async_dl_hosts WHERE paused_until < now() - interval '1 hour';
    SELECT h.paused_until INTO was FROM async_dl_hosts h WHERE h.host = k;
    INSERT INTO async_dl_hosts AS h (host, paused_until, reason)
    VALUES (k, p_until, p_reason)
    ON CONFLICT (host) DO UPDATE
       SET paused_until = EXCLUDED.paused_until, reason = EXCLUDED.reason
     WHERE h.paused_until < EXCLUDED.paused_until;
    IF (was IS NULL OR was <= now()) AND p_until > now() THEN
        PERFORM pg_notify('async_dl_events', 'flush');
    END IF;
END $$;

-- every cached document lacks "waiting": drop them all
NOTIFY async_dl_events, 'flush';
