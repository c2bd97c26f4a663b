# A streamed PUT (the size is known and above a part) waits for the
# download: while the origin is slow, the PUT has nothing to send.  That
# wait is not a stalled storage: a file from an origin slower than the
# storage's idle timeout is still stored, in one go.  A storage that takes
# nothing and answers nothing for the idle timeout is stalled: the PUT is
# given up, and the file is sent again from byte 0.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

my $s = adl();
my $o = $s->{origin};

sub stored_right {
    my ($job, $idx, $path) = @_;
    my $key = psql("SELECT object_key FROM async_dl_files WHERE job_id = "
                   . "'$job' AND idx = $idx");
    return $key ne '' && sha256_hex(s3_object($key) // '') eq file_sha256($path);
}

my $mib = 1024 * 1024;

# --- case 1: 5 MiB fast, then 64 KiB at 4 KB/s (16 s) ------------------------

my $slow = origin_file('so-slow.bin', 5 * $mib + 64 * 1024);
start_worker(ASYNC_DL_PART_SIZE => '5m', ASYNC_DL_IDLE_TIMEOUT => '3s');
my $job = add_job(["$o/trickle/so-slow.bin?after=5m&rate=4k"],
                  timeout => 120);
is(wait_ended($job, 90), 'completed', 'slow origin: the file completed');
ok(stored_right($job, 0, $slow), 'slow origin: with the right bytes');
my $log = worker_log();
like($log, qr/job=$job file=0 stored /, 'slow origin: stored');
unlike($log, qr/job=$job file=0 .*too slow/,
       'slow origin: the waiting PUT was not judged too slow');
unlike($log, qr/job=$job file=0 .*starting again from byte 0/,
       'slow origin: sent once, not again from byte 0');
is(psql("SELECT attempts FROM async_dl_files WHERE job_id = '$job'"), 1,
   'slow origin: one attempt');
stop_worker('TERM');

# --- case 2: a storage that takes nothing for 8 s ----------------------------

my $ep = s3_proxy();
my $big = origin_file('so-big.bin', 24 * $mib);
start_worker(ASYNC_DL_S3_ENDPOINT => $ep, ASYNC_DL_PART_SIZE => '5m',
             ASYNC_DL_IDLE_TIMEOUT => '3s', ASYNC_DL_RETRY_BASE => '200ms');
s3_fault('delay', match => 'PUT', count => 1, delay => 8);
$job = add_job(["$o/f/so-big.bin"], timeout => 120);
is(wait_ended($job, 90), 'completed', 'stalled storage: the file completed');
ok(stored_right($job, 0, $big), 'stalled storage: with the right bytes');
like(worker_log(), qr/job=$job file=0 storage: PutObject: .*; starting again from byte 0/,
     'stalled storage: the PUT was given up and sent again from byte 0');
is(s3_fault_rules()->[0]{used}, 1, 'stalled storage: one PUT was held');
stop_worker('TERM');
s3_fault('pass');

unlike(worker_log(), qr/\[(?:error|alert)\]/,
       'no [error] or [alert] in the worker logs');
done_testing();
