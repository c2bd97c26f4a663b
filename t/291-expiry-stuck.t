# Expiry ends every sweep and says why it removes nothing (issue 9,
# defect 20):
# - the sweep lock held by another session (a psql here): the worker says
#   who holds it (rate-limited), and sweeps once the lock is free;
# - the storage not answering (the S3 server stopped): the sweep says it
#   runs long, its deletes end with the idle timeout, the jobs are kept
#   (said) and tried again with backoff, then removed once the storage is
#   back; no sweep stays in progress.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::HiRes qw(sleep);

my $s = adl();
my $o = $s->{origin};
start_worker(ASYNC_DL_TTL_COMPLETED => '6s', ASYNC_DL_TTL_FAILED => '6s',
             ASYNC_DL_POLL_INTERVAL => '300ms',
             ASYNC_DL_IDLE_TIMEOUT => '4s', ASYNC_DL_CONNECT_TIMEOUT => '2s');
origin_file('x.bin', 3000);

sub rows {
    my (@ids) = @_;
    return psql("SELECT count(*) FROM async_dl_jobs WHERE id IN ("
                . join(',', map { "'$_'" } @ids) . ")");
}

# --- the lock held elsewhere ----------------------------------------------

my $holder = fork // die "fork: $!";
if ($holder == 0) {
    open STDOUT, '>', '/dev/null';
    exec 'psql', '-X', '-q', '-h', '127.0.0.1', '-p', $s->{pg_port}, '-U',
        'postgres', '-d', 'postgres', '-c',
        'SELECT pg_advisory_lock(7021786468426065272)', '-c',
        'SELECT pg_sleep(8)' or POSIX::_exit(127);
}
ok(wait_until(sub { psql("SELECT count(*) FROM pg_locks WHERE locktype = "
                         . "'advisory' AND granted") == 1 }, 10),
   'a psql session holds the sweep lock');
my $a = add_job(["$o/f/x.bin"]);
is(wait_ended($a), 'completed', 'a job completes');
ok(wait_until(sub { worker_log() =~ /expiry: no sweep here for \d+ ms/ }, 20),
   'the worker says it could not sweep');
like(worker_log(), qr/the sweep lock is held by pid \d+ \(psql\)/,
     'and who holds the lock');
is(rows($a), 1, 'the expired job is still there meanwhile');
waitpid($holder, 0);
ok(wait_until(sub { rows($a) == 0 }, 20), 'removed once the lock is free');

# --- the storage not answering --------------------------------------------

my @jobs = map { add_job(["$o/f/x.bin"]) } 1 .. 3;
my $in = join(',', map { "'$_'" } @jobs);
ok(wait_until(sub { psql("SELECT count(*) FROM async_dl_jobs WHERE id IN "
                         . "($in) AND status = 'completed'") == 3 }, 30),
   'three jobs complete');
my @keys = grep { my $k = $_; grep { index($k, $_) == 0 } @jobs } s3_keys();
is(scalar(@keys), 3, 'their objects are stored');

kill 'STOP', $s->{s3_pid};
ok(wait_until(sub { worker_log() =~ /expiry: a sweep has been running for/ },
              30), 'a sweep waiting on the storage is said');
ok(wait_until(sub { worker_log() =~ /expiry: \d+ expired job\(s\) kept for a later sweep/ },
              30), 'its deletes end, the jobs are kept');
is(rows(@jobs), 3, 'their rows are there');
kill 'CONT', $s->{s3_pid};

ok(wait_until(sub { rows(@jobs) == 0 }, 60),
   'removed once the storage answers again');
my %left = map { $_ => 1 } s3_keys();
is(scalar(grep { $left{$_} } @keys), 0, 'their objects are gone');
like(worker_log(), qr/expiry: removed \d+ expired job\(s\), deleted \d+ object/,
     'the removal is logged with its counts');
unlike(worker_log(), qr/\[error\]/, 'no error logged');

done_testing();
