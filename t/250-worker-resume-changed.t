# A resumed download must be the rest of the same file: when the origin's
# file changed between the reset and the Range request (another total in
# Content-Range), the worker must not store a mix of the two versions.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;

my $s = adl();
start_worker(ASYNC_DL_MAX_ATTEMPTS => 3);

my $job = add_job(["$s->{flaky}/reset/chg?size=200000&at=50000"
                   . "&resize=300000"]);
my $st = wait_ended($job, 30);
my ($status, $key, $size) = split /\|/,
    psql("SELECT status, object_key, size FROM async_dl_files "
         . "WHERE job_id = '$job'");

if ($status eq 'completed') {
    is(sha256_hex(s3_object($key) // ''),
       sha256_hex(flaky_bytes('chg-v2', 300000)),
       'stored: the whole new version, not a mix');
} else {
    is($status, 'failed', 'or failed');
}
my $ranges = do { local $/; open my $fh, '<', "$s->{dir}/flaky/reset-chg.ranges";
                  <$fh> // '' };
# from what it had received: at most where the origin cut (a reset may
# discard bytes the worker had not read yet, so it can be less)
my ($from) = $ranges =~ /bytes=(\d+)-/;
ok(defined $from && $from > 0 && $from <= 50000,
   'the worker did ask for the rest') or diag("ranges: $ranges");

done_testing();
