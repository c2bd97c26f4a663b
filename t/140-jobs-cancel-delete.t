# POST {p}{id}/cancel keeps the record, canceled; DELETE removes it (and
# queues its stored objects for the worker to remove); idempotent replays
# and backpressure of initiate.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

run_tests(config => <<'EOF2', more_headers => <<'EOF3');
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_max_pending 4;
    async_dl_max_active_per_owner 2;
}
EOF2
X-User: alice
Content-Type: application/json
EOF3

__DATA__

=== TEST 1: cancel: a job of alice's
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/a"},{"url":"https://example.com/b"}]}
--- error_code: 202
--- capture
id: json.jobId

=== TEST 2: bob cannot cancel alice's job
--- request
POST /v1/download/$::id/cancel
--- more_headers
X-User: bob
--- error_code: 404
--- check
is(psql("SELECT status FROM async_dl_jobs WHERE id = '$::id'"), 'queued', 'untouched');

=== TEST 3: cancel: 200, the job and its files canceled, with the CANCELED error
--- request
POST /v1/download/$::id/cancel
--- error_code: 200
--- response_json
{ status => 'canceled',
  files => [{ status => 'canceled' }, { status => 'canceled' }],
  error => { code => 'CANCELED' } }

=== TEST 4: canceling again: 200
--- request
POST /v1/download/$::id/cancel
--- error_code: 200

=== TEST 5: the record is kept
--- request
GET /v1/download/status/$::id
--- error_code: 200
--- response_json
{ status => 'canceled' }

=== TEST 6: cancel an unknown job: 404
--- request
POST /v1/download/00000000-0000-4000-8000-000000000000/cancel
--- error_code: 404
--- response_json
{ error => { code => 'JOB_NOT_FOUND' } }

=== TEST 7: a job that will be finished
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/c"}]}
--- error_code: 202
--- capture
done: json.jobId

=== TEST 8: canceling a finished job: 409 JOB_FINISHED
--- setup
psql("SELECT count(*) FROM async_dl_claim('w', 10, '1 minute', 5)");
psql("SELECT async_dl_file_finish('$::done', 0, (SELECT lease_owner FROM async_dl_files WHERE job_id = '$::done' AND idx = 0), 'completed', 1, 'x/y', NULL, 'jobs/$::done/0', 1, NULL, NULL, NULL)");
--- request
POST /v1/download/$::done/cancel
--- error_code: 409
--- response_json
{ error => { code => 'JOB_FINISHED' } }

=== TEST 9: delete: bob cannot delete alice's job
--- request
DELETE /v1/download/$::done
--- more_headers
X-User: bob
--- error_code: 404

=== TEST 10: DELETE: 204 without a body, the job and its files gone, its object queued for removal
--- request
DELETE /v1/download/$::done
--- error_code: 204
--- response_body:
--- check
is(psql("SELECT count(*) FROM async_dl_jobs WHERE id = '$::done'"), 0, 'the job is gone');
is(psql("SELECT count(*) FROM async_dl_files WHERE job_id = '$::done'"), 0, 'its files too');
is(psql("SELECT object_key FROM async_dl_deleted_objects WHERE job_id = '$::done'"),
   "jobs/$::done/0", 'its object is queued for removal from the storage');

=== TEST 11: DELETE again: 404
--- request
DELETE /v1/download/$::done
--- error_code: 404

=== TEST 12: the status of a deleted job: 404
--- request
GET /v1/download/status/$::done
--- error_code: 404

=== TEST 13: an unfinished job
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/a"},{"url":"https://example.com/b"}]}
--- error_code: 202
--- capture
running: json.jobId

=== TEST 14: an unfinished job is deleted too (the workers are told to stop)
--- request
DELETE /v1/download/$::running
--- error_code: 204

=== TEST 15: idempotency: the first request with a key, not a replay
--- setup
psql("DELETE FROM async_dl_jobs");
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/a"},{"url":"https://example.com/b"}]}
--- more_headers
X-User: alice
Content-Type: application/json
Idempotency-Key: order-1
--- error_code: 202
--- response_headers
!Idempotent-Replayed
--- capture
first: json.jobId
first_location: header.location

=== TEST 16: the same key, the same request: 200, the same job and Location
--- request
POST /v1/download/initiate
{ "files" : [ {"url":"https://example.com/a"}, {"url":"https://example.com/b"} ] }
--- more_headers
X-User: alice
Content-Type: application/json
Idempotency-Key: order-1
--- error_code: 200
--- response_headers
Idempotent-Replayed: true
Location: $::first_location
--- response_json
{ jobId => $::first }

=== TEST 17: the same key, another request: 422 naming the header
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/other"}]}
--- more_headers
X-User: alice
Content-Type: application/json
Idempotency-Key: order-1
--- error_code: 422
--- response_json
{ error => { code => 'IDEMPOTENCY_CONFLICT', message => qr/^Idempotency-Key:/ } }

=== TEST 18: the same key of another owner is another job
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/a"},{"url":"https://example.com/b"}]}
--- more_headers
X-User: bob
Content-Type: application/json
Idempotency-Key: order-1
--- error_code: 202
--- check
is(psql("SELECT count(*) FROM async_dl_jobs"), 2, 'two jobs in all');

=== TEST 19: backpressure: alice has one unfinished job, a second is allowed
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/a"},{"url":"https://example.com/b"}]}
--- error_code: 202

=== TEST 20: a third: 429 TOO_MANY_JOBS, nothing written
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/a"},{"url":"https://example.com/b"}]}
--- error_code: 429
--- response_json
{ error => { code => 'TOO_MANY_JOBS' } }
--- response_headers
Retry-After: 5
--- check
is(psql("SELECT count(*) FROM async_dl_jobs"), 3, 'nothing written');

=== TEST 21: a fourth queued job
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/a"},{"url":"https://example.com/b"}]}
--- more_headers
X-User: carol
Content-Type: application/json
--- error_code: 202

=== TEST 22: four queued jobs in all: the queue is full for everyone, 503
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/a"},{"url":"https://example.com/b"}]}
--- more_headers
X-User: dave
Content-Type: application/json
--- error_code: 503
--- response_json
{ error => { code => 'QUEUE_FULL' } }
--- response_headers
Retry-After: 10

=== TEST 23: a replay is still answered when full
--- request
POST /v1/download/initiate
{"files":[{"url":"https://example.com/a"},{"url":"https://example.com/b"}]}
--- more_headers
Idempotency-Key: order-1
X-User: alice
Content-Type: application/json
--- error_code: 200

=== TEST 24: no errors logged
--- check
unlike(nginx_log(), qr/\[(error|alert|crit)\]/, 'no errors logged');
