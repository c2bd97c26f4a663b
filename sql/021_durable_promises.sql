-- async-dl schema, version 21: the transactions that make a promise commit
-- durably on this server, also where synchronous_commit is off.
--
-- With synchronous_commit = off, a COMMIT returns before its WAL is
-- written; a crash (or an immediate shutdown) then loses the last
-- transactions although their clients were told they committed.  Some
-- deployments set it off for speed.  async-dl cannot keep its word on such
-- a server where a lost commit breaks an invariant:
--
-- - a claim records the key it will write (006) before the worker sends
--   the first byte to the storage.  A lost claim left an object that no
--   row names: seen in a fault-injection run, a file stored 5 ms after its
--   claim, PostgreSQL stopped (immediate) 170 ms later, the claim gone at
--   recovery, the job canceled, its object in the bucket for ever;
-- - a 202 for an initiate, a 204 for a DELETE, a cancel, a status the
--   streams sent (completed, failed, a zip ready), a key queued for the
--   janitor: each is told to someone outside the database.
--
-- So a transaction that creates or deletes a job, changes a job's, a
-- file's or a zip's status, records a write key or queues an object for
-- deletion sets synchronous_commit = on for itself (SET LOCAL: its commit
-- then waits for its WAL, and for a synchronous standby where the server
-- has one, as on a default server).  Progress, lease renewals, callbacks'
-- bookkeeping and heartbeats keep the server's setting: losing them costs
-- nothing but a repeated report.  On a default server (on) nothing changes;
-- local and remote_write flush locally already, and are left as they are.
--
-- Inserts and deletes fire a statement trigger: one call per statement.
-- Updates fire a row trigger whose WHEN compares the old and new values
-- (an UPDATE naming status in its SET list is not enough: every counter
-- update of a job names it, and keeps it).  None of the functions running
-- these statements has a SET clause of synchronous_commit, so the setting
-- outlives them to the commit.

CREATE FUNCTION async_dl_commit_durably() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('synchronous_commit') = 'off' THEN
        PERFORM set_config('synchronous_commit', 'on', true);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER async_dl_jobs_durable_insert_delete
    AFTER INSERT OR DELETE ON async_dl_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION async_dl_commit_durably();

CREATE TRIGGER async_dl_jobs_durable_update
    AFTER UPDATE OF status, bundle_status, bundle_write_key ON async_dl_jobs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.bundle_status IS DISTINCT FROM NEW.bundle_status
          OR OLD.bundle_write_key IS DISTINCT FROM NEW.bundle_write_key)
    EXECUTE FUNCTION async_dl_commit_durably();

CREATE TRIGGER async_dl_files_durable_update
    AFTER UPDATE OF status, write_key ON async_dl_files
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.write_key IS DISTINCT FROM NEW.write_key)
    EXECUTE FUNCTION async_dl_commit_durably();

CREATE TRIGGER async_dl_deleted_objects_durable_insert
    AFTER INSERT ON async_dl_deleted_objects
    FOR EACH STATEMENT EXECUTE FUNCTION async_dl_commit_durably();
