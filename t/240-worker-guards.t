# The worker's guards: storage requests are signed (a wrong secret is
# refused by the S3 server: STORAGE_FAILED, nothing stored), and origins on
# loopback/private addresses are refused unless allowed.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

my $s = adl();
my $o = $s->{origin};

sub file_error {
    my ($job, $idx) = @_;
    return psql("SELECT coalesce(error_code, '') || ' ' || "
                . "coalesce(error_message, '') FROM async_dl_files WHERE "
                . "job_id = '$job' AND idx = $idx");
}

# --- a wrong secret: the S3 server refuses the signature ----------------------

origin_file('big.bin', 6 * 1024 * 1024);
start_worker(ASYNC_DL_S3_SECRET_ACCESS_KEY => 'not-the-secret',
             ASYNC_DL_PART_SIZE => '5m');
my $job = add_job(["$o/f/small.txt", "$o/f/big.bin", "$o/chunked/big.bin"]);
is(wait_ended($job), 'failed', 'wrong secret: job failed');
like(file_error($job, 0), qr/^STORAGE_FAILED .*403.*SignatureDoesNotMatch/,
     'wrong secret: PutObject refused (403 SignatureDoesNotMatch)');
like(file_error($job, 1), qr/^STORAGE_FAILED .*SignatureDoesNotMatch/,
     'wrong secret: the streamed PUT refused too');
like(file_error($job, 2), qr/^STORAGE_FAILED .*CreateMultipartUpload.*Signa/,
     'wrong secret: multipart refused too');
is(scalar(grep { index($_, $job) == 0 } s3_keys()), 0,
   'wrong secret: nothing stored');
stop_worker('TERM');

# --- the same with the right secret: stored ---------------------------------------

start_worker(ASYNC_DL_PART_SIZE => '5m', ASYNC_DL_LOG_FORMAT => 'json');
$job = add_job(["$o/f/small.txt", "$o/f/big.bin"]);
is(wait_ended($job), 'completed', 'right secret: stored');
# (the job's zip may be built by now too: count the files' objects)
is(scalar(grep { index($_, $job) == 0 && !/\.zip$/ } s3_keys()), 2,
   'both objects');
like(worker_log(1), qr/^\{"ts":"[^"]+","level":"info","job":"$job","file":1,"msg":"stored /m,
     'JSON log lines carry job and file');
stop_worker('TERM');

# --- SSRF: loopback is refused by default -------------------------------------------

start_worker(ASYNC_DL_ALLOW_CIDRS => undef);
$job = add_job(["$o/f/small.txt", "http://10.255.255.1/x",
                "http://localhost:$s->{origin_port}/f/small.txt"]);
is(wait_ended($job), 'failed', 'default: job failed');
like(file_error($job, 0), qr/^BLOCKED_ADDRESS .*127\.0\.0\.1.*loopback/,
     'default: loopback refused');
like(file_error($job, 1), qr/^BLOCKED_ADDRESS .*10\.255\.255\.1/,
     'default: private refused');
like(file_error($job, 2), qr/^BLOCKED_ADDRESS /,
     'default: a name resolving to loopback refused');
stop_worker('TERM');

# --- ALLOW_PRIVATE_NETWORKS ----------------------------------------------------------

start_worker(ASYNC_DL_ALLOW_CIDRS => undef,
             ASYNC_DL_ALLOW_PRIVATE_NETWORKS => 'on',
             ASYNC_DL_CONNECT_TIMEOUT => '1s', ASYNC_DL_MAX_ATTEMPTS => 1);
$job = add_job(["$o/f/small.txt", "$o/redirect/metadata"]);
wait_ended($job);
is(psql("SELECT status FROM async_dl_files WHERE job_id = '$job' AND "
        . "idx = 0"), 'completed', 'private networks on: loopback allowed');
isnt(file_error($job, 1), ' ', 'private networks on: the link-local '
     . 'metadata address is tried (then fails to connect)');
stop_worker('TERM');

# --- ALLOW_CIDRS lets one network through, not the others ---------------------------

start_worker(ASYNC_DL_ALLOW_CIDRS => '10.0.0.0/8, 127.0.0.0/8');
$job = add_job(["$o/f/small.txt", "$o/redirect/metadata"]);
wait_ended($job);
is(psql("SELECT status FROM async_dl_files WHERE job_id = '$job' AND "
        . "idx = 0"), 'completed', 'allow list: loopback allowed');
like(file_error($job, 1), qr/^BLOCKED_ADDRESS .*169\.254\.169\.254/,
     'allow list: link-local still refused');

done_testing();
