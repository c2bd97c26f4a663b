# Expiry with short TTLs and two workers: expiresAt set when a job ends
# (ASYNC_DL_TTL_COMPLETED for completed and canceled jobs,
# ASYNC_DL_TTL_FAILED for failed ones); then the objects (files and bundle)
# are gone from the S3 server, the rows are gone, the status is 404 and old
# presigned links answer 404; a running job is never removed.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::Local qw(timegm);

my $s = adl();
my $o = $s->{origin};

start_nginx(<<'EOF');
location /v1/download/ {
    async_dl;
    async_dl_urls on;
}
EOF
my %env = (ASYNC_DL_TTL_COMPLETED => '3s', ASYNC_DL_TTL_FAILED => '1s',
           ASYNC_DL_POLL_INTERVAL => '300ms');
start_worker(%env);
start_worker(%env);

origin_file('keep.txt', 0, "kept a while\n");
origin_file('long.bin', 200_000);

sub epoch {
    my ($iso) = @_;
    my @t = $iso =~ /^(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)\.(\d+)Z$/ or return;
    return timegm($t[5], $t[4], $t[3], $t[2], $t[1] - 1, $t[0]) + $t[6] / 1000;
}

sub job_keys {
    my ($id) = @_;
    return grep { m{^\Q$id\E/} } s3_keys();
}

# a long job that must survive every sweep while it runs
my $running = initiate({ files => [{ url => "$o/slow/long.bin?rate=8k" },
                                   { url => "$o/f/keep.txt" }] })->{json}{jobId};

# --- a completed multi-file job ----------------------------------------------

my $r = initiate({ files => [{ url => "$o/f/keep.txt" },
                             { url => "$o/f/long.bin" }] });
my $id = $r->{json}{jobId};
my $j;
wait_until(sub {
    $j = request('GET', "/v1/download/status/$id")->{json};
    return $j && $j->{bundle} && $j->{bundle}{status} eq 'completed';
}, 30, 'the bundle');
is($j->{status}, 'completed', 'completed, with its bundle');
ok(defined $j->{expiresAt}, 'expiresAt is set when the job ends');
my $ttl = epoch($j->{expiresAt}) - epoch($j->{completedAt});
ok(abs($ttl - 3) < 0.01, "expiresAt = completedAt + ASYNC_DL_TTL_COMPLETED ($ttl)");
is(scalar(job_keys($id)), 3, 'two files and a bundle stored');

my $file_link = request('GET', "/v1/download/$id/files/0")->{headers}{location};
my $zip_link = request('GET', "/v1/download/$id")->{headers}{location};
is(request('GET', $file_link)->{status}, 200, 'the file link works meanwhile');
is(request('GET', $zip_link)->{status}, 200, 'the bundle link works too');

# --- a failed job: the other TTL ---------------------------------------------

my $failed = initiate({ files => [{ url => "$o/status/404" }] })->{json}{jobId};
$j = wait_job($failed, qr/^failed$/);
$ttl = epoch($j->{expiresAt}) - epoch($j->{completedAt});
ok(abs($ttl - 1) < 0.01, "failed: expiresAt = completedAt + ASYNC_DL_TTL_FAILED ($ttl)");

# --- a canceled job: TTL_COMPLETED -------------------------------------------

my $canceled = initiate({ files => [{ url => "$o/slow/long.bin?rate=10k" }] })
               ->{json}{jobId};
request('POST', "/v1/download/$canceled/cancel");
$j = wait_job($canceled, qr/^canceled$/);
$ttl = epoch($j->{expiresAt}) - epoch($j->{completedAt});
ok(abs($ttl - 3) < 0.01, "canceled: expiresAt = completedAt + ASYNC_DL_TTL_COMPLETED ($ttl)");

# --- after the TTL: all gone -------------------------------------------------

ok(wait_until(sub { psql("SELECT count(*) FROM async_dl_jobs WHERE id = '$id'") == 0 },
              20, 'the expired job\'s row'), 'the row is removed');
is(scalar(job_keys($id)), 0, 'its objects are gone from the S3 server');
is(psql("SELECT count(*) FROM async_dl_files WHERE job_id = '$id'"), 0,
   'its files\' rows too');
$r = request('GET', "/v1/download/status/$id");
is($r->{status}, 404, 'status: 404');
is($r->{json}{error}{code}, 'JOB_NOT_FOUND', 'JOB_NOT_FOUND');
is(request('GET', "/v1/download/$id")->{status}, 404, '{p}{id}: 404');
is(request('GET', $file_link)->{status}, 404, 'the old file link: 404');
is(request('GET', $zip_link)->{status}, 404, 'the old bundle link: 404');

ok(wait_until(sub { psql("SELECT count(*) FROM async_dl_jobs WHERE id IN "
                         . "('$failed', '$canceled')") == 0 }, 20),
   'the failed and the canceled jobs are removed too');

# a job before its expires_at is served (past it, even unswept: t/145)
my $soon = initiate({ files => [{ url => "$o/f/keep.txt" }] })->{json}{jobId};
wait_job($soon, qr/^completed$/);
psql("UPDATE async_dl_jobs SET expires_at = now() + interval '1 hour' WHERE id = '$soon'");
$r = request('GET', "/v1/download/status/$soon");
is($r->{status}, 200, 'before expires_at: 200');

# --- the running job survived -----------------------------------------------

like(psql("SELECT status || ' ' || (expires_at IS NULL) FROM async_dl_jobs "
          . "WHERE id = '$running'"), qr/^(processing|queued) (t|true)$/,
     'a running job has no expiresAt and is still there');
$j = wait_job($running, qr/^completed$/, 90);
ok(defined $j->{expiresAt}, 'it gets one when it ends');

# --- one sweeper at a time -----------------------------------------------------

my %seen;
$seen{$_}++ for worker_log() =~ /expiry: deleted object (\S+)/g;
ok(scalar(keys %seen) >= 3, 'objects were deleted by the sweepers');
is(scalar(grep { $seen{$_} > 1 } keys %seen), 0, 'each object once')
    or diag(grep { /expiry/ && !/\[debug\]/ } split /^/, worker_log());
unlike(worker_log(), qr/\[error\]/, 'no error logged');

done_testing();
