# A job past its expiresAt is gone for the API at once, before the sweeper
# removes it (no worker runs here, so nothing is swept): status, links,
# the list, cancel and DELETE all agree that there is no such job.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

run_tests(config => 'location /v1/download/ { async_dl; async_dl_owner $http_x_user; }',
          more_headers => 'X-User: alice');

__DATA__

=== TEST 1: a job that will expire
--- request
POST /v1/download/initiate
{"files":[{"url":"http://example.com/1"}]}
--- more_headers
X-User: alice
Content-Type: application/json
--- error_code: 202
--- capture
old: json.jobId

=== TEST 2: a job that stays
--- request
POST /v1/download/initiate
{"files":[{"url":"http://example.com/2"}]}
--- more_headers
X-User: alice
Content-Type: application/json
--- error_code: 202
--- capture
live: json.jobId

=== TEST 3: status of the expired job: 404
--- setup
# ending a job sets its expiresAt (from the TTLs): move it past afterwards
psql("UPDATE async_dl_jobs SET status = 'completed', completed_at = now() "
     . "WHERE id = '$::old'");
psql("UPDATE async_dl_jobs SET expires_at = now() - interval '1 minute' "
     . "WHERE id = '$::old'");
--- request
GET /v1/download/status/$::old
--- error_code: 404
--- response_json
{ error => { code => 'JOB_NOT_FOUND' } }

=== TEST 4: its file link: 404
--- request
GET /v1/download/$::old/files/0
--- error_code: 404

=== TEST 5: the list shows only the live job, and counts only it
--- request
GET /v1/download/jobs
--- error_code: 200
--- response_json
{ jobs => [{ jobId => $::live }], total => 1 }

=== TEST 6: cancel: 404
--- request
POST /v1/download/$::old/cancel
--- error_code: 404

=== TEST 7: DELETE: 404, the row is left to the sweeper
--- request
DELETE /v1/download/$::old
--- error_code: 404
--- check
is(psql("SELECT count(*) FROM async_dl_jobs WHERE id = '$::old'"), 1,
   'the row is left to the sweeper');

=== TEST 8: the live job is untouched
--- request
GET /v1/download/status/$::live
--- error_code: 200
