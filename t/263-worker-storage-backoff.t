# Storage trouble backs off like origin trouble (issue 9, defect 10): 503
# SlowDown and 5xx answers, refused connections, are retried exponentially
# with jitter (or after the answer's Retry-After), at most
# ASYNC_DL_MAX_ATTEMPTS tries in a row and never past the job's deadline.
# A file whose storage is down for a while completes once it is back, with
# the right bytes, in each of the three ways a file is stored (one PUT,
# a PUT streamed while downloading, multipart).  Through the S3 fault proxy
# (t/tools/s3-fault-proxy.pl) in front of s3rver.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::HiRes qw(time sleep);

my $s = adl();
my $o = $s->{origin};
my $ep = s3_proxy();

sub stored_right {
    my ($job, $idx, $path) = @_;
    my $key = psql("SELECT object_key FROM async_dl_files WHERE job_id = "
                   . "'$job' AND idx = $idx");
    return $key ne '' && sha256_hex(s3_object($key) // '') eq file_sha256($path);
}

sub file_row {
    my ($job, $idx) = @_;
    return psql("SELECT status || ' ' || coalesce(error_code, '-') || ' ' || "
                . "coalesce(error_message, '-') FROM async_dl_files WHERE "
                . "job_id = '$job' AND idx = $idx");
}

my $small = origin_file('st-small.bin', 300 * 1024);        # one PUT
my $big = origin_file('st-big.bin', 7 * 1024 * 1024);       # streamed PUT
my $multi = origin_file('st-multi.bin', 12 * 1024 * 1024);  # multipart

# --- 503 SlowDown on parts, with Retry-After: more than 3 tries -------------------

start_worker(ASYNC_DL_S3_ENDPOINT => $ep, ASYNC_DL_PART_SIZE => '5m',
             ASYNC_DL_MAX_ATTEMPTS => 8);
s3_fault('slowdown', match => 'partNumber', count => 5, retry_after => 1);
my $job = add_job(["$o/chunked/st-multi.bin"]);
is(wait_ended($job, 60), 'completed', 'SlowDown: the multipart file '
   . 'completed');
ok(stored_right($job, 0, $multi), 'SlowDown: with the right bytes');
is(s3_fault_rules()->[0]{used}, 5, 'SlowDown: five parts were refused');
# (the proxy may answer before the part is all sent: a reset, also retried)
my @delays = worker_log() =~ /job=$job file=0 storage: UploadPart: HTTP 503 SlowDown.*; retrying in (\d+) ms/g;
cmp_ok(scalar @delays, '>=', 3, 'SlowDown: retried');
is(scalar(grep { $_ != 1000 } @delays), 0, 'SlowDown: after the answer\'s '
   . "Retry-After (@delays ms)");
stop_worker('TERM');
s3_fault('pass');

# --- the storage down for a while -------------------------------------------------

start_worker(ASYNC_DL_S3_ENDPOINT => $ep, ASYNC_DL_PART_SIZE => '5m',
             ASYNC_DL_RETRY_BASE => '1s', ASYNC_DL_MAX_ATTEMPTS => 8);
s3_fault('down');
my $t0 = time;
$job = add_job(["$o/f/st-small.bin", "$o/f/st-big.bin",
                "$o/chunked/st-multi.bin"], timeout => 300);
ok(wait_until(sub {
    my @n = worker_log() =~ /job=$job file=\d storage: .*(?:retrying|starting again)/g;
    @n >= 6;
}, 30, 'storage retries'), 'down: the storage requests fail and back off');
sleep 12 - (time - $t0) if time - $t0 < 12;
s3_fault('pass');
is(wait_ended($job, 120), 'completed', 'down: the job completed once the '
   . 'storage was back');
is(psql("SELECT string_agg(status, ',' ORDER BY idx) FROM async_dl_files "
        . "WHERE job_id = '$job'"), 'completed,completed,completed',
   'down: every file stored');
ok(stored_right($job, 0, $small), 'down: one PUT, right bytes');
ok(stored_right($job, 1, $big), 'down: streamed PUT, right bytes');
ok(stored_right($job, 2, $multi), 'down: multipart, right bytes');
cmp_ok(psql("SELECT max(attempts) FROM async_dl_files WHERE job_id = "
            . "'$job'"), '<=', 8, 'down: attempts within the maximum');
like(worker_log(), qr/job=$job file=1 storage: .*; starting again from byte 0/,
     'down: the streamed PUT started over');
stop_worker('TERM');

# --- bounded by ASYNC_DL_MAX_ATTEMPTS ------------------------------------------------

start_worker(ASYNC_DL_S3_ENDPOINT => $ep, ASYNC_DL_RETRY_BASE => '100ms',
             ASYNC_DL_MAX_ATTEMPTS => 3);
s3_fault('error500', match => 'st-max');
$job = add_job(["$o/f/st-small.bin"], names => ['st-max.bin']);
is(wait_ended($job, 30), 'failed', 'max attempts: the job failed');
like(file_row($job, 0), qr/^failed STORAGE_FAILED .*500/,
     'max attempts: STORAGE_FAILED with the storage\'s answer');
is(scalar(grep { $_->[2] =~ /^PUT .*st-max/ } @{ s3_fault_log() }), 3,
   'max attempts: the PUT was tried 3 times');
stop_worker('TERM');

# --- bounded by the deadline ------------------------------------------------------------

start_worker(ASYNC_DL_S3_ENDPOINT => $ep, ASYNC_DL_RETRY_BASE => '1s',
             ASYNC_DL_MAX_ATTEMPTS => 50);
s3_fault('slowdown', match => 'st-deadline');
$job = add_job(["$o/f/st-small.bin"], names => ['st-deadline.bin'],
               timeout => 6);
is(wait_ended($job, 30), 'failed', 'deadline: the job failed');
like(file_row($job, 0), qr/^failed (?:STORAGE_FAILED .*SlowDown|TIMEOUT )/,
     'deadline: given up at the deadline');
my $tries = grep { $_->[2] =~ /^PUT .*st-deadline/ } @{ s3_fault_log() };
cmp_ok($tries, '>', 1, "deadline: retried meanwhile ($tries tries)");
cmp_ok($tries, '<', 50, 'deadline: not the 50 tries allowed');
stop_worker('TERM');
s3_fault('pass');

unlike(worker_log(), qr/\[error\]/, 'no [error] in the worker logs');
done_testing();
