# A cancel racing the end of a transfer (issue 9, defect 14): when a job
# is canceled while its file's upload (PutObject) is under way or has just
# answered, the storage may have stored the object all the same.  The
# claim recorded the key (write_key); the cancel queues it for the janitor;
# the worker lets such a request answer, then asks the file's row, which
# queues the key again when the file is canceled, failed or gone (the
# upload may have committed after the janitor's delete).  Many small
# transfers, each canceled at a different moment around its end; the
# storage holds each PutObject's answer back for a while after it stored
# the object, so that cancels land between the two.  At the end the bucket
# holds no object of these jobs that a completed file row does not record.
use strict;
use warnings;
use lib 't/lib';
use AsyncDL::Test;
use Time::HiRes qw(time sleep);

my $s = adl();
my $o = $s->{origin};

# The fault proxy in front of s3rver holds each PUT's answer back 0.4 s
# after s3rver gave it (the object is stored; the worker does not know yet).
my $ep = s3_proxy();
s3_fault('delay', match => 'PUT ', delay => 0.4, when => 'response');

origin_file('race.bin', 48 * 1024);
start_worker(ASYNC_DL_S3_ENDPOINT => $ep, ASYNC_DL_POLL_INTERVAL => '500ms');

# Jobs queued and canceled through one psql session, on a schedule: job i
# queued at 0.2 i s, canceled 0.45 s to 1.55 s later.  The download takes
# about 0.75 s, the PUT 0.4 s more: the cancels fall before, during and
# after the uploads.
sub uuid {
    my $h = join '', map { sprintf '%04x', int rand 65536 } 1 .. 8;
    substr($h, 12, 1, '4');
    substr($h, 16, 1, (qw(8 9 a b))[int rand 4]);
    return join '-', substr($h, 0, 8), substr($h, 8, 4), substr($h, 12, 4),
                     substr($h, 16, 4), substr($h, 20);
}
open my $pg, '|-', 'psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-h',
    '127.0.0.1', '-p', $s->{pg_port}, '-U', 'postgres', '-d', 'postgres',
    '-o', '/dev/null' or die "psql: $!";
$pg->autoflush(1);
my (@jobs, @events);
for my $i (0 .. 35) {
    my $id = uuid();
    push @jobs, $id;
    push @events, [0.2 * $i, "BEGIN; INSERT INTO async_dl_jobs (id, "
        . "total_files, timeout_ms, deadline) VALUES ('$id', 1, 60000, "
        . "now() + interval '60 seconds'); INSERT INTO async_dl_files "
        . "(job_id, idx, url) VALUES ('$id', 0, "
        . "'$o/slow/race.bin?rate=64k&n=$i'); COMMIT;"];
    push @events, [0.2 * $i + 0.45 + ($i % 12) * 0.1,
                   "SELECT async_dl_job_cancel('$id', '');"];
}
my $t0 = time;
for my $e (sort { $a->[0] <=> $b->[0] } @events) {
    my $when = $t0 + $e->[0];
    sleep $when - time if $when > time;
    print $pg "$e->[1]\n";
}
close $pg or die "psql failed: $?";

my $list = join ',', map { "'$_'" } @jobs;
ok(wait_until(sub {
    psql("SELECT count(*) FROM async_dl_jobs WHERE id IN ($list) AND status "
         . "NOT IN ('completed', 'failed', 'canceled')") == 0
}, 60, 'every job to end'), 'every job ended');

# the worker is done with them: nothing in flight; its janitor has
# deleted what the cancels and the orphan checks queued
ok(wait_until(sub {
    psql("SELECT count(*) FROM async_dl_deleted_objects WHERE job_id IN "
         . "($list)") == 0
}, 30, 'the janitor to delete what was queued'), 'nothing left to delete');
stop_worker('TERM');
my %job = map { $_ => 1 } @jobs;
my %recorded = map { $_ => 1 } split /\n/, psql(
    "SELECT object_key FROM async_dl_files WHERE job_id IN ($list) AND "
    . "status = 'completed'");
my @ours = grep { my ($j) = m{^([^/]+)/}; $j && $job{$j} } s3_keys();
my @orphans = grep { !$recorded{$_} } @ours;
is("@orphans", '', 'no object in the bucket that no completed file '
   . 'records (' . scalar(@ours) . ' stored, ' . scalar(keys %recorded)
   . ' completed)');

my $canceled = psql("SELECT count(*) FROM async_dl_files WHERE job_id IN "
                    . "($list) AND status = 'canceled'");
my $deleted = () = worker_log() =~ /the file is canceled: \S+ queued/g;
diag("$canceled of " . scalar(@jobs) . " files canceled; $deleted objects "
     . "stored by a raced upload deleted");
cmp_ok($canceled, '>', 0, 'some cancels came before the end');
is(psql("SELECT count(*) FROM async_dl_files WHERE job_id IN ($list) AND "
        . "status = 'completed' AND object_key IS NULL"), 0,
   'every completed file names its object');
for my $k (keys %recorded) {
    next if defined s3_object($k);
    fail("the object of a completed file is missing: $k");
}
unlike(worker_log(), qr/\[error\]/, 'no [error] in the worker log');
done_testing();
