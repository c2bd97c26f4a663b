# The database goes away while a file's last upload is in flight, and
# stays away past the lease: the transfer stops at its lease's end (no
# second transfer may start meanwhile), but the upload it had sent still
# stores the object.  That object is recorded once the database is back,
# when nobody claimed the file since: the file completes as its first
# attempt, downloaded once, instead of being transferred all over again.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::HiRes qw(time sleep);

my $s = adl();
my $o = $s->{origin};

# The fault proxy in front of s3rver holds a PutObject's answer back 6 s
# after s3rver stored it.
my $ep = s3_proxy();
s3_fault('delay', match => 'PUT ', delay => 6, when => 'response');

my $path = origin_file('final-put.bin', 200 * 1024);
start_worker(ASYNC_DL_S3_ENDPOINT => $ep, ASYNC_DL_LEASE => '3s',
             ASYNC_DL_POLL_INTERVAL => '500ms');
my $job = add_job(["$o/f/final-put.bin"]);
ok(wait_until(sub { worker_log() =~ /storage: PutObject \S*$job/ }, 20,
              'the upload'), 'the upload is under way');
pg_stop();
ok(wait_until(sub { worker_log() =~ /job=$job file=0 stopped: lease lost/ },
              20, 'the lease to run out'), 'the lease ran out meanwhile');
ok(wait_until(sub { worker_log() =~ /job=$job file=0 stored \S+ as the transfer stopped/ },
              20, 'the upload\'s answer'), 'the upload stored the object '
   . 'all the same');
pg_start();

is(wait_ended($job, 30), 'completed', 'the job completed');
# On the reconnect the stored result is written before any claim: a claim
# queued before the outage dies with its connection (it used to wait for
# the next one, run first, take the expired lease and transfer the file
# again).
is(psql("SELECT attempts FROM async_dl_files WHERE job_id = '$job'"), 1,
   'as its first attempt');
my $key = psql("SELECT object_key FROM async_dl_files WHERE job_id = '$job'");
is(sha256_hex(s3_object($key) // ''), file_sha256($path),
   'with the right bytes');
is(scalar(() = origin_log() =~ m{/f/final-put\.bin}g), 1, 'downloaded once');
is(scalar(() = worker_log() =~ /job=$job file=0 claimed/g), 1,
   'claimed once');
is(stop_worker('TERM') >> 8, 0, 'the worker exits 0');
done_testing();
