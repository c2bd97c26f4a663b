# Crashes and restarts: a worker killed with SIGKILL mid-transfer loses
# nothing (another worker redoes the file after the lease, stored once with
# the right bytes); PostgreSQL restarting under a running worker, with jobs
# queued while it was away.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

my $s = adl();
my $o = $s->{origin};

# --- SIGKILL mid-transfer ------------------------------------------------------

my $path = origin_file('kill.bin', 3 * 1024 * 1024);
start_worker(ASYNC_DL_LEASE => '3s');
my $job = add_job(["$o/slow/kill.bin?rate=1m"]);
ok(wait_until(sub {
    psql("SELECT bytes_done FROM async_dl_files WHERE job_id = '$job'") > 0
}, 10, 'progress'), 'SIGKILL: the transfer is under way');
my $st = stop_worker('KILL');
is($st & 127, 9, 'SIGKILL: the worker was killed');
is(psql("SELECT status || ' ' || (lease_owner IS NOT NULL)::text FROM "
        . "async_dl_files WHERE job_id = '$job'"), 'downloading true',
   'SIGKILL: the file is still leased to the dead worker');

my $t0 = time;
start_worker(ASYNC_DL_LEASE => '3s', ASYNC_DL_POLL_INTERVAL => '500ms');
my $over = 0;
wait_until(sub {
    my ($done, $st) = split /\|/, psql("SELECT bytes_done, status FROM "
                                       . "async_dl_jobs WHERE id = '$job'");
    $over = 1 if $done > -s $path;
    $st eq 'completed';
}, 30, 'the job');
ok(!$over, 'SIGKILL: the job\'s bytes never counted the lost ones twice');
is(wait_ended($job, 30), 'completed', 'SIGKILL: another worker finished it');
cmp_ok(time - $t0, '>=', 1, 'SIGKILL: after the lease ran out');
my $key = psql("SELECT object_key FROM async_dl_files WHERE job_id = '$job'");
is(sha256_hex(s3_object($key) // ''), file_sha256($path),
   'SIGKILL: the stored bytes are right');
is(scalar(grep { index($_, $job) == 0 } s3_keys()), 1,
   'SIGKILL: stored exactly once');
like(worker_log(1), qr/job=$job file=0 claimed \(attempt 2\)/,
     'SIGKILL: redone as attempt 2');
stop_worker('TERM');

# --- PostgreSQL restart ----------------------------------------------------------

start_worker(ASYNC_DL_POLL_INTERVAL => '30s');
$path = origin_file('restart.bin', 3 * 1024 * 1024);
my $slow = add_job(["$o/slow/restart.bin?rate=1m"]);
ok(wait_until(sub { job_status($slow) eq 'processing' }, 10, 'claim'),
   'restart: a transfer is under way');
pg_stop();
ok(wait_until(sub { worker_log(2) =~ /connection lost/ }, 10, 'loss'),
   'restart: the worker saw the connection go');
sleep 1;
pg_start();
my @jobs = map { add_job(["$o/files/7000$_"]) } 1 .. 3;
for my $j (@jobs) {
    is(wait_ended($j, 15), 'completed', "restart: job queued meanwhile done");
}
is(wait_ended($slow, 20), 'completed',
   'restart: the transfer across the restart completed');
my $k = psql("SELECT object_key FROM async_dl_files WHERE job_id = '$slow'");
is(sha256_hex(s3_object($k) // ''), file_sha256($path),
   'restart: with the right bytes');
my $n = () = worker_log(2) =~ /database: connected, listening/g;
cmp_ok($n, '>=', 2, 'restart: connected and listening again');

# a notification after the restart still wakes the worker at once
$t0 = time;
$job = add_job(["$o/f/small.txt"]);
is(wait_ended($job, 10), 'completed', 'restart: NOTIFY works again');
cmp_ok(time - $t0, '<', 8, 'restart: woken by NOTIFY, not the 30 s poll');

is(stop_worker('TERM') >> 8, 0, 'the worker exits 0 on SIGTERM');

# --- a connection that stops answering (half-open) -------------------------------

start_worker(ASYNC_DL_LEASE => '3s', ASYNC_DL_POLL_INTERVAL => '500ms');
wait_until(sub { worker_log(3) =~ /connected, listening/ }, 10, 'connect');
my $backend;
ok(wait_until(sub {
    $backend = psql("SELECT pid FROM pg_stat_activity WHERE "
                    . "application_name = 'async-dl-worker'");
    $backend =~ /^\d+$/;
}, 10), 'half-open: the worker\'s backend');
kill 'STOP', $backend;
$job = add_job(["$o/f/small.txt"]);
my $ok = wait_ended($job, 15) eq 'completed';
kill 'CONT', $backend;
ok($ok, 'half-open: noticed, reconnected, and did the job');
like(worker_log(3), qr/no answer to a query in time/,
     'half-open: found by the query time limit');
stop_worker('TERM');

# --- one job's files spread over all running workers ------------------------------

origin_file('spread.bin', 300 * 1024);
my @w = map { start_worker(ASYNC_DL_CONCURRENCY => 2) } 1 .. 2;
$job = add_job([map { "$o/slow/spread.bin?rate=300k&n=$_" } 1 .. 8]);
is(wait_ended($job, 30), 'completed', 'spread: the job completed');
my @claims = map { scalar(() = worker_log($_) =~ /job=$job file=\d+ claimed/g) }
             4, 5;
is($claims[0] + $claims[1], 8, 'spread: each file claimed once');
ok($claims[0] > 0 && $claims[1] > 0, "spread: both workers took files "
   . "(@claims)");

done_testing();
