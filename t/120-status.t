# GET {p}status/{id} and GET {p}jobs: the documents, owner isolation, the
# ETag and If-None-Match, keyset paging, $async_dl_job_id.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

# a worker's calls are played with claim_one(), file_progress() and
# file_lease() (AsyncDL::Stack)

run_tests(config => <<'EOF2', http_config => <<'EOF3', more_headers => "X-User: alice\nContent-Type: application/json");
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_source_url "$ADL_ORIGIN/files/{file_id}";
    access_log $ADL_DIR/nginx/logs/jobs.log jobs;
}
EOF2
    log_format jobs '$request_method $status job=$async_dl_job_id';
EOF3

__DATA__

=== TEST 1: a job of two files
--- request
POST /v1/download/initiate
{"files":[{"url":"$ADL_ORIGIN/files/70000","name":"a.bin"},{"url":"$ADL_ORIGIN/files/70001"}]}
--- error_code: 202
--- capture
id: json.jobId

=== TEST 2: the document: revalidated, not stored; an ETag; exactly the fields
--- request
GET /v1/download/status/$::id
--- error_code: 200
--- response_headers
Cache-Control: no-cache
--- response_headers_like
ETag: ^"[0-9a-f]{32}"$
--- response_json
{ jobId => $::id, status => 'queued', progress => 0, totalFiles => 2,
  downloadUrl => undef, startedAt => undef,
  createdAt => qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/,
  files => [{ name => 'a.bin' }, { index => 1, status => 'pending' }] }
--- capture
etag: header.etag
--- check
is_deeply([sort keys %{ $res->{json} }],
          [sort qw(jobId status progress totalFiles completedFiles failedFiles
                   bytesDone bytesTotal downloadUrl error createdAt updatedAt
                   startedAt completedAt expiresAt pausedAt bundle callback files)],
          'exactly the fields');
is_deeply([sort keys %{ $res->{json}{files}[0] }],
          [sort qw(index fileId url name status size contentType sha256
                   attempts waiting error resumedFrom downloadUrl)], 'file fields');

=== TEST 3: If-None-Match that matches: 304 without a body
--- request
GET /v1/download/status/$::id
--- more_headers
X-User: alice
If-None-Match: $::etag
--- error_code: 304
--- response_body:

=== TEST 4: another ETag: 200
--- request
GET /v1/download/status/$::id
--- more_headers
X-User: alice
If-None-Match: "other"
--- error_code: 200

=== TEST 5: a worker claims one file and reports bytes: a new document, a new ETag
--- setup
claim_one();
file_progress($::id, 0, 512, 1024);
--- request
GET /v1/download/status/$::id
--- more_headers
X-User: alice
If-None-Match: $::etag
--- error_code: 200
--- response_json
# progress by files while a size is unknown
{ status => 'processing', startedAt => qr/./, progress => 0,
  files => [{ status => 'downloading' }, {}] }
--- check
isnt($res->{headers}{etag}, $::etag, 'new ETag');

=== TEST 6: bytesTotal once all sizes are known; progress by bytes, 512 of 2048
--- setup
claim_one();
file_progress($::id, 1, 0, 1024);
--- request
GET /v1/download/status/$::id
--- error_code: 200
--- response_json
{ bytesTotal => 2048, progress => 25 }

=== TEST 7: files ended, one stored: processing, its zip first
--- setup
psql("SELECT async_dl_file_finish('$::id', 0, " . file_lease($::id, 0) . ", 'completed', 1024, 'application/octet-stream', "
     . "'ab', 'k/0', 1, NULL, NULL, NULL)");
psql("SELECT async_dl_file_finish('$::id', 1, " . file_lease($::id, 1) . ", 'failed', NULL, NULL, NULL, NULL, 3, "
     . "'HTTP_STATUS', 'the origin answered 404', NULL)");
--- request
GET /v1/download/status/$::id
--- error_code: 200
--- response_json
{ status => 'processing', progress => 99, bundle => { status => 'pending' },
  completedAt => undef }

=== TEST 8: a builder (played here) fails to make the zip: the job completes
--- setup
psql("SELECT count(*) FROM async_dl_bundle_claim('b', '1 minute', 3)");
psql("SELECT async_dl_bundle_finish('$::id', 'b', 'failed', NULL, NULL, NULL, "
     . "NULL, 'reading k/0: HTTP 404', NULL)");
--- request
GET /v1/download/status/$::id
--- error_code: 200
--- response_json
# a zip that failed: no bundle link
{ status => 'completed', progress => 100, completedFiles => 1,
  failedFiles => 1, completedAt => qr/./, downloadUrl => undef,
  bundle => { status => 'failed' },
  files => [{ downloadUrl => "/v1/download/$::id/files/0",
              contentType => 'application/octet-stream', size => 1024 },
            { downloadUrl => undef }] }
--- check
is_deeply($res->{json}{files}[1]{error},
          { code => 'HTTP_STATUS', message => 'the origin answered 404' },
          'file error');

=== TEST 9: another owner's job: 404 JOB_NOT_FOUND
--- request
GET /v1/download/status/$::id
--- more_headers
X-User: bob
--- error_code: 404
--- response_json
{ error => { code => 'JOB_NOT_FOUND' } }
--- capture
not_found: body

