# The worker against each way an origin behaves: stored bytes compared with
# the origin's by SHA-256, error codes and retries as the README says.
# Jobs are queued straight into PostgreSQL, as the module does.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

my $s = adl();

sub file_row {
    my ($job, $idx) = @_;
    my @f = split /\|/, psql("SELECT status, coalesce(size::text, ''), "
        . "coalesce(sha256, ''), coalesce(object_key, ''), "
        . "coalesce(error_code, ''), coalesce(error_message, ''), attempts, "
        . "coalesce(content_type, '') FROM async_dl_files WHERE job_id = "
        . "'$job' AND idx = " . ($idx // 0)), -1;
    my %r;
    @r{qw(status size sha256 key code message attempts type)} = @f;
    return \%r;
}

start_worker(ASYNC_DL_MAX_ATTEMPTS => 3, ASYNC_DL_PART_SIZE => '5m',
             ASYNC_DL_MAX_FILE_SIZE => '20m');

my $o = $s->{origin};
my $fl = $s->{flaky};

# --- 200, and the bytes stored are the origin's ---------------------------

my $path = "$s->{dir}/origin/files/70009";
my $job = add_job(["$o/files/70009", "$o/f/small.txt"]);
is(wait_ended($job), 'completed', '200: job completed');
my $f = file_row($job, 0);
is($f->{status}, 'completed', '200: file completed');
is($f->{size}, -s $path, '200: size recorded');
is($f->{sha256}, file_sha256($path), '200: SHA-256 recorded');
is($f->{key}, "$job/0/70009", '200: object key is job/index/name');
is(sha256_hex(s3_object($f->{key}) // ''), file_sha256($path),
   '200: stored bytes are the origin\'s');
is($f->{attempts}, 1, '200: one attempt');
$f = file_row($job, 1);
is($f->{type}, 'text/plain', 'Content-Type recorded');
is(s3_object($f->{key}), "hello from the origin\n", 'small file stored');
is(psql("SELECT bytes_done = bytes_total AND bytes_total = "
        . (-s $path) . " + 22 FROM async_dl_jobs WHERE id = '$job'"), 't',
   'job bytes add up');

# --- progress: visible while downloading, a few events a second ---------------

$path = origin_file('progress.bin', 3 * 1024 * 1024);
$job = add_job(["$o/slow/progress.bin?rate=1m", "$o/slow/progress.bin?rate=1m"]);
my @seen;
wait_until(sub {
    push @seen, psql("SELECT bytes_done FROM async_dl_jobs WHERE id = '$job'");
    job_status($job) eq 'completed';
}, 20, 'progress job');
my @mid = grep { $_ > 0 && $_ < 2 * -s $path } @seen;
cmp_ok(scalar @mid, '>=', 3, 'progress: bytes_done grows during the transfer');
my $events = psql("SELECT event_seq FROM async_dl_jobs WHERE id = '$job'");
cmp_ok($events, '<=', 3 * 4 + 10, "progress: throttled ($events events in "
       . "about 3 s for 2 files)");

# --- an empty file ----------------------------------------------------------

origin_file('empty.bin', 0, '');
$job = add_job(["$o/f/empty.bin"]);
is(wait_ended($job), 'completed', 'empty file: completed');
$f = file_row($job);
is($f->{size}, 0, 'empty file: size 0');
is(s3_object($f->{key}), '', 'empty file: stored empty');

# --- 404: no retry ----------------------------------------------------------

$job = add_job(["$o/status/404"]);
is(wait_ended($job), 'failed', '404: job failed');
$f = file_row($job);
is($f->{code}, 'HTTP_STATUS', '404: HTTP_STATUS');
like($f->{message}, qr/404/, '404: the message has the code');
is($f->{attempts}, 1, '404: not retried');

# --- 500 always: retried up to ASYNC_DL_MAX_ATTEMPTS ------------------------

$job = add_job(["$o/status/500"]);
is(wait_ended($job), 'failed', '500: job failed');
$f = file_row($job);
is($f->{code}, 'HTTP_STATUS', '500: HTTP_STATUS');
like($f->{message}, qr/500/, '500: message has the code');
is($f->{attempts}, 3, '500: tried ASYNC_DL_MAX_ATTEMPTS times');

# --- 500 then 200 -------------------------------------------------------------

$job = add_job(["$fl/fail/k500?n=2&size=100000"]);
is(wait_ended($job), 'completed', '500 then 200: completed');
$f = file_row($job);
is(s3_object($f->{key}), flaky_bytes('k500', 100000),
   '500 then 200: right bytes');
is($f->{attempts}, 3, '500 then 200: three attempts');
is(request('GET', "$fl/requests/k500")->{content}, "3\n",
   '500 then 200: three requests at the origin');

# --- 429 with Retry-After -----------------------------------------------------

my $t0 = time;
$job = add_job(["$fl/retry-after/k429?n=1&after=2"]);
is(wait_ended($job), 'completed', '429: completed after Retry-After');
cmp_ok(time - $t0, '>=', 2, '429: waited as Retry-After said');

# --- reset mid-body, then resumed with Range --------------------------------

$job = add_job(["$fl/reset/kreset?size=3000000&at=1000000"]);
is(wait_ended($job), 'completed', 'reset: completed');
$f = file_row($job);
is(sha256_hex(s3_object($f->{key}) // ''),
   sha256_hex(flaky_bytes('kreset', 3000000)), 'reset: right bytes');
like(worker_log(), qr/file=0 resuming at byte [1-9]\d*/,
     'reset: resumed with Range where it broke');

# --- reset mid-body of a file streamed in one PUT, resumed with Range ---------

$job = add_job(["$fl/reset/kreset2?size=12000000&at=7000000"]);
is(wait_ended($job, 60), 'completed', 'reset while streaming: completed');
$f = file_row($job);
is(sha256_hex(s3_object($f->{key}) // ''),
   sha256_hex(flaky_bytes('kreset2', 12000000)),
   'reset while streaming: right bytes');
is($f->{attempts}, 2, 'reset while streaming: a second attempt resumed it');

# --- no Content-Length, multipart ---------------------------------------------

$path = origin_file('chunked.bin', 12 * 1024 * 1024 + 17);
$job = add_job(["$o/chunked/chunked.bin"]);
is(wait_ended($job, 60), 'completed', 'chunked: completed');
$f = file_row($job);
is($f->{size}, -s $path, 'chunked: size');
is($f->{sha256}, file_sha256($path), 'chunked: SHA-256');
is(sha256_hex(s3_object($f->{key}) // ''), file_sha256($path),
   'chunked: stored bytes (multipart, 3 parts)');
like(worker_log(), qr/UploadPart .*partNumber=3/, 'chunked: in parts');

# --- a large file with Content-Length: one PUT streamed while downloading --

$path = origin_file('large.bin', 11 * 1024 * 1024);
$job = add_job(["$o/f/large.bin"]);
is(wait_ended($job, 60), 'completed', 'large: completed');
is(sha256_hex(s3_object(file_row($job)->{key}) // ''), file_sha256($path),
   'large: stored bytes');
like(worker_log(), qr/storage: PutObject \S+\Q$job\E/,
     'large: streamed in one PutObject');

# --- larger than the limit ----------------------------------------------------

sparse_file('huge.bin', 21 * 1024 * 1024);
$job = add_job(["$o/f/huge.bin", "$o/chunked/huge.bin"]);
is(wait_ended($job, 60), 'failed', 'too large: job failed');
is(file_row($job, 0)->{code}, 'TOO_LARGE', 'too large (Content-Length)');
is(file_row($job, 1)->{code}, 'TOO_LARGE', 'too large (no Content-Length)');
is(file_row($job, 1)->{attempts}, 1, 'too large: not retried');
like(worker_log(), qr/AbortMultipartUpload answered 405, ignored/,
     'too large: the multipart upload was aborted (405 from s3rver: ok)');
ok(!grep({ index($_, $job) == 0 } s3_keys()), 'too large: nothing stored');

# --- redirects ------------------------------------------------------------------

$job = add_job(["$o/redirect/5", "$o/redirect/6", "$o/redirect/loop",
                "$o/redirect/ftp"]);
is(wait_ended($job), 'completed', 'redirects: job completed (one file)');
$f = file_row($job, 0);
is($f->{status}, 'completed', '5 redirects: followed');
is(s3_object($f->{key}), "hello from the origin\n", '5 redirects: bytes');
is(file_row($job, 1)->{code}, 'DOWNLOAD_FAILED', '6 redirects: refused');
like(file_row($job, 1)->{message}, qr/redirect/, '6 redirects: says why');
is(file_row($job, 2)->{code}, 'DOWNLOAD_FAILED', 'endless redirects');
is(file_row($job, 3)->{code}, 'DOWNLOAD_FAILED', 'redirect to ftp refused');

# --- blocked addresses -----------------------------------------------------------

$job = add_job(["$o/redirect/private", "$o/redirect/metadata",
                "http://[::1]:$s->{origin_port}/f/small.txt",
                "http://0.0.0.0:$s->{origin_port}/f/small.txt",
                "http://[::ffff:169.254.169.254]/x"]);
is(wait_ended($job), 'failed', 'blocked: job failed');
for my $i (0 .. 4) {
    $f = file_row($job, $i);
    is($f->{code}, 'BLOCKED_ADDRESS', "blocked address $i: BLOCKED_ADDRESS");
    is($f->{attempts}, 1, "blocked address $i: not retried");
}
like(file_row($job, 0)->{message}, qr/10\.255\.255\.1.*private/,
     'the message names the address and why');

# --- slow past the deadline ---------------------------------------------------------

$t0 = time;
$job = add_job(["$o/sleep", "$o/slow/large.bin?rate=100k"], timeout => 2);
is(wait_ended($job, 15), 'failed', 'deadline: job failed');
is(file_row($job, 0)->{code}, 'TIMEOUT', 'deadline: silent origin TIMEOUT');
is(file_row($job, 1)->{code}, 'TIMEOUT', 'deadline: slow origin TIMEOUT');
cmp_ok(psql("SELECT extract(epoch FROM completed_at - deadline) FROM "
            . "async_dl_jobs WHERE id = '$job'"), '<', 1.5,
       'deadline: enforced on time (job ended within 1.5 s of it)');

# --- a name given by the client is sanitised into the key ----------------------

$job = add_job(["$o/f/small.txt"], names => ['../../etc/pass wd.txt']);
is(wait_ended($job), 'completed', 'named file: completed');
is(file_row($job)->{key}, "$job/0/pass_wd.txt", 'name sanitised in key');

unlike(worker_log(), qr/\[error\]/, 'no [error] in the worker log');

done_testing();
