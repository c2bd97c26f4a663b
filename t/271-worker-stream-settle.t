# A streamed PUT that has every byte is left to answer when its transfer
# ends (it may store the object).  Without libcurl's low-speed check on it,
# the idle timeout bounds that wait too: a storage that never answers does
# not hold the transfer (and its slot, and the worker's exit) for ever.
# The object it may have stored goes through the orphan check.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::HiRes qw(time sleep);

my $s = adl();
my $o = $s->{origin};
my $mib = 1024 * 1024;

# s3rver stores the PUT; the proxy holds its answer back for 60 s
my $ep = s3_proxy();
s3_fault('delay', match => 'PUT ', delay => 60, when => 'response');
origin_file('settle.bin', 6 * $mib);
start_worker(ASYNC_DL_S3_ENDPOINT => $ep, ASYNC_DL_PART_SIZE => '5m',
             ASYNC_DL_IDLE_TIMEOUT => '3s', ASYNC_DL_POLL_INTERVAL => '500ms');
my $job = add_job(["$o/f/settle.bin"], timeout => 120);

# the whole file downloaded and sent: the PUT waits for its answer
ok(wait_until(sub {
    psql("SELECT bytes_done FROM async_dl_files WHERE job_id = '$job'")
        == 6 * $mib
}, 30, 'the download'), 'the download is done, the PUT waits');
sleep 0.5;
my $t0 = time;
psql("SELECT async_dl_job_cancel('$job', '')");
ok(wait_until(sub { worker_log() =~ /job=$job file=0 storage: PutObject did not answer for \d+ ms after the end: given up/ },
              15, 'the settling PUT given up'),
   'the unanswered PUT is given up after the idle timeout');
cmp_ok(time - $t0, '<', 10, 'well before the storage would answer');
ok(wait_until(sub { worker_log() =~ /job=$job file=0 the file is canceled: \S+ queued for deletion/ },
              10, 'the orphan check'),
   'the object it may have stored is queued for deletion');
my $t1 = time;
is(stop_worker('TERM') >> 8, 0, 'the worker exits 0');
cmp_ok(time - $t1, '<', 5, 'at once: nothing left in flight');
unlike(worker_log(), qr/still ending/, 'nothing was left ending');
s3_fault('pass');
done_testing();