=== TEST 10: an unknown id: the same 404
--- request
GET /v1/download/status/00000000-0000-4000-8000-000000000000
--- error_code: 404
--- response_body
$::not_found

=== TEST 11: a malformed id: the same 404
--- request
GET /v1/download/status/not-a-uuid
--- error_code: 404
--- response_body
$::not_found

=== TEST 12: an id with a tail: the same 404
--- request
GET /v1/download/status/$::id-x
--- error_code: 404
--- response_body
$::not_found

=== TEST 13: an id in capitals with underscores: the same 404
--- setup
$::id_underscores = uc $::id =~ s/-/_/gr;
--- request
GET /v1/download/status/$::id_underscores
--- error_code: 404
--- response_body
$::not_found

=== TEST 14: an id in capitals is the same id
--- setup
$::id_capitals = uc $::id;
--- request
GET /v1/download/status/$::id_capitals
--- error_code: 200

=== TEST 15: no owner: 401
--- request
GET /v1/download/status/$::id
--- more_headers
--- error_code: 401

=== TEST 16: HEAD
--- request
HEAD /v1/download/status/$::id
--- error_code: 200

=== TEST 17: the list: newest first, the defaults, one page without a cursor, summaries without files
--- setup
@::carol = reverse map {
    initiate({ file_id => 70000 + $_ }, { 'X-User' => 'carol' })->{json}{jobId}
} 1 .. 5;
--- request
GET /v1/download/jobs
--- more_headers
X-User: carol
--- error_code: 200
--- response_json
{ total => 5, limit => 20, offset => 0, nextCursor => undef,
  jobs => [map { { jobId => $_ } } @::carol] }
--- check
ok(!exists $res->{json}{jobs}[0]{files}, 'summaries have no files');

=== TEST 18: keyset pages cover the list once, in order: page 1
--- request
GET /v1/download/jobs?limit=2
--- more_headers
X-User: carol
--- error_code: 200
--- response_json
{ jobs => [{ jobId => $::carol[0] }, { jobId => $::carol[1] }] }
--- capture
cursor: json.nextCursor

=== TEST 19: page 2
--- request
GET /v1/download/jobs?limit=2&cursor=$::cursor
--- more_headers
X-User: carol
--- error_code: 200
--- response_json
{ jobs => [{ jobId => $::carol[2] }, { jobId => $::carol[3] }] }
--- capture
cursor: json.nextCursor

=== TEST 20: page 3, the last: no nextCursor
--- request
GET /v1/download/jobs?limit=2&cursor=$::cursor
--- more_headers
X-User: carol
--- error_code: 200
--- response_json
{ jobs => [{ jobId => $::carol[4] }], nextCursor => undef }

=== TEST 21: offset
--- request
GET /v1/download/jobs?limit=2&offset=2
--- more_headers
X-User: carol
--- error_code: 200
--- response_json
{ jobs => [{ jobId => $::carol[2] }, { jobId => $::carol[3] }] }

=== TEST 22: bob does not see others' jobs
--- request
GET /v1/download/jobs
--- more_headers
X-User: bob
--- error_code: 200
--- response_json
{ total => 0 }

=== TEST 23: status filter
--- request
GET /v1/download/jobs?status=completed
--- error_code: 200
--- response_json
{ jobs => [{ jobId => $::id }] }

=== TEST 24: status filter: total follows
--- request
GET /v1/download/jobs?status=queued
--- error_code: 200
--- response_json
{ total => 0 }

=== TEST 25: limit=0: 400 naming limit
--- request
GET /v1/download/jobs?limit=0
--- error_code: 400
--- response_json: { error => { message => qr/^limit:/ } }

=== TEST 26: limit=101: 400 naming limit
--- request
GET /v1/download/jobs?limit=101
--- error_code: 400
--- response_json: { error => { message => qr/^limit:/ } }

=== TEST 27: limit=x: 400 naming limit
--- request
GET /v1/download/jobs?limit=x
--- error_code: 400
--- response_json: { error => { message => qr/^limit:/ } }

=== TEST 28: offset=-1: 400 naming offset
--- request
GET /v1/download/jobs?offset=-1
--- error_code: 400
--- response_json: { error => { message => qr/^offset:/ } }

=== TEST 29: status=done: 400 naming status
--- request
GET /v1/download/jobs?status=done
--- error_code: 400
--- response_json: { error => { message => qr/^status:/ } }

=== TEST 30: cursor=nope: 400 naming cursor
--- request
GET /v1/download/jobs?cursor=nope
--- error_code: 400
--- response_json: { error => { message => qr/^cursor:/ } }

=== TEST 31: a cursor with an offset: 400 naming offset
--- request
GET /v1/download/jobs?cursor=1.$::id&offset=1
--- error_code: 400
--- response_json: { error => { message => qr/^offset:/ } }

=== TEST 32: $async_dl_job_id in the access log; no errors logged
--- check
my $log = AsyncDL::Test::slurp(adl()->{dir} . '/nginx/logs/jobs.log');
like($log, qr/^POST 202 job=[0-9a-f-]{36}$/m, 'initiate logs the new job id');
like($log, qr/^GET 200 job=\Q$::id\E$/m, 'status logs the job id');
like($log, qr/^GET 200 job=-$/m, 'the list has none');
unlike(nginx_log(), qr/\[(error|alert|crit)\]/, 'no errors logged');
