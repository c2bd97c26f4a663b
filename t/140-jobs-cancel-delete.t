# POST {p}{id}/cancel keeps the record, canceled; DELETE removes it (and
# queues its stored objects for the worker to remove); idempotent replays
# and backpressure of initiate.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

my $s = adl();
start_nginx(<<'EOF2');
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
    async_dl_max_pending 4;
    async_dl_max_active_per_owner 2;
}
EOF2

my %alice = ('X-User' => 'alice');
my %bob = ('X-User' => 'bob');
my $body = { files => [{ url => 'https://example.com/a' }, { url => 'https://example.com/b' }] };

# --- cancel ---------------------------------------------------------------------

my $id = initiate($body, \%alice)->{json}{jobId};
my $r = request('POST', "/v1/download/$id/cancel", \%bob);
is($r->{status}, 404, "bob cannot cancel alice's job");
is(psql("SELECT status FROM async_dl_jobs WHERE id = '$id'"), 'queued', 'untouched');

$r = request('POST', "/v1/download/$id/cancel", \%alice);
is($r->{status}, 200, 'cancel: 200');
is($r->{json}{status}, 'canceled', 'the job is canceled');
is_deeply([map { $_->{status} } @{ $r->{json}{files} }], ['canceled', 'canceled'],
          'its files too');
is($r->{json}{error}{code}, 'CANCELED', 'with the CANCELED error');
is(request('POST', "/v1/download/$id/cancel", \%alice)->{status}, 200,
   'canceling again: 200');
is(request('GET', "/v1/download/status/$id", \%alice)->{json}{status}, 'canceled',
   'the record is kept');
is(request('POST', '/v1/download/00000000-0000-4000-8000-000000000000/cancel',
           \%alice)->{json}{error}{code}, 'JOB_NOT_FOUND', 'unknown job: 404');

my $done = initiate({ files => [{ url => 'https://example.com/c' }] }, \%alice)->{json}{jobId};
psql("SELECT count(*) FROM async_dl_claim('w', 10, '1 minute', 5)");
psql("SELECT async_dl_file_finish('$done', 0, (SELECT lease_owner FROM async_dl_files WHERE job_id = '$done' AND idx = 0), 'completed', 1, 'x/y', NULL, 'jobs/$done/0', 1, NULL, NULL, NULL)");
$r = request('POST', "/v1/download/$done/cancel", \%alice);
is($r->{status}, 409, 'canceling a finished job: 409');
is($r->{json}{error}{code}, 'JOB_FINISHED', 'JOB_FINISHED');

# --- delete -----------------------------------------------------------------------

is(request('DELETE', "/v1/download/$done", \%bob)->{status}, 404,
   "bob cannot delete alice's job");
$r = request('DELETE', "/v1/download/$done", \%alice);
is($r->{status}, 204, 'DELETE: 204');
is($r->{content}, '', 'no body');
is(psql("SELECT count(*) FROM async_dl_jobs WHERE id = '$done'"), 0, 'the job is gone');
is(psql("SELECT count(*) FROM async_dl_files WHERE job_id = '$done'"), 0, 'its files too');
is(psql("SELECT object_key FROM async_dl_deleted_objects WHERE job_id = '$done'"),
   "jobs/$done/0", 'its object is queued for removal from the storage');
is(request('DELETE', "/v1/download/$done", \%alice)->{status}, 404, 'again: 404');
is(request('GET', "/v1/download/status/$done", \%alice)->{status}, 404, 'status: 404');

my $running = initiate($body, \%alice)->{json}{jobId};
is(request('DELETE', "/v1/download/$running", \%alice)->{status}, 204,
   'an unfinished job is deleted too (the workers are told to stop)');

# --- idempotency --------------------------------------------------------------------

psql("DELETE FROM async_dl_jobs");
my %k = (%alice, 'Idempotency-Key' => 'order-1');
my $a = initiate($body, \%k);
is($a->{status}, 202, 'first: 202');
ok(!exists $a->{headers}{'idempotent-replayed'}, 'not a replay');
my $b = initiate('{ "files" : [ {"url":"https://example.com/a"}, {"url":"https://example.com/b"} ] }', \%k);
is($b->{status}, 200, 'same key, same request: 200');
is($b->{headers}{'idempotent-replayed'}, 'true', 'Idempotent-Replayed: true');
is($b->{json}{jobId}, $a->{json}{jobId}, 'the same job');
is($b->{headers}{location}, $a->{headers}{location}, 'the same Location');
my $c = initiate({ files => [{ url => 'https://example.com/other' }] }, \%k);
is($c->{status}, 422, 'same key, another request: 422');
is($c->{json}{error}{code}, 'IDEMPOTENCY_CONFLICT', 'IDEMPOTENCY_CONFLICT');
like($c->{json}{error}{message}, qr/^Idempotency-Key:/, 'names the header');
my $d = initiate($body, { %bob, 'Idempotency-Key' => 'order-1' });
is($d->{status}, 202, "the same key of another owner is another job");
is(psql("SELECT count(*) FROM async_dl_jobs"), 2, 'two jobs in all');

# --- backpressure ---------------------------------------------------------------------

# alice has one unfinished job: a second one is allowed, a third is not
is(initiate($body, \%alice)->{status}, 202, 'second unfinished job of alice');
my $e = initiate($body, \%alice);
is($e->{status}, 429, 'a third: 429');
is($e->{json}{error}{code}, 'TOO_MANY_JOBS', 'TOO_MANY_JOBS');
is($e->{headers}{'retry-after'}, 5, 'Retry-After');
is(psql("SELECT count(*) FROM async_dl_jobs"), 3, 'nothing written');

# four queued jobs in all: the queue is full for everyone
is(initiate($body, { 'X-User' => 'carol' })->{status}, 202, 'fourth queued job');
my $f = initiate($body, { 'X-User' => 'dave' });
is($f->{status}, 503, 'a fifth: 503');
is($f->{json}{error}{code}, 'QUEUE_FULL', 'QUEUE_FULL');
is($f->{headers}{'retry-after'}, 10, 'Retry-After');
is(initiate($body, \%k)->{status}, 200, 'a replay is still answered when full');

unlike(nginx_log(), qr/\[(error|alert|crit)\]/, 'no errors logged');

done_testing();
