# POST {p}initiate: every input rule (docs/openapi.yaml), each refusal a
# 4xx whose message names the field, and nothing written for a refused request;
# idempotent replays; owner scoping; backpressure.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

sub jobs { psql("SELECT count(*) FROM async_dl_jobs") }

run_tests();

__DATA__

=== TEST 1: file_ids: 202, Location, the answer's fields
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
}
--- request
POST /v1/download/initiate
{"file_ids":[70000,70001]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 202
--- response_headers_like
Location: ^/v1/download/status/[0-9a-f-]{36}$
--- response_json
{ jobId => qr/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/,
  status => 'queued', totalFiles => 2,
  statusUrl => qr{^/v1/download/status/[0-9a-f-]{36}$},
  streamUrl => qr{^/v1/download/stream/[0-9a-f-]{36}$},
  downloadUrl => qr{^/v1/download/[0-9a-f-]{36}$},
  createdAt => qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/ }
--- check
my $id = $res->{json}{jobId};
is($res->{headers}{location}, "/v1/download/status/$id", 'Location is the status');
is(psql("SELECT owner || ' ' || total_files || ' ' || status FROM async_dl_jobs WHERE id = '$id'"),
   'alice 2 queued', 'the job is stored for its owner');
is(psql("SELECT string_agg(idx || '=' || file_id || '=' || url, ' ' ORDER BY idx) FROM async_dl_files WHERE job_id = '$id'"),
   "0=70000=" . adl()->{origin} . "/files/70000 1=70001=" . adl()->{origin} . "/files/70001",
   'its files, in order, with the source URL');
is(psql("SELECT extract(epoch FROM deadline - created_at)::int FROM async_dl_jobs WHERE id = '$id'"),
   600, 'deadline: async_dl_default_timeout');
--- no_error_log
[error]

=== TEST 2: file_id, and a timeout in nginx notation
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
}
--- request
POST /v1/download/initiate
{"file_id":70003,"timeout":"90s"}
--- more_headers
Content-Type: application/json; charset=utf-8
X-User: alice
--- error_code: 202
--- check
my $id = $res->{json}{jobId};
is(psql("SELECT timeout_ms FROM async_dl_jobs WHERE id = '$id'"), 90000, 'timeout 90s');

=== TEST 3: files with names, timeout in seconds, a callback
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
}
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/a.pdf","name":"report.pdf"},{"url":"http://[::1]:8080/b?x=1"}],"timeout":300,"callback_url":"https://hooks.example.com/x"}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 202
--- check
my $id = $res->{json}{jobId};
is(psql("SELECT timeout_ms || ' ' || callback_url FROM async_dl_jobs WHERE id = '$id'"),
   '300000 https://hooks.example.com/x', 'timeout and callback stored');
is(psql("SELECT string_agg(coalesce(name, '-'), ',' ORDER BY idx) FROM async_dl_files WHERE job_id = '$id'"),
   'report.pdf,-', 'names stored');

=== TEST 4: no Content-Type: 415
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_ids":[1]}
--- more_headers
X-User: alice
Content-Type: text/plain
--- error_code: 415
--- response_json
{ error => { code => 'UNSUPPORTED_MEDIA_TYPE', message => qr/application\/json/ } }
--- check
is(main::jobs(), $::before, 'nothing written');

=== TEST 5: a body over client_max_body_size: 413 in JSON
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    client_max_body_size 100;
}
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 413
--- response_json
{ error => { code => 'PAYLOAD_TOO_LARGE', message => qr/client_max_body_size/ } }

=== TEST 6: an empty owner: 401
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/a"}]}
--- more_headers
Content-Type: application/json
--- error_code: 401
--- response_json
{ error => { code => 'UNAUTHORIZED' } }

=== TEST 7: without async_dl_owner every job has the same owner
--- config
location /v1/download/ { async_dl; }
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/a"}]}
--- more_headers
Content-Type: application/json
--- error_code: 202
--- check
is(psql("SELECT owner FROM async_dl_jobs WHERE id = '$res->{json}{jobId}'"), '', 'owner ""');

=== TEST 8: 400: empty body
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate

