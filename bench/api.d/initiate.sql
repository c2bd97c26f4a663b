-- the module's "async_dl_create" statement (src/ngx_http_async_dl_api.c)
-- with the parameters it binds for {"files":[{"url":"http://127.0.0.1:1/x"}]}:
-- owner '' (async_dl_owner unset; a constant because pgbench refuses an
-- empty -D variable), no Idempotency-Key and no callback_url (NULL)
SELECT outcome, job_id, body
  FROM async_dl_job_create('', NULL, :hash, :timeout, NULL, :files,
                           :max_pending, :max_active, :prefix);
