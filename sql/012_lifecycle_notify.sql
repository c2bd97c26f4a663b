-- async-dl schema, version 12: a job that ends wakes the workers only when
-- it has a callback to deliver.
--
-- Until 11 every job that ended sent a NOTIFY on async_dl_lifecycle, and
-- every worker's bundle and callback claimers answered it with a claim:
-- two claims that found nothing for each job without a callback.  A zip
-- queued sends its own NOTIFY (async_dl_jobs_bundle, 007), and expiry
-- runs on its own clock, so only a callback needs this one.

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
        PERFORM pg_notify('async_dl_lifecycle', NEW.id::text);
    END IF;
    RETURN NEW;
END $$;
