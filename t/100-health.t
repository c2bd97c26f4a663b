# The module's configuration and its health route: directives checked by
# nginx -t with messages that name them, the health answer on a live and a
# dead database, unknown routes and wrong methods, all answered in JSON.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

run_tests();

__DATA__

=== TEST 1: health answers when the database does
--- config
location /v1/download/ { async_dl; }
--- request
GET /v1/download/health
--- error_code: 200
--- response_body
{"status":"ok","workers":0}
--- response_headers
Content-Type: application/json
Cache-Control: no-store
--- no_error_log
[error]

=== TEST 2: HEAD on health
--- config
location /v1/download/ { async_dl; }
--- request
HEAD /v1/download/health
--- error_code: 200
--- response_body:
--- no_error_log
[error]

=== TEST 3: health needs no owner
--- config
location /v1/download/ { async_dl; async_dl_owner $http_x_user; }
--- request
GET /v1/download/health
--- error_code: 200
--- no_error_log
[error]

=== TEST 4: a prefix without a trailing slash still routes under it
--- config
location /api { async_dl; }
--- request
GET /api/health
--- error_code: 200
--- response_json
{ status => 'ok' }

=== TEST 5: health with the database unreachable says what is wrong
--- adl_http_config
    async_dl_postgres "host=127.0.0.1 port=1 dbname=x user=x";
    async_dl_s3_endpoint $ADL_S3_ENDPOINT;
    async_dl_s3_bucket $ADL_S3_BUCKET;
    async_dl_s3_access_key S3RVER;
    async_dl_s3_secret_key S3RVER;
--- config
location /v1/download/ { async_dl; }
--- setup
sleep 0.5;
--- request
GET /v1/download/health
--- error_code: 503
--- response_headers
Retry-After: 1
--- response_json
{ status => 'unavailable',
  error => { code => 'DATABASE_UNAVAILABLE', message => qr/refused/ } }

=== TEST 6: unknown route under the prefix: 404 JSON
--- config
location /v1/download/ { async_dl; }
--- request
GET /v1/download/foo/bar
--- error_code: 404
--- response_json
{ error => { code => 'NOT_FOUND', message => qr{/v1/download/foo/bar} } }
--- no_error_log
[error]

=== TEST 7: the prefix itself is not a route
--- config
location /v1/download/ { async_dl; }
--- request
GET /v1/download/
--- error_code: 404
--- response_json
{ error => { code => 'NOT_FOUND' } }

=== TEST 8: wrong method: 405 with Allow
--- config
location /v1/download/ { async_dl; }
--- request
POST /v1/download/health
--- error_code: 405
--- response_headers
Allow: GET, HEAD
--- response_json
{ error => { code => 'METHOD_NOT_ALLOWED', message => qr/POST/ } }

=== TEST 9: initiate only takes POST
--- config
location /v1/download/ { async_dl; }
--- request
GET /v1/download/initiate
--- error_code: 405
--- response_headers
Allow: POST

=== TEST 10: a job takes GET, HEAD and DELETE
--- config
location /v1/download/ { async_dl; }
--- request
PUT /v1/download/2b6b3f4e-5a9e-4d7e-9b7e-0a1b2c3d4e5f
--- error_code: 405
--- response_headers
Allow: GET, HEAD, DELETE

=== TEST 11: cancel takes POST
--- config
location /v1/download/ { async_dl; }
--- request
GET /v1/download/2b6b3f4e-5a9e-4d7e-9b7e-0a1b2c3d4e5f/cancel
--- error_code: 405
--- response_headers
Allow: POST

=== TEST 12: the stream of an unknown job: 404 JSON (t/3*.t test the stream)
--- config
location /v1/download/ { async_dl; }
--- request
GET /v1/download/stream/2b6b3f4e-5a9e-4d7e-9b7e-0a1b2c3d4e5f
--- error_code: 404
--- response_json
{ error => { code => 'JOB_NOT_FOUND' } }

=== TEST 13: async_dl without async_dl_postgres fails nginx -t
--- adl_http_config
    async_dl_s3_endpoint $ADL_S3_ENDPOINT;
--- config
location /v1/download/ { async_dl; }
--- must_die
--- error_log
"async_dl" in location "/v1/download/" needs "async_dl_postgres"

=== TEST 14: a missing bucket is named
--- adl_http_config
    async_dl_postgres "$ADL_PG";
    async_dl_s3_endpoint $ADL_S3_ENDPOINT;
    async_dl_s3_access_key S3RVER;
    async_dl_s3_secret_key S3RVER;
--- config
location /v1/download/ { async_dl; }
--- must_die
--- error_log
needs "async_dl_s3_bucket"

=== TEST 15: a malformed conninfo is named
--- adl_http_config
    async_dl_postgres "host=127.0.0.1 nonsense";
--- config
location /v1/download/ { async_dl; }
--- must_die
--- error_log
invalid async_dl_postgres

=== TEST 16: a host name that does not resolve fails at start, not later
--- adl_http_config
    async_dl_postgres "host=no-such-host.invalid dbname=x";
--- must_die
--- error_log
async_dl_postgres: host "no-such-host.invalid" not found

=== TEST 17: bounds of a size directive
--- config
location /v1/download/ { async_dl; async_dl_max_files 0; }
--- must_die
--- error_log
invalid "async_dl_max_files" value "0": must be between 1 and 100000

=== TEST 18: bounds of a time directive
--- http_config
    async_dl_presign_expires 8d;
--- config
location /v1/download/ { async_dl; }
--- must_die
--- error_log
invalid "async_dl_presign_expires" value "8d"

=== TEST 19: the default timeout cannot pass the maximum
--- config
location /v1/download/ {
    async_dl;
    async_dl_default_timeout 2h;
    async_dl_max_timeout 1h;
}
--- must_die
--- error_log
"async_dl_default_timeout" (7200000 ms) is more than "async_dl_max_timeout"

=== TEST 20: addressing is path or virtual
--- http_config
    async_dl_s3_addressing sideways;
--- config
location /v1/download/ { async_dl; }
--- must_die
--- error_log
invalid value "sideways"

=== TEST 21: a source URL needs {file_id}
--- config
location /v1/download/ { async_dl; async_dl_source_url http://x/files/; }
--- must_die
--- error_log
invalid "async_dl_source_url" value "http://x/files/"

=== TEST 22: a bad endpoint is named
--- adl_http_config
    async_dl_postgres "$ADL_PG";
    async_dl_s3_endpoint ftp://x;
--- must_die
--- error_log
invalid "async_dl_s3_endpoint" value "ftp://x"

=== TEST 23: async_dl belongs in a prefix location
--- config
location ~ ^/x/ { async_dl; }
--- must_die
--- error_log
"async_dl" must be in a prefix location

=== TEST 24: every directive together, as in nginx.conf.example
--- http_config
    async_dl_postgres_pool 2;
    async_dl_postgres_timeout 3s;
    async_dl_s3_public_endpoint http://127.0.0.1:1/;
    async_dl_s3_addressing virtual;
    async_dl_presign_expires 10m;
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "http://127.0.0.1/files/{file_id}";
    async_dl_urls off;
    async_dl_max_files 10;
    async_dl_max_pending 5;
    async_dl_max_active_per_owner 2;
    async_dl_default_timeout 1m;
    async_dl_max_timeout 2m;
    async_dl_heartbeat 5s;
}
--- request
GET /v1/download/health
--- error_code: 200
--- no_error_log
[error]