--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/body: is empty/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 9: 400: not JSON
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/body: invalid JSON/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 10: 400: not an object
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
[1]
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/body: must be a JSON object/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 11: 400: unknown field
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_ids":[1],"colour":"red"}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/colour: unknown field/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 12: 400: duplicate key
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_id":1,"file_id":2}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/duplicate object key/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 13: 400: no source
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"timeout":"5m"}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/give one of/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 14: 400: two sources
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_ids":[1],"files":[{"url":"http://a/b"}]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/give one of/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 15: 400: file_ids not an array
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_ids":7}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/file_ids: must be an array/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 16: 400: file_ids empty
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_ids":[]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/file_ids: must not be empty/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 17: 400: file_ids zero
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_ids":[1,0]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/file_ids\[1\]: must be a positive integer/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 18: 400: file_ids negative
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_ids":[-5]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/file_ids\[0\]: must be a positive integer/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 19: 400: file_ids string
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_ids":["70000"]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/file_ids\[0\]: must be a positive integer/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 20: 400: file_ids float
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_ids":[1.5]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/file_ids\[0\]: must be a positive integer/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 21: 400: file_id bool
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_id":true}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/file_id: must be a positive integer/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 22: 400: file_ids too many
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_ids":[1,2,3,4]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/file_ids: at most 3 files/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 23: 400: files not an array
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"files":{"url":"http://a/b"}}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/files: must be an array/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 24: 400: files empty
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"files":[]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/files: must not be empty/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 25: 400: files too many
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"files":[{"url":"http://a/1"},{"url":"http://a/2"},{"url":"http://a/3"},{"url":"http://a/4"}]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/files: at most 3 files/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 26: 400: file not an object
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"files":["http://a/b"]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/files\[0\]: must be an object/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 27: 400: file without url
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"files":[{"name":"x"}]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/files\[0\]\.url: is required/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 28: 400: url not a string
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"files":[{"url":5}]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/files\[0\]\.url: must be a string/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 29: 400: url ftp
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"files":[{"url":"ftp://a/b"}]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/files\[0\]\.url: must be an http or https URL/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 30: 400: url relative
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"files":[{"url":"/etc/passwd"}]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/files\[0\]\.url: must be an http or https URL/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 31: 400: url no host
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"files":[{"url":"http:///x"}]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/files\[0\]\.url: has no host/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 32: 400: url space
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"files":[{"url":"http://a/b c"}]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/files\[0\]\.url: must not contain spaces/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 33: 400: url port
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"files":[{"url":"http://a:70000/b"}]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/files\[0\]\.url: has an invalid port/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 34: 400: url in second file
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"files":[{"url":"http://a/b"},{"url":"gopher://x"}]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/files\[1\]\.url/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 35: 400: file unknown field
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"files":[{"url":"http://a/b","size":3}]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/files\[0\]\.size: unknown field/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 36: 400: name not a string
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"files":[{"url":"http://a/b","name":[]}]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/files\[0\]\.name: must be a string/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 37: 400: timeout garbage
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_id":1,"timeout":"soon"}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/timeout: must be a duration/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 38: 400: timeout zero
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_id":1,"timeout":0}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/timeout: must be a duration/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 39: 400: timeout negative
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_id":1,"timeout":-3}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/timeout: must be a duration/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 40: 400: timeout float
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_id":1,"timeout":1.5}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/timeout: must be a duration/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 41: 400: timeout over max
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_id":1,"timeout":"3h"}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/timeout: must be at most 7200 seconds/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 42: 400: callback not a string
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_id":1,"callback_url":1}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/callback_url: must be a string/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 43: 400: callback not http
--- config
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    async_dl_max_files 3;
    async_dl_max_timeout 2h;
}
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"file_id":1,"callback_url":"mailto:x@y"}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/callback_url: must be an http or https URL/ } }
--- check
is(main::jobs(), $::before, 'nothing written');
--- no_error_log
[error]

=== TEST 44: file_ids without async_dl_source_url: 400
--- config
location /v1/download/ { async_dl; async_dl_owner $http_x_user; }
--- request
POST /v1/download/initiate
{"file_ids":[70000]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/file_ids: .*async_dl_source_url is not configured/ } }

=== TEST 45: URLs with async_dl_urls off: 400
--- config
location /v1/download/ { async_dl; async_dl_owner $http_x_user; async_dl_urls off; }
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/a"}]}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/files: .*async_dl_urls off/ } }

=== TEST 46: a malformed Idempotency-Key: 400
--- config
location /v1/download/ { async_dl; async_dl_owner $http_x_user; }
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/a"}]}
--- more_headers
Content-Type: application/json
X-User: alice
Idempotency-Key: kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => qr/Idempotency-Key/ } }

=== TEST 47: a priority: stored on the job and its files
--- config
location /v1/download/ { async_dl; async_dl_owner $http_x_user; }
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/a"},{"url":"https://example.com/b"}],"priority":-7}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 202
--- check
my $id = $res->{json}{jobId};
is(psql("SELECT priority FROM async_dl_jobs WHERE id = '$id'"), -7, 'job priority');
is(psql("SELECT string_agg(priority::text || ' ' || owner || ' ' || host, ',' ORDER BY idx) "
        . "FROM async_dl_files WHERE job_id = '$id'"),
   '-7 alice example.com,-7 alice example.com', 'files carry priority, owner, host');

=== TEST 48: 400: a priority out of range, or not an integer
--- config
location /v1/download/ { async_dl; async_dl_owner $http_x_user; }
--- setup
$::before = main::jobs();
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/a"}],"priority":101}
--- more_headers
Content-Type: application/json
X-User: alice
--- error_code: 400
--- response_json
{ error => { code => 'INVALID_REQUEST', message => 'priority: must be an integer from -100 to 100' } }
--- check
for my $p ('-101', '1.5', '"high"', 'true', '[1]', '{}') {
    my $r = initiate(qq({"files":[{"url":"https://example.com/a"}],"priority":$p}),
                     { 'X-User' => 'alice' });
    is($r->{status} . ' ' . ($r->{json}{error}{message} // ''),
       '400 priority: must be an integer from -100 to 100', "priority $p: 400");
}
is(main::jobs(), $::before, 'nothing written');

=== TEST 49: the priority is part of an Idempotency-Key's request; 0 is as if not given
--- config
location /v1/download/ { async_dl; async_dl_owner $http_x_user; }
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/p"}],"priority":3}
--- more_headers
Content-Type: application/json
X-User: alice
Idempotency-Key: prio-1
--- error_code: 202
--- check
my %h = ('X-User' => 'alice', 'Idempotency-Key' => 'prio-1');
is(initiate('{"files":[{"url":"https://example.com/p"}],"priority":3}', \%h)->{status},
   200, 'the same request again: replayed');
is(initiate('{"files":[{"url":"https://example.com/p"}],"priority":4}', \%h)->{status},
   422, 'another priority: a conflict');
$h{'Idempotency-Key'} = 'prio-2';
is(initiate('{"files":[{"url":"https://example.com/q"}]}', \%h)->{status}, 202, 'no priority');
is(initiate('{"files":[{"url":"https://example.com/q"}],"priority":0}', \%h)->{status},
   200, 'priority 0 is the same request');
