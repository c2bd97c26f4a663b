# A CompleteMultipartUpload answered 503 SlowDown is retried with the same
# body: the stored object is the origin's bytes, not the origin's bytes
# with the Complete XML uploaded as one more part (found by bench/chaos).
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Digest::SHA qw(sha256_hex);

my $s = adl();
my $ep = s3_proxy();
start_worker(ASYNC_DL_S3_ENDPOINT => $ep, ASYNC_DL_PART_SIZE => '5m',
             ASYNC_DL_RETRY_BASE => '200ms');
my $path = origin_file('big.bin', 7 * 1024 * 1024 + 123);

s3_fault('slowdown', match => '?uploadId=', count => 1, retry_after => 1);
# no Content-Length: a multipart upload of two parts
my $job = add_job(["$s->{origin}/chunked/big.bin"]);
is(wait_ended($job, 60), 'completed', 'the job completes');
is(s3_fault_rules()->[0]{used}, 1, 'its Complete was answered 503 once');

my ($key, $sha, $size) = split /\|/,
    psql("SELECT object_key, sha256, size FROM async_dl_files "
         . "WHERE job_id = '$job'");
is($sha, file_sha256($path), 'the recorded SHA-256 is the origin\'s');
is($size, -s $path, 'and the size');
my $obj = s3_object($key);
is(length $obj, -s $path, 'the stored object has the origin\'s size');
is(sha256_hex($obj), file_sha256($path), 'and its bytes');

done_testing();
