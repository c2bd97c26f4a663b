# A job past its expiresAt is gone for the API at once, before the sweeper
# removes it (no worker runs here, so nothing is swept): status, links,
# the list, cancel and DELETE all agree that there is no such job.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

adl();
start_nginx(<<'EOF2');
location /v1/download/ {
    async_dl;
    async_dl_owner $http_x_user;
}
EOF2

my %alice = ('X-User' => 'alice');
my @ids = map { initiate({ files => [{ url => "http://example.com/$_" }] },
                         \%alice)->{json}{jobId} } 1 .. 2;
my ($old, $live) = @ids;
# ending a job sets its expiresAt (from the TTLs): move it past afterwards
psql("UPDATE async_dl_jobs SET status = 'completed', completed_at = now() "
     . "WHERE id = '$old'");
psql("UPDATE async_dl_jobs SET expires_at = now() - interval '1 minute' "
     . "WHERE id = '$old'");

my $r = request('GET', "/v1/download/status/$old", \%alice);
is($r->{status}, 404, 'status: 404');
is($r->{json}{error}{code}, 'JOB_NOT_FOUND', 'JOB_NOT_FOUND');
is(request('GET', "/v1/download/$old/files/0", \%alice)->{status}, 404,
   'file link: 404');

$r = request('GET', '/v1/download/jobs', \%alice);
is($r->{status}, 200, 'list: 200');
is_deeply([map { $_->{jobId} } @{ $r->{json}{jobs} }], [$live],
          'the list shows only the live job');
is($r->{json}{total}, 1, 'and counts only it');

is(request('POST', "/v1/download/$old/cancel", \%alice)->{status}, 404,
   'cancel: 404');
is(request('DELETE', "/v1/download/$old", \%alice)->{status}, 404,
   'DELETE: 404');
is(psql("SELECT count(*) FROM async_dl_jobs WHERE id = '$old'"), 1,
   'the row is left to the sweeper');

is(request('GET', "/v1/download/status/$live", \%alice)->{status}, 200,
   'the live job is untouched');

done_testing();
