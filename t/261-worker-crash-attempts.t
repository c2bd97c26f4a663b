# What a crash costs a file (issue 9, defect 19): every claim counts as an
# attempt, so a worker SIGKILLed mid-transfer costs the file one.  After
# ASYNC_DL_MAX_ATTEMPTS crashes the file is not claimed again: it fails
# with WORKER_LOST.  Attempts never exceed the maximum, in the database or
# in the worker's logs.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::HiRes qw(time sleep);

my $s = adl();
my $o = $s->{origin};
my $MAX = 3;
my %env = (ASYNC_DL_LEASE => '3s', ASYNC_DL_POLL_INTERVAL => '500ms',
           ASYNC_DL_MAX_ATTEMPTS => $MAX);

origin_file('crash.bin', 4 * 1024 * 1024);
my $job = add_job(["$o/slow/crash.bin?rate=256k", "$o/files/70001"],
                  timeout => 120);

my $most = 0;
sub attempts {
    my $a = psql("SELECT attempts FROM async_dl_files WHERE job_id = '$job' "
                 . "AND idx = 0");
    $most = $a if $a > $most;
    return $a;
}

for my $round (1 .. $MAX) {
    my $pid = start_worker(%env);
    my $n = $round - 1;
    ok(wait_until(sub {
        attempts();
        worker_log($n) =~ /job=$job file=0 claimed/
            && psql("SELECT bytes_done FROM async_dl_files WHERE job_id = "
                    . "'$job' AND idx = 0") > 0
    }, 30, "claim $round"), "crash $round: the transfer is under way");
    is(attempts(), $round, "crash $round: the claim counted attempt $round");
    like(worker_log($n), qr/job=$job file=0 claimed \(attempt $round\)/,
         "crash $round: the worker says attempt $round");
    is(stop_worker('KILL') & 127, 9, "crash $round: SIGKILL");
}

# the next worker finds the lease of a file out of attempts run out
start_worker(%env);
is(wait_ended($job, 30), 'completed', 'the job ended (the other file '
   . 'was stored)');
attempts();
is(psql("SELECT status || ' ' || coalesce(error_code, '-') || ' ' || attempts "
        . "FROM async_dl_files WHERE job_id = '$job' AND idx = 0"),
   "failed WORKER_LOST $MAX", 'the file failed with WORKER_LOST after '
   . "$MAX attempts");
is(psql("SELECT status FROM async_dl_files WHERE job_id = '$job' AND "
        . "idx = 1"), 'completed', 'the other file was stored');
is(psql("SELECT completed_files || ' ' || failed_files FROM async_dl_jobs "
        . "WHERE id = '$job'"), '1 1', 'the job counts one of each');
cmp_ok($most, '<=', $MAX, "attempts never exceeded $MAX (most seen: $most)");
my @seen = worker_log() =~ /job=$job file=0 claimed \(attempt (\d+)\)/g;
is(scalar(grep { $_ > $MAX } @seen), 0,
   "no worker claimed it beyond attempt $MAX (@seen)");
is(scalar(grep { index($_, "$job/0/") == 0 } s3_keys()), 0,
   'nothing stored for the lost file');
is(stop_worker('TERM') >> 8, 0, 'the worker exits 0 on SIGTERM');

# retries within a claim count too and stop at the maximum
my $k = 'crash-retries';
$job = add_job(["$s->{flaky}/fail/$k?n=10&size=1000&code=503"]);
start_worker(%env);
is(wait_ended($job, 30), 'failed', 'retries: the job failed');
is(psql("SELECT error_code || ' ' || attempts FROM async_dl_files WHERE "
        . "job_id = '$job'"), "HTTP_STATUS $MAX",
   "retries: $MAX attempts made, not more");
stop_worker('TERM');

done_testing();
