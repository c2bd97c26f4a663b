-- the module's "async_dl_status" statement (src/ngx_http_async_dl_api.c)
-- with the parameters it binds; the owner (async_dl_owner unset) is '',
-- written as a constant because pgbench refuses an empty -D variable
SELECT async_dl_job_status(:job, '', :prefix);
