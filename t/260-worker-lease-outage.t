# A database outage longer than the lease (issue 9, defect 2): the worker's
# transfer cannot renew its lease, so once the lease ran out it stops by
# itself; when the database is back the file is claimed again (by the same
# worker, with a new lease token) and transferred once more.  At no moment
# do two transfers of the file run: the origin never serves two requests
# for it at once, the worker never logs a second claim of it before the
# first transfer ended, and the job ends with the right bytes, stored once.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::HiRes qw(time sleep);

my $s = adl();
my $o = $s->{origin};

# The origin's requests for $uri as [start, end] (its log has the end and
# the duration), sorted by start.
sub origin_requests {
    my ($uri) = @_;
    my @r;
    for (split /\n/, origin_log()) {
        my ($end, $rt, $status, $u) = split / /;
        next unless defined $u && $u eq $uri;
        push @r, [$end - $rt, $end, $status];
    }
    return sort { $a->[0] <=> $b->[0] } @r;
}

# The worker's log lines about file 0 of $job that start or end a transfer.
sub transfer_events {
    my ($log, $job) = @_;
    my @e;
    for (split /\n/, $log) {
        next unless /job=$job file=0 (claimed|stored|stopped|failed|handed back)/;
        push @e, $1 eq 'claimed' ? 'start' : 'end';
    }
    return @e;
}

my $path = origin_file('outage.bin', 6 * 1024 * 1024);
my $uri = '/slow/outage.bin?rate=256k';
start_worker(ASYNC_DL_LEASE => '3s', ASYNC_DL_POLL_INTERVAL => '500ms');
my $job = add_job(["$o$uri"], timeout => 120);
ok(wait_until(sub {
    psql("SELECT bytes_done FROM async_dl_files WHERE job_id = '$job'") > 0
}, 20, 'progress'), 'the transfer is under way');

# down for more than twice the lease, back long before the file is done
pg_stop();
sleep 8;
pg_start();
like(worker_log(), qr/job=$job file=0 stopped: lease lost/,
     'the transfer stopped once its lease ran out');

is(wait_ended($job, 90), 'completed', 'the job completed after the outage');
my $key = psql("SELECT object_key FROM async_dl_files WHERE job_id = '$job'");
is(sha256_hex(s3_object($key) // ''), file_sha256($path),
   'the stored bytes are right');
is(scalar(grep { index($_, $job) == 0 } s3_keys()), 1, 'stored once');
is(psql("SELECT bytes_done || ' ' || bytes_total FROM async_dl_jobs WHERE "
        . "id = '$job'"), (-s $path) . ' ' . (-s $path),
   'the job\'s bytes count the file once');

my @e = transfer_events(worker_log(), $job);
my ($depth, $max) = (0, 0);
for (@e) {
    $depth += $_ eq 'start' ? 1 : -1;
    $max = $depth if $depth > $max;
}
cmp_ok(scalar(grep { $_ eq 'start' } @e), '>=', 2,
       'the file was claimed again after the outage');
is($max, 1, 'never two transfers of the file in the worker (' . "@e" . ')');
like(worker_log(), qr/job=$job file=0 claimed \(attempt 2\)/,
     'the second claim is the file\'s attempt 2');

my @r = origin_requests($uri);
cmp_ok(scalar @r, '>=', 2, 'the origin saw the file requested again');
my $overlap = 0;
for my $i (1 .. $#r) {
    $overlap++ if $r[$i][0] < $r[$i - 1][1];
}
is($overlap, 0, 'the origin never served two requests for it at once ('
   . join(', ', map { sprintf '%.3f-%.3f', @$_[0, 1] } @r) . ')');

is(stop_worker('TERM') >> 8, 0, 'the worker exits 0 on SIGTERM');
done_testing();
